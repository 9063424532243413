//! Every refusal reaches the client, whatever the body: 400, 401, 404, 405, 413 and 415 with
//! bodies of 0 B, 35 KB, 1 MB and above the limit, over HTTP/1.1 and HTTP/2, sent by curl
//! and by the project's own client. An HTTP/2 client (and an HTTP/1.1 client that does not
//! wait for `100 Continue`) is still sending when the answer leaves; the relay must not make
//! it lose the answer by resetting the stream or the connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{ClientOptions, Relay, cert, client};

const LIMIT: usize = 2 << 20;
const TOKEN: &str = "s3cret";

/// One way to get each refusal, with a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    BadBatch,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::BadBatch,
        Case::Unauthorized,
        Case::NotFound,
        Case::MethodNotAllowed,
        Case::UnsupportedMediaType,
    ];

    /// (method, path, content type, authorized)
    fn request(self) -> (&'static str, &'static str, &'static str, bool) {
        match self {
            Case::BadBatch => ("POST", "/audit", "application/json", true),
            Case::Unauthorized => ("POST", "/audit", "application/json", false),
            Case::NotFound => ("POST", "/other", "application/json", true),
            Case::MethodNotAllowed => ("PUT", "/audit", "application/json", true),
            Case::UnsupportedMediaType => ("POST", "/audit", "text/plain", true),
        }
    }

    /// The status for a body of `size` bytes: checks come in the order path, method, token,
    /// type, size, content.
    fn expected(self, size: usize) -> u16 {
        match self {
            Case::NotFound => 404,
            Case::MethodNotAllowed => 405,
            Case::Unauthorized => 401,
            Case::UnsupportedMediaType => 415,
            Case::BadBatch if size > LIMIT => 413,
            Case::BadBatch => 400,
        }
    }
}

const SIZES: [usize; 4] = [0, 35_000, 1 << 20, LIMIT + (1 << 20)];

async fn relay(discard: &str) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let relay = Relay::start(&format!(
        r#"[listen]
address = "127.0.0.1:0"
path = "/audit"
tls_cert = "{crt}"
tls_key = "{key}"
max_body_bytes = {LIMIT}
token_file = "{token}"
{discard}
[queue]
kind = "memory"
[[destination]]
name = "s"
url = "stdout"
"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        token = token.display(),
    ))
    .await;
    (relay, dir)
}

/// Bodies that are not EventLists, of every size.
fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b"not json "[i % 9]).collect()
}

/// The status curl received, or 0 when it received none.
fn curl(addr: std::net::SocketAddr, case: Case, file: &Path, http2: bool) -> u16 {
    let (method, path, ct, authorized) = case.request();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
    ])
    .arg("--cacert")
    .arg(cert("ca.crt"))
    .arg(if http2 { "--http2" } else { "--http1.1" })
    .args(["-X", method, "-H", &format!("Content-Type: {ct}")])
    .arg("--data-binary")
    .arg(format!("@{}", file.display()));
    if authorized {
        cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    let out = cmd
        .arg(format!(
            "https://localhost:{}{path}?timeout=30s",
            addr.port()
        ))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn ours(addr: std::net::SocketAddr, case: Case, body: Vec<u8>, http2: bool) -> u16 {
    let (method, path, ct, authorized) = case.request();
    let mut call = client(addr)
        .options(&ClientOptions::https(None, http2))
        .method(method, path)
        .content_type(ct)
        .body(body);
    if authorized {
        call = call.header("authorization", &format!("Bearer {TOKEN}"));
    }
    call.send().await.map_or(0, |r| r.status)
}

fn have_curl() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    assert!(found || !support::interop_required(), "curl is needed here");
    found
}

/// Runs every case, `tries` times each, and lists what did not get its status.
async fn missed(relay: &Relay, tries: usize) -> Vec<String> {
    let files = tempfile::tempdir().unwrap();
    let mut missed = Vec::new();
    for size in SIZES {
        let file = files.path().join(format!("body-{size}"));
        std::fs::write(&file, body(size)).unwrap();
        for case in Case::ALL {
            let want = case.expected(size);
            for http2 in [false, true] {
                for _ in 0..tries {
                    let got = ours(relay.addr, case, body(size), http2).await;
                    if got != want {
                        missed.push(format!("ours {case:?} {size} B http2={http2}: {got}"));
                    }
                    let (addr, f) = (relay.addr, file.clone());
                    let got = tokio::task::spawn_blocking(move || curl(addr, case, &f, http2))
                        .await
                        .unwrap();
                    if got != want {
                        missed.push(format!("curl {case:?} {size} B http2={http2}: {got}"));
                    }
                }
            }
        }
    }
    missed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_reaches_the_client_whatever_the_body() {
    if !have_curl() {
        return;
    }
    let (relay, _dir) = relay("").await;
    let missed = missed(&relay, 3).await;
    assert!(missed.is_empty(), "answers lost:\n{}", missed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_client_when_the_body_is_beyond_the_discard_bound() {
    if !have_curl() {
        return;
    }
    // Only 64 KiB of a refused body is read: past it, the relay resets the HTTP/2 stream or
    // closes the HTTP/1.1 connection (lingering), and the answer must survive that too.
    let (relay, _dir) = relay("discard_body_bytes = \"64KiB\"").await;
    let missed = missed(&relay, 2).await;
    assert!(missed.is_empty(), "answers lost:\n{}", missed.join("\n"));
}
