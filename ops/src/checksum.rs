//! Content checksums of trees: what makes a local context's cache key depend
//! on what it holds and not on when it arrived.
//!
//! Each entry contributes its path, type, permissions, owner, link target,
//! device numbers, xattrs and (for regular files) a sha256 of its content;
//! modification times do not count. File digests are remembered by inode,
//! size and change times, so an unchanged context is not read again.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use bk_fsutil::{Entry, mode};
use bk_llb::Digest;
use sha2::{Digest as _, Sha256};

/// What identifies a file's content without reading it. Only our own trees
/// are checksummed, and their files are never written in place (fsutil
/// renames new files over old ones; snapshots are immutable), so inode, size
/// and mtime suffice. The change time would not do: hard-linking a file into
/// a snapshot changes it without changing the content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

/// Remembered file digests, shared by all checksum calls of a worker.
#[derive(Default)]
pub struct DigestMemo {
    files: Mutex<HashMap<FileIdentity, [u8; 32]>>,
}

impl DigestMemo {
    fn file_digest(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let meta = std::fs::symlink_metadata(path)?;
        let identity = FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        };
        if let Some(d) = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&identity)
        {
            return Ok(*d);
        }
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the memo: a daemon sees many contexts over its life.
        if files.len() > 1_000_000 {
            files.clear();
        }
        files.insert(identity, digest);
        Ok(digest)
    }
}

/// The checksum of a walked tree (blocking).
pub fn tree_checksum(entries: &[Entry], memo: &DigestMemo) -> std::io::Result<Digest> {
    let mut h = Sha256::new();
    h.update(b"buildkit-rs tree v1\0");
    for e in entries {
        let s = &e.stat;
        h.update(s.path.as_bytes());
        h.update(b"\0");
        h.update(
            (s.mode & (mode::TYPE_MASK | mode::PERM | mode::SETUID | mode::SETGID | mode::STICKY))
                .to_le_bytes(),
        );
        h.update(s.uid.to_le_bytes());
        h.update(s.gid.to_le_bytes());
        h.update(s.linkname.as_bytes());
        h.update(b"\0");
        h.update(s.devmajor.to_le_bytes());
        h.update(s.devminor.to_le_bytes());
        for (k, v) in &s.xattrs {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v);
            h.update(b"\0");
        }
        // Hard links (regular entries with a link name) share their
        // target's content, which is already counted.
        if mode::is_regular(s.mode) && s.linkname.is_empty() {
            h.update(memo.file_digest(&e.source)?);
        }
        h.update(b"\n");
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Digest::parse(&format!("sha256:{hex}")).unwrap_or_else(|| Digest::of(hex.as_bytes())))
}

/// The checksum of what `path` names inside `root` (a file, a link, or a
/// whole directory), resolved as a copy resolves its source; `None` when
/// it does not exist (the copy itself will say so).
pub fn path_checksum(
    root: &Path,
    path: &str,
    follow: bool,
    memo: &DigestMemo,
) -> std::io::Result<Option<Digest>> {
    let full = match bk_fileops::resolve_in_root(root, path, follow) {
        Ok(full) => full,
        Err(_) => return Ok(None),
    };
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = Sha256::new();
    h.update(b"buildkit-rs path v1\0");
    h.update(path.as_bytes());
    h.update(b"\0");
    h.update(crate::checksum::mode_bits(&meta).to_le_bytes());
    h.update(meta.uid().to_le_bytes());
    h.update(meta.gid().to_le_bytes());
    if meta.is_dir() {
        let entries =
            bk_fsutil::walk::walk(&full, &Default::default()).map_err(std::io::Error::other)?;
        h.update(tree_checksum(&entries, memo)?.as_str().as_bytes());
    } else if meta.file_type().is_symlink() {
        h.update(std::fs::read_link(&full)?.as_os_str().as_encoded_bytes());
    } else if meta.is_file() {
        h.update(memo.file_digest(&full)?);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Digest::parse(&format!("sha256:{hex}")))
}

/// [`path_checksum`] of a directory as a copy with include and exclude
/// patterns reads it (the patterns apply beneath `path`); a file or link
/// is checksummed whole, as the copy takes it whole.
pub fn filtered_checksum(
    root: &Path,
    path: &str,
    follow: bool,
    include: &[String],
    exclude: &[String],
    memo: &DigestMemo,
) -> std::io::Result<Option<Digest>> {
    let full = match bk_fileops::resolve_in_root(root, path, follow) {
        Ok(full) => full,
        Err(_) => return Ok(None),
    };
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return path_checksum(root, path, follow, memo);
    }
    let opts = bk_fsutil::walk::WalkOptions {
        include_patterns: include.to_vec(),
        exclude_patterns: exclude.to_vec(),
        ..Default::default()
    };
    let entries = bk_fsutil::walk::walk(&full, &opts).map_err(std::io::Error::other)?;
    let mut h = Sha256::new();
    h.update(b"buildkit-rs filtered path v1\0");
    h.update(path.as_bytes());
    for p in include.iter().chain([&String::from("\0")]).chain(exclude) {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    h.update(crate::checksum::mode_bits(&meta).to_le_bytes());
    h.update(meta.uid().to_le_bytes());
    h.update(meta.gid().to_le_bytes());
    h.update(tree_checksum(&entries, memo)?.as_str().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Digest::parse(&format!("sha256:{hex}")))
}

fn mode_bits(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum(dir: &Path, memo: &DigestMemo) -> Digest {
        let entries = bk_fsutil::walk::walk(dir, &Default::default()).unwrap();
        tree_checksum(&entries, memo).unwrap()
    }

    #[test]
    fn content_counts_times_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let memo = DigestMemo::default();
        std::fs::write(tmp.path().join("a"), b"one").unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let first = checksum(tmp.path(), &memo);
        assert_eq!(checksum(tmp.path(), &memo), first);

        // Same bytes, new times: same checksum.
        std::fs::write(tmp.path().join("a"), b"one").unwrap();
        assert_eq!(checksum(tmp.path(), &memo), first);

        std::fs::write(tmp.path().join("a"), b"two").unwrap();
        let second = checksum(tmp.path(), &memo);
        assert_ne!(second, first);

        std::os::unix::fs::symlink("a", tmp.path().join("l")).unwrap();
        assert_ne!(checksum(tmp.path(), &memo), second);
    }
}
