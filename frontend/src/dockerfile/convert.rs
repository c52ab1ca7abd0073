//! From a Dockerfile to LLB and an image config, as BuildKit's
//! `dockerfile2llb` converts it. Start with [`convert`].
//!
//! The Dockerfile is parsed ([`super::parse`], [`super::instructions()`]),
//! meta ARGs are evaluated with the automatic platform args and the build
//! args, every stage's base is expanded and resolved (`scratch`, another
//! stage, a named context, or an image whose config the [`ImageResolver`]
//! supplies), only the stages the target needs are dispatched, and each
//! instruction becomes what BuildKit makes of it: state (ENV, ARG, USER,
//! WORKDIR…), config (CMD, LABEL, EXPOSE…), history, and ops — RUN an exec
//! with its mounts, COPY/ADD file ops (merged onto the stage for `--link`),
//! WORKDIR a `mkdir`. Vertex names, descriptions, capabilities, history lines
//! and error texts are BuildKit's (v0.24; EXPOSE history as newer BuildKit
//! writes it, since v0.24 prints a pointer there).
//!
//! ADD of a URL is an `http(s)` source, ADD of a git reference a `git`
//! source ([`super::git_ref`]). Not supported yet, with a clear error: named
//! contexts of type `git`, `http(s)` and `oci-layout`, RUN `--device` (the
//! daemon has no CDI), Windows targets. Subrequests (outline, targets,
//! lint) and SBOM scan targets are not run.
//!
//! With a [`LintSink`] in [`ConvertOptions::lint`], BuildKit's lint rules
//! run where BuildKit runs them ([`super::lint`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bk_image::platforms;
use bk_image::types::{HealthConfig, Image, Platform};
use bk_image::{Digest as ImageDigest, Reference};
use bk_proto::pb::{self, file_action::Action};

use super::git_ref::{GitRef, parse_git_ref};
use super::golang::{csv_fields, parse_uint, quote, to_lower, to_upper, with_suggestion};
use super::graph::{
    self, ExecMount, ExecSpec, FileActions, OpMeta, Out, SecretSpec, SourceMapInfo, SshSpec,
};
use super::image::{
    DEFAULT_PATH_ENV, HISTORY_COMMENT, empty_image, healthcheck_history, plain_list, quote_list,
    rfc3339, to_json,
};
use super::instructions::{
    Command, Instruction, SourcesAndDest, instructions_linted, parse_instruction,
};
use super::lint::{self, IgnoreMatcher, LintSink, Linter};
use super::mounts::{Mount, MountType, NetworkMode, SecurityMode, ShareMode};
use super::outline::{ArgInfo, Capture, Outline, StageLinks};
use super::parser::{LineRange, Warning, chomp_heredoc_content, parse, parse_heredoc};
use super::shell::{Env, Lexer, NoEnv};

const SCRATCH: &str = "scratch";

/// How image references are resolved (`image-resolve-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolveMode {
    /// Use a local copy when the registry has the same digest.
    #[default]
    Default,
    /// Always ask the registry (`pull`).
    Pull,
    /// Prefer a local copy (`local`).
    Local,
}

impl ResolveMode {
    /// The `image.resolvemode` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveMode::Default => "default",
            ResolveMode::Pull => "pull",
            ResolveMode::Local => "local",
        }
    }
}

/// Looks up image configs (the daemon's registry client, or a fake).
///
#[async_trait]
pub trait ImageResolver: Send + Sync {
    /// Resolves `reference` (normalised, e.g.
    /// `docker.io/library/busybox:latest`) for `platform`: the manifest's
    /// digest (`sha256:…`, or empty if unknown) and the image config JSON.
    /// `mode` is `image-resolve-mode` (`default`, `pull` or `local`).
    async fn resolve(
        &self,
        reference: &str,
        platform: &pb::Platform,
        mode: &str,
    ) -> Result<(String, Vec<u8>), String>;
}

/// Where the Dockerfile came from, for the definition's source map.
#[derive(Debug, Clone)]
pub struct SourceMap {
    /// The file name (`Dockerfile`).
    pub filename: String,
    /// The definition of the source it was read from, if any.
    pub definition: Option<pb::Definition>,
}

/// What the build asked for (BuildKit's frontend attributes, parsed).
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `target`: the stage to build (default: the last one).
    pub target: Option<String>,
    /// `build-arg:*`.
    pub build_args: BTreeMap<String, String>,
    /// `label:*`, added to the result's config.
    pub labels: BTreeMap<String, String>,
    /// The platform to build for (one of `platform`); `None` means the
    /// build platform, implicitly (then a base image's own platform wins).
    pub target_platform: Option<pb::Platform>,
    /// Every platform `platform` asked for (normalised); BuildKit converts
    /// once per platform with `target_platform` set to each.
    pub platforms: Vec<pb::Platform>,
    /// The worker's platform.
    pub build_platform: pb::Platform,
    /// `multi-platform` (or several platforms): platforms prefix names.
    pub multi_platform: bool,
    /// `no-cache`: `Some(empty)` for every stage, else these stages.
    pub no_cache: Option<Vec<String>>,
    /// `image-resolve-mode`.
    pub image_resolve_mode: ResolveMode,
    /// The local name of the build context (`context`).
    pub context_name: String,
    /// The session that serves local sources.
    pub session_id: String,
    /// `local-sessionid:NAME`: other sessions for some locals.
    pub local_session_ids: BTreeMap<String, String>,
    /// `.dockerignore` patterns of the context, already read.
    pub context_excludes: Vec<String>,
    /// `context:NAME` values by NAME (which may end in `::platform`).
    /// `docker-image://`, `local:` and `input:` are supported.
    pub named_contexts: BTreeMap<String, String>,
    /// `.dockerignore` patterns of `local:` named contexts, by local name.
    pub named_context_excludes: BTreeMap<String, Vec<String>>,
    /// Frontend inputs (for `input:` named contexts).
    pub inputs: BTreeMap<String, pb::Definition>,
    /// `force-network-mode`.
    pub network_mode: pb::NetMode,
    /// `hostname` (or `BUILDKIT_SANDBOX_HOSTNAME`).
    pub hostname: String,
    /// `shm-size` in bytes (a tmpfs on `/dev/shm`).
    pub shm_size: i64,
    /// `ulimit`.
    pub ulimits: Vec<pb::Ulimit>,
    /// `add-hosts`.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// `cgroup-parent`.
    pub cgroup_parent: String,
    /// `BUILDKIT_CACHE_MOUNT_NS`.
    pub cache_id_namespace: String,
    /// The daemon's LLB capabilities. `None` behaves as BuildKit without a
    /// client (no `--link` merges, no shm/ulimit/cgroup options).
    pub llb_caps: Option<BTreeSet<String>>,
    /// Source map information.
    pub source_map: Option<SourceMap>,
    /// Where lint warnings go; `None` runs no lint rules at all (and
    /// `error=true` then fails nothing), as BuildKit does for every platform
    /// but the first.
    pub lint: Option<LintSink>,
    /// Dispatch every stage, not just the target's (the lint subrequest
    /// without a target).
    pub all_stages: bool,
}

impl ConvertOptions {
    /// Defaults for a build on `build_platform` in session `session_id`.
    pub fn new(build_platform: pb::Platform, session_id: &str) -> ConvertOptions {
        ConvertOptions {
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            target_platform: None,
            platforms: Vec::new(),
            build_platform,
            multi_platform: false,
            no_cache: None,
            image_resolve_mode: ResolveMode::Default,
            context_name: "context".to_owned(),
            session_id: session_id.to_owned(),
            local_session_ids: BTreeMap::new(),
            context_excludes: Vec::new(),
            named_contexts: BTreeMap::new(),
            named_context_excludes: BTreeMap::new(),
            inputs: BTreeMap::new(),
            network_mode: pb::NetMode::Unset,
            hostname: String::new(),
            shm_size: 0,
            ulimits: Vec::new(),
            extra_hosts: Vec::new(),
            cgroup_parent: String::new(),
            cache_id_namespace: String::new(),
            llb_caps: None,
            source_map: None,
            lint: None,
            all_stages: false,
        }
    }

    /// Reads BuildKit's frontend attributes as `dockerui` does, for a
    /// build on `build_platform` whose context is the local `context_name`
    /// of session `session_id`, with `.dockerignore` patterns
    /// `context_excludes`. The options are for the first platform asked for
    /// (see [`ConvertOptions::platforms`]).
    pub fn from_attrs(
        attrs: &BTreeMap<String, String>,
        build_platform: pb::Platform,
        session_id: &str,
        context_name: &str,
        context_excludes: Vec<String>,
    ) -> Result<ConvertOptions, String> {
        let mut o = ConvertOptions::new(build_platform, session_id);
        o.context_name = context_name.to_owned();
        o.context_excludes = context_excludes;
        let get = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");
        let mut targets = Vec::new();
        if !get("platform").is_empty() {
            for p in get("platform").split(',') {
                let parsed = platforms::parse(p)
                    .map_err(|e| format!("failed to parse target platform {p}: {e}"))?;
                targets.push(pb_platform(&platforms::normalize(&parsed)));
            }
        }
        o.target_platform = targets.first().cloned();
        o.platforms = targets.clone();
        o.image_resolve_mode = match get("image-resolve-mode") {
            "" | "default" => ResolveMode::Default,
            "pull" => ResolveMode::Pull,
            "local" => ResolveMode::Local,
            v => return Err(format!("invalid image-resolve-mode: {v}")),
        };
        if !get("add-hosts").is_empty() {
            let fields = csv_fields(get("add-hosts"))
                .map_err(|e| format!("failed to parse additional hosts: {e}"))?;
            for field in fields {
                let lower = to_lower(&field);
                let Some((host, ip)) = lower.split_once('=') else {
                    return Err(format!(
                        "failed to parse additional hosts: invalid key-value pair {field}"
                    ));
                };
                let ip: IpAddr = ip.parse().map_err(|_| {
                    format!("failed to parse additional hosts: failed to parse IP {ip}")
                })?;
                o.extra_hosts.push((host.to_owned(), ip));
            }
        }
        if !get("shm-size").is_empty() {
            o.shm_size = get("shm-size").parse().map_err(|_| {
                format!(
                    "failed to parse shm size: strconv.ParseInt: parsing {}: invalid syntax",
                    quote(get("shm-size"))
                )
            })?;
        }
        if !get("ulimit").is_empty() {
            let fields =
                csv_fields(get("ulimit")).map_err(|e| format!("failed to parse ulimit: {e}"))?;
            for f in fields {
                o.ulimits
                    .push(parse_ulimit(&f).map_err(|e| format!("failed to parse ulimit: {e}"))?);
            }
        }
        o.network_mode = match get("force-network-mode") {
            "" | "sandbox" => pb::NetMode::Unset,
            "none" => pb::NetMode::None,
            "host" => pb::NetMode::Host,
            v => return Err(format!("invalid netmode {v}")),
        };
        o.no_cache = attrs.get("no-cache").map(|v| {
            if v.is_empty() {
                Vec::new()
            } else {
                v.split(',').map(str::to_owned).collect()
            }
        });
        let mut multi = targets.len() > 1;
        let mp = match attrs.get("build-arg:BUILDKIT_MULTI_PLATFORM") {
            Some(v) if !v.is_empty() => v.as_str(),
            _ => get("multi-platform"),
        };
        if !mp.is_empty() {
            let b = super::golang::parse_bool(mp)
                .ok_or_else(|| format!("invalid boolean value for multi-platform: {mp}"))?;
            if !b && multi {
                return Err(
                    "conflicting config: returning multiple target platforms is not allowed"
                        .to_owned(),
                );
            }
            multi = b;
        }
        o.multi_platform = multi;
        for (k, v) in attrs {
            if let Some(name) = k.strip_prefix("build-arg:") {
                o.build_args.insert(name.to_owned(), v.clone());
            } else if let Some(name) = k.strip_prefix("label:") {
                o.labels.insert(name.to_owned(), v.clone());
            } else if let Some(name) = k.strip_prefix("context:") {
                o.named_contexts.insert(name.to_owned(), v.clone());
            } else if let Some(name) = k.strip_prefix("local-sessionid:") {
                o.local_session_ids.insert(name.to_owned(), v.clone());
            }
        }
        o.cache_id_namespace = get("build-arg:BUILDKIT_CACHE_MOUNT_NS").to_owned();
        o.cgroup_parent = get("cgroup-parent").to_owned();
        o.target = attrs.get("target").filter(|t| !t.is_empty()).cloned();
        o.hostname = match attrs.get("build-arg:BUILDKIT_SANDBOX_HOSTNAME") {
            Some(v) if !v.is_empty() => v.clone(),
            _ => get("hostname").to_owned(),
        };
        // Checked here, before any Dockerfile is read, as dockerui does;
        // convert() reads it again from the build args.
        if let Some(v) = attrs.get(&format!("build-arg:{}", lint::CHECK_BUILD_ARG)) {
            lint::check_build_arg(v)?;
        }
        Ok(o)
    }
}

/// go-units' `ParseUlimit`: `name=soft[:hard]`.
fn parse_ulimit(val: &str) -> Result<pb::Ulimit, String> {
    let Some((name, limits)) = val.split_once('=') else {
        return Err(format!("invalid ulimit argument: {val}"));
    };
    const NAMES: [&str; 16] = [
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
        "as",
    ];
    if !NAMES.contains(&name) {
        return Err(format!("invalid ulimit type: {name}"));
    }
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (s, Some(h)),
        None => (limits, None),
    };
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("invalid ulimit soft value: {s}"))
    };
    let soft = num(soft)?;
    let hard = match hard {
        Some(h) => num(h)?,
        None => soft,
    };
    if soft > hard {
        return Err(format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        ));
    }
    Ok(pb::Ulimit {
        name: name.to_owned(),
        soft,
        hard,
    })
}

/// A conversion failure: BuildKit's message and the Dockerfile lines it is
/// about (for source maps), innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// The message.
    pub message: String,
    /// The lines (empty when BuildKit has none).
    pub locations: Vec<LineRange>,
}

