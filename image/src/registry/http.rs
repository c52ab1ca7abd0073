//! The HTTP transport under the registry client: hyper's pooled HTTP/1.1
//! client over a connector that speaks plain TCP or rustls with one TLS
//! configuration (roots, client certificate, skip-verify).
//!
//! A [`Transport`] is made per TLS configuration (see `hosts.rs`): the
//! default one (system roots) is shared by every registry without
//! settings, so connections to one host are pooled across all callers.
//! HTTP/1.1 only, as BuildKit's registry transport: HTTP/2's flow control
//! limits push throughput.
//!
//! Connection errors are classified here ([`SendError`]) because the
//! https→http fallback BuildKit applies to insecure localhost registries
//! depends on why a connection failed.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Request bodies: in memory or streamed from a file, re-creatable for
/// retries by whoever builds them.
pub(crate) type ReqBody = BoxBody<Bytes, io::Error>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ring, explicitly: the workspace builds rustls with ring only, and an
/// explicit provider does not depend on a process-wide default being set.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA certificates, read once (Go's `SystemCertPool`).
pub(crate) fn system_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "reading system CA certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system CA certificates");
            roots
        })
        .clone()
}

/// Builds a rustls client configuration.
pub(crate) fn client_config(
    roots: RootCertStore,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    skip_verify: bool,
) -> Result<ClientConfig, rustls::Error> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify { provider }))
    } else {
        builder.with_root_certificates(roots)
    };
    match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure = true`: any certificate is accepted (Go's
/// `InsecureSkipVerify`), but handshake signatures are still checked so the
/// connection is at least to whoever holds the certificate's key.
#[derive(Debug)]
struct SkipVerify {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A pooled HTTP/1.1 client for one TLS configuration. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    client: Client<Connector, ReqBody>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(tls: Arc<ClientConfig>) -> Transport {
        let mut http = HttpConnector::new();
        // https URIs too: TLS is layered on by our connector.
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.set_nodelay(true);
        let connector = Connector {
            http,
            tls: TlsConnector::from(tls),
        };
        // BuildKit's transport: idle connections kept 120 s, 4 per host.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(4)
            .build(connector);
        Transport { client }
    }

    /// Sends one request; no retries, redirects or auth here.
    pub(crate) async fn send(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.client
            .request(req)
            .await
            .map_err(|e| SendError::classify(&e))
    }
}

/// Why a request got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The server answered a TLS handshake with something that is not TLS
    /// (a plain-HTTP registry): the https→http fallback applies.
    NotTls,
    /// Nothing listens on the port.
    Refused,
    /// The connection could not be established for another reason.
    Connect,
    /// The connection broke while the request or response head was in
    /// flight.
    Other,
}

/// A request that got no response, with the whole error chain as text.
#[derive(Clone, Debug)]
pub(crate) struct SendError {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl SendError {
    fn classify(e: &hyper_util::client::legacy::Error) -> SendError {
        let mut kind = if e.is_connect() {
            FailureKind::Connect
        } else {
            FailureKind::Other
        };
        let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::ConnectionRefused {
                    kind = FailureKind::Refused;
                }
                if io.get_ref().is_some_and(|inner| inner.is::<NotTls>()) {
                    kind = FailureKind::NotTls;
                }
            }
            cur = err.source();
        }
        SendError {
            kind,
            message: error_chain(e),
        }
    }
}

/// `a: b: c` from an error and its sources, without repeats (hyper's
/// errors often repeat their source's text).
pub(crate) fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The peer does not speak TLS.
#[derive(Debug, thiserror::Error)]
#[error("server gave an HTTP response to an HTTPS client ({0})")]
struct NotTls(rustls::Error);

/// Dials TCP with hyper-util's connector, then TLS for `https` URIs.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tower_service::Service::call(&mut http, uri.clone())
                .await
                .map_err(|e| {
                    // Keep "connection refused" recognisable for the
                    // fallback rule.
                    let refused = find_io_kind(&e) == Some(io::ErrorKind::ConnectionRefused);
                    let kind = if refused {
                        io::ErrorKind::ConnectionRefused
                    } else {
                        io::ErrorKind::Other
                    };
                    io::Error::new(kind, error_chain(&e))
                })?
                .into_inner();
            if !https {
                return Ok(Conn(TokioIo::new(Io::Plain(tcp))));
            }
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("server name {host}: {e}"),
                )
            })?;
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.connect(name, tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Err(tls_error(e)),
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake timeout",
                        ));
                    }
                };
            Ok(Conn(TokioIo::new(Io::Tls(Box::new(stream)))))
        })
    }
}

fn find_io_kind(e: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Marks a handshake that failed because the reply was not TLS at all.
fn tls_error(e: io::Error) -> io::Error {
    let not_tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .filter(|r| matches!(r, rustls::Error::InvalidMessage(_)))
        .cloned();
    match not_tls {
        Some(r) => io::Error::new(io::ErrorKind::InvalidData, NotTls(r)),
        None => e,
    }
}

/// A plain or TLS connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the connector hands hyper: our stream in hyper's I/O traits (a
/// local type, so hyper-util's `Connection` can be implemented for it).
struct Conn(TokioIo<Io>);

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
