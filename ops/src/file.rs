//! File ops (mkdir, mkfile, rm, symlink, copy) and merge, on snapshots.
//!
//! A file op's actions form a chain: each works on a tree (an input, scratch,
//! or an earlier action's result) and may read a second one (a copy's
//! source). Every tree an action writes starts as a copy of its base, so
//! inputs are never modified; intermediate trees that nothing else reads are
//! handed on rather than copied again.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bk_cache::{CacheManager, RecordType, Ref};
use bk_llb::Digest;
use bk_proto::pb;
use bk_proto::pb::file_action::Action;
use bk_solver::{Op, OpContext, OpError};

use crate::checksum::DigestMemo;

use crate::blocking;

/// One file op vertex.
pub struct FileOp {
    key: Digest,
    op: pb::FileOp,
    cache: CacheManager,
    memo: Arc<DigestMemo>,
    /// How many inputs the vertex has (indexes at or past it are action
    /// results).
    inputs: usize,
}

impl FileOp {
    /// `key` is the op's cache key material ([`bk_llb::Vertex::op_key`]).
    pub fn new(
        key: Digest,
        op: pb::FileOp,
        inputs: usize,
        cache: CacheManager,
        memo: Arc<DigestMemo>,
    ) -> FileOp {
        FileOp {
            key,
            op,
            cache,
            memo,
            inputs,
        }
    }

    /// Per op input: what copies read from it, when copying is all the op
    /// does with it (not a base tree, not an owner lookup); `None`
    /// otherwise.
    fn selectors(&self, inputs: usize) -> Vec<Option<Vec<Selector>>> {
        let mut out: Vec<Option<Vec<Selector>>> = vec![Some(Vec::new()); inputs];
        let mut used = vec![false; inputs];
        let input_of = |i: i64| usize::try_from(i).ok().filter(|i| *i < inputs);
        for action in &self.op.actions {
            if let Some(i) = input_of(action.input) {
                out[i] = None;
            }
            let chown = match &action.action {
                Some(Action::Copy(c)) => c.owner.as_ref(),
                Some(Action::Mkdir(m)) => m.owner.as_ref(),
                Some(Action::Mkfile(m)) => m.owner.as_ref(),
                Some(Action::Symlink(m)) => m.owner.as_ref(),
                _ => None,
            };
            let (user, group) = bk_fileops::owner_inputs(chown);
            for i in [user, group].into_iter().flatten().filter_map(input_of) {
                out[i] = None;
            }
            if let Some(i) = input_of(action.secondary_input) {
                used[i] = true;
                let selector = match &action.action {
                    Some(Action::Copy(c)) => Selector::of(c),
                    _ => None,
                };
                match (selector, out[i].as_mut()) {
                    (Some(sel), Some(list)) => list.push(sel),
                    _ => out[i] = None,
                }
            }
        }
        for (i, was_used) in used.iter().enumerate() {
            if !was_used {
                out[i] = None;
            }
        }
        out
    }
}

