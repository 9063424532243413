//! RELP (`relp://`, `relp+tls://`): the corpus through a real rsyslog with `imrelp`, plain and
//! TLS with a required client certificate, byte-exact and exactly once; and the protocol's
//! failure paths against a scripted server: a refused message, a malformed frame, a
//! `serverclose` and a receiver that never acknowledges each end the session, nothing is
//! confirmed before its `rsp 200`, and the window bounds what is unacknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::check::{assert_delivered, assert_raw};
use support::receivers::Receiver;
use support::{ClientOptions, CorpusEvent, Relay, all_corpus_events, cert, eventlist, post_batch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HOST: &str = "relp-cluster";

fn relay_config(destinations: &str) -> String {
    format!(
        r#"cluster_name = "{HOST}"
[listen]
address = "127.0.0.1:0"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "memory"
{destinations}"#
    )
}

fn relp_destination(name: &str, url: &str, client: &str, extra: &str) -> String {
    format!(
        r#"
[[destination]]
name = "{name}"
url = "{url}"
ca = "{ca}"
client_cert = "{crt}"
client_key = "{key}"
server_name = "localhost"
backoff_initial = "50ms"
backoff_max = "200ms"
{extra}
"#,
        ca = cert("ca.crt"),
        crt = cert(&format!("{client}.crt")),
        key = cert(&format!("{client}.key")),
    )
}

async fn post_all(relay: &Relay, events: &[CorpusEvent]) {
    for chunk in events.chunks(25) {
        let r = post_batch(relay.addr, &ClientOptions::default(), eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_imrelp_plain_and_tls_with_client_certificates() {
    let Some(receiver) = Receiver::rsyslog_relp().await else {
        return;
    };
    let destinations = relp_destination(
        "relp",
        &format!("relp://127.0.0.1:{}", receiver.port("relp")),
        "client",
        "",
    ) + &relp_destination(
        "relptls",
        &format!("relp+tls://127.0.0.1:{}", receiver.port("relp_tls")),
        "client",
        "",
    );
    let relay = Relay::start(&relay_config(&destinations)).await;
    let events = all_corpus_events();
    post_all(&relay, &events).await;
    let received = receiver
        .wait_for(2 * events.len(), Duration::from_secs(30))
        .await;
    assert_delivered(&receiver, "relp", &events, &received, HOST);
    assert_delivered(&receiver, "relp_tls", &events, &received, HOST);
    assert_raw(&receiver, &events, HOST);
    let n = events.len() as f64;
    let m = relay
        .wait_metrics(Duration::from_secs(10), |m| {
            m.get("kar_events_sent_total{destination=\"relp\"}") == Some(&n)
                && m.get("kar_events_sent_total{destination=\"relptls\"}") == Some(&n)
        })
        .await;
    assert_eq!(
        m["kar_destination_backlog_records{destination=\"relptls\"}"],
        0.0
    );
    assert!(relay.has_log("connected (RELP)"), "{}", relay.logs());
    assert!(
        relay.has_log("connected (RELP over TLS)"),
        "{}",
        relay.logs()
    );
    // Plain RELP ignores the certificate keys, and says so once.
    assert_eq!(relay.logs.count("certificate settings are ignored"), 1);
    assert!(
        relay
            .logs
            .find("certificate settings are ignored")
            .unwrap()
            .contains("destination=relp ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_imrelp_refuses_a_client_certificate_from_another_ca() {
    let Some(receiver) = Receiver::rsyslog_relp().await else {
        return;
    };
    let relay = Relay::start(&relay_config(&relp_destination(
        "relptls",
        &format!("relp+tls://127.0.0.1:{}", receiver.port("relp_tls")),
        "other-client",
        "",
    )))
    .await;
    post_all(&relay, &all_corpus_events()[..5]).await;
    assert!(
        relay
            .wait_log(
                "destination unavailable; will reconnect",
                Duration::from_secs(10)
            )
            .await,
        "{}",
        relay.logs()
    );
    let m = relay.metrics().await;
    assert_eq!(m["kar_events_sent_total{destination=\"relptls\"}"], 0.0);
    assert_eq!(
        m["kar_destination_backlog_records{destination=\"relptls\"}"],
        5.0
    );
    assert!(receiver.messages().is_empty(), "nothing reached the file");
}

/// What a scripted RELP server does on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Answers `500 busy` to the first message.
    Refuse,
    /// Sends a line that is no RELP frame.
    Garbage,
    /// Sends `serverclose`.
    ServerClose,
    /// Takes messages and never answers them.
    Silent,
    /// Answers every message with 200, and `close` with a rsp and serverclose.
    Good,
}

#[derive(Default)]
struct Seen {
    /// (connection, txnr, command, data) of every frame received.
    frames: Vec<(usize, u32, String, Vec<u8>)>,
}

/// Reads one frame `TXNR SP CMD SP LEN [SP DATA] LF` (an independent reading of the format).
async fn read_frame(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(u32, String, Vec<u8>)> {
    loop {
        let text = buf.clone();
        let mut parts = text.splitn(3, |&b| b == b' ');
        if let (Some(t), Some(c), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
            let digits: Vec<u8> = rest
                .iter()
                .copied()
                .take_while(u8::is_ascii_digit)
                .collect();
            if !digits.is_empty() && rest.len() > digits.len() {
                let len: usize = String::from_utf8(digits.clone()).unwrap().parse().unwrap();
                let header = t.len() + 1 + c.len() + 1 + digits.len();
                let total = if len == 0 {
                    header + 1
                } else {
                    header + 1 + len + 1
                };
                if buf.len() >= total {
                    let data = if len == 0 {
                        Vec::new()
                    } else {
                        buf[header + 1..header + 1 + len].to_vec()
                    };
                    assert_eq!(buf[total - 1], b'\n', "frame trailer");
                    buf.drain(..total);
                    return Some((
                        String::from_utf8(t.to_vec()).unwrap().parse().unwrap(),
                        String::from_utf8(c.to_vec()).unwrap(),
                        data,
                    ));
                }
            }
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn scripted_server(scripts: Vec<Script>) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let script = scripts.get(conn).copied().unwrap_or(Script::Good);
            let seen = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((txnr, command, data)) = read_frame(&mut s, &mut buf).await {
                    seen.lock()
                        .unwrap()
                        .frames
                        .push((conn, txnr, command.clone(), data.clone()));
                    let answer: Vec<u8> = match (command.as_str(), script) {
                        ("open", _) => {
                            let offers =
                                b"200 OK\nrelp_version=0\nrelp_software=scripted\ncommands=syslog";
                            [
                                format!("{txnr} rsp {} ", offers.len()).as_bytes(),
                                offers,
                                b"\n",
                            ]
                            .concat()
                        }
                        ("syslog", Script::Refuse) => {
                            format!("{txnr} rsp 8 500 busy\n").into_bytes()
                        }
                        ("syslog", Script::Garbage) => b"this is not relp\n".to_vec(),
                        ("syslog", Script::ServerClose) => b"0 serverclose 0\n".to_vec(),
                        ("syslog", Script::Silent) => Vec::new(),
                        ("syslog", Script::Good) => format!("{txnr} rsp 6 200 OK\n").into_bytes(),
                        ("close", _) => format!("{txnr} rsp 0\n0 serverclose 0\n").into_bytes(),
                        (other, _) => panic!("unexpected command {other}"),
                    };
                    if !answer.is_empty() && s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_ends_the_session_and_only_acknowledged_records_count() {
    let (port, seen) = scripted_server(vec![
        Script::Refuse,
        Script::Garbage,
        Script::ServerClose,
        Script::Silent,
        Script::Good,
    ])
    .await;
    let relay = Relay::start(&relay_config(&format!(
        r#"
[[destination]]
name = "relp"
url = "relp://127.0.0.1:{port}"
relp_window = 4
relp_ack_timeout = "500ms"
backoff_initial = "50ms"
backoff_max = "100ms"
"#
    )))
    .await;
    let events: Vec<_> = support::small_events(3000, 10);
    post_all(&relay, &events).await;
    let key = "kar_events_sent_total{destination=\"relp\"}";
    let m = relay
        .wait_metric(key, events.len() as f64, Duration::from_secs(20))
        .await;
    assert_eq!(m[key], events.len() as f64, "{}", relay.logs());
    for line in [
        "the receiver refused transaction 2: 500 busy",
        "malformed or unexpected frame from the receiver",
        "the receiver closed the session (serverclose)",
        "no acknowledgement within relp_ack_timeout",
    ] {
        assert!(
            relay.has_log(line),
            "no log line `{line}`:\n{}",
            relay.logs()
        );
    }
    let frames = seen.lock().unwrap().frames.clone();
    let on = |conn: usize| -> Vec<(u32, String, Vec<u8>)> {
        frames
            .iter()
            .filter(|f| f.0 == conn)
            .map(|f| (f.1, f.2.clone(), f.3.clone()))
            .collect()
    };
    // Every session opens with transaction 1 and the offers librelp expects.
    for conn in 0..5 {
        let (txnr, command, data) = &on(conn)[0];
        assert_eq!((*txnr, command.as_str()), (1, "open"));
        let offers = String::from_utf8(data.clone()).unwrap();
        assert!(
            offers.starts_with("relp_version=0\nrelp_software=kube-audit-relay,"),
            "{offers}"
        );
        assert!(offers.ends_with("\ncommands=syslog"), "{offers}");
    }
    // The silent receiver got exactly the window's worth, and none was confirmed.
    let silent: Vec<_> = on(3).into_iter().filter(|f| f.1 == "syslog").collect();
    assert_eq!(
        silent.len(),
        4,
        "relp_window bounds the unacknowledged messages"
    );
    // The good session carried every event, in order, with increasing transaction numbers,
    // each message exactly the relay's record.
    let good: Vec<_> = on(4).into_iter().filter(|f| f.1 == "syslog").collect();
    assert_eq!(good.len(), events.len());
    for (i, ((txnr, _, data), event)) in good.iter().zip(&events).enumerate() {
        assert_eq!(*txnr, i as u32 + 2);
        support::check_message(data, event, HOST);
    }
    // A drain ends with close.
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    let frames = seen.lock().unwrap().frames.clone();
    assert!(
        frames.iter().any(|f| f.0 == 4 && f.2 == "close"),
        "the session is closed with `close`: {:?}",
        frames
            .iter()
            .map(|f| (f.0, f.1, f.2.clone()))
            .collect::<Vec<_>>()
    );
}
