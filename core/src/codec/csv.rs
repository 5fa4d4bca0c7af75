//! CSV codec (RFC 4180, with a configurable delimiter and quote).
//!
//! A document is a list of records; each record becomes an object keyed by
//! the column names (from the header row, from the configured `columns`, or
//! `col1`, `col2`, ... when there is neither). Fields are always text: CSV
//! carries no types, and guessing them would turn a postal code `01000` or
//! an account number into a number.

use std::borrow::Cow;

use super::charset::{self, Charset};
use super::{DecodeError, EncodeError, Format, Limits, Position, line_column};
use crate::value::{Map, Str, Value};

/// Options of the CSV codec.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvOptions {
    /// Field separator; `;` is common in francophone exports.
    pub delimiter: u8,
    /// Quote character (RFC 4180: fields containing it, the delimiter or a
    /// line break are quoted, and the quote is doubled inside).
    pub quote: u8,
    /// Whether the first row names the columns (read) / is written (write).
    pub header: bool,
    /// Column names. Reading: used instead of (or when there is no) header.
    /// Writing: the columns and their order; empty means the keys of the
    /// records in first-seen order.
    pub columns: Vec<String>,
    /// Character set of the input.
    pub charset: Charset,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            quote: b'"',
            header: true,
            columns: Vec::new(),
            charset: Charset::Utf8,
        }
    }
}

/// Decodes a CSV document into a list of objects, one per record.
pub fn decode(input: &[u8], options: &CsvOptions, limits: &Limits) -> Result<Value, DecodeError> {
    if input.len() > limits.max_bytes {
        return Err(DecodeError::new(
            Format::Csv,
            None,
            format!(
                "document is {} bytes, over the limit of {} bytes",
                input.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = charset::to_utf8(input, options.charset, Format::Csv)?;
    check_names(&options.columns).map_err(|message| {
        DecodeError::new(
            Format::Csv,
            None,
            format!("{message} in the configured columns"),
        )
    })?;

    // The header row is read as an ordinary row, so that the reader's field
    // count check applies to it too and record numbers can be derived from
    // the reader's positions.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .quote(options.quote)
        .double_quote(true)
        .flexible(false)
        .has_headers(false)
        .from_reader(text.as_bytes());

    let mut row = csv::StringRecord::new();
    let mut names: Option<Vec<String>> = None;
    let mut records = Vec::new();
    let first_record = usize::from(options.header);
    let count_from = if !options.columns.is_empty() {
        "the configured columns"
    } else if options.header {
        "the header"
    } else {
        "the first record"
    };
    loop {
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(reader_error(&e, &text, first_record, count_from)),
        }
        let names = match names {
            Some(ref names) => names,
            None => {
                let chosen = first_names(&row, options, &text)?;
                let first = names.insert(chosen);
                if options.header {
                    continue;
                }
                first
            }
        };
        if row.len() != names.len() {
            // Reached only when the configured columns disagree with the
            // first record; later records are checked by the reader.
            let record = records.len() + 1;
            let line = row_line(&text, row.position());
            return Err(field_count_error(
                record,
                line,
                names.len(),
                row.len(),
                count_from,
            ));
        }
        let mut map = Map::with_capacity(names.len());
        for (name, field) in names.iter().zip(row.iter()) {
            map.push_unchecked(Str::from(name.as_str()), Value::String(Str::from(field)));
        }
        records.push(Value::Object(map));
    }
    if names.is_none() {
        // Not even a header: nothing was sent, as with an empty JSON or
        // XML document. A header alone is a list of no records.
        let expected = if options.header {
            "a header row"
        } else {
            "a record"
        };
        return Err(DecodeError::at_offset(
            Format::Csv,
            &text,
            text.len(),
            format!("empty document, expected {expected}"),
        ));
    }
    Ok(Value::Array(records))
}

/// The column names, given the first row of the document.
fn first_names(
    row: &csv::StringRecord,
    options: &CsvOptions,
    text: &str,
) -> Result<Vec<String>, DecodeError> {
    let line = || row_line(text, row.position());
    if !options.columns.is_empty() {
        if options.header && row.len() != options.columns.len() {
            return Err(DecodeError::new(
                Format::Csv,
                Some(Position::LineColumn {
                    line: line(),
                    column: 1,
                }),
                format!(
                    "the header has {} fields but {} columns are configured",
                    row.len(),
                    options.columns.len()
                ),
            ));
        }
        return Ok(options.columns.clone());
    }
    if options.header {
        let names: Vec<String> = row.iter().map(str::to_owned).collect();
        check_names(&names).map_err(|message| {
            DecodeError::new(
                Format::Csv,
                Some(Position::LineColumn {
                    line: line(),
                    column: 1,
                }),
                format!("{message} in the header"),
            )
        })?;
        return Ok(names);
    }
    Ok((1..=row.len()).map(|i| format!("col{i}")).collect())
}

/// Refuses empty and repeated column names: either would lose fields when
/// records become objects.
fn check_names(names: &[String]) -> Result<(), String> {
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(format!("empty column name (column {})", i + 1));
        }
        if let Some(first) = names[..i].iter().position(|n| n == name) {
            return Err(format!(
                "duplicate column name \"{name}\" (columns {} and {})",
                first + 1,
                i + 1
            ));
        }
    }
    Ok(())
}

/// The line a row starts on.
///
/// The reader's own line number counts from the end of the previous row,
/// so it lands on the blank lines the reader skips before a row (or on the
/// `\n` of a `\r\n`); the row really starts after them.
fn row_line(text: &str, position: Option<&csv::Position>) -> usize {
    let start = position.map_or(0, |p| to_usize(p.byte())).min(text.len());
    let skipped = text.as_bytes()[start..]
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    line_column(text, start + skipped).0
}

fn reader_error(e: &csv::Error, text: &str, first_record: usize, count_from: &str) -> DecodeError {
    let position = e
        .position()
        .map(|p| (to_usize(p.record()), row_line(text, Some(p))));
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            let (row, line) = position.unwrap_or((0, 0));
            // `row` counts every row from 0, the header included.
            let record = (row + 1).saturating_sub(first_record).max(1);
            field_count_error(
                record,
                line,
                to_usize(*expected_len),
                to_usize(*len),
                count_from,
            )
        }
        _ => DecodeError::new(
            Format::Csv,
            position.map(|(row, line)| Position::Record {
                record: (row + 1).saturating_sub(first_record).max(1),
                line,
            }),
            e.to_string(),
        ),
    }
}

