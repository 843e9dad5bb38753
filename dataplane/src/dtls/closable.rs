//! The DTLS connection as the SCTP association sees it, with an off switch.
//!
//! webrtc-sctp's association runs its own read and write tasks; they end only when a read
//! from the connection fails (the read task then closes the association, which wakes the
//! write task). Closing the DTLS connection under an association that never finished its
//! handshake (a peer without data channels, or a session ended early) left both tasks, and
//! the connection they hold, alive forever: ~24 KiB and two tasks per WebRTC session ever
//! made (found by `scripts/soak.sh`; `tests::ended_sessions_leave_no_task_behind`). Turning
//! this switch makes every read and write fail at once, so both tasks end.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

type UtilResult<T> = Result<T, webrtc_util::Error>;

pub(crate) struct Closable {
    inner: Arc<DTLSConn>,
    closed: watch::Receiver<bool>,
}

impl Closable {
    /// The connection for SCTP, and the switch that cuts it off.
    pub(crate) fn new(inner: Arc<DTLSConn>) -> (Arc<Self>, watch::Sender<bool>) {
        let (off, closed) = watch::channel(false);
        (Arc::new(Self { inner, closed }), off)
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn closed_error() -> webrtc_util::Error {
        webrtc_util::Error::Other("session ended".into())
    }
}

#[async_trait]
impl Conn for Closable {
    async fn connect(&self, addr: SocketAddr) -> UtilResult<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        let mut closed = self.closed.clone();
        tokio::select! {
            r = self.inner.recv(buf) => r,
            _ = closed.wait_for(|c| *c) => Err(Self::closed_error()),
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        let mut closed = self.closed.clone();
        tokio::select! {
            r = self.inner.recv_from(buf) => r,
            _ = closed.wait_for(|c| *c) => Err(Self::closed_error()),
        }
    }

    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        if self.is_closed() {
            return Err(Self::closed_error());
        }
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> UtilResult<usize> {
        if self.is_closed() {
            return Err(Self::closed_error());
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> UtilResult<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> UtilResult<()> {
        // The session closes the DTLS connection itself, after cutting SCTP off.
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
