//! Per-destination changes to an already rendered RFC 5424 record: the RFC 3164 (BSD) format
//! for old receivers, and shortening to a datagram size limit with the apiserver's truncation
//! rule.

use crate::audit::truncate_event;
use crate::syslog::check::parse_strict;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG` from an RFC 5424 record (RFC 3164 §4.1). The
/// timestamp keeps the record's UTC time without year and fraction, as RFC 3164 has no room
/// for them; TAG is the APP-NAME cut to 32 characters. `None` if `record` is not RFC 5424.
pub fn to_rfc3164(record: &[u8]) -> Option<Vec<u8>> {
    let m = parse_strict(record).ok()?;
    let ts = m.timestamp.as_bytes();
    let stamp = if ts.len() >= 19 {
        let month: usize = std::str::from_utf8(&ts[5..7]).ok()?.parse().ok()?;
        let day: u32 = std::str::from_utf8(&ts[8..10]).ok()?.parse().ok()?;
        format!(
            "{} {day:>2} {}",
            MONTHS.get(month.checked_sub(1)?)?,
            std::str::from_utf8(&ts[11..19]).ok()?
        )
    } else {
        "Jan  1 00:00:00".to_owned()
    };
    let tag: String = m.app_name.chars().take(32).collect();
    let mut out = Vec::with_capacity(record.len());
    out.extend_from_slice(format!("<{}>{stamp} {} {tag}: ", m.pri, m.hostname).as_bytes());
    out.extend_from_slice(m.msg);
    Some(out)
}

/// Shortens a record to at most `max` bytes by dropping the event's request and response
/// objects (the apiserver's rule). `None` when it cannot be made to fit.
pub fn fit(record: &[u8], max: usize) -> Option<Vec<u8>> {
    if record.len() <= max {
        return Some(record.to_vec());
    }
    let m = parse_strict(record).ok()?;
    let header_len = record.len() - m.msg.len();
    let short = truncate_event(std::str::from_utf8(m.msg).ok()?)?;
    let mut out = Vec::with_capacity(header_len + short.len());
    out.extend_from_slice(&record[..header_len]);
    out.extend_from_slice(short.as_bytes());
    (out.len() <= max).then_some(out)
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
