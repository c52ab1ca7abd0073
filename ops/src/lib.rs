//! The LLB ops that need no container, over snapshots from `bk-cache`:
//! `local://`, `docker-image://`, `http(s)://` and `git://` sources, file
//! ops, merge; and the exporters that hand results to the client (`local`,
//! `tar`).
//!
//! [`SnapshotWorker`] is the solver's [`Worker`]: it turns each vertex into an
//! [`Op`] producing [`Ref`]s. [`SnapshotResults`] is the solver's persistent
//! result cache. Exec ops arrive with the OCI worker, which builds on this.

pub mod checksum;
pub mod export;
pub mod file;
pub mod git;
pub mod http;
pub mod image;
pub mod image_export;
pub mod local;
mod scratch;
pub mod tree;

use std::sync::Arc;

use async_trait::async_trait;
use bk_cache::{CacheManager, Ref};
use bk_llb::{Digest, Vertex};
use bk_proto::pb::op::Op as OpKind;
use bk_session::SessionManager;
use bk_solver::{Op, OpError, ResultCache, Worker};

pub use local::LocalContexts;

/// Turns vertices into ops over snapshots.
pub struct SnapshotWorker {
    cache: CacheManager,
    sessions: Arc<SessionManager>,
    contexts: Arc<LocalContexts>,
    images: Option<(Arc<image::ImageSources>, bk_image::types::Platform)>,
    /// The client of `http(s)://` sources, made on first use.
    web: std::sync::OnceLock<bk_image::registry::web::WebClient>,
    /// Locks of `git://` sources' repositories and checkouts.
    git: Arc<git::GitRepos>,
}

impl SnapshotWorker {
    pub fn new(cache: CacheManager, sessions: Arc<SessionManager>) -> SnapshotWorker {
        SnapshotWorker {
            cache,
            sessions,
            contexts: Arc::new(LocalContexts::default()),
            images: None,
            web: std::sync::OnceLock::new(),
            git: Arc::default(),
        }
    }

    /// Enables `docker-image://` sources; `platform` is the worker's.
    pub fn with_images(
        mut self,
        images: Arc<image::ImageSources>,
        platform: bk_image::types::Platform,
    ) -> SnapshotWorker {
        self.images = Some((images, platform));
        self
    }
}

impl SnapshotWorker {
    fn web(&self) -> Result<bk_image::registry::web::WebClient, OpError> {
        if let Some(c) = self.web.get() {
            return Ok(c.clone());
        }
        let client = bk_image::registry::web::WebClient::new(concat!(
            "buildkit-rs/",
            env!("CARGO_PKG_VERSION")
        ))
        .map_err(|e| OpError::new(e.to_string()))?;
        Ok(self.web.get_or_init(|| client).clone())
    }
}

impl Worker<Ref> for SnapshotWorker {
    fn op(&self, vertex: &Vertex) -> Result<Arc<dyn Op<Ref>>, OpError> {
        match &vertex.op.op {
            Some(OpKind::Source(source)) => {
                let (scheme, rest) = source.identifier.split_once("://").ok_or_else(|| {
                    OpError::new(format!("invalid source identifier {:?}", source.identifier))
                })?;
                match scheme {
                    "local" => Ok(Arc::new(local::LocalSource::new(
                        rest.to_string(),
                        source.attrs.clone(),
                        self.cache.clone(),
                        self.sessions.clone(),
                        self.contexts.clone(),
                    ))),
                    "docker-image" => match &self.images {
                        Some((images, default)) => Ok(Arc::new(image::ImageSource::new(
                            rest,
                            &source.attrs,
                            image::op_platform(vertex.op.platform.as_ref(), default),
                            images.clone(),
                        )?)),
                        None => Err(OpError::new("image sources are not configured")),
                    },
                    "http" | "https" => Ok(Arc::new(http::HttpSource::new(
                        source.identifier.clone(),
                        &source.attrs,
                        self.web()?,
                        self.cache.clone(),
                        self.sessions.clone(),
                    )?)),
                    "git" => Ok(Arc::new(git::GitSource::new(
                        rest,
                        &source.attrs,
                        self.cache.clone(),
                        self.sessions.clone(),
                        self.git.clone(),
                    )?)),
                    other => Err(OpError::new(format!(
                        "source type {other} is not supported yet"
                    ))),
                }
            }
            Some(OpKind::File(f)) => Ok(Arc::new(file::FileOp::new(
                vertex.op_key(),
                f.clone(),
                vertex.inputs.len(),
                self.cache.clone(),
                self.contexts.memo.clone(),
            ))),
            Some(OpKind::Merge(m)) => Ok(Arc::new(file::MergeOp::new(
                vertex.op_key(),
                m.clone(),
                self.cache.clone(),
            ))),
            Some(OpKind::Exec(_)) => Err(OpError::new(
                "exec ops need the OCI worker, which is not available yet",
            )),
            Some(OpKind::Diff(_)) => Err(OpError::new("diff ops need the OCI worker")),
            Some(OpKind::Build(_)) => Err(OpError::new("build ops are not supported")),
            Some(OpKind::Passthrough(_)) => {
                Err(OpError::new("passthrough ops are not supported yet"))
            }
            None => Err(OpError::new("op has no operation")),
        }
    }
}

/// The solver's result cache, kept in the cache database: survives restarts.
pub struct SnapshotResults {
    cache: CacheManager,
}

impl SnapshotResults {
    pub fn new(cache: CacheManager) -> SnapshotResults {
        SnapshotResults { cache }
    }
}

#[async_trait]
impl ResultCache<Ref> for SnapshotResults {
    async fn load(&self, key: &Digest) -> Option<Vec<Ref>> {
        let cache = self.cache.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let ids = cache.result(&key).ok()??;
            ids.iter()
                .map(|id| cache.get(id).ok().flatten())
                .collect::<Option<Vec<Ref>>>()
        })
        .await
        .ok()
        .flatten()
    }

    async fn save(&self, key: &Digest, results: &[Ref]) {
        let cache = self.cache.clone();
        let key = key.to_string();
        let ids: Vec<String> = results.iter().map(|r| r.id().to_string()).collect();
        let saved = tokio::task::spawn_blocking(move || cache.set_result(&key, &ids)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "failed to record a result in the cache");
        }
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, OpError>
where
    F: FnOnce() -> Result<T, OpError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OpError::new(e.to_string()))?
}
