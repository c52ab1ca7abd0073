//! The build client's side of a session: open `Control.Session`, then serve
//! gRPC services ("attachables": files, credentials, secrets, …) to the
//! daemon over the tunnel, as an HTTP/2 server.
//!
//! Start with [`ClientSession::new`], add services with
//! [`ClientSession::with_service`], then [`ClientSession::run`]; close it with
//! [`RunningSession::close`] when the build is done.

use std::time::Duration;

use bk_proto::moby::buildkit::v1::BytesMessage;
use bk_proto::moby::buildkit::v1::control_client::ControlClient;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tonic::transport::Channel;

use crate::manager::{HEADER_HEALTH_TIMEOUT, HEADER_METHOD, HEADER_SESSION_ID, HEADER_SHARED_KEY};
use crate::tunnel;

/// Methods of the health service every session serves.
const HEALTH_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// A session being assembled.
pub struct ClientSession {
    id: String,
    shared_key: String,
    routes: Routes,
    methods: Vec<String>,
    health_timeout: Option<Duration>,
}

impl ClientSession {
    /// A session with a fresh id; `shared_key` lets the daemon reuse state
    /// across builds from the same place (buildctl sends an empty one).
    pub fn new(id: impl Into<String>, shared_key: impl Into<String>) -> ClientSession {
        let (_, health) = tonic_health::server::health_reporter();
        ClientSession {
            id: id.into(),
            shared_key: shared_key.into(),
            routes: Routes::new(health),
            methods: HEALTH_METHODS.iter().map(|m| m.to_string()).collect(),
            health_timeout: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a service; `methods` are its full method paths, which the daemon
    /// checks before calling.
    pub fn with_service(
        mut self,
        add: impl FnOnce(Routes) -> Routes,
        methods: &[&str],
    ) -> ClientSession {
        self.routes = add(self.routes);
        self.methods.extend(methods.iter().map(|m| m.to_string()));
        self
    }

    /// Asks the daemon to health-check this session every `timeout` and drop
    /// it after one failure (BuildKit's test-only header).
    pub fn with_health_timeout(mut self, timeout: Duration) -> ClientSession {
        self.health_timeout = Some(timeout);
        self
    }

    /// Opens the session on the daemon and starts serving.
    pub async fn run(
        self,
        mut control: ControlClient<Channel>,
    ) -> Result<RunningSession, tonic::Status> {
        let (to_daemon, outbound) = mpsc::channel::<BytesMessage>(16);
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        let metadata = request.metadata_mut();
        let value = |v: &str| {
            MetadataValue::try_from(v)
                .map_err(|_| tonic::Status::invalid_argument(format!("invalid header value {v:?}")))
        };
        metadata.insert(HEADER_SESSION_ID, value(&self.id)?);
        metadata.insert(HEADER_SHARED_KEY, value(&self.shared_key)?);
        for method in &self.methods {
            metadata.append(HEADER_METHOD, value(method)?);
        }
        if let Some(t) = self.health_timeout {
            metadata.insert(HEADER_HEALTH_TIMEOUT, value(&t.as_millis().to_string())?);
        }
        let inbound = control.session(request).await?.into_inner();
        let (io, mut from_server, tunnel) = tunnel::open(inbound.map(|m| m.map(|m| m.data)));

        // Inner server's bytes go to the daemon until we close.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    chunk = from_server.recv() => match chunk {
                        Some(data) => {
                            if to_daemon.send(BytesMessage { data }).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = &mut stop_rx => break,
                }
            }
            // Dropping `to_daemon` half-closes the outer stream.
        });

        let routes = self.routes;
        let server = tokio::spawn(async move {
            let incoming = futures::stream::once(async move { Ok::<_, std::io::Error>(io) });
            let result = tonic::transport::Server::builder()
                .initial_stream_window_size(bk_proto::STREAM_WINDOW)
                .initial_connection_window_size(bk_proto::CONNECTION_WINDOW)
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "session server ended");
            }
        });
        Ok(RunningSession {
            id: self.id,
            stop: Some(stop_tx),
            writer,
            server,
            tunnel,
        })
    }
}

/// A session being served. Close it when the build is done.
pub struct RunningSession {
    id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    writer: JoinHandle<()>,
    server: JoinHandle<()>,
    tunnel: tunnel::Tunnel,
}

impl RunningSession {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Half-closes the outer stream and waits (up to `grace`) for the daemon
    /// to end it, as buildctl does.
    pub async fn close(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.writer).await;
        let _ = tokio::time::timeout(grace, &mut self.tunnel.inbound_done).await;
        self.tunnel.abort();
        self.server.abort();
    }
}

impl Drop for RunningSession {
    fn drop(&mut self) {
        self.tunnel.abort();
        self.server.abort();
        self.writer.abort();
    }
}
