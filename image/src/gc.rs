//! Content garbage collection: deletes the blobs nothing refers to.
//!
//! What is kept: every blob reachable from the roots the caller names
//! (image store targets, layers remembered for live snapshots), following
//! indexes to their manifests and manifests to their config and layers,
//! and every blob a [`crate::Lease`] holds (a pull or export in flight).
//! Start with [`collect_garbage`].

use std::collections::HashSet;

use serde::Deserialize;

use crate::content::{ContentError, ContentStore};
use crate::digest::Digest;
use crate::media_types;
use crate::types::Descriptor;

/// Manifests and indexes larger than this are not followed (nor written
/// by anyone we know).
const MAX_DOCUMENT: u64 = 16 << 20;

/// The children a manifest or index names, whichever it is.
#[derive(Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What a collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub deleted: Vec<Digest>,
    pub bytes: u64,
}

/// Every digest reachable from `roots`: the roots, and the manifests,
/// configs and layers their indexes and manifests name.
pub async fn reachable(
    store: &ContentStore,
    roots: Vec<Descriptor>,
) -> Result<HashSet<Digest>, ContentError> {
    let mut live: HashSet<Digest> = HashSet::new();
    let mut pending = roots;
    while let Some(desc) = pending.pop() {
        if !live.insert(desc.digest.clone()) {
            continue;
        }
        let mt = desc.media_type.as_str();
        if !(media_types::is_index_type(mt) || media_types::is_manifest_type(mt))
            || desc.size > MAX_DOCUMENT
        {
            continue;
        }
        let bytes = match store.read_blob(&desc.digest, MAX_DOCUMENT).await {
            Ok(b) => b,
            // A root whose blob is gone keeps nothing else.
            Err(e) if e.kind() == crate::content::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Ok(children) = serde_json::from_slice::<Children>(&bytes) {
            pending.extend(children.manifests);
            pending.extend(children.config);
            pending.extend(children.layers);
        }
    }
    Ok(live)
}

/// Deletes every blob in `store` that neither `roots` reach nor a lease
/// holds.
pub async fn collect_garbage(
    store: &ContentStore,
    roots: Vec<Descriptor>,
) -> Result<GcReport, ContentError> {
    let live = reachable(store, roots).await?;
    let mut garbage = Vec::new();
    let mut sizes = std::collections::HashMap::new();
    for info in store.list().await? {
        if !live.contains(&info.digest) {
            sizes.insert(info.digest.clone(), info.size);
            garbage.push(info.digest);
        }
    }
    let deleted = store.delete_unprotected(garbage).await?;
    let bytes = deleted.iter().filter_map(|d| sizes.get(d)).sum();
    Ok(GcReport { deleted, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn blob(store: &ContentStore, media_type: &str, data: &[u8]) -> Descriptor {
        let commit = store.write_blob(data.to_vec(), None).await.unwrap();
        Descriptor::new(media_type, commit.info.digest, commit.info.size)
    }

    #[tokio::test]
    async fn keeps_what_roots_and_leases_reach_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).await.unwrap();
        let config = blob(&store, media_types::OCI_CONFIG, b"{\"config\":1}").await;
        let layer = blob(&store, media_types::OCI_LAYER_GZIP, b"layer").await;
        let manifest = format!(
            "{{\"schemaVersion\":2,\"config\":{},\"layers\":[{}]}}",
            serde_json::to_string(&config).unwrap(),
            serde_json::to_string(&layer).unwrap()
        );
        let manifest = blob(&store, media_types::OCI_MANIFEST, manifest.as_bytes()).await;
        let index = format!(
            "{{\"schemaVersion\":2,\"manifests\":[{}]}}",
            serde_json::to_string(&manifest).unwrap()
        );
        let index = blob(&store, media_types::OCI_INDEX, index.as_bytes()).await;
        let stray = blob(&store, media_types::OCI_LAYER_GZIP, b"stray").await;
        let leased = blob(&store, media_types::OCI_LAYER_GZIP, b"leased").await;
        let lease = store.lease();
        lease.add(&leased.digest);

        let report = collect_garbage(&store, vec![index.clone()]).await.unwrap();
        assert_eq!(report.deleted, vec![stray.digest.clone()]);
        assert_eq!(report.bytes, 5);
        for kept in [&index, &manifest, &config, &layer, &leased] {
            assert!(store.exists(&kept.digest).await.unwrap());
        }

        drop(lease);
        let report = collect_garbage(&store, vec![]).await.unwrap();
        assert_eq!(report.deleted.len(), 5);
        assert!(store.list().await.unwrap().is_empty());
    }
}
