//! The `tests:` of a mapping file: an input, and the output (or the error)
//! it must give.
//!
//! Outputs are compared as documents, not as bytes: both sides are decoded
//! with the mapping's output codec and compared as trees. JSON keys may come
//! in any order; XML element order matters (schemas fix it) but attribute
//! order and whitespace around text do not; numbers compare by value
//! (`39060.0` equals `39060.00` in JSON). A failed test lists each
//! difference with its path.

use std::path::PathBuf;

use super::Mapping;
use crate::codec::Format;
use crate::value::Value;

/// One test of a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub name: String,
    /// Line of the test in the mapping file.
    pub line: usize,
    pub input: TestData,
    pub expect: Expect,
}

/// A document for a test: a file beside the mapping, or inline text.
#[derive(Debug, Clone, PartialEq)]
pub enum TestData {
    File(PathBuf),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The mapping's output must be this document.
    Output(TestData),
    /// The mapping must fail with an error containing this text.
    Error(String),
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    /// Why it failed: the differences, or the error.
    pub detail: Option<String>,
}

/// Most differences listed for one failed test.
const MAX_DIFFS: usize = 20;

impl TestData {
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            TestData::Text(t) => Ok(t.as_bytes().to_vec()),
            TestData::File(p) => {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            }
        }
    }
}

impl Mapping {
    /// Runs every test of the mapping file.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.tests.iter().map(|t| self.run_test(t)).collect()
    }

    fn run_test(&self, t: &TestCase) -> TestOutcome {
        let result = self.check_test(t);
        TestOutcome {
            name: t.name.clone(),
            passed: result.is_ok(),
            detail: result.err(),
        }
    }

    fn check_test(&self, t: &TestCase) -> Result<(), String> {
        let input = t.input.read()?;
        let result = self.run(&input);
        match (&t.expect, result) {
            (Expect::Error(want), Err(e)) => {
                let got = e.to_string();
                if got.contains(want.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected an error containing \"{want}\", got: {got}"
                    ))
                }
            }
            (Expect::Error(want), Ok(_)) => Err(format!(
                "expected an error containing \"{want}\", but the mapping succeeded"
            )),
            (Expect::Output(_), Err(e)) => Err(format!("the mapping failed: {e}")),
            (Expect::Output(data), Ok(out)) => {
                let expected_bytes = data.read()?;
                if expected_bytes == out {
                    // Also what no document decodes from: an empty CSV.
                    return Ok(());
                }
                let codec = &self.output;
                let limits = crate::codec::Limits {
                    max_bytes: usize::MAX,
                    ..self.limits
                };
                let expected = codec
                    .decode(&expected_bytes, &limits)
                    .map_err(|e| format!("the expected output is not a valid document: {e}"))?;
                let actual = codec.decode(&out, &limits).map_err(|e| {
                    format!(
                        "the output is not a valid document: {e}\n{}",
                        String::from_utf8_lossy(&out)
                    )
                })?;
                let diffs = diff(&expected, &actual, codec.format());
                if diffs.is_empty() {
                    Ok(())
                } else {
                    Err(render(&diffs))
                }
            }
        }
    }
}

fn render(diffs: &[String]) -> String {
    let mut out = String::new();
    for d in diffs.iter().take(MAX_DIFFS) {
        out.push_str("  ");
        out.push_str(d);
        out.push('\n');
    }
    if diffs.len() > MAX_DIFFS {
        out.push_str(&format!(
            "  ... and {} more differences\n",
            diffs.len() - MAX_DIFFS
        ));
    }
    out.truncate(out.trim_end().len());
    out
}

/// The differences between two documents, one line each, with their paths.
pub fn diff(expected: &Value, actual: &Value, format: Format) -> Vec<String> {
    let mut out = Vec::new();
    compare(expected, actual, "", format == Format::Xml, &mut out);
    out
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn compare(expected: &Value, actual: &Value, path: &str, xml: bool, out: &mut Vec<String>) {
    let here = if path.is_empty() { "(document)" } else { path };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let before = out.len();
            for (k, ev) in e.iter() {
                match a.get(k) {
                    Some(av) => compare(ev, av, &child(path, k), xml, out),
                    None => out.push(format!(
                        "{}: missing (expected {})",
                        child(path, k),
                        brief(ev)
                    )),
                }
            }
            for (k, av) in a.iter() {
                if !e.contains_key(k) {
                    out.push(format!(
                        "{}: not expected (got {})",
                        child(path, k),
                        brief(av)
                    ));
                }
            }
            if xml && out.len() == before {
                let order = |m: &crate::value::Map| {
                    m.keys()
                        .filter(|k| !k.starts_with('@'))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                };
                let (eo, ao) = (order(e), order(a));
                if eo != ao {
                    out.push(format!(
                        "{here}: elements in another order: expected {}, got {}",
                        eo.join(", "),
                        ao.join(", ")
                    ));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{here}: expected {} items, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, &format!("{path}[{i}]"), xml, out);
            }
        }
        (e, a) if e.is_scalar() && a.is_scalar() => {
            if !scalars_equal(e, a, xml) {
                out.push(format!("{here}: expected {}, got {}", brief(e), brief(a)));
            }
        }
        (e, a) => out.push(format!("{here}: expected {}, got {}", brief(e), brief(a))),
    }
}

