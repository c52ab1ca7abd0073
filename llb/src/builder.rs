//! Building LLB in Rust, for our frontends and tests.
//!
//! A [`State`] is a filesystem: [`scratch`], a source ([`local`], [`image`],
//! [`source`]), or the result of an op on other states ([`State::file`],
//! [`merge`], [`diff`], an [`Exec`] from [`State::run`]). [`State::marshal`]
//! emits a `pb.Definition` whose bytes are deterministic (prost writes fields
//! in number order; maps are `BTreeMap`), so the same graph always has the
//! same digests.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

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
    /// The digest of the op as marshalled, once something has needed it.
    digest: OnceLock<Digest>,
}

impl Node {
    fn new(op: OpKind, inputs: Vec<Output>, metadata: pb::OpMetadata) -> Node {
        Node {
            op: pb::Op {
                op: Some(op),
                ..Default::default()
            },
            inputs,
            metadata,
            digest: OnceLock::new(),
        }
    }

    /// The op's bytes with its inputs' digests filled in; every input's
    /// digest must already be known.
    fn encode(&self) -> Vec<u8> {
        let mut op = self.op.clone();
        op.inputs = self
            .inputs
            .iter()
            .map(|i| pb::Input {
                digest: i
                    .node
                    .digest
                    .get()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                index: i.index,
            })
            .collect();
        op.encode_to_vec()
    }
}

/// The digest `root` marshals to, working out (and remembering) those of its
/// ancestors first, iteratively so deep chains cannot overflow the stack.
fn node_digest(root: &Arc<Node>) -> Digest {
    let mut stack: Vec<(&Arc<Node>, bool)> = vec![(root, false)];
    while let Some((node, inputs_done)) = stack.pop() {
        if node.digest.get().is_some() {
            continue;
        }
        if !inputs_done {
            stack.push((node, true));
            for input in node.inputs.iter().rev() {
                if input.node.digest.get().is_none() {
                    stack.push((&input.node, false));
                }
            }
            continue;
        }
        let digest = Digest::of(&node.encode());
        let _ = node.digest.set(digest);
    }
    root.digest
        .get()
        .cloned()
        .unwrap_or_else(|| Digest::of(b""))
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
        State::from_node(
            Arc::new(Node::new(op, inputs, pb::OpMetadata::default())),
            0,
        )
    }

    fn from_node(node: Arc<Node>, index: i64) -> State {
        State {
            output: Some(Output { node, index }),
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
                    // Metadata is not part of the op's bytes.
                    digest: out.node.digest.clone(),
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
        // Every input is done, so its digest is known.
        let bytes = node.encode();
        let digest = Digest::of(&bytes);
        let _ = node.digest.set(digest.clone());
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

/// Where BuildKit mounts the n-th SSH agent socket when no target is given.
const SSH_SOCKET_DIR: &str = "/run/buildkit/ssh_agent";

/// How a state is bind-mounted into an [`Exec`].
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The path inside the mounted state to mount; empty mounts all of it.
    pub selector: String,
    pub readonly: bool,
    /// Whether a writable mount's result becomes an output of the exec
    /// (BuildKit's `ForceNoOutput` is `output: false`).
    pub output: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            selector: String::new(),
            readonly: false,
            output: true,
        }
    }
}

/// Ownership and permissions of a secret file; BuildKit's default mode is
/// `0o400`.
#[derive(Debug, Clone)]
pub struct SecretOptions {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Run without the mount when the client has no such secret.
    pub optional: bool,
}

impl Default for SecretOptions {
    fn default() -> Self {
        SecretOptions {
            uid: 0,
            gid: 0,
            mode: 0o400,
            optional: false,
        }
    }
}

/// Ownership and permissions of an SSH agent socket; BuildKit's default mode
/// is `0o600`.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Run without the socket when the client forwards no such agent.
    pub optional: bool,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            uid: 0,
            gid: 0,
            mode: 0o600,
            optional: false,
        }
    }
}

