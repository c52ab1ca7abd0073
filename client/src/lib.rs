//! A Rust client for any BuildKit daemon (ours or Go BuildKit's).
//!
//! Start with [`Client::connect`], which dials `unix:///path` or
//! `tcp://host:port` (with mTLS when [`TlsOptions`] are given), then call the
//! Control API through its methods. The `bkctl` binary in this crate is a
//! command-line front end whose subcommands and flags follow `buildctl`.

pub mod build;
pub mod csv;
pub mod oci_layout;
pub mod solve_opts;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bk_proto::MAX_MESSAGE_SIZE;
use bk_proto::moby::buildkit::v1::control_client::ControlClient;
use bk_proto::moby::buildkit::v1::{
    BuildHistoryEvent, BuildHistoryRequest, DiskUsageRequest, InfoRequest, ListWorkersRequest,
    PruneRequest, SolveRequest, SolveResponse, StatusRequest, StatusResponse, UsageRecord,
    types::{BuildkitVersion, WorkerRecord},
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {0:?}: expected unix:///path or tcp://host:port")]
    Address(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    /// The daemon's answer; shown as its message alone, as buildctl does.
    #[error("{}", .0.message())]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Rpc(status)
    }
}

/// Client-side TLS: the CA that signed the daemon's certificate, and the
/// client certificate and key the daemon asks for.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the daemon's certificate against; defaults to the host
    /// in the address.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Fills the files from a directory holding `ca.pem`/`cert.pem`/`key.pem`
    /// or `ca.crt`/`tls.crt`/`tls.key`, as buildctl's `--tlsdir` does.
    pub fn from_dir(dir: &Path) -> TlsOptions {
        let pick = |a: &str, b: &str| {
            let first = dir.join(a);
            if first.exists() { first } else { dir.join(b) }
        };
        TlsOptions {
            ca: Some(pick("ca.pem", "ca.crt")),
            cert: Some(pick("cert.pem", "tls.crt")),
            key: Some(pick("key.pem", "tls.key")),
            server_name: None,
        }
    }
}

/// A connection to one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects, failing after `timeout` if the daemon does not answer.
    pub async fn connect(
        addr: &str,
        tls: Option<&TlsOptions>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let channel = if let Some(path) = addr.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            endpoint("http://localhost", timeout)?
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .map_err(connect_err)?
        } else if let Some(hostport) = addr.strip_prefix("tcp://") {
            let host = hostport
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .filter(|h| !h.is_empty())
                .ok_or_else(|| ClientError::Address(addr.to_string()))?
                .to_string();
            let ep = endpoint(&format!("http://{hostport}"), timeout)?;
            match tls {
                None => ep.connect().await.map_err(connect_err)?,
                Some(opts) => {
                    let name = opts.server_name.clone().unwrap_or(host);
                    let server_name = ServerName::try_from(name.clone())
                        .map_err(|_| ClientError::Tls(format!("invalid server name {name:?}")))?;
                    let connector =
                        tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(opts)?));
                    let hostport = hostport.to_string();
                    ep.connect_with_connector(tower::service_fn(move |_| {
                        let (connector, server_name, hostport) =
                            (connector.clone(), server_name.clone(), hostport.clone());
                        async move {
                            let tcp = TcpStream::connect(hostport).await?;
                            let _ = tcp.set_nodelay(true);
                            let tls = connector.connect(server_name, tcp).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(tls))
                        }
                    }))
                    .await
                    .map_err(connect_err)?
                }
            }
        } else {
            return Err(ClientError::Address(addr.to_string()));
        };
        Ok(Client { channel })
    }

    /// The underlying gRPC channel, for services this type does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The raw Control API client, for calls this type does not wrap.
    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub async fn list_workers(
        &self,
        filter: Vec<String>,
    ) -> Result<Vec<WorkerRecord>, ClientError> {
        let response = self
            .control()
            .list_workers(ListWorkersRequest { filter })
            .await?;
        Ok(response.into_inner().record)
    }

    pub async fn info(&self) -> Result<BuildkitVersion, ClientError> {
        let response = self.control().info(InfoRequest {}).await?;
        Ok(response.into_inner().buildkit_version.unwrap_or_default())
    }

    pub async fn disk_usage(&self, filter: Vec<String>) -> Result<Vec<UsageRecord>, ClientError> {
        let response = self
            .control()
            .disk_usage(DiskUsageRequest {
                filter,
                age_limit: 0,
            })
            .await?;
        Ok(response.into_inner().record)
    }

    /// Prunes and collects every removed record.
    pub async fn prune(&self, request: PruneRequest) -> Result<Vec<UsageRecord>, ClientError> {
        let mut stream = self.control().prune(request).await?.into_inner();
        let mut removed = Vec::new();
        while let Some(record) = stream.message().await? {
            removed.push(record);
        }
        Ok(removed)
    }

    pub async fn solve(&self, request: SolveRequest) -> Result<SolveResponse, ClientError> {
        Ok(self.control().solve(request).await?.into_inner())
    }

    pub async fn status(&self, build_ref: &str) -> Result<Streaming<StatusResponse>, ClientError> {
        let request = StatusRequest {
            r#ref: build_ref.to_string(),
        };
        Ok(self.control().status(request).await?.into_inner())
    }

    /// Reads a history stream to its end (use with `early_exit`), returning
    /// the events and the `buildkit-current-timestamp` header if sent.
    pub async fn build_history(
        &self,
        request: BuildHistoryRequest,
    ) -> Result<(Vec<BuildHistoryEvent>, Option<String>), ClientError> {
        let response = self.control().listen_build_history(request).await?;
        let timestamp = response
            .metadata()
            .get("buildkit-current-timestamp")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut stream = response.into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await? {
            events.push(event);
        }
        Ok((events, timestamp))
    }

    /// `grpc.health.v1.Health/Check` for the whole server.
    pub async fn health(&self) -> Result<ServingStatus, ClientError> {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(response.into_inner().status())
    }
}

fn endpoint(uri: &str, timeout: Duration) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|_| ClientError::Address(uri.to_string()))?
        .initial_stream_window_size(bk_proto::STREAM_WINDOW)
        .initial_connection_window_size(bk_proto::CONNECTION_WINDOW)
        .connect_timeout(timeout))
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("failed to read {}: {e}", path.display())))
}

fn client_tls_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = opts.ca.as_ref().ok_or_else(|| {
        ClientError::Tls("a CA certificate (--tlscacert) is required for TLS".into())
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read_file(ca)?.as_slice()) {
        let cert =
            cert.map_err(|e| ClientError::Tls(format!("invalid CA {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("invalid CA {}: {e}", ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut read_file(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ClientError::Tls(format!("invalid certificate {}: {e}", cert.display()))
                })?;
            let key = rustls_pemfile::private_key(&mut read_file(key)?.as_slice())
                .map_err(|e| ClientError::Tls(format!("invalid key {}: {e}", key.display())))?
                .ok_or_else(|| ClientError::Tls(format!("no private key in {}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::Tls(e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Tls(
                "--tlscert and --tlskey must be given together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
