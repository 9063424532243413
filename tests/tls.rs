//! TLS on both sides, including every handshake that must fail: the relay's listener refuses
//! untrusted clients (and logs why), and the relay refuses untrusted receivers (nothing sent,
//! error logged, relay still serving).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::{ClientOptions, Relay, Sink, all_corpus_events, cert, eventlist, post_batch};

async fn mtls_relay(client_auth: &str, sink_port: u16) -> Relay {
    Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
client_auth = "{client_auth}"
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{sink_port}"
"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
    ))
    .await
}

fn small_batch() -> Vec<u8> {
    batch_at(0)
}

/// Three small events, starting at the `n`th: distinct batches are not deduplicated.
fn batch_at(n: usize) -> Vec<u8> {
    eventlist(
        &all_corpus_events()
            .into_iter()
            .filter(|e| e.item.len() < 3000)
            .skip(3 * n)
            .take(3)
            .collect::<Vec<_>>(),
    )
}

async fn refused(relay: &Relay, options: ClientOptions, expect_log: &str) {
    let before = relay.logs.count("TLS handshake refused");
    let result = post_batch(relay.addr, &options, small_batch()).await;
    assert!(
        result.is_err(),
        "request must fail, got {:?}",
        result.map(|r| r.status)
    );
    let logged = support::wait_until(Duration::from_secs(5), || {
        let refusals: Vec<String> = relay
            .logs
            .lines()
            .into_iter()
            .filter(|l| l.contains("TLS handshake refused"))
            .collect();
        refusals.len() > before && refusals[before..].iter().any(|l| l.contains(expect_log))
    })
    .await;
    assert!(
        logged,
        "expected a refusal log mentioning {expect_log:?}:\n{}",
        relay.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_requires_a_trusted_client_certificate() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = mtls_relay("required", sink.addr.port()).await;
    for (n, http2) in [false, true].into_iter().enumerate() {
        let ok = post_batch(
            relay.addr,
            &ClientOptions::https(Some(("client.crt", "client.key")), http2),
            batch_at(n),
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200);
    }
    refused(
        &relay,
        ClientOptions::https(None, false),
        "peer sent no certificates",
    )
    .await;
    refused(
        &relay,
        ClientOptions::https(Some(("other-client.crt", "other-client.key")), false),
        "UnknownIssuer",
    )
    .await;
    refused(
        &relay,
        ClientOptions::https(Some(("expired-client.crt", "expired-client.key")), false),
        "certificate expired",
    )
    .await;
    refused(
        &relay,
        ClientOptions::https(Some(("future-client.crt", "future-client.key")), false),
        "not valid yet",
    )
    .await;
    // Plain HTTP to the TLS port.
    let plain = post_batch(relay.addr, &ClientOptions::default(), small_batch()).await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200),
        "plain HTTP must not be served"
    );
    assert!(
        relay
            .wait_log("plain HTTP sent to the HTTPS port", Duration::from_secs(5))
            .await,
        "{}",
        relay.logs()
    );
    // Only the two accepted batches were relayed: the relay confirmed six events, the sink
    // has six.
    relay
        .wait_metric(
            "kar_events_sent_total{destination=\"sink\"}",
            6.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(sink.count(), 6);
    let m = relay.metrics().await;
    for reason in [
        "no_client_certificate",
        "unknown_issuer",
        "expired",
        "not_yet_valid",
        "not_tls",
    ] {
        assert_eq!(
            m.get(&format!(
                "kar_tls_handshake_failures_total{{side=\"server\",reason=\"{reason}\"}}"
            )),
            Some(&1.0),
            "{reason}: {m:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_accepts_no_certificate_but_not_a_foreign_one() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = mtls_relay("optional", sink.addr.port()).await;
    let r = post_batch(
        relay.addr,
        &ClientOptions::https(None, false),
        small_batch(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    refused(
        &relay,
        ClientOptions::https(Some(("other-client.crt", "other-client.key")), true),
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_does_not_trust_the_relay_fails() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = mtls_relay("required", sink.addr.port()).await;
    let mut options = ClientOptions::https(Some(("client.crt", "client.key")), false);
    options.ca = Some(cert("other-ca.crt"));
    let err = post_batch(relay.addr, &options, small_batch())
        .await
        .unwrap_err();
    assert!(err.0.contains("UnknownIssuer"), "{err}");
}

/// A relay whose only destination is a TLS sink presenting `server_cert`.
async fn relay_to_tls_sink(sink_port: u16, extra: &str) -> Relay {
    Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
[queue]
kind = "memory"
[[destination]]
name = "siem"
url = "tls://127.0.0.1:{sink_port}"
ca = "{ca}"
backoff_initial = "50ms"
backoff_max = "200ms"
{extra}
"#,
        ca = cert("ca.crt"),
    ))
    .await
}

async fn outbound_refused(server_cert: &str, extra: &str, expect: &str, reason: &str) {
    let sink = Sink::start(
        Framing::Octet,
        Some((
            &format!("{server_cert}.crt"),
            &format!("{server_cert}.key"),
            None,
        )),
    )
    .await;
    let relay = relay_to_tls_sink(sink.addr.port(), extra).await;
    let r = post_batch(relay.addr, &ClientOptions::default(), small_batch())
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "the queue takes the batch while the destination is down"
    );
    assert!(
        relay.wait_log(expect, Duration::from_secs(5)).await,
        "expected {expect:?} in:\n{}",
        relay.logs()
    );
    assert!(
        relay
            .wait_log(
                "destination unavailable; will reconnect",
                Duration::from_secs(5)
            )
            .await
    );
    // Still serving, and retrying.
    let r = post_batch(relay.addr, &ClientOptions::default(), batch_at(1))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let key = format!("kar_tls_handshake_failures_total{{side=\"client\",reason=\"{reason}\"}}");
    let m = relay
        .wait_metrics(Duration::from_secs(5), |m| {
            m.get(&key).is_some_and(|n| *n >= 2.0)
        })
        .await;
    assert!(m[&key] >= 2.0, "refusals are counted by reason: {m:?}");
    assert!(
        sink.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the relay keeps reconnecting"
    );
    // The sink completed no handshake, so it cannot have received anything.
    assert_eq!(
        sink.count(),
        0,
        "nothing may be sent to an unverified receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_receiver_from_another_ca_is_refused() {
    outbound_refused(
        "other-server",
        "server_name = \"localhost\"",
        "UnknownIssuer",
        "unknown_issuer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_receiver_with_the_wrong_name_is_refused() {
    outbound_refused(
        "wrongname-server",
        "",
        "not valid for name",
        "name_mismatch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_expired_receiver_certificate_is_refused() {
    outbound_refused("expired-server", "", "certificate expired", "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_not_yet_valid_receiver_certificate_is_refused() {
    outbound_refused("future-server", "", "not valid yet", "not_yet_valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_rejecting_the_client_certificate_loses_nothing() {
    // The sink demands a client certificate from the dev CA. First the relay presents one
    // from another CA: with TLS 1.3 the rejection arrives after the relay's handshake is done,
    // so the relay must notice it and keep the records queued.
    let sink = Sink::start(
        Framing::Octet,
        Some(("server.crt", "server.key", Some("ca.crt"))),
    )
    .await;
    let port = sink.addr.port();
    let bad = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        cert("other-client.crt"),
        cert("other-client.key")
    );
    let relay = relay_to_tls_sink(port, &bad).await;
    let batch = small_batch();
    support::post_ok(relay.addr, batch.clone()).await;
    assert!(
        relay
            .wait_log("destination unavailable", Duration::from_secs(5))
            .await,
        "{}",
        relay.logs()
    );
    assert!(
        support::wait_until(Duration::from_secs(5), || sink
            .errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("handshake")))
        .await,
        "{:?}",
        sink.errors.lock().unwrap()
    );
    // The relay saw the receiver's alert and kept the records: nothing confirmed, nothing
    // received.
    let m = relay.metrics().await;
    assert_eq!(m["kar_events_sent_total{destination=\"siem\"}"], 0.0);
    assert_eq!(
        m["kar_destination_backlog_records{destination=\"siem\"}"],
        3.0
    );
    assert_eq!(sink.count(), 0);
    drop(relay);

    // The same queue contents with the right certificate arrive (memory queue: re-post).
    let good = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        cert("client.crt"),
        cert("client.key")
    );
    let relay = relay_to_tls_sink(port, &good).await;
    support::post_ok(relay.addr, batch).await;
    assert_eq!(sink.wait_for(3, Duration::from_secs(5)).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_certificate_pin() {
    use rustls::pki_types::pem::PemObject;
    let der = |f: &str| rustls::pki_types::CertificateDer::from_pem_file(cert(f)).unwrap();
    let hex = |bytes: [u8; 32]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let right = hex(kube_audit_relay::tls::certificate_sha256(&der(
        "server.crt",
    )));
    // A certificate that verifies (same CA, right name) but is not the pinned one.
    let wrong = hex(kube_audit_relay::tls::certificate_sha256(&der(
        "client.crt",
    )));

    let sink = Sink::start(Framing::Octet, Some(("server.crt", "server.key", None))).await;
    let relay = relay_to_tls_sink(
        sink.addr.port(),
        &format!("server_name = \"localhost\"\npin_sha256 = \"{right}\""),
    )
    .await;
    support::post_ok(relay.addr, batch_at(0)).await;
    assert_eq!(
        sink.wait_for(3, Duration::from_secs(5)).await.len(),
        3,
        "the pinned certificate is accepted"
    );
    drop(relay);

    let sink = Sink::start(Framing::Octet, Some(("server.crt", "server.key", None))).await;
    let relay = relay_to_tls_sink(
        sink.addr.port(),
        &format!("server_name = \"localhost\"\npin_sha256 = \"{wrong}\""),
    )
    .await;
    support::post_ok(relay.addr, batch_at(1)).await;
    assert!(
        relay
            .wait_log("does not match pin_sha256", Duration::from_secs(5))
            .await,
        "{}",
        relay.logs()
    );
    let key = "kar_tls_handshake_failures_total{side=\"client\",reason=\"pin_mismatch\"}";
    let m = relay
        .wait_metrics(Duration::from_secs(5), |m| m.contains_key(key))
        .await;
    assert!(m[key] >= 1.0, "{m:?}");
    assert_eq!(sink.count(), 0, "nothing is sent to an unpinned receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_client_names_refuse_a_sibling_certificate_with_403() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
allowed_client_names = ["kube-apiserver", "spiffe://cluster.local/ns/kube-system/sa/*"]
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{port}"
confirm_after = "20ms"
"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
        port = sink.addr.port()
    ))
    .await;
    for http2 in [false, true] {
        // Same CA, another name: the handshake succeeds, every request gets 403.
        let sibling =
            ClientOptions::https(Some(("sibling-client.crt", "sibling-client.key")), http2);
        let r = post_batch(relay.addr, &sibling, batch_at(1)).await.unwrap();
        assert_eq!(r.status, 403, "http2={http2}: {}", r.body);
        assert!(r.body.contains("kube-controller-manager"), "{}", r.body);
        assert!(r.body.contains("allowed_client_names"), "{}", r.body);
        // The apiserver's certificate is named: 200.
        let apiserver = ClientOptions::https(Some(("client.crt", "client.key")), http2);
        let r = post_batch(relay.addr, &apiserver, batch_at(usize::from(http2) + 2))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "http2={http2}: {}", r.body);
    }
    assert!(
        relay
            .wait_log(
                "client certificate not in listen.allowed_client_names",
                Duration::from_secs(5)
            )
            .await
    );
    let line = relay
        .logs
        .find("client certificate not in listen.allowed_client_names")
        .unwrap();
    assert!(line.contains("names=kube-controller-manager"), "{line}");
    let m = relay
        .wait_metric(
            "kar_clients_refused_total{reason=\"name_not_allowed\"}",
            2.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(m["kar_requests_total{code=\"403\"}"], 2.0);
    // Nothing of the refused batches was relayed: only the two accepted ones.
    let got = sink.wait_for(6, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.messages().len(), 6, "{got:?}");
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

#[test]
fn allowed_client_names_without_client_certificates_is_a_config_error() {
    let err = kube_audit_relay::config::Config::parse(
        "[listen]\nallowed_client_names = [\"kube-apiserver\"]\n",
        std::path::Path::new("relay.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("listen.allowed_client_names"), "{err}");
    assert!(err.contains("client_ca"), "{err}");
    let err = kube_audit_relay::config::Config::parse(
        "[listen]\nallowed_client_names = [\"has space\"]\n",
        std::path::Path::new("relay.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("allowed_client_names"), "{err}");
}
