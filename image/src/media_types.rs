//! Media types of OCI and Docker (schema 2) images, and containerd's helpers
//! that classify them.
//!
//! The constants are the strings on the wire. The `is_*` predicates follow
//! containerd's `core/images/mediatypes.go`, so an image we accept is one
//! containerd (and so BuildKit) accepts. [`check_document`] is containerd's
//! guard against a manifest served as an index or the reverse, and against
//! schema 1.

use serde::Deserialize;
use serde::de::IgnoredAny;

// OCI image-spec v1.1.
pub const OCI_DESCRIPTOR: &str = "application/vnd.oci.descriptor.v1+json";
pub const OCI_LAYOUT_HEADER: &str = "application/vnd.oci.layout.header.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NON_DISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NON_DISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NON_DISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

// Docker image manifest v2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Foreign (non-distributable) layers: Windows base layers, fetched from
/// their `urls`, never pushed.
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Schema 1 (signed); recognised only to be refused.
pub const DOCKER_SCHEMA1_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1_MANIFEST_UNSIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+json";

// Encrypted layers (ocicrypt) and attestations, as containerd names them.
pub const OCI_LAYER_ENCRYPTED: &str = "application/vnd.oci.image.layer.v1.tar+encrypted";
pub const OCI_LAYER_GZIP_ENCRYPTED: &str = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Splits `base+suffix+suffix` into the base and its sorted suffixes, as
/// containerd's `parseMediaTypes` (suffixes sorted so order never matters).
fn parse_media_type(mt: &str) -> (&str, Vec<&str>) {
    match mt.split_once('+') {
        None => (mt, Vec::new()),
        Some((base, ext)) => {
            let mut suffixes: Vec<&str> = ext.split('+').collect();
            suffixes.sort_unstable();
            (base, suffixes)
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
pub fn is_manifest_type(mt: &str) -> bool {
    matches!(mt, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// An index of manifests (OCI index or Docker manifest list).
pub fn is_index_type(mt: &str) -> bool {
    matches!(mt, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// An image config (OCI or Docker).
pub fn is_config_type(mt: &str) -> bool {
    matches!(mt, OCI_CONFIG | DOCKER_CONFIG)
}

/// A filesystem layer: anything under `application/vnd.oci.image.layer.`,
/// or a Docker layer type with any suffixes.
pub fn is_layer_type(mt: &str) -> bool {
    if mt.starts_with("application/vnd.oci.image.layer.") {
        return true;
    }
    let (base, _) = parse_media_type(mt);
    matches!(
        base,
        DOCKER_LAYER
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN
            | DOCKER_LAYER_FOREIGN_GZIP
            | DOCKER_LAYER_ZSTD
    )
}

/// A layer that must not be pushed (OCI non-distributable, Docker foreign).
pub fn is_non_distributable(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || mt.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// A Docker (rather than OCI) media type.
pub fn is_docker_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.docker.")
}

/// An attestation blob (in-toto statement).
pub fn is_attestation_type(mt: &str) -> bool {
    mt == IN_TOTO
}

/// How a layer blob is compressed, for undoing it before applying the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    /// A Docker `…diff.tar` layer: historically allowed to be compressed
    /// anyway, so the bytes must be sniffed.
    Unknown,
}

/// The media type is not a layer type containerd knows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised mediatype {0}: not implemented")]
pub struct UnrecognisedMediaType(pub String);

/// containerd's `DiffCompression`: `Ok(None)` when there is nothing to undo
/// (an uncompressed OCI layer, or one with suffixes such as `+encrypted`
/// that something else must handle first).
pub fn diff_compression(mt: &str) -> Result<Option<Compression>, UnrecognisedMediaType> {
    let (base, ext) = parse_media_type(mt);
    let docker = |c: Compression| if ext.is_empty() { Some(c) } else { None };
    match base {
        DOCKER_LAYER | DOCKER_LAYER_FOREIGN => Ok(docker(Compression::Unknown)),
        DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => Ok(docker(Compression::Gzip)),
        DOCKER_LAYER_ZSTD => Ok(docker(Compression::Zstd)),
        OCI_LAYER | OCI_LAYER_NON_DISTRIBUTABLE => Ok(match ext.last() {
            Some(&"gzip") => Some(Compression::Gzip),
            Some(&"zstd") => Some(Compression::Zstd),
            _ => None,
        }),
        _ => Err(UnrecognisedMediaType(mt.to_owned())),
    }
}

/// Why a fetched document does not fit the media type it was served as.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("media-type: schema 1 not supported")]
    Schema1,
    #[error("media-type: expected manifest but found index ({0})")]
    ExpectedManifest(String),
    #[error("media-type: expected index but found manifest ({0})")]
    ExpectedIndex(String),
    #[error("invalid JSON document: {0}")]
    Json(#[from] serde_json::Error),
}

/// Only the fields that tell manifests, indexes and schema 1 apart.
#[derive(Deserialize)]
struct UnknownDocument {
    #[serde(
        default,
        rename = "mediaType",
        deserialize_with = "crate::types::null_default"
    )]
    media_type: String,
    // Present at all (even `null`) counts, as Go's json.RawMessage does.
    #[serde(default, deserialize_with = "present")]
    config: bool,
    #[serde(default)]
    layers: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    manifests: Option<Vec<IgnoredAny>>,
    #[serde(default, rename = "fsLayers", alias = "fslayers", alias = "FSLayers")]
    fs_layers: Option<Vec<IgnoredAny>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// containerd's `validateMediaType`: refuses schema 1, a manifest that
/// looks like an index and an index that looks like a manifest. Call it on
/// every manifest or index read before trusting its media type.
pub fn check_document(bytes: &[u8], media_type: &str) -> Result<(), DocumentError> {
    let doc: UnknownDocument = serde_json::from_slice(bytes)?;
    let non_empty = |v: &Option<Vec<IgnoredAny>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if non_empty(&doc.fs_layers) {
        return Err(DocumentError::Schema1);
    }
    if is_manifest_type(media_type) && (non_empty(&doc.manifests) || is_index_type(&doc.media_type))
    {
        return Err(DocumentError::ExpectedManifest(media_type.to_owned()));
    }
    if is_index_type(media_type)
        && (doc.config || non_empty(&doc.layers) || is_manifest_type(&doc.media_type))
    {
        return Err(DocumentError::ExpectedIndex(media_type.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_containerd() {
        for mt in [OCI_MANIFEST, DOCKER_MANIFEST] {
            assert!(is_manifest_type(mt) && !is_index_type(mt) && !is_layer_type(mt));
        }
        for mt in [OCI_INDEX, DOCKER_MANIFEST_LIST] {
            assert!(is_index_type(mt) && !is_manifest_type(mt));
        }
        for mt in [OCI_CONFIG, DOCKER_CONFIG] {
            assert!(is_config_type(mt) && !is_layer_type(mt));
        }
        for mt in [
            OCI_LAYER,
            OCI_LAYER_GZIP,
            OCI_LAYER_ZSTD,
            OCI_LAYER_NON_DISTRIBUTABLE_GZIP,
            OCI_LAYER_GZIP_ENCRYPTED,
            DOCKER_LAYER,
            DOCKER_LAYER_GZIP,
            DOCKER_LAYER_ZSTD,
            DOCKER_LAYER_FOREIGN,
            DOCKER_LAYER_FOREIGN_GZIP,
            "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
        ] {
            assert!(is_layer_type(mt), "{mt}");
        }
        assert!(!is_layer_type(DOCKER_CONFIG));
        assert!(!is_layer_type("application/octet-stream"));
        assert!(is_non_distributable(DOCKER_LAYER_FOREIGN_GZIP));
        assert!(is_non_distributable(OCI_LAYER_NON_DISTRIBUTABLE));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
        assert!(is_docker_type(DOCKER_CONFIG) && !is_docker_type(OCI_CONFIG));
        assert!(is_attestation_type(IN_TOTO));
    }

    #[test]
    fn diff_compression_like_containerd() {
        use Compression::*;
        let cases: &[(&str, Option<Compression>)] = &[
            (DOCKER_LAYER, Some(Unknown)),
            (DOCKER_LAYER_FOREIGN, Some(Unknown)),
            (DOCKER_LAYER_GZIP, Some(Gzip)),
            (DOCKER_LAYER_FOREIGN_GZIP, Some(Gzip)),
            (DOCKER_LAYER_ZSTD, Some(Zstd)),
            (OCI_LAYER, None),
            (OCI_LAYER_GZIP, Some(Gzip)),
            (OCI_LAYER_ZSTD, Some(Zstd)),
            (OCI_LAYER_NON_DISTRIBUTABLE_ZSTD, Some(Zstd)),
            // Suffixes are sorted: "encrypted" < "gzip", so gzip is last.
            (OCI_LAYER_GZIP_ENCRYPTED, Some(Gzip)),
            (OCI_LAYER_ENCRYPTED, None),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
                None,
            ),
        ];
        for (mt, want) in cases {
            assert_eq!(diff_compression(mt).unwrap(), *want, "{mt}");
        }
        let err = diff_compression(OCI_CONFIG).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unrecognised mediatype application/vnd.oci.image.config.v1+json: not implemented"
        );
    }

    #[test]
    fn check_document_refuses_confusions() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"y","size":1}]}"#;
        let schema1 = br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"x"}]}"#;
        check_document(manifest, OCI_MANIFEST).unwrap();
        check_document(index, OCI_INDEX).unwrap();
        check_document(index, DOCKER_MANIFEST_LIST).unwrap();
        assert!(matches!(
            check_document(index, OCI_MANIFEST),
            Err(DocumentError::ExpectedManifest(_))
        ));
        assert!(matches!(
            check_document(manifest, OCI_INDEX),
            Err(DocumentError::ExpectedIndex(_))
        ));
        let null_config = br#"{"schemaVersion":2,"config":null,"manifests":[]}"#;
        assert!(matches!(
            check_document(null_config, OCI_INDEX),
            Err(DocumentError::ExpectedIndex(_))
        ));
        let typed_index = br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(matches!(
            check_document(typed_index, DOCKER_MANIFEST),
            Err(DocumentError::ExpectedManifest(_))
        ));
        assert!(matches!(
            check_document(schema1, DOCKER_MANIFEST),
            Err(DocumentError::Schema1)
        ));
        assert!(matches!(
            check_document(b"[1,2]", OCI_MANIFEST),
            Err(DocumentError::Json(_))
        ));
        assert!(matches!(
            check_document(b"{\"config\":", OCI_MANIFEST),
            Err(DocumentError::Json(_))
        ));
        // Unrelated media types are not checked beyond parsing.
        check_document(manifest, "application/octet-stream").unwrap();
    }
}
