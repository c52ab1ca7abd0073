//! `DiffOp`: the changes that turn one tree into another.
//!
//! The result is a snapshot holding what the upper tree adds or changes
//! (hard links to its files), and a list of the paths it removes, kept in
//! the snapshot's record. Exported or mounted on its own, a diff shows only
//! its additions, as in BuildKit; merged onto another tree
//! (`bk_ops::file::MergeOp`), its removals apply too.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_llb::Digest;
use bk_proto::pb;
use bk_solver::{Op, OpContext, OpError};

use crate::overlay;

/// One diff vertex.
pub struct DiffOp {
    key: Digest,
    op: pb::DiffOp,
    cache: CacheManager,
}

impl DiffOp {
    pub(crate) fn new(key: Digest, op: pb::DiffOp, cache: CacheManager) -> DiffOp {
        DiffOp { key, op, cache }
    }
}

fn input(index: Option<i64>, inputs: &[Ref], which: &str) -> Result<Option<Ref>, OpError> {
    match index.unwrap_or(-1) {
        -1 => Ok(None),
        i if i >= 0 && (i as usize) < inputs.len() => Ok(Some(inputs[i as usize].clone())),
        i => Err(OpError::new(format!(
            "diff {which} refers to input {i}, which does not exist"
        ))),
    }
}

#[async_trait]
impl Op<Ref> for DiffOp {
    async fn cache_key(&self, _ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        Ok(self.key.clone())
    }

    async fn exec(&self, _ctx: &OpContext, inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let lower = input(self.op.lower.as_ref().map(|l| l.input), &inputs, "lower")?;
        let upper = input(self.op.upper.as_ref().map(|u| u.input), &inputs, "upper")?;
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || {
            let (id, out) = cache
                .create_dir()
                .map_err(|e| OpError::new(e.to_string()))?;
            let made = make_diff(lower.as_ref(), upper.as_ref(), &out);
            let deletions = match made {
                Ok(d) => d,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&out);
                    return Err(e);
                }
            };
            let parents = lower
                .iter()
                .chain(upper.iter())
                .map(|r| r.id().to_string())
                .collect();
            let diff = cache
                .commit_with_deletions(&id, RecordType::Regular, "diff", parents, false, deletions)
                .map_err(|e| OpError::new(e.to_string()))?;
            Ok(vec![diff])
        })
        .await
        .map_err(|e| OpError::new(e.to_string()))?
    }
}

/// Fills `out` with the diff and returns the removed paths.
fn make_diff(lower: Option<&Ref>, upper: Option<&Ref>, out: &Path) -> Result<Vec<String>, OpError> {
    let fail = |e: &dyn std::fmt::Display| OpError::new(format!("failed to compute diff: {e}"));
    let empty;
    let lower_path: &Path = match lower {
        Some(r) => r.path(),
        None => {
            empty = tempdir_beside(out, "lower").map_err(|e| fail(&e))?;
            empty.as_path()
        }
    };
    let result = match upper {
        Some(u) => overlay::diff_trees(lower_path, u.path(), out).map_err(|e| fail(&e)),
        None => {
            // Everything the lower has goes.
            let empty_upper = tempdir_beside(out, "upper").map_err(|e| fail(&e))?;
            let r = overlay::diff_trees(lower_path, &empty_upper, out).map_err(|e| fail(&e));
            let _ = std::fs::remove_dir(&empty_upper);
            r
        }
    };
    if lower.is_none() {
        let _ = std::fs::remove_dir(lower_path);
    }
    result?;
    let mut deletions = Vec::new();
    take_whiteouts(out, "", &mut deletions).map_err(|e| fail(&e))?;
    deletions.sort();
    Ok(deletions)
}

/// An empty directory next to `out` (same filesystem, removed by the
/// caller).
fn tempdir_beside(out: &Path, role: &str) -> std::io::Result<PathBuf> {
    let dir = out.with_file_name(format!(
        "{}-empty-{role}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("diff")
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Removes the whiteouts under `dir` and records the paths they stand for.
/// The tree was just written by us: no symlink is followed (only real
/// directories are entered).
fn take_whiteouts(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "non-UTF-8 name under {}",
                dir.display()
            )));
        };
        let path = entry.path();
        let child = format!("{rel}/{name}");
        let meta = std::fs::symlink_metadata(&path)?;
        if overlay::is_whiteout(&meta) {
            std::fs::remove_file(&path)?;
            out.push(child);
        } else if meta.is_dir() {
            take_whiteouts(&path, &child, out)?;
        }
    }
    Ok(())
}
