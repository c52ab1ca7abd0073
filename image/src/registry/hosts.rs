//! Which endpoints serve a registry, from `[registry."host"]` settings, as
//! BuildKit's `util/resolver.NewRegistryConfig` (over containerd's
//! `docker.ConfigureDefaultRegistries`) decides them.
//!
//! Start with [`RegistryHosts::new`] and [`RegistryHosts::hosts`]. The rules:
//! - A registry with settings gets its mirrors first (each with the settings
//!   of the mirror's own host, if any; pull and resolve only, never push),
//!   then itself (pull, resolve, push). `docker.io` is served by
//!   `registry-1.docker.io`. A mirror may carry a path
//!   (`mirror.example/sub` is served under `/v2/sub`); a scheme written in a
//!   mirror is ignored, as BuildKit ignores it.
//! - Scheme: `http = true` is plain HTTP; `http` unset on a loopback host
//!   (containerd's `MatchLocalhost`: `localhost`, `127.0.0.0/8`, `::1`, any
//!   port) is plain HTTP too; otherwise HTTPS. `insecure = true` is HTTPS
//!   without certificate verification, and when plain HTTP would also have
//!   applied, HTTPS is tried first and the host falls back to HTTP (for
//!   good) when the server does not speak TLS, or when the connection is
//!   refused and the host has no explicit port.
//! - A registry without settings is HTTPS with the system roots, or plain
//!   HTTP on a loopback host (no fallback).
//! - `ca` files are added to the system roots; `keypair`s are client
//!   certificates (the first is presented); `tlsconfigdir` directories add
//!   their `*.crt` as CAs and `*.cert`/`*.key` pairs as client certificates.
//!
//! TLS files are read when [`RegistryHosts::new`] runs, so a bad file is a
//! configuration error at start-up rather than a failure of the first pull.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::http::{Transport, client_config, system_roots};

/// One `[registry."host"]` table of `buildkitd.toml` (BuildKit's
/// `resolver/config.RegistryConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Hosts (optionally with a path) to try before the registry itself.
    pub mirrors: Vec<String>,
    /// Plain HTTP (`true`), or HTTPS even on a loopback host (`false`).
    #[serde(rename = "http")]
    pub plain_http: Option<bool>,
    /// HTTPS without certificate verification.
    pub insecure: Option<bool>,
    /// CA certificate files (PEM) trusted in addition to the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificates.
    pub keypair: Vec<KeyPair>,
    /// Directories of `*.crt` (CAs) and `*.cert`/`*.key` (client pairs).
    pub tlsconfigdir: Vec<PathBuf>,
}

/// A client certificate and its key (PEM files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("registry {host}: failed to read {path}: {source}")]
    Read {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {host}: {path}: {message}")]
    Pem {
        host: String,
        path: PathBuf,
        message: String,
    },
    #[error("registry {host}: TLS configuration: {message}")]
    Tls { host: String, message: String },
    #[error("registry {host}: failed to load keypair for {cert}: {message}")]
    KeyPair {
        host: String,
        cert: PathBuf,
        message: String,
    },
}

/// What an endpoint may be used for (containerd's `HostCapabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Fetch manifests and blobs by digest.
    pub const PULL: Capabilities = Capabilities(1);
    /// Turn a tag into a digest (a trusted operation).
    pub const RESOLVE: Capabilities = Capabilities(2);
    pub const PUSH: Capabilities = Capabilities(4);
    pub const ALL: Capabilities = Capabilities(7);

    pub fn has(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }
}

/// One endpoint to send requests to.
#[derive(Clone, Debug)]
pub struct RegistryHost {
    /// `host[:port]` to connect to (`registry-1.docker.io` for `docker.io`).
    pub host: String,
    /// The API root: `/v2`, or `/v2/<path>` for a mirror with a path.
    pub path: String,
    pub capabilities: Capabilities,
    /// HTTPS without certificate verification.
    pub skip_verify: bool,
    https: bool,
    /// Try HTTPS, fall back to plain HTTP (insecure + loopback/`http`).
    fallback: bool,
    /// Set once the fallback happened; shared by clones, so later requests
    /// go straight to HTTP, as BuildKit's `httpFallback` remembers.
    fell_back: Arc<AtomicBool>,
    pub(crate) transport: Transport,
}

