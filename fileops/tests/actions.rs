//! mkdir, mkfile, rm, symlink, `apply` and `resolve_in_root` on real trees.

mod common;

use bk_fileops as fo;
use bk_fileops::{ActionRoots, Owner, apply, resolve_in_root};
use bk_proto::pb::file_action::Action;
use bk_proto::pb::{
    ChownOpt, FileAction, FileActionMkDir, FileActionMkFile, FileActionRm, FileActionSymlink,
    NamedUserOpt, UserOpt, user_opt,
};
use common::*;

fn md(path: &str, mode: i32, parents: bool) -> FileActionMkDir {
    FileActionMkDir {
        path: path.into(),
        mode,
        make_parents: parents,
        owner: None,
        timestamp: -1,
    }
}

fn mf(path: &str, data: &str, mode: i32) -> FileActionMkFile {
    FileActionMkFile {
        path: path.into(),
        mode,
        data: data.as_bytes().to_vec(),
        owner: None,
        timestamp: -1,
    }
}

fn rmv(path: &str, allow_not_found: bool, allow_wildcard: bool) -> FileActionRm {
    FileActionRm {
        path: path.into(),
        allow_not_found,
        allow_wildcard,
    }
}

fn ln(old: &str, new: &str) -> FileActionSymlink {
    FileActionSymlink {
        oldpath: old.into(),
        newpath: new.into(),
        owner: None,
        timestamp: -1,
    }
}

#[test]
fn mkdir_modes_parents_and_existing() {
    let t = tmp();
    let r = t.path();
    fo::mkdir(r, &md("/a", 0o750, false), None).unwrap();
    assert_eq!(mode(r, "a"), 0o750);
    // Regardless of umask, as under BuildKit's zero umask.
    fo::mkdir(r, &md("/open", 0o777, false), None).unwrap();
    assert_eq!(mode(r, "open"), 0o777);
    // Only permission bits count.
    fo::mkdir(r, &md("/sticky", 0o1755, false), None).unwrap();
    assert_eq!(mode(r, "sticky"), 0o755);
    let err = fo::mkdir(r, &md("/x/y", 0o755, false), None).unwrap_err();
    assert_eq!(err.to_string(), "mkdir /x/y: no such file or directory");
    fo::mkdir(r, &md("/x/y/z", 0o711, true), None).unwrap();
    for p in ["x", "x/y", "x/y/z"] {
        assert_eq!(mode(r, p), 0o711, "{p}");
    }
    // Existing: fine, untouched, even a file without makeParents.
    write(r, "file", "f", 0o600);
    fo::mkdir(r, &md("/a", 0o700, false), None).unwrap();
    assert_eq!(mode(r, "a"), 0o750);
    fo::mkdir(r, &md("/file", 0o700, false), None).unwrap();
    assert!(meta(r, "file").is_file());
    let err = fo::mkdir(r, &md("/file", 0o700, true), None).unwrap_err();
    assert_eq!(err.to_string(), "mkdir /file: not a directory");
    let err = fo::mkdir(r, &md("/file/sub", 0o700, true), None).unwrap_err();
    assert_eq!(err.to_string(), "lstat /file/sub: not a directory");
    // Relative and `..` paths stay in the root.
    fo::mkdir(r, &md("rel/../../../top", 0o755, true), None).unwrap();
    assert!(exists(r, "top"));
    // The root itself exists.
    fo::mkdir(r, &md("/", 0o700, false), None).unwrap();
}

#[test]
fn mkdir_owner_and_time() {
    let t = tmp();
    let r = t.path();
    let mut a = md("/p/q", 0o755, true);
    a.timestamp = 86_400_000_000_005;
    let owner = is_root().then_some(Owner { uid: 10, gid: 20 });
    fo::mkdir(r, &a, owner).unwrap();
    // Only the last keeps the time: making q touched p afterwards, and
    // the mkdir action (unlike copy) does not put parents' times back.
    assert_eq!(mtime(r, "p/q"), (86_400, 5));
    for p in ["p", "p/q"] {
        if is_root() {
            assert_eq!(common::owner(r, p), (10, 20));
        }
    }
    let mut a = md("/single", 0o755, false);
    a.timestamp = 0;
    fo::mkdir(r, &a, owner).unwrap();
    assert_eq!(mtime(r, "single"), (0, 0));
}