impl ConvertError {
    fn new(message: impl Into<String>) -> ConvertError {
        ConvertError {
            message: message.into(),
            locations: Vec::new(),
        }
    }

    fn at(mut self, location: Option<LineRange>) -> ConvertError {
        if let Some(l) = location {
            self.locations.push(l);
        }
        self
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConvertError {}

impl From<String> for ConvertError {
    fn from(message: String) -> Self {
        ConvertError::new(message)
    }
}

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The target's LLB.
    pub definition: pb::Definition,
    /// The target's image config (`containerimage.config`), JSON as Go
    /// writes it.
    pub image_config: Vec<u8>,
    /// The target's base image config (`containerimage.base.config`), if it
    /// has a base image.
    pub base_image_config: Option<Vec<u8>>,
    /// The parser's warnings.
    pub warnings: Vec<Warning>,
    /// The target's build args, secrets and SSH agents.
    pub outline: Outline,
}

/// Converts `dockerfile` for `opts`, resolving base images with `resolver`.
pub async fn convert(
    dockerfile: &[u8],
    opts: &ConvertOptions,
    resolver: &dyn ImageResolver,
) -> Result<Converted, ConvertError> {
    if dockerfile.is_empty() {
        return Err(ConvertError::new("the Dockerfile cannot be empty"));
    }
    // A bad check setting fails the build even when nothing is linted.
    let check = lint::check_options(dockerfile, &opts.build_args)?;
    let mut linter = Linter::new(check, opts.lint.clone());
    let parsed = parse(dockerfile).map_err(|e| ConvertError::new(e.message()).at(e.location()))?;
    for w in &parsed.warnings {
        lint::empty_continuation(&mut linter, w.line);
    }
    let df = instructions_linted(&parsed, &mut linter)
        .map_err(|e| ConvertError::new(e.message()).at(e.location()))?;
    if df.stages.is_empty() {
        return Err(ConvertError::new("dockerfile contains no stages to build"));
    }
    lint::stage_names(&mut linter, &df.stages);
    lint::command_casing(&mut linter, &df.stages);
    let lex = Lexer::new(parsed.escape);
    let (build_platform, target_platform, implicit) = {
        let bp = platforms::normalize(&image_platform(&opts.build_platform));
        match &opts.target_platform {
            Some(t) => (bp, image_platform(t), false),
            None => (bp.clone(), bp, true),
        }
    };
    if target_platform.os == "windows" {
        return Err(ConvertError::new("Windows targets are not supported yet"));
    }
    let target_name = opts
        .target
        .clone()
        .or_else(|| df.stages.last().and_then(|s| s.name.clone()))
        .unwrap_or_default();
    let predefined = default_args(
        &build_platform,
        &target_platform,
        &opts.build_args,
        &target_name,
    );
    // What FROM may use: the predefined args and every meta ARG, valued or
    // not (an undeclared build arg does not count).
    let mut from_args: BTreeSet<String> = predefined.iter().map(|(k, _)| k.clone()).collect();
    for cmd in &df.meta_args {
        if let Instruction::Arg(pairs) = &cmd.instruction {
            from_args.extend(pairs.iter().map(|p| p.key.clone()));
        }
    }
    if linter.enabled(&lint::INVALID_DEFAULT_ARG_IN_FROM) {
        invalid_default_args(&mut linter, &lex, &predefined, &df);
    }
    let meta_outline = meta_arg_infos(&lex, &predefined, &df.meta_args, &opts.build_args);
    let global_args = meta_args(&lex, predefined, &df.meta_args, Some(&opts.build_args))?;
    let epoch = match opts.build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) if !v.is_empty() => Some(super::golang::parse_int(v, 64).map_err(|e| {
            format!(
                "invalid SOURCE_DATE_EPOCH: {v}: {}",
                e.message("ParseInt", v)
            )
        })?),
        _ => None,
    };
    let epoch_str = match epoch {
        Some(e) => Some(rfc3339(e)?),
        None => None,
    };
    let (context_out, context_cell) = Out::later();
    let ignore_matcher = if linter.enabled(&lint::COPY_IGNORED_FILE) {
        IgnoreMatcher::new(&opts.context_excludes)
    } else {
        None
    };
    let mut c = Converter {
        opts,
        resolver,
        lex,
        lint: linter,
        from_args,
        ignore_matcher,
        global_args,
        meta_outline,
        states: Vec::new(),
        by_name: HashMap::new(),
        target_platform,
        implicit,
        epoch,
        epoch_str,
        build_context: context_out,
        proxy_env: proxy_env(&opts.build_args),
        pending_locals: Vec::new(),
        link_groups: 0,
    };
    c.build_states(&df.stages)?;
    let target = match &opts.target {
        None => c.states.len() - 1,
        Some(t) => match c.by_name.get(&to_lower(t)) {
            Some(i) => *i,
            None => {
                let names = c.names();
                return Err(ConvertError::new(with_suggestion(
                    format!("target stage {} could not be found", quote(t)),
                    t,
                    names.iter().map(String::as_str),
                    true,
                )));
            }
        },
    };
    c.build_dependencies()?;
    c.check_cycles()?;
    if c.states.len() == 1 {
        c.states[0].stage_name.clear();
    }
    let reachable = loop {
        let reachable = c.resolve_stages(target).await?;
        if !c.init_onbuild(&reachable)? {
            break reachable;
        }
    };
    let mut ctx_paths: BTreeSet<String> = BTreeSet::new();
    for si in 0..c.states.len() {
        if !reachable.contains(&si) || c.states[si].dispatched {
            continue;
        }
        c.dispatch_stage(si)?;
        ctx_paths.extend(c.states[si].ctx_paths.iter().cloned());
    }
    let owner = c.states[target].paths_owner;
    c.states[owner].paths.insert("/".to_owned());
    if !opts.labels.is_empty() {
        let labels = &mut c.states[target].image.config.labels;
        labels.extend(opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(message) = c.lint.error() {
        return Err(ConvertError::new(message));
    }
    // The build context, now that the paths it serves are known.
    let context = c.main_context(&ctx_paths);
    let _ = context_cell.set(context);
    c.finish_named_locals();

    let t = &mut c.states[target];
    if !c.implicit {
        let tp = &c.target_platform;
        let same = tp.os == t.image.platform.os && tp.architecture == t.image.platform.architecture;
        t.image.platform.os = tp.os.clone();
        t.image.platform.architecture = tp.architecture.clone();
        if !tp.variant.is_empty() || !same {
            t.image.platform.variant = tp.variant.clone();
        }
        if !tp.os_version.is_empty() || !same {
            t.image.platform.os_version = tp.os_version.clone();
        }
        if !tp.os_features.is_empty() {
            t.image.platform.os_features = tp.os_features.clone();
        }
    }
    t.image.platform = platforms::normalize(&t.image.platform);

    let source_map = opts.source_map.as_ref().map(|s| SourceMapInfo {
        filename: s.filename.clone(),
        language: "Dockerfile".to_owned(),
        data: dockerfile.to_vec(),
        definition: s.definition.clone(),
    });
    let definition = graph::marshal(
        c.states[target].state.out.as_ref(),
        &pb_platform(&c.target_platform),
        source_map.as_ref(),
    )?;
    let image_config = to_json(&c.states[target].image)?;
    let base_image_config = match &c.states[target].base_img {
        Some(img) => Some(to_json(img)?),
        None => None,
    };
    let links: Vec<StageLinks<'_>> = c
        .states
        .iter()
        .map(|s| StageLinks {
            capture: &s.outline,
            base: s.base,
            deps: s.deps.iter().map(|(d, _)| *d).collect(),
        })
        .collect();
    let outline = super::outline::outline(
        &links,
        target,
        c.states[target].name.as_deref().unwrap_or(""),
        df.stages
            .get(target)
            .map(|s| s.doc_comment.as_str())
            .unwrap_or(""),
    );
    Ok(Converted {
        definition,
        image_config,
        base_image_config,
        warnings: parsed.warnings.clone(),
        outline,
    })
}

/// The meta ARGs as outlines see them (BuildKit's `buildMetaArgs`): each
/// one's value (a build arg's, or its default expanded), its description
/// comment, and the args its default refers to.
fn meta_arg_infos(
    lex: &Lexer,
    predefined: &[(String, String)],
    meta: &[Command],
    build_args: &BTreeMap<String, String>,
) -> Capture {
    let mut args = predefined.to_vec();
    let mut capture = Capture::default();
    for cmd in meta {
        let Instruction::Arg(pairs) = &cmd.instruction else {
            continue;
        };
        for kp in pairs {
            let mut info = ArgInfo {
                key: kp.key.clone(),
                value: String::new(),
                comment: kp.doc_comment.clone(),
                location: cmd.location,
                deps: BTreeSet::new(),
            };
            let value = match build_args.get(&kp.key) {
                Some(v) => Some(v.clone()),
                None => match &kp.value {
                    Some(v) => {
                        let (expansion, err) = lex.process_word_tracked(v, &args);
                        if err.is_some() {
                            // The conversion reports it.
                            return capture;
                        }
                        info.deps = expansion.matched;
                        // An ARG that refers to itself takes on the deps of
                        // the one it replaces.
                        if info.deps.remove(&kp.key)
                            && let Some(old) = capture.all_args.get(&kp.key)
                        {
                            info.deps.extend(old.deps.iter().cloned());
                        }
                        Some(expansion.result)
                    }
                    None => None,
                },
            };
            if let Some(v) = value {
                env_set(&mut args, &kp.key, &v);
                info.value = v;
            }
            capture.all_args.insert(kp.key.clone(), info);
        }
    }
    capture
}

/// BuildKit's `buildMetaArgs`: the meta ARGs on top of `args`, each from
/// `build_args` when given there, else its default expanded.
fn meta_args(
    lex: &Lexer,
    mut args: Vec<(String, String)>,
    meta: &[Command],
    build_args: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, ConvertError> {
    for cmd in meta {
        let Instruction::Arg(pairs) = &cmd.instruction else {
            continue;
        };
        for kp in pairs {
            let value = match build_args.and_then(|b| b.get(&kp.key)) {
                Some(v) => Some(v.clone()),
                None => match &kp.value {
                    Some(v) => Some(
                        lex.process_word(v, &args)
                            .map_err(|e| ConvertError::new(e.message()).at(Some(cmd.location)))?,
                    ),
                    None => None,
                },
            };
            if let Some(v) = value {
                env_set(&mut args, &kp.key, &v);
            }
        }
    }
    Ok(args)
}

/// InvalidDefaultArgInFrom: base names that are no image reference with the
/// meta ARGs' defaults alone. Like BuildKit, gives up quietly at the first
/// expansion error.
fn invalid_default_args(
    lint: &mut Linter,
    lex: &Lexer,
    predefined: &[(String, String)],
    df: &super::instructions::Dockerfile,
) {
    let Ok(args) = meta_args(lex, predefined.to_vec(), &df.meta_args, None) else {
        return;
    };
    for st in &df.stages {
        let Ok(base) = lex.process_word(&st.base_name, &args) else {
            return;
        };
        if Reference::parse_normalized_named(&base).is_err() {
            lint.run(&lint::INVALID_DEFAULT_ARG_IN_FROM, st.location, || {
                format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    st.base_name
                )
            });
        }
    }
}

/// Go's `llb.State` values the converter uses.
#[derive(Clone, Debug, Default)]
struct LlbState {
    /// `None` is scratch.
    out: Option<Out>,
    /// In `EnvList` order: a key set again moves to the end.
    env: Vec<(String, String)>,
    dir: String,
    user: String,
    hostname: String,
    platform: Option<Platform>,
    network: Option<pb::NetMode>,
}

impl LlbState {
    fn scratch() -> LlbState {
        LlbState {
            dir: "/".to_owned(),
            ..LlbState::default()
        }
    }

    /// `State.Dir`: relative paths join the current directory.
    fn set_dir(&mut self, dir: &str) {
        self.dir = if dir.starts_with('/') {
            dir.to_owned()
        } else {
            let prev = if self.dir.is_empty() { "/" } else { &self.dir };
            path_join(&[prev, dir])
        };
    }
}

fn env_set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

/// A named context, not loaded yet.
#[derive(Debug, Clone)]
struct NamedContext {
    /// `name` or `name::platform`, as found.
    name_with_platform: String,
    value: String,
    platform: Option<Platform>,
}

/// A `local:` named context, made once the paths it serves are known.
struct PendingLocal {
    cell: Arc<OnceLock<Out>>,
    paths_owner: usize,
    name: String,
    name_with_platform: String,
    session: String,
    excludes: Vec<String>,
}

/// One command with the stages it reads from.
#[derive(Debug, Clone)]
struct Cmd {
    command: Command,
    /// COPY `--from`: one; RUN: one per mount.
    sources: Vec<usize>,
    is_onbuild: bool,
}

/// BuildKit's `dispatchState`.
#[derive(Debug)]
struct StageState {
    name: Option<String>,
    base_name: String,
    source_code: String,
    location: Option<LineRange>,
    stage_commands: Vec<Command>,
    cmds: Vec<Cmd>,
    stage_name: String,
    platform: Option<Platform>,
    base: Option<usize>,
    deps: Vec<(usize, Option<LineRange>)>,
    named_context: Option<NamedContext>,
    unregistered: bool,
    dispatched: bool,
    resolved: bool,
    on_build_init: bool,
    state: LlbState,
    image: Image,
    base_img: Option<Image>,
    build_args: Vec<(String, Option<String>)>,
    ctx_paths: BTreeSet<String>,
    paths_owner: usize,
    paths: BTreeSet<String>,
    ignore_cache: bool,
    cmd_index: usize,
    cmd_total: usize,
    cmd_is_onbuild: bool,
    workdir_set: bool,
    cmd_set: bool,
    /// Where this stage's last CMD, ENTRYPOINT and HEALTHCHECK are, for
    /// MultipleInstructionsDisallowed (not inherited from base stages).
    cmd_loc: Option<LineRange>,
    entrypoint_loc: Option<LineRange>,
    healthcheck_loc: Option<LineRange>,
    /// Args, secrets and SSH agents, for the outline.
    outline: Capture,
}

impl StageState {
    fn new(index: usize, base_name: String, location: Option<LineRange>) -> StageState {
        StageState {
            name: None,
            base_name,
            source_code: String::new(),
            location,
            stage_commands: Vec::new(),
            cmds: Vec::new(),
            stage_name: String::new(),
            platform: None,
            base: None,
            deps: Vec::new(),
            named_context: None,
            unregistered: false,
            dispatched: false,
            resolved: false,
            on_build_init: false,
            state: LlbState::scratch(),
            image: Image::default(),
            base_img: None,
            build_args: Vec::new(),
            ctx_paths: BTreeSet::new(),
            paths_owner: index,
            paths: BTreeSet::new(),
            ignore_cache: false,
            cmd_index: 0,
            cmd_total: 0,
            cmd_is_onbuild: false,
            workdir_set: false,
            cmd_set: false,
            cmd_loc: None,
            entrypoint_loc: None,
            healthcheck_loc: None,
            outline: Capture::default(),
        }
    }
}

struct Converter<'a> {
    opts: &'a ConvertOptions,
    resolver: &'a dyn ImageResolver,
    lex: Lexer,
    lint: Linter,
    /// Variables FROM may use without UndefinedArgInFrom.
    from_args: BTreeSet<String>,
    /// The context's `.dockerignore`, when CopyIgnoredFile runs.
    ignore_matcher: Option<IgnoreMatcher>,
    global_args: Vec<(String, String)>,
    /// The meta ARGs for outlines, as every stage starts with them.
    meta_outline: Capture,
    states: Vec<StageState>,
    by_name: HashMap<String, usize>,
    target_platform: Platform,
    implicit: bool,
    epoch: Option<i64>,
    epoch_str: Option<String>,
    build_context: Out,
    proxy_env: Option<pb::ProxyEnv>,
    pending_locals: Vec<PendingLocal>,
    link_groups: usize,
}

