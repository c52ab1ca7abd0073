//! Small pieces of Go's standard library (and of the few Go modules BuildKit
//! uses) whose exact behaviour shows up in BuildKit's Dockerfile messages.
//!
//! BuildKit formats many errors with `%q` (Go string quoting), parses numbers,
//! booleans and durations with `strconv`/`time`, splits `--mount` values as
//! CSV and suggests fixes by Levenshtein distance. Users see those texts, so
//! they are reproduced here rather than approximated with Rust's own parsers.
//! Nothing here is Dockerfile-specific; start with [`quote`] and [`suggest`].

use std::fmt::Write as _;

/// Go's `strconv.Quote` (also what `%q` and `%#v` print for a string).
///
/// Printability follows Go's `strconv.IsPrint` exactly for Latin-1; above it,
/// spaces, controls, format characters, private-use characters and
/// noncharacters are escaped (Go also escapes unassigned code points, which
/// would need Unicode tables to know).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

pub(crate) fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    if u <= 0xff {
        return u >= 0xa1 && u != 0xad;
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    let format = matches!(u,
        0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f
        | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f
        | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f);
    let private = matches!(u, 0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd);
    let nonchar = (0xfdd0..=0xfdef).contains(&u) || (u & 0xfffe) == 0xfffe;
    !(format || private || nonchar)
}

/// The quoting of Go's `time` package errors: non-ASCII and control bytes
/// become `\xNN` per UTF-8 byte.
pub(crate) fn time_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if (c as u32) >= 0x80 || (c as u32) < 0x20 {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Go's `strings.TrimSpace` (Unicode white space, like Rust's `trim`).
pub(crate) fn trim_space(s: &str) -> &str {
    s.trim()
}

/// Go's `strings.ToLower`, which maps rune by rune (Rust's `to_lowercase`
/// turns `İ` into two characters; Go into `i`).
pub(crate) fn to_lower(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\u{130}' {
                return 'i';
            }
            let mut it = c.to_lowercase();
            match (it.next(), it.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        })
        .collect()
}

/// Go's `strings.ToUpper`: simple per-rune mappings only (`ß` stays `ß`).
pub(crate) fn to_upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut it = c.to_uppercase();
            match (it.next(), it.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Go's `strings.EqualFold` against an ASCII-lowercase `target`, including
/// the two non-ASCII runes that fold onto ASCII letters (`ſ` and the Kelvin
/// sign).
pub(crate) fn equal_fold_ascii(s: &str, target: &str) -> bool {
    let mut a = s.chars();
    for t in target.chars() {
        let Some(c) = a.next() else { return false };
        let folded = match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        };
        if folded != t {
            return false;
        }
    }
    a.next().is_none()
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Why a `strconv` number did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumError {
    Syntax,
    Range,
}

impl NumError {
    /// The message Go's `*strconv.NumError` prints.
    pub(crate) fn message(self, func: &str, input: &str) -> String {
        let why = match self {
            NumError::Syntax => "invalid syntax",
            NumError::Range => "value out of range",
        };
        format!("strconv.{func}: parsing {}: {why}", quote(input))
    }
}

/// Go's `strconv.ParseUint` for an explicit base (2..=36) and bit size.
pub(crate) fn parse_uint(s: &str, base: u32, bits: u32) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Syntax);
    }
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let cutoff = u64::MAX / u64::from(base) + 1;
    let mut n: u64 = 0;
    for b in s.bytes() {
        let lower = b | 0x20;
        let d = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            _ if lower.is_ascii_lowercase() => u32::from(lower - b'a') + 10,
            _ => return Err(NumError::Syntax),
        };
        if d >= base {
            return Err(NumError::Syntax);
        }
        // Go reports overflow as soon as it happens, before looking at the
        // rest of the digits.
        if n >= cutoff {
            return Err(NumError::Range);
        }
        n *= u64::from(base);
        let n1 = n.wrapping_add(u64::from(d));
        if n1 < n || n1 > max {
            return Err(NumError::Range);
        }
        n = n1;
    }
    Ok(n)
}

