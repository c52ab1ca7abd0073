//! `unpack::apply_layer` on real directories: every entry type with owners,
//! modes, xattrs and times; layers in sequence with whiteouts and opaque
//! directories; hostile layers that try to leave the root; diff ids for
//! plain, gzip and zstd streams; and the same layers unpacked by GNU tar
//! and umoci, compared file by file.
//!
//! Owners, devices and trusted xattrs need root: those tests skip (with a
//! message) otherwise. The umoci and zstd-CLI comparisons skip when the
//! tool is missing (`scripts/install-deps.sh` installs umoci).

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bk_image::digest::Digest;
use bk_image::media_types;
use bk_image::unpack::{ApplyOptions, UnpackError, apply_layer};
use support::{busybox_layer, have};

// ---- building layers ------------------------------------------------------

const T1: u64 = 1_600_000_000;
const T2: u64 = 1_650_000_000;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A tar written entry by entry with raw names (the `tar` crate's own
/// setters refuse `..` and absolute paths, which hostile layers need).
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

struct Entry {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    dev: (u32, u32),
    data: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
}

fn entry(name: impl AsRef<[u8]>, kind: u8) -> Entry {
    Entry {
        name: name.as_ref().to_vec(),
        kind,
        mode: if kind == b'5' { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: T1,
        link: Vec::new(),
        dev: (0, 0),
        data: Vec::new(),
        pax: Vec::new(),
    }
}

impl Entry {
    fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
    fn link(mut self, target: impl AsRef<[u8]>) -> Self {
        self.link = target.as_ref().to_vec();
        self
    }
    fn dev(mut self, major: u32, minor: u32) -> Self {
        self.dev = (major, minor);
        self
    }
    fn data(mut self, data: impl AsRef<[u8]>) -> Self {
        self.data = data.as_ref().to_vec();
        self
    }
    fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }
}

/// One PAX record: `<len> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

impl Tar {
    fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn raw_header(name: &[u8], kind: u8, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let field = &mut h.as_old_mut().name;
        let n = name.len().min(field.len());
        field[..n].copy_from_slice(&name[..n]);
        // Raw, so a legacy `\0` type stays `\0`.
        h.as_old_mut().linkflag[0] = kind;
        h.set_size(size);
        h
    }

    fn add(&mut self, e: Entry) -> &mut Self {
        let mut pax = e.pax.clone();
        if e.name.len() > 100 {
            pax.push(("path".into(), e.name.clone()));
        }
        if !pax.is_empty() {
            let body: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = Tar::raw_header(b"PaxHeaders/x", b'x', body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.b.append(&h, &body[..]).unwrap();
        }
        let mut h = Tar::raw_header(&e.name, e.kind, e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        if !e.link.is_empty() {
            let field = &mut h.as_old_mut().linkname;
            field[..e.link.len()].copy_from_slice(&e.link);
        }
        if matches!(e.kind, b'3' | b'4') {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        self.b.append(&h, &e.data[..]).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.add(entry(name, b'5'))
    }
    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.add(entry(name, b'0').data(data))
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(entry(name, b'2').mode(0o777).link(target))
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(entry(name, b'1').link(target))
    }
    /// A whiteout as image builders write it: an empty regular file.
    fn whiteout(&mut self, name: &str) -> &mut Self {
        self.add(entry(name, b'0'))
    }

    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn apply(
    root: &Path,
    layer: &[u8],
    media_type: &str,
) -> Result<bk_image::unpack::Applied, UnpackError> {
    // Without root, owners cannot be set: the rest is still checked.
    let opts = ApplyOptions {
        ignore_ownership: !is_root(),
    };
    apply_layer(layer, media_type, root, &opts)
}

fn apply_tar(root: &Path, tar: &[u8]) -> Result<bk_image::unpack::Applied, UnpackError> {
    apply(root, tar, media_types::OCI_LAYER)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The names in a directory, sorted.
fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn lstat(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn lgetxattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, key, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

// ---- a tree, for comparisons ----------------------------------------------

#[derive(Debug, PartialEq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Vec<u8>,
    rdev: u64,
    mtime: (i64, i64),
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in walk order) sharing this inode: hard links.
    inode_of: String,
}

fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let mut names = ls(&root.join(&rel));
        names.reverse();
        for name in names {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let m = lstat(&p);
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                pending.push(rel.clone());
                ('d', Vec::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_file() {
                ('f', std::fs::read(&p).unwrap())
            } else if ft.is_char_device() {
                ('c', Vec::new())
            } else if ft.is_block_device() {
                ('b', Vec::new())
            } else {
                ('p', Vec::new())
            };
            let mut xattrs = BTreeMap::new();
            let mut list = vec![0u8; 4096];
            if let Ok(n) = rustix::fs::llistxattr(&p, &mut list) {
                for key in list[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
                    let key = String::from_utf8_lossy(key).into_owned();
                    xattrs.insert(key.clone(), lgetxattr(&p, &key).unwrap_or_default());
                }
            }
            let shown = rel.to_string_lossy().into_owned();
            let inode_of = if kind == 'd' {
                shown.clone()
            } else {
                inodes
                    .entry(m.ino())
                    .or_insert_with(|| shown.clone())
                    .clone()
            };
            out.insert(
                shown,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    content,
                    rdev: m.rdev(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    xattrs,
                    inode_of,
                },
            );
        }
    }
    out
}

/// Directories the rich layer has no entry for: made when needed, their
/// times are whenever that was.
const IMPLICIT_DIRS: &[&str] = &["implicit", "implicit/parents", "long", "gnu", "dev"];

fn assert_same_tree(ours: &Path, theirs: &Path, who: &str, any_mtime: &[&str]) {
    let mut a = tree(ours);
    let mut b = tree(theirs);
    for name in any_mtime {
        for t in [&mut a, &mut b] {
            if let Some(node) = t.get_mut(*name) {
                node.mtime = (0, 0);
            }
        }
    }
    let names_a: Vec<&String> = a.keys().collect();
    let names_b: Vec<&String> = b.keys().collect();
    assert_eq!(names_a, names_b, "paths differ from {who}'s");
    for (name, node) in &a {
        assert_eq!(Some(node), b.get(name), "{name} differs from {who}'s");
    }
}

// ---- entry types and metadata ---------------------------------------------

/// A layer with every entry type and every kind of metadata.
fn rich_layer(with_devices: bool, global_header: bool) -> Vec<u8> {
    let mut t = Tar::new();
    t.add(entry("./", b'5').mode(0o751)) // the root: ignored
        .add(entry("d/", b'5').mode(0o750).owner(1000, 1001).mtime(T2))
        .add(
            entry("d/f", b'0')
                .mode(0o4755)
                .owner(1000, 1000)
                .data("hello"),
        )
        .add(entry("d/g", b'0').mode(0o2711).owner(0, 50).data("setgid"))
        .add(entry("tmp/", b'5').mode(0o1777))
        .add(
            entry("d/link", b'2')
                .mode(0o777)
                .owner(1002, 1003)
                .link("f"),
        )
        .add(entry("d/dangling", b'2').mode(0o777).link("/no/such/file"))
        // Writers give a hard link its target's header (containerd applies
        // it to the shared inode).
        .add(
            entry("d/hard", b'1')
                .mode(0o4755)
                .owner(1000, 1000)
                .link("d/f"),
        )
        .add(
            entry("d/pax", b'0')
                .data("pax")
                .pax("SCHILY.xattr.user.foo", "bar")
                .pax("SCHILY.xattr.user.bin", [0u8, 1, 2, 255])
                .pax("mtime", "1700000000.123456789")
                .pax("atime", "1700000001.5")
                .pax("uid", "70000")
                .pax("gid", "70001"),
        )
        .add(
            entry("d/early-atime", b'0')
                .pax("mtime", "1700000000.5")
                .pax("atime", "1600000000"),
        )
        .add(entry("d/fifo", b'6').mode(0o600))
        .add(entry("implicit/parents/file", b'0').data("deep"))
        .add(entry(format!("long/{}", "n".repeat(150)), b'0').data("pax path"))
        .add(entry("legacy-dir/", 0).mode(0o711));
    if with_devices {
        t.add(entry("dev/null", b'3').mode(0o666).dev(1, 3))
            .add(entry("dev/loop0", b'4').mode(0o660).owner(0, 6).dev(7, 0));
    }
    // A GNU long name, written by the tar crate itself.
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_mtime(T1);
    h.set_size(4);
    h.set_entry_type(tar::EntryType::Regular);
    t.b.append_data(&mut h, format!("gnu/{}", "g".repeat(200)), &b"long"[..])
        .unwrap();
    if !global_header {
        return t.finish();
    }
    // A PAX global header, skipped (umoci refuses them).
    let mut g = Tar::raw_header(b"pax_global_header", b'g', 0);
    g.set_cksum();
    let body = pax_record("comment", b"global");
    g.set_size(body.len() as u64);
    g.set_cksum();
    t.b.append(&g, &body[..]).unwrap();
    t.finish()
}

#[test]
fn every_entry_type_with_owners_modes_xattrs_and_times() {
    let root_user = is_root();
    if !root_user {
        eprintln!("SKIP owners and devices: not root");
    }
    let dir = tempdir();
    let root = dir.path();
    let tar = rich_layer(root_user, true);
    let applied = apply_tar(root, &tar).unwrap();
    assert_eq!(applied.diff_id, Digest::sha256_of(&tar));
    assert_eq!(applied.size, tar.len() as u64);

    // The root entry is ignored.
    assert_ne!(lstat(root).mode() & 0o7777, 0o751);

    let d = lstat(&root.join("d"));
    assert!(d.is_dir());
    assert_eq!(d.mode() & 0o7777, 0o750);
    // Set again after its children were written.
    assert_eq!((d.mtime(), d.mtime_nsec()), (T2 as i64, 0));

    let f = lstat(&root.join("d/f"));
    assert_eq!(std::fs::read(root.join("d/f")).unwrap(), b"hello");
    // setuid survives the chown before it.
    assert_eq!(f.mode() & 0o7777, 0o4755);
    assert_eq!(f.mtime(), T1 as i64);
    assert_eq!(lstat(&root.join("d/g")).mode() & 0o7777, 0o2711);
    assert_eq!(lstat(&root.join("tmp")).mode() & 0o7777, 0o1777);

    let link = lstat(&root.join("d/link"));
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(root.join("d/link")).unwrap(),
        Path::new("f")
    );
    assert_eq!(
        std::fs::read_link(root.join("d/dangling")).unwrap(),
        Path::new("/no/such/file")
    );

    let hard = lstat(&root.join("d/hard"));
    assert_eq!(hard.ino(), f.ino());
    assert_eq!(f.nlink(), 2);

    let pax = root.join("d/pax");
    let m = lstat(&pax);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!((m.atime(), m.atime_nsec()), (1_700_000_001, 500_000_000));
    assert_eq!(lgetxattr(&pax, "user.foo").as_deref(), Some(&b"bar"[..]));
    assert_eq!(
        lgetxattr(&pax, "user.bin").as_deref(),
        Some(&[0u8, 1, 2, 255][..])
    );
    // containerd: atime is never earlier than mtime.
    let m = lstat(&root.join("d/early-atime"));
    assert_eq!((m.atime(), m.atime_nsec()), (1_700_000_000, 500_000_000));

    assert!(lstat(&root.join("d/fifo")).file_type().is_fifo());
    assert_eq!(lstat(&root.join("d/fifo")).mode() & 0o7777, 0o600);
    assert_eq!(
        std::fs::read(root.join("implicit/parents/file")).unwrap(),
        b"deep"
    );
    assert_eq!(lstat(&root.join("implicit")).mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(root.join(format!("long/{}", "n".repeat(150)))).unwrap(),
        b"pax path"
    );
    assert_eq!(
        std::fs::read(root.join(format!("gnu/{}", "g".repeat(200)))).unwrap(),
        b"long"
    );
    let legacy = lstat(&root.join("legacy-dir"));
    assert!(legacy.is_dir());
    assert_eq!(legacy.mode() & 0o7777, 0o711);
    assert!(!root.join("pax_global_header").exists());

    if root_user {
        assert_eq!((d.uid(), d.gid()), (1000, 1001));
        assert_eq!((f.uid(), f.gid()), (1000, 1000));
        assert_eq!((link.uid(), link.gid()), (1002, 1003));
        let m = lstat(&pax);
        assert_eq!((m.uid(), m.gid()), (70000, 70001));
        let null = lstat(&root.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let loop0 = lstat(&root.join("dev/loop0"));
        assert!(loop0.file_type().is_block_device());
        assert_eq!(loop0.rdev(), rustix::fs::makedev(7, 0));
        assert_eq!(loop0.gid(), 6);
    }
}

#[test]
fn trusted_xattrs_are_not_set_and_ownership_can_be_ignored() {
    let dir = tempdir();
    let tar = Tar::new()
        .add(
            entry("f", b'0')
                .owner(1234, 5678)
                .pax("SCHILY.xattr.trusted.overlay.opaque", "y")
                .pax("SCHILY.xattr.user.ok", "1"),
        )
        // user.* on a symlink: the kernel refuses it (EPERM), containerd
        // warns and goes on.
        .add(
            entry("l", b'2')
                .link("f")
                .pax("SCHILY.xattr.user.onlink", "1"),
        )
        .finish();
    let opts = ApplyOptions {
        ignore_ownership: true,
    };
    apply_layer(&tar[..], media_types::OCI_LAYER, dir.path(), &opts).unwrap();
    let f = dir.path().join("f");
    assert_eq!(lgetxattr(&f, "trusted.overlay.opaque"), None);
    assert_eq!(lgetxattr(&f, "user.ok").as_deref(), Some(&b"1"[..]));
    let m = lstat(&f);
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(m.uid(), me);
}

// ---- layers in sequence -----------------------------------------------------

fn base_layer() -> Vec<u8> {
    Tar::new()
        .dir("a")
        .file("a/x", "ax")
        .dir("a/sub")
        .file("a/sub/y", "ay")
        .file("c", "c")
        .dir("b")
        .file("b/old1", "1")
        .file("b/old2", "2")
        .dir("b/keepdir")
        .file("b/keepdir/old", "old")
        .dir("g")
        .file("g/old", "g")
        .dir("h")
        .dir("h/sub")
        .file("h/sub/old", "h")
        .dir("d")
        .file("d/inner", "d")
        .file("e", "e")
        .file("hl-target", "t")
        .hardlink("hl-other", "hl-target")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    Tar::new()
        .whiteout(".wh.c")
        .whiteout("a/.wh.sub")
        // Opaque marker after some of this layer's entries...
        .dir("b")
        .file("b/new1", "n1")
        .dir("b/keepdir")
        .file("b/keepdir/new", "new")
        .whiteout("b/.wh..wh..opq")
        .file("b/new2", "n2")
        // ...and before them.
        .whiteout("g/.wh..wh..opq")
        .file("g/new", "g2")
        // A directory replaced by a file, a file by a directory.
        .file("d", "now a file")
        .dir("e")
        .file("e/inside", "e2")
        // A file replaced by a file: a new inode, old hard links keep theirs.
        .file("hl-target", "new")
        .finish()
}

#[test]
fn layers_in_sequence_with_whiteouts_and_opaque_directories() {
    let dir = tempdir();
    let root = dir.path();
    apply_tar(root, &base_layer()).unwrap();
    let old_ino = lstat(&root.join("hl-target")).ino();
    apply_tar(root, &upper_layer()).unwrap();

    assert!(!root.join("c").exists());
    assert!(!root.join(".wh.c").exists());
    assert_eq!(ls(&root.join("a")), ["x"]);
    assert_eq!(ls(&root.join("b")), ["keepdir", "new1", "new2"]);
    // This layer's directory is kept; what an older layer put in it is not.
    assert_eq!(ls(&root.join("b/keepdir")), ["new"]);
    assert_eq!(ls(&root.join("g")), ["new"]);
    assert!(lstat(&root.join("d")).is_file());
    assert_eq!(std::fs::read(root.join("d")).unwrap(), b"now a file");
    assert!(lstat(&root.join("e")).is_dir());
    assert_eq!(ls(&root.join("e")), ["inside"]);
    assert_ne!(lstat(&root.join("hl-target")).ino(), old_ino);
    assert_eq!(lstat(&root.join("hl-other")).ino(), old_ino);
    assert_eq!(std::fs::read(root.join("hl-other")).unwrap(), b"t");
}

#[test]
fn opaque_keeps_directories_leading_to_this_layers_entries() {
    // `h/sub/new` without an `h/sub/` entry: containerd would delete
    // `h/sub` with `new` in it; the layer plainly wants `new`.
    let dir = tempdir();
    let root = dir.path();
    apply_tar(root, &base_layer()).unwrap();
    let upper = Tar::new()
        .file("h/sub/new", "new")
        .whiteout("h/.wh..wh..opq")
        .finish();
    apply_tar(root, &upper).unwrap();
    assert_eq!(ls(&root.join("h")), ["sub"]);
    assert_eq!(ls(&root.join("h/sub")), ["new"]);
}

#[test]
fn an_opaque_marker_at_the_top_empties_the_root_of_older_entries() {
    let dir = tempdir();
    let root = dir.path();
    apply_tar(root, &base_layer()).unwrap();
    let upper = Tar::new()
        .file("kept", "1")
        .whiteout(".wh..wh..opq")
        .file("later", "2")
        .finish();
    apply_tar(root, &upper).unwrap();
    assert_eq!(ls(root), ["kept", "later"]);
}

/// The same two layers through umoci (an independent implementation of the
/// OCI whiteout rules), compared file by file.
#[test]
fn layers_in_sequence_match_umoci() {
    if !have("umoci") {
        eprintln!("SKIP umoci comparison: umoci not installed");
        return;
    }
    if !is_root() {
        eprintln!("SKIP umoci comparison: not root");
        return;
    }
    let layers = [base_layer(), upper_layer(), rich_layer(true, false)];
    let ours = tempdir();
    for l in &layers {
        apply_tar(ours.path(), l).unwrap();
    }

    let work = tempdir();
    let layout = work.path().join("oci");
    let built = support::build_image(
        layers
            .iter()
            .map(|tar| support::Layer {
                blob: gzip(tar),
                diff_id: Digest::sha256_of(tar),
            })
            .collect(),
        bk_image::types::Platform::new("linux", "amd64"),
    );
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        std::fs::write(blobs.join(Digest::sha256_of(bytes).encoded()), bytes).unwrap();
    };
    for l in &built.layers {
        put(&l.blob);
    }
    put(&built.config_bytes);
    put(&built.manifest_bytes);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_types::OCI_MANIFEST,
            "digest": built.manifest_desc.digest.as_str(),
            "size": built.manifest_desc.size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let bundle = work.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    // umoci sets the root's own metadata from nothing; compare beneath it.
    // It also stores what it needs to repack in a `user.rootlesscontainers`
    // xattr only in rootless mode, so nothing extra appears here.
    // Directory times after whiteouts differ: umoci puts back the times of
    // a directory a whiteout changed (`a`, `g`), where containerd leaves
    // them as the removal left them, and empties an opaque directory after
    // setting the times of this layer's directories in it (`b/keepdir`),
    // where containerd sets all directory times at the end.
    let any_mtime: Vec<&str> = IMPLICIT_DIRS
        .iter()
        .copied()
        .chain(["a", "g", "b/keepdir"])
        .collect();
    assert_same_tree(ours.path(), &rootfs, "umoci", &any_mtime);
}

// ---- diff ids and compression -----------------------------------------------

#[test]
fn diff_id_is_the_sha256_of_the_whole_uncompressed_stream() {
    let mut tar = Tar::new().file("a", "a").dir("b").finish();
    // Bytes after the end-of-archive blocks count too, as in containerd.
    tar.extend_from_slice(&[0u8; 4096]);
    tar.extend_from_slice(b"trailing");
    let want = Digest::sha256_of(&tar);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("plain", tar.clone(), media_types::OCI_LAYER),
        ("docker plain", tar.clone(), media_types::DOCKER_LAYER),
        ("gzip", gzip(&tar), media_types::OCI_LAYER_GZIP),
        ("docker gzip", gzip(&tar), media_types::DOCKER_LAYER_GZIP),
        ("zstd", zstd(&tar), media_types::OCI_LAYER_ZSTD),
        ("docker zstd", zstd(&tar), media_types::DOCKER_LAYER_ZSTD),
        (
            "non-distributable gzip",
            gzip(&tar),
            media_types::OCI_LAYER_NON_DISTRIBUTABLE_GZIP,
        ),
        // Labels that lie: the magic bytes decide, as in containerd.
        (
            "gzip labelled zstd",
            gzip(&tar),
            media_types::OCI_LAYER_ZSTD,
        ),
        (
            "plain labelled gzip",
            tar.clone(),
            media_types::OCI_LAYER_GZIP,
        ),
        ("gzip as docker tar", gzip(&tar), media_types::DOCKER_LAYER),
        (
            "zstd as foreign tar",
            zstd(&tar),
            media_types::DOCKER_LAYER_FOREIGN,
        ),
    ];
    for (what, blob, mt) in cases {
        let dir = tempdir();
        let applied = apply(dir.path(), &blob, mt).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(applied.diff_id, want, "{what}");
        assert_eq!(applied.size, tar.len() as u64, "{what}");
        assert_eq!(ls(dir.path()), ["a", "b"], "{what}");
    }
}

#[test]
fn multi_member_gzip_and_multi_frame_zstd_are_read_whole() {
    let tar = Tar::new().file("one", "1").file("two", "2").finish();
    let (first, second) = tar.split_at(700);
    let want = Digest::sha256_of(&tar);

    let mut gz = gzip(first);
    gz.extend(gzip(second));
    let dir = tempdir();
    let applied = apply(dir.path(), &gz, media_types::OCI_LAYER_GZIP).unwrap();
    assert_eq!(applied.diff_id, want);
    assert_eq!(ls(dir.path()), ["one", "two"]);

    // A skippable frame first (what containerd's sniffing must also
    // recognise), then two frames.
    let mut zs = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9];
    zs.extend(zstd(first));
    zs.extend([0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
    zs.extend(zstd(second));
    let dir = tempdir();
    let applied = apply(dir.path(), &zs, media_types::OCI_LAYER_ZSTD).unwrap();
    assert_eq!(applied.diff_id, want);
    assert_eq!(ls(dir.path()), ["one", "two"]);
}

#[test]
fn zstd_from_the_reference_implementation() {
    if !have("zstd") {
        eprintln!("SKIP zstd CLI comparison: zstd not installed");
        return;
    }
    let tar = rich_layer(false, true);
    let work = tempdir();
    let plain = work.path().join("layer.tar");
    std::fs::write(&plain, &tar).unwrap();
    for level in ["-1", "-19", "--long=27"] {
        let out = Command::new("zstd")
            .args(["-q", "-c", level])
            .arg(&plain)
            .output()
            .unwrap();
        assert!(out.status.success());
        let dir = tempdir();
        let applied = apply(dir.path(), &out.stdout, media_types::OCI_LAYER_ZSTD).unwrap();
        assert_eq!(applied.diff_id, Digest::sha256_of(&tar), "zstd {level}");
    }
}

#[test]
fn broken_streams_are_errors() {
    let tar = Tar::new().file("a", &"x".repeat(10_000)).finish();
    let gz = gzip(&tar);

    let truncated = &gz[..gz.len() / 2];
    let err = apply(tempdir().path(), truncated, media_types::OCI_LAYER_GZIP).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");

    // A wrong CRC in the gzip trailer: only seen when the stream is read to
    // its end, which draining after the tar ensures.
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let err = apply(tempdir().path(), &bad_crc, media_types::OCI_LAYER_GZIP).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");

    // Truncated anywhere, a zstd stream is an error, never a hang.
    let noisy = Tar::new()
        .add(entry("n", b'0').data(support::noise(300_000, 7)))
        .finish();
    let zs_tar = zstd(&noisy);
    for cut in (1..zs_tar.len()).step_by(zs_tar.len() / 37) {
        let err = apply(
            tempdir().path(),
            &zs_tar[..cut],
            media_types::OCI_LAYER_ZSTD,
        )
        .unwrap_err();
        assert!(
            matches!(err, UnpackError::Read { .. }),
            "cut at {cut}: {err}"
        );
    }

    let mut bad_zstd = zstd(&tar);
    let n = bad_zstd.len();
    bad_zstd[n / 2] ^= 0xff;
    let err = apply(tempdir().path(), &bad_zstd, media_types::OCI_LAYER_ZSTD).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");

    // An uncompressed OCI type is never sniffed: gzip bytes are not a tar.
    let err = apply(tempdir().path(), &gz, media_types::OCI_LAYER).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");

    let err = apply(tempdir().path(), &tar, "application/json").unwrap_err();
    assert!(matches!(err, UnpackError::MediaType(_)), "{err}");

    // An empty blob is an empty layer (Docker's historic zero-byte layers).
    let applied = apply(tempdir().path(), b"", media_types::DOCKER_LAYER_GZIP).unwrap();
    assert_eq!(applied.diff_id, Digest::sha256_of(b""));
    assert_eq!(applied.size, 0);

    let file = tempfile::NamedTempFile::new().unwrap();
    let err = apply(file.path(), &tar, media_types::OCI_LAYER).unwrap_err();
    assert!(matches!(err, UnpackError::Root { .. }), "{err}");
}

// ---- hostile layers -----------------------------------------------------------

/// A root inside a scratch directory, and an `outside` directory beside
/// it with a file hostile layers try to reach.
struct Arena {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let dir = tempdir();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "precious").unwrap();
        std::fs::set_permissions(
            outside.join("victim"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Arena {
            _dir: dir,
            root,
            outside,
        }
    }

    /// The outside directory is exactly as made.
    fn assert_untouched(&self) {
        assert_eq!(ls(&self.outside), ["victim"], "outside changed");
        let victim = self.outside.join("victim");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let m = lstat(&victim);
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(m.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(m.nlink(), 1);
        assert!(lgetxattr(&victim, "user.evil").is_none());
        assert!(self.root.parent().unwrap().join("root").is_dir());
        assert_eq!(ls(self.root.parent().unwrap()), ["outside", "root"]);
    }

    fn outside_str(&self) -> &str {
        self.outside.to_str().unwrap()
    }
}

#[test]
fn dot_dot_and_absolute_names_stay_inside() {
    let a = Arena::new();
    let tar = Tar::new()
        .file("../outside/victim", "dotdot")
        .file("../../../../outside/new", "dotdot")
        .file(&format!("{}/victim", a.outside_str()), "absolute")
        .file("/etc/bk-unpack-test", "absolute")
        .file("a/../../../outside/victim2", "nested")
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    a.assert_untouched();
    assert_eq!(
        std::fs::read(a.root.join("outside/victim")).unwrap(),
        b"dotdot"
    );
    assert_eq!(
        std::fs::read(a.root.join("outside/new")).unwrap(),
        b"dotdot"
    );
    assert_eq!(
        std::fs::read(a.root.join("outside/victim2")).unwrap(),
        b"nested"
    );
    assert_eq!(
        std::fs::read(
            a.root
                .join(a.outside.strip_prefix("/").unwrap())
                .join("victim")
        )
        .unwrap(),
        b"absolute"
    );
    assert!(a.root.join("etc/bk-unpack-test").is_file());
    assert!(!Path::new("/etc/bk-unpack-test").exists());
}

#[test]
fn symlinked_parents_are_followed_only_inside_the_root() {
    let a = Arena::new();
    let tar = Tar::new()
        .symlink("evil", "/")
        .file("evil/etc/bk-unpack-test", "via /")
        .symlink("up", "../../../..")
        .file("up/outside/victim", "via ..")
        .symlink("abs", a.outside_str())
        .file("abs/victim", "via absolute")
        .add(entry("abs/new", b'5'))
        .add(entry("abs/fifo", b'6'))
        .symlink("abs/link", "x")
        .hardlink("abs/hard", "hl")
        .whiteout("abs/.wh.victim")
        .whiteout("abs/.wh..wh..opq")
        .whiteout("up/outside/.wh.victim")
        .file("hl", "hl")
        .finish();
    // `abs/hard` links to `hl`, which does not exist yet: an error, after
    // everything before it went inside the root.
    let err = apply_tar(&a.root, &tar).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Io { entry, op: "link", .. } if entry == "/abs/hard"),
        "{err}"
    );
    a.assert_untouched();
    assert_eq!(
        std::fs::read(a.root.join("etc/bk-unpack-test")).unwrap(),
        b"via /"
    );
    assert_eq!(
        std::fs::read(a.root.join("outside/victim")).unwrap(),
        b"via .."
    );
    let inside = a.root.join(a.outside.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(inside.join("victim")).unwrap(),
        b"via absolute"
    );
    assert!(inside.join("new").is_dir());
    assert!(!Path::new("/etc/bk-unpack-test").exists());

    // The rest, without the failing link.
    let a = Arena::new();
    let tar = Tar::new()
        .symlink("abs", a.outside_str())
        .file("abs/victim", "via absolute")
        .whiteout("abs/.wh.victim")
        .add(entry("abs/.wh..wh..opq", b'0'))
        .symlink("up", "../..")
        .whiteout("up/outside/.wh.victim")
        .whiteout("up/.wh.outside")
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    a.assert_untouched();
}

#[test]
fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let a = Arena::new();
    let victim = a.outside.join("victim");
    let victim = victim.to_str().unwrap();
    // Same layer.
    let tar = Tar::new()
        .symlink("f", victim)
        .add(entry("f", b'0').data("replaced").mode(0o777).owner(1, 1))
        .symlink("d", a.outside_str())
        .add(entry("d", b'5').mode(0o777))
        .symlink("p", victim)
        .add(entry("p", b'6'))
        .symlink("x", victim)
        .add(
            entry("x", b'2')
                .link("elsewhere")
                .pax("SCHILY.xattr.user.evil", "1"),
        )
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    a.assert_untouched();
    assert!(lstat(&a.root.join("f")).is_file());
    assert_eq!(std::fs::read(a.root.join("f")).unwrap(), b"replaced");
    assert!(lstat(&a.root.join("d")).is_dir());
    assert!(lstat(&a.root.join("p")).file_type().is_fifo());
    assert_eq!(
        std::fs::read_link(a.root.join("x")).unwrap(),
        Path::new("elsewhere")
    );

    // Planted by an earlier layer.
    let a = Arena::new();
    let victim = a.outside.join("victim");
    let first = Tar::new()
        .symlink("f", victim.to_str().unwrap())
        .symlink("d", a.outside_str())
        .finish();
    let second = Tar::new()
        .add(entry("f", b'0').data("replaced").mode(0o4777))
        .add(entry("d", b'5').mode(0o777))
        .add(entry("d/victim", b'0').data("inside"))
        .finish();
    apply_tar(&a.root, &first).unwrap();
    apply_tar(&a.root, &second).unwrap();
    a.assert_untouched();
    assert_eq!(std::fs::read(a.root.join("f")).unwrap(), b"replaced");
    assert_eq!(std::fs::read(a.root.join("d/victim")).unwrap(), b"inside");
}

