//! Certificate rotation without restart: the listener's server certificate and client CA are
//! replaced on disk while requests keep coming; no request fails, the new certificate is
//! served, and broken new files are refused while the old ones stay in use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::{ClientOptions, Relay, Sink, all_corpus_events, cert, eventlist, post_batch};

/// Replaces `path` atomically, as a Secret volume update would.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_server_certificate_and_client_ca_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let new = dir.path().join("new");
    std::fs::create_dir_all(&live).unwrap();
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(cert(f), live.join(f)).unwrap();
    }
    kube_audit_relay::certs::generate(&new, kube_audit_relay::certs::GenOptions::default())
        .unwrap();
    let ca1 = std::fs::read(cert("ca.crt")).unwrap();
    let ca2 = std::fs::read(new.join("ca.crt")).unwrap();
    let both = dir.path().join("both-cas.crt");
    std::fs::write(&both, [ca1.clone(), ca2.clone()].concat()).unwrap();

    let sink = Sink::start(Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
tls_cert = "{live}/server.crt"
tls_key = "{live}/server.key"
client_ca = "{live}/ca.crt"
tls_reload_interval = "100ms"
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{port}"
"#,
        live = live.display(),
        port = sink.addr.port()
    ))
    .await;

    // Load during the whole rotation: a new connection per request, trusting both CAs,
    // presenting the original client certificate (its CA stays in the bundle).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let events: Vec<_> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < 3000)
        .collect();
    let load = {
        let (stop, ok, failed, addr, events) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            relay.addr,
            events.clone(),
        );
        let mut options = ClientOptions::https(Some(("client.crt", "client.key")), false);
        options.ca = Some(both.display().to_string());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let batch = eventlist(&events[i % events.len()..][..1]);
                match post_batch(addr, &options, batch).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let load_ran = |n: u64| {
        let ok = ok.clone();
        async move {
            support::wait_until(Duration::from_secs(10), || ok.load(Ordering::SeqCst) >= n).await
        }
    };
    assert!(load_ran(10).await, "the load runs before the rotation");

    // 1. Trust the new CA as well.
    replace(&live.join("ca.crt"), &[ca1.clone(), ca2.clone()].concat());
    assert!(
        relay
            .wait_log("listener certificates reloaded", Duration::from_secs(5))
            .await,
        "{}",
        relay.logs()
    );
    let mut client2 = ClientOptions::https(None, false);
    client2.ca = Some(both.display().to_string());
    client2.identity = Some((
        new.join("client.crt").display().to_string(),
        new.join("client.key").display().to_string(),
    ));
    let r = post_batch(relay.addr, &client2, eventlist(&events[..1]))
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "a client certificate from the new CA is accepted"
    );

    // 2. Serve the new server certificate.
    replace(
        &live.join("server.key"),
        &std::fs::read(new.join("server.key")).unwrap(),
    );
    replace(
        &live.join("server.crt"),
        &std::fs::read(new.join("server.crt")).unwrap(),
    );
    let mut only_new_ca = ClientOptions::https(Some(("client.crt", "client.key")), false);
    only_new_ca.ca = Some(new.join("ca.crt").display().to_string());
    let served = support::wait_until_async(Duration::from_secs(5), || async {
        post_batch(relay.addr, &only_new_ca, eventlist(&events[..1]))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(served, "the new certificate is served: {}", relay.logs());
    let only_old_ca = ClientOptions::https(Some(("client.crt", "client.key")), false);
    let err = post_batch(relay.addr, &only_old_ca, eventlist(&events[..1]))
        .await
        .unwrap_err();
    // Both throw-away CAs carry the same name, so rustls may report a bad signature instead.
    assert!(
        err.0.contains("UnknownIssuer") || err.0.contains("BadSignature"),
        "{err}"
    );

    // 3. A broken file is refused; the relay keeps serving the last good configuration.
    replace(
        &live.join("server.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    assert!(
        relay
            .wait_log(
                "do not load; keeping the previous ones",
                Duration::from_secs(5)
            )
            .await,
        "{}",
        relay.logs()
    );
    let r = post_batch(relay.addr, &only_new_ca, eventlist(&events[..1]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let so_far = ok.load(Ordering::SeqCst);
    assert!(
        load_ran(so_far + 10).await,
        "the load goes on after the rotation"
    );
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        ok.load(Ordering::SeqCst) >= 20,
        "the load ran: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed during the rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_client_certificate_is_reloaded_on_reconnect() {
    // The receiver requires a client certificate from the dev CA; the relay starts with one
    // from another CA (refused), then the file is replaced with a good one.
    let sink = Sink::start(
        Framing::Octet,
        Some(("server.crt", "server.key", Some("ca.crt"))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::copy(cert("other-client.crt"), &crt).unwrap();
    std::fs::copy(cert("other-client.key"), &key).unwrap();
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
[queue]
kind = "memory"
[[destination]]
name = "siem"
url = "tls://127.0.0.1:{port}"
ca = "{ca}"
server_name = "localhost"
client_cert = "{crt}"
client_key = "{key}"
backoff_initial = "50ms"
backoff_max = "200ms"
"#,
        port = sink.addr.port(),
        ca = cert("ca.crt"),
        crt = crt.display(),
        key = key.display()
    ))
    .await;
    let events: Vec<_> = support::small_events(3000, 3);
    support::post_ok(relay.addr, eventlist(&events)).await;
    assert!(
        relay
            .wait_log("destination unavailable", Duration::from_secs(5))
            .await
    );
    assert_eq!(sink.count(), 0);
    replace(&key, &std::fs::read(cert("client.key")).unwrap());
    replace(&crt, &std::fs::read(cert("client.crt")).unwrap());
    assert_eq!(
        sink.wait_for(3, Duration::from_secs(10)).await.len(),
        3,
        "{}",
        relay.logs()
    );
    assert!(relay.has_log("destination certificates reloaded"));
}
