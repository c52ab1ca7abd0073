//! Decoding and validating a `pb.Definition`.
//!
//! The last entry of `def` is a terminal pseudo-op naming the result; every
//! other entry is a vertex. Digests are computed over the bytes as received
//! (re-encoding would change them), inputs must point at vertices of the
//! same definition and at outputs they have, and the graph must be acyclic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bk_proto::pb::{self, op::Op as OpKind};
use prost::Message;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of an op's bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        let hash = Sha256::digest(bytes);
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256:");
        for b in hash {
            text.push_str(&format!("{b:02x}"));
        }
        Digest(text)
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.0)
    }
}

/// Bounds on what a definition may contain, so hostile input cannot exhaust
/// memory or time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_ops: usize,
    pub max_op_bytes: usize,
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ops: 100_000,
            // A definition travels in one gRPC message of at most 16 MiB.
            max_op_bytes: 16 << 20,
            max_inputs: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("invalid definition: it has no ops")]
    Empty,
    #[error("invalid definition: {0} ops, at most {1} allowed")]
    TooManyOps(usize, usize),
    #[error("invalid definition: op {index} is {size} bytes, at most {max} allowed")]
    OpTooLarge {
        index: usize,
        size: usize,
        max: usize,
    },
    #[error("invalid definition: op {index} ({digest}) cannot be decoded: {reason}")]
    Decode {
        index: usize,
        digest: String,
        reason: String,
    },
    #[error("invalid definition: the last op must be the terminal op with exactly one input")]
    BadTerminal,
    #[error("invalid definition: op {0} has no operation")]
    MissingOp(Digest),
    #[error("invalid definition: op {digest} has {count} inputs, at most {max} allowed")]
    TooManyInputs {
        digest: Digest,
        count: usize,
        max: usize,
    },
    #[error("invalid definition: op {from} refers to {to:?}, which is not a digest")]
    BadInputDigest { from: String, to: String },
    #[error("invalid definition: op {from} refers to missing op {to}")]
    MissingInput { from: String, to: Digest },
    #[error(
        "invalid definition: op {from} refers to output {index} of {to}, which has {outputs} outputs"
    )]
    BadInputIndex {
        from: String,
        to: Digest,
        index: i64,
        outputs: usize,
    },
    #[error("invalid definition: the graph has a cycle through {0}")]
    Cycle(Digest),
}

/// Whether an exec mount produces an output. Only bind mounts can: the Go
/// client leaves `output` at 0 on secret and ssh mounts, and the daemon
/// ignores it there (and on cache and tmpfs mounts).
pub fn exec_mount_has_output(m: &bk_proto::pb::Mount) -> bool {
    m.output >= 0 && m.mount_type == bk_proto::pb::MountType::Bind as i32
}

/// One vertex: the decoded op, its inputs as digests and output indexes,
/// and its metadata.
#[derive(Debug, Clone)]
pub struct Vertex {
    pub digest: Digest,
    pub op: pb::Op,
    pub inputs: Vec<(Digest, usize)>,
    pub metadata: pb::OpMetadata,
}

impl Vertex {
    /// A digest of what the op does, leaving out which vertices feed it:
    /// the op re-encoded without its inputs. Cache keys combine it with the
    /// inputs' own keys, so a vertex whose input was built from different
    /// bytes but the same content (a context with a fresh `local.unique`)
    /// still hits the cache.
    pub fn op_key(&self) -> Digest {
        let without_inputs = pb::Op {
            inputs: Vec::new(),
            ..self.op.clone()
        };
        Digest::of(&without_inputs.encode_to_vec())
    }

    /// How many outputs the op produces (inputs may refer to `0..outputs`).
    pub fn outputs(&self) -> usize {
        match &self.op.op {
            Some(OpKind::Exec(exec)) => exec
                .mounts
                .iter()
                .filter(|m| exec_mount_has_output(m))
                .count(),
            Some(OpKind::File(file)) => file
                .actions
                .iter()
                .filter(|a| a.output >= 0)
                .map(|a| a.output as usize + 1)
                .max()
                .unwrap_or(0),
            Some(OpKind::Passthrough(p)) => p.outputs.len().max(1),
            Some(_) => 1,
            None => 0,
        }
    }
}

/// A validated build graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub vertices: HashMap<Digest, Vertex>,
    /// The result: a vertex and its output index.
    pub root: (Digest, usize),
    /// Digests in dependency order: every vertex after all of its inputs.
    pub order: Vec<Digest>,
    pub source: Option<pb::Source>,
}

