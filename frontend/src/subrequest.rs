//! Frontend subrequests (the `requestid` attr), answered with metadata
//! instead of a build: `result.json` (BuildKit's JSON shapes),
//! `result.txt` (printed as BuildKit prints it), `version`.
//! - `frontend.lint` (`docker buildx build --check`): warnings, the
//!   Dockerfile as their source, the conversion's error, and
//!   `result.statuscode` (1 when anything was found). [`lint_result`].
//! - `frontend.targets` (`--call targets`): the stages. [`targets_result`].
//! - `frontend.outline` (`--call outline`): the target's build args,
//!   secrets and SSH agents. [`outline_result`].
//! - `frontend.subrequests.describe`: what is answered. [`describe_result`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::dockerfile::{LineRange, LintWarning};

/// The request ids this frontend answers.
pub const LINT: &str = "frontend.lint";
pub const TARGETS: &str = "frontend.targets";
pub const OUTLINE: &str = "frontend.outline";
pub const DESCRIBE: &str = "frontend.subrequests.describe";
const VERSION: &str = "1.0.0";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

// The JSON shapes are BuildKit's structs, fields in their order, empty
// ones left out where Go's `omitempty` leaves them out.

#[derive(Serialize)]
struct Position {
    #[serde(skip_serializing_if = "is_zero")]
    line: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Range {
    start: Position,
    end: Position,
}

#[derive(Serialize)]
struct Location {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ranges: Vec<Range>,
}

/// One range per line, as BuildKit's `node.Location()`.
fn location(ranges: &[LineRange]) -> Location {
    Location {
        ranges: ranges
            .iter()
            .map(|r| Range {
                start: Position { line: r.start },
                end: Position { line: r.end },
            })
            .collect(),
    }
}

#[derive(Serialize)]
struct Warning<'a> {
    #[serde(rename = "ruleName")]
    rule_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    url: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
    location: Location,
}

#[derive(Serialize)]
struct SourceInfo<'a> {
    filename: &'a str,
    data: String,
    language: &'a str,
}

#[derive(Serialize)]
struct BuildError<'a> {
    message: &'a str,
    location: Location,
}

#[derive(Serialize)]
struct LintResults<'a> {
    warnings: Vec<Warning<'a>>,
    sources: Vec<SourceInfo<'a>>,
    #[serde(rename = "buildError", skip_serializing_if = "Option::is_none")]
    error: Option<BuildError<'a>>,
}

/// The lint subrequest's metadata for `warnings` found in `dockerfile`
/// (named `filename`), and the conversion's error if it failed.
pub fn lint_result(
    filename: &str,
    dockerfile: &[u8],
    warnings: &[LintWarning],
    error: Option<(&str, &[LineRange])>,
) -> BTreeMap<String, Vec<u8>> {
    let results = LintResults {
        warnings: warnings
            .iter()
            .map(|w| Warning {
                rule_name: w.rule_name,
                description: w.description,
                url: w.url,
                detail: &w.message,
                location: location(&w.location),
            })
            .collect(),
        sources: vec![SourceInfo {
            filename,
            data: b64(dockerfile),
            language: "Dockerfile",
        }],
        error: error.map(|(message, ranges)| BuildError {
            message,
            location: location(ranges),
        }),
    };
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
        ("version".to_string(), VERSION.as_bytes().to_vec()),
    ])
}

#[derive(Serialize)]
struct Target<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    default: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    base: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    platform: &'a str,
    location: Location,
}

#[derive(Serialize)]
struct TargetList<'a> {
    targets: Vec<Target<'a>>,
    sources: Vec<String>,
}

/// Go's tabwriter with `padding` spaces: every column but the last padded
/// to its widest cell plus the padding.
fn table(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns.saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + padding - cell.chars().count();
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

/// `frontend.targets` (`buildx build --call targets`): the stages, the
/// last one the default, with their description comments.
pub fn targets_result(dockerfile: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let parsed = crate::dockerfile::parse(dockerfile).map_err(|e| e.message().to_string())?;
    let df = crate::dockerfile::instructions(&parsed).map_err(|e| e.message().to_string())?;
    let last = df.stages.len().saturating_sub(1);
    let list = TargetList {
        targets: df
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| Target {
                name: s.name.as_deref().unwrap_or(""),
                default: i == last,
                description: &s.doc_comment,
                base: &s.base_name,
                platform: &s.platform,
                location: location(
                    &(s.location.start..=s.location.end)
                        .map(|l| LineRange::new(l, l))
                        .collect::<Vec<_>>(),
                ),
            })
            .collect(),
        sources: vec![b64(dockerfile)],
    };
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for t in &list.targets {
        let name = match (t.name.is_empty(), t.default) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{} (default)", t.name),
            _ => t.name.to_string(),
        };
        rows.push(vec![name, t.description.to_string()]);
    }
    Ok(BTreeMap::from([
        (
            "result.json".to_string(),
            serde_json::to_vec_pretty(&list).unwrap_or_default(),
        ),
        ("result.txt".to_string(), table(&rows, 1).into_bytes()),
        ("version".to_string(), VERSION.as_bytes().to_vec()),
    ]))
}

