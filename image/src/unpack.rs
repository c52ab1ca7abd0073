//! Applying an image layer onto a directory tree, as containerd's
//! `archive.Apply` (`applyNaive`, the native snapshotter's path) does for
//! BuildKit, with the OCI/AUFS whiteout rules.
//!
//! Start with [`apply_layer`]: it undoes the layer's compression (by media
//! type, then by magic bytes, as containerd's `DecompressStream`), reads the
//! tar entry by entry, and changes `root` accordingly:
//!
//! - `.wh.<name>` removes `<name>` beside it (file or whole tree) and is not
//!   created; `.wh..wh..opq` empties its directory of everything that was
//!   there before this layer, keeping what this layer has put there already
//!   (what comes after the marker is added afterwards anyway), so the marker
//!   may appear anywhere in the tar.
//! - A directory entry over a directory only updates its metadata; anything
//!   else replaces what is at its path (a whole tree, if that is a
//!   directory).
//! - Owner (unless [`ApplyOptions::ignore_ownership`]), `SCHILY.xattr.*`,
//!   mode (after the owner, since `chown` clears setuid) and times (PAX
//!   nanoseconds) are set on every entry; directories get their times again
//!   at the end, after their contents stopped changing them.
//!
//! The result carries the layer's diff id: the sha256 of the whole
//! uncompressed stream (trailing bytes after the tar's end included), which
//! callers check against the image config's `rootfs.diff_ids`.
//!
//! # The layer is untrusted
//!
//! The daemon runs as root, so a hostile layer must not be able to touch
//! anything outside `root`:
//! - Every name is cleaned as an absolute path (`..` stops at `/`), and its
//!   parent is resolved with [`bk_fileops::resolve_in_root`]: symlinks
//!   there, planted by this layer or an earlier one, are followed as in a
//!   chroot, never out of `root`.
//! - The final component is never followed: what is there is removed (or
//!   kept, for a directory over a directory) and the new entry created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, `mknod`, `symlink` or `link`, which all
//!   fail rather than go through a symlink; owner, xattrs and times are set
//!   with the `l*`/`AT_SYMLINK_NOFOLLOW` calls or on the open file.
//! - Hard link targets are resolved the same way and must exist in `root`.
//!   A target whose inode also has names elsewhere (snapshots made with
//!   `bk_fileops::link_tree` share inodes with the one below) is first
//!   given an inode of its own, so the link entry's owner, mode and times
//!   cannot change another tree.
//! - Whiteouts can only name an entry of their own directory.
//! - Memory stays bounded: file data is streamed through a fixed buffer, and
//!   the tar headers of one entry (PAX records, GNU long names) may not
//!   exceed [`MAX_ENTRY_HEADERS`] (Go's tar reader stops at 1 MiB per
//!   record). What grows with the layer is one path per entry, kept to tell
//!   this layer's entries from older ones at an opaque marker (as
//!   containerd does).
//!
//! As with the rest of the daemon's tree code, nothing else may change
//! `root` while a layer is applied.
//!
//! Entry types are containerd's: directories, regular files, hard and
//! symbolic links, character and block devices, FIFOs. PAX global headers
//! are skipped, and devices too inside a user namespace (with a warning);
//! any other type (GNU sparse files included: Go's reader leaves them `S`)
//! is an error, `unhandled tar header type`, unless it is a whiteout.
//!
//! # Differences from containerd, on purpose
//!
//! - An opaque marker keeps the directories leading to entries this layer
//!   added even when the layer has no entry for those directories
//!   themselves (containerd would delete them with their new contents).
//! - A directory that a later entry of the same layer replaced or removed
//!   does not get its times restored at the end (containerd would fail on
//!   the missing path or set the times through the replacing symlink).
//! - A hard link to something an earlier layer made, with other names,
//!   copies it up first (above); containerd's snapshots are copies, so it
//!   links to it in place. Layers from containerd, BuildKit and Docker
//!   only link within themselves.
//! - Names that are not UTF-8 are refused: `resolve_in_root` takes `&str`.
//!
//! Blocking code: callers run it on a blocking thread.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bk_fileops::FileOpError;
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

use crate::digest::{Algorithm, Digest, Digester};
use crate::media_types::{self, UnrecognisedMediaType};

/// How many bytes of tar headers (the header blocks, PAX records, GNU long
/// names and link names) one entry may have. Go's reader allows 1 MiB per
/// PAX record or long name; a few of those fit.
pub const MAX_ENTRY_HEADERS: u64 = 4 << 20;

/// The read buffer for file contents.
const COPY_BUFFER: usize = 256 << 10;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

/// `O_NOFOLLOW`, as std's `custom_flags` wants it.
const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// ruzstd's default, 128 MiB: every zstd level up to `--ultra -22` and
/// `--long` at its default fit; a hostile frame asking for more is refused
/// instead of being given the memory (containerd allows 512 MiB).
const MAX_ZSTD_WINDOW: u64 = ruzstd::decoding::DEFAULT_MAX_WINDOW_SIZE;