/// What one copy reads of its source tree.
#[derive(Clone, Debug)]
struct Selector {
    path: String,
    follow: bool,
    /// The path is a pattern the copy expands.
    wildcard: bool,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Selector {
    /// `None` when the copy reads the whole input unfiltered: the input's
    /// own key says as much as a checksum would, for free.
    fn of(c: &pb::FileActionCopy) -> Option<Selector> {
        let whole = matches!(c.src.trim_end_matches('/'), "" | "." | "/.");
        let filtered = !c.include_patterns.is_empty() || !c.exclude_patterns.is_empty();
        if whole && !filtered {
            return None;
        }
        Some(Selector {
            path: c.src.clone(),
            follow: c.follow_symlink,
            wildcard: c.allow_wildcard && c.src.contains(['*', '?', '[', '\\']),
            include: c.include_patterns.clone(),
            exclude: c.exclude_patterns.clone(),
        })
    }

    /// The checksum of what the copy reads in `root`; `None` when a plain
    /// path is missing (the copy will say so).
    fn checksum(
        &self,
        root: &std::path::Path,
        memo: &DigestMemo,
    ) -> Result<Option<Digest>, String> {
        let paths: Vec<String> = if self.wildcard {
            let matches = match bk_fileops::wildcard_matches(root, &self.path, self.follow) {
                Ok(Some(m)) => m,
                // Unnameable or unreadable: no content key, the copy decides.
                Ok(None) | Err(_) => return Ok(None),
            };
            matches.into_iter().map(|m| format!("/{m}")).collect()
        } else {
            vec![self.path.clone()]
        };
        let mut material = format!("selector v1\0{}\0", paths.len());
        for path in &paths {
            let sum = if self.include.is_empty() && self.exclude.is_empty() {
                crate::checksum::path_checksum(root, path, self.follow, memo)
            } else {
                crate::checksum::filtered_checksum(
                    root,
                    path,
                    self.follow,
                    &self.include,
                    &self.exclude,
                    memo,
                )
            }
            .map_err(|e| e.to_string())?;
            match sum {
                Some(sum) => {
                    material.push_str(path);
                    material.push('\0');
                    material.push_str(sum.as_str());
                    material.push('\0');
                }
                None if self.wildcard => {}
                None => return Ok(None),
            }
        }
        Ok(Some(Digest::of(material.as_bytes())))
    }
}

#[async_trait]
impl Op<Ref> for FileOp {
    async fn cache_key(&self, _ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        // What the op does; its inputs' keys are combined by the solver.
        Ok(self.key.clone())
    }

    fn has_content_key(&self) -> bool {
        self.selectors(self.inputs).iter().any(Option::is_some)
    }

    async fn content_key(
        &self,
        _ctx: &OpContext,
        input_keys: &[Digest],
        inputs: &[Ref],
    ) -> Result<Option<Digest>, OpError> {
        let selectors = self.selectors(inputs.len());
        let roots: Vec<PathBuf> = inputs.iter().map(|r| r.path().to_path_buf()).collect();
        let (keys, key, memo) = (input_keys.to_vec(), self.key.clone(), self.memo.clone());
        blocking(move || {
            let mut material = format!("fileop content v2\0{key}");
            for (i, selector) in selectors.iter().enumerate() {
                material.push('\0');
                match selector {
                    Some(selectors) => {
                        for sel in selectors {
                            let sum = sel.checksum(&roots[i], &memo).map_err(|e| {
                                OpError::new(format!("failed to checksum {}: {e}", sel.path))
                            })?;
                            match sum {
                                Some(sum) => material.push_str(sum.as_str()),
                                // Missing: no content key; the copy will report it.
                                None => return Ok(None),
                            }
                        }
                    }
                    None => material.push_str(keys.get(i).map(Digest::as_str).unwrap_or("")),
                }
            }
            Ok(Some(Digest::of(material.as_bytes())))
        })
        .await
    }

