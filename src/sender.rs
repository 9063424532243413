//! Destination senders: one task per destination reads its queue cursor, frames records and
//! writes them to a TCP or TLS connection (or stdout), reconnecting with capped exponential
//! backoff and jitter.
//!
//! Delivery is confirmed conservatively: a written batch is committed only after it stayed
//! `confirm_after` on a connection that showed no error, close or TLS alert. Syslog
//! receivers never answer, so the read half is watched: a TLS 1.3 receiver that rejects the
//! client certificate, or one that resets the connection, is noticed there and everything not
//! yet committed is sent again on the next connection (at least once, in order).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::config::{DestinationConfig, Endpoint, Format, Framing, Transport};
use crate::metrics::Metrics;
use crate::queue::{Position, Reader};
use crate::syslog::check::parse_strict;
use crate::syslog::convert::{fit, to_rfc3164};
use crate::syslog::frame;
use crate::tls;
use hyper_util::rt::TokioIo;

/// Why a destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The URL is not valid (already checked by the config, kept for library users).
    #[error("destination {name}: {reason}")]
    Url {
        /// Destination name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS settings are unusable.
    #[error("destination {name}: {source}")]
    Tls {
        /// Destination name.
        name: String,
        /// The TLS problem.
        source: tls::TlsError,
    },
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("receiver closed the connection")]
    PeerClosed,
    #[error("connection error: {0}")]
    Io(io::Error),
    #[error("write timed out")]
    WriteTimeout,
    #[error("queue read failed: {0}")]
    Queue(crate::queue::QueueError),
    #[error("receiver answered HTTP {0}")]
    HttpStatus(u16),
}

enum Connector {
    Tcp {
        host: String,
        port: u16,
    },
    Udp {
        host: String,
        port: u16,
    },
    Http {
        host: String,
        port: u16,
        path: String,
        tls: Option<Box<tls::ReloadingClientConfig>>,
        server_name: ServerName<'static>,
    },
    Tls {
        host: String,
        port: u16,
        client: Box<tls::ReloadingClientConfig>,
        server_name: ServerName<'static>,
    },
    Stdout,
}

