//! Platforms (`linux/amd64`, `linux/arm/v7`) and choosing the manifest for
//! one from an index, as containerd's `platforms` package (v1.0.0-rc.1, the
//! one BuildKit v0.24 vendors) and `images.Manifest` do.
//!
//! Start with [`select_manifest`]: it takes an index and the wanted
//! platform, keeps the entries [`MatchComparer::only`] accepts and returns
//! the best by containerd's order. `only` accepts compatible platforms
//! in preference order:
//! - `amd64/vN` also runs `amd64/vN-1` … `v1`, then `386`;
//! - `arm64` (= `arm64/v8`) also runs `arm/v8` … `arm/v5`; `arm64/v9.x` and
//!   `arm64/v8.x` also run the lower minor versions;
//! - `arm/v7` (= `arm`) also runs `arm/v6` and `arm/v5`.
//!
//! [`normalize`] makes spellings equal (`aarch64` is `arm64`, `arm64/v8` is
//! `arm64`, `x86_64` is `amd64`, `armhf` is `arm/v7`); [`parse`] and
//! [`format()`] read and write `os[(version)]/arch[/variant]` specifiers.

use crate::types::{Descriptor, Index, Platform};

/// Go's `runtime.GOOS` for the system we were built for.
pub fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// Go's `runtime.GOARCH` for the system we were built for.
pub fn host_arch() -> &'static str {
    let little = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if little => "ppc64le",
        "powerpc64" => "ppc64",
        "powerpc" => "ppc",
        "loongarch64" => "loong64",
        "mips" if little => "mipsle",
        "mips64" if little => "mips64le",
        other => other,
    }
}

/// containerd's `DefaultSpec()`: the host's platform.
///
/// containerd reads the ARM variant from `/proc/cpuinfo`; we use the
/// variant every 64-bit ARM reports (`v8`) and `v7` for 32-bit ARM, which
/// avoids reading a file here and is what nearly all hosts say.
pub fn default_spec() -> Platform {
    let variant = match host_arch() {
        "arm64" => "v8",
        "arm" => "v7",
        _ => "",
    };
    Platform::new(host_os(), host_arch()).with_variant(variant)
}

/// containerd's `normalizeOS`: lowercase, `macos` is `darwin`, empty is
/// the host's.
pub fn normalize_os(os: &str) -> String {
    if os.is_empty() {
        return host_os().to_owned();
    }
    let os = os.to_lowercase();
    if os == "macos" {
        "darwin".to_owned()
    } else {
        os
    }
}

/// containerd's `normalizeArch`: canonical architecture and variant names.
pub fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_lowercase();
    let variant = variant.to_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), variant)
        }
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), variant)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), variant)
        }
        _ => (arch, variant),
    }
}

/// containerd's `Normalize`: OS and architecture/variant in canonical form.
pub fn normalize(p: &Platform) -> Platform {
    let (architecture, variant) = normalize_arch(&p.architecture, &p.variant);
    Platform {
        os: normalize_os(&p.os),
        architecture,
        variant,
        ..p.clone()
    }
}

/// containerd's `Format`: `os/arch[/variant]`, or `unknown` without an OS.
pub fn format(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_owned();
    }
    join_non_empty(&[&p.os, &p.architecture, &p.variant])
}

/// containerd's `FormatAll`: like [`format()`] with `os(version)`.
pub fn format_all(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_owned();
    }
    if p.os_version.is_empty() {
        return format(p);
    }
    let os = format!("{}({})", p.os, p.os_version);
    join_non_empty(&[&os, &p.architecture, &p.variant])
}

fn join_non_empty(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// A platform specifier that [`parse`] refuses; messages are containerd's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("{0:?}: wildcards not yet supported: invalid argument")]
    Wildcard(String),
    #[error(
        "{part:?} is an invalid OS component of {specifier:?}: OSAndVersion specifier component must match \"^([A-Za-z0-9_-]+)(?:\\\\(([A-Za-z0-9_.-]*)\\\\))?$\": invalid argument"
    )]
    InvalidOs { part: String, specifier: String },
    #[error(
        "{part:?} is an invalid component of {specifier:?}: platform specifier component must match \"^[A-Za-z0-9_.-]+$\": invalid argument"
    )]
    InvalidComponent { part: String, specifier: String },
    #[error("{0:?}: unknown operating system or architecture: invalid argument")]
    Unknown(String),
    #[error("{0:?}: cannot parse platform specifier: invalid argument")]
    TooManyParts(String),
}

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "aix"
            | "android"
            | "darwin"
            | "dragonfly"
            | "freebsd"
            | "hurd"
            | "illumos"
            | "ios"
            | "js"
            | "linux"
            | "nacl"
            | "netbsd"
            | "openbsd"
            | "plan9"
            | "solaris"
            | "windows"
            | "zos"
    )
}

