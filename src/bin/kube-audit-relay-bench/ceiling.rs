//! `ceiling`: a deliberately bare forwarder, the physical reference the relay is measured
//! against on the same machine in the same run (`scripts/bench.sh ceiling`).
//!
//! It does only what cannot be left out: HTTPS with required client certificates in (HTTP/1.1
//! and HTTP/2, as the relay), the EventList's `items` split as `RawValue`s, an RFC 5424 header
//! put in front of each, octet framing, and one TLS write per request to the sink, before the
//! 200. No validation beyond what `items` needs, no queue, no dedupe, no metrics, no limits.
//! Each inbound connection gets its own outbound TLS connection (opened at its first request),
//! so inbound connections never wait for each other; HTTP/2 streams of one connection share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_audit_relay::config::ClientAuth;
use kube_audit_relay::tls::{ClientTlsFiles, ServerTlsFiles};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// `ceiling` options.
#[derive(Debug, clap::Args)]
pub struct CeilingOptions {
    /// Address to listen on (port 0: any; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Server certificate.
    #[arg(long)]
    tls_cert: PathBuf,
    /// Server key.
    #[arg(long)]
    tls_key: PathBuf,
    /// CA that client certificates must chain to (required of every client).
    #[arg(long)]
    client_ca: PathBuf,
    /// The sink: host:port of a TLS syslog receiver.
    #[arg(long)]
    to: SocketAddr,
    /// CA of the sink's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Name in the sink's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

#[derive(Deserialize)]
struct EventList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

type Outbound = tokio_rustls::client::TlsStream<TcpStream>;

struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl Target {
    async fn connect(&self) -> std::io::Result<Outbound> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.name.clone(), tcp).await
    }
}

/// Serves until the process is killed.
pub async fn run(o: CeilingOptions) -> anyhow::Result<()> {
    let server = kube_audit_relay::tls::server_config(&ServerTlsFiles {
        cert: o.tls_cert,
        key: o.tls_key,
        client_ca: Some(o.client_ca),
        client_auth: ClientAuth::Required,
    })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let client = kube_audit_relay::tls::client_config(&ClientTlsFiles {
        label: "ceiling".into(),
        ca: Some(o.ca),
        identity: None,
        pin: None,
    })?;
    let target = Arc::new(Target {
        addr: o.to,
        name: ServerName::try_from(o.server_name).context("--server-name")?,
        connector: tokio_rustls::TlsConnector::from(client),
    });
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let prefix: Arc<str> = format!(" {hostname} kube-apiserver - - - ").into();
    let listener = TcpListener::bind(o.listen).await?;
    println!(
        "{}",
        serde_json::json!({ "kind": "ceiling", "listening": listener.local_addr()?.to_string() })
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (acceptor, target, prefix) = (acceptor.clone(), target.clone(), prefix.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let out: Arc<Mutex<Option<Outbound>>> = Arc::new(Mutex::new(None));
            let outbound = out.clone();
            let service = hyper::service::service_fn(move |request| {
                let (out, target, prefix) = (out.clone(), target.clone(), prefix.clone());
                async move {
                    let status = match forward(request, &out, &target, &prefix).await {
                        Ok(()) => hyper::StatusCode::OK,
                        Err(e) => {
                            eprintln!("ceiling: {e:#}");
                            hyper::StatusCode::SERVICE_UNAVAILABLE
                        }
                    };
                    let mut response = hyper::Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
            let taken = outbound.lock().await.take();
            if let Some(stream) = taken {
                close(stream).await;
            }
        });
    }
}

/// Ends an outbound connection so that the sink reads everything written: close_notify, then
/// read until the sink closes. Dropped instead, the socket would still hold the sink's unread
/// session tickets, and closing a socket with unread data sends a reset, which discards what
/// the sink had not read yet (a few dozen events short in 2 of 19 runs).
async fn close(mut stream: Outbound) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    out: &Mutex<Option<Outbound>>,
    target: &Target,
    prefix: &str,
) -> anyhow::Result<()> {
    let body = request.into_body().collect().await?.to_bytes();
    let list: EventList<'_> = serde_json::from_slice(&body)?;
    let timestamp = kube_audit_relay::syslog::timestamp::now();
    let mut frames = Vec::with_capacity(body.len() + list.items.len() * 96);
    for item in &list.items {
        let len = b"<110>1 ".len() + timestamp.len() + prefix.len() + item.get().len();
        frames.extend_from_slice(len.to_string().as_bytes());
        frames.extend_from_slice(b" <110>1 ");
        frames.extend_from_slice(timestamp.as_bytes());
        frames.extend_from_slice(prefix.as_bytes());
        frames.extend_from_slice(item.get().as_bytes());
    }
    let mut out = out.lock().await;
    if out.is_none() {
        *out = Some(target.connect().await?);
    }
    if let Some(stream) = out.as_mut() {
        let written = match stream.write_all(&frames).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        if written.is_err() {
            *out = None;
        }
        written?;
    }
    Ok(())
}
