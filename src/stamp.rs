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

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::queue::{Prework, PreworkFn, Stamp};
use crate::syslog::Layout;
use crate::syslog::convert::fields;

/// The largest sequenceId (RFC 5424: 2^31 - 1); the next one is 1.
pub const MAX_SEQUENCE_ID: u64 = 2_147_483_647;

/// The `sequenceId` of the record at queue place `seq`.
pub fn sequence_id(seq: u64) -> u64 {
    seq % MAX_SEQUENCE_ID + 1
}

/// Appends `[meta sequenceId="N"]` for sequenceId `id`, with `sysUpTime="U"` when given.
pub(crate) fn push_meta(out: &mut BytesMut, id: u64, uptime: Option<u128>) {
    out.extend_from_slice(b"[meta sequenceId=\"");
    crate::syslog::frame::write_decimal(out, id);
    if let Some(uptime) = uptime {
        out.extend_from_slice(format!("\" sysUpTime=\"{uptime}").as_bytes());
    }
    out.extend_from_slice(b"\"]");
}

/// Where stamped records are written: each is split off as a [`Bytes`] that shares the
/// arena's allocation, so that stamping neither allocates nor formats per record (a `format!`
/// and a `Vec` per record were a tenth of the chain's stamping).
#[derive(Debug, Default)]
pub(crate) struct Arena(BytesMut);

impl Arena {
    /// Room for a few dozen records per allocation.
    const BYTES: usize = 64 << 10;

    /// `record` with what `elements` writes (at most `extra` bytes) put first in its
    /// STRUCTURED-DATA, which lies at `sd` (a `-` there is replaced).
    pub(crate) fn insert(
        &mut self,
        record: &[u8],
        sd: Range<usize>,
        extra: usize,
        elements: impl FnOnce(&mut BytesMut),
    ) -> Bytes {
        let need = record.len() + extra;
        if self.0.capacity() < need {
            self.0 = BytesMut::with_capacity(need.max(Self::BYTES));
        }
        let out = &mut self.0;
        out.extend_from_slice(record.get(..sd.start).unwrap_or(record));
        elements(out);
        match record.get(sd.clone()) {
            Some(b"-") | None => {}
            Some(existing) => out.extend_from_slice(existing),
        }
        out.extend_from_slice(record.get(sd.end..).unwrap_or_default());
        out.split().freeze()
    }
}

/// The most `[meta sequenceId="2147483647" sysUpTime="..."]` takes.
pub(crate) const META_MAX: usize = 80;

/// Adds `[meta sequenceId="N"]` to every record.
#[derive(Debug)]
pub struct SequenceIds {
    started: Instant,
    first: bool,
    arena: Arena,
}

impl Default for SequenceIds {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            first: true,
            arena: Arena::default(),
        }
    }
}

/// [`SequenceIds`]' prework: where the record's SD is, from the renderer's layout when it
/// fits, so that the queue's writer, which every append waits for, does not parse records.
fn sd_of(record: &[u8], layout: Option<&Layout>) -> Prework {
    Prework {
        digest: None,
        span: Layout::of(record, layout).map_or(0..0, |l| l.sd),
    }
}

impl SequenceIds {
    fn one(&mut self, seq: u64, record: &[u8], prework: Option<&Prework>) -> Bytes {
        let id = sequence_id(seq);
        let uptime =
            std::mem::take(&mut self.first).then(|| self.started.elapsed().as_millis() / 10);
        let sd = match prework {
            // An SD is never empty (`-` at least): an empty span is one not found.
            Some(p) if !p.span.is_empty() && record.get(p.span.clone()).is_some() => p.span.clone(),
            // The records are the relay's own RFC 5424 records, so this always finds the SD.
            _ => match fields(record) {
                Some(f) => f.sd,
                None => return Bytes::copy_from_slice(record),
            },
        };
        self.arena
            .insert(record, sd, META_MAX, |out| push_meta(out, id, uptime))
    }
}

impl Stamp for SequenceIds {
    fn prework(&self) -> Option<PreworkFn> {
        Some(sd_of)
    }

