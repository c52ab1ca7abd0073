//! The OCI worker: runs LLB exec ops in `runc`.
//!
//! Start at [`OciWorker`], the solver's worker: exec vertices become
//! [`exec::ExecOp`]s, diffs [`diff::DiffOp`]s (they share the overlay
//! tree code), everything else goes to [`bk_ops::SnapshotWorker`].
//! Snapshots stay plain directories (`bk-cache`); a step's writable mounts
//! are overlays on them ([`Snapshotter::Overlay`]) or copies
//! ([`Snapshotter::Native`]), and become new snapshots when the step
//! succeeds. [`OciWorker::start`] first removes what a killed daemon left
//! behind (containers, mounts); [`OciWorker::shutdown`] stops running steps.

pub mod cachemounts;
pub mod diff;
pub mod exec;
pub mod mounts;
pub mod overlay;
pub mod runc;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bk_cache::{CacheManager, Ref};
use bk_llb::Vertex;
use bk_proto::pb::op::Op as OpKind;
use bk_session::SessionManager;
use bk_solver::{Op, OpError, Worker};
use tokio_util::task::TaskTracker;

/// How a step's writable mounts are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotter {
    /// overlayfs over the input snapshot; the upper dir is the change.
    Overlay,
    /// A copy of the input (reflinked where the filesystem can).
    Native,
}

