//! Images out of layers: the config, the manifest, and the ways an image
//! leaves the daemon (OCI and Docker archives, OCI layout directories,
//! registry pushes), as BuildKit's `containerimage` and `oci`/`docker`
//! exporters write them.
//!
//! - [`image_config`] is BuildKit's `patchImageConfig` after
//!   `normalizeLayersAndHistory`: the frontend's config (or the default
//!   one) with `rootfs` set from the layers, history lined up with them,
//!   `created` filled in and `SOURCE_DATE_EPOCH` applied. The result is the
//!   bytes Go would write (top-level keys sorted, values kept as the
//!   frontend wrote them, compacted), so config digests agree.
//! - [`manifest`] / [`manifest_json`] / [`write_image`]: the schema 2
//!   manifest (OCI or Docker media types) written as BuildKit does
//!   (`json.MarshalIndent`, `"layers": null` for an image without layers),
//!   config and manifest stored in the content store.
//! - [`write_oci_archive`], [`write_docker_archive`],
//!   [`write_oci_layout_dir`]: containerd's archive exporter as BuildKit
//!   v0.24 uses it: entries sorted by name, owner 0, mtime 0, blobs 0444,
//!   `index.json` 0644, directories 0755; `index.json` has one manifest
//!   entry per name (annotated `io.containerd.image.name` and
//!   `org.opencontainers.image.ref.name`), the Docker variant adds
//!   `manifest.json`. These are blocking (they stream blobs from the store
//!   to a `Write`): run them on a blocking thread.
//! - [`push`]: layers (concurrently, each skipped when the registry has it
//!   or mounted from another repository when told where it came from),
//!   config, then the manifest by tag, or by digest only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::content::{ContentError, ContentStore};
use crate::digest::Digest;
use crate::json;
use crate::layer::{Layer, TarFormat, TarHeader, TarWriter};
use crate::media_types;
use crate::reference::Reference;
use crate::registry::{PushOutcome, PushSource, RegistryClient, RegistryError};
use crate::types::{Descriptor, History, Image, ImageConfig, Index, Manifest, Platform};

/// Annotation of the manifest descriptor in `index.json`: the full name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation of the manifest descriptor in `index.json`: the tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation the `oci`/`docker` exporters put on the manifest descriptor.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// The comment BuildKit gives history entries it adds for layers the
/// frontend's history does not mention.
pub const EXPORTER_HISTORY_COMMENT: &str = "buildkit.exporter.image.v0";
/// Where an inline cache config goes in the image config.
pub const INLINE_CACHE_KEY: &str = "moby.buildkit.cache.v0";

/// Largest manifest, index or config read back from the store.
const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;

/// An export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The frontend's config (or base config) cannot be used; BuildKit's
    /// words where it has them.
    #[error("invalid image config for export: {0}")]
    InvalidConfig(String),
    #[error("invalid time {0:?}: {1}")]
    InvalidTime(String, String),
    #[error("{0}")]
    Unsupported(String),
    #[error("reading {digest}: {message}")]
    InvalidDocument { digest: Digest, message: String },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing archive: {0}")]
    Output(#[source] io::Error),
    #[error("unexpected digest {actual} copied for {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn invalid_config(e: impl std::fmt::Display) -> ExportError {
    ExportError::InvalidConfig(e.to_string())
}

// ---- time --------------------------------------------------------------------