/// Options for [`apply_layer`]. Build with `..Default::default()`, as
/// fields will be added.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Leave every entry owned by the caller instead of the layer's uid and
    /// gid (containerd's `WithNoSameOwner`), for rootless use.
    pub ignore_ownership: bool,
}

/// What [`apply_layer`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the uncompressed layer, as the image config lists it.
    pub diff_id: Digest,
    /// Bytes of the uncompressed layer.
    pub size: u64,
}

/// Why a layer could not be applied. Entry names are as in the layer,
/// cleaned and rooted (`/etc/passwd`); paths are inside `root`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// Not a layer media type containerd knows.
    #[error(transparent)]
    MediaType(#[from] UnrecognisedMediaType),
    /// `root` is not a directory we can read.
    #[error("layer root {}: {source}", path.display())]
    Root { path: PathBuf, source: io::Error },
    /// The stream itself is broken: decompression, tar framing, a checksum,
    /// or oversized headers. `after` is the last entry read, if any.
    #[error("reading layer{}: {source}", after.as_deref().map(|a| format!(" after {a}")).unwrap_or_default())]
    Read {
        after: Option<String>,
        source: io::Error,
    },
    /// A filesystem call failed for an entry.
    #[error("{entry}: {op} {path}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        path: String,
        source: io::Error,
    },
    /// Resolving an entry's path (or a hard link's target) inside the root
    /// failed.
    #[error("{entry}: {source}")]
    Resolve { entry: String, source: FileOpError },
    /// A whiteout that names something other than a sibling (`.wh.`,
    /// `.wh..`, `.wh...`).
    #[error("{entry}: invalid whiteout name: invalid archive")]
    InvalidWhiteout { entry: String },
    /// A tar entry type containerd does not apply either.
    #[error("{entry}: unhandled tar header type {kind}")]
    UnhandledType { entry: String, kind: u8 },
    /// An entry whose header cannot be applied: bad numbers, a hard link to
    /// the root, a name that is not UTF-8.
    #[error("{entry}: {reason}")]
    Invalid { entry: String, reason: String },
}

/// Applies one layer (a tar stream, compressed as `media_type` says: gzip,
/// zstd or none) onto `root`, as containerd's `archive.Apply` does, and
/// returns the layer's diff id (sha256 of the uncompressed tar) and its
/// uncompressed size.
///
/// Media types are classified as containerd's `DiffCompression` does; for
/// the compressed ones (and Docker's plain `…diff.tar`, historically
/// compressed anyway) the magic bytes decide, so a mislabelled layer still
/// applies. On error, `root` is left part-way: callers apply into a fresh
/// snapshot and discard it.
pub fn apply_layer(
    layer: impl Read,
    media_type: &str,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<Applied, UnpackError> {
    let sniff = media_types::diff_compression(media_type)?.is_some();
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(UnpackError::Root {
                path: root.to_path_buf(),
                source: io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error()),
            });
        }
        Err(source) => {
            return Err(UnpackError::Root {
                path: root.to_path_buf(),
                source,
            });
        }
    }
    let read_err = |after: Option<String>| move |source| UnpackError::Read { after, source };
    let stream = decompress(layer, sniff).map_err(read_err(None))?;
    let framing = Framing::default();
    let mut meter = Meter {
        inner: stream,
        digester: Digester::new(Algorithm::Sha256),
        size: 0,
        framing: &framing,
    };
    let mut applier = Applier {
        root,
        opts,
        skip_devices: running_in_user_ns(),
        unpacked: HashSet::new(),
        leads_to_unpacked: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0; COPY_BUFFER],
    };
    let last = applier.apply_all(&mut meter, &framing)?;
    applier.restore_dir_times()?;
    // containerd hashes the whole stream, whatever follows the tar's end
    // (zero blocks padding a record, anything else).
    framing.in_data.set(true);
    io::copy(&mut meter, &mut io::sink()).map_err(read_err(last))?;
    Ok(Applied {
        diff_id: meter.digester.finish(),
        size: meter.size,
    })
}

/// The uncompressed stream. containerd (`DecompressStream`) only looks at
/// the first bytes when the media type says the layer is compressed; an
/// uncompressed OCI type is read as is.
fn decompress<'r>(mut layer: impl Read + 'r, sniff: bool) -> io::Result<Box<dyn Read + 'r>> {
    if !sniff {
        // Buffered: the tar reader reads headers 512 bytes at a time.
        return Ok(Box::new(BufReader::with_capacity(COPY_BUFFER, layer)));
    }
    let mut head = [0u8; 10];
    let mut len = 0;
    while len < head.len() {
        match layer.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let magic = head;
    let stream = BufReader::with_capacity(
        COPY_BUFFER,
        io::Cursor::new(head).take(len as u64).chain(layer),
    );
    Ok(match detect(&magic[..len]) {
        Detected::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        Detected::Zstd => Box::new(ZstdFrames::new(stream)),
        Detected::Plain => Box::new(stream),
    })
}

