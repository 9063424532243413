//! A webhook load for fault tests: several tasks POST batches of synthetic events (a real
//! apiserver event with a unique auditID each) until stopped, and record which events were
//! answered 200, and every status seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::PersistentH2;
use super::{ClientOptions, post_batch};

/// Where and how the load posts.
#[derive(Clone)]
pub enum Target {
    /// A new connection per request (plain HTTP, or the options' TLS and protocol).
    PerRequest(SocketAddr, ClientOptions),
    /// Streams of one shared HTTP/2 connection, reopened when it breaks (the apiserver's way).
    Persistent(Arc<PersistentH2>),
}

impl Target {
    async fn post(&self, body: Vec<u8>) -> Result<super::HttpResponse, super::client::ClientError> {
        match self {
            Target::PerRequest(addr, options) => post_batch(*addr, options, body).await,
            Target::Persistent(connection) => connection.post_batch(body).await,
        }
    }
}

/// The template: the first event of a real apiserver capture (Metadata level, ~700 B).
fn template() -> serde_json::Value {
    let (_, items) = super::captured_items("real-apiserver-v1.20.2-metadata-051.json");
    items[1].value.clone()
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<HashSet<String>>>,
    pub statuses: Arc<Mutex<BTreeMap<String, u64>>>,
    /// `Retry-After` values seen with 503.
    pub retry_after: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `concurrency` posting tasks against `addr` (plain HTTP), `batch` events per request.
    pub fn start(addr: SocketAddr, prefix: &str, concurrency: usize, batch: usize) -> Load {
        Self::start_on(
            Target::PerRequest(addr, ClientOptions::default()),
            prefix,
            concurrency,
            batch,
        )
    }

    /// Like [`Load::start`], posting to `target`.
    pub fn start_on(target: Target, prefix: &str, concurrency: usize, batch: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let retry_after = Arc::new(Mutex::new(HashSet::new()));
        let next = Arc::new(AtomicU64::new(0));
        let template = Arc::new(template());
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let target = target.clone();
            let (stop, acked, statuses, retry_after, next, template) = (
                stop.clone(),
                acked.clone(),
                statuses.clone(),
                retry_after.clone(),
                next.clone(),
                template.clone(),
            );
            let prefix = prefix.to_owned();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let first = next.fetch_add(batch as u64, Ordering::SeqCst);
                    let ids: Vec<String> = (first..first + batch as u64).map(|n| format!("{prefix}-{n:09}")).collect();
                    let items: Vec<String> = ids
                        .iter()
                        .map(|id| {
                            let mut v = (*template).clone();
                            v["auditID"] = id.as_str().into();
                            serde_json::to_string(&v).unwrap()
                        })
                        .collect();
                    let body = format!(
                        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}\n",
                        items.join(",")
                    );
                    let sent = tokio::time::timeout(Duration::from_secs(15), target.post(body.into_bytes())).await;
                    let key = match sent {
                        Ok(Ok(r)) => {
                            if r.status == 200 {
                                acked.lock().unwrap().extend(ids);
                            } else if r.status == 503
                                && let Some(v) = r.headers.get("retry-after")
                            {
                                retry_after.lock().unwrap().insert(v.to_str().unwrap_or("?").to_owned());
                            }
                            r.status.to_string()
                        }
                        Ok(Err(_)) => "error".to_owned(),
                        Err(_) => "timeout".to_owned(),
                    };
                    let pause = key != "200";
                    *statuses.lock().unwrap().entry(key).or_default() += 1;
                    if pause {
                        // A real apiserver backs off too; this keeps a dead relay from being hammered.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        Load {
            stop,
            acked,
            statuses,
            retry_after,
            tasks,
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn status_count(&self, status: &str) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .get(status)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the load and waits for in-flight requests.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// How the events answered 200 fared at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub acked: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub lost: usize,
}

/// Counts arrivals of `acked` events among the received auditIDs.
pub fn tally(acked: &HashSet<String>, received: &[String]) -> Tally {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in received {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let delivered = acked
        .iter()
        .filter(|id| counts.contains_key(id.as_str()))
        .count();
    let duplicates = counts.values().map(|c| c - 1).sum();
    Tally {
        acked: acked.len(),
        delivered,
        duplicates,
        lost: acked.len() - delivered,
    }
}

/// Appends a line to the fault report (`target/tmp/fault-report.md`), which the test script prints.
pub fn report(scenario: &str, t: Tally, extra: &str) {
    use std::io::Write;
    let line = format!(
        "| {scenario} | {} | {} | {} | {} | {extra} |\n",
        t.acked, t.delivered, t.duplicates, t.lost
    );
    eprint!("FAULT REPORT {line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-report.md");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Waits until every acked event arrived (or the timeout), then tallies.
pub async fn settle(
    receiver: &super::receivers::Receiver,
    acked: &HashSet<String>,
    timeout: Duration,
) -> Tally {
    super::wait_until(timeout, || {
        let got: HashSet<String> = receiver.audit_ids().into_iter().collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    tally(acked, &receiver.audit_ids())
}

/// Lets the load run until `n` more events were answered 200.
pub async fn load_runs(load: &Load, n: usize) -> bool {
    let before = load.acked_count();
    super::wait_until(Duration::from_secs(30), || load.acked_count() >= before + n).await
}

pub fn assert_no_loss(scenario: &str, t: Tally, min_acked: usize) {
    assert!(
        t.acked >= min_acked,
        "{scenario}: only {} events acknowledged; the load did not run",
        t.acked
    );
    assert_eq!(
        t.lost, 0,
        "{scenario}: {} acknowledged events never arrived ({t:?})",
        t.lost
    );
}
