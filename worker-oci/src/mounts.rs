//! Mounts on the host: the overlay an exec step runs on, bind and tmpfs
//! mounts, and the sweep that unmounts whatever is left beneath a
//! directory (run at start-up and after every exec so no mount outlives
//! its step). Blocking calls; run them on a blocking thread.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use thiserror::Error;

/// mount(2) copies at most one page of options, NUL included.
const MAX_OPTIONS: usize = 4095;

/// Options that make the upper dir hold plain files and directories only
/// (no redirects, no metadata-only copy-ups, no index), whatever the
/// kernel's defaults are, so it can be applied as a layer.
const PLAIN_UPPER_OPTIONS: &str = "redirect_dir=off,metacopy=off,index=off";

/// A failed mount operation.
#[derive(Debug, Error)]
pub enum MountError {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A path that overlayfs' option syntax cannot express.
    #[error("cannot use {} in overlay mount options: it contains {what}", path.display())]
    UnsafePath { path: PathBuf, what: &'static str },
    /// An overlay mount request that cannot be made.
    #[error("cannot mount overlay at {}: {reason}", target.display())]
    Overlay { target: PathBuf, reason: String },
    /// Mounts that survived repeated unmounting.
    #[error("mounts left under {} after unmounting: {}", dir.display(), show_paths(left))]
    StillMounted { dir: PathBuf, left: Vec<PathBuf> },
}

fn show_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn io_err(op: &'static str, path: &Path, err: impl Into<io::Error>) -> MountError {
    MountError::Io {
        op,
        path: path.to_path_buf(),
        source: err.into(),
    }
}

/// Mount overlayfs at `target`. `lowers[0]` is the topmost lower layer.
/// With `upper` (upper dir, work dir) the mount is writable; without, it is
/// a read-only union of the lowers.
///
/// The upper dir is asked to stay plain (`redirect_dir=off,metacopy=off,
/// index=off`) so [`crate::overlay::apply_upper`] can read it; a kernel
/// that rejects those options with EINVAL gets the mount without them.
pub fn mount_overlay(
    lowers: &[&Path],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), MountError> {
    let refuse = |reason: String| MountError::Overlay {
        target: target.to_path_buf(),
        reason,
    };
    if lowers.is_empty() {
        return Err(refuse("no lower directories".into()));
    }
    if upper.is_none() && lowers.len() < 2 {
        // The kernel's rule; one read-only dir is a read-only bind mount.
        return Err(refuse(
            "a read-only overlay needs at least two lower directories".into(),
        ));
    }
    let mut base = String::from("lowerdir=");
    for (i, lower) in lowers.iter().enumerate() {
        if i > 0 {
            base.push(':');
        }
        base.push_str(option_path(lower)?);
    }
    if let Some((upper, work)) = upper {
        base.push_str(",upperdir=");
        base.push_str(option_path(upper)?);
        base.push_str(",workdir=");
        base.push_str(option_path(work)?);
    }
    let with_plain = format!("{base},{PLAIN_UPPER_OPTIONS}");
    if with_plain.len() > MAX_OPTIONS {
        // Longer options would be cut short by the kernel.
        return Err(refuse(format!(
            "{} bytes of options, more than mount(2) takes",
            with_plain.len()
        )));
    }
    let flags = if upper.is_some() {
        MountFlags::empty()
    } else {
        MountFlags::RDONLY
    };
    let mount = |options: &str| {
        // No NUL in the options: option_path refuses it.
        let data = CString::new(options).map_err(|_| Errno::INVAL)?;
        rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str())
    };
    let mounted = match mount(&with_plain) {
        Err(Errno::INVAL) => {
            tracing::debug!(
                target = %target.display(),
                "overlay rejected {PLAIN_UPPER_OPTIONS}; mounting without them"
            );
            mount(&base)
        }
        other => other,
    };
    mounted.map_err(|e| io_err("mount overlay on", target, e))
}

/// A path as overlay options carry it: `,` separates options, `:`
/// separates lower dirs, and `\` escapes either, so none can appear.
fn option_path(path: &Path) -> Result<&str, MountError> {
    let unsafe_path = |what| MountError::UnsafePath {
        path: path.to_path_buf(),
        what,
    };
    let s = path
        .to_str()
        .ok_or_else(|| unsafe_path("bytes that are not UTF-8"))?;
    for (c, what) in [
        (',', "a comma"),
        (':', "a colon"),
        ('\\', "a backslash"),
        ('\0', "a NUL byte"),
    ] {
        if s.contains(c) {
            return Err(unsafe_path(what));
        }
    }
    if s.is_empty() {
        return Err(unsafe_path("nothing (it is empty)"));
    }
    Ok(s)
}

