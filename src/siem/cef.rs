//! ArcSight Common Event Format (CEF) 0:
//! `CEF:0|Kubernetes|kube-apiserver|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`.
//!
//! Escaping as the CEF specification (Implementing ArcSight CEF, revision 25) says: in the
//! header `\` and `|` are escaped with a backslash; in extension values `\` and `=` are, and
//! line breaks are written as `\n` / `\r`. Extension keys are the specification's own
//! dictionary names; `cs1`..`cs6` and `cn1` carry a `...Label`.

use super::{Event, push_char, push_pair};

/// CEF severity (0-10) of a syslog severity (0-7): the worse, the higher.
pub fn severity(syslog: u8) -> u8 {
    match syslog {
        0..=2 => 10,
        3 => 8,
        4 => 6,
        5 => 4,
        6 => 2,
        _ => 1,
    }
}

/// Appends a header field, escaped.
pub fn push_header(out: &mut Vec<u8>, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '|' => out.extend_from_slice(b"\\|"),
            '\r' | '\n' => out.push(b' '),
            c => push_char(out, c),
        }
    }
}

/// Appends an extension value, escaped.
pub fn push_value(out: &mut Vec<u8>, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '=' => out.extend_from_slice(b"\\="),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            c => push_char(out, c),
        }
    }
}

fn pair(out: &mut Vec<u8>, key: &str, value: &str) {
    push_pair(out, b' ', key, value, push_value);
}

fn labelled(out: &mut Vec<u8>, key: &str, label: &str, value: Option<&str>) {
    if let Some(v) = value {
        pair(out, &format!("{key}Label"), label);
        pair(out, key, v);
    }
}

/// The event as one CEF line; the whole event JSON goes in `cs6` (label `event`) when the
/// line stays within `max` bytes with it.
pub fn render(e: &Event<'_>, max: usize) -> Vec<u8> {
    let o = e.object();
    let mut out = Vec::with_capacity(512 + e.json.len() * 2);
    out.extend_from_slice(b"CEF:0|Kubernetes|kube-apiserver|");
    push_header(
        &mut out,
        o.api_version
            .as_deref()
            .map_or("audit.k8s.io/v1", |_| "audit.k8s.io/v1"),
    );
    out.push(b'|');
    let target = e.target();
    push_header(&mut out, &format!("{}:{target}", e.verb()));
    out.push(b'|');
    let mut name = format!("{} {target}", e.verb());
    if let Some(n) = &o.name {
        match &o.namespace {
            Some(ns) => name.push_str(&format!(" {ns}/{n}")),
            None => name.push_str(&format!(" {n}")),
        }
    }
    push_header(&mut out, &name);
    out.push(b'|');
    out.extend_from_slice(severity(e.syslog_severity()).to_string().as_bytes());
    out.push(b'|');
    if let Some(ms) = e.time_millis() {
        pair(&mut out, "rt", &ms.to_string());
    }
    pair(&mut out, "act", e.verb());
    pair(&mut out, "suser", e.view.username());
    // `src` is an IPv4 address and `c6a2` an IPv6 one; anything else (a redacted or
    // malformed address) goes in `shost`, the free-form source host.
    match e.source_ip() {
        Some(ip) if ip.parse::<std::net::Ipv4Addr>().is_ok() => pair(&mut out, "src", ip),
        Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
            labelled(&mut out, "c6a2", "sourceIPv6", Some(ip));
        }
        Some(other) => pair(&mut out, "shost", other),
        None => {}
    }
    if let Some(m) = e.http_method() {
        pair(&mut out, "requestMethod", m);
    }
    if let Some(uri) = &e.extra.request_uri {
        pair(&mut out, "request", uri);
    }
    if let Some(ua) = &e.extra.user_agent {
        pair(&mut out, "requestClientApplication", ua);
    }
    if let Some(ok) = e.succeeded() {
        pair(&mut out, "outcome", if ok { "success" } else { "failure" });
    }
    labelled(&mut out, "cs1", "auditID", Some(&e.view.audit_id));
    labelled(&mut out, "cs2", "stage", Some(&e.view.stage));
    labelled(&mut out, "cs3", "namespace", o.namespace.as_deref());
    labelled(&mut out, "cs4", "resource", o.resource.as_deref());
    labelled(&mut out, "cs5", "subresource", o.subresource.as_deref());
    if let Some(code) = e.view.code() {
        labelled(&mut out, "cn1", "responseCode", Some(&code.to_string()));
    }
    let without_event = out.len();
    labelled(&mut out, "cs6", "event", Some(e.json));
    if out.len() > max {
        out.truncate(without_event);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_specification_examples() {
        // Header: "detected a \ in packet" and "detected a | in message".
        let mut h = Vec::new();
        push_header(&mut h, r"detected a \ in packet");
        assert_eq!(h, br"detected a \\ in packet");
        let mut h = Vec::new();
        push_header(&mut h, "detected a | in message");
        assert_eq!(h, br"detected a \| in message");
        // Extension: "a = b", "c:\path", a line break.
        let mut v = Vec::new();
        push_value(&mut v, "This is a = sign");
        assert_eq!(v, br"This is a \= sign");
        let mut v = Vec::new();
        push_value(&mut v, r"C:\Windows");
        assert_eq!(v, br"C:\\Windows");
        let mut v = Vec::new();
        push_value(&mut v, "line1\nline2\r");
        assert_eq!(v, br"line1\nline2\r");
        // A pipe needs no escape in an extension value.
        let mut v = Vec::new();
        push_value(&mut v, "a|b");
        assert_eq!(v, b"a|b");
    }

    #[test]
    fn severity_keeps_the_syslog_order() {
        assert_eq!(severity(2), 10);
        assert!(
            severity(3) > severity(4) && severity(4) > severity(5) && severity(5) > severity(6)
        );
    }
}
