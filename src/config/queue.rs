//! `[queue]`: the boundary between the HTTP side and the senders.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{self, ByteSize};

/// `queue.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Bounded memory: lost on crash, for sidecars that accept it.
    Memory,
    /// Append-only segment files with group-committed fsync.
    Disk,
}

/// `queue.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new batches with 503 + Retry-After.
    Reject,
    /// Make room by deleting the oldest stored events (they are lost; counted and logged).
    DropOldest,
}

/// `[queue]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `memory` or `disk`. Default `disk`.
    pub kind: QueueKind,
    /// Directory of the disk queue. Default `./data`.
    pub data_dir: PathBuf,
    /// Stored bytes at most; above it requests get 503. Default 1 GiB.
    pub max_bytes: ByteSize,
    /// Size at which a new segment file is started (at least 4 KiB), at most `max_bytes / 8`.
    /// Default 64 MiB.
    #[serde(deserialize_with = "units::size_at_least::<_, 4096>")]
    pub segment_bytes: ByteSize,
    /// What a full queue does: `reject` (503, the default: nothing acknowledged is ever lost)
    /// or `drop_oldest` (delete the oldest undelivered events to make room; counted and logged).
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Disk,
            data_dir: PathBuf::from("data"),
            max_bytes: ByteSize(1 << 30),
            segment_bytes: ByteSize(64 << 20),
            when_full: WhenFull::Reject,
        }
    }
}
