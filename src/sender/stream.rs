//! Stream transports: `tcp://` and `tls://` (RFC 6587 / RFC 5425) and `stdout`.
//!
//! Syslog receivers never answer, so delivery is confirmed conservatively: a written batch is
//! confirmed only after it stayed `confirm_after` on a connection that showed no error, close
//! or TLS alert. The read half is watched meanwhile: a TLS 1.3 receiver that rejects the
//! client certificate, or one that resets the connection, is noticed there, and everything
//! not yet confirmed is sent again on the next connection.
//!
//! Holding costs memory only with a memory queue, whose records wait in it until confirmed:
//! when that queue is pressed for room ([`crate::queue::Reader::pressed`]), a connection that
//! has itself stayed healthy for `confirm_after` confirms what it wrote at once, so that the
//! memory held stays bounded by the budget rather than growing with rate x `confirm_after`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::connect::{Connector, Stream};
use super::{Encoding, End, Session};
use crate::queue::Position;

/// Where a stream destination writes.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per destination, built once and never moved on the data path"
)]
pub enum Target {
    /// A TCP or TLS receiver.
    Network(Connector),
    /// The process's standard output.
    Stdout,
}

/// Settings of a stream session.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Format, framing and size limit.
    pub encoding: Encoding,
    /// How long written records must stay on a healthy connection.
    pub confirm_after: Duration,
    /// Deadline of one batch write.
    pub write_timeout: Duration,
    /// Bytes per batch at most (sizes the write buffer).
    pub batch_bytes: usize,
}

/// One connection (or stdout) and the batches written on it, not yet confirmed.
pub struct StreamSession<R, W> {
    rd: R,
    wr: W,
    /// Whether the read half tells anything (false for stdout).
    watch_peer: bool,
    settings: StreamSettings,
    /// Each written batch: its end, when it was written, how many records it framed.
    pending: VecDeque<(Position, Instant, u64)>,
    /// When the connection was handed over: a late TLS rejection comes within
    /// `confirm_after` of it, so nothing is confirmed early before then.
    opened: Instant,
    /// The queue is short of memory for held records (see the module comment).
    pressed: bool,
    buf: Vec<u8>,
    scratch: [u8; 512],
}

/// A network session: the two halves of a [`Stream`].
pub type NetworkSession = StreamSession<tokio::io::ReadHalf<Stream>, tokio::io::WriteHalf<Stream>>;

/// The stdout session.
pub type StdoutSession = StreamSession<tokio::io::Empty, tokio::io::Stdout>;

impl NetworkSession {
    /// A session on an open connection.
    pub fn network(stream: Stream, settings: StreamSettings) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        StreamSession::new(rd, wr, true, settings)
    }
}

impl StdoutSession {
    /// A session writing to stdout.
    pub fn stdout(settings: StreamSettings) -> Self {
        StreamSession::new(tokio::io::empty(), tokio::io::stdout(), false, settings)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> StreamSession<R, W> {
    fn new(rd: R, wr: W, watch_peer: bool, settings: StreamSettings) -> Self {
        Self {
            rd,
            wr,
            watch_peer,
            buf: Vec::with_capacity(settings.batch_bytes + 1024),
            settings,
            pending: VecDeque::new(),
            opened: Instant::now(),
            pressed: false,
            scratch: [0; 512],
        }
    }
}

impl<R, W> StreamSession<R, W> {
    /// Counts the pending records that have not yet stayed `confirm_after` (about to be
    /// confirmed all at once): an operator sees how often the window was given up.
    fn count_early(&self) {
        let now = Instant::now();
        let early: u64 = self
            .pending
            .iter()
            .filter(|&&(_, written, _)| written + self.settings.confirm_after > now)
            .map(|&(_, _, framed)| framed)
            .sum();
        if early > 0 {
            self.settings.encoding.gauges.confirmed_early(early);
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session for StreamSession<R, W> {
    async fn send(&mut self, records: &[Bytes], end: Position) -> Result<(), End> {
        self.buf.clear();
        let count = self.settings.encoding.first_time(end);
        let mut framed = 0;
        for record in records {
            if let Some(message) = self.settings.encoding.prepare(record, count) {
                self.settings
                    .encoding
                    .encoder
                    .frame(&message, &mut self.buf);
                framed += 1;
            }
        }
        let write = async {
            self.wr.write_all(&self.buf).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Ok(Ok(())) => {
                self.pending.push_back((end, Instant::now(), framed));
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    async fn confirmed(&mut self) -> Result<Position, End> {
        let (confirm_at, all) = match self.pending.front() {
            None => (None, false),
            // Pressed: everything written so far goes once the connection itself is proven
            // (never later than it would unpressed: nothing is written before `opened`).
            Some(_) if self.pressed => (Some(self.opened + self.settings.confirm_after), true),
            Some(&(_, written, _)) => (Some(written + self.settings.confirm_after), false),
        };
        tokio::select! {
            end = peer_closed(&mut self.rd, &mut self.scratch), if self.watch_peer => Err(end),
            () = sleep_until(confirm_at) => {
                let next = if all {
                    self.count_early();
                    let last = self.pending.back().map(|&(position, _, _)| position);
                    self.pending.clear();
                    last
                } else {
                    self.pending.pop_front().map(|(position, _, _)| position)
                };
                match next {
                    Some(position) => Ok(position),
                    None => std::future::pending().await,
                }
            },
        }
    }

    fn press(&mut self, pressed: bool) {
        self.pressed = pressed;
    }

    /// Orderly end after a drain: close_notify / FIN, wait briefly for the receiver's close
    /// so that a late rejection is still seen, then confirm what was written.
    async fn close(mut self) -> Result<Option<Position>, End> {
        self.wr.shutdown().await.map_err(End::Io)?;
        if self.watch_peer && !self.pending.is_empty() {
            let wait = self.settings.confirm_after.max(Duration::from_millis(100));
            match tokio::time::timeout(wait, peer_closed(&mut self.rd, &mut self.scratch)).await {
                Ok(End::PeerClosed) | Err(_) => {}
                Ok(other) => return Err(other),
            }
        }
        Ok(self.pending.back().map(|&(position, _, _)| position))
    }

    async fn abort(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes when the receiver closes the connection or it fails; data it sends is ignored.
async fn peer_closed<R: AsyncRead + Unpin>(rd: &mut R, scratch: &mut [u8]) -> End {
    loop {
        match rd.read(scratch).await {
            Ok(0) => return End::PeerClosed,
            Ok(_) => {}
            Err(e) => return End::Io(e),
        }
    }
}
