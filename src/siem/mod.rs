//! SIEM formats: a stored record's event written as ArcSight CEF ([`cef`]), IBM QRadar LEEF 2.0
//! ([`leef`]) or an OCSF API Activity event ([`ocsf`]), for destinations with `format = "cef"`,
//! `"leef"` or `"ocsf"`. The mappings are tabled in `docs/formats.md`.
//!
//! Every format reads the same fields of the event ([`SiemView`], parsed from the record's
//! MSG) and takes its severity from the syslog severity rule
//! ([`crate::syslog::render::severity`]). With `syslog_header`, the formatted event replaces
//! the MSG of the stored RFC 5424 record (header and structured data kept); without, the
//! formatted event is the whole message.

pub mod cef;
pub mod leef;
pub mod ocsf;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::audit::{EventView, borrowed};
use crate::syslog::convert::fields;

/// The fields of an event the SIEM formats map.
#[derive(Debug, Default, Deserialize)]
pub struct SiemView<'a> {
    /// `requestURI`.
    #[serde(default, rename = "requestURI", borrow, deserialize_with = "borrowed")]
    pub request_uri: Option<Cow<'a, str>>,
    /// `userAgent`.
    #[serde(default, rename = "userAgent", borrow, deserialize_with = "borrowed")]
    pub user_agent: Option<Cow<'a, str>>,
    /// `sourceIPs`.
    #[serde(default, rename = "sourceIPs", borrow)]
    pub source_ips: Vec<Cow<'a, str>>,
    /// `level`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub level: Option<Cow<'a, str>>,
    /// `user`.
    #[serde(default, borrow)]
    pub user: Option<UserInfo<'a>>,
    /// `objectRef`.
    #[serde(default, rename = "objectRef", borrow)]
    pub object_ref: Option<ObjectRef<'a>>,
    /// `responseStatus`.
    #[serde(default, rename = "responseStatus", borrow)]
    pub response_status: Option<ResponseStatus<'a>>,
}

/// `user` of an event.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    /// `uid`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub uid: Option<Cow<'a, str>>,
    /// `groups`.
    #[serde(default, borrow)]
    pub groups: Vec<Cow<'a, str>>,
}

/// `objectRef` of an event.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectRef<'a> {
    /// `resource`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub resource: Option<Cow<'a, str>>,
    /// `subresource`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub subresource: Option<Cow<'a, str>>,
    /// `namespace`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub namespace: Option<Cow<'a, str>>,
    /// `name`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub name: Option<Cow<'a, str>>,
    /// `uid`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub uid: Option<Cow<'a, str>>,
    /// `apiGroup`.
    #[serde(default, rename = "apiGroup", borrow, deserialize_with = "borrowed")]
    pub api_group: Option<Cow<'a, str>>,
    /// `apiVersion`.
    #[serde(default, rename = "apiVersion", borrow, deserialize_with = "borrowed")]
    pub api_version: Option<Cow<'a, str>>,
}

/// `responseStatus` of an event.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus<'a> {
    /// `status` (`Success`, `Failure`).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub status: Option<Cow<'a, str>>,
    /// `reason`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub reason: Option<Cow<'a, str>>,
    /// `message`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub message: Option<Cow<'a, str>>,
}

/// One stored record, read back for a SIEM format.
pub struct Event<'a> {
    /// The record's bytes before MSG (`<PRI>1 ... SD `).
    pub header: &'a [u8],
    /// The event JSON (MSG, without a BOM).
    pub json: &'a str,
    /// The fields rendering and routing use.
    pub view: EventView<'a>,
    /// The further fields the SIEM formats map.
    pub extra: SiemView<'a>,
}

impl<'a> Event<'a> {
    /// The event of a stored record; `None` when the record is not one of the relay's audit
    /// records (an integrity checkpoint, say), which is then sent as it is.
    pub fn of(record: &'a [u8]) -> Option<Self> {
        let f = fields(record)?;
        let msg = &record[f.msg_start..];
        let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
        let json = std::str::from_utf8(msg).ok()?;
        let item: &RawValue = serde_json::from_str(json).ok()?;
        let view = EventView::parse(0, item).ok()?;
        let extra = serde_json::from_str(json).unwrap_or_default();
        Some(Self {
            header: &record[..f.msg_start],
            json,
            view,
            extra,
        })
    }

    /// The verb, `-` when absent.
    pub fn verb(&self) -> &str {
        self.view.verb.as_deref().unwrap_or("-")
    }

    /// `objectRef`, or an empty one.
    pub fn object(&self) -> &ObjectRef<'a> {
        static EMPTY: std::sync::LazyLock<ObjectRef<'static>> =
            std::sync::LazyLock::new(ObjectRef::default);
        self.extra.object_ref.as_ref().unwrap_or(&EMPTY)
    }

    /// `resource[/subresource]`, or the request path for a non-resource request.
    pub fn target(&self) -> String {
        let o = self.object();
        match (&o.resource, &o.subresource) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.to_string(),
            _ => self
                .extra
                .request_uri
                .as_deref()
                .map(|u| u.split('?').next().unwrap_or(u).to_owned())
                .unwrap_or_else(|| "-".to_owned()),
        }
    }

    /// The event's time (`stageTimestamp`, else `requestReceivedTimestamp`, else
    /// `timestamp`), as stored.
    pub fn time(&self) -> Option<&str> {
        [
            &self.view.stage_timestamp,
            &self.view.request_received_timestamp,
            &self.view.timestamp,
        ]
        .into_iter()
        .find_map(|t| t.as_deref())
    }

    /// Milliseconds since the epoch of [`Event::time`].
    pub fn time_millis(&self) -> Option<i64> {
        self.time().and_then(crate::syslog::timestamp::unix_millis)
    }

    /// The syslog severity (0-7) of the event, the relay's one rule.
    pub fn syslog_severity(&self) -> u8 {
        crate::syslog::render::severity(&self.view)
    }

    /// Whether the request succeeded: `Some(true)` below 400, `None` without a code.
    pub fn succeeded(&self) -> Option<bool> {
        self.view.code().map(|c| c < 400)
    }

    /// The HTTP method of the request, from its verb.
    pub fn http_method(&self) -> Option<&'static str> {
        Some(match self.view.verb.as_deref()? {
            "create" => "POST",
            "update" => "PUT",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            "get" | "list" | "watch" => "GET",
            _ => return None,
        })
    }

    /// The first source IP.
    pub fn source_ip(&self) -> Option<&str> {
        self.extra.source_ips.first().map(|s| s.as_ref())
    }
}

/// `header` + `message`: the stored record's syslog header with the formatted event as MSG.
pub fn with_header(header: &[u8], message: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&message);
    out
}

/// Appends one character as UTF-8 (the escaping loops of CEF and LEEF pass most through).
fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Appends `key=value` after `separator`, unless it is the first pair after the header's
/// last `|`; `push_value` escapes the value in the format's way.
fn push_pair(
    out: &mut Vec<u8>,
    separator: u8,
    key: &str,
    value: &str,
    push_value: fn(&mut Vec<u8>, &str),
) {
    if out.last().is_some_and(|&b| b != b'|') {
        out.push(separator);
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    push_value(out, value);
}
