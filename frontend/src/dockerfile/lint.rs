//! The Dockerfile lint checks of BuildKit v0.24 (`frontend/dockerfile/linter`),
//! reported as warnings while a Dockerfile is converted.
//!
//! The converter ([`super::convert()`]) runs every check at the point where
//! BuildKit runs it, so warnings reach the [`LintSink`] of
//! [`super::ConvertOptions::lint`] in BuildKit's order, and the ones found
//! before a conversion error stay there. Rule names, descriptions, URLs and
//! messages are BuildKit's exactly: clients show them to users.
//!
//! What runs is decided by [`CheckOptions`]: the `build-arg:BUILDKIT_DOCKERFILE_CHECK`
//! frontend option if given, else the `# check=` directive ([`check_options`]).
//! `skip=` turns off ordinary rules, `experimental=` turns on experimental
//! ones (skip does not apply to those), and `error=true` makes any warning
//! fail the conversion once every stage has been dispatched.
//!
//! A hostile Dockerfile could ask for millions of warnings, each carrying one
//! range per line of a huge instruction; past [`MAX_WARNINGS`] warnings or
//! [`MAX_RANGES`] ranges in all, rules are still counted (for `error=true`)
//! but no more warnings are kept.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::directives::{CheckOptions, parse_directive};
use super::golang::{quote, to_lower, to_upper};
use super::instructions::{Instruction, Stage};
use super::parser::{LineRange, Node};

/// The frontend build argument that replaces the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// Warnings kept per conversion at most.
pub const MAX_WARNINGS: usize = 10_000;

/// Line ranges kept over all warnings of a conversion at most.
pub const MAX_RANGES: usize = 1_000_000;

/// A lint rule as BuildKit defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The name (`FromAsCasing`), also what `skip=` and `experimental=` list.
    pub name: &'static str,
    /// The description, sent as the warning's detail.
    pub description: &'static str,
    /// The documentation URL; empty for `InvalidBaseImagePlatform`.
    pub url: &'static str,
    /// Off unless `experimental=` names it (or says `all`).
    pub experimental: bool,
}

const fn rule(
    name: &'static str,
    description: &'static str,
    url: &'static str,
    experimental: bool,
) -> Rule {
    Rule {
        name,
        description,
        url,
        experimental,
    }
}

