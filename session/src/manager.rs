//! The daemon's side of sessions: accepts `Control.Session` streams, runs an
//! HTTP/2 client over each (the daemon calls the client's services), keeps
//! them by id, and watches their health.
//!
//! Start with [`SessionManager::handle`] (called by the Control service) and
//! [`SessionManager::get`] / [`SessionManager::any`] (called by whatever needs
//! a client's files, credentials or secrets).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bk_proto::moby::buildkit::v1::BytesMessage;
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::tunnel;

pub const HEADER_SESSION_ID: &str = "x-docker-expose-session-uuid";
pub const HEADER_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
pub const HEADER_METHOD: &str = "x-docker-expose-session-grpc-method";
pub const HEADER_NAME: &str = "x-docker-expose-session-name";
pub const HEADER_HEALTH_TIMEOUT: &str = "x-buildkit-session-health-custom-timeout";

/// How long one id of a group is waited for before trying the next.
pub const GROUP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("missing {HEADER_SESSION_ID} header")]
    MissingId,
    #[error("session {0} already exists")]
    AlreadyExists(String),
    #[error("no active session for {0}: context deadline exceeded")]
    NotFound(String),
    #[error("no active sessions")]
    NoActiveSessions,
    #[error("session {0} was closed")]
    Closed(String),
    #[error("{0}")]
    Call(#[from] tonic::Status),
}

impl From<SessionError> for tonic::Status {
    fn from(e: SessionError) -> tonic::Status {
        match e {
            SessionError::MissingId => tonic::Status::invalid_argument(e.to_string()),
            SessionError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            SessionError::NotFound(_) | SessionError::NoActiveSessions => {
                tonic::Status::not_found(e.to_string())
            }
            SessionError::Closed(_) => tonic::Status::cancelled(e.to_string()),
            SessionError::Call(status) => status,
        }
    }
}

/// One connected client session.
pub struct Session {
    id: String,
    shared_key: String,
    methods: HashSet<String>,
    channel: Channel,
    closed: CancellationToken,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key that lets repeat builds from the same client reuse state
    /// (empty for buildctl; buildx sends a per-node id).
    pub fn shared_key(&self) -> &str {
        &self.shared_key
    }

    /// Whether the client said it serves `/<service>/<method>`.
    pub fn supports(&self, method: &str) -> bool {
        self.methods.contains(&method.to_ascii_lowercase())
    }

    /// A channel to the client's services (16 MiB limits belong on the
    /// clients built over it).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Completes when the session ends.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Runs a call into the session, failing it as soon as the session dies
    /// (a stuck call must not outlive its session).
    pub async fn call<T, F>(&self, call: F) -> Result<T, SessionError>
    where
        F: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        tokio::select! {
            result = call => Ok(result?),
            () = self.closed.cancelled() => Err(SessionError::Closed(self.id.clone())),
        }
    }
}

/// Health checking as BuildKit does it: every 5 s, each check allowed
/// max(15 s, 1.5 × the previous one's duration), two failures in a row end
/// the session. A client may shorten it (tests do) with a header.
#[derive(Debug, Clone, Copy)]
struct HealthConfig {
    interval: Duration,
    timeout: Duration,
    failures_allowed: u32,
}

