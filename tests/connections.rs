//! Connections that hold a slot and do nothing must not lock a valid client out: at
//! `listen.max_connections`, a connection that has not finished its TLS handshake, or one idle
//! between requests, makes room. Busy connections are never closed for a newcomer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::{ClientOptions, Relay, Sink, cert, eventlist, post_batch, small_events};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn mtls_relay(sink: &Sink, extra: &str) -> Relay {
    Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
{extra}
[queue]
kind = "memory"
[[destination]]
name = "s"
url = "tcp://127.0.0.1:{port}"
"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
        port = sink.addr.port(),
    ))
    .await
}

fn mtls() -> ClientOptions {
    ClientOptions::https(Some(("client.crt", "client.key")), true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_lock_out_a_valid_client() {
    // The default cap (1024) and handshake timeout: the idle connections outnumber the slots
    // and would hold them for the whole handshake timeout.
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = mtls_relay(&sink, "").await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(relay.addr).await.unwrap());
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        post_batch(relay.addr, &mtls(), eventlist(&small_events(3000, 2))),
    )
    .await
    .expect("a valid client is answered within one second")
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let m = relay.metrics().await;
    let evicted = m["kar_connections_evicted_total{state=\"handshake\"}"];
    assert!(
        evicted >= 1.0,
        "room was made by closing connections that never sent a handshake: {m:?}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_make_room_busy_ones_do_not() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = mtls_relay(&sink, "max_connections = 4\nrequest_timeout = \"5s\"").await;
    // Four HTTP/2 connections that each carried a request and now sit idle, kept open.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(support::client_tls_config(&mtls()))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let r = sender
            .send_request(
                hyper::Request::post("/")
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(eventlist(
                        &small_events(3000, 1),
                    ))))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        idle.push((sender, conn));
    }
    // A fifth client is served: the connection idle the longest made room for it.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        post_batch(relay.addr, &mtls(), eventlist(&small_events(3000, 1))),
    )
    .await
    .expect("served")
    .unwrap();
    assert_eq!(r.status, 200);
    let (_, first) = idle.remove(0);
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the longest idle connection was closed (GOAWAY)")
        .unwrap()
        .unwrap();
    let m = relay.metrics().await;
    assert!(
        m["kar_connections_evicted_total{state=\"idle\"}"] >= 1.0,
        "{m:?}"
    );

    // Now four busy connections: each is in the middle of a request whose body never ends.
    drop(idle);
    relay
        .wait_metric("kar_connections_open", 0.0, Duration::from_secs(5))
        .await;
    let mut busy = Vec::new();
    for n in 1..=4 {
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(support::client_tls_config(
            &ClientOptions::https(Some(("client.crt", "client.key")), false),
        ))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
        tls.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"items\":[")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        busy.push(tls);
        // This request is in flight before the next connection comes (which could otherwise
        // find it idle, between its handshake and its first request, and close it).
        relay
            .wait_metric(
                "kar_requests_in_flight",
                f64::from(n),
                Duration::from_secs(5),
            )
            .await;
    }
    assert_eq!(relay.metrics().await["kar_requests_in_flight"], 4.0);
    let key = "kar_requests_total{code=\"200\"}";
    let before = relay.metrics().await[key];
    let blocked = tokio::time::timeout(
        Duration::from_millis(1500),
        post_batch(relay.addr, &mtls(), eventlist(&small_events(3000, 1))),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a busy connection was closed for a newcomer: {blocked:?}"
    );
    assert_eq!(relay.metrics().await[key], before);
    drop(busy);
}
