//! `[listen]` (the webhook listener) and `[admin]` (health, readiness, metrics).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::units::{self, ByteSize, UrlPath, duration, secs};

/// `client_auth`: whether the webhook listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate is requested and verified when presented.
    Optional,
    /// A client certificate chaining to `client_ca` is required.
    Required,
}

/// `[listen]`: the webhook listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "ListenFile")]
pub struct ListenConfig {
    /// Address to bind. Default `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Exact URL path that accepts batches; the query string is ignored. Default `/`.
    pub path: UrlPath,
    /// Server certificate chain (PEM). HTTPS is served when this and `tls_key` are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`; when the file does not say, `required` if
    /// `client_ca` is set, else `none`.
    pub client_auth: ClientAuth,
    /// Largest accepted request body. Default 64 MiB.
    pub max_body_bytes: ByteSize,
    /// Body bytes turned into records at once, across requests. A request holds its body and
    /// its rendered records together while it is rendered (about twice its size), so this
    /// bounds the memory above the bodies in flight; a request waits for room (within
    /// `request_timeout`), and one larger than this renders alone. Default 32 MiB.
    pub max_rendering_bytes: ByteSize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list), at least 8 KiB.
    /// Default 64 KiB.
    pub max_header_bytes: ByteSize,
    /// Open connections at most. At the cap, a connection that has not finished its TLS
    /// handshake, or one idle between requests, is closed to make room (oldest handshake
    /// first, then the longest idle); only when every connection is busy do new ones wait in
    /// the kernel backlog. Default 1024.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection. Default 64.
    pub max_streams_per_connection: u32,
    /// Largest HTTP/2 frame the relay accepts (SETTINGS_MAX_FRAME_SIZE, 16 KiB to 16 MiB - 1).
    /// The protocol's 16 KiB default cuts a 70 KB batch into five DATA frames, each a wake-up
    /// of the connection's one task that all its streams share; 256 KiB carries a typical
    /// batch in one. Default 256 KiB.
    pub http2_max_frame_size: ByteSize,
    /// Time allowed for the TLS handshake. Default 5s.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a request head (HTTP/1.1). Default 10s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time allowed to receive the body and store the batch; below the apiserver's 30s.
    /// Default 25s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// `Retry-After` seconds sent with 503 when the queue is full (1 to 30). Default 2.
    pub retry_after_seconds: u32,
    /// How often the certificate files are checked for changes (rotation without restart).
    /// Default 10s.
    #[serde(with = "duration")]
    pub tls_reload_interval: Duration,
    /// File holding the bearer token the apiserver must send (kubeconfig `token`); requests
    /// without it get 401. Default: no token check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Bytes of a refused request's body that are read and thrown away so that the client
    /// receives the status: an HTTP/2 client, or an HTTP/1.1 client that did not wait for
    /// `100 Continue`, is still sending when the answer leaves. Beyond it the HTTP/2 stream is
    /// reset, or the HTTP/1.1 connection closed after a lingering close. Default 128 MiB.
    pub discard_body_bytes: ByteSize,
    /// Time allowed for that discarding, and for the lingering close. Default 5s.
    #[serde(with = "duration")]
    pub discard_timeout: Duration,
    /// Client certificates allowed to post (globs over DNS and URI SANs and subject CN); a
    /// certificate that chains to `client_ca` but matches none gets 403. Default: any.
    #[serde(skip_serializing_if = "ClientNames::is_empty")]
    pub allowed_client_names: ClientNames,
}

/// `listen.allowed_client_names`: glob patterns, each non-empty printable ASCII.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ClientNames(Vec<String>);

impl ClientNames {
    /// The patterns (already checked by the parser; tests build them directly).
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// Whether no pattern is set (every client the CA vouches for may post).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patterns.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for ClientNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(d)?;
        for p in &patterns {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(de::Error::custom(format!(
                    "`{p}` is not a name pattern: printable ASCII without spaces, `*` for any run of characters"
                )));
            }
        }
        Ok(Self(patterns))
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenFile::default().into()
    }
}

impl ListenConfig {
    /// Whether the listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls_cert.is_some()
    }
}

