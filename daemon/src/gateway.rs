//! The `LLBBridge` gRPC service on the main listener.
//!
//! Client-side builds (buildctl, buildx) call it with the header
//! `buildkit-controlapi-buildid` naming their build; each call goes to that
//! build's [`Bridge`], waiting briefly for a build that is still starting.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bk_cache::Ref;
use bk_frontend::Bridge;
use bk_proto::moby::buildkit::v1::frontend as gw;
use bk_proto::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridge;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::build::Builds;

/// The header naming the build a bridge call belongs to.
pub const BUILD_ID_HEADER: &str = "buildkit-controlapi-buildid";
/// How long a call waits for its build to register.
const BRIDGE_WAIT: Duration = Duration::from_secs(3);

pub struct GatewayService {
    builds: Arc<Builds>,
}

impl GatewayService {
    pub fn new(builds: Arc<Builds>) -> GatewayService {
        GatewayService { builds }
    }

    async fn bridge<T>(
        &self,
        method: &str,
        request: &Request<T>,
    ) -> Result<Arc<Bridge<Ref>>, Status> {
        let ids: Vec<&str> = request
            .metadata()
            .get_all(BUILD_ID_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let id = match ids.as_slice() {
            [one] => *one,
            [] => return Err(Status::invalid_argument("no buildid found in context")),
            _ => {
                return Err(Status::invalid_argument(
                    "more than one buildid found in context",
                ));
            }
        };
        self.builds
            .bridge(id, BRIDGE_WAIT)
            .await
            .map_err(|e| Status::new(e.code(), format!("forwarding {method}: {}", e.message())))
    }
}

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not supported yet by buildkit-rs"
    )))
}

type ExecStream = Pin<Box<dyn Stream<Item = Result<gw::ExecMessage, Status>> + Send>>;

#[tonic::async_trait]
impl LlbBridge for GatewayService {
    async fn ping(
        &self,
        request: Request<gw::PingRequest>,
    ) -> Result<Response<gw::PongResponse>, Status> {
        let bridge = self.bridge("Ping", &request).await?;
        Ok(Response::new(bridge.ping()))
    }

    async fn inputs(
        &self,
        request: Request<gw::InputsRequest>,
    ) -> Result<Response<gw::InputsResponse>, Status> {
        self.bridge("Inputs", &request).await?;
        Ok(Response::new(gw::InputsResponse::default()))
    }

    async fn solve(
        &self,
        request: Request<gw::SolveRequest>,
    ) -> Result<Response<gw::SolveResponse>, Status> {
        let bridge = self.bridge("Solve", &request).await?;
        Ok(Response::new(bridge.solve(request.into_inner()).await?))
    }

    async fn evaluate(
        &self,
        request: Request<gw::EvaluateRequest>,
    ) -> Result<Response<gw::EvaluateResponse>, Status> {
        let bridge = self.bridge("Evaluate", &request).await?;
        bridge.evaluate(&request.get_ref().r#ref).await?;
        Ok(Response::new(gw::EvaluateResponse {}))
    }

    async fn r#return(
        &self,
        request: Request<gw::ReturnRequest>,
    ) -> Result<Response<gw::ReturnResponse>, Status> {
        let bridge = self.bridge("Return", &request).await?;
        bridge.r#return(request.into_inner())?;
        Ok(Response::new(gw::ReturnResponse {}))
    }

    async fn warn(
        &self,
        request: Request<gw::WarnRequest>,
    ) -> Result<Response<gw::WarnResponse>, Status> {
        self.bridge("Warn", &request).await?;
        Ok(Response::new(gw::WarnResponse {}))
    }

