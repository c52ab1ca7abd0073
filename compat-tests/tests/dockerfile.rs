//! The built-in `dockerfile.v0` frontend end to end, as `buildctl build
//! --frontend dockerfile.v0 --local context=. --local dockerfile=.` drives
//! it: the Dockerfile and `.dockerignore` through the session, stages,
//! build args, RUN with mounts, COPY --from, and errors that name the line.
//! Needs root, runc and /bin/busybox (FROM scratch + busybox: no registry).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bk_client::solve_opts::BuildFlags;
use bk_proto::moby::buildkit::v1::StatusResponse;
use compat_tests::{Daemon, DaemonOptions, random};

/// A context holding busybox, and a Dockerfile beside it.
fn project(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<StatusResponse>>>);

impl Recorded {
    fn names(&self) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        for u in self.0.lock().unwrap().iter() {
            for v in &u.vertexes {
                if v.completed.is_some() {
                    out.insert(v.name.clone(), v.cached);
                }
            }
        }
        out
    }
    fn logs(&self) -> String {
        let mut out = Vec::new();
        for u in self.0.lock().unwrap().iter() {
            for l in &u.logs {
                out.extend_from_slice(&l.msg);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

async fn build(
    daemon: &Daemon,
    dir: &Path,
    out: Option<&Path>,
    opts: &[&str],
    extra: impl FnOnce(&mut BuildFlags),
) -> (Result<(), String>, Recorded) {
    let mut flags = BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        local: vec![
            format!("context={}", dir.display()),
            format!("dockerfile={}", dir.display()),
        ],
        opt: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    if let Some(out) = out {
        flags
            .output
            .push(format!("type=local,dest={}", out.display()));
    }
    extra(&mut flags);
    let prepared = flags.to_request(None, &random("df"), &random("s")).unwrap();
    let recorded = Recorded::default();
    let sink = recorded.0.clone();
    let result = daemon
        .client()
        .await
        .build(prepared, move |u| sink.lock().unwrap().push(u))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    (result, recorded)
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS tools
RUN mkdir -p /opt/tool && echo tool > /opt/tool/version

FROM base
ARG NAME=world
ENV GREETING=hello
WORKDIR /app
COPY --from=tools /opt/tool /app/tool
COPY ignored.txt* kept.txt /app/
RUN echo "$GREETING $NAME" > /app/out.txt && echo built-the-greeting
RUN --mount=type=cache,target=/cache echo x >> /cache/log && cp /cache/log /app/cachelog
RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /app/secretlen
RUN <<EOF
echo from-a-heredoc > /app/heredoc
echo "$GREETING" >> /app/heredoc
EOF
COPY <<EOF /app/inline.txt
written inline
EOF
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_stage_dockerfile_builds_with_args_mounts_and_ignore_files() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project");
    project(&dir, MULTI_STAGE);
    std::fs::write(dir.join("kept.txt"), "kept\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "ignored\n").unwrap();
    std::fs::write(dir.join(".dockerignore"), "ignored.txt\n").unwrap();
    let secret = tmp.path().join("token");
    std::fs::write(&secret, "0123456789").unwrap();
    let out = tmp.path().join("out");
    let (result, recorded) = build(&daemon, &dir, Some(&out), &["build-arg:NAME=rust"], |f| {
        f.secret.push(format!("id=tok,src={}", secret.display()))
    })
    .await;
    result.unwrap();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("app/out.txt"), "hello rust\n");
    assert_eq!(read("app/tool/version"), "tool\n");
    assert_eq!(read("app/kept.txt"), "kept\n");
    assert!(
        !out.join("app/ignored.txt").exists(),
        ".dockerignore applies"
    );
    assert_eq!(read("app/cachelog"), "x\n");
    assert_eq!(read("app/secretlen").trim(), "10");
    assert!(!out.join("run/secrets").exists());
    assert_eq!(read("app/heredoc"), "from-a-heredoc\nhello\n");
    assert_eq!(read("app/inline.txt"), "written inline\n");
    assert!(recorded.logs().contains("built-the-greeting"));
    let names = recorded.names();
    assert!(
        names
            .keys()
            .any(|n| n.starts_with("[internal] load build definition from Dockerfile")),
        "{names:?}"
    );

    // Unchanged: every step cached.
    let (result, recorded) = build(&daemon, &dir, None, &["build-arg:NAME=rust"], |f| {
        f.secret.push(format!("id=tok,src={}", secret.display()))
    })
    .await;
    result.unwrap();
    let names = recorded.names();
    let steps: Vec<_> = names.iter().filter(|(n, _)| n.contains(" RUN ")).collect();
    assert!(!steps.is_empty());
    assert!(steps.iter().all(|(_, cached)| **cached), "{names:?}");

    // --target picks a stage; its dependencies only.
    let out = tmp.path().join("target");
    build(&daemon, &dir, Some(&out), &["target=tools"], |_| {})
        .await
        .0
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("opt/tool/version")).unwrap(),
        "tool\n"
    );
    assert!(!out.join("app").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_errors_name_the_line() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("unknown");
    project(&dir, "FROM scratch\nCOPY busybox /bin/\nFOO bar\n");
    let err = build(&daemon, &dir, None, &[], |_| {}).await.0.unwrap_err();
    assert!(err.contains("unknown instruction: FOO"), "{err}");
    assert!(err.contains("line 3"), "{err}");

    let dir = tmp.path().join("failing");
    project(
        &dir,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 7\"]\n",
    );
    let err = build(&daemon, &dir, None, &[], |_| {}).await.0.unwrap_err();
    assert!(
        err.contains("did not complete successfully: exit code: 7"),
        "{err}"
    );

    let dir = tmp.path().join("missing");
    std::fs::create_dir_all(&dir).unwrap();
    let err = build(&daemon, &dir, None, &[], |_| {}).await.0.unwrap_err();
    assert!(err.contains("failed to read dockerfile"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_errors_carry_the_source_for_clients_to_print() {
    use prost::Message;
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(
        &dir,
        "FROM scratch\nCOPY busybox /bin/\nFOO bar\nRUN true\n",
    );
    let flags = BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        local: vec![
            format!("context={}", dir.display()),
            format!("dockerfile={}", dir.display()),
        ],
        ..Default::default()
    };
    let prepared = flags.to_request(None, &random("df"), &random("s")).unwrap();
    let err = daemon
        .client()
        .await
        .build(prepared, |_| {})
        .await
        .unwrap_err();
    let bk_client::build::BuildError::Solve(bk_client::ClientError::Rpc(status)) = err else {
        panic!("unexpected error {err}");
    };
    let details = bk_proto::google::rpc::Status::decode(status.details()).unwrap();
    let source = details
        .details
        .iter()
        .find(|d| d.type_url == "github.com/moby/buildkit/errdefs.Source+json")
        .expect("errdefs.Source detail");
    let json: serde_json::Value = serde_json::from_slice(&source.value).unwrap();
    assert_eq!(json["info"]["filename"], "Dockerfile");
    assert_eq!(json["info"]["language"], "Dockerfile");
    assert_eq!(json["ranges"][0]["start"]["line"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_mounts_with_one_id_twice_and_with_a_source() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(
        &dir,
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN --mount=type=cache,id=c,target=/seed mkdir -p /seed/sub && echo in-sub > /seed/sub/f
RUN --mount=type=cache,id=c,target=/a,sharing=locked --mount=type=cache,id=c,target=/b,sharing=locked \
    touch /a/x && ls /b > /both
RUN --mount=type=cache,id=c,target=/s,source=sub cat /s/f > /from-sub
"#,
    );
    let out = tmp.path().join("out");
    build(&daemon, &dir, Some(&out), &[], |_| {})
        .await
        .0
        .unwrap();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert!(read("both").contains('x'), "one cache seen at both paths");
    assert_eq!(read("from-sub"), "in-sub\n");
}

/// A one-file HTTP server on loopback: answers GETs for `/files/app.txt`
/// with an ETag and Last-Modified (`304` to a matching `If-None-Match`),
/// and records each request's first line and conditional header.
fn serve_file(body: &'static [u8]) -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut conditional = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("if-none-match:") {
                    conditional = line.trim().to_string();
                }
            }
            log.lock()
                .unwrap()
                .push(format!("{} {conditional}", first.trim()));
            let head = if !first.contains("/files/app.txt") {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else if conditional.contains("\"v1\"") {
                "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n".to_string()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            if head.starts_with("HTTP/1.1 200") {
                let _ = stream.write_all(body);
            }
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_downloads_urls_with_checksums_and_etags() {
    use std::os::unix::fs::MetadataExt;
    const BODY: &[u8] = b"downloaded content\n";
    let (port, seen) = serve_file(BODY);
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let url = format!("http://127.0.0.1:{port}/files/app.txt");
    let sum = {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(BODY)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    };
    project(
        &dir,
        &format!(
            "FROM scratch\nADD {url} /plain/\nADD --checksum={sum} {url} /checked.txt\nADD --chmod=644 {url} /dl/\n"
        ),
    );
    let out = tmp.path().join("out");
    let (result, _) = build(&daemon, &dir, Some(&out), &[], |_| {}).await;
    result.unwrap();
    let plain = out.join("plain/app.txt");
    assert_eq!(std::fs::read(&plain).unwrap(), BODY);
    let meta = std::fs::metadata(&plain).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "BuildKit's mode for downloads");
    assert_eq!(
        meta.mtime(),
        784_111_777,
        "Last-Modified is the file's time"
    );
    assert_eq!(std::fs::read(out.join("checked.txt")).unwrap(), BODY);
    let chmodded = std::fs::metadata(out.join("dl/app.txt")).unwrap();
    assert_eq!(chmodded.mode() & 0o7777, 0o644);

    // Again: the server is asked with the ETag, answers 304, nothing runs.
    let before = seen.lock().unwrap().len();
    let (result, recorded) =
        build(&daemon, &dir, Some(&tmp.path().join("out2")), &[], |_| {}).await;
    result.unwrap();
    let asked: Vec<String> = seen.lock().unwrap()[before..].to_vec();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.contains("\"v1\"")),
        "{asked:?}"
    );
    let names = recorded.names();
    assert!(
        names
            .iter()
            .filter(|(n, _)| n.contains("ADD"))
            .all(|(_, cached)| *cached),
        "{names:?}"
    );

    // A wrong checksum, a missing file, COPY of a URL: clear errors.
    let wrong = format!("sha256:{}", "0".repeat(64));
    project(
        &dir,
        &format!("FROM scratch\nADD --checksum={wrong} {url} /x\n"),
    );
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(
        err.contains(&format!("digest mismatch {sum}: {wrong}")),
        "{err}"
    );
    project(
        &dir,
        &format!("FROM scratch\nADD http://127.0.0.1:{port}/files/nothing /x\n"),
    );
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(err.contains("invalid response status 404"), "{err}");
    project(&dir, &format!("FROM scratch\nCOPY {url} /x\n"));
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(err.contains("source can't be a URL for COPY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_warnings_reach_the_progress_stream() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(
        &dir,
        "FROM scratch as Base\nMAINTAINER someone\nCOPY busybox /bb\n",
    );
    let (result, recorded) = build(&daemon, &dir, None, &[], |_| {}).await;
    result.unwrap();
    let updates = recorded.0.lock().unwrap().clone();
    let load = updates
        .iter()
        .flat_map(|u| &u.vertexes)
        .find(|v| v.name == "[internal] load build definition from Dockerfile")
        .map(|v| v.digest.clone())
        .expect("the load vertex");
    let warnings: Vec<_> = updates.iter().flat_map(|u| u.warnings.clone()).collect();
    let shorts: Vec<String> = warnings
        .iter()
        .map(|w| String::from_utf8_lossy(&w.short).into_owned())
        .collect();
    assert_eq!(
        shorts,
        [
            "StageNameCasing: Stage name 'Base' should be lowercase (line 1)",
            "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)",
            "MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)",
        ]
    );
    for w in &warnings {
        assert_eq!(w.vertex, load);
        assert_eq!(w.level, 1);
        assert!(
            w.url
                .starts_with("https://docs.docker.com/go/dockerfile/rule/")
        );
        let info = w.info.as_ref().unwrap();
        assert_eq!(info.filename, "Dockerfile");
        assert_eq!(info.language, "Dockerfile");
        assert!(info.definition.is_some());
        assert_eq!(w.ranges.len(), 1);
    }

    // error=true: the build fails, naming the rules.
    project(
        &dir,
        "# check=error=true\nFROM scratch as base\nCOPY busybox /bb\n",
    );
    let (result, recorded) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("lint violation found for rules: FromAsCasing"),
        "{err}"
    );
    assert!(
        recorded
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|u| !u.warnings.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_directive_naming_another_frontend_is_refused() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir, "# syntax=example.com/frontend:v1\nFROM scratch\n");
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("frontend image example.com/frontend:v1"),
        "{err}"
    );
    // Docker's own frontend, by any tag, is the built-in one.
    project(
        &dir,
        "# syntax=docker.io/docker/dockerfile:1.7-labs\nFROM scratch\nCOPY busybox /bb\n",
    );
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    result.unwrap();
}

/// A repository served by `git-daemon` on loopback; killed on drop.
struct GitServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .env("HOME", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `repo` with two commits on `main` (a tag `v1` on the first) and a
/// `docs/` directory.
fn serve_git_repo() -> Option<GitServer> {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: git is not installed (scripts/install-deps.sh installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    run_git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "first\n").unwrap();
    std::fs::write(repo.join("docs/guide.md"), "guide\n").unwrap();
    run_git(&repo, &["add", "."]);
    run_git(&repo, &["commit", "-q", "-m", "one"]);
    run_git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    std::fs::write(repo.join("README"), "second\n").unwrap();
    run_git(&repo, &["commit", "-q", "-am", "two"]);
    let exec_path = std::path::PathBuf::from(run_git(dir.path(), &["--exec-path"]));
    let port = compat_tests::free_port();
    let child = std::process::Command::new(exec_path.join("git-daemon"))
        .env("HOME", "/dev/null")
        .args([
            "--export-all",
            &format!("--base-path={}", dir.path().display()),
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--reuseaddr",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "git-daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(GitServer {
        child,
        port,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_checks_out_git_repositories() {
    let Some(server) = serve_git_repo() else {
        return;
    };
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let remote = format!("git://127.0.0.1:{}/repo", server.port);
    project(
        &dir,
        &format!(
            "FROM scratch\nADD {remote} /head/\nADD {remote}#v1 /tagged/\nADD {remote}#main:docs /docs/\nADD --keep-git-dir {remote}#main /kept/\n"
        ),
    );
    let out = tmp.path().join("out");
    let (result, _) = build(&daemon, &dir, Some(&out), &[], |_| {}).await;
    result.unwrap();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("head/README"), "second\n");
    assert!(!out.join("head/.git").exists(), "no .git unless kept");
    assert_eq!(read("tagged/README"), "first\n");
    assert_eq!(read("docs/guide.md"), "guide\n");
    assert!(!out.join("docs/README").exists());
    assert_eq!(read("kept/README"), "second\n");
    assert_eq!(
        run_git(&out.join("kept"), &["log", "--format=%s", "-1"]),
        "two"
    );

    // A ref the repository does not have: BuildKit's error.
    project(&dir, &format!("FROM scratch\nADD {remote}#nope /x/\n"));
    let (result, _) = build(&daemon, &dir, None, &[], |_| {}).await;
    let err = result.unwrap_err();
    assert!(
        err.contains("repository does not contain ref nope"),
        "{err}"
    );
}