#[test]
fn directory_times_are_not_restored_through_a_later_symlink() {
    // `d/sub/` is made, then `d` becomes a symlink to a directory outside
    // that also has a `sub`: setting `d/sub`'s times at the end must not
    // touch it.
    let a = Arena::new();
    let sub = a.outside.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let before = lstat(&sub);
    let tar = Tar::new()
        .dir("d")
        .add(entry("d/sub", b'5').mtime(1))
        .symlink("d", a.outside_str())
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    let after = lstat(&sub);
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    std::fs::remove_dir(&sub).unwrap();
    a.assert_untouched();
}

#[test]
fn hard_links_resolve_inside_the_root() {
    let a = Arena::new();
    let victim = a.outside.join("victim");
    // `../outside/victim` and the absolute path name the root's own
    // `outside/victim`, which does not exist: refused.
    for target in [
        "../outside/victim".to_owned(),
        victim.to_str().unwrap().to_owned(),
    ] {
        let tar = Tar::new().hardlink("h", &target).finish();
        let err = apply_tar(&a.root, &tar).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Io { op: "link", source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{target}: {err}"
        );
    }
    let tar = Tar::new().hardlink("h", "../../..").finish();
    let err = apply_tar(&a.root, &tar).unwrap_err();
    assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
    // A directory cannot be hard-linked.
    let tar = Tar::new().dir("dir").hardlink("h", "dir").finish();
    assert!(apply_tar(&a.root, &tar).is_err());
    a.assert_untouched();

    // With the target present inside the root, and through a symlinked
    // directory, the link is to the root's file.
    let a = Arena::new();
    let tar = Tar::new()
        .file("outside/victim", "inside")
        .hardlink("h1", "../../outside/victim")
        .symlink("l", a.outside_str())
        .symlink("o", "/outside")
        .hardlink("h2", "o/victim")
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    let inside = lstat(&a.root.join("outside/victim"));
    assert_eq!(lstat(&a.root.join("h1")).ino(), inside.ino());
    assert_eq!(lstat(&a.root.join("h2")).ino(), inside.ino());
    a.assert_untouched();

    // A hard link to a symlink pointing out is a second name for the
    // symlink: its mode and times are not applied through it.
    let a = Arena::new();
    let tar = Tar::new()
        .symlink("s", a.outside.join("victim").to_str().unwrap())
        .add(entry("h", b'1').link("s").mode(0o6777).mtime(1))
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    assert!(lstat(&a.root.join("h")).file_type().is_symlink());
    a.assert_untouched();
    assert_ne!(lstat(&a.outside.join("victim")).mtime(), 1);
}

