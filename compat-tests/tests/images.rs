//! `FROM <image>` end to end: a busybox image made here (no internet) and
//! pushed to Debian's `docker-registry` on loopback, then a Dockerfile
//! built on it through `dockerfile.v0`: resolved, pulled, unpacked, run.
//! Skipped (with a message) where docker-registry is not installed.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bk_client::solve_opts::BuildFlags;
use bk_image::registry::{AnonymousCredentials, PushSource, RegistryClient, RegistryHosts};
use bk_image::{Descriptor, Digest, Reference};
use compat_tests::{Daemon, DaemonOptions, free_port};

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Option<Registry> {
    if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped: docker-registry is not installed (scripts/install-deps.sh installs it)"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Registry {
        child,
        port,
        _dir: dir,
    })
}

fn sha256(data: &[u8]) -> Digest {
    Digest::sha256_of(data)
}

/// A gzip layer with busybox, its shell links, users and /tmp.
fn busybox_layer() -> (Vec<u8>, Vec<u8>) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = |name: &str, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    dir("bin/", 0o755);
    dir("etc/", 0o755);
    dir("tmp/", 0o1777);
    let mut file = |name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, name, data).unwrap();
    };
    file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").unwrap(),
    );
    file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    file("etc/group", 0o644, b"root:x:0:\n");
    for applet in ["sh", "echo", "cat", "ls", "id"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(1_700_000_000);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let uncompressed = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&uncompressed).unwrap();
    (uncompressed, gz.finish().unwrap())
}

