//! The audit webhook: one HTTP route that accepts `EventList` batches.
//!
//! HTTP concerns only: method, path, bearer token, content type and size are checked, the body
//! is read within `listen.request_timeout`, the [`Pipeline`] turns it into records and the
//! queue stores them. The answer is 200 only when every record of the batch is stored; the
//! status of every refusal is chosen in [`WebhookError::status`].
//!
//! A refusal must reach the client. An HTTP/2 client, or an HTTP/1.1 client that did not wait
//! for `100 Continue`, is still sending its body when the answer leaves; closing the stream
//! or the connection then makes the client lose the answer (curl reports a reset, and the
//! apiserver only a transport error). So the rest of a refused body is read and thrown away
//! in the background, up to `listen.discard_body_bytes` and `listen.discard_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HeaderValue, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::time::{Instant, timeout_at};

use crate::audit::AuditError;
use crate::config::ListenConfig;
use crate::metrics::{EventOutcome, Metrics};
use crate::pipeline::{Batch, BatchSummary, Pipeline};
use crate::queue::{Queue, QueueError};
use crate::syslog::timestamp;

/// Why a request was not answered 200.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Another path than `listen.path`.
    #[error("not found: batches go to {0}")]
    NotFound(String),
    /// Another method than POST.
    #[error("method {0} not allowed: use POST")]
    MethodNotAllowed(Method),
    /// `listen.token_file` is set and the request lacks that bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The client certificate matches none of `listen.allowed_client_names`.
    #[error("client certificate ({0}) is not in listen.allowed_client_names")]
    Forbidden(String),
    /// Not `application/json`.
    #[error("unsupported content type `{0}`: send application/json")]
    UnsupportedMediaType(String),
    /// Body above `listen.max_body_bytes`.
    #[error(
        "body larger than listen.max_body_bytes ({0} bytes); set --audit-webhook-truncate-enabled on the apiserver or raise the limit"
    )]
    TooLarge(usize),
    /// Not an EventList, or an item without `auditID`/`stage`.
    #[error("{0}")]
    BadBatch(#[from] AuditError),
    /// The client stopped sending or the connection broke mid-body.
    #[error("cannot read body: {0}")]
    BodyRead(#[source] hyper::Error),
    /// The body did not arrive within `listen.request_timeout`.
    #[error("body not received within listen.request_timeout")]
    BodyTimeout,
    /// The queue refused the batch (full, disk error, shutting down).
    #[error("cannot store the batch now: {0}")]
    Unavailable(#[from] QueueError),
    /// Other requests' rendering filled `listen.max_rendering_bytes` until
    /// `listen.request_timeout`.
    #[error(
        "cannot take the batch now: other requests filled listen.max_rendering_bytes until listen.request_timeout"
    )]
    Busy,
    /// The queue did not confirm within `listen.request_timeout`.
    #[error("cannot store the batch now: the queue did not confirm within listen.request_timeout")]
    StoreTimeout,
}

impl WebhookError {
    /// The HTTP status for this error: the one place where it is chosen.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBatch(_) | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::StoreTimeout | Self::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Whether the connection's client may post, as the listener found after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Plain HTTP, no allow-list, or a certificate the allow-list names.
    Allowed,
    /// A certificate the allow-list does not name; the names it presented.
    Refused(String),
}

/// How much of a refused body is read and thrown away.
#[derive(Debug, Clone, Copy)]
struct DiscardLimits {
    bytes: u64,
    time: Duration,
}

/// Settings and shared state of the webhook route.
#[derive(Debug)]
pub struct Webhook {
    path: String,
    max_body_bytes: usize,
    request_timeout: Duration,
    /// `listen.max_rendering_bytes`, in KiB permits; `rendering_cap` is all of them.
    rendering: tokio::sync::Semaphore,
    rendering_cap: u32,
    retry_after: HeaderValue,
    discard: DiscardLimits,
    pipeline: Pipeline,
    queue: Queue,
    metrics: Arc<Metrics>,
    /// Expected `Authorization` header value (`Bearer TOKEN`), when a token is configured.
    authorization: Option<Vec<u8>>,
}

/// `bytes` in whole KiB, as semaphore permits.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// A request body not read to its end, to be discarded after the answer.
struct Unread {
    body: Incoming,
    /// Nothing of it was read yet.
    untouched: bool,
}

impl Webhook {
    /// Builds the route. `token` is the bearer token requests must carry, if any.
    pub fn new(
        listen: &ListenConfig,
        pipeline: Pipeline,
        queue: Queue,
        metrics: Arc<Metrics>,
        token: Option<&str>,
    ) -> Self {
        let rendering_cap = kib(listen.max_rendering_bytes.as_usize()).max(1);
        Self {
            path: listen.path.as_str().to_owned(),
            max_body_bytes: listen.max_body_bytes.as_usize(),
            request_timeout: listen.request_timeout,
            rendering: tokio::sync::Semaphore::new(rendering_cap as usize),
            rendering_cap,
            retry_after: HeaderValue::from(listen.retry_after_seconds),
            discard: DiscardLimits {
                bytes: listen.discard_body_bytes.0,
                time: listen.discard_timeout,
            },
            pipeline,
            queue,
            metrics,
            authorization: token.map(|t| format!("Bearer {}", t.trim()).into_bytes()),
        }
    }