impl RegistryHost {
    /// `http` or `https`, as requests are sent now.
    pub fn scheme(&self) -> &'static str {
        if self.https && !self.fell_back.load(Ordering::Relaxed) {
            "https"
        } else {
            "http"
        }
    }

    /// Whether a failed HTTPS attempt may be retried over HTTP.
    pub(crate) fn may_fall_back(&self) -> bool {
        self.https && self.fallback && !self.fell_back.load(Ordering::Relaxed)
    }

    pub(crate) fn fall_back(&self) {
        self.fell_back.store(true, Ordering::Relaxed);
    }

    /// Whether the host has an explicit port (BuildKit falls back on a
    /// refused connection only without one).
    pub(crate) fn has_port(&self) -> bool {
        split_port(&self.host).1.is_some()
    }

    /// Whether this endpoint serves `domain` on someone else's behalf (a
    /// mirror): requests then carry `?ns=<domain>`.
    pub(crate) fn is_proxy_for(&self, domain: &str) -> bool {
        self.host != domain && !(domain == "docker.io" && self.host == "registry-1.docker.io")
    }
}

/// Built endpoint settings for one configured host.
#[derive(Clone)]
struct HostTls {
    transport: Transport,
    skip_verify: bool,
}

/// The registry endpoints for every domain, from the daemon's settings.
/// Cheap to clone; endpoints are built once per domain and shared, so
/// connection pools and fallback decisions are too.
#[derive(Clone)]
pub struct RegistryHosts {
    inner: Arc<Inner>,
}

struct Inner {
    config: BTreeMap<String, RegistryConfig>,
    tls: HashMap<String, HostTls>,
    default_transport: Transport,
    cache: Mutex<HashMap<String, Arc<Vec<RegistryHost>>>>,
}

