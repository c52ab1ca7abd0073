//! Layer blobs from directory diffs: the changes between a snapshot and the
//! one below it, as an OCI layer tar, compressed and written into the
//! content store.
//!
//! Start with [`create_layer`] (async: the work runs on blocking threads);
//! [`write_diff`] is the blocking tar generator on its own (any `Write`).
//!
//! What the tar holds is what containerd's walking differ
//! (`archive.WriteDiff` over continuity's `fs.Changes`) writes for the same
//! two trees, because BuildKit's layers are made that way and a diff id
//! that differs from Go BuildKit's for the same change would split caches
//! and break reproducible builds:
//! - Both trees are walked in Go's `filepath.Walk` order (depth first, names
//!   in byte order) and compared path by path with `/` sorting first.
//! - An entry is unchanged when it is the same inode (snapshots here are
//!   hard-linked copies, so that is the usual case and costs nothing), or
//!   when mode (with type), owner, rdev, `security.capability`, size and
//!   mtime agree; with whole-second mtimes on both sides (unpacked from a
//!   tar) regular files are compared byte by byte. Symlink targets are
//!   always compared (containerd only does with whole-second mtimes; see
//!   [`DiffOptions`]). A directory is "changed" only by its own metadata,
//!   never by its mtime.
//! - A deleted path is one `.wh.<name>` whiteout (mode 0, owner 0, mtime
//!   0); nothing under a deleted directory is listed. A directory replaced
//!   by a file (or the reverse) is just the new entry: applying it replaces
//!   the old one.
//! - Every written entry is preceded by its parent directories (as they are
//!   in the upper tree) unless already written; the root never is.
//! - Headers: numeric owner only, mode with setuid/setgid/sticky, mtime
//!   truncated to the second (clamped first to `rewrite_timestamp`), no
//!   atime/ctime, device numbers for devices; sockets are skipped. Only
//!   `security.capability` becomes a `SCHILY.xattr.*` record, as in
//!   containerd (see [`Xattrs`]). The encoding is Go's `archive/tar`
//!   (module `gotar`): USTAR unless a field needs PAX.
//! - Hard links inside the layer: the first changed path of an inode is
//!   the file, the others are tar hard links to it; unchanged paths sharing
//!   that inode (created by the step, so not the same inode as below) are
//!   written as links right after it, as containerd does. Paths that are
//!   still the very inode of the lower tree are never written, even when a
//!   new path links to that inode: the new path is then a plain file (the
//!   link to the layer below cannot be expressed; the content is right).
//!
//! The tar is streamed, never held: a blocking thread walks and writes the
//! tar (hashing it for the diff id), a second compresses, and the async
//! caller appends to a content store writer, so a large layer keeps two
//! cores busy.

mod gotar;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::content::{ContentError, ContentStore};
use crate::digest::{Algorithm, Digest, Digester};
use crate::media_types;
use crate::types::Descriptor;

pub(crate) use gotar::{Format as TarFormat, Header as TarHeader, TarWriter};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    /// `level` 0–9 as gzip's (BuildKit's default is Go's default, 6).
    Gzip {
        level: u32,
    },
    /// Written by a pure-Rust encoder that has one effort level, about
    /// zstd's level 1, whatever `level` says (libzstd would add a C build;
    /// see the crate's Cargo.toml). The frames are standard zstd.
    Zstd {
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// The layer media type for this compression, OCI or Docker.
    pub fn media_type(self, oci: bool) -> &'static str {
        match (self, oci) {
            (Compression::Uncompressed, true) => media_types::OCI_LAYER,
            (Compression::Uncompressed, false) => media_types::DOCKER_LAYER,
            (Compression::Gzip { .. }, true) => media_types::OCI_LAYER_GZIP,
            (Compression::Gzip { .. }, false) => media_types::DOCKER_LAYER_GZIP,
            (Compression::Zstd { .. }, true) => media_types::OCI_LAYER_ZSTD,
            (Compression::Zstd { .. }, false) => media_types::DOCKER_LAYER_ZSTD,
        }
    }
}

/// Which extended attributes go into the layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Xattrs {
    /// Only `security.capability`, as containerd's differ (and so every
    /// BuildKit layer): the diff ids match Go BuildKit's.
    #[default]
    Capability,
    /// Every xattr except `trusted.*` (which needs privilege to set and is
    /// overlayfs' own) and `security.selinux` (the host's label), also
    /// compared when deciding whether a file changed. Not BuildKit's
    /// behaviour: layers with other xattrs get other diff ids.
    All,
}

