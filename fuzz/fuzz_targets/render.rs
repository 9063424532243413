//! Render + frame of arbitrary events: whatever the event holds, the record passes the strict
//! RFC 5424 checker, carries valid JSON, fits the size limit, and both framings round-trip.
#![no_main]

use kube_audit_relay::audit::EventView;
use kube_audit_relay::config::{ByteSize, Framing, SyslogConfig};
use kube_audit_relay::syslog::{Renderer, frame, next_frame, parse_strict};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let (config_bytes, json) = data.split_at(data.len().min(4));
    let Ok(json) = std::str::from_utf8(json) else { return };
    let Ok(item) = serde_json::from_str::<&RawValue>(json) else { return };
    let Ok(view) = EventView::parse(0, item) else { return };
    let b = |i: usize| config_bytes.get(i).copied().unwrap_or(0);
    let config = SyslogConfig {
        facility: b(0) % 24,
        enterprise_id: (b(1) % 2 == 1).then_some(32473),
        bom: b(2) % 2 == 1,
        max_message_bytes: ByteSize(480 + u64::from(b(3)) * 64),
        ..SyslogConfig::default()
    };
    let host = String::from_utf8_lossy(config_bytes);
    let Ok(rendered) = Renderer::new(&config, &host).render(item, &view, "2026-01-01T00:00:00Z") else { return };
    let message = rendered.message;
    assert!(message.len() as u64 <= config.max_message_bytes.0);
    let parsed = parse_strict(&message).expect("strict RFC 5424");
    assert_json(parsed.msg);
    assert!(!message.contains(&b'\n'));
    for framing in [Framing::Octet, Framing::Lf] {
        let mut out = Vec::new();
        frame(framing, &message, &mut out);
        let (used, got) = next_frame(framing, &out, usize::MAX).expect("frame").expect("complete");
        assert_eq!(used, out.len());
        assert_eq!(got, &message[..]);
    }
});

/// Valid JSON for a strict parser. Numbers beyond f64 are valid JSON text and relayed verbatim
/// by design (the relay never converts numbers), so only that error is tolerated.
fn assert_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        assert!(e.to_string().contains("number out of range"), "not JSON: {e}");
    }
}