/// A point in time as Go's `time.Time` carries it through JSON: the instant
/// and the UTC offset it was written with (Go writes a time back in its own
/// offset, `Z` for UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
    offset_secs: i32,
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Timestamp {
    /// A UTC time from Unix seconds and nanoseconds.
    pub fn from_unix(secs: i64, nanos: u32) -> Timestamp {
        Timestamp {
            secs: secs + i64::from(nanos / 1_000_000_000),
            nanos: nanos % 1_000_000_000,
            offset_secs: 0,
        }
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Timestamp {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp::from_unix(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (secs, nanos) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                Timestamp::from_unix(secs, nanos)
            }
        }
    }

    pub fn unix_secs(&self) -> i64 {
        self.secs
    }

    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// Go's `After`.
    pub fn after(&self, other: &Timestamp) -> bool {
        (self.secs, self.nanos) > (other.secs, other.nanos)
    }

    /// Parses RFC 3339 as Go's `time.Time.UnmarshalJSON` accepts it.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, ExportError> {
        let bad = |why: &str| ExportError::InvalidTime(s.to_owned(), why.to_owned());
        let b = s.as_bytes();
        let num = |from: usize, len: usize| -> Result<i64, ExportError> {
            let part = b.get(from..from + len).ok_or_else(|| bad("too short"))?;
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(bad("expected digits"));
            }
            Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
        };
        let sep = |at: usize, c: u8| -> Result<(), ExportError> {
            if b.get(at) == Some(&c) {
                Ok(())
            } else {
                Err(bad("malformed"))
            }
        };
        let year = num(0, 4)?;
        sep(4, b'-')?;
        let month = num(5, 2)?;
        sep(7, b'-')?;
        let day = num(8, 2)?;
        sep(10, b'T')?;
        let hour = num(11, 2)?;
        sep(13, b':')?;
        let min = num(14, 2)?;
        sep(16, b':')?;
        let sec = num(17, 2)?;
        if !(1..=12).contains(&month) || hour > 23 || min > 59 || sec > 59 {
            return Err(bad("field out of range"));
        }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let mdays = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if day < 1 || day > mdays[(month - 1) as usize] {
            return Err(bad("day out of range"));
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 9 {
                    nanos = nanos * 10 + u32::from(b[i] - b'0');
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return Err(bad("empty fraction"));
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset_secs = match b.get(i) {
            Some(b'Z') if i + 1 == b.len() => 0,
            Some(c @ (b'+' | b'-')) if i + 6 == b.len() => {
                let oh = num(i + 1, 2)?;
                sep(i + 3, b':')?;
                let om = num(i + 4, 2)?;
                if oh > 23 || om > 59 {
                    return Err(bad("offset out of range"));
                }
                let o = (oh * 3600 + om * 60) as i32;
                if *c == b'-' { -o } else { o }
            }
            _ => return Err(bad("malformed zone")),
        };
        let local =
            days_from_civil(year, month as u32, day as u32) * 86_400 + hour * 3600 + min * 60 + sec;
        Ok(Timestamp {
            secs: local - i64::from(offset_secs),
            nanos,
            offset_secs,
        })
    }

    /// Go's `time.RFC3339Nano` in the time's own offset (what `json.Marshal`
    /// writes for a `time.Time`).
    pub fn to_rfc3339(&self) -> String {
        let local = self.secs + i64::from(self.offset_secs);
        let (y, m, d) = civil_from_days(local.div_euclid(86_400));
        let sod = local.rem_euclid(86_400);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        );
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        if self.offset_secs == 0 {
            s.push('Z');
        } else {
            let o = self.offset_secs.abs();
            let sign = if self.offset_secs < 0 { '-' } else { '+' };
            s.push_str(&format!("{sign}{:02}:{:02}", o / 3600, o / 60 % 60));
        }
        s
    }

    /// Go's `time.RFC3339` of the time in UTC (no fraction), as the OCI
    /// exporter's `org.opencontainers.image.created`.
    pub fn to_rfc3339_utc_seconds(&self) -> String {
        Timestamp {
            secs: self.secs,
            nanos: 0,
            offset_secs: 0,
        }
        .to_rfc3339()
    }
}

// ---- the image config --------------------------------------------------------

/// What BuildKit knows of one layer besides its blob: the snapshot's
/// creation time and description (`GetCreatedAt`, `GetDescription`), used
/// for layers the frontend's history does not cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerMeta {
    pub created: Option<Timestamp>,
    pub description: String,
}

/// The inputs of [`image_config`].
#[derive(Clone, Debug)]
pub struct ConfigInput<'a> {
    /// `containerimage.config` from the frontend; `None` (or empty) for
    /// BuildKit's default config.
    pub config: Option<&'a [u8]>,
    /// `containerimage.base.config`: the base image's config, whose history
    /// keeps its times under `epoch`.
    pub base_config: Option<&'a [u8]>,
    /// The platform of the default config (BuildKit: the worker's default
    /// platform, normalised).
    pub default_platform: &'a Platform,
    /// Every layer of the image, bottom first (base image layers too).
    pub diff_ids: &'a [Digest],
    /// Metadata for the same layers; missing entries count as empty.
    pub layer_meta: &'a [LayerMeta],
    /// SOURCE_DATE_EPOCH (Unix seconds).
    pub epoch: Option<i64>,
    /// An inline cache config to embed (`moby.buildkit.cache.v0`).
    pub inline_cache: Option<&'a [u8]>,
}

/// The config blob and its parsed form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigBlob {
    pub bytes: Vec<u8>,
    pub image: Image,
}

/// A history entry with its time parsed, as Go holds `ocispecs.History`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hist {
    created: Option<Timestamp>,
    created_by: String,
    author: String,
    comment: String,
    empty_layer: bool,
}

impl Hist {
    fn parse(h: History) -> Result<Hist, ExportError> {
        Ok(Hist {
            created: h
                .created
                .as_deref()
                .map(Timestamp::parse_rfc3339)
                .transpose()
                .map_err(invalid_config)?,
            created_by: h.created_by,
            author: h.author,
            comment: h.comment,
            empty_layer: h.empty_layer,
        })
    }

    fn to_history(&self) -> History {
        History {
            created: self.created.map(|t| t.to_rfc3339()),
            created_by: self.created_by.clone(),
            author: self.author.clone(),
            comment: self.comment.clone(),
            empty_layer: self.empty_layer,
        }
    }
}

/// `history` of a config (Go's case-insensitive field match; `None` when
/// absent or null, which Go keeps apart from `[]`).
fn parse_history(map: &BTreeMap<String, Box<RawValue>>) -> Result<Option<Vec<Hist>>, ExportError> {
    let raw = map.get("history").or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("history"))
            .map(|(_, v)| v)
    });
    let Some(raw) = raw else {
        return Ok(None);
    };
    let list: Option<Vec<History>> = serde_json::from_str(raw.get()).map_err(|e| {
        ExportError::InvalidConfig(format!("failed to unmarshal history from config: {e}"))
    })?;
    list.map(|l| l.into_iter().map(Hist::parse).collect())
        .transpose()
}

