//! `apply_upper` and `diff_trees` on real trees (run as root: whiteouts are
//! device nodes and overlay bookkeeping lives in `trusted.*` xattrs), and a
//! round trip through a real overlayfs mount.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use bk_fileops::link_tree;
use bk_worker_oci::mounts::{mount_overlay, unmount_all_under};
use bk_worker_oci::overlay::{
    OverlayError, apply_upper, diff_trees, is_opaque, is_whiteout, is_whiteout_path,
};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps};

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for d in ["lower", "upper", "work", "merged"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        Dirs { _tmp: tmp, root }
    }
    fn lower(&self) -> PathBuf {
        self.root.join("lower")
    }
    fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
    fn result(&self) -> PathBuf {
        self.root.join("result")
    }
    /// `link_tree(lower)` then `apply_upper(upper)`.
    fn apply(&self) -> Result<(), OverlayError> {
        link_tree(&self.lower(), &self.result()).unwrap();
        apply_upper(&self.upper(), &self.result())
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = unmount_all_under(&self.root);
    }
}

fn write(p: impl AsRef<Path>, content: &str) {
    let p = p.as_ref();
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, content).unwrap();
}

fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p).unwrap()
}

fn mkdir(p: impl AsRef<Path>) {
    fs::create_dir_all(p).unwrap();
}

fn whiteout(p: impl AsRef<Path>) {
    rustix::fs::mknodat(CWD, p.as_ref(), FileType::CharacterDevice, Mode::empty(), 0).unwrap();
}

fn set_xattr(p: impl AsRef<Path>, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p.as_ref(), name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        let m = rustix::fs::lgetxattr(p, name.as_str(), &mut value[..]).unwrap();
        value.truncate(m);
        out.insert(name, value);
    }
    out
}

fn set_mtime(p: impl AsRef<Path>, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p.as_ref(), &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn mtime(p: impl AsRef<Path>) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn mode(p: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn exists(p: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Everything about a tree that a snapshot must preserve: per path, its
/// type, mode, owner, mtime, size (not for directories), symlink target or
/// contents, and xattrs. Not atimes, link counts or inode numbers.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                todo.push(rel.join(n));
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link {:?} size {}", fs::read_link(&p).unwrap(), m.size())
        } else if ft.is_file() {
            format!("file {:?}", read(&p))
        } else {
            format!("special {:o} rdev {}", m.mode() & 0o170000, m.rdev())
        };
        let line = format!(
            "{what} mode {:o} owner {}:{} mtime {}.{:09} xattrs {:?}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            xattrs(&p),
        );
        out.insert(format!("/{}", rel.display()), line);
    }
    out
}

fn assert_no_overlay_xattrs(root: &Path) {
    for (path, line) in listing(root) {
        assert!(!line.contains("trusted.overlay."), "{path}: {line}");
    }
}

#[test]
fn files_added_changed_and_removed() {
    let d = Dirs::new();
    write(d.lower().join("keep"), "keep");
    write(d.lower().join("change"), "old");
    write(d.lower().join("gone"), "gone");
    write(d.lower().join("sub/keep"), "sub keep");
    write(d.lower().join("sub/gone"), "sub gone");
    write(d.upper().join("change"), "new");
    write(d.upper().join("added"), "added");
    whiteout(d.upper().join("gone"));
    whiteout(d.upper().join("never-existed"));
    write(d.upper().join("sub/added"), "sub added");
    whiteout(d.upper().join("sub/gone"));

    d.apply().unwrap();
    let r = d.result();
    assert_eq!(read(r.join("keep")), "keep");
    assert_eq!(read(r.join("change")), "new");
    assert_eq!(read(r.join("added")), "added");
    assert_eq!(read(r.join("sub/keep")), "sub keep");
    assert_eq!(read(r.join("sub/added")), "sub added");
    assert!(!exists(r.join("gone")));
    assert!(!exists(r.join("sub/gone")));
    assert!(!exists(r.join("never-existed")));
    // The lower tree is untouched.
    assert_eq!(read(d.lower().join("change")), "old");
    assert_eq!(read(d.lower().join("gone")), "gone");
    // Unchanged files are still the lower's.
    let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(r.join("keep")), ino(d.lower().join("keep")));
}

