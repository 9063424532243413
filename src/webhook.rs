//! The audit webhook: one HTTP route that accepts `EventList` batches.
//!
//! Checks method, path, content type and size, parses the batch, drops repeats, renders each
//! event and stores the batch in the queue. The answer is 200 only when every event of the
//! batch is stored; the HTTP status of every failure is chosen in [`WebhookError::status`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::value::RawValue;
use tokio::time::{Instant, timeout_at};

use crate::audit::{AuditError, EventList, EventView};
use crate::dedupe::{Dedupe, Key, KeySet};
use crate::filter::Policy;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::syslog::{Renderer, timestamp};

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
    BodyRead(String),
    /// The body did not arrive within `listen.request_timeout`.
    #[error("body not received within listen.request_timeout")]
    BodyTimeout,
    /// The queue refused the batch (full, disk error, shutting down) or did not confirm in time.
    #[error("cannot store the batch now: {0}")]
    Unavailable(String),
}

impl WebhookError {
    /// The HTTP status for this error: the one place where it is chosen.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBatch(_) => StatusCode::BAD_REQUEST,
            Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Settings and shared state of the webhook route.
#[derive(Debug)]
pub struct Webhook {
    path: String,
    max_body_bytes: usize,
    request_timeout: Duration,
    retry_after: HeaderValue,
    renderer: Renderer,
    dedupe: Dedupe,
    queue: Queue,
    metrics: Arc<Metrics>,
    policy: Policy,
    /// Expected `Authorization` header value (`Bearer TOKEN`), when a token is configured.
    authorization: Option<Vec<u8>>,
}

/// Outcome of one accepted batch, for logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Items in the batch.
    pub items: usize,
    /// Items stored.
    pub stored: usize,
    /// Items dropped as repeats of stored ones.
    pub duplicates: usize,
    /// Items shortened by the truncation rule.
    pub truncated: usize,
    /// Items dropped because even truncated they exceed `max_message_bytes`.
    pub too_large: usize,
    /// Items dropped by a filter rule.
    pub filtered: usize,
    /// Items with at least one redacted value.
    pub redacted: usize,
}

impl Webhook {
    /// Builds the route. `token` is the bearer token requests must carry, if any.
    pub fn new(
        config: &crate::config::Config,
        renderer: Renderer,
        queue: Queue,
        metrics: Arc<Metrics>,
        token: Option<&str>,
    ) -> Self {
        Self {
            metrics,
            policy: Policy::new(&config.filters, &config.redact),
            authorization: token.map(|t| format!("Bearer {}", t.trim()).into_bytes()),
            path: config.listen.path.clone(),
            max_body_bytes: config.listen.max_body_bytes.as_usize(),
            request_timeout: config.listen.request_timeout,
            retry_after: HeaderValue::from(config.listen.retry_after_seconds),
            renderer,
            dedupe: Dedupe::new(config.dedupe.max_entries),
            queue,
        }
    }

