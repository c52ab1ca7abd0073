//! The export side against real references: layers whose bytes must equal
//! what Go BuildKit v0.24 wrote for the same trees (trees rebuilt here from
//! what its layers recorded), entries, whiteouts, hard links and xattrs read
//! back with the `tar` crate, determinism and `rewrite-timestamp`, every
//! compression, image configs and manifests byte for byte against
//! BuildKit's, archives read by `umoci` and `skopeo`, and pushes to Debian's
//! `docker-registry` on loopback.
//!
//! Tests that create devices, set owners or capabilities need root and skip
//! (with a message) without it; external tools skip when absent.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use bk_image::Reference;
use bk_image::content::ContentStore;
use bk_image::digest::Digest;
use bk_image::export::{
    self, ConfigInput, ImageOptions, LayerMeta, PushOptions, Timestamp, image_config,
    manifest_json, write_docker_archive, write_image, write_oci_archive, write_oci_layout_dir,
};
use bk_image::layer::{
    Compression, DiffOptions, Layer, LayerOptions, Xattrs, create_layer, write_diff,
};
use bk_image::media_types;
use bk_image::registry::{AnonymousCredentials, PushOutcome, RegistryClient, RegistryHosts};
use bk_image::types::{Descriptor, Platform};
use support::{Registry, have, noise};

// ---- trees -----------------------------------------------------------------------

