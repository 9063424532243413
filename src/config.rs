//! Configuration: the TOML file parsed once into typed values.
//!
//! Every limit and timeout is a named key with a default written next to it (and in
//! `config.example.toml`). Unknown keys are errors. Errors name the file, the key and what
//! is wrong, so that a typo is caught at start-up rather than at the first audit batch.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type or range.
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        /// The config file (or `<built-in>`).
        file: PathBuf,
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration of one relay process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HOSTNAME of every syslog record; the machine's host name when unset.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// The webhook listener.
    #[serde(default)]
    pub listen: ListenConfig,
    /// How events become syslog records.
    #[serde(default)]
    pub syslog: SyslogConfig,
    /// The boundary between the HTTP side and the senders.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Duplicate suppression on (`auditID`, `stage`).
    #[serde(default)]
    pub dedupe: DedupeConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where events go; `stdout` when none is given.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// Keep/drop rules, first match decides.
    #[serde(default, rename = "filter")]
    pub filters: Vec<crate::filter::FilterRule>,
    /// JSON pointers to redact before events are stored.
    #[serde(default)]
    pub redact: Vec<crate::filter::RedactRule>,
}

/// `client_auth`: whether the webhook listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address to bind. Default `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Exact URL path that accepts batches; the query string is ignored. Default `/`.
    pub path: String,
    /// Server certificate chain (PEM). HTTPS is served when this and `tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`. Default: `required` when `client_ca` is set, else `none`.
    pub client_auth: Option<ClientAuth>,
    /// Largest accepted request body. Default 64 MiB.
    pub max_body_bytes: ByteSize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list). Default 64 KiB.
    pub max_header_bytes: ByteSize,
    /// Open connections at most; further ones wait in the kernel backlog. Default 1024.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection. Default 64.
    pub max_streams_per_connection: u32,
    /// Time allowed for the TLS handshake. Default 10s.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a request head (HTTP/1.1). Default 10s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time allowed to receive the body and store the batch; below the apiserver's 30s. Default 25s.
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
    pub token_file: Option<PathBuf>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/".to_owned(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_auth: None,
            max_body_bytes: ByteSize(64 << 20),
            max_header_bytes: ByteSize(64 << 10),
            max_connections: 1024,
            max_streams_per_connection: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(25),
            retry_after_seconds: 2,
            tls_reload_interval: Duration::from_secs(10),
            token_file: None,
        }
    }
}

impl ListenConfig {
    /// The effective client-auth mode (see [`ListenConfig::client_auth`]).
    pub fn effective_client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or(if self.client_ca.is_some() {
            ClientAuth::Required
        } else {
            ClientAuth::None
        })
    }

    /// Whether the listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls_cert.is_some()
    }
}

/// `[syslog]`: rendering of RFC 5424 records. Rendered once per event, before the queue, so
/// these settings apply to every destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// Syslog facility 0-23. Default 13 (log audit).
    pub facility: u8,
    /// APP-NAME. Default `kube-apiserver`.
    pub app_name: String,
    /// IANA private enterprise number; when set, records carry `[k8saudit@PEN ...]` SD.
    pub enterprise_id: Option<u32>,
    /// Put a UTF-8 BOM before MSG (RFC 5424 §6.4). Default false: it breaks Logstash grok.
    pub bom: bool,
    /// Largest record; larger events lose request/response objects, then are dropped. Default 64 KiB.
    pub max_message_bytes: ByteSize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            facility: 13,
            app_name: "kube-apiserver".to_owned(),
            enterprise_id: None,
            bom: false,
            max_message_bytes: ByteSize(64 << 10),
        }
    }
}

/// `queue.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Bounded memory: lost on crash, for sidecars that accept it.
    Memory,
    /// Append-only segment files with group-committed fsync.
    Disk,
}

