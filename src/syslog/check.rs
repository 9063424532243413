//! A strict RFC 5424 parser: every header field checked against the ABNF (lengths,
//! PRINTUSASCII, PRI range, TIMESTAMP form, SD escaping). Looser parsers (syslog_loose,
//! the receivers) accept what this rejects; tests, fuzzing and the benchmark sink use it to
//! prove that every record the relay writes is valid. The relay itself reads its own records
//! with the light scan of [`crate::syslog::convert::fields`].

use crate::syslog::timestamp;

/// The fields of a valid RFC 5424 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc5424<'a> {
    /// PRI value (facility * 8 + severity).
    pub pri: u8,
    /// TIMESTAMP, or `-`.
    pub timestamp: &'a str,
    /// HOSTNAME.
    pub hostname: &'a str,
    /// APP-NAME.
    pub app_name: &'a str,
    /// PROCID.
    pub procid: &'a str,
    /// MSGID.
    pub msgid: &'a str,
    /// STRUCTURED-DATA as written (`-` or the elements).
    pub structured_data: &'a str,
    /// Whether MSG starts with a UTF-8 BOM (then `msg` excludes it).
    pub bom: bool,
    /// MSG, empty when absent.
    pub msg: &'a [u8],
}

/// Parses `message` strictly.
///
/// # Errors
/// A description of the first violation found.
pub fn parse_strict(message: &[u8]) -> Result<Rfc5424<'_>, String> {
    let rest = message.strip_prefix(b"<").ok_or("no `<` at start")?;
    let close = rest
        .iter()
        .take(4)
        .position(|&b| b == b'>')
        .ok_or("PRI not closed")?;
    let pri_digits = &rest[..close];
    if pri_digits.is_empty()
        || (pri_digits.len() > 1 && pri_digits[0] == b'0')
        || !pri_digits.iter().all(u8::is_ascii_digit)
    {
        return Err("PRI is not 1-3 digits without leading zero".into());
    }
    let pri: u16 = std::str::from_utf8(pri_digits)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|_| "PRI")?;
    let pri = u8::try_from(pri)
        .ok()
        .filter(|p| *p <= 191)
        .ok_or("PRI above 191")?;
    let rest = rest[close + 1..]
        .strip_prefix(b"1 ")
        .ok_or("VERSION is not `1 `")?;
    let (timestamp, rest) = field(rest, 64, "TIMESTAMP")?;
    if timestamp != "-" {
        let fraction_ok = timestamp
            .split_once('.')
            .is_none_or(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).count() <= 6);
        if timestamp::normalize(timestamp).is_none() || !fraction_ok {
            return Err(format!(
                "TIMESTAMP `{timestamp}` is not RFC 3339 with at most 6 fractional digits"
            ));
        }
    }
    let (hostname, rest) = field(rest, 255, "HOSTNAME")?;
    let (app_name, rest) = field(rest, 48, "APP-NAME")?;
    let (procid, rest) = field(rest, 128, "PROCID")?;
    let (msgid, rest) = field(rest, 32, "MSGID")?;
    let sd_len = structured_data_len(rest)?;
    let structured_data =
        std::str::from_utf8(&rest[..sd_len]).map_err(|_| "STRUCTURED-DATA is not UTF-8")?;
    let rest = &rest[sd_len..];
    let msg = match rest {
        [] => &[][..],
        [b' ', msg @ ..] => msg,
        _ => return Err("no space after STRUCTURED-DATA".into()),
    };
    let (bom, msg) = match msg.strip_prefix(b"\xEF\xBB\xBF") {
        Some(m) => {
            std::str::from_utf8(m).map_err(|_| "MSG after a BOM is not UTF-8")?;
            (true, m)
        }
        None => (false, msg),
    };
    Ok(Rfc5424 {
        pri,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        bom,
        msg,
    })
}

/// One header field: 1 to `max` PRINTUSASCII characters followed by a space.
fn field<'a>(buf: &'a [u8], max: usize, name: &str) -> Result<(&'a str, &'a [u8]), String> {
    let end = buf
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| format!("{name}: no space after it"))?;
    let value = &buf[..end];
    if value.is_empty() || value.len() > max {
        return Err(format!("{name}: length {} not in 1..={max}", value.len()));
    }
    if !value.iter().all(|b| (33..=126).contains(b)) {
        return Err(format!("{name}: not PRINTUSASCII"));
    }
    let value = std::str::from_utf8(value).map_err(|_| format!("{name}: not ASCII"))?;
    Ok((value, &buf[end + 1..]))
}

/// Length of the STRUCTURED-DATA at the start of `buf`.
fn structured_data_len(buf: &[u8]) -> Result<usize, String> {
    if buf.first() == Some(&b'-') {
        return Ok(1);
    }
    let mut i = 0;
    while buf.get(i) == Some(&b'[') {
        i += 1;
        i += sd_name(&buf[i..], "SD-ID")?;
        loop {
            match buf.get(i) {
                Some(b']') => {
                    i += 1;
                    break;
                }
                Some(b' ') => {
                    i += 1;
                    i += sd_name(&buf[i..], "PARAM-NAME")?;
                    if buf.get(i..i + 2) != Some(b"=\"") {
                        return Err("PARAM-NAME not followed by `=\"`".into());
                    }
                    i += 2;
                    loop {
                        match buf.get(i) {
                            None => return Err("PARAM-VALUE not closed".into()),
                            Some(b'\\') => i += 2,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b']') => return Err("unescaped `]` in PARAM-VALUE".into()),
                            Some(_) => i += 1,
                        }
                    }
                }
                _ => return Err("SD-ELEMENT not closed".into()),
            }
        }
    }
    if i == 0 {
        return Err("STRUCTURED-DATA is neither `-` nor `[`".into());
    }
    Ok(i)
}

fn sd_name(buf: &[u8], what: &str) -> Result<usize, String> {
    let n = buf
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
        .count();
    if n == 0 || n > 32 {
        return Err(format!("{what}: length {n} not in 1..=32"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid() {
        let m = parse_strict(b"<109>1 2023-06-13T09:31:06.123456Z h kube-apiserver - ResponseComplete [x@1 a=\"\\]\\\"\" b=\"\"] {}").unwrap();
        assert_eq!(m.pri, 109);
        assert_eq!(m.msgid, "ResponseComplete");
        assert_eq!(m.structured_data, "[x@1 a=\"\\]\\\"\" b=\"\"]");
        assert_eq!(m.msg, b"{}");
        assert!(parse_strict(b"<0>1 - - - - - -").is_ok());
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            &b"<192>1 - - - - - -"[..],
            b"<01>1 - - - - - -",
            b"<1>2 - - - - - -",
            b"<1>1 2023-06-13T09:31:06.1234567Z - - - - -",
            b"<1>1 - h\x01 - - - -",
            b"<1>1 - - - - 123456789012345678901234567890123 -",
            b"<1>1 - - - - - [a b=\"]\"]",
            b"<1>1 - - - - - x",
            b"<1>1 - - - - -x",
        ] {
            assert!(
                parse_strict(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
