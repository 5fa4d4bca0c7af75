//! Character sets of incoming documents.
//!
//! Every decoder works on UTF-8 text. Documents in another character set
//! (the Latin-1 files of legacy systems, an XML document that declares
//! `encoding="ISO-8859-1"`) are converted first; a UTF-8 byte-order mark is
//! dropped; bytes that are not valid in the character set are an error that
//! names their position.

use std::borrow::Cow;

use encoding_rs::Encoding;

use super::{DecodeError, Format, Position, line_column};

/// A character set a document can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    /// ISO-8859-1, exactly: each byte is the code point of the same value.
    Latin1,
    /// Any other WHATWG encoding label (`windows-1252`, `utf-16le`, ...).
    Other(&'static Encoding),
}

impl Charset {
    /// The character set for a label such as `UTF-8`, `ISO-8859-1`,
    /// `latin1` or `windows-1252` (case-insensitive).
    pub fn from_label(label: &str) -> Option<Charset> {
        let l = label.trim().to_ascii_lowercase();
        match l.as_str() {
            "utf-8" | "utf8" => Some(Charset::Utf8),
            "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1" => {
                Some(Charset::Latin1)
            }
            _ => Encoding::for_label(l.as_bytes()).map(|e| {
                if e == encoding_rs::UTF_8 {
                    Charset::Utf8
                } else {
                    Charset::Other(e)
                }
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Latin1 => "ISO-8859-1",
            Charset::Other(e) => e.name(),
        }
    }
}

/// Converts `bytes` in `charset` to UTF-8 text, dropping a UTF-8 byte-order
/// mark. Borrows when the input is already UTF-8.
pub fn to_utf8(
    bytes: &[u8],
    charset: Charset,
    format: Format,
) -> Result<Cow<'_, str>, DecodeError> {
    match charset {
        Charset::Utf8 => utf8(bytes, format).map(Cow::Borrowed),
        Charset::Latin1 => Ok(match std::str::from_utf8(bytes) {
            // Pure ASCII is the same in both.
            Ok(s) if s.is_ascii() => Cow::Borrowed(s),
            _ => Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
        }),
        Charset::Other(enc) => {
            let (text, had_errors) = enc.decode_with_bom_removal(bytes);
            if had_errors {
                // Find the first replacement character to say where.
                let at = text.find('\u{FFFD}').unwrap_or(0);
                let (line, column) = line_column(&text, at);
                return Err(DecodeError::new(
                    format,
                    Some(Position::LineColumn { line, column }),
                    format!("bytes that are not valid {}", enc.name()),
                ));
            }
            Ok(text)
        }
    }
}

/// Checks UTF-8 and drops a byte-order mark; an invalid sequence is an error
/// at its line and column.
pub fn utf8(bytes: &[u8], format: Format) -> Result<&str, DecodeError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = e.valid_up_to();
        // The prefix up to `valid` is valid UTF-8 by definition.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let (line, column) = line_column(prefix, valid);
        DecodeError::new(
            format,
            Some(Position::LineColumn { line, column }),
            format!(
                "invalid UTF-8 (byte 0x{:02X} at offset {valid}); declare the character set if the document is not UTF-8",
                bytes[valid]
            ),
        )
    })
}

/// The character set of an XML document: from its byte-order mark, else
/// from the `encoding` of its XML declaration, else UTF-8.
pub fn sniff_xml(bytes: &[u8]) -> Result<Charset, DecodeError> {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Ok(Charset::Utf8);
    }
    if bytes.starts_with(b"\xFF\xFE") {
        return Ok(Charset::Other(encoding_rs::UTF_16LE));
    }
    if bytes.starts_with(b"\xFE\xFF") {
        return Ok(Charset::Other(encoding_rs::UTF_16BE));
    }
    let Some(decl) = bytes.strip_prefix(b"<?xml") else {
        return Ok(Charset::Utf8);
    };
    let end = decl
        .iter()
        .position(|&b| b == b'>')
        .unwrap_or(decl.len().min(200));
    let decl = &decl[..end];
    let Some(at) = find(decl, b"encoding") else {
        return Ok(Charset::Utf8);
    };
    let rest = &decl[at + b"encoding".len()..];
    let rest = trim_start(rest);
    let Some(rest) = rest.strip_prefix(b"=") else {
        return Ok(Charset::Utf8);
    };
    let rest = trim_start(rest);
    let Some((&quote, rest)) = rest.split_first() else {
        return Ok(Charset::Utf8);
    };
    if quote != b'"' && quote != b'\'' {
        return Ok(Charset::Utf8);
    }
    let label_end = rest.iter().position(|&b| b == quote).unwrap_or(rest.len());
    let label = String::from_utf8_lossy(&rest[..label_end]);
    Charset::from_label(&label).ok_or_else(|| {
        DecodeError::new(
            Format::Xml,
            Some(Position::LineColumn { line: 1, column: 1 }),
            format!("unsupported encoding \"{label}\" in the XML declaration"),
        )
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_byte_for_code_point() {
        let text = to_utf8(b"caf\xE9 \x80", Charset::Latin1, Format::Csv).unwrap();
        assert_eq!(text, "café \u{80}");
    }

    #[test]
    fn bom_is_dropped_and_bad_utf8_located() {
        assert_eq!(utf8(b"\xEF\xBB\xBFabc", Format::Json).unwrap(), "abc");
        let err = utf8(b"{\n  \"a\": \"\xE9\"}", Format::Json).unwrap_err();
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line: 2, column: 9 })
        );
        assert!(err.message.contains("0xE9"), "{err}");
    }

    #[test]
    fn xml_declaration_names_the_charset() {
        assert_eq!(
            sniff_xml(b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>").unwrap(),
            Charset::Latin1
        );
        assert_eq!(
            sniff_xml(b"<?xml version=\"1.0\"?><a/>").unwrap(),
            Charset::Utf8
        );
        assert_eq!(sniff_xml(b"<a/>").unwrap(), Charset::Utf8);
        assert_eq!(
            sniff_xml(b"<?xml version=\"1.0\" encoding=\"windows-1252\"?>").unwrap(),
            Charset::Other(encoding_rs::WINDOWS_1252)
        );
        assert!(sniff_xml(b"<?xml version=\"1.0\" encoding=\"klingon\"?>").is_err());
    }
}
