//! What every record the pipeline produces must satisfy, whatever the input.

use kube_audit_relay::audit::{AuditError, EventList, Item, write_compact};
use kube_audit_relay::config::{Config, Format, Framing, Oversize};
use kube_audit_relay::pipeline::Pipeline;
use kube_audit_relay::syslog::{Encoder, next_frame, parse_strict};

/// Runs the pipeline on `body` and checks each record: within the size limit, strict RFC
/// 5424, MSG valid JSON, no raw line break, and both framings round-trip.
pub fn check(config: &Config, body: &[u8]) {
    assert_split_equivalent(body);
    let pipeline = Pipeline::new(config, "fuzz-host");
    let Ok(batch) = pipeline.run(body, "2026-01-01T00:00:00Z") else { return };
    for record in &batch.records {
        assert!(record.len() as u64 <= config.syslog.max_message_bytes.0);
        let parsed = parse_strict(record).expect("strict RFC 5424");
        assert_json(parsed.msg);
        assert!(!record.contains(&b'\n'));
        for framing in [Framing::Octet, Framing::Lf] {
            let mut out = Vec::new();
            Encoder::new(Format::Rfc5424, framing, usize::MAX, Oversize::Truncate).stream(record, &mut out);
            let (used, got) = next_frame(framing, &out, usize::MAX).expect("frame").expect("complete");
            assert_eq!(used, out.len());
            assert_eq!(got, &record[..]);
        }
        let mut line = Vec::new();
        Encoder::new(Format::Rfc5424, Framing::Lf, usize::MAX, Oversize::Truncate).ndjson(record, &mut line);
        assert_eq!(&line[..line.len() - 1], parsed.msg);
    }
}

/// Valid JSON for a strict parser. Numbers beyond f64 are valid JSON text and relayed verbatim
/// by design (the relay never converts numbers), so only that error is tolerated.
pub fn assert_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        assert!(e.to_string().contains("number out of range"), "not JSON: {e}");
    }
}

/// The fast paths of the split give what the two-scan reference gives: the same items, byte
/// for byte, with the same fields, or the same error; an item the scanner calls compact is
/// one compaction leaves as it is.
pub fn assert_split_equivalent(body: &[u8]) {
    for item in EventList::items_scanned(body).unwrap_or_default() {
        if item.compact {
            let mut out = Vec::new();
            write_compact(&mut out, item.json);
            assert_eq!(out, item.json.as_bytes());
        }
    }
    fn describe(r: &Result<Vec<Item<'_>>, AuditError>) -> String {
        match r {
            Ok(items) => items.iter().map(|i| format!("{}\n{:?}\n", i.json, i.view)).collect(),
            Err(e) => format!("error: {e}"),
        }
    }
    assert_eq!(describe(&EventList::items(body)), describe(&EventList::items_two_scans(body)));
}