/// What [`write_diff`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// SOURCE_DATE_EPOCH for `rewrite-timestamp`: mtimes later than this
    /// (Unix seconds) are written as it, as BuildKit's rewrite does.
    pub rewrite_timestamp: Option<i64>,
    pub xattrs: Xattrs,
}

/// What [`create_layer`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// OCI media types (BuildKit's `oci-mediatypes`), else Docker's.
    pub oci_media_types: bool,
    pub diff: DiffOptions,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::default(),
            oci_media_types: true,
            diff: DiffOptions::default(),
        }
    }
}

/// A layer blob in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Media type, digest and size of the (compressed) blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Counts from one diff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Tar entries written (whiteouts, parents and links included); 0 for
    /// no change, when the tar is only its 1024-byte trailer.
    pub entries: u64,
    /// Bytes of the uncompressed tar.
    pub size: u64,
}

/// A layer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file's size changed while it was being read (a tree being
    /// modified during export).
    #[error("{}: file changed while it was being archived", path.display())]
    Changed { path: PathBuf },
    #[error("writing the layer tar: {0}")]
    Output(#[source] io::Error),
    #[error("storing the layer: {0}")]
    Content(#[from] ContentError),
    #[error("layer {0}")]
    Compression(String),
    /// A worker thread died or the pipeline broke for another reason.
    #[error("layer creation failed: {0}")]
    Internal(String),
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// ---- walking ---------------------------------------------------------------

/// One path of a tree in walk order: relative (`a/b`, no leading slash)
/// and its `lstat`.
struct WalkEntry {
    rel: Vec<u8>,
    meta: Metadata,
}

struct Frame {
    rel: Vec<u8>,
    names: Vec<Vec<u8>>,
    next: usize,
}

/// Go's `filepath.Walk` as an iterator: each directory's names sorted by
/// bytes, a directory's contents right after it.
struct Walker {
    root: PathBuf,
    stack: Vec<Frame>,
}

fn join_rel(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>, LayerError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at("list", dir))? {
        let entry = entry.map_err(io_at("list", dir))?;
        names.push(entry.file_name().as_bytes().to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

impl Walker {
    fn new(root: &Path) -> Result<Walker, LayerError> {
        let meta = fs::symlink_metadata(root).map_err(io_at("stat", root))?;
        if !meta.is_dir() {
            return Err(LayerError::Io {
                op: "walk",
                path: root.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            });
        }
        Ok(Walker {
            root: root.to_path_buf(),
            stack: vec![Frame {
                rel: Vec::new(),
                names: sorted_names(root)?,
                next: 0,
            }],
        })
    }

    fn next(&mut self) -> Result<Option<WalkEntry>, LayerError> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            if top.next >= top.names.len() {
                self.stack.pop();
                continue;
            }
            let name = std::mem::take(&mut top.names[top.next]);
            top.next += 1;
            let mut rel = top.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            let path = join_rel(&self.root, &rel);
            let meta = fs::symlink_metadata(&path).map_err(io_at("stat", &path))?;
            if meta.is_dir() {
                let names = sorted_names(&path)?;
                self.stack.push(Frame {
                    rel: rel.clone(),
                    names,
                    next: 0,
                });
            }
            return Ok(Some(WalkEntry { rel, meta }));
        }
    }
}

/// continuity's `directoryCompare`: byte order with `/` lowest, so a
/// directory's contents sort right after it, as the walk yields them.
fn directory_compare(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let map = |c: u8| if c == b'/' { 0 } else { c };
    a.iter().map(|c| map(*c)).cmp(b.iter().map(|c| map(*c)))
}

// ---- comparing -------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Add,
    Modify,
    Delete,
    Unmodified,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Same {
    Inode,
    Metadata,
    Different,
}

const CAPABILITY: &str = "security.capability";

/// An xattr's value, `None` when absent or unsupported there.
fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, LayerError> {
    use rustix::io::Errno;
    // Capabilities are 20–24 bytes: one call nearly always suffices.
    let mut small = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut small[..]) {
        Ok(n) => return Ok(Some(small[..n].to_vec())),
        Err(e) if e == Errno::NODATA || e == Errno::NOTSUP => return Ok(None),
        Err(e) if e == Errno::RANGE => {}
        Err(e) => return Err(io_at("getxattr", path)(e.into())),
    }
    loop {
        let size = match rustix::fs::lgetxattr_query(path, name) {
            Ok(n) => n,
            Err(e) if e == Errno::NODATA || e == Errno::NOTSUP => return Ok(None),
            Err(e) => return Err(io_at("getxattr", path)(e.into())),
        };
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            // It grew between the two calls: ask again.
            Err(e) if e == Errno::RANGE => continue,
            Err(e) if e == Errno::NODATA || e == Errno::NOTSUP => return Ok(None),
            Err(e) => return Err(io_at("getxattr", path)(e.into())),
        }
    }
}

