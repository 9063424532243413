//! kube-audit-relay: Kubernetes API-server audit webhook in, syslog out.
//!
//! The data path, one module per step, in the order an event travels:
//!
//! ```text
//! apiserver ──HTTPS (mTLS)──▶ listener (connection cap, TLS handshake, lingering close)
//!    ─▶ webhook (HTTP: method, path, token, type, size; the status of every refusal)
//!    ─▶ pipeline (pure): audit (EventList split into raw items) ─▶ dedupe (auditID, stage, bytes)
//!         ─▶ filter (keep/drop rules, redaction) ─▶ syslog::render (RFC 5424 record)
//!    ─▶ queue (memory, or disk with group-committed fsync; stamp: sequenceId) ─▶ 200
//! queue ─▶ sender (one task per destination, own cursor)
//!    ─▶ syslog::encode (RFC 5424 | RFC 3164, octet | LF | NDJSON)
//!    ─▶ stream (tcp, tls, stdout) | relp (relp, relp+tls) | udp | http(s) ─▶ SIEM
//! admin: /healthz /readyz /metrics
//! ```
//!
//! [`config`] parses the TOML file into typed values once; [`app::App`] builds the relay
//! from it on already bound sockets, serves until the shutdown token fires and then drains
//! ([`shutdown`]). `main` only parses the command line, binds, and turns signals into the
//! token.

pub mod admin;
pub mod app;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod filter;
pub mod heap;
pub mod integrity;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod sender;
pub mod shutdown;
pub mod siem;
pub mod stamp;
pub mod syslog;
pub mod tls;
pub mod webhook;

pub use app::{App, Listeners, RunError};

/// Builds the relay on `listeners` and serves until `shutdown` is cancelled, then drains.
///
/// # Errors
/// [`RunError`] when something cannot be set up; nothing is accepted in that case.
pub async fn run(
    config: config::Config,
    listeners: Listeners,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), RunError> {
    App::build(config, listeners).await?.serve(shutdown).await;
    Ok(())
}
