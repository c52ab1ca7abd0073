//! Helpers for building and inspecting real temporary trees.
#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bk_proto::pb::FileActionCopy;

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

pub fn write(root: &Path, rel: &str, data: &str, mode: u32) {
    let path = p(root, rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(root: &Path, rel: &str, mode: u32) {
    let path = p(root, rel);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn symlink(root: &Path, target: &str, rel: &str) {
    std::os::unix::fs::symlink(target, p(root, rel)).unwrap();
}

pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(p(root, rel)).unwrap()
}

pub fn exists(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(p(root, rel)).is_ok()
}

pub fn meta(root: &Path, rel: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(p(root, rel)).unwrap()
}

/// Permission bits with set-id and sticky.
pub fn mode(root: &Path, rel: &str) -> u32 {
    meta(root, rel).mode() & 0o7777
}

pub fn owner(root: &Path, rel: &str) -> (u32, u32) {
    let m = meta(root, rel);
    (m.uid(), m.gid())
}

pub fn mtime(root: &Path, rel: &str) -> (i64, i64) {
    let m = meta(root, rel);
    (m.mtime(), m.mtime_nsec())
}

pub fn link_target(root: &Path, rel: &str) -> String {
    std::fs::read_link(p(root, rel))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every path under `root`, relative, sorted; directories end in `/`.
pub fn list(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// A copy action with BuildKit's "unset" values for mode and time.
pub fn cp(src: &str, dest: &str) -> FileActionCopy {
    FileActionCopy {
        src: src.into(),
        dest: dest.into(),
        mode: -1,
        timestamp: -1,
        create_dest_path: true,
        ..Default::default()
    }
}

/// Set both times of a path (not following a symlink).
pub fn set_mtime(root: &Path, rel: &str, sec: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p(root, rel),
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn mknod(root: &Path, rel: &str, ft: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p(root, rel),
        ft,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap();
    std::fs::set_permissions(p(root, rel), std::fs::Permissions::from_mode(mode)).unwrap();
}
