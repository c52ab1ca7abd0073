//! `clone_tree`: a full copy of a snapshot directory, which is how a file
//! action's result starts from its input (BuildKit gets this from the
//! snapshotter). Everything is kept: modes with set-id bits, owners, times,
//! symlinks as symlinks, hard links between entries of the tree, xattrs,
//! devices, FIFOs and sockets. File data is shared by reflink (FICLONE)
//! where the filesystem can, and copied in the kernel otherwise.
//!
//! The walk is by directory descriptor with `O_NOFOLLOW` at every step, so a
//! symlink in the source is only ever read, never entered. Only the current
//! directory pair is open: the walk goes down by name and back up by `..`,
//! with the remaining names of each level on a heap stack, so depth costs
//! neither stack nor descriptors.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::sys::{self, Flow, Time, XattrAt};
use crate::{FileOpError, Owner};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One directory level being copied.
struct Frame {
    names: Vec<CString>,
    next: usize,
    /// The source directory's own metadata, applied once its entries are in.
    stat: Stat,
    /// In-tree path, for messages and hard-link targets.
    rel: Vec<u8>,
}

/// Copy the tree at `src` to `dst`, which must not exist or be an empty
/// directory. `src` itself may be a symlink (the caller's path); nothing
/// beneath it is followed.
pub fn clone_tree(src: &Path, dst: &Path) -> Result<(), FileOpError> {
    clone_tree_with(src, dst, false)
}

/// Like [`clone_tree`], but regular files are hard links to `src`'s, not
/// copies: directories, symlinks and special files are new, file data is
/// shared. Only for a `src` whose files are never written in place (a
/// directory that is only ever updated by renaming new files over old
/// ones, such as a context fsutil receives into), and a `dst` whose files
/// are never written either (an immutable snapshot).
pub fn link_tree(src: &Path, dst: &Path) -> Result<(), FileOpError> {
    clone_tree_with(src, dst, true)
}