async fn push_busybox(port: u16) -> String {
    let name = format!("127.0.0.1:{port}/busybox:latest");
    let reference = Reference::parse_normalized_named(&name).unwrap();
    let client = RegistryClient::new(
        RegistryHosts::defaults().unwrap(),
        Arc::new(AnonymousCredentials),
    );
    let (tar, gz) = busybox_layer();
    let layer = Descriptor::new(
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        sha256(&gz),
        gz.len() as u64,
    );
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_BASE=yes"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar).to_string()]},
        "history": [{"created_by": "made by the test"}]
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_desc = Descriptor::new(
        "application/vnd.docker.container.image.v1+json",
        sha256(&config),
        config.len() as u64,
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": config_desc.media_type, "digest": config_desc.digest.to_string(), "size": config_desc.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest.to_string(), "size": layer.size}]
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_desc = Descriptor::new(
        "application/vnd.docker.distribution.manifest.v2+json",
        sha256(&manifest),
        manifest.len() as u64,
    );
    client
        .push_blob(&reference, &layer, &PushSource::Bytes(gz.into()), None)
        .await
        .unwrap();
    client
        .push_blob(
            &reference,
            &config_desc,
            &PushSource::Bytes(config.into()),
            None,
        )
        .await
        .unwrap();
    client
        .push_manifest(&reference, &manifest_desc, manifest.into())
        .await
        .unwrap();
    name
}

/// A daemon, a temp dir, and a project in it with `dockerfile`.
fn project(dockerfile: String) -> (Daemon, tempfile::TempDir, std::path::PathBuf) {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    (daemon, tmp, dir)
}

async fn build_with(
    daemon: &Daemon,
    dir: &Path,
    output: Vec<String>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    build_opts(daemon, dir, output, Vec::new()).await
}

async fn build(daemon: &Daemon, dir: &Path, out: &Path) -> Result<(), String> {
    build_with(
        daemon,
        dir,
        vec![format!("type=local,dest={}", out.display())],
    )
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_builds_from_an_image_in_a_local_registry() {
    let Some(registry) = start_registry() else {
        return;
    };
    let image = push_busybox(registry.port).await;
    let (daemon, tmp, dir) = project(format!(
        "FROM {image}\nRUN echo \"$FROM_BASE\" > /from-base && ls /bin > /bins && id -u > /uid\n\
         LABEL org.example.test=1\nEXPOSE 8080\nWORKDIR /srv\nUSER 1000\nENTRYPOINT [\"sh\", \"-c\"]\n"
    ));
    let out = tmp.path().join("out");
    build(&daemon, &dir, &out).await.unwrap();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("from-base"), "yes\n", "the image's env reaches RUN");
    assert!(read("bins").contains("busybox"));
    assert_eq!(read("uid"), "0\n");
    assert!(
        out.join("etc/passwd").exists(),
        "the image's files are there"
    );

    // Again, after a restart: resolved again, nothing pulled or unpacked.
    drop(daemon);
    let out2 = tmp.path().join("out2");
    let daemon = Daemon::start(DaemonOptions::default());
    build(&daemon, &dir, &out2).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(out2.join("from-base")).unwrap(),
        "yes\n"
    );

    // The result as images: OCI and Docker archives, and a push.
    let archive = |kind: &str| tmp.path().join(format!("{kind}.tar"));
    let pushed = format!("127.0.0.1:{}/app:v1", registry.port);
    let outputs = vec![
        format!("type=oci,dest={}", archive("oci").display()),
        format!(
            "type=docker,dest={},name=app:v1",
            archive("docker").display()
        ),
        format!("type=image,name={pushed},push=true"),
    ];
    let response = build_with(&daemon, &dir, outputs.clone()).await.unwrap();
    let digest = response["containerimage.digest"].clone();
    assert!(digest.starts_with("sha256:"), "{response:?}");
    assert!(response.contains_key("containerimage.descriptor"));
    if Command::new("skopeo").arg("--version").output().is_ok() {
        for (transport, path) in [
            ("oci-archive", archive("oci")),
            ("docker-archive", archive("docker")),
        ] {
            skopeo_json(&[], &format!("{transport}:{}", path.display()));
        }
        let manifest = skopeo_json(
            &["--tls-verify=false", "--raw"],
            &format!("docker://{pushed}"),
        );
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            3,
            "{manifest}"
        );
        let config = skopeo_json(
            &["--tls-verify=false", "--config"],
            &format!("docker://{pushed}"),
        );
        let env = config["config"]["Env"].to_string();
        assert!(env.contains("FROM_BASE=yes"), "{config}");
        // The Dockerfile's config, as BuildKit writes it: ENTRYPOINT resets
        // the base image's CMD.
        let c = &config["config"];
        assert_eq!(c["User"], "1000", "{config}");
        assert_eq!(c["WorkingDir"], "/srv");
        assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
        assert_eq!(c["Labels"]["org.example.test"], "1");
        assert_eq!(c["Entrypoint"], serde_json::json!(["sh", "-c"]));
        assert!(c.get("Cmd").is_none_or(|v| v.is_null()), "{config}");
        let history: Vec<String> = config["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created_by"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            history.last().unwrap(),
            "ENTRYPOINT [\"sh\" \"-c\"]",
            "{history:?}"
        );
        assert!(
            history.iter().any(|h| h.starts_with("RUN /bin/sh -c echo")),
            "{history:?}"
        );
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    }
    // Unchanged: the same digest, nothing compressed or uploaded again.
    let again = build_with(
        &daemon,
        &dir,
        vec![format!("type=image,name={pushed},push=true")],
    )
    .await
    .unwrap();
    assert_eq!(again["containerimage.digest"], digest);

    // An image that is not there: a clear error naming it.
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM 127.0.0.1:{}/nothing:here\n", registry.port),
    )
    .unwrap();
    let err = build(&daemon, &dir, &tmp.path().join("out3"))
        .await
        .unwrap_err();
    assert!(err.contains("nothing"), "{err}");
}

async fn build_opts(
    daemon: &Daemon,
    dir: &Path,
    output: Vec<String>,
    opt: Vec<String>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let flags = BuildFlags {
        frontend: Some("dockerfile.v0".into()),
        local: vec![
            format!("context={}", dir.display()),
            format!("dockerfile={}", dir.display()),
        ],
        output,
        opt,
        ..Default::default()
    };
    let id = compat_tests::random("img");
    let prepared = flags.to_request(None, &id, &format!("s{id}")).unwrap();
    daemon
        .client()
        .await
        .build(prepared, |_| {})
        .await
        .map(|r| r.exporter_response)
        .map_err(|e| e.to_string())
}

