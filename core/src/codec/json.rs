//! JSON codec (RFC 8259).
//!
//! The decoder is hand-written for two reasons a generic parser does not
//! meet: numbers keep their exact text (a price `185.50` stays `185.50`, a
//! 30-digit identifier is not rounded), and every error names the line and
//! column of the offending character together with what was expected there.
//!
//! Nesting is tracked on an explicit stack instead of the call stack, so a
//! hostile `[[[[...` document cannot overflow the stack whatever the
//! configured depth limit; it is refused at the first bracket over the limit.

use std::borrow::Cow;
use std::collections::HashSet;

use super::charset;
use super::{DecodeError, Format, Limits};
use crate::value::{Map, Number, Str, Value};

/// Options of the JSON codec.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JsonOptions {
    /// Indent the output (two spaces) instead of writing it on one line.
    pub pretty: bool,
}

/// Decodes a JSON document (UTF-8, an optional byte-order mark is dropped).
pub fn decode(input: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    if input.len() > limits.max_bytes {
        return Err(DecodeError::new(
            Format::Json,
            None,
            format!(
                "document is {} bytes, over the limit of {} bytes",
                input.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = charset::utf8(input, Format::Json)?;
    Parser::new(text, limits).document()
}

/// What [`check`] found on the way to a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// The value reached by following the first `keys` names from the
    /// root through objects (it is not an object, or the names ran out),
    /// as written in the document.
    Value { text: &'a str, keys: usize },
    /// An object on the way has no member of the next name.
    Missing,
}

/// Checks a document exactly as [`decode`] would (grammar, UTF-8, nesting
/// and size limits, duplicate keys) without building its tree, and finds
/// the value at `path`: member names followed from the root.
///
/// Only the answer is cheap: on an error, the document is decoded to say
/// what and where, with the same message as [`decode`].
pub fn check<'a>(
    input: &'a [u8],
    limits: &Limits,
    path: Option<&[&str]>,
) -> Result<Option<Found<'a>>, DecodeError> {
    let skimmed = (input.len() <= limits.max_bytes)
        .then(|| charset::utf8(input, Format::Json).ok())
        .flatten()
        .and_then(|text| Parser::new(text, limits).skim(path).ok());
    match skimmed {
        Some(found) => Ok(found),
        // The error, told as decoding tells it. A document the skim
        // refused and decoding takes cannot happen; were it to, decoding
        // has the last word and the value is looked up in the tree.
        None => decode(input, limits).map(|_| None),
    }
}

/// Writes `value` as JSON text (UTF-8).
pub fn encode(value: &Value, options: &JsonOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let indent = if options.pretty { Some(0) } else { None };
    write_value(&mut out, value, indent);
    out
}

/// Above this many members, duplicate keys are looked up in a hash set:
/// a linear scan is fastest for the small objects of business messages, but
/// would make an object with a million keys quadratic.
const SCAN_LIMIT: usize = 32;

/// A container being filled.
enum Frame {
    Array(Vec<Value>),
    Object {
        map: Map,
        /// The key whose value is being parsed.
        key: Str,
        /// Every key so far, once the object is too large for a scan.
        seen: Option<HashSet<Str>>,
    },
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, limits: &Limits) -> Parser<'a> {
        Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            max_depth: limits.max_depth,
        }
    }
}

