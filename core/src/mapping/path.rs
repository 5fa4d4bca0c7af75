//! Source paths: where a value is taken from in the message.
//!
//! ```text
//! order.seller.niu          relative to the current item (the message at top level)
//! $.order.currency          from the message root, anywhere ($ alone: the whole message)
//! $total_amount             a value declared under `vars:`
//! $position                 inside a repeated group: the item's number, from 1
//! order.items[0].sku        an index (from 0; -1 is the last)
//! order.items[].quantity    every item (for `sum`, `count` and `each`)
//! Document.@Ccy  Amt.#text  XML attribute, XML text beside attributes
//! order."odd.key"           a key that contains a dot, in double quotes
//! ```
//!
//! A list met on the way without an index is looked through: `items.sku`
//! reads the first item that has a `sku` when one value is wanted, and every
//! item's `sku` when all are (`count`, `sum`, `each`). A single XML element
//! and a list of repeated ones are therefore read the same way.

use std::fmt;

use crate::value::Value;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Base {
    /// Relative to the current item.
    Current,
    /// From the message root (`$.`).
    Root,
    /// A declared value (`$name`), by name until the compiler resolves it.
    Var(String),
    /// A declared value, resolved to its slot.
    Slot(usize),
    /// `$position`: the current item's number in its group, from 1.
    Position,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Key(String),
    Index(i64),
    /// `[]`: every item of a list.
    All,
}

/// A parsed source path.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Path {
    pub base: Base,
    pub steps: Vec<Step>,
    /// As written, for messages.
    pub text: String,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Characters that cannot appear in an unquoted key.
fn is_key_char(c: char) -> bool {
    !matches!(c, '.' | '[' | ']' | '"' | '$') && !c.is_whitespace() && !c.is_control()
}

impl Path {
    /// Parses a source path; the error says what is wrong and at which
    /// character (0-based offset into `text`).
    pub fn parse(text: &str) -> Result<Path, (usize, String)> {
        let mut chars = text.char_indices().peekable();
        let mut steps = Vec::new();
        if text == "$" {
            return Ok(Path {
                base: Base::Root,
                steps: Vec::new(),
                text: text.to_owned(),
            });
        }
        // A key is expected at the start and after each '.'.
        let mut expect_key = true;
        let base = if text.starts_with("$.") {
            chars.next();
            chars.next();
            Base::Root
        } else if let Some(rest) = text.strip_prefix('$') {
            let name: String = rest
                .chars()
                .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
                .collect();
            if name.is_empty() {
                return Err((
                    1,
                    "'$' must be followed by '.' (the message root) or the name of a value from `vars:`".into(),
                ));
            }
            for _ in 0..=name.chars().count() {
                chars.next();
            }
            match chars.peek() {
                None | Some((_, '[')) => expect_key = false,
                Some((_, '.')) => {
                    chars.next();
                }
                Some(&(i, c)) => return Err((i, format!("unexpected '{c}' after ${name}"))),
            }
            Base::Var(name)
        } else {
            Base::Current
        };
        while let Some(&(i, c)) = chars.peek() {
            if expect_key {
                if c == '"' {
                    chars.next();
                    let mut key = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        key.push(c);
                    }
                    if !closed {
                        return Err((i, "unterminated quoted key".into()));
                    }
                    steps.push(Step::Key(key));
                } else if is_key_char(c) {
                    let mut key = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if !is_key_char(c) {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    steps.push(Step::Key(key));
                } else {
                    return Err((i, format!("expected a key, found '{c}'")));
                }
                expect_key = false;
                continue;
            }
            match c {
                '.' => {
                    chars.next();
                    expect_key = true;
                    if chars.peek().is_none() {
                        return Err((i, "a path cannot end with '.'".into()));
                    }
                }
                '[' => {
                    chars.next();
                    let mut inner = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err((i, "'[' without its ']'".into()));
                    }
                    if inner.is_empty() {
                        steps.push(Step::All);
                    } else {
                        let n = inner.trim().parse::<i64>().map_err(|_| {
                            (i, format!("index [{inner}] is not a whole number (write [0] for the first item, [] for all)"))
                        })?;
                        steps.push(Step::Index(n));
                    }
                }
                _ => return Err((i, format!("expected '.' or '[' after a key, found '{c}'"))),
            }
        }
        if expect_key {
            let message = if text.is_empty() {
                "empty path"
            } else {
                "a path cannot end with '.'"
            };
            return Err((text.len(), message.into()));
        }
        Ok(Path {
            base,
            steps,
            text: text.to_owned(),
        })
    }

    /// The value the path points to, from `start`. Lists met on the way are
    /// looked through (first match); the last step's value is returned as is,
    /// list included.
    pub fn resolve<'v>(&self, start: &'v Value) -> Option<&'v Value> {
        resolve_first(start, &self.steps)
    }

    /// As [`Path::resolve`], from the value the first `skip` steps lead to.
    pub fn resolve_rest<'v>(&self, skip: usize, start: &'v Value) -> Option<&'v Value> {
        resolve_first(start, self.steps.get(skip..)?)
    }

    /// The member names the path starts with, up to its first index.
    pub fn leading_keys(&self) -> Vec<&str> {
        self.steps
            .iter()
            .map_while(|step| match step {
                Step::Key(k) => Some(k.as_str()),
                Step::Index(_) | Step::All => None,
            })
            .collect()
    }

    /// Every value the path points to, from `start`, lists flattened: the
    /// items of a list at the end of the path are returned one by one.
    pub fn resolve_all<'v>(&self, start: &'v Value, out: &mut Vec<&'v Value>) {
        resolve_all(start, &self.steps, out);
    }
}