#[test]
fn dir_replaced_by_file_and_file_by_dir() {
    let d = Dirs::new();
    write(d.lower().join("was-dir/deep/x"), "x");
    write(d.lower().join("was-file"), "file");
    write(d.upper().join("was-dir"), "now a file");
    write(d.upper().join("was-file/inner"), "now a dir");
    // A whiteout inside a dir that replaces a file hides nothing; dropped.
    whiteout(d.upper().join("was-file/hidden"));

    d.apply().unwrap();
    let r = d.result();
    assert_eq!(read(r.join("was-dir")), "now a file");
    assert_eq!(read(r.join("was-file/inner")), "now a dir");
    assert!(!exists(r.join("was-file/hidden")));
    assert_eq!(read(d.lower().join("was-dir/deep/x")), "x");
}

#[test]
fn opaque_dir_replaces_the_target_dir() {
    let d = Dirs::new();
    write(d.lower().join("o/old"), "old");
    write(d.lower().join("o/sub/old"), "old");
    write(d.lower().join("o/same"), "lower");
    write(d.upper().join("o/same"), "upper");
    mkdir(d.upper().join("o/sub"));
    whiteout(d.upper().join("o/sub/old"));
    set_xattr(d.upper().join("o"), "trusted.overlay.opaque", b"y");
    // Not opaque: "x" only says the dir may hold xattr whiteouts.
    write(d.lower().join("x/old"), "old");
    write(d.upper().join("x/new"), "new");
    set_xattr(d.upper().join("x"), "trusted.overlay.opaque", b"x");
    assert!(is_opaque(&d.upper().join("o")).unwrap());
    assert!(!is_opaque(&d.upper().join("x")).unwrap());

    d.apply().unwrap();
    let r = d.result();
    let mut names: Vec<_> = fs::read_dir(r.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["same", "sub"]);
    assert_eq!(read(r.join("o/same")), "upper");
    assert_eq!(fs::read_dir(r.join("o/sub")).unwrap().count(), 0);
    assert_eq!(read(r.join("x/old")), "old");
    assert_eq!(read(r.join("x/new")), "new");
    assert_no_overlay_xattrs(&r);
}

#[test]
fn whiteouts_remove_whole_dirs_and_come_in_both_forms() {
    let d = Dirs::new();
    write(d.lower().join("tree/a/b/c"), "c");
    write(d.lower().join("xw"), "removed by an xattr whiteout");
    write(d.lower().join("empty-but-not-whiteout"), "replaced");
    whiteout(d.upper().join("tree"));
    write(d.upper().join("xw"), "");
    set_xattr(d.upper().join("xw"), "trusted.overlay.whiteout", b"");
    // The xattr form is an empty file; with content it is a file.
    write(d.upper().join("empty-but-not-whiteout"), "data");
    set_xattr(
        d.upper().join("empty-but-not-whiteout"),
        "trusted.overlay.whiteout",
        b"",
    );
    assert!(is_whiteout(
        &fs::symlink_metadata(d.upper().join("tree")).unwrap()
    ));
    assert!(is_whiteout_path(&d.upper().join("xw")).unwrap());
    assert!(!is_whiteout_path(&d.upper().join("empty-but-not-whiteout")).unwrap());

    d.apply().unwrap();
    let r = d.result();
    assert!(!exists(r.join("tree")));
    assert!(!exists(r.join("xw")));
    assert_eq!(read(r.join("empty-but-not-whiteout")), "data");
    assert_no_overlay_xattrs(&r);
}