fn field_count_error(
    record: usize,
    line: usize,
    expected: usize,
    found: usize,
    count_from: &str,
) -> DecodeError {
    DecodeError::new(
        Format::Csv,
        Some(Position::Record { record, line }),
        format!(
            "expected {expected} {} (as in {count_from}), found {found}",
            if expected == 1 { "field" } else { "fields" }
        ),
    )
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Encodes a list of objects (one row each) or a single object (one row).
pub fn encode(value: &Value, options: &CsvOptions) -> Result<Vec<u8>, EncodeError> {
    // Each row with the path prefix of its values in error messages.
    let rows: Vec<(String, &Map)> = match value {
        Value::Object(map) => vec![(String::new(), map)],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => Ok((format!("[{i}]"), map)),
                other => Err(encode_error(
                    format!("[{i}]"),
                    format!(
                        "a CSV row must be an object (column name to value), found {}",
                        described(other)
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(encode_error(
                "(root)".to_owned(),
                format!(
                    "CSV is written from a list of objects or a single object, found {}",
                    described(other)
                ),
            ));
        }
    };

    let columns: Vec<&str> = if options.columns.is_empty() {
        let mut columns: Vec<&str> = Vec::new();
        for (_, map) in &rows {
            for key in map.keys() {
                if !columns.contains(&key) {
                    columns.push(key);
                }
            }
        }
        columns
    } else {
        options.columns.iter().map(String::as_str).collect()
    };

    let mut writer = csv::WriterBuilder::new()
        .delimiter(options.delimiter)
        .quote(options.quote)
        .double_quote(true)
        .quote_style(csv::QuoteStyle::Necessary)
        .terminator(csv::Terminator::CRLF)
        .flexible(false)
        .from_writer(Vec::new());

    let write_failed =
        |e: csv::Error| encode_error("(root)".to_owned(), format!("could not write CSV: {e}"));
    if options.header && !columns.is_empty() {
        writer.write_record(&columns).map_err(write_failed)?;
    }
    let mut fields: Vec<Cow<'_, str>> = Vec::with_capacity(columns.len());
    for (prefix, map) in &rows {
        fields.clear();
        for &column in &columns {
            let field = match map.get(column) {
                None => Cow::Borrowed(""),
                Some(v) => v.scalar_text().ok_or_else(|| {
                    encode_error(
                        field_path(prefix, column),
                        format!(
                            "a CSV field holds text, a number, a boolean or null, found {}; map it to a scalar first",
                            described(v)
                        ),
                    )
                })?,
            };
            fields.push(field);
        }
        if !columns.is_empty() {
            writer
                .write_record(fields.iter().map(|f| f.as_bytes()))
                .map_err(write_failed)?;
        }
    }
    writer.into_inner().map_err(|e| {
        encode_error(
            "(root)".to_owned(),
            format!("could not write CSV: {}", e.error()),
        )
    })
}

/// The path of a row's field: `[2].address`, or `address` for a single row.
fn field_path(prefix: &str, column: &str) -> String {
    let plain = !column.is_empty()
        && !column.chars().any(|c| {
            matches!(c, '.' | '[' | ']' | '"' | '$') || c.is_whitespace() || c.is_control()
        });
    let key = if plain {
        Cow::Borrowed(column)
    } else {
        Cow::Owned(format!("\"{}\"", column.replace('"', "\\\"")))
    };
    if prefix.is_empty() {
        key.into_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A value's type with its article, for messages.
fn described(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn encode_error(path: String, message: String) -> EncodeError {
    EncodeError {
        format: Format::Csv,
        path,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], options: &CsvOptions) -> Value {
        decode(input, options, &Limits::default()).unwrap()
    }

    fn read_error(input: &[u8], options: &CsvOptions) -> DecodeError {
        let err = decode(input, options, &Limits::default()).unwrap_err();
        assert_eq!(err.format, Format::Csv);
        err
    }

    fn record(pairs: &[(&str, &str)]) -> Value {
        Value::Object(pairs.iter().map(|&(k, v)| (k, Value::from(v))).collect())
    }

    fn write(value: &Value, options: &CsvOptions) -> String {
        String::from_utf8(encode(value, options).unwrap()).unwrap()
    }

    fn semicolons() -> CsvOptions {
        CsvOptions {
            delimiter: b';',
            ..CsvOptions::default()
        }
    }

    #[test]
    fn header_names_the_fields() {
        let v = read(b"sku,qty\nA-1,2\nB-2,010\n", &CsvOptions::default());
        assert_eq!(
            v,
            Value::Array(vec![
                record(&[("sku", "A-1"), ("qty", "2")]),
                // Text stays text: no number guessing.
                record(&[("sku", "B-2"), ("qty", "010")]),
            ])
        );
    }

    #[test]
    fn semicolon_delimiter_and_crlf() {
        let v = read(
            b"nom;prix\r\ncaf\xC3\xA9;1,50\r\nth\xC3\xA9;2,00",
            &semicolons(),
        );
        assert_eq!(
            v,
            Value::Array(vec![
                record(&[("nom", "café"), ("prix", "1,50")]),
                record(&[("nom", "thé"), ("prix", "2,00")]),
            ])
        );
    }

    #[test]
    fn quoted_fields_hold_delimiters_quotes_and_line_breaks() {
        let input = b"id;text\n1;\"a;b\"\n2;\"say \"\"hi\"\"\"\n3;\"two\nlines\"\n4;\"\"\n";
        let v = read(input, &semicolons());
        assert_eq!(
            v,
            Value::Array(vec![
                record(&[("id", "1"), ("text", "a;b")]),
                record(&[("id", "2"), ("text", "say \"hi\"")]),
                record(&[("id", "3"), ("text", "two\nlines")]),
                record(&[("id", "4"), ("text", "")]),
            ])
        );
        let single_quote = CsvOptions {
            quote: b'\'',
            ..CsvOptions::default()
        };
        assert_eq!(
            read(b"a,b\n'x,y','it''s'\n", &single_quote),
            Value::Array(vec![record(&[("a", "x,y"), ("b", "it's")])])
        );
    }

    #[test]
    fn latin1_input() {
        let options = CsvOptions {
            charset: Charset::Latin1,
            ..semicolons()
        };
        let v = read(b"ville;pays\nB\xE9ni;RDC\n", &options);
        assert_eq!(
            v,
            Value::Array(vec![record(&[("ville", "Béni"), ("pays", "RDC")])])
        );
    }

    #[test]
    fn bom_is_dropped_from_utf8() {
        let v = read(b"\xEF\xBB\xBFa,b\n1,2\n", &CsvOptions::default());
        assert_eq!(v, Value::Array(vec![record(&[("a", "1"), ("b", "2")])]));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let err = read_error(b"a,b\n1,caf\xE9\n", &CsvOptions::default());
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line: 2, column: 6 })
        );
    }

    #[test]
    fn wrong_field_count_names_record_and_line() {
        let err = read_error(b"a,b,c\n1,2,3\n4,5\n", &CsvOptions::default());
        assert_eq!(err.position, Some(Position::Record { record: 2, line: 3 }));
        assert_eq!(err.message, "expected 3 fields (as in the header), found 2");
        assert_eq!(
            err.to_string(),
            "invalid CSV at record 2 (line 3): expected 3 fields (as in the header), found 2"
        );

        // A quoted line break moves the line on, not the record.
        let err = read_error(b"a,b\n1,\"x\ny\"\n2,3,4\n", &CsvOptions::default());
        assert_eq!(err.position, Some(Position::Record { record: 2, line: 4 }));
        assert_eq!(err.message, "expected 2 fields (as in the header), found 3");

        // Blank lines are skipped but still counted; CRLF counts once.
        let err = read_error(b"a,b\r\n1,2\r\n\r\n\r\n3\r\n", &CsvOptions::default());
        assert_eq!(err.position, Some(Position::Record { record: 2, line: 5 }));

        // Without a header, the first row is record 1.
        let no_header = CsvOptions {
            header: false,
            ..CsvOptions::default()
        };
        let err = read_error(b"1,2\n3\n", &no_header);
        assert_eq!(err.position, Some(Position::Record { record: 2, line: 2 }));
        assert_eq!(
            err.message,
            "expected 2 fields (as in the first record), found 1"
        );

        // Configured columns fix the count from the first record on.
        let columns = CsvOptions {
            header: false,
            columns: vec!["a".into(), "b".into(), "c".into()],
            ..CsvOptions::default()
        };
        let err = read_error(b"\n1,2\n", &columns);
        assert_eq!(err.position, Some(Position::Record { record: 1, line: 2 }));
        assert_eq!(
            err.message,
            "expected 3 fields (as in the configured columns), found 2"
        );
    }

    #[test]
    fn header_less_with_columns_and_without() {
        let columns = CsvOptions {
            header: false,
            columns: vec!["sku".into(), "qty".into()],
            ..CsvOptions::default()
        };
        assert_eq!(
            read(b"A,1\nB,2\n", &columns),
            Value::Array(vec![
                record(&[("sku", "A"), ("qty", "1")]),
                record(&[("sku", "B"), ("qty", "2")]),
            ])
        );

        let bare = CsvOptions {
            header: false,
            ..CsvOptions::default()
        };
        assert_eq!(
            read(b"A,1\n", &bare),
            Value::Array(vec![record(&[("col1", "A"), ("col2", "1")])])
        );
    }

    #[test]
    fn configured_columns_replace_the_header() {
        let options = CsvOptions {
            columns: vec!["sku".into(), "qty".into()],
            ..CsvOptions::default()
        };
        assert_eq!(
            read(b"Article,Quantite\nA,1\n", &options),
            Value::Array(vec![record(&[("sku", "A"), ("qty", "1")])])
        );
        let err = read_error(b"a,b,c\n1,2,3\n", &options);
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line: 1, column: 1 })
        );
        assert!(err.message.contains("3 fields but 2 columns"), "{err}");
    }

    #[test]
    fn bad_header_names_are_refused() {
        let err = read_error(b"a,b,a\n1,2,3\n", &CsvOptions::default());
        assert_eq!(
            err.message,
            "duplicate column name \"a\" (columns 1 and 3) in the header"
        );
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line: 1, column: 1 })
        );

        let err = read_error(b"a,,c\n1,2,3\n", &CsvOptions::default());
        assert_eq!(err.message, "empty column name (column 2) in the header");

        let options = CsvOptions {
            columns: vec!["x".into(), "x".into()],
            ..CsvOptions::default()
        };
        let err = read_error(b"a,b\n", &options);
        assert!(err.message.contains("duplicate column name \"x\""), "{err}");
    }

    #[test]
    fn empty_input_is_refused_and_a_header_alone_is_no_records() {
        // Nothing, blank lines, a byte-order mark alone: no document.
        for input in [&b""[..], b"\r\n\r\n", b"\n", b"\xEF\xBB\xBF"] {
            let err = read_error(input, &CsvOptions::default());
            assert_eq!(err.message, "empty document, expected a header row");
            assert!(err.to_string().starts_with("invalid CSV at line "), "{err}");
        }
        let err = read_error(b"\r\n\r\n", &CsvOptions::default());
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line: 3, column: 1 })
        );
        let bare = CsvOptions {
            header: false,
            ..CsvOptions::default()
        };
        assert_eq!(
            read_error(b"", &bare).message,
            "empty document, expected a record"
        );
        let columns = CsvOptions {
            header: false,
            columns: vec!["a".into(), "b".into()],
            ..CsvOptions::default()
        };
        assert_eq!(
            read_error(b"\n", &columns).message,
            "empty document, expected a record"
        );
        // As `[]` in JSON: a valid document of no records.
        let empty = Value::Array(Vec::new());
        assert_eq!(read(b"a,b\r\n", &CsvOptions::default()), empty);
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        let err = decode(b"a,b\n1,2\n", &CsvOptions::default(), &limits).unwrap_err();
        assert!(err.message.contains("over the limit of 4 bytes"), "{err}");
    }

    #[test]
    fn encode_writes_rfc4180() {
        let mut first = Map::new();
        first.insert("id", Value::from(1));
        first.insert("text", Value::from("a,b"));
        let mut second = Map::new();
        second.insert("text", Value::from("say \"hi\"\nbye"));
        second.insert("ok", Value::Bool(true));
        second.insert("id", Value::Null);
        let v = Value::Array(vec![Value::Object(first), Value::Object(second)]);
        assert_eq!(
            write(&v, &CsvOptions::default()),
            "id,text,ok\r\n1,\"a,b\",\r\n,\"say \"\"hi\"\"\nbye\",true\r\n"
        );

        let options = CsvOptions {
            header: false,
            columns: vec!["ok".into(), "missing".into()],
            ..semicolons()
        };
        assert_eq!(write(&v, &options), ";\r\ntrue;\r\n");
    }

    #[test]
    fn encode_a_single_object_as_one_row() {
        let v = record(&[("nom", "a;b"), ("prix", "1,50")]);
        assert_eq!(write(&v, &semicolons()), "nom;prix\r\n\"a;b\";1,50\r\n");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let v = Value::Array(vec![
            record(&[("a", "plain"), ("b", "semi;colon"), ("c", "")]),
            record(&[
                ("a", "quote \" inside"),
                ("b", "line\r\nbreak"),
                ("c", "é€😀"),
            ]),
            record(&[("a", " spaced "), ("b", "'"), ("c", "x")]),
        ]);
        for options in [CsvOptions::default(), semicolons()] {
            let bytes = encode(&v, &options).unwrap();
            assert_eq!(read(&bytes, &options), v);
        }
    }

    #[test]
    fn nested_values_are_refused_with_their_path() {
        let mut nested = Map::new();
        nested.insert("name", Value::from("Kin"));
        nested.insert("address", record(&[("city", "Kinshasa")]));
        let v = Value::Array(vec![
            record(&[("name", "a")]),
            record(&[("name", "b")]),
            Value::Object(nested.clone()),
        ]);
        let err = encode(&v, &CsvOptions::default()).unwrap_err();
        assert_eq!(err.format, Format::Csv);
        assert_eq!(err.path, "[2].address");
        assert!(err.message.contains("found an object"), "{err}");

        let err = encode(&Value::Object(nested), &CsvOptions::default()).unwrap_err();
        assert_eq!(err.path, "address");

        let list = record(&[]);
        let Value::Object(mut m) = list else {
            unreachable!()
        };
        m.insert("odd key", Value::Array(vec![]));
        let err = encode(
            &Value::Array(vec![Value::Object(m)]),
            &CsvOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.path, "[0].\"odd key\"");
        assert!(err.message.contains("found a list"), "{err}");
    }

    #[test]
    fn encode_refuses_what_is_not_rows() {
        let err = encode(&Value::from("x"), &CsvOptions::default()).unwrap_err();
        assert_eq!(err.path, "(root)");
        assert!(err.message.contains("found text"), "{err}");

        let v = Value::Array(vec![record(&[("a", "1")]), Value::from(3)]);
        let err = encode(&v, &CsvOptions::default()).unwrap_err();
        assert_eq!(err.path, "[1]");
        assert!(err.message.contains("found a number"), "{err}");
    }

    #[test]
    fn encode_empty_list() {
        assert_eq!(write(&Value::Array(Vec::new()), &CsvOptions::default()), "");
        let options = CsvOptions {
            columns: vec!["a".into(), "b".into()],
            ..CsvOptions::default()
        };
        assert_eq!(write(&Value::Array(Vec::new()), &options), "a,b\r\n");
    }
}
