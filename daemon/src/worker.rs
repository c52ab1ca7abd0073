//! The worker record that `ListWorkers` reports: a persistent id, the labels
//! buildkitd sets, platforms and the GC policy.
//!
//! The OCI worker itself (exec steps in runc) is `bk-worker-oci`; this
//! module describes it and chooses its snapshotter and state directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use bk_proto::moby::buildkit::v1::types::{GcPolicy, WorkerRecord};
use bk_proto::pb::Platform;

use crate::config::DiskSpace;
use crate::settings::{GcLimits, OciWorkerSettings};

const LABEL_PREFIX: &str = "org.mobyproject.buildkit.worker.";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker state {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Builds the OCI worker's record, creating its state directory and id on
/// first use (`<root>/runc-<snapshotter>/workerid`, as buildkitd does).
/// Also returns the worker's state directory, where its snapshots live.
pub fn oci_worker_record(
    root: &Path,
    s: &OciWorkerSettings,
) -> Result<(WorkerRecord, bk_worker_oci::OciWorkerConfig), WorkerError> {
    let chosen = bk_worker_oci::Snapshotter::choose(&s.snapshotter, root)
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    let snapshotter = chosen.name().to_string();
    let dir = root.join(format!("runc-{snapshotter}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| WorkerError::State {
            path: dir.display().to_string(),
            source,
        })?;
    let id = worker_id(&dir)?;

    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    // What sandboxed steps get: the host's network when asked for, else a
    // namespace of their own with loopback only (no CNI or bridge here).
    let host_network = s.network_mode == "host";
    let network = if host_network { "host" } else { "none" }.to_string();
    if !matches!(s.network_mode.as_str(), "host" | "auto" | "none") {
        tracing::warn!(
            mode = %s.network_mode,
            "this network mode is not supported: steps get a network namespace with loopback only"
        );
    }
    let mut labels = BTreeMap::new();
    for (key, value) in [
        ("executor", "oci".to_string()),
        ("snapshotter", snapshotter.clone()),
        ("hostname", hostname),
        ("network", network),
        (
            "oci.process-mode",
            if s.no_process_sandbox {
                "no-sandbox"
            } else {
                "sandbox"
            }
            .to_string(),
        ),
        ("selinux.enabled", s.selinux.to_string()),
    ] {
        labels.insert(format!("{LABEL_PREFIX}{key}"), value);
    }
    if let Some(profile) = &s.apparmor_profile {
        labels.insert(format!("{LABEL_PREFIX}apparmor.profile"), profile.clone());
    }
    labels.extend(s.labels.clone());

    let platforms = if s.platforms.is_empty() {
        native_platforms()
    } else {
        // Validated when settings were resolved.
        s.platforms
            .iter()
            .filter_map(|p| parse_platform(p).ok())
            .collect()
    };

    let gc_policy = if s.gc {
        gc_policies(s, disk_total(root))
    } else {
        Vec::new()
    };

    let record = WorkerRecord {
        id,
        labels,
        platforms,
        gc_policy,
        buildkit_version: Some(crate::version::buildkit_version()),
        cdi_devices: Vec::new(),
    };
    let config = bk_worker_oci::OciWorkerConfig {
        state_dir: dir,
        runc_binary: s.binary.clone().into(),
        snapshotter: chosen,
        host_network,
        cgroup_parent: s.cgroup_parent.clone(),
    };
    Ok((record, config))
}

fn worker_id(dir: &Path) -> Result<String, WorkerError> {
    let path = dir.join("workerid");
    let err = |source| WorkerError::State {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = bk_cache::new_id();
    // Write under a temporary name and rename, so a crash never leaves a
    // half-written id behind.
    let tmp = dir.join("workerid.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(id.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(id)
}

/// Parses `os/arch[/variant]` (or a bare `arch`), normalising arch aliases.
pub fn parse_platform(text: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = text.trim().split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [arch] => ("linux", *arch, ""),
        [os, arch] => (*os, *arch, ""),
        [os, arch, variant] => (*os, *arch, *variant),
        _ => return Err(format!("invalid platform {text:?}")),
    };
    if os.is_empty() || arch.is_empty() {
        return Err(format!("invalid platform {text:?}"));
    }
    let (arch, variant) = match (arch, variant) {
        ("x86_64" | "x86-64", v) => ("amd64", v),
        ("aarch64", "") => ("arm64", ""),
        ("aarch64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("i386" | "i686", v) => ("386", v),
        (a, v) => (a, v),
    };
    Ok(Platform {
        architecture: arch.to_string(),
        os: os.to_ascii_lowercase(),
        variant: variant.to_string(),
        os_version: String::new(),
        os_features: Vec::new(),
    })
}

/// The platforms this machine runs natively, the default first. Emulated
/// platforms (binfmt_misc) are added by the OCI worker once it can test them.
pub fn native_platforms() -> Vec<Platform> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let platform = |variant: &str| Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant: variant.to_string(),
        os_version: String::new(),
        os_features: Vec::new(),
    };
    let mut out = vec![platform("")];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v2 = has!("cmpxchg16b")
            && has!("popcnt")
            && has!("sse3")
            && has!("sse4.1")
            && has!("sse4.2")
            && has!("ssse3");
        let v3 = v2
            && has!("avx")
            && has!("avx2")
            && has!("bmi1")
            && has!("bmi2")
            && has!("f16c")
            && has!("fma")
            && has!("lzcnt")
            && has!("movbe")
            && has!("xsave");
        let v4 = v3
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl");
        for (ok, variant) in [(v2, "v2"), (v3, "v3"), (v4, "v4")] {
            if ok {
                out.push(platform(variant));
            }
        }
    }
    out
}

