//! Scale-out, proven with the real things: three relay processes, each with its own data
//! directory, behind a real HAProxy (`deploy/haproxy/haproxy.cfg`: TCP mode, round robin,
//! health checks on `/readyz`), all delivering to one real rsyslog. Under load through HAProxy
//! over mTLS, one replica is killed with -9 and restarted on its directory: every event that
//! got a 200 reaches rsyslog, and the clients saw only retriable failures. Over HTTP/2 the
//! load keeps one connection, as the apiserver does, and the replica it is pinned to is the
//! one killed. And a replica gone for good hands its queue over: `run` on a copy of its data
//! directory drains it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::client::PersistentH2;
use support::load::{Load, Target, assert_no_loss, load_runs, report, settle};
use support::receivers::{PeerAuth, Receiver};
use support::{ClientOptions, RelayProcess, cert};

fn replica_config(webhook: u16, admin: u16, receiver: &Receiver) -> String {
    format!(
        r#"cluster_name = "fleet"
[listen]
address = "127.0.0.1:{webhook}"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
retry_after_seconds = 1
[admin]
address = "127.0.0.1:{admin}"
[queue]
kind = "disk"
data_dir = "queue"
[shutdown]
drain_timeout = "20s"
[[destination]]
name = "rsyslog"
url = "tls://127.0.0.1:{tls}"
ca = "{ca}"
server_name = "localhost"
backoff_initial = "50ms"
backoff_max = "500ms"
confirm_after = "300ms"
"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
        tls = receiver.port("tls"),
    )
}

struct Fleet {
    receiver: Receiver,
    replicas: Vec<Option<RelayProcess>>,
    configs: Vec<String>,
    haproxy: Receiver,
}

impl Fleet {
    async fn start() -> Option<Fleet> {
        let receiver = Receiver::rsyslog(PeerAuth::None).await?;
        let mut replicas = Vec::new();
        let mut configs = Vec::new();
        for _ in 0..3 {
            // Port 0 first, so that no other test's pick can clash; a restart after `kill -9`
            // comes back on the ports it had, as HAProxy expects.
            let replica = RelayProcess::start(&replica_config(0, 0, &receiver)).await;
            let admin = replica.admin.expect("admin listener").port();
            configs.push(replica_config(replica.addr.port(), admin, &receiver));
            replicas.push(Some(replica));
        }
        let addrs: [(SocketAddr, u16); 3] = std::array::from_fn(|i| {
            let r = replicas[i].as_ref().unwrap();
            (r.addr, r.admin.unwrap().port())
        });
        let haproxy = Receiver::haproxy(&addrs).await?;
        Some(Fleet {
            receiver,
            replicas,
            configs,
            haproxy,
        })
    }

    fn address(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.haproxy.port("webhook"))
            .parse()
            .unwrap()
    }

    /// 200 answers each replica gave so far.
    async fn answered(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for r in &self.replicas {
            out.push(match r {
                Some(r) => r
                    .metrics()
                    .await
                    .get("kar_requests_total{code=\"200\"}")
                    .copied()
                    .unwrap_or(0.0),
                None => 0.0,
            });
        }
        out
    }

    /// The replicas that answered 200s during the next half second.
    async fn busy(&self) -> Vec<usize> {
        let before = self.answered().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = self.answered().await;
        (0..3).filter(|&i| after[i] > before[i]).collect()
    }
}

/// Failures a client may see while a replica dies: transport errors, timeouts and 503.
fn only_retriable(statuses: &BTreeMap<String, u64>) -> bool {
    statuses
        .keys()
        .all(|k| matches!(k.as_str(), "200" | "503" | "error" | "timeout"))
}

