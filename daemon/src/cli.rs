//! The `buildkitd` command line, flag for flag as BuildKit's.
//!
//! Every flag is an `Option` so that [`crate::settings`] can tell a flag
//! given on the command line (which overrides the config file) from a default.
//! Go-style single-dash long flags (`-addr`) are accepted too.

use std::ffi::OsString;

use clap::Parser;

#[derive(Debug, Default, Parser)]
#[command(
    name = "buildkitd",
    about = "buildkit-rs: a BuildKit-compatible build daemon",
    version = crate::version::VERSION_LINE,
    disable_help_subcommand = true,
    args_override_self = true
)]
pub struct Flags {
    /// Path to config file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<String>,
    /// Enable debug output in logs.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub debug: Option<bool>,
    /// Enable trace output in logs (deprecated: use --log-level=trace).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub trace: Option<bool>,
    /// Path to state directory.
    #[arg(long, value_name = "PATH")]
    pub root: Option<String>,
    /// Listening address (unix:///path or tcp://host:port); repeatable.
    #[arg(long, value_name = "ADDR")]
    pub addr: Vec<String>,
    /// Log formatter: json or text.
    #[arg(long = "log-format", id = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Set the log level.
    #[arg(
        long = "log-level",
        id = "log-level",
        env = "BUILDKITD_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: Option<String>,
    /// Group (name or gid) which will own all Unix socket listening addresses.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Debugging address (e.g. 127.0.0.1:6060 or unix:///path).
    #[arg(long, env = "BUILDKITD_DEBUGADDR", value_name = "ADDR")]
    pub debugaddr: Option<String>,
    /// Certificate file to use.
    #[arg(long, value_name = "PATH")]
    pub tlscert: Option<String>,
    /// Key file to use.
    #[arg(long, value_name = "PATH")]
    pub tlskey: Option<String>,
    /// CA certificate to verify clients.
    #[arg(long, value_name = "PATH")]
    pub tlscacert: Option<String>,
    /// Serve tcp:// addresses without TLS. Anyone who can reach the port can
    /// run builds as root: use only on a trusted network.
    #[arg(long = "allow-insecure-tcp", id = "allow-insecure-tcp", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_insecure_tcp: Option<bool>,
    /// Allows insecure entitlements: network.host, security.insecure, device.
    #[arg(
        long = "allow-insecure-entitlement",
        id = "allow-insecure-entitlement",
        value_name = "ENTITLEMENT"
    )]
    pub allow_insecure_entitlement: Vec<String>,
    /// Enable proxy network enforcement for all builds.
    #[arg(long = "proxy-network", id = "proxy-network", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub proxy_network: Option<bool>,
    /// OTEL collector trace socket path.
    #[arg(
        long = "otel-socket-path",
        id = "otel-socket-path",
        value_name = "PATH"
    )]
    pub otel_socket_path: Option<String>,
    /// Disables support of the Container Device Interface (CDI).
    #[arg(long = "cdi-disabled", id = "cdi-disabled", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub cdi_disabled: Option<bool>,
    /// Directories to scan for CDI spec files.
    #[arg(long = "cdi-spec-dir", id = "cdi-spec-dir", value_name = "DIR")]
    pub cdi_spec_dir: Vec<String>,
    /// Enable saving cache debug info.
    #[arg(long = "save-cache-debug", id = "save-cache-debug", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub save_cache_debug: Option<bool>,
    /// Enable rootless mode.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rootless: Option<bool>,

    #[command(flatten)]
    pub oci: OciFlags,
    #[command(flatten)]
    pub containerd: ContainerdFlags,
}