/// Bind `src` (with everything mounted beneath it) at `target`. A
/// read-only bind is made read-only on every mount it carries, keeping each
/// one's nosuid/nodev/noexec; if that fails the bind is undone.
pub fn bind_mount(src: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    rustix::mount::mount_bind_recursive(src, target)
        .map_err(|e| io_err("bind mount onto", target, e))?;
    if !readonly {
        return Ok(());
    }
    let result = remount_readonly(target).and_then(|()| {
        // Shallowest first. Mounts that were under `target` before the
        // bind covered them are listed too, though their paths now lead
        // into the bind: those are not mount points (EINVAL) or do not
        // exist (ENOENT) there.
        mounts_under(target)?
            .iter()
            .rev()
            .try_for_each(|mount| match remount_readonly(mount) {
                Err(err) if not_a_mount(&err) => Ok(()),
                other => other,
            })
    });
    if let Err(err) = result {
        if let Err(undo) = detach(target) {
            tracing::warn!(target = %target.display(), error = %undo, "undoing a failed read-only bind");
        }
        return Err(err);
    }
    Ok(())
}

fn not_a_mount(err: &MountError) -> bool {
    let MountError::Io { source, .. } = err else {
        return false;
    };
    [Errno::INVAL, Errno::NOENT]
        .iter()
        .any(|e| source.raw_os_error() == Some(e.raw_os_error()))
}

fn remount_readonly(path: &Path) -> Result<(), MountError> {
    let current = rustix::fs::statvfs(path).map_err(|e| io_err("statvfs", path, e))?;
    // A bind remount sets the per-mount flags to exactly what it is given.
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (have, keep) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if current.f_flag.contains(have) {
            flags |= keep;
        }
    }
    rustix::mount::mount_remount(path, flags, "").map_err(|e| io_err("remount read-only", path, e))
}

/// Mount a tmpfs at `target` with the given root directory `mode` and an
/// optional size limit; always nosuid and nodev.
pub fn mount_tmpfs(target: &Path, size_bytes: Option<u64>, mode: u32) -> Result<(), MountError> {
    let mut options = format!("mode={:o}", mode & 0o7777);
    if let Some(size) = size_bytes {
        options.push_str(&format!(",size={size}"));
    }
    let data = CString::new(options).map_err(|e| io_err("mount tmpfs on", target, e))?;
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| io_err("mount tmpfs on", target, e))
}

/// Unmount `target`; lazily (MNT_DETACH) if it is busy. Not being a mount
/// point, or not existing, is success.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    unmount_one(target).map(|_| ())
}

/// Whether something was unmounted.
fn unmount_one(target: &Path) -> Result<bool, MountError> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(Errno::BUSY) => {
            tracing::debug!(target = %target.display(), "busy; detaching");
            detach(target)
        }
        Err(e) => Err(io_err("unmount", target, e)),
    }
}

fn detach(target: &Path) -> Result<bool, MountError> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(e) => Err(io_err("detach", target, e)),
    }
}

/// Every mount point at or beneath `dir` (by path components), deepest
/// first, from `/proc/thread-self/mountinfo`. A path mounted over several times
/// appears once per mount.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    // mountinfo shows resolved paths; compare like with like.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    // The calling thread's view: a thread may have its own mount namespace.
    let info_path = Path::new("/proc/thread-self/mountinfo");
    let info = std::fs::read(info_path).map_err(|e| io_err("read", info_path, e))?;
    let mut found: Vec<PathBuf> = info
        .split(|&b| b == b'\n')
        .filter_map(mount_point)
        .filter(|p| p.starts_with(&dir))
        .collect();
    // Later mounts sit on top of earlier ones at the same depth.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// The mount point (fifth field) of one mountinfo line, with the kernel's
/// octal escapes (`\040` and the like) decoded.
fn mount_point(line: &[u8]) -> Option<PathBuf> {
    let field = line
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(4)?;
    let decoded = unescape_octal(field);
    Some(PathBuf::from(OsStr::from_bytes(&decoded)))
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let escaped = match field[i] {
            b'\\' => field.get(i + 1..i + 4).and_then(octal_byte),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |acc, &d| {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        acc.checked_mul(8)?.checked_add(d - b'0')
    })
}

