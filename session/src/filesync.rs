//! Files through the session, both ways.
//!
//! Into the daemon: [`sync_dir`] pulls a client directory (`local://NAME`)
//! with `FileSync.DiffCopy`; the client serves it with [`FileSyncProvider`].
//! Out to the client: [`send_dir`] (fsutil packets, for the `local` exporter)
//! and [`send_file`] (raw bytes, for `tar`, `oci`, `docker`) call
//! `FileSend.DiffCopy`; the client receives with [`FileSendTargets`]. Both
//! payload kinds share one method path, so FileSend uses hand-written codecs
//! rather than the generated client and server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bk_fsutil::receive::{ReceiveOptions, ReceiveStats};
use bk_fsutil::walk::WalkOptions;
use bk_fsutil::{Entry, FsError, Packet, PacketRx};
use bk_proto::moby::filesync::v1::BytesMessage;
use bk_proto::moby::filesync::v1::file_sync_client::FileSyncClient;
use bk_proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{Session, SessionError};

pub const FILESYNC_DIFF_COPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";
pub const FILESYNC_METHODS: &[&str] = &[FILESYNC_DIFF_COPY, "/moby.filesync.v1.FileSync/TarStream"];
pub const FILESEND_DIFF_COPY: &str = "/moby.filesync.v1.FileSend/DiffCopy";
pub const FILESEND_METHODS: &[&str] = &[FILESEND_DIFF_COPY];

const KEY_DIR_NAME: &str = "dir-name";
const KEY_INCLUDE: &str = "include-patterns";
const KEY_EXCLUDE: &str = "exclude-patterns";
const KEY_FOLLOW: &str = "followpaths";
/// Which of the request's exporters a FileSend call is for.
pub const KEY_EXPORTER_ID: &str = "buildkit-attachable-exporter-id";
/// Prefix of exporter response entries passed to the client's output.
pub const KEY_EXPORTER_MD_PREFIX: &str = "exporter-md-";
/// Tells clients the daemon can export several platforms to one directory.
pub const KEY_MULTI_PLATFORM: &str = "buildkit-exporter-multi-platform";

