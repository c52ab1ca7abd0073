//! Variable expansion and word splitting, as BuildKit's `shell.Lex` does it.
//!
//! Start with [`Lexer::new`] and [`Lexer::process_word`]. A word goes
//! through one pass that handles quotes (`'…'` literal, `"…"` with `$`
//! expansion and a few escapes), the escape character (`\` or, after
//! `# escape=\``, the backtick) and variables:
//!
//! | form | meaning |
//! |---|---|
//! | `$VAR`, `${VAR}` | value, or empty |
//! | `${VAR:-w}` / `${VAR-w}` | `w` if unset or empty / if unset |
//! | `${VAR:+w}` / `${VAR+w}` | `w` if set and not empty / if set |
//! | `${VAR:?m}` / `${VAR?m}` | error `VAR: m` if unset or empty / if unset |
//! | `${VAR#p}` / `${VAR##p}` | strip shortest / longest prefix matching glob `p` |
//! | `${VAR%p}` / `${VAR%%p}` | strip shortest / longest suffix matching `p` |
//! | `${VAR/p/r}` / `${VAR//p/r}` | replace first / every match of `p` by `r` |
//!
//! Globs know `*`, `?` and escapes of those (no `[…]`), and like BuildKit's
//! regular expressions their wildcards never match a newline. `$1`, `$@`,
//! `$#`… are names like any other (normally unset). `:=`, `:#` and the like
//! are errors. [`Lexer::process_words`] then splits the result on
//! unquoted white space (done for EXPOSE, and internally for heredocs).
//!
//! Which instructions expand at all is decided by the instructions
//! (`Instruction::expand`), not here.
//!
//! One BuildKit oddity is kept on purpose: in `process_words`, the part of a
//! word before a `${VAR<op>…}` (any form with an operator) is lost, because
//! BuildKit shares one word buffer with the nested expansion
//! (`a${X:-b}` splits to `["b"]`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;

use super::golang::quote;

/// Nesting limit for `${…${…}…}`: BuildKit has none, but a hostile
/// Dockerfile must not exhaust the stack.
pub const MAX_EXPANSION_DEPTH: usize = 100;

/// Where variables are looked up.
pub trait Env {
    /// The value of `name`, if set (possibly to the empty string).
    fn get(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

/// Pairs in order; a later pair overrides an earlier one, as in a process
/// environment.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

/// No variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// A failed expansion. The message is BuildKit's, e.g.
/// `failed to process "${X:?}": X: is not allowed to be unset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    message: String,
}

impl ExpandError {
    /// An error with this exact message.
    pub fn new(message: impl Into<String>) -> Self {
        ExpandError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpandError {}

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub result: String,
    /// Variables that were looked up and set.
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and not set (BuildKit's `UndefinedVar`
    /// lint reports these).
    pub unmatched: BTreeSet<String>,
}

/// BuildKit's shell lexer. The flags are BuildKit's, for the few internal
/// uses that need them; [`Lexer::new`] gives the ordinary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    /// The escape character: `\` or `` ` ``.
    pub escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Lexer {
    /// A lexer with `escape` as its escape character.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` (quotes removed, variables substituted).
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        self.process_word_with_matches(word, env).map(|e| e.result)
    }

    /// Expands `word` and reports which variables it used.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ExpandError> {
        let mut sw = ShellWord::new(self, env, word);
        let (result, _) = sw.run(word)?;
        Ok(Expansion {
            result,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }

    /// Like [`Lexer::process_word_with_matches`], but the variables looked
    /// up before a failure are kept: BuildKit's lint rules report them even
    /// when the expansion then fails. The result is empty on failure.
    pub fn process_word_tracked(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> (Expansion, Option<ExpandError>) {
        let mut sw = ShellWord::new(self, env, word);
        let (result, err) = match sw.run(word) {
            Ok((result, _)) => (result, None),
            Err(e) => (String::new(), Some(e)),
        };
        let expansion = Expansion {
            result,
            matched: sw.matched,
            unmatched: sw.unmatched,
        };
        (expansion, err)
    }

    /// Expands `word` and splits it into words on unquoted white space.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        let mut sw = ShellWord::new(self, env, word);
        sw.run(word).map(|(_, words)| words)
    }
}

/// The state of one expansion.
struct ShellWord<'a> {
    lex: &'a Lexer,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    raw_escapes: bool,
    /// The word being built by `process_words`. It is shared by nested
    /// expansions on purpose: BuildKit does so (see the module docs).
    words_buf: String,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// Words being split out of an expansion; the current one lives in the
/// shared `words_buf`.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, buf: &mut String, c: char) {
        if c.is_whitespace() {
            if self.in_word && !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(buf, c);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, c: char) {
        buf.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, buf: &mut String, s: &str) {
        for c in s.chars() {
            self.add_char(buf, c);
        }
    }

    fn add_raw_string(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.words
    }
}

/// Shown for the end of input where BuildKit prints Go's `scanner.EOF` as a
/// character.
const EOF_CHAR: char = '\u{fffd}';

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `unicode.IsLetter` is category L; Unicode "Alphabetic" is a close,
/// slightly larger set (it adds letter numbers and some marks).
fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}

/// Go's `unicode.IsDigit` is category Nd; Rust's `is_numeric` also takes
/// No/Nl (superscripts, fractions), which are therefore excluded for Latin-1.
fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    c.is_numeric() && !matches!(c, '\u{b2}' | '\u{b3}' | '\u{b9}' | '\u{bc}'..='\u{be}')
}

