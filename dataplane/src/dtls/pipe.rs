//! An in-memory datagram `Conn` for webrtc-dtls: the worker owns the socket, so the DTLS
//! state machine reads records from a channel the session fills and writes records to a
//! channel the session drains.

use std::net::{Ipv4Addr, SocketAddr};

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};
use webrtc_util::conn::Conn;

/// Records queued towards the DTLS task before `handle_datagram` starts dropping them, as a
/// full socket buffer would. A handshake flight is a handful of records, but after it the
/// connection carries SCTP: a data channel peer may have a full receive window in flight
/// (256 KiB, about 220 MTU-sized packets, see `datachan::sctp`), and dropping part of it
/// would stall the association on retransmission timeouts. At most 256 records of at most
/// 2 KiB each per session.
pub(crate) const INBOUND_QUEUE: usize = 256;

/// A datagram pipe: `recv` yields what the owner pushed into `inbound`, `send` hands the
/// datagram to the owner through `outbound`.
pub(crate) struct Pipe {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::UnboundedSender<Vec<u8>>,
}

/// The owner's ends of a [`Pipe`].
pub(crate) struct PipeEnds {
    pub(crate) inbound: mpsc::Sender<Vec<u8>>,
    pub(crate) outbound: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Pipe {
    pub(crate) fn new() -> (Pipe, PipeEnds) {
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        (
            Pipe {
                inbound: Mutex::new(in_rx),
                outbound: out_tx,
            },
            PipeEnds {
                inbound: in_tx,
                outbound: out_rx,
            },
        )
    }
}

/// The pipe has no address; webrtc-dtls only reads these for logging and client-side SNI.
fn placeholder_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

type UtilResult<T> = Result<T, webrtc_util::Error>;

#[async_trait]
impl Conn for Pipe {
    async fn connect(&self, _addr: SocketAddr) -> UtilResult<()> {
        Err(webrtc_util::Error::Other("pipe is always connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        let mut rx = self.inbound.lock().await;
        match rx.recv().await {
            Some(d) => {
                // Datagram semantics: a record longer than the reader's buffer is truncated
                // (webrtc-dtls reads into 8 KiB; the worker never hands over more than an MTU).
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            // The session is gone. webrtc-dtls's reader loop retries on every error except
            // a fatal alert, so an error here would spin; the session aborts the task that
            // owns the DTLS connection, which stops the reader, so wait for that instead.
            None => std::future::pending().await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, placeholder_addr()))
    }

    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        // A dropped session end means nobody will send it; like UDP, that is not an error.
        let _ = self.outbound.send(buf.to_vec());
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> UtilResult<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> UtilResult<SocketAddr> {
        Ok(placeholder_addr())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> UtilResult<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
