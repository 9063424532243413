//! The encoder every transport uses: a stored RFC 5424 record written in a destination's
//! format (as stored, or RFC 3164) and framing (octet counting or LF) on a stream, as one
//! message for a transport with its own framing (RELP), as one datagram, or as one NDJSON
//! line (the record's MSG), each within the destination's size limit.
//!
//! The stored record never changes: a record above one destination's `max_message_bytes` is
//! cut (the apiserver's truncation rule) or dropped for that destination only, here.

use std::borrow::Cow;

use crate::config::{Format, Framing, Oversize};
use crate::siem;
use crate::syslog::convert::{msg_start, to_rfc3164, truncate_record};
use crate::syslog::frame::frame;

/// Format, framing and size limit of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    format: Format,
    framing: Framing,
    max: usize,
    oversize: Oversize,
    /// SIEM formats: keep the stored record's syslog header in front.
    syslog_header: bool,
}

/// A record made ready for one destination.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared<'a> {
    /// Within the limit as it is.
    Whole(Cow<'a, [u8]>),
    /// Within the limit after the apiserver's truncation rule.
    Truncated(Vec<u8>),
    /// Above the limit (and `oversize = "drop"`, or too large even truncated).
    Dropped,
}

impl Prepared<'_> {
    /// The bytes to send, unless dropped.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Prepared::Whole(b) => Some(b),
            Prepared::Truncated(b) => Some(b),
            Prepared::Dropped => None,
        }
    }
}

impl Encoder {
    /// An encoder for `format` and `framing` that keeps messages within `max` bytes.
    pub fn new(format: Format, framing: Framing, max: usize, oversize: Oversize) -> Self {
        Self {
            format,
            framing,
            max,
            oversize,
            syslog_header: format != Format::Ocsf,
        }
    }

    /// The same encoder with (`true`) or without the syslog header before a SIEM format.
    pub fn with_syslog_header(self, syslog_header: bool) -> Self {
        Self {
            syslog_header,
            ..self
        }
    }

    /// The same encoder with a smaller limit (a datagram size).
    pub fn with_max(self, max: usize) -> Self {
        Self {
            max: self.max.min(max),
            ..self
        }
    }

    /// The record in this destination's format, without framing and without size limit.
    pub fn message<'a>(&self, record: &'a [u8]) -> Cow<'a, [u8]> {
        match self.format {
            Format::Rfc5424 => Cow::Borrowed(record),
            // A record the relay did not write (never the case) is passed on as it is.
            Format::Rfc3164 => to_rfc3164(record).map_or(Cow::Borrowed(record), Cow::Owned),
            Format::Cef | Format::Leef | Format::Ocsf => self.siem(record),
        }
    }

    /// A SIEM format; the relay's own records (integrity checkpoints) go as they are.
    fn siem<'a>(&self, record: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(event) = siem::Event::of(record) else {
            return Cow::Borrowed(record);
        };
        let header = if self.syslog_header {
            event.header
        } else {
            &[][..]
        };
        let budget = self.max.saturating_sub(header.len());
        let body = match self.format {
            Format::Cef => siem::cef::render(&event, budget),
            Format::Leef => siem::leef::render(&event, budget),
            _ => siem::ocsf::render(&event),
        };
        Cow::Owned(siem::with_header(header, body))
    }

    /// The record in this destination's format, within its size limit.
    pub fn prepare<'a>(&self, record: &'a [u8]) -> Prepared<'a> {
        let message = self.message(record);
        if message.len() <= self.max {
            return Prepared::Whole(message);
        }
        if self.oversize == Oversize::Drop {
            return Prepared::Dropped;
        }
        match truncate_record(record) {
            Some(short) => {
                let short = match self.message(&short) {
                    Cow::Borrowed(_) => short,
                    Cow::Owned(converted) => converted,
                };
                if short.len() <= self.max {
                    Prepared::Truncated(short)
                } else {
                    Prepared::Dropped
                }
            }
            None => Prepared::Dropped,
        }
    }

    /// Prepares the record and appends it to `out` as one frame; `false` when it was dropped.
    pub fn stream(&self, record: &[u8], out: &mut Vec<u8>) -> bool {
        match self.prepare(record).bytes() {
            Some(message) => {
                self.frame(message, out);
                true
            }
            None => false,
        }
    }

    /// Appends `message` (from [`Encoder::prepare`]) to `out` as one frame.
    pub fn frame(&self, message: &[u8], out: &mut Vec<u8>) {
        frame(self.framing, message, out);
    }

    /// Appends the record's MSG (the event JSON) and a newline to `out`.
    pub fn ndjson(&self, message: &[u8], out: &mut Vec<u8>) {
        let msg = msg_start(message).map_or(message, |at| &message[at..]);
        out.extend_from_slice(msg);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &[u8] = b"<110>1 2023-06-02T09:31:06.5Z h kube-apiserver - ResponseComplete [k8saudit@32473 auditID=\"a b\" user=\"x\\]\"] {\"auditID\":\"a b\"}";

    fn encoder(format: Format, framing: Framing, max: usize) -> Encoder {
        Encoder::new(format, framing, max, Oversize::Truncate)
    }

    #[test]
    fn formats_and_framings() {
        let e = encoder(Format::Rfc5424, Framing::Octet, 1000);
        let mut out = Vec::new();
        e.frame(e.prepare(RECORD).bytes().unwrap(), &mut out);
        assert_eq!(
            out,
            [format!("{} ", RECORD.len()).as_bytes(), RECORD].concat()
        );
        let e = encoder(Format::Rfc3164, Framing::Lf, 1000);
        let mut out = Vec::new();
        e.frame(e.prepare(RECORD).bytes().unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<110>Jun  2 09:31:06 h kube-apiserver: {\"auditID\":\"a b\"}\n"
        );
        let mut out = Vec::new();
        encoder(Format::Rfc5424, Framing::Octet, 1000).ndjson(RECORD, &mut out);
        assert_eq!(out, b"{\"auditID\":\"a b\"}\n");
    }

    #[test]
    fn records_above_the_limit_are_truncated_or_dropped() {
        let big = format!(
            "<110>1 - h app - S - {{\"auditID\":\"a\",\"requestObject\":{{\"d\":\"{}\"}}}}",
            "x".repeat(1000)
        );
        let e = encoder(Format::Rfc5424, Framing::Octet, 200);
        assert_eq!(
            e.prepare(big.as_bytes()),
            Prepared::Truncated(
                b"<110>1 - h app - S - {\"auditID\":\"a\",\"annotations\":{\"audit.k8s.io/truncated\":\"true\"}}"
                    .to_vec()
            )
        );
        assert_eq!(e.with_max(50).prepare(big.as_bytes()), Prepared::Dropped);
        let drop = Encoder::new(Format::Rfc5424, Framing::Octet, 200, Oversize::Drop);
        assert_eq!(drop.prepare(big.as_bytes()), Prepared::Dropped);
        assert!(matches!(
            drop.prepare(RECORD),
            Prepared::Whole(Cow::Borrowed(_))
        ));
        // RFC 3164 is measured in its own form.
        let e3164 = encoder(Format::Rfc3164, Framing::Lf, 200);
        let Prepared::Truncated(short) = e3164.prepare(big.as_bytes()) else {
            panic!("truncated")
        };
        assert!(short.starts_with(b"<110>Jan  1 00:00:00 h app: {\"auditID\":\"a\""));
    }
}
