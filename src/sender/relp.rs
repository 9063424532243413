//! `relp://` and `relp+tls://`: the client side of RELP (the Reliable Event Logging Protocol
//! of rsyslog's librelp, spoken by `omrelp` and served by `imrelp`), where the receiver
//! acknowledges every message.
//!
//! A session opens with `open` and the offers `relp_version`, `relp_software` and
//! `commands=syslog`, then sends one `syslog` frame per record with increasing transaction
//! numbers, at most `relp_window` of them unacknowledged. A batch is confirmed, and the
//! cursor moves past it, only when a `rsp 200` arrived for each of its records; never on a
//! timer. A non-200 `rsp`, a `serverclose`, no progress for `relp_ack_timeout`, a lost
//! connection or any frame that is not what RELP allows ends the session: the sender
//! reconnects with backoff and sends everything after the last confirmed record again. A
//! drain ends with `close`.
//!
//! Frames (librelp's `doc/relp.md`): `TXNR SP COMMAND SP DATALEN [SP DATA] LF`, with TXNR and
//! DATALEN of 1 to 9 digits, COMMAND of 1 to 32 letters; `rsp` data is `CODE [SP TEXT]
//! [LF OFFERS]`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::connect::Stream;
use super::{Encoding, End, Session};
use crate::queue::Position;

/// The largest frame accepted from the server: its answers are a few dozen bytes.
const MAX_SERVER_DATA: usize = 64 << 10;
/// After 999 999 999, transaction numbers start again at 1 (0 is for hints).
const MAX_TXNR: u32 = 999_999_999;

/// Why a RELP session ended on the protocol's side.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelpError {
    /// The server answered a message with something else than 200.
    #[error("the receiver refused transaction {txnr}: {code} {text}")]
    Refused {
        /// The transaction.
        txnr: u32,
        /// The RELP status (500 and the like).
        code: u16,
        /// The server's reason.
        text: String,
    },
    /// The server refused the session or does not offer what the relay needs.
    #[error("the receiver refused the session: {0}")]
    OpenRefused(String),
    /// The server announced it closes the session.
    #[error("the receiver closed the session (serverclose)")]
    ServerClose,
    /// No acknowledgement arrived within `relp_ack_timeout`.
    #[error("no acknowledgement within relp_ack_timeout ({0:?})")]
    AckTimeout(Duration),
    /// The server sent something RELP does not allow.
    #[error("malformed or unexpected frame from the receiver: {0}")]
    Protocol(String),
}

/// One frame from the server.
#[derive(Debug, PartialEq, Eq)]
struct Frame<'a> {
    txnr: u32,
    command: &'a [u8],
    data: &'a [u8],
}

/// Parses the frame at the start of `buf`: `Ok(Some((frame, used)))`, or `Ok(None)` when
/// more bytes are needed.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, RelpError> {
    let bad = |what: String| RelpError::Protocol(what);
    // TXNR SP
    let Some((txnr, rest)) = number(buf, "transaction number")? else {
        return Ok(None);
    };
    // COMMAND SP
    let Some(space) = rest.iter().take(33).position(|&b| b == b' ') else {
        return if rest.len() > 32 || !rest.iter().all(u8::is_ascii_alphabetic) {
            Err(bad(format!(
                "command `{}` is not 1 to 32 letters",
                String::from_utf8_lossy(&rest[..rest.len().min(40)])
            )))
        } else {
            Ok(None)
        };
    };
    let command = &rest[..space];
    if command.is_empty() || !command.iter().all(u8::is_ascii_alphabetic) {
        return Err(bad(format!(
            "command `{}` is not 1 to 32 letters",
            String::from_utf8_lossy(command)
        )));
    }
    let rest = &rest[space + 1..];
    // DATALEN, then LF (no data) or SP DATA LF
    let digits = rest
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == rest.len() {
        return if digits > 9 {
            Err(bad("data length of more than 9 digits".into()))
        } else {
            Ok(None)
        };
    }
    if digits == 0 || digits > 9 {
        return Err(bad("data length is not 1 to 9 digits".into()));
    }
    let len: usize = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad("data length is not a number".into()))?;
    if len > MAX_SERVER_DATA {
        return Err(bad(format!("a frame of {len} bytes from the receiver")));
    }
    let header = buf.len() - rest.len() + digits;
    let (data, end) = if len == 0 {
        (&buf[header..header], header)
    } else {
        match buf.get(header) {
            None => return Ok(None),
            Some(b' ') => {}
            Some(_) => return Err(bad("no space after the data length".into())),
        }
        let start = header + 1;
        match buf.get(start..start + len) {
            None => return Ok(None),
            Some(data) => (data, start + len),
        }
    };
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((
            Frame {
                txnr,
                command,
                data,
            },
            end + 1,
        ))),
        Some(_) => Err(bad("the frame does not end with LF".into())),
    }
}