/// Messages into a session stay under the client's 4 MiB limit.
const MAX_CHUNK: usize = 3 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileSyncError {
    #[error("no local sources enabled")]
    NoLocalSources,
    #[error("method {0} not supported by the client")]
    Unsupported(&'static str),
    #[error("{0}")]
    Transfer(#[from] FsError),
    #[error("{0}")]
    Session(#[from] SessionError),
}

impl From<Status> for FileSyncError {
    fn from(s: Status) -> Self {
        FileSyncError::Session(SessionError::Call(s))
    }
}

/// What to pull: a local name and the client-side filters.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub name: String,
    pub include_patterns: Option<Vec<String>>,
    pub exclude_patterns: Option<Vec<String>>,
    pub follow_paths: Option<Vec<String>>,
}

/// Pulls the client's directory `req.name` into `dest`, transferring only
/// what differs from what `dest` already holds (per `opts.differ`).
pub async fn sync_dir(
    session: &Session,
    req: &SyncRequest,
    dest: &Path,
    opts: ReceiveOptions,
) -> Result<ReceiveStats, FileSyncError> {
    if !session.supports(FILESYNC_DIFF_COPY) {
        return Err(FileSyncError::NoLocalSources);
    }
    let (tx, outgoing) = mpsc::channel::<Packet>(64);
    let mut request = Request::new(ReceiverStream::new(outgoing));
    let md = request.metadata_mut();
    set_values(md, KEY_DIR_NAME, Some(std::slice::from_ref(&req.name)))?;
    set_values(md, KEY_INCLUDE, req.include_patterns.as_deref())?;
    set_values(md, KEY_EXCLUDE, req.exclude_patterns.as_deref())?;
    set_values(md, KEY_FOLLOW, req.follow_paths.as_deref())?;
    let mut client = FileSyncClient::new(session.channel())
        .max_decoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(bk_proto::MAX_MESSAGE_SIZE);
    let dest = dest.to_path_buf();
    let stats = session
        .call(async move {
            let incoming = client.diff_copy(request).await?.into_inner();
            bk_fsutil::receive::receive(&dest, opts, packets(incoming), tx)
                .await
                .map_err(|e| Status::new(Code::Unknown, e.to_string()))
        })
        .await?;
    Ok(stats)
}

/// Sends `entries` (a walked tree) to the client's directory output
/// `exporter_index`.
pub async fn send_dir(
    session: &Session,
    exporter_index: usize,
    entries: Vec<Entry>,
) -> Result<(), FileSyncError> {
    if !session.supports(FILESEND_DIFF_COPY) {
        return Err(FileSyncError::Unsupported(FILESEND_DIFF_COPY));
    }
    let (tx, outgoing) = mpsc::channel::<Packet>(64);
    let mut request = Request::new(ReceiverStream::new(outgoing));
    request
        .metadata_mut()
        .insert(KEY_EXPORTER_ID, MetadataValue::from(exporter_index as u64));
    request
        .metadata_mut()
        .insert(KEY_MULTI_PLATFORM, MetadataValue::from_static("1"));
    let mut grpc = tonic::client::Grpc::new(session.channel());
    // The receiver speaks only after our listing arrives, and Go's gRPC
    // server sends response headers only with its first message: so the
    // sender must start before the call has answered.
    let (incoming_tx, incoming_rx) = mpsc::channel::<Result<Packet, FsError>>(64);
    let call = async move {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("session: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
        let path = http::uri::PathAndQuery::from_static(FILESEND_DIFF_COPY);
        let mut incoming = grpc.streaming(request, path, codec).await?.into_inner();
        while let Some(packet) = incoming.message().await? {
            if incoming_tx.send(Ok(packet)).await.is_err() {
                break;
            }
        }
        Ok::<(), Status>(())
    };
    let sender = bk_fsutil::send::send(entries, Box::pin(ReceiverStream::new(incoming_rx)), tx);
    let (call_result, send_result) = session
        .call(async { Ok(tokio::join!(call, sender)) })
        .await?;
    // A failed call also ends the sender's stream; its status says why.
    call_result?;
    send_result?;
    Ok(())
}

/// Streams `body` (an archive) to the client's file output
/// `exporter_index`. A client answering `AlreadyExists` already has it.
pub async fn send_file<S>(
    session: &Session,
    exporter_index: usize,
    exporter_metadata: &BTreeMap<String, String>,
    body: S,
) -> Result<(), FileSyncError>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    if !session.supports(FILESEND_DIFF_COPY) {
        return Err(FileSyncError::Unsupported(FILESEND_DIFF_COPY));
    }
    let chunks = body.flat_map(|b| {
        let pieces: Vec<Bytes> = (0..b.len().div_ceil(MAX_CHUNK))
            .map(|i| b.slice(i * MAX_CHUNK..((i + 1) * MAX_CHUNK).min(b.len())))
            .collect();
        futures::stream::iter(pieces)
    });
    let mut request = Request::new(chunks.map(|data| BytesMessage { data }));
    let md = request.metadata_mut();
    md.insert(KEY_EXPORTER_ID, MetadataValue::from(exporter_index as u64));
    for (k, v) in exporter_metadata {
        let key = format!("{KEY_EXPORTER_MD_PREFIX}{k}");
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            md.insert(key, value);
        }
    }
    let mut grpc = tonic::client::Grpc::new(session.channel());
    let result = session
        .call(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("session: {e}")))?;
            let codec = tonic_prost::ProstCodec::<BytesMessage, BytesMessage>::default();
            let path = http::uri::PathAndQuery::from_static(FILESEND_DIFF_COPY);
            let mut incoming = grpc.streaming(request, path, codec).await?.into_inner();
            while incoming.message().await?.is_some() {}
            Ok(())
        })
        .await;
    match result {
        Err(SessionError::Call(status)) if status.code() == Code::AlreadyExists => Ok(()),
        other => Ok(other?),
    }
}