#[test]
fn a_hard_link_to_a_shared_inode_does_not_change_the_tree_below() {
    // Snapshots share file inodes with the snapshot below
    // (`bk_fileops::link_tree`): a hard link entry to such a file, with its
    // own owner, mode and times, must leave the lower tree as it was.
    let a = Arena::new();
    let lower = a.outside.join("victim");
    std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::lsetxattr(&lower, "user.keep", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    std::fs::hard_link(&lower, a.root.join("f")).unwrap();
    std::os::unix::fs::symlink("victim", a.outside.join("s")).unwrap();
    std::fs::hard_link(a.outside.join("s"), a.root.join("s")).unwrap();
    // A name the copy-up could have wanted: kept.
    std::fs::write(a.root.join(".bk-copy-up.0.f"), "mine").unwrap();
    let before = lstat(&lower);
    let s_before = lstat(&a.outside.join("s"));

    let tar = Tar::new()
        .add(entry("h", b'1').link("f").mode(0o4755).owner(0, 0).mtime(1))
        .add(entry("hs", b'1').link("s").owner(0, 0).mtime(1))
        .finish();
    apply_tar(&a.root, &tar).unwrap();

    let after = lstat(&lower);
    assert_eq!(after.ino(), before.ino());
    assert_eq!(after.mode(), before.mode());
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(after.nlink(), 1, "the tree's name now has its own inode");
    assert_eq!(lgetxattr(&lower, "user.keep").as_deref(), Some(&b"1"[..]));
    let s_after = lstat(&a.outside.join("s"));
    assert_eq!(
        (s_after.ino(), s_after.mtime()),
        (s_before.ino(), s_before.mtime())
    );

    // In the tree: `f` and `h` one inode, with the layer's metadata, the
    // lower file's content and xattrs.
    let f = lstat(&a.root.join("f"));
    let h = lstat(&a.root.join("h"));
    assert_eq!(f.ino(), h.ino());
    assert_ne!(f.ino(), before.ino());
    assert_eq!(f.mode() & 0o7777, 0o4755);
    assert_eq!(f.mtime(), 1);
    assert_eq!(std::fs::read(a.root.join("h")).unwrap(), b"precious");
    assert_eq!(
        lgetxattr(&a.root.join("f"), "user.keep").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        lstat(&a.root.join("hs")).ino(),
        lstat(&a.root.join("s")).ino()
    );
    assert_eq!(
        std::fs::read_link(a.root.join("hs")).unwrap(),
        Path::new("victim")
    );
    assert_eq!(
        ls(&a.root)
            .into_iter()
            .filter(|n| n.starts_with(".bk-copy-up"))
            .collect::<Vec<_>>(),
        [".bk-copy-up.0.f"]
    );
    assert_eq!(
        std::fs::read(a.root.join(".bk-copy-up.0.f")).unwrap(),
        b"mine"
    );

    // A file of this layer is linked as it is.
    let tar = Tar::new().file("new", "n").hardlink("new2", "new").finish();
    apply_tar(&a.root, &tar).unwrap();
    assert_eq!(lstat(&a.root.join("new")).nlink(), 2);
}

#[test]
fn whiteouts_cannot_reach_outside_their_directory() {
    for name in [".wh.", ".wh..", ".wh...", "a/.wh..", "a/.wh..."] {
        let a = Arena::new();
        let tar = Tar::new().dir("a").whiteout(name).finish();
        let err = apply_tar(&a.root, &tar).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidWhiteout { .. }),
            "{name}: {err}"
        );
        a.assert_untouched();
        assert!(a.root.join("a").is_dir(), "{name}");
    }
    // `..` in the name is cleaned away before the whiteout is read.
    let a = Arena::new();
    let tar = Tar::new()
        .whiteout("../.wh.outside")
        .whiteout("../../outside/.wh.victim")
        .whiteout(&format!("{}/.wh.victim", a.outside_str()))
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    a.assert_untouched();
}