/// `[listen]` as written in the file, before `client_auth` gets its default from `client_ca`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ListenFile {
    address: SocketAddr,
    path: UrlPath,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuth>,
    max_body_bytes: ByteSize,
    #[serde(deserialize_with = "units::size_at_least::<_, 65536>")]
    max_rendering_bytes: ByteSize,
    #[serde(deserialize_with = "units::size_at_least::<_, 8192>")]
    max_header_bytes: ByteSize,
    #[serde(deserialize_with = "units::int_between::<_, usize, 1, 1_000_000>")]
    max_connections: usize,
    #[serde(deserialize_with = "units::int_between::<_, u32, 1, 1_000_000>")]
    max_streams_per_connection: u32,
    #[serde(deserialize_with = "units::size_between::<_, 16384, 16777215>")]
    http2_max_frame_size: ByteSize,
    #[serde(deserialize_with = "units::nonzero_duration")]
    tls_handshake_timeout: Duration,
    #[serde(deserialize_with = "units::nonzero_duration")]
    header_read_timeout: Duration,
    #[serde(deserialize_with = "request_timeout")]
    request_timeout: Duration,
    #[serde(deserialize_with = "units::int_between::<_, u32, 1, 30>")]
    retry_after_seconds: u32,
    #[serde(deserialize_with = "units::nonzero_duration")]
    tls_reload_interval: Duration,
    token_file: Option<PathBuf>,
    discard_body_bytes: ByteSize,
    #[serde(with = "duration")]
    discard_timeout: Duration,
    allowed_client_names: ClientNames,
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: UrlPath::literal("/"),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_auth: None,
            max_body_bytes: ByteSize(64 << 20),
            max_rendering_bytes: ByteSize(32 << 20),
            max_header_bytes: ByteSize(64 << 10),
            max_connections: 1024,
            max_streams_per_connection: 64,
            http2_max_frame_size: ByteSize(256 << 10),
            tls_handshake_timeout: secs(5),
            header_read_timeout: secs(10),
            request_timeout: secs(25),
            retry_after_seconds: 2,
            tls_reload_interval: secs(10),
            token_file: None,
            discard_body_bytes: ByteSize(128 << 20),
            discard_timeout: secs(5),
            allowed_client_names: ClientNames::default(),
        }
    }
}

impl From<ListenFile> for ListenConfig {
    fn from(f: ListenFile) -> Self {
        let client_auth = f.client_auth.unwrap_or(if f.client_ca.is_some() {
            ClientAuth::Required
        } else {
            ClientAuth::None
        });
        Self {
            address: f.address,
            path: f.path,
            tls_cert: f.tls_cert,
            tls_key: f.tls_key,
            client_ca: f.client_ca,
            client_auth,
            max_body_bytes: f.max_body_bytes,
            max_rendering_bytes: f.max_rendering_bytes,
            max_header_bytes: f.max_header_bytes,
            max_connections: f.max_connections,
            max_streams_per_connection: f.max_streams_per_connection,
            http2_max_frame_size: f.http2_max_frame_size,
            tls_handshake_timeout: f.tls_handshake_timeout,
            header_read_timeout: f.header_read_timeout,
            request_timeout: f.request_timeout,
            retry_after_seconds: f.retry_after_seconds,
            tls_reload_interval: f.tls_reload_interval,
            token_file: f.token_file,
            discard_body_bytes: f.discard_body_bytes,
            discard_timeout: f.discard_timeout,
            allowed_client_names: f.allowed_client_names,
        }
    }
}

fn request_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = duration::deserialize(d)?;
    if t.is_zero() || t >= secs(30) {
        return Err(de::Error::custom(
            "must be above 0 and below 30s, the apiserver's per-attempt timeout",
        ));
    }
    Ok(t)
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`; `"off"` disables it.
    /// Default `127.0.0.1:9090`.
    #[serde(
        deserialize_with = "optional_address",
        serialize_with = "serialize_optional_address"
    )]
    pub address: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "`{s}` is not an address such as \"127.0.0.1:9090\" or \"off\""
        ))
    })
}

fn serialize_optional_address<S: Serializer>(
    address: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match address {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("off"),
    }
}