enum Detected {
    Gzip,
    Zstd,
    Plain,
}

/// containerd's `DetectCompression`: gzip's magic with deflate, a zstd
/// frame, or a zstd skippable frame (which needs 8 bytes).
fn detect(head: &[u8]) -> Detected {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        return Detected::Gzip;
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Detected::Zstd;
    }
    if head.len() >= 8 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic & 0xffff_fff0 == 0x184d_2a50 {
            return Detected::Zstd;
        }
    }
    Detected::Plain
}

/// A zstd stream of any number of frames, skippable ones skipped, each
/// frame's checksum checked — what Go's decoder reads. ruzstd's own
/// `StreamingDecoder` stops after one frame.
struct ZstdFrames<R> {
    src: R,
    frame: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(src: R) -> Self {
        let mut frame = ruzstd::decoding::FrameDecoder::new();
        frame.set_max_window_size(MAX_ZSTD_WINDOW);
        ZstdFrames {
            src,
            frame,
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.frame.can_collect() > 0 {
                    return self.frame.read(buf);
                }
                if self.frame.is_finished() {
                    if let (Some(want), Some(got)) = (
                        self.frame.get_checksum_from_data(),
                        self.frame.get_calculated_checksum(),
                    ) && want != got
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "zstd: frame checksum mismatch",
                        ));
                    }
                    self.in_frame = false;
                    continue;
                }
                self.frame
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                    })?;
            } else {
                if self.src.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.frame.reset(&mut self.src) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.src).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("zstd: {e}"),
                        ));
                    }
                }
            }
        }
    }
}

/// Whether the tar reader is reading file contents (ours to bound) or
/// headers (its to read into memory: bounded here), and how many header
/// bytes the coming entry has had.
#[derive(Default)]
struct Framing {
    in_data: Cell<bool>,
    header_bytes: Cell<u64>,
}

impl Framing {
    fn start_headers(&self) {
        self.in_data.set(false);
        self.header_bytes.set(0);
    }
}

/// Hashes and counts the uncompressed stream on its way to the tar reader,
/// and stops the reader from buffering oversized headers.
struct Meter<'f, R> {
    inner: R,
    digester: Digester,
    size: u64,
    framing: &'f Framing,
}

impl<R: Read> Read for Meter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        self.size += n as u64;
        if !self.framing.in_data.get() {
            let total = self.framing.header_bytes.get() + n as u64;
            self.framing.header_bytes.set(total);
            if total > MAX_ENTRY_HEADERS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tar headers of one entry exceed {MAX_ENTRY_HEADERS} bytes"),
                ));
            }
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dir,
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Fifo,
    /// A type containerd does not apply; an error unless it is a whiteout.
    Unhandled(u8),
}

/// Nanoseconds since the epoch; wide enough for any header value.
type Nanos = i128;

/// An entry's header, with PAX records applied.
struct Header {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Timespec,
    mtime: Timespec,
    device: (u32, u32),
    link: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Applier<'a> {
    root: &'a Path,
    opts: &'a ApplyOptions,
    /// Devices cannot be made in a user namespace; containerd skips them.
    skip_devices: bool,
    /// Host paths of this layer's entries, for opaque markers.
    unpacked: HashSet<Box<Path>>,
    /// Directories above those entries: an opaque marker keeps them too.
    leads_to_unpacked: HashSet<Box<Path>>,
    /// Directories and their times, set again at the end.
    dirs: Vec<(PathBuf, Timestamps)>,
    buf: Vec<u8>,
}

