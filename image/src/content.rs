//! The content store: blobs (layers, configs, manifests) by digest under a
//! root directory, in containerd's layout: `<root>/blobs/<alg>/<hex>`.
//!
//! Start with [`ContentStore::open`], then [`ContentStore::writer`] to add a
//! blob and [`ContentStore::open_blob`] / [`ContentStore::read_blob`] to read
//! one. The rules that keep it consistent whatever happens:
//! - A [`Writer`] streams into its own file in `<root>/ingest/`, hashing as it
//!   goes. [`Writer::commit`] checks size and digest, makes the file
//!   read-only, fsyncs it, and only then links it into `blobs/` — atomically
//!   and never replacing an existing blob — and fsyncs the directory. A blob
//!   path therefore only ever shows complete, verified content; a mismatch or
//!   a short stream is refused and its file deleted, with containerd's words.
//! - Concurrent writers of one digest each write their own ingest file; the
//!   first link wins, the others find it there ([`Commit::created`] is
//!   false) — content-addressed, so they agree byte for byte.
//! - A dropped writer deletes its ingest file; whatever a crash leaves in
//!   `ingest/` is deleted by the next `open`. Only one process may use a root
//!   (the daemon holds a lock on its root).
//! - A [`Lease`] protects digests from [`ContentStore::delete`] and
//!   [`ContentStore::delete_unprotected`] (garbage collection) while held.
//!   Lease a digest before committing it if something will refer to it.
//!
//! All file work runs on blocking threads.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::digest::{Algorithm, Digest, Digester};

/// What kind of failure, for mapping to gRPC codes later (containerd's
/// errdefs classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Internal,
}

/// A content store failure. Messages follow containerd's local store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content {0}: not found")]
    NotFound(Digest),
    #[error("unexpected commit size {actual}, expected {expected}: failed precondition")]
    SizeMismatch { actual: u64, expected: u64 },
    #[error("unexpected commit digest {actual}, expected {expected}: failed precondition")]
    DigestMismatch { actual: Digest, expected: Digest },
    /// More bytes were written than the expected size allows; refused at
    /// once rather than at commit so a runaway source cannot fill the disk.
    #[error(
        "content exceeds expected size {expected} (got at least {actual} bytes): failed precondition"
    )]
    TooLong { actual: u64, expected: u64 },
    #[error("content {0} is held by a lease: failed precondition")]
    Leased(Digest),
    #[error(
        "content {digest} is {size} bytes, more than the {limit} allowed here: failed precondition"
    )]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    /// An earlier write failed or was cancelled; the writer's data is gone.
    #[error(
        "cannot write or commit: an earlier operation on this writer failed: failed precondition"
    )]
    WriterBroken,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ContentError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContentError::NotFound(_) => ErrorKind::NotFound,
            ContentError::SizeMismatch { .. }
            | ContentError::DigestMismatch { .. }
            | ContentError::TooLong { .. }
            | ContentError::Leased(_)
            | ContentError::TooLarge { .. }
            | ContentError::WriterBroken => ErrorKind::FailedPrecondition,
            ContentError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContentError {
    let context = context.into();
    move |source| ContentError::Io { context, source }
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ContentError>
where
    F: FnOnce() -> Result<T, ContentError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(ContentError::Io {
            context: "content store task".into(),
            source: io::Error::other(join.to_string()),
        }),
    }
}

/// What the store knows about a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
}

/// The result of [`Writer::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub info: Info,
    /// False when the blob was already there (another writer won, or it was
    /// stored before); the content is the same either way.
    pub created: bool,
}

/// Which digests each live lease holds.
#[derive(Default)]
struct LeaseTable {
    next_id: u64,
    leases: HashMap<u64, HashSet<Digest>>,
    // How many leases hold each digest, so protection checks are O(1).
    holders: HashMap<Digest, usize>,
}

impl LeaseTable {
    fn is_protected(&self, d: &Digest) -> bool {
        self.holders.contains_key(d)
    }

    fn release(&mut self, d: &Digest) {
        if let Some(n) = self.holders.get_mut(d) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(d);
            }
        }
    }
}

struct Shared {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
    leases: Mutex<LeaseTable>,
    // Makes ingest file names unique within this process; the pid and time
    // make them unique across restarts.
    ingest_counter: AtomicU64,
}

