//! Value types the configuration is parsed into: sizes, durations, bounded numbers and checked
//! strings. Each is built through one constructor that says what is wrong, so nothing
//! downstream checks or re-parses them, and each prints back the way a person writes it (the
//! effective configuration that `check-config` shows parses back to the same values).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A byte count, written as an integer or as a string such as `"64MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The count as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses `65536`, `"64KiB"`, `"1 GiB"`, `"16MB"` (KB, MB and GB are read as binary units).
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 65536, \"64KiB\" or \"1GiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

/// The largest binary unit that divides the count: `64MiB`, `8KiB`, `1000`.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 >= 1 << 10 {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

/// A size of at least `MIN` bytes (`deserialize_with` helper).
///
/// # Errors
/// When the value is not a size or is below `MIN`.
pub fn size_at_least<'de, D: Deserializer<'de>, const MIN: u64>(
    d: D,
) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(d)?;
    if size.0 < MIN {
        return Err(de::Error::custom(format!(
            "{size} is too small: at least {}",
            ByteSize(MIN)
        )));
    }
    Ok(size)
}

/// A size between `MIN` and `MAX` bytes (`deserialize_with` helper).
///
/// # Errors
/// When the value is not a size or is out of range.
pub fn size_between<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(d)?;
    if !(MIN..=MAX).contains(&size.0) {
        return Err(de::Error::custom(format!(
            "{} is out of range: must be between {MIN} and {MAX} bytes",
            size.0
        )));
    }
    Ok(size)
}

/// An integer between `MIN` and `MAX` (`deserialize_with` helper).
///
/// # Errors
/// When the value is not an integer in range.
pub fn int_between<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = u64::deserialize(d)?;
    if !(MIN..=MAX).contains(&n) {
        return Err(de::Error::custom(format!(
            "{n} is out of range: must be between {MIN} and {MAX}"
        )));
    }
    T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

/// Serde helpers for durations written as `"30s"`, `"250ms"`, `"5m"`, `"1h"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// Parses `"30s"`, `"250ms"`, `"5m"` or `"1h"`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as \"250ms\", \"30s\" or \"5m\""))?;
        match unit {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => Ok(Duration::from_secs(n)),
            "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
            "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
            _ => Err(format!(
                "`{s}` has no unit: write e.g. \"250ms\", \"30s\", \"5m\" or \"1h\""
            )),
        }
    }

    /// Formats a duration the way [`parse`] reads it, in the largest unit that is exact.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if d.is_zero() {
            "0s".to_owned()
        } else if !ms.is_multiple_of(1000) || !d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{ms}ms")
        } else {
            let s = d.as_secs();
            if s.is_multiple_of(3600) {
                format!("{}h", s / 3600)
            } else if s.is_multiple_of(60) {
                format!("{}m", s / 60)
            } else {
                format!("{s}s")
            }
        }
    }

    /// Serde `deserialize_with` entry point.
    ///
    /// # Errors
    /// When the value is not a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(de::Error::custom)
    }

    /// Serde `serialize_with` entry point.
    ///
    /// # Errors
    /// Only the serializer's own errors.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

/// A duration above zero (`deserialize_with` helper).
///
/// # Errors
/// When the value is not a duration or is zero.
pub fn nonzero_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration::deserialize(d)?;
    if value.is_zero() {
        return Err(de::Error::custom("must be above 0"));
    }
    Ok(value)
}

/// What a checked string may hold.
pub trait Rule {
    /// `Ok` when `text` follows the rule, else what the text must be.
    ///
    /// # Errors
    /// The message for the configuration error.
    fn check(text: &str) -> Result<(), String>;
}

/// A string checked against rule `R` once, when it is built; used for the configuration's
/// names and header fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Checked<R>(String, #[serde(skip)] std::marker::PhantomData<R>);

