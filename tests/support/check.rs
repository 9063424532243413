//! Checks of what arrived: a message against its source event field by field, with our
//! strict RFC 5424 parser and with `syslog_loose`, and long strings compared with the first
//! difference shown.

use std::collections::HashMap;

use super::corpus::CorpusEvent;
use super::receivers::{Received, Receiver};

/// Checks one received message against its source event, field by field; returns MSG.
pub fn check_message(raw: &[u8], event: &CorpusEvent, hostname: &str) {
    let strict = kube_audit_relay::syslog::parse_strict(raw).unwrap_or_else(|e| {
        panic!(
            "not strict RFC 5424 ({e}): {}",
            String::from_utf8_lossy(raw)
        )
    });
    assert_eq!(
        strict.pri,
        13 * 8 + event.expected_severity(),
        "PRI of {}",
        event.audit_id
    );
    if let Some(ts) = event.expected_timestamp() {
        assert_eq!(strict.timestamp, ts, "TIMESTAMP of {}", event.audit_id);
    }
    assert_eq!(strict.hostname, hostname);
    assert_eq!(strict.app_name, "kube-apiserver");
    assert_eq!(strict.procid, "-");
    assert_eq!(strict.msgid, event.stage);
    assert_eq!(strict.structured_data, "-");
    assert!(!strict.bom);
    assert_same(
        std::str::from_utf8(strict.msg).unwrap(),
        &event.expected_msg(),
        &format!("MSG of {}", event.audit_id),
    );
    let text = std::str::from_utf8(raw).unwrap();
    let loose = syslog_loose::parse_message(text, syslog_loose::Variant::RFC5424);
    assert_eq!(loose.protocol, syslog_loose::Protocol::RFC5424(1));
    assert_eq!(loose.hostname, Some(hostname));
    assert_eq!(loose.appname, Some("kube-apiserver"));
    assert_eq!(loose.msgid, Some(event.stage.as_str()));
    assert_same(loose.msg, &event.expected_msg(), "syslog_loose MSG");
}

/// Asserts two long strings are equal, reporting the first difference with a short context
/// instead of both strings.
pub fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let ctx = |s: &str| {
        s.get(at.saturating_sub(40)..(at + 40).min(s.len()))
            .unwrap_or("(not at a char boundary)")
            .to_owned()
    };
    panic!(
        "{what}: differs at byte {at} (lengths {} vs {}):\n got: …{}…\nwant: …{}…",
        got.len(),
        want.len(),
        ctx(got),
        ctx(want)
    );
}

/// Audit ID of a rendered message (from its MSG).
pub fn audit_id_of(raw: &[u8]) -> String {
    let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
    let v: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
    format!(
        "{}/{}",
        v["auditID"].as_str().unwrap(),
        v["stage"].as_str().unwrap()
    )
}

/// Every event arrived exactly once on `listener`, with the mapped header fields and MSG
/// byte-equal to the event line.
pub fn assert_delivered(
    receiver: &Receiver,
    listener: &str,
    events: &[CorpusEvent],
    received: &[Received],
    host: &str,
) {
    let on_listener: Vec<&Received> = received.iter().filter(|m| m.listener == listener).collect();
    let mut by_key: HashMap<(String, String), Vec<&Received>> = HashMap::new();
    for m in &on_listener {
        let v: serde_json::Value = serde_json::from_str(&m.msg)
            .unwrap_or_else(|e| panic!("{}: MSG is not JSON ({e}): {}", receiver.kind, m.msg));
        by_key
            .entry((
                v["auditID"].as_str().unwrap().to_owned(),
                v["stage"].as_str().unwrap().to_owned(),
            ))
            .or_default()
            .push(m);
    }
    assert_eq!(
        on_listener.len(),
        events.len(),
        "{} {listener}: message count",
        receiver.kind
    );
    for e in events {
        let got = by_key
            .get(&(e.audit_id.clone(), e.stage.clone()))
            .map_or(&[][..], Vec::as_slice);
        assert_eq!(
            got.len(),
            1,
            "{} {listener}: {}/{} arrived {} times",
            receiver.kind,
            e.audit_id,
            e.stage,
            got.len()
        );
        let m = got[0];
        assert_same(
            &m.msg,
            &e.expected_msg(),
            &format!("{} {listener}: MSG of {}", receiver.kind, e.audit_id),
        );
        assert_eq!(
            m.pri,
            13 * 8 + u32::from(e.expected_severity()),
            "PRI of {}",
            e.audit_id
        );
        assert_eq!(m.hostname, host);
        assert_eq!(m.appname, "kube-apiserver");
        assert_eq!(m.msgid, e.stage);
        assert!(m.sd == "-" || m.sd.is_empty(), "SD: {}", m.sd);
    }
}

/// The raw messages the receiver logged pass the strict RFC 5424 check and match the events.
pub fn assert_raw(receiver: &Receiver, events: &[CorpusEvent], host: &str) {
    let raw = std::fs::read_to_string(receiver.path("raw.log")).unwrap();
    let by_key: HashMap<(String, String), &CorpusEvent> = events
        .iter()
        .map(|e| ((e.audit_id.clone(), e.stage.clone()), e))
        .collect();
    let mut checked = 0;
    for line in raw.lines() {
        let m = kube_audit_relay::syslog::parse_strict(line.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
        let key = (
            v["auditID"].as_str().unwrap().to_owned(),
            v["stage"].as_str().unwrap().to_owned(),
        );
        check_message(line.as_bytes(), by_key[&key], host);
        checked += 1;
    }
    assert!(
        checked >= events.len(),
        "{}: only {checked} raw messages",
        receiver.kind
    );
}
