//! Frontend subrequests (the `requestid` attr): `frontend.lint`, which
//! `docker buildx build --check` sends. Instead of a build, the result is
//! metadata: `result.json` (BuildKit's `LintResults`: warnings, the
//! Dockerfile as their source, the conversion's error), `result.txt` (the
//! same, printed as BuildKit prints it), `result.statuscode` (1 when
//! anything was found) and `version`. Start at [`lint_result`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::dockerfile::{LineRange, LintWarning};

/// The request ids this frontend answers.
pub const LINT: &str = "frontend.lint";
const LINT_VERSION: &str = "1.0.0";

fn location(ranges: &[LineRange]) -> Value {
    let position = |line: usize| {
        if line == 0 {
            json!({})
        } else {
            json!({ "line": line })
        }
    };
    // sourceIndex 0 is left out, as Go's omitempty does.
    json!({
        "ranges": ranges
            .iter()
            .map(|r| json!({ "start": position(r.start), "end": position(r.end) }))
            .collect::<Vec<_>>()
    })
}

/// The lint subrequest's metadata for `warnings` found in `dockerfile`
/// (named `filename`), and the conversion's error if it failed.
pub fn lint_result(
    filename: &str,
    dockerfile: &[u8],
    warnings: &[LintWarning],
    error: Option<(&str, &[LineRange])>,
) -> BTreeMap<String, Vec<u8>> {
    let mut results = json!({
        "warnings": warnings
            .iter()
            .map(|w| {
                let mut v = json!({
                    "ruleName": w.rule_name,
                    "description": w.description,
                    "detail": w.message,
                    "location": location(&w.location),
                });
                if !w.url.is_empty() {
                    v["url"] = json!(w.url);
                }
                v
            })
            .collect::<Vec<_>>(),
        "sources": [{
            "filename": filename,
            "data": base64::engine::general_purpose::STANDARD.encode(dockerfile),
            "language": "Dockerfile",
        }],
    });
    if let Some((message, ranges)) = error {
        results["buildError"] = json!({ "message": message, "location": location(ranges) });
    }
    let status = if warnings.is_empty() && error.is_none() {
        "0"
    } else {
        "1"
    };
    BTreeMap::from([
        (
            "result.json".to_string(),
            serde_json::to_vec_pretty(&results).unwrap_or_default(),
        ),
        (
            "result.txt".to_string(),
            print_warnings(filename, dockerfile, warnings).into_bytes(),
        ),
        ("result.statuscode".to_string(), status.as_bytes().to_vec()),
        ("version".to_string(), LINT_VERSION.as_bytes().to_vec()),
    ])
}

/// The warnings as BuildKit's `PrintLintViolations` writes them: by line,
/// each with its rule, URL, message and the Dockerfile excerpt.
fn print_warnings(filename: &str, dockerfile: &[u8], warnings: &[LintWarning]) -> String {
    let mut sorted: Vec<&LintWarning> = warnings.iter().collect();
    sorted.sort_by(|a, b| match (a.location.first(), b.location.first()) {
        (None, None) => a.rule_name.cmp(b.rule_name),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.start.cmp(&y.start),
    });
    let text = String::from_utf8_lossy(dockerfile);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = String::new();
    for w in sorted {
        out.push_str(&format!("\nWARNING: {}", w.rule_name));
        if !w.url.is_empty() {
            out.push_str(&format!(" - {}", w.url));
        }
        out.push_str(&format!("\n{}\n", w.message));
        out.push_str(&excerpt(filename, &lines, &w.location));
    }
    out
}

/// BuildKit's `errdefs.Source.Print`: the lines around `ranges`, those in
/// them marked `>>>`.
fn excerpt(filename: &str, lines: &[&str], ranges: &[LineRange]) -> String {
    let Some(first) = ranges.iter().map(|r| r.start).min() else {
        return String::new();
    };
    let mut start = first;
    let mut end = ranges
        .iter()
        .map(|r| r.end.max(r.start))
        .max()
        .unwrap_or(first);
    if start < 1 || start > lines.len() {
        return String::new();
    }
    end = end.min(lines.len());
    let pad = if end == start { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != lines.len() {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{filename}:{first}\n--------------------\n");
    for i in start..=end {
        let marked = ranges
            .iter()
            .any(|r| r.start <= i && r.end.max(r.start) >= i);
        let pfx = if marked { ">>>" } else { "   " };
        out.push_str(&format!(" {i:3} | {pfx} {}\n", lines[i - 1]));
    }
    out.push_str("--------------------\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_as_buildkit_prints_them() {
        let lines = ["FROM a AS B", "RUN x", "RUN y", ""];
        assert_eq!(
            excerpt("Dockerfile", &lines, &[LineRange::new(2, 2)]),
            "Dockerfile:2\n--------------------\n   1 |     FROM a AS B\n   2 | >>> RUN x\n   3 |     RUN y\n   4 |     \n--------------------\n"
        );
        assert_eq!(excerpt("Dockerfile", &lines, &[]), "");
        assert_eq!(excerpt("Dockerfile", &lines, &[LineRange::new(9, 9)]), "");
    }
}
