//! Per-destination changes to an already rendered RFC 5424 record: the RFC 3164 (BSD) format
//! for old receivers, and shortening to a size limit with the apiserver's truncation rule.
//!
//! The records are the relay's own, so their header is read with a light scan ([`fields`])
//! instead of the strict checker.

use crate::audit::truncate_event;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The header fields of a record the relay rendered, and where MSG starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    /// PRI digits.
    pub pri: &'a [u8],
    /// TIMESTAMP.
    pub timestamp: &'a [u8],
    /// HOSTNAME.
    pub hostname: &'a [u8],
    /// APP-NAME.
    pub app_name: &'a [u8],
    /// Where STRUCTURED-DATA (`-` or the elements) lies in the record.
    pub sd: std::ops::Range<usize>,
    /// Offset of MSG in the record (the record's length when it has none).
    pub msg_start: usize,
}

/// Splits `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`; `None` when `record`
/// does not have that shape.
pub fn fields(record: &[u8]) -> Option<Fields<'_>> {
    let close = record.iter().take(5).position(|&b| b == b'>')?;
    let pri = record.get(1..close)?;
    let mut at = close + 1;
    let next = |at: &mut usize| -> Option<&[u8]> {
        let rest = record.get(*at..)?;
        let len = rest.iter().position(|&b| b == b' ')?;
        let field = &rest[..len];
        *at += len + 1;
        Some(field)
    };
    let _version = next(&mut at)?;
    let timestamp = next(&mut at)?;
    let hostname = next(&mut at)?;
    let app_name = next(&mut at)?;
    let _procid = next(&mut at)?;
    let _msgid = next(&mut at)?;
    let sd_start = at;
    let sd_end = at + structured_data_len(record.get(at..)?)?;
    let msg_start = match record.get(sd_end) {
        None => record.len(),
        Some(b' ') => sd_end + 1,
        Some(_) => return None,
    };
    Some(Fields {
        pri,
        timestamp,
        hostname,
        app_name,
        sd: sd_start..sd_end,
        msg_start,
    })
}

/// Where MSG starts in a record the relay rendered.
pub fn msg_start(record: &[u8]) -> Option<usize> {
    fields(record).map(|f| f.msg_start)
}

/// Length of the STRUCTURED-DATA at the start of `sd`: `-` or `[..]` elements, with `\`
/// escapes inside quoted values.
fn structured_data_len(sd: &[u8]) -> Option<usize> {
    if sd.first() == Some(&b'-') {
        return Some(1);
    }
    // memchr rather than a byte loop: this runs for every stored record with the chain on.
    let mut i = 0;
    while sd.get(i) == Some(&b'[') {
        i += 1;
        loop {
            // Outside a value: the element ends at `]` unless a value starts first.
            i += memchr::memchr2(b'"', b']', sd.get(i..)?)?;
            if sd[i] == b']' {
                break;
            }
            // Inside a value: `\` escapes the next byte; `"` closes it.
            i += 1;
            loop {
                i += memchr::memchr2(b'"', b'\\', sd.get(i..)?)?;
                if sd[i] == b'"' {
                    break;
                }
                i += 2;
            }
            i += 1;
        }
        i += 1;
    }
    (i > 0).then_some(i)
}

/// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG` from an RFC 5424 record (RFC 3164 §4.1). The
/// timestamp keeps the record's UTC time without year and fraction, as RFC 3164 has no room
/// for them; TAG is the APP-NAME cut to 32 characters. `None` if `record` is not RFC 5424.
pub fn to_rfc3164(record: &[u8]) -> Option<Vec<u8>> {
    let f = fields(record)?;
    let ts = f.timestamp;
    let digits = |r: std::ops::Range<usize>| -> Option<usize> {
        std::str::from_utf8(ts.get(r)?).ok()?.parse().ok()
    };
    let mut out = Vec::with_capacity(record.len());
    out.push(b'<');
    out.extend_from_slice(f.pri);
    out.push(b'>');
    match (digits(5..7), digits(8..10), ts.get(11..19)) {
        (Some(month), Some(day), Some(time)) if (1..=12).contains(&month) => {
            out.extend_from_slice(format!("{} {day:>2} ", MONTHS[month - 1]).as_bytes());
            out.extend_from_slice(time);
        }
        _ => out.extend_from_slice(b"Jan  1 00:00:00"),
    }
    out.push(b' ');
    out.extend_from_slice(f.hostname);
    out.push(b' ');
    out.extend_from_slice(&f.app_name[..f.app_name.len().min(32)]);
    out.extend_from_slice(b": ");
    out.extend_from_slice(&record[f.msg_start..]);
    Some(out)
}

