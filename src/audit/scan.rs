//! The relay's own JSON scanner for the split: one pass over the body that checks the JSON,
//! finds each item's span, reads the fields of [`EventView`] and notes whether an item holds
//! whitespace outside its strings, so that rendering can copy a compact item (what the
//! apiserver sends) instead of scanning it again. serde's visitors, even in one scan
//! ([`super::split`]), cost about 10 400 instructions per 700-byte event, most of it call
//! overhead around ~50 short strings, and compaction 3 800 more; this pass costs about
//! 8 600 (callgrind), strings stepped through eight bytes at a time.
//!
//! Like the one-scan path it only ever answers "here are the items" or "cannot say", and
//! says the latter for anything outside the plain case: an error of any kind, an escaped key
//! in the list or an item, an escaped value of a field it reads, a field of an unexpected
//! type, a `\u` escape that is not a character, nesting deeper than [`MAX_DEPTH`]. Those go
//! to the serde paths, whose results and errors stay the reference; the equivalence tests
//! and the `eventlist` fuzz target hold this path to them.

use std::borrow::Cow;

use super::{EventView, Item, StatusView, UserView, quote_backslash_or_control};

/// The deepest nesting taken here, the list itself counted (serde_json allows 128).
pub const MAX_DEPTH: u32 = 64;

/// The items of `text`, or `None` when this path cannot vouch for them (see the module).
pub(super) fn items(text: &str) -> Option<Vec<Item<'_>>> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        spaced: false,
    };
    s.ws();
    s.eat(b'{')?;
    let mut kind: Option<Option<&str>> = None;
    let mut items = None;
    loop {
        s.ws();
        let key = s.plain_key()?;
        match key {
            b"kind" => once(&mut kind, s.text_or_null()?)?,
            b"items" => once(&mut items, s.items()?)?,
            _ => s.skip_value(2)?,
        }
        if !s.next_member(b'}')? {
            break;
        }
    }
    s.ws();
    (s.i == s.b.len()).then_some(())?;
    if kind.flatten().is_some_and(|k| k != "EventList") {
        return None;
    }
    items
}

