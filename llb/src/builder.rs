//! Building LLB in Rust, for our frontends and tests.
//!
//! A [`State`] is a filesystem: [`scratch`], a source ([`local`], [`image`],
//! [`source`]), or the result of an op on other states ([`State::file`],
//! [`merge`], [`diff`]). [`State::marshal`] emits a `pb.Definition` whose bytes
//! are deterministic (prost writes fields in number order; maps are
//! `BTreeMap`), so the same graph always has the same digests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bk_proto::pb::{self, file_action::Action, op::Op as OpKind};
use prost::Message;

use crate::Digest;
use crate::name::CUSTOM_NAME;

/// One output of an op.
#[derive(Clone, Debug)]
struct Output {
    node: Arc<Node>,
    index: i64,
}

#[derive(Debug)]
struct Node {
    /// The op without its `inputs`, which are filled in at marshal time.
    op: pb::Op,
    inputs: Vec<Output>,
    metadata: pb::OpMetadata,
}

impl Drop for Node {
    /// Unlinks long chains iteratively; a recursive drop of a graph
    /// thousands of ops deep would overflow the stack.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.inputs);
        while let Some(output) = stack.pop() {
            if let Some(mut node) = Arc::into_inner(output.node) {
                stack.append(&mut node.inputs);
            }
        }
    }
}

/// A filesystem state; `scratch` is the empty one.
#[derive(Clone, Debug, Default)]
pub struct State {
    output: Option<Output>,
}

/// The empty filesystem.
pub fn scratch() -> State {
    State::default()
}

/// Any source op: `identifier` such as `local://context` or
/// `docker-image://docker.io/library/busybox:latest`.
pub fn source(identifier: impl Into<String>, attrs: BTreeMap<String, String>) -> State {
    State::from_op(
        OpKind::Source(pb::SourceOp {
            identifier: identifier.into(),
            attrs,
        }),
        Vec::new(),
    )
}

/// A directory the client sends through its session.
pub fn local(name: &str, attrs: BTreeMap<String, String>) -> State {
    source(format!("local://{name}"), attrs)
}

/// A registry image, by an already normalised reference.
pub fn image(reference: &str) -> State {
    source(format!("docker-image://{reference}"), BTreeMap::new())
}

/// Layers `states` in order; later ones win.
pub fn merge(states: &[State]) -> State {
    let mut inputs = Vec::new();
    let mut merge_inputs = Vec::new();
    for state in states {
        if let Some(out) = &state.output {
            merge_inputs.push(pb::MergeInput {
                input: inputs.len() as i64,
            });
            inputs.push(out.clone());
        }
    }
    State::from_op(
        OpKind::Merge(pb::MergeOp {
            inputs: merge_inputs,
        }),
        inputs,
    )
}

/// The changes that turn `lower` into `upper`.
pub fn diff(lower: &State, upper: &State) -> State {
    let mut inputs = Vec::new();
    let mut index = |s: &State| match &s.output {
        Some(out) => {
            inputs.push(out.clone());
            inputs.len() as i64 - 1
        }
        None => -1,
    };
    let lower_index = index(lower);
    let upper_index = index(upper);
    State::from_op(
        OpKind::Diff(pb::DiffOp {
            lower: Some(pb::LowerDiffInput { input: lower_index }),
            upper: Some(pb::UpperDiffInput { input: upper_index }),
        }),
        inputs,
    )
}

impl State {
    fn from_op(op: OpKind, inputs: Vec<Output>) -> State {
        State {
            output: Some(Output {
                node: Arc::new(Node {
                    op: pb::Op {
                        op: Some(op),
                        ..Default::default()
                    },
                    inputs,
                    metadata: pb::OpMetadata::default(),
                }),
                index: 0,
            }),
        }
    }

    pub fn is_scratch(&self) -> bool {
        self.output.is_none()
    }

    /// Sets the display name progress output shows for this state's op.
    pub fn with_name(self, name: &str) -> State {
        self.with_metadata(|m| {
            m.description
                .insert(CUSTOM_NAME.to_string(), name.to_string());
        })
    }

    /// Runs the op even when a cached result exists.
    pub fn ignore_cache(self) -> State {
        self.with_metadata(|m| m.ignore_cache = true)
    }

    fn with_metadata(self, edit: impl FnOnce(&mut pb::OpMetadata)) -> State {
        let Some(out) = self.output else {
            return self;
        };
        let mut metadata = out.node.metadata.clone();
        edit(&mut metadata);
        State {
            output: Some(Output {
                node: Arc::new(Node {
                    op: out.node.op.clone(),
                    inputs: out.node.inputs.clone(),
                    metadata,
                }),
                index: out.index,
            }),
        }
    }

