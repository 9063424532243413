//! The deployment files are checked, not just shipped: every Kustomize overlay renders with
//! `kubectl kustomize` and validates against current Kubernetes schemas with
//! `kubernetes-validate --strict`; the relay configuration each one carries passes the relay's
//! own `check-config`; ports, probes, mounts, the ServiceMonitor and security settings agree
//! with that configuration; the systemd unit and the audit policy have what they need.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Command;

mod support;

use kube_audit_relay::config::{Config, QueueKind};
use yaml_rust2::{Yaml, YamlLoader};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn kubectl() -> Option<String> {
    let bin = std::env::var("KAR_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    if Command::new(&bin)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some(bin)
    } else {
        support::missing_receiver("kubectl (kubectl kustomize)");
        None
    }
}

/// `kubectl kustomize deploy/kustomize/overlays/NAME`: the text and its documents.
fn rendered(overlay: &str) -> Option<(String, Vec<Yaml>)> {
    let kubectl = kubectl()?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kustomize/overlays")
        .join(overlay);
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{overlay}: {e}"));
    Some((text, docs))
}

fn by_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The generated ConfigMap (its name carries a content hash) is the one the pod mounts.
fn assert_config_map_mounted(docs: &[Yaml], pod: &Yaml) {
    let mounted = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .unwrap();
    assert_eq!(
        mounted["configMap"]["name"],
        by_kind(docs, "ConfigMap")["metadata"]["name"]
    );
}

/// The relay.toml embedded in the ConfigMap, parsed with certificate paths pointed at the
/// repository's dev certificates (the real ones come from Secrets at run time).
fn embedded_config(docs: &[Yaml]) -> (Config, String) {
    let text = by_kind(docs, "ConfigMap")["data"]["relay.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    for (name, src) in [
        ("siem-ca.crt", "ca.crt"),
        ("siem-client.crt", "client.crt"),
        ("siem-client.key", "client.key"),
    ] {
        std::fs::copy(certs.join(src), dir.path().join(name)).unwrap();
    }
    for sub in ["tls", "siem"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for (name, src) in [
            ("tls.crt", "server.crt"),
            ("tls.key", "server.key"),
            ("ca.crt", "ca.crt"),
        ] {
            std::fs::copy(certs.join(src), dir.path().join(sub).join(name)).unwrap();
        }
    }
    let local = text.replace(
        "/etc/kube-audit-relay/",
        &format!("{}/", dir.path().display()),
    );
    // The relay's own check, as an operator runs it: exit 0 and "OK".
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, &local).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_kube-audit-relay"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).contains(": OK"),
        "check-config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    (
        Config::parse(&local, Path::new("configmap relay.toml")).unwrap(),
        text,
    )
}

#[test]
fn every_overlay_renders_and_validates_against_current_kubernetes() {
    let validator =
        std::env::var("KAR_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    if Command::new(&validator).arg("--version").output().is_err() {
        support::missing_receiver("kubernetes-validate (PyPI)");
        return;
    }
    for overlay in ["statefulset", "deployment", "sidecar"] {
        let Some((text, docs)) = rendered(overlay) else {
            return;
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let out = Command::new(&validator)
            .arg("--strict")
            .arg(file.path())
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{overlay} does not validate:\n{report}"
        );
        assert!(!report.contains("ERROR"), "{overlay}: {report}");
        // Only custom resources (the ServiceMonitor) may lack a Kubernetes schema.
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(line.contains("monitoring.coreos.com"), "{overlay}: {line}");
        }
        // Every overlay carries a configuration that passes check-config.
        embedded_config(&docs);
    }
}