/// A CMD's or ENTRYPOINT's arguments: the shell form wrapped in the
/// stage's shell (JSONArgsRecommended when none was set), the exec form
/// as it is.
fn command_line(
    lint: &mut Linter,
    d: &StageState,
    c: &super::instructions::CmdLine,
    name: &str,
    at: LineRange,
) -> Vec<String> {
    if !c.prepend_shell {
        return c.cmd_line.clone();
    }
    if d.image.config.shell.is_empty() {
        lint::json_args(lint, name, at);
    }
    with_shell(&d.image, &c.cmd_line)
}

/// A stage's variables as one instruction sees them.
struct StageVars<'a> {
    env: &'a Vec<(String, String)>,
    /// The stage's ARGs, valued or not: UndefinedVar leaves them alone.
    build_args: &'a [(String, Option<String>)],
}

impl StageVars<'_> {
    /// Expands `word` with `lex`, reporting UndefinedVar for the variables
    /// it lacks (also when the expansion then fails, as BuildKit does).
    fn expand(
        &self,
        lint: &mut Linter,
        lex: &Lexer,
        word: &str,
        at: LineRange,
    ) -> Result<String, super::shell::ExpandError> {
        let (expansion, err) = lex.process_word_tracked(word, self.env);
        lint::undefined_vars(lint, &expansion.unmatched, self.build_args, self.env, at);
        match err {
            Some(e) => Err(e),
            None => Ok(expansion.result),
        }
    }
}

fn expand_err(e: super::shell::ExpandError) -> ConvertError {
    ConvertError::new(e.message())
}