/// Unmount everything [`mounts_under`] reports for `dir`, deepest first
/// (detaching what is busy), until nothing is left; returns how many
/// mounts went away. Fails if mounts remain after a few rounds (mount
/// propagation can bring new ones in while we work).
pub fn unmount_all_under(dir: &Path) -> Result<usize, MountError> {
    const ROUNDS: usize = 4;
    let mut count = 0;
    for _ in 0..ROUNDS {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(count);
        }
        for mount in &mounts {
            if unmount_one(mount)? {
                count += 1;
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(count)
    } else {
        Err(MountError::StillMounted {
            dir: dir.to_path_buf(),
            left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Unmounts everything under a test's directory, even when the test
    /// panics.
    struct Sweep(PathBuf);

    impl Drop for Sweep {
        fn drop(&mut self) {
            let _ = unmount_all_under(&self.0);
        }
    }

    fn setup() -> (tempfile::TempDir, Sweep) {
        let t = tempfile::tempdir().unwrap();
        let sweep = Sweep(fs::canonicalize(t.path()).unwrap());
        (t, sweep)
    }

    fn mkdirs(root: &Path, names: &[&str]) {
        for n in names {
            fs::create_dir_all(root.join(n)).unwrap();
        }
    }

    #[test]
    fn parses_mountinfo_lines() {
        let line = br"36 35 98:0 /mnt1 /mnt/with\040space\011tab\012nl\134bs rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            mount_point(line).unwrap(),
            PathBuf::from("/mnt/with space\ttab\nnl\\bs")
        );
        let plain = b"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw";
        assert_eq!(mount_point(plain).unwrap(), PathBuf::from("/proc"));
        // Not an escape: kept as written.
        assert_eq!(unescape_octal(br"a\9b\04"), br"a\9b\04".to_vec());
        assert_eq!(unescape_octal(br"\400"), br"\400".to_vec());
        assert_eq!(mount_point(b""), None);
        assert_eq!(mount_point(b"1 2 3:4 /"), None);
    }

    #[test]
    fn overlay_with_two_lowers_and_upper() {
        let (t, _sweep) = setup();
        let root = t.path();
        mkdirs(root, &["l1", "l2", "up", "work", "merged"]);
        fs::write(root.join("l1/top"), "l1").unwrap();
        fs::write(root.join("l1/both"), "from l1").unwrap();
        fs::write(root.join("l2/both"), "from l2").unwrap();
        fs::write(root.join("l2/bottom"), "l2").unwrap();
        let merged = root.join("merged");
        mount_overlay(
            &[&root.join("l1"), &root.join("l2")],
            Some((&root.join("up"), &root.join("work"))),
            &merged,
        )
        .unwrap();
        let read = |n: &str| fs::read_to_string(merged.join(n)).unwrap();
        let result = std::panic::catch_unwind(|| {
            assert_eq!(read("both"), "from l1");
            assert_eq!(read("bottom"), "l2");
            fs::write(merged.join("new"), "new").unwrap();
            fs::write(merged.join("bottom"), "changed").unwrap();
        });
        unmount(&merged).unwrap();
        result.unwrap();
        assert_eq!(fs::read_to_string(root.join("up/new")).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(root.join("up/bottom")).unwrap(),
            "changed"
        );
        assert_eq!(fs::read_to_string(root.join("l2/bottom")).unwrap(), "l2");
        assert!(mounts_under(root).unwrap().is_empty());
    }

    #[test]
    fn readonly_overlay_without_upper() {
        let (t, _sweep) = setup();
        let root = t.path();
        mkdirs(root, &["l1", "l2", "merged"]);
        fs::write(root.join("l2/f"), "x").unwrap();
        let merged = root.join("merged");
        mount_overlay(&[&root.join("l1"), &root.join("l2")], None, &merged).unwrap();
        let write = fs::write(merged.join("g"), "y");
        let read = fs::read_to_string(merged.join("f"));
        unmount(&merged).unwrap();
        assert_eq!(write.unwrap_err().raw_os_error(), Some(libc_erofs()));
        assert_eq!(read.unwrap(), "x");
    }

    fn libc_erofs() -> i32 {
        Errno::ROFS.raw_os_error()
    }

    #[test]
    fn overlay_refuses_option_syntax_in_paths() {
        let (t, _sweep) = setup();
        let root = t.path();
        for bad in ["a,b", "a:b", "a\\b"] {
            let lower = root.join(bad);
            let as_lower = mount_overlay(&[root, &lower], None, root).unwrap_err();
            let as_upper = mount_overlay(&[root], Some((&lower, root)), root).unwrap_err();
            for err in [as_lower, as_upper] {
                assert!(matches!(err, MountError::UnsafePath { .. }), "{err}");
                assert!(err.to_string().contains(bad), "{err}");
            }
        }
        assert!(mount_overlay(&[], None, root).is_err());
        let one = mount_overlay(&[root], None, root).unwrap_err();
        assert!(one.to_string().contains("two lower"), "{one}");
        let long = root.join("x".repeat(250));
        let many: Vec<&Path> = std::iter::repeat_n(long.as_path(), 20).collect();
        let too_long = mount_overlay(&many, None, root).unwrap_err();
        assert!(
            too_long.to_string().contains("bytes of options"),
            "{too_long}"
        );
    }

    #[test]
    fn readonly_bind_refuses_writes() {
        let (t, _sweep) = setup();
        let root = t.path();
        mkdirs(root, &["src/sub", "ro", "rw"]);
        // A mount inside the source comes along and is read-only too.
        mount_tmpfs(&root.join("src/sub"), None, 0o755).unwrap();
        bind_mount(&root.join("src"), &root.join("ro"), true).unwrap();
        bind_mount(&root.join("src"), &root.join("rw"), false).unwrap();
        let erofs = Some(libc_erofs());
        let top = fs::write(root.join("ro/f"), "x");
        let sub = fs::write(root.join("ro/sub/f"), "x");
        let rw = fs::write(root.join("rw/f"), "x");
        let rw_sub = fs::write(root.join("rw/sub/g"), "x");
        let n = unmount_all_under(root).unwrap();
        assert_eq!(top.unwrap_err().raw_os_error(), erofs);
        assert_eq!(sub.unwrap_err().raw_os_error(), erofs);
        rw.unwrap();
        rw_sub.unwrap();
        // src/sub, ro, ro/sub, rw, rw/sub
        assert_eq!(n, 5);
        assert_eq!(fs::read_to_string(root.join("src/f")).unwrap(), "x");
        // The source itself stayed writable.
        fs::write(root.join("src/h"), "x").unwrap();
    }

    #[test]
    fn tmpfs_with_size_and_mode() {
        let (t, _sweep) = setup();
        let target = t.path().join("tmp");
        fs::create_dir(&target).unwrap();
        mount_tmpfs(&target, Some(1 << 20), 0o1777).unwrap();
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        let vfs = rustix::fs::statvfs(&target).unwrap();
        let too_big = fs::write(target.join("big"), vec![0u8; 2 << 20]);
        unmount(&target).unwrap();
        assert_eq!(mode & 0o7777, 0o1777);
        assert_eq!(vfs.f_blocks * vfs.f_frsize, 1 << 20);
        assert_eq!(
            too_big.unwrap_err().raw_os_error(),
            Some(Errno::NOSPC.raw_os_error())
        );
    }

    #[test]
    fn unmount_tolerates_non_mounts() {
        let (t, _sweep) = setup();
        unmount(t.path()).unwrap();
        unmount(&t.path().join("missing")).unwrap();
    }

    #[test]
    fn unmount_detaches_busy_mounts() {
        let (t, _sweep) = setup();
        let target = t.path().join("busy");
        fs::create_dir(&target).unwrap();
        mount_tmpfs(&target, None, 0o755).unwrap();
        fs::write(target.join("f"), "x").unwrap();
        let open = fs::File::open(target.join("f")).unwrap();
        let plain = rustix::mount::unmount(&target, UnmountFlags::empty());
        unmount(&target).unwrap();
        let left = mounts_under(t.path()).unwrap();
        drop(open);
        assert_eq!(plain, Err(Errno::BUSY));
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn mounts_under_is_by_component_and_deepest_first() {
        let (t, _sweep) = setup();
        let root = fs::canonicalize(t.path()).unwrap();
        mkdirs(&root, &["a/b", "a/bc", "x y"]);
        for dir in ["a/b", "a/bc", "x y"] {
            mount_tmpfs(&root.join(dir), None, 0o755).unwrap();
        }
        fs::create_dir_all(root.join("a/b/c/d")).unwrap();
        mount_tmpfs(&root.join("a/b/c/d"), None, 0o755).unwrap();
        // Twice at the same place.
        mount_tmpfs(&root.join("x y"), None, 0o755).unwrap();

        let under_b = mounts_under(&root.join("a/b")).unwrap();
        let all = mounts_under(&root).unwrap();
        let spaced = mounts_under(&root.join("x y")).unwrap();
        let removed = unmount_all_under(&root).unwrap();
        let left = mounts_under(&root).unwrap();

        assert_eq!(under_b, vec![root.join("a/b/c/d"), root.join("a/b")]);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], root.join("a/b/c/d"));
        assert!(all.contains(&root.join("a/bc")));
        assert_eq!(spaced, vec![root.join("x y"), root.join("x y")]);
        assert_eq!(removed, 5);
        assert!(left.is_empty(), "{left:?}");
    }
}
