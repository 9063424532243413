//! A TCP or TLS syslog receiver inside the test process: splits frames and keeps each message.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_audit_relay::config::Framing;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

use super::{cert, wait_until};

/// A TCP or TLS syslog receiver in the test process: splits frames, keeps each message.
pub struct Sink {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
    pub errors: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// `tls`: server cert/key and, optionally, a CA that client certificates must chain to.
    pub async fn start(framing: Framing, tls: Option<(&str, &str, Option<&str>)>) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(c, k, ca)| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for c in CertificateDer::pem_file_iter(cert(ca)).unwrap() {
                        roots.add(c.unwrap()).unwrap();
                    }
                    builder.with_client_cert_verifier(
                        rustls::server::WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider,
                        )
                        .build()
                        .unwrap(),
                    )
                }
                None => builder.with_no_client_auth(),
            };
            let config = builder
                .with_single_cert(
                    CertificateDer::pem_file_iter(cert(c))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(cert(k)).unwrap(),
                )
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let messages = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (m, e, n) = (messages.clone(), errors.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (m, e, acceptor) = (m.clone(), e.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => read_frames(stream, framing, m, e).await,
                        Some(a) => match a.accept(stream).await {
                            Ok(s) => read_frames(s, framing, m, e).await,
                            Err(err) => e.lock().unwrap().push(format!("handshake: {err}")),
                        },
                    }
                });
            }
        });
        Sink {
            addr,
            messages,
            errors,
            connections,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Waits until at least `n` messages arrived (or the timeout), then returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        wait_until(timeout, || self.count() >= n).await;
        self.messages.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    mut s: S,
    framing: Framing,
    m: Arc<Mutex<Vec<Vec<u8>>>>,
    e: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            match kube_audit_relay::syslog::next_frame(framing, &buf, 16 << 20) {
                Ok(Some((n, msg))) => {
                    m.lock().unwrap().push(msg.to_vec());
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(err) => {
                    e.lock().unwrap().push(format!("framing: {err}"));
                    return;
                }
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) => {
                e.lock().unwrap().push(format!("read: {err}"));
                return;
            }
        }
    }
}
