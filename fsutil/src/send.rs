//! The sending side of a transfer (protocol.md §4.3): list every entry as a
//! `STAT`, then serve the receiver's `REQ`s with `DATA` until it says `FIN`.
//!
//! Start at [`send`]. The listing runs in its own task so that requests are
//! read and served while it is still going; file contents are streamed by at
//! most [`MAX_CONCURRENT_FILES`] tasks at once, reading through `tokio::fs`
//! (which does the blocking reads on the blocking pool).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{Entry, FsError, Packet, PacketRx, PacketTx, PacketType, Stat, mode};

/// Size of each `DATA` chunk, as fsutil reads them.
pub const CHUNK_SIZE: usize = 32 * 1024;

/// How many files stream their contents at the same time.
pub const MAX_CONCURRENT_FILES: usize = 4;

/// Serve `entries` (already in wire order, as [`crate::walk::walk`] returns
/// them) to the receiver at the other end of `rx`/`tx`.
///
/// Returns when the receiver's `FIN` has been answered. A failure on our side
/// is reported to the peer with an `ERR` packet before it is returned; an
/// `ERR` from the peer comes back as [`FsError::Remote`].
pub async fn send(entries: Vec<Entry>, mut rx: PacketRx, tx: PacketTx) -> Result<(), FsError> {
    let result = run(entries, &mut rx, &tx).await;
    if let Err(err) = &result
        && !matches!(err, FsError::Remote(_))
    {
        // Best effort: the stream may already be gone.
        let _ = tx.send(err_packet(&err.to_string())).await;
    }
    result
}

/// What the receiver may still ask for, by id.
enum Slot {
    /// Directories, symlinks, devices and hard links carry no content.
    NoContent,
    Available(PathBuf),
    Requested,
}

async fn run(entries: Vec<Entry>, rx: &mut PacketRx, tx: &PacketTx) -> Result<(), FsError> {
    let mut slots = Vec::with_capacity(entries.len());
    let mut stats = Vec::with_capacity(entries.len());
    for entry in entries {
        let requestable = mode::is_regular(entry.stat.mode) && entry.stat.linkname.is_empty();
        slots.push(if requestable {
            Slot::Available(entry.source)
        } else {
            Slot::NoContent
        });
        stats.push(entry.stat);
    }

    // Dropping the set (on any return) aborts the listing and every stream.
    let mut tasks: JoinSet<Result<(), FsError>> = JoinSet::new();
    tasks.spawn(send_listing(stats, tx.clone()));
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_FILES));

    loop {
        tokio::select! {
            Some(joined) = tasks.join_next() => match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(err) => return Err(FsError::Stream(format!("send task failed: {err}"))),
            },
            packet = rx.next() => {
                let packet = match packet {
                    None => {
                        return Err(FsError::Stream(
                            "receiver closed the stream before FIN".into(),
                        ));
                    }
                    Some(packet) => packet?,
                };
                match PacketType::try_from(packet.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let source = take_request(&mut slots, packet.id)?;
                        let permits = permits.clone();
                        let tx = tx.clone();
                        let id = packet.id;
                        tasks.spawn(async move {
                            // Closed only if the set is dropped, and then this task is gone too.
                            let _permit = permits
                                .acquire_owned()
                                .await
                                .map_err(|_| FsError::Stream("sender is shutting down".into()))?;
                            stream_file(id, &source, &tx).await
                        });
                    }
                    Ok(PacketType::PacketFin) => {
                        return push(tx, Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Packet::default()
                        })
                        .await;
                    }
                    Ok(PacketType::PacketErr) => {
                        return Err(FsError::Remote(
                            String::from_utf8_lossy(&packet.data).into_owned(),
                        ));
                    }
                    Ok(other) => {
                        return Err(FsError::Invalid(format!(
                            "unexpected {} packet from the receiver",
                            other.as_str_name()
                        )));
                    }
                    Err(_) => {
                        return Err(FsError::Invalid(format!(
                            "unknown packet type {} from the receiver",
                            packet.r#type
                        )));
                    }
                }
            }
        }
    }
}

/// Marks `id` as requested and returns the file to read.
fn take_request(slots: &mut [Slot], id: u32) -> Result<PathBuf, FsError> {
    let slot = usize::try_from(id)
        .ok()
        .and_then(|i| slots.get_mut(i))
        .ok_or_else(|| FsError::Invalid(format!("invalid file id {id}")))?;
    match std::mem::replace(slot, Slot::Requested) {
        Slot::Available(path) => Ok(path),
        Slot::Requested => Err(FsError::Invalid(format!("file id {id} requested twice"))),
        Slot::NoContent => {
            *slot = Slot::NoContent;
            Err(FsError::Invalid(format!(
                "invalid file id {id}: not a regular file"
            )))
        }
    }
}

