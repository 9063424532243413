//! `[[filter]]` and `[[redact]]` rules as the file states them; the compiled policy that
//! applies them lives in [`crate::filter`].

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// `action` of a filter rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Relay matching events (and stop looking).
    Keep,
    /// Drop matching events (counted in `kar_events_filtered_total`).
    Drop,
}

/// One `[[filter]]` rule: every field given must match (a list matches when any entry does).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// `keep` or `drop`.
    pub action: Action,
    /// Stages, e.g. `["RequestReceived"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage: Vec<String>,
    /// Verbs, e.g. `["get", "list", "watch"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verb: Vec<String>,
    /// User names, `*` globs allowed (`system:serviceaccount:kube-system:*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<String>,
    /// Groups (globs); matches when any group of the user matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<String>,
    /// `objectRef.namespace` values (globs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<String>,
    /// `objectRef.resource` values, e.g. `["events", "leases"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<String>,
    /// Audit levels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub level: Vec<String>,
    /// `responseStatus.code` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<i64>,
}

/// One `[[redact]]` rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    /// RFC 6901 JSON pointer of the value to replace, e.g. `/requestObject/data`.
    pub pointer: JsonPointer,
    /// Only for events on these resources (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<String>,
}

/// An RFC 6901 JSON pointer below the event's root, kept with its unescaped segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    segments: Vec<String>,
}

impl JsonPointer {
    /// Parses a pointer.
    ///
    /// # Errors
    /// When it does not start with `/`, or is only `/` (the whole event).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("`{text}` is not a JSON pointer (it must start with `/`)"))?;
        if rest.is_empty() {
            return Err("the whole event cannot be redacted".into());
        }
        Ok(Self {
            text: text.to_owned(),
            segments: rest
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
        })
    }

    /// The unescaped segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPointer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for JsonPointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        let p = JsonPointer::parse("/annotations/a~1b/c~0d").unwrap();
        assert_eq!(p.segments(), ["annotations", "a/b", "c~d"]);
        assert_eq!(p.to_string(), "/annotations/a~1b/c~0d");
        assert!(JsonPointer::parse("x").is_err());
        assert!(JsonPointer::parse("/").is_err());
    }
}