#[test]
fn directory_metadata_follows_the_upper() {
    let d = Dirs::new();
    write(d.lower().join("a/b/c/file"), "old");
    write(d.lower().join("a/b/other"), "other");
    set_xattr(d.lower().join("a/b"), "user.lower-only", b"1");
    set_xattr(d.lower().join("a"), "user.kept", b"1");
    set_mtime(d.lower().join("a/b/c"), 1000, 1);
    set_mtime(d.lower().join("a/b"), 1000, 2);
    set_mtime(d.lower().join("a"), 1000, 3);

    write(d.upper().join("a/b/c/file"), "new");
    write(d.upper().join("a/b/c/added"), "added");
    mkdir(d.upper().join("a/b/new/inner"));
    whiteout(d.upper().join("a/b/new/inner/dropped"));
    set_xattr(d.upper().join("a"), "user.kept", b"1");
    set_xattr(d.upper().join("a/b"), "user.upper", b"2");
    fs::set_permissions(d.upper().join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    rustix::fs::chownat(
        CWD,
        d.upper().join("a/b/c"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
        AtFlags::empty(),
    )
    .unwrap();
    set_mtime(d.upper().join("a/b/new/inner"), 3000, 1);
    set_mtime(d.upper().join("a/b/new"), 3000, 2);
    set_mtime(d.upper().join("a/b/c"), 2000, 1);
    set_mtime(d.upper().join("a/b"), 2000, 2);
    set_mtime(d.upper().join("a"), 2000, 3);
    fs::set_permissions(d.upper(), fs::Permissions::from_mode(0o755)).unwrap();
    set_mtime(d.upper(), 2000, 4);

    d.apply().unwrap();
    let r = d.result();
    assert_eq!(mtime(r.join("a")), (2000, 3));
    assert_eq!(mtime(r.join("a/b")), (2000, 2));
    assert_eq!(mtime(r.join("a/b/c")), (2000, 1));
    assert_eq!(mtime(r.join("a/b/new")), (3000, 2));
    // Dropping the whiteout inside did not touch it either.
    assert_eq!(mtime(r.join("a/b/new/inner")), (3000, 1));
    assert!(!exists(r.join("a/b/new/inner/dropped")));
    assert_eq!(mtime(&r), (2000, 4));
    assert_eq!(mode(&r), 0o755);
    assert_eq!(mode(r.join("a/b")), 0o750);
    let c = fs::metadata(r.join("a/b/c")).unwrap();
    assert_eq!((c.uid(), c.gid()), (1234, 5678));
    let b_x = xattrs(&r.join("a/b"));
    assert_eq!(b_x.keys().collect::<Vec<_>>(), ["user.upper"]);
    assert_eq!(
        xattrs(&r.join("a")).keys().collect::<Vec<_>>(),
        ["user.kept"]
    );
    assert_eq!(read(r.join("a/b/other")), "other");
    // The lower's directories keep theirs.
    assert_eq!(mtime(d.lower().join("a/b")), (1000, 2));
    assert!(xattrs(&d.lower().join("a/b")).contains_key("user.lower-only"));
}

#[test]
fn symlinks_are_replaced_never_followed() {
    let d = Dirs::new();
    let outside = d.root.join("outside");
    write(outside.join("victim"), "safe");
    // Target has `a -> outside`; upper has a real dir `a` with a file.
    symlink(&outside, d.lower().join("a")).unwrap();
    write(d.upper().join("a/x"), "x");
    // Target has `w -> outside`; upper has dir `w` whose whiteout names
    // a file that exists in outside.
    symlink(&outside, d.lower().join("w")).unwrap();
    mkdir(d.upper().join("w"));
    whiteout(d.upper().join("w/victim"));
    // Target has `del -> outside`; upper deletes it.
    symlink(&outside, d.lower().join("del")).unwrap();
    whiteout(d.upper().join("del"));
    // Target has a real dir; upper puts a symlink named like it.
    write(d.lower().join("real/file"), "real");
    symlink(&outside, d.upper().join("real")).unwrap();
    // A symlink in upper named like a dir whose content upper also has
    // is just a symlink; nothing goes through it.
    symlink("/etc", d.upper().join("etc-link")).unwrap();

    d.apply().unwrap();
    let r = d.result();
    let a = fs::symlink_metadata(r.join("a")).unwrap();
    assert!(a.is_dir());
    assert_eq!(read(r.join("a/x")), "x");
    assert!(fs::symlink_metadata(r.join("w")).unwrap().is_dir());
    assert!(!exists(r.join("del")));
    assert!(fs::symlink_metadata(r.join("real")).unwrap().is_symlink());
    assert_eq!(fs::read_link(r.join("real")).unwrap(), outside);
    assert_eq!(
        fs::read_link(r.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    // Nothing written through any of them.
    assert_eq!(read(outside.join("victim")), "safe");
    let mut names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["victim"]);
    assert_eq!(read(d.lower().join("real/file")), "real");
}

#[test]
fn overlay_xattrs_are_stripped_and_others_kept() {
    let d = Dirs::new();
    write(d.lower().join("merged/f"), "f");
    write(d.upper().join("merged/f"), "f2");
    set_xattr(d.upper().join("merged"), "trusted.overlay.impure", b"y");
    set_xattr(
        d.upper().join("merged/f"),
        "trusted.overlay.origin",
        b"\x00\x01",
    );
    set_xattr(
        d.upper().join("merged/f"),
        "trusted.overlay.overlay.escaped",
        b"1",
    );
    set_xattr(d.upper().join("merged/f"), "user.keep", b"k");
    write(d.upper().join("new/deeper/g"), "g");
    set_xattr(d.upper().join("new"), "trusted.overlay.opaque", b"y");
    set_xattr(d.upper().join("new/deeper"), "trusted.overlay.impure", b"y");
    set_xattr(
        d.upper().join("new/deeper/g"),
        "trusted.overlay.origin",
        b"\x02",
    );
    set_xattr(d.upper().join("new/deeper/g"), "trusted.other", b"kept");
    symlink("target", d.upper().join("link")).unwrap();
    set_xattr(d.upper().join("link"), "trusted.overlay.origin", b"\x03");
    set_xattr(d.upper(), "trusted.overlay.uuid", b"0123456789abcdef");

    d.apply().unwrap();
    let r = d.result();
    assert_no_overlay_xattrs(&r);
    assert_eq!(xattrs(&r.join("merged/f"))["user.keep"], b"k");
    assert_eq!(xattrs(&r.join("new/deeper/g"))["trusted.other"], b"kept");
    assert_eq!(read(r.join("new/deeper/g")), "g");
    assert_eq!(fs::read_link(r.join("link")).unwrap(), Path::new("target"));
}

#[test]
fn hard_links_in_upper_stay_links() {
    let d = Dirs::new();
    write(d.lower().join("dir/old"), "old");
    write(d.upper().join("one"), "shared");
    fs::hard_link(d.upper().join("one"), d.upper().join("two")).unwrap();
    mkdir(d.upper().join("dir"));
    fs::hard_link(d.upper().join("one"), d.upper().join("dir/three")).unwrap();
    mkdir(d.upper().join("newdir"));
    fs::hard_link(d.upper().join("one"), d.upper().join("newdir/four")).unwrap();

    d.apply().unwrap();
    let r = d.result();
    let ino = |p: &str| fs::metadata(r.join(p)).unwrap().ino();
    assert_eq!(ino("one"), ino("two"));
    assert_eq!(ino("one"), ino("dir/three"));
    assert_eq!(ino("one"), ino("newdir/four"));
    assert_eq!(read(r.join("dir/old")), "old");
}

#[test]
fn redirect_and_metacopy_are_refused() {
    for xattr in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let d = Dirs::new();
        write(d.lower().join("d/f"), "f");
        write(d.upper().join("d/f"), "");
        let on = if xattr.ends_with("redirect") {
            "d"
        } else {
            "d/f"
        };
        set_xattr(d.upper().join(on), xattr, b"/elsewhere");
        let err = d.apply().unwrap_err();
        assert!(
            matches!(err, OverlayError::Unsupported { ref path, .. } if path.ends_with(on)),
            "{err}"
        );
    }
}

/// Directories `depth` levels deep named `d`, built by descriptor since
/// the path is longer than PATH_MAX.
fn deep_dirs(root: &Path, depth: usize, file: Option<&str>) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        match rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => panic!("mkdir: {e}"),
        }
        fd = rustix::fs::openat(&fd, "d", flags, Mode::empty()).unwrap();
    }
    if let Some(name) = file {
        let f = rustix::fs::openat(
            &fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
    }
}

