//! The client's half of an `oci`/`docker` export with `tar=false`: the
//! daemon writes blobs into the session's `export` content store (a
//! directory served by `bk_session::content::LocalStores`); after the build
//! the client names the result in the directory's `index.json` and writes
//! `oci-layout`, as buildctl does.
//!
//! `index.json` is merged, not replaced: entries for other names stay, an
//! entry with the same image name and ref name is replaced. Start with
//! [`record_export`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use base64::Engine as _;
use bk_image::types::{Descriptor, Index};

const IMAGE_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Names the exported image in `dir`'s `index.json` from the exporter
/// response (`containerimage.descriptor`, `image.name`). Does nothing when
/// the response has no descriptor.
pub fn record_export(dir: &Path, response: &BTreeMap<String, String>) -> io::Result<()> {
    let Some(encoded) = response.get("containerimage.descriptor") else {
        return Ok(());
    };
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| invalid(&e))?;
    let descriptor: Descriptor = serde_json::from_slice(&bytes).map_err(|e| invalid(&e))?;
    let names: Vec<(String, String)> = match response.get("image.name") {
        Some(names) => names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| (n.to_string(), reference_object(n)))
            .collect(),
        None => vec![(String::new(), "latest".to_string())],
    };
    update_index(dir, &descriptor, &names)
}

/// The part of a reference after its name (`tag`, `tag@digest`,
/// `@digest`), as containerd's `reference.Parse(..).Object`.
fn reference_object(name: &str) -> String {
    let path_start = name.find('/').map_or(0, |i| i + 1);
    let path = &name[path_start..];
    match path.find([':', '@']) {
        Some(i) => {
            let object = &path[i..];
            object.strip_prefix(':').unwrap_or(object).to_string()
        }
        None => name.to_string(),
    }
}

fn update_index(dir: &Path, descriptor: &Descriptor, names: &[(String, String)]) -> io::Result<()> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let path = dir.join("index.json");
    let mut index: Index = match fs::read(&path) {
        Ok(b) if !b.is_empty() => serde_json::from_slice(&b).map_err(|e| invalid(&e))?,
        Ok(_) => empty_index(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => empty_index(),
        Err(e) => return Err(e),
    };
    if index.schema_version == 0 {
        index.schema_version = 2;
    }
    if index.media_type.is_empty() {
        index.media_type = INDEX_MEDIA_TYPE.to_string();
    }
    for (image_name, ref_name) in names {
        let annotation =
            |d: &Descriptor, key: &str| d.annotations.get(key).cloned().unwrap_or_default();
        index.manifests.retain(|m| {
            !(annotation(m, REF_NAME) == *ref_name && annotation(m, IMAGE_NAME) == *image_name)
        });
        let mut entry = descriptor.clone();
        if !image_name.is_empty() {
            entry
                .annotations
                .insert(IMAGE_NAME.into(), image_name.clone());
        }
        entry.annotations.insert(REF_NAME.into(), ref_name.clone());
        index.manifests.push(entry);
    }
    let bytes = bk_image::json::to_vec(&index).map_err(|e| invalid(&e))?;
    let tmp = dir.join(".index.json.tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, &path)
}

fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: INDEX_MEDIA_TYPE.to_string(),
        artifact_type: String::new(),
        manifests: Vec::new(),
        subject: None,
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(names: Option<&str>, digest: &str) -> BTreeMap<String, String> {
        let desc = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":10,"annotations":{{"org.opencontainers.image.created":"2024-01-02T03:04:05Z"}}}}"#
        );
        let mut r = BTreeMap::new();
        r.insert(
            "containerimage.descriptor".into(),
            base64::engine::general_purpose::STANDARD.encode(desc),
        );
        if let Some(n) = names {
            r.insert("image.name".into(), n.into());
        }
        r
    }

    #[test]
    fn reference_objects_as_containerd() {
        assert_eq!(reference_object("docker.io/library/foo:latest"), "latest");
        assert_eq!(reference_object("localhost:5000/a/b:v1"), "v1");
        assert_eq!(reference_object("x/y:t@sha256:ab"), "t@sha256:ab");
        assert_eq!(reference_object("x/y@sha256:ab"), "@sha256:ab");
    }

    #[test]
    fn merges_entries_by_name() {
        let dir = tempfile::tempdir().unwrap();
        record_export(
            dir.path(),
            &response(None, &format!("sha256:{}", "a".repeat(64))),
        )
        .unwrap();
        record_export(
            dir.path(),
            &response(
                Some("docker.io/library/app:v1"),
                &format!("sha256:{}", "b".repeat(64)),
            ),
        )
        .unwrap();
        record_export(
            dir.path(),
            &response(
                Some("docker.io/library/app:v1"),
                &format!("sha256:{}", "c".repeat(64)),
            ),
        )
        .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0]["digest"], format!("sha256:{}", "a".repeat(64)));
        assert_eq!(manifests[0]["annotations"][REF_NAME], "latest");
        assert_eq!(manifests[1]["digest"], format!("sha256:{}", "c".repeat(64)));
        assert_eq!(
            manifests[1]["annotations"][IMAGE_NAME],
            "docker.io/library/app:v1"
        );
        assert_eq!(manifests[1]["annotations"][REF_NAME], "v1");
        assert_eq!(
            manifests[1]["annotations"]["org.opencontainers.image.created"],
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            fs::read(dir.path().join("oci-layout")).unwrap(),
            br#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let raw = fs::read_to_string(dir.path().join("index.json")).unwrap();
        assert!(
            raw.starts_with(r#"{"schemaVersion":2,"mediaType":"#),
            "{raw}"
        );
    }
}
