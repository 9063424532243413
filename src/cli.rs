//! The command line: `run`, `check-config`, `gen-certs`, `webhook-config`,
//! `gen-signing-key`, `verify`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Relays Kubernetes API-server audit webhook batches to syslog receivers.
#[derive(Debug, Parser)]
#[command(name = "kube-audit-relay", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay. Without --config: plain HTTP on 127.0.0.1:8080, events to stdout.
    Run {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective settings.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Write a throw-away CA, a server certificate (localhost, 127.0.0.1, ::1) and a client
    /// certificate into DIR.
    GenCerts {
        /// Output directory.
        dir: PathBuf,
        /// Also write certificates for negative tests (other CA, expired, wrong name).
        #[arg(long)]
        test_extras: bool,
    },
    /// Write an Ed25519 key pair for the integrity trail into DIR: signing.key (PKCS#8 PEM,
    /// mode 0600, for integrity.signing_key) and signing.pub (for verify --key).
    GenSigningKey {
        /// Output directory.
        dir: PathBuf,
    },
    /// Check that receivers' files hold a complete, unmodified trail. Exit 0 when they do,
    /// 1 for an integrity failure, 2 when a file cannot be read.
    Verify {
        /// A public key checkpoints may be signed with; repeat for keys used before a rotation.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Accept a trail that does not end with the relay's final checkpoint (a relay still
        /// running).
        #[arg(long)]
        allow_open_end: bool,
        /// Files with one RFC 5424 record per line (an octet-count prefix is allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the kubeconfig for the apiserver's --audit-webhook-config-file.
    WebhookConfig {
        /// URL the apiserver posts to, e.g. `https://audit-relay.example:8443/`
        #[arg(long)]
        url: String,
        /// CA that signed the relay's server certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate the apiserver presents.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// Private key of the client certificate.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
}