impl Parser<'_> {
    fn document(mut self) -> Result<Value, DecodeError> {
        self.skip_ws();
        if self.pos >= self.bytes.len() {
            return Err(self.error(self.pos, "empty document, expected a JSON value"));
        }
        let mut stack: Vec<Frame> = Vec::new();
        'value: loop {
            // A value starts at `pos` (whitespace skipped).
            let mut value = match self.peek() {
                Some(b'[') => {
                    self.enter(stack.len())?;
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        Value::Array(Vec::new())
                    } else {
                        stack.push(Frame::Array(Vec::new()));
                        continue 'value;
                    }
                }
                Some(b'{') => {
                    self.enter(stack.len())?;
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        Value::Object(Map::new())
                    } else {
                        let key = self.member_key("a string key or '}'")?;
                        stack.push(Frame::Object {
                            // Business objects have a handful of keys or
                            // more: start with room for them.
                            map: Map::with_capacity(8),
                            key,
                            seen: None,
                        });
                        continue 'value;
                    }
                }
                Some(b'"') => Value::String(self.string()?),
                Some(b't') => self.literal("true", Value::Bool(true))?,
                Some(b'f') => self.literal("false", Value::Bool(false))?,
                Some(b'n') => self.literal("null", Value::Null)?,
                Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
                _ => return Err(self.expected(self.pos, "a value")),
            };

            // Hand the value to its container; closing brackets may complete
            // several containers in a row.
            loop {
                self.skip_ws();
                let Some(frame) = stack.last_mut() else {
                    if self.pos < self.bytes.len() {
                        return Err(self.expected(self.pos, "the end of the document"));
                    }
                    return Ok(value);
                };
                match frame {
                    Frame::Array(items) => {
                        items.push(value);
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                self.skip_ws();
                                continue 'value;
                            }
                            Some(b']') => {
                                self.pos += 1;
                                value = Value::Array(std::mem::take(items));
                            }
                            _ => {
                                return Err(
                                    self.expected(self.pos, "',' or ']' after an array element")
                                );
                            }
                        }
                    }
                    Frame::Object { map, key, seen } => {
                        let done = std::mem::take(key);
                        if let Some(seen) = seen {
                            seen.insert(done.clone());
                        }
                        map.push_unchecked(done, value);
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                self.skip_ws();
                                let key_at = self.pos;
                                let next = self.member_key("a string key after ','")?;
                                if is_duplicate(map, seen, &next) {
                                    return Err(self.error(
                                        key_at,
                                        format!(
                                            "duplicate key \"{}\" in object",
                                            next.escape_debug()
                                        ),
                                    ));
                                }
                                *key = next;
                                continue 'value;
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                value = Value::Object(std::mem::take(map));
                            }
                            _ => {
                                return Err(
                                    self.expected(self.pos, "',' or '}' after an object member")
                                );
                            }
                        }
                    }
                }
                stack.pop();
            }
        }
    }

    /// Refuses a container that would be deeper than the limit.
    fn enter(&self, open: usize) -> Result<(), DecodeError> {
        if open >= self.max_depth {
            return Err(self.error(
                self.pos,
                format!(
                    "nesting too deep: arrays and objects are limited to {} levels (max_depth)",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }

    /// A member's key and the ':' after it; leaves `pos` at its value.
    fn member_key(&mut self, what: &str) -> Result<Str, DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.expected(self.pos, what));
        }
        let key = self.string()?;
        self.colon()?;
        Ok(key)
    }

    /// The ':' after a member's key, and the whitespace around it.
    fn colon(&mut self) -> Result<(), DecodeError> {
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.expected(self.pos, "':' after an object key"));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    /// A string; `pos` is at its opening quote.
    fn string(&mut self) -> Result<Str, DecodeError> {
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        // Most strings have no escape: copy them in one go.
        let run = self.plain_run();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return Ok(Str::from(&self.text[start..start + run]));
        }
        let mut out = String::with_capacity(run + 16);
        out.push_str(&self.text[start..start + run]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Str::from(out));
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(c) if c < 0x20 => {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "control character U+{c:04X} in string, expected it written as an escape ({})",
                            escape_for(c)
                        ),
                    ));
                }
                Some(_) => {
                    let from = self.pos;
                    let run = self.plain_run();
                    out.push_str(&self.text[from..from + run]);
                }
                None => {
                    return Err(self.error(
                        open,
                        "unexpected end of document in the string that starts here, expected a closing '\"'",
                    ));
                }
            }
        }
    }

    /// Advances over characters that need no attention in a string and
    /// returns how many bytes it passed. Stops on an ASCII byte, so the run
    /// ends on a character boundary.
    fn plain_run(&mut self) -> usize {
        let from = self.pos;
        let mut i = self.pos;
        // Eight bytes at a time while none of them needs attention: strings
        // are most of a business document.
        while let Some(chunk) = self.bytes[i..].first_chunk::<8>() {
            if needs_attention(u64::from_le_bytes(*chunk)) {
                break;
            }
            i += 8;
        }
        while let Some(&b) = self.bytes.get(i) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            i += 1;
        }
        self.pos = i;
        i - from
    }

    /// An escape sequence; `pos` is at its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), DecodeError> {
        out.push(self.escaped_char()?);
        Ok(())
    }

    /// The character an escape sequence stands for; `pos` is at its
    /// backslash and ends after the sequence.
    fn escaped_char(&mut self) -> Result<char, DecodeError> {
        let at = self.pos;
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let unit = self.hex4(at)?;
                self.pos = at + 6;
                let c = match unit {
                    0xD800..=0xDBFF => {
                        let low = if self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u") {
                            Some(self.hex4(self.pos)?)
                        } else {
                            None
                        };
                        match low {
                            Some(low @ 0xDC00..=0xDFFF) => {
                                self.pos += 6;
                                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                char::from_u32(code)
                            }
                            _ => None,
                        }
                    }
                    0xDC00..=0xDFFF => None,
                    _ => char::from_u32(unit),
                };
                let Some(c) = c else {
                    return Err(self.error(
                        at,
                        format!(
                            "lone surrogate '\\u{:04X}' in string, expected a high surrogate escape followed by a low one (\\uD800-\\uDBFF then \\uDC00-\\uDFFF)",
                            unit
                        ),
                    ));
                };
                return Ok(c);
            }
            Some(_) => {
                let found = self.text[at + 1..].chars().next().unwrap_or_default();
                return Err(self.error(
                    at,
                    format!(
                        "invalid escape '\\{}' in string, expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX",
                        found.escape_debug()
                    ),
                ));
            }
            None => {
                return Err(self.error(
                    at + 1,
                    "unexpected end of document inside a string, expected an escape character after '\\'",
                ));
            }
        };
        self.pos = at + 2;
        Ok(c)
    }

    /// The four hexadecimal digits of the `\u` escape at `at`.
    fn hex4(&self, at: usize) -> Result<u32, DecodeError> {
        let mut unit = 0;
        for i in at + 2..at + 6 {
            let digit = match self.bytes.get(i) {
                Some(&b) => (b as char).to_digit(16),
                None => {
                    return Err(self.error(
                        i,
                        "unexpected end of document inside a string, expected four hexadecimal digits after '\\u'",
                    ));
                }
            };
            let Some(digit) = digit else {
                return Err(self.expected(i, "four hexadecimal digits after '\\u'"));
            };
            unit = unit * 16 + digit;
        }
        Ok(unit)
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, DecodeError> {
        self.skip_literal(word)?;
        Ok(value)
    }

    fn skip_literal(&mut self, word: &'static str) -> Result<(), DecodeError> {
        for (i, &expected) in word.as_bytes().iter().enumerate() {
            if self.bytes.get(self.pos + i) != Some(&expected) {
                return Err(self.expected(self.pos + i, &format!("'{word}'")));
            }
        }
        self.pos += word.len();
        Ok(())
    }

    /// A number, checked against the JSON grammar and kept as written.
    fn number(&mut self) -> Result<Number, DecodeError> {
        let start = self.pos;
        self.skip_number()?;
        Ok(Number::from_checked(&self.text[start..self.pos]))
    }

    /// Passes over a number, checked against the JSON grammar.
    fn skip_number(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(c @ b'0'..=b'9') = self.peek() {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "leading zeros are not allowed in a number, found '{}' after '0'",
                            c as char
                        ),
                    ));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.expected(self.pos, "a digit after '-'")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.expected(self.pos, "a digit after the decimal point"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.expected(self.pos, "a digit in the exponent"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error(&self, at: usize, message: impl Into<String>) -> DecodeError {
        DecodeError::at_offset(Format::Json, self.text, at, message)
    }

    /// "expected X, found Y" at `at`, or the end-of-document form of it.
    fn expected(&self, at: usize, what: &str) -> DecodeError {
        let message = match self.text.get(at..).and_then(|rest| rest.chars().next()) {
            Some(c) => format!("expected {what}, found '{}'", c.escape_debug()),
            None => format!("unexpected end of document, expected {what}"),
        };
        self.error(at, message)
    }
}

/// A container being passed over by [`Parser::skim`].
enum Skimmed<'a> {
    Array,
    Object {
        /// Where its keys start in the skim's key stack.
        keys_from: usize,
        /// Every key so far, once the object is too large for a scan.
        seen: Option<HashSet<Cow<'a, str>>>,
        /// Whether it is on the path being looked for: it looks for the
        /// name at its own depth.
        on_path: bool,
    },
}

