//! Real components on loopback for the registry tests: Debian's
//! `docker-registry` (started per test on a free port, state in a temp dir,
//! killed on drop), a token server that signs real JWTs the registry
//! verifies, a tiny HTTP server for hostile-registry cases, and a busybox
//! image built locally (no internet).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bk_image::digest::Digest;
use bk_image::media_types;
use bk_image::registry::{PushOutcome, PushSource, RegistryClient};
use bk_image::types::{Descriptor, Image, Manifest, Platform, RootFs};
use bk_image::{Reference, json};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const REGISTRY_BIN: &str = "docker-registry";

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A free loopback port (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Token auth for the registry: the token server's realm and the
/// certificate bundle its signing key chains to.
pub struct TokenAuthConfig {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_bundle: PathBuf,
}

/// TLS for the registry: its certificate and key, and optionally the CAs
/// whose client certificates it requires.
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cas: Option<PathBuf>,
}

#[derive(Default)]
pub struct RegistryOptions {
    pub token: Option<TokenAuthConfig>,
    pub tls: Option<TlsConfig>,
}

/// A running `docker-registry serve`.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Arc<Mutex<Option<Child>>>,
}

impl Registry {
    /// Starts a plain registry, or `None` (with a message) when the binary
    /// is not installed.
    pub fn start(test: &str) -> Option<Registry> {
        Registry::start_with(test, RegistryOptions::default())
    }

    pub fn start_with(test: &str, opts: RegistryOptions) -> Option<Registry> {
        if !have(REGISTRY_BIN) {
            eprintln!(
                "SKIP {test}: `{REGISTRY_BIN}` not installed (apt-get install docker-registry; scripts/install-deps.sh does)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = &opts.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ));
            if let Some(cas) = &tls.client_cas {
                config.push_str(&format!("    clientcas:\n      - {}\n", cas.display()));
            }
        }
        if let Some(t) = &opts.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.root_bundle.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Registry {
            port,
            dir,
            child: Arc::new(Mutex::new(Some(child))),
        };
        reg.wait_ready();
        Some(reg)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            let exited = match self.child.lock().unwrap().as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                panic!("registry exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "registry not listening on {} after 15 s: {}",
            self.port,
            self.log()
        );
    }

    /// `127.0.0.1:PORT`, the host part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, name: &str) -> Reference {
        Reference::parse_normalized_named(&format!("{}/{name}", self.host())).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines for requests whose request line contains `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET ")
                    || l.contains("\"HEAD ")
                    || l.contains("\"PUT ")
                    || l.contains("\"POST ")
            })
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// A handle that can kill the registry from anywhere (a progress
    /// callback, say).
    pub fn killer(&self) -> Killer {
        Killer(self.child.clone())
    }

    pub fn kill(&self) {
        self.killer().kill();
    }
}

#[derive(Clone)]
pub struct Killer(Arc<Mutex<Option<Child>>>);

impl Killer {
    /// SIGKILL and reap; idempotent.
    pub fn kill(&self) {
        if let Some(mut child) = self.0.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A layer: gzip-compressed tar bytes and the uncompressed tar's digest.
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: Digest,
}

impl Layer {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            media_types::OCI_LAYER_GZIP,
            Digest::sha256_of(&self.blob),
            self.blob.len() as u64,
        )
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Packs entries (path, contents or symlink target) as a gzip tar layer.
pub fn layer(files: &[(&str, &[u8])], dirs: &[&str], links: &[(&str, &str)]) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = header(d, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    for (path, data) in files {
        let mut h = header(path, tar::EntryType::Regular, 0o755, data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    for (path, target) in links {
        let mut h = header(path, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff_id = Digest::sha256_of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    Layer {
        blob: gz.finish().unwrap(),
        diff_id,
    }
}

/// A busybox root: `/bin/busybox` (Debian's busybox-static) with `sh`,
/// `ls` and `echo` links, `/etc/passwd`, `/etc/group`, `/tmp`.
pub fn busybox_layer() -> Layer {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|_| b"#!not busybox\n".to_vec());
    layer(
        &[
            ("bin/busybox", &busybox),
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", b"root:x:0:\n"),
        ],
        &["bin", "etc", "tmp"],
        &[
            ("bin/sh", "busybox"),
            ("bin/ls", "busybox"),
            ("bin/echo", "busybox"),
        ],
    )
}

/// An image's config and manifest, as bytes with their descriptors.
pub struct BuiltImage {
    pub layers: Vec<Layer>,
    pub config: Image,
    pub config_bytes: Vec<u8>,
    pub config_desc: Descriptor,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_desc: Descriptor,
}

pub fn build_image(layers: Vec<Layer>, platform: Platform) -> BuiltImage {
    let mut config = Image {
        created: Some("2024-01-01T00:00:00Z".into()),
        platform: platform.clone(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
        ..Image::default()
    };
    config.config.env = vec!["PATH=/bin".into()];
    config.config.cmd = vec!["sh".into()];
    let config_bytes = json::to_vec(&config).unwrap();
    let config_desc = Descriptor::new(
        media_types::OCI_CONFIG,
        Digest::sha256_of(&config_bytes),
        config_bytes.len() as u64,
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.into(),
        artifact_type: String::new(),
        config: config_desc.clone(),
        layers: layers.iter().map(Layer::descriptor).collect(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = json::to_vec_pretty(&manifest).unwrap();
    let mut manifest_desc = Descriptor::new(
        media_types::OCI_MANIFEST,
        Digest::sha256_of(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    manifest_desc.platform = Some(platform);
    BuiltImage {
        layers,
        config,
        config_bytes,
        config_desc,
        manifest,
        manifest_bytes,
        manifest_desc,
    }
}

/// Pushes layers, config and manifest (under `reference`'s tag or, with
/// none, by digest) with our client.
pub async fn push_image(client: &RegistryClient, reference: &Reference, image: &BuiltImage) {
    for l in &image.layers {
        let outcome = client
            .push_blob(
                reference,
                &l.descriptor(),
                &PushSource::Bytes(Bytes::from(l.blob.clone())),
                None,
            )
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            PushOutcome::Uploaded | PushOutcome::Exists
        ));
    }
    client
        .push_blob(
            reference,
            &image.config_desc,
            &PushSource::Bytes(Bytes::from(image.config_bytes.clone())),
            None,
        )
        .await
        .unwrap();
    let mut desc = image.manifest_desc.clone();
    desc.platform = None;
    client
        .push_manifest(reference, &desc, Bytes::from(image.manifest_bytes.clone()))
        .await
        .unwrap();
}

/// Deterministic pseudo-random bytes (incompressible enough to be a fair
/// layer for throughput).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- a tiny HTTP server -------------------------------------------------

/// Handles one request: its head and its whole body.
pub type Handler =
    Arc<dyn Fn(&Request<()>, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static>;

/// An HTTP/1.1 server on a loopback port, calling `handler` for each
/// request. Stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: Handler) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let req = Request::from_parts(parts, ());
                            Ok::<_, Infallible>(handler(&req, body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer { addr, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn respond(
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

pub mod token;
