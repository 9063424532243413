//! `kube-audit-relay-bench`: the benchmark tools.
//!
//! * `load`: posts real-shaped EventLists to a relay (HTTPS with a client certificate, or
//!   HTTP; HTTP/1.1 or HTTP/2) from N connections, as fast as possible or at a fixed rate,
//!   checks every answer, and reports requests/s, events/s and latency percentiles.
//! * `sink`: a TCP/TLS syslog receiver that splits octet or LF frames, checks each frame's
//!   length and strict RFC 5424 header, counts events and unique auditIDs, and writes its
//!   counters to a JSON file twice a second.
//!
//! * `ceiling`: a bare forwarder (`ceiling.rs`), the reference the relay is measured against.
//! * `trail`: an integrity trail written with the relay's own chain, for timing `verify`.
//!
//! They print one JSON object per line on stdout, so `scripts/bench.sh` can read them.

mod ceiling;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_audit_relay::config::{ByteSize, ClientAuth, Framing};
use kube_audit_relay::syslog::{next_frame, parse_strict};
use kube_audit_relay::tls::{ClientTlsFiles, ServerTlsFiles};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "kube-audit-relay-bench",
    about = "Load generator and counting sink for kube-audit-relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Metadata-level events: corpus events without requestObject/responseObject (~0.6-1 KB).
    Metadata,
    /// The corpus events as they are (RequestResponse level, median ~2 KB, up to 220 KB).
    Full,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Post EventLists to a relay and report throughput and latency.
    Load(LoadOptions),
    /// Receive syslog frames and count them.
    Sink {
        /// Address to listen on (port 0: any; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Server certificate for TLS (plain TCP without it).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// Server key for TLS.
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// `octet`, `lf`, or `relp` (a RELP server: every message acknowledged with 200).
        #[arg(long, default_value = "octet")]
        framing: String,
        /// Where to write the counters (JSON, rewritten twice a second).
        #[arg(long)]
        stats: PathBuf,
        /// Check every frame with the strict RFC 5424 parser (costs CPU on the same machine).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        strict: bool,
    },
    /// Write an integrity trail (hash chain, signed checkpoints) as a receiver would store
    /// it, one record per line, for timing `kube-audit-relay verify` on it.
    Trail(TrailOptions),
    /// A bare forwarder (HTTPS + client certificates in, split, header, octet framing, TLS
    /// out; nothing else): the physical reference for this machine.
    Ceiling(ceiling::CeilingOptions),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    kube_audit_relay::config::duration::parse(s)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Load(options) => runtime.block_on(load(options)),
        Command::Sink {
            listen,
            tls_cert,
            tls_key,
            framing,
            stats,
            strict,
        } => {
            let framing = match framing.as_str() {
                "octet" => SinkFraming::Syslog(Framing::Octet),
                "lf" => SinkFraming::Syslog(Framing::Lf),
                "relp" => SinkFraming::Relp,
                other => bail!("--framing {other}: use octet, lf or relp"),
            };
            runtime.block_on(sink(listen, tls_cert, tls_key, framing, stats, strict))
        }
        Command::Trail(options) => trail(&options),
        Command::Ceiling(options) => runtime.block_on(ceiling::run(options)),
    }
}

// ------------------------------------------------------------------------------ trail

/// `trail` options.
#[derive(Debug, clap::Args)]
struct TrailOptions {
    /// Event records to write (checkpoints and the start record come on top).
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Ed25519 signing key (PKCS#8 PEM); `kube-audit-relay gen-signing-key` makes one.
    #[arg(long)]
    signing_key: PathBuf,
    /// Records between signed checkpoints (the relay's `integrity.checkpoint_records`).
    #[arg(long, default_value_t = 10_000)]
    checkpoint_records: u64,
    /// EventList whose events are rendered and repeated (each record gets its own place in
    /// the chain). Default: a real apiserver capture at Metadata level.
    #[arg(
        long,
        default_value = "tests/data/real-apiserver-v1.20.2-metadata-051.json"
    )]
    corpus: PathBuf,
}