/// `oci` with `tar=false` (blobs through the session's content store, the
/// client's `index.json`), and the image store: names, `name-canonical`,
/// `dangling-name-prefix`, and `FROM` it with `image-resolve-mode=local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_and_the_image_store() {
    let Some(registry) = start_registry() else {
        return;
    };
    let image = push_busybox(registry.port).await;
    let (daemon, tmp, dir) = project(format!("FROM {image}\nRUN echo built > /built\n"));
    let layout = tmp.path().join("layout");
    // One exporter a build: the response is one map for all of them.
    let response = build_opts(
        &daemon,
        &dir,
        vec![format!("type=oci,tar=false,dest={}", layout.display())],
        vec![],
    )
    .await
    .unwrap();
    let digest = response["containerimage.digest"].clone();

    // The layout: the client's index names the manifest; every blob is there.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], digest.as_str(), "{index}");
    assert!(
        entry["annotations"]["org.opencontainers.image.created"].is_string(),
        "{index}"
    );
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    assert!(blob(manifest["config"]["digest"].as_str().unwrap()).exists());
    for layer in manifest["layers"].as_array().unwrap() {
        assert!(blob(layer["digest"].as_str().unwrap()).exists(), "{layer}");
    }
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    if Command::new("skopeo").arg("--version").output().is_ok() {
        skopeo_json(&[], &format!("oci:{}", layout.display()));
    }
    if Command::new("umoci").arg("--version").output().is_ok() {
        let bundle = tmp.path().join("bundle");
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/built")).unwrap(),
            "built\n"
        );
    }

    let response = build_opts(
        &daemon,
        &dir,
        vec!["type=image,name=localonly/app:v1,name-canonical=true,dangling-name-prefix=dangle,unpack=true".into()],
        vec![],
    )
    .await
    .unwrap();
    let digest = response["containerimage.digest"].clone();
    let names = &response["image.name"];
    assert!(names.contains(&format!("dangle@{digest}")), "{names}");

    // The stored name, found without a registry (`localonly` is docker.io,
    // unreachable here), by name and by canonical name.
    for from in [
        "localonly/app:v1".to_string(),
        format!("localonly/app:v1@{digest}"),
    ] {
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {from}\nRUN cat /built > /again\n"),
        )
        .unwrap();
        assert_eq!(
            build_resolving_locally(&daemon, &dir, &tmp.path().join("out")).await,
            "built\n"
        );
    }

    // A full prune takes the snapshots and the blobs only they needed (the
    // unnamed OCI export's); the named image keeps its own.
    let before = stored_blobs(&daemon.root);
    daemon
        .client()
        .await
        .prune(bk_proto::moby::buildkit::v1::PruneRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let after = stored_blobs(&daemon.root);
    assert!(
        after < before,
        "{before} blobs before the prune, {after} after"
    );
    assert_eq!(
        build_resolving_locally(&daemon, &dir, &tmp.path().join("after-prune")).await,
        "built\n"
    );
}

/// Builds `dir` with `image-resolve-mode=local` into `out` (emptied
/// first); the `/again` file it wrote.
async fn build_resolving_locally(daemon: &Daemon, dir: &Path, out: &Path) -> String {
    let _ = std::fs::remove_dir_all(out);
    build_opts(
        daemon,
        dir,
        vec![format!("type=local,dest={}", out.display())],
        vec!["image-resolve-mode=local".into()],
    )
    .await
    .unwrap();
    std::fs::read_to_string(out.join("again")).unwrap()
}

/// Files in the daemon's content store (`…/content/blobs/sha256`).
fn stored_blobs(root: &Path) -> usize {
    fn walk(dir: &Path, found: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.ends_with("content/blobs/sha256") {
                *found += std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
            } else if e.file_type().is_ok_and(|t| t.is_dir()) && !path.ends_with("snapshots") {
                walk(&path, found);
            }
        }
    }
    let mut found = 0;
    walk(root, &mut found);
    found
}

