//! The deployment files are checked, not just shipped: the Kubernetes manifests parse, the
//! relay configuration inside them parses with the relay's own parser, and ports, probes,
//! mounts and security settings agree with that configuration; the systemd unit and the
//! audit policy have what they need.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use kube_audit_relay::config::{Config, QueueKind};
use yaml_rust2::{Yaml, YamlLoader};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn by_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
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
    (
        Config::parse(&local, Path::new("configmap relay.toml")).unwrap(),
        text,
    )
}

#[test]
fn statefulset_manifest_matches_its_config() {
    let docs = docs("deploy/kubernetes/statefulset.yaml");
    for kind in [
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
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
fn deployment_manifest_matches_its_config() {
    let docs = docs("deploy/kubernetes/deployment.yaml");
    for kind in ["Secret", "ConfigMap", "Service", "Deployment"] {
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
    let secret = by_kind(&docs, "Secret");
    let mounted = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("tls"))
        .unwrap();
    assert_eq!(mounted["secret"]["secretName"], secret["metadata"]["name"]);
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(secret["stringData"][key].as_str().is_some(), "{key}");
    }
    assert_eq!(
        by_kind(&docs, "Service")["spec"]["type"].as_str(),
        Some("ClusterIP")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
}

#[test]
fn sidecar_manifest_probes_the_admin_port() {
    let docs = docs("deploy/kubernetes/sidecar.yaml");
    let pod = by_kind(&docs, "Pod");
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
