//! One exec vertex: mount its inputs, run its command in runc, turn its
//! writable mounts into new snapshots.
//!
//! A step runs in its own task under its own directory
//! (`<worker>/executor/<id>`), so whatever happens to the build — success,
//! failure, cancellation — the same code kills the container, unmounts
//! everything beneath that directory and removes it. The op's future only
//! waits for that task; dropping it cancels the step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bk_cache::{RecordType, Ref};
use bk_llb::Digest;
use bk_proto::pb;
use bk_solver::{Op, OpContext, OpError};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::spec::{Network, SpecMount, SpecParams};
use crate::{ExecError, Shared, Snapshotter, mounts, overlay};

/// BuildKit's default PATH, for steps whose env has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Output kept per step; the rest is dropped with a note, as BuildKit does.
const LOG_LIMIT: usize = 2 * 1024 * 1024;
const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// One exec vertex.
pub struct ExecOp {
    key: Digest,
    exec: pb::ExecOp,
    shared: Arc<Shared>,
}

impl ExecOp {
    pub(crate) fn new(key: Digest, exec: pb::ExecOp, shared: Arc<Shared>) -> ExecOp {
        ExecOp { key, exec, shared }
    }
}

#[async_trait]
impl Op<Ref> for ExecOp {
    async fn cache_key(&self, _ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        Ok(self.key.clone())
    }

    async fn exec(&self, ctx: &OpContext, inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let cancel = ctx.cancel.child_token();
        // Dropping this future (the solver gave up on the step) cancels it;
        // the task then cleans up on its own.
        let guard = cancel.clone().drop_guard();
        let step = Step {
            shared: self.shared.clone(),
            exec: self.exec.clone(),
            ctx: ctx.clone(),
            cancel,
            held_caches: Default::default(),
        };
        let task = self.shared.tasks.spawn(step.run(inputs));
        let result = task
            .await
            .map_err(|e| OpError::new(format!("exec task failed: {e}")))?;
        guard.disarm();
        result.map_err(|e| OpError::new(e.to_string()))
    }
}

/// How one mount is provided.
enum Source {
    /// A writable tree: an overlay (or a copy) over `lower`, mounted at
    /// `merged`; kept as a new snapshot when `output` is set.
    Layer(Layer),
    /// A host path bound into the container.
    Bind {
        path: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        size: i64,
    },
    /// Nothing to mount (an optional secret or agent that is absent).
    Skip,
}

struct Layer {
    /// The whole input tree (or an empty directory for scratch).
    lower: PathBuf,
    parent: Option<Ref>,
    upper: PathBuf,
    /// Where the tree is seen by the container (before the selector).
    merged: PathBuf,
    output: Option<usize>,
}

struct Step {
    shared: Arc<Shared>,
    exec: pb::ExecOp,
    ctx: OpContext,
    cancel: CancellationToken,
    /// Cache mounts this step holds, by id.
    held_caches: std::sync::Mutex<std::collections::HashMap<String, Ref>>,
}

fn describe_args(args: &[String]) -> String {
    args.join(" ")
}

fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::Invalid(msg.into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExecError> + Send + 'static,
) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExecError::Io(format!("blocking task: {e}")))?
}

