//! Per-destination routing: a destination's own `[[destination.filter]]` rules decide which
//! stored records it receives. The queue is shared; what the rules drop is skipped by this
//! destination's cursor (and confirmed as soon as nothing sent before it is outstanding), so
//! a destination whose rules match nothing never holds the queue back.

use serde_json::value::RawValue;

use crate::audit::EventView;
use crate::config::FilterRule;
use crate::filter::Policy;
use crate::syslog::convert::fields;

/// A destination's routing rules.
#[derive(Debug, Clone)]
pub struct Route {
    policy: Policy,
}

impl Route {
    /// The route of `rules`, or `None` when there are none (everything is sent).
    pub fn new(rules: &[FilterRule]) -> Option<Self> {
        (!rules.is_empty()).then(|| Self {
            policy: Policy::new(rules, &[]),
        })
    }

    /// Whether the stored `record` goes to this destination. The event is read back from
    /// the record's MSG; the relay's own records (integrity checkpoints, whose MSG is not an
    /// audit event) always go, so that a chain stays verifiable where it is delivered.
    pub fn wants(&self, record: &[u8]) -> bool {
        let Some(f) = fields(record) else {
            return true;
        };
        let msg = &record[f.msg_start..];
        let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
        let Ok(item) = serde_json::from_slice::<&RawValue>(msg) else {
            return true;
        };
        match EventView::parse(0, item) {
            Ok(view) => self.policy.keep(item.get(), &view),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;

    fn rule(action: Action, namespace: &[&str]) -> FilterRule {
        toml::from_str::<FilterRule>(&format!(
            "action = \"{}\"\nnamespace = {:?}\n",
            match action {
                Action::Keep => "keep",
                Action::Drop => "drop",
            },
            namespace
        ))
        .unwrap()
    }

    fn record(msg: &str) -> Vec<u8> {
        format!("<110>1 2024-01-01T00:00:00Z h kube-apiserver - ResponseComplete - {msg}")
            .into_bytes()
    }

    #[test]
    fn a_tenant_gets_its_namespaces_only() {
        // A bare `drop` (no field given) matches every event: the tenant gets nothing else.
        let drop_rest = toml::from_str::<FilterRule>("action = \"drop\"\n").unwrap();
        let route = Route::new(&[rule(Action::Keep, &["team-a", "team-a-*"]), drop_rest]).unwrap();
        let ev = |ns: &str| {
            record(&format!(
                r#"{{"kind":"Event","auditID":"1","stage":"ResponseComplete","objectRef":{{"namespace":"{ns}","resource":"pods"}}}}"#
            ))
        };
        assert!(route.wants(&ev("team-a")));
        assert!(route.wants(&ev("team-a-dev")));
        assert!(!route.wants(&ev("team-b")));
        // Cluster-scoped events (no namespace) are not the tenant's either.
        let cluster =
            record(r#"{"kind":"Event","auditID":"2","stage":"ResponseComplete","verb":"list"}"#);
        assert!(!route.wants(&cluster));
        // With only `drop namespace = ["*"]`, a missing namespace matches no glob: kept.
        let loose =
            Route::new(&[rule(Action::Keep, &["team-a"]), rule(Action::Drop, &["*"])]).unwrap();
        assert!(loose.wants(&cluster));
        assert!(!loose.wants(&ev("team-b")));
        // The relay's own records always go.
        assert!(route.wants(&record(r#"{"kind":"AuditTrailCheckpoint","chain":"c"}"#)));
        assert!(Route::new(&[]).is_none());
    }
}
