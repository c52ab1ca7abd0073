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
        let mut platforms = native_platforms();
        let emulated = emulated_platforms(Path::new(BINFMT_MISC_DIR), &platforms);
        platforms.extend(emulated);
        platforms
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
        no_process_sandbox: s.no_process_sandbox,
        apparmor_profile: s.apparmor_profile.clone(),
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

/// The platforms this machine runs natively, the default first. Platforms it
/// runs through emulators come from [`emulated_platforms`].
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

/// Where the kernel lists the binfmt_misc handlers (e.g. qemu-user-static).
const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The platforms this machine can run through binfmt_misc emulators, read
/// from `dir` (normally [`BINFMT_MISC_DIR`]), sorted and without those in
/// `native`. BuildKit lists emulated platforms in the worker record so that
/// clients can pick them (`--platform linux/arm64` on an amd64 host).
///
/// Each handler is identified by the ELF machine, class and byte order in its
/// magic rather than by its name. Disabled handlers, and handlers whose
/// interpreter is missing and was not opened at registration (no `F` flag),
/// are left out since nothing could run through them. A missing or
/// unreadable directory, or binfmt_misc switched off, gives nothing.
pub fn emulated_platforms(dir: &Path, native: &[Platform]) -> Vec<Platform> {
    if let Ok(status) = std::fs::read_to_string(dir.join("status"))
        && status.trim() == "disabled"
    {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let key = |p: &Platform| (p.os.clone(), p.architecture.clone(), p.variant.clone());
    let mut out: Vec<Platform> = entries
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_str(), Some("register" | "status")))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| binfmt_entry_platforms(&text))
        .filter(|p| !native.iter().any(|n| key(n) == key(p)))
        .collect();
    out.sort_by_key(key);
    out.dedup_by(|a, b| key(a) == key(b));
    out
}

/// The platforms one binfmt_misc entry file makes runnable; empty when it is
/// disabled, unusable, not an ELF handler or not understood.
fn binfmt_entry_platforms(text: &str) -> Vec<Platform> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("enabled") {
        return Vec::new();
    }
    let (mut interpreter, mut flags, mut offset, mut magic, mut mask) = (None, "", "0", None, None);
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        match key.trim_end_matches(':') {
            "interpreter" => interpreter = Some(value),
            "flags" => flags = value,
            "offset" => offset = value,
            "magic" => magic = decode_hex(value),
            "mask" => mask = Some(decode_hex(value)),
            _ => {}
        }
    }
    let Some(interpreter) = interpreter else {
        return Vec::new();
    };
    if !flags.contains('F') && !Path::new(interpreter).exists() {
        return Vec::new();
    }
    // The magic must be the start of an ELF header for its bytes to mean
    // class, byte order and machine.
    if offset != "0" {
        return Vec::new();
    }
    let Some(magic) = magic else {
        return Vec::new();
    };
    if magic.len() < 20 || magic[..4] != [0x7f, b'E', b'L', b'F'] {
        return Vec::new();
    }
    // A mask that blurs the bytes read below would match several platforms.
    match mask {
        None => {}
        Some(Some(mask)) if mask.len() >= 20 && [4, 5, 18, 19].iter().all(|&i| mask[i] == 0xff) => {
        }
        Some(_) => return Vec::new(),
    }
    const ELFCLASS32: u8 = 1;
    const ELFCLASS64: u8 = 2;
    const LITTLE: u8 = 1;
    const BIG: u8 = 2;
    let (class, data) = (magic[4], magic[5]);
    let machine = match data {
        LITTLE => u16::from_le_bytes([magic[18], magic[19]]),
        BIG => u16::from_be_bytes([magic[18], magic[19]]),
        _ => return Vec::new(),
    };
    let names: &[(&str, &str)] = match (machine, class, data) {
        (0x03, ELFCLASS32, LITTLE) => &[("386", "")],
        (0x3e, ELFCLASS64, LITTLE) => &[("amd64", "")],
        (0xb7, ELFCLASS64, LITTLE) => &[("arm64", "")],
        // qemu-arm runs both; BuildKit reports both.
        (0x28, ELFCLASS32, LITTLE) => &[("arm", "v7"), ("arm", "v6")],
        (0xf3, ELFCLASS64, LITTLE) => &[("riscv64", "")],
        (0x15, ELFCLASS64, LITTLE) => &[("ppc64le", "")],
        (0x15, ELFCLASS64, BIG) => &[("ppc64", "")],
        (0x16, ELFCLASS64, BIG) => &[("s390x", "")],
        (0x08, ELFCLASS64, LITTLE) => &[("mips64le", "")],
        (0x08, ELFCLASS64, BIG) => &[("mips64", "")],
        (0x102, ELFCLASS64, LITTLE) => &[("loong64", "")],
        _ => &[],
    };
    names
        .iter()
        .map(|(arch, variant)| Platform {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            variant: variant.to_string(),
            os_version: String::new(),
            os_features: Vec::new(),
        })
        .collect()
}