impl Step {
    async fn run(self, inputs: Vec<Ref>) -> Result<Vec<Ref>, ExecError> {
        let id = bk_cache::new_id();
        let dir = self.shared.executor_dir.join(&id);
        let d = dir.clone();
        blocking(move || std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))).await?;
        let mut keep = Vec::new();
        let result = self.run_in(&id, &dir, inputs, &mut keep).await;
        // Always: no container, no mount, no directory left behind.
        self.shared.runc.delete(&id).await;
        let d = dir.clone();
        let cleaned = blocking(move || {
            mounts::unmount_all_under(&d).map_err(|e| ExecError::Io(e.to_string()))?;
            std::fs::remove_dir_all(&d).map_err(|e| io_err("remove", &d, e))
        })
        .await;
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, "cleaning up after an exec step");
        }
        drop(keep);
        result
    }

    async fn run_in(
        &self,
        id: &str,
        dir: &Path,
        inputs: Vec<Ref>,
        keep: &mut Vec<Box<dyn Send>>,
    ) -> Result<Vec<Ref>, ExecError> {
        let meta = self
            .exec
            .meta
            .clone()
            .ok_or_else(|| invalid("exec op has no meta"))?;
        if meta.args.is_empty() {
            return Err(invalid("exec op has no command"));
        }
        let shown = describe_args(&meta.args);

        // Outputs are exactly the mounts with an output index: 0..n.
        let mut outputs: Vec<usize> = self
            .exec
            .mounts
            .iter()
            .filter(|m| bk_llb::graph::exec_mount_has_output(m))
            .map(|m| m.output as usize)
            .collect();
        outputs.sort_unstable();
        if outputs.iter().enumerate().any(|(i, o)| *o != i) {
            return Err(invalid("exec op outputs are not 0..n, each once"));
        }
        let root_mount = self
            .exec
            .mounts
            .iter()
            .position(|m| m.dest == "/")
            .ok_or_else(|| invalid("exec op has no root mount"))?;

        // The bundle (config.json with the step's env) and secrets live on a
        // tmpfs: they never touch the disk.
        let bundle = dir.join("bundle");
        let b = bundle.clone();
        blocking(move || {
            std::fs::create_dir(&b).map_err(|e| io_err("create", &b, e))?;
            mounts::mount_tmpfs(&b, Some(16 << 20), 0o700).map_err(|e| ExecError::Io(e.to_string()))
        })
        .await?;

        let mut sources = Vec::with_capacity(self.exec.mounts.len());
        for (index, m) in self.exec.mounts.iter().enumerate() {
            let source = self
                .prepare_mount(index, m, &inputs, dir, &bundle, &shown, keep)
                .await?;
            sources.push(source);
        }
        let Source::Layer(root) = &sources[root_mount] else {
            return Err(invalid("the root mount must be a bind mount of a tree"));
        };
        let rootfs = root.merged.clone();

        // Who runs, where: resolved in the step's own root.
        let user = meta.user.clone();
        let r = rootfs.clone();
        let exec_user = blocking(move || {
            bk_fileops::resolve_exec_user(&r, &user).map_err(|e| ExecError::Invalid(e.to_string()))
        })
        .await?;
        let cwd = if meta.cwd.is_empty() {
            "/".to_string()
        } else {
            meta.cwd.clone()
        };
        if !cwd.starts_with('/') {
            return Err(invalid(format!(
                "working directory {cwd:?} is not absolute"
            )));
        }

        let hostname = if meta.hostname.is_empty() {
            DEFAULT_HOSTNAME.to_string()
        } else {
            meta.hostname.clone()
        };
        let network = match pb::NetMode::try_from(self.exec.network) {
            Ok(pb::NetMode::Host) => Network::Host,
            Ok(pb::NetMode::Unset) if self.shared.host_network => Network::Host,
            Ok(_) => Network::Isolated,
            Err(_) => {
                return Err(invalid(format!(
                    "unknown network mode {}",
                    self.exec.network
                )));
            }
        };
        let insecure = match pb::SecurityMode::try_from(self.exec.security) {
            Ok(pb::SecurityMode::Insecure) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(invalid(format!(
                    "unknown security mode {}",
                    self.exec.security
                )));
            }
        };

        // /etc/hosts and /etc/resolv.conf, generated for the step.
        let hosts = hosts_file(&hostname, &meta.extra_hosts)?;
        let resolv = resolv_conf(network == Network::Host);
        let (hosts_path, resolv_path) = (bundle.join("hosts"), bundle.join("resolv.conf"));
        let (hp, rp) = (hosts_path.clone(), resolv_path.clone());
        blocking(move || {
            std::fs::write(&hp, hosts).map_err(|e| io_err("write", &hp, e))?;
            std::fs::write(&rp, resolv).map_err(|e| io_err("write", &rp, e))
        })
        .await?;

        let mut spec_mounts = Vec::new();
        spec_mounts.push(SpecMount::bind(&hosts_path, "/etc/hosts", true));
        spec_mounts.push(SpecMount::bind(&resolv_path, "/etc/resolv.conf", true));
        for (m, source) in self.exec.mounts.iter().zip(&sources) {
            if m.dest == "/" {
                continue;
            }
            match source {
                Source::Layer(layer) => {
                    let path = within(&layer.merged, &m.selector).await?;
                    spec_mounts.push(SpecMount::bind(&path, &m.dest, false));
                }
                Source::Bind { path, readonly } => {
                    spec_mounts.push(SpecMount::bind(path, &m.dest, *readonly))
                }
                Source::Tmpfs { size } => spec_mounts.push(SpecMount::tmpfs(&m.dest, *size)),
                Source::Skip => {}
            }
        }
        // Parents before children; the order of equals is kept.
        spec_mounts.sort_by_key(|m| Path::new(&m.destination).components().count());

        // What the mounts make runc create in the root (mount points) is
        // removed afterwards, as BuildKit does: it is not the step's output.
        let dests: Vec<String> = spec_mounts.iter().map(|m| m.destination.clone()).collect();
        let r = rootfs.clone();
        let c = cwd.clone();
        let stubs = blocking(move || {
            let stubs = missing_paths(&r, &dests)?;
            let target = bk_fileops::resolve_in_root(&r, &c, true)
                .map_err(|e| ExecError::Invalid(e.to_string()))?;
            std::fs::create_dir_all(&target).map_err(|e| io_err("create", &target, e))?;
            Ok(stubs)
        })
        .await?;

        let mut env = meta.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_string());
        }
        if let Some(proxy) = &meta.proxy_env {
            for (names, value) in [
                (["HTTP_PROXY", "http_proxy"], &proxy.http_proxy),
                (["HTTPS_PROXY", "https_proxy"], &proxy.https_proxy),
                (["FTP_PROXY", "ftp_proxy"], &proxy.ftp_proxy),
                (["NO_PROXY", "no_proxy"], &proxy.no_proxy),
                (["ALL_PROXY", "all_proxy"], &proxy.all_proxy),
            ] {
                if !value.is_empty() {
                    for n in names {
                        env.push(format!("{n}={value}"));
                    }
                }
            }
        }
        for secret in &self.exec.secretenv {
            match bk_session::secrets::get_secret(
                &self.shared.sessions,
                self.ctx.session_group.as_slice(),
                &secret.id,
            )
            .await
            {
                Ok(value) => {
                    let value = String::from_utf8(value).map_err(|_| {
                        invalid(format!(
                            "secret {} is not valid UTF-8 for an env var",
                            secret.id
                        ))
                    })?;
                    env.push(format!("{}={value}", secret.name));
                }
                Err(bk_session::secrets::SecretError::NotFound(_)) if secret.optional => {}
                Err(e) => return Err(ExecError::Secret(e.to_string())),
            }
        }

        if meta.cgroup_parent.split('/').any(|c| c == "..") {
            return Err(invalid(format!(
                "invalid cgroup parent {:?}",
                meta.cgroup_parent
            )));
        }
        let params = SpecParams {
            args: meta.args.clone(),
            env,
            cwd,
            uid: exec_user.uid,
            gid: exec_user.gid,
            additional_gids: exec_user.additional_gids,
            hostname,
            rootfs: rootfs.clone(),
            readonly_rootfs: self.exec.mounts[root_mount].readonly,
            network,
            insecure,
            host_pid: self.shared.no_process_sandbox,
            apparmor_profile: self.shared.apparmor_profile.clone(),
            ulimits: meta
                .ulimit
                .iter()
                .map(|u| (u.name.clone(), u.soft, u.hard))
                .collect(),
            cgroups_path: cgroups_path(
                Some(meta.cgroup_parent.as_str())
                    .filter(|p| !p.is_empty())
                    .or(self.shared.cgroup_parent.as_deref()),
                id,
            ),
            mounts: spec_mounts,
        };
        let spec = crate::spec::build(&params)?;
        let config = serde_json::to_vec(&spec).map_err(|e| ExecError::Spec(e.to_string()))?;
        let cfg = bundle.join("config.json");
        blocking(move || std::fs::write(&cfg, config).map_err(|e| io_err("write", &cfg, e)))
            .await?;

        let status = self.run_container(id, &bundle).await?;

        let layers: Vec<Layer> = sources
            .into_iter()
            .filter_map(|s| match s {
                Source::Layer(l) => Some(l),
                _ => None,
            })
            .collect();
        let root_merged = rootfs;
        blocking(move || {
            remove_stubs(&root_merged, &stubs);
            Ok(())
        })
        .await?;

        match status {
            RunStatus::Canceled => return Err(ExecError::Canceled),
            RunStatus::Exited(code) => {
                let ok = if meta.valid_exit_codes.is_empty() {
                    code == 0
                } else {
                    meta.valid_exit_codes.contains(&code)
                };
                if !ok {
                    return Err(ExecError::Failed {
                        command: shown,
                        code,
                    });
                }
            }
        }

        self.commit_outputs(layers, outputs.len(), &shown).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_mount(
        &self,
        index: usize,
        m: &pb::Mount,
        inputs: &[Ref],
        dir: &Path,
        bundle: &Path,
        shown: &str,
        keep: &mut Vec<Box<dyn Send>>,
    ) -> Result<Source, ExecError> {
        if !m.dest.starts_with('/') {
            return Err(invalid(format!(
                "mount destination {:?} is not absolute",
                m.dest
            )));
        }
        let input = match m.input {
            -1 => None,
            i if i >= 0 && (i as usize) < inputs.len() => Some(inputs[i as usize].clone()),
            i => {
                return Err(invalid(format!(
                    "mount {} uses input {i}, which does not exist",
                    m.dest
                )));
            }
        };
        let kind = pb::MountType::try_from(m.mount_type)
            .map_err(|_| invalid(format!("unknown mount type {}", m.mount_type)))?;
        match kind {
            pb::MountType::Bind => {
                if m.readonly && m.dest != "/" {
                    let path = match &input {
                        Some(r) => within(r.path(), &m.selector).await?,
                        None => {
                            let empty = dir.join(format!("empty-{index}"));
                            let e = empty.clone();
                            blocking(move || {
                                std::fs::create_dir(&e).map_err(|err| io_err("create", &e, err))
                            })
                            .await?;
                            empty
                        }
                    };
                    return Ok(Source::Bind {
                        path,
                        readonly: true,
                    });
                }
                let output = (m.output >= 0).then_some(m.output as usize);
                self.layer(index, input, output, dir)
                    .await
                    .map(Source::Layer)
            }
            pb::MountType::Cache => {
                let opt = m
                    .cache_opt
                    .clone()
                    .ok_or_else(|| invalid(format!("cache mount {} has no options", m.dest)))?;
                let sharing = pb::CacheSharingOpt::try_from(opt.sharing)
                    .map_err(|_| invalid(format!("unknown cache sharing mode {}", opt.sharing)))?;
                let description = format!(
                    "cached mount {} from exec {shown} with id {:?}",
                    m.dest, opt.id
                );
                // One lease per cache within a step: a second `locked`
                // mount of the same id would wait for itself.
                let held = self
                    .held_caches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&opt.id)
                    .cloned();
                let root = match held {
                    Some(snapshot) => snapshot,
                    None => {
                        let lease = tokio::select! {
                            lease = self.shared.cache_mounts.acquire(
                                &self.shared.cache,
                                &opt.id,
                                sharing,
                                input,
                                description,
                            ) => lease?,
                            _ = self.cancel.cancelled() => return Err(ExecError::Canceled),
                            _ = self.shared.stopping.cancelled() => return Err(ExecError::Canceled),
                        };
                        let snapshot = lease.snapshot.clone();
                        self.held_caches
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(opt.id.clone(), snapshot.clone());
                        keep.push(Box::new(lease));
                        snapshot
                    }
                };
                // Other steps may be changing this directory right now: a
                // sub-path is pinned by descriptor and bound into the step's
                // own directory, so no symlink swapped in later is followed.
                let path = if m.selector.is_empty() || m.selector == "/" {
                    root.path().to_path_buf()
                } else {
                    let target = dir.join(format!("cache-{index}"));
                    let (root_path, selector, t) = (
                        root.path().to_path_buf(),
                        m.selector.clone(),
                        target.clone(),
                    );
                    blocking(move || pin_subdir(&root_path, &selector, &t)).await?;
                    target
                };
                Ok(Source::Bind {
                    path,
                    readonly: m.readonly,
                })
            }
            pb::MountType::Tmpfs => Ok(Source::Tmpfs {
                size: m.tmpfs_opt.as_ref().map_or(0, |t| t.size),
            }),
            pb::MountType::Secret => {
                let opt = m
                    .secret_opt
                    .clone()
                    .ok_or_else(|| invalid(format!("secret mount {} has no options", m.dest)))?;
                let data = match bk_session::secrets::get_secret(
                    &self.shared.sessions,
                    &self.ctx.session_group,
                    &opt.id,
                )
                .await
                {
                    Ok(data) => data,
                    Err(bk_session::secrets::SecretError::NotFound(_)) if opt.optional => {
                        return Ok(Source::Skip);
                    }
                    Err(e) => return Err(ExecError::Secret(e.to_string())),
                };
                let path = bundle.join(format!("secret-{index}"));
                let p = path.clone();
                blocking(move || write_private(&p, &data, opt.uid, opt.gid, opt.mode)).await?;
                Ok(Source::Bind {
                    path,
                    readonly: true,
                })
            }
            pb::MountType::Ssh => {
                let opt = m
                    .ssh_opt
                    .clone()
                    .ok_or_else(|| invalid(format!("ssh mount {} has no options", m.dest)))?;
                let agent_id = if opt.id.is_empty() {
                    bk_session::ssh::DEFAULT_ID.to_string()
                } else {
                    opt.id.clone()
                };
                let session = match self.ssh_session(&agent_id).await {
                    Ok(s) => s,
                    Err(_) if opt.optional => return Ok(Source::Skip),
                    Err(e) => return Err(e),
                };
                let path = bundle.join(format!("ssh-{index}.sock"));
                let listener = tokio::net::UnixListener::bind(&path)
                    .map_err(|e| io_err("listen", &path, e))?;
                let p = path.clone();
                blocking(move || {
                    rustix::fs::chown(
                        &p,
                        Some(rustix::fs::Uid::from_raw(opt.uid)),
                        Some(rustix::fs::Gid::from_raw(opt.gid)),
                    )
                    .map_err(|e| io_err("chown", &p, e.into()))?;
                    rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(opt.mode & 0o7777))
                        .map_err(|e| io_err("chmod", &p, e.into()))
                })
                .await?;
                let forwarder = tokio::spawn(async move {
                    while let Ok((conn, _)) = listener.accept().await {
                        let session = session.clone();
                        let agent_id = agent_id.clone();
                        tokio::spawn(async move {
                            if let Err(e) =
                                bk_session::ssh::forward_connection(&session, &agent_id, conn).await
                            {
                                tracing::debug!(error = %e, "ssh agent connection ended");
                            }
                        });
                    }
                });
                keep.push(Box::new(AbortOnDrop(forwarder)));
                Ok(Source::Bind {
                    path,
                    readonly: false,
                })
            }
        }
    }

    async fn ssh_session(&self, agent_id: &str) -> Result<Arc<bk_session::Session>, ExecError> {
        let id = agent_id.to_string();
        self.shared
            .sessions
            .any(&self.ctx.session_group, |session| {
                let id = id.clone();
                async move {
                    bk_session::ssh::check_agent(&session, &id).await?;
                    Ok(session)
                }
            })
            .await
            .map_err(|e| ExecError::Ssh(e.to_string()))
    }

    /// A writable tree over `input`, mounted (overlay) or copied (native).
    async fn layer(
        &self,
        index: usize,
        input: Option<Ref>,
        output: Option<usize>,
        dir: &Path,
    ) -> Result<Layer, ExecError> {
        let lower = match &input {
            Some(r) => r.path().to_path_buf(),
            None => dir.join(format!("empty-{index}")),
        };
        let upper = dir.join(format!("upper-{index}"));
        let work = dir.join(format!("work-{index}"));
        let merged = dir.join(format!("mnt-{index}"));
        let snapshotter = self.shared.snapshotter;
        let (l, u, w, mg) = (lower.clone(), upper.clone(), work.clone(), merged.clone());
        let scratch = input.is_none();
        let merged = blocking(move || {
            if scratch {
                std::fs::create_dir(&l).map_err(|e| io_err("create", &l, e))?;
            }
            match snapshotter {
                Snapshotter::Overlay => {
                    for p in [&u, &w, &mg] {
                        std::fs::create_dir(p).map_err(|e| io_err("create", p, e))?;
                    }
                    // The merged root shows the upper dir's owner and mode:
                    // give it the lower root's.
                    use std::os::unix::fs::MetadataExt;
                    let meta = std::fs::metadata(&l).map_err(|e| io_err("stat", &l, e))?;
                    rustix::fs::chown(
                        &u,
                        Some(rustix::fs::Uid::from_raw(meta.uid())),
                        Some(rustix::fs::Gid::from_raw(meta.gid())),
                    )
                    .map_err(|e| io_err("chown", &u, e.into()))?;
                    rustix::fs::chmod(&u, rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777))
                        .map_err(|e| io_err("chmod", &u, e.into()))?;
                    mounts::mount_overlay(&[l.as_path()], Some((&u, &w)), &mg)
                        .map_err(|e| ExecError::Io(e.to_string()))?;
                    Ok(mg)
                }
                Snapshotter::Native => {
                    // A copy in the step's directory; committing moves it
                    // into the snapshots, failing leaves it to the clean-up.
                    std::fs::create_dir(&mg).map_err(|e| io_err("create", &mg, e))?;
                    bk_fileops::clone_tree(&l, &mg).map_err(|e| ExecError::Io(e.to_string()))?;
                    Ok(mg)
                }
            }
        })
        .await?;
        Ok(Layer {
            lower,
            parent: input,
            upper,
            merged,
            output,
        })
    }

    async fn run_container(&self, id: &str, bundle: &Path) -> Result<RunStatus, ExecError> {
        let mut child = self.shared.runc.spawn_run(bundle, id)?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(LOG_LIMIT));
        let out_task =
            stdout.map(|s| tokio::spawn(stream_logs(s, 1, self.ctx.clone(), budget.clone())));
        let err_task =
            stderr.map(|s| tokio::spawn(stream_logs(s, 2, self.ctx.clone(), budget.clone())));
        let status = tokio::select! {
            status = child.wait() => Some(status.map_err(|e| ExecError::Runtime(format!("waiting for runc: {e}")))?),
            _ = self.cancel.cancelled() => None,
            _ = self.shared.stopping.cancelled() => None,
        };
        let status = match status {
            Some(s) => s,
            None => {
                tracing::debug!(container = %id, "step canceled: killing its container");
                self.shared.runc.kill(id).await;
                match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
                for t in [out_task, err_task].into_iter().flatten() {
                    t.abort();
                }
                return Ok(RunStatus::Canceled);
            }
        };
        for t in [out_task, err_task].into_iter().flatten() {
            let _ = t.await;
        }
        use std::os::unix::process::ExitStatusExt;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        };
        Ok(RunStatus::Exited(code))
    }

    async fn commit_outputs(
        &self,
        layers: Vec<Layer>,
        count: usize,
        shown: &str,
    ) -> Result<Vec<Ref>, ExecError> {
        let cache = self.shared.cache.clone();
        let snapshotter = self.shared.snapshotter;
        let shown = shown.to_string();
        let dests: BTreeMap<usize, String> = self
            .exec
            .mounts
            .iter()
            .filter(|m| bk_llb::graph::exec_mount_has_output(m))
            .map(|m| (m.output as usize, m.dest.clone()))
            .collect();
        blocking(move || {
            let mut out: Vec<Option<Ref>> = vec![None; count];
            for layer in layers {
                let Some(index) = layer.output else { continue };
                let description = format!(
                    "mount {} from exec {shown}",
                    dests.get(&index).map_or("/", String::as_str)
                );
                let parents = layer.parent.iter().map(|p| p.id().to_string()).collect();
                let (id, path) = cache.create_dir()?;
                let made = match snapshotter {
                    Snapshotter::Overlay => (|| {
                        // The upper dir is complete only once unmounted.
                        mounts::unmount(&layer.merged).map_err(|e| ExecError::Io(e.to_string()))?;
                        bk_fileops::link_tree(&layer.lower, &path)
                            .map_err(|e| ExecError::Io(e.to_string()))?;
                        overlay::apply_upper(&layer.upper, &path)
                            .map_err(|e| ExecError::Io(e.to_string()))
                    })(),
                    Snapshotter::Native => std::fs::remove_dir(&path)
                        .and_then(|()| std::fs::rename(&layer.merged, &path))
                        .map_err(|e| io_err("rename", &layer.merged, e)),
                };
                if let Err(e) = made {
                    // Unrecorded, so never served; removed now rather than
                    // at the next start.
                    let _ = std::fs::remove_dir_all(&path);
                    return Err(e);
                }
                let base = layer.parent.as_ref().map(|p| p.id().to_string());
                out[index] =
                    Some(cache.commit(&id, RecordType::Regular, &description, parents, false)?);
                if let Some(base) = base {
                    cache.set_base(&id, &base)?;
                }
            }
            out.into_iter()
                .enumerate()
                .map(|(i, r)| r.ok_or_else(|| invalid(format!("exec op output {i} has no mount"))))
                .collect()
        })
        .await
    }
}

