//! The queue boundary between the HTTP side and the senders.
//!
//! The webhook appends rendered records and answers 200 only once [`Queue::append`] returns
//! `Ok`: for the disk queue that means written and fsynced. Each destination reads through
//! its own [`Reader`], which keeps a read position (what was handed to the sender) and a
//! committed position (what the receiver is known to have). After a reconnect the sender
//! rewinds to the committed position, so delivery is at least once and in order per
//! destination. Records are released once every destination has committed past them.

mod disk;
mod memory;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::config::{QueueConfig, QueueKind, WhenFull};
use crate::syslog::Layout;

pub use disk::DiskQueue;
pub use memory::MemoryQueue;

/// Why records could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Stored bytes would exceed `queue.max_bytes`.
    #[error("queue full: {stored} of {max} bytes stored, {incoming} more offered")]
    Full {
        /// Bytes stored now.
        stored: u64,
        /// `queue.max_bytes`.
        max: u64,
        /// Bytes of the refused batch.
        incoming: u64,
    },
    /// The disk refused a write or fsync (ENOSPC, EIO...). Nothing of the batch counts as stored.
    #[error("queue storage error: {0}")]
    Io(#[from] std::io::Error),
    /// The queue is shutting down.
    #[error("queue closed")]
    Closed,
}

/// What is written into each record as it is stored, in storage order (the queue calls it
/// under its write lock or on its writer thread): a sequence number, a hash chain. Stamping
/// at store time makes every resend of a record carry the same bytes.
pub trait Stamp: Send + std::fmt::Debug + 'static {
    /// Work on one record that does not depend on its place in the queue (a digest). The
    /// appending task runs it, in parallel with other appends, so that the writer, which
    /// every append waits for, does only what needs the place. Default: none.
    fn prework(&self) -> Option<PreworkFn> {
        None
    }
    /// The records to store for `record` (usually the record itself, stamped; a stamper may
    /// add records of its own, or turn a marker into none), pushed onto `out`. The first one
    /// pushed goes to queue place `seq`, the next to `seq + 1`, and so on. Places count from
    /// 0; the disk queue continues them across restarts, the memory queue starts again at 0.
    /// `prework` is what [`Stamp::prework`] returned for this record, when it ran.
    fn stamp(&mut self, seq: u64, record: &[u8], prework: Option<&Prework>, out: &mut Vec<Bytes>);
    /// The stamper's state before a group of appends, to go back to if the group fails.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Goes back to a state from [`Stamp::save`].
    fn restore(&mut self, _state: &[u8]) {}
    /// Called once when the queue opens, with the last record it holds (and its place), so
    /// that stamping continues from it.
    fn resume(&mut self, _last: Option<(u64, &[u8])>) {}
}

/// A boxed [`Stamp`].
pub type Stamper = Box<dyn Stamp>;

/// What [`Stamp::prework`] found in one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prework {
    /// A digest of (part of) the record, for a stamper that links records (the chain).
    pub digest: Option<[u8; 32]>,
    /// Where in the record the stamper writes (the SD field); empty when it found none.
    pub span: std::ops::Range<usize>,
}

/// [`Stamp::prework`]'s function: the record, and where its parts are when the relay rendered
/// it (so that it need not be parsed again).
pub type PreworkFn = fn(&[u8], Option<&Layout>) -> Prework;

/// A position in the queue: the sequence number of the next record, plus where it lives on
/// disk (unused by the memory queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Sequence number of the next record to read.
    pub seq: u64,
    /// Segment file holding it.
    pub segment: u64,
    /// Byte offset in that segment.
    pub offset: u64,
}

/// How much one read hands out at most (at least one record, whatever its size).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) bytes: usize,
    pub(crate) records: usize,
}

/// Sizes reported to logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Bytes held (payload and record headers).
    pub bytes: u64,
    /// Sequence number that the next appended record gets.
    pub end_seq: u64,
}

/// The queue, cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    backend: Arc<Backend>,
    times: Arc<AppendTimes>,
    prework: Option<PreworkFn>,
}

