//! One audit event → one RFC 5424 message (without framing).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID SD [BOM]MSG`, where MSG is the event as one
//! compact JSON line (see [`crate::audit::write_event_line`]). Header fields are sanitised to
//! PRINTUSASCII and cut to their RFC 5424 lengths, so no input can break the framing.

use crate::audit::{self, EventView};
use crate::config::SyslogConfig;
use crate::syslog::frame::write_decimal;
use crate::syslog::timestamp;

/// RFC 5424 field limits.
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const MSGID_MAX: usize = 32;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An event that cannot be relayed within `max_message_bytes`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("event {audit_id} is {bytes} bytes after truncation, above syslog.max_message_bytes")]
pub struct TooLarge {
    /// The event's auditID, for the log line.
    pub audit_id: String,
    /// Size of the truncated record.
    pub bytes: usize,
}

/// A rendered record.
#[derive(Debug)]
pub struct Rendered {
    /// The RFC 5424 message.
    pub message: Vec<u8>,
    /// Whether the apiserver truncation rule had to be applied.
    pub truncated: bool,
}

/// Where the parts of a record the relay rendered are, so that whoever writes into it later
/// (the stampers of [`crate::queue::Stamp`]) need not parse it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The STRUCTURED-DATA (`-` or the elements).
    pub sd: std::ops::Range<usize>,
    /// Where MSG starts (after the space that follows the SD; a BOM is part of MSG).
    pub msg_start: usize,
    /// SHA-256 of MSG without its BOM, when the maker of the layout already has it: the
    /// pipeline hashes MSG once for its dedupe key and the chain, rather than each on its own.
    pub msg_digest: Option<[u8; 32]>,
}

impl Layout {
    /// Where `record`'s parts are: `layout` when it fits the record (the renderer's, handed
    /// along with it), else what parsing the record finds, without a digest; `None` when
    /// `record` is not RFC 5424. A layout that does not fit is not trusted, whoever made it.
    pub fn of(record: &[u8], layout: Option<&Layout>) -> Option<Layout> {
        match layout {
            Some(l) if l.sd.end < l.msg_start && l.msg_start <= record.len() => Some(l.clone()),
            _ => crate::syslog::convert::fields(record).map(|f| Layout {
                sd: f.sd,
                msg_start: f.msg_start,
                msg_digest: None,
            }),
        }
    }
}

/// What [`Renderer::render_into`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Whether the apiserver truncation rule had to be applied.
    pub truncated: bool,
    /// Where the record's parts are.
    pub layout: Layout,
}

/// Renders events with the settings of `[syslog]`.
#[derive(Debug, Clone)]
pub struct Renderer {
    facility: u8,
    /// ` HOSTNAME APP-NAME - `, shared by every record.
    host_app: String,
    /// `[k8saudit@PEN auditID="` when `syslog.enterprise_id` is set: the SD element's
    /// opening, formatted once instead of once per event.
    sd_open: Option<String>,
    bom: bool,
    max_message_bytes: usize,
}

impl Renderer {
    /// Builds a renderer; `hostname` is sanitised here.
    pub fn new(config: &SyslogConfig, hostname: &str) -> Self {
        Self {
            facility: config.facility.get(),
            host_app: format!(
                " {} {} - ",
                sanitize(hostname, HOSTNAME_MAX),
                sanitize(config.app_name.as_str(), APP_NAME_MAX)
            ),
            sd_open: config
                .enterprise_id
                .map(|pen| format!("[k8saudit@{pen} auditID=\"")),
            bom: config.bom,
            max_message_bytes: config.max_message_bytes.as_usize(),
        }
    }

    /// Renders one event. `received_at` is the TIMESTAMP used when the event has no valid
    /// timestamp of its own.
    ///
    /// # Errors
    /// [`TooLarge`] when even the truncated event exceeds `max_message_bytes`.
    pub fn render(
        &self,
        item: &str,
        view: &EventView<'_>,
        received_at: &str,
    ) -> Result<Rendered, TooLarge> {
        let mut message = Vec::with_capacity(item.len() + 160);
        let written = self.render_into(&mut message, item, view, false, received_at)?;
        Ok(Rendered {
            message,
            truncated: written.truncated,
        })
    }

