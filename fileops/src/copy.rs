//! The copy action: BuildKit's `docopy` (wildcards, `createDestPath`,
//! archive detection) around fsutil's `copy.Copy`, which gives `cp -a`
//! semantics with BuildKit's twists:
//!
//! - The destination is resolved inside its root. A trailing `/` (or `/.`)
//!   makes it a directory to copy into; a file or directory is also copied
//!   *into* an existing directory unless `dirCopyContents` (copy a
//!   directory's contents, not the directory) says otherwise.
//! - Missing destination directories are created with the copy's numeric
//!   mode (or 0755) and owner.
//! - The source's last component is followed only with `followSymlink`;
//!   below it symlinks are copied as symlinks.
//! - Include/exclude patterns (`.dockerignore` semantics) are matched
//!   against paths relative to the source; directories holding only
//!   included entries are created as needed.
//! - Owners are the source's unless `owner` is given; modes are the
//!   source's unless `mode` or `modeStr` is; times are the source's unless
//!   `timestamp` is. Hard links inside the copied tree stay hard links.
//! - `alwaysReplaceExistingDestPaths` removes a destination entry of another
//!   kind first; otherwise a directory never replaces a non-directory and
//!   vice versa, and files replace files.
//!
//! Below the destination root every step looks with `lstat` and replaces
//! rather than writes through whatever it finds, so a symlink in the
//! destination tree is never followed out of it. The walk is an explicit
//! stack: a deep source costs heap, not stack.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::DirBuilder;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bk_fsutil::patterns::{MatchInfo, PatternMatcher};
use bk_proto::pb::FileActionCopy;

use crate::actions::{fix_created_dirs, mkdir_all};
use crate::glob::{read_names, resolve_wildcards};
use crate::modestr::ModeSet;
use crate::paths::{base, clean, clean_path, dir, host, join, resolve, show, shown, split};
use crate::sys::{self, Flow, Time, XattrAt, timestamp};
use crate::{FileOpError, Owner};

/// Copy `action.src` from the tree at `src_root` to `action.dest` in the
/// tree at `dest_root`. The two must be different directories (BuildKit
/// gives the source its own read-only mount): copying a tree into itself
/// would read what it writes.
pub fn copy(
    src_root: &Path,
    dest_root: &Path,
    action: &FileActionCopy,
    owner: Option<Owner>,
) -> Result<(), FileOpError> {
    let src_path = clean_path(action.src.as_bytes());
    let dest_path = clean_path(action.dest.as_bytes());

    if !action.create_dest_path {
        let p = resolve(dest_root, &join(&[b"/", action.dest.as_bytes()]), true)?;
        let parent = dir(&p);
        if let Err(err) = std::fs::symlink_metadata(host(dest_root, &parent)) {
            return Err(FileOpError::io("lstat", show(&parent), err)
                .context(format!("failed to stat {}", action.dest)));
        }
    }

    let matches = if action.allow_wildcard {
        let m = resolve_wildcards(src_root, &src_path, action.follow_symlink)?;
        if m.is_empty() {
            if action.allow_empty_wildcard {
                return Ok(());
            }
            return Err(FileOpError::NotFound(format!(
                "{} not found",
                show(&src_path)
            )));
        }
        m
    } else {
        vec![src_path]
    };

    let opts = Options::new(action, owner)?;
    let mut required = Required::new(&action.required_paths);
    for src in &matches {
        if action.attempt_unpack_docker_compatibility {
            refuse_archive(src_root, src)?;
        }
        copy_one(src_root, src, dest_root, &dest_path, &opts, &mut required)?;
    }
    required.check()
}

/// The per-action settings fsutil's `CopyInfo` carries.
struct Options {
    owner: Option<Owner>,
    utime: Option<Time>,
    /// Numeric mode, `mode` as its raw bits.
    mode: Option<u32>,
    mode_set: Option<ModeSet>,
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    copy_dir_contents: bool,
    follow_links: bool,
    always_replace: bool,
}