/// The xattrs a layer carries for `path`, by name.
fn layer_xattrs(path: &Path, policy: Xattrs) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
    use rustix::io::Errno;
    let mut out = Vec::new();
    match policy {
        Xattrs::Capability => {
            if let Some(v) = get_xattr(path, CAPABILITY)?.filter(|v| !v.is_empty()) {
                out.push((CAPABILITY.to_owned(), v));
            }
        }
        Xattrs::All => {
            let names = loop {
                let size = match rustix::fs::llistxattr_query(path) {
                    Ok(n) => n,
                    Err(e) if e == Errno::NOTSUP => return Ok(out),
                    Err(e) => return Err(io_at("listxattr", path)(e.into())),
                };
                let mut buf = vec![0u8; size];
                match rustix::fs::llistxattr(path, &mut buf[..]) {
                    Ok(n) => {
                        buf.truncate(n);
                        break buf;
                    }
                    Err(e) if e == Errno::RANGE => continue,
                    Err(e) => return Err(io_at("listxattr", path)(e.into())),
                }
            };
            for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                if name.starts_with("trusted.") || name == "security.selinux" {
                    continue;
                }
                if let Some(v) = get_xattr(path, name)? {
                    out.push((name.to_owned(), v));
                }
            }
            out.sort();
        }
    }
    Ok(out)
}

