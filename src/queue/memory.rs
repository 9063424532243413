//! The memory queue: a bounded ring of records shared by all destinations' readers.
//! Lost on crash; for sidecars that accept that (`queue.kind = "memory"`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Limits, Position, Prework, QueueError, QueueStats, Stamper};

/// The queue is pressed above `max_bytes / PRESSED_SHARE`. Peak memory is the whole budget
/// either way (a connection younger than `confirm_after` confirms nothing early); the share
/// sets how much stays held for confirmation at a steady high rate, and half keeps that
/// protection for rates up to half the budget per `confirm_after`.
pub(super) const PRESSED_SHARE: u64 = 2;

#[derive(Debug)]
struct State {
    records: VecDeque<Bytes>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    bytes: u64,
    /// Committed sequence number per destination.
    cursors: Vec<u64>,
    closed: bool,
    stamp: Option<Stamper>,
}

impl State {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }

    /// Drops records every destination has committed.
    fn release(&mut self) {
        let lowest = self
            .cursors
            .iter()
            .copied()
            .min()
            .unwrap_or_else(|| self.end_seq());
        while self.first_seq < lowest {
            match self.records.pop_front() {
                Some(r) => self.bytes -= r.len() as u64,
                None => break,
            }
            self.first_seq += 1;
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    appended: Notify,
    max_bytes: u64,
    /// `when_full = "drop_oldest"`.
    drop_oldest: bool,
    dropped: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent in a way that
        // matters more than stopping the relay would, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bounded in-memory queue.
#[derive(Debug)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

impl MemoryQueue {
    /// A queue of at most `max_bytes` for `destinations` readers.
    pub fn new(
        max_bytes: u64,
        destinations: usize,
        drop_oldest: bool,
        mut stamp: Option<Stamper>,
    ) -> Self {
        if let Some(s) = &mut stamp {
            s.resume(None);
        }
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    records: VecDeque::new(),
                    first_seq: 0,
                    bytes: 0,
                    cursors: vec![0; destinations],
                    closed: false,
                    stamp,
                }),
                appended: Notify::new(),
                max_bytes,
                drop_oldest,
                dropped: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Stores `records`; `prework` is the stamper's prework for each, or empty.
    pub(super) fn append_with(
        &self,
        records: Vec<Bytes>,
        prework: Vec<Prework>,
    ) -> Result<(), QueueError> {
        let incoming: u64 = records.iter().map(|r| r.len() as u64).sum();
        let mut state = self.shared.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        if state.bytes + incoming > self.shared.max_bytes
            && self.shared.drop_oldest
            && incoming <= self.shared.max_bytes
        {
            // Make room: the oldest records go, counted and logged; cursors past them move up.
            let lowest = state
                .cursors
                .iter()
                .copied()
                .min()
                .unwrap_or(state.first_seq);
            let mut dropped = 0u64;
            while state.bytes + incoming > self.shared.max_bytes {
                let Some(r) = state.records.pop_front() else {
                    break;
                };
                state.bytes -= r.len() as u64;
                if state.first_seq >= lowest {
                    dropped += 1;
                }
                state.first_seq += 1;
            }
            let first = state.first_seq;
            for c in &mut state.cursors {
                *c = (*c).max(first);
            }
            self.shared
                .dropped
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                events = dropped,
                "queue full: dropped the oldest undelivered events (queue.when_full = \"drop_oldest\")"
            );
        }
        // A batch larger than the whole budget is taken into an empty queue: refused, it
        // would be refused forever, and the apiserver would drop it after its retries. Memory
        // stays bounded by the budget or one body, which `listen.max_body_bytes` bounds.
        if state.bytes + incoming > self.shared.max_bytes && state.bytes > 0 {
            return Err(QueueError::Full {
                stored: state.bytes,
                max: self.shared.max_bytes,
                incoming,
            });
        }
        state.bytes += incoming;
        let first = state.end_seq();
        let s = &mut *state;
        match &mut s.stamp {
            None => s.records.extend(records),
            Some(stamp) => {
                let mut stamped = Vec::with_capacity(records.len());
                for (i, record) in records.iter().enumerate() {
                    let seq = first + stamped.len() as u64;
                    stamp.stamp(seq, record, prework.get(i), &mut stamped);
                }
                s.bytes = s.bytes + stamped.iter().map(|r| r.len() as u64).sum::<u64>() - incoming;
                s.records.extend(stamped);
            }
        }
        drop(state);
        self.shared.appended.notify_waiters();
        Ok(())
    }

    pub(super) fn reader(&self, index: usize) -> MemoryReader {
        let committed = self.shared.lock().cursors.get(index).copied().unwrap_or(0);
        MemoryReader {
            shared: self.shared.clone(),
            index,
            read: committed,
            committed,
        }
    }

    pub(super) fn stats(&self) -> QueueStats {
        let state = self.shared.lock();
        QueueStats {
            bytes: state.bytes,
            end_seq: state.end_seq(),
        }
    }

    pub(super) fn dropped_oldest(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn backlogs(&self) -> Vec<u64> {
        let state = self.shared.lock();
        let end = state.end_seq();
        state
            .cursors
            .iter()
            .map(|c| end.saturating_sub(*c))
            .collect()
    }

    pub(super) fn close(&self) {
        self.shared.lock().closed = true;
    }
}

/// One destination's cursor into a [`MemoryQueue`].
#[derive(Debug)]
pub struct MemoryReader {
    shared: Arc<Shared>,
    index: usize,
    read: u64,
    committed: u64,
}

impl MemoryReader {
    pub(super) async fn next_batch(&mut self, limits: Limits, out: &mut Vec<Bytes>) -> Position {
        loop {
            let notified = self.shared.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                let start = self.read.max(state.first_seq);
                if start < state.end_seq() {
                    let mut taken = 0usize;
                    let mut seq = start;
                    for record in state
                        .records
                        .range((start - state.first_seq) as usize..)
                        .take(limits.records)
                    {
                        if taken > 0 && taken + record.len() > limits.bytes {
                            break;
                        }
                        taken += record.len();
                        out.push(record.clone());
                        seq += 1;
                    }
                    self.read = seq;
                    return Position {
                        seq,
                        segment: 0,
                        offset: 0,
                    };
                }
            }
            notified.await;
        }
    }

    pub(super) fn commit(&mut self, position: Position) {
        self.committed = self.committed.max(position.seq);
        let mut state = self.shared.lock();
        if let Some(c) = state.cursors.get_mut(self.index) {
            *c = self.committed;
        }
        state.release();
    }

    pub(super) fn rewind(&mut self) {
        self.read = self.committed;
    }

    pub(super) fn caught_up(&self) -> bool {
        self.read >= self.shared.lock().end_seq()
    }

    pub(super) fn backlog(&self) -> u64 {
        self.shared.lock().end_seq().saturating_sub(self.committed)
    }

    /// Whether the queue holds more than `1 / PRESSED_SHARE` of its budget: then records
    /// written on a proven connection stop waiting out `confirm_after` in memory.
    pub(super) fn pressed(&self) -> bool {
        self.shared.lock().bytes > self.shared.max_bytes / PRESSED_SHARE
    }
}