/// One destination and its delivery loop.
pub struct Destination {
    name: String,
    metrics: Arc<Metrics>,
    labels: Vec<(&'static str, String)>,
    connector: Connector,
    framing: Framing,
    config: DestinationConfig,
    reader: Reader,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

/// The two stop signals of a sender: `drain` asks it to finish once the queue is delivered,
/// `stop` ends it now (after the drain deadline).
#[derive(Debug, Clone)]
pub struct StopSignals {
    /// Deliver what is queued, then stop.
    pub drain: CancellationToken,
    /// Stop now.
    pub stop: CancellationToken,
}

impl Destination {
    /// Prepares a destination; certificate keys on a plain target are ignored with a warning.
    ///
    /// # Errors
    /// [`DestinationError`] when the URL or the TLS files are unusable.
    pub fn new(
        config: &DestinationConfig,
        reader: Reader,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DestinationError> {
        let endpoint = config.endpoint().map_err(|reason| DestinationError::Url {
            name: config.name.clone(),
            reason,
        })?;
        let connector = match endpoint {
            Endpoint::Stdout => Connector::Stdout,
            Endpoint::Network {
                transport: transport @ (Transport::Tcp | Transport::Udp),
                host,
                port,
                ..
            } => {
                warn_ignored_tls_keys(config);
                if transport == Transport::Udp {
                    Connector::Udp { host, port }
                } else {
                    Connector::Tcp { host, port }
                }
            }
            Endpoint::Network {
                transport: transport @ (Transport::Http | Transport::Https),
                host,
                port,
                path,
            } => {
                let tls = if transport == Transport::Https {
                    Some(Box::new(load_client_tls(config)?))
                } else {
                    warn_ignored_tls_keys(config);
                    None
                };
                let server_name = server_name(config, &host)?;
                Connector::Http {
                    host,
                    port,
                    path,
                    tls,
                    server_name,
                }
            }
            Endpoint::Network {
                transport: Transport::Tls,
                host,
                port,
                ..
            } => {
                let client = Box::new(load_client_tls(config)?);
                let server_name = server_name(config, &host)?;
                Connector::Tls {
                    host,
                    port,
                    client,
                    server_name,
                }
            }
        };
        let labels = Metrics::destination(&config.name);
        metrics.destination_backlog.get_or_create(&labels).set(0);
        metrics.destination_up.get_or_create(&labels).set(0);
        Ok(Self {
            name: config.name.clone(),
            metrics,
            labels,
            connector,
            framing: config.framing,
            config: config.clone(),
            reader,
        })
    }

    /// Delivers records until `signals.drain` is cancelled and everything is delivered, or
    /// `signals.stop` is cancelled.
    pub async fn run(mut self, signals: StopSignals) {
        let mut backoff = self.config.backoff_initial;
        loop {
            if signals.stop.is_cancelled()
                || (signals.drain.is_cancelled() && self.reader.caught_up())
            {
                break;
            }
            let started = Instant::now();
            let end = self.connect_and_send(&signals).await;
            self.mark_up(false);
            self.reader.rewind();
            match end {
                Ok(()) => break,
                Err(e) => {
                    if signals.stop.is_cancelled() {
                        break;
                    }
                    // A connection that carried traffic for a while resets the backoff.
                    if started.elapsed() > self.config.backoff_max {
                        backoff = self.config.backoff_initial;
                    }
                    let delay = jitter(backoff);
                    tracing::warn!(destination = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        backlog = self.reader.backlog(), "destination unavailable; will reconnect");
                    tokio::select! {
                        _ = signals.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
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

    async fn connect_and_send(&mut self, signals: &StopSignals) -> Result<(), ConnectionEnd> {
        let timeout = self.config.connect_timeout;
        match &mut self.connector {
            Connector::Stdout => {
                let stdout = tokio::io::stdout();
                self.send_loop(tokio::io::empty(), stdout, signals).await
            }
            Connector::Udp { host, port } => {
                let (host, port) = (host.clone(), *port);
                self.send_datagrams(&host, port, signals).await
            }
            Connector::Http {
                host,
                port,
                path,
                tls,
                server_name,
            } => {
                let connector = tls
                    .as_mut()
                    .map(|t| TlsConnector::from(t.for_next_connection()));
                let (host, port, path, server_name) =
                    (host.clone(), *port, path.clone(), server_name.clone());
                let stream = connect_tcp(&host, port, timeout, signals).await?;
                let authority = format!("{host}:{port}");
                match connector {
                    None => {
                        self.send_http(TokioIo::new(stream), &authority, &path, signals)
                            .await
                    }
                    Some(connector) => {
                        let stream =
                            tokio::time::timeout(timeout, connector.connect(server_name, stream))
                                .await
                                .map_err(|_| ConnectionEnd::ConnectTimeout)?
                                .map_err(|e| {
                                    self.metrics.tls_failure("client", &e);
                                    ConnectionEnd::Connect(e)
                                })?;
                        self.send_http(TokioIo::new(stream), &authority, &path, signals)
                            .await
                    }
                }
            }
            Connector::Tcp { host, port } => {
                let stream = connect_tcp(host, *port, timeout, signals).await?;
                tracing::info!(destination = %self.name, url = %self.config.url, "connected");
                self.mark_up(true);
                let (rd, wr) = stream.into_split();
                self.send_loop(rd, wr, signals).await
            }
            Connector::Tls {
                host,
                port,
                client,
                server_name,
            } => {
                // Certificates rotated on disk are picked up at the next connection.
                let connector = TlsConnector::from(client.for_next_connection());
                let (host, port, server_name) = (host.clone(), *port, server_name.clone());
                let deadline = Instant::now() + timeout;
                let stream = connect_tcp(&host, port, timeout, signals).await?;
                let handshake = connector.connect(server_name, stream);
                let stream = tokio::select! {
                    _ = signals.stop.cancelled() => return Ok(()),
                    r = tokio::time::timeout_at(deadline, handshake) => match r {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            self.metrics.tls_failure("client", &e);
                            return Err(ConnectionEnd::Connect(e));
                        }
                        Err(_) => return Err(ConnectionEnd::ConnectTimeout),
                    },
                };
                tracing::info!(destination = %self.name, url = %self.config.url, "connected (TLS)");
                self.mark_up(true);
                let (rd, wr) = tokio::io::split(stream);
                self.send_loop(rd, wr, signals).await
            }
        }
    }

    /// Writes batches until the connection fails, the drain completes or `stop` fires.
    async fn send_loop<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        signals: &StopSignals,
    ) -> Result<(), ConnectionEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let confirm_after = self.config.confirm_after;
        let watch_peer = !matches!(self.connector, Connector::Stdout);
        let mut pending: VecDeque<(Position, Instant)> = VecDeque::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(self.config.batch_bytes.as_usize() + 1024);
        let mut scratch = [0u8; 512];
        loop {
            let now = Instant::now();
            while let Some(&(position, written)) = pending.front() {
                if now.duration_since(written) < confirm_after {
                    break;
                }
                self.commit(position);
                pending.pop_front();
            }
            if signals.drain.is_cancelled() && self.reader.caught_up() {
                return self.close(rd, wr, pending, watch_peer).await;
            }
            let confirm_at = pending.front().map(|&(_, t)| t + confirm_after);
            tokio::select! {
                biased;
                _ = signals.stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
                    return Ok(());
                }
                end = peer_closed(&mut rd, &mut scratch), if watch_peer => return Err(end),
                _ = tokio::time::sleep_until(confirm_at.unwrap_or(now)), if confirm_at.is_some() => {}
                next = self.reader.next_batch(self.config.batch_bytes.as_usize(), &mut batch) => {
                    let position = next.map_err(ConnectionEnd::Queue)?;
                    buf.clear();
                    for record in batch.drain(..) {
                        match self.config.format {
                            Format::Rfc5424 => frame(self.framing, &record, &mut buf),
                            Format::Rfc3164 => match to_rfc3164(&record) {
                                Some(converted) => frame(self.framing, &converted, &mut buf),
                                None => frame(self.framing, &record, &mut buf),
                            },
                        }
                    }
                    let write = async {
                        wr.write_all(&buf).await?;
                        wr.flush().await
                    };
                    match tokio::time::timeout(self.config.write_timeout, write).await {
                        Ok(Ok(())) => pending.push_back((position, Instant::now())),
                        Ok(Err(e)) => return Err(ConnectionEnd::Io(e)),
                        Err(_) => return Err(ConnectionEnd::WriteTimeout),
                    }
                }
                // Wakes an idle sender when the drain starts, so it can finish.
                _ = signals.drain.cancelled(), if !signals.drain.is_cancelled() => {}
            }
        }
    }

    /// UDP (RFC 5426): one datagram per record, no connection and no acknowledgement, so a
    /// record counts as delivered once the kernel took it. Records above
    /// `max_datagram_bytes` are truncated by the apiserver rule, or dropped and counted.
    async fn send_datagrams(
        &mut self,
        host: &str,
        port: u16,
        signals: &StopSignals,
    ) -> Result<(), ConnectionEnd> {
        let target = tokio::net::lookup_host((host, port))
            .await
            .map_err(ConnectionEnd::Connect)?
            .next()
            .ok_or_else(|| ConnectionEnd::Connect(io::Error::other("no address for the host")))?;
        let local: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(ConnectionEnd::Connect)?;
        socket
            .connect(target)
            .await
            .map_err(ConnectionEnd::Connect)?;
        tracing::info!(destination = %self.name, url = %self.config.url, "sending datagrams");
        self.mark_up(true);
        let max = self.config.max_datagram_bytes.as_usize();
        let mut batch: Vec<Bytes> = Vec::new();
        while let Some(position) = self.next_batch_or_stop(signals, &mut batch).await? {
            for record in batch.drain(..) {
                let converted = match self.config.format {
                    Format::Rfc5424 => None,
                    Format::Rfc3164 => to_rfc3164(&record),
                };
                let message = converted.as_deref().unwrap_or(&record);
                let Some(datagram) = fit(message, max) else {
                    tracing::error!(destination = %self.name, bytes = message.len(), "record above max_datagram_bytes even after truncation; dropped");
                    self.metrics
                        .events_dropped
                        .get_or_create(&vec![("reason", "datagram_too_large".to_owned())])
                        .inc();
                    continue;
                };
                match socket.send(&datagram).await {
                    Ok(_) => {}
                    // An ICMP "port unreachable" from an earlier datagram; UDP cannot tell more.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::debug!(destination = %self.name, "receiver port unreachable");
                    }
                    Err(e) => return Err(ConnectionEnd::Io(e)),
                }
            }
            self.commit(position);
        }
        Ok(())
    }

    /// HTTP(S): each batch is one POST of newline-delimited JSON events (the MSG of each
    /// record), e.g. for Logstash's `http` input. A 2xx answer confirms the batch; anything
    /// else ends the connection and the batch is sent again after the backoff.
    async fn send_http<I>(
        &mut self,
        io: I,
        authority: &str,
        path: &str,
        signals: &StopSignals,
    ) -> Result<(), ConnectionEnd>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ConnectionEnd::Io(io::Error::other(e)))?;
        tokio::spawn(connection);
        tracing::info!(destination = %self.name, url = %self.config.url, "connected (HTTP)");
        self.mark_up(true);
        let mut batch: Vec<Bytes> = Vec::new();
        while let Some(position) = self.next_batch_or_stop(signals, &mut batch).await? {
            let mut body = Vec::with_capacity(self.config.batch_bytes.as_usize() + 1024);
            for record in batch.drain(..) {
                let msg = parse_strict(&record).map(|m| m.msg).unwrap_or(&record[..]);
                body.extend_from_slice(msg);
                body.push(b'\n');
            }
            let request = hyper::Request::post(path)
                .header(hyper::header::HOST, authority)
                .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .map_err(|e| ConnectionEnd::Io(io::Error::other(e)))?;
            let response =
                tokio::time::timeout(self.config.write_timeout, sender.send_request(request))
                    .await
                    .map_err(|_| ConnectionEnd::WriteTimeout)?
                    .map_err(|e| ConnectionEnd::Io(io::Error::other(e)))?;
            let status = response.status();
            // Read the answer to the end so the connection can carry the next batch.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            if !status.is_success() {
                return Err(ConnectionEnd::HttpStatus(status.as_u16()));
            }
            // The receiver answered: the batch is delivered, no waiting period needed.
            self.commit(position);
        }
        Ok(())
    }