impl Graph {
    /// The first entitlement an op needs that `granted` lacks, as BuildKit
    /// words the refusal (`network.host is not allowed`).
    pub fn check_entitlements(&self, granted: &[String]) -> Result<(), String> {
        let has = |name: &str| granted.iter().any(|g| g == name);
        for digest in &self.order {
            let Some(vertex) = self.vertices.get(digest) else {
                continue;
            };
            if let Some(OpKind::Exec(exec)) = &vertex.op.op {
                if exec.network == pb::NetMode::Host as i32 && !has("network.host") {
                    return Err("network.host is not allowed".into());
                }
                if exec.security == pb::SecurityMode::Insecure as i32 && !has("security.insecure") {
                    return Err("security.insecure is not allowed".into());
                }
            }
        }
        Ok(())
    }

    pub fn decode(def: &pb::Definition) -> Result<Graph, GraphError> {
        Graph::decode_with(def, Limits::default())
    }

    pub fn decode_with(def: &pb::Definition, limits: Limits) -> Result<Graph, GraphError> {
        if def.def.is_empty() {
            return Err(GraphError::Empty);
        }
        if def.def.len() > limits.max_ops {
            return Err(GraphError::TooManyOps(def.def.len(), limits.max_ops));
        }
        let mut ops = Vec::with_capacity(def.def.len());
        for (index, bytes) in def.def.iter().enumerate() {
            if bytes.len() > limits.max_op_bytes {
                return Err(GraphError::OpTooLarge {
                    index,
                    size: bytes.len(),
                    max: limits.max_op_bytes,
                });
            }
            let digest = Digest::of(bytes);
            let op = pb::Op::decode(bytes.as_slice()).map_err(|e| GraphError::Decode {
                index,
                digest: digest.to_string(),
                reason: e.to_string(),
            })?;
            ops.push((digest, op));
        }
        let Some((_, terminal)) = ops.pop() else {
            return Err(GraphError::Empty);
        };
        if terminal.op.is_some() || terminal.inputs.len() != 1 || ops.is_empty() {
            return Err(GraphError::BadTerminal);
        }

        let mut vertices = HashMap::with_capacity(ops.len());
        for (digest, op) in ops {
            if op.op.is_none() {
                return Err(GraphError::MissingOp(digest));
            }
            if op.inputs.len() > limits.max_inputs {
                return Err(GraphError::TooManyInputs {
                    digest,
                    count: op.inputs.len(),
                    max: limits.max_inputs,
                });
            }
            let inputs = op
                .inputs
                .iter()
                .map(|input| parse_input(digest.as_str(), input))
                .collect::<Result<Vec<_>, _>>()?;
            let metadata = def
                .metadata
                .get(digest.as_str())
                .cloned()
                .unwrap_or_default();
            // The same op twice is the same vertex.
            vertices.insert(
                digest.clone(),
                Vertex {
                    digest,
                    op,
                    inputs,
                    metadata,
                },
            );
        }
        // Metadata for ops not in the definition is ignored, as in BuildKit.

        let root = parse_input("terminal op", &terminal.inputs[0])?;
        for vertex in vertices.values() {
            for (to, index) in &vertex.inputs {
                check_edge(&vertices, vertex.digest.as_str(), to, *index)?;
            }
        }
        check_edge(&vertices, "terminal op", &root.0, root.1)?;
        let order = topological_order(&vertices)?;
        Ok(Graph {
            vertices,
            root,
            order,
            source: def.source.clone(),
        })
    }

    /// The vertices the root depends on (and the root), in dependency order.
    pub fn reachable(&self) -> Vec<&Vertex> {
        let mut needed = std::collections::HashSet::new();
        let mut stack = vec![&self.root.0];
        while let Some(d) = stack.pop() {
            if !needed.insert(d.clone()) {
                continue;
            }
            if let Some(v) = self.vertices.get(d) {
                stack.extend(v.inputs.iter().map(|(i, _)| i));
            }
        }
        self.order
            .iter()
            .filter(|d| needed.contains(*d))
            .filter_map(|d| self.vertices.get(d))
            .collect()
    }
}

fn parse_input(from: &str, input: &pb::Input) -> Result<(Digest, usize), GraphError> {
    let digest = Digest::parse(&input.digest).ok_or_else(|| GraphError::BadInputDigest {
        from: from.to_string(),
        to: input.digest.clone(),
    })?;
    let index = usize::try_from(input.index).map_err(|_| GraphError::BadInputIndex {
        from: from.to_string(),
        to: digest.clone(),
        index: input.index,
        outputs: 0,
    })?;
    Ok((digest, index))
}

fn check_edge(
    vertices: &HashMap<Digest, Vertex>,
    from: &str,
    to: &Digest,
    index: usize,
) -> Result<(), GraphError> {
    let target = vertices.get(to).ok_or_else(|| GraphError::MissingInput {
        from: from.to_string(),
        to: to.clone(),
    })?;
    let outputs = target.outputs();
    if index >= outputs {
        return Err(GraphError::BadInputIndex {
            from: from.to_string(),
            to: to.clone(),
            index: index as i64,
            outputs,
        });
    }
    Ok(())
}

