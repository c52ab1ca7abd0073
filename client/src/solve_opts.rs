//! buildctl's `build` flags, parsed and checked, and the `SolveRequest` they
//! make.
//!
//! [`BuildFlags::to_request`] is where flag syntax becomes wire data: exporters
//! (new `Exporters` field plus the first one mirrored into the deprecated
//! fields, as buildctl ≥ v0.13 sends them), frontend attrs, cache
//! imports/exports and entitlements. What the session will serve (local
//! dirs, output targets, secrets, SSH) is returned beside the request.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bk_proto::moby::buildkit::v1::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest};
use bk_proto::pb::Definition;

use crate::csv::key_values;

/// The flags of `buildctl build`, as given.
#[derive(Debug, Clone, Default)]
pub struct BuildFlags {
    pub output: Vec<String>,
    pub local: Vec<String>,
    pub oci_layout: Vec<String>,
    pub frontend: Option<String>,
    pub opt: Vec<String>,
    pub no_cache: bool,
    pub export_cache: Vec<String>,
    pub import_cache: Vec<String>,
    pub secret: Vec<String>,
    pub allow: Vec<String>,
    pub ssh: Vec<String>,
}

/// Where an exporter's output goes on the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// The daemon's side of the export (registry push, image store).
    None,
    Dir(PathBuf),
    File(PathBuf),
    Stdout,
    /// An OCI layout directory the daemon writes blobs into through the
    /// session's content store (`oci`/`docker` with `tar=false`).
    Store(PathBuf),
}

