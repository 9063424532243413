//! One destination's cursor into the disk queue: reads records from the segment files up to
//! the durable end, with its own file handle.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::format::{self, Decoded, RECORD_HEADER, SEGMENT_HEADER};
use super::{Segment, Shared};
use crate::queue::{Limits, Position, QueueError};

/// One destination's cursor into a [`super::DiskQueue`].
#[derive(Debug)]
pub struct DiskReader {
    pub(super) shared: Arc<Shared>,
    pub(super) index: usize,
    pub(super) read: Position,
    pub(super) committed: Position,
    /// The open segment file.
    pub(super) file: Option<(u64, File)>,
}

impl DiskReader {
    pub(in crate::queue) async fn next_batch(
        &mut self,
        limits: Limits,
        out: &mut Vec<Bytes>,
    ) -> Result<Position, QueueError> {
        loop {
            let shared = self.shared.clone();
            let notified = shared.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (durable, segments) = {
                let s = self.shared.lock();
                if let Some(end) = s.tail.read(self.read, limits, out) {
                    self.read = end;
                    return Ok(end);
                }
                (s.durable, s.segments.clone())
            };
            if self.read.seq < durable.seq || (self.read.segment < durable.segment) {
                // Reads are small and usually served from the page cache; doing them inline
                // keeps the reader simple and cancel safe (nothing is consumed across an await).
                let (before, position) = (out.len(), self.read);
                self.read_some(&durable, &segments, limits, out)?;
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
        limits: Limits,
        out: &mut Vec<Bytes>,
    ) -> Result<(), QueueError> {
        let max_bytes = limits.bytes;
        let mut taken = 0usize;
        let first = out.len();
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
            let available = limit - self.read.offset;
            let want = (max_bytes.saturating_sub(taken) as u64)
                .saturating_add(RECORD_HEADER)
                .clamp(64 << 10, 4 << 20);
            let mut chunk = self.read_at(self.read.offset, available.min(want))?;
            match format::decode(&chunk) {
                Decoded::Short { need } if need <= available => {
                    chunk = self.read_at(self.read.offset, need)?;
                }
                Decoded::Short { .. } | Decoded::Damaged => {
                    self.skip_damage(limit);
                    continue;
                }
                Decoded::Good { .. } | Decoded::BadCrc { .. } => {}
            }
            let mut at = 0usize;
            loop {
                let size = match format::decode(&chunk[at..]) {
                    Decoded::Good { size } => {
                        let end = at + size as usize;
                        let payload = chunk.slice(at + RECORD_HEADER as usize..end);
                        taken += payload.len();
                        out.push(payload);
                        size
                    }
                    Decoded::BadCrc { size } => {
                        self.shared.skipped_records.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            segment = self.read.segment,
                            offset = self.read.offset,
                            "queue record failed its CRC; skipped"
                        );
                        size
                    }
                    Decoded::Short { need } => {
                        if self.read.offset + need > limit {
                            self.skip_damage(limit);
                        }
                        // Otherwise the record continues past this chunk: read on from it.
                        break;
                    }
                    Decoded::Damaged => {
                        self.skip_damage(limit);
                        break;
                    }
                };
                self.read.offset += size;
                self.read.seq += 1;
                at += size as usize;
                if taken >= max_bytes || out.len() - first >= limits.records {
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
    fn read_at(&mut self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let segment = self.read.segment;
        if !matches!(&self.file, Some((id, _)) if *id == segment) {
            self.file = Some((
                segment,
                File::open(format::segment_path(&self.shared.dir, segment))?,
            ));
        }
        let Some((_, file)) = &self.file else {
            return Err(std::io::Error::other("segment file not open"));
        };
        format::read_at(file, offset, len)
    }

    pub(in crate::queue) fn commit(&mut self, position: Position) {
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

    pub(in crate::queue) fn rewind(&mut self) {
        self.read = self.committed;
        self.file = None;
    }

    pub(in crate::queue) fn caught_up(&self) -> bool {
        let s = self.shared.lock();
        self.read.seq >= s.durable.seq
    }

    pub(in crate::queue) fn backlog(&self) -> u64 {
        self.shared
            .lock()
            .durable
            .seq
            .saturating_sub(self.committed.seq)
    }
}