    /// [`Renderer::render`] into `message` (cleared first), so that a batch reuses one
    /// buffer; returns whether the truncation rule was applied and where the SD and MSG are.
    /// `compact`: the item is known to hold no whitespace outside strings
    /// ([`crate::audit::Item::compact`]).
    ///
    /// # Errors
    /// [`TooLarge`] when even the truncated event exceeds `max_message_bytes`.
    pub fn render_into(
        &self,
        message: &mut Vec<u8>,
        item: &str,
        view: &EventView<'_>,
        compact: bool,
        received_at: &str,
    ) -> Result<Written, TooLarge> {
        message.clear();
        let sd = self.write_header(message, view, received_at);
        let layout = Layout {
            msg_start: sd.end + 1,
            sd,
            msg_digest: None,
        };
        let header_len = message.len();
        audit::write_event_line(message, item, view, compact);
        if message.len() <= self.max_message_bytes {
            return Ok(Written {
                truncated: false,
                layout,
            });
        }
        message.truncate(header_len);
        if let Some(short) = audit::truncate_event(item) {
            audit::write_event_line(message, &short, view, false);
        }
        if message.len() > header_len && message.len() <= self.max_message_bytes {
            Ok(Written {
                truncated: true,
                layout,
            })
        } else {
            Err(TooLarge {
                audit_id: view.audit_id.chars().take(64).collect(),
                bytes: message.len(),
            })
        }
    }

    /// Writes everything before MSG; returns where the SD is.
    fn write_header(
        &self,
        out: &mut Vec<u8>,
        view: &EventView<'_>,
        received_at: &str,
    ) -> std::ops::Range<usize> {
        let pri = u16::from(self.facility) * 8 + u16::from(severity(view));
        out.push(b'<');
        write_decimal(out, u64::from(pri));
        out.extend_from_slice(b">1 ");
        let ts = [
            &view.stage_timestamp,
            &view.request_received_timestamp,
            &view.timestamp,
        ]
        .into_iter()
        .find_map(|t| t.as_deref().and_then(timestamp::normalize));
        out.extend_from_slice(ts.as_deref().unwrap_or(received_at).as_bytes());
        out.extend_from_slice(self.host_app.as_bytes());
        write_sanitized(out, &view.stage, MSGID_MAX);
        out.push(b' ');
        let sd_start = out.len();
        match &self.sd_open {
            None => out.push(b'-'),
            Some(sd_open) => {
                out.extend_from_slice(sd_open.as_bytes());
                write_param_value(out, &view.audit_id);
                if let Some(verb) = &view.verb {
                    out.extend_from_slice(b"\" verb=\"");
                    write_param_value(out, verb);
                }
                out.extend_from_slice(b"\" user=\"");
                write_param_value(out, view.username());
                if let Some(code) = view.code() {
                    out.extend_from_slice(b"\" code=\"");
                    if code < 0 {
                        out.push(b'-');
                    }
                    write_decimal(out, code.unsigned_abs());
                }
                out.extend_from_slice(b"\"]");
            }
        }
        let sd = sd_start..out.len();
        out.push(b' ');
        if self.bom {
            out.extend_from_slice(BOM);
        }
        sd
    }
}

/// Syslog severity of an event, first match wins (DESIGN §3).
pub fn severity(view: &EventView<'_>) -> u8 {
    if view.stage == "Panic" {
        return 2;
    }
    match view.code() {
        Some(c) if c >= 500 => return 3,
        Some(401 | 403) => return 4,
        Some(400..=499) => return 5,
        _ => {}
    }
    match view.verb.as_deref() {
        Some("create" | "update" | "patch" | "delete" | "deletecollection") => 5,
        _ => 6,
    }
}

/// PRINTUSASCII only (33-126), every other character replaced by `_`, cut to `max`;
/// `-` (NILVALUE) when empty.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = Vec::with_capacity(s.len().min(max));
    write_sanitized(&mut out, s, max);
    String::from_utf8(out).unwrap_or_else(|_| "-".to_owned())
}

/// [`sanitize`] written onto `out`, without a string of its own (once per event).
fn write_sanitized(out: &mut Vec<u8>, s: &str, max: usize) {
    let start = out.len();
    if s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(
            s.chars()
                .take(max)
                .map(|c| if c.is_ascii_graphic() { c as u8 } else { b'_' }),
        );
    }
    if out.len() == start {
        out.push(b'-');
    }
}