enum RunStatus {
    Exited(i32),
    Canceled,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a stream's bytes to the vertex's log until the budget runs out.
async fn stream_logs(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    stream: i64,
    ctx: OpContext,
    budget: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Both streams draw on one budget: take atomically what is left.
        let Ok(left) = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            (left > 0).then(|| left - n.min(left))
        }) else {
            continue;
        };
        let take = n.min(left);
        ctx.progress.log(stream, &buf[..take]);
        if take < n || take == left {
            ctx.progress.log(
                stream,
                format!(
                    "\n[output clipped, log limit {}MiB reached]\n",
                    LOG_LIMIT >> 20
                )
                .as_bytes(),
            );
        }
    }
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> ExecError {
    ExecError::Io(format!("{op} {}: {e}", path.display()))
}

/// `selector` resolved inside `root` (a missing selector is the root).
async fn within(root: &Path, selector: &str) -> Result<PathBuf, ExecError> {
    if selector.is_empty() || selector == "/" {
        return Ok(root.to_path_buf());
    }
    let root = root.to_path_buf();
    let selector = selector.to_string();
    blocking(move || {
        bk_fileops::resolve_in_root(&root, &selector, true)
            .map_err(|e| ExecError::Invalid(e.to_string()))
    })
    .await
}

/// Binds `selector` inside `root` onto `target` (created as a directory),
/// resolving it once, inside `root`, through descriptors: `openat2` with
/// `RESOLVE_IN_ROOT` never leaves `root`, and the bind mount takes the
/// opened directory itself, whatever its path becomes afterwards.
fn pin_subdir(root: &Path, selector: &str, target: &Path) -> Result<(), ExecError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", root, e.into()))?;
    let rel = selector.trim_start_matches('/');
    let fd = rustix::fs::openat2(
        &root_fd,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| invalid(format!("cache mount source {selector:?}: {e}")))?;
    std::fs::create_dir(target).map_err(|e| io_err("create", target, e))?;
    let source = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    mounts::bind_mount(&source, target, false).map_err(|e| ExecError::Io(e.to_string()))
}

