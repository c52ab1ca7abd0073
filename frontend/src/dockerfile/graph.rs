//! The LLB graph the Dockerfile converter writes, marshalled the way
//! BuildKit's Go client (`client/llb`) marshals it.
//!
//! `bk_llb::builder` writes plain LLB for tests and simple frontends; the
//! converter needs what Go's client adds around each op and what BuildKit
//! decides only at marshal time: every op carries `constraints` (empty),
//! image sources and execs a `platform` (the stage's, else the build's
//! default), file and merge ops none; metadata lists the capabilities each op
//! needs (`source.image`, `exec.meta.base`, `exec.mount.cache`, `file.base`,
//! …), the terminal op `constraints` and `platform`; exec inputs are shared
//! by digest and mounts sorted by destination; the build context is a source
//! whose attributes are known only after every stage has been dispatched
//! ([`Out::later`]). Source locations become the definition's source map.
//!
//! Nothing is encoded until [`marshal`]; deep chains are walked and dropped
//! without recursion.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use bk_llb::Digest;
use bk_proto::pb::{self, file_action::Action, op::Op as OpKind};
use prost::Message;

use super::parser::LineRange;

/// Where an input comes from: an op's output, or an output decided later.
#[derive(Clone, Debug)]
pub(crate) enum Out {
    /// Output `index` of an op.
    Op(Arc<Node>, i64),
    /// Filled in once known (the build context after dispatch).
    Later(Arc<OnceLock<Out>>),
}

impl Out {
    /// An output to be set with [`Out::set_later`].
    pub(crate) fn later() -> (Out, Arc<OnceLock<Out>>) {
        let cell = Arc::new(OnceLock::new());
        (Out::Later(cell.clone()), cell)
    }

    /// The op behind this output and its index.
    fn resolve(&self) -> Result<(&Arc<Node>, i64), String> {
        let mut cur = self;
        // Bounded: a later output is set once, to an output made before it.
        for _ in 0..64 {
            match cur {
                Out::Op(node, index) => return Ok((node, *index)),
                Out::Later(cell) => match cell.get() {
                    Some(next) => cur = next,
                    None => return Err("internal error: build context not set".to_owned()),
                },
            }
        }
        Err("internal error: unresolvable state".to_owned())
    }
}

/// Metadata of an op, beside its capabilities.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpMeta {
    pub description: BTreeMap<String, String>,
    pub ignore_cache: bool,
    pub progress_group: Option<pb::ProgressGroup>,
    /// Dockerfile lines, for the source map.
    pub locations: Vec<LineRange>,
}

impl OpMeta {
    /// Sets the display name (`llb.customname`).
    pub(crate) fn name(mut self, name: impl Into<String>) -> OpMeta {
        self.description
            .insert("llb.customname".to_owned(), name.into());
        self
    }

    /// Sets BuildKit's `com.docker.dockerfile.v1.command` description.
    pub(crate) fn command(mut self, code: impl Into<String>) -> OpMeta {
        self.description
            .insert("com.docker.dockerfile.v1.command".to_owned(), code.into());
        self
    }
}

/// One op of the graph.
#[derive(Debug)]
pub(crate) struct Node {
    kind: Kind,
    meta: OpMeta,
}

#[derive(Debug)]
enum Kind {
    Source {
        identifier: String,
        attrs: BTreeMap<String, String>,
        platform: Option<pb::Platform>,
        caps: Vec<&'static str>,
    },
    File {
        base: Option<Out>,
        actions: Vec<(Action, Option<Option<Out>>)>,
    },
    Exec(Box<ExecSpec>),
    Merge {
        inputs: Vec<Out>,
    },
    /// An op of a definition handed in whole (a frontend input).
    Imported {
        op: Box<pb::Op>,
        inputs: Vec<Out>,
        metadata: Box<pb::OpMetadata>,
    },
}

impl Node {
    fn children(&self) -> Vec<&Out> {
        match &self.kind {
            Kind::Source { .. } => Vec::new(),
            Kind::File { base, actions } => base
                .iter()
                .chain(
                    actions
                        .iter()
                        .filter_map(|(_, s)| s.as_ref().and_then(|s| s.as_ref())),
                )
                .collect(),
            Kind::Exec(e) => e.mounts.iter().filter_map(|m| m.source.as_ref()).collect(),
            Kind::Merge { inputs } | Kind::Imported { inputs, .. } => inputs.iter().collect(),
        }
    }

