//! `docker-image://REF`: an image's layers unpacked into snapshots.
//!
//! The cache key is the image's resolved digest (and the platform), so a
//! tag that moves to new content is a new key, and a pinned digest needs no
//! registry at all once pulled. Each prefix of the layer chain is its own
//! snapshot, found again by chain id: images sharing base layers share
//! their snapshots, and only the layers not yet unpacked are applied (each
//! onto a hard-linked copy of the one below).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_image::images::ImageStore;
use bk_image::pull::{BlobProgress, Puller};
use bk_image::reference::Reference;
use bk_image::types::{Descriptor, Platform};
use bk_llb::Digest;
use bk_proto::pb;
use bk_solver::{Op, OpContext, OpError};
use prost_types::Timestamp;

tokio::task_local! {
    /// The sessions of the build a pull is for: where registry credentials
    /// may come from.
    static SESSION_GROUP: Vec<String>;
}

/// Runs `f` with `group` as the build's sessions for credential lookups.
pub async fn with_session_group<F: std::future::Future>(group: Vec<String>, f: F) -> F::Output {
    SESSION_GROUP.scope(group, f).await
}

/// The sessions of the build being served, if any.
pub fn current_session_group() -> Option<Vec<String>> {
    SESSION_GROUP.try_with(|g| g.clone()).ok()
}

/// What every image source of a worker shares.
pub struct ImageSources {
    pub puller: Puller,
    pub cache: CacheManager,
    /// Named images (the image exporter's), for `image-resolve-mode=local`.
    pub images: ImageStore,
    /// Exports hold it shared while their blobs are not yet remembered or
    /// named; content garbage collection holds it alone.
    pub gc_lock: tokio::sync::RwLock<()>,
    /// One unpack of a chain at a time.
    chain_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Resolutions of this daemon's life: a tag pulled once resolves to the
    /// same digest until `image.resolvemode=pull` asks again.
    resolved: Mutex<HashMap<(String, String), String>>,
}

impl ImageSources {
    pub fn new(puller: Puller, cache: CacheManager, images: ImageStore) -> ImageSources {
        ImageSources {
            puller,
            cache,
            images,
            gc_lock: tokio::sync::RwLock::new(()),
            chain_locks: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
        }
    }

    fn chain_lock(&self, chain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.chain_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(chain.to_string()).or_default().clone()
    }

    /// The image's config for `platform` (pulling it), with the digest it
    /// resolved to: what `FROM` needs before any layer is unpacked.
    pub async fn config(
        &self,
        reference: &str,
        platform: &Platform,
        mode: ResolveMode,
        session_group: Vec<String>,
    ) -> Result<(String, Vec<u8>), String> {
        let parsed = Reference::parse_normalized_named(reference)
            .map_err(|e| e.to_string())?
            .tag_name_only();
        let pulled = with_session_group(session_group, async {
            match self.local_image(&parsed, mode).await {
                Some(top) => {
                    self.puller
                        .pull_resolved(&parsed, top, platform, None)
                        .await
                }
                None => self.puller.pull(&parsed, platform, None).await,
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        self.remember(&parsed, platform, pulled.descriptor.digest.as_str());
        // The config blob as the registry has it, as BuildKit answers.
        let config = self
            .puller
            .store()
            .read_blob(&pulled.manifest.config.digest, 16 << 20)
            .await
            .map_err(|e| e.to_string())?;
        Ok((pulled.descriptor.digest.to_string(), config))
    }

    /// The image store's image for `reference` when `mode` prefers local
    /// images: by its full name (`docker.io/library/x:tag`), and with a
    /// digest in the reference only if the stored image is that one.
    async fn local_image(&self, reference: &Reference, mode: ResolveMode) -> Option<Descriptor> {
        if mode != ResolveMode::Local {
            return None;
        }
        let key = match reference.tag() {
            Some(tag) => format!("{}:{tag}", reference.name()),
            None => format!("{}:latest", reference.name()),
        };
        let images = self.images.clone();
        let record = tokio::task::spawn_blocking(move || images.get(&key))
            .await
            .ok()
            .flatten()?;
        match reference.digest() {
            Some(d) if *d != record.target.digest => None,
            _ => Some(record.target),
        }
    }

    fn remember(&self, reference: &Reference, platform: &Platform, digest: &str) {
        let key = (reference.to_string(), platform_string(platform));
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, digest.to_string());
    }
}

fn platform_string(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        s.push('/');
        s.push_str(&p.variant);
    }
    s
}

/// The cache name of the snapshot holding the unpacked layer chain
/// `chain` (shared by pulls and the image exporter's `unpack`).
pub(crate) fn layer_chain_key(chain: &str) -> String {
    format!("layer-chain:{chain}")
}

/// The platform an op asks for, or the worker's.
pub fn op_platform(op: Option<&pb::Platform>, default: &Platform) -> Platform {
    match op {
        Some(p) if !p.os.is_empty() && !p.architecture.is_empty() => {
            let mut out = default.clone();
            out.os = p.os.clone();
            out.architecture = p.architecture.clone();
            out.variant = p.variant.clone();
            out
        }
        _ => default.clone(),
    }
}

/// `image.resolvemode`: where a tag is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolveMode {
    /// The registry (a tag seen before in this daemon's life keeps its
    /// digest).
    #[default]
    Default,
    /// The registry, every time.
    Pull,
    /// The image store first, then the registry.
    Local,
}