    /// Applies file actions to this state.
    pub fn file(&self, actions: FileActions) -> State {
        let mut inputs: Vec<Output> = Vec::new();
        let mut index_of = |s: &State| -> i64 {
            let Some(out) = &s.output else {
                return -1;
            };
            let existing = inputs
                .iter()
                .position(|i| Arc::ptr_eq(&i.node, &out.node) && i.index == out.index);
            match existing {
                Some(position) => position as i64,
                None => {
                    inputs.push(out.clone());
                    inputs.len() as i64 - 1
                }
            }
        };
        let base = index_of(self);
        let secondary: Vec<i64> = actions
            .actions
            .iter()
            .map(|(_, s)| s.as_ref().map(&mut index_of).unwrap_or(-1))
            .collect();
        let count = inputs.len() as i64;
        let last = actions.actions.len().saturating_sub(1);
        let file_actions = actions
            .actions
            .into_iter()
            .zip(secondary)
            .enumerate()
            .map(|(i, ((action, _), secondary_input))| pb::FileAction {
                // Each action works on the previous one's result.
                input: if i == 0 { base } else { count + i as i64 - 1 },
                secondary_input,
                output: if i == last { 0 } else { -1 },
                action: Some(action),
            })
            .collect();
        State::from_op(
            OpKind::File(pb::FileOp {
                actions: file_actions,
            }),
            inputs,
        )
    }

    /// The definition of this state, ready for `SolveRequest.Definition`.
    /// Scratch has an empty definition.
    pub fn marshal(&self) -> pb::Definition {
        let mut def = pb::Definition::default();
        let Some(root) = &self.output else {
            return def;
        };
        let mut done: HashMap<usize, Digest> = HashMap::new();
        let mut seen_digests = std::collections::HashSet::new();
        let root_digest = marshal_node(&root.node, &mut done, &mut seen_digests, &mut def);
        let terminal = pb::Op {
            inputs: vec![pb::Input {
                digest: root_digest.to_string(),
                index: root.index,
            }],
            ..Default::default()
        };
        def.def.push(terminal.encode_to_vec());
        def
    }
}

/// Encodes `node` after its inputs (post-order, iteratively so deep chains
/// cannot overflow the stack); returns its digest.
fn marshal_node(
    root: &Arc<Node>,
    done: &mut HashMap<usize, Digest>,
    seen: &mut std::collections::HashSet<Digest>,
    def: &mut pb::Definition,
) -> Digest {
    let key = |n: &Arc<Node>| Arc::as_ptr(n) as usize;
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
    while let Some((node, inputs_done)) = stack.pop() {
        if done.contains_key(&key(&node)) {
            continue;
        }
        if !inputs_done {
            stack.push((node.clone(), true));
            for input in node.inputs.iter().rev() {
                if !done.contains_key(&key(&input.node)) {
                    stack.push((input.node.clone(), false));
                }
            }
            continue;
        }
        let mut op = node.op.clone();
        op.inputs = node
            .inputs
            .iter()
            .map(|i| pb::Input {
                digest: done
                    .get(&key(&i.node))
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                index: i.index,
            })
            .collect();
        let bytes = op.encode_to_vec();
        let digest = Digest::of(&bytes);
        if seen.insert(digest.clone()) {
            def.def.push(bytes);
            if node.metadata != pb::OpMetadata::default() {
                def.metadata
                    .insert(digest.to_string(), node.metadata.clone());
            }
        }
        done.insert(key(&node), digest);
    }
    done.get(&key(root))
        .cloned()
        .unwrap_or_else(|| Digest::of(b""))
}

/// A sequence of file actions, each applied to the previous result.
#[derive(Debug, Default)]
pub struct FileActions {
    actions: Vec<(Action, Option<State>)>,
}

/// Copy options beyond source and destination.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub follow_symlinks: bool,
    pub copy_dir_contents: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    /// `-1` keeps the source mode.
    pub mode: i32,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub owner: Option<pb::ChownOpt>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            follow_symlinks: true,
            copy_dir_contents: true,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            mode: -1,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            owner: None,
        }
    }
}

impl FileActions {
    pub fn new() -> FileActions {
        FileActions::default()
    }