/// Renders the corpus with the relay's own pipeline and chains it with the relay's own
/// [`ChainStamp`](kube_audit_relay::integrity::ChainStamp), exactly as the queue would.
fn trail(o: &TrailOptions) -> anyhow::Result<()> {
    use kube_audit_relay::integrity::{ChainStamp, FINAL, prework_of};
    use kube_audit_relay::queue::Stamp;
    use std::io::Write;

    let text = format!(
        "[syslog]\nenterprise_id = 32473\nsequence_id = true\n[queue]\nkind = \"memory\"\n\
         [integrity]\nsigning_key = {:?}\ncheckpoint_records = {}\n",
        o.signing_key.display().to_string(),
        o.checkpoint_records
    );
    let config = kube_audit_relay::config::Config::parse(&text, Path::new("<trail>"))?;
    let integrity = config
        .integrity
        .as_ref()
        .context("no [integrity] section")?;
    let body =
        std::fs::read(&o.corpus).with_context(|| format!("reading {}", o.corpus.display()))?;
    let pipeline = kube_audit_relay::pipeline::Pipeline::new(&config, "bench-host");
    let batch = pipeline
        .run(&body, "2026-01-01T00:00:00Z")
        .with_context(|| format!("{} is not an EventList", o.corpus.display()))?;
    let (records, layouts) = (batch.records, batch.layouts);
    if records.is_empty() {
        bail!("no events in {}", o.corpus.display());
    }
    let mut stamp = ChainStamp::new(integrity, &config, "bench-host")?;
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&o.out).with_context(|| format!("creating {}", o.out.display()))?,
    );
    let started = Instant::now();
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut write = |out: &mut Vec<Bytes>, seq: &mut u64| -> anyhow::Result<()> {
        for record in out.drain(..) {
            file.write_all(&record)?;
            file.write_all(b"\n")?;
            bytes += record.len() as u64 + 1;
            *seq += 1;
        }
        Ok(())
    };
    for i in 0..o.records {
        let at = usize::try_from(i).unwrap_or(0) % records.len();
        let record = &records[at];
        // As in the relay: the digest is the appending task's work, the link the writer's.
        let prework = prework_of(record, layouts.get(at));
        stamp.stamp(seq, record, Some(&prework), &mut out);
        write(&mut out, &mut seq)?;
    }
    stamp.stamp(seq, FINAL, None, &mut out);
    write(&mut out, &mut seq)?;
    file.flush()?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {seq}, \"events\": {}, \"bytes\": {bytes}, \"seconds\": {elapsed:.3}, \"records_per_sec\": {:.0}}}",
        o.records,
        seq as f64 / elapsed
    );
    Ok(())
}

// ------------------------------------------------------------------------------- load

