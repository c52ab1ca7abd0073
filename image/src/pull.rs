//! Pulling an image — manifest (through its index), config and layers —
//! from a registry into the content store, as containerd's fetch handlers
//! and `images.Manifest` do for BuildKit.
//!
//! Start with [`Puller::new`] and [`Puller::pull`]: resolve the reference,
//! walk an index down to the manifest for the wanted platform
//! ([`platforms::select_manifest`]'s order; an entry without a platform is
//! accepted only if its config's platform matches, as containerd checks),
//! fetch the config and then the layers, three at a time.
//!
//! What holds whatever happens:
//! - Every blob is written through a content store [`Writer`] with its
//!   expected digest and size, so a blob whose bytes do not match is refused
//!   and leaves nothing behind; a download that breaks off is resumed with
//!   a `Range` request (or restarted) a bounded number of times, then fails
//!   with its ingest file deleted.
//! - Blobs already stored are not fetched again. Concurrent pulls through
//!   one `Puller` (or its clones) of the same digest download it once: the
//!   second waits for the first, then finds it stored (and downloads it
//!   itself if the first failed or was cancelled).
//! - Everything pulled is held by the returned [`Lease`] (taken before each
//!   blob is written), so garbage collection cannot take it before the
//!   caller records the image.
//!
//! Progress is reported per blob through a [`ProgressFn`], for the
//! daemon's `VertexStatus` updates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::{StreamExt as _, TryStreamExt as _};

use crate::content::{ContentError, ContentStore, Lease, Writer};
use crate::digest::Digest;
use crate::media_types::{self, DocumentError};
use crate::platforms::{self, MatchComparer};
use crate::reference::Reference;
use crate::registry::{BlobStream, MAX_MANIFEST_SIZE, RegistryClient, RegistryError};
use crate::types::{Descriptor, Image, Index, Manifest, Platform};

/// Largest image config read into memory.
pub const MAX_CONFIG_SIZE: u64 = 64 << 20;
/// containerd's default number of layers fetched at once.
pub const DEFAULT_CONCURRENCY: usize = 3;
/// Downloads of one blob (the first plus resumptions) before giving up.
const DOWNLOAD_ATTEMPTS: u32 = 3;
/// Bytes gathered from the network before each write to the store (each
/// write is a trip to a blocking thread).
const WRITE_CHUNK: usize = 1 << 20;
/// Indexes inside indexes, at most.
const MAX_INDEX_DEPTH: usize = 8;

/// Where one blob's transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobState {
    /// Another pull is downloading it; this one waits.
    Waiting,
    Downloading,
    /// Downloaded, verified and stored.
    Done,
    /// Already in the store: nothing to download.
    Exists,
}

/// One progress report for one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobProgress {
    pub digest: Digest,
    pub media_type: String,
    /// Bytes stored so far.
    pub current: u64,
    pub total: u64,
    pub state: BlobState,
}

/// Receives progress reports; called from the pulling tasks, so it should
/// be quick (record and return).
pub type ProgressFn = Arc<dyn Fn(&BlobProgress) + Send + Sync>;

/// A pulled image; its blobs are in the store and held by `lease`.
#[derive(Debug)]
pub struct PulledImage {
    /// The reference with the resolved digest.
    pub reference: Reference,
    /// What the reference resolved to (an index or a manifest).
    pub descriptor: Descriptor,
    /// The manifest chosen for the platform.
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    pub config: Image,
    /// Holds the index(es), manifest, config and layers.
    pub lease: Lease,
}

/// A pull failed. Messages name the image and the digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// containerd's words, then what was wanted and what there is.
    #[error(
        "no match for platform in manifest {digest}: not found (image {reference}: wanted {wanted}, available: {available})"
    )]
    NoMatch {
        reference: String,
        digest: Digest,
        wanted: String,
        available: String,
    },
    #[error("{reference}: manifest: invalid desc {digest}: {source}")]
    Document {
        reference: String,
        digest: Digest,
        #[source]
        source: DocumentError,
    },
    #[error("{reference}: parsing {what} {digest}: {source}")]
    Json {
        reference: String,
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: unexpected media type {media_type:?} for {digest}: not found")]
    UnexpectedMediaType {
        reference: String,
        digest: Digest,
        media_type: String,
    },
    #[error("{reference}: indexes nested deeper than {MAX_INDEX_DEPTH} at {digest}")]
    TooDeep { reference: String, digest: Digest },
    /// The content did not verify (digest or size) or could not be stored.
    #[error("{reference}: storing {digest}: {source}")]
    Content {
        reference: String,
        digest: Digest,
        #[source]
        source: ContentError,
    },
}

impl PullError {
    fn content(reference: &Reference, digest: &Digest) -> impl FnOnce(ContentError) -> PullError {
        let reference = reference.name();
        let digest = digest.clone();
        move |source| PullError::Content {
            reference,
            digest,
            source,
        }
    }
}

