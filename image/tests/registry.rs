//! The registry client and pulls against Debian's real `docker-registry`
//! on a loopback port: push with our client, pull back, check with skopeo
//! and umoci; multi-platform indexes; cross-repository mounts; shared
//! downloads; HTTPS with a custom CA and client certificates; the https→http
//! fallback; the Docker token flow with a token server whose JWTs the
//! registry verifies; and a registry killed in the middle of a pull.
//!
//! Each test skips (with a message) when `docker-registry` is not
//! installed; `scripts/install-deps.sh` installs it, so CI runs them.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bk_image::content::ContentStore;
use bk_image::media_types;
use bk_image::registry::{
    AnonymousCredentials, Credentials, CredentialsProvider, KeyPair, PushOutcome, PushSource,
    RegistryClient, RegistryConfig, RegistryError, RegistryHosts, RetryPolicy, StaticCredentials,
};
use bk_image::types::{Descriptor, Index, Platform};
use bk_image::{BlobProgress, BlobState, PullError, Puller, json};
use bytes::Bytes;
use support::token::{TokenOptions, TokenServer};
use support::{
    Layer, Registry, RegistryOptions, TlsConfig, build_image, busybox_layer, have, layer, noise,
    push_image,
};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
    }
}

fn client_with(hosts: RegistryHosts, creds: Arc<dyn CredentialsProvider>) -> RegistryClient {
    RegistryClient::new(hosts, creds).with_retry(fast_retry())
}

fn anonymous() -> RegistryClient {
    client_with(
        RegistryHosts::defaults().unwrap(),
        Arc::new(AnonymousCredentials),
    )
}

async fn new_store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content"))
        .await
        .unwrap();
    (dir, store)
}

async fn assert_no_ingest(store: &ContentStore) {
    let dir = store.root().join("ingest");
    for _ in 0..100 {
        if std::fs::read_dir(&dir).unwrap().next().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ingest files left in {}", dir.display());
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64")
}

/// Records progress reports.
fn recorder() -> (bk_image::ProgressFn, Arc<Mutex<Vec<BlobProgress>>>) {
    let events: Arc<Mutex<Vec<BlobProgress>>> = Arc::default();
    let e = events.clone();
    (
        Arc::new(move |p: &BlobProgress| e.lock().unwrap().push(p.clone())),
        events,
    )
}

#[tokio::test]
async fn push_then_pull_busybox_and_check_with_skopeo_and_umoci() {
    let Some(reg) = Registry::start("push_then_pull_busybox") else {
        return;
    };
    let client = anonymous();
    let image = build_image(vec![busybox_layer()], amd64());
    let reference = reg.reference("busybox:latest");
    push_image(&client, &reference, &image).await;
    let layer_desc = image.manifest.layers[0].clone();
    assert_eq!(
        reg.requests("PUT /v2/busybox/blobs/uploads/").len(),
        2,
        "{}",
        reg.log()
    );

    // Pushing again sends nothing.
    let again = client
        .push_blob(
            &reference,
            &layer_desc,
            &PushSource::Bytes(Bytes::from(image.layers[0].blob.clone())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, PushOutcome::Exists);
    let mut mdesc = image.manifest_desc.clone();
    mdesc.platform = None;
    let again = client
        .push_manifest(
            &reference,
            &mdesc,
            Bytes::from(image.manifest_bytes.clone()),
        )
        .await
        .unwrap();
    assert_eq!(again, PushOutcome::Exists);

    // Resolve by tag and by digest.
    let resolved = client.resolve(&reference).await.unwrap();
    assert_eq!(resolved.descriptor.digest, image.manifest_desc.digest);
    assert_eq!(resolved.descriptor.media_type, media_types::OCI_MANIFEST);
    assert_eq!(resolved.host, reg.host());
    let by_digest = client
        .resolve(
            &resolved
                .reference
                .trim_named()
                .with_digest(resolved.descriptor.digest.clone()),
        )
        .await
        .unwrap();
    assert_eq!(by_digest.descriptor, resolved.descriptor);

    // Pull into a fresh store.
    let (_dir, store) = new_store().await;
    let puller = Puller::new(client.clone(), store.clone());
    let (progress, events) = recorder();
    let pulled = puller
        .pull(&reference, &amd64(), Some(progress))
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, image.manifest_desc.digest);
    assert_eq!(
        pulled.manifest_descriptor.digest,
        image.manifest_desc.digest
    );
    assert_eq!(pulled.manifest, image.manifest);
    assert_eq!(pulled.config, image.config);
    assert_eq!(pulled.reference.digest(), Some(&image.manifest_desc.digest));
    let stored = store.read_blob(&layer_desc.digest, 64 << 20).await.unwrap();
    assert_eq!(stored, image.layers[0].blob);
    for d in [
        &image.manifest_desc.digest,
        &image.config_desc.digest,
        &layer_desc.digest,
    ] {
        assert!(pulled.lease.contains(d));
        assert!(store.is_protected(d));
    }
    {
        let events = events.lock().unwrap();
        let done: Vec<_> = events
            .iter()
            .filter(|e| e.state == BlobState::Done)
            .collect();
        assert_eq!(done.len(), 3, "{events:?}");
        let layer_done = done.iter().find(|e| e.digest == layer_desc.digest).unwrap();
        assert_eq!(layer_done.current, layer_desc.size);
        assert_eq!(layer_done.total, layer_desc.size);
        assert!(
            events
                .iter()
                .any(|e| e.state == BlobState::Downloading && e.digest == layer_desc.digest)
        );
    }
    assert_no_ingest(&store).await;

    // Pulling again downloads no blob.
    let blob_gets = reg.requests("GET /v2/busybox/blobs/").len();
    let (progress, events) = recorder();
    puller
        .pull(&reference, &amd64(), Some(progress))
        .await
        .unwrap();
    assert_eq!(reg.requests("GET /v2/busybox/blobs/").len(), blob_gets);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.state == BlobState::Exists)
    );

    // Independent checks.
    if !have("skopeo") {
        eprintln!("SKIP skopeo checks: skopeo not installed");
        return;
    }
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/busybox:latest", reg.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], image.manifest_desc.digest.as_str());
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Layers"][0], layer_desc.digest.as_str());

    if !have("umoci") {
        eprintln!("SKIP umoci check: umoci not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/busybox:latest", reg.host()))
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = work.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    assert!(rootfs.join("tmp").is_dir());
}

