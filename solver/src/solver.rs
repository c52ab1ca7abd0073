//! Solving a graph: cache keys, cache lookups, and running what misses.
//!
//! Every vertex has two shared futures within a job: its cache key (which
//! needs only its inputs' keys) and its result (which needs its inputs'
//! results only on a cache miss). The root's result is all a job asks for,
//! so a cached chain never materialises the intermediate results it does
//! not need. Vertices run as soon as their inputs allow, up to the
//! configured parallelism, and a result being computed under a cache key is
//! shared by every job that needs that key, so it runs once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bk_llb::{Digest, Graph, Vertex};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::progress::{Progress, VertexProgress};

/// A result an op produced: a handle the worker understands (a snapshot
/// reference). Cloning shares it.
pub trait ResultRef: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> ResultRef for T {}

/// Why an op failed. The message is what the client sees.
#[derive(Debug, Clone)]
pub struct OpError {
    pub message: String,
}

impl OpError {
    pub fn new(message: impl Into<String>) -> OpError {
        OpError {
            message: message.into(),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

/// Why a solve failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SolveError {
    /// An op failed; names the vertex.
    #[error("{message}")]
    Op {
        vertex: Digest,
        name: String,
        message: String,
    },
    #[error("context canceled")]
    Canceled,
    #[error("{0}")]
    Invalid(String),
}

/// What an op gets to work with.
#[derive(Clone)]
pub struct OpContext {
    /// The job's session ids, primary first.
    pub session_group: Arc<Vec<String>>,
    pub progress: VertexProgress,
    pub cancel: CancellationToken,
}

/// One vertex's implementation, made by the worker.
#[async_trait]
pub trait Op<R: ResultRef>: Send + Sync {
    /// The op's cache key from its inputs' keys. It may do work: a local
    /// source must transfer the context before its content is known.
    async fn cache_key(&self, ctx: &OpContext, input_keys: &[Digest]) -> Result<Digest, OpError>;

    /// Whether computing the cache key is the op's real work (a local
    /// source's transfer). Progress then shows the vertex running while its
    /// key is computed, as BuildKit does, even when the build is cached.
    fn works_for_key(&self) -> bool {
        false
    }

    /// Whether the op has a second, content-based key (see
    /// [`Op::content_key`]).
    fn has_content_key(&self) -> bool {
        false
    }

    /// A key from what the op actually reads of its inputs (the paths a
    /// copy takes), computed from their results when the first key missed:
    /// a change elsewhere in an input then keeps the cache. `None`: no such
    /// key this time.
    async fn content_key(
        &self,
        _ctx: &OpContext,
        _input_keys: &[Digest],
        _inputs: &[R],
    ) -> Result<Option<Digest>, OpError> {
        Ok(None)
    }

    /// Produces the op's outputs (one per output index) from its inputs'
    /// results, in `Op.inputs` order.
    async fn exec(&self, ctx: &OpContext, inputs: Vec<R>) -> Result<Vec<R>, OpError>;
}

/// Turns vertices into ops.
pub trait Worker<R: ResultRef>: Send + Sync {
    fn op(&self, vertex: &Vertex) -> Result<Arc<dyn Op<R>>, OpError>;
}

/// Results by cache key. The daemon's implementation persists them.
#[async_trait]
pub trait ResultCache<R: ResultRef>: Send + Sync {
    async fn load(&self, key: &Digest) -> Option<Vec<R>>;
    async fn save(&self, key: &Digest, results: &[R]);
}

/// Combines an op's own key with its inputs' keys (and the output index
/// each input uses) into the vertex's cache key.
pub fn combine_key(op_key: &Digest, inputs: &[(Digest, usize)]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"buildkit-rs cache key v1\0");
    h.update(op_key.as_str().as_bytes());
    for (key, index) in inputs {
        h.update(b"\0");
        h.update(key.as_str().as_bytes());
        h.update(index.to_le_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Digest::parse(&format!("sha256:{hex}")).unwrap_or_else(|| Digest::of(hex.as_bytes()))
}

type SharedResult<R> = Shared<BoxFuture<'static, Result<Arc<Vec<R>>, SolveError>>>;

/// A run shared by every job that needs its cache key. It runs in its own
/// task with its own cancel token, canceled only when no job waits for it
/// any more: one job going away never fails the others.
struct Inflight<R: ResultRef> {
    id: u64,
    run: SharedResult<R>,
    waiters: Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancellationToken,
}

/// One job's interest in an inflight run.
struct Waiter {
    waiters: Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancellationToken,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self
            .waiters
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.cancel.cancel();
        }
    }
}
type SharedKey = Shared<BoxFuture<'static, Result<Digest, SolveError>>>;

/// The solver, shared by all jobs of the daemon.
pub struct Solver<R: ResultRef> {
    worker: Arc<dyn Worker<R>>,
    cache: Arc<dyn ResultCache<R>>,
    parallelism: Arc<Semaphore>,
    /// Results being computed, by cache key, across jobs.
    inflight: Mutex<HashMap<Digest, Inflight<R>>>,
    next_run: std::sync::atomic::AtomicU64,
}

/// What one solve asks for.
pub struct Job {
    pub graph: Graph,
    pub session_group: Vec<String>,
    pub progress: Progress,
    pub cancel: CancellationToken,
}

struct JobState<R: ResultRef> {
    solver: Arc<Solver<R>>,
    graph: Graph,
    names: HashMap<Digest, String>,
    ops: Mutex<HashMap<Digest, Arc<dyn Op<R>>>>,
    keys: Mutex<HashMap<Digest, SharedKey>>,
    results: Mutex<HashMap<Digest, SharedResult<R>>>,
    session_group: Arc<Vec<String>>,
    progress: Progress,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: ResultRef> Solver<R> {
    /// `max_parallelism` bounds how many ops execute at once (`None`: the
    /// number of CPUs, as BuildKit's default is unbounded but CPU-bound work
    /// gains nothing beyond it).
    pub fn new(
        worker: Arc<dyn Worker<R>>,
        cache: Arc<dyn ResultCache<R>>,
        max_parallelism: Option<usize>,
    ) -> Arc<Self> {
        let permits = max_parallelism
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() * 4)
                    .unwrap_or(8)
            })
            .max(1);
        Arc::new(Solver {
            worker,
            cache,
            parallelism: Arc::new(Semaphore::new(permits)),
            inflight: Mutex::new(HashMap::new()),
            next_run: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Solves the job's graph and returns the root output.
    pub async fn solve(self: &Arc<Self>, job: Job) -> Result<R, SolveError> {
        let names = bk_llb::name::names(&job.graph);
        let reachable: Vec<(Digest, String, Vec<Digest>)> = job
            .graph
            .reachable()
            .into_iter()
            .map(|v| {
                let mut inputs: Vec<Digest> = v.inputs.iter().map(|(d, _)| d.clone()).collect();
                inputs.dedup();
                (
                    v.digest.clone(),
                    names.get(&v.digest).cloned().unwrap_or_default(),
                    inputs,
                )
            })
            .collect();
        job.progress.announce(reachable);
        let (root, index) = job.graph.root.clone();
        let state = Arc::new(JobState {
            solver: self.clone(),
            graph: job.graph,
            names,
            ops: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            results: Mutex::new(HashMap::new()),
            session_group: Arc::new(job.session_group),
            progress: job.progress,
            cancel: job.cancel.clone(),
        });
        // Run tasks hold the job's state, and the state holds the futures
        // that hold their waiters: break that cycle when the solve ends
        // (returns or is dropped), or a canceled build would leave its
        // steps running.
        let _release = ReleaseOnDrop(state.clone());
        let result = tokio::select! {
            r = state.result(&root) => r,
            () = job.cancel.cancelled() => Err(SolveError::Canceled),
        };
        if job.cancel.is_cancelled() {
            // Whatever an op said while being stopped, the build was canceled.
            return Err(SolveError::Canceled);
        }
        let outputs = result?;
        outputs
            .get(index)
            .cloned()
            .ok_or_else(|| SolveError::Invalid(format!("{root} has no output {index}")))
    }
}

/// Drops a job's shared futures when its solve ends.
struct ReleaseOnDrop<R: ResultRef>(Arc<JobState<R>>);

impl<R: ResultRef> Drop for ReleaseOnDrop<R> {
    fn drop(&mut self) {
        let results = std::mem::take(&mut *lock(&self.0.results));
        let keys = std::mem::take(&mut *lock(&self.0.keys));
        drop((results, keys));
    }
}

impl<R: ResultRef> JobState<R> {
    fn vertex(&self, digest: &Digest) -> Result<&Vertex, SolveError> {
        self.graph
            .vertices
            .get(digest)
            .ok_or_else(|| SolveError::Invalid(format!("unknown vertex {digest}")))
    }

    fn name(&self, digest: &Digest) -> String {
        self.names.get(digest).cloned().unwrap_or_default()
    }

    fn op_error(&self, digest: &Digest, e: OpError) -> SolveError {
        SolveError::Op {
            vertex: digest.clone(),
            name: self.name(digest),
            message: e.message,
        }
    }

    fn op(&self, digest: &Digest) -> Result<Arc<dyn Op<R>>, SolveError> {
        if let Some(op) = lock(&self.ops).get(digest) {
            return Ok(op.clone());
        }
        let vertex = self.vertex(digest)?;
        let op = self
            .solver
            .worker
            .op(vertex)
            .map_err(|e| self.op_error(digest, e))?;
        Ok(lock(&self.ops).entry(digest.clone()).or_insert(op).clone())
    }

    fn context(&self, digest: &Digest) -> OpContext {
        OpContext {
            session_group: self.session_group.clone(),
            progress: VertexProgress {
                progress: self.progress.clone(),
                digest: digest.clone(),
            },
            cancel: self.cancel.clone(),
        }
    }

    /// The vertex's cache key (shared within the job).
    fn key(self: &Arc<Self>, digest: &Digest) -> SharedKey {
        let mut keys = lock(&self.keys);
        if let Some(k) = keys.get(digest) {
            return k.clone();
        }
        let this = self.clone();
        let d = digest.clone();
        let fut = async move {
            let vertex = this.vertex(&d)?.clone();
            let input_keys: Vec<SharedKey> =
                vertex.inputs.iter().map(|(i, _)| this.key(i)).collect();
            let keys = futures::future::try_join_all(input_keys).await?;
            let op = this.op(&d)?;
            let shown = op.works_for_key();
            if shown {
                this.progress.started(&d);
            }
            let op_key = op.cache_key(&this.context(&d), &keys).await;
            if shown {
                let error = op_key.as_ref().err().map(|e| e.message.clone());
                this.progress.completed(&d, false, error.as_deref());
            }
            let op_key = op_key.map_err(|e| this.op_error(&d, e))?;
            let with_index: Vec<(Digest, usize)> = keys
                .into_iter()
                .zip(vertex.inputs.iter().map(|(_, i)| *i))
                .collect();
            let key = combine_key(&op_key, &with_index);
            tracing::debug!(vertex = %d, op_key = %op_key, %key, "cache key");
            Ok(key)
        }
        .boxed()
        .shared();
        keys.insert(digest.clone(), fut.clone());
        fut
    }

    /// The vertex's outputs (shared within the job, and across jobs by key).
    fn result(self: &Arc<Self>, digest: &Digest) -> SharedResult<R> {
        let mut results = lock(&self.results);
        if let Some(r) = results.get(digest) {
            return r.clone();
        }
        let this = self.clone();
        let d = digest.clone();
        let fut = async move {
            let key = this.key(&d).await?;
            let vertex = this.vertex(&d)?.clone();
            let cached = match vertex.metadata.ignore_cache {
                true => None,
                false => this.solver.cache.load(&key).await,
            };
            if let Some(found) = cached {
                // A vertex whose work was its key already showed as done;
                // its inputs above it were not needed.
                this.progress.cached_from(&d);
                return Ok(Arc::new(found));
            }
            // A miss; what the op reads of its inputs may still be known.
            let content_key = match vertex.metadata.ignore_cache {
                true => None,
                false => this.content_key(&d, &vertex).await?,
            };
            let by_content = match &content_key {
                Some(k2) => this.solver.cache.load(k2).await,
                None => None,
            };
            if let Some(found) = by_content {
                this.solver.cache.save(&key, &found).await;
                this.progress.cached_from(&d);
                return Ok(Arc::new(found));
            }
            // Someone may already be computing this key for another job.
            let (shared, ours, waiter) = this.join_run(&d, &key, vertex.metadata.ignore_cache);
            let outcome = shared.await;
            drop(waiter);
            if let (Some(k2), Ok(outputs)) = (&content_key, &outcome) {
                this.solver.cache.save(k2, outputs).await;
            }
            if !ours {
                // Another job ran it; this job's progress still closes it.
                let error = outcome.as_ref().err().map(ToString::to_string);
                this.progress.completed(&d, false, error.as_deref());
            }
            outcome
        }
        .boxed()
        .shared();
        results.insert(digest.clone(), fut.clone());
        fut
    }

    /// The op's content key, if it has one: materialises the inputs.
    async fn content_key(
        self: &Arc<Self>,
        d: &Digest,
        vertex: &Vertex,
    ) -> Result<Option<Digest>, SolveError> {
        let op = self.op(d)?;
        if !op.has_content_key() {
            return Ok(None);
        }
        let keys =
            futures::future::try_join_all(vertex.inputs.iter().map(|(i, _)| self.key(i))).await?;
        let results =
            futures::future::try_join_all(vertex.inputs.iter().map(|(i, _)| self.result(i)))
                .await?;
        let mut inputs = Vec::with_capacity(results.len());
        for ((input, index), outputs) in vertex.inputs.iter().zip(results) {
            let output = outputs
                .get(*index)
                .cloned()
                .ok_or_else(|| SolveError::Invalid(format!("{input} has no output {index}")))?;
            inputs.push(output);
        }
        let k2 = op
            .content_key(&self.context(d), &keys, &inputs)
            .await
            .map_err(|e| self.op_error(d, e))?;
        Ok(k2.map(|k| combine_key(&k, &[])))
    }

    /// Joins the run computing `key`, starting it if nobody has.
    fn join_run(
        self: &Arc<Self>,
        digest: &Digest,
        key: &Digest,
        fresh: bool,
    ) -> (SharedResult<R>, bool, Waiter) {
        use std::sync::atomic::Ordering;
        let solver = self.solver.clone();
        let mut inflight = lock(&solver.inflight);
        if let Some(existing) = inflight.get(key).filter(|_| !fresh) {
            existing.waiters.fetch_add(1, Ordering::AcqRel);
            let waiter = Waiter {
                waiters: existing.waiters.clone(),
                cancel: existing.cancel.clone(),
            };
            return (existing.run.clone(), false, waiter);
        }
        let id = solver.next_run.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let waiters = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let task = tokio::spawn({
            let this = self.clone();
            let (digest, key, cancel) = (digest.clone(), key.clone(), cancel.clone());
            async move {
                let outcome = this.clone().run(digest, key.clone(), cancel).await;
                let mut inflight = lock(&this.solver.inflight);
                if inflight.get(&key).is_some_and(|e| e.id == id) {
                    inflight.remove(&key);
                }
                outcome
            }
        });
        let run = async move { task.await.map_err(|_| SolveError::Canceled)? }
            .boxed()
            .shared();
        let waiter = Waiter {
            waiters: waiters.clone(),
            cancel: cancel.clone(),
        };
        if !fresh {
            inflight.insert(
                key.clone(),
                Inflight {
                    id,
                    run: run.clone(),
                    waiters,
                    cancel,
                },
            );
        }
        (run, true, waiter)
    }

    /// Executes a vertex: inputs first (concurrently), then the op, then
    /// the cache.
    async fn run(
        self: Arc<Self>,
        digest: Digest,
        key: Digest,
        cancel: CancellationToken,
    ) -> Result<Arc<Vec<R>>, SolveError> {
        let vertex = self.vertex(&digest)?.clone();
        // A run of the same key may have finished (saved, then left the
        // inflight map) between our cache lookup and starting this one.
        let finished_meanwhile = match vertex.metadata.ignore_cache {
            true => None,
            false => self.solver.cache.load(&key).await,
        };
        if let Some(found) = finished_meanwhile {
            self.progress.cached_from(&digest);
            return Ok(Arc::new(found));
        }
        let input_futures: Vec<SharedResult<R>> =
            vertex.inputs.iter().map(|(i, _)| self.result(i)).collect();
        let all_outputs = tokio::select! {
            r = futures::future::try_join_all(input_futures) => r?,
            () = cancel.cancelled() => return Err(SolveError::Canceled),
        };
        let mut inputs = Vec::with_capacity(all_outputs.len());
        for ((input, index), outputs) in vertex.inputs.iter().zip(all_outputs) {
            let output = outputs
                .get(*index)
                .cloned()
                .ok_or_else(|| SolveError::Invalid(format!("{input} has no output {index}")))?;
            inputs.push(output);
        }
        let op = self.op(&digest)?;
        let _permit = self
            .solver
            .parallelism
            .acquire()
            .await
            .map_err(|_| SolveError::Canceled)?;
        // An op whose work was its key already showed that work.
        let shown = !op.works_for_key();
        if shown {
            self.progress.started(&digest);
        }
        let mut ctx = self.context(&digest);
        ctx.cancel = cancel.clone();
        let outcome = tokio::select! {
            r = op.exec(&ctx, inputs) => r,
            () = cancel.cancelled() => Err(OpError::new(crate::progress::CANCELED)),
        };
        match outcome {
            Ok(outputs) => {
                self.solver.cache.save(&key, &outputs).await;
                if shown {
                    self.progress.completed(&digest, false, None);
                }
                Ok(Arc::new(outputs))
            }
            Err(_) if cancel.is_cancelled() => {
                self.progress
                    .completed(&digest, false, Some(crate::progress::CANCELED));
                Err(SolveError::Canceled)
            }
            Err(e) => {
                self.progress.completed(&digest, false, Some(&e.message));
                Err(self.op_error(&digest, e))
            }
        }
    }
}

/// A result cache in memory, for tests and for ops whose results must not
/// outlive the daemon.
pub struct MemoryCache<R> {
    entries: Mutex<HashMap<Digest, Vec<R>>>,
}

impl<R> Default for MemoryCache<R> {
    fn default() -> Self {
        MemoryCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<R: ResultRef> ResultCache<R> for MemoryCache<R> {
    async fn load(&self, key: &Digest) -> Option<Vec<R>> {
        lock(&self.entries).get(key).cloned()
    }

    async fn save(&self, key: &Digest, results: &[R]) {
        lock(&self.entries).insert(key.clone(), results.to_vec());
    }
}
