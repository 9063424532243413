//! What the relay writes into each record when it is stored ([`crate::queue::Stamp`]):
//! RFC 5424's `[meta sequenceId="N"]` (`syslog.sequence_id`). Stamping at store time means a
//! resend, after a reconnect or a restart, carries the same number: a receiver can tell a
//! repeat (same number) from a gap (a missing number).
//!
//! N is the record's place in the queue, counting from 1 and wrapping to 1 after 2147483647
//! as RFC 5424 §7.3.1 says. The disk queue continues the count across restarts; the memory
//! queue starts again at 1. The first record stored after each start also carries
//! `sysUpTime` (hundredths of a second since the relay started), so that a receiver can tell
//! a restart of the numbering from a wrap.

use bytes::Bytes;
use tokio::time::Instant;

use crate::queue::{Prework, Stamp};
use crate::syslog::convert::add_sd_element;

/// The largest sequenceId (RFC 5424: 2^31 - 1); the next one is 1.
pub const MAX_SEQUENCE_ID: u64 = 2_147_483_647;

/// The `sequenceId` of the record at queue place `seq`.
pub fn sequence_id(seq: u64) -> u64 {
    seq % MAX_SEQUENCE_ID + 1
}

/// Adds `[meta sequenceId="N"]` to every record.
#[derive(Debug)]
pub struct SequenceIds {
    started: Instant,
    first: bool,
}

impl Default for SequenceIds {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            first: true,
        }
    }
}

impl SequenceIds {
    fn one(&mut self, seq: u64, record: &[u8]) -> Bytes {
        let id = sequence_id(seq);
        let element = if std::mem::take(&mut self.first) {
            let uptime = self.started.elapsed().as_millis() / 10;
            format!("[meta sequenceId=\"{id}\" sysUpTime=\"{uptime}\"]")
        } else {
            format!("[meta sequenceId=\"{id}\"]")
        };
        // The records are the relay's own RFC 5424 records, so this always finds the SD.
        add_sd_element(record, element.as_bytes())
            .map_or_else(|| Bytes::copy_from_slice(record), Bytes::from)
    }
}

impl Stamp for SequenceIds {
    fn stamp(&mut self, seq: u64, record: &[u8], _: Option<&Prework>, out: &mut Vec<Bytes>) {
        out.push(self.one(seq, record));
    }

    fn save(&self) -> Vec<u8> {
        vec![u8::from(self.first)]
    }

    fn restore(&mut self, state: &[u8]) {
        self.first = state.first() == Some(&1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_count_from_1_and_wrap_to_1() {
        assert_eq!(sequence_id(0), 1);
        assert_eq!(sequence_id(MAX_SEQUENCE_ID - 1), MAX_SEQUENCE_ID);
        assert_eq!(sequence_id(MAX_SEQUENCE_ID), 1);
        let mut s = SequenceIds::default();
        let first = s.one(0, b"<110>1 - h a - S - {}");
        assert!(
            first.starts_with(b"<110>1 - h a - S [meta sequenceId=\"1\" sysUpTime=\""),
            "{}",
            String::from_utf8_lossy(&first)
        );
        let saved = s.save();
        let second = s.one(41, b"<110>1 - h a - S [k8saudit@32473 auditID=\"x\"] {}");
        assert_eq!(
            &second[..],
            b"<110>1 - h a - S [meta sequenceId=\"42\"][k8saudit@32473 auditID=\"x\"] {}"
        );
        s.restore(&saved);
        let again = s.one(41, b"<110>1 - h a - S - {}");
        assert_eq!(&again[..], b"<110>1 - h a - S [meta sequenceId=\"42\"] {}");
    }
}
