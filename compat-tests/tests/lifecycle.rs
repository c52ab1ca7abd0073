//! The daemon's life: bad flags and config fail fast with one clear line,
//! the root is locked, SIGTERM stops it cleanly, and a daemon killed outright
//! comes back on the same root with the same worker.

use std::io::{Read, Write};

use compat_tests::{Daemon, DaemonOptions, run_buildkitd};

#[test]
fn bad_flags_give_one_line_and_exit_2() {
    for (args, expect) in [
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--addr", "localhost:1234"][..], "invalid address"),
        (&["--oci-worker", "sometimes"][..], "--oci-worker"),
        (&["--tlscert", "/x.pem"][..], "--tlscert and --tlskey"),
        (
            &["--allow-insecure-entitlement", "everything"][..],
            "invalid entitlement",
        ),
    ] {
        let mut all = vec!["--config", "/nonexistent/buildkitd.toml"];
        all.extend_from_slice(args);
        let (code, stderr) = run_buildkitd(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("buildkitd: "), "{stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn malformed_config_gives_the_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("buildkitd.toml");
    std::fs::write(
        &config,
        "debug = true\n[grpc]\naddress = [\"unix:///x\"\ngid = 1\n",
    )
    .unwrap();
    let (code, stderr) = run_buildkitd(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("failed to parse config"), "{stderr}");
    assert!(stderr.contains("line "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    std::fs::write(&config, "[worker.oci]\nmax-parallelism = \"many\"\n").unwrap();
    let (code, stderr) = run_buildkitd(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid config"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_config_fragments_are_accepted() {
    // What BuildKit's harness writes: repeated tables, unknown keys.
    let config = r#"
[otel]
  socketPath = "/tmp/otel-grpc.sock"
[cdi]
  specDirs = ["/tmp/cdi"]
[registry."docker.io"]
  mirrors = ["localhost:5000"]
insecure-entitlements = ["network.host"]
[worker.oci]
  max-parallelism = 1
[worker.oci]
  networkMode = "host"
  futureKey = "ignored"
[dns]
  nameservers = ["127.0.0.1"]
"#;
    let daemon = Daemon::start(DaemonOptions {
        config: Some(config.into()),
        ..Default::default()
    });
    let workers = daemon.client().await.list_workers(vec![]).await.unwrap();
    assert_eq!(workers.len(), 1);
    let log = daemon.log_text();
    assert!(
        log.contains("unknown config key") && log.contains("futureKey"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_same_root_is_refused() {
    let daemon = Daemon::start(DaemonOptions::default());
    let other_socket = daemon.dir.path().join("other.sock");
    let (code, stderr) = run_buildkitd(&[
        "--config",
        "/nonexistent/buildkitd.toml",
        "--root",
        daemon.root.to_str().unwrap(),
        "--addr",
        &format!("unix://{}", other_socket.display()),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another instance running?"), "{stderr}");
    // The first one is untouched.
    assert!(daemon.client().await.info().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut daemon = Daemon::start(DaemonOptions::default());
    let mode = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o660
    );
    // A client holding an open history stream must not block shutdown.
    let client = daemon.client().await;
    let mut control = client.control();
    let stream = control
        .listen_build_history(bk_proto::moby::buildkit::v1::BuildHistoryRequest::default())
        .await
        .unwrap();
    let status = daemon.stop().expect("exit status");
    assert!(status.success(), "exit {status}:\n{}", daemon.log_text());
    assert!(!daemon.socket.exists());
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemon_restarts_on_the_same_root() {
    let mut daemon = Daemon::start(DaemonOptions::default());
    let before = daemon.client().await.list_workers(vec![]).await.unwrap();
    daemon.kill();
    // The stale socket and lock file are still there; neither may stop it.
    assert!(daemon.socket.exists());
    daemon.start_again();
    let after = daemon.client().await.list_workers(vec![]).await.unwrap();
    assert_eq!(before[0].id, after[0].id, "worker id must persist per root");
    daemon.restart();
    let again = daemon.client().await.list_workers(vec![]).await.unwrap();
    assert_eq!(before[0].id, again[0].id);
}

#[test]
fn debug_address_serves_the_goroutine_dump() {
    let daemon = Daemon::start(DaemonOptions::default());
    let mut stream = std::os::unix::net::UnixStream::connect(daemon.debug_socket()).unwrap();
    stream
        .write_all(b"GET /debug/pprof/goroutine?debug=2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
