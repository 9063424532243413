//! The disk queue: append-only segment files with group-committed fsync.
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
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Position, QueueError, QueueStats};
use crate::config::QueueConfig;

const MAGIC: &[u8; 4] = b"KARQ";
const FORMAT_VERSION: u32 = 1;
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;
/// How often committed cursors are written to disk: bounds the repeats after a crash.
const CURSOR_SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Appends waiting for the writer at most; more wait in `append`.
const WRITE_CHANNEL: usize = 1024;
/// Readers see at most this many bytes per record; a larger length field is corruption.
const MAX_RECORD: u64 = 1 << 30;

type AppendRequest = (Vec<Bytes>, oneshot::Sender<Result<(), QueueError>>);

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
            match fs::remove_file(segment_path(dir, id)) {
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
            let name = &self.names[*i];
            let tmp = self.dir.join(format!(".cursor-{name}.tmp"));
            let mut f = File::create(&tmp)?;
            writeln!(f, "v1 {} {} {}", p.segment, p.offset, p.seq)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join(format!("cursor-{name}")))?;
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
    pub async fn open(config: &QueueConfig, destinations: &[String]) -> Result<Self, QueueError> {
        let dir = config.data_dir.clone();
        let names = destinations.to_vec();
        let config = config.clone();
        let (shared, lock, active) = tokio::task::spawn_blocking(move || recover(&dir, &names))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::channel(WRITE_CHANNEL);
        let writer = Writer {
            shared: shared.clone(),
            file: active,
            max_bytes: config.max_bytes.0,
            segment_bytes: effective_segment_bytes(&config),
            broken: None,
            drop_oldest: config.when_full == crate::config::WhenFull::DropOldest,
        };
        let writer_thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))?;
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

    pub(super) async fn append(&self, records: Vec<Bytes>) -> Result<(), QueueError> {
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(QueueError::Closed)?;
        let (reply, done) = oneshot::channel();
        tx.send((records, reply))
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

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The single writer: owns the active segment, groups waiting appends under one fsync.
struct Writer {
    shared: Arc<Shared>,
    file: ActiveSegment,
    max_bytes: u64,
    segment_bytes: u64,
    /// Set after a failed write that could not be rolled back; appends then fail until restart.
    broken: Option<String>,
    /// `when_full = "drop_oldest"`.
    drop_oldest: bool,
}

struct ActiveSegment {
    id: u64,
    /// Sequence number of the segment's first record.
    first_seq: u64,
    out: BufWriter<File>,
    len: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let mut group: Vec<AppendRequest> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            self.commit_group(&mut group);
        }
        if self.broken.is_some() {
            // Drop the failed bytes without the flush a dropped BufWriter would attempt.
            let _ = self.file.out.into_parts();
            return;
        }
        {
            if let Err(e) = self
                .file
                .out
                .flush()
                .and_then(|()| self.file.out.get_ref().sync_data())
            {
                tracing::error!(error = %e, "final queue sync failed");
            }
        }
    }

    fn commit_group(&mut self, group: &mut Vec<AppendRequest>) {
        let start = (
            self.file.id,
            self.file.first_seq,
            self.file.len,
            self.shared.lock().durable,
        );
        let mut accepted = Vec::with_capacity(group.len());
        let mut result: Result<Position, io::Error> = Ok(start.3);
        // Readers release segments concurrently, so the group only adds to the shared count.
        let mut already = self.shared.lock().bytes;
        let mut added = 0u64;
        let mut rolled = Vec::new();
        for (records, reply) in group.drain(..) {
            if let Some(why) = &self.broken {
                let _ = reply.send(Err(QueueError::Io(io::Error::other(why.clone()))));
                continue;
            }
            let incoming: u64 = records.iter().map(|r| r.len() as u64 + RECORD_HEADER).sum();
            if already + added + incoming > self.max_bytes && self.drop_oldest {
                let freed = self.drop_oldest_segments(already + added + incoming - self.max_bytes);
                already = already.saturating_sub(freed);
            }
            let stored = already + added;
            if stored + incoming > self.max_bytes {
                let _ = reply.send(Err(QueueError::Full {
                    stored,
                    max: self.max_bytes,
                    incoming,
                }));
                continue;
            }
            if let Ok(end) = &mut result {
                match self.write_records(&records, end, &mut rolled) {
                    Ok(written) => added += written,
                    Err(e) => result = Err(e),
                }
            }
            accepted.push(reply);
        }
        if accepted.is_empty() {
            return;
        }
        let synced = result.and_then(|end| {
            self.file.out.flush()?;
            self.file.out.get_ref().sync_data()?;
            Ok(end)
        });
        match synced {
            Ok(end) => {
                {
                    let mut s = self.shared.lock();
                    for (id, seg) in rolled {
                        s.segments.insert(id, seg);
                    }
                    s.segments.insert(
                        self.file.id,
                        Segment {
                            first_seq: self.file.first_seq,
                            len: self.file.len,
                        },
                    );
                    s.bytes += added;
                    s.durable = end;
                }
                self.shared.appended.notify_waiters();
                for reply in accepted {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "queue write failed; the batch is refused with 503");
                self.roll_back(start.0, start.1, start.2, &rolled);
                for reply in accepted {
                    let _ =
                        reply.send(Err(QueueError::Io(io::Error::new(e.kind(), e.to_string()))));
                }
            }
        }
    }

    /// Deletes the oldest sealed segments until `need` bytes are free, moving every cursor
    /// that pointed into them to the next segment. Returns the bytes freed.
    fn drop_oldest_segments(&mut self, need: u64) -> u64 {
        let mut s = self.shared.lock();
        let (mut freed, mut dropped) = (0u64, 0u64);
        while freed < need {
            let Some((&id, &seg)) = s.segments.iter().next() else {
                break;
            };
            if id == self.file.id {
                break;
            }
            let Some((&next_id, next)) = s.segments.range(id + 1..).next() else {
                break;
            };
            let next_first = next.first_seq;
            if let Err(e) = fs::remove_file(segment_path(&self.shared.dir, id)) {
                tracing::error!(segment = id, error = %e, "cannot delete the oldest segment to make room");
                break;
            }
            s.segments.remove(&id);
            s.bytes = s.bytes.saturating_sub(seg.len);
            freed += seg.len;
            let lowest = s
                .committed
                .iter()
                .map(|c| c.seq)
                .min()
                .unwrap_or(next_first);
            dropped += next_first.saturating_sub(lowest.max(seg.first_seq));
            let resume = Position {
                seq: next_first,
                segment: next_id,
                offset: SEGMENT_HEADER,
            };
            for c in &mut s.committed {
                if c.segment <= id {
                    *c = resume;
                }
            }
        }
        drop(s);
        if freed > 0 {
            self.shared
                .dropped_oldest
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::error!(
                events = dropped,
                bytes = freed,
                "queue full: dropped the oldest undelivered events (queue.when_full = \"drop_oldest\")"
            );
        }
        freed
    }

    /// Writes records after `end`, starting a new segment when the active one is full.
    /// Returns the bytes added to the queue's files (records and new segment headers).
    fn write_records(
        &mut self,
        records: &[Bytes],
        end: &mut Position,
        rolled: &mut Vec<(u64, Segment)>,
    ) -> io::Result<u64> {
        let mut written = 0;
        for record in records {
            let len = record.len() as u64;
            if self.file.len > SEGMENT_HEADER
                && self.file.len + RECORD_HEADER + len > self.segment_bytes
            {
                self.file.out.flush()?;
                self.file.out.get_ref().sync_data()?;
                rolled.push((
                    self.file.id,
                    Segment {
                        first_seq: self.file.first_seq,
                        len: self.file.len,
                    },
                ));
                self.file = create_segment(&self.shared.dir, self.file.id + 1, end.seq)?;
                rolled.push((
                    self.file.id,
                    Segment {
                        first_seq: end.seq,
                        len: SEGMENT_HEADER,
                    },
                ));
                written += SEGMENT_HEADER;
            }
            let len32 = u32::try_from(len).map_err(|_| io::Error::other("record above 4 GiB"))?;
            self.file.out.write_all(&len32.to_le_bytes())?;
            self.file
                .out
                .write_all(&crc32c::crc32c(record).to_le_bytes())?;
            self.file.out.write_all(record)?;
            self.file.len += RECORD_HEADER + len;
            written += RECORD_HEADER + len;
            *end = Position {
                seq: end.seq + 1,
                segment: self.file.id,
                offset: self.file.len,
            };
        }
        Ok(written)
    }

    /// Undoes a failed group: the active segment is cut back to its last durable length so
    /// that nothing unacknowledged is ever read or recovered.
    fn roll_back(&mut self, id: u64, first_seq: u64, len: u64, rolled: &[(u64, Segment)]) {
        let undo = || -> io::Result<ActiveSegment> {
            for (new_id, _) in rolled.iter().filter(|(i, _)| *i != id) {
                let _ = fs::remove_file(segment_path(&self.shared.dir, *new_id));
            }
            let file = OpenOptions::new()
                .write(true)
                .open(segment_path(&self.shared.dir, id))?;
            file.set_len(len)?;
            file.sync_all()?;
            let mut out = BufWriter::with_capacity(1 << 16, file);
            out.seek(SeekFrom::Start(len))?;
            Ok(ActiveSegment {
                id,
                first_seq,
                out,
                len,
            })
        };
        match undo() {
            Ok(active) => {
                let failed = std::mem::replace(&mut self.file, active);
                // `into_parts` drops the unwritten buffer; dropping the BufWriter would try to
                // write it again past the cut.
                let _ = failed.out.into_parts();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot roll back the queue after a failed write; refusing appends until restart");
                self.broken = Some(format!("queue unusable after failed write: {e}"));
            }
        }
    }
}