    /// Waits for the next batch of records. `Ok(None)` means stop: the stop signal fired, or
    /// a drain is under way and everything is delivered.
    async fn next_batch_or_stop(
        &mut self,
        signals: &StopSignals,
        batch: &mut Vec<Bytes>,
    ) -> Result<Option<Position>, ConnectionEnd> {
        loop {
            if signals.drain.is_cancelled() && self.reader.caught_up() {
                return Ok(None);
            }
            return tokio::select! {
                biased;
                _ = signals.stop.cancelled() => Ok(None),
                // Wakes an idle sender when the drain starts, so it can finish.
                _ = signals.drain.cancelled(), if !signals.drain.is_cancelled() => continue,
                next = self.reader.next_batch(self.config.batch_bytes.as_usize(), batch) => {
                    next.map(Some).map_err(ConnectionEnd::Queue)
                }
            };
        }
    }

    /// Sets `kar_destination_up` for this destination.
    fn mark_up(&self, up: bool) {
        self.metrics
            .destination_up
            .get_or_create(&self.labels)
            .set(i64::from(up));
    }

    /// Confirms delivery up to `position` and counts it.
    fn commit(&mut self, position: Position) {
        let before = self.reader.backlog();
        self.reader.commit(position);
        let after = self.reader.backlog();
        self.metrics
            .events_sent
            .get_or_create(&self.labels)
            .inc_by(before.saturating_sub(after));
        self.metrics
            .destination_backlog
            .get_or_create(&self.labels)
            .set(i64::try_from(after).unwrap_or(i64::MAX));
    }

