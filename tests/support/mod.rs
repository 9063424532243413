//! Test harness: the real relay binary, a real HTTPS client, a frame-collecting sink, and
//! real rsyslog / syslog-ng receivers, all on loopback with their own ports and temp dirs.
//! Every process started here is stopped by its pid when its handle is dropped.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

pub mod load;
pub mod receivers;

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_audit_relay::config::Framing;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The checked-in dev certificates.
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

pub fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

pub fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Whether interop tests must find their receivers (CI and the test script) or may skip.
pub fn interop_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var("KAR_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Skips (by hand) or fails (CI) when a receiver is missing.
pub fn missing_receiver(what: &str) {
    if interop_required() {
        panic!(
            "{what} not found, and interop tests are required here (CI or KAR_REQUIRE_INTEROP=1); run scripts/test.sh"
        );
    }
    eprintln!("SKIPPED: {what} not found; run scripts/test.sh to install the test receivers");
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

// ------------------------------------------------------------------ the relay binary

/// A running `kube-audit-relay run --config FILE`.
pub struct Relay {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Relay {
    /// Starts the relay with `config` (TOML). `listen.address` should use port 0; the bound
    /// address is read from the readiness log line.
    pub fn start(config: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    /// Starts the relay in an existing directory (to restart on the same queue).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Relay {
        let config_path = dir.path().join("relay.toml");
        // Tests run in parallel: the admin listener takes any free port unless a test sets one.
        let config = if config.contains("[admin]") {
            config.to_owned()
        } else {
            format!("{config}\n[admin]\naddress = \"127.0.0.1:0\"\n")
        };
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
            .args(["run", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info,kube_audit_relay=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(format!("STDOUT {line}"));
            }
        });
        let mut addr = None;
        let ready = wait_until(Duration::from_secs(20), || {
            let logs = logs.lock().unwrap();
            addr = logs
                .iter()
                .find(|l| l.contains("webhook listener ready"))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
                .and_then(|a| a.parse().ok());
            addr.is_some() || child.try_wait().ok().flatten().is_some()
        });
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "relay did not become ready (ready={ready}); logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        let admin = logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("admin listener ready"))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
            })
            .and_then(|a| a.parse().ok());
        Relay {
            child: Some(child),
            addr,
            admin,
            logs,
            dir,
            config_path,
        }
    }

    /// The admin listener's `/metrics`, parsed into `name{labels} -> value`.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let admin = self.admin.expect("admin listener");
        let r = request(
            admin,
            &ClientOptions::default(),
            "GET",
            "/metrics",
            None,
            Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        r.body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.has_log(needle))
    }

    /// Lines the stdout destination wrote.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("STDOUT ").map(str::to_owned))
            .collect()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        signal(child.id(), "TERM");
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Hands over the directory after the process has exited.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------ HTTP(S) client

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
    pub fn https(identity: Option<(&str, &str)>, http2: bool) -> Self {
        Self {
            ca: Some(cert("ca.crt")),
            identity: identity.map(|(c, k)| (cert(c), cert(k))),
            http2,
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

/// Sends one request on a new connection.
pub async fn request(
    addr: SocketAddr,
    options: &ClientOptions,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<HttpResponse, ClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError(format!("connect: {e}")))?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    match &options.ca {
        None => send(TokioIo::new(tcp), options.http2, req, None).await,
        Some(_) => {
            let connector = tokio_rustls::TlsConnector::from(client_tls_config(options));
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| ClientError(format!("tls: {e}")))?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            send(TokioIo::new(tls), options.http2, req, alpn).await
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
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(err)?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        alpn,
    })
}

