//! Real syslog receivers: private rsyslog and syslog-ng instances with their own config,
//! work directory and pid, writing what they parsed as JSON lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{cert, missing_receiver, ports, signal, wait_until};

/// A message as a receiver parsed it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Received {
    pub listener: String,
    pub pri: u32,
    pub timestamp: String,
    pub hostname: String,
    pub appname: String,
    #[serde(default)]
    pub procid: String,
    pub msgid: String,
    #[serde(default)]
    pub sd: String,
    pub msg: String,
}

/// Client-certificate policy of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAuth {
    None,
    Required,
}

/// A running receiver process.
pub struct Receiver {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Its listeners by name (`tls`, `tcp`, `lf`, `relp`, `relp_tls`), as its config names
    /// them in the `listener` field of each message it writes.
    ports: Vec<(&'static str, u16)>,
    pub kind: &'static str,
    start: Box<StartFn>,
}

/// Starts the receiver process in its directory.
type StartFn = dyn Fn(&Path) -> std::io::Result<Child> + Send;

/// Writes the receiver's configuration for a set of ports.
type ConfigureFn = dyn Fn(&Path, &[u16]) + Send;

/// A receiver configuration from `deploy/receivers/` (the files the documentation points to),
/// with its `@PLACEHOLDERS@` filled in.
fn template(name: &str, values: &[(&str, String)]) -> String {
    deploy_template(&format!("receivers/{name}"), name, values)
}

/// `deploy/REL` with its placeholders filled in (`fallback` is the text when no such file).
fn deploy_template(rel: &str, fallback: &str, values: &[(&str, String)]) -> String {
    let name = rel;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| fallback.to_owned());
    for (key, value) in values {
        text = text.replace(key, value);
    }
    assert!(
        !text.contains("@DIR@") && !text.contains("_PORT@"),
        "unfilled placeholder in {name}"
    );
    text
}

impl Receiver {
    /// A private rsyslog, or `None` (after the skip/fail rule) when rsyslogd is missing.
    pub async fn rsyslog(auth: PeerAuth) -> Option<Receiver> {
        let authmode = if auth == PeerAuth::Required {
            "x509/certvalid"
        } else {
            "anon"
        };
        Self::rsyslog_with("rsyslog.conf", &["tls", "tcp"], move |_| {
            vec![("@AUTHMODE@", authmode.to_owned())]
        })
        .await
    }

    /// A private rsyslog with `imrelp` (the shipped `deploy/receivers/rsyslog-relp.conf`:
    /// RELP plain and TLS with a required client certificate, Direct queues), or `None`
    /// (after the skip/fail rule) when rsyslogd or imrelp is missing.
    pub async fn rsyslog_relp() -> Option<Receiver> {
        Self::rsyslog_with("rsyslog-relp.conf", &["relp", "relp_tls"], |_| Vec::new()).await
    }

    /// A private rsyslog running `conf` from `deploy/receivers/` (or, when `conf` is not a
    /// file there, the text `conf` itself) with listeners `names`; `extra` gives more
    /// placeholders for a port set.
    pub async fn rsyslog_with(
        conf: &'static str,
        names: &[&'static str],
        extra: impl Fn(&[u16]) -> Vec<(&'static str, String)> + Send + 'static,
    ) -> Option<Receiver> {
        let bin = std::env::var("KAR_RSYSLOGD").unwrap_or_else(|_| "/usr/sbin/rsyslogd".into());
        let has = |module: &str| {
            std::fs::read_dir("/usr/lib")
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .any(|d| d.path().join("rsyslog").join(module).exists())
        };
        let relp = names.iter().any(|n| n.starts_with("relp"));
        if !Path::new(&bin).exists() || (relp && !has("imrelp.so")) || !has("lmnsd_ossl.so") {
            missing_receiver(if relp {
                "rsyslogd with imrelp (rsyslog-relp) and rsyslog-openssl"
            } else {
                "rsyslogd with the rsyslog-openssl TLS driver"
            });
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let d = dir.path().display().to_string();
        let names_owned: Vec<&'static str> = names.to_vec();
        let configure = move |dir: &Path, p: &[u16]| {
            let mut values = vec![
                ("@DIR@", d.clone()),
                ("@CA@", cert("ca.crt")),
                ("@CERT@", cert("server.crt")),
                ("@KEY@", cert("server.key")),
            ];
            for (name, port) in names_owned.iter().zip(p) {
                let key: &'static str = match *name {
                    "relp" => "@RELP_PORT@",
                    "relp_tls" => "@RELP_TLS_PORT@",
                    "tcp" => "@TCP_PORT@",
                    "tls" => "@TLS_PORT@",
                    other => panic!("no placeholder for {other}"),
                };
                values.push((key, port.to_string()));
            }
            values.extend(extra(p));
            std::fs::write(dir.join("rsyslog.conf"), template(conf, &values)).unwrap();
        };
        let start = move |dir: &Path| {
            Command::new(&bin)
                .arg("-n")
                .arg("-f")
                .arg(dir.join("rsyslog.conf"))
                .arg("-i")
                .arg(dir.join("rsyslogd.pid"))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("rsyslogd.out"))?)
                .stderr(std::fs::File::create(dir.join("rsyslogd.err"))?)
                .spawn()
        };
        Some(Receiver::launch(dir, "rsyslog", names, Box::new(configure), Box::new(start)).await)
    }