impl Converter<'_> {
    fn caps_support(&self, cap: &str) -> bool {
        self.opts.llb_caps.as_ref().is_some_and(|c| c.contains(cap))
    }

    fn names(&self) -> Vec<String> {
        self.states
            .iter()
            .filter(|s| !s.stage_name.is_empty())
            .map(|s| s.stage_name.clone())
            .collect()
    }

    /// BuildKit's `addState`.
    fn add_state(&mut self, mut st: StageState, used: &BTreeSet<String>) -> usize {
        let index = self.states.len();
        st.paths_owner = index;
        st.outline = self.meta_outline.clone();
        if let Some(b) = self.by_name.get(&st.base_name) {
            st.base = Some(*b);
            st.outline = self.states[*b].outline.clone();
        }
        st.outline.used.extend(used.iter().cloned());
        if let Some(name) = &st.name {
            self.by_name.insert(to_lower(name), index);
        }
        self.states.push(st);
        index
    }

    /// The `context:` value for `name`, if any (BuildKit's `NamedContext`).
    fn named_context(
        &self,
        name: &str,
        platform: Option<&Platform>,
    ) -> Result<Option<NamedContext>, ConvertError> {
        if name.eq_ignore_ascii_case(SCRATCH) || name.eq_ignore_ascii_case("context") {
            return Ok(None);
        }
        if self.opts.named_contexts.is_empty() {
            return Ok(None);
        }
        let named = Reference::parse_normalized_named(name)
            .map_err(|e| ConvertError::new(format!("invalid context name {name}: {e}")))?;
        let familiar = named.familiar_string();
        let short = familiar
            .strip_suffix(":latest")
            .unwrap_or(&familiar)
            .to_owned();
        let platform = platform
            .cloned()
            .or_else(|| self.opts.target_platform.as_ref().map(image_platform))
            .unwrap_or_else(|| image_platform(&self.opts.build_platform));
        let pname = format!(
            "{short}::{}",
            platforms::format_all(&platforms::normalize(&platform))
        );
        for key in [&pname, &short] {
            if let Some(v) = self.opts.named_contexts.get(key) {
                return Ok(Some(NamedContext {
                    name_with_platform: key.clone(),
                    value: v.clone(),
                    platform: Some(platform.clone()),
                }));
            }
        }
        Ok(None)
    }

    /// BuildKit's stage loop: expand base names and platforms, find named
    /// contexts, count commands.
    fn build_states(&mut self, stages: &[super::instructions::Stage]) -> Result<(), ConvertError> {
        for (i, st) in stages.iter().enumerate() {
            let loc = Some(st.location);
            let (name_match, err) = self
                .lex
                .process_word_tracked(&st.base_name, &self.global_args);
            lint::undefined_args_in_from(
                &mut self.lint,
                &self.from_args,
                &name_match.unmatched,
                st.location,
            );
            if let Some(e) = err {
                return Err(expand_err(e).at(loc));
            }
            let base = name_match.result.clone();
            if base.is_empty() {
                return Err(ConvertError::new(format!(
                    "base name ({}) should not be blank",
                    st.base_name
                ))
                .at(loc));
            }
            let mut ds = StageState::new(self.states.len(), base, loc);
            ds.name = st.name.clone();
            ds.source_code = st.source_code.clone();
            ds.stage_commands = st.commands.clone();
            ds.stage_name = st.name.clone().unwrap_or_default();
            if !st.platform.is_empty() {
                let (plat, err) = self
                    .lex
                    .process_word_tracked(&st.platform, &self.global_args);
                lint::undefined_args_in_from(
                    &mut self.lint,
                    &self.from_args,
                    &plat.unmatched,
                    st.location,
                );
                lint::redundant_target_platform(
                    &mut self.lint,
                    &st.platform,
                    &plat,
                    Env::get(&self.global_args, "TARGETPLATFORM"),
                    st.location,
                );
                lint::const_platform(
                    &mut self.lint,
                    st.name.as_deref().unwrap_or_default(),
                    &plat,
                    st.location,
                );
                if let Some(e) = err {
                    return Err(ConvertError::new(format!(
                        "failed to process arguments for platform {}: {}",
                        st.platform,
                        e.message()
                    ))
                    .at(loc));
                }
                // BuildKit suggests a close name for the first unknown
                // variable that has one.
                let hint = plat.unmatched.iter().find_map(|k| {
                    super::golang::suggest(
                        k,
                        self.global_args.iter().map(|(k, _)| k.as_str()),
                        true,
                    )
                });
                let with_hint = |msg: String| match &hint {
                    Some(h) => format!("{msg} (did you mean {h}?)"),
                    None => msg,
                };
                let v = plat.result;
                if v.is_empty() {
                    return Err(ConvertError::new(with_hint(format!(
                        "empty platform value from expression {}",
                        st.platform
                    )))
                    .at(loc));
                }
                let p = platforms::parse(&v).map_err(|e| {
                    ConvertError::new(format!(
                        "failed to parse platform {}: {}",
                        st.platform,
                        with_hint(e.to_string())
                    ))
                    .at(loc)
                    .at(loc)
                })?;
                ds.platform = Some(p);
            }
            if let Some(name) = &st.name {
                if let Some(nc) = self.named_context(name, ds.platform.as_ref())? {
                    ds.named_context = Some(nc);
                    let idx = self.add_state(ds, &name_match.matched);
                    self.states[idx].base = None;
                    continue;
                }
            } else {
                ds.stage_name = format!("stage-{i}");
            }
            let idx = self.add_state(ds, &name_match.matched);
            let ds = &mut self.states[idx];
            let mut total = usize::from(ds.base_name != SCRATCH && ds.base.is_none());
            total += ds
                .stage_commands
                .iter()
                .filter(|c| {
                    matches!(
                        c.instruction,
                        Instruction::Add(_)
                            | Instruction::Copy(_)
                            | Instruction::Run(_)
                            | Instruction::Workdir(_)
                    )
                })
                .count();
            ds.cmd_total = total;
            ds.ignore_cache = match &self.opts.no_cache {
                None => false,
                Some(list) if list.is_empty() => true,
                Some(list) => {
                    let n = ds.name.clone().unwrap_or_default();
                    list.iter().any(|x| x.eq_ignore_ascii_case(&n))
                }
            };
        }
        Ok(())
    }

    /// BuildKit's `toCommand`: the stages a command reads from, adding
    /// implicit stages for images named by `--from`.
    fn command_sources(&mut self, command: &Command) -> Result<Cmd, ConvertError> {
        let mut sources = Vec::new();
        match &command.instruction {
            Instruction::Copy(c) if !c.from.is_empty() => {
                let res = self.lex.process_word(&c.from, &NoEnv).map_err(expand_err)?;
                if res != c.from {
                    return Err(ConvertError::new(
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                    ));
                }
                let idx = match c.from.parse::<i64>() {
                    Ok(n) => {
                        if n < 0 || n as usize >= self.states.len() {
                            return Err(ConvertError::new(format!("invalid stage index {n}")));
                        }
                        n as usize
                    }
                    Err(_) => match self.by_name.get(&to_lower(&c.from)) {
                        Some(i) => *i,
                        None => self.implicit_stage(&c.from, Some(command.location)),
                    },
                };
                sources.push(idx);
            }
            Instruction::Run(r) => {
                let mounts = r.mounts(None).map_err(|e| ConvertError::new(e.0))?;
                for m in mounts {
                    let from = if m.from.is_empty() {
                        SCRATCH.to_owned()
                    } else {
                        m.from.clone()
                    };
                    let idx = match self.by_name.get(&to_lower(&from)) {
                        Some(i) => *i,
                        None => self.implicit_stage(&from, None),
                    };
                    sources.push(idx);
                }
            }
            _ => {}
        }
        Ok(Cmd {
            command: command.clone(),
            sources,
            is_onbuild: false,
        })
    }

    fn implicit_stage(&mut self, base: &str, location: Option<LineRange>) -> usize {
        let mut st = StageState::new(self.states.len(), base.to_owned(), location);
        st.unregistered = true;
        self.add_state(st, &BTreeSet::new())
    }

    fn build_dependencies(&mut self) -> Result<(), ConvertError> {
        let mut i = 0;
        // States are appended (implicit stages) while walking.
        while i < self.states.len() {
            let commands = std::mem::take(&mut self.states[i].stage_commands);
            let mut cmds = Vec::with_capacity(commands.len());
            for command in &commands {
                let cmd = self.command_sources(command)?;
                for &src in &cmd.sources {
                    self.add_dep(i, src, command.location);
                }
                cmds.push(cmd);
            }
            self.states[i].stage_commands = commands;
            self.states[i].cmds = cmds;
            i += 1;
        }
        Ok(())
    }

    fn add_dep(&mut self, from: usize, to: usize, location: LineRange) {
        let deps = &mut self.states[from].deps;
        match deps.iter_mut().find(|(d, _)| *d == to) {
            Some(d) => d.1 = Some(location),
            None => deps.push((to, Some(location))),
        }
    }

    /// BuildKit's `validateCircularDependency`.
    fn check_cycles(&self) -> Result<(), ConvertError> {
        let n = self.states.len();
        let mut visited = vec![false; n];
        for start in 0..n {
            if visited[start] {
                continue;
            }
            // Iterative DFS: (state, next dep index), with the command path.
            let mut on_path = vec![false; n];
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            let mut path: Vec<Option<LineRange>> = Vec::new();
            visited[start] = true;
            on_path[start] = true;
            while let Some((s, k)) = stack.pop() {
                let deps = &self.states[s].deps;
                if k >= deps.len() {
                    on_path[s] = false;
                    path.pop();
                    continue;
                }
                stack.push((s, k + 1));
                let (dep, loc) = deps[k];
                if on_path[dep] {
                    let mut err = ConvertError::new(format!(
                        "circular dependency detected on stage: {}",
                        self.states[start].stage_name
                    ));
                    for l in path.iter().chain(std::iter::once(&loc)) {
                        err = err.at(*l);
                    }
                    return Err(err);
                }
                if visited[dep] {
                    continue;
                }
                visited[dep] = true;
                on_path[dep] = true;
                path.push(loc);
                stack.push((dep, 0));
            }
        }
        Ok(())
    }

    fn reachable(&self, target: usize) -> BTreeSet<usize> {
        if self.opts.all_stages {
            return (0..self.states.len()).collect();
        }
        let mut out = BTreeSet::new();
        let mut stack = vec![target];
        while let Some(s) = stack.pop() {
            if !out.insert(s) {
                continue;
            }
            if let Some(b) = self.states[s].base {
                stack.push(b);
            }
            stack.extend(self.states[s].deps.iter().map(|(d, _)| *d));
        }
        out
    }

    /// BuildKit's `prefixCommand`.
    fn prefix(
        &mut self,
        si: usize,
        s: &str,
        platform: Option<&Platform>,
        env: &[(String, String)],
    ) -> String {
        let multi = self.opts.multi_platform;
        let ds = &mut self.states[si];
        if ds.cmd_total == 0 {
            return s.to_owned();
        }
        let mut out = String::from("[");
        if multi && let Some(p) = platform {
            out.push_str(&platforms::format_all(p));
            out.push_str(&format_target_platform(p, platform_from_env(env)));
            out.push(' ');
        }
        if !ds.stage_name.is_empty() {
            out.push_str(&ds.stage_name);
            out.push(' ');
        }
        ds.cmd_index += 1;
        let width = ds.cmd_total.to_string().len();
        out.push_str(&format!(
            "{:>width$}/{}] ",
            ds.cmd_index,
            ds.cmd_total,
            width = width
        ));
        if ds.cmd_is_onbuild {
            out.push_str("ONBUILD ");
        }
        out + s
    }

    /// Resolves the base of every stage not resolved yet (images for the
    /// reachable ones); returns the reachable stages.
    async fn resolve_stages(&mut self, target: usize) -> Result<BTreeSet<usize>, ConvertError> {
        let reachable = self.reachable(target);
        for i in 0..self.states.len() {
            let d = &self.states[i];
            if d.base.is_some() || d.dispatched || d.resolved {
                continue;
            }
            let is_reachable = reachable.contains(&i);
            self.states[i].resolved = is_reachable;
            let d = &self.states[i];
            if d.base_name == SCRATCH && d.named_context.is_none() {
                let tp = self.target_platform.clone();
                let d = &mut self.states[i];
                d.state = LlbState::scratch();
                d.image = empty_image(&tp);
                d.platform = Some(tp);
                if d.unregistered {
                    d.dispatched = true;
                }
                continue;
            }
            let loc = d.location;
            let res = self.resolve_stage(i, is_reachable).await;
            if self.states[i].unregistered {
                self.states[i].dispatched = true;
            }
            res.map_err(|e| e.at(loc))?;
        }
        Ok(reachable)
    }

    async fn resolve_stage(&mut self, i: usize, reachable: bool) -> Result<(), ConvertError> {
        let orig = self.states[i].base_name.clone();
        let named = Reference::parse_normalized_named(&orig).map_err(|e| {
            ConvertError::new(format!("failed to parse stage name {}: {e}", quote(&orig)))
        })?;
        let mut platform = self.states[i]
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let mut reference = named.tag_name_only();
        self.states[i].base_name = reference.to_string();
        let mut is_scratch = false;
        if reachable {
            if let Some(nc) = self.states[i].named_context.clone() {
                let (state, img) = self.load_named(&nc, i).await?;
                let d = &mut self.states[i];
                d.dispatched = true;
                d.state = state;
                if let Some(mut img) = img {
                    img.created = None;
                    if !img.platform.architecture.is_empty() && !img.platform.os.is_empty() {
                        d.platform = Some(Platform {
                            os_features: img.platform.os_features.clone(),
                            ..img.platform.clone()
                        });
                    }
                    d.image = img;
                }
                return Ok(());
            }
            let base_name = self.states[i].base_name.clone();
            if let Some(nc) = self.named_context(&base_name, Some(&platform))? {
                let (mut state, img) = self.load_named(&nc, i).await?;
                let mut img = img.unwrap_or_else(|| empty_image(&platform));
                let d = &mut self.states[i];
                d.base_img = Some(img.clone());
                img.created = None;
                d.image = img;
                state.platform = Some(platforms::normalize(&platform));
                d.state = state;
                d.platform = Some(platform);
                return Ok(());
            }
            let (digest, config) = self
                .resolver
                .resolve(
                    &base_name,
                    &pb_platform(&platform),
                    self.opts.image_resolve_mode.as_str(),
                )
                .await
                .map_err(|e| ConvertError::new(format!("{orig}: {e}")))?;
            let mut img: Image = serde_json::from_slice(&config)
                .map_err(|e| ConvertError::new(format!("failed to parse image config: {e}")))?;
            self.states[i].base_img = Some(img.clone());
            img.created = None;
            if self.states[i].platform.is_none() && self.implicit {
                let build = image_platform(&self.opts.build_platform);
                platform = auto_detect_platform(&img, &platform, &build);
            }
            if !digest.is_empty() {
                let dg = ImageDigest::parse(&digest)
                    .map_err(|e| ConvertError::new(format!("invalid digest {digest}: {e}")))?;
                reference = reference.with_digest(dg);
            }
            self.states[i].base_name = reference.to_string();
            if img.rootfs.diff_ids.is_empty() {
                is_scratch = img.history.iter().all(|h| h.empty_layer);
            }
            self.states[i].image = img;
        }
        if is_scratch {
            self.states[i].state = LlbState::scratch();
        } else {
            let base_name = self.states[i].base_name.clone();
            let name = self.prefix(i, &format!("FROM {base_name}"), Some(&platform), &[]);
            let d = &self.states[i];
            let mut attrs = BTreeMap::new();
            let mut caps = vec!["source.image"];
            if self.opts.image_resolve_mode != ResolveMode::Default {
                attrs.insert(
                    "image.resolvemode".to_owned(),
                    self.opts.image_resolve_mode.as_str().to_owned(),
                );
                if self.opts.image_resolve_mode == ResolveMode::Pull {
                    caps.push("source.image.resolvemode");
                }
            }
            let meta = OpMeta {
                locations: d.location.into_iter().collect(),
                ..OpMeta::default()
            }
            .name(name)
            .command(d.source_code.clone());
            let out = graph::source(
                format!("docker-image://{base_name}"),
                attrs,
                Some(pb_platform(&platform)),
                caps,
                meta,
            );
            let mut state = LlbState::scratch();
            state.out = Some(out);
            state.platform = Some(platforms::normalize(&platform));
            self.states[i].state = state;
            if reachable {
                let actual = &self.states[i].image.platform;
                if actual.os != platform.os || actual.architecture != platform.architecture {
                    let expected = platforms::format_all(&platforms::normalize(&platform));
                    let actual = platforms::format_all(&platforms::normalize(actual));
                    let at = self.states[i].location;
                    self.lint.report(&lint::INVALID_BASE_IMAGE_PLATFORM, at, || {
                        format!(
                            "Base image {orig} was pulled with platform {}, expected {} for current build",
                            quote(&actual),
                            quote(&expected)
                        )
                    });
                }
            }
        }
        self.states[i].platform = Some(platform);
        Ok(())
    }

    /// BuildKit's `NamedContext.Load`.
    async fn load_named(
        &mut self,
        nc: &NamedContext,
        owner: usize,
    ) -> Result<(LlbState, Option<Image>), ConvertError> {
        let Some((kind, rest)) = nc.value.split_once(':') else {
            return Err(ConvertError::new(format!(
                "invalid context specifier {} for {}",
                nc.value, nc.name_with_platform
            )));
        };
        let kind = if kind.starts_with("git@") {
            "git"
        } else {
            kind
        };
        match kind {
            "docker-image" => {
                let r = rest.strip_prefix("//").unwrap_or(rest);
                if r == SCRATCH {
                    return Ok((LlbState::scratch(), None));
                }
                let named = Reference::parse_normalized_named(r)
                    .map_err(|e| ConvertError::new(e.to_string()))?
                    .tag_name_only();
                let platform = nc
                    .platform
                    .clone()
                    .unwrap_or_else(|| self.target_platform.clone());
                let (_, config) = self
                    .resolver
                    .resolve(
                        &named.to_string(),
                        &pb_platform(&platform),
                        self.opts.image_resolve_mode.as_str(),
                    )
                    .await
                    .map_err(ConvertError::new)?;
                let mut img: Image = serde_json::from_slice(&config)
                    .map_err(|e| ConvertError::new(e.to_string()))?;
                img.created = None;
                let meta =
                    OpMeta::default().name(format!("[context {}] {r}", nc.name_with_platform));
                let out = graph::source(
                    format!("docker-image://{named}"),
                    BTreeMap::new(),
                    Some(pb_platform(&platform)),
                    vec!["source.image"],
                    meta,
                );
                let mut state = LlbState::scratch();
                state.out = Some(out);
                state.platform = Some(platforms::normalize(&platform));
                for e in &img.config.env {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    if !k.is_empty() {
                        env_set(&mut state.env, k, v);
                    }
                }
                state.set_dir(&img.config.working_dir);
                if !img.platform.architecture.is_empty() && !img.platform.os.is_empty() {
                    state.platform = Some(platforms::normalize(&img.platform));
                }
                Ok((state, Some(img)))
            }
            "local" => {
                let session = self
                    .opts
                    .local_session_ids
                    .get(rest)
                    .cloned()
                    .unwrap_or_else(|| self.opts.session_id.clone());
                let (out, cell) = Out::later();
                let paths_owner = self.states[owner].paths_owner;
                self.pending_locals.push(PendingLocal {
                    cell,
                    paths_owner,
                    name: rest.to_owned(),
                    name_with_platform: nc.name_with_platform.clone(),
                    session,
                    excludes: self
                        .opts
                        .named_context_excludes
                        .get(rest)
                        .cloned()
                        .unwrap_or_default(),
                });
                let mut state = LlbState::scratch();
                state.out = Some(out);
                Ok((state, None))
            }
            "input" => {
                let def = self.opts.inputs.get(rest).ok_or_else(|| {
                    ConvertError::new(format!(
                        "invalid input {rest} for {}",
                        nc.name_with_platform
                    ))
                })?;
                let out = graph::import(def).map_err(ConvertError::new)?;
                let mut state = LlbState::scratch();
                state.out = out;
                Ok((state, None))
            }
            "git" | "http" | "https" | "oci-layout" => Err(ConvertError::new(format!(
                "named context of type {kind} ({}) is not supported yet",
                nc.name_with_platform
            ))),
            _ => Err(ConvertError::new(format!(
                "unsupported context source {kind} for {}",
                nc.name_with_platform
            ))),
        }
    }

    /// BuildKit's `dispatchState.init`.
    fn init(&mut self, i: usize) {
        let Some(b) = self.states[i].base else {
            return;
        };
        let base = &self.states[b];
        let state = base.state.clone();
        let platform = base.platform.clone();
        let mut image = base.image.clone();
        image.config.on_build.clear();
        let base_img = base.base_img.clone();
        let paths_owner = base.paths_owner;
        let workdir_set = base.workdir_set;
        let build_args = base.build_args.clone();
        let d = &mut self.states[i];
        d.state = state;
        d.platform = platform;
        d.image = image;
        d.base_img = base_img;
        d.paths_owner = paths_owner;
        d.workdir_set = workdir_set;
        d.build_args.extend(build_args);
    }

    /// Adds ONBUILD triggers (of base images and base stages) to the
    /// reachable stages; true if they read from new stages.
    fn init_onbuild(&mut self, reachable: &BTreeSet<usize>) -> Result<bool, ConvertError> {
        let mut new_deps = false;
        for &d in reachable {
            self.init(d);
            let mut triggers = self.states[d].image.config.on_build.clone();
            if let Some(b) = self.states[d].base
                && !self.states[d].on_build_init
            {
                for cmd in &self.states[b].cmds {
                    if let Instruction::Onbuild(e) = &cmd.command.instruction {
                        triggers.push(e.clone());
                    }
                }
                self.states[d].on_build_init = true;
            }
            if triggers.is_empty() {
                continue;
            }
            let loc = self.states[d].location;
            let mut cmds = Vec::with_capacity(triggers.len());
            for trigger in &triggers {
                let parsed = parse(trigger.as_bytes())
                    .map_err(|e| ConvertError::new(e.message()).at(loc))?;
                if parsed.nodes.len() != 1 {
                    return Err(
                        ConvertError::new("onbuild trigger should be a single expression").at(loc),
                    );
                }
                let mut node = parsed.nodes[0].clone();
                if let Some(l) = loc {
                    node.start_line = l.start;
                    node.end_line = l.end;
                }
                let command =
                    parse_instruction(&node).map_err(|e| ConvertError::new(e.message()).at(loc))?;
                let mut cmd = self.command_sources(&command).map_err(|e| e.at(loc))?;
                cmd.is_onbuild = true;
                if !cmd.sources.is_empty() {
                    new_deps = true;
                }
                for &src in &cmd.sources {
                    self.add_dep(d, src, command.location);
                }
                cmds.push(cmd);
            }
            let st = &mut self.states[d];
            st.cmd_total += cmds.len();
            cmds.append(&mut st.cmds);
            st.cmds = cmds;
            st.image.config.on_build.clear();
        }
        Ok(new_deps)
    }

    fn dispatch_stage(&mut self, si: usize) -> Result<(), ConvertError> {
        self.init(si);
        let tp = self.target_platform.clone();
        let d = &mut self.states[si];
        d.dispatched = true;
        let platform = d.platform.get_or_insert(tp).clone();
        let has_path = d
            .image
            .config
            .env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == "PATH");
        if !has_path && platform.os != "windows" {
            d.image.config.env.push(format!("PATH={DEFAULT_PATH_ENV}"));
        }
        for e in d.image.config.env.clone() {
            let (k, v) = e.split_once('=').unwrap_or((&e, ""));
            env_set(&mut d.state.env, k, v);
        }
        if !self.opts.hostname.is_empty() {
            d.state.hostname = self.opts.hostname.clone();
        }
        let loc = d.location;
        if !d.image.config.working_dir.is_empty() {
            let wd = d.image.config.working_dir.clone();
            self.dispatch_workdir(si, &wd, false, None)
                .map_err(|e| e.at(loc))?;
        }
        let d = &mut self.states[si];
        if !d.image.config.user.is_empty() {
            d.state.user = d.image.config.user.clone();
        }
        d.state.network = Some(self.opts.network_mode);
        let cmds = d.cmds.clone();
        for cmd in &cmds {
            self.dispatch(si, cmd)
                .map_err(|e| e.at(Some(cmd.command.location)))?;
        }
        Ok(())
    }

    fn history(&mut self, si: usize, msg: String, with_layer: bool, buildkit: bool) {
        let created_by = if buildkit {
            format!("{msg} # buildkit")
        } else {
            msg
        };
        let created = self.epoch_str.clone();
        self.states[si]
            .image
            .history
            .push(bk_image::types::History {
                created,
                created_by,
                comment: HISTORY_COMMENT.to_owned(),
                empty_layer: !with_layer,
                ..Default::default()
            });
    }

    fn dispatch(&mut self, si: usize, cmd: &Cmd) -> Result<(), ConvertError> {
        self.states[si].cmd_is_onbuild = cmd.is_onbuild;
        let mut instruction = cmd.command.instruction.clone();
        let env = self.states[si].state.env.clone();
        let build_args = self.states[si].build_args.clone();
        let vars = StageVars {
            env: &env,
            build_args: &build_args,
        };
        let at = cmd.command.location;
        let lex = self.lex;
        if instruction.expands() && !matches!(instruction, Instruction::Arg(_)) {
            let lint = &mut self.lint;
            let mut ex = |w: &str| vars.expand(lint, &lex, w, at);
            instruction.expand(&mut ex).map_err(expand_err)?;
        }
        {
            let mut raw = Lexer::new('\\');
            raw.skip_process_quotes = true;
            let lint = &mut self.lint;
            let mut ex = |w: &str| vars.expand(lint, &raw, w, at);
            instruction.expand_raw(&mut ex).map_err(expand_err)?;
        }
        let command = &cmd.command;
        match instruction {
            Instruction::Maintainer(m) => {
                self.states[si].image.author = m.clone();
                self.history(si, format!("MAINTAINER {m}"), false, false);
            }
            Instruction::Env(kvs) => {
                let mut msg = String::from("ENV");
                let d = &mut self.states[si];
                for kv in &kvs {
                    if kv.no_delim {
                        lint::legacy_key_value(&mut self.lint, &command.name, at);
                    }
                    lint::secret_key(&mut self.lint, "ENV", &kv.key, at);
                    msg.push_str(&format!(" {}={}", kv.key, kv.value));
                    env_set(&mut d.state.env, &kv.key, &kv.value);
                    add_image_env(&mut d.image.config.env, &kv.key, &kv.value);
                }
                self.history(si, msg, false, false);
            }
            Instruction::Run(run) => self.dispatch_run(si, cmd, &run)?,
            Instruction::Workdir(path) => {
                self.dispatch_workdir(si, &path, true, Some(command))?;
            }
            Instruction::Add(a) => {
                let cfg = CopyConfig {
                    params: a.sources.clone(),
                    exclude_patterns: a.exclude_patterns.clone(),
                    source: Some(self.build_context.clone()),
                    source_dir: "/".to_owned(),
                    is_add: true,
                    code: command.code.clone(),
                    chown: a.chown.clone(),
                    chmod: a.chmod.clone(),
                    link: a.link,
                    checksum: a.checksum.clone(),
                    parents: false,
                    unpack: a.unpack,
                    keep_git_dir: a.keep_git_dir,
                    location: command.location,
                    from_context: true,
                };
                self.dispatch_copy(si, cfg)?;
                for src in &a.sources.source_paths {
                    if !src.starts_with("http://")
                        && !src.starts_with("https://")
                        && !matches!(parse_git_ref(src), Ok(Some(_)))
                    {
                        self.states[si].ctx_paths.insert(path_join(&["/", src]));
                    }
                }
            }
            Instruction::Copy(c) => {
                let (source, source_dir, src_stage) = match cmd.sources.first() {
                    Some(&s) => {
                        let st = &self.states[s];
                        if !st.dispatched {
                            return Err(ConvertError::new(format!(
                                "cannot copy from stage {}, it needs to be defined before current stage {}",
                                quote(&c.from),
                                quote(&self.states[si].stage_name)
                            )));
                        }
                        (st.state.out.clone(), st.state.dir.clone(), Some(s))
                    }
                    None => (Some(self.build_context.clone()), "/".to_owned(), None),
                };
                let cfg = CopyConfig {
                    params: c.sources.clone(),
                    exclude_patterns: c.exclude_patterns.clone(),
                    source,
                    source_dir,
                    is_add: false,
                    code: command.code.clone(),
                    chown: c.chown.clone(),
                    chmod: c.chmod.clone(),
                    link: c.link,
                    checksum: String::new(),
                    parents: c.parents,
                    unpack: None,
                    keep_git_dir: None,
                    location: command.location,
                    from_context: src_stage.is_none(),
                };
                self.dispatch_copy(si, cfg)?;
                let paths: Vec<String> = c
                    .sources
                    .source_paths
                    .iter()
                    .map(|s| path_join(&["/", s]))
                    .collect();
                match src_stage {
                    None => self.states[si].ctx_paths.extend(paths),
                    Some(s) => {
                        let owner = self.states[s].paths_owner;
                        self.states[owner].paths.extend(paths);
                    }
                }
            }
            Instruction::Label(kvs) => {
                let mut msg = String::from("LABEL");
                let d = &mut self.states[si];
                for kv in &kvs {
                    if kv.no_delim {
                        lint::legacy_key_value(&mut self.lint, &command.name, at);
                    }
                    d.image
                        .config
                        .labels
                        .insert(kv.key.clone(), kv.value.clone());
                    msg.push_str(&format!(" {}={}", kv.key, kv.value));
                }
                self.history(si, msg, false, false);
            }
            Instruction::Onbuild(e) => {
                self.states[si].image.config.on_build.push(e);
            }
            Instruction::Cmd(c) => {
                let d = &mut self.states[si];
                lint::used_once(&mut self.lint, &mut d.cmd_loc, &command.name, at);
                let args = command_line(&mut self.lint, d, &c, &command.name, at);
                d.image.config.cmd = args.clone();
                d.image.config.args_escaped = true;
                d.cmd_set = true;
                self.history(si, format!("CMD {}", quote_list(&args)), false, false);
            }
            Instruction::Entrypoint(c) => {
                let d = &mut self.states[si];
                lint::used_once(&mut self.lint, &mut d.entrypoint_loc, &command.name, at);
                let args = command_line(&mut self.lint, d, &c, &command.name, at);
                d.image.config.entrypoint = args.clone();
                if !d.cmd_set {
                    d.image.config.cmd = Vec::new();
                }
                self.history(
                    si,
                    format!("ENTRYPOINT {}", quote_list(&args)),
                    false,
                    false,
                );
            }
            Instruction::Healthcheck(h) => {
                let d = &mut self.states[si];
                lint::used_once(&mut self.lint, &mut d.healthcheck_loc, &command.name, at);
                let hc = HealthConfig {
                    test: h.test.clone(),
                    interval: duration_ns(h.interval),
                    timeout: duration_ns(h.timeout),
                    start_period: duration_ns(h.start_period),
                    start_interval: duration_ns(h.start_interval),
                    retries: i64::from(h.retries),
                };
                let msg = healthcheck_history(&hc);
                self.states[si].image.config.healthcheck = Some(hc);
                self.history(si, msg, false, false);
            }
            Instruction::Expose(ports) => {
                let mut words = Vec::new();
                for p in &ports {
                    words.extend(lex.process_words(p, &env).map_err(expand_err)?);
                }
                let mut exposed = Vec::new();
                for p in &words {
                    exposed.extend(parse_port(p, &mut self.lint, at)?);
                }
                let d = &mut self.states[si];
                for p in &exposed {
                    d.image
                        .config
                        .exposed_ports
                        .insert(p.clone(), bk_image::types::Empty);
                }
                self.history(si, format!("EXPOSE {}", plain_list(&exposed)), false, false);
            }
            Instruction::User(u) => {
                let d = &mut self.states[si];
                d.state.user = u.clone();
                d.image.config.user = u.clone();
                self.history(si, format!("USER {u}"), false, false);
            }
            Instruction::Volume(vols) => {
                let d = &mut self.states[si];
                for v in &vols {
                    if v.is_empty() {
                        return Err(ConvertError::new(
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    d.image
                        .config
                        .volumes
                        .insert(v.clone(), bk_image::types::Empty);
                }
                self.history(si, format!("VOLUME {}", plain_list(&vols)), false, false);
            }
            Instruction::StopSignal(s) => {
                parse_signal(&s)?;
                self.states[si].image.config.stop_signal = s.clone();
                self.history(si, format!("STOPSIGNAL {s}"), false, false);
            }
            Instruction::Shell(sh) => {
                self.states[si].image.config.shell = sh.clone();
                self.history(si, format!("SHELL {}", plain_list(&sh)), false, false);
            }
            Instruction::Arg(pairs) => {
                let mut parts = Vec::with_capacity(pairs.len());
                for arg in pairs {
                    lint::secret_key(&mut self.lint, "ARG", &arg.key, at);
                    let has_value = self.opts.build_args.get(&arg.key);
                    let mut value = arg.value.clone();
                    // A bare ARG of a meta ARG is that one, for the outline.
                    let mut inherited = false;
                    if value.is_none()
                        && has_value.is_none()
                        && let Some(v) = Env::get(&self.global_args, &arg.key)
                    {
                        value = Some(v.to_owned());
                        inherited = true;
                    }
                    if let Some(v) = has_value {
                        value = Some(v.clone());
                    } else if let Some(v) = &arg.value {
                        let d = &self.states[si];
                        let vars = StageVars {
                            env: &d.state.env,
                            build_args: &d.build_args,
                        };
                        value = Some(
                            vars.expand(&mut self.lint, &lex, v, at)
                                .map_err(expand_err)?,
                        );
                    }
                    let d = &mut self.states[si];
                    if let Some(v) = &value
                        && arg.key != "BUILDKIT_SBOM_SCAN_CONTEXT"
                        && arg.key != "BUILDKIT_SBOM_SCAN_STAGE"
                    {
                        env_set(&mut d.state.env, &arg.key, v);
                    }
                    if !inherited {
                        d.outline.all_args.insert(
                            arg.key.clone(),
                            ArgInfo {
                                key: arg.key.clone(),
                                value: value.clone().unwrap_or_default(),
                                comment: arg.doc_comment.clone(),
                                location: at,
                                deps: BTreeSet::new(),
                            },
                        );
                    }
                    d.outline.used.insert(arg.key.clone());
                    d.build_args.push((arg.key.clone(), value.clone()));
                    parts.push(match &value {
                        Some(v) => format!("{}={v}", arg.key),
                        None => arg.key.clone(),
                    });
                }
                self.history(si, format!("ARG {}", parts.join(" ")), false, false);
            }
            Instruction::From(_) => {}
        }
        Ok(())
    }

    /// BuildKit's `dispatchWorkdir`.
    fn dispatch_workdir(
        &mut self,
        si: usize,
        path: &str,
        commit: bool,
        command: Option<&Command>,
    ) -> Result<(), ConvertError> {
        let d = &mut self.states[si];
        if commit {
            // Only the first WORKDIR of a build (base stages included)
            // is looked at: fixing it fixes the ones after.
            if !d.workdir_set
                && !path.starts_with('/')
                && let Some(c) = command
            {
                self.lint.run(&lint::WORKDIR_RELATIVE_PATH, c.location, || {
                    format!(
                        "Relative workdir {} can have unexpected results if the base image changes",
                        quote(path)
                    )
                });
            }
            d.workdir_set = true;
        }
        let wd = normalize_path(&d.image.config.working_dir, path, false);
        d.image.config.working_dir = wd.clone();
        d.state.set_dir(&wd);
        if !commit {
            return Ok(());
        }
        let mut with_layer = false;
        if wd != "/" {
            let user = d.image.config.user.clone();
            let platform = d.platform.clone();
            let env = d.state.env.clone();
            let code = command.map(|c| c.code.clone()).unwrap_or_default();
            let shown = uppercase_cmd(&process_cmd_env(&self.lex, &code, &env));
            let name = self.prefix(si, &shown, platform.as_ref(), &env);
            let d = &mut self.states[si];
            let mut actions = FileActions::default();
            actions.push(
                Action::Mkdir(pb::FileActionMkDir {
                    path: llb_normalize_path(&d.state.dir, &wd, false),
                    mode: 0o755,
                    make_parents: true,
                    owner: (!user.is_empty()).then(|| chown_opt(&user)),
                    timestamp: self.epoch.map_or(-1, |e| e.saturating_mul(1_000_000_000)),
                }),
                None,
            );
            let meta = OpMeta {
                ignore_cache: false,
                locations: command.map(|c| c.location).into_iter().collect(),
                ..OpMeta::default()
            }
            .name(name);
            d.state.out = Some(graph::file(d.state.out.take(), actions, meta));
            with_layer = true;
        }
        self.history(si, format!("WORKDIR {wd}"), with_layer, false);
        Ok(())
    }

    fn dispatch_run(
        &mut self,
        si: usize,
        cmd: &Cmd,
        run: &super::instructions::Run,
    ) -> Result<(), ConvertError> {
        let command = &cmd.command;
        let mut custom_name = command.code.clone();
        let owner = self.states[si].paths_owner;
        self.states[owner].paths.insert("/".to_owned());
        let env = self.states[si].state.env.clone();
        let lex = self.lex;
        let mounts = {
            let d = &self.states[si];
            let vars = StageVars {
                env: &env,
                build_args: &d.build_args,
            };
            let lint = &mut self.lint;
            let mut ex = |w: &str| vars.expand(lint, &lex, w, command.location);
            run.mounts(Some(&mut ex))
                .map_err(|e| ConvertError::new(e.0))?
        };
        let d = &self.states[si];
        let mut args = run.cmd.cmd_line.clone();
        let mut extra_mounts: Vec<ExecMount> = Vec::new();
        let files = &run.cmd.files;
        if !files.is_empty() {
            if args.len() != 1 || !run.cmd.prepend_shell {
                return Err(ConvertError::new(format!(
                    "parsing produced an invalid run command: [{}]",
                    args.join(" ")
                )));
            }
            if matches!(parse_heredoc(&args[0]), Ok(Some(_))) {
                let f = &files[0];
                let data = if f.chomp {
                    chomp_heredoc_content(&f.data)
                } else {
                    f.data.clone()
                };
                if d.image.platform.os != "windows" && f.data.starts_with("#!") {
                    let mut actions = FileActions::default();
                    actions.push(
                        Action::Mkfile(pb::FileActionMkFile {
                            path: llb_normalize_path("/", &f.name, false),
                            mode: 0o755,
                            data: data.into_bytes(),
                            owner: None,
                            timestamp: -1,
                        }),
                        None,
                    );
                    let st = graph::file(
                        None,
                        actions,
                        OpMeta::default().name("[internal] preparing inline document"),
                    );
                    let mut m = ExecMount::bind("/dev/pipes/", Some(st));
                    m.readonly = true;
                    m.selector = "/".to_owned();
                    extra_mounts.push(m);
                    args = vec![path_join(&["/dev/pipes/", &f.name])];
                } else {
                    args = vec![data];
                }
                custom_name.push_str(&format!(" ({})", summarize_heredoc(&f.data)));
            } else {
                let mut full = args[0].clone();
                for f in files {
                    full.push('\n');
                    full.push_str(&f.data);
                    full.push_str(&f.name);
                }
                args = vec![full];
            }
        }
        if run.cmd.prepend_shell {
            args = with_shell(&d.image, &args);
        }
        if !run.devices.is_empty() {
            return Err(ConvertError::new(
                "RUN --device is not supported yet (the daemon has no CDI devices)",
            ));
        }

        let mut spec = ExecSpec {
            meta: pb::Meta {
                args: args.clone(),
                env: Vec::new(),
                cwd: d.state.dir.clone(),
                user: d.state.user.clone(),
                hostname: d.state.hostname.clone(),
                ..Default::default()
            },
            network: d.state.network.unwrap_or(pb::NetMode::Unset),
            security: pb::SecurityMode::Sandbox,
            mounts: vec![ExecMount::bind("/", d.state.out.clone())],
            secrets: Vec::new(),
            ssh: Vec::new(),
            cdi_devices: Vec::new(),
            proxy_env: self.proxy_env.clone(),
            platform: d.state.platform.as_ref().map(pb_platform),
            extra_caps: Vec::new(),
        };
        spec.mounts.extend(extra_mounts);
        let mut exec_env = d.state.env.clone();
        if let Some(caps) = &self.opts.llb_caps {
            if caps.contains("exec.meta.setsdefaultpath") {
                spec.extra_caps.push("exec.meta.setsdefaultpath");
            } else if !exec_env.iter().any(|(k, _)| k == "PATH") {
                let os = spec
                    .platform
                    .as_ref()
                    .map_or_else(|| self.target_platform.os.clone(), |p| p.os.clone());
                if os != "windows" {
                    exec_env.push(("PATH".to_owned(), DEFAULT_PATH_ENV.to_owned()));
                }
            }
        }
        spec.meta.env = exec_env.iter().map(|(k, v)| format!("{k}={v}")).collect();

        self.dispatch_run_mounts(si, cmd, &mounts, &mut spec)?;
        spec.security = match run.security {
            SecurityMode::Sandbox => pb::SecurityMode::Sandbox,
            SecurityMode::Insecure => pb::SecurityMode::Insecure,
        };
        match run.network {
            NetworkMode::Default => {}
            NetworkMode::None => spec.network = pb::NetMode::None,
            NetworkMode::Host => spec.network = pb::NetMode::Host,
        }
        if self.caps_support("exec.meta.ulimit") {
            spec.meta.ulimit = self.opts.ulimits.clone();
        }
        for (host, ip) in &self.opts.extra_hosts {
            spec.meta.extra_hosts.push(pb::HostIp {
                host: host.clone(),
                ip: ip.to_canonical().to_string(),
            });
        }
        if self.caps_support("exec.mount.tmpfs.size") && self.opts.shm_size > 0 {
            let mut m = ExecMount::bind("/dev/shm", None);
            m.tmpfs = Some(self.opts.shm_size);
            spec.mounts.push(m);
        }
        if self.caps_support("exec.meta.cgroup.parent") && !self.opts.cgroup_parent.is_empty() {
            spec.meta.cgroup_parent = self.opts.cgroup_parent.clone();
        }

        // The name: the command with variables expanded (secrets masked).
        let mut masked = env.clone();
        for m in &mounts {
            if m.mount_type == MountType::Secret
                && let Some(name) = &m.env
            {
                env_set(&mut masked, name, "****");
            }
        }
        let mut name_lex = self.lex;
        name_lex.raw_quotes = true;
        name_lex.skip_unset_env = true;
        let shown = uppercase_cmd(&process_cmd_env(&name_lex, &custom_name, &masked));
        let pl = self.states[si].state.platform.clone();
        let name = self.prefix(si, &shown, pl.as_ref(), &env);
        let d = &mut self.states[si];
        let meta = OpMeta {
            ignore_cache: d.ignore_cache,
            locations: vec![command.location],
            ..OpMeta::default()
        }
        .name(name)
        .command(command.code.clone());
        let outputs = graph::exec(spec, meta);
        d.state.out = outputs.output("/");
        let history = format!("RUN {}", run_command_string(&args, &d.build_args, &env));
        self.history(si, history, true, true);
        Ok(())
    }

    fn dispatch_run_mounts(
        &mut self,
        si: usize,
        cmd: &Cmd,
        mounts: &[Mount],
        spec: &mut ExecSpec,
    ) -> Result<(), ConvertError> {
        for (i, mount) in mounts.iter().enumerate() {
            let mut from = mount.from.clone();
            if from.is_empty() && mount.mount_type == MountType::Cache {
                from = SCRATCH.to_owned();
            }
            let mut st = Some(self.build_context.clone());
            let src_stage = if from.is_empty() {
                None
            } else {
                let s = *cmd
                    .sources
                    .get(i)
                    .ok_or_else(|| ConvertError::new("internal error: mount source not found"))?;
                if !self.states[s].dispatched {
                    return Err(ConvertError::new(format!(
                        "cannot mount from stage {} to {}, stage needs to be defined before current command",
                        quote(&mount.from),
                        quote(&mount.target)
                    )));
                }
                st = self.states[s].state.out.clone();
                Some(s)
            };
            let mut em = ExecMount::bind("", None);
            match mount.mount_type {
                MountType::Tmpfs => {
                    st = None;
                    em.tmpfs = Some(mount.size_limit);
                }
                MountType::Secret => {
                    let secret = secret_spec(mount)?;
                    self.states[si].outline.record_secret(
                        &secret.id,
                        mount.required,
                        cmd.command.location,
                    );
                    spec.secrets.push(secret);
                    continue;
                }
                MountType::Ssh => {
                    let ssh = ssh_spec(mount)?;
                    let id = if ssh.id.is_empty() {
                        "default"
                    } else {
                        ssh.id.as_str()
                    };
                    self.states[si]
                        .outline
                        .record_ssh(id, mount.required, cmd.command.location);
                    spec.ssh.push(ssh);
                    continue;
                }
                _ => {}
            }
            if mount.read_only {
                em.readonly = true;
            } else if mount.mount_type == MountType::Bind
                && self.caps_support("exec.mount.bind.readwrite-nooutput")
            {
                em.no_output = true;
            }
            if mount.mount_type == MountType::Cache {
                let sharing = match mount.cache_sharing {
                    Some(ShareMode::Private) => pb::CacheSharingOpt::Private,
                    Some(ShareMode::Locked) => pb::CacheSharingOpt::Locked,
                    _ => pb::CacheSharingOpt::Shared,
                };
                let id = if mount.cache_id.is_empty() {
                    path_clean(&mount.target)
                } else {
                    mount.cache_id.clone()
                };
                em.cache = Some((format!("{}/{id}", self.opts.cache_id_namespace), sharing));
            }
            let mut target = mount.target.clone();
            if !path_clean(&target).starts_with('/') {
                target = path_join(&["/", &self.states[si].state.dir, &target]);
            }
            if target == "/" {
                return Err(ConvertError::new(format!(
                    "invalid mount target {}",
                    quote(&target)
                )));
            }
            let src = path_join(&["/", &mount.source]);
            if src != "/" {
                em.selector = src;
            } else if mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some() {
                let mut actions = FileActions::default();
                let user = |id: Option<u32>| pb::UserOpt {
                    user: Some(pb::user_opt::User::ById(id.unwrap_or(0))),
                };
                actions.push(
                    Action::Mkdir(pb::FileActionMkDir {
                        path: "/cache".to_owned(),
                        mode: (mount.mode.unwrap_or(0o755) & 0o777) as i32,
                        make_parents: false,
                        owner: Some(pb::ChownOpt {
                            user: Some(user(mount.uid)),
                            group: Some(user(mount.gid)),
                        }),
                        timestamp: -1,
                    }),
                    None,
                );
                st = Some(graph::file(
                    st,
                    actions,
                    OpMeta::default().name("[internal] setting cache mount permissions"),
                ));
                em.selector = "/cache".to_owned();
            }
            em.target = target;
            em.source = st;
            spec.mounts.push(em);
            let p = path_join(&["/", &mount.source]);
            match src_stage {
                None => {
                    self.states[si].ctx_paths.insert(p);
                }
                Some(s) => {
                    let owner = self.states[s].paths_owner;
                    self.states[owner].paths.insert(p);
                }
            }
        }
        Ok(())
    }

    /// BuildKit's `dispatchCopy` (COPY and ADD).
    fn dispatch_copy(&mut self, si: usize, cfg: CopyConfig) -> Result<(), ConvertError> {
        let d = &self.states[si];
        let dest = relative_to_workdir(&d.state.dir, &cfg.params.dest_path);
        let owner = (!cfg.chown.is_empty()).then(|| chown_opt(&cfg.chown));
        let chmod = parse_chmod(&cfg.chmod)?;
        if !cfg.checksum.is_empty() {
            if !cfg.is_add {
                return Err(ConvertError::new("checksum can't be specified for COPY"));
            }
            if cfg.params.source_paths.len() != 1 {
                return Err(ConvertError::new(
                    "checksum can't be specified for multiple sources",
                ));
            }
            if !is_http_source(&cfg.params.source_paths[0])
                && !is_git_source(&cfg.params.source_paths[0])
            {
                return Err(ConvertError::new(
                    "checksum requires HTTP(S) or Git sources",
                ));
            }
        }
        let mut msg = String::from(if cfg.is_add { "ADD" } else { "COPY" });
        if cfg.parents {
            msg.push_str(" --parents");
        }
        if !cfg.chown.is_empty() {
            msg.push_str(&format!(" --chown={}", cfg.chown));
        }
        if !cfg.chmod.is_empty() {
            msg.push_str(&format!(" --chmod={}", cfg.chmod));
        }
        let platform = d
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let env = d.state.env.clone();
        let name = uppercase_cmd(&process_cmd_env(&self.lex, &cfg.code, &env));
        let pg_name = self.prefix(si, &name, Some(&platform), &env);

        let (mode, mode_str) = match &chmod {
            None => (-1, String::new()),
            Some(Chmod::Octal(m)) => (*m, String::new()),
            Some(Chmod::Symbolic(s)) => (0, s.clone()),
        };
        let copy_action =
            |src: String, follow: bool, patterns: Vec<String>, unpack: bool, wildcard: bool| {
                pb::FileActionCopy {
                    src,
                    dest: llb_normalize_path("/", &dest, true),
                    owner: owner.clone(),
                    mode,
                    follow_symlink: follow,
                    dir_copy_contents: follow,
                    attempt_unpack_docker_compatibility: unpack,
                    create_dest_path: true,
                    allow_wildcard: wildcard,
                    allow_empty_wildcard: wildcard,
                    timestamp: -1,
                    include_patterns: patterns,
                    exclude_patterns: cfg.exclude_patterns.clone(),
                    always_replace_existing_dest_paths: false,
                    mode_str: mode_str.clone(),
                    required_paths: Vec::new(),
                }
            };
        let mut actions = FileActions::default();
        for src in &cfg.params.source_paths {
            msg.push(' ');
            msg.push_str(src);
            if let Some(git) = parse_git_ref(src).map_err(ConvertError::new)? {
                if !cfg.is_add {
                    return Err(ConvertError::new("source can't be a git ref for COPY"));
                }
                let st = git_source(&git, &cfg, &pg_name)?;
                let action = copy_action("/".to_owned(), false, Vec::new(), false, false);
                actions.push(Action::Copy(action), Some(Some(st)));
                continue;
            }
            if is_http_source(src) {
                if !cfg.is_add {
                    return Err(ConvertError::new("source can't be a URL for COPY"));
                }
                // Downloads are never unpacked unless asked; the file is
                // named after the URL's last path element.
                let filename = url_file_name(src);
                let mut attrs = BTreeMap::new();
                let mut caps = Vec::new();
                if !cfg.checksum.is_empty() {
                    let checksum = cfg.checksum.trim();
                    if !is_digest(checksum) {
                        return Err(ConvertError::new(format!(
                            "invalid checksum digest format: {checksum}"
                        )));
                    }
                    attrs.insert("http.checksum".to_owned(), checksum.to_owned());
                    caps.push("source.http.checksum");
                }
                attrs.insert("http.filename".to_owned(), filename.clone());
                caps.push("source.http");
                let st = graph::source(
                    src.clone(),
                    attrs,
                    None,
                    caps,
                    OpMeta::default().name(pg_name.clone()).command(""),
                );
                let mut action = copy_action(
                    copy_source_path(&filename, "/"),
                    true,
                    Vec::new(),
                    cfg.unpack.unwrap_or(false),
                    false,
                );
                action.allow_wildcard = false;
                action.allow_empty_wildcard = false;
                actions.push(Action::Copy(action), Some(Some(st)));
                continue;
            }
            if cfg.from_context {
                lint::copy_ignored(
                    &mut self.lint,
                    self.ignore_matcher.as_ref(),
                    cfg.is_add,
                    src,
                    cfg.location,
                );
            }
            let mut src = src.clone();
            let mut patterns = Vec::new();
            if cfg.parents {
                let pattern = match src.split_once("/./") {
                    Some((parent, pattern)) => {
                        let p = pattern.to_owned();
                        src = parent.to_owned();
                        p
                    }
                    None => {
                        let p = src.clone();
                        src = "/".to_owned();
                        p
                    }
                };
                let pattern = normalize_path("/", &pattern, false);
                patterns.push(pattern.trim_start_matches('/').to_owned());
            }
            let src = normalize_path("/", &src, false);
            let unpack = cfg.unpack.unwrap_or(cfg.is_add);
            let src_path = copy_source_path(&src, &cfg.source_dir);
            actions.push(
                Action::Copy(copy_action(src_path, true, patterns, unpack, true)),
                Some(cfg.source.clone()),
            );
        }
        for content in &cfg.params.source_contents {
            msg.push_str(&format!(" <<{}", content.path));
            let mut mk = FileActions::default();
            mk.push(
                Action::Mkfile(pb::FileActionMkFile {
                    path: llb_normalize_path("/", &content.path, false),
                    mode: 0o644,
                    data: content.data.clone().into_bytes(),
                    owner: None,
                    timestamp: -1,
                }),
                None,
            );
            let st = graph::file(
                None,
                mk,
                OpMeta::default().name("[internal] preparing inline document"),
            );
            let mut action = copy_action(
                copy_source_path(&content.path, "/"),
                false,
                Vec::new(),
                false,
                false,
            );
            action.follow_symlink = false;
            action.dir_copy_contents = false;
            actions.push(Action::Copy(action), Some(Some(st)));
        }
        msg.push(' ');
        msg.push_str(&cfg.params.dest_path);
        if actions.is_empty() {
            return Err(ConvertError::new("no sources to copy"));
        }

        let d = &self.states[si];
        let ignore_cache = d.ignore_cache;
        let file_meta = OpMeta {
            ignore_cache,
            locations: vec![cfg.location],
            ..OpMeta::default()
        };
        if self.caps_support("mergeop") && cfg.link && cfg.chmod.is_empty() {
            self.link_groups += 1;
            let pg_id = progress_group_id(si, self.link_groups);
            self.states[si].cmd_index -= 1;
            let pg_name = self.prefix(si, &name, Some(&platform), &env);
            let copy_meta = OpMeta {
                progress_group: Some(pb::ProgressGroup {
                    id: pg_id.clone(),
                    name: pg_name.clone(),
                    weak: true,
                }),
                ..file_meta.clone()
            }
            .name(pg_name.clone());
            self.states[si].cmd_index -= 1;
            let link_name = self.prefix(si, &format!("LINK {name}"), Some(&platform), &env);
            let merge_meta = OpMeta {
                progress_group: Some(pb::ProgressGroup {
                    id: pg_id,
                    name: pg_name,
                    weak: false,
                }),
                ..file_meta
            }
            .name(link_name);
            // Owners by name of a linked copy are looked up in scratch.
            let copied = graph::file(None, actions, copy_meta);
            let d = &mut self.states[si];
            d.state.out = Some(match d.state.out.take() {
                Some(base) => graph::merge(vec![base, copied], merge_meta),
                None => copied,
            });
        } else {
            let d = &mut self.states[si];
            d.state.out = Some(graph::file(
                d.state.out.take(),
                actions,
                file_meta.name(pg_name),
            ));
        }
        self.history(si, msg, true, true);
        Ok(())
    }

    /// The build context: `local://context` with BuildKit's attributes.
    fn main_context(&self, ctx_paths: &BTreeSet<String>) -> Out {
        let o = self.opts;
        let mut attrs = BTreeMap::new();
        let mut caps = Vec::new();
        let name = &o.context_name;
        let session = o
            .local_session_ids
            .get(name)
            .cloned()
            .unwrap_or_else(|| o.session_id.clone());
        if !session.is_empty() {
            attrs.insert("local.session".to_owned(), session);
            caps.push("source.local.sessionid");
        } else {
            attrs.insert("local.unique".to_owned(), String::new());
            caps.push("source.local.unique");
        }
        if let Some(paths) = follow_paths(ctx_paths) {
            attrs.insert("local.followpaths".to_owned(), paths);
            caps.push("source.local.followpaths");
        }
        if !o.context_excludes.is_empty() {
            attrs.insert(
                "local.excludepatterns".to_owned(),
                json_strings(&o.context_excludes),
            );
            caps.push("source.local.excludepatterns");
        }
        attrs.insert("local.sharedkeyhint".to_owned(), name.clone());
        caps.push("source.local.sharedkeyhint");
        caps.push("source.local");
        graph::source(
            format!("local://{name}"),
            attrs,
            None,
            caps,
            OpMeta::default().name("[internal] load build context"),
        )
    }

    fn finish_named_locals(&mut self) {
        for p in std::mem::take(&mut self.pending_locals) {
            let mut attrs = BTreeMap::new();
            let mut caps = Vec::new();
            if !p.session.is_empty() {
                attrs.insert("local.session".to_owned(), p.session.clone());
                caps.push("source.local.sessionid");
            }
            if let Some(paths) = follow_paths(&self.states[p.paths_owner].paths) {
                attrs.insert("local.followpaths".to_owned(), paths);
                caps.push("source.local.followpaths");
            }
            if !p.excludes.is_empty() {
                attrs.insert(
                    "local.excludepatterns".to_owned(),
                    json_strings(&p.excludes),
                );
                caps.push("source.local.excludepatterns");
            }
            attrs.insert(
                "local.sharedkeyhint".to_owned(),
                format!("context:{}", p.name_with_platform),
            );
            caps.push("source.local.sharedkeyhint");
            caps.push("source.local");
            let out = graph::source(
                format!("local://{}", p.name),
                attrs,
                None,
                caps,
                OpMeta::default().name(format!(
                    "[context {}] load from client",
                    p.name_with_platform
                )),
            );
            let _ = p.cell.set(out);
        }
    }
}

struct CopyConfig {
    params: SourcesAndDest,
    exclude_patterns: Vec<String>,
    /// The state copied from (`None`: scratch).
    source: Option<Out>,
    /// Its working directory.
    source_dir: String,
    is_add: bool,
    code: String,
    chown: String,
    chmod: String,
    link: bool,
    checksum: String,
    parents: bool,
    unpack: Option<bool>,
    /// `ADD --keep-git-dir`.
    keep_git_dir: Option<bool>,
    location: LineRange,
    /// Sources are in the main build context (ADD, COPY without
    /// `--from`): CopyIgnoredFile looks at them.
    from_context: bool,
}

enum Chmod {
    Octal(i32),
    Symbolic(String),
}

/// `--chmod`: octal up to 07777, or a symbolic mode (`u+x,g-w`).
fn parse_chmod(s: &str) -> Result<Option<Chmod>, ConvertError> {
    if s.is_empty() {
        return Ok(None);
    }
    let non_octal = || {
        ConvertError::new(format!(
            "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
        ))
    };
    if let Ok(p) = parse_uint(s, 8, 32) {
        if p > 0o7777 {
            return Err(non_octal());
        }
        return Ok(Some(Chmod::Octal(p as i32)));
    }
    if s.as_bytes()[0].is_ascii_digit() {
        return Err(non_octal());
    }
    if !valid_symbolic_mode(s) {
        return Err(ConvertError::new("invalid syntax"));
    }
    Ok(Some(Chmod::Symbolic(s.to_owned())))
}

/// The grammar of BSD `setmode` (`dchapes/mode`): `[ugoa]*[+-=][rwxXst ugo]*`,
/// repeated, comma separated.
fn valid_symbolic_mode(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && matches!(b[i], b'a' | b'u' | b'g' | b'o') {
            i += 1;
        }
        if i >= b.len() {
            return false;
        }
        loop {
            if !matches!(b[i], b'+' | b'-' | b'=') {
                return false;
            }
            i += 1;
            while i < b.len()
                && matches!(
                    b[i],
                    b'r' | b's' | b't' | b'w' | b'X' | b'x' | b'u' | b'g' | b'o'
                )
            {
                i += 1;
            }
            if i >= b.len() {
                return true;
            }
            if b[i] == b',' {
                i += 1;
                break;
            }
        }
    }
}

/// `llb.WithUser`: `user[:group]`, each a number (or `root`) or a name.
fn chown_opt(spec: &str) -> pb::ChownOpt {
    let one = |v: &str| {
        let id = if v == "root" {
            Some(0)
        } else {
            super::golang::parse_int(v, 32).ok()
        };
        match id {
            Some(id) => pb::UserOpt {
                user: Some(pb::user_opt::User::ById(id as u32)),
            },
            None if v.is_empty() => pb::UserOpt {
                user: Some(pb::user_opt::User::ById(0)),
            },
            None => pb::UserOpt {
                user: Some(pb::user_opt::User::ByName(pb::NamedUserOpt {
                    name: v.to_owned(),
                    input: -1,
                })),
            },
        }
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    pb::ChownOpt {
        user: Some(one(user)),
        group: group.map(one),
    }
}

fn secret_spec(m: &Mount) -> Result<SecretSpec, ConvertError> {
    let mut id = if m.source.is_empty() {
        m.cache_id.clone()
    } else {
        m.source.clone()
    };
    if id.is_empty() {
        if m.target.is_empty() {
            return Err(ConvertError::new("one of source, target required"));
        }
        id = path_base(&m.target);
    }
    let mut target = (!m.target.is_empty()).then(|| m.target.clone());
    if m.env.is_none() && target.is_none() {
        target = Some(format!("/run/secrets/{}", path_base(&id)));
    }
    let custom = m.uid.is_some() || m.gid.is_some() || m.mode.is_some();
    Ok(SecretSpec {
        id,
        target,
        env: m.env.clone(),
        uid: if custom { m.uid.unwrap_or(0) } else { 0 },
        gid: if custom { m.gid.unwrap_or(0) } else { 0 },
        mode: m.mode.unwrap_or(0o400),
        optional: !m.required,
    })
}

fn ssh_spec(m: &Mount) -> Result<SshSpec, ConvertError> {
    if !m.source.is_empty() {
        return Err(ConvertError::new("ssh does not support source"));
    }
    Ok(SshSpec {
        id: m.cache_id.clone(),
        target: m.target.clone(),
        uid: m.uid.unwrap_or(0),
        gid: m.gid.unwrap_or(0),
        mode: m.mode.unwrap_or(0o600),
        optional: !m.required,
    })
}

/// BuildKit's `defaultArgs`: the automatic platform args.
fn default_args(
    build: &Platform,
    target: &Platform,
    overrides: &BTreeMap<String, String>,
    target_stage: &str,
) -> Vec<(String, String)> {
    let stage = if target_stage.is_empty() {
        "default"
    } else {
        target_stage
    };
    let pairs = [
        ("BUILDPLATFORM", platforms::format(build)),
        ("BUILDOS", build.os.clone()),
        ("BUILDOSVERSION", build.os_version.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant.clone()),
        ("TARGETPLATFORM", platforms::format_all(target)),
        ("TARGETOS", target.os.clone()),
        ("TARGETOSVERSION", target.os_version.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone()),
        ("TARGETSTAGE", stage.to_owned()),
    ];
    let mut env = Vec::new();
    for (k, v) in pairs {
        let v = overrides.get(k).cloned().unwrap_or(v);
        env_set(&mut env, k, &v);
    }
    env
}

fn proxy_env(args: &BTreeMap<String, String>) -> Option<pb::ProxyEnv> {
    let mut pe = pb::ProxyEnv::default();
    let mut set = false;
    for (k, v) in args {
        let slot = match to_lower(k).as_str() {
            "http_proxy" => &mut pe.http_proxy,
            "https_proxy" => &mut pe.https_proxy,
            "ftp_proxy" => &mut pe.ftp_proxy,
            "no_proxy" => &mut pe.no_proxy,
            "all_proxy" => &mut pe.all_proxy,
            _ => continue,
        };
        *slot = v.clone();
        set = true;
    }
    set.then_some(pe)
}

fn pb_platform(p: &Platform) -> pb::Platform {
    pb::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone(),
        os_version: p.os_version.clone(),
        os_features: p.os_features.clone(),
    }
}

fn image_platform(p: &pb::Platform) -> Platform {
    Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        os_version: p.os_version.clone(),
        os_features: p.os_features.clone(),
        variant: p.variant.clone(),
    }
}