/// `FROM image AS Name`.
pub const STAGE_NAME_CASING: Rule = rule(
    "StageNameCasing",
    "Stage names should be lowercase",
    "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
    false,
);
/// `FROM image as name`.
pub const FROM_AS_CASING: Rule = rule(
    "FromAsCasing",
    "The 'as' keyword should match the case of the 'from' keyword",
    "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
    false,
);
/// A blank line inside a continued instruction.
pub const NO_EMPTY_CONTINUATION: Rule = rule(
    "NoEmptyContinuation",
    "Empty continuation lines will become errors in a future release",
    "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
    false,
);
/// Keywords in the minority casing.
pub const CONSISTENT_INSTRUCTION_CASING: Rule = rule(
    "ConsistentInstructionCasing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)",
    "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
    false,
);
/// Two stages with one name.
pub const DUPLICATE_STAGE_NAME: Rule = rule(
    "DuplicateStageName",
    "Stage names should be unique",
    "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/",
    false,
);
/// A stage named `context` or `scratch`.
pub const RESERVED_STAGE_NAME: Rule = rule(
    "ReservedStageName",
    "Reserved words should not be used as stage names",
    "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
    false,
);
/// Shell-form CMD or ENTRYPOINT without a SHELL.
pub const JSON_ARGS_RECOMMENDED: Rule = rule(
    "JSONArgsRecommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
    false,
);
/// MAINTAINER.
pub const MAINTAINER_DEPRECATED: Rule = rule(
    "MaintainerDeprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
    false,
);
/// A variable in FROM that no ARG declares.
pub const UNDEFINED_ARG_IN_FROM: Rule = rule(
    "UndefinedArgInFrom",
    "FROM command must use declared ARGs",
    "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/",
    false,
);
/// The first WORKDIR of a build is relative.
pub const WORKDIR_RELATIVE_PATH: Rule = rule(
    "WorkdirRelativePath",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
    "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
    false,
);
/// A variable used before it is set.
pub const UNDEFINED_VAR: Rule = rule(
    "UndefinedVar",
    "Variables should be defined before their use",
    "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
    false,
);
/// A second CMD, ENTRYPOINT or HEALTHCHECK in a stage.
pub const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule(
    "MultipleInstructionsDisallowed",
    "Multiple instructions of the same type should not be used in the same stage",
    "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
    false,
);
/// `ENV key value`.
pub const LEGACY_KEY_VALUE_FORMAT: Rule = rule(
    "LegacyKeyValueFormat",
    "Legacy key/value format with whitespace separator should not be used",
    "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
    false,
);
/// A base image whose config names another platform. BuildKit gives it no
/// URL.
pub const INVALID_BASE_IMAGE_PLATFORM: Rule = rule(
    "InvalidBaseImagePlatform",
    "Base image platform does not match expected target platform",
    "",
    false,
);
/// `FROM --platform=$TARGETPLATFORM`.
pub const REDUNDANT_TARGET_PLATFORM: Rule = rule(
    "RedundantTargetPlatform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
    false,
);
/// ARG or ENV keys that look like secrets.
pub const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule(
    "SecretsUsedInArgOrEnv",
    "Sensitive data should not be used in the ARG or ENV commands",
    "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
    false,
);
/// A FROM that is no valid image name with the meta ARGs' defaults.
pub const INVALID_DEFAULT_ARG_IN_FROM: Rule = rule(
    "InvalidDefaultArgInFrom",
    "Default value for global ARG results in an empty or invalid base image name",
    "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
    false,
);
/// `FROM --platform=linux/amd64`.
pub const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule = rule(
    "FromPlatformFlagConstDisallowed",
    "FROM --platform flag should not use a constant value",
    "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
    false,
);
/// COPY or ADD of a path `.dockerignore` excludes (experimental).
pub const COPY_IGNORED_FILE: Rule = rule(
    "CopyIgnoredFile",
    "Attempting to Copy file that is excluded by .dockerignore",
    "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
    true,
);
/// A comment above FROM or ARG that does not start with its name
/// (experimental).
pub const INVALID_DEFINITION_DESCRIPTION: Rule = rule(
    "InvalidDefinitionDescription",
    "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
    "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/",
    true,
);
/// `EXPOSE 80/TCP`.
pub const EXPOSE_PROTO_CASING: Rule = rule(
    "ExposeProtoCasing",
    "Protocol in EXPOSE instruction should be lowercase",
    "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
    false,
);
/// `EXPOSE 127.0.0.1:80:80`.
pub const EXPOSE_INVALID_FORMAT: Rule = rule(
    "ExposeInvalidFormat",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
    "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
    false,
);

/// Every rule, in BuildKit's order.
pub const RULES: [Rule; 22] = [
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    INVALID_BASE_IMAGE_PLATFORM,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    INVALID_DEFAULT_ARG_IN_FROM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
    INVALID_DEFINITION_DESCRIPTION,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
];

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// The rule's name.
    pub rule_name: &'static str,
    /// The rule's description (BuildKit sends it as the only detail line).
    pub description: &'static str,
    /// The rule's URL; empty for `InvalidBaseImagePlatform`.
    pub url: &'static str,
    /// What was found, e.g. `'as' and 'FROM' keywords' casing do not match`.
    pub message: String,
    /// One range per Dockerfile line of the instruction (1-based, each
    /// starting and ending on its line).
    pub location: Vec<LineRange>,
}

impl LintWarning {
    /// The one-line form clients print: `<Rule>: <message> (line N)`, the
    /// line being where the location starts (left out when unknown).
    pub fn short(&self) -> String {
        match self.location.first() {
            Some(r) if r.start > 0 => {
                format!("{}: {} (line {})", self.rule_name, self.message, r.start)
            }
            _ => format!("{}: {}", self.rule_name, self.message),
        }
    }
}

/// Where a conversion puts its warnings, shared with whoever forwards them.
#[derive(Clone, Debug, Default)]
pub struct LintSink {
    warnings: Arc<Mutex<Vec<LintWarning>>>,
}

impl LintSink {
    /// An empty sink.
    pub fn new() -> Self {
        LintSink::default()
    }

    /// Adds a warning after the ones already there.
    pub fn push(&self, warning: LintWarning) {
        // A panic elsewhere while the lock was held leaves a usable list.
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(warning);
    }

