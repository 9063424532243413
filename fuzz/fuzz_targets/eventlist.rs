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
        serde_json::from_slice::<serde_json::Value>(&line).expect("event line is JSON");
        if let Some(short) = truncate_event(item.get()) {
            serde_json::from_str::<serde_json::Value>(&short).expect("truncated event is JSON");
        }
    }
});
