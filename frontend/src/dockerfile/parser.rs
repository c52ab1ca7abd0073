//! From Dockerfile bytes to a list of instruction nodes, as BuildKit's
//! `parser.Parse` does it. Start with [`parse`].
//!
//! The file is read line by line. Parser directives come first (see
//! [`super::directives`]); `# escape=` changes the escape character for the
//! rest of the file. Comments and blank lines between instructions are
//! skipped, and comments directly above an instruction are kept with it.
//! A line ending in the escape character continues on the next one; blank
//! continuation lines are dropped with a warning, comment lines inside a
//! continuation are dropped silently, and continuation lines keep their
//! leading white space. Each logical line is split into the instruction
//! keyword, its `--flags` and its arguments, which are parsed as the
//! instruction requires (JSON exec form, words, `key=value` pairs…). RUN,
//! COPY and ADD (also behind ONBUILD) may then take heredocs from the lines
//! that follow.
//!
//! Nothing is validated beyond the syntax: unknown instructions and bad
//! flags are [`mod@super::instructions`]' business.

use std::fmt;

use super::directives::{Directive, DirectiveParser};
use super::golang::{quote, to_lower, trim_space};
use super::json::{Top, top_level};
use super::shell::{Lexer, NoEnv};

/// BuildKit reads lines with Go's `bufio.Scanner` and its 64 KiB buffer: a
/// line (without its newline) longer than this ends the file with an error.
pub const MAX_LINE: usize = 65535;

/// How deep `ONBUILD ONBUILD …` is parsed. BuildKit parses any depth (and
/// then rejects anything past the first ONBUILD); deeper levels are kept
/// unparsed here so hostile input cannot exhaust the stack.
pub const MAX_ONBUILD_DEPTH: usize = 16;

/// Lines of the Dockerfile, 1-based and inclusive.
///
/// BuildKit's source maps list every line of the range separately. A few
/// errors carry BuildKit's count of the lines read so far instead: for a bad
/// directive or a too-long line that is one less than the line's number, for
/// `file with no instructions` the number of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRange {
    /// First line.
    pub start: usize,
    /// Last line (never before `start`).
    pub end: usize,
}

impl LineRange {
    /// BuildKit's `toRanges(start, end)`: an `end` before `start` means the
    /// single line `start`.
    pub fn new(start: usize, end: usize) -> Self {
        LineRange {
            start,
            end: end.max(start),
        }
    }
}

/// A parse failure: BuildKit's message and, when it has one, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    message: String,
    location: Option<LineRange>,
}

impl ParseError {
    /// An error with this exact message.
    pub fn new(message: impl Into<String>, location: Option<LineRange>) -> Self {
        ParseError {
            message: message.into(),
            location,
        }
    }

    pub(crate) fn at(message: impl Into<String>, start: usize, end: usize) -> Self {
        ParseError::new(message, Some(LineRange::new(start, end)))
    }

    /// The message, as BuildKit words it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The lines it is about.
    pub fn location(&self) -> Option<LineRange> {
        self.location
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// A heredoc attached to RUN, COPY or ADD (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator word, quotes removed: also the file name COPY uses.
    pub name: String,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when none.
    pub file_descriptor: u64,
    /// Whether variables in the body expand: false when any part of the
    /// terminator word was quoted.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body (when used) and from
    /// the terminator line (when reading).
    pub chomp: bool,
    /// The body, every line with its newline, as written.
    pub content: String,
}

/// One instruction as parsed, before its meaning is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword as written (`RUN`, `run`, `FOO`…).
    pub value: String,
    /// `--name[=value]` words before the arguments, quotes and escapes
    /// processed.
    pub flags: Vec<String>,
    /// The arguments, in BuildKit's per-instruction layout: JSON elements,
    /// whitespace-separated words, the raw rest of the line as one string, or
    /// `key, value, separator` triples for ENV and LABEL (separator `=`, or
    /// empty for the legacy `ENV key value`).
    pub args: Vec<String>,
    /// The instruction behind `ONBUILD`.
    pub trigger: Option<Box<Node>>,
    /// Arguments were in JSON (exec) form.
    pub json: bool,
    /// Heredocs, in order.
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined), without heredoc bodies.
    pub original: String,
    /// First line of the instruction (1-based).
    pub start_line: usize,
    /// Last line, including heredoc bodies.
    pub end_line: usize,
    /// Comments directly above, without `#`.
    pub comments: Vec<String>,
}

impl Node {
    /// The lines this instruction spans.
    pub fn location(&self) -> LineRange {
        LineRange::new(self.start_line, self.end_line)
    }

