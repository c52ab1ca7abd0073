//! `bk-image`: what the daemon needs to know about container images.
//!
//! The registry client and pulls are here; pushes of built images and the
//! image exporters will build on them.
//!
//! - [`reference`](mod@reference): image names as users type them, normalised exactly as
//!   Docker's `distribution/reference` does. Start with
//!   [`Reference::parse_normalized_named`] and [`Reference::tag_name_only`]
//!   (`busybox` → `docker.io/library/busybox:latest`).
//! - [`content`]: the content store, blobs by digest on disk. Start with
//!   [`ContentStore::open`], [`ContentStore::writer`] and [`Lease`].
//! - [`types`]: OCI (and Docker schema 2) manifests, indexes, configs and
//!   descriptors; [`json`] writes them byte-for-byte as Go does, so digests
//!   agree with BuildKit's; [`media_types`] names and classifies them.
//! - [`platforms`]: `linux/arm64/v8` and friends, and
//!   [`platforms::select_manifest`], which picks an index entry as
//!   containerd does.
//! - [`digest`]: the validated [`Digest`] every module names content by.
//! - [`registry`]: the registry client. Start with [`RegistryHosts::new`]
//!   (the `[registry."host"]` settings) and [`RegistryClient::new`]
//!   (resolve, fetch, push, the Docker token flow through a
//!   [`CredentialsProvider`]).
//! - [`pull`]: an image from a registry into the content store for one
//!   platform. Start with [`Puller::pull`].
//! - [`layer`]: the layer of a directory diff, as containerd's differ
//!   writes it (diff ids agree with BuildKit's), compressed into the
//!   content store. Start with [`layer::create_layer`].
//! - [`export`]: image configs, manifests, OCI and Docker archives, OCI
//!   layout directories and pushes, as BuildKit's image exporters write
//!   them. Start with [`export::image_config`] and [`export::write_image`].
//! - [`images`]: the image store, names for images in the content store.
//!   [`gc`] deletes the blobs no name, remembered layer or lease reaches.
//! - [`unpack`]: a layer applied onto a directory tree (whiteouts, owners,
//!   xattrs, times; hostile paths kept inside the root). Start with
//!   [`unpack::apply_layer`].

pub mod content;
pub mod digest;
pub mod export;
pub mod gc;
pub mod images;
pub mod json;
pub mod layer;
pub mod media_types;
pub mod platforms;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod types;
pub mod unpack;

pub use content::{Commit, ContentError, ContentStore, Info, Lease, Writer};
pub use digest::{Algorithm, Digest, DigestError, Digester};
pub use platforms::{MatchComparer, select_manifest};
pub use pull::{BlobProgress, BlobState, ProgressFn, PullError, PulledImage, Puller};
pub use reference::{Reference, ReferenceError};
pub use registry::{
    CredentialsProvider, RegistryClient, RegistryConfig, RegistryError, RegistryHosts,
};
pub use types::{Descriptor, Image, ImageConfig, Index, Manifest, Platform};