#[derive(Debug)]
enum MountKind {
    Bind {
        readonly: bool,
        output: bool,
    },
    Cache {
        id: String,
        sharing: pb::CacheSharingOpt,
    },
    Tmpfs {
        size: i64,
    },
}

/// A filesystem mount of the exec (root, bind, cache or tmpfs); secrets and
/// SSH sockets are kept apart because BuildKit emits them after these.
#[derive(Debug)]
struct ExecMount {
    dest: String,
    source: State,
    selector: String,
    kind: MountKind,
}

impl ExecMount {
    /// Whether the mount gets an output index of its own.
    fn has_output(&self) -> bool {
        matches!(
            self.kind,
            MountKind::Bind {
                readonly: false,
                output: true
            }
        )
    }
}

/// A process run on a root filesystem with further mounts: an `ExecOp`.
///
/// Configure it, then [`Exec::finish`] it once into an [`ExecResult`], whose
/// states all share the one op. Made with [`State::run`] or [`Exec::new`].
#[derive(Debug)]
pub struct Exec {
    args: Vec<String>,
    /// In BuildKit's order: a key set again moves to the end.
    env: Vec<(String, String)>,
    cwd: String,
    user: String,
    hostname: String,
    extra_hosts: Vec<pb::HostIp>,
    ulimits: Vec<pb::Ulimit>,
    valid_exit_codes: Option<Vec<i32>>,
    network: pb::NetMode,
    security: pb::SecurityMode,
    /// The root mount first, then the others in the order they were added.
    mounts: Vec<ExecMount>,
    secret_mounts: Vec<pb::Mount>,
    secret_env: Vec<pb::SecretEnv>,
    ssh: Vec<(Option<String>, pb::SshOpt)>,
    metadata: pb::OpMetadata,
}

/// The states an exec produces; every one refers to the same op.
#[derive(Debug, Clone)]
pub struct ExecResult {
    root: State,
    /// Each bind mount's (and the root's) destination and resulting state;
    /// `None` for cache and tmpfs mounts and mounts without an output.
    mounts: Vec<(String, Option<State>)>,
}

impl State {
    /// Runs `args` with this state as the root filesystem.
    pub fn run<I, S>(&self, args: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Exec::new(self, args)
    }
}

impl Exec {
    /// Runs `args` on `root` (mounted read-write at `/`, as output 0 unless
    /// another mount sorts before `/`), with working directory `/`, no
    /// environment (the executor supplies a default `PATH`), the sandbox
    /// network and security modes.
    pub fn new<I, S>(root: &State, args: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Exec {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".to_string(),
            user: String::new(),
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            valid_exit_codes: None,
            network: pb::NetMode::Unset,
            security: pb::SecurityMode::Sandbox,
            mounts: vec![ExecMount {
                dest: "/".to_string(),
                source: root.clone(),
                selector: String::new(),
                kind: MountKind::Bind {
                    readonly: false,
                    output: true,
                },
            }],
            secret_mounts: Vec::new(),
            secret_env: Vec::new(),
            ssh: Vec::new(),
            metadata: pb::OpMetadata::default(),
        }
    }