    /// BuildKit's `Node.Dump` s-expression, e.g.
    /// `run ["--network=none"] "echo hi"` (useful in tests).
    pub fn dump(&self) -> String {
        let mut out = to_lower(&self.value);
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| quote(f)).collect();
            out.push_str(&format!(" [{}]", flags.join(" ")));
        }
        for a in &self.args {
            out.push(' ');
            out.push_str(&quote(a));
        }
        if let Some(t) = &self.trigger {
            out.push_str(&format!(" ({})", t.dump()));
        }
        trim_space(&out).to_owned()
    }

    fn can_contain_heredoc(&self) -> bool {
        let node = match &self.trigger {
            Some(t) if to_lower(&self.value) == "onbuild" => t,
            _ => self,
        };
        matches!(to_lower(&node.value).as_str(), "run" | "copy" | "add") && !node.json
    }
}

/// A non-fatal finding of the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// One-line text, e.g. `Empty continuation line found in: RUN a b`.
    pub short: String,
    /// Longer explanation.
    pub detail: String,
    /// Documentation link (BuildKit's lint rule `NoEmptyContinuation`).
    pub url: String,
    /// The line it is reported on (the instruction's last line).
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The instructions, in order.
    pub nodes: Vec<Node>,
    /// The parser directives at the top, as the parser saw them.
    pub directives: Vec<Directive>,
    /// The escape character in force: `\` or `` ` ``.
    pub escape: char,
    /// Warnings (empty continuation lines).
    pub warnings: Vec<Warning>,
}

impl Parsed {
    /// BuildKit's dump of the whole file: one parenthesized line per node.
    pub fn dump(&self) -> String {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("({})", n.dump()))
            .collect();
        lines.join("\n")
    }
}

/// Lines with their newline, stopping at a line too long for BuildKit.
struct Lines<'a> {
    rest: &'a [u8],
    too_long: bool,
}

impl Iterator for Lines<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.rest.is_empty() || self.too_long {
            return None;
        }
        let len = self
            .rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(len);
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        if content.len() > MAX_LINE {
            self.too_long = true;
            return None;
        }
        self.rest = rest;
        Some(String::from_utf8_lossy(line).into_owned())
    }
}

/// The per-file state lines are read with.
struct Reader {
    escape: char,
    directives: DirectiveParser,
    found: Vec<Directive>,
}

impl Reader {
    /// BuildKit's `processLine`: newline trimmed, leading white space too
    /// for the first line of an instruction, directives recognized (and
    /// applied), comments emptied. Returns the line and whether it was a
    /// directive.
    fn process_line(&mut self, raw: &str, strip_left: bool) -> Result<(String, bool), String> {
        let mut token = trim_newline(raw);
        if strip_left {
            token = token.trim_start();
        }
        let mut directive = false;
        if let Some(d) = self.directives.parse_line(token)? {
            if d.name == "escape" {
                self.escape = match d.value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    v => {
                        return Err(format!("invalid escape token '{v}' does not match ` or \\"));
                    }
                };
            }
            self.found.push(d);
            directive = true;
        }
        let out = if is_comment(token) { "" } else { token };
        Ok((out.to_owned(), directive))
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// A line ending in the escape character (and blanks) continues: the
/// escape is removed. An escaped escape does not continue.
fn trim_continuation(line: String, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape) {
        if before.is_empty() {
            return (String::new(), false);
        }
        if !before.ends_with(escape) {
            return (before.to_owned(), false);
        }
    }
    (line, true)
}