/// Decodes a string of hex digit pairs, as binfmt_misc prints magics.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
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

/// The platform images are pulled for when an op names none: the worker's
/// first (its native default).
pub fn default_image_platform(workers: &[WorkerRecord]) -> bk_image::types::Platform {
    let p = workers.first().and_then(|w| w.platforms.first());
    bk_image::types::Platform {
        architecture: p.map_or("amd64".into(), |p| p.architecture.clone()),
        os: p.map_or("linux".into(), |p| p.os.clone()),
        ..Default::default()
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

    const AARCH64_MAGIC: &str = "7f454c460201010000000000000000000200b700";
    const AARCH64_MASK: &str = "ffffffffffffff00fffffffffffffffffeffffff";

    fn entry(enabled: &str, interpreter: &str, flags: &str, magic: &str) -> String {
        format!(
            "{enabled}\ninterpreter {interpreter}\nflags: {flags}\noffset 0\nmagic {magic}\nmask {AARCH64_MASK}\n"
        )
    }

    fn names(platforms: &[Platform]) -> Vec<String> {
        platforms.iter().map(format_platform).collect()
    }

    #[test]
    fn binfmt_handlers_add_emulated_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let missing = "/nonexistent/qemu-static";
        // Opened at registration (F), so usable though the path is gone.
        write(
            "qemu-aarch64",
            &entry("enabled", missing, "F", AARCH64_MAGIC),
        );
        // Named oddly: the magic decides, not the name.
        let riscv = "7f454c460201010000000000000000000200f300";
        let present = dir.path().join("qemu-aarch64");
        write(
            "handler-x",
            &entry("enabled", &present.display().to_string(), "", riscv),
        );
        // Missing interpreter and no F flag: nothing could run.
        let arm = "7f454c4601010100000000000000000002002800";
        write("qemu-arm", &entry("enabled", missing, "", arm));
        let s390x = "7f454c4602020100000000000000000000020016";
        write("qemu-s390x", &entry("disabled", missing, "F", s390x));
        write("garbage", "enabled\ninterpreter\nmagic zz\n\u{0}\u{ff}");
        std::fs::write(dir.path().join("binary"), [0xffu8, 0xfe, 0x00]).unwrap();
        write("register", "");
        write("status", "enabled\n");
        // A native platform is not repeated.
        let amd64 = "7f454c4602010100000000000000000002003e00";
        write("qemu-x86_64", &entry("enabled", missing, "F", amd64));

        let native = vec![parse_platform("linux/amd64").unwrap()];
        assert_eq!(
            names(&emulated_platforms(dir.path(), &native)),
            ["linux/arm64", "linux/riscv64"]
        );

        // With F, the arm handler counts, as both variants.
        write("qemu-arm", &entry("enabled", missing, "F", arm));
        assert_eq!(
            names(&emulated_platforms(dir.path(), &native)),
            [
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm64",
                "linux/riscv64"
            ]
        );

        write("status", "disabled\n");
        assert!(emulated_platforms(dir.path(), &native).is_empty());
        assert!(emulated_platforms(&dir.path().join("absent"), &native).is_empty());
    }

    #[test]
    fn binfmt_magic_maps_machines() {
        let platform =
            |magic: &str| names(&binfmt_entry_platforms(&entry("enabled", "/x", "F", magic)));
        assert_eq!(
            platform("7f454c4602020100000000000000000000020016"),
            ["linux/s390x"]
        );
        assert_eq!(
            platform("7f454c4602010100000000000000000002001500"),
            ["linux/ppc64le"]
        );
        assert_eq!(
            platform("7f454c4602010100000000000000000002000800"),
            ["linux/mips64le"]
        );
        assert_eq!(
            platform("7f454c4602010100000000000000000002000201"),
            ["linux/loong64"]
        );
        assert_eq!(
            platform("7f454c4601010100000000000000000002000300"),
            ["linux/386"]
        );
        // Too short, not ELF, or unknown.
        assert!(platform("7f454c46020101").is_empty());
        assert!(platform("4d5a").is_empty());
        assert!(platform("7f454c460201010000000000000000000200ffff").is_empty());
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