    /// The metrics this route records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request; never fails, never panics on input.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let response = self.respond(request).await;
        self.metrics
            .requests
            .get_or_create(&vec![("code", response.status().as_u16().to_string())])
            .inc();
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        match self.accept(request).await {
            Ok(summary) => {
                tracing::debug!(?summary, "batch stored");
                let m = &self.metrics;
                m.events_received.inc_by(summary.items as u64);
                m.events_deduplicated.inc_by(summary.duplicates as u64);
                m.events_truncated.inc_by(summary.truncated as u64);
                m.events_filtered.inc_by(summary.filtered as u64);
                m.events_redacted.inc_by(summary.redacted as u64);
                if summary.too_large > 0 {
                    m.events_dropped
                        .get_or_create(&vec![("reason", "too_large".to_owned())])
                        .inc_by(summary.too_large as u64);
                }
                Response::new(Full::new(Bytes::new()))
            }
            Err(err) => {
                let status = err.status();
                if status.is_server_error() {
                    tracing::warn!(status = status.as_u16(), error = %err, "batch refused; the apiserver will retry");
                } else {
                    tracing::info!(status = status.as_u16(), %method, error = %err, "request rejected");
                }
                self.error_response(&err)
            }
        }
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
            WebhookError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, self.retry_after.clone());
            }
            _ => {}
        }
        response
    }

    async fn accept(&self, request: Request<Incoming>) -> Result<BatchSummary, WebhookError> {
        let deadline = Instant::now() + self.request_timeout;
        if request.uri().path() != self.path {
            return Err(WebhookError::NotFound(self.path.clone()));
        }
        if request.method() != Method::POST {
            return Err(WebhookError::MethodNotAllowed(request.method().clone()));
        }
        if let Some(expected) = &self.authorization {
            let given = request
                .headers()
                .get(AUTHORIZATION)
                .map_or(&[][..], HeaderValue::as_bytes);
            if !constant_time_eq(given, expected) {
                return Err(WebhookError::Unauthorized);
            }
        }
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let is_json = content_type
            .as_deref()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(WebhookError::UnsupportedMediaType(
                content_type.unwrap_or_else(|| "(none)".into()),
            ));
        }
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(WebhookError::TooLarge(self.max_body_bytes));
        }
        let body = Limited::new(request.into_body(), self.max_body_bytes);
        let body = match timeout_at(deadline, body.collect()).await {
            Err(_) => return Err(WebhookError::BodyTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(WebhookError::TooLarge(self.max_body_bytes));
            }
            Ok(Err(e)) => return Err(WebhookError::BodyRead(e.to_string())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let (records, keys, summary) = self.render_batch(&body)?;
        if !records.is_empty() {
            match timeout_at(deadline, self.queue.append(records)).await {
                Err(_) => {
                    return Err(WebhookError::Unavailable(
                        "the queue did not confirm within listen.request_timeout".into(),
                    ));
                }
                Ok(Err(e @ (QueueError::Full { .. } | QueueError::Io(_) | QueueError::Closed))) => {
                    return Err(WebhookError::Unavailable(e.to_string()));
                }
                Ok(Ok(())) => {}
            }
        }
        self.dedupe.insert_all(&keys);
        Ok(summary)
    }

    /// Parses and renders a batch. Either every item is valid or the batch is refused whole,
    /// so a 400 never leaves half a batch stored.
    fn render_batch(
        &self,
        body: &[u8],
    ) -> Result<(Vec<Bytes>, Vec<Key>, BatchSummary), WebhookError> {
        let list = EventList::parse(body)?;
        let received_at = timestamp::now();
        let mut summary = BatchSummary {
            items: list.items.len(),
            ..BatchSummary::default()
        };
        let views = list
            .items
            .iter()
            .enumerate()
            .map(|(index, item)| EventView::parse(index, item))
            .collect::<Result<Vec<_>, _>>()?;
        let all_keys: Vec<Key> = views
            .iter()
            .map(|v| self.dedupe.key(&v.audit_id, &v.stage))
            .collect();
        let seen = self.dedupe.seen(&all_keys);
        let mut records = Vec::with_capacity(views.len());
        let mut keys = Vec::with_capacity(views.len());
        let mut in_batch = KeySet::with_capacity_and_hasher(views.len(), Default::default());
        for (((item, view), key), seen) in list.items.iter().zip(&views).zip(all_keys).zip(seen) {
            if seen || !in_batch.insert(key) {
                summary.duplicates += 1;
                continue;
            }
            if !self.policy.keep(item, view) {
                summary.filtered += 1;
                continue;
            }
            let redacted = self
                .policy
                .redact(item)
                .and_then(|text| RawValue::from_string(text).ok());
            summary.redacted += usize::from(redacted.is_some());
            let item = redacted.as_deref().unwrap_or(item);
            match self.renderer.render(item, view, &received_at) {
                Ok(rendered) => {
                    summary.truncated += usize::from(rendered.truncated);
                    records.push(Bytes::from(rendered.message));
                    keys.push(key);
                }
                Err(too_large) => {
                    summary.too_large += 1;
                    tracing::error!(audit_id = %too_large.audit_id, bytes = too_large.bytes, "event dropped: above syslog.max_message_bytes even after truncation");
                }
            }
        }
        summary.stored = records.len();
        Ok((records, keys, summary))
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