/// Kahn's algorithm over a deterministic (digest-sorted) start; a vertex left
/// over sits on a cycle.
fn topological_order(vertices: &HashMap<Digest, Vertex>) -> Result<Vec<Digest>, GraphError> {
    let mut pending: BTreeMap<&Digest, usize> = BTreeMap::new();
    let mut dependents: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for v in vertices.values() {
        let mut distinct: Vec<&Digest> = v.inputs.iter().map(|(d, _)| d).collect();
        distinct.sort();
        distinct.dedup();
        pending.insert(&v.digest, distinct.len());
        for d in distinct {
            dependents.entry(d).or_default().push(&v.digest);
        }
    }
    let mut ready: Vec<&Digest> = pending
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(d, _)| *d)
        .collect();
    ready.reverse();
    let mut order = Vec::with_capacity(vertices.len());
    while let Some(d) = ready.pop() {
        order.push(d.clone());
        if let Some(next) = dependents.get(d) {
            for n in next {
                if let Some(count) = pending.get_mut(n) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(n);
                    }
                }
            }
        }
    }
    if order.len() != vertices.len() {
        let stuck = pending
            .iter()
            .find(|(d, n)| **n > 0 && !order.contains(d))
            .map(|(d, _)| (*d).clone())
            .unwrap_or_else(|| Digest::of(b""));
        return Err(GraphError::Cycle(stuck));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str) -> pb::Op {
        pb::Op {
            op: Some(OpKind::Source(pb::SourceOp {
                identifier: id.to_string(),
                attrs: Default::default(),
            })),
            ..Default::default()
        }
    }

    fn merge(inputs: &[&Digest]) -> pb::Op {
        pb::Op {
            inputs: inputs
                .iter()
                .map(|d| pb::Input {
                    digest: d.to_string(),
                    index: 0,
                })
                .collect(),
            op: Some(OpKind::Merge(pb::MergeOp {
                inputs: (0..inputs.len() as i64)
                    .map(|i| pb::MergeInput { input: i })
                    .collect(),
            })),
            ..Default::default()
        }
    }

    fn terminal(d: &Digest, index: i64) -> Vec<u8> {
        pb::Op {
            inputs: vec![pb::Input {
                digest: d.to_string(),
                index,
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn def(ops: Vec<Vec<u8>>) -> pb::Definition {
        pb::Definition {
            def: ops,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_a_small_graph_in_dependency_order() {
        let a = source("local://context").encode_to_vec();
        let b = source("docker-image://docker.io/library/busybox:latest").encode_to_vec();
        let (da, db) = (Digest::of(&a), Digest::of(&b));
        let m = merge(&[&da, &db]).encode_to_vec();
        let dm = Digest::of(&m);
        let g = Graph::decode(&def(vec![m.clone(), a, b, terminal(&dm, 0)])).unwrap();
        assert_eq!(g.vertices.len(), 3);
        assert_eq!(g.root, (dm.clone(), 0));
        assert_eq!(g.order.last(), Some(&dm));
        assert_eq!(g.reachable().len(), 3);
        assert!(dm.as_str().starts_with("sha256:") && dm.as_str().len() == 71);
    }

    #[test]
    fn rejects_malformed_definitions() {
        let a = source("local://x").encode_to_vec();
        let da = Digest::of(&a);
        let missing = Digest::of(b"nothing");
        let cases: Vec<(pb::Definition, &str)> = vec![
            (def(vec![]), "no ops"),
            (def(vec![terminal(&da, 0)]), "terminal"),
            (
                def(vec![a.clone(), source("local://y").encode_to_vec()]),
                "terminal",
            ),
            (
                def(vec![a.clone(), vec![0xff, 0xff, 0xff]]),
                "cannot be decoded",
            ),
            (def(vec![a.clone(), terminal(&missing, 0)]), "missing op"),
            (def(vec![a.clone(), terminal(&da, 1)]), "output 1"),
            (def(vec![a.clone(), terminal(&da, -1)]), "output -1"),
            (
                def(vec![
                    pb::Op::default().encode_to_vec(),
                    terminal(&Digest::of(&[]), 0),
                ]),
                "no operation",
            ),
            (
                def(vec![
                    a.clone(),
                    pb::Op {
                        inputs: vec![pb::Input {
                            digest: "md5:abc".into(),
                            index: 0,
                        }],
                        op: Some(OpKind::Merge(pb::MergeOp::default())),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                    terminal(&da, 0),
                ]),
                "not a digest",
            ),
        ];
        for (d, want) in cases {
            let err = Graph::decode(&d).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let huge = def(vec![vec![0u8; 100], terminal(&da, 0)]);
        let limits = Limits {
            max_op_bytes: 10,
            ..Default::default()
        };
        assert!(matches!(
            Graph::decode_with(&huge, limits),
            Err(GraphError::OpTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Graph::decode(&def(vec![bytes.clone(), bytes.clone()]));
            if let Ok(d) = pb::Definition::decode(bytes.as_slice()) {
                let _ = Graph::decode(&d);
            }
        }
    }
}
