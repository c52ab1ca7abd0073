//! The `image`, `oci` and `docker` exporters: a result snapshot as an
//! image.
//!
//! Layers are the diffs along the snapshot's `base` chain (an exec's root
//! input, a file op's base tree, the layer below in a pulled image), bottom
//! first. A snapshot's layer is made once per compression and remembered in
//! the cache database, so re-exporting an unchanged result compresses
//! nothing; layers of pulled images are their registry blobs. Start at
//! [`export_image`].

use std::collections::BTreeMap;

use base64::Engine as _;
use bk_cache::{CacheManager, Ref};
use bk_image::export::{self, ConfigInput, ImageOptions, LayerMeta, PushOptions};
use bk_image::images::ImageStore;
use bk_image::layer::{self, Compression, Layer, LayerOptions};
use bk_image::{ContentStore, Descriptor, Digest, Platform, Reference};
use serde::{Deserialize, Serialize};

/// Which archive or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageExporter {
    Image,
    Oci,
    Docker,
}

/// A layer remembered for a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownLayer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

fn layer_key(snapshot: &str, variant: &str) -> String {
    format!("layer:{snapshot}:{variant}")
}

/// Remembers `layer` as snapshot `id`'s diff from its base, made as
/// `variant` says (`pulled`, or the compression).
pub fn remember_layer(
    cache: &CacheManager,
    id: &str,
    variant: &str,
    layer: &KnownLayer,
) -> Result<(), bk_cache::CacheError> {
    let json = serde_json::to_string(layer).map_err(|e| bk_cache::CacheError::Db(e.to_string()))?;
    cache.set_meta(&layer_key(id, variant), &json)
}

/// What content garbage collection keeps (blocking): every named image,
/// and the layers remembered for snapshots that still exist. Layers
/// remembered for pruned snapshots are forgotten.
pub fn content_roots(
    cache: &CacheManager,
    images: &ImageStore,
) -> Result<Vec<Descriptor>, bk_cache::CacheError> {
    let mut roots: Vec<Descriptor> = images.list().into_iter().map(|r| r.target).collect();
    for (key, json) in cache.named_with_prefix("layer:")? {
        let Some(snapshot) = key
            .strip_prefix("layer:")
            .and_then(|rest| rest.rsplit_once(':'))
            .map(|(id, _variant)| id)
        else {
            continue;
        };
        if cache.record(snapshot)?.is_none() {
            cache.delete_named(&key)?;
            continue;
        }
        let Ok(known) = serde_json::from_str::<KnownLayer>(&json) else {
            continue;
        };
        if let Ok(digest) = Digest::parse(&known.digest) {
            roots.push(Descriptor::new(&known.media_type, digest, known.size));
        }
    }
    Ok(roots)
}

fn known_layer(cache: &CacheManager, id: &str, variant: &str) -> Option<KnownLayer> {
    let json = cache.meta(&layer_key(id, variant)).ok()??;
    serde_json::from_str(&json).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ImageExportError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> ImageExportError {
    ImageExportError::Failed(e.to_string())
}

/// Exporter attrs as BuildKit reads them.
pub struct ImageExportOptions {
    pub names: Vec<Reference>,
    pub push: bool,
    pub push_by_digest: bool,
    pub oci_media_types: bool,
    pub compression: Compression,
    pub force_compression: bool,
    pub epoch: Option<i64>,
    pub rewrite_timestamp: bool,
    pub annotations: BTreeMap<String, String>,
    /// `store` (default true): name the image in the image store.
    pub store: bool,
    /// `unpack`: the result's snapshots become the image's unpacked
    /// layer chain, so `FROM` this image unpacks nothing.
    pub unpack: bool,
    /// `name-canonical`: also store the name with `@digest`.
    pub name_canonical: bool,
    /// `dangling-name-prefix`: `<prefix>@<digest>` is a name too (the only
    /// one with `danging-name-empty-only`, BuildKit's spelling, when
    /// names were given).
    pub dangling_name_prefix: Option<String>,
    pub dangling_empty_only: bool,
    /// `registry.insecure`: push over HTTPS without verification, falling
    /// back to plain HTTP.
    pub insecure: bool,
    /// `tar` (oci, docker; default true): false writes the blobs into the
    /// client's content store instead of an archive.
    pub tar: bool,
}

fn truthy(
    attrs: &BTreeMap<String, String>,
    key: &str,
    default: bool,
) -> Result<bool, ImageExportError> {
    match attrs.get(key).map(String::as_str) {
        None => Ok(default),
        Some("" | "true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ImageExportError::Invalid(format!(
            "non-bool value {other:?} for {key}"
        ))),
    }
}

