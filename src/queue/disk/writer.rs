//! The single writer thread: owns the active segment and commits waiting appends in groups,
//! one `fdatasync` for all of them, acknowledging each only after the sync that covers it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, RECORD_HEADER, SEGMENT_HEADER};
use super::{Segment, Shared};
use crate::queue::{Position, Prework, QueueError, Stamper};

/// Records to append as one unit, and where to say whether they are durable.
pub(super) type AppendRequest = (
    Vec<Bytes>,
    Vec<Prework>,
    oneshot::Sender<Result<(), QueueError>>,
);

/// The single writer: owns the active segment, groups waiting appends under one fsync.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) file: ActiveSegment,
    pub(super) max_bytes: u64,
    pub(super) segment_bytes: u64,
    /// Set after a failed write that could not be rolled back; appends then fail until restart.
    pub(super) broken: Option<String>,
    /// `when_full = "drop_oldest"`.
    pub(super) drop_oldest: bool,
    /// What is written into each record as it is stored.
    pub(super) stamp: Option<Stamper>,
}

/// The segment being appended to.
pub(super) struct ActiveSegment {
    pub(super) id: u64,
    /// Sequence number of the segment's first record.
    pub(super) first_seq: u64,
    out: BufWriter<File>,
    pub(super) len: u64,
}

/// Where the queue stood before a group, to roll back to if the group fails.
#[derive(Debug, Clone)]
struct Checkpoint {
    segment: u64,
    first_seq: u64,
    len: u64,
    durable: Position,
    stamp: Vec<u8>,
}

impl ActiveSegment {
    /// Opens segment `id` for appending after its first `len` bytes.
    pub(super) fn open_at(dir: &Path, id: u64, first_seq: u64, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(format::segment_path(dir, id))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.seek(SeekFrom::Start(len))?;
        Ok(Self {
            id,
            first_seq,
            out,
            len,
        })
    }