    fn take_children(&mut self) -> Vec<Out> {
        match &mut self.kind {
            Kind::Source { .. } => Vec::new(),
            Kind::File { base, actions } => base
                .take()
                .into_iter()
                .chain(actions.drain(..).filter_map(|(_, s)| s.flatten()))
                .collect(),
            Kind::Exec(e) => e.mounts.drain(..).filter_map(|m| m.source).collect(),
            Kind::Merge { inputs } | Kind::Imported { inputs, .. } => std::mem::take(inputs),
        }
    }
}

impl Drop for Node {
    /// Unlinks long chains iteratively: a recursive drop of a Dockerfile
    /// with thousands of steps would overflow the stack.
    fn drop(&mut self) {
        let mut stack = self.take_children();
        while let Some(out) = stack.pop() {
            match out {
                Out::Op(node, _) => {
                    if let Some(mut node) = Arc::into_inner(node) {
                        stack.append(&mut node.take_children());
                    }
                }
                Out::Later(cell) => {
                    if let Some(next) = Arc::into_inner(cell).and_then(OnceLock::into_inner) {
                        stack.push(next);
                    }
                }
            }
        }
    }
}

fn new_out(kind: Kind, meta: OpMeta) -> Out {
    Out::Op(Arc::new(Node { kind, meta }), 0)
}

/// A source op; `platform` is kept only for image sources, as in Go.
pub(crate) fn source(
    identifier: String,
    attrs: BTreeMap<String, String>,
    platform: Option<pb::Platform>,
    caps: Vec<&'static str>,
    meta: OpMeta,
) -> Out {
    let platform = platform.filter(|_| {
        identifier.starts_with("docker-image://") || identifier.starts_with("oci-layout://")
    });
    new_out(
        Kind::Source {
            identifier,
            attrs,
            platform,
            caps,
        },
        meta,
    )
}

/// File actions on one state, each on the previous one's result.
#[derive(Debug, Default)]
pub(crate) struct FileActions {
    actions: Vec<(Action, Option<Option<Out>>)>,
}