impl<'a> Parser<'a> {
    /// The grammar of [`Parser::document`], without building values. Keys
    /// are kept (borrowed from the text unless they hold escapes) only
    /// while their object is open, to refuse duplicates.
    fn skim(mut self, path: Option<&[&str]>) -> Result<Option<Found<'a>>, DecodeError> {
        self.skip_ws();
        if self.pos >= self.bytes.len() {
            return Err(self.error(self.pos, "empty document, expected a JSON value"));
        }
        let names = path.unwrap_or_default();
        let mut stack: Vec<Skimmed<'a>> = Vec::new();
        let mut keys: Vec<Cow<'a, str>> = Vec::new();
        let mut found: Option<Found<'a>> = None;
        // The next value is the one at the first `stack.len()` names.
        let mut on_path = path.is_some();
        // Depth and start of the value found at the end of the path.
        let mut capture: Option<(usize, usize)> = None;
        'value: loop {
            // Whether this value is an object on the path, to look into.
            let mut descend = false;
            if std::mem::take(&mut on_path) {
                descend = self.peek() == Some(b'{') && stack.len() < names.len();
                if !descend {
                    capture = Some((stack.len(), self.pos));
                }
            }
            match self.peek() {
                Some(open @ (b'[' | b'{')) => {
                    self.enter(stack.len())?;
                    self.pos += 1;
                    self.skip_ws();
                    let close = if open == b'[' { b']' } else { b'}' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        // An empty object on the path has no next name.
                        if descend {
                            found = Some(Found::Missing);
                        }
                    } else if open == b'[' {
                        stack.push(Skimmed::Array);
                        continue 'value;
                    } else {
                        let key = self.key("a string key or '}'")?;
                        on_path = descend && *key == *names[stack.len()];
                        stack.push(Skimmed::Object {
                            keys_from: keys.len(),
                            seen: None,
                            on_path: descend,
                        });
                        keys.push(key);
                        continue 'value;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't') => self.skip_literal("true")?,
                Some(b'f') => self.skip_literal("false")?,
                Some(b'n') => self.skip_literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                _ => return Err(self.expected(self.pos, "a value")),
            }

            // A value ended at `pos`; closing brackets may end several
            // containers in a row.
            loop {
                if let Some((depth, start)) = capture
                    && depth == stack.len()
                {
                    found = Some(Found::Value {
                        text: &self.text[start..self.pos],
                        keys: depth,
                    });
                    capture = None;
                }
                self.skip_ws();
                let depth = stack.len();
                let Some(frame) = stack.last_mut() else {
                    if self.pos < self.bytes.len() {
                        return Err(self.expected(self.pos, "the end of the document"));
                    }
                    return Ok(found);
                };
                match frame {
                    Skimmed::Array => match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_ws();
                            continue 'value;
                        }
                        Some(b']') => self.pos += 1,
                        _ => {
                            return Err(
                                self.expected(self.pos, "',' or ']' after an array element")
                            );
                        }
                    },
                    Skimmed::Object {
                        keys_from,
                        seen,
                        on_path: looking,
                    } => match self.peek() {
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_ws();
                            let key_at = self.pos;
                            let next = self.key("a string key after ','")?;
                            let siblings = &keys[*keys_from..];
                            let duplicate = match seen {
                                Some(seen) => !seen.insert(next.clone()),
                                None if siblings.len() >= SCAN_LIMIT => {
                                    let mut set: HashSet<Cow<'a, str>> =
                                        siblings.iter().cloned().collect();
                                    let duplicate = !set.insert(next.clone());
                                    *seen = Some(set);
                                    duplicate
                                }
                                None => siblings.contains(&next),
                            };
                            if duplicate {
                                return Err(self.error(key_at, "duplicate key in object"));
                            }
                            on_path = *looking
                                && found.is_none()
                                && capture.is_none()
                                && *next == *names[depth - 1];
                            keys.push(next);
                            continue 'value;
                        }
                        Some(b'}') => {
                            self.pos += 1;
                            if *looking && found.is_none() && capture.is_none() {
                                found = Some(Found::Missing);
                            }
                            keys.truncate(*keys_from);
                        }
                        _ => {
                            return Err(
                                self.expected(self.pos, "',' or '}' after an object member")
                            );
                        }
                    },
                }
                stack.pop();
            }
        }
    }

    /// A member's key and the ':' after it, borrowed from the text unless
    /// it holds escapes; leaves `pos` at its value.
    fn key(&mut self, what: &str) -> Result<Cow<'a, str>, DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.expected(self.pos, what));
        }
        let open = self.pos;
        self.pos += 1;
        let run = self.plain_run();
        let key = if self.peek() == Some(b'"') {
            self.pos += 1;
            Cow::Borrowed(&self.text[open + 1..open + 1 + run])
        } else {
            self.pos = open;
            Cow::Owned(self.string()?.into_string())
        };
        self.colon()?;
        Ok(key)
    }

    /// Passes over a string, checking its escapes; `pos` is at its opening
    /// quote.
    fn skip_string(&mut self) -> Result<(), DecodeError> {
        let open = self.pos;
        self.pos += 1;
        loop {
            self.plain_run();
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.escaped_char()?;
                }
                Some(_) => {
                    // A control character: decoding says which.
                    return Err(self.error(self.pos, "control character in string"));
                }
                None => {
                    return Err(self.error(open, "unexpected end of document in a string"));
                }
            }
        }
    }
}