fn auto_detect_platform(img: &Image, target: &Platform, build: &Platform) -> Platform {
    let (os, arch) = (&img.platform.os, &img.platform.architecture);
    if &target.os == os && &target.architecture == arch {
        return target.clone();
    }
    if &build.os == os && &build.architecture == arch {
        return build.clone();
    }
    target.clone()
}

/// `addEnv` of the image config: replaced in place, else appended.
fn add_image_env(env: &mut Vec<String>, k: &str, v: &str) {
    let entry = format!("{k}={v}");
    for e in env.iter_mut() {
        if e.split_once('=').map_or(e.as_str(), |(key, _)| key) == k {
            *e = entry;
            return;
        }
    }
    env.push(entry);
}

fn with_shell(img: &Image, args: &[String]) -> Vec<String> {
    let mut shell = if img.config.shell.is_empty() {
        if img.platform.os == "windows" {
            vec!["cmd".to_owned(), "/S".to_owned(), "/C".to_owned()]
        } else {
            vec!["/bin/sh".to_owned(), "-c".to_owned()]
        }
    } else {
        img.config.shell.clone()
    };
    shell.push(args.join(" "));
    shell
}

/// The history form of RUN: build args in force, then the command.
fn run_command_string(
    args: &[String],
    build_args: &[(String, Option<String>)],
    env: &[(String, String)],
) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in build_args {
        let value = Env::get(env, k)
            .map(str::to_owned)
            .unwrap_or_else(|| v.clone().unwrap_or_default());
        match pairs.iter_mut().find(|(key, _)| key == k) {
            Some(p) => p.1 = value,
            None => pairs.push((k.clone(), value)),
        }
    }
    let mut out: Vec<String> = Vec::new();
    if !pairs.is_empty() {
        out.push(format!("|{}", pairs.len()));
        out.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    out.extend(args.iter().cloned());
    out.join(" ")
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((first, rest)) => format!("{} {rest}", to_upper(first)),
        None => to_upper(s),
    }
}