impl FileActions {
    /// Adds an action; copies name their source (`None` is scratch). Owners
    /// by name are looked up in the state acted on.
    pub(crate) fn push(&mut self, action: Action, copy_source: Option<Option<Out>>) {
        self.actions.push((action, copy_source));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// A file op on `base` (`None` is scratch).
pub(crate) fn file(base: Option<Out>, actions: FileActions, meta: OpMeta) -> Out {
    new_out(
        Kind::File {
            base,
            actions: actions.actions,
        },
        meta,
    )
}

/// A merge of two or more states.
pub(crate) fn merge(inputs: Vec<Out>, meta: OpMeta) -> Out {
    new_out(Kind::Merge { inputs }, meta)
}

/// One mount of an exec (not secrets or SSH).
#[derive(Debug, Clone)]
pub(crate) struct ExecMount {
    pub target: String,
    /// `None` is scratch.
    pub source: Option<Out>,
    pub readonly: bool,
    pub selector: String,
    /// Cache id and sharing.
    pub cache: Option<(String, pb::CacheSharingOpt)>,
    /// Tmpfs size.
    pub tmpfs: Option<i64>,
    /// BuildKit's `ForceNoOutput`.
    pub no_output: bool,
}

impl ExecMount {
    pub(crate) fn bind(target: &str, source: Option<Out>) -> ExecMount {
        ExecMount {
            target: target.to_owned(),
            source,
            readonly: false,
            selector: String::new(),
            cache: None,
            tmpfs: None,
            no_output: false,
        }
    }

    fn has_output(&self) -> bool {
        !self.no_output && !self.readonly && self.cache.is_none() && self.tmpfs.is_none()
    }
}

/// A secret of an exec: a file mount, an environment variable or both.
#[derive(Debug, Clone)]
pub(crate) struct SecretSpec {
    pub id: String,
    pub target: Option<String>,
    pub env: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub optional: bool,
}

/// An SSH agent socket of an exec.
#[derive(Debug, Clone)]
pub(crate) struct SshSpec {
    pub id: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub optional: bool,
}

/// An exec before marshalling.
#[derive(Debug)]
pub(crate) struct ExecSpec {
    pub meta: pb::Meta,
    pub network: pb::NetMode,
    pub security: pb::SecurityMode,
    /// The root (`/`) first; sorted by target when finished.
    pub mounts: Vec<ExecMount>,
    pub secrets: Vec<SecretSpec>,
    pub ssh: Vec<SshSpec>,
    pub cdi_devices: Vec<pb::CdiDevice>,
    pub proxy_env: Option<pb::ProxyEnv>,
    /// The stage's platform, if it has one.
    pub platform: Option<pb::Platform>,
    /// Caps known before marshalling (`exec.meta.setsdefaultpath`).
    pub extra_caps: Vec<&'static str>,
}

/// The outputs of a finished exec.
pub(crate) struct ExecOutputs {
    node: Arc<Node>,
    /// Each mount's target and output index (`None`: no output).
    outputs: Vec<(String, Option<i64>)>,
}

impl ExecOutputs {
    /// The state of the mount at `target` after the run: its output, or
    /// `None` when it has none.
    pub(crate) fn output(&self, target: &str) -> Option<Out> {
        self.outputs
            .iter()
            .find(|(t, _)| t == target)
            .and_then(|(_, i)| *i)
            .map(|i| Out::Op(self.node.clone(), i))
    }
}

/// Finishes an exec: mounts sorted by target (stably), SSH sockets given
/// their default paths and `SSH_AUTH_SOCK`, outputs numbered.
pub(crate) fn exec(mut spec: ExecSpec, meta: OpMeta) -> ExecOutputs {
    spec.mounts.sort_by(|a, b| a.target.cmp(&b.target));
    for (i, s) in spec.ssh.iter_mut().enumerate() {
        if s.target.is_empty() {
            s.target = format!("/run/buildkit/ssh_agent.{i}");
        }
    }
    if let Some(first) = spec.ssh.first() {
        let set = spec
            .meta
            .env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == "SSH_AUTH_SOCK");
        if !set {
            spec.meta
                .env
                .push(format!("SSH_AUTH_SOCK={}", first.target));
        }
    }
    let mut next = 0;
    let outputs = spec
        .mounts
        .iter()
        .map(|m| {
            let out = m.has_output().then(|| {
                next += 1;
                next - 1
            });
            (m.target.clone(), out)
        })
        .collect();
    let node = Arc::new(Node {
        kind: Kind::Exec(Box::new(spec)),
        meta,
    });
    ExecOutputs { node, outputs }
}

/// Imports every op of `def` and returns its result (`None`: empty).
pub(crate) fn import(def: &pb::Definition) -> Result<Option<Out>, String> {
    let graph = bk_llb::Graph::decode(def).map_err(|e| e.to_string())?;
    let mut made: HashMap<Digest, Arc<Node>> = HashMap::new();
    for digest in &graph.order {
        let Some(v) = graph.vertices.get(digest) else {
            continue;
        };
        let mut inputs = Vec::with_capacity(v.inputs.len());
        for (d, index) in &v.inputs {
            let node = made
                .get(d)
                .ok_or_else(|| format!("input {d} of {digest} not found"))?;
            inputs.push(Out::Op(node.clone(), *index as i64));
        }
        let mut op = v.op.clone();
        op.inputs.clear();
        let node = Arc::new(Node {
            kind: Kind::Imported {
                op: Box::new(op),
                inputs,
                metadata: Box::new(v.metadata.clone()),
            },
            meta: OpMeta::default(),
        });
        made.insert(digest.clone(), node);
    }
    let (root, index) = &graph.root;
    Ok(made.get(root).map(|n| Out::Op(n.clone(), *index as i64)))
}

/// Where the Dockerfile came from, for the definition's source map.
#[derive(Debug, Clone)]
pub(crate) struct SourceMapInfo {
    pub filename: String,
    pub language: String,
    pub data: Vec<u8>,
    pub definition: Option<pb::Definition>,
}

/// Marshals the graph under `root` (`None` is scratch: an empty
/// definition). Ops without a platform of their own that need one get
/// `default_platform`; `caps` (the daemon's LLB caps, when known) decide
/// nothing here but are recorded as Go does.
pub(crate) fn marshal(
    root: Option<&Out>,
    default_platform: &pb::Platform,
    source_map: Option<&SourceMapInfo>,
) -> Result<pb::Definition, String> {
    let mut def = pb::Definition::default();
    let Some(root) = root else {
        return Ok(def);
    };
    let key = |n: &Arc<Node>| Arc::as_ptr(n) as usize;
    let mut digests: HashMap<usize, String> = HashMap::new();
    let mut emitted: BTreeSet<String> = BTreeSet::new();
    let mut locations: BTreeMap<String, pb::Locations> = BTreeMap::new();
    let mut any_ignore_cache = false;
    let mut any_description = false;

    let (root_node, root_index) = root.resolve()?;
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root_node.clone(), false)];
    while let Some((node, children_done)) = stack.pop() {
        if digests.contains_key(&key(&node)) {
            continue;
        }
        if !children_done {
            stack.push((node.clone(), true));
            for child in node.children().into_iter().rev() {
                let (c, _) = child.resolve()?;
                if !digests.contains_key(&key(c)) {
                    stack.push((c.clone(), false));
                }
            }
            continue;
        }
        let (op, mut metadata) = encode(&node, &digests, default_platform)?;
        let bytes = op.encode_to_vec();
        let digest = Digest::of(&bytes).to_string();
        any_ignore_cache |= metadata.ignore_cache;
        any_description |= !metadata.description.is_empty();
        if !node.meta.locations.is_empty() {
            let ranges = node
                .meta
                .locations
                .iter()
                .flat_map(|r| r.start..=r.end)
                .map(|line| {
                    let pos = pb::Position {
                        line: i32::try_from(line).unwrap_or(i32::MAX),
                        character: 0,
                    };
                    pb::Range {
                        start: Some(pos),
                        end: Some(pos),
                    }
                })
                .collect();
            locations
                .entry(digest.clone())
                .or_default()
                .locations
                .push(pb::Location {
                    source_index: 0,
                    ranges,
                });
        }
        if let Some(prev) = def.metadata.get(&digest) {
            metadata = merge_metadata(prev.clone(), metadata);
        }
        def.metadata.insert(digest.clone(), metadata);
        if emitted.insert(digest.clone()) {
            def.def.push(bytes);
        }
        digests.insert(key(&node), digest);
    }

    let terminal = pb::Op {
        inputs: vec![pb::Input {
            digest: digests.get(&key(root_node)).cloned().unwrap_or_default(),
            index: root_index,
        }],
        ..Default::default()
    };
    let bytes = terminal.encode_to_vec();
    let mut caps: BTreeMap<String, bool> = ["constraints", "platform"]
        .iter()
        .map(|c| ((*c).to_owned(), true))
        .collect();
    if any_ignore_cache {
        caps.insert("meta.ignorecache".to_owned(), true);
    }
    if any_description {
        caps.insert("meta.description".to_owned(), true);
    }
    def.metadata.insert(
        Digest::of(&bytes).to_string(),
        pb::OpMetadata {
            caps,
            ..Default::default()
        },
    );
    def.def.push(bytes);

    if let Some(sm) = source_map {
        def.source = Some(pb::Source {
            locations,
            infos: vec![pb::SourceInfo {
                filename: sm.filename.clone(),
                data: sm.data.clone(),
                definition: sm.definition.clone(),
                language: sm.language.clone(),
            }],
        });
    }
    Ok(def)
}

