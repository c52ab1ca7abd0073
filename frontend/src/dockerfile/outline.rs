//! What a build target takes from outside (BuildKit's outline, for
//! `buildx build --call outline`): the build args it uses, with values and
//! description comments, and the secrets and SSH agents its RUN steps
//! mount. The converter captures these per stage ([`Capture`]) as it
//! dispatches; [`outline`] gathers them for the target, its base stages
//! and the stages it copies from.

use std::collections::{BTreeMap, BTreeSet};

use super::parser::LineRange;

/// A build arg the target uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineArg {
    pub name: String,
    pub value: String,
    pub description: String,
    pub location: LineRange,
}

/// A secret or SSH agent a RUN step mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineMount {
    pub name: String,
    pub required: bool,
    pub location: LineRange,
}

/// The outline of a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outline {
    pub name: String,
    pub description: String,
    pub args: Vec<OutlineArg>,
    pub secrets: Vec<OutlineMount>,
    pub ssh: Vec<OutlineMount>,
}

/// One declared ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgInfo {
    pub key: String,
    pub value: String,
    pub comment: String,
    pub location: LineRange,
    /// The args its default refers to.
    pub deps: BTreeSet<String>,
}

/// What one stage declares and uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    pub all_args: BTreeMap<String, ArgInfo>,
    pub used: BTreeSet<String>,
    pub secrets: BTreeMap<String, (bool, LineRange)>,
    pub ssh: BTreeMap<String, (bool, LineRange)>,
}

impl Capture {
    /// Marks `names` used, and the args their defaults refer to.
    fn mark_used(&mut self) {
        let mut pending: Vec<String> = self.used.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        while let Some(k) = pending.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(a) = self.all_args.get(&k) {
                pending.extend(a.deps.iter().cloned());
            }
            self.used.insert(k);
        }
    }

    pub fn record_secret(&mut self, id: &str, required: bool, at: LineRange) {
        self.secrets.entry(id.to_string()).or_insert((required, at));
    }

    pub fn record_ssh(&mut self, id: &str, required: bool, at: LineRange) {
        self.ssh.entry(id.to_string()).or_insert((required, at));
    }
}

/// A stage as the outline walks it: its capture, base stage and the
/// stages it reads from.
pub(crate) struct StageLinks<'a> {
    pub capture: &'a Capture,
    pub base: Option<usize>,
    pub deps: Vec<usize>,
}

/// Adds the mounts in `found` not seen yet.
fn take_mounts(
    found: &BTreeMap<String, (bool, LineRange)>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<OutlineMount>,
) {
    for (k, (required, at)) in found {
        if seen.insert(k.clone()) {
            out.push(OutlineMount {
                name: k.clone(),
                required: *required,
                location: *at,
            });
        }
    }
}

/// The outline of stage `target` among `stages`.
pub(crate) fn outline(
    stages: &[StageLinks<'_>],
    target: usize,
    name: &str,
    description: &str,
) -> Outline {
    let mut args = Vec::new();
    let mut secrets = Vec::new();
    let mut ssh = Vec::new();
    let (mut seen_args, mut seen_secrets, mut seen_ssh) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut visited_stages = BTreeSet::new();
    let mut pending = vec![target];
    while let Some(si) = pending.pop() {
        if !visited_stages.insert(si) {
            continue;
        }
        let Some(stage) = stages.get(si) else {
            continue;
        };
        let mut capture = stage.capture.clone();
        capture.mark_used();
        for k in &capture.used {
            if let Some(a) = capture.all_args.get(k)
                && seen_args.insert(k.clone())
            {
                args.push(OutlineArg {
                    name: a.key.clone(),
                    value: a.value.clone(),
                    description: a.comment.clone(),
                    location: a.location,
                });
            }
        }
        take_mounts(&capture.secrets, &mut seen_secrets, &mut secrets);
        take_mounts(&capture.ssh, &mut seen_ssh, &mut ssh);
        // Depth first: the base, then what it copies from, as BuildKit.
        pending.extend(stage.deps.iter().rev());
        pending.extend(stage.base);
    }
    args.sort_by_key(|a| a.location.start);
    secrets.sort_by_key(|s| s.location.start);
    ssh.sort_by_key(|s| s.location.start);
    Outline {
        name: name.to_string(),
        description: description.to_string(),
        args,
        secrets,
        ssh,
    }
}