fn process_cmd_env(lex: &Lexer, cmd: &str, env: &[(String, String)]) -> String {
    lex.process_word(cmd, &env.to_vec())
        .unwrap_or_else(|_| cmd.to_owned())
}

fn summarize_heredoc(doc: &str) -> String {
    let doc = super::golang::trim_space(doc).replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_owned();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

fn duration_ns(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A deterministic stand-in for BuildKit's random progress group ids.
fn progress_group_id(stage: usize, n: usize) -> String {
    let d = bk_llb::Digest::of(format!("dockerfile-link-{stage}-{n}").as_bytes()).to_string();
    d.trim_start_matches("sha256:").chars().take(25).collect()
}

fn platform_from_env(env: &[(String, String)]) -> Option<Platform> {
    let mut p = Platform::default();
    let mut set = false;
    for (k, v) in env {
        match k.as_str() {
            "TARGETPLATFORM" => {
                if let Ok(p) = platforms::parse(v) {
                    return Some(p);
                }
            }
            "TARGETOS" => {
                p.os = v.clone();
                set = true;
            }
            "TARGETARCH" => {
                p.architecture = v.clone();
                set = true;
            }
            "TARGETVARIANT" => {
                p.variant = v.clone();
                set = true;
            }
            _ => {}
        }
    }
    set.then_some(p)
}

fn format_target_platform(base: &Platform, target: Option<Platform>) -> String {
    let Some(mut t) = target else {
        return String::new();
    };
    if t.os.is_empty() {
        t.os = base.os.clone();
    }
    if t.architecture.is_empty() {
        t.architecture = base.architecture.clone();
    }
    let p = platforms::normalize(&t);
    if p.os == base.os && p.architecture != base.architecture {
        let mut s = p.architecture.clone();
        if !p.variant.is_empty() {
            s.push('/');
            s.push_str(&p.variant);
        }
        return format!("->{s}");
    }
    if p.os != base.os {
        return format!("->{}", platforms::format_all(&p));
    }
    String::new()
}

/// `moby/sys/signal.ParseSignal` for Linux.
fn parse_signal(raw: &str) -> Result<(), ConvertError> {
    let invalid = || ConvertError::new(format!("invalid signal: {raw}"));
    if let Ok(n) = super::golang::parse_int(raw, 64) {
        return if n == 0 { Err(invalid()) } else { Ok(()) };
    }
    let up = to_upper(raw);
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if NAMES.contains(&name) || name == "RTMIN" || name == "RTMAX" {
        return Ok(());
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .and_then(|n| {
                n.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .map(|_| n)
            })
            .is_some_and(|n| !n.starts_with('0') && !n.starts_with('+'))
    };
    if rt("RTMIN+", 15) || rt("RTMAX-", 14) {
        return Ok(());
    }
    Err(invalid())
}

/// EXPOSE's port specs: `[ip:][hostport:]port[-end][/proto]` to
/// `port/proto` entries.
///
/// ExposeProtoCasing and ExposeInvalidFormat are checked once the protocol
/// is known to be valid, before the addresses are.
fn parse_port(raw: &str, lint: &mut Linter, at: LineRange) -> Result<Vec<String>, ConvertError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (ip, host_port, container) = match parts.len() {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        3 => (parts[0].to_owned(), parts[1], parts[2]),
        n => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    let wrap = |e: &str| ConvertError::new(format!("invalid port: {}: {e}", quote(raw)));
    if port.is_empty() {
        return Err(wrap("no port specified"));
    }
    let proto = match to_lower(proto).as_str() {
        "" => "tcp".to_owned(),
        "tcp" | "udp" | "sctp" => proto.to_owned(),
        _ => return Err(wrap(&format!("invalid proto: {proto}"))),
    };
    lint::expose_port(
        lint,
        raw,
        &proto,
        !ip.is_empty() || !host_port.is_empty(),
        at,
    );
    let mut ip = ip;
    if ip.starts_with('[') {
        ip = ip
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .map(str::to_owned)
            .ok_or_else(|| ConvertError::new(format!("invalid IP address {ip}")))?;
    }
    if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
        return Err(ConvertError::new(format!("invalid IP address: {ip}")));
    }
    let (start, end) = port_range(port)
        .map_err(|_| ConvertError::new(format!("invalid containerPort: {port}")))?;
    if !host_port.is_empty() {
        let (hs, he) = port_range(host_port)
            .map_err(|_| ConvertError::new(format!("invalid hostPort: {host_port}")))?;
        if end - start != he - hs && end != start {
            return Err(ConvertError::new(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            )));
        }
    }
    Ok((start..=end)
        .map(|p| format!("{p}/{}", to_lower(&proto)))
        .collect())
}

