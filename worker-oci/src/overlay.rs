//! Overlayfs upper dirs as layers of full directory trees: [`apply_upper`]
//! folds an exec step's upper dir onto a tree that starts as a link-copy of
//! the step's input, and [`diff_trees`] writes the upper dir that would
//! turn one tree into another (for snapshots made without overlayfs).
//!
//! Upper dirs are written by untrusted build steps. Both walks go by
//! directory descriptor with `O_NOFOLLOW` and act on single names relative
//! to those descriptors, so a symlink in either tree is only ever replaced
//! or linked, never entered. Only the current directory of each tree is
//! open: the walks go down by name and back up by `..`, keeping the names
//! still to visit on a heap stack, so a deep tree costs neither stack nor
//! descriptors. The trees must not change while a walk runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use thiserror::Error;

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &CStr = c"trusted.overlay.opaque";
const WHITEOUT: &CStr = c"trusted.overlay.whiteout";
const REDIRECT: &CStr = c"trusted.overlay.redirect";
const METACOPY: &CStr = c"trusted.overlay.metacopy";

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A failure while applying or computing an overlay diff.
#[derive(Debug, Error)]
pub enum OverlayError {
    /// A system call on `path` failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An overlayfs feature whose entries are not self-contained.
    #[error(
        "{}: overlayfs {what} cannot be applied as a plain tree (mount with redirect_dir=off,metacopy=off)",
        path.display()
    )]
    Unsupported { path: PathBuf, what: &'static str },
    /// A character device 0:0, which a diff could only express as a
    /// whiteout.
    #[error("{}: a 0:0 character device cannot be told apart from a whiteout", path.display())]
    Unrepresentable { path: PathBuf },
    /// Moving an entry from the upper dir into the target failed.
    #[error("rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The output of [`diff_trees`] already has entries.
    #[error("diff output {} is not an empty directory", path.display())]
    NotEmpty { path: PathBuf },
}

fn io_err(op: &'static str, root: &Path, rel: &[u8], err: impl Into<io::Error>) -> OverlayError {
    OverlayError::Io {
        op,
        path: in_tree(root, rel),
        source: err.into(),
    }
}

fn in_tree(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn child_rel(parent: &[u8], name: &CStr) -> Vec<u8> {
    let mut rel = parent.to_vec();
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name.to_bytes());
    rel
}

/// Whether `meta` (from `symlink_metadata`) is an overlayfs whiteout in
/// its usual form, a 0:0 character device. The other form, a regular file
/// with `trusted.overlay.whiteout`, needs the path: see
/// [`is_whiteout_path`].
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `path` (not followed if a symlink) is a whiteout in either form.
pub fn is_whiteout_path(path: &Path) -> Result<bool, OverlayError> {
    let st = rustix::fs::lstat(path).map_err(|e| io_err("lstat", path, b"", e))?;
    is_whiteout_at(&st, path).map_err(|e| io_err("getxattr", path, b"", e))
}

/// Whether `path` is a directory overlayfs marks opaque (`y`): nothing
/// beneath it in the lower layers shows through.
pub fn is_opaque(path: &Path) -> Result<bool, OverlayError> {
    let st = rustix::fs::lstat(path).map_err(|e| io_err("lstat", path, b"", e))?;
    if file_type(&st) != FileType::Directory {
        return Ok(false);
    }
    let value = get_xattr(At::Path(path), OPAQUE).map_err(|e| io_err("getxattr", path, b"", e))?;
    Ok(value.as_deref() == Some(b"y"))
}

fn is_whiteout_at(st: &Stat, path: &Path) -> io::Result<bool> {
    match file_type(st) {
        FileType::CharacterDevice => Ok(st.st_rdev == 0),
        // The kernel's own test for the xattr form includes the size.
        FileType::RegularFile if st.st_size == 0 => {
            Ok(get_xattr(At::Path(path), WHITEOUT)?.is_some())
        }
        _ => Ok(false),
    }
}

/// What an entry of an upper dir stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whiteout,
    Dir { opaque: bool },
    Other,
}

