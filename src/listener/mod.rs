//! The webhook listener: accepts connections under the connection cap (making room by
//! closing handshaking or idle connections, see `slots`), runs the TLS handshake with a
//! deadline, and serves HTTP/1.1 and HTTP/2 on each connection until shutdown, with a
//! lingering close (`linger`) so that answers are not lost to a reset.

pub mod identity;
mod linger;
mod slots;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClientNames, ListenConfig};
use crate::metrics::{Metrics, Side};
use crate::tls::{self, ReloadingServerConfig};
use crate::webhook::{Access, Webhook};
use identity::ClientIdentity;
use linger::Lingering;
use slots::{Connection, Slot, Slots};

/// Limits applied to each connection.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1.1 request head deadline.
    pub header_read_timeout: Duration,
    /// HTTP/1.1 read buffer and HTTP/2 header list limit.
    pub max_header_bytes: usize,
    /// HTTP/2 concurrent streams.
    pub max_streams: u32,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// How long a lingering close reads and drops at most.
    pub linger: Duration,
}

impl From<&ListenConfig> for ConnectionLimits {
    fn from(l: &ListenConfig) -> Self {
        Self {
            max_connections: l.max_connections,
            tls_handshake_timeout: l.tls_handshake_timeout,
            header_read_timeout: l.header_read_timeout,
            max_header_bytes: l.max_header_bytes.as_usize(),
            max_streams: l.max_streams_per_connection,
            max_frame_size: u32::try_from(l.http2_max_frame_size.as_usize()).unwrap_or(1 << 14),
            linger: l.discard_timeout,
        }
    }
}

/// What one listener serves with.
#[derive(Debug, Clone)]
pub struct Service {
    /// TLS, or `None` for plain HTTP.
    pub tls: Option<Arc<ReloadingServerConfig>>,
    /// The route.
    pub webhook: Arc<Webhook>,
    /// Where TLS failures and evictions are counted.
    pub metrics: Arc<Metrics>,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// `listen.allowed_client_names` (empty: any client the CA vouches for).
    pub allowed_client_names: ClientNames,
}

/// Accepts connections on `listener` until `shutdown` is cancelled. Connection tasks are
/// spawned on `connections`, so the caller can wait for in-flight requests to finish; on
/// shutdown every connection is asked to close gracefully (HTTP/2 GOAWAY, HTTP/1.1
/// `Connection: close` after the current request).
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let slots = Slots::new(service.limits.max_connections);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(service.limits.header_read_timeout)
        .max_buf_size(service.limits.max_header_bytes);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(service.limits.max_streams)
        .max_frame_size(service.limits.max_frame_size)
        .max_header_list_size(u32::try_from(service.limits.max_header_bytes).unwrap_or(u32::MAX));
    let metrics = service.metrics.clone();
    let on_evict = move |kind: slots::Evicted| metrics.connection_evicted(kind.as_str());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A slot for it: free, or made by closing a handshaking or idle connection. When every
        // connection is busy, this one waits here and the next ones in the kernel backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.take(&on_evict) => slot,
        };
        let (service, http, shutdown) = (service.clone(), http.clone(), shutdown.clone());
        connections.spawn(async move {
            let metrics = service.metrics.clone();
            metrics.connection_open(true);
            serve_connection(stream, peer, slot, service, http, shutdown).await;
            metrics.connection_open(false);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    service: Service,
    http: auto::Builder<TokioExecutor>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let connection = slot.connection.clone();
    let io = Lingering::new(stream, service.limits.linger, connection.clone());
    let handler = |access: Access| {
        let webhook = service.webhook.clone();
        let (on_request, metrics) = (connection.clone(), service.metrics.clone());
        let access = Arc::new(access);
        service_fn(move |request| {
            let (webhook, access) = (webhook.clone(), access.clone());
            let active = InFlight::start(on_request.clone(), metrics.clone());
            async move {
                let response = webhook.handle(request, &access).await;
                drop(active);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let evict = connection.evict.clone();
    match service.tls.clone() {
        None => {
            drive(
                http.serve_connection(TokioIo::new(io), handler(Access::Allowed)),
                peer,
                &shutdown,
                &evict,
            )
            .await;
        }
        Some(reloading) => {
            let acceptor = reloading.acceptor();
            let handshake =
                tokio::time::timeout(service.limits.tls_handshake_timeout, acceptor.accept(io));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = evict.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reason = tls::failure_reason(&e);
                        let hint = if reason == "not_tls" { " (plain HTTP sent to the HTTPS port?)" } else { "" };
                        tracing::warn!(%peer, reason, error = %e, "TLS handshake refused{hint}");
                        service.metrics.tls_failure(Side::Server, reason);
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, reason = "timeout", "TLS handshake refused: no handshake within listen.tls_handshake_timeout");
                        service.metrics.tls_failure(Side::Server, "timeout");
                        return;
                    }
                },
            };
            connection.handshake_done();
            let access = check_client(&stream, &service, peer);
            drive(
                http.serve_connection(TokioIo::new(stream), handler(access)),
                peer,
                &shutdown,
                &evict,
            )
            .await;
        }
    }
    drop(slot);
}

/// Checks the client certificate against `listen.allowed_client_names`, once per connection;
/// a refused client's requests are answered 403 (the webhook chooses the status).
fn check_client<IO>(
    stream: &tokio_rustls::server::TlsStream<IO>,
    service: &Service,
    peer: SocketAddr,
) -> Access {
    if service.allowed_client_names.is_empty() {
        return Access::Allowed;
    }
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(ClientIdentity::of)
        .unwrap_or_default();
    if identity.allowed_by(&service.allowed_client_names) {
        return Access::Allowed;
    }
    let names = identity.describe();
    tracing::warn!(%peer, %names, "client certificate not in listen.allowed_client_names; its requests get 403");
    service.metrics.client_refused("name_not_allowed");
    Access::Refused(names)
}

/// Marks a request in flight on its connection (and in the metrics) for as long as it lives,
/// so that a request whose stream is reset still ends.
struct InFlight(Arc<Connection>, Arc<Metrics>);

impl InFlight {
    fn start(connection: Arc<Connection>, metrics: Arc<Metrics>) -> Self {
        connection.request_started();
        metrics.request_in_flight(true);
        Self(connection, metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
        self.1.request_in_flight(false);
    }
}

async fn drive<C>(
    connection: C,
    peer: SocketAddr,
    shutdown: &CancellationToken,
    evict: &CancellationToken,
) where
    C: GracefulConnection,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        _ = evict.cancelled() => {
            tracing::debug!(%peer, "idle connection closed to make room (listen.max_connections)");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The hyper-util connection future, named so `drive` can serve plain and TLS streams alike.
trait GracefulConnection:
    std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for auto::Connection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        >,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}
