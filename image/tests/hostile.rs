//! The registry client against registries that misbehave: a tiny HTTP
//! server on loopback plays a registry that sends wrong bytes, fails
//! transiently or for good, redirects, or speaks schema 1. What is tested
//! is our verification and retry rules, which a well-behaved registry
//! never exercises.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bk_image::content::ContentStore;
use bk_image::digest::Digest;
use bk_image::media_types;
use bk_image::registry::{
    AnonymousCredentials, Credentials, RegistryClient, RegistryError, RegistryHosts, RetryPolicy,
    StaticCredentials,
};
use bk_image::types::{Descriptor, Platform};
use bk_image::{PullError, Puller, Reference};
use bytes::Bytes;
use support::{Handler, TestServer, build_image, layer, respond};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn anonymous() -> RegistryClient {
    RegistryClient::new(
        RegistryHosts::defaults().unwrap(),
        Arc::new(AnonymousCredentials),
    )
    .with_retry(fast_retry())
}

async fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content"))
        .await
        .unwrap();
    (dir, store)
}

/// Waits (briefly) for the store's ingest directory to empty: a dropped
/// writer removes its file on a blocking thread.
async fn assert_no_ingest(store: &ContentStore) {
    let dir = store.root().join("ingest");
    for _ in 0..100 {
        if std::fs::read_dir(&dir).unwrap().next().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "ingest files left: {:?}",
        std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
    );
}

/// A registry serving fixed paths; `overrides` replace the body served
/// for a path. Counts requests per "METHOD path".
struct FakeRegistry {
    server: TestServer,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl FakeRegistry {
    async fn start(routes: HashMap<String, (String, Vec<u8>)>) -> FakeRegistry {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let seen = hits.clone();
        let handler: Handler = Arc::new(move |req, _body| {
            let path = req.uri().path().to_owned();
            *seen
                .lock()
                .unwrap()
                .entry(format!("{} {path}", req.method()))
                .or_default() += 1;
            match routes.get(&path) {
                Some((ct, body)) => {
                    let digest = Digest::sha256_of(body).to_string();
                    let len = body.len().to_string();
                    let body = if req.method() == "HEAD" {
                        Vec::new()
                    } else {
                        body.clone()
                    };
                    let mut r = respond(
                        200,
                        &[
                            ("Content-Type", ct.clone()),
                            ("Docker-Content-Digest", digest),
                        ],
                        body,
                    );
                    r.headers_mut()
                        .insert("Content-Length", len.parse().unwrap());
                    r
                }
                None => respond(
                    404,
                    &[("Content-Type", "application/json".into())],
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
                ),
            }
        });
        FakeRegistry {
            server: TestServer::start(handler).await,
            hits,
        }
    }

    fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn a_blob_with_wrong_bytes_is_refused_and_leaves_nothing() {
    let good = layer(&[("hello", b"the real content")], &[], &[]);
    let image = build_image(vec![good], Platform::new("linux", "amd64"));
    let layer_desc = image.manifest.layers[0].clone();
    // Same length, different bytes: only the digest check can catch it.
    let mut evil = image.layers[0].blob.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;

    let mut routes = HashMap::new();
    routes.insert(
        "/v2/app/manifests/latest".to_owned(),
        (
            media_types::OCI_MANIFEST.to_owned(),
            image.manifest_bytes.clone(),
        ),
    );
    routes.insert(
        format!("/v2/app/manifests/{}", image.manifest_desc.digest),
        (
            media_types::OCI_MANIFEST.to_owned(),
            image.manifest_bytes.clone(),
        ),
    );
    routes.insert(
        format!("/v2/app/blobs/{}", image.config_desc.digest),
        (
            "application/octet-stream".to_owned(),
            image.config_bytes.clone(),
        ),
    );
    routes.insert(
        format!("/v2/app/blobs/{}", layer_desc.digest),
        ("application/octet-stream".to_owned(), evil),
    );
    let reg = FakeRegistry::start(routes).await;
    let reference =
        Reference::parse_normalized_named(&format!("{}/app:latest", reg.server.host())).unwrap();

    let (_dir, store) = store().await;
    let puller = Puller::new(anonymous(), store.clone());
    let err = puller
        .pull(&reference, &Platform::new("linux", "amd64"), None)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Content { .. }), "{msg}");
    assert!(msg.contains("unexpected commit digest"), "{msg}");
    assert!(
        msg.contains(&format!("expected {}", layer_desc.digest)),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}/app", reg.server.host())), "{msg}");
    // The manifest and config verified and are stored; the bad layer is not.
    assert!(!store.exists(&layer_desc.digest).await.unwrap());
    assert!(store.exists(&image.config_desc.digest).await.unwrap());
    assert_no_ingest(&store).await;
    // A digest mismatch is not a transient failure: one download only.
    assert_eq!(
        reg.hits(&format!("GET /v2/app/blobs/{}", layer_desc.digest)),
        1
    );
}