/// Every line of `range`, one range each.
fn lines(range: LineRange) -> Location {
    location(
        &(range.start..=range.end)
            .map(|l| LineRange::new(l, l))
            .collect::<Vec<_>>(),
    )
}

#[derive(Serialize)]
struct OutlineArg<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    value: &'a str,
    location: Location,
}

#[derive(Serialize)]
struct OutlineMount<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    required: bool,
    location: Location,
}

#[derive(Serialize)]
struct OutlineJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<OutlineArg<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<OutlineMount<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh: Vec<OutlineMount<'a>>,
    sources: Vec<String>,
}

fn mounts(list: &[crate::dockerfile::outline::OutlineMount]) -> Vec<OutlineMount<'_>> {
    list.iter()
        .map(|m| OutlineMount {
            name: &m.name,
            required: m.required,
            location: lines(m.location),
        })
        .collect()
}

/// `frontend.outline` (`buildx build --call outline`): the target's build
/// args, secrets and SSH agents.
pub fn outline_result(
    outline: &crate::dockerfile::outline::Outline,
    dockerfile: &[u8],
) -> BTreeMap<String, Vec<u8>> {
    let json = OutlineJson {
        name: &outline.name,
        description: &outline.description,
        args: outline
            .args
            .iter()
            .map(|a| OutlineArg {
                name: &a.name,
                description: &a.description,
                value: &a.value,
                location: lines(a.location),
            })
            .collect(),
        secrets: mounts(&outline.secrets),
        ssh: mounts(&outline.ssh),
        sources: vec![b64(dockerfile)],
    };
    let mut text = String::new();
    if !outline.name.is_empty() || !outline.description.is_empty() {
        let name = if outline.name.is_empty() {
            "(default)".to_string()
        } else {
            outline.name.clone()
        };
        let mut rows = vec![vec!["TARGET:".to_string(), name]];
        if !outline.description.is_empty() {
            rows.push(vec![
                "DESCRIPTION:".to_string(),
                outline.description.clone(),
            ]);
        }
        text.push_str(&table(&rows, 1));
        text.push('\n');
    }
    if !outline.args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_string(),
            "VALUE".to_string(),
            "DESCRIPTION".to_string(),
        ]];
        for a in &outline.args {
            rows.push(vec![a.name.clone(), a.value.clone(), a.description.clone()]);
        }
        text.push_str(&table(&rows, 3));
        text.push('\n');
    }
    for (title, list) in [("SECRET", &outline.secrets), ("SSH", &outline.ssh)] {
        if list.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_string(), "REQUIRED".to_string()]];
        for m in list.iter() {
            let required = if m.required { "true" } else { "" };
            rows.push(vec![m.name.clone(), required.to_string()]);
        }
        text.push_str(&table(&rows, 3));
        text.push('\n');
    }
    BTreeMap::from([
        (
            "result.json".to_string(),
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        ),
        ("result.txt".to_string(), text.into_bytes()),
        ("version".to_string(), VERSION.as_bytes().to_vec()),
    ])
}

#[derive(Serialize)]
struct Named {
    name: &'static str,
    description: &'static str,
}

#[derive(Serialize)]
struct Request {
    name: &'static str,
    version: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    description: &'static str,
    opts: Option<Vec<Named>>,
    inputs: Option<Vec<Named>>,
    metadata: Option<Vec<Named>>,
    refs: Option<Vec<Named>>,
}

fn named(names: &[&'static str]) -> Option<Vec<Named>> {
    Some(
        names
            .iter()
            .map(|name| Named {
                name,
                description: "",
            })
            .collect(),
    )
}

/// `frontend.subrequests.describe`: the subrequests listed as BuildKit's
/// Dockerfile frontend lists them (lint is answered but, as there, not
/// listed).
pub fn describe_result() -> BTreeMap<String, Vec<u8>> {
    let all = [
        Request {
            name: OUTLINE,
            version: VERSION,
            kind: "rpc",
            description: "List all parameters current build target supports",
            opts: Some(vec![Named {
                name: "target",
                description: "Target build stage",
            }]),
            inputs: None,
            metadata: named(&["result.json", "result.txt"]),
            refs: None,
        },
        Request {
            name: TARGETS,
            version: VERSION,
            kind: "rpc",
            description: "List all targets current build supports",
            opts: Some(Vec::new()),
            inputs: None,
            metadata: named(&["result.json", "result.txt"]),
            refs: None,
        },
        Request {
            name: DESCRIBE,
            version: VERSION,
            kind: "rpc",
            description: "List available subrequest types",
            opts: None,
            inputs: None,
            metadata: named(&["result.json", "result.txt"]),
            refs: None,
        },
    ];
    let mut rows = vec![vec![
        "NAME".to_string(),
        "VERSION".to_string(),
        "DESCRIPTION".to_string(),
    ]];
    for r in &all {
        rows.push(vec![
            r.name.trim_start_matches("frontend.").to_string(),
            r.version.to_string(),
            r.description.to_string(),
        ]);
    }
    BTreeMap::from([
        (
            "result.json".to_string(),
            serde_json::to_vec_pretty(&all).unwrap_or_default(),
        ),
        ("result.txt".to_string(), table(&rows, 1).into_bytes()),
        ("version".to_string(), VERSION.as_bytes().to_vec()),
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