    /// Orderly end after a drain: close_notify / FIN, wait briefly for the receiver's close so
    /// that a late rejection is still seen, then commit what was written.
    async fn close<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        pending: VecDeque<(Position, Instant)>,
        watch_peer: bool,
    ) -> Result<(), ConnectionEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        wr.shutdown().await.map_err(ConnectionEnd::Io)?;
        if watch_peer && !pending.is_empty() {
            let mut scratch = [0u8; 512];
            let wait = self.config.confirm_after.max(Duration::from_millis(100));
            match tokio::time::timeout(wait, peer_closed(&mut rd, &mut scratch)).await {
                Ok(ConnectionEnd::PeerClosed) | Err(_) => {}
                Ok(other) => return Err(other),
            }
        }
        if let Some(&(position, _)) = pending.back() {
            self.commit(position);
        }
        Ok(())
    }
}

/// The client TLS configuration of a `tls://` or `https://` destination.
fn load_client_tls(
    config: &DestinationConfig,
) -> Result<tls::ReloadingClientConfig, DestinationError> {
    tls::ReloadingClientConfig::load(config).map_err(|source| DestinationError::Tls {
        name: config.name.clone(),
        source,
    })
}

/// SNI and verification name: `server_name`, else the URL host.
fn server_name(
    config: &DestinationConfig,
    host: &str,
) -> Result<ServerName<'static>, DestinationError> {
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| host.to_owned());
    ServerName::try_from(name).map_err(|e| DestinationError::Url {
        name: config.name.clone(),
        reason: format!("invalid server name: {e}"),
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

/// Completes when the receiver closes the connection or it fails; data it sends is ignored.
async fn peer_closed<R: AsyncRead + Unpin>(rd: &mut R, scratch: &mut [u8]) -> ConnectionEnd {
    loop {
        match rd.read(scratch).await {
            Ok(0) => return ConnectionEnd::PeerClosed,
            Ok(_) => {}
            Err(e) => return ConnectionEnd::Io(e),
        }
    }
}

async fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
    signals: &StopSignals,
) -> Result<TcpStream, ConnectionEnd> {
    let connect = tokio::time::timeout(timeout, TcpStream::connect((host, port)));
    let stream = tokio::select! {
        _ = signals.stop.cancelled() => return Err(ConnectionEnd::Connect(io::Error::other("stopping"))),
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectionEnd::Connect(e)),
            Err(_) => return Err(ConnectionEnd::ConnectTimeout),
        },
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `base` scaled by a random factor in [0.5, 1.5), so that many relays do not reconnect in step.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + fastrand::f64())
}
