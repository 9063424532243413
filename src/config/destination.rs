//! `[[destination]]`: one receiver, its URL parsed into an [`Endpoint`], its certificate pin
//! into a [`Pin`] and its server name into a `ServerName`, once.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::rules::FilterRule;
use super::units::{self, ByteSize, Name, duration, secs};

/// `framing`: how records are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `LEN SP MSG` (RFC 5425 / RFC 6587 octet counting).
    Octet,
    /// `MSG LF` (Logstash `tcp`, syslog-ng `network()`).
    Lf,
}

/// `oversize`: what happens to a record above the destination's `max_message_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Shorten it by the apiserver's own rule (drop `requestObject` and `responseObject`,
    /// annotate `audit.k8s.io/truncated`); drop it when even that does not fit.
    Truncate,
    /// Drop it (counted, and its auditID logged).
    Drop,
}

/// `format`: the message format written to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 5424 (the relay's own record).
    Rfc5424,
    /// RFC 3164 (BSD syslog), converted at send time.
    Rfc3164,
    /// ArcSight Common Event Format (CEF 0).
    Cef,
    /// IBM QRadar Log Event Extended Format 2.0.
    Leef,
    /// An OCSF API Activity event (JSON).
    Ocsf,
}

impl Format {
    /// Whether this is a SIEM format (the event rewritten, not the syslog record as stored).
    pub fn is_siem(self) -> bool {
        matches!(self, Format::Cef | Format::Leef | Format::Ocsf)
    }
}

/// The scheme of a destination URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
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
    /// RELP (the receiver acknowledges every message), plain TCP.
    Relp,
    /// RELP over TLS.
    RelpTls,
}

impl Scheme {
    const ALL: [Scheme; 7] = [
        Scheme::Tls,
        Scheme::Tcp,
        Scheme::Udp,
        Scheme::Http,
        Scheme::Https,
        Scheme::Relp,
        Scheme::RelpTls,
    ];

    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tls => "tls",
            Scheme::Tcp => "tcp",
            Scheme::Udp => "udp",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Relp => "relp",
            Scheme::RelpTls => "relp+tls",
        }
    }

    /// Whether the connection is encrypted (and so uses `ca`, `client_cert`, ...).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Https | Scheme::RelpTls)
    }

    /// Whether the URL carries a path (HTTP POST targets).
    pub fn has_path(self) -> bool {
        matches!(self, Scheme::Http | Scheme::Https)
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            _ => None,
        }
    }
}

/// Where a destination's URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A network receiver.
    Network {
        /// The URL scheme.
        scheme: Scheme,
        /// Host name or IP address (without brackets).
        host: String,
        /// Port.
        port: u16,
        /// URL path (HTTP destinations; `/` otherwise).
        path: String,
    },
    /// The process's standard output, one record per line.
    Stdout,
}