fn clone_tree_with(src: &Path, dst: &Path, share_files: bool) -> Result<(), FileOpError> {
    let top_src = rustix::fs::openat(
        CWD,
        src,
        DIR_FLAGS.difference(OFlags::NOFOLLOW),
        Mode::empty(),
    )
    .map_err(|e| FileOpError::io("open", src.to_string_lossy(), e.into()))?;
    match rustix::fs::mkdirat(CWD, dst, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(FileOpError::io("mkdir", dst.to_string_lossy(), e.into())),
    }
    let dst_root = rustix::fs::openat(CWD, dst, DIR_FLAGS, Mode::empty())
        .map_err(|e| FileOpError::io("open", dst.to_string_lossy(), e.into()))?;
    let existing =
        list(&dst_root).map_err(|e| FileOpError::io("readdir", dst.to_string_lossy(), e))?;
    if !existing.is_empty() {
        return Err(FileOpError::Invalid(format!(
            "clone destination {} is not empty",
            dst.display()
        )));
    }
    let io_err = |op: &'static str, rel: &[u8], e: io::Error| FileOpError::io(op, show(rel), e);

    let stat = rustix::fs::fstat(&top_src).map_err(|e| io_err("fstat", b"/", e.into()))?;
    let names = list(&top_src).map_err(|e| io_err("readdir", b"/", e))?;
    let mut stack = vec![Frame {
        names,
        next: 0,
        stat,
        rel: Vec::new(),
    }];
    let mut cur_src = top_src;
    let mut cur_dst = rustix::io::dup(&dst_root).map_err(|e| io_err("dup", b"/", e.into()))?;
    // First in-tree path of each multiply linked inode.
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();

    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get(frame.next).cloned() else {
            let Some(frame) = stack.pop() else {
                break;
            };
            dir_metadata(&cur_src, &cur_dst, &frame.stat)
                .map_err(|(op, e)| io_err(op, &frame.rel, e))?;
            if stack.is_empty() {
                break;
            }
            cur_src = rustix::fs::openat(&cur_src, c"..", DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err("open", &frame.rel, e.into()))?;
            cur_dst = rustix::fs::openat(&cur_dst, c"..", DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err("open", &frame.rel, e.into()))?;
            continue;
        };
        frame.next += 1;
        let mut rel = frame.rel.clone();
        rel.push(b'/');
        rel.extend_from_slice(name.to_bytes());

        let st = match rustix::fs::statat(&cur_src, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the listing; nothing to copy.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(io_err("lstat", &rel, e.into())),
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            rustix::fs::mkdirat(&cur_dst, &name, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err("mkdir", &rel, e.into()))?;
            let s = rustix::fs::openat(&cur_src, &name, DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err("open", &rel, e.into()))?;
            let d = rustix::fs::openat(&cur_dst, &name, DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err("open", &rel, e.into()))?;
            let names = list(&s).map_err(|e| io_err("readdir", &rel, e))?;
            stack.push(Frame {
                names,
                next: 0,
                stat: st,
                rel,
            });
            cur_src = s;
            cur_dst = d;
            continue;
        }

        if to_u64(st.st_nlink) > 1 {
            let key = (to_u64(st.st_dev), to_u64(st.st_ino));
            if let Some(first) = links.get(&key) {
                let first_rel = first.strip_prefix(b"/").unwrap_or(first);
                match rustix::fs::linkat(&dst_root, first_rel, &cur_dst, &name, AtFlags::empty()) {
                    Ok(()) => continue,
                    // Too long a path to name the first link by: keep the
                    // content as a separate file rather than fail.
                    Err(Errno::NAMETOOLONG) => {}
                    Err(e) => {
                        return Err(FileOpError::Link {
                            op: "link",
                            old: show(first),
                            new: show(&rel),
                            source: e.into(),
                        });
                    }
                }
            } else {
                links.insert(key, rel.clone());
            }
        }

        match ft {
            FileType::RegularFile if share_files => {
                rustix::fs::linkat(&cur_src, &name, &cur_dst, &name, AtFlags::empty())
                    .map_err(|e| io_err("link", &rel, e.into()))?;
            }
            FileType::RegularFile => copy_regular(&cur_src, &cur_dst, &name, &st, &rel)?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&cur_src, &name, Vec::new())
                    .map_err(|e| io_err("readlink", &rel, e.into()))?;
                rustix::fs::symlinkat(&target, &cur_dst, &name)
                    .map_err(|e| io_err("symlink", &rel, e.into()))?;
                entry_metadata(&cur_src, &cur_dst, &name, &st, false)
                    .map_err(|(op, e)| io_err(op, &rel, e))?;
            }
            _ => {
                sys::mknod_at(cur_dst.as_fd(), &name, st.st_mode, to_u64(st.st_rdev))
                    .map_err(|e| io_err("mknod", &rel, e))?;
                entry_metadata(&cur_src, &cur_dst, &name, &st, true)
                    .map_err(|(op, e)| io_err(op, &rel, e))?;
            }
        }
    }
    Ok(())
}

fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(rel).into_owned()
    }
}

/// Names in a directory, sorted so hard links resolve to the same first
/// path on every run.
fn list(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(0)
}

fn times(st: &Stat) -> (Time, Time) {
    (
        Time {
            sec: to_i64(st.st_atime),
            nsec: to_i64(st.st_atime_nsec),
        },
        Time {
            sec: to_i64(st.st_mtime),
            nsec: to_i64(st.st_mtime_nsec),
        },
    )
}

