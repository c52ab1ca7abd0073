//! Test harness: start the real `buildkitd` the way BuildKit's own
//! integration harness does (temp `--root`, a unix socket inside it, the
//! same flags), talk to it over the wire, and check after it stops that it
//! left no mount behind.
//!
//! Start with [`Daemon::start`]; [`certs`] makes throwaway TLS material.

pub mod certs;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bk_client::{Client, TlsOptions};

/// How long a daemon gets to create its socket, as in BuildKit's harness.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long SIGTERM gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `buildkitd` binary under test: `$BUILDKITD`, or the one cargo built
/// next to this test executable.
pub fn buildkitd_path() -> PathBuf {
    if let Some(path) = std::env::var_os("BUILDKITD") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/buildkitd
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("buildkitd");
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

/// What to start a daemon with, beyond the harness defaults.
#[derive(Default, Clone)]
pub struct DaemonOptions {
    /// Extra flags after the harness's own.
    pub args: Vec<String>,
    /// Written to `<tmp>/buildkitd.toml` and passed with `--config`.
    pub config: Option<String>,
    /// Replaces the default unix `--addr` when non-empty.
    pub addrs: Vec<String>,
}

/// A running `buildkitd` with its own temp root. Stopped (SIGTERM) on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    options: DaemonOptions,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon and waits until its socket accepts connections.
    pub fn start(options: DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("bk-compat-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("root");
        let socket = dir.path().join("buildkitd.sock");
        let log = dir.path().join("buildkitd.log");
        let mut daemon = Daemon {
            dir,
            root,
            socket,
            log,
            options,
            child: None,
        };
        daemon.spawn_and_wait();
        daemon
    }

    /// The harness's command line for this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(buildkitd_path());
        cmd.args([
            "--oci-worker=true",
            "--containerd-worker=false",
            "--oci-worker-gc=false",
            "--oci-worker-labels=org.mobyproject.buildkit.worker.sandbox=true",
        ]);
        let config = self.dir.path().join("buildkitd.toml");
        if let Some(text) = &self.options.config {
            std::fs::write(&config, text).expect("write config");
        }
        cmd.arg(format!("--config={}", config.display()));
        cmd.arg("--root").arg(&self.root);
        if self.options.addrs.is_empty() {
            cmd.arg("--addr")
                .arg(format!("unix://{}", self.socket.display()));
        } else {
            for addr in &self.options.addrs {
                cmd.arg("--addr").arg(addr);
            }
        }
        cmd.arg("--debug");
        cmd.env(
            "BUILDKITD_DEBUGADDR",
            format!("unix://{}", self.debug_socket().display()),
        );
        cmd.args(&self.options.args);
        cmd
    }

    pub fn debug_socket(&self) -> PathBuf {
        self.dir.path().join("buildkitd-debug.sock")
    }

    fn spawn_and_wait(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn buildkitd");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = self.ready_probe();
        loop {
            if probe() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("buildkitd exited early ({status}):\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!(
                    "buildkitd not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ready = the first address accepts connections.
    fn ready_probe(&self) -> Box<dyn Fn() -> bool> {
        let first = self
            .options
            .addrs
            .first()
            .cloned()
            .unwrap_or_else(|| format!("unix://{}", self.socket.display()));
        if let Some(path) = first.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            Box::new(move || std::os::unix::net::UnixStream::connect(&path).is_ok())
        } else {
            let hostport = first.trim_start_matches("tcp://").to_string();
            Box::new(move || std::net::TcpStream::connect(&hostport).is_ok())
        }
    }

    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client over the unix socket.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr(), None, Duration::from_secs(5))
            .await
            .expect("connect to daemon")
    }

    /// A client to any address, with optional TLS.
    pub async fn client_at(
        addr: &str,
        tls: Option<&TlsOptions>,
    ) -> Result<Client, bk_client::ClientError> {
        Client::connect(addr, tls, Duration::from_secs(5)).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then SIGKILL after the harness's grace period. Returns the
    /// exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.assert_no_leaked_mounts();
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().ok();
                self.assert_no_leaked_mounts();
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same root and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Starts again after [`Daemon::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn_and_wait();
    }

    /// BuildKit's harness fails a test when a mount under the daemon's temp
    /// dir outlives it; so do we.
    pub fn assert_no_leaked_mounts(&self) {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open("/proc/self/mountinfo") {
            let _ = f.read_to_string(&mut text);
        }
        let dir = self.dir.path().to_string_lossy().to_string();
        let leaked: Vec<&str> = text
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
            .collect();
        assert!(leaked.is_empty(), "leaked mountpoints: {leaked:#?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Runs `buildkitd` with `args` (no harness flags) to completion, for
/// start-up failures. Returns exit code and stderr.
pub fn run_buildkitd(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(buildkitd_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run buildkitd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An id no other test of this run uses (build refs, session ids).
pub fn random(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
