//! System-call helpers shared by the actions and `clone_tree`: owners,
//! times and xattrs that never follow a final symlink, file contents by
//! reflink with a copy as fallback, and a recursive remove that walks by
//! directory descriptor without recursion, so neither a symlink nor a very
//! deep tree can take it anywhere it should not go.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::Owner;

/// A point in time for `utimensat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time {
    pub sec: i64,
    pub nsec: i64,
}

/// An action's `timestamp`: -1 is unset; otherwise nanoseconds since the
/// epoch, split as Go's `time.Unix(ts/1e9, ts%1e9)` normalises it.
pub(crate) fn timestamp(ts: i64) -> Option<Time> {
    if ts == -1 {
        return None;
    }
    Some(Time {
        sec: ts.div_euclid(1_000_000_000),
        nsec: ts.rem_euclid(1_000_000_000),
    })
}

fn spec(t: Time) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec,
    }
}

/// The access and modification times of `meta`.
pub(crate) fn times_of(meta: &std::fs::Metadata) -> (Time, Time) {
    use std::os::unix::fs::MetadataExt;
    (
        Time {
            sec: meta.atime(),
            nsec: meta.atime_nsec(),
        },
        Time {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec(),
        },
    )
}

/// Set both times of `p` itself, never of a symlink's target.
pub(crate) fn set_times(p: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let ts = Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(crate) fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: Time,
    mtime: Time,
) -> io::Result<()> {
    let ts = Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(crate) fn set_times_fd(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> io::Result<()> {
    let ts = Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    rustix::fs::futimens(fd, &ts)?;
    Ok(())
}

fn ids(owner: Owner) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    // -1 means "leave as is" to chown(2); keep that meaning.
    let uid = (owner.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(owner.uid));
    let gid = (owner.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(owner.gid));
    (uid, gid)
}

/// `lchown`: the entry itself, never a symlink's target.
pub(crate) fn lchown(p: &Path, owner: Owner) -> io::Result<()> {
    let (uid, gid) = ids(owner);
    rustix::fs::chownat(CWD, p, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &CStr, owner: Owner) -> io::Result<()> {
    let (uid, gid) = ids(owner);
    rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

pub(crate) fn chown_fd(fd: BorrowedFd<'_>, owner: Owner) -> io::Result<()> {
    let (uid, gid) = ids(owner);
    rustix::fs::fchown(fd, uid, gid)?;
    Ok(())
}

/// `chmod` of an entry already known not to be a symlink (Linux cannot
/// chmod a symlink itself, and this follows one).
pub(crate) fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    rustix::fs::chmodat(CWD, p, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty())?;
    Ok(())
}

/// Create a special file. A socket becomes a plain empty file, as fsutil
/// copies it ("copied as stub").
pub(crate) fn mknod(p: &Path, st_mode: u32, rdev: u64) -> io::Result<()> {
    let (ft, rdev) = special_type(st_mode, rdev, true);
    rustix::fs::mknodat(CWD, p, ft, Mode::from_raw_mode(st_mode & 0o7777), rdev)?;
    Ok(())
}

/// Create a special file exactly (sockets stay sockets).
pub(crate) fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st_mode: u32,
    rdev: u64,
) -> io::Result<()> {
    let (ft, rdev) = special_type(st_mode, rdev, false);
    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(st_mode & 0o7777), rdev)?;
    Ok(())
}

fn special_type(st_mode: u32, rdev: u64, socket_as_file: bool) -> (FileType, u64) {
    let ft = FileType::from_raw_mode(st_mode);
    match ft {
        FileType::BlockDevice | FileType::CharacterDevice => (ft, rdev),
        FileType::Socket if socket_as_file => (FileType::RegularFile, 0),
        _ => (ft, 0),
    }
}

/// Copy `src`'s content into the empty `dst`: share extents when the
/// filesystem can (FICLONE), else let the kernel copy (`std::io::copy` uses
/// `copy_file_range` and falls back to read/write).
pub(crate) fn copy_contents(src: &File, dst: &File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let (mut r, mut w) = (src, dst);
    io::copy(&mut r, &mut w)?;
    Ok(())
}

/// Where xattrs are read or written: a path (the `l*` calls, never
/// following a final symlink) or an open descriptor.
#[derive(Clone, Copy)]
pub(crate) enum XattrAt<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