impl Options {
    fn new(action: &FileActionCopy, owner: Option<Owner>) -> Result<Options, FileOpError> {
        // modeStr wins over mode; only -1 means "keep".
        let (mode, mode_set) = if !action.mode_str.is_empty() {
            (None, Some(ModeSet::parse(&action.mode_str)?))
        } else if action.mode != -1 {
            (Some(action.mode as u32), None)
        } else {
            (None, None)
        };
        let matcher =
            |patterns: &[String], what: &str| -> Result<Option<PatternMatcher>, FileOpError> {
                if patterns.is_empty() {
                    return Ok(None);
                }
                PatternMatcher::new(patterns).map(Some).map_err(|e| {
                    FileOpError::Invalid(format!("invalid {what}: [{}]: {e}", patterns.join(" ")))
                })
            };
        Ok(Options {
            owner,
            utime: timestamp(action.timestamp),
            mode,
            mode_set,
            include: matcher(&action.include_patterns, "includepatterns")?,
            exclude: matcher(&action.exclude_patterns, "excludepatterns")?,
            copy_dir_contents: action.dir_copy_contents,
            follow_links: action.follow_symlink,
            always_replace: action.always_replace_existing_dest_paths,
        })
    }

    /// Mode for directories the copy creates on the way to its target:
    /// the numeric mode read as a Go `os.FileMode` (so `0o4755` gives
    /// 0755), else 0755. A mode string does not apply to them.
    fn dir_perm(&self) -> u32 {
        match self.mode {
            Some(m) => bk_fsutil::mode::to_unix(m) & 0o7777,
            None => 0o755,
        }
    }
}

/// `required_paths`: each must be a prefix of some copied source path
/// (checked at checksum time upstream, with the same prefix test).
struct Required {
    paths: Vec<(String, bool)>,
}

impl Required {
    fn new(paths: &[String]) -> Required {
        Required {
            paths: paths.iter().map(|p| (p.clone(), false)).collect(),
        }
    }

    fn saw(&mut self, path: &str) {
        for (required, found) in &mut self.paths {
            if !*found && path.starts_with(required.as_str()) {
                *found = true;
            }
        }
    }

    fn check(&self) -> Result<(), FileOpError> {
        match self.paths.iter().find(|(_, found)| !found) {
            Some((path, _)) => Err(FileOpError::NotFound(format!("{path:?}: not found"))),
            None => Ok(()),
        }
    }
}

/// BuildKit unpacks a local tar archive here (`ADD`); this crate does not,
/// and says so rather than copy the archive as a file.
fn refuse_archive(src_root: &Path, src: &[u8]) -> Result<(), FileOpError> {
    let p = resolve(src_root, &join(&[b"/", src]), true)?;
    if looks_like_archive(&host(src_root, &p)) {
        return Err(FileOpError::Unsupported(format!(
            "unpacking archive {} is not supported",
            show(&p)
        )));
    }
    Ok(())
}

/// A regular file that starts like a compressed stream (gzip, bzip2, xz,
/// zstd) or an uncompressed tar header with a valid checksum.
fn looks_like_archive(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(meta) if meta.is_file() => {}
        _ => return false,
    }
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(p)
    else {
        return false;
    };
    let mut block = Vec::with_capacity(512);
    if file.take(512).read_to_end(&mut block).is_err() {
        return false;
    }
    let magic: [&[u8]; 4] = [
        &[0x1f, 0x8b, 0x08],
        b"BZh",
        &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
        &[0x28, 0xb5, 0x2f, 0xfd],
    ];
    if magic.iter().any(|m| block.starts_with(m)) {
        return true;
    }
    block.len() == 512 && tar_checksum_ok(&block)
}

/// Go's archive/tar accepts a header whose checksum field matches the
/// unsigned or the signed byte sum, the field itself counted as spaces.
fn tar_checksum_ok(block: &[u8]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .collect();
    let end = text
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    let digits = &text[..end];
    if digits.is_empty() || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return false;
    }
    let want = digits.iter().fold(0i64, |n, &d| {
        n.saturating_mul(8).saturating_add(i64::from(d - b'0'))
    });
    let mut unsigned = 0i64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || want == signed
}