/// Stores a field's value; `None` for a second one (serde refuses it).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    /// The next byte to read.
    i: usize,
    /// Whether whitespace was skipped since the flag was last cleared.
    spaced: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
            self.spaced = true;
        }
    }

    /// Consumes `want` if it is next.
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.i += 1)
    }

    /// After a member or element: `Some(true)` at a `,`, `Some(false)` at `close`.
    fn next_member(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            b if b == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// An object key without escapes and the `:` after it.
    fn plain_key(&mut self) -> Option<&'a [u8]> {
        let (start, end, escaped) = self.string()?;
        if escaped {
            return None;
        }
        self.ws();
        self.eat(b':')?;
        self.ws();
        self.b.get(start..end)
    }

    /// A string at the cursor: where its text between the quotes starts and ends, and
    /// whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut j = start;
        let mut escaped = false;
        loop {
            j = quote_backslash_or_control(self.b, j)?;
            match self.b.get(j)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    j = escape_end(self.b, j)?;
                }
                _ => return None, // a control character: not JSON
            }
        }
        self.i = j + 1;
        Some((start, j, escaped))
    }

    /// A string without escapes (borrowed as the serde paths borrow it).
    fn plain_text(&mut self) -> Option<&'a str> {
        match self.string()? {
            (start, end, false) => self.text.get(start..end),
            (_, _, true) => None,
        }
    }

    /// A string without escapes, or `null`.
    fn text_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        self.plain_text().map(Some)
    }

    /// The `items` array.
    fn items(&mut self) -> Option<Vec<Item<'a>>> {
        self.eat(b'[')?;
        self.ws();
        // About one item per 700 bytes, as Metadata events are; at most the apiserver's
        // default batch (400), so that a body of large events does not reserve an item per
        // kilobyte (a 20 MB body would hold 20 000 empty slots of ~270 bytes).
        let mut items = Vec::with_capacity((self.b.len() / 640 + 1).min(400));
        if self.eat(b']').is_some() {
            return Some(items);
        }
        loop {
            self.ws();
            items.push(self.item()?);
            if !self.next_member(b']')? {
                return Some(items);
            }
        }
    }

    /// One event: the fields [`EventView`]'s derived `Deserialize` reads, by the same names,
    /// `null` as absent for the optional ones; a repeated field is refused, the rest skipped.
    fn item(&mut self) -> Option<Item<'a>> {
        let start = self.i;
        self.eat(b'{')?;
        self.spaced = false;
        let (mut audit_id, mut stage) = (None, None);
        let (mut kind, mut api_version, mut verb) = (None, None, None);
        let (mut stage_ts, mut received_ts, mut ts) = (None, None, None);
        let mut user: Option<Option<UserView<'a>>> = None;
        let mut status: Option<Option<StatusView>> = None;
        loop {
            self.ws();
            match self.plain_key()? {
                b"auditID" => once(&mut audit_id, self.plain_text()?)?,
                b"stage" => once(&mut stage, self.plain_text()?)?,
                b"kind" => once(&mut kind, self.text_or_null()?)?,
                b"apiVersion" => once(&mut api_version, self.text_or_null()?)?,
                b"verb" => once(&mut verb, self.text_or_null()?)?,
                b"stageTimestamp" => once(&mut stage_ts, self.text_or_null()?)?,
                b"requestReceivedTimestamp" => once(&mut received_ts, self.text_or_null()?)?,
                b"timestamp" => once(&mut ts, self.text_or_null()?)?,
                b"user" => once(&mut user, self.user()?)?,
                b"responseStatus" => once(&mut status, self.status()?)?,
                _ => self.skip_value(4)?,
            }
            if !self.next_member(b'}')? {
                break;
            }
        }
        let json = self.text.get(start..self.i)?;
        let borrowed = |s: Option<Option<&'a str>>| s.flatten().map(Cow::Borrowed);
        Some(Item {
            json,
            compact: !self.spaced,
            view: EventView {
                audit_id: Cow::Borrowed(audit_id?),
                stage: Cow::Borrowed(stage?),
                kind: borrowed(kind),
                api_version: borrowed(api_version),
                verb: borrowed(verb),
                user: user.flatten(),
                response_status: status.flatten(),
                stage_timestamp: borrowed(stage_ts),
                request_received_timestamp: borrowed(received_ts),
                timestamp: borrowed(ts),
            },
        })
    }

    /// `user`: an object (its `username`) or `null`.
    fn user(&mut self) -> Option<Option<UserView<'a>>> {
        let user = self.one_member(b"username", Self::text_or_null)?;
        Some(user.map(|name| UserView {
            username: name.map(Cow::Borrowed),
        }))
    }

    /// `responseStatus`: an object (its `code`) or `null`.
    fn status(&mut self) -> Option<Option<StatusView>> {
        let status = self.one_member(b"code", Self::code)?;
        Some(status.map(|code| StatusView { code }))
    }

    /// An object of which one member is read, as a derived `Deserialize` reads a struct of
    /// one optional field: `null` for no object, the member absent or `null` for no value, a
    /// repeated member refused, the others skipped.
    fn one_member<T>(
        &mut self,
        name: &[u8],
        read: fn(&mut Self) -> Option<Option<T>>,
    ) -> Option<Option<Option<T>>> {
        if self.null()? {
            return Some(None);
        }
        self.eat(b'{')?;
        let mut value = None;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                if self.plain_key()? == name {
                    once(&mut value, read(self)?)?;
                } else {
                    self.skip_value(5)?;
                }
                if !self.next_member(b'}')? {
                    break;
                }
            }
        }
        Some(Some(value.flatten()))
    }

    /// Consumes a `null` that is next: `Some(true)`; `Some(false)` when another value is.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null").map(|()| true)
    }

    /// An integer of at most 18 digits (always an i64), or `null`.
    fn code(&mut self) -> Option<Option<i64>> {
        if self.null()? {
            return Some(None);
        }
        let start = self.i;
        self.number()?;
        let digits = self.text.get(start..self.i)?;
        let unsigned = digits.strip_prefix('-').unwrap_or(digits);
        if unsigned.len() > 18 || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Some)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A number as JSON's grammar has it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// Any JSON value, checked and stepped over; `depth` is the nesting of the value itself.
    fn skip_value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' if depth > MAX_DEPTH => None,
            b'{' => {
                self.i += 1;
                self.ws();
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    if !self.next_member(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    if !self.next_member(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }
}

/// Where the scan goes on after the escape at `at` (a `\`); `None` for an escape JSON does
/// not have and for a `\u` escape that is not a character (a lone or reversed surrogate,
/// which [`super::EventView::parse`] refuses).
fn escape_end(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let unit = hex4(b, at + 2)?;
            match unit {
                0xD800..=0xDBFF => {
                    (b.get(at + 6..at + 8)? == b"\\u").then_some(())?;
                    let low = hex4(b, at + 8)?;
                    (0xDC00..=0xDFFF).contains(&low).then_some(at + 12)
                }
                0xDC00..=0xDFFF => None,
                _ => Some(at + 6),
            }
        }
        _ => None,
    }
}