/// Runs one side of an fsutil transfer as a gRPC handler: `transfer` reads
/// the request's packets and writes ours, which become the response stream,
/// ending with its error status if it fails.
fn serve_transfer<F, Fut, T>(incoming: Streaming<Packet>, transfer: F) -> PacketStream
where
    F: FnOnce(PacketRx, bk_fsutil::PacketTx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, FsError>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, mut outgoing) = mpsc::channel::<Packet>(64);
    let (result_tx, result_rx) = mpsc::channel::<Result<Packet, Status>>(64);
    let incoming = packets(incoming);
    tokio::spawn(async move {
        let forward = {
            let result_tx = result_tx.clone();
            tokio::spawn(async move {
                while let Some(p) = outgoing.recv().await {
                    if result_tx.send(Ok(p)).await.is_err() {
                        break;
                    }
                }
            })
        };
        let outcome = transfer(incoming, tx).await;
        let _ = forward.await;
        if let Err(e) = outcome {
            let _ = result_tx.send(Err(Status::unknown(e.to_string()))).await;
        }
    });
    Box::pin(ReceiverStream::new(result_rx))
}

fn packets(incoming: Streaming<Packet>) -> PacketRx {
    Box::pin(incoming.map(|p| p.map_err(|s| FsError::Stream(s.message().to_string()))))
}

/// Sets one metadata value per item; when any item is not plain ASCII, all
/// are URL-query-escaped and `<key>-encoded: 1` says so.
fn set_values(
    md: &mut MetadataMap,
    key: &'static str,
    values: Option<&[String]>,
) -> Result<(), Status> {
    let Some(values) = values else {
        return Ok(());
    };
    let encode = values
        .iter()
        .any(|v| v.bytes().any(|b| !(0x20..0x7f).contains(&b)));
    for v in values {
        let text = if encode { query_escape(v) } else { v.clone() };
        let value = MetadataValue::try_from(text.as_str())
            .map_err(|_| Status::invalid_argument(format!("invalid {key} value")))?;
        md.append(key, value);
    }
    if encode {
        let encoded_key =
            tonic::metadata::AsciiMetadataKey::from_bytes(format!("{key}-encoded").as_bytes())
                .map_err(|_| Status::internal("metadata key"))?;
        md.insert(encoded_key, MetadataValue::from_static("1"));
    }
    Ok(())
}