fn create_segment(dir: &Path, id: u64, first_seq: u64) -> io::Result<ActiveSegment> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let written = (|| {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&first_seq.to_le_bytes())?;
        out.flush()?;
        out.get_ref().sync_all()?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        // A half-made segment (disk full) must not block the next attempt at the same id.
        let (_file, _unwritten) = out.into_parts();
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(ActiveSegment {
        id,
        first_seq,
        out,
        len: SEGMENT_HEADER,
    })
}

fn read_segment_header(file: &mut impl Read) -> io::Result<u64> {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    file.read_exact(&mut header)?;
    if &header[..4] != MAGIC || header[4..8] != FORMAT_VERSION.to_le_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a queue segment (bad magic or version)",
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[8..16]);
    Ok(u64::from_le_bytes(seq))
}

/// Outcome of reading one record.
enum RecordRead {
    Good(Bytes),
    /// Length plausible, CRC wrong: the record is skipped.
    BadCrc(u64),
    /// Not a whole record before `limit`: end of the usable part of the segment.
    End,
}

fn read_record(r: &mut impl Read, offset: u64, limit: u64) -> io::Result<RecordRead> {
    if offset + RECORD_HEADER > limit {
        return Ok(RecordRead::End);
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    r.read_exact(&mut header)?;
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD || offset + RECORD_HEADER + len > limit {
        return Ok(RecordRead::End);
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) == crc {
        Ok(RecordRead::Good(Bytes::from(payload)))
    } else {
        Ok(RecordRead::BadCrc(RECORD_HEADER + len))
    }
}

/// Scans the directory, truncates a torn tail, loads cursors; returns the shared state, the
/// directory lock and the active segment open for appending.
fn recover(dir: &Path, names: &[String]) -> Result<(Shared, File, ActiveSegment), QueueError> {
    create_private_dir(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    lock.try_lock().map_err(|e| {
        io::Error::other(format!(
            "queue directory {} is in use by another process ({e})",
            dir.display()
        ))
    })?;
    let mut ids: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut end = Position::default();
    let last = ids.last().copied();
    for id in ids {
        let path = segment_path(dir, id);
        let mut f = BufReader::new(File::open(&path)?);
        let file_len = fs::metadata(&path)?.len();
        let first_seq = match read_segment_header(&mut f) {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(segment = %path.display(), error = %e, "unreadable queue segment header; moving it aside");
                fs::rename(&path, path.with_extension("corrupt"))?;
                continue;
            }
        };
        let mut offset = SEGMENT_HEADER;
        let mut seq = first_seq.max(end.seq);
        let mut bad = 0u64;
        // Offset and sequence after the last good record: in the newest segment, bad records
        // after it are the torn end of a write that was never acknowledged.
        let mut good_end = (offset, seq, 0u64);
        loop {
            match read_record(&mut f, offset, file_len) {
                Ok(RecordRead::Good(r)) => {
                    offset += RECORD_HEADER + r.len() as u64;
                    seq += 1;
                    good_end = (offset, seq, bad);
                }
                Ok(RecordRead::BadCrc(n)) => {
                    offset += n;
                    seq += 1;
                    bad += 1;
                }
                Ok(RecordRead::End) | Err(_) => break,
            }
        }
        if Some(id) == last {
            (offset, seq, bad) = good_end;
        }
        if offset < file_len {
            if Some(id) == last {
                tracing::warn!(segment = %path.display(), kept = offset, dropped = file_len - offset,
                    "queue segment has a torn tail (interrupted unacknowledged write); truncating");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(offset)?;
                f.sync_all()?;
            } else {
                tracing::error!(segment = %path.display(), lost_bytes = file_len - offset,
                    "queue segment is corrupt in the middle; records after the damage in this segment are skipped");
            }
        }
        if bad > 0 {
            tracing::error!(segment = %path.display(), records = bad, "queue records failed their CRC and will be skipped");
        }
        segments.insert(
            id,
            Segment {
                first_seq,
                len: offset.min(file_len),
            },
        );
        end = Position {
            seq,
            segment: id,
            offset,
        };
    }
    let active = match segments.iter().next_back() {
        Some((&id, seg)) => {
            let file = OpenOptions::new().write(true).open(segment_path(dir, id))?;
            let mut out = BufWriter::with_capacity(1 << 16, file);
            out.seek(SeekFrom::Start(seg.len))?;
            ActiveSegment {
                id,
                first_seq: seg.first_seq,
                out,
                len: seg.len,
            }
        }
        None => {
            let a = create_segment(dir, 1, 0)?;
            segments.insert(
                1,
                Segment {
                    first_seq: 0,
                    len: SEGMENT_HEADER,
                },
            );
            end = Position {
                seq: 0,
                segment: 1,
                offset: SEGMENT_HEADER,
            };
            a
        }
    };
    let oldest = segments
        .iter()
        .next()
        .map(|(&id, s)| Position {
            seq: s.first_seq,
            segment: id,
            offset: SEGMENT_HEADER,
        })
        .unwrap_or(end);
    let committed: Vec<Position> = names
        .iter()
        .map(|name| load_cursor(dir, name, oldest, end, &segments))
        .collect();
    let bytes = segments.values().map(|s| s.len).sum();
    if end.seq > oldest.seq {
        tracing::info!(dir = %dir.display(), records = end.seq - oldest.seq, bytes, "queue recovered");
    }
    let shared = Shared {
        dir: dir.to_owned(),
        names: names.to_vec(),
        state: Mutex::new(State {
            segments,
            durable: end,
            persisted: committed.clone(),
            committed,
            bytes,
            closed: false,
        }),
        appended: Notify::new(),
        skipped_records: AtomicU64::new(0),
        dropped_oldest: AtomicU64::new(0),
    };
    Ok((shared, lock, active))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot create queue directory {}: {e}", dir.display()),
        )),
    }
}

