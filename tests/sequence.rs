//! `syslog.sequence_id`: `[meta sequenceId="N"]` assigned when a record is stored. The numbers
//! are dense and ordered per destination, identical on every resend (even across `kill -9`
//! of the relay, with the disk queue), and the first record after each start says so with
//! `sysUpTime`; a memory queue numbers from 1 again after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::load::{Load, load_runs};
use support::receivers::Receiver;
use support::{Relay, RelayProcess, Sink, eventlist, small_events, wait_until};

/// `sequenceId` and whether `sysUpTime` is present, from a raw RFC 5424 record.
fn meta(raw: &[u8]) -> (u64, bool) {
    let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
    let sd = m.structured_data;
    let rest = sd
        .strip_prefix("[meta sequenceId=\"")
        .unwrap_or_else(|| panic!("no meta element first: {sd}"));
    let n = rest[..rest.find('"').unwrap()].parse().unwrap();
    (n, rest.contains("sysUpTime=\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_numbers_from_1_at_each_start() {
    let sink = Sink::start(Framing::Octet, None).await;
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[syslog]\nsequence_id = true\nenterprise_id = 32473\n[queue]\nkind = \"memory\"\n[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nconfirm_after = \"20ms\"\n",
        sink.addr.port()
    );
    let events = small_events(3000, 8);
    for round in 0..2 {
        let relay = Relay::start(&config).await;
        support::post_ok(relay.addr, eventlist(&events[..4])).await;
        support::post_ok(relay.addr, eventlist(&events[4..])).await;
        let got = sink.wait_for(8 * (round + 1), Duration::from_secs(5)).await;
        let run = &got[8 * round..];
        let metas: Vec<(u64, bool)> = run.iter().map(|r| meta(r)).collect();
        assert_eq!(
            metas,
            (1..=8).map(|n| (n, n == 1)).collect::<Vec<_>>(),
            "round {round}: 1..8, sysUpTime on the first"
        );
        for (raw, event) in run.iter().zip(&events) {
            let m = kube_audit_relay::syslog::parse_strict(raw).unwrap();
            assert!(
                m.structured_data.contains("][k8saudit@32473 auditID=\""),
                "the relay's own element follows: {}",
                m.structured_data
            );
            support::assert_same(
                std::str::from_utf8(m.msg).unwrap(),
                &event.expected_msg(),
                "MSG unchanged",
            );
        }
        drop(relay);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_queue_numbers_are_dense_ordered_and_identical_across_kill_9() {
    let Some(receiver) = Receiver::rsyslog_relp().await else {
        return;
    };
    let config = |port: u16| {
        format!(
            r#"[listen]
address = "127.0.0.1:{port}"
[syslog]
sequence_id = true
[queue]
kind = "disk"
data_dir = "queue"
[[destination]]
name = "relp"
url = "relp://127.0.0.1:{relp}"
backoff_initial = "50ms"
backoff_max = "200ms"
"#,
            relp = receiver.port("relp")
        )
    };
    let mut relay = RelayProcess::start(&config(0)).await;
    let cfg = config(relay.addr.port());
    let mut load = Load::start(relay.addr, "seq", 2, 50);
    for round in 0..2 {
        assert!(load_runs(&load, 500).await, "round {round}: the load runs");
        let dir = relay.kill9();
        relay = RelayProcess::start_in(dir, &cfg).await;
    }
    assert!(
        load_runs(&load, 500).await,
        "the load runs after the last restart"
    );
    load.stop().await;
    let acked = load.acked.lock().unwrap().clone();
    let all_in = wait_until(Duration::from_secs(30), || {
        let got: std::collections::HashSet<String> = receiver.audit_ids().into_iter().collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    assert!(all_in, "every acknowledged event arrived");
    let raw = std::fs::read_to_string(receiver.path("raw.log")).unwrap();
    let mut copies: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut first_seen = Vec::new();
    let mut uptimes = 0;
    for line in raw.lines() {
        let (n, uptime) = meta(line.as_bytes());
        if !copies.contains_key(&n) {
            first_seen.push(n);
            uptimes += usize::from(uptime);
        }
        copies.entry(n).or_default().push(line.to_owned());
    }
    let max = *copies.keys().last().unwrap();
    assert_eq!(
        copies.keys().copied().collect::<Vec<_>>(),
        (1..=max).collect::<Vec<_>>(),
        "dense: no number missing"
    );
    assert!(
        first_seen.windows(2).all(|w| w[0] < w[1]),
        "ordered: numbers first appear in increasing order"
    );
    let mut resent = 0;
    for (n, lines) in &copies {
        assert!(
            lines.iter().all(|l| l == &lines[0]),
            "sequenceId {n}: every copy carries the same bytes"
        );
        resent += lines.len() - 1;
    }
    assert_eq!(
        uptimes, 3,
        "sysUpTime marks the first record after each of the 3 starts"
    );
    eprintln!(
        "sequence ids 1..={max}, {} acknowledged events, {resent} resent copies",
        acked.len()
    );
}
