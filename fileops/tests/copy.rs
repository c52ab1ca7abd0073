//! The copy action on real trees: fsutil's copy tests and BuildKit's
//! `docopy` behaviour (wildcards, destinations, modes, owners, times,
//! patterns, links, special files).

mod common;

use std::os::unix::fs::MetadataExt;

use bk_fileops::{FileOpError, Owner, copy};
use common::*;

fn src_tree() -> tempfile::TempDir {
    let t = tmp();
    write(t.path(), "foo.txt", "foo-contents", 0o755);
    write(t.path(), "foo.go", "go-contents", 0o755);
    write(t.path(), "bar.txt", "bar-contents", 0o644);
    mkdir(t.path(), "dir", 0o750);
    write(t.path(), "dir/a.txt", "a", 0o640);
    mkdir(t.path(), "dir/sub", 0o700);
    write(t.path(), "dir/sub/b.txt", "b", 0o600);
    t
}

#[test]
fn single_file_destinations() {
    let s = src_tree();
    let d = tmp();
    // Into an existing directory ("/"), under a new name, into new parents.
    copy(s.path(), d.path(), &cp("foo.txt", "/"), None).unwrap();
    assert_eq!(read(d.path(), "foo.txt"), "foo-contents");
    assert_eq!(mode(d.path(), "foo.txt"), 0o755);
    copy(s.path(), d.path(), &cp("foo.txt", "foo2.txt"), None).unwrap();
    assert_eq!(read(d.path(), "foo2.txt"), "foo-contents");
    copy(s.path(), d.path(), &cp("/foo.txt", "/a/b/c/foo3.txt"), None).unwrap();
    assert_eq!(read(d.path(), "a/b/c/foo3.txt"), "foo-contents");
    assert_eq!(mode(d.path(), "a/b/c"), 0o755);
    // A trailing slash makes the destination a directory to copy into.
    copy(s.path(), d.path(), &cp("bar.txt", "/x/y/"), None).unwrap();
    assert_eq!(read(d.path(), "x/y/bar.txt"), "bar-contents");
    copy(s.path(), d.path(), &cp("bar.txt", "/z/."), None).unwrap();
    assert_eq!(read(d.path(), "z/bar.txt"), "bar-contents");
    // Copying again replaces the file.
    write(s.path(), "foo.txt", "new", 0o600);
    copy(s.path(), d.path(), &cp("foo.txt", "foo2.txt"), None).unwrap();
    assert_eq!(read(d.path(), "foo2.txt"), "new");
    assert_eq!(mode(d.path(), "foo2.txt"), 0o600);
}

#[test]
fn directories_and_dir_copy_contents() {
    let s = src_tree();
    let d = tmp();
    // Missing destination: the directory is created under that name.
    copy(s.path(), d.path(), &cp("dir", "out"), None).unwrap();
    assert_eq!(list(&d.path().join("out")), ["a.txt", "sub/", "sub/b.txt"]);
    assert_eq!(mode(d.path(), "out"), 0o750);
    assert_eq!(mode(d.path(), "out/sub"), 0o700);
    // Existing destination: the directory goes inside it...
    copy(s.path(), d.path(), &cp("dir", "out"), None).unwrap();
    assert!(exists(d.path(), "out/dir/sub/b.txt"));
    // ...unless only its contents are copied.
    let mut a = cp("dir", "merged");
    a.dir_copy_contents = true;
    mkdir(d.path(), "merged", 0o711);
    write(d.path(), "merged/keep", "k", 0o644);
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(
        list(&d.path().join("merged")),
        ["a.txt", "keep", "sub/", "sub/b.txt"]
    );
    // The existing top directory keeps its mode.
    assert_eq!(mode(d.path(), "merged"), 0o711);
    // `src/.` copies the contents too (its base name is ".").
    copy(s.path(), d.path(), &cp("dir/.", "dot"), None).unwrap();
    copy(s.path(), d.path(), &cp("dir/.", "dot"), None).unwrap();
    assert_eq!(list(&d.path().join("dot")), ["a.txt", "sub/", "sub/b.txt"]);
    // Whole root.
    let r = tmp();
    copy(s.path(), r.path(), &cp("/", "/"), None).unwrap();
    assert_eq!(list(r.path()), list(s.path()));
}