/// `load` options.
#[derive(Debug, clap::Args)]
struct LoadOptions {
    /// Webhook URL, `https://127.0.0.1:8443/` or `http://...`.
    #[arg(long)]
    url: String,
    /// CA that signed the relay's certificate (HTTPS).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (HTTPS).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (HTTPS).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Use HTTP/2 (h2 via ALPN, or prior knowledge over plain HTTP).
    #[arg(long)]
    http2: bool,
    /// Concurrent connections, one request in flight on each (see --streams).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// With --http2: requests in flight on each connection, each on its own stream, as the
    /// kube-apiserver sends its batches over one connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Stop after this many events (0: use --duration).
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Stop after this long, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Total events per second to offer (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Event shape.
    #[arg(long, value_enum, default_value_t = Profile::Metadata)]
    profile: Profile,
    /// Pad each event with an annotation to at least this many bytes (e.g. 20000).
    #[arg(long, default_value_t = 0)]
    event_bytes: usize,
    /// Events to use: an EventList file or JSON Lines. Default: a real apiserver capture
    /// (Metadata level, ~700 B per event) for `metadata`, the OpenShift corpus for `full`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Prefix of the generated auditIDs (unique per run).
    #[arg(long, default_value = "bench")]
    id_prefix: String,
}

impl LoadOptions {
    fn corpus(&self) -> PathBuf {
        self.corpus.clone().unwrap_or_else(|| {
            PathBuf::from(match self.profile {
                Profile::Metadata => "tests/data/real-apiserver-v1.20.2-metadata-051.json",
                Profile::Full => "tests/data/openshift-cluster-logging-operator.jsonl",
            })
        })
    }
}

/// Width of the numeric part of generated auditIDs, overwritten in place per request.
const ID_DIGITS: usize = 12;

/// One request body with the byte ranges of its auditID counters.
#[derive(Clone)]
struct BodyTemplate {
    bytes: Vec<u8>,
    slots: Vec<usize>,
}

impl BodyTemplate {
    fn stamp(&mut self, first: u64) -> Bytes {
        for (i, &at) in self.slots.iter().enumerate() {
            let digits = format!("{:0width$}", first + i as u64, width = ID_DIGITS);
            self.bytes[at..at + ID_DIGITS].copy_from_slice(digits.as_bytes());
        }
        Bytes::copy_from_slice(&self.bytes)
    }
}

fn load_events(o: &LoadOptions) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let corpus = o.corpus();
    let text = std::fs::read_to_string(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?;
    // Either an EventList (a captured webhook body) or JSON Lines of events.
    let events: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(mut list)) if list.contains_key("items") => {
            match list.remove("items") {
                Some(serde_json::Value::Array(items)) => items,
                _ => bail!("{}: items is not an array", corpus.display()),
            }
        }
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for event in events {
        let serde_json::Value::Object(mut event) = event else {
            continue;
        };
        event.remove("kind");
        event.remove("apiVersion");
        if let Profile::Metadata = o.profile {
            // What the apiserver's Metadata level leaves out.
            event.remove("requestObject");
            event.remove("responseObject");
        }
        if o.event_bytes > 0 {
            let size = serde_json::to_string(&event)?.len();
            if size < o.event_bytes {
                let annotations = event
                    .entry("annotations")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(a) = annotations.as_object_mut() {
                    a.insert(
                        "bench.padding".into(),
                        "p".repeat(o.event_bytes - size).into(),
                    );
                }
            }
        }
        out.push(event);
    }
    if out.is_empty() {
        bail!("no events in {}", corpus.display());
    }
    Ok(out)
}

fn body_template(
    events: &[serde_json::Map<String, serde_json::Value>],
    offset: usize,
    batch: usize,
    prefix: &str,
) -> anyhow::Result<BodyTemplate> {
    let mut bytes =
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#.to_vec();
    let mut slots = Vec::with_capacity(batch);
    let placeholder = format!("{prefix}-{}", "0".repeat(ID_DIGITS));
    for i in 0..batch {
        let mut event = events[(offset + i) % events.len()].clone();
        event.insert("auditID".into(), placeholder.clone().into());
        let item = serde_json::to_vec(&event)?;
        let needle = format!("\"auditID\":\"{placeholder}\"");
        let at = item
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .context("auditID not found in serialised event")?;
        if i > 0 {
            bytes.push(b',');
        }
        slots.push(bytes.len() + at + needle.len() - 1 - ID_DIGITS);
        bytes.extend_from_slice(&item);
    }
    bytes.extend_from_slice(b"]}\n");
    Ok(BodyTemplate { bytes, slots })
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    events: AtomicU64,
    failures: AtomicU64,
    status_503: AtomicU64,
}

