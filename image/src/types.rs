//! OCI image-spec documents — descriptor, platform, manifest, index and the
//! image config — that also read Docker schema 2 manifests, manifest lists and
//! configs (same shapes, other media types).
//!
//! Our own types rather than the `oci-spec` crate's, for two reasons:
//! `oci-spec` keeps annotations and labels in `HashMap`s, so serialising a
//! manifest twice can give two digests (the project promises deterministic
//! output; Go sorts map keys, and `BTreeMap` does the same); and its
//! descriptor `Platform` spells `os.version` as `os_version`. Field order,
//! JSON names and omit-when-empty rules follow the Go structs
//! (image-spec v1.1, moby/docker-image-spec), and a JSON `null` reads as
//! empty as it does in Go. Use [`crate::json`] to write them byte-for-byte
//! as Go would.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;

/// A Go zero value for JSON `null` (Go ignores `null` for slices, maps and
/// strings); used with `#[serde(default)]` on every optional field.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Descriptor `data`: bytes as standard base64 (Go's `[]byte` in JSON).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("descriptor data: {e}"))),
        }
    }
}

/// The platform an image (or an index entry) is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub variant: String,
}

impl Platform {
    /// `os`/`architecture` with no variant.
    pub fn new(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            ..Platform::default()
        }
    }

    /// The same platform with `variant`.
    pub fn with_variant(self, variant: &str) -> Platform {
        Platform {
            variant: variant.to_owned(),
            ..self
        }
    }
}

/// Points at content: what it is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, deserialize_with = "null_default")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub urls: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Embedded content (base64 in JSON).
    #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub artifact_type: String,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            data: Vec::new(),
            platform: None,
            artifact_type: String::new(),
        }
    }
}

/// An image manifest: a config and its layers (OCI, or Docker schema 2 when
/// `media_type` says so).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub artifact_type: String,
    pub config: Descriptor,
    // Always written, `[]` when empty (Go writes `null` for a nil slice,
    // which registries reject; BuildKit never produces one).
    #[serde(default, deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Box<Descriptor>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// An index of manifests (OCI index, or Docker manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub artifact_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Box<Descriptor>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// Go's `struct{}` as a map value (`"ExposedPorts": {"80/tcp": {}}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Empty, D::Error> {
        // Whatever the value holds is irrelevant, as for Go's struct{}.
        serde::de::IgnoredAny::deserialize(d).map(|_| Empty)
    }
}

/// The image config file: platform, runtime defaults, layer diff ids and
/// history. Docker's extensions (healthcheck, ONBUILD, SHELL) are included,
/// as in moby's `DockerOCIImage`, which is what BuildKit reads and writes.
///
/// Field order is `DockerOCIImage`'s: Go puts the shadowing `config` field
/// after everything inherited from the OCI `Image`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// RFC 3339 time, kept as text so it round-trips exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub author: String,
    #[serde(flatten)]
    pub platform: Platform,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: ImageConfig,
}

/// Defaults for containers run from the image (OCI `ImageConfig` plus
/// Docker's extension fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub entrypoint: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cmd: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
}

/// Docker's HEALTHCHECK; durations are nanoseconds, as Go's `time.Duration`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub interval: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub timeout: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_period: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_interval: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub retries: i64,
}

/// The layers' uncompressed digests, bottom first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