fn parse_map(bytes: &[u8]) -> Result<BTreeMap<String, Box<RawValue>>, ExportError> {
    let map: Option<BTreeMap<String, Box<RawValue>>> =
        serde_json::from_slice(bytes).map_err(invalid_config)?;
    map.ok_or_else(|| ExportError::InvalidConfig("invalid null image config for export".into()))
}

/// BuildKit's `defaultImageConfig`.
fn default_config(platform: &Platform) -> Result<Vec<u8>, ExportError> {
    #[derive(serde::Serialize)]
    struct RootFs {
        #[serde(rename = "type")]
        kind: &'static str,
        diff_ids: Option<Vec<Digest>>,
    }
    #[derive(serde::Serialize)]
    struct Default<'a> {
        #[serde(flatten)]
        platform: &'a Platform,
        config: ImageConfig,
        rootfs: RootFs,
    }
    let mut config = ImageConfig {
        working_dir: "/".into(),
        ..ImageConfig::default()
    };
    // No default PATH on Windows (moby/buildkit#5445).
    if platform.os != "windows" {
        config.env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    }
    Ok(json::to_vec(&Default {
        platform,
        config,
        rootfs: RootFs {
            kind: "layers",
            diff_ids: None,
        },
    })?)
}

/// BuildKit's `normalizeLayersAndHistory` (history part).
fn normalize_history(
    history: Option<Vec<Hist>>,
    layers: usize,
    meta: &[LayerMeta],
) -> Option<Vec<Hist>> {
    let meta_at = |i: usize| meta.get(i).cloned().unwrap_or_default();
    let mut history = history;
    let history_layers = history.iter().flatten().filter(|h| !h.empty_layer).count();
    if history_layers > layers {
        // Shouldn't happen, but then the extra entries become empty ones
        // from the bottom up, as BuildKit does.
        tracing::warn!("invalid image config with unaccounted layers");
        let mut l = 0;
        if let Some(h) = history.as_mut() {
            for e in h.iter_mut() {
                if l >= layers {
                    e.empty_layer = true;
                }
                if !e.empty_layer {
                    l += 1;
                }
            }
        }
    }
    if layers > history_layers {
        let h = history.get_or_insert_with(Vec::new);
        for i in history_layers..layers {
            let m = meta_at(i);
            h.push(Hist {
                created: m.created,
                created_by: m.description,
                author: String::new(),
                comment: EXPORTER_HISTORY_COMMENT.into(),
                empty_layer: false,
            });
        }
    }
    let mut h = history?;
    let mut layer_index = 0;
    for e in h.iter_mut() {
        if !e.empty_layer {
            if e.created.is_none() {
                e.created = meta_at(layer_index).created;
            }
            layer_index += 1;
        }
    }
    // The first new layer's time (else the last known one) for entries
    // without a time, so a metadata-only step does not get a base layer's
    // time.
    let mut created = None;
    let mut no_created = false;
    for e in &h {
        if e.created.is_some() {
            created = e.created;
            if no_created {
                break;
            }
        } else {
            no_created = true;
        }
    }
    no_created = false;
    for e in h.iter_mut() {
        if e.created.is_some() {
            if no_created {
                created = e.created;
            }
        } else {
            no_created = true;
            e.created = created;
        }
    }
    Some(h)
}