/// Parses a Dockerfile.
///
/// Errors are BuildKit's: `the Dockerfile cannot be empty` for no bytes at
/// all (BuildKit's frontend checks this before parsing), `file with no
/// instructions`, `unterminated heredoc`, a bad `# escape=`, JSON arrays of
/// non-strings, `ENV`/`LABEL` syntax errors, `dockerfile line greater than
/// max allowed size of 65535`. Input that is not UTF-8 is read lossily.
pub fn parse(text: &[u8]) -> Result<Parsed, ParseError> {
    if text.is_empty() {
        return Err(ParseError::new("the Dockerfile cannot be empty", None));
    }
    let mut lines = Lines {
        rest: text,
        too_long: false,
    };
    let mut rd = Reader {
        escape: '\\',
        directives: DirectiveParser::new("#", 0),
        found: Vec::new(),
    };
    let mut current = 0usize;
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();

    while let Some(mut raw) = lines.next() {
        if current == 0 && raw.starts_with('\u{feff}') {
            raw.remove(0);
        }
        if is_comment(&raw) {
            // BuildKit drops the first byte, which is `#` only when the
            // comment is not indented.
            let mut chars = raw.chars();
            chars.next();
            let comment = trim_space(chars.as_str());
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_owned());
            }
        }
        let (first, directive) = rd
            .process_line(&raw, true)
            .map_err(|e| ParseError::at(e, current, 0))?;
        if directive {
            comments.pop();
        }
        current += 1;
        let start = current;
        let (mut line, mut eol) = trim_continuation(first, rd.escape);
        if eol && line.is_empty() {
            continue;
        }

        let mut empty_continuation = false;
        while !eol {
            let Some(raw) = lines.next() else { break };
            let (next, _) = rd
                .process_line(&raw, false)
                .map_err(|e| ParseError::at(e, current, 0))?;
            current += 1;
            if is_comment(&raw) {
                continue;
            }
            if trim_newline(&next).trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, end) = trim_continuation(next, rd.escape);
            line.push_str(&part);
            eol = end;
        }

        if empty_continuation {
            warnings.push(Warning {
                short: format!("Empty continuation line found in: {line}"),
                detail: "Empty continuation lines will become errors in a future release"
                    .to_owned(),
                url: "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/".to_owned(),
                line: current,
            });
        }

        let mut node = node_from_line(&line, rd.escape, std::mem::take(&mut comments), 0)
            .map_err(|e| ParseError::at(e, start, current))?;

        if node.can_contain_heredoc() && line.contains("<<") {
            let heredocs =
                heredocs_from_line(&line).map_err(|e| ParseError::at(e, start, current))?;
            for mut heredoc in heredocs {
                let mut content = String::new();
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current += 1;
                    let mut candidate = trim_newline(&raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(&raw);
                }
                if !terminated {
                    return Err(ParseError::at("unterminated heredoc", start, current));
                }
                heredoc.content = content;
                node.heredocs.push(heredoc);
            }
        }

        node.start_line = start;
        node.end_line = current;
        nodes.push(node);
    }

    if nodes.is_empty() {
        return Err(ParseError::at("file with no instructions", current, 0));
    }
    if lines.too_long {
        return Err(ParseError::at(
            format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
            current,
            0,
        ));
    }
    Ok(Parsed {
        nodes,
        directives: rd.found,
        escape: rd.escape,
        warnings,
    })
}

/// The arguments of one instruction, as its line parser lays them out.
#[derive(Default)]
struct Args {
    args: Vec<String>,
    json: bool,
    trigger: Option<Box<Node>>,
}

impl Args {
    fn list(args: Vec<String>) -> Self {
        Args {
            args,
            ..Args::default()
        }
    }
}

/// BuildKit's `newNodeFromLine`: split and dispatch on the keyword.
fn node_from_line(
    line: &str,
    escape: char,
    comments: Vec<String>,
    depth: usize,
) -> Result<Node, String> {
    let (cmd, flags, rest) = split_command(line, escape);
    let parsed = match to_lower(cmd).as_str() {
        "add" | "copy" | "volume" => maybe_json_to_list(&rest)?,
        "arg" => Args::list(words(&rest, escape)),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(&rest)?,
        "env" => Args::list(name_val(&rest, "ENV", escape)?),
        "label" => Args::list(name_val(&rest, "LABEL", escape)?),
        "expose" | "from" => Args::list(whitespace_delimited(&rest)),
        "healthcheck" => health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => Args::list(if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.clone()]
        }),
        "onbuild" if depth < MAX_ONBUILD_DEPTH => {
            if rest.is_empty() {
                Args::default()
            } else {
                let child = node_from_line(&rest, escape, Vec::new(), depth + 1)?;
                Args {
                    trigger: Some(Box::new(child)),
                    ..Args::default()
                }
            }
        }
        // Unknown instructions are reported later; BuildKit keeps one empty
        // argument for them.
        _ => Args::list(vec![String::new()]),
    };
    Ok(Node {
        value: cmd.to_owned(),
        flags,
        args: parsed.args,
        trigger: parsed.trigger,
        json: parsed.json,
        heredocs: Vec::new(),
        original: line.to_owned(),
        start_line: 0,
        end_line: 0,
        comments,
    })
}

/// Go's regexp `[\t\v\f\r ]+`, the separator of keywords and plain words
/// (no newline, no Unicode spaces).
fn is_sep(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits on runs of [`is_sep`]; at most `limit` pieces when given.
fn split_ws(s: &str, limit: Option<usize>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if limit.is_some_and(|l| out.len() + 1 >= l) {
            out.push(rest);
            return out;
        }
        match rest.find(is_sep) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = rest[i..].trim_start_matches(is_sep);
            }
            None => {
                out.push(rest);
                return out;
            }
        }
    }
}