impl Applier<'_> {
    /// Applies every entry; returns the last one's name, for errors.
    fn apply_all<R: Read>(
        &mut self,
        stream: &mut Meter<'_, R>,
        framing: &Framing,
    ) -> Result<Option<String>, UnpackError> {
        let mut archive = tar::Archive::new(stream);
        let mut entries = archive.entries().map_err(|source| UnpackError::Read {
            after: None,
            source,
        })?;
        let mut last: Option<String> = None;
        loop {
            // Everything read from here to the entry is its headers.
            framing.start_headers();
            let mut entry = match entries.next() {
                None => return Ok(last),
                Some(Ok(entry)) => entry,
                Some(Err(source)) => {
                    return Err(UnpackError::Read {
                        after: last,
                        source,
                    });
                }
            };
            framing.in_data.set(true);
            let name = clean_name(&entry.path_bytes());
            last = Some(show(&name));
            self.apply(&mut entry, &name)?;
            // The tar reader would skip what is left while reading the
            // next header, where it would count against the header limit.
            io::copy(&mut entry, &mut io::sink()).map_err(|source| UnpackError::Read {
                after: last.clone(),
                source,
            })?;
        }
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let shown = show(name);
        let Some(hdr) = read_header(entry, &shown)? else {
            return Ok(());
        };
        if self.skip_devices && matches!(hdr.kind, Kind::Char | Kind::Block) {
            tracing::warn!(entry = %shown, "device ignored: cannot be created in a user namespace");
            return Ok(());
        }
        if name == b"/" {
            // A name made of `.`, `..` and slashes: containerd ignores it,
            // whatever its type (root's own metadata is the snapshot's).
            tracing::debug!(entry = %shown, "ignored: resolves to the root");
            return Ok(());
        }
        let Ok(name_str) = std::str::from_utf8(name) else {
            return Err(invalid(&shown, "name is not UTF-8"));
        };
        // The parent's symlinks are followed inside the root; the final
        // component is taken as written.
        let path = bk_fileops::resolve_in_root(self.root, name_str, false).map_err(|source| {
            UnpackError::Resolve {
                entry: shown.clone(),
                source,
            }
        })?;
        let (Some(parent), Some(base)) = (path.parent(), path.file_name()) else {
            return Err(invalid(&shown, "resolves to the root"));
        };
        let parent = parent.to_path_buf();
        let base = base.as_bytes();
        if parent != self.root {
            self.mkparent(&parent, &shown)?;
        }

        if base == WHITEOUT_OPAQUE {
            return self.opaque(&parent, &shown);
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(UnpackError::InvalidWhiteout { entry: shown });
            }
            let victim = parent.join(OsStr::from_bytes(hidden));
            return remove_all(&victim).map_err(|e| self.io(&shown, "remove", &victim, e));
        }

        if let Kind::Unhandled(kind) = hdr.kind {
            return Err(UnpackError::UnhandledType { entry: shown, kind });
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && hdr.kind == Kind::Dir => {}
            Ok(_) => remove_all(&path).map_err(|e| self.io(&shown, "remove", &path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&shown, "lstat", &path, e)),
        }

        let file = self.create(entry, &hdr, &path, &shown)?;
        self.set_metadata(&hdr, &path, file.as_ref(), &shown)?;
        drop(file);
        if hdr.kind == Kind::Dir {
            self.dirs.push((path.clone(), timestamps(&hdr)));
        }
        self.record_unpacked(path);
        Ok(())
    }

    /// Creates the entry at `path`, where nothing is now (or a directory,
    /// for a directory). Returns the open file for a regular file, so its
    /// metadata is set through the descriptor.
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        hdr: &Header,
        path: &Path,
        shown: &str,
    ) -> Result<Option<File>, UnpackError> {
        let perm = hdr.mode & 0o777;
        match hdr.kind {
            Kind::Dir => {
                if !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                    fs::DirBuilder::new()
                        .mode(perm)
                        .create(path)
                        .map_err(|e| self.io(shown, "mkdir", path, e))?;
                }
                Ok(None)
            }
            Kind::Regular => {
                // O_EXCL: whatever appeared at the path since it was
                // cleared, even a dangling symlink, makes this fail rather
                // than write elsewhere.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(O_NOFOLLOW)
                    .mode(perm)
                    .open(path)
                    .map_err(|e| self.io(shown, "open", path, e))?;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            return Err(UnpackError::Read {
                                after: Some(shown.to_owned()),
                                source,
                            });
                        }
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| self.io(shown, "write", path, e))?;
                }
                Ok(Some(file))
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let file_type = match hdr.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                // Mode bits go through the umask here; set_metadata sets
                // them exactly.
                let dev = rustix::fs::makedev(hdr.device.0, hdr.device.1);
                rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(perm), dev)
                    .map_err(|e| self.io(shown, "mknod", path, e.into()))?;
                Ok(None)
            }
            Kind::Symlink => {
                let target = hdr.link.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
                    .map_err(|e| self.io(shown, "symlink", path, e))?;
                Ok(None)
            }
            Kind::HardLink => {
                let target = self.link_target(hdr, shown)?;
                self.copy_up(&target, shown)?;
                // link(2) does not follow a symlink at `target`: the new
                // name is one more link to the symlink itself, as in
                // containerd.
                fs::hard_link(&target, path).map_err(|source| UnpackError::Io {
                    entry: shown.to_owned(),
                    op: "link",
                    path: format!("{} {}", self.shown(&target), self.shown(path)),
                    source,
                })?;
                Ok(None)
            }
            // Refused before anything was removed (see `apply`).
            Kind::Unhandled(kind) => Err(UnpackError::UnhandledType {
                entry: shown.to_owned(),
                kind,
            }),
        }
    }

    /// Gives `target` an inode of its own before a hard link entry joins
    /// it and sets its owner, mode, xattrs and times — when it is not this
    /// layer's and its inode has other names. Those may be in another tree
    /// (snapshots made with `bk_fileops::link_tree` share file inodes with
    /// the snapshot below, which must never change), so the metadata must
    /// not reach them. overlayfs copy-up does the same; containerd, whose
    /// native snapshots are copies, need not. Layers written by containerd,
    /// BuildKit or Docker only link to files of the same layer, so this is
    /// for the odd (or hostile) layer.
    fn copy_up(&self, target: &Path, shown: &str) -> Result<(), UnpackError> {
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::symlink_metadata(target) {
            Ok(meta) => meta,
            // link() reports it, with both names.
            Err(_) => return Ok(()),
        };
        if meta.is_dir() || meta.nlink() <= 1 || self.unpacked.contains(target) {
            return Ok(());
        }
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Ok(());
        };
        let io = |op, p: &Path, e: io::Error| self.io(shown, op, p, e);
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let link = if ft.is_symlink() {
            Some(fs::read_link(target).map_err(|e| io("readlink", target, e))?)
        } else {
            None
        };
        // The copy, under a name nothing has: each way of creating it
        // fails on an existing name, and the next name is tried.
        let create = |tmp: &Path| -> io::Result<()> {
            if ft.is_file() {
                let mut dst = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(O_NOFOLLOW)
                    .mode(0o600)
                    .open(tmp)?;
                let mut src = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(O_NOFOLLOW)
                    .open(target)?;
                if let Err(e) = io::copy(&mut src, &mut dst) {
                    let _ = fs::remove_file(tmp);
                    return Err(e);
                }
                Ok(())
            } else if let Some(link) = &link {
                std::os::unix::fs::symlink(link, tmp)
            } else {
                // FIFOs, devices and sockets: same type and device number.
                let file_type = FileType::from_raw_mode(meta.mode());
                let perm = Mode::from_raw_mode(0o600);
                Ok(rustix::fs::mknodat(CWD, tmp, file_type, perm, meta.rdev())?)
            }
        };
        let mut attempt = 0u32;
        let tmp = loop {
            let mut tmp_name = OsStr::new(&format!(".bk-copy-up.{attempt}.")).to_os_string();
            tmp_name.push(name);
            let tmp = dir.join(tmp_name);
            match create(&tmp) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(io("copy up", target, e)),
            }
        };
        if !self.opts.ignore_ownership {
            std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| io("lchown", &tmp, e))?;
        }
        copy_xattrs(target, &tmp).map_err(|e| io("copy xattrs", target, e))?;
        if !ft.is_symlink() {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", &tmp, e))?;
        }
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec() as _,
            },
            last_modification: Timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec() as _,
            },
        };
        rustix::fs::utimensat(CWD, &tmp, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("utimes", &tmp, e.into()))?;
        fs::rename(&tmp, target).map_err(|e| io("rename", target, e))
    }

    /// containerd's `hardlinkRootPath`: the link name resolved inside the
    /// root, its last component not followed.
    fn link_target(&self, hdr: &Header, shown: &str) -> Result<PathBuf, UnpackError> {
        let name = clean_name(hdr.link.as_deref().unwrap_or_default());
        if name == b"/" {
            return Err(invalid(shown, "hard link to the root"));
        }
        let Ok(name) = std::str::from_utf8(&name) else {
            return Err(invalid(shown, "hard link target is not UTF-8"));
        };
        bk_fileops::resolve_in_root(self.root, name, false).map_err(|source| UnpackError::Resolve {
            entry: shown.to_owned(),
            source,
        })
    }

    /// Owner, xattrs, mode, times — in containerd's order: `chown` clears
    /// setuid and setgid, so the mode comes after it, and xattrs such as
    /// `security.capability` after it too, since `chown` drops those.
    fn set_metadata(
        &self,
        hdr: &Header,
        path: &Path,
        file: Option<&File>,
        shown: &str,
    ) -> Result<(), UnpackError> {
        if !self.opts.ignore_ownership {
            let res = match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(hdr.uid), Some(hdr.gid)),
                None => std::os::unix::fs::lchown(path, Some(hdr.uid), Some(hdr.gid)),
            };
            res.map_err(|e| self.io(shown, "lchown", path, e))?;
        }
        for (key, value) in &hdr.xattrs {
            self.set_xattr(path, file, key, value, shown)?;
        }
        // A hard link may be a link to a symlink, whose mode is not ours to
        // set (chmod would follow it).
        let is_symlink = match hdr.kind {
            Kind::Symlink => true,
            Kind::HardLink => fs::symlink_metadata(path)
                .map_err(|e| self.io(shown, "lstat", path, e))?
                .file_type()
                .is_symlink(),
            _ => false,
        };
        if !is_symlink {
            let perms = fs::Permissions::from_mode(hdr.mode & 0o7777);
            let res = match file {
                Some(f) => f.set_permissions(perms),
                None => fs::set_permissions(path, perms),
            };
            res.map_err(|e| self.io(shown, "chmod", path, e))?;
        }
        let times = timestamps(hdr);
        let res = match file {
            Some(f) => rustix::fs::futimens(f, &times),
            None => rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW),
        };
        res.map_err(|e| self.io(shown, "utimes", path, e.into()))
    }

    /// containerd's xattr rules: `trusted.*` is never set, `user.*` on
    /// what cannot have it and filesystems without xattrs are warnings.
    fn set_xattr(
        &self,
        path: &Path,
        file: Option<&File>,
        key: &[u8],
        value: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let key_shown = String::from_utf8_lossy(key);
        if key.starts_with(b"trusted.") {
            tracing::warn!(entry = %shown, key = %key_shown, "ignored xattr in archive: admin attributes not supported");
            return Ok(());
        }
        let key_os = OsStr::from_bytes(key);
        let res = match file {
            Some(f) => rustix::fs::fsetxattr(f, key_os, value, XattrFlags::empty()),
            None => rustix::fs::lsetxattr(path, key_os, value, XattrFlags::empty()),
        };
        let Err(err) = res else {
            return Ok(());
        };
        // As containerd: EPERM for `user.*` is fine where the kernel
        // allows those only on regular files and directories.
        let user_on_special = err == rustix::io::Errno::PERM
            && key.starts_with(b"user.")
            && fs::symlink_metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
        if user_on_special || err == rustix::io::Errno::NOTSUP {
            tracing::warn!(entry = %shown, key = %key_shown, error = %err, "ignored xattr in archive");
            return Ok(());
        }
        Err(UnpackError::Io {
            entry: shown.to_owned(),
            op: "setxattr",
            path: format!("{} {key_shown}", self.shown(path)),
            source: err.into(),
        })
    }

    /// containerd's `mkparent`: missing directories up to `dir` are made
    /// 0755; something else in the way is an error.
    fn mkparent(&self, dir: &Path, shown: &str) -> Result<(), UnpackError> {
        let mut missing = Vec::new();
        let mut cur = dir;
        while cur != self.root {
            match fs::symlink_metadata(cur) {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    let enotdir =
                        io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error());
                    return Err(self.io(shown, "mkparent", cur, enotdir));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(cur);
                    match cur.parent() {
                        Some(p) => cur = p,
                        None => break,
                    }
                }
                Err(e) => return Err(self.io(shown, "lstat", cur, e)),
            }
        }
        for dir in missing.into_iter().rev() {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(dir)
                .map_err(|e| self.io(shown, "mkdir", dir, e))?;
            // Not through the umask.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| self.io(shown, "chmod", dir, e))?;
        }
        Ok(())
    }

    /// Empties `dir` of everything not put there by this layer, walking
    /// into what this layer kept (its own directories may hold older
    /// entries). Iterative, so a deep tree cannot exhaust the stack.
    fn opaque(&self, dir: &Path, shown: &str) -> Result<(), UnpackError> {
        fs::symlink_metadata(dir).map_err(|e| self.io(shown, "lstat", dir, e))?;
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let children: Vec<(PathBuf, bool)> = match fs::read_dir(&dir) {
                Ok(rd) => rd
                    .map(|child| {
                        let child = child?;
                        Ok((child.path(), child.file_type()?.is_dir()))
                    })
                    .collect::<io::Result<_>>()
                    .map_err(|e| self.io(shown, "readdir", &dir, e))?,
                // Not a directory (nothing under it) or gone.
                Err(e) if matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOTDIR.raw_os_error()) =>
                {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(shown, "readdir", &dir, e)),
            };
            for (child, is_dir) in children {
                if self.unpacked.contains(child.as_path())
                    || self.leads_to_unpacked.contains(child.as_path())
                {
                    if is_dir {
                        pending.push(child);
                    }
                } else {
                    remove_all(&child).map_err(|e| self.io(shown, "remove", &child, e))?;
                }
            }
        }
        Ok(())
    }

    fn record_unpacked(&mut self, path: PathBuf) {
        let mut up = path.parent();
        while let Some(dir) = up {
            if dir == self.root || !self.leads_to_unpacked.insert(dir.into()) {
                break;
            }
            up = dir.parent();
        }
        self.unpacked.insert(path.into_boxed_path());
    }

    /// Directory times once nothing more is written into them. A directory
    /// a later entry replaced, removed or moved behind a symlink is left
    /// alone.
    fn restore_dir_times(&self) -> Result<(), UnpackError> {
        for (path, times) in &self.dirs {
            // A later entry may have made a parent of this path a symlink
            // (to `/usr`, say), which the kernel would follow: only a path
            // that still resolves to itself inside the root is safe to use.
            let Some(rel) = path.strip_prefix(self.root).ok().and_then(Path::to_str) else {
                continue;
            };
            let still_here = bk_fileops::resolve_in_root(self.root, &format!("/{rel}"), false)
                .is_ok_and(|p| p == *path);
            if !still_here || !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            rustix::fs::utimensat(CWD, path, times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                let shown = self.shown(path);
                self.io(&shown, "utimes", path, e.into())
            })?;
        }
        Ok(())
    }

    fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }

    fn io(&self, entry: &str, op: &'static str, path: &Path, source: io::Error) -> UnpackError {
        UnpackError::Io {
            entry: entry.to_owned(),
            op,
            path: self.shown(path),
            source,
        }
    }
}

