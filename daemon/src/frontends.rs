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

fn read_file(root: &std::path::Path, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Status> {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Status::invalid_argument(format!("stat {path}: {e}"))),
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(&full)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Status::invalid_argument(format!("open {path}: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| Status::internal(format!("stat {path}: {e}")))?;
    if !meta.is_file() {
        return Err(Status::invalid_argument(format!(
            "{path} is not a regular file"
        )));
    }
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
    ) -> Result<(String, Vec<u8>), String> {
        let wanted = bk_image::types::Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        };
        self.0.config(reference, &wanted, self.1.clone()).await
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

/// The daemon's `[registry."host"]` settings in the image crate's terms.
pub fn registry_hosts(
    config: &std::collections::BTreeMap<String, crate::config::RegistryConfig>,
) -> Result<bk_image::registry::hosts::RegistryHosts, String> {
    use bk_image::registry::hosts::{KeyPair, RegistryConfig, RegistryHosts};
    let converted = config
        .iter()
        .map(|(host, c)| {
            (
                host.clone(),
                RegistryConfig {
                    mirrors: c.mirrors.clone(),
                    plain_http: c.plain_http,
                    insecure: c.insecure,
                    ca: c.ca.iter().map(Into::into).collect(),
                    keypair: c
                        .keypair
                        .iter()
                        .map(|k| KeyPair {
                            key: k.key.clone().into(),
                            cert: k.cert.clone().into(),
                        })
                        .collect(),
                    tlsconfigdir: c.tlsconfigdir.iter().map(Into::into).collect(),
                },
            )
        })
        .collect();
    RegistryHosts::new(converted).map_err(|e| e.to_string())
}
