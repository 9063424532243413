//! The one-scan split of an `EventList`: each item's exact bytes and its [`EventView`] from a
//! single pass of the JSON parser, where [`EventList::parse`] followed by [`EventView::parse`]
//! scans every item twice (once to find where it ends, once to read its fields). That second
//! scan was a fifth of the relay's instructions per event.
//!
//! serde does not tell a visitor where a value starts or ends, but borrowed strings point into
//! the body: an item starts at the `{` before its first key and ends at the `}` before the
//! `,` that precedes the next item's `{` (or before the `]` that closes the list). Between
//! those, JSON allows only whitespace, so the spans follow from the key positions alone.
//!
//! This path only ever answers "here are the items" or "cannot say": anything it does not
//! vouch for (an error of any kind, an escaped first key, a wrong `kind`, an item that fails
//! the checks) goes to the two-scan path, whose results and error messages are the reference.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Borrowed, EventView, StatusView, UserView};

/// One item: its JSON text exactly as received, and the fields the relay reads.
#[derive(Debug)]
pub struct Item<'a> {
    /// The item's bytes in the body, from its `{` to its `}`.
    pub json: &'a str,
    /// Whether `json` is known to hold no whitespace outside its strings (then rendering
    /// copies it as it is); `false` says only "not known".
    pub compact: bool,
    /// Its fields.
    pub view: EventView<'a>,
}

/// The items of `text`, or `None` when this path cannot vouch for them (see the module).
pub(super) fn items(text: &str) -> Option<Vec<Item<'_>>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let list = ListSeed { text }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    if list.kind.as_deref().is_some_and(|k| k != "EventList") {
        return None;
    }
    let parsed = list.items?;
    let bytes = text.as_bytes();
    // Where each item starts: the `{` before its first key's opening quote.
    let mut starts = Vec::with_capacity(parsed.len());
    for (first_key, _) in &parsed {
        let quote = first_key.checked_sub(1)?;
        (bytes.get(quote) == Some(&b'"')).then_some(())?;
        starts.push(before(bytes, quote, b'{')?);
    }
    // Where the last one ends: before the `]`, found back from the key after `items` or
    // from the end of the body.
    let close = match list.after_items {
        Some(key) => {
            let quote = key.checked_sub(1)?;
            (bytes.get(quote) == Some(&b'"')).then_some(())?;
            before(bytes, before(bytes, quote, b',')?, b']')?
        }
        None => before(bytes, before(bytes, bytes.len(), b'}')?, b']')?,
    };
    let mut items = Vec::with_capacity(parsed.len());
    for (i, (_, view)) in parsed.into_iter().enumerate() {
        let end = match starts.get(i + 1) {
            Some(&next) => before(bytes, before(bytes, next, b',')?, b'}')?,
            None => before(bytes, close, b'}')?,
        } + 1;
        let json = text.get(*starts.get(i)?..end)?;
        items.push(Item {
            json,
            compact: false,
            view,
        });
    }
    Some(items)
}

/// The position of `want`, the last byte before `at` that is not JSON whitespace; `None`
/// when that byte is something else.
fn before(bytes: &[u8], at: usize, want: u8) -> Option<usize> {
    let mut i = at;
    while i > 0 {
        i -= 1;
        match bytes.get(i)? {
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            &b if b == want => return Some(i),
            _ => return None,
        }
    }
    None
}

/// Where `s`, borrowed from `text`, starts in it.
fn offset(text: &str, s: &str) -> Option<usize> {
    let (base, at) = (text.as_ptr() as usize, s.as_ptr() as usize);
    (at >= base && at + s.len() <= base + text.len()).then(|| at - base)
}

/// A key, which must be borrowed (unescaped) when its position is needed.
#[allow(clippy::ptr_arg, reason = "whether the key is borrowed is the point")]
fn position_of<E: de::Error>(text: &str, key: &Cow<'_, str>) -> Result<usize, E> {
    match key {
        Cow::Borrowed(s) => offset(text, s).ok_or_else(|| E::custom("key outside the body")),
        Cow::Owned(_) => Err(E::custom("escaped key: no position")),
    }
}

/// Stores a field's value, refusing a second one as serde's derive does.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

struct List<'a> {
    kind: Option<Cow<'a, str>>,
    /// Each item's first key position and its view.
    items: Option<Vec<(usize, EventView<'a>)>>,
    /// The position of the key after `items`, when there is one.
    after_items: Option<usize>,
}

