//! How a FileOp's actions chain (`solver/llbsolver/ops/file.go`), as a
//! pure plan for the solver: indexes `0..inputs` are the op's inputs,
//! `inputs + k` is the result of action `k`, `-1` is scratch. Each action
//! changes the tree of its `input` and reads `secondaryInput` (the copy
//! source) and any by-name owner inputs. Only actions some output needs are
//! run; an action result read by more than one action, or that is itself an
//! output, must stay intact, so whoever changes it works on a copy.

use std::collections::BTreeMap;

use bk_proto::pb::FileAction;
use bk_proto::pb::file_action::Action;

use crate::FileOpError;
use crate::user::owner_inputs;

/// What an index in a FileOp's index space names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    /// The op's input `n`.
    Input(usize),
    /// The result of action `n`.
    Action(usize),
    /// An empty tree.
    Scratch,
}

impl Ref {
    /// Interpret `index` for an op with `inputs` inputs; `None` if it is
    /// out of range.
    pub fn of(index: i64, inputs: usize, actions: usize) -> Option<Ref> {
        if index == -1 {
            return Some(Ref::Scratch);
        }
        let i = usize::try_from(index).ok()?;
        if i < inputs {
            Some(Ref::Input(i))
        } else if i - inputs < actions {
            Some(Ref::Action(i - inputs))
        } else {
            None
        }
    }
}

/// The validated shape of a FileOp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// For each output `0..n`, the action whose result it is.
    pub outputs: Vec<usize>,
    /// The actions to run, each after the actions it reads; only those the
    /// outputs need.
    pub order: Vec<usize>,
    /// Per action: more than one party uses its result (the actions that
    /// read it, and the op's outputs), so it must stay intact and an action
    /// whose `input` it is starts from a `clone_tree` of it. Otherwise its
    /// single reader may change it in place. Op inputs are never to be
    /// changed in place.
    pub shared: Vec<bool>,
}

