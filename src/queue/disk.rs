//! The disk queue: append-only segment files with group-committed fsync. The bytes of a
//! segment are encoded and decoded in [`format`] only; [`writer`] appends, [`reader`] reads
//! for one destination, [`recover`] scans at start-up, [`cursor`] owns the cursor files,
//! [`tail`] keeps the newest durable records in RAM for readers that keep up.
//!
//! # On-disk format (version 1)
//!
//! `queue.data_dir` holds:
//!
//! * `NNNNNNNNNNNNNNNNNNNN.seg`: segment files, named by a 20-digit increasing id. Each starts
//!   with a 16-byte header: `b"KARQ"`, format version `1` (u32 LE), and the sequence number of
//!   its first record (u64 LE). Then records, each: payload length (u32 LE), CRC32C of the
//!   payload (u32 LE), payload (the rendered RFC 5424 message).
//! * `cursor-NAME`: one line `v1 SEGMENT OFFSET SEQ`: where destination NAME resumes. Written
//!   to a temporary file, fsynced, renamed over the old one, directory fsynced.
//! * `lock`: held with an exclusive file lock while a relay owns the directory.
//!
//! # Invariants
//!
//! * A batch is acknowledged only after the `fdatasync` that covers its last byte. Requests
//!   that arrive while a sync runs are written and synced together (group commit), which is
//!   what lets many concurrent requests share the cost of one fsync.
//! * Readers never read past the durable end, so a sender never ships a record that a crash
//!   could still take back.
//! * A segment is deleted only when every destination has committed past it. Cursors are
//!   persisted every 250 ms, so after a crash a destination may resume before a
//!   deleted segment: it then resumes at the oldest segment (the deleted records were
//!   delivered) and may repeat the records of the last 250 ms (at least once, never lost).
//! * Start-up: a torn tail of the newest segment (short or bad-CRC record) is truncated and
//!   logged. A bad record elsewhere is skipped by readers and logged, never a crash loop.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

mod cursor;
mod format;
mod reader;
mod recover;
mod tail;
mod writer;

pub use reader::DiskReader;

use super::{Position, Prework, QueueError, QueueStats, Stamper};
use crate::config::{QueueConfig, WhenFull};
use tail::Tail;
use writer::{AppendRequest, Writer};

/// How often committed cursors are written to disk: bounds the repeats after a crash.
const CURSOR_SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Appends waiting for the writer at most; more wait in `append`.
const WRITE_CHANNEL: usize = 1024;

/// A segment file as the queue knows it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first_seq: u64,
    /// Bytes in the file (durable part for the active segment).
    len: u64,
}

#[derive(Debug)]
struct State {
    segments: BTreeMap<u64, Segment>,
    /// Position after the last durable record.
    durable: Position,
    /// Committed position per destination.
    committed: Vec<Position>,
    /// Committed positions as last written to the cursor files.
    persisted: Vec<Position>,
    bytes: u64,
    closed: bool,
    /// The newest durable records as written (`queue.read_cache_bytes`).
    tail: Tail,
}