/// Go's `mergeMetadata`.
fn merge_metadata(mut a: pb::OpMetadata, b: pb::OpMetadata) -> pb::OpMetadata {
    a.ignore_cache |= b.ignore_cache;
    a.description.extend(b.description);
    if b.export_cache.is_some() {
        a.export_cache = b.export_cache;
    }
    a.caps.extend(b.caps);
    if b.progress_group.is_some() {
        a.progress_group = b.progress_group;
    }
    a
}

fn input_of(out: &Out, digests: &HashMap<usize, String>) -> Result<pb::Input, String> {
    let (node, index) = out.resolve()?;
    let digest = digests
        .get(&(Arc::as_ptr(node) as usize))
        .cloned()
        .ok_or_else(|| "internal error: input marshalled out of order".to_owned())?;
    Ok(pb::Input { digest, index })
}

/// Adds `out` to `inputs` unless an equal input is there; returns its index.
fn add_input(
    inputs: &mut Vec<pb::Input>,
    out: &Out,
    digests: &HashMap<usize, String>,
) -> Result<i64, String> {
    let input = input_of(out, digests)?;
    if let Some(i) = inputs.iter().position(|x| *x == input) {
        return Ok(i as i64);
    }
    inputs.push(input);
    Ok(inputs.len() as i64 - 1)
}

