//! `RUN --mount=…` and `RUN --device=…` values, and the RUN modes
//! (`--network`, `--security`). Start with [`parse_mount`].
//!
//! A mount is a CSV list of `key=value` fields (and a few bare flags such as
//! `ro`). As in BuildKit it is read twice: when the Dockerfile is parsed,
//! only the CSV syntax and the rule that `from=` takes no variables are
//! checked (variables are not known yet); when the RUN is dispatched, every
//! value is expanded and the whole mount checked ([`parse_mount`] with an
//! expander).

use std::fmt;

use super::golang::{
    csv_fields, parse_bool, parse_uint, quote, ram_in_bytes, to_lower, with_suggestion,
};
use super::shell::ExpandError;

/// What a `RUN --mount` mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A directory of the build context or of another stage/image.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty in-memory file system.
    Tmpfs,
    /// A secret file (or environment variable) from the client.
    Secret,
    /// An SSH agent socket forwarded from the client.
    Ssh,
}

impl MountType {
    /// The name used in Dockerfiles.
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }

    fn parse(s: &str) -> Option<MountType> {
        Some(match s {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    /// Everyone writes at once (the default).
    Shared,
    /// A new cache for each concurrent user.
    Private,
    /// One user at a time.
    Locked,
}

impl ShareMode {
    fn parse(s: &str) -> Option<ShareMode> {
        Some(match s {
            "shared" => ShareMode::Shared,
            "private" => ShareMode::Private,
            "locked" => ShareMode::Locked,
            _ => return None,
        })
    }
}

/// One `RUN --mount`, BuildKit's `instructions.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `type=` (default bind).
    pub mount_type: MountType,
    /// `from=`: stage, image or named context to mount from.
    pub from: String,
    /// `source=`/`src=`.
    pub source: String,
    /// `target=`/`dst=`/`destination=`.
    pub target: String,
    /// `readonly`/`ro`, `readwrite`/`rw`; by default true except for cache
    /// and tmpfs.
    pub read_only: bool,
    /// `size=` of a tmpfs, in bytes (0: unlimited).
    pub size_limit: i64,
    /// `id=`: cache or secret id.
    pub cache_id: String,
    /// `sharing=` of a cache.
    pub cache_sharing: Option<ShareMode>,
    /// `required` for secret and ssh mounts.
    pub required: bool,
    /// `env=`: expose a secret as this environment variable.
    pub env: Option<String>,
    /// `mode=` (octal) for cache, secret and ssh mounts.
    pub mode: Option<u32>,
    /// `uid=` for cache, secret and ssh mounts.
    pub uid: Option<u32>,
    /// `gid=` for cache, secret and ssh mounts.
    pub gid: Option<u32>,
}

/// An error of a mount or device value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError(pub String);

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MountError {}

impl From<ExpandError> for MountError {
    fn from(e: ExpandError) -> Self {
        MountError(e.message().to_owned())
    }
}

/// Expands one word (a mount value) at dispatch time.
pub type Expander<'a> = dyn FnMut(&str) -> Result<String, ExpandError> + 'a;

const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Parses a `--mount` value. Without an expander this is BuildKit's
/// parse-time check (only CSV syntax and unexpandable `from=`; the result
/// is a placeholder bind mount); with one, values are expanded and the
/// mount fully checked.
pub fn parse_mount(
    value: &str,
    mut expander: Option<&mut Expander<'_>>,
) -> Result<Mount, MountError> {
    let err = |m: String| MountError(m);
    let fields = csv_fields(value).map_err(|e| err(format!("failed to parse csv mounts: {e}")))?;
    let mut m = Mount {
        mount_type: MountType::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        read_only: false,
        size_limit: 0,
        cache_id: String::new(),
        cache_sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    for field in &fields {
        let (key, raw_value) = match field.split_once('=') {
            Some((k, v)) => (to_lower(k), Some(v)),
            None => (to_lower(field), None),
        };
        let Some(raw_value) = raw_value else {
            if expander.is_none() {
                continue;
            }
            match key.as_str() {
                "readonly" | "ro" => {
                    m.read_only = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.read_only = false;
                    ro_auto = false;
                }
                "required" if matches!(m.mount_type, MountType::Secret | MountType::Ssh) => {
                    m.required = true;
                }
                "required" => {
                    return Err(err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.mount_type
                    )));
                }
                _ => {
                    return Err(err(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        let value = match expander.as_mut() {
            Some(expand) => expand(raw_value)?,
            None if key == "from" => {
                // A `$` anywhere but at the end would be a variable.
                if raw_value
                    .find('$')
                    .is_some_and(|i| i + 1 != raw_value.len())
                {
                    return Err(err(format!(
                        "'{key}' doesn't support variable expansion, define alias stage instead"
                    )));
                }
                raw_value.to_owned()
            }
            None => continue,
        };
        let bad_value = || err(format!("invalid value for {key}: {value}"));
        let unexpected = |t: MountType| err(format!("unexpected key '{key}' for mount type '{t}'"));
        match key.as_str() {
            "type" => {
                m.mount_type = MountType::parse(&to_lower(&value)).ok_or_else(|| {
                    err(with_suggestion(
                        format!("unsupported mount type {}", quote(&value)),
                        &value,
                        ["bind", "cache", "tmpfs", "secret", "ssh"],
                        true,
                    ))
                })?;
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.read_only = parse_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = !parse_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.mount_type, MountType::Secret | MountType::Ssh) {
                    return Err(unexpected(m.mount_type));
                }
                m.required = parse_bool(&value).ok_or_else(bad_value)?;
            }
            "size" => {
                if m.mount_type != MountType::Tmpfs {
                    return Err(unexpected(m.mount_type));
                }
                m.size_limit = ram_in_bytes(&value).ok_or_else(bad_value)?;
            }
            "id" => m.cache_id = value,
            "sharing" => {
                m.cache_sharing = Some(ShareMode::parse(&to_lower(&value)).ok_or_else(|| {
                    err(with_suggestion(
                        format!("unsupported sharing value {}", quote(&value)),
                        &value,
                        ["shared", "private", "locked"],
                        true,
                    ))
                })?);
            }
            "mode" => {
                let v = parse_uint(&value, 8, 32)
                    .map_err(|_| err(format!("invalid value {value} for mode")))?;
                m.mode = Some(v as u32);
            }
            "uid" => {
                let v = parse_uint(&value, 10, 32)
                    .map_err(|_| err(format!("invalid value {value} for uid")))?;
                m.uid = Some(v as u32);
            }
            "gid" => {
                let v = parse_uint(&value, 10, 32)
                    .map_err(|_| err(format!("invalid value {value} for gid")))?;
                m.gid = Some(v as u32);
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    MOUNT_KEYS,
                    true,
                )));
            }
        }
    }

    let file_info_allowed = matches!(
        m.mount_type,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !file_info_allowed {
        let t = quote(m.mount_type.as_str());
        if m.mode.is_some() {
            return Err(err(format!("mode not allowed for {t} type mounts")));
        }
        if m.uid.is_some() {
            return Err(err(format!("uid not allowed for {t} type mounts")));
        }
        if m.gid.is_some() {
            return Err(err(format!("gid not allowed for {t} type mounts")));
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.mount_type, MountType::Cache | MountType::Tmpfs);
    }
    if m.mount_type == MountType::Secret {
        if !m.from.is_empty() {
            return Err(err("secret mount should not have a from".to_owned()));
        }
        if m.cache_sharing.is_some() {
            return Err(err("secret mount should not define sharing".to_owned()));
        }
        if m.source.is_empty() && m.target.is_empty() && m.cache_id.is_empty() {
            return Err(err(
                "invalid secret mount. one of source, target required".to_owned()
            ));
        }
        if !m.source.is_empty() && !m.cache_id.is_empty() {
            return Err(err("both source and id can't be set".to_owned()));
        }
    }
    if m.cache_sharing.is_some() && m.mount_type != MountType::Cache {
        return Err(err(format!(
            "invalid cache sharing set for {} mount",
            m.mount_type
        )));
    }
    Ok(m)
}

/// One `RUN --device` (a CDI device), BuildKit's `instructions.Device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device name (`vendor.com/class=name`).
    pub name: String,
    /// `required`: fail when the device is not available.
    pub required: bool,
}

/// Parses a `--device` value: a name, optionally `name=…` and `required`.
pub fn parse_device(value: &str) -> Result<Device, MountError> {
    let err = |m: String| MountError(m);
    let fields = csv_fields(value).map_err(|e| err(format!("failed to parse csv devices: {e}")))?;
    let mut d = Device {
        name: String::new(),
        required: false,
    };
    for field in &fields {
        let Some((k, v)) = field.split_once('=') else {
            if to_lower(field) == "required" {
                d.required = true;
            } else if d.name.is_empty() {
                d.name = field.clone();
            } else {
                return Err(err(format!(
                    "invalid field '{field}' must be a key=value pair"
                )));
            }
            continue;
        };
        let key = to_lower(k);
        match key.as_str() {
            "name" => {
                if !d.name.is_empty() {
                    return Err(err(format!("device name already set to {}", d.name)));
                }
                d.name = v.to_owned();
            }
            "required" => {
                d.required =
                    parse_bool(v).ok_or_else(|| err(format!("invalid value for {key}: {v}")))?;
            }
            _ if d.name.is_empty() => d.name = field.clone(),
            _ => {
                return Err(err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    ["name", "required"],
                    true,
                )));
            }
        }
    }
    Ok(d)
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The worker's default network.
    #[default]
    Default,
    /// No network at all.
    None,
    /// The host's network (needs the `network.host` entitlement).
    Host,
}

impl NetworkMode {
    pub(crate) fn parse(s: &str) -> Result<NetworkMode, String> {
        match s {
            "default" => Ok(NetworkMode::Default),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => Err(format!("invalid network mode {}", quote(s))),
        }
    }
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityMode {
    /// The usual sandbox.
    #[default]
    Sandbox,
    /// All capabilities (needs the `security.insecure` entitlement).
    Insecure,
}

impl SecurityMode {
    pub(crate) fn parse(s: &str) -> Result<SecurityMode, String> {
        match s {
            "sandbox" => Ok(SecurityMode::Sandbox),
            "insecure" => Ok(SecurityMode::Insecure),
            _ => Err(format!("security {} is not valid", quote(s))),
        }
    }
}