impl HealthConfig {
    fn from_metadata(metadata: &MetadataMap) -> HealthConfig {
        let custom = metadata
            .get(HEADER_HEALTH_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match custom {
            Some(ms) => {
                let d = Duration::from_millis(ms).max(Duration::from_secs(1));
                HealthConfig {
                    interval: d,
                    timeout: d,
                    failures_allowed: 1,
                }
            }
            None => HealthConfig {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(15),
                failures_allowed: 2,
            },
        }
    }
}

/// All live sessions of the daemon.
pub struct SessionManager {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Bumped on every register and unregister, so waiters re-check.
    generation: watch::Sender<u64>,
}

impl Default for SessionManager {
    fn default() -> Self {
        SessionManager {
            sessions: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
        }
    }
}

type OutboundStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<BytesMessage, tonic::Status>> + Send>>;

impl SessionManager {
    pub fn new() -> Arc<SessionManager> {
        Arc::new(SessionManager::default())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // A poisoned map is still a valid map: nothing panics while holding it.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one `Control.Session` call: registers the session and returns
    /// the stream of bytes for the client. The stream ends when the client
    /// half-closes or the session dies.
    pub fn handle<S>(
        self: &Arc<Self>,
        metadata: &MetadataMap,
        inbound: S,
    ) -> Result<OutboundStream, SessionError>
    where
        S: Stream<Item = Result<BytesMessage, tonic::Status>> + Send + Unpin + 'static,
    {
        let header = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_default()
        };
        let id = header(HEADER_SESSION_ID);
        if id.is_empty() {
            return Err(SessionError::MissingId);
        }
        let methods = metadata
            .get_all(HEADER_METHOD)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
        let health = HealthConfig::from_metadata(metadata);

        let (io, outbound, tunnel) = tunnel::open(inbound.map(|m| m.map(|m| m.data)));
        let slot = Arc::new(Mutex::new(Some(io)));
        // The tunnel is one connection: a second dial (after it broke) fails.
        let channel = Endpoint::from_static("http://localhost")
            .initial_stream_window_size(bk_proto::STREAM_WINDOW)
            .initial_connection_window_size(bk_proto::CONNECTION_WINDOW)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let io = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    io.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("session connection is closed"))
                }
            }));
        let session = Arc::new(Session {
            id: id.clone(),
            shared_key: header(HEADER_SHARED_KEY),
            methods,
            channel,
            closed: CancellationToken::new(),
        });
        {
            let mut sessions = self.sessions();
            if sessions.contains_key(&id) {
                tunnel.abort();
                return Err(SessionError::AlreadyExists(id));
            }
            sessions.insert(id.clone(), session.clone());
        }
        self.generation.send_modify(|g| *g += 1);
        tracing::debug!(session = %id, "session started");

        let manager = self.clone();
        tokio::spawn(async move {
            let mut tunnel = tunnel;
            let reason = tokio::select! {
                _ = &mut tunnel.inbound_done => "client closed the session",
                () = monitor_health(&session, health) => "health check failed",
            };
            tracing::debug!(session = %session.id, reason, "session ended");
            session.closed.cancel();
            manager.unregister(&session);
            // Give the inner connection a moment to close on EOF, then cut it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            tunnel.abort();
        });

        Ok(Box::pin(
            ReceiverStream::new(outbound).map(|data| Ok(BytesMessage { data })),
        ))
    }

    fn unregister(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions();
        if sessions
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.id);
        }
        drop(sessions);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The session `id` (a `prefix:` is ignored), waiting up to `timeout`
    /// for it to connect: clients open their session and call `Solve`
    /// concurrently.
    pub async fn get(&self, id: &str, timeout: Duration) -> Result<Arc<Session>, SessionError> {
        let id = match id.split_once(':') {
            Some((_, rest)) if !rest.is_empty() => rest,
            _ => id,
        };
        let mut changes = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(session) = self.sessions().get(id).filter(|s| !s.is_closed()) {
                return Ok(session.clone());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(SessionError::NotFound(id.to_string())),
            }
        }
    }

    /// Tries `f` on each session of a group in order (waiting up to 5 s for
    /// each), returning the first success or the last error.
    pub async fn any<T, F, Fut>(&self, ids: &[String], mut f: F) -> Result<T, SessionError>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SessionError>>,
    {
        let mut last = None;
        for id in ids.iter().filter(|id| !id.is_empty()) {
            match self.get(id, GROUP_WAIT).await {
                Ok(session) => match f(session).await {
                    Ok(value) => return Ok(value),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(SessionError::NoActiveSessions))
    }

    /// Ids of the live sessions.
    pub fn ids(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }
}

/// Returns when the session has failed its health checks.
async fn monitor_health(session: &Session, config: HealthConfig) {
    let mut client = HealthClient::new(session.channel());
    let mut failures = 0;
    let mut last_duration = Duration::ZERO;
    // The first check goes out at once: it opens the inner HTTP/2
    // connection, and Go's HTTP/2 server drops a connection whose preface
    // does not arrive within 10 s.
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(config.interval).await;
        }
        first = false;
        let timeout = config.timeout.max(last_duration.mul_f64(1.5));
        let started = Instant::now();
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let ok = matches!(
            tokio::time::timeout(timeout, client.check(request)).await,
            Ok(Ok(_))
        );
        last_duration = started.elapsed();
        if ok {
            failures = 0;
        } else {
            failures += 1;
            tracing::debug!(session = %session.id, failures, "session health check failed");
            if failures >= config.failures_allowed {
                return;
            }
        }
    }
}
