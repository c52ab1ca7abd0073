//! The small actions: mkdir, mkfile, rm, symlink, as BuildKit's file
//! backend (`solver/llbsolver/file/backend.go`) performs them, plus fsutil's
//! `MkdirAll`, which copy shares. Paths are resolved inside the root first
//! (following symlinks there, never out); the final operation then works on
//! that entry itself.
//!
//! Modes of new entries come out as BuildKit's daemon (which runs with
//! umask 0) makes them, whatever this process's umask is.

use std::fs::DirBuilder;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bk_proto::pb::{FileActionMkDir, FileActionMkFile, FileActionRm, FileActionSymlink};

use crate::glob::resolve_wildcards;
use crate::paths::{clean_path, host, join, resolve, show, split};
use crate::sys::{self, Time, timestamp};
use crate::{FileOpError, Owner};

/// `mkdir`: `makeParents` creates missing parents (each with the same
/// mode, owner and time); without it an existing entry of any kind is
/// success and left untouched, and a missing parent is an error.
pub fn mkdir(
    root: &Path,
    action: &FileActionMkDir,
    owner: Option<Owner>,
) -> Result<(), FileOpError> {
    let p = resolve(root, action.path.as_bytes(), true)?;
    let perm = (action.mode as u32) & 0o777;
    let tm = timestamp(action.timestamp);
    if action.make_parents {
        mkdir_all(root, &p, perm, owner, tm)?;
        return Ok(());
    }
    let hp = host(root, &p);
    match DirBuilder::new().mode(perm).create(&hp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(FileOpError::io("mkdir", show(&p), err)),
    }
    undo_umask(&hp, perm).map_err(|e| FileOpError::io("chmod", show(&p), e))?;
    finish_new(&hp, &p, owner, tm)
}

/// `mkfile`: write `data`, creating the file with `mode` or truncating an
/// existing one (whose mode is kept, as `os.WriteFile` keeps it).
///
/// Unlike upstream, an existing FIFO or device is refused instead of being
/// opened and written: the daemon would otherwise block on a FIFO or write
/// to a host device through a node in the tree.
pub fn mkfile(
    root: &Path,
    action: &FileActionMkFile,
    owner: Option<Owner>,
) -> Result<(), FileOpError> {
    let p = resolve(root, &join(&[b"/", action.path.as_bytes()]), true)?;
    let hp = host(root, &p);
    let perm = (action.mode as u32) & 0o777;
    let existed = match std::fs::symlink_metadata(&hp) {
        Ok(meta) if meta.is_dir() => {
            return Err(FileOpError::io(
                "open",
                show(&p),
                io::Error::from_raw_os_error(rustix::io::Errno::ISDIR.raw_os_error()),
            ));
        }
        Ok(meta) if !meta.is_file() => return Err(not_regular(&p)),
        Ok(_) => true,
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(FileOpError::io("open", show(&p), err)),
    };
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(perm)
        .custom_flags(flags.bits() as i32)
        .open(&hp)
        .map_err(|e| FileOpError::io("open", show(&p), e))?;
    let meta = file
        .metadata()
        .map_err(|e| FileOpError::io("stat", show(&p), e))?;
    if !meta.is_file() {
        return Err(not_regular(&p));
    }
    file.write_all(&action.data)
        .map_err(|e| FileOpError::io("write", show(&p), e))?;
    if !existed && meta.mode() & 0o777 != perm {
        file.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(|e| FileOpError::io("chmod", show(&p), e))?;
    }
    drop(file);
    finish_new(&hp, &p, owner, timestamp(action.timestamp))
}

fn not_regular(p: &[u8]) -> FileOpError {
    FileOpError::io(
        "open",
        show(p),
        io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
    )
}

/// `symlink`: create `newpath` pointing at `oldpath` (any text; it is data,
/// not resolved). An existing `newpath` is an error.
pub fn symlink(
    root: &Path,
    action: &FileActionSymlink,
    owner: Option<Owner>,
) -> Result<(), FileOpError> {
    let p = resolve(root, &join(&[b"/", action.newpath.as_bytes()]), true)?;
    let hp = host(root, &p);
    std::os::unix::fs::symlink(&action.oldpath, &hp).map_err(|e| FileOpError::Link {
        op: "symlink",
        old: action.oldpath.clone(),
        new: show(&p),
        source: e,
    })?;
    finish_new(&hp, &p, owner, timestamp(action.timestamp))
}

/// Owner and time of an entry just created (BuildKit sets both only when
/// asked).
fn finish_new(
    hp: &Path,
    p: &[u8],
    owner: Option<Owner>,
    tm: Option<Time>,
) -> Result<(), FileOpError> {
    if let Some(owner) = owner {
        sys::lchown(hp, owner).map_err(|e| FileOpError::io("lchown", show(p), e))?;
    }
    if let Some(t) = tm {
        sys::set_times(hp, t, t)
            .map_err(|e| FileOpError::os(format!("failed to utime {}", show(p)), e))?;
    }
    Ok(())
}