/// Validate `actions` for an op with `inputs` inputs and plan their order.
/// Errors use upstream's wording.
pub fn plan(inputs: usize, actions: &[FileAction]) -> Result<Plan, FileOpError> {
    let total = inputs.saturating_add(actions.len());
    let bad = |msg: String| FileOpError::Invalid(msg);
    let mut outputs: BTreeMap<i64, usize> = BTreeMap::new();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(actions.len());
    for (k, a) in actions.iter().enumerate() {
        let input = Ref::of(a.input, inputs, actions.len())
            .ok_or_else(|| bad(format!("invalid input index {}, {total} provided", a.input)))?;
        let secondary = Ref::of(a.secondary_input, inputs, actions.len()).ok_or_else(|| {
            bad(format!(
                "invalid secondary input index {}, {total} provided",
                a.secondary_input
            ))
        })?;
        let mut d = Vec::new();
        for r in [input, secondary] {
            if let Ref::Action(j) = r {
                d.push(j);
            }
        }
        for idx in owner_refs(a).into_iter().flatten() {
            match Ref::of(idx, inputs, actions.len()) {
                Some(Ref::Action(j)) => d.push(j),
                Some(Ref::Input(_)) => {}
                _ => return Err(bad(format!("invalid user index: {idx}"))),
            }
        }
        deps.push(d);
        if a.output != -1 && outputs.insert(a.output, k).is_some() {
            return Err(bad(format!("duplicate output {}", a.output)));
        }
    }
    if outputs.is_empty() {
        return Err(bad("no outputs specified".into()));
    }
    let outputs = (0..outputs.len())
        .map(|i| {
            outputs
                .get(&(i as i64))
                .copied()
                .ok_or_else(|| bad(format!("missing output index {i}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Post-order from the outputs, iteratively (chains can be long).
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; actions.len()];
    let mut order = Vec::new();
    for &root in &outputs {
        let mut stack = vec![(root, 0usize)];
        while let Some((k, next)) = stack.pop() {
            if next == 0 {
                match mark[k] {
                    Mark::Done => continue,
                    Mark::Open => return Err(bad(format!("loop from index {}", inputs + k))),
                    Mark::New => mark[k] = Mark::Open,
                }
            }
            if let Some(&j) = deps[k].get(next) {
                stack.push((k, next + 1));
                match mark[j] {
                    Mark::Open => return Err(bad(format!("loop from index {}", inputs + j))),
                    Mark::New => stack.push((j, 0)),
                    Mark::Done => {}
                }
            } else {
                mark[k] = Mark::Done;
                order.push(k);
            }
        }
    }

    let mut uses = vec![0usize; actions.len()];
    for &k in &order {
        for &j in &deps[k] {
            uses[j] += 1;
        }
    }
    for &k in &outputs {
        uses[k] += 1;
    }
    let shared = uses.iter().map(|&n| n > 1).collect();
    Ok(Plan {
        outputs,
        order,
        shared,
    })
}

fn owner_refs(a: &FileAction) -> [Option<i64>; 2] {
    let chown = match &a.action {
        Some(Action::Copy(c)) => c.owner.as_ref(),
        Some(Action::Mkdir(m)) => m.owner.as_ref(),
        Some(Action::Mkfile(m)) => m.owner.as_ref(),
        Some(Action::Symlink(s)) => s.owner.as_ref(),
        Some(Action::Rm(_)) | None => None,
    };
    let (u, g) = owner_inputs(chown);
    [u, g]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bk_proto::pb::{ChownOpt, FileActionMkDir, NamedUserOpt, UserOpt, user_opt};

    fn act(input: i64, secondary: i64, output: i64) -> FileAction {
        FileAction {
            input,
            secondary_input: secondary,
            output,
            action: Some(Action::Mkdir(FileActionMkDir::default())),
        }
    }

    #[test]
    fn chain_and_sharing() {
        // Two inputs; a0 on input 0, a1 on a0 copying from input 1, a2 on a1.
        let actions = [act(0, -1, -1), act(2, 1, -1), act(3, -1, 0)];
        let p = plan(2, &actions).unwrap();
        assert_eq!(p.outputs, vec![2]);
        assert_eq!(p.order, vec![0, 1, 2]);
        assert_eq!(p.shared, vec![false, false, false]);

        // a0 feeds both a1 and a2; a1 and a2 are outputs.
        let actions = [act(-1, -1, -1), act(1, -1, 1), act(1, 1, 0)];
        let p = plan(1, &actions).unwrap();
        assert_eq!(p.outputs, vec![2, 1]);
        assert_eq!(p.order, vec![0, 2, 1]);
        assert_eq!(p.shared, vec![true, false, false]);

        // An output that a later action also changes must stay intact.
        let actions = [act(0, -1, 1), act(1, -1, 0)];
        assert_eq!(plan(1, &actions).unwrap().shared, vec![true, false]);

        // An action nobody needs is not run.
        let actions = [act(0, -1, -1), act(0, -1, 0)];
        assert_eq!(plan(1, &actions).unwrap().order, vec![1]);
        assert_eq!(Ref::of(-1, 1, 1), Some(Ref::Scratch));
        assert_eq!(Ref::of(1, 1, 1), Some(Ref::Action(0)));
        assert_eq!(Ref::of(2, 1, 1), None);
        assert_eq!(Ref::of(-2, 1, 1), None);
    }

    fn owned_by_name(input: i64) -> FileAction {
        let mut a = act(0, -1, 0);
        a.action = Some(Action::Mkdir(FileActionMkDir {
            owner: Some(ChownOpt {
                user: Some(UserOpt {
                    user: Some(user_opt::User::ByName(NamedUserOpt {
                        name: "app".into(),
                        input,
                    })),
                }),
                group: None,
            }),
            ..Default::default()
        }));
        a
    }

    #[test]
    fn owner_inputs_are_dependencies() {
        let p = plan(1, &[act(0, -1, -1), owned_by_name(1)]).unwrap();
        assert_eq!(p.order, vec![0, 1]);
        let err = plan(1, &[act(0, -1, -1), owned_by_name(9)]).unwrap_err();
        assert_eq!(err.to_string(), "invalid user index: 9");
        let err = plan(1, &[act(0, -1, -1), owned_by_name(-1)]).unwrap_err();
        assert_eq!(err.to_string(), "invalid user index: -1");
    }

    #[test]
    fn invalid_graphs() {
        let msg = |inputs, actions: &[FileAction]| plan(inputs, actions).unwrap_err().to_string();
        assert_eq!(
            msg(1, &[act(5, -1, 0)]),
            "invalid input index 5, 2 provided"
        );
        assert_eq!(
            msg(1, &[act(-2, -1, 0)]),
            "invalid input index -2, 2 provided"
        );
        assert_eq!(
            msg(1, &[act(0, 7, 0)]),
            "invalid secondary input index 7, 2 provided"
        );
        assert_eq!(msg(1, &[act(0, -1, -1)]), "no outputs specified");
        assert_eq!(
            msg(1, &[act(0, -1, 0), act(0, -1, 0)]),
            "duplicate output 0"
        );
        assert_eq!(
            msg(1, &[act(0, -1, 1), act(0, -1, -1)]),
            "missing output index 0"
        );
        assert_eq!(
            msg(1, &[act(0, -1, 0), act(0, -1, 5)]),
            "missing output index 1"
        );
        assert_eq!(msg(1, &[act(0, -1, -2)]), "missing output index 0");
        // a0 reads a1, a1 reads a0.
        assert_eq!(
            msg(1, &[act(2, -1, 0), act(1, -1, -1)]),
            "loop from index 1"
        );
        assert_eq!(msg(0, &[act(0, -1, 0)]), "loop from index 0");
        // A long chain plans without recursion.
        let mut chain = vec![act(-1, -1, -1)];
        for k in 1..100_000 {
            chain.push(act(k - 1, -1, -1));
        }
        chain.last_mut().unwrap().output = 0;
        assert_eq!(plan(0, &chain).unwrap().order.len(), 100_000);
    }
}
