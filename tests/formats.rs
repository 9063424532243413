//! The SIEM formats on the corpus, checked by parsers that are not the relay's: every corpus
//! event goes to a CEF, a LEEF and an OCSF destination; CEF is parsed by pycef (PyPI), LEEF
//! by a parser written from IBM's LEEF guide (`tests/siem_check.py`), OCSF validated against
//! the published OCSF schema (ocsf-json-schema + jsonschema); then every mapped field is
//! compared with the event it came from. CEF also goes through a real rsyslog over RELP
//! with its syslog header.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kube_audit_relay::config::Framing;
use support::receivers::Receiver;
use support::{CorpusEvent, Relay, Sink, all_corpus_events, eventlist, post_ok};

fn checker() -> Option<String> {
    let python = std::env::var("KAR_CHECK_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import pycef, ocsf_json_schema, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        support::missing_receiver("python with pycef, ocsf-json-schema and jsonschema");
        None
    }
}

/// Runs `siem_check.py MODE` on the messages (one per line); its stdout lines.
fn check(python: &str, mode: &str, messages: &[Vec<u8>]) -> Vec<String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut text = Vec::new();
    for m in messages {
        assert!(!m.contains(&b'\n'), "a message holds a line break");
        text.extend_from_slice(m);
        text.push(b'\n');
    }
    std::fs::write(file.path(), text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/siem_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(mode)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "siem_check {mode}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn config(sinks: &[(&str, &str, u16, &str)]) -> String {
    let mut text = String::from(
        "cluster_name = \"formats\"\n[listen]\naddress = \"127.0.0.1:0\"\n[syslog]\nmax_message_bytes = \"1MiB\"\n[queue]\nkind = \"memory\"\n",
    );
    for (name, format, port, extra) in sinks {
        text.push_str(&format!(
            "[[destination]]\nname = \"{name}\"\nurl = \"tcp://127.0.0.1:{port}\"\nformat = \"{format}\"\nconfirm_after = \"20ms\"\n{extra}\n"
        ));
    }
    text
}

async fn deliver(events: &[CorpusEvent], relay: &Relay) {
    for chunk in events.chunks(25) {
        post_ok(relay.addr, eventlist(chunk)).await;
    }
}

/// Expected values, from the corpus event itself.
struct Want<'a> {
    e: &'a CorpusEvent,
}

impl Want<'_> {
    fn str(&self, pointer: &str) -> Option<String> {
        self.e
            .value
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }
    fn verb(&self) -> String {
        self.str("/verb").unwrap_or_else(|| "-".into())
    }
    fn target(&self) -> String {
        match (
            self.str("/objectRef/resource"),
            self.str("/objectRef/subresource"),
        ) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r,
            _ => self
                .str("/requestURI")
                .map(|u| u.split('?').next().unwrap().to_owned())
                .unwrap_or_else(|| "-".into()),
        }
    }
    fn code(&self) -> Option<i64> {
        self.e
            .value
            .pointer("/responseStatus/code")
            .and_then(|v| v.as_i64())
    }
    fn time_millis(&self) -> Option<i64> {
        ["/stageTimestamp", "/requestReceivedTimestamp", "/timestamp"]
            .iter()
            .find_map(|p| self.str(p))
            .and_then(|t| kube_audit_relay::syslog::timestamp::unix_millis(&t))
    }
    fn cef_severity(&self) -> u8 {
        match self.e.expected_severity() {
            2 => 10,
            3 => 8,
            4 => 6,
            5 => 4,
            _ => 2,
        }
    }
}

fn by_audit_key(events: &[CorpusEvent]) -> HashMap<(String, String), &CorpusEvent> {
    events
        .iter()
        .map(|e| ((e.audit_id.clone(), e.stage.clone()), e))
        .collect()
}

