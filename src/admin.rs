//! The admin listener, separate from the webhook: `/healthz` (the process answers),
//! `/readyz` (listeners bound, queue open, not shutting down) and `/metrics` (OpenMetrics).
//! Plain HTTP/1.1; bind it to loopback or a pod-internal address.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::Queue;

/// Readiness, set once the relay serves and cleared when it starts shutting down.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the relay ready (`true`) or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the relay is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves the admin endpoints until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    queue: Queue,
    destinations: Vec<String>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let destinations: Arc<[String]> = destinations.into();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, queue, ready, destinations) = (
            metrics.clone(),
            queue.clone(),
            ready.clone(),
            destinations.clone(),
        );
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = answer(&request, &metrics, (&queue, &destinations), &ready);
                    async move { Ok::<_, Infallible>(response) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    (queue, destinations): (&Queue, &[String]),
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8"),
        "/readyz" if ready.get() => text(
            StatusCode::OK,
            "ready\n".into(),
            "text/plain; charset=utf-8",
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".into(),
            "text/plain; charset=utf-8",
        ),
        "/metrics" => {
            record_queue_gauges(metrics, queue, destinations);
            metrics.set_ready(ready.get());
            text(
                StatusCode::OK,
                metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz or /metrics\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}

/// The queue's sizes, each destination's backlog and the age of its oldest undelivered
/// event, read from the queue at scrape time.
fn record_queue_gauges(metrics: &Metrics, queue: &Queue, destinations: &[String]) {
    metrics.set_queue_bytes(queue.stats().bytes);
    metrics.set_dropped_total("queue_full", queue.dropped_oldest());
    for ((name, age), backlog) in destinations
        .iter()
        .zip(queue.oldest_undelivered())
        .zip(queue.backlogs())
    {
        let gauges = metrics.destination(name);
        gauges.set_oldest_undelivered(age);
        gauges.set_backlog(backlog);
    }
}