#[derive(Debug, Default, clap::Args)]
pub struct OciFlags {
    /// Enable oci workers (true/false/auto).
    #[arg(long = "oci-worker", id = "oci-worker", value_name = "BOOL|auto")]
    pub enabled: Option<String>,
    /// User-specific annotation labels (com.example.foo=bar).
    #[arg(
        long = "oci-worker-labels",
        id = "oci-worker-labels",
        value_name = "K=V"
    )]
    pub labels: Vec<String>,
    /// Name of snapshotter (overlayfs, native, auto).
    #[arg(
        long = "oci-worker-snapshotter",
        id = "oci-worker-snapshotter",
        value_name = "NAME"
    )]
    pub snapshotter: Option<String>,
    /// Address of proxy snapshotter socket.
    #[arg(
        long = "oci-worker-proxy-snapshotter-path",
        id = "oci-worker-proxy-snapshotter-path",
        value_name = "PATH"
    )]
    pub proxy_snapshotter_path: Option<String>,
    /// Override supported platforms for worker.
    #[arg(
        long = "oci-worker-platform",
        id = "oci-worker-platform",
        value_name = "PLATFORM"
    )]
    pub platform: Vec<String>,
    /// Worker network type (auto, bridge, cni or host).
    #[arg(long = "oci-worker-net", id = "oci-worker-net", value_name = "MODE")]
    pub net: Option<String>,
    /// Path of cni config file.
    #[arg(
        long = "oci-cni-config-path",
        id = "oci-cni-config-path",
        value_name = "PATH"
    )]
    pub cni_config_path: Option<String>,
    /// Path of cni binary files.
    #[arg(
        long = "oci-cni-binary-dir",
        id = "oci-cni-binary-dir",
        value_name = "DIR"
    )]
    pub cni_binary_dir: Option<String>,
    /// Size of cni network namespace pool.
    #[arg(long = "oci-cni-pool-size", id = "oci-cni-pool-size", value_name = "N")]
    pub cni_pool_size: Option<i64>,
    /// Name of specified oci worker binary.
    #[arg(
        long = "oci-worker-binary",
        id = "oci-worker-binary",
        value_name = "NAME"
    )]
    pub binary: Option<String>,
    /// Name of the apparmor profile applied to containers.
    #[arg(
        long = "oci-worker-apparmor-profile",
        id = "oci-worker-apparmor-profile",
        value_name = "NAME"
    )]
    pub apparmor_profile: Option<String>,
    /// Apply SELinux labels.
    #[arg(long = "oci-worker-selinux", id = "oci-worker-selinux", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub selinux: Option<bool>,
    /// Limit the number of parallel build steps that can run at the same time.
    #[arg(
        long = "oci-max-parallelism",
        id = "oci-max-parallelism",
        value_name = "N"
    )]
    pub max_parallelism: Option<i64>,
    /// Enable rootless mode.
    #[arg(long = "oci-worker-rootless", id = "oci-worker-rootless", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rootless: Option<bool>,
    /// Use the host PID namespace and procfs.
    #[arg(long = "oci-worker-no-process-sandbox", id = "oci-worker-no-process-sandbox", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_process_sandbox: Option<bool>,
    /// Enable automatic garbage collection on worker.
    #[arg(long = "oci-worker-gc", id = "oci-worker-gc", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub gc: Option<bool>,
    /// Amount of storage GC keeps locally, "Reserved[,Free[,Maximum]]" (MB).
    #[arg(
        long = "oci-worker-gc-keepstorage",
        id = "oci-worker-gc-keepstorage",
        value_name = "MB"
    )]
    pub gc_keepstorage: Option<String>,
}

