//! Uploads: a context the client streams as one blob, named by a
//! `http://buildkit-session/<id>` URL (what `docker build -` sends). The
//! daemon pulls it with [`pull`]; the client serves files with
//! [`UploadProvider`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;

use bk_proto::moby::upload::v1::BytesMessage;
use bk_proto::moby::upload::v1::upload_client::UploadClient;
use bk_proto::moby::upload::v1::upload_server::{Upload, UploadServer};
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::{Session, SessionError};

pub const PULL: &str = "/moby.upload.v1.Upload/Pull";
/// The host of URLs that name uploads.
pub const SESSION_HOST: &str = "buildkit-session";
const KEY_PATH: &str = "urlpath";
const KEY_HOST: &str = "urlhost";
const CHUNK: usize = 32 * 1024;

/// Opens upload `url_path` (e.g. `/abc123`) of the client; the stream yields
/// the blob's bytes.
pub async fn pull(
    session: &Session,
    url_path: &str,
) -> Result<Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>, SessionError> {
    if !session.supports(PULL) {
        return Err(SessionError::Call(Status::unimplemented(
            "the client serves no uploads",
        )));
    }
    let mut request = Request::new(futures::stream::empty::<BytesMessage>());
    let path = MetadataValue::try_from(url_path)
        .map_err(|_| Status::invalid_argument("invalid upload path"))?;
    request.metadata_mut().insert(KEY_PATH, path);
    request
        .metadata_mut()
        .insert(KEY_HOST, MetadataValue::from_static(SESSION_HOST));
    let mut client =
        UploadClient::new(session.channel()).max_decoding_message_size(bk_proto::MAX_MESSAGE_SIZE);
    let response = session.call(client.pull(request)).await?;
    Ok(Box::pin(response.into_inner().map(|m| m.map(|m| m.data))))
}

/// The client's uploads, by URL path.
#[derive(Debug, Clone, Default)]
pub struct UploadProvider {
    uploads: BTreeMap<String, PathBuf>,
}

impl UploadProvider {
    pub fn new(uploads: BTreeMap<String, PathBuf>) -> UploadProvider {
        UploadProvider { uploads }
    }

    pub fn into_service(self) -> UploadServer<UploadProvider> {
        UploadServer::new(self)
    }
}

type BytesStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Upload for UploadProvider {
    type PullStream = BytesStream;

    async fn pull(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BytesStream>, Status> {
        let path = request
            .metadata()
            .get(KEY_PATH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let file = self
            .uploads
            .get(&path)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no upload {path}")))?;
        let mut file = tokio::fs::File::open(&file)
            .await
            .map_err(|e| Status::not_found(format!("upload {path}: {e}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(BytesMessage {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("read upload: {e}"))))
                            .await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
