//! Audit events: the `EventList` body split into items, each kept as its original bytes.
//!
//! Only the few fields the relay needs are read ([`EventView`]); everything else in an event
//! is carried as raw JSON, so unknown and future fields pass through untouched and no event
//! is re-serialised on the hot path.

mod scan;
mod split;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a request body is not an acceptable `EventList`. The message is sent back as the
/// one-line body of the 400 answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// Not JSON, or not an object with an `items` array.
    #[error("body is not an EventList: {0}")]
    NotEventList(String),
    /// `kind` is present and is not `EventList`.
    #[error("body is not an EventList: kind is `{0}`")]
    WrongKind(String),
    /// One item cannot be relayed.
    #[error("item {index}: {reason}")]
    BadItem {
        /// Zero-based index in `items`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// An `audit.k8s.io/v1` `EventList` as the apiserver's webhook backend posts it, with its
/// items left unparsed.
#[derive(Debug, Deserialize)]
pub struct EventList<'a> {
    /// `EventList` when present.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    /// The events, as the exact bytes the apiserver sent.
    #[serde(borrow)]
    pub items: Vec<&'a RawValue>,
}

impl<'a> EventList<'a> {
    /// Parses a request body. Trailing whitespace (the apiserver sends a final newline) is
    /// accepted; `items` is required and must be an array.
    ///
    /// # Errors
    /// [`AuditError::NotEventList`] or [`AuditError::WrongKind`].
    pub fn parse(body: &'a [u8]) -> Result<Self, AuditError> {
        let list: EventList<'a> =
            serde_json::from_slice(body).map_err(|e| AuditError::NotEventList(e.to_string()))?;
        match list.kind.as_deref() {
            None | Some("EventList") => Ok(list),
            Some(other) => Err(AuditError::WrongKind(truncate_for_log(other))),
        }
    }

