//! A small HTTP(S) client for the webhook and admin listeners, over HTTP/1.1 or HTTP/2, with
//! or without a client certificate: `client(addr).options(&o).post(path).json(body).send()`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::cert;

/// How the test client connects to the relay.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `None`: plain HTTP. `Some(ca)`: HTTPS trusting `ca`.
    pub ca: Option<String>,
    /// Client certificate and key.
    pub identity: Option<(String, String)>,
    pub http2: bool,
}

impl ClientOptions {
    /// HTTPS trusting the dev CA, with the named certificate and key from `certs/`.
    pub fn https(identity: Option<(&str, &str)>, http2: bool) -> Self {
        Self {
            ca: Some(cert("ca.crt")),
            identity: identity.map(|(c, k)| (cert(c), cert(k))),
            http2,
        }
    }

    /// Plain HTTP/2 (prior knowledge) when `http2`, else plain HTTP/1.1.
    pub fn plain(http2: bool) -> Self {
        Self {
            http2,
            ..Self::default()
        }
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct ClientError(pub String);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn client_tls_config(options: &ClientOptions) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(options.ca.as_ref().unwrap()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match &options.identity {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if options.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

/// One request on a new connection, built step by step.
pub struct Call {
    addr: SocketAddr,
    options: ClientOptions,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A request to `addr`: plain HTTP/1.1, `GET /` until told otherwise.
pub fn client(addr: SocketAddr) -> Call {
    Call {
        addr,
        options: ClientOptions::default(),
        method: "GET",
        path: "/".into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Call {
    pub fn options(mut self, options: &ClientOptions) -> Self {
        self.options = options.clone();
        self
    }

    pub fn get(self, path: &str) -> Self {
        self.method("GET", path)
    }

    pub fn post(self, path: &str) -> Self {
        self.method("POST", path)
    }

    pub fn method(mut self, method: &'static str, path: &str) -> Self {
        self.method = method;
        self.path = path.to_owned();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn content_type(self, value: &str) -> Self {
        self.header("content-type", value)
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// An `application/json` body.
    pub fn json(self, body: Vec<u8>) -> Self {
        self.content_type("application/json").body(body)
    }

    pub async fn send(self) -> Result<HttpResponse, ClientError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ClientError(format!("connect: {e}")))?;
        let mut req = Request::builder()
            .method(self.method)
            .uri(self.path.as_str())
            .header("host", "localhost");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(self.body))).unwrap();
        match &self.options.ca {
            None => send(TokioIo::new(tcp), self.options.http2, req, None).await,
            Some(_) => {
                let connector = tokio_rustls::TlsConnector::from(client_tls_config(&self.options));
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .map_err(|e| ClientError(format!("tls: {e}")))?;
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                send(TokioIo::new(tls), self.options.http2, req, alpn).await
            }
        }
    }
}

async fn send<I>(
    io: I,
    http2: bool,
    req: Request<Full<Bytes>>,
    alpn: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| ClientError(format!("http: {e}"));
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(err)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(err)?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(err)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(err)?
    };
    read_response(response, alpn).await
}

/// The status, headers and whole body of `response`.
async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
    alpn: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError(format!("http: {e}")))?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        alpn,
    })
}

/// POSTs an EventList body as the apiserver does (`?timeout=30s`, application/json).
pub async fn post_batch(
    addr: SocketAddr,
    options: &ClientOptions,
    body: Vec<u8>,
) -> Result<HttpResponse, ClientError> {
    client(addr)
        .options(options)
        .post("/?timeout=30s")
        .json(body)
        .send()
        .await
}

/// POSTs a body over plain HTTP and asserts the answer is 200.
pub async fn post_ok(addr: SocketAddr, body: Vec<u8>) -> HttpResponse {
    let r = post_batch(addr, &ClientOptions::default(), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

/// One HTTP/2 connection kept open and shared by several tasks, as the kube-apiserver keeps
/// its webhook connection: every request is a stream on it; once it fails, the next request
/// opens a new one (and, behind a load balancer, may land on another replica).
pub struct PersistentH2 {
    addr: SocketAddr,
    options: ClientOptions,
    sender: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    /// Connections opened so far.
    pub connections: std::sync::atomic::AtomicU64,
}

impl PersistentH2 {
    pub fn new(addr: SocketAddr, options: &ClientOptions) -> Self {
        let mut options = options.clone();
        options.http2 = true;
        Self {
            addr,
            options,
            sender: tokio::sync::Mutex::new(None),
            connections: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, ClientError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ClientError(format!("connect: {e}")))?;
        let err = |e: hyper::Error| ClientError(format!("http: {e}"));
        self.connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match &self.options.ca {
            None => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .map_err(err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Some(_) => {
                let connector = tokio_rustls::TlsConnector::from(client_tls_config(&self.options));
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .map_err(|e| ClientError(format!("tls: {e}")))?;
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }

    /// POSTs an EventList body as a stream of the shared connection.
    pub async fn post_batch(&self, body: Vec<u8>) -> Result<HttpResponse, ClientError> {
        let mut sender = {
            let mut slot = self.sender.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let s = self.connect().await?;
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        let req = Request::builder()
            .method("POST")
            .uri("/?timeout=30s")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let err = |e: hyper::Error| ClientError(format!("http: {e}"));
        let result = async {
            let response = sender.send_request(req).await.map_err(err)?;
            read_response(response, Some(b"h2".to_vec())).await
        }
        .await;
        if result.is_err() {
            // A broken connection: the next request opens a new one.
            *self.sender.lock().await = None;
        }
        result
    }
}
