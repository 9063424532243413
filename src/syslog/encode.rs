//! The encoder every transport uses: a stored RFC 5424 record written in a destination's
//! format (as stored, or RFC 3164) and framing (octet counting or LF) on a stream, as one
//! datagram of a bounded size, or as one NDJSON line (the record's MSG).

use std::borrow::Cow;

use crate::config::{Format, Framing};
use crate::syslog::convert::{fit, msg_start, to_rfc3164};
use crate::syslog::frame::frame;

/// Format plus framing of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    format: Format,
    framing: Framing,
}

impl Encoder {
    /// An encoder for `format` and `framing`.
    pub fn new(format: Format, framing: Framing) -> Self {
        Self { format, framing }
    }

    /// The record in this destination's format, without framing.
    pub fn message<'a>(&self, record: &'a [u8]) -> Cow<'a, [u8]> {
        match self.format {
            Format::Rfc5424 => Cow::Borrowed(record),
            // A record the relay did not write (never the case) is passed on as it is.
            Format::Rfc3164 => to_rfc3164(record).map_or(Cow::Borrowed(record), Cow::Owned),
        }
    }

    /// Appends the record to `out` as one frame.
    pub fn stream(&self, record: &[u8], out: &mut Vec<u8>) {
        frame(self.framing, &self.message(record), out);
    }

    /// The record as one datagram of at most `max` bytes, shortened by the apiserver's
    /// truncation rule when needed; `None` when it cannot be made to fit.
    pub fn datagram<'a>(&self, record: &'a [u8], max: usize) -> Option<Cow<'a, [u8]>> {
        let message = self.message(record);
        if message.len() <= max {
            return Some(message);
        }
        fit(&message, max).map(Cow::Owned)
    }

    /// Appends the record's MSG (the event JSON) and a newline to `out`.
    pub fn ndjson(&self, record: &[u8], out: &mut Vec<u8>) {
        let msg = msg_start(record).map_or(record, |at| &record[at..]);
        out.extend_from_slice(msg);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &[u8] = b"<110>1 2023-06-02T09:31:06.5Z h kube-apiserver - ResponseComplete [k8saudit@32473 auditID=\"a b\" user=\"x\\]\"] {\"auditID\":\"a b\"}";

    #[test]
    fn formats_and_framings() {
        let mut out = Vec::new();
        Encoder::new(Format::Rfc5424, Framing::Octet).stream(RECORD, &mut out);
        assert_eq!(
            out,
            [format!("{} ", RECORD.len()).as_bytes(), RECORD].concat()
        );
        out.clear();
        Encoder::new(Format::Rfc3164, Framing::Lf).stream(RECORD, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<110>Jun  2 09:31:06 h kube-apiserver: {\"auditID\":\"a b\"}\n"
        );
        let mut out = Vec::new();
        Encoder::new(Format::Rfc5424, Framing::Octet).ndjson(RECORD, &mut out);
        assert_eq!(out, b"{\"auditID\":\"a b\"}\n");
    }

    #[test]
    fn datagrams_fit_or_are_refused() {
        let e = Encoder::new(Format::Rfc5424, Framing::Octet);
        assert_eq!(e.datagram(RECORD, 1000).unwrap().as_ref(), RECORD);
        assert!(e.datagram(RECORD, 50).is_none());
    }
}
