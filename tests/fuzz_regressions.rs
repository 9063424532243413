//! Inputs the fuzzers found that once broke an invariant, kept as regression tests: each goes
//! through the pipeline as the fuzz target sent it, and must be refused or produce records
//! that pass the strict RFC 5424 check with valid JSON in MSG.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use kube_audit_relay::config::Config;
use kube_audit_relay::pipeline::Pipeline;
use kube_audit_relay::syslog::parse_strict;

fn pipeline() -> Pipeline {
    Pipeline::new(&Config::parse("", Path::new("t.toml")).unwrap(), "h")
}

#[test]
fn every_fuzz_finding_is_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        seen += 1;
        // Render-target inputs start with 4 configuration bytes, then one event.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = if name.starts_with("render-") {
            [b"{\"items\":[".as_slice(), &data[4..], b"]}"].concat()
        } else {
            data
        };
        let Ok(batch) = pipeline().run(&body, "2026-01-01T00:00:00Z") else {
            continue;
        };
        for record in &batch.records {
            let m = parse_strict(record).unwrap_or_else(|e| panic!("{name}: {e}"));
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(m.msg) {
                // Numbers beyond f64 are valid JSON text, relayed verbatim by design.
                assert!(e.to_string().contains("number out of range"), "{name}: {e}");
            }
        }
    }
    assert!(seen >= 3);
}

#[test]
fn the_lone_surrogate_finding_is_a_400_reason() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions/eventlist-lone-surrogate.bin");
    let err = pipeline()
        .run(&std::fs::read(path).unwrap(), "x")
        .unwrap_err();
    assert!(err.to_string().contains("lone UTF-16 surrogate"), "{err}");
}

#[test]
fn the_array_item_finding_is_a_400_reason() {
    let err = pipeline()
        .run(br#"{"items":[["Escheduler","objectRef"]]}"#, "x")
        .unwrap_err();
    assert_eq!(err.to_string(), "item 0: not a JSON object");
}
