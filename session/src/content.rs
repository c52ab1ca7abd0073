//! Content stores inside the session: containerd's `Content` service,
//! served by the build client, one store per id in the
//! `buildkit-attachable-store-id` header. The daemon writes the blobs of an
//! `oci`/`docker` export with `tar=false` into the client's `export` store
//! ([`write_blob`]); the client keeps them in an OCI layout directory
//! ([`LocalStores`]) and writes `index.json` itself after the build.
//!
//! The write protocol is containerd's: a `Write` stream per blob that
//! starts with a STAT naming the ref, size and digest (a store that has the
//! digest answers `AlreadyExists` and the blob counts as written), then
//! WRITEs at increasing offsets, then a COMMIT checked against size and
//! digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bk_proto::containerd::services::content::v1::content_client::ContentClient;
use bk_proto::containerd::services::content::v1::content_server::{Content, ContentServer};
use bk_proto::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use futures::Stream;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{Session, SessionError};

/// The header that picks the store.
pub const STORE_ID_HEADER: &str = "buildkit-attachable-store-id";

/// The store `oci`/`docker` exports with `tar=false` write to.
pub const EXPORT_STORE: &str = "export";

/// Every method of the service, as the session announces them.
pub const METHODS: &[&str] = &[
    "/containerd.services.content.v1.Content/Info",
    "/containerd.services.content.v1.Content/Update",
    "/containerd.services.content.v1.Content/List",
    "/containerd.services.content.v1.Content/Delete",
    "/containerd.services.content.v1.Content/Read",
    "/containerd.services.content.v1.Content/Status",
    "/containerd.services.content.v1.Content/ListStatuses",
    "/containerd.services.content.v1.Content/Write",
    "/containerd.services.content.v1.Content/Abort",
];

const WRITE_METHOD: &str = "/containerd.services.content.v1.Content/Write";

/// Data per WRITE message.
const CHUNK: usize = 1 << 20;

/// The ref containerd's remotes give a blob being written
/// (`layer-sha256:…`), by its media type.
pub fn write_ref(media_type: &str, digest: &str) -> String {
    let prefix = if media_type.contains("manifest.list") || media_type.contains("image.index") {
        "index"
    } else if media_type.contains("manifest") {
        "manifest"
    } else if media_type.contains("layer") || media_type.contains("rootfs") {
        "layer"
    } else if media_type.contains("config") {
        "config"
    } else if media_type == "application/vnd.in-toto+json" {
        "intoto"
    } else {
        "unknown"
    };
    format!("{prefix}-{digest}")
}