/// `1*9DIGIT SP` at the start of `buf`, or `None` when more bytes are needed.
fn number<'a>(buf: &'a [u8], what: &str) -> Result<Option<(u32, &'a [u8])>, RelpError> {
    let digits = buf
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == buf.len() && digits <= 9 {
        return Ok(None);
    }
    if digits == 0 || digits > 9 || buf.get(digits) != Some(&b' ') {
        return Err(RelpError::Protocol(format!(
            "{what} is not 1 to 9 digits followed by a space: `{}`",
            String::from_utf8_lossy(&buf[..buf.len().min(20)])
        )));
    }
    let n = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| RelpError::Protocol(format!("{what} is not a number")))?;
    Ok(Some((n, &buf[digits + 1..])))
}

/// The status code and text of a `rsp`'s data, and what follows the first line (offers).
fn response(data: &[u8]) -> Result<(u16, String, &[u8]), RelpError> {
    let line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = &data[..line_end];
    let code = line
        .get(..3)
        .filter(|c| c.iter().all(u8::is_ascii_digit))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            RelpError::Protocol(format!(
                "rsp without a status code: `{}`",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            ))
        })?;
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
    Ok((code, text, data.get(line_end + 1..).unwrap_or_default()))
}

fn next_txnr(t: u32) -> u32 {
    if t >= MAX_TXNR { 1 } else { t + 1 }
}

/// A RELP destination's settings.
#[derive(Debug, Clone)]
pub struct RelpSettings {
    /// Format and size limit (RELP frames each message itself: `framing` does not apply).
    pub encoding: Encoding,
    /// Messages unacknowledged at most.
    pub window: usize,
    /// Time allowed without progress while messages are unacknowledged.
    pub ack_timeout: Duration,
    /// Deadline of one batch write.
    pub write_timeout: Duration,
    /// Bytes per batch at most (sizes the write buffer).
    pub batch_bytes: usize,
}

/// A batch sent, waiting for its acknowledgements.
#[derive(Debug)]
struct Sent {
    /// The transaction number of its last record; `None` when every record of it was too
    /// large for this destination (then it is confirmed as soon as the batches before it).
    last_txnr: Option<u32>,
    /// Where the cursor goes once it is confirmed.
    position: Position,
}

/// An open RELP session.
pub struct RelpSession {
    rd: ReadHalf<Stream>,
    wr: WriteHalf<Stream>,
    settings: RelpSettings,
    /// The next transaction number to use.
    txnr: u32,
    /// The transaction number whose `rsp` comes next (responses come in order).
    expect: u32,
    /// Records sent and not acknowledged.
    unacked: usize,
    sent: VecDeque<Sent>,
    /// When the session last made progress (a send into an empty window, or an ack).
    progress: Instant,
    buf: BytesMut,
    out: Vec<u8>,
}

impl RelpSession {
    /// Opens a session on a connection: `open` with the offers, and the server's answer.
    ///
    /// # Errors
    /// [`End::Relp`] when the server refuses or answers what RELP does not allow, and the
    /// connection's errors.
    pub async fn open(stream: Stream, settings: RelpSettings) -> Result<Self, End> {
        let (rd, wr) = tokio::io::split(stream);
        let mut session = Self {
            rd,
            wr,
            txnr: 1,
            expect: 1,
            unacked: 0,
            sent: VecDeque::new(),
            progress: Instant::now(),
            buf: BytesMut::with_capacity(8 << 10),
            out: Vec::with_capacity(settings.batch_bytes + 1024),
            settings,
        };
        let offers = format!(
            "relp_version=0\nrelp_software=kube-audit-relay,{},https://github.com/kube-audit-relay\ncommands=syslog",
            env!("CARGO_PKG_VERSION")
        );
        session.out.clear();
        session.push_frame(1, b"open", offers.as_bytes());
        session.write_out().await?;
        let deadline = Instant::now() + session.settings.ack_timeout;
        let (txnr, code, text, offers) =
            match tokio::time::timeout_at(deadline, session.read_frame()).await {
                Err(_) => return Err(RelpError::AckTimeout(session.settings.ack_timeout).into()),
                Ok(frame) => {
                    let (txnr, command, data) = frame?;
                    if command != "rsp" {
                        return Err(unexpected(txnr, &command).into());
                    }
                    let (code, text, offers) = response(&data)?;
                    (txnr, code, text, offers.to_vec())
                }
            };
        if txnr != 1 {
            return Err(
                RelpError::Protocol(format!("answer to open has transaction {txnr}")).into(),
            );
        }
        if code != 200 {
            return Err(RelpError::OpenRefused(format!("{code} {text}")).into());
        }
        let offers = String::from_utf8_lossy(&offers);
        if !offers.lines().any(|l| l.starts_with("relp_version=")) {
            return Err(
                RelpError::OpenRefused("no relp_version offer in the answer".into()).into(),
            );
        }
        let syslog = offers
            .lines()
            .filter_map(|l| l.strip_prefix("commands="))
            .any(|c| c.split(',').any(|c| c.trim() == "syslog"));
        if !syslog {
            return Err(RelpError::OpenRefused(
                "the receiver does not offer the syslog command".into(),
            )
            .into());
        }
        session.txnr = 2;
        session.expect = 2;
        Ok(session)
    }

