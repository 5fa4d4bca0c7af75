//! Codecs: bytes of one format to a [`Value`] tree and back.
//!
//! Every decoder works on untrusted input: it checks the configured
//! [`Limits`] first, never expands XML entities, and reports a bad document
//! with a [`DecodeError`] that names the position (line and column, or the
//! record number) and what was expected there.

pub mod charset;
pub mod csv;
pub mod json;
pub mod xml;

use std::fmt;

use crate::value::Value;

/// The formats a message can be decoded from and encoded to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Xml,
    Csv,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Xml => "xml",
            Format::Csv => "csv",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "xml" => Some(Format::Xml),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// The media type of documents in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
            Format::Csv => "text/csv",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bounds on what a decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest document, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects/arrays (JSON) or elements (XML).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 10 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// A codec with its options: what a mapping's `input:` or `output:` names.
#[derive(Clone, Debug, PartialEq)]
pub enum Codec {
    Json(json::JsonOptions),
    Xml(xml::XmlOptions),
    Csv(csv::CsvOptions),
}

impl Codec {
    pub fn format(&self) -> Format {
        match self {
            Codec::Json(_) => Format::Json,
            Codec::Xml(_) => Format::Xml,
            Codec::Csv(_) => Format::Csv,
        }
    }

    /// The codec of a format with its default options.
    pub fn default_for(format: Format) -> Codec {
        match format {
            Format::Json => Codec::Json(Default::default()),
            Format::Xml => Codec::Xml(Default::default()),
            Format::Csv => Codec::Csv(Default::default()),
        }
    }

    pub fn decode(&self, input: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
        if input.len() > limits.max_bytes {
            return Err(DecodeError::new(
                self.format(),
                None,
                format!(
                    "document is {} bytes, over the limit of {} bytes",
                    input.len(),
                    limits.max_bytes
                ),
            ));
        }
        match self {
            Codec::Json(_) => json::decode(input, limits),
            Codec::Xml(o) => xml::decode(input, o, limits),
            Codec::Csv(o) => csv::decode(input, o, limits),
        }
    }

    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, EncodeError> {
        match self {
            Codec::Json(o) => Ok(json::encode(value, o)),
            Codec::Xml(o) => xml::encode(value, o),
            Codec::Csv(o) => csv::encode(value, o),
        }
    }
}

/// Where in a document something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// 1-based line and column (column counted in characters).
    LineColumn { line: usize, column: usize },
    /// 1-based record number (CSV: the header is not a record) and the line
    /// the record starts on.
    Record { record: usize, line: usize },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::LineColumn { line, column } => write!(f, "line {line}, column {column}"),
            Position::Record { record, line } => write!(f, "record {record} (line {line})"),
        }
    }
}

/// A document that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    pub format: Format,
    pub position: Option<Position>,
    /// What was wrong and, where it helps, what was expected.
    pub message: String,
}

impl DecodeError {
    pub fn new(format: Format, position: Option<Position>, message: impl Into<String>) -> Self {
        DecodeError {
            format,
            position,
            message: message.into(),
        }
    }

    /// An error at a byte offset of `text`, converted to line and column.
    pub fn at_offset(
        format: Format,
        text: &str,
        offset: usize,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_column(text, offset);
        DecodeError::new(format, Some(Position::LineColumn { line, column }), message)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            Format::Json => "JSON",
            Format::Xml => "XML",
            Format::Csv => "CSV",
        };
        match &self.position {
            Some(p) => write!(f, "invalid {format} at {p}: {}", self.message),
            None => write!(f, "invalid {format}: {}", self.message),
        }
    }
}

/// A value that cannot be written in the target format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot write {format} at {path}: {message}")]
pub struct EncodeError {
    pub format: Format,
    /// Path of the offending value in the tree (`Item[2].Packages`), or `(root)`.
    pub path: String,
    pub message: String,
}

/// 1-based line and column (in characters) of a byte offset in `text`.
/// An offset past the end points just after the last character; an offset
/// inside a multi-byte character counts that character.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Count characters by their first byte, so that a cut inside a
    // multi-byte character still counts it.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| (b as i8) >= -0x40)
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters() {
        let t = "ab\nçd\n";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        // after "ç" (two bytes)
        assert_eq!(line_column(t, 5), (2, 2));
        assert_eq!(line_column(t, 100), (3, 1));
    }

    #[test]
    fn oversize_is_refused_before_decoding() {
        let limits = Limits {
            max_bytes: 4,
            max_depth: 8,
        };
        let err = Codec::default_for(Format::Json)
            .decode(b"[1,2,3]", &limits)
            .unwrap_err();
        assert!(err.message.contains("over the limit of 4 bytes"), "{err}");
    }
}
