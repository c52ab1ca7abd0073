//! Parser directives: `# syntax=…`, `# escape=…`, `# check=…`.
//!
//! Directives are comments of the form `# key=value` at the very top of a
//! Dockerfile. The first line that is not one (an instruction, a blank line,
//! any other comment, an unknown key) ends them for good. Keys are
//! case-insensitive; each may appear once.
//!
//! There are two readers, as in BuildKit. The parser proper
//! ([`super::parse`]) applies `escape` while it reads and reports the
//! directives it saw. Before parsing, the frontend looks for `syntax` (to
//! hand the build to another frontend image) and `check` (lint settings) with
//! [`detect_syntax`] and [`parse_directive`], which skip a `#!` line and, for
//! `syntax` only, also accept `//syntax=…` and a JSON document with a
//! `"syntax"` member. [`CheckOptions::parse`] reads the `check` value.

use super::golang::{parse_bool, quote};
use super::json::{Top, top_level};
use super::parser::MAX_LINE;

/// The directive keys BuildKit knows; any other key ends the directives.
const VALID: [&str; 3] = ["syntax", "escape", "check"];

/// One parser directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The key, lowercased: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// The 1-based line it is on.
    pub line: usize,
}

/// Reads directives one line at a time, with BuildKit's quirks.
#[derive(Debug)]
pub(crate) struct DirectiveParser {
    line: usize,
    comment: &'static str,
    seen: Vec<String>,
    done: bool,
}

impl DirectiveParser {
    pub(crate) fn new(comment: &'static str, first_line: usize) -> Self {
        DirectiveParser {
            line: first_line,
            comment,
            seen: Vec::new(),
            done: false,
        }
    }

    /// Looks at the next line; `Ok(None)` once directives have ended or when
    /// this line ends them. A repeated key is an error.
    pub(crate) fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix(self.comment) else {
            self.done = true;
            return Ok(None);
        };
        let Some((key, value)) = split_directive(rest.trim_start()) else {
            self.done = true;
            return Ok(None);
        };
        let key = key.to_ascii_lowercase();
        if !VALID.contains(&key.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        self.seen.push(key.clone());
        Ok(Some(Directive {
            name: key,
            value: value.to_owned(),
            line: self.line,
        }))
    }

    /// Every directive of `text`, stopping at the first line that is not one
    /// (or at a repeated key, keeping what came before).
    fn parse_all(&mut self, text: &str) -> Vec<Directive> {
        let mut out = Vec::new();
        for line in scan_lines(text) {
            // bufio.Scanner gives up on a line longer than its buffer.
            if self.done || line.len() > MAX_LINE {
                break;
            }
            match self.parse_line(line.strip_suffix('\r').unwrap_or(line)) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        out
    }
}

/// Go's regular expression `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`, where
/// `\s` is `[\t\n\f\r ]`.
fn split_directive(s: &str) -> Option<(&str, &str)> {
    let is_ws = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let first = s.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let key_len = s
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    let (key, rest) = s.split_at(key_len);
    let rest = rest.trim_start_matches(is_ws).strip_prefix('=')?;
    let value = rest.trim_matches(is_ws);
    if value.contains('\n') {
        return None;
    }
    if !value.is_empty() {
        return Some((key, value));
    }
    // An all-blank value still matches: the lazy group takes the last
    // blank character.
    let last = rest.chars().next_back()?;
    Some((key, &rest[rest.len() - last.len_utf8()..]))
}

/// Lines as Go's `bufio.ScanLines` finds them, without their `\n`.
fn scan_lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let empty = text.is_empty();
    body.split('\n').filter(move |_| !empty)
}

fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A `syntax` (or other) directive found before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDirective {
    /// The value up to its first space: the frontend image reference.
    pub name: String,
    /// The whole value.
    pub cmdline: String,
    /// 1-based line; for the JSON form, 0 (or 1 after a `#!` line).
    pub line: usize,
}

/// BuildKit's `DetectSyntax`: the `syntax` directive in `#`, `//` or JSON
/// form, after an optional BOM and `#!` line.
pub fn detect_syntax(text: &[u8]) -> Option<FoundDirective> {
    find_directive("syntax", text, true)
}

/// BuildKit's `ParseDirective`: the `key` directive in `#` form only (this
/// is how the frontend reads `check`).
pub fn parse_directive(key: &str, text: &[u8]) -> Option<FoundDirective> {
    find_directive(key, text, false)
}

