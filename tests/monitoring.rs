//! What operators run next to the relay, run for real: the alert rules through `promtool`
//! (syntax and unit tests), a real Prometheus scraping a relay and answering queries with the
//! relay's counters (and holding the rules, with the destination-down alert pending for a
//! dead destination), and the Grafana dashboard's queries checked against what `/metrics`
//! exports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::receivers::Receiver;
use support::{Relay, Sink, client, eventlist, post_ok, small_events};

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn promtool() -> Option<String> {
    let bin = std::env::var("KAR_PROMTOOL").unwrap_or_else(|_| "/usr/bin/promtool".into());
    if Path::new(&bin).exists() {
        Some(bin)
    } else {
        support::missing_receiver("promtool (Debian package prometheus)");
        None
    }
}

#[test]
fn promtool_checks_the_alert_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus/alerts.yaml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alert_names().len())),
        "{out}"
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(repo("deploy/prometheus"))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the file has at least one unit test.
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yaml")).unwrap();
    for name in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool unit test"
        );
    }
}

/// The names of the alerts in `deploy/prometheus/alerts.yaml`.
fn alert_names() -> BTreeSet<String> {
    std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// A Prometheus HTTP API query: the sample values of the result vector, by label set.
async fn query(web: std::net::SocketAddr, expr: &str) -> Vec<(serde_json::Value, f64)> {
    let path = format!("/api/v1/query?query={}", urlencode(expr));
    let Ok(r) = client(web).get(&path).send().await else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let value = row["value"][1]
                        .as_str()
                        .unwrap_or("NaN")
                        .parse()
                        .unwrap_or(f64::NAN);
                    (row["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn wait_query(
    web: std::net::SocketAddr,
    expr: &str,
    want: f64,
) -> Vec<(serde_json::Value, f64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = query(web, expr).await;
        if rows.iter().any(|(_, v)| (*v - want).abs() < 1e-9)
            || tokio::time::Instant::now() > deadline
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_relay_and_evaluates_the_alerts() {
    let sink = Sink::start(kube_audit_relay::config::Framing::Octet, None).await;
    let (_held, dead) = support::ports::closed();
    let relay = Relay::start(&format!(
        r#"
[listen]
address = "127.0.0.1:0"
[queue]
kind = "memory"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{}"
confirm_after = "20ms"
[[destination]]
name = "dead"
url = "tcp://127.0.0.1:{dead}"
[shutdown]
drain_timeout = "500ms"
"#,
        sink.addr.port()
    ))
    .await;
    let Some(prometheus) = Receiver::prometheus(&[relay.admin.unwrap()]).await else {
        return;
    };
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", prometheus.port("web"))
        .parse()
        .unwrap();
    let events = small_events(3000, 25);
    post_ok(relay.addr, eventlist(&events)).await;
    post_ok(relay.addr, eventlist(&events[..5])).await; // five repeats
    sink.wait_for(25, Duration::from_secs(10)).await;

    // The relay's counters, read back through Prometheus's query API.
    let received = wait_query(web, "kar_events_received_total", 30.0).await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].1, 30.0);
    assert_eq!(received[0].0["job"], "kube-audit-relay");
    assert_eq!(received[0].0["instance"], relay.admin.unwrap().to_string());
    let sent = wait_query(web, "kar_events_sent_total{destination=\"sink\"}", 25.0).await;
    assert_eq!(sent.first().map(|r| r.1), Some(25.0), "{sent:?}");
    let dedup = wait_query(web, "kar_events_deduplicated_total", 5.0).await;
    assert_eq!(dedup.first().map(|r| r.1), Some(5.0), "{dedup:?}");
    let ok = wait_query(web, "kar_requests_total{code=\"200\"}", 2.0).await;
    assert_eq!(ok.first().map(|r| r.1), Some(2.0), "{ok:?}");
    let up = wait_query(web, "kar_destination_up", 0.0).await;
    let by_destination: Vec<(String, f64)> = up
        .iter()
        .map(|(m, v)| (m["destination"].as_str().unwrap_or("").to_owned(), *v))
        .collect();
    assert!(
        by_destination.contains(&("dead".to_owned(), 0.0)),
        "{by_destination:?}"
    );
    assert!(
        by_destination.contains(&("sink".to_owned(), 1.0)),
        "{by_destination:?}"
    );
    assert_eq!(
        wait_query(web, "kar_ready", 1.0).await.first().map(|r| r.1),
        Some(1.0)
    );

    // Prometheus loaded every rule of alerts.yaml, and the dead destination's alert is
    // pending (its `for: 5m` has not passed).
    let rules = client(web).get("/api/v1/rules").send().await.unwrap();
    let rules: serde_json::Value = serde_json::from_str(&rules.body).unwrap();
    let names: BTreeSet<String> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, alert_names(), "every rule of alerts.yaml loaded");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let alerts = client(web).get("/api/v1/alerts").send().await.unwrap();
        let alerts: serde_json::Value = serde_json::from_str(&alerts.body).unwrap();
        let found = alerts["data"]["alerts"].as_array().and_then(|a| {
            a.iter()
                .find(|x| {
                    x["labels"]["alertname"] == "KubeAuditRelayDestinationDown"
                        && x["labels"]["destination"] == "dead"
                })
                .cloned()
        });
        if found.is_some() || tokio::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let pending = pending.expect("KubeAuditRelayDestinationDown for the dead destination");
    assert_eq!(pending["state"], "pending", "{pending}");
    drop(prometheus);
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

/// Metric names in a PromQL expression: identifiers that start with `kar_` (and `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            // Skip label values.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i > start {
            let word = &expr[start..i];
            if word.starts_with("kar_") {
                out.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_metrics_the_relay_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/kube-audit-relay.json")).unwrap(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if panel["type"] != "row" {
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            titles.push(panel["title"].as_str().unwrap().to_owned());
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} reads no relay metric");
            used.extend(names);
        }
    }
    for wanted in [
        "events in",
        "events out",
        "backlog",
        "oldest",
        "status",
        "latency",
        "tls",
        "queue bytes",
    ] {
        assert!(
            titles.iter().any(|t| t.to_lowercase().contains(wanted)),
            "no panel about {wanted}: {titles:?}"
        );
    }
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
    {
        used.extend(metric_names(line));
    }

    // What a relay with traffic, a refused handshake and two destinations exports.
    let sink = Sink::start(kube_audit_relay::config::Framing::Octet, None).await;
    let relay = Relay::start(&format!(
        r#"
[listen]
address = "127.0.0.1:0"
tls_cert = "{}"
tls_key = "{}"
client_ca = "{}"
[[destination]]
name = "sink"
url = "tcp://127.0.0.1:{}"
confirm_after = "20ms"
"#,
        support::cert("server.crt"),
        support::cert("server.key"),
        support::cert("ca.crt"),
        sink.addr.port()
    ))
    .await;
    let ok = support::ClientOptions::https(Some(("client.crt", "client.key")), false);
    let r = support::post_batch(relay.addr, &ok, eventlist(&small_events(3000, 3)))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let foreign =
        support::ClientOptions::https(Some(("other-client.crt", "other-client.key")), false);
    assert!(
        support::post_batch(relay.addr, &foreign, eventlist(&small_events(3000, 1)))
            .await
            .is_err()
    );
    let text = client(relay.admin.unwrap())
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .body;
    // Sample names, and the names each declared family has even before its first sample
    // (a counter with labels shows no line until a label set is used).
    let mut exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                exported.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                exported.insert(name.to_owned());
            }
        }
    }
    for name in &used {
        assert!(
            exported.contains(name),
            "{name} is queried but not exported; exported: {exported:?}"
        );
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}
