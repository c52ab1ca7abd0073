//! `.dockerignore`-style path patterns with exactly the semantics of Docker's
//! `moby/patternmatcher` (what BuildKit's client filters a build context
//! with), and reading an ignore file as `moby/patternmatcher/ignorefile` does.
//!
//! Start at [`PatternMatcher::new`], then [`PatternMatcher::matches`] (a path
//! is matched when it or any of its parent directories matches, later
//! patterns overriding earlier ones, `!` re-including). The walker uses
//! [`PatternMatcher::matches_with_parent`], which threads per-pattern results
//! down the tree the way fsutil does, and [`PatternMatcher::literal_only`] /
//! [`PatternMatcher::names_path_inside`] to decide whether an unmatched or
//! excluded directory must still be descended into. [`read_ignore_file`]
//! turns a `.dockerignore` into the pattern list.
//!
//! How one pattern matches, as upstream does it: the pattern is trimmed and
//! cleaned like a Go path, then classified as a literal (compared whole),
//! `prefix**` (string prefix), `**suffix` (string suffix), or else translated
//! into a Go regular expression (`*` → `[^/]*`, `?` → `[^/]`, `**/` →
//! `(.*/)?`, `.+()$` escaped, everything else passed through). Go's regexp
//! engine then runs that text unchanged, so its oddities are user-visible:
//! `\d` is a digit class, `[[:alpha:]]` a POSIX class, a `*` inside `[...]`
//! lands inside the class, and `|`, `{n}` are alternation and counting
//! (upstream meant to escape those but its table drops them). Rather than
//! approximate all that with a glob library, module `re` parses and runs
//! exactly the part of Go's regexp syntax the translation can emit. This was
//! checked against the real patternmatcher and Go's `filepath.Match` on
//! about a million random pattern/path pairs, with no difference.
//!
//! Differences from upstream, on purpose: every pattern is fully checked in
//! [`PatternMatcher::new`] (upstream checks Go glob syntax there but compiles
//! the regexp lazily, on first use, so a broken `!` pattern that is never
//! reached goes unnoticed); Unicode classes (`\pL`, `\p{Greek}`) are refused
//! as pattern errors; a pattern whose program would exceed about a million
//! instructions (thousands of `{1000}`) is refused; Windows path rules are
//! not implemented.

use crate::FsError;

/// An ordered list of patterns; later patterns override earlier ones.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Cleaned, without the leading `!`.
    text: String,
    exclusion: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(re::Program),
}

/// Per-pattern results for a directory, handed to its children by
/// [`PatternMatcher::matches_with_parent`]. The default value means "no
/// information about the parent": the child's parent directories are then
/// checked directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// Characters that make a pattern more than a literal path, for fsutil's
/// directory-skipping shortcut.
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

