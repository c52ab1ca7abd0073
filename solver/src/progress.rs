//! A job's progress, as the `Status` stream reports it.
//!
//! [`Progress`] records every update of a job (vertices, sub-statuses, logs)
//! so a `Status` call that arrives late still sees everything, and wakes
//! readers as updates arrive. [`Progress::subscribe`] yields the updates in
//! order and ends when the job ends. Vertex updates follow what buildctl's
//! and buildx's renderers expect: full snapshots, absent timestamps left
//! absent, inputs never completed shown as cached when a vertex starts, and
//! unfinished vertices closed as canceled when the job ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bk_llb::Digest;
use bk_proto::moby::buildkit::v1::{
    StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning,
};
use futures::Stream;
use prost_types::Timestamp;
use tokio::sync::watch;

/// Error text buildctl renders as `CANCELED`.
pub const CANCELED: &str = "context canceled";

/// Logs kept per update message, roughly BuildKit's split.
const MAX_LOG_BYTES_PER_UPDATE: usize = 1 << 20;

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

#[derive(Default)]
struct State {
    updates: Vec<StatusResponse>,
    vertices: HashMap<String, Vertex>,
    finished: bool,
}

/// The progress record of one job. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<usize>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, mut state: std::sync::MutexGuard<'_, State>, update: StatusResponse) {
        if state.finished {
            return;
        }
        state.updates.push(update);
        let len = state.updates.len();
        drop(state);
        self.changed.send_replace(len);
    }

    /// Announces vertices before any runs: digest, name, inputs, no times.
    pub fn announce(&self, vertices: impl IntoIterator<Item = (Digest, String, Vec<Digest>)>) {
        let mut state = self.state();
        let mut update = StatusResponse::default();
        for (digest, name, inputs) in vertices {
            let key = digest.to_string();
            if state.vertices.contains_key(&key) {
                continue;
            }
            let v = Vertex {
                digest: key.clone(),
                inputs: inputs.iter().map(ToString::to_string).collect(),
                name,
                ..Default::default()
            };
            state.vertices.insert(key, v.clone());
            update.vertexes.push(v);
        }
        if !update.vertexes.is_empty() {
            self.push(state, update);
        }
    }

    /// A vertex starts running. Inputs that were announced but never
    /// completed are shown as cached, as BuildKit does.
    pub fn started(&self, digest: &Digest) {
        let mut state = self.state();
        let at = now();
        let mut update = StatusResponse::default();
        let inputs = match state.vertices.get(digest.as_str()) {
            Some(v) => v.inputs.clone(),
            None => return,
        };
        for input in inputs {
            if let Some(v) = state
                .vertices
                .get_mut(&input)
                .filter(|v| v.completed.is_none())
            {
                v.cached = true;
                v.started = Some(at);
                v.completed = Some(at);
                update.vertexes.push(v.clone());
            }
        }
        if let Some(v) = state.vertices.get_mut(digest.as_str()) {
            v.started = Some(at);
            v.completed = None;
            v.error.clear();
            update.vertexes.push(v.clone());
        }
        self.push(state, update);
    }

    /// A vertex finished: ran, came from the cache, or failed.
    pub fn completed(&self, digest: &Digest, cached: bool, error: Option<&str>) {
        let mut state = self.state();
        let at = now();
        let Some(v) = state.vertices.get_mut(digest.as_str()) else {
            return;
        };
        if v.started.is_none() {
            v.started = Some(at);
        }
        v.completed = Some(at);
        v.cached = cached;
        v.error = error.unwrap_or_default().to_string();
        let update = StatusResponse {
            vertexes: vec![v.clone()],
            ..Default::default()
        };
        self.push(state, update);
    }

    /// A vertex came from the cache: it, and every input above it that
    /// never ran (a cached chain needs none of them), are shown cached, as
    /// BuildKit shows every step of an unchanged rebuild.
    pub fn cached_from(&self, digest: &Digest) {
        let mut state = self.state();
        let at = now();
        let mut update = StatusResponse::default();
        let mut stack = vec![digest.to_string()];
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(v) = state.vertices.get_mut(&d) else {
                continue;
            };
            if v.completed.is_some() || (v.started.is_some() && d != digest.as_str()) {
                continue;
            }
            v.cached = true;
            if v.started.is_none() {
                v.started = Some(at);
            }
            v.completed = Some(at);
            v.error.clear();
            stack.extend(v.inputs.iter().cloned());
            update.vertexes.push(v.clone());
        }
        if !update.vertexes.is_empty() {
            self.push(state, update);
        }
    }

    /// A sub-task of a vertex (a transfer, a layer) with byte counters.
    pub fn status(&self, status: VertexStatus) {
        let state = self.state();
        let update = StatusResponse {
            statuses: vec![status],
            ..Default::default()
        };
        self.push(state, update);
    }

    /// A warning attached to a vertex (a lint finding, a frontend's `Warn`),
    /// level 0 taken as 1 as BuildKit does. Warnings are never merged.
    pub fn warn(&self, mut warning: VertexWarning) {
        if warning.level == 0 {
            warning.level = 1;
        }
        let state = self.state();
        let update = StatusResponse {
            warnings: vec![warning],
            ..Default::default()
        };
        self.push(state, update);
    }

    /// Output of a vertex (1 stdout, 2 stderr), split to bound message size.
    pub fn log(&self, digest: &Digest, stream: i64, data: &[u8]) {
        for chunk in data.chunks(MAX_LOG_BYTES_PER_UPDATE) {
            let state = self.state();
            let update = StatusResponse {
                logs: vec![VertexLog {
                    vertex: digest.to_string(),
                    timestamp: Some(now()),
                    stream,
                    msg: chunk.to_vec(),
                }],
                ..Default::default()
            };
            self.push(state, update);
        }
    }

    /// Ends the record: vertices started but never completed are closed as
    /// canceled, then every reader's stream ends.
    pub fn finish(&self) {
        let mut state = self.state();
        if state.finished {
            return;
        }
        let at = now();
        let mut update = StatusResponse::default();
        for v in state.vertices.values_mut() {
            if v.started.is_some() && v.completed.is_none() {
                v.completed = Some(at);
                v.error = CANCELED.to_string();
                update.vertexes.push(v.clone());
            }
        }
        if !update.vertexes.is_empty() {
            state.updates.push(update);
        }
        state.finished = true;
        let len = state.updates.len();
        drop(state);
        self.changed.send_replace(len + 1);
    }

    /// Whether both handles record the same job.
    pub fn same_as(&self, other: &Progress) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    pub fn is_finished(&self) -> bool {
        self.state().finished
    }

    /// Every update from the first, then new ones as they come; ends after
    /// [`Progress::finish`].
    pub fn subscribe(&self) -> Pin<Box<dyn Stream<Item = StatusResponse> + Send>> {
        let this = self.clone();
        // Subscribing before reading the state means no update can slip
        // between a read and the wait.
        let changes = self.changed.subscribe();
        Box::pin(futures::stream::unfold(
            (0usize, changes),
            move |(next, mut changes)| {
                let this = this.clone();
                async move {
                    loop {
                        {
                            let state = this.state();
                            if let Some(update) = state.updates.get(next) {
                                return Some((update.clone(), (next + 1, changes)));
                            }
                            if state.finished {
                                return None;
                            }
                        }
                        if changes.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            },
        ))
    }
}

/// A vertex's handle on its job's progress, given to ops.
#[derive(Clone)]
pub struct VertexProgress {
    pub progress: Progress,
    pub digest: Digest,
}

impl VertexProgress {
    /// Reports a sub-task (`id`, e.g. `transferring context:`) with counters.
    pub fn status(
        &self,
        id: &str,
        current: i64,
        total: i64,
        started: Timestamp,
        completed: Option<Timestamp>,
    ) {
        self.progress.status(VertexStatus {
            id: id.to_string(),
            vertex: self.digest.to_string(),
            name: id.to_string(),
            current,
            total,
            timestamp: Some(now()),
            started: Some(started),
            completed,
        });
    }

    pub fn log(&self, stream: i64, data: &[u8]) {
        self.progress.log(&self.digest, stream, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[tokio::test]
    async fn late_readers_see_everything_and_streams_end() {
        let p = Progress::new();
        p.announce([
            (d("a"), "a".into(), vec![]),
            (d("b"), "b".into(), vec![d("a")]),
        ]);
        let early = p.subscribe();
        p.started(&d("b"));
        p.completed(&d("b"), false, None);
        p.finish();
        let late: Vec<_> = p.subscribe().collect().await;
        let early: Vec<_> = early.collect().await;
        assert_eq!(late, early);
        assert_eq!(late.len(), 3);
        // Starting b marked its never-run input a as cached.
        let started = &late[1].vertexes;
        assert_eq!(started[0].digest, d("a").to_string());
        assert!(started[0].cached && started[0].completed.is_some());
        assert!(started[1].started.is_some() && started[1].completed.is_none());
    }

    #[tokio::test]
    async fn finish_cancels_unfinished_vertices() {
        let p = Progress::new();
        p.announce([(d("x"), "x".into(), vec![])]);
        p.started(&d("x"));
        p.finish();
        p.completed(&d("x"), false, None);
        let all: Vec<_> = p.subscribe().collect().await;
        let last = all.last().unwrap();
        assert_eq!(last.vertexes[0].error, CANCELED);
        assert_eq!(all.len(), 3, "updates after finish are dropped");
    }

    #[test]
    fn announced_vertices_have_no_timestamps() {
        let p = Progress::new();
        p.announce([(d("x"), "x".into(), vec![])]);
        let state = p.state();
        assert!(state.updates[0].vertexes[0].started.is_none());
        assert!(state.updates[0].vertexes[0].completed.is_none());
    }
}