async fn load(o: LoadOptions) -> anyhow::Result<()> {
    let uri: hyper::Uri = o.url.parse().context("--url")?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .context("--url needs a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("cannot resolve --url host")?;
    let tls = if https {
        let files = ClientTlsFiles {
            label: "load".into(),
            ca: o.ca.clone(),
            identity: o.cert.clone().zip(o.key.clone()),
            pin: None,
        };
        let mut config = (*kube_audit_relay::tls::client_config(&files)?).clone();
        config.alpn_protocols = if o.http2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Some((
            tokio_rustls::TlsConnector::from(Arc::new(config)),
            ServerName::try_from(host.clone())?,
        ))
    } else {
        None
    };
    let events = load_events(&o)?;
    let event_bytes: usize = body_template(&events, 0, o.batch, &o.id_prefix)?
        .bytes
        .len()
        / o.batch.max(1);
    let totals = Arc::new(Totals::default());
    let next_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + o.duration;
    anyhow::ensure!(o.streams >= 1, "--streams must be at least 1");
    anyhow::ensure!(
        o.streams == 1 || o.http2,
        "--streams above 1 needs --http2 (HTTP/1.1 has one request in flight per connection)"
    );
    let per_stream_interval = (o.rate > 0).then(|| {
        let requests_per_sec = o.rate as f64 / o.batch as f64 / (o.connections * o.streams) as f64;
        Duration::from_secs_f64(1.0 / requests_per_sec)
    });
    let mut tasks = Vec::new();
    for c in 0..o.connections {
        let templates = (0..o.streams)
            .map(|s| body_template(&events, (c * o.streams + s) * 7, o.batch, &o.id_prefix))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stream = Stream {
            totals: totals.clone(),
            next_id: next_id.clone(),
            stop: stop.clone(),
            path: path.clone(),
            batch: o.batch as u64,
            max_events: o.events,
            deadline,
            interval: per_stream_interval,
        };
        let (tls, http2) = (tls.clone(), o.http2);
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let sender = match tls {
                Some((connector, name)) => {
                    Sender::connect(TokioIo::new(connector.connect(name, tcp).await?), http2)
                        .await?
                }
                None => Sender::connect(TokioIo::new(tcp), http2).await?,
            };
            let mut streams = tokio::task::JoinSet::new();
            // --streams above 1 is refused for HTTP/1.1, so only HTTP/2 senders are shared.
            let mut sender = Some(sender);
            for template in templates {
                let Some(this) = sender
                    .as_ref()
                    .and_then(Sender::another)
                    .or_else(|| sender.take())
                else {
                    break;
                };
                streams.spawn(stream.clone().drive(this, template));
            }
            let mut latencies = Vec::new();
            while let Some(done) = streams.join_next().await {
                latencies.extend(done??);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(l) => latencies.extend(l),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                eprintln!("connection failed: {e:#}");
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        f64::from(latencies[i]) / 1000.0
    };
    let requests = totals.requests.load(Ordering::Relaxed);
    let acked = totals.events.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "kind": "load",
        "connections": o.connections,
        "streams": o.streams,
        "http2": o.http2,
        "batch": o.batch,
        "event_bytes": event_bytes,
        "seconds": elapsed,
        "requests": requests,
        "failed_requests": totals.failures.load(Ordering::Relaxed),
        "status_503": totals.status_503.load(Ordering::Relaxed),
        "events_acked": acked,
        "requests_per_s": requests as f64 / elapsed,
        "events_per_s": acked as f64 / elapsed,
        "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
    });
    println!("{summary}");
    Ok(())
}

/// One request at a time, on one HTTP/1.1 connection or one HTTP/2 stream of a connection.
#[derive(Clone)]
struct Stream {
    totals: Arc<Totals>,
    next_id: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    path: String,
    batch: u64,
    max_events: u64,
    deadline: Instant,
    interval: Option<Duration>,
}

impl Stream {
    /// Posts batches until the deadline or the event count; each request's latency in µs.
    async fn drive(
        self,
        mut sender: Sender,
        mut template: BodyTemplate,
    ) -> anyhow::Result<Vec<u32>> {
        let mut latencies: Vec<u32> = Vec::new();
        let mut next_send = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed)
                || (self.max_events == 0 && Instant::now() >= self.deadline)
            {
                break;
            }
            let first = self.next_id.fetch_add(self.batch, Ordering::Relaxed);
            if self.max_events > 0 && first >= self.max_events {
                break;
            }
            if let Some(interval) = self.interval {
                tokio::time::sleep_until(next_send.into()).await;
                next_send += interval;
            }
            let body = template.stamp(first);
            let request = hyper::Request::post(self.path.as_str())
                .header("content-type", "application/json")
                .header("host", "relay")
                .body(Full::new(body))?;
            let sent = Instant::now();
            let response = sender.send(request).await?;
            let status = response.status();
            let _ = response.into_body().collect().await?;
            latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            self.totals.requests.fetch_add(1, Ordering::Relaxed);
            if status.is_success() {
                self.totals.events.fetch_add(self.batch, Ordering::Relaxed);
            } else {
                self.totals.failures.fetch_add(1, Ordering::Relaxed);
                if status.as_u16() == 503 {
                    self.totals.status_503.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(latencies)
    }
}

/// A connection's request sender; an HTTP/2 one is shared by its streams.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect<I>(io: I, http2: bool) -> anyhow::Result<Self>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if http2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Self::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Self::H1(sender))
        }
    }

    /// Another handle on the same connection, for one more stream (HTTP/2 only).
    fn another(&self) -> Option<Self> {
        match self {
            Self::H1(_) => None,
            Self::H2(s) => Some(Self::H2(s.clone())),
        }
    }

    async fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        Ok(match self {
            Self::H1(s) => s.send_request(request).await?,
            Self::H2(s) => s.send_request(request).await?,
        })
    }
}