/// One in-flight download per digest: an async lock whose holder
/// downloads; others wait for it. Weak, so finished entries free
/// themselves.
type Inflight = Arc<Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>>;

/// Pulls images into one content store. Cheap to clone; clones share the
/// in-flight map, so concurrent pulls de-duplicate across them.
#[derive(Clone, Debug)]
pub struct Puller {
    client: RegistryClient,
    store: ContentStore,
    inflight: Inflight,
    concurrency: usize,
}

impl Puller {
    pub fn new(client: RegistryClient, store: ContentStore) -> Puller {
        Puller {
            client,
            store,
            inflight: Inflight::default(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Layers fetched at once (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Puller {
        self.concurrency = n.max(1);
        self
    }

    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Pulls `reference` (a tag or digest) for `platform`; see the module
    /// docs.
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        progress: Option<ProgressFn>,
    ) -> Result<PulledImage, PullError> {
        let resolved = self.client.resolve(reference).await?;
        self.pull_resolved(&resolved.reference, resolved.descriptor, platform, progress)
            .await
    }

    /// Pulls the image `top` (a manifest or index `reference` resolved to)
    /// for `platform`. Blobs already in the store are not fetched, so an
    /// image from the image store needs no registry at all.
    pub async fn pull_resolved(
        &self,
        reference: &Reference,
        top: Descriptor,
        platform: &Platform,
        progress: Option<ProgressFn>,
    ) -> Result<PulledImage, PullError> {
        let progress = progress.as_ref();
        let lease = self.store.lease();
        let comparer = MatchComparer::only(platform);
        let mut desc = top.clone();
        let mut depth = 0;
        let manifest = loop {
            let bytes = self
                .fetch_document(reference, &desc, &lease, progress)
                .await?;
            let mt = desc.media_type.as_str();
            if media_types::is_index_type(mt) {
                let index: Index = parse(reference, "index", &desc.digest, &bytes)?;
                let candidates = platforms::candidate_manifests(&index, &comparer);
                let Some(next) = candidates.first() else {
                    return Err(no_match(reference, &top, platform, &index));
                };
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(PullError::TooDeep {
                        reference: reference.to_string(),
                        digest: desc.digest.clone(),
                    });
                }
                desc = (*next).clone();
                continue;
            }
            if media_types::is_manifest_type(mt) {
                break parse::<Manifest>(reference, "manifest", &desc.digest, &bytes)?;
            }
            return Err(PullError::UnexpectedMediaType {
                reference: reference.to_string(),
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            });
        };

        self.fetch_blob(reference, &manifest.config, &lease, progress)
            .await?;
        let config_bytes = self
            .store
            .read_blob(&manifest.config.digest, MAX_CONFIG_SIZE)
            .await
            .map_err(PullError::content(reference, &manifest.config.digest))?;
        let config: Image = parse(reference, "config", &manifest.config.digest, &config_bytes)?;
        // containerd: an index entry without a platform is the image only if
        // its config says the right platform. A lone manifest is not checked.
        if desc.digest != top.digest
            && desc.platform.is_none()
            && !comparer.matches(&config.platform)
        {
            return Err(PullError::NoMatch {
                reference: reference.to_string(),
                digest: top.digest.clone(),
                wanted: platforms::format(platform),
                available: platforms::format(&config.platform),
            });
        }

        // Owned descriptors: a closure over borrowed ones makes the future
        // not provably Send (rust-lang/rust#64552), and pulls get spawned.
        let lease_ref = &lease;
        futures::stream::iter(manifest.layers.iter().cloned().map(|layer| async move {
            self.fetch_blob(reference, &layer, lease_ref, progress)
                .await
        }))
        .buffer_unordered(self.concurrency)
        .try_collect::<Vec<()>>()
        .await?;

        Ok(PulledImage {
            reference: reference.clone(),
            descriptor: top,
            manifest_descriptor: desc,
            manifest,
            config,
            lease,
        })
    }

    /// Fetches a manifest or index into the store and reads it back,
    /// checked against its media type.
    async fn fetch_document(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        lease: &Lease,
        progress: Option<&ProgressFn>,
    ) -> Result<Vec<u8>, PullError> {
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(RegistryError::ManifestTooLarge {
                object: format!("{}@{}", reference.name(), desc.digest),
                size: desc.size,
                limit: MAX_MANIFEST_SIZE,
            }
            .into());
        }
        self.fetch_blob(reference, desc, lease, progress).await?;
        let bytes = self
            .store
            .read_blob(&desc.digest, MAX_MANIFEST_SIZE)
            .await
            .map_err(PullError::content(reference, &desc.digest))?;
        media_types::check_document(&bytes, &desc.media_type).map_err(|source| {
            PullError::Document {
                reference: reference.to_string(),
                digest: desc.digest.clone(),
                source,
            }
        })?;
        Ok(bytes)
    }

    /// Makes sure the blob `desc` names is in the store (downloading it
    /// from `reference`'s repository if not) and held by `lease`.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        lease: &Lease,
        progress: Option<&ProgressFn>,
    ) -> Result<(), PullError> {
        let report = |current: u64, state: BlobState| {
            if let Some(p) = progress {
                p(&BlobProgress {
                    digest: desc.digest.clone(),
                    media_type: desc.media_type.clone(),
                    current,
                    total: desc.size,
                    state,
                });
            }
        };
        // Leased first, so nothing can delete it between the check (or the
        // commit) and the caller's use.
        lease.add(&desc.digest);
        let stored = |store: ContentStore, digest: Digest| async move {
            store
                .exists(&digest)
                .await
                .map_err(PullError::content(reference, &digest))
        };
        if stored(self.store.clone(), desc.digest.clone()).await? {
            report(desc.size, BlobState::Exists);
            return Ok(());
        }
        let gate = self.gate(&desc.digest);
        let _turn = match gate.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                report(0, BlobState::Waiting);
                gate.lock().await
            }
        };
        if stored(self.store.clone(), desc.digest.clone()).await? {
            report(desc.size, BlobState::Exists);
            return Ok(());
        }
        self.download(reference, desc, &report).await?;
        report(desc.size, BlobState::Done);
        Ok(())
    }

    fn gate(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(gate) = map.get(digest).and_then(Weak::upgrade) {
            return gate;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(digest.clone(), Arc::downgrade(&gate));
        gate
    }

    /// Downloads into a verified writer, resuming after a broken transfer.
    async fn download(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        report: &(dyn Fn(u64, BlobState) + Sync),
    ) -> Result<(), PullError> {
        let new_writer = || async {
            self.store
                .writer(Some(desc.digest.clone()), Some(desc.size))
                .await
                .map_err(PullError::content(reference, &desc.digest))
        };
        let mut writer = new_writer().await?;
        let mut attempt = 1;
        loop {
            report(writer.written(), BlobState::Downloading);
            let mut stream = self.client.fetch(reference, desc, writer.written()).await?;
            if stream.offset() != writer.written() {
                // The registry ignored the range: start over (the old
                // writer's ingest file goes with it).
                writer = new_writer().await?;
            }
            match copy(&mut stream, &mut writer, report).await {
                Ok(()) => break,
                Err(CopyError::Registry(e @ RegistryError::Interrupted { .. }))
                    if attempt < DOWNLOAD_ATTEMPTS =>
                {
                    tracing::warn!(error = %e, attempt, "download interrupted; resuming");
                    attempt += 1;
                }
                Err(CopyError::Registry(e)) => return Err(e.into()),
                Err(CopyError::Content(e)) => {
                    return Err(PullError::content(reference, &desc.digest)(e));
                }
            }
        }
        writer
            .commit()
            .await
            .map_err(PullError::content(reference, &desc.digest))?;
        Ok(())
    }
}

