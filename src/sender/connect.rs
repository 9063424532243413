//! One way to open a connection to a receiver: TCP connect and, for TLS destinations, the
//! handshake, together under one `connect_timeout` deadline and abandoned at once when the
//! sender is told to stop. `tls://` and `https://` use it alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::tls::{self, ReloadingClientConfig};

/// Why no connection was opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The stop signal fired first.
    #[error("stopping")]
    Stopped,
    /// TCP connect and TLS handshake did not finish within `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The TCP connection failed.
    #[error("connect failed: {0}")]
    Tcp(#[source] io::Error),
    /// The TLS handshake failed (the receiver's certificate was refused, or ours).
    #[error("TLS handshake failed ({}): {}", tls::failure_reason(.0), tls::describe(.0))]
    Tls(#[source] io::Error),
}

/// The client TLS of a destination: its (reloading) configuration and the name it verifies.
#[derive(Debug)]
pub struct ClientTls {
    /// Certificates, reloaded at each new connection when their files changed.
    pub config: ReloadingClientConfig,
    /// SNI and verification name.
    pub server_name: ServerName<'static>,
}

/// Opens connections to one receiver.
#[derive(Debug)]
pub struct Connector {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<ClientTls>,
}

impl Connector {
    /// A connector to `host:port`, with TLS when `tls` is given.
    pub fn new(host: String, port: u16, timeout: Duration, tls: Option<ClientTls>) -> Self {
        Self {
            host,
            port,
            timeout,
            tls,
        }
    }

    /// `host:port`, as HTTP's `Host` header wants it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Connects (and handshakes) within the deadline, or gives up when `stop` fires.
    ///
    /// # Errors
    /// [`ConnectError`].
    pub async fn connect(&mut self, stop: &CancellationToken) -> Result<Stream, ConnectError> {
        let deadline = Instant::now() + self.timeout;
        // Certificates rotated on disk are picked up here, at each new connection.
        let tls = self.tls.as_mut().map(|t| {
            (
                TlsConnector::from(t.config.for_next_connection()),
                t.server_name.clone(),
            )
        });
        let (host, port) = (self.host.as_str(), self.port);
        let connect = async move {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name, tcp)
                    .await
                    .map(|s| Stream::Tls(Box::new(s)))
                    .map_err(ConnectError::Tls),
            }
        };
        tokio::select! {
            _ = stop.cancelled() => Err(ConnectError::Stopped),
            r = tokio::time::timeout_at(deadline, connect) => r.unwrap_or(Err(ConnectError::Timeout)),
        }
    }
}

/// A connection to a receiver, plain or TLS (one type, so transports need not care).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_deadline_covers_connect_and_handshake_and_stop_wins() {
        // A listener that accepts and never answers: the TLS handshake stalls.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let files = crate::tls::ClientTlsFiles {
            label: "test".into(),
            ca: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt").into()),
            identity: None,
            pin: None,
        };
        let tls = || ClientTls {
            config: ReloadingClientConfig::load(files.clone()).unwrap(),
            server_name: ServerName::try_from("localhost").unwrap(),
        };
        let mut c = Connector::new(
            "127.0.0.1".into(),
            port,
            Duration::from_millis(200),
            Some(tls()),
        );
        let err = c.connect(&CancellationToken::new()).await.unwrap_err();
        assert!(matches!(err, ConnectError::Timeout), "{err}");

        let stop = CancellationToken::new();
        let mut c = Connector::new(
            "127.0.0.1".into(),
            port,
            Duration::from_secs(60),
            Some(tls()),
        );
        let stopper = stop.clone();
        tokio::spawn(async move { stopper.cancel() });
        let err = c.connect(&stop).await.unwrap_err();
        assert!(matches!(err, ConnectError::Stopped), "{err}");
        drop(silent);
    }
}
