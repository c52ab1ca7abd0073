//! The image store: names for images whose blobs are in the content store,
//! as containerd's image metadata keeps them (`docker.io/library/app:latest`
//! → the root descriptor, a manifest or an index).
//!
//! The `image` exporter names what it built here (`store=true`),
//! `image-resolve-mode=local` looks names up here before asking a
//! registry, and content garbage collection keeps every blob a name
//! reaches. Start with [`ImageStore::open`].
//!
//! The whole table is one small JSON file, rewritten atomically (write,
//! fsync, rename) on every change, so a crash leaves the old table or the
//! new one. Methods do file I/O: call them from blocking threads.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::export::Timestamp;
use crate::types::Descriptor;

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store {path}: not a valid image table: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One named image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub target: Descriptor,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

/// Named images, shared by clones.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    table: Mutex<BTreeMap<String, ImageRecord>>,
}

impl ImageStore {
    /// Opens the table at `path` (a JSON file), empty when it does not
    /// exist yet.
    pub fn open(path: impl Into<PathBuf>) -> Result<ImageStore, ImageStoreError> {
        let path = path.into();
        let table = match fs::read(&path) {
            Ok(bytes) => {
                let records: Vec<ImageRecord> =
                    serde_json::from_slice(&bytes).map_err(|e| ImageStoreError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                records.into_iter().map(|r| (r.name.clone(), r)).collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(ImageStoreError::Io { path, source }),
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                path,
                table: Mutex::new(table),
            }),
        })
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, ImageRecord>> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image named `name` (a full reference, as
    /// [`crate::Reference`]'s `Display` writes it).
    pub fn get(&self, name: &str) -> Option<ImageRecord> {
        self.table().get(name).cloned()
    }

    /// Every named image, by name.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.table().values().cloned().collect()
    }

    /// Names `target` `name`, replacing what the name pointed at before
    /// (its creation time is kept).
    pub fn put(&self, name: &str, target: &Descriptor) -> Result<ImageRecord, ImageStoreError> {
        let now = Timestamp::from_system_time(std::time::SystemTime::now()).to_rfc3339();
        let mut table = self.table();
        let created_at = table
            .get(name)
            .map_or_else(|| now.clone(), |r| r.created_at.clone());
        let record = ImageRecord {
            name: name.to_string(),
            target: target.clone(),
            created_at,
            updated_at: now,
        };
        let previous = table.insert(name.to_string(), record.clone());
        if let Err(e) = self.persist(&table) {
            match previous {
                Some(p) => table.insert(name.to_string(), p),
                None => table.remove(name),
            };
            return Err(e);
        }
        Ok(record)
    }

    /// Removes `name`; whether it was there.
    pub fn delete(&self, name: &str) -> Result<bool, ImageStoreError> {
        let mut table = self.table();
        let Some(previous) = table.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.persist(&table) {
            table.insert(name.to_string(), previous);
            return Err(e);
        }
        Ok(true)
    }

    fn persist(&self, table: &BTreeMap<String, ImageRecord>) -> Result<(), ImageStoreError> {
        let path = &self.inner.path;
        let io_err = |source| ImageStoreError::Io {
            path: path.clone(),
            source,
        };
        let records: Vec<&ImageRecord> = table.values().collect();
        let bytes = serde_json::to_vec_pretty(&records).map_err(|e| io_err(io::Error::other(e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn desc(n: u8) -> Descriptor {
        Descriptor::new(
            crate::media_types::OCI_MANIFEST,
            Digest::sha256_of(&[n]),
            10 + n as u64,
        )
    }

    #[test]
    fn names_survive_reopening_and_keep_their_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let store = ImageStore::open(&path).unwrap();
        assert!(store.get("docker.io/library/a:latest").is_none());
        let first = store.put("docker.io/library/a:latest", &desc(1)).unwrap();
        store.put("docker.io/library/b:v1", &desc(2)).unwrap();
        let again = store.put("docker.io/library/a:latest", &desc(3)).unwrap();
        assert_eq!(again.created_at, first.created_at);

        let reopened = ImageStore::open(&path).unwrap();
        let names: Vec<String> = reopened.list().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            ["docker.io/library/a:latest", "docker.io/library/b:v1"]
        );
        assert_eq!(
            reopened.get("docker.io/library/a:latest").unwrap().target,
            desc(3)
        );
        assert!(reopened.delete("docker.io/library/b:v1").unwrap());
        assert!(!reopened.delete("docker.io/library/b:v1").unwrap());
        assert_eq!(ImageStore::open(&path).unwrap().list().len(), 1);
    }

    #[test]
    fn a_corrupt_table_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        fs::write(&path, b"{not json").unwrap();
        let err = ImageStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid image table"), "{err}");
    }
}
