//! A YAML reader that keeps where every node was written.
//!
//! Mapping files are written by people; when one is wrong, the error must
//! point at the line and column. This module turns the events of
//! `saphyr-parser` into a small tree of [`Node`]s, each with its position,
//! keeps scalars as written (so `185.50` stays exact and `"120"` stays text),
//! refuses duplicate keys, and bounds the tree built through aliases.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::value::{Map, Number, Str, Value};

/// Most nodes a document may expand to, aliases included: an alias to a
/// large anchor is a copy, and copies of copies grow exponentially.
const MAX_NODES: usize = 1_000_000;

/// 1-based line and column of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A scalar as written; `plain` is false when it was quoted or a block
    /// scalar, which makes it text whatever it looks like.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in document order. Keys are scalars (checked when reading).
    Map(Vec<(Node, Node)>),
}

/// A YAML document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl Node {
    /// The text of a scalar, or `None` for a sequence or mapping.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for an empty plain scalar, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A word for what this node is, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The node as a [`Value`]: plain scalars that read as numbers become
    /// exact numbers, `true`/`false` booleans, `null`/`~`/empty null;
    /// quoted scalars are always text.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Scalar { text, plain } => {
                if !plain {
                    return Value::String(Str::from(text.as_str()));
                }
                if self.is_null() {
                    return Value::Null;
                }
                match text.as_str() {
                    "true" | "True" | "TRUE" => Value::Bool(true),
                    "false" | "False" | "FALSE" => Value::Bool(false),
                    t => {
                        Number::parse(t).map_or_else(|| Value::String(Str::from(t)), Value::Number)
                    }
                }
            }
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    m.insert(k.as_str().unwrap_or_default(), v.to_value());
                }
                Value::Object(m)
            }
        }
    }
}

/// Reads one YAML document. An empty document reads as a null scalar.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_owned(),
        })?;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos: Pos::of(&span),
                        message: "a second YAML document ('---') is not allowed here: one file holds one document".into(),
                    });
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            event => {
                if let Some(node) = builder.event(event, &span)? {
                    root = Some(node);
                }
            }
        }
    }
    Ok(root.unwrap_or(Node {
        pos: Pos { line: 1, column: 1 },
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
    }))
}

#[derive(Default)]
struct Builder {
    /// Open collections: the node being filled, its anchor, and for a
    /// mapping the key waiting for its value.
    stack: Vec<(Node, usize, Option<Node>)>,
    anchors: Vec<(usize, Node)>,
    nodes: usize,
}

impl Builder {
    /// Feeds one event; returns the root node once it is complete.
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<Option<Node>, YamlError> {
        let pos = Pos::of(span);
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, _tag) => (
                Node {
                    pos,
                    kind: Kind::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                },
                anchor,
            ),
            Event::SequenceStart(anchor, _tag) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Seq(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                return Ok(None);
            }
            Event::MappingStart(anchor, _tag) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Map(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                return Ok(None);
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some((node, anchor, _)) => (node, anchor),
                None => return Ok(None),
            },
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    })?;
                self.nodes += count(&node);
                (node, 0)
            }
            _ => return Ok(None),
        };
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!(
                    "document expands to more than {MAX_NODES} nodes (through aliases?)"
                ),
            });
        }
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<Option<Node>, YamlError> {
        let Some((parent, _, pending_key)) = self.stack.last_mut() else {
            return Ok(Some(node));
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => match pending_key.take() {
                None => {
                    let Some(key) = node.as_str() else {
                        return Err(YamlError {
                            pos: node.pos,
                            message: format!(
                                "a key must be a single value, not {}",
                                node.kind_name()
                            ),
                        });
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.as_str() == Some(key))
                    {
                        return Err(YamlError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key \"{key}\" (first written at line {})",
                                first.pos.line
                            ),
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
            Kind::Scalar { .. } => {}
        }
        Ok(None)
    }
}

fn count(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions() {
        let doc = parse("name: x\nfields:\n  A.B: order.id\n  C: { const: 1 }\n").unwrap();
        let fields = doc.get("fields").unwrap();
        let entries = fields.as_map().unwrap();
        assert_eq!(entries[0].0.pos, Pos { line: 3, column: 3 });
        assert_eq!(entries[0].1.as_str(), Some("order.id"));
        assert_eq!(
            entries[1].1.get("const").unwrap().pos,
            Pos {
                line: 4,
                column: 15
            }
        );
    }

    #[test]
    fn scalars_keep_their_exact_form() {
        let doc = parse("a: 185.50\nb: \"120\"\nc: true\nd: ~\ne: 090111\nf: 'x'\n").unwrap();
        let v = doc.to_value();
        let m = v.as_object().unwrap();
        assert_eq!(
            m.get("a"),
            Some(&Value::Number(Number::parse("185.50").unwrap()))
        );
        assert_eq!(m.get("b"), Some(&Value::from("120")));
        assert_eq!(m.get("c"), Some(&Value::Bool(true)));
        assert_eq!(m.get("d"), Some(&Value::Null));
        // not a JSON number: leading zero keeps it text
        assert_eq!(m.get("e"), Some(&Value::from("090111")));
        assert_eq!(m.get("f"), Some(&Value::from("x")));
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        assert!(
            err.message
                .contains("duplicate key \"a\" (first written at line 1)"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err}");
        let err = parse("a:\n  - x\n - y\n").unwrap_err();
        assert_eq!(err.pos.line, 3, "{err}");
    }

    #[test]
    fn aliases_are_copies_and_bounded() {
        let doc = parse("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(doc.get("b").unwrap().get("k").unwrap().as_str(), Some("v"));
        // each level doubles the previous one
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..30 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&bomb).unwrap_err();
        assert!(err.message.contains("more than"), "{err}");
    }

    #[test]
    fn one_document_per_file() {
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("").unwrap().is_null());
    }
}