fn is_known_arch(arch: &str) -> bool {
    matches!(
        arch,
        "386"
            | "amd64"
            | "amd64p32"
            | "arm"
            | "armbe"
            | "arm64"
            | "arm64be"
            | "ppc64"
            | "ppc64le"
            | "loong64"
            | "mips"
            | "mipsle"
            | "mips64"
            | "mips64le"
            | "mips64p32"
            | "mips64p32le"
            | "ppc"
            | "riscv"
            | "riscv64"
            | "s390"
            | "s390x"
            | "sparc"
            | "sparc64"
            | "wasm"
    )
}

/// `^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.-]*)\))?$` → (os, version).
fn split_os_and_version(part: &str) -> Option<(&str, &str)> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
    let (os, version) = match part.split_once('(') {
        None => (part, ""),
        Some((os, rest)) => {
            let version = rest.strip_suffix(')')?;
            if !version.chars().all(|c| name_char(c) || c == '.') {
                return None;
            }
            (os, version)
        }
    };
    if os.is_empty() || !os.chars().all(name_char) {
        return None;
    }
    Some((os, version))
}

/// `^[A-Za-z0-9_.-]+$`
fn is_specifier_component(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// containerd's `platforms.Parse`: `os[(version)]`, `arch`,
/// `os[(version)]/arch` or `os[(version)]/arch/variant`, filled in from the
/// host where parts are missing and normalised.
pub fn parse(specifier: &str) -> Result<Platform, PlatformError> {
    if specifier.contains('*') {
        return Err(PlatformError::Wildcard(specifier.to_owned()));
    }
    // At most four pieces, as Go's SplitN(…, 4): a fourth means too many.
    let parts: Vec<&str> = specifier.splitn(4, '/').collect();
    let mut p = Platform::default();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some((os, version)) = split_os_and_version(part) else {
                return Err(PlatformError::InvalidOs {
                    part: (*part).to_owned(),
                    specifier: specifier.to_owned(),
                });
            };
            p.os = normalize_os(os);
            p.os_version = version.to_owned();
        } else if !is_specifier_component(part) {
            return Err(PlatformError::InvalidComponent {
                part: (*part).to_owned(),
                specifier: specifier.to_owned(),
            });
        }
    }
    match parts.as_slice() {
        [only] => {
            // Either an OS (architecture from the host) or an architecture
            // (OS from the host).
            if is_known_os(&p.os) {
                p.architecture = host_arch().to_owned();
                let host_variant = default_spec().variant;
                if p.architecture == "arm" && host_variant != "v7" {
                    p.variant = host_variant;
                }
                return Ok(p);
            }
            let (arch, mut variant) = normalize_arch(only, "");
            if arch == "arm" && variant == "v7" {
                variant.clear();
            }
            if is_known_arch(&arch) {
                p.architecture = arch;
                p.variant = variant;
                p.os = host_os().to_owned();
                return Ok(p);
            }
            Err(PlatformError::Unknown(specifier.to_owned()))
        }
        [_, arch] => {
            let (arch, mut variant) = normalize_arch(arch, "");
            // arm/v7 is the default arm; written without the variant.
            if arch == "arm" && variant == "v7" {
                variant.clear();
            }
            p.architecture = arch;
            p.variant = variant;
            Ok(p)
        }
        [_, arch, variant] => {
            let (arch, mut variant) = normalize_arch(arch, variant);
            if arch == "arm64" && variant.is_empty() {
                variant = "v8".to_owned();
            }
            p.architecture = arch;
            p.variant = variant;
            Ok(p)
        }
        _ => Err(PlatformError::TooManyParts(specifier.to_owned())),
    }
}