    fn push_frame(&mut self, txnr: u32, command: &[u8], data: &[u8]) {
        use std::io::Write;
        let _ = write!(self.out, "{txnr} ");
        self.out.extend_from_slice(command);
        let _ = write!(self.out, " {}", data.len());
        if !data.is_empty() {
            self.out.push(b' ');
            self.out.extend_from_slice(data);
        }
        self.out.push(b'\n');
    }

    async fn write_out(&mut self) -> Result<(), End> {
        let write = async {
            self.wr.write_all(&self.out).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Reads the next whole frame (cancel safe: partial input stays in the buffer). Returns
    /// (txnr, command, data).
    async fn read_frame(&mut self) -> Result<(u32, String, Bytes), End> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                let parsed = (
                    frame.txnr,
                    String::from_utf8_lossy(frame.command).into_owned(),
                    Bytes::copy_from_slice(frame.data),
                );
                self.buf.advance(used);
                return Ok(parsed);
            }
            if self.buf.len() > MAX_SERVER_DATA + 64 {
                return Err(
                    RelpError::Protocol("an endless frame from the receiver".into()).into(),
                );
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return Err(End::PeerClosed),
                Ok(_) => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    /// Handles one frame: an acknowledgement advances the window; anything else ends the
    /// session.
    fn on_frame(&mut self, txnr: u32, command: &str, data: &[u8]) -> Result<(), End> {
        match (txnr, command) {
            (0, "serverclose") => Err(RelpError::ServerClose.into()),
            (_, "rsp") if self.unacked > 0 && txnr == self.expect => {
                let (code, text, _) = response(data)?;
                if code != 200 {
                    return Err(RelpError::Refused { txnr, code, text }.into());
                }
                self.expect = next_txnr(self.expect);
                self.unacked -= 1;
                self.progress = Instant::now();
                Ok(())
            }
            (_, "rsp") => Err(RelpError::Protocol(format!(
                "an answer to transaction {txnr}, expected {}",
                if self.unacked > 0 {
                    self.expect.to_string()
                } else {
                    "none".into()
                }
            ))
            .into()),
            _ => Err(unexpected(txnr, command).into()),
        }
    }

    /// The front batch's position, when all its records are acknowledged.
    fn front_done(&mut self) -> Option<Position> {
        let front = self.sent.front()?;
        // Done when the batch's last transaction (and so, answers being in order, every one
        // before it) is answered.
        let done = front.last_txnr.is_none_or(|last| !self.in_flight(last));
        if done {
            self.sent.pop_front().map(|s| s.position)
        } else {
            None
        }
    }

    /// Whether transaction `t` still waits for its answer.
    fn in_flight(&self, t: u32) -> bool {
        if self.unacked == 0 {
            return false;
        }
        // The unacknowledged transactions are `expect`, `expect + 1`, ... (wrapping); `t` is
        // among them when it is at most `unacked - 1` steps after `expect`.
        let steps = if t >= self.expect {
            t - self.expect
        } else {
            MAX_TXNR - self.expect + t
        };
        (steps as usize) < self.unacked
    }
}

fn unexpected(txnr: u32, command: &str) -> RelpError {
    RelpError::Protocol(format!(
        "command `{command}` (transaction {txnr}) from the receiver"
    ))
}

impl Session for RelpSession {
    async fn send(&mut self, records: &[Bytes], end: Position) -> Result<(), End> {
        self.out.clear();
        let mut last_txnr = None;
        let was_idle = self.unacked == 0;
        let count = self.settings.encoding.first_time(end);
        for record in records {
            let Some(message) = self.settings.encoding.prepare(record, count) else {
                continue;
            };
            let txnr = self.txnr;
            self.push_frame(txnr, b"syslog", &message);
            self.txnr = next_txnr(txnr);
            self.unacked += 1;
            last_txnr = Some(txnr);
        }
        if !self.out.is_empty() {
            self.write_out().await?;
        }
        if was_idle {
            self.progress = Instant::now();
        }
        self.sent.push_back(Sent {
            last_txnr,
            position: end,
        });
        Ok(())
    }

    async fn confirmed(&mut self) -> Result<Position, End> {
        loop {
            if let Some(position) = self.front_done() {
                return Ok(position);
            }
            let deadline = (self.unacked > 0).then(|| self.progress + self.settings.ack_timeout);
            let (txnr, command, data) = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.read_frame()).await {
                        Ok(frame) => frame?,
                        Err(_) => {
                            return Err(RelpError::AckTimeout(self.settings.ack_timeout).into());
                        }
                    }
                }
                // Nothing outstanding: only a serverclose or the connection's end can come.
                None => self.read_frame().await?,
            };
            self.on_frame(txnr, &command, &data)?;
        }
    }

    fn room(&self) -> usize {
        self.settings.window.saturating_sub(self.unacked)
    }

    /// Waits for every acknowledgement, then `close` and its answer.
    async fn close(mut self) -> Result<Option<Position>, End> {
        let mut last = None;
        while !self.sent.is_empty() {
            last = Some(self.confirmed().await?);
        }
        self.out.clear();
        let txnr = self.txnr;
        self.push_frame(txnr, b"close", b"");
        self.write_out().await?;
        let deadline = Instant::now() + self.settings.ack_timeout;
        let answered = tokio::time::timeout_at(deadline, async {
            loop {
                match self.read_frame().await {
                    Ok((t, command, _)) if t == txnr && command == "rsp" => return true,
                    Ok((0, command, _)) if command == "serverclose" => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if answered != Ok(true) {
            tracing::debug!(destination = %self.settings.encoding.name, "RELP close not answered");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
        Ok(last)
    }

    async fn abort(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (txnr, command, data, bytes used)
    type Parsed = (u32, String, Vec<u8>, usize);

    fn frame(buf: &[u8]) -> Result<Option<Parsed>, RelpError> {
        parse_frame(buf).map(|f| {
            f.map(|(f, used)| {
                (
                    f.txnr,
                    String::from_utf8_lossy(f.command).into_owned(),
                    f.data.to_vec(),
                    used,
                )
            })
        })
    }

    #[test]
    fn frames_from_imrelp_parse() {
        let open = b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n";
        let (txnr, command, data, used) = frame(open).unwrap().unwrap();
        assert_eq!((txnr, command.as_str(), used), (1, "rsp", open.len()));
        let (code, text, offers) = response(&data).unwrap();
        assert_eq!((code, text.as_str()), (200, "OK"));
        assert!(offers.starts_with(b"relp_version=0\n"));
        assert_eq!(
            frame(b"2 rsp 0\n").unwrap().unwrap(),
            (2, "rsp".into(), vec![], 8)
        );
        assert_eq!(
            frame(b"0 serverclose 0\n3 rsp").unwrap().unwrap(),
            (0, "serverclose".into(), vec![], 16)
        );
        let (_, _, data, _) = frame(b"7 rsp 20 500 command disabled\n").unwrap().unwrap();
        assert_eq!(response(&data).unwrap().0, 500);
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let whole = b"12 rsp 6 200 OK\n";
        for cut in 0..whole.len() {
            assert_eq!(frame(&whole[..cut]).unwrap(), None, "{cut}");
        }
        assert!(frame(whole).unwrap().is_some());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &b"x rsp 6 200 OK\n"[..],
            b"1234567890 rsp 0\n",
            b"1  rsp 0\n",
            b"1 r5p 0\n",
            b"1 rsp x\n",
            b"1 rsp 99999999999\n",
            b"1 rsp 6x200 OK\n",
            b"1 rsp 6 200 OKX",
            b"1 rsp 70000 ",
            b"1 abcdefghijklmnopqrstuvwxyzabcdefghij 0\n",
        ] {
            assert!(
                matches!(frame(bad), Err(RelpError::Protocol(_))),
                "{}: {:?}",
                String::from_utf8_lossy(bad),
                frame(bad)
            );
        }
        assert!(matches!(response(b"OK"), Err(RelpError::Protocol(_))));
    }

    #[test]
    fn transaction_numbers_wrap_to_1() {
        assert_eq!(next_txnr(41), 42);
        assert_eq!(next_txnr(MAX_TXNR), 1);
    }
}
