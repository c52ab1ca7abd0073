//! The daemon's effective settings: defaults, then `buildkitd.toml`, then the
//! flags that were given explicitly, as buildkitd merges them.
//!
//! [`Settings::resolve`] is the only place that knows the precedence; it also
//! validates values, so a bad one stops the daemon with one clear line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::{Flags, parse_tristate};
use crate::config::{Config, DiskSpace, GcPolicyConfig, WorkerConfig};

/// Entitlements `--allow-insecure-entitlement` may grant.
const KNOWN_ENTITLEMENTS: &[&str] = &["security.insecure", "network.host", "device"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a CA, every client must present a certificate it signed.
    pub ca: Option<PathBuf>,
}

/// Garbage-collection limits of a worker (`reserved[,free[,max]]`).
#[derive(Debug, Clone, Default)]
pub struct GcLimits {
    pub reserved: Option<DiskSpace>,
    pub min_free: Option<DiskSpace>,
    pub max_used: Option<DiskSpace>,
}

#[derive(Debug, Clone)]
pub struct OciWorkerSettings {
    pub labels: BTreeMap<String, String>,
    pub snapshotter: String,
    pub platforms: Vec<String>,
    pub network_mode: String,
    pub cni_config_path: PathBuf,
    pub gc: bool,
    pub gc_limits: GcLimits,
    pub gc_policies: Vec<GcPolicyConfig>,
    pub max_parallelism: Option<usize>,
    pub rootless: bool,
    pub no_process_sandbox: bool,
    pub selinux: bool,
    pub apparmor_profile: Option<String>,
    pub binary: String,
    /// `[worker.oci] defaultCgroupParent`: where steps' cgroups go.
    pub cgroup_parent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub addrs: Vec<String>,
    pub debug_addr: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub tls: Option<TlsFiles>,
    pub allow_insecure_tcp: bool,
    pub socket_uid: u32,
    pub socket_gid: u32,
    pub entitlements: Vec<String>,
    pub rootless: bool,
    /// `None` when the OCI worker is disabled.
    pub oci: Option<OciWorkerSettings>,
    /// The containerd worker was asked for explicitly (`true`), refused
    /// (`false`) or left to detection (`None`).
    pub containerd: Option<bool>,
    /// Things worth a warning at start-up.
    pub warnings: Vec<String>,
    /// `[registry."host"]` tables.
    pub registry: BTreeMap<String, crate::config::RegistryConfig>,
}

impl Settings {
    /// Merges flags over config over defaults. The error is one line.
    pub fn resolve(flags: &Flags, config: &Config) -> Result<Settings, String> {
        let euid = rustix::process::geteuid().as_raw();
        let rootless = flags.rootless.or(flags.oci.rootless).unwrap_or(euid != 0);
        let mut warnings = Vec::new();

        let root = flags
            .root
            .clone()
            .or_else(|| config.root.clone())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_root(rootless));

        let addrs = if !flags.addr.is_empty() {
            flags.addr.clone()
        } else if !config.grpc.address.is_empty() {
            config.grpc.address.clone()
        } else {
            vec![default_address(rootless)]
        };
        for addr in &addrs {
            validate_address(addr)?;
        }

        let debug_addr = flags
            .debugaddr
            .clone()
            .or_else(|| config.grpc.debug_address.clone())
            .filter(|a| !a.is_empty());