impl State {
    /// Deletes segments that every destination has left behind, except the active one.
    fn release(&mut self, dir: &Path) {
        let Some(lowest) = self.committed.iter().map(|p| p.segment).min() else {
            return;
        };
        let removable: Vec<u64> = self
            .segments
            .range(..lowest)
            .map(|(id, _)| *id)
            .filter(|id| *id != self.durable.segment)
            .collect();
        for id in removable {
            match fs::remove_file(format::segment_path(dir, id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = id, error = %e, "cannot delete delivered queue segment; will retry");
                    return;
                }
            }
            if let Some(seg) = self.segments.remove(&id) {
                self.bytes = self.bytes.saturating_sub(seg.len);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    names: Vec<String>,
    state: Mutex<State>,
    appended: Notify,
    skipped_records: AtomicU64,
    /// Events deleted undelivered by `when_full = "drop_oldest"`.
    dropped_oldest: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the cursor files whose committed position moved.
    fn persist_cursors(&self) -> io::Result<()> {
        let todo: Vec<(usize, Position)> = {
            let s = self.lock();
            s.committed
                .iter()
                .enumerate()
                .filter(|(i, p)| s.persisted.get(*i) != Some(p))
                .map(|(i, p)| (i, *p))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        for (i, p) in &todo {
            cursor::write(&self.dir, &self.names[*i], *p)?;
        }
        File::open(&self.dir)?.sync_all()?;
        let mut s = self.lock();
        for (i, p) in todo {
            s.persisted[i] = p;
        }
        Ok(())
    }
}

/// The durable queue.
#[derive(Debug)]
pub struct DiskQueue {
    shared: Arc<Shared>,
    writer: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    cursor_task: tokio::task::JoinHandle<()>,
    _lock: File,
}

impl DiskQueue {
    /// Opens (creating if needed) the queue in `config.data_dir`, recovers it, and starts
    /// the writer thread.
    ///
    /// # Errors
    /// The directory cannot be created, locked or read.
    pub async fn open(
        config: &QueueConfig,
        destinations: &[String],
        mut stamp: Option<Stamper>,
    ) -> Result<Self, QueueError> {
        let dir = config.data_dir.clone();
        let names = destinations.to_vec();
        let (shared, lock, active, last) =
            tokio::task::spawn_blocking(move || recover::recover(&dir, &names))
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
        if let Some(s) = &mut stamp {
            s.resume(last.as_ref().map(|(seq, record)| (*seq, &record[..])));
        }
        shared.lock().tail = Tail::new(config.read_cache_bytes.as_usize());
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::channel(WRITE_CHANNEL);
        let writer = Writer {
            shared: shared.clone(),
            file: active,
            max_bytes: config.max_bytes.0,
            segment_bytes: effective_segment_bytes(config),
            broken: None,
            drop_oldest: config.when_full == WhenFull::DropOldest,
            stamp,
        };
        // The writer logs through whatever subscriber the caller has (tests capture it).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let writer_thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || writer.run(rx)))?;
        let cursor_shared = shared.clone();
        let cursor_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CURSOR_SYNC_INTERVAL);
            loop {
                tick.tick().await;
                let s = cursor_shared.clone();
                match tokio::task::spawn_blocking(move || s.persist_cursors()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist queue cursors"),
                    Err(_) => return,
                }
            }
        });
        Ok(Self {
            shared,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            cursor_task,
            _lock: lock,
        })
    }

    /// Stores `records` once fsynced; `prework` is the stamper's prework for each, or empty.
    pub(super) async fn append_with(
        &self,
        records: Vec<Bytes>,
        prework: Vec<Prework>,
    ) -> Result<(), QueueError> {
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(QueueError::Closed)?;
        let (reply, done) = oneshot::channel();
        tx.send((records, prework, reply))
            .await
            .map_err(|_| QueueError::Closed)?;
        done.await.map_err(|_| QueueError::Closed)?
    }

    pub(super) fn reader(&self, index: usize) -> DiskReader {
        let committed = self
            .shared
            .lock()
            .committed
            .get(index)
            .copied()
            .unwrap_or_default();
        DiskReader {
            shared: self.shared.clone(),
            index,
            read: committed,
            committed,
            file: None,
        }
    }

    pub(super) fn stats(&self) -> QueueStats {
        let s = self.shared.lock();
        QueueStats {
            bytes: s.bytes,
            end_seq: s.durable.seq,
        }
    }

    pub(super) fn backlogs(&self) -> Vec<u64> {
        let s = self.shared.lock();
        s.committed
            .iter()
            .map(|c| s.durable.seq.saturating_sub(c.seq))
            .collect()
    }

    /// Events deleted undelivered by `when_full = "drop_oldest"`.
    pub fn dropped_oldest(&self) -> u64 {
        self.shared.dropped_oldest.load(Ordering::Relaxed)
    }

    /// Records skipped by readers because they failed their CRC.
    pub fn skipped_records(&self) -> u64 {
        self.shared.skipped_records.load(Ordering::Relaxed)
    }

    pub(super) async fn close(&self) {
        self.shared.lock().closed = true;
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(tx);
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.cursor_task.abort();
        let s = self.shared.clone();
        match tokio::task::spawn_blocking(move || s.persist_cursors()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist queue cursors at shutdown"),
            Err(e) => tracing::warn!(error = %e, "cursor persistence task failed"),
        }
    }
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        self.cursor_task.abort();
    }
}

