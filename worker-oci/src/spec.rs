//! The OCI runtime spec (`config.json`) runc gets for one exec step.
//!
//! The defaults are those BuildKit's OCI worker inherits from containerd:
//! the usual `/proc`, `/dev`, `/sys` mounts, fourteen capabilities, masked
//! and read-only kernel paths, no new namespaces beyond pid, ipc, uts,
//! mount and (unless host networking) network. `security.insecure` lifts the
//! capability, path and device restrictions.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::ExecError;

/// Where the step's network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A fresh network namespace with only loopback (the `sandbox` and
    /// `none` modes: this worker has no bridge or CNI network).
    Isolated,
    /// The daemon's own network namespace (`network.host`).
    Host,
}

/// A mount runc sets up inside the container.
#[derive(Debug, Clone)]
pub struct SpecMount {
    pub destination: String,
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

impl SpecMount {
    /// A bind mount of a host path.
    pub fn bind(source: &Path, destination: &str, readonly: bool) -> SpecMount {
        let mut options = vec!["rbind".to_string()];
        options.push(if readonly { "ro" } else { "rw" }.to_string());
        SpecMount {
            destination: destination.to_string(),
            kind: "bind".to_string(),
            source: source.to_path_buf(),
            options,
        }
    }

    /// A tmpfs of at most `size` bytes (0: the kernel's default, half of
    /// memory).
    pub fn tmpfs(destination: &str, size: i64) -> SpecMount {
        // As BuildKit mounts them: only nosuid.
        let mut options = vec!["nosuid".to_string()];
        if size > 0 {
            options.push(format!("size={size}"));
        }
        SpecMount {
            destination: destination.to_string(),
            kind: "tmpfs".to_string(),
            source: PathBuf::from("tmpfs"),
            options,
        }
    }
}

/// Everything that varies between steps.
#[derive(Debug, Clone)]
pub struct SpecParams {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub network: Network,
    pub insecure: bool,
    /// `--oci-worker-no-process-sandbox`: steps share the daemon's pid
    /// namespace (for rootless setups that cannot mount /proc).
    pub host_pid: bool,
    /// An AppArmor profile to confine steps with (not when insecure).
    pub apparmor_profile: Option<String>,
    /// `(name, soft, hard)` as the LLB carries them (`nofile`, …).
    pub ulimits: Vec<(String, i64, i64)>,
    pub cgroups_path: String,
    /// Mounts after the standard ones, parents before children.
    pub mounts: Vec<SpecMount>,
}

const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys/fs/cgroup",
];

fn spec_err(e: impl std::fmt::Display) -> ExecError {
    ExecError::Spec(e.to_string())
}

fn mount(
    destination: &str,
    kind: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, ExecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

fn standard_mounts(insecure: bool) -> Result<Vec<Mount>, ExecError> {
    let sys_mode = if insecure { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
    ])
}

fn rlimit(name: &str, soft: i64, hard: i64) -> Result<PosixRlimit, ExecError> {
    let typ: PosixRlimitType = serde_json::from_value(serde_json::Value::String(format!(
        "RLIMIT_{}",
        name.to_ascii_uppercase()
    )))
    .map_err(|_| ExecError::Invalid(format!("invalid ulimit name {name:?}")))?;
    let (Ok(soft), Ok(hard)) = (u64::try_from(soft), u64::try_from(hard)) else {
        return Err(ExecError::Invalid(format!(
            "invalid ulimit {name}: negative value"
        )));
    };
    if soft > hard {
        return Err(ExecError::Invalid(format!(
            "invalid ulimit {name}: soft limit {soft} above hard limit {hard}"
        )));
    }
    PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
        .map_err(spec_err)
}