/// The value of four hex digits at `at`.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.iter().try_fold(0, |acc, &c| {
        let digit = char::from(c).to_digit(16)?;
        Some(acc * 16 + digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventList;

    fn scanned(body: &str) -> Option<Vec<(String, String, bool)>> {
        items(body).map(|items| {
            items
                .iter()
                .map(|i| (i.json.to_owned(), format!("{:?}", i.view), i.compact))
                .collect()
        })
    }

    fn reference(body: &str) -> Option<Vec<(String, String)>> {
        EventList::items_two_scans(body.as_bytes())
            .ok()
            .map(|items| {
                items
                    .iter()
                    .map(|i| (i.json.to_owned(), format!("{:?}", i.view)))
                    .collect()
            })
    }

    #[test]
    fn spans_views_and_compactness() {
        for (body, compact) in [
            (
                r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"auditID":"a","stage":"ResponseComplete","verb":"get","user":{"username":"u","groups":["a b"]},"responseStatus":{"metadata":{},"code":-403},"x":[1,-0.5e+3,true,false,null,"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"]},{"auditID":"b","stage":"RequestReceived","user":null,"responseStatus":{"code":null}}]}"#,
                [true, true],
            ),
            (
                "{ \"items\" : [ { \"auditID\" : \"a\" , \"stage\" : \"S\" } ,\n\t{\"stage\":\"T\",\"auditID\":\"b\",\"user\":{},\"responseStatus\":{}} ] , \"kind\" : null }\n",
                [false, true],
            ),
        ] {
            let got = scanned(body).unwrap_or_else(|| panic!("taken: {body}"));
            let want = reference(body).unwrap_or_else(|| panic!("valid: {body}"));
            assert_eq!(
                got.iter()
                    .map(|(j, v, _)| (j.clone(), v.clone()))
                    .collect::<Vec<_>>(),
                want
            );
            assert_eq!(got.iter().map(|g| g.2).collect::<Vec<_>>(), compact);
        }
        assert_eq!(scanned(r#"{"items":[]}"#), Some(vec![]));
    }

    #[test]
    fn what_it_cannot_vouch_for_goes_to_the_serde_paths() {
        for body in [
            // Escapes where a field is read: serde unescapes them.
            r#"{"items":[{"\u0061uditID":"a","stage":"S"}]}"#,
            r#"{"items":[{"auditID":"a\"b","stage":"S"}]}"#,
            r#"{"\u006bind":"EventList","items":[]}"#,
            // Types serde would convert or refuse.
            r#"{"items":[{"auditID":"a","stage":"S","user":["u"]}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","responseStatus":{"code":200.0}}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","responseStatus":{"code":"200"}}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","verb":1}]}"#,
            // Errors.
            r#"{"items":[{"auditID":"a"}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","auditID":"b"}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","user":{"username":"u","username":"v"}}]}"#,
            r#"{"items":[{}]}"#,
            r#"{"items":[["a","S"]]}"#,
            r#"{"kind":"Event","items":[]}"#,
            r#"{"items":[],"items":[]}"#,
            r#"{"items":[]} x"#,
            r#"{"kind":"EventList"}"#,
            r#"{"items":null}"#,
            r#"[{"auditID":"a","stage":"S"}]"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":"\ud800"}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":"\udc00\ud800"}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":"\x"}]}"#,
            "{\"items\":[{\"auditID\":\"a\",\"stage\":\"S\",\"x\":\"\t\"}]}",
            r#"{"items":[{"auditID":"a","stage":"S","x":01}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":1.}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":-}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":tru}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":[1,]}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S","x":{"a":1,}}]}"#,
            r#"{"items":[{"auditID":"a","stage":"S"},]}"#,
            r#"{"items":[{"auditID":"a","stage":"S"}"#,
        ] {
            assert!(scanned(body).is_none(), "{body}");
        }
        let deep = format!(
            r#"{{"items":[{{"auditID":"a","stage":"S","x":{}1{}}}]}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        assert!(scanned(&deep).is_none());
        assert!(
            reference(&deep).is_some(),
            "serde takes it, so it is not lost"
        );
    }
}