    /// Sets `key=value` in the environment. Setting a key again replaces it
    /// and moves it to the end, as BuildKit's client orders them.
    pub fn env(mut self, key: &str, value: &str) -> Exec {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets the working directory; a relative path is joined to the current
    /// one and cleaned.
    pub fn cwd(mut self, path: &str) -> Exec {
        self.cwd = if path.starts_with('/') {
            path.to_string()
        } else {
            let prev = if self.cwd.is_empty() { "/" } else { &self.cwd };
            clean_path(&format!("{prev}/{path}"))
        };
        self
    }

    /// The user (`name`, `uid`, `uid:gid`, …) the process runs as.
    pub fn user(mut self, user: &str) -> Exec {
        self.user = user.to_string();
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Exec {
        self.hostname = hostname.to_string();
        self
    }

    /// `Unset` is the sandbox network.
    pub fn network(mut self, mode: pb::NetMode) -> Exec {
        self.network = mode;
        self
    }

    /// `Insecure` needs the daemon's and the build's entitlement.
    pub fn security(mut self, mode: pb::SecurityMode) -> Exec {
        self.security = mode;
        self
    }

    /// Adds a line to the process's `/etc/hosts`.
    pub fn extra_host(mut self, host: &str, ip: IpAddr) -> Exec {
        self.extra_hosts.push(pb::HostIp {
            host: host.to_string(),
            // Go prints an IPv4-mapped IPv6 address as IPv4.
            ip: ip.to_canonical().to_string(),
        });
        self
    }

    /// Adds a resource limit (`nofile`, `nproc`, …).
    pub fn ulimit(mut self, name: &str, soft: i64, hard: i64) -> Exec {
        self.ulimits.push(pb::Ulimit {
            name: name.to_string(),
            soft,
            hard,
        });
        self
    }

    /// Exit codes that count as success (by default only 0).
    pub fn valid_exit_codes(mut self, codes: &[i32]) -> Exec {
        self.valid_exit_codes = Some(codes.to_vec());
        self
    }

    /// Mounts the root filesystem read-only. The exec then has no root
    /// output: [`ExecResult::root`] is the state it ran on.
    pub fn readonly_root(mut self) -> Exec {
        if let Some(root) = self.mounts.first_mut() {
            root.kind = MountKind::Bind {
                readonly: true,
                output: true,
            };
        }
        self
    }

    /// Bind-mounts `state` (scratch is an empty directory) at `dest`.
    pub fn mount(mut self, dest: &str, state: &State, opts: MountOptions) -> Exec {
        self.mounts.push(ExecMount {
            dest: dest.to_string(),
            source: state.clone(),
            selector: opts.selector,
            kind: MountKind::Bind {
                readonly: opts.readonly,
                output: opts.output,
            },
        });
        self
    }

    /// Mounts the persistent cache directory `id` at `dest`, first filled
    /// from `seed` if given. An empty `id` means `dest` (BuildKit's client
    /// would otherwise make it a plain bind mount).
    pub fn cache_mount(
        mut self,
        dest: &str,
        id: &str,
        sharing: pb::CacheSharingOpt,
        seed: Option<&State>,
    ) -> Exec {
        self.mounts.push(ExecMount {
            dest: dest.to_string(),
            source: seed.cloned().unwrap_or_default(),
            selector: String::new(),
            kind: MountKind::Cache {
                id: if id.is_empty() { dest } else { id }.to_string(),
                sharing,
            },
        });
        self
    }

    /// Mounts a tmpfs at `dest`; `size_bytes` 0 leaves the kernel's default.
    pub fn tmpfs(mut self, dest: &str, size_bytes: i64) -> Exec {
        self.mounts.push(ExecMount {
            dest: dest.to_string(),
            source: State::default(),
            selector: String::new(),
            kind: MountKind::Tmpfs { size: size_bytes },
        });
        self
    }

    /// Mounts the client's secret `id` (empty means `dest`, as in BuildKit)
    /// as the file `dest`.
    pub fn secret(mut self, dest: &str, id: &str, opts: SecretOptions) -> Exec {
        self.secret_mounts.push(pb::Mount {
            input: -1,
            dest: dest.to_string(),
            mount_type: pb::MountType::Secret as i32,
            secret_opt: Some(pb::SecretOpt {
                id: if id.is_empty() { dest } else { id }.to_string(),
                uid: opts.uid,
                gid: opts.gid,
                mode: opts.mode,
                optional: opts.optional,
            }),
            ..Default::default()
        });
        self
    }

    /// Sets the environment variable `name` to the client's secret `id`.
    pub fn secret_env(mut self, name: &str, id: &str, optional: bool) -> Exec {
        self.secret_env.push(pb::SecretEnv {
            id: id.to_string(),
            name: name.to_string(),
            optional,
        });
        self
    }

    /// Mounts the client's SSH agent `id` (empty is the default agent) as a
    /// socket at `dest`, by default `/run/buildkit/ssh_agent.<n>` for the
    /// n-th socket. Unless the environment sets `SSH_AUTH_SOCK`, it points
    /// at the first socket.
    pub fn ssh(mut self, dest: Option<&str>, id: &str, opts: SshOptions) -> Exec {
        self.ssh.push((
            dest.map(str::to_string),
            pb::SshOpt {
                id: id.to_string(),
                uid: opts.uid,
                gid: opts.gid,
                mode: opts.mode,
                optional: opts.optional,
            },
        ));
        self
    }

    /// Sets the display name progress output shows for the exec.
    pub fn with_name(mut self, name: &str) -> Exec {
        self.metadata
            .description
            .insert(CUSTOM_NAME.to_string(), name.to_string());
        self
    }

    /// Runs the exec even when a cached result exists.
    pub fn ignore_cache(mut self) -> Exec {
        self.metadata.ignore_cache = true;
        self
    }

    /// Builds the op. Filesystem mounts are sorted by destination; writable
    /// bind mounts with an output (the root among them) are numbered in that
    /// order; mounts of the same state output share one input; secret and
    /// then SSH mounts follow, in the order they were added.
    pub fn finish(self) -> ExecResult {
        let Exec {
            args,
            mut env,
            cwd,
            user,
            hostname,
            extra_hosts,
            ulimits,
            valid_exit_codes,
            network,
            security,
            mut mounts,
            secret_mounts,
            secret_env,
            ssh,
            metadata,
        } = self;
        // Stable, so mounts at the same destination keep their order.
        mounts.sort_by(|a, b| a.dest.cmp(&b.dest));

        let ssh_mounts: Vec<pb::Mount> = ssh
            .into_iter()
            .enumerate()
            .map(|(n, (dest, opt))| pb::Mount {
                input: -1,
                dest: dest.unwrap_or_else(|| format!("{SSH_SOCKET_DIR}.{n}")),
                mount_type: pb::MountType::Ssh as i32,
                ssh_opt: Some(opt),
                ..Default::default()
            })
            .collect();
        let auth_sock_set = env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK");
        if let Some(first) = ssh_mounts.first().filter(|_| !auth_sock_set) {
            env.push(("SSH_AUTH_SOCK".to_string(), first.dest.clone()));
        }

        let mut inputs: Vec<Output> = Vec::new();
        let mut input_keys: Vec<(Digest, i64)> = Vec::new();
        let mut next_output = 0;
        let mut pb_mounts = Vec::with_capacity(mounts.len() + secret_mounts.len());
        // Per mount: its output index, or the state it leaves unchanged.
        let mut results: Vec<(String, Result<i64, Option<State>>)> = Vec::new();
        for mount in mounts {
            let input = match &mount.source.output {
                None => -1,
                Some(out) => {
                    // BuildKit compares inputs as (digest, index), so equal
                    // ops built separately still share one input.
                    let key = (node_digest(&out.node), out.index);
                    match input_keys.iter().position(|k| *k == key) {
                        Some(position) => position as i64,
                        None => {
                            input_keys.push(key);
                            inputs.push(out.clone());
                            inputs.len() as i64 - 1
                        }
                    }
                }
            };
            let output = if mount.has_output() {
                next_output += 1;
                next_output - 1
            } else {
                -1
            };
            let mut pb_mount = pb::Mount {
                input,
                selector: mount.selector,
                dest: mount.dest.clone(),
                output,
                ..Default::default()
            };
            let result = match mount.kind {
                MountKind::Bind { readonly, .. } => {
                    pb_mount.readonly = readonly;
                    if output >= 0 {
                        Ok(output)
                    } else if readonly {
                        Err(Some(mount.source))
                    } else {
                        Err(None)
                    }
                }
                MountKind::Cache { id, sharing } => {
                    pb_mount.mount_type = pb::MountType::Cache as i32;
                    pb_mount.cache_opt = Some(pb::CacheOpt {
                        id,
                        sharing: sharing as i32,
                    });
                    Err(None)
                }
                MountKind::Tmpfs { size } => {
                    pb_mount.mount_type = pb::MountType::Tmpfs as i32;
                    pb_mount.tmpfs_opt = Some(pb::TmpfsOpt { size });
                    Err(None)
                }
            };
            results.push((mount.dest, result));
            pb_mounts.push(pb_mount);
        }
        pb_mounts.extend(secret_mounts);
        pb_mounts.extend(ssh_mounts);

        let exec = pb::ExecOp {
            meta: Some(pb::Meta {
                args,
                env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd,
                user,
                hostname,
                extra_hosts,
                ulimit: ulimits,
                remove_mount_stubs_recursive: true,
                valid_exit_codes: valid_exit_codes.unwrap_or_default(),
                ..Default::default()
            }),
            mounts: pb_mounts,
            network: network as i32,
            security: security as i32,
            secretenv: secret_env,
            ..Default::default()
        };
        let node = Arc::new(Node::new(OpKind::Exec(exec), inputs, metadata));
        let mounts: Vec<(String, Option<State>)> = results
            .into_iter()
            .map(|(dest, result)| {
                let state = match result {
                    Ok(index) => Some(State::from_node(node.clone(), index)),
                    Err(unchanged) => unchanged,
                };
                (dest, state)
            })
            .collect();
        let root = mounts
            .iter()
            .find(|(dest, _)| dest == "/")
            .and_then(|(_, state)| state.clone())
            .unwrap_or_default();
        ExecResult { root, mounts }
    }
}

impl ExecResult {
    /// The root filesystem after the run (the state it ran on if the root
    /// was read-only).
    pub fn root(&self) -> State {
        self.root.clone()
    }

    /// The result of the bind mount at `dest` (the first one, if several):
    /// its output, or the mounted state itself if it was read-only. `None`
    /// for cache, tmpfs, secret and SSH mounts, mounts without an output,
    /// and destinations nothing was mounted at.
    pub fn output(&self, dest: &str) -> Option<State> {
        self.mounts
            .iter()
            .find(|(d, _)| d == dest)
            .and_then(|(_, state)| state.clone())
    }
}

/// Go's `path.Clean`: a lexically shortest equivalent path.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
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

    fn exec_op(graph: &Graph, digest: &Digest) -> pb::ExecOp {
        match &graph.vertices[digest].op.op {
            Some(OpKind::Exec(e)) => e.clone(),
            other => panic!("not an exec op: {other:?}"),
        }
    }

    #[test]
    fn exec_with_every_mount_kind() {
        let base = image("docker.io/library/alpine:latest");
        let ctx = local("context", BTreeMap::new());
        let result = base
            .run(["sh", "-c", "make"])
            .env("A", "1")
            .env("B", "2")
            .env("A", "3")
            .cwd("/src")
            .cwd("sub/../app")
            .user("1000:1000")
            .hostname("builder")
            .network(pb::NetMode::None)
            .security(pb::SecurityMode::Insecure)
            .extra_host("db", "10.0.0.2".parse().unwrap())
            .extra_host("v4mapped", "::ffff:10.0.0.3".parse().unwrap())
            .ulimit("nofile", 1024, 2048)
            .valid_exit_codes(&[0, 1])
            // Added out of order: the op lists them sorted by destination.
            .mount("/src", &ctx, MountOptions::default())
            .tmpfs("/tmp", 1 << 20)
            .cache_mount(
                "/root/.cache",
                "go-build",
                pb::CacheSharingOpt::Locked,
                None,
            )
            .cache_mount(
                "/cache-seeded",
                "",
                pb::CacheSharingOpt::Private,
                Some(&ctx),
            )
            .mount(
                "/ro",
                &base,
                MountOptions {
                    selector: "/etc".into(),
                    readonly: true,
                    ..Default::default()
                },
            )
            .mount("/empty", &scratch(), MountOptions::default())
            .mount(
                "/discard",
                &ctx,
                MountOptions {
                    output: false,
                    ..Default::default()
                },
            )
            .secret("/run/secrets/token", "token", SecretOptions::default())
            .secret_env("API_KEY", "api", true)
            .secret(
                "/run/secrets/npmrc",
                "",
                SecretOptions {
                    uid: 1000,
                    gid: 1000,
                    mode: 0o440,
                    optional: true,
                },
            )
            .ssh(None, "", SshOptions::default())
            .ssh(Some("/tmp/agent.sock"), "github", SshOptions::default())
            .with_name("RUN make")
            .ignore_cache()
            .finish();

        let def = result.root().marshal();
        assert_eq!(def, result.root().marshal(), "deterministic");
        let graph = Graph::decode(&def).unwrap();
        assert_eq!(graph.vertices.len(), 3, "image, local, exec");
        assert_eq!(graph.root.1, 0);
        let root = &graph.vertices[&graph.root.0];
        assert_eq!(crate::name::names(&graph)[&graph.root.0], "RUN make");
        assert!(root.metadata.ignore_cache);
        let image_digest = Graph::decode(&base.marshal()).unwrap().root.0;
        let ctx_digest = Graph::decode(&ctx.marshal()).unwrap().root.0;
        // The base image (root and /ro) and the context (/src, the seed,
        // /discard) are one input each.
        assert_eq!(root.inputs, vec![(image_digest, 0), (ctx_digest, 0)]);

        let exec = exec_op(&graph, &graph.root.0);
        let meta = exec.meta.clone().unwrap();
        assert_eq!(meta.args, ["sh", "-c", "make"]);
        assert_eq!(
            meta.env,
            ["B=2", "A=3", "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"]
        );
        assert_eq!(meta.cwd, "/src/app");
        assert_eq!(meta.user, "1000:1000");
        assert_eq!(meta.hostname, "builder");
        let hosts: Vec<_> = meta
            .extra_hosts
            .iter()
            .map(|h| (h.host.as_str(), h.ip.as_str()))
            .collect();
        assert_eq!(hosts, [("db", "10.0.0.2"), ("v4mapped", "10.0.0.3")]);
        assert_eq!(meta.ulimit.len(), 1);
        assert_eq!(
            (
                meta.ulimit[0].name.as_str(),
                meta.ulimit[0].soft,
                meta.ulimit[0].hard
            ),
            ("nofile", 1024, 2048)
        );
        assert_eq!(meta.valid_exit_codes, [0, 1]);
        assert!(meta.remove_mount_stubs_recursive);
        assert_eq!(exec.network, pb::NetMode::None as i32);
        assert_eq!(exec.security, pb::SecurityMode::Insecure as i32);

        let bind = pb::MountType::Bind as i32;
        let summary: Vec<_> = exec
            .mounts
            .iter()
            .map(|m| {
                (
                    m.dest.as_str(),
                    m.input,
                    m.output,
                    m.readonly,
                    m.mount_type,
                    m.selector.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/", 0, 0, false, bind, ""),
                (
                    "/cache-seeded",
                    1,
                    -1,
                    false,
                    pb::MountType::Cache as i32,
                    ""
                ),
                ("/discard", 1, -1, false, bind, ""),
                ("/empty", -1, 1, false, bind, ""),
                ("/ro", 0, -1, true, bind, "/etc"),
                (
                    "/root/.cache",
                    -1,
                    -1,
                    false,
                    pb::MountType::Cache as i32,
                    ""
                ),
                ("/src", 1, 2, false, bind, ""),
                ("/tmp", -1, -1, false, pb::MountType::Tmpfs as i32, ""),
                // Secret and SSH mounts follow in the order added; like
                // BuildKit's client they leave `output` unset.
                (
                    "/run/secrets/token",
                    -1,
                    0,
                    false,
                    pb::MountType::Secret as i32,
                    ""
                ),
                (
                    "/run/secrets/npmrc",
                    -1,
                    0,
                    false,
                    pb::MountType::Secret as i32,
                    ""
                ),
                (
                    "/run/buildkit/ssh_agent.0",
                    -1,
                    0,
                    false,
                    pb::MountType::Ssh as i32,
                    ""
                ),
                (
                    "/tmp/agent.sock",
                    -1,
                    0,
                    false,
                    pb::MountType::Ssh as i32,
                    ""
                ),
            ]
        );
        let cache = |i: usize| exec.mounts[i].cache_opt.clone().unwrap();
        assert_eq!(cache(1).id, "/cache-seeded", "empty id defaults to dest");
        assert_eq!(cache(1).sharing, pb::CacheSharingOpt::Private as i32);
        assert_eq!(cache(5).id, "go-build");
        assert_eq!(cache(5).sharing, pb::CacheSharingOpt::Locked as i32);
        assert_eq!(
            exec.mounts[7].tmpfs_opt,
            Some(pb::TmpfsOpt { size: 1 << 20 })
        );
        assert_eq!(
            exec.mounts[8].secret_opt,
            Some(pb::SecretOpt {
                id: "token".into(),
                uid: 0,
                gid: 0,
                mode: 0o400,
                optional: false,
            })
        );
        assert_eq!(
            exec.mounts[9].secret_opt,
            Some(pb::SecretOpt {
                id: "/run/secrets/npmrc".into(),
                uid: 1000,
                gid: 1000,
                mode: 0o440,
                optional: true,
            })
        );
        let ssh: Vec<_> = exec.mounts[10..]
            .iter()
            .map(|m| m.ssh_opt.clone().unwrap())
            .map(|o| (o.id, o.mode, o.optional))
            .collect();
        assert_eq!(
            ssh,
            [("".into(), 0o600, false), ("github".into(), 0o600, false)]
        );
        assert_eq!(
            exec.secretenv,
            [pb::SecretEnv {
                id: "api".into(),
                name: "API_KEY".into(),
                optional: true,
            }]
        );

        // Mount results: outputs of the same op, or the unchanged state.
        let outputs = |s: Option<State>| s.map(|s| Graph::decode(&s.marshal()).unwrap().root);
        assert_eq!(outputs(result.output("/")), Some(graph.root.clone()));
        assert_eq!(
            outputs(result.output("/empty")),
            Some((graph.root.0.clone(), 1))
        );
        assert_eq!(
            outputs(result.output("/src")),
            Some((graph.root.0.clone(), 2))
        );
        assert_eq!(outputs(result.output("/ro")).unwrap().0, base_digest(&base));
        for dest in [
            "/tmp",
            "/root/.cache",
            "/discard",
            "/run/secrets/token",
            "/nowhere",
        ] {
            assert!(result.output(dest).is_none(), "{dest}");
        }
        // All outputs marshal to the one exec op.
        let both = merge(&[result.root(), result.output("/src").unwrap()]);
        let merged = Graph::decode(&both.marshal()).unwrap();
        assert_eq!(merged.vertices.len(), 4, "image, local, exec, merge");
    }

    fn base_digest(s: &State) -> Digest {
        Graph::decode(&s.marshal()).unwrap().root.0
    }

    #[test]
    fn exec_defaults_and_output_numbering() {
        let base = image("docker.io/library/busybox:latest");
        let r = base.run(["true"]).finish();
        let graph = Graph::decode(&r.root().marshal()).unwrap();
        let exec = exec_op(&graph, &graph.root.0);
        let meta = exec.meta.unwrap();
        assert_eq!(meta.cwd, "/");
        assert!(meta.env.is_empty(), "PATH is the executor's default");
        assert!(meta.valid_exit_codes.is_empty());
        assert_eq!(exec.network, pb::NetMode::Unset as i32);
        assert_eq!(exec.security, pb::SecurityMode::Sandbox as i32);
        assert_eq!(exec.mounts.len(), 1);
        assert_eq!((exec.mounts[0].input, exec.mounts[0].output), (0, 0));

        // A destination sorting before "/" takes output 0, as in BuildKit.
        let r = scratch()
            .run(["true"])
            .mount(".early", &scratch(), MountOptions::default())
            .finish();
        let graph = Graph::decode(&r.root().marshal()).unwrap();
        assert_eq!(graph.root.1, 1);
        let exec = exec_op(&graph, &graph.root.0);
        let summary: Vec<_> = exec
            .mounts
            .iter()
            .map(|m| (m.dest.as_str(), m.input, m.output))
            .collect();
        assert_eq!(summary, [(".early", -1, 0), ("/", -1, 1)]);
        assert!(graph.vertices[&graph.root.0].inputs.is_empty());

        // A read-only root has no output; the root state is the base.
        let r = base
            .run(["true"])
            .readonly_root()
            .mount("/out", &scratch(), MountOptions::default())
            .finish();
        assert_eq!(base_digest(&r.root()), base_digest(&base));
        let out = r.output("/out").unwrap();
        let graph = Graph::decode(&out.marshal()).unwrap();
        assert_eq!(graph.root.1, 0);
        let exec = exec_op(&graph, &graph.root.0);
        assert_eq!((exec.mounts[0].output, exec.mounts[0].readonly), (-1, true));
        assert_eq!(exec.mounts[1].output, 0);

        // An SSH_AUTH_SOCK of the caller's own is kept.
        let r = base
            .run(["ssh-add", "-l"])
            .env("SSH_AUTH_SOCK", "/agent")
            .ssh(Some("/agent"), "default", SshOptions::default())
            .finish();
        let graph = Graph::decode(&r.root().marshal()).unwrap();
        let exec = exec_op(&graph, &graph.root.0);
        assert_eq!(exec.meta.unwrap().env, ["SSH_AUTH_SOCK=/agent"]);
        assert_eq!(exec.mounts[1].dest, "/agent");

        // Equal ops built separately are still one input.
        let r = image("docker.io/library/busybox:latest")
            .run(["true"])
            .mount(
                "/b",
                &image("docker.io/library/busybox:latest"),
                MountOptions::default(),
            )
            .finish();
        let graph = Graph::decode(&r.root().marshal()).unwrap();
        assert_eq!(graph.vertices[&graph.root.0].inputs.len(), 1);
        let exec = exec_op(&graph, &graph.root.0);
        assert_eq!((exec.mounts[1].input, exec.mounts[1].output), (0, 1));
    }

    #[test]
    fn exec_file_exec_chain() {
        let base = image("docker.io/library/alpine:latest");
        let built = base
            .run(["sh", "-c", "echo hi > /out/a"])
            .mount("/out", &scratch(), MountOptions::default())
            .finish();
        let artifact = built.output("/out").unwrap();
        let staged = built.root().file(FileActions::new().copy(
            &artifact,
            "/a",
            "/srv/a",
            CopyOptions::default(),
        ));
        let last = staged.run(["cat", "/srv/a"]).cwd("srv").finish().root();
        let def = last.marshal();
        let graph = Graph::decode(&def).unwrap();
        assert_eq!(graph.vertices.len(), 4, "image, exec, file, exec");
        let first_digest = Graph::decode(&built.root().marshal()).unwrap().root.0;
        let staged_digest = base_digest(&staged);
        assert_eq!(
            graph.vertices[&graph.root.0].inputs,
            [(staged_digest.clone(), 0)]
        );
        // The file op reads both outputs of the first exec.
        assert_eq!(
            graph.vertices[&staged_digest].inputs,
            [(first_digest.clone(), 0), (first_digest, 1)]
        );
        let exec = exec_op(&graph, &graph.root.0);
        assert_eq!(exec.meta.unwrap().cwd, "/srv");
        assert_eq!(graph.order.last(), Some(&graph.root.0));
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, want) in [
            ("/a/b/../c", "/a/c"),
            ("/../x", "/x"),
            ("//a//b/./", "/a/b"),
            ("/", "/"),
            ("a/../..", ".."),
            ("", "."),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }
}
