//! End to end against real receivers: real corpus events POSTed over HTTPS with a client
//! certificate (HTTP/1.1 and HTTP/2) to the real relay binary, delivered to a real rsyslog
//! and a real syslog-ng; what they parsed is checked event by event, field by field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use support::check::{assert_delivered, assert_raw};
use support::receivers::{PeerAuth, Receiver};
use support::{ClientOptions, CorpusEvent, Relay, all_corpus_events, cert, eventlist, post_batch};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tls_octet_counted_with_client_certificates() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tls_destination(
        "rsyslog",
        receiver.port("tls"),
        "octet",
    )))
    .await;
    let events = all_corpus_events();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "tls", &events, &received, HOST);
    assert_raw(&receiver, &events, HOST);
    assert!(relay.has_log("connected (TLS)"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ng_tls_octet_and_tcp_lf_fan_out() {
    let Some(receiver) = Receiver::syslog_ng(PeerAuth::Required).await else {
        return;
    };
    let destinations = tls_destination("sng-tls", receiver.port("tls"), "octet")
        + &tcp_destination("sng-lf", receiver.port("lf"), "lf", false);
    let relay = Relay::start(&relay_config(&destinations)).await;
    let events = all_corpus_events();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(2 * events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "tls", &events, &received, HOST);
    assert_delivered(&receiver, "lf", &events, &received, HOST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_target_ignores_certificates_with_a_warning() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::None).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tcp_destination(
        "plain",
        receiver.port("tcp"),
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
    assert_delivered(&receiver, "tcp", &events, &received, HOST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_apiserver_bodies_arrive_intact() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let relay = Relay::start(&relay_config(&tls_destination(
        "rsyslog",
        receiver.port("tls"),
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
    assert_delivered(&receiver, "tls", &all, &received, HOST);
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
