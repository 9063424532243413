//! Hostile and broken clients against the real listener: each case gets its status (or a
//! closed connection) within its limit, and the relay keeps serving afterwards. These run the
//! real binary, because they assert the relay's own peak memory after each case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kube_audit_relay::config::Framing;
use support::{
    ClientOptions, RelayProcess as Relay, Sink, all_corpus_events, cert, client, eventlist,
    post_batch,
};

async fn relay(sink: &Sink, listen_extra: &str) -> Relay {
    Relay::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n{listen_extra}\n[queue]\nkind = \"memory\"\nmax_bytes = \"512MiB\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\n",
        sink.addr.port()
    ))
    .await
}

/// Sends raw bytes and returns what came back until the server closed or `wait` passed.
fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Memory stays bounded: the peak is asserted after each abuse case.
fn assert_memory_below(relay: &Relay, mib: u64) {
    let peak = relay.peak_rss_mib();
    eprintln!("relay peak RSS: {peak} MiB (bound {mib} MiB)");
    assert!(peak < mib, "relay peak RSS {peak} MiB, bound {mib} MiB");
}

async fn still_serving(relay: &Relay) {
    let events: Vec<_> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < 2000)
        .skip(7)
        .take(1)
        .collect();
    let r = post_batch(relay.addr, &ClientOptions::default(), eventlist(&events))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the relay still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(
        &sink,
        "header_read_timeout = \"1s\"\nrequest_timeout = \"2s\"",
    )
    .await;
    let addr = relay.addr;
    let (headers, body, chunked) = tokio::task::spawn_blocking(move || {
        // Slow headers: the head never completes.
        let headers = raw(addr, b"POST / HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(10));
        // Slow body: 10 of 1000 announced bytes.
        let body = raw(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"items\":[",
            Duration::from_secs(10),
        );
        // A chunked body that never ends.
        let chunked = raw(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ite\r\n",
            Duration::from_secs(10),
        );
        (headers, body, chunked)
    })
    .await
    .unwrap();
    assert!(
        headers.1 < Duration::from_secs(4),
        "slow headers cut after ~1s, took {:?}",
        headers.1
    );
    assert!(matches!(status_of(&headers.0), 0 | 408), "{}", headers.0);
    assert_eq!(status_of(&body.0), 408, "{}", body.0);
    assert!(body.1 < Duration::from_secs(5), "{:?}", body.1);
    assert_eq!(status_of(&chunked.0), 408, "{}", chunked.0);
    still_serving(&relay).await;
    assert_memory_below(&relay, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_busy_connections_and_recycles_silent_ones() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(&sink, "max_connections = 4\nrequest_timeout = \"3s\"").await;
    // Four connections that never send a byte: at the cap they make room for a real client.
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(relay.addr).unwrap())
        .collect();
    still_serving(&relay).await;
    let m = relay.metrics().await;
    assert!(
        m["kar_connections_evicted_total{state=\"handshake\"}"] >= 1.0,
        "{m:?}"
    );
    drop(silent);
    relay
        .wait_metric("kar_connections_open", 0.0, Duration::from_secs(5))
        .await;
    // Four connections in the middle of a request (the body never completes): a fifth client
    // waits in the backlog instead of taking a busy connection's slot.
    let mut busy = Vec::new();
    for n in 1..=4 {
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{").unwrap();
        busy.push(s);
        let m = relay
            .wait_metric(
                "kar_requests_in_flight",
                f64::from(n),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(m["kar_requests_in_flight"], f64::from(n));
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(700),
        post_batch(relay.addr, &ClientOptions::default(), b"{}".to_vec()),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a busy connection lost its slot: {blocked:?}"
    );
    drop(busy);
    still_serving(&relay).await;
    assert_memory_below(&relay, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_clear_answers() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(&sink, "max_body_bytes = \"1MiB\"\nmax_header_bytes = 16384").await;
    let plain = ClientOptions::default();
    let post = |body: Vec<u8>| {
        client(relay.addr)
            .options(&plain)
            .post("/")
            .json(body)
            .send()
    };

    let nested = format!(
        "{{\"items\":[{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = post(nested.into_bytes()).await.unwrap();
    assert_eq!(r.status, 400, "deep nesting: {}", r.body);

    // A huge number is valid JSON text: relayed byte for byte, never converted.
    let r = post(br#"{"items":[{"auditID":"big-number","stage":"S","x":1e999999}]}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "huge number: {}", r.body);
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&got[0]).ends_with(r#""x":1e999999}"#));

    let r = post(br#"{"items":[],"items":[]}"#.to_vec()).await.unwrap();
    assert_eq!(r.status, 400, "duplicate key: {}", r.body);
    assert!(r.body.contains("duplicate field"), "{}", r.body);

    let r = post(b"{\"items\":[{\"auditID\":\"a\0\",\"stage\":\"S\"}]}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "raw NUL byte: {}", r.body);

    // Escaped NUL and control characters are valid JSON and relayed, still as valid JSON.
    let r = post(br#"{"items":[{"auditID":"nul-\u0000-id","stage":"S\n"}]}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = sink.wait_for(2, Duration::from_secs(5)).await;
    let m = kube_audit_relay::syslog::parse_strict(&got[1]).unwrap();
    assert_eq!(m.msgid, "S_", "control characters never reach the header");
    serde_json::from_slice::<serde_json::Value>(m.msg).unwrap();

    // Over the limit without Content-Length (chunked): 413 all the same.
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunks = chunked(vec![vec![b' '; 256 << 10]; 8]);
    let r = tx
        .send_request(
            hyper::Request::post("/")
                .header("content-type", "application/json")
                .body(chunks)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Header flood.
    let mut headers = String::from("POST / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        headers.push_str(&format!("X-Flood-{i}: {}\r\n", "v".repeat(30)));
    }
    let addr = relay.addr;
    let (resp, _) =
        tokio::task::spawn_blocking(move || raw(addr, headers.as_bytes(), Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(matches!(status_of(&resp), 0 | 431), "header flood: {resp}");
    still_serving(&relay).await;
    assert_memory_below(&relay, 64);
}

/// A request body sent in chunks, without Content-Length.
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn chunked(chunks: Vec<Vec<u8>>) -> Chunked {
    Chunked(chunks.into_iter().map(bytes::Bytes::from).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_batches_and_huge_events() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(&sink, "").await;
    // 100 000 tiny items in one batch.
    let items: Vec<String> = (0..100_000)
        .map(|i| format!(r#"{{"auditID":"tiny-{i}","stage":"ResponseComplete"}}"#))
        .collect();
    let body = format!(r#"{{"kind":"EventList","items":[{}]}}"#, items.join(","));
    let r = post_batch(relay.addr, &ClientOptions::default(), body.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sink.wait_for(100_000, Duration::from_secs(30)).await.len(),
        100_000
    );
    // One 60 MiB event: accepted (under the 64 MiB body limit), truncated by the apiserver rule.
    let blob = "A".repeat(60 << 20);
    let body = format!(
        r#"{{"items":[{{"auditID":"huge-event","stage":"ResponseComplete","requestObject":{{"data":"{blob}"}}}}]}}"#
    );
    drop(blob);
    let r = post_batch(relay.addr, &ClientOptions::default(), body.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = sink.wait_for(100_001, Duration::from_secs(30)).await;
    let last = kube_audit_relay::syslog::parse_strict(got.last().unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(last.msg).unwrap();
    assert_eq!(v["auditID"], "huge-event");
    assert_eq!(v["annotations"]["audit.k8s.io/truncated"], "true");
    still_serving(&relay).await;
    assert_memory_below(&relay, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_are_refused() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(
            !support::interop_required(),
            "openssl is needed for this test"
        );
        eprintln!("SKIPPED: no openssl");
        return;
    }
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(
        &sink,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert("server.crt"),
            cert("server.key")
        ),
    )
    .await;
    let addr = relay.addr.to_string();
    for version in ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                version,
                "-CAfile",
                &cert("ca.crt"),
                "-servername",
                "localhost",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let established =
            text.contains("Server certificate") && !text.contains("no peer certificate available");
        match version {
            "-tls1" | "-tls1_1" => assert!(!established, "{version} must be refused:\n{text}"),
            _ => assert!(established, "{version} must work:\n{text}"),
        }
    }
    assert!(
        relay
            .wait_log("TLS handshake refused", Duration::from_secs(5))
            .await
    );
    let m = relay.metrics().await;
    assert_eq!(
        m["kar_tls_handshake_failures_total{side=\"server\",reason=\"protocol_version\"}"], 2.0,
        "TLS 1.0 and 1.1 refused and counted"
    );
    still_serving_tls(&relay).await;
}

async fn still_serving_tls(relay: &Relay) {
    let events: Vec<_> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < 2000)
        .skip(9)
        .take(1)
        .collect();
    let r = post_batch(
        relay.addr,
        &ClientOptions::https(None, false),
        eventlist(&events),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

/// An HTTP/2 connection to `relay` over TLS, without a client certificate, past its first
/// stream.
async fn h2_connection(
    relay: &Relay,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let options = ClientOptions::https(None, true);
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(support::client_tls_config(&options))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One stream first: once it is answered the server's SETTINGS (its stream limit) have
    // arrived. Streams opened before they arrive may exceed the limit and be refused
    // (REFUSED_STREAM, which a client retries; Go's http2 does, hyper's does not).
    let mut first = sender.clone();
    let r = first.send_request(empty_batch()).await.unwrap();
    assert_eq!(r.status(), 200);
    sender
}

/// An empty EventList.
fn empty_batch() -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    hyper::Request::post("/")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"items\":[]}",
        )))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_floods_and_resets() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = relay(
        &sink,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nmax_streams_per_connection = 16",
            cert("server.crt"),
            cert("server.key")
        ),
    )
    .await;
    // Rapid reset (CVE-2023-44487): 2 000 requests started and cancelled at once. How many
    // reach the wire as HEADERS + RST_STREAM depends on scheduling; when too many resets are
    // pending, h2 ends the connection with GOAWAY (ENHANCE_YOUR_CALM), which is the defence.
    // Either way the next stream on it is answered or refused at once, never left hanging.
    let resets = h2_connection(&relay).await;
    for _ in 0..2000 {
        let mut s = resets.clone();
        let f = tokio::spawn(async move { s.send_request(empty_batch()).await });
        f.abort();
    }
    let mut s = resets.clone();
    let after = tokio::time::timeout(Duration::from_secs(10), s.send_request(empty_batch()))
        .await
        .expect("a stream after the resets is answered or refused, not left hanging");
    match after {
        Ok(r) => assert_eq!(r.status(), 200),
        Err(e) => assert!(
            e.is_canceled() || e.is_closed() || format!("{e:?}").contains("ENHANCE_YOUR_CALM"),
            "the connection that reset streams ends only by the relay's GOAWAY: {e:?}"
        ),
    }
    drop((s, resets));
    // A flood of 500 concurrent streams on one connection: served 16 at a time, all answered.
    let sender = h2_connection(&relay).await;
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.send_request(empty_batch())
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(Ok(200)) = t.await {
            ok += 1;
        }
    }
    assert_eq!(ok, 500, "every stream of the flood is answered");
    still_serving_tls(&relay).await;
    assert_memory_below(&relay, 64);
}

#[test]
fn private_keys_never_reach_the_logs() {
    // A config whose "certificate" file is actually a private key, and whose key file is a
    // certificate: the start-up errors must name the files, never print their contents.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!("[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[admin]\naddress = \"off\"\n", cert("server.key"), cert("server.crt")),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("server.key") || text.contains("server.crt"),
        "the error names the file: {text}"
    );
    let key = std::fs::read_to_string(cert("server.key")).unwrap();
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for line in key_body {
        assert!(!text.contains(line), "private key material in the output");
    }
}
