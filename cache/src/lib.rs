//! Build results on disk: snapshots, their records, and the result cache.
//!
//! A snapshot is a directory under `<root>/snapshots/<id>`; its record (kind,
//! description, times, size, mutability) lives in one crash-safe redb
//! database beside it, together with the result cache (cache key → record
//! ids) and the named mutable snapshots reused across builds (local
//! contexts). Start with [`CacheManager::open`]; [`Ref`] is a handle on an
//! immutable snapshot that keeps it from being pruned while held.
//!
//! A snapshot's directory is complete before its record is written, and a
//! start-up pass removes directories without records, so a daemon killed at
//! any moment never serves a half-written snapshot.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const RESULTS: TableDefinition<&str, &str> = TableDefinition::new("results");
const NAMED: TableDefinition<&str, &str> = TableDefinition::new("named");

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache database: {0}")]
    Db(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {0} not found")]
    NotFound(String),
}

fn db_err(e: impl std::fmt::Display) -> CacheError {
    CacheError::Db(e.to_string())
}

/// What kind of data a record holds, as `DiskUsage` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordType {
    Regular,
    Internal,
    Frontend,
    LocalSource,
    GitCheckout,
    CacheMount,
}

impl RecordType {
    /// The `UsageRecord.RecordType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Regular => "regular",
            RecordType::Internal => "internal",
            RecordType::Frontend => "frontend",
            RecordType::LocalSource => "source.local",
            RecordType::GitCheckout => "source.git.checkout",
            RecordType::CacheMount => "exec.cachemount",
        }
    }
}

/// One snapshot's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub kind: RecordType,
    pub description: String,
    pub mutable: bool,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    pub usage_count: u64,
    pub size: i64,
    pub parents: Vec<String>,
    /// Paths (absolute in the tree) a diff removes: absent from the
    /// snapshot's own tree, applied when it is merged onto another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<String>,
    /// The snapshot this one was made on top of (an exec's root input, a
    /// file op's base tree, the layer below): image layers are the diffs
    /// along this chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct RefInner {
    id: String,
    path: PathBuf,
    manager: Arc<Inner>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        let mut in_use = self
            .manager
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_use.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.id);
            }
        }
    }
}

/// A held snapshot. While any clone lives, prune leaves it alone.
#[derive(Clone)]
pub struct Ref(Arc<RefInner>);

impl std::fmt::Debug for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ref({})", self.0.id)
    }
}

