//! What `Info`, `ListWorkers` and `--version` report about this build.

/// Reported as `BuildkitVersion.package`.
pub const PACKAGE: &str = "github.com/buildkit-rs/buildkit-rs";

/// Reported as `BuildkitVersion.version`. Clients compare it against BuildKit
/// releases to enable features, so it names the BuildKit API level we follow,
/// with our own version as semver build metadata (which never affects
/// comparisons).
pub const VERSION: &str = concat!("v0.24.0+buildkit-rs.", env!("CARGO_PKG_VERSION"));

/// The git revision this binary was built from.
pub const REVISION: &str = env!("BK_GIT_REVISION");

/// `buildkitd --version` output, in buildkitd's `<name> <package> <version> <revision>` form.
pub const VERSION_LINE: &str = concat!(
    "github.com/buildkit-rs/buildkit-rs v0.24.0+buildkit-rs.",
    env!("CARGO_PKG_VERSION"),
    " ",
    env!("BK_GIT_REVISION")
);

/// The version record sent on the wire.
pub fn buildkit_version() -> bk_proto::moby::buildkit::v1::types::BuildkitVersion {
    bk_proto::moby::buildkit::v1::types::BuildkitVersion {
        package: PACKAGE.to_string(),
        version: VERSION.to_string(),
        revision: REVISION.to_string(),
        dockerfile_version: String::new(),
    }
}