async fn send_listing(stats: Vec<Stat>, tx: PacketTx) -> Result<(), FsError> {
    for stat in stats {
        push(
            &tx,
            Packet {
                r#type: PacketType::PacketStat as i32,
                stat: Some(stat),
                ..Packet::default()
            },
        )
        .await?;
    }
    // A STAT without a stat ends the listing.
    push(
        &tx,
        Packet {
            r#type: PacketType::PacketStat as i32,
            ..Packet::default()
        },
    )
    .await
}

async fn stream_file(id: u32, source: &Path, tx: &PacketTx) -> Result<(), FsError> {
    // A file that vanished or changed kind since the walk is sent as empty,
    // as fsutil does; a failure while reading is a real error.
    if let Some(mut file) = open_regular(source).await {
        loop {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| FsError::io("read", source, e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            push(
                tx,
                Packet {
                    r#type: PacketType::PacketData as i32,
                    id,
                    data: Bytes::from(buf),
                    ..Packet::default()
                },
            )
            .await?;
        }
    }
    push(
        tx,
        Packet {
            r#type: PacketType::PacketData as i32,
            id,
            ..Packet::default()
        },
    )
    .await
}

/// Opens `path` only if it is (still) a regular file. `O_NOFOLLOW` keeps a
/// file swapped for a symlink since the walk from being read through it, and
/// `O_NONBLOCK` keeps one swapped for a FIFO from hanging the open.
async fn open_regular(path: &Path) -> Option<tokio::fs::File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .await
        .ok()?;
    let meta = file.metadata().await.ok()?;
    meta.is_file().then_some(file)
}

async fn push(tx: &PacketTx, packet: Packet) -> Result<(), FsError> {
    tx.send(packet)
        .await
        .map_err(|_| FsError::Stream("transfer stream closed".into()))
}