impl ResolveMode {
    /// BuildKit's attr values; anything else is an error.
    pub fn parse(value: &str) -> Result<ResolveMode, String> {
        match value {
            "" | "default" => Ok(ResolveMode::Default),
            "pull" => Ok(ResolveMode::Pull),
            "local" => Ok(ResolveMode::Local),
            other => Err(format!("invalid resolvemode: {other}")),
        }
    }
}

/// One `docker-image://` vertex.
pub struct ImageSource {
    reference: Reference,
    platform: Platform,
    mode: ResolveMode,
    sources: Arc<ImageSources>,
    /// The digest the key was computed from, for `exec`, and the image
    /// store's descriptor when it came from there.
    resolved: tokio::sync::Mutex<Option<(Reference, Option<Descriptor>)>>,
}

impl ImageSource {
    pub fn new(
        identifier: &str,
        attrs: &BTreeMap<String, String>,
        platform: Platform,
        sources: Arc<ImageSources>,
    ) -> Result<ImageSource, OpError> {
        let reference = Reference::parse_normalized_named(identifier)
            .map_err(|e| OpError::new(format!("invalid image reference {identifier:?}: {e}")))?
            .tag_name_only();
        let mode = ResolveMode::parse(
            attrs
                .get("image.resolvemode")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(OpError::new)?;
        Ok(ImageSource {
            reference,
            platform,
            mode,
            sources,
            resolved: tokio::sync::Mutex::new(None),
        })
    }

    async fn resolve(&self, group: &[String]) -> Result<(Reference, Option<Descriptor>), OpError> {
        if let Some(r) = self.resolved.lock().await.clone() {
            return Ok(r);
        }
        if let Some(local) = self.sources.local_image(&self.reference, self.mode).await {
            let resolved = (
                self.reference.clone().with_digest(local.digest.clone()),
                Some(local),
            );
            *self.resolved.lock().await = Some(resolved.clone());
            return Ok(resolved);
        }
        let reference = if self.reference.digest().is_some() {
            self.reference.clone()
        } else {
            let key = (self.reference.to_string(), platform_string(&self.platform));
            let known = (self.mode != ResolveMode::Pull)
                .then(|| {
                    self.sources
                        .resolved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&key)
                        .cloned()
                })
                .flatten();
            let digest = match known {
                Some(d) => d,
                None => {
                    let resolved = with_session_group(
                        group.to_vec(),
                        self.sources.puller.client().resolve(&self.reference),
                    )
                    .await
                    .map_err(|e| OpError::new(e.to_string()))?;
                    let d = resolved.descriptor.digest.to_string();
                    self.sources.remember(&self.reference, &self.platform, &d);
                    d
                }
            };
            let digest = bk_image::digest::Digest::parse(&digest)
                .map_err(|e| OpError::new(e.to_string()))?;
            self.reference.clone().with_digest(digest)
        };
        *self.resolved.lock().await = Some((reference.clone(), None));
        Ok((reference, None))
    }
}

fn now() -> Timestamp {
    Timestamp::from(std::time::SystemTime::now())
}

#[async_trait]
impl Op<Ref> for ImageSource {
    async fn cache_key(&self, ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        let (resolved, _) = self.resolve(&ctx.session_group).await?;
        let material = format!(
            "docker-image v1\0{}\0{}",
            resolved.digest().map(|d| d.to_string()).unwrap_or_default(),
            platform_string(&self.platform)
        );
        Ok(Digest::of(material.as_bytes()))
    }

    fn works_for_key(&self) -> bool {
        false
    }

