//! The registry client: resolve, fetch and push over the Docker Registry
//! HTTP API v2 (the OCI distribution spec), as containerd's `remotes/docker`
//! and BuildKit's `util/resolver` do it.
//!
//! Where to start:
//! - [`RegistryHosts`] (`hosts.rs`) turns `[registry."host"]` settings into
//!   the endpoints to try for a registry: mirrors first (pull and resolve
//!   only), then the registry itself (`docker.io` is served by
//!   `registry-1.docker.io`), each with its scheme and TLS settings.
//!   `localhost`, `127.0.0.1` and `::1` default to plain HTTP.
//! - [`RegistryClient`] (`client.rs`) is what callers use: [`RegistryClient::resolve`]
//!   a tag or digest to a descriptor, [`RegistryClient::fetch`] a blob or
//!   manifest as a stream, [`RegistryClient::push_blob`] and
//!   [`RegistryClient::push_manifest`]. Requests are retried (bounded) on
//!   connection errors, 5xx and 429, never on other 4xx.
//! - [`CredentialsProvider`] (`auth.rs`) is where credentials come from (the
//!   daemon will implement it over the session's Auth service);
//!   the client's `Authorizer` does the Docker token flow on a 401 and
//!   caches tokens per host and scope (one cache per [`RegistryClient`] and
//!   its clones).
//! - `http.rs` is the transport underneath: hyper's pooled HTTP/1.1 client
//!   with a rustls connector per TLS configuration.
//!
//! Secrets (passwords, identity tokens, bearer tokens) never appear in an
//! error message or a log line.

pub mod auth;
mod client;
pub mod hosts;
mod http;
pub mod web;

pub use auth::{AnonymousCredentials, Credentials, CredentialsProvider, Secret, StaticCredentials};
pub use client::{
    BlobStream, MAX_MANIFEST_SIZE, PushOutcome, PushSource, RegistryClient, Resolved, RetryPolicy,
};
pub use hosts::{Capabilities, HostsError, KeyPair, RegistryConfig, RegistryHost, RegistryHosts};

use crate::digest::Digest;

/// A registry operation failed. Every message names the registry host and,
/// where there is one, the repository and the digest or tag.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The hosts configuration could not be applied (CA or key files).
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// No configured endpoint may perform this operation (e.g. a push when
    /// only mirrors are listed).
    #[error("no {operation} hosts for {domain}: not found")]
    NoHosts {
        operation: &'static str,
        domain: String,
    },
    /// The request could not be sent or its response not read, after the
    /// retries allowed.
    #[error("failed to do request: {method} {url}: {message}")]
    Request {
        method: String,
        url: String,
        message: String,
    },
    /// A download broke off (connection reset, registry gone).
    #[error("download of {digest} from {url} interrupted after {received} bytes: {message}")]
    Interrupted {
        url: String,
        digest: Digest,
        received: u64,
        message: String,
    },
    /// The registry does not have it.
    #[error("{object}: not found")]
    NotFound { object: String },
    /// A status the operation does not expect; `message` is the registry's
    /// own error text when it gave one.
    #[error("unexpected status from {method} request to {url}: {status}{message}")]
    Status {
        method: String,
        url: String,
        status: String,
        message: String,
    },
    /// The registry refused our credentials (or we had none).
    #[error(
        "{action} access denied for {host}/{repository}, repository does not exist or may require authorization: {message}"
    )]
    Unauthorized {
        action: &'static str,
        host: String,
        repository: String,
        message: String,
    },
    /// The token server refused or failed.
    #[error("failed to fetch {kind} token from {realm} for {host}: {message}")]
    Token {
        kind: &'static str,
        realm: String,
        host: String,
        message: String,
    },
    #[error("rejecting {size} byte manifest for {object}: larger than {limit} bytes")]
    ManifestTooLarge {
        object: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "{object}: media type {media_type} is not supported: schema 1 manifests are no longer supported"
    )]
    Schema1 { object: String, media_type: String },
    /// The registry sent a `Docker-Content-Digest` that is not a digest.
    #[error("{object}: {header:?} in Docker-Content-Digest header is not a valid digest")]
    BadDigestHeader { object: String, header: String },
    /// Content pushed does not have the digest its descriptor claims.
    #[error("{host}/{repository}: content for {expected} has digest {actual}")]
    DigestMismatch {
        host: String,
        repository: String,
        expected: Digest,
        actual: Digest,
    },
    /// The registry answered an upload without a usable `Location`.
    #[error("{host}/{repository}: upload of {digest}: {message}")]
    Upload {
        host: String,
        repository: String,
        digest: Digest,
        message: String,
    },
    /// Reading what is to be pushed failed.
    #[error("{host}/{repository}: reading {digest} to push: {source}")]
    Source {
        host: String,
        repository: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    /// A push needs a tag or digest to name the manifest.
    #[error("{0}: a manifest push needs a tag or a digest")]
    NoObject(String),
}

impl RegistryError {
    /// Whether the registry said the content is not there (as opposed to
    /// failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}