impl ImageExportOptions {
    pub fn from_attrs(
        kind: ImageExporter,
        attrs: &BTreeMap<String, String>,
    ) -> Result<ImageExportOptions, ImageExportError> {
        let mut names = Vec::new();
        for name in attrs
            .get("name")
            .map(|n| {
                n.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        {
            let r = Reference::parse_normalized_named(name).map_err(|e| {
                ImageExportError::Invalid(format!("invalid reference {name:?}: {e}"))
            })?;
            names.push(r.tag_name_only());
        }
        let level = attrs
            .get("compression-level")
            .map(|l| {
                l.parse::<i32>().map_err(|_| {
                    ImageExportError::Invalid(format!("invalid compression-level {l:?}"))
                })
            })
            .transpose()?;
        let compression = match attrs.get("compression").map(String::as_str) {
            None | Some("" | "gzip") => Compression::Gzip {
                level: level.map_or(6, |l| l.clamp(0, 9) as u32),
            },
            Some("uncompressed") => Compression::Uncompressed,
            Some("zstd") => Compression::Zstd {
                level: level.unwrap_or(3),
            },
            Some(other) => {
                return Err(ImageExportError::Invalid(format!(
                    "unsupported compression type {other}"
                )));
            }
        };
        let epoch = attrs
            .get("source-date-epoch")
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ImageExportError::Invalid(format!("invalid SOURCE_DATE_EPOCH {v:?}"))
                })
            })
            .transpose()?;
        let annotations = attrs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("annotation.")
                    .or_else(|| k.strip_prefix("annotation-manifest."))
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        Ok(ImageExportOptions {
            names,
            push: truthy(attrs, "push", false)?,
            push_by_digest: truthy(attrs, "push-by-digest", false)?,
            oci_media_types: truthy(attrs, "oci-mediatypes", kind == ImageExporter::Oci)?,
            compression,
            force_compression: truthy(attrs, "force-compression", false)?,
            epoch,
            rewrite_timestamp: truthy(attrs, "rewrite-timestamp", false)?,
            annotations,
            // Only the image exporter names images in the store.
            store: kind == ImageExporter::Image && truthy(attrs, "store", true)?,
            unpack: truthy(attrs, "unpack", false)?,
            name_canonical: truthy(attrs, "name-canonical", false)?,
            dangling_name_prefix: attrs
                .get("dangling-name-prefix")
                .filter(|p| !p.is_empty())
                .cloned(),
            dangling_empty_only: truthy(attrs, "danging-name-empty-only", false)?,
            insecure: truthy(attrs, "registry.insecure", false)?,
            tar: match attrs.get("tar").map(String::as_str) {
                None | Some("" | "true" | "1") => true,
                Some("false" | "0") => false,
                Some(_) => {
                    return Err(ImageExportError::Invalid(
                        "non-bool value specified for tar".into(),
                    ));
                }
            },
        })
    }
}

fn variant(opts: &ImageExportOptions) -> String {
    let c = match opts.compression {
        Compression::Uncompressed => "none".to_string(),
        Compression::Gzip { level } => format!("gzip{level}"),
        Compression::Zstd { level } => format!("zstd{level}"),
    };
    let ts = match (opts.rewrite_timestamp, opts.epoch) {
        (true, Some(e)) => format!("-ts{e}"),
        _ => String::new(),
    };
    // The blob is the same whichever media type names it.
    format!("{c}{ts}")
}

/// The snapshot chain under `result`, bottom first.
fn chain(cache: &CacheManager, result: &Ref) -> Result<Vec<Ref>, ImageExportError> {
    let mut out = vec![result.clone()];
    let mut current = result.id().to_string();
    for _ in 0..4096 {
        let record = cache.record(&current).map_err(failed)?;
        let Some(base) = record.and_then(|r| r.base) else {
            break;
        };
        let held = cache
            .get(&base)
            .map_err(failed)?
            .ok_or_else(|| failed(format!("snapshot {base} below the result was pruned")))?;
        out.push(held);
        current = base;
    }
    out.reverse();
    Ok(out)
}

