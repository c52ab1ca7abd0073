//! Typed instructions and build stages, from parsed nodes, as BuildKit's
//! `instructions` package makes them. Start with [`instructions`].
//!
//! Each [`Node`] becomes a [`Command`]: its flags are checked against the
//! ones the instruction takes (`unknown flag: --foo (did you mean --from?)`),
//! its arguments counted and shaped. Every FROM starts a [`Stage`]; ARGs
//! before the first FROM are meta args. Variables are not expanded here:
//! the converter does that per instruction with [`Instruction::expand`]
//! (which reproduces which words BuildKit expands) once it knows the
//! variables, and parses RUN mounts fully with [`Run::mounts`].

use std::collections::HashMap;
use std::time::Duration;

use super::golang::{
    NumError, equal_fold_ascii, parse_duration, parse_int, quote, to_lower, to_upper, trim_space,
    with_suggestion,
};
use super::lint::{self, Linter};
use super::mounts::{
    Device, Expander, Mount, MountError, NetworkMode, SecurityMode, parse_device, parse_mount,
};
use super::parser::{LineRange, Node, ParseError, Parsed, chomp_heredoc_content, parse_heredoc};
use super::shell::ExpandError;

/// Every instruction keyword, for suggestions.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A Dockerfile as stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The ARG commands before the first FROM (each an [`Instruction::Arg`]).
    pub meta_args: Vec<Command>,
    /// The stages in order. There may be none; BuildKit's converter then
    /// fails with `dockerfile contains no stages to build`.
    pub stages: Vec<Stage>,
}

/// A build stage: a FROM and the commands up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The image, stage or `scratch` it starts from (not expanded yet).
    pub base_name: String,
    /// `--platform` (not expanded yet), empty when not given.
    pub platform: String,
    /// The FROM keyword as written.
    pub orig_cmd: String,
    /// The FROM line.
    pub source_code: String,
    /// Where the FROM is.
    pub location: LineRange,
    /// Comments above the FROM.
    pub comments: Vec<String>,
    /// The comment above the FROM that starts with the stage name
    /// (`# build compiles things` → `compiles things`).
    pub doc_comment: String,
    /// The stage's commands (never FROM).
    pub commands: Vec<Command>,
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The keyword as written.
    pub name: String,
    /// The instruction's text (the logical line, trimmed).
    pub code: String,
    /// Its lines.
    pub location: LineRange,
    /// Comments directly above it.
    pub comments: Vec<String>,
    /// What it says.
    pub instruction: Instruction,
}

/// What an instruction says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `ADD`.
    Add(Add),
    /// `ARG name[=default] …`.
    Arg(Vec<ArgPair>),
    /// `CMD`.
    Cmd(CmdLine),
    /// `COPY`.
    Copy(Copy),
    /// `ENTRYPOINT`; an empty command line means none (JSON `null`).
    Entrypoint(CmdLine),
    /// `ENV`.
    Env(Vec<KeyValue>),
    /// `EXPOSE`, sorted as BuildKit sorts them. BuildKit expands each with
    /// `process_words` at dispatch time.
    Expose(Vec<String>),
    /// `FROM` (in a [`Dockerfile`], turned into a [`Stage`]).
    From(FromStage),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `LABEL`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER` (deprecated).
    Maintainer(String),
    /// `ONBUILD`: the trigger instruction's text, heredocs included, parsed
    /// again when a build uses the image as a base.
    Onbuild(String),
    /// `RUN`.
    Run(Run),
    /// `SHELL` (JSON form only).
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `USER`.
    User(String),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `WORKDIR`.
    Workdir(String),
}

/// `key=value` of ENV and LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (not expanded yet).
    pub key: String,
    /// The value, quotes still in (they go away when it is expanded).
    pub value: String,
    /// Written in the legacy `ENV key value` form.
    pub no_delim: bool,
}

/// One name of an ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgPair {
    /// The name.
    pub key: String,
    /// The default, if any (quotes still in).
    pub value: Option<String>,
    /// The comment above that starts with the name.
    pub doc_comment: String,
}

/// A FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromStage {
    /// The image or stage.
    pub base_name: String,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// `--platform`, empty when not given.
    pub platform: String,
}

/// A command line of RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdLine {
    /// Exec form: the arguments. Shell form: one string, the whole command.
    pub cmd_line: Vec<String>,
    /// Heredocs the command reads (RUN).
    pub files: Vec<ShellInlineFile>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
}

/// A heredoc of a RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellInlineFile {
    /// The terminator word.
    pub name: String,
    /// The body as written.
    pub data: String,
    /// `<<-`: strip leading tabs.
    pub chomp: bool,
    /// The terminator was unquoted: variables in the body expand.
    pub expand: bool,
}

/// Sources and destination of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// The destination (last argument).
    pub dest_path: String,
    /// The source paths or URLs.
    pub source_paths: Vec<String>,
    /// Heredoc sources: files made from inline text.
    pub source_contents: Vec<SourceContent>,
}

/// An inline file of COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The file name (the heredoc's terminator word).
    pub path: String,
    /// The body (tabs already stripped for `<<-`).
    pub data: String,
    /// Variables in the body expand.
    pub expand: bool,
}

/// ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// What and where.
    pub sources: SourcesAndDest,
    /// `--chown`.
    pub chown: String,
    /// `--chmod`.
    pub chmod: String,
    /// `--link`.
    pub link: bool,
    /// `--exclude` (repeatable).
    pub exclude_patterns: Vec<String>,
    /// `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    /// `--checksum`.
    pub checksum: String,
    /// `--unpack`, when given.
    pub unpack: Option<bool>,
}

/// COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// What and where.
    pub sources: SourcesAndDest,
    /// `--from`.
    pub from: String,
    /// `--chown`.
    pub chown: String,
    /// `--chmod`.
    pub chmod: String,
    /// `--link`.
    pub link: bool,
    /// `--exclude` (repeatable).
    pub exclude_patterns: Vec<String>,
    /// `--parents`.
    pub parents: bool,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub cmd: CmdLine,
    /// `--mount` values as written; see [`Run::mounts`].
    pub mount_specs: Vec<String>,
    /// `--network`.
    pub network: NetworkMode,
    /// `--security`.
    pub security: SecurityMode,
    /// `--device`.
    pub devices: Vec<Device>,
    /// The flags given, in order of first use.
    pub flags_used: Vec<String>,
}

impl Run {
    /// The mounts. With an expander (at dispatch) values are expanded and
    /// fully checked; without, this is the shallow parse-time check.
    pub fn mounts(
        &self,
        mut expander: Option<&mut Expander<'_>>,
    ) -> Result<Vec<Mount>, MountError> {
        self.mount_specs
            .iter()
            .map(|spec| parse_mount(spec, expander.as_deref_mut()))
            .collect()
    }
}

/// HEALTHCHECK, as it goes into the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// `--interval` (zero: inherit).
    pub interval: Duration,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--start-period`.
    pub start_period: Duration,
    /// `--start-interval`.
    pub start_interval: Duration,
    /// `--retries`.
    pub retries: i32,
}

impl Instruction {
    /// Whether BuildKit expands this instruction's words with
    /// [`Instruction::expand`] before dispatching it: ENV, LABEL, ADD, COPY,
    /// WORKDIR, USER, VOLUME, STOPSIGNAL, ARG (its own way) and RUN (its
    /// mounts only, see [`Run::mounts`]). FROM's base name and platform are
    /// expanded with the meta args, EXPOSE with `process_words`; CMD,
    /// ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER and ONBUILD never.
    pub fn expands(&self) -> bool {
        matches!(
            self,
            Instruction::Env(_)
                | Instruction::Label(_)
                | Instruction::Add(_)
                | Instruction::Copy(_)
                | Instruction::Workdir(_)
                | Instruction::User(_)
                | Instruction::Volume(_)
                | Instruction::StopSignal(_)
                | Instruction::Arg(_)
                | Instruction::Run(_)
        )
    }

    /// Expands the words BuildKit expands, in BuildKit's order (which
    /// decides which error is reported first).
    pub fn expand(&mut self, expand: &mut Expander<'_>) -> Result<(), ExpandError> {
        match self {
            Instruction::Env(kvs) | Instruction::Label(kvs) => {
                for kv in kvs {
                    kv.key = expand(&kv.key)?;
                    kv.value = expand(&kv.value)?;
                }
            }
            Instruction::Add(a) => {
                a.chown = expand(&a.chown)?;
                a.chmod = expand(&a.chmod)?;
                a.checksum = expand(&a.checksum)?;
                a.sources.expand(expand)?;
            }
            Instruction::Copy(c) => {
                c.chown = expand(&c.chown)?;
                c.chmod = expand(&c.chmod)?;
                c.sources.expand(expand)?;
            }
            Instruction::Workdir(s) | Instruction::User(s) | Instruction::StopSignal(s) => {
                *s = expand(s)?;
            }
            Instruction::Volume(v) => {
                for s in v {
                    *s = expand(s)?;
                }
            }
            Instruction::Arg(pairs) => {
                for p in pairs {
                    p.key = expand(&p.key)?;
                    if let Some(v) = &mut p.value {
                        *v = expand(v)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Expands the bodies of COPY/ADD heredocs whose terminator was
    /// unquoted. BuildKit does this with a lexer that leaves quotes alone
    /// and always escapes with `\`.
    pub fn expand_raw(&mut self, expand: &mut Expander<'_>) -> Result<(), ExpandError> {
        let sources = match self {
            Instruction::Add(a) => &mut a.sources,
            Instruction::Copy(c) => &mut c.sources,
            _ => return Ok(()),
        };
        for c in &mut sources.source_contents {
            if c.expand {
                c.data = expand(&c.data)?;
            }
        }
        Ok(())
    }
}

impl SourcesAndDest {
    fn expand(&mut self, expand: &mut Expander<'_>) -> Result<(), ExpandError> {
        for p in &mut self.source_paths {
            *p = expand(p)?;
        }
        self.dest_path = expand(&self.dest_path)?;
        Ok(())
    }
}

/// Splits parsed nodes into meta args and stages.
///
/// An instruction error reads `dockerfile parse error on line N: …` and
/// carries the instruction's lines; a command before any FROM fails with
/// `no build stage in current context`.
pub fn instructions(parsed: &Parsed) -> Result<Dockerfile, ParseError> {
    instructions_linted(parsed, &mut Linter::off())
}

/// [`instructions`], running BuildKit's parse-time lint rules node by node
/// (so a node's warnings come before its own parse error).
pub(crate) fn instructions_linted(
    parsed: &Parsed,
    lint: &mut Linter,
) -> Result<Dockerfile, ParseError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &parsed.nodes {
        lint::before_instruction(lint, node);
        let cmd = parse_instruction(node).map_err(|e| {
            ParseError::new(
                format!(
                    "dockerfile parse error on line {}: {}",
                    node.start_line,
                    e.message()
                ),
                e.location(),
            )
        })?;
        lint::after_instruction(lint, node, &cmd.instruction);
        match cmd.instruction {
            Instruction::Arg(_) if stages.is_empty() => meta_args.push(cmd),
            Instruction::From(from) => {
                let doc_comment = doc_comment(&cmd.comments, from.name.as_deref().unwrap_or(""));
                stages.push(Stage {
                    name: from.name,
                    base_name: from.base_name,
                    platform: from.platform,
                    orig_cmd: cmd.name,
                    source_code: cmd.code,
                    location: cmd.location,
                    comments: cmd.comments,
                    doc_comment,
                    commands: Vec::new(),
                });
            }
            _ => match stages.last_mut() {
                Some(stage) => stage.commands.push(cmd),
                None => {
                    return Err(ParseError::new(
                        "no build stage in current context",
                        Some(node.location()),
                    ));
                }
            },
        }
    }
    Ok(Dockerfile { meta_args, stages })
}

/// One node as a typed command (BuildKit's `ParseInstruction`); errors
/// carry the node's lines.
pub fn parse_instruction(node: &Node) -> Result<Command, ParseError> {
    let instruction =
        instruction_of(node).map_err(|message| ParseError::new(message, Some(node.location())))?;
    Ok(Command {
        name: node.value.clone(),
        code: trim_space(&node.original).to_owned(),
        location: node.location(),
        comments: node.comments.clone(),
        instruction,
    })
}

/// BuildKit's `nodeArgs`: an ONBUILD's arguments are its trigger's keyword
/// and arguments.
fn node_args(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = node;
    loop {
        match &n.trigger {
            Some(t) => {
                out.push(t.value.clone());
                n = t;
            }
            None => {
                out.extend(n.args.iter().cloned());
                return out;
            }
        }
    }
}

fn instruction_of(node: &Node) -> Result<Instruction, String> {
    let args = node_args(node);
    let mut flags = FlagSet::new(&node.flags);
    Ok(match to_lower(&node.value).as_str() {
        "env" => {
            flags.parse()?;
            Instruction::Env(key_values(&args, "ENV")?)
        }
        "maintainer" => {
            exactly_one(&args, "MAINTAINER")?;
            flags.parse()?;
            Instruction::Maintainer(args[0].clone())
        }
        "label" => {
            flags.parse()?;
            Instruction::Label(key_values(&args, "LABEL")?)
        }
        "add" => Instruction::Add(add(node, &args, flags)?),
        "copy" => Instruction::Copy(copy(node, &args, flags)?),
        "from" => {
            let name = stage_name(&args)?;
            flags.string("platform", "");
            flags.parse()?;
            Instruction::From(FromStage {
                base_name: args[0].clone(),
                name,
                platform: flags.value("platform").to_owned(),
            })
        }
        "onbuild" => Instruction::Onbuild(onbuild(node, &args, flags)?),
        "workdir" => {
            exactly_one(&args, "WORKDIR")?;
            flags.parse()?;
            Instruction::Workdir(args[0].clone())
        }
        "run" => Instruction::Run(run(node, &args, flags)?),
        "cmd" => {
            flags.parse()?;
            Instruction::Cmd(cmd_line(node, &args))
        }
        "healthcheck" => Instruction::Healthcheck(healthcheck(node, &args, flags)?),
        "entrypoint" => {
            flags.parse()?;
            Instruction::Entrypoint(cmd_line(node, &args))
        }
        "expose" => {
            at_least_one(&args, "EXPOSE")?;
            flags.parse()?;
            let mut ports = args;
            ports.sort();
            Instruction::Expose(ports)
        }
        "user" => {
            exactly_one(&args, "USER")?;
            flags.parse()?;
            Instruction::User(args[0].clone())
        }
        "volume" => {
            at_least_one(&args, "VOLUME")?;
            flags.parse()?;
            let mut volumes = Vec::with_capacity(args.len());
            for v in &args {
                let v = trim_space(v);
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".to_owned());
                }
                volumes.push(v.to_owned());
            }
            Instruction::Volume(volumes)
        }
        // BuildKit checks no flags for STOPSIGNAL and ARG.
        "stopsignal" => {
            exactly_one(&args, "STOPSIGNAL")?;
            Instruction::StopSignal(args[0].clone())
        }
        "arg" => Instruction::Arg(arg_pairs(node, &args)?),
        "shell" => {
            flags.parse()?;
            let shell = json_args(&args, node.json);
            if shell.is_empty() {
                return Err(at_least_one_msg("SHELL"));
            }
            if !node.json {
                return Err("SHELL requires the arguments to be in JSON form".to_owned());
            }
            Instruction::Shell(shell)
        }
        _ => {
            return Err(with_suggestion(
                format!("unknown instruction: {}", node.value),
                &node.value,
                INSTRUCTIONS,
                false,
            ));
        }
    })
}

fn at_least_one_msg(cmd: &str) -> String {
    format!("{cmd} requires at least one argument")
}

fn at_least_one(args: &[String], cmd: &str) -> Result<(), String> {
    if args.is_empty() {
        return Err(at_least_one_msg(cmd));
    }
    Ok(())
}

fn exactly_one(args: &[String], cmd: &str) -> Result<(), String> {
    if args.len() != 1 {
        return Err(format!("{cmd} requires exactly one argument"));
    }
    Ok(())
}

fn no_destination(args: &[String], cmd: &str) -> Result<(), String> {
    if args.len() < 2 {
        return Err(format!(
            "{cmd} requires at least two arguments, but only one was provided. Destination could not be determined"
        ));
    }
    Ok(())
}

/// ENV and LABEL arguments come as `key, value, separator` triples.
fn key_values(args: &[String], cmd: &str) -> Result<Vec<KeyValue>, String> {
    at_least_one(args, cmd)?;
    if !args.len().is_multiple_of(3) {
        return Err(format!("Bad input to {cmd}, too many arguments"));
    }
    args.chunks(3)
        .map(|t| {
            if t[0].is_empty() {
                return Err(format!("{cmd} names can not be blank"));
            }
            Ok(KeyValue {
                key: t[0].clone(),
                value: t[1].clone(),
                no_delim: t[2].is_empty(),
            })
        })
        .collect()
}

/// BuildKit's `getDocComment`: the first comment that starts with `name `.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_owned()
}

fn arg_pairs(node: &Node, args: &[String]) -> Result<Vec<ArgPair>, String> {
    at_least_one(args, "ARG")?;
    args.iter()
        .map(|a| {
            let (key, value) = match a.split_once('=') {
                Some((k, v)) => {
                    if k.is_empty() {
                        return Err("ARG names can not be blank".to_owned());
                    }
                    (k.to_owned(), Some(v.to_owned()))
                }
                None => (a.clone(), None),
            };
            let doc_comment = doc_comment(&node.comments, &key);
            Ok(ArgPair {
                key,
                value,
                doc_comment,
            })
        })
        .collect()
}

/// `FROM image [AS name]`.
fn stage_name(args: &[String]) -> Result<Option<String>, String> {
    if args.len() == 3 && equal_fold_ascii(&args[1], "as") {
        let name = to_lower(&args[2]);
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "invalid name for build stage: {}, name can't start with a number or contain symbols",
                quote(&args[2])
            ));
        }
        return Ok(Some(name));
    }
    if args.len() != 1 {
        return Err("FROM requires either one or three arguments".to_owned());
    }
    Ok(None)
}

/// BuildKit's `handleJSONArgs`: exec form as is, shell form as one string.
fn json_args(args: &[String], json: bool) -> Vec<String> {
    if args.is_empty() {
        return Vec::new();
    }
    if json {
        return args.to_vec();
    }
    vec![args.join(" ")]
}

fn cmd_line(node: &Node, args: &[String]) -> CmdLine {
    CmdLine {
        cmd_line: json_args(args, node.json),
        files: node
            .heredocs
            .iter()
            .map(|h| ShellInlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
                expand: h.expand,
            })
            .collect(),
        prepend_shell: !node.json,
    }
}

fn sources_and_dest(node: &Node, args: &[String], cmd: &str) -> Result<SourcesAndDest, String> {
    let (dest, srcs) = match args.split_last() {
        Some(x) => x,
        None => return Err(format!("{cmd} requires at least two arguments")),
    };
    if let Ok(Some(_)) = parse_heredoc(dest) {
        return Err(format!("{cmd} cannot accept a heredoc as a destination"));
    }
    let by_name: HashMap<&str, &str> = node
        .heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.content.as_str()))
        .collect();
    let mut out = SourcesAndDest {
        dest_path: dest.clone(),
        source_paths: Vec::new(),
        source_contents: Vec::new(),
    };
    for src in srcs {
        match parse_heredoc(src) {
            Ok(Some(h)) => {
                let content = by_name.get(h.name.as_str()).copied().unwrap_or_default();
                let data = if h.chomp {
                    chomp_heredoc_content(content)
                } else {
                    content.to_owned()
                };
                out.source_contents.push(SourceContent {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            _ => out.source_paths.push(src.clone()),
        }
    }
    Ok(out)
}

fn add(node: &Node, args: &[String], mut flags: FlagSet<'_>) -> Result<Add, String> {
    no_destination(args, "ADD")?;
    flags.string("chown", "");
    flags.string("chmod", "");
    flags.boolean("link");
    flags.boolean("keep-git-dir");
    flags.string("checksum", "");
    flags.boolean("unpack");
    flags.strings("exclude");
    flags.parse()?;
    let sources = sources_and_dest(node, args, "ADD")?;
    let optional = |name| flags.is_used(name).then(|| flags.truth(name));
    Ok(Add {
        sources,
        chown: flags.value("chown").to_owned(),
        chmod: flags.value("chmod").to_owned(),
        link: flags.truth("link"),
        exclude_patterns: flags.values("exclude"),
        keep_git_dir: optional("keep-git-dir"),
        checksum: flags.value("checksum").to_owned(),
        unpack: optional("unpack"),
    })
}

fn copy(node: &Node, args: &[String], mut flags: FlagSet<'_>) -> Result<Copy, String> {
    no_destination(args, "COPY")?;
    flags.string("chown", "");
    flags.string("from", "");
    flags.string("chmod", "");
    flags.boolean("link");
    flags.strings("exclude");
    flags.boolean("parents");
    flags.parse()?;
    let sources = sources_and_dest(node, args, "COPY")?;
    Ok(Copy {
        sources,
        from: flags.value("from").to_owned(),
        chown: flags.value("chown").to_owned(),
        chmod: flags.value("chmod").to_owned(),
        link: flags.truth("link"),
        exclude_patterns: flags.values("exclude"),
        parents: flags.truth("parents"),
    })
}

fn onbuild(node: &Node, args: &[String], mut flags: FlagSet<'_>) -> Result<String, String> {
    at_least_one(args, "ONBUILD")?;
    flags.parse()?;
    let trigger = to_upper(trim_space(&args[0]));
    match trigger.as_str() {
        "ONBUILD" => {
            return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_owned());
        }
        "MAINTAINER" | "FROM" => {
            return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"));
        }
        _ => {}
    }
    // The line without the leading keyword (`(?i)^\s*ONBUILD\s*`).
    let go_space = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let line = node.original.trim_start_matches(go_space);
    let mut expression = match line.get(..7) {
        Some(kw) if kw.eq_ignore_ascii_case("onbuild") => {
            line[7..].trim_start_matches(go_space).to_owned()
        }
        _ => node.original.clone(),
    };
    for h in &node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    Ok(expression)
}

fn run(node: &Node, args: &[String], mut flags: FlagSet<'_>) -> Result<Run, String> {
    flags.strings("device");
    flags.strings("mount");
    flags.string("network", "default");
    flags.string("security", "sandbox");
    flags.parse()?;
    let cmd = cmd_line(node, args);
    let devices = flags
        .values("device")
        .iter()
        .map(|d| parse_device(d).map_err(|e| e.0))
        .collect::<Result<Vec<_>, _>>()?;
    let mount_specs = flags.values("mount");
    for spec in &mount_specs {
        parse_mount(spec, None).map_err(|e| e.0)?;
    }
    let network = NetworkMode::parse(flags.value("network"))?;
    let security = SecurityMode::parse(flags.value("security"))?;
    Ok(Run {
        cmd,
        mount_specs,
        network,
        security,
        devices,
        flags_used: flags.used.iter().map(|s| (*s).to_owned()).collect(),
    })
}

fn healthcheck(
    node: &Node,
    args: &[String],
    mut flags: FlagSet<'_>,
) -> Result<Healthcheck, String> {
    at_least_one(args, "HEALTHCHECK")?;
    let typ = to_upper(&args[0]);
    let rest = &args[1..];
    if typ == "NONE" {
        // Flags are not looked at for NONE.
        if !rest.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".to_owned());
        }
        return Ok(Healthcheck {
            test: vec![typ],
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            start_period: Duration::ZERO,
            start_interval: Duration::ZERO,
            retries: 0,
        });
    }
    for name in [
        "interval",
        "timeout",
        "start-period",
        "start-interval",
        "retries",
    ] {
        flags.string(name, "");
    }
    flags.parse()?;
    let test = match typ.as_str() {
        "CMD" => {
            let cmd = json_args(rest, node.json);
            if cmd.is_empty() {
                return Err("Missing command after HEALTHCHECK CMD".to_owned());
            }
            let kind = if node.json { "CMD" } else { "CMD-SHELL" };
            std::iter::once(kind.to_owned()).chain(cmd).collect()
        }
        _ => {
            return Err(format!(
                "Unknown type {} in HEALTHCHECK (try CMD)",
                quote(&typ)
            ));
        }
    };
    let interval = opt_interval(&flags, "interval")?;
    let timeout = opt_interval(&flags, "timeout")?;
    let start_period = opt_interval(&flags, "start-period")?;
    let start_interval = opt_interval(&flags, "start-interval")?;
    let retries = match flags.value("retries") {
        "" => 0,
        v => {
            let n = parse_int(v, 32).map_err(|e: NumError| e.message("ParseInt", v))?;
            if n < 0 {
                return Err(format!("--retries cannot be negative ({n})"));
            }
            // parse_int checked the 32-bit range.
            i32::try_from(n).unwrap_or(i32::MAX)
        }
    };
    Ok(Healthcheck {
        test,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    })
}

/// A HEALTHCHECK duration: empty or zero means unset; else at least 1ms.
fn opt_interval(flags: &FlagSet<'_>, name: &str) -> Result<Duration, String> {
    let v = flags.value(name);
    if v.is_empty() {
        return Ok(Duration::ZERO);
    }
    let ns = parse_duration(v)?;
    if ns == 0 {
        return Ok(Duration::ZERO);
    }
    if ns < 1_000_000 {
        return Err(format!("Interval {} cannot be less than 1ms", quote(name)));
    }
    Ok(Duration::from_nanos(ns.unsigned_abs()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

#[derive(Debug)]
struct Flag {
    name: &'static str,
    kind: FlagKind,
    value: String,
    values: Vec<String>,
}

/// BuildKit's `BFlags`: the flags an instruction takes, then the given
/// ones checked against them.
#[derive(Debug)]
struct FlagSet<'a> {
    given: &'a [String],
    defs: Vec<Flag>,
    used: Vec<&'static str>,
}

impl<'a> FlagSet<'a> {
    fn new(given: &'a [String]) -> Self {
        FlagSet {
            given,
            defs: Vec::new(),
            used: Vec::new(),
        }
    }

    fn define(&mut self, name: &'static str, kind: FlagKind, default: &str) {
        self.defs.push(Flag {
            name,
            kind,
            value: default.to_owned(),
            values: Vec::new(),
        });
    }

    fn boolean(&mut self, name: &'static str) {
        self.define(name, FlagKind::Bool, "false");
    }

    fn string(&mut self, name: &'static str, default: &str) {
        self.define(name, FlagKind::String, default);
    }

    fn strings(&mut self, name: &'static str) {
        self.define(name, FlagKind::Strings, "");
    }

    fn parse(&mut self) -> Result<(), String> {
        for a in self.given {
            if a == "--" {
                return Ok(());
            }
            let Some(body) = a.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {a}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let Some(def) = self.defs.iter_mut().find(|d| d.name == name) else {
                let names: Vec<&str> = self.defs.iter().map(|d| d.name).collect();
                return Err(with_suggestion(
                    format!("unknown flag: {flag_name}"),
                    name,
                    names,
                    true,
                ));
            };
            if self.used.contains(&def.name) {
                if def.kind != FlagKind::Strings {
                    return Err(format!("duplicate flag specified: {flag_name}"));
                }
            } else {
                self.used.push(def.name);
            }
            let missing = || format!("missing a value on flag: {flag_name}");
            match def.kind {
                FlagKind::Bool => {
                    let v = value.unwrap_or("");
                    if value == Some("") {
                        return Err(missing());
                    }
                    def.value = match to_lower(v).as_str() {
                        "true" | "" => "true".to_owned(),
                        "false" => "false".to_owned(),
                        _ => {
                            return Err(format!(
                                "expecting boolean value for flag {flag_name}, not: {v}"
                            ));
                        }
                    };
                }
                FlagKind::String => def.value = value.ok_or_else(missing)?.to_owned(),
                FlagKind::Strings => def.values.push(value.ok_or_else(missing)?.to_owned()),
            }
        }
        Ok(())
    }

    fn def(&self, name: &str) -> Option<&Flag> {
        self.defs.iter().find(|d| d.name == name)
    }

    fn value(&self, name: &str) -> &str {
        self.def(name).map_or("", |d| d.value.as_str())
    }

    fn truth(&self, name: &str) -> bool {
        self.value(name) == "true"
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.def(name).map(|d| d.values.clone()).unwrap_or_default()
    }

    fn is_used(&self, name: &str) -> bool {
        self.used.contains(&name)
    }
}