/// Formats a platform as `os/arch[/variant]`.
pub fn format_platform(p: &Platform) -> String {
    if p.variant.is_empty() {
        format!("{}/{}", p.os, p.architecture)
    } else {
        format!("{}/{}/{}", p.os, p.architecture, p.variant)
    }
}

fn disk_total(root: &Path) -> u64 {
    rustix::fs::statvfs(root)
        .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

/// Turns a size into bytes as buildkitd does: percentages of the disk are
/// rounded up to whole gigabytes.
fn as_bytes(space: Option<DiskSpace>, disk_total: u64) -> i64 {
    match space {
        None | Some(DiskSpace::Bytes(0)) | Some(DiskSpace::Percent(0)) => 0,
        Some(DiskSpace::Bytes(n)) => n,
        Some(DiskSpace::Percent(_)) if disk_total == 0 => 2_000_000_000,
        Some(DiskSpace::Percent(pct)) => {
            let share = disk_total as i64 * pct / 100;
            (share / (1 << 30) + 1) * 1_000_000_000
        }
    }
}

fn gc_policies(s: &OciWorkerSettings, disk_total: u64) -> Vec<GcPolicy> {
    let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
    if !s.gc_policies.is_empty() {
        return s
            .gc_policies
            .iter()
            .map(|p| GcPolicy {
                all: p.all,
                keep_duration: p.keep_duration.map(|d| ns(d.0)).unwrap_or(0),
                reserved_space: as_bytes(p.reserved_space.or(p.keep_bytes), disk_total),
                filters: p.filters.clone(),
                max_used_space: as_bytes(p.max_used_space, disk_total),
                min_free_space: as_bytes(p.min_free_space, disk_total),
            })
            .collect();
    }
    let mut limits = s.gc_limits.clone();
    if limits.reserved.is_none() && limits.min_free.is_none() && limits.max_used.is_none() {
        limits = default_limits(disk_total);
    }
    let reserved = as_bytes(limits.reserved, disk_total);
    let min_free = as_bytes(limits.min_free, disk_total);
    let max_used = as_bytes(limits.max_used, disk_total);
    let day = Duration::from_secs(24 * 3600);
    vec![
        // Cheap-to-recreate data goes first: unused for two days, past 512 MB.
        GcPolicy {
            all: false,
            keep_duration: ns(2 * day),
            reserved_space: 0,
            filters: vec![
                "type==source.local".to_string(),
                "type==exec.cachemount".to_string(),
                "type==source.git.checkout".to_string(),
            ],
            max_used_space: 512_000_000,
            min_free_space: 0,
        },
        GcPolicy {
            all: false,
            keep_duration: ns(60 * day),
            reserved_space: reserved,
            filters: Vec::new(),
            max_used_space: max_used,
            min_free_space: min_free,
        },
        GcPolicy {
            all: false,
            keep_duration: 0,
            reserved_space: reserved,
            filters: Vec::new(),
            max_used_space: max_used,
            min_free_space: min_free,
        },
        GcPolicy {
            all: true,
            keep_duration: 0,
            reserved_space: reserved,
            filters: Vec::new(),
            max_used_space: max_used,
            min_free_space: min_free,
        },
    ]
}

/// buildkitd's default caps: reserve 10% (at most 10 GB), keep 20% free, use
/// at most 80% (at most 100 GB).
fn default_limits(disk_total: u64) -> GcLimits {
    let capped = |pct: i64, cap: i64| {
        if as_bytes(Some(DiskSpace::Percent(pct)), disk_total) > cap {
            DiskSpace::Bytes(cap)
        } else {
            DiskSpace::Percent(pct)
        }
    };
    GcLimits {
        reserved: Some(capped(10, 10_000_000_000)),
        min_free: Some(DiskSpace::Percent(20)),
        max_used: Some(capped(80, 100_000_000_000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_base36_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let a = worker_id(dir.path()).unwrap();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(worker_id(dir.path()).unwrap(), a);
    }

    #[test]
    fn platforms_parse_and_format() {
        assert_eq!(
            format_platform(&parse_platform("linux/arm64/v8").unwrap()),
            "linux/arm64/v8"
        );
        assert_eq!(
            format_platform(&parse_platform("x86_64").unwrap()),
            "linux/amd64"
        );
        assert!(parse_platform("a/b/c/d").is_err());
        assert!(parse_platform("/amd64").is_err());
        assert_eq!(native_platforms()[0].os, "linux");
    }

    #[test]
    fn percentages_round_up_to_gigabytes() {
        assert_eq!(as_bytes(Some(DiskSpace::Percent(10)), 0), 2_000_000_000);
        // 10% of 100 GiB is 10 GiB; rounded up: 11 GB.
        assert_eq!(
            as_bytes(Some(DiskSpace::Percent(10)), 100 << 30),
            11_000_000_000
        );
        assert_eq!(as_bytes(Some(DiskSpace::Bytes(5)), 0), 5);
    }
}