/// The layers of `result`'s chain, made where not yet known.
async fn layers(
    cache: &CacheManager,
    store: &ContentStore,
    result: &Ref,
    opts: &ImageExportOptions,
) -> Result<(Vec<Layer>, Vec<LayerMeta>, Vec<String>), ImageExportError> {
    let variant = variant(opts);
    // Every database read in one go, off the async threads: the chain,
    // each snapshot's record, and the layer already known for it.
    let reuse_pulled = !opts.force_compression && !opts.rewrite_timestamp;
    let (c, r, v) = (cache.clone(), result.clone(), variant.clone());
    let planned = tokio::task::spawn_blocking(move || {
        chain(&c, &r).map(|snapshots| {
            snapshots
                .into_iter()
                .map(|snapshot| {
                    let id = snapshot.id();
                    let known = reuse_pulled
                        .then(|| known_layer(&c, id, "pulled"))
                        .flatten()
                        .or_else(|| known_layer(&c, id, &v));
                    let record = c.record(id).ok().flatten();
                    (snapshot, record, known)
                })
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(failed)??;
    let layer_opts = LayerOptions {
        compression: opts.compression,
        oci_media_types: opts.oci_media_types,
        diff: layer::DiffOptions {
            rewrite_timestamp: opts.epoch.filter(|_| opts.rewrite_timestamp),
            ..Default::default()
        },
    };
    let mut out = Vec::new();
    let mut meta = Vec::new();
    let mut ids = Vec::new();
    let mut below: Option<Ref> = None;
    for (snapshot, record, known) in planned {
        let id = snapshot.id().to_string();
        let known = match known {
            Some(k)
                if store
                    .exists(&parse_digest(&k.digest)?)
                    .await
                    .unwrap_or(false) =>
            {
                Some(k)
            }
            _ => None,
        };
        let layer = match known {
            Some(k) => Layer {
                descriptor: Descriptor::new(
                    &export::convert_layer_media_type(&k.media_type, opts.oci_media_types),
                    parse_digest(&k.digest)?,
                    k.size,
                ),
                diff_id: parse_digest(&k.diff_id)?,
                uncompressed_size: 0,
            },
            None => {
                let made = layer::create_layer(
                    store,
                    below.as_ref().map(|b| b.path()),
                    snapshot.path(),
                    &layer_opts,
                )
                .await
                .map_err(failed)?;
                let known = KnownLayer {
                    media_type: made.descriptor.media_type.clone(),
                    digest: made.descriptor.digest.to_string(),
                    size: made.descriptor.size,
                    diff_id: made.diff_id.to_string(),
                };
                let (c, id2, v) = (cache.clone(), id.clone(), variant.clone());
                tokio::task::spawn_blocking(move || remember_layer(&c, &id2, &v, &known))
                    .await
                    .map_err(failed)?
                    .map_err(failed)?;
                made
            }
        };
        meta.push(LayerMeta {
            created: record
                .as_ref()
                .map(|r| export::Timestamp::from_unix(r.created_at as i64, 0)),
            description: record.map(|r| r.description).unwrap_or_default(),
        });
        out.push(layer);
        ids.push(id);
        below = Some(snapshot);
    }
    Ok((out, meta, ids))
}

fn parse_digest(d: &str) -> Result<Digest, ImageExportError> {
    Digest::parse(d).map_err(failed)
}

/// What an export wrote, for the archive and the response.
pub struct ExportedImage {
    /// The root: the manifest, or the index of a multi-platform image.
    pub manifest: Descriptor,
    /// The config of a single-platform image.
    pub config_digest: Option<Digest>,
    /// The names given, and the dangling name.
    pub names: Vec<Reference>,
    /// Keeps the image's blobs from garbage collection while it is sent.
    _lease: bk_image::Lease,
}

/// One platform's result to export, with its image config from the
/// frontend (`containerimage.config[/<platform>]`).
pub struct ExportInput<'a> {
    /// None: an empty filesystem, an image without layers.
    pub result: Option<&'a Ref>,
    pub config: Option<&'a [u8]>,
    pub platform: Platform,
}

/// Where an export writes besides the content store.
pub struct ExportTargets<'a> {
    pub registry: &'a bk_image::registry::RegistryClient,
    pub images: &'a ImageStore,
    /// Content GC's lock: held shared until the image's blobs are named
    /// or leased.
    pub gc_lock: &'a tokio::sync::RwLock<()>,
}

/// Builds the image of `result` (config from the frontend's
/// `containerimage.config`, if any) into the content store, and pushes it
/// when asked.
pub async fn export_image(
    cache: &CacheManager,
    store: &ContentStore,
    targets: &ExportTargets<'_>,
    inputs: &[ExportInput<'_>],
    multi_platform: bool,
    opts: &ImageExportOptions,
) -> Result<ExportedImage, ImageExportError> {
    // Until the blobs are named or leased, garbage collection waits; it
    // is released before any slow transfer (pushes, the client's copy).
    let no_gc = targets.gc_lock.read().await;
    let mut manifests = Vec::new();
    let mut config_digest = None;
    let mut unpack = None;
    for input in inputs {
        let (layers, meta, snapshot_ids) = match input.result {
            Some(result) => layers(cache, store, result, opts).await?,
            None => Default::default(),
        };
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let blob = export::image_config(&ConfigInput {
            config: input.config,
            base_config: None,
            default_platform: &input.platform,
            diff_ids: &diff_ids,
            layer_meta: &meta,
            epoch: opts.epoch,
            inline_cache: None,
        })
        .map_err(failed)?;
        let written = export::write_image(
            store,
            &blob.bytes,
            &layers,
            &ImageOptions {
                oci_media_types: opts.oci_media_types,
                annotations: opts.annotations.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(failed)?;
        let mut desc = written.manifest_desc;
        if multi_platform {
            // The index says which manifest is which platform: the
            // config's own, as the frontend wrote it.
            let config: bk_image::Image = serde_json::from_slice(&blob.bytes).map_err(failed)?;
            desc.platform = Some(config.platform);
        } else {
            config_digest = Some(written.config_desc.digest);
            unpack = Some((diff_ids, snapshot_ids));
        }
        manifests.push(desc);
    }
    let root = if multi_platform {
        export::write_index(store, manifests, opts.oci_media_types, BTreeMap::new())
            .await
            .map_err(failed)?
    } else {
        manifests
            .pop()
            .ok_or_else(|| failed("the build has no result to export"))?
    };
    let mut names = opts.names.clone();
    if let Some(prefix) = &opts.dangling_name_prefix
        && (names.is_empty() || !opts.dangling_empty_only)
    {
        let dangling = format!("{prefix}@{}", root.digest);
        names.push(Reference::parse_normalized_named(&dangling).map_err(|e| {
            ImageExportError::Invalid(format!("invalid dangling-name-prefix {prefix:?}: {e}"))
        })?);
    }
    if opts.push && names.is_empty() {
        return Err(ImageExportError::Invalid(
            "push requires a name: --output type=image,name=REF,push=true".into(),
        ));
    }
    if opts.store {
        let mut stored = Vec::new();
        for name in &names {
            stored.push(name.to_string());
            if opts.name_canonical && name.digest().is_none() {
                stored.push(name.with_digest(root.digest.clone()).to_string());
            }
        }
        let (images, target) = (targets.images.clone(), root.clone());
        tokio::task::spawn_blocking(move || {
            stored
                .iter()
                .try_for_each(|n| images.put(n, &target).map(|_| ()))
        })
        .await
        .map_err(failed)?
        .map_err(failed)?;
    }
    if let Some((diff_ids, snapshot_ids)) =
        unpack.filter(|_| opts.unpack && !opts.rewrite_timestamp)
    {
        let chain = chain_ids(&diff_ids);
        let c = cache.clone();
        tokio::task::spawn_blocking(move || name_layer_chain(&c, &chain, &snapshot_ids))
            .await
            .map_err(failed)??;
    }
    let lease = store.lease();
    let blobs = bk_image::gc::reachable(store, vec![root.clone()])
        .await
        .map_err(failed)?;
    for digest in &blobs {
        lease.add(digest);
    }
    drop(no_gc);
    if opts.push {
        for name in &names {
            push_one(targets.registry, store, name, &root, opts).await?;
        }
    }
    Ok(ExportedImage {
        manifest: root,
        config_digest,
        names,
        _lease: lease,
    })
}

/// Pushes `root` under `name`: by its tag, or by digest alone when the
/// name is canonical (a dangling name) or `push-by-digest` says so.
async fn push_one(
    registry: &bk_image::registry::RegistryClient,
    store: &ContentStore,
    name: &Reference,
    root: &Descriptor,
    opts: &ImageExportOptions,
) -> Result<(), ImageExportError> {
    let by_digest = opts.push_by_digest || (name.digest().is_some() && name.tag().is_none());
    let target = if name.digest().is_some() {
        name.trim_named()
    } else {
        name.clone()
    };
    let insecure_client;
    let client = if opts.insecure {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            target.domain().to_string(),
            bk_image::RegistryConfig {
                plain_http: Some(true),
                insecure: Some(true),
                ..Default::default()
            },
        );
        let hosts = bk_image::RegistryHosts::new(hosts).map_err(failed)?;
        insecure_client = registry.with_hosts(hosts);
        &insecure_client
    } else {
        registry
    };
    let push_opts = PushOptions {
        by_digest,
        ..Default::default()
    };
    export::push(client, store, &target, root, &push_opts)
        .await
        .map_err(|e| failed(format!("failed to push {name}: {e}")))?;
    Ok(())
}

/// containerd's chain ids of a layer stack: the first diff id, then
/// `sha256(parent + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(parent) => {
                let hash = Sha256::digest(format!("{parent} {d}").as_bytes());
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        out.push(next);
    }
    out
}

/// Names each snapshot as the unpacked layer chain it holds, where no live
/// snapshot has that name yet.
fn name_layer_chain(
    cache: &CacheManager,
    chain: &[String],
    snapshot_ids: &[String],
) -> Result<(), ImageExportError> {
    for (chain_id, id) in chain.iter().zip(snapshot_ids) {
        let name = crate::image::layer_chain_key(chain_id);
        let live = cache
            .named(&name)
            .map_err(failed)?
            .is_some_and(|existing| cache.record(&existing).ok().flatten().is_some());
        if !live {
            cache.set_named(&name, id).map_err(failed)?;
        }
    }
    Ok(())
}

/// The exporter response keys clients read.
pub fn response(image: &ExportedImage) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(
        "containerimage.digest".to_string(),
        image.manifest.digest.to_string(),
    );
    if let Some(config) = &image.config_digest {
        out.insert(
            "containerimage.config.digest".to_string(),
            config.to_string(),
        );
    }
    if let Ok(json) = bk_image::json::to_vec(&image.manifest) {
        out.insert(
            "containerimage.descriptor".to_string(),
            base64::engine::general_purpose::STANDARD.encode(json),
        );
    }
    if !image.names.is_empty() {
        out.insert(
            "image.name".to_string(),
            image
                .names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    out
}

/// The descriptor the `oci` and `docker` exporters answer with: the root,
/// annotated with its creation time (the epoch when given), as BuildKit's
/// clients index it.
pub fn archive_descriptor(image: &mut ExportedImage, epoch: Option<i64>) {
    let created = match epoch {
        Some(e) => export::Timestamp::from_unix(e, 0),
        None => export::Timestamp::from_system_time(std::time::SystemTime::now()),
    };
    image
        .manifest
        .annotations
        .entry("org.opencontainers.image.created".to_string())
        .or_insert_with(|| created.to_rfc3339_utc_seconds());
}

/// Copies `image` into the client's `export` content store (`tar=false`):
/// configs and layers first, then each manifest, the root (a manifest or
/// an index) last; each skipped when the store has it.
pub async fn send_to_client_store(
    session: &bk_session::Session,
    store: &ContentStore,
    image: &ExportedImage,
) -> Result<(), ImageExportError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let read = |desc: Descriptor| async move {
        let bytes = store
            .read_blob(&desc.digest, 16 << 20)
            .await
            .map_err(failed)?;
        Ok::<_, ImageExportError>(bytes)
    };
    let mut manifests = Vec::new();
    if bk_image::media_types::is_index_type(&image.manifest.media_type) {
        let index: bk_image::Index =
            serde_json::from_slice(&read(image.manifest.clone()).await?).map_err(failed)?;
        manifests.extend(index.manifests);
    } else {
        manifests.push(image.manifest.clone());
    }
    let send = |desc: Descriptor| async move {
        let file = store.open_blob(&desc.digest).await.map_err(failed)?;
        bk_session::content::write_blob(
            session,
            bk_session::content::EXPORT_STORE,
            &desc.media_type,
            desc.digest.as_str(),
            desc.size,
            file,
        )
        .await
        .map_err(|e| failed(format!("write {} to the client's store: {e}", desc.digest)))
    };
    for desc in &manifests {
        let manifest: bk_image::Manifest =
            serde_json::from_slice(&read(desc.clone()).await?).map_err(failed)?;
        let mut blobs = vec![manifest.config.clone()];
        blobs.extend(manifest.layers.iter().cloned());
        futures::stream::iter(blobs.into_iter().map(send))
            .buffer_unordered(4)
            .try_collect::<Vec<bool>>()
            .await?;
        send(desc.clone()).await?;
    }
    if manifests.first().map(|m| &m.digest) != Some(&image.manifest.digest) {
        send(image.manifest.clone()).await?;
    }
    Ok(())
}

/// Writes the OCI or Docker archive of `image` to `out` (blocking).
pub fn write_archive<W: std::io::Write>(
    store: &ContentStore,
    kind: ImageExporter,
    image: &ExportedImage,
    out: W,
) -> Result<W, ImageExportError> {
    match kind {
        ImageExporter::Docker => {
            export::write_docker_archive(store, &image.manifest, &image.names, out)
        }
        _ => export::write_oci_archive(store, &image.manifest, &image.names, out),
    }
    .map_err(failed)
}