/// Writes one blob of `size` bytes from `data` into the client's store
/// `store_id`. Returns false when the store already had it (nothing was
/// sent).
pub async fn write_blob<R>(
    session: &Session,
    store_id: &str,
    media_type: &str,
    digest: &str,
    size: u64,
    mut data: R,
) -> Result<bool, SessionError>
where
    R: AsyncRead + Unpin + Send,
{
    if !session.supports(WRITE_METHOD) {
        return Err(SessionError::Call(Status::unimplemented(
            "the client serves no content store",
        )));
    }
    let total = i64::try_from(size).map_err(|_| {
        SessionError::Call(Status::invalid_argument(format!(
            "blob {digest} is too large"
        )))
    })?;
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
    let first = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: write_ref(media_type, digest),
        total,
        expected: digest.to_string(),
        ..Default::default()
    };
    tx.send(first)
        .await
        .map_err(|_| SessionError::Call(Status::internal("write stream closed")))?;
    let mut request = Request::new(ReceiverStream::new(rx));
    let store = MetadataValue::try_from(store_id)
        .map_err(|_| SessionError::Call(Status::invalid_argument("invalid store id")))?;
    request.metadata_mut().insert(STORE_ID_HEADER, store);
    let mut client = ContentClient::new(session.channel())
        .max_decoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(bk_proto::MAX_MESSAGE_SIZE);

    let outcome = async {
        let mut replies = client.write(request).await?.into_inner();
        let reply = next_reply(&mut replies).await?;
        let mut offset = 0i64;
        if reply.offset != 0 {
            // A resumed ingest is rewritten from the start.
            tracing::debug!(
                digest,
                offset = reply.offset,
                "client store resumes; restarting"
            );
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(|e| Status::internal(format!("read blob {digest}: {e}")))?;
            if n == 0 {
                break;
            }
            tx.send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: buf[..n].to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|_| Status::aborted("the client closed the write stream"))?;
            let reply = next_reply(&mut replies).await?;
            if reply.offset != offset + n as i64 {
                return Err(Status::data_loss(format!(
                    "blob {digest}: the client store is at offset {} after writing {} bytes",
                    reply.offset,
                    offset + n as i64
                )));
            }
            offset = reply.offset;
        }
        if offset != total {
            return Err(Status::data_loss(format!(
                "blob {digest}: read {offset} bytes, expected {total}"
            )));
        }
        tx.send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            total,
            offset,
            expected: digest.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|_| Status::aborted("the client closed the write stream"))?;
        let reply = next_reply(&mut replies).await?;
        if reply.digest != digest {
            return Err(Status::data_loss(format!(
                "blob {digest}: the client store committed {}",
                reply.digest
            )));
        }
        Ok(())
    };
    let result = session.call(outcome).await;
    drop(tx);
    match result {
        Ok(()) => Ok(true),
        Err(SessionError::Call(status)) if status.code() == Code::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

async fn next_reply(
    replies: &mut Streaming<WriteContentResponse>,
) -> Result<WriteContentResponse, Status> {
    replies
        .message()
        .await?
        .ok_or_else(|| Status::aborted("the client ended the write stream"))
}

/// The client's side: stores by id, each an OCI layout directory
/// (`blobs/sha256/<hex>`, partial writes in `ingest/`).
#[derive(Debug, Clone, Default)]
pub struct LocalStores {
    stores: BTreeMap<String, PathBuf>,
}

impl LocalStores {
    pub fn new(stores: impl IntoIterator<Item = (String, PathBuf)>) -> LocalStores {
        LocalStores {
            stores: stores.into_iter().collect(),
        }
    }

    pub fn into_service(self) -> ContentServer<LocalStores> {
        ContentServer::new(self)
            .max_decoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(bk_proto::MAX_MESSAGE_SIZE)
    }

    fn choose<T>(&self, request: &Request<T>) -> Result<PathBuf, Status> {
        let id = request
            .metadata()
            .get(STORE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("request lacks metadata {STORE_ID_HEADER:?}"))
            })?;
        self.stores
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown store {id}")))
    }
}

/// `blobs/sha256/<hex>` for a well-formed sha256 digest; anything else is
/// refused (it would name a path).
fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, Status> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| Status::invalid_argument(format!("{digest:?} failed validation")))?;
    Ok(root.join("blobs").join("sha256").join(hex))
}

fn io_status(what: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Content for LocalStores {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let root = self.choose(&request)?;
        let digest = request.into_inner().digest;
        let path = blob_path(&root, &digest)?;
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Response::new(InfoResponse {
                info: Some(Info {
                    digest,
                    size: meta.len() as i64,
                    ..Default::default()
                }),
            })),
            Ok(_) => Err(Status::not_found(format!("content {digest}: not found"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Status::not_found(format!("content {digest}: not found")))
            }
            Err(e) => Err(io_status("stat blob", e)),
        }
    }

    async fn update(
        &self,
        _request: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        Err(Status::unimplemented("labels are not kept by this store"))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        _request: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Err(Status::unimplemented("listing is not served"))
    }

    async fn delete(
        &self,
        _request: Request<DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::permission_denied(
            "the client's store is not deleted from",
        ))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let root = self.choose(&request)?;
        let req = request.into_inner();
        let path = blob_path(&root, &req.digest)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Status::not_found(format!("content {}: not found", req.digest))
            } else {
                io_status("open blob", e)
            }
        })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_status("stat blob", e))?
            .len() as i64;
        let start = req.offset.max(0);
        if start > len {
            return Err(Status::out_of_range(format!(
                "read past object length {len} bytes"
            )));
        }
        let end = if req.size <= 0 {
            len
        } else {
            start.saturating_add(req.size).min(len)
        };
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(start as u64))
            .await
            .map_err(|e| io_status("seek blob", e))?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut at = 0i64;
            let mut left = end - start;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        let msg = ReadContentResponse {
                            offset: at,
                            data: buf,
                        };
                        at += n as i64;
                        left -= n as i64;
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io_status("read blob", e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("ingest status is not served"))
    }

    async fn list_statuses(
        &self,
        _request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        Ok(Response::new(ListStatusesResponse::default()))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let root = self.choose(&request)?;
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("first message must have a reference"))?;
        if first.r#ref.is_empty() {
            return Err(Status::invalid_argument(
                "first message must have a reference",
            ));
        }
        let mut ingest = Ingest::open(&root, &first).await?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let req = match next.take() {
                    Some(r) => r,
                    None => match incoming.next().await {
                        Some(Ok(r)) => r,
                        // The writer left: its partial file goes.
                        _ => break,
                    },
                };
                let reply = ingest.apply(req).await;
                let done = matches!(&reply, Ok(r) if r.action == WriteAction::Commit as i32);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || done || failed {
                    break;
                }
            }
            ingest.discard().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, _request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

