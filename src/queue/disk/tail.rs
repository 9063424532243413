//! The newest durable records, kept in RAM as the writer wrote them (`queue.read_cache_bytes`).
//!
//! A sender that keeps up asks for records a moment after the writer made them durable; reading
//! them back from the segment file cost a `pread`, its page faults and a CRC check per chunk
//! (7% of the relay's CPU with the disk queue at S1 load). The writer hands each synced group
//! here instead, and a reader whose position is the start of a cached record takes it from here.
//! A reader further behind reads the file as before: the cache only ever holds records that
//! are already durable, in queue order, so it can be dropped at any time without loss.

use std::collections::VecDeque;

use bytes::Bytes;

use super::format::{RECORD_HEADER, SEGMENT_HEADER};
use crate::queue::{Limits, Position};

/// Durable records in queue order, at most `max` payload bytes of them.
#[derive(Debug)]
pub(super) struct Tail {
    records: VecDeque<(Position, Bytes)>,
    bytes: usize,
    max: usize,
}

impl Tail {
    /// An empty cache holding at most `max` bytes; `0` keeps nothing.
    pub(super) fn new(max: usize) -> Self {
        Self {
            records: VecDeque::new(),
            bytes: 0,
            max,
        }
    }

    /// Whether anything is kept at all: the writer need not collect records otherwise.
    pub(super) fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Adds records that just became durable, each with the position it starts at; the
    /// oldest go when the budget is exceeded.
    pub(super) fn push(&mut self, records: impl IntoIterator<Item = (Position, Bytes)>) {
        if !self.enabled() {
            return;
        }
        for (at, record) in records {
            if self
                .records
                .back()
                .is_some_and(|(last, _)| last.seq + 1 != at.seq)
            {
                // Not the continuation of what is kept (cannot happen from one writer; if it
                // did, a gap must not be served as if it were contiguous).
                self.clear();
            }
            self.bytes += record.len();
            self.records.push_back((at, record));
        }
        while self.bytes > self.max {
            let Some((_, gone)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= gone.len();
        }
    }

    /// Forgets records numbered below `seq` (their segments were deleted undelivered).
    pub(super) fn forget_below(&mut self, seq: u64) {
        while let Some((at, _)) = self.records.front() {
            if at.seq >= seq {
                break;
            }
            if let Some((_, gone)) = self.records.pop_front() {
                self.bytes -= gone.len();
            }
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Appends to `out` the cached records from `read` on, within `limits` (at least one), and
    /// returns the position after the last one; `None` when the record at `read` is not kept.
    pub(super) fn read(
        &self,
        read: Position,
        limits: Limits,
        out: &mut Vec<Bytes>,
    ) -> Option<Position> {
        let (front, _) = self.records.front()?;
        let index = usize::try_from(read.seq.checked_sub(front.seq)?).ok()?;
        let (at, _) = self.records.get(index)?;
        // The same record the file holds at `read`: at that offset, or, when `read` is the end
        // of a segment, the first record of a later one.
        let same = *at == read
            || (at.seq == read.seq && at.segment > read.segment && at.offset == SEGMENT_HEADER);
        if !same {
            return None;
        }
        let (mut end, mut taken, first) = (read, 0usize, out.len());
        for (at, record) in self.records.range(index..) {
            out.push(record.clone());
            taken += record.len();
            end = Position {
                seq: at.seq + 1,
                segment: at.segment,
                offset: at.offset + RECORD_HEADER + record.len() as u64,
            };
            if taken >= limits.bytes || out.len() - first >= limits.records {
                break;
            }
        }
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, segment: u64, offset: u64) -> Position {
        Position {
            seq,
            segment,
            offset,
        }
    }

    /// Records 0..n of 10 bytes, three per segment, as the writer would place them.
    fn filled(max: usize, n: u64) -> (Tail, Vec<(Position, Bytes)>) {
        let placed: Vec<(Position, Bytes)> = (0..n)
            .map(|seq| {
                let offset = SEGMENT_HEADER + (seq % 3) * (RECORD_HEADER + 10);
                (
                    at(seq, 1 + seq / 3, offset),
                    Bytes::from(format!("record-{seq:03}")),
                )
            })
            .collect();
        let mut tail = Tail::new(max);
        tail.push(placed.clone());
        (tail, placed)
    }

    const ALL: Limits = Limits {
        bytes: usize::MAX,
        records: usize::MAX,
    };

    #[test]
    fn serves_from_a_record_start_across_segments_and_within_limits() {
        let (tail, placed) = filled(1 << 20, 9);
        let mut out = Vec::new();
        let end = tail.read(placed[1].0, ALL, &mut out).unwrap();
        assert_eq!(
            out,
            placed[1..].iter().map(|p| p.1.clone()).collect::<Vec<_>>()
        );
        assert_eq!(end, at(9, 3, SEGMENT_HEADER + 3 * (RECORD_HEADER + 10)));
        // The end of segment 1 is where a reader stands after its last record.
        let end_of_first = at(3, 1, SEGMENT_HEADER + 3 * (RECORD_HEADER + 10));
        out.clear();
        let limits = Limits {
            bytes: usize::MAX,
            records: 2,
        };
        let end = tail.read(end_of_first, limits, &mut out).unwrap();
        assert_eq!(out, vec![placed[3].1.clone(), placed[4].1.clone()]);
        assert_eq!(
            end, placed[5].0,
            "the next read starts where the file has record 5"
        );
        out.clear();
        let limits = Limits {
            bytes: 1,
            records: usize::MAX,
        };
        tail.read(placed[7].0, limits, &mut out).unwrap();
        assert_eq!(
            out.len(),
            1,
            "at least one record, however small the byte limit"
        );
    }

    #[test]
    fn a_position_it_does_not_hold_is_left_to_the_file() {
        let (mut tail, placed) = filled(35, 9);
        let mut out = Vec::new();
        assert!(
            tail.read(placed[5].0, ALL, &mut out).is_none(),
            "35 bytes keep the last three records only"
        );
        assert!(tail.read(placed[6].0, ALL, &mut out).is_some());
        out.clear();
        assert!(
            tail.read(at(9, 3, 0), ALL, &mut out).is_none(),
            "not yet durable"
        );
        assert!(
            tail.read(at(7, 3, 99), ALL, &mut out).is_none(),
            "a number with another offset is another record"
        );
        tail.forget_below(8);
        assert!(tail.read(placed[7].0, ALL, &mut out).is_none());
        assert!(out.is_empty());
        let mut off = Tail::new(0);
        off.push(placed);
        assert!(!off.enabled());
        assert!(off.read(at(0, 1, SEGMENT_HEADER), ALL, &mut out).is_none());
    }

    #[test]
    fn a_gap_is_never_served_as_contiguous() {
        let (mut tail, placed) = filled(1 << 20, 3);
        tail.push([(at(7, 5, SEGMENT_HEADER), Bytes::from_static(b"later"))]);
        let mut out = Vec::new();
        assert!(tail.read(placed[0].0, ALL, &mut out).is_none());
        assert_eq!(
            tail.read(at(7, 5, SEGMENT_HEADER), ALL, &mut out),
            Some(at(8, 5, SEGMENT_HEADER + RECORD_HEADER + 5))
        );
        assert_eq!(out, vec![Bytes::from_static(b"later")]);
    }
}
