//! The relay's lifecycle as a value: [`App::build`] does everything that can fail (token,
//! TLS files, queue, destinations) on sockets the caller bound, [`App::serve`] runs until
//! the shutdown token fires and then drains ([`crate::shutdown`]). The bound addresses are
//! values ([`App::webhook_addr`], [`App::admin_addr`]), so tests bind port 0 and ask.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::listener::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::queue::{self, Queue};
use crate::sender::{self, Destination, StopSignals};
use crate::shutdown::Drain;
use crate::tls::{self, ReloadingServerConfig, ServerTlsFiles};
use crate::webhook::Webhook;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener cannot be bound.
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The config key that names it.
        key: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Listener TLS settings are unusable.
    #[error("listener TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The queue cannot be opened.
    #[error("queue: {0}")]
    Queue(#[from] queue::QueueError),
    /// A destination cannot be set up.
    #[error("{0}")]
    Destination(#[from] sender::DestinationError),
    /// The integrity trail cannot start.
    #[error("{0}")]
    Integrity(#[from] crate::integrity::IntegrityError),
    /// `listen.token_file` cannot be read.
    #[error("listen.token_file {path}: {source}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The sockets the relay serves on, bound before it is built (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The webhook listener (`listen.address`).
    pub webhook: TcpListener,
    /// The admin listener (`admin.address`), if enabled.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen.address` and `admin.address`.
    ///
    /// # Errors
    /// [`RunError::Bind`] naming the address and its key.
    pub async fn bind(config: &Config) -> Result<Self, RunError> {
        let bind = |address: SocketAddr, key: &'static str| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| RunError::Bind {
                    address,
                    key,
                    source,
                })
        };
        let webhook = bind(config.listen.address, "listen.address").await?;
        let admin = match config.admin.address {
            Some(address) => Some(bind(address, "admin.address; \"off\" disables it").await?),
            None => None,
        };
        Ok(Self { webhook, admin })
    }
}

/// The HOSTNAME written in every record: `cluster_name`, else this machine's host name.
pub fn record_hostname(config: &Config) -> String {
    config.cluster_name.as_ref().map_or_else(
        || gethostname::gethostname().to_string_lossy().into_owned(),
        |name| name.as_str().to_owned(),
    )
}

/// A relay, built and ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    listeners: Listeners,
    webhook_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    ready: Readiness,
    queue: Queue,
    destinations: Vec<Destination>,
    tls: Option<Arc<ReloadingServerConfig>>,
    webhook: Arc<Webhook>,
}

