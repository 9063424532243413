//! IBM QRadar Log Event Extended Format (LEEF) 2.0:
//! `LEEF:2.0|Kubernetes|kube-apiserver|VERSION|EVENTID|x09|key=value<TAB>key=value...`.
//!
//! LEEF has no escape mechanism: IBM's guidelines ask that values not contain the attribute
//! delimiter, and header fields not contain `|`. The delimiter declared here is the tab
//! (`x09`, LEEF 2.0's hex form), which compact JSON never contains unescaped; a tab or line
//! break inside a decoded value is written as a space, and a `|` in a header field as `_`.
//! `devTime` carries milliseconds with its `devTimeFormat` (Java `SimpleDateFormat`).

use super::{Event, push_char, push_pair};

/// The attribute delimiter.
pub const DELIMITER: char = '\t';

/// The `devTimeFormat` of `devTime`.
pub const DEV_TIME_FORMAT: &str = "yyyy-MM-dd'T'HH:mm:ss.SSSX";

/// Appends a header field: `|`, tabs and line breaks replaced.
pub fn push_header(out: &mut Vec<u8>, value: &str) {
    for c in value.chars() {
        match c {
            '|' => out.push(b'_'),
            '\t' | '\r' | '\n' => out.push(b' '),
            c => push_char(out, c),
        }
    }
}

/// Appends an attribute value: the delimiter and line breaks become spaces.
pub fn push_value(out: &mut Vec<u8>, value: &str) {
    for c in value.chars() {
        match c {
            '\t' | '\r' | '\n' => out.push(b' '),
            c => push_char(out, c),
        }
    }
}

fn pair(out: &mut Vec<u8>, key: &str, value: &str) {
    push_pair(out, DELIMITER as u8, key, value, push_value);
}

/// `2023-06-13T09:31:06.123Z` from an event timestamp (milliseconds since the epoch).
fn dev_time(millis: i64) -> String {
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let stamp = crate::syslog::timestamp::format_seconds(secs);
    format!("{}.{ms:03}Z", &stamp[..stamp.len() - 1])
}

/// The event as one LEEF 2.0 line; the whole event JSON goes in `event` when the line stays
/// within `max` bytes with it.
pub fn render(e: &Event<'_>, max: usize) -> Vec<u8> {
    let o = e.object();
    let mut out = Vec::with_capacity(512 + e.json.len());
    out.extend_from_slice(b"LEEF:2.0|Kubernetes|kube-apiserver|audit.k8s.io/v1|");
    push_header(&mut out, &format!("{}:{}", e.verb(), e.target()));
    out.extend_from_slice(b"|x09|");
    if let Some(ms) = e.time_millis() {
        pair(&mut out, "devTime", &dev_time(ms));
        pair(&mut out, "devTimeFormat", DEV_TIME_FORMAT);
    }
    pair(&mut out, "usrName", e.view.username());
    // `src` must be an IP address; anything else (redacted, malformed) is `srcHostName`.
    match e.source_ip() {
        Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => pair(&mut out, "src", ip),
        Some(other) => pair(&mut out, "srcHostName", other),
        None => {}
    }
    pair(&mut out, "cat", &e.target());
    pair(
        &mut out,
        "sev",
        &super::cef::severity(e.syslog_severity()).max(1).to_string(),
    );
    if let Some(uri) = &e.extra.request_uri {
        pair(&mut out, "url", uri);
    }
    pair(&mut out, "auditID", &e.view.audit_id);
    pair(&mut out, "stage", &e.view.stage);
    pair(&mut out, "verb", e.verb());
    for (key, value) in [
        ("namespace", &o.namespace),
        ("resource", &o.resource),
        ("subresource", &o.subresource),
        ("objectName", &o.name),
    ] {
        if let Some(v) = value {
            pair(&mut out, key, v);
        }
    }
    if let Some(code) = e.view.code() {
        pair(&mut out, "responseCode", &code.to_string());
    }
    if let Some(ua) = &e.extra.user_agent {
        pair(&mut out, "userAgent", ua);
    }
    let without_event = out.len();
    pair(&mut out, "event", e.json);
    if out.len() > max {
        out.truncate(without_event);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_carry_the_delimiter_and_headers_never_a_pipe() {
        let mut v = Vec::new();
        push_value(&mut v, "a\tb\nc=d|e^f");
        assert_eq!(v, b"a b c=d|e^f");
        let mut h = Vec::new();
        push_header(&mut h, "get:pods|log");
        assert_eq!(h, b"get:pods_log");
        assert_eq!(dev_time(1_686_648_666_123), "2023-06-13T09:31:06.123Z");
        assert_eq!(dev_time(0), "1970-01-01T00:00:00.000Z");
    }
}