    async fn exec(&self, ctx: &OpContext, _inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let (reference, local) = self.resolve(&ctx.session_group).await?;
        let progress = ctx.progress.clone();
        let started: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
        let report = Arc::new(move |p: &BlobProgress| {
            let id = p.digest.to_string();
            let begun = *started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id.clone())
                .or_insert_with(now);
            let done = matches!(
                p.state,
                bk_image::pull::BlobState::Done | bk_image::pull::BlobState::Exists
            );
            progress.status(&id, p.current as i64, p.total as i64, begun, done.then(now));
        });
        let pulled = with_session_group(ctx.session_group.to_vec(), async {
            match local {
                Some(top) => {
                    self.sources
                        .puller
                        .pull_resolved(&reference, top, &self.platform, Some(report))
                        .await
                }
                None => {
                    self.sources
                        .puller
                        .pull(&reference, &self.platform, Some(report))
                        .await
                }
            }
        })
        .await
        .map_err(|e| OpError::new(e.to_string()))?;

        // Unpack what is missing, bottom up, by chain id.
        let diff_ids = &pulled.config.rootfs.diff_ids;
        if diff_ids.len() < pulled.manifest.layers.len() {
            return Err(OpError::new(format!(
                "{reference}: the config lists {} layers, the manifest {}",
                diff_ids.len(),
                pulled.manifest.layers.len()
            )));
        }
        let chains = crate::image_export::chain_ids(&diff_ids[..pulled.manifest.layers.len()]);
        let mut parent: Option<Ref> = None;
        for (i, (layer, chain)) in pulled.manifest.layers.iter().zip(&chains).enumerate() {
            let diff_id = diff_ids[i].to_string();
            let name = layer_chain_key(chain);
            let lock = self.sources.chain_lock(chain);
            let _held = lock.lock().await;
            let cache = self.sources.cache.clone();
            let found = {
                let (cache, name) = (cache.clone(), name.clone());
                tokio::task::spawn_blocking(move || {
                    cache
                        .named(&name)
                        .ok()
                        .flatten()
                        .and_then(|id| cache.get(&id).ok().flatten())
                })
                .await
                .map_err(|e| OpError::new(e.to_string()))?
            };
            if let Some(found) = found {
                parent = Some(found);
                continue;
            }
            let blob = self.sources.puller.store().blob_path(&layer.digest);
            let media_type = layer.media_type.clone();
            let (layer_digest, layer_size) = (layer.digest.to_string(), layer.size);
            let below = parent.clone();
            let description = format!("pulled from {}", self.reference.familiar_string());
            let want = diff_id.clone();
            let snapshot = tokio::task::spawn_blocking(move || -> Result<Ref, OpError> {
                let err = |e: &dyn std::fmt::Display| OpError::new(e.to_string());
                let (id, dir) = cache.create_dir().map_err(|e| err(&e))?;
                let unpacked = (|| -> Result<(), OpError> {
                    if let Some(below) = &below {
                        bk_fileops::link_tree(below.path(), &dir).map_err(|e| err(&e))?;
                    }
                    let file = std::fs::File::open(&blob).map_err(|e| err(&e))?;
                    let applied = bk_image::unpack::apply_layer(
                        std::io::BufReader::new(file),
                        &media_type,
                        &dir,
                        &Default::default(),
                    )
                    .map_err(|e| err(&e))?;
                    if applied.diff_id.as_str() != want {
                        return Err(OpError::new(format!(
                            "layer {}: uncompressed digest {} does not match the config's {want}",
                            blob.display(),
                            applied.diff_id
                        )));
                    }
                    Ok(())
                })();
                if let Err(e) = unpacked {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                let parents = below.iter().map(|b| b.id().to_string()).collect();
                let snapshot = cache
                    .commit(&id, RecordType::Regular, &description, parents, false)
                    .map_err(|e| err(&e))?;
                if let Some(below) = &below {
                    cache.set_base(&id, below.id()).map_err(|e| err(&e))?;
                }
                // The pulled blob is this snapshot's layer: exports reuse it.
                let known = crate::image_export::KnownLayer {
                    media_type: media_type.clone(),
                    digest: layer_digest,
                    size: layer_size,
                    diff_id: want.clone(),
                };
                crate::image_export::remember_layer(&cache, &id, "pulled", &known)
                    .map_err(|e| err(&e))?;
                cache.set_named(&name, &id).map_err(|e| err(&e))?;
                Ok(snapshot)
            })
            .await
            .map_err(|e| OpError::new(e.to_string()))??;
            parent = Some(snapshot);
        }
        match parent {
            Some(top) => Ok(vec![top]),
            None => {
                // An image without layers: an empty tree.
                let cache = self.sources.cache.clone();
                tokio::task::spawn_blocking(move || {
                    let (id, _) = cache
                        .create_dir()
                        .map_err(|e| OpError::new(e.to_string()))?;
                    cache
                        .commit(&id, RecordType::Regular, "empty image", Vec::new(), false)
                        .map(|r| vec![r])
                        .map_err(|e| OpError::new(e.to_string()))
                })
                .await
                .map_err(|e| OpError::new(e.to_string()))?
            }
        }
    }
}
