//! The frontends built into the daemon: `dockerfile.v0` (and `gateway.v0`
//! asked to run it). A frontend turns attrs and the client's files into a
//! definition; the caller solves it, lazily where the gateway allows.
//!
//! Start at [`run`]. The daemon supplies a [`FrontendHost`]: solving the
//! small definitions that fetch the Dockerfile, reading files out of their
//! results, resolving image configs.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bk_llb::builder;
use bk_proto::pb;
use tonic::Status;

use crate::dockerfile::convert::{self, ConvertOptions, ImageResolver};

pub const DOCKERFILE: &str = "dockerfile.v0";
pub const GATEWAY: &str = "gateway.v0";

/// Lint warnings that carry the Dockerfile (for clients' excerpts).
const WARNINGS_WITH_SOURCE: usize = 32;
/// Largest Dockerfile sent along with warnings.
const MAX_WARNING_SOURCE: usize = 1 << 20;

/// Largest Dockerfile or ignore file read.
const MAX_FILE: usize = 16 << 20;

/// What a frontend needs from the daemon.
#[async_trait]
pub trait FrontendHost<R>: Send + Sync {
    /// Solves a definition now (the Dockerfile's own transfer).
    async fn solve(&self, definition: pb::Definition) -> Result<R, Status>;
    /// A file of a result, `None` when it does not exist.
    async fn read_file(
        &self,
        result: &R,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Status>;
    fn images(&self) -> &dyn ImageResolver;
    /// The platform of the worker (build platform and default target).
    fn platform(&self) -> pb::Platform;
    /// The session the client serves its files through.
    fn session_id(&self) -> String;
    /// A warning in the build's progress (lint findings).
    fn warn(&self, warning: bk_proto::moby::buildkit::v1::VertexWarning);
}

/// A frontend's answer: the definition of the result — or, for a
/// multi-platform build, one per platform id (`linux/arm64`) — and
/// metadata such as the image config (`containerimage.config`, per platform
/// `containerimage.config/<id>`, and `refs.platforms`).
pub struct FrontendOutput {
    pub result: FrontendResult,
    pub metadata: BTreeMap<String, Vec<u8>>,
}

pub enum FrontendResult {
    Single(pb::Definition),
    Platforms(Vec<(String, pb::Definition)>),
}

/// `refs.platforms` metadata: the platforms of a result, by id, as
/// BuildKit's exporters read them.
pub fn platforms_metadata(platforms: &[(String, pb::Platform)]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(id, p)| {
            let mut platform = serde_json::Map::new();
            platform.insert("architecture".into(), p.architecture.clone().into());
            platform.insert("os".into(), p.os.clone().into());
            if !p.os_version.is_empty() {
                platform.insert("os.version".into(), p.os_version.clone().into());
            }
            if !p.variant.is_empty() {
                platform.insert("variant".into(), p.variant.clone().into());
            }
            serde_json::json!({"id": id, "platform": platform})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "platforms": list })).unwrap_or_default()
}

/// Whether `name` is a frontend this daemon runs (with the attrs given).
pub fn is_builtin(name: &str, attrs: &BTreeMap<String, String>) -> bool {
    name == DOCKERFILE
        || (name == GATEWAY
            && attrs
                .get("source")
                .is_some_and(|s| s == DOCKERFILE || s == "dockerfile"))
}

/// Runs frontend `name` with `attrs` and `inputs` (`FrontendInputs`).
pub async fn run<R: Send + Sync>(
    name: &str,
    host: &dyn FrontendHost<R>,
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
) -> Result<FrontendOutput, Status> {
    if !is_builtin(name, attrs) {
        return Err(Status::unimplemented(match name {
            GATEWAY => format!(
                "frontend images are not supported yet by buildkit-rs (source {:?})",
                attrs.get("source").map(String::as_str).unwrap_or_default()
            ),
            other => format!("frontend {other:?} not found"),
        }));
    }
    dockerfile(host, attrs, inputs).await
}

