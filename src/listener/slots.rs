//! The connection cap, and who makes room at it.
//!
//! Every open connection holds a slot. When all `listen.max_connections` slots are taken, a
//! connection that has not finished its TLS handshake, or one idle between requests, is
//! closed to make room: the oldest handshake first (a connection that sends nothing costs an
//! attacker nothing), then the connection idle the longest. Only when every connection is in
//! the middle of a request do new connections wait in the kernel backlog. Without this, 2000
//! idle TCP connections locked a valid client out until the handshake timeout freed slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The slots of one listener.
#[derive(Debug)]
pub(super) struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// Signalled when a connection becomes evictable (handshake done, request finished).
    evictable: Notify,
    epoch: Instant,
}

/// What an eviction closed, for the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evicted {
    /// A connection still in its TLS handshake (or, for plain HTTP, before its first request).
    Handshake,
    /// A connection between requests.
    Idle,
}

impl Evicted {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Evicted::Handshake => "handshake",
            Evicted::Idle => "idle",
        }
    }
}

/// One open connection's state, shared between its task and the slots.
#[derive(Debug)]
pub(super) struct Connection {
    id: u64,
    slots: Weak<Slots>,
    accepted: Instant,
    handshaken: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since the slots' epoch of the last request start or end.
    last_active_ms: AtomicU64,
    /// Cancelled to close the connection and free its slot.
    pub(super) evict: CancellationToken,
}

/// A taken slot: frees it (and forgets the connection) when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) connection: Arc<Connection>,
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            evictable: Notify::new(),
            epoch: Instant::now(),
        })
    }

    /// Waits for a free slot for a connection that was just accepted, closing a handshaking
    /// or idle connection when none is free. Cancel safe.
    pub(super) async fn take(self: &Arc<Self>, on_evict: impl Fn(Evicted)) -> Slot {
        loop {
            let notified = self.evictable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return self.slot(permit);
            }
            if let Some(kind) = self.evict_one() {
                on_evict(kind);
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => return self.slot(permit),
                    // The semaphore is never closed; wait as if nothing was free.
                    Err(_) => std::future::pending::<()>().await,
                },
                () = &mut notified => {}
            }
        }
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            slots: Arc::downgrade(self),
            accepted: Instant::now(),
            handshaken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            evict: CancellationToken::new(),
        });
        self.lock().insert(id, connection.clone());
        Slot {
            connection,
            _permit: permit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes the best candidate, if any: the oldest handshake, else the longest idle.
    fn evict_one(&self) -> Option<Evicted> {
        let mut open = self.lock();
        let handshaking = open
            .values()
            .filter(|c| !c.handshaken.load(Ordering::Acquire))
            .min_by_key(|c| c.accepted)
            .map(|c| (c.id, Evicted::Handshake));
        let victim = handshaking.or_else(|| {
            open.values()
                .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed))
                .map(|c| (c.id, Evicted::Idle))
        });
        let (id, kind) = victim?;
        // Forgotten at once, so that the next eviction picks another connection while this
        // one is still closing.
        if let Some(c) = open.remove(&id) {
            c.evict.cancel();
        }
        Some(kind)
    }
}

impl Connection {
    /// The TLS handshake finished (plain HTTP: the connection was accepted).
    pub(super) fn handshake_done(&self) {
        self.handshaken.store(true, Ordering::Release);
        self.touch_and_notify();
    }

    /// A request started on this connection (for plain HTTP, the first request also ends
    /// the "handshake": a connection that never sends one is the first to go).
    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.handshaken.store(true, Ordering::Release);
        self.touch();
    }

    /// A request on this connection was answered.
    pub(super) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.touch_and_notify();
        } else {
            self.touch();
        }
    }

    /// Whether this connection is being closed to make room (it then skips its lingering close:
    /// it has no answer in flight).
    pub(super) fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    fn touch(&self) {
        if let Some(slots) = self.slots.upgrade() {
            self.last_active_ms.store(slots.now_ms(), Ordering::Relaxed);
        }
    }

    fn touch_and_notify(&self) {
        if let Some(slots) = self.slots.upgrade() {
            self.last_active_ms.store(slots.now_ms(), Ordering::Relaxed);
            slots.evictable.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.connection.slots.upgrade() {
            slots.lock().remove(&self.connection.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_cap_evicts_handshakes_first_then_the_longest_idle() {
        let slots = Slots::new(3);
        let take = |expect: Evicted| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(move |k| assert_eq!(k, expect)).await })
        };
        let no_eviction = |k: Evicted| panic!("evicted {k:?} with room left");
        let a = slots.take(no_eviction).await;
        let b = slots.take(no_eviction).await;
        let c = slots.take(no_eviction).await;
        for s in [&a, &b, &c] {
            s.connection.handshake_done();
        }
        a.connection.request_started();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        c.connection.request_started();
        c.connection.request_finished();
        // a is busy; b has been idle the longest.
        let waiting = take(Evicted::Idle);
        b.connection.evict.cancelled().await;
        assert!(!a.connection.is_evicted() && !c.connection.is_evicted());
        drop(b);
        let d = waiting.await.unwrap();
        // d has not finished its handshake: it goes before the idle c.
        let waiting = take(Evicted::Handshake);
        d.connection.evict.cancelled().await;
        assert!(!c.connection.is_evicted());
        drop(d);
        let e = waiting.await.unwrap();
        // Everything busy: a newcomer waits for a slot instead of evicting.
        for s in [&c, &e] {
            s.connection.handshake_done();
            s.connection.request_started();
        }
        let waiting = take(Evicted::Idle);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // A request ends: that connection is idle now and makes room.
        e.connection.request_finished();
        e.connection.evict.cancelled().await;
        drop(e);
        waiting.await.unwrap();
    }
}
