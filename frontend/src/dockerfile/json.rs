//! Just enough of Go's `encoding/json` to decide what BuildKit decides.
//!
//! The exec form (`RUN ["a", "b"]`) is taken when Go's `json.Unmarshal`
//! accepts the text as an array; it is an error when that array holds
//! anything but strings, and silently the shell form when the text is not
//! valid JSON. The `{"syntax": …}` directive likewise needs a JSON object.
//! Go's decoder and serde_json disagree at the edges (lone UTF-16
//! surrogates, nesting limits, number range), so this small iterative
//! validator follows Go: surrogates decode to U+FFFD, nesting beyond 10000
//! levels is invalid, and a number that overflows a float64 makes the whole
//! document an error. Start with [`top_level`].

/// What a JSON document is at its top level.
pub(crate) enum Top {
    /// An array; each element is `Some` when it is a string.
    Array(Vec<Option<String>>),
    /// An object; members in order, values `Some` when they are strings.
    Object(Vec<(String, Option<String>)>),
    /// A scalar.
    Scalar,
}

/// Go's `maxNestingDepth`.
const MAX_DEPTH: usize = 10_000;

/// Decodes `text` as Go would; `None` when Go's `Unmarshal` into `any`
/// would fail.
pub(crate) fn top_level(text: &str) -> Option<Top> {
    let mut p = Reader {
        b: text.as_bytes(),
        s: text,
        i: 0,
    };
    p.ws();
    let top = match p.peek()? {
        b'[' => {
            p.i += 1;
            let mut items = Vec::new();
            p.ws();
            if !p.eat(b']') {
                loop {
                    p.ws();
                    if p.peek()? == b'"' {
                        items.push(Some(p.string()?));
                    } else {
                        p.value(1)?;
                        items.push(None);
                    }
                    p.ws();
                    if p.eat(b',') {
                        continue;
                    }
                    if p.eat(b']') {
                        break;
                    }
                    return None;
                }
            }
            Top::Array(items)
        }
        b'{' => {
            p.i += 1;
            let mut members = Vec::new();
            p.ws();
            if !p.eat(b'}') {
                loop {
                    let key = p.key()?;
                    p.ws();
                    if p.peek()? == b'"' {
                        members.push((key, Some(p.string()?)));
                    } else {
                        p.value(1)?;
                        members.push((key, None));
                    }
                    p.ws();
                    if p.eat(b',') {
                        continue;
                    }
                    if p.eat(b'}') {
                        break;
                    }
                    return None;
                }
            }
            Top::Object(members)
        }
        _ => {
            p.value(0)?;
            Top::Scalar
        }
    };
    p.ws();
    if p.i != p.b.len() {
        return None;
    }
    Some(top)
}

struct Reader<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// `ws string ws ':'`, as objects need before each value.
    fn key(&mut self) -> Option<String> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let k = self.string()?;
        self.ws();
        self.eat(b':').then_some(k)
    }

    /// Validates one value that starts at `depth` open containers,
    /// without recursion.
    fn value(&mut self, depth: usize) -> Option<()> {
        let mut closers: Vec<u8> = Vec::new();
        loop {
            self.ws();
            match self.peek()? {
                open @ (b'[' | b'{') => {
                    self.i += 1;
                    if depth + closers.len() + 1 > MAX_DEPTH {
                        return None;
                    }
                    let close = if open == b'[' { b']' } else { b'}' };
                    self.ws();
                    if !self.eat(close) {
                        closers.push(close);
                        if close == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal("true")?,
                b'f' => self.literal("false")?,
                b'n' => self.literal("null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value is complete: close what it completes.
            loop {
                let Some(&close) = closers.last() else {
                    return Some(());
                };
                self.ws();
                if self.eat(b',') {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                }
                if self.eat(close) {
                    closers.pop();
                    continue;
                }
                return None;
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A number in JSON's grammar; Go refuses those a float64 cannot hold.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let v: f64 = self.s[start..self.i].parse().ok()?;
        v.is_finite().then_some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.b.get(at..at + 4)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + char::from(c).to_digit(16)?;
        }
        Some(v)
    }

    /// A string literal, unescaped as Go does.
    fn string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let rest = &self.s[self.i..];
            let stop = rest.find(|c: char| c == '"' || c == '\\' || (c as u32) < 0x20)?;
            out.push_str(&rest[..stop]);
            self.i += stop;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    let esc = *self.b.get(self.i + 1)?;
                    self.i += 2;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let r = self.hex4(self.i)?;
                            self.i += 4;
                            if (0xd800..0xe000).contains(&r) {
                                // A pair only when a low surrogate follows
                                // right away; otherwise U+FFFD and the next
                                // escape stands on its own.
                                let low = if r < 0xdc00
                                    && self.b.get(self.i..self.i + 2) == Some(b"\\u")
                                {
                                    self.hex4(self.i + 2)
                                        .filter(|lo| (0xdc00..0xe000).contains(lo))
                                } else {
                                    None
                                };
                                match low {
                                    Some(lo) => {
                                        let c = 0x10000 + ((r - 0xd800) << 10) + (lo - 0xdc00);
                                        out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                                        self.i += 6;
                                    }
                                    None => out.push('\u{fffd}'),
                                }
                            } else {
                                out.push(char::from_u32(r).unwrap_or('\u{fffd}'));
                            }
                        }
                        _ => return None,
                    }
                }
                _ => return None, // raw control character
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Option<Vec<Option<String>>> {
        match top_level(text)? {
            Top::Array(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(
            strings(r#" [ "a" , "b\n\u0041" ] "#),
            Some(vec![Some("a".into()), Some("b\nA".into())])
        );
        assert_eq!(strings("[]"), Some(vec![]));
        assert_eq!(
            strings(r#"["a", 1, {"x": [true, null]}]"#).map(|v| v.len()),
            Some(3)
        );
        assert!(strings(r#"["a",]"#).is_none());
        assert!(strings(r#"["a"] x"#).is_none());
        assert!(strings(r#"['a']"#).is_none());
        assert!(strings(r#"["a", 1e400]"#).is_none());
        assert!(strings("[\"a\tb\"]").is_none());
        assert_eq!(
            strings(r#"["\ud83d\ude00", "\ud800x", "\udc00"]"#),
            Some(vec![
                Some("\u{1F600}".into()),
                Some("\u{fffd}x".into()),
                Some("\u{fffd}".into())
            ])
        );
    }

    #[test]
    fn nesting_limit_and_objects() {
        let deep = format!("[{}{}]", "[".repeat(9_998), "]".repeat(9_998));
        assert!(strings(&deep).is_some());
        let deeper = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(strings(&deeper).is_none());
        match top_level(r#"{"syntax": "foo", "x": ["y"], "syntax": "bar"}"#) {
            Some(Top::Object(m)) => {
                assert_eq!(m.len(), 3);
                assert_eq!(m[2].1.as_deref(), Some("bar"));
            }
            _ => panic!("object expected"),
        }
        assert!(top_level(r#"{"a" 1}"#).is_none());
        assert!(matches!(top_level("12"), Some(Top::Scalar)));
    }
}
