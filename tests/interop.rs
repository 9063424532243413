//! End to end against real receivers: real corpus events POSTed over HTTPS with a client
//! certificate (HTTP/1.1 and HTTP/2) to the real relay binary, delivered to a real rsyslog
//! and a real syslog-ng; what they parsed is checked event by event, field by field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::receivers::{PeerAuth, Received, Receiver};
use support::{
    ClientOptions, CorpusEvent, Relay, all_corpus_events, cert, check_message, eventlist,
    post_batch,
};

const HOST: &str = "test-cluster";

fn relay_config(destinations: &str) -> String {
    format!(
        r#"cluster_name = "{HOST}"
[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
client_auth = "required"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "disk"
data_dir = "queue"
{destinations}"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
    )
}

fn tls_destination(name: &str, port: u16, framing: &str) -> String {
    format!(
        r#"
[[destination]]
name = "{name}"
url = "tls://127.0.0.1:{port}"
ca = "{ca}"
client_cert = "{crt}"
client_key = "{key}"
server_name = "localhost"
framing = "{framing}"
"#,
        ca = cert("ca.crt"),
        crt = cert("client.crt"),
        key = cert("client.key"),
    )
}

fn tcp_destination(name: &str, port: u16, framing: &str, with_certs: bool) -> String {
    let certs = if with_certs {
        format!(
            "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert("ca.crt"),
            cert("client.crt"),
            cert("client.key")
        )
    } else {
        String::new()
    };
    format!(
        "\n[[destination]]\nname = \"{name}\"\nurl = \"tcp://127.0.0.1:{port}\"\nframing = \"{framing}\"\n{certs}"
    )
}

/// Posts `events` in batches of 25, alternating HTTP/1.1 and HTTP/2; every answer must be 200.
async fn post_all(relay: &Relay, events: &[CorpusEvent]) {
    for (i, chunk) in events.chunks(25).enumerate() {
        let options = ClientOptions::https(Some(("client.crt", "client.key")), i % 2 == 1);
        let response = post_batch(relay.addr, &options, eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "batch {i}: {}", response.body);
        let expected: &[u8] = if i % 2 == 1 { b"h2" } else { b"http/1.1" };
        assert_eq!(response.alpn.as_deref(), Some(expected));
    }
}

/// Every event arrived exactly once on `listener`, with the mapped header fields and MSG
/// byte-equal to the event line.
fn assert_delivered(
    receiver: &Receiver,
    listener: &str,
    events: &[CorpusEvent],
    received: &[Received],
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
        support::assert_same(
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
        assert_eq!(m.hostname, HOST);
        assert_eq!(m.appname, "kube-apiserver");
        assert_eq!(m.msgid, e.stage);
        assert!(m.sd == "-" || m.sd.is_empty(), "SD: {}", m.sd);
    }
}

/// The raw messages the receiver logged pass the strict RFC 5424 check and match the events.
fn assert_raw(receiver: &Receiver, events: &[CorpusEvent]) {
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
        check_message(line.as_bytes(), by_key[&key], HOST);
        checked += 1;
    }
    assert!(
        checked >= events.len(),
        "{}: only {checked} raw messages",
        receiver.kind
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tls_octet_counted_with_client_certificates() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tls_destination(
        "rsyslog",
        receiver.tls_port,
        "octet",
    )))
    .await;
    let events = all_corpus_events();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "tls", &events, &received);
    assert_raw(&receiver, &events);
    assert!(relay.has_log("connected (TLS)"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ng_tls_octet_and_tcp_lf_fan_out() {
    let Some(receiver) = Receiver::syslog_ng(PeerAuth::Required).await else {
        return;
    };
    let destinations = tls_destination("sng-tls", receiver.tls_port, "octet")
        + &tcp_destination("sng-lf", receiver.lf_port.unwrap(), "lf", false);
    let relay = Relay::start(&relay_config(&destinations)).await;
    let events = all_corpus_events();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(2 * events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "tls", &events, &received);
    assert_delivered(&receiver, "lf", &events, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_target_ignores_certificates_with_a_warning() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::None).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tcp_destination(
        "plain",
        receiver.tcp_port,
        "octet",
        true,
    )))
    .await;
    assert!(
        relay
            .wait_log("certificate settings are ignored", Duration::from_secs(5))
            .await,
        "no warning: {}",
        relay.logs()
    );
    assert_eq!(
        relay.logs.count("certificate settings are ignored"),
        1,
        "one warning"
    );
    let warning = relay.logs.find("certificate settings are ignored").unwrap();
    assert!(
        warning.contains("ca") && warning.contains("client_cert") && warning.contains("client_key"),
        "{warning}"
    );
    let events: Vec<_> = all_corpus_events().into_iter().take(30).collect();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "tcp", &events, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_apiserver_bodies_arrive_intact() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tls_destination(
        "rsyslog",
        receiver.tls_port,
        "octet",
    )))
    .await;
    let mut all = Vec::new();
    for file in [
        "real-apiserver-v1.20.2-metadata-001.json",
        "real-apiserver-v1.20.2-metadata-051.json",
        "real-apiserver-v1.20.2-requestresponse-060-with-401.json",
        "real-apiserver-v1.20.2-requestresponse-400.json",
    ] {
        let (body, items) = support::captured_items(file);
        assert_eq!(
            *body.last().unwrap(),
            b'\n',
            "captured bodies end with a newline"
        );
        let options = ClientOptions::https(Some(("client.crt", "client.key")), true);
        let response = post_batch(relay.addr, &options, body).await.unwrap();
        assert_eq!(response.status, 200, "{file}: {}", response.body);
        all.extend(items);
    }
    let received = receiver.wait_for(all.len(), Duration::from_secs(30)).await;
    assert_delivered(&receiver, "tls", &all, &received);
    let unauthenticated = all
        .iter()
        .filter(|e| {
            e.value
                .pointer("/user/username")
                .and_then(|u| u.as_str())
                .unwrap_or("")
                .is_empty()
        })
        .count();
    assert!(
        unauthenticated >= 1,
        "the 401 capture has an event with an empty user"
    );
}
