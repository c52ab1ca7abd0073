//! `git://` sources against a local `git daemon`, driven as the solver
//! drives them: the worker makes the op from the vertex, then its key, then
//! its result. Skipped (with a message) where `git` is missing.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bk_cache::{CacheManager, Ref};
use bk_llb::{Digest, Graph};
use bk_ops::{SnapshotResults, SnapshotWorker};
use bk_session::SessionManager;
use bk_solver::{Job, Op, OpContext, Progress, Solver, VertexProgress, Worker};
use tokio_util::sync::CancellationToken;

fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

macro_rules! require_git {
    () => {
        if !git_available() {
            eprintln!("skipping: git is not installed");
            return;
        }
    };
}

/// Runs the test's own git (not the op's) in `dir`.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("HOME", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "protocol.file.allow=always"])
        .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
        .args(["-c", "advice.detachedHead=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn write(path: &Path, data: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Two repositories served by `git daemon`: `sub`, and `repo` with
///
/// - commit one (tag `v1`, annotated): README "one", `sub/dir/file.txt`,
///   symlinks `sub/inner` → `dir`, `sub/outside` → `/etc`, `sub/up` → `../..`;
/// - branch `feature` off it adding `feature.txt`;
/// - commit two on `main` (the default branch): README "two" and `sub` as a
///   submodule at `modules/lib`, by the relative URL `../sub`.
struct Fixture {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    port: u16,
    daemon: Option<Child>,
    one: String,
    two: String,
    feature: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repos = tmp.path().join("repos");
        let sub = repos.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        git(&sub, &["init", "-q"]);
        write(&sub.join("lib.txt"), "library\n");
        git(&sub, &["add", "."]);
        git(&sub, &["commit", "-qm", "lib"]);

        let repo = repos.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        write(&repo.join("README"), "one\n");
        write(&repo.join("sub/dir/file.txt"), "in subdir\n");
        std::os::unix::fs::symlink("dir", repo.join("sub/inner")).unwrap();
        std::os::unix::fs::symlink("/etc", repo.join("sub/outside")).unwrap();
        std::os::unix::fs::symlink("../..", repo.join("sub/up")).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", "one"]);
        git(&repo, &["tag", "-a", "v1", "-m", "version 1"]);
        let one = git(&repo, &["rev-parse", "HEAD"]);

        git(&repo, &["checkout", "-q", "-b", "feature"]);
        write(&repo.join("feature.txt"), "feature\n");
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", "feature"]);
        let feature = git(&repo, &["rev-parse", "HEAD"]);
        git(&repo, &["checkout", "-q", "main"]);

        write(&repo.join("README"), "two\n");
        git(
            &repo,
            &[
                "submodule",
                "add",
                "-q",
                sub.to_str().unwrap(),
                "modules/lib",
            ],
        );
        git(
            &repo,
            &[
                "config",
                "-f",
                ".gitmodules",
                "submodule.modules/lib.url",
                "../sub",
            ],
        );
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", "two"]);
        let two = git(&repo, &["rev-parse", "HEAD"]);

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself, not `git daemon`: the wrapper runs it as a
        // child, which killing the wrapper would leave serving.
        let exec_path = PathBuf::from(git(tmp.path(), &["--exec-path"]));
        let daemon = Command::new(exec_path.join("git-daemon"))
            .env("HOME", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "--export-all",
                &format!("--base-path={}", repos.display()),
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                "--reuseaddr",
                "--informative-errors",
                repos.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "git daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Fixture {
            tmp,
            repo,
            port,
            daemon: Some(daemon),
            one,
            two,
            feature,
        }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo", self.port)
    }

    fn cache(&self) -> CacheManager {
        CacheManager::open(&self.tmp.path().join("cache")).unwrap()
    }

    /// The cache opened again, once the solver's last tasks let go of it.
    async fn reopen(&self) -> CacheManager {
        let started = Instant::now();
        loop {
            match CacheManager::open(&self.tmp.path().join("cache")) {
                Ok(cache) => return cache,
                Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// The source vertex as a client would write it (`llb.Git`): the identifier
/// without the scheme's URL, the real remote in `git.fullurl`.
fn source(fx: &Fixture, fragment: &str, attrs: &[(&str, &str)]) -> Graph {
    let mut all: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.entry("git.fullurl".into()).or_insert_with(|| fx.url());
    all.insert("git.authtokensecret".into(), "GIT_AUTH_TOKEN".into());
    all.insert("git.authheadersecret".into(), "GIT_AUTH_HEADER".into());
    graph(&format!("127.0.0.1:{}/repo{fragment}", fx.port), all)
}

fn graph(id: &str, attrs: BTreeMap<String, String>) -> Graph {
    let state = bk_llb::builder::source(format!("git://{id}"), attrs);
    Graph::decode(&state.marshal()).unwrap()
}

fn op(worker: &SnapshotWorker, graph: &Graph) -> Result<(Arc<dyn Op<Ref>>, OpContext), String> {
    let vertex = &graph.vertices[&graph.root.0];
    let op = worker.op(vertex).map_err(|e| e.message)?;
    let ctx = OpContext {
        session_group: Arc::new(Vec::new()),
        progress: VertexProgress {
            progress: Progress::new(),
            digest: vertex.digest.clone(),
        },
        cancel: CancellationToken::new(),
    };
    Ok((op, ctx))
}

async fn key(worker: &SnapshotWorker, graph: &Graph) -> Result<Digest, String> {
    let (op, ctx) = op(worker, graph)?;
    op.cache_key(&ctx, &[]).await.map_err(|e| e.message)
}

/// Key, then result, as the solver asks for them.
async fn build(worker: &SnapshotWorker, graph: &Graph) -> Result<(Digest, Ref), String> {
    let (op, ctx) = op(worker, graph)?;
    let key = op.cache_key(&ctx, &[]).await.map_err(|e| e.message)?;
    let mut out = op.exec(&ctx, Vec::new()).await.map_err(|e| e.message)?;
    assert_eq!(out.len(), 1);
    Ok((key, out.remove(0)))
}

fn read(r: &Ref, path: &str) -> String {
    std::fs::read_to_string(r.path().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn contains_git_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let e = e.unwrap();
        e.file_name() == ".git" || (e.file_type().unwrap().is_dir() && contains_git_dir(&e.path()))
    })
}

fn worker(cache: &CacheManager) -> SnapshotWorker {
    SnapshotWorker::new(cache.clone(), SessionManager::new())
}

#[tokio::test]
async fn refs_resolve_to_their_commits() {
    require_git!();
    let fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    // The default branch, with its submodule and no .git anywhere.
    let (default_key, snap) = build(&w, &source(&fx, "", &[])).await.unwrap();
    assert_eq!(read(&snap, "README"), "two\n");
    assert_eq!(read(&snap, "modules/lib/lib.txt"), "library\n");
    assert!(!contains_git_dir(snap.path()));
    assert_eq!(
        std::fs::read_link(snap.path().join("sub/outside")).unwrap(),
        Path::new("/etc")
    );
    let record = cache.record(snap.id()).unwrap().unwrap();
    assert_eq!(
        record.description,
        format!("git snapshot for {}#main", fx.url())
    );
    assert_eq!(record.kind, bk_cache::RecordType::GitCheckout);
    assert_eq!(
        key(&w, &source(&fx, "#main", &[])).await.unwrap(),
        default_key
    );

    // A branch.
    let (_, snap) = build(&w, &source(&fx, "#feature", &[])).await.unwrap();
    assert_eq!(read(&snap, "README"), "one\n");
    assert_eq!(read(&snap, "feature.txt"), "feature\n");

    // An annotated tag is its commit: same key as the commit's SHA.
    let (tag_key, snap) = build(&w, &source(&fx, "#v1", &[])).await.unwrap();
    assert_eq!(read(&snap, "README"), "one\n");
    assert!(!snap.path().join("feature.txt").exists());
    assert!(!snap.path().join("modules").exists());

    // A commit no ref points at, by SHA: fetched by itself.
    let by_sha = source(&fx, &format!("#{}", fx.one), &[]);
    let (sha_key, snap) = build(&w, &by_sha).await.unwrap();
    assert_eq!(sha_key, tag_key);
    assert_eq!(read(&snap, "README"), "one\n");

    // Submodules skipped: the directory stays empty.
    let skip = source(&fx, "", &[("git.skipsubmodules", "true")]);
    let (skip_key, snap) = build(&w, &skip).await.unwrap();
    assert_ne!(skip_key, default_key);
    assert_eq!(read(&snap, "README"), "two\n");
    assert!(names(&snap.path().join("modules/lib")).is_empty());

    // The one bare repository of the remote, kept in the cache.
    let repos: Vec<_> = cache
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| r.description.starts_with("shared git repo for "))
        .collect();
    assert_eq!(repos.len(), 1);
    assert!(repos[0].mutable);
    // No scratch space is left behind.
    let dirs = names(&fx.tmp.path().join("cache/snapshots"));
    assert_eq!(dirs.len(), cache.records().unwrap().len(), "{dirs:?}");
}

#[tokio::test]
async fn subdirs_hold_only_their_directory_and_stay_inside() {
    require_git!();
    let fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    let (key, snap) = build(&w, &source(&fx, "#main:sub/dir", &[])).await.unwrap();
    assert_eq!(names(snap.path()), vec!["file.txt"]);
    assert_eq!(read(&snap, "file.txt"), "in subdir\n");
    let (whole, _) = build(&w, &source(&fx, "#main", &[])).await.unwrap();
    assert_ne!(key, whole);

    // A symlink that stays inside is followed; the default branch is used.
    let (_, snap) = build(&w, &source(&fx, "#:sub/inner", &[])).await.unwrap();
    assert_eq!(names(snap.path()), vec!["file.txt"]);

    for (fragment, want) in [
        ("#main:sub/outside", "leads outside the repository"),
        ("#main:sub/up", "leads outside the repository"),
        ("#main:sub/up/repo", "leads outside the repository"),
        ("#main:missing", "no such directory"),
        ("#main:README", "not a directory"),
    ] {
        let e = build(&w, &source(&fx, fragment, &[])).await.unwrap_err();
        assert!(e.contains(want), "{fragment}: {e}");
    }
    let e = build(&w, &source(&fx, "#main:../repos", &[]))
        .await
        .unwrap_err();
    assert!(e.contains("leads outside the repository"), "{e}");
    // A failed checkout leaves no snapshot behind.
    let dirs = names(&fx.tmp.path().join("cache/snapshots"));
    assert_eq!(dirs.len(), cache.records().unwrap().len(), "{dirs:?}");
}

#[tokio::test]
async fn keep_git_dir_gives_a_working_repository() {
    require_git!();
    let fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    let keep = [("git.keepgitdir", "true")];
    let (key, snap) = build(&w, &source(&fx, "#main", &keep)).await.unwrap();
    let (plain, _) = build(&w, &source(&fx, "#main", &[])).await.unwrap();
    assert_ne!(key, plain);
    let dir = snap.path();
    assert!(dir.join(".git").is_dir());
    assert!(!dir.join(".git/FETCH_HEAD").exists());
    assert_eq!(git(dir, &["rev-parse", "HEAD"]), fx.two);
    assert_eq!(git(dir, &["log", "--format=%s", "-1"]), "two");
    assert_eq!(git(dir, &["remote", "get-url", "origin"]), fx.url());
    assert_eq!(git(dir, &["rev-parse", "refs/heads/main"]), fx.two);
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
    assert_eq!(read(&snap, "modules/lib/lib.txt"), "library\n");
    // Nothing names the daemon's own paths.
    let config = std::fs::read_to_string(dir.join(".git/config")).unwrap();
    assert!(!config.contains("file://"), "{config}");

    // A tag arrives as a tag.
    let (_, snap) = build(&w, &source(&fx, "#v1", &keep)).await.unwrap();
    assert_eq!(git(snap.path(), &["describe", "--tags"]), "v1");
    assert_eq!(git(snap.path(), &["cat-file", "-t", "v1"]), "tag");

    // A commit by SHA, that no ref of the remote points at.
    let (_, snap) = build(&w, &source(&fx, &format!("#{}", fx.feature), &keep))
        .await
        .unwrap();
    assert_eq!(git(snap.path(), &["rev-parse", "HEAD"]), fx.feature);
    assert_eq!(read(&snap, "feature.txt"), "feature\n");

    // With a subdir, as in BuildKit, no .git.
    let (_, snap) = build(&w, &source(&fx, "#main:sub", &keep)).await.unwrap();
    assert!(!snap.path().join(".git").exists());
    assert!(snap.path().join("dir/file.txt").is_file());
}

#[tokio::test]
async fn checksums_are_checked() {
    require_git!();
    let fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    let short = &fx.one[..8];
    let (_, snap) = build(&w, &source(&fx, "#v1", &[("git.checksum", short)]))
        .await
        .unwrap();
    assert_eq!(read(&snap, "README"), "one\n");

    let e = build(&w, &source(&fx, "#main", &[("git.checksum", short)]))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        format!("expected checksum to match {short}, got {}", fx.two)
    );

    let e = build(&w, &source(&fx, "#main", &[("git.checksum", "nothex")]))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "invalid checksum nothex for Git URL, expected hex commit hash"
    );

    // A full checksum is the key (no ls-remote); the ref is checked when
    // the commit is fetched. (Once its snapshot exists, the key finds it
    // without fetching, as in BuildKit.)
    let wrong = source(&fx, "#main", &[("git.checksum", &fx.feature)]);
    let e = build(&w, &wrong).await.unwrap_err();
    assert_eq!(
        e,
        format!("expected checksum to match {}, got {}", fx.feature, fx.two)
    );
    let full = source(&fx, "#feature", &[("git.checksum", &fx.feature)]);
    let (_, snap) = build(&w, &full).await.unwrap();
    assert_eq!(read(&snap, "feature.txt"), "feature\n");
}

#[tokio::test]
async fn bad_refs_and_remotes_fail_clearly() {
    require_git!();
    let fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    let e = build(&w, &source(&fx, "#nope", &[])).await.unwrap_err();
    assert_eq!(e, "repository does not contain ref nope, output: \"\"");

    let e = op(&w, &source(&fx, "", &[("git.fullurl", "ftp://host/repo")]))
        .err()
        .unwrap();
    assert_eq!(e, "ftp: invalid protocol");
    let e = op(&w, &source(&fx, "", &[("git.fullurl", "file:///etc")]))
        .err()
        .unwrap();
    assert_eq!(e, "file: invalid protocol");
    let e = op(&w, &source(&fx, "#--upload-pack=touch", &[]))
        .err()
        .unwrap();
    assert!(e.contains("invalid git ref"), "{e}");

    // Credentials in the URL never reach an error or a record.
    let secret = format!("git://me:s3cret@127.0.0.1:{}/missing", fx.port);
    let e = build(&w, &source(&fx, "#main", &[("git.fullurl", &secret)]))
        .await
        .unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");
    assert!(
        e.starts_with(&format!(
            "failed to fetch remote git://xxxxx:xxxxx@127.0.0.1:{}/missing: ",
            fx.port
        )),
        "{e}"
    );
    for record in cache.records().unwrap() {
        assert!(!record.description.contains("s3cret"), "{record:?}");
    }

    // ssh: known hosts and agent forwarding are set up, or fail clearly.
    let ssh = "ssh://git@127.0.0.1:1/repo";
    let e = build(
        &w,
        &source(
            &fx,
            "#main",
            &[("git.fullurl", ssh), ("git.mountsshsock", "default")],
        ),
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("ssh agent \"default\": "), "{e}");
    let e = build(
        &w,
        &source(
            &fx,
            "#main",
            &[
                ("git.fullurl", ssh),
                ("git.knownsshhosts", "127.0.0.1 ssh-ed25519 AAAA\n"),
            ],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with("failed to fetch remote ssh://xxxxx@127.0.0.1:1/repo: git stderr:\n"),
        "{e}"
    );

    let missing = format!("git://127.0.0.1:{}/missing", fx.port);
    let e = build(&w, &source(&fx, "#main", &[("git.fullurl", &missing)]))
        .await
        .unwrap_err();
    assert!(
        e.starts_with(&format!("failed to fetch remote {missing}: git stderr:\n")),
        "{e}"
    );
}

#[tokio::test]
async fn keys_are_stable_and_follow_the_branch() {
    require_git!();
    let mut fx = Fixture::new();
    let cache = fx.cache();
    let w = worker(&cache);

    let main = source(&fx, "#main", &[]);
    let (first, snap) = build(&w, &main).await.unwrap();
    assert_eq!(key(&w, &main).await.unwrap(), first);
    // Another op with the same key reuses the snapshot.
    let (again, same) = build(&w, &main).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(same.id(), snap.id());
    drop((snap, same));

    write(&fx.repo.join("README"), "three\n");
    git(&fx.repo, &["commit", "-qam", "three"]);
    let three = git(&fx.repo, &["rev-parse", "HEAD"]);
    let (moved, snap) = build(&w, &main).await.unwrap();
    assert_ne!(moved, first);
    assert_eq!(read(&snap, "README"), "three\n");

    // Through the solver, with the persistent result cache.
    let solver = Solver::new(
        Arc::new(worker(&cache)),
        Arc::new(SnapshotResults::new(cache.clone())),
        None,
    );
    let solved = solver
        .solve(Job {
            graph: main.clone(),
            session_group: Vec::new(),
            progress: Progress::new(),
            cancel: CancellationToken::new(),
        })
        .await
        .unwrap();
    assert_eq!(solved.id(), snap.id());

    // The bare repository survives a restart: with the remote gone, a
    // commit it already has still builds (here, as a new subdir snapshot:
    // a full SHA needs no network for its key; submodules would); a branch
    // cannot.
    drop((w, solver, snap, solved));
    drop(cache);
    fx.stop_daemon();
    let cache = fx.reopen().await;
    let w = worker(&cache);
    let offline = source(
        &fx,
        &format!("#{three}:sub/dir"),
        &[("git.skipsubmodules", "true")],
    );
    let (_, snap) = build(&w, &offline).await.unwrap();
    assert_eq!(read(&snap, "file.txt"), "in subdir\n");
    let e = build(&w, &main).await.unwrap_err();
    assert!(e.starts_with("failed to fetch remote"), "{e}");
}

#[tokio::test]
async fn cancel_kills_git() {
    require_git!();
    // A server that accepts connections and never answers: git waits.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheManager::open(tmp.path()).unwrap();
    let w = worker(&cache);
    let attrs = BTreeMap::from([(
        "git.fullurl".to_string(),
        format!("git://127.0.0.1:{port}/repo"),
    )]);
    let (op, ctx) = op(&w, &graph(&format!("127.0.0.1:{port}/repo#main"), attrs)).unwrap();
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let e = op.cache_key(&ctx, &[]).await.unwrap_err();
    assert_eq!(e.message, "context canceled");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Git is gone: its connection ends (a live git would keep it open).
    let (mut conn, _) = silent.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = Vec::new();
    conn.read_to_end(&mut request).unwrap();
    assert!(String::from_utf8_lossy(&request).contains("git-upload-pack /repo"));
}