impl Endpoint {
    /// Parses `tls://host:port`, `tcp://host:port`, `udp://host:port`,
    /// `http(s)://host[:port][/path]` or `stdout`.
    ///
    /// # Errors
    /// A message saying what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "stdout" {
            return Ok(Self::Stdout);
        }
        let names = || {
            Scheme::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not `scheme://host:port` or `stdout`"))?;
        let scheme = Scheme::ALL
            .into_iter()
            .find(|s| s.as_str() == scheme)
            .ok_or_else(|| format!("unsupported scheme `{scheme}` (use {} or stdout)", names()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) if scheme.has_path() => (&rest[..i], &rest[i..]),
            _ => (rest.trim_end_matches('/'), "/"),
        };
        let (host, port) = match authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number"))?,
            ),
            None => (
                authority,
                scheme
                    .default_port()
                    .ok_or_else(|| format!("`{url}` has no port"))?,
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("`{url}` needs a host and a non-zero port"));
        }
        Ok(Self::Network {
            scheme,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The scheme, `None` for stdout.
    pub fn scheme(&self) -> Option<Scheme> {
        match self {
            Self::Network { scheme, .. } => Some(*scheme),
            Self::Stdout => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Network {
                scheme,
                host,
                port,
                path,
            } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(f, "{}://{host}:{port}", scheme.as_str())?;
                if scheme.has_path() && path != "/" {
                    f.write_str(path)?;
                }
                Ok(())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The SHA-256 of a receiver's certificate (DER), written as 64 hex digits (colons allowed)
/// or base64.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// Parses a pin.
    ///
    /// # Errors
    /// When the text is neither form, or not 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        let bytes: Vec<u8> = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| format!("`{text}` is neither 64 hex digits nor base64"))?
        };
        bytes
            .try_into()
            .map(Pin)
            .map_err(|_| "a SHA-256 pin is 32 bytes".to_owned())
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl<'de> Deserialize<'de> for Pin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for Pin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[[destination]]`: one syslog receiver.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Name used in logs, metrics and the cursor file.
    pub name: Name,
    /// `tls://host:port`, `tcp://host:port`, `relp://host:port`, `relp+tls://host:port`,
    /// `udp://host:port`, `http(s)://host/path` or `stdout`.
    pub url: Endpoint,
    /// CA bundle for the receiver's certificate; the system roots when unset (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to the receiver (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Name used for SNI and certificate verification instead of the URL host (TLS only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_server_name"
    )]
    pub server_name: Option<ServerName<'static>>,
    /// SHA-256 of the receiver's certificate; when set, only that certificate is accepted,
    /// on top of normal verification (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_sha256: Option<Pin>,
    /// `octet` (default) or `lf`; ignored for `udp://` (one record per datagram).
    #[serde(default = "default_framing")]
    pub framing: Framing,
    /// `rfc5424` (default), `rfc3164` for old receivers, or a SIEM's own format: `cef`
    /// (ArcSight), `leef` (QRadar), `ocsf` (OCSF API Activity JSON). Mappings:
    /// `docs/formats.md`.
    #[serde(default = "default_format")]
    pub format: Format,
    /// SIEM formats only: send the event as the MSG of the stored RFC 5424 record (its
    /// header and structured data kept) rather than alone. Default: true for `cef` and
    /// `leef` (what ArcSight and QRadar syslog connectors expect), false for `ocsf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_header: Option<bool>,
    /// Largest datagram for `udp://` (480 to 65507); larger records are truncated by the
    /// apiserver rule, or dropped and counted. Default 8 KiB (rsyslog's imudp default).
    #[serde(
        default = "default_max_datagram",
        deserialize_with = "units::size_between::<_, 480, 65507>"
    )]
    pub max_datagram_bytes: ByteSize,
    /// Time allowed for TCP connect plus TLS handshake, together. Default 10s.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "units::nonzero_duration",
        serialize_with = "duration::serialize"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for one batch write; a stalled receiver is reconnected. Default 30s.
    #[serde(
        default = "default_write_timeout",
        deserialize_with = "units::nonzero_duration",
        serialize_with = "duration::serialize"
    )]
    pub write_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, with jitter. Default 100ms.
    #[serde(
        default = "default_backoff_initial",
        deserialize_with = "units::nonzero_duration",
        serialize_with = "duration::serialize"
    )]
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default 30s.
    #[serde(default = "default_backoff_max", with = "duration")]
    pub backoff_max: Duration,
    /// How long a written record must stay on a healthy connection before it counts as
    /// delivered (a TLS 1.3 receiver reports a rejected certificate only after the fact). With
    /// a memory queue past half its budget, only the connection's own first `confirm_after`
    /// is waited out. Default 500ms.
    #[serde(default = "default_confirm_after", with = "duration")]
    pub confirm_after: Duration,
    /// Bytes written per batch at most. Default 256 KiB.
    #[serde(
        default = "default_batch_bytes",
        deserialize_with = "units::size_at_least::<_, 1>"
    )]
    pub batch_bytes: ByteSize,
    /// Largest record this receiver takes (rsyslog's `maxMessageSize`, syslog-ng's
    /// `log-msg-size`, imrelp's `maxDataSize`), at least 480 bytes. A stored record above it
    /// is cut for this destination only, at send time. Default: `syslog.max_message_bytes`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_message_size"
    )]
    pub max_message_bytes: Option<ByteSize>,
    /// `truncate` (the apiserver's rule, the default) or `drop`, for records above
    /// `max_message_bytes`.
    #[serde(default = "default_oversize")]
    pub oversize: Oversize,
    /// RELP only: messages sent and not yet acknowledged at most. Default 128.
    #[serde(
        default = "default_relp_window",
        deserialize_with = "units::int_between::<_, usize, 1, 100_000>"
    )]
    pub relp_window: usize,
    /// RELP only: time allowed for the oldest outstanding message's acknowledgement; past
    /// it the connection is reset and everything unacknowledged is sent again. Default 10s.
    #[serde(
        default = "default_relp_ack_timeout",
        deserialize_with = "units::nonzero_duration",
        serialize_with = "duration::serialize"
    )]
    pub relp_ack_timeout: Duration,
    /// Keep/drop rules for this destination only (the same fields as the global
    /// `[[filter]]`, first match decides, no match keeps): `[[destination.filter]]` tables.
    /// What they drop is skipped by this destination's cursor and confirmed at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<FilterRule>,
}