/// One blob being written into a local store.
struct Ingest {
    root: PathBuf,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    offset: i64,
    total: i64,
    expected: String,
}

impl Ingest {
    async fn open(root: &Path, first: &WriteContentRequest) -> Result<Ingest, Status> {
        if !first.expected.is_empty() {
            let blob = blob_path(root, &first.expected)?;
            if tokio::fs::symlink_metadata(&blob).await.is_ok() {
                return Err(Status::already_exists(format!(
                    "blob with expected digest {} exists",
                    first.expected
                )));
            }
        }
        let dir = root.join("ingest");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_status("create ingest directory", e))?;
        // The ref is the writer's words: hashed, never a path.
        let name: String = Sha256::digest(first.r#ref.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{name}-{nanos}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_status("create ingest file", e))?;
        Ok(Ingest {
            root: root.to_path_buf(),
            path,
            file: Some(file),
            hasher: Sha256::new(),
            offset: 0,
            total: first.total,
            expected: first.expected.clone(),
        })
    }

    fn digest(&self) -> String {
        let hex: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }

    async fn apply(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if req.total > 0 {
            self.total = req.total;
        }
        if !req.expected.is_empty() {
            self.expected = req.expected.clone();
        }
        let action = WriteAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument(format!("unknown action {}", req.action)))?;
        let mut reply = WriteContentResponse {
            action: req.action,
            offset: self.offset,
            total: self.total,
            ..Default::default()
        };
        if action == WriteAction::Stat {
            reply.digest = self.digest();
            return Ok(reply);
        }
        if req.offset != self.offset {
            return Err(Status::out_of_range(format!(
                "write @{} must occur at current offset {}",
                req.offset, self.offset
            )));
        }
        if !req.data.is_empty() {
            if self.total > 0 && self.offset + req.data.len() as i64 > self.total {
                return Err(Status::failed_precondition(format!(
                    "content exceeds expected size {}",
                    self.total
                )));
            }
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| Status::failed_precondition("the write was already committed"))?;
            file.write_all(&req.data)
                .await
                .map_err(|e| io_status("write ingest file", e))?;
            self.hasher.update(&req.data);
            self.offset += req.data.len() as i64;
        }
        reply.offset = self.offset;
        reply.digest = self.digest();
        if action == WriteAction::Commit {
            self.commit(&reply.digest).await?;
        }
        Ok(reply)
    }

    async fn commit(&mut self, digest: &str) -> Result<(), Status> {
        if self.total > 0 && self.offset != self.total {
            return Err(Status::failed_precondition(format!(
                "unexpected commit size {}, expected {}",
                self.offset, self.total
            )));
        }
        if !self.expected.is_empty() && digest != self.expected {
            return Err(Status::failed_precondition(format!(
                "unexpected commit digest {digest}, expected {}",
                self.expected
            )));
        }
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Status::failed_precondition("the write was already committed"))?;
        file.flush().await.map_err(|e| io_status("flush", e))?;
        file.sync_all().await.map_err(|e| io_status("sync", e))?;
        drop(file);
        let blob = blob_path(&self.root, digest)?;
        if let Some(dir) = blob.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_status("create blob directory", e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o444))
            .await
            .map_err(|e| io_status("chmod blob", e))?;
        if tokio::fs::symlink_metadata(&blob).await.is_ok() {
            return Err(Status::already_exists(format!(
                "content {digest}: already exists"
            )));
        }
        tokio::fs::rename(&self.path, &blob)
            .await
            .map_err(|e| io_status("commit blob", e))?;
        Ok(())
    }

    async fn discard(self) {
        drop(self.file);
        // Gone already after a commit.
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}
