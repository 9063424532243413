//! Destination senders: one task per destination reads its queue cursor and delivers the
//! records through its transport, reconnecting with capped exponential backoff and jitter.
//!
//! Every transport follows one shape, `Session`: wait for records, send them, wait for the
//! transport's confirmation, commit the cursor. What confirms a batch is the transport's own
//! business ([`stream`]: a quiet `confirm_after` on a watched connection; [`udp`]: the kernel
//! took it; [`http`]: a 2xx), so that the cursor advances only over what the receiver is known
//! to have. After a lost connection the reader rewinds to the last commit: delivery is at
//! least once, and in order, per destination. Adding a transport means one file with a
//! `Session` and one arm of `Transport`.

pub mod connect;
pub mod http;
pub mod relp;
pub mod route;
pub mod stream;
pub mod udp;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationConfig, Endpoint, Name, Scheme};
use crate::metrics::{DestinationMetrics, Metrics, Side};
use crate::queue::{Position, QueueError, Reader};
use crate::syslog::Encoder;
use crate::syslog::convert::audit_id;
use crate::syslog::encode::Prepared;
use crate::tls::{self, ClientTlsFiles, ReloadingClientConfig};
use connect::{ClientTls, ConnectError, Connector};
use route::Route;
use stream::{NetworkSession, StdoutSession, StreamSettings};

/// Why a destination cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("destination {name}: {source}")]
pub struct DestinationError {
    /// Destination name.
    pub name: Name,
    /// The TLS problem.
    #[source]
    pub source: tls::TlsError,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The receiver closed the connection.
    #[error("receiver closed the connection")]
    PeerClosed,
    /// Reading or writing failed (including a TLS alert from the receiver).
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// A batch write did not finish within `write_timeout`.
    #[error("write timed out")]
    WriteTimeout,
    /// The queue could not be read.
    #[error("queue read failed: {0}")]
    Queue(#[source] QueueError),
    /// An HTTP receiver refused a batch.
    #[error("receiver answered HTTP {0}")]
    HttpStatus(u16),
    /// The RELP receiver refused a message, closed the session or broke the protocol.
    #[error("RELP: {0}")]
    Relp(#[from] relp::RelpError),
}

/// A destination's encoder, with what it needs to count and log the records it cuts or drops.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Format, framing, size limit.
    pub encoder: Encoder,
    /// The destination, for log lines.
    pub name: Name,
    /// Where cuts and drops are counted.
    pub gauges: DestinationMetrics,
    /// The queue position up to which batches were prepared before: a batch sent again after
    /// a reconnect is not counted (or logged) twice. Shared by the destination's sessions.
    prepared_through: Arc<std::sync::atomic::AtomicU64>,
    /// Records dropped for the size limit so far (each once): the destination's cursor
    /// passes them, but they are not counted as sent.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Encoding {
    /// An encoding for destination `name`.
    pub fn new(encoder: Encoder, name: Name, gauges: DestinationMetrics) -> Self {
        Self {
            encoder,
            name,
            gauges,
            prepared_through: Arc::default(),
            dropped: Arc::default(),
        }
    }

    /// Whether a batch ending at `end` is sent for the first time (and so counted).
    pub fn first_time(&self, end: Position) -> bool {
        self.prepared_through
            .fetch_max(end.seq, std::sync::atomic::Ordering::Relaxed)
            < end.seq
    }

    /// The record ready for this destination, or `None` when it does not fit (counted, and
    /// its auditID logged, when `count`).
    pub fn prepare<'a>(&self, record: &'a [u8], count: bool) -> Option<Cow<'a, [u8]>> {
        match self.encoder.prepare(record) {
            Prepared::Whole(message) => Some(message),
            Prepared::Truncated(short) => {
                if count {
                    self.gauges.truncated();
                }
                Some(Cow::Owned(short))
            }
            Prepared::Dropped => {
                if count {
                    self.gauges.too_large();
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(destination = %self.name, audit_id = audit_id(record).unwrap_or("?"), bytes = record.len(),
                        "event not sent to this destination: above its max_message_bytes");
                }
                None
            }
        }
    }
}

/// One connection's worth of delivery, as every transport provides it.
///
/// `send` writes a batch; the batch counts as delivered only when `confirmed` yields its end
/// position. `confirmed` waits (forever when nothing is pending) and fails when the
/// connection shows an error; it must be cancel safe, as it runs inside `select!`.
pub(crate) trait Session {
    /// Writes one batch whose last record ends at `end`.
    async fn send(&mut self, records: &[Bytes], end: Position) -> Result<(), End>;
    /// The end of the next batch the receiver is known to have.
    async fn confirmed(&mut self) -> Result<Position, End>;
    /// How many more records may be sent before earlier ones are confirmed (a window).
    fn room(&self) -> usize {
        usize::MAX
    }
    /// Tells the session whether the queue is short of memory for records awaiting
    /// confirmation ([`crate::queue::Reader::pressed`]); transports whose receiver answers
    /// ignore it.
    fn press(&mut self, _pressed: bool) {}
    /// Orderly end once everything is sent (drain): the position to commit last, if any.
    async fn close(self) -> Result<Option<Position>, End>;
    /// Ends at once (stop after the drain deadline); nothing more is confirmed.
    async fn abort(self);
}