impl<'a> ShellWord<'a> {
    fn new(lex: &'a Lexer, env: &'a dyn Env, word: &str) -> Self {
        let mut chars: Vec<char> = word.chars().collect();
        // Go's text/scanner skips a byte-order mark at the very start.
        if chars.first() == Some(&'\u{feff}') {
            chars.remove(0);
        }
        ShellWord {
            lex,
            env,
            chars,
            pos: 0,
            raw_escapes: lex.raw_escapes,
            words_buf: String::new(),
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn run(&mut self, source: &str) -> Result<(String, Vec<String>), ExpandError> {
        let raw = self.raw_escapes;
        self.stop_on(None, raw)
            .map_err(|e| ExpandError::new(format!("failed to process {}: {e}", quote(source))))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_owned());
                Some(v.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// Processes up to `stop` (consumed) or the end; `stop` must be found
    /// when given.
    fn stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if stop == Some(c) {
                self.next();
                let w = words.finish(&mut self.words_buf);
                return Ok((result, w));
            }
            let quotes = !self.lex.skip_process_quotes;
            match c {
                '$' => {
                    let tmp = self.dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&mut self.words_buf, &tmp);
                }
                '<' => {
                    let tmp = self.possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '\'' if quotes => {
                    let tmp = self.single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                '"' if quotes => {
                    let tmp = self.double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&mut self.words_buf, &tmp);
                }
                _ => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(&mut self.words_buf, c);
                            result.push(c);
                        }
                        // An escape at the very end is dropped.
                        let Some(e) = self.next() else { break };
                        words.add_raw_char(&mut self.words_buf, e);
                        result.push(e);
                    } else {
                        words.add_char(&mut self.words_buf, c);
                        result.push(c);
                    }
                }
            }
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish(&mut self.words_buf)))
    }

    /// `'…'`: everything literal up to the next `'`.
    fn single_quote(&mut self) -> Result<String, String> {
        let mut out = String::new();
        self.next();
        if self.lex.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_owned(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"…"`: `$` expands; the escape character escapes only `"`, `$` and
    /// itself, and stays literal before anything else.
    fn double_quote(&mut self) -> Result<String, String> {
        let mut out = String::new();
        self.next();
        if self.lex.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_owned(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(mut c) => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.next();
                                c = n;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// A `$` reference, the `$` still unread.
    fn dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".to_owned()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".to_owned()),
            Some(_) => {}
        }
        let name = self.name();
        let first = self.next();
        let mut chs = first.unwrap_or(EOF_CHAR).to_string();
        let unsupported = |chs: &str| format!("unsupported modifier ({chs}) in substitution");
        match first {
            Some('}') => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let mut op = first;
                let null_is_unset = first == Some(':');
                if null_is_unset {
                    op = self.next();
                    chs.push(op.unwrap_or(EOF_CHAR));
                }
                let raw = matches!(op, Some('#' | '%'));
                if null_is_unset && raw {
                    return Err(unsupported(&chs));
                }
                let word = self.nested('}', raw, "syntax error: missing '}'")?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let empty = value
                    .as_deref()
                    .is_none_or(|v| null_is_unset && v.is_empty());
                match op {
                    Some('-') => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    Some(c @ ('%' | '#')) => {
                        // One operator character is shortest, two longest.
                        let (pattern, greedy) = match word.strip_prefix(c) {
                            Some(rest) => (rest, true),
                            None => (word.as_str(), false),
                        };
                        let value = value.unwrap_or_default();
                        if c == '%' {
                            trim_suffix(pattern, &value, greedy)
                        } else {
                            trim_prefix(pattern, &value, greedy)
                        }
                    }
                    _ => Err(unsupported(&chs)),
                }
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = self.nested('/', true, "syntax error: missing '/' in ${}")?;
                let replacement = self.nested('}', true, "syntax error: missing '}'")?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    // BuildKit writes a `//` back as a single `/`.
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let glob = Glob::new(&pattern, true)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(if all {
                    glob.replace_all(&value, &replacement)
                } else {
                    glob.replace_first(&value, &replacement)
                })
            }
            _ => Err(unsupported(&chs)),
        }
    }

    /// The word of a `${…}` operator, up to `stop`.
    fn nested(&mut self, stop: char, raw: bool, missing: &str) -> Result<String, String> {
        if self.depth >= MAX_EXPANSION_DEPTH {
            return Err("variable expansions nested too deeply".to_owned());
        }
        self.depth += 1;
        let out = self.stop_on(Some(stop), raw);
        self.depth -= 1;
        match out {
            Ok((w, _)) => Ok(w),
            Err(_) if self.peek().is_none() => Err(missing.to_owned()),
            Err(e) => Err(e),
        }
    }

    /// A variable name: digits, one special parameter, or letters, digits
    /// and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && is_special_param(c) {
                self.next();
                return c.to_string();
            }
            if !is_letter(c) && !is_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }

    /// `<<` and the blanks after it stay together in one word, so
    /// `<<  EOF` is one heredoc word.
    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.next();
        let mut out = "<<".to_owned();
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            out.push(c);
            self.next();
        }
        out
    }
}