/// fsutil's `Copy` for one source path.
fn copy_one(
    src_root: &Path,
    src: &[u8],
    dest_root: &Path,
    dest: &[u8],
    opts: &Options,
    required: &mut Required,
) -> Result<(), FileOpError> {
    // The directory that must exist first: the destination's parent, or
    // the destination itself when it ends in `/` or `/.`.
    let (parent, last) = split(dest);
    let ensure = if !last.is_empty() && last != b"." {
        parent
    } else {
        dest
    };
    let mut created = Vec::new();
    if !ensure.is_empty() {
        let p = resolve(dest_root, ensure, true)?;
        created.extend(mkdir_all(
            dest_root,
            &p,
            opts.dir_perm(),
            opts.owner,
            opts.utime,
        )?);
    }
    let result = copy_resolved(src_root, src, dest_root, dest, opts, required, &mut created);
    fix_created_dirs(&created, opts.utime);
    result
}

fn copy_resolved(
    src_root: &Path,
    src: &[u8],
    dest_root: &Path,
    dest: &[u8],
    opts: &Options,
    required: &mut Required,
    created: &mut Vec<PathBuf>,
) -> Result<(), FileOpError> {
    let dst = resolve(dest_root, &clean(dest), true)?;
    let src_followed = resolve(src_root, &join(&[b"/", src]), opts.follow_links)?;
    let (target, dirs) = prepare_target(src_root, &src_followed, src, dest_root, dst, opts)?;
    created.extend(dirs);
    let mut copier = Copier {
        src_root,
        dst_root: dest_root,
        opts,
        inodes: HashMap::new(),
        parents: Vec::new(),
        required,
    };
    copier.run(host(src_root, &src_followed), host(dest_root, &target))
}

/// fsutil's `prepareTargetDir`: where the source lands, and the parent
/// directories made for it.
fn prepare_target(
    src_root: &Path,
    src_followed: &[u8],
    src: &[u8],
    dest_root: &Path,
    dst: Vec<u8>,
    opts: &Options,
) -> Result<(Vec<u8>, Vec<PathBuf>), FileOpError> {
    let src_meta = std::fs::symlink_metadata(host(src_root, src_followed))
        .map_err(|e| FileOpError::io("lstat", show(src_followed), e))?;
    // `dst` is resolved, so its last component is not a symlink: lstat
    // sees what upstream's stat sees.
    let dst_meta = match std::fs::symlink_metadata(host(dest_root, &dst)) {
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(FileOpError::io("lstat", show(&dst), err)
                .context("failed to lstat destination path"));
        }
    };
    let src_is_dir = src_meta.is_dir();
    let dst_is_dir = dst_meta.as_ref().is_some_and(|m| m.is_dir());
    let mut dest_path = dst;
    if (!opts.copy_dir_contents && src_is_dir && dst_meta.is_some()) || (!src_is_dir && dst_is_dir)
    {
        dest_path = join(&[&dest_path, base(src)]);
    }
    let target = if opts.copy_dir_contents && src_is_dir && dst_meta.is_none() {
        dest_path.clone()
    } else {
        dir(&dest_path)
    };
    let dirs = mkdir_all(dest_root, &target, opts.dir_perm(), opts.owner, opts.utime)?;
    Ok((dest_path, dirs))
}

/// A directory on the way down whose creation may be delayed until
/// something inside it is included.
struct ParentDir {
    src: PathBuf,
    dst: PathBuf,
    copied: bool,
}

enum Task {
    /// Copy one entry (fsutil's `copier.copy`).
    Entry {
        src: PathBuf,
        /// Path relative to the copy's source, for patterns.
        comps: Vec<u8>,
        target: PathBuf,
        /// False only for the top entry: an existing top directory keeps
        /// its metadata.
        overwrite: bool,
        incl: Rc<MatchInfo>,
        excl: Rc<MatchInfo>,
    },
    /// All of a directory's entries are done: its own metadata now.
    DirDone {
        src: PathBuf,
        target: PathBuf,
        meta: std::fs::Metadata,
        include: bool,
        overwrite: bool,
        created: bool,
        target_existed: bool,
    },
}

struct Copier<'a> {
    src_root: &'a Path,
    dst_root: &'a Path,
    opts: &'a Options,
    /// First target path of each multiply linked source inode.
    inodes: HashMap<(u64, u64), PathBuf>,
    parents: Vec<ParentDir>,
    required: &'a mut Required,
}