/// How a destination reaches its receiver: one arm per transport.
#[derive(Debug)]
enum Transport {
    /// `tcp://`, `tls://`, `stdout`.
    Stream(stream::Target, StreamSettings),
    /// `udp://`.
    Udp(udp::Target),
    /// `http://`, `https://`.
    Http(Connector, http::HttpSettings),
    /// `relp://`, `relp+tls://`.
    Relp(Connector, relp::RelpSettings),
}

/// The two stop signals of a sender: `drain` asks it to finish once the queue is delivered,
/// `stop` ends it now (after the drain deadline).
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Deliver what is queued, then stop.
    pub drain: CancellationToken,
    /// Stop now.
    pub stop: CancellationToken,
}

/// The settings of the delivery loop itself.
#[derive(Debug, Clone, Copy)]
struct Retry {
    backoff_initial: Duration,
    backoff_max: Duration,
    batch_bytes: usize,
}

/// One destination and its delivery loop.
#[derive(Debug)]
pub struct Destination {
    name: Name,
    url: Endpoint,
    metrics: Arc<Metrics>,
    gauges: DestinationMetrics,
    transport: Transport,
    retry: Retry,
    reader: Reader,
    /// `[[destination.filter]]`, when the destination has rules.
    route: Option<Route>,
    /// Records routed away per batch read and not yet committed, `(end seq, count)`: they
    /// are skipped, not sent, and so not counted in `sent`.
    routed: VecDeque<(u64, u64)>,
    /// Highest position whose routed-away records were counted (a batch read again after a
    /// reconnect is not counted twice).
    routed_through: u64,
    /// The encoding's count of records dropped for the size limit, and how much of it
    /// commits have taken out of `sent` so far.
    dropped: Arc<std::sync::atomic::AtomicU64>,
    dropped_seen: u64,
}