#[test]
fn dockerfile_copy_dir_into_new_dir() {
    // COPY dir/ /app/ : dirCopyContents, createDestPath, wildcards allowed.
    let s = src_tree();
    let d = tmp();
    let mut a = cp("/dir/", "/app/");
    a.dir_copy_contents = true;
    a.allow_wildcard = true;
    a.allow_empty_wildcard = true;
    a.follow_symlink = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(
        list(d.path()),
        ["app/", "app/a.txt", "app/sub/", "app/sub/b.txt"]
    );
    // The destination is made first (0755, as BuildKit), so it is an
    // existing directory by the time the contents arrive.
    assert_eq!(mode(d.path(), "app"), 0o755);
}

#[test]
fn wildcards() {
    let s = src_tree();
    let d = tmp();
    // Without allowWildcard the pattern is a literal name.
    let err = copy(s.path(), d.path(), &cp("foo*", "/"), None).unwrap_err();
    assert_eq!(err.to_string(), "lstat /foo*: no such file or directory");
    assert!(err.is_not_found());

    let mut a = cp("foo*", "/");
    a.allow_wildcard = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(list(d.path()), ["foo.go", "foo.txt"]);

    // One match onto a file name replaces that file.
    let mut a = cp("bar*", "foo.txt");
    a.allow_wildcard = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(read(d.path(), "foo.txt"), "bar-contents");

    // Wildcards in the middle of the path.
    let mut a = cp("/d*/s*/*.txt", "/deep/");
    a.allow_wildcard = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(read(d.path(), "deep/b.txt"), "b");

    // No match.
    let mut a = cp("/nomatch*", "/");
    a.allow_wildcard = true;
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(err.to_string(), "/nomatch* not found");
    a.allow_empty_wildcard = true;
    copy(s.path(), d.path(), &a, None).unwrap();

    // A broken pattern matches nothing; an escaped star is literal.
    let mut a = cp("/[", "/");
    a.allow_wildcard = true;
    assert_eq!(
        copy(s.path(), d.path(), &a, None).unwrap_err().to_string(),
        "/[ not found"
    );
    write(s.path(), "lit*a", "star", 0o644);
    let mut a = cp("/lit\\*?", "/");
    a.allow_wildcard = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(read(d.path(), "lit*a"), "star");
    // Without any real wildcard the path is taken as written, escape and
    // all, as upstream does.
    a.src = "/lit\\*a".into();
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(err.to_string(), "lstat /lit\\*a: no such file or directory");

    // A wildcard under a missing directory is an error from its lstat.
    let mut a = cp("/missing/*", "/");
    a.allow_wildcard = true;
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(err.to_string(), "lstat /missing: no such file or directory");
}

#[test]
fn missing_source_and_dest_parent() {
    let s = src_tree();
    let d = tmp();
    let err = copy(s.path(), d.path(), &cp("/nope", "/x"), None).unwrap_err();
    assert_eq!(err.to_string(), "lstat /nope: no such file or directory");

    let mut a = cp("foo.txt", "/missing/x");
    a.create_dest_path = false;
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to stat /missing/x: lstat /missing: no such file or directory"
    );
    // With the parent there it works, and a trailing slash creates the
    // final directory even so, as upstream.
    mkdir(d.path(), "present", 0o755);
    a.dest = "/present/new/".into();
    copy(s.path(), d.path(), &a, None).unwrap();
    assert!(exists(d.path(), "present/new/foo.txt"));
}

