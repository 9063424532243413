//! Per-destination size limits: a record above one destination's `max_message_bytes` is cut
//! (the apiserver's truncation rule) or dropped for that destination only, at send time; the
//! stored record, and so every other destination, keeps every byte. Checked in what real
//! receivers wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::receivers::{PeerAuth, Receiver};
use support::{ClientOptions, Relay, all_corpus_events, cert, eventlist, post_batch};

const LIMIT: usize = 8 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_limit_cuts_or_drops_for_that_destination_only() {
    let (Some(rsyslog), Some(relp)) = (
        Receiver::rsyslog(PeerAuth::None).await,
        Receiver::rsyslog_relp().await,
    ) else {
        return;
    };
    let relay = Relay::start(&format!(
        r#"cluster_name = "c1"
[listen]
address = "127.0.0.1:0"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "memory"
[[destination]]
name = "small"
url = "tcp://127.0.0.1:{tcp}"
max_message_bytes = "{LIMIT}"
confirm_after = "50ms"
[[destination]]
name = "strict"
url = "tls://127.0.0.1:{tls}"
ca = "{ca}"
server_name = "localhost"
max_message_bytes = "{LIMIT}"
oversize = "drop"
confirm_after = "50ms"
[[destination]]
name = "full"
url = "relp://127.0.0.1:{relp}"
"#,
        tcp = rsyslog.port("tcp"),
        tls = rsyslog.port("tls"),
        relp = relp.port("relp"),
        ca = cert("ca.crt"),
    ))
    .await;
    let events = all_corpus_events();
    // The records as stored: the header is at most 200 bytes here.
    let big: Vec<_> = events
        .iter()
        .filter(|e| e.expected_msg().len() + 200 > LIMIT)
        .collect();
    assert!(big.len() >= 3, "the corpus has large events");
    for chunk in events.chunks(25) {
        let r = post_batch(relay.addr, &ClientOptions::default(), eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let n = events.len();
    let m = relay
        .wait_metrics(Duration::from_secs(20), |m| {
            ["small", "strict", "full"].iter().all(|d| {
                m.get(&format!(
                    "kar_destination_backlog_records{{destination=\"{d}\"}}"
                )) == Some(&0.0)
            })
        })
        .await;
    // Confirmed by the relay; over TCP the receivers may still be writing.
    rsyslog
        .wait_for(2 * n - big.len(), Duration::from_secs(20))
        .await;
    relp.wait_for(n, Duration::from_secs(20)).await;
    let on = |receiver: &Receiver, listener: &str| -> HashMap<String, String> {
        receiver
            .messages()
            .into_iter()
            .filter(|m| m.listener == listener)
            .map(|m| {
                let v: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
                (
                    v["auditID"].as_str().unwrap().to_owned() + "/" + v["stage"].as_str().unwrap(),
                    m.msg,
                )
            })
            .collect()
    };
    let small = on(&rsyslog, "tcp");
    let strict = on(&rsyslog, "tls");
    let full = on(&relp, "relp");
    assert_eq!(full.len(), n, "the unlimited destination has everything");
    assert_eq!(small.len(), n, "truncated, not dropped");
    assert_eq!(
        strict.len(),
        n - big.len(),
        "exactly the large events dropped"
    );
    for e in &events {
        let key = format!("{}/{}", e.audit_id, e.stage);
        support::assert_same(&full[&key], &e.expected_msg(), &format!("full: {key}"));
        let is_big = big
            .iter()
            .any(|b| b.audit_id == e.audit_id && b.stage == e.stage);
        if is_big {
            assert!(!strict.contains_key(&key), "{key} dropped for strict");
            let cut: serde_json::Value = serde_json::from_str(&small[&key]).unwrap();
            assert_eq!(
                cut["annotations"]["audit.k8s.io/truncated"], "true",
                "{key}"
            );
            assert!(cut.get("requestObject").is_none() && cut.get("responseObject").is_none());
            assert_eq!(cut["auditID"], e.audit_id.as_str());
            assert!(small[&key].len() < LIMIT);
        } else {
            support::assert_same(&small[&key], &e.expected_msg(), &format!("small: {key}"));
            support::assert_same(&strict[&key], &e.expected_msg(), &format!("strict: {key}"));
        }
    }
    let b = big.len() as f64;
    assert_eq!(m["kar_events_truncated_total{destination=\"small\"}"], b);
    assert_eq!(
        m["kar_events_dropped_total{destination=\"strict\",reason=\"too_large\"}"],
        b
    );
    assert_eq!(m["kar_events_truncated_total{destination=\"full\"}"], 0.0);
    assert_eq!(
        m["kar_events_sent_total{destination=\"strict\"}"],
        (n - big.len()) as f64,
        "dropped events are not counted as sent"
    );
    assert_eq!(m["kar_events_sent_total{destination=\"small\"}"], n as f64);
    assert!(
        relay.has_log(&big[0].audit_id),
        "the dropped auditIDs are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_limit_above_the_stored_limit_is_a_config_error() {
    let err = Relay::try_start(
        "[syslog]\nmax_message_bytes = \"64KiB\"\n[[destination]]\nname = \"a\"\nurl = \"tcp://127.0.0.1:1\"\nmax_message_bytes = \"1MiB\"\n",
    )
    .await
    .err()
    .unwrap();
    assert!(err.contains("destination[0].max_message_bytes"), "{err}");
    assert!(err.contains("above syslog.max_message_bytes"), "{err}");
}