    /// Splits a request body into its items and reads each one's fields: with the relay's
    /// own scanner when it can (`scan`), else in one serde scan (`split`), else, and for
    /// every error, with [`EventList::parse`] and [`EventView::parse`], which give the same
    /// items and the reference errors.
    ///
    /// # Errors
    /// [`AuditError`] when the body is not an EventList or any item is unusable.
    pub fn items(body: &'a [u8]) -> Result<Vec<Item<'a>>, AuditError> {
        // UTF-8 checked once for both fast paths; the reference reports a body that is not.
        let fast = std::str::from_utf8(body)
            .ok()
            .and_then(|text| Self::scanned(text).or_else(|| Self::one_scan(text)));
        match fast {
            Some(items) => Ok(items),
            None => Self::items_two_scans(body),
        }
    }

    /// The first path of [`EventList::items`] alone: the relay's own scanner; `None` when it
    /// cannot vouch for the result (escapes where it reads a field, unexpected types, any
    /// error), and the serde paths decide.
    pub fn items_scanned(body: &'a [u8]) -> Option<Vec<Item<'a>>> {
        std::str::from_utf8(body).ok().and_then(Self::scanned)
    }

    /// The one-scan serde path of [`EventList::items`] alone: `None` when it cannot vouch for
    /// the result (any error, an escaped first key, an item that fails the checks).
    pub fn items_one_scan(body: &'a [u8]) -> Option<Vec<Item<'a>>> {
        std::str::from_utf8(body).ok().and_then(Self::one_scan)
    }

    fn scanned(text: &'a str) -> Option<Vec<Item<'a>>> {
        // The scanner has refused every `\u` escape that is not a character.
        scan::items(text).filter(|items| items.iter().all(|i| i.view.check_fields().is_ok()))
    }

    fn one_scan(text: &'a str) -> Option<Vec<Item<'a>>> {
        split::items(text).filter(|items| items.iter().all(Item::passes_checks))
    }

    /// [`EventList::items`] the reference way: the list split first, then each item read.
    /// Public for the tests and fuzz targets that hold the one-scan path to it.
    ///
    /// # Errors
    /// [`AuditError`] when the body is not an EventList or any item is unusable.
    pub fn items_two_scans(body: &'a [u8]) -> Result<Vec<Item<'a>>, AuditError> {
        let list = Self::parse(body)?;
        list.items
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                EventView::parse(index, raw).map(|view| Item {
                    json: raw.get(),
                    compact: false,
                    view,
                })
            })
            .collect()
    }
}

pub use split::Item;

impl Item<'_> {
    /// The checks of [`EventView::parse`] beyond the parse itself (an object by construction).
    fn passes_checks(&self) -> bool {
        self.view.check(self.json).is_ok()
    }
}

/// A string borrowed from the body unless it has escapes. serde's `borrow` does not reach
/// through `Option`, so an `Option<Cow<str>>` field would allocate for every event; the
/// newtype carries the attribute to the `Cow` itself.
#[derive(Deserialize)]
pub(crate) struct Borrowed<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

pub(crate) fn borrowed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

/// The fields of one audit event that rendering and routing use.
#[derive(Debug, Deserialize)]
pub struct EventView<'a> {
    /// `auditID` (required).
    #[serde(rename = "auditID", borrow)]
    pub audit_id: Cow<'a, str>,
    /// `stage` (required).
    #[serde(borrow)]
    pub stage: Cow<'a, str>,
    /// `kind`, when the item carries it (list items normally do not).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub kind: Option<Cow<'a, str>>,
    /// `apiVersion`, when the item carries it.
    #[serde(default, rename = "apiVersion", borrow, deserialize_with = "borrowed")]
    pub api_version: Option<Cow<'a, str>>,
    /// `verb`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub verb: Option<Cow<'a, str>>,
    /// `user.username`.
    #[serde(default, borrow)]
    pub user: Option<UserView<'a>>,
    /// `responseStatus.code`.
    #[serde(default, rename = "responseStatus")]
    pub response_status: Option<StatusView>,
    /// `stageTimestamp`.
    #[serde(
        default,
        rename = "stageTimestamp",
        borrow,
        deserialize_with = "borrowed"
    )]
    pub stage_timestamp: Option<Cow<'a, str>>,
    /// `requestReceivedTimestamp`.
    #[serde(
        default,
        rename = "requestReceivedTimestamp",
        borrow,
        deserialize_with = "borrowed"
    )]
    pub request_received_timestamp: Option<Cow<'a, str>>,
    /// `timestamp` (audit.k8s.io/v1beta1).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub timestamp: Option<Cow<'a, str>>,
}

/// `user` of an event.
#[derive(Debug, Deserialize)]
pub struct UserView<'a> {
    /// `username`; empty for unauthenticated requests.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub username: Option<Cow<'a, str>>,
}

/// The fields only filters and resource-scoped redaction read, parsed only when such rules
/// exist (keeping them out of [`EventView`] keeps the common path cheaper).
#[derive(Debug, Default, Deserialize)]
pub struct RoutingView<'a> {
    /// `level` (`Metadata`, `Request`, `RequestResponse`).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub level: Option<Cow<'a, str>>,
    /// `objectRef`.
    #[serde(default, rename = "objectRef", borrow)]
    pub object_ref: Option<ObjectRefView<'a>>,
    /// `user.groups`.
    #[serde(default, borrow)]
    pub user: Option<GroupsView<'a>>,
}

impl<'a> RoutingView<'a> {
    /// Reads the routing fields of an item (its JSON text) that [`EventView::parse`] accepted.
    pub fn parse(item: &'a str) -> Self {
        serde_json::from_str(item).unwrap_or_default()
    }

    /// `objectRef.resource`, empty when absent.
    pub fn resource(&self) -> &str {
        self.object_ref
            .as_ref()
            .and_then(|o| o.resource.as_deref())
            .unwrap_or("")
    }
}

/// `user.groups` of an event.
#[derive(Debug, Default, Deserialize)]
pub struct GroupsView<'a> {
    /// `groups`.
    #[serde(default, borrow)]
    pub groups: Vec<Cow<'a, str>>,
}