impl std::fmt::Debug for RegistryHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHosts")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RegistryHosts {
    /// Applies `[registry."host"]` settings (keys are registry hosts as in
    /// references: `docker.io`, `localhost:5000`); reads their TLS files.
    pub fn new(config: BTreeMap<String, RegistryConfig>) -> Result<RegistryHosts, HostsError> {
        let mut tls = HashMap::new();
        for (host, c) in &config {
            if let Some(t) = build_tls(host, c)? {
                tls.insert(host.clone(), t);
            }
        }
        Ok(RegistryHosts {
            inner: Arc::new(Inner {
                config,
                tls,
                default_transport: default_transport()?,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// No settings at all: every registry by the default rules.
    pub fn defaults() -> Result<RegistryHosts, HostsError> {
        RegistryHosts::new(BTreeMap::new())
    }

    /// The endpoints for the registry `domain` (a reference's domain), in
    /// the order to try them.
    pub fn hosts(&self, domain: &str) -> Arc<Vec<RegistryHost>> {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hosts) = cache.get(domain) {
            return hosts.clone();
        }
        let hosts = Arc::new(self.build(domain));
        cache.insert(domain.to_owned(), hosts.clone());
        hosts
    }

    fn build(&self, domain: &str) -> Vec<RegistryHost> {
        let Some(config) = self.inner.config.get(domain) else {
            // containerd's ConfigureDefaultRegistries with
            // WithPlainHTTP(MatchLocalhost).
            let host = translate(domain);
            return vec![RegistryHost {
                https: !match_localhost(&host),
                host,
                path: "/v2".to_owned(),
                capabilities: Capabilities::ALL,
                skip_verify: false,
                fallback: false,
                fell_back: Arc::default(),
                transport: self.inner.default_transport.clone(),
            }];
        };
        let mut out = Vec::new();
        for mirror in &config.mirrors {
            let (host, sub) = split_mirror(mirror);
            let path = if sub.is_empty() {
                "/v2".to_owned()
            } else {
                format!("/v2/{sub}")
            };
            let default = RegistryConfig::default();
            let mirror_config = self.inner.config.get(&host).unwrap_or(&default);
            out.push(self.endpoint(
                host,
                path,
                Capabilities::PULL.union(Capabilities::RESOLVE),
                mirror_config,
            ));
        }
        out.push(self.endpoint(
            translate(domain),
            "/v2".to_owned(),
            Capabilities::ALL,
            config,
        ));
        out
    }

    /// BuildKit's `fillInsecureOpts` for one endpoint.
    fn endpoint(
        &self,
        host: String,
        path: String,
        capabilities: Capabilities,
        config: &RegistryConfig,
    ) -> RegistryHost {
        let plain = match config.plain_http {
            Some(v) => v,
            None => match_localhost(&host),
        };
        let insecure = config.insecure == Some(true);
        let tls = self.inner.tls.get(&host);
        let transport = tls.map_or_else(
            || self.inner.default_transport.clone(),
            |t| t.transport.clone(),
        );
        RegistryHost {
            // Insecure is HTTPS first even when HTTP applies (then with
            // fallback); otherwise HTTP applies outright.
            https: insecure || !plain,
            fallback: insecure && plain,
            skip_verify: insecure,
            fell_back: Arc::default(),
            host,
            path,
            capabilities,
            transport,
        }
    }
}

/// `docker.io` is served by `registry-1.docker.io`.
fn translate(domain: &str) -> String {
    if domain == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        domain.to_owned()
    }
}

/// BuildKit's `extractMirrorHostAndPath`: `host[:port][/path]`, with any
/// `scheme://` dropped and the path's trailing `/` trimmed.
fn split_mirror(mirror: &str) -> (String, String) {
    let rest = mirror.split_once("://").map_or(mirror, |(_, r)| r);
    match rest.split_once('/') {
        Some((host, path)) if !host.is_empty() => {
            (host.to_owned(), path.trim_matches('/').to_owned())
        }
        _ => (rest.to_owned(), String::new()),
    }
}

/// Splits `host:port`, `[v6]:port`, `[v6]` or `host`.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        // More than one colon without brackets is a bare IPv6 address.
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

/// containerd's `docker.MatchLocalhost`: `localhost`, a loopback IPv4
/// address or `::1`, with or without a port (`[::1]:5000`). An empty port
/// (`localhost:`) is not a match, as Go reports it as malformed.
pub fn match_localhost(host: &str) -> bool {
    if host == "::1" || host == "[::1]" {
        return true;
    }
    let (h, port) = split_port(host);
    if port == Some("") {
        return false;
    }
    let h = if h == "localhost" { "127.0.0.1" } else { h };
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn default_transport() -> Result<Transport, HostsError> {
    let config = client_config(system_roots(), None, false).map_err(|e| HostsError::Tls {
        host: "(default)".to_owned(),
        message: e.to_string(),
    })?;
    Ok(Transport::new(Arc::new(config)))
}

/// Loads one configured host's CA files, client certificates and
/// `tlsconfigdir` contents into a transport.
/// `None` when the host has no TLS settings of its own (the default
/// transport, and its connection pool, serve it).
fn build_tls(host: &str, c: &RegistryConfig) -> Result<Option<HostTls>, HostsError> {
    let mut cas = c.ca.clone();
    let mut pairs = c.keypair.clone();
    for dir in &c.tlsconfigdir {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // BuildKit skips a missing or unreadable directory.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                continue;
            }
            Err(source) => {
                return Err(HostsError::Read {
                    host: host.to_owned(),
                    path: dir.clone(),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if name.ends_with(".crt") {
                cas.push(dir.join(&name));
            }
            if let Some(stem) = name.strip_suffix(".cert") {
                pairs.push(KeyPair {
                    cert: dir.join(&name),
                    key: dir.join(format!("{stem}.key")),
                });
            }
        }
    }

    let insecure = c.insecure == Some(true);
    if cas.is_empty() && pairs.is_empty() && !insecure {
        return Ok(None);
    }
    let mut roots = system_roots();
    for path in &cas {
        let pem = read(host, path)?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| HostsError::Pem {
                host: host.to_owned(),
                path: path.clone(),
                message: e.to_string(),
            })?;
            // Go's AppendCertsFromPEM skips what it cannot parse.
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            tracing::warn!(host, path = %path.display(), "no usable CA certificate in file");
        }
    }
    let client_cert = match pairs.first() {
        Some(pair) => Some(load_keypair(host, pair)?),
        None => None,
    };
    if pairs.len() > 1 {
        tracing::warn!(
            host,
            "several client certificates configured; presenting the first"
        );
    }
    let config = client_config(roots, client_cert, insecure).map_err(|e| HostsError::KeyPair {
        host: host.to_owned(),
        cert: pairs.first().map(|p| p.cert.clone()).unwrap_or_default(),
        message: e.to_string(),
    })?;
    Ok(Some(HostTls {
        transport: Transport::new(Arc::new(config)),
        skip_verify: insecure,
    }))
}

fn read(host: &str, path: &Path) -> Result<Vec<u8>, HostsError> {
    std::fs::read(path).map_err(|source| HostsError::Read {
        host: host.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn load_keypair(
    host: &str,
    pair: &KeyPair,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HostsError> {
    let fail = |message: String| HostsError::KeyPair {
        host: host.to_owned(),
        cert: pair.cert.clone(),
        message,
    };
    let cert_pem = read(host, &pair.cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if chain.is_empty() {
        return Err(fail("no certificate in file".into()));
    }
    let key_pem = read(host, &pair.key)?;
    // The key's contents are never put in a message.
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| fail(format!("reading {}: {e}", pair.key.display())))?
        .ok_or_else(|| fail(format!("no private key in {}", pair.key.display())))?;
    Ok((chain, key))
}

impl RegistryHosts {
    /// Whether `host` was configured `insecure` (for diagnostics).
    pub fn is_insecure(&self, host: &str) -> bool {
        self.inner.tls.get(host).is_some_and(|t| t.skip_verify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_matching_is_containerds() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "::1",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(match_localhost(h), "{h}");
        }
        for h in [
            "docker.io",
            "example.com:5000",
            "10.0.0.1",
            "localhost:",
            "[::2]:5000",
            "localhost.example.com",
            "0.0.0.0",
        ] {
            assert!(!match_localhost(h), "{h}");
        }
    }

    #[test]
    fn mirror_host_and_path() {
        assert_eq!(
            split_mirror("localhost:5000"),
            ("localhost:5000".into(), String::new())
        );
        assert_eq!(
            split_mirror("https://mirror.example/sub/dir/"),
            ("mirror.example".into(), "sub/dir".into())
        );
        assert_eq!(
            split_mirror("mirror.example/sub"),
            ("mirror.example".into(), "sub".into())
        );
    }

    fn cfg(f: impl FnOnce(&mut RegistryConfig)) -> RegistryConfig {
        let mut c = RegistryConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn unconfigured_hosts() {
        let hosts = RegistryHosts::defaults().unwrap();
        let h = hosts.hosts("docker.io");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].host, "registry-1.docker.io");
        assert_eq!(h[0].scheme(), "https");
        assert_eq!(h[0].path, "/v2");
        assert!(h[0].capabilities.has(Capabilities::PUSH));
        let h = hosts.hosts("localhost:5000");
        assert_eq!(h[0].scheme(), "http");
        assert!(!h[0].may_fall_back());
        assert_eq!(hosts.hosts("127.0.0.1:41234")[0].scheme(), "http");
        assert_eq!(hosts.hosts("[::1]:5000")[0].scheme(), "http");
        assert_eq!(hosts.hosts("quay.io")[0].scheme(), "https");
    }

    #[test]
    fn configured_hosts_follow_buildkit() {
        let mut m = BTreeMap::new();
        m.insert(
            "docker.io".to_owned(),
            cfg(|c| c.mirrors = vec!["localhost:5000".into(), "mirror.example/hub".into()]),
        );
        m.insert(
            "localhost:6000".to_owned(),
            cfg(|c| c.plain_http = Some(false)),
        );
        m.insert("reg.example".to_owned(), cfg(|c| c.plain_http = Some(true)));
        m.insert(
            "localhost:7000".to_owned(),
            cfg(|c| c.insecure = Some(true)),
        );
        m.insert(
            "secure.example".to_owned(),
            cfg(|c| c.insecure = Some(true)),
        );
        let hosts = RegistryHosts::new(m).unwrap();

        let h = hosts.hosts("docker.io");
        let names: Vec<_> = h
            .iter()
            .map(|h| (h.host.as_str(), h.path.as_str(), h.scheme()))
            .collect();
        assert_eq!(
            names,
            [
                ("localhost:5000", "/v2", "http"),
                ("mirror.example", "/v2/hub", "https"),
                ("registry-1.docker.io", "/v2", "https"),
            ]
        );
        // Mirrors pull and resolve, never push.
        assert!(!h[0].capabilities.has(Capabilities::PUSH));
        assert!(
            h[0].capabilities
                .has(Capabilities::PULL.union(Capabilities::RESOLVE))
        );
        assert!(h[2].capabilities.has(Capabilities::PUSH));
        assert!(h[0].is_proxy_for("docker.io"));
        assert!(!h[2].is_proxy_for("docker.io"));

        // http=false on localhost: HTTPS.
        assert_eq!(hosts.hosts("localhost:6000")[0].scheme(), "https");
        // http=true anywhere: HTTP.
        assert_eq!(hosts.hosts("reg.example")[0].scheme(), "http");
        // insecure on localhost: HTTPS first, falling back.
        let h = hosts.hosts("localhost:7000");
        assert_eq!(h[0].scheme(), "https");
        assert!(h[0].skip_verify && h[0].may_fall_back());
        h[0].fall_back();
        // Remembered by the shared endpoint.
        assert_eq!(hosts.hosts("localhost:7000")[0].scheme(), "http");
        // insecure elsewhere: HTTPS, no fallback.
        let h = hosts.hosts("secure.example");
        assert_eq!(h[0].scheme(), "https");
        assert!(h[0].skip_verify && !h[0].may_fall_back());
        assert!(hosts.is_insecure("secure.example"));
    }

    #[test]
    fn bad_tls_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "reg.example".to_owned(),
            cfg(|c| c.ca = vec![dir.path().join("missing.pem")]),
        );
        let err = RegistryHosts::new(m).unwrap_err().to_string();
        assert!(
            err.starts_with("registry reg.example: failed to read "),
            "{err}"
        );

        let cert = dir.path().join("c.cert");
        std::fs::write(&cert, "not pem").unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "reg.example".to_owned(),
            cfg(|c| {
                c.keypair = vec![KeyPair {
                    cert: cert.clone(),
                    key: dir.path().join("c.key"),
                }]
            }),
        );
        let err = RegistryHosts::new(m).unwrap_err().to_string();
        assert!(err.contains("failed to load keypair"), "{err}");
    }

    #[test]
    fn reads_toml_tables() {
        let c: RegistryConfig = serde_json::from_str(
            r#"{"mirrors":["m:1"],"http":true,"insecure":false,"ca":["/a.pem"],"keypair":[{"key":"/k","cert":"/c"}]}"#,
        )
        .unwrap();
        assert_eq!(c.plain_http, Some(true));
        assert_eq!(c.keypair[0].cert, PathBuf::from("/c"));
    }
}