#[test]
fn mkfile_creates_truncates_and_keeps_mode() {
    let t = tmp();
    let r = t.path();
    fo::mkfile(r, &mf("/f", "hello", 0o640), None).unwrap();
    assert_eq!((read(r, "f"), mode(r, "f")), ("hello".to_string(), 0o640));
    fo::mkfile(r, &mf("/open", "", 0o666), None).unwrap();
    assert_eq!(mode(r, "open"), 0o666);
    // An existing file is truncated and keeps its mode, as os.WriteFile.
    fo::mkfile(r, &mf("/f", "hi", 0o777), None).unwrap();
    assert_eq!((read(r, "f"), mode(r, "f")), ("hi".to_string(), 0o640));
    let err = fo::mkfile(r, &mf("/missing/f", "x", 0o644), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "open /missing/f: no such file or directory"
    );
    fo::mkdir(r, &md("/d", 0o755, false), None).unwrap();
    let err = fo::mkfile(r, &mf("/d", "x", 0o644), None).unwrap_err();
    assert_eq!(err.to_string(), "open /d: is a directory");
    let err = fo::mkfile(r, &mf("/", "x", 0o644), None).unwrap_err();
    assert_eq!(err.to_string(), "open /: is a directory");
    // Through a symlink inside the root: the target is written.
    symlink(r, "f", "link");
    fo::mkfile(r, &mf("/link", "via link", 0o644), None).unwrap();
    assert_eq!(read(r, "f"), "via link");
    assert!(meta(r, "link").file_type().is_symlink());
    let mut a = mf("/timed", "t", 0o644);
    a.timestamp = 1_000_000_000;
    fo::mkfile(r, &a, None).unwrap();
    assert_eq!(mtime(r, "timed"), (1, 0));
    if is_root() {
        fo::mkfile(r, &mf("/owned", "o", 0o644), Some(Owner { uid: 3, gid: 4 })).unwrap();
        assert_eq!(common::owner(r, "owned"), (3, 4));
    }
}

#[test]
fn rm_paths_wildcards_and_not_found() {
    let t = tmp();
    let r = t.path();
    write(r, "d/a.txt", "a", 0o644);
    write(r, "d/b.txt", "b", 0o644);
    write(r, "d/c.log", "c", 0o644);
    write(r, "d/sub/deep/x", "x", 0o644);
    fo::rm(r, &rmv("/d/sub", false, false)).unwrap();
    assert!(!exists(r, "d/sub"));
    let err = fo::rm(r, &rmv("/d/nope", false, false)).unwrap_err();
    assert_eq!(err.to_string(), "stat /d/nope: no such file or directory");
    assert!(err.is_not_found());
    fo::rm(r, &rmv("/d/nope", true, false)).unwrap();
    fo::rm(r, &rmv("/d/*.txt", false, true)).unwrap();
    assert_eq!(list(r), ["d/", "d/c.log"]);
    // No match with a wildcard is fine even without allowNotFound.
    fo::rm(r, &rmv("/d/*.none", false, true)).unwrap();
    // Without allowWildcard a star is a name.
    write(r, "d/*", "star", 0o644);
    fo::rm(r, &rmv("/d/*", false, false)).unwrap();
    assert_eq!(list(r), ["d/", "d/c.log"]);
    let err = fo::rm(r, &rmv("/", false, false)).unwrap_err();
    assert_eq!(err.to_string(), "rmPath: invalid empty path");
    // A symlink is removed, not its target.
    write(r, "target", "t", 0o644);
    symlink(r, "target", "link");
    fo::rm(r, &rmv("/link", false, false)).unwrap();
    assert!(!exists(r, "link") && exists(r, "target"));
    // A dangling symlink counts as missing without allowNotFound, as
    // upstream's stat sees it.
    symlink(r, "nowhere", "dangling");
    assert!(fo::rm(r, &rmv("/dangling", false, false)).is_err());
    fo::rm(r, &rmv("/dangling", true, false)).unwrap();
    assert!(!exists(r, "dangling"));
    // Read-only directories are still removed (as root).
    if is_root() {
        write(r, "ro/inner/f", "f", 0o444);
        mkdir(r, "ro/inner", 0o555);
        mkdir(r, "ro", 0o555);
        fo::rm(r, &rmv("/ro", false, false)).unwrap();
        assert!(!exists(r, "ro"));
    }
}