/// CEF extension values as pycef returns them: still escaped (`\=`, `\\`).
fn cef_unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_leef_and_ocsf_of_the_corpus_pass_independent_parsers_field_by_field() {
    let Some(python) = checker() else { return };
    let (cef, leef, ocsf) = (
        Sink::start(Framing::Octet, None).await,
        Sink::start(Framing::Octet, None).await,
        Sink::start(Framing::Octet, None).await,
    );
    let relay = Relay::start(&config(&[
        ("cef", "cef", cef.addr.port(), ""),
        ("leef", "leef", leef.addr.port(), ""),
        ("ocsf", "ocsf", ocsf.addr.port(), ""),
    ]))
    .await;
    let events = all_corpus_events();
    deliver(&events, &relay).await;
    let n = events.len();
    let (cef_msgs, leef_msgs, ocsf_msgs) = (
        cef.wait_for(n, Duration::from_secs(20)).await,
        leef.wait_for(n, Duration::from_secs(20)).await,
        ocsf.wait_for(n, Duration::from_secs(20)).await,
    );
    assert_eq!(
        (cef_msgs.len(), leef_msgs.len(), ocsf_msgs.len()),
        (n, n, n)
    );
    let index = by_audit_key(&events);

    // CEF, with the syslog header by default: pycef reads it; every field as mapped.
    for m in &cef_msgs {
        assert!(
            m.starts_with(b"<"),
            "CEF carries its syslog header by default"
        );
        let text = String::from_utf8(m.clone()).unwrap();
        let cef_at = text.find(" CEF:0|").unwrap();
        assert!(
            text[..cef_at].contains(" formats kube-apiserver - "),
            "{}",
            &text[..cef_at]
        );
    }
    for line in check(&python, "cef", &cef_msgs) {
        let v: HashMap<String, String> = serde_json::from_str(&line).unwrap();
        let key = (cef_unescape(&v["auditID"]), cef_unescape(&v["stage"]));
        let want = Want { e: index[&key] };
        assert_eq!(v["CEFVersion"], "0");
        assert_eq!(v["DeviceVendor"], "Kubernetes");
        assert_eq!(v["DeviceProduct"], "kube-apiserver");
        assert_eq!(v["DeviceVersion"], "audit.k8s.io/v1");
        assert_eq!(
            v["DeviceEventClassID"],
            format!("{}:{}", want.verb(), want.target())
        );
        assert_eq!(v["Severity"], want.cef_severity().to_string(), "{line}");
        assert_eq!(cef_unescape(&v["act"]), want.verb());
        assert_eq!(
            cef_unescape(v.get("suser").map_or("", String::as_str)),
            want.str("/user/username").unwrap_or_default()
        );
        if let Some(ip) = want.str("/sourceIPs/0") {
            let field = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => "src",
                Ok(std::net::IpAddr::V6(_)) => "sourceIPv6",
                Err(_) => "shost",
            };
            assert_eq!(v.get(field), Some(&ip), "{line}");
        }
        assert_eq!(v.get("rt").and_then(|t| t.parse().ok()), want.time_millis());
        assert_eq!(
            v.get("request").map(|r| cef_unescape(r)),
            want.str("/requestURI")
        );
        assert_eq!(
            v.get("namespace").map(|r| cef_unescape(r)),
            want.str("/objectRef/namespace")
        );
        assert_eq!(
            v.get("resource").map(|r| cef_unescape(r)),
            want.str("/objectRef/resource")
        );
        assert_eq!(
            v.get("responseCode").and_then(|c| c.parse().ok()),
            want.code()
        );
        if let Some(code) = want.code() {
            assert_eq!(v["outcome"], if code < 400 { "success" } else { "failure" });
        }
        assert_eq!(
            cef_unescape(&v["event"]),
            want.e.expected_msg(),
            "the whole event, byte-exact"
        );
    }

    // LEEF 2.0 with its declared delimiter.
    for line in check(&python, "leef", &leef_msgs) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let a = &v["attributes"];
        let s = |k: &str| a[k].as_str().map(str::to_owned);
        let want = Want {
            e: index[&(s("auditID").unwrap(), s("stage").unwrap())],
        };
        assert_eq!(v["vendor"], "Kubernetes");
        assert_eq!(v["product"], "kube-apiserver");
        assert_eq!(v["delimiter"], "\t");
        assert_eq!(
            v["event_id"].as_str().unwrap(),
            format!("{}:{}", want.verb(), want.target())
        );
        assert!(
            v["syslog"].as_str().unwrap().starts_with('<'),
            "LEEF carries its syslog header by default"
        );
        assert_eq!(
            s("usrName").unwrap_or_default(),
            want.str("/user/username").unwrap_or_default()
        );
        let ip = want.str("/sourceIPs/0");
        let valid = ip
            .as_deref()
            .is_some_and(|i| i.parse::<std::net::IpAddr>().is_ok());
        assert_eq!(s(if valid { "src" } else { "srcHostName" }), ip);
        assert_eq!(s("verb").unwrap(), want.verb());
        assert_eq!(s("cat").unwrap(), want.target());
        assert_eq!(s("sev").unwrap(), want.cef_severity().to_string());
        assert_eq!(s("namespace"), want.str("/objectRef/namespace"));
        assert_eq!(s("responseCode").and_then(|c| c.parse().ok()), want.code());
        assert_eq!(
            s("devTimeFormat").as_deref(),
            want.time_millis().map(|_| "yyyy-MM-dd'T'HH:mm:ss.SSSX")
        );
        if let Some(ms) = want.time_millis() {
            let dev = s("devTime").unwrap();
            let back = kube_audit_relay::syslog::timestamp::unix_millis(&dev).unwrap();
            assert_eq!(back, ms, "{dev}");
        }
        assert_eq!(
            s("event").unwrap(),
            want.e.expected_msg(),
            "the whole event, byte-exact"
        );
    }

    // OCSF: valid against the published schema (1.1.0 and 1.8.0), then field by field.
    let ok = check(&python, "ocsf", &ocsf_msgs);
    assert_eq!(ok, vec![format!("ok {n}")]);
    for m in &ocsf_msgs {
        assert!(
            m.starts_with(b"{"),
            "OCSF goes without a syslog header by default"
        );
        let v: serde_json::Value = serde_json::from_slice(m).unwrap();
        let raw: serde_json::Value = serde_json::from_str(v["raw_data"].as_str().unwrap()).unwrap();
        let want = Want {
            e: index[&(
                raw["auditID"].as_str().unwrap().to_owned(),
                raw["stage"].as_str().unwrap().to_owned(),
            )],
        };
        if want.e.expected_msg().chars().count() <= 65_535 {
            assert_eq!(v["raw_data"].as_str().unwrap(), want.e.expected_msg());
        } else {
            // Above OCSF 1.1.0's raw_data limit: the apiserver's truncation rule.
            assert_eq!(raw["annotations"]["audit.k8s.io/truncated"], "true");
            assert!(raw.get("responseObject").is_none() && raw.get("requestObject").is_none());
        }
        assert_eq!(v["class_uid"], 6003);
        assert_eq!(v["category_uid"], 6);
        let activity = match want.verb().as_str() {
            "create" => 1,
            "get" | "list" | "watch" => 2,
            "update" | "patch" => 3,
            "delete" | "deletecollection" => 4,
            "-" => 0,
            _ => 99,
        };
        assert_eq!(v["activity_id"], activity);
        assert_eq!(v["type_uid"], 600_300 + activity);
        assert_eq!(v["api"]["operation"].as_str().unwrap(), want.verb());
        assert_eq!(
            v["api"]["request"]["uid"].as_str().unwrap(),
            want.e.audit_id
        );
        assert_eq!(v["metadata"]["uid"].as_str().unwrap(), want.e.audit_id);
        assert_eq!(v["metadata"]["product"]["vendor_name"], "Kubernetes");
        assert_eq!(v["time"].as_i64(), Some(want.time_millis().unwrap_or(0)));
        assert_eq!(
            v["actor"]["user"]["name"].as_str().map(str::to_owned),
            want.str("/user/username").filter(|u| !u.is_empty())
        );
        let ip = want.str("/sourceIPs/0");
        let valid = ip
            .as_deref()
            .is_some_and(|i| i.parse::<std::net::IpAddr>().is_ok());
        let field = if valid { "ip" } else { "name" };
        assert_eq!(v["src_endpoint"][field].as_str().map(str::to_owned), ip);
        assert_eq!(
            v["status_code"].as_str().map(str::to_owned),
            want.code().map(|c| c.to_string())
        );
        let status = match want.code() {
            Some(c) if c < 400 => 1,
            Some(_) => 2,
            None => 0,
        };
        assert_eq!(v["status_id"], status);
        if let Some(res) = want.str("/objectRef/resource") {
            assert_eq!(
                v["resources"][0]["namespace"].as_str().map(str::to_owned),
                want.str("/objectRef/namespace")
            );
            assert!(
                v["resources"][0]["type"]
                    .as_str()
                    .unwrap()
                    .starts_with(&res)
            );
        }
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_over_relp_reaches_a_real_rsyslog_with_its_syslog_header() {
    let Some(python) = checker() else { return };
    let Some(receiver) = Receiver::rsyslog_relp().await else {
        return;
    };
    let relay = Relay::start(&format!(
        "cluster_name = \"formats\"\n[listen]\naddress = \"127.0.0.1:0\"\n[syslog]\nmax_message_bytes = \"1MiB\"\n[queue]\nkind = \"memory\"\n\
         [[destination]]\nname = \"arcsight\"\nurl = \"relp://127.0.0.1:{}\"\nformat = \"cef\"\n",
        receiver.port("relp")
    ))
    .await;
    let events: Vec<CorpusEvent> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < 6000)
        .take(40)
        .collect();
    deliver(&events, &relay).await;
    let got = receiver
        .wait_for(events.len(), Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), events.len());
    for m in &got {
        assert_eq!(m.hostname, "formats");
        assert_eq!(m.appname, "kube-apiserver");
        assert!(
            m.msg.starts_with("CEF:0|Kubernetes|kube-apiserver|"),
            "{}",
            m.msg
        );
    }
    let lines: Vec<Vec<u8>> = got.iter().map(|m| m.msg.clone().into_bytes()).collect();
    let parsed = check(&python, "cef", &lines);
    let index = by_audit_key(&events);
    for line in parsed {
        let v: HashMap<String, String> = serde_json::from_str(&line).unwrap();
        let e = index[&(cef_unescape(&v["auditID"]), cef_unescape(&v["stage"]))];
        assert_eq!(cef_unescape(&v["event"]), e.expected_msg());
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

/// LEEF and OCSF over mutual TLS with LF framing, each with its default header flipped:
/// the transport carries the format unchanged, and the independent parsers still agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leef_and_ocsf_over_mutual_tls_with_lf_framing_and_flipped_headers() {
    let Some(python) = checker() else { return };
    let tls = Some(("server.crt", "server.key", Some("ca.crt")));
    let (leef, ocsf) = (
        Sink::start(Framing::Lf, tls).await,
        Sink::start(Framing::Lf, tls).await,
    );
    let mut text = String::from(
        "cluster_name = \"formats\"\n[listen]\naddress = \"127.0.0.1:0\"\n[syslog]\nmax_message_bytes = \"1MiB\"\n[queue]\nkind = \"memory\"\n",
    );
    for (name, port, header) in [
        ("qradar", leef.addr.port(), false),
        ("lake", ocsf.addr.port(), true),
    ] {
        let format = if name == "qradar" { "leef" } else { "ocsf" };
        text.push_str(&format!(
            "[[destination]]\nname = \"{name}\"\nurl = \"tls://127.0.0.1:{port}\"\nformat = \"{format}\"\nsyslog_header = {header}\nframing = \"lf\"\nca = \"{ca}\"\nclient_cert = \"{crt}\"\nclient_key = \"{key}\"\nserver_name = \"localhost\"\nconfirm_after = \"20ms\"\n",
            ca = support::cert("ca.crt"),
            crt = support::cert("client.crt"),
            key = support::cert("client.key"),
        ));
    }
    let relay = Relay::start(&text).await;
    let events: Vec<CorpusEvent> = all_corpus_events()
        .into_iter()
        .filter(|e| e.item.len() < 6000)
        .take(60)
        .collect();
    deliver(&events, &relay).await;
    let n = events.len();
    let leef_msgs = leef.wait_for(n, Duration::from_secs(20)).await;
    let ocsf_msgs = ocsf.wait_for(n, Duration::from_secs(20)).await;
    assert_eq!((leef_msgs.len(), ocsf_msgs.len()), (n, n));
    assert!(leef.errors.lock().unwrap().is_empty(), "{:?}", leef.errors);
    let index = by_audit_key(&events);

    for m in &leef_msgs {
        assert!(
            m.starts_with(b"LEEF:2.0|Kubernetes|kube-apiserver|"),
            "no syslog header asked for"
        );
    }
    let parsed = check(&python, "leef", &leef_msgs);
    assert_eq!(parsed.len(), n);
    for line in parsed {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["syslog"], "", "nothing before the LEEF header");
        let a = &v["attributes"];
        let s = |k: &str| a[k].as_str().map(str::to_owned);
        let want = Want {
            e: index[&(s("auditID").unwrap(), s("stage").unwrap())],
        };
        assert_eq!(
            s("event").unwrap(),
            want.e.expected_msg(),
            "the whole event, byte-exact"
        );
        assert_eq!(
            s("usrName").unwrap_or_default(),
            want.str("/user/username").unwrap_or_default()
        );
    }

    let mut bodies = Vec::new();
    for m in &ocsf_msgs {
        let text = std::str::from_utf8(m).unwrap();
        assert!(text.starts_with('<'), "the syslog header was asked for");
        let at = text.find(" {").unwrap();
        assert!(
            text[..at].contains(" formats kube-apiserver - "),
            "{}",
            &text[..at]
        );
        bodies.push(text.as_bytes()[at + 1..].to_vec());
    }
    assert_eq!(check(&python, "ocsf", &bodies), vec![format!("ok {n}")]);
    for b in &bodies {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let raw = v["raw_data"].as_str().unwrap();
        let e: serde_json::Value = serde_json::from_str(raw).unwrap();
        let want = index[&(
            e["auditID"].as_str().unwrap().to_owned(),
            e["stage"].as_str().unwrap().to_owned(),
        )];
        assert_eq!(raw, want.expected_msg());
        assert_eq!(v["api"]["request"]["uid"], e["auditID"]);
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

#[test]
fn siem_formats_are_refused_on_http_and_syslog_header_only_goes_with_them() {
    let parse = |text: &str| {
        kube_audit_relay::config::Config::parse(text, Path::new("relay.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let err = parse(
        "[[destination]]\nname = \"a\"\nurl = \"https://siem.example/in\"\nformat = \"ocsf\"\n",
    )
    .unwrap();
    assert!(err.contains("destination[0].format"), "{err}");
    let err = parse(
        "[[destination]]\nname = \"a\"\nurl = \"tcp://127.0.0.1:514\"\nsyslog_header = false\n",
    )
    .unwrap();
    assert!(err.contains("destination[0].syslog_header"), "{err}");
    assert!(parse("[[destination]]\nname = \"a\"\nurl = \"tcp://127.0.0.1:514\"\nformat = \"leef\"\nsyslog_header = false\n").is_none());
}
