//! A lingering close for webhook connections.
//!
//! When the relay closes a connection while the client is still sending (a refused HTTP/1.1
//! body that is too large to discard), closing the socket with unread bytes in its receive
//! buffer makes the kernel send a reset, and the reset can destroy the answer in the
//! client's receive buffer before the client read it. So the socket's shutdown sends FIN
//! first, then reads and drops what still arrives until the client closes, or for
//! `listen.discard_timeout` at most (time, not bytes: a client that writes its whole body
//! before it reads the answer must be allowed to finish writing).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::slots::Connection;

/// A TCP stream whose shutdown lingers (see the module documentation).
#[derive(Debug)]
pub(super) struct Lingering {
    inner: TcpStream,
    time: Duration,
    connection: Arc<Connection>,
    state: Option<Linger>,
}

#[derive(Debug)]
struct Linger {
    write_closed: bool,
    deadline: Pin<Box<Sleep>>,
}

impl Lingering {
    pub(super) fn new(inner: TcpStream, time: Duration, connection: Arc<Connection>) -> Self {
        Self {
            inner,
            time,
            connection,
            state: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let time = this.time;
        let state = this.state.get_or_insert_with(|| Linger {
            write_closed: false,
            deadline: Box::pin(tokio::time::sleep(time)),
        });
        if !state.write_closed {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            state.write_closed = true;
        }
        // An evicted connection had no answer in flight: nothing to protect.
        if this.connection.is_evicted() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 8192];
        loop {
            if state.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // End of stream, or the client reset: either way the answer was read or lost.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}