#[tokio::test]
async fn a_blob_longer_than_its_descriptor_is_refused() {
    let data = b"just these bytes".to_vec();
    let desc = Descriptor::new(
        media_types::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    let mut longer = data.clone();
    longer.extend_from_slice(b" and more");
    let mut routes = HashMap::new();
    routes.insert(
        format!("/v2/app/blobs/{}", desc.digest),
        ("application/octet-stream".to_owned(), longer),
    );
    let reg = FakeRegistry::start(routes).await;
    let reference =
        Reference::parse_normalized_named(&format!("{}/app", reg.server.host())).unwrap();
    let (_dir, store) = store().await;
    let puller = Puller::new(anonymous(), store.clone());
    let lease = store.lease();
    let err = puller
        .fetch_blob(&reference, &desc, &lease, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("content exceeds expected size"), "{err}");
    assert!(!store.exists(&desc.digest).await.unwrap());
    assert_no_ingest(&store).await;
}

/// Answers `status` to the first `failures` requests, then serves `body`.
async fn flaky(status: u16, failures: usize, body: Vec<u8>) -> (TestServer, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let handler: Handler = Arc::new(move |_req, _body| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        if n < failures {
            respond(status, &[("Retry-After", "0".into())], "try again")
        } else {
            respond(200, &[], body.clone())
        }
    });
    (TestServer::start(handler).await, count)
}

fn blob_desc(data: &[u8]) -> Descriptor {
    Descriptor::new(
        "application/octet-stream",
        Digest::sha256_of(data),
        data.len() as u64,
    )
}

#[tokio::test]
async fn transient_failures_are_retried_a_bounded_number_of_times() {
    let data = b"config".to_vec();
    let desc = blob_desc(&data);
    let client = anonymous();

    for status in [500u16, 502, 503, 504, 429, 408] {
        let (server, count) = flaky(status, 2, data.clone()).await;
        let r = Reference::parse_normalized_named(&format!("{}/app", server.host())).unwrap();
        let got = client.fetch_bytes(&r, &desc, 1 << 20).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(count.load(Ordering::SeqCst), 3, "status {status}");
    }

    // Three failures exhaust the three attempts.
    let (server, count) = flaky(503, 3, data.clone()).await;
    let r = Reference::parse_normalized_named(&format!("{}/app", server.host())).unwrap();
    let err = client.fetch_bytes(&r, &desc, 1 << 20).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let msg = err.to_string();
    assert!(msg.contains("503 Service Unavailable"), "{msg}");
    assert!(
        msg.contains(&format!("{}/v2/app/blobs/{}", server.host(), desc.digest)),
        "{msg}"
    );
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let data = b"config".to_vec();
    let desc = blob_desc(&data);
    let client = anonymous();
    for status in [400u16, 403, 404] {
        let (server, count) = flaky(status, 10, data.clone()).await;
        let r = Reference::parse_normalized_named(&format!("{}/app", server.host())).unwrap();
        let err = client.fetch_bytes(&r, &desc, 1 << 20).await.unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 1, "status {status}");
        if status == 404 {
            assert!(err.is_not_found(), "{err}");
            assert!(err.to_string().contains(desc.digest.as_str()), "{err}");
        }
    }
}