/// Keyword, flags and the rest of the line.
fn split_command(line: &str, escape: char) -> (&str, Vec<String>, String) {
    let parts = split_ws(trim_space(line), Some(2));
    let cmd = parts[0];
    match parts.get(1) {
        Some(rest) => {
            let (args, flags) = extract_builder_flags(rest, escape);
            (cmd, flags, trim_space(args).to_owned())
        }
        None => (cmd, Vec::new(), String::new()),
    }
}

/// Leading words that start with `--` are flags (quotes and escapes in them
/// processed); a lone `--` ends them.
///
/// BuildKit reads these byte by byte, which garbles non-ASCII flag values;
/// here they are read as characters.
fn extract_builder_flags(line: &str, escape: char) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        let Some(&(at, c)) = chars.get(i) else {
            if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            return ("", words);
        };
        match phase {
            Phase::Spaces => {
                if c.is_whitespace() {
                    i += 1;
                    continue;
                }
                if c != '-' || chars.get(i + 1).map(|p| p.1) != Some('-') {
                    return (&line[at..], words);
                }
                phase = Phase::Word;
                continue;
            }
            Phase::Word => {
                if c.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[at..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                } else if c == '\'' || c == '"' {
                    phase = Phase::Quote(c);
                    blank_ok = true;
                } else if c == escape {
                    // An escape at the end is dropped.
                    if let Some(&(_, e)) = chars.get(i + 1) {
                        word.push(e);
                        i += 1;
                    }
                } else {
                    word.push(c);
                }
            }
            Phase::Quote(q) => {
                if c == q {
                    phase = Phase::Word;
                } else if c == escape {
                    match chars.get(i + 1) {
                        Some(&(_, e)) => {
                            word.push(e);
                            i += 1;
                        }
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(c);
                }
            }
        }
        i += 1;
    }
}

/// Words separated by white space, quotes and escapes kept (they are
/// processed when the value is expanded).
fn words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    // None: between words; Some(None): in a word; Some(Some(q)): in quotes.
    let mut phase: Option<Option<char>> = None;
    let mut i = 0;
    while i <= chars.len() {
        let at_end = i == chars.len();
        let c = chars.get(i).copied().unwrap_or(' ');
        if phase.is_none() {
            if at_end {
                break;
            }
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Some(None);
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            break;
        }
        match phase {
            Some(None) => {
                if c.is_whitespace() {
                    phase = None;
                    if blank_ok || !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    i += 1;
                    continue;
                }
                let mut c = c;
                if c == '\'' || c == '"' {
                    phase = Some(Some(c));
                    blank_ok = true;
                }
                if c == escape {
                    if i + 1 == chars.len() {
                        i += 1;
                        continue;
                    }
                    // Kept with what it escapes, even a quote.
                    word.push(c);
                    i += 1;
                    c = chars[i];
                }
                word.push(c);
            }
            Some(Some(q)) => {
                let mut c = c;
                if c == q {
                    phase = Some(None);
                }
                // Single quotes cannot escape anything.
                if c == escape && q != '\'' {
                    if i + 1 == chars.len() {
                        phase = Some(None);
                        i += 1;
                        continue;
                    }
                    word.push(c);
                    i += 1;
                    c = chars[i];
                }
                word.push(c);
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// ENV and LABEL: `key=value …`, or the legacy `key value` (the rest of the
/// line is the value). Flattened to `key, value, "="|""` triples.
fn name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, String> {
    let ws = words(rest, escape);
    let Some(first) = ws.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let parts = split_ws(rest, Some(2));
        if parts.len() < 2 {
            return Err(format!("{key} must have two arguments"));
        }
        return Ok(vec![
            parts[0].to_owned(),
            parts[1].to_owned(),
            String::new(),
        ]);
    }
    let mut out = Vec::with_capacity(ws.len() * 3);
    for w in &ws {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                quote(w)
            ));
        };
        out.extend([k.to_owned(), v.to_owned(), "=".to_owned()]);
    }
    Ok(out)
}

