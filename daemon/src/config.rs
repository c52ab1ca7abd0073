//! `buildkitd.toml`: the daemon's configuration file.
//!
//! Parsing is as lenient as BuildKit's, because its test harness writes the
//! file by concatenating fragments: a missing file is an empty config, unknown
//! keys are reported (not rejected), and a table that appears twice is merged.
//! Start at [`load_file`]; the types mirror BuildKit's config keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to parse config {path}: line {line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole file. Every field is optional; defaults are applied later, when
/// flags and config are merged.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub debug: bool,
    pub trace: bool,
    pub root: Option<String>,
    #[serde(rename = "insecure-entitlements")]
    pub insecure_entitlements: Vec<String>,
    #[serde(rename = "proxyNetwork")]
    pub proxy_network: bool,
    #[serde(rename = "provenanceEnvDir")]
    pub provenance_env_dir: Option<String>,
    pub log: LogConfig,
    pub grpc: GrpcConfig,
    pub otel: OtelConfig,
    pub cdi: CdiConfig,
    pub worker: WorkersConfig,
    pub registry: BTreeMap<String, RegistryConfig>,
    pub dns: Option<DnsConfig>,
    pub history: Option<HistoryConfig>,
    pub frontend: FrontendsConfig,
    pub system: Option<SystemConfig>,
    pub cache: CacheConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    pub address: Vec<String>,
    #[serde(rename = "debugAddress")]
    pub debug_address: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(rename = "securityDescriptor")]
    pub security_descriptor: Option<String>,
    pub tls: TlsConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct OtelConfig {
    #[serde(rename = "socketPath")]
    pub socket_path: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CdiConfig {
    pub disabled: Option<bool>,
    #[serde(rename = "specDirs")]
    pub spec_dirs: Vec<String>,
    #[serde(rename = "autoAllowed")]
    pub auto_allowed: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct WorkersConfig {
    pub oci: WorkerConfig,
    pub containerd: WorkerConfig,
}

/// `[worker.oci]` and `[worker.containerd]` share most keys; the
/// containerd-only ones are simply unused by the OCI worker.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    pub enabled: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<String>,
    pub snapshotter: Option<String>,
    pub rootless: Option<bool>,
    #[serde(rename = "noProcessSandbox")]
    pub no_process_sandbox: bool,
    pub gc: Option<bool>,
    pub gckeepstorage: Option<DiskSpace>,
    #[serde(rename = "reservedSpace")]
    pub reserved_space: Option<DiskSpace>,
    #[serde(rename = "maxUsedSpace")]
    pub max_used_space: Option<DiskSpace>,
    #[serde(rename = "minFreeSpace")]
    pub min_free_space: Option<DiskSpace>,
    pub gcpolicy: Vec<GcPolicyConfig>,
    #[serde(rename = "networkMode")]
    pub network_mode: Option<String>,
    #[serde(rename = "cniConfigPath")]
    pub cni_config_path: Option<String>,
    #[serde(rename = "cniBinaryPath")]
    pub cni_binary_path: Option<String>,
    #[serde(rename = "cniPoolSize")]
    pub cni_pool_size: Option<i64>,
    #[serde(rename = "bridgeName")]
    pub bridge_name: Option<String>,
    #[serde(rename = "bridgeSubnet")]
    pub bridge_subnet: Option<String>,
    #[serde(rename = "userRemapUnsupported")]
    pub user_remap_unsupported: Option<String>,
    pub binary: Option<String>,
    #[serde(rename = "proxySnapshotterPath")]
    pub proxy_snapshotter_path: Option<String>,
    #[serde(rename = "defaultCgroupParent")]
    pub default_cgroup_parent: Option<String>,
    #[serde(rename = "stargzSnapshotter")]
    pub stargz_snapshotter: Option<toml::Table>,
    #[serde(rename = "apparmor-profile")]
    pub apparmor_profile: Option<String>,
    pub selinux: bool,
    #[serde(rename = "max-parallelism")]
    pub max_parallelism: Option<i64>,
    // containerd worker only
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub runtime: Option<ContainerdRuntime>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ContainerdRuntime {
    pub name: Option<String>,
    pub path: Option<String>,
    pub options: Option<toml::Table>,
}

/// One `[[worker.*.gcpolicy]]` entry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct GcPolicyConfig {
    pub all: bool,
    pub filters: Vec<String>,
    #[serde(rename = "keepDuration")]
    pub keep_duration: Option<GoDuration>,
    /// Old name of `reservedSpace`.
    #[serde(rename = "keepBytes")]
    pub keep_bytes: Option<DiskSpace>,
    #[serde(rename = "reservedSpace")]
    pub reserved_space: Option<DiskSpace>,
    #[serde(rename = "maxUsedSpace")]
    pub max_used_space: Option<DiskSpace>,
    #[serde(rename = "minFreeSpace")]
    pub min_free_space: Option<DiskSpace>,
}

/// `[registry."host"]`: the image crate's type, which the registry client
/// reads as it is.
pub use bk_image::registry::hosts::RegistryConfig;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
    pub options: Vec<String>,
    #[serde(rename = "searchDomains")]
    pub search_domains: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    #[serde(rename = "maxAge")]
    pub max_age: Option<GoDuration>,
    #[serde(rename = "maxEntries")]
    pub max_entries: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FrontendsConfig {
    #[serde(rename = "dockerfile.v0")]
    pub dockerfile: FrontendConfig,
    #[serde(rename = "gateway.v0")]
    pub gateway: FrontendConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FrontendConfig {
    pub enabled: Option<bool>,
    #[serde(rename = "allowedRepositories")]
    pub allowed_repositories: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct SystemConfig {
    #[serde(rename = "platformsCacheMaxAge")]
    pub platforms_cache_max_age: Option<GoDuration>,
    #[serde(rename = "maxRegistryConcurrency")]
    pub max_registry_concurrency: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    pub gha: Option<toml::Table>,
}

/// A duration written as a Go duration string (`"48h"`, `"1h30m"`) or a
/// number of seconds (as an integer or a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(secs) => u64::try_from(secs)
                .map(|s| GoDuration(Duration::from_secs(s)))
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {secs}"))),
            IntOrString::Str(s) => parse_duration(&s)
                .map(GoDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A disk size: bytes (`1000000`, `"10GB"`, `"512MiB"`) or a share of the
/// disk holding the root (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSpace {
    Bytes(i64),
    Percent(i64),
}

impl<'de> Deserialize<'de> for DiskSpace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(n) => Ok(DiskSpace::Bytes(n)),
            IntOrString::Str(s) => parse_disk_space(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`) or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("invalid duration {text:?}");
    if text.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if num_len == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Parses a size as Docker's `RAMInBytes` does (binary multiples: `1k` is
/// 1024), or a percentage.
pub fn parse_disk_space(text: &str) -> Result<DiskSpace, String> {
    let text = text.trim();
    let invalid = || format!("invalid disk space {text:?}");
    if let Some(pct) = text.strip_suffix('%') {
        return pct
            .trim()
            .parse()
            .map(DiskSpace::Percent)
            .map_err(|_| invalid());
    }
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if num_len == 0 {
        return Err(invalid());
    }
    let value: f64 = text[..num_len].parse().map_err(|_| invalid())?;
    let unit = text[num_len..].trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(invalid()),
    };
    Ok(DiskSpace::Bytes((value * scale) as i64))
}

/// What loading found besides the config itself.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: Config,
    /// Dotted paths of keys we do not know, to be logged as warnings.
    pub unknown_keys: Vec<String>,
}

/// Loads `path`. A missing file is an empty config, as in BuildKit.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: shown,
                source,
            });
        }
    };
    load_str(&text, &shown)
}

/// Parses config text; `path` only names the source in errors.
pub fn load_str(text: &str, path: &str) -> Result<Loaded, ConfigError> {
    let table = parse_merging_tables(text).map_err(|(line, message)| ConfigError::Syntax {
        path: path.to_string(),
        line,
        message,
    })?;
    let mut unknown_keys = Vec::new();
    let config = serde_ignored::deserialize(toml::Value::Table(table), |p| {
        unknown_keys.push(p.to_string())
    })
    .map_err(|e: toml::de::Error| ConfigError::Invalid {
        path: path.to_string(),
        message: one_line(e.message()),
    })?;
    Ok(Loaded {
        config,
        unknown_keys,
    })
}

/// Parses TOML, merging tables that are defined more than once (which strict
/// TOML rejects). The error is `(1-based line, message)`.
fn parse_merging_tables(text: &str) -> Result<toml::Table, (usize, String)> {
    if let Ok(table) = text.parse::<toml::Table>() {
        return Ok(table);
    }
    // Parse each `[table]` section on its own and deep-merge the results. A
    // genuine syntax error shows up in one of the sections.
    let mut merged = toml::Table::new();
    for (first_line, section) in split_sections(text) {
        match section.parse::<toml::Table>() {
            Ok(table) => merge_tables(&mut merged, table),
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| first_line + line_of(&section, s.start))
                    .unwrap_or(first_line);
                return Err((line, one_line(e.message())));
            }
        }
    }
    Ok(merged)
}

/// toml's messages can span lines; errors here are one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Splits TOML text before every table header line, returning each section
/// with the 0-based line number it starts at.
fn split_sections(text: &str) -> Vec<(usize, String)> {
    let mut sections = vec![(0usize, String::new())];
    let mut in_multiline = false;
    for (n, line) in text.lines().enumerate() {
        let quotes = line.matches("\"\"\"").count() + line.matches("'''").count();
        let trimmed = line.trim_start();
        if !in_multiline && trimmed.starts_with('[') && is_header(trimmed) {
            sections.push((n, String::new()));
        }
        if quotes % 2 == 1 {
            in_multiline = !in_multiline;
        }
        if let Some((_, section)) = sections.last_mut() {
            section.push_str(line);
            section.push('\n');
        }
    }
    sections
}

fn is_header(line: &str) -> bool {
    let body = line.split('#').next().unwrap_or("").trim_end();
    body.ends_with(']') && !body.contains(',') && !body.contains('=')
}

fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if b.iter().all(toml::Value::is_table) && a.iter().all(toml::Value::is_table) =>
            {
                a.extend(b)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_config() {
        let loaded = load_file(Path::new("/nonexistent/buildkitd.toml")).unwrap();
        assert!(loaded.config.root.is_none());
        assert!(loaded.unknown_keys.is_empty());
    }

    #[test]
    fn harness_style_fragments_merge_and_unknown_keys_are_reported() {
        let text = r#"
root = "/tmp/x"
insecure-entitlements = ["network.host"]

[otel]
  socketPath = "/tmp/otel.sock"

[worker.oci]
  max-parallelism = 1

[registry."docker.io"]
  mirrors = ["localhost:5000"]

[worker.oci]
  networkMode = "host"
  surprise = 3

[[worker.oci.gcpolicy]]
  keepDuration = "48h"
  keepBytes = "512MB"
[[worker.oci.gcpolicy]]
  all = true
  keepBytes = 1024
"#;
        let loaded = load_str(text, "t.toml").unwrap();
        let c = &loaded.config;
        assert_eq!(c.root.as_deref(), Some("/tmp/x"));
        assert_eq!(c.worker.oci.max_parallelism, Some(1));
        assert_eq!(c.worker.oci.network_mode.as_deref(), Some("host"));
        assert_eq!(c.registry["docker.io"].mirrors, vec!["localhost:5000"]);
        assert_eq!(c.worker.oci.gcpolicy.len(), 2);
        assert_eq!(
            c.worker.oci.gcpolicy[0].keep_duration,
            Some(GoDuration(Duration::from_secs(48 * 3600)))
        );
        assert_eq!(
            c.worker.oci.gcpolicy[0].keep_bytes,
            Some(DiskSpace::Bytes(512 << 20))
        );
        assert_eq!(loaded.unknown_keys, vec!["worker.oci.surprise"]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = load_str("debug = true\n[grpc]\naddress = [\n", "bad.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("failed to parse config bad.toml: line "),
            "{text}"
        );
        let err = load_str("[grpc]\ngid = \"wheel\"\n", "bad.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid config bad.toml"),
            "{err}"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            parse_disk_space("10GB").unwrap(),
            DiskSpace::Bytes(10 << 30)
        );
        assert_eq!(parse_disk_space("10%").unwrap(), DiskSpace::Percent(10));
        assert_eq!(parse_disk_space("2048").unwrap(), DiskSpace::Bytes(2048));
        assert!(parse_disk_space("lots").is_err());
    }
}