#[test]
fn kinds_cannot_replace_each_other() {
    let s = src_tree();
    let d = tmp();
    write(d.path(), "out/dir", "a file", 0o644);
    let err = copy(s.path(), d.path(), &cp("dir", "out/"), None).unwrap_err();
    assert_eq!(err.to_string(), "cannot copy to non-directory: /out/dir");
    // A file onto an existing directory goes inside it.
    mkdir(d.path(), "d2/foo.txt", 0o755);
    copy(s.path(), d.path(), &cp("foo.txt", "d2/foo.txt"), None).unwrap();
    assert_eq!(read(d.path(), "d2/foo.txt/foo.txt"), "foo-contents");
    // A directory in the source where the destination has a directory
    // holding a file of the same name as a source directory.
    mkdir(d.path(), "d3/sub/b.txt", 0o755);
    let mut a = cp("dir", "d3");
    a.dir_copy_contents = true;
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot replace to directory /d3/sub/b.txt with file"
    );
}

#[test]
fn always_replace_existing_dest_paths() {
    // fsutil's TestCopyWithAlwaysReplaceExistingDestPaths.
    let d = tmp();
    let dp = d.path();
    mkdir(dp, "root/overwritedir", 0o755);
    write(dp, "root/overwritedir/subfile", "", 0o755);
    write(dp, "root/overwritefile", "", 0o755);
    symlink(dp, "dir", "root/overwritesymlink");
    mkdir(dp, "root/dir/overwritesubdir", 0o755);
    write(dp, "root/dir/dirfile1", "", 0o755);
    write(dp, "root/dir/overwritesubfile", "", 0o755);
    symlink(dp, "dirfile1", "root/dir/overwritesymlink");

    let s = tmp();
    let sp = s.path();
    write(sp, "root/overwritedir", "", 0o755);
    write(sp, "root/overwritefile/foo", "", 0o755);
    mkdir(sp, "root/overwritesymlink", 0o755);
    write(sp, "root/dir/dirfile2", "", 0o755);
    write(sp, "root/dir/overwritesubdir", "", 0o755);
    mkdir(sp, "root/dir/overwritesubfile", 0o755);
    mkdir(sp, "root/dir/overwritesymlink", 0o755);

    let mut a = cp("root", "root");
    a.always_replace_existing_dest_paths = true;
    a.dir_copy_contents = true;
    copy(sp, dp, &a, None).unwrap();
    assert_eq!(
        list(dp),
        [
            "root/",
            "root/dir/",
            "root/dir/dirfile1",
            "root/dir/dirfile2",
            "root/dir/overwritesubdir",
            "root/dir/overwritesubfile/",
            "root/dir/overwritesymlink/",
            "root/overwritedir",
            "root/overwritefile/",
            "root/overwritefile/foo",
            "root/overwritesymlink/",
        ]
    );
}

