//! The exporters that hand a result to the client: `local` (a directory,
//! sent as fsutil packets) and `tar` (one archive, sent as bytes).

use std::io::Write;
use std::path::Path;

use bk_cache::Ref;
use bk_fsutil::walk::WalkOptions;
use bk_fsutil::{Entry, mode};
use bk_session::Session;
use bk_session::filesync;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("failed to read result: {0}")]
    Walk(#[from] bk_fsutil::FsError),
    #[error("{0}")]
    Send(#[from] filesync::FileSyncError),
    #[error("failed to write archive: {0}")]
    Archive(String),
    #[error("the client stopped reading the archive")]
    ClientDone,
}

fn walk(root: &Path) -> Result<Vec<Entry>, ExportError> {
    Ok(bk_fsutil::walk::walk(root, &WalkOptions::default())?)
}

/// What the `local` and `tar` exporters send: one result, or several (a
/// multi-platform build's) each under a directory of its own
/// (`linux_arm64/`), as BuildKit's `platform-split` does.
pub enum ExportTree<'a> {
    /// An empty filesystem.
    Empty,
    Single(&'a Ref),
    /// By directory; `None` is an empty filesystem (an empty directory).
    Split(Vec<(String, Option<&'a Ref>)>),
}

impl ExportTree<'_> {
    fn roots(&self) -> Vec<(Option<String>, Option<std::path::PathBuf>)> {
        match self {
            ExportTree::Empty => Vec::new(),
            ExportTree::Single(r) => vec![(None, Some(r.path().to_path_buf()))],
            ExportTree::Split(refs) => {
                let mut roots: Vec<_> = refs
                    .iter()
                    .map(|(dir, r)| (Some(dir.clone()), r.map(|r| r.path().to_path_buf())))
                    .collect();
                // Walk order: the directories sort as single path elements.
                roots.sort_by(|a, b| a.0.cmp(&b.0));
                roots
            }
        }
    }
}

/// Every entry of the tree, paths (and hard-link targets) under their
/// platform's directory when split (blocking).
fn tree_entries(
    roots: &[(Option<String>, Option<std::path::PathBuf>)],
) -> Result<Vec<Entry>, ExportError> {
    let mut out = Vec::new();
    for (dir, root) in roots {
        let entries = match root {
            Some(root) => walk(root)?,
            None => Vec::new(),
        };
        let Some(dir) = dir else {
            out.extend(entries);
            continue;
        };
        out.push(Entry {
            stat: bk_fsutil::Stat {
                path: dir.clone(),
                mode: mode::DIR | 0o755,
                ..Default::default()
            },
            source: root.clone().unwrap_or_default(),
        });
        for mut e in entries {
            e.stat.path = format!("{dir}/{}", e.stat.path);
            if mode::is_regular(e.stat.mode) && !e.stat.linkname.is_empty() {
                e.stat.linkname = format!("{dir}/{}", e.stat.linkname);
            }
            out.push(e);
        }
    }
    Ok(out)
}

/// `type=local`: the result tree into the client's directory.
pub async fn export_local(
    session: &Session,
    exporter_index: usize,
    tree: ExportTree<'_>,
) -> Result<(), ExportError> {
    let roots = tree.roots();
    let entries = tokio::task::spawn_blocking(move || tree_entries(&roots))
        .await
        .map_err(|e| ExportError::Archive(e.to_string()))??;
    filesync::send_dir(session, exporter_index, entries).await?;
    Ok(())
}

/// `type=tar`: the result tree as one tar stream into the client's file.
pub async fn export_tar(
    session: &Session,
    exporter_index: usize,
    tree: ExportTree<'_>,
) -> Result<(), ExportError> {
    let roots = tree.roots();
    send_written(session, exporter_index, move |out| {
        let entries = tree_entries(&roots).map_err(|e| e.to_string())?;
        write_tar(&entries, out).map_err(|e| e.to_string())
    })
    .await
}

/// Streams what `write` writes (on a blocking thread) to the client's
/// file of exporter `exporter_index`: how OCI and Docker archives leave.
pub async fn send_written<F>(
    session: &Session,
    exporter_index: usize,
    write: F,
) -> Result<(), ExportError>
where
    F: FnOnce(&mut dyn Write) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        write(&mut out).map_err(ExportError::Archive)?;
        out.flush().map_err(|_| ExportError::ClientDone)
    });
    let sent = filesync::send_file(
        session,
        exporter_index,
        &Default::default(),
        ReceiverStream::new(rx),
    )
    .await;
    let written = writer
        .await
        .map_err(|e| ExportError::Archive(e.to_string()))?;
    sent?;
    written
}

/// Bytes written here arrive as chunks on a channel (blocking side).
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client stopped reading")
        })
    }
}

/// Writes the tree as a tar archive: entries in walk order (stable),
/// hard links as links, owners and modes as on disk.
fn write_tar(entries: &[Entry], out: &mut dyn Write) -> Result<(), ExportError> {
    let mut builder = tar::Builder::new(out);
    let fail = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe => ExportError::ClientDone,
        _ => ExportError::Archive(e.to_string()),
    };
    for entry in entries {
        let s = &entry.stat;
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode::to_unix(s.mode) & 0o7777);
        header.set_uid(u64::from(s.uid));
        header.set_gid(u64::from(s.gid));
        header.set_mtime(u64::try_from(s.mod_time / 1_000_000_000).unwrap_or(0));
        header.set_size(0);
        let path = s.path.as_str();
        if mode::is_dir(s.mode) {
            header.set_entry_type(tar::EntryType::Directory);
            builder
                .append_data(&mut header, format!("{path}/"), std::io::empty())
                .map_err(fail)?;
        } else if mode::is_symlink(s.mode) {
            header.set_entry_type(tar::EntryType::Symlink);
            builder
                .append_link(&mut header, path, &s.linkname)
                .map_err(fail)?;
        } else if mode::is_regular(s.mode) && !s.linkname.is_empty() {
            header.set_entry_type(tar::EntryType::Link);
            builder
                .append_link(&mut header, path, &s.linkname)
                .map_err(fail)?;
        } else if mode::is_regular(s.mode) {
            let file = std::fs::File::open(&entry.source).map_err(fail)?;
            let len = file.metadata().map_err(fail)?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            builder.append_data(&mut header, path, file).map_err(fail)?;
        } else if s.mode & mode::NAMED_PIPE != 0 {
            header.set_entry_type(tar::EntryType::Fifo);
            builder
                .append_data(&mut header, path, std::io::empty())
                .map_err(fail)?;
        } else if s.mode & mode::DEVICE != 0 {
            let kind = if s.mode & mode::CHAR_DEVICE != 0 {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            header.set_entry_type(kind);
            header.set_device_major(s.devmajor as u32).map_err(fail)?;
            header.set_device_minor(s.devminor as u32).map_err(fail)?;
            builder
                .append_data(&mut header, path, std::io::empty())
                .map_err(fail)?;
        }
    }
    let out = builder.into_inner().map_err(fail)?;
    out.flush().map_err(fail)?;
    Ok(())
}
