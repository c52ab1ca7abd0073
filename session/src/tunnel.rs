//! Turns the message stream of `Control.Session` into a byte pipe that an
//! HTTP/2 connection can run on, in either role.
//!
//! Each direction of the outer RPC carries `BytesMessage`s whose
//! concatenation is a raw byte stream; message boundaries mean nothing. Two
//! independent pumps move bytes, so the outer stream is always drained even
//! while inner HTTP/2 writes wait for flow control (a single loop doing both
//! could deadlock the two flow-control layers).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

/// Buffer between the pumps and the inner connection.
const PIPE_CAPACITY: usize = 256 * 1024;
/// Largest chunk sent as one outer message. The peer's gRPC server accepts
/// 4 MiB messages; BuildKit itself reads 32 KiB at a time.
const CHUNK: usize = 64 * 1024;

/// The inner connection's end of the tunnel.
pub struct TunnelIo(DuplexStream);

impl Connected for TunnelIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The running pumps of one tunnel.
pub struct Tunnel {
    /// Resolves when the peer's direction ended (half-close or error).
    pub inbound_done: oneshot::Receiver<()>,
    inbound: JoinHandle<()>,
    outbound: JoinHandle<()>,
}

impl Tunnel {
    /// Tears the tunnel down at once: the inner connection sees EOF and the
    /// outbound stream ends.
    pub fn abort(&self) {
        self.inbound.abort();
        self.outbound.abort();
    }
}

/// Starts a tunnel over `inbound` (the peer's byte chunks). Returns the inner
/// connection's IO, the chunks to send to the peer, and the pumps.
pub fn open<S, E>(inbound: S) -> (TunnelIo, mpsc::Receiver<Bytes>, Tunnel)
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (inner, pump_end) = tokio::io::duplex(PIPE_CAPACITY);
    let (mut pump_read, mut pump_write) = tokio::io::split(pump_end);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(16);
    let (done_tx, done_rx) = oneshot::channel();

    let inbound_task = tokio::spawn(async move {
        let mut inbound = inbound;
        while let Some(chunk) = inbound.next().await {
            match chunk {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => {
                    if pump_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "session stream failed");
                    break;
                }
            }
        }
        // EOF for the inner connection: it closes, and so does our outbound.
        let _ = pump_write.shutdown().await;
        let _ = done_tx.send(());
    });

    let outbound_task = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pump_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_tx
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });

    (
        TunnelIo(inner),
        out_rx,
        Tunnel {
            inbound_done: done_rx,
            inbound: inbound_task,
            outbound: outbound_task,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::wrappers::ReceiverStream;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_ends_outbound() {
        let (peer_tx, peer_rx) = mpsc::channel::<Result<Bytes, String>>(4);
        let (mut io, mut outbound, tunnel) = open(ReceiverStream::new(peer_rx));
        peer_tx.send(Ok(Bytes::from_static(b"hel"))).await.unwrap();
        peer_tx.send(Ok(Bytes::new())).await.unwrap();
        peer_tx.send(Ok(Bytes::from_static(b"lo"))).await.unwrap();
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        io.write_all(b"back").await.unwrap();
        assert_eq!(outbound.recv().await.unwrap(), Bytes::from_static(b"back"));

        drop(peer_tx);
        tunnel.inbound_done.await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(io);
        assert!(outbound.recv().await.is_none());
    }
}