        let log_level = if flags.trace == Some(true) || (flags.trace.is_none() && config.trace) {
            if flags.trace == Some(true) {
                warnings.push("--trace is deprecated; use --log-level=trace".to_string());
            }
            "trace".to_string()
        } else if flags.debug == Some(true) || (flags.debug.is_none() && config.debug) {
            "debug".to_string()
        } else {
            flags
                .log_level
                .clone()
                .or_else(|| config.log.level.clone())
                .unwrap_or_else(|| "info".to_string())
                .to_ascii_lowercase()
        };
        if ![
            "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic",
        ]
        .contains(&log_level.as_str())
        {
            return Err(format!("invalid log level {log_level:?}"));
        }
        let log_format = match flags
            .log_format
            .as_deref()
            .or(config.log.format.as_deref())
            .unwrap_or("text")
        {
            "text" | "" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(format!(
                    "unsupported log format {other:?}: use text or json"
                ));
            }
        };

        let cert = flags
            .tlscert
            .clone()
            .or_else(|| config.grpc.tls.cert.clone());
        let key = flags.tlskey.clone().or_else(|| config.grpc.tls.key.clone());
        let ca = flags
            .tlscacert
            .clone()
            .or_else(|| config.grpc.tls.ca.clone());
        let tls = match (
            cert.filter(|s| !s.is_empty()),
            key.filter(|s| !s.is_empty()),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
                ca: ca.filter(|s| !s.is_empty()).map(PathBuf::from),
            }),
            (None, None) => {
                if ca.is_some_and(|s| !s.is_empty()) {
                    return Err("--tlscacert needs --tlscert and --tlskey".to_string());
                }
                None
            }
            _ => return Err("--tlscert and --tlskey must be given together".to_string()),
        };

        let socket_uid = config.grpc.uid.unwrap_or(euid);
        let socket_gid = match &flags.group {
            Some(group) => resolve_group(group)?,
            None => config
                .grpc
                .gid
                .unwrap_or_else(|| rustix::process::getegid().as_raw()),
        };

        let mut entitlements = config.insecure_entitlements.clone();
        entitlements.extend(flags.allow_insecure_entitlement.iter().cloned());
        for e in &entitlements {
            let base = e.split('=').next().unwrap_or(e);
            if !KNOWN_ENTITLEMENTS.contains(&base) {
                return Err(format!(
                    "invalid entitlement {e:?}: allowed are security.insecure, network.host, device"
                ));
            }
        }
        entitlements.sort();
        entitlements.dedup();

        let oci_enabled = match &flags.oci.enabled {
            Some(v) => parse_tristate("oci-worker", v)?,
            None => config.worker.oci.enabled,
        }
        .unwrap_or(true);
        let oci = if oci_enabled {
            Some(oci_settings(flags, &config.worker.oci, rootless)?)
        } else {
            None
        };
        let containerd = match &flags.containerd.enabled {
            Some(v) => parse_tristate("containerd-worker", v)?,
            None => config.worker.containerd.enabled,
        };

        Ok(Settings {
            root,
            addrs,
            debug_addr,
            log_level,
            log_format,
            tls,
            allow_insecure_tcp: flags.allow_insecure_tcp.unwrap_or(false),
            socket_uid,
            socket_gid,
            entitlements,
            rootless,
            oci,
            containerd,
            warnings,
            registry: config.registry.clone(),
        })
    }
}

fn oci_settings(
    flags: &Flags,
    cfg: &WorkerConfig,
    rootless: bool,
) -> Result<OciWorkerSettings, String> {
    let f = &flags.oci;
    let mut labels = cfg.labels.clone();
    for pair in &f.labels {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            format!("invalid --oci-worker-labels value {pair:?}: expected key=value")
        })?;
        labels.insert(k.to_string(), v.to_string());
    }
    let platforms = if f.platform.is_empty() {
        cfg.platforms.clone()
    } else {
        f.platform.clone()
    };
    for p in &platforms {
        crate::worker::parse_platform(p).map_err(|e| format!("invalid platforms: {e}"))?;
    }
    let mut gc_limits = GcLimits {
        reserved: cfg.reserved_space.or(cfg.gckeepstorage),
        min_free: cfg.min_free_space,
        max_used: cfg.max_used_space,
    };
    if let Some(spec) = &f.gc_keepstorage {
        gc_limits = parse_keepstorage(spec)?;
    }
    let max_parallelism = match f.max_parallelism.or(cfg.max_parallelism) {
        None | Some(0) => None,
        Some(n) if n > 0 => Some(n as usize),
        Some(n) => return Err(format!("invalid max-parallelism {n}")),
    };
    Ok(OciWorkerSettings {
        labels,
        snapshotter: f
            .snapshotter
            .clone()
            .or_else(|| cfg.snapshotter.clone())
            .unwrap_or_else(|| "auto".to_string()),
        platforms,
        network_mode: f
            .net
            .clone()
            .or_else(|| cfg.network_mode.clone())
            .unwrap_or_else(|| "auto".to_string()),
        cni_config_path: f
            .cni_config_path
            .clone()
            .or_else(|| cfg.cni_config_path.clone())
            .unwrap_or_else(|| "/etc/buildkit/cni.json".to_string())
            .into(),
        gc: f.gc.or(cfg.gc).unwrap_or(true),
        gc_limits,
        gc_policies: cfg.gcpolicy.clone(),
        max_parallelism,
        rootless: f.rootless.or(cfg.rootless).unwrap_or(rootless),
        no_process_sandbox: f.no_process_sandbox.unwrap_or(cfg.no_process_sandbox),
        selinux: f.selinux.unwrap_or(cfg.selinux),
        apparmor_profile: f
            .apparmor_profile
            .clone()
            .or_else(|| cfg.apparmor_profile.clone()),
        binary: f
            .binary
            .clone()
            .or_else(|| cfg.binary.clone())
            .unwrap_or_else(|| "runc".to_string()),
        cgroup_parent: cfg.default_cgroup_parent.clone().filter(|p| !p.is_empty()),
    })
}