/// POSTs a body over plain HTTP and asserts the answer is 200.
pub async fn post_ok(addr: SocketAddr, body: Vec<u8>) -> HttpResponse {
    let r = post_batch(addr, &ClientOptions::default(), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

/// The first `n` corpus events whose item is shorter than `max_len` bytes.
pub fn small_events(max_len: usize, n: usize) -> Vec<CorpusEvent> {
    all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < max_len)
        .take(n)
        .collect()
}

/// POSTs an EventList body as the apiserver does (`?timeout=30s`, application/json).
pub async fn post_batch(
    addr: SocketAddr,
    options: &ClientOptions,
    body: Vec<u8>,
) -> Result<HttpResponse, ClientError> {
    request(
        addr,
        options,
        "POST",
        "/?timeout=30s",
        Some("application/json"),
        body,
    )
    .await
}

// ------------------------------------------------------------------ corpus

/// One event of the corpus, without top-level `kind`/`apiVersion` (as list items are sent).
#[derive(Debug, Clone)]
pub struct CorpusEvent {
    /// The item JSON as put in a batch.
    pub item: String,
    pub audit_id: String,
    pub stage: String,
    pub value: serde_json::Value,
}

impl CorpusEvent {
    /// The MSG the relay must write for this item.
    pub fn expected_msg(&self) -> String {
        format!(
            "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",{}",
            &self.item[1..]
        )
    }

    /// Severity per DESIGN §3, computed independently of the relay's code.
    pub fn expected_severity(&self) -> u8 {
        let code = self
            .value
            .pointer("/responseStatus/code")
            .and_then(serde_json::Value::as_i64);
        let verb = self
            .value
            .get("verb")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if self.stage == "Panic" {
            2
        } else if code.is_some_and(|c| c >= 500) {
            3
        } else if matches!(code, Some(401 | 403)) {
            4
        } else if code.is_some_and(|c| (400..500).contains(&c))
            || ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
        {
            5
        } else {
            6
        }
    }

    pub fn expected_timestamp(&self) -> Option<String> {
        ["stageTimestamp", "requestReceivedTimestamp", "timestamp"]
            .iter()
            .find_map(|k| {
                self.value
                    .get(*k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
    }
}

struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    v.push((k, m.next_value()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Removes top-level `kind` and `apiVersion`, keeping every other byte and the key order.
pub fn as_list_item(event: &str) -> String {
    let members: Members<'_> = serde_json::from_str(event).unwrap();
    let parts: Vec<String> = members
        .0
        .iter()
        .filter(|(k, _)| k != "kind" && k != "apiVersion")
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.get()))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn corpus_event(item: String) -> CorpusEvent {
    let value: serde_json::Value = serde_json::from_str(&item).unwrap();
    CorpusEvent {
        audit_id: value["auditID"].as_str().unwrap().to_owned(),
        stage: value["stage"].as_str().unwrap().to_owned(),
        item,
        value,
    }
}

/// All events of a `.jsonl` corpus file, as list items.
pub fn corpus(file: &str) -> Vec<CorpusEvent> {
    std::fs::read_to_string(data_file(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| corpus_event(as_list_item(l)))
        .collect()
}

/// Every corpus event, each (auditID, stage) once (the Falco set repeats a few on purpose).
pub fn all_corpus_events() -> Vec<CorpusEvent> {
    let mut seen = std::collections::HashSet::new();
    corpus("openshift-cluster-logging-operator.jsonl")
        .into_iter()
        .chain(corpus("falcosecurity-falco.jsonl"))
        .filter(|e| seen.insert((e.audit_id.clone(), e.stage.clone())))
        .collect()
}

/// The items of a captured webhook body.
pub fn captured_items(file: &str) -> (Vec<u8>, Vec<CorpusEvent>) {
    let body = std::fs::read(data_file(file)).unwrap();
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
    }
    let list: List<'_> = serde_json::from_slice(&body).unwrap();
    let items = list
        .items
        .iter()
        .map(|i| corpus_event(i.get().to_owned()))
        .collect();
    (body, items)
}

/// A webhook body as kube-apiserver serialises it (compact, trailing newline).
pub fn eventlist(events: &[CorpusEvent]) -> Vec<u8> {
    let items: Vec<&str> = events.iter().map(|e| e.item.as_str()).collect();
    format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}\n",
        items.join(",")
    )
    .into_bytes()
}

// ------------------------------------------------------------------ a frame-collecting sink

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

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        wait_until(timeout, || self.count() >= n);
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

/// Checks one received message against its source event, field by field; returns MSG.
pub fn check_message(raw: &[u8], event: &CorpusEvent, hostname: &str) {
    let strict = kube_audit_relay::syslog::parse_strict(raw).unwrap_or_else(|e| {
        panic!(
            "not strict RFC 5424 ({e}): {}",
            String::from_utf8_lossy(raw)
        )
    });
    assert_eq!(
        strict.pri,
        13 * 8 + event.expected_severity(),
        "PRI of {}",
        event.audit_id
    );
    if let Some(ts) = event.expected_timestamp() {
        assert_eq!(strict.timestamp, ts, "TIMESTAMP of {}", event.audit_id);
    }
    assert_eq!(strict.hostname, hostname);
    assert_eq!(strict.app_name, "kube-apiserver");
    assert_eq!(strict.procid, "-");
    assert_eq!(strict.msgid, event.stage);
    assert_eq!(strict.structured_data, "-");
    assert!(!strict.bom);
    assert_same(
        std::str::from_utf8(strict.msg).unwrap(),
        &event.expected_msg(),
        &format!("MSG of {}", event.audit_id),
    );
    let text = std::str::from_utf8(raw).unwrap();
    let loose = syslog_loose::parse_message(text, syslog_loose::Variant::RFC5424);
    assert_eq!(loose.protocol, syslog_loose::Protocol::RFC5424(1));
    assert_eq!(loose.hostname, Some(hostname));
    assert_eq!(loose.appname, Some("kube-apiserver"));
    assert_eq!(loose.msgid, Some(event.stage.as_str()));
    assert_same(loose.msg, &event.expected_msg(), "syslog_loose MSG");
}

/// Asserts two long strings are equal, reporting the first difference with a short context
/// instead of both strings.
pub fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let ctx = |s: &str| {
        s.get(at.saturating_sub(40)..(at + 40).min(s.len()))
            .unwrap_or("(not at a char boundary)")
            .to_owned()
    };
    panic!(
        "{what}: differs at byte {at} (lengths {} vs {}):\n got: …{}…\nwant: …{}…",
        got.len(),
        want.len(),
        ctx(got),
        ctx(want)
    );
}

/// Audit ID of a rendered message (from its MSG).
pub fn audit_id_of(raw: &[u8]) -> String {
    let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
    let v: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
    format!(
        "{}/{}",
        v["auditID"].as_str().unwrap(),
        v["stage"].as_str().unwrap()
    )
}