/// Whether any of the eight bytes in `w` is a quote, a backslash or a
/// control character (the classic "has a zero byte" bit trick, exact when
/// used as a yes/no answer).
fn needs_attention(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (quote | backslash | control) != 0
}

fn is_duplicate(map: &Map, seen: &mut Option<HashSet<Str>>, key: &str) -> bool {
    if let Some(seen) = seen {
        return seen.contains(key);
    }
    if map.len() >= SCAN_LIMIT {
        let set: HashSet<Str> = map.keys().map(Str::from).collect();
        let duplicate = set.contains(key);
        *seen = Some(set);
        return duplicate;
    }
    map.contains_key(key)
}

/// How a control character is written in a JSON string.
fn escape_for(c: u8) -> String {
    match c {
        b'\n' => "\\n".into(),
        b'\r' => "\\r".into(),
        b'\t' => "\\t".into(),
        0x08 => "\\b".into(),
        0x0C => "\\f".into(),
        _ => format!("\\u{c:04X}"),
    }
}

/// `indent` is the current level in pretty output, `None` for compact.
fn write_value(out: &mut Vec<u8>, value: &Value, indent: Option<usize>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.as_str().as_bytes()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.extend_from_slice(b"[]");
                return;
            }
            out.push(b'[');
            let inner = indent.map(|level| level + 1);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                new_line(out, inner);
                write_value(out, item, inner);
            }
            new_line(out, indent);
            out.push(b']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.extend_from_slice(b"{}");
                return;
            }
            out.push(b'{');
            let inner = indent.map(|level| level + 1);
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                new_line(out, inner);
                write_string(out, key);
                out.push(b':');
                if indent.is_some() {
                    out.push(b' ');
                }
                write_value(out, item, inner);
            }
            new_line(out, indent);
            out.push(b'}');
        }
    }
}

