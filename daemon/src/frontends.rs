//! What the daemon lends the built-in frontends and the image sources:
//! files read out of snapshots, image configs, registry hosts and
//! credentials.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use async_trait::async_trait;
use bk_cache::Ref;
use bk_frontend::bridge::{BridgeServices, ResultFiles};
use bk_frontend::dockerfile::convert::ImageResolver;
use tonic::Status;

/// Reads files of snapshots, never following a link out of them.
pub struct SnapshotFiles;

#[async_trait]
impl ResultFiles<Ref> for SnapshotFiles {
    async fn read_file(
        &self,
        result: &Ref,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Status> {
        let root = result.path().to_path_buf();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || read_file(&root, &path, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    }
}

/// Opens regular file `path` of the tree at `root`: resolved inside the
/// tree, looked at before it is opened (opening a device node can have
/// effects), never through a final symlink. Missing: `NotFound`.
pub(crate) fn open_regular(
    root: &std::path::Path,
    path: &str,
) -> Result<(std::fs::File, std::fs::Metadata), Status> {
    let full = bk_fileops::resolve_in_root(root, path, true)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let failed = |op: &str, e: std::io::Error| {
        let message = format!("{op} {path}: {e}");
        if e.kind() == std::io::ErrorKind::NotFound {
            Status::not_found(message)
        } else {
            Status::invalid_argument(message)
        }
    };
    let not_regular = || Status::invalid_argument(format!("{path} is not a regular file"));
    match std::fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(not_regular()),
        Err(e) => return Err(failed("open", e)),
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&full)
        .map_err(|e| failed("open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Status::internal(format!("stat {path}: {e}")))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, meta))
}

fn read_file(root: &std::path::Path, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Status> {
    let (file, meta) = match open_regular(root, path) {
        Ok(opened) => opened,
        Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
        Err(status) => return Err(status),
    };
    if meta.len() > limit as u64 {
        return Err(Status::invalid_argument(format!(
            "{path} is larger than {limit} bytes"
        )));
    }
    let mut data = Vec::new();
    file.take(limit as u64)
        .read_to_end(&mut data)
        .map_err(|e| Status::internal(format!("read {path}: {e}")))?;
    Ok(Some(data))
}

/// Image configs for `FROM <image>`, pulled through the worker's image
/// sources (so the layers are there when the build needs them).
pub struct PulledImages(pub Arc<bk_ops::image::ImageSources>, pub Vec<String>);

#[async_trait]
impl ImageResolver for PulledImages {
    async fn resolve(
        &self,
        reference: &str,
        platform: &bk_proto::pb::Platform,
        mode: &str,
    ) -> Result<(String, Vec<u8>), String> {
        let wanted = bk_image::types::Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        };
        let mode = bk_ops::image::ResolveMode::parse(mode)?;
        self.0
            .config(reference, &wanted, mode, self.1.clone())
            .await
    }
}

pub fn services(
    images: Arc<bk_ops::image::ImageSources>,
    session_group: Vec<String>,
) -> BridgeServices<Ref> {
    BridgeServices {
        files: Arc::new(SnapshotFiles),
        images: Arc::new(PulledImages(images, session_group)),
    }
}

/// Registry credentials from the sessions of the build that asks (set
/// around each pull with [`bk_ops::image::with_session_group`]); never from
/// another client's session. Without a build, anonymous.
pub struct SessionCredentials(pub Arc<bk_session::SessionManager>);

impl bk_image::registry::auth::CredentialsProvider for SessionCredentials {
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<bk_image::registry::auth::Credentials>> {
        Box::pin(async move {
            let ids = bk_ops::image::current_session_group()?;
            let found = bk_session::auth::credentials(&self.0, &ids, host)
                .await
                .ok()?;
            if found.username.is_empty() && found.secret.is_empty() {
                return None;
            }
            Some(bk_image::registry::auth::Credentials::new(
                found.username,
                found.secret,
            ))
        })
    }
}

/// The registry hosts of the daemon's `[registry."host"]` settings.
pub fn registry_hosts(
    config: &std::collections::BTreeMap<String, crate::config::RegistryConfig>,
) -> Result<bk_image::registry::hosts::RegistryHosts, String> {
    bk_image::registry::hosts::RegistryHosts::new(config.clone()).map_err(|e| e.to_string())
}