fn optional_message_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    units::size_at_least::<D, 480>(d).map(Some)
}
fn default_oversize() -> Oversize {
    Oversize::Truncate
}
fn default_relp_window() -> usize {
    128
}
fn default_relp_ack_timeout() -> Duration {
    secs(10)
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
    secs(10)
}
fn default_write_timeout() -> Duration {
    secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    secs(30)
}
fn default_confirm_after() -> Duration {
    Duration::from_millis(500)
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(256 << 10)
}

impl DestinationConfig {
    /// A destination with every setting at its default.
    pub fn new(name: Name, url: Endpoint) -> Self {
        Self {
            name,
            url,
            ca: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            pin_sha256: None,
            framing: default_framing(),
            format: default_format(),
            syslog_header: None,
            max_datagram_bytes: default_max_datagram(),
            connect_timeout: default_connect_timeout(),
            write_timeout: default_write_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            confirm_after: default_confirm_after(),
            batch_bytes: default_batch_bytes(),
            max_message_bytes: None,
            oversize: default_oversize(),
            relp_window: default_relp_window(),
            relp_ack_timeout: default_relp_ack_timeout(),
            filter: Vec::new(),
        }
    }

    /// The stdout destination used when the config names none: LF framing, and written lines
    /// count as delivered at once.
    pub fn stdout() -> Self {
        Self {
            framing: Framing::Lf,
            confirm_after: Duration::ZERO,
            ..Self::new(Name::literal("stdout"), Endpoint::Stdout)
        }
    }

    /// Names of certificate keys that are set; used to warn when a plain target ignores them.
    pub fn tls_keys_set(&self) -> Vec<&'static str> {
        [
            ("ca", self.ca.is_some()),
            ("client_cert", self.client_cert.is_some()),
            ("client_key", self.client_key.is_some()),
            ("server_name", self.server_name.is_some()),
            ("pin_sha256", self.pin_sha256.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

mod optional_server_name {
    use rustls_pki_types::ServerName;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ServerName<'static>>, D::Error> {
        let text = String::deserialize(d)?;
        ServerName::try_from(text.clone())
            .map(Some)
            .map_err(|e| de::Error::custom(format!("`{text}` is not a server name: {e}")))
    }

    pub fn serialize<S: Serializer>(
        name: &Option<ServerName<'static>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match name {
            Some(n) => s.serialize_str(&n.to_str()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for (url, want) in [
            (
                "tls://[::1]:6514",
                Endpoint::Network {
                    scheme: Scheme::Tls,
                    host: "::1".into(),
                    port: 6514,
                    path: "/".into(),
                },
            ),
            (
                "https://logstash.example:443/audit/in",
                Endpoint::Network {
                    scheme: Scheme::Https,
                    host: "logstash.example".into(),
                    port: 443,
                    path: "/audit/in".into(),
                },
            ),
            (
                "http://[::1]:8080",
                Endpoint::Network {
                    scheme: Scheme::Http,
                    host: "::1".into(),
                    port: 8080,
                    path: "/".into(),
                },
            ),
            ("stdout", Endpoint::Stdout),
        ] {
            let got = Endpoint::parse(url).unwrap();
            assert_eq!(got, want, "{url}");
            assert_eq!(got.to_string(), url);
        }
        assert_eq!(
            Endpoint::parse("https://h/x").unwrap().to_string(),
            "https://h:443/x"
        );
        assert!(Endpoint::parse("tcp://host").is_err());
        assert!(Endpoint::parse("tcp://:514").is_err());
        assert!(Endpoint::parse("ftp://x:1").is_err());
    }

    #[test]
    fn pins() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let pin = Pin::parse(hex).unwrap();
        assert_eq!(pin.to_string(), hex);
        let colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Pin::parse(&colons).unwrap(), pin);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pin.0);
        assert_eq!(Pin::parse(&b64).unwrap(), pin);
        assert!(Pin::parse("abcd").is_err());
    }
}