    /// Answers one request; never fails, never panics on input.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        access: &Access,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let mut unread = Some(Unread {
            body,
            untouched: true,
        });
        let result = match access {
            Access::Allowed => self.accept(&parts, &mut unread).await,
            Access::Refused(names) => Err(WebhookError::Forbidden(names.clone())),
        };
        let response = match result {
            Ok(summary) => {
                self.count(&summary);
                Response::new(Full::new(Bytes::new()))
            }
            Err(err) => {
                let status = err.status();
                if status.is_server_error() {
                    tracing::warn!(status = status.as_u16(), error = %err, "batch refused; the apiserver will retry");
                } else {
                    tracing::info!(status = status.as_u16(), method = %parts.method, error = %err, "request rejected");
                }
                if let Some(unread) = unread {
                    self.discard(&parts, unread);
                }
                self.error_response(&err)
            }
        };
        self.metrics
            .request_answered(response.status().as_u16(), started.elapsed().as_secs_f64());
        response
    }

    fn count(&self, summary: &BatchSummary) {
        tracing::debug!(?summary, "batch stored");
        let m = &self.metrics;
        m.events(EventOutcome::Received, summary.items as u64);
        m.events(EventOutcome::Deduplicated, summary.duplicates as u64);
        m.events(EventOutcome::Truncated, summary.truncated as u64);
        m.events(EventOutcome::Filtered, summary.filtered as u64);
        m.events(EventOutcome::Redacted, summary.redacted as u64);
        m.dropped("too_large", summary.too_large as u64);
    }

    /// Reads the rest of a refused body in the background so that the answer reaches the
    /// client (see the module documentation). An HTTP/1.1 client that asked for
    /// `100 Continue` and got none does not send its body: reading it would only invite it.
    fn discard(&self, parts: &Parts, unread: Unread) {
        let Unread {
            mut body,
            untouched,
        } = unread;
        if body.is_end_stream() {
            return;
        }
        let waits_for_continue = parts.version <= Version::HTTP_11
            && parts
                .headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if untouched && waits_for_continue {
            return;
        }
        let limits = self.discard;
        let http2 = parts.version == Version::HTTP_2;
        tokio::spawn(async move {
            let deadline = Instant::now() + limits.time;
            let mut left = limits.bytes;
            let drained = timeout_at(deadline, async {
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match left.checked_sub(n) {
                        Some(rest) => left = rest,
                        None => return false,
                    }
                }
                true
            })
            .await;
            // Past the byte bound an HTTP/2 stream is reset when the body is dropped. Reset
            // at once, right behind the answer, and curl reports no status at all; so the
            // stream stays open (unread) until the time bound. An HTTP/1.1 connection is
            // closed at once instead, with a lingering close that keeps the answer safe.
            if drained == Ok(false) && http2 {
                tokio::time::sleep_until(deadline).await;
            }
            drop(body);
        });
    }

    fn error_response(&self, err: &WebhookError) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!("{err}\n"))));
        *response.status_mut() = err.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match err {
            WebhookError::MethodNotAllowed(_) => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            WebhookError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Every 503 says when to come back; which errors are 503 is `status`'s choice.
            _ if err.status() == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(RETRY_AFTER, self.retry_after.clone());
            }
            _ => {}
        }
        response
    }

    /// Checks the request, reads the body and stores the batch. `unread` keeps the body while
    /// it is not read to its end, so that a refusal can discard the rest.
    async fn accept(
        &self,
        parts: &Parts,
        unread: &mut Option<Unread>,
    ) -> Result<BatchSummary, WebhookError> {
        let deadline = Instant::now() + self.request_timeout;
        if parts.uri.path() != self.path {
            return Err(WebhookError::NotFound(self.path.clone()));
        }
        if parts.method != Method::POST {
            return Err(WebhookError::MethodNotAllowed(parts.method.clone()));
        }
        if let Some(expected) = &self.authorization {
            let given = parts
                .headers
                .get(AUTHORIZATION)
                .map_or(&[][..], HeaderValue::as_bytes);
            if !constant_time_eq(given, expected) {
                return Err(WebhookError::Unauthorized);
            }
        }
        let content_type = parts.headers.get(CONTENT_TYPE);
        let is_json = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(WebhookError::UnsupportedMediaType(
                content_type.map_or_else(
                    || "(none)".into(),
                    |v| {
                        String::from_utf8_lossy(v.as_bytes())
                            .chars()
                            .take(100)
                            .collect()
                    },
                ),
            ));
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(WebhookError::TooLarge(self.max_body_bytes));
        }
        let body = self.read_body(unread, declared, deadline).await?;
        // Room to hold this body and its records at once (see listen.max_rendering_bytes).
        let room = timeout_at(
            deadline,
            self.rendering
                .acquire_many(kib(body.len()).clamp(1, self.rendering_cap)),
        )
        .await
        .map_err(|_| WebhookError::Busy)?
        .map_err(|_| WebhookError::Busy)?;
        let Batch {
            records,
            layouts,
            summary,
            too_large,
            keys,
        } = self.pipeline.run(&body, &timestamp::now())?;
        drop(body);
        drop(room);
        for dropped in &too_large {
            tracing::error!(audit_id = %dropped.audit_id, bytes = dropped.bytes, "event dropped: above syslog.max_message_bytes even after truncation");
        }
        if !records.is_empty() {
            match timeout_at(deadline, self.queue.append_rendered(records, &layouts)).await {
                Err(_) => return Err(WebhookError::StoreTimeout),
                Ok(result) => result?,
            }
        }
        self.pipeline.stored(&keys);
        Ok(summary)
    }

    /// Reads the body up to `listen.max_body_bytes` before `deadline`. On success the body is
    /// used up (`unread` becomes `None`); on a refusal the rest stays in `unread`.
    async fn read_body(
        &self,
        unread: &mut Option<Unread>,
        declared: Option<u64>,
        deadline: Instant,
    ) -> Result<Bytes, WebhookError> {
        let Some(state) = unread.as_mut() else {
            return Ok(Bytes::new());
        };
        // The apiserver always sends Content-Length (checked against the limit above): one
        // allocation of the right size instead of doubling.
        let mut collected =
            BytesMut::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
        loop {
            let frame = match timeout_at(deadline, state.body.frame()).await {
                Err(_) => {
                    // A client this slow is not worth waiting for any longer.
                    *unread = None;
                    return Err(WebhookError::BodyTimeout);
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    *unread = None;
                    return Err(WebhookError::BodyRead(e));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            state.untouched = false;
            if let Some(data) = frame.data_ref() {
                if collected.len() + data.len() > self.max_body_bytes {
                    return Err(WebhookError::TooLarge(self.max_body_bytes));
                }
                collected.extend_from_slice(data);
            }
        }
        *unread = None;
        Ok(collected.freeze())
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::Config;
    use crate::listener::{ConnectionLimits, Service, serve};

    impl Webhook {
        /// Takes the whole rendering budget, as other requests' rendering would.
        fn hold_rendering(&self) -> tokio::sync::SemaphorePermit<'_> {
            self.rendering
                .try_acquire_many(self.rendering_cap)
                .expect("budget free")
        }
    }

    const BATCH: &str = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"busy-1","stage":"ResponseComplete","requestURI":"/api","verb":"get","user":{"username":"u"},"stageTimestamp":"2026-12-02T10:00:00.000000Z"}]}"#;

    /// One POST of [`BATCH`] on a new connection: status, `Retry-After` and body.
    async fn post(addr: std::net::SocketAddr, http2: bool) -> (u16, Option<String>, String) {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let request = Request::post("http://relay/")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(BATCH.as_bytes())))
            .unwrap();
        let response = if http2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(request).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(request).await.unwrap()
        };
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_finds_no_rendering_room_within_request_timeout_gets_503() {
        let config = Config::parse(
            "[listen]\nrequest_timeout = \"300ms\"\nretry_after_seconds = 3\n[queue]\nkind = \"memory\"\n",
            Path::new("busy.toml"),
        )
        .unwrap();
        let queue = Queue::open(&config.queue, &["sink".to_owned()])
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let webhook = Arc::new(Webhook::new(
            &config.listen,
            Pipeline::new(&config, "host"),
            queue.clone(),
            metrics.clone(),
            None,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, connections) = (CancellationToken::new(), TaskTracker::new());
        let service = Service {
            tls: None,
            webhook: webhook.clone(),
            metrics: metrics.clone(),
            limits: ConnectionLimits::from(&config.listen),
            allowed_client_names: config.listen.allowed_client_names.clone(),
        };
        let server = tokio::spawn(serve(listener, service, shutdown.clone(), connections));

        let held = webhook.hold_rendering();
        for http2 in [false, true] {
            let (status, retry, body) = post(addr, http2).await;
            assert_eq!(status, 503, "http2 {http2}: {body}");
            assert_eq!(retry.as_deref(), Some("3"), "http2 {http2}");
            assert!(body.contains("listen.max_rendering_bytes"), "{body}");
        }
        assert_eq!(
            queue.stats().end_seq,
            0,
            "nothing of a refused batch is stored"
        );
        // Room again: the apiserver's resend is taken.
        drop(held);
        for http2 in [false, true] {
            let (status, _, body) = post(addr, http2).await;
            assert_eq!(status, 200, "http2 {http2}: {body}");
        }
        // The second one is a duplicate of the first: one record stored.
        assert_eq!(queue.stats().end_seq, 1);
        assert_eq!(
            metrics
                .encode()
                .matches("kar_requests_total{code=\"503\"} 2")
                .count(),
            1,
            "both refusals counted"
        );
        shutdown.cancel();
        server.await.unwrap();
    }
}