impl OutputTarget {
    /// The session's receiving end for this output, if it has one.
    pub fn file_send_target(&self) -> Option<bk_session::filesync::FileSendTarget> {
        use bk_session::filesync::FileSendTarget;
        match self {
            OutputTarget::None | OutputTarget::Store(_) => None,
            OutputTarget::Dir(d) => Some(FileSendTarget::Dir(d.clone())),
            OutputTarget::File(f) => Some(FileSendTarget::File(f.clone())),
            OutputTarget::Stdout => Some(FileSendTarget::Stdout),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    pub exporter_type: String,
    pub attrs: BTreeMap<String, String>,
    pub target: OutputTarget,
}

pub use bk_session::secrets::SecretSource;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    /// Agent sockets or key files; empty means `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

/// A request ready to send, and what the client's session must serve.
#[derive(Debug, Clone)]
pub struct PreparedBuild {
    pub request: SolveRequest,
    pub local_dirs: BTreeMap<String, PathBuf>,
    pub exports: Vec<ExportEntry>,
    pub secrets: Vec<SecretSpec>,
    pub ssh: Vec<SshSpec>,
}

impl BuildFlags {
    /// Checks the flags and builds the request. Errors are one line, worded
    /// as buildctl words them where it has a message.
    pub fn to_request(
        &self,
        definition: Option<Definition>,
        build_ref: &str,
        session_id: &str,
    ) -> Result<PreparedBuild, String> {
        let exports = self
            .output
            .iter()
            .map(|o| parse_output(o))
            .collect::<Result<Vec<_>, _>>()?;

        let mut local_dirs = BTreeMap::new();
        for spec in &self.local {
            let (name, dir) = spec
                .split_once('=')
                .ok_or_else(|| format!("invalid value {spec:?} for --local: expected name=dir"))?;
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                return Err(format!(
                    "--local {name}: {} is not a directory",
                    dir.display()
                ));
            }
            local_dirs.insert(name.to_string(), dir);
        }

        let mut frontend_attrs = BTreeMap::new();
        for opt in &self.opt {
            let (k, v) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            frontend_attrs.insert(k.to_string(), v.to_string());
        }
        if self.no_cache {
            frontend_attrs.insert("no-cache".to_string(), String::new());
        }

        let imports = self
            .import_cache
            .iter()
            .map(|c| parse_cache(c, "--import-cache"))
            .collect::<Result<Vec<_>, _>>()?;
        let exports_cache = self
            .export_cache
            .iter()
            .map(|c| parse_cache(c, "--export-cache"))
            .collect::<Result<Vec<_>, _>>()?;
        if self.frontend.is_some() && !imports.is_empty() {
            // Frontends read cache imports from this attr and pass them back
            // through the gateway; buildctl sends both.
            let json: Vec<serde_json::Value> = imports
                .iter()
                .map(|e| serde_json::json!({"Type": e.r#type, "Attrs": e.attrs}))
                .collect();
            frontend_attrs.insert(
                "cache-imports".to_string(),
                serde_json::Value::Array(json).to_string(),
            );
        }

        let secrets = self
            .secret
            .iter()
            .map(|s| parse_secret(s))
            .collect::<Result<Vec<_>, _>>()?;
        let ssh = self
            .ssh
            .iter()
            .map(|s| parse_ssh(s))
            .collect::<Result<Vec<_>, _>>()?;

        if definition.is_none() && self.frontend.is_none() {
            return Err("no LLB definition on stdin and no --frontend given".to_string());
        }

        let wire_exports: Vec<Exporter> = exports
            .iter()
            .map(|e| Exporter {
                r#type: e.exporter_type.clone(),
                attrs: e.attrs.clone(),
            })
            .collect();
        let (deprecated_type, deprecated_attrs) = wire_exports
            .first()
            .map(|e| (e.r#type.clone(), e.attrs.clone()))
            .unwrap_or_default();
        let request = SolveRequest {
            r#ref: build_ref.to_string(),
            definition,
            exporter_deprecated: deprecated_type,
            exporter_attrs_deprecated: deprecated_attrs,
            session: session_id.to_string(),
            frontend: self.frontend.clone().unwrap_or_default(),
            frontend_attrs,
            cache: Some(CacheOptions {
                exports: exports_cache,
                imports,
                ..Default::default()
            }),
            entitlements: self.allow.clone(),
            exporters: wire_exports,
            ..Default::default()
        };
        Ok(PreparedBuild {
            request,
            local_dirs,
            exports,
            secrets,
            ssh,
        })
    }
}

/// One `--output` value.
pub fn parse_output(text: &str) -> Result<ExportEntry, String> {
    let mut exporter_type = String::new();
    let mut attrs = BTreeMap::new();
    for (key, value) in key_values(text)? {
        let key = key.to_ascii_lowercase();
        if key == "type" {
            exporter_type = value;
        } else {
            attrs.insert(key, value);
        }
    }
    if exporter_type.is_empty() {
        return Err("--output requires type=<type>".to_string());
    }
    if let Some(v) = attrs.get("output") {
        return Err(format!(
            "output={v} not supported for --output, you meant dest={v}?"
        ));
    }
    let dest = attrs.get("dest").cloned();
    let (supports_file, supports_dir) = match exporter_type.as_str() {
        "local" => (false, true),
        "tar" => (true, false),
        "oci" | "docker" => {
            let tar = attrs.get("tar").map(|t| t != "false").unwrap_or(true);
            (tar, !tar)
        }
        _ => (false, false),
    };
    let target = if supports_dir {
        let dest = dest
            .ok_or_else(|| format!("output directory is required for {exporter_type} exporter"))?;
        if exporter_type == "local" {
            OutputTarget::Dir(dest.into())
        } else {
            OutputTarget::Store(dest.into())
        }
    } else if supports_file {
        match dest.as_deref() {
            None | Some("-") => OutputTarget::Stdout,
            Some(path) => {
                if std::path::Path::new(path).is_dir() {
                    return Err(
                        "invalid output option: output: destination file is a directory"
                            .to_string(),
                    );
                }
                OutputTarget::File(path.into())
            }
        }
    } else {
        OutputTarget::None
    };
    if target != OutputTarget::None {
        attrs.remove("dest");
    }
    Ok(ExportEntry {
        exporter_type,
        attrs,
        target,
    })
}

/// One `--export-cache`/`--import-cache` value; a bare reference means a
/// registry cache, as in older buildctl.
fn parse_cache(text: &str, flag: &str) -> Result<CacheOptionsEntry, String> {
    if !text.contains('=') {
        return Ok(CacheOptionsEntry {
            r#type: "registry".to_string(),
            attrs: BTreeMap::from([("ref".to_string(), text.to_string())]),
        });
    }
    let mut entry = CacheOptionsEntry::default();
    for (key, value) in key_values(text)? {
        if key == "type" {
            entry.r#type = value;
        } else {
            entry.attrs.insert(key, value);
        }
    }
    if entry.r#type.is_empty() {
        return Err(format!("{flag} requires type=<type>"));
    }
    Ok(entry)
}

/// One `--secret` value: `id=x,src=path`, `id=x,env=VAR` or
/// `id=x,type=env`.
fn parse_secret(text: &str) -> Result<SecretSpec, String> {
    let mut id = String::new();
    let mut kind = String::from("file");
    let mut src = None;
    let mut env = None;
    for (key, value) in key_values(text)? {
        match key.to_ascii_lowercase().as_str() {
            "id" => id = value,
            "type" => kind = value,
            "src" | "source" => src = Some(value),
            "env" => env = Some(value),
            other => return Err(format!("unexpected key '{other}' in '{text}'")),
        }
    }
    if id.is_empty() {
        return Err(format!("secret {text:?}: id is required"));
    }
    let source = match (kind.as_str(), src, env) {
        (_, Some(_), Some(_)) => return Err(format!("secret {id}: src and env are exclusive")),
        (_, None, Some(var)) => SecretSource::Env(var),
        ("env", Some(var), None) => SecretSource::Env(var),
        ("env", None, None) => SecretSource::Env(id.clone()),
        ("file", Some(path), None) => SecretSource::File(path.into()),
        ("file", None, None) => SecretSource::File(id.clone().into()),
        (other, _, _) => return Err(format!("secret {id}: unsupported type {other:?}")),
    };
    Ok(SecretSpec { id, source })
}

/// One `--ssh` value: `default`, `id`, or `id=path[,path…]`.
fn parse_ssh(text: &str) -> Result<SshSpec, String> {
    let (id, paths) = match text.split_once('=') {
        Some((id, paths)) => (
            id,
            paths
                .split(',')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        ),
        None => (text, Vec::new()),
    };
    if id.is_empty() {
        return Err(format!("invalid --ssh value {text:?}"));
    }
    Ok(SshSpec {
        id: id.to_string(),
        paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> BuildFlags {
        BuildFlags {
            frontend: Some("dockerfile.v0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn outputs_mirror_first_exporter_into_deprecated_fields() {
        let mut f = flags();
        f.output = vec![
            "type=image,name=localhost:5000/app,push=true".into(),
            "type=local,dest=/tmp/out".into(),
        ];
        let p = f.to_request(None, "ref1", "sess1").unwrap();
        assert_eq!(p.request.exporters.len(), 2);
        assert_eq!(p.request.exporter_deprecated, "image");
        assert_eq!(p.request.exporter_attrs_deprecated["push"], "true");
        assert_eq!(p.exports[1].target, OutputTarget::Dir("/tmp/out".into()));
        assert!(!p.request.exporters[1].attrs.contains_key("dest"));
        assert_eq!(p.request.session, "sess1");
    }

    #[test]
    fn output_errors_match_buildctl() {
        assert_eq!(
            parse_output("dest=x").unwrap_err(),
            "--output requires type=<type>"
        );
        assert_eq!(
            parse_output("type=local").unwrap_err(),
            "output directory is required for local exporter"
        );
        assert!(
            parse_output("type=local,output=x")
                .unwrap_err()
                .contains("you meant dest=x")
        );
        assert_eq!(
            parse_output("type=tar").unwrap().target,
            OutputTarget::Stdout
        );
        assert_eq!(
            parse_output("type=oci,tar=false,dest=d").unwrap().target,
            OutputTarget::Store("d".into())
        );
    }

    #[test]
    fn opts_cache_secrets_ssh() {
        let mut f = flags();
        f.opt = vec!["build-arg:A=1=2".into(), "target=t".into()];
        f.no_cache = true;
        f.import_cache = vec!["type=registry,ref=r/c".into(), "legacy/ref".into()];
        f.secret = vec![
            "id=a,src=/x".into(),
            "id=B,env=VAR".into(),
            "id=C,type=env".into(),
        ];
        f.ssh = vec!["default".into(), "k=/a,/b".into()];
        let p = f.to_request(None, "r", "s").unwrap();
        assert_eq!(p.request.frontend_attrs["build-arg:A"], "1=2");
        assert_eq!(p.request.frontend_attrs["no-cache"], "");
        assert!(p.request.frontend_attrs["cache-imports"].contains("\"Type\":\"registry\""));
        let cache = p.request.cache.unwrap();
        assert_eq!(cache.imports[1].attrs["ref"], "legacy/ref");
        assert_eq!(p.secrets[1].source, SecretSource::Env("VAR".into()));
        assert_eq!(p.secrets[2].source, SecretSource::Env("C".into()));
        assert_eq!(p.ssh[1].paths.len(), 2);
        assert!(parse_secret("src=/x").is_err());
        assert!(BuildFlags::default().to_request(None, "r", "s").is_err());
    }

    #[test]
    fn local_dirs_must_exist() {
        let mut f = flags();
        f.local = vec!["context=/definitely/not/here".into()];
        assert!(
            f.to_request(None, "r", "s")
                .unwrap_err()
                .contains("not a directory")
        );
        f.local = vec!["context".into()];
        assert!(
            f.to_request(None, "r", "s")
                .unwrap_err()
                .contains("name=dir")
        );
    }
}