/// A Windows `major.minor.build[.revision]` version, for containerd's host
/// and container compatibility rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WindowsVersion {
    major: u8,
    minor: u8,
    build: u16,
}

impl WindowsVersion {
    fn parse(v: &str) -> WindowsVersion {
        let mut it = v.split('.');
        let (Some(major), Some(minor), Some(build)) = (it.next(), it.next(), it.next()) else {
            return WindowsVersion::default();
        };
        // Go's ParseUint takes digits only (Rust's would also take a '+').
        if ![major, minor, build]
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        {
            return WindowsVersion::default();
        }
        match (major.parse(), minor.parse(), build.parse()) {
            (Ok(major), Ok(minor), Ok(build)) => WindowsVersion {
                major,
                minor,
                build,
            },
            _ => WindowsVersion::default(),
        }
    }

    fn is_empty(&self) -> bool {
        *self == WindowsVersion::default()
    }

    /// Since Windows Server 2022 (build 20348), a host runs containers from
    /// that LTSC build up to its own; before, builds must be equal.
    fn runs(&self, ctr: &WindowsVersion) -> bool {
        const V21H2_SERVER: u16 = 20348;
        if self.major != ctr.major || self.minor != ctr.minor {
            return false;
        }
        if self.build < V21H2_SERVER {
            return self.build == ctr.build;
        }
        ctr.build >= V21H2_SERVER && ctr.build <= self.build
    }
}

/// Matches platforms equal to one after normalisation (containerd's
/// `NewMatcher`); for Windows, the OS version must also be compatible.
#[derive(Clone, Debug)]
pub struct Matcher {
    platform: Platform,
    windows: Option<WindowsVersion>,
}

impl Matcher {
    pub fn new(p: &Platform) -> Matcher {
        let windows = (p.os == "windows").then(|| WindowsVersion::parse(&p.os_version));
        Matcher {
            platform: normalize(p),
            windows,
        }
    }

    pub fn matches(&self, p: &Platform) -> bool {
        let n = normalize(p);
        let os_version_ok = match &self.windows {
            None => true,
            Some(host) => {
                host.is_empty()
                    || p.os_version.is_empty()
                    || host.runs(&WindowsVersion::parse(&p.os_version))
            }
        };
        self.platform.os == n.os
            && self.platform.architecture == n.architecture
            && self.platform.variant == n.variant
            && os_version_ok
    }
}

/// Matches any of several platforms, preferring earlier ones (containerd's
/// `Ordered`, and through it `Only`, `OnlyStrict`, `Default`).
#[derive(Clone, Debug)]
pub struct MatchComparer {
    matchers: Vec<Matcher>,
}

impl MatchComparer {
    /// `platforms.Only`: `platform` and everything that runs on it, best
    /// first.
    pub fn only(platform: &Platform) -> MatchComparer {
        MatchComparer::ordered(&platform_vector(&normalize(platform)))
    }

    /// `platforms.OnlyStrict`: `platform` alone (in any spelling).
    pub fn only_strict(platform: &Platform) -> MatchComparer {
        MatchComparer::ordered(&[normalize(platform)])
    }

    /// `platforms.Default`: `only` for the host.
    pub fn host_default() -> MatchComparer {
        MatchComparer::only(&default_spec())
    }

    /// `platforms.Ordered`: any of `platforms`, earlier preferred.
    pub fn ordered(platforms: &[Platform]) -> MatchComparer {
        MatchComparer {
            matchers: platforms.iter().map(Matcher::new).collect(),
        }
    }

    pub fn matches(&self, p: &Platform) -> bool {
        self.rank(p).is_some()
    }

    /// Position of the first accepted platform `p` matches: lower is
    /// better; `None` if not accepted.
    pub fn rank(&self, p: &Platform) -> Option<usize> {
        self.matchers.iter().position(|m| m.matches(p))
    }

