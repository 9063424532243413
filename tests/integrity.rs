//! The tamper-evident trail, end to end: keys that standard tools read, the corpus through a
//! real rsyslog and a real syslog-ng with `[integrity]` on, `verify` on the files they wrote,
//! and each tampering of copies of those files found with its kind, sequence numbers and exit
//! code; `kill -9` of the relay (resends are duplicates, not tampering); key rotation; a
//! memory queue's new chain per start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::load::{Load, load_runs};
use support::receivers::{PeerAuth, Receiver};
use support::{
    ClientOptions, Relay, RelayProcess, all_corpus_events, cert, eventlist, post_batch, wait_until,
};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
}

fn gen_key(dir: &Path) -> (PathBuf, PathBuf) {
    let out = bin().arg("gen-signing-key").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("signing.key"), dir.join("signing.pub"))
}

/// `verify --json`: exit code and report.
fn verify(keys: &[&Path], files: &[&Path], extra: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = bin();
    cmd.arg("verify").arg("--json").args(extra);
    for k in keys {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.args(files).output().unwrap();
    let code = out.status.code().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code, report)
}

fn findings(report: &serde_json::Value) -> Vec<(String, u64, u64)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["from"].as_u64().unwrap(),
                f["to"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn have_openssl() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    assert!(
        found || !support::interop_required(),
        "openssl is needed here"
    );
    found
}

#[test]
fn generated_keys_are_read_by_openssl_and_openssl_keys_sign() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = gen_key(dir.path());
    for (args, file) in [
        (&["pkey", "-noout", "-in"][..], &key),
        (&["pkey", "-pubin", "-noout", "-in"][..], &public),
    ] {
        let out = Command::new("openssl")
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The public key openssl derives from our private key is the one we wrote.
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout),
        std::fs::read_to_string(&public).unwrap()
    );
    // A key from openssl genpkey works as integrity.signing_key.
    let ossl = dir.path().join("openssl.key");
    assert!(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&ossl)
            .status()
            .unwrap()
            .success()
    );
    kube_audit_relay::integrity::keys::SigningKey::load(&ossl).unwrap();
}

/// A relay config with the trail on (checkpoints every `records` records).
fn trail_config(listen: &str, key: &Path, records: u64, queue: &str, destinations: &str) -> String {
    format!(
        r#"cluster_name = "trail"
[listen]
address = "{listen}"
[syslog]
enterprise_id = 32473
max_message_bytes = "1MiB"
[queue]
{queue}
[integrity]
signing_key = "{key}"
checkpoint_records = {records}
checkpoint_interval = "1h"
{destinations}"#,
        key = key.display()
    )
}

