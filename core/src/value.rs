//! The one in-memory tree that every format decodes into and encodes from.
//!
//! - Numbers keep the exact text they were written with ([`Number`]): a price
//!   `185.50` is never rounded through `f64`, and arithmetic goes through
//!   [`rust_decimal::Decimal`].
//! - Objects keep their keys in document order ([`Map`]); XML element order
//!   therefore survives a decode/encode round trip.
//! - XML has its own conventions on top of this tree (attributes as `@name`,
//!   text beside children as `#text`, repeated elements as arrays); they are
//!   described in `codec::xml`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Text in a value tree: keys, strings and number texts. Up to 24 bytes are
/// stored inline, so the short keys and codes that make up most business
/// messages cost no allocation to decode, copy or drop.
pub type Str = compact_str::CompactString;

/// A decoded message, or a part of one.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(Str),
    Array(Vec<Value>),
    Object(Map),
}

impl Value {
    /// The name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "text",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// True for scalars (text, number, boolean, null).
    pub fn is_scalar(&self) -> bool {
        !matches!(self, Value::Array(_) | Value::Object(_))
    }

    /// The text of a scalar as it would be written in a document:
    /// numbers as written, booleans as `true`/`false`, null as empty.
    /// `None` for lists and objects.
    pub fn scalar_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Null => Some(Cow::Borrowed("")),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Number(n) => Some(Cow::Borrowed(n.as_str())),
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => None,
        }
    }

    /// The exact decimal value of a number, or of text that is a decimal
    /// number (`"185.50"`, `"-3"`, `"1e3"` is not: decimal notation only).
    pub fn to_decimal(&self) -> Option<Decimal> {
        match self {
            Value::Number(n) => n.to_decimal(),
            Value::String(s) => parse_decimal_text(s.trim()),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(Str::from(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(Str::from(s))
    }
}

impl From<Str> for Value {
    fn from(s: Str) -> Self {
        Value::String(s)
    }
}

impl From<Decimal> for Value {
    fn from(d: Decimal) -> Self {
        Value::Number(Number::from_decimal(d))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Number(Number::from_i64(i))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Object(m)
    }
}

impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}

/// Parses text in plain decimal notation (`-12.50`), as written in JSON or
/// XML documents, into an exact decimal. Surrounding whitespace is not allowed.
pub fn parse_decimal_text(s: &str) -> Option<Decimal> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return None;
    }
    Decimal::from_str(s).ok()
}

/// A number, kept as the exact text of the document it came from.
///
/// The text always follows the JSON number grammar, so it can be written to
/// any format unchanged; [`Number::to_decimal`] gives its exact value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Number(Str);

impl Number {
    /// Accepts text that follows the JSON number grammar
    /// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
    pub fn parse(text: &str) -> Option<Number> {
        if is_json_number(text.as_bytes()) {
            Some(Number(Str::from(text)))
        } else {
            None
        }
    }

    /// Wraps text already checked against the JSON number grammar.
    pub(crate) fn from_checked(text: &str) -> Number {
        debug_assert!(is_json_number(text.as_bytes()), "{text:?}");
        Number(Str::from(text))
    }

    pub fn from_decimal(d: Decimal) -> Number {
        Number(decimal_text(d))
    }