/// `reserved[,free[,max]]`, each in MB (10^6 bytes), as buildkitd reads it.
fn parse_keepstorage(spec: &str) -> Result<GcLimits, String> {
    let mut parts = spec.split(',').map(|p| {
        p.trim()
            .parse::<i64>()
            .map(|mb| DiskSpace::Bytes(mb * 1_000_000))
            .map_err(|_| {
                format!(
                    "invalid gc keepstorage value {spec:?}: expected reserved[,free[,max]] in MB"
                )
            })
    });
    let reserved = parts.next().transpose()?;
    let min_free = parts.next().transpose()?;
    let max_used = parts.next().transpose()?;
    if parts.next().is_some() {
        return Err(format!(
            "invalid gc keepstorage value {spec:?}: at most three numbers"
        ));
    }
    Ok(GcLimits {
        reserved,
        min_free,
        max_used,
    })
}

fn default_root(rootless: bool) -> PathBuf {
    if rootless {
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(dir).join("buildkit");
        }
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(".local/share/buildkit");
        }
    }
    PathBuf::from("/var/lib/buildkit")
}

fn default_address(rootless: bool) -> String {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|_| rootless) {
        return format!(
            "unix://{}/buildkit/buildkitd.sock",
            PathBuf::from(dir).display()
        );
    }
    "unix:///run/buildkit/buildkitd.sock".to_string()
}

fn validate_address(addr: &str) -> Result<(), String> {
    let (scheme, rest) = addr.split_once("://").ok_or_else(|| {
        format!("invalid address {addr:?}: expected unix:///path or tcp://host:port")
    })?;
    match scheme {
        "unix" if !rest.is_empty() => Ok(()),
        "tcp"
            if rest
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) =>
        {
            Ok(())
        }
        "unix" | "tcp" => Err(format!(
            "invalid address {addr:?}: expected unix:///path or tcp://host:port"
        )),
        _ => Err(format!(
            "address {addr:?}: scheme {scheme:?} is not supported (use unix or tcp)"
        )),
    }
}

/// A group name from `/etc/group`, or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("unknown group {group:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;
    use crate::config::load_str;

    fn resolve(args: &[&str], config: &str) -> Result<Settings, String> {
        let argv = std::iter::once("buildkitd")
            .chain(args.iter().copied())
            .map(Into::into);
        let flags = parse(argv).map_err(|e| e.to_string())?;
        let config = load_str(config, "t.toml")
            .map_err(|e| e.to_string())?
            .config;
        Settings::resolve(&flags, &config)
    }

    #[test]
    fn flags_override_config_only_when_given() {
        let cfg = "root = \"/cfg\"\n[grpc]\naddress = [\"unix:///cfg.sock\"]\n[worker.oci]\ngc = false\nlabels = { a = \"1\" }\n";
        let s = resolve(&[], cfg).unwrap();
        assert_eq!(s.root, PathBuf::from("/cfg"));
        assert_eq!(s.addrs, vec!["unix:///cfg.sock"]);
        assert!(!s.oci.as_ref().unwrap().gc);
        let s = resolve(
            &["--root=/flag", "--oci-worker-gc", "--oci-worker-labels=b=2"],
            cfg,
        )
        .unwrap();
        assert_eq!(s.root, PathBuf::from("/flag"));
        let oci = s.oci.unwrap();
        assert!(oci.gc);
        assert_eq!(oci.labels.len(), 2);
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for (args, want) in [
            (&["--addr", "/no/scheme"][..], "invalid address"),
            (&["--addr", "http://x:1"][..], "not supported"),
            (&["--tlscert", "/c.pem"][..], "together"),
            (
                &["--allow-insecure-entitlement", "root.everything"][..],
                "invalid entitlement",
            ),
            (&["--oci-worker", "maybe"][..], "--oci-worker"),
            (&["--oci-worker-labels", "nolabel"][..], "key=value"),
            (&["--oci-worker-gc-keepstorage", "1,x"][..], "keepstorage"),
            (&["--log-level", "loud"][..], "log level"),
        ] {
            let err = resolve(args, "").unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn keepstorage_is_megabytes() {
        let l = parse_keepstorage("100,200,300").unwrap();
        assert_eq!(l.reserved, Some(DiskSpace::Bytes(100_000_000)));
        assert_eq!(l.max_used, Some(DiskSpace::Bytes(300_000_000)));
    }
}