pub(crate) fn err_packet(message: &str) -> Packet {
    Packet {
        r#type: PacketType::PacketErr as i32,
        data: Bytes::copy_from_slice(message.as_bytes()),
        ..Packet::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::receive::tests::{list, pipe};

    /// A sender over `entries`, driven by hand from the test: returns the
    /// sender task, the feed into its `rx` and what it sends.
    fn start(
        entries: Vec<Entry>,
    ) -> (
        tokio::task::JoinHandle<Result<(), FsError>>,
        PacketTx,
        mpsc::Receiver<Packet>,
    ) {
        let (feed, rx) = pipe(16);
        let (tx, out) = mpsc::channel(64);
        (tokio::spawn(send(entries, rx, tx)), feed, out)
    }

    fn packet(kind: PacketType, id: u32) -> Packet {
        Packet {
            r#type: kind as i32,
            id,
            ..Packet::default()
        }
    }

    async fn next(out: &mut mpsc::Receiver<Packet>) -> Packet {
        tokio::time::timeout(Duration::from_secs(10), out.recv())
            .await
            .expect("a packet in time")
            .expect("stream open")
    }

    /// Reads the listing: the stats, up to the end marker.
    async fn listing(out: &mut mpsc::Receiver<Packet>) -> Vec<Stat> {
        let mut stats = Vec::new();
        loop {
            let p = next(out).await;
            assert_eq!(p.r#type, PacketType::PacketStat as i32);
            match p.stat {
                Some(stat) => stats.push(stat),
                None => return stats,
            }
        }
    }

    fn tree() -> (tempfile::TempDir, Vec<Entry>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        std::fs::write(tmp.path().join("d/big"), &big).unwrap();
        std::fs::hard_link(tmp.path().join("d/big"), tmp.path().join("d/link")).unwrap();
        std::fs::write(tmp.path().join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("d", tmp.path().join("sym")).unwrap();
        let entries = list(tmp.path());
        (tmp, entries)
    }

    #[tokio::test]
    async fn lists_then_serves_requests_in_chunks() {
        let (_tmp, entries) = tree();
        let paths: Vec<_> = entries.iter().map(|e| e.stat.path.clone()).collect();
        assert_eq!(paths, ["d", "d/big", "d/link", "empty", "sym"]);
        let (task, feed, mut out) = start(entries.clone());
        let stats = listing(&mut out).await;
        assert_eq!(
            stats,
            entries.iter().map(|e| e.stat.clone()).collect::<Vec<_>>()
        );

        feed.send(packet(PacketType::PacketReq, 1)).await.unwrap();
        let mut content = Vec::new();
        loop {
            let p = next(&mut out).await;
            assert_eq!((p.r#type, p.id), (PacketType::PacketData as i32, 1));
            assert!(p.data.len() <= CHUNK_SIZE);
            if p.data.is_empty() {
                break;
            }
            content.extend_from_slice(&p.data);
        }
        assert_eq!(content, std::fs::read(&entries[1].source).unwrap());

        // An empty file is just its end marker.
        feed.send(packet(PacketType::PacketReq, 3)).await.unwrap();
        let p = next(&mut out).await;
        assert_eq!(
            (p.r#type, p.id, p.data.len()),
            (PacketType::PacketData as i32, 3, 0)
        );

        feed.send(packet(PacketType::PacketFin, 0)).await.unwrap();
        assert_eq!(next(&mut out).await.r#type, PacketType::PacketFin as i32);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_vanished_file_is_sent_empty() {
        let (tmp, entries) = tree();
        std::fs::remove_file(tmp.path().join("d/big")).unwrap();
        // Swapped for a FIFO: must not hang the open.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("empty"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap_or_else(|_| {
            std::fs::remove_file(tmp.path().join("empty")).unwrap();
        });
        let (task, feed, mut out) = start(entries);
        listing(&mut out).await;
        for id in [1, 3] {
            feed.send(packet(PacketType::PacketReq, id)).await.unwrap();
            let p = next(&mut out).await;
            assert_eq!(
                (p.r#type, p.id, p.data.len()),
                (PacketType::PacketData as i32, id, 0)
            );
        }
        feed.send(packet(PacketType::PacketFin, 0)).await.unwrap();
        assert_eq!(next(&mut out).await.r#type, PacketType::PacketFin as i32);
        task.await.unwrap().unwrap();
    }

    /// Sends one bad packet after the listing; the sender must fail with
    /// `ERR` on the wire.
    async fn rejected(bad: Packet, needle: &str) {
        let (_tmp, entries) = tree();
        let (task, feed, mut out) = start(entries);
        listing(&mut out).await;
        feed.send(packet(PacketType::PacketReq, 1)).await.unwrap();
        feed.send(bad).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, FsError::Invalid(m) if m.contains(needle)),
            "{err:?}"
        );
        let mut last = None;
        while let Ok(p) = out.try_recv() {
            last = Some(p);
        }
        let last = last.expect("an ERR packet");
        assert_eq!(last.r#type, PacketType::PacketErr as i32);
        assert_eq!(String::from_utf8_lossy(&last.data), err.to_string());
    }

    #[tokio::test]
    async fn rejects_bad_requests() {
        rejected(packet(PacketType::PacketReq, 1), "requested twice").await;
        rejected(packet(PacketType::PacketReq, 0), "not a regular file").await;
        rejected(packet(PacketType::PacketReq, 2), "not a regular file").await;
        rejected(packet(PacketType::PacketReq, 4), "not a regular file").await;
        rejected(packet(PacketType::PacketReq, 5), "invalid file id 5").await;
        rejected(packet(PacketType::PacketReq, u32::MAX), "invalid file id").await;
        rejected(packet(PacketType::PacketData, 1), "unexpected PACKET_DATA").await;
        rejected(packet(PacketType::PacketStat, 0), "unexpected PACKET_STAT").await;
        let mut unknown = packet(PacketType::PacketReq, 1);
        unknown.r#type = 42;
        rejected(unknown, "unknown packet type 42").await;
    }

    #[tokio::test]
    async fn peer_error_and_close() {
        let (_tmp, entries) = tree();
        let (task, feed, mut out) = start(entries.clone());
        feed.send(Packet {
            r#type: PacketType::PacketErr as i32,
            data: Bytes::from_static(b"no space"),
            ..Packet::default()
        })
        .await
        .unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, FsError::Remote(m) if m == "no space"),
            "{err:?}"
        );
        while let Ok(p) = out.try_recv() {
            assert_ne!(
                p.r#type,
                PacketType::PacketErr as i32,
                "no ERR back to the peer"
            );
        }

        let (task, feed, _out) = start(entries);
        drop(feed);
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, FsError::Stream(_)), "{err:?}");
    }

    #[tokio::test]
    async fn streams_several_files_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..8 {
            std::fs::write(
                tmp.path().join(format!("f{i}")),
                vec![i as u8; 5 * CHUNK_SIZE],
            )
            .unwrap();
        }
        let entries = list(tmp.path());
        let (task, feed, mut out) = start(entries);
        listing(&mut out).await;
        for id in 0..8 {
            feed.send(packet(PacketType::PacketReq, id)).await.unwrap();
        }
        let mut done = 0;
        let mut ids_before_first_end = std::collections::BTreeSet::new();
        let mut sizes = [0usize; 8];
        while done < 8 {
            let p = next(&mut out).await;
            if p.data.is_empty() {
                done += 1;
            } else {
                assert!(p.data.iter().all(|&b| b == p.id as u8));
                sizes[p.id as usize] += p.data.len();
                if done == 0 {
                    ids_before_first_end.insert(p.id);
                }
            }
        }
        assert_eq!(sizes, [5 * CHUNK_SIZE; 8]);
        assert!(
            ids_before_first_end.len() <= MAX_CONCURRENT_FILES,
            "{ids_before_first_end:?}"
        );
        feed.send(packet(PacketType::PacketFin, 0)).await.unwrap();
        assert_eq!(next(&mut out).await.r#type, PacketType::PacketFin as i32);
        task.await.unwrap().unwrap();
    }
}