#[test]
fn statefulset_overlay_matches_its_config() {
    let Some((_, docs)) = rendered("statefulset") else {
        return;
    };
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ] {
        by_kind(&docs, kind);
    }
    let (config, text) = embedded_config(&docs);
    assert_eq!(config.queue.kind, QueueKind::Disk);
    let sts = by_kind(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap()["containerPort"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(port("webhook"), i64::from(config.listen.address.port()));
    assert_eq!(
        port("admin"),
        i64::from(config.admin.address.unwrap().port())
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let service = by_kind(&docs, "Service");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("webhook")
    );
    assert_config_map_mounted(&docs, pod);
    // The ServiceMonitor scrapes the Service's admin port as job "kube-audit-relay", the job
    // deploy/prometheus/alerts.yaml expects.
    let monitor = by_kind(&docs, "ServiceMonitor");
    let port_name = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    let admin = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(port_name))
        .unwrap_or_else(|| panic!("the Service has no port {port_name}"));
    assert_eq!(
        admin["port"].as_i64(),
        Some(i64::from(config.admin.address.unwrap().port()))
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(
        service["metadata"]["labels"][job_label].as_str(),
        Some("kube-audit-relay")
    );
    assert!(read("deploy/prometheus/alerts.yaml").contains("up{job=\"kube-audit-relay\"}"));
    // The PodDisruptionBudget keeps all but one replica up; the NetworkPolicy lets in only
    // the webhook port from the apiserver's network and out only the SIEM (and DNS).
    let replicas = sts["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas >= 3);
    assert_eq!(
        by_kind(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"].as_i64(),
        Some(1)
    );
    let policy = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("NetworkPolicy")
                && d["metadata"]["name"].as_str() == Some("kube-audit-relay")
        })
        .unwrap();
    let ingress = policy["spec"]["ingress"].as_vec().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"][0]["port"].as_i64(),
        Some(i64::from(config.listen.address.port()))
    );
    assert!(ingress[0]["from"][0]["ipBlock"]["cidr"].as_str().is_some());
    let egress_ports: Vec<i64> = policy["spec"]["egress"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .filter_map(|p| p["port"].as_i64())
        })
        .collect();
    let kube_audit_relay::config::Endpoint::Network { port, .. } = &config.destinations[0].url
    else {
        panic!("the SIEM is a network destination")
    };
    let siem_port = i64::from(*port);
    assert!(
        egress_ports.iter().all(|p| *p == siem_port || *p == 53),
        "{egress_ports:?}"
    );
    assert_eq!(
        service["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    // The queue lives on the PersistentVolumeClaim, mounted where data_dir points.
    let mounts = container["volumeMounts"].as_vec().unwrap();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(Path::new(&mount("queue")), config.queue.data_dir.as_path());
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str(),
        Some("queue")
    );
    assert!(text.contains(&format!("{}/tls.crt", mount("tls"))));
    assert!(text.contains(&format!("{}/tls.crt", mount("siem"))));
    // Non-root, read-only root filesystem, no capabilities.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    // Long enough for the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace as u64 > (config.shutdown.drain_timeout + config.listen.request_timeout).as_secs()
    );
}

#[test]
fn deployment_overlay_matches_its_config() {
    let Some((_, docs)) = rendered("deployment") else {
        return;
    };
    for kind in ["ConfigMap", "Service", "Deployment"] {
        by_kind(&docs, kind);
    }
    let (config, _) = embedded_config(&docs);
    let dep = by_kind(&docs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let ports = c["ports"].as_vec().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap()["containerPort"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(port("webhook"), i64::from(config.listen.address.port()));
    assert_eq!(
        port("admin"),
        i64::from(config.admin.address.unwrap().port())
    );
    let queue_mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("queue"))
        .unwrap();
    assert_eq!(
        Path::new(queue_mount["mountPath"].as_str().unwrap()),
        config.queue.data_dir.as_path()
    );
    assert_config_map_mounted(&docs, pod);
    assert_eq!(dep["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    assert_eq!(
        by_kind(&docs, "Service")["spec"]["type"].as_str(),
        Some("ClusterIP")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
}

#[test]
fn sidecar_overlay_probes_the_admin_port_on_loopback() {
    let Some((_, docs)) = rendered("sidecar") else {
        return;
    };
    let (config, _) = embedded_config(&docs);
    assert!(config.listen.address.ip().is_loopback());
    let pod = by_kind(&docs, "Pod");
    assert_eq!(pod["metadata"]["namespace"].as_str(), Some("kube-system"));
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_i64(), Some(9090));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
}

#[test]
fn audit_policy_is_an_audit_policy() {
    let docs = docs("deploy/apiserver/audit-policy.yaml");
    assert_eq!(docs[0]["apiVersion"].as_str(), Some("audit.k8s.io/v1"));
    assert_eq!(docs[0]["kind"].as_str(), Some("Policy"));
    assert!(docs[0]["rules"].as_vec().unwrap().len() >= 3);
}

#[test]
fn systemd_unit_runs_the_relay_hardened() {
    let unit = read("deploy/systemd/kube-audit-relay.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert!(value("ExecStart").contains("kube-audit-relay run --config"));
    assert!(value("ExecStartPre").contains("check-config"));
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectoryMode", "0700"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(key), want, "{key}");
    }
}
