//! The webhook's parsing path on arbitrary bytes: EventList split, item views, event lines,
//! truncation and redaction. Must never panic; every event line it produces must be JSON.
#![no_main]

use kube_audit_relay::audit::{EventList, EventView, truncate_event, write_event_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = EventList::parse(data) else { return };
    for (i, item) in list.items.iter().enumerate() {
        let Ok(view) = EventView::parse(i, item) else { continue };
        let mut line = Vec::new();
        write_event_line(&mut line, item.get(), &view);
        assert_json(&line);
        if let Some(short) = truncate_event(item.get()) {
            assert_json(short.as_bytes());
        }
    }
});

/// Valid JSON for a strict parser. Numbers beyond f64 are valid JSON text and relayed verbatim
/// by design (the relay never converts numbers), so only that error is tolerated.
fn assert_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        assert!(e.to_string().contains("number out of range"), "not JSON: {e}");
    }
}