fn deep_has(root: &Path, depth: usize, name: &str) -> bool {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        fd = rustix::fs::openat(&fd, "d", flags, Mode::empty()).unwrap();
    }
    rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

#[test]
fn deep_trees_need_no_deep_stack() {
    const DEPTH: usize = 2000;
    let d = Dirs::new();
    deep_dirs(&d.lower(), DEPTH, Some("lower"));
    deep_dirs(&d.upper(), DEPTH, Some("upper"));
    mkdir(d.upper().join("new"));
    deep_dirs(&d.upper().join("new"), DEPTH, Some("new"));
    // On a small stack, as a recursive walk could not manage.
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            d.apply().unwrap();
            d
        })
        .unwrap()
        .join()
        .unwrap();
    let r = result.result();
    assert!(deep_has(&r, DEPTH, "lower"));
    assert!(deep_has(&r, DEPTH, "upper"));
    assert!(deep_has(&r.join("new"), DEPTH, "new"));
}

#[test]
fn real_overlay_round_trip() {
    let d = Dirs::new();
    let lower = d.lower();
    write(lower.join("keep"), "keep");
    write(lower.join("modify"), "before");
    write(lower.join("delete"), "delete");
    write(lower.join("dir/inner/a"), "a");
    write(lower.join("dir/inner/b"), "b");
    write(lower.join("dir/other"), "other");
    write(lower.join("recreate/x/y"), "y");
    write(lower.join("recreate/z"), "z");
    write(lower.join("chmod-me/f"), "f");
    write(lower.join("untouched/deep/file"), "file");
    symlink("keep", lower.join("link")).unwrap();
    set_xattr(lower.join("dir"), "user.dir", b"1");
    set_mtime(lower.join("untouched/deep"), 100, 5);
    // The merged root is the upper dir: give it the lower root's mode.
    fs::set_permissions(d.upper(), fs::Permissions::from_mode(mode(&lower))).unwrap();

    let (upper, work, merged) = (d.upper(), d.root.join("work"), d.root.join("merged"));
    mount_overlay(&[&lower], Some((&upper, &work)), &merged).unwrap();
    let m = |p: &str| merged.join(p);
    write(m("created"), "created");
    write(m("dir/inner/new"), "new");
    write(m("modify"), "after");
    fs::remove_file(m("delete")).unwrap();
    fs::remove_file(m("dir/inner/a")).unwrap();
    fs::remove_dir_all(m("recreate")).unwrap();
    mkdir(m("recreate"));
    fs::set_permissions(m("chmod-me"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(m("created"), m("dir/created-link")).unwrap();
    fs::hard_link(m("keep"), m("keep-link")).unwrap();
    fs::remove_file(m("link")).unwrap();
    symlink("modify", m("link")).unwrap();
    set_xattr(m("dir/other"), "user.added", b"yes");
    let expected = listing(&merged);
    assert_eq!(unmount_all_under(&d.root).unwrap(), 1);

    // What the kernel wrote, for the record of what apply_upper must read.
    assert!(is_opaque(&upper.join("recreate")).unwrap());
    assert!(is_whiteout(
        &fs::symlink_metadata(upper.join("delete")).unwrap()
    ));
    assert!(is_whiteout(
        &fs::symlink_metadata(upper.join("dir/inner/a")).unwrap()
    ));

    d.apply().unwrap();
    let got = listing(&d.result());
    for key in expected.keys().chain(got.keys()) {
        assert_eq!(expected.get(key), got.get(key), "{key}");
    }
    assert_no_overlay_xattrs(&d.result());
    let ino = |p: &str| fs::metadata(d.result().join(p)).unwrap().ino();
    assert_eq!(ino("created"), ino("dir/created-link"));
    assert_eq!(ino("keep"), ino("keep-link"));
    assert_eq!(read(lower.join("modify")), "before");
}

/// Entries directly in a diff, as (path, "whiteout" | "dir" | "file" ...).
fn diff_entries(out: &Path) -> BTreeMap<String, &'static str> {
    let mut entries = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(out.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).unwrap();
            let kind = if is_whiteout(&m) {
                "whiteout"
            } else if m.is_dir() {
                todo.push(rel.clone());
                "dir"
            } else if m.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            entries.insert(rel.display().to_string(), kind);
        }
    }
    entries
}