impl Ref {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The snapshot's directory.
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

struct Inner {
    root: PathBuf,
    db: Database,
    in_use: Mutex<HashMap<String, usize>>,
}

/// The store of snapshots and records. Cheap to clone.
#[derive(Clone)]
pub struct CacheManager {
    inner: Arc<Inner>,
}

impl CacheManager {
    /// Opens (or creates) the store under `root` and removes leftovers of an
    /// interrupted run.
    pub fn open(root: &Path) -> Result<CacheManager, CacheError> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|source| CacheError::Io {
            op: "create",
            path: snapshots.clone(),
            source,
        })?;
        let db = Database::create(root.join("metadata.redb")).map_err(db_err)?;
        {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(RECORDS).map_err(db_err)?;
            tx.open_table(RESULTS).map_err(db_err)?;
            tx.open_table(NAMED).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let manager = CacheManager {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                db,
                in_use: Mutex::new(HashMap::new()),
            }),
        };
        manager.recover()?;
        Ok(manager)
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.inner.root.join("snapshots").join(id)
    }

    /// Drops directories without records and records without directories.
    fn recover(&self) -> Result<(), CacheError> {
        let records = self.records()?;
        let known: std::collections::HashSet<&str> =
            records.iter().map(|r| r.id.as_str()).collect();
        let dir = self.inner.root.join("snapshots");
        let entries = std::fs::read_dir(&dir).map_err(|source| CacheError::Io {
            op: "read",
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) {
                tracing::info!(snapshot = %name, "removing snapshot left by an interrupted run");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let missing: Vec<String> = records
            .iter()
            .filter(|r| !self.snapshot_dir(&r.id).is_dir())
            .map(|r| r.id.clone())
            .collect();
        if !missing.is_empty() {
            self.delete_records(&missing)?;
        }
        Ok(())
    }

    fn in_use_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ref on `id`; `in_use` is the caller's guard on the in-use map, held
    /// since it checked the record exists, so prune cannot slip between.
    fn hold_locked(&self, in_use: &mut HashMap<String, usize>, id: &str) -> Ref {
        *in_use.entry(id.to_string()).or_default() += 1;
        Ref(Arc::new(RefInner {
            id: id.to_string(),
            path: self.snapshot_dir(id),
            manager: self.inner.clone(),
        }))
    }

    /// A new, empty snapshot directory being written. Call
    /// [`CacheManager::commit`] when it is complete; dropping it unused
    /// leaves a directory the next start removes.
    pub fn create_dir(&self) -> Result<(String, PathBuf), CacheError> {
        let id = new_id();
        let path = self.snapshot_dir(&id);
        std::fs::create_dir(&path).map_err(|source| CacheError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
        Ok((id, path))
    }

    /// Records a completed snapshot directory and returns a held ref.
    pub fn commit(
        &self,
        id: &str,
        kind: RecordType,
        description: &str,
        parents: Vec<String>,
        mutable: bool,
    ) -> Result<Ref, CacheError> {
        self.commit_with_deletions(id, kind, description, parents, mutable, Vec::new())
    }

    /// [`CacheManager::commit`] for a diff: `deletions` are what it removes
    /// when merged onto another tree.
    pub fn commit_with_deletions(
        &self,
        id: &str,
        kind: RecordType,
        description: &str,
        parents: Vec<String>,
        mutable: bool,
        deletions: Vec<String>,
    ) -> Result<Ref, CacheError> {
        let path = self.snapshot_dir(id);
        let size = dir_size(&path);
        let record = Record {
            id: id.to_string(),
            kind,
            description: description.to_string(),
            mutable,
            created_at: now_secs(),
            last_used_at: None,
            usage_count: 0,
            size,
            parents,
            deletions,
            base: None,
        };
        let mut in_use = self.in_use_map();
        self.put_record(&record)?;
        Ok(self.hold_locked(&mut in_use, id))
    }

    fn put_record(&self, record: &Record) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(record).map_err(db_err)?;
        let tx = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(RECORDS).map_err(db_err)?;
            table
                .insert(record.id.as_str(), bytes.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Updates a mutable snapshot's record after it changed (size, use).
    pub fn touch(&self, id: &str) -> Result<(), CacheError> {
        let mut record = self
            .record(id)?
            .ok_or_else(|| CacheError::NotFound(id.to_string()))?;
        record.size = dir_size(&self.snapshot_dir(id));
        record.last_used_at = Some(now_secs());
        record.usage_count += 1;
        self.put_record(&record)
    }

    /// Records what snapshot `id` was made on top of.
    pub fn set_base(&self, id: &str, base: &str) -> Result<(), CacheError> {
        let mut record = self
            .record(id)?
            .ok_or_else(|| CacheError::NotFound(id.to_string()))?;
        record.base = Some(base.to_string());
        self.put_record(&record)
    }

    /// A small value kept under `key` (layer descriptors of snapshots).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), CacheError> {
        self.set_named(key, value)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.named(key)
    }

    pub fn record(&self, id: &str) -> Result<Option<Record>, CacheError> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RECORDS).map_err(db_err)?;
        let value = table.get(id).map_err(db_err)?;
        value
            .map(|v| serde_json::from_slice(v.value()).map_err(db_err))
            .transpose()
    }

    pub fn records(&self) -> Result<Vec<Record>, CacheError> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RECORDS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    /// Holds the snapshot `id` if it exists.
    pub fn get(&self, id: &str) -> Result<Option<Ref>, CacheError> {
        let mut in_use = self.in_use_map();
        Ok(self.record(id)?.map(|_| self.hold_locked(&mut in_use, id)))
    }

    /// Whether any [`Ref`] to `id` is alive.
    pub fn in_use(&self, id: &str) -> bool {
        self.in_use_map().contains_key(id)
    }

    /// The snapshot ids a cache key resolves to.
    pub fn result(&self, key: &str) -> Result<Option<Vec<String>>, CacheError> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RESULTS).map_err(db_err)?;
        let value = table.get(key).map_err(db_err)?;
        Ok(value.map(|v| {
            v.value()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        }))
    }

    pub fn set_result(&self, key: &str, ids: &[String]) -> Result<(), CacheError> {
        let joined = ids.join(",");
        let tx = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(RESULTS).map_err(db_err)?;
            table.insert(key, joined.as_str()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The mutable snapshot kept under `name` (a local context's shared key).
    pub fn named(&self, name: &str) -> Result<Option<String>, CacheError> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(NAMED).map_err(db_err)?;
        Ok(table
            .get(name)
            .map_err(db_err)?
            .map(|v| v.value().to_string()))
    }

    /// Every named value whose name starts with `prefix`.
    pub fn named_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, CacheError> {
        let tx = self.inner.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(NAMED).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    pub fn delete_named(&self, name: &str) -> Result<(), CacheError> {
        let tx = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(NAMED).map_err(db_err)?;
            table.remove(name).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn set_named(&self, name: &str, id: &str) -> Result<(), CacheError> {
        let tx = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(NAMED).map_err(db_err)?;
            table.insert(name, id).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Removes records (and everything pointing at them) and their
    /// directories. Records first: a crash in between leaves orphan
    /// directories, which [`CacheManager::open`] removes.
    fn delete_records(&self, ids: &[String]) -> Result<(), CacheError> {
        self.forget_records(ids)?;
        for id in ids {
            let _ = std::fs::remove_dir_all(self.snapshot_dir(id));
        }
        Ok(())
    }

    /// The database half of [`CacheManager::delete_records`].
    fn forget_records(&self, ids: &[String]) -> Result<(), CacheError> {
        let doomed: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let tx = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut records = tx.open_table(RECORDS).map_err(db_err)?;
            for id in ids {
                records.remove(id.as_str()).map_err(db_err)?;
            }
            let mut results = tx.open_table(RESULTS).map_err(db_err)?;
            let stale: Vec<String> = results
                .iter()
                .map_err(db_err)?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| v.value().split(',').any(|id| doomed.contains(id)))
                .map(|(k, _)| k.value().to_string())
                .collect();
            for key in stale {
                results.remove(key.as_str()).map_err(db_err)?;
            }
            let mut named = tx.open_table(NAMED).map_err(db_err)?;
            let stale: Vec<String> = named
                .iter()
                .map_err(db_err)?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| doomed.contains(v.value()))
                .map(|(k, _)| k.value().to_string())
                .collect();
            for key in stale {
                named.remove(key.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Removes every record not in use that `filter` accepts; returns what
    /// was removed. (Age and size limits arrive with garbage collection.)
    pub fn prune(&self, filter: impl Fn(&Record) -> bool) -> Result<Vec<Record>, CacheError> {
        let (victims, ids) = {
            // Nobody can take a ref between the choice and the forgetting;
            // once the records are gone, nobody can take one at all.
            let in_use = self.in_use_map();
            let victims: Vec<Record> = self
                .records()?
                .into_iter()
                .filter(|r| !in_use.contains_key(&r.id) && filter(r))
                .collect();
            let ids: Vec<String> = victims.iter().map(|r| r.id.clone()).collect();
            self.forget_records(&ids)?;
            (victims, ids)
        };
        for id in &ids {
            let _ = std::fs::remove_dir_all(self.snapshot_dir(id));
        }
        Ok(victims)
    }
}

/// A random 25-character base-36 id, the shape BuildKit's ids have.
pub fn new_id() -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if ok.is_err() {
        // Unique enough without randomness: time and a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..24].copy_from_slice(&n.to_le_bytes());
    }
    bytes
        .iter()
        .take(25)
        .map(|b| ALPHABET[(*b % 36) as usize] as char)
        .collect()
}

/// Bytes used by a tree (regular files' sizes, each inode once).
pub fn dir_size(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0i64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if seen.insert((meta.dev(), meta.ino())) {
                total += meta.len() as i64;
            }
        }
    }
    total
}

/// Records by id, for `DiskUsage`.
pub fn by_id(records: Vec<Record>) -> BTreeMap<String, Record> {
    records.into_iter().map(|r| (r.id.clone(), r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_survive_reopen_and_orphans_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let id;
        {
            let cache = CacheManager::open(tmp.path()).unwrap();
            let (new, path) = cache.create_dir().unwrap();
            std::fs::write(path.join("f"), b"12345").unwrap();
            let r = cache
                .commit(&new, RecordType::Regular, "test", vec![], false)
                .unwrap();
            cache
                .set_result("sha256:k", std::slice::from_ref(&new))
                .unwrap();
            cache.set_named("ctx::", &new).unwrap();
            id = r.id().to_string();
            // An interrupted write: a directory with no record.
            let (_orphan, orphan_path) = cache.create_dir().unwrap();
            std::fs::write(orphan_path.join("half"), b"x").unwrap();
        }
        let cache = CacheManager::open(tmp.path()).unwrap();
        let records = cache.records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].size, 5);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("snapshots"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(cache.result("sha256:k").unwrap(), Some(vec![id.clone()]));
        assert_eq!(cache.named("ctx::").unwrap(), Some(id.clone()));
        let held = cache.get(&id).unwrap().unwrap();
        assert_eq!(std::fs::read(held.path().join("f")).unwrap(), b"12345");
    }

    #[test]
    fn prune_skips_what_is_held_and_forgets_results() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(tmp.path()).unwrap();
        let (a, _) = cache.create_dir().unwrap();
        let held = cache
            .commit(&a, RecordType::Regular, "a", vec![], false)
            .unwrap();
        let (b, _) = cache.create_dir().unwrap();
        drop(
            cache
                .commit(&b, RecordType::LocalSource, "b", vec![], true)
                .unwrap(),
        );
        cache
            .set_result("sha256:b", std::slice::from_ref(&b))
            .unwrap();
        let removed = cache.prune(|_| true).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].id, b);
        assert_eq!(cache.result("sha256:b").unwrap(), None);
        assert!(cache.in_use(&a));
        drop(held);
        assert!(!cache.in_use(&a));
        assert_eq!(cache.prune(|_| true).unwrap().len(), 1);
        assert!(cache.records().unwrap().is_empty());
    }
}
