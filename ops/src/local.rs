//! `local://NAME`: a directory of the build client, pulled through its
//! session.
//!
//! Each (name, shared-key hint, session shared key) keeps one mutable
//! snapshot across builds, so a repeat build transfers only what changed.
//! After the transfer the tree's content checksum becomes the cache key;
//! a new immutable snapshot is cut only when the content changed since the
//! last one, so an unchanged rebuild copies nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_fsutil::receive::{Differ, ReceiveOptions};
use bk_llb::Digest;
use bk_session::SessionManager;
use bk_session::filesync::{self, SyncRequest};
use bk_solver::{Op, OpContext, OpError};
use prost_types::Timestamp;

use crate::checksum::{DigestMemo, tree_checksum};

const ATTR_SESSION: &str = "local.session";
const ATTR_INCLUDE: &str = "local.includepattern";
const ATTR_EXCLUDE: &str = "local.excludepatterns";
const ATTR_FOLLOW: &str = "local.followpaths";
const ATTR_SHARED_KEY_HINT: &str = "local.sharedkeyhint";
const ATTR_DIFFER: &str = "local.differ";

/// How often a transfer reports its byte count.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(150);

/// State shared by every local source of a worker.
#[derive(Default)]
pub struct LocalContexts {
    /// One lock per shared key: two builds never sync into one directory at
    /// the same time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Snapshot>>>>>,
    pub(crate) memo: Arc<DigestMemo>,
}

/// The last immutable snapshot cut from a context, and its checksum. Only
/// the id is kept: holding a [`Ref`] here would keep it from being pruned.
#[derive(Clone)]
struct Snapshot {
    checksum: Digest,
    id: String,
}

/// One `local://` vertex.
pub struct LocalSource {
    pub(crate) name: String,
    pub(crate) attrs: BTreeMap<String, String>,
    pub(crate) cache: CacheManager,
    pub(crate) sessions: Arc<SessionManager>,
    pub(crate) contexts: Arc<LocalContexts>,
    result: tokio::sync::Mutex<Option<Ref>>,
}

fn json_list(attrs: &BTreeMap<String, String>, key: &str) -> Result<Option<Vec<String>>, OpError> {
    attrs
        .get(key)
        .map(|v| {
            serde_json::from_str::<Vec<String>>(v)
                .map_err(|e| OpError::new(format!("invalid {key}: {e}")))
        })
        .transpose()
}

impl LocalSource {
    pub fn new(
        name: String,
        attrs: BTreeMap<String, String>,
        cache: CacheManager,
        sessions: Arc<SessionManager>,
        contexts: Arc<LocalContexts>,
    ) -> LocalSource {
        LocalSource {
            name,
            attrs,
            cache,
            sessions,
            contexts,
            result: tokio::sync::Mutex::new(None),
        }
    }

    fn request(&self) -> Result<SyncRequest, OpError> {
        Ok(SyncRequest {
            name: self.name.clone(),
            include_patterns: json_list(&self.attrs, ATTR_INCLUDE)?,
            exclude_patterns: json_list(&self.attrs, ATTR_EXCLUDE)?,
            follow_paths: json_list(&self.attrs, ATTR_FOLLOW)?,
        })
    }

