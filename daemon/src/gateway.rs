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
        let bridge = self.bridge("Warn", &request).await?;
        bridge.warn_request(request.into_inner())?;
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
        request: Request<gw::ResolveSourceMetaRequest>,
    ) -> Result<Response<gw::ResolveSourceMetaResponse>, Status> {
        let bridge = self.bridge("ResolveSourceMeta", &request).await?;
        Ok(Response::new(
            bridge.resolve_source_meta(request.into_inner()).await?,
        ))
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
        request: Request<gw::ReadDirRequest>,
    ) -> Result<Response<gw::ReadDirResponse>, Status> {
        let bridge = self.bridge("ReadDir", &request).await?;
        let req = request.into_inner();
        let snapshot = bridge.evaluate(&req.r#ref).await?;
        let entries = tokio::task::spawn_blocking(move || {
            read_dir(snapshot.path(), &req.dir_path, &req.include_pattern)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(gw::ReadDirResponse { entries }))
    }

    async fn stat_file(
        &self,
        request: Request<gw::StatFileRequest>,
    ) -> Result<Response<gw::StatFileResponse>, Status> {
        let bridge = self.bridge("StatFile", &request).await?;
        let req = request.into_inner();
        let snapshot = bridge.evaluate(&req.r#ref).await?;
        let stat = tokio::task::spawn_blocking(move || {
            let full = bk_fileops::resolve_in_root(snapshot.path(), &req.path, false)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let name = full
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            stat_of(&full, &name)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(gw::StatFileResponse { stat: Some(stat) }))
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
/// An entry's fsutil stat, as BuildKit's ReadDir/StatFile report it (Go
/// FileMode, nanosecond mtime, link target, device numbers; the path is
/// the name given).
fn stat_of(path: &std::path::Path, name: &str) -> Result<bk_fsutil::Stat, Status> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Status::not_found(format!("stat {name}: {e}")))?;
    let mut stat = bk_fsutil::Stat {
        path: name.to_string(),
        mode: bk_fsutil::mode::from_unix(meta.mode()),
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size() as i64,
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Default::default()
    };
    if meta.file_type().is_symlink() {
        stat.linkname = std::fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_block_device() || ft.is_char_device() {
        (stat.devmajor, stat.devminor) = bk_fsutil::mode::split_rdev(meta.rdev());
    }
    Ok(stat)
}

/// The entries directly in `dir` (resolved inside `root`), by name, those
/// matching `include` when given, as BuildKit's gateway lists them.
fn read_dir(
    root: &std::path::Path,
    dir: &str,
    include: &str,
) -> Result<Vec<bk_fsutil::Stat>, Status> {
    let full = bk_fileops::resolve_in_root(root, dir, true)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let matcher = if include.is_empty() {
        None
    } else {
        Some(
            bk_fsutil::patterns::PatternMatcher::new(&[include])
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        )
    };
    let mut names: Vec<String> = std::fs::read_dir(&full)
        .map_err(|e| Status::not_found(format!("read {dir}: {e}")))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if matcher.as_ref().is_some_and(|m| !m.matches(&name)) {
            continue;
        }
        out.push(stat_of(&full.join(&name), &name)?);
    }
    Ok(out)
}

fn read_range(
    root: &std::path::Path,
    path: &str,
    range: Option<gw::FileRange>,
) -> Result<Vec<u8>, Status> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut file, meta) = crate::frontends::open_regular(root, path)?;
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

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn read_dir_lists_direct_entries_matching_the_pattern() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("d/sub")).unwrap();
        std::fs::write(root.path().join("d/a.txt"), b"hello").unwrap();
        std::fs::write(root.path().join("d/b.log"), b"x").unwrap();
        std::fs::set_permissions(
            root.path().join("d/a.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("link")).unwrap();

        let all = read_dir(root.path(), "/d", "").unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.log", "sub"]);
        let txt = read_dir(root.path(), "/d", "*.txt").unwrap();
        assert_eq!(txt.len(), 1);
        assert_eq!(txt[0].mode & 0o777, 0o640);
        assert_eq!(txt[0].size, 5);
        // A link out of the tree is resolved inside it, never followed out.
        assert!(read_dir(root.path(), "/link", "").is_err());

        let full = bk_fileops::resolve_in_root(root.path(), "/link", false).unwrap();
        let st = stat_of(&full, "link").unwrap();
        assert_eq!(st.linkname, "/etc");
        assert!(bk_fsutil::mode::is_symlink(st.mode));
    }
}