fn port_range(s: &str) -> Result<(u32, u32), ()> {
    let num = |s: &str| -> Result<u32, ()> {
        let n: i64 = super::golang::parse_int(s, 64).map_err(|_| ())?;
        if !(0..=65535).contains(&n) {
            return Err(());
        }
        Ok(n as u32)
    };
    if s.is_empty() {
        return Err(());
    }
    match s.split_once('-') {
        None => {
            let n = num(s)?;
            Ok((n, n))
        }
        Some((a, b)) if a == b => {
            let n = num(a)?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(());
            }
            Ok((a, b))
        }
    }
}

fn is_git_source(src: &str) -> bool {
    matches!(parse_git_ref(src), Ok(Some(_)))
}

/// The git source op of `ADD <git ref>`, as BuildKit's `llb.Git` makes it:
/// identifier `git://<host><path>[#<ref>[:<subdir>]]`, the remote in
/// `git.fullurl`, the default auth secret names, flags from the
/// instruction and the reference's query.
fn git_source(git: &GitRef, cfg: &CopyConfig, pg_name: &str) -> Result<Out, ConvertError> {
    let mut keep = cfg.keep_git_dir;
    if let (Some(flag), Some(query)) = (keep, git.keep_git_dir)
        && flag != query
    {
        return Err(ConvertError::new("inconsistent keep-git-dir configuration"));
    }
    if git.keep_git_dir.is_some() {
        keep = git.keep_git_dir;
    }
    let mut checksum = cfg.checksum.clone();
    if !checksum.is_empty() && !git.checksum.is_empty() && checksum != git.checksum {
        return Err(ConvertError::new(format!(
            "checksum mismatch {checksum:?} != {:?}",
            git.checksum
        )));
    }
    if !git.checksum.is_empty() {
        checksum = git.checksum.clone();
    }
    let mut id = git.host_path.clone();
    if !git.reference.is_empty() || !git.subdir.is_empty() {
        id.push('#');
        id.push_str(&git.reference);
        if !git.subdir.is_empty() {
            id.push(':');
            id.push_str(&git.subdir);
        }
    }
    let mut attrs = BTreeMap::new();
    let mut caps = Vec::new();
    if keep == Some(true) {
        attrs.insert("git.keepgitdir".to_owned(), "true".to_owned());
        caps.push("source.git.keepgitdir");
    }
    attrs.insert("git.fullurl".to_owned(), git.remote.clone());
    caps.push("source.git.fullurl");
    attrs.insert(
        "git.authtokensecret".to_owned(),
        "GIT_AUTH_TOKEN".to_owned(),
    );
    attrs.insert(
        "git.authheadersecret".to_owned(),
        "GIT_AUTH_HEADER".to_owned(),
    );
    if git.ssh {
        attrs.insert("git.mountsshsock".to_owned(), "default".to_owned());
        caps.push("source.git.mountsshsock");
    }
    if !checksum.is_empty() {
        attrs.insert("git.checksum".to_owned(), checksum);
        caps.push("source.git.checksum");
    }
    if git.submodules == Some(false) {
        attrs.insert("git.skipsubmodules".to_owned(), "true".to_owned());
        caps.push("source.git.skipsubmodules");
    }
    caps.push("source.git");
    Ok(graph::source(
        format!("git://{id}"),
        attrs,
        None,
        caps,
        OpMeta::default().name(pg_name.to_owned()),
    ))
}