    /// Transfers the context and returns an immutable snapshot of it with
    /// its checksum.
    async fn sync(&self, ctx: &OpContext) -> Result<(Digest, Ref), OpError> {
        let request = self.request()?;
        let differ = match self.attrs.get(ATTR_DIFFER).map(String::as_str) {
            Some("none") => Differ::None,
            _ => Differ::Metadata,
        };
        let group: Vec<String> = match self.attrs.get(ATTR_SESSION) {
            Some(id) => std::iter::once(id.clone())
                .chain(ctx.session_group.iter().cloned())
                .collect(),
            None => ctx.session_group.to_vec(),
        };
        let hint = self
            .attrs
            .get(ATTR_SHARED_KEY_HINT)
            .cloned()
            .unwrap_or_default();
        let started = Timestamp::from(SystemTime::now());
        let status_id = format!("transferring {}:", self.name);
        let result = self
            .sessions
            .any(&group, |session| {
                let request = request.clone();
                let shared_key = format!("{}:{}:{}", self.name, hint, session.shared_key());
                let ctx = ctx.clone();
                let status_id = status_id.clone();
                async move {
                    self.sync_from(
                        &session,
                        &request,
                        &shared_key,
                        differ,
                        &ctx,
                        &status_id,
                        started,
                    )
                    .await
                    .map_err(|e| bk_session::SessionError::Call(tonic::Status::unknown(e.message)))
                }
            })
            .await;
        result.map_err(|e| match e {
            bk_session::SessionError::Call(status) => OpError::new(status.message().to_string()),
            other => OpError::new(other.to_string()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn sync_from(
        &self,
        session: &bk_session::Session,
        request: &SyncRequest,
        shared_key: &str,
        differ: Differ,
        ctx: &OpContext,
        status_id: &str,
        started: Timestamp,
    ) -> Result<(Digest, Ref), OpError> {
        let lock = {
            let mut locks = self
                .contexts
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            locks.entry(shared_key.to_string()).or_default().clone()
        };
        let mut last = lock.lock().await;

        // The mutable directory kept for this shared key.
        let (cache, key, name) = (
            self.cache.clone(),
            shared_key.to_string(),
            self.name.clone(),
        );
        let (mutable_id, mutable) = crate::blocking(move || {
            let io = |e: bk_cache::CacheError| OpError::new(e.to_string());
            let existing = cache
                .named(&key)
                .map_err(io)?
                .and_then(|id| cache.get(&id).ok().flatten());
            let mutable = match existing {
                Some(held) => held,
                None => {
                    let (id, _) = cache.create_dir().map_err(io)?;
                    let held = cache
                        .commit(
                            &id,
                            RecordType::LocalSource,
                            &format!("local source for {name}"),
                            vec![],
                            true,
                        )
                        .map_err(io)?;
                    cache.set_named(&key, &id).map_err(io)?;
                    held
                }
            };
            Ok((mutable.id().to_string(), mutable))
        })
        .await?;

        let progress = ctx.progress.clone();
        let id = status_id.to_string();
        // One update per packet would grow the job's record without bound;
        // a few per second is what a progress display needs.
        let last_report = Mutex::new(std::time::Instant::now());
        let report: bk_fsutil::receive::ProgressFn = Arc::new(move |bytes| {
            let mut last = last_report.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= PROGRESS_INTERVAL {
                *last = std::time::Instant::now();
                progress.status(&id, bytes as i64, 0, started, None);
            }
        });
        let opts = ReceiveOptions {
            differ,
            progress: Some(report),
            ..Default::default()
        };
        let stats = filesync::sync_dir(session, request, mutable.path(), opts)
            .await
            .map_err(|e| OpError::new(e.to_string()))?;
        ctx.progress.status(
            status_id,
            stats.bytes_received as i64,
            0,
            started,
            Some(Timestamp::from(SystemTime::now())),
        );
        let (cache, id) = (self.cache.clone(), mutable_id.clone());
        crate::blocking(move || cache.touch(&id).map_err(|e| OpError::new(e.to_string()))).await?;

        let contexts = self.contexts.clone();
        let root = mutable.path().to_path_buf();
        let checksum = tokio::task::spawn_blocking(move || {
            let entries = bk_fsutil::walk::walk(&root, &Default::default())
                .map_err(|e| OpError::new(e.to_string()))?;
            tree_checksum(&entries, &contexts.memo)
                .map_err(|e| OpError::new(format!("failed to checksum context: {e}")))
        })
        .await
        .map_err(|e| OpError::new(e.to_string()))??;

        let unchanged = match last.as_ref().filter(|p| p.checksum == checksum) {
            Some(prev) => {
                let (cache, id) = (self.cache.clone(), prev.id.clone());
                crate::blocking(move || cache.get(&id).map_err(|e| OpError::new(e.to_string())))
                    .await?
            }
            None => None,
        };
        if let Some(snapshot) = unchanged {
            return Ok((checksum, snapshot));
        }
        let (cache, name) = (self.cache.clone(), self.name.clone());
        let src = mutable.path().to_path_buf();
        let snapshot = crate::blocking(move || {
            let (snap_id, snap_path) = cache
                .create_dir()
                .map_err(|e| OpError::new(e.to_string()))?;
            // The mutable copy only ever changes by new files renamed over
            // old ones, so the snapshot can share file data with it.
            if let Err(e) = bk_fileops::link_tree(&src, &snap_path) {
                let _ = std::fs::remove_dir_all(&snap_path);
                return Err(OpError::new(format!("failed to snapshot context: {e}")));
            }
            cache
                .commit(
                    &snap_id,
                    RecordType::Regular,
                    &format!("local://{name}"),
                    vec![mutable_id],
                    false,
                )
                .map_err(|e| OpError::new(e.to_string()))
        })
        .await?;
        *last = Some(Snapshot {
            checksum: checksum.clone(),
            id: snapshot.id().to_string(),
        });
        Ok((checksum, snapshot))
    }
}

#[async_trait]
impl Op<Ref> for LocalSource {
    fn works_for_key(&self) -> bool {
        true
    }

    async fn cache_key(&self, ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        let (checksum, snapshot) = self.sync(ctx).await?;
        *self.result.lock().await = Some(snapshot);
        // Filters change what the checksum covers; they are part of it.
        let material = format!(
            "local\0{checksum}\0{}\0{}\0{}",
            self.attrs
                .get(ATTR_INCLUDE)
                .map(String::as_str)
                .unwrap_or(""),
            self.attrs
                .get(ATTR_EXCLUDE)
                .map(String::as_str)
                .unwrap_or(""),
            self.attrs
                .get(ATTR_FOLLOW)
                .map(String::as_str)
                .unwrap_or(""),
        );
        Ok(Digest::of(material.as_bytes()))
    }

    async fn exec(&self, _ctx: &OpContext, _inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let result = self.result.lock().await.clone();
        result
            .map(|r| vec![r])
            .ok_or_else(|| OpError::new(format!("local source {} was not transferred", self.name)))
    }
}