/// One entry of a tree: kind `d`irectory, `f`ile (data = content),
/// `l`ink (data = target), `h`ard link (data = the path it links to),
/// `c`har device, `p`ipe.
struct E {
    path: &'static str,
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    data: &'static [u8],
    rdev: (u32, u32),
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Builds `spec` under `root` (which must exist), owners, modes and times
/// included; entries are in walk order, so parents come first.
fn build_tree(root: &Path, spec: &[E]) {
    use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
    for e in spec {
        let p = root.join(e.path);
        match e.kind {
            'd' => std::fs::create_dir(&p).unwrap(),
            'f' => std::fs::write(&p, e.data).unwrap(),
            'l' => std::os::unix::fs::symlink(OsStr::from_bytes(e.data), &p).unwrap(),
            'h' => std::fs::hard_link(root.join(OsStr::from_bytes(e.data)), &p).unwrap(),
            'c' | 'p' => {
                let ft = if e.kind == 'c' {
                    FileType::CharacterDevice
                } else {
                    FileType::Fifo
                };
                let dev = rustix::fs::makedev(e.rdev.0, e.rdev.1);
                rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(e.mode), dev).unwrap();
            }
            k => panic!("kind {k}"),
        }
        rustix::fs::chownat(
            CWD,
            &p,
            Some(rustix::process::Uid::from_raw(e.uid)),
            Some(rustix::process::Gid::from_raw(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        if e.kind != 'l' {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }
    // Times last and children first, so directory times stick.
    for e in spec.iter().rev() {
        let t = Timespec {
            tv_sec: e.mtime,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            CWD,
            root.join(e.path),
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

fn diff_id(lower: Option<&Path>, upper: &Path, opts: &DiffOptions) -> (Digest, Vec<u8>) {
    let (_, tar) = write_diff(lower, upper, opts, Vec::new()).unwrap();
    (Digest::sha256_of(&tar), tar)
}

// What Go BuildKit v0.24 (buildkitd-0.24, native snapshotter, so
// containerd's walking differ) wrote for
//   FROM scratch / COPY ctx/ / / COPY --chown=1234:5678 ctx/somefile /owned
//   / COPY busybox /bin/busybox / RUN [busybox sh -c "rm, rm -r, append,
//   chmod, new file, ln, ln to an old file, mkfifo, mknod, replace a
//   symlink, file→dir, dir→file, chown"]
// Each tree is what the layers recorded (whole-second times); busybox's
// bytes are replaced (it is unchanged by the last step).
const GO_ADD_TREE: &[E] = &[
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814755, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee/f", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"deep\x0a", rdev: (0, 0) },
    E { path: "deldir", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "deldir/inner", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "deldir/inner/x", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814758, data: b"i\x0a", rdev: (0, 0) },
    E { path: "deldir/y", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814758, data: b"y\x0a", rdev: (0, 0) },
    E { path: "dir", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "dir/a.txt", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"a\x0a", rdev: (0, 0) },
    E { path: "dir/capfile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"cap\x0a", rdev: (0, 0) },
    E { path: "dir/empty", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dir/hl1", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"hl\x0a", rdev: (0, 0) },
    E { path: "dir/hl2", kind: 'h', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"dir/hl1", rdev: (0, 0) },
    E { path: "dir/link", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814754, data: b"../somefile", rdev: (0, 0) },
    E { path: "dir/longlink", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814758, data: b"tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt", rdev: (0, 0) },
    E { path: "dir/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"long\x0a", rdev: (0, 0) },
    E { path: "dir/setuid", kind: 'f', mode: 0o4755, uid: 0, gid: 0, mtime: 1795814754, data: b"s\x0a", rdev: (0, 0) },
    E { path: "dir/sub", kind: 'd', mode: 0o3775, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dir/é.txt", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"x\x0a", rdev: (0, 0) },
    E { path: "somefile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1683356889, data: b"hello\x0a", rdev: (0, 0) },
];
const GO_LOWER: &[E] = &[
    E { path: "bin", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "bin/busybox", kind: 'f', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"not busybox\x0a", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814755, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee/f", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"deep\x0a", rdev: (0, 0) },
    E { path: "deldir", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "deldir/inner", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "deldir/inner/x", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814758, data: b"i\x0a", rdev: (0, 0) },
    E { path: "deldir/y", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814758, data: b"y\x0a", rdev: (0, 0) },
    E { path: "dir", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"", rdev: (0, 0) },
    E { path: "dir/a.txt", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"a\x0a", rdev: (0, 0) },
    E { path: "dir/capfile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"cap\x0a", rdev: (0, 0) },
    E { path: "dir/empty", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dir/hl1", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"hl\x0a", rdev: (0, 0) },
    E { path: "dir/hl2", kind: 'h', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"dir/hl1", rdev: (0, 0) },
    E { path: "dir/link", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814754, data: b"../somefile", rdev: (0, 0) },
    E { path: "dir/longlink", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814758, data: b"tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt", rdev: (0, 0) },
    E { path: "dir/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"long\x0a", rdev: (0, 0) },
    E { path: "dir/setuid", kind: 'f', mode: 0o4755, uid: 0, gid: 0, mtime: 1795814754, data: b"s\x0a", rdev: (0, 0) },
    E { path: "dir/sub", kind: 'd', mode: 0o3775, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dir/é.txt", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"x\x0a", rdev: (0, 0) },
    E { path: "owned", kind: 'f', mode: 0o644, uid: 1234, gid: 5678, mtime: 1683356889, data: b"hello\x0a", rdev: (0, 0) },
    E { path: "somefile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1683356889, data: b"hello\x0a", rdev: (0, 0) },
];
const GO_UPPER: &[E] = &[
    E { path: "bin", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "bin/busybox", kind: 'f', mode: 0o755, uid: 0, gid: 0, mtime: 1795814758, data: b"not busybox\x0a", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814755, data: b"", rdev: (0, 0) },
    E { path: "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee/f", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"deep\x0a", rdev: (0, 0) },
    E { path: "dev", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "dir", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "dir/capfile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"cap\x0a", rdev: (0, 0) },
    E { path: "dir/chr", kind: 'c', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (1, 3) },
    E { path: "dir/empty", kind: 'f', mode: 0o644, uid: 42, gid: 43, mtime: 1795814754, data: b"", rdev: (0, 0) },
    E { path: "dir/fifo", kind: 'p', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "dir/hl1", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"hl\x0a", rdev: (0, 0) },
    E { path: "dir/hl2", kind: 'h', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"dir/hl1", rdev: (0, 0) },
    E { path: "dir/hl3", kind: 'h', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"dir/hl1", rdev: (0, 0) },
    E { path: "dir/link", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814783, data: b"elsewhere", rdev: (0, 0) },
    E { path: "dir/longlink", kind: 'l', mode: 0o777, uid: 0, gid: 0, mtime: 1795814758, data: b"tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt", rdev: (0, 0) },
    E { path: "dir/new", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"new\x0a", rdev: (0, 0) },
    E { path: "dir/newlink", kind: 'h', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"dir/new", rdev: (0, 0) },
    E { path: "dir/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814755, data: b"long\x0a", rdev: (0, 0) },
    E { path: "dir/setuid", kind: 'f', mode: 0o600, uid: 0, gid: 0, mtime: 1795814754, data: b"s\x0a", rdev: (0, 0) },
    E { path: "dir/sub", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"sub\x0a", rdev: (0, 0) },
    E { path: "dir/é.txt", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814754, data: b"x\x0a", rdev: (0, 0) },
    E { path: "owned", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "owned/f", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"o\x0a", rdev: (0, 0) },
    E { path: "proc", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
    E { path: "somefile", kind: 'f', mode: 0o644, uid: 0, gid: 0, mtime: 1795814783, data: b"hello\x0amore\x0a", rdev: (0, 0) },
    E { path: "sys", kind: 'd', mode: 0o755, uid: 0, gid: 0, mtime: 1795814783, data: b"", rdev: (0, 0) },
];

/// The diff ids of those layers in Go BuildKit's image.
const GO_ADD_DIFF_ID: &str =
    "sha256:12464c55136ff6c9279527e9ba55c02adbc4ab92f9690e4b78938ab87272cc65";
const GO_RUN_DIFF_ID: &str =
    "sha256:4cca12a3e7bd64799ddff5809f2bb218ac20458091aed02056bffe789a888093";
/// `ADD caps.tar /` of a tar holding `capbin` (a `security.capability` and
/// a `user.foo` xattr) and `plain`: only the capability survives.
const GO_CAPS_DIFF_ID: &str =
    "sha256:68b52821ce32d8d730debfa1e813381a2ae64470b2cdb3b7c547ad83516376dc";
/// `cap_net_raw+ep`, as `setcap` writes it.
const CAP_NET_RAW: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn layers_match_go_buildkit_byte_for_byte() {
    if !is_root() {
        eprintln!("SKIP layers_match_go_buildkit_byte_for_byte: needs root (owners, devices)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = DiffOptions::default();

    // Everything added (the COPY into scratch): PAX path and linkpath for
    // long and non-ASCII names, USTAR prefix splits, hard links, setuid,
    // setgid+sticky directories.
    let add = dir.path().join("add");
    std::fs::create_dir(&add).unwrap();
    build_tree(&add, GO_ADD_TREE);
    assert_eq!(diff_id(None, &add, &opts).0.as_str(), GO_ADD_DIFF_ID);

    // The RUN step over full copies (what the native snapshotter diffs).
    let lower = dir.path().join("lower");
    let upper = dir.path().join("upper");
    std::fs::create_dir(&lower).unwrap();
    std::fs::create_dir(&upper).unwrap();
    build_tree(&lower, GO_LOWER);
    build_tree(&upper, GO_UPPER);
    let (got, tar) = diff_id(Some(&lower), &upper, &opts);
    assert_eq!(got.as_str(), GO_RUN_DIFF_ID);
    // The old hard-link group re-linked to the new file: the file first,
    // then the unchanged paths as links to it, as containerd writes them.
    let names: Vec<(String, Option<String>)> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.link_name().unwrap().map(|l| l.display().to_string()),
            )
        })
        .filter(|(n, _)| n.starts_with("dir/hl"))
        .collect();
    assert_eq!(
        names,
        [
            ("dir/hl3".to_owned(), None),
            ("dir/hl1".to_owned(), Some("dir/hl3".to_owned())),
            ("dir/hl2".to_owned(), Some("dir/hl3".to_owned())),
        ]
    );

    // The same step over hard-linked snapshots (ours): unchanged files are
    // the lower inodes and cost no comparison; same bytes out.
    let linked = dir.path().join("linked");
    link_tree(&lower, &linked);
    apply_go_run_step(&linked);
    assert_eq!(
        diff_id(Some(&lower), &linked, &opts).0.as_str(),
        GO_RUN_DIFF_ID
    );

    // Capabilities are the only xattr BuildKit keeps.
    let caps = dir.path().join("caps");
    std::fs::create_dir(&caps).unwrap();
    for name in ["capbin", "plain"] {
        let p = caps.join(name);
        std::fs::write(&p, "hello\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let capbin = caps.join("capbin");
    rustix::fs::setxattr(
        &capbin,
        "security.capability",
        CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(&capbin, "user.foo", b"bar", rustix::fs::XattrFlags::empty()).unwrap();
    for name in ["capbin", "plain"] {
        set_mtime(&caps.join(name), 1_700_000_000);
    }
    assert_eq!(diff_id(None, &caps, &opts).0.as_str(), GO_CAPS_DIFF_ID);
    // With every xattr the user one is kept (and the digest is ours alone).
    let all = DiffOptions {
        xattrs: Xattrs::All,
        ..DiffOptions::default()
    };
    let (other, tar) = diff_id(None, &caps, &all);
    assert_ne!(other.as_str(), GO_CAPS_DIFF_ID);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    let records: Vec<(String, Vec<u8>)> = first
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.key().unwrap().to_owned(), r.value_bytes().to_vec())
        })
        .collect();
    assert_eq!(
        records,
        [
            (
                "SCHILY.xattr.security.capability".to_owned(),
                CAP_NET_RAW.to_vec()
            ),
            ("SCHILY.xattr.user.foo".to_owned(), b"bar".to_vec()),
        ]
    );
}

fn set_mtime(p: &Path, secs: i64) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A snapshot as the worker makes them: new directories (same metadata),
/// every other entry hard-linked to the original.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    let meta = std::fs::symlink_metadata(from).unwrap();
    std::fs::set_permissions(to, meta.permissions()).unwrap();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let m = std::fs::symlink_metadata(&src).unwrap();
        if m.is_dir() {
            link_tree(&src, &dst);
            dirs.push((dst, m));
        } else {
            std::fs::hard_link(&src, &dst).unwrap();
        }
    }
    for (d, m) in dirs {
        std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid())).unwrap();
        std::fs::set_permissions(&d, m.permissions()).unwrap();
        set_mtime(&d, m.mtime());
    }
}

/// The RUN step of the Go build, done the way a step on a hard-linked
/// snapshot does it: every changed file is a new inode.
fn apply_go_run_step(root: &Path) {
    let upper: BTreeMap<&str, &E> = GO_UPPER.iter().map(|e| (e.path, e)).collect();
    let lower: BTreeMap<&str, &E> = GO_LOWER.iter().map(|e| (e.path, e)).collect();
    // Deletions and type changes: remove what the upper tree lacks or has
    // as another kind, deepest first.
    for e in GO_LOWER.iter().rev() {
        let gone = match upper.get(e.path) {
            None => true,
            Some(u) => {
                u.kind != e.kind
                    || u.data != e.data
                    || u.mode != e.mode
                    || u.uid != e.uid
                    || u.gid != e.gid
            }
        };
        if gone && e.kind != 'd' {
            let _ = std::fs::remove_file(root.join(e.path));
        } else if gone {
            std::fs::remove_dir_all(root.join(e.path)).unwrap();
        }
    }
    // The old hard-link group is re-linked to a new file by the step.
    for p in ["dir/hl1", "dir/hl2"] {
        std::fs::remove_file(root.join(p)).unwrap();
    }
    let created: Vec<&E> = GO_UPPER
        .iter()
        .filter(|e| root.join(e.path).symlink_metadata().is_err())
        .collect();
    // Every new or re-created path, parents first.
    for e in &created {
        let p = root.join(e.path);
        match e.kind {
            'd' => {
                let _ = std::fs::create_dir(&p);
            }
            'f' => std::fs::write(&p, e.data).unwrap(),
            'l' => std::os::unix::fs::symlink(OsStr::from_bytes(e.data), &p).unwrap(),
            'h' => std::fs::hard_link(root.join(OsStr::from_bytes(e.data)), &p).unwrap(),
            'c' | 'p' => {
                let ft = if e.kind == 'c' {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::Fifo
                };
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    ft,
                    rustix::fs::Mode::from_raw_mode(e.mode),
                    rustix::fs::makedev(e.rdev.0, e.rdev.1),
                )
                .unwrap();
            }
            _ => unreachable!(),
        }
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).unwrap();
        if e.kind != 'l' {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
    }
    // Times of everything the step touched, children first.
    for e in GO_UPPER.iter().rev() {
        let changed = created.iter().any(|c| c.path == e.path)
            || (e.kind == 'd' && lower.get(e.path).is_none_or(|l| l.mtime != e.mtime));
        if changed {
            set_mtime(&root.join(e.path), e.mtime);
        }
    }
}

// ---- our own trees ------------------------------------------------------------------

/// A lower tree and an upper one made from it as a step would: a
/// hard-linked snapshot with adds, changes, deletes (a file, a directory,
/// a file in a kept directory), hard links, a changed symlink, a setuid
/// file and a file with a user xattr.
fn step_trees(dir: &Path) -> (PathBuf, PathBuf) {
    let lower = dir.join("lower");
    std::fs::create_dir_all(lower.join("gonedir/sub")).unwrap();
    std::fs::create_dir_all(lower.join("dir")).unwrap();
    std::fs::write(lower.join("keep.txt"), "keep\n").unwrap();
    std::fs::write(lower.join("change.txt"), "old\n").unwrap();
    std::fs::write(lower.join("gone.txt"), "gone\n").unwrap();
    std::fs::write(lower.join("gonedir/a"), "a\n").unwrap();
    std::fs::write(lower.join("gonedir/sub/b"), "b\n").unwrap();
    std::fs::write(lower.join("dir/x"), "x\n").unwrap();
    std::fs::write(lower.join("dir/y"), "y\n").unwrap();
    std::os::unix::fs::symlink("keep.txt", lower.join("link")).unwrap();

    let upper = dir.join("upper");
    link_tree(&lower, &upper);
    std::fs::remove_file(upper.join("change.txt")).unwrap();
    std::fs::write(upper.join("change.txt"), "new content\n").unwrap();
    std::fs::remove_file(upper.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(upper.join("gonedir")).unwrap();
    std::fs::remove_file(upper.join("dir/x")).unwrap();
    std::fs::create_dir(upper.join("added")).unwrap();
    std::fs::write(upper.join("added/f"), "f\n").unwrap();
    std::fs::write(upper.join("added/h1"), "linked\n").unwrap();
    std::fs::hard_link(upper.join("added/h1"), upper.join("added/h2")).unwrap();
    std::fs::remove_file(upper.join("link")).unwrap();
    std::os::unix::fs::symlink("change.txt", upper.join("link")).unwrap();
    std::fs::write(upper.join("setuid"), "#!/bin/true\n").unwrap();
    std::fs::set_permissions(
        upper.join("setuid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(upper.join("xattr"), "x\n").unwrap();
    rustix::fs::setxattr(
        upper.join("xattr"),
        "user.test",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    (lower, upper)
}

struct Entry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
    xattrs: Vec<String>,
}

fn entries(tar: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let xattrs = match e.pax_extensions().unwrap() {
            Some(p) => p
                .map(|r| r.unwrap().key().unwrap().to_owned())
                .filter(|k| k.starts_with("SCHILY.xattr."))
                .collect(),
            None => Vec::new(),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Entry {
            name: e.path().unwrap().display().to_string(),
            kind: e.header().entry_type(),
            mode: e.header().mode().unwrap(),
            link: e.link_name().unwrap().map(|l| l.display().to_string()),
            data,
            xattrs,
        });
    }
    out
}

#[test]
fn step_layer_entries_whiteouts_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper) = step_trees(dir.path());
    let (stats, tar) =
        write_diff(Some(&lower), &upper, &DiffOptions::default(), Vec::new()).unwrap();
    assert_eq!(stats.size, tar.len() as u64);
    let got = entries(&tar);
    assert_eq!(stats.entries, got.len() as u64);
    let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "added/",
            "added/f",
            "added/h1",
            "added/h2",
            "change.txt",
            "dir/",
            "dir/.wh.x",
            ".wh.gone.txt",
            ".wh.gonedir",
            "link",
            "setuid",
            "xattr",
        ]
    );
    let by = |n: &str| got.iter().find(|e| e.name == n).unwrap();
    assert_eq!(by("added/").kind, tar::EntryType::Directory);
    assert_eq!(by("added/h1").kind, tar::EntryType::Regular);
    assert_eq!(by("added/h1").data, b"linked\n");
    assert_eq!(by("added/h2").kind, tar::EntryType::Link);
    assert_eq!(by("added/h2").link.as_deref(), Some("added/h1"));
    assert_eq!(by("change.txt").data, b"new content\n");
    for wh in ["dir/.wh.x", ".wh.gone.txt", ".wh.gonedir"] {
        assert_eq!(by(wh).kind, tar::EntryType::Regular);
        assert_eq!(by(wh).mode, 0);
        assert!(by(wh).data.is_empty());
    }
    assert_eq!(by("link").kind, tar::EntryType::Symlink);
    assert_eq!(by("link").link.as_deref(), Some("change.txt"));
    assert_eq!(by("setuid").mode, 0o4755);
    // BuildKit drops user xattrs; Xattrs::All keeps them.
    assert!(by("xattr").xattrs.is_empty());
    let (_, tar) = write_diff(
        Some(&lower),
        &upper,
        &DiffOptions {
            xattrs: Xattrs::All,
            ..DiffOptions::default()
        },
        Vec::new(),
    )
    .unwrap();
    let all = entries(&tar);
    let x = all.iter().find(|e| e.name == "xattr").unwrap();
    assert_eq!(x.xattrs, ["SCHILY.xattr.user.test"]);

    // Nothing changed: just the trailer.
    let (stats, tar) =
        write_diff(Some(&lower), &lower, &DiffOptions::default(), Vec::new()).unwrap();
    assert_eq!((stats.entries, tar.len()), (0, 1024));

    // Headers carry no user or group names and no times beyond mtime.
    let mut archive = tar::Archive::new(&tar[..]);
    assert!(archive.entries().unwrap().next().is_none());
}

#[test]
fn deterministic_and_rewrite_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper) = step_trees(dir.path());
    let opts = DiffOptions::default();
    let (a, _) = diff_id(Some(&lower), &upper, &opts);
    let (b, _) = diff_id(Some(&lower), &upper, &opts);
    assert_eq!(a, b);

    // Two trees with the same content, written at different times (both
    // after the epoch): different without rewriting, equal with it.
    let epoch = 1_600_000_000;
    let mk = |name: &str, t: i64| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "same\n").unwrap();
        std::os::unix::fs::symlink("f", root.join("d/l")).unwrap();
        std::fs::write(root.join("old"), "old\n").unwrap();
        for p in ["d/f", "d/l", "d"] {
            set_mtime(&root.join(p), t);
        }
        // Older than the epoch: kept as is.
        set_mtime(&root.join("old"), 1_000_000_000);
        root
    };
    let t1 = mk("t1", 1_700_000_000);
    let t2 = mk("t2", 1_800_000_123);
    assert_ne!(diff_id(None, &t1, &opts).0, diff_id(None, &t2, &opts).0);
    let rewrite = DiffOptions {
        rewrite_timestamp: Some(epoch),
        ..DiffOptions::default()
    };
    let (r1, tar) = diff_id(None, &t1, &rewrite);
    assert_eq!(r1, diff_id(None, &t2, &rewrite).0);
    let mut archive = tar::Archive::new(&tar[..]);
    let times: BTreeMap<String, u64> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(times["d/f"], epoch as u64);
    assert_eq!(times["old"], 1_000_000_000);
}

async fn new_store(dir: &Path) -> ContentStore {
    ContentStore::open(dir.join("content")).await.unwrap()
}

fn decompress(blob: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::Uncompressed => out.extend_from_slice(blob),
        Compression::Gzip { .. } => {
            flate2::read::GzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd { .. } => {
            ruzstd::decoding::StreamingDecoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_layer_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper) = step_trees(dir.path());
    // A file big enough to span several pipeline chunks.
    let mut big = noise(3 * 1024 * 1024 + 17, 7);
    big.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    std::fs::write(upper.join("big"), &big).unwrap();
    let store = new_store(dir.path()).await;
    let (want_diff_id, want_tar) = diff_id(Some(&lower), &upper, &DiffOptions::default());
    for (compression, oci, mt) in [
        (
            Compression::Gzip { level: 6 },
            true,
            media_types::OCI_LAYER_GZIP,
        ),
        (
            Compression::Gzip { level: 1 },
            false,
            media_types::DOCKER_LAYER_GZIP,
        ),
        (Compression::Uncompressed, true, media_types::OCI_LAYER),
        (Compression::Uncompressed, false, media_types::DOCKER_LAYER),
        (
            Compression::Zstd { level: 3 },
            true,
            media_types::OCI_LAYER_ZSTD,
        ),
    ] {
        let opts = LayerOptions {
            compression,
            oci_media_types: oci,
            diff: DiffOptions::default(),
        };
        let layer = create_layer(&store, Some(&lower), &upper, &opts)
            .await
            .unwrap();
        assert_eq!(layer.descriptor.media_type, mt);
        assert_eq!(layer.diff_id, want_diff_id);
        assert_eq!(layer.uncompressed_size, want_tar.len() as u64);
        let blob = store
            .read_blob(&layer.descriptor.digest, 1 << 30)
            .await
            .unwrap();
        assert_eq!(blob.len() as u64, layer.descriptor.size);
        assert_eq!(Digest::sha256_of(&blob), layer.descriptor.digest);
        assert_eq!(decompress(&blob, compression), want_tar, "{compression:?}");
        if compression == Compression::Uncompressed {
            assert_eq!(layer.descriptor.digest, layer.diff_id);
        }
        // The same trees again: the same blob.
        let again = create_layer(&store, Some(&lower), &upper, &opts)
            .await
            .unwrap();
        assert_eq!(again, layer);
    }
    // Other readers agree (gzip's blocks and CRC, zstd's frame).
    if have("gzip") {
        let layer = create_layer(&store, Some(&lower), &upper, &LayerOptions::default())
            .await
            .unwrap();
        let out = Command::new("gzip")
            .args(["-d", "-c"])
            .arg(store.blob_path(&layer.descriptor.digest))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, want_tar);
    }
    if have("zstd") {
        let layer = create_layer(
            &store,
            Some(&lower),
            &upper,
            &LayerOptions {
                compression: Compression::Zstd { level: 3 },
                ..LayerOptions::default()
            },
        )
        .await
        .unwrap();
        let out = Command::new("zstd")
            .args(["-d", "-c"])
            .arg(store.blob_path(&layer.descriptor.digest))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, want_tar);
    }
}

#[tokio::test]
async fn create_layer_errors_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path()).await;
    let err = create_layer(
        &store,
        None,
        &dir.path().join("missing"),
        &LayerOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    // The dropped writer removes its ingest file on a blocking thread.
    let ingest = dir.path().join("content/ingest");
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&ingest).unwrap().next().is_some() && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(std::fs::read_dir(&ingest).unwrap().next().is_none());
    assert!(store.list().await.unwrap().is_empty());
}

// ---- configs and manifests ------------------------------------------------------------

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn amd64() -> Platform {
    Platform::new("linux", "amd64")
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn ts(s: &str) -> Option<Timestamp> {
    Some(Timestamp::parse_rfc3339(s).unwrap())
}

/// The config and manifest of the Go build above, from what its Dockerfile
/// frontend sent (history without times) and the layers' creation times.
#[test]
fn config_and_manifest_match_go_buildkit() {
    let run = "RUN /bin/busybox sh -c set -e; B=/bin/busybox; $B rm /dir/a.txt; $B rm -r /deldir; echo more >> /somefile; $B chmod 600 /dir/setuid; echo new > /dir/new; $B ln /dir/new /dir/newlink; $B ln /dir/hl1 /dir/hl3; $B mkfifo /dir/fifo; $B mknod /dir/chr c 1 3; $B rm /dir/link; $B ln -s elsewhere /dir/link; $B rm /owned; $B mkdir /owned; echo o > /owned/f; $B rm -r /dir/sub; echo sub > /dir/sub; $B chown 42:43 /dir/empty # buildkit";
    let steps = [
        "COPY ctx/ / # buildkit",
        "COPY --chown=1234:5678 ctx/somefile /owned # buildkit",
        "COPY busybox /bin/busybox # buildkit",
        run,
    ];
    let history: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| serde_json::json!({"created_by": s, "comment": "buildkit.dockerfile.v0"}))
        .collect();
    let frontend = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH_ENV], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": null},
        "history": history,
    }))
    .unwrap();
    let diff_ids = [
        digest(GO_ADD_DIFF_ID),
        digest("sha256:c720addbd288b4aa4bbe83782c8ff914e5cb29c11d4c79be1c54eb2dba207d56"),
        digest("sha256:a15cf82d2730eded9f7471d0b5d4ea595954df87b433d5204fc1ad54da104c31"),
        digest(GO_RUN_DIFF_ID),
    ];
    let meta: Vec<LayerMeta> = [
        "2026-11-27T21:26:23.131339201Z",
        "2026-11-27T21:26:23.177699959Z",
        "2026-11-27T21:26:23.278575448Z",
        "2026-11-27T21:26:23.468705972Z",
    ]
    .iter()
    .zip(steps)
    .map(|(t, d)| LayerMeta {
        created: ts(t),
        description: d.to_owned(),
    })
    .collect();
    let config = image_config(&ConfigInput {
        config: Some(&frontend),
        base_config: None,
        default_platform: &amd64(),
        diff_ids: &diff_ids,
        layer_meta: &meta,
        epoch: None,
        inline_cache: None,
    })
    .unwrap();
    let want = format!(
        r#"{{"architecture":"amd64","config":{{"Env":["{PATH_ENV}"],"WorkingDir":"/"}},"created":"2026-11-27T21:26:23.468705972Z","history":[{{"created":"2026-11-27T21:26:23.131339201Z","created_by":"COPY ctx/ / # buildkit","comment":"buildkit.dockerfile.v0"}},{{"created":"2026-11-27T21:26:23.177699959Z","created_by":"COPY --chown=1234:5678 ctx/somefile /owned # buildkit","comment":"buildkit.dockerfile.v0"}},{{"created":"2026-11-27T21:26:23.278575448Z","created_by":"COPY busybox /bin/busybox # buildkit","comment":"buildkit.dockerfile.v0"}},{{"created":"2026-11-27T21:26:23.468705972Z","created_by":"{}","comment":"buildkit.dockerfile.v0"}}],"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}","{}","{}"]}}}}"#,
        run.replace('>', "\\u003e"),
        diff_ids[0],
        diff_ids[1],
        diff_ids[2],
        diff_ids[3],
    );
    assert_eq!(String::from_utf8(config.bytes.clone()).unwrap(), want);
    assert_eq!(
        Digest::sha256_of(&config.bytes).as_str(),
        "sha256:249b3de015d9cbd02ce351998125e19160b88f7ba8a2400c3804c9057236f01a"
    );
    assert_eq!(config.image.history.len(), 4);

    // Its manifest, over the uncompressed layers of that build.
    let layers: Vec<Layer> = diff_ids
        .iter()
        .zip([19456, 2048, 1_984_512, 14336])
        .map(|(d, size)| Layer {
            descriptor: Descriptor::new(media_types::OCI_LAYER, d.clone(), size),
            diff_id: d.clone(),
            uncompressed_size: size,
        })
        .collect();
    let config_desc = Descriptor::new(
        media_types::OCI_CONFIG,
        Digest::sha256_of(&config.bytes),
        config.bytes.len() as u64,
    );
    let m = export::manifest(&config_desc, &layers, true, BTreeMap::new());
    assert_eq!(
        Digest::sha256_of(&manifest_json(&m).unwrap()).as_str(),
        "sha256:f0799c49097f8a240472ade3b611fa36c0c2656e1f30a48cae2e3de071576847"
    );
}

/// `FROM scratch` + `LABEL a=b`: no layers, so BuildKit writes nulls.
const GO_EMPTY_FRONTEND: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":null},"history":[{"created_by":"LABEL a=b","comment":"buildkit.dockerfile.v0","empty_layer":true}]}"#;
const GO_EMPTY_CONFIG: &str = r#"{"architecture":"amd64","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","Labels":{"a":"b"}},"created":null,"history":[{"created_by":"LABEL a=b","comment":"buildkit.dockerfile.v0","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":null}}"#;
/// Its Docker manifest, and the whole `docker` exporter tarball for
/// `name=foo/bar:tag,localhost:5000/x` (created 2026-11-27T21:26:46Z).
const GO_EMPTY_DOCKER_MANIFEST: &str =
    "sha256:35ddcf94406e0cca78503f8a5b61dc3b0143ba09f1435c695a59188fa0d0ea71";
const GO_EMPTY_DOCKER_TAR: &str =
    "sha256:906a7d735ecdaa9e91482881e661762a0a41c6346dcf29005be9d2e2ab892ce7";

fn empty_config() -> Vec<u8> {
    image_config(&ConfigInput {
        config: Some(GO_EMPTY_FRONTEND.as_bytes()),
        base_config: None,
        default_platform: &amd64(),
        diff_ids: &[],
        layer_meta: &[],
        epoch: None,
        inline_cache: None,
    })
    .unwrap()
    .bytes
}

#[tokio::test]
async fn empty_image_and_docker_archive_match_go_buildkit() {
    let config = empty_config();
    assert_eq!(String::from_utf8(config.clone()).unwrap(), GO_EMPTY_CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path()).await;
    let mut opts = ImageOptions {
        oci_media_types: false,
        platform: Some(amd64()),
        ..ImageOptions::default()
    };
    opts.descriptor_annotations.insert(
        export::ANNOTATION_CREATED.into(),
        "2026-11-27T21:26:46Z".into(),
    );
    let img = write_image(&store, &config, &[], &opts).await.unwrap();
    assert_eq!(img.manifest_desc.digest.as_str(), GO_EMPTY_DOCKER_MANIFEST);
    let bytes = store
        .read_blob(&img.manifest_desc.digest, 1 << 20)
        .await
        .unwrap();
    assert!(
        String::from_utf8(bytes)
            .unwrap()
            .contains("\"layers\": null")
    );

    let names = [
        Reference::parse_normalized_named("foo/bar:tag").unwrap(),
        Reference::parse_normalized_named("localhost:5000/x").unwrap(),
    ];
    let tar = write_docker_archive(&store, &img.manifest_desc, &names, Vec::new()).unwrap();
    assert_eq!(Digest::sha256_of(&tar).as_str(), GO_EMPTY_DOCKER_TAR);
}

#[test]
fn config_defaults_history_alignment_and_epoch() {
    let d1 = Digest::sha256_of(b"1");
    let d2 = Digest::sha256_of(b"2");
    let d3 = Digest::sha256_of(b"3");
    // No frontend config: BuildKit's default one, history from the layers.
    let meta = [
        LayerMeta {
            created: ts("2024-01-01T00:00:00Z"),
            description: "pulled".into(),
        },
        LayerMeta {
            created: ts("2024-01-02T00:00:00.5Z"),
            description: "RUN x".into(),
        },
    ];
    let c = image_config(&ConfigInput {
        config: None,
        base_config: None,
        default_platform: &Platform::new("linux", "arm64").with_variant("v8"),
        diff_ids: &[d1.clone(), d2.clone()],
        layer_meta: &meta,
        epoch: None,
        inline_cache: Some(b"{}"),
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(c.bytes).unwrap(),
        format!(
            r#"{{"architecture":"arm64","config":{{"Env":["{PATH_ENV}"],"WorkingDir":"/"}},"created":"2024-01-02T00:00:00.5Z","history":[{{"created":"2024-01-01T00:00:00Z","created_by":"pulled","comment":"buildkit.exporter.image.v0"}},{{"created":"2024-01-02T00:00:00.5Z","created_by":"RUN x","comment":"buildkit.exporter.image.v0"}}],"moby.buildkit.cache.v0":"e30=","os":"linux","rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}"]}},"variant":"v8"}}"#
        )
    );

    // Too many non-empty history entries: the extra ones become empty;
    // entries without times get the first new layer's time; the epoch
    // clamps what is newer and fills what is missing, but the base image's
    // own history keeps its times.
    let base = r#"{"architecture":"amd64","os":"linux","history":[{"created":"2030-01-01T00:00:00Z","created_by":"base"}]}"#;
    let frontend = r#"{"architecture":"amd64","os":"linux","created":"2031-01-01T00:00:00Z","config":{},
        "history":[{"created":"2030-01-01T00:00:00Z","created_by":"base"},
                   {"created_by":"ENV a=b","empty_layer":true},
                   {"created":"2031-01-01T00:00:00+01:00","created_by":"RUN y"},
                   {"created_by":"RUN z"},
                   {"created_by":"RUN extra"}]}"#;
    let meta3 = [
        LayerMeta::default(),
        LayerMeta {
            created: ts("2020-05-05T00:00:00Z"),
            description: String::new(),
        },
        LayerMeta {
            created: ts("2020-06-06T00:00:00Z"),
            description: String::new(),
        },
    ];
    let input = ConfigInput {
        config: Some(frontend.as_bytes()),
        base_config: Some(base.as_bytes()),
        default_platform: &amd64(),
        diff_ids: &[d1.clone(), d2.clone(), d3.clone()],
        layer_meta: &meta3,
        epoch: None,
        inline_cache: None,
    };
    let plain = image_config(&input).unwrap().image;
    let h: Vec<(Option<&str>, bool)> = plain
        .history
        .iter()
        .map(|h| (h.created.as_deref(), h.empty_layer))
        .collect();
    assert_eq!(
        h,
        [
            (Some("2030-01-01T00:00:00Z"), false),
            (Some("2031-01-01T00:00:00+01:00"), true),
            (Some("2031-01-01T00:00:00+01:00"), false),
            (Some("2020-06-06T00:00:00Z"), false),
            (Some("2020-06-06T00:00:00Z"), true),
        ]
    );
    assert_eq!(plain.created.as_deref(), Some("2031-01-01T00:00:00Z"));

    let epoch = 1_700_000_000; // 2023-11-14T22:13:20Z
    let clamped = image_config(&ConfigInput {
        epoch: Some(epoch),
        ..input.clone()
    })
    .unwrap()
    .image;
    let h: Vec<Option<&str>> = clamped
        .history
        .iter()
        .map(|h| h.created.as_deref())
        .collect();
    assert_eq!(
        h,
        [
            Some("2030-01-01T00:00:00Z"),
            Some("2023-11-14T22:13:20Z"),
            Some("2023-11-14T22:13:20Z"),
            Some("2020-06-06T00:00:00Z"),
            Some("2020-06-06T00:00:00Z"),
        ]
    );
    assert_eq!(clamped.created.as_deref(), Some("2023-11-14T22:13:20Z"));

    // BuildKit's refusals.
    for bad in [
        r#"{"os":"linux"}"#,
        r#"{"architecture":"amd64"}"#,
        "null",
        "[1]",
    ] {
        let err = image_config(&ConfigInput {
            config: Some(bad.as_bytes()),
            ..input.clone()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid image config for export"),
            "{err}"
        );
    }
}

// ---- archives and pushes -------------------------------------------------------------

/// A small image made end to end: two layers (the step trees' lower, then
/// the step), its config and
/// manifest in the store.
async fn build_small_image(
    dir: &Path,
    store: &ContentStore,
    oci: bool,
) -> (Vec<Layer>, export::WrittenImage) {
    std::fs::create_dir_all(dir.join("step")).unwrap();
    let (lower, upper) = step_trees(&dir.join("step"));
    let opts = LayerOptions {
        oci_media_types: oci,
        ..LayerOptions::default()
    };
    let l1 = create_layer(store, None, &lower, &opts).await.unwrap();
    let l2 = create_layer(store, Some(&lower), &upper, &opts)
        .await
        .unwrap();
    let layers = vec![l1, l2];
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = image_config(&ConfigInput {
        config: None,
        base_config: None,
        default_platform: &amd64(),
        diff_ids: &diff_ids,
        layer_meta: &[],
        epoch: Some(0),
        inline_cache: None,
    })
    .unwrap();
    let written = write_image(
        store,
        &config.bytes,
        &layers,
        &ImageOptions {
            oci_media_types: oci,
            platform: Some(amd64()),
            ..ImageOptions::default()
        },
    )
    .await
    .unwrap();
    (layers, written)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_and_docker_archives_read_by_umoci_and_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path()).await;
    let (layers, img) = build_small_image(dir.path(), &store, true).await;
    let names = [Reference::parse_normalized_named("example.com/team/app:v1").unwrap()];

    let tar = write_oci_archive(&store, &img.manifest_desc, &names, Vec::new()).unwrap();
    // Twice the same bytes.
    assert_eq!(
        tar,
        write_oci_archive(&store, &img.manifest_desc, &names, Vec::new()).unwrap()
    );
    let mut archive = tar::Archive::new(&tar[..]);
    let listing: Vec<(String, u32, u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                h.uid().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<String> = vec!["blobs/".into(), "blobs/sha256/".into()];
    let mut blobs: Vec<String> = layers
        .iter()
        .map(|l| &l.descriptor.digest)
        .chain([&img.config_desc.digest, &img.manifest_desc.digest])
        .map(|d| format!("blobs/sha256/{}", d.encoded()))
        .collect();
    blobs.sort();
    want.extend(blobs);
    want.extend(["index.json".into(), "oci-layout".into()]);
    assert_eq!(
        listing.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
        want
    );
    for (name, mode, mtime, uid) in &listing {
        let want_mode = match name.as_str() {
            "index.json" => 0o644,
            n if n.ends_with('/') => 0o755,
            _ => 0o444,
        };
        assert_eq!((*mode, *mtime, *uid), (want_mode, 0, 0), "{name}");
    }
    let index: serde_json::Value = {
        let mut archive = tar::Archive::new(&tar[..]);
        let mut e = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().as_os_str() == "index.json")
            .unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    };
    assert_eq!(
        index["manifests"][0]["annotations"],
        serde_json::json!({
            "io.containerd.image.name": "example.com/team/app:v1",
            "org.opencontainers.image.ref.name": "v1",
        })
    );

    let path = dir.path().join("oci.tar");
    std::fs::write(&path, &tar).unwrap();
    if have("skopeo") {
        let out = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", path.display())));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(v["Digest"], img.manifest_desc.digest.as_str());
    } else {
        eprintln!("SKIP skopeo checks: skopeo not installed");
    }
    if have("umoci") && is_root() {
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(&layout));
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("keep.txt")).unwrap(),
            "keep\n"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("change.txt")).unwrap(),
            "new content\n"
        );
        assert!(!rootfs.join("gone.txt").exists() && !rootfs.join("gonedir").exists());
        assert!(!rootfs.join("dir/x").exists() && rootfs.join("dir/y").exists());
        let (h1, h2) = (
            std::fs::metadata(rootfs.join("added/h1")).unwrap(),
            std::fs::metadata(rootfs.join("added/h2")).unwrap(),
        );
        assert_eq!(h1.ino(), h2.ino());
        assert_eq!(
            std::fs::read_link(rootfs.join("link")).unwrap(),
            Path::new("change.txt")
        );
        assert_eq!(
            std::fs::metadata(rootfs.join("setuid")).unwrap().mode() & 0o7777,
            0o4755
        );
    } else {
        eprintln!("SKIP umoci unpack: needs umoci and root");
    }

    // The same layout as a directory (tar=false).
    let out_dir = dir.path().join("outdir");
    write_oci_layout_dir(&store, &img.manifest_desc, &names, &out_dir).unwrap();
    for name in want.iter().filter(|n| !n.ends_with('/')) {
        assert!(out_dir.join(name).is_file(), "{name}");
    }
    if have("skopeo") {
        run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", out_dir.display())));
    }

    // Docker archive: the same plus manifest.json (docker media types).
    let dstore = new_store(&dir.path().join("d")).await;
    let (dlayers, dimg) = build_small_image(&dir.path().join("d"), &dstore, false).await;
    let names = [Reference::parse_normalized_named("app").unwrap()];
    let dtar = write_docker_archive(&dstore, &dimg.manifest_desc, &names, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(&dtar[..]);
    let mut manifest_json_entry = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().as_os_str() == "manifest.json" {
            e.read_to_string(&mut manifest_json_entry).unwrap();
        }
    }
    assert_eq!(
        manifest_json_entry,
        format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":["app:latest"],"Layers":["blobs/sha256/{}","blobs/sha256/{}"]}}]"#,
            dimg.config_desc.digest.encoded(),
            dlayers[0].descriptor.digest.encoded(),
            dlayers[1].descriptor.digest.encoded()
        )
    );
    let dpath = dir.path().join("docker.tar");
    std::fs::write(&dpath, &dtar).unwrap();
    if have("skopeo") {
        let out = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", dpath.display())));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(v["RepoTags"], serde_json::json!([]));
    }
}

