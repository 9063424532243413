//! RFC 5424 TIMESTAMP values: RFC 3339 in UTC with at most six fractional digits.
//!
//! Audit timestamps are Kubernetes `MicroTime` (`2024-05-01T10:20:30.123456Z`), already in
//! that form; other offsets and longer fractions are normalised, invalid values rejected so
//! that the caller falls back to the next timestamp field.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// Normalises an RFC 3339 timestamp to UTC (`Z`) with at most six fractional digits.
/// Returns `None` when `s` is not a valid RFC 3339 date-time in years 0000-9999; `s` itself
/// when it is already in that form (Kubernetes' MicroTime always is).
pub fn normalize(s: &str) -> Option<Cow<'_, str>> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')),
        )
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let second = num(17..19)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut fraction = "";
    let mut cut = false;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        fraction = &s[start..end.min(start + 6)];
        cut = end > start + 6;
        i = end;
    }
    // Kubernetes' MicroTime is already canonical: the common case, copied without
    // re-formatting (this runs for every event).
    if b[10] == b'T' && !cut && b.get(i..) == Some(b"Z".as_slice()) {
        return Some(Cow::Borrowed(s));
    }
    let offset_seconds = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - offset_seconds;
    let (y, _, _, _, _, _) = civil_from_unix(utc);
    if !(0..=9999).contains(&y) {
        return None;
    }
    Some(Cow::Owned(format_unix(utc, fraction)))
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (CEF `rt`, OCSF `time`).
pub fn unix_millis(s: &str) -> Option<i64> {
    let n = normalize(s)?;
    let b = n.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let seconds = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let millis = match b.get(19) {
        Some(b'.') => {
            let digits: String = n[20..n.len() - 1]
                .chars()
                .chain("000".chars())
                .take(3)
                .collect();
            digits.parse().ok()?
        }
        _ => 0,
    };
    Some(seconds * 1000 + millis)
}

/// The current time as an RFC 5424 TIMESTAMP with microseconds.
pub fn now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(0);
    format_unix(seconds, &format!("{:06}", since.subsec_micros()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch.
pub fn format_seconds(seconds: i64) -> String {
    format_unix(seconds, "")
}

fn format_unix(seconds: i64, fraction: &str) -> String {
    let (y, mo, d, h, mi, s) = civil_from_unix(seconds);
    if fraction.is_empty() {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{fraction}Z")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_unix(seconds: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_micro_time() {
        assert_eq!(
            normalize("2023-06-13T09:31:06.123456Z").unwrap(),
            "2023-06-13T09:31:06.123456Z"
        );
        assert_eq!(
            normalize("2023-06-13T09:31:06Z").unwrap(),
            "2023-06-13T09:31:06Z"
        );
        // Not canonical: re-formatted, not copied.
        assert_eq!(
            normalize("2023-06-13t09:31:06.5z").unwrap(),
            "2023-06-13T09:31:06.5Z"
        );
    }

    #[test]
    fn cuts_fraction_and_converts_offset() {
        assert_eq!(
            normalize("2023-06-13T09:31:06.123456789Z").unwrap(),
            "2023-06-13T09:31:06.123456Z"
        );
        assert_eq!(
            normalize("2024-01-01T01:30:00.5+02:00").unwrap(),
            "2023-12-31T23:30:00.5Z"
        );
        assert_eq!(
            normalize("2024-02-28T23:00:00-01:00").unwrap(),
            "2024-02-29T00:00:00Z"
        );
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-06-13 09:31:06Z",
            "2023-06-13T09:31:60Z",
            "2023-06-13T09:31:06",
            "2023-06-13T09:31:06.Z",
            "2023-06-13T09:31:06Zjunk",
            "0000-01-01T00:00:00+01:00",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_millis_of_rfc3339() {
        assert_eq!(unix_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_millis("2023-06-13T09:31:06.123456Z"),
            Some(1_686_648_666_123)
        );
        assert_eq!(
            unix_millis("2023-06-13T11:31:06.5+02:00"),
            Some(1_686_648_666_500)
        );
        assert_eq!(unix_millis("garbage"), None);
    }

    #[test]
    fn now_is_valid() {
        let n = now();
        assert_eq!(normalize(&n).as_deref(), Some(n.as_str()));
        assert!(matches!(normalize(&n), Some(Cow::Borrowed(_))));
    }
}