#[test]
fn diff_trees_round_trip() {
    let d = Dirs::new();
    let lower = d.lower();
    write(lower.join("same"), "same");
    write(lower.join("copied-same"), "copied");
    write(lower.join("touched"), "touched");
    write(lower.join("changed"), "old");
    write(lower.join("removed"), "removed");
    write(lower.join("dir/keep"), "keep");
    write(lower.join("dir/sub/removed"), "r");
    write(lower.join("gone-dir/a/b"), "b");
    write(lower.join("dir-to-file/x"), "x");
    write(lower.join("file-to-dir"), "file");
    write(lower.join("quiet/a/b"), "b");
    write(lower.join("coarse"), "aaaa");
    mkdir(lower.join("chmod"));
    symlink("same", lower.join("link")).unwrap();
    set_mtime(lower.join("copied-same"), 500, 7);
    set_mtime(lower.join("coarse"), 500, 0);

    let up = d.root.join("upper-tree");
    link_tree(&lower, &up).unwrap();
    // Same metadata on a different inode: unchanged.
    fs::remove_file(up.join("copied-same")).unwrap();
    write(up.join("copied-same"), "copied");
    set_mtime(up.join("copied-same"), 500, 7);
    // Same size and whole-second mtime, different bytes: changed.
    fs::remove_file(up.join("coarse")).unwrap();
    write(up.join("coarse"), "bbbb");
    set_mtime(up.join("coarse"), 500, 0);
    // link_tree shares files: give changed ones inodes of their own.
    fs::remove_file(up.join("touched")).unwrap();
    write(up.join("touched"), "touched");
    set_mtime(up.join("touched"), 600, 1);
    fs::remove_file(up.join("changed")).unwrap();
    write(up.join("changed"), "new");
    fs::remove_file(up.join("removed")).unwrap();
    fs::remove_file(up.join("dir/sub/removed")).unwrap();
    write(up.join("dir/added"), "added");
    fs::remove_dir_all(up.join("gone-dir")).unwrap();
    fs::remove_dir_all(up.join("dir-to-file")).unwrap();
    write(up.join("dir-to-file"), "now file");
    fs::remove_file(up.join("file-to-dir")).unwrap();
    write(up.join("file-to-dir/inside/deep"), "now dir");
    fs::hard_link(
        up.join("file-to-dir/inside/deep"),
        up.join("dir/link-to-deep"),
    )
    .unwrap();
    fs::set_permissions(up.join("chmod"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::remove_file(up.join("link")).unwrap();
    symlink("changed", up.join("link")).unwrap();
    fs::remove_file(up.join("same")).unwrap();
    write(up.join("same"), "same");
    let (sec, nsec) = mtime(lower.join("same"));
    set_mtime(up.join("same"), sec, nsec);
    set_xattr(up.join("same"), "user.x", b"1");
    write(up.join("new-dir/f"), "f");

    let out = d.root.join("out");
    mkdir(&out);
    diff_trees(&lower, &up, &out).unwrap();

    let entries = diff_entries(&out);
    let expect: BTreeMap<String, &str> = [
        ("same", "file"),
        ("touched", "file"),
        ("changed", "file"),
        ("coarse", "file"),
        ("removed", "whiteout"),
        ("dir", "dir"),
        ("dir/added", "file"),
        ("dir/link-to-deep", "file"),
        ("dir/sub", "dir"),
        ("dir/sub/removed", "whiteout"),
        ("gone-dir", "whiteout"),
        ("dir-to-file", "file"),
        ("file-to-dir", "dir"),
        ("file-to-dir/inside", "dir"),
        ("file-to-dir/inside/deep", "file"),
        ("chmod", "dir"),
        ("link", "symlink"),
        ("new-dir", "dir"),
        ("new-dir/f", "file"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(entries, expect);
    // Files are the upper tree's, not copies.
    let ino = |p: PathBuf| fs::symlink_metadata(p).unwrap().ino();
    assert_eq!(ino(out.join("changed")), ino(up.join("changed")));

    let expected = listing(&up);
    link_tree(&lower, &d.result()).unwrap();
    apply_upper(&out, &d.result()).unwrap();
    let got = listing(&d.result());
    for key in expected.keys().chain(got.keys()) {
        assert_eq!(expected.get(key), got.get(key), "{key}");
    }
    let ino = |p: &str| fs::metadata(d.result().join(p)).unwrap().ino();
    assert_eq!(ino("file-to-dir/inside/deep"), ino("dir/link-to-deep"));
}

#[test]
fn diff_needs_an_empty_output() {
    let d = Dirs::new();
    write(d.upper().join("x"), "x");
    let err = diff_trees(&d.lower(), &d.upper(), &d.upper()).unwrap_err();
    assert!(matches!(err, OverlayError::NotEmpty { .. }), "{err}");
}

#[test]
fn diff_refuses_a_device_that_looks_like_a_whiteout() {
    let d = Dirs::new();
    whiteout(d.upper().join("dev"));
    let out = d.root.join("out");
    mkdir(&out);
    let err = diff_trees(&d.lower(), &d.upper(), &out).unwrap_err();
    assert!(matches!(err, OverlayError::Unrepresentable { .. }), "{err}");
}