enum CopyError {
    Registry(RegistryError),
    Content(ContentError),
}

/// Streams the response into the writer: the network read and the store
/// write overlap (the write runs on a blocking thread), with a few
/// megabytes in flight at most.
async fn copy(
    stream: &mut BlobStream,
    writer: &mut Writer,
    report: &(dyn Fn(u64, BlobState) + Sync),
) -> Result<(), CopyError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let read = async move {
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        while let Some(chunk) = stream.next_chunk().await? {
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_CHUNK {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK));
                if tx.send(full).await.is_err() {
                    // The writer failed; its error is the one to report.
                    return Ok(());
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(buf).await;
        }
        Ok::<(), RegistryError>(())
    };
    let write = async {
        while let Some(data) = rx.recv().await {
            writer.write(data).await?;
            report(writer.written(), BlobState::Downloading);
        }
        Ok::<(), ContentError>(())
    };
    let (read, write) = tokio::join!(read, write);
    write.map_err(CopyError::Content)?;
    read.map_err(CopyError::Registry)
}

fn parse<T: serde::de::DeserializeOwned>(
    reference: &Reference,
    what: &'static str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<T, PullError> {
    serde_json::from_slice(bytes).map_err(|source| PullError::Json {
        reference: reference.to_string(),
        what,
        digest: digest.clone(),
        source,
    })
}

fn no_match(
    reference: &Reference,
    top: &Descriptor,
    wanted: &Platform,
    index: &Index,
) -> PullError {
    let available: Vec<String> = index
        .manifests
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), platforms::format)
        })
        .collect();
    PullError::NoMatch {
        reference: reference.to_string(),
        digest: top.digest.clone(),
        wanted: platforms::format(wanted),
        available: if available.is_empty() {
            "none".to_owned()
        } else {
            available.join(", ")
        },
    }
}