impl App {
    /// Sets up everything that can fail; nothing is accepted yet.
    ///
    /// # Errors
    /// [`RunError`] when the token, the TLS files, the queue or a destination cannot be set
    /// up, or a listener's address cannot be read.
    pub async fn build(config: Config, listeners: Listeners) -> Result<Self, RunError> {
        let addr = |l: &TcpListener, key: &'static str| {
            l.local_addr().map_err(|source| RunError::Bind {
                address: config.listen.address,
                key,
                source,
            })
        };
        let webhook_addr = addr(&listeners.webhook, "listen.address")?;
        let admin_addr = match &listeners.admin {
            Some(l) => Some(addr(l, "admin.address")?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.set_queue_max_bytes(config.queue.max_bytes.0);
        let token = match &config.listen.token_file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| RunError::Token {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let tls = match ServerTlsFiles::of(&config.listen) {
            Some(files) => Some(ReloadingServerConfig::load(files)?),
            None => None,
        };
        let names = destination_names(&config);
        let hostname = record_hostname(&config);
        let stamp: Option<crate::queue::Stamper> = match &config.integrity {
            Some(integrity) => Some(Box::new(crate::integrity::ChainStamp::new(
                integrity, &config, &hostname,
            )?)),
            None => config
                .syslog
                .sequence_id
                .then(|| Box::new(crate::stamp::SequenceIds::default()) as crate::queue::Stamper),
        };
        let queue = Queue::open_stamped(&config.queue, &names, stamp).await?;
        let mut destinations = Vec::with_capacity(config.destinations.len());
        for (index, d) in config.destinations.iter().enumerate() {
            destinations.push(Destination::new(
                d,
                config.syslog.max_message_bytes,
                queue.reader(index),
                metrics.clone(),
            )?);
        }
        let pipeline = Pipeline::new(&config, &hostname);
        let webhook = Arc::new(Webhook::new(
            &config.listen,
            pipeline,
            queue.clone(),
            metrics.clone(),
            token.as_deref(),
        ));
        Ok(Self {
            config,
            listeners,
            webhook_addr,
            admin_addr,
            metrics,
            ready: Readiness::default(),
            queue,
            destinations,
            tls,
            webhook,
        })
    }

    /// Where the webhook listens.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains: stops accepting, lets in-flight
    /// requests finish, gives senders `shutdown.drain_timeout` to deliver what is queued, and
    /// closes the queue (cursors persisted).
    pub async fn serve(self, shutdown: CancellationToken) {
        let Self {
            config,
            listeners,
            webhook_addr,
            metrics,
            ready,
            queue,
            destinations,
            tls,
            webhook,
            ..
        } = self;
        if let Some(reloading) = &tls {
            tokio::spawn(
                reloading
                    .clone()
                    .watch(config.listen.tls_reload_interval, shutdown.child_token()),
            );
        }
        // The admin listener stays up through the drain (so /readyz can say "not ready") and
        // is aborted at the very end.
        let admin_task = listeners.admin.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "admin listener ready (/healthz /readyz /metrics)");
            }
            tokio::spawn(admin::serve(
                listener,
                metrics.clone(),
                queue.clone(),
                destination_names(&config),
                ready.clone(),
                CancellationToken::new(),
            ))
        });
        if tls.is_none() && !webhook_addr.ip().is_loopback() {
            tracing::warn!(address = %webhook_addr, "plain HTTP on a non-loopback address: audit events travel in clear; set listen.tls_cert and listen.tls_key");
        }
        tracing::info!(
            address = %webhook_addr,
            path = %config.listen.path,
            tls = tls.is_some(),
            client_auth = ?config.listen.client_auth,
            queue = ?config.queue.kind,
            data_dir = %config.queue.data_dir.display(),
            destinations = ?config.destinations.iter().map(|d| format!("{}={}", d.name, d.url)).collect::<Vec<_>>(),
            "webhook listener ready"
        );
        let checkpoints = config.integrity.as_ref().map(|integrity| {
            tokio::spawn(crate::integrity::tick(
                queue.clone(),
                integrity.checkpoint_interval,
                shutdown.child_token(),
            ))
        });
        let signals = StopSignals::default();
        let senders = TaskTracker::new();
        for destination in destinations {
            senders.spawn(destination.run(signals.clone()));
        }
        senders.close();
        ready.set(true);
        let connections = TaskTracker::new();
        let service = listener::Service {
            tls,
            webhook,
            metrics,
            limits: ConnectionLimits::from(&config.listen),
            allowed_client_names: config.listen.allowed_client_names.clone(),
        };
        listener::serve(
            listeners.webhook,
            service,
            shutdown.clone(),
            connections.clone(),
        )
        .await;
        Drain {
            ready,
            connections,
            request_grace: config.listen.request_timeout + std::time::Duration::from_secs(1),
            senders,
            signals,
            drain_timeout: config.shutdown.drain_timeout,
            final_checkpoint: checkpoints.is_some(),
            queue,
        }
        .run()
        .await;
        if let Some(task) = checkpoints {
            task.abort();
        }
        if let Some(task) = admin_task {
            task.abort();
        }
        tracing::info!("stopped");
    }
}

fn destination_names(config: &Config) -> Vec<String> {
    config
        .destinations
        .iter()
        .map(|d| d.name.as_str().to_owned())
        .collect()
}