    pub fn from_i64(i: i64) -> Number {
        Number(compact_str::format_compact!("{i}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exact value, when it fits a decimal (28 significant digits).
    /// Exponent notation is expanded exactly.
    pub fn to_decimal(&self) -> Option<Decimal> {
        if self.0.bytes().any(|b| b == b'e' || b == b'E') {
            Decimal::from_scientific(&self.0).ok()
        } else {
            Decimal::from_str(&self.0).ok()
        }
    }

    /// The value as an integer, when it is one and fits an `i64`.
    pub fn to_i64(&self) -> Option<i64> {
        if let Ok(i) = self.0.parse::<i64>() {
            return Some(i);
        }
        let d = self.to_decimal()?;
        if d.fract().is_zero() {
            i64::try_from(d).ok()
        } else {
            None
        }
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a decimal, as `Decimal`'s `Display` writes it (`-12.50`,
/// trailing zeros kept), without going through the formatting machinery:
/// numbers are written for nearly every field of a mapped document.
pub fn decimal_text(d: Decimal) -> Str {
    let scale = d.scale() as usize;
    let mantissa = d.mantissa().unsigned_abs();
    let mut buf = [0u8; 40];
    let mut n = buf.len();
    // Divisions on 64 bits are much cheaper, and most amounts fit.
    if let Ok(mut m) = u64::try_from(mantissa) {
        loop {
            n -= 1;
            buf[n] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
    } else {
        let mut m = mantissa;
        loop {
            n -= 1;
            buf[n] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
    }
    // Only ASCII digits were written.
    let digits = std::str::from_utf8(&buf[n..]).unwrap_or_default();
    let mut out = Str::with_capacity(digits.len() + scale + 3);
    if d.is_sign_negative() && mantissa != 0 {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        for _ in digits.len()..scale {
            out.push('0');
        }
        out.push_str(digits);
    }
    out
}

/// The JSON number grammar, on bytes.
pub(crate) fn is_json_number(b: &[u8]) -> bool {
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

/// An object: keys in document order.
///
/// Lookup is a linear scan: the objects of business messages are small
/// (tens of keys), where a scan beats hashing.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Map {
    entries: Vec<(Str, Value)>,
}

impl Map {
    pub fn new() -> Map {
        Map::default()
    }

    pub fn with_capacity(n: usize) -> Map {
        Map {
            entries: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing the value in place if the key exists
    /// (its position is kept) or appending it otherwise. Returns the old value.
    pub fn insert(&mut self, key: impl Into<Str>, value: Value) -> Option<Value> {
        let key = key.into();
        if let Some(slot) = self.get_mut(&key) {
            return Some(std::mem::replace(slot, value));
        }
        self.entries.push((key, value));
        None
    }

    /// Appends without looking for an existing key. The caller guarantees
    /// that the key is new (decoders that have already checked it).
    pub fn push_unchecked(&mut self, key: Str, value: Value) {
        self.entries.push((key, value));
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (&str, &mut Value)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Value> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl IntoIterator for Map {
    type Item = (Str, Value);
    type IntoIter = std::vec::IntoIter<(Str, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Into<Str>> FromIterator<(K, Value)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut m = Map::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "185.50", "1e3", "1E-3", "-12.5e+10", "120"] {
            assert!(Number::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "+1", "1.5.2", " 1", "NaN", "0x10",
        ] {
            assert!(Number::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn numbers_keep_their_text_and_exact_value() {
        let n = Number::parse("185.50").unwrap();
        assert_eq!(n.as_str(), "185.50");
        assert_eq!(n.to_decimal().unwrap().to_string(), "185.50");
        assert_eq!(
            Number::parse("1.5e2").unwrap().to_decimal().unwrap(),
            Decimal::from(150)
        );
        assert_eq!(Number::parse("120").unwrap().to_i64(), Some(120));
        assert_eq!(Number::parse("1.5").unwrap().to_i64(), None);
    }

    #[test]
    fn decimal_text_matches_display() {
        for t in [
            "0",
            "1",
            "-1",
            "0.5",
            "-0.05",
            "22260.00",
            "39060.00",
            "1987500",
            "0.001",
            "-12.50",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "-0.00",
        ] {
            let d = Decimal::from_str(t).unwrap();
            assert_eq!(decimal_text(d), d.to_string(), "{t}");
        }
    }

    #[test]
    fn decimal_text_is_plain_notation_only() {
        assert_eq!(parse_decimal_text("185.50").unwrap().to_string(), "185.50");
        assert_eq!(parse_decimal_text("090111").unwrap(), Decimal::from(90111));
        for bad in ["1e3", "", ".5", "5.", "+5", "12 ", "abc", "1,5"] {
            assert!(parse_decimal_text(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn map_keeps_order_and_replaces_in_place() {
        let mut m = Map::new();
        m.insert("b", Value::from("1"));
        m.insert("a", Value::from("2"));
        assert_eq!(m.insert("b", Value::from("3")), Some(Value::from("1")));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(m.get("b"), Some(&Value::from("3")));
        assert_eq!(m.remove("b"), Some(Value::from("3")));
        assert_eq!(m.len(), 1);
    }
}
