//! Configuration: the TOML file parsed once into typed values.
//!
//! Every limit and timeout is a named key with a default written next to it (and in
//! `config.example.toml`). Unknown keys are errors. Each value is checked by the type it is
//! parsed into ([`units`], [`Endpoint`], [`Pin`], [`JsonPointer`], ...), so errors name the
//! file, the key, the line and what is wrong, and nothing downstream re-parses a string;
//! [`Config::parse`] then checks only the rules that span several keys. [`Config::to_toml`]
//! prints the effective configuration, every default filled in, as TOML that parses back.

mod destination;
mod integrity;
mod listen;
mod queue;
mod rules;
mod syslog;
pub mod units;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use destination::{DestinationConfig, Endpoint, Format, Framing, Oversize, Pin, Scheme};
pub use integrity::IntegrityConfig;
pub use listen::{AdminConfig, ClientAuth, ClientNames, ListenConfig};
pub use queue::{QueueConfig, QueueKind, WhenFull};
pub use rules::{Action, FilterRule, JsonPointer, RedactRule};
pub use syslog::{AppName, Hostname, SyslogConfig};
pub use units::{ByteSize, Facility, Name, PrintAscii, UrlPath, duration};

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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HOSTNAME of every syslog record; the machine's host name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<Hostname>,
    /// The webhook listener.
    #[serde(default)]
    pub listen: ListenConfig,
    /// How events become syslog records.
    #[serde(default)]
    pub syslog: SyslogConfig,
    /// The boundary between the HTTP side and the senders.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Duplicate suppression on (`auditID`, `stage`) and the event's bytes.
    #[serde(default)]
    pub dedupe: DedupeConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The tamper-evident trail; off unless the section is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<IntegrityConfig>,
    /// Keep/drop rules, first match decides.
    #[serde(default, rename = "filter", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterRule>,
    /// JSON pointers to redact before events are stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<RedactRule>,
    /// Where events go; `stdout` when none is given.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
}

/// `[dedupe]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Remembered events (keyed by `auditID`, `stage` and bytes): at least the last
    /// `max_entries` (up to twice as many); 0 turns deduplication off. Default 100 000.
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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

impl Config {
    /// The configuration used by `run` without `--config`: plain HTTP on 127.0.0.1:8080,
    /// events to stdout, the durable disk queue in `./data` (as `queue.data_dir` defaults).
    pub fn builtin_default() -> Self {
        Self {
            cluster_name: None,
            listen: ListenConfig::default(),
            syslog: SyslogConfig::default(),
            queue: QueueConfig::default(),
            dedupe: DedupeConfig::default(),
            shutdown: ShutdownConfig::default(),
            admin: AdminConfig::default(),
            integrity: None,
            filters: Vec::new(),
            redact: Vec::new(),
            destinations: vec![DestinationConfig::stdout()],
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

    /// Parses and checks config text; `file` is only used in error messages. Relative paths
    /// stay relative to the working directory (not the file's directory), matching what
    /// operators type on the command line.
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
        config.check(file)?;
        Ok(config)
    }

    /// The effective configuration as TOML: every key with its value, defaults included,
    /// sizes and durations written as a person writes them. It parses back to the same
    /// configuration.
    ///
    /// # Errors
    /// Never for a configuration built by [`Config::parse`]; the message otherwise.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| e.to_string())
    }

