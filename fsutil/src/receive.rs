//! The receiving side of a transfer (protocol.md §4.3): validate the sender's
//! listing, request the files that differ from what `dest` already holds,
//! write everything inside `dest` and nowhere else, and finish with `FIN`.
//!
//! Start at [`receive`]. Two parts cooperate:
//! - the async loop in [`receive`] reads packets, checks each `STAT` against
//!   the ordering rules (`Validator`) and hands work to the writer;
//! - the `Writer` runs on the blocking pool and does every filesystem call,
//!   in listing order. It decides what to request, writes contents as `DATA`
//!   arrives, deletes what the listing lacks and sends `FIN` when done.
//!
//! Safety of the writes rests on two things: the validator only admits a path
//! whose parent was listed earlier as a directory (so no entry can sit below a
//! symlink the sender created), and every path is opened one component at a
//! time from a descriptor of `dest` with `O_NOFOLLOW`, so even a symlink that
//! was already in `dest` is never followed.
//!
//! Requests go out through an unbounded queue drained by a small task, so the
//! loop reading the sender never waits on sending: with a sender that stops
//! reading while its `DATA` is not consumed, waiting here could deadlock.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{FsError, Packet, PacketRx, PacketTx, PacketType, Stat, mode};

/// Longest path (bytes) and path component accepted from a sender, Linux's
/// `PATH_MAX` and `NAME_MAX`.
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// Linux's limits on one extended attribute.
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// All xattrs of one entry together: they are kept until the entry is done.
const MAX_XATTR_TOTAL: usize = 256 * 1024;
/// Files with data in flight at once; honest senders stream four.
const MAX_OPEN_FILES: usize = 64;
/// No honest `DATA` packet is larger than a gRPC message may be.
const MAX_DATA: usize = bk_proto::MAX_MESSAGE_SIZE;
/// Commands queued for the writer before the reader waits for it.
const WRITER_QUEUE: usize = 64;
/// Prefix of the names files are written under before being renamed into
/// place. A failed transfer can leave some behind; the next transfer into
/// the same `dest` deletes them as entries the listing lacks.
const TMP_PREFIX: &str = ".fsutil-tmp.";

/// How an existing file in `dest` is judged unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Differ {
    /// Same kind, mode, owner, device numbers and link target, and for
    /// non-directories the same size and mtime: fsutil's metadata comparison.
    #[default]
    Metadata,
    /// Nothing is unchanged: every file is requested.
    None,
}

/// Called with the total number of content bytes received so far.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// How [`receive`] treats `dest`.
#[derive(Clone, Default)]
pub struct ReceiveOptions {
    pub differ: Differ,
    /// Keep entries of `dest` that the listing lacks, and write every listed
    /// entry without comparing (fsutil's `Merge`, used for local exports).
    pub merge: bool,
    /// Own everything written by this uid/gid instead of the ids on the wire.
    /// Ownership is only ever applied when running as root.
    pub owner: Option<(u32, u32)>,
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for ReceiveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveOptions")
            .field("differ", &self.differ)
            .field("merge", &self.merge)
            .field("owner", &self.owner)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a finished transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// `STAT`s received (the end-of-listing marker not counted).
    pub entries: u64,
    /// Files whose content was requested.
    pub files_requested: u64,
    /// Content bytes received in `DATA` packets.
    pub bytes_received: u64,
    /// Entries of `dest` removed because the listing lacked them (a removed
    /// directory counts once).
    pub deleted: u64,
}

/// Receive a tree from the sender at the other end of `rx`/`tx` into `dest`
/// (created if missing).
///
/// Returns once our `FIN` was sent and the sender closed its stream. On any
/// failure an `ERR` packet tells the peer why (unless the peer's own `ERR`
/// was the failure), the partial state stays in `dest`, and nothing is
/// written after this returns.
pub async fn receive(
    dest: &Path,
    opts: ReceiveOptions,
    mut rx: PacketRx,
    tx: PacketTx,
) -> Result<ReceiveStats, FsError> {
    let result = run(dest, opts, &mut rx, &tx).await;
    if let Err(err) = &result
        && !matches!(err, FsError::Remote(_))
    {
        // Best effort: the stream may already be gone.
        let _ = tx.send(crate::send::err_packet(&err.to_string())).await;
    }
    result
}

/// Work for the writer, in the order the packets arrived.
enum Cmd {
    Entry { id: u32, stat: Stat },
    Data { id: u32, data: Bytes },
    EndOfListing,
}

/// Aborts the task on drop, so no clone of the peer's sender outlives
/// [`receive`] and keeps the stream open.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    dest: &Path,
    opts: ReceiveOptions,
    rx: &mut PacketRx,
    tx: &PacketTx,
) -> Result<ReceiveStats, FsError> {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Packet>();
    let _forwarder = AbortOnDrop(tokio::spawn({
        let tx = tx.clone();
        async move {
            while let Some(packet) = out_rx.recv().await {
                if tx.send(packet).await.is_err() {
                    break;
                }
            }
        }
    }));

    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(WRITER_QUEUE);
    let cancel = Arc::new(AtomicBool::new(false));
    // If this future is dropped (the build was canceled), the writer stops
    // at its next command instead of working through its queue.
    let _stop_writer = StopOnDrop(cancel.clone());
    let fin_sent = Arc::new(AtomicBool::new(false));
    let config = Config {
        dest: dest.to_path_buf(),
        differ: opts.differ,
        merge: opts.merge,
        owner: opts.owner,
    };
    let mut writer = {
        let (cancel, fin_sent) = (cancel.clone(), fin_sent.clone());
        tokio::spawn(async move {
            let writer =
                tokio::task::spawn_blocking(move || Writer::open(config, out_tx, fin_sent))
                    .await
                    .map_err(|e| FsError::Stream(format!("receive writer failed: {e}")))??;
            drive_writer(writer, cmd_rx, cancel).await
        })
    };

    let mut reader = Reader {
        validator: Validator::default(),
        next_id: 0,
        listing_ended: false,
        bytes: 0,
        progress: opts.progress,
        fin_sent,
        writer_done: false,
        writer_stats: WriterStats::default(),
    };
    let result = reader.drive(rx, cmd_tx, &mut writer).await;
    if !reader.writer_done {
        // Stop the writer and wait for it, so nothing is written after we return.
        cancel.store(true, Ordering::SeqCst);
        let _ = writer.await;
    }
    result?;
    Ok(ReceiveStats {
        entries: reader.writer_stats.entries,
        files_requested: reader.writer_stats.files_requested,
        bytes_received: reader.bytes,
        deleted: reader.writer_stats.deleted,
    })
}

type WriterTask = JoinHandle<Result<WriterStats, FsError>>;

/// The async half: reads and checks packets, feeds the writer.
struct Reader {
    validator: Validator,
    next_id: u32,
    listing_ended: bool,
    bytes: u64,
    progress: Option<ProgressFn>,
    /// Set by the writer just before it queues our `FIN`; a `FIN` or the end
    /// of the stream from the sender before that is premature.
    fin_sent: Arc<AtomicBool>,
    writer_done: bool,
    writer_stats: WriterStats,
}