#[test]
fn names_that_resolve_to_the_root_are_ignored() {
    let a = Arena::new();
    let tar = Tar::new()
        .file(".", "not the root")
        .file("/", "not the root")
        .file("..", "not the root")
        .file("a/..", "not the root")
        .symlink("./", "/etc")
        .file("ok", "ok")
        .finish();
    apply_tar(&a.root, &tar).unwrap();
    assert!(lstat(&a.root).is_dir());
    assert_eq!(ls(&a.root), ["ok"]);
    a.assert_untouched();
}

#[test]
fn oversized_headers_and_unknown_types_are_refused() {
    // 8 MiB of PAX records compress to almost nothing; they must not be
    // buffered whole.
    let huge = "x".repeat(8 << 20);
    let tar = Tar::new()
        .add(entry("f", b'0').pax("comment", &huge))
        .finish();
    let err = apply(tempdir().path(), &gzip(&tar), media_types::OCI_LAYER_GZIP).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Read { source, .. } if source.to_string().contains("exceed")),
        "{err}"
    );
    // Same for a GNU long name.
    let mut t = Tar::new();
    let mut h = Tar::raw_header(b"././@LongLink", b'L', huge.len() as u64);
    h.set_cksum();
    t.b.append(&h, huge.as_bytes()).unwrap();
    t.file("f", "f");
    let err = apply_tar(tempdir().path(), &t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");

    // GNU sparse files: containerd refuses them (`unhandled tar header
    // type 83`), and so do we.
    let mut t = Tar::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(0);
    h.set_cksum();
    t.b.append(&h, &[][..]).unwrap();
    assert!(apply_tar(tempdir().path(), &t.finish()).is_err());

    // Big file contents are not headers.
    let big = "y".repeat(8 << 20);
    let tar = Tar::new().file("big", &big).finish();
    let dir = tempdir();
    apply_tar(dir.path(), &tar).unwrap();
    assert_eq!(lstat(&dir.path().join("big")).len(), 8 << 20);

    // Whiteouts are read before the type, as in containerd.
    let dir = tempdir();
    std::fs::write(dir.path().join("gone"), "x").unwrap();
    apply_tar(
        dir.path(),
        &Tar::new().add(entry(".wh.gone", b'7')).finish(),
    )
    .unwrap();
    assert_eq!(ls(dir.path()), Vec::<String>::new());

    for kind in [b'7', b'V', b'Z', b'A'] {
        let tar = Tar::new().add(entry("odd", kind)).finish();
        let err = apply_tar(tempdir().path(), &tar).unwrap_err();
        assert!(
            matches!(&err, UnpackError::UnhandledType { entry, kind: k } if entry == "/odd" && *k == kind),
            "{err}"
        );
    }
}