fn tls_dest(name: &str, port: u16) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\nurl = \"tls://127.0.0.1:{port}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nserver_name = \"localhost\"\nconfirm_after = \"50ms\"\n",
        cert("ca.crt"),
        cert("client.crt"),
        cert("client.key")
    )
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn seq_of(line: &str) -> u64 {
    let rest = &line[line.find("sequenceId=\"").unwrap() + 12..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_and_syslog_ng_files_verify_and_every_tampering_is_found() {
    let (Some(rsyslog), Some(sng)) = (
        Receiver::rsyslog(PeerAuth::Required).await,
        Receiver::syslog_ng(PeerAuth::Required).await,
    ) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = gen_key(keys.path());
    let relay = Relay::start(&trail_config(
        "127.0.0.1:0",
        &key,
        25,
        "kind = \"disk\"\ndata_dir = \"q\"",
        &(tls_dest("rsyslog", rsyslog.port("tls")) + &tls_dest("sng", sng.port("tls"))),
    ))
    .await;
    let events = all_corpus_events();
    for chunk in events.chunks(20) {
        let r = post_batch(relay.addr, &ClientOptions::default(), eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(
        relay.shutdown(Duration::from_secs(20)).await,
        "drained with the final checkpoint"
    );
    let n = events.len();
    // start + events + a checkpoint every 25 + the final one
    let expected = 1 + n + n / 25 + 1;
    let (rs_file, sng_file) = (rsyslog.path("raw.log"), sng.path("raw.log"));
    assert!(
        wait_until(Duration::from_secs(10), || lines_of(&rs_file).len()
            >= expected
            && lines_of(&sng_file).len() >= expected)
        .await
    );
    for file in [&rs_file, &sng_file] {
        let (code, report) = verify(&[&public], &[file], &[]);
        assert_eq!(code, 0, "{}: {report:#}", file.display());
        assert_eq!(report["records"], expected as u64, "{report:#}");
        assert_eq!(
            report["verified"], expected as u64,
            "every record vouched for: {report:#}"
        );
        assert_eq!(report["chains"][0]["finished"], true);
        assert_eq!(report["chains"][0]["started"], true);
    }
    // The text report says OK too.
    let out = bin()
        .args(["verify", "--key"])
        .arg(&public)
        .arg(&rs_file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let original = lines_of(&rs_file);
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("tampered.log");
    let event_at = |i: usize| {
        original
            .iter()
            .position(|l| {
                !l.contains(" checkpoint ") && !l.contains(" trail-start ") && seq_of(l) == i as u64
            })
            .unwrap()
    };
    let tampered = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut lines = original.clone();
        edit(&mut lines);
        write_lines(&copy, &lines);
        verify(&[&public], &[&copy], &[])
    };
    // 1. One line deleted. The gap also leaves the records since the checkpoint before it
    // unproven (the link from them to the next checkpoint ran through the deleted record).
    let (code, r) = tampered(&|l| {
        l.remove(event_at(40));
    });
    assert_eq!(code, 1);
    let cp_before = original
        .iter()
        .filter(|l| l.contains(" checkpoint ") && seq_of(l) < 40)
        .map(|l| seq_of(l))
        .max()
        .unwrap();
    assert_eq!(
        findings(&r),
        [
            ("unsigned".to_owned(), cp_before, 39),
            ("missing".to_owned(), 40, 40)
        ],
        "{r:#}"
    );
    // 2. One byte changed inside one event's JSON.
    let (code, r) = tampered(&|l| {
        let i = event_at(57);
        let at = l[i].find("\"auditID\":\"").unwrap() + 12;
        let mut bytes = l[i].clone().into_bytes();
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        l[i] = String::from_utf8(bytes).unwrap();
    });
    assert_eq!(code, 1);
    assert_eq!(findings(&r), [("modified".to_owned(), 57, 57)], "{r:#}");
    // 3. Two lines swapped.
    let (code, r) = tampered(&|l| {
        let i = event_at(70);
        l.swap(i, i + 1);
    });
    assert_eq!(code, 1);
    assert_eq!(findings(&r), [("reordered".to_owned(), 70, 70)], "{r:#}");
    // 4. A line from another run inserted.
    let other_keys = tempfile::tempdir().unwrap();
    let other_line = {
        let sink = support::Sink::start(kube_audit_relay::config::Framing::Octet, None).await;
        let other = Relay::start(&trail_config(
            "127.0.0.1:0",
            &key,
            25,
            "kind = \"memory\"",
            &format!("[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nconfirm_after = \"20ms\"\n", sink.addr.port()),
        ))
        .await;
        support::post_ok(other.addr, eventlist(&events[..3])).await;
        let got = sink.wait_for(3, Duration::from_secs(5)).await;
        drop(other_keys);
        String::from_utf8(got[2].clone()).unwrap()
    };
    let (code, r) = tampered(&|l| {
        let i = event_at(90);
        l.insert(i, other_line.clone());
    });
    assert_eq!(code, 1);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0].0, "inserted", "{r:#}");
    assert_eq!(r["findings"][0]["at"][0]["line"], (event_at(90) + 1) as u64);
    // 5. The file cut after a checkpoint: the end, with the final checkpoint, is gone.
    let checkpoints: Vec<usize> = original
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" checkpoint "))
        .map(|(i, _)| i)
        .collect();
    let cut_after = checkpoints[checkpoints.len() - 2];
    let (code, r) = tampered(&|l| l.truncate(cut_after + 1));
    assert_eq!(code, 1);
    let last_kept = seq_of(&original[cut_after]);
    assert_eq!(
        findings(&r),
        [("open_end".to_owned(), last_kept, last_kept)],
        "{r:#}"
    );
    // 6. One checkpoint's signature altered.
    let (code, r) = tampered(&|l| {
        let i = checkpoints[1];
        let at = l[i].find("\"sig\":\"").unwrap() + 7;
        let mut bytes = l[i].clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        l[i] = String::from_utf8(bytes).unwrap();
    });
    assert_eq!(code, 1);
    let cp = seq_of(&original[checkpoints[1]]);
    let f = findings(&r);
    assert!(f.contains(&("bad_signature".to_owned(), cp, cp)), "{r:#}");
    // The checkpoint's own bytes changed too, so its chain value no longer fits them.
    assert!(
        f.iter()
            .all(|(k, a, _)| (k == "bad_signature" || k == "modified") && *a == cp),
        "{r:#}"
    );
    // Unreadable input is another exit code.
    let (code, _) = verify(&[&public], &[&work.path().join("no-such-file")], &[]);
    assert_eq!(code, 2);
    // A wrong key: every signature is by an unknown key.
    let wrong = tempfile::tempdir().unwrap();
    let (_, wrong_pub) = gen_key(wrong.path());
    let (code, r) = verify(&[&wrong_pub], &[&rs_file], &[]);
    assert_eq!(code, 1);
    assert!(
        findings(&r).iter().any(|(k, _, _)| k == "unknown_key"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_continues_the_chain_and_resends_are_duplicates() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::Required).await else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = gen_key(keys.path());
    let config = |listen: &str| {
        trail_config(
            listen,
            &key,
            200,
            "kind = \"disk\"\ndata_dir = \"q\"",
            &tls_dest("rsyslog", receiver.port("tls")),
        )
    };
    let mut relay = RelayProcess::start(&config("127.0.0.1:0")).await;
    let cfg = config(&relay.addr.to_string());
    let mut load = Load::start(relay.addr, "trail", 2, 50);
    for round in 0..2 {
        assert!(load_runs(&load, 1000).await, "round {round}: the load runs");
        let dir = relay.kill9();
        relay = RelayProcess::start_in(dir, &cfg).await;
    }
    assert!(
        load_runs(&load, 1000).await,
        "the load runs after the last restart"
    );
    load.stop().await;
    let status = relay.terminate(Duration::from_secs(30)).await.unwrap();
    assert!(status.success());
    let acked = load.acked.lock().unwrap().clone();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let got: std::collections::HashSet<String> = receiver.audit_ids().into_iter().collect();
            acked.iter().all(|id| got.contains(id))
        })
        .await
    );
    let raw = receiver.path("raw.log");
    // rsyslog may still be writing the last lines of the drain.
    let mut last = (0, serde_json::Value::Null);
    wait_until(Duration::from_secs(10), || {
        last = verify(&[&public], &[&raw], &[]);
        last.0 == 0
    })
    .await;
    let (code, report) = last;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["chains"].as_array().unwrap().len(),
        1,
        "one chain across the restarts"
    );
    assert!(
        report["duplicates"].as_u64().unwrap() > 0,
        "the resends are reported as duplicates: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_from_the_next_checkpoint_and_a_memory_queue_starts_a_new_chain() {
    let sink_dir = tempfile::tempdir().unwrap();
    let file = sink_dir.path().join("trail.log");
    let sink = support::Sink::start(kube_audit_relay::config::Framing::Octet, None).await;
    let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old_key, old_pub) = gen_key(old.path());
    let (new_key, new_pub) = gen_key(new.path());
    let live = sink_dir.path().join("signing.key");
    std::fs::copy(&old_key, &live).unwrap();
    let config = trail_config(
        "127.0.0.1:0",
        &live,
        5,
        "kind = \"memory\"",
        &format!(
            "[[destination]]\nname = \"s\"\nurl = \"tcp://127.0.0.1:{}\"\nconfirm_after = \"20ms\"\n",
            sink.addr.port()
        ),
    );
    let events: Vec<_> = support::small_events(3000, 20);
    let relay = Relay::start(&config).await;
    support::post_ok(relay.addr, eventlist(&events[..10])).await;
    // Rotate: the next checkpoint is signed by the new key.
    std::fs::copy(&new_key, &live).unwrap();
    support::post_ok(relay.addr, eventlist(&events[10..])).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    // A second start of the memory-queue relay: a new chain with its own start record.
    let relay = Relay::start(&config).await;
    support::post_ok(relay.addr, eventlist(&events[..4])).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    let records = sink.messages();
    std::fs::write(
        &file,
        records
            .iter()
            .map(|r| [r.as_slice(), b"\n"].concat())
            .collect::<Vec<_>>()
            .concat(),
    )
    .unwrap();
    let (code, report) = verify(&[&old_pub, &new_pub], &[&file], &[]);
    assert_eq!(code, 0, "{report:#}");
    let chains = report["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{report:#}");
    assert_eq!(
        chains[0]["keys"].as_array().unwrap().len() + chains[1]["keys"].as_array().unwrap().len(),
        3,
        "{report:#}"
    );
    let (code, report) = verify(&[&new_pub], &[&file], &[]);
    assert_eq!(
        code, 1,
        "checkpoints signed before the rotation need the old key"
    );
    assert!(
        findings(&report).iter().any(|(k, _, _)| k == "unknown_key"),
        "{report:#}"
    );
}