    async fn resolve_image_config(
        &self,
        request: Request<gw::ResolveImageConfigRequest>,
    ) -> Result<Response<gw::ResolveImageConfigResponse>, Status> {
        let bridge = self.bridge("ResolveImageConfig", &request).await?;
        let response = bridge.resolve_image_config(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn resolve_source_meta(
        &self,
        _: Request<gw::ResolveSourceMetaRequest>,
    ) -> Result<Response<gw::ResolveSourceMetaResponse>, Status> {
        unsupported("resolving source metadata")
    }

    async fn read_file(
        &self,
        request: Request<gw::ReadFileRequest>,
    ) -> Result<Response<gw::ReadFileResponse>, Status> {
        let bridge = self.bridge("ReadFile", &request).await?;
        let req = request.into_inner();
        let snapshot = bridge.evaluate(&req.r#ref).await?;
        let data = tokio::task::spawn_blocking(move || {
            read_range(snapshot.path(), &req.file_path, req.range)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(gw::ReadFileResponse { data }))
    }

    async fn read_dir(
        &self,
        _: Request<gw::ReadDirRequest>,
    ) -> Result<Response<gw::ReadDirResponse>, Status> {
        unsupported("ReadDir")
    }

    async fn stat_file(
        &self,
        _: Request<gw::StatFileRequest>,
    ) -> Result<Response<gw::StatFileResponse>, Status> {
        unsupported("StatFile")
    }

    async fn new_container(
        &self,
        _: Request<gw::NewContainerRequest>,
    ) -> Result<Response<gw::NewContainerResponse>, Status> {
        unsupported("containers")
    }

    async fn release_container(
        &self,
        _: Request<gw::ReleaseContainerRequest>,
    ) -> Result<Response<gw::ReleaseContainerResponse>, Status> {
        unsupported("containers")
    }

    type ExecProcessStream = ExecStream;

    async fn exec_process(
        &self,
        _: Request<Streaming<gw::ExecMessage>>,
    ) -> Result<Response<Self::ExecProcessStream>, Status> {
        unsupported("containers")
    }

    async fn read_file_container(
        &self,
        _: Request<gw::ReadFileRequest>,
    ) -> Result<Response<gw::ReadFileResponse>, Status> {
        unsupported("containers")
    }

    async fn read_dir_container(
        &self,
        _: Request<gw::ReadDirRequest>,
    ) -> Result<Response<gw::ReadDirResponse>, Status> {
        unsupported("containers")
    }

    async fn stat_file_container(
        &self,
        _: Request<gw::StatFileRequest>,
    ) -> Result<Response<gw::StatFileResponse>, Status> {
        unsupported("containers")
    }
}

/// Reads (part of) a regular file inside a snapshot: never following a link
/// out, never opening a device or FIFO a context may contain, never reading
/// more than one message can carry.
fn read_range(
    root: &std::path::Path,
    path: &str,
    range: Option<gw::FileRange>,
) -> Result<Vec<u8>, Status> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let full = bk_fileops::resolve_in_root(root, path, true)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Look before opening: opening a device node can have effects.
    match std::fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(Status::invalid_argument(format!(
                "{path} is not a regular file"
            )));
        }
        Err(e) => return Err(Status::not_found(format!("open {path}: {e}"))),
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&full)
        .map_err(|e| Status::not_found(format!("open {path}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Status::internal(format!("stat {path}: {e}")))?;
    if !meta.is_file() {
        return Err(Status::invalid_argument(format!(
            "{path} is not a regular file"
        )));
    }
    let (offset, length) = match range {
        Some(r) => (r.offset.max(0) as u64, r.length.max(0) as u64),
        None => (0, 0),
    };
    // A reply carries at most one message.
    let cap = bk_proto::MAX_MESSAGE_SIZE as u64 - 1024;
    let limit = if length > 0 { length.min(cap) } else { cap };
    if meta.len().saturating_sub(offset) > limit && length == 0 {
        return Err(Status::out_of_range(format!(
            "{path} is too large to read in one message; read it in ranges"
        )));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Status::internal(format!("read {path}: {e}")))?;
    let mut data = Vec::new();
    file.take(limit)
        .read_to_end(&mut data)
        .map_err(|e| Status::internal(format!("read {path}: {e}")))?;
    Ok(data)
}