/// When records were appended, coarsely: `(end_seq, time)` after each append, so that the age
/// of a destination's oldest undelivered record can be reported without storing a time in
/// every record. Records from before this process started count from its start.
#[derive(Debug)]
struct AppendTimes {
    started: SystemTime,
    marks: Mutex<VecDeque<(u64, SystemTime)>>,
}

/// Appends remembered at most; older marks merge into the next one (ages stay upper bounds).
const MAX_APPEND_MARKS: usize = 100_000;

#[derive(Debug)]
enum Backend {
    Memory(MemoryQueue),
    Disk(DiskQueue),
}

impl Queue {
    /// Opens the queue of `config` for the named destinations (in order; a reader is
    /// addressed by its index).
    ///
    /// # Errors
    /// [`QueueError::Io`] when the data directory cannot be used.
    pub async fn open(config: &QueueConfig, destinations: &[String]) -> Result<Self, QueueError> {
        Self::open_stamped(config, destinations, None).await
    }

    /// Like [`Queue::open`], with every record passed through `stamp` as it is stored.
    ///
    /// # Errors
    /// [`QueueError::Io`] when the data directory cannot be used.
    pub async fn open_stamped(
        config: &QueueConfig,
        destinations: &[String],
        stamp: Option<Stamper>,
    ) -> Result<Self, QueueError> {
        let prework = stamp.as_ref().and_then(|s| s.prework());
        let backend = match config.kind {
            QueueKind::Memory => Backend::Memory(MemoryQueue::new(
                config.max_bytes.0,
                destinations.len(),
                config.when_full == WhenFull::DropOldest,
                stamp,
            )),
            QueueKind::Disk => Backend::Disk(DiskQueue::open(config, destinations, stamp).await?),
        };
        let times = AppendTimes {
            started: SystemTime::now(),
            marks: Mutex::new(VecDeque::new()),
        };
        Ok(Self {
            backend: Arc::new(backend),
            times: Arc::new(times),
            prework,
        })
    }

    /// Stores `records` as one unit: either all are stored (and, for the disk queue,
    /// fsynced) or none is acknowledged.
    ///
    /// # Errors
    /// [`QueueError::Full`], [`QueueError::Io`] or [`QueueError::Closed`].
    pub async fn append(&self, records: Vec<Bytes>) -> Result<(), QueueError> {
        self.append_rendered(records, &[]).await
    }

    /// [`Queue::append`] for records the relay rendered, with where their parts are
    /// (`layouts[i]` for `records[i]`; fewer layouts than records is allowed).
    ///
    /// # Errors
    /// [`QueueError::Full`], [`QueueError::Io`] or [`QueueError::Closed`].
    pub async fn append_rendered(
        &self,
        records: Vec<Bytes>,
        layouts: &[Layout],
    ) -> Result<(), QueueError> {
        if records.is_empty() {
            return Ok(());
        }
        let prework = self
            .prework
            .map(|f| {
                records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| f(r, layouts.get(i)))
                    .collect()
            })
            .unwrap_or_default();
        match &*self.backend {
            Backend::Memory(q) => q.append_with(records, prework)?,
            Backend::Disk(q) => q.append_with(records, prework).await?,
        }
        let end = self.stats().end_seq;
        let lowest = self.committed_seqs().into_iter().min().unwrap_or(end);
        if let Ok(mut marks) = self.times.marks.lock() {
            marks.push_back((end, SystemTime::now()));
            while marks.front().is_some_and(|&(seq, _)| seq <= lowest)
                || marks.len() > MAX_APPEND_MARKS
            {
                marks.pop_front();
            }
        }
        Ok(())
    }

    /// Committed sequence number per destination.
    fn committed_seqs(&self) -> Vec<u64> {
        let end = self.stats().end_seq;
        self.backlogs()
            .into_iter()
            .map(|b| end.saturating_sub(b))
            .collect()
    }

    /// Age of each destination's oldest undelivered record (zero when it has none).
    pub fn oldest_undelivered(&self) -> Vec<Duration> {
        let end = self.stats().end_seq;
        let now = SystemTime::now();
        let marks = self
            .times
            .marks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        self.committed_seqs()
            .into_iter()
            .map(|committed| {
                if committed >= end {
                    return Duration::ZERO;
                }
                let appended = marks
                    .iter()
                    .find(|&&(seq, _)| seq > committed)
                    .map_or(self.times.started, |&(_, t)| t);
                now.duration_since(appended).unwrap_or_default()
            })
            .collect()
    }

    /// The reader of destination `index`, starting at its committed position.
    pub fn reader(&self, index: usize) -> Reader {
        let inner = match &*self.backend {
            Backend::Memory(q) => ReaderInner::Memory(q.reader(index)),
            Backend::Disk(q) => ReaderInner::Disk(q.reader(index)),
        };
        Reader { inner }
    }

    /// Current sizes.
    pub fn stats(&self) -> QueueStats {
        match &*self.backend {
            Backend::Memory(q) => q.stats(),
            Backend::Disk(q) => q.stats(),
        }
    }

    /// Records stored and not yet committed, per destination (in reader order).
    pub fn backlogs(&self) -> Vec<u64> {
        match &*self.backend {
            Backend::Memory(q) => q.backlogs(),
            Backend::Disk(q) => q.backlogs(),
        }
    }

    /// Events deleted undelivered by `when_full = "drop_oldest"` since start.
    pub fn dropped_oldest(&self) -> u64 {
        match &*self.backend {
            Backend::Memory(q) => q.dropped_oldest(),
            Backend::Disk(q) => q.dropped_oldest(),
        }
    }

    /// Refuses further appends and persists the cursors.
    pub async fn close(&self) {
        match &*self.backend {
            Backend::Memory(q) => q.close(),
            Backend::Disk(q) => q.close().await,
        }
    }
}