#[tokio::test]
async fn connection_refused_fails_after_retries_naming_the_url() {
    let port = support::free_port();
    let r = Reference::parse_normalized_named(&format!("127.0.0.1:{port}/app:v1")).unwrap();
    let start = std::time::Instant::now();
    let err = anonymous().resolve(&r).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Request { .. }), "{msg}");
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/v2/app/manifests/v1")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    // Two back-offs of 10 and 20 ms, not an unbounded loop.
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn redirects_are_followed_without_credentials() {
    let data = b"layer data behind a redirect".to_vec();
    let desc = blob_desc(&data);

    // The blob store: records whether it was sent an Authorization header.
    let leaked = Arc::new(Mutex::new(Vec::<bool>::new()));
    let l = leaked.clone();
    let body = data.clone();
    let blobs = TestServer::start(Arc::new(move |req, _| {
        l.lock()
            .unwrap()
            .push(req.headers().contains_key("authorization"));
        respond(200, &[], body.clone())
    }))
    .await;

    // The registry: Basic auth required, blobs redirected.
    let target = format!("http://{}/storage/blob?sig=abc", blobs.host());
    let registry = TestServer::start(Arc::new(move |req, _| {
        if !req.headers().contains_key("authorization") {
            return respond(
                401,
                &[("WWW-Authenticate", r#"Basic realm="test""#.into())],
                "",
            );
        }
        respond(307, &[("Location", target.clone())], "")
    }))
    .await;

    let creds =
        StaticCredentials::new().with(registry.host(), Credentials::new("bob", "pw-secret"));
    let client = RegistryClient::new(RegistryHosts::defaults().unwrap(), Arc::new(creds))
        .with_retry(fast_retry());
    let r = Reference::parse_normalized_named(&format!("{}/app", registry.host())).unwrap();
    let got = client.fetch_bytes(&r, &desc, 1 << 20).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(*leaked.lock().unwrap(), vec![false]);
}

#[tokio::test]
async fn resolve_falls_back_to_get_and_digests_the_body() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    let methods = Arc::new(Mutex::new(Vec::<String>::new()));
    let m = methods.clone();
    let body = manifest.clone();
    let server = TestServer::start(Arc::new(move |req, _| {
        m.lock().unwrap().push(req.method().to_string());
        if req.method() == "HEAD" {
            // Registries that do not implement HEAD on manifests.
            return respond(405, &[], "");
        }
        // No Docker-Content-Digest: the digest comes from the body.
        respond(
            200,
            &[(
                "Content-Type",
                format!("{}; charset=utf-8", media_types::OCI_MANIFEST),
            )],
            body.clone(),
        )
    }))
    .await;
    let r = Reference::parse_normalized_named(&format!("{}/app:v1", server.host())).unwrap();
    let resolved = anonymous().resolve(&r).await.unwrap();
    assert_eq!(resolved.descriptor.digest, Digest::sha256_of(&manifest));
    assert_eq!(resolved.descriptor.size, manifest.len() as u64);
    assert_eq!(resolved.descriptor.media_type, media_types::OCI_MANIFEST);
    assert_eq!(
        resolved.reference.digest(),
        Some(&Digest::sha256_of(&manifest))
    );
    assert_eq!(*methods.lock().unwrap(), ["HEAD", "GET", "GET"]);
}

#[tokio::test]
async fn schema1_and_oversized_manifests_are_refused() {
    let server = TestServer::start(Arc::new(|req, _| {
        if req.uri().path().ends_with("/old") {
            return respond(
                200,
                &[
                    ("Content-Type", media_types::DOCKER_SCHEMA1_MANIFEST.into()),
                    ("Docker-Content-Digest", Digest::sha256_of(b"x").to_string()),
                ],
                "x",
            );
        }
        let mut r = respond(
            200,
            &[
                ("Content-Type", media_types::OCI_MANIFEST.into()),
                ("Docker-Content-Digest", Digest::sha256_of(b"y").to_string()),
            ],
            Bytes::new(),
        );
        r.headers_mut()
            .insert("Content-Length", (5u64 << 20).to_string().parse().unwrap());
        r
    }))
    .await;
    let client = anonymous();
    let old = Reference::parse_normalized_named(&format!("{}/app:old", server.host())).unwrap();
    let err = client.resolve(&old).await.unwrap_err().to_string();
    assert!(err.contains("schema 1"), "{err}");
    let big = Reference::parse_normalized_named(&format!("{}/app:big", server.host())).unwrap();
    let err = client.resolve(&big).await.unwrap_err().to_string();
    assert!(err.contains("rejecting 5242880 byte manifest"), "{err}");
}

#[tokio::test]
async fn a_broken_download_resumes_with_a_range_request() {
    let data = support::noise(3 << 20, 21);
    let desc = Descriptor::new(
        media_types::OCI_LAYER_GZIP,
        Digest::sha256_of(&data),
        data.len() as u64,
    );
    // Raw HTTP on a socket: hyper's server will not send a body shorter
    // than its Content-Length, which is the point here.
    let ranges = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let r = ranges.clone();
    let served = data.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if sock.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .map(|v| v.trim().trim_end_matches('-').to_owned());
            r.lock().unwrap().push(range.clone());
            let len = served.len();
            match range {
                None => {
                    // Promise everything, send 2.5 MiB, hang up.
                    let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    sock.write_all(h.as_bytes()).await.unwrap();
                    let _ = sock.write_all(&served[..(5 << 19)]).await;
                }
                Some(start) => {
                    let start: usize = start.parse().unwrap();
                    let h = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
                        len - start,
                        len - 1
                    );
                    sock.write_all(h.as_bytes()).await.unwrap();
                    sock.write_all(&served[start..]).await.unwrap();
                }
            }
            let _ = sock.shutdown().await;
        }
    });
    let server_host = addr.to_string();
    let reference = Reference::parse_normalized_named(&format!("{server_host}/app")).unwrap();
    let (_dir, store) = store().await;
    let lease = store.lease();
    Puller::new(anonymous(), store.clone())
        .fetch_blob(&reference, &desc, &lease, None)
        .await
        .unwrap();
    assert_eq!(store.read_blob(&desc.digest, 8 << 20).await.unwrap(), data);
    let ranges = ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    // Resumed from what had reached the store: more than nothing, no more
    // than was sent.
    let resumed: usize = ranges[1].clone().unwrap().parse().unwrap();
    assert!(resumed > 0 && resumed <= 5 << 19, "{resumed}");
    assert_no_ingest(&store).await;
    task.abort();
}
