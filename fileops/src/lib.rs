//! LLB FileOp actions applied to directories on disk, as BuildKit's file
//! backend (`solver/llbsolver/file`) and fsutil's `copy` package do them.
//! Pure, blocking filesystem code: run it on a blocking thread.
//!
//! # Use
//!
//! 1. [`plan::plan`] validates a FileOp's index graph and says which
//!    actions to run, in what order, and which results must stay intact.
//! 2. For each action, prepare its tree: a [`clone_tree`] of its `input`
//!    (or the previous result itself, when the plan allows changing it in
//!    place; an empty directory for scratch), the copy source, and the
//!    trees for by-name owners ([`owner_inputs`]).
//! 3. [`apply`] the action, or call [`mkdir`], [`mkfile`], [`rm`],
//!    [`symlink`], [`copy`] with an owner from [`resolve_owner`].
//!
//! [`resolve_in_root`] is continuity's `fs.RootPath`: the path inside a root
//! with symlinks followed but never out of the root.
//!
//! # Safety on untrusted trees
//!
//! The daemon runs as root on trees built by strangers. Every path from an
//! action is resolved inside its root (symlinks followed there, `..`
//! stopping at the root), the final operation never follows a symlink, and
//! below the resolved destination a copy looks with `lstat` and replaces
//! what it finds instead of writing through it. A FIFO or device in a tree is
//! never opened. The trees are assumed not to change while an action runs
//! (BuildKit assumes the same); the walks hold no stack in proportion to
//! depth, so a deep tree is an error at worst, never a crash.
//!
//! # Differences from upstream, on purpose
//!
//! - `attemptUnpackDockerCompatibility`: archives are not unpacked; a
//!   source that looks like one (tar header, or gzip/bzip2/xz/zstd magic)
//!   fails with [`FileOpError::Unsupported`], anything else is copied.
//! - `mkfile` over an existing FIFO or device fails instead of writing to it.
//! - `required_paths` is checked after the copy, against the copied source
//!   paths (upstream checks it while checksumming the source).
//! - Error messages show in-tree paths everywhere (upstream trims the mount
//!   point from the innermost path only).

mod actions;
mod clone;
mod copy;
mod error;
mod glob;
mod modestr;
mod paths;
pub mod plan;
mod sys;
mod user;

use std::path::Path;

use bk_proto::pb::FileAction;
use bk_proto::pb::file_action::Action;

pub use actions::{mkdir, mkfile, rm, symlink};
pub use clone::{clone_tree, link_tree};
pub use copy::copy;
pub use error::FileOpError;
pub use paths::resolve_in_root;

/// The in-root paths (no leading `/`) a copy with wildcards takes for
/// `src`, in the order it copies them: what a content checksum must cover.
/// `None` when a match is not UTF-8 (it could not be named exactly).
pub fn wildcard_matches(
    root: &std::path::Path,
    src: &str,
    follow: bool,
) -> Result<Option<Vec<String>>, FileOpError> {
    let cleaned = paths::clean_path(src.as_bytes());
    Ok(glob::resolve_wildcards(root, &cleaned, follow)?
        .into_iter()
        .map(|m| String::from_utf8(m).ok())
        .collect())
}
pub use user::{ExecUser, Owner, owner_inputs, resolve_exec_user, resolve_owner};

/// The trees one action works with.
#[derive(Debug, Clone, Copy)]
pub struct ActionRoots<'a> {
    /// The tree the action changes (its `input`, already a private copy).
    pub dest: &'a Path,
    /// The copy source (`secondaryInput`); an empty directory for scratch.
    pub src: Option<&'a Path>,
    /// The tree of the owner's `user.byName.input`, if any.
    pub user: Option<&'a Path>,
    /// The tree of the owner's `group.byName.input`, if any.
    pub group: Option<&'a Path>,
}

/// Apply one action to `roots.dest`, resolving its owner first.
pub fn apply(action: &FileAction, roots: &ActionRoots<'_>) -> Result<(), FileOpError> {
    let owner = |chown| resolve_owner(chown, roots.user, roots.group);
    match &action.action {
        Some(Action::Mkdir(a)) => mkdir(roots.dest, a, owner(a.owner.as_ref())?),
        Some(Action::Mkfile(a)) => mkfile(roots.dest, a, owner(a.owner.as_ref())?),
        Some(Action::Symlink(a)) => symlink(roots.dest, a, owner(a.owner.as_ref())?),
        Some(Action::Rm(a)) => rm(roots.dest, a),
        Some(Action::Copy(a)) => {
            let src = roots.src.ok_or_else(|| {
                FileOpError::Invalid("copy needs a source tree (an empty one for scratch)".into())
            })?;
            copy(src, roots.dest, a, owner(a.owner.as_ref())?)
        }
        None => Err(FileOpError::Invalid("invalid action type: none".into())),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::ops::Deref;
    use std::path::Path;

    /// A temporary directory that derefs to its path.
    pub struct Tmp(tempfile::TempDir);

    impl Deref for Tmp {
        type Target = Path;
        fn deref(&self) -> &Path {
            self.0.path()
        }
    }

    pub fn tempdir() -> Tmp {
        Tmp(tempfile::tempdir().expect("tempdir"))
    }
}
