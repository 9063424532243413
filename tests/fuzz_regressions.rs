//! Inputs the fuzzers found that once broke an invariant, kept as regression tests: each must
//! either be refused or produce event lines that are valid JSON and records that pass the
//! strict RFC 5424 check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kube_audit_relay::audit::{EventList, EventView, write_event_line};
use kube_audit_relay::config::SyslogConfig;
use kube_audit_relay::syslog::{Renderer, parse_strict};

#[test]
fn every_fuzz_finding_is_handled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        seen += 1;
        // Render-target inputs start with 4 configuration bytes, then one event.
        let data = if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("render-")
        {
            format!("{{\"items\":[{}]}}", String::from_utf8_lossy(&data[4..])).into_bytes()
        } else {
            data
        };
        let Ok(list) = EventList::parse(&data) else {
            panic!("{}: not an EventList", path.display());
        };
        for (i, item) in list.items.iter().enumerate() {
            let Ok(view) = EventView::parse(i, item) else {
                continue;
            };
            let mut line = Vec::new();
            write_event_line(&mut line, item.get(), &view);
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&line) {
                // Numbers beyond f64 are valid JSON text, relayed verbatim by design.
                assert!(
                    e.to_string().contains("number out of range"),
                    "{}: item {i}: {e}",
                    path.display()
                );
            }
            let rendered = Renderer::new(&SyslogConfig::default(), "h").render(
                item,
                &view,
                "2026-01-01T00:00:00Z",
            );
            if let Ok(r) = rendered {
                parse_strict(&r.message).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
    assert!(seen >= 1);
}

#[test]
fn the_lone_surrogate_finding_is_a_400_reason() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions/eventlist-lone-surrogate.bin");
    let data = std::fs::read(path).unwrap();
    let list = EventList::parse(&data).unwrap();
    let err = EventView::parse(0, list.items[0]).unwrap_err();
    assert!(err.to_string().contains("lone UTF-16 surrogate"), "{err}");
}

#[test]
fn the_array_item_finding_is_a_400_reason() {
    let list = EventList::parse(br#"{"items":[["Escheduler","objectRef"]]}"#).unwrap();
    let err = EventView::parse(0, list.items[0]).unwrap_err();
    assert_eq!(err.to_string(), "item 0: not a JSON object");
}