// ------------------------------------------------------------------------------- sink

#[derive(Default)]
struct SinkCounters {
    events: AtomicU64,
    bytes: AtomicU64,
    bad_frames: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl SinkCounters {
    /// Counts `events` messages of `bytes` received now, and their auditIDs.
    fn record(
        &self,
        epoch: Instant,
        events: u64,
        bytes: u64,
        ids: &std::sync::Mutex<HashSet<u64>>,
        local_ids: &mut Vec<u64>,
    ) {
        if events == 0 {
            return;
        }
        let now = u64::try_from(epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Ok(mut set) = ids.lock() {
            set.extend(local_ids.drain(..));
        }
    }
}

/// What the sink speaks.
#[derive(Debug, Clone, Copy)]
enum SinkFraming {
    /// Syslog frames, no answer.
    Syslog(Framing),
    /// RELP: answers `open` and `close`, acknowledges each `syslog`.
    Relp,
}

async fn sink(
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    framing: SinkFraming,
    stats: PathBuf,
    strict: bool,
) -> anyhow::Result<()> {
    let acceptor = match (cert, key) {
        (Some(cert), Some(key)) => {
            let files = ServerTlsFiles {
                cert,
                key,
                client_ca: None,
                client_auth: ClientAuth::None,
            };
            let mut config = (*kube_audit_relay::tls::server_config(&files)?).clone();
            config.alpn_protocols.clear();
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    let listener = TcpListener::bind(listen).await?;
    println!(
        "{}",
        serde_json::json!({ "kind": "sink", "listening": listener.local_addr()?.to_string() })
    );
    let counters = Arc::new(SinkCounters::default());
    let ids = Arc::new(std::sync::Mutex::new(HashSet::<u64>::new()));
    let epoch = Instant::now();
    let writer = {
        let (counters, ids, stats) = (counters.clone(), ids.clone(), stats.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                write_stats(&stats, &counters, ids.lock().map(|s| s.len()).unwrap_or(0));
            }
        })
    };
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (counters, ids, acceptor) = (counters.clone(), ids.clone(), acceptor.clone());
        tokio::spawn(async move {
            let result = match acceptor {
                Some(a) => match a.accept(stream).await {
                    Ok(s) => serve_sink(s, framing, strict, &counters, &ids, epoch).await,
                    Err(e) => Err(e.into()),
                },
                None => serve_sink(stream, framing, strict, &counters, &ids, epoch).await,
            };
            if let Err(e) = result {
                eprintln!("sink connection: {e:#}");
            }
        });
        if writer.is_finished() {
            break;
        }
    }
    Ok(())
}

async fn serve_sink<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    framing: SinkFraming,
    strict: bool,
    counters: &SinkCounters,
    ids: &std::sync::Mutex<HashSet<u64>>,
    epoch: Instant,
) -> anyhow::Result<()> {
    match framing {
        SinkFraming::Syslog(f) => count_frames(stream, f, strict, counters, ids, epoch).await,
        SinkFraming::Relp => count_relp(stream, strict, counters, ids, epoch).await,
    }
}