fn encode(
    node: &Node,
    digests: &HashMap<usize, String>,
    default_platform: &pb::Platform,
) -> Result<(pb::Op, pb::OpMetadata), String> {
    let mut caps: BTreeSet<&'static str> = BTreeSet::new();
    let mut op = pb::Op {
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    match &node.kind {
        Kind::Source {
            identifier,
            attrs,
            platform,
            caps: source_caps,
        } => {
            caps.extend(source_caps.iter().copied());
            op.platform = platform.clone();
            op.op = Some(OpKind::Source(pb::SourceOp {
                identifier: identifier.clone(),
                attrs: attrs.clone(),
            }));
        }
        Kind::File { base, actions } => {
            caps.insert("file.base");
            let mut inputs = Vec::new();
            let base_index = match base {
                Some(b) => add_input(&mut inputs, b, digests)?,
                None => -1,
            };
            let mut pb_actions = Vec::with_capacity(actions.len());
            let mut secondaries = Vec::with_capacity(actions.len());
            for (_, source) in actions {
                secondaries.push(match source {
                    Some(Some(s)) => add_input(&mut inputs, s, digests)?,
                    _ => -1,
                });
            }
            let count = inputs.len() as i64;
            let last = actions.len().saturating_sub(1);
            for (i, ((action, _), secondary)) in actions.iter().zip(secondaries).enumerate() {
                let mut action = action.clone();
                set_owner_input(&mut action, base_index);
                pb_actions.push(pb::FileAction {
                    input: if i == 0 {
                        base_index
                    } else {
                        count + i as i64 - 1
                    },
                    secondary_input: secondary,
                    output: if i == last { 0 } else { -1 },
                    action: Some(action),
                });
            }
            op.inputs = inputs;
            op.op = Some(OpKind::File(pb::FileOp {
                actions: pb_actions,
            }));
        }
        Kind::Merge { inputs } => {
            caps.insert("mergeop");
            let mut merge_inputs = Vec::with_capacity(inputs.len());
            for input in inputs {
                merge_inputs.push(pb::MergeInput {
                    input: op.inputs.len() as i64,
                });
                op.inputs.push(input_of(input, digests)?);
            }
            op.op = Some(OpKind::Merge(pb::MergeOp {
                inputs: merge_inputs,
            }));
        }
        Kind::Exec(spec) => {
            let e = encode_exec(spec, digests, &mut caps, &mut op.inputs)?;
            op.platform = Some(
                spec.platform
                    .clone()
                    .unwrap_or_else(|| default_platform.clone()),
            );
            op.op = Some(OpKind::Exec(e));
        }
        Kind::Imported {
            op: imported,
            inputs,
            metadata,
        } => {
            let mut op = (**imported).clone();
            op.inputs = inputs
                .iter()
                .map(|i| input_of(i, digests))
                .collect::<Result<_, _>>()?;
            return Ok((op, (**metadata).clone()));
        }
    }
    let metadata = pb::OpMetadata {
        ignore_cache: node.meta.ignore_cache,
        description: node.meta.description.clone(),
        caps: caps.into_iter().map(|c| (c.to_owned(), true)).collect(),
        progress_group: node.meta.progress_group.clone(),
        ..Default::default()
    };
    Ok((op, metadata))
}

/// Owners by name are looked up in the file op's base input.
fn set_owner_input(action: &mut Action, base: i64) {
    let owner = match action {
        Action::Copy(c) => c.owner.as_mut(),
        Action::Mkdir(m) => m.owner.as_mut(),
        Action::Mkfile(m) => m.owner.as_mut(),
        Action::Symlink(s) => s.owner.as_mut(),
        Action::Rm(_) => None,
    };
    if let Some(owner) = owner {
        for user in [owner.user.as_mut(), owner.group.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(pb::user_opt::User::ByName(n)) = user.user.as_mut() {
                n.input = base;
            }
        }
    }
}

fn encode_exec(
    spec: &ExecSpec,
    digests: &HashMap<usize, String>,
    caps: &mut BTreeSet<&'static str>,
    inputs: &mut Vec<pb::Input>,
) -> Result<pb::ExecOp, String> {
    caps.extend(spec.extra_caps.iter().copied());
    let mut meta = spec.meta.clone();
    meta.remove_mount_stubs_recursive = true;
    if !meta.ulimit.is_empty() {
        caps.insert("exec.meta.ulimit");
    }
    if !meta.valid_exit_codes.is_empty() {
        caps.insert("exec.validexitcode");
    }
    if spec.network != pb::NetMode::Unset {
        caps.insert("exec.meta.network");
    }
    if spec.security != pb::SecurityMode::Sandbox {
        caps.insert("exec.meta.security");
    }
    if let Some(p) = &spec.proxy_env {
        meta.proxy_env = Some(p.clone());
        caps.insert("exec.meta.proxyenv");
    }
    caps.insert("exec.meta.base");
    for m in &spec.mounts {
        if !m.selector.is_empty() {
            caps.insert("exec.mount.selector");
        }
        if m.cache.is_some() {
            caps.insert("exec.mount.cache");
            caps.insert("exec.mount.cache.sharing");
        } else if let Some(size) = m.tmpfs {
            caps.insert("exec.mount.tmpfs");
            if size > 0 {
                caps.insert("exec.mount.tmpfs.size");
            }
        } else if m.source.is_some() {
            caps.insert("exec.mount.bind");
        }
    }
    if !spec.secrets.is_empty() {
        caps.insert("exec.mount.secret");
        if spec.secrets.iter().any(|s| s.env.is_some()) {
            caps.insert("exec.secretenv");
        }
    }
    if !spec.ssh.is_empty() {
        caps.insert("exec.mount.ssh");
    }
    if !spec.cdi_devices.is_empty() {
        caps.insert("exec.meta.cdi");
    }

    let mut mounts = Vec::with_capacity(spec.mounts.len() + spec.secrets.len() + spec.ssh.len());
    let mut out_index = 0;
    for m in &spec.mounts {
        let input = match &m.source {
            Some(s) => add_input(inputs, s, digests)?,
            None => -1,
        };
        let output = if m.has_output() {
            out_index += 1;
            out_index - 1
        } else {
            -1
        };
        let mut pm = pb::Mount {
            input,
            selector: m.selector.clone(),
            dest: m.target.clone(),
            output,
            readonly: m.readonly,
            ..Default::default()
        };
        if let Some((id, sharing)) = &m.cache {
            pm.mount_type = pb::MountType::Cache as i32;
            pm.cache_opt = Some(pb::CacheOpt {
                id: id.clone(),
                sharing: *sharing as i32,
            });
        }
        if let Some(size) = m.tmpfs {
            pm.mount_type = pb::MountType::Tmpfs as i32;
            pm.tmpfs_opt = Some(pb::TmpfsOpt { size });
        }
        mounts.push(pm);
    }
    let mut secretenv = Vec::new();
    for s in &spec.secrets {
        if let Some(name) = &s.env {
            secretenv.push(pb::SecretEnv {
                id: s.id.clone(),
                name: name.clone(),
                optional: s.optional,
            });
        }
        if let Some(target) = &s.target {
            mounts.push(pb::Mount {
                input: -1,
                dest: target.clone(),
                mount_type: pb::MountType::Secret as i32,
                secret_opt: Some(pb::SecretOpt {
                    id: s.id.clone(),
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    optional: s.optional,
                }),
                ..Default::default()
            });
        }
    }
    for s in &spec.ssh {
        mounts.push(pb::Mount {
            input: -1,
            dest: s.target.clone(),
            mount_type: pb::MountType::Ssh as i32,
            ssh_opt: Some(pb::SshOpt {
                id: s.id.clone(),
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                optional: s.optional,
            }),
            ..Default::default()
        });
    }
    Ok(pb::ExecOp {
        meta: Some(meta),
        mounts,
        network: spec.network as i32,
        security: spec.security as i32,
        secretenv,
        cdi_devices: spec.cdi_devices.clone(),
    })
}