/// Whether two files have the same bytes (sizes already equal).
fn same_content(p1: &Path, p2: &Path) -> Result<bool, LayerError> {
    let mut f1 = File::open(p1).map_err(io_at("open", p1))?;
    let mut f2 = File::open(p2).map_err(io_at("open", p2))?;
    let mut b1 = vec![0u8; 64 * 1024];
    let mut b2 = vec![0u8; 64 * 1024];
    loop {
        let n1 = read_full(&mut f1, &mut b1).map_err(io_at("read", p1))?;
        let n2 = read_full(&mut f2, &mut b2).map_err(io_at("read", p2))?;
        if n1 != n2 || b1[..n1] != b2[..n2] {
            return Ok(false);
        }
        if n1 == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// continuity's `sameFile`, plus the inode fast path's distinction and an
/// unconditional symlink target comparison.
fn same_file(
    m1: &Metadata,
    p1: &Path,
    m2: &Metadata,
    p2: &Path,
    policy: Xattrs,
) -> Result<Same, LayerError> {
    if m1.dev() == m2.dev() && m1.ino() == m2.ino() {
        return Ok(Same::Inode);
    }
    if m1.mode() != m2.mode()
        || m1.uid() != m2.uid()
        || m1.gid() != m2.gid()
        || m1.rdev() != m2.rdev()
    {
        return Ok(Same::Different);
    }
    if layer_xattrs(p1, policy)? != layer_xattrs(p2, policy)? {
        return Ok(Same::Different);
    }
    if m1.is_dir() {
        return Ok(Same::Metadata);
    }
    if m1.size() != m2.size() || m1.mtime() != m2.mtime() {
        return Ok(Same::Different);
    }
    let symlink = m1.file_type().is_symlink();
    if symlink {
        let t1 = fs::read_link(p1).map_err(io_at("readlink", p1))?;
        let t2 = fs::read_link(p2).map_err(io_at("readlink", p2))?;
        if t1 != t2 {
            return Ok(Same::Different);
        }
    }
    let (n1, n2) = (m1.mtime_nsec(), m2.mtime_nsec());
    if n1 == 0 && n2 == 0 {
        // Both times may have been truncated by a tar: only the content
        // can tell.
        if symlink || m1.size() == 0 || same_content(p1, p2)? {
            return Ok(Same::Metadata);
        }
        return Ok(Same::Different);
    }
    if n1 != n2 {
        return Ok(Same::Different);
    }
    Ok(Same::Metadata)
}

// ---- writing ---------------------------------------------------------------

/// containerd's `ChangeWriter`: turns changes into tar entries.
struct ChangeWriter<'a, W: Write> {
    tw: TarWriter<W>,
    source: &'a Path,
    opts: DiffOptions,
    inode_src: HashMap<(u64, u64), Vec<u8>>,
    inode_refs: HashMap<(u64, u64), Vec<Vec<u8>>>,
    added_dirs: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    entries: u64,
}

fn parent_of(name: &[u8]) -> Option<&[u8]> {
    name.iter().rposition(|b| *b == b'/').map(|i| &name[..i])
}

impl<W: Write> ChangeWriter<'_, W> {
    fn write_header(&mut self, hdr: &TarHeader) -> Result<(), LayerError> {
        self.entries += 1;
        self.tw.write_header(hdr).map_err(LayerError::Output)
    }

    fn handle(&mut self, kind: Kind, p: &[u8], meta: &Metadata) -> Result<(), LayerError> {
        if kind == Kind::Delete {
            let mut name = Vec::with_capacity(p.len() + 4);
            match parent_of(p) {
                Some(dir) => {
                    name.extend_from_slice(dir);
                    name.extend_from_slice(b"/.wh.");
                    name.extend_from_slice(&p[dir.len() + 1..]);
                }
                None => {
                    name.extend_from_slice(b".wh.");
                    name.extend_from_slice(p);
                }
            }
            // containerd 2 writes whiteouts at the epoch (not at
            // SOURCE_DATE_EPOCH), mode 0, owned by root, format left to Go.
            let mut hdr = TarHeader::new(name, gotar::TYPE_REG);
            hdr.mtime = Some((0, 0));
            self.include_parents(&hdr)?;
            return self.write_header(&hdr);
        }

        let ft = meta.file_type();
        let source = join_rel(self.source, p);
        let mut name = p.to_vec();
        let mut hdr = TarHeader::new(Vec::new(), gotar::TYPE_REG);
        if ft.is_file() {
            hdr.size = meta.size() as i64;
        } else if ft.is_dir() {
            hdr.typeflag = gotar::TYPE_DIR;
            name.push(b'/');
        } else if ft.is_symlink() {
            hdr.typeflag = gotar::TYPE_SYMLINK;
            let target = fs::read_link(&source).map_err(io_at("readlink", &source))?;
            hdr.linkname = target.as_os_str().as_bytes().to_vec();
        } else if ft.is_char_device() {
            hdr.typeflag = gotar::TYPE_CHAR;
        } else if ft.is_block_device() {
            hdr.typeflag = gotar::TYPE_BLOCK;
        } else if ft.is_fifo() {
            hdr.typeflag = gotar::TYPE_FIFO;
        } else {
            // Sockets (and anything else) cannot be archived: skipped, as
            // containerd does.
            return Ok(());
        }
        hdr.name = name.clone();
        hdr.mode = i64::from(meta.mode() & 0o7777);
        hdr.uid = i64::from(meta.uid());
        hdr.gid = i64::from(meta.gid());
        let mut mtime = meta.mtime();
        if let Some(epoch) = self.opts.rewrite_timestamp.filter(|e| mtime > *e) {
            mtime = epoch;
        }
        hdr.mtime = Some((mtime, 0));
        hdr.format = TarFormat::Pax;
        // containerd's test is a bit test, true for directories and
        // symlinks as well; their rdev is 0 anyway.
        let mode = meta.mode();
        if mode & 0o060000 != 0 || mode & 0o020000 != 0 {
            let rdev = meta.rdev();
            hdr.devmajor = i64::from(rustix::fs::major(rdev));
            hdr.devminor = i64::from(rustix::fs::minor(rdev));
        }

        let mut additional_links = Vec::new();
        let key = (meta.dev(), meta.ino());
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(src) = self.inode_src.get(&key) {
                hdr.typeflag = gotar::TYPE_LINK;
                hdr.linkname = src.clone();
                hdr.size = 0;
            } else {
                if kind == Kind::Unmodified {
                    self.inode_refs.entry(key).or_default().push(name);
                    return Ok(());
                }
                self.inode_src.insert(key, name.clone());
                additional_links = self.inode_refs.remove(&key).unwrap_or_default();
            }
        } else if kind == Kind::Unmodified {
            return Ok(());
        }

        for (k, v) in layer_xattrs(&source, self.opts.xattrs)? {
            hdr.pax_records.insert(format!("SCHILY.xattr.{k}"), v);
        }

        self.include_parents(&hdr)?;
        self.write_header(&hdr)?;
        if hdr.typeflag == gotar::TYPE_REG && hdr.size > 0 {
            self.copy_file(&source, meta.size())?;
        }

        if !additional_links.is_empty() {
            let target = hdr.name.clone();
            for extra in additional_links {
                hdr.name = extra;
                hdr.typeflag = gotar::TYPE_LINK;
                hdr.linkname = target.clone();
                hdr.size = 0;
                self.include_parents(&hdr)?;
                self.write_header(&hdr)?;
            }
        }
        Ok(())
    }

    fn copy_file(&mut self, path: &Path, size: u64) -> Result<(), LayerError> {
        let mut file = File::open(path).map_err(io_at("open", path))?;
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(LayerError::Changed {
                        path: path.to_path_buf(),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at("read", path)(e)),
            };
            self.tw
                .write_data(&self.buf[..n])
                .map_err(LayerError::Output)?;
            left -= n as u64;
        }
        // Grown since the stat: Go's tar writer refuses the extra bytes.
        let mut one = [0u8; 1];
        if read_full(&mut file, &mut one).map_err(io_at("read", path))? != 0 {
            return Err(LayerError::Changed {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Writes the parent directories of `hdr` not written yet (their
    /// metadata from the upper tree), outermost first.
    fn include_parents(&mut self, hdr: &TarHeader) -> Result<(), LayerError> {
        let mut name = hdr.name.as_slice();
        while name.last() == Some(&b'/') {
            name = &name[..name.len() - 1];
        }
        if let Some(parent) = parent_of(name).filter(|p| !p.is_empty())
            && !self.added_dirs.contains(parent)
        {
            let parent = parent.to_vec();
            self.added_dirs.insert(parent.clone());
            let path = join_rel(self.source, &parent);
            // `stat`, as containerd: the parent is a directory in the upper
            // tree (we walked through it).
            let meta = fs::metadata(&path).map_err(io_at("stat", &path))?;
            self.handle(Kind::Modify, &parent, &meta)?;
        }
        if hdr.typeflag == gotar::TYPE_DIR {
            self.added_dirs.insert(name.to_vec());
        }
        Ok(())
    }
}

/// Writes the OCI layer tar of the changes from `lower` (or from nothing)
/// to `upper` into `out`. Blocking: walks both trees and reads changed
/// files; call it from a blocking thread.
pub fn write_diff<W: Write>(
    lower: Option<&Path>,
    upper: &Path,
    opts: &DiffOptions,
    out: W,
) -> Result<(DiffStats, W), LayerError> {
    let mut cw = ChangeWriter {
        tw: TarWriter::new(out),
        source: upper,
        opts: *opts,
        inode_src: HashMap::new(),
        inode_refs: HashMap::new(),
        added_dirs: HashSet::new(),
        buf: vec![0u8; 256 * 1024],
        entries: 0,
    };
    let mut upper_walk = Walker::new(upper)?;
    match lower {
        None => {
            while let Some(e) = upper_walk.next()? {
                cw.handle(Kind::Add, &e.rel, &e.meta)?;
            }
        }
        Some(lower) => double_walk(lower, &mut upper_walk, &mut cw)?,
    }
    let entries = cw.entries;
    let (out, size) = cw.tw.finish().map_err(LayerError::Output)?;
    Ok((DiffStats { entries, size }, out))
}

/// continuity's `doubleWalkDiff`, path by path.
fn double_walk<W: Write>(
    lower: &Path,
    upper_walk: &mut Walker,
    cw: &mut ChangeWriter<'_, W>,
) -> Result<(), LayerError> {
    let mut lower_walk = Walker::new(lower)?;
    let mut f1 = lower_walk.next()?;
    let mut f2 = upper_walk.next()?;
    // A directory removed (or replaced by a non-directory): its former
    // contents are implied and not listed. Kept with a trailing slash.
    let mut rmdir: Option<Vec<u8>> = None;
    loop {
        let kind = match (&f1, &f2) {
            (None, None) => return Ok(()),
            (None, Some(_)) => Kind::Add,
            (Some(_), None) => Kind::Delete,
            (Some(a), Some(b)) => match directory_compare(&a.rel, &b.rel) {
                std::cmp::Ordering::Less => Kind::Delete,
                std::cmp::Ordering::Greater => Kind::Add,
                std::cmp::Ordering::Equal => Kind::Modify,
            },
        };
        match kind {
            Kind::Add => {
                rmdir = None;
                if let Some(b) = f2.take() {
                    cw.handle(Kind::Add, &b.rel, &b.meta)?;
                }
                f2 = upper_walk.next()?;
            }
            Kind::Delete => {
                if let Some(a) = f1.take() {
                    let under_removed = rmdir.as_ref().is_some_and(|r| a.rel.starts_with(r));
                    if !under_removed {
                        if a.meta.is_dir() {
                            let mut r = a.rel.clone();
                            r.push(b'/');
                            rmdir = Some(r);
                        } else {
                            rmdir = None;
                        }
                        cw.handle(Kind::Delete, &a.rel, &a.meta)?;
                    }
                }
                f1 = lower_walk.next()?;
            }
            _ => {
                if let (Some(a), Some(b)) = (f1.take(), f2.take()) {
                    let lp = join_rel(lower, &a.rel);
                    let up = join_rel(cw.source, &b.rel);
                    let same = same_file(&a.meta, &lp, &b.meta, &up, cw.opts.xattrs)?;
                    if a.meta.is_dir() && !b.meta.is_dir() {
                        let mut r = a.rel.clone();
                        r.push(b'/');
                        rmdir = Some(r);
                    } else {
                        rmdir = None;
                    }
                    match same {
                        // Still the lower tree's inode: nothing to say,
                        // and never a hard-link partner (see the module
                        // docs).
                        Same::Inode => {}
                        Same::Metadata => {
                            if !b.meta.is_dir() && b.meta.nlink() > 1 {
                                cw.handle(Kind::Unmodified, &b.rel, &b.meta)?;
                            }
                        }
                        Same::Different => cw.handle(Kind::Modify, &b.rel, &b.meta)?,
                    }
                }
                f1 = lower_walk.next()?;
                f2 = upper_walk.next()?;
            }
        }
    }
}

// ---- the pipeline ----------------------------------------------------------

/// Chunks moved between the pipeline's stages.
const CHUNK: usize = 1024 * 1024;
/// Chunks in flight per stage: enough to smooth bursts, small enough that
/// memory stays a few MiB whatever the layer size.
const DEPTH: usize = 4;

/// Stage one's output: hashes the tar (the diff id) and hands it on in
/// chunks.
struct HashingSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    digester: Digester,
    size: u64,
}

impl HashingSender {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.digester.update(&chunk);
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "layer pipeline closed"))
    }
}