impl PatternMatcher {
    /// Parse patterns as `patternmatcher.New` does: each is trimmed (blank
    /// ones dropped), cleaned like a Go path, and a leading `!` marks an
    /// exception that re-includes what earlier patterns matched. A leading
    /// `/` is *not* removed here ([`read_ignore_file`] does that).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FsError> {
        let mut out = PatternMatcher::default();
        for raw in patterns {
            let raw = raw.as_ref();
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let bad = |reason: &str| FsError::Pattern {
                pattern: raw.to_string(),
                reason: reason.to_string(),
            };
            // Cleaning comes first, so `!a/../b` loses its `!` exactly as
            // upstream's does.
            let cleaned = clean(trimmed);
            let (exclusion, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(bad("illegal exclusion pattern: \"!\"")),
                Some(rest) => (true, rest.to_string()),
                None => (false, cleaned),
            };
            if glob_match(&text, ".").is_err() {
                return Err(bad("syntax error in pattern"));
            }
            let kind = compile(&text).map_err(|reason| bad(&reason))?;
            out.exclusions |= exclusion;
            out.patterns.push(Pattern {
                text,
                exclusion,
                kind,
            });
        }
        Ok(out)
    }

    /// Whether `path` (relative, slash-separated) is matched: by the last
    /// pattern that matches it or one of its parent directories
    /// (`MatchesOrParentMatches`). `docs` matches `docs/a/b`; `docs` then
    /// `!docs/README.md` leaves `docs/README.md` unmatched.
    pub fn matches(&self, path: &str) -> bool {
        let parent = go_dir(path);
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an already matched path, nor an
            // exception an unmatched one.
            if pattern.exclusion != matched {
                continue;
            }
            let hit = pattern.is_match(path)
                || (parent != "." && parent_prefixes(&parent).any(|dir| pattern.is_match(dir)));
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Match `path` given its parent directory's [`MatchInfo`]
    /// (`MatchesUsingParentResults`, what fsutil's walker uses): a pattern
    /// the parent matched counts as matching without being re-checked, and
    /// parent directories are not re-checked. With the default `MatchInfo`
    /// (top level, or no information) this behaves like [`Self::matches`].
    /// Returns the result and the info to hand to `path`'s children.
    ///
    /// This is not always the same as [`Self::matches`]: a pattern skipped
    /// for the parent (an exception while nothing matched yet) is not
    /// carried down. The walker must use this one to list what fsutil lists.
    pub fn matches_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        // Info from another matcher is useless; treat it as none rather than
        // failing as upstream does.
        let known = parent.parent_matched.len() == self.patterns.len() && !self.patterns.is_empty();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut parent_dir: Option<String> = None;
        let mut matched = false;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = known && parent.parent_matched[i];
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.is_match(path);
                if !hit && !known {
                    let dir = parent_dir.get_or_insert_with(|| go_dir(path));
                    if dir != "." {
                        hit = parent_prefixes(dir).any(|d| pattern.is_match(d));
                    }
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether any pattern is an exception (`!`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True when every pattern of the given kind (exceptions if `exclusion`,
    /// plain patterns otherwise) is a literal path once a trailing `/**` or
    /// `/*` is dropped. Only then can [`Self::names_path_inside`] tell that
    /// nothing under a directory can match, which lets the walker skip it.
    pub fn literal_only(&self, exclusion: bool) -> bool {
        self.patterns
            .iter()
            .filter(|p| p.exclusion == exclusion)
            .all(|p| !p.without_trailing_glob().contains(PATTERN_CHARS))
    }

    /// Whether some pattern of the given kind, less a trailing glob, is
    /// `dir` itself or a path inside it (a string-prefix test, as fsutil
    /// does it): `a/b/*` and `a/b` both name something in `a/b`.
    pub fn names_path_inside(&self, dir: &str, exclusion: bool) -> bool {
        self.patterns
            .iter()
            .filter(|p| p.exclusion == exclusion)
            .any(|p| {
                let pat = p.without_trailing_glob();
                pat.strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is an exception (`!pattern`).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The pattern with one trailing `/**` and then one trailing `/*`
    /// removed (fsutil's `patternWithoutTrailingGlob`).
    pub fn without_trailing_glob(&self) -> &str {
        let s = self.text.strip_suffix("/**").unwrap_or(&self.text);
        s.strip_suffix("/*").unwrap_or(s)
    }

    fn is_match(&self, path: &str) -> bool {
        // Byte-wise, as upstream: a BOM skipped during translation can leave
        // `text` with bytes before the `**`, which must not split a char.
        let (text, bytes) = (self.text.as_bytes(), path.as_bytes());
        match &self.kind {
            Kind::Exact => bytes == text,
            Kind::Prefix => bytes.starts_with(&text[..text.len().saturating_sub(2)]),
            Kind::Suffix => {
                let suffix = text.get(2..).unwrap_or_default();
                // `**/foo` also matches `foo` itself.
                bytes.ends_with(suffix) || (suffix.first() == Some(&b'/') && bytes == &suffix[1..])
            }
            Kind::Regex(program) => program.is_match(path),
        }
    }
}

/// The prefixes of a cleaned relative directory path at each `/`, then the
/// whole path: `a/b/c` gives `a`, `a/b`, `a/b/c`. Upstream splits and
/// re-joins; for a cleaned path that is the same thing.
fn parent_prefixes(dir: &str) -> impl Iterator<Item = &str> {
    dir.match_indices('/')
        .map(|(i, _)| &dir[..i])
        .chain(std::iter::once(dir))
}

/// Patterns from an ignore file, as `ignorefile.ReadAll` reads them: a UTF-8
/// BOM is dropped, lines starting with `#` are comments, lines are trimmed
/// and blank ones dropped, and each pattern (after a `!`, itself trimmed
/// off and put back) is cleaned with a leading `/` removed, so `/foo` and
/// `foo` are the same. A lone `!` is kept; [`PatternMatcher::new`] rejects
/// it.
pub fn read_ignore_file(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let line = line.strip_suffix('\r').unwrap_or(line);
        // Comments are recognised before trimming: " # x" is a pattern.
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

/// Go's `path.Clean`: the shortest equivalent path, lexically.
pub(crate) fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let body = parts.join("/");
    if rooted {
        format!("/{body}")
    } else if body.is_empty() {
        ".".to_string()
    } else {
        body
    }
}

/// Go's `path.Dir`: everything before the last `/`, cleaned; `.` when there
/// is no `/`.
pub(crate) fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_string(),
    }
}

/// A malformed Go glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

/// Go's `filepath.Match` on Unix: `*` (not crossing `/`), `?`, `[...]` with
/// `^` negation and ranges, `\` escapes. Like Go, a syntax error is reported
/// only as far as matching got (a failed match does not look further), which
/// is what `patternmatcher.New` relies on when it checks a pattern against
/// `"."`.
///
/// Works on bytes: file names need not be UTF-8 (an invalid byte is one
/// U+FFFD, as in Go).
pub fn glob_match_bytes(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` takes the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        let here = match_chunk(chunk, name)?;
        if let Some(t) = here {
            // The last chunk must use up the name; otherwise the star may
            // still get it there.
            if t.is_empty() || !pattern.is_empty() {
                name = t;
                continue;
            }
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'chunks;
                }
                i += 1;
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// [`glob_match_bytes`] for text.
pub(crate) fn glob_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    glob_match_bytes(pattern.as_bytes(), name.as_bytes())
}

/// Split off leading stars and the run of non-star pattern up to the next
/// star outside brackets.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let [b'*', rest @ ..] = pattern {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Match a star-free chunk at the start of `s`, returning what is left of
/// `s`. After a mismatch the rest of the chunk is still parsed, for syntax
/// errors.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (rune, n) = decode(s);
                    r = rune;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut in_class = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        in_class = true;
                    }
                    ranges += 1;
                }
                if in_class == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let mut literal = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&next) => literal = next,
                        None => return Err(BadPattern),
                    }
                }
                if !failed {
                    if s[0] != literal {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// One possibly escaped character of a bracket expression; there must be
/// more pattern after it.
fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = decode(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `utf8.DecodeRune`: (U+FFFD, 1) for a bad byte, (U+FFFD, 0) at the end.
fn decode(s: &[u8]) -> (u32, usize) {
    let len = match s.first() {
        None => return (0xFFFD, 0),
        Some(0..=0x7F) => 1,
        Some(0xC2..=0xDF) => 2,
        Some(0xE0..=0xEF) => 3,
        Some(0xF0..=0xF4) => 4,
        Some(_) => return (0xFFFD, 1),
    };
    s.get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.chars().next())
        .map_or((0xFFFD, 1), |c| (c as u32, len))
}

/// Classify a cleaned pattern and, unless it is a plain literal, prefix or
/// suffix, translate it into a Go regular expression and compile that.
fn compile(text: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut detected = Detected::Exact;
    let mut regex = String::from("^");
    let mut chars = text.chars().peekable();
    // Upstream scans with text/scanner, which drops a leading BOM.
    if chars.peek() == Some(&'\u{FEFF}') {
        chars.next();
    }
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is the same as `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    // A trailing `**` matches everything below, as in
                    // .gitignore.
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        regex.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    regex.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                detected = Detected::Regex;
            }
            // Upstream means to escape `.+()|{}$`, but its lookup table is
            // one byte per bit position and loses every character above 63,
            // so `|`, `{` and `}` reach the regexp raw: `a|b*` is an
            // alternation and `x{2}` a repeat count. Users can see that, so
            // it is kept.
            '.' | '+' | '(' | ')' | '$' => {
                regex.push('\\');
                regex.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    regex.push('\\');
                    regex.push(next);
                    detected = Detected::Regex;
                }
                // Kept as is, so it escapes the closing `$` below.
                None => regex.push('\\'),
            },
            '[' | ']' => {
                regex.push(ch);
                detected = Detected::Regex;
            }
            _ => regex.push(ch),
        }
        first = false;
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix,
        Detected::Suffix => Kind::Suffix,
        Detected::Regex => {
            regex.push('$');
            Kind::Regex(re::Program::new(&regex)?)
        }
    })
}