/// `[queue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `memory` or `disk`. Default `disk`.
    pub kind: QueueKind,
    /// Directory of the disk queue. Default `./data`.
    pub data_dir: PathBuf,
    /// Stored bytes at most; above it requests get 503. Default 1 GiB.
    pub max_bytes: ByteSize,
    /// Size at which a new segment file is started, at most `max_bytes / 8`. Default 64 MiB.
    pub segment_bytes: ByteSize,
    /// What a full queue does: `reject` (503, the default: nothing acknowledged is ever lost)
    /// or `drop_oldest` (delete the oldest undelivered events to make room; counted and logged).
    pub when_full: WhenFull,
}

/// `queue.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new batches with 503 + Retry-After.
    Reject,
    /// Make room by deleting the oldest stored events (they are lost; counted and logged).
    DropOldest,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Disk,
            data_dir: PathBuf::from("data"),
            when_full: WhenFull::Reject,
            max_bytes: ByteSize(1 << 30),
            segment_bytes: ByteSize(64 << 20),
        }
    }
}

/// `[dedupe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Remembered (`auditID`, `stage`) pairs; 0 turns deduplication off. Default 100 000.
    pub max_entries: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long senders keep delivering after SIGTERM. Default 10s.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`; `"off"` disables it.
    /// Default `127.0.0.1:9090`.
    #[serde(deserialize_with = "optional_address")]
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

/// `framing`: how records are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `LEN SP MSG` (RFC 5425 / RFC 6587 octet counting).
    Octet,
    /// `MSG LF` (Logstash `tcp`, syslog-ng `network()`).
    Lf,
}

/// `format`: the syslog message format written to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 5424 (the relay's own record).
    Rfc5424,
    /// RFC 3164 (BSD syslog), converted at send time.
    Rfc3164,
}

/// `[[destination]]`: one syslog receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Name used in logs, metrics and the cursor file.
    pub name: String,
    /// `tls://host:port`, `tcp://host:port`, `udp://host:port` or `stdout`.
    pub url: String,
    /// CA bundle for the receiver's certificate; the system roots when unset (TLS only).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to the receiver (TLS only).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (TLS only).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Name used for SNI and certificate verification instead of the URL host (TLS only).
    #[serde(default)]
    pub server_name: Option<String>,
    /// SHA-256 of the receiver's certificate (64 hex digits or base64); when set, only that
    /// certificate is accepted, on top of normal verification (TLS only).
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// `octet` (default) or `lf`; ignored for `udp://` (one record per datagram).
    #[serde(default = "default_framing")]
    pub framing: Framing,
    /// `rfc5424` (default) or `rfc3164` for old receivers.
    #[serde(default = "default_format")]
    pub format: Format,
    /// Largest datagram for `udp://`; larger records are truncated by the apiserver rule, or
    /// dropped and counted. Default 8 KiB (rsyslog's imudp default).
    #[serde(default = "default_max_datagram")]
    pub max_datagram_bytes: ByteSize,
    /// Time allowed for TCP connect plus TLS handshake. Default 10s.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one batch write; a stalled receiver is reconnected. Default 30s.
    #[serde(default = "default_write_timeout", with = "duration")]
    pub write_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, with jitter. Default 100ms.
    #[serde(default = "default_backoff_initial", with = "duration")]
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default 30s.
    #[serde(default = "default_backoff_max", with = "duration")]
    pub backoff_max: Duration,
    /// How long a written record must stay on a healthy connection before it counts as
    /// delivered (a TLS 1.3 receiver reports a rejected certificate only after the fact).
    /// Default 500ms.
    #[serde(default = "default_confirm_after", with = "duration")]
    pub confirm_after: Duration,
    /// Bytes written per batch at most. Default 256 KiB.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,
}

fn default_framing() -> Framing {
    Framing::Octet
}
fn default_format() -> Format {
    Format::Rfc5424
}
fn default_max_datagram() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_confirm_after() -> Duration {
    Duration::from_millis(500)
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(256 << 10)
}

impl DestinationConfig {
    /// The stdout destination used when the config names none.
    pub fn stdout() -> Self {
        Self {
            name: "stdout".to_owned(),
            url: "stdout".to_owned(),
            ca: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            pin_sha256: None,
            framing: Framing::Lf,
            format: Format::Rfc5424,
            max_datagram_bytes: default_max_datagram(),
            connect_timeout: default_connect_timeout(),
            write_timeout: default_write_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            confirm_after: Duration::ZERO,
            batch_bytes: default_batch_bytes(),
        }
    }

