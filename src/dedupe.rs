//! Duplicate suppression on (`auditID`, `stage`).
//!
//! The apiserver resends a whole batch when an answer is late or lost, and sends batches
//! concurrently, so the same event can arrive several times. A bounded window of recently
//! stored keys drops the repeats. Keys are recorded only after the batch is durable: a batch
//! refused with 503 must not make its own resend look like a duplicate.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

/// 128 bits of two independently keyed SipHash values: small enough for a 100 000-entry
/// window to stay near 3 MiB, wide enough that a false match (a lost event) is never seen
/// in practice (p ~ 1e-29 per pair).
pub type Key = u128;

/// A set of [`Key`]s that does not hash them again.
pub type KeySet = HashSet<Key, BuildHasherDefault<KeyHasher>>;

/// A bounded first-in first-out set of recently stored event keys.
#[derive(Debug)]
pub struct Dedupe {
    max_entries: usize,
    hashers: (RandomState, RandomState),
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    keys: KeySet,
    order: VecDeque<Key>,
}

/// Keys are already keyed hashes: sets use their low 64 bits instead of hashing again.
#[derive(Debug, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        // Truncation intended: the low half of a random 128-bit key.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "low 64 bits of a random key"
        )]
        let low = n as u64;
        self.0 = low;
    }
}

impl Dedupe {
    /// A window of `max_entries` keys; 0 turns deduplication off.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            hashers: (RandomState::new(), RandomState::new()),
            window: Mutex::new(Window::default()),
        }
    }

    /// The key of one event.
    pub fn key(&self, audit_id: &str, stage: &str) -> Key {
        let half = |state: &RandomState| state.hash_one((audit_id, stage));
        (u128::from(half(&self.hashers.0)) << 64) | u128::from(half(&self.hashers.1))
    }

    /// Whether the key was stored recently.
    pub fn contains(&self, key: Key) -> bool {
        self.seen(&[key]).first().copied().unwrap_or(false)
    }

    /// For each key, whether it was stored recently; one lock for the whole batch.
    pub fn seen(&self, keys: &[Key]) -> Vec<bool> {
        if self.max_entries == 0 {
            return vec![false; keys.len()];
        }
        match self.window.lock() {
            Ok(w) => keys.iter().map(|k| w.keys.contains(k)).collect(),
            Err(_) => vec![false; keys.len()],
        }
    }

    /// Records keys of events that are now durable, evicting the oldest beyond the bound.
    pub fn insert_all(&self, keys: &[Key]) {
        if self.max_entries == 0 {
            return;
        }
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        for &key in keys {
            if w.keys.insert(key) {
                w.order.push_back(key);
            }
        }
        while w.order.len() > self.max_entries {
            if let Some(old) = w.order.pop_front() {
                w.keys.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_window() {
        let d = Dedupe::new(2);
        let (a, b, c) = (d.key("a", "S"), d.key("b", "S"), d.key("c", "S"));
        assert_ne!(d.key("a", "S"), d.key("a", "T"));
        d.insert_all(&[a, b]);
        assert!(d.contains(a) && d.contains(b));
        d.insert_all(&[c]);
        assert!(!d.contains(a) && d.contains(b) && d.contains(c));
        let off = Dedupe::new(0);
        off.insert_all(&[a]);
        assert!(!off.contains(a));
    }
}