fn load_cursor(
    dir: &Path,
    name: &str,
    oldest: Position,
    end: Position,
    segments: &BTreeMap<u64, Segment>,
) -> Position {
    let path = dir.join(format!("cursor-{name}"));
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return oldest,
        Err(e) => {
            tracing::warn!(cursor = %path.display(), error = %e, "cannot read cursor; resending from the oldest record");
            return oldest;
        }
    };
    let parsed: Option<Position> = (|| {
        let mut parts = text.split_whitespace();
        if parts.next()? != "v1" {
            return None;
        }
        let segment = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        Some(Position {
            seq,
            segment,
            offset,
        })
    })();
    match parsed {
        Some(p) if p.segment < oldest.segment => oldest,
        Some(p) if p > end => {
            tracing::warn!(cursor = %path.display(), "cursor is past the end of the queue; starting at the end");
            end
        }
        Some(p)
            if segments
                .get(&p.segment)
                .is_some_and(|s| p.offset <= s.len && p.offset >= SEGMENT_HEADER) =>
        {
            p
        }
        _ => {
            tracing::warn!(cursor = %path.display(), "cursor is invalid; resending from the oldest record");
            oldest
        }
    }
}

/// One destination's cursor into a [`DiskQueue`], with its own file handle.
#[derive(Debug)]
pub struct DiskReader {
    shared: Arc<Shared>,
    index: usize,
    read: Position,
    committed: Position,
    /// The open segment file.
    file: Option<(u64, File)>,
}