/// One element of a glob pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// `*`: any run of characters on one line.
    Star,
    /// `?`: any one character but a newline.
    Any,
    Lit(char),
}

/// A glob as BuildKit turns it into a regular expression, matched with the
/// same (leftmost, then by priority) semantics, in time linear in the
/// pattern times the text.
struct Glob {
    toks: Vec<Tok>,
    greedy: bool,
}

impl Glob {
    fn new(pattern: &str, greedy: bool) -> Result<Glob, String> {
        let mut chars = pattern.chars().peekable();
        if chars.peek() == Some(&'\u{feff}') {
            chars.next();
        }
        let mut toks = Vec::new();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => Tok::Star,
                '?' => Tok::Any,
                '\\' => {
                    // `\}` and `\/` are only there to get past `${…}`.
                    if matches!(chars.peek(), Some('}' | '/')) {
                        continue;
                    }
                    match chars.next() {
                        Some(e @ ('*' | '?' | '\\')) => Tok::Lit(e),
                        other => {
                            return Err(format!(
                                "invalid escape '\\{}'",
                                other.unwrap_or(EOF_CHAR)
                            ));
                        }
                    }
                }
                c => Tok::Lit(c),
            });
        }
        Ok(Glob { toks, greedy })
    }

    /// For every start position, where the match anchored there ends.
    ///
    /// Row by row from the end of the pattern: `next[s]` is where the rest
    /// of the pattern, started at `s`, ends its preferred match. A star takes
    /// the longest (greedy) or shortest stretch, within one line, after which
    /// the rest matches.
    fn anchored_ends(&self, s: &[char]) -> Vec<Option<usize>> {
        let n = s.len();
        let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
        let mut cur: Vec<Option<usize>> = vec![None; n + 1];
        for tok in self.toks.iter().rev() {
            match *tok {
                Tok::Lit(c) => {
                    for i in 0..=n {
                        cur[i] = if i < n && s[i] == c {
                            next[i + 1]
                        } else {
                            None
                        };
                    }
                }
                Tok::Any => {
                    for i in 0..=n {
                        cur[i] = if i < n && s[i] != '\n' {
                            next[i + 1]
                        } else {
                            None
                        };
                    }
                }
                Tok::Star => {
                    let mut best: Option<usize> = None;
                    for i in (0..=n).rev() {
                        // `best` is the stretch end the star prefers from
                        // `i`: the longest or shortest that lets the rest
                        // match, never past a newline.
                        let here = next[i].map(|_| i);
                        best = if i == n || s[i] == '\n' {
                            here
                        } else if self.greedy {
                            best.or(here)
                        } else {
                            here.or(best)
                        };
                        cur[i] = best.and_then(|b| next[b]);
                    }
                }
            }
            std::mem::swap(&mut next, &mut cur);
        }
        next
    }

    fn replace_first(&self, value: &str, replacement: &str) -> String {
        let s: Vec<char> = value.chars().collect();
        let ends = self.anchored_ends(&s);
        match ends.iter().enumerate().find_map(|(a, e)| e.map(|b| (a, b))) {
            Some((a, b)) => {
                let mut out: String = s[..a].iter().collect();
                out.push_str(replacement);
                out.extend(&s[b..]);
                out
            }
            None => value.to_owned(),
        }
    }

    /// Go's `Regexp.ReplaceAllString`: non-overlapping matches left to
    /// right, an empty match right after a match skipped, and `$` in the
    /// replacement a template (`$0` is the match, `$$` a dollar).
    fn replace_all(&self, value: &str, template: &str) -> String {
        let s: Vec<char> = value.chars().collect();
        let n = s.len();
        let ends = self.anchored_ends(&s);
        let mut out = String::new();
        let mut last_end = 0usize;
        let mut search = 0usize;
        while search <= n {
            let Some((a, b)) = (search..=n).find_map(|a| ends[a].map(|b| (a, b))) else {
                break;
            };
            out.extend(&s[last_end..a]);
            if b > last_end || a == 0 {
                let matched: String = s[a..b].iter().collect();
                expand_template(&mut out, template, &matched);
            }
            last_end = b;
            let width = usize::from(search < n);
            if search + width > b {
                search += width;
            } else if search + 1 > b {
                search += 1;
            } else {
                search = b;
            }
        }
        out.extend(&s[last_end..]);
        out
    }
}

