//! A connection that gives up on a client that stops reading.
//!
//! hyper has no write timeout: a response whose client reads none of it (a
//! client gone silent without closing, or one that sends request after
//! request and reads no answer) waits for room in the socket forever, and
//! holds one of the `max_connections` slots all the while; a few such
//! clients lock everyone else out. Through [`WriteTimeout`], a write that
//! has made no progress for its limit fails with `TimedOut`, and hyper
//! closes the connection. Any progress starts the clock again, so a slow
//! reader is never cut off, only one that takes nothing for that long. The
//! kernel wakes a waiting write only once the client has taken some of
//! what waits; the front door keeps that to 16 KiB
//! ([`crate::api::front`]'s `TCP_NOTSENT_LOWAT`), not a third of a send
//! buffer grown to megabytes.
//!
//! An event stream is bounded the same way: its subscriber has stopped
//! reading, and when it reads again its `EventSource` reconnects with
//! `Last-Event-ID` and is sent what it missed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's IO whose writes fail once one has waited `limit` for the
/// socket to take a byte. Reads, flushes and shutdown pass through.
pub struct WriteTimeout<T> {
    inner: T,
    limit: Duration,
    /// The deadline of the write now waiting, made on a connection's first
    /// wait and reset for each later one.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the last write waited: the deadline is running.
    waiting: bool,
}

impl<T> WriteTimeout<T> {
    /// Wraps `inner`; a write may wait at most `limit` for room.
    pub fn new(inner: T, limit: Duration) -> Self {
        WriteTimeout {
            inner,
            limit,
            deadline: None,
            waiting: false,
        }
    }

    /// `polled`, a write's outcome, unless it has waited past the limit.
    fn bounded(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !self.waiting {
            self.waiting = true;
            let at = Instant::now() + self.limit;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", self.limit.as_secs()),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_fails_once_it_has_waited_its_limit_and_progress_restarts_the_clock() {
        // A pipe of 64 bytes that nobody reads: the second write waits.
        let (writer, mut reader) = tokio::io::duplex(64);
        let mut writer = WriteTimeout::new(writer, Duration::from_secs(10));
        writer.write_all(&[0; 64]).await.unwrap();

        // Read a little just before the limit: the write goes on, and its
        // clock starts again.
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            let mut some = [0u8; 16];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut some)
                .await
                .unwrap();
            reader
        });
        let began = Instant::now();
        writer.write_all(&[1; 16]).await.unwrap();
        assert_eq!(began.elapsed(), Duration::from_secs(9));
        let _reader = drain.await.unwrap();

        // Nothing read any more: the next write fails after the limit.
        let began = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(60), writer.write_all(&[2; 16]))
            .await
            .expect("the write gave up")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }
}