impl Shared {
    fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock cannot leave the table half
        // updated (every update is a single insert or remove), so a
        // poisoned lock is still usable.
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        // Safe as a path: a Digest is always `<known alg>:<lowercase hex>`.
        self.blobs.join(d.algorithm().as_str()).join(d.encoded())
    }
}

/// A content store rooted at one directory. Cheap to clone.
#[derive(Clone)]
pub struct ContentStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root` and deletes whatever
    /// an earlier run left half-written in `ingest/`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<ContentStore, ContentError> {
        let root = root.into();
        let shared = Arc::new(Shared {
            blobs: root.join("blobs"),
            ingest: root.join("ingest"),
            root,
            leases: Mutex::new(LeaseTable::default()),
            ingest_counter: AtomicU64::new(0),
        });
        let s = shared.clone();
        blocking(move || {
            fs::create_dir_all(&s.blobs).map_err(io_err(format!("create {}", s.blobs.display())))?;
            fs::create_dir_all(&s.ingest).map_err(io_err(format!("create {}", s.ingest.display())))?;
            let removed = clear_dir(&s.ingest)?;
            if removed > 0 {
                tracing::info!(removed, root = %s.root.display(), "removed unfinished content ingests");
            }
            Ok(())
        })
        .await?;
        Ok(ContentStore { shared })
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Where the blob for `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.shared.blob_path(digest)
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool, ContentError> {
        match self.info(digest).await {
            Ok(_) => Ok(true),
            Err(ContentError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Size of a stored blob; [`ContentError::NotFound`] if absent.
    pub async fn info(&self, digest: &Digest) -> Result<Info, ContentError> {
        let path = self.blob_path(digest);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Info {
                digest: digest.clone(),
                size: meta.len(),
            }),
            Ok(_) => Err(ContentError::NotFound(digest.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
        }
    }

    /// Opens a stored blob for reading.
    pub async fn open_blob(&self, digest: &Digest) -> Result<tokio::fs::File, ContentError> {
        let path = self.blob_path(digest);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err(format!("open {}", path.display()))(e)),
        }
    }

    /// Reads a whole blob (manifests, configs), refusing one larger than
    /// `limit` bytes so a hostile descriptor cannot exhaust memory.
    pub async fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.blob_path(digest);
        let digest = digest.clone();
        blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ContentError::NotFound(digest));
                }
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            let size = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?
                .len();
            if size > limit {
                return Err(ContentError::TooLarge {
                    digest,
                    size,
                    limit,
                });
            }
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            // `take` guards against the file growing after the stat.
            file.take(limit.saturating_add(1))
                .read_to_end(&mut data)
                .map_err(io_err(format!("read {}", path.display())))?;
            let read = data.len() as u64;
            if read > limit {
                return Err(ContentError::TooLarge {
                    digest,
                    size: read,
                    limit,
                });
            }
            Ok(data)
        })
        .await
    }

    /// Every stored blob, in no particular order.
    pub async fn list(&self) -> Result<Vec<Info>, ContentError> {
        let blobs = self.shared.blobs.clone();
        blocking(move || {
            let mut out = Vec::new();
            for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
                let dir = blobs.join(alg.as_str());
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
                    let name = entry.file_name();
                    // Anything that is not a digest-named file is not ours.
                    let Some(digest) = name
                        .to_str()
                        .and_then(|n| Digest::parse(&format!("{alg}:{n}")).ok())
                    else {
                        continue;
                    };
                    let meta = entry
                        .metadata()
                        .map_err(io_err(format!("stat {}", entry.path().display())))?;
                    if meta.is_file() {
                        out.push(Info {
                            digest,
                            size: meta.len(),
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Starts writing a blob. With `expected`, its algorithm is used and the
    /// digest verified at commit (otherwise sha256, and the digest is
    /// whatever was written); with `expected_size`, the size is verified and
    /// writing past it fails at once.
    pub async fn writer(
        &self,
        expected: Option<Digest>,
        expected_size: Option<u64>,
    ) -> Result<Writer, ContentError> {
        let shared = self.shared.clone();
        let algorithm = expected
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let (path, file) = blocking(move || create_ingest_file(&shared)).await?;
        Ok(Writer {
            shared: self.shared.clone(),
            path,
            state: Some(Box::new(WriteState {
                file,
                digester: algorithm.digester(),
            })),
            expected,
            expected_size,
            written: 0,
            finished: false,
        })
    }

    /// Writes `data` as one blob (verifying it against `expected` if given).
    pub async fn write_blob(
        &self,
        data: impl Into<Vec<u8>>,
        expected: Option<&Digest>,
    ) -> Result<Commit, ContentError> {
        let data = data.into();
        let mut w = self
            .writer(expected.cloned(), Some(data.len() as u64))
            .await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Deletes a blob; refused while a lease holds it.
    pub async fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let shared = self.shared.clone();
        let digest = digest.clone();
        blocking(move || {
            // Checked and removed under the lease lock, so a lease taken
            // concurrently either sees the blob gone or keeps it.
            let table = shared.leases();
            if table.is_protected(&digest) {
                return Err(ContentError::Leased(digest));
            }
            let path = shared.blob_path(&digest);
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(ContentError::NotFound(digest))
                }
                Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
            }
        })
        .await
    }

    /// Deletes those of `digests` that no lease holds and that exist;
    /// returns the ones deleted. This is the primitive garbage collection
    /// will use.
    pub async fn delete_unprotected(
        &self,
        digests: Vec<Digest>,
    ) -> Result<Vec<Digest>, ContentError> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut deleted = Vec::new();
            for digest in digests {
                // One lock per blob, so leasing is never held up for long.
                let table = shared.leases();
                if table.is_protected(&digest) {
                    continue;
                }
                let path = shared.blob_path(&digest);
                match fs::remove_file(&path) {
                    Ok(()) => deleted.push(digest),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
                }
                drop(table);
            }
            Ok(deleted)
        })
        .await
    }

    /// A new, empty lease. Digests added to it are protected until they are
    /// removed or the lease is dropped.
    pub fn lease(&self) -> Lease {
        let mut table = self.shared.leases();
        table.next_id += 1;
        let id = table.next_id;
        table.leases.insert(id, HashSet::new());
        Lease {
            id,
            shared: self.shared.clone(),
        }
    }

    /// Whether any lease holds `digest`.
    pub fn is_protected(&self, digest: &Digest) -> bool {
        self.shared.leases().is_protected(digest)
    }
}