impl Snapshotter {
    /// `overlayfs`, `native`, or `auto` (overlayfs where the kernel mounts
    /// it over `dir`'s filesystem).
    pub fn choose(name: &str, dir: &Path) -> Result<Snapshotter, ExecError> {
        match name {
            "overlayfs" | "overlay" => Ok(Snapshotter::Overlay),
            "native" => Ok(Snapshotter::Native),
            "auto" | "" => Ok(if overlay_works(dir) {
                Snapshotter::Overlay
            } else {
                Snapshotter::Native
            }),
            other => Err(ExecError::Invalid(format!(
                "snapshotter {other:?} is not supported (overlayfs, native, auto)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlay => "overlayfs",
            Snapshotter::Native => "native",
        }
    }
}

/// Whether an overlay with `dir`'s filesystem as upper mounts (not on
/// overlayfs itself, nor on some network filesystems).
fn overlay_works(dir: &Path) -> bool {
    let probe = dir.join(format!("overlay-probe-{}", bk_cache::new_id()));
    let attempt = || -> Result<(), Box<dyn std::error::Error>> {
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir_all(probe.join(d))?;
        }
        mounts::mount_overlay(
            &[probe.join("lower").as_path()],
            Some((&probe.join("upper"), &probe.join("work"))),
            &probe.join("merged"),
        )?;
        mounts::unmount(&probe.join("merged"))?;
        Ok(())
    };
    let works = attempt().is_ok();
    let _ = mounts::unmount(&probe.join("merged"));
    let _ = std::fs::remove_dir_all(&probe);
    works
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// BuildKit's wording: clients and tests match on it.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    Failed { command: String, code: i32 },
    #[error("context canceled")]
    Canceled,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Ssh(String),
    #[error("runtime spec: {0}")]
    Spec(String),
    #[error("runc: {0}")]
    Runtime(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Cache(#[from] bk_cache::CacheError),
}

/// What every step of the worker shares.
pub(crate) struct Shared {
    pub(crate) cache: CacheManager,
    pub(crate) sessions: Arc<SessionManager>,
    pub(crate) runc: runc::Runc,
    pub(crate) snapshotter: Snapshotter,
    pub(crate) executor_dir: PathBuf,
    pub(crate) host_network: bool,
    pub(crate) cgroup_parent: Option<String>,
    pub(crate) no_process_sandbox: bool,
    pub(crate) apparmor_profile: Option<String>,
    pub(crate) cache_mounts: cachemounts::CacheMounts,
    pub(crate) tasks: TaskTracker,
    /// Canceled at shutdown: running steps kill their containers.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
}

/// Where the worker keeps its state, beside the snapshot cache.
#[derive(Debug, Clone)]
pub struct OciWorkerConfig {
    /// The worker's state directory (`<root>/runc-<snapshotter>`).
    pub state_dir: PathBuf,
    pub runc_binary: PathBuf,
    pub snapshotter: Snapshotter,
    /// Sandboxed steps (network mode unset) share the host's network
    /// (`--oci-worker-net=host`); otherwise they get loopback only.
    pub host_network: bool,
    /// The cgroup steps' cgroups go under (`defaultCgroupParent`); an exec
    /// op's own `cgroupParent` wins.
    pub cgroup_parent: Option<String>,
    /// Steps share the daemon's pid namespace.
    pub no_process_sandbox: bool,
    pub apparmor_profile: Option<String>,
}

/// The solver's worker with exec support.
pub struct OciWorker {
    snapshots: bk_ops::SnapshotWorker,
    shared: Arc<Shared>,
}

impl OciWorker {
    /// Removes what an earlier run left (containers under the worker's runc
    /// root, mounts under its state directory, step directories). Call it
    /// before opening the snapshot cache: a leftover mount must be gone
    /// before anything deletes directories.
    pub async fn recover(config: &OciWorkerConfig) -> Result<(), ExecError> {
        let runc = runc::Runc::new(&config.runc_binary, config.state_dir.join("runc"));
        // A container may still be dying while its mounts go: repeat until
        // nothing is running or mounted.
        for round in 0..5 {
            for id in runc.list().await.unwrap_or_default() {
                tracing::info!(container = %id, "removing a container left by an earlier run");
                runc.kill(&id).await;
                runc.delete(&id).await;
            }
            let dir = config.state_dir.clone();
            let left = tokio::task::spawn_blocking(move || -> Result<usize, ExecError> {
                let n =
                    mounts::unmount_all_under(&dir).map_err(|e| ExecError::Io(e.to_string()))?;
                if n > 0 {
                    tracing::info!(mounts = n, "unmounted what an earlier run left");
                }
                Ok(mounts::mounts_under(&dir)
                    .map_err(|e| ExecError::Io(e.to_string()))?
                    .len())
            })
            .await
            .map_err(|e| ExecError::Io(e.to_string()))?;
            match left {
                Ok(0) if runc.list().await.unwrap_or_default().is_empty() => break,
                Err(e) if round == 4 => return Err(e),
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let executor = config.state_dir.join("executor");
        tokio::task::spawn_blocking(move || {
            if executor.exists() {
                std::fs::remove_dir_all(&executor)
                    .map_err(|e| ExecError::Io(format!("remove {}: {e}", executor.display())))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ExecError::Io(e.to_string()))?
    }

    pub fn new(
        config: &OciWorkerConfig,
        cache: CacheManager,
        sessions: Arc<SessionManager>,
    ) -> Result<OciWorker, ExecError> {
        let executor_dir = config.state_dir.join("executor");
        std::fs::create_dir_all(&executor_dir)
            .map_err(|e| ExecError::Io(format!("create {}: {e}", executor_dir.display())))?;
        let shared = Arc::new(Shared {
            cache: cache.clone(),
            sessions: sessions.clone(),
            runc: runc::Runc::new(&config.runc_binary, config.state_dir.join("runc")),
            snapshotter: config.snapshotter,
            executor_dir,
            host_network: config.host_network,
            cgroup_parent: config.cgroup_parent.clone(),
            no_process_sandbox: config.no_process_sandbox,
            apparmor_profile: config.apparmor_profile.clone(),
            cache_mounts: cachemounts::CacheMounts::default(),
            tasks: TaskTracker::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
        });
        Ok(OciWorker {
            snapshots: bk_ops::SnapshotWorker::new(cache, sessions),
            shared,
        })
    }

    /// Enables `docker-image://` sources (`platform`: the worker's).
    pub fn with_images(
        mut self,
        images: Arc<bk_ops::image::ImageSources>,
        platform: bk_image::types::Platform,
    ) -> OciWorker {
        self.snapshots = self.snapshots.with_images(images, platform);
        self
    }

    /// A handle that stops the worker's running steps.
    pub fn stopper(&self) -> WorkerStopper {
        WorkerStopper {
            shared: self.shared.clone(),
        }
    }
}

/// Stops running steps at shutdown.
#[derive(Clone)]
pub struct WorkerStopper {
    shared: Arc<Shared>,
}

impl WorkerStopper {
    /// Stops running steps (their containers are killed), waits at most
    /// `grace` for their clean-up, then removes any container and mount
    /// still there: the daemon leaves nothing running or mounted.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.shared.stopping.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("exec steps still running at shutdown");
        }
        for id in self.shared.runc.list().await.unwrap_or_default() {
            self.shared.runc.kill(&id).await;
            self.shared.runc.delete(&id).await;
        }
        let dir = self.shared.executor_dir.clone();
        let _ = tokio::task::spawn_blocking(move || mounts::unmount_all_under(&dir)).await;
    }
}

impl Worker<Ref> for OciWorker {
    fn op(&self, vertex: &Vertex) -> Result<Arc<dyn Op<Ref>>, OpError> {
        match &vertex.op.op {
            Some(OpKind::Exec(exec)) => Ok(Arc::new(exec::ExecOp::new(
                vertex.op_key(),
                exec.clone(),
                self.shared.clone(),
            ))),
            Some(OpKind::Diff(diff)) => Ok(Arc::new(diff::DiffOp::new(
                vertex.op_key(),
                *diff,
                self.shared.cache.clone(),
            ))),
            _ => self.snapshots.op(vertex),
        }
    }
}