impl Destination {
    /// Prepares a destination; certificate keys on a plain target are ignored with a warning.
    ///
    /// # Errors
    /// [`DestinationError`] when the TLS files are unusable.
    pub fn new(
        config: &DestinationConfig,
        syslog_max: crate::config::ByteSize,
        reader: Reader,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DestinationError> {
        let gauges = metrics.destination(&config.name);
        let max_message = config.max_message_bytes.unwrap_or(syslog_max).as_usize();
        let encoding = Encoding::new(
            Encoder::new(config.format, config.framing, max_message, config.oversize)
                .with_syslog_header(
                    config
                        .syslog_header
                        .unwrap_or(config.format != crate::config::Format::Ocsf),
                ),
            config.name.clone(),
            gauges.clone(),
        );
        let dropped = encoding.dropped.clone();
        let batch_bytes = config.batch_bytes.as_usize();
        let transport = match &config.url {
            Endpoint::Stdout => Transport::Stream(
                stream::Target::Stdout,
                stream_settings(config, encoding, batch_bytes),
            ),
            Endpoint::Network {
                scheme,
                host,
                port,
                path,
            } => {
                let tls = if scheme.is_tls() {
                    let files = ClientTlsFiles::of(config);
                    let reloading =
                        ReloadingClientConfig::load(files).map_err(|source| DestinationError {
                            name: config.name.clone(),
                            source,
                        })?;
                    let server_name = match &config.server_name {
                        Some(name) => name.clone(),
                        None => host_name(host).map_err(|source| DestinationError {
                            name: config.name.clone(),
                            source,
                        })?,
                    };
                    Some(ClientTls {
                        config: reloading,
                        server_name,
                    })
                } else {
                    warn_ignored_tls_keys(config);
                    None
                };
                let connector = Connector::new(host.clone(), *port, config.connect_timeout, tls);
                match scheme {
                    Scheme::Tcp | Scheme::Tls => Transport::Stream(
                        stream::Target::Network(connector),
                        stream_settings(config, encoding, batch_bytes),
                    ),
                    Scheme::Udp => Transport::Udp(udp::Target {
                        host: host.clone(),
                        port: *port,
                        encoding: Encoding {
                            encoder: encoding
                                .encoder
                                .with_max(config.max_datagram_bytes.as_usize()),
                            ..encoding.clone()
                        },
                    }),
                    Scheme::Http | Scheme::Https => {
                        let settings = http::HttpSettings {
                            authority: connector.authority(),
                            path: path.clone(),
                            encoding,
                            write_timeout: config.write_timeout,
                            batch_bytes,
                        };
                        Transport::Http(connector, settings)
                    }
                    Scheme::Relp | Scheme::RelpTls => {
                        let settings = relp::RelpSettings {
                            encoding,
                            window: config.relp_window,
                            ack_timeout: config.relp_ack_timeout,
                            write_timeout: config.write_timeout,
                            batch_bytes,
                        };
                        Transport::Relp(connector, settings)
                    }
                }
            }
        };
        gauges.set_backlog(reader.backlog());
        Ok(Self {
            name: config.name.clone(),
            url: config.url.clone(),
            gauges,
            metrics,
            transport,
            retry: Retry {
                backoff_initial: config.backoff_initial,
                backoff_max: config.backoff_max,
                batch_bytes,
            },
            reader,
            route: Route::new(&config.filter),
            routed: VecDeque::new(),
            routed_through: 0,
            dropped,
            dropped_seen: 0,
        })
    }

    /// Delivers records until `signals.drain` is cancelled and everything is delivered, or
    /// `signals.stop` is cancelled.
    pub async fn run(mut self, signals: StopSignals) {
        let mut backoff = self.retry.backoff_initial;
        loop {
            if signals.stop.is_cancelled()
                || (signals.drain.is_cancelled() && self.reader.caught_up())
            {
                break;
            }
            let started = Instant::now();
            let end = self.connect_and_deliver(&signals).await;
            self.gauges.set_up(false);
            self.reader.rewind();
            match end {
                Ok(()) => break,
                Err(e) => {
                    if signals.stop.is_cancelled() {
                        break;
                    }
                    // A connection that carried traffic for a while resets the backoff.
                    if started.elapsed() > self.retry.backoff_max {
                        backoff = self.retry.backoff_initial;
                    }
                    let delay = jitter(backoff);
                    tracing::warn!(destination = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        backlog = self.reader.backlog(), "destination unavailable; will reconnect");
                    tokio::select! {
                        _ = signals.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(self.retry.backoff_max);
                }
            }
        }
        let backlog = self.reader.backlog();
        if backlog > 0 {
            tracing::warn!(destination = %self.name, records = backlog, "stopped with undelivered records; they stay queued");
        } else {
            tracing::info!(destination = %self.name, "destination drained");
        }
    }

    /// Opens a session on the transport and delivers through it until it ends.
    async fn connect_and_deliver(&mut self, signals: &StopSignals) -> Result<(), End> {
        match &self.transport {
            Transport::Stream(stream::Target::Stdout, settings) => {
                let session = StdoutSession::stdout(settings.clone());
                self.deliver(session, signals).await
            }
            Transport::Stream(stream::Target::Network(_), settings) => {
                let settings = settings.clone();
                let stream = self.connect(signals).await?;
                let tls = if stream.is_tls() { " (TLS)" } else { "" };
                tracing::info!(destination = %self.name, url = %self.url, "connected{tls}");
                self.deliver(NetworkSession::network(stream, settings), signals)
                    .await
            }
            Transport::Relp(_, settings) => {
                let settings = settings.clone();
                let stream = self.connect(signals).await?;
                let tls = if stream.is_tls() {
                    " (RELP over TLS)"
                } else {
                    " (RELP)"
                };
                let session = relp::RelpSession::open(stream, settings).await?;
                tracing::info!(destination = %self.name, url = %self.url, "connected{tls}");
                self.deliver(session, signals).await
            }
            Transport::Udp(target) => {
                let session = target.open().await?;
                tracing::info!(destination = %self.name, url = %self.url, "sending datagrams");
                self.deliver(session, signals).await
            }
            Transport::Http(_, settings) => {
                let settings = settings.clone();
                let stream = self.connect(signals).await?;
                let session = http::HttpSession::open(stream, settings).await?;
                tracing::info!(destination = %self.name, url = %self.url, "connected (HTTP)");
                self.deliver(session, signals).await
            }
        }
    }

    /// Connects the transport's connector, counting refused TLS handshakes.
    async fn connect(&mut self, signals: &StopSignals) -> Result<connect::Stream, End> {
        let connector: &mut Connector = match &mut self.transport {
            Transport::Stream(stream::Target::Network(c), _) => c,
            Transport::Http(c, _) | Transport::Relp(c, _) => c,
            _ => return Err(End::Io(io::Error::other("transport has no connector"))),
        };
        connector.connect(&signals.stop).await.map_err(|e| {
            if let ConnectError::Tls(io) = &e {
                self.metrics
                    .tls_failure(Side::Client, tls::failure_reason(io));
            }
            End::Connect(e)
        })
    }

    /// The shape every transport shares: wait for records, send, confirm, commit.
    async fn deliver<S: Session>(
        &mut self,
        mut session: S,
        signals: &StopSignals,
    ) -> Result<(), End> {
        self.gauges.set_up(true);
        let mut batch: Vec<Bytes> = Vec::new();
        // Ends of batches sent on this session and not yet confirmed, and the end of the
        // latest batch routing left empty: it is committed once nothing before it is
        // outstanding (at once, when nothing is).
        let mut outstanding: VecDeque<Position> = VecDeque::new();
        let mut skipped: Option<Position> = None;
        self.routed.clear();
        loop {
            if signals.drain.is_cancelled() && self.reader.caught_up() {
                if let Some(last) = session.close().await? {
                    self.commit(last);
                }
                if let Some(end) = skipped {
                    self.commit(end);
                }
                return Ok(());
            }
            let room = session.room();
            session.press(self.reader.pressed());
            tokio::select! {
                biased;
                _ = signals.stop.cancelled() => {
                    session.abort().await;
                    return Ok(());
                }
                confirmed = session.confirmed() => {
                    let position = confirmed?;
                    self.commit(position);
                    while outstanding.front().is_some_and(|e| *e <= position) {
                        outstanding.pop_front();
                    }
                    if outstanding.is_empty() && let Some(end) = skipped.take() {
                        self.commit(end);
                    }
                }
                next = self.reader.next_batch(self.retry.batch_bytes, room, &mut batch), if room > 0 => {
                    let end = next.map_err(End::Queue)?;
                    self.route(&mut batch, end);
                    if batch.is_empty() {
                        if outstanding.is_empty() {
                            self.commit(end);
                        } else {
                            skipped = Some(end);
                        }
                        continue;
                    }
                    let sent = session.send(&batch, end).await;
                    batch.clear();
                    sent?;
                    // Its confirmation covers any skipped batch before it.
                    skipped = None;
                    outstanding.push_back(end);
                }
                // Wakes an idle sender when the drain starts, so it can finish.
                _ = signals.drain.cancelled(), if !signals.drain.is_cancelled() => {}
            }
        }
    }

    /// Drops from `batch` (ending at `end`) what this destination's rules route away,
    /// counting them once.
    fn route(&mut self, batch: &mut Vec<Bytes>, end: Position) {
        let Some(route) = &self.route else {
            return;
        };
        let before = batch.len();
        batch.retain(|record| route.wants(record));
        let away = (before - batch.len()) as u64;
        if away > 0 {
            self.routed.push_back((end.seq, away));
            if end.seq > self.routed_through {
                self.gauges.routed_away(away);
            }
        }
        self.routed_through = self.routed_through.max(end.seq);
    }

    /// Confirms delivery up to `position` and counts it (records routed away are not sent).
    fn commit(&mut self, position: Position) {
        let before = self.reader.backlog();
        self.reader.commit(position);
        let after = self.reader.backlog();
        let mut away = 0;
        while let Some(&(end, n)) = self.routed.front() {
            if end > position.seq {
                break;
            }
            away += n;
            self.routed.pop_front();
        }
        let passed = before.saturating_sub(after).saturating_sub(away);
        // Records dropped for the size limit were passed, not sent. A drop is counted when
        // its batch is prepared, before the commit that passes it, so the total is exact
        // once that commit comes.
        let dropped = self
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.dropped_seen)
            .min(passed);
        self.dropped_seen += dropped;
        self.gauges.sent(passed - dropped);
        self.gauges.set_backlog(after);
    }
}

fn stream_settings(
    config: &DestinationConfig,
    encoding: Encoding,
    batch_bytes: usize,
) -> StreamSettings {
    StreamSettings {
        encoding,
        confirm_after: config.confirm_after,
        write_timeout: config.write_timeout,
        batch_bytes,
    }
}

/// The URL host as a TLS server name (SNI and verification).
fn host_name(host: &str) -> Result<rustls_pki_types::ServerName<'static>, tls::TlsError> {
    rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| tls::TlsError::ServerName {
        name: host.to_owned(),
        reason: e.to_string(),
    })
}

/// A plain destination (`tcp://`, `udp://`, `http://`) starts with certificate keys set,
/// and says once which ones it ignores.
fn warn_ignored_tls_keys(config: &DestinationConfig) {
    let ignored = config.tls_keys_set();
    if !ignored.is_empty() {
        tracing::warn!(destination = %config.name, url = %config.url, ignored = ?ignored,
            "plain destination: certificate settings are ignored and events are sent in clear");
    }
}

/// `base` scaled by a random factor in [0.5, 1.5), so that many relays do not reconnect in step.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + fastrand::f64())
}
