//! The command line: config checking with precise errors, the example config, `gen-certs`,
//! `webhook-config`, and `run` on its built-in default (README command one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kube_audit_relay::config::{ClientAuth, Config, Endpoint, Framing, QueueKind};
use support::{ClientOptions, cert, post_batch, wait_until};

/// The example's paths are relative to the repository root; make them absolute here rather
/// than change the (shared) working directory of the test process.
fn example_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    std::fs::read_to_string(&path).unwrap().replace(
        "\"certs/",
        &format!("\"{}/certs/", env!("CARGO_MANIFEST_DIR")),
    )
}

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
}

#[test]
fn example_config_parses_with_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::parse(&example_text(), &path).unwrap();
    assert_eq!(
        config.cluster_name.as_ref().map(|n| n.as_str()),
        Some("prod-eu-1")
    );
    assert_eq!(config.listen.client_auth, ClientAuth::Required);
    assert_eq!(config.listen.max_body_bytes.0, 64 << 20);
    assert_eq!(config.listen.request_timeout, Duration::from_secs(25));
    assert_eq!(config.queue.kind, QueueKind::Disk);
    assert_eq!(config.destinations.len(), 1);
    let d = &config.destinations[0];
    assert_eq!(d.framing, Framing::Octet);
    assert_eq!(d.confirm_after, Duration::from_millis(500));
    assert!(matches!(d.url, Endpoint::Network { port: 6514, .. }));
    // Every key the effective configuration has (every struct, every default) appears in the
    // example, with its default documented next to it.
    let effective = config.to_toml().unwrap();
    for key in effective
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
    {
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
            "{key} undocumented in config.example.toml"
        );
    }
    for key in [
        "address",
        "path",
        "tls_cert",
        "tls_key",
        "client_ca",
        "client_auth",
        "max_body_bytes",
        "max_rendering_bytes",
        "max_header_bytes",
        "max_connections",
        "max_streams_per_connection",
        "http2_max_frame_size",
        "tls_handshake_timeout",
        "header_read_timeout",
        "request_timeout",
        "retry_after_seconds",
        "facility",
        "app_name",
        "enterprise_id",
        "bom",
        "max_message_bytes",
        "kind",
        "data_dir",
        "max_bytes",
        "segment_bytes",
        "max_entries",
        "drain_timeout",
        "name",
        "url",
        "ca",
        "client_cert",
        "client_key",
        "server_name",
        "framing",
        "connect_timeout",
        "write_timeout",
        "backoff_initial",
        "backoff_max",
        "confirm_after",
        "batch_bytes",
        "token_file",
        "tls_reload_interval",
        "when_full",
        "format",
        "max_datagram_bytes",
        "pin_sha256",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
            "{key} undocumented"
        );
    }
}

#[test]
fn check_config_reports_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let cases = [
        (
            "[listen]\naddres = \"127.0.0.1:1\"\n",
            "key `listen.addres`",
            "unknown field `addres`, expected one of `address`",
        ),
        (
            "[listen]\naddress = \"127.0.0.1:1\"\nmax_body_bytes = true\n",
            "key `listen.max_body_bytes`",
            "(line 3)",
        ),
        (
            "[listen]\naddress = \"localhost\"\n",
            "key `listen.address`",
            "invalid socket address",
        ),
        (
            "[listen]\nclient_auth = \"sometimes\"\n",
            "key `listen.client_auth`",
            "unknown variant `sometimes`",
        ),
        (
            "[listen]\nrequest_timeout = \"45s\"\n",
            "key `listen.request_timeout`",
            "below 30s",
        ),
        (
            "[listen]\nhttp2_max_frame_size = \"8KiB\"\n",
            "key `listen.http2_max_frame_size`",
            "must be between 16384 and 16777215 bytes",
        ),
        (
            "[listen]\ntls_cert = \"/nonexistent.crt\"\ntls_key = \"/nonexistent.key\"\n",
            "key `listen.tls_cert`",
            "/nonexistent.crt",
        ),
        (
            "[[destination]]\nname = \"a\"\nurl = \"tls://h\"\n",
            "key `destination[0].url`",
            "has no port",
        ),
        (
            "[[destination]]\nname = \"a\"\nurl = \"tcp://h:1\"\nframing = \"cr\"\n",
            "key `destination[0].framing`",
            "unknown variant `cr`",
        ),
        (
            "[syslog]\nfacility = 24\n",
            "key `syslog.facility`",
            "not a facility",
        ),
        (
            "[queue]\nmax_bytes = \"1TiB\"\n",
            "key `queue.max_bytes`",
            "unknown size unit",
        ),
    ];
    for (text, key, reason) in cases {
        std::fs::write(&file, text).unwrap();
        let out = relay().arg("check-config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "{text}: {stderr}"
        );
        assert!(stderr.contains(key), "{text}: want {key}: {stderr}");
        assert!(stderr.contains(reason), "{text}: want {reason}: {stderr}");
    }
    // `run` refuses the same way at start-up, before binding anything.
    std::fs::write(&file, "[listen]\naddres = \"x\"\n").unwrap();
    let out = relay()
        .arg("run")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `addres`"));
}