    /// Creates segment `id` with its header, synced (file and directory).
    pub(super) fn create(dir: &Path, id: u64, first_seq: u64) -> io::Result<Self> {
        let path = format::segment_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let written = (|| {
            let mut file = &file;
            file.write_all(&format::segment_header(first_seq))?;
            file.sync_all()?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            // A half-made segment (disk full) must not block the next attempt at the same id.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        drop(file);
        Self::open_at(dir, id, first_seq, SEGMENT_HEADER)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Drops the buffered bytes without the flush a dropped `BufWriter` would attempt (they
    /// belong to a failed write and must not land past a cut).
    fn discard(self) {
        let _ = self.out.into_parts();
    }

    fn segment(&self) -> Segment {
        Segment {
            first_seq: self.first_seq,
            len: self.len,
        }
    }
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let mut group: Vec<AppendRequest> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            self.commit_group(&mut group);
        }
        if self.broken.is_some() {
            self.file.discard();
            return;
        }
        if let Err(e) = self.file.sync() {
            tracing::error!(error = %e, "final queue sync failed");
        }
    }

    fn commit_group(&mut self, group: &mut Vec<AppendRequest>) {
        let start = Checkpoint {
            segment: self.file.id,
            first_seq: self.file.first_seq,
            len: self.file.len,
            durable: self.shared.lock().durable,
            stamp: self.stamp.as_ref().map(|s| s.save()).unwrap_or_default(),
        };
        let mut accepted = Vec::with_capacity(group.len());
        let mut result: Result<Position, io::Error> = Ok(start.durable);
        // Readers release segments concurrently, so the group only adds to the shared count.
        let mut already = self.shared.lock().bytes;
        let mut added = 0u64;
        let mut rolled = Vec::new();
        // What the group writes, for the tail cache once it is durable.
        let mut placed = self.shared.lock().tail.enabled().then(Vec::new);
        for (records, prework, reply) in group.drain(..) {
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
                match self.write_records(&records, &prework, end, &mut rolled, &mut placed) {
                    Ok(written) => added += written,
                    Err(e) => result = Err(e),
                }
            }
            accepted.push(reply);
        }
        if accepted.is_empty() {
            return;
        }
        let synced = result.and_then(|end| self.file.sync().map(|()| end));
        match synced {
            Ok(end) => {
                {
                    let mut s = self.shared.lock();
                    for (id, seg) in rolled {
                        s.segments.insert(id, seg);
                    }
                    s.segments.insert(self.file.id, self.file.segment());
                    s.bytes += added;
                    s.durable = end;
                    s.tail.push(placed.into_iter().flatten());
                }
                self.shared.appended.notify_waiters();
                for reply in accepted {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "queue write failed; the batch is refused with 503");
                self.roll_back(start, &rolled);
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
            if let Err(e) = fs::remove_file(format::segment_path(&self.shared.dir, id)) {
                tracing::error!(segment = id, error = %e, "cannot delete the oldest segment to make room");
                break;
            }
            s.segments.remove(&id);
            s.tail.forget_below(next_first);
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

    /// Writes records after `end`, starting a new segment when the active one is full, and
    /// notes each with where it starts in `placed` (when that is collected). Returns the
    /// bytes added to the queue's files (records and new segment headers).
    fn write_records(
        &mut self,
        records: &[Bytes],
        prework: &[Prework],
        end: &mut Position,
        rolled: &mut Vec<(u64, Segment)>,
        placed: &mut Option<Vec<(Position, Bytes)>>,
    ) -> io::Result<u64> {
        let mut written = 0;
        let mut stamped = Vec::new();
        for (i, record) in records.iter().enumerate() {
            stamped.clear();
            let out: &[Bytes] = match &mut self.stamp {
                Some(stamp) => {
                    stamp.stamp(end.seq, record, prework.get(i), &mut stamped);
                    &stamped
                }
                None => std::slice::from_ref(record),
            };
            for record in out {
                let (added, at) = self.write_record(record, end, rolled)?;
                written += added;
                if let Some(placed) = placed {
                    placed.push((at, record.clone()));
                }
            }
        }
        Ok(written)
    }

    /// Writes one record after `end`, starting a new segment when the active one is full.
    /// Returns the bytes added and where the record starts.
    fn write_record(
        &mut self,
        record: &[u8],
        end: &mut Position,
        rolled: &mut Vec<(u64, Segment)>,
    ) -> io::Result<(u64, Position)> {
        let mut written = 0;
        let len = record.len() as u64;
        if self.file.len > SEGMENT_HEADER
            && self.file.len + RECORD_HEADER + len > self.segment_bytes
        {
            self.file.sync()?;
            rolled.push((self.file.id, self.file.segment()));
            self.file = ActiveSegment::create(&self.shared.dir, self.file.id + 1, end.seq)?;
            rolled.push((self.file.id, self.file.segment()));
            written += SEGMENT_HEADER;
        }
        let at = Position {
            seq: end.seq,
            segment: self.file.id,
            offset: self.file.len,
        };
        self.file.out.write_all(&format::record_header(record)?)?;
        self.file.out.write_all(record)?;
        self.file.len += RECORD_HEADER + len;
        written += RECORD_HEADER + len;
        *end = Position {
            seq: end.seq + 1,
            segment: self.file.id,
            offset: self.file.len,
        };
        Ok((written, at))
    }

    /// Undoes a failed group: the active segment is cut back to its last durable length so
    /// that nothing unacknowledged is ever read or recovered.
    fn roll_back(&mut self, start: Checkpoint, rolled: &[(u64, Segment)]) {
        if let Some(stamp) = &mut self.stamp {
            stamp.restore(&start.stamp);
        }
        let dir = self.shared.dir.clone();
        let undo = || -> io::Result<ActiveSegment> {
            for (new_id, _) in rolled.iter().filter(|(i, _)| *i != start.segment) {
                let _ = fs::remove_file(format::segment_path(&dir, *new_id));
            }
            let file = OpenOptions::new()
                .write(true)
                .open(format::segment_path(&dir, start.segment))?;
            file.set_len(start.len)?;
            file.sync_all()?;
            ActiveSegment::open_at(&dir, start.segment, start.first_seq, start.len)
        };
        match undo() {
            Ok(active) => std::mem::replace(&mut self.file, active).discard(),
            Err(e) => {
                tracing::error!(error = %e, "cannot roll back the queue after a failed write; refusing appends until restart");
                self.broken = Some(format!("queue unusable after failed write: {e}"));
            }
        }
    }
}