/// Classify an upper-dir entry (`path` names it without following it).
fn classify(st: &Stat, path: &Path) -> Result<Kind, OverlayError> {
    let xattr_err = |e| io_err("getxattr", path, b"", e);
    if is_whiteout_at(st, path).map_err(xattr_err)? {
        return Ok(Kind::Whiteout);
    }
    let names = xattr_names(At::Path(path)).map_err(|e| io_err("listxattr", path, b"", e))?;
    let has = |wanted: &CStr| names.iter().any(|n| n.as_c_str() == wanted);
    // Both make an entry depend on some other lower path than its own,
    // which a tree of plain entries cannot express.
    if has(REDIRECT) {
        return Err(OverlayError::Unsupported {
            path: path.to_path_buf(),
            what: "redirect_dir",
        });
    }
    if has(METACOPY) {
        return Err(OverlayError::Unsupported {
            path: path.to_path_buf(),
            what: "metacopy",
        });
    }
    if file_type(st) != FileType::Directory {
        return Ok(Kind::Other);
    }
    let opaque = has(OPAQUE)
        && get_xattr(At::Path(path), OPAQUE)
            .map_err(xattr_err)?
            .as_deref()
            == Some(b"y");
    Ok(Kind::Dir { opaque })
}

/// One directory level of [`apply_upper`]'s walk.
struct ApplyFrame {
    names: Vec<CString>,
    next: usize,
    /// The upper dir's metadata from before anything was moved out of it.
    stat: Stat,
    rel: Vec<u8>,
}

/// Apply the overlayfs upper dir `upper` onto the full tree `target`, as
/// overlayfs shows the merged view: whiteouts delete, opaque directories
/// replace, other entries replace what is there, and directories present
/// in both are merged, ending with the upper dir's mode, owner, xattrs and
/// times. Entries are moved (renamed) out of `upper`, which must be on
/// the same filesystem; what remains of it afterwards (whiteouts, emptied
/// directories) is for the caller to delete. `trusted.overlay.*` xattrs
/// never reach `target`.
///
/// `target`'s root takes `upper`'s root metadata, as the merged view's root
/// is the upper dir: create the upper dir with the lower root's mode and
/// owner.
pub fn apply_upper(upper: &Path, target: &Path) -> Result<(), OverlayError> {
    let up_err = |op, rel: &[u8], e: io::Error| io_err(op, upper, rel, e);
    let tg_err = |op, rel: &[u8], e: io::Error| io_err(op, target, rel, e);

    let mut up = open_top(upper).map_err(|e| up_err("open", b"", e))?;
    let mut tg = open_top(target).map_err(|e| tg_err("open", b"", e))?;
    let stat = rustix::fs::fstat(&up).map_err(|e| up_err("fstat", b"", e.into()))?;
    if get_xattr(At::Fd(up.as_fd()), OPAQUE)
        .map_err(|e| up_err("getxattr", b"", e))?
        .as_deref()
        == Some(b"y")
    {
        let dup = rustix::io::dup(&tg).map_err(|e| tg_err("dup", b"", e.into()))?;
        empty_dir(dup).map_err(|e| tg_err("empty", b"", e))?;
    }
    let names = list_names(&up).map_err(|e| up_err("readdir", b"", e))?;
    let mut stack = vec![ApplyFrame {
        names,
        next: 0,
        stat,
        rel: Vec::new(),
    }];

    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            let Some(done) = stack.pop() else {
                break;
            };
            // After the entries: moving them in changed the times.
            copy_dir_metadata(up.as_fd(), tg.as_fd(), &done.stat)
                .map_err(|(op, e)| tg_err(op, &done.rel, e))?;
            if stack.is_empty() {
                break;
            }
            up = open_dir(up.as_fd(), c"..").map_err(|e| up_err("open", &done.rel, e))?;
            tg = open_dir(tg.as_fd(), c"..").map_err(|e| tg_err("open", &done.rel, e))?;
            continue;
        };
        frame.next += 1;
        let rel = child_rel(&frame.rel, &name);
        let step = apply_entry(up.as_fd(), tg.as_fd(), &name, &rel, upper, target)?;
        if let Some((sub_up, sub_tg, stat)) = step {
            let names = list_names(&sub_up).map_err(|e| up_err("readdir", &rel, e))?;
            stack.push(ApplyFrame {
                names,
                next: 0,
                stat,
                rel,
            });
            up = sub_up;
            tg = sub_tg;
        }
    }
    Ok(())
}