/// The part of Go's regexp syntax (flags `Perl`: one-line `^`/`$`, `.` not
/// matching `\n`, negated classes matching `\n`, ASCII `\d\s\w\b`, `\Q…\E`,
/// `\A`, `\z`) that the pattern translation can produce, parsed with Go's
/// rules and errors and run as a Thompson NFA (linear time, no
/// backtracking). Matching is a search, as Go's `MatchString`: the
/// translation anchors with `^…$`, but a pattern can defeat that (`a\` ends
/// in `\$`), and then a match anywhere counts.
mod re {
    #[derive(Debug, Clone)]
    pub(super) struct Program {
        insts: Vec<Inst>,
    }

    #[derive(Debug, Clone)]
    enum Inst {
        Char(char),
        Class(Class),
        AnyNotNl,
        Split(usize, usize),
        Jmp(usize),
        Look(Look),
        Match,
    }

    #[derive(Debug, Clone, Copy)]
    enum Look {
        Begin,
        End,
        WordBoundary,
        NotWordBoundary,
    }

    #[derive(Debug, Clone, Default)]
    struct Class {
        ranges: Vec<(u32, u32)>,
        negated: bool,
    }

    impl Class {
        fn contains(&self, c: char) -> bool {
            let c = c as u32;
            self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
        }
    }

    #[derive(Debug, Clone)]
    enum Node {
        Char(char),
        Class(Class),
        AnyNotNl,
        Look(Look),
        Concat(Vec<Node>),
        Alt(Vec<Node>),
        Star(Box<Node>),
        Plus(Box<Node>),
        Quest(Box<Node>),
        /// `{min,max}`; `max` `None` for `{min,}`.
        Repeat(Box<Node>, u32, Option<u32>),
    }

    /// Upper bound on program size, so a pattern full of `{1000}` cannot
    /// exhaust memory (Go's own limit is about three times this).
    const MAX_INSTS: usize = 1 << 20;