fn owner(st: &Stat) -> Owner {
    Owner {
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

/// Failures a snapshot copy tolerates for xattrs: a filesystem without
/// them, a namespace we may not write (`user.*` on symlinks), or an
/// attribute that went away; the rest is an error.
fn xattr_tolerated(_: Option<&CStr>, err: io::Error) -> io::Result<Flow> {
    let tolerated = [
        Errno::NOTSUP,
        Errno::OPNOTSUPP,
        Errno::PERM,
        Errno::ACCESS,
        Errno::NOENT,
        Errno::NODATA,
    ];
    match err.raw_os_error() {
        Some(code) if tolerated.iter().any(|e| e.raw_os_error() == code) => Ok(Flow::Continue),
        _ => Err(err),
    }
}

fn copy_regular(
    src_dir: &OwnedFd,
    dst_dir: &OwnedFd,
    name: &CStr,
    st: &Stat,
    rel: &[u8],
) -> Result<(), FileOpError> {
    let io_err = |op: &'static str, e: io::Error| FileOpError::io(op, show(rel), e);
    let s = rustix::fs::openat(
        src_dir,
        name,
        // NONBLOCK: should the entry have become a FIFO, do not hang on it.
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", e.into()))?;
    let d = rustix::fs::openat(
        dst_dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("open", e.into()))?;
    let (s, d) = (File::from(s), File::from(d));
    sys::copy_contents(&s, &d).map_err(|e| io_err("copy", e))?;
    // chown clears set-id bits and file capabilities, so it goes first.
    sys::chown_fd(d.as_fd(), owner(st)).map_err(|e| io_err("fchown", e))?;
    rustix::fs::fchmod(&d, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(|e| io_err("fchmod", e.into()))?;
    sys::copy_xattrs(
        XattrAt::Fd(d.as_fd()),
        XattrAt::Fd(s.as_fd()),
        xattr_tolerated,
    )
    .map_err(|e| io_err("setxattr", e))?;
    let (atime, mtime) = times(st);
    sys::set_times_fd(d.as_fd(), atime, mtime).map_err(|e| io_err("futimens", e))?;
    Ok(())
}

/// A failed metadata step: which call, and why.
type StepError = (&'static str, io::Error);

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, StepError> {
    r.map_err(|e| (op, e))
}

/// Owner, mode (not for symlinks), xattrs and times of a non-regular entry,
/// by name in its directory.
fn entry_metadata(
    src_dir: &OwnedFd,
    dst_dir: &OwnedFd,
    name: &CStr,
    st: &Stat,
    chmod: bool,
) -> Result<(), StepError> {
    step("lchown", sys::chown_at(dst_dir.as_fd(), name, owner(st)))?;
    if chmod {
        // Not a symlink (we just made it), so following is harmless.
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        step(
            "chmod",
            rustix::fs::chmodat(dst_dir, name, mode, AtFlags::empty()).map_err(io::Error::from),
        )?;
    }
    let dst_path = sys::proc_path(dst_dir.as_fd(), name);
    let src_path = sys::proc_path(src_dir.as_fd(), name);
    step(
        "setxattr",
        sys::copy_xattrs(
            XattrAt::Path(&dst_path),
            XattrAt::Path(&src_path),
            xattr_tolerated,
        ),
    )?;
    let (atime, mtime) = times(st);
    step(
        "utimensat",
        sys::set_times_at(dst_dir.as_fd(), name, atime, mtime),
    )
}

/// A directory's own metadata, once everything inside it is written.
fn dir_metadata(src: &OwnedFd, dst: &OwnedFd, st: &Stat) -> Result<(), StepError> {
    step("fchown", sys::chown_fd(dst.as_fd(), owner(st)))?;
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    step(
        "fchmod",
        rustix::fs::fchmod(dst, mode).map_err(io::Error::from),
    )?;
    step(
        "setxattr",
        sys::copy_xattrs(
            XattrAt::Fd(dst.as_fd()),
            XattrAt::Fd(src.as_fd()),
            xattr_tolerated,
        ),
    )?;
    let (atime, mtime) = times(st);
    step("futimens", sys::set_times_fd(dst.as_fd(), atime, mtime))
}