/// Apply one upper entry; returns the directory pair to descend into when
/// both sides have a directory to merge.
fn apply_entry(
    up: BorrowedFd<'_>,
    tg: BorrowedFd<'_>,
    name: &CStr,
    rel: &[u8],
    upper: &Path,
    target: &Path,
) -> Result<Option<(OwnedFd, OwnedFd, Stat)>, OverlayError> {
    let up_err = |op, e: io::Error| io_err(op, upper, rel, e);
    let tg_err = |op, e: io::Error| io_err(op, target, rel, e);
    let Some(st) = lstat_at(up, name).map_err(|e| up_err("lstat", e))? else {
        return Ok(None);
    };
    let kind = classify(&st, &entry_path(up, name)).map_err(|e| rename_path(e, upper, rel))?;
    match kind {
        Kind::Whiteout => {
            remove_at(tg, name).map_err(|e| tg_err("remove", e))?;
            return Ok(None);
        }
        Kind::Dir { opaque: false } => match lstat_at(tg, name).map_err(|e| tg_err("lstat", e))? {
            Some(t) if file_type(&t) == FileType::Directory => {
                let sub_up = open_dir(up, name).map_err(|e| up_err("open", e))?;
                let sub_tg = open_dir(tg, name).map_err(|e| tg_err("open", e))?;
                return Ok(Some((sub_up, sub_tg, st)));
            }
            Some(_) => remove_at(tg, name).map_err(|e| tg_err("remove", e))?,
            None => {}
        },
        Kind::Dir { opaque: true } | Kind::Other => {
            remove_at(tg, name).map_err(|e| tg_err("remove", e))?;
        }
    }
    move_in(up, tg, name, &st, rel, upper, target).map(|()| None)
}

/// Move an upper entry into the target, where its name is now free,
/// without whiteouts or overlay xattrs.
fn move_in(
    up: BorrowedFd<'_>,
    tg: BorrowedFd<'_>,
    name: &CStr,
    st: &Stat,
    rel: &[u8],
    upper: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    let is_dir = file_type(st) == FileType::Directory;
    if is_dir {
        let dir = open_dir(up, name).map_err(|e| io_err("open", upper, rel, e))?;
        clean_tree(dir, st, rel, upper)?;
    } else {
        strip_overlay_xattrs(At::Path(&entry_path(up, name)))
            .map_err(|e| io_err("removexattr", upper, rel, e))?;
    }
    rustix::fs::renameat(up, name, tg, name).map_err(|e| OverlayError::Rename {
        from: in_tree(upper, rel),
        to: in_tree(target, rel),
        source: e.into(),
    })?;
    if is_dir {
        // Some filesystems touch a directory moved to a new parent.
        let dir = open_dir(tg, name).map_err(|e| io_err("open", target, rel, e))?;
        rustix::fs::futimens(&dir, &timestamps(st))
            .map_err(|e| io_err("futimens", target, rel, e))?;
    }
    Ok(())
}

/// One directory level of [`clean_tree`].
struct CleanFrame {
    names: Vec<CString>,
    next: usize,
    stat: Stat,
    rel: Vec<u8>,
}

/// Prepare an upper directory to become part of the target as is: drop the
/// whiteouts in it (there is nothing beneath them to hide), strip overlay
/// xattrs, and keep each directory's times as they were.
fn clean_tree(top: OwnedFd, st: &Stat, rel: &[u8], upper: &Path) -> Result<(), OverlayError> {
    let err = |op, rel: &[u8], e: io::Error| io_err(op, upper, rel, e);
    strip_overlay_xattrs(At::Fd(top.as_fd())).map_err(|e| err("removexattr", rel, e))?;
    let names = list_names(&top).map_err(|e| err("readdir", rel, e))?;
    let mut stack = vec![CleanFrame {
        names,
        next: 0,
        stat: *st,
        rel: rel.to_vec(),
    }];
    let mut cur = top;
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            let Some(done) = stack.pop() else {
                break;
            };
            rustix::fs::futimens(&cur, &timestamps(&done.stat))
                .map_err(|e| err("futimens", &done.rel, e.into()))?;
            if stack.is_empty() {
                break;
            }
            cur = open_dir(cur.as_fd(), c"..").map_err(|e| err("open", &done.rel, e))?;
            continue;
        };
        frame.next += 1;
        let rel = child_rel(&frame.rel, &name);
        let Some(st) = lstat_at(cur.as_fd(), &name).map_err(|e| err("lstat", &rel, e))? else {
            continue;
        };
        let path = entry_path(cur.as_fd(), &name);
        match classify(&st, &path).map_err(|e| rename_path(e, upper, &rel))? {
            Kind::Whiteout => match rustix::fs::unlinkat(&cur, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(err("unlink", &rel, e.into())),
            },
            Kind::Dir { .. } => {
                let sub = open_dir(cur.as_fd(), &name).map_err(|e| err("open", &rel, e))?;
                strip_overlay_xattrs(At::Fd(sub.as_fd()))
                    .map_err(|e| err("removexattr", &rel, e))?;
                let names = list_names(&sub).map_err(|e| err("readdir", &rel, e))?;
                stack.push(CleanFrame {
                    names,
                    next: 0,
                    stat: st,
                    rel,
                });
                cur = sub;
            }
            Kind::Other => {
                strip_overlay_xattrs(At::Path(&path)).map_err(|e| err("removexattr", &rel, e))?;
            }
        }
    }
    Ok(())
}

