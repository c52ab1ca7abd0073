//! Exec steps in real runc, on a rootfs of Debian's busybox-static sent as
//! the build context: env, user, working dir, outputs, every mount type,
//! network modes, failures, cancellation and a daemon killed mid-step, with
//! nothing left mounted or running afterwards. Needs root, runc and
//! /bin/busybox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bk_client::solve_opts::BuildFlags;
use bk_llb::builder::{self, ExecResult, MountOptions, SecretOptions, SshOptions, State};
use bk_proto::moby::buildkit::v1::StatusResponse;
use bk_proto::pb;
use compat_tests::{Daemon, DaemonOptions, random};

/// A root filesystem: busybox and its applets, users, an empty /tmp.
fn make_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

fn rootfs() -> State {
    builder::local("rootfs", BTreeMap::new()).with_name("[internal] load rootfs")
}

fn sh(root: &State, script: &str) -> builder::Exec {
    root.run(["/bin/sh", "-c", script])
}

#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<StatusResponse>>>);

impl Recorded {
    fn logs(&self) -> String {
        let mut out = Vec::new();
        for u in self.0.lock().unwrap().iter() {
            for l in &u.logs {
                out.extend_from_slice(&l.msg);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    /// Final state of each named vertex: (cached, error).
    fn vertices(&self) -> BTreeMap<String, (bool, String)> {
        let mut out = BTreeMap::new();
        for u in self.0.lock().unwrap().iter() {
            for v in &u.vertexes {
                if v.completed.is_some() {
                    out.insert(v.name.clone(), (v.cached, v.error.clone()));
                }
            }
        }
        out
    }
}

struct Build<'a> {
    daemon: &'a Daemon,
    rootfs: &'a Path,
    flags: BuildFlags,
}

impl<'a> Build<'a> {
    fn new(daemon: &'a Daemon, rootfs: &'a Path) -> Build<'a> {
        Build {
            daemon,
            rootfs,
            flags: BuildFlags::default(),
        }
    }

    async fn run(
        mut self,
        def: pb::Definition,
        out: Option<&Path>,
    ) -> (Result<(), String>, Recorded) {
        self.flags
            .local
            .push(format!("rootfs={}", self.rootfs.display()));
        if let Some(out) = out {
            self.flags
                .output
                .push(format!("type=local,dest={}", out.display()));
        }
        let client = self.daemon.client().await;
        let prepared = self
            .flags
            .to_request(Some(def), &random("ref"), &random("session"))
            .unwrap();
        let recorded = Recorded::default();
        let sink = recorded.0.clone();
        let result = client
            .build(prepared, move |u| sink.lock().unwrap().push(u))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        (result, recorded)
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The runc state directory of the daemon's worker.
fn runc_root(daemon: &Daemon) -> PathBuf {
    let worker = std::fs::read_dir(&daemon.root)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("runc-"))
        .expect("worker state dir")
        .path();
    worker.join("runc")
}

fn runc_list(daemon: &Daemon) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root(daemon))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The cgroup directories of container `id` (v1 hierarchies or v2).
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let v2 = Path::new("/sys/fs/cgroup/buildkit").join(id);
    if v2.exists() {
        out.push(v2);
    }
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path().join("buildkit").join(id);
        if path.exists() {
            out.push(path);
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

fn start(snapshotter: &str) -> Daemon {
    Daemon::start(DaemonOptions {
        args: vec![format!("--oci-worker-snapshotter={snapshotter}")],
        ..Default::default()
    })
}

fn steps_definition() -> pb::Definition {
    let first = sh(
        &rootfs(),
        "mkdir -p /res && echo hello-from-the-step && echo to-stderr >&2 && \
         echo \"$FOO\" > /res/env && pwd > /res/pwd && id > /res/id-root && \
         hostname > /res/hostname && cat /etc/hosts > /res/hosts && \
         ip -o link | wc -l > /res/links && echo \"$PATH\" > /res/path && \
         rm /etc/group && ln -s /bin/busybox /res/link",
    )
    .env("FOO", "bar baz")
    .cwd("/work/dir")
    .with_name("first")
    .finish();
    let second = sh(&first.root(), "id > /tmp/id-app && touch /tmp/made-by-app && stat -c '%u:%g' /tmp/made-by-app > /tmp/owner")
        .user("app")
        .with_name("second")
        .finish();
    second.root().marshal()
}

async fn steps_with_env_user_workdir(snapshotter: &str) {
    let mut daemon = start(snapshotter);
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let out = tempfile::tempdir().unwrap();
    let (result, recorded) = Build::new(&daemon, ctx.path())
        .run(steps_definition(), Some(out.path()))
        .await;
    result.unwrap();
    let o = out.path();
    assert_eq!(read(o.join("res/env")), "bar baz\n");
    assert_eq!(read(o.join("res/pwd")), "/work/dir\n");
    assert!(o.join("work/dir").is_dir(), "working dir created");
    assert!(read(o.join("res/id-root")).starts_with("uid=0(root) gid=0(root)"));
    assert_eq!(read(o.join("res/hostname")), "buildkitsandbox\n");
    assert!(read(o.join("res/hosts")).contains("localhost buildkitsandbox"));
    assert_eq!(read(o.join("res/links")).trim(), "1", "only loopback");
    assert_eq!(
        read(o.join("res/path")).trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(
        std::fs::read_link(o.join("res/link")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Deleted in the first step (a whiteout in the overlay), still gone.
    assert!(!o.join("etc/group").exists());
    assert!(o.join("etc/passwd").exists());
    // With /etc/group gone, the user has no supplementary groups.
    assert!(read(o.join("tmp/id-app")).starts_with("uid=1000(app) gid=1000"));
    // Owners as the step saw them (the local exporter gives the files
    // to the client's user, as BuildKit's does).
    assert_eq!(read(o.join("tmp/owner")), "1000:1000\n");
    // Mount points runc made are not part of the result.
    assert!(!o.join("etc/hosts").exists());
    assert!(!o.join("etc/resolv.conf").exists());
    assert!(!o.join("proc").exists() || std::fs::read_dir(o.join("proc")).unwrap().count() == 0);
    let logs = recorded.logs();
    assert!(logs.contains("hello-from-the-step"), "{logs}");
    assert!(logs.contains("to-stderr"), "{logs}");

    // Unchanged: every step comes from the cache.
    let out2 = tempfile::tempdir().unwrap();
    let (result, recorded) = Build::new(&daemon, ctx.path())
        .run(steps_definition(), Some(out2.path()))
        .await;
    result.unwrap();
    let v = recorded.vertices();
    assert!(
        v.get("first").is_some_and(|v| v.0) && v.get("second").is_some_and(|v| v.0),
        "{v:?}"
    );
    assert_eq!(read(out2.path().join("res/env")), "bar baz\n");

    daemon.stop();
    assert!(runc_list(&daemon).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_with_env_user_workdir_on_overlayfs() {
    steps_with_env_user_workdir("overlayfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_with_env_user_workdir_on_native() {
    steps_with_env_user_workdir("native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_names_its_command_and_exit_code() {
    let daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let def = sh(&rootfs(), "echo about-to-fail; exit 3")
        .finish()
        .root()
        .marshal();
    let (result, recorded) = Build::new(&daemon, ctx.path()).run(def, None).await;
    let err = result.unwrap_err();
    assert!(
        err.contains(
            "process \"/bin/sh -c echo about-to-fail; exit 3\" did not complete successfully: exit code: 3"
        ),
        "{err}"
    );
    assert!(recorded.logs().contains("about-to-fail"));

    // Listed as valid, the same code is a success.
    let def = sh(&rootfs(), "exit 3")
        .valid_exit_codes(&[0, 3])
        .finish()
        .root()
        .marshal();
    Build::new(&daemon, ctx.path())
        .run(def, None)
        .await
        .0
        .unwrap();

    // A command that does not exist.
    let def = rootfs().run(["/no/such/binary"]).finish().root().marshal();
    let err = Build::new(&daemon, ctx.path())
        .run(def, None)
        .await
        .0
        .unwrap_err();
    assert!(err.contains("did not complete successfully"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_mounts_keep_their_content_between_builds() {
    let mut daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let def = |n: u32| {
        sh(
            &rootfs(),
            &format!("echo run{n} >> /cache/log && cp /cache/log /seen"),
        )
        .cache_mount("/cache", "shared-cache", pb::CacheSharingOpt::Shared, None)
        .finish()
        .root()
        .marshal()
    };
    let out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(def(1), Some(out.path()))
        .await
        .0
        .unwrap();
    assert_eq!(read(out.path().join("seen")), "run1\n");
    assert!(
        !out.path().join("cache").exists()
            || std::fs::read_dir(out.path().join("cache")).unwrap().count() == 0,
        "the cache's content is not in the result"
    );
    // Across a restart too.
    daemon.restart();
    let out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(def(2), Some(out.path()))
        .await
        .0
        .unwrap();
    assert_eq!(read(out.path().join("seen")), "run1\nrun2\n");

    // Disk usage knows it as a cache mount.
    let client = daemon.client().await;
    let du = client.disk_usage(Vec::new()).await.unwrap();
    assert!(
        du.iter().any(|r| r.record_type == "exec.cachemount"),
        "{du:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_readable_in_the_step_and_nowhere_else() {
    let daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("token");
    std::fs::write(&secret_file, "s3cr3t-Value-42").unwrap();
    let def = sh(
        &rootfs(),
        "cat /run/secrets/token | wc -c > /len && stat -c '%a %u' /run/secrets/token > /mode && \
         echo \"$TOKEN\" | wc -c > /envlen && grep -c s3cr3t /run/secrets/token > /found && \
         cat /run/secrets/token; echo",
    )
    .secret(
        "/run/secrets/token",
        "token",
        SecretOptions {
            uid: 1000,
            gid: 1000,
            mode: 0o440,
            optional: false,
        },
    )
    .secret_env("TOKEN", "token", false)
    .secret(
        "/run/secrets/absent",
        "absent",
        SecretOptions {
            optional: true,
            ..Default::default()
        },
    )
    .finish()
    .root()
    .marshal();
    let out = tempfile::tempdir().unwrap();
    let mut build = Build::new(&daemon, ctx.path());
    build
        .flags
        .secret
        .push(format!("id=token,src={}", secret_file.display()));
    let (result, recorded) = build.run(def, Some(out.path())).await;
    result.unwrap();
    assert_eq!(read(out.path().join("len")).trim(), "15");
    assert_eq!(read(out.path().join("mode")).trim(), "440 1000");
    assert_eq!(read(out.path().join("envlen")).trim(), "16");
    assert_eq!(read(out.path().join("found")).trim(), "1");
    assert!(
        !out.path().join("run").exists(),
        "no secret mount point in the result"
    );
    // The step printed it; BuildKit does not filter output either. What
    // matters is that nothing of the daemon's own puts it anywhere: the
    // tree, the daemon's log and its state directory.
    assert!(recorded.logs().contains("s3cr3t-Value-42"));
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "s3cr3t-Value-42"])
        .arg(out.path())
        .arg(&daemon.root)
        .arg(&daemon.log)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "secret found in {}",
        String::from_utf8_lossy(&grep.stdout)
    );

    // A required secret the client does not have fails the step.
    let def = sh(&rootfs(), "true")
        .secret("/run/secrets/x", "missing", SecretOptions::default())
        .finish()
        .root()
        .marshal();
    let err = Build::new(&daemon, ctx.path())
        .run(def, None)
        .await
        .0
        .unwrap_err();
    assert!(err.contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_bind_and_output_mounts() {
    let daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let data =
        builder::scratch().file(builder::FileActions::new().mkfile("/given", 0o644, b"given\n"));
    let exec: ExecResult = sh(
        &rootfs(),
        "grep -q ' /scratch tmpfs ' /proc/mounts && echo tmp > /scratch/t && \
         cat /input/given > /seen-input && (touch /input/x 2>/dev/null && echo rw || echo ro) > /input-mode && \
         echo produced > /data/made && cat /data/given >> /data/made && mkdir -p /empty-out/sub",
    )
    .tmpfs("/scratch", 1 << 20)
    .mount(
        "/input",
        &data,
        MountOptions {
            readonly: true,
            ..Default::default()
        },
    )
    .mount("/data", &data, MountOptions::default())
    .mount("/empty-out", &builder::scratch(), MountOptions::default())
    .finish();
    let root_out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(exec.root().marshal(), Some(root_out.path()))
        .await
        .0
        .unwrap();
    let r = root_out.path();
    assert_eq!(read(r.join("seen-input")), "given\n");
    assert_eq!(read(r.join("input-mode")), "ro\n");
    for stub in ["scratch", "input", "data", "empty-out"] {
        assert!(
            !r.join(stub).exists(),
            "{stub} mount point left in the result"
        );
    }
    let data_out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(
            exec.output("/data").unwrap().marshal(),
            Some(data_out.path()),
        )
        .await
        .0
        .unwrap();
    assert_eq!(read(data_out.path().join("made")), "produced\ngiven\n");
    let empty_out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(
            exec.output("/empty-out").unwrap().marshal(),
            Some(empty_out.path()),
        )
        .await
        .0
        .unwrap();
    assert!(empty_out.path().join("sub").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_needs_its_entitlement() {
    let daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let def = sh(&rootfs(), "ip -o link | wc -l > /links")
        .network(pb::NetMode::Host)
        .finish()
        .root()
        .marshal();
    let mut build = Build::new(&daemon, ctx.path());
    build.flags.allow.push("network.host".into());
    let err = build.run(def.clone(), None).await.0.unwrap_err();
    assert!(err.contains("network.host"), "{err}");
    let err = Build::new(&daemon, ctx.path())
        .run(def.clone(), None)
        .await
        .0
        .unwrap_err();
    assert!(err.contains("network.host is not allowed"), "{err}");
    drop(daemon);

    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--allow-insecure-entitlement=network.host".into()],
        ..Default::default()
    });
    let out = tempfile::tempdir().unwrap();
    let mut build = Build::new(&daemon, ctx.path());
    build.flags.allow.push("network.host".into());
    build.run(def, Some(out.path())).await.0.unwrap();
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(
        read(out.path().join("links")).trim(),
        host_links.to_string()
    );
    drop(daemon);

    // A worker set to host networking gives it to sandboxed steps, with no
    // entitlement; `--network=none` still isolates.
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--oci-worker-net=host".into()],
        ..Default::default()
    });
    let sandboxed = sh(&rootfs(), "ip -o link | wc -l > /links").finish();
    let isolated = sh(&sandboxed.root(), "ip -o link | wc -l > /links-none")
        .network(pb::NetMode::None)
        .finish();
    let out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(isolated.root().marshal(), Some(out.path()))
        .await
        .0
        .unwrap();
    assert_eq!(
        read(out.path().join("links")).trim(),
        host_links.to_string()
    );
    assert_eq!(read(out.path().join("links-none")).trim(), "1");
}

/// Waits until `cond` holds, for at most `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_stops_its_container_at_once() {
    use prost::Message;
    use std::io::Write;
    let mut daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let def = sh(&rootfs(), "echo sleeping; sleep 1000")
        .finish()
        .root()
        .marshal();
    // A client in its own process, killed as a user kills buildctl.
    let bkctl = compat_tests::buildkitd_path().with_file_name("bkctl");
    let mut client = std::process::Command::new(bkctl)
        .arg("--addr")
        .arg(daemon.addr())
        .arg("build")
        .arg("--local")
        .arg(format!("rootfs={}", ctx.path().display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(&def.encode_to_vec())
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || runc_list(&daemon).len() == 1).await,
        "the step never started"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || runc_list(&daemon).is_empty()).await,
        "container still there {:?} after the client was killed\n{}",
        killed.elapsed(),
        daemon.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(2), || mounts_under(&daemon.root)
            .is_empty())
        .await,
        "{:?}",
        mounts_under(&daemon.root)
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_step_leaves_nothing_after_restart() {
    let mut daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let def = sh(&rootfs(), "echo sleeping; sleep 1000")
        .finish()
        .root()
        .marshal();
    let recorded = Recorded::default();
    let sink = recorded.0.clone();
    let client = daemon.client().await;
    let mut flags = BuildFlags::default();
    flags.local.push(format!("rootfs={}", ctx.path().display()));
    let prepared = flags
        .to_request(Some(def), &random("ref"), &random("session"))
        .unwrap();
    let task = tokio::spawn(async move {
        client
            .build(prepared, move |u| sink.lock().unwrap().push(u))
            .await
    });
    assert!(
        wait_for(Duration::from_secs(30), || recorded
            .logs()
            .contains("sleeping"))
        .await
    );
    daemon.kill();
    let _ = task.await;
    let containers = runc_list(&daemon);
    assert_eq!(containers.len(), 1, "the step outlives a SIGKILL");
    assert!(!mounts_under(&daemon.root).is_empty());
    assert!(!cgroups_of(&containers[0]).is_empty());
    daemon.start_again();
    assert!(
        cgroups_of(&containers[0]).is_empty(),
        "{:?}",
        cgroups_of(&containers[0])
    );
    assert!(
        runc_list(&daemon).is_empty(),
        "restart removes the container"
    );
    assert!(
        mounts_under(&daemon.root).is_empty(),
        "{:?}\n{}",
        mounts_under(&daemon.root),
        daemon.log_text()
    );
    // And the daemon still builds.
    let def = sh(&rootfs(), "echo ok > /ok").finish().root().marshal();
    let out = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(def, Some(out.path()))
        .await
        .0
        .unwrap();
    assert_eq!(read(out.path().join("ok")), "ok\n");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_agent_sockets_are_mounted_as_asked() {
    let daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    // A stand-in agent: the step only looks at the socket.
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = agent_dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let def = sh(
        &rootfs(),
        "stat -c '%F %a %u' /run/buildkit/ssh_agent.0 > /sock && echo \"$SSH_AUTH_SOCK\" > /env",
    )
    .ssh(
        None,
        "default",
        SshOptions {
            uid: 1000,
            gid: 1000,
            mode: 0o600,
            optional: false,
        },
    )
    .finish()
    .root()
    .marshal();
    let out = tempfile::tempdir().unwrap();
    let mut build = Build::new(&daemon, ctx.path());
    build.flags.ssh.push(format!("default={}", agent.display()));
    build.run(def.clone(), Some(out.path())).await.0.unwrap();
    assert_eq!(read(out.path().join("sock")).trim(), "socket 600 1000");
    assert_eq!(
        read(out.path().join("env")).trim(),
        "/run/buildkit/ssh_agent.0"
    );
    assert!(!out.path().join("run").exists());
    // Without an agent from the client, a required ssh mount fails (a
    // cached step would not need one, so this one is not).
    let def = sh(&rootfs(), "true")
        .ssh(None, "default", SshOptions::default())
        .ignore_cache()
        .finish()
        .root()
        .marshal();
    let err = Build::new(&daemon, ctx.path())
        .run(def, None)
        .await
        .0
        .unwrap_err();
    assert!(err.contains("ssh") || err.contains("SSH"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_mid_step_leaves_nothing_running() {
    let mut daemon = start("auto");
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    // A marker no other test's process has.
    let def = sh(&rootfs(), "echo sleeping; exec sleep 997")
        .finish()
        .root()
        .marshal();
    let recorded = Recorded::default();
    let sink = recorded.0.clone();
    let client = daemon.client().await;
    let mut flags = BuildFlags::default();
    flags.local.push(format!("rootfs={}", ctx.path().display()));
    let prepared = flags
        .to_request(Some(def), &random("ref"), &random("session"))
        .unwrap();
    let task = tokio::spawn(async move {
        client
            .build(prepared, move |u| sink.lock().unwrap().push(u))
            .await
    });
    assert!(
        wait_for(Duration::from_secs(30), || recorded
            .logs()
            .contains("sleeping"))
        .await
    );
    // SIGTERM; `stop` also fails on any mount left under the root.
    let stop = tokio::task::spawn_blocking(move || {
        daemon.stop();
        daemon
    });
    let daemon = stop.await.unwrap();
    assert!(task.await.unwrap().is_err(), "the build cannot succeed");
    assert!(runc_list(&daemon).is_empty());
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", "sleep 997"])
        .output()
        .unwrap();
    assert!(
        survivors.stdout.is_empty(),
        "step processes outlived the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_steps_need_their_entitlement() {
    let ctx = tempfile::tempdir().unwrap();
    make_rootfs(ctx.path());
    let step = |security| {
        sh(
            &rootfs(),
            "grep CapEff /proc/self/status > /caps; \
             (unshare -U true 2>/dev/null && echo yes || echo no) > /userns",
        )
        .security(security)
        .finish()
        .root()
        .marshal()
    };
    let daemon = start("auto");
    let err = Build::new(&daemon, ctx.path())
        .run(step(pb::SecurityMode::Insecure), None)
        .await
        .0
        .unwrap_err();
    assert!(err.contains("security.insecure is not allowed"), "{err}");
    drop(daemon);

    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--allow-insecure-entitlement=security.insecure".into()],
        ..Default::default()
    });
    let caps = |out: &Path| {
        read(out.join("caps"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let sandboxed = tempfile::tempdir().unwrap();
    Build::new(&daemon, ctx.path())
        .run(step(pb::SecurityMode::Sandbox), Some(sandboxed.path()))
        .await
        .0
        .unwrap();
    let insecure = tempfile::tempdir().unwrap();
    let mut build = Build::new(&daemon, ctx.path());
    build.flags.allow.push("security.insecure".into());
    let (result, recorded) = build
        .run(step(pb::SecurityMode::Insecure), Some(insecure.path()))
        .await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", recorded.logs()));
    // Sandboxed: BuildKit's fourteen capabilities; insecure: all of them.
    assert_eq!(caps(sandboxed.path()), "00000000a80425fb");
    assert_ne!(caps(insecure.path()), caps(sandboxed.path()));
    // The sandbox's seccomp profile refuses new user namespaces.
    assert_eq!(read(sandboxed.path().join("userns")).trim(), "no");
    assert_eq!(read(insecure.path().join("userns")).trim(), "yes");
}
