//! Settings every connector shares: sizes, durations, document formats,
//! business keys, and how a destination is dispatched to (concurrency,
//! retries, replies).
//!
//! Each value type checks itself while the configuration is read, so that
//! `nzela check` reports a bad size or an unknown format before anything
//! starts.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use nzela_core::codec::{Codec, DecodeError, Format, Limits};
use nzela_core::runtime::FieldPath;
use nzela_core::runtime::dispatch::{DispatchSettings, RetryPolicy};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A number of bytes, written in the configuration as an integer or as a
/// string with a unit: `"10MiB"`, `"512KiB"`, `"1MB"`, `"100 B"`.
///
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024, decimal ones
/// (`kB`/`KB`, `MB`, `GB`) powers of 1000. Units are case-sensitive: `mb`
/// would be millibits, so it is refused rather than guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(n: u64) -> ByteSize {
        ByteSize(n)
    }

    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * KIB)
    }

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * MIB)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let bad =
            || format!("\"{s}\" is not a size: write e.g. 10MiB, 512KiB, 1MB or a number of bytes");
        let (number, unit) = split_number(s.trim()).ok_or_else(bad)?;
        let factor = match unit {
            "" | "B" => 1,
            "kB" | "KB" => 1000,
            "KiB" => KIB,
            "MB" => 1000 * 1000,
            "MiB" => MIB,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => GIB,
            _ => return Err(bad()),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("\"{s}\" is too large a size"))
    }
}

impl fmt::Display for ByteSize {
    /// The exact size in the largest unit that divides it: `10 MiB`,
    /// `1 MB`, `1500 bytes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let units = [
            (GIB, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1000, "kB"),
        ];
        match units.iter().find(|(u, _)| n >= *u && n.is_multiple_of(*u)) {
            Some((u, name)) => write!(f, "{} {name}", n / u),
            None => write!(f, "{n} bytes"),
        }
    }
}

/// An actual size for people, rounded: `812 bytes`, `3.4 KiB`, `12.0 MiB`.
pub fn human_size(n: u64) -> String {
    let n_f = n as f64;
    if n < KIB {
        format!("{n} bytes")
    } else if n < MIB {
        format!("{:.1} KiB", n_f / KIB as f64)
    } else if n < GIB {
        format!("{:.1} MiB", n_f / MIB as f64)
    } else {
        format!("{:.1} GiB", n_f / GIB as f64)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: a size cannot be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of time, written in the configuration as a number of seconds or
/// as a string with a unit: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    pub const fn secs(n: u64) -> DurationValue {
        DurationValue(Duration::from_secs(n))
    }

    pub const fn millis(n: u64) -> DurationValue {
        DurationValue(Duration::from_millis(n))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<DurationValue> for Duration {
    fn from(d: DurationValue) -> Duration {
        d.0
    }
}

impl fmt::Display for DurationValue {
    /// In the largest unit that divides it exactly, as it would be written
    /// in the configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        match units
            .iter()
            .find(|(u, _)| ms >= *u && ms.is_multiple_of(*u))
        {
            Some((u, name)) => write!(f, "{}{name}", ms / u),
            None => write!(f, "{ms}ms"),
        }
    }
}

/// Parses a duration as written in the configuration: `"500ms"`, `"30s"`,
/// `"5m"`, `"1h"`, `"2d"`, or a bare number of seconds (`"30"`, which is
/// how an environment override arrives).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "\"{s}\" is not a duration: write e.g. 500ms, 30s, 5m, 1h, 2d or a number of seconds"
        )
    };
    let (number, unit) = split_number(s.trim()).ok_or_else(bad)?;
    let millis_per = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(millis_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{s}\" is too long a duration"))
}

