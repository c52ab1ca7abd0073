//! Whole-tree operations on snapshot directories.

use std::path::Path;

use bk_proto::pb;

/// Fills the empty directory `dst` with a copy of `src` (reflinks where the
/// filesystem allows).
pub fn clone_into(src: &Path, dst: &Path) -> Result<(), bk_fileops::FileOpError> {
    bk_fileops::clone_tree(src, dst)
}

/// Copies everything in `src` over `dst`, replacing what is there: one
/// layer of a merge.
pub fn overlay_onto(src: &Path, dst: &Path) -> Result<(), bk_fileops::FileOpError> {
    let copy = pb::FileActionCopy {
        src: "/".to_string(),
        dest: "/".to_string(),
        mode: -1,
        follow_symlink: false,
        dir_copy_contents: true,
        create_dest_path: true,
        allow_wildcard: false,
        allow_empty_wildcard: true,
        timestamp: -1,
        always_replace_existing_dest_paths: true,
        ..Default::default()
    };
    let action = pb::FileAction {
        input: 0,
        secondary_input: 1,
        output: 0,
        action: Some(pb::file_action::Action::Copy(copy)),
    };
    let roots = bk_fileops::ActionRoots {
        dest: dst,
        src: Some(src),
        user: None,
        group: None,
    };
    bk_fileops::apply(&action, &roots)
}

/// Removes `paths` (absolute in the tree) from `root`, never following a
/// symlink out of it; missing paths are fine.
pub fn remove_paths(root: &Path, paths: &[String]) -> Result<(), bk_fileops::FileOpError> {
    for path in paths {
        let rm = pb::FileActionRm {
            path: path.clone(),
            allow_not_found: true,
            allow_wildcard: false,
        };
        bk_fileops::rm(root, &rm)?;
    }
    Ok(())
}

/// Whether `path` (absolute in the tree) exists in `root`, the last
/// component not followed.
pub fn exists(root: &Path, path: &str) -> bool {
    bk_fileops::resolve_in_root(root, path, false)
        .map(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or(false)
}
