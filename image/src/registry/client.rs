//! [`RegistryClient`]: resolve, fetch and push against the endpoints
//! [`RegistryHosts`] gives for a reference's registry, as containerd's
//! `remotes/docker` resolver, fetcher and pusher do.
//!
//! Every request goes through `RegistryClient::send`, which owns the
//! rules that apply to all of them:
//! - the `Authorization` header from the [`Authorizer`] (only to the
//!   registry host itself, never to a host a redirect or upload location
//!   points elsewhere), and one more try after a 401 challenge;
//! - retries with exponential back-off on connection errors, 408, 429 and
//!   5xx, at most [`RetryPolicy::attempts`] in all; never on other 4xx;
//! - HEAD on `/manifests/` answered 405 is sent again as GET (registries
//!   that do not implement HEAD);
//! - redirects of GET and HEAD followed (at most 10), as Go's client does;
//! - BuildKit's https→http fallback for insecure loopback registries.
//!
//! Pulls try the endpoints in order (mirrors first) and report the most
//! relevant failure if all fail; pushes use the first endpoint that may
//! push.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, USER_AGENT,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::RegistryError;
use super::auth::{
    Authorizer, CredentialsProvider, encode, excerpt, parse_challenges, read_limited,
};
use super::hosts::{Capabilities, RegistryHost, RegistryHosts};
use super::http::{FailureKind, ReqBody, SendError};
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::media_types;
use crate::reference::Reference;
use crate::types::Descriptor;

/// containerd's `MaxManifestSize` (4 × 1048 × 1048 bytes, as written
/// there): a larger manifest is refused at resolve and fetch.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1048 * 1048;

/// The manifest types a resolve accepts, in containerd's order.
const RESOLVE_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";

const MAX_REDIRECTS: usize = 10;

/// How often and how patiently a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What a tag or digest resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The reference with the resolved digest added.
    pub reference: Reference,
    /// Media type (from `Content-Type`), digest and size of the manifest or
    /// index.
    pub descriptor: Descriptor,
    /// The endpoint that answered (`host[:port]`).
    pub host: String,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry had it already; nothing was sent.
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted {
        from: String,
    },
    Uploaded,
}

/// Content to push, re-readable so a retried request can send it again.
#[derive(Clone, Debug)]
pub enum PushSource {
    Bytes(Bytes),
    File(PathBuf),
    /// The blob of that digest in a content store.
    Store(ContentStore),
}

impl PushSource {
    async fn body(&self, digest: &Digest) -> io::Result<ReqBody> {
        let file = match self {
            PushSource::Bytes(b) => {
                return Ok(Full::new(b.clone()).map_err(|never| match never {}).boxed());
            }
            PushSource::File(path) => tokio::fs::File::open(path).await?,
            PushSource::Store(store) => store
                .open_blob(digest)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?,
        };
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(Frame::data);
        Ok(StreamBody::new(stream).boxed())
    }
}

/// A blob or manifest being downloaded: read it with
/// [`BlobStream::next_chunk`].
pub struct BlobStream {
    body: Incoming,
    url: String,
    digest: Digest,
    offset: u64,
    received: u64,
    content_length: Option<u64>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("url", &self.url)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// Where the content starts: the offset asked for, or 0 when the
    /// registry ignored the range and sends everything.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the response says it carries, when it says.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The next piece of the body; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        self.received += data.len() as u64;
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => {
                    return Err(RegistryError::Interrupted {
                        url: self.url.clone(),
                        digest: self.digest.clone(),
                        received: self.received,
                        message: super::http::error_chain(&e),
                    });
                }
            }
        }
    }
}

