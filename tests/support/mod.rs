//! Test harness, one concern per file: the relay ([`relay`]: in-process on port 0, or the
//! real binary where the process boundary is the point), an HTTP(S) client ([`client`]), the
//! corpus ([`corpus`]), a frame-collecting sink ([`sink`]), record checks ([`check`]), real
//! rsyslog / syslog-ng receivers ([`receivers`]) and a webhook load ([`load`]). Everything
//! runs on loopback; every process started here is stopped by its pid when dropped.

#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

pub mod check;
pub mod client;
pub mod corpus;
pub mod interop;
pub mod load;
pub mod ports;
pub mod receivers;
pub mod relay;
pub mod sink;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use check::{assert_same, audit_id_of, check_message};
pub use client::{ClientOptions, HttpResponse, client, client_tls_config, post_batch, post_ok};
pub use corpus::{CorpusEvent, all_corpus_events, captured_items, eventlist, small_events};
pub use relay::{Relay, RelayProcess};
pub use sink::Sink;

/// The checked-in dev certificates.
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

pub fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

pub fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Whether interop tests must find their receivers (CI and the test script) or may skip.
pub fn interop_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var("KAR_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Skips (by hand) or fails (CI) when a receiver is missing.
pub fn missing_receiver(what: &str) {
    if interop_required() {
        panic!(
            "{what} not found, and interop tests are required here (CI or KAR_REQUIRE_INTEROP=1); run scripts/test.sh"
        );
    }
    eprintln!("SKIPPED: {what} not found; run scripts/test.sh to install the test receivers");
}

/// Waits until `done()` holds, checking every 10 ms, for at most `timeout`. Returns whether
/// it held. For async tests: the wait yields to the runtime.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`], for a condition that needs to await (a metrics scrape).
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking wait for synchronous tests and threads (never inside an async test).
pub fn wait_until_blocking(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}