fn resolve_first<'v>(v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => resolve_first(m.get(k)?, rest),
        (Step::Key(_), Value::Array(items)) => items.iter().find_map(|i| resolve_first(i, steps)),
        (Step::Index(i), Value::Array(items)) => {
            let at = if *i < 0 {
                items.len().checked_sub(i.unsigned_abs() as usize)?
            } else {
                *i as usize
            };
            resolve_first(items.get(at)?, rest)
        }
        // A single value is a list of one.
        (Step::Index(0 | -1), _) => resolve_first(v, rest),
        (Step::All, Value::Array(items)) => items.iter().find_map(|i| resolve_first(i, rest)),
        (Step::All, _) => resolve_first(v, rest),
        _ => None,
    }
}

fn resolve_all<'v>(v: &'v Value, steps: &[Step], out: &mut Vec<&'v Value>) {
    let Some((step, rest)) = steps.split_first() else {
        match v {
            Value::Array(items) => out.extend(items.iter()),
            Value::Null => {}
            v => out.push(v),
        }
        return;
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get(k) {
                resolve_all(child, rest, out);
            }
        }
        (Step::Key(_), Value::Array(items)) => {
            for i in items {
                resolve_all(i, steps, out);
            }
        }
        (Step::Index(_), Value::Array(_)) | (Step::Index(0 | -1), _) => {
            if let Some(item) = resolve_first(v, std::slice::from_ref(step)) {
                resolve_all(item, rest, out);
            }
        }
        (Step::All, Value::Array(items)) => {
            for i in items {
                resolve_all(i, rest, out);
            }
        }
        (Step::All, _) => resolve_all(v, rest, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json;

    fn doc() -> Value {
        json::decode(
            br#"{"order": {"id": "A1", "items": [{"sku": "x", "q": 1}, {"sku": "y", "q": 2}, {"q": 3}],
                 "one": {"sku": "z"}, "odd.key": 5}}"#,
            &Default::default(),
        )
        .unwrap()
    }

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            p("a.b").steps,
            vec![Step::Key("a".into()), Step::Key("b".into())]
        );
        assert_eq!(p("$.a").base, Base::Root);
        let v = p("$total");
        assert_eq!((v.base, v.steps), (Base::Var("total".into()), vec![]));
        let v = p("$t.x[2]");
        assert_eq!(v.steps, vec![Step::Key("x".into()), Step::Index(2)]);
        assert_eq!(p("a[].b").steps[1], Step::All);
        assert_eq!(p("a[-1]").steps[1], Step::Index(-1));
        assert_eq!(p("Doc.@Ccy").steps[1], Step::Key("@Ccy".into()));
        assert_eq!(p("cbc:ID.#text").steps[0], Step::Key("cbc:ID".into()));
        assert_eq!(p("a.\"b.c\"").steps[1], Step::Key("b.c".into()));
    }

    #[test]
    fn refuses_bad_paths_with_offsets() {
        for (bad, at) in [
            ("a..b", 2),
            ("a.", 1),
            ("a[x]", 1),
            ("a[1", 1),
            ("$x.", 3),
            ("$-", 1),
            ("a b", 1),
            ("", 0),
        ] {
            let err = Path::parse(bad).unwrap_err();
            assert_eq!(err.0, at, "{bad}: {err:?}");
        }
    }

    #[test]
    fn resolves_first_match_through_lists() {
        let d = doc();
        assert_eq!(p("order.id").resolve(&d), Some(&Value::from("A1")));
        assert_eq!(p("order.items.sku").resolve(&d), Some(&Value::from("x")));
        assert_eq!(p("order.items[1].sku").resolve(&d), Some(&Value::from("y")));
        assert_eq!(p("order.items[-1].q").resolve(&d), Some(&Value::from(3)));
        assert_eq!(p("order.items[9]").resolve(&d), None);
        // a single object is a list of one
        assert_eq!(p("order.one[0].sku").resolve(&d), Some(&Value::from("z")));
        assert_eq!(p("order.\"odd.key\"").resolve(&d), Some(&Value::from(5)));
        assert!(matches!(p("order.items").resolve(&d), Some(Value::Array(a)) if a.len() == 3));
        assert_eq!(p("order.nope").resolve(&d), None);
    }

    #[test]
    fn resolves_all_matches_flattened() {
        let d = doc();
        let mut out = Vec::new();
        p("order.items[].q").resolve_all(&d, &mut out);
        assert_eq!(out, [&Value::from(1), &Value::from(2), &Value::from(3)]);
        out.clear();
        p("order.items.sku").resolve_all(&d, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        p("order.items").resolve_all(&d, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        p("order.one").resolve_all(&d, &mut out);
        assert_eq!(out.len(), 1);
    }
}
