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
