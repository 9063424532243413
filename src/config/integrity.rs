//! `[integrity]`: the tamper-evident trail (hash chain and signed checkpoints). The section
//! being present turns it on.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{self, duration, secs};

/// `[integrity]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Ed25519 private key, PKCS#8 PEM (`kube-audit-relay gen-signing-key DIR`, or
    /// `openssl genpkey -algorithm ed25519`). Re-read at each checkpoint: a new key starts
    /// signing at the next one, under its own key id.
    pub signing_key: PathBuf,
    /// A signed checkpoint at least this often while events arrive. Default 10s.
    #[serde(
        default = "default_interval",
        deserialize_with = "units::nonzero_duration",
        serialize_with = "duration::serialize"
    )]
    pub checkpoint_interval: Duration,
    /// A signed checkpoint at least every this many records. Default 10 000.
    #[serde(
        default = "default_records",
        deserialize_with = "units::int_between::<_, u64, 1, 100_000_000>"
    )]
    pub checkpoint_records: u64,
}

fn default_interval() -> Duration {
    secs(10)
}
fn default_records() -> u64 {
    10_000
}