/// SD PARAM-VALUE: `"`, `\\` and `]` escaped (RFC 5424 §6.3.3); control characters replaced
/// by `_` so that a value can never carry a line break into LF framing; cut to 256
/// characters.
///
/// Runs of plain bytes are copied whole: copying character by character was a `memcpy` call
/// per character, 1 600 instructions per event with `enterprise_id` set.
fn write_param_value(out: &mut Vec<u8>, value: &str) {
    const MAX_CHARS: usize = 256;
    // Fewer bytes than the limit means fewer characters too: only a long value is counted.
    let value = if value.len() > MAX_CHARS {
        value
            .char_indices()
            .nth(MAX_CHARS)
            .and_then(|(end, _)| value.get(..end))
            .unwrap_or(value)
    } else {
        value
    };
    let bytes = value.as_bytes();
    let mut run = 0;
    while let Some(at) = bytes
        .get(run..)
        .and_then(|rest| rest.iter().position(|&b| PARAM_SPECIAL[usize::from(b)]))
    {
        let i = run + at;
        let b = bytes.get(i).copied().unwrap_or_default();
        out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
        // C1 controls (U+0080-U+009F) are 0xC2 0x80-0x9F; 0xC2 is only ever a lead byte.
        let c1 = b == 0xC2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n));
        run = i + 1 + usize::from(c1);
        match b {
            b'"' | b'\\' | b']' => out.extend_from_slice(&[b'\\', b]),
            0xC2 if !c1 => out.push(b),
            _ => out.push(b'_'),
        }
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
}