/// Writes a secret readable only as the mount options say.
fn write_private(path: &Path, data: &[u8], uid: u32, gid: u32, mode: u32) -> Result<(), ExecError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err("create", path, e))?;
    f.write_all(data).map_err(|e| io_err("write", path, e))?;
    rustix::fs::fchown(
        &f,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| io_err("chown", path, e.into()))?;
    rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(mode & 0o7777))
        .map_err(|e| io_err("chmod", path, e.into()))
}

/// For each destination, the first of its path components missing from the
/// root (what runc will create), as a path in the container.
fn missing_paths(root: &Path, dests: &[String]) -> Result<Vec<String>, ExecError> {
    let mut out = Vec::new();
    for dest in dests {
        let mut current = String::new();
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            let host = bk_fileops::resolve_in_root(root, &current, false)
                .map_err(|e| ExecError::Invalid(e.to_string()))?;
            if std::fs::symlink_metadata(&host).is_err() {
                if !out.contains(&current) {
                    out.push(current);
                }
                break;
            }
        }
    }
    Ok(out)
}

/// Removes mount stubs that are still only stubs (empty files, or
/// directories holding nothing but stubs). Paths are resolved again inside
/// the root: the step may have replaced a parent with a symlink.
fn remove_stubs(root: &Path, stubs: &[String]) {
    fn prune(path: &Path) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return true;
        };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(path) else {
                return false;
            };
            let mut empty = true;
            for e in entries.flatten() {
                if !prune(&e.path()) {
                    empty = false;
                }
            }
            empty && std::fs::remove_dir(path).is_ok()
        } else if meta.is_file() && meta.len() == 0 {
            std::fs::remove_file(path).is_ok()
        } else {
            false
        }
    }
    for stub in stubs {
        if let Ok(host) = bk_fileops::resolve_in_root(root, stub, false)
            && host != root
        {
            prune(&host);
        }
    }
}