/// A RELP server that counts like [`count_frames`] and acknowledges every message.
async fn count_relp<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    strict: bool,
    counters: &SinkCounters,
    ids: &std::sync::Mutex<HashSet<u64>>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut local_ids: Vec<u64> = Vec::with_capacity(4096);
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let (mut consumed, mut events, mut bytes) = (0usize, 0u64, 0u64);
        let mut closing = false;
        while let Some((txnr, command, data, used)) = relp_frame(&buf[consumed..])? {
            match command {
                b"open" => {
                    let offers = b"200 OK\nrelp_version=0\nrelp_software=kube-audit-relay-bench\ncommands=syslog";
                    out.extend_from_slice(format!("{txnr} rsp {} ", offers.len()).as_bytes());
                    out.extend_from_slice(offers);
                    out.push(b'\n');
                }
                b"syslog" => {
                    if strict && let Err(e) = parse_strict(data) {
                        counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        eprintln!("bad frame: {e}");
                    }
                    if let Some(id) = audit_id_hash(data) {
                        local_ids.push(id);
                    }
                    events += 1;
                    bytes += data.len() as u64;
                    out.extend_from_slice(format!("{txnr} rsp 6 200 OK\n").as_bytes());
                }
                b"close" => {
                    out.extend_from_slice(format!("{txnr} rsp 0\n0 serverclose 0\n").as_bytes());
                    closing = true;
                }
                other => bail!("unexpected RELP command {}", String::from_utf8_lossy(other)),
            }
            consumed += used;
        }
        buf.drain(..consumed);
        counters.record(epoch, events, bytes, ids, &mut local_ids);
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return Ok(());
        }
    }
}

/// A RELP frame: (txnr, command, data, bytes used).
type RelpFrame<'a> = (u64, &'a [u8], &'a [u8], usize);

/// One RELP frame at the start of `buf`, or `None` when more bytes are needed.
fn relp_frame(buf: &[u8]) -> anyhow::Result<Option<RelpFrame<'_>>> {
    let mut fields = buf.splitn(3, |&b| b == b' ');
    let (Some(txnr), Some(command), Some(rest)) = (fields.next(), fields.next(), fields.next())
    else {
        return Ok(None);
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == rest.len() {
        return Ok(None);
    }
    let len: usize = std::str::from_utf8(&rest[..digits])?.parse()?;
    let header = txnr.len() + command.len() + 2 + digits;
    let (data, end) = if len == 0 {
        (&buf[header..header], header)
    } else {
        let start = header + 1;
        match buf.get(start..start + len) {
            Some(d) => (d, start + len),
            None => return Ok(None),
        }
    };
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((
            std::str::from_utf8(txnr)?.parse()?,
            command,
            data,
            end + 1,
        ))),
        Some(_) => bail!("RELP frame without its LF trailer"),
    }
}

fn write_stats(path: &Path, c: &SinkCounters, unique: usize) {
    let first = c.first_ns.load(Ordering::Relaxed);
    let last = c.last_ns.load(Ordering::Relaxed);
    let events = c.events.load(Ordering::Relaxed);
    let seconds = last.saturating_sub(first) as f64 / 1e9;
    let json = serde_json::json!({
        "events": events,
        "unique_audit_ids": unique,
        "bytes": c.bytes.load(Ordering::Relaxed),
        "bad_frames": c.bad_frames.load(Ordering::Relaxed),
        "active_seconds": seconds,
        "events_per_s": if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
    });
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, json.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn count_frames<S: AsyncRead + Unpin>(
    mut stream: S,
    framing: Framing,
    strict: bool,
    counters: &SinkCounters,
    ids: &std::sync::Mutex<HashSet<u64>>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    let mut local_ids: Vec<u64> = Vec::with_capacity(4096);
    let max = ByteSize(16 << 20).as_usize();
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut events = 0u64;
        while let Some((used, message)) = next_frame(framing, &buf[consumed..], max)? {
            if strict && let Err(e) = parse_strict(message) {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                eprintln!("bad frame: {e}");
            }
            if let Some(id) = audit_id_hash(message) {
                local_ids.push(id);
            }
            consumed += used;
            events += 1;
        }
        buf.drain(..consumed);
        counters.record(epoch, events, consumed as u64, ids, &mut local_ids);
    }
}

/// Hash of the `auditID` value in a message, found by substring (no JSON parse). With
/// `memmem` (SIMD) rather than a byte-by-byte window compare, which cost the sink ~20
/// instructions per byte before the auditID: about 3 000 per event, and more for records
/// with more structured data in front (the integrity trail's), so that the sink's own cost
/// counted against the relay in same-machine runs.
fn audit_id_hash(message: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"auditID\":\"";
    let start = memchr::memmem::find(message, KEY)? + KEY.len();
    let len = memchr::memchr(b'"', &message[start..])?;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    Some(BuildHasherDefault::<DefaultHasher>::default().hash_one(&message[start..start + len]))
}