/// `objectRef` of an event.
#[derive(Debug, Deserialize)]
pub struct ObjectRefView<'a> {
    /// `objectRef.resource`, e.g. `secrets`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub resource: Option<Cow<'a, str>>,
    /// `objectRef.namespace`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub namespace: Option<Cow<'a, str>>,
}

/// `responseStatus` of an event.
#[derive(Debug, Deserialize)]
pub struct StatusView {
    /// HTTP status code the apiserver answered.
    #[serde(default)]
    pub code: Option<i64>,
}

impl<'a> EventView<'a> {
    /// Reads the fields of item `index`.
    ///
    /// # Errors
    /// [`AuditError::BadItem`] when the item is not an object or lacks `auditID`/`stage`.
    pub fn parse(index: usize, item: &'a RawValue) -> Result<Self, AuditError> {
        let view: EventView<'a> =
            serde_json::from_str(item.get()).map_err(|e| AuditError::BadItem {
                index,
                reason: e.to_string(),
            })?;
        // serde maps a JSON array onto a struct by position; an event must be an object
        // (found by fuzzing: `["id","stage"]` was accepted and relayed as a broken line).
        if !item.get().trim_start().starts_with('{') {
            return Err(AuditError::BadItem {
                index,
                reason: "not a JSON object".into(),
            });
        }
        view.check(item.get())
            .map_err(|reason| AuditError::BadItem { index, reason })?;
        Ok(view)
    }

    /// What an item must also satisfy once its fields are read: a usable `auditID` and
    /// `stage`, and no `\u` escape that is not a character. `json` is the item's text.
    fn check(&self, json: &str) -> Result<(), String> {
        check_unicode_escapes(json)?;
        self.check_fields()
    }

    /// The checks of [`EventView::check`] on the fields alone.
    fn check_fields(&self) -> Result<(), String> {
        if self.audit_id.is_empty() {
            return Err("empty auditID".into());
        }
        if self.stage.is_empty() {
            return Err("empty stage".into());
        }
        Ok(())
    }

    /// `user.username`, empty when absent.
    pub fn username(&self) -> &str {
        self.user
            .as_ref()
            .and_then(|u| u.username.as_deref())
            .unwrap_or("")
    }

    /// `responseStatus.code`, when present.
    pub fn code(&self) -> Option<i64> {
        self.response_status.as_ref().and_then(|s| s.code)
    }
}