fn new_line(out: &mut Vec<u8>, indent: Option<usize>) {
    if let Some(level) = indent {
        out.push(b'\n');
        out.resize(out.len() + 2 * level, b' ');
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xF)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(escape);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// JSON texts for property tests.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    /// Documents of `leaves` nested in lists and objects whose keys are
    /// taken from `keys` (so some repeat), with spaces around the colons.
    pub(crate) fn texts(
        leaves: &'static [&'static str],
        keys: &'static [&'static str],
    ) -> impl Strategy<Value = String> {
        let leaf = proptest::sample::select(leaves).prop_map(str::to_owned);
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((proptest::sample::select(keys), inner), 0..4).prop_map(
                    |members| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("\"{k}\" : {v}"))
                            .collect();
                        format!("{{ {} }}", members.join(","))
                    }
                ),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::strategies::texts;
    use super::*;
    use crate::codec::Position;

    fn parse(text: &str) -> Value {
        decode(text.as_bytes(), &Limits::default()).unwrap()
    }

    /// The line, column and message of the error `text` gives.
    fn error(text: &[u8]) -> (usize, usize, String) {
        error_with(text, &Limits::default())
    }

    fn error_with(text: &[u8], limits: &Limits) -> (usize, usize, String) {
        let err = decode(text, limits).unwrap_err();
        assert_eq!(err.format, Format::Json);
        match err.position {
            Some(Position::LineColumn { line, column }) => (line, column, err.message),
            other => panic!("no line and column in {err} ({other:?})"),
        }
    }

    fn compact(v: &Value) -> String {
        String::from_utf8(encode(v, &JsonOptions::default())).unwrap()
    }

    fn pretty(v: &Value) -> String {
        String::from_utf8(encode(v, &JsonOptions { pretty: true })).unwrap()
    }

    fn number_text(v: &Value) -> &str {
        match v {
            Value::Number(n) => n.as_str(),
            other => panic!("not a number: {other:?}"),
        }
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let text = r#"{"price":185.50,"big":1e400,"long":12345678901234567890123456789.5,"neg":-0.0,"exp":-12.5E+10,"int":120}"#;
        let v = parse(text);
        let m = v.as_object().unwrap();
        assert_eq!(number_text(m.get("price").unwrap()), "185.50");
        assert_eq!(number_text(m.get("big").unwrap()), "1e400");
        assert_eq!(
            number_text(m.get("long").unwrap()),
            "12345678901234567890123456789.5"
        );
        assert_eq!(number_text(m.get("neg").unwrap()), "-0.0");
        assert_eq!(number_text(m.get("exp").unwrap()), "-12.5E+10");
        assert_eq!(
            m.get("int").unwrap().to_decimal().unwrap().to_string(),
            "120"
        );
        assert_eq!(compact(&v), text);
    }

    #[test]
    fn scalars_at_top_level_and_whitespace() {
        assert_eq!(parse(" \t\r\n true \n"), Value::Bool(true));
        assert_eq!(parse("false"), Value::Bool(false));
        assert_eq!(parse("null"), Value::Null);
        assert_eq!(parse("\"x\""), Value::from("x"));
        assert_eq!(number_text(&parse("-0")), "-0");
        assert_eq!(parse("[ ]"), Value::Array(Vec::new()));
        assert_eq!(parse("{ }"), Value::Object(Map::new()));
    }

    #[test]
    fn nested_document_keeps_key_order() {
        let v = parse(r#"{"z": [1, {"b": null, "a": [true, false]}], "a": {}}"#);
        let m = v.as_object().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["z", "a"]);
        let z = m.get("z").unwrap().as_array().unwrap();
        assert_eq!(z.len(), 2);
        let inner = z[1].as_object().unwrap();
        assert_eq!(inner.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(
            inner.get("a"),
            Some(&Value::Array(vec![Value::Bool(true), Value::Bool(false)]))
        );
    }

    #[test]
    fn escapes_and_surrogate_pairs() {
        let v = parse(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\uD83D\uDE00 é€""#);
        assert_eq!(
            v,
            Value::from("a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{20ac}\u{1F600} é€")
        );
        assert_eq!(parse(r#""\u0000""#), Value::from("\0"));
        // An escape as the very last thing of a string.
        assert_eq!(parse(r#"["x\n"]"#), Value::Array(vec![Value::from("x\n")]));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        let (line, column, message) = error(br#"["ab\uD800"]"#);
        assert_eq!((line, column), (1, 5));
        assert!(message.contains("lone surrogate '\\uD800'"), "{message}");

        let (_, column, message) = error(br#""\uDC00""#);
        assert_eq!(column, 2);
        assert!(message.contains("lone surrogate '\\uDC00'"), "{message}");

        // A high surrogate followed by an escape that is not a low one.
        let (_, column, message) = error(br#""\uD83D\u0041""#);
        assert_eq!(column, 2);
        assert!(message.contains("lone surrogate '\\uD83D'"), "{message}");
    }

    #[test]
    fn string_errors_are_located() {
        let (line, column, message) = error(br#"{"a": "ab\q"}"#);
        assert_eq!((line, column), (1, 10));
        assert!(
            message.starts_with("invalid escape '\\q' in string"),
            "{message}"
        );

        let (line, column, message) = error(b"[\"a\nb\"]");
        assert_eq!((line, column), (1, 4));
        assert!(
            message.starts_with("control character U+000A in string"),
            "{message}"
        );
        assert!(message.contains("\\n"), "{message}");

        let (line, column, message) = error(b"\"a\x01\"");
        assert_eq!((line, column), (1, 3));
        assert!(message.contains("\\u0001"), "{message}");

        let (line, column, message) = error(br#""\u12G4""#);
        assert_eq!((line, column), (1, 6));
        assert_eq!(
            message,
            "expected four hexadecimal digits after '\\u', found 'G'"
        );

        let (line, column, message) = error(b"[\n  \"abc");
        assert_eq!((line, column), (2, 3));
        assert!(
            message.starts_with("unexpected end of document in the string"),
            "{message}"
        );

        let (_, column, message) = error(b"\"ab\\");
        assert_eq!(column, 5);
        assert!(
            message.starts_with("unexpected end of document"),
            "{message}"
        );
    }

    #[test]
    fn structure_errors_say_what_was_found_and_expected() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            (
                r#"{"a": 1 x}"#,
                (1, 9),
                "expected ',' or '}' after an object member, found 'x'",
            ),
            (
                "[1, 2",
                (1, 6),
                "unexpected end of document, expected ',' or ']' after an array element",
            ),
            ("[1,]", (1, 4), "expected a value, found ']'"),
            ("[", (1, 2), "unexpected end of document, expected a value"),
            (
                r#"{"a" 1}"#,
                (1, 6),
                "expected ':' after an object key, found '1'",
            ),
            ("{1:2}", (1, 2), "expected a string key or '}', found '1'"),
            (
                r#"{"a":1,}"#,
                (1, 8),
                "expected a string key after ',', found '}'",
            ),
            (
                "{\n  \"a\": [1,\n    2 3]\n}",
                (3, 7),
                "expected ',' or ']' after an array element, found '3'",
            ),
            (
                "[1] x",
                (1, 5),
                "expected the end of the document, found 'x'",
            ),
            (
                "{} {}",
                (1, 4),
                "expected the end of the document, found '{'",
            ),
            ("tru", (1, 4), "unexpected end of document, expected 'true'"),
            ("[nul!]", (1, 5), "expected 'null', found '!'"),
            ("[fals]", (1, 6), "expected 'false', found ']'"),
            ("'a'", (1, 1), "expected a value, found '\\''"),
            ("[é]", (1, 2), "expected a value, found 'é'"),
            (
                "01",
                (1, 2),
                "leading zeros are not allowed in a number, found '1' after '0'",
            ),
            ("-a", (1, 2), "expected a digit after '-', found 'a'"),
            (
                "1.",
                (1, 3),
                "unexpected end of document, expected a digit after the decimal point",
            ),
            (
                "[1.e5]",
                (1, 4),
                "expected a digit after the decimal point, found 'e'",
            ),
            (
                "1e+",
                (1, 4),
                "unexpected end of document, expected a digit in the exponent",
            ),
            ("+1", (1, 1), "expected a value, found '+'"),
            ("[NaN]", (1, 2), "expected a value, found 'N'"),
        ];
        for &(text, position, expected) in cases {
            let (line, column, message) = error(text.as_bytes());
            assert_eq!((line, column), position, "{text:?}: {message}");
            assert_eq!(message, expected, "{text:?}");
        }
    }

    #[test]
    fn empty_document() {
        for text in ["", " \n\t "] {
            let (_, _, message) = error(text.as_bytes());
            assert_eq!(message, "empty document, expected a JSON value");
        }
        let (line, column, _) = error(b"");
        assert_eq!((line, column), (1, 1));
        let (line, column, _) = error(b"\n\n  ");
        assert_eq!((line, column), (3, 3));
    }

    #[test]
    fn depth_limit() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert!(decode(b"[[[1]]]", &limits).is_ok());
        assert!(decode(br#"{"a":[{"b":1}]}"#, &limits).is_ok());
        assert!(decode(b"[[[]],[[]]]", &limits).is_ok());

        let (line, column, message) = error_with(b"[[[[1]]]]", &limits);
        assert_eq!((line, column), (1, 4));
        assert!(message.contains("limited to 3 levels"), "{message}");

        let (_, column, _) = error_with(br#"{"a":{"b":[{}]}}"#, &limits);
        assert_eq!(column, 12);

        let scalars_only = Limits {
            max_depth: 0,
            ..Limits::default()
        };
        assert!(decode(b"1", &scalars_only).is_ok());
        assert_eq!(error_with(b"[]", &scalars_only).1, 1);
    }

    #[test]
    fn hundred_thousand_brackets_fail_fast_on_the_depth_limit() {
        let text = "[".repeat(100_000);
        let start = std::time::Instant::now();
        let (line, column, message) = error(text.as_bytes());
        assert_eq!((line, column), (1, 65));
        assert!(message.contains("limited to 64 levels"), "{message}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));

        // Without a practical limit the parser still does not recurse: it
        // reaches the end of the document and says so.
        let unlimited = Limits {
            max_depth: usize::MAX,
            ..Limits::default()
        };
        let (_, column, message) = error_with(text.as_bytes(), &unlimited);
        assert_eq!(column, 100_001);
        assert_eq!(message, "unexpected end of document, expected a value");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let (line, column, message) = error(br#"{"a":1,"b":2,"a":3}"#);
        assert_eq!((line, column), (1, 14));
        assert_eq!(message, "duplicate key \"a\" in object");

        // The same key in different objects is fine.
        assert!(decode(br#"[{"a":1},{"a":2,"b":{"a":3}}]"#, &Limits::default()).is_ok());

        // Large objects switch to a hash set; the check must still hold.
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        let valid = format!("{}}}", text.trim_end_matches(','));
        assert_eq!(parse(&valid).as_object().unwrap().len(), 100);
        text.push_str("\"k7\":0}");
        let (_, _, message) = error(text.as_bytes());
        assert_eq!(message, "duplicate key \"k7\" in object");
        text.truncate(text.len() - "\"k7\":0}".len());
        text.push_str("\"k99\":0,\"x\":1}");
        let (_, _, message) = error(text.as_bytes());
        assert_eq!(message, "duplicate key \"k99\" in object");
    }

    #[test]
    fn byte_order_mark_is_dropped() {
        assert_eq!(
            decode(b"\xEF\xBB\xBF{\"a\":1}", &Limits::default()).unwrap(),
            parse("{\"a\":1}")
        );
        // Positions count from after the mark.
        let (line, column, _) = error(b"\xEF\xBB\xBF[1,]");
        assert_eq!((line, column), (1, 4));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let (line, column, message) = error(b"[\"ok\",\n \"caf\xE9\"]");
        assert_eq!((line, column), (2, 6));
        assert!(message.contains("invalid UTF-8"), "{message}");
        assert!(message.contains("0xE9"), "{message}");
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_bytes: 3,
            ..Limits::default()
        };
        let err = decode(b"[1,2]", &limits).unwrap_err();
        assert!(err.message.contains("over the limit of 3 bytes"), "{err}");
    }

    #[test]
    fn columns_count_characters() {
        let (line, column, _) = error("{\"é€\": 1 x}".as_bytes());
        assert_eq!((line, column), (1, 10));
    }

    #[test]
    fn encode_escapes_strings() {
        let v = Value::from("q\"b\\s/\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é€😀");
        assert_eq!(
            compact(&v),
            "\"q\\\"b\\\\s/\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f} é€😀\""
        );
        assert_eq!(parse(&compact(&v)), v);
    }

    #[test]
    fn compact_and_pretty_output_match_serde_json() {
        // Keys in sorted order, as serde_json writes its maps.
        let text = r#"{"a":[1,"x\ny",null,true,{},[]],"b":{"c":{"d":[-1.5,{"e":"é"}]}},"f":[]}"#;
        let v = parse(text);
        let reference: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(compact(&v), serde_json::to_string(&reference).unwrap());
        assert_eq!(
            pretty(&v),
            serde_json::to_string_pretty(&reference).unwrap()
        );
        assert_eq!(
            pretty(&v),
            "{\n  \"a\": [\n    1,\n    \"x\\ny\",\n    null,\n    true,\n    {},\n    []\n  ],\n  \"b\": {\n    \"c\": {\n      \"d\": [\n        -1.5,\n        {\n          \"e\": \"é\"\n        }\n      ]\n    }\n  },\n  \"f\": []\n}"
        );
        assert_eq!(pretty(&Value::Null), "null");
        assert_eq!(pretty(&Value::Object(Map::new())), "{}");
    }

    #[test]
    fn large_document_round_trips() {
        let mut text = String::from("[");
        for i in 0..20_000 {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!(
                r#"{{"id":{i},"sku":"SKU-{i:06}","price":{i}.50,"tags":["a","b\"c"],"ok":true,"note":null}}"#
            ));
        }
        text.push(']');
        let v = parse(&text);
        assert_eq!(v.as_array().unwrap().len(), 20_000);
        assert_eq!(compact(&v), text);
        assert_eq!(parse(&pretty(&v)), v);
    }

    fn number_strategy() -> impl Strategy<Value = Number> {
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,4})?"
            .prop_map(|text| Number::parse(&text).unwrap())
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\"\\\\/\\x00-\\x1f\\x7f aé€😀\u{2028}]{0,12}",
        ]
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number_strategy().prop_map(Value::Number),
            text_strategy().prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                // Collecting into a map keeps the keys unique.
                prop::collection::vec((text_strategy(), inner), 0..8)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// Whether the skim alone takes the document (`check` decodes the ones
    /// it refuses, so its answer alone would hide a skim that is too strict).
    fn skimmed(text: &[u8], limits: &Limits) -> bool {
        text.len() <= limits.max_bytes
            && charset::utf8(text, Format::Json)
                .is_ok_and(|text| Parser::new(text, limits).skim(Some(&["a", "b"])).is_ok())
    }

    /// `check`'s verdict and `decode`'s, as comparable text.
    fn verdicts(text: &[u8], limits: &Limits) -> (Result<(), String>, Result<(), String>) {
        let checked = check(text, limits, None)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let decoded = decode(text, limits).map(|_| ()).map_err(|e| e.to_string());
        (checked, decoded)
    }

    #[test]
    fn check_refuses_what_decode_refuses_with_the_same_error() {
        let bad: &[&[u8]] = &[
            b"",
            b"  ",
            b"{",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"[1,]",
            b"[1 2]",
            b"{\"a\":1,\"a\":2}",
            b"{\"a\":1,\"\\u0061\":2}",
            b"{\"a\":{\"b\":1,\"b\":1}}",
            b"\"abc",
            b"\"a\x01b\"",
            b"\"\\x\"",
            b"\"\\uD800\"",
            b"\"\\uDC00x\"",
            b"\"\\u12G4\"",
            b"01",
            b"-",
            b"1.",
            b"1e",
            b"tru",
            b"nul",
            b"[1] 2",
            b"{\"a\":1}}",
            b"\xff",
            b"[\"\xc3\"]",
        ];
        for text in bad {
            let (checked, decoded) = verdicts(text, &Limits::default());
            assert!(
                decoded.is_err(),
                "{:?} decodes",
                String::from_utf8_lossy(text)
            );
            assert!(!skimmed(text, &Limits::default()));
            assert_eq!(checked, decoded, "{:?}", String::from_utf8_lossy(text));
        }
        // Limits: depth (empty containers count) and size.
        let deep = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        for text in [&b"[[[1]]]"[..], b"[[[[]]]]", b"{\"a\":{\"b\":{\"c\":{}}}}"] {
            let (checked, decoded) = verdicts(text, &deep);
            assert_eq!(checked, decoded);
        }
        assert!(check(b"[[[1]]]", &deep, None).is_ok());
        assert!(check(b"[[[[]]]]", &deep, None).is_err());
        let small = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(verdicts(b"[1,2]", &small).0, verdicts(b"[1,2]", &small).1);
        assert!(check(b"[1,2]", &small, None).is_err());
    }

    #[test]
    fn check_refuses_duplicates_in_large_objects() {
        let members: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let clean = format!("{{{}}}", members.join(","));
        assert!(check(clean.as_bytes(), &Limits::default(), None).is_ok());
        // A duplicate well past the scan limit, written with an escape.
        let dup = format!("{{{},\"\\u006b7\":0}}", members.join(","));
        let (checked, decoded) = verdicts(dup.as_bytes(), &Limits::default());
        assert!(checked.is_err());
        assert_eq!(checked, decoded);
        // The same key in two objects is no duplicate.
        assert!(check(br#"[{"a":1},{"a":2}]"#, &Limits::default(), None).is_ok());
    }

    #[test]
    fn check_finds_the_value_on_a_path() {
        let limits = Limits::default();
        let doc = br#" { "x": {"order_id": "no"}, "order" : { "items": [1], "order_id" : "GB-7" , "n": 2 } } "#;
        let at = |path: &[&str]| check(doc, &limits, Some(path)).unwrap();
        assert_eq!(
            at(&["order", "order_id"]),
            Some(Found::Value {
                text: "\"GB-7\"",
                keys: 2
            })
        );
        assert_eq!(at(&["order", "missing"]), Some(Found::Missing));
        assert_eq!(at(&["nothing", "order_id"]), Some(Found::Missing));
        // A path that meets a list stops there: the rest is read from it.
        assert_eq!(
            at(&["order", "items", "sku"]),
            Some(Found::Value {
                text: "[1]",
                keys: 2
            })
        );
        assert_eq!(
            at(&["order"]),
            Some(Found::Value {
                text: r#"{ "items": [1], "order_id" : "GB-7" , "n": 2 }"#,
                keys: 1
            })
        );
        assert_eq!(
            at(&[]),
            Some(Found::Value {
                text: std::str::from_utf8(&doc[1..doc.len() - 1]).unwrap(),
                keys: 0
            })
        );
        assert_eq!(
            check(br#"[{"order": 1}]"#, &limits, Some(&["order"])).unwrap(),
            Some(Found::Value {
                text: r#"[{"order": 1}]"#,
                keys: 0
            })
        );
        assert_eq!(
            check(br#"{"order": {}}"#, &limits, Some(&["order", "id"])).unwrap(),
            Some(Found::Missing)
        );
        // Keys written with escapes are compared by what they stand for.
        assert_eq!(
            check(
                br#"{"\u006frder": {"id": 5}}"#,
                &limits,
                Some(&["order", "id"])
            )
            .unwrap(),
            Some(Found::Value { text: "5", keys: 2 })
        );
    }

    /// A JSON-like text: a valid document, sometimes damaged by a byte
    /// written over, inserted or removed.
    fn damaged_strategy() -> impl Strategy<Value = Vec<u8>> {
        let doc = texts(
            &[
                "null",
                "true",
                "-0.5e+3",
                "12",
                r#""a\"b\u00e9\uD83D\uDE00""#,
                r#""é""#,
            ],
            &["a", "b", "\\u0061"],
        );
        let damage = prop_oneof![
            Just(None),
            (any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(Some),
        ];
        (doc, damage).prop_map(|(doc, damage)| {
            let mut bytes = doc.into_bytes();
            if let Some((at, byte, how)) = damage {
                let i = at.index(bytes.len() + 1);
                let set = b"{}[],:\"\\ 0e-.nu\x01\xc3";
                let byte = set[byte as usize % set.len()];
                match how {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, byte),
                }
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn check_agrees_with_decode(text in damaged_strategy(), depth in 1usize..6) {
            let limits = Limits { max_depth: depth, ..Limits::default() };
            let (checked, decoded) = verdicts(&text, &limits);
            prop_assert_eq!(skimmed(&text, &limits), decoded.is_ok());
            prop_assert_eq!(checked, decoded);
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(v in value_strategy()) {
            let limits = Limits::default();
            let compact = encode(&v, &JsonOptions::default());
            prop_assert_eq!(&decode(&compact, &limits).unwrap(), &v);
            let pretty = encode(&v, &JsonOptions { pretty: true });
            prop_assert_eq!(&decode(&pretty, &limits).unwrap(), &v);
        }
    }
}