    /// The parsed `url`.
    ///
    /// # Errors
    /// When the URL is not one of the accepted forms.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        Endpoint::parse(&self.url)
    }

    /// Names of certificate keys that are set; used to warn when a plain target ignores them.
    pub fn tls_keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.ca.is_some() {
            keys.push("ca");
        }
        if self.client_cert.is_some() {
            keys.push("client_cert");
        }
        if self.client_key.is_some() {
            keys.push("client_key");
        }
        if self.server_name.is_some() {
            keys.push("server_name");
        }
        if self.pin_sha256.is_some() {
            keys.push("pin_sha256");
        }
        keys
    }
}

/// Transport of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with TLS (RFC 5425).
    Tls,
    /// Plain TCP (RFC 6587).
    Tcp,
    /// UDP, one datagram per record (RFC 5426).
    Udp,
    /// HTTP POST of newline-delimited JSON events.
    Http,
    /// HTTPS POST of newline-delimited JSON events.
    Https,
}

/// Where a destination's URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A network receiver.
    Network {
        /// TLS or plain.
        transport: Transport,
        /// Host name or IP address (without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// URL path (HTTP destinations; `/` otherwise).
        path: String,
    },
    /// The process's standard output, one record per line.
    Stdout,
}

impl Endpoint {
    /// Parses `tls://host:port`, `tcp://host:port` or `stdout`.
    ///
    /// # Errors
    /// A message saying what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "stdout" {
            return Ok(Self::Stdout);
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("`{url}` is not `tls://host:port`, `tcp://host:port` or `stdout`")
        })?;
        let transport = match scheme {
            "tls" => Transport::Tls,
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            "http" => Transport::Http,
            "https" => Transport::Https,
            other => {
                return Err(format!(
                    "unsupported scheme `{other}` (use tls, tcp, udp, http, https or stdout)"
                ));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) if matches!(transport, Transport::Http | Transport::Https) => {
                (&rest[..i], &rest[i..])
            }
            _ => (rest.trim_end_matches('/'), "/"),
        };
        let default_port = match transport {
            Transport::Http => Some("80"),
            Transport::Https => Some("443"),
            _ => None,
        };
        let (host, port) = match authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            Some((h, p)) => (h, p),
            None => (
                authority,
                default_port.ok_or_else(|| format!("`{url}` has no port"))?,
            ),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("`{url}` needs a host and a non-zero port"));
        }
        Ok(Self::Network {
            transport,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// A byte count, written as an integer or as a string such as `"64MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The count as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_byte_size(&s).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 65536, \"64KiB\" or \"1GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Serde helpers for durations written as `"30s"`, `"250ms"`, `"5m"`, `"1h"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// Parses `"30s"`, `"250ms"`, `"5m"` or `"1h"`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as \"250ms\", \"30s\" or \"5m\""))?;
        match unit {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => Ok(Duration::from_secs(n)),
            "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
            "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
            _ => Err(format!(
                "`{s}` has no unit: write e.g. \"250ms\", \"30s\", \"5m\" or \"1h\""
            )),
        }
    }

    /// Formats a duration the way [`parse`] reads it.
    pub fn format(d: Duration) -> String {
        if d.subsec_millis() != 0 || d.is_zero() {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    /// Serde `deserialize_with` entry point.
    ///
    /// # Errors
    /// When the value is not a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(de::Error::custom)
    }

    /// Serde `serialize_with` entry point (unused by the parser, kept for symmetry).
    ///
    /// # Errors
    /// Never, apart from the serializer's own errors.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

impl Config {
    /// The configuration used by `run` without `--config`: plain HTTP on 127.0.0.1:8080,
    /// events to stdout, the durable disk queue in `./data` (as `queue.data_dir` defaults).
    pub fn builtin_default() -> Self {
        Self {
            cluster_name: None,
            listen: ListenConfig::default(),
            syslog: SyslogConfig::default(),
            // Durable even here: the disk queue in ./data (created 0700), as for a config file.
            queue: QueueConfig::default(),
            dedupe: DedupeConfig::default(),
            shutdown: ShutdownConfig::default(),
            admin: AdminConfig::default(),
            destinations: vec![DestinationConfig::stdout()],
            filters: Vec::new(),
            redact: Vec::new(),
        }
    }

    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and what is wrong.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Parses and checks config text; `file` is only used in error messages and to resolve
    /// relative certificate paths against the working directory (not the file's directory,
    /// matching what operators type on the command line).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and what is wrong.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.message().to_owned();
            let line = inner.span().map(|span| {
                1 + text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            });
            ConfigError::Invalid {
                file: file.to_owned(),
                key: if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                },
                reason: match line {
                    Some(line) => format!("{reason} (line {line})"),
                    None => reason,
                },
            }
        })?;
        if config.destinations.is_empty() {
            config.destinations.push(DestinationConfig::stdout());
        }
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let l = &self.listen;
        if !l.path.starts_with('/') {
            return Err(bad(
                "listen.path",
                format!("`{}` must start with `/`", l.path),
            ));
        }
        match (&l.tls_cert, &l.tls_key) {
            (Some(_), None) => {
                return Err(bad(
                    "listen.tls_key",
                    "must be set with listen.tls_cert".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "listen.tls_cert",
                    "must be set with listen.tls_key".into(),
                ));
            }
            _ => {}
        }
        if !l.is_tls()
            && (l.client_ca.is_some() || l.client_auth.is_some_and(|a| a != ClientAuth::None))
        {
            return Err(bad(
                "listen.client_ca",
                "client certificates need HTTPS: set listen.tls_cert and listen.tls_key".into(),
            ));
        }
        if l.effective_client_auth() != ClientAuth::None && l.client_ca.is_none() {
            return Err(bad(
                "listen.client_ca",
                "required when client_auth is optional or required".into(),
            ));
        }
        for (key, path) in [
            ("listen.tls_cert", &l.tls_cert),
            ("listen.tls_key", &l.tls_key),
            ("listen.client_ca", &l.client_ca),
            ("listen.token_file", &l.token_file),
        ] {
            check_readable(path.as_deref()).map_err(|r| bad(key, r))?;
        }
        if l.max_header_bytes.0 < 8192 {
            return Err(bad(
                "listen.max_header_bytes",
                "must be at least 8192".into(),
            ));
        }
        if l.max_connections == 0 {
            return Err(bad("listen.max_connections", "must be at least 1".into()));
        }
        if l.max_streams_per_connection == 0 {
            return Err(bad(
                "listen.max_streams_per_connection",
                "must be at least 1".into(),
            ));
        }
        if !(1..=30).contains(&l.retry_after_seconds) {
            return Err(bad(
                "listen.retry_after_seconds",
                "must be between 1 and 30".into(),
            ));
        }
        if l.request_timeout.is_zero() || l.request_timeout >= Duration::from_secs(30) {
            return Err(bad(
                "listen.request_timeout",
                "must be above 0 and below 30s, the apiserver's per-attempt timeout".into(),
            ));
        }
        let s = &self.syslog;
        if s.facility > 23 {
            return Err(bad(
                "syslog.facility",
                format!("{} is not a facility (0 to 23)", s.facility),
            ));
        }
        if s.app_name.is_empty()
            || s.app_name.len() > 48
            || !s.app_name.bytes().all(|b| (33..=126).contains(&b))
        {
            return Err(bad(
                "syslog.app_name",
                "must be 1 to 48 printable ASCII characters without spaces".into(),
            ));
        }
        if s.max_message_bytes.0 < 480 {
            return Err(bad(
                "syslog.max_message_bytes",
                "must be at least 480 (RFC 5424 minimum)".into(),
            ));
        }
        if let Some(name) = &self.cluster_name
            && (name.is_empty()
                || name.len() > 255
                || !name.bytes().all(|b| (33..=126).contains(&b)))
        {
            return Err(bad(
                "cluster_name",
                "must be 1 to 255 printable ASCII characters without spaces".into(),
            ));
        }
        if self.queue.max_bytes.0 < self.syslog.max_message_bytes.0 {
            return Err(bad(
                "queue.max_bytes",
                "must be at least syslog.max_message_bytes".into(),
            ));
        }
        if self.queue.segment_bytes.0 < 4096 {
            return Err(bad("queue.segment_bytes", "must be at least 4096".into()));
        }
        for (i, r) in self.redact.iter().enumerate() {
            r.segments()
                .map_err(|reason| bad(&format!("redact[{i}].pointer"), reason))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let key = |k: &str| format!("destination[{i}].{k}");
            if d.name.is_empty()
                || !d
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    &key("name"),
                    "must be non-empty letters, digits, `-` or `_`".into(),
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(bad(&key("name"), format!("`{}` is used twice", d.name)));
            }
            let endpoint = d.endpoint().map_err(|r| bad(&key("url"), r))?;
            if matches!(
                endpoint,
                Endpoint::Network {
                    transport: Transport::Tls | Transport::Https,
                    ..
                }
            ) {
                for (k, path) in [
                    ("ca", &d.ca),
                    ("client_cert", &d.client_cert),
                    ("client_key", &d.client_key),
                ] {
                    check_readable(path.as_deref()).map_err(|r| bad(&key(k), r))?;
                }
                if let Some(pin) = &d.pin_sha256 {
                    crate::tls::parse_pin(pin).map_err(|r| bad(&key("pin_sha256"), r))?;
                }
                if d.client_cert.is_some() != d.client_key.is_some() {
                    return Err(bad(
                        &key("client_key"),
                        "client_cert and client_key go together".into(),
                    ));
                }
            }
            if d.max_datagram_bytes.0 < 480 || d.max_datagram_bytes.0 > 65_507 {
                return Err(bad(
                    &key("max_datagram_bytes"),
                    "must be between 480 and 65507".into(),
                ));
            }
            if d.batch_bytes.0 == 0 {
                return Err(bad(&key("batch_bytes"), "must be above 0".into()));
            }
            if d.backoff_initial.is_zero() || d.backoff_max < d.backoff_initial {
                return Err(bad(
                    &key("backoff_max"),
                    "backoff_initial must be above 0 and at most backoff_max".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_readable(path: Option<&Path>) -> Result<(), String> {
    match path {
        Some(p) => std::fs::metadata(p)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", p.display())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults_and_stdout() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.listen.max_body_bytes.0, 64 << 20);
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.destinations[0].endpoint().unwrap(), Endpoint::Stdout);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("[listen]\naddress = \"127.0.0.1:1\"\nmax_bodybytes = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml: key `listen"), "{msg}");
        assert!(msg.contains("max_bodybytes"), "{msg}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = parse("[[destination]]\nname = \"a\"\nurl = \"ftp://x:1\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml: key `destination[0].url`: unsupported scheme `ftp` (use tls, tcp, udp, http, https or stdout)"
        );
        let err = parse("[listen]\nrequest_timeout = \"30\"\n").unwrap_err();
        assert!(err.to_string().contains("listen.request_timeout"), "{err}");
        assert!(err.to_string().contains("has no unit"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_byte_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_byte_size("512").unwrap(), 512);
        assert!(parse_byte_size("1TiB").is_err());
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(duration::parse("5m").unwrap(), Duration::from_secs(300));
        assert!(duration::parse("5").is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("tls://[::1]:6514").unwrap(),
            Endpoint::Network {
                transport: Transport::Tls,
                host: "::1".into(),
                port: 6514,
                path: "/".into()
            }
        );
        assert_eq!(
            Endpoint::parse("https://logstash.example/audit/in").unwrap(),
            Endpoint::Network {
                transport: Transport::Https,
                host: "logstash.example".into(),
                port: 443,
                path: "/audit/in".into()
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:8080").unwrap(),
            Endpoint::Network {
                transport: Transport::Http,
                host: "::1".into(),
                port: 8080,
                path: "/".into()
            }
        );
        assert!(Endpoint::parse("tcp://host").is_err());
        assert!(Endpoint::parse("tcp://:514").is_err());
    }
}