/// Errors from [`classify`] name a `/proc/self/fd` path; name the tree
/// path instead.
fn rename_path(err: OverlayError, root: &Path, rel: &[u8]) -> OverlayError {
    let path = in_tree(root, rel);
    match err {
        OverlayError::Io { op, source, .. } => OverlayError::Io { op, path, source },
        OverlayError::Unsupported { what, .. } => OverlayError::Unsupported { path, what },
        OverlayError::Unrepresentable { .. } => OverlayError::Unrepresentable { path },
        other => other,
    }
}

/// One directory level of [`diff_trees`]' walk.
struct DiffFrame {
    /// Names in the lower and the upper directory, merged and sorted.
    names: Vec<CString>,
    next: usize,
    /// The lower directory's metadata; `None` for a directory the lower
    /// tree lacks (or has as a non-directory), which is copied whole.
    lower_stat: Option<Stat>,
    upper_stat: Stat,
    /// The lower descriptor of the nearest ancestor that has one, kept
    /// while the walk is below it in directories only the upper has.
    parent_lower: Option<OwnedFd>,
    /// Name in the parent; `None` for the root.
    name: Option<CString>,
    rel: Vec<u8>,
}

/// Write into the empty directory `out` the overlay-style diff that turns
/// `lower` into `upper_tree`: what `upper_tree` lacks becomes a whiteout
/// (a 0:0 character device), new or changed entries are hard links to
/// `upper_tree`'s (so `out` must be on its filesystem), and directories
/// that hold changes, or whose own metadata changed, are directories
/// with `upper_tree`'s metadata. `link_tree(lower)` followed by
/// [`apply_upper`] of `out` gives `upper_tree` back.
///
/// An entry is unchanged when it is the same inode in both trees, or has
/// the same type, mode, owner, size, device number, modification time (to
/// the nanosecond), xattrs and symlink target; a regular file whose mtime
/// has no sub-second part (as from a tar archive) must have the same
/// contents too.
pub fn diff_trees(lower: &Path, upper_tree: &Path, out: &Path) -> Result<(), OverlayError> {
    let lo_err = |op, rel: &[u8], e: io::Error| io_err(op, lower, rel, e);
    let up_err = |op, rel: &[u8], e: io::Error| io_err(op, upper_tree, rel, e);
    let out_err = |op, rel: &[u8], e: io::Error| io_err(op, out, rel, e);

    let lo_root = open_top(lower).map_err(|e| lo_err("open", b"", e))?;
    let mut up = open_top(upper_tree).map_err(|e| up_err("open", b"", e))?;
    let mut ou = open_top(out).map_err(|e| out_err("open", b"", e))?;
    if !list_names(&ou)
        .map_err(|e| out_err("readdir", b"", e))?
        .is_empty()
    {
        return Err(OverlayError::NotEmpty {
            path: out.to_path_buf(),
        });
    }
    let lower_stat = rustix::fs::fstat(&lo_root).map_err(|e| lo_err("fstat", b"", e.into()))?;
    let upper_stat = rustix::fs::fstat(&up).map_err(|e| up_err("fstat", b"", e.into()))?;
    let names = merged_names(Some(&lo_root), &up).map_err(|e| up_err("readdir", b"", e))?;
    let mut lo = Some(lo_root);
    let mut stack = vec![DiffFrame {
        names,
        next: 0,
        lower_stat: Some(lower_stat),
        upper_stat,
        parent_lower: None,
        name: None,
        rel: Vec::new(),
    }];

    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            let Some(done) = stack.pop() else {
                break;
            };
            let unchanged = match (&done.name, &done.lower_stat, &lo) {
                (Some(_), Some(lower_stat), Some(lo)) => {
                    list_names(&ou)
                        .map_err(|e| out_err("readdir", &done.rel, e))?
                        .is_empty()
                        && same_dir(lo.as_fd(), up.as_fd(), lower_stat, &done.upper_stat)
                            .map_err(|(op, e)| up_err(op, &done.rel, e))?
                }
                _ => false,
            };
            if !unchanged {
                copy_dir_metadata(up.as_fd(), ou.as_fd(), &done.upper_stat)
                    .map_err(|(op, e)| out_err(op, &done.rel, e))?;
            }
            let Some(name) = done.name else {
                break;
            };
            lo = match (done.parent_lower, lo) {
                (Some(parent), _) => Some(parent),
                (None, Some(cur)) => {
                    Some(open_dir(cur.as_fd(), c"..").map_err(|e| lo_err("open", &done.rel, e))?)
                }
                (None, None) => None,
            };
            up = open_dir(up.as_fd(), c"..").map_err(|e| up_err("open", &done.rel, e))?;
            ou = open_dir(ou.as_fd(), c"..").map_err(|e| out_err("open", &done.rel, e))?;
            if unchanged {
                rustix::fs::unlinkat(&ou, &name, AtFlags::REMOVEDIR)
                    .map_err(|e| out_err("rmdir", &done.rel, e.into()))?;
            }
            continue;
        };
        frame.next += 1;
        let rel = child_rel(&frame.rel, &name);

        let l = match &lo {
            Some(lo) => lstat_at(lo.as_fd(), &name).map_err(|e| lo_err("lstat", &rel, e))?,
            None => None,
        };
        let u = lstat_at(up.as_fd(), &name).map_err(|e| up_err("lstat", &rel, e))?;
        let Some(u) = u else {
            if l.is_some() {
                rustix::fs::mknodat(&ou, &name, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|e| out_err("mknod whiteout", &rel, e.into()))?;
            }
            continue;
        };

        if file_type(&u) == FileType::Directory {
            let lower_dir = l.filter(|l| file_type(l) == FileType::Directory);
            rustix::fs::mkdirat(&ou, &name, Mode::from_raw_mode(0o700))
                .map_err(|e| out_err("mkdir", &rel, e.into()))?;
            let sub_up = open_dir(up.as_fd(), &name).map_err(|e| up_err("open", &rel, e))?;
            let sub_ou = open_dir(ou.as_fd(), &name).map_err(|e| out_err("open", &rel, e))?;
            let (sub_lo, parent_lower) = match (lower_dir, lo.take()) {
                (Some(_), Some(cur)) => {
                    let sub = open_dir(cur.as_fd(), &name).map_err(|e| lo_err("open", &rel, e))?;
                    (Some(sub), None)
                }
                // Leaving the lower tree: remember where, to come back.
                (_, cur) => (None, cur),
            };
            let names =
                merged_names(sub_lo.as_ref(), &sub_up).map_err(|e| up_err("readdir", &rel, e))?;
            stack.push(DiffFrame {
                names,
                next: 0,
                lower_stat: lower_dir.filter(|_| sub_lo.is_some()),
                upper_stat: u,
                parent_lower,
                name: Some(name),
                rel,
            });
            lo = sub_lo;
            up = sub_up;
            ou = sub_ou;
            continue;
        }

        let unchanged = match (&l, &lo) {
            (Some(l), Some(lo)) => same_entry(lo.as_fd(), up.as_fd(), &name, l, &u)
                .map_err(|(op, e)| up_err(op, &rel, e))?,
            _ => false,
        };
        if unchanged {
            continue;
        }
        if file_type(&u) == FileType::CharacterDevice && u.st_rdev == 0 {
            return Err(OverlayError::Unrepresentable {
                path: in_tree(upper_tree, &rel),
            });
        }
        rustix::fs::linkat(&up, &name, &ou, &name, AtFlags::empty())
            .map_err(|e| out_err("link", &rel, e.into()))?;
    }
    Ok(())
}