#[test]
fn include_exclude_patterns() {
    // fsutil's TestCopyIncludeExclude table.
    let s = tmp();
    let sp = s.path();
    write(sp, "bar/foo", "foo-contents", 0o755);
    write(sp, "bar/baz/foo3", "foo3-contents", 0o755);
    write(sp, "foo2", "foo2-contents", 0o755);
    let probe = ["bar", "bar/foo", "bar/baz", "bar/baz/foo3", "foo2"];
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (
            &["bar"],
            &[],
            &["bar", "bar/foo", "bar/baz", "bar/baz/foo3"],
        ),
        (
            &["*"],
            &[],
            &["bar", "bar/foo", "bar/baz", "bar/baz/foo3", "foo2"],
        ),
        (&["bar/foo"], &[], &["bar", "bar/foo"]),
        (
            &["bar", "!bar/foo"],
            &[],
            &["bar", "bar/baz", "bar/baz/foo3"],
        ),
        (&["bar/foo", "foo*"], &[], &["bar", "bar/foo", "foo2"]),
        (&["b*"], &[], &["bar", "bar/foo", "bar/baz", "bar/baz/foo3"]),
        (&["bar/f*"], &[], &["bar", "bar/foo"]),
        (&["bar/g*"], &[], &[]),
        (&["b*/f*"], &[], &["bar", "bar/foo"]),
        (&["b*/foo"], &[], &["bar", "bar/foo"]),
        (
            &["b*/"],
            &[],
            &["bar", "bar/foo", "bar/baz", "bar/baz/foo3"],
        ),
        (&["bar/*/foo3"], &[], &["bar", "bar/baz", "bar/baz/foo3"]),
        (
            &[],
            &["bar*", "!bar/baz"],
            &["bar", "bar/baz", "bar/baz/foo3", "foo2"],
        ),
        (
            &[],
            &["**", "!bar/baz"],
            &["bar", "bar/baz", "bar/baz/foo3"],
        ),
        (
            &[],
            &["**", "!bar/baz", "bar/baz/foo3"],
            &["bar", "bar/baz"],
        ),
        (&["bar"], &["bar/baz"], &["bar", "bar/foo"]),
        (&["**/foo3"], &[], &["bar", "bar/baz", "bar/baz/foo3"]),
        (&["**/baz"], &[], &["bar", "bar/baz", "bar/baz/foo3"]),
        (
            &["**/bar"],
            &[],
            &["bar", "bar/foo", "bar/baz", "bar/baz/foo3"],
        ),
        (&["bar"], &["**/foo3"], &["bar", "bar/foo", "bar/baz"]),
        (&[], &["bar/baz"], &["bar", "bar/foo", "foo2"]),
    ];
    for (include, exclude, want) in cases {
        let d = tmp();
        let mut a = cp("/", "/");
        a.include_patterns = include.iter().map(|s| s.to_string()).collect();
        a.exclude_patterns = exclude.iter().map(|s| s.to_string()).collect();
        copy(sp, d.path(), &a, None).unwrap();
        let got: Vec<&str> = probe
            .iter()
            .copied()
            .filter(|p| exists(d.path(), p))
            .collect();
        assert_eq!(&got, want, "include {include:?} exclude {exclude:?}");
    }
    let mut a = cp("/", "/");
    a.include_patterns = vec!["[".into()];
    let err = copy(sp, tmp().path(), &a, None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid includepatterns: [[]: "),
        "{err}"
    );
}

#[test]
fn numeric_mode_owner_and_parents() {
    // fsutil's TestCopyDirectoryChmodChown.
    let s = src_tree();
    let d = tmp();
    let mut a = cp("dir", "dest/sub");
    a.dir_copy_contents = true;
    a.mode = 0o700;
    let owner = is_root().then_some(Owner { uid: 100, gid: 200 });
    copy(s.path(), d.path(), &a, owner).unwrap();
    for path in [
        "dest",
        "dest/sub",
        "dest/sub/a.txt",
        "dest/sub/sub",
        "dest/sub/sub/b.txt",
    ] {
        assert_eq!(mode(d.path(), path), 0o700, "{path}");
        if is_root() {
            assert_eq!(owner_of(d.path(), path), (100, 200), "{path}");
        }
    }
    // Created parents take the numeric mode read as a Go FileMode:
    // set-id bits of a plain number do not reach directories, files get them.
    let d = tmp();
    let mut a = cp("foo.txt", "/p/q/foo");
    a.mode = 0o4711;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(mode(d.path(), "p/q"), 0o711);
    assert_eq!(mode(d.path(), "p/q/foo"), 0o4711);
}

fn owner_of(root: &std::path::Path, rel: &str) -> (u32, u32) {
    owner(root, rel)
}