/// One build step in the config's history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub created_by: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub author: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub comment: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub empty_layer: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_types;

    const D1: &str = "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f";
    const D2: &str = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270";

    #[test]
    fn reads_a_docker_manifest_list() {
        let list = format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "manifests": [
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 7143,
        "digest": "{D1}", "platform": {{"architecture": "ppc64le", "os": "linux"}}}},
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 7682,
        "digest": "{D2}", "platform": {{"architecture": "amd64", "os": "linux", "features": ["sse4"]}}}},
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 1,
        "digest": "{D2}", "platform": {{"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1"}}}}
   ]
}}"#
        );
        let index: Index = serde_json::from_str(&list).unwrap();
        assert_eq!(index.media_type, media_types::DOCKER_MANIFEST_LIST);
        assert_eq!(index.manifests.len(), 3);
        assert_eq!(
            index.manifests[1].platform,
            Some(Platform::new("linux", "amd64"))
        );
        assert_eq!(
            index.manifests[2]
                .platform
                .as_ref()
                .map(|p| p.os_version.as_str()),
            Some("10.0.17763.1")
        );
    }

    #[test]
    fn writes_go_field_order_and_omits_empty() {
        let mut desc = Descriptor::new(media_types::OCI_MANIFEST, Digest::parse(D1).unwrap(), 7);
        desc.annotations.insert("z".into(), "1".into());
        desc.annotations.insert("a".into(), "2".into());
        desc.platform = Some(Platform::new("linux", "arm64").with_variant("v8"));
        let index = Index {
            schema_version: 2,
            media_type: media_types::OCI_INDEX.into(),
            artifact_type: String::new(),
            manifests: vec![desc],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let got = serde_json::to_string(&index).unwrap();
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":7,"annotations":{{"a":"2","z":"1"}},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        assert_eq!(got, want);
        assert_eq!(serde_json::from_str::<Index>(&got).unwrap(), index);
    }

    #[test]
    fn manifest_round_trip_and_nulls() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2,"data":"e30="}},"layers":null,"annotations":null}}"#
        );
        let parsed: Manifest = serde_json::from_str(&m).unwrap();
        assert!(parsed.layers.is_empty());
        assert_eq!(parsed.config.data, b"{}");
        let out = serde_json::to_string(&parsed).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2,"data":"e30="}},"layers":[]}}"#
            )
        );
        // A bad digest or bad base64 is an error, not a silent default.
        assert!(
            serde_json::from_str::<Descriptor>(r#"{"mediaType":"x","digest":"sha256:1","size":1}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Descriptor>(&format!(
                r#"{{"mediaType":"x","digest":"{D1}","size":1,"data":"!!"}}"#
            ))
            .is_err()
        );
        assert!(
            serde_json::from_str::<Descriptor>(&format!(
                r#"{{"mediaType":"x","digest":"{D1}","size":-1}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn image_config_round_trip() {
        let cfg = format!(
            r#"{{"created":"2024-01-02T03:04:05.123456789Z","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}"]}},"history":[{{"created":"2024-01-02T03:04:05Z","created_by":"RUN a \u0026\u0026 b","empty_layer":true}}],"config":{{"User":"1000","ExposedPorts":{{"80/tcp":{{}}}},"Env":["PATH=/bin"],"Cmd":["sh"],"Volumes":{{"/data":{{}}}},"WorkingDir":"/w","Labels":{{"b":"2","a":"1"}},"Healthcheck":{{"Test":["CMD","true"],"Interval":30000000000}},"OnBuild":null,"Shell":["/bin/sh","-c"]}}}}"#
        );
        let image: Image = serde_json::from_str(&cfg).unwrap();
        assert_eq!(image.platform, Platform::new("linux", "amd64"));
        assert_eq!(image.rootfs.diff_ids.len(), 1);
        assert_eq!(image.history[0].created_by, "RUN a && b");
        assert!(image.history[0].empty_layer);
        assert_eq!(
            image.config.exposed_ports.keys().collect::<Vec<_>>(),
            ["80/tcp"]
        );
        assert_eq!(
            image.config.healthcheck.as_ref().map(|h| h.interval),
            Some(30_000_000_000)
        );
        let out = serde_json::to_string(&image).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"created":"2024-01-02T03:04:05.123456789Z","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}"]}},"history":[{{"created":"2024-01-02T03:04:05Z","created_by":"RUN a && b","empty_layer":true}}],"config":{{"User":"1000","ExposedPorts":{{"80/tcp":{{}}}},"Env":["PATH=/bin"],"Cmd":["sh"],"Volumes":{{"/data":{{}}}},"WorkingDir":"/w","Labels":{{"a":"1","b":"2"}},"Healthcheck":{{"Test":["CMD","true"],"Interval":30000000000}},"Shell":["/bin/sh","-c"]}}}}"#
            )
        );
        // An empty image still writes the fields Go always writes.
        assert_eq!(
            serde_json::to_string(&Image::default()).unwrap(),
            r#"{"architecture":"","os":"","rootfs":{"type":"","diff_ids":[]},"config":{}}"#
        );
    }
}