/// The bytes [`write_param_value`] looks at: the escaped ones, C0 controls and DEL, and the
/// lead byte of the C1 controls.
const PARAM_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[b']' as usize] = true;
    table[0x7F] = true;
    table[0xC2] = true;
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn render(config: &SyslogConfig, json: &str) -> Result<Rendered, TooLarge> {
        let raw: &serde_json::value::RawValue = serde_json::from_str(json).unwrap();
        let view = EventView::parse(0, raw).unwrap();
        Renderer::new(config, "node 1").render(raw.get(), &view, "2000-01-01T00:00:00Z")
    }

    #[test]
    fn header_fields() {
        let json = r#"{"auditID":"id-1","stage":"ResponseComplete","verb":"create","user":{"username":"a\"]b"},"responseStatus":{"code":201},"stageTimestamp":"2023-06-13T09:31:06.123456Z"}"#;
        let out = render(&SyslogConfig::default(), json).unwrap();
        let text = String::from_utf8(out.message).unwrap();
        assert_eq!(
            text,
            format!(
                "<109>1 2023-06-13T09:31:06.123456Z node_1 kube-apiserver - ResponseComplete - {{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",{}",
                &json[1..]
            )
        );
        let config = SyslogConfig {
            enterprise_id: Some(32473),
            bom: true,
            ..SyslogConfig::default()
        };
        let text = String::from_utf8(render(&config, json).unwrap().message).unwrap();
        assert!(
            text.contains(r#" ResponseComplete [k8saudit@32473 auditID="id-1" verb="create" user="a\"\]b" code="201"] ﻿{"#),
            "{text}"
        );
    }

    #[test]
    fn severities() {
        let sev = |json: &str| {
            let raw: &serde_json::value::RawValue = serde_json::from_str(json).unwrap();
            severity(&EventView::parse(0, raw).unwrap())
        };
        assert_eq!(
            sev(r#"{"auditID":"a","stage":"Panic","responseStatus":{"code":200}}"#),
            2
        );
        assert_eq!(
            sev(r#"{"auditID":"a","stage":"S","responseStatus":{"code":503}}"#),
            3
        );
        assert_eq!(
            sev(r#"{"auditID":"a","stage":"S","responseStatus":{"code":403}}"#),
            4
        );
        assert_eq!(
            sev(r#"{"auditID":"a","stage":"S","responseStatus":{"code":404},"verb":"get"}"#),
            5
        );
        assert_eq!(sev(r#"{"auditID":"a","stage":"S","verb":"patch"}"#), 5);
        assert_eq!(
            sev(r#"{"auditID":"a","stage":"S","verb":"list","responseStatus":{"code":200}}"#),
            6
        );
    }

    #[test]
    fn timestamp_fallbacks() {
        let text = |json: &str| {
            String::from_utf8(render(&SyslogConfig::default(), json).unwrap().message).unwrap()
        };
        assert!(text(r#"{"auditID":"a","stage":"S","stageTimestamp":"bad","requestReceivedTimestamp":"2020-01-01T00:00:00.5Z"}"#)
            .starts_with("<110>1 2020-01-01T00:00:00.5Z "));
        assert!(
            text(r#"{"auditID":"a","stage":"S","timestamp":"2018-10-25T13:58:49Z"}"#)
                .starts_with("<110>1 2018-10-25T13:58:49Z ")
        );
        assert!(text(r#"{"auditID":"a","stage":"S"}"#).starts_with("<110>1 2000-01-01T00:00:00Z "));
    }

    #[test]
    fn too_large_is_truncated_then_dropped() {
        let config = SyslogConfig {
            max_message_bytes: ByteSize(480),
            ..SyslogConfig::default()
        };
        let big = "x".repeat(600);
        let json = format!(r#"{{"auditID":"a","stage":"S","requestObject":{{"data":"{big}"}}}}"#);
        let out = render(&config, &json).unwrap();
        assert!(out.truncated);
        assert!(
            String::from_utf8(out.message)
                .unwrap()
                .ends_with(r#""annotations":{"audit.k8s.io/truncated":"true"}}"#)
        );
        let json = format!(r#"{{"auditID":"a","stage":"S","verb":"{big}"}}"#);
        assert_eq!(render(&config, &json).unwrap_err().audit_id, "a");
    }

    #[test]
    fn the_layout_is_where_a_parser_finds_the_parts() {
        let big = "x".repeat(600);
        let events = [
            r#"{"auditID":"id-1","stage":"ResponseComplete","verb":"get","user":{"username":"a\"]b"},"responseStatus":{"code":-1}}"#.to_owned(),
            r#"{"auditID":"id-2","stage":"RequestReceived"}"#.to_owned(),
            format!(r#"{{"auditID":"id-3","stage":"S","requestObject":{{"data":"{big}"}}}}"#),
        ];
        for pen in [None, Some(32473)] {
            for bom in [false, true] {
                let config = SyslogConfig {
                    enterprise_id: pen,
                    bom,
                    max_message_bytes: ByteSize(700),
                    ..SyslogConfig::default()
                };
                let renderer = Renderer::new(&config, "node 1");
                for json in &events {
                    let raw: &serde_json::value::RawValue = serde_json::from_str(json).unwrap();
                    let view = EventView::parse(0, raw).unwrap();
                    let mut out = Vec::new();
                    let written = renderer
                        .render_into(&mut out, raw.get(), &view, false, "2000-01-01T00:00:00Z")
                        .unwrap();
                    let parsed = crate::syslog::convert::fields(&out).unwrap();
                    assert_eq!(written.layout.sd, parsed.sd, "{pen:?} {bom} {json}");
                    assert_eq!(written.layout.msg_start, parsed.msg_start);
                    assert_eq!(written.truncated, json.len() > 600);
                    if pen.is_some() {
                        assert!(out[written.layout.sd.clone()].starts_with(b"[k8saudit@32473 "));
                    }
                }
            }
        }
    }

    /// The definition `write_param_value` must keep: character by character.
    fn param_value_by_chars(value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for c in value.chars().take(256) {
            match c {
                '"' | '\\' | ']' => out.extend_from_slice(&[b'\\', c as u8]),
                c if c.is_control() => out.push(b'_'),
                c => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
            }
        }
        out
    }

    #[test]
    fn param_values_are_escaped_and_cut_as_characters() {
        let long_wide = "ü".repeat(300);
        let cut_in_escapes = format!("{}\"]\\x", "a".repeat(254));
        let cases = [
            "",
            "system:serviceaccount:kube-system:replicaset-controller",
            "a\"b]c\\d",
            "\"]\\",
            "tab\there\nnew\rline\u{7f}del",
            "c1 \u{80}\u{85}\u{9f} and \u{a0}\u{ff} kept",
            "€ 😀 ü",
            "\u{0}",
            long_wide.as_str(),
            cut_in_escapes.as_str(),
        ];
        for case in cases {
            let mut out = b"x".to_vec();
            write_param_value(&mut out, case);
            assert_eq!(&out[1..], param_value_by_chars(case), "{case:?}");
        }
        let mut out = Vec::new();
        write_param_value(&mut out, &long_wide);
        assert_eq!(String::from_utf8(out).unwrap().chars().count(), 256);
    }
}
