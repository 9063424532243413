//! Duplicate suppression on (`auditID`, `stage`) and the event's exact bytes.
//!
//! The apiserver resends a whole batch when an answer is late or lost, and sends batches
//! concurrently, so the same event can arrive several times, byte for byte the same. A
//! bounded window of recently stored keys drops the repeats. The bytes are part of the key
//! because the apiserver takes a request's auditID from its `Audit-ID` header when the
//! client sends one: keyed on (`auditID`, `stage`) alone, any client could make its own
//! request vanish from the trail by reusing a recent auditID. The bytes are the record's MSG
//! as stored (after redaction and truncation): a repeat is one that would add a byte-identical
//! record. Hashing them costs about 150 ns per 700-byte event (SipHash-1-3; GHASH through
//! ring's AES-GCM measured ~470 ns, as ring takes associated data block by block); with the
//! chain on, the MSG's SHA-256, which the chain needs anyway, stands in for the MSG, so the
//! event is hashed once, not twice. Keys are recorded only after the batch is durable: a batch
//! refused with 503 must not make its own resend look like a duplicate.
//!
//! The window is two generations of keys: new keys go into the current one, and when it
//! holds `max_entries` it becomes the previous one and the one before is forgotten at once.
//! So the last `max_entries` keys are always known (up to twice as many are), and no key is
//! removed one by one: evicting the oldest key per insert, a probe into a table of 100 000
//! entries that is rarely in cache, was 4% of the relay's CPU in `perf`.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

/// 128 bits of two independently keyed SipHash values (of `auditID` and `stage`, and of the
/// event's bytes): small enough for a 100 000-entry window to stay near 4.5 MiB (both
/// generations), wide enough that a false match (a lost event) is never seen in practice
/// (p ~ 1e-29 per pair).
pub type Key = u128;

/// A set of [`Key`]s that does not hash them again.
pub type KeySet = HashSet<Key, BuildHasherDefault<KeyHasher>>;

/// A bounded set of recently stored event keys (see the module).
#[derive(Debug)]
pub struct Dedupe {
    max_entries: usize,
    hashers: (RandomState, RandomState),
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Keys stored since the last turn, fewer than `max_entries`.
    current: KeySet,
    /// The `max_entries` keys stored before them.
    previous: KeySet,
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
    /// A window of at least the last `max_entries` keys; 0 turns deduplication off.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            hashers: (RandomState::new(), RandomState::new()),
            window: Mutex::new(Window::default()),
        }
    }

    /// Whether keys are kept at all (`max_entries` is not 0): when not, nothing needs one.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// The key of one event: its `auditID` and `stage` (read from it) and `bytes`, what the
    /// relay stores of it (its MSG, or the SHA-256 of its MSG when the chain has one). Equal
    /// only for the same event resent; without the secret keys no client can make another
    /// event's key.
    pub fn key(&self, audit_id: &str, stage: &str, bytes: &[u8]) -> Key {
        let ids = self.hashers.0.hash_one((audit_id, stage));
        let bytes = self.hashers.1.hash_one(bytes);
        (u128::from(ids) << 64) | u128::from(bytes)
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
            Ok(w) => keys
                .iter()
                .map(|k| w.current.contains(k) || w.previous.contains(k))
                .collect(),
            Err(_) => vec![false; keys.len()],
        }
    }

    /// Records keys of events that are now durable, forgetting the oldest generation when
    /// the current one is full.
    pub fn insert_all(&self, keys: &[Key]) {
        if self.max_entries == 0 {
            return;
        }
        let Ok(mut guard) = self.window.lock() else {
            return;
        };
        let w = &mut *guard;
        for &key in keys {
            w.current.insert(key);
            if w.current.len() >= self.max_entries {
                // The previous generation's table is reused: clearing it keeps its capacity.
                std::mem::swap(&mut w.current, &mut w.previous);
                w.current.clear();
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
        let (a, b, c) = (
            d.key("a", "S", b"{}"),
            d.key("b", "S", b"{}"),
            d.key("c", "S", b"{}"),
        );
        assert_eq!(d.key("a", "S", b"{}"), a);
        assert_ne!(d.key("a", "S", b"{}"), d.key("a", "T", b"{}"));
        // The same auditID and stage with other bytes: another event, as when a client
        // chooses its Audit-ID.
        assert_ne!(d.key("a", "S", b"{}"), d.key("a", "S", b"{ }"));
        d.insert_all(&[a, b]);
        assert!(d.contains(a) && d.contains(b));
        d.insert_all(&[c]);
        assert!(d.contains(b) && d.contains(c));
        let off = Dedupe::new(0);
        off.insert_all(&[a]);
        assert!(!off.contains(a));
    }

    #[test]
    fn the_last_max_entries_are_always_known_and_at_most_twice_as_many() {
        let d = Dedupe::new(100);
        let keys: Vec<Key> = (0..1000)
            .map(|i| d.key(&i.to_string(), "S", b"{}"))
            .collect();
        for (n, &key) in keys.iter().enumerate() {
            d.insert_all(&[key]);
            let recent = &keys[(n + 1).saturating_sub(100)..=n];
            assert!(recent.iter().all(|&k| d.contains(k)), "after {n}");
            if n >= 200 {
                assert!(!d.contains(keys[n - 200]), "forgotten after {n}");
            }
        }
        // Repeats in a batch are one key.
        let d = Dedupe::new(3);
        d.insert_all(&[keys[0], keys[0], keys[0], keys[1]]);
        assert!(d.contains(keys[0]) && d.contains(keys[1]));
    }
}
