//! Paths inside a root. Go's lexical path functions (`Clean`, `Join`,
//! `Split`, `Base`, `Dir`) on bytes, because names on disk need not be UTF-8
//! and upstream's behaviour hangs on exactly these functions; and
//! continuity's `fs.RootPath`, which resolves a path inside a root the way a
//! chroot would: symlinks are followed, absolute targets restart at the root,
//! and `..` stops at the root, so the result can never leave it.
//!
//! An "in-root path" here is always clean and absolute (`/a/b`); [`host`]
//! turns it into the path on this machine.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::FileOpError;

/// How many symlinks one resolution may follow (continuity's limit).
const MAX_LINKS: usize = 255;

/// Go's `path.Clean`.
pub(crate) fn clean(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        return b".".to_vec();
    }
    let rooted = p[0] == b'/';
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in p.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match parts.last() {
                Some(&last) if last != b".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(comp),
            },
            _ => parts.push(comp),
        }
    }
    let mut out = Vec::with_capacity(p.len());
    if rooted {
        out.push(b'/');
    }
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Go's `filepath.Join`: empty elements are skipped, the result cleaned;
/// all empty gives the empty path.
pub(crate) fn join(elems: &[&[u8]]) -> Vec<u8> {
    let mut joined = Vec::new();
    for elem in elems.iter().filter(|e| !e.is_empty()) {
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(elem);
    }
    if joined.is_empty() {
        return joined;
    }
    clean(&joined)
}

/// Go's `filepath.Split`: everything up to and including the last `/`, and
/// the rest.
pub(crate) fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..=i], &p[i + 1..]),
        None => (&p[..0], p),
    }
}

/// Go's `filepath.Base`.
pub(crate) fn base(p: &[u8]) -> &[u8] {
    if p.is_empty() {
        return b".";
    }
    let end = p.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    if end == 0 {
        return b"/";
    }
    let p = &p[..end];
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Go's `filepath.Dir`.
pub(crate) fn dir(p: &[u8]) -> Vec<u8> {
    clean(split(p).0)
}

/// BuildKit's `cleanPath`: rooted and cleaned, but a trailing `/` or `/.`
/// survives, because on a copy's destination it means "into this
/// directory".
pub(crate) fn clean_path(s: &[u8]) -> Vec<u8> {
    let mut out = join(&[b"/", s]);
    if s.ends_with(b"/.") {
        if out != b"/" {
            out.push(b'/');
        }
        out.push(b'.');
    } else if s.ends_with(b"/") && out != b"/" {
        out.push(b'/');
    }
    out
}

/// The host path of an in-root path. Leading slashes are dropped so the
/// join can never replace `root`; the path is clean, so no `..` remains.
pub(crate) fn host(root: &Path, p: &[u8]) -> PathBuf {
    let rel = trim_leading_slashes(p);
    if rel.is_empty() || rel == b"." {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn trim_leading_slashes(p: &[u8]) -> &[u8] {
    let start = p.iter().position(|&b| b != b'/').unwrap_or(p.len());
    &p[start..]
}

/// An in-root path for messages.
pub(crate) fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// A host path beneath `root` as the in-root path BuildKit's messages show
/// (it trims the mount point off the front).
pub(crate) fn shown(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".to_string(),
        Ok(rel) => format!("/{}", rel.to_string_lossy()),
        Err(_) => p.to_string_lossy().into_owned(),
    }
}

/// Resolve `path` inside `root` as continuity's `fs.RootPath` does,
/// returning the clean in-root path. Every existing component is looked at
/// with `lstat`; a symlink is replaced by its (lexically cleaned) target,
/// absolute targets starting over at the root. A missing component ends
/// nothing: it and what follows are taken as written, as upstream does, so
/// the result may name something still to be created. With `follow_last`
/// false the final component is kept even if it is a symlink (fsutil's
/// `rootPath(…, followLinks=false)`).
pub(crate) fn resolve(root: &Path, path: &[u8], follow_last: bool) -> Result<Vec<u8>, FileOpError> {
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut pending: VecDeque<Vec<u8>> = components(&clean(path));
    let mut links = 0usize;
    while let Some(comp) = pending.pop_front() {
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        if pending.is_empty() && !follow_last {
            resolved.push(comp);
            break;
        }
        resolved.push(comp);
        let candidate = to_path(&resolved);
        let meta = match std::fs::symlink_metadata(host(root, &candidate)) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(FileOpError::io("lstat", show(&candidate), err)),
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(FileOpError::TooManyLinks {
                path: show(&clean(path)),
            });
        }
        let target = std::fs::read_link(host(root, &candidate))
            .map_err(|err| FileOpError::io("readlink", show(&candidate), err))?;
        resolved.pop();
        let target = target.as_os_str().as_bytes();
        if target.starts_with(b"/") {
            resolved.clear();
        }
        // Upstream joins the target onto the link's directory and cleans
        // the result before looking at it, so `..` in a target is lexical.
        for part in components(&clean(target)).into_iter().rev() {
            pending.push_front(part);
        }
    }
    Ok(to_path(&resolved))
}

fn components(p: &[u8]) -> VecDeque<Vec<u8>> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn to_path(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Resolve `path` inside `root` with continuity's `fs.RootPath` semantics
/// and return the host path: symlinks are followed (the last one only when
/// `follow_last`), but absolute targets restart at `root` and `..` stops
/// there, so the result is always `root` or beneath it. Components that do
/// not exist are kept as written.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, FileOpError> {
    let p = resolve(root, path.as_bytes(), follow_last)?;
    Ok(host(root, &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn go_clean() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("a/./b", "a/b"),
            ("a/../..", ".."),
            ("/..", "/"),
            ("/../a/..", "/"),
            ("/a/b/", "/a/b"),
            ("a//b", "a/b"),
            ("../a/../b", "../b"),
            ("../../x", "../../x"),
            ("a/..", "."),
        ] {
            assert_eq!(s(clean(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn go_join_split_base_dir() {
        assert_eq!(s(join(&[b"/", b"a/../b/"])), "/b");
        assert_eq!(s(join(&[b"", b""])), "");
        assert_eq!(s(join(&[b"a", b"", b"b"])), "a/b");
        assert_eq!(split(b"/a/b"), (&b"/a/"[..], &b"b"[..]));
        assert_eq!(split(b"/a/b/"), (&b"/a/b/"[..], &b""[..]));
        assert_eq!(split(b"b"), (&b""[..], &b"b"[..]));
        assert_eq!(base(b"/a/b/"), b"b");
        assert_eq!(base(b"/"), b"/");
        assert_eq!(base(b""), b".");
        assert_eq!(base(b"/a/."), b".");
        assert_eq!(s(dir(b"/a/b")), "/a");
        assert_eq!(s(dir(b"/a")), "/");
        assert_eq!(s(dir(b"a")), ".");
    }

    #[test]
    fn buildkit_clean_path() {
        for (input, want) in [
            ("foo", "/foo"),
            ("/foo/", "/foo/"),
            ("/foo/.", "/foo/."),
            ("/", "/"),
            ("/.", "/."),
            ("", "/"),
            ("a/../b/", "/b/"),
            ("../../x", "/x"),
        ] {
            assert_eq!(s(clean_path(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn host_never_leaves_root() {
        let root = Path::new("/r");
        assert_eq!(host(root, b"/"), PathBuf::from("/r"));
        assert_eq!(host(root, b"//a"), PathBuf::from("/r/a"));
        assert_eq!(shown(root, Path::new("/r/a/b")), "/a/b");
        assert_eq!(shown(root, Path::new("/r")), "/");
    }
}