    pub fn mkdir(mut self, path: &str, mode: i32, make_parents: bool) -> FileActions {
        self.actions.push((
            Action::Mkdir(pb::FileActionMkDir {
                path: path.to_string(),
                mode,
                make_parents,
                timestamp: -1,
                ..Default::default()
            }),
            None,
        ));
        self
    }

    pub fn mkfile(mut self, path: &str, mode: i32, data: &[u8]) -> FileActions {
        self.actions.push((
            Action::Mkfile(pb::FileActionMkFile {
                path: path.to_string(),
                mode,
                data: data.to_vec(),
                timestamp: -1,
                ..Default::default()
            }),
            None,
        ));
        self
    }

    pub fn rm(mut self, path: &str, allow_not_found: bool, allow_wildcard: bool) -> FileActions {
        self.actions.push((
            Action::Rm(pb::FileActionRm {
                path: path.to_string(),
                allow_not_found,
                allow_wildcard,
            }),
            None,
        ));
        self
    }

    pub fn symlink(mut self, target: &str, path: &str) -> FileActions {
        self.actions.push((
            Action::Symlink(pb::FileActionSymlink {
                oldpath: target.to_string(),
                newpath: path.to_string(),
                timestamp: -1,
                ..Default::default()
            }),
            None,
        ));
        self
    }

    /// Copies `src` of `from` to `dest` of the state being built.
    pub fn copy(mut self, from: &State, src: &str, dest: &str, opts: CopyOptions) -> FileActions {
        self.actions.push((
            Action::Copy(pb::FileActionCopy {
                src: src.to_string(),
                dest: dest.to_string(),
                owner: opts.owner,
                mode: opts.mode,
                follow_symlink: opts.follow_symlinks,
                dir_copy_contents: opts.copy_dir_contents,
                create_dest_path: opts.create_dest_path,
                allow_wildcard: opts.allow_wildcard,
                allow_empty_wildcard: opts.allow_empty_wildcard,
                timestamp: -1,
                include_patterns: opts.include_patterns,
                exclude_patterns: opts.exclude_patterns,
                ..Default::default()
            }),
            Some(from.clone()),
        ));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Graph;

    fn copy_context() -> State {
        let ctx = local("context", BTreeMap::new());
        scratch()
            .file(FileActions::new().copy(&ctx, "/", "/out/", CopyOptions::default()))
            .with_name("[1/1] COPY . /out/")
    }

    #[test]
    fn marshal_is_deterministic_and_decodes() {
        let a = copy_context().marshal();
        let b = copy_context().marshal();
        assert_eq!(a, b);
        let graph = Graph::decode(&a).unwrap();
        assert_eq!(graph.vertices.len(), 2);
        let names = crate::name::names(&graph);
        assert_eq!(names[&graph.root.0], "[1/1] COPY . /out/");
        let file = &graph.vertices[&graph.root.0];
        let Some(OpKind::File(f)) = &file.op.op else {
            panic!("not a file op")
        };
        assert_eq!(f.actions[0].input, -1, "scratch base");
        assert_eq!(f.actions[0].secondary_input, 0);
        assert_eq!(f.actions[0].output, 0);
        assert!(scratch().marshal().def.is_empty());
    }

    #[test]
    fn shared_inputs_are_emitted_once_and_chains_link() {
        let base = image("docker.io/library/busybox:latest");
        let step = base.file(
            FileActions::new()
                .mkdir("/a", 0o755, true)
                .mkfile("/a/f", 0o644, b"hi")
                .copy(&base, "/bin/busybox", "/a/bb", CopyOptions::default()),
        );
        let both = merge(&[base.clone(), step.clone(), base.clone()]);
        let d = diff(&base, &both).marshal();
        let graph = Graph::decode(&d).unwrap();
        assert_eq!(graph.vertices.len(), 4, "image, file, merge, diff");
        let step_digest = Graph::decode(&step.marshal()).unwrap().root.0;
        let Some(OpKind::File(f)) = &graph.vertices[&step_digest].op.op else {
            panic!("not a file op")
        };
        let inputs: Vec<_> = f
            .actions
            .iter()
            .map(|a| (a.input, a.secondary_input, a.output))
            .collect();
        assert_eq!(inputs, vec![(0, -1, -1), (1, -1, -1), (2, 0, 0)]);
    }

    #[test]
    fn deep_chains_do_not_overflow() {
        let mut s = scratch();
        for i in 0..20_000 {
            s = s.file(FileActions::new().mkfile(&format!("/f{i}"), 0o644, b""));
        }
        let def = s.marshal();
        assert_eq!(def.def.len(), 20_001);
        assert!(Graph::decode(&def).is_ok());
    }
}