/// Go's `Regexp.Expand` for a pattern with no groups: `$0`/`${0}` is the
/// match, `$$` a dollar, any other name empty, and a malformed `$` literal.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (brace, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len = body
            .find(|c: char| !(is_letter(c) || is_digit(c) || c == '_'))
            .unwrap_or(body.len());
        if len == 0 || (brace && !body[len..].starts_with('}')) {
            out.push('$');
            continue;
        }
        let name = &body[..len];
        rest = &body[len + usize::from(brace)..];
        if name == "0" {
            out.push_str(matched);
        }
    }
    out.push_str(rest);
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let glob = Glob::new(pattern, greedy)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let s: Vec<char> = value.chars().collect();
    Ok(match glob.anchored_ends(&s)[0] {
        Some(end) => s[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// Suffixes are prefixes of the reversed value with the reversed pattern
/// (escapes kept in front of what they escape).
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed = reverse_pattern(pattern);
    let rvalue: String = value.chars().rev().collect();
    let out = trim_prefix(&reversed, &rvalue, greedy)?;
    Ok(out.chars().rev().collect())
}

fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; p.len()];
    let last = p.len().saturating_sub(1);
    let mut i = 0;
    while i < p.len() {
        let o = last - i;
        if p[i] == '\\' && i != last {
            out[o - 1] = '\\';
            out[o] = p[i + 1];
            i += 2;
        } else {
            out[o] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn glob_semantics() {
        let g = |p: &str, greedy| Glob::new(p, greedy).unwrap();
        let s: Vec<char> = "xxyy".chars().collect();
        assert_eq!(g("*x*y", false).anchored_ends(&s)[0], Some(3));
        assert_eq!(g("*x*y", true).anchored_ends(&s)[0], Some(4));
        assert_eq!(g("*", false).anchored_ends(&s)[0], Some(0));
        let nl: Vec<char> = "ab\ncd".chars().collect();
        assert_eq!(g("*", true).anchored_ends(&nl)[0], Some(2));
        assert_eq!(g("a?\nc", true).anchored_ends(&nl)[0], Some(4));
        assert!(Glob::new("\\x", true).is_err());
        assert_eq!(
            Glob::new("\\", true).err().unwrap(),
            "invalid escape '\\\u{fffd}'"
        );
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
    }

    #[test]
    fn replace_all_like_go() {
        let g = Glob::new("", true).unwrap();
        assert_eq!(g.replace_all("xxyy", "-"), "-x-x-y-y-");
        let g = Glob::new("x*", true).unwrap();
        assert_eq!(g.replace_all("axxb", "[$0]"), "a[xxb]");
        let g = Glob::new("x", true).unwrap();
        assert_eq!(g.replace_all("axbx", "$$${0}$1$"), "a$x$b$x$");
    }

    #[test]
    fn shared_word_buffer_quirk() {
        let lex = Lexer::new('\\');
        assert_eq!(
            lex.process_words("a${X:-b}c d", &NoEnv).unwrap(),
            vec!["bc", "d"]
        );
        assert_eq!(
            lex.process_words("p ${X} q", &env(&[("X", "1 2")]))
                .unwrap(),
            vec!["p", "1", "2", "q"]
        );
    }
}