    /// Removes and returns the warnings, in the order they were pushed.
    pub fn take(&self) -> Vec<LintWarning> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The lint settings for `dockerfile` as BuildKit finds them: the
/// `BUILDKIT_DOCKERFILE_CHECK` build argument when given (even empty), else
/// the `# check=` directive, whose value BuildKit cuts at the first space.
pub fn check_options(
    dockerfile: &[u8],
    build_args: &BTreeMap<String, String>,
) -> Result<CheckOptions, String> {
    if let Some(v) = build_args.get(CHECK_BUILD_ARG) {
        return check_build_arg(v);
    }
    let value = parse_directive("check", dockerfile)
        .map(|d| d.name)
        .unwrap_or_default();
    CheckOptions::parse(&value).map_err(|e| format!("failed to parse check options: {e}"))
}

/// Reads the value of `build-arg:BUILDKIT_DOCKERFILE_CHECK`.
pub fn check_build_arg(value: &str) -> Result<CheckOptions, String> {
    CheckOptions::parse(value)
        .map_err(|e| format!("failed to parse build-arg:{CHECK_BUILD_ARG}: {e}"))
}

/// One line range per line of `at`, as BuildKit's `Node.Location` gives.
fn per_line(at: LineRange) -> Vec<LineRange> {
    (at.start..=at.end).map(|l| LineRange::new(l, l)).collect()
}

/// The rules of one conversion: which run, what fired, where warnings go.
#[derive(Debug, Default)]
pub(crate) struct Linter {
    options: CheckOptions,
    sink: Option<LintSink>,
    fired: BTreeSet<&'static str>,
    kept: usize,
    ranges: usize,
}

impl Linter {
    /// Without a sink nothing runs, and `error=true` never fails.
    pub(crate) fn new(options: CheckOptions, sink: Option<LintSink>) -> Self {
        Linter {
            options,
            sink,
            ..Linter::default()
        }
    }

    /// A linter that runs nothing.
    pub(crate) fn off() -> Self {
        Linter::default()
    }

    pub(crate) fn enabled(&self, rule: &Rule) -> bool {
        if self.sink.is_none() {
            return false;
        }
        let named = |list: &[String]| list.iter().any(|r| r == rule.name);
        if rule.experimental {
            self.options.experimental_all || named(&self.options.experimental_rules)
        } else {
            !(self.options.skip_all || named(&self.options.skip_rules))
        }
    }

    /// Reports `rule` at the lines of `at`; `message` is only worked out
    /// when the warning is kept.
    pub(crate) fn run(&mut self, rule: &Rule, at: LineRange, message: impl FnOnce() -> String) {
        self.report(rule, Some(at), message);
    }

    /// [`Linter::run`] for findings that may have no location (stages
    /// BuildKit makes up for images only named by RUN mounts).
    pub(crate) fn report(
        &mut self,
        rule: &Rule,
        at: Option<LineRange>,
        message: impl FnOnce() -> String,
    ) {
        if !self.enabled(rule) {
            return;
        }
        self.fired.insert(rule.name);
        let lines = at.map_or(0, |r| r.end.saturating_sub(r.start).saturating_add(1));
        if self.kept >= MAX_WARNINGS || self.ranges.saturating_add(lines) > MAX_RANGES {
            return;
        }
        let Some(sink) = &self.sink else { return };
        self.kept += 1;
        self.ranges += lines;
        sink.push(LintWarning {
            rule_name: rule.name,
            description: rule.description,
            url: rule.url,
            message: message(),
            location: at.map(per_line).unwrap_or_default(),
        });
    }