/// `platform=linux/amd64,linux/arm64`: one result per platform, the local
/// output split by platform, an OCI index with each manifest's platform
/// (pushed as one), and the docker exporter's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_results() {
    let daemon = Daemon::start(DaemonOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("amd64.txt"), "x86\n").unwrap();
    std::fs::write(dir.join("arm64.txt"), "arm\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /arch\nENV ARCH=$TARGETARCH\n",
    )
    .unwrap();
    let platforms = vec!["platform=linux/amd64,linux/arm64".to_string()];
    let out = tmp.path().join("out");
    build_opts(
        &daemon,
        &dir,
        vec![format!("type=local,dest={}", out.display())],
        platforms.clone(),
    )
    .await
    .unwrap();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("linux_amd64/arch"), "x86\n");
    assert_eq!(read("linux_arm64/arch"), "arm\n");

    let archive = tmp.path().join("multi.tar");
    let response = build_opts(
        &daemon,
        &dir,
        vec![format!("type=oci,dest={}", archive.display())],
        platforms.clone(),
    )
    .await
    .unwrap();
    assert!(!response.contains_key("containerimage.config.digest"));
    let index = read_archive_index(&archive, &response["containerimage.digest"]);
    let found: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(found, ["linux/amd64", "linux/arm64"], "{index}");
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let config = skopeo_json(
            &["--override-arch", "arm64", "--config"],
            &format!("oci-archive:{}", archive.display()),
        );
        assert_eq!(config["architecture"], "arm64");
        assert!(
            config["config"]["Env"].to_string().contains("ARCH=arm64"),
            "{config}"
        );
    }

    // As a layout: the index and every manifest's blobs reach the client.
    let layout = tmp.path().join("multi-layout");
    let response = build_opts(
        &daemon,
        &dir,
        vec![format!("type=oci,tar=false,dest={}", layout.display())],
        platforms.clone(),
    )
    .await
    .unwrap();
    let blob = |d: &str| {
        let path = layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap()
    };
    let index = blob(&response["containerimage.digest"]);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    for m in index["manifests"].as_array().unwrap() {
        let manifest = blob(m["digest"].as_str().unwrap());
        blob(manifest["config"]["digest"].as_str().unwrap());
    }

    let err = build_opts(
        &daemon,
        &dir,
        vec![format!(
            "type=docker,dest={}",
            tmp.path().join("d.tar").display()
        )],
        platforms.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("docker exporter does not currently support exporting manifest lists"),
        "{err}"
    );

    let Some(registry) = start_registry() else {
        return;
    };
    let pushed = format!("127.0.0.1:{}/multi:v1", registry.port);
    build_opts(
        &daemon,
        &dir,
        vec![format!(
            "type=image,name={pushed},push=true,oci-mediatypes=true"
        )],
        platforms,
    )
    .await
    .unwrap();
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let index = skopeo_json(
            &["--tls-verify=false", "--raw"],
            &format!("docker://{pushed}"),
        );
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    }
}

/// `skopeo inspect <args> <target>`, which must succeed, as JSON.
fn skopeo_json(args: &[&str], target: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .arg("inspect")
        .args(args)
        .arg(target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The blob `digest` of an OCI archive, as JSON.
fn read_archive_index(archive: &Path, digest: &str) -> serde_json::Value {
    let want = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == want {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut buf).unwrap();
            return serde_json::from_slice(&buf).unwrap();
        }
    }
    panic!("{want} is not in the archive");
}

/// A multi-platform build whose platforms are empty filesystems: empty
/// directories, and an index of manifests without layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_empty_results() {
    let (daemon, tmp, dir) = project("FROM scratch\nLABEL a=b\n".to_string());
    let platforms = vec!["platform=linux/amd64,linux/arm64".to_string()];
    let out = tmp.path().join("out");
    build_opts(
        &daemon,
        &dir,
        vec![format!("type=local,dest={}", out.display())],
        platforms.clone(),
    )
    .await
    .unwrap();
    assert!(out.join("linux_amd64").is_dir() && out.join("linux_arm64").is_dir());
    let archive = tmp.path().join("empty.tar");
    let response = build_opts(
        &daemon,
        &dir,
        vec![format!("type=oci,dest={}", archive.display())],
        platforms,
    )
    .await
    .unwrap();
    let index = read_archive_index(&archive, &response["containerimage.digest"]);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
}