/// Rejects `\u` escapes that do not form a character: a lone or reversed UTF-16 surrogate.
/// The JSON scanner that splits the EventList accepts them, but strict JSON parsers in SIEMs
/// do not, so such an event would be relayed and then fail downstream (found by fuzzing).
fn check_unicode_escapes(item: &str) -> Result<(), String> {
    let b = item.as_bytes();
    let hex = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let bad = || "invalid \\u escape (lone UTF-16 surrogate)".to_owned();
    // The item is valid JSON text: backslashes occur only inside strings and each starts an
    // escape, so walking them left to right (skipping the escaped character) finds every
    // `\u` escape and never mistakes `\\u` for one. A `char` pattern makes `find` a memchr.
    let mut from = 0;
    while let Some(found) = item.get(from..).and_then(|rest| rest.find('\\')) {
        let at = from + found;
        if b.get(at + 1) != Some(&b'u') {
            // Skip the escaped character too (it may be a backslash).
            from = at + 2;
            continue;
        }
        from = at + 2;
        let unit = hex(at + 2).ok_or_else(bad)?;
        if (0xD800..0xDC00).contains(&unit) {
            let low = (b.get(at + 6..at + 8) == Some(b"\\u"))
                .then(|| hex(at + 8))
                .flatten();
            if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                return Err(bad());
            }
            from = at + 12;
        } else if (0xDC00..0xE000).contains(&unit) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Appends `item` to `out` as one compact JSON line in the shape of the apiserver's own
/// audit log: `"kind":"Event","apiVersion":"audit.k8s.io/v1"` first when the item lacks them,
/// whitespace outside strings removed (a no-op for the compact JSON the apiserver sends), every
/// other byte as received. `compact` says the item is known to have no such whitespace
/// ([`Item::compact`]): it is then copied without looking.
pub fn write_event_line(out: &mut Vec<u8>, item: &str, view: &EventView<'_>, compact: bool) {
    let body = item.trim();
    // An item is an object (EventView::parse succeeded), so it starts with `{`.
    let inner = body.strip_prefix('{').unwrap_or(body);
    out.push(b'{');
    let mut prefixed = false;
    if view.kind.is_none() {
        out.extend_from_slice(br#""kind":"Event""#);
        prefixed = true;
    }
    if view.api_version.is_none() {
        if prefixed {
            out.push(b',');
        }
        out.extend_from_slice(br#""apiVersion":"audit.k8s.io/v1""#);
        prefixed = true;
    }
    if prefixed && !inner.trim_start().starts_with('}') {
        out.push(b',');
    }
    if compact {
        out.extend_from_slice(inner.as_bytes());
    } else {
        write_compact(out, inner);
    }
}

/// Copies JSON text into `out` without the insignificant whitespace outside strings.
///
/// Runs for every event, on JSON that is nearly always compact already: strings (most of an
/// event) are skipped eight bytes at a time to their closing quote, the few bytes between
/// strings are looked at one by one, and the text is copied in as few pieces as it has
/// whitespace to drop (one, for compact JSON). A `memchr` per string cost more than the
/// strings are long (most are keys of a few bytes).
pub fn write_compact(out: &mut Vec<u8>, json: &str) {
    let bytes = json.as_bytes();
    out.reserve(bytes.len());
    // bytes[copied..] is not yet in `out`.
    let mut copied = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // Through the closing quote, stepping over escaped characters.
                let mut j = i + 1;
                i = loop {
                    match quote_backslash_or_control(bytes, j) {
                        Some(at) => match bytes[at] {
                            b'\\' => j = at + 2,
                            b'"' => break at + 1,
                            // Not in valid JSON; kept as it is.
                            _ => j = at + 1,
                        },
                        None => break bytes.len(),
                    }
                };
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.extend_from_slice(&bytes[copied..i]);
                copied = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// The first `"`, `\` or control character (below 0x20) at or after `from`, eight bytes per
/// step (SWAR: `(v - 0x01..) & !v & 0x80..` marks the zero bytes of `v`, and after an XOR
/// with a repeated target the bytes equal to it; `(x - 0x20..) & !x & 0x80..` marks bytes
/// below 0x20. Borrows can add false marks, but only above a true one, and only the lowest
/// mark is read). The split's scanner and compaction both step through strings with it.
/// Per-byte tests over 16-byte chunks, which LLVM turns into SSE2 compares, measured 35% more
/// instructions than this (it builds the mask byte by byte).
pub(crate) fn quote_backslash_or_control(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let marks = |v: u64, below: u64| v.wrapping_sub(ONES * below) & !v & HIGH;
    let mut chunks = b.get(from..)?.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).ok()?);
        let hits = marks(x ^ (ONES * u64::from(b'"')), 1)
            | marks(x ^ (ONES * u64::from(b'\\')), 1)
            | marks(x, 0x20);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| at + p)
}

/// An object's members in their original order, values left raw.
pub(crate) struct OrderedObject<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = OrderedObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(OrderedObject(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
            .map_err(de::Error::custom)
    }
}

/// The annotation the apiserver adds when it truncates an event.
pub const TRUNCATED_ANNOTATION: &str = "audit.k8s.io/truncated";

/// Applies the apiserver's own truncation rule (`--audit-webhook-truncate-enabled`): drops
/// `requestObject` and `responseObject` and sets annotation `audit.k8s.io/truncated: "true"`.
/// Key order is kept. Returns `None` when the item cannot be read as an object (it then
/// cannot be shortened either).
pub fn truncate_event(item: &str) -> Option<String> {
    let object: OrderedObject<'_> = serde_json::from_str(item).ok()?;
    let mut out = String::with_capacity(item.len().min(4096));
    out.push('{');
    let mut first = true;
    let mut annotated = false;
    let push_key = |out: &mut String, first: &mut bool, key: &str| {
        if !*first {
            out.push(',');
        }
        *first = false;
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
    };
    for (key, value) in &object.0 {
        match key.as_ref() {
            "requestObject" | "responseObject" => continue,
            "annotations" => {
                push_key(&mut out, &mut first, key);
                let annotations: Option<OrderedObject<'_>> = serde_json::from_str(value.get()).ok();
                out.push('{');
                let mut first_annotation = true;
                for (k, v) in annotations.iter().flat_map(|a| a.0.iter()) {
                    if k == TRUNCATED_ANNOTATION {
                        continue;
                    }
                    push_key(&mut out, &mut first_annotation, k);
                    write_compact_string(&mut out, v.get());
                }
                push_key(&mut out, &mut first_annotation, TRUNCATED_ANNOTATION);
                out.push_str("\"true\"}");
                annotated = true;
            }
            _ => {
                push_key(&mut out, &mut first, key);
                write_compact_string(&mut out, value.get());
            }
        }
    }
    if !annotated {
        push_key(&mut out, &mut first, "annotations");
        out.push_str("{\"");
        out.push_str(TRUNCATED_ANNOTATION);
        out.push_str("\":\"true\"}");
    }
    out.push('}');
    Some(out)
}

fn write_compact_string(out: &mut String, json: &str) {
    let mut buf = Vec::with_capacity(json.len());
    write_compact(&mut buf, json);
    // Compacting only removes ASCII whitespace outside strings, so the bytes stay UTF-8.
    out.push_str(&String::from_utf8_lossy(&buf));
}

fn truncate_for_log(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte compaction `write_compact` replaced, as the reference.
    fn compact_reference(json: &str) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
        for &b in json.as_bytes() {
            if in_string {
                out.push(b);
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                in_string = b == b'"';
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn compaction_keeps_strings_and_drops_whitespace_between() {
        for json in [
            r#"{"a": "b c", "d" : [1, 2 ,{ "e":"\" x \\" }] }"#,
            "{\n  \"user\": {\"username\": \"system:kube-proxy\"},\n\t\"ua\": \"k/v1 (linux)\"\r\n}",
            r#"{"s":"\\","t":"\\\"","u":"é ü ✓"}"#,
            r#"{"open":"no end"#,
            r#"{"esc":"ends with \"#,
            "",
            "  ",
        ] {
            let mut out = Vec::new();
            write_compact(&mut out, json);
            assert_eq!(out, compact_reference(json), "{json}");
        }
    }

    #[test]
    fn the_word_scan_finds_every_quote_backslash_and_control_byte() {
        for n in 0..24 {
            for at in 0..n {
                for target in [b'"', b'\\', 0x00, 0x1f] {
                    let mut text = vec![b'a'; n];
                    text[at] = target;
                    // Next to it, a byte one bit from the target, or the lowest one that is
                    // not a control byte.
                    if at + 1 < n {
                        text[at + 1] = if target < 0x20 { 0x20 } else { target ^ 1 };
                    }
                    for from in 0..=n {
                        let want = (from <= at).then_some(at);
                        assert_eq!(
                            quote_backslash_or_control(&text, from),
                            want,
                            "{n} {at} {from}"
                        );
                    }
                }
            }
            assert_eq!(quote_backslash_or_control(&vec![0xff; n], 0), None);
            assert_eq!(quote_backslash_or_control(&vec![0x20; n], 0), None);
        }
        assert_eq!(quote_backslash_or_control(b"ab", 5), None);
    }

    #[test]
    fn compaction_matches_the_reference_on_random_text() {
        let alphabet = [
            "{", "}", "[", "]", "\"", "\\", ":", ",", " ", "\n", "\t", "a", "1", "é",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut json = String::new();
            for _ in 0..state % 40 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                json.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            state = state.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut out = Vec::new();
            write_compact(&mut out, &json);
            assert_eq!(out, compact_reference(&json), "{json:?}");
        }
    }

    #[test]
    fn splits_items_and_keeps_bytes() {
        let body = br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"auditID":"a","stage":"ResponseComplete","verb":"get"},{"auditID":"b","stage":"RequestReceived"}]}
"#;
        let list = EventList::parse(body).unwrap();
        assert_eq!(list.items.len(), 2);
        assert_eq!(
            list.items[0].get(),
            r#"{"auditID":"a","stage":"ResponseComplete","verb":"get"}"#
        );
    }

    #[test]
    fn rejects_non_lists() {
        assert!(matches!(
            EventList::parse(b"{}"),
            Err(AuditError::NotEventList(_))
        ));
        assert!(matches!(
            EventList::parse(b"[1]"),
            Err(AuditError::NotEventList(_))
        ));
        assert!(matches!(
            EventList::parse(br#"{"kind":"Event","items":[]}"#),
            Err(AuditError::WrongKind(_))
        ));
        assert!(matches!(
            EventList::parse(br#"{"items":{}}"#),
            Err(AuditError::NotEventList(_))
        ));
    }

    #[test]
    fn event_line_prefixes_kind() {
        let raw: &RawValue = serde_json::from_str(r#"{ "auditID": "a b", "stage":"X" }"#).unwrap();
        let view = EventView::parse(0, raw).unwrap();
        let mut out = Vec::new();
        write_event_line(&mut out, raw.get(), &view, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a b","stage":"X"}"#
        );
    }

    #[test]
    fn event_line_keeps_existing_kind() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"kind":"Event","auditID":"a","stage":"X"}"#).unwrap();
        let view = EventView::parse(0, raw).unwrap();
        let mut out = Vec::new();
        write_event_line(&mut out, raw.get(), &view, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"apiVersion":"audit.k8s.io/v1","kind":"Event","auditID":"a","stage":"X"}"#
        );
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for (json, ok) in [
            (r#"{"auditID":"a","stage":"S","x":"\uD808\uDF45"}"#, true),
            (
                r#"{"auditID":"a","stage":"S","x":"\u003e \\u not an escape"}"#,
                true,
            ),
            (r#"{"auditID":"a","stage":"S","x":"\uD8088\uDD88"}"#, false),
            (r#"{"auditID":"a","stage":"S","x":"\uDD88"}"#, false),
            (r#"{"auditID":"a","stage":"S","\uD800":1}"#, false),
        ] {
            let raw: &RawValue = serde_json::from_str(json).unwrap();
            let parsed = EventView::parse(0, raw);
            assert_eq!(parsed.is_ok(), ok, "{json}");
            if ok {
                let mut line = Vec::new();
                write_event_line(&mut line, raw.get(), &parsed.unwrap(), false);
                serde_json::from_slice::<serde_json::Value>(&line).unwrap();
            }
        }
    }

    #[test]
    fn item_errors() {
        let raw: &RawValue = serde_json::from_str(r#"{"stage":"X"}"#).unwrap();
        let err = EventView::parse(3, raw).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("item 3: missing field `auditID`"),
            "{err}"
        );
        let raw: &RawValue = serde_json::from_str("7").unwrap();
        assert!(EventView::parse(0, raw).is_err());
        let raw: &RawValue = serde_json::from_str(r#"["id", "ResponseComplete"]"#).unwrap();
        assert_eq!(
            EventView::parse(2, raw).unwrap_err().to_string(),
            "item 2: not a JSON object"
        );
    }

    #[test]
    fn truncation_rule() {
        let item = r#"{"auditID":"a","requestObject":{"x":1},"stage":"S","responseObject":[1],"annotations":{"k":"v"}}"#;
        assert_eq!(
            truncate_event(item).unwrap(),
            r#"{"auditID":"a","stage":"S","annotations":{"k":"v","audit.k8s.io/truncated":"true"}}"#
        );
        let item = r#"{"auditID":"a","requestObject":{"x":1}}"#;
        let out = truncate_event(item).unwrap();
        assert_eq!(
            out,
            r#"{"auditID":"a","annotations":{"audit.k8s.io/truncated":"true"}}"#
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
    }
}