/// The name `ADD <url>` gives the download: the URL path's last element,
/// `__unnamed__` without one.
fn url_file_name(src: &str) -> String {
    let rest = src.split_once("://").map_or("", |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let cleaned = path_clean(if path.is_empty() { "." } else { path });
    match cleaned.rsplit('/').next().unwrap_or("") {
        "" | "." | "/" => "__unnamed__".to_owned(),
        base => base.to_owned(),
    }
}

/// `algorithm:hex` as digest.Parse accepts it (sha256, sha384, sha512).
fn is_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_http_source(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && !is_git_source(src)
}

/// `filterPaths`: the context paths used, unless the whole context is.
fn follow_paths(paths: &BTreeSet<String>) -> Option<String> {
    if paths.is_empty() || paths.contains("/") {
        return None;
    }
    let mut list: Vec<String> = paths.iter().map(|p| path_join(&[".", p])).collect();
    list.sort();
    list.dedup();
    Some(json_strings(&list))
}

/// Go's `json.Marshal` of a `[]string`.
pub(crate) fn json_strings(items: &[String]) -> String {
    bk_image::json::to_vec(items)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Go's `path.Clean`.
pub(crate) fn path_clean(p: &str) -> String {
    bk_llb::builder::clean_path(p)
}

/// Go's `path.Join`.
fn path_join(parts: &[&str]) -> String {
    let non_empty: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if non_empty.is_empty() {
        return String::new();
    }
    path_clean(&non_empty.join("/"))
}

fn path_base(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".to_owned();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
}

/// `system.NormalizePath` on Linux: relative paths join `parent`; absolute
/// ones are kept as written.
fn normalize_path(parent: &str, new_path: &str, keep_slash: bool) -> String {
    let mut parent = if parent.is_empty() {
        "/".to_owned()
    } else {
        parent.to_owned()
    };
    if !parent.starts_with('/') {
        parent = path_join(&["/", &parent]);
    }
    let orig = new_path;
    let mut p = if new_path.is_empty() {
        parent.clone()
    } else {
        new_path.to_owned()
    };
    if !p.starts_with('/') {
        p = path_join(&[&parent, &p]);
    }
    if keep_slash {
        if orig.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        } else if orig.ends_with("/.") {
            if p != "/" {
                p.push('/');
            }
            p.push('.');
        }
    }
    p
}

/// `normalizePath` of Go's `client/llb`: cleaned, joined to `parent`.
fn llb_normalize_path(parent: &str, p: &str, keep_slash: bool) -> String {
    let orig = p;
    let mut p = path_clean(p);
    if !p.starts_with('/') {
        p = path_join(&["/", parent, &p]);
    }
    if keep_slash {
        if orig.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        } else if orig.ends_with("/.") {
            if p != "/" {
                p.push('/');
            }
            p.push('.');
        }
    }
    p
}

/// The `src` of a copy: cleaned, relative to the source state's directory.
fn copy_source_path(src: &str, dir: &str) -> String {
    let p = path_clean(src);
    if p.starts_with('/') {
        p
    } else {
        path_join(&[dir, &p])
    }
}

/// `pathRelativeToWorkingDir`.
fn relative_to_workdir(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        return normalize_path("/", p, true);
    }
    let p = if p == "." || p.is_empty() { "./" } else { p };
    normalize_path(dir, p, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_go() {
        assert_eq!(relative_to_workdir("/app", "."), "/app/");
        assert_eq!(relative_to_workdir("/app", "sub/"), "/app/sub/");
        assert_eq!(relative_to_workdir("/app", "x/."), "/app/x/.");
        assert_eq!(llb_normalize_path("/", "/app/x/.", true), "/app/x/.");
        assert_eq!(llb_normalize_path("/", "/a/../b/", true), "/b/");
        assert_eq!(normalize_path("/app/", "foo", false), "/app/foo");
        assert_eq!(normalize_path("/", "/a/", false), "/a/");
        assert_eq!(path_base("/run/secrets/x/"), "x");
    }

    #[test]
    fn modes_and_signals() {
        assert!(matches!(parse_chmod("755"), Ok(Some(Chmod::Octal(0o755)))));
        assert!(parse_chmod("8").is_err());
        assert!(parse_chmod("10000").is_err());
        assert!(matches!(
            parse_chmod("u+x,g-w"),
            Ok(Some(Chmod::Symbolic(_)))
        ));
        assert!(matches!(parse_chmod("a=rwX"), Ok(Some(Chmod::Symbolic(_)))));
        assert_eq!(
            parse_chmod("u+z").err().map(|e| e.message),
            Some("invalid syntax".into())
        );
        assert!(parse_chmod("u").is_err());
        assert!(parse_signal("SIGTERM").is_ok());
        assert!(parse_signal("kill").is_ok());
        assert!(parse_signal("9").is_ok());
        assert!(parse_signal("RTMIN+3").is_ok());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGFOO").is_err());
    }

    #[test]
    fn ports() {
        let parse_port = |p: &str| parse_port(p, &mut Linter::off(), LineRange::new(1, 1));
        assert_eq!(parse_port("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            parse_port("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(parse_port("x").is_err());
        assert!(parse_port("80/foo").is_err());
    }

    #[test]
    fn chown_forms() {
        let c = chown_opt("1000:1000");
        assert_eq!(c.user.unwrap().user, Some(pb::user_opt::User::ById(1000)));
        let c = chown_opt("app");
        assert!(matches!(
            c.user.unwrap().user,
            Some(pb::user_opt::User::ByName(_))
        ));
        assert!(c.group.is_none());
        let c = chown_opt("app:");
        assert_eq!(c.group.unwrap().user, Some(pb::user_opt::User::ById(0)));
    }
}