#[test]
fn gen_certs_writes_a_working_pki() {
    let dir = tempfile::tempdir().unwrap();
    let status = relay().arg("gen-certs").arg(dir.path()).status().unwrap();
    assert!(status.success());
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.path().join("server.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The generated files work as a listener configuration.
    let toml = format!(
        "[listen]\ntls_cert = \"{0}/server.crt\"\ntls_key = \"{0}/server.key\"\nclient_ca = \"{0}/ca.crt\"\n",
        dir.path().display()
    );
    let config = Config::parse(&toml, Path::new("gen.toml")).unwrap();
    let files = kube_audit_relay::tls::ServerTlsFiles::of(&config.listen).unwrap();
    assert_eq!(files.client_auth, ClientAuth::Required);
    kube_audit_relay::tls::server_config(&files).unwrap();
}

#[test]
fn check_config_prints_the_effective_configuration_as_toml_that_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, example_text()).unwrap();
    let out = relay().arg("check-config").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (first, effective) = stdout.split_once('\n').unwrap();
    assert_eq!(first, format!("{}: OK", file.display()));
    assert!(
        !stdout.contains("ByteSize(") && !stdout.contains("Some("),
        "{stdout}"
    );
    // Sizes and durations as a person writes them, every default filled in.
    for line in [
        "max_body_bytes = \"64MiB\"",
        "request_timeout = \"25s\"",
        "confirm_after = \"500ms\"",
        "client_auth = \"required\"",
        "tls_handshake_timeout = \"5s\"",
        "max_entries = 100000",
        "url = \"tls://127.0.0.1:6514\"",
    ] {
        assert!(
            effective.lines().any(|l| l == line),
            "{line} missing:\n{effective}"
        );
    }
    // It is a valid configuration, and the same one.
    let (comment, toml_text) = effective.split_once('\n').unwrap();
    assert!(comment.starts_with("# "), "{comment}");
    let reparsed = Config::parse(effective, Path::new("effective.toml")).unwrap();
    assert_eq!(reparsed.to_toml().unwrap().trim_end(), toml_text.trim_end());
}

#[test]
fn webhook_config_inlines_certificates() {
    let out = relay()
        .args(["webhook-config", "--url", "https://relay.example:8443/"])
        .args([
            "--ca",
            &cert("ca.crt"),
            "--client-cert",
            &cert("client.crt"),
            "--client-key",
            &cert("client.key"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("server: \"https://relay.example:8443/\""),
        "{text}"
    );
    use base64::Engine;
    let decode = |key: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap();
        let b64 = line.split_once(": ").unwrap().1;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    assert_eq!(
        decode("certificate-authority-data"),
        std::fs::read(cert("ca.crt")).unwrap()
    );
    assert_eq!(
        decode("client-certificate-data"),
        std::fs::read(cert("client.crt")).unwrap()
    );
    assert_eq!(
        decode("client-key-data"),
        std::fs::read(cert("client.key")).unwrap()
    );
    assert!(text.contains("current-context: default"));
}

/// README command one: `run` with no config serves plain HTTP on 127.0.0.1:8080 and prints
/// events on stdout. Skipped (outside CI) if something else already holds port 8080 or 9090.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_config_prints_events_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .arg("run")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = "127.0.0.1:8080".parse().unwrap();
    let mut exited = None;
    let up = wait_until(Duration::from_secs(10), || {
        exited = child.try_wait().unwrap();
        exited.is_some() || std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    if let Some(status) = exited {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot listen on") && !support::interop_required(),
            "the built-in default did not start ({status}): {stderr}"
        );
        eprintln!("SKIPPED: {stderr}");
        return;
    }
    assert!(up);
    let body = std::fs::read(support::data_file(
        "real-apiserver-v1.20.2-metadata-001.json",
    ))
    .unwrap();
    let r = post_batch(addr, &ClientOptions::default(), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    support::signal(child.id(), "TERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit 0 after SIGTERM");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().next().unwrap();
    let m = kube_audit_relay::syslog::parse_strict(line.as_bytes()).unwrap();
    assert_eq!(m.msgid, "RequestReceived");
    assert!(
        std::str::from_utf8(m.msg)
            .unwrap()
            .starts_with(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata""#)
    );
    // The default is durable too: the disk queue in ./data, private to the relay's user.
    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("data");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        std::fs::read_dir(&data).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".seg"))
    );
    assert!(
        data.join("cursor-stdout").exists(),
        "the cursor is persisted at shutdown"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "[listen]\naddress = \"127.0.0.1:0\"\n[queue]\nkind = \"memory\"\n[admin]\naddress = \"off\"\n").unwrap();
    let mut child = relay()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["fields"]["message"], "webhook listener ready");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}
