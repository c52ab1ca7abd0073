//! Display names of vertices, as progress output shows them: the
//! `llb.customname` a frontend set, or one derived from the op the way
//! BuildKit derives it (`copy /a /b`, `merge (…)`, `diff (…) -> (…)`).

use std::collections::HashMap;

use bk_proto::pb::{file_action::Action, op::Op as OpKind};

use crate::{Digest, Graph, Vertex};

/// The description key frontends use for a vertex's display name.
pub const CUSTOM_NAME: &str = "llb.customname";

/// Names of every vertex of `graph`.
pub fn names(graph: &Graph) -> HashMap<Digest, String> {
    let mut out: HashMap<Digest, String> = HashMap::with_capacity(graph.vertices.len());
    for digest in &graph.order {
        if let Some(v) = graph.vertices.get(digest) {
            let name = vertex_name(v, &|d: &Digest| out.get(d).cloned().unwrap_or_default());
            out.insert(digest.clone(), name);
        }
    }
    out
}

/// The name of `v`, given the names of its inputs.
pub fn vertex_name(v: &Vertex, input_name: &dyn Fn(&Digest) -> String) -> String {
    if let Some(custom) = v.metadata.description.get(CUSTOM_NAME) {
        return custom.clone();
    }
    let input = |index: i64| -> Option<String> {
        usize::try_from(index)
            .ok()
            .and_then(|i| v.inputs.get(i))
            .map(|(d, _)| input_name(d))
    };
    match &v.op.op {
        Some(OpKind::Source(s)) => s.identifier.clone(),
        Some(OpKind::Exec(e)) => e
            .meta
            .as_ref()
            .map(|m| m.args.join(" "))
            .unwrap_or_default(),
        Some(OpKind::File(f)) => f
            .actions
            .iter()
            .filter_map(|a| match &a.action {
                Some(Action::Mkdir(m)) => Some(format!("mkdir {}", m.path)),
                Some(Action::Mkfile(m)) => Some(format!("mkfile {}", m.path)),
                Some(Action::Symlink(s)) => Some(format!("symlink {} -> {}", s.newpath, s.oldpath)),
                Some(Action::Rm(r)) => Some(format!("rm {}", r.path)),
                Some(Action::Copy(c)) => Some(format!("copy {} {}", c.src, c.dest)),
                None => None,
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(OpKind::Build(_)) => "build".to_string(),
        Some(OpKind::Merge(_)) => {
            let names: Vec<String> = v.inputs.iter().map(|(d, _)| input_name(d)).collect();
            format!("merge ({})", names.join(", "))
        }
        Some(OpKind::Diff(d)) => {
            let side = |index: Option<i64>| match index {
                Some(-1) | None => "scratch".to_string(),
                Some(i) => format!("({})", input(i).unwrap_or_default()),
            };
            format!(
                "diff {} -> {}",
                side(d.lower.map(|l| l.input)),
                side(d.upper.map(|u| u.input))
            )
        }
        Some(OpKind::Passthrough(p)) => format!("passthrough {}", p.id),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bk_proto::pb;
    use prost::Message;

    #[test]
    fn names_follow_buildkit() {
        let src = pb::Op {
            op: Some(OpKind::Source(pb::SourceOp {
                identifier: "local://context".into(),
                attrs: Default::default(),
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let ds = Digest::of(&src);
        let input = pb::Input {
            digest: ds.to_string(),
            index: 0,
        };
        let copy = pb::Op {
            inputs: vec![input.clone()],
            op: Some(OpKind::File(pb::FileOp {
                actions: vec![
                    pb::FileAction {
                        input: -1,
                        secondary_input: 0,
                        output: -1,
                        action: Some(Action::Mkdir(pb::FileActionMkDir {
                            path: "/out".into(),
                            ..Default::default()
                        })),
                    },
                    pb::FileAction {
                        input: 1,
                        secondary_input: 0,
                        output: 0,
                        action: Some(Action::Copy(pb::FileActionCopy {
                            src: "/".into(),
                            dest: "/out/".into(),
                            ..Default::default()
                        })),
                    },
                ],
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let dc = Digest::of(&copy);
        let diff = pb::Op {
            inputs: vec![
                input,
                pb::Input {
                    digest: dc.to_string(),
                    index: 0,
                },
            ],
            op: Some(OpKind::Diff(pb::DiffOp {
                lower: Some(pb::LowerDiffInput { input: -1 }),
                upper: Some(pb::UpperDiffInput { input: 1 }),
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let dd = Digest::of(&diff);
        let terminal = pb::Op {
            inputs: vec![pb::Input {
                digest: dd.to_string(),
                index: 0,
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let mut def = pb::Definition {
            def: vec![src, copy, diff, terminal],
            ..Default::default()
        };
        let graph = Graph::decode(&def).unwrap();
        let n = names(&graph);
        assert_eq!(n[&ds], "local://context");
        assert_eq!(n[&dc], "mkdir /out, copy / /out/");
        assert_eq!(n[&dd], "diff scratch -> (mkdir /out, copy / /out/)");

        def.metadata.insert(
            dc.to_string(),
            pb::OpMetadata {
                description: [(CUSTOM_NAME.to_string(), "[1/1] COPY . /out/".to_string())].into(),
                ..Default::default()
            },
        );
        let n = names(&Graph::decode(&def).unwrap());
        assert_eq!(n[&dd], "diff scratch -> ([1/1] COPY . /out/)");
    }
}
