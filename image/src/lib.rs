//! `bk-image`: what the daemon needs to know about container images.
//!
//! This is the foundation the registry client, pulls, pushes and the image
//! exporters will build on; nothing here talks to the network yet.
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

pub mod content;
pub mod digest;
pub mod json;
pub mod media_types;
pub mod platforms;
pub mod reference;
pub mod types;

pub use content::{Commit, ContentError, ContentStore, Info, Lease, Writer};
pub use digest::{Algorithm, Digest, DigestError, Digester};
pub use platforms::{MatchComparer, select_manifest};
pub use reference::{Reference, ReferenceError};
pub use types::{Descriptor, Image, ImageConfig, Index, Manifest, Platform};
