//! Prometheus metrics: one registry per process, recorded through typed methods by the
//! webhook, the listener and the senders, and encoded in the OpenMetrics text format by the
//! admin listener. This module knows nothing of the rest of the relay: whoever owns a value
//! (the queue's size, a destination's backlog) records it.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set: a list of (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// A gauge holding an `f64`.
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What happened to the events of accepted batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// `kar_events_received_total`: items in accepted EventLists.
    Received,
    /// `kar_events_deduplicated_total`: repeats of an event (auditID, stage, bytes) dropped.
    Deduplicated,
    /// `kar_events_truncated_total`: shortened by the apiserver truncation rule.
    Truncated,
    /// `kar_events_filtered_total`: dropped by a filter rule.
    Filtered,
    /// `kar_events_redacted_total`: at least one value redacted.
    Redacted,
}

/// Which end of a TLS connection the relay was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The webhook listener.
    Server,
    /// A destination.
    Client,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    requests_in_flight: Gauge,
    request_duration: Histogram,
    events_received: Counter,
    events_deduplicated: Counter,
    events_truncated: Family<Labels, Counter>,
    events_filtered: Counter,
    events_redacted: Counter,
    events_dropped: Family<Labels, Counter>,
    events_sent: Family<Labels, Counter>,
    events_routed_away: Family<Labels, Counter>,
    events_confirmed_early: Family<Labels, Counter>,
    destination_up: Family<Labels, Gauge>,
    destination_backlog: Family<Labels, Gauge>,
    destination_oldest_seconds: Family<Labels, FloatGauge>,
    queue_bytes: Gauge,
    queue_max_bytes: Gauge,
    ready: Gauge,
    tls_handshake_failures: Family<Labels, Counter>,
    connections_evicted: Family<Labels, Counter>,
    connections_open: Gauge,
    clients_refused: Family<Labels, Counter>,
    /// Serialises [`Metrics::set_dropped_total`]'s read-then-add.
    totals: std::sync::Mutex<()>,
}

/// One destination's metrics, resolved once so the send loop does no label lookups.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    sent: Counter,
    up: Gauge,
    backlog: Gauge,
    oldest: FloatGauge,
    truncated: Counter,
    too_large: Counter,
    routed_away: Counter,
    confirmed_early: Counter,
}

impl DestinationMetrics {
    /// Counts one event cut to fit this destination's `max_message_bytes`.
    pub fn truncated(&self) {
        self.truncated.inc();
    }

    /// Counts one event not sent to this destination because it does not fit.
    pub fn too_large(&self) {
        self.too_large.inc();
    }

    /// Counts `n` events this destination's rules routed away (skipped, not sent).
    pub fn routed_away(&self, n: u64) {
        self.routed_away.inc_by(n);
    }

    /// Counts `n` events confirmed before they had stayed `confirm_after` on the connection,
    /// because a memory queue was past half of its budget.
    pub fn confirmed_early(&self, n: u64) {
        self.confirmed_early.inc_by(n);
    }