impl<R: Rule> Checked<R> {
    /// Checks `text`.
    ///
    /// # Errors
    /// A message saying what the text must be.
    pub fn new(text: impl Into<String>) -> Result<Self, String> {
        let text = text.into();
        R::check(&text)?;
        Ok(Self(text, std::marker::PhantomData))
    }

    /// A text known to be valid (the built-in defaults).
    pub(crate) fn literal(text: &'static str) -> Self {
        debug_assert!(R::check(text).is_ok(), "{text}");
        Self(text.to_owned(), std::marker::PhantomData)
    }
}

impl<R> Checked<R> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de, R: Rule> Deserialize<'de> for Checked<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl<R> fmt::Display for Checked<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<R> std::ops::Deref for Checked<R> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// 1 to `MAX` printable ASCII characters without spaces (RFC 5424 PRINTUSASCII).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Printable<const MAX: usize>;

impl<const MAX: usize> Rule for Printable<MAX> {
    fn check(text: &str) -> Result<(), String> {
        if text.is_empty() || text.len() > MAX || !text.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!(
                "`{text}` must be 1 to {MAX} printable ASCII characters without spaces"
            ));
        }
        Ok(())
    }
}

/// Letters, digits, `-` and `_`, at least one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameChars;

impl Rule for NameChars {
    fn check(text: &str) -> Result<(), String> {
        if text.is_empty()
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "`{text}` must be non-empty letters, digits, `-` or `_`"
            ));
        }
        Ok(())
    }
}

/// Starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AbsolutePath;

impl Rule for AbsolutePath {
    fn check(text: &str) -> Result<(), String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        Ok(())
    }
}

/// Printable ASCII without spaces, such as the HOSTNAME and APP-NAME header fields.
pub type PrintAscii<const MAX: usize> = Checked<Printable<MAX>>;

/// A destination name: it appears in metric labels and in cursor file names.
pub type Name = Checked<NameChars>;

/// A URL path of the webhook.
pub type UrlPath = Checked<AbsolutePath>;

/// A syslog facility, 0 to 23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Facility(u8);

impl Facility {
    /// facility 13, "log audit".
    pub const LOG_AUDIT: Facility = Facility(13);

    /// Checks `n`.
    ///
    /// # Errors
    /// When `n` is above 23.
    pub fn new(n: u8) -> Result<Self, String> {
        if n > 23 {
            return Err(format!("{n} is not a facility (0 to 23)"));
        }
        Ok(Self(n))
    }

    /// The number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        u8::try_from(n)
            .map_err(|_| format!("{n} is not a facility (0 to 23)"))
            .and_then(Self::new)
            .map_err(de::Error::custom)
    }
}

/// Default-value helpers shared by the sections.
pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_back_as_written() {
        for (text, n) in [("64MiB", 64u64 << 20), ("8KiB", 8 << 10), ("1GiB", 1 << 30)] {
            assert_eq!(ByteSize::parse(text).unwrap().0, n);
            assert_eq!(ByteSize(n).to_string(), text);
        }
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(1536).to_string(), "1536");
        assert!(ByteSize::parse("1TiB").is_err());
        assert!(ByteSize::parse("x").is_err());
    }

    #[test]
    fn durations_print_back_as_written() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", secs(30)),
            ("5m", secs(300)),
            ("1h", secs(3600)),
            ("1500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(duration::parse(text).unwrap(), d, "{text}");
            assert_eq!(duration::format(d), text);
        }
        assert!(duration::parse("5").is_err());
    }

    #[test]
    fn checked_strings() {
        assert!(PrintAscii::<4>::new("abcd").is_ok());
        assert!(PrintAscii::<4>::new("abcde").is_err());
        assert!(PrintAscii::<4>::new("a b").is_err());
        assert!(PrintAscii::<4>::new("").is_err());
        assert!(Name::new("a-b_1").is_ok());
        assert!(Name::new("a.b").is_err());
        assert!(Facility::new(23).is_ok() && Facility::new(24).is_err());
        assert!(UrlPath::new("/x").is_ok() && UrlPath::new("x").is_err());
    }
}
