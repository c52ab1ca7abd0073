//! fsutil's directory-sync protocol, as BuildKit speaks it for build contexts
//! (`FileSync.DiffCopy`) and local outputs (`FileSend.DiffCopy`).
//!
//! A sender lists a tree as `STAT` packets in strict order (depth-first,
//! siblings by byte order), then serves `REQ`s for file contents with `DATA`
//! packets; the receiver validates every packet, writes only inside its
//! destination, and ends with `FIN`. Start at [`walk::walk`] (the listing,
//! with `.dockerignore`-style filtering from [`patterns`]), [`send::send`] and
//! [`receive::receive`]. Stat modes use Go's FileMode layout ([`mode`]).

pub mod mode;
pub mod patterns;
pub mod receive;
pub mod send;
pub mod walk;

use std::path::PathBuf;
use std::pin::Pin;

pub use bk_proto::fsutil::types::packet::PacketType;
pub use bk_proto::fsutil::types::{Packet, Stat};
use futures::Stream;

/// Why a transfer or a walk failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The peer broke the protocol (bad order, unknown id, bad path, …).
    #[error("invalid transfer: {0}")]
    Invalid(String),
    /// The peer reported an error with an `ERR` packet.
    #[error("error from peer: {0}")]
    Remote(String),
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    /// The packet stream ended or failed underneath us.
    #[error("transfer stream: {0}")]
    Stream(String),
}

impl FsError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> FsError {
        FsError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Incoming packets. Transports adapt their stream (a gRPC `Streaming`) to
/// this, mapping transport errors to [`FsError::Stream`].
pub type PacketRx = Pin<Box<dyn Stream<Item = Result<Packet, FsError>> + Send>>;

/// Outgoing packets. The transport drains the channel into its stream.
pub type PacketTx = tokio::sync::mpsc::Sender<Packet>;

/// One listed entry: the `Stat` that goes on the wire (path relative,
/// slash-separated) and the file on disk its content is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stat: Stat,
    pub source: PathBuf,
}