    /// BuildKit's `error=true` failure, once dispatch is done: the rules
    /// that fired, sorted (BuildKit lists them in map order).
    pub(crate) fn error(&self) -> Option<String> {
        if !self.options.error || self.fired.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.fired.iter().copied().collect();
        Some(format!(
            "lint violation found for rules: {}",
            names.join(", ")
        ))
    }
}

/// The parser's blank continuation line warning, on the instruction's last
/// line.
pub(crate) fn empty_continuation(lint: &mut Linter, line: usize) {
    lint.run(&NO_EMPTY_CONTINUATION, LineRange::new(line, line), || {
        "Empty continuation line".to_owned()
    });
}

/// The checks BuildKit makes on a node before its instruction is parsed
/// (so they are reported even when parsing then fails).
pub(crate) fn before_instruction(lint: &mut Linter, node: &Node) {
    let at = node.location();
    match to_lower(&node.value).as_str() {
        "maintainer" => lint.run(&MAINTAINER_DEPRECATED, at, || {
            "Maintainer instruction is deprecated in favor of using label".to_owned()
        }),
        "from" => {
            let args = &node.args;
            if args.len() == 3 && args[2] != to_lower(&args[2]) {
                lint.run(&STAGE_NAME_CASING, at, || {
                    format!("Stage name '{}' should be lowercase", args[2])
                });
            }
            if args.len() >= 3 {
                let keyword = &node.value;
                // A mixed-case keyword is ConsistentInstructionCasing's
                // business, not this rule's.
                let as_ok = if *keyword == to_lower(keyword) {
                    args[1] == to_lower(&args[1])
                } else if *keyword == to_upper(keyword) {
                    args[1] == to_upper(&args[1])
                } else {
                    true
                };
                if !as_ok {
                    lint.run(&FROM_AS_CASING, at, || {
                        format!(
                            "'{}' and '{keyword}' keywords' casing do not match",
                            args[1]
                        )
                    });
                }
            }
        }
        _ => {}
    }
}

/// The checks BuildKit makes once a node has parsed.
pub(crate) fn after_instruction(lint: &mut Linter, node: &Node, instruction: &Instruction) {
    match instruction {
        Instruction::From(from) => {
            if let Some(name) = &from.name {
                definition_description(lint, node, "FROM", &[name.as_str()]);
            }
        }
        Instruction::Arg(pairs) => {
            let keys: Vec<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
            definition_description(lint, node, "ARG", &keys);
        }
        _ => {}
    }
}

fn definition_description(lint: &mut Linter, node: &Node, instruction: &str, names: &[&str]) {
    let (Some(comment), Some(first)) = (node.comments.last(), names.first()) else {
        return;
    };
    let word = comment.split(' ').next().unwrap_or_default();
    if names.contains(&word) {
        return;
    }
    let example = if names.len() > 1 { "<arg_key>" } else { first };
    lint.run(&INVALID_DEFINITION_DESCRIPTION, node.location(), || {
        format!("Comment for {instruction} should follow the format: `# {example} <description>`")
    });
}

/// Reserved and repeated stage names.
pub(crate) fn stage_names(lint: &mut Linter, stages: &[Stage]) {
    let mut seen = HashSet::new();
    for stage in stages {
        let Some(name) = &stage.name else { continue };
        if name == "context" || name == "scratch" {
            lint.run(&RESERVED_STAGE_NAME, stage.location, || {
                format!(
                    "Stage name should not use the same name as reserved stage {}",
                    quote(name)
                )
            });
        }
        if !seen.insert(name.as_str()) {
            lint.run(&DUPLICATE_STAGE_NAME, stage.location, || {
                format!(
                    "Duplicate stage name {}, stage names should be unique",
                    quote(name)
                )
            });
        }
    }
}

/// Keywords (every FROM and stage command, not meta ARGs) whose casing is
/// not the majority's; a tie counts as uppercase.
pub(crate) fn command_casing(lint: &mut Linter, stages: &[Stage]) {
    let keywords = || {
        stages.iter().flat_map(|s| {
            std::iter::once((s.orig_cmd.as_str(), s.location))
                .chain(s.commands.iter().map(|c| (c.name.as_str(), c.location)))
        })
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for (k, _) in keywords() {
        if k == to_lower(k) {
            lower += 1;
        } else if k == to_upper(k) {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for (k, at) in keywords() {
        let casing = if majority_lower && to_lower(k) != k {
            "lowercase"
        } else if !majority_lower && to_upper(k) != k {
            "uppercase"
        } else {
            continue;
        };
        lint.run(&CONSISTENT_INSTRUCTION_CASING, at, || {
            format!("Command '{k}' should match the case of the command majority ({casing})")
        });
    }
}

/// Variables of a FROM (image or `--platform`) that are neither predefined
/// nor declared by a meta ARG.
pub(crate) fn undefined_args_in_from(
    lint: &mut Linter,
    declared: &BTreeSet<String>,
    unmatched: &BTreeSet<String>,
    at: LineRange,
) {
    for arg in unmatched.iter().filter(|a| !declared.contains(*a)) {
        lint.run(&UNDEFINED_ARG_IN_FROM, at, || {
            let mut msg = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest(arg, declared.iter().map(String::as_str)) {
                msg.push_str(&format!(" (did you mean {s}?)"));
            }
            msg
        });
    }
}

/// `--platform=$TARGETPLATFORM` (or `${TARGETPLATFORM}`), nothing else.
pub(crate) fn redundant_target_platform(
    lint: &mut Linter,
    raw: &str,
    expansion: &super::shell::Expansion,
    target_platform: Option<&str>,
    at: LineRange,
) {
    if expansion.matched.len() != 1
        || !expansion.unmatched.is_empty()
        || !expansion.matched.contains("TARGETPLATFORM")
        || target_platform != Some(expansion.result.as_str())
    {
        return;
    }
    lint.run(&REDUNDANT_TARGET_PLATFORM, at, || {
        format!("Setting platform to predefined {raw} in FROM is redundant as this is the default behavior")
    });
}

/// A `--platform` without variables, unless the stage name mentions its OS
/// or architecture.
pub(crate) fn const_platform(
    lint: &mut Linter,
    stage_name: &str,
    expansion: &super::shell::Expansion,
    at: LineRange,
) {
    if !expansion.matched.is_empty() || !expansion.unmatched.is_empty() {
        return;
    }
    let Ok(p) = bk_image::platforms::parse(&expansion.result) else {
        return;
    };
    if stage_name.contains(p.os.as_str()) || stage_name.contains(p.architecture.as_str()) {
        return;
    }
    lint.run(&FROM_PLATFORM_FLAG_CONST_DISALLOWED, at, || {
        format!(
            "FROM --platform flag should not use constant value {}",
            quote(&expansion.result)
        )
    });
}

/// The secret-looking words of BuildKit's pattern: a key is flagged when one
/// of its `_`-separated parts is one of these (ignoring case) and none is
/// `public`.
const SECRET_WORDS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];

/// Case-insensitive equality with `word` (ASCII lowercase) as Go's `(?i)`
/// sees it: the Kelvin sign folds to `k` and the long s to `s`.
fn folds_to(part: &str, word: &str) -> bool {
    let mut chars = part.chars();
    for w in word.chars() {
        let Some(c) = chars.next() else { return false };
        let folded = match c {
            '\u{212a}' => 'k',
            '\u{17f}' => 's',
            c => c.to_ascii_lowercase(),
        };
        if folded != w {
            return false;
        }
    }
    chars.next().is_none()
}

fn looks_secret(key: &str) -> bool {
    let mut parts = key.split('_');
    let deny = parts
        .clone()
        .any(|p| SECRET_WORDS.iter().any(|w| folds_to(p, w)));
    deny && !parts.any(|p| folds_to(p, "public"))
}

/// `instruction` is `ARG` or `ENV`.
pub(crate) fn secret_key(lint: &mut Linter, instruction: &str, key: &str, at: LineRange) {
    if looks_secret(key) {
        lint.run(&SECRETS_USED_IN_ARG_OR_ENV, at, || {
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                quote(key)
            )
        });
    }
}

/// Variables BuildKit never puts in the environment.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Variables an instruction used that were not set, except the stage's
/// declared ARGs (which may simply have no value).
pub(crate) fn undefined_vars(
    lint: &mut Linter,
    unmatched: &BTreeSet<String>,
    build_args: &[(String, Option<String>)],
    env: &[(String, String)],
    at: LineRange,
) {
    for var in unmatched {
        if build_args.iter().any(|(k, _)| k == var) || NON_ENV_ARGS.contains(&var.as_str()) {
            continue;
        }
        lint.run(&UNDEFINED_VAR, at, || {
            let mut msg = format!("Usage of undefined variable '${var}'");
            if let Some(s) = suggest(var, env.iter().map(|(k, _)| k.as_str())) {
                msg.push_str(&format!(" (did you mean ${s}?)"));
            }
            msg
        });
    }
}

/// `ENV key value` or `LABEL key value`; `command` as written.
pub(crate) fn legacy_key_value(lint: &mut Linter, command: &str, at: LineRange) {
    lint.run(&LEGACY_KEY_VALUE_FORMAT, at, || {
        format!("\"{command} key=value\" should be used instead of legacy \"{command} key value\" format")
    });
}

/// A CMD, ENTRYPOINT or HEALTHCHECK at `at`; `last` is where the stage's
/// previous one was. The previous one is reported: it is the one ignored.
pub(crate) fn used_once(
    lint: &mut Linter,
    last: &mut Option<LineRange>,
    command: &str,
    at: LineRange,
) {
    if let Some(prev) = last.replace(at) {
        lint.run(&MULTIPLE_INSTRUCTIONS_DISALLOWED, prev, || {
            format!("Multiple {command} instructions should not be used in the same stage because only the last one will be used")
        });
    }
}

/// A shell-form CMD or ENTRYPOINT with no SHELL in effect.
pub(crate) fn json_args(lint: &mut Linter, command: &str, at: LineRange) {
    lint.run(&JSON_ARGS_RECOMMENDED, at, || {
        format!("JSON arguments recommended for {command} to prevent unintended behavior related to OS signals")
    });
}

/// One EXPOSE port spec `raw` with protocol `proto` (as written);
/// `mapped` when it names a host address or port.
pub(crate) fn expose_port(lint: &mut Linter, raw: &str, proto: &str, mapped: bool, at: LineRange) {
    if proto != to_lower(proto) {
        lint.run(&EXPOSE_PROTO_CASING, at, || {
            format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase")
        });
    }
    if mapped {
        lint.run(&EXPOSE_INVALID_FORMAT, at, || {
            format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'")
        });
    }
}

/// BuildKit's case-sensitive `suggest.Search`: the first option within two
/// edits, closer ones replacing it; none if `val` is itself an option. The
/// distance is only worked out near the diagonal, so long hostile names
/// cost little.
fn suggest<'a>(val: &str, options: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let v: Vec<char> = val.chars().collect();
    let mut best = None;
    let mut min = 3;
    for opt in options {
        if opt == val {
            return None;
        }
        let o: Vec<char> = opt.chars().collect();
        if let Some(d) = distance_below(&v, &o, min) {
            min = d;
            best = Some(opt.to_owned());
        }
    }
    best
}

/// The Levenshtein distance of `a` and `b` if it is below `limit`.
fn distance_below(a: &[char], b: &[char], limit: usize) -> Option<usize> {
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) >= limit {
        return None;
    }
    // Cells further than `limit` from the diagonal are at least `limit`
    // away, so they are pinned there and never computed.
    let far = limit;
    let mut prev: Vec<usize> = (0..=m).map(|j| j.min(far)).collect();
    let mut cur = vec![far; m + 1];
    for i in 1..=n {
        let lo = i.saturating_sub(limit);
        let hi = (i + limit).min(m);
        if lo == 0 {
            cur[0] = i.min(far);
        } else {
            cur[lo - 1] = far;
        }
        for j in lo.max(1)..=hi {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1).min(far);
        }
        if hi < m {
            cur[hi + 1] = far;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (prev[m] < limit).then_some(prev[m])
}

/// `.dockerignore` patterns for CopyIgnoredFile, matched as BuildKit's
/// `patternmatcher.MatchesOrParentMatches` does for the common syntax:
/// `*`, `?`, `**`, `[...]` classes, `\` escapes and `!` exceptions. Go
/// regular-expression syntax that upstream lets through by accident (`|`,
/// `{n}`, `\d`, `^`) is taken literally here.
#[derive(Debug, Clone)]
pub(crate) struct IgnoreMatcher {
    patterns: Vec<IgnorePattern>,
}

#[derive(Debug, Clone)]
struct IgnorePattern {
    text: String,
    exclusion: bool,
    kind: PatternKind,
}

#[derive(Debug, Clone)]
enum PatternKind {
    Exact,
    Prefix,
    Suffix,
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`.
    NotSlash,
    /// `*`.
    Star,
    /// `**/` inside a pattern: any directories, or none.
    AnyDirs,
    /// `**` at the end after a wildcard: anything but a newline.
    AnyRest,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl IgnoreMatcher {
    /// `None` when there is nothing to match or a pattern is malformed
    /// (BuildKit fails the build for the latter; here only this rule is
    /// given up).
    pub(crate) fn new(patterns: &[String]) -> Option<Self> {
        let mut out = Vec::new();
        for raw in patterns {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = super::convert::path_clean(trimmed);
            let (exclusion, text) = match cleaned.strip_prefix('!') {
                Some("") => return None,
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            let kind = compile(&text)?;
            out.push(IgnorePattern {
                text,
                exclusion,
                kind,
            });
        }
        (!out.is_empty()).then_some(IgnoreMatcher { patterns: out })
    }

    /// Whether `file` or one of its parent directories is excluded.
    pub(crate) fn matches_or_parent(&self, file: &str) -> bool {
        let parent = go_dir(file);
        let dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.matches(file);
            if !hit && parent != "." {
                hit = (1..=dirs.len()).any(|i| p.matches(&dirs[..i].join("/")));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }
}

impl IgnorePattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            PatternKind::Exact => path == self.text,
            PatternKind::Prefix => self
                .text
                .get(..self.text.len().saturating_sub(2))
                .is_some_and(|p| path.starts_with(p)),
            PatternKind::Suffix => {
                let suffix = self.text.get(2..).unwrap_or_default();
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            PatternKind::Glob(tokens) => glob_match(tokens, &path.chars().collect::<Vec<_>>()),
        }
    }
}

/// Go's `filepath.Dir` for slash paths.
fn go_dir(p: &str) -> String {
    match p.rfind('/') {
        Some(i) => super::convert::path_clean(&p[..=i]),
        None => ".".to_owned(),
    }
}

/// The pattern's kind as patternmatcher classifies it; `None` if a class
/// is not closed.
fn compile(text: &str) -> Option<PatternKind> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = text.chars().collect();
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut step = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::AnyRest);
                        kind = Kind::Glob;
                    }
                } else {
                    tokens.push(Token::AnyDirs);
                    kind = Kind::Glob;
                }
                if step == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Glob;
            }
            '?' => {
                tokens.push(Token::NotSlash);
                kind = Kind::Glob;
            }
            '\\' => match chars.get(i) {
                Some(&e) => {
                    i += 1;
                    tokens.push(Token::Char(e));
                    kind = Kind::Glob;
                }
                None => tokens.push(Token::Char('\\')),
            },
            '[' => {
                let (class, next) = class(&chars, i)?;
                tokens.push(class);
                i = next;
                kind = Kind::Glob;
            }
            ']' => {
                tokens.push(Token::Char(']'));
                kind = Kind::Glob;
            }
            c => tokens.push(Token::Char(c)),
        }
        step += 1;
    }
    Some(match kind {
        Kind::Exact => PatternKind::Exact,
        Kind::Prefix => PatternKind::Prefix,
        Kind::Suffix => PatternKind::Suffix,
        Kind::Glob => PatternKind::Glob(tokens),
    })
}

/// A `[...]` class starting after its `[` at `i`; returns the index after
/// its `]`. A `]` first in the class is a member.
fn class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        i += 1;
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i));
        }
        first = false;
        if c == '\\' {
            c = *chars.get(i)?;
            i += 1;
        }
        let mut hi = c;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            hi = *chars.get(i + 1)?;
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            if hi < c {
                return None;
            }
        }
        ranges.push((c, hi));
    }
}

/// Whether `tokens` match all of `s`, tracking every reachable position at
/// once (linear in the path per token, whatever the pattern).
fn glob_match(tokens: &[Token], s: &[char]) -> bool {
    let n = s.len();
    let mut cur = vec![false; n + 1];
    cur[0] = true;
    for t in tokens {
        let mut next = vec![false; n + 1];
        match t {
            Token::Char(_) | Token::NotSlash | Token::Class { .. } => {
                for p in 0..n {
                    if cur[p] && one_char(t, s[p]) {
                        next[p + 1] = true;
                    }
                }
            }
            Token::Star | Token::AnyRest => {
                let stop = if *t == Token::Star { '/' } else { '\n' };
                let mut on = false;
                for p in 0..=n {
                    on |= cur[p];
                    next[p] = on;
                    if s.get(p) == Some(&stop) {
                        on = false;
                    }
                }
            }
            Token::AnyDirs => {
                let mut on = false;
                for p in 0..=n {
                    next[p] |= cur[p];
                    on |= cur[p];
                    match s.get(p) {
                        Some('\n') => on = false,
                        Some('/') if on => next[p + 1] = true,
                        _ => {}
                    }
                }
            }
        }
        cur = next;
        if !cur.contains(&true) {
            return false;
        }
    }
    cur[n]
}

fn one_char(t: &Token, c: char) -> bool {
    match t {
        Token::Char(x) => *x == c,
        Token::NotSlash => c != '/',
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
        _ => false,
    }
}

/// CopyIgnoredFile for one source of COPY or ADD from the build context.
pub(crate) fn copy_ignored(
    lint: &mut Linter,
    matcher: Option<&IgnoreMatcher>,
    is_add: bool,
    src: &str,
    at: LineRange,
) {
    let Some(m) = matcher else { return };
    if !lint.enabled(&COPY_IGNORED_FILE) || !m.matches_or_parent(src) {
        return;
    }
    let verb = if is_add { "Add" } else { "Copy" };
    lint.run(&COPY_IGNORED_FILE, at, || {
        format!(
            "Attempting to {verb} file {} that is excluded by .dockerignore",
            quote(src)
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        for k in [
            "SECRET_PASSPHRASE",
            "git_key",
            "auth",
            "super_duper_secret_token",
            "API_\u{212a}EY",
        ] {
            assert!(looks_secret(k), "{k}");
        }
        for k in ["sunflower", "PUBLIC_KEY", "public_token", "keys", "MONKEY"] {
            assert!(!looks_secret(k), "{k}");
        }
    }

    #[test]
    fn suggestions() {
        let opts = ["DIR_BINARIES", "DIR_ASSETS", "DIR_CONFIG"];
        assert_eq!(suggest("DIR_ASSET", opts).as_deref(), Some("DIR_ASSETS"));
        assert_eq!(suggest("DIR_ASSETS", opts), None);
        assert_eq!(suggest("zzz", opts), None);
        assert_eq!(suggest("PAHT", ["HOME", "PATH"]).as_deref(), Some("PATH"));
        for (a, b) in [
            ("kitten", "sitting"),
            ("", "ab"),
            ("abc", "abc"),
            ("flaw", "lawn"),
            ("ab", "ba"),
        ] {
            let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            let full = super::super::golang::levenshtein(
                &a.iter().collect::<String>(),
                &b.iter().collect::<String>(),
            );
            let banded = distance_below(&a, &b, 3);
            assert_eq!(banded, (full < 3).then_some(full), "{a:?} {b:?}");
        }
    }

    #[test]
    fn ignore_patterns() {
        let m = |pats: &[&str], path: &str| {
            let pats: Vec<String> = pats.iter().map(|s| (*s).to_owned()).collect();
            IgnoreMatcher::new(&pats).is_some_and(|m| m.matches_or_parent(path))
        };
        assert!(m(&["Dockerfile"], "Dockerfile"));
        assert!(m(&["docs"], "docs/a/b.md"));
        assert!(m(&["*.md"], "README.md"));
        assert!(!m(&["*.md"], "docs/README.md"));
        assert!(m(&["**/*.md"], "docs/README.md"));
        assert!(m(&["**/*.md"], "README.md"));
        assert!(m(&["docs/**"], "docs/x"));
        assert!(m(&["**/foo"], "foo"));
        assert!(m(&["**/foo"], "a/b/foo"));
        assert!(m(&["a?c"], "abc"));
        assert!(!m(&["a?c"], "a/c"));
        assert!(m(&["[a-c]x"], "bx"));
        assert!(!m(&["[^a-c]x"], "bx"));
        assert!(m(&["docs", "!docs/keep.md"], "docs/other.md"));
        assert!(!m(&["docs", "!docs/keep.md"], "docs/keep.md"));
        assert!(!m(&["Dockerfile"], "./Dockerfile"));
        assert!(IgnoreMatcher::new(&["[abc".to_owned()]).is_none());
        assert!(IgnoreMatcher::new(&["!".to_owned()]).is_none());
        assert!(IgnoreMatcher::new(&[]).is_none());
    }

    #[test]
    fn odd_patterns_never_panic() {
        let alphabet = [
            'a', '/', '*', '?', '[', ']', '\\', '^', '-', '!', 'é', '.', '\n',
        ];
        let word = |mut n: usize| {
            let mut w = String::new();
            while n > 0 {
                w.push(alphabet[n % alphabet.len()]);
                n /= alphabet.len();
            }
            w
        };
        for p in 0..3000 {
            let Some(m) = IgnoreMatcher::new(&[word(p)]) else {
                continue;
            };
            for f in (0..400).step_by(7) {
                m.matches_or_parent(&word(f));
            }
        }
    }

    #[test]
    fn short_form() {
        let mut w = LintWarning {
            rule_name: "FromAsCasing",
            description: FROM_AS_CASING.description,
            url: FROM_AS_CASING.url,
            message: "'as' and 'FROM' keywords' casing do not match".to_owned(),
            location: vec![LineRange::new(2, 2)],
        };
        assert_eq!(
            w.short(),
            "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"
        );
        w.location.clear();
        assert_eq!(
            w.short(),
            "FromAsCasing: 'as' and 'FROM' keywords' casing do not match"
        );
    }
}