#[derive(Debug, Default, clap::Args)]
pub struct ContainerdFlags {
    /// Enable containerd workers (true/false/auto).
    #[arg(
        long = "containerd-worker",
        id = "containerd-worker",
        value_name = "BOOL|auto"
    )]
    pub enabled: Option<String>,
    /// Containerd socket.
    #[arg(
        long = "containerd-worker-addr",
        id = "containerd-worker-addr",
        value_name = "PATH"
    )]
    pub addr: Option<String>,
    /// User-specific annotation labels (com.example.foo=bar).
    #[arg(
        long = "containerd-worker-labels",
        id = "containerd-worker-labels",
        value_name = "K=V"
    )]
    pub labels: Vec<String>,
    /// Override supported platforms for worker.
    #[arg(
        long = "containerd-worker-platform",
        id = "containerd-worker-platform",
        value_name = "PLATFORM"
    )]
    pub platform: Vec<String>,
    /// Containerd namespace to use.
    #[arg(
        long = "containerd-worker-namespace",
        id = "containerd-worker-namespace",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// Containerd runtime name.
    #[arg(
        long = "containerd-worker-runtime",
        id = "containerd-worker-runtime",
        value_name = "NAME"
    )]
    pub runtime: Option<String>,
    /// Worker network type (auto, bridge, cni or host).
    #[arg(
        long = "containerd-worker-net",
        id = "containerd-worker-net",
        value_name = "MODE"
    )]
    pub net: Option<String>,
    /// Path of cni config file.
    #[arg(
        long = "containerd-cni-config-path",
        id = "containerd-cni-config-path",
        value_name = "PATH"
    )]
    pub cni_config_path: Option<String>,
    /// Path of cni binary files.
    #[arg(
        long = "containerd-cni-binary-dir",
        id = "containerd-cni-binary-dir",
        value_name = "DIR"
    )]
    pub cni_binary_dir: Option<String>,
    /// Size of cni network namespace pool.
    #[arg(
        long = "containerd-cni-pool-size",
        id = "containerd-cni-pool-size",
        value_name = "N"
    )]
    pub cni_pool_size: Option<i64>,
    /// Snapshotter name to use.
    #[arg(
        long = "containerd-worker-snapshotter",
        id = "containerd-worker-snapshotter",
        value_name = "NAME"
    )]
    pub snapshotter: Option<String>,
    /// Name of the apparmor profile applied to containers.
    #[arg(
        long = "containerd-worker-apparmor-profile",
        id = "containerd-worker-apparmor-profile",
        value_name = "NAME"
    )]
    pub apparmor_profile: Option<String>,
    /// Apply SELinux labels.
    #[arg(long = "containerd-worker-selinux", id = "containerd-worker-selinux", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub selinux: Option<bool>,
    /// Limit the number of parallel build steps that can run at the same time.
    #[arg(
        long = "containerd-max-parallelism",
        id = "containerd-max-parallelism",
        value_name = "N"
    )]
    pub max_parallelism: Option<i64>,
    /// Enable rootless mode.
    #[arg(long = "containerd-worker-rootless", id = "containerd-worker-rootless", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rootless: Option<bool>,
    /// Enable automatic garbage collection on worker.
    #[arg(long = "containerd-worker-gc", id = "containerd-worker-gc", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub gc: Option<bool>,
    /// Amount of storage GC keeps locally, "Reserved[,Free[,Maximum]]" (MB).
    #[arg(
        long = "containerd-worker-gc-keepstorage",
        id = "containerd-worker-gc-keepstorage",
        value_name = "MB"
    )]
    pub gc_keepstorage: Option<String>,
}

/// Rewrites Go-style `-flag` into `--flag`; single-letter flags and
/// everything after `--` are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest_positional = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_positional {
            out.push(arg);
            continue;
        }
        match arg.to_str() {
            Some("--") => {
                rest_positional = true;
                out.push(arg);
            }
            Some(s)
                if s.len() > 2
                    && s.starts_with('-')
                    && !s.starts_with("--")
                    && s.as_bytes()[1].is_ascii_alphabetic() =>
            {
                out.push(format!("-{s}").into())
            }
            _ => out.push(arg),
        }
    }
    out
}

/// Parses the command line; the error is a single line to print.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Flags, clap::Error> {
    Flags::try_parse_from(normalize_args(args))
}

/// The first line of a clap error, without its `error: ` prefix.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    line.trim_start_matches("error: ").to_string()
}

/// Parses a Go-style boolean or `auto`.
pub fn parse_tristate(flag: &str, value: &str) -> Result<Option<bool>, String> {
    match value.to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "1" | "t" | "true" => Ok(Some(true)),
        "0" | "f" | "false" => Ok(Some(false)),
        _ => Err(format!(
            "invalid value {value:?} for --{flag}: use true, false or auto"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("buildkitd")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn harness_command_line_parses() {
        let flags = parse(args(&[
            "--oci-worker=true",
            "--containerd-worker=false",
            "--oci-worker-gc=false",
            "--oci-worker-labels=org.mobyproject.buildkit.worker.sandbox=true",
            "--config=/tmp/x/buildkitd.toml",
            "--root",
            "/tmp/x",
            "--addr",
            "unix:///tmp/x/buildkitd.sock",
            "--debug",
        ]))
        .unwrap();
        assert_eq!(flags.oci.enabled.as_deref(), Some("true"));
        assert_eq!(flags.oci.gc, Some(false));
        assert_eq!(flags.debug, Some(true));
        assert_eq!(flags.addr, vec!["unix:///tmp/x/buildkitd.sock"]);
        assert_eq!(flags.oci.labels.len(), 1);
    }

    #[test]
    fn go_style_single_dash_and_repeats() {
        let flags = parse(args(&[
            "-addr",
            "tcp://127.0.0.1:1",
            "-addr=unix:///a",
            "-debug=false",
        ]))
        .unwrap();
        assert_eq!(flags.addr, vec!["tcp://127.0.0.1:1", "unix:///a"]);
        assert_eq!(flags.debug, Some(false));
    }

    #[test]
    fn unknown_flag_is_one_line() {
        let err = parse(args(&["--no-such-flag"])).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains("--no-such-flag"), "{line}");
        assert!(!line.contains('\n'));
    }
}