impl Write for HashingSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_chunk()
    }
}

/// Stage two's output: compressed bytes to the async writer, in chunks.
struct ChunkOut {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    closed: bool,
}

impl ChunkOut {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() || self.closed {
            self.buf.clear();
            return if self.closed {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "layer pipeline closed",
                ))
            } else {
                Ok(())
            };
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        if self.tx.blocking_send(chunk).is_err() {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "layer pipeline closed",
            ));
        }
        Ok(())
    }
}

impl Write for ChunkOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "layer pipeline closed",
            ));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Stage two's input as a reader, for the zstd encoder (which pulls).
struct ChunkIn {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkIn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                // The tar stage ended (or failed: its error is reported
                // separately).
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn closed_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Compresses `input` into one zstd frame with a checksum (as Go's
/// encoder writes), on `threads` workers. Always in libzstd's
/// multi-threaded mode, whose output does not depend on the number of
/// workers: a layer's digest is the same on every machine.
fn zstd_compress<R: Read, W: Write>(
    input: &mut R,
    out: W,
    level: i32,
    threads: u32,
) -> io::Result<W> {
    let mut encoder = zstd::stream::write::Encoder::new(out, zstd_level(level))?;
    encoder.include_checksum(true)?;
    encoder.multithread(threads.max(1))?;
    io::copy(input, &mut encoder)?;
    encoder.finish()
}

/// libzstd's level for `compression-level` (0 is its default, 3; levels
/// beyond 22 are 22).
fn zstd_level(level: i32) -> i32 {
    match level {
        0 => 3,
        l => l.clamp(1, 22),
    }
}

/// Stage two: compress (or pass on) until stage one is done.
fn compress_stage(
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    compression: Compression,
) -> Result<(), LayerError> {
    let out = ChunkOut {
        tx,
        buf: Vec::with_capacity(CHUNK),
        closed: false,
    };
    match compression {
        Compression::Uncompressed => {
            // Chunks go on as they are: no copy.
            for chunk in rx {
                if out.tx.blocking_send(chunk).is_err() {
                    return Err(LayerError::Output(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "layer pipeline closed",
                    )));
                }
            }
            Ok(())
        }
        Compression::Gzip { level } => parallel_gzip(rx, out, level.min(9)),
        Compression::Zstd { level } => {
            let mut input = ChunkIn {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut out = zstd_compress(&mut input, out, level, threads as u32)
                .map_err(LayerError::Output)?;
            out.flush().map_err(LayerError::Output)
        }
    }
}

/// Compresses one block as raw deflate ending in a sync flush (byte
/// aligned, so blocks concatenate into one stream), with its CRC.
fn deflate_block(data: &[u8], level: u32) -> Result<(Vec<u8>, flate2::Crc), LayerError> {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let before_in = c.total_in();
        let status = c
            .compress_vec(input, &mut out, flate2::FlushCompress::Sync)
            .map_err(|e| LayerError::Compression(format!("gzip: {e}")))?;
        input = &input[(c.total_in() - before_in) as usize..];
        // Done when all input is in and the flush fit in the output (or
        // there was nothing left to flush).
        if input.is_empty() && (out.capacity() > out.len() || status == flate2::Status::BufError) {
            return Ok((out, crc));
        }
    }
}

/// Gzip as pigz does it: the stream is cut into blocks compressed at once
/// on several threads (each without the previous block as dictionary, a
/// fraction of a percent of size), written in order as one gzip member.
/// Any gzip reader reads it; the bytes differ from a single-threaded
/// encoder's, which never matched Go's anyway (only the diff id must).
fn parallel_gzip(
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    mut out: ChunkOut,
    level: u32,
) -> Result<(), LayerError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    // Go's header: no name, mtime 0, XFL from the level, OS unknown.
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])
        .map_err(LayerError::Output)?;
    let mut crc = flate2::Crc::new();
    std::thread::scope(|scope| -> Result<(), LayerError> {
        let mut pending = std::collections::VecDeque::new();
        let mut emit =
            |h: std::thread::ScopedJoinHandle<'_, Result<(Vec<u8>, flate2::Crc), LayerError>>,
             out: &mut ChunkOut|
             -> Result<(), LayerError> {
                let (data, block_crc) = h
                    .join()
                    .map_err(|_| LayerError::Compression("gzip worker panicked".into()))??;
                crc.combine(&block_crc);
                out.write_all(&data).map_err(LayerError::Output)
            };
        for chunk in &rx {
            pending.push_back(scope.spawn(move || deflate_block(&chunk, level)));
            // One block waiting beyond the running ones keeps every core
            // busy while bounding memory.
            if pending.len() > workers
                && let Some(h) = pending.pop_front()
            {
                emit(h, &mut out)?;
            }
        }
        while let Some(h) = pending.pop_front() {
            emit(h, &mut out)?;
        }
        Ok(())
    })?;
    // The final block: empty, marked last.
    let mut last = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut tail = Vec::with_capacity(64);
    last.compress_vec(&[], &mut tail, flate2::FlushCompress::Finish)
        .map_err(|e| LayerError::Compression(format!("gzip: {e}")))?;
    tail.extend_from_slice(&crc.sum().to_le_bytes());
    tail.extend_from_slice(&crc.amount().to_le_bytes());
    out.write_all(&tail).map_err(LayerError::Output)?;
    out.flush().map_err(LayerError::Output)
}