/// The header as Go's tar reader presents it to containerd, or `None` for
/// a PAX global header (skipped).
fn read_header<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
) -> Result<Option<Header>, UnpackError> {
    let raw_name_is_dir = entry.path_bytes().ends_with(b"/");
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let h = entry.header();
    let flag = h.as_old().linkflag[0];
    let kind = match flag {
        b'0' => Kind::Regular,
        // Go: legacy archives mark directories with a trailing slash.
        b'\0' if raw_name_is_dir => Kind::Dir,
        b'\0' => Kind::Regular,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        b'g' => {
            tracing::debug!(entry = %shown, "PAX global extended headers found and ignored");
            return Ok(None);
        }
        other => Kind::Unhandled(other),
    };
    // Go's numeric parsing, not the tar crate's: it reads empty fields
    // as 0 where the tar crate fails.
    let field = |what: &str, b: &[u8]| {
        go_numeric(b).ok_or_else(|| invalid(shown, &format!("bad {what} in header")))
    };
    let old = h.as_old();
    let mode = field("mode", &old.mode)? as u32 & 0o7777;
    // The tar reader has written PAX `uid`/`gid` into the header already.
    let uid = id32(field("uid", &old.uid)?, shown)?;
    let gid = id32(field("gid", &old.gid)?, shown)?;
    let mut mtime: Nanos = Nanos::from(field("mtime", &old.mtime)?) * 1_000_000_000;
    // Go reads a GNU header's atime when set, ignoring a bad one.
    let mut atime: Option<Nanos> = h
        .as_gnu()
        .filter(|g| g.atime[0] != 0)
        .and_then(|g| go_numeric(&g.atime))
        .map(|s| Nanos::from(s) * 1_000_000_000);
    let device = match kind {
        Kind::Char | Kind::Block => {
            let (major, minor) = match (h.as_ustar(), h.as_gnu()) {
                (Some(u), _) => (
                    field("devmajor", &u.dev_major)?,
                    field("devminor", &u.dev_minor)?,
                ),
                (None, Some(g)) => (
                    field("devmajor", &g.dev_major)?,
                    field("devminor", &g.dev_minor)?,
                ),
                // A V7 header has no device numbers; Go leaves them 0.
                (None, None) => (0, 0),
            };
            let dev = |n: i64| {
                u32::try_from(n)
                    .map_err(|_| invalid(shown, &format!("device number {n} out of range")))
            };
            (dev(major)?, dev(minor)?)
        }
        _ => (0, 0),
    };
    let mut xattrs = Vec::new();
    let bad_pax = |e: io::Error| invalid(shown, &format!("bad PAX record: {e}"));
    if let Some(pax) = entry.pax_extensions().map_err(bad_pax)? {
        for ext in pax {
            let ext = ext.map_err(bad_pax)?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(PAX_XATTR) {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime" {
                mtime =
                    pax_time(ext.value_bytes()).ok_or_else(|| invalid(shown, "bad PAX mtime"))?;
            } else if key == b"atime" {
                atime = Some(
                    pax_time(ext.value_bytes()).ok_or_else(|| invalid(shown, "bad PAX atime"))?,
                );
            }
        }
    }
    // containerd: atime is the later of the two, both bounded.
    let atime = match atime {
        Some(a) if a > mtime => a,
        _ => mtime,
    };
    Ok(Some(Header {
        kind,
        mode,
        uid,
        gid,
        atime: bound_time(atime),
        mtime: bound_time(mtime),
        device,
        link,
        xattrs,
    }))
}