/// Where a step's cgroup goes, as BuildKit places it: under
/// `<parent>/buildkit/`, a systemd slice (`name.slice:prefix:`) taken as
/// given, `/buildkit/` without a parent.
fn cgroups_path(parent: Option<&str>, id: &str) -> String {
    match parent {
        Some(p) if p.contains(".slice") && p.ends_with(':') => format!("{p}{id}"),
        Some(p) => {
            let trimmed = p.trim_matches('/');
            if trimmed.is_empty() {
                format!("/buildkit/{id}")
            } else {
                format!("/{trimmed}/buildkit/{id}")
            }
        }
        None => format!("/buildkit/{id}"),
    }
}

/// `/etc/hosts` for a step.
fn hosts_file(hostname: &str, extra: &[pb::HostIp]) -> Result<String, ExecError> {
    let mut out =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in extra {
        if h.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "invalid host IP {:?} for {:?}",
                h.ip, h.host
            )));
        }
        if h.host.is_empty() || h.host.contains(char::is_whitespace) {
            return Err(invalid(format!("invalid extra host name {:?}", h.host)));
        }
        out.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    Ok(out)
}

/// `/etc/resolv.conf` for a step: the host's, without loopback name servers
/// when the step has its own network (they would not answer there).
fn resolv_conf(host_network: bool) -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if host_network {
        return text;
    }
    let mut out = String::new();
    let mut servers = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or_default();
            let loopback = addr
                .parse::<std::net::IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false);
            if loopback {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn step_output_is_clipped_at_the_limit() {
        use bk_solver::progress::{Progress, VertexProgress};
        use futures::StreamExt;
        let progress = Progress::new();
        let ctx = OpContext {
            session_group: Arc::new(Vec::new()),
            progress: VertexProgress {
                progress: progress.clone(),
                digest: Digest::of(b"vertex"),
            },
            cancel: CancellationToken::new(),
        };
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(LOG_LIMIT));
        let output = vec![b'a'; LOG_LIMIT + 12345];
        stream_logs(&output[..], 1, ctx, budget).await;
        progress.finish();
        let mut text = Vec::new();
        let mut updates = progress.subscribe();
        while let Some(u) = updates.next().await {
            for l in u.logs {
                text.extend_from_slice(&l.msg);
            }
        }
        let note = b"\n[output clipped, log limit 2MiB reached]\n";
        assert_eq!(text.len(), LOG_LIMIT + note.len());
        assert!(text.ends_with(note));
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroups_path(None, "x"), "/buildkit/x");
        assert_eq!(cgroups_path(Some("/app"), "x"), "/app/buildkit/x");
        assert_eq!(cgroups_path(Some("a/b/"), "x"), "/a/b/buildkit/x");
        assert_eq!(
            cgroups_path(Some("system.slice:buildkit:"), "x"),
            "system.slice:buildkit:x"
        );
    }

    #[test]
    fn hosts() {
        let text = hosts_file(
            "buildkitsandbox",
            &[pb::HostIp {
                host: "db".into(),
                ip: "10.0.0.2".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tdb\n"
        );
        assert!(
            hosts_file(
                "h",
                &[pb::HostIp {
                    host: "x".into(),
                    ip: "nope".into()
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn stubs_are_found_and_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        let stubs = missing_paths(
            root.path(),
            &[
                "/etc/hosts".into(),
                "/run/buildkit/ssh_agent.0".into(),
                "/etc".into(),
            ],
        )
        .unwrap();
        assert_eq!(stubs, vec!["/etc/hosts".to_string(), "/run".to_string()]);
        std::fs::write(root.path().join("etc/hosts"), "").unwrap();
        std::fs::create_dir_all(root.path().join("run/buildkit")).unwrap();
        std::fs::write(root.path().join("run/buildkit/ssh_agent.0"), "").unwrap();
        remove_stubs(root.path(), &stubs);
        assert!(!root.path().join("etc/hosts").exists());
        assert!(!root.path().join("run").exists());
        assert!(root.path().join("etc").exists());
    }
}
