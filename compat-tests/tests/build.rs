//! Builds end to end: LLB in, the client's context through the session,
//! results out through `local` and `tar` outputs; rebuilds from the cache;
//! bad definitions refused.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bk_client::solve_opts::BuildFlags;
use bk_llb::builder::{self, CopyOptions, FileActions};
use bk_proto::moby::buildkit::v1::StatusResponse;
use compat_tests::{Daemon, DaemonOptions, random};

/// `FROM scratch` + `COPY . /out/`, as the Dockerfile frontend writes it:
/// its context carries a fresh `local.unique` each time, so the copy's
/// vertex digest differs from build to build while its cache key must not.
fn copy_context_definition() -> bk_proto::pb::Definition {
    let attrs = BTreeMap::from([("local.unique".to_string(), random("unique"))]);
    let context = builder::local("context", attrs).with_name("[internal] load build context");
    builder::scratch()
        .file(FileActions::new().copy(&context, "/", "/out/", CopyOptions::default()))
        .with_name("[1/1] COPY . /out/")
        .marshal()
}

fn make_context(dir: &Path) {
    std::fs::create_dir_all(dir.join("src/nested")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(dir.join("src/main.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        dir.join("src/main.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("src/nested/data"), vec![42u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap();
    std::fs::hard_link(dir.join("hello.txt"), dir.join("hardlink")).unwrap();
}

struct Recorded(Arc<Mutex<Vec<StatusResponse>>>);

impl Recorded {
    fn new() -> (Recorded, impl FnMut(StatusResponse) + Send + 'static) {
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = all.clone();
        (Recorded(all), move |u| sink.lock().unwrap().push(u))
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
    /// Bytes reported for the context transfer.
    fn transferred(&self) -> i64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|u| u.statuses.iter())
            .filter(|s| s.id.starts_with("transferring context"))
            .map(|s| s.current)
            .max()
            .unwrap_or(0)
    }
}

async fn build(
    daemon: &Daemon,
    context: &Path,
    outputs: &[&str],
) -> (Result<(), String>, Recorded) {
    let client = daemon.client().await;
    let flags = BuildFlags {
        local: vec![format!("context={}", context.display())],
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let prepared = flags
        .to_request(
            Some(copy_context_definition()),
            &random("ref"),
            &random("session"),
        )
        .unwrap();
    let (recorded, sink) = Recorded::new();
    let result = client
        .build(prepared, sink)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    (result, recorded)
}

fn assert_tree(out: &Path) {
    assert_eq!(
        std::fs::read(out.join("out/hello.txt")).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        std::fs::read(out.join("out/src/nested/data"))
            .unwrap()
            .len(),
        300_000
    );
    let mode = std::fs::metadata(out.join("out/src/main.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out.join("out/link")).unwrap(),
        Path::new("hello.txt")
    );
    assert!(out.join("out/empty").is_dir());
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(out.join("out/hello.txt")).unwrap();
    let b = std::fs::metadata(out.join("out/hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link preserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_context_to_local_and_tar_then_rebuild_from_cache() {
    let mut daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    make_context(&context);
    let out = tmp.path().join("out");
    let tarball = tmp.path().join("out.tar");

    let (result, first) = build(
        &daemon,
        &context,
        &[
            &format!("type=local,dest={}", out.display()),
            &format!("type=tar,dest={}", tarball.display()),
        ],
    )
    .await;
    result.unwrap_or_else(|e| panic!("build failed: {e}\n{}", daemon.log_text()));
    assert_tree(&out);
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&tarball).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "out/",
        "out/hello.txt",
        "out/src/main.sh",
        "out/src/nested/data",
        "out/link",
        "out/hardlink",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let v = first.vertices();
    assert_eq!(
        v.get("[1/1] COPY . /out/"),
        Some(&(false, String::new())),
        "{v:?}"
    );
    assert!(first.transferred() > 300_000);

    // Unchanged: nothing transferred, the copy is cached.
    let out2 = tmp.path().join("out2");
    let (result, second) = build(
        &daemon,
        &context,
        &[&format!("type=local,dest={}", out2.display())],
    )
    .await;
    result.unwrap();
    assert_tree(&out2);
    assert_eq!(
        second.transferred(),
        0,
        "an unchanged context moves no content"
    );
    assert_eq!(
        second.vertices().get("[1/1] COPY . /out/"),
        Some(&(true, String::new()))
    );

    // One file changed: only it moves, and the copy runs again.
    std::fs::write(context.join("hello.txt"), b"changed\n").unwrap();
    let out3 = tmp.path().join("out3");
    let (result, third) = build(
        &daemon,
        &context,
        &[&format!("type=local,dest={}", out3.display())],
    )
    .await;
    result.unwrap();
    assert_eq!(
        std::fs::read(out3.join("out/hello.txt")).unwrap(),
        b"changed\n"
    );
    let moved = third.transferred();
    assert!(moved > 0 && moved < 1000, "moved {moved} bytes");
    assert_eq!(
        third.vertices().get("[1/1] COPY . /out/"),
        Some(&(false, String::new()))
    );

    // The cache survives a restart.
    daemon.restart();
    let out4 = tmp.path().join("out4");
    let (result, fourth) = build(
        &daemon,
        &context,
        &[&format!("type=local,dest={}", out4.display())],
    )
    .await;
    result.unwrap();
    assert_eq!(
        fourth.vertices().get("[1/1] COPY . /out/"),
        Some(&(true, String::new()))
    );

    // Disk usage sees the snapshots; a full prune removes them all.
    let client = daemon.client().await;
    assert!(!client.disk_usage(vec![]).await.unwrap().is_empty());
    let pruned = client
        .prune(bk_proto::moby::buildkit::v1::PruneRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!pruned.is_empty());
    assert!(client.disk_usage(vec![]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client().await;
    let garbage = bk_proto::pb::Definition {
        def: vec![vec![0xff, 0xff, 0xff], vec![1, 2, 3]],
        ..Default::default()
    };
    let dangling = {
        let mut def = copy_context_definition();
        def.def.remove(0);
        def
    };
    for (def, want) in [(garbage, "cannot be decoded"), (dangling, "missing op")] {
        let flags = BuildFlags::default();
        let prepared = flags
            .to_request(Some(def), &random("bad"), &random("s"))
            .unwrap();
        let err = client.solve(prepared.request).await.unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(client.info().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_patterns_from_the_definition_are_applied_by_the_client() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    make_context(&context);
    std::fs::write(context.join("secret.key"), b"do not send").unwrap();
    std::fs::create_dir_all(context.join("node_modules/x")).unwrap();
    std::fs::write(context.join("node_modules/x/index.js"), b"x").unwrap();
    // What the Dockerfile frontend sends after reading .dockerignore.
    let attrs = BTreeMap::from([(
        "local.excludepatterns".to_string(),
        r#"["*.key","node_modules","!node_modules/keep"]"#.to_string(),
    )]);
    let ctx = builder::local("context", attrs);
    let def = builder::scratch()
        .file(FileActions::new().copy(&ctx, "/", "/out/", CopyOptions::default()))
        .marshal();
    let out = tmp.path().join("out");
    let flags = BuildFlags {
        local: vec![format!("context={}", context.display())],
        output: vec![format!("type=local,dest={}", out.display())],
        ..Default::default()
    };
    let prepared = flags
        .to_request(Some(def), &random("ref"), &random("s"))
        .unwrap();
    let client = daemon.client().await;
    client.build(prepared, |_| {}).await.unwrap();
    assert!(out.join("out/hello.txt").exists());
    assert!(!out.join("out/secret.key").exists());
    assert!(!out.join("out/node_modules").exists());
}

/// A client whose FileSync sends what a hostile sender would.
mod hostile {
    use std::pin::Pin;

    use bk_proto::fsutil::types::{Packet, Stat, packet::PacketType};
    use bk_proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};
    use futures::Stream;
    use tonic::{Request, Response, Status, Streaming};

    pub struct Evil(pub Vec<Packet>);

    type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

    #[tonic::async_trait]
    impl FileSync for Evil {
        type DiffCopyStream = PacketStream;
        async fn diff_copy(
            &self,
            _: Request<Streaming<Packet>>,
        ) -> Result<Response<PacketStream>, Status> {
            let packets: Vec<Result<Packet, Status>> = self.0.iter().cloned().map(Ok).collect();
            // Keep the stream open after the listing, like a real sender.
            let stream = futures::StreamExt::chain(
                futures::stream::iter(packets),
                futures::stream::pending(),
            );
            Ok(Response::new(Box::pin(stream)))
        }
        type TarStreamStream = PacketStream;
        async fn tar_stream(
            &self,
            _: Request<Streaming<Packet>>,
        ) -> Result<Response<PacketStream>, Status> {
            Err(Status::unimplemented(""))
        }
    }

    pub fn stat(path: &str, mode: u32, linkname: &str) -> Packet {
        Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(Stat {
                path: path.to_string(),
                mode,
                linkname: linkname.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn end() -> Packet {
        Packet {
            r#type: PacketType::PacketStat as i32,
            ..Default::default()
        }
    }

    pub fn service(packets: Vec<Packet>) -> FileSyncServer<Evil> {
        FileSyncServer::new(Evil(packets))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_write_outside_the_snapshot() {
    use hostile::{end, stat};
    const DIR: u32 = 1 << 31 | 0o755;
    const FILE: u32 = 0o644;
    const LINK: u32 = 1 << 27 | 0o777;

    let daemon = Daemon::start(DaemonOptions::default());
    let escape = daemon.dir.path().join("escaped");
    let cases: Vec<(&str, Vec<bk_proto::fsutil::types::Packet>)> = vec![
        ("dot-dot", vec![stat("../escaped", FILE, ""), end()]),
        (
            "absolute",
            vec![stat(&escape.display().to_string(), FILE, ""), end()],
        ),
        (
            "out of order",
            vec![stat("b", FILE, ""), stat("a", FILE, ""), end()],
        ),
        (
            "duplicate",
            vec![stat("a", FILE, ""), stat("a", FILE, ""), end()],
        ),
        (
            "write through a symlink",
            vec![
                stat("link", LINK, "../../.."),
                stat("link/escaped", FILE, ""),
                end(),
            ],
        ),
        (
            "child before parent",
            vec![stat("d/f", FILE, ""), stat("d", DIR, ""), end()],
        ),
        (
            "hard link to nothing",
            vec![stat("a", FILE, "nowhere"), end()],
        ),
    ];
    let client = daemon.client().await;
    for (name, packets) in cases {
        let session_id = random("evil");
        let running = bk_session::ClientSession::new(session_id.clone(), "")
            .with_service(
                |r| r.add_service(hostile::service(packets)),
                bk_session::filesync::FILESYNC_METHODS,
            )
            .run(client.control())
            .await
            .unwrap();
        let ctx = builder::local("context", BTreeMap::new());
        let def = builder::scratch()
            .file(FileActions::new().copy(&ctx, "/", "/out/", CopyOptions::default()))
            .marshal();
        let prepared = BuildFlags::default()
            .to_request(Some(def), &random("ref"), &session_id)
            .unwrap();
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            client.solve(prepared.request),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the build hung"))
        .expect_err(name);
        assert!(
            err.to_string().contains("invalid transfer"),
            "{name}: {err}"
        );
        running.close(std::time::Duration::from_secs(5)).await;
        assert!(!escape.exists(), "{name}: wrote outside the snapshot");
    }
    assert!(client.info().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_overlapping_builds_share_their_common_step() {
    let daemon = Daemon::start(DaemonOptions::default());
    let client = daemon.client().await;
    // Every build makes the same big shared file, then one of its own.
    let shared = builder::scratch()
        .file(FileActions::new().mkfile("/shared", 0o644, &vec![7u8; 1 << 20]))
        .with_name("shared step");
    let builds = (0..50).map(|i| {
        let own =
            builder::scratch().file(FileActions::new().mkfile(&format!("/own{i}"), 0o644, b"x"));
        let def = builder::merge(&[shared.clone(), own]).marshal();
        let client = client.clone();
        async move {
            let prepared = BuildFlags::default()
                .to_request(Some(def), &random("conc"), &random("s"))
                .unwrap();
            client.solve(prepared.request).await
        }
    });
    for result in futures::future::join_all(builds).await {
        result.unwrap();
    }
    // One snapshot for the shared step: it ran once.
    let records = client.disk_usage(vec![]).await.unwrap();
    let shared_runs = records
        .iter()
        .filter(|r| r.description == "mkfile /shared")
        .count();
    assert_eq!(shared_runs, 1, "{records:#?}");
    let own_runs = records
        .iter()
        .filter(|r| r.description.starts_with("mkfile /own"))
        .count();
    assert_eq!(own_runs, 50);
    assert_eq!(
        records.iter().filter(|r| r.description == "merge").count(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_file_a_step_does_not_read_keeps_that_step_cached() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    std::fs::create_dir_all(context.join("src")).unwrap();
    std::fs::write(context.join("package.json"), b"{}").unwrap();
    std::fs::write(context.join("src/app.js"), b"v1").unwrap();
    // COPY package.json /app/  then  COPY src /app/src
    let definition = || {
        let attrs = BTreeMap::from([("local.unique".to_string(), random("u"))]);
        let ctx = builder::local("context", attrs);
        let deps = builder::scratch()
            .file(FileActions::new().copy(&ctx, "/package.json", "/app/", CopyOptions::default()))
            .with_name("COPY package.json");
        deps.file(FileActions::new().copy(&ctx, "/src", "/app/src", CopyOptions::default()))
            .with_name("COPY src")
            .marshal()
    };
    let client = daemon.client().await;
    let build = |out: std::path::PathBuf| {
        let client = client.clone();
        let context = context.clone();
        let def = definition();
        async move {
            let flags = BuildFlags {
                local: vec![format!("context={}", context.display())],
                output: vec![format!("type=local,dest={}", out.display())],
                ..Default::default()
            };
            let prepared = flags
                .to_request(Some(def), &random("ref"), &random("s"))
                .unwrap();
            let (recorded, sink) = Recorded::new();
            client.build(prepared, sink).await.unwrap();
            recorded.vertices()
        }
    };
    build(tmp.path().join("o1")).await;

    // Only the sources changed: the package.json step stays cached.
    std::fs::write(context.join("src/app.js"), b"v2").unwrap();
    let v = build(tmp.path().join("o2")).await;
    assert_eq!(
        v.get("COPY package.json"),
        Some(&(true, String::new())),
        "{v:?}"
    );
    assert_eq!(v.get("COPY src"), Some(&(false, String::new())), "{v:?}");
    assert_eq!(
        std::fs::read(tmp.path().join("o2/app/src/app.js")).unwrap(),
        b"v2"
    );

    // package.json changed: both run.
    std::fs::write(context.join("package.json"), b"{\"a\":1}").unwrap();
    let v = build(tmp.path().join("o3")).await;
    assert_eq!(
        v.get("COPY package.json"),
        Some(&(false, String::new())),
        "{v:?}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("o3/app/package.json")).unwrap(),
        b"{\"a\":1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stage_copies_with_modes_owners_wildcards_and_merge() {
    use bk_proto::pb::{ChownOpt, UserOpt, user_opt};

    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    std::fs::create_dir_all(context.join("sub")).unwrap();
    std::fs::write(context.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(context.join("other.txt"), b"other\n").unwrap();
    std::fs::write(context.join("sub/s.txt"), b"s\n").unwrap();

    let ctx = builder::local("context", BTreeMap::new());
    // FROM scratch AS a / COPY hello.txt /a/ / COPY sub /a/sub
    let stage_a = builder::scratch().file(
        FileActions::new()
            .copy(&ctx, "/hello.txt", "/a/", CopyOptions::default())
            .copy(&ctx, "/sub", "/a/sub", CopyOptions::default()),
    );
    let by_id = |id| ChownOpt {
        user: Some(UserOpt {
            user: Some(user_opt::User::ById(id)),
        }),
        group: Some(UserOpt {
            user: Some(user_opt::User::ById(id)),
        }),
    };
    // FROM scratch / COPY --from=a /a /x / COPY --chmod=755 hello.txt /y /
    // COPY *.txt /w/ / COPY --chown=1000:1000 sub /u, then --link-style merge.
    let final_stage = builder::scratch().file(
        FileActions::new()
            .copy(&stage_a, "/a", "/x", CopyOptions::default())
            .copy(
                &ctx,
                "/hello.txt",
                "/y",
                CopyOptions {
                    mode: 0o755,
                    ..Default::default()
                },
            )
            .copy(&ctx, "/*.txt", "/w/", CopyOptions::default())
            .copy(
                &ctx,
                "/sub",
                "/u",
                CopyOptions {
                    owner: Some(by_id(1000)),
                    ..Default::default()
                },
            ),
    );
    let linked = builder::scratch().file(FileActions::new().copy(
        &ctx,
        "/hello.txt",
        "/z",
        CopyOptions::default(),
    ));
    let def = builder::merge(&[final_stage, linked]).marshal();

    let tarball = tmp.path().join("out.tar");
    let out = tmp.path().join("out");
    let flags = BuildFlags {
        local: vec![format!("context={}", context.display())],
        output: vec![
            format!("type=local,dest={}", out.display()),
            format!("type=tar,dest={}", tarball.display()),
        ],
        ..Default::default()
    };
    let prepared = flags
        .to_request(Some(def), &random("ms"), &random("s"))
        .unwrap();
    daemon.client().await.build(prepared, |_| {}).await.unwrap();

    let mut listing: Vec<String> = walk_listing(&out);
    listing.sort();
    assert_eq!(
        listing,
        vec![
            "u/ 755",
            "u/s.txt 644",
            "w/ 755",
            "w/hello.txt 644",
            "w/other.txt 644",
            "x/ 755",
            "x/hello.txt 644",
            "x/sub/ 755",
            "x/sub/s.txt 644",
            "y 755",
            "z 644",
        ]
    );
    assert_eq!(std::fs::read(out.join("x/sub/s.txt")).unwrap(), b"s\n");
    // Owners survive in the tarball (the local output belongs to the caller).
    let owners: Vec<(String, u64)> = tar::Archive::new(std::fs::File::open(&tarball).unwrap())
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().uid().unwrap(),
            )
        })
        .collect();
    assert!(
        owners.contains(&("u/s.txt".to_string(), 1000)),
        "{owners:?}"
    );
    assert!(owners.contains(&("y".to_string(), 0)), "{owners:?}");
}

/// `path mode` for every entry below `root` (directories end in `/`).
fn walk_listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.push(format!("{rel}/ {mode:o}"));
                stack.push(path);
            } else {
                out.push(format!("{rel} {mode:o}"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffs_show_their_changes_and_apply_their_removals_when_merged() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = |names: &[(&str, &str)]| {
        names.iter().fold(FileActions::new(), |a, (path, data)| {
            a.mkfile(path, 0o644, data.as_bytes())
        })
    };
    let lower = builder::scratch().file(
        files(&[("/keep", "k\n"), ("/gone", "g\n"), ("/changed", "old\n")])
            .mkdir("/dir", 0o755, false)
            .mkfile("/dir/inner", 0o644, b"i\n"),
    );
    let upper = lower.file(
        FileActions::new()
            .rm("/gone", false, false)
            .rm("/dir", false, false)
            .mkfile("/changed", 0o644, b"new\n")
            .mkfile("/added", 0o644, b"a\n"),
    );
    let diff = builder::diff(&lower, &upper);
    let other = builder::scratch()
        .file(files(&[("/gone", "other\n"), ("/mine", "m\n")]).mkdir("/dir", 0o700, false));
    let merged = builder::merge(&[other, diff.clone()]);
    // A merge of that merge keeps the removals for what lies below.
    let base = builder::scratch().file(files(&[("/gone", "base\n"), ("/base", "b\n")]));
    let nested = builder::merge(&[base, merged.clone()]);

    let export = |state: &builder::State, name: &str| {
        let out = tmp.path().join(name);
        let flags = BuildFlags {
            output: vec![format!("type=local,dest={}", out.display())],
            ..Default::default()
        };
        let prepared = flags
            .to_request(Some(state.marshal()), &random("diff"), &random("s"))
            .unwrap();
        (out, prepared)
    };
    let mut listings = Vec::new();
    for (state, name) in [(&diff, "diff"), (&merged, "merged"), (&nested, "nested")] {
        let (out, prepared) = export(state, name);
        daemon.client().await.build(prepared, |_| {}).await.unwrap();
        let mut listing = walk_listing(&out);
        listing.sort();
        listings.push(listing);
    }
    // On its own, a diff is what the upper added or changed.
    assert_eq!(listings[0], vec!["added 644", "changed 644"]);
    assert_eq!(
        std::fs::read(tmp.path().join("diff/changed")).unwrap(),
        b"new\n"
    );
    // Merged, its removals apply to what lies below.
    assert_eq!(listings[1], vec!["added 644", "changed 644", "mine 644"]);
    assert_eq!(
        listings[2],
        vec!["added 644", "base 644", "changed 644", "mine 644"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_chain_needs_none_of_its_intermediate_results() {
    use bk_proto::moby::buildkit::v1::PruneRequest;
    let mut daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let one = builder::scratch()
        .file(FileActions::new().mkfile("/one", 0o644, b"1\n"))
        .with_name("one");
    let two = one
        .file(FileActions::new().mkfile("/two", 0o644, b"2\n"))
        .with_name("two");
    let three = two
        .file(FileActions::new().mkfile("/three", 0o644, b"3\n"))
        .with_name("three");
    let build = |name: &str| {
        let out = tmp.path().join(name);
        let flags = BuildFlags {
            output: vec![format!("type=local,dest={}", out.display())],
            ..Default::default()
        };
        let prepared = flags
            .to_request(Some(three.marshal()), &random("lazy"), &random("s"))
            .unwrap();
        (out, prepared)
    };
    let (first, prepared) = build("first");
    daemon.client().await.build(prepared, |_| {}).await.unwrap();

    // After a restart, the first two steps' snapshots go.
    daemon.restart();
    let client = daemon.client().await;
    let records = client.disk_usage(Vec::new()).await.unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    let pruned = client
        .prune(PruneRequest {
            filter: vec![
                "description==mkfile /one".into(),
                "description==mkfile /two".into(),
            ],
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pruned.len(), 2, "{pruned:?}");

    // The last step's result is all the rebuild needs: every step cached,
    // nothing recomputed.
    let (second, prepared) = build("second");
    let (recorded, sink) = Recorded::new();
    client.build(prepared, sink).await.unwrap();
    let vertices = recorded.vertices();
    for name in ["one", "two", "three"] {
        assert_eq!(
            vertices.get(name),
            Some(&(true, String::new())),
            "{vertices:?}"
        );
    }
    assert_eq!(client.disk_usage(Vec::new()).await.unwrap().len(), 1);
    assert_eq!(walk_listing(&first).len(), 3);
    let mut a = walk_listing(&first);
    let mut b = walk_listing(&second);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_filtered_copies_keep_their_cache_when_other_files_change() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    std::fs::create_dir_all(context.join("src")).unwrap();
    std::fs::write(context.join("a.json"), b"a").unwrap();
    std::fs::write(context.join("b.json"), b"b").unwrap();
    std::fs::write(context.join("notes.txt"), b"n1").unwrap();
    std::fs::write(context.join("src/app.js"), b"v1").unwrap();
    std::fs::write(context.join("src/debug.log"), b"l1").unwrap();
    // COPY *.json /cfg/  and  COPY --exclude=*.log src /app/
    let definition = || {
        let attrs = BTreeMap::from([("local.unique".to_string(), random("u"))]);
        let ctx = builder::local("context", attrs);
        let json = builder::scratch()
            .file(FileActions::new().copy(
                &ctx,
                "/*.json",
                "/cfg/",
                CopyOptions {
                    allow_wildcard: true,
                    ..Default::default()
                },
            ))
            .with_name("COPY *.json");
        let src = builder::scratch()
            .file(FileActions::new().copy(
                &ctx,
                "/src",
                "/app/",
                CopyOptions {
                    exclude_patterns: vec!["*.log".into()],
                    ..Default::default()
                },
            ))
            .with_name("COPY src");
        builder::merge(&[json, src]).marshal()
    };
    let client = daemon.client().await;
    let build = |out: std::path::PathBuf| {
        let client = client.clone();
        let context = context.clone();
        let def = definition();
        async move {
            let flags = BuildFlags {
                local: vec![format!("context={}", context.display())],
                output: vec![format!("type=local,dest={}", out.display())],
                ..Default::default()
            };
            let prepared = flags
                .to_request(Some(def), &random("ref"), &random("s"))
                .unwrap();
            let (recorded, sink) = Recorded::new();
            client.build(prepared, sink).await.unwrap();
            recorded.vertices()
        }
    };
    build(tmp.path().join("o1")).await;
    let cached = |v: &BTreeMap<String, (bool, String)>, name: &str| {
        v.get(name).unwrap_or_else(|| panic!("{name}: {v:?}")).0
    };

    // Neither step reads these.
    std::fs::write(context.join("notes.txt"), b"n2").unwrap();
    std::fs::write(context.join("src/debug.log"), b"l2").unwrap();
    let v = build(tmp.path().join("o2")).await;
    assert!(cached(&v, "COPY *.json") && cached(&v, "COPY src"), "{v:?}");

    // A new match for the wildcard, a changed included file: both rerun.
    std::fs::write(context.join("c.json"), b"c").unwrap();
    std::fs::write(context.join("src/app.js"), b"v2").unwrap();
    let v = build(tmp.path().join("o3")).await;
    assert!(
        !cached(&v, "COPY *.json") && !cached(&v, "COPY src"),
        "{v:?}"
    );
    let o3 = tmp.path().join("o3");
    assert_eq!(std::fs::read(o3.join("cfg/c.json")).unwrap(), b"c");
    assert_eq!(std::fs::read(o3.join("app/app.js")).unwrap(), b"v2");
    assert!(!o3.join("app/debug.log").exists());
}

/// Bytes the daemon's cache reports.
async fn cache_bytes(daemon: &Daemon) -> i64 {
    let client = daemon.client().await;
    client
        .disk_usage(vec![])
        .await
        .unwrap()
        .iter()
        .map(|r| r.size)
        .sum()
}

/// A context holding `mb` MiB that no other context has.
fn fresh_context(dir: &Path, mb: usize, seed: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let data: Vec<u8> = (0..mb << 20)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect();
    std::fs::write(dir.join("data.bin"), data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_storage_and_gc_policies_run_after_builds() {
    // Prune with a space limit: least recently used first, down to it.
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..3u8 {
        let context = tmp.path().join(format!("c{seed}"));
        fresh_context(&context, 2, seed);
        let (result, _) = build(&daemon, &context, &[]).await;
        result.unwrap();
    }
    let before = cache_bytes(&daemon).await;
    assert!(before > 12 << 20, "{before} bytes cached");
    let keep = 5_000_000;
    let removed = daemon
        .client()
        .await
        .prune(bk_proto::moby::buildkit::v1::PruneRequest {
            reserved_space: keep,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!removed.is_empty());
    let after = cache_bytes(&daemon).await;
    assert!(after < keep, "{after} bytes left, wanted under {keep}");
    assert!(after > 0, "a prune down to a size keeps the newest records");
    drop(daemon);

    // GC policies run after a build, unasked.
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--oci-worker-gc=true".into()],
        config: Some(
            "[worker.oci]\ngc = true\n[[worker.oci.gcpolicy]]\nall = true\nmaxUsedSpace = 3000000\n"
                .into(),
        ),
        ..Default::default()
    });
    let context = tmp.path().join("gc");
    fresh_context(&context, 2, 9);
    let (result, _) = build(&daemon, &context, &[]).await;
    result.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let bytes = cache_bytes(&daemon).await;
        if bytes < 3_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {bytes} bytes after the GC should have run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