/// A uid or gid as `lchown` takes it. Go would truncate a larger one, or
/// pass -1 ("leave as is") for a negative one; neither is what the layer
/// means.
fn id32(id: i64, shown: &str) -> Result<u32, UnpackError> {
    u32::try_from(id).map_err(|_| invalid(shown, &format!("owner id {id} out of range")))
}

/// Go's `parseNumeric`: base-256 when the top bit is set (negative with
/// the next one), else octal with NULs and spaces around it ignored (an
/// empty field is 0). `None` where Go reports `ErrHeader`.
fn go_numeric(b: &[u8]) -> Option<i64> {
    if let Some(&first) = b.first()
        && first & 0x80 != 0
    {
        let inv = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 > 0 {
            return None;
        }
        // Below 2^63, so it fits; `!x` is Go's `^int64(x)`, -x-1.
        let x = x as i64;
        return Some(if inv == 0xff { !x } else { x });
    }
    let is_pad = |c: &u8| *c == b' ' || *c == 0;
    let start = b.iter().position(|c| !is_pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_pad(c)).map_or(start, |i| i + 1);
    let trimmed = &b[start..end];
    if trimmed.is_empty() {
        return Some(0);
    }
    // Go's parseString: up to the first NUL.
    let digits = trimmed.split(|&c| c == 0).next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).ok()?;
    // ParseUint: digits only, no sign.
    if !digits.bytes().all(|c| (b'0'..=b'7').contains(&c)) || digits.is_empty() {
        return None;
    }
    i64::try_from(u64::from_str_radix(digits, 8).ok()?).ok()
}

