//! The relay under test. [`Relay`] runs it inside the test process, on its own runtime (as
//! `main` would), on port-0 listeners whose addresses come back as values, with its log lines
//! captured. [`RelayProcess`] runs the real binary, for the tests where the process boundary
//! is the point: `kill -9`, signals, peak memory of the relay alone, exit codes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_audit_relay::config::Config;
use kube_audit_relay::metrics::Metrics;
use kube_audit_relay::{App, Listeners};
use tokio_util::sync::CancellationToken;

use super::client::client;
use super::wait_until;

/// Captured log lines.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn has(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub async fn wait(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.has(needle)).await
    }
}

/// A `tracing` writer appending each line to [`Logs`].
struct LogWriter(Logs, Vec<u8>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.1).lines() {
            self.0.push(line.to_owned());
        }
    }
}

fn dispatch(logs: &Logs) -> tracing::Dispatch {
    let logs = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,kube_audit_relay=debug",
        ))
        .with_ansi(false)
        .with_writer(move || LogWriter(logs.clone(), Vec::new()))
        .finish();
    tracing::Dispatch::new(subscriber)
}

thread_local! {
    static LOG_GUARD: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// Test configs name the admin listener only when they care; any free port otherwise.
fn with_admin(config: &str) -> String {
    if config.contains("[admin]") {
        config.to_owned()
    } else {
        format!("{config}\n[admin]\naddress = \"127.0.0.1:0\"\n")
    }
}

/// Relative queue directories are relative to the relay's directory, as for the binary
/// started there.
fn prepare(config: &str, dir: &Path) -> Result<Config, String> {
    let mut config =
        Config::parse(&with_admin(config), Path::new("relay.toml")).map_err(|e| e.to_string())?;
    if config.queue.data_dir.is_relative() {
        config.queue.data_dir = dir.join(&config.queue.data_dir);
    }
    Ok(config)
}

/// The relay running inside the test process.
pub struct Relay {
    pub addr: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<SocketAddr>,
    pub logs: Logs,
    pub dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Ends serving at once, without the drain (like a crash, but in-process).
    abort: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Fires when `serve` returned (the drain is over).
    served: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Relay {
    /// Starts the relay with `config` (TOML); `listen.address` should use port 0.
    pub async fn start(config: &str) -> Relay {
        Self::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// Starts the relay in an existing directory (to restart on the same queue).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Relay {
        match Self::try_start_in(dir, config).await {
            Ok(relay) => relay,
            Err((e, logs)) => panic!("relay did not start: {e}\nlogs:\n{}", logs.all()),
        }
    }

    /// Starts the relay, or returns why it did not.
    pub async fn try_start(config: &str) -> Result<Relay, String> {
        Self::try_start_in(tempfile::tempdir().unwrap(), config)
            .await
            .map_err(|(e, _)| e)
    }

    async fn try_start_in(dir: tempfile::TempDir, config: &str) -> Result<Relay, (String, Logs)> {
        let logs = Logs::default();
        let config = prepare(config, dir.path()).map_err(|e| (e, logs.clone()))?;
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let dispatch = dispatch(&logs);
        let thread_dispatch = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&thread_dispatch);
                LOG_GUARD.with(|g| *g.borrow_mut() = Some(guard));
            })
            .build()
            .unwrap();
        let (serve_shutdown, serve_abort) = (shutdown.clone(), abort.clone());
        let (served_tx, served_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                runtime.block_on(async move {
                    let built = async {
                        let listeners = Listeners::bind(&config).await?;
                        App::build(config, listeners).await
                    }
                    .await;
                    let app = match built {
                        Ok(app) => app,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ =
                        ready_tx.send(Ok((app.webhook_addr(), app.admin_addr(), app.metrics())));
                    tokio::select! {
                        () = app.serve(serve_shutdown) => {}
                        () = serve_abort.cancelled() => {}
                    }
                    let _ = served_tx.send(());
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            });
        });
        match ready_rx.await {
            Ok(Ok((addr, admin, metrics))) => Ok(Relay {
                addr,
                admin,
                logs,
                dir,
                metrics,
                shutdown,
                abort,
                thread: Some(thread),
                served: Some(served_rx),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err((e, logs))
            }
            Err(_) => {
                let _ = thread.join();
                Err(("the relay thread ended before it was ready".into(), logs))
            }
        }
    }

    /// The relay's metrics as the admin listener serves them, parsed into
    /// `name{labels} -> value`.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        scrape(self.admin.expect("admin listener")).await
    }

    /// Waits until metric `key` has `value`; returns the last scrape.
    pub async fn wait_metric(
        &self,
        key: &str,
        value: f64,
        timeout: Duration,
    ) -> HashMap<String, f64> {
        wait_metric(self.admin.expect("admin listener"), key, value, timeout).await
    }

    /// Waits until `done` holds for the metrics; returns the last scrape.
    pub async fn wait_metrics(
        &self,
        timeout: Duration,
        done: impl Fn(&HashMap<String, f64>) -> bool,
    ) -> HashMap<String, f64> {
        wait_metrics(self.admin.expect("admin listener"), timeout, done).await
    }

    /// The relay's metrics registry, for direct reads.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn logs(&self) -> String {
        self.logs.all()
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.logs.has(needle)
    }

    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.logs.wait(needle, timeout).await
    }

    /// Fires the shutdown token (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Fires the shutdown token and waits for the drain to finish; `false` on timeout.
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        let served = self.served.take().unwrap();
        tokio::time::timeout(timeout, served).await.is_ok()
    }

    /// Hands the directory over after stopping at once, for a restart on the same queue.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.stop_now();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn stop_now(&mut self) {
        self.abort.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Scrapes `admin` until metric `key` has `value` (or the timeout); returns the last scrape.