    const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
    const SPACE: &[(u32, u32)] = &[(0x9, 0xa), (0xc, 0xd), (0x20, 0x20)];
    const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5a), (0x5f, 0x5f), (0x61, 0x7a)];

    fn perl_class(c: char) -> Option<(&'static [(u32, u32)], bool)> {
        Some(match c {
            'd' => (DIGIT, false),
            'D' => (DIGIT, true),
            's' => (SPACE, false),
            'S' => (SPACE, true),
            'w' => (WORD, false),
            'W' => (WORD, true),
            _ => return None,
        })
    }

    fn posix_class(name: &str) -> Option<(&'static [(u32, u32)], bool)> {
        let (negated, name) = match name.strip_prefix('^') {
            Some(n) => (true, n),
            None => (false, name),
        };
        let ranges: &'static [(u32, u32)] = match name {
            "alnum" => &[(0x30, 0x39), (0x41, 0x5a), (0x61, 0x7a)],
            "alpha" => &[(0x41, 0x5a), (0x61, 0x7a)],
            "ascii" => &[(0x0, 0x7f)],
            "blank" => &[(0x9, 0x9), (0x20, 0x20)],
            "cntrl" => &[(0x0, 0x1f), (0x7f, 0x7f)],
            "digit" => DIGIT,
            "graph" => &[(0x21, 0x7e)],
            "lower" => &[(0x61, 0x7a)],
            "print" => &[(0x20, 0x7e)],
            "punct" => &[(0x21, 0x2f), (0x3a, 0x40), (0x5b, 0x60), (0x7b, 0x7e)],
            "space" => &[(0x9, 0xd), (0x20, 0x20)],
            "upper" => &[(0x41, 0x5a)],
            "word" => WORD,
            "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
            _ => return None,
        };
        Some((ranges, negated))
    }

    /// Add `group` (or its complement) to a class's ranges.
    fn add_group(ranges: &mut Vec<(u32, u32)>, group: &[(u32, u32)], negated: bool) {
        if !negated {
            ranges.extend_from_slice(group);
            return;
        }
        let mut next = 0u32;
        for &(lo, hi) in group {
            if lo > next {
                ranges.push((next, lo - 1));
            }
            next = hi + 1;
        }
        ranges.push((next, char::MAX as u32));
    }

    fn is_word(c: Option<&char>) -> bool {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
    }

    /// A literal node for a code point; one no string can hold (a
    /// surrogate) matches nothing.
    fn literal(r: u32) -> Node {
        match char::from_u32(r) {
            Some(c) => Node::Char(c),
            None => Node::Class(Class::default()),
        }
    }

    impl Program {
        pub(super) fn new(regex: &str) -> Result<Self, String> {
            let node = parse(&regex.chars().collect::<Vec<_>>())?;
            let mut insts = Vec::new();
            emit(&node, &mut insts)?;
            insts.push(Inst::Match);
            Ok(Program { insts })
        }

        pub(super) fn is_match(&self, text: &str) -> bool {
            let chars: Vec<char> = text.chars().collect();
            let mut current = Threads::new(self.insts.len());
            let mut next = Threads::new(self.insts.len());
            let mut stack = Vec::new();
            for pos in 0..=chars.len() {
                // A new thread at every position: an unanchored search.
                if self.add(&mut current, &mut stack, 0, pos, &chars) {
                    return true;
                }
                let Some(&c) = chars.get(pos) else { break };
                next.clear();
                for k in 0..current.dense.len() {
                    let pc = current.dense[k];
                    let step = match &self.insts[pc] {
                        Inst::Char(want) => *want == c,
                        Inst::Class(class) => class.contains(c),
                        Inst::AnyNotNl => c != '\n',
                        _ => false,
                    };
                    if step && self.add(&mut next, &mut stack, pc + 1, pos + 1, &chars) {
                        return true;
                    }
                }
                std::mem::swap(&mut current, &mut next);
            }
            false
        }

        /// Follow empty transitions from `pc` at `pos`; true if the match
        /// state is reached.
        fn add(
            &self,
            threads: &mut Threads,
            stack: &mut Vec<usize>,
            pc: usize,
            pos: usize,
            chars: &[char],
        ) -> bool {
            stack.clear();
            stack.push(pc);
            while let Some(pc) = stack.pop() {
                if !threads.insert(pc) {
                    continue;
                }
                match &self.insts[pc] {
                    Inst::Jmp(to) => stack.push(*to),
                    Inst::Split(a, b) => {
                        stack.push(*b);
                        stack.push(*a);
                    }
                    Inst::Look(look) => {
                        let before = pos.checked_sub(1).and_then(|p| chars.get(p));
                        let after = chars.get(pos);
                        let holds = match look {
                            Look::Begin => pos == 0,
                            Look::End => pos == chars.len(),
                            Look::WordBoundary => is_word(before) != is_word(after),
                            Look::NotWordBoundary => is_word(before) == is_word(after),
                        };
                        if holds {
                            stack.push(pc + 1);
                        }
                    }
                    Inst::Match => return true,
                    Inst::Char(_) | Inst::Class(_) | Inst::AnyNotNl => {}
                }
            }
            false
        }
    }

    /// A set of instruction indexes with insertion order and O(1) clear.
    struct Threads {
        dense: Vec<usize>,
        member: Vec<bool>,
    }

    impl Threads {
        fn new(n: usize) -> Self {
            Threads {
                dense: Vec::with_capacity(n),
                member: vec![false; n],
            }
        }

        fn insert(&mut self, pc: usize) -> bool {
            if self.member[pc] {
                return false;
            }
            self.member[pc] = true;
            self.dense.push(pc);
            true
        }

        fn clear(&mut self) {
            for &pc in &self.dense {
                self.member[pc] = false;
            }
            self.dense.clear();
        }
    }

    fn emit(node: &Node, insts: &mut Vec<Inst>) -> Result<(), String> {
        if insts.len() > MAX_INSTS {
            return Err("pattern is too large".into());
        }
        match node {
            Node::Char(c) => insts.push(Inst::Char(*c)),
            Node::Class(class) => insts.push(Inst::Class(class.clone())),
            Node::AnyNotNl => insts.push(Inst::AnyNotNl),
            Node::Look(look) => insts.push(Inst::Look(*look)),
            Node::Concat(nodes) => {
                for n in nodes {
                    emit(n, insts)?;
                }
            }
            Node::Alt(alts) => {
                let mut jumps = Vec::new();
                for (k, alt) in alts.iter().enumerate() {
                    if k + 1 == alts.len() {
                        emit(alt, insts)?;
                        break;
                    }
                    let split = insts.len();
                    insts.push(Inst::Jmp(0));
                    emit(alt, insts)?;
                    jumps.push(insts.len());
                    insts.push(Inst::Jmp(0));
                    insts[split] = Inst::Split(split + 1, insts.len());
                }
                let end = insts.len();
                for j in jumps {
                    insts[j] = Inst::Jmp(end);
                }
            }
            Node::Star(sub) => {
                let split = insts.len();
                insts.push(Inst::Jmp(0));
                emit(sub, insts)?;
                insts.push(Inst::Jmp(split));
                insts[split] = Inst::Split(split + 1, insts.len());
            }
            Node::Plus(sub) => {
                let start = insts.len();
                emit(sub, insts)?;
                insts.push(Inst::Split(start, insts.len() + 1));
            }
            Node::Quest(sub) => {
                let split = insts.len();
                insts.push(Inst::Jmp(0));
                emit(sub, insts)?;
                insts[split] = Inst::Split(split + 1, insts.len());
            }
            Node::Repeat(sub, min, max) => {
                for _ in 0..*min {
                    emit(sub, insts)?;
                }
                match max {
                    None => emit(&Node::Star(sub.clone()), insts)?,
                    Some(max) => {
                        // Optional copies one after another: the same
                        // language as Go's nested form.
                        for _ in *min..*max {
                            emit(&Node::Quest(sub.clone()), insts)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// An open group: its alternatives so far, the last one being built.
    struct Group {
        alts: Vec<Vec<Node>>,
    }

    impl Group {
        fn new() -> Self {
            Group {
                alts: vec![Vec::new()],
            }
        }

        fn into_node(mut self) -> Node {
            if self.alts.len() == 1 {
                Node::Concat(self.alts.pop().unwrap_or_default())
            } else {
                Node::Alt(self.alts.into_iter().map(Node::Concat).collect())
            }
        }
    }

    /// Append to the innermost open group's current alternative.
    fn push(n: Node, groups: &mut [Group]) {
        if let Some(alt) = groups.last_mut().and_then(|g| g.alts.last_mut()) {
            alt.push(n);
        }
    }

    /// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}` at `s[i]`, as (min,
    /// max, index after). `None` if it is not one (the `{` is then a
    /// literal); a count too big to read is -1.
    fn parse_repeat(s: &[char], i: usize) -> Option<(i64, Option<i64>, usize)> {
        fn int(s: &[char], i: usize) -> Option<(i64, usize)> {
            let digits = s[i.min(s.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            // No leading zeros.
            if digits == 0 || (digits >= 2 && s[i] == '0') {
                return None;
            }
            let mut n: i64 = 0;
            for c in &s[i..i + digits] {
                if n >= 100_000_000 {
                    n = -1;
                    break;
                }
                n = n * 10 + i64::from(c.to_digit(10).unwrap_or(0));
            }
            Some((n, i + digits))
        }
        let (min, mut j) = int(s, i + 1)?;
        let max = match s.get(j) {
            Some(',') => {
                j += 1;
                if s.get(j) == Some(&'}') {
                    None
                } else {
                    let (max, next) = int(s, j)?;
                    j = next;
                    Some(max)
                }
            }
            Some(_) => Some(min),
            None => return None,
        };
        if s.get(j) != Some(&'}') {
            return None;
        }
        // Go reports an unreadable max by making min negative.
        let min = if max.is_some_and(|m| m < 0) { -1 } else { min };
        Some((min, max, j + 1))
    }

    /// Parse with Go's rules for the constructs that can occur, and Go's
    /// errors for misuse of them.
    fn parse(s: &[char]) -> Result<Node, String> {
        // One entry per open group; the bottom one is the whole expression.
        let mut groups: Vec<Group> = vec![Group::new()];
        let mut last_was_repeat = false;
        let mut i = 0;
        while i < s.len() {
            let mut repeat = false;
            match s[i] {
                '(' => {
                    if s.get(i + 1) == Some(&'?') {
                        return Err("unsupported group syntax in pattern".into());
                    }
                    groups.push(Group::new());
                    i += 1;
                }
                ')' => {
                    if groups.len() < 2 {
                        return Err("unexpected ) in pattern".into());
                    }
                    if let Some(group) = groups.pop() {
                        push(group.into_node(), &mut groups);
                    }
                    i += 1;
                }
                '|' => {
                    if let Some(g) = groups.last_mut() {
                        g.alts.push(Vec::new());
                    }
                    i += 1;
                }
                '^' => {
                    push(Node::Look(Look::Begin), &mut groups);
                    i += 1;
                }
                '$' => {
                    push(Node::Look(Look::End), &mut groups);
                    i += 1;
                }
                '.' => {
                    push(Node::AnyNotNl, &mut groups);
                    i += 1;
                }
                '[' => {
                    let (class, next) = parse_class(s, i)?;
                    push(Node::Class(class), &mut groups);
                    i = next;
                }
                op @ ('*' | '+' | '?' | '{') => {
                    let mut count = None;
                    if op == '{' {
                        match parse_repeat(s, i) {
                            None => {
                                push(Node::Char('{'), &mut groups);
                                i += 1;
                                last_was_repeat = false;
                                continue;
                            }
                            Some((min, max, next)) => {
                                let bad = !(0..=1000).contains(&min)
                                    || max.is_some_and(|m| m > 1000 || min > m);
                                if bad {
                                    return Err("invalid repeat count in pattern".into());
                                }
                                count = Some((min, max));
                                i = next;
                            }
                        }
                    } else {
                        i += 1;
                    }
                    if last_was_repeat {
                        return Err("invalid nested repetition operator in pattern".into());
                    }
                    // Non-greedy: the same language.
                    if s.get(i) == Some(&'?') {
                        i += 1;
                    }
                    let alt = groups.last_mut().and_then(|g| g.alts.last_mut());
                    let Some(sub) = alt.and_then(|a| a.pop()) else {
                        return Err("missing argument to repetition operator in pattern".into());
                    };
                    let sub = Box::new(sub);
                    let node = match (op, count) {
                        ('*', _) => Node::Star(sub),
                        ('+', _) => Node::Plus(sub),
                        ('?', _) => Node::Quest(sub),
                        (_, Some((min, max))) => Node::Repeat(
                            sub,
                            u32::try_from(min).unwrap_or(0),
                            max.map(|m| u32::try_from(m).unwrap_or(0)),
                        ),
                        (_, None) => Node::Quest(sub),
                    };
                    push(node, &mut groups);
                    repeat = true;
                }
                '\\' => match s.get(i + 1) {
                    Some('A') => {
                        push(Node::Look(Look::Begin), &mut groups);
                        i += 2;
                    }
                    Some('z') => {
                        push(Node::Look(Look::End), &mut groups);
                        i += 2;
                    }
                    Some('b') => {
                        push(Node::Look(Look::WordBoundary), &mut groups);
                        i += 2;
                    }
                    Some('B') => {
                        push(Node::Look(Look::NotWordBoundary), &mut groups);
                        i += 2;
                    }
                    Some('C') => return Err("invalid escape sequence \\C in pattern".into()),
                    Some('Q') => {
                        // Everything up to `\E` (or the end) is literal.
                        i += 2;
                        while i < s.len() {
                            if s[i] == '\\' && s.get(i + 1) == Some(&'E') {
                                i += 2;
                                break;
                            }
                            push(Node::Char(s[i]), &mut groups);
                            i += 1;
                        }
                    }
                    Some('p' | 'P') => {
                        return Err("Unicode classes (\\p) are not supported in patterns".into());
                    }
                    Some(&c) if perl_class(c).is_some() => {
                        let mut class = Class::default();
                        if let Some((group, negated)) = perl_class(c) {
                            add_group(&mut class.ranges, group, negated);
                        }
                        push(Node::Class(class), &mut groups);
                        i += 2;
                    }
                    _ => {
                        let (r, next) = parse_escape(s, i)?;
                        push(literal(r), &mut groups);
                        i = next;
                    }
                },
                c => {
                    push(Node::Char(c), &mut groups);
                    i += 1;
                }
            }
            last_was_repeat = repeat;
        }
        if groups.len() != 1 {
            return Err("missing closing ) in pattern".into());
        }
        Ok(groups
            .pop()
            .map(Group::into_node)
            .unwrap_or(Node::Concat(Vec::new())))
    }

    /// A bracket expression starting at `s[start] == '['`; returns the class
    /// and the index after its `]`.
    fn parse_class(s: &[char], start: usize) -> Result<(Class, usize), String> {
        let bad_range = || "invalid character class range in pattern".to_string();
        let mut i = start + 1;
        let mut class = Class::default();
        if s.get(i) == Some(&'^') {
            class.negated = true;
            i += 1;
        }
        // A `]` right after `[` or `[^` is a literal.
        let mut first = true;
        while i >= s.len() || s[i] != ']' || first {
            first = false;
            // POSIX `[:name:]`; the `:]` is searched for in the whole rest,
            // as Go does.
            let posix_end = if s.len() - i.min(s.len()) > 2 && s[i] == '[' && s[i + 1] == ':' {
                (i + 2..s.len() - 1).find(|&k| s[k] == ':' && s[k + 1] == ']')
            } else {
                None
            };
            if let Some(end) = posix_end {
                let name: String = s[i + 2..end].iter().collect();
                let (group, negated) = posix_class(&name).ok_or_else(bad_range)?;
                add_group(&mut class.ranges, group, negated);
                i = end + 2;
                continue;
            }
            if i < s.len() && s[i] == '\\' {
                match s.get(i + 1) {
                    Some('p' | 'P') => {
                        return Err("Unicode classes (\\p) are not supported in patterns".into());
                    }
                    Some(&c) => {
                        if let Some((group, negated)) = perl_class(c) {
                            add_group(&mut class.ranges, group, negated);
                            i += 2;
                            continue;
                        }
                    }
                    None => {}
                }
            }
            let (lo, next) = class_char(s, i)?;
            i = next;
            let mut hi = lo;
            // `[a-]` means `a` or `-`.
            if i + 1 < s.len() && s[i] == '-' && s[i + 1] != ']' {
                let (h, next) = class_char(s, i + 1)?;
                i = next;
                if h < lo {
                    return Err(bad_range());
                }
                hi = h;
            }
            class.ranges.push((lo, hi));
        }
        Ok((class, i + 1))
    }

    fn class_char(s: &[char], i: usize) -> Result<(u32, usize), String> {
        match s.get(i) {
            None => Err("missing closing ] in pattern".into()),
            Some('\\') => parse_escape(s, i),
            Some(&c) => Ok((c as u32, i + 1)),
        }
    }

    /// A single-character escape at `s[i] == '\\'`, per Go.
    fn parse_escape(s: &[char], i: usize) -> Result<(u32, usize), String> {
        let invalid = || "invalid escape sequence in pattern".to_string();
        let Some(&c) = s.get(i + 1) else {
            return Err("trailing backslash in pattern".into());
        };
        let mut j = i + 2;
        let octal = |c: Option<&char>| c.filter(|c| ('0'..='7').contains(*c)).copied();
        match c {
            '0'..='7' => {
                // A lone non-zero digit would be a backreference.
                if c != '0' && octal(s.get(j)).is_none() {
                    return Err(invalid());
                }
                let mut r = c as u32 - '0' as u32;
                for _ in 0..2 {
                    let Some(d) = octal(s.get(j)) else { break };
                    r = r * 8 + (d as u32 - '0' as u32);
                    j += 1;
                }
                Ok((r, j))
            }
            'x' => {
                let hex = |c: Option<&char>| c.and_then(|c| c.to_digit(16));
                if s.get(j) == Some(&'{') {
                    // Any number of hex digits, at least one, up to U+10FFFF.
                    let mut r: u32 = 0;
                    let mut digits = 0;
                    j += 1;
                    loop {
                        match s.get(j) {
                            Some('}') if digits > 0 => return Ok((r, j + 1)),
                            Some(&c) => {
                                let v = hex(Some(&c)).ok_or_else(invalid)?;
                                r = r * 16 + v;
                                if r > char::MAX as u32 {
                                    return Err(invalid());
                                }
                                digits += 1;
                                j += 1;
                            }
                            None => return Err(invalid()),
                        }
                    }
                }
                match (hex(s.get(j)), hex(s.get(j + 1))) {
                    (Some(a), Some(b)) => Ok((a * 16 + b, j + 2)),
                    _ => Err(invalid()),
                }
            }
            'a' => Ok((7, j)),
            'f' => Ok((12, j)),
            'n' => Ok((10, j)),
            'r' => Ok((13, j)),
            't' => Ok((9, j)),
            'v' => Ok((11, j)),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok((c as u32, j)),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        match PatternMatcher::new(patterns) {
            Ok(m) => m,
            Err(e) => panic!("{patterns:?}: {e}"),
        }
    }

    /// `Matches`-style helper: "." is never matched.
    fn matches(path: &str, patterns: &[&str]) -> bool {
        let path = clean(path);
        path != "." && pm(patterns).matches(&path)
    }

    /// The parent-threaded variant, fed every parent first as a walker does.
    fn matches_walking(m: &PatternMatcher, path: &str) -> bool {
        let parent = go_dir(path);
        let mut info = MatchInfo::default();
        if parent != "." {
            for dir in parent_prefixes(&parent) {
                info = m.matches_with_parent(dir, &info).1;
            }
        }
        m.matches_with_parent(path, &info).0
    }

    #[test]
    fn basic_rules() {
        assert!(matches("fileutils.go", &["*"]));
        assert!(matches("fileutils.go", &["*.go"]));
        // An exception before the inclusion is overridden by it.
        assert!(matches("fileutils.go", &["!fileutils.go", "*.go"]));
        assert!(!matches("fileutils.go", &["*.go", "!fileutils.go"]));
        for dir in ["docs", "docs/", "docs/*"] {
            assert!(
                !matches("docs/README.md", &[dir, "!docs/README.md"]),
                "{dir}"
            );
            assert!(matches("docs/other.md", &[dir, "!docs/README.md"]), "{dir}");
        }
        assert!(!matches(".", &["*.go"]));
        assert!(!matches("/any/path/there", &[]));
    }

    #[test]
    fn errors() {
        for bad in [
            "!", "[", "\\", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]",
        ] {
            assert!(PatternMatcher::new(&[bad]).is_err(), "{bad:?}");
        }
        // Go's glob accepts these but its regexp does not (an inverted range
        // after translation); upstream fails on first use, we fail at once.
        for bad in ["[Local-Only]/", "[z-a]", "a\\pL"] {
            assert!(PatternMatcher::new(&[bad]).is_err(), "{bad:?}");
        }
        match PatternMatcher::new(&["ok", "[x-]"]) {
            Err(FsError::Pattern { pattern, .. }) => assert_eq!(pattern, "[x-]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cleaning_and_flags() {
        let m = pm(&["docs", "config", "", "   "]);
        assert_eq!(m.patterns().len(), 2);
        let m = pm(&["docs", "  !docs/README.md  "]);
        assert!(m.has_exclusions());
        assert_eq!(m.patterns()[1].as_str(), "docs/README.md");
        assert!(!pm(&["docs"]).has_exclusions());
        // Cleaned before `!` is looked at.
        let m = pm(&["!a/../b", "./c/", "d//e/."]);
        assert!(!m.has_exclusions());
        let texts: Vec<_> = m.patterns().iter().map(Pattern::as_str).collect();
        assert_eq!(texts, ["b", "c", "d/e"]);
        // A leading slash is kept by the matcher itself.
        assert!(!pm(&["/foo"]).matches("foo"));
    }

    /// patternmatcher's single-pattern table: the matches-or-parent-matches
    /// result must equal the parent-threaded one and the expected value.
    #[test]
    fn pattern_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "/", true),
            ("**/", "/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\*b", "a*b", true),
        ];
        for &(pattern, text, want) in cases {
            let m = pm(&[pattern]);
            assert_eq!(m.matches(text), want, "{pattern:?} {text:?}");
            assert_eq!(
                matches_walking(&m, text),
                want,
                "walking {pattern:?} {text:?}"
            );
            assert_eq!(
                m.matches_with_parent(text, &MatchInfo::default()).0,
                want,
                "no context {pattern:?} {text:?}"
            );
        }
    }

    #[test]
    fn multi_pattern_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for &(patterns, text, want) in cases {
            let m = pm(patterns);
            assert_eq!(m.matches(text), want, "{patterns:?} {text:?}");
            assert_eq!(
                matches_walking(&m, text),
                want,
                "walking {patterns:?} {text:?}"
            );
        }
    }

    /// Go's own filepath.Match cases, through the matcher (as upstream's
    /// TestMatch does).
    #[test]
    fn go_glob_cases_through_matcher() {
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("abc", "abc", Some(true)),
            ("*", "abc", Some(true)),
            ("*c", "abc", Some(true)),
            ("a*", "a", Some(true)),
            ("a*", "abc", Some(true)),
            ("a*", "ab/c", Some(true)),
            ("a*/b", "abc/b", Some(true)),
            ("a*/b", "a/c/b", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Some(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
            ("ab[c]", "abc", Some(true)),
            ("ab[b-d]", "abc", Some(true)),
            ("ab[e-g]", "abc", Some(false)),
            ("ab[^c]", "abc", Some(false)),
            ("ab[^b-d]", "abc", Some(false)),
            ("ab[^e-g]", "abc", Some(true)),
            ("a\\*b", "a*b", Some(true)),
            ("a\\*b", "ab", Some(false)),
            ("a?b", "a☺b", Some(true)),
            ("a[^a]b", "a☺b", Some(true)),
            ("a???b", "a☺b", Some(false)),
            ("a[^a][^a][^a]b", "a☺b", Some(false)),
            ("[a-ζ]*", "α", Some(true)),
            ("*[a-ζ]", "A", Some(false)),
            ("a?b", "a/b", Some(false)),
            ("a*b", "a/b", Some(false)),
            ("[\\]a]", "]", Some(true)),
            ("[\\-]", "-", Some(true)),
            ("[x\\-]", "x", Some(true)),
            ("[x\\-]", "-", Some(true)),
            ("[x\\-]", "z", Some(false)),
            ("[\\-x]", "x", Some(true)),
            ("[\\-x]", "-", Some(true)),
            ("[\\-x]", "a", Some(false)),
            ("[]a]", "]", None),
            ("[-]", "-", None),
            ("[x-]", "x", None),
            ("[-x]", "x", None),
            ("\\", "a", None),
            ("[a-b-c]", "a", None),
            ("[", "a", None),
            ("[^", "a", None),
            ("[^bc", "a", None),
            ("a[", "a", None),
            ("a[", "ab", None),
            ("*x", "xxx", Some(true)),
        ];
        for &(pattern, text, want) in cases {
            match (PatternMatcher::new(&[pattern]), want) {
                (Ok(m), Some(want)) => assert_eq!(m.matches(text), want, "{pattern:?} {text:?}"),
                (Err(_), None) => {}
                (got, want) => panic!("{pattern:?} {text:?}: {got:?}, want {want:?}"),
            }
        }
    }

    /// What the Go regexp translation makes of unusual patterns.
    #[test]
    fn regexp_oddities() {
        let yes = |p: &str, t: &str| assert!(pm(&[p]).matches(t), "{p:?} should match {t:?}");
        let no = |p: &str, t: &str| assert!(!pm(&[p]).matches(t), "{p:?} should not match {t:?}");
        // `\d` is a digit class, not an escaped `d`.
        yes("a\\d", "a7");
        no("a\\d", "ad");
        yes("[[:alpha:]]x", "qx");
        no("[[:alpha:]]x", "1x");
        yes("[[:^digit:]]", "q");
        // `*` inside brackets becomes `[^/]*` inside the class: `[*]` is the
        // class `[[^/]` repeated, then a literal `]`.
        yes("[*]", "]");
        yes("[*]", "[^]");
        no("[*]", "*");
        // A `^` outside brackets anchors once the pattern is a regexp, so
        // nothing can match; as a plain literal it is just a character.
        yes("a^b", "a^b");
        no("a^b*", "a^bc");
        // `\Q` quotes through the end, swallowing the closing `$`.
        yes("\\Qab", "ab$y");
        no("\\Qab", "ab");
        no("\\Qab", "xab$");
        yes("\\Qa\\Eb", "ab");
        // `.` in the translation is `[^\n]`-like; a negated class is not.
        yes("a?b", "a\nb");
        // A word boundary.
        yes("\\ba", "a");
        no("x\\ba", "xa");
        // Octal and hex escapes.
        yes("\\x41", "A");
        yes("\\101", "A");
        assert!(PatternMatcher::new(&["\\1"]).is_err(), "a backreference");
        // An escaped `*` after a glob keeps regexp semantics.
        yes("a*\\*", "abc*");
        // `|`, `{` and `}` reach the regexp unescaped (upstream's escape
        // table drops them): alternation splits the anchors, `{n}` counts.
        yes("x|y*", "xanything");
        yes("x|y*", "a/y");
        no("x|y*", "ab");
        yes("a{2}*", "aa");
        no("a{2}*", "a");
        yes("a{,}*", "a{,}");
        yes("\\x{41}*", "A");
    }

    #[test]
    fn glob_matches_go() {
        assert_eq!(glob_match("*", "a/b"), Ok(false));
        assert_eq!(glob_match("a*", "abc"), Ok(true));
        assert_eq!(glob_match("[a-c]x", "bx"), Ok(true));
        assert_eq!(glob_match("\\*", "*"), Ok(true));
        assert_eq!(glob_match("[", "a"), Err(BadPattern));
        // Go stops at the first chunk that fails: the broken rest is unseen.
        assert_eq!(glob_match("a*[", "."), Ok(false));
        assert_eq!(glob_match("x[", "."), Err(BadPattern));
    }

    #[test]
    fn path_helpers() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("a/./b", "a/b"),
            ("a/../..", ".."),
            ("/..", "/"),
            ("/a/b/", "/a/b"),
            ("a//b", "a/b"),
            ("../a/../b", "../b"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
        assert_eq!(go_dir("a/b/c"), "a/b");
        assert_eq!(go_dir("a"), ".");
        assert_eq!(go_dir("file/"), "file");
        assert_eq!(
            parent_prefixes("a/b/c").collect::<Vec<_>>(),
            ["a", "a/b", "a/b/c"]
        );
    }

    #[test]
    fn parent_threading_differs_from_direct_matching() {
        // The exception is skipped at `d` (nothing matched yet) so it is not
        // carried to `d/f`; fsutil's walk therefore still excludes `d/f`.
        let m = pm(&["d/f", "!d"]);
        assert!(!m.matches("d/f"));
        assert!(matches_walking(&m, "d/f"));
    }

    #[test]
    fn dir_skipping_helpers() {
        let m = pm(&["a/b/**", "c/*", "!x/y", "!z*/w"]);
        assert!(m.literal_only(false));
        assert!(!m.literal_only(true));
        assert!(m.names_path_inside("a", false));
        assert!(m.names_path_inside("a/b", false));
        assert!(!m.names_path_inside("a/b/c", false));
        assert!(!m.names_path_inside("ab", false));
        assert!(m.names_path_inside("c", false));
        assert!(!m.names_path_inside("c/d", false));
        assert!(m.names_path_inside("x", true));
        assert!(!m.names_path_inside("x", false));
        assert_eq!(m.patterns()[0].without_trailing_glob(), "a/b");
        assert!(!pm(&["a^b"]).literal_only(false));
    }

    #[test]
    fn ignore_file() {
        assert!(read_ignore_file("").is_empty());
        let content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            read_ignore_file(content),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        assert_eq!(
            read_ignore_file("\u{FEFF}#c\r\n  # not a comment\r\nx/../y\r\n/\n./\n"),
            ["# not a comment", "y", "/", "."]
        );
    }

    #[test]
    fn nothing_panics_on_odd_input() {
        let inputs = [
            "\u{FEFF}**",
            "\u{FEFF}a**",
            "**\u{FEFF}",
            "[[:",
            "[[:x",
            "[[:foo:]]",
            "[a-\\",
            "\\x",
            "\\x4",
            "\\Q",
            "\\",
            "[\\",
            "*[",
            "a*\\",
            "**[]",
            "[]]",
            "[^]]",
            "\\0",
            "\\08",
            "\\777",
            "é\\é",
        ];
        for p in inputs {
            if let Ok(m) = PatternMatcher::new(&[p]) {
                for t in ["", "a", "a/b", "é/\u{FEFF}a", "\n"] {
                    let _ = m.matches(t);
                    let _ = matches_walking(&m, t);
                }
            }
        }
    }
}