    /// containerd's `Less`: `a` is preferred to `b`.
    pub fn less(&self, a: &Platform, b: &Platform) -> bool {
        match (self.rank(a), self.rank(b)) {
            (Some(ra), Some(rb)) => ra < rb,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// containerd's `platformVector`: the platforms that run on `p` (already
/// normalised), best first.
fn platform_vector(p: &Platform) -> Vec<Platform> {
    let same = |architecture: &str, variant: String| Platform {
        architecture: architecture.to_owned(),
        variant,
        ..p.clone()
    };
    let mut vector = vec![p.clone()];
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(level) = variant_number(&p.variant).filter(|n| *n > 1) {
                for lower in (1..level).rev() {
                    vector.push(same("amd64", format!("v{lower}")));
                }
            }
            vector.push(same("386", String::new()));
        }
        "arm" => {
            if let Some(level) = variant_number(&p.variant).filter(|n| *n > 5) {
                for lower in (5..level).rev() {
                    vector.push(same("arm", format!("v{lower}")));
                }
            }
        }
        "arm64" => {
            let variant = if p.variant.is_empty() {
                "v8"
            } else {
                p.variant.as_str()
            };
            // An arm64 variant containerd does not know matches nothing.
            vector.clear();
            let Some(versions) = arm64_versions(variant) else {
                return vector;
            };
            for (major, top_minor) in versions {
                for minor in (0..=top_minor).rev() {
                    let v = if minor == 0 {
                        format!("v{major}")
                    } else {
                        format!("v{major}.{minor}")
                    };
                    vector.push(same("arm64", v));
                }
            }
            // Every arm64 v8.x/v9.x also runs 32-bit arm up to v8.
            let arm_variant = if variant.starts_with("v8") || variant.starts_with("v9") {
                "v8"
            } else {
                variant
            };
            vector.extend(platform_vector(&same("arm", arm_variant.to_owned())));
        }
        _ => {}
    }
    vector
}

/// Go's `strconv.Atoi(strings.TrimPrefix(v, "v"))`.
fn variant_number(variant: &str) -> Option<i64> {
    variant.strip_prefix('v').unwrap_or(variant).parse().ok()
}

/// containerd's `arm64variantToVersion`: (major, highest minor) pairs to
/// try, in order. v9.x also runs v8 up to x+5 (capped at v8.9).
fn arm64_versions(variant: &str) -> Option<Vec<(u32, u32)>> {
    let (major, minor) = match variant {
        "v8" | "v8.0" => (8, 0),
        "v9" | "v9.0" => (9, 0),
        _ => {
            let rest = variant.strip_prefix('v')?;
            let (major, minor) = rest.split_once('.')?;
            if minor.len() != 1 {
                return None;
            }
            let minor: u32 = minor.parse().ok()?;
            match major {
                "8" | "9" if (1..=9).contains(&minor) => (major.parse().ok()?, minor),
                _ => return None,
            }
        }
    };
    if major == 8 {
        return Some(vec![(8, minor)]);
    }
    if minor > 7 {
        return None;
    }
    Some(vec![(9, minor), (8, (minor + 5).min(9))])
}

/// The manifest to use from `index` for `wanted`, as containerd's
/// `images.Manifest` picks it with `platforms.Only(wanted)`.
///
/// Entries whose platform is accepted come first, ordered by preference
/// (ties keep index order). An entry with no platform is returned only when
/// no entry matches: its platform is in its config, which the caller must
/// then read and check, as containerd does.
pub fn select_manifest<'a>(index: &'a Index, wanted: &Platform) -> Option<&'a Descriptor> {
    select_manifest_with(index, &MatchComparer::only(wanted))
}

/// [`select_manifest`] with any comparer (e.g. [`MatchComparer::only_strict`]).
pub fn select_manifest_with<'a>(
    index: &'a Index,
    comparer: &MatchComparer,
) -> Option<&'a Descriptor> {
    candidate_manifests(index, comparer).into_iter().next()
}

/// Every entry of `index` containerd would consider for `comparer`, best
/// first: accepted platforms by rank (stable), then platform-less entries.
pub fn candidate_manifests<'a>(index: &'a Index, comparer: &MatchComparer) -> Vec<&'a Descriptor> {
    let mut ranked: Vec<(usize, &Descriptor)> = index
        .manifests
        .iter()
        .filter_map(|d| match &d.platform {
            None => Some((usize::MAX, d)),
            Some(p) => comparer.rank(p).map(|r| (r, d)),
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests;