/// A duration from a configuration value already read as JSON (a number of
/// seconds or a string with a unit): for settings outside a connector,
/// such as `shutdown_timeout`.
pub fn parse_duration_value(v: &serde_json::Value) -> Result<Duration, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a duration: write a whole, non-negative number of seconds or e.g. \"30s\"")),
        serde_json::Value::String(s) => parse_duration(s),
        other => Err(format!("{other} is not a duration: write e.g. \"500ms\", \"30s\", \"5m\" or a number of seconds")),
    }
}

impl FromStr for DurationValue {
    type Err = String;

    fn from_str(s: &str) -> Result<DurationValue, String> {
        parse_duration(s).map(DurationValue)
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DurationValue, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue::secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v).map(DurationValue::secs).map_err(|_| {
                    E::custom(format!(
                        "{v} is not a duration: a duration cannot be negative"
                    ))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Splits `"10MiB"` into `(10, "MiB")` (whitespace allowed between them).
fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number = s[..end].parse().ok()?;
    Some((number, s[end..].trim_start()))
}

/// The format of the documents a source takes in: `"json"`, `"xml"` or
/// `"csv"`. A document that does not decode in it is refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceFormat(pub Format);

impl SourceFormat {
    /// The codec that checks documents of this format, with its default
    /// options.
    pub fn codec(self) -> Codec {
        Codec::default_for(self.0)
    }

    pub fn format(self) -> Format {
        self.0
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl FromStr for SourceFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceFormat, String> {
        Format::from_name(s)
            .map(SourceFormat)
            .ok_or_else(|| format!("\"{s}\" is not a format: write json, xml or csv"))
    }
}

impl<'de> Deserialize<'de> for SourceFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SourceFormat, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Where a message's business key (an order number) is read from:
/// a path such as `order.order_id`, checked when the configuration is read.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessKey(pub FieldPath);

impl fmt::Display for BusinessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for BusinessKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BusinessKey, D::Error> {
        let s = String::deserialize(d)?;
        FieldPath::parse(&s)
            .map(BusinessKey)
            .map_err(de::Error::custom)
    }
}

/// Checks a message as its source's codec decodes it and reads its
/// business key, without building more of it than the key needs
/// ([`check_message`]).
pub(crate) fn check_message(
    codec: &Codec,
    limits: &Limits,
    key: Option<&BusinessKey>,
    body: &[u8],
) -> Result<Option<String>, DecodeError> {
    nzela_core::runtime::check_message(codec, body, limits, key.map(|k| &k.0))
}

/// Decoding limits for a source.
pub(crate) fn limits(max_bytes: ByteSize, max_depth: usize) -> Limits {
    Limits {
        max_bytes: max_bytes.as_usize(),
        max_depth,
    }
}

/// When to give up on a delivery that keeps failing for now: the
/// `retry` table of a destination.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts before a delivery that keeps failing is dead-lettered (at
    /// least 1). Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: NonZeroU32,
    /// Wait before the second attempt; it doubles at each attempt, with
    /// random jitter. Default `"1s"`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: DurationValue,
    /// Longest wait between two attempts (a peer's `Retry-After` may ask
    /// for longer, and is honoured). Default `"5m"`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: DurationValue,
    /// A delivery still failing this long after it was created (or
    /// replayed) is dead-lettered; `0` means no age limit. Default `"24h"`.
    #[serde(default = "default_max_age")]
    pub max_age: DurationValue,
}

fn default_max_attempts() -> NonZeroU32 {
    NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)
}

fn default_initial_backoff() -> DurationValue {
    DurationValue::secs(1)
}

fn default_max_backoff() -> DurationValue {
    DurationValue::secs(300)
}

fn default_max_age() -> DurationValue {
    DurationValue::secs(24 * 3600)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_age: default_max_age(),
        }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.get(),
            initial_backoff: self.initial_backoff.get(),
            max_backoff: self.max_backoff.get(),
            max_age: Some(self.max_age.get()).filter(|d| !d.is_zero()),
        }
    }
}

pub(crate) fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN)
}