/// The sorted union of the names in both directories.
fn merged_names(lower: Option<&OwnedFd>, upper: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut names: BTreeSet<CString> = list_names(upper)?.into_iter().collect();
    if let Some(lower) = lower {
        names.extend(list_names(lower)?);
    }
    Ok(names.into_iter().collect())
}

/// A failed step of a metadata operation: which call, and why.
type StepError = (&'static str, io::Error);

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, StepError> {
    r.map_err(|e| (op, e))
}

/// Whether a non-directory entry is the same in both trees.
fn same_entry(
    lo: BorrowedFd<'_>,
    up: BorrowedFd<'_>,
    name: &CStr,
    l: &Stat,
    u: &Stat,
) -> Result<bool, StepError> {
    if l.st_dev == u.st_dev && l.st_ino == u.st_ino {
        return Ok(true);
    }
    let same_stat = l.st_mode == u.st_mode
        && l.st_uid == u.st_uid
        && l.st_gid == u.st_gid
        && l.st_size == u.st_size
        && l.st_rdev == u.st_rdev
        && l.st_mtime == u.st_mtime
        && l.st_mtime_nsec == u.st_mtime_nsec;
    if !same_stat {
        return Ok(false);
    }
    let (lp, upath) = (entry_path(lo, name), entry_path(up, name));
    let (lx, ux) = (all_xattrs(At::Path(&lp)), all_xattrs(At::Path(&upath)));
    if step("getxattr", lx)? != step("getxattr", ux)? {
        return Ok(false);
    }
    match file_type(u) {
        FileType::Symlink => {
            let lt = step("readlink", readlink(lo, name))?;
            let ut = step("readlink", readlink(up, name))?;
            Ok(lt == ut)
        }
        FileType::RegularFile if u.st_mtime_nsec == 0 => {
            step("compare", same_contents(lo, up, name))
        }
        _ => Ok(true),
    }
}

/// Whether a directory's own metadata is the same in both trees.
fn same_dir(lo: BorrowedFd<'_>, up: BorrowedFd<'_>, l: &Stat, u: &Stat) -> Result<bool, StepError> {
    let same_stat = l.st_mode == u.st_mode
        && l.st_uid == u.st_uid
        && l.st_gid == u.st_gid
        && l.st_mtime == u.st_mtime
        && l.st_mtime_nsec == u.st_mtime_nsec;
    if !same_stat {
        return Ok(false);
    }
    let (l, u) = (all_xattrs(At::Fd(lo)), all_xattrs(At::Fd(up)));
    Ok(step("getxattr", l)? == step("getxattr", u)?)
}

fn readlink(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<CString> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?)
}