impl Copier<'_> {
    fn s(&self, p: &Path) -> String {
        shown(self.src_root, p)
    }

    fn d(&self, p: &Path) -> String {
        shown(self.dst_root, p)
    }

    fn run(&mut self, src: PathBuf, target: PathBuf) -> Result<(), FileOpError> {
        let mut stack = vec![Task::Entry {
            src,
            comps: Vec::new(),
            target,
            overwrite: false,
            incl: Rc::default(),
            excl: Rc::default(),
        }];
        while let Some(task) = stack.pop() {
            match task {
                Task::Entry {
                    src,
                    comps,
                    target,
                    overwrite,
                    incl,
                    excl,
                } => self.entry(src, comps, target, overwrite, &incl, &excl, &mut stack)?,
                Task::DirDone {
                    src,
                    target,
                    meta,
                    include,
                    overwrite,
                    created,
                    target_existed,
                } => {
                    self.parents.pop();
                    let (copy_info, restore) = if overwrite {
                        (include, false)
                    } else {
                        (created, !created)
                    };
                    if copy_info {
                        self.copy_file_info(&meta, &target)?;
                        self.copy_xattrs(&target, &src);
                    } else if restore && target_existed {
                        self.copy_file_timestamp(&meta, &target)
                            .map_err(|e| e.context("failed to restore file timestamp"))?;
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        src: PathBuf,
        comps: Vec<u8>,
        target: PathBuf,
        overwrite: bool,
        parent_incl: &MatchInfo,
        parent_excl: &MatchInfo,
        stack: &mut Vec<Task>,
    ) -> Result<(), FileOpError> {
        let opts = self.opts;
        let mut include = true;
        let mut excluded = false;
        let mut incl_info = MatchInfo::default();
        let mut excl_info = MatchInfo::default();
        if !comps.is_empty() {
            let rel = String::from_utf8_lossy(&comps);
            if let Some(m) = &opts.include {
                let (hit, info) = m.matches_with_parent(&rel, parent_incl);
                include = hit;
                incl_info = info;
            }
            if let Some(m) = &opts.exclude {
                let (hit, info) = m.matches_with_parent(&rel, parent_excl);
                excl_info = info;
                if hit {
                    include = false;
                    excluded = true;
                }
            }
            // Nothing below an unmatched entry can come back unless there
            // are include patterns or `!` exceptions to look for.
            let can_skip = !include
                && opts.include.is_none()
                && opts.exclude.as_ref().is_none_or(|m| !m.has_exclusions());
            if can_skip {
                return Ok(());
            }
        }

        let meta = std::fs::symlink_metadata(&src).map_err(|e| {
            FileOpError::io("lstat", self.s(&src), e)
                .context(format!("failed to stat {}", self.s(&src)))
        })?;
        if !include && !meta.is_dir() {
            return Ok(());
        }
        let target_meta = match std::fs::symlink_metadata(&target) {
            Ok(m) => Some(m),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(FileOpError::io("lstat", self.d(&target), err)
                    .context(format!("failed to stat {}", self.d(&target))));
            }
        };

        if include {
            self.remove_target_if_needed(&target, &meta, target_meta.as_ref())?;
            self.create_parent_dirs(&src, overwrite)?;
            if !self.required.paths.is_empty() {
                let path = self.s(&src);
                self.required.saw(&path);
            }
        }

        let ft = meta.file_type();
        if ft.is_dir() {
            let mut created = false;
            if include {
                created = self.copy_directory_only(&target, &meta, overwrite)?;
            }
            self.parents.push(ParentDir {
                src: src.clone(),
                dst: target.clone(),
                copied: include,
            });
            let skip_children =
                excluded && opts.exclude.as_ref().is_none_or(|m| !m.has_exclusions());
            let names = if skip_children {
                Vec::new()
            } else {
                read_names(&src).map_err(|e| {
                    FileOpError::io("open", self.s(&src), e)
                        .context(format!("failed to read {}", self.s(&src)))
                })?
            };
            stack.push(Task::DirDone {
                src: src.clone(),
                target: target.clone(),
                meta,
                include,
                overwrite,
                created,
                target_existed: target_meta.is_some(),
            });
            let incl_info = Rc::new(incl_info);
            let excl_info = Rc::new(excl_info);
            for name in names.into_iter().rev() {
                let name_os = OsStr::from_bytes(&name);
                stack.push(Task::Entry {
                    src: src.join(name_os),
                    comps: join(&[&comps, &name]),
                    target: target.join(name_os),
                    overwrite: true,
                    incl: Rc::clone(&incl_info),
                    excl: Rc::clone(&excl_info),
                });
            }
            return Ok(());
        }

        self.ensure_empty_file_target(&target)?;
        if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            let first = if meta.nlink() > 1 {
                let first = self.inodes.get(&key).cloned();
                if first.is_none() {
                    self.inodes.insert(key, target.clone());
                }
                first
            } else {
                None
            };
            match first {
                Some(first) => std::fs::hard_link(&first, &target).map_err(|e| {
                    FileOpError::Link {
                        op: "link",
                        old: self.d(&first),
                        new: self.d(&target),
                        source: e,
                    }
                    .context("failed to create hard link")
                })?,
                None => self
                    .copy_file(&src, &target)
                    .map_err(|e| e.context("failed to copy files"))?,
            }
        } else if ft.is_symlink() {
            let link = std::fs::read_link(&src).map_err(|e| {
                FileOpError::io("readlink", self.s(&src), e)
                    .context(format!("failed to read link: {}", self.s(&src)))
            })?;
            std::os::unix::fs::symlink(&link, &target).map_err(|e| {
                FileOpError::Link {
                    op: "symlink",
                    old: link.to_string_lossy().into_owned(),
                    new: self.d(&target),
                    source: e,
                }
                .context(format!("failed to create symlink: {}", self.d(&target)))
            })?;
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            sys::mknod(&target, meta.mode(), meta.rdev()).map_err(|e| {
                FileOpError::io("mknod", self.d(&target), e).context("failed to create device")
            })?;
        }
        self.copy_file_info(&meta, &target)?;
        self.copy_xattrs(&target, &src);
        Ok(())
    }

    fn remove_target_if_needed(
        &self,
        target: &Path,
        src_meta: &std::fs::Metadata,
        target_meta: Option<&std::fs::Metadata>,
    ) -> Result<(), FileOpError> {
        if !self.opts.always_replace {
            return Ok(());
        }
        let Some(target_meta) = target_meta else {
            return Ok(());
        };
        // Directories are merged, not replaced.
        if src_meta.is_dir() && target_meta.is_dir() {
            return Ok(());
        }
        sys::remove_all(target).map_err(|e| FileOpError::io("unlinkat", self.d(target), e))
    }

    /// Create the directories on the way down that were held back because
    /// they were not included themselves.
    fn create_parent_dirs(&mut self, src: &Path, overwrite: bool) -> Result<(), FileOpError> {
        for i in 0..self.parents.len() {
            if self.parents[i].copied {
                continue;
            }
            let (psrc, pdst) = (self.parents[i].src.clone(), self.parents[i].dst.clone());
            let meta = std::fs::symlink_metadata(&psrc).map_err(|e| {
                FileOpError::io("lstat", self.s(&psrc), e)
                    .context(format!("failed to stat {}", self.s(src)))
            })?;
            if !meta.is_dir() {
                return Err(FileOpError::Invalid(format!(
                    "{} is not a directory",
                    self.s(&psrc)
                )));
            }
            if self.copy_directory_only(&pdst, &meta, overwrite)? {
                self.copy_file_info(&meta, &pdst)?;
                self.copy_xattrs(&pdst, &psrc);
            }
            self.parents[i].copied = true;
        }
        Ok(())
    }

    /// Make the target directory if missing (true when made). An existing
    /// one takes the source's mode when `overwrite`; a non-directory there
    /// is an error.
    fn copy_directory_only(
        &self,
        dst: &Path,
        meta: &std::fs::Metadata,
        overwrite: bool,
    ) -> Result<bool, FileOpError> {
        match std::fs::symlink_metadata(dst) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(meta.mode() & 0o7777)
                    .create(dst)
                    .map_err(|e| {
                        FileOpError::io("mkdir", self.d(dst), e)
                            .context(format!("failed to mkdir {}", self.d(dst)))
                    })?;
                Ok(true)
            }
            Err(err) => Err(FileOpError::io("lstat", self.d(dst), err)),
            Ok(m) if !m.is_dir() => Err(FileOpError::Invalid(format!(
                "cannot copy to non-directory: {}",
                self.d(dst)
            ))),
            Ok(_) => {
                if overwrite {
                    sys::chmod(dst, meta.mode()).map_err(|e| {
                        FileOpError::io("chmod", self.d(dst), e)
                            .context(format!("failed to chmod on {}", self.d(dst)))
                    })?;
                }
                Ok(false)
            }
        }
    }

    /// A file goes where nothing is, or replaces a non-directory.
    fn ensure_empty_file_target(&self, target: &Path) -> Result<(), FileOpError> {
        match std::fs::symlink_metadata(target) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(FileOpError::io("lstat", self.d(target), err)
                .context("failed to lstat file target")),
            Ok(m) if m.is_dir() => Err(FileOpError::Invalid(format!(
                "cannot replace to directory {} with file",
                self.d(target)
            ))),
            Ok(_) => std::fs::remove_file(target)
                .map_err(|e| FileOpError::io("remove", self.d(target), e)),
        }
    }

    fn copy_file(&self, src: &Path, target: &Path) -> Result<(), FileOpError> {
        // NONBLOCK: should the entry have become a FIFO, do not hang on it.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NOCTTY;
        let s = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((flags | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(src)
            .map_err(|e| {
                FileOpError::io("open", self.s(src), e)
                    .context(format!("failed to open source {}", self.s(src)))
            })?;
        // The target was just removed if it existed; O_EXCL makes sure
        // nothing (a symlink least of all) has taken its place.
        let d = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags.bits() as i32)
            .open(target)
            .map_err(|e| {
                FileOpError::io("open", self.d(target), e)
                    .context(format!("failed to open target {}", self.d(target)))
            })?;
        sys::copy_contents(&s, &d).map_err(|e| FileOpError::os("copy file range failed", e))
    }

    /// Owner, mode (not for symlinks) and times of a copied entry.
    fn copy_file_info(&self, meta: &std::fs::Metadata, target: &Path) -> Result<(), FileOpError> {
        let wrap = |e: FileOpError| e.context("failed to copy file info");
        let owner = self.opts.owner.unwrap_or(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        });
        // chown clears set-id bits, so the mode comes after.
        sys::lchown(target, owner).map_err(|e| {
            wrap(
                FileOpError::io("lchown", self.d(target), e)
                    .context(format!("failed to chown {}", self.d(target))),
            )
        })?;
        if !meta.file_type().is_symlink() {
            let mode = if let Some(set) = &self.opts.mode_set {
                set.apply(meta.mode(), meta.is_dir())
            } else if let Some(mode) = self.opts.mode {
                mode & 0o7777
            } else {
                meta.mode() & 0o7777
            };
            sys::chmod(target, mode).map_err(|e| {
                wrap(
                    FileOpError::io("chmod", self.d(target), e)
                        .context(format!("failed to chmod {}", self.d(target))),
                )
            })?;
        }
        self.copy_file_timestamp(meta, target).map_err(wrap)
    }

    fn copy_file_timestamp(
        &self,
        meta: &std::fs::Metadata,
        target: &Path,
    ) -> Result<(), FileOpError> {
        let (atime, mtime) = match self.opts.utime {
            Some(t) => (t, t),
            None => sys::times_of(meta),
        };
        sys::set_times(target, atime, mtime)
            .map_err(|e| FileOpError::os(format!("failed to utime {}", self.d(target)), e))
    }

    /// BuildKit logs xattr failures and moves on; it stops at the first.
    fn copy_xattrs(&self, target: &Path, src: &Path) {
        let _ = sys::copy_xattrs(XattrAt::Path(target), XattrAt::Path(src), |_, _| {
            Ok(Flow::Stop)
        });
    }
}