/// One destination's view of the queue.
#[derive(Debug)]
pub struct Reader {
    inner: ReaderInner,
}

#[derive(Debug)]
enum ReaderInner {
    Memory(memory::MemoryReader),
    Disk(disk::DiskReader),
}

impl Reader {
    /// Waits until at least one record is available at the read position, then moves up to
    /// `max_bytes` and `max_records` of records (at least one) into `out` and returns the
    /// position after them. Cancel safe: nothing is consumed unless the future completes.
    ///
    /// # Errors
    /// [`QueueError::Io`] when a segment cannot be read.
    pub async fn next_batch(
        &mut self,
        max_bytes: usize,
        max_records: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<Position, QueueError> {
        let limits = Limits {
            bytes: max_bytes,
            records: max_records.max(1),
        };
        match &mut self.inner {
            ReaderInner::Memory(r) => Ok(r.next_batch(limits, out).await),
            ReaderInner::Disk(r) => r.next_batch(limits, out).await,
        }
    }

    /// Marks everything before `position` as delivered to this destination.
    pub fn commit(&mut self, position: Position) {
        match &mut self.inner {
            ReaderInner::Memory(r) => r.commit(position),
            ReaderInner::Disk(r) => r.commit(position),
        }
    }

    /// Moves the read position back to the committed one (after a lost connection).
    pub fn rewind(&mut self) {
        match &mut self.inner {
            ReaderInner::Memory(r) => r.rewind(),
            ReaderInner::Disk(r) => r.rewind(),
        }
    }

    /// Whether the read position is at the end of what is stored.
    pub fn caught_up(&self) -> bool {
        match &self.inner {
            ReaderInner::Memory(r) => r.caught_up(),
            ReaderInner::Disk(r) => r.caught_up(),
        }
    }

    /// Whether holding written records until they are confirmed costs more memory than the
    /// queue's budget allows: true for a memory queue past half of `queue.max_bytes`
    /// (a disk queue holds them on disk, never in memory).
    pub fn pressed(&self) -> bool {
        match &self.inner {
            ReaderInner::Memory(r) => r.pressed(),
            ReaderInner::Disk(_) => false,
        }
    }

    /// Records stored but not yet committed by this destination.
    pub fn backlog(&self) -> u64 {
        match &self.inner {
            ReaderInner::Memory(r) => r.backlog(),
            ReaderInner::Disk(r) => r.backlog(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ByteSize;

    pub(crate) fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> QueueConfig {
        QueueConfig {
            kind: QueueKind::Disk,
            data_dir: dir.to_owned(),
            max_bytes: ByteSize(max_bytes),
            segment_bytes: ByteSize(segment_bytes),
            when_full: crate::config::WhenFull::Reject,
            read_cache_bytes: ByteSize(1 << 20),
        }
    }

    pub(crate) fn records(prefix: &str, n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("{prefix}-{i:04}-{}", "x".repeat(100))))
            .collect()
    }

    /// Reads everything stored now.
    pub(crate) async fn drain(reader: &mut Reader) -> (Vec<String>, Option<Position>) {
        let mut out = Vec::new();
        let mut last = None;
        while !reader.caught_up() {
            let mut batch = Vec::new();
            last = Some(
                reader
                    .next_batch(1000, usize::MAX, &mut batch)
                    .await
                    .unwrap(),
            );
            out.extend(
                batch
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
            );
        }
        (out, last)
    }

    pub(crate) fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range
            .map(|i| format!("{prefix}-{i:04}-{}", "x".repeat(100)))
            .collect()
    }

    #[tokio::test]
    async fn drop_oldest_makes_room_counts_and_moves_cursors() {
        for kind in [QueueKind::Disk, QueueKind::Memory] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(dir.path(), 32 << 10, 4096);
            cfg.kind = kind;
            cfg.when_full = crate::config::WhenFull::DropOldest;
            let q = Queue::open(&cfg, &["a".to_owned()]).await.unwrap();
            // 50 batches of 10 records (~1.2 KB each batch) into a 32 KiB queue nobody reads.
            for i in 0..50 {
                q.append(records(&format!("o{i:02}"), 10))
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?} batch {i}: {e}"));
            }
            let dropped = q.dropped_oldest();
            assert!(dropped > 0, "{kind:?}: something was dropped");
            let (got, _) = drain(&mut q.reader(0)).await;
            assert_eq!(
                got.len() as u64 + dropped,
                500,
                "{kind:?}: every record is either kept or counted as dropped"
            );
            assert_eq!(
                got.last().unwrap(),
                &names("o49", 9..10)[0],
                "{kind:?}: the newest survive"
            );
            assert!(q.stats().bytes <= 32 << 10);
        }
    }

    #[tokio::test]
    async fn a_memory_queue_is_pressed_past_half_its_budget_and_takes_one_oversize_batch_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 4096, 4096);
        cfg.kind = QueueKind::Memory;
        let q = Queue::open(&cfg, &["a".to_owned()]).await.unwrap();
        let mut reader = q.reader(0);
        // 15 records of 107 bytes: 1605 bytes, below half of 4096.
        q.append(records("p", 15)).await.unwrap();
        assert!(!reader.pressed());
        q.append(records("q", 5)).await.unwrap();
        assert!(reader.pressed(), "2140 of 4096 bytes");
        let (got, end) = drain(&mut reader).await;
        assert_eq!(got.len(), 20);
        // Read but not committed: still held, still pressed.
        assert!(reader.pressed());
        reader.commit(end.unwrap());
        assert!(!reader.pressed());
        assert_eq!(q.stats().bytes, 0);

        // 50 records (5350 bytes) exceed the whole budget: taken into the empty queue, and
        // nothing more is until they are delivered.
        q.append(records("big", 50)).await.unwrap();
        let refused = q.append(records("next", 1)).await.unwrap_err();
        assert!(matches!(refused, QueueError::Full { .. }), "{refused}");
        let (got, end) = drain(&mut reader).await;
        assert_eq!(got, names("big", 0..50));
        reader.commit(end.unwrap());
        q.append(records("next", 1)).await.unwrap();

        // A disk queue keeps unconfirmed records on disk: never pressed.
        let mut disk = config(dir.path(), 4096, 4096);
        disk.data_dir = dir.path().join("disk");
        let d = Queue::open(&disk, &["a".to_owned()]).await.unwrap();
        d.append(records("d", 30)).await.unwrap();
        assert!(!d.reader(0).pressed());
    }
}