pub async fn wait_metric(
    admin: SocketAddr,
    key: &str,
    value: f64,
    timeout: Duration,
) -> HashMap<String, f64> {
    wait_metrics(admin, timeout, |m| m.get(key) == Some(&value)).await
}

/// Scrapes `admin` until `done` holds for the metrics (or the timeout); returns the last scrape.
pub async fn wait_metrics(
    admin: SocketAddr,
    timeout: Duration,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let m = scrape(admin).await;
        if done(&m) || tokio::time::Instant::now() >= end {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/metrics` of an admin listener, parsed into `name{labels} -> value`.
pub async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let r = client(admin).get("/metrics").send().await.unwrap();
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        })
        .collect()
}

/// The real `kube-audit-relay run --config FILE`.
pub struct RelayProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub logs: Logs,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl RelayProcess {
    /// Starts the binary with `config` (TOML) in a new directory; the bound address is read
    /// from its readiness log line.
    pub async fn start(config: &str) -> RelayProcess {
        Self::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// Starts the binary in an existing directory (to restart on the same queue).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> RelayProcess {
        Self::start_with_env(dir, config, &[]).await
    }

    /// Like [`RelayProcess::start_in`], with these environment variables set.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, with_admin(config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
            .args(["run", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info,kube_audit_relay=debug")
            // The test decides what the relay sees of glibc's tunables.
            .env_remove("GLIBC_TUNABLES")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Logs::default();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.push(format!("STDOUT {line}"));
            }
        });
        let address_of = |needle: &str| {
            logs.find(needle).and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            })
        };
        let ready = wait_until(Duration::from_secs(20), || {
            address_of("webhook listener ready").is_some()
                || child.try_wait().ok().flatten().is_some()
        })
        .await;
        let Some(addr) = address_of("webhook listener ready") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "relay did not become ready (ready={ready}); logs:\n{}",
                logs.all()
            );
        };
        RelayProcess {
            admin: address_of("admin listener ready"),
            child: Some(child),
            addr,
            logs,
            dir,
            config_path,
        }
    }

    pub async fn metrics(&self) -> HashMap<String, f64> {
        scrape(self.admin.expect("admin listener")).await
    }

    pub async fn wait_metric(
        &self,
        key: &str,
        value: f64,
        timeout: Duration,
    ) -> HashMap<String, f64> {
        wait_metric(self.admin.expect("admin listener"), key, value, timeout).await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn logs(&self) -> String {
        self.logs.all()
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.logs.has(needle)
    }

    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.logs.wait(needle, timeout).await
    }

    /// Lines the stdout destination wrote.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.logs
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("STDOUT ").map(str::to_owned))
            .collect()
    }

    /// Peak resident memory of the relay (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        kib / 1024
    }

    /// `kill -9`: no chance to flush anything. Hands over the directory.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        super::signal(child.id(), "TERM");
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
        .await;
        status
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