/// The record with its event shortened by the apiserver's rule (request and response
/// objects dropped, `audit.k8s.io/truncated` set); the header is kept as it is. `None` when
/// the MSG is not an event object.
pub fn truncate_record(record: &[u8]) -> Option<Vec<u8>> {
    let at = msg_start(record)?;
    let short = truncate_event(std::str::from_utf8(&record[at..]).ok()?)?;
    let mut out = Vec::with_capacity(at + short.len());
    out.extend_from_slice(&record[..at]);
    out.extend_from_slice(short.as_bytes());
    Some(out)
}

/// Shortens a record to at most `max` bytes by the apiserver's rule. `None` when it cannot
/// be made to fit.
pub fn fit(record: &[u8], max: usize) -> Option<Vec<u8>> {
    if record.len() <= max {
        return Some(record.to_vec());
    }
    truncate_record(record).filter(|out| out.len() <= max)
}

/// The event's `auditID`, found in MSG without parsing the JSON (for log lines).
pub fn audit_id(record: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"auditID\":\"";
    let msg = &record[msg_start(record)?..];
    let start = msg.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = msg[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&msg[start..start + len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3164_from_rfc5424() {
        let r = b"<109>1 2023-06-02T09:31:06.123456Z node-1 kube-apiserver - ResponseComplete - {\"a\":1}";
        assert_eq!(
            String::from_utf8(to_rfc3164(r).unwrap()).unwrap(),
            "<109>Jun  2 09:31:06 node-1 kube-apiserver: {\"a\":1}"
        );
    }

    #[test]
    fn fields_skip_structured_data() {
        let r = b"<1>1 - h a - m [x@1 k=\"a ] \\\" b\"][y@2 z=\"\"] {\"m\":1}";
        let f = fields(r).unwrap();
        assert_eq!(&r[f.msg_start..], b"{\"m\":1}");
        assert_eq!(msg_start(b"<1>1 - h a - m -"), Some(16));
        assert_eq!(fields(b"<1>1 - h a - m [x"), None);
        // An escaped backslash before the closing quote; a backslash at the very end.
        let r = b"<1>1 - h a - m [x@1 k=\"a\\\\\"] M";
        assert_eq!(&r[fields(r).unwrap().msg_start..], b"M");
        assert_eq!(fields(b"<1>1 - h a - m [x@1 k=\"\\"), None);
        assert_eq!(fields(b"<1>1 - h a - m [x@1 k=\"v\""), None);
    }

    #[test]
    fn audit_ids_are_found_in_msg() {
        assert_eq!(
            audit_id(b"<1>1 - h a - m [x@1 k=\"auditID\"] {\"stage\":\"S\",\"auditID\":\"id-1\"}"),
            Some("id-1")
        );
        assert_eq!(audit_id(b"<1>1 - h a - m - {}"), None);
    }

    #[test]
    fn fit_truncates_then_gives_up() {
        let big = "x".repeat(1000);
        let r = format!(
            "<110>1 - h app - S - {{\"auditID\":\"a\",\"requestObject\":{{\"d\":\"{big}\"}}}}"
        );
        let short = String::from_utf8(fit(r.as_bytes(), 200).unwrap()).unwrap();
        assert_eq!(
            short,
            "<110>1 - h app - S - {\"auditID\":\"a\",\"annotations\":{\"audit.k8s.io/truncated\":\"true\"}}"
        );
        assert!(fit(r.as_bytes(), 30).is_none());
        assert_eq!(
            fit(b"<1>1 - - - - - {}", 100).unwrap(),
            b"<1>1 - - - - - {}"
        );
    }
}