fn whitespace_delimited(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_ws(rest, None)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

/// `Some` when `rest` is a JSON array of strings; an error when it is a
/// JSON array of anything else; `None` when it is not a JSON array.
fn json_array(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match top_level(rest) {
        Some(Top::Array(items)) => items
            .into_iter()
            .collect::<Option<Vec<String>>>()
            .map(Some)
            .ok_or_else(|| NOT_STRINGS.to_owned()),
        _ => Ok(None),
    }
}

/// RUN, CMD, ENTRYPOINT, SHELL: a JSON array, else the whole rest as one
/// shell-form argument.
fn maybe_json(rest: &str) -> Result<Args, String> {
    if rest.is_empty() {
        return Ok(Args::default());
    }
    Ok(match json_array(rest)? {
        Some(args) => Args {
            args,
            json: true,
            trigger: None,
        },
        None => Args::list(vec![rest.to_owned()]),
    })
}

/// COPY, ADD, VOLUME: a JSON array, else whitespace-separated words.
fn maybe_json_to_list(rest: &str) -> Result<Args, String> {
    Ok(match json_array(rest)? {
        Some(args) => Args {
            args,
            json: true,
            trigger: None,
        },
        None => Args::list(whitespace_delimited(rest)),
    })
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`…), then a command as for CMD.
fn health_config(rest: &str) -> Result<Args, String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Args::default());
    }
    let typ = &rest[..sep];
    let cmd = maybe_json(rest[sep..].trim_start())?;
    let mut args = vec![typ.to_owned()];
    args.extend(cmd.args);
    Ok(Args {
        args,
        json: cmd.json,
        trigger: None,
    })
}

/// Every heredoc word of a line, lexed as BuildKit does (backslash escapes
/// whatever the escape directive says). A line that does not lex has none.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lex = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let Ok(words) = lex.process_words(line, &NoEnv) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            out.push(h);
        }
    }
    Ok(out)
}

/// Reads `[fd]<<[-]WORD` (BuildKit's `ParseHeredoc`): `None` when `src` is
/// not a heredoc word. Quoting any part of WORD turns expansion off.
pub fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    let digits = src.len() - src.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = src[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    // Out-of-range descriptors saturate, as Go's ParseUint does.
    let fd = if digits == 0 {
        0
    } else {
        src[..digits].parse::<u64>().unwrap_or(u64::MAX)
    };
    let mut lex = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let words = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != 1 {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let name = words.into_iter().next().unwrap_or_default();
    let expand = quotes(&name) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name,
        file_descriptor: fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// BuildKit's `ChompHeredocContent`: leading tabs off every line.
pub fn chomp_heredoc_content(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_flags() {
        let (rest, flags) = extract_builder_flags("--a=1 --b=\"x y\" -- --c d", '\\');
        assert_eq!(flags, vec!["--a=1", "--b=x y"]);
        assert_eq!(rest, " --c d");
        let (rest, flags) = extract_builder_flags("--a='' b", '\\');
        assert_eq!((rest, flags), ("b", vec!["--a=".to_owned()]));
        let (rest, flags) = extract_builder_flags("--x\\ y z", '\\');
        assert_eq!((rest, flags), ("z", vec!["--x y".to_owned()]));
        let (rest, flags) = extract_builder_flags("--only", '\\');
        assert_eq!((rest, flags), ("", vec!["--only".to_owned()]));
    }

    #[test]
    fn word_splitting_keeps_quotes() {
        assert_eq!(words("foo\\ bar", '\\'), vec!["foo\\ bar"]);
        assert_eq!(
            words("foo bar 'abc xyz'", '\\'),
            vec!["foo", "bar", "'abc xyz'"]
        );
        assert_eq!(words("a=\"b c\" d=''", '\\'), vec!["a=\"b c\"", "d=''"]);
        assert_eq!(
            words("föo bàr \"âbc xÿz\"", '\\'),
            vec!["föo", "bàr", "\"âbc xÿz\""]
        );
        assert_eq!(words("x\\", '\\'), vec!["x"]);
    }

    #[test]
    fn heredoc_words() {
        for ok in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            assert_eq!(parse_heredoc(ok).unwrap().unwrap().name, "EOF", "{ok}");
        }
        for bad in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(bad).is_err(), "{bad}");
        }
        for not in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert!(parse_heredoc(not).unwrap().is_none(), "{not}");
        }
        let h = parse_heredoc("3<<-'E'OF").unwrap().unwrap();
        assert_eq!(
            (h.file_descriptor, h.chomp, h.expand, h.name.as_str()),
            (3, true, false, "EOF")
        );
        assert_eq!(
            chomp_heredoc_content("\thello\n\t\tworld\n"),
            "hello\nworld\n"
        );
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(
            trim_continuation("a \\ ".into(), '\\'),
            ("a ".into(), false)
        );
        assert_eq!(trim_continuation("\\".into(), '\\'), ("".into(), false));
        assert_eq!(
            trim_continuation("a\\\\".into(), '\\'),
            ("a\\\\".into(), true)
        );
        assert_eq!(trim_continuation("a`".into(), '`'), ("a".into(), false));
        assert_eq!(trim_continuation("a\\".into(), '`'), ("a\\".into(), true));
    }
}