    fn stamp(&mut self, seq: u64, record: &[u8], prework: Option<&Prework>, out: &mut Vec<Bytes>) {
        out.push(self.one(seq, record, prework));
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
    fn elements_go_first_in_the_sd() {
        let mut arena = Arena::default();
        let mut insert = |record: &[u8]| {
            let sd = fields(record).unwrap().sd;
            arena.insert(record, sd, META_MAX, |out| push_meta(out, 7, None))
        };
        assert_eq!(
            &insert(b"<1>1 - h a - m - {}")[..],
            b"<1>1 - h a - m [meta sequenceId=\"7\"] {}"
        );
        assert_eq!(
            &insert(b"<1>1 - h a - m [x@1 k=\"v\"] {}")[..],
            b"<1>1 - h a - m [meta sequenceId=\"7\"][x@1 k=\"v\"] {}"
        );
        assert_eq!(
            &insert(b"<1>1 - h a - m -")[..],
            b"<1>1 - h a - m [meta sequenceId=\"7\"]"
        );
        // Records split off one arena stay intact as it fills and is replaced.
        let record = format!("<1>1 - h a - m - {}", "x".repeat(30_000));
        let stamped: Vec<Bytes> = (0..5).map(|_| insert(record.as_bytes())).collect();
        for s in &stamped {
            assert!(s.starts_with(b"<1>1 - h a - m [meta sequenceId=\"7\"] xxx"));
            assert_eq!(s.len(), record.len() - 1 + 21);
        }
    }

    #[test]
    fn numbers_count_from_1_and_wrap_to_1() {
        assert_eq!(sequence_id(0), 1);
        assert_eq!(sequence_id(MAX_SEQUENCE_ID - 1), MAX_SEQUENCE_ID);
        assert_eq!(sequence_id(MAX_SEQUENCE_ID), 1);
        let mut s = SequenceIds::default();
        let first = s.one(0, b"<110>1 - h a - S - {}", None);
        assert!(
            first.starts_with(b"<110>1 - h a - S [meta sequenceId=\"1\" sysUpTime=\""),
            "{}",
            String::from_utf8_lossy(&first)
        );
        let saved = s.save();
        let second = s.one(
            41,
            b"<110>1 - h a - S [k8saudit@32473 auditID=\"x\"] {}",
            None,
        );
        assert_eq!(
            &second[..],
            b"<110>1 - h a - S [meta sequenceId=\"42\"][k8saudit@32473 auditID=\"x\"] {}"
        );
        s.restore(&saved);
        let again = s.one(41, b"<110>1 - h a - S - {}", None);
        assert_eq!(&again[..], b"<110>1 - h a - S [meta sequenceId=\"42\"] {}");
    }

    #[test]
    fn the_renderers_layout_stamps_as_parsing_does() {
        // sysUpTime is a clock reading; every stamper here starts past it.
        let past_first = || SequenceIds {
            first: false,
            ..SequenceIds::default()
        };
        for syslog in [
            "sequence_id = true\n",
            "sequence_id = true\nenterprise_id = 32473\nbom = true\n",
        ] {
            let batch = crate::pipeline::render_corpus(syslog);
            let (mut with, mut without) = (past_first(), past_first());
            for (i, (record, layout)) in batch.records.iter().zip(&batch.layouts).enumerate() {
                let prework = sd_of(record, Some(layout));
                assert_eq!(prework.span, layout.sd);
                assert_eq!(prework, sd_of(record, None));
                let seq = i as u64 * 1_000;
                assert_eq!(
                    with.one(seq, record, Some(&prework)),
                    without.one(seq, record, None)
                );
            }
        }
        // A layout that does not fit the record is not trusted.
        let record = b"<13>1 - h a - m - {}";
        let wild = Layout {
            sd: 40..41,
            msg_start: 50,
            msg_digest: None,
        };
        assert_eq!(sd_of(record, Some(&wild)).span, 16..17);
        // One that fits is taken as it is: the record is not parsed.
        let fitting = Layout {
            sd: 17..18,
            msg_start: 19,
            msg_digest: None,
        };
        assert_eq!(sd_of(record, Some(&fitting)).span, 17..18);
        let mut s = past_first();
        // The writer takes the span it is given, without parsing...
        let given = Prework {
            digest: None,
            span: 18..20,
        };
        assert_eq!(
            &s.one(0, record, Some(&given))[..],
            b"<13>1 - h a - m - [meta sequenceId=\"1\"]{}"
        );
        // ...unless it does not fit, or none was found: then it parses.
        let outside = Prework {
            digest: None,
            span: 18..40,
        };
        assert_eq!(
            &s.one(0, record, Some(&outside))[..],
            b"<13>1 - h a - m [meta sequenceId=\"1\"] {}"
        );
        let not_rfc5424 = b"plain text";
        let none = sd_of(not_rfc5424, None);
        assert!(none.span.is_empty());
        assert_eq!(&s.one(0, not_rfc5424, Some(&none))[..], not_rfc5424);
    }
}