fn find_directive(key: &str, text: &[u8], any_format: bool) -> Option<FoundDirective> {
    let text = String::from_utf8_lossy(text);
    let mut dt = strip_bom(&text);
    let mut first_line = 0;
    // A `#!` first line is skipped (with nothing after it, nothing is left).
    if dt.starts_with("#!") {
        dt = dt.split_once('\n').map_or("", |(_, rest)| rest);
        first_line = 1;
    }
    let found = |d: Directive| {
        let name = d.value.split(' ').next().unwrap_or_default().to_owned();
        FoundDirective {
            name,
            cmdline: d.value,
            line: d.line,
        }
    };
    let prefixes: &[&'static str] = if any_format { &["#", "//"] } else { &["#"] };
    for prefix in prefixes {
        let directives = DirectiveParser::new(prefix, first_line).parse_all(dt);
        if let Some(d) = directives.into_iter().find(|d| d.name == key) {
            return Some(found(d));
        }
    }
    if !any_format {
        return None;
    }
    // `{"syntax": "…"}`: the whole document is JSON; the last member of
    // that name counts, and it must be a string.
    let Some(Top::Object(members)) = top_level(dt) else {
        return None;
    };
    let (_, value) = members.into_iter().rev().find(|(k, _)| k == key)?;
    let value = value?;
    Some(FoundDirective {
        name: value.clone(),
        cmdline: value,
        line: first_line,
    })
}

/// The lint settings of `# check=…` (BuildKit's `linter.ParseLintOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// `skip=all`.
    pub skip_all: bool,
    /// `skip=RuleA,RuleB`.
    pub skip_rules: Vec<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// `experimental=RuleA,…`.
    pub experimental_rules: Vec<String>,
    /// `error=true`: lint warnings fail the build.
    pub error: bool,
}

impl CheckOptions {
    /// Parses `skip=…;error=…;experimental=…`. BuildKit prefixes errors
    /// with `failed to parse check options: `.
    ///
    /// BuildKit feeds this the directive value only up to its first space
    /// ([`FoundDirective::name`]).
    pub fn parse(value: &str) -> Result<CheckOptions, String> {
        let value = value.trim();
        let mut opts = CheckOptions::default();
        if value.is_empty() {
            return Ok(opts);
        }
        let list = |v: &str| v.split(',').map(|r| r.trim().to_owned()).collect();
        for part in value.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {}", quote(part)));
            };
            match k.trim() {
                "skip" => match v.trim() {
                    "all" => opts.skip_all = true,
                    v => opts.skip_rules = list(v),
                },
                "experimental" => match v.trim() {
                    "all" => opts.experimental_all = true,
                    v => opts.experimental_rules = list(v),
                },
                "error" => {
                    let v = v.trim();
                    opts.error = parse_bool(v).ok_or_else(|| {
                        format!(
                            "failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax",
                            quote(part),
                            quote(v)
                        )
                    })?;
                }
                k => return Err(format!("invalid check option {}", quote(k))),
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_lines() {
        let mut p = DirectiveParser::new("#", 0);
        let d = p
            .parse_line("# Syntax = docker/dockerfile:1 ")
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.name.as_str(), d.value.as_str(), d.line),
            ("syntax", "docker/dockerfile:1", 1)
        );
        assert_eq!(
            p.parse_line("#syntax=x").unwrap_err(),
            "only one syntax parser directive can be used"
        );
        assert!(p.parse_line("# escape=`").unwrap().is_some());
        assert!(p.parse_line("# hello").unwrap().is_none());
        assert!(p.parse_line("# check=skip=all").unwrap().is_none());
    }

    #[test]
    fn blank_value_keeps_last_blank() {
        assert_eq!(split_directive("escape= "), Some(("escape", " ")));
        assert_eq!(split_directive("escape=\t "), Some(("escape", " ")));
        assert_eq!(split_directive("escape="), None);
        assert_eq!(split_directive("escape = \\ "), Some(("escape", "\\")));
    }

    #[test]
    fn detect() {
        let d =
            detect_syntax(b"# syntax = dockerfile:experimental // opts\nFROM busybox\n").unwrap();
        assert_eq!(d.name, "dockerfile:experimental");
        assert_eq!(d.cmdline, "dockerfile:experimental // opts");
        assert_eq!(d.line, 1);
        assert_eq!(detect_syntax(b"#!/bin/sh\n# syntax = x\n").unwrap().line, 2);
        assert!(detect_syntax(b"#!/bin/sh\n\n# syntax = x\n").is_none());
        assert_eq!(
            detect_syntax(b"//syntax=foo\n//key=value").unwrap().name,
            "foo"
        );
        assert_eq!(
            detect_syntax(b"{\"syntax\": \"foo\", \"bar\": [\"abc\"]}")
                .unwrap()
                .name,
            "foo"
        );
        assert!(detect_syntax(b"{\"syntax\": \"foo\"").is_none());
        assert_eq!(
            detect_syntax(b"\xef\xbb\xbf# syntax = my\nFROM a")
                .unwrap()
                .name,
            "my"
        );
        assert!(parse_directive("check", b"//check=skip=all").is_none());
        assert_eq!(
            parse_directive("check", b"#check = skip=all // opts\n")
                .unwrap()
                .name,
            "skip=all"
        );
    }

    #[test]
    fn check_options() {
        let o = CheckOptions::parse("skip=A, B;error=true").unwrap();
        assert_eq!(o.skip_rules, vec!["A", "B"]);
        assert!(o.error);
        assert!(CheckOptions::parse("skip=all").unwrap().skip_all);
        assert_eq!(
            CheckOptions::parse("foo").unwrap_err(),
            "invalid check option \"foo\""
        );
        assert_eq!(
            CheckOptions::parse("bar=1").unwrap_err(),
            "invalid check option \"bar\""
        );
        assert_eq!(
            CheckOptions::parse("error=maybe").unwrap_err(),
            "failed to parse check option \"error=maybe\": strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }
}