#[test]
fn owners_kept_or_set() {
    if !is_root() {
        return;
    }
    let s = src_tree();
    std::os::unix::fs::lchown(s.path().join("dir/a.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(s.path().join("dir"), Some(7), Some(8)).unwrap();
    let d = tmp();
    copy(s.path(), d.path(), &cp("dir", "/new/out"), None).unwrap();
    assert_eq!(owner(d.path(), "new/out/a.txt"), (1234, 5678));
    assert_eq!(owner(d.path(), "new/out"), (7, 8));
    // A created parent belongs to the daemon.
    assert_eq!(owner(d.path(), "new"), (0, 0));
    let d = tmp();
    copy(
        s.path(),
        d.path(),
        &cp("dir", "/new/out"),
        Some(Owner { uid: 1, gid: 2 }),
    )
    .unwrap();
    for path in ["new", "new/out", "new/out/a.txt", "new/out/sub/b.txt"] {
        assert_eq!(owner(d.path(), path), (1, 2), "{path}");
    }
    // The existing top directory keeps its owner (fsutil's
    // TestCopyExistingDirDest); files in it are replaced.
    let d = tmp();
    mkdir(d.path(), "dir", 0o700);
    write(d.path(), "dir/a.txt", "old", 0o600);
    std::os::unix::fs::lchown(d.path().join("dir"), Some(1), Some(1)).unwrap();
    std::os::unix::fs::lchown(d.path().join("dir/a.txt"), Some(1), Some(1)).unwrap();
    let mut a = cp("dir", "dir");
    a.dir_copy_contents = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(
        (mode(d.path(), "dir"), owner(d.path(), "dir")),
        (0o700, (1, 1))
    );
    assert_eq!(read(d.path(), "dir/a.txt"), "a");
    assert_eq!(
        (mode(d.path(), "dir/a.txt"), owner(d.path(), "dir/a.txt")),
        (0o640, (1234, 5678))
    );
}

#[test]
fn mode_strings() {
    // fsutil's TestCopyModeTextFormat table.
    let s = tmp();
    write(s.path(), "file", "hello", 0o644);
    write(s.path(), "executable_file", "world", 0o755);
    mkdir(s.path(), "dir", 0o750);
    mkdir(s.path(), "restricted_dir", 0o700);
    let cases: &[(&str, [u32; 4])] = &[
        ("go-w", [0o644, 0o755, 0o750, 0o700]),
        ("u+x", [0o744, 0o755, 0o750, 0o700]),
        ("g-rwx", [0o604, 0o705, 0o700, 0o700]),
        ("o+r", [0o644, 0o755, 0o754, 0o704]),
        ("a-x", [0o644, 0o644, 0o640, 0o600]),
        ("o-rwx,g+x", [0o650, 0o750, 0o750, 0o710]),
        ("a+X", [0o644, 0o755, 0o751, 0o711]),
        ("u=rwX,go=rX", [0o644, 0o755, 0o755, 0o755]),
        ("u=rX,go=r", [0o444, 0o544, 0o544, 0o544]),
        ("u-x,u+w", [0o644, 0o655, 0o650, 0o600]),
        ("u+x,o+x", [0o745, 0o755, 0o751, 0o701]),
        ("g+rw,o+rw", [0o666, 0o777, 0o776, 0o766]),
        ("a=r", [0o444, 0o444, 0o444, 0o444]),
        ("u=rwx,g=,o=", [0o700, 0o700, 0o700, 0o700]),
        ("o-rwx", [0o640, 0o750, 0o750, 0o700]),
        ("g-r,a+x", [0o715, 0o715, 0o711, 0o711]),
        ("u+rw,g+r,o-x,o+w", [0o646, 0o756, 0o752, 0o742]),
    ];
    for (mode_str, want) in cases {
        let d = tmp();
        let mut a = cp(".", ".");
        a.mode_str = mode_str.to_string();
        // modeStr wins over mode.
        a.mode = 0o777;
        copy(s.path(), d.path(), &a, None).unwrap();
        let got = ["file", "executable_file", "dir", "restricted_dir"].map(|p| mode(d.path(), p));
        assert_eq!(&got, want, "{mode_str}");
    }
    let mut a = cp(".", ".");
    a.mode_str = "u+q".into();
    let err = copy(s.path(), tmp().path(), &a, None).unwrap_err();
    assert_eq!(err.to_string(), "invalid syntax");
}

#[test]
fn timestamps() {
    let s = src_tree();
    set_mtime(s.path(), "dir/a.txt", 1_000_000);
    set_mtime(s.path(), "dir", 2_000_000);
    let d = tmp();
    copy(s.path(), d.path(), &cp("dir", "/kept"), None).unwrap();
    assert_eq!(mtime(d.path(), "kept/a.txt"), (1_000_000, 0));
    assert_eq!(mtime(d.path(), "kept"), (2_000_000, 0));

    // fsutil's TestCopyFileWithPathTimestamp and
    // TestCopyDirectoryContentsTimestamp: the time goes on everything,
    // created parents included.
    let d = tmp();
    let mut a = cp("/dir/a.txt", "/t1/t2/t3/a.txt");
    a.timestamp = 0;
    copy(s.path(), d.path(), &a, None).unwrap();
    for path in ["t1", "t1/t2", "t1/t2/t3", "t1/t2/t3/a.txt"] {
        assert_eq!(mtime(d.path(), path), (0, 0), "{path}");
    }
    let d = tmp();
    let mut a = cp("/dir", "/out");
    a.dir_copy_contents = true;
    a.timestamp = 1_500_000_000_000_000_123;
    copy(s.path(), d.path(), &a, None).unwrap();
    for path in ["out", "out/a.txt", "out/sub", "out/sub/b.txt"] {
        assert_eq!(mtime(d.path(), path), (1_500_000_000, 123), "{path}");
    }
    // An existing top directory gets the source's times back after its
    // contents change.
    let d = tmp();
    mkdir(d.path(), "out", 0o755);
    set_mtime(d.path(), "out", 5);
    let mut a = cp("/dir", "/out");
    a.dir_copy_contents = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(mtime(d.path(), "out"), (2_000_000, 0));
}

#[test]
fn symlinks_followed_or_copied() {
    // fsutil's TestCopySymlinks.
    let s = tmp();
    write(s.path(), "testdir/foo.txt", "foo-contents", 0o644);
    symlink(s.path(), "foo.txt", "testdir/link2");
    symlink(s.path(), "/testdir", "link");
    let d = tmp();
    let mut a = cp("link/link2", "foo");
    a.follow_symlink = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert!(meta(d.path(), "foo").is_file());
    assert_eq!(read(d.path(), "foo"), "foo-contents");
    assert_eq!(mode(d.path(), "foo"), 0o644);

    let d = tmp();
    copy(s.path(), d.path(), &cp("link/link2", "foo"), None).unwrap();
    assert!(meta(d.path(), "foo").file_type().is_symlink());
    assert_eq!(link_target(d.path(), "foo"), "foo.txt");

    // Inside a copied tree symlinks stay symlinks, whatever they point at.
    symlink(s.path(), "/", "testdir/root");
    symlink(s.path(), "../../../../../etc", "testdir/up");
    let d = tmp();
    copy(s.path(), d.path(), &cp("link", "out"), None).unwrap();
    assert!(meta(d.path(), "out").file_type().is_symlink());
    let mut a = cp("link", "out2");
    a.follow_symlink = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(link_target(d.path(), "out2/root"), "/");
    assert_eq!(link_target(d.path(), "out2/up"), "../../../../../etc");
}

#[test]
fn hard_links_stay_linked() {
    let s = tmp();
    write(s.path(), "d/one", "shared", 0o644);
    std::fs::hard_link(s.path().join("d/one"), s.path().join("d/two")).unwrap();
    write(s.path(), "d/three", "alone", 0o644);
    let d = tmp();
    copy(s.path(), d.path(), &cp("d", "out"), None).unwrap();
    let (one, two) = (meta(d.path(), "out/one"), meta(d.path(), "out/two"));
    assert_eq!(one.ino(), two.ino());
    assert_eq!(one.nlink(), 2);
    assert_ne!(one.ino(), meta(s.path(), "d/one").ino());
    assert_eq!(read(d.path(), "out/two"), "shared");
}

#[test]
fn xattrs_copied() {
    let s = tmp();
    write(s.path(), "f", "x", 0o644);
    mkdir(s.path(), "d", 0o755);
    if rustix::fs::setxattr(
        s.path().join("f"),
        "user.test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        return; // filesystem without user xattrs
    }
    rustix::fs::setxattr(
        s.path().join("d"),
        "user.dir",
        b"dv",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let d = tmp();
    copy(s.path(), d.path(), &cp("/", "/out"), None).unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(d.path().join("out/f"), "user.test", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"value");
    let n = rustix::fs::getxattr(d.path().join("out/d"), "user.dir", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"dv");
}

#[test]
fn special_files() {
    if !is_root() {
        return;
    }
    use rustix::fs::FileType;
    // fsutil's TestCopyDevicesAndFifo and TestCopySetuid.
    let s = tmp();
    mknod(
        s.path(),
        "char",
        FileType::CharacterDevice,
        0o444,
        rustix::fs::makedev(1, 9),
    );
    mknod(
        s.path(),
        "block",
        FileType::BlockDevice,
        0o441,
        rustix::fs::makedev(3, 2),
    );
    mknod(s.path(), "fifo", FileType::Fifo, 0o555, 0);
    mknod(s.path(), "socket", FileType::Socket, 0o555, 0);
    let d = tmp();
    copy(s.path(), d.path(), &cp(".", "."), None).unwrap();
    use std::os::unix::fs::FileTypeExt;
    let ft = |p| meta(d.path(), p).file_type();
    assert!(ft("char").is_char_device());
    assert_eq!(meta(d.path(), "char").rdev(), rustix::fs::makedev(1, 9));
    assert!(ft("block").is_block_device());
    assert!(ft("fifo").is_fifo());
    // A socket is copied as a stub.
    assert!(ft("socket").is_file());
    assert_eq!(mode(d.path(), "char"), 0o444);
    assert_eq!(mode(d.path(), "block"), 0o441);
    assert_eq!(mode(d.path(), "fifo"), 0o555);
    assert_eq!(mode(d.path(), "socket"), 0o555);

    let d = tmp();
    let mut a = cp(".", ".");
    a.mode = 0o4444;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(mode(d.path(), "char"), 0o4444);
}

#[test]
fn setuid_survives_chown() {
    if !is_root() {
        return;
    }
    let s = tmp();
    write(s.path(), "suid", "x", 0o4755);
    let d = tmp();
    copy(
        s.path(),
        d.path(),
        &cp("suid", "suid"),
        Some(Owner { uid: 5, gid: 5 }),
    )
    .unwrap();
    assert_eq!(mode(d.path(), "suid"), 0o4755);
    assert_eq!(owner(d.path(), "suid"), (5, 5));
}

#[test]
fn required_paths() {
    let s = src_tree();
    let d = tmp();
    let mut a = cp("/", "/out");
    a.include_patterns = vec!["dir/sub".into()];
    a.required_paths = vec!["/dir/sub".into()];
    copy(s.path(), d.path(), &a, None).unwrap();
    assert!(exists(d.path(), "out/dir/sub/b.txt"));
    a.required_paths = vec!["/dir/nope".into()];
    let err = copy(s.path(), d.path(), &a, None).unwrap_err();
    assert_eq!(err.to_string(), "\"/dir/nope\": not found");
    assert!(err.is_not_found());
}

#[test]
fn archives_are_not_unpacked() {
    let s = tmp();
    // A one-entry ustar archive header.
    let mut block = [0u8; 512];
    block[..5].copy_from_slice(b"a.txt");
    block[100..108].copy_from_slice(b"0000644\0");
    block[124..136].copy_from_slice(b"00000000000\0");
    block[257..263].copy_from_slice(b"ustar\0");
    block[156] = b'0';
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut archive = block.to_vec();
    archive.extend_from_slice(&[0u8; 1024]);
    std::fs::write(s.path().join("x.tar"), &archive).unwrap();
    std::fs::write(s.path().join("x.tgz"), [0x1f, 0x8b, 0x08, 0, 0]).unwrap();
    write(s.path(), "plain.txt", "just text", 0o644);
    let d = tmp();
    for name in ["x.tar", "x.tgz"] {
        let mut a = cp(name, "/out/");
        a.attempt_unpack_docker_compatibility = true;
        let err = copy(s.path(), d.path(), &a, None).unwrap_err();
        assert!(matches!(err, FileOpError::Unsupported(_)), "{err}");
        // Without the flag it is just a file.
        a.attempt_unpack_docker_compatibility = false;
        copy(s.path(), d.path(), &a, None).unwrap();
    }
    let mut a = cp("plain.txt", "/out/");
    a.attempt_unpack_docker_compatibility = true;
    copy(s.path(), d.path(), &a, None).unwrap();
    assert_eq!(read(d.path(), "out/plain.txt"), "just text");
}
