//! The fast paths of the split (`EventList::items`: the relay's own scanner, then serde in
//! one scan) against the two-scan reference (`EventList::items_two_scans`): on every corpus
//! body and captured apiserver body, on
//! reformatted copies (whitespace everywhere JSON allows it, `items` first or last), and on
//! thousands of byte-level mutations of them, both give the same items, byte for byte, with
//! the same fields, or the same error; and an item the scanner calls compact is one that
//! compaction leaves as it is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use kube_audit_relay::audit::{AuditError, EventList, Item, write_compact};

fn describe(r: &Result<Vec<Item<'_>>, AuditError>) -> String {
    match r {
        Ok(items) => items
            .iter()
            .map(|i| format!("{}\n{:?}\n", i.json, i.view))
            .collect(),
        Err(e) => format!("error: {e}"),
    }
}

fn same(body: &[u8]) -> bool {
    for item in EventList::items_scanned(body).unwrap_or_default() {
        if item.compact {
            let mut out = Vec::new();
            write_compact(&mut out, item.json);
            assert_eq!(out, item.json.as_bytes(), "called compact");
        }
    }
    let one = EventList::items(body);
    let two = EventList::items_two_scans(body);
    assert_eq!(
        describe(&one),
        describe(&two),
        "{}",
        String::from_utf8_lossy(body)
    );
    one.is_ok()
}

fn bodies() -> Vec<Vec<u8>> {
    let events = support::all_corpus_events();
    let mut out: Vec<Vec<u8>> = events.chunks(40).map(support::eventlist).collect();
    for name in [
        "real-apiserver-v1.20.2-metadata-001.json",
        "real-apiserver-v1.20.2-metadata-051.json",
        "real-apiserver-v1.20.2-requestresponse-060-with-401.json",
        "real-apiserver-v1.20.2-requestresponse-400.json",
    ] {
        out.push(std::fs::read(support::data_file(name)).unwrap());
    }
    // The same events pretty-printed (whitespace between every token), `items` first.
    let items: Vec<serde_json::Value> = events.iter().take(30).map(|e| e.value.clone()).collect();
    let pretty = serde_json::to_string_pretty(&serde_json::json!({
        "items": items, "kind": "EventList", "apiVersion": "audit.k8s.io/v1"
    }))
    .unwrap();
    out.push(pretty.into_bytes());
    out.push(b" \n{ \"items\" :\n[\n] }\n\n".to_vec());
    out
}

#[test]
fn the_corpus_splits_the_same_in_one_scan() {
    for body in bodies() {
        let head = String::from_utf8_lossy(&body[..200.min(body.len())]).into_owned();
        assert!(same(&body), "{head}");
        assert!(
            EventList::items_one_scan(&body).is_some(),
            "the one-scan path takes it: {head}"
        );
        let scanned = EventList::items_scanned(&body);
        assert!(scanned.is_some(), "the scanner takes it: {head}");
        // The corpus is compact, as the apiserver sends it, except the pretty-printed copy.
        let compact = scanned.unwrap().iter().filter(|i| i.compact).count();
        assert!(
            compact > 0 || body.contains(&b'\n') || body.len() < 30,
            "{head}"
        );
    }
}

#[test]
fn mutated_bodies_split_the_same_or_fail_the_same() {
    // A small deterministic generator: no dependency, the same cases every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let interesting = b"{}[]\",:\\ \n0aeE-.tfnu";
    let (mut accepted, mut refused, mut one_scan, mut scanned) = (0, 0, 0, 0);
    for body in bodies().iter().filter(|b| b.len() < 200_000) {
        for _ in 0..200 {
            let mut m = body.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[at] = interesting[(next() as usize) % interesting.len()],
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, interesting[(next() as usize) % interesting.len()]),
                }
                if m.is_empty() {
                    break;
                }
            }
            one_scan += usize::from(EventList::items_one_scan(&m).is_some());
            scanned += usize::from(EventList::items_scanned(&m).is_some());
            if same(&m) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Both kinds happened, so both paths were compared on accepted and refused input.
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
    assert!(
        one_scan > 100,
        "{one_scan} mutations taken by the one-scan path"
    );
    assert!(scanned > 100, "{scanned} mutations taken by the scanner");
}
