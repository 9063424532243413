//! kube-audit-relay: Kubernetes API-server audit webhook in, RFC 5424 syslog out.
//!
//! Data flow, one module per step:
//!
//! ```text
//! apiserver ──HTTPS (mTLS)──▶ listener ─▶ tls ─▶ webhook: method/path/type/size checks
//!    ─▶ audit: EventList split into raw items ─▶ dedupe (auditID, stage)
//!    ─▶ syslog: RFC 5424 record ─▶ queue: durable append (group fsync) ─▶ 200
//! queue ─▶ sender (one per destination, own cursor) ─▶ frame (octet | LF) ─▶ TCP / TLS / stdout
//! ```
//!
//! [`run`] wires them together for one process; `main` only parses the command line, binds
//! the listener and turns signals into the shutdown token.

pub mod admin;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod filter;
pub mod listener;
pub mod metrics;
pub mod queue;
pub mod sender;
pub mod syslog;
pub mod tls;
pub mod webhook;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::queue::Queue;
use crate::sender::{Destination, StopSignals};
use crate::syslog::Renderer;
use crate::webhook::Webhook;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Listener TLS settings are unusable.
    #[error("listener TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The queue cannot be opened.
    #[error("queue: {0}")]
    Queue(#[from] queue::QueueError),
    /// A destination cannot be set up.
    #[error("{0}")]
    Destination(#[from] sender::DestinationError),
    /// `listen.token_file` cannot be read.
    #[error("listen.token_file {path}: {source}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The sockets `main` binds before handing over (tests bind port 0 the same way).
#[derive(Debug)]
pub struct Listeners {
    /// The webhook listener (`listen.address`).
    pub webhook: TcpListener,
    /// The admin listener (`admin.address`), if enabled.
    pub admin: Option<TcpListener>,
}

/// The HOSTNAME written in every record: `cluster_name`, else this machine's host name.
pub fn record_hostname(config: &Config) -> String {
    config
        .cluster_name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// Runs the relay on an already bound `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, lets in-flight requests finish, gives senders `shutdown.drain_timeout` to
/// deliver what is queued, and closes the queue (cursors persisted).
///
/// # Errors
/// [`RunError`] when TLS files, the queue or a destination cannot be set up; nothing is
/// accepted in that case.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let Listeners {
        webhook: listener,
        admin,
    } = listeners;
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = admin::Readiness::default();
    let token = match &config.listen.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| RunError::Token {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let renderer = Renderer::new(&config.syslog, &record_hostname(&config));
    let tls = tls::ReloadingServerConfig::load(&config.listen)?;
    if let Some(reloading) = &tls {
        tokio::spawn(
            reloading
                .clone()
                .watch(config.listen.tls_reload_interval, shutdown.child_token()),
        );
    }
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    let queue = Queue::open(&config.queue, &names).await?;
    let mut destinations = Vec::with_capacity(config.destinations.len());
    for (index, d) in config.destinations.iter().enumerate() {
        destinations.push(Destination::new(d, queue.reader(index), metrics.clone())?);
    }
    // The admin listener stays up through the drain (so /readyz can say "not ready") and is
    // aborted at the very end.
    let admin_task = admin.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "admin listener ready (/healthz /readyz /metrics)");
        }
        tokio::spawn(admin::serve(
            listener,
            metrics.clone(),
            queue.clone(),
            names.clone(),
            ready.clone(),
            CancellationToken::new(),
        ))
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if tls.is_none() && !loopback {
        tracing::warn!(address = %local, "plain HTTP on a non-loopback address: audit events travel in clear; set listen.tls_cert and listen.tls_key");
    }
    tracing::info!(
        address = %local,
        path = %config.listen.path,
        tls = tls.is_some(),
        client_auth = ?config.listen.effective_client_auth(),
        queue = ?config.queue.kind,
        data_dir = %config.queue.data_dir.display(),
        destinations = ?config.destinations.iter().map(|d| format!("{}={}", d.name, d.url)).collect::<Vec<_>>(),
        "webhook listener ready"
    );

    let signals = StopSignals {
        drain: CancellationToken::new(),
        stop: CancellationToken::new(),
    };
    let senders = TaskTracker::new();
    for destination in destinations {
        senders.spawn(destination.run(signals.clone()));
    }
    senders.close();

    let webhook = Arc::new(Webhook::new(
        &config,
        renderer,
        queue.clone(),
        metrics.clone(),
        token.as_deref(),
    ));
    ready.set(true);
    let connections = TaskTracker::new();
    listener::serve(
        listener,
        tls,
        webhook,
        (&config.listen).into(),
        shutdown.clone(),
        connections.clone(),
    )
    .await;

    ready.set(false);
    tracing::info!("shutting down: finishing in-flight requests");
    connections.close();
    let grace = config.listen.request_timeout + std::time::Duration::from_secs(1);
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some requests did not finish in time; their batches were not acknowledged");
    }
    tracing::info!(timeout = ?config.shutdown.drain_timeout, "draining destinations");
    signals.drain.cancel();
    if tokio::time::timeout(config.shutdown.drain_timeout, senders.wait())
        .await
        .is_err()
    {
        signals.stop.cancel();
        senders.wait().await;
    }
    queue.close().await;
    if let Some(task) = admin_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
