//! Trees built to make the daemon (root) touch things outside them:
//! symlinks to `/`, to `../..`, to absolute host paths, `..` in action
//! paths, special files. Each test keeps a sentinel directory beside the
//! roots and checks it is untouched.

mod common;

use std::path::Path;

use bk_fileops as fo;
use bk_proto::pb::{FileActionMkDir, FileActionMkFile, FileActionRm, FileActionSymlink};
use common::*;

/// A directory outside every root, with one file in it.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Sentinel {
        let dir = tmp();
        write(dir.path(), "keep", "original", 0o644);
        Sentinel { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn abs(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    fn assert_untouched(&self) {
        assert_eq!(list(self.path()), ["keep"], "sentinel changed");
        assert_eq!(read(self.path(), "keep"), "original");
        assert_eq!(mode(self.path(), "keep"), 0o644);
    }
}

/// A destination tree full of escape hatches.
fn hostile_dest(s: &Sentinel) -> tempfile::TempDir {
    let d = tmp();
    let r = d.path();
    symlink(r, "/", "root");
    symlink(r, &s.abs(), "abs");
    symlink(r, "../../../../../../../../..", "up");
    symlink(r, &format!("{}/keep", s.abs()), "keepfile");
    mkdir(r, "d", 0o755);
    symlink(r, &s.abs(), "d/sub");
    symlink(r, &format!("{}/keep", s.abs()), "d/f");
    d
}

fn mkd(path: &str) -> FileActionMkDir {
    FileActionMkDir {
        path: path.into(),
        mode: 0o777,
        make_parents: true,
        owner: None,
        timestamp: 0,
    }
}

fn mkf(path: &str) -> FileActionMkFile {
    FileActionMkFile {
        path: path.into(),
        mode: 0o777,
        data: b"pwned".to_vec(),
        owner: None,
        timestamp: 0,
    }
}

#[test]
fn mkdir_and_mkfile_through_symlinks_stay_inside() {
    let s = Sentinel::new();
    let d = hostile_dest(&s);
    let r = d.path();
    let owner = is_root().then_some(fo::Owner {
        uid: 4321,
        gid: 4321,
    });
    for path in [
        "/abs/new",
        "/up/new",
        "/root/new",
        "/../../new",
        "/d/sub/new",
        "abs/../abs/n2",
    ] {
        fo::mkdir(r, &mkd(path), owner).unwrap();
    }
    for path in [
        "/abs/file",
        "/up/f2",
        "/keepfile",
        "/d/f",
        "/d/sub/keep",
        "../../../x",
    ] {
        fo::mkfile(r, &mkf(path), owner).unwrap();
    }
    s.assert_untouched();
    // What the links named was created inside the root instead.
    let inside = s.abs();
    assert!(exists(r, &format!("{inside}/new")));
    assert!(exists(r, &format!("{inside}/keep")));
    assert!(exists(r, "new") && exists(r, "x"));
}

#[test]
fn symlink_and_rm_through_symlinks_stay_inside() {
    let s = Sentinel::new();
    let d = hostile_dest(&s);
    let r = d.path();
    let ln = |newpath: &str| FileActionSymlink {
        oldpath: "/etc/shadow".into(),
        newpath: newpath.into(),
        owner: None,
        timestamp: -1,
    };
    // The link's absolute target is a path inside the root: missing at
    // first, then made there.
    let err = fo::symlink(r, &ln("/abs/l"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "symlink /etc/shadow {}/l: no such file or directory",
            s.abs()
        )
    );
    fo::mkdir(r, &mkd("/abs"), None).unwrap();
    fo::symlink(r, &ln("/abs/l"), None).unwrap();
    assert!(meta(r, &format!("{}/l", s.abs())).file_type().is_symlink());
    fo::symlink(r, &ln("/up/l"), None).unwrap();
    s.assert_untouched();

    let rm = |path: &str, wildcard: bool| FileActionRm {
        path: path.into(),
        allow_not_found: true,
        allow_wildcard: wildcard,
    };
    for path in ["/abs/keep", "/up/keep", "/d/sub/keep", "/../../keep"] {
        fo::rm(r, &rm(path, false)).unwrap();
    }
    // The base of a wildcard is not followed for rm, so this matches
    // nothing; a link named by the pattern is removed itself.
    fo::rm(r, &rm("/abs/*", true)).unwrap();
    fo::rm(r, &rm("/d/*", true)).unwrap();
    s.assert_untouched();
    assert!(exists(r, "d") && !exists(r, "d/sub") && !exists(r, "d/f"));
    // Removing the links removes links only.
    fo::rm(r, &rm("/abs", false)).unwrap();
    fo::rm(r, &rm("/root", false)).unwrap();
    fo::rm(r, &rm("/keepfile", false)).unwrap();
    s.assert_untouched();
    assert!(!exists(r, "abs") && !exists(r, "root") && !exists(r, "keepfile"));
}

#[test]
fn copy_into_symlinked_destinations_stays_inside() {
    let s = Sentinel::new();
    let src = tmp();
    write(src.path(), "keep", "pwned", 0o777);
    write(src.path(), "d/sub/keep", "pwned", 0o777);
    write(src.path(), "d/f", "pwned", 0o777);
    let d = hostile_dest(&s);
    let r = d.path();
    for dest in [
        "/abs/",
        "/abs/keep",
        "/up/",
        "/root/",
        "/keepfile",
        "/../../../",
        "/d/sub/",
    ] {
        fo::copy(src.path(), r, &cp("/keep", dest), None).unwrap();
    }
    s.assert_untouched();

    // A directory whose destination twin holds a symlink where the source
    // has a directory: refused, not followed.
    let mut a = cp("/d", "/d");
    a.dir_copy_contents = true;
    let err = fo::copy(src.path(), r, &a, None).unwrap_err();
    assert_eq!(err.to_string(), "cannot copy to non-directory: /d/sub");
    s.assert_untouched();
    // A file over a symlink replaces the link.
    assert!(!meta(r, "d/f").file_type().is_symlink());
    assert_eq!(read(r, "d/f"), "pwned");
    // With alwaysReplaceExistingDestPaths the directory replaces the link.
    a.always_replace_existing_dest_paths = true;
    fo::copy(src.path(), r, &a, None).unwrap();
    s.assert_untouched();
    assert!(meta(r, "d/sub").is_dir());
    assert_eq!(read(r, "d/sub/keep"), "pwned");
}

#[test]
fn copy_sources_resolve_inside_their_root() {
    let s = Sentinel::new();
    let src = tmp();
    let sp = src.path();
    symlink(sp, &s.abs(), "abs");
    symlink(sp, "/", "root");
    symlink(sp, "../../../../../..", "up");
    symlink(sp, &format!("{}/keep", s.abs()), "keeplink");
    write(sp, "real", "inside", 0o644);
    let d = tmp();
    // Followed sources resolve inside the source root: the sentinel's
    // path does not exist there.
    for source in ["/abs/keep", "/up/real", "/keeplink", "/root/real"] {
        let mut a = cp(source, "/out");
        a.follow_symlink = true;
        let result = fo::copy(sp, d.path(), &a, None);
        if source == "/up/real" || source == "/root/real" {
            result.unwrap();
            assert_eq!(read(d.path(), "out"), "inside");
            std::fs::remove_file(d.path().join("out")).unwrap();
        } else {
            let err = result.unwrap_err();
            assert!(err.is_not_found(), "{source}: {err}");
        }
    }
    // `..` in the source path is clamped.
    fo::copy(sp, d.path(), &cp("../../../../real", "/clamped"), None).unwrap();
    assert_eq!(read(d.path(), "clamped"), "inside");
    // Wildcards through links also stay inside.
    let mut a = cp("/up/r*", "/w/");
    a.allow_wildcard = true;
    a.follow_symlink = true;
    fo::copy(sp, d.path(), &a, None).unwrap();
    assert_eq!(read(d.path(), "w/real"), "inside");
    let mut a = cp("/abs/*", "/w2/");
    a.allow_wildcard = true;
    a.follow_symlink = true;
    assert!(fo::copy(sp, d.path(), &a, None).unwrap_err().is_not_found());
    // Copying the whole tree copies the links as links.
    fo::copy(sp, d.path(), &cp("/", "/all"), None).unwrap();
    assert_eq!(link_target(d.path(), "all/abs"), s.abs());
    assert_eq!(link_target(d.path(), "all/up"), "../../../../../..");
    s.assert_untouched();
}

#[test]
fn symlink_loops_are_errors() {
    let t = tmp();
    let r = t.path();
    symlink(r, "b", "a");
    symlink(r, "a", "b");
    symlink(r, "self/x", "self");
    let err = fo::mkfile(r, &mkf("/a"), None).unwrap_err();
    assert_eq!(err.to_string(), "/a: too many links");
    assert!(fo::mkdir(r, &mkd("/self/y"), None).is_err());
    let src = tmp();
    symlink(src.path(), "l", "l");
    let mut a = cp("/l", "/out");
    a.follow_symlink = true;
    assert!(fo::copy(src.path(), r, &a, None).is_err());
    // Unfollowed, a looping link is just a link.
    fo::copy(src.path(), r, &cp("/l", "/out"), None).unwrap();
    assert_eq!(link_target(r, "out"), "l");
}

#[test]
fn special_files_are_never_opened() {
    let t = tmp();
    let r = t.path();
    mknod(r, "fifo", rustix::fs::FileType::Fifo, 0o666, 0);
    // Opening a FIFO for writing would block forever.
    let err = fo::mkfile(r, &mkf("/fifo"), None).unwrap_err();
    assert_eq!(err.to_string(), "open /fifo: not a regular file");
    symlink(r, "fifo", "to-fifo");
    assert!(fo::mkfile(r, &mkf("/to-fifo"), None).is_err());
    if is_root() {
        // A node for the host's /dev/null: written to, it would reach the
        // host device.
        mknod(
            r,
            "null",
            rustix::fs::FileType::CharacterDevice,
            0o666,
            rustix::fs::makedev(1, 3),
        );
        assert!(fo::mkfile(r, &mkf("/null"), None).is_err());
    }
    // Copying FIFOs makes new FIFOs without opening the source.
    let d = tmp();
    fo::copy(r, d.path(), &cp("/fifo", "/f2"), None).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(meta(d.path(), "f2").file_type().is_fifo());
    // A user file that is a FIFO is refused, not read.
    mkdir(r, "etc", 0o755);
    mknod(r, "etc/passwd", rustix::fs::FileType::Fifo, 0o644, 0);
    let chown = bk_proto::pb::ChownOpt {
        user: Some(bk_proto::pb::UserOpt {
            user: Some(bk_proto::pb::user_opt::User::ByName(
                bk_proto::pb::NamedUserOpt {
                    name: "root".into(),
                    input: 0,
                },
            )),
        }),
        group: None,
    };
    assert!(fo::resolve_owner(Some(&chown), Some(r), None).is_err());
}

#[test]
fn deep_trees_are_errors_not_crashes() {
    // Deeper than PATH_MAX allows by path: copy fails cleanly, rm and
    // clone_tree (walking by descriptor) succeed.
    let src = tmp();
    let top = src.path().join("deep");
    std::fs::create_dir(&top).unwrap();
    let mut fd = rustix::fs::open(
        &top,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let name = "d".repeat(200);
    for _ in 0..40 {
        rustix::fs::mkdirat(&fd, name.as_str(), rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
    }
    rustix::fs::mkdirat(&fd, "leaf", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
    drop(fd);
    let d = tmp();
    let err = fo::copy(src.path(), d.path(), &cp("/deep", "/deep"), None).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NAMETOOLONG.raw_os_error())
    );

    let cloned = tmp();
    let dst = cloned.path().join("c");
    fo::clone_tree(src.path(), &dst).unwrap();
    let mut fd = rustix::fs::open(
        dst.join("deep"),
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    for _ in 0..40 {
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
    }
    rustix::fs::statat(&fd, "leaf", rustix::fs::AtFlags::empty()).unwrap();
    drop(fd);

    let rm = FileActionRm {
        path: "/deep".into(),
        allow_not_found: false,
        allow_wildcard: false,
    };
    fo::rm(src.path(), &rm).unwrap();
    assert!(!exists(src.path(), "deep"));
}