#[tokio::test]
async fn a_multi_platform_index_is_pulled_for_the_wanted_platform() {
    let Some(reg) = Registry::start("multi_platform_index") else {
        return;
    };
    let client = anonymous();
    let name = reg.reference("multi");
    let amd = build_image(vec![layer(&[("arch", b"amd64")], &[], &[])], amd64());
    let arm = build_image(
        vec![layer(&[("arch", b"arm64")], &[], &[])],
        Platform::new("linux", "arm64"),
    );
    // Manifests by digest (no tag), then the index under a tag.
    push_image(&client, &name, &amd).await;
    push_image(&client, &name, &arm).await;
    let index = Index {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.into(),
        artifact_type: String::new(),
        manifests: vec![amd.manifest_desc.clone(), arm.manifest_desc.clone()],
        subject: None,
        annotations: BTreeMap::new(),
    };
    let index_bytes = json::to_vec_pretty(&index).unwrap();
    let index_desc = Descriptor::new(
        media_types::OCI_INDEX,
        bk_image::Digest::sha256_of(&index_bytes),
        index_bytes.len() as u64,
    );
    let tagged = reg.reference("multi:latest");
    client
        .push_manifest(&tagged, &index_desc, Bytes::from(index_bytes))
        .await
        .unwrap();

    let (_dir, store) = new_store().await;
    let puller = Puller::new(client.clone(), store.clone());
    let pulled = puller
        .pull(&tagged, &Platform::new("linux", "arm64"), None)
        .await
        .unwrap();
    assert_eq!(pulled.descriptor, index_desc);
    assert_eq!(pulled.manifest_descriptor.digest, arm.manifest_desc.digest);
    assert_eq!(pulled.config.platform.architecture, "arm64");
    assert!(store.exists(&arm.manifest.layers[0].digest).await.unwrap());
    // The other platform's layer was not fetched.
    assert!(!store.exists(&amd.manifest.layers[0].digest).await.unwrap());
    // arm64/v8 is arm64.
    let pulled = puller
        .pull(
            &tagged,
            &Platform::new("linux", "arm64").with_variant("v8"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_descriptor.digest, arm.manifest_desc.digest);

    let err = puller
        .pull(&tagged, &Platform::new("linux", "s390x"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NoMatch { .. }));
    let msg = err.to_string();
    eprintln!("no match: {msg}");
    assert!(
        msg.starts_with(&format!(
            "no match for platform in manifest {}: not found",
            index_desc.digest
        )),
        "{msg}"
    );
    assert!(msg.contains("wanted linux/s390x"), "{msg}");
    assert!(msg.contains("available: linux/amd64, linux/arm64"), "{msg}");
}

#[tokio::test]
async fn blobs_are_mounted_across_repositories() {
    let Some(reg) = Registry::start("cross_repo_mount") else {
        return;
    };
    let client = anonymous();
    let l = layer(&[("f", b"shared layer")], &[], &[]);
    let desc = l.descriptor();
    let src = PushSource::Bytes(Bytes::from(l.blob.clone()));
    let first = reg.reference("first");
    let second = reg.reference("second");
    assert_eq!(
        client.push_blob(&first, &desc, &src, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(
        client
            .push_blob(&second, &desc, &src, Some("first"))
            .await
            .unwrap(),
        PushOutcome::Mounted {
            from: "first".into()
        }
    );
    assert!(client.blob_exists(&second, &desc.digest).await.unwrap());
    assert_eq!(
        client
            .push_blob(&second, &desc, &src, Some("first"))
            .await
            .unwrap(),
        PushOutcome::Exists
    );
    // Mounting from a repository that lacks the blob falls back to upload.
    let other = layer(&[("g", b"other")], &[], &[]);
    let third = reg.reference("third");
    assert_eq!(
        client
            .push_blob(
                &third,
                &other.descriptor(),
                &PushSource::Bytes(Bytes::from(other.blob.clone())),
                Some("first")
            )
            .await
            .unwrap(),
        PushOutcome::Uploaded
    );
    // A blob that is not what its descriptor says is refused before sending.
    let mut wrong = other.descriptor();
    wrong.digest = desc.digest.clone();
    let err = client
        .push_blob(
            &third,
            &wrong,
            &PushSource::Bytes(Bytes::from(other.blob.clone())),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn blobs_are_pushed_from_the_content_store_and_files() {
    let Some(reg) = Registry::start("push_sources") else {
        return;
    };
    let client = anonymous();
    let (dir, store) = new_store().await;
    let data = noise(3 << 20, 7);
    let commit = store.write_blob(data.clone(), None).await.unwrap();
    let desc = Descriptor::new(
        media_types::OCI_LAYER,
        commit.info.digest.clone(),
        data.len() as u64,
    );
    let r = reg.reference("fromstore");
    assert_eq!(
        client
            .push_blob(&r, &desc, &PushSource::Store(store.clone()), None)
            .await
            .unwrap(),
        PushOutcome::Uploaded
    );
    let path = dir.path().join("blob");
    let data2 = noise(1 << 20, 9);
    std::fs::write(&path, &data2).unwrap();
    let desc2 = Descriptor::new(
        media_types::OCI_LAYER,
        bk_image::Digest::sha256_of(&data2),
        data2.len() as u64,
    );
    assert_eq!(
        client
            .push_blob(&r, &desc2, &PushSource::File(path), None)
            .await
            .unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(client.fetch_bytes(&r, &desc, 8 << 20).await.unwrap(), data);
    assert_eq!(
        client.fetch_bytes(&r, &desc2, 8 << 20).await.unwrap(),
        data2
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_blob_download_it_once() {
    let Some(reg) = Registry::start("concurrent_pulls") else {
        return;
    };
    let client = anonymous();
    let big = Layer {
        blob: noise(16 << 20, 3),
        diff_id: bk_image::Digest::sha256_of(b"not checked"),
    };
    let image = build_image(vec![big, busybox_layer()], amd64());
    let reference = reg.reference("shared:v1");
    push_image(&client, &reference, &image).await;
    let big_digest = image.manifest.layers[0].digest.clone();

    let (_dir, store) = new_store().await;
    let puller = Puller::new(client, store.clone());
    let (progress, events) = recorder();
    let a = {
        let p = puller.clone();
        let r = reference.clone();
        let progress = progress.clone();
        tokio::spawn(async move { p.pull(&r, &amd64(), Some(progress)).await })
    };
    let b = {
        let p = puller.clone();
        let r = reference.clone();
        tokio::spawn(async move { p.pull(&r, &amd64(), Some(progress)).await })
    };
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(a.manifest, b.manifest);
    assert!(store.exists(&big_digest).await.unwrap());
    let gets = reg.requests(&format!("GET /v2/shared/blobs/{big_digest}"));
    assert_eq!(gets.len(), 1, "{gets:?}");
    let events = events.lock().unwrap();
    let done = events
        .iter()
        .filter(|e| e.digest == big_digest && e.state == BlobState::Done)
        .count();
    assert_eq!(done, 1);
    assert!(events.iter().any(
        |e| e.digest == big_digest && matches!(e.state, BlobState::Waiting | BlobState::Exists)
    ));
}

#[tokio::test]
async fn an_insecure_localhost_registry_falls_back_to_http() {
    let Some(reg) = Registry::start("insecure_fallback") else {
        return;
    };
    let mut config = BTreeMap::new();
    config.insert(
        reg.host(),
        RegistryConfig {
            insecure: Some(true),
            ..RegistryConfig::default()
        },
    );
    let hosts = RegistryHosts::new(config).unwrap();
    assert_eq!(hosts.hosts(&reg.host())[0].scheme(), "https");
    let client = client_with(hosts.clone(), Arc::new(AnonymousCredentials));
    let image = build_image(vec![layer(&[("x", b"y")], &[], &[])], amd64());
    let reference = reg.reference("fallback:v1");
    push_image(&client, &reference, &image).await;
    assert_eq!(hosts.hosts(&reg.host())[0].scheme(), "http");
    let (_dir, store) = new_store().await;
    Puller::new(client, store)
        .pull(&reference, &amd64(), None)
        .await
        .unwrap();

    // Without `insecure`, `http = false` means HTTPS only: no fallback.
    let mut config = BTreeMap::new();
    config.insert(
        reg.host(),
        RegistryConfig {
            plain_http: Some(false),
            ..RegistryConfig::default()
        },
    );
    let client = client_with(
        RegistryHosts::new(config).unwrap(),
        Arc::new(AnonymousCredentials),
    );
    let err = client.resolve(&reference).await.unwrap_err().to_string();
    eprintln!("https to a plain registry: {err}");
    assert!(
        err.contains(&format!("https://{}/v2/fallback/manifests/v1", reg.host())),
        "{err}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair as RcKey, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = RcKey::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "registry test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let issue = |name: &str, params: CertificateParams| {
        let key = RcKey::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let c = support::write(dir.path(), &format!("{name}.pem"), cert.pem().as_bytes());
        let k = support::write(
            dir.path(),
            &format!("{name}-key.pem"),
            key.serialize_pem().as_bytes(),
        );
        (c, k)
    };
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server = issue("server", sp);
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "builder");
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = issue("client", cp);
    let ca_path = support::write(dir.path(), "ca.pem", ca.pem().as_bytes());
    Pki {
        dir,
        ca: ca_path,
        server,
        client,
    }
}

#[tokio::test]
async fn https_with_a_custom_ca_and_a_client_certificate() {
    let pki = pki();
    let Some(reg) = Registry::start_with(
        "tls_custom_ca",
        RegistryOptions {
            tls: Some(TlsConfig {
                cert: pki.server.0.clone(),
                key: pki.server.1.clone(),
                client_cas: Some(pki.ca.clone()),
            }),
            ..RegistryOptions::default()
        },
    ) else {
        return;
    };
    let cfg = |ca: bool, keypair: bool| {
        let mut m = BTreeMap::new();
        m.insert(
            reg.host(),
            RegistryConfig {
                // Loopback defaults to plain HTTP; this registry is HTTPS.
                plain_http: Some(false),
                ca: if ca { vec![pki.ca.clone()] } else { Vec::new() },
                keypair: if keypair {
                    vec![KeyPair {
                        cert: pki.client.0.clone(),
                        key: pki.client.1.clone(),
                    }]
                } else {
                    Vec::new()
                },
                ..RegistryConfig::default()
            },
        );
        client_with(
            RegistryHosts::new(m).unwrap(),
            Arc::new(AnonymousCredentials),
        )
    };
    let client = cfg(true, true);
    let image = build_image(vec![layer(&[("tls", b"yes")], &[], &[])], amd64());
    let reference = reg.reference("secure:v1");
    push_image(&client, &reference, &image).await;
    let (_dir, store) = new_store().await;
    let pulled = Puller::new(client, store)
        .pull(&reference, &amd64(), None)
        .await
        .unwrap();
    assert_eq!(pulled.manifest, image.manifest);

    // The CA alone is not enough: the registry wants our certificate.
    let err = cfg(true, false)
        .resolve(&reference)
        .await
        .unwrap_err()
        .to_string();
    eprintln!("no client cert: {err}");
    assert!(
        err.contains(&format!("https://{}/v2/secure/manifests/v1", reg.host())),
        "{err}"
    );
    // Without the CA the server certificate is not trusted.
    let err = cfg(false, true)
        .resolve(&reference)
        .await
        .unwrap_err()
        .to_string();
    eprintln!("no CA: {err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    drop(pki.dir);
}

#[tokio::test]
async fn the_token_flow_against_a_registry_with_token_auth() {
    let tokens = TokenServer::start(TokenOptions::default()).await;
    let Some(reg) = Registry::start_with(
        "token_auth",
        RegistryOptions {
            token: Some(tokens.auth_config()),
            ..RegistryOptions::default()
        },
    ) else {
        return;
    };
    let hosts = RegistryHosts::defaults().unwrap();
    let alice = StaticCredentials::new().with(reg.host(), Credentials::new("alice", "s3cret-pa55"));
    let client = client_with(hosts.clone(), Arc::new(alice));
    let image = build_image(vec![busybox_layer()], amd64());
    let reference = reg.reference("private/busybox:latest");
    push_image(&client, &reference, &image).await;
    let (_dir, store) = new_store().await;
    let puller = Puller::new(client.clone(), store.clone());
    let pulled = puller.pull(&reference, &amd64(), None).await.unwrap();
    assert_eq!(pulled.config, image.config);

    let seen = tokens.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.granted && s.method == "GET" && s.username == "alice"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s
            .scopes
            .contains(&"repository:private/busybox:pull,push".to_owned())),
        "{seen:?}"
    );
    // Tokens are cached per scope: another pull asks for none.
    let before = tokens.seen().len();
    let (_dir2, store2) = new_store().await;
    Puller::new(client.clone(), store2)
        .pull(&reference, &amd64(), None)
        .await
        .unwrap();
    assert_eq!(tokens.seen().len(), before, "{:?}", tokens.seen());

    // Anonymous: the token server refuses, and the error says where.
    let err = client_with(hosts.clone(), Arc::new(AnonymousCredentials))
        .resolve(&reference)
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("anonymous: {msg}");
    assert!(
        matches!(
            err,
            RegistryError::Token {
                kind: "anonymous",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&tokens.auth_config().realm), "{msg}");
    assert!(msg.contains("401"), "{msg}");

    // A wrong password: GET refused, then the OAuth POST refused; the
    // password appears nowhere.
    let wrong = StaticCredentials::new().with(reg.host(), Credentials::new("alice", "wr0ng-pa55"));
    let err = client_with(hosts.clone(), Arc::new(wrong))
        .resolve(&reference)
        .await
        .unwrap_err();
    let msg = format!("{err} {err:?}");
    eprintln!("wrong password: {err}");
    assert!(!msg.contains("wr0ng-pa55"), "{msg}");
    assert!(msg.contains("failed to fetch oauth token"), "{msg}");
    let last_two: Vec<_> = tokens
        .seen()
        .iter()
        .rev()
        .take(2)
        .map(|s| (s.method.clone(), s.grant_type.clone()))
        .collect();
    assert_eq!(
        last_two,
        [
            ("POST".to_owned(), "password".to_owned()),
            ("GET".to_owned(), String::new())
        ]
    );

    // An identity token: containerd's OAuth refresh-token POST.
    let identity =
        StaticCredentials::new().with(reg.host(), Credentials::identity_token("refresh-t0ken"));
    let (_dir3, store3) = new_store().await;
    Puller::new(client_with(hosts, Arc::new(identity)), store3)
        .pull(&reference, &amd64(), None)
        .await
        .unwrap();
    let last = tokens.seen().last().cloned().unwrap();
    assert_eq!(
        (last.method.as_str(), last.grant_type.as_str()),
        ("POST", "refresh_token")
    );
    assert!(last.granted);
}

#[tokio::test]
async fn a_registry_killed_mid_pull_leaves_no_partial_blob() {
    let Some(reg) = Registry::start("killed_mid_pull") else {
        return;
    };
    let client = anonymous();
    let big = Layer {
        blob: noise(48 << 20, 11),
        diff_id: bk_image::Digest::sha256_of(b"unchecked"),
    };
    let image = build_image(vec![big], amd64());
    let reference = reg.reference("doomed:v1");
    push_image(&client, &reference, &image).await;
    let big_digest = image.manifest.layers[0].digest.clone();

    let (_dir, store) = new_store().await;
    let killer = reg.killer();
    let target = big_digest.clone();
    let progress: bk_image::ProgressFn = Arc::new(move |p: &BlobProgress| {
        if p.digest == target && p.state == BlobState::Downloading && p.current > 0 {
            killer.kill();
        }
    });
    let start = Instant::now();
    let err = Puller::new(client, store.clone())
        .pull(&reference, &amd64(), Some(progress))
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("killed mid-pull: {msg}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(msg.contains(big_digest.as_str()), "{msg}");
    assert!(msg.contains(&reg.host()), "{msg}");
    assert!(!store.exists(&big_digest).await.unwrap());
    assert_no_ingest(&store).await;
}

#[tokio::test]
async fn a_registry_killed_mid_push_gives_a_clear_error() {
    let Some(reg) = Registry::start("killed_mid_push") else {
        return;
    };
    let client = anonymous();
    let blob = Bytes::from(noise(96 << 20, 12));
    let desc = Descriptor::new(
        media_types::OCI_LAYER_GZIP,
        bk_image::Digest::sha256_of(&blob),
        blob.len() as u64,
    );
    let reference = reg.reference("doomed-push:v1");

    // Kill the registry once the upload has bytes on its disk.
    let uploads = reg.dir.path().join("data");
    let killer = reg.killer();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if upload_bytes(&uploads) > 0 {
                killer.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let start = Instant::now();
    let err = client
        .push_blob(&reference, &desc, &PushSource::Bytes(blob), None)
        .await
        .unwrap_err();
    assert!(watcher.join().unwrap(), "the upload never reached the disk");
    let msg = err.to_string();
    eprintln!("killed mid-push: {msg}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(msg.contains(&reg.host()), "{msg}");
    assert!(msg.contains(desc.digest.encoded()), "{msg}");
}

/// Bytes under `dir` in files named `data` of an `_uploads` directory.
fn upload_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            total += upload_bytes(&path);
        } else if e.file_name() == "data" && path.components().any(|c| c.as_os_str() == "_uploads")
        {
            total += meta.len();
        }
    }
    total
}

/// Pull throughput from the local registry; prints figures, asserts none.
/// `cargo test -p bk-image --release --test registry -- --ignored --nocapture bench`
#[tokio::test]
#[ignore]
async fn bench_pull_throughput() {
    let Some(reg) = Registry::start("bench_pull_throughput") else {
        return;
    };
    let mb: usize = std::env::var("BENCH_LAYER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let client = anonymous();
    let big = Layer {
        blob: noise(mb << 20, 5),
        diff_id: bk_image::Digest::sha256_of(b"unchecked"),
    };
    let image = build_image(vec![big], amd64());
    let reference = reg.reference("bench:v1");
    let t = Instant::now();
    push_image(&client, &reference, &image).await;
    let push = t.elapsed();
    drop(image);
    for run in 1..=3 {
        let (_dir, store) = new_store().await;
        let t = Instant::now();
        Puller::new(client.clone(), store)
            .pull(&reference, &amd64(), None)
            .await
            .unwrap();
        let pull = t.elapsed();
        println!(
            "run {run}: pull {mb} MiB layer: {:.2} s, {:.0} MiB/s",
            pull.as_secs_f64(),
            mb as f64 / pull.as_secs_f64()
        );
    }
    println!(
        "push {mb} MiB layer: {:.2} s, {:.0} MiB/s",
        push.as_secs_f64(),
        mb as f64 / push.as_secs_f64()
    );
    // For scale: skopeo copying the same image to an OCI layout.
    if have("skopeo") {
        for run in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let t = Instant::now();
            let out = Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{}/bench:v1", reg.host()))
                .arg(format!("oci:{}:v1", dir.path().join("oci").display()))
                .output()
                .unwrap();
            let took = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!(
                "run {run}: skopeo copy (same image): {:.2} s, {:.0} MiB/s",
                took.as_secs_f64(),
                mb as f64 / took.as_secs_f64()
            );
        }
    }
}