fn same_contents(lo: BorrowedFd<'_>, up: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    let open = |dir| -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        // NONBLOCK: should the entry have become a FIFO, do not hang on it.
        let fd = rustix::fs::openat(dir, name, flags | OFlags::NONBLOCK, Mode::empty())?;
        Ok(File::from(fd))
    };
    let (mut a, mut b) = (open(lo)?, open(up)?);
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut a, &mut buf_a)?;
        let m = read_full(&mut b, &mut buf_b)?;
        if buf_a[..n] != buf_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Read until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Give `dst` the owner, xattrs (less overlay bookkeeping), mode and times
/// `src` had when `st` was taken.
fn copy_dir_metadata(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, st: &Stat) -> Result<(), StepError> {
    let uid = rustix::fs::Uid::from_raw(st.st_uid);
    let gid = rustix::fs::Gid::from_raw(st.st_gid);
    step(
        "fchown",
        rustix::fs::fchown(dst, Some(uid), Some(gid)).map_err(io::Error::from),
    )?;
    let want: BTreeMap<CString, Vec<u8>> = step("getxattr", all_xattrs(At::Fd(src)))?
        .into_iter()
        .filter(|(name, _)| !is_overlay_xattr(name))
        .collect();
    let have = step("getxattr", all_xattrs(At::Fd(dst)))?;
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        step("removexattr", remove_xattr(At::Fd(dst), name))?;
    }
    for (name, value) in &want {
        if have.get(name) != Some(value) {
            step("setxattr", set_xattr(At::Fd(dst), name, value))?;
        }
    }
    // After the xattrs: setting an ACL rewrites the group bits.
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    step(
        "fchmod",
        rustix::fs::fchmod(dst, mode).map_err(io::Error::from),
    )?;
    step(
        "futimens",
        rustix::fs::futimens(dst, &timestamps(st)).map_err(io::Error::from),
    )
}

fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: to_i64(st.st_atime),
            tv_nsec: to_nsec(st.st_atime_nsec),
        },
        last_modification: Timespec {
            tv_sec: to_i64(st.st_mtime),
            tv_nsec: to_nsec(st.st_mtime_nsec),
        },
    }
}

fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(0)
}