    /// The rules that span several keys, and the files that must be readable at start-up.
    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let l = &self.listen;
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
        if !l.is_tls() && (l.client_ca.is_some() || l.client_auth != ClientAuth::None) {
            return Err(bad(
                "listen.client_ca",
                "client certificates need HTTPS: set listen.tls_cert and listen.tls_key".into(),
            ));
        }
        if l.client_auth != ClientAuth::None && l.client_ca.is_none() {
            return Err(bad(
                "listen.client_ca",
                "required when client_auth is optional or required".into(),
            ));
        }
        if !l.allowed_client_names.is_empty() && l.client_auth != ClientAuth::Required {
            return Err(bad(
                "listen.allowed_client_names",
                "needs client certificates: set listen.client_ca (client_auth = \"required\")"
                    .into(),
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
        if let Some(integrity) = &self.integrity {
            check_readable(Some(&integrity.signing_key))
                .map_err(|r| bad("integrity.signing_key", r))?;
            if self.syslog.enterprise_id.is_none() {
                return Err(bad(
                    "syslog.enterprise_id",
                    "required with [integrity]: the chain values go in an SD element named trail@ENTERPRISE_ID (RFC 5612's example number 32473 for trials)".into(),
                ));
            }
            for (i, d) in self.destinations.iter().enumerate() {
                let key = |k: &str| format!("destination[{i}].{k}");
                if d.format != Format::Rfc5424 {
                    return Err(bad(
                        &key("format"),
                        "must be rfc5424 with [integrity]: the other formats do not carry the trail's structured data".into(),
                    ));
                }
                if d.url.scheme().is_some_and(Scheme::has_path) {
                    return Err(bad(
                        &key("url"),
                        "HTTP destinations carry the events' JSON only, without the trail's structured data: not with [integrity]".into(),
                    ));
                }
                if !d.filter.is_empty() {
                    return Err(bad(
                        &key("filter"),
                        "not with [integrity]: every destination receives the whole chain, and records routed away would be reported missing by verify; filter globally with [[filter]] instead".into(),
                    ));
                }
                if d.url.scheme() == Some(Scheme::Udp)
                    && d.max_datagram_bytes < self.syslog.max_message_bytes
                {
                    return Err(bad(
                        &key("max_datagram_bytes"),
                        "cannot be below syslog.max_message_bytes with [integrity]: a record cut to fit a datagram no longer verifies".into(),
                    ));
                }
                if d.max_message_bytes
                    .is_some_and(|m| m < self.syslog.max_message_bytes)
                {
                    return Err(bad(
                        &key("max_message_bytes"),
                        "cannot be below syslog.max_message_bytes with [integrity]: a record cut for one destination no longer verifies; lower syslog.max_message_bytes instead".into(),
                    ));
                }
            }
        }
        if self.queue.max_bytes < self.syslog.max_message_bytes {
            return Err(bad(
                "queue.max_bytes",
                "must be at least syslog.max_message_bytes".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let key = |k: &str| format!("destination[{i}].{k}");
            if !names.insert(d.name.as_str()) {
                return Err(bad(&key("name"), format!("`{}` is used twice", d.name)));
            }
            if d.url.scheme().is_some_and(Scheme::is_tls) {
                for (k, path) in [
                    ("ca", &d.ca),
                    ("client_cert", &d.client_cert),
                    ("client_key", &d.client_key),
                ] {
                    check_readable(path.as_deref()).map_err(|r| bad(&key(k), r))?;
                }
                if d.client_cert.is_some() != d.client_key.is_some() {
                    return Err(bad(
                        &key("client_key"),
                        "client_cert and client_key go together".into(),
                    ));
                }
            }
            if d.max_message_bytes
                .is_some_and(|m| m > self.syslog.max_message_bytes)
            {
                return Err(bad(
                    &key("max_message_bytes"),
                    format!(
                        "{} is above syslog.max_message_bytes ({}): no stored record is larger; raise syslog.max_message_bytes instead",
                        d.max_message_bytes.unwrap_or(self.syslog.max_message_bytes),
                        self.syslog.max_message_bytes
                    ),
                ));
            }
            if d.backoff_max < d.backoff_initial {
                return Err(bad(
                    &key("backoff_max"),
                    "must be at least backoff_initial".into(),
                ));
            }
            if d.format.is_siem() && d.url.scheme().is_some_and(Scheme::has_path) {
                return Err(bad(
                    &key("format"),
                    "cef, leef and ocsf go over tcp://, tls://, relp://, relp+tls:// or udp://; HTTP destinations post the events' own JSON".into(),
                ));
            }
            if d.syslog_header.is_some() && !d.format.is_siem() {
                return Err(bad(
                    &key("syslog_header"),
                    "only with format = \"cef\", \"leef\" or \"ocsf\" (rfc5424 and rfc3164 are syslog already)".into(),
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
        assert_eq!(c.listen.client_auth, ClientAuth::None);
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.destinations[0].url, Endpoint::Stdout);
    }

    #[test]
    fn queue_budget_defaults_by_kind_and_keeps_what_is_set() {
        assert_eq!(parse("").unwrap().queue.max_bytes.0, 1 << 30);
        let memory = parse("[queue]\nkind = \"memory\"\n").unwrap();
        assert_eq!(memory.queue.max_bytes.0, 8 << 20);
        let set = parse("[queue]\nkind = \"memory\"\nmax_bytes = \"200MiB\"\n").unwrap();
        assert_eq!(set.queue.max_bytes.0, 200 << 20);
        // The effective configuration names the resolved budget, and parses back to it.
        let again = parse(&memory.to_toml().unwrap()).unwrap();
        assert_eq!(again.queue.max_bytes.0, 8 << 20);
        let err = parse("[queue]\nkind = \"memory\"\nmax_byte = 1\n").unwrap_err();
        assert!(err.to_string().contains("queue.max_byte"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("[listen]\naddress = \"127.0.0.1:1\"\nmax_bodybytes = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml: key `listen"), "{msg}");
        assert!(msg.contains("max_bodybytes"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("[[destination]]\nname = \"a\"\nurl = \"ftp://x:1\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml: key `destination[0].url`: unsupported scheme `ftp` (use tls, tcp, udp, http, https, relp, relp+tls or stdout) (line 3)"
        );
        for (text, key, reason) in [
            (
                "[listen]\nrequest_timeout = \"30\"\n",
                "listen.request_timeout",
                "has no unit",
            ),
            (
                "[listen]\nrequest_timeout = \"30s\"\n",
                "listen.request_timeout",
                "below 30s",
            ),
            (
                "[listen]\npath = \"audit\"\n",
                "listen.path",
                "must start with `/`",
            ),
            (
                "[listen]\nmax_header_bytes = 100\n",
                "listen.max_header_bytes",
                "at least 8KiB",
            ),
            (
                "[listen]\nretry_after_seconds = 31\n",
                "listen.retry_after_seconds",
                "between 1 and 30",
            ),
            (
                "[syslog]\nfacility = 24\n",
                "syslog.facility",
                "not a facility",
            ),
            (
                "[syslog]\napp_name = \"a b\"\n",
                "syslog.app_name",
                "printable ASCII",
            ),
            ("cluster_name = \"\"\n", "cluster_name", "printable ASCII"),
            (
                "[[destination]]\nname = \"a.b\"\nurl = \"stdout\"\n",
                "destination[0].name",
                "letters, digits",
            ),
            (
                "[[destination]]\nname = \"a\"\nurl = \"tls://h:1\"\npin_sha256 = \"zz\"\n",
                "destination[0].pin_sha256",
                "neither 64 hex",
            ),
            (
                "[[redact]]\npointer = \"data\"\n",
                "redact[0].pointer",
                "must start with `/`",
            ),
            (
                "[[destination]]\nname = \"a\"\nurl = \"udp://h:1\"\nmax_datagram_bytes = 70000\n",
                "destination[0].max_datagram_bytes",
                "between 480 and 65507",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{text}: {err}");
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn client_auth_defaults_from_client_ca() {
        let crt = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/server.crt");
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/server.key");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
        let base = format!("[listen]\ntls_cert = \"{crt}\"\ntls_key = \"{key}\"\n");
        assert_eq!(parse(&base).unwrap().listen.client_auth, ClientAuth::None);
        let with_ca = format!("{base}client_ca = \"{ca}\"\n");
        assert_eq!(
            parse(&with_ca).unwrap().listen.client_auth,
            ClientAuth::Required
        );
        let optional = format!("{with_ca}client_auth = \"optional\"\n");
        assert_eq!(
            parse(&optional).unwrap().listen.client_auth,
            ClientAuth::Optional
        );
    }

    #[test]
    fn effective_config_parses_back_to_itself() {
        let text = "cluster_name = \"c1\"\n[listen]\nrequest_timeout = \"1500ms\"\n[[filter]]\naction = \"drop\"\nverb = [\"get\"]\n[[redact]]\npointer = \"/requestObject/data\"\n[[destination]]\nname = \"a\"\nurl = \"tls://[::1]:6514\"\nserver_name = \"localhost\"\npin_sha256 = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n[[destination]]\nname = \"b\"\nurl = \"https://h/in\"\n";
        let config = parse(text).unwrap();
        let printed = config.to_toml().unwrap();
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.to_toml().unwrap(), printed);
        for line in [
            "request_timeout = \"1500ms\"",
            "max_body_bytes = \"64MiB\"",
            "tls_handshake_timeout = \"5s\"",
            "url = \"tls://[::1]:6514\"",
            "client_auth = \"none\"",
            "address = \"127.0.0.1:9090\"",
            "[[destination]]",
            "[[filter]]",
        ] {
            assert!(
                printed.lines().any(|l| l == line),
                "{line} missing:\n{printed}"
            );
        }
    }
}