fn registry_client() -> RegistryClient {
    RegistryClient::new(
        RegistryHosts::defaults().unwrap(),
        Arc::new(AnonymousCredentials),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_registry_then_again_uploads_nothing() {
    let Some(reg) = Registry::start("push_to_a_registry_then_again_uploads_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path()).await;
    let (layers, img) = build_small_image(dir.path(), &store, true).await;
    let client = registry_client();
    let reference = reg.reference("export/app:v1");
    let report = export::push(
        &client,
        &store,
        &reference,
        &img.manifest_desc,
        &PushOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.blobs.len(), layers.len() + 1);
    assert!(
        report
            .blobs
            .iter()
            .all(|(_, o)| *o == PushOutcome::Uploaded),
        "{report:?}"
    );
    assert_eq!(
        report.manifests,
        [(img.manifest_desc.digest.clone(), PushOutcome::Uploaded)]
    );

    if have("skopeo") {
        let out = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/export/app:v1", reg.host()),
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Digest"], img.manifest_desc.digest.as_str());
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    }

    // Again: every blob is found, nothing uploaded (the registry's access
    // log has no second upload either).
    let uploads_before = reg.requests("/blobs/uploads/").len();
    let again = export::push(
        &client,
        &store,
        &reference,
        &img.manifest_desc,
        &PushOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        again.blobs.iter().all(|(_, o)| *o == PushOutcome::Exists),
        "{again:?}"
    );
    assert_eq!(again.manifests[0].1, PushOutcome::Exists);
    assert_eq!(reg.requests("/blobs/uploads/").len(), uploads_before);

    // By digest into another repository: blobs mounted from the first,
    // the manifest under its digest only.
    let other = reg.reference("export/other");
    let mount_from = layers
        .iter()
        .map(|l| (l.descriptor.digest.clone(), "export/app".to_owned()))
        .collect();
    let by_digest = export::push(
        &client,
        &store,
        &other,
        &img.manifest_desc,
        &PushOptions {
            by_digest: true,
            mount_from,
            ..PushOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        by_digest.blobs[..2]
            .iter()
            .all(|(_, o)| matches!(o, PushOutcome::Mounted { .. })),
        "{by_digest:?}"
    );
    assert!(reg.requests("/v2/export/other/manifests/latest").is_empty());
    assert_eq!(
        reg.requests(&format!(
            "PUT /v2/export/other/manifests/{}",
            img.manifest_desc.digest
        ))
        .len(),
        1
    );

    // An image without layers (BuildKit's `"layers": null`) is accepted.
    let config = empty_config();
    let empty = write_image(&store, &config, &[], &ImageOptions::default())
        .await
        .unwrap();
    export::push(
        &client,
        &store,
        &reg.reference("export/empty:v1"),
        &empty.manifest_desc,
        &PushOptions::default(),
    )
    .await
    .unwrap();
    if have("skopeo") {
        run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/export/empty:v1", reg.host()),
        ]));
    }
}

// ---- benchmark -------------------------------------------------------------------

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

struct Timer {
    wall: Instant,
    cpu: f64,
}

fn timer() -> Timer {
    Timer {
        wall: Instant::now(),
        cpu: cpu_seconds(),
    }
}

fn report(what: &str, t: Timer, bytes: u64) {
    let wall = t.wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - t.cpu;
    println!(
        "{what:<34} {wall:>7.2} s  {:>7.1} MB/s  cpu {cpu:>6.2} s ({:.2} cores)",
        bytes as f64 / 1e6 / wall,
        cpu / wall
    );
}

/// `cargo test --release -p bk-image --test export -- --ignored bench --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --release"]
async fn bench_export_200mb() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    // 100 MiB of noise and 100 MiB of text-like data, in 1 MiB files.
    let mut total = 0u64;
    for i in 0..100u64 {
        let sub = tree.join(format!("d{:02}", i / 10));
        std::fs::create_dir_all(&sub).unwrap();
        let random = noise(1 << 20, i + 1);
        let mut text = Vec::with_capacity(1 << 20);
        let mut n = i;
        while text.len() < 1 << 20 {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.extend_from_slice(
                format!(
                    "{:08} the quick brown fox {} jumps over the lazy dog\n",
                    n >> 40,
                    n % 97
                )
                .as_bytes(),
            );
        }
        text.truncate(1 << 20);
        std::fs::write(sub.join(format!("r{i}")), &random).unwrap();
        std::fs::write(sub.join(format!("t{i}.txt")), &text).unwrap();
        total += 2 << 20;
    }
    println!("tree: {} MB in 200 files", total / 1_000_000);
    let store = new_store(dir.path()).await;

    let t = timer();
    let (stats, _) = tokio::task::spawn_blocking({
        let tree = tree.clone();
        move || write_diff(None, &tree, &DiffOptions::default(), std::io::sink()).unwrap()
    })
    .await
    .unwrap();
    report("tar only (to a sink)", t, stats.size);

    let mut gz_layer = None;
    for (name, compression) in [
        (
            "layer gzip level 6 (default)",
            Compression::Gzip { level: 6 },
        ),
        ("layer gzip level 1", Compression::Gzip { level: 1 }),
        ("layer zstd", Compression::Zstd { level: 3 }),
        ("layer uncompressed", Compression::Uncompressed),
    ] {
        let t = timer();
        let layer = create_layer(
            &store,
            None,
            &tree,
            &LayerOptions {
                compression,
                ..LayerOptions::default()
            },
        )
        .await
        .unwrap();
        report(name, t, layer.uncompressed_size);
        println!("{:<34} blob {} MB", "", layer.descriptor.size / 1_000_000);
        if matches!(compression, Compression::Gzip { level: 6 }) {
            gz_layer = Some(layer);
        }
    }
    let layer = gz_layer.unwrap();
    // Nothing changed since: the layer is made again (the daemon skips
    // this through its own cache; this is the cost it avoids).
    let t = timer();
    let again = create_layer(&store, None, &tree, &LayerOptions::default())
        .await
        .unwrap();
    report("re-export, unchanged (gzip 6)", t, again.uncompressed_size);
    assert_eq!(again, layer);

    let config = image_config(&ConfigInput {
        config: None,
        base_config: None,
        default_platform: &amd64(),
        diff_ids: std::slice::from_ref(&layer.diff_id),
        layer_meta: &[],
        epoch: None,
        inline_cache: None,
    })
    .unwrap();
    let img = write_image(
        &store,
        &config.bytes,
        std::slice::from_ref(&layer),
        &ImageOptions {
            oci_media_types: true,
            ..ImageOptions::default()
        },
    )
    .await
    .unwrap();
    let t = timer();
    let out = std::fs::File::create(dir.path().join("oci.tar")).unwrap();
    let (store2, desc) = (store.clone(), img.manifest_desc.clone());
    tokio::task::spawn_blocking(move || write_oci_archive(&store2, &desc, &[], out).unwrap())
        .await
        .unwrap();
    report("OCI archive (to a file)", t, layer.descriptor.size);

    if let Some(reg) = Registry::start("bench_export_200mb") {
        let client = registry_client();
        let t = timer();
        export::push(
            &client,
            &store,
            &reg.reference("bench/app:v1"),
            &img.manifest_desc,
            &PushOptions::default(),
        )
        .await
        .unwrap();
        report("push to local registry", t, layer.descriptor.size);
        let t = timer();
        export::push(
            &client,
            &store,
            &reg.reference("bench/app:v1"),
            &img.manifest_desc,
            &PushOptions::default(),
        )
        .await
        .unwrap();
        report("push again (all present)", t, 0);
    }
}
