//! A client's connection, shared between hyper, which reads and writes it,
//! and the event stream it may carry, which ends when the client closes
//! it.
//!
//! The front door serves its connections with hyper's `half_close`, so a
//! client that shuts its sending side once its request is sent still gets
//! its answer; hyper then reads nothing while it writes one. An event
//! stream's answer never ends: one whose client had gone held its
//! connection, one of `max_connections` and of its address's
//! `max_connections_per_client`, until its next heartbeat failed to send
//! (up to `heartbeat_secs`, an hour if so set), and new connections were
//! refused meanwhile. The stream now watches for the client's end of the
//! connection itself ([`PeerClosed`]).
//!
//! Reads and writes go through tokio's own readiness calls on the shared
//! `TcpStream` (`poll_read_ready` then `try_read_buf`, as its documentation
//! shows), which is what `TcpStream`'s `AsyncRead` does inside; the watch
//! waits with `peek`, whose readiness is a waiter of its own, so it takes
//! no wake-up from hyper's reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection as hyper reads and writes it.
pub struct SharedSocket(Arc<TcpStream>);

impl SharedSocket {
    /// `stream`, and the handle an event stream on it watches.
    pub fn new(stream: TcpStream) -> (SharedSocket, PeerClosed) {
        let stream = Arc::new(stream);
        (SharedSocket(stream.clone()), PeerClosed(stream))
    }
}

/// Tells when the client has closed its connection.
#[derive(Clone)]
pub struct PeerClosed(Arc<TcpStream>);

impl PeerClosed {
    /// Resolves once the client has closed the connection (its FIN with
    /// nothing unread before it, or a reset). A half-closed client counts
    /// as gone: an event stream has no end for it to wait for. If the
    /// client sends anything instead (a request pipelined behind the
    /// stream's), this never resolves, and the stream ends as it did
    /// before: at shutdown, or when a write fails.
    pub async fn closed(self) {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }
}

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A would-block clears the readiness: the next poll waits.
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SharedSocket {
    /// `write` once the socket can take data; a would-block clears the
    /// readiness, and the next poll waits.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    // TCP sends at once (`TCP_NODELAY`): nothing is buffered here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the sending side, as `TcpStream`'s own does.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}