/// `rm`: remove the path and everything beneath it. The last component is
/// not followed (a symlink is removed, not its target). With
/// `allowWildcard` every match is removed and no match is fine; otherwise a
/// missing path is an error unless `allowNotFound`.
pub fn rm(root: &Path, action: &FileActionRm) -> Result<(), FileOpError> {
    if action.allow_wildcard {
        let matches = resolve_wildcards(root, &clean_path(action.path.as_bytes()), false)?;
        for m in matches {
            rm_path(root, &m, action.allow_not_found)?;
        }
        return Ok(());
    }
    rm_path(root, action.path.as_bytes(), action.allow_not_found)
}

fn rm_path(root: &Path, src: &[u8], allow_not_found: bool) -> Result<(), FileOpError> {
    let src = join(&[b"/", src]);
    let (dir, base) = split(&src);
    if base.is_empty() {
        return Err(FileOpError::Invalid("rmPath: invalid empty path".into()));
    }
    let dir = resolve(root, dir, true)?;
    let p = join(&[&dir, base]);
    if !allow_not_found {
        // Upstream stats the host path (following a final symlink on the
        // host); here the final symlink is followed inside the root.
        let missing = resolve(root, &p, true)
            .ok()
            .and_then(|followed| std::fs::symlink_metadata(host(root, &followed)).err())
            .filter(|err| err.kind() == io::ErrorKind::NotFound);
        if let Some(err) = missing {
            return Err(FileOpError::io("stat", show(&p), err));
        }
    }
    sys::remove_all(&host(root, &p)).map_err(|e| FileOpError::io("unlinkat", show(&p), e))
}

/// fsutil's `MkdirAll` on an in-root path: create each missing directory
/// with `perm`, `owner` (if any) and time `tm` (if any), returning the host
/// paths created, outermost first. An existing non-directory on the way is
/// `ENOTDIR`. Existing entries are looked at without following symlinks;
/// callers pass resolved paths, whose existing components are directories.
pub(crate) fn mkdir_all(
    root: &Path,
    p: &[u8],
    perm: u32,
    owner: Option<Owner>,
    tm: Option<Time>,
) -> Result<Vec<PathBuf>, FileOpError> {
    let enotdir = || io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error());
    let comps: Vec<&[u8]> = p.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    let prefix = |n: usize| {
        let mut out = Vec::new();
        for c in &comps[..n] {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    };
    // The deepest existing ancestor (or `p` itself).
    let mut start = None;
    for n in (0..=comps.len()).rev() {
        let pre = prefix(n);
        match std::fs::symlink_metadata(host(root, &pre)) {
            Ok(meta) if meta.is_dir() => {
                start = Some(n);
                break;
            }
            Ok(_) => return Err(FileOpError::io("mkdir", show(&pre), enotdir())),
            Err(err) if n == 0 => return Err(FileOpError::io("lstat", "/", err)),
            Err(_) => {}
        }
    }
    let start = start.unwrap_or(0);
    let mut created = Vec::new();
    for n in start + 1..=comps.len() {
        let pre = prefix(n);
        let hp = host(root, &pre);
        if let Err(err) = DirBuilder::new().mode(perm & 0o7777).create(&hp) {
            // Someone made it meanwhile ("foo/." and races in upstream).
            match std::fs::symlink_metadata(&hp) {
                Ok(meta) if meta.is_dir() => continue,
                _ => return Err(FileOpError::io("mkdir", show(&pre), err)),
            }
        }
        undo_umask(&hp, perm).map_err(|e| FileOpError::io("chmod", show(&pre), e))?;
        created.push(hp.clone());
        if let Some(owner) = owner {
            sys::lchown(&hp, owner).map_err(|e| FileOpError::io("lchown", show(&pre), e))?;
        }
        if let Some(t) = tm {
            sys::set_times(&hp, t, t)
                .map_err(|e| FileOpError::os(format!("failed to utime {}", show(&pre)), e))?;
        }
    }
    Ok(created)
}

/// Give a directory just made with `perm` the permission bits it would
/// have under umask 0, keeping what mkdir(2) decided for the set-id and
/// sticky bits (an inherited set-gid stays).
fn undo_umask(hp: &Path, perm: u32) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(hp)?.mode();
    let want = (mode & 0o7000) | (perm & 0o777);
    if mode & 0o7777 != want {
        sys::chmod(hp, want)?;
    }
    Ok(())
}

/// Reset the times of directories created for a copy once their contents
/// are in (fsutil's `fixCreatedParentDirs`); failures are ignored there.
pub(crate) fn fix_created_dirs(dirs: &[PathBuf], tm: Option<Time>) {
    if let Some(t) = tm {
        for d in dirs.iter().rev() {
            let _ = sys::set_times(d, t, t);
        }
    }
}
