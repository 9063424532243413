//! Operating the relay: metrics scraped over HTTP after real traffic, health and readiness,
//! bearer-token authentication, and fan-out where a dead destination does not hold back a
//! live one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::{
    ClientOptions, Relay, RelayProcess, Sink, all_corpus_events, cert, check_message, client,
    eventlist, post_batch,
};

fn small_events(n: usize) -> Vec<support::CorpusEvent> {
    support::small_events(3000, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
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
    let events = small_events(10);
    let ok = ClientOptions::https(Some(("client.crt", "client.key")), false);
    assert_eq!(
        post_batch(relay.addr, &ok, eventlist(&events))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        post_batch(relay.addr, &ok, eventlist(&events[..4]))
            .await
            .unwrap()
            .status,
        200
    ); // 4 repeats
    let status = |path: &'static str, ct: &'static str| {
        let ok = ok.clone();
        async move {
            client(relay.addr)
                .options(&ok)
                .post(path)
                .content_type(ct)
                .send()
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status("/nope", "application/json").await, 404);
    assert_eq!(status("/", "text/plain").await, 415);
    let foreign = ClientOptions::https(Some(("other-client.crt", "other-client.key")), false);
    assert!(
        post_batch(relay.addr, &foreign, eventlist(&events))
            .await
            .is_err()
    );
    sink.wait_for(10, Duration::from_secs(5)).await;
    let m = relay
        .wait_metric(
            "kar_events_sent_total{destination=\"sink\"}",
            10.0,
            Duration::from_secs(5),
        )
        .await;
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing from {m:#?}"))
    };
    assert_eq!(get("kar_requests_total{code=\"200\"}"), 2.0);
    assert_eq!(get("kar_requests_total{code=\"404\"}"), 1.0);
    assert_eq!(get("kar_requests_total{code=\"415\"}"), 1.0);
    assert_eq!(get("kar_events_received_total"), 14.0);
    assert_eq!(get("kar_events_deduplicated_total"), 4.0);
    assert_eq!(get("kar_events_sent_total{destination=\"sink\"}"), 10.0);
    assert_eq!(get("kar_destination_up{destination=\"sink\"}"), 1.0);
    assert_eq!(
        get("kar_destination_backlog_records{destination=\"sink\"}"),
        0.0
    );
    assert_eq!(
        get("kar_tls_handshake_failures_total{side=\"server\",reason=\"unknown_issuer\"}"),
        1.0
    );
    assert_eq!(get("kar_request_duration_seconds_count"), 4.0);
    assert_eq!(get("kar_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(m.contains_key("kar_queue_bytes"));
    assert_eq!(get("kar_ready"), 1.0);
    assert!(get("kar_queue_max_bytes") > 0.0);

    let admin = relay.admin.unwrap();
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/other", 404)] {
        assert_eq!(
            client(admin).get(path).send().await.unwrap().status,
            status,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_draining() {
    let (_closed, dead) = support::ports::closed();
    let relay = Relay::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[shutdown]\ndrain_timeout = \"3s\"\n[[destination]]\nname = \"dead\"\nurl = \"tcp://127.0.0.1:{dead}\"\n"
    ))
    .await;
    support::post_ok(relay.addr, eventlist(&small_events(2))).await;
    let admin = relay.admin.unwrap();
    let readyz = || async move { client(admin).get("/readyz").send().await.unwrap().status };
    assert_eq!(readyz().await, 200);
    // As SIGTERM does in main. The destination is dead, so the drain lasts drain_timeout;
    // meanwhile readiness is off and the admin listener still answers.
    relay.begin_shutdown();
    assert!(
        relay
            .wait_log("draining destinations", Duration::from_secs(5))
            .await
    );
    assert_eq!(readyz().await, 503);
    let m = relay.metrics().await;
    assert_eq!(
        m["kar_destination_backlog_records{destination=\"dead\"}"],
        2.0
    );
    assert_eq!(m["kar_destination_up{destination=\"dead\"}"], 0.0);
    // New connections are no longer accepted.
    assert!(
        post_batch(
            relay.addr,
            &ClientOptions::default(),
            eventlist(&small_events(1))
        )
        .await
        .is_err()
    );
    let logs = relay.logs.clone();
    assert!(relay.shutdown(Duration::from_secs(10)).await, "drain ends");
    assert!(
        logs.has("stopped with undelivered records"),
        "{}",
        logs.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let sink = Sink::start(Framing::Octet, None).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let relay = Relay::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\n",
        token_file.display(),
        sink.addr.port()
    )).await;
    let body = eventlist(&small_events(1));
    let send = |auth: Option<&'static str>| {
        let body = body.clone();
        let addr = relay.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = hyper::Request::post("/").header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = tx
                .send_request(
                    req.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap(),
                )
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    assert_eq!(send(None).await, (401, Some("Bearer".to_owned())));
    assert_eq!(send(Some("Bearer wrong")).await.0, 401);
    assert_eq!(send(Some("Bearer s3cret-toke")).await.0, 401);
    assert_eq!(send(Some("s3cret-token")).await.0, 401);
    assert_eq!(send(Some("Bearer s3cret-token")).await.0, 200);
    assert_eq!(sink.wait_for(1, Duration::from_secs(5)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_does_not_hold_back_a_live_one() {
    let live = Sink::start(Framing::Lf, None).await;
    let (_closed, dead) = support::ports::closed();
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
[queue]
kind = "disk"
data_dir = "q"
[[destination]]
name = "dead"
url = "tcp://127.0.0.1:{dead}"
[[destination]]
name = "live"
url = "tcp://127.0.0.1:{live}"
framing = "lf"
"#,
        live = live.addr.port()
    ))
    .await;
    let events = small_events(30);
    for chunk in events.chunks(10) {
        support::post_ok(relay.addr, eventlist(chunk)).await;
    }
    assert_eq!(live.wait_for(30, Duration::from_secs(5)).await.len(), 30);
    // The age of the dead destination's oldest event grows while nothing drains.
    let m = relay
        .wait_metrics(Duration::from_secs(10), |m| {
            m["kar_destination_oldest_undelivered_seconds{destination=\"dead\"}"] >= 1.0
                && m["kar_destination_oldest_undelivered_seconds{destination=\"live\"}"] == 0.0
        })
        .await;
    assert_eq!(
        m["kar_destination_backlog_records{destination=\"dead\"}"],
        30.0
    );
    assert_eq!(m["kar_destination_up{destination=\"dead\"}"], 0.0);
    assert_eq!(m["kar_destination_up{destination=\"live\"}"], 1.0);
    let dead_age = m["kar_destination_oldest_undelivered_seconds{destination=\"dead\"}"];
    assert!(
        (1.0..30.0).contains(&dead_age),
        "the dead destination's oldest event waits: {dead_age}"
    );
    assert_eq!(
        m["kar_destination_oldest_undelivered_seconds{destination=\"live\"}"],
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_redaction_on_corpus_events() {
    let sink = Sink::start(Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{port}"
[[filter]]
action = "keep"
user = ["system:admin"]
[[filter]]
action = "drop"
verb = ["get", "list", "watch"]
[[redact]]
pointer = "/responseObject/data"
resource = ["configmaps", "secrets"]
[[redact]]
pointer = "/requestObject/data"
resource = ["configmaps", "secrets"]
"#,
        port = sink.addr.port()
    ))
    .await;
    let events = all_corpus_events();
    for chunk in events.chunks(20) {
        support::post_ok(relay.addr, eventlist(chunk)).await;
    }
    // The expectation, computed here from the events themselves.
    let kept: Vec<&support::CorpusEvent> = events
        .iter()
        .filter(|e| {
            let user = e
                .value
                .pointer("/user/username")
                .and_then(|u| u.as_str())
                .unwrap_or("");
            let verb = e.value.get("verb").and_then(|v| v.as_str()).unwrap_or("");
            user == "system:admin" || !["get", "list", "watch"].contains(&verb)
        })
        .collect();
    assert!(kept.len() < events.len() && !kept.is_empty());
    let got = sink.wait_for(kept.len(), Duration::from_secs(10)).await;
    let metrics = relay
        .wait_metric(
            "kar_destination_backlog_records{destination=\"sink\"}",
            0.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        metrics["kar_events_sent_total{destination=\"sink\"}"],
        kept.len() as f64
    );
    assert_eq!(sink.count(), kept.len(), "exactly the kept events");
    let mut redacted = 0;
    for (raw, e) in got.iter().zip(&kept) {
        let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
        let msg: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
        assert_eq!(msg["auditID"], e.audit_id.as_str());
        let resource = e
            .value
            .pointer("/objectRef/resource")
            .and_then(|r| r.as_str())
            .unwrap_or("");
        let sensitive = ["configmaps", "secrets"].contains(&resource)
            && (e.value.pointer("/responseObject/data").is_some()
                || e.value.pointer("/requestObject/data").is_some());
        if sensitive {
            redacted += 1;
            for p in ["/responseObject/data", "/requestObject/data"] {
                if e.value.pointer(p).is_some() {
                    assert_eq!(msg.pointer(p).unwrap(), "[REDACTED]", "{} {p}", e.audit_id);
                }
            }
            let text = std::str::from_utf8(m.msg).unwrap();
            assert!(
                text.starts_with(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","#),
                "order kept"
            );
        } else {
            support::assert_same(
                std::str::from_utf8(m.msg).unwrap(),
                &e.expected_msg(),
                &e.audit_id,
            );
        }
    }
    assert!(redacted > 0, "the corpus has configmaps with data");
    assert_eq!(
        metrics["kar_events_filtered_total"],
        (events.len() - kept.len()) as f64
    );
    assert_eq!(metrics["kar_events_redacted_total"], f64::from(redacted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_destination_sends_one_datagram_per_event() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let relay = Relay::start(&format!(
        r#"cluster_name = "c1"
[listen]
address = "127.0.0.1:0"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "memory"
[[destination]]
name = "udp"
url = "udp://127.0.0.1:{port}"
max_datagram_bytes = 4096
"#
    ))
    .await;
    let events: Vec<_> = support::small_events(3500, 10);
    let big: Vec<_> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() > 10_000 && e.value.get("responseObject").is_some())
        .take(1)
        .collect();
    support::post_ok(relay.addr, eventlist(&events)).await;
    support::post_ok(relay.addr, eventlist(&big)).await;
    let mut buf = vec![0u8; 70_000];
    for e in &events {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        support::check_message(&buf[..n], e, "c1");
    }
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n <= 4096);
    let m = kube_audit_relay::syslog::parse_strict(&buf[..n]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(m.msg).unwrap();
    assert_eq!(v["auditID"], big[0].audit_id.as_str());
    assert_eq!(
        v["annotations"]["audit.k8s.io/truncated"], "true",
        "shortened to fit the datagram"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3164_format_for_old_receivers() {
    let sink = Sink::start(Framing::Lf, None).await;
    let relay = Relay::start(&format!(
        "cluster_name = \"c1\"\n[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"old\"\nurl = \"tcp://127.0.0.1:{}\"\nframing = \"lf\"\nformat = \"rfc3164\"\n",
        sink.addr.port()
    )).await;
    let events: Vec<_> = support::small_events(3000, 3);
    support::post_ok(relay.addr, eventlist(&events)).await;
    let got = sink.wait_for(3, Duration::from_secs(5)).await;
    for (raw, e) in got.iter().zip(&events) {
        let text = std::str::from_utf8(raw).unwrap();
        let parsed = syslog_loose::parse_message(text, syslog_loose::Variant::RFC3164);
        assert_eq!(parsed.protocol, syslog_loose::Protocol::RFC3164);
        assert_eq!(parsed.hostname, Some("c1"));
        assert_eq!(parsed.appname, Some("kube-apiserver"));
        support::assert_same(parsed.msg, &e.expected_msg(), "RFC 3164 MSG");
        let ts = e.expected_timestamp().unwrap();
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months[ts[5..7].parse::<usize>().unwrap() - 1];
        let day: u32 = ts[8..10].parse().unwrap();
        assert!(
            text.contains(&format!(
                ">{month} {day:>2} {} c1 kube-apiserver: {{",
                &ts[11..19]
            )),
            "{}",
            &text[..60]
        );
    }
}

/// An HTTPS receiver that answers 503 to its first `failures` requests, then 200, and keeps
/// every line of the bodies it accepted.
async fn https_ndjson_receiver(
    failures: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let files = kube_audit_relay::tls::ServerTlsFiles {
        cert: cert("server.crt").into(),
        key: cert("server.key").into(),
        client_ca: None,
        client_auth: kube_audit_relay::config::ClientAuth::None,
    };
    let mut config = (*kube_audit_relay::tls::server_config(&files).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let kept = lines.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, kept, seen) = (acceptor.clone(), kept.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (kept, seen) = (kept.clone(), seen.clone());
                        async move {
                            assert_eq!(req.headers()["content-type"], "application/x-ndjson");
                            assert_eq!(req.uri().path(), "/audit/in");
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .unwrap()
                                .to_bytes();
                            let status = if seen.fetch_add(1, Ordering::SeqCst) < failures {
                                503
                            } else {
                                kept.lock().unwrap().extend(
                                    String::from_utf8(body.to_vec())
                                        .unwrap()
                                        .lines()
                                        .map(str::to_owned),
                                );
                                200
                            };
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_destination_posts_ndjson_and_retries_until_2xx() {
    let (addr, lines) = https_ndjson_receiver(2).await;
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
[queue]
kind = "memory"
[[destination]]
name = "logstash"
url = "https://localhost:{port}/audit/in"
ca = "{ca}"
backoff_initial = "50ms"
backoff_max = "100ms"
"#,
        port = addr.port(),
        ca = cert("ca.crt")
    ))
    .await;
    let events: Vec<_> = support::small_events(3000, 12);
    support::post_ok(relay.addr, eventlist(&events)).await;
    assert!(
        support::wait_until(Duration::from_secs(10), || lines.lock().unwrap().len()
            >= events.len())
        .await,
        "{}",
        relay.logs()
    );
    let got = lines.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        events.len(),
        "each event once, after two refused attempts"
    );
    for (line, e) in got.iter().zip(&events) {
        support::assert_same(line, &e.expected_msg(), "NDJSON line");
    }
    assert!(
        relay.has_log("receiver answered HTTP 503"),
        "{}",
        relay.logs()
    );
    // The relay counts a batch as sent when the 2xx reaches it, just after the receiver kept it.
    let key = "kar_events_sent_total{destination=\"logstash\"}";
    let m = relay
        .wait_metric(key, events.len() as f64, Duration::from_secs(5))
        .await;
    assert_eq!(m[key], events.len() as f64);
}

/// The variables of a running process, as the kernel shows them.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fixes_the_malloc_threshold_unless_the_operator_set_one() {
    let sink = Sink::start(Framing::Octet, None).await;
    let config = format!(
        "cluster_name = \"c1\"\n[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nconfirm_after = \"20ms\"\n",
        sink.addr.port()
    );
    // Unset: the relay replaced itself (same pid, same arguments) with the threshold fixed,
    // and that process serves.
    let relay = RelayProcess::start_with_env(tempfile::tempdir().unwrap(), &config, &[]).await;
    let vars = environ(relay.pid());
    assert!(
        vars.iter()
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304"),
        "{vars:?}"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", relay.pid())).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    assert!(args[0].ends_with("kube-audit-relay"), "{args:?}");
    assert_eq!(args[1..3], ["run", "--config"], "{args:?}");
    assert_eq!(args[3], relay.config_path.to_str().unwrap());
    let events = small_events(10);
    let r = post_batch(relay.addr, &ClientOptions::default(), eventlist(&events))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = sink.wait_for(events.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), events.len());
    for (raw, event) in got.iter().zip(&events) {
        check_message(raw, event, "c1");
    }
    drop(relay);

    // Set, even empty: the operator's value is kept.
    let relay = RelayProcess::start_with_env(
        tempfile::tempdir().unwrap(),
        &config,
        &[("GLIBC_TUNABLES", "")],
    )
    .await;
    let vars = environ(relay.pid());
    let tunables: Vec<_> = vars
        .iter()
        .filter(|v| v.starts_with("GLIBC_TUNABLES="))
        .collect();
    assert_eq!(tunables, ["GLIBC_TUNABLES="], "{vars:?}");
}
