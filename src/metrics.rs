//! Prometheus metrics: one registry per process, handles shared by the listener, the webhook
//! and the senders; encoded in the OpenMetrics text format by the admin listener.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::queue::Queue;

/// Label set: a list of (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kar_requests_total{code}`: webhook answers by HTTP status.
    pub requests: Family<Labels, Counter>,
    /// `kar_request_duration_seconds`: request received to answer sent.
    pub request_duration: Histogram,
    /// `kar_events_received_total`: items in accepted EventLists.
    pub events_received: Counter,
    /// `kar_events_deduplicated_total`: repeats of (auditID, stage) dropped.
    pub events_deduplicated: Counter,
    /// `kar_events_truncated_total`: events shortened by the apiserver truncation rule.
    pub events_truncated: Counter,
    /// `kar_events_filtered_total`: events dropped by a filter rule.
    pub events_filtered: Counter,
    /// `kar_events_redacted_total`: events with at least one redacted value.
    pub events_redacted: Counter,
    /// `kar_events_dropped_total{reason}`: events that could not be relayed (too large).
    pub events_dropped: Family<Labels, Counter>,
    /// `kar_events_sent_total{destination}`: records confirmed delivered.
    pub events_sent: Family<Labels, Counter>,
    /// `kar_destination_up{destination}`: 1 while connected.
    pub destination_up: Family<Labels, Gauge>,
    /// `kar_destination_backlog_records{destination}`: stored, not yet confirmed.
    pub destination_backlog: Family<Labels, Gauge>,
    /// `kar_destination_oldest_undelivered_seconds{destination}`: age of the oldest stored
    /// event not yet confirmed (0 when caught up).
    pub destination_oldest_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `kar_queue_bytes`: bytes the queue holds (updated at each scrape).
    pub queue_bytes: Gauge,
    /// `kar_tls_handshake_failures_total{side,reason}`.
    pub tls_handshake_failures: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kar");
        let m = Self {
            requests: Family::default(),
            request_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
            ]),
            events_received: Counter::default(),
            events_deduplicated: Counter::default(),
            events_truncated: Counter::default(),
            events_filtered: Counter::default(),
            events_redacted: Counter::default(),
            events_dropped: Family::default(),
            events_sent: Family::default(),
            destination_up: Family::default(),
            destination_backlog: Family::default(),
            destination_oldest_seconds: Family::default(),
            queue_bytes: Gauge::default(),
            tls_handshake_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Webhook answers by HTTP status code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            m.request_duration.clone(),
        );
        registry.register(
            "events_received",
            "Audit events in accepted batches",
            m.events_received.clone(),
        );
        registry.register(
            "events_deduplicated",
            "Events dropped as repeats of (auditID, stage)",
            m.events_deduplicated.clone(),
        );
        registry.register(
            "events_truncated",
            "Events shortened by the apiserver truncation rule",
            m.events_truncated.clone(),
        );
        registry.register(
            "events_filtered",
            "Events dropped by a filter rule",
            m.events_filtered.clone(),
        );
        registry.register(
            "events_redacted",
            "Events with at least one redacted value",
            m.events_redacted.clone(),
        );
        registry.register(
            "events_dropped",
            "Events that could not be relayed",
            m.events_dropped.clone(),
        );
        registry.register(
            "events_sent",
            "Events confirmed delivered, per destination",
            m.events_sent.clone(),
        );
        registry.register(
            "destination_up",
            "1 while the destination is connected",
            m.destination_up.clone(),
        );
        registry.register(
            "destination_backlog_records",
            "Events stored and not yet confirmed, per destination",
            m.destination_backlog.clone(),
        );
        registry.register(
            "destination_oldest_undelivered_seconds",
            "Age of the oldest stored event not yet confirmed, per destination",
            m.destination_oldest_seconds.clone(),
        );
        registry.register(
            "queue_bytes",
            "Bytes held by the queue",
            m.queue_bytes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Refused TLS handshakes by side (server: webhook listener, client: destinations) and reason",
            m.tls_handshake_failures.clone(),
        );
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        registry.register("build_info", "Build information", build);
        Self { registry, ..m }
    }

    /// One destination's label set.
    pub fn destination(name: &str) -> Labels {
        vec![("destination", name.to_owned())]
    }

    /// Counts a refused TLS handshake; `side` is `server` or `client`.
    pub fn tls_failure(&self, side: &'static str, error: &dyn std::fmt::Display) {
        let reason = tls_failure_reason(&error.to_string());
        self.tls_handshake_failures
            .get_or_create(&vec![
                ("side", side.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// The OpenMetrics text of every metric, with the queue gauges refreshed; `destinations`
    /// names the queue's readers in order.
    pub fn encode(&self, queue: Option<&Queue>, destinations: &[String]) -> String {
        if let Some(q) = queue {
            self.queue_bytes
                .set(i64::try_from(q.stats().bytes).unwrap_or(i64::MAX));
            for (name, age) in destinations.iter().zip(q.oldest_undelivered()) {
                self.destination_oldest_seconds
                    .get_or_create(&Self::destination(name))
                    .set(age.as_secs_f64());
            }
            for (name, backlog) in destinations.iter().zip(q.backlogs()) {
                self.destination_backlog
                    .get_or_create(&Self::destination(name))
                    .set(i64::try_from(backlog).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A short, stable reason for a TLS failure, from rustls' message.
pub fn tls_failure_reason(message: &str) -> &'static str {
    let rules: &[(&str, &str)] = &[
        ("no certificates", "no_client_certificate"),
        ("UnknownIssuer", "unknown_issuer"),
        ("expired", "expired"),
        ("not valid yet", "not_yet_valid"),
        ("not valid for name", "name_mismatch"),
        ("InvalidContentType", "not_tls"),
        ("timeout", "timeout"),
        ("protocol version", "protocol_version"),
        ("alert", "peer_alert"),
    ];
    rules
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("other", |(_, reason)| reason)
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
