//! `clone_tree` keeps everything a snapshot holds.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use bk_fileops::clone_tree;
use common::*;

#[test]
fn clone_keeps_everything() {
    let s = tmp();
    let sp = s.path();
    write(sp, "file", "content", 0o640);
    write(sp, "suid", "x", 0o4755);
    write(sp, "empty", "", 0o600);
    write(sp, "big", &"0123456789".repeat(100_000), 0o644);
    mkdir(sp, "dir/sub", 0o755);
    write(sp, "dir/sub/deep", "deep", 0o644);
    mkdir(sp, "dir", 0o1777);
    mkdir(sp, "locked", 0o500);
    mkdir(sp, "emptydir", 0o700);
    symlink(sp, "/", "toroot");
    symlink(sp, "../../../../etc/passwd", "up");
    symlink(sp, "nowhere", "dangling");
    std::fs::hard_link(sp.join("file"), sp.join("dir/hardlink")).unwrap();
    mknod(sp, "fifo", rustix::fs::FileType::Fifo, 0o620, 0);
    let root = is_root();
    if root {
        mknod(
            sp,
            "char",
            rustix::fs::FileType::CharacterDevice,
            0o600,
            rustix::fs::makedev(1, 3),
        );
        mknod(sp, "sock", rustix::fs::FileType::Socket, 0o755, 0);
        std::os::unix::fs::lchown(sp.join("file"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(sp.join("dir"), Some(11), Some(12)).unwrap();
        std::os::unix::fs::lchown(sp.join("toroot"), Some(13), Some(14)).unwrap();
        std::os::unix::fs::lchown(sp.join("suid"), Some(15), Some(16)).unwrap();
        std::fs::set_permissions(
            sp.join("suid"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
    }
    let xattrs = rustix::fs::setxattr(
        sp.join("file"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    if xattrs {
        rustix::fs::setxattr(
            sp.join("dir"),
            "user.d",
            b"dv",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        if root {
            rustix::fs::lsetxattr(
                sp.join("toroot"),
                "trusted.l",
                b"lv",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
    }
    for (i, p) in [
        "file", "dir", "dir/sub", "toroot", "fifo", "locked", "emptydir", "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(sp, p, 1_000 + i as i64);
    }

    let d = tmp();
    let dp = d.path().join("clone");
    clone_tree(sp, &dp).unwrap();

    assert_eq!(list(&dp), list(sp));
    for p in ["file", "suid", "empty", "big", "dir/sub/deep"] {
        assert_eq!(read(&dp, p), read(sp, p), "{p}");
    }
    for p in [
        "", "file", "suid", "empty", "dir", "dir/sub", "locked", "emptydir", "fifo", "toroot",
        "dangling",
    ] {
        let (a, b) = (meta(sp, p), meta(&dp, p));
        assert_eq!(a.mode(), b.mode(), "mode of {p:?}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {p:?}");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "mtime of {p:?}"
        );
    }
    assert_eq!(mode(&dp, "suid"), 0o4755);
    assert_eq!(mode(&dp, "dir"), 0o1777);
    assert_eq!(link_target(&dp, "toroot"), "/");
    assert_eq!(link_target(&dp, "up"), "../../../../etc/passwd");
    assert_eq!(link_target(&dp, "dangling"), "nowhere");
    assert_eq!(meta(&dp, "file").ino(), meta(&dp, "dir/hardlink").ino());
    assert_ne!(meta(&dp, "file").ino(), meta(sp, "file").ino());
    assert!(meta(&dp, "fifo").file_type().is_fifo());
    if root {
        assert!(meta(&dp, "char").file_type().is_char_device());
        assert_eq!(meta(&dp, "char").rdev(), rustix::fs::makedev(1, 3));
        assert!(meta(&dp, "sock").file_type().is_socket());
        assert_eq!(owner(&dp, "file"), (1234, 5678));
        assert_eq!(owner(&dp, "toroot"), (13, 14));
    }
    if xattrs {
        let mut buf = [0u8; 8];
        let n = rustix::fs::getxattr(dp.join("file"), "user.k", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"v");
        let n = rustix::fs::getxattr(dp.join("dir"), "user.d", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"dv");
        if root {
            let n = rustix::fs::lgetxattr(dp.join("toroot"), "trusted.l", &mut buf[..]).unwrap();
            assert_eq!(&buf[..n], b"lv");
        }
    }
    // The copy is independent of the source.
    std::fs::write(dp.join("file"), "changed").unwrap();
    assert_eq!(read(sp, "file"), "content");
}

#[test]
fn clone_destination_rules() {
    let s = tmp();
    write(s.path(), "f", "x", 0o644);
    let d = tmp();
    // An existing empty directory is fine.
    clone_tree(s.path(), d.path()).unwrap();
    assert_eq!(read(d.path(), "f"), "x");
    // A non-empty one is not.
    let err = clone_tree(s.path(), d.path()).unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");
    // A symlink as destination is not followed.
    let target = tmp();
    let holder = tmp();
    std::os::unix::fs::symlink(target.path(), holder.path().join("l")).unwrap();
    assert!(clone_tree(s.path(), &holder.path().join("l")).is_err());
    assert!(list(target.path()).is_empty());
    // A missing source is an error.
    assert!(clone_tree(&s.path().join("missing"), &holder.path().join("x")).is_err());
}

#[test]
fn link_tree_shares_file_data_and_nothing_else() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"one").unwrap();
    std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
    let dst = tmp.path().join("dst");
    bk_fileops::link_tree(&src, &dst).unwrap();

    let (a, b) = (
        src.join("d/f").metadata().unwrap(),
        dst.join("d/f").metadata().unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "file data is shared");
    assert_ne!(
        src.join("d").metadata().unwrap().ino(),
        dst.join("d").metadata().unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(dst.join("l")).unwrap(),
        std::path::Path::new("d/f")
    );

    // Updating the source the way fsutil does (a new file renamed over the
    // old) leaves the copy as it was.
    std::fs::write(src.join("d/.tmp"), b"two").unwrap();
    std::fs::rename(src.join("d/.tmp"), src.join("d/f")).unwrap();
    std::fs::remove_file(src.join("l")).unwrap();
    assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"one");
    assert!(dst.join("l").symlink_metadata().is_ok());
}