/// Creates an ingest file with a name no other writer has.
fn create_ingest_file(shared: &Shared) -> Result<(PathBuf, File), ContentError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    loop {
        let n = shared.ingest_counter.fetch_add(1, Ordering::Relaxed);
        let path = shared
            .ingest
            .join(format!("{}-{nanos}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
        }
    }
}

/// Deletes everything inside `dir`; returns how many entries went.
fn clear_dir(dir: &Path) -> Result<usize, ContentError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }
    Ok(removed)
}

/// Makes the blobs directory entry durable after a link.
fn sync_dir(dir: &Path) -> Result<(), ContentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

/// The file and hash a writer moves to a blocking thread for each write.
struct WriteState {
    file: File,
    digester: Digester,
}

/// Streams one blob into the store; see the module docs for the rules.
///
/// Dropping it without [`Writer::commit`] discards what was written.
pub struct Writer {
    shared: Arc<Shared>,
    path: PathBuf,
    // None while a write is on a blocking thread, and for good after a
    // failed or cancelled write (the data is then incomplete).
    state: Option<Box<WriteState>>,
    expected: Option<Digest>,
    expected_size: Option<u64>,
    written: u64,
    // The ingest file is gone (committed or refused): nothing to clean up.
    finished: bool,
}

impl Writer {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` (a `Vec<u8>` moves without copying).
    pub async fn write(&mut self, data: impl Into<Vec<u8>>) -> Result<(), ContentError> {
        let data = data.into();
        let total = self.written.saturating_add(data.len() as u64);
        if let Some(expected) = self.expected_size.filter(|e| total > *e) {
            self.state = None;
            self.discard();
            return Err(ContentError::TooLong {
                actual: total,
                expected,
            });
        }
        let Some(mut state) = self.state.take() else {
            return Err(ContentError::WriterBroken);
        };
        let path = self.path.clone();
        let state = blocking(move || {
            state
                .file
                .write_all(&data)
                .map_err(io_err(format!("write {}", path.display())))?;
            state.digester.update(&data);
            Ok(state)
        })
        .await?;
        self.state = Some(state);
        self.written = total;
        Ok(())
    }

    /// Copies `reader` to the end into the blob; returns the bytes copied.
    pub async fn copy_from<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
    ) -> Result<u64, ContentError> {
        const CHUNK: usize = 256 * 1024;
        let mut copied = 0u64;
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut reader)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(io_err("read blob source"))?;
            if n == 0 {
                return Ok(copied);
            }
            copied += n as u64;
            self.write(buf).await?;
        }
    }

    /// Verifies size and digest and makes the blob visible; refuses and
    /// deletes it on any mismatch.
    pub async fn commit(mut self) -> Result<Commit, ContentError> {
        let Some(state) = self.state.take() else {
            return Err(ContentError::WriterBroken);
        };
        let shared = self.shared.clone();
        let path = self.path.clone();
        let expected = self.expected.clone();
        let expected_size = self.expected_size;
        let written = self.written;
        // From here the blocking task owns the ingest file: it deletes it on
        // every path, even if this future is dropped.
        self.finished = true;
        blocking(move || {
            let result = finish_commit(&shared, &path, *state, expected, expected_size, written);
            remove_ingest_file(&path);
            result
        })
        .await
    }

    /// Deletes the ingest file without waiting (drop, refused write).
    fn discard(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let path = self.path.clone();
        let remove = move || remove_ingest_file(&path);
        // Off the async threads when there is a runtime; a drop outside one
        // (tests, shutdown) just does it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Best-effort removal of an ingest file (a leftover is cleared at the next
/// open anyway).
fn remove_ingest_file(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove ingest file");
        }
        _ => {}
    }
}

/// The checks and the link, on a blocking thread. The caller removes the
/// ingest file afterwards whatever the outcome.
fn finish_commit(
    shared: &Shared,
    path: &Path,
    state: WriteState,
    expected: Option<Digest>,
    expected_size: Option<u64>,
    written: u64,
) -> Result<Commit, ContentError> {
    let WriteState { file, digester } = state;
    // Size first, then digest, as containerd checks them.
    if let Some(expected) = expected_size.filter(|e| *e != written) {
        return Err(ContentError::SizeMismatch {
            actual: written,
            expected,
        });
    }
    let actual = digester.finish();
    if let Some(expected) = expected.filter(|e| *e != actual) {
        return Err(ContentError::DigestMismatch { actual, expected });
    }
    let info = Info {
        digest: actual,
        size: written,
    };
    let target = shared.blob_path(&info.digest);
    if target.exists() {
        return Ok(Commit {
            info,
            created: false,
        });
    }
    // Read-only like containerd's blobs: nothing should ever modify one.
    file.set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    file.sync_all()
        .map_err(io_err(format!("sync {}", path.display())))?;
    drop(file);
    let dir = shared.blobs.join(info.digest.algorithm().as_str());
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    // A hard link is atomic and never replaces an existing name: exactly one
    // of several concurrent writers creates the blob.
    match fs::hard_link(path, &target) {
        Ok(()) => {
            sync_dir(&dir)?;
            Ok(Commit {
                info,
                created: true,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Commit {
            info,
            created: false,
        }),
        Err(e) => Err(io_err(format!(
            "link {} to {}",
            path.display(),
            target.display()
        ))(e)),
    }
}

/// Protects a set of digests from deletion while held; dropping it releases
/// them all.
pub struct Lease {
    id: u64,
    shared: Arc<Shared>,
}

impl Lease {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Protects `digest` (whether or not it is stored yet). Adding twice is
    /// the same as once.
    pub fn add(&self, digest: &Digest) {
        let mut table = self.shared.leases();
        let newly = table
            .leases
            .get_mut(&self.id)
            .is_some_and(|set| set.insert(digest.clone()));
        if newly {
            *table.holders.entry(digest.clone()).or_insert(0) += 1;
        }
    }

    /// Stops protecting `digest` through this lease; true if it held it.
    pub fn remove(&self, digest: &Digest) -> bool {
        let mut table = self.shared.leases();
        let held = table
            .leases
            .get_mut(&self.id)
            .is_some_and(|set| set.remove(digest));
        if held {
            table.release(digest);
        }
        held
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.shared
            .leases()
            .leases
            .get(&self.id)
            .is_some_and(|set| set.contains(digest))
    }

    /// The digests this lease holds, sorted.
    pub fn digests(&self) -> Vec<Digest> {
        let table = self.shared.leases();
        let mut out: Vec<Digest> = table
            .leases
            .get(&self.id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut table = self.shared.leases();
        if let Some(set) = table.leases.remove(&self.id) {
            for digest in &set {
                table.release(digest);
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}