#[test]
fn errors_name_the_entry() {
    let dir = tempdir();
    // A file where a later entry needs a directory.
    let tar = Tar::new().file("f", "f").file("f/g", "g").finish();
    let err = apply_tar(dir.path(), &tar).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/f/g: mkparent /f: Not a directory (os error 20)"
    );
    let tar = Tar::new().whiteout("missing/.wh..wh..opq").finish();
    apply_tar(dir.path(), &tar).unwrap();
    assert!(dir.path().join("missing").is_dir());
}

// ---- against GNU tar, and a busybox root -------------------------------------

#[test]
fn a_rich_layer_unpacks_as_gnu_tar_unpacks_it() {
    if !is_root() {
        eprintln!("SKIP GNU tar comparison: owners need root");
        return;
    }
    let tar = rich_layer(true, true);
    let ours = tempdir();
    apply_tar(ours.path(), &tar).unwrap();

    let theirs = tempdir();
    let mut child = Command::new("tar")
        .args([
            "--numeric-owner",
            "--same-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            // Directory times at the very end, as containerd sets them.
            "--delay-directory-restore",
            "-xf",
            "-",
            "-C",
        ])
        .arg(theirs.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(ours.path(), theirs.path(), "GNU tar", IMPLICIT_DIRS);
}

#[test]
fn the_busybox_layer_gives_a_runnable_root() {
    let layer = busybox_layer();
    let dir = tempdir();
    let applied = apply(dir.path(), &layer.blob, media_types::OCI_LAYER_GZIP).unwrap();
    assert_eq!(applied.diff_id, layer.diff_id);
    let busybox = dir.path().join("bin/busybox");
    let m = lstat(&busybox);
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o7777, 0o755);
    if let Ok(host) = std::fs::read("/bin/busybox") {
        assert_eq!(std::fs::read(&busybox).unwrap(), host);
        let out = Command::new(&busybox).arg("true").output().unwrap();
        assert!(out.status.success());
    }
    assert_eq!(
        std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(dir.path().join("tmp").is_dir());
    assert_eq!(
        std::fs::read(dir.path().join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
}

// ---- throughput -----------------------------------------------------------

/// Prints how fast a ~100 MB gzip layer (real files from /usr) applies,
/// next to decompressing and hashing alone and GNU tar. Run with
/// `cargo test -p bk-image --release --test unpack -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_of_a_100_mb_gzip_layer() {
    const BUDGET: u64 = 100 << 20;
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut used = 0u64;
    let mut entries = 0u64;
    let mut pending = vec![PathBuf::from("/usr/lib"), PathBuf::from("/usr/share")];
    'walk: while let Some(dir) = pending.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        children.sort();
        for p in children.into_iter().rev() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let name = p.strip_prefix("/").unwrap();
            if m.is_dir() {
                pending.push(p.clone());
            }
            if m.is_dir() || m.is_file() || m.file_type().is_symlink() {
                if b.append_path_with_name(&p, name).is_err() {
                    continue;
                }
                entries += 1;
                used += if m.is_file() { m.len() } else { 0 } + 512;
                if used >= BUDGET {
                    break 'walk;
                }
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let gz = {
        let mut child = Command::new("gzip")
            .arg("-6")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = tar.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out.stdout
    };
    let mb = |n: usize| n as f64 / 1e6;
    println!(
        "layer: {} entries, {:.1} MB tar, {:.1} MB gzip",
        entries,
        mb(tar.len()),
        mb(gz.len())
    );

    let t = Instant::now();
    let mut dec = flate2::read::MultiGzDecoder::new(&gz[..]);
    let mut digester = bk_image::digest::Digester::new(bk_image::digest::Algorithm::Sha256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = std::io::Read::read(&mut dec, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        digester.update(&buf[..n]);
    }
    let _ = digester.finish();
    let s = t.elapsed().as_secs_f64();
    println!(
        "gunzip + sha256 only: {s:.2} s, {:.0} MB/s of tar",
        mb(tar.len()) / s
    );

    // On disk (the temp dir) and in memory (/dev/shm, where there is one),
    // to tell the filesystem's cost from ours.
    let mut places = vec![("disk", tempdir())];
    if Path::new("/dev/shm").is_dir() {
        places.push(("tmpfs", tempfile::tempdir_in("/dev/shm").unwrap()));
    }
    for (place, base) in &places {
        for round in 0..2 {
            let dir = tempfile::tempdir_in(base.path()).unwrap();
            let t = Instant::now();
            let applied = apply(dir.path(), &gz, media_types::OCI_LAYER_GZIP).unwrap();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(applied.size, tar.len() as u64);
            println!(
                "apply_layer (gzip, {place}) #{round}: {s:.2} s, {:.0} MB/s of tar, {:.0} MB/s of gzip",
                mb(tar.len()) / s,
                mb(gz.len()) / s
            );
        }
    }

    let work = tempdir();
    let blob = work.path().join("layer.tar.gz");
    std::fs::write(&blob, &gz).unwrap();
    for (place, base) in &places {
        let dir = tempfile::tempdir_in(base.path()).unwrap();
        let t = Instant::now();
        let out = Command::new("tar")
            .args(["--numeric-owner", "-xzpf"])
            .arg(&blob)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let s = t.elapsed().as_secs_f64();
        println!(
            "GNU tar -xzpf ({place}): {s:.2} s, {:.0} MB/s of tar",
            mb(tar.len()) / s
        );
    }

    if have("zstd") {
        let plain = work.path().join("layer.tar");
        std::fs::write(&plain, &tar).unwrap();
        let out = Command::new("zstd")
            .args(["-q", "-c", "-3"])
            .arg(&plain)
            .output()
            .unwrap();
        let zs = out.stdout;
        for (place, base) in &places {
            let dir = tempfile::tempdir_in(base.path()).unwrap();
            let t = Instant::now();
            apply(dir.path(), &zs, media_types::OCI_LAYER_ZSTD).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "apply_layer (zstd -3, {:.1} MB, {place}): {s:.2} s, {:.0} MB/s of tar",
                mb(zs.len()),
                mb(tar.len()) / s
            );
        }
    }
}