    /// A private syslog-ng, or `None` (after the skip/fail rule) when it is missing.
    pub async fn syslog_ng(auth: PeerAuth) -> Option<Receiver> {
        let bin = std::env::var("KAR_SYSLOG_NG").ok().or_else(|| {
            ["/usr/sbin/syslog-ng", "/usr/local/sbin/syslog-ng"]
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| (*p).to_owned())
        });
        let Some(bin) = bin.filter(|b| Path::new(b).exists()) else {
            missing_receiver("syslog-ng");
            return None;
        };
        let module_path = std::env::var("KAR_SYSLOG_NG_MODULE_PATH").ok();
        let lib_path = std::env::var("KAR_SYSLOG_NG_LIB_PATH").ok();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let verify = if auth == PeerAuth::Required {
            "required-trusted"
        } else {
            "optional-untrusted"
        };
        let configure = move |dir: &Path, p: &[u16]| {
            let conf = template(
                "syslog-ng.conf",
                &[
                    ("@DIR@", d.clone()),
                    ("@CA@", cert("ca.crt")),
                    ("@CERT@", cert("server.crt")),
                    ("@KEY@", cert("server.key")),
                    ("@TLS_PORT@", p[0].to_string()),
                    ("@TCP_PORT@", p[1].to_string()),
                    ("@LF_PORT@", p[2].to_string()),
                    ("@VERIFY@", verify.to_owned()),
                ],
            );
            std::fs::write(dir.join("syslog-ng.conf"), conf).unwrap();
        };
        let start = move |dir: &Path| {
            let mut cmd = Command::new(&bin);
            cmd.arg("-F")
                .arg("-f")
                .arg(dir.join("syslog-ng.conf"))
                .arg("-p")
                .arg(dir.join("syslog-ng.pid"))
                .arg("-R")
                .arg(dir.join("syslog-ng.persist"))
                .arg("-c")
                .arg(dir.join("syslog-ng.ctl"))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("syslog-ng.out"))?)
                .stderr(std::fs::File::create(dir.join("syslog-ng.err"))?);
            if let Some(m) = &module_path {
                cmd.arg(format!("--module-path={m}"));
            }
            if let Some(l) = &lib_path {
                cmd.env("LD_LIBRARY_PATH", l);
            }
            cmd.spawn()
        };
        Some(
            Receiver::launch(
                dir,
                "syslog-ng",
                &["tls", "tcp", "lf"],
                Box::new(configure),
                Box::new(start),
            )
            .await,
        )
    }

    /// Starts a receiver on `n` fresh ports, trying new ones when another process holds one.
    async fn launch(
        mut dir: tempfile::TempDir,
        kind: &'static str,
        names: &[&'static str],
        configure: Box<ConfigureFn>,
        mut start: Box<StartFn>,
    ) -> Receiver {
        for _ in 0..5 {
            let p = ports::pick(names.len());
            configure(dir.path(), &p);
            let mut r = Receiver {
                child: None,
                dir,
                ports: names.iter().copied().zip(p).collect(),
                kind,
                start,
            };
            if r.try_start().await {
                return r;
            }
            (dir, start) = r.into_parts();
        }
        panic!("{kind} could not listen on any of five sets of ports");
    }

    fn into_parts(mut self) -> (tempfile::TempDir, Box<StartFn>) {
        self.kill9();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let start = std::mem::replace(
            &mut self.start,
            Box::new(|_: &Path| Err(std::io::Error::other("moved"))),
        );
        (dir, start)
    }

    fn ports(&self) -> Vec<u16> {
        self.ports.iter().map(|(_, p)| *p).collect()
    }

    /// The port of listener `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("{} has no {name} listener", self.kind))
    }

    /// Starts the process; true once it listens on all its ports itself.
    async fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let child = (self.start)(self.dir.path()).unwrap();
        let pid = child.id();
        self.child = Some(child);
        let ports = self.ports();
        wait_until(Duration::from_secs(20), || {
            ports.iter().all(|p| ports::listening(pid, *p))
                || self
                    .child
                    .as_mut()
                    .unwrap()
                    .try_wait()
                    .ok()
                    .flatten()
                    .is_some()
        })
        .await;
        ports.iter().all(|p| ports::listening(pid, *p))
    }

    /// HAProxy running `deploy/haproxy/haproxy.cfg` in front of three relays, each given as
    /// (webhook address, admin port); listener `webhook`. `None` (after the skip/fail rule)
    /// when haproxy is missing.
    pub async fn haproxy(relays: &[(std::net::SocketAddr, u16); 3]) -> Option<Receiver> {
        let bin = std::env::var("KAR_HAPROXY").unwrap_or_else(|_| "/usr/sbin/haproxy".into());
        if !Path::new(&bin).exists() {
            missing_receiver("haproxy");
            return None;
        }
        let relays = *relays;
        let configure = move |dir: &Path, p: &[u16]| {
            let mut values = vec![
                ("@BIND@", "127.0.0.1".to_owned()),
                ("@WEBHOOK_PORT@", p[0].to_string()),
            ];
            let keys = [
                ("@RELAY_0@", "@RELAY_0_ADMIN_PORT@"),
                ("@RELAY_1@", "@RELAY_1_ADMIN_PORT@"),
                ("@RELAY_2@", "@RELAY_2_ADMIN_PORT@"),
            ];
            for ((addr, admin), (a, b)) in relays.iter().zip(keys) {
                values.push((a, addr.to_string()));
                values.push((b, admin.to_string()));
            }
            let conf = deploy_template("haproxy/haproxy.cfg", "", &values);
            for key in ["@BIND@", "@WEBHOOK_PORT@", "@RELAY_"] {
                assert!(!conf.contains(key), "unfilled {key} in haproxy.cfg");
            }
            std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        };
        let start = move |dir: &Path| {
            Command::new(&bin)
                .arg("-db")
                .arg("-f")
                .arg(dir.join("haproxy.cfg"))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("haproxy.out"))?)
                .stderr(std::fs::File::create(dir.join("haproxy.err"))?)
                .spawn()
        };
        let dir = tempfile::tempdir().unwrap();
        Some(
            Receiver::launch(
                dir,
                "haproxy",
                &["webhook"],
                Box::new(configure),
                Box::new(start),
            )
            .await,
        )
    }

    /// A real Prometheus scraping `targets` (admin listeners) every second as job
    /// `kube-audit-relay`, evaluating `deploy/prometheus/alerts.yaml` every second; listener
    /// `web` (its HTTP API). `None` (after the skip/fail rule) when prometheus is missing.
    pub async fn prometheus(targets: &[std::net::SocketAddr]) -> Option<Receiver> {
        let bin = std::env::var("KAR_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        if !Path::new(&bin).exists() {
            missing_receiver("prometheus");
            return None;
        }
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yaml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: kube-audit-relay\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let configure = move |dir: &Path, _: &[u16]| {
            std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
        };
        let start = move |dir: &Path| {
            // The port is the one launch picked; it is in the file name launch reads back.
            let port = std::fs::read_to_string(dir.join("port"))?;
            Command::new(&bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{}", port.trim()))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("prometheus.out"))?)
                .stderr(std::fs::File::create(dir.join("prometheus.err"))?)
                .spawn()
        };
        let write_port = move |dir: &Path, p: &[u16]| {
            configure(dir, p);
            std::fs::write(dir.join("port"), p[0].to_string()).unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        Some(
            Receiver::launch(
                dir,
                "prometheus",
                &["web"],
                Box::new(write_port),
                Box::new(start),
            )
            .await,
        )
    }

    /// Starts (again) on the same ports and files.
    pub async fn restart(&mut self) {
        if !self.try_start().await {
            let out = std::fs::read_to_string(self.dir.path().join(format!(
                "{}.out",
                if self.kind == "rsyslog" {
                    "rsyslogd"
                } else {
                    "syslog-ng"
                }
            )))
            .unwrap_or_default();
            panic!(
                "{} did not start listening on {:?}: {out}",
                self.kind,
                self.ports()
            );
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the receiver (connections are reset, nothing flushed).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Orderly stop (SIGTERM), so that everything received is written out.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            if !wait_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            })
            .await
            {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Parsed messages so far.
    /// Parsed messages so far: complete lines only (the receiver may be writing the last one).
    pub fn messages(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.path("messages.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{} wrote unparsable JSON ({e}): {l}", self.kind))
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived (or the timeout), then returns them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(timeout, || self.line_count() >= n).await;
        self.messages()
    }

    fn line_count(&self) -> usize {
        std::fs::read(self.path("messages.jsonl"))
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    }

    /// `auditID` of every message received so far (with repeats).
    /// A receiver killed with -9 in the middle of a write leaves a torn line (and the next
    /// start appends to it): such a line counts as not delivered.
    pub fn audit_ids(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("messages.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Received>(l).ok())
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.msg).ok())
            .filter_map(|v| v["auditID"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn internal_log(&self) -> String {
        std::fs::read_to_string(self.path("internal.log")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}
