//! JSON written byte-for-byte as Go's `encoding/json` writes it, so a
//! manifest or config we produce has the digest BuildKit would give it.
//!
//! Two differences from plain `serde_json` matter: Go escapes `<`, `>` and
//! `&` as `\u003c`, `\u003e`, `\u0026` (history lines such as `RUN a && b`
//! contain them) and U+2028/U+2029 as `\u2028`/`\u2029`. Key order comes from
//! the types (struct field order, `BTreeMap` for maps, as Go sorts map keys).
//! [`to_vec`] is `json.Marshal`; [`to_vec_pretty`] is
//! `json.MarshalIndent(v, "", "  ")`, which BuildKit uses for manifests and
//! indexes.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

/// `json.Marshal(v)`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    write(value, GoEscape(CompactFormatter))
}

/// `json.MarshalIndent(v, "", "  ")`.
pub fn to_vec_pretty<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    write(value, GoEscape(PrettyFormatter::with_indent(b"  ")))
}

fn write<T: Serialize + ?Sized, F: Formatter>(
    value: &T,
    formatter: F,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Wraps a formatter, adding Go's HTML-safe escapes to string contents.
struct GoEscape<F>(F);

impl<F: Formatter> Formatter for GoEscape<F> {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped: &[u8] = match c {
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '&' => b"\\u0026",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escaped)?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    // Everything else is the inner formatter's layout.
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn escapes_like_go() {
        let v = ("RUN a && b <x> \u{2028}\u{2029} \"q\" \\ \n\t\r\u{1} \u{7f} é 😀",);
        let got = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        // What Go 1.23 json.Marshal writes for the same string.
        let want = format!(
            r#"["RUN a \u0026\u0026 b \u003cx\u003e \u2028\u2029 \"q\" \\ \n\t\r\u0001 {} é 😀"]"#,
            '\u{7f}'
        );
        assert_eq!(got, want);
    }

    #[test]
    fn keys_are_escaped_and_sorted() {
        let mut m = BTreeMap::new();
        m.insert("b&", 1);
        m.insert("a<", 2);
        assert_eq!(to_vec(&m).unwrap(), br#"{"a\u003c":2,"b\u0026":1}"#);
    }

    #[test]
    fn pretty_matches_marshal_indent() {
        #[derive(Serialize)]
        struct T {
            a: Vec<u32>,
            b: Vec<u32>,
            c: BTreeMap<String, String>,
            d: &'static str,
        }
        let t = T {
            a: vec![],
            b: vec![1, 2],
            c: BTreeMap::new(),
            d: "&",
        };
        let got = String::from_utf8(to_vec_pretty(&t).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\n  \"a\": [],\n  \"b\": [\n    1,\n    2\n  ],\n  \"c\": {},\n  \"d\": \"\\u0026\"\n}"
        );
    }
}