    async fn exec(&self, _ctx: &OpContext, inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let actions = self.op.actions.clone();
        let cache = self.cache.clone();
        let input_paths: Vec<PathBuf> = inputs.iter().map(|r| r.path().to_path_buf()).collect();
        let description = bk_llb::name::vertex_name(
            &bk_llb::Vertex {
                digest: self.key.clone(),
                op: pb::Op {
                    op: Some(pb::op::Op::File(self.op.clone())),
                    ..Default::default()
                },
                inputs: Vec::new(),
                metadata: Default::default(),
            },
            &|_| String::new(),
        );
        let parents: Vec<String> = inputs.iter().map(|r| r.id().to_string()).collect();
        let input_count = inputs.len();
        // Recorded on the blocking thread too: a build canceled meanwhile
        // still leaves only recorded snapshots behind.
        blocking(move || {
            let mut outputs: Vec<(i64, Ref)> = Vec::new();
            for (output, id) in run_actions(&cache, &actions, &input_paths)? {
                let r = cache
                    .commit(
                        &id,
                        RecordType::Regular,
                        &description,
                        parents.clone(),
                        false,
                    )
                    .map_err(|e| OpError::new(e.to_string()))?;
                if let Some(base) =
                    base_input(&actions, input_count, output).and_then(|i| parents.get(i))
                {
                    cache
                        .set_base(&id, base)
                        .map_err(|e| OpError::new(e.to_string()))?;
                }
                outputs.push((output, r));
            }
            outputs.sort_by_key(|(o, _)| *o);
            Ok(outputs.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }
}

/// The op input an output's tree starts from (following the chain of
/// actions it was built by); `None` for scratch.
fn base_input(actions: &[pb::FileAction], inputs: usize, output: i64) -> Option<usize> {
    let mut index = actions.iter().find(|a| a.output == output)?.input;
    for _ in 0..=actions.len() {
        let i = usize::try_from(index).ok()?;
        if i < inputs {
            return Some(i);
        }
        index = actions.get(i - inputs)?.input;
    }
    None
}

/// Runs the actions the outputs need, in plan order; returns `(output
/// index, snapshot id)` per output. A result only one reader uses is
/// changed in place by it; everything else starts from a copy.
fn run_actions(
    cache: &CacheManager,
    actions: &[pb::FileAction],
    inputs: &[PathBuf],
) -> Result<Vec<(i64, String)>, OpError> {
    use bk_fileops::plan::Ref as Index;
    let err = |e: bk_fileops::FileOpError| OpError::new(e.to_string());
    let cache_err = |e: bk_cache::CacheError| OpError::new(e.to_string());
    let plan = bk_fileops::plan::plan(inputs.len(), actions).map_err(err)?;
    let index = |i: i64| Index::of(i, inputs.len(), actions.len());
    let mut results: Vec<Option<(String, PathBuf)>> = vec![None; actions.len()];
    // Directories this op created, to remove unless they become outputs.
    let mut created: Vec<PathBuf> = Vec::new();
    let outcome = (|| {
        let mut empty: Option<PathBuf> = None;
        for &k in &plan.order {
            let action = &actions[k];
            let path_of = |r: Option<Index>,
                           results: &[Option<(String, PathBuf)>]|
             -> Result<Option<PathBuf>, OpError> {
                match r {
                    Some(Index::Input(i)) => Ok(Some(inputs[i].clone())),
                    Some(Index::Action(j)) => results[j]
                        .as_ref()
                        .map(|(_, p)| Some(p.clone()))
                        .ok_or_else(|| {
                            OpError::new(format!(
                                "file action {k} reads action {j}, which has not run"
                            ))
                        }),
                    Some(Index::Scratch) | None => Ok(None),
                }
            };
            let base = index(action.input);
            let (id, dest) = match base {
                Some(Index::Action(j)) if !plan.shared[j] => {
                    results[j].take().ok_or_else(|| {
                        OpError::new(format!(
                            "file action {k} reads action {j}, which has not run"
                        ))
                    })?
                }
                _ => {
                    let (id, path) = cache.create_dir().map_err(cache_err)?;
                    created.push(path.clone());
                    if let Some(src) = path_of(base, &results)? {
                        std::fs::remove_dir(&path).map_err(|e| OpError::new(e.to_string()))?;
                        bk_fileops::clone_tree(&src, &path).map_err(err)?;
                    }
                    (id, path)
                }
            };
            let mut scratch = || -> Result<PathBuf, OpError> {
                if let Some(p) = &empty {
                    return Ok(p.clone());
                }
                let (_, path) = cache.create_dir().map_err(cache_err)?;
                created.push(path.clone());
                empty = Some(path.clone());
                Ok(path)
            };
            let src = match path_of(index(action.secondary_input), &results)? {
                Some(p) => Some(p),
                None if matches!(action.action, Some(pb::file_action::Action::Copy(_))) => {
                    Some(scratch()?)
                }
                None => None,
            };
            let chown = match &action.action {
                Some(pb::file_action::Action::Copy(c)) => c.owner.as_ref(),
                Some(pb::file_action::Action::Mkdir(m)) => m.owner.as_ref(),
                Some(pb::file_action::Action::Mkfile(m)) => m.owner.as_ref(),
                Some(pb::file_action::Action::Symlink(m)) => m.owner.as_ref(),
                _ => None,
            };
            let (user_input, group_input) = bk_fileops::owner_inputs(chown);
            let user = path_of(user_input.and_then(index), &results)?;
            let group = path_of(group_input.and_then(index), &results)?;
            let roots = bk_fileops::ActionRoots {
                dest: &dest,
                src: src.as_deref(),
                user: user.as_deref(),
                group: group.as_deref(),
            };
            bk_fileops::apply(action, &roots).map_err(err)?;
            results[k] = Some((id, dest));
        }
        let mut outputs = Vec::new();
        for (output, &k) in plan.outputs.iter().enumerate() {
            let (id, _) = results[k]
                .as_ref()
                .ok_or_else(|| OpError::new(format!("output {output} was not produced")))?;
            outputs.push((output as i64, id.clone()));
        }
        Ok(outputs)
    })();
    let kept: std::collections::HashSet<PathBuf> = match &outcome {
        Ok(outputs) => outputs
            .iter()
            .filter_map(|(_, id)| {
                results
                    .iter()
                    .flatten()
                    .find(|(rid, _)| rid == id)
                    .map(|(_, p)| p.clone())
            })
            .collect(),
        Err(_) => Default::default(),
    };
    for path in created {
        if !kept.contains(&path) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    outcome
}

/// `MergeOp`: the inputs layered in order, later ones winning.
pub struct MergeOp {
    key: Digest,
    cache: CacheManager,
}

impl MergeOp {
    pub fn new(key: Digest, _op: pb::MergeOp, cache: CacheManager) -> MergeOp {
        MergeOp { key, cache }
    }
}

#[async_trait]
impl Op<Ref> for MergeOp {
    async fn cache_key(&self, _ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        Ok(self.key.clone())
    }

    async fn exec(&self, _ctx: &OpContext, inputs: Vec<Ref>) -> Result<Vec<Ref>, OpError> {
        let cache = self.cache.clone();
        let sources: Vec<PathBuf> = inputs.iter().map(|r| r.path().to_path_buf()).collect();
        let parents: Vec<String> = inputs.iter().map(|r| r.id().to_string()).collect();
        blocking(move || {
            let (id, dest) = cache
                .create_dir()
                .map_err(|e| OpError::new(e.to_string()))?;
            let mut removed = Vec::new();
            for (src, parent) in sources.iter().zip(&parents) {
                // A diff's removals apply to what lies below it.
                let deletions = cache
                    .record(parent)
                    .ok()
                    .flatten()
                    .map(|r| r.deletions)
                    .unwrap_or_default();
                let layered = crate::tree::remove_paths(&dest, &deletions)
                    .and_then(|()| crate::tree::overlay_onto(src, &dest));
                if let Err(e) = layered {
                    let _ = std::fs::remove_dir_all(&dest);
                    return Err(OpError::new(format!("failed to merge: {e}")));
                }
                removed.extend(deletions);
            }
            // Removals the result does not undo stay with it, for a merge
            // of this merge.
            removed.sort();
            removed.dedup();
            removed.retain(|p| !crate::tree::exists(&dest, p));
            let first = parents.first().cloned();
            let merged = cache
                .commit_with_deletions(&id, RecordType::Regular, "merge", parents, false, removed)
                .map_err(|e| OpError::new(e.to_string()))?;
            if let Some(first) = first {
                cache
                    .set_base(&id, &first)
                    .map_err(|e| OpError::new(e.to_string()))?;
            }
            Ok(vec![merged])
        })
        .await
    }
}
