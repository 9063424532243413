//! `http://` and `https://`: each batch is one POST of newline-delimited JSON events (the MSG
//! of each record), e.g. for Logstash's `http` input. A 2xx answer confirms the batch;
//! anything else ends the connection and the batch is sent again after the backoff.

use std::io;

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Duration;

use super::connect::Stream;
use super::{Encoding, End, Session};
use crate::queue::Position;

/// An HTTP(S) receiver's path and the settings of its POSTs.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `Host` header value.
    pub authority: String,
    /// Request path.
    pub path: String,
    /// How the events are written (MSG per line) and their size limit.
    pub encoding: Encoding,
    /// Deadline of one POST and its answer.
    pub write_timeout: Duration,
    /// Bytes per batch at most (sizes the body).
    pub batch_bytes: usize,
}

/// An HTTP/1.1 connection to the receiver.
pub struct HttpSession {
    sender: SendRequest<http_body_util::Full<Bytes>>,
    settings: HttpSettings,
    /// The end of the last batch the receiver accepted, not yet confirmed.
    accepted: Option<Position>,
}

impl HttpSession {
    /// Starts HTTP/1.1 on an open connection.
    ///
    /// # Errors
    /// When the HTTP handshake fails.
    pub async fn open(stream: Stream, settings: HttpSettings) -> Result<Self, End> {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| End::Io(io::Error::other(e)))?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            settings,
            accepted: None,
        })
    }
}

impl Session for HttpSession {
    async fn send(&mut self, records: &[Bytes], end: Position) -> Result<(), End> {
        let mut body = Vec::with_capacity(self.settings.batch_bytes + 1024);
        let count = self.settings.encoding.first_time(end);
        for record in records {
            if let Some(message) = self.settings.encoding.prepare(record, count) {
                self.settings.encoding.encoder.ndjson(&message, &mut body);
            }
        }
        let request = hyper::Request::post(self.settings.path.as_str())
            .header(hyper::header::HOST, self.settings.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| End::Io(io::Error::other(e)))?;
        let response = tokio::time::timeout(
            self.settings.write_timeout,
            self.sender.send_request(request),
        )
        .await
        .map_err(|_| End::WriteTimeout)?
        .map_err(|e| End::Io(io::Error::other(e)))?;
        let status = response.status();
        // Read the answer to the end so the connection can carry the next batch.
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        if !status.is_success() {
            return Err(End::HttpStatus(status.as_u16()));
        }
        // The receiver answered: the batch is delivered, no waiting period needed.
        self.accepted = Some(end);
        Ok(())
    }

    async fn confirmed(&mut self) -> Result<Position, End> {
        match self.accepted.take() {
            Some(position) => Ok(position),
            None => std::future::pending().await,
        }
    }

    async fn close(self) -> Result<Option<Position>, End> {
        Ok(self.accepted)
    }

    async fn abort(self) {}
}