/// Go's `parsePAXTime`: `[-]seconds[.fraction]`, digits beyond
/// nanoseconds dropped.
fn pax_time(value: &[u8]) -> Option<Nanos> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((secs, frac)) => (secs, frac),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: Nanos = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |d| Nanos::from(d - b'0'));
    }
    let secs = Nanos::from(secs) * 1_000_000_000;
    Some(if s.starts_with('-') {
        secs - nanos
    } else {
        secs + nanos
    })
}

/// containerd's `boundTime`: before the epoch or past what a Go
/// `time.Duration` holds (year 2262) becomes the epoch.
fn bound_time(t: Nanos) -> Timespec {
    let t = if (0..=Nanos::from(i64::MAX)).contains(&t) {
        t
    } else {
        0
    };
    // In range: the quotient fits i64, the remainder is below 10^9.
    Timespec {
        tv_sec: (t / 1_000_000_000) as i64,
        tv_nsec: (t % 1_000_000_000) as _,
    }
}

fn timestamps(hdr: &Header) -> Timestamps {
    Timestamps {
        last_access: hdr.atime,
        last_modification: hdr.mtime,
    }
}

/// A name as a clean absolute path: `..` cannot climb above `/`, so
/// `../../etc/x` is `/etc/x` (Go's `Clean` of the name joined to `/`, as
/// containerd's root-relative resolution amounts to).
fn clean_name(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(comp),
        }
    }
    let mut out = Vec::with_capacity(name.len() + 1);
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn invalid(entry: &str, reason: &str) -> UnpackError {
    UnpackError::Invalid {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Every xattr of `src` onto `dst`, neither followed if a symlink;
/// `trusted.*` (not ours to copy, as containerd's copy-up skips them) and
/// what the filesystem refuses are left out.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let names = match read_xattr(|buf| rustix::fs::llistxattr(src, buf)) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.") {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let value = match read_xattr(|buf| rustix::fs::lgetxattr(src, name, buf)) {
            Ok(value) => value,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::lsetxattr(dst, name, &value, XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Calls a get/list xattr function with a buffer large enough, growing it
/// if the value grew in between (ERANGE).
fn read_xattr(mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => {
                let want = call(&mut [])?;
                buf.resize(want.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Go's `os.RemoveAll` on one path: a directory goes with its contents,
/// anything else (a symlink included) is unlinked, never followed; a
/// missing path is fine.
fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// moby's `userns.RunningInUserNS`: a uid map other than the full identity
/// map means a user namespace.
fn running_in_user_ns() -> bool {
    static IN_USER_NS: OnceLock<bool> = OnceLock::new();
    *IN_USER_NS.get_or_init(|| {
        let Ok(map) = fs::read_to_string("/proc/self/uid_map") else {
            return false;
        };
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields != ["0", "0", "4294967295"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_inside_the_root() {
        for (name, want) in [
            ("a/b/", "/a/b"),
            ("./a", "/a"),
            ("../../etc/x", "/etc/x"),
            ("/etc/x", "/etc/x"),
            ("a/../../x", "/x"),
            ("./", "/"),
            ("..", "/"),
            ("", "/"),
        ] {
            assert_eq!(show(&clean_name(name.as_bytes())), want, "{name:?}");
        }
    }

    #[test]
    fn pax_times_parse_as_go() {
        assert_eq!(pax_time(b"1"), Some(1_000_000_000));
        assert_eq!(pax_time(b"1.5"), Some(1_500_000_000));
        assert_eq!(pax_time(b"1.1234567899"), Some(1_123_456_789));
        assert_eq!(pax_time(b"-1.5"), Some(-1_500_000_000));
        assert_eq!(pax_time(b"1.x"), None);
        assert_eq!(pax_time(b""), None);
        assert_eq!(pax_time(b".5"), None);
        let t = bound_time(-1);
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 0));
        let t = bound_time(Nanos::from(i64::MAX) + 1);
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 0));
        let t = bound_time(1_500_000_000);
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 500_000_000));
    }

    #[test]
    fn numeric_fields_parse_as_go() {
        assert_eq!(go_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(go_numeric(b"  644 \0"), Some(0o644));
        assert_eq!(go_numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(go_numeric(b""), Some(0));
        assert_eq!(go_numeric(b"12\x0034"), Some(0o12));
        assert_eq!(go_numeric(b"0009"), None);
        assert_eq!(go_numeric(b"-1"), None);
        assert_eq!(go_numeric(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        assert_eq!(go_numeric(&[0xff; 8]), Some(-1));
        assert_eq!(go_numeric(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn magic_bytes() {
        assert!(matches!(detect(&[0x1f, 0x8b, 0x08, 0]), Detected::Gzip));
        assert!(matches!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Detected::Zstd));
        assert!(matches!(
            detect(&[0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]),
            Detected::Zstd
        ));
        // Skippable magic needs 8 bytes, as in containerd.
        assert!(matches!(detect(&[0x5a, 0x2a, 0x4d, 0x18]), Detected::Plain));
        assert!(matches!(detect(b"ustar"), Detected::Plain));
        assert!(matches!(detect(&[]), Detected::Plain));
    }
}