#[test]
fn symlink_action() {
    let t = tmp();
    let r = t.path();
    symlink_ok(r, "/anything/at/all", "/l1");
    assert_eq!(link_target(r, "l1"), "/anything/at/all");
    symlink_ok(r, "../../..", "/l2");
    assert_eq!(link_target(r, "l2"), "../../..");
    // An existing link at newpath is followed (upstream resolves newpath
    // with RootPath), so the new link lands on its target, inside the root.
    let err = fo::symlink(r, &ln("x", "/l1"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "symlink x /anything/at/all: no such file or directory"
    );
    symlink_ok(r, "target-name", "/l3");
    symlink_ok(r, "x", "/l3");
    assert_eq!(link_target(r, "target-name"), "x");
    let err = fo::symlink(r, &ln("x", "/missing/l"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "symlink x /missing/l: no such file or directory"
    );
    write(r, "file", "f", 0o644);
    let err = fo::symlink(r, &ln("x", "/file"), None).unwrap_err();
    assert_eq!(err.to_string(), "symlink x /file: file exists");
    let mut a = ln("t", "/timed");
    a.timestamp = 7_000_000_000;
    let owner = is_root().then_some(Owner { uid: 9, gid: 9 });
    fo::symlink(r, &a, owner).unwrap();
    assert_eq!(mtime(r, "timed"), (7, 0));
    if is_root() {
        assert_eq!(common::owner(r, "timed"), (9, 9));
    }
}

fn symlink_ok(r: &std::path::Path, old: &str, new: &str) {
    fo::symlink(r, &ln(old, new), None).unwrap();
}

#[test]
fn resolve_in_root_semantics() {
    let t = tmp();
    let r = t.path();
    mkdir(r, "a/b", 0o755);
    common::symlink(r, "/", "toroot");
    common::symlink(r, "../../../../..", "up");
    common::symlink(r, "a/b", "rel");
    common::symlink(r, "/a", "abs");
    common::symlink(r, "../b", "a/sib");
    common::symlink(r, "loop2", "loop1");
    common::symlink(r, "loop1", "loop2");
    let res = |p: &str, follow: bool| resolve_in_root(r, p, follow).unwrap();
    assert_eq!(res("/", true), r);
    assert_eq!(res("", true), r);
    assert_eq!(res("../../..", true), r);
    assert_eq!(res("/a/../../../a/b", true), r.join("a/b"));
    assert_eq!(res("/toroot/a", true), r.join("a"));
    assert_eq!(res("/toroot", true), r);
    assert_eq!(res("/toroot", false), r.join("toroot"));
    assert_eq!(res("/up/etc/passwd", true), r.join("etc/passwd"));
    assert_eq!(res("/rel/x", true), r.join("a/b/x"));
    assert_eq!(res("/abs/b", true), r.join("a/b"));
    // `..` in a target is lexical against the link's directory.
    assert_eq!(res("/a/sib", true), r.join("b"));
    assert_eq!(res("/abs/sib/c", true), r.join("b/c"));
    // Missing components are kept.
    assert_eq!(res("/nope/x/../y", true), r.join("nope/y"));
    let err = resolve_in_root(r, "/loop1", true).unwrap_err();
    assert_eq!(err.to_string(), "/loop1: too many links");
    assert_eq!(res("/loop1", false), r.join("loop1"));
}

#[test]
fn apply_dispatches_and_resolves_owners() {
    let dest = tmp();
    let users = tmp();
    write(
        users.path(),
        "etc/passwd",
        "app:x:1000:1000::/home/app:/bin/sh\n",
        0o644,
    );
    write(users.path(), "etc/group", "web:x:33:\n", 0o644);
    let chown = ChownOpt {
        user: Some(UserOpt {
            user: Some(user_opt::User::ByName(NamedUserOpt {
                name: "app".into(),
                input: 1,
            })),
        }),
        group: Some(UserOpt {
            user: Some(user_opt::User::ByName(NamedUserOpt {
                name: "web".into(),
                input: 1,
            })),
        }),
    };
    let mut a = md("/owned", 0o755, false);
    a.owner = Some(chown);
    let action = FileAction {
        input: 0,
        secondary_input: -1,
        output: 0,
        action: Some(Action::Mkdir(a)),
    };
    let roots = ActionRoots {
        dest: dest.path(),
        src: None,
        user: Some(users.path()),
        group: Some(users.path()),
    };
    if is_root() {
        apply(&action, &roots).unwrap();
        assert_eq!(common::owner(dest.path(), "owned"), (1000, 33));
    }
    // A missing user tree is an error.
    let no_users = ActionRoots {
        user: None,
        ..roots
    };
    let err = apply(&action, &no_users).unwrap_err();
    assert_eq!(err.to_string(), "invalid missing user mount");

    // Copy needs a source; the rest do not.
    let src = tmp();
    write(src.path(), "f", "data", 0o644);
    let copy = FileAction {
        input: 0,
        secondary_input: 1,
        output: 0,
        action: Some(Action::Copy(cp("/f", "/copied"))),
    };
    assert!(apply(&copy, &roots).is_err());
    let with_src = ActionRoots {
        src: Some(src.path()),
        ..roots
    };
    apply(&copy, &with_src).unwrap();
    assert_eq!(read(dest.path(), "copied"), "data");
    for action in [
        Action::Mkfile(mf("/mf", "x", 0o644)),
        Action::Symlink(ln("mf", "/ln")),
        Action::Rm(rmv("/mf", false, false)),
    ] {
        let fa = FileAction {
            input: 0,
            secondary_input: -1,
            output: 0,
            action: Some(action),
        };
        apply(&fa, &roots).unwrap();
    }
    assert!(!exists(dest.path(), "mf") && exists(dest.path(), "ln"));
    let empty = FileAction {
        input: 0,
        secondary_input: -1,
        output: 0,
        action: None,
    };
    assert!(apply(&empty, &roots).is_err());
}

#[test]
fn a_fileop_run_as_the_solver_would() {
    use bk_fileops::plan::{Ref, plan};
    // Input 0 is a base tree, input 1 a build context. Actions: mkdir /app
    // on input 0, copy /src from input 1 into it, then write a file; the
    // last action is output 0.
    let base = tmp();
    write(base.path(), "etc/os-release", "base", 0o644);
    let context = tmp();
    write(context.path(), "src/main.rs", "fn main() {}", 0o644);
    let mut copy = cp("/src", "/app/");
    copy.dir_copy_contents = true;
    let actions = vec![
        FileAction {
            input: 0,
            secondary_input: -1,
            output: -1,
            action: Some(Action::Mkdir(md("/app", 0o755, true))),
        },
        FileAction {
            input: 2,
            secondary_input: 1,
            output: -1,
            action: Some(Action::Copy(copy)),
        },
        FileAction {
            input: 3,
            secondary_input: -1,
            output: 0,
            action: Some(Action::Mkfile(mf("/app/VERSION", "1", 0o644))),
        },
    ];
    let inputs = [base.path(), context.path()];
    let p = plan(inputs.len(), &actions).unwrap();
    let work = tmp();
    let mut results: Vec<Option<std::path::PathBuf>> = vec![None; actions.len()];
    for &k in &p.order {
        let a = &actions[k];
        let dest = work.path().join(format!("result-{k}"));
        match Ref::of(a.input, inputs.len(), actions.len()).unwrap() {
            Ref::Input(i) => fo::clone_tree(inputs[i], &dest).unwrap(),
            Ref::Scratch => std::fs::create_dir(&dest).unwrap(),
            Ref::Action(j) if p.shared[j] => {
                fo::clone_tree(results[j].as_ref().unwrap(), &dest).unwrap()
            }
            Ref::Action(j) => std::fs::rename(results[j].take().unwrap(), &dest).unwrap(),
        }
        let src = match Ref::of(a.secondary_input, inputs.len(), actions.len()).unwrap() {
            Ref::Input(i) => Some(inputs[i].to_path_buf()),
            Ref::Action(j) => results[j].clone(),
            Ref::Scratch => None,
        };
        let roots = ActionRoots {
            dest: &dest,
            src: src.as_deref(),
            user: None,
            group: None,
        };
        apply(a, &roots).unwrap();
        results[k] = Some(dest);
    }
    let out = results[p.outputs[0]].as_ref().unwrap();
    assert_eq!(
        list(out),
        [
            "app/",
            "app/VERSION",
            "app/main.rs",
            "etc/",
            "etc/os-release"
        ]
    );
    // The input trees are untouched.
    assert_eq!(list(base.path()), ["etc/", "etc/os-release"]);
}