fn scalars_equal(e: &Value, a: &Value, xml: bool) -> bool {
    if xml {
        let (e, a) = (
            e.scalar_text().unwrap_or_default(),
            a.scalar_text().unwrap_or_default(),
        );
        return e.trim() == a.trim();
    }
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => match (x.to_decimal(), y.to_decimal()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_str() == y.as_str(),
        },
        _ => e == a,
    }
}

fn brief(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let short: String = s.chars().take(60).collect();
            if short.len() < s.len() {
                format!("\"{short}...\"")
            } else {
                format!("\"{s}\"")
            }
        }
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(m) => {
            let keys: Vec<&str> = m.keys().take(4).collect();
            let more = if m.len() > 4 { ", ..." } else { "" };
            format!("{{{}{more}}}", keys.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Limits};

    fn json(s: &str) -> Value {
        Codec::default_for(Format::Json)
            .decode(s.as_bytes(), &Limits::default())
            .unwrap()
    }

    fn xml(s: &str) -> Value {
        Codec::default_for(Format::Xml)
            .decode(s.as_bytes(), &Limits::default())
            .unwrap()
    }

    #[test]
    fn an_expected_output_equal_byte_for_byte_passes_even_when_it_is_no_document() {
        // No records and no header: an empty CSV, which does not decode.
        let yaml = r#"
name: items-to-csv
input: json
output: { format: csv, header: false }
each: items
fields:
  sku: sku
tests:
  - name: no items, no lines
    input: { text: '{"items": []}' }
    expect: { text: "" }
  - name: one item, one line
    input: { text: '{"items": [{"sku": "A-1"}]}' }
    expect: { text: "A-2\r\n" }
"#;
        let m = Mapping::from_yaml(yaml, "items-to-csv.yaml").unwrap();
        let outcomes = m.run_tests();
        assert!(outcomes[0].passed, "{:?}", outcomes[0].detail);
        assert!(!outcomes[1].passed);
    }

    #[test]
    fn json_compares_ignoring_key_order_and_number_scale() {
        let d = diff(
            &json(r#"{"a": 1, "b": [1, 2], "c": 39060.00}"#),
            &json(r#"{"c": 39060.0, "b": [1, 2], "a": 1}"#),
            Format::Json,
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn json_differences_are_listed_with_paths() {
        let d = diff(
            &json(r#"{"a": "1", "b": [1, 2], "p": {"x": 1}}"#),
            &json(r#"{"a": 1, "b": [1], "p": {"y": 1}}"#),
            Format::Json,
        );
        assert_eq!(
            d,
            [
                "a: expected \"1\", got number 1",
                "b: expected 2 items, got 1",
                "p.x: missing (expected number 1)",
                "p.y: not expected (got number 1)",
            ]
        );
    }

    #[test]
    fn xml_ignores_whitespace_and_attribute_order_but_not_element_order() {
        let d = diff(
            &xml("<r a='1' b='2'><x> 1 </x><y>2</y></r>"),
            &xml("<r b='2' a='1'>\n  <x>1</x>\n  <y>2</y>\n</r>"),
            Format::Xml,
        );
        assert!(d.is_empty(), "{d:?}");
        let d = diff(
            &xml("<r><x>1</x><y>2</y></r>"),
            &xml("<r><y>2</y><x>1</x></r>"),
            Format::Xml,
        );
        assert_eq!(d, ["r: elements in another order: expected x, y, got y, x"]);
        let d = diff(
            &xml("<r><i>1</i><i>2</i></r>"),
            &xml("<r><i>1</i><i>3</i></r>"),
            Format::Xml,
        );
        assert_eq!(d, ["r.i[1]: expected \"2\", got \"3\""]);
    }
}
