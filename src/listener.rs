//! The webhook listener: accepts connections under a connection cap, runs the TLS handshake
//! with a deadline, and serves HTTP/1.1 and HTTP/2 on each connection until shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::ReloadingServerConfig;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenConfig;
use crate::webhook::Webhook;

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
}

impl From<&ListenConfig> for ConnectionLimits {
    fn from(l: &ListenConfig) -> Self {
        Self {
            max_connections: l.max_connections,
            tls_handshake_timeout: l.tls_handshake_timeout,
            header_read_timeout: l.header_read_timeout,
            max_header_bytes: l.max_header_bytes.as_usize(),
            max_streams: l.max_streams_per_connection,
        }
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled. Connection tasks are
/// spawned on `connections`, so the caller can wait for in-flight requests to finish; on
/// shutdown every connection is asked to close gracefully (HTTP/2 GOAWAY, HTTP/1.1
/// `Connection: close` after the current request).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
    webhook: Arc<Webhook>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    loop {
        // The permit is taken before accept: past the cap, connections wait in the backlog.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
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
        let (tls, webhook, http, shutdown, limits) = (
            tls.clone(),
            webhook.clone(),
            http.clone(),
            shutdown.clone(),
            limits.clone(),
        );
        connections.spawn(async move {
            serve_connection(stream, peer, tls, webhook, http, &limits, shutdown).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ReloadingServerConfig>>,
    webhook: Arc<Webhook>,
    http: auto::Builder<TokioExecutor>,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let metrics = webhook.metrics().clone();
    let service = service_fn(move |request| {
        let webhook = webhook.clone();
        async move { Ok::<_, Infallible>(webhook.handle(request).await) }
    });
    match tls {
        None => {
            drive(
                http.serve_connection(TokioIo::new(stream), service),
                peer,
                shutdown,
            )
            .await
        }
        Some(reloading) => {
            let acceptor = reloading.acceptor();
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        // rustls reports a plain-text request as a record of an invalid type.
                        let hint = if e.to_string().contains("InvalidContentType") { " (plain HTTP sent to the HTTPS port?)" } else { "" };
                        tracing::warn!(%peer, reason = %e, "TLS handshake refused{hint}");
                        metrics.tls_failure("server", &e);
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, reason = "timeout", "TLS handshake refused");
                        metrics.tls_failure("server", &"timeout");
                        return;
                    }
                },
            };
            drive(
                http.serve_connection(TokioIo::new(stream), service),
                peer,
                shutdown,
            )
            .await;
        }
    }
}

async fn drive<C>(connection: C, peer: SocketAddr, shutdown: CancellationToken)
where
    C: GracefulConnection,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
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