/// Go's `json.Compact` with HTML escaping, as `json.Marshal` applies to a
/// `json.RawMessage`: whitespace outside strings goes, `<`, `>`, `&`,
/// U+2028 and U+2029 are escaped.
fn compact_go(raw: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        match c {
            '<' | '>' | '&' => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            _ if in_string => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            }
            ' ' | '\t' | '\n' | '\r' => {}
            _ => {
                if c == '"' {
                    in_string = true;
                }
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

fn raw(v: Vec<u8>) -> Result<Box<RawValue>, ExportError> {
    let s = String::from_utf8(v).map_err(|e| ExportError::InvalidConfig(e.to_string()))?;
    Ok(RawValue::from_string(s)?)
}

fn time_json(t: Option<Timestamp>) -> Result<Box<RawValue>, ExportError> {
    raw(json::to_vec(&t.map(|t| t.to_rfc3339()))?)
}

/// The image config BuildKit's image exporters write for `input` (see the
/// module docs).
pub fn image_config(input: &ConfigInput<'_>) -> Result<ConfigBlob, ExportError> {
    let config: Cow<'_, [u8]> = match input.config {
        Some(c) if !c.is_empty() => Cow::Borrowed(c),
        _ => Cow::Owned(default_config(input.default_platform)?),
    };
    let mut map = parse_map(&config)?;
    let history = parse_history(&map)?;
    let history = normalize_history(history, input.diff_ids.len(), input.layer_meta);

    // Only what BuildKit checks: the rest of the config is the frontend's
    // business and passes through untouched.
    #[derive(Deserialize)]
    struct Check {
        #[serde(default)]
        created: Option<String>,
        #[serde(default)]
        os: Option<String>,
        #[serde(default)]
        architecture: Option<String>,
    }
    let img: Check = serde_json::from_slice(&config).map_err(invalid_config)?;
    if let Some(c) = &img.created {
        Timestamp::parse_rfc3339(c).map_err(invalid_config)?;
    }
    if img.os.as_deref().unwrap_or("").is_empty() {
        return Err(ExportError::InvalidConfig("missing os".into()));
    }
    if img.architecture.as_deref().unwrap_or("").is_empty() {
        return Err(ExportError::InvalidConfig("missing architecture".into()));
    }

    #[derive(serde::Serialize)]
    struct RootFs<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        diff_ids: Option<&'a [Digest]>,
    }
    let rootfs = RootFs {
        kind: "layers",
        diff_ids: (!input.diff_ids.is_empty()).then_some(input.diff_ids),
    };
    map.insert("rootfs".into(), raw(json::to_vec(&rootfs)?)?);

    let epoch = input.epoch.map(|e| Timestamp::from_unix(e, 0));
    let mut history = history;
    if let (Some(epoch), Some(h)) = (epoch, history.as_mut()) {
        let base_history = match input.base_config {
            Some(b) if !b.is_empty() => parse_history(&parse_map(b).map_err(|e| {
                ExportError::InvalidConfig(format!("failed to unmarshal base image config: {e}"))
            })?)?
            .unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut diverged = false;
        for (i, e) in h.iter_mut().enumerate() {
            // The base image's own entries keep their times
            // (moby/buildkit#4614).
            if !diverged && base_history.get(i) == Some(e) {
                continue;
            }
            diverged = true;
            if e.created.is_none_or(|c| c.after(&epoch)) {
                e.created = Some(epoch);
            }
        }
    }
    let history_json = match &history {
        None => b"null".to_vec(),
        Some(h) => json::to_vec(&h.iter().map(Hist::to_history).collect::<Vec<_>>())?,
    };
    map.insert("history".into(), raw(history_json)?);

    if let (Some(v), Some(epoch)) = (map.get("created"), epoch) {
        let created: Option<String> = serde_json::from_str(v.get()).map_err(|e| {
            ExportError::InvalidConfig(format!(
                "failed to unmarshal creation time {}: {e}",
                v.get()
            ))
        })?;
        if let Some(c) = created
            && Timestamp::parse_rfc3339(&c)?.after(&epoch)
        {
            map.insert("created".into(), time_json(Some(epoch))?);
        }
    }
    if !map.contains_key("created") {
        let last = history
            .iter()
            .flatten()
            .filter_map(|h| h.created)
            .next_back();
        map.insert("created".into(), time_json(last)?);
    }
    if let Some(cache) = input.inline_cache {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(cache);
        map.insert(INLINE_CACHE_KEY.into(), raw(json::to_vec(&b64)?)?);
    }

    // json.Marshal of map[string]json.RawMessage: keys sorted, each value
    // compacted and HTML-escaped.
    let mut out = Vec::with_capacity(config.len() + 256);
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&json::to_vec(k)?);
        out.push(b':');
        out.extend_from_slice(&compact_go(v.get()));
    }
    out.push(b'}');
    let image: Image = serde_json::from_slice(&out).map_err(invalid_config)?;
    Ok(ConfigBlob { bytes: out, image })
}

// ---- manifests -----------------------------------------------------------------

/// BuildKit's layer media type conversion between OCI and Docker names;
/// unknown types stay as they are.
pub fn convert_layer_media_type(mt: &str, oci: bool) -> String {
    use media_types::*;
    const DOCKER_ZSTD: &str = DOCKER_LAYER_ZSTD;
    let converted = if oci {
        match mt {
            OCI_LAYER | DOCKER_LAYER => OCI_LAYER,
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
            OCI_LAYER_ZSTD | DOCKER_ZSTD => OCI_LAYER_ZSTD,
            OCI_LAYER_NON_DISTRIBUTABLE | DOCKER_LAYER_FOREIGN => OCI_LAYER_NON_DISTRIBUTABLE,
            OCI_LAYER_NON_DISTRIBUTABLE_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
                OCI_LAYER_NON_DISTRIBUTABLE_GZIP
            }
            OCI_LAYER_NON_DISTRIBUTABLE_ZSTD => OCI_LAYER_NON_DISTRIBUTABLE_ZSTD,
            other => other,
        }
    } else {
        match mt {
            OCI_LAYER | DOCKER_LAYER => DOCKER_LAYER,
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => DOCKER_LAYER_GZIP,
            OCI_LAYER_ZSTD | DOCKER_ZSTD => DOCKER_ZSTD,
            OCI_LAYER_NON_DISTRIBUTABLE | DOCKER_LAYER_FOREIGN => DOCKER_LAYER_FOREIGN,
            OCI_LAYER_NON_DISTRIBUTABLE_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
                DOCKER_LAYER_FOREIGN_GZIP
            }
            other => other,
        }
    };
    converted.to_owned()
}