async fn failover(http2: bool) {
    let Some(mut fleet) = Fleet::start().await else {
        return;
    };
    let options = ClientOptions::https(Some(("client.crt", "client.key")), http2);
    let connection = Arc::new(PersistentH2::new(fleet.address(), &options));
    let target = if http2 {
        Target::Persistent(connection.clone())
    } else {
        Target::PerRequest(fleet.address(), options)
    };
    let name = if http2 { "fleet-h2" } else { "fleet-h1" };
    let mut load = Load::start_on(target, name, 4, 50);
    assert!(
        load_runs(&load, 2000).await,
        "the load runs through HAProxy"
    );
    let busy = fleet.busy().await;
    let victim = if http2 {
        // One HTTP/2 connection: exactly one replica serves it.
        assert_eq!(
            busy.len(),
            1,
            "an HTTP/2 connection is pinned to one replica: {busy:?}"
        );
        busy[0]
    } else {
        assert_eq!(busy, vec![0, 1, 2], "round robin reaches every replica");
        1
    };
    let dir = fleet.replicas[victim].take().unwrap().kill9();
    let errors = load.status_count("error") + load.status_count("timeout");
    assert!(
        load_runs(&load, 2000).await,
        "the load goes on through the other replicas: {:?}",
        load.statuses.lock().unwrap()
    );
    let others = fleet.busy().await;
    assert!(
        !others.is_empty() && !others.contains(&victim),
        "the others serve: {others:?}"
    );
    fleet.replicas[victim] = Some(RelayProcess::start_in(dir, &fleet.configs[victim]).await);
    let restarted = fleet.replicas[victim].as_ref().unwrap();
    assert!(
        restarted.has_log("queue recovered"),
        "the restarted replica found its own queue: {}",
        restarted.logs()
    );
    assert!(
        load_runs(&load, 1000).await,
        "the load runs after the restart"
    );
    load.stop().await;
    let statuses = load.statuses.lock().unwrap().clone();
    let acked = load.acked.lock().unwrap().clone();
    let t = settle(&fleet.receiver, &acked, Duration::from_secs(60)).await;
    let reconnects = connection
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    report(
        &format!(
            "three replicas behind HAProxy ({}), one killed with -9 under load and restarted",
            if http2 {
                "HTTP/2, one connection"
            } else {
                "HTTP/1.1"
            }
        ),
        t,
        &format!(
            "statuses {statuses:?}{}",
            if http2 {
                format!(", {reconnects} HTTP/2 connections")
            } else {
                String::new()
            }
        ),
    );
    assert_no_loss(name, t, 5000);
    assert!(
        only_retriable(&statuses),
        "non-retriable answers: {statuses:?}"
    );
    assert!(
        load.status_count("error") + load.status_count("timeout") >= errors,
        "{statuses:?}"
    );
    if http2 {
        assert!(
            reconnects >= 2,
            "the HTTP/2 client reconnected after the kill"
        );
    }
    for r in fleet.replicas.iter_mut().flatten() {
        let status = r.terminate(Duration::from_secs(30)).await;
        assert!(status.is_some_and(|s| s.success()), "{}", r.logs());
    }
    fleet.haproxy.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_lose_nothing_when_one_is_killed() {
    failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_pinned_to_a_killed_replica_moves_on_and_loses_nothing() {
    failover(true).await;
}

/// Copies a directory tree (the queue: segments, cursors, lock file).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gone_for_good_hands_over_its_queue_to_a_relay_on_a_copy() {
    let Some(receiver) = Receiver::rsyslog(PeerAuth::None).await else {
        return;
    };
    // The replica's destination is unreachable, so what it accepts stays in its queue.
    let (_held, dead) = support::ports::closed();
    // The same configuration before and after, but for where the destination points.
    let config_to = |port: u16| {
        format!(
            r#"[listen]
address = "127.0.0.1:0"
[queue]
kind = "disk"
data_dir = "queue"
[[destination]]
name = "rsyslog"
url = "tls://127.0.0.1:{port}"
ca = "{ca}"
server_name = "localhost"
confirm_after = "200ms"
"#,
            ca = cert("ca.crt")
        )
    };
    let replica = RelayProcess::start(&config_to(dead)).await;
    let events = support::small_events(3000, 200);
    for chunk in events.chunks(50) {
        support::post_ok(replica.addr, support::eventlist(chunk)).await;
    }
    let dir = replica.kill9();
    // The procedure: a relay on (a copy of) its volume, with the same destination names,
    // pointed at the receiver, drains it.
    let heir = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("queue"), &heir.path().join("queue"));
    drop(dir);
    let mut heir = RelayProcess::start_in(heir, &config_to(receiver.port("tls"))).await;
    let want: std::collections::HashSet<String> =
        events.iter().map(|e| e.audit_id.clone()).collect();
    let t = settle(&receiver, &want, Duration::from_secs(30)).await;
    assert_eq!(t.lost, 0, "the copy drained: {t:?}\n{}", heir.logs());
    assert_eq!(t.delivered, want.len());
    // Every record, not only every auditID (the corpus has several stages per auditID).
    assert!(receiver.audit_ids().len() >= events.len(), "{t:?}");
    heir.wait_metric(
        "kar_destination_backlog_records{destination=\"rsyslog\"}",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    let status = heir.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", heir.logs());
}