/// The registry client. Cheap to clone: clones share hosts, connection
/// pools and the token cache.
#[derive(Clone)]
pub struct RegistryClient {
    hosts: RegistryHosts,
    auth: Arc<Authorizer>,
    user_agent: Arc<str>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("hosts", &self.hosts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// One request, re-sendable.
struct Call<'a> {
    host: &'a RegistryHost,
    repository: &'a str,
    method: Method,
    /// Path and query on the host (`/v2/<name>/manifests/<tag>`).
    path: String,
    /// Or a full URL (an upload location), used instead of `path`.
    url: Option<String>,
    headers: Vec<(http::HeaderName, String)>,
    body: Option<(&'a PushSource, &'a Digest)>,
    scopes: Vec<String>,
}

impl Call<'_> {
    fn url(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("{}://{}{}", self.host.scheme(), self.host.host, self.path),
        }
    }
}

/// A request that got no response, or could not be made.
enum Failure {
    Send(SendError),
    Fatal(RegistryError),
}

impl RegistryClient {
    /// A client over `hosts` that asks `credentials` when a registry wants
    /// them.
    pub fn new(hosts: RegistryHosts, credentials: Arc<dyn CredentialsProvider>) -> RegistryClient {
        let user_agent: Arc<str> = Arc::from(format!("buildkit-rs/{}", env!("CARGO_PKG_VERSION")));
        RegistryClient {
            auth: Arc::new(Authorizer::new(credentials, &user_agent)),
            hosts,
            user_agent,
            retry: RetryPolicy::default(),
        }
    }