/// The dispatcher's settings from the fields every destination shares.
pub(crate) fn dispatch_settings(
    name: &str,
    concurrency: NonZeroUsize,
    retry: &RetryConfig,
    reply_to: Option<&String>,
    attempt_timeout: Duration,
) -> DispatchSettings {
    DispatchSettings {
        name: name.to_owned(),
        concurrency: concurrency.get(),
        attempt_timeout,
        retry: retry.policy(),
        reply_to: reply_to.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("10MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(10));
        assert_eq!("512KiB".parse::<ByteSize>().unwrap(), ByteSize::kib(512));
        assert_eq!("1MB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000));
        assert_eq!("100 B".parse::<ByteSize>().unwrap(), ByteSize(100));
        assert_eq!("2GiB".parse::<ByteSize>().unwrap(), ByteSize(2 * GIB));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        let e = "10 mb".parse::<ByteSize>().unwrap_err();
        assert_eq!(
            e,
            "\"10 mb\" is not a size: write e.g. 10MiB, 512KiB, 1MB or a number of bytes"
        );
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        let from_json: ByteSize = serde_json::from_value(serde_json::json!(2048)).unwrap();
        assert_eq!(from_json, ByteSize(2048));
        let from_json: ByteSize = serde_json::from_value(serde_json::json!("1KiB")).unwrap();
        assert_eq!(from_json, ByteSize(1024));
        assert!(serde_json::from_value::<ByteSize>(serde_json::json!(-1)).is_err());
    }

    #[test]
    fn sizes_display_in_their_largest_exact_unit() {
        assert_eq!(ByteSize::mib(10).to_string(), "10 MiB");
        assert_eq!(ByteSize(1_000_000).to_string(), "1 MB");
        assert_eq!(ByteSize(1500).to_string(), "1500 bytes");
        assert_eq!(human_size(12 * MIB + MIB / 2), "12.5 MiB");
        assert_eq!(human_size(10), "10 bytes");
    }

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration(" 10 s ").unwrap(), Duration::from_secs(10));
        let e = parse_duration("ten seconds").unwrap_err();
        assert!(
            e.starts_with("\"ten seconds\" is not a duration: write e.g. 500ms"),
            "{e}"
        );
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(
            parse_duration_value(&serde_json::json!(7)).unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(
            parse_duration_value(&serde_json::json!("2m")).unwrap(),
            Duration::from_secs(120)
        );
        assert!(parse_duration_value(&serde_json::json!(-3)).is_err());
        assert!(parse_duration_value(&serde_json::json!(true)).is_err());
        assert_eq!(DurationValue::secs(300).to_string(), "5m");
        assert_eq!(DurationValue::millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn retry_settings_have_defaults_and_refuse_unknown_keys() {
        let r: RetryConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(r.policy(), RetryPolicy::default());
        let r: RetryConfig = serde_json::from_value(
            serde_json::json!({"max_attempts": 3, "max_backoff": "10m", "max_age": 0}),
        )
        .unwrap();
        let p = r.policy();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.max_backoff, Duration::from_secs(600));
        assert_eq!(p.max_age, None);
        let e = serde_json::from_value::<RetryConfig>(serde_json::json!({"max_attempt": 3}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `max_attempt`"), "{e}");
        assert!(
            serde_json::from_value::<RetryConfig>(serde_json::json!({"max_attempts": 0})).is_err()
        );
    }

    #[test]
    fn formats_and_business_keys_are_checked_when_read() {
        let f: SourceFormat = serde_json::from_value(serde_json::json!("xml")).unwrap();
        assert_eq!(f.format(), Format::Xml);
        let e = serde_json::from_value::<SourceFormat>(serde_json::json!("yaml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"yaml\" is not a format: write json, xml or csv"
        );
        let k: BusinessKey = serde_json::from_value(serde_json::json!("order.order_id")).unwrap();
        assert_eq!(k.to_string(), "order.order_id");
        assert!(serde_json::from_value::<BusinessKey>(serde_json::json!("a..b")).is_err());
    }
}
