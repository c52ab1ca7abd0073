//! SSH agent forwarding: the client exposes agent sockets by id
//! ([`SshForwarder`]); the daemon checks for one ([`check_agent`]) and
//! connects a local stream to it ([`forward_connection`]) for each process in
//! a build step that talks to the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;

use bk_proto::moby::sshforward::v1::ssh_client::SshClient;
use bk_proto::moby::sshforward::v1::ssh_server::{Ssh, SshServer};
use bk_proto::moby::sshforward::v1::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{Session, SessionError};

pub const CHECK_AGENT: &str = "/moby.sshforward.v1.SSH/CheckAgent";
pub const FORWARD_AGENT: &str = "/moby.sshforward.v1.SSH/ForwardAgent";
pub const METHODS: &[&str] = &[CHECK_AGENT, FORWARD_AGENT];
/// Metadata key naming the agent a `ForwardAgent` stream is for.
pub const ID_KEY: &str = "buildkit.ssh.id";
pub const DEFAULT_ID: &str = "default";

const CHUNK: usize = 32 * 1024;

/// The daemon's check that the client forwards agent `id`.
pub async fn check_agent(session: &Session, id: &str) -> Result<(), SessionError> {
    let missing = || {
        SessionError::Call(Status::not_found(format!(
            "no SSH key {id:?} forwarded from the client"
        )))
    };
    if !session.supports(CHECK_AGENT) {
        return Err(missing());
    }
    let mut client = SshClient::new(session.channel());
    let request = CheckAgentRequest { id: id.to_string() };
    match session.call(client.check_agent(request)).await {
        Ok(_) => Ok(()),
        Err(SessionError::Call(status)) if status.code() == Code::Unimplemented => Err(missing()),
        Err(e) => Err(e),
    }
}

/// Connects `local` (a connection a build step made to its agent socket) to
/// the client's agent `id`, until either side closes.
pub async fn forward_connection(
    session: &Session,
    id: &str,
    local: UnixStream,
) -> Result<(), SessionError> {
    let (to_client, outbound) = mpsc::channel::<BytesMessage>(8);
    let mut request = Request::new(ReceiverStream::new(outbound));
    let value = MetadataValue::try_from(id)
        .map_err(|_| Status::invalid_argument(format!("invalid ssh id {id:?}")))?;
    request.metadata_mut().insert(ID_KEY, value);
    let mut client = SshClient::new(session.channel());
    let inbound = session
        .call(client.forward_agent(request))
        .await?
        .into_inner();
    let (read, write) = local.into_split();
    session
        .call(async {
            pump(
                read,
                write,
                inbound.map(|m| m.map(|m| m.data)),
                to_client,
                |data| BytesMessage { data },
            )
            .await;
            Ok(())
        })
        .await
}

/// Moves bytes both ways: `read` → `out` as messages, `inbound` → `write`.
/// Local EOF half-closes the stream; remote EOF half-closes `write`.
async fn pump<R, W, S, M>(
    mut read: R,
    mut write: W,
    mut inbound: S,
    out: mpsc::Sender<M>,
    wrap: fn(Vec<u8>) -> M,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
    S: Stream<Item = Result<Vec<u8>, Status>> + Unpin,
    M: Send + 'static,
{
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(wrap(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some(Ok(data)) = inbound.next().await {
        if write.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
    let _ = upstream.await;
}

/// The client's SSH service: agent sockets by id (`--ssh default` uses
/// `$SSH_AUTH_SOCK`).
#[derive(Debug, Clone, Default)]
pub struct SshForwarder {
    agents: BTreeMap<String, PathBuf>,
}

impl SshForwarder {
    /// `specs` are `(id, paths)` as `--ssh` gives them; an empty path list
    /// means `$SSH_AUTH_SOCK`. Only agent sockets are forwarded.
    pub fn new(
        specs: impl IntoIterator<Item = (String, Vec<PathBuf>)>,
    ) -> Result<SshForwarder, String> {
        let mut agents = BTreeMap::new();
        for (id, paths) in specs {
            let socket = match paths.as_slice() {
                [] => std::env::var_os("SSH_AUTH_SOCK")
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--ssh {id}: SSH_AUTH_SOCK is not set"))?,
                [one] => one.clone(),
                _ => return Err(format!("--ssh {id}: give one agent socket")),
            };
            let meta = std::fs::metadata(&socket)
                .map_err(|e| format!("--ssh {id}: {}: {e}", socket.display()))?;
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(format!(
                    "--ssh {id}: {} is not an agent socket (key files are not supported yet)",
                    socket.display()
                ));
            }
            agents.insert(id, socket);
        }
        Ok(SshForwarder { agents })
    }

    pub fn into_service(self) -> SshServer<SshForwarder> {
        SshServer::new(self)
    }

    fn socket(&self, id: &str) -> Result<&PathBuf, Status> {
        let id = if id.is_empty() { DEFAULT_ID } else { id };
        self.agents
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no SSH agent {id:?} is forwarded")))
    }
}

type ForwardStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Ssh for SshForwarder {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        self.socket(&request.into_inner().id)?;
        Ok(Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = ForwardStream;

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::ForwardAgentStream>, Status> {
        let id = request
            .metadata()
            .get(ID_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(DEFAULT_ID)
            .to_string();
        let socket = self.socket(&id)?.clone();
        let agent = UnixStream::connect(&socket)
            .await
            .map_err(|e| Status::unavailable(format!("ssh agent {id}: {e}")))?;
        let (read, write) = agent.into_split();
        let (tx, rx) = mpsc::channel::<Result<BytesMessage, Status>>(8);
        let inbound = request.into_inner().map(|m| m.map(|m| m.data));
        tokio::spawn(async move {
            pump(read, write, inbound, tx, |data| Ok(BytesMessage { data })).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