struct ListSeed<'t> {
    text: &'t str,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'de> {
    type Value = List<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'de> {
    type Value = List<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an EventList object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut list = List {
            kind: None,
            items: None,
            after_items: None,
        };
        let mut kind = None;
        let mut previous_was_items = false;
        while let Some(key) = map.next_key::<Borrowed<'de>>()? {
            if std::mem::take(&mut previous_was_items) {
                list.after_items = Some(position_of(self.text, &key.0)?);
            }
            match key.0.as_ref() {
                "kind" => once(
                    &mut kind,
                    map.next_value::<Option<Borrowed<'de>>>()?.map(|b| b.0),
                    "kind",
                )?,
                "items" => {
                    let items = map.next_value_seed(ItemsSeed { text: self.text })?;
                    once(&mut list.items, items, "items")?;
                    previous_was_items = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        list.kind = kind.flatten();
        Ok(list)
    }
}

struct ItemsSeed<'t> {
    text: &'t str,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'de> {
    type Value = Vec<(usize, EventView<'de>)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'de> {
    type Value = Vec<(usize, EventView<'de>)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(128));
        while let Some(item) = seq.next_element_seed(ItemSeed { text: self.text })? {
            items.push(item);
        }
        Ok(items)
    }
}

struct ItemSeed<'t> {
    text: &'t str,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'de> {
    type Value = (usize, EventView<'de>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

type Text<'a> = Option<Option<Cow<'a, str>>>;

impl<'de> Visitor<'de> for ItemSeed<'de> {
    type Value = (usize, EventView<'de>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an audit event object")
    }
    /// The fields of [`EventView`], as its derived `Deserialize` reads them: the same names,
    /// `null` as absent for the optional ones, a repeated field refused, the rest skipped.
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut first = None;
        let (mut audit_id, mut stage) = (None, None);
        let (mut kind, mut api_version, mut verb): (Text<'de>, Text<'de>, Text<'de>) =
            (None, None, None);
        let (mut stage_ts, mut received_ts, mut ts): (Text<'de>, Text<'de>, Text<'de>) =
            (None, None, None);
        let mut user: Option<Option<UserView<'de>>> = None;
        let mut status: Option<Option<StatusView>> = None;
        let text = |map: &mut M| -> Result<Option<Cow<'de, str>>, M::Error> {
            Ok(map.next_value::<Option<Borrowed<'de>>>()?.map(|b| b.0))
        };
        while let Some(key) = map.next_key::<Borrowed<'de>>()? {
            if first.is_none() {
                first = Some(position_of(self.text, &key.0)?);
            }
            match key.0.as_ref() {
                "auditID" => once(
                    &mut audit_id,
                    map.next_value::<Borrowed<'de>>()?.0,
                    "auditID",
                )?,
                "stage" => once(&mut stage, map.next_value::<Borrowed<'de>>()?.0, "stage")?,
                "kind" => once(&mut kind, text(&mut map)?, "kind")?,
                "apiVersion" => once(&mut api_version, text(&mut map)?, "apiVersion")?,
                "verb" => once(&mut verb, text(&mut map)?, "verb")?,
                "stageTimestamp" => once(&mut stage_ts, text(&mut map)?, "stageTimestamp")?,
                "requestReceivedTimestamp" => once(
                    &mut received_ts,
                    text(&mut map)?,
                    "requestReceivedTimestamp",
                )?,
                "timestamp" => once(&mut ts, text(&mut map)?, "timestamp")?,
                "user" => once(&mut user, map.next_value()?, "user")?,
                "responseStatus" => once(&mut status, map.next_value()?, "responseStatus")?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let first = first.ok_or_else(|| de::Error::custom("an empty object"))?;
        let view = EventView {
            audit_id: audit_id.ok_or_else(|| de::Error::missing_field("auditID"))?,
            stage: stage.ok_or_else(|| de::Error::missing_field("stage"))?,
            kind: kind.flatten(),
            api_version: api_version.flatten(),
            verb: verb.flatten(),
            user: user.flatten(),
            response_status: status.flatten(),
            stage_timestamp: stage_ts.flatten(),
            request_received_timestamp: received_ts.flatten(),
            timestamp: ts.flatten(),
        };
        Ok((first, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventList;

    /// What the two-scan path says about `body`: each item's text and its view, debug-printed.
    fn two_scans(body: &str) -> Option<Vec<(String, String)>> {
        let list = EventList::parse(body.as_bytes()).ok()?;
        list.items
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                EventView::parse(i, raw)
                    .ok()
                    .map(|v| (raw.get().to_owned(), format!("{v:?}")))
            })
            .collect()
    }

    fn one_scan(body: &str) -> Option<Vec<(String, String)>> {
        items(body).map(|items| {
            items
                .iter()
                .map(|i| (i.json.to_owned(), format!("{:?}", i.view)))
                .collect()
        })
    }

    #[test]
    fn spans_and_views_are_the_two_scan_ones() {
        for body in [
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"auditID":"a","stage":"ResponseComplete","verb":"get"},{"auditID":"b","stage":"RequestReceived"}]}"#,
            "{ \"items\" : [ { \"auditID\" : \"a\" , \"stage\" : \"S\" } ,\n\t{\"stage\":\"T\",\"auditID\":\"b\",\"user\":{\"username\":\"u\"},\"responseStatus\":{\"code\":403}} ] , \"kind\" : \"EventList\" }\n",
            r#"{"items":[{"auditID":"a","stage":"S","kind":null,"verb":null,"user":null,"objectRef":{"resource":"pods"},"requestObject":{"a":[1,{"b":"}]"}]}}],"metadata":{"resourceVersion":"1"}}"#,
            r#"{"items":[]}"#,
            r#"{"items":[{"auditID":"a\"b","stage":"S\u00e9","stageTimestamp":"2026-01-01T00:00:00.123456Z"}]}"#,
        ] {
            let one = one_scan(body);
            assert!(one.is_some(), "{body}");
            assert_eq!(one, two_scans(body), "{body}");
        }
    }

    #[test]
    fn what_it_cannot_vouch_for_goes_to_the_two_scans() {
        for body in [
            // An escaped first key has no position in the body.
            r#"{"items":[{"\u0061uditID":"a","stage":"S"}]}"#,
            // Errors, each reported by the two-scan path.
            r#"{"items":[{"auditID":"a"}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","auditID":"b"}]}"#,
            r#"{"items":[{}]}"#,
            r#"{"items":[["a","S"]]}"#,
            r#"{"kind":"Event","items":[]}"#,
            r#"{"items":[{"auditID":"a","stage":"S"}],"items":[]}"#,
            r#"{"items":[{"auditID":"a","stage":"S"}]} x"#,
            r#"{"kind":"EventList"}"#,
            r#"[{"auditID":"a","stage":"S"}]"#,
        ] {
            assert!(one_scan(body).is_none(), "{body}");
        }
    }
}
