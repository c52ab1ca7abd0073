//! containerd-style filter expressions, as clients send them in
//! `ListWorkers`, `DiskUsage` and `Prune`.
//!
//! A request carries several filter strings, OR-ed; each string is a
//! comma-separated list of conditions, AND-ed: `field==value`, `field!=value`,
//! or a bare `field` (present and non-empty). Fields are dotted paths such as
//! `labels."org.example.key"`.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone)]
struct Condition {
    path: Vec<String>,
    op: Op,
}

/// A parsed set of filters; [`Filters::matches`] asks a lookup function for
/// each field.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    alternatives: Vec<Vec<Condition>>,
}

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters, String> {
        let mut alternatives = Vec::new();
        for text in filters.iter().filter(|f| !f.trim().is_empty()) {
            let mut conditions = Vec::new();
            for part in split_outside_quotes(text, ',') {
                conditions.push(parse_condition(part.trim())?);
            }
            alternatives.push(conditions);
        }
        Ok(Filters { alternatives })
    }

    /// True when no filter was given or any one of them matches. `lookup`
    /// returns the value of a field path, or `None` when it has none.
    pub fn matches(&self, lookup: impl Fn(&[String]) -> Option<String>) -> bool {
        self.alternatives.is_empty()
            || self.alternatives.iter().any(|conds| {
                conds.iter().all(|c| {
                    let value = lookup(&c.path);
                    match &c.op {
                        Op::Present => value.is_some_and(|v| !v.is_empty()),
                        Op::Equal(want) => value.as_deref() == Some(want.as_str()),
                        Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
                    }
                })
            })
    }
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    let invalid = |why: &str| format!("invalid filter {text:?}: {why}");
    if text.is_empty() {
        return Err(invalid("empty condition"));
    }
    let (field, op) = if let Some((f, v)) = text.split_once("==") {
        (f, Op::Equal(unquote(v.trim())))
    } else if let Some((f, v)) = text.split_once("!=") {
        (f, Op::NotEqual(unquote(v.trim())))
    } else if text.contains("~=") {
        return Err(invalid("the ~= operator is not supported"));
    } else if let Some((f, v)) = text.split_once('=') {
        // containerd accepts a single `=` as equality too.
        (f, Op::Equal(unquote(v.trim())))
    } else {
        (text, Op::Present)
    };
    let path: Vec<String> = split_outside_quotes(field.trim(), '.')
        .into_iter()
        .map(|s| unquote(s.trim()))
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(invalid("empty field name"));
    }
    Ok(Condition { path, op })
}

fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    if bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'/')
        && bytes[bytes.len() - 1] == bytes[0]
    {
        s[1..s.len() - 1].replace("\\\"", "\"")
    } else {
        s.to_string()
    }
}

fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(path: &[String]) -> Option<String> {
        match path
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["id"] => Some("w1".into()),
            ["labels", "org.a.b"] => Some("x".into()),
            _ => None,
        }
    }

    #[test]
    fn and_or_and_quoting() {
        let f = |s: &[&str]| {
            Filters::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&[]).matches(lookup));
        assert!(f(&["id==w1"]).matches(lookup));
        assert!(!f(&["id==w2"]).matches(lookup));
        assert!(f(&["id==w2", "id!=w3"]).matches(lookup));
        assert!(f(&["id==w1,labels.\"org.a.b\"==x"]).matches(lookup));
        assert!(!f(&["id==w1,labels.\"org.a.b\"!=x"]).matches(lookup));
        assert!(f(&["labels.\"org.a.b\""]).matches(lookup));
        assert!(!f(&["labels.missing"]).matches(lookup));
        assert!(Filters::parse(&["id~=w.*".to_string()]).is_err());
        assert!(Filters::parse(&["a..b==c".to_string()]).is_err());
    }
}
