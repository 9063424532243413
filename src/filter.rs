//! Routing policy applied before the queue: filter rules that keep or drop events by stage,
//! verb, user or group (globs), namespace, resource, level and response code; and redaction of
//! JSON pointers (e.g. `/requestObject/data` of Secrets) with a fixed marker.
//!
//! Rules are tried in order and the first that matches decides; an event no rule matches is
//! kept. Within a rule every field given must match (a list matches when any entry does).
//! Redaction rewrites only the members on the pointer's path; every other byte, and the key
//! order, stay as received, and the result is valid JSON.

use serde_json::value::RawValue;

use crate::audit::{EventView, OrderedObject, RoutingView};
use crate::config::{Action, FilterRule, RedactRule};

/// What replaces a redacted value.
pub const REDACTED: &str = "\"[REDACTED]\"";

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl FilterRule {
    /// Whether every given field matches the event.
    pub fn matches(&self, e: &EventView<'_>, r: &RoutingView<'_>) -> bool {
        let any_glob =
            |patterns: &[String], value: &str| patterns.iter().any(|p| glob_match(p, value));
        let field = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty() || value.is_some_and(|v| any_glob(patterns, v))
        };
        let object = r.object_ref.as_ref();
        field(&self.stage, Some(&e.stage))
            && field(&self.verb, e.verb.as_deref())
            && field(&self.user, Some(e.username()))
            && (self.group.is_empty()
                || r.user
                    .as_ref()
                    .is_some_and(|u| u.groups.iter().any(|g| any_glob(&self.group, g))))
            && field(&self.namespace, object.and_then(|o| o.namespace.as_deref()))
            && field(&self.resource, object.and_then(|o| o.resource.as_deref()))
            && field(&self.level, r.level.as_deref())
            && (self.code.is_empty() || e.code().is_some_and(|c| self.code.contains(&c)))
    }
}

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    filters: Vec<FilterRule>,
    redactions: Vec<(Vec<String>, Vec<String>)>,
}

impl Policy {
    /// Builds the policy from the configured rules.
    pub fn new(filters: &[FilterRule], redactions: &[RedactRule]) -> Self {
        Self {
            filters: filters.to_vec(),
            redactions: redactions
                .iter()
                .map(|r| (r.pointer.segments().to_vec(), r.resource.clone()))
                .collect(),
        }
    }

    /// Whether the event is relayed.
    pub fn keep(&self, item: &str, e: &EventView<'_>) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        let r = RoutingView::parse(item);
        self.filters
            .iter()
            .find(|f| f.matches(e, &r))
            .is_none_or(|f| f.action == Action::Keep)
    }

    /// The item with every applicable pointer redacted, or `None` when nothing changed.
    pub fn redact(&self, item: &str) -> Option<String> {
        if self.redactions.is_empty() {
            return None;
        }
        let scoped = self
            .redactions
            .iter()
            .any(|(_, resources)| !resources.is_empty());
        let routing = if scoped {
            RoutingView::parse(item)
        } else {
            RoutingView::default()
        };
        let resource = routing.resource();
        let mut current: Option<String> = None;
        for (path, resources) in &self.redactions {
            if !resources.is_empty() && !resources.iter().any(|r| r == resource) {
                continue;
            }
            let text = current.as_deref().unwrap_or(item);
            if let Some(next) = redact_path(text, path) {
                current = Some(next);
            }
        }
        current
    }
}

/// Replaces the value at `path` in the JSON `text`; `None` when the path does not exist.
fn redact_path(text: &str, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let object: OrderedObject<'_> = serde_json::from_str(text).ok()?;
        let index = object.0.iter().position(|(k, _)| k == first)?;
        let replacement = if rest.is_empty() {
            REDACTED.to_owned()
        } else {
            redact_path(object.0[index].1.get(), rest)?
        };
        let mut out = String::with_capacity(text.len());
        out.push('{');
        for (i, (k, v)) in object.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).ok()?);
            out.push(':');
            out.push_str(if i == index { &replacement } else { v.get() });
        }
        out.push('}');
        Some(out)
    } else if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
        let index: usize = first.parse().ok()?;
        let target = items.get(index)?;
        let replacement = if rest.is_empty() {
            REDACTED.to_owned()
        } else {
            redact_path(target.get(), rest)?
        };
        let parts: Vec<&str> = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i == index {
                    replacement.as_str()
                } else {
                    v.get()
                }
            })
            .collect();
        Some(format!("[{}]", parts.join(",")))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: &str) -> (Box<RawValue>, String) {
        (serde_json::from_str(json).unwrap(), json.to_owned())
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "system:serviceaccount:kube-system:*",
            "system:serviceaccount:kube-system:coredns"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c", "abd"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules: Vec<FilterRule> =
            toml::from_str::<std::collections::HashMap<String, Vec<FilterRule>>>(
                r#"filter = [
                { action = "keep", user = ["admin"] },
                { action = "drop", verb = ["get", "list", "watch"] },
                { action = "drop", group = ["system:nodes"], resource = ["leases"] },
            ]"#,
            )
            .unwrap()
            .remove("filter")
            .unwrap();
        let policy = Policy::new(&rules, &[]);
        let keep = |json: &str| {
            let (raw, _) = view(json);
            policy.keep(raw.get(), &EventView::parse(0, &raw).unwrap())
        };
        assert!(keep(
            r#"{"auditID":"1","stage":"S","verb":"get","user":{"username":"admin"}}"#
        ));
        assert!(!keep(
            r#"{"auditID":"1","stage":"S","verb":"get","user":{"username":"bob"}}"#
        ));
        assert!(!keep(
            r#"{"auditID":"1","stage":"S","verb":"update","user":{"username":"n","groups":["system:nodes"]},"objectRef":{"resource":"leases"}}"#
        ));
        assert!(keep(
            r#"{"auditID":"1","stage":"S","verb":"update","user":{"username":"n","groups":["system:nodes"]},"objectRef":{"resource":"pods"}}"#
        ));
        assert!(keep(r#"{"auditID":"1","stage":"S","verb":"create"}"#));
    }

    #[test]
    fn redaction_keeps_order_and_validity() {
        let rule = |p: &str, r: &[&str]| RedactRule {
            pointer: crate::config::JsonPointer::parse(p).unwrap(),
            resource: r.iter().map(|s| (*s).to_owned()).collect(),
        };
        let policy = Policy::new(
            &[],
            &[
                rule("/requestObject/data", &["secrets"]),
                rule("/annotations/a~1b", &[]),
                rule("/list/1", &[]),
            ],
        );
        let (raw, _) = view(
            r#"{"auditID":"1","stage":"S","objectRef":{"resource":"secrets"},"requestObject":{"kind":"Secret","data":{"k":"c2VjcmV0"}},"annotations":{"a/b":"x","c":"y"},"list":[1,{"n":2},3]}"#,
        );
        assert_eq!(
            policy.redact(raw.get()).unwrap(),
            r#"{"auditID":"1","stage":"S","objectRef":{"resource":"secrets"},"requestObject":{"kind":"Secret","data":"[REDACTED]"},"annotations":{"a/b":"[REDACTED]","c":"y"},"list":[1,"[REDACTED]",3]}"#
        );
        let (raw, _) = view(
            r#"{"auditID":"1","stage":"S","objectRef":{"resource":"configmaps"},"requestObject":{"data":{}}}"#,
        );
        assert_eq!(
            policy.redact(raw.get()),
            None,
            "the secrets-only rule does not apply; no other path exists"
        );
    }
}
