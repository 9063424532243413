//! End to end against real receivers: real corpus events POSTed over HTTPS with a client
//! certificate (HTTP/1.1 and HTTP/2) to the real relay binary, delivered to a real rsyslog
//! and a real syslog-ng; what they parsed is checked event by event, field by field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use support::check::{assert_delivered, assert_raw};
use support::interop::{HOST, post_all, relay_config, tcp_destination, tls_destination};
use support::receivers::{PeerAuth, Receiver};
use support::{ClientOptions, Relay, all_corpus_events, post_batch};

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