impl DiskReader {
    pub(super) async fn next_batch(
        &mut self,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<Position, QueueError> {
        loop {
            let shared = self.shared.clone();
            let notified = shared.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (durable, segments) = {
                let s = self.shared.lock();
                (s.durable, s.segments.clone())
            };
            if self.read.seq < durable.seq || (self.read.segment < durable.segment) {
                // Reads are small and usually served from the page cache; doing them inline
                // keeps the reader simple and cancel safe (nothing is consumed across an await).
                let (before, position) = (out.len(), self.read);
                self.read_some(&durable, &segments, max_bytes, out)?;
                if out.len() > before {
                    return Ok(self.read);
                }
                if self.read != position {
                    continue;
                }
            }
            notified.await;
        }
    }

    fn read_some(
        &mut self,
        durable: &Position,
        segments: &BTreeMap<u64, Segment>,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<(), QueueError> {
        let mut taken = 0usize;
        loop {
            let limit = if self.read.segment == durable.segment {
                durable.offset
            } else {
                segments.get(&self.read.segment).map_or(0, |s| s.len)
            };
            if self.read.offset >= limit || !segments.contains_key(&self.read.segment) {
                // End of this segment: move to the next one, if any.
                match segments.range(self.read.segment + 1..).next() {
                    Some((&id, seg)) if self.read.segment < durable.segment => {
                        self.read = Position {
                            seq: seg.first_seq.max(self.read.seq),
                            segment: id,
                            offset: SEGMENT_HEADER,
                        };
                        self.file = None;
                        continue;
                    }
                    _ => return Ok(()),
                }
            }
            // One positioned read per step and records handed out as slices of it: no
            // allocation or copy per record.
            let offset = self.read.offset;
            let available = limit - offset;
            if available < RECORD_HEADER {
                self.skip_damage(limit);
                continue;
            }
            let want =
                (max_bytes.saturating_sub(taken) as u64 + RECORD_HEADER).clamp(64 << 10, 4 << 20);
            let mut chunk = self.read_at(offset, available.min(want))?;
            let header = |c: &Bytes, at: usize| {
                let len = u64::from(u32::from_le_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]]));
                let crc = u32::from_le_bytes([c[at + 4], c[at + 5], c[at + 6], c[at + 7]]);
                (len, crc)
            };
            let (first_len, _) = header(&chunk, 0);
            if first_len > MAX_RECORD || RECORD_HEADER + first_len > available {
                self.skip_damage(limit);
                continue;
            }
            if RECORD_HEADER + first_len > chunk.len() as u64 {
                chunk = self.read_at(offset, RECORD_HEADER + first_len)?;
            }
            let mut at = 0usize;
            while at + RECORD_HEADER as usize <= chunk.len() {
                let (len, crc) = header(&chunk, at);
                let end = at + RECORD_HEADER as usize + len as usize;
                if len > MAX_RECORD || end > chunk.len() {
                    break;
                }
                let payload = chunk.slice(at + RECORD_HEADER as usize..end);
                if crc32c::crc32c(&payload) == crc {
                    taken += payload.len();
                    out.push(payload);
                } else {
                    self.shared.skipped_records.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        segment = self.read.segment,
                        offset = self.read.offset,
                        "queue record failed its CRC; skipped"
                    );
                }
                self.read.offset += (end - at) as u64;
                self.read.seq += 1;
                at = end;
                if taken >= max_bytes {
                    return Ok(());
                }
            }
        }
    }

    /// Damage in a segment (a length that runs past its end): skip the rest of it.
    fn skip_damage(&mut self, limit: u64) {
        tracing::error!(
            segment = self.read.segment,
            offset = self.read.offset,
            "queue segment damaged after this offset; the rest of it is skipped"
        );
        self.read.offset = limit;
    }

    /// Reads `len` bytes of the current segment at `offset`.
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let segment = self.read.segment;
        if !matches!(&self.file, Some((id, _)) if *id == segment) {
            self.file = Some((
                segment,
                File::open(segment_path(&self.shared.dir, segment))?,
            ));
        }
        let Some((_, file)) = &self.file else {
            return Err(io::Error::other("segment file not open"));
        };
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    pub(super) fn commit(&mut self, position: Position) {
        if position <= self.committed {
            return;
        }
        self.committed = position;
        let mut s = self.shared.lock();
        if let Some(c) = s.committed.get_mut(self.index) {
            *c = position;
        }
        s.release(&self.shared.dir);
    }

    pub(super) fn rewind(&mut self) {
        self.read = self.committed;
        self.file = None;
    }

    pub(super) fn caught_up(&self) -> bool {
        let s = self.shared.lock();
        self.read.seq >= s.durable.seq
    }

    pub(super) fn backlog(&self) -> u64 {
        self.shared
            .lock()
            .durable
            .seq
            .saturating_sub(self.committed.seq)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{ByteSize, QueueKind};
    use crate::queue::{Backend, Queue, QueueError, Reader};

    fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> QueueConfig {
        QueueConfig {
            kind: QueueKind::Disk,
            data_dir: dir.to_owned(),
            max_bytes: ByteSize(max_bytes),
            segment_bytes: ByteSize(segment_bytes),
            when_full: crate::config::WhenFull::Reject,
        }
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

    async fn open(dir: &Path, names: &[&str]) -> Queue {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        Queue::open(&config(dir, 1 << 20, 4096), &names)
            .await
            .unwrap()
    }

    fn records(prefix: &str, n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("{prefix}-{i:04}-{}", "x".repeat(100))))
            .collect()
    }

    /// Reads everything available now (waits at most 200 ms for the first record).
    async fn drain(reader: &mut Reader) -> (Vec<String>, Option<Position>) {
        let mut out = Vec::new();
        let mut last = None;
        loop {
            let mut batch = Vec::new();
            match tokio::time::timeout(
                Duration::from_millis(200),
                reader.next_batch(1000, &mut batch),
            )
            .await
            {
                Ok(Ok(p)) => {
                    last = Some(p);
                    out.extend(
                        batch
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned()),
                    );
                }
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => return (out, last),
            }
        }
    }

    fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range
            .map(|i| format!("{prefix}-{i:04}-{}", "x".repeat(100)))
            .collect()
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
            pos = a2.next_batch(1, &mut b).await.unwrap();
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
                let end = reader.next_batch(4096, &mut batch).await.unwrap();
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
        let Backend::Disk(disk) = &*q.0 else {
            panic!("disk queue")
        };
        assert_eq!(disk.skipped_records(), 1);
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