impl Reader {
    async fn drive(
        &mut self,
        rx: &mut PacketRx,
        cmd_tx: mpsc::Sender<Cmd>,
        writer: &mut WriterTask,
    ) -> Result<(), FsError> {
        loop {
            tokio::select! {
                joined = &mut *writer, if !self.writer_done => {
                    self.writer_done = true;
                    self.writer_stats = flatten(joined)?;
                }
                packet = rx.next() => {
                    let Some(packet) = packet else {
                        self.check_finished("closed the stream", writer).await?;
                        return Ok(());
                    };
                    let packet = packet?;
                    let kind = PacketType::try_from(packet.r#type).map_err(|_| {
                        FsError::Invalid(format!("unknown packet type {}", packet.r#type))
                    })?;
                    match kind {
                        PacketType::PacketErr => {
                            return Err(FsError::Remote(
                                String::from_utf8_lossy(&packet.data).into_owned(),
                            ));
                        }
                        PacketType::PacketFin => {
                            self.check_finished("sent FIN", writer).await?;
                        }
                        _ => {
                            let cmd = self.command(kind, packet)?;
                            if self.writer_done {
                                // Our FIN is out; a late DATA is moot.
                                continue;
                            }
                            if cmd_tx.send(cmd).await.is_err() {
                                // The writer stopped; its result says why.
                                self.writer_done = true;
                                self.writer_stats = flatten((&mut *writer).await)?;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The sender may only finish after our `FIN`; make sure the writer,
    /// which sent it, has fully returned.
    async fn check_finished(&mut self, what: &str, writer: &mut WriterTask) -> Result<(), FsError> {
        if !self.fin_sent.load(Ordering::SeqCst) {
            // A writer that already failed knows the better reason.
            if !self.writer_done && writer.is_finished() {
                self.writer_done = true;
                self.writer_stats = flatten((&mut *writer).await)?;
            }
            return Err(FsError::Invalid(format!(
                "sender {what} before the transfer finished"
            )));
        }
        if !self.writer_done {
            self.writer_done = true;
            self.writer_stats = flatten((&mut *writer).await)?;
        }
        Ok(())
    }

    fn command(&mut self, kind: PacketType, packet: Packet) -> Result<Cmd, FsError> {
        match kind {
            PacketType::PacketStat => {
                if self.listing_ended {
                    return Err(FsError::Invalid("STAT after the end of the listing".into()));
                }
                let Some(stat) = packet.stat else {
                    self.listing_ended = true;
                    return Ok(Cmd::EndOfListing);
                };
                self.validator.check(&stat)?;
                let id = self.next_id;
                self.next_id = id
                    .checked_add(1)
                    .ok_or_else(|| FsError::Invalid("too many entries".into()))?;
                Ok(Cmd::Entry { id, stat })
            }
            PacketType::PacketData => {
                if packet.data.len() > MAX_DATA {
                    return Err(FsError::Invalid(format!(
                        "DATA packet of {} bytes for file id {}",
                        packet.data.len(),
                        packet.id
                    )));
                }
                if !packet.data.is_empty() {
                    self.bytes += packet.data.len() as u64;
                    if let Some(progress) = &self.progress {
                        progress(self.bytes);
                    }
                }
                Ok(Cmd::Data {
                    id: packet.id,
                    data: packet.data,
                })
            }
            other => Err(FsError::Invalid(format!(
                "unexpected {} packet from the sender",
                other.as_str_name()
            ))),
        }
    }
}

fn flatten(
    joined: Result<Result<WriterStats, FsError>, tokio::task::JoinError>,
) -> Result<WriterStats, FsError> {
    joined.map_err(|e| FsError::Stream(format!("receive writer failed: {e}")))?
}

/// Checks that the listing is a well-formed tree in fsutil's order: clean
/// relative paths, depth-first pre-order, siblings in strictly increasing
/// byte order, every parent listed (as a directory) before its children,
/// hard links only to earlier regular files.
#[derive(Default)]
struct Validator {
    /// The directories that may still receive children: the root, then each
    /// directory down to the innermost one, with the last child seen in each.
    open_dirs: Vec<(String, Option<String>)>,
    /// Regular files listed so far: what a hard link may point to.
    files: HashSet<String>,
}

impl Validator {
    fn check(&mut self, stat: &Stat) -> Result<(), FsError> {
        let path = stat.path.as_str();
        check_path(path, "path")?;
        check_kind(stat)?;

        if self.open_dirs.is_empty() {
            self.open_dirs.push((String::new(), None));
        }
        let (dir, base) = split(path);
        // Every directory deeper than the parent is finished for good.
        let Some(depth) = self.open_dirs.iter().rposition(|(d, _)| d == dir) else {
            return Err(FsError::Invalid(format!(
                "{path:?} is out of order or its parent directory was not sent"
            )));
        };
        self.open_dirs.truncate(depth + 1);
        let (_, last) = &mut self.open_dirs[depth];
        if let Some(last) = last
            && last.as_bytes() >= base.as_bytes()
        {
            return Err(FsError::Invalid(format!(
                "changes out of order: {path:?} after {:?}",
                join(dir, last)
            )));
        }
        *last = Some(base.to_owned());

        if mode::is_dir(stat.mode) {
            self.open_dirs.push((path.to_owned(), None));
        } else if mode::is_regular(stat.mode) {
            if stat.linkname.is_empty() {
                self.files.insert(path.to_owned());
            } else if !self.files.contains(&stat.linkname) {
                return Err(FsError::Invalid(format!(
                    "invalid link {path:?} to unknown path {:?}",
                    stat.linkname
                )));
            }
        }
        Ok(())
    }
}

/// A relative, clean, slash-separated path that stays inside the root.
fn check_path(path: &str, what: &str) -> Result<(), FsError> {
    let bad = |why: &str| Err(FsError::Invalid(format!("{what} {path:?}: {why}")));
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH {
        return bad("too long");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    for name in path.split('/') {
        match name {
            "" | "." => return bad("unclean path"),
            ".." => return bad("escapes the root"),
            _ if name.starts_with(TMP_PREFIX) => return bad("name reserved for the receiver"),
            _ if name.len() > MAX_NAME => return bad("name too long"),
            _ => {}
        }
    }
    Ok(())
}

/// A mode naming one kind we can create, and fields that fit it.
fn check_kind(stat: &Stat) -> Result<(), FsError> {
    let m = stat.mode;
    let bad = |why: String| Err(FsError::Invalid(format!("{:?}: {why}", stat.path)));
    let kinds = [mode::DIR, mode::SYMLINK, mode::NAMED_PIPE, mode::DEVICE]
        .iter()
        .filter(|&&k| m & k != 0)
        .count();
    if kinds > 1 || m & (mode::SOCKET | mode::IRREGULAR) != 0 {
        return bad(format!("unsupported file mode {m:#x}"));
    }
    if m & mode::CHAR_DEVICE != 0 && m & mode::DEVICE == 0 {
        return bad(format!("unsupported file mode {m:#x}"));
    }
    if stat.size < 0 {
        return bad(format!("negative size {}", stat.size));
    }
    if mode::is_symlink(m) {
        if stat.linkname.is_empty() || stat.linkname.len() > MAX_PATH {
            return bad("bad symlink target length".into());
        }
        if stat.linkname.contains('\0') {
            return bad("symlink target contains NUL".into());
        }
    } else if mode::is_regular(m) && !stat.linkname.is_empty() {
        check_path(&stat.linkname, "hard link target")?;
    }
    if m & mode::DEVICE != 0 {
        let fits = |n: i64| u32::try_from(n).is_ok();
        if !fits(stat.devmajor) || !fits(stat.devminor) {
            return bad("device number out of range".into());
        }
    }
    let total: usize = stat.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_XATTR_TOTAL {
        return bad("xattrs too large".into());
    }
    for (name, value) in &stat.xattrs {
        if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains('\0') {
            return bad(format!("bad xattr name {name:?}"));
        }
        if value.len() > MAX_XATTR_VALUE {
            return bad(format!("xattr {name:?} too large"));
        }
    }
    Ok(())
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn split_bytes(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn join_bytes(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        path.extend_from_slice(dir);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// `inner` is `outer` or lies below it.
fn is_within(outer: &[u8], inner: &[u8]) -> bool {
    outer.is_empty()
        || inner == outer
        || (inner.starts_with(outer) && inner.get(outer.len()) == Some(&b'/'))
}

/// fsutil's path order: byte order in which `/` sorts before everything, so
/// a directory's subtree comes right after it.
fn compare_path(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// What the writer needs from the options.
struct Config {
    dest: PathBuf,
    differ: Differ,
    merge: bool,
    owner: Option<(u32, u32)>,
}

#[derive(Debug, Default)]
struct WriterStats {
    entries: u64,
    files_requested: u64,
    deleted: u64,
}

/// An entry's metadata as fsutil compares it.
#[derive(Debug, Clone, PartialEq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: i64,
    mtime: i64,
    linkname: Vec<u8>,
    devmajor: i64,
    devminor: i64,
}

impl Meta {
    // Field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        let st_mode = st.st_mode as u32;
        let kind = FileType::from_raw_mode(st_mode);
        let (devmajor, devminor) = match kind {
            FileType::CharacterDevice | FileType::BlockDevice => {
                mode::split_rdev(st.st_rdev as u64)
            }
            _ => (0, 0),
        };
        Meta {
            // The socket bit is cleared by senders; clear it here too.
            mode: mode::from_unix(st_mode) & !mode::SOCKET,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: if kind == FileType::Directory {
                0
            } else {
                st.st_size as i64
            },
            mtime: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            linkname: Vec::new(),
            devmajor,
            devminor,
        }
    }

    fn from_wire(stat: &Stat) -> Meta {
        Meta {
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            size: if mode::is_dir(stat.mode) {
                0
            } else {
                stat.size
            },
            mtime: stat.mod_time,
            linkname: stat.linkname.as_bytes().to_vec(),
            devmajor: stat.devmajor,
            devminor: stat.devminor,
        }
    }

    /// fsutil's comparison; owners only count when we can set them.
    fn same(&self, other: &Meta, owners: bool) -> bool {
        let dir = mode::is_dir(self.mode);
        (dir || (self.size == other.size && self.mtime == other.mtime))
            && self.mode == other.mode
            && (!owners || (self.uid == other.uid && self.gid == other.gid))
            && self.devmajor == other.devmajor
            && self.devminor == other.devminor
            && self.linkname == other.linkname
    }
}

/// A requested file: created empty under a temporary name at its `STAT`,
/// filled by `DATA`, renamed into place at its empty `DATA`.
struct Pending {
    dir: String,
    name: String,
    tmp: String,
    stat: Stat,
    /// Opened at the first chunk: the parent directory and the file.
    open: Option<(OwnedFd, File)>,
    /// The temporary file's identity when created; what is reopened must
    /// still be it (a later listed entry must not have replaced it).
    inode: (u64, u64),
}

/// The blocking half: all filesystem work, in listing order.
struct Writer {
    dest: PathBuf,
    root: Arc<OwnedFd>,
    /// Open descriptors of the directories leading to the latest parent.
    chain: Vec<(String, Arc<OwnedFd>)>,
    /// What `dest` held before the transfer (not walked when merging).
    existing: Option<HashMap<Vec<u8>, Meta>>,
    differ: Differ,
    owner: Option<(u32, u32)>,
    is_root: bool,
    pending: HashMap<u32, Pending>,
    /// Final path → temporary path of pending files, for hard links to them.
    pending_tmp: HashMap<String, String>,
    /// Files written anew in this transfer: links to them must be remade.
    rewritten: HashSet<String>,
    /// Listed directories, whose mode and mtime are set at the end.
    dirs: Vec<Stat>,
    listing_ended: bool,
    tmp_seq: u64,
    /// Random per transfer, so no peer can name our temporary files.
    tmp_token: String,
    out: mpsc::UnboundedSender<Packet>,
    fin_sent: Arc<AtomicBool>,
    stats: WriterStats,
}

impl Writer {
    fn open(
        config: Config,
        out: mpsc::UnboundedSender<Packet>,
        fin_sent: Arc<AtomicBool>,
    ) -> Result<Writer, FsError> {
        let dest = config.dest;
        std::fs::create_dir_all(&dest).map_err(|e| FsError::io("create", &dest, e))?;
        // `dest` itself is the caller's choice and may be reached through symlinks.
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            &dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::io("open", &dest, e.into()))?;
        let existing = if config.merge {
            None
        } else {
            let mut found = HashMap::new();
            let mut inodes = HashMap::new();
            scan(&root, &[], &mut inodes, &mut found).map_err(|(path, e)| {
                FsError::io("scan", dest.join(OsStr::from_bytes(&path)), e.into())
            })?;
            Some(found)
        };
        Ok(Writer {
            dest,
            root: Arc::new(root),
            chain: Vec::new(),
            existing,
            differ: config.differ,
            owner: config.owner,
            is_root: rustix::process::geteuid().is_root(),
            pending: HashMap::new(),
            pending_tmp: HashMap::new(),
            rewritten: HashSet::new(),
            dirs: Vec::new(),
            listing_ended: false,
            tmp_seq: 0,
            tmp_token: random_token(),
            out,
            fin_sent,
            stats: WriterStats::default(),
        })
    }

    /// Applies a batch of commands in order (on a blocking thread); stops
    /// early once everything has arrived, or when told to stop.
    fn apply(&mut self, batch: Vec<Cmd>, cancel: &AtomicBool) -> Result<(), FsError> {
        for cmd in batch {
            if cancel.load(Ordering::SeqCst) {
                return Err(FsError::Stream("transfer aborted".into()));
            }
            match cmd {
                Cmd::Entry { id, stat } => self.entry(id, stat)?,
                Cmd::Data { id, data } => self.data(id, data)?,
                Cmd::EndOfListing => self.listing_ended = true,
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.listing_ended && self.pending.is_empty()
    }

    fn err(&self, op: &'static str, path: &str, e: Errno) -> FsError {
        FsError::io(op, self.dest.join(path), e.into())
    }

    fn tmp_name(&mut self) -> String {
        self.tmp_seq += 1;
        format!("{TMP_PREFIX}{}.{}", self.tmp_token, self.tmp_seq)
    }

    /// The owner to give a new entry, or `None` when we cannot chown.
    fn chown_ids(&self, stat: &Stat) -> Option<(Option<rustix::fs::Uid>, Option<rustix::fs::Gid>)> {
        if !self.is_root {
            return None;
        }
        // -1 means "leave as is" to chown.
        let uid = (stat.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(stat.uid));
        let gid = (stat.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(stat.gid));
        Some((uid, gid))
    }

    /// The parent directory `dir`, reusing descriptors opened for the
    /// previous entries: in depth-first order most entries share a prefix.
    fn parent(&mut self, dir: &str) -> Result<Arc<OwnedFd>, FsError> {
        while let Some((open, _)) = self.chain.last() {
            if is_within(open.as_bytes(), dir.as_bytes()) {
                break;
            }
            self.chain.pop();
        }
        let (mut fd, done) = match self.chain.last() {
            Some((open, fd)) => (fd.clone(), open.len()),
            None => (self.root.clone(), 0),
        };
        let rest = dir[done..].trim_start_matches('/');
        let mut built = dir[..done].to_owned();
        for name in rest.split('/').filter(|n| !n.is_empty()) {
            let sub = open_subdir(&fd, name.as_bytes()).map_err(|e| self.err("open", dir, e))?;
            fd = Arc::new(sub);
            if !built.is_empty() {
                built.push('/');
            }
            built.push_str(name);
            self.chain.push((built.clone(), fd.clone()));
        }
        Ok(fd)
    }

    fn entry(&mut self, id: u32, mut stat: Stat) -> Result<(), FsError> {
        self.stats.entries += 1;
        if let Some((uid, gid)) = self.owner {
            stat.uid = uid;
            stat.gid = gid;
        }
        let path = stat.path.clone();
        let (dir, name) = split(&path);
        let parent = self.parent(dir)?;
        let current = kind_at(&parent, name.as_bytes()).map_err(|e| self.err("stat", &path, e))?;
        let old = self
            .existing
            .as_mut()
            .and_then(|found| found.remove(path.as_bytes()));
        let wanted = Meta::from_wire(&stat);
        let unchanged = self.differ == Differ::Metadata
            && old
                .as_ref()
                .is_some_and(|old| old.same(&wanted, self.is_root));

        if mode::is_dir(stat.mode) {
            if current != Some(FileType::Directory) {
                if current.is_some() {
                    remove_entry(&parent, name.as_bytes())
                        .map_err(|e| self.err("remove", &path, e))?;
                }
                rustix::fs::mkdirat(&parent, name, Mode::RWXU)
                    .map_err(|e| self.err("mkdir", &path, e))?;
            } else if unchanged {
                self.dirs.push(dir_settle(stat));
                return Ok(());
            }
            let fd =
                open_subdir(&parent, name.as_bytes()).map_err(|e| self.err("open", &path, e))?;
            if let Some((uid, gid)) = self.chown_ids(&stat) {
                rustix::fs::fchown(&fd, uid, gid).map_err(|e| self.err("chown", &path, e))?;
            }
            set_xattrs(&fd, &stat);
            // Mode and mtime last: children change the mtime, and a
            // read-only mode would stop us writing them.
            self.dirs.push(dir_settle(stat));
            return Ok(());
        }

        let relink = !stat.linkname.is_empty() && self.rewritten.contains(&stat.linkname);
        if unchanged && current.is_some() && !relink {
            return Ok(());
        }
        if current == Some(FileType::Directory) {
            remove_entry(&parent, name.as_bytes()).map_err(|e| self.err("remove", &path, e))?;
        }

        if mode::is_symlink(stat.mode) {
            self.place(&parent, &stat, |parent, tmp| {
                rustix::fs::symlinkat(stat.linkname.as_str(), parent, tmp)
            })
        } else if stat.mode & (mode::DEVICE | mode::NAMED_PIPE) != 0 {
            if stat.mode & mode::DEVICE != 0 && !self.is_root {
                tracing::warn!(path = %path, "not running as root: device not created");
                return Ok(());
            }
            let (kind, dev) = if stat.mode & mode::NAMED_PIPE != 0 {
                (FileType::Fifo, 0)
            } else {
                let kind = if stat.mode & mode::CHAR_DEVICE != 0 {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                // Both checked to fit by the validator.
                let major = u32::try_from(stat.devmajor).unwrap_or_default();
                let minor = u32::try_from(stat.devminor).unwrap_or_default();
                (kind, rustix::fs::makedev(major, minor))
            };
            self.place(&parent, &stat, |parent, tmp| {
                rustix::fs::mknodat(parent, tmp, kind, Mode::RUSR | Mode::WUSR, dev)
            })
        } else if !stat.linkname.is_empty() {
            self.hard_link(&parent, &stat)
        } else {
            self.start_file(id, &parent, stat)
        }
    }

    /// Creates a symlink or special file under a temporary name with `create`,
    /// gives it its metadata and renames it over whatever is at its path.
    fn place(
        &mut self,
        parent: &OwnedFd,
        stat: &Stat,
        create: impl FnOnce(&OwnedFd, &str) -> rustix::io::Result<()>,
    ) -> Result<(), FsError> {
        let (_, name) = split(&stat.path);
        let tmp = self.tmp_name();
        create(parent, &tmp).map_err(|e| self.err("create", &stat.path, e))?;
        let result = (|| {
            if let Some((uid, gid)) = self.chown_ids(stat) {
                rustix::fs::chownat(parent, &tmp, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.err("chown", &stat.path, e))?;
            }
            if !mode::is_symlink(stat.mode) {
                // We just made this node, so following is moot; Linux cannot
                // chmod without following anyway.
                rustix::fs::chmodat(parent, &tmp, perm(stat.mode), AtFlags::empty())
                    .map_err(|e| self.err("chmod", &stat.path, e))?;
            }
            rustix::fs::utimensat(
                parent,
                &tmp,
                &times(stat.mod_time),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err("chtimes", &stat.path, e))?;
            rustix::fs::renameat(parent, &tmp, parent, name)
                .map_err(|e| self.err("rename", &stat.path, e))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(parent, &tmp, AtFlags::empty());
        }
        result
    }

    fn hard_link(&mut self, parent: &OwnedFd, stat: &Stat) -> Result<(), FsError> {
        // A target still being filled lives under its temporary name.
        let source = self
            .pending_tmp
            .get(&stat.linkname)
            .cloned()
            .unwrap_or_else(|| stat.linkname.clone());
        let (source_dir, source_name) = split(&source);
        let source_parent = open_beneath(&self.root, source_dir.as_bytes())
            .map_err(|e| self.err("open", &source, e))?;
        let (_, name) = split(&stat.path);
        let tmp = self.tmp_name();
        rustix::fs::linkat(&source_parent, source_name, parent, &tmp, AtFlags::empty())
            .map_err(|e| self.err("link", &stat.path, e))?;
        let renamed = rustix::fs::renameat(parent, &tmp, parent, name);
        // Renaming onto another name of the same inode does nothing and
        // leaves the temporary name behind; it goes either way.
        let _ = rustix::fs::unlinkat(parent, &tmp, AtFlags::empty());
        renamed.map_err(|e| self.err("rename", &stat.path, e))
    }

    fn start_file(&mut self, id: u32, parent: &OwnedFd, stat: Stat) -> Result<(), FsError> {
        let (dir, name) = split(&stat.path);
        let tmp = self.tmp_name();
        // Created now so that hard links listed before its data arrives
        // have an inode to point to.
        let created = rustix::fs::openat(
            parent,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| self.err("create", &stat.path, e))?;
        let st = rustix::fs::fstat(&created).map_err(|e| self.err("stat", &stat.path, e))?;
        #[allow(clippy::unnecessary_cast)]
        let inode = (st.st_dev as u64, st.st_ino as u64);
        self.pending_tmp.insert(stat.path.clone(), join(dir, &tmp));
        self.rewritten.insert(stat.path.clone());
        self.pending.insert(
            id,
            Pending {
                dir: dir.to_owned(),
                name: name.to_owned(),
                tmp,
                stat,
                open: None,
                inode,
            },
        );
        self.stats.files_requested += 1;
        self.out
            .send(Packet {
                r#type: PacketType::PacketReq as i32,
                id,
                ..Packet::default()
            })
            .map_err(|_| FsError::Stream("transfer stream closed".into()))
    }

    fn data(&mut self, id: u32, data: Bytes) -> Result<(), FsError> {
        let Some(mut file) = self.pending.remove(&id) else {
            return Err(FsError::Invalid(format!(
                "DATA for file id {id}, which is not being received"
            )));
        };
        let result = self.data_for(&mut file, &data);
        if result.is_ok() && data.is_empty() {
            // In place under its own name now.
            self.pending_tmp.remove(&file.stat.path);
        } else {
            // Still pending, or failed: then its temporary file is discarded.
            self.pending.insert(id, file);
        }
        result
    }

    fn data_for(&self, file: &mut Pending, data: &[u8]) -> Result<(), FsError> {
        let path = file.stat.path.as_str();
        if file.open.is_none() {
            let parent = open_beneath(&self.root, file.dir.as_bytes())
                .map_err(|e| self.err("open", path, e))?;
            let open_files = self.pending.values().filter(|p| p.open.is_some()).count();
            if open_files >= MAX_OPEN_FILES {
                return Err(FsError::Invalid(format!(
                    "more than {MAX_OPEN_FILES} files receiving data at once"
                )));
            }
            // NONBLOCK: should the name now be a FIFO, do not hang on it.
            let fd = rustix::fs::openat(
                &parent,
                file.tmp.as_str(),
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.err("open", path, e))?;
            let st = rustix::fs::fstat(&fd).map_err(|e| self.err("stat", path, e))?;
            #[allow(clippy::unnecessary_cast)]
            let same = (st.st_dev as u64, st.st_ino as u64) == file.inode
                && FileType::from_raw_mode(st.st_mode as u32) == FileType::RegularFile;
            if !same {
                return Err(FsError::Invalid(format!(
                    "{path:?} was replaced while its data was being received"
                )));
            }
            file.open = Some((parent, File::from(fd)));
        }
        let Some((parent, handle)) = file.open.as_mut() else {
            return Err(FsError::Invalid(format!("{path:?} is not open")));
        };
        if !data.is_empty() {
            return handle
                .write_all(data)
                .map_err(|e| FsError::io("write", self.dest.join(path), e));
        }
        // End of this file: metadata through the descriptor, then into place.
        let stat = &file.stat;
        if let Some((uid, gid)) = self.chown_ids(stat) {
            rustix::fs::fchown(&*handle, uid, gid).map_err(|e| self.err("chown", path, e))?;
        }
        rustix::fs::fchmod(&*handle, perm(stat.mode)).map_err(|e| self.err("chmod", path, e))?;
        set_xattrs(&*handle, stat);
        rustix::fs::futimens(&*handle, &times(stat.mod_time))
            .map_err(|e| self.err("chtimes", path, e))?;
        rustix::fs::renameat(&*parent, file.tmp.as_str(), &*parent, file.name.as_str())
            .map_err(|e| self.err("rename", path, e))?;
        file.open = None;
        Ok(())
    }

    /// Deletes what the listing lacked, settles directory metadata and
    /// sends `FIN`.
    fn finish(&mut self) -> Result<(), FsError> {
        if let Some(found) = self.existing.take() {
            let mut extra: Vec<Vec<u8>> = found.into_keys().collect();
            extra.sort_by(|a, b| compare_path(a, b));
            let mut removed: Option<Vec<u8>> = None;
            for path in extra {
                if removed.as_ref().is_some_and(|r| is_within(r, &path)) {
                    continue;
                }
                let shown = String::from_utf8_lossy(&path).into_owned();
                let (dir, name) = split_bytes(&path);
                // A parent that is gone or no longer a directory was replaced
                // by a listed entry, which took this one with it.
                let parent = match open_beneath(&self.root, dir) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(self.err("open", &shown, e)),
                };
                if remove_entry(&parent, name).map_err(|e| self.err("remove", &shown, e))? {
                    self.stats.deleted += 1;
                    removed = Some(path);
                }
            }
        }
        // Deepest first: a restrictive mode on a parent must not stop us
        // reaching its children.
        for stat in self.dirs.iter().rev() {
            let path = stat.path.as_str();
            let fd =
                open_beneath(&self.root, path.as_bytes()).map_err(|e| self.err("open", path, e))?;
            rustix::fs::fchmod(&fd, perm(stat.mode)).map_err(|e| self.err("chmod", path, e))?;
            rustix::fs::futimens(&fd, &times(stat.mod_time))
                .map_err(|e| self.err("chtimes", path, e))?;
        }
        self.fin_sent.store(true, Ordering::SeqCst);
        self.out
            .send(Packet {
                r#type: PacketType::PacketFin as i32,
                ..Packet::default()
            })
            .map_err(|_| FsError::Stream("transfer stream closed".into()))
    }

    /// After a failure: drop the temporary files of unfinished requests.
    fn discard_pending(&mut self) {
        for (_, file) in self.pending.drain() {
            drop(file.open);
            if let Ok(parent) = open_beneath(&self.root, file.dir.as_bytes()) {
                let _ = rustix::fs::unlinkat(&parent, file.tmp.as_str(), AtFlags::empty());
            }
        }
    }
}

/// Permission bits (with setuid, setgid, sticky) of a wire mode.
fn perm(wire_mode: u32) -> Mode {
    Mode::from_raw_mode(mode::to_unix(wire_mode) & 0o7777)
}

/// Access and modification time both set to `ns`, as fsutil does.
fn times(ns: i64) -> Timestamps {
    const NS: i64 = 1_000_000_000;
    let t = Timespec {
        tv_sec: ns.div_euclid(NS),
        tv_nsec: ns.rem_euclid(NS),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Extended attributes are best effort, as in fsutil: a filesystem without
/// them or a namespace we may not write must not fail the transfer.
fn set_xattrs(fd: impl AsFd, stat: &Stat) {
    for (name, value) in &stat.xattrs {
        if let Err(e) = rustix::fs::fsetxattr(fd.as_fd(), name.as_str(), value, XattrFlags::empty())
        {
            tracing::debug!(path = %stat.path, xattr = %name, error = %e, "xattr not set");
        }
    }
}

/// Opens the directory `name` inside `dir` without following a symlink.
fn open_subdir(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory at `rel` below `root`, one component at a time, never
/// following a symlink. `rel` is empty for `root` itself and holds no `.` or
/// `..` (the validator saw to that).
fn open_beneath(root: &OwnedFd, rel: &[u8]) -> rustix::io::Result<OwnedFd> {
    let mut fd = open_subdir(root, b".")?;
    for name in rel.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
        if name == b"." || name == b".." {
            return Err(Errno::INVAL);
        }
        fd = open_subdir(&fd, name)?;
    }
    Ok(fd)
}

/// The kind of what `name` in `dir` is, not following a symlink.
fn kind_at(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir`, a whole tree if it is a directory, never
/// following a symlink. Returns whether there was anything to remove.
fn remove_entry(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<bool> {
    match kind_at(dir, name)? {
        None => Ok(false),
        Some(FileType::Directory) => {
            let sub = open_subdir(dir, name)?;
            for child in list_names(&sub)? {
                remove_entry(&sub, &child)?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
            Ok(true)
        }
        Some(_) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(true)
        }
    }
}

fn list_names(dir: &OwnedFd) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Records every entry below `dir` in `found`, in listing order so that, as
/// on the sender, the first path of a multiply-linked inode is the one later
/// paths link to. Errors carry the path they happened at.
type ScanError = (Vec<u8>, Errno);

fn scan(
    dir: &OwnedFd,
    prefix: &[u8],
    inodes: &mut HashMap<(u64, u64), Vec<u8>>,
    found: &mut HashMap<Vec<u8>, Meta>,
) -> Result<(), ScanError> {
    let mut names = list_names(dir).map_err(|e| (prefix.to_vec(), e))?;
    names.sort();
    for name in names {
        let path = join_bytes(prefix, &name);
        let st = match rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err((path, e)),
        };
        let mut meta = Meta::from_stat(&st);
        match FileType::from_raw_mode(meta_raw_mode(&st)) {
            FileType::Directory => {
                found.insert(path.clone(), meta);
                let sub = open_subdir(dir, &name).map_err(|e| (path.clone(), e))?;
                scan(&sub, &path, inodes, found)?;
                continue;
            }
            FileType::Symlink => {
                meta.linkname = rustix::fs::readlinkat(dir, name.as_slice(), Vec::new())
                    .map_err(|e| (path.clone(), e))?
                    .into_bytes();
            }
            _ => {
                let (dev, ino, nlink) = inode_of(&st);
                if nlink > 1 {
                    match inodes.get(&(dev, ino)) {
                        // The size stays: fsutil's stat sends a hard
                        // link's real size, whatever protocol notes say.
                        Some(first) => meta.linkname = first.clone(),
                        None => {
                            inodes.insert((dev, ino), path.clone());
                        }
                    }
                }
            }
        }
        found.insert(path, meta);
    }
    Ok(())
}

#[allow(clippy::unnecessary_cast)]
fn meta_raw_mode(st: &rustix::fs::Stat) -> u32 {
    st.st_mode as u32
}

#[allow(clippy::unnecessary_cast)]
fn inode_of(st: &rustix::fs::Stat) -> (u64, u64, u64) {
    (st.st_dev as u64, st.st_ino as u64, st.st_nlink as u64)
}

/// Runs the writer: waits for commands without holding a thread, and hands
/// each batch to a blocking thread. A peer that goes quiet costs a task,
/// not one of the runtime's blocking threads.
async fn drive_writer(
    mut writer: Writer,
    mut cmds: mpsc::Receiver<Cmd>,
    cancel: Arc<AtomicBool>,
) -> Result<WriterStats, FsError> {
    let joined = |e: tokio::task::JoinError| FsError::Stream(format!("receive writer failed: {e}"));
    loop {
        if writer.done() {
            let (mut writer, result) = tokio::task::spawn_blocking(move || {
                let result = writer.finish();
                (writer, result)
            })
            .await
            .map_err(joined)?;
            result?;
            return Ok(std::mem::take(&mut writer.stats));
        }
        let failure = match cmds.recv().await {
            None => Some(FsError::Stream("transfer aborted".into())),
            Some(first) => {
                let mut batch = vec![first];
                while batch.len() < WRITER_QUEUE {
                    match cmds.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
                let stop = cancel.clone();
                let (back, result) = tokio::task::spawn_blocking(move || {
                    let result = writer.apply(batch, &stop);
                    (writer, result)
                })
                .await
                .map_err(joined)?;
                writer = back;
                result.err()
            }
        };
        if let Some(error) = failure {
            // Drop the temporary files of unfinished requests.
            let _ = tokio::task::spawn_blocking(move || writer.discard_pending()).await;
            return Err(error);
        }
    }
}

/// Sets the writer's stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// 16 hex digits from the kernel's random source (or, failing that, from
/// the clock and the address of a stack value).
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        bytes = (t ^ (&local as *const u8 as u64).rotate_left(32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a directory needs at the end of a transfer: path, mode and mtime,
/// without the xattrs that could make a long listing costly to keep.
fn dir_settle(stat: Stat) -> Stat {
    Stat {
        path: stat.path,
        mode: stat.mode,
        mod_time: stat.mod_time,
        ..Stat::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::Duration;

    use super::*;
    use crate::Entry;

    /// An in-process stream: what goes into the `PacketTx` comes out of the
    /// `PacketRx`.
    pub(crate) fn pipe(capacity: usize) -> (PacketTx, PacketRx) {
        let (tx, mut rx) = mpsc::channel::<Packet>(capacity);
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|p| p.map(Ok)));
        (tx, Box::pin(stream))
    }

    /// A minimal lister for tests, independent of `walk`: wire-order stats
    /// of everything below `root`, hard links as fsutil marks them.
    pub(crate) fn list(root: &Path) -> Vec<Entry> {
        fn visit(
            root: &Path,
            rel: &str,
            inodes: &mut HashMap<(u64, u64), String>,
            out: &mut Vec<Entry>,
        ) {
            let dir = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                let path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let source = root.join(&path);
                let md = std::fs::symlink_metadata(&source).unwrap();
                let wire_mode = mode::from_unix(md.mode());
                let mut stat = Stat {
                    path: path.clone(),
                    mode: wire_mode,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if md.is_dir() { 0 } else { md.size() as i64 },
                    mod_time: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    ..Stat::default()
                };
                if md.file_type().is_symlink() {
                    stat.linkname = std::fs::read_link(&source)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned();
                } else if wire_mode & mode::DEVICE != 0 {
                    let (major, minor) = mode::split_rdev(md.rdev());
                    stat.devmajor = major;
                    stat.devminor = minor;
                }
                if !md.is_dir() && !md.file_type().is_symlink() && md.nlink() > 1 {
                    match inodes.get(&(md.dev(), md.ino())) {
                        Some(first) => stat.linkname = first.clone(),
                        None => {
                            inodes.insert((md.dev(), md.ino()), path.clone());
                        }
                    }
                }
                if !md.file_type().is_symlink() {
                    stat.xattrs = user_xattrs(&source);
                }
                out.push(Entry { stat, source });
                if md.is_dir() {
                    visit(root, &path, inodes, out);
                }
            }
        }
        let mut out = Vec::new();
        visit(root, "", &mut HashMap::new(), &mut out);
        out
    }

    fn user_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut names = vec![0u8; 4096];
        let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
            return BTreeMap::new();
        };
        names[..n]
            .split(|&b| b == 0)
            .filter_map(|n| std::str::from_utf8(n).ok())
            .filter(|n| n.starts_with("user."))
            .map(|name| {
                let mut value = vec![0u8; 65536];
                let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
                value.truncate(len);
                (name.to_owned(), value)
            })
            .collect()
    }

    /// Everything about a tree that a transfer must reproduce.
    #[derive(Debug, PartialEq)]
    struct Snap {
        st_mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
        rdev: u64,
        link: Option<String>,
        content: Option<Vec<u8>>,
        /// The first path of this inode, when it has several.
        inode_of: Option<String>,
        xattrs: BTreeMap<String, Vec<u8>>,
    }

    fn snapshot(root: &Path) -> BTreeMap<String, Snap> {
        let mut out = BTreeMap::new();
        for entry in list(root) {
            let md = std::fs::symlink_metadata(&entry.source).unwrap();
            let regular = md.file_type().is_file();
            out.insert(
                entry.stat.path.clone(),
                Snap {
                    st_mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    rdev: md.rdev(),
                    link: md.file_type().is_symlink().then(|| {
                        std::fs::read_link(&entry.source)
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned()
                    }),
                    content: regular.then(|| std::fs::read(&entry.source).unwrap()),
                    inode_of: (regular && !entry.stat.linkname.is_empty())
                        .then(|| entry.stat.linkname.clone()),
                    xattrs: entry.stat.xattrs.clone(),
                },
            );
        }
        out
    }

    fn set_mtime(path: &Path, ns: i64) {
        rustix::fs::utimensat(rustix::fs::CWD, path, &times(ns), AtFlags::SYMLINK_NOFOLLOW)
            .unwrap();
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Gives every entry below `root` a distinct, fixed mtime, directories
    /// after their contents.
    fn fix_mtimes(root: &Path) {
        let mut entries = list(root);
        entries.reverse();
        for (i, entry) in entries.iter().enumerate() {
            set_mtime(
                &entry.source,
                1_600_000_000_123_456_789 + i as i64 * 1_000_000_007,
            );
        }
    }

    fn write(path: &Path, content: &[u8], perm: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm)).unwrap();
    }

    fn mkdir(path: &Path, perm: u32) {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm)).unwrap();
    }

    /// Regular files that carry content (what a full transfer requests).
    fn content_files(root: &Path) -> u64 {
        list(root)
            .iter()
            .filter(|e| mode::is_regular(e.stat.mode) && e.stat.linkname.is_empty())
            .count() as u64
    }

    fn build_tree(src: &Path) {
        mkdir(&src.join("a"), 0o755);
        mkdir(&src.join("a/b"), 0o700);
        write(&src.join("a/b/f.txt"), b"hello", 0o644);
        std::fs::hard_link(src.join("a/b/f.txt"), src.join("a/hard2")).unwrap();
        std::fs::hard_link(src.join("a/b/f.txt"), src.join("z-hard")).unwrap();
        std::os::unix::fs::symlink("b/f.txt", src.join("a/link-rel")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", src.join("dotdot")).unwrap();
        write(&src.join("exec.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&src.join("setuid"), b"x", 0o4755);
        write(&src.join("empty-file"), b"", 0o600);
        mkdir(&src.join("empty"), 0o750);
        mkdir(&src.join("readonly"), 0o555);
        let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&src.join("big.bin"), &big, 0o644);
        mkdir(&src.join("many"), 0o755);
        for i in 0..300 {
            write(
                &src.join(format!("many/f{i:03}")),
                format!("file {i}").as_bytes(),
                0o644,
            );
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        if is_root() {
            // Containers may forbid device nodes; then the tree has none.
            let _ = rustix::fs::mknodat(
                rustix::fs::CWD,
                src.join("null-dev"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            );
            for p in ["exec.sh", "a/b", "abs"] {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    src.join(p),
                    Some(rustix::fs::Uid::from_raw(1234)),
                    Some(rustix::fs::Gid::from_raw(5678)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .unwrap();
            }
            // chown clears setuid.
            std::fs::set_permissions(src.join("setuid"), std::fs::Permissions::from_mode(0o4755))
                .unwrap();
        }
        // Not every filesystem takes user xattrs; then there are none.
        let _ = rustix::fs::setxattr(
            src.join("exec.sh"),
            "user.bk",
            b"value",
            XattrFlags::empty(),
        );
        let _ = rustix::fs::setxattr(src.join("a"), "user.dir", b"d", XattrFlags::empty());
        fix_mtimes(src);
    }

    async fn transfer(src: &Path, dest: &Path, opts: ReceiveOptions) -> ReceiveStats {
        let entries = list(src);
        let (to_receiver, receiver_rx) = pipe(16);
        let (to_sender, sender_rx) = pipe(16);
        let (sent, received) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(
                crate::send::send(entries, sender_rx, to_receiver),
                receive(dest, opts, receiver_rx, to_sender)
            )
        })
        .await
        .expect("transfer finishes");
        sent.expect("send");
        received.expect("receive")
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        src: PathBuf,
        dest: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&src).unwrap();
        Dirs {
            src,
            dest,
            _tmp: tmp,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_tree_round_trip_then_incremental() {
        let d = dirs();
        build_tree(&d.src);
        let expected = snapshot(&d.src);
        assert!(expected["a/hard2"].inode_of.as_deref() == Some("a/b/f.txt"));

        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(snapshot(&d.dest), expected);
        assert_eq!(stats.entries, expected.len() as u64);
        assert_eq!(stats.files_requested, content_files(&d.src));
        let content_bytes: i64 = list(&d.src)
            .iter()
            .filter(|e| mode::is_regular(e.stat.mode) && e.stat.linkname.is_empty())
            .map(|e| e.stat.size)
            .sum();
        assert_eq!(stats.bytes_received, content_bytes as u64);
        assert_eq!(stats.deleted, 0);
        let hard = std::fs::metadata(d.dest.join("z-hard")).unwrap();
        assert_eq!(
            hard.ino(),
            std::fs::metadata(d.dest.join("a/b/f.txt")).unwrap().ino()
        );
        assert_eq!(hard.nlink(), 3);

        // Unchanged: nothing requested, nothing touched.
        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(stats.files_requested, 0);
        assert_eq!(stats.bytes_received, 0);
        assert_eq!(stats.deleted, 0);
        assert_eq!(snapshot(&d.dest), expected);

        // One changed file: exactly that one is requested.
        let changed = d.src.join("many/f007");
        write(&changed, b"changed!", 0o644);
        set_mtime(&changed, 1_700_000_000_000_000_000);
        set_mtime(&d.src.join("many"), 1_700_000_000_000_000_001);
        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(stats.files_requested, 1);
        assert_eq!(stats.bytes_received, 8);
        assert_eq!(
            std::fs::read(d.dest.join("many/f007")).unwrap(),
            b"changed!"
        );
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));

        // A mode change alone is a change too.
        std::fs::set_permissions(
            d.src.join("many/f008"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(stats.files_requested, 1);
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));

        // Deleted in the source, or only ever in dest: removed.
        std::fs::remove_dir_all(d.src.join("a")).unwrap();
        std::fs::remove_file(d.src.join("exec.sh")).unwrap();
        std::fs::write(d.dest.join("stray"), b"x").unwrap();
        std::fs::create_dir_all(d.dest.join("many/stray-dir/deeper")).unwrap();
        std::fs::write(d.dest.join("many/stray-dir/deeper/f"), b"x").unwrap();
        fix_mtimes(&d.src);
        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(stats.deleted, 4, "a, exec.sh, stray, many/stray-dir");
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));
        // z-hard lost its first path: it is now the file itself.
        assert_eq!(std::fs::read(d.dest.join("z-hard")).unwrap(), b"hello");
    }

    /// The real listing, not the test lister: what `walk` sends must compare
    /// equal to what the receiver finds in `dest` afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn walk_send_receive_round_trip() {
        let d = dirs();
        build_tree(&d.src);
        let src = d.src.clone();
        let walk = move || {
            let src = src.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    crate::walk::walk(&src, &crate::walk::WalkOptions::default())
                })
                .await
                .unwrap()
                .unwrap()
            }
        };
        for round in 0..2 {
            let entries = walk().await;
            let (to_receiver, receiver_rx) = pipe(16);
            let (to_sender, sender_rx) = pipe(16);
            let (sent, received) = tokio::join!(
                crate::send::send(entries, sender_rx, to_receiver),
                receive(&d.dest, ReceiveOptions::default(), receiver_rx, to_sender)
            );
            sent.unwrap();
            let stats = received.unwrap();
            assert_eq!(snapshot(&d.dest), snapshot(&d.src));
            let expected = if round == 0 { content_files(&d.src) } else { 0 };
            assert_eq!(stats.files_requested, expected, "round {round}");
        }
    }

    #[tokio::test]
    async fn differ_none_requests_everything() {
        let d = dirs();
        build_tree(&d.src);
        transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        let opts = ReceiveOptions {
            differ: Differ::None,
            ..ReceiveOptions::default()
        };
        let stats = transfer(&d.src, &d.dest, opts).await;
        assert_eq!(stats.files_requested, content_files(&d.src));
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));
        // No temporary names left behind.
        assert!(
            list(&d.dest)
                .iter()
                .all(|e| !e.stat.path.contains(TMP_PREFIX))
        );
    }

    #[tokio::test]
    async fn merge_keeps_what_the_listing_lacks() {
        let d = dirs();
        write(&d.src.join("f"), b"new", 0o644);
        std::fs::create_dir_all(d.dest.join("keep")).unwrap();
        std::fs::write(d.dest.join("keep/me"), b"x").unwrap();
        std::fs::write(d.dest.join("f"), b"old").unwrap();
        let opts = ReceiveOptions {
            merge: true,
            ..ReceiveOptions::default()
        };
        let stats = transfer(&d.src, &d.dest, opts).await;
        assert_eq!(stats.deleted, 0);
        assert_eq!(std::fs::read(d.dest.join("f")).unwrap(), b"new");
        assert_eq!(std::fs::read(d.dest.join("keep/me")).unwrap(), b"x");
    }

    #[tokio::test]
    async fn kinds_change_in_place() {
        let d = dirs();
        // dest: file→dir, dir→file, file→symlink, symlink→dir, dir→symlink.
        mkdir(&d.src.join("d2f"), 0o755);
        write(&d.src.join("d2f/inner"), b"i", 0o644);
        write(&d.src.join("f2d"), b"f", 0o644);
        write(&d.src.join("f2l"), b"f", 0o644);
        std::os::unix::fs::symlink("f2d", d.src.join("l2d")).unwrap();
        mkdir(&d.src.join("d2l"), 0o755);
        write(&d.src.join("d2l/x"), b"x", 0o644);
        transfer(&d.src, &d.dest, ReceiveOptions::default()).await;

        std::fs::remove_dir_all(d.src.join("d2f")).unwrap();
        write(&d.src.join("d2f"), b"now a file", 0o644);
        std::fs::remove_file(d.src.join("f2d")).unwrap();
        mkdir(&d.src.join("f2d"), 0o700);
        write(&d.src.join("f2d/child"), b"c", 0o644);
        std::fs::remove_file(d.src.join("f2l")).unwrap();
        std::os::unix::fs::symlink("/", d.src.join("f2l")).unwrap();
        std::fs::remove_file(d.src.join("l2d")).unwrap();
        mkdir(&d.src.join("l2d"), 0o755);
        write(&d.src.join("l2d/y"), b"y", 0o644);
        std::fs::remove_dir_all(d.src.join("d2l")).unwrap();
        std::os::unix::fs::symlink("..", d.src.join("d2l")).unwrap();
        fix_mtimes(&d.src);
        transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));
    }

    #[tokio::test]
    async fn changed_hard_link_target_keeps_links_together() {
        let d = dirs();
        write(&d.src.join("h1"), b"one", 0o644);
        std::fs::hard_link(d.src.join("h1"), d.src.join("h2")).unwrap();
        fix_mtimes(&d.src);
        transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        std::fs::write(d.src.join("h1"), b"changed").unwrap();
        fix_mtimes(&d.src);
        set_mtime(&d.src.join("h1"), 42);
        let stats = transfer(&d.src, &d.dest, ReceiveOptions::default()).await;
        assert_eq!(stats.files_requested, 1);
        assert_eq!(snapshot(&d.dest), snapshot(&d.src));
        let (m1, m2) = (
            std::fs::metadata(d.dest.join("h1")).unwrap(),
            std::fs::metadata(d.dest.join("h2")).unwrap(),
        );
        assert_eq!(m1.ino(), m2.ino());
    }

    #[tokio::test]
    async fn a_symlink_already_in_dest_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest, outside) = (
            tmp.path().join("src"),
            tmp.path().join("dest"),
            tmp.path().join("outside"),
        );
        for p in [&src, &dest, &outside] {
            std::fs::create_dir(p).unwrap();
        }
        std::os::unix::fs::symlink("../outside", dest.join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("b")).unwrap();
        mkdir(&src.join("a"), 0o755);
        write(&src.join("a/f"), b"in a", 0o644);
        write(&src.join("b"), b"file b", 0o644);
        for merge in [false, true] {
            let opts = ReceiveOptions {
                merge,
                ..ReceiveOptions::default()
            };
            transfer(&src, &dest, opts).await;
            assert!(std::fs::symlink_metadata(dest.join("a")).unwrap().is_dir());
            assert_eq!(std::fs::read(dest.join("a/f")).unwrap(), b"in a");
            assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"file b");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn ownership_override_and_progress() {
        let d = dirs();
        write(&d.src.join("f"), &[7u8; 100_000], 0o644);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let progress: ProgressFn = {
            let seen = seen.clone();
            Arc::new(move |n| seen.lock().unwrap().push(n))
        };
        let opts = ReceiveOptions {
            owner: Some((4321, 8765)),
            progress: Some(progress),
            ..ReceiveOptions::default()
        };
        let stats = transfer(&d.src, &d.dest, opts).await;
        assert_eq!(stats.bytes_received, 100_000);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.last(), Some(&100_000));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        if is_root() {
            let md = std::fs::metadata(d.dest.join("f")).unwrap();
            assert_eq!((md.uid(), md.gid()), (4321, 8765));
        }
    }

    #[test]
    fn open_beneath_refuses_symlinks_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("real/sub")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("real/up")).unwrap();
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        assert!(open_beneath(&root, b"real/sub").is_ok());
        assert!(open_beneath(&root, b"").is_ok());
        for bad in [
            &b"link"[..],
            b"link/sub",
            b"real/up",
            b"real/up/etc",
            b"real/../real",
            b"real/./sub",
        ] {
            assert!(
                open_beneath(&root, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn path_order_puts_subtrees_first() {
        let mut paths: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"a-b", b"a/b/c", b"b"];
        paths.sort_by(|a, b| compare_path(a, b));
        assert_eq!(
            paths,
            vec![&b"a"[..], b"a/b", b"a/b/c", b"a-b", b"a.txt", b"b"]
        );
    }

    #[test]
    fn validator_accepts_fsutil_order() {
        let mut v = Validator::default();
        for stat in [
            dir("a"),
            file("a/b"),
            dir("a/c"),
            file("a/c/d"),
            hardlink("a/e", "a/b"),
            file("a-b"),
            symlink("a.txt", "/etc"),
            file("b"),
        ] {
            v.check(&stat)
                .unwrap_or_else(|e| panic!("{}: {e}", stat.path));
        }
    }

    // ---- hostile senders ----

    fn st(path: &str, mode: u32) -> Stat {
        Stat {
            path: path.into(),
            mode,
            mod_time: 1_000_000_000,
            ..Stat::default()
        }
    }
    fn file(path: &str) -> Stat {
        st(path, 0o644)
    }
    fn dir(path: &str) -> Stat {
        st(path, mode::DIR | 0o755)
    }
    fn symlink(path: &str, target: &str) -> Stat {
        Stat {
            linkname: target.into(),
            ..st(path, mode::SYMLINK | 0o777)
        }
    }
    fn hardlink(path: &str, target: &str) -> Stat {
        Stat {
            linkname: target.into(),
            ..file(path)
        }
    }
    fn p_stat(stat: Stat) -> Packet {
        Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(stat),
            ..Packet::default()
        }
    }
    fn p_end() -> Packet {
        Packet {
            r#type: PacketType::PacketStat as i32,
            ..Packet::default()
        }
    }
    fn p_data(id: u32, data: &[u8]) -> Packet {
        Packet {
            r#type: PacketType::PacketData as i32,
            id,
            data: Bytes::copy_from_slice(data),
            ..Packet::default()
        }
    }
    fn p_type(kind: i32) -> Packet {
        Packet {
            r#type: kind,
            ..Packet::default()
        }
    }

    /// Feeds `packets` to a receiver (keeping the stream open, so only the
    /// packets themselves can end it), and checks that it failed, told the
    /// peer so, and wrote nothing next to `dest`.
    async fn hostile(packets: Vec<Packet>) -> FsError {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir(&sentinel).unwrap();
        let (feed, rx) = pipe(packets.len() + 1);
        for p in packets {
            feed.send(p).await.unwrap();
        }
        let (tx, mut replies) = mpsc::channel(1024);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            receive(&dest, ReceiveOptions::default(), rx, tx),
        )
        .await
        .expect("receiver must fail, not wait");
        let err = result.expect_err("receiver must reject this");
        let mut last = None;
        while let Ok(p) = replies.try_recv() {
            last = Some(p);
        }
        if !matches!(err, FsError::Remote(_)) {
            let last = last.expect("an ERR packet");
            assert_eq!(last.r#type, PacketType::PacketErr as i32);
            assert_eq!(String::from_utf8_lossy(&last.data), err.to_string());
        }
        assert_eq!(std::fs::read_dir(&sentinel).unwrap().count(), 0);
        let mut beside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["dest", "sentinel"]);
        // Nothing landed below a symlink the sender made.
        for entry in list(&dest) {
            assert!(!entry.stat.path.contains("evil"), "{}", entry.stat.path);
        }
        drop(feed);
        err
    }

    async fn assert_invalid(packets: Vec<Packet>, needle: &str) {
        match hostile(packets).await {
            FsError::Invalid(msg) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
            other => panic!("expected an invalid-transfer error about {needle:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_escaping_and_unclean_paths() {
        let cases = [
            ("../x", "escapes"),
            ("..", "escapes"),
            ("a/../../x", "escapes"),
            ("/abs-bk-fsutil-test", "absolute"),
            ("a/./b", "unclean"),
            ("./a", "unclean"),
            ("a//b", "unclean"),
            ("a/", "unclean"),
            ("", "empty"),
            ("a\0b", "NUL"),
        ];
        for (path, needle) in cases {
            assert_invalid(vec![p_stat(dir("a")), p_stat(file(path)), p_end()], needle).await;
        }
        assert!(!Path::new("/abs-bk-fsutil-test").exists());
        let long = "x".repeat(MAX_NAME + 1);
        assert_invalid(vec![p_stat(file(&long))], "too long").await;
        let deep = vec!["d"; MAX_PATH / 2 + 1].join("/");
        assert_invalid(vec![p_stat(file(&deep))], "too long").await;
    }

    #[tokio::test]
    async fn rejects_names_of_its_own_temporary_files() {
        // A peer must not be able to replace a file being received by
        // listing an entry under its temporary name (e.g. a device node).
        let name = format!("{TMP_PREFIX}1.1");
        let device = Stat {
            devmajor: 1,
            devminor: 3,
            ..st(&name, mode::DEVICE | mode::CHAR_DEVICE | 0o666)
        };
        assert_invalid(
            vec![p_stat(file(".a")), p_stat(device), p_end()],
            "reserved",
        )
        .await;
        assert_invalid(
            vec![p_stat(dir("d")), p_stat(file(&format!("d/{name}")))],
            "reserved",
        )
        .await;
    }

    #[tokio::test]
    async fn rejects_oversized_xattrs_in_total() {
        let mut big = file("a");
        for i in 0..8 {
            big.xattrs
                .insert(format!("user.x{i}"), vec![0u8; 60 * 1024]);
        }
        assert_invalid(vec![p_stat(big)], "xattrs too large").await;
    }

    #[tokio::test]
    async fn rejects_bad_order() {
        // Siblings out of order, duplicates, child before parent, child of a
        // file, going back into a finished directory.
        assert_invalid(vec![p_stat(file("b")), p_stat(file("a"))], "out of order").await;
        assert_invalid(vec![p_stat(file("a")), p_stat(file("a"))], "out of order").await;
        assert_invalid(vec![p_stat(dir("a")), p_stat(dir("a"))], "out of order").await;
        assert_invalid(vec![p_stat(file("a/b"))], "parent").await;
        assert_invalid(vec![p_stat(file("a")), p_stat(file("a/b"))], "parent").await;
        assert_invalid(
            vec![p_stat(dir("a")), p_stat(file("b")), p_stat(file("a/c"))],
            "parent",
        )
        .await;
        assert_invalid(
            vec![
                p_stat(dir("a")),
                p_stat(dir("a/b")),
                p_stat(file("a/b/c/d")),
            ],
            "parent",
        )
        .await;
    }

    #[tokio::test]
    async fn rejects_entries_below_a_symlink() {
        for target in ["/", "..", "../sentinel", "/etc"] {
            assert_invalid(
                vec![
                    p_stat(symlink("a", target)),
                    p_stat(file("a/evil")),
                    p_end(),
                ],
                "parent",
            )
            .await;
            assert_invalid(
                vec![
                    p_stat(symlink("a", target)),
                    p_stat(dir("a/evil")),
                    p_stat(file("a/evil/x")),
                    p_end(),
                ],
                "parent",
            )
            .await;
        }
    }

    #[tokio::test]
    async fn rejects_bad_hard_links() {
        assert_invalid(vec![p_stat(hardlink("a", "nowhere"))], "unknown path").await;
        assert_invalid(
            vec![p_stat(hardlink("a", "b")), p_stat(file("b"))],
            "unknown path",
        )
        .await;
        assert_invalid(
            vec![p_stat(dir("d")), p_stat(hardlink("l", "d"))],
            "unknown path",
        )
        .await;
        assert_invalid(
            vec![p_stat(symlink("s", "x")), p_stat(hardlink("t", "s"))],
            "unknown path",
        )
        .await;
        assert_invalid(
            vec![p_stat(file("a")), p_stat(hardlink("b", "../a"))],
            "escapes",
        )
        .await;
        assert_invalid(
            vec![p_stat(file("a")), p_stat(hardlink("b", "/a"))],
            "absolute",
        )
        .await;
    }

    #[tokio::test]
    async fn rejects_bad_modes_and_fields() {
        assert_invalid(vec![p_stat(st("s", mode::SOCKET | 0o755))], "mode").await;
        assert_invalid(
            vec![p_stat(st("s", mode::DIR | mode::SYMLINK | 0o755))],
            "mode",
        )
        .await;
        assert_invalid(vec![p_stat(st("s", mode::CHAR_DEVICE | 0o600))], "mode").await;
        assert_invalid(
            vec![p_stat(Stat {
                size: -1,
                ..file("f")
            })],
            "negative",
        )
        .await;
        assert_invalid(vec![p_stat(symlink("s", ""))], "symlink").await;
        assert_invalid(vec![p_stat(symlink("s", "a\0b"))], "NUL").await;
        let dev = Stat {
            devmajor: -1,
            ..st("d", mode::DEVICE | 0o600)
        };
        assert_invalid(vec![p_stat(dev)], "device number").await;
        let mut big = file("f");
        big.xattrs
            .insert("user.big".into(), vec![0; MAX_XATTR_VALUE + 1]);
        assert_invalid(vec![p_stat(big)], "xattr").await;
    }

    #[tokio::test]
    async fn rejects_bad_packets() {
        // DATA for a directory's id, for an id never listed, after the file
        // was closed; oversized; REQ from a sender; unknown type; STAT after
        // the end; FIN before our FIN.
        assert_invalid(
            vec![p_stat(dir("d")), p_stat(file("d/f")), p_data(0, b"x")],
            "not being received",
        )
        .await;
        assert_invalid(
            vec![p_stat(file("f")), p_data(7, b"x")],
            "not being received",
        )
        .await;
        assert_invalid(
            vec![
                p_stat(file("f")),
                p_stat(file("g")),
                p_data(0, b"x"),
                p_data(0, b""),
                p_data(0, b"y"),
            ],
            "not being received",
        )
        .await;
        let huge = vec![0u8; MAX_DATA + 1];
        assert_invalid(vec![p_stat(file("f")), p_data(0, &huge)], "DATA packet").await;
        assert_invalid(vec![p_type(PacketType::PacketReq as i32)], "REQ").await;
        assert_invalid(vec![p_type(99)], "unknown packet type").await;
        assert_invalid(vec![p_type(-1)], "unknown packet type").await;
        assert_invalid(
            vec![p_stat(file("f")), p_end(), p_stat(file("g"))],
            "after the end",
        )
        .await;
        assert_invalid(vec![p_end(), p_end()], "after the end").await;
        assert_invalid(
            vec![
                p_stat(file("f")),
                p_end(),
                p_type(PacketType::PacketFin as i32),
            ],
            "FIN",
        )
        .await;
    }

    #[tokio::test]
    async fn peer_error_and_early_close() {
        let err = hostile(vec![
            p_stat(file("f")),
            Packet {
                r#type: PacketType::PacketErr as i32,
                data: Bytes::from_static(b"disk on fire"),
                ..Packet::default()
            },
        ])
        .await;
        assert!(
            matches!(&err, FsError::Remote(m) if m == "disk on fire"),
            "{err:?}"
        );

        // The stream ending early is an error, not a success.
        let tmp = tempfile::tempdir().unwrap();
        let (feed, rx) = pipe(4);
        feed.send(p_stat(file("f"))).await.unwrap();
        drop(feed);
        let (tx, _replies) = mpsc::channel(16);
        let err = receive(&tmp.path().join("dest"), ReceiveOptions::default(), rx, tx)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FsError::Invalid(ref m) if m.contains("closed the stream")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn scripted_sender_sees_req_then_fin() {
        // A well-behaved hand-made exchange: REQs may come while the listing
        // continues, FIN only after the last file closed.
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let (feed, rx) = pipe(16);
        let (tx, mut replies) = mpsc::channel(16);
        let receiver = tokio::spawn({
            let dest = dest.clone();
            async move { receive(&dest, ReceiveOptions::default(), rx, tx).await }
        });
        feed.send(p_stat(dir("d"))).await.unwrap();
        feed.send(p_stat(file("d/f"))).await.unwrap();
        let req = replies.recv().await.unwrap();
        assert_eq!((req.r#type, req.id), (PacketType::PacketReq as i32, 1));
        feed.send(p_data(1, b"abc")).await.unwrap();
        feed.send(p_stat(file("g"))).await.unwrap();
        let req = replies.recv().await.unwrap();
        assert_eq!((req.r#type, req.id), (PacketType::PacketReq as i32, 2));
        feed.send(p_end()).await.unwrap();
        feed.send(p_data(2, b"")).await.unwrap();
        feed.send(p_data(1, b"def")).await.unwrap();
        feed.send(p_data(1, b"")).await.unwrap();
        let fin = replies.recv().await.unwrap();
        assert_eq!(fin.r#type, PacketType::PacketFin as i32);
        feed.send(p_type(PacketType::PacketFin as i32))
            .await
            .unwrap();
        drop(feed);
        let stats = receiver.await.unwrap().unwrap();
        assert_eq!(stats.files_requested, 2);
        assert_eq!(stats.bytes_received, 6);
        assert_eq!(std::fs::read(dest.join("d/f")).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(dest.join("g")).unwrap(), b"");
        let md = std::fs::metadata(dest.join("d")).unwrap();
        assert_eq!(md.mtime(), 1);
        assert_eq!(md.mode() & 0o7777, 0o755);
    }
}
