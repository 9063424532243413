//! Every answer of the webhook, with the relay in-process: 200 with delivery checked at a
//! sink, and each error status with its reason; plus deduplication and truncation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::{
    ClientOptions, Relay, Sink, all_corpus_events, audit_id_of, check_message, client, eventlist,
    post_batch,
};

async fn plain_relay(sink_port: u16, extra: &str) -> Relay {
    Relay::start(&format!(
        r#"cluster_name = "c1"
{extra}
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{sink_port}"
confirm_after = "50ms"
"#
    ))
    .await
}

fn listen(extra: &str) -> String {
    format!("[listen]\naddress = \"127.0.0.1:0\"\npath = \"/audit\"\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_batch_is_delivered_and_query_string_ignored() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = plain_relay(sink.addr.port(), &listen("")).await;
    let events: Vec<_> = support::small_events(40_000, 40);
    let r = client(relay.addr)
        .post("/audit?timeout=30s")
        .content_type("application/json; charset=utf-8")
        .body(eventlist(&events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.get("content-type").is_none(),
        "a 200 carries no content type to misparse"
    );
    let got = sink.wait_for(events.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), events.len());
    for (raw, event) in got.iter().zip(&events) {
        check_message(raw, event, "c1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_with_reasons() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = plain_relay(sink.addr.port(), &listen("max_body_bytes = 4096")).await;
    let one: Vec<_> = support::small_events(2000, 1);
    let body = eventlist(&one);

    let r = client(relay.addr)
        .post("/other")
        .json(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/audit"), "{}", r.body);

    for method in ["GET", "PUT", "DELETE"] {
        let r = client(relay.addr)
            .method(method, "/audit")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.headers["allow"], "POST");
    }

    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut call = client(relay.addr).post("/audit").body(body.clone());
        if let Some(ct) = ct {
            call = call.content_type(ct);
        }
        let r = call.send().await.unwrap();
        assert_eq!(r.status, 415, "{ct:?}");
        assert!(r.body.contains("application/json"), "{}", r.body);
    }

    let r = client(relay.addr)
        .post("/audit")
        .json(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert!(
        relay
            .wait_log("--audit-webhook-truncate-enabled", Duration::from_secs(5))
            .await,
        "413 log names the apiserver flag"
    );

    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "body is not an EventList"),
        (b"[]", "body is not an EventList"),
        (br#"{"kind":"EventList"}"#, "missing field `items`"),
        (
            br#"{"kind":"EventList","items":{}}"#,
            "body is not an EventList",
        ),
        (br#"{"kind":"Pod","items":[]}"#, "kind is `Pod`"),
        (
            br#"{"items":[{"auditID":"a","stage":"S"},{"stage":"S"}]}"#,
            "item 1: missing field `auditID`",
        ),
        (
            br#"{"items":[{"auditID":"a"}]}"#,
            "item 0: missing field `stage`",
        ),
        (br#"{"items":[7]}"#, "item 0:"),
        (
            b"{\"items\":[{\"auditID\":\"\xff\",\"stage\":\"S\"}]}",
            "body is not an EventList",
        ),
    ];
    for (body, reason) in cases {
        let r = client(relay.addr)
            .post("/audit")
            .json(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(
            r.body.contains(reason),
            "{:?} should contain {reason:?}",
            r.body
        );
        assert_eq!(r.body.trim_end().lines().count(), 1, "one-line reason");
    }

    // The relay is still healthy, and this batch is the only one that arrives: the queue is
    // first in, first out, so anything of the refused batches would have come before it.
    let r = client(relay.addr)
        .post("/audit")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        audit_id_of(&got[0]),
        format!("{}/{}", one[0].audit_id, one[0].stage)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_answers_503_with_retry_after() {
    // Nothing listens at the destination: nothing drains, the small memory queue fills up.
    let (_closed, closed_port) = support::ports::closed();
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
retry_after_seconds = 3
[syslog]
max_message_bytes = 65536
[queue]
kind = "memory"
max_bytes = 70000
[[destination]]
name = "down"
url = "tcp://127.0.0.1:{closed_port}"
"#
    ))
    .await;
    let events = all_corpus_events();
    let plain = ClientOptions::default();
    let mut statuses = Vec::new();
    for chunk in events.chunks(10) {
        let r = post_batch(relay.addr, &plain, eventlist(chunk))
            .await
            .unwrap();
        if r.status == 503 {
            assert_eq!(r.headers["retry-after"], "3");
            assert!(r.body.contains("queue full"), "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}

/// `n` distinct events (corpus events under new auditIDs), each shorter than 2 KB.
fn numbered_events(prefix: &str, n: usize) -> Vec<support::CorpusEvent> {
    let base = support::small_events(2_000, 50);
    (0..n)
        .map(|i| {
            let e = &base[i % base.len()];
            let id = format!("{prefix}-{i:05}");
            let item = e.item.replacen(
                &format!("\"auditID\":\"{}\"", e.audit_id),
                &format!("\"auditID\":\"{id}\""),
                1,
            );
            assert_ne!(item, e.item);
            support::CorpusEvent {
                value: serde_json::from_str(&item).unwrap(),
                item,
                audit_id: id,
                stage: e.stage.clone(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pressed_memory_queue_confirms_early_only_on_a_proven_connection() {
    // A memory queue of 64 KiB; written records wait `confirm_after` (3 s) to count as
    // delivered, and each batch is about 10 KB.
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"cluster_name = "c1"
[listen]
address = "127.0.0.1:0"
retry_after_seconds = 2
[syslog]
max_message_bytes = 16384
[queue]
kind = "memory"
max_bytes = "64KiB"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{}"
confirm_after = "3s"
"#,
        sink.addr.port()
    ))
    .await;
    let plain = ClientOptions::default();
    let young = numbered_events("young", 200);
    // A connection younger than confirm_after confirms nothing early (a TLS 1.3 receiver may
    // still reject it): what it was sent stays held, the queue fills, the webhook says so.
    let mut accepted = Vec::new();
    let mut refused = false;
    for chunk in young.chunks(10) {
        let r = post_batch(relay.addr, &plain, eventlist(chunk))
            .await
            .unwrap();
        match r.status {
            200 => accepted.extend_from_slice(chunk),
            503 => {
                assert!(r.body.contains("queue full"), "{}", r.body);
                refused = true;
                break;
            }
            other => panic!("status {other}: {}", r.body),
        }
    }
    assert!(refused, "the held records filled the queue");
    assert!(accepted.len() >= 40, "{} accepted first", accepted.len());
    // Written all the same: the sink has them while the relay still holds them.
    let got = sink.wait_for(accepted.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), accepted.len());
    // Once the connection has stayed healthy for confirm_after, all of it counts at once.
    relay
        .wait_metric(
            "kar_destination_backlog_records{destination=\"sink\"}",
            0.0,
            Duration::from_secs(10),
        )
        .await;
    // On the proven connection a pressed queue no longer holds records for 3 s: four times
    // the budget in quick succession is all taken.
    let proven = numbered_events("proven", 300);
    for chunk in proven.chunks(10) {
        let r = post_batch(relay.addr, &plain, eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let all: Vec<_> = accepted.iter().chain(&proven).cloned().collect();
    let got = sink.wait_for(all.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), all.len());
    for (raw, event) in got.iter().zip(&all) {
        check_message(raw, event, "c1");
    }
    // The operator sees the window given up: the queue holds about 60 of these events, so
    // nearly all of the proven connection's 300 went before their own 3 s had passed.
    let m = relay
        .wait_metric(
            "kar_events_sent_total{destination=\"sink\"}",
            all.len() as f64,
            Duration::from_secs(10),
        )
        .await;
    let early = m["kar_events_confirmed_early_total{destination=\"sink\"}"];
    assert!(
        early >= (proven.len() - 80) as f64 && early <= all.len() as f64,
        "{early} confirmed early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dropped_across_and_within_requests() {
    let sink = Sink::start(Framing::Lf, None).await;
    let relay = Relay::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nframing = \"lf\"\nconfirm_after = \"20ms\"\n",
        sink.addr.port()
    ))
    .await;
    let events: Vec<_> = support::small_events(20_000, 20);
    let plain = ClientOptions::default();
    // The apiserver resends a whole batch after a timeout; a batch may also repeat an item.
    let mut repeated = events.clone();
    repeated.extend(events[..5].iter().cloned());
    for body in [eventlist(&events), eventlist(&events), eventlist(&repeated)] {
        assert_eq!(
            post_batch(relay.addr, &plain, body).await.unwrap().status,
            200
        );
    }
    // Everything stored was delivered (the relay's own count), and it was each event once.
    let m = relay
        .wait_metric(
            "kar_events_sent_total{destination=\"s\"}",
            events.len() as f64,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        m["kar_events_deduplicated_total"],
        (events.len() + repeated.len()) as f64,
        "the whole resend and the whole repeated batch"
    );
    assert_eq!(m["kar_destination_backlog_records{destination=\"s\"}"], 0.0);
    // Far below its budget, the memory queue confirmed nothing early.
    assert_eq!(
        m["kar_events_confirmed_early_total{destination=\"s\"}"],
        0.0
    );
    let got = sink.messages();
    assert_eq!(got.len(), events.len(), "each (auditID, stage) once");
    let mut ids: Vec<String> = got.iter().map(|m| audit_id_of(m)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
}

/// The apiserver takes a request's auditID from its `Audit-ID` header when the client sends
/// one, so a client can give a request of its own the auditID of a recent one. That event
/// is a different one (other verb, other object) and must reach the receiver, while a true
/// resend of either is still dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_audit_id_does_not_hide_another_event() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = plain_relay(sink.addr.port(), "[listen]\naddress = \"127.0.0.1:0\"").await;
    let mut first = support::small_events(20_000, 1).remove(0);
    let mut second = first.clone();
    let mut value = first.value.clone();
    value["verb"] = serde_json::json!("delete");
    value["objectRef"] = serde_json::json!({"resource": "secrets", "namespace": "kube-system", "name": "admin-token"});
    second.item = serde_json::to_string(&value).unwrap();
    second.value = value;
    assert_eq!(
        (&first.audit_id, &first.stage),
        (&second.audit_id, &second.stage)
    );
    first.item = serde_json::to_string(&first.value).unwrap();
    let plain = ClientOptions::default();
    for events in [
        vec![first.clone()],
        vec![second.clone()],
        vec![first.clone(), second.clone()],
    ] {
        let r = post_batch(relay.addr, &plain, eventlist(&events))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = relay
        .wait_metric(
            "kar_events_sent_total{destination=\"sink\"}",
            2.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        m["kar_events_deduplicated_total"], 2.0,
        "the resend of both"
    );
    let got = sink.messages();
    assert_eq!(got.len(), 2, "each once");
    // Field by field, each as its own event: the original first, then the other one.
    check_message(&got[0], &first, "c1");
    check_message(&got[1], &second, "c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_truncated_by_the_apiserver_rule_or_dropped() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = plain_relay(
        sink.addr.port(),
        "[listen]\naddress = \"127.0.0.1:0\"\n[syslog]\nmax_message_bytes = \"8KiB\"",
    )
    .await;
    let events = all_corpus_events();
    let big: Vec<_> = events
        .iter()
        .filter(|e| e.item.len() > 20_000 && e.value.get("responseObject").is_some())
        .take(3)
        .cloned()
        .collect();
    assert!(!big.is_empty());
    // An event that stays too big after truncation: a huge annotation.
    let huge_annotation = format!(
        r#"{{"auditID":"huge-1","stage":"ResponseComplete","annotations":{{"x":"{}"}}}}"#,
        "y".repeat(20_000)
    );
    let mut items: Vec<String> = big.iter().map(|e| e.item.clone()).collect();
    items.push(huge_annotation);
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    );
    let r = post_batch(relay.addr, &ClientOptions::default(), body.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = sink.wait_for(big.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), big.len());
    for (raw, event) in got.iter().zip(&big) {
        assert!(raw.len() <= 8192);
        let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
        assert_eq!(v["auditID"], event.audit_id.as_str());
        assert!(v.get("responseObject").is_none() && v.get("requestObject").is_none());
        assert_eq!(v["annotations"]["audit.k8s.io/truncated"], "true");
        assert_eq!(v["kind"], "Event");
    }
    assert!(
        relay.wait_log("huge-1", Duration::from_secs(5)).await,
        "the dropped event's auditID is logged"
    );
    let m = relay.metrics().await;
    assert_eq!(m["kar_events_truncated_total"], big.len() as f64);
    assert_eq!(m["kar_events_dropped_total{reason=\"too_large\"}"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_printed_bodies_are_compacted() {
    let sink = Sink::start(Framing::Lf, None).await;
    let relay = Relay::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nframing = \"lf\"\n",
        sink.addr.port()
    ))
    .await;
    let body = b"{\n  \"kind\": \"EventList\",\n  \"items\": [\n    {\n      \"auditID\": \"p-1\",\n      \"stage\": \"ResponseComplete\",\n      \"objectRef\": { \"name\": \"a b\\n c\" }\n    }\n  ]\n}\n";
    let r = post_batch(relay.addr, &ClientOptions::default(), body.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    let m = kube_audit_relay::syslog::parse_strict(&got[0]).unwrap();
    assert_eq!(
        std::str::from_utf8(m.msg).unwrap(),
        r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"p-1","stage":"ResponseComplete","objectRef":{"name":"a b\n c"}}"#
    );
}

/// `listen.max_rendering_bytes` at its minimum, below every body: requests take turns
/// rendering (each alone), and every one is still answered 200 and delivered, over HTTP/1.1
/// connections and over concurrent streams of one HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_rendering_budget_makes_large_batches_take_turns_not_fail() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = plain_relay(
        sink.addr.port(),
        "[listen]\naddress = \"127.0.0.1:0\"\nmax_rendering_bytes = \"64KiB\"\n[syslog]\nmax_message_bytes = \"1MiB\"",
    )
    .await;
    let events = all_corpus_events();
    // Bodies of at least 80 KB each, the last group folded into the one before it.
    let mut groups: Vec<Vec<support::CorpusEvent>> = vec![Vec::new()];
    let mut size = 0;
    for e in &events {
        if size > 80_000 {
            groups.push(Vec::new());
            size = 0;
        }
        size += e.item.len();
        groups.last_mut().unwrap().push(e.clone());
    }
    if size <= 80_000 && groups.len() > 1 {
        let last = groups.pop().unwrap();
        groups.last_mut().unwrap().extend(last);
    }
    let bodies: Vec<Vec<u8>> = groups.iter().map(|g| eventlist(g)).collect();
    assert!(bodies.len() >= 4, "{} bodies", bodies.len());
    assert!(
        bodies.iter().all(|b| b.len() > 64 << 10),
        "every body is above the budget"
    );
    let h2 = std::sync::Arc::new(support::client::PersistentH2::new(
        relay.addr,
        &ClientOptions::default(),
    ));
    let mut posts = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (addr, h2) = (relay.addr, h2.clone());
        posts.spawn(async move {
            if i % 2 == 0 {
                post_batch(addr, &ClientOptions::default(), body).await
            } else {
                h2.post_batch(body).await
            }
        });
    }
    while let Some(r) = posts.join_next().await {
        let r = r.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        h2.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the HTTP/2 posts shared one connection"
    );
    let got = sink.wait_for(events.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), events.len());
    let mut ids: Vec<String> = got.iter().map(|m| audit_id_of(m)).collect();
    ids.sort();
    let mut want: Vec<String> = events
        .iter()
        .map(|e| format!("{}/{}", e.audit_id, e.stage))
        .collect();
    want.sort();
    assert_eq!(ids, want, "every event once");
}