fn attr<'a>(attrs: &'a BTreeMap<String, String>, key: &str, default: &'a str) -> &'a str {
    attrs
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or(default)
}

/// A local source of the client's, only the files named.
fn local_files(
    name: &str,
    session: &str,
    files: &[&str],
    hint: &str,
    display: &str,
) -> pb::Definition {
    let attrs = BTreeMap::from([
        ("local.followpaths".to_string(), serde_json_list(files)),
        ("local.sharedkeyhint".to_string(), hint.to_string()),
        ("local.session".to_string(), session.to_string()),
        ("local.differ".to_string(), "none".to_string()),
    ]);
    builder::local(name, attrs).with_name(display).marshal()
}

fn serde_json_list(items: &[&str]) -> String {
    let owned: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    convert::json_strings(&owned)
}

/// `.dockerignore` lines as BuildKit reads them: comments and blanks
/// dropped, each pattern trimmed and cleaned, a leading `/` removed.
pub fn parse_ignore_file(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (negated, pattern) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let cleaned = convert::path_clean(pattern);
        let cleaned = cleaned.strip_prefix('/').unwrap_or(&cleaned).to_string();
        let cleaned = if cleaned.is_empty() {
            ".".to_string()
        } else {
            cleaned
        };
        out.push(if negated {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

async fn dockerfile<R: Send + Sync>(
    host: &dyn FrontendHost<R>,
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
) -> Result<FrontendOutput, Status> {
    let filename = attr(attrs, "filename", "Dockerfile").to_string();
    let dockerfile_key = attr(attrs, "dockerfilekey", "dockerfile").to_string();
    let context_key = attr(attrs, "contextkey", "context").to_string();
    let session = host.session_id();
    let ignore_name = format!("{filename}.dockerignore");

    // The Dockerfile, and its own ignore file beside it.
    let definition = match inputs.get(&dockerfile_key) {
        Some(def) => def.clone(),
        None => local_files(
            &dockerfile_key,
            &session,
            &[&filename, &ignore_name],
            &filename,
            &format!("[internal] load build definition from {filename}"),
        ),
    };
    let files = host.solve(definition.clone()).await?;
    let text = host
        .read_file(&files, &filename, MAX_FILE)
        .await?
        .ok_or_else(|| {
            Status::not_found(format!(
                "failed to read dockerfile: open {filename}: no such file or directory"
            ))
        })?;

    // `# syntax=` (or BUILDKIT_SYNTAX) hands the build to a frontend image.
    // Docker's own Dockerfile frontend is the one built in here; any other
    // image is refused plainly rather than built with different rules.
    if let Some((name, line)) = requested_syntax(attrs, &text)
        && !is_dockerfile_frontend(&name)
    {
        let lines: Vec<_> = (line > 0)
            .then(|| crate::dockerfile::LineRange::new(line, line))
            .into_iter()
            .collect();
        return Err(with_source(
            &format!(
                "frontend image {name} (from the syntax directive) is not supported yet by buildkit-rs: only the built-in Dockerfile frontend runs"
            ),
            &filename,
            &text,
            &lines,
        ));
    }

    // Ignore patterns: `<Dockerfile>.dockerignore`, else the context's.
    let ignore = match host.read_file(&files, &ignore_name, MAX_FILE).await? {
        Some(text) => Some(text),
        None if !inputs.contains_key(&context_key) => {
            let def = local_files(
                &context_key,
                &session,
                &[".dockerignore"],
                ".dockerignore",
                "[internal] load .dockerignore",
            );
            let result = host.solve(def).await?;
            host.read_file(&result, ".dockerignore", MAX_FILE).await?
        }
        None => None,
    };
    let excludes = ignore.map(|t| parse_ignore_file(&t)).unwrap_or_default();

    let mut opts =
        ConvertOptions::from_attrs(attrs, host.platform(), &session, &context_key, excludes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Steps map back to their lines, so a failing one is shown in place.
    opts.source_map = Some(convert::SourceMap {
        filename: filename.clone(),
        definition: None,
    });
    // A subrequest answers with metadata instead of a build.
    match attrs.get("requestid").map(String::as_str) {
        None | Some("") => {}
        Some(crate::subrequest::LINT) => {
            let sink = crate::dockerfile::LintSink::default();
            opts.lint = Some(sink.clone());
            // Without a target, every stage is linted.
            opts.all_stages = opts.target.is_none();
            let converted = convert::convert(&text, &opts, host.images()).await;
            let error = converted.as_ref().err();
            let metadata = crate::subrequest::lint_result(
                &filename,
                &text,
                &sink.take(),
                error.map(|e| (e.message.as_str(), e.locations.as_slice())),
            );
            return Ok(FrontendOutput {
                result: FrontendResult::Single(pb::Definition::default()),
                metadata,
            });
        }
        Some(crate::subrequest::TARGETS) => {
            let metadata =
                crate::subrequest::targets_result(&text).map_err(Status::invalid_argument)?;
            return Ok(FrontendOutput {
                result: FrontendResult::Single(pb::Definition::default()),
                metadata,
            });
        }
        Some(crate::subrequest::OUTLINE) => {
            let converted = convert::convert(&text, &opts, host.images())
                .await
                .map_err(|e| with_source(&e.message, &filename, &text, &e.locations))?;
            return Ok(FrontendOutput {
                result: FrontendResult::Single(pb::Definition::default()),
                metadata: crate::subrequest::outline_result(&converted.outline, &text),
            });
        }
        Some(crate::subrequest::DESCRIBE) => {
            return Ok(FrontendOutput {
                result: FrontendResult::Single(pb::Definition::default()),
                metadata: crate::subrequest::describe_result(),
            });
        }
        Some(other) => {
            return Err(Status::unimplemented(format!(
                "unsupported request {other}"
            )));
        }
    }

    // Lint findings go to the progress stream on the vertex that loaded
    // the Dockerfile, once (for the first platform), even when the
    // conversion then fails.
    let lint = LintTarget {
        vertex: head_digest(&definition),
        info: pb::SourceInfo {
            filename: filename.clone(),
            data: text.clone(),
            definition: Some(definition),
            language: "Dockerfile".to_string(),
        },
    };
    let sink = crate::dockerfile::LintSink::default();
    opts.lint = Some(sink.clone());
    if !opts.multi_platform {
        let converted = convert::convert(&text, &opts, host.images()).await;
        lint.send(host, &sink);
        let converted =
            converted.map_err(|e| with_source(&e.message, &filename, &text, &e.locations))?;
        let metadata = BTreeMap::from([(
            "containerimage.config".to_string(),
            converted.image_config.clone(),
        )]);
        return Ok(FrontendOutput {
            result: FrontendResult::Single(converted.definition),
            metadata,
        });
    }
    // One conversion per platform, each with its own target platform.
    let targets = if opts.platforms.is_empty() {
        vec![host.platform()]
    } else {
        opts.platforms.clone()
    };
    let mut metadata = BTreeMap::new();
    let mut platforms = Vec::new();
    let mut definitions = Vec::new();
    for (i, target) in targets.into_iter().enumerate() {
        let mut per = opts.clone();
        per.target_platform = Some(target.clone());
        if i > 0 {
            per.lint = None;
        }
        let converted = convert::convert(&text, &per, host.images()).await;
        if i == 0 {
            lint.send(host, &sink);
        }
        let converted =
            converted.map_err(|e| with_source(&e.message, &filename, &text, &e.locations))?;
        let id = platform_id(&target);
        if platforms.iter().any(|(seen, _)| *seen == id) {
            continue;
        }
        metadata.insert(
            format!("containerimage.config/{id}"),
            converted.image_config,
        );
        definitions.push((id.clone(), converted.definition));
        platforms.push((id, target));
    }
    metadata.insert("refs.platforms".to_string(), platforms_metadata(&platforms));
    Ok(FrontendOutput {
        result: FrontendResult::Platforms(definitions),
        metadata,
    })
}

/// The frontend image a build asks for, and the directive's line (0 for
/// the build-arg).
fn requested_syntax(attrs: &BTreeMap<String, String>, text: &[u8]) -> Option<(String, usize)> {
    if let Some(v) = attrs
        .get("build-arg:BUILDKIT_SYNTAX")
        .filter(|v| !v.trim().is_empty())
    {
        let name = v.split_whitespace().next().unwrap_or_default();
        return Some((name.to_string(), 0));
    }
    crate::dockerfile::detect_syntax(text).map(|d| (d.name, d.line))
}

/// Docker's Dockerfile frontend images (any tag or digest): the language
/// this daemon implements itself.
fn is_dockerfile_frontend(name: &str) -> bool {
    let Ok(reference) = bk_image::Reference::parse_normalized_named(name) else {
        return false;
    };
    matches!(
        reference.name().as_str(),
        "docker.io/docker/dockerfile" | "docker.io/docker/dockerfile-upstream"
    )
}

/// Where lint warnings are reported: the vertex that loaded the
/// Dockerfile, with the file for clients to show excerpts from.
struct LintTarget {
    vertex: String,
    info: pb::SourceInfo,
}

impl LintTarget {
    fn send<R>(&self, host: &dyn FrontendHost<R>, sink: &crate::dockerfile::LintSink) {
        // Each warning with the source is a copy of the whole Dockerfile
        // kept in the progress record: only the first few carry it, and
        // only for files of a reasonable size.
        let with_source = if self.info.data.len() <= MAX_WARNING_SOURCE {
            WARNINGS_WITH_SOURCE
        } else {
            0
        };
        for (i, w) in sink.take().into_iter().enumerate() {
            let ranges = pb_ranges(&w.location);
            host.warn(bk_proto::moby::buildkit::v1::VertexWarning {
                vertex: self.vertex.clone(),
                level: 1,
                short: w.short().into_bytes(),
                detail: vec![w.description.as_bytes().to_vec()],
                url: w.url.to_string(),
                info: (i < with_source).then(|| self.info.clone()),
                ranges,
            });
        }
    }
}

/// The digest of the op a definition's result comes from (Go's
/// `Definition.Head`): the input of its closing op.
fn head_digest(def: &pb::Definition) -> String {
    use prost::Message;
    let Some(last) = def.def.last() else {
        return String::new();
    };
    match pb::Op::decode(last.as_slice()) {
        Ok(op) if op.op.is_none() => op
            .inputs
            .first()
            .map(|i| i.digest.clone())
            .unwrap_or_default(),
        _ => bk_llb::Digest::of(last).to_string(),
    }
}

/// `os/arch[/variant]`, as BuildKit names a platform's result.
pub fn platform_id(p: &pb::Platform) -> String {
    let mut id = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        id.push('/');
        id.push_str(&p.variant);
    }
    id
}

/// An error about Dockerfile lines, with BuildKit's `errdefs.Source` detail
/// (the file and the line ranges): buildctl and buildx print the excerpt.
pub fn with_source(
    message: &str,
    filename: &str,
    text: &[u8],
    lines: &[crate::dockerfile::LineRange],
) -> Status {
    if lines.is_empty() {
        return Status::new(tonic::Code::Unknown, message);
    }
    let info = pb::SourceInfo {
        filename: filename.to_string(),
        data: text.to_vec(),
        definition: None,
        language: "Dockerfile".to_string(),
    };
    let ranges = pb_ranges(lines);
    with_details(
        tonic::Code::Unknown,
        message,
        vec![source_detail(&info, &ranges)],
    )
}

/// Dockerfile line ranges as LLB source ranges (whole lines).
fn pb_ranges(lines: &[crate::dockerfile::LineRange]) -> Vec<pb::Range> {
    let at = |line: usize| {
        Some(pb::Position {
            line: line as i32,
            character: 0,
        })
    };
    lines
        .iter()
        .map(|r| pb::Range {
            start: at(r.start),
            end: at(r.end),
        })
        .collect()
}

/// A status carrying BuildKit's typed details (`Any` values in JSON, the
/// type URL ending in `+json`, as BuildKit's grpcerrors writes them).
pub fn with_details(code: tonic::Code, message: &str, details: Vec<prost_types::Any>) -> Status {
    use prost::Message;
    let status = bk_proto::google::rpc::Status {
        code: code as i32,
        message: message.to_string(),
        details,
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// `errdefs.Source` as Go's encoding/json writes the generated struct:
/// proto field names, empty fields left out, bytes in base64.
pub fn source_detail(info: &pb::SourceInfo, ranges: &[pb::Range]) -> prost_types::Any {
    let mut fields = Vec::new();
    if !info.filename.is_empty() {
        fields.push(format!("\"filename\":{}", json_string(&info.filename)));
    }
    if !info.data.is_empty() {
        fields.push(format!("\"data\":\"{}\"", base64_encode(&info.data)));
    }
    if !info.language.is_empty() {
        fields.push(format!("\"language\":{}", json_string(&info.language)));
    }
    let position = |p: &Option<pb::Position>| -> Option<String> {
        let p = p.as_ref()?;
        let mut f = Vec::new();
        if p.line != 0 {
            f.push(format!("\"line\":{}", p.line));
        }
        if p.character != 0 {
            f.push(format!("\"character\":{}", p.character));
        }
        Some(format!("{{{}}}", f.join(",")))
    };
    let ranges: Vec<String> = ranges
        .iter()
        .map(|r| {
            let mut f = Vec::new();
            if let Some(s) = position(&r.start) {
                f.push(format!("\"start\":{s}"));
            }
            if let Some(e) = position(&r.end) {
                f.push(format!("\"end\":{e}"));
            }
            format!("{{{}}}", f.join(","))
        })
        .collect();
    let mut json = format!("{{\"info\":{{{}}}", fields.join(","));
    if !ranges.is_empty() {
        json.push_str(&format!(",\"ranges\":[{}]", ranges.join(",")));
    }
    json.push('}');
    prost_types::Any {
        type_url: "github.com/moby/buildkit/errdefs.Source+json".to_string(),
        value: json.into_bytes(),
    }
}

/// `errdefs.Vertex`: which vertex failed.
pub fn vertex_detail(digest: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "github.com/moby/buildkit/errdefs.Vertex+json".to_string(),
        value: format!("{{\"digest\":{}}}", json_string(digest)).into_bytes(),
    }
}

fn json_string(s: &str) -> String {
    serde_json_list(&[s])
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_like_go() {
        assert_eq!(super::base64_encode(b""), "");
        assert_eq!(super::base64_encode(b"f"), "Zg==");
        assert_eq!(super::base64_encode(b"fo"), "Zm8=");
        assert_eq!(super::base64_encode(b"foo"), "Zm9v");
        assert_eq!(super::base64_encode(b"FROM x\n"), "RlJPTSB4Cg==");
    }

    use super::*;

    #[test]
    fn ignore_files_read_as_buildkit_reads_them() {
        let text = b"# comment\n\n  node_modules \n/build/../dist\n!keep.log\n*.log\r\n./\n";
        assert_eq!(
            parse_ignore_file(text),
            vec!["node_modules", "dist", "!keep.log", "*.log", "."]
        );
    }

    #[test]
    fn json_lists() {
        assert_eq!(serde_json_list(&["a", "b\"c"]), r#"["a","b\"c"]"#);
    }
}