/// Segments are at most an eighth of `max_bytes`: only whole segments are reclaimed, so a
/// segment as large as the queue would keep a full queue full after everything was delivered.
fn effective_segment_bytes(config: &QueueConfig) -> u64 {
    config
        .segment_bytes
        .0
        .min((config.max_bytes.0 / 8).max(4096))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::time::Duration;

    use super::format::{RECORD_HEADER, SEGMENT_HEADER};
    use super::*;

    use crate::config::ByteSize;
    use crate::queue::tests::{config, drain, names, records};
    use crate::queue::{Backend, Queue, QueueError};

    async fn open(dir: &Path, names: &[&str]) -> Queue {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        Queue::open(&config(dir, 1 << 20, 4096), &names)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn survives_reopen_and_resumes_at_the_committed_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), &["a", "b"]).await;
        q.append(records("r", 100)).await.unwrap();
        let mut a = q.reader(0);
        let (got, _) = drain(&mut a).await;
        assert_eq!(got.len(), 100);
        assert!(got == names("r", 0..100));
        // Commit the first 40 for `a`: read 40 from a fresh reader and commit that point.
        let mut a2 = q.reader(0);
        let mut batch = Vec::new();
        let mut pos = Position::default();
        while batch.len() < 40 {
            let mut b = Vec::new();
            pos = a2.next_batch(1, usize::MAX, &mut b).await.unwrap();
            batch.extend(b);
        }
        a2.commit(pos);
        q.close().await;
        drop(q);

        let q = open(dir.path(), &["a", "b"]).await;
        let (got_a, _) = drain(&mut q.reader(0)).await;
        assert_eq!(got_a.len(), 60);
        assert!(got_a == names("r", 40..100), "a resumes after its commit");
        let (got_b, _) = drain(&mut q.reader(1)).await;
        assert!(got_b == names("r", 0..100), "b committed nothing");
        assert!(q.stats().bytes > 0);
    }

    #[tokio::test]
    async fn segments_roll_and_are_deleted_once_every_destination_passed() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), &["a", "b"]).await;
        for i in 0..10 {
            q.append(records(&format!("s{i}"), 20)).await.unwrap();
        }
        let segments = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        assert!(segments() > 3, "4 KiB segments roll: {}", segments());
        let before = q.stats().bytes;
        let (mut a, mut b) = (q.reader(0), q.reader(1));
        let (got, end_a) = drain(&mut a).await;
        assert_eq!(got.len(), 200);
        a.commit(end_a.unwrap());
        assert!(segments() > 3, "b still needs them");
        let (_, end_b) = drain(&mut b).await;
        b.commit(end_b.unwrap());
        assert_eq!(segments(), 1, "only the active segment is left");
        assert!(q.stats().bytes < before / 4);
    }

    #[tokio::test]
    async fn an_acknowledged_append_is_already_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), &["a"]).await;
        for i in 0..20 {
            q.append(records(&format!("d{i}"), 3)).await.unwrap();
            // No close, no flush by the test: the bytes are in the segment once append returns.
            let file = std::fs::read(newest_segment(dir.path())).unwrap();
            let needle = format!("d{i}-0002-");
            assert!(
                file.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "append {i} not in the file"
            );
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_whole_batches() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&config(dir.path(), 5000, 4096), &["a".to_owned()])
            .await
            .unwrap();
        q.append(records("ok", 30)).await.unwrap();
        let err = q.append(records("no", 20)).await.unwrap_err();
        assert!(matches!(err, QueueError::Full { .. }), "{err}");
        let (got, _) = drain(&mut q.reader(0)).await;
        assert_eq!(
            got,
            names("ok", 0..30),
            "nothing of the refused batch is stored"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivered_space_is_reused_indefinitely() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&config(dir.path(), 64 << 10, 4096), &["a".to_owned()])
            .await
            .unwrap();
        let mut reader = q.reader(0);
        // A reader commits (and so releases segments) while appends are running: the space
        // it frees must be counted even when it frees it in the middle of a write group.
        let consumer = tokio::spawn(async move {
            let mut n = 0;
            while n < 200 * 20 {
                let mut batch = Vec::new();
                let end = reader
                    .next_batch(4096, usize::MAX, &mut batch)
                    .await
                    .unwrap();
                n += batch.len();
                reader.commit(end);
            }
        });
        // 200 rounds of 2.4 KB through a 64 KiB queue.
        let appends = async {
            for round in 0..200 {
                loop {
                    match q.append(records(&format!("u{round}"), 20)).await {
                        Ok(()) => break,
                        Err(QueueError::Full { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), appends)
            .await
            .is_err()
        {
            panic!(
                "the queue stayed full although everything was delivered: {:?}",
                q.stats()
            );
        }
        tokio::time::timeout(Duration::from_secs(10), consumer)
            .await
            .unwrap()
            .unwrap();
        let stats = q.stats();
        assert!(
            stats.bytes < 16 << 10,
            "everything was delivered, yet {stats:?}"
        );
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _q = open(dir.path(), &["a"]).await;
        let err = Queue::open(&config(dir.path(), 1 << 20, 4096), &["a".to_owned()])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        segs.pop().unwrap()
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(&config(dir.path(), 1 << 20, 1 << 20), &["a".to_owned()])
                .await
                .unwrap();
            q.append(records("t", 5)).await.unwrap();
            q.close().await;
        }
        let seg = newest_segment(dir.path());
        let good_len = std::fs::metadata(&seg).unwrap().len();
        // A half-written record: a header announcing 500 bytes, then 10 bytes.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&500u32.to_le_bytes()).unwrap();
        f.write_all(&[0u8; 14]).unwrap();
        drop(f);
        let q = Queue::open(&config(dir.path(), 1 << 20, 1 << 20), &["a".to_owned()])
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
        q.append(records("after", 2)).await.unwrap();
        let (got, _) = drain(&mut q.reader(0)).await;
        let mut want = names("t", 0..5);
        want.extend(names("after", 0..2));
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn bad_crc_at_the_tail_is_torn_and_in_the_middle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(&config(dir.path(), 1 << 20, 1 << 20), &["a".to_owned()])
                .await
                .unwrap();
            q.append(records("c", 5)).await.unwrap();
            q.close().await;
        }
        let seg = newest_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let record = RECORD_HEADER as usize + records("c", 1)[0].len();
        let header = SEGMENT_HEADER as usize;
        bytes[header + record + 20] ^= 0xff; // record 1: middle
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff; // record 4: the tail
        std::fs::write(&seg, &bytes).unwrap();
        let q = Queue::open(&config(dir.path(), 1 << 20, 1 << 20), &["a".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len() as usize,
            bytes.len() - record,
            "the torn tail record is cut"
        );
        let (got, _) = drain(&mut q.reader(0)).await;
        assert_eq!(
            got,
            vec![
                names("c", 0..1)[0].clone(),
                names("c", 2..3)[0].clone(),
                names("c", 3..4)[0].clone()
            ]
        );
        let Backend::Disk(disk) = &*q.backend else {
            panic!("disk queue")
        };
        assert_eq!(disk.skipped_records(), 1);
    }

    /// Flips a byte inside the record that contains `needle`, in whichever segment holds it.
    fn spoil(dir: &Path, needle: &str) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "seg") {
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                bytes[at + needle.len() + 10] ^= 0x20;
                std::fs::write(&path, &bytes).unwrap();
                return;
            }
        }
        panic!("{needle} is in no segment");
    }

    #[tokio::test]
    async fn readers_at_the_tail_take_the_records_as_written_and_others_read_the_file() {
        for cache in [4096u64, 0] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(dir.path(), 1 << 20, 4096);
            cfg.read_cache_bytes = ByteSize(cache);
            let q = Queue::open(&cfg, &["a".to_owned(), "b".to_owned()])
                .await
                .unwrap();
            for i in 0..5 {
                q.append(records(&format!("w{i}"), 20)).await.unwrap();
            }
            // Damage on disk after the write: one of the oldest records, which 4 KiB of cache
            // no longer holds, and one of the newest, which it does.
            spoil(dir.path(), "w0-0003-");
            spoil(dir.path(), "w4-0018-");
            let mut want = Vec::new();
            for i in 0..5 {
                want.extend(names(&format!("w{i}"), 0..20));
            }
            want.retain(|r| !r.starts_with("w0-0003-"));
            if cache == 0 {
                want.retain(|r| !r.starts_with("w4-0018-"));
            }
            for index in [0, 1] {
                let (got, end) = drain(&mut q.reader(index)).await;
                assert_eq!(got, want, "cache {cache}, reader {index}");
                assert_eq!(end.unwrap().seq, 100);
            }
            let Backend::Disk(disk) = &*q.backend else {
                panic!("disk queue")
            };
            assert_eq!(disk.skipped_records(), if cache == 0 { 4 } else { 2 });
            // A rewound reader reads the same again, through both paths.
            let mut a = q.reader(0);
            let mut batch = Vec::new();
            let pos = a.next_batch(usize::MAX, 30, &mut batch).await.unwrap();
            assert_eq!(batch.len(), 30);
            a.commit(pos);
            a.rewind();
            let (got, _) = drain(&mut a).await;
            assert_eq!(got, want[30..], "cache {cache}, after a rewind");
        }
    }

    #[tokio::test]
    async fn cursor_into_a_deleted_segment_resumes_at_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join("cursor-a"), "v1 1 16 0\n").unwrap();
        std::fs::write(dir.path().join("cursor-b"), "garbage").unwrap();
        let q = open(dir.path(), &["a", "b"]).await;
        q.append(records("n", 3)).await.unwrap();
        assert_eq!(drain(&mut q.reader(0)).await.0.len(), 3);
        assert_eq!(drain(&mut q.reader(1)).await.0.len(), 3);
    }

    #[tokio::test]
    async fn data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("queue");
        let _q = open(&data, &["a"]).await;
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