    /// Counts `n` events confirmed delivered.
    pub fn sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    /// Sets whether the destination is connected.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Sets the number of stored events not yet confirmed.
    pub fn set_backlog(&self, records: u64) {
        self.backlog.set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// Sets the age of the oldest stored event not yet confirmed.
    pub fn set_oldest_undelivered(&self, age: std::time::Duration) {
        self.oldest.set(age.as_secs_f64());
    }
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
            requests_in_flight: Gauge::default(),
            request_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
            ]),
            events_received: Counter::default(),
            events_deduplicated: Counter::default(),
            events_truncated: Family::default(),
            events_filtered: Counter::default(),
            events_redacted: Counter::default(),
            events_dropped: Family::default(),
            events_sent: Family::default(),
            events_routed_away: Family::default(),
            events_confirmed_early: Family::default(),
            destination_up: Family::default(),
            destination_backlog: Family::default(),
            destination_oldest_seconds: Family::default(),
            queue_bytes: Gauge::default(),
            queue_max_bytes: Gauge::default(),
            ready: Gauge::default(),
            tls_handshake_failures: Family::default(),
            connections_evicted: Family::default(),
            connections_open: Gauge::default(),
            clients_refused: Family::default(),
            totals: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Webhook answers by HTTP status code",
            m.requests.clone(),
        );
        r.register(
            "requests_in_flight",
            "Webhook requests received and not yet answered",
            m.requests_in_flight.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request to answer",
            m.request_duration.clone(),
        );
        r.register(
            "events_received",
            "Audit events in accepted batches",
            m.events_received.clone(),
        );
        r.register(
            "events_deduplicated",
            "Events dropped as repeats (same auditID, stage and bytes)",
            m.events_deduplicated.clone(),
        );
        r.register(
            "events_truncated",
            "Events shortened by the apiserver truncation rule: when stored (no label), or for one destination's max_message_bytes",
            m.events_truncated.clone(),
        );
        r.register(
            "events_filtered",
            "Events dropped by a filter rule",
            m.events_filtered.clone(),
        );
        r.register(
            "events_redacted",
            "Events with at least one redacted value",
            m.events_redacted.clone(),
        );
        r.register(
            "events_dropped",
            "Events that could not be relayed, by reason (and destination, for a destination's max_message_bytes or datagram size)",
            m.events_dropped.clone(),
        );
        r.register(
            "events_sent",
            "Events confirmed delivered, per destination",
            m.events_sent.clone(),
        );
        r.register(
            "events_routed_away",
            "Events a destination's [[destination.filter]] rules skipped, per destination",
            m.events_routed_away.clone(),
        );
        r.register(
            "events_confirmed_early",
            "Events confirmed before they had stayed confirm_after on a connection, as the memory queue was past half its budget, per destination",
            m.events_confirmed_early.clone(),
        );
        r.register(
            "destination_up",
            "1 while the destination is connected",
            m.destination_up.clone(),
        );
        r.register(
            "destination_backlog_records",
            "Events stored and not yet confirmed, per destination",
            m.destination_backlog.clone(),
        );
        r.register(
            "destination_oldest_undelivered_seconds",
            "Age of the oldest stored event not yet confirmed, per destination",
            m.destination_oldest_seconds.clone(),
        );
        r.register(
            "queue_bytes",
            "Bytes held by the queue",
            m.queue_bytes.clone(),
        );
        r.register(
            "queue_max_bytes",
            "queue.max_bytes: above it the webhook answers 503 (or, with drop_oldest, drops the oldest)",
            m.queue_max_bytes.clone(),
        );
        r.register(
            "ready",
            "1 while /readyz answers 200 (listeners bound, queue open, not draining)",
            m.ready.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Refused TLS handshakes by side (server: webhook listener, client: destinations) and reason",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "connections_evicted",
            "Webhook connections closed to make room at listen.max_connections, by state (handshake, idle)",
            m.connections_evicted.clone(),
        );
        r.register(
            "connections_open",
            "Webhook connections open (each holds one of listen.max_connections)",
            m.connections_open.clone(),
        );
        r.register(
            "clients_refused",
            "Webhook connections whose client certificate chains to client_ca but is refused, by reason (name_not_allowed: not in listen.allowed_client_names)",
            m.clients_refused.clone(),
        );
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        r.register("build_info", "Build information", build);
        // Series with a fixed set of label values exist from the start, at 0, so that
        // `rate()` and alerts see them before the first increment.
        for state in ["handshake", "idle"] {
            let _ = m
                .connections_evicted
                .get_or_create(&vec![("state", state.to_owned())]);
        }
        Self { registry, ..m }
    }

    /// A webhook request arrived (`true`) or was answered or abandoned (`false`).
    pub fn request_in_flight(&self, started: bool) {
        if started {
            self.requests_in_flight.inc();
        } else {
            self.requests_in_flight.dec();
        }
    }

    /// Counts one webhook answer and its latency.
    pub fn request_answered(&self, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![("code", status.to_string())])
            .inc();
        self.request_duration.observe(seconds);
    }

    /// Counts `n` events with `outcome`.
    pub fn events(&self, outcome: EventOutcome, n: u64) {
        if n == 0 {
            return;
        }
        match outcome {
            EventOutcome::Received => &self.events_received,
            EventOutcome::Deduplicated => &self.events_deduplicated,
            EventOutcome::Truncated => {
                self.events_truncated.get_or_create(&Vec::new()).inc_by(n);
                return;
            }
            EventOutcome::Filtered => &self.events_filtered,
            EventOutcome::Redacted => &self.events_redacted,
        }
        .inc_by(n);
    }

    /// Counts `n` events that could not be relayed (`too_large`, `datagram_too_large`,
    /// `queue_full`...).
    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.events_dropped
                .get_or_create(&vec![("reason", reason.to_owned())])
                .inc_by(n);
        }
    }

    /// Brings the count of `reason` up to `total`, for drops counted elsewhere (the queue's
    /// `when_full = "drop_oldest"`).
    pub fn set_dropped_total(&self, reason: &'static str, total: u64) {
        let _serial = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counter = self
            .events_dropped
            .get_or_create(&vec![("reason", reason.to_owned())]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// The handles of one destination's metrics (created at 0).
    pub fn destination(&self, name: &str) -> DestinationMetrics {
        let labels = vec![("destination", name.to_owned())];
        DestinationMetrics {
            sent: self.events_sent.get_or_create(&labels).clone(),
            up: self.destination_up.get_or_create(&labels).clone(),
            backlog: self.destination_backlog.get_or_create(&labels).clone(),
            oldest: self
                .destination_oldest_seconds
                .get_or_create(&labels)
                .clone(),
            truncated: self.events_truncated.get_or_create(&labels).clone(),
            too_large: self
                .events_dropped
                .get_or_create(&vec![
                    ("destination", name.to_owned()),
                    ("reason", "too_large".to_owned()),
                ])
                .clone(),
            routed_away: self.events_routed_away.get_or_create(&labels).clone(),
            confirmed_early: self.events_confirmed_early.get_or_create(&labels).clone(),
        }
    }

    /// Sets the bytes the queue holds.
    pub fn set_queue_bytes(&self, bytes: u64) {
        self.queue_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets `queue.max_bytes`, for alerts on how full the queue is.
    pub fn set_queue_max_bytes(&self, bytes: u64) {
        self.queue_max_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets whether the relay is ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Counts a connection whose client certificate the allow-list refused.
    pub fn client_refused(&self, reason: &'static str) {
        self.clients_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts a refused TLS handshake (`reason` from [`crate::tls::failure_reason`]).
    pub fn tls_failure(&self, side: Side, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&vec![
                ("side", side.as_str().to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// A webhook connection opened (`true`) or ended (`false`).
    pub fn connection_open(&self, open: bool) {
        if open {
            self.connections_open.inc();
        } else {
            self.connections_open.dec();
        }
    }

    /// Counts a connection closed to make room at the connection cap.
    pub fn connection_evicted(&self, state: &'static str) {
        self.connections_evicted
            .get_or_create(&vec![("state", state.to_owned())])
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