/// Reads the values of `key`, undoing [`set_values`]' escaping.
fn get_values(md: &MetadataMap, key: &str) -> Option<Vec<String>> {
    let encoded = md.get(format!("{key}-encoded").as_str()).is_some();
    let values: Vec<String> = md
        .get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            if encoded {
                query_unescape(v)
            } else {
                v.to_string()
            }
        })
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`, keeping malformed escapes as they are.
fn query_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The client's FileSync service: the directories named by `--local`.
#[derive(Debug, Clone, Default)]
pub struct FileSyncProvider {
    dirs: Arc<BTreeMap<String, PathBuf>>,
}

impl FileSyncProvider {
    pub fn new(dirs: BTreeMap<String, PathBuf>) -> FileSyncProvider {
        FileSyncProvider {
            dirs: Arc::new(dirs),
        }
    }

    pub fn into_service(self) -> FileSyncServer<FileSyncProvider> {
        FileSyncServer::new(self)
            .max_decoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
    }
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for FileSyncProvider {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        let md = request.metadata();
        let name = get_values(md, KEY_DIR_NAME)
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default();
        let root = self
            .dirs
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no access allowed to dir {name:?}")))?;
        let opts = WalkOptions {
            include_patterns: get_values(md, KEY_INCLUDE).unwrap_or_default(),
            exclude_patterns: get_values(md, KEY_EXCLUDE).unwrap_or_default(),
            follow_paths: get_values(md, KEY_FOLLOW).unwrap_or_default(),
            // buildctl and buildx send every file as owned by root.
            zero_ids: true,
        };
        let entries = tokio::task::spawn_blocking(move || bk_fsutil::walk::walk(&root, &opts))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(serve_transfer(
            request.into_inner(),
            move |rx, tx| bk_fsutil::send::send(entries, rx, tx),
        )))
    }

    type TarStreamStream = PacketStream;

    async fn tar_stream(
        &self,
        _: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        Err(Status::unimplemented("TarStream is not supported"))
    }
}

/// Where one exporter's output lands on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSendTarget {
    /// A directory tree (the `local` exporter).
    Dir(PathBuf),
    /// An archive written to a file.
    File(PathBuf),
    /// An archive written to standard output.
    Stdout,
}

/// The client's FileSend service: one target per exporter index.
#[derive(Debug, Clone)]
pub struct FileSendTargets {
    targets: Arc<Vec<Option<FileSendTarget>>>,
}

impl FileSendTargets {
    /// `targets[i]` serves the request's exporter `i` (`None`: not a file
    /// output).
    pub fn new(targets: Vec<Option<FileSendTarget>>) -> FileSendTargets {
        FileSendTargets {
            targets: Arc::new(targets),
        }
    }

    fn target(&self, md: &http::HeaderMap) -> Result<FileSendTarget, Status> {
        // Clients older than v0.13 had one target and no index.
        let index = md
            .get(KEY_EXPORTER_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        self.targets
            .get(index)
            .cloned()
            .flatten()
            .ok_or_else(|| Status::not_found(format!("no output for exporter {index}")))
    }
}

impl tonic::server::NamedService for FileSendTargets {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for FileSendTargets {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != FILESEND_DIFF_COPY {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let target = match this.target(req.headers()) {
                Ok(t) => t,
                Err(status) => return Ok(status.into_http()),
            };
            let response = match target {
                FileSendTarget::Dir(dir) => {
                    grpc_server::<Packet>()
                        .streaming(ReceiveDir(dir), req)
                        .await
                }
                FileSendTarget::File(path) => {
                    grpc_server::<BytesMessage>()
                        .streaming(ReceiveFile(Some(path)), req)
                        .await
                }
                FileSendTarget::Stdout => {
                    grpc_server::<BytesMessage>()
                        .streaming(ReceiveFile(None), req)
                        .await
                }
            };
            Ok(response)
        })
    }
}

/// A gRPC server for messages of type `M` in both directions, with
/// BuildKit's size limits.
fn grpc_server<M>() -> tonic::server::Grpc<tonic_prost::ProstCodec<M, M>>
where
    M: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::<M, M>::default())
        .apply_max_message_size_config(
            Some(bk_proto::MAX_MESSAGE_SIZE),
            Some(bk_proto::MAX_MESSAGE_SIZE),
        )
}

/// Receives a directory export into its destination.
struct ReceiveDir(PathBuf);

impl tonic::server::StreamingService<Packet> for ReceiveDir {
    type Response = Packet;
    type ResponseStream = PacketStream;
    type Future = BoxFuture<Result<Response<PacketStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Packet>>) -> Self::Future {
        let dest = self.0.clone();
        Box::pin(async move {
            tokio::fs::create_dir_all(&dest).await.map_err(|e| {
                Status::internal(format!("failed to create {}: {e}", dest.display()))
            })?;
            let opts = ReceiveOptions {
                // Exported files belong to whoever runs the client.
                owner: Some((
                    rustix::process::getuid().as_raw(),
                    rustix::process::getgid().as_raw(),
                )),
                ..Default::default()
            };
            Ok(Response::new(serve_transfer(
                request.into_inner(),
                move |rx, tx| async move { bk_fsutil::receive::receive(&dest, opts, rx, tx).await },
            )))
        })
    }
}

/// Receives an archive into a file (or stdout).
struct ReceiveFile(Option<PathBuf>);

type BytesStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

impl tonic::server::StreamingService<BytesMessage> for ReceiveFile {
    type Response = BytesMessage;
    type ResponseStream = BytesStream;
    type Future = BoxFuture<Result<Response<BytesStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<BytesMessage>>) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let mut out: Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match &path {
                Some(p) => Box::pin(tokio::fs::File::create(p).await.map_err(|e| {
                    Status::internal(format!("failed to create {}: {e}", p.display()))
                })?),
                None => Box::pin(tokio::io::stdout()),
            };
            while let Some(msg) = incoming.message().await? {
                out.write_all(&msg.data)
                    .await
                    .map_err(|e| Status::internal(format!("failed to write output: {e}")))?;
            }
            out.flush()
                .await
                .map_err(|e| Status::internal(format!("failed to write output: {e}")))?;
            Ok(Response::new(
                Box::pin(futures::stream::empty()) as BytesStream
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for s in ["plain", "with space", "ünïcödé/**", "a%b+c", "100%"] {
            assert_eq!(query_unescape(&query_escape(s)), s);
        }
        assert_eq!(query_escape("a b/é"), "a+b%2F%C3%A9");
        assert_eq!(query_unescape("%zz"), "%zz");
    }
}