/// BuildKit's `RemoveInternalLayerAnnotations`: none at all with Docker
/// types; BuildKit's bookkeeping ones never.
fn layer_annotations(a: &BTreeMap<String, String>, oci: bool) -> BTreeMap<String, String> {
    if !oci {
        return BTreeMap::new();
    }
    a.iter()
        .filter(|(k, _)| {
            k.as_str() != "containerd.io/uncompressed"
                && k.as_str() != "buildkit/createdat"
                && !k.starts_with("containerd.io/distribution.source.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The schema 2 manifest of a config and layers, OCI or Docker.
pub fn manifest(
    config: &Descriptor,
    layers: &[Layer],
    oci: bool,
    annotations: BTreeMap<String, String>,
) -> Manifest {
    let layers = layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor.clone();
            d.media_type = convert_layer_media_type(&d.media_type, oci);
            d.annotations = layer_annotations(&d.annotations, oci);
            d
        })
        .collect();
    let mut config = config.clone();
    config.media_type = if oci {
        media_types::OCI_CONFIG
    } else {
        media_types::DOCKER_CONFIG
    }
    .to_owned();
    Manifest {
        schema_version: 2,
        media_type: if oci {
            media_types::OCI_MANIFEST
        } else {
            media_types::DOCKER_MANIFEST
        }
        .to_owned(),
        artifact_type: String::new(),
        config,
        layers,
        subject: None,
        annotations,
    }
}

/// The manifest's bytes as BuildKit writes them: `json.MarshalIndent` of
/// `ocispec.Manifest`, which writes `"layers": null` when there are none.
pub fn manifest_json(m: &Manifest) -> Result<Vec<u8>, ExportError> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        schema_version: u32,
        #[serde(skip_serializing_if = "str::is_empty")]
        media_type: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        artifact_type: &'a str,
        config: &'a Descriptor,
        layers: Option<&'a [Descriptor]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<&'a Descriptor>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: &'a BTreeMap<String, String>,
    }
    Ok(json::to_vec_pretty(&Out {
        schema_version: m.schema_version,
        media_type: &m.media_type,
        artifact_type: &m.artifact_type,
        config: &m.config,
        layers: (!m.layers.is_empty()).then_some(&m.layers[..]),
        subject: m.subject.as_deref(),
        annotations: &m.annotations,
    })?)
}

/// How [`write_image`] writes the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    pub oci_media_types: bool,
    /// Manifest annotations (`annotation.*` / `annotation-manifest.*`).
    pub annotations: BTreeMap<String, String>,
    /// Annotations of the returned descriptor
    /// (`annotation-manifest-descriptor.*`).
    pub descriptor_annotations: BTreeMap<String, String>,
    /// Set on the returned descriptor, as BuildKit does for a
    /// single-platform export.
    pub platform: Option<Platform>,
}

/// An image written to the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenImage {
    pub manifest: Manifest,
    /// Media type, digest and size of the manifest, with the descriptor
    /// annotations and platform of [`ImageOptions`].
    pub manifest_desc: Descriptor,
    pub config_desc: Descriptor,
}

/// Stores `config` (from [`image_config`]) and the manifest over `layers`
/// (already in the store) and returns the manifest's descriptor.
pub async fn write_image(
    store: &ContentStore,
    config: &[u8],
    layers: &[Layer],
    opts: &ImageOptions,
) -> Result<WrittenImage, ExportError> {
    let config_desc = Descriptor::new(
        if opts.oci_media_types {
            media_types::OCI_CONFIG
        } else {
            media_types::DOCKER_CONFIG
        },
        Digest::sha256_of(config),
        config.len() as u64,
    );
    let m = manifest(
        &config_desc,
        layers,
        opts.oci_media_types,
        opts.annotations.clone(),
    );
    let bytes = manifest_json(&m)?;
    let mut manifest_desc =
        Descriptor::new(&m.media_type, Digest::sha256_of(&bytes), bytes.len() as u64);
    // Config first: a stored manifest never points at a missing config.
    store
        .write_blob(config.to_vec(), Some(&config_desc.digest))
        .await?;
    store.write_blob(bytes, Some(&manifest_desc.digest)).await?;
    manifest_desc.annotations = opts.descriptor_annotations.clone();
    manifest_desc.platform = opts.platform.clone();
    Ok(WrittenImage {
        manifest: m,
        manifest_desc,
        config_desc,
    })
}

/// Stores the index (OCI) or manifest list (Docker) over `manifests`,
/// whose descriptors carry their platforms, and returns its descriptor: a
/// multi-platform image's root.
pub async fn write_index(
    store: &ContentStore,
    manifests: Vec<Descriptor>,
    oci_media_types: bool,
    annotations: BTreeMap<String, String>,
) -> Result<Descriptor, ExportError> {
    let media_type = if oci_media_types {
        media_types::OCI_INDEX
    } else {
        media_types::DOCKER_MANIFEST_LIST
    };
    let index = Index {
        schema_version: 2,
        media_type: media_type.into(),
        artifact_type: String::new(),
        manifests,
        subject: None,
        annotations,
    };
    let bytes = json::to_vec(&index)?;
    let desc = Descriptor::new(media_type, Digest::sha256_of(&bytes), bytes.len() as u64);
    store.write_blob(bytes, Some(&desc.digest)).await?;
    Ok(desc)
}

// ---- walking stored images -------------------------------------------------------