/// Go's `strconv.ParseInt(s, 10, bits)`.
pub(crate) fn parse_int(s: &str, bits: u32) -> Result<i64, NumError> {
    if s.is_empty() {
        return Err(NumError::Syntax);
    }
    let (neg, digits) = match s.as_bytes()[0] {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let un = match parse_uint(digits, 10, bits) {
        Ok(v) => v,
        Err(NumError::Syntax) => return Err(NumError::Syntax),
        Err(NumError::Range) => u64::MAX,
    };
    let cutoff = 1u64 << (bits - 1);
    if !neg && un >= cutoff {
        return Err(NumError::Range);
    }
    if neg && un > cutoff {
        return Err(NumError::Range);
    }
    // `un <= cutoff <= 2^63`, so the conversion below cannot overflow.
    let n = i128::from(un);
    Ok((if neg { -n } else { n }) as i64)
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub(crate) fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", time_quote(orig));
    const LIMIT: u64 = 1 << 63;
    let mut s = orig.as_bytes();
    let mut neg = false;
    if let Some(&c @ (b'-' | b'+')) = s.first() {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part; overflow is an error.
        let mut v: u64 = 0;
        let mut i = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(s[i] - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            i += 1;
        }
        let pre = i > 0;
        s = &s[i..];
        // Fraction; extra digits past the precision are ignored.
        let mut f: u64 = 0;
        let mut scale = 1f64;
        let mut post = false;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let mut j = 0;
            let mut overflow = false;
            while j < s.len() && s[j].is_ascii_digit() {
                if !overflow {
                    if f > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(s[j] - b'0');
                        if y > LIMIT {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                j += 1;
            }
            post = j > 0;
            s = &s[j..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let mut k = 0;
        while k < s.len() && !(s[k] == b'.' || s[k].is_ascii_digit()) {
            k += 1;
        }
        if k == 0 {
            return Err(format!(
                "time: missing unit in duration {}",
                time_quote(orig)
            ));
        }
        let unit_bytes = &s[..k];
        s = &s[k..];
        let unit_str = String::from_utf8_lossy(unit_bytes);
        let unit: u64 = match unit_bytes {
            b"ns" => 1,
            b"us" => 1_000,
            b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    time_quote(&unit_str),
                    time_quote(orig)
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        // Go's uint64 wraps here (2^63 + 2^63 is 0); so does this.
        total = total.wrapping_add(v);
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // `total <= 2^63`, so the negation fits an i64.
        return Ok((-i128::from(total)) as i64);
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i64)
}

/// `units.RAMInBytes` from docker/go-units: `64m`, `1GiB`, `512 kb`…
///
/// Go's `strconv.ParseFloat` also takes hexadecimal floats (`0x1p10`); Rust's
/// float parser does not, so those are rejected. Out-of-range results
/// saturate.
pub(crate) fn ram_in_bytes(size: &str) -> Option<i64> {
    let sep = size.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (num, sfx) = if size.as_bytes()[sep] != b' ' {
        (&size[..=sep], &size[sep + 1..])
    } else {
        (&size[..sep], &size[sep + 1..])
    };
    let mut value = parse_go_float(num)?;
    if value < 0.0 {
        return None;
    }
    if sfx.is_empty() {
        return Some(value as i64);
    }
    if sfx.len() > 3 {
        return None;
    }
    let sfx = sfx.to_ascii_lowercase();
    let b = sfx.as_bytes();
    if b[0] == b'b' {
        return if b.len() > 1 {
            None
        } else {
            Some(value as i64)
        };
    }
    let mul: f64 = match b[0] {
        b'k' => 1024.0,
        b'm' => 1024.0 * 1024.0,
        b'g' => 1024.0 * 1024.0 * 1024.0,
        b't' => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        b'p' => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    value *= mul;
    match b.len() {
        2 if b[1] != b'b' => None,
        3 if &b[1..] != b"ib" => None,
        _ => Some(value as i64),
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal syntax (and inf/nan).
fn parse_go_float(s: &str) -> Option<f64> {
    // Rust accepts the same decimal grammar as Go, except that Go refuses
    // underscores without a base prefix, and so does Rust.
    s.parse::<f64>().ok()
}

/// The fields of one CSV record, as tonistiigi/go-csvvalue (BuildKit's
/// `--mount` and `--device` splitter) reads them; errors use Go's
/// `encoding/csv` wording.
pub(crate) fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut line = line;
    if let Some(l) = line.strip_suffix('\n') {
        line = l.strip_suffix('\r').unwrap_or(l);
    }
    if line.is_empty() {
        return Err("EOF".to_owned());
    }
    let parse_err =
        |pos: usize, what: &str| format!("parse error on line 1, column {}: {what}", pos + 1);
    const BARE: &str = "bare \" in non-quoted-field";
    const QUOTE: &str = "extraneous or missing \" in quoted-field";
    let mut fields: Vec<String> = Vec::new();
    let mut pos = 0usize;
    'field: loop {
        if !line.starts_with('"') {
            let i = line.find(',');
            let field = match i {
                Some(i) => &line[..i],
                None => line,
            };
            if let Some(j) = field.find('"') {
                return Err(parse_err(pos + j, BARE));
            }
            fields.push(field.to_owned());
            match i {
                Some(i) => {
                    line = &line[i + 1..];
                    pos += i + 1;
                    continue;
                }
                None => break,
            }
        }
        line = &line[1..];
        pos += 1;
        let mut half_open = false;
        loop {
            let Some(i) = line.find('"') else {
                return Err(parse_err(pos, QUOTE));
            };
            if half_open {
                if let Some(last) = fields.last_mut() {
                    last.push_str(&line[..i]);
                }
            } else {
                fields.push(line[..i].to_owned());
            }
            line = &line[i + 1..];
            pos += i + 1;
            match line.chars().next() {
                Some('"') => {
                    if let Some(last) = fields.last_mut() {
                        last.push('"');
                    }
                    line = &line[1..];
                    pos += 1;
                    half_open = true;
                }
                Some(',') => {
                    line = &line[1..];
                    pos += 1;
                    continue 'field;
                }
                None => break 'field,
                Some(_) => return Err(parse_err(pos - 1, QUOTE)),
            }
        }
    }
    Ok(fields)
}

/// Levenshtein distance over characters (agext/levenshtein with unit costs).
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (x, &lc) in long.iter().enumerate() {
        let mut diag = row[0];
        row[0] = x + 1;
        for (y, &sc) in short.iter().enumerate() {
            let sub = diag + usize::from(sc != lc);
            let best = sub.min(row[y] + 1).min(row[y + 1] + 1);
            diag = row[y + 1];
            row[y + 1] = best;
        }
    }
    row[short.len()]
}

/// BuildKit's `suggest.Search`: the option closest to `val` by fewer than
/// three edits, or none when nothing is close or `val` is itself an option.
///
/// BuildKit walks Go maps, so among equally close options its pick varies
/// from run to run; here the first in `options` wins.
pub(crate) fn suggest<'a>(
    val: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<String> {
    let v = if case_sensitive {
        val.to_owned()
    } else {
        to_lower(val)
    };
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = if case_sensitive {
            opt.to_owned()
        } else {
            to_lower(opt)
        };
        if v == o {
            return None;
        }
        let d = levenshtein(&v, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else {
                match_case(&o, val)
            });
        }
    }
    best
}

fn match_case(val: &str, orig: &str) -> String {
    if orig == to_lower(orig) {
        return to_lower(val);
    }
    if orig == to_upper(orig) {
        return to_upper(val);
    }
    val.to_owned()
}

/// `err (did you mean X?)` when a suggestion exists.
pub(crate) fn with_suggestion<'a>(
    message: String,
    val: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> String {
    match suggest(val, options, case_sensitive) {
        Some(m) => format!("{message} (did you mean {m}?)"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_go() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("\t\n\u{0}\u{7f}"), r#""\t\n\x00\x7f""#);
        assert_eq!(quote("\u{a0}é☃"), "\"\\u00a0é☃\"");
        assert_eq!(quote("\u{feff}\u{1F600}"), "\"\\ufeff\u{1F600}\"");
        assert_eq!(time_quote("1é"), r#""1\xc3\xa9""#);
    }

    #[test]
    fn numbers_match_strconv() {
        assert_eq!(parse_uint("755", 8, 32), Ok(0o755));
        assert_eq!(parse_uint("8", 8, 32), Err(NumError::Syntax));
        assert_eq!(parse_uint("4294967296", 10, 32), Err(NumError::Range));
        assert_eq!(parse_uint("+1", 10, 32), Err(NumError::Syntax));
        assert_eq!(parse_int("-5", 32), Ok(-5));
        assert_eq!(parse_int("2147483648", 32), Err(NumError::Range));
        assert_eq!(parse_int("-2147483648", 32), Ok(-2147483648));
        assert_eq!(parse_int("99999999999999999999x", 32), Err(NumError::Range));
        assert_eq!(
            NumError::Syntax.message("ParseInt", "x"),
            r#"strconv.ParseInt: parsing "x": invalid syntax"#
        );
    }

    #[test]
    fn durations_match_time() {
        assert_eq!(parse_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(
            parse_duration("9223372036854775808ns9223372036854775808ns"),
            Ok(0)
        );
        assert_eq!(parse_duration("1µs"), Ok(1000));
        assert_eq!(
            parse_duration("5"),
            Err(r#"time: missing unit in duration "5""#.to_owned())
        );
        assert_eq!(
            parse_duration("5x"),
            Err(r#"time: unknown unit "x" in duration "5x""#.to_owned())
        );
        assert_eq!(
            parse_duration(""),
            Err(r#"time: invalid duration """#.to_owned())
        );
        assert_eq!(
            parse_duration("3000000h"),
            Err(r#"time: invalid duration "3000000h""#.to_owned())
        );
    }

    #[test]
    fn sizes_match_go_units() {
        assert_eq!(ram_in_bytes("64"), Some(64));
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1GiB"), Some(1 << 30));
        assert_eq!(ram_in_bytes("1.5k"), Some(1536));
        assert_eq!(ram_in_bytes("2 kb"), Some(2048));
        assert_eq!(ram_in_bytes("10b"), Some(10));
        assert_eq!(ram_in_bytes("10bb"), None);
        assert_eq!(ram_in_bytes("10x"), None);
        assert_eq!(ram_in_bytes("-1"), None);
        assert_eq!(ram_in_bytes("m"), None);
    }

    #[test]
    fn csv_matches_csvvalue() {
        assert_eq!(csv_fields("a,b,,c").unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(csv_fields("\"a,b\",c").unwrap(), vec!["a,b", "c"]);
        assert_eq!(csv_fields("\"a\"\"b\"").unwrap(), vec!["a\"b"]);
        assert_eq!(csv_fields("a,").unwrap(), vec!["a", ""]);
        assert_eq!(csv_fields("").unwrap_err(), "EOF");
        assert_eq!(
            csv_fields("ab\"c").unwrap_err(),
            "parse error on line 1, column 3: bare \" in non-quoted-field"
        );
        assert_eq!(
            csv_fields("\"ab\"c").unwrap_err(),
            "parse error on line 1, column 4: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            csv_fields("\"ab").unwrap_err(),
            "parse error on line 1, column 2: extraneous or missing \" in quoted-field"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        let cmds = ["FROM", "RUN", "COPY"];
        assert_eq!(suggest("FORM", cmds, false).as_deref(), Some("FROM"));
        assert_eq!(suggest("form", cmds, false).as_deref(), Some("from"));
        assert_eq!(suggest("Rnu", cmds, false).as_deref(), Some("run"));
        assert_eq!(suggest("XYZW", cmds, false), None);
        assert_eq!(suggest("run", cmds, false), None);
    }

    #[test]
    fn case_helpers() {
        assert_eq!(to_lower("WOR\u{212a}DIR"), "workdir");
        assert_eq!(to_lower("MA\u{130}NTAINER"), "maintainer");
        assert_eq!(to_upper("straße"), "STRAßE");
        assert!(equal_fold_ascii("A\u{17f}", "as"));
        assert!(!equal_fold_ascii("ass", "as"));
    }
}
