//! Property tests: any event renders to a strictly valid RFC 5424 message whose MSG is the
//! event's JSON line, and framing round-trips for both framings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kube_audit_relay::audit::EventView;
use kube_audit_relay::config::{ByteSize, Facility, Framing, SyslogConfig};
use kube_audit_relay::syslog::{Renderer, frame, next_frame, parse_strict};
use proptest::prelude::*;
use serde_json::value::RawValue;

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9:/._-]{0,40}",
        any::<String>(),
        Just("\"]\\\n\t\u{0}é漢".to_owned()),
    ]
}

prop_compose! {
    fn event()(
        audit_id in "[^\u{0}]{1,60}",
        stage in any_text().prop_filter("stage is required", |s| !s.is_empty()),
        verb in proptest::option::of(any_text()),
        user in proptest::option::of(any_text()),
        code in proptest::option::of(-1000i64..1000),
        ts in proptest::option::of(prop_oneof![Just("2023-06-12T13:30:26.906988Z".to_owned()), any_text()]),
        blob in proptest::option::of(".{0,3000}"),
        has_kind in any::<bool>(),
    ) -> String {
        let mut v = serde_json::Map::new();
        if has_kind {
            v.insert("kind".into(), "Event".into());
        }
        v.insert("auditID".into(), audit_id.into());
        v.insert("stage".into(), stage.into());
        if let Some(verb) = verb { v.insert("verb".into(), verb.into()); }
        if let Some(user) = user { v.insert("user".into(), serde_json::json!({ "username": user })); }
        if let Some(code) = code { v.insert("responseStatus".into(), serde_json::json!({ "code": code })); }
        if let Some(ts) = ts { v.insert("stageTimestamp".into(), ts.into()); }
        if let Some(blob) = blob { v.insert("requestObject".into(), serde_json::json!({ "data": blob })); }
        serde_json::to_string(&serde_json::Value::Object(v)).unwrap()
    }
}

prop_compose! {
    fn syslog_config()(
        facility in 0u8..=23,
        enterprise_id in proptest::option::of(1u32..100_000),
        bom in any::<bool>(),
        max in 480u64..20_000,
    ) -> SyslogConfig {
        SyslogConfig { facility: Facility::new(facility).unwrap(), enterprise_id, bom, max_message_bytes: ByteSize(max), ..SyslogConfig::default() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_event_renders_to_valid_rfc5424(json in event(), config in syslog_config(), host in any_text()) {
        let raw: &RawValue = serde_json::from_str(&json).unwrap();
        let view = EventView::parse(0, raw).unwrap();
        let renderer = Renderer::new(&config, &host);
        match renderer.render(raw.get(), &view, "2000-01-01T00:00:00Z") {
            Ok(rendered) => {
                let message = rendered.message;
                prop_assert!(message.len() as u64 <= config.max_message_bytes.0);
                let m = parse_strict(&message).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&message))))?;
                prop_assert_eq!(m.pri / 8, config.facility.get());
                prop_assert_eq!(m.bom, config.bom);
                prop_assert_eq!(m.app_name, "kube-apiserver");
                prop_assert_eq!(m.structured_data == "-", config.enterprise_id.is_none());
                prop_assert!(!message.contains(&b'\n'), "no raw LF: LF framing stays intact");
                let msg: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
                let mut want: serde_json::Value = serde_json::from_str(&json).unwrap();
                want["kind"] = "Event".into();
                want["apiVersion"] = "audit.k8s.io/v1".into();
                if rendered.truncated {
                    let w = want.as_object_mut().unwrap();
                    w.remove("requestObject");
                    w.remove("responseObject");
                    w.insert("annotations".into(), serde_json::json!({ "audit.k8s.io/truncated": "true" }));
                } else if !json.contains("\"kind\"") {
                    // Byte-equal: the item's own bytes after the two added members.
                    let expected = format!("{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",{}", &json[1..]);
                    prop_assert_eq!(std::str::from_utf8(m.msg).unwrap(), expected);
                }
                prop_assert_eq!(msg, want);
                for framing in [Framing::Octet, Framing::Lf] {
                    let mut out = Vec::new();
                    frame(framing, &message, &mut out);
                    frame(framing, b"<1>1 - - - - -", &mut out);
                    let (used, got) = next_frame(framing, &out, 1 << 20).unwrap().unwrap();
                    prop_assert_eq!(got, &message[..]);
                    let (_, second) = next_frame(framing, &out[used..], 1 << 20).unwrap().unwrap();
                    prop_assert_eq!(second, b"<1>1 - - - - -");
                }
            }
            Err(too_large) => {
                prop_assert!(too_large.bytes as u64 > config.max_message_bytes.0);
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let config = kube_audit_relay::config::Config::builtin_default();
        let pipeline = kube_audit_relay::pipeline::Pipeline::new(&config, "h");
        let _ = pipeline.run(&body, "2000-01-01T00:00:00Z");
    }
}