    /// The `User-Agent` sent to registries and token servers.
    pub fn with_user_agent(mut self, user_agent: &str) -> RegistryClient {
        self.user_agent = Arc::from(user_agent);
        self.auth = Arc::new(Authorizer::new(self.auth.credentials(), user_agent));
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> RegistryClient {
        self.retry = retry;
        self
    }

    pub fn hosts(&self) -> &RegistryHosts {
        &self.hosts
    }

    /// The same client (credentials, retries) over other hosts: a push
    /// with `registry.insecure` uses its own settings for one registry.
    pub fn with_hosts(&self, hosts: RegistryHosts) -> RegistryClient {
        RegistryClient {
            hosts,
            ..self.clone()
        }
    }

    fn endpoints(
        &self,
        domain: &str,
        caps: Capabilities,
        operation: &'static str,
    ) -> Result<Vec<RegistryHost>, RegistryError> {
        let hosts: Vec<RegistryHost> = self
            .hosts
            .hosts(domain)
            .iter()
            .filter(|h| h.capabilities.has(caps))
            .cloned()
            .collect();
        if hosts.is_empty() {
            return Err(RegistryError::NoHosts {
                operation,
                domain: domain.to_owned(),
            });
        }
        Ok(hosts)
    }

    /// Resolves a tag or digest reference to the descriptor of its
    /// manifest or index: HEAD, then GET when the registry does not give
    /// the digest and size (containerd's `Resolve`).
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, RegistryError> {
        let domain = reference.domain();
        let repository = reference.path();
        let (object, digest) = match (reference.digest(), reference.tag()) {
            (Some(d), _) => (d.to_string(), Some(d.clone())),
            (None, Some(t)) => (t.to_owned(), None),
            (None, None) => return Err(RegistryError::NoObject(reference.to_string())),
        };
        let caps = if digest.is_some() {
            Capabilities::PULL
        } else {
            Capabilities::PULL.union(Capabilities::RESOLVE)
        };
        let hosts = self.endpoints(domain, caps, "resolve")?;
        let mut kinds = vec!["manifests"];
        if digest.is_some() {
            // A digest may name a blob that is an index or manifest pushed
            // as a blob (containerd falls back to /blobs/).
            kinds.push("blobs");
        }
        let scopes = vec![pull_scope(repository)];
        let mut first_err: Option<(u8, RegistryError)> = None;
        let mut keep = |priority: u8, e: RegistryError| {
            if first_err.as_ref().is_none_or(|(p, _)| *p < priority) {
                first_err = Some((priority, e));
            }
        };
        for kind in kinds {
            for host in &hosts {
                let call = Call {
                    host,
                    repository,
                    method: Method::HEAD,
                    path: api_path(host, domain, repository, &format!("{kind}/{object}")),
                    url: None,
                    headers: vec![(ACCEPT, RESOLVE_ACCEPT.to_owned())],
                    body: None,
                    scopes: scopes.clone(),
                };
                let resp = match self.send(&call).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::info!(host = %host.host, error = %e, "resolve failed; trying next host");
                        keep(1, e);
                        continue;
                    }
                };
                let status = resp.status();
                if status == StatusCode::NOT_FOUND {
                    keep(
                        2,
                        RegistryError::NotFound {
                            object: reference.to_string(),
                        },
                    );
                    continue;
                }
                if status == StatusCode::UNAUTHORIZED {
                    keep(3, unauthorized("pull", host, repository, resp).await);
                    continue;
                }
                if status.as_u16() > 399 {
                    keep(3, status_error(&call, resp).await);
                    continue;
                }
                if status.as_u16() > 299 {
                    return Err(status_error(&call, resp).await);
                }
                let mut media_type = manifest_media_type(resp.headers());
                let mut size = header_u64(resp.headers(), CONTENT_LENGTH);
                let mut dgst = digest.clone();
                let header = match dgst {
                    None => resp.headers().get("Docker-Content-Digest"),
                    Some(_) => None,
                };
                if let Some(h) = header {
                    let text = h.to_str().unwrap_or_default();
                    let parsed =
                        Digest::parse(text).map_err(|_| RegistryError::BadDigestHeader {
                            object: reference.to_string(),
                            header: text.to_owned(),
                        })?;
                    if size.is_some() {
                        dgst = Some(parsed);
                    }
                }
                // A HEAD that got here as a GET (405 fallback) has a body
                // we do not need.
                drop(resp);
                if dgst.is_none() || size.is_none() {
                    let call = Call {
                        method: Method::GET,
                        ..call
                    };
                    let resp = self.send(&call).await?;
                    if !resp.status().is_success() {
                        return Err(status_error(&call, resp).await);
                    }
                    media_type = manifest_media_type(resp.headers());
                    check_schema1(reference, &media_type)?;
                    let body = read_limited(resp.into_body(), (MAX_MANIFEST_SIZE + 1) as usize)
                        .await
                        .map_err(|message| RegistryError::Request {
                            method: "GET".into(),
                            url: call.url(),
                            message,
                        })?;
                    let actual = Digest::sha256_of(&body);
                    match &dgst {
                        Some(expected)
                            if *expected != actual && body.len() as u64 <= MAX_MANIFEST_SIZE =>
                        {
                            return Err(RegistryError::DigestMismatch {
                                host: host.host.clone(),
                                repository: repository.to_owned(),
                                expected: expected.clone(),
                                actual,
                            });
                        }
                        _ => {}
                    }
                    size = Some(body.len() as u64);
                    dgst = Some(dgst.unwrap_or(actual));
                }
                let (Some(dgst), Some(size)) = (dgst, size) else {
                    continue;
                };
                if size > MAX_MANIFEST_SIZE {
                    keep(
                        4,
                        RegistryError::ManifestTooLarge {
                            object: reference.to_string(),
                            size,
                            limit: MAX_MANIFEST_SIZE,
                        },
                    );
                    continue;
                }
                check_schema1(reference, &media_type)?;
                tracing::debug!(host = %host.host, reference = %reference, digest = %dgst, "resolved");
                return Ok(Resolved {
                    reference: reference.with_digest(dgst.clone()),
                    descriptor: Descriptor::new(&media_type, dgst, size),
                    host: host.host.clone(),
                });
            }
        }
        Err(first_err.map_or_else(
            || RegistryError::NotFound {
                object: reference.to_string(),
            },
            |(_, e)| e,
        ))
    }

    /// Starts downloading `desc` from `reference`'s repository (manifests
    /// and indexes from `/manifests/`, everything else from `/blobs/`),
    /// trying each pull endpoint in turn. With `offset`, asks for the rest
    /// of the content from there (see [`BlobStream::offset`]).
    pub async fn fetch(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let domain = reference.domain();
        let repository = reference.path();
        let hosts = self.endpoints(domain, Capabilities::PULL, "pull")?;
        let kind = if media_types::is_manifest_type(&desc.media_type)
            || media_types::is_index_type(&desc.media_type)
        {
            "manifests"
        } else {
            "blobs"
        };
        let accept = if desc.media_type.is_empty() {
            "*/*".to_owned()
        } else {
            format!("{}, */*", desc.media_type)
        };
        let mut first_err: Option<RegistryError> = None;
        for host in &hosts {
            let mut headers = vec![(ACCEPT, accept.clone())];
            if offset > 0 {
                headers.push((RANGE, format!("bytes={offset}-")));
            }
            let call = Call {
                host,
                repository,
                method: Method::GET,
                path: api_path(host, domain, repository, &format!("{kind}/{}", desc.digest)),
                url: None,
                headers,
                body: None,
                scopes: vec![pull_scope(repository)],
            };
            let resp = match self.send(&call).await {
                Ok(r) => r,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                let mut start = 0;
                if offset > 0 && status == StatusCode::PARTIAL_CONTENT {
                    let range = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if !range.starts_with(&format!("bytes {offset}-")) {
                        return Err(RegistryError::Status {
                            method: "GET".into(),
                            url: call.url(),
                            status: status.to_string(),
                            message: format!(": unhandled content range {range:?}"),
                        });
                    }
                    start = offset;
                }
                let content_length = header_u64(resp.headers(), CONTENT_LENGTH);
                return Ok(BlobStream {
                    body: resp.into_body(),
                    url: call.url(),
                    digest: desc.digest.clone(),
                    offset: start,
                    received: 0,
                    content_length,
                });
            }
            let err = match status {
                StatusCode::NOT_FOUND => RegistryError::NotFound {
                    object: format!(
                        "content {} ({}) in {}/{}",
                        desc.digest, desc.media_type, host.host, repository
                    ),
                },
                StatusCode::UNAUTHORIZED => unauthorized("pull", host, repository, resp).await,
                _ => status_error(&call, resp).await,
            };
            first_err.get_or_insert(err);
        }
        Err(first_err.unwrap_or_else(|| RegistryError::NotFound {
            object: format!("content {} in {}/{}", desc.digest, domain, repository),
        }))
    }

    /// Fetches a whole manifest, index or config into memory (at most
    /// `limit` bytes), verifying its digest.
    pub async fn fetch_bytes(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > limit {
            return Err(RegistryError::ManifestTooLarge {
                object: format!("{}@{}", reference.name(), desc.digest),
                size: desc.size,
                limit,
            });
        }
        let mut stream = self.fetch(reference, desc, 0).await?;
        let mut out = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        while let Some(chunk) = stream.next_chunk().await? {
            if (out.len() + chunk.len()) as u64 > desc.size {
                return Err(RegistryError::DigestMismatch {
                    host: reference.domain().to_owned(),
                    repository: reference.path().to_owned(),
                    expected: desc.digest.clone(),
                    actual: Digest::sha256_of(&out),
                });
            }
            out.extend_from_slice(&chunk);
        }
        let actual = Digest::of(desc.digest.algorithm(), &out);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                host: reference.domain().to_owned(),
                repository: reference.path().to_owned(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(out)
    }

    /// Whether the repository has the blob.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let domain = reference.domain();
        let repository = reference.path();
        let hosts = self.endpoints(domain, Capabilities::PUSH, "push")?;
        let host = &hosts[0];
        let call = Call {
            host,
            repository,
            method: Method::HEAD,
            path: api_path(host, domain, repository, &format!("blobs/{digest}")),
            url: None,
            headers: Vec::new(),
            body: None,
            scopes: vec![push_scope(repository)],
        };
        let resp = self.send(&call).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::UNAUTHORIZED => Err(unauthorized("push", host, repository, resp).await),
            _ => Err(status_error(&call, resp).await),
        }
    }

    /// Pushes a blob to `reference`'s repository: nothing when it is there
    /// already; a cross-repository mount when `mount_from` (another
    /// repository of the same registry) has it; else a monolithic upload
    /// (POST for a location, then one PUT with `?digest=`).
    pub async fn push_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        source: &PushSource,
        mount_from: Option<&str>,
    ) -> Result<PushOutcome, RegistryError> {
        let domain = reference.domain();
        let repository = reference.path();
        let hosts = self.endpoints(domain, Capabilities::PUSH, "push")?;
        let host = &hosts[0];
        if let PushSource::Bytes(b) = source {
            check_bytes(host, repository, desc, b)?;
        }
        let scopes = vec![push_scope(repository)];
        let head = Call {
            host,
            repository,
            method: Method::HEAD,
            path: api_path(host, domain, repository, &format!("blobs/{}", desc.digest)),
            url: None,
            headers: Vec::new(),
            body: None,
            scopes: scopes.clone(),
        };
        let resp = self.send(&head).await?;
        match resp.status() {
            StatusCode::OK => return Ok(PushOutcome::Exists),
            StatusCode::NOT_FOUND => {}
            // As containerd: a refused existence check does not stop the
            // push, which gives the definitive answer.
            StatusCode::UNAUTHORIZED => {
                tracing::debug!(host = %host.host, repository, "existence check unauthorized; pushing")
            }
            _ => return Err(status_error(&head, resp).await),
        }

        let uploads = api_path(host, domain, repository, "blobs/uploads/");
        let mut started = None;
        if let Some(from) = mount_from.filter(|f| *f != repository) {
            let sep = if uploads.contains('?') { '&' } else { '?' };
            let call = Call {
                host,
                repository,
                method: Method::POST,
                path: format!(
                    "{uploads}{sep}mount={}&from={}",
                    encode(desc.digest.as_str()),
                    encode(from)
                ),
                url: None,
                headers: vec![(CONTENT_LENGTH, "0".to_owned())],
                body: None,
                scopes: vec![push_scope(repository), pull_scope(from)],
            };
            let resp = self.send(&call).await?;
            match resp.status() {
                StatusCode::CREATED => {
                    return Ok(PushOutcome::Mounted {
                        from: from.to_owned(),
                    });
                }
                // Not mountable (e.g. a private source we cannot read): a
                // plain upload follows.
                StatusCode::UNAUTHORIZED => {
                    tracing::debug!(host = %host.host, from, "mount not authorized; uploading");
                }
                // The registry started an upload instead: use it.
                StatusCode::ACCEPTED => started = Some(resp),
                _ => return Err(status_error(&call, resp).await),
            }
        }
        let resp = match started {
            Some(r) => r,
            None => {
                let call = Call {
                    host,
                    repository,
                    method: Method::POST,
                    path: uploads.clone(),
                    url: None,
                    headers: vec![(CONTENT_LENGTH, "0".to_owned())],
                    body: None,
                    scopes: scopes.clone(),
                };
                let resp = self.send(&call).await?;
                match resp.status() {
                    StatusCode::OK | StatusCode::ACCEPTED | StatusCode::NO_CONTENT => resp,
                    StatusCode::CREATED => return Ok(PushOutcome::Exists),
                    StatusCode::UNAUTHORIZED => {
                        return Err(unauthorized("push", host, repository, resp).await);
                    }
                    _ => return Err(status_error(&call, resp).await),
                }
            }
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::Upload {
                host: host.host.clone(),
                repository: repository.to_owned(),
                digest: desc.digest.clone(),
                message: "registry gave no upload location".into(),
            })?;
        drop(resp);
        let base = format!("{}://{}{}", host.scheme(), host.host, uploads);
        let mut url = resolve_location(&base, &location).ok_or_else(|| RegistryError::Upload {
            host: host.host.clone(),
            repository: repository.to_owned(),
            digest: desc.digest.clone(),
            message: format!("unusable upload location {location:?}"),
        })?;
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", encode(desc.digest.as_str())));
        let put = Call {
            host,
            repository,
            method: Method::PUT,
            path: String::new(),
            url: Some(url),
            headers: vec![
                (CONTENT_TYPE, "application/octet-stream".to_owned()),
                (CONTENT_LENGTH, desc.size.to_string()),
            ],
            body: Some((source, &desc.digest)),
            scopes,
        };
        let resp = self.send(&put).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => {
                Ok(PushOutcome::Uploaded)
            }
            StatusCode::UNAUTHORIZED => Err(unauthorized("push", host, repository, resp).await),
            _ => Err(status_error(&put, resp).await),
        }
    }

    /// Pushes a manifest or index under `reference`'s tag (or, without one,
    /// its digest), with `desc.media_type` as `Content-Type`. Nothing is
    /// sent when the registry already has it under that name.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        manifest: Bytes,
    ) -> Result<PushOutcome, RegistryError> {
        let domain = reference.domain();
        let repository = reference.path();
        let hosts = self.endpoints(domain, Capabilities::PUSH, "push")?;
        let host = &hosts[0];
        check_bytes(host, repository, desc, &manifest)?;
        // containerd's getManifestPath: the tag, unless the reference names
        // another digest.
        let object = match (reference.tag(), reference.digest()) {
            (_, Some(d)) if *d != desc.digest => desc.digest.to_string(),
            (Some(t), _) => t.to_owned(),
            _ => desc.digest.to_string(),
        };
        let by_tag = object != desc.digest.as_str();
        let scopes = vec![push_scope(repository)];
        let path = api_path(host, domain, repository, &format!("manifests/{object}"));
        let head = Call {
            host,
            repository,
            method: Method::HEAD,
            path: path.clone(),
            url: None,
            headers: vec![(ACCEPT, format!("{}, */*", desc.media_type))],
            body: None,
            scopes: scopes.clone(),
        };
        let resp = self.send(&head).await?;
        if resp.status() == StatusCode::OK {
            let same = !by_tag
                || resp
                    .headers()
                    .get("Docker-Content-Digest")
                    .and_then(|v| v.to_str().ok())
                    == Some(desc.digest.as_str());
            if same {
                return Ok(PushOutcome::Exists);
            }
        }
        drop(resp);
        let source = PushSource::Bytes(manifest);
        let put = Call {
            host,
            repository,
            method: Method::PUT,
            path,
            url: None,
            headers: vec![
                (CONTENT_TYPE, desc.media_type.clone()),
                (CONTENT_LENGTH, desc.size.to_string()),
            ],
            body: Some((&source, &desc.digest)),
            scopes,
        };
        let resp = self.send(&put).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => {
                Ok(PushOutcome::Uploaded)
            }
            StatusCode::UNAUTHORIZED => Err(unauthorized("push", host, repository, resp).await),
            _ => Err(status_error(&put, resp).await),
        }
    }

    /// Sends `call` with auth, retries, redirects and fallback (see the
    /// module docs). Returns the final response whatever its status.
    async fn send(&self, call: &Call<'_>) -> Result<Response<Incoming>, RegistryError> {
        let mut method = call.method.clone();
        let mut attempt = 1u32;
        let mut challenged = false;
        loop {
            let url = call.url();
            match self.send_once(call, &method, &url).await {
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Send(e)) => {
                    let host = call.host;
                    let fall_back = call.url.is_none()
                        && host.may_fall_back()
                        && (e.kind == FailureKind::NotTls
                            || (e.kind == FailureKind::Refused && !host.has_port()));
                    if fall_back {
                        tracing::debug!(host = %host.host, error = %e.message, "HTTPS failed; falling back to HTTP");
                        host.fall_back();
                        continue;
                    }
                    if attempt < self.retry.attempts {
                        tracing::debug!(%url, attempt, error = %e.message, "request failed; retrying");
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Request {
                        method: method.to_string(),
                        url,
                        message: e.message,
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !challenged {
                        challenged = true;
                        if self
                            .auth
                            .on_unauthorized(&call.host.host, resp.headers())
                            .await
                        {
                            continue;
                        }
                        return Ok(resp);
                    }
                    if status == StatusCode::METHOD_NOT_ALLOWED
                        && method == Method::HEAD
                        && call.path.contains("/manifests/")
                    {
                        method = Method::GET;
                        continue;
                    }
                    let retryable = matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504);
                    if retryable && attempt < self.retry.attempts {
                        tracing::debug!(%url, attempt, %status, "retrying");
                        drop(resp);
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// One attempt, following redirects of GET and HEAD.
    async fn send_once(
        &self,
        call: &Call<'_>,
        method: &Method,
        url: &str,
    ) -> Result<Response<Incoming>, Failure> {
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url.parse().map_err(|e| {
                Failure::Fatal(RegistryError::Request {
                    method: method.to_string(),
                    url: url.clone(),
                    message: format!("invalid URL: {e}"),
                })
            })?;
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(USER_AGENT, &*self.user_agent);
            for (name, value) in &call.headers {
                builder = builder.header(name, value);
            }
            // Credentials go to the registry host only: never to a blob
            // store a redirect points at, nor to an upload location on
            // another host.
            if uri.authority().map(|a| a.as_str()) == Some(call.host.host.as_str()) {
                let auth = self
                    .auth
                    .authorize(&call.host.host, &call.scopes, &call.host.transport)
                    .await
                    .map_err(Failure::Fatal)?;
                if let Some(value) = auth {
                    let mut v = http::HeaderValue::from_str(value.expose()).map_err(|_| {
                        Failure::Fatal(RegistryError::Token {
                            kind: "registry",
                            realm: String::new(),
                            host: call.host.host.clone(),
                            message: "the token is not a valid header value".into(),
                        })
                    })?;
                    v.set_sensitive(true);
                    builder = builder.header(AUTHORIZATION, v);
                }
            }
            let body = match call.body {
                Some((source, digest)) => source.body(digest).await.map_err(|source| {
                    Failure::Fatal(RegistryError::Source {
                        host: call.host.host.clone(),
                        repository: call.repository.to_owned(),
                        digest: digest.clone(),
                        source,
                    })
                })?,
                None => super::auth::empty(),
            };
            let req = builder.body(body).map_err(|e| {
                Failure::Fatal(RegistryError::Request {
                    method: method.to_string(),
                    url: url.clone(),
                    message: format!("invalid request: {e}"),
                })
            })?;
            let resp = call.host.transport.send(req).await.map_err(Failure::Send)?;
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308)
                && (*method == Method::GET || *method == Method::HEAD);
            if !redirect {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| resolve_location(&url, l))
            else {
                return Ok(resp);
            };
            tracing::debug!(from = %url, to = %next, "following redirect");
            url = next;
        }
        Err(Failure::Fatal(RegistryError::Request {
            method: method.to_string(),
            url,
            message: format!("stopped after {MAX_REDIRECTS} redirects"),
        }))
    }
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// `/v2/<name>/<rest>`, with `?ns=<domain>` on a mirror (containerd's
/// `addNamespace`).
fn api_path(host: &RegistryHost, domain: &str, repository: &str, rest: &str) -> String {
    let mut p = format!(
        "{}/{}/{}",
        host.path.trim_end_matches('/'),
        repository,
        rest
    );
    if host.is_proxy_for(domain) {
        p.push_str(&format!("?ns={}", encode(domain)));
    }
    p
}

/// An absolute URL for a `Location` header relative to `base`.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_owned());
    }
    let (scheme, rest) = base.split_once("://")?;
    let authority = rest.split('/').next()?;
    if let Some(auth_relative) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{auth_relative}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    // Relative to the base's directory.
    let path = rest[authority.len()..].split('?').next().unwrap_or("/");
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

/// containerd's `getManifestMediaType`: parameters dropped, `text/plain`
/// read as schema 1 (old registries).
fn manifest_media_type(headers: &HeaderMap) -> String {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ct = ct.split(';').next().unwrap_or_default().trim();
    if ct == "text/plain" {
        media_types::DOCKER_SCHEMA1_MANIFEST.to_owned()
    } else {
        ct.to_owned()
    }
}

fn check_schema1(reference: &Reference, media_type: &str) -> Result<(), RegistryError> {
    if media_type == media_types::DOCKER_SCHEMA1_MANIFEST {
        return Err(RegistryError::Schema1 {
            object: reference.to_string(),
            media_type: media_type.to_owned(),
        });
    }
    Ok(())
}

fn header_u64(headers: &HeaderMap, name: http::HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn check_bytes(
    host: &RegistryHost,
    repository: &str,
    desc: &Descriptor,
    data: &[u8],
) -> Result<(), RegistryError> {
    let actual = Digest::of(desc.digest.algorithm(), data);
    if actual != desc.digest || data.len() as u64 != desc.size {
        return Err(RegistryError::DigestMismatch {
            host: host.host.clone(),
            repository: repository.to_owned(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The registry's error text (`{"errors":[{"code","message"}]}`), or an
/// excerpt of whatever it sent.
async fn error_message(resp: Response<Incoming>) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(body) = read_limited(resp.into_body(), 4096).await else {
        return String::new();
    };
    if let Ok(parsed) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => {
                    format!("{}: {}", e.code.to_lowercase().replace('_', " "), e.message)
                }
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        if !parts.is_empty() {
            return format!(": {}", excerpt(&parts.join("; ")));
        }
    }
    let text = excerpt(&String::from_utf8_lossy(&body));
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

async fn status_error(call: &Call<'_>, resp: Response<Incoming>) -> RegistryError {
    let status = resp.status().to_string();
    let message = error_message(resp).await;
    RegistryError::Status {
        method: call.method.to_string(),
        url: call.url(),
        status,
        message,
    }
}

/// A final 401: the challenge's `error`, or the registry's error text.
async fn unauthorized(
    action: &'static str,
    host: &RegistryHost,
    repository: &str,
    resp: Response<Incoming>,
) -> RegistryError {
    let challenge_error = parse_challenges(resp.headers())
        .into_iter()
        .find_map(|c| c.params.get("error").cloned());
    let body = error_message(resp).await;
    let message = match challenge_error {
        Some(e) => format!("authorization failed: server message: {e}"),
        None if body.is_empty() => "authorization failed".to_owned(),
        None => format!("authorization failed{body}"),
    };
    RegistryError::Unauthorized {
        action,
        host: host.host.clone(),
        repository: repository.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_like_url_parse() {
        let base = "http://127.0.0.1:5000/v2/busybox/blobs/uploads/";
        assert_eq!(
            resolve_location(base, "/v2/busybox/blobs/uploads/abc?_state=x").unwrap(),
            "http://127.0.0.1:5000/v2/busybox/blobs/uploads/abc?_state=x"
        );
        assert_eq!(
            resolve_location(base, "https://s3.example/bucket?sig=1").unwrap(),
            "https://s3.example/bucket?sig=1"
        );
        assert_eq!(
            resolve_location(base, "//cdn.example/x").unwrap(),
            "http://cdn.example/x"
        );
        assert_eq!(
            resolve_location(base, "abc").unwrap(),
            "http://127.0.0.1:5000/v2/busybox/blobs/uploads/abc"
        );
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(30), Duration::from_secs(2));
    }

    #[test]
    fn media_type_from_content_type() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(manifest_media_type(&h), media_types::OCI_INDEX);
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            manifest_media_type(&h),
            media_types::DOCKER_SCHEMA1_MANIFEST
        );
    }
}