/// Builds the spec.
pub fn build(p: &SpecParams) -> Result<Spec, ExecError> {
    let caps: std::collections::HashSet<Capability> = if p.insecure {
        all_capabilities()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    // Inheritable and ambient stay empty, as BuildKit leaves them.
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(spec_err)?;
    let user = UserBuilder::default()
        .uid(p.uid)
        .gid(p.gid)
        .additional_gids(p.additional_gids.clone())
        .build()
        .map_err(spec_err)?;
    let rlimits = p
        .ulimits
        .iter()
        .map(|(name, soft, hard)| rlimit(name, *soft, *hard))
        .collect::<Result<Vec<_>, _>>()?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(p.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(false);
    if let Some(profile) = p.apparmor_profile.as_ref().filter(|_| !p.insecure) {
        process = process.apparmor_profile(profile.clone());
    }
    let process = process.build().map_err(spec_err)?;

    let mut namespaces = Vec::new();
    let mut kinds = vec![
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if !p.host_pid {
        kinds.insert(0, LinuxNamespaceType::Pid);
    }
    if p.network == Network::Isolated {
        kinds.push(LinuxNamespaceType::Network);
    }
    for kind in kinds {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(kind)
                .build()
                .map_err(spec_err)?,
        );
    }
    let devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(p.insecure)
            .access("rwm")
            .build()
            .map_err(spec_err)?,
    ];
    let resources = LinuxResourcesBuilder::default()
        .devices(devices)
        .build()
        .map_err(spec_err)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(&p.cgroups_path));
    if p.insecure {
        // The builder's defaults would mask and protect paths.
        linux = linux
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new());
    } else {
        linux = linux
            .masked_paths(
                MASKED_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            );
    }
    if !p.insecure {
        linux = linux.seccomp(sandbox_seccomp()?);
    }
    let linux = linux.build().map_err(spec_err)?;

    let mut mounts = standard_mounts(p.insecure)?;
    for m in &p.mounts {
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ(&m.kind)
                .source(&m.source)
                .options(m.options.clone())
                .build()
                .map_err(spec_err)?,
        );
    }
    let root = RootBuilder::default()
        .path(&p.rootfs)
        .readonly(p.readonly_rootfs)
        .build()
        .map_err(spec_err)?;
    SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(root)
        .hostname(p.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_err)
}

/// Syscalls a sandboxed step may not make (EPERM), beyond what its
/// capabilities already forbid: new user namespaces (the way most kernel
/// exploits reach code root in a container should not), keyrings, BPF,
/// perf, userfaultfd, kexec. `clone3` answers ENOSYS, as Docker's profile
/// does, so C libraries fall back to `clone`, whose flags are checked.
fn sandbox_seccomp() -> Result<oci_spec::runtime::LinuxSeccomp, ExecError> {
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    let denied = [
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "delete_module",
        "pivot_root",
        "swapon",
        "swapoff",
        "reboot",
        "acct",
        "lookup_dcookie",
        "iopl",
        "ioperm",
        "mount",
        "umount2",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
    ];
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [{
                    "index": 0,
                    "value": CLONE_NEWUSER,
                    "valueTwo": CLONE_NEWUSER,
                    "op": "SCMP_CMP_MASKED_EQ"
                }]
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    });
    serde_json::from_value(profile).map_err(spec_err)
}

/// Capability names by bit number, as the kernel numbers them.
const CAPABILITY_BITS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability the daemon itself may grant (its bounding set): an
/// insecure step gets all of them, as a privileged container does. Asking
/// for one outside that set would make runc fail.
fn all_capabilities() -> std::collections::HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    CAPABILITY_BITS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, name)| {
            serde_json::from_value(serde_json::Value::String(format!("CAP_{name}"))).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SpecParams {
        SpecParams {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            hostname: "buildkitsandbox".into(),
            rootfs: PathBuf::from("/tmp/rootfs"),
            readonly_rootfs: false,
            network: Network::Isolated,
            insecure: false,
            host_pid: false,
            apparmor_profile: None,
            ulimits: vec![("nofile".into(), 1024, 2048)],
            cgroups_path: "/buildkit/x".into(),
            mounts: vec![SpecMount::tmpfs("/tmp", 1 << 20)],
        }
    }

    #[test]
    fn sandboxed_spec() {
        let spec = build(&params()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"][2], "true");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["additionalGids"][0], 10);
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(json["hostname"], "buildkitsandbox");
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network"));
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), 14);
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let last = json["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["destination"], "/tmp");
        assert!(
            last["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "size=1048576")
        );
    }

    #[test]
    fn host_and_insecure() {
        let mut p = params();
        p.network = Network::Host;
        p.insecure = true;
        p.host_pid = true;
        p.apparmor_profile = Some("buildkit-default".into());
        let json = serde_json::to_value(build(&p).unwrap()).unwrap();
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        assert!(!ns.iter().any(|n| n["type"] == "pid"));
        assert!(json["process"].get("apparmorProfile").is_none());
        assert!(json["linux"].get("seccomp").is_none());
        assert!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "CAP_SYS_ADMIN")
        );
        assert!(
            json["linux"]
                .get("maskedPaths")
                .and_then(|m| m.as_array())
                .is_none_or(|m| m.is_empty())
        );
    }

    #[test]
    fn bad_ulimits() {
        let mut p = params();
        p.ulimits = vec![("bogus".into(), 1, 1)];
        assert!(build(&p).unwrap_err().to_string().contains("bogus"));
        p.ulimits = vec![("nofile".into(), 10, 1)];
        assert!(build(&p).is_err());
    }
}
