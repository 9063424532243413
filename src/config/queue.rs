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
#[serde(from = "QueueFile")]
pub struct QueueConfig {
    /// `memory` or `disk`. Default `disk`.
    pub kind: QueueKind,
    /// Directory of the disk queue. Default `./data`.
    pub data_dir: PathBuf,
    /// Stored bytes at most; above it requests get 503. Default 1 GiB for a disk queue,
    /// 8 MiB for a memory queue (it is held in RAM; past half of it, records written on
    /// a proven connection stop waiting out `confirm_after`).
    pub max_bytes: ByteSize,
    /// Size at which a new segment file is started (at least 4 KiB), at most `max_bytes / 8`.
    /// Default 64 MiB.
    pub segment_bytes: ByteSize,
    /// What a full queue does: `reject` (503, the default: nothing acknowledged is ever lost)
    /// or `drop_oldest` (delete the oldest undelivered events to make room; counted and logged).
    pub when_full: WhenFull,
    /// Disk queue only: the newest durable records kept in RAM as written, so that a sender
    /// at the tail takes them from there instead of reading them back from the segment file.
    /// `0` turns it off. Default 1 MiB.
    pub read_cache_bytes: ByteSize,
}

/// `queue.max_bytes` when it is not set, by kind.
pub const fn default_max_bytes(kind: QueueKind) -> ByteSize {
    match kind {
        QueueKind::Disk => ByteSize(1 << 30),
        QueueKind::Memory => ByteSize(8 << 20),
    }
}

/// `[queue]` as written: `max_bytes` defaults by `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct QueueFile {
    kind: QueueKind,
    data_dir: PathBuf,
    max_bytes: Option<ByteSize>,
    #[serde(deserialize_with = "units::size_at_least::<_, 4096>")]
    segment_bytes: ByteSize,
    when_full: WhenFull,
    read_cache_bytes: ByteSize,
}

impl Default for QueueFile {
    fn default() -> Self {
        let d = QueueConfig::default();
        Self {
            kind: d.kind,
            data_dir: d.data_dir,
            max_bytes: None,
            segment_bytes: d.segment_bytes,
            when_full: d.when_full,
            read_cache_bytes: d.read_cache_bytes,
        }
    }
}

impl From<QueueFile> for QueueConfig {
    fn from(f: QueueFile) -> Self {
        Self {
            kind: f.kind,
            data_dir: f.data_dir,
            max_bytes: f.max_bytes.unwrap_or(default_max_bytes(f.kind)),
            segment_bytes: f.segment_bytes,
            when_full: f.when_full,
            read_cache_bytes: f.read_cache_bytes,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Disk,
            data_dir: PathBuf::from("data"),
            max_bytes: default_max_bytes(QueueKind::Disk),
            segment_bytes: ByteSize(64 << 20),
            when_full: WhenFull::Reject,
            read_cache_bytes: ByteSize(1 << 20),
        }
    }
}
