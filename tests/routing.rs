//! Per-destination routing through real receivers: the corpus (events in many namespaces)
//! goes to four destinations with their own `[[destination.filter]]` rules: one tenant's
//! `default` namespace to rsyslog over TLS, another's `openshift-*` namespaces to rsyslog
//! over TCP, everything to syslog-ng over TLS, and nothing at all to syslog-ng's LF
//! listener. Each receives exactly its share, once, byte-exact; the one that matches nothing
//! does not hold the shared queue back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use support::check::assert_delivered;
use support::interop::{HOST, post_all, relay_config, tcp_destination, tls_destination};
use support::receivers::{PeerAuth, Receiver};
use support::{CorpusEvent, Relay, all_corpus_events};

/// Keep events in `namespaces` (globs), drop every other (a bare `drop` matches all).
fn tenant(namespaces: &[&str]) -> String {
    format!(
        "[[destination.filter]]\naction = \"keep\"\nnamespace = {namespaces:?}\n[[destination.filter]]\naction = \"drop\"\n"
    )
}

fn namespace(e: &CorpusEvent) -> Option<&str> {
    e.value["objectRef"]["namespace"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_receives_exactly_its_tenants_events() {
    let Some(rsyslog) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let Some(syslog_ng) = Receiver::syslog_ng(PeerAuth::Required).await else {
        return;
    };
    let destinations = [
        tls_destination("team-default", rsyslog.port("tls"), "octet") + &tenant(&["default"]),
        tcp_destination("team-openshift", rsyslog.port("tcp"), "octet", false)
            + &tenant(&["openshift-*"]),
        tls_destination("everything", syslog_ng.port("tls"), "octet"),
        tcp_destination("nobody", syslog_ng.port("lf"), "lf", false)
            + &tenant(&["no-such-namespace"]),
    ]
    .concat();
    let relay = Relay::start(&relay_config(&destinations)).await;
    let events = all_corpus_events();
    let share = |pick: &dyn Fn(Option<&str>) -> bool| -> Vec<CorpusEvent> {
        events
            .iter()
            .filter(|e| pick(namespace(e)))
            .cloned()
            .collect()
    };
    let default = share(&|ns| ns == Some("default"));
    let openshift = share(&|ns| ns.is_some_and(|n| n.starts_with("openshift-")));
    assert!(
        default.len() >= 10 && openshift.len() >= 10,
        "the corpus spreads over namespaces"
    );
    assert!(default.len() + openshift.len() < events.len());
    post_all(&relay, &events).await;

    let got = rsyslog
        .wait_for(default.len() + openshift.len(), Duration::from_secs(30))
        .await;
    let all = syslog_ng
        .wait_for(events.len(), Duration::from_secs(30))
        .await;
    // Everyone's backlog drains, including the destination that takes nothing.
    let names = ["nobody", "team-default", "team-openshift", "everything"];
    let m = relay
        .wait_metrics(Duration::from_secs(30), |m| {
            names.iter().all(|d| {
                m.get(&format!(
                    "kar_destination_backlog_records{{destination=\"{d}\"}}"
                )) == Some(&0.0)
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if rsyslog.messages().len() > got.len() {
        rsyslog.messages()
    } else {
        got
    };
    assert_delivered(&rsyslog, "tls", &default, &got, HOST);
    assert_delivered(&rsyslog, "tcp", &openshift, &got, HOST);
    assert_delivered(&syslog_ng, "tls", &events, &all, HOST);
    assert!(
        syslog_ng.messages().iter().all(|m| m.listener != "lf"),
        "the destination whose rules match nothing received something"
    );
    // Counted per destination: routed away, and sent only what was sent.
    let n = events.len() as f64;
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing: {m:#?}"))
    };
    assert_eq!(
        get("kar_events_routed_away_total{destination=\"nobody\"}"),
        n
    );
    assert_eq!(get("kar_events_sent_total{destination=\"nobody\"}"), 0.0);
    assert_eq!(
        get("kar_events_routed_away_total{destination=\"team-default\"}"),
        n - default.len() as f64
    );
    assert_eq!(
        get("kar_events_sent_total{destination=\"team-default\"}"),
        default.len() as f64
    );
    assert_eq!(
        get("kar_events_sent_total{destination=\"team-openshift\"}"),
        openshift.len() as f64
    );
    assert_eq!(get("kar_events_sent_total{destination=\"everything\"}"), n);
    assert_eq!(
        get("kar_events_routed_away_total{destination=\"everything\"}"),
        0.0
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

#[test]
fn routing_is_refused_with_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    kube_audit_relay::integrity::keys::generate(dir.path()).unwrap();
    let text = format!(
        "[syslog]\nenterprise_id = 32473\n[integrity]\nsigning_key = {key:?}\n[[destination]]\nname = \"a\"\nurl = \"tcp://127.0.0.1:514\"\n{}",
        tenant(&["default"])
    );
    let err = kube_audit_relay::config::Config::parse(&text, std::path::Path::new("relay.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("destination[0].filter"), "{err}");
    assert!(err.contains("[integrity]"), "{err}");
}
