//! Listeners: unix sockets and TCP (with mTLS when certificates are given),
//! merged into one stream of connections that a single gRPC server serves.
//!
//! TLS handshakes run in their own tasks with a deadline, so a slow or broken
//! client never holds up others. ALPN offers `h2`, and handshakes that
//! negotiate no ALPN (buildx's remote driver) are accepted too.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::settings::{Settings, TlsFiles};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("failed to listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("TCP address {0} needs TLS (--tlscert, --tlskey, --tlscacert) or --allow-insecure-tcp")]
    InsecureTcp(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// One accepted client connection, whatever listener it came from.
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Unix(s) => s.is_write_vectored(),
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Bound listeners, ready to accept.
pub struct Listeners {
    unix: Vec<(UnixListener, PathBuf)>,
    tcp: Vec<(TcpListener, Option<TlsAcceptor>)>,
}

impl Listeners {
    /// Binds every `--addr`. Unix sockets are created `0660`, owned by the
    /// configured uid and group.
    pub async fn bind(settings: &Settings) -> Result<Listeners, ListenError> {
        let acceptor = match &settings.tls {
            Some(files) => Some(tls_acceptor(files)?),
            None => None,
        };
        let mut out = Listeners {
            unix: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in &settings.addrs {
            let bind_err = |source| ListenError::Bind {
                addr: addr.clone(),
                source,
            };
            if let Some(path) = addr.strip_prefix("unix://") {
                if acceptor.is_some() {
                    tracing::warn!(addr, "TLS is not used on unix sockets");
                }
                let path = PathBuf::from(path);
                let listener =
                    bind_unix(&path, settings.socket_uid, settings.socket_gid).map_err(bind_err)?;
                tracing::info!(addr, "listening");
                out.unix.push((listener, path));
            } else if let Some(hostport) = addr.strip_prefix("tcp://") {
                if acceptor.is_none() {
                    if !settings.allow_insecure_tcp {
                        return Err(ListenError::InsecureTcp(addr.clone()));
                    }
                    tracing::warn!(
                        addr,
                        "serving TCP WITHOUT TLS: anyone who can reach this address can run builds as this daemon's user"
                    );
                }
                let listener = TcpListener::bind(hostport).await.map_err(bind_err)?;
                tracing::info!(addr, local = %listener.local_addr().map_err(bind_err)?, tls = acceptor.is_some(), "listening");
                out.tcp.push((listener, acceptor.clone()));
            }
        }
        Ok(out)
    }

    /// Paths of the unix sockets, to remove at shutdown.
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        self.unix.iter().map(|(_, p)| p.clone()).collect()
    }

    /// Starts accepting on every listener; connections arrive on the
    /// returned channel (ready for `serve_with_incoming`).
    pub fn accept_all(self) -> mpsc::Receiver<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(64);
        for (listener, _) in self.unix {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            if tx.send(Ok(Conn::Unix(stream))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        for (listener, acceptor) in self.tcp {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let Some(acceptor) = acceptor.clone() else {
                        if tx.send(Ok(Conn::Tcp(stream))).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            });
        }
        rx
    }
}

fn bind_unix(path: &Path, uid: u32, gid: u32) -> io::Result<UnixListener> {
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o770)
            .create(parent)?;
        chown(parent, uid, gid)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    chown(path, uid, gid)?;
    Ok(listener)
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    rustix::fs::chown(path, Some(uid), Some(gid)).map_err(io::Error::from)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ListenError> {
    std::fs::read(path)
        .map_err(|e| ListenError::Tls(format!("failed to read {}: {e}", path.display())))
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ListenError> {
    let tls_err = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        ListenError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut read_pem(&files.cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("invalid certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(tls_err("no certificate in", &files.cert, &"empty"));
    }
    let key = rustls_pemfile::private_key(&mut read_pem(&files.key)?.as_slice())
        .map_err(|e| tls_err("invalid key", &files.key, &e))?
        .ok_or_else(|| tls_err("no private key in", &files.key, &"empty"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenError::Tls(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut read_pem(ca)?.as_slice()) {
                let cert = cert.map_err(|e| tls_err("invalid CA certificate", ca, &e))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err("invalid CA certificate", ca, &e))?;
            }
            if roots.is_empty() {
                return Err(tls_err("no CA certificate in", ca, &"empty"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err("unusable CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key do not match", &files.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