fn join_error(e: tokio::task::JoinError) -> LayerError {
    LayerError::Internal(format!("layer worker thread: {e}"))
}

/// Makes the layer of the changes from `lower` (or from an empty tree) to
/// `upper` and stores it. The walk, tar and compression run on two blocking
/// threads while this task writes the blob; dropping the future stops them
/// and discards the partial blob.
///
/// The blob is unprotected once committed: take a [`crate::Lease`] on
/// `descriptor.digest` before anything can collect garbage.
pub async fn create_layer(
    store: &ContentStore,
    lower: Option<&Path>,
    upper: &Path,
    opts: &LayerOptions,
) -> Result<Layer, LayerError> {
    let mut writer = store.writer(None, None).await?;
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(DEPTH);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(DEPTH);

    let lower = lower.map(Path::to_path_buf);
    let upper = upper.to_path_buf();
    let diff_opts = opts.diff;
    let tar_task = tokio::task::spawn_blocking(move || {
        let sink = HashingSender {
            tx: raw_tx,
            buf: Vec::with_capacity(CHUNK),
            digester: Algorithm::Sha256.digester(),
            size: 0,
        };
        let (stats, mut sink) = write_diff(lower.as_deref(), &upper, &diff_opts, sink)?;
        sink.flush_chunk().map_err(LayerError::Output)?;
        Ok::<_, LayerError>((stats, sink.digester.finish(), sink.size))
    });
    let compression = opts.compression;
    let compress_task =
        tokio::task::spawn_blocking(move || compress_stage(raw_rx, out_tx, compression));

    let mut store_error = None;
    while let Some(chunk) = out_rx.recv().await {
        if let Err(e) = writer.write(chunk).await {
            store_error = Some(e);
            break;
        }
    }
    // Closing our end stops the other stages if they are still running.
    drop(out_rx);
    let tar_result = tar_task.await.map_err(join_error)?;
    let compress_result = compress_task.await.map_err(join_error)?;

    // The first real failure wins: a tree error makes the later stages see
    // a short stream, a store error makes the earlier ones see a closed
    // pipe.
    let (_stats, diff_id, uncompressed_size) = match tar_result {
        Err(LayerError::Output(e)) if closed_pipe(&e) => {
            return Err(match (store_error, compress_result) {
                (Some(e), _) => e.into(),
                (None, Err(e)) => e,
                (None, Ok(())) => LayerError::Internal("layer pipeline closed early".into()),
            });
        }
        Err(e) => return Err(e),
        Ok(v) => v,
    };
    if let Some(e) = store_error {
        return Err(e.into());
    }
    compress_result?;
    let commit = writer.commit().await?;
    Ok(Layer {
        descriptor: Descriptor::new(
            opts.compression.media_type(opts.oci_media_types),
            commit.info.digest,
            commit.info.size,
        ),
        diff_id,
        uncompressed_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible, not trivially: text-like bytes from a small PRNG.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefgh ij\n"[(x >> 16) as usize % 12]
            })
            .collect()
    }

    #[test]
    fn zstd_output_is_the_same_whatever_the_workers_and_levels_count() {
        // Level 1's jobs are 2 MiB: four of them.
        let data = sample(8 << 20);
        let mut outputs = Vec::new();
        for threads in [1, 2, 4] {
            let out = zstd_compress(&mut &data[..], Vec::new(), 1, threads).unwrap();
            outputs.push(out);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        let text: String = (0..40_000)
            .map(|i| format!("entry {} of {}: value {}\n", i % 977, i % 13, i * 7 % 1009))
            .collect();
        let data = text.as_bytes();
        let fast = zstd_compress(&mut &data[..], Vec::new(), 1, 2).unwrap();
        let best = zstd_compress(&mut &data[..], Vec::new(), 19, 2).unwrap();
        assert!(best.len() < fast.len(), "{} vs {}", best.len(), fast.len());
        let back = zstd::stream::decode_all(&best[..]).unwrap();
        assert!(back == data);
    }

    #[test]
    fn compare_sorts_contents_after_their_directory() {
        use std::cmp::Ordering::*;
        assert_eq!(directory_compare(b"a/b", b"a-x"), Less);
        assert_eq!(directory_compare(b"a", b"a/b"), Less);
        assert_eq!(directory_compare(b"a.b", b"a/b"), Greater);
        assert_eq!(directory_compare(b"x", b"x"), Equal);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::Gzip { level: 6 }.media_type(false),
            media_types::DOCKER_LAYER_GZIP
        );
        assert_eq!(
            Compression::Zstd { level: 3 }.media_type(true),
            media_types::OCI_LAYER_ZSTD
        );
        assert_eq!(
            Compression::Uncompressed.media_type(true),
            media_types::OCI_LAYER
        );
    }
}