fn to_nsec<T: TryInto<rustix::fs::Nsecs>>(v: T) -> rustix::fs::Nsecs {
    v.try_into().unwrap_or(0)
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Open a tree's root; the caller's path may go through symlinks.
fn open_top(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        DIR_FLAGS.difference(OFlags::NOFOLLOW),
        Mode::empty(),
    )?)
}

fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Names in a directory, sorted so walks are deterministic.
fn list_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// A path naming `name` in an open directory for the `l*xattr` calls,
/// which have no `*at` form here. The `/proc/self/fd` link leads to the
/// directory itself; `name` is a single component and is not followed.
fn entry_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

/// Remove `name` from `dir`, with everything beneath it if it is a
/// directory; a missing entry is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) == FileType::Directory {
        empty_dir(open_dir(dir, name)?)?;
        ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
    } else {
        ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::empty()))
    }
}

fn ignore_missing(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One directory level of [`empty_dir`].
struct EmptyFrame {
    names: Vec<CString>,
    next: usize,
    /// Name in the parent; `None` for the directory being emptied.
    name: Option<CString>,
}

/// Delete everything inside the open directory `top`.
fn empty_dir(top: OwnedFd) -> io::Result<()> {
    let mut stack = vec![EmptyFrame {
        names: list_names(&top)?,
        next: 0,
        name: None,
    }];
    let mut cur = top;
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            let Some(done) = stack.pop() else {
                break;
            };
            let Some(name) = done.name else {
                break;
            };
            cur = open_dir(cur.as_fd(), c"..")?;
            ignore_missing(rustix::fs::unlinkat(&cur, &name, AtFlags::REMOVEDIR))?;
            continue;
        };
        frame.next += 1;
        let Some(st) = lstat_at(cur.as_fd(), &name)? else {
            continue;
        };
        if file_type(&st) == FileType::Directory {
            let sub = open_dir(cur.as_fd(), &name)?;
            stack.push(EmptyFrame {
                names: list_names(&sub)?,
                next: 0,
                name: Some(name),
            });
            cur = sub;
        } else {
            ignore_missing(rustix::fs::unlinkat(&cur, &name, AtFlags::empty()))?;
        }
    }
    Ok(())
}

fn is_overlay_xattr(name: &CStr) -> bool {
    name.to_bytes().starts_with(OVERLAY_PREFIX)
}

/// Whether an xattr failure means "this filesystem has none".
fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

/// What an xattr call works on: an entry named by a path whose last
/// component is not followed (the `l*` calls), or an open directory.
#[derive(Clone, Copy)]
enum At<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

fn xattr_names(at: At<'_>) -> io::Result<Vec<CString>> {
    let list = loop {
        let size = match at {
            At::Path(p) => rustix::fs::llistxattr_query(p),
            At::Fd(fd) => rustix::fs::flistxattr_query(fd),
        };
        let size = match size {
            Ok(size) => size,
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        let got = match at {
            At::Path(p) => rustix::fs::llistxattr(p, &mut buf[..]),
            At::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // Grew between the two calls; ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    Ok(list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

fn get_xattr(at: At<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match at {
            At::Path(p) => rustix::fs::lgetxattr_query(p, name),
            At::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
        };
        let size = match size {
            Ok(size) => size,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        let got = match at {
            At::Path(p) => rustix::fs::lgetxattr(p, name, &mut buf[..]),
            At::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn all_xattrs(at: At<'_>) -> io::Result<BTreeMap<CString, Vec<u8>>> {
    let mut all = BTreeMap::new();
    for name in xattr_names(at)? {
        if let Some(value) = get_xattr(at, &name)? {
            all.insert(name, value);
        }
    }
    Ok(all)
}

fn set_xattr(at: At<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    match at {
        At::Path(p) => rustix::fs::lsetxattr(p, name, value, flags)?,
        At::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags)?,
    }
    Ok(())
}

fn remove_xattr(at: At<'_>, name: &CStr) -> io::Result<()> {
    let removed = match at {
        At::Path(p) => rustix::fs::lremovexattr(p, name),
        At::Fd(fd) => rustix::fs::fremovexattr(fd, name),
    };
    match removed {
        Ok(()) | Err(Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn strip_overlay_xattrs(at: At<'_>) -> io::Result<()> {
    for name in xattr_names(at)? {
        if is_overlay_xattr(&name) {
            remove_xattr(at, &name)?;
        }
    }
    Ok(())
}