fn read_document(store: &ContentStore, desc: &Descriptor) -> Result<Vec<u8>, ExportError> {
    let path = store.blob_path(&desc.digest);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ContentError::NotFound(desc.digest.clone()).into());
        }
        Err(source) => {
            return Err(ExportError::Io {
                op: "open",
                path,
                source,
            });
        }
    };
    let mut data = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut data)
        .map_err(|source| ExportError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
    if data.len() as u64 > MAX_DOCUMENT {
        return Err(ExportError::InvalidDocument {
            digest: desc.digest.clone(),
            message: format!("larger than {MAX_DOCUMENT} bytes"),
        });
    }
    Ok(data)
}

fn parse_document<T: for<'de> Deserialize<'de>>(
    desc: &Descriptor,
    data: &[u8],
) -> Result<T, ExportError> {
    serde_json::from_slice(data).map_err(|e| ExportError::InvalidDocument {
        digest: desc.digest.clone(),
        message: e.to_string(),
    })
}

/// Every descriptor reachable from `root` (itself first, then children
/// depth first, as containerd's `images.Walk`), with the manifests'
/// config digests for `manifest.json`.
fn walk_image(store: &ContentStore, root: &Descriptor) -> Result<Vec<Descriptor>, ExportError> {
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(desc) = stack.pop() {
        let children: Vec<Descriptor> = if media_types::is_manifest_type(&desc.media_type) {
            let m: Manifest = parse_document(&desc, &read_document(store, &desc)?)?;
            std::iter::once(m.config).chain(m.layers).collect()
        } else if media_types::is_index_type(&desc.media_type) {
            let i: Index = parse_document(&desc, &read_document(store, &desc)?)?;
            i.manifests
        } else {
            Vec::new()
        };
        out.push(desc);
        stack.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// containerd's `ociReferenceName`: the object of a name (its tag, with
/// `@digest` kept), the whole name when it has no host part.
fn oci_ref_name(name: &str) -> String {
    let Some(slash) = name.find('/') else {
        return name.to_owned();
    };
    let path = &name[slash..];
    match path.find([':', '@']) {
        Some(i) => path[i..].strip_prefix(':').unwrap_or(&path[i..]).to_owned(),
        None => String::new(),
    }
}

/// The `index.json` entries: one per name (BuildKit normalises names with
/// `TagNameOnly`), or the bare descriptor without names.
fn index_entries(root: &Descriptor, names: &[Reference]) -> Vec<Descriptor> {
    if names.is_empty() {
        return vec![root.clone()];
    }
    names
        .iter()
        .map(|n| {
            let full = n.clone().tag_name_only().to_string();
            let mut d = root.clone();
            d.annotations
                .insert(ANNOTATION_REF_NAME.into(), oci_ref_name(&full));
            d.annotations.insert(ANNOTATION_IMAGE_NAME.into(), full);
            d
        })
        .collect()
}

fn oci_layout_json() -> &'static [u8] {
    br#"{"imageLayoutVersion":"1.0.0"}"#
}

/// An archive entry: a file with its bytes or a stored blob, or a
/// directory.
enum Source {
    Data(Vec<u8>),
    Blob(Box<Descriptor>),
    Dir,
}

struct Record {
    name: String,
    mode: i64,
    source: Source,
}

fn archive_records(
    store: &ContentStore,
    root: &Descriptor,
    names: &[Reference],
    docker: bool,
) -> Result<Vec<Record>, ExportError> {
    if docker && !media_types::is_manifest_type(&root.media_type) {
        return Err(ExportError::Unsupported(
            "docker exporter does not currently support exporting manifest lists".into(),
        ));
    }
    let mut records = vec![Record {
        name: "oci-layout".into(),
        mode: 0o444,
        source: Source::Data(oci_layout_json().to_vec()),
    }];
    let mut algorithms = std::collections::BTreeSet::new();
    let descs = walk_image(store, root)?;
    for d in &descs {
        if media_types::is_non_distributable(&d.media_type) && !store.blob_path(&d.digest).exists()
        {
            // Foreign layers are fetched from their URLs, never shipped.
            continue;
        }
        algorithms.insert(d.digest.algorithm().as_str());
        records.push(Record {
            name: format!(
                "blobs/{}/{}",
                d.digest.algorithm().as_str(),
                d.digest.encoded()
            ),
            mode: 0o444,
            source: Source::Blob(Box::new(d.clone())),
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.into(),
        artifact_type: String::new(),
        manifests: index_entries(root, names),
        subject: None,
        annotations: BTreeMap::new(),
    };
    records.push(Record {
        name: "index.json".into(),
        mode: 0o644,
        source: Source::Data(json::to_vec(&index)?),
    });
    if docker {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            repo_tags: Option<Vec<String>>,
            layers: Option<Vec<String>>,
        }
        let m: Manifest = parse_document(root, &read_document(store, root)?)?;
        let blob = |d: &Digest| format!("blobs/{}/{}", d.algorithm().as_str(), d.encoded());
        let tags: Vec<String> = names
            .iter()
            .map(|n| n.clone().tag_name_only().familiar_string())
            .collect();
        let layers: Vec<String> = m.layers.iter().map(|l| blob(&l.digest)).collect();
        let entry = Entry {
            config: blob(&m.config.digest),
            repo_tags: (!tags.is_empty()).then_some(tags),
            layers: (!layers.is_empty()).then_some(layers),
        };
        records.push(Record {
            name: "manifest.json".into(),
            mode: 0o644,
            source: Source::Data(json::to_vec(&[entry])?),
        });
    }
    if !algorithms.is_empty() {
        records.push(Record {
            name: "blobs/".into(),
            mode: 0o755,
            source: Source::Dir,
        });
        for alg in algorithms {
            records.push(Record {
                name: format!("blobs/{alg}/"),
                mode: 0o755,
                source: Source::Dir,
            });
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records.dedup_by(|a, b| a.name == b.name);
    Ok(records)
}

/// Copies a stored blob to `out`, checking its digest on the way (as
/// containerd's exporter does: a corrupted store must not produce a
/// plausible archive).
fn copy_blob(
    store: &ContentStore,
    desc: &Descriptor,
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ExportError> {
    let path = store.blob_path(&desc.digest);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ContentError::NotFound(desc.digest.clone()).into());
        }
        Err(source) => {
            return Err(ExportError::Io {
                op: "open",
                path,
                source,
            });
        }
    };
    let mut digester = desc.digest.algorithm().digester();
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ExportError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        copied += n as u64;
        if copied > desc.size {
            break;
        }
        digester.update(&buf[..n]);
        out(&buf[..n]).map_err(ExportError::Output)?;
    }
    let actual = digester.finish();
    if copied != desc.size || actual != desc.digest {
        return Err(ExportError::DigestMismatch {
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

fn write_archive<W: Write>(
    store: &ContentStore,
    root: &Descriptor,
    names: &[Reference],
    docker: bool,
    out: W,
) -> Result<W, ExportError> {
    let records = archive_records(store, root, names, docker)?;
    let mut tw = TarWriter::new(out);
    for r in records {
        let (typeflag, size) = match &r.source {
            Source::Data(d) => (b'0', d.len() as i64),
            Source::Blob(d) => (b'0', d.size as i64),
            Source::Dir => (b'5', 0),
        };
        let mut h = TarHeader::new(r.name.into_bytes(), typeflag);
        h.mode = r.mode;
        h.size = size;
        h.format = TarFormat::Unknown;
        tw.write_header(&h).map_err(ExportError::Output)?;
        match &r.source {
            Source::Data(d) => tw.write_data(d).map_err(ExportError::Output)?,
            Source::Blob(d) => copy_blob(store, d, |chunk| tw.write_data(chunk))?,
            Source::Dir => {}
        }
    }
    let (out, _) = tw.finish().map_err(ExportError::Output)?;
    Ok(out)
}

/// Writes the image (a manifest, or an index and everything under it) as
/// an OCI image layout tar, as BuildKit's `oci` exporter: `oci-layout`,
/// `index.json` (one entry per name) and the blobs. `root` is written into
/// `index.json` as given: BuildKit adds [`ANNOTATION_CREATED`] and the
/// platform first. Blocking.
pub fn write_oci_archive<W: Write>(
    store: &ContentStore,
    root: &Descriptor,
    names: &[Reference],
    out: W,
) -> Result<W, ExportError> {
    write_archive(store, root, names, false, out)
}

/// As [`write_oci_archive`] plus `manifest.json` (`docker load`'s
/// format), as BuildKit's `docker` exporter; single manifests only.
/// Blocking.
pub fn write_docker_archive<W: Write>(
    store: &ContentStore,
    root: &Descriptor,
    names: &[Reference],
    out: W,
) -> Result<W, ExportError> {
    write_archive(store, root, names, true, out)
}

/// The same layout as [`write_oci_archive`], as files under `dir` (created
/// if needed; existing blobs are kept, `index.json` replaced). Blocking.
pub fn write_oci_layout_dir(
    store: &ContentStore,
    root: &Descriptor,
    names: &[Reference],
    dir: &Path,
) -> Result<(), ExportError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    for r in archive_records(store, root, names, false)? {
        let path = dir.join(r.name.trim_end_matches('/'));
        match r.source {
            Source::Dir => std::fs::create_dir_all(&path).map_err(io_err("create", &path))?,
            Source::Data(d) => {
                // Written aside and renamed: a reader never sees half a file.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, d).map_err(io_err("write", &tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
            }
            Source::Blob(d) => {
                if path.exists() {
                    continue;
                }
                let tmp = path.with_extension("tmp");
                let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
                copy_blob(store, &d, |chunk| f.write_all(chunk))?;
                f.sync_all().map_err(io_err("sync", &tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
            }
        }
    }
    Ok(())
}

// ---- push ------------------------------------------------------------------------

/// How [`push`] pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOptions {
    /// BuildKit's `push-by-digest`: the manifest goes up under its digest
    /// only, no tag.
    pub by_digest: bool,
    /// Blobs known to be in another repository of the same registry
    /// (repository path, e.g. `library/alpine`), to mount instead of
    /// upload.
    pub mount_from: BTreeMap<Digest, String>,
    /// Blob uploads at once.
    pub concurrency: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            by_digest: false,
            mount_from: BTreeMap::new(),
            concurrency: 4,
        }
    }
}

/// What [`push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// The pushed root (manifest or index) descriptor.
    pub descriptor: Descriptor,
    /// Each blob (layers, configs) and what happened to it.
    pub blobs: Vec<(Digest, PushOutcome)>,
    /// Each manifest or index, the root last.
    pub manifests: Vec<(Digest, PushOutcome)>,
}

async fn push_manifest_tree(
    client: &RegistryClient,
    store: &ContentStore,
    reference: &Reference,
    desc: &Descriptor,
    is_root: bool,
    opts: &PushOptions,
    report: &mut PushReport,
) -> Result<(), ExportError> {
    let bytes = store.read_blob(&desc.digest, MAX_DOCUMENT).await?;
    if media_types::is_index_type(&desc.media_type) {
        let index: Index = parse_document(desc, &bytes)?;
        for m in &index.manifests {
            Box::pin(push_manifest_tree(
                client, store, reference, m, false, opts, report,
            ))
            .await?;
        }
    } else if media_types::is_manifest_type(&desc.media_type) {
        let m: Manifest = parse_document(desc, &bytes)?;
        // Layers in parallel, then the config: the registry may check a
        // manifest's references when it arrives.
        // Owned descriptors and mount sources: a stream of futures that
        // borrow per item is Send only for one lifetime, which callers that
        // spawn it cannot name.
        let layers: Vec<(Descriptor, Option<String>)> = m
            .layers
            .iter()
            .filter(|l| !media_types::is_non_distributable(&l.media_type))
            .map(|l| (l.clone(), opts.mount_from.get(&l.digest).cloned()))
            .collect();
        let pushed: Vec<(Digest, PushOutcome)> = futures::stream::iter(layers)
            .map(|(l, mount)| {
                let store = store.clone();
                async move {
                    let outcome = client
                        .push_blob(reference, &l, &PushSource::Store(store), mount.as_deref())
                        .await?;
                    Ok::<_, ExportError>((l.digest.clone(), outcome))
                }
            })
            .buffered(opts.concurrency.max(1))
            .try_collect()
            .await?;
        report.blobs.extend(pushed);
        let outcome = client
            .push_blob(
                reference,
                &m.config,
                &PushSource::Store(store.clone()),
                opts.mount_from.get(&m.config.digest).map(String::as_str),
            )
            .await?;
        report.blobs.push((m.config.digest.clone(), outcome));
    } else {
        return Err(ExportError::Unsupported(format!(
            "cannot push {}: not a manifest or index",
            desc.media_type
        )));
    }
    // Children of an index go by digest; the root by tag unless told not
    // to.
    let target = if is_root && !opts.by_digest {
        reference.clone().tag_name_only()
    } else {
        reference.trim_named()
    };
    let plain = Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size);
    let outcome = client
        .push_manifest(&target, &plain, Bytes::from(bytes))
        .await?;
    report.manifests.push((desc.digest.clone(), outcome));
    Ok(())
}

/// Pushes the image rooted at `root` (in `store`) to `reference`'s
/// repository: blobs first (each skipped when present), then manifests,
/// the root under `reference`'s tag (`latest` when it has none) or, with
/// [`PushOptions::by_digest`], under its digest only.
pub async fn push(
    client: &RegistryClient,
    store: &ContentStore,
    reference: &Reference,
    root: &Descriptor,
    opts: &PushOptions,
) -> Result<PushReport, ExportError> {
    let mut report = PushReport {
        descriptor: root.clone(),
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    push_manifest_tree(client, store, reference, root, true, opts, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_as_go() {
        let t = Timestamp::parse_rfc3339("2026-11-27T21:26:23.468705970Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T21:26:23.46870597Z");
        let t = Timestamp::parse_rfc3339("2024-01-02T03:04:05+00:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-02T03:04:05Z");
        let t = Timestamp::parse_rfc3339("2024-01-02T03:04:05.5-07:30").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-02T03:04:05.5-07:30");
        assert_eq!(t.unix_secs(), 1_704_164_645 + 7 * 3600 + 1800);
        assert_eq!(
            Timestamp::from_unix(0, 0).to_rfc3339(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix(1_700_000_000, 0).to_rfc3339(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            Timestamp::from_unix(-1, 0).to_rfc3339(),
            "1969-12-31T23:59:59Z"
        );
        for bad in [
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "x",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oci_reference_names() {
        assert_eq!(oci_ref_name("docker.io/foo/bar:tag"), "tag");
        assert_eq!(oci_ref_name("localhost:5000/x:latest"), "latest");
        assert_eq!(oci_ref_name("docker.io/x@sha256:ab"), "@sha256:ab");
        assert_eq!(oci_ref_name("docker.io/x:t@sha256:ab"), "t@sha256:ab");
    }

    #[test]
    fn compacts_like_go() {
        assert_eq!(
            compact_go("{ \"a\" : [1, 2],\n \"b\": \"x y <&> \\\" \u{2028}\" }"),
            b"{\"a\":[1,2],\"b\":\"x y \\u003c\\u0026\\u003e \\\" \\u2028\"}"
        );
    }
}