fn list_xattrs(at: XattrAt<'_>) -> io::Result<Vec<u8>> {
    for _ in 0..8 {
        let size = match at {
            XattrAt::Path(p) => rustix::fs::llistxattr_query(p)?,
            XattrAt::Fd(fd) => rustix::fs::flistxattr_query(fd)?,
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let got = match at {
            XattrAt::Path(p) => rustix::fs::llistxattr(p, &mut buf[..]),
            XattrAt::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // The list grew between the two calls; ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(rustix::io::Errno::RANGE.into())
}

fn get_xattr(at: XattrAt<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    for _ in 0..8 {
        let size = match at {
            XattrAt::Path(p) => rustix::fs::lgetxattr_query(p, name)?,
            XattrAt::Fd(fd) => rustix::fs::fgetxattr_query(fd, name)?,
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let got = match at {
            XattrAt::Path(p) => rustix::fs::lgetxattr(p, name, &mut buf[..]),
            XattrAt::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(rustix::io::Errno::RANGE.into())
}

fn set_xattr(at: XattrAt<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    match at {
        XattrAt::Path(p) => rustix::fs::lsetxattr(p, name, value, flags)?,
        XattrAt::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags)?,
    }
    Ok(())
}

/// Copy every xattr of `src` onto `dst`. `on_error` decides per failure
/// whether to go on (`Ok`) or stop with an error; it gets the attribute
/// name (`None` for the listing itself).
pub(crate) fn copy_xattrs(
    dst: XattrAt<'_>,
    src: XattrAt<'_>,
    mut on_error: impl FnMut(Option<&CStr>, io::Error) -> io::Result<Flow>,
) -> io::Result<()> {
    let names = match list_xattrs(src) {
        Ok(names) => names,
        Err(err) => {
            on_error(None, err)?;
            return Ok(());
        }
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = CString::new(name) else {
            continue;
        };
        let result = get_xattr(src, &name).and_then(|value| set_xattr(dst, &name, &value));
        let flow = match result {
            Ok(()) => Flow::Continue,
            Err(err) => on_error(Some(&name), err)?,
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
    Ok(())
}

/// What [`copy_xattrs`] does after a tolerated failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Remove `p` and everything beneath it without following symlinks
/// (`os.RemoveAll`); a missing `p` is fine. Directories are walked by
/// descriptor from an explicit stack, so depth costs heap, not stack.
pub(crate) fn remove_all(p: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.is_dir() {
        return match std::fs::remove_file(p) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = rustix::fs::openat(CWD, p, flags, Mode::empty())?;
    empty_dir(top)?;
    match std::fs::remove_dir(p) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Delete the contents of the open directory `top`. Only the directory
/// being emptied is open: the walk goes down by name and back up by `..`,
/// so a deep tree needs neither stack nor descriptors in proportion.
pub(crate) fn empty_dir(top: OwnedFd) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Names from `top` down to the directory being emptied.
    let mut names: Vec<CString> = Vec::new();
    let mut dir = rustix::fs::Dir::new(top)?;
    loop {
        match dir.read() {
            Some(entry) => {
                let entry = entry?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let name = name.to_owned();
                let fd = dir.fd()?;
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => {
                        match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                            Err(rustix::io::Errno::NOENT) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    _ => false,
                };
                if is_dir {
                    match rustix::fs::openat(fd, &name, flags, Mode::empty()) {
                        Ok(child) => {
                            dir = rustix::fs::Dir::new(child)?;
                            names.push(name);
                        }
                        Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    match rustix::fs::unlinkat(fd, &name, AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            None => {
                let Some(name) = names.pop() else {
                    return Ok(());
                };
                let parent = rustix::fs::openat(dir.fd()?, c"..", flags, Mode::empty())?;
                match rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                // A fresh descriptor reads the parent from its start again;
                // what was already handled is gone from it.
                dir = rustix::fs::Dir::new(parent)?;
            }
        }
    }
}

/// A path for the `l*xattr` calls that names `name` in an open directory
/// without a full path (symlinks and special files have no usable fd for
/// xattrs). Needs /proc.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_go() {
        assert_eq!(timestamp(-1), None);
        assert_eq!(timestamp(0), Some(Time { sec: 0, nsec: 0 }));
        assert_eq!(
            timestamp(1_500_000_000_123),
            Some(Time {
                sec: 1500,
                nsec: 123
            })
        );
        assert_eq!(
            timestamp(-5),
            Some(Time {
                sec: -1,
                nsec: 999_999_995
            })
        );
    }

    #[test]
    fn remove_all_does_not_follow_and_survives_depth() {
        let outside = crate::testutil::tempdir();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let t = crate::testutil::tempdir();
        let top = t.join("top");
        std::fs::create_dir(&top).unwrap();
        std::os::unix::fs::symlink(&*outside, top.join("link")).unwrap();
        // Deeper than a recursive walk would manage on a small stack.
        let mut fd =
            rustix::fs::open(&top, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        for _ in 0..3000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
                .unwrap();
        }
        drop(fd);
        remove_all(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
        // A symlink at the top is removed, not its target.
        std::os::unix::fs::symlink(&*outside, t.join("l")).unwrap();
        remove_all(&t.join("l")).unwrap();
        assert!(outside.join("keep").exists());
        remove_all(&t.join("missing")).unwrap();
    }
}
