//! From a mapping file's YAML to a compiled [`Mapping`].
//!
//! The compiler never stops at the first problem: it records each one with
//! its line and column and goes on, so that one `nzela check` shows all of
//! them. A mapping is returned only when there is none.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use super::expr::{self, Expr, Visible};
use super::lookup::{LookupSpec, LookupTable};
use super::numfmt::NumFormat;
use super::path::{Base, Path};
use super::testing::{Expect, TestCase, TestData};
use super::{
    Body, Case, Check, Diagnostic, Field, Group, Kind, LoadError, LookupRef, Mapping, Source,
    TNode, Template, Var,
};
use crate::codec::charset::Charset;
use crate::codec::csv::CsvOptions;
use crate::codec::json::JsonOptions;
use crate::codec::xml::XmlOptions;
use crate::codec::{Codec, Format, Limits};
use crate::value::{Str, Value};
use crate::yaml::{self, Kind as YKind, Node, Pos};

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "input",
    "output",
    "missing",
    "lookups",
    "vars",
    "each",
    "fields",
    "tests",
];
const FIELD_KEYS: &[&str] = &[
    "path",
    "const",
    "expr",
    "count",
    "sum",
    "of",
    "default",
    "required",
    "when",
    "lookup",
    "trim",
    "case",
    "round",
    "format",
    "type",
    "max_length",
    "min_length",
    "pattern",
    "one_of",
    "min",
    "max",
];
const SOURCE_KEYS: &[&str] = &["path", "const", "expr", "count", "sum"];
const GROUP_KEYS: &[&str] = &["each", "when", "vars", "fields", "min_items", "max_items"];
const SECTION_KEYS: &[&str] = &["fields", "when"];
const RESERVED_NAMES: &[&str] = &["input", "item", "position"];

/// Names visible where a path or expression is written.
#[derive(Clone, Default)]
struct Scope {
    vars: Vec<(String, usize)>,
    in_group: bool,
}

struct Compiler {
    dir: PathBuf,
    diags: Vec<Diagnostic>,
    engine: rhai::Engine,
    tables: Arc<Vec<LookupTable>>,
    slots: usize,
    output: Format,
    /// Fields are required unless they say otherwise (`missing: error`).
    required_by_default: bool,
    /// Memo ids of item-only expressions, by text.
    memo_ids: Vec<String>,
}

pub(super) fn compile(text: &str, file: &FsPath) -> Result<Mapping, LoadError> {
    let fail = |diagnostics| LoadError {
        file: file.to_owned(),
        diagnostics,
    };
    let root = yaml::parse(text).map_err(|e| {
        fail(vec![Diagnostic {
            line: e.pos.line,
            column: e.pos.column,
            message: format!("not valid YAML: {}", e.message),
            help: None,
        }])
    })?;
    if root.as_map().is_none() {
        return Err(fail(vec![Diagnostic {
            line: root.pos.line,
            column: root.pos.column,
            message: format!(
                "a mapping file is a YAML mapping (name:, input:, output:, fields:, ...), not {}",
                root.kind_name()
            ),
            help: None,
        }]));
    }
    let dir = file.parent().map(FsPath::to_path_buf).unwrap_or_default();
    let mut c = Compiler {
        dir,
        diags: Vec::new(),
        engine: expr::engine(Arc::new(Vec::new())),
        tables: Arc::new(Vec::new()),
        slots: 0,
        output: Format::Json,
        required_by_default: false,
        memo_ids: Vec::new(),
    };
    c.check_keys(&root, TOP_KEYS, "at the top of a mapping file");

    let name = match root.get("name") {
        Some(n) => c.string(n, "name").unwrap_or_default(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let description = root
        .get("description")
        .and_then(|n| c.string(n, "description"));
    let (input, limits) = match root.get("input") {
        Some(n) => c.codec(n, true),
        None => {
            c.error(
                root.pos,
                "the mapping needs `input:` (json, xml or csv)",
                None,
            );
            (Codec::default_for(Format::Json), Limits::default())
        }
    };
    let (output, _) = match root.get("output") {
        Some(n) => c.codec(n, false),
        None => {
            c.error(
                root.pos,
                "the mapping needs `output:` (json, xml or csv)",
                None,
            );
            (Codec::default_for(Format::Json), Limits::default())
        }
    };
    c.output = output.format();
    if let Some(n) = root.get("missing") {
        match n.as_str() {
            Some("omit") => {}
            Some("error") => c.required_by_default = true,
            _ => c.error(
                n.pos,
                "`missing:` is `omit` (a field whose source is missing is left out) or `error`",
                None,
            ),
        }
    }
    if let Some(n) = root.get("lookups") {
        c.lookups(n);
    }
    c.engine = expr::engine(c.tables.clone());

    let mut scope = Scope::default();
    let vars = match root.get("vars") {
        Some(n) => c.vars(n, &mut scope),
        None => Vec::new(),
    };
    let body = match (root.get("each"), root.get("fields")) {
        (Some(each), Some(fields)) => {
            if c.output == Format::Xml {
                c.error(
                    each.pos,
                    "a top-level `each:` makes a list of records, which XML output cannot hold",
                    Some("use a repeated group under `fields:` instead"),
                );
            }
            Body::Each(Box::new(c.group_parts(
                "(record)", each, None, None, fields, None, None, &scope,
            )))
        }
        (None, Some(fields)) => Body::Object(c.template(fields, &scope, "")),
        (_, None) => {
            c.error(
                root.pos,
                "the mapping needs `fields:`: the target fields and where their values come from",
                None,
            );
            Body::Object(Template::default())
        }
    };
    let tests = match root.get("tests") {
        Some(n) => c.tests(n),
        None => Vec::new(),
    };
    if !c.diags.is_empty() {
        c.diags.sort_by_key(|d| (d.line, d.column));
        return Err(fail(c.diags));
    }
    Ok(Mapping {
        name,
        description,
        file: file.to_owned(),
        input,
        output,
        limits,
        vars,
        body,
        slots: c.slots,
        engine: c.engine,
        tables: c.tables,
        tests,
    })
}

impl Compiler {
    fn error(&mut self, pos: Pos, message: impl Into<String>, help: Option<&str>) {
        self.diags.push(Diagnostic {
            line: pos.line,
            column: pos.column,
            message: message.into(),
            help: help.map(str::to_owned),
        });
    }

    /// Reports every key of `node` that is not in `allowed`.
    fn check_keys(&mut self, node: &Node, allowed: &[&str], place: &str) {
        let Some(entries) = node.as_map() else { return };
        for (k, _) in entries {
            let key = k.as_str().unwrap_or_default();
            if !allowed.contains(&key) {
                let help = match closest(key, allowed) {
                    Some(s) => format!("did you mean `{s}`? Allowed here: {}", allowed.join(", ")),
                    None => format!("allowed here: {}", allowed.join(", ")),
                };
                self.error(k.pos, format!("unknown key `{key}` {place}"), Some(&help));
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) if !node.is_null() => Some(s.to_owned()),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "`{what}` must be a single text value, not {}",
                        describe(node)
                    ),
                    None,
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.to_value() {
            Value::Bool(b) => Some(b),
            _ => {
                self.error(
                    node.pos,
                    format!("`{what}` must be true or false, not {}", describe(node)),
                    None,
                );
                None
            }
        }
    }

    fn count_of(&mut self, node: &Node, what: &str, max: usize) -> Option<usize> {
        match node.to_value() {
            Value::Number(n) => match n.to_i64() {
                Some(i) if (0..=max as i64).contains(&i) => Some(i as usize),
                _ => {
                    self.error(
                        node.pos,
                        format!("`{what}` must be a whole number from 0 to {max}, not {n}"),
                        None,
                    );
                    None
                }
            },
            _ => {
                self.error(
                    node.pos,
                    format!("`{what}` must be a whole number, not {}", describe(node)),
                    None,
                );
                None
            }
        }
    }

    fn one_char(&mut self, node: &Node, what: &str) -> Option<u8> {
        let s = self.string(node, what)?;
        let s = match s.as_str() {
            "tab" | "\\t" => "\t",
            other => other,
        };
        match s.as_bytes() {
            [b] if b.is_ascii() => Some(*b),
            _ => {
                self.error(
                    node.pos,
                    format!("`{what}` must be one ASCII character (or `tab`), not \"{s}\""),
                    None,
                );
                None
            }
        }
    }

    /// A source path, its errors located inside the YAML scalar.
    fn path(&mut self, node: &Node, scope: &Scope) -> Option<Path> {
        let text = self.string(node, "path")?;
        match Path::parse(&text) {
            Ok(mut p) => {
                if let Base::Var(name) = &p.base {
                    if let Some((_, slot)) = scope.vars.iter().rev().find(|(n, _)| n == name) {
                        p.base = Base::Slot(*slot);
                    } else if name == "position" && scope.in_group {
                        p.base = Base::Position;
                    } else {
                        let declared: Vec<String> =
                            scope.vars.iter().map(|(n, _)| format!("${n}")).collect();
                        let help = if declared.is_empty() {
                            "no value is declared under `vars:` before this point".to_owned()
                        } else {
                            format!("declared before this point: {}", declared.join(", "))
                        };
                        self.error(
                            inner_pos(node, 0),
                            format!("unknown value ${name} in path \"{text}\""),
                            Some(&help),
                        );
                        return None;
                    }
                }
                Some(p)
            }
            Err((at, message)) => {
                self.error(
                    inner_pos(node, at),
                    format!("bad path \"{text}\": {message}"),
                    None,
                );
                None
            }
        }
    }

    fn expr(&mut self, node: &Node, scope: &Scope) -> Option<Expr> {
        let text = self.string(node, "expr")?;
        let visible = Visible {
            vars: &scope.vars,
            in_group: scope.in_group,
        };
        match Expr::compile(&self.engine, &text, &visible) {
            Ok(mut e) => {
                if e.bindings.iter().all(|(_, b)| *b == expr::Binding::Field) {
                    let id = match self.memo_ids.iter().position(|t| *t == text) {
                        Some(id) => id,
                        None => {
                            self.memo_ids.push(text.clone());
                            self.memo_ids.len() - 1
                        }
                    };
                    e.memo = Some(id);
                }
                Some(e)
            }
            Err(e) => {
                let pos = if e.line <= 1 {
                    inner_pos(node, e.column.saturating_sub(1))
                } else {
                    Pos {
                        line: node.pos.line + e.line - 1,
                        column: e.column,
                    }
                };
                self.error(
                    pos,
                    format!("expression \"{text}\" does not compile: {}", e.message),
                    None,
                );
                None
            }
        }
    }

    /// `input:` or `output:`: a format name, or a mapping with `format:`
    /// and that format's options.
    fn codec(&mut self, node: &Node, reading: bool) -> (Codec, Limits) {
        let side = if reading { "input" } else { "output" };
        let mut limits = Limits::default();
        let format_node = if node.as_map().is_some() {
            node.get("format")
        } else {
            Some(node)
        };
        let Some(format_node) = format_node else {
            self.error(
                node.pos,
                format!("`{side}:` needs `format:` (json, xml or csv)"),
                None,
            );
            return (Codec::default_for(Format::Json), limits);
        };
        let Some(format) = format_node.as_str().and_then(Format::from_name) else {
            self.error(
                format_node.pos,
                format!(
                    "unknown {side} format {}: expected json, xml or csv",
                    describe(format_node)
                ),
                None,
            );
            return (Codec::default_for(Format::Json), limits);
        };
        if node.as_map().is_none() {
            return (Codec::default_for(format), limits);
        }
        let common: &[&str] = if reading {
            &["format", "max_bytes", "max_depth"]
        } else {
            &["format"]
        };
        let specific: &[&str] = match (format, reading) {
            (Format::Json, true) => &[],
            (Format::Json, false) => &["pretty"],
            (Format::Xml, true) => &["namespaces"],
            (Format::Xml, false) => &["namespaces", "root", "declaration", "indent"],
            (Format::Csv, true) => &["delimiter", "quote", "header", "columns", "encoding"],
            (Format::Csv, false) => &["delimiter", "quote", "header", "columns"],
        };
        let allowed: Vec<&str> = common.iter().chain(specific).copied().collect();
        self.check_keys(node, &allowed, &format!("in `{side}:` for {format}"));
        if let Some(n) = node.get("max_bytes") {
            limits.max_bytes = self
                .count_of(n, "max_bytes", usize::MAX >> 1)
                .unwrap_or(limits.max_bytes);
        }
        if let Some(n) = node.get("max_depth") {
            limits.max_depth = self
                .count_of(n, "max_depth", 10_000)
                .unwrap_or(limits.max_depth);
        }
        let codec = match format {
            Format::Json => Codec::Json(JsonOptions {
                pretty: node
                    .get("pretty")
                    .and_then(|n| self.boolean(n, "pretty"))
                    .unwrap_or(false),
            }),
            Format::Xml => {
                let mut o = XmlOptions::default();
                if let Some(ns) = node.get("namespaces") {
                    o.namespaces = self.namespaces(ns);
                }
                if let Some(n) = node.get("root")
                    && let Some(r) = self.string(n, "root")
                {
                    if !is_xml_name(&r) {
                        self.error(
                            n.pos,
                            format!("\"{r}\" is not a valid XML element name"),
                            None,
                        );
                    }
                    o.root = Some(r);
                }
                if let Some(n) = node.get("declaration") {
                    o.declaration = self.boolean(n, "declaration").unwrap_or(true);
                }
                if let Some(n) = node.get("indent") {
                    o.indent = match n.to_value() {
                        Value::Bool(false) => None,
                        _ => self.count_of(n, "indent", 16).map(Some).unwrap_or(o.indent),
                    };
                }
                Codec::Xml(o)
            }
            Format::Csv => {
                let mut o = CsvOptions::default();
                if let Some(n) = node.get("delimiter") {
                    o.delimiter = self.one_char(n, "delimiter").unwrap_or(o.delimiter);
                }
                if let Some(n) = node.get("quote") {
                    o.quote = self.one_char(n, "quote").unwrap_or(o.quote);
                }
                if let Some(n) = node.get("header") {
                    o.header = self.boolean(n, "header").unwrap_or(true);
                }
                if let Some(n) = node.get("columns") {
                    match n.as_seq() {
                        Some(items) => {
                            o.columns = items
                                .iter()
                                .filter_map(|i| self.string(i, "columns"))
                                .collect();
                        }
                        None => self.error(n.pos, "`columns:` is a list of column names", None),
                    }
                }
                if let Some(n) = node.get("encoding")
                    && let Some(label) = self.string(n, "encoding")
                {
                    match Charset::from_label(&label) {
                        Some(cs) => o.charset = cs,
                        None => self.error(
                            n.pos,
                            format!("unknown encoding \"{label}\""),
                            Some("for example UTF-8, ISO-8859-1, windows-1252"),
                        ),
                    }
                }
                Codec::Csv(o)
            }
        };
        (codec, limits)
    }

    fn namespaces(&mut self, node: &Node) -> Vec<(String, String)> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                "`namespaces:` maps each prefix to its namespace URI (cbc: urn:...)",
                None,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let prefix = k.as_str().unwrap_or_default().to_owned();
            if !prefix.is_empty() && !is_xml_name(&prefix) || prefix.contains(':') {
                self.error(
                    k.pos,
                    format!("\"{prefix}\" is not a valid namespace prefix"),
                    None,
                );
                continue;
            }
            if let Some(uri) = self.string(v, "namespace URI") {
                out.push((prefix, uri));
            }
        }
        out
    }

    fn lookups(&mut self, node: &Node) {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                "`lookups:` maps each table name to its CSV file",
                None,
            );
            return;
        };
        let mut tables = Vec::new();
        for (k, v) in entries {
            let name = k.as_str().unwrap_or_default().to_owned();
            let spec = if v.as_map().is_some() {
                self.check_keys(
                    v,
                    &["file", "key", "value", "delimiter"],
                    "in a lookup table",
                );
                let Some(file) = v.get("file").and_then(|f| self.string(f, "file")) else {
                    self.error(v.pos, format!("lookup table {name} needs `file:`"), None);
                    continue;
                };
                LookupSpec {
                    file,
                    key: v.get("key").and_then(|n| self.string(n, "key")),
                    value: v.get("value").and_then(|n| self.string(n, "value")),
                    delimiter: v
                        .get("delimiter")
                        .and_then(|n| self.one_char(n, "delimiter")),
                }
            } else {
                let Some(file) = self.string(v, "lookup file") else {
                    continue;
                };
                LookupSpec {
                    file,
                    ..Default::default()
                }
            };
            match LookupTable::load(&name, &spec, &self.dir) {
                Ok(t) => tables.push(t),
                Err(message) => self.error(v.pos, message, None),
            }
        }
        self.tables = Arc::new(tables);
    }

    fn vars(&mut self, node: &Node, scope: &mut Scope) -> Vec<Var> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                "`vars:` maps each name to how its value is computed",
                None,
            );
            return Vec::new();
        };
        let mut vars = Vec::new();
        for (k, v) in entries {
            let name = k.as_str().unwrap_or_default().to_owned();
            if !is_identifier(&name) {
                self.error(k.pos, format!("\"{name}\" cannot name a value: use letters, digits and _ (not first a digit)"), None);
                continue;
            }
            if RESERVED_NAMES.contains(&name.as_str()) {
                self.error(
                    k.pos,
                    format!(
                        "\"{name}\" is a reserved name ({})",
                        RESERVED_NAMES.join(", ")
                    ),
                    None,
                );
                continue;
            }
            let Some(field) = self.field(v, &format!("${name}"), scope) else {
                continue;
            };
            let slot = self.slots;
            self.slots += 1;
            scope.vars.push((name.clone(), slot));
            vars.push(Var { slot, field });
        }
        vars
    }

    /// The `fields:` of an object (or of each item of a group).
    fn template(&mut self, node: &Node, scope: &Scope, prefix: &str) -> Template {
        let mut t = Template::default();
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                "`fields:` maps each target field to where its value comes from",
                None,
            );
            return t;
        };
        for (k, v) in entries {
            let key = k.as_str().unwrap_or_default();
            let Some(segments) = self.target_segments(k) else {
                continue;
            };
            let target = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            let tnode = if v.as_map().is_some() && v.get("each").is_some() {
                self.check_keys(v, GROUP_KEYS, "in a repeated group (each:)");
                let Some(fields) = v.get("fields") else {
                    self.error(
                        v.pos,
                        format!("the group {target} needs `fields:` for each item"),
                        None,
                    );
                    continue;
                };
                let g = self.group_parts(
                    &target,
                    v.get("each").unwrap_or(v),
                    v.get("when"),
                    v.get("vars"),
                    fields,
                    v.get("min_items"),
                    v.get("max_items"),
                    scope,
                );
                TNode::Group(Box::new(g))
            } else if v.as_map().is_some() && v.get("fields").is_some() {
                self.check_keys(v, SECTION_KEYS, "in a section (fields: without each:)");
                let when = v.get("when").and_then(|w| self.expr(w, scope));
                let template = self.template(v.get("fields").unwrap_or(v), scope, &target);
                TNode::Object { template, when }
            } else {
                match self.field(v, &target, scope) {
                    Some(f) => TNode::Field(Box::new(f)),
                    None => continue,
                }
            };
            self.insert(&mut t, &segments, tnode, k.pos, &target);
        }
        t
    }

    #[allow(clippy::too_many_arguments)]
    fn group_parts(
        &mut self,
        target: &str,
        each: &Node,
        when: Option<&Node>,
        vars: Option<&Node>,
        fields: &Node,
        min_items: Option<&Node>,
        max_items: Option<&Node>,
        scope: &Scope,
    ) -> Group {
        let each_path = self.path(each, scope);
        let mut inner = scope.clone();
        inner.in_group = true;
        // `when:` chooses the items before their `vars:` are computed, so it
        // sees only what is visible outside the group (and the item itself).
        let when = when.and_then(|w| self.expr(w, &inner));
        let vars = match vars {
            Some(v) => self.vars(v, &mut inner),
            None => Vec::new(),
        };
        let template = self.template(fields, &inner, "");
        Group {
            target: target.to_owned(),
            each: each_path.unwrap_or_else(|| Path {
                base: Base::Current,
                steps: Vec::new(),
                text: String::new(),
            }),
            when,
            vars,
            template,
            min_items: min_items.and_then(|n| self.count_of(n, "min_items", usize::MAX >> 1)),
            max_items: max_items.and_then(|n| self.count_of(n, "max_items", usize::MAX >> 1)),
        }
    }

    /// The segments of a target key (`Traders.Exporter.Exporter_code`),
    /// each checked against what the output format can hold.
    fn target_segments(&mut self, key_node: &Node) -> Option<Vec<String>> {
        let key = key_node.as_str().unwrap_or_default();
        let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
        let mut ok = true;
        for (i, s) in segments.iter().enumerate() {
            if s.is_empty() {
                self.error(
                    key_node.pos,
                    format!("target \"{key}\" has an empty part"),
                    None,
                );
                ok = false;
            } else if self.output == Format::Xml {
                let valid = if let Some(attr) = s.strip_prefix('@') {
                    is_xml_name(attr)
                } else {
                    s == "#text" || is_xml_name(s)
                };
                if !valid {
                    self.error(key_node.pos, format!("\"{s}\" in target \"{key}\" is not a valid XML name"), Some("XML names start with a letter or _, then letters, digits, _ - .; `@name` is an attribute, `#text` the text"));
                    ok = false;
                } else if (s.starts_with('@') || s == "#text") && i + 1 != segments.len() {
                    self.error(
                        key_node.pos,
                        format!("\"{s}\" in target \"{key}\" must be the last part"),
                        None,
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(segments)
    }

    /// Places `node` at `segments` in the template, creating the objects on
    /// the way. A field and an object at the same place (XML text beside
    /// attributes) become the object with the field as its `#text`.
    fn insert(
        &mut self,
        t: &mut Template,
        segments: &[String],
        node: TNode,
        pos: Pos,
        target: &str,
    ) {
        let Some((first, rest)) = segments.split_first() else {
            return;
        };
        let xml = self.output == Format::Xml;
        let at = t.entries.iter().position(|(k, _)| k == first);
        if rest.is_empty() {
            match (at.map(|i| &mut t.entries[i].1), node) {
                (None, node) => t.entries.push((Str::from(first.as_str()), node)),
                (
                    Some(TNode::Object {
                        template,
                        when: None,
                    }),
                    TNode::Field(f),
                ) if xml && !template.entries.iter().any(|(k, _)| k == "#text") => {
                    template
                        .entries
                        .insert(0, (Str::const_new("#text"), TNode::Field(f)));
                }
                (Some(_), _) => self.error(pos, format!("target {target} is written twice"), None),
            }
            return;
        }
        let i = match at {
            Some(i) => i,
            None => {
                t.entries.push((
                    Str::from(first.as_str()),
                    TNode::Object {
                        template: Template::default(),
                        when: None,
                    },
                ));
                t.entries.len() - 1
            }
        };
        let slot = &mut t.entries[i].1;
        if xml && matches!(slot, TNode::Field(_)) {
            let TNode::Field(f) = std::mem::replace(
                slot,
                TNode::Object {
                    template: Template::default(),
                    when: None,
                },
            ) else {
                return;
            };
            if let TNode::Object { template, .. } = slot {
                template
                    .entries
                    .push((Str::const_new("#text"), TNode::Field(f)));
            }
        }
        match slot {
            TNode::Object { template, .. } => {
                let mut inner = std::mem::take(template);
                self.insert(&mut inner, rest, node, pos, target);
                if let TNode::Object { template, .. } = &mut t.entries[i].1 {
                    *template = inner;
                }
            }
            _ => self.error(
                pos,
                format!("target {target} is inside {first}, which is already a field or a group"),
                None,
            ),
        }
    }

    /// A field specification: a path (shorthand) or a mapping of keys.
    fn field(&mut self, node: &Node, target: &str, scope: &Scope) -> Option<Field> {
        let mut f = Field {
            target: target.to_owned(),
            source: Source::Const(Value::Null),
            default: None,
            required: self.required_by_default,
            when: None,
            trim: false,
            case: None,
            lookup: None,
            round: None,
            format: None,
            kind: None,
            checks: Vec::new(),
        };
        if let YKind::Scalar { .. } = node.kind {
            if node.is_null() {
                self.error(node.pos, format!("target {target} has no source: write a path, or {{ const: ... }}, {{ expr: ... }}"), None);
                return None;
            }
            f.source = Source::Paths(vec![self.path(node, scope)?]);
            return Some(f);
        }
        if node.as_map().is_none() {
            self.error(
                node.pos,
                format!(
                    "target {target}: expected a path or a mapping of field keys, not {}",
                    node.kind_name()
                ),
                None,
            );
            return None;
        }
        self.check_keys(node, FIELD_KEYS, &format!("in field {target}"));
        let sources: Vec<&str> = SOURCE_KEYS
            .iter()
            .copied()
            .filter(|k| node.get(k).is_some())
            .collect();
        let mut ok = true;
        match sources.as_slice() {
            [_] => {}
            [] => {
                self.error(
                    node.pos,
                    format!(
                        "field {target} needs a source: one of {}",
                        SOURCE_KEYS.join(", ")
                    ),
                    None,
                );
                ok = false;
            }
            many => {
                self.error(
                    node.pos,
                    format!(
                        "field {target} has several sources ({}): keep one",
                        many.join(", ")
                    ),
                    None,
                );
                ok = false;
            }
        }
        if let Some(n) = node.get("of")
            && node.get("sum").is_none()
        {
            self.error(
                n.pos,
                "`of:` goes with `sum:` (the expression summed for each item)",
                None,
            );
            ok = false;
        }
        if let Some(n) = node.get("path") {
            let paths = match n.as_seq() {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .map(|p| self.path(p, scope))
                    .collect::<Option<Vec<_>>>(),
                Some(_) => {
                    self.error(n.pos, "`path:` with an empty list", None);
                    None
                }
                None => self.path(n, scope).map(|p| vec![p]),
            };
            match paths {
                Some(p) => f.source = Source::Paths(p),
                None => ok = false,
            }
        } else if let Some(n) = node.get("const") {
            f.source = Source::Const(n.to_value());
        } else if let Some(n) = node.get("expr") {
            match self.expr(n, scope) {
                Some(e) => f.source = Source::Expr(e),
                None => ok = false,
            }
        } else if let Some(n) = node.get("count") {
            match self.path(n, scope) {
                Some(p) => f.source = Source::Count(p),
                None => ok = false,
            }
        } else if let Some(n) = node.get("sum") {
            let over = self.path(n, scope);
            let of = match node.get("of") {
                Some(o) => {
                    let mut inner = scope.clone();
                    inner.in_group = true;
                    self.expr(o, &inner).map(Some)
                }
                None => Some(None),
            };
            match (over, of) {
                (Some(over), Some(of)) => f.source = Source::Sum { over, of },
                _ => ok = false,
            }
        }
        if let Some(n) = node.get("default") {
            f.default = Some(n.to_value());
        }
        if let Some(n) = node.get("required") {
            f.required = self.boolean(n, "required").unwrap_or(f.required);
        }
        if let Some(n) = node.get("when") {
            f.when = self.expr(n, scope);
            ok &= f.when.is_some();
        }
        if let Some(n) = node.get("trim") {
            f.trim = self.boolean(n, "trim").unwrap_or(false);
        }
        if let Some(n) = node.get("case") {
            f.case = match n.as_str() {
                Some("upper") => Some(Case::Upper),
                Some("lower") => Some(Case::Lower),
                _ => {
                    self.error(
                        n.pos,
                        format!("`case:` is upper or lower, not {}", describe(n)),
                        None,
                    );
                    None
                }
            };
        }
        if let Some(n) = node.get("lookup") {
            f.lookup = self.lookup_ref(n);
            ok &= f.lookup.is_some();
        }
        if let Some(n) = node.get("round") {
            f.round = self.count_of(n, "round", 28).map(|r| r as u32);
        }
        if let Some(n) = node.get("format")
            && let Some(p) = self.string(n, "format")
        {
            match NumFormat::parse(&p) {
                Ok(nf) => f.format = Some(nf),
                Err(m) => self.error(n.pos, m, None),
            }
        }
        if let Some(n) = node.get("type") {
            f.kind = match n.as_str() {
                Some("string") => Some(Kind::String),
                Some("number") => Some(Kind::Number),
                Some("integer") => Some(Kind::Integer),
                Some("boolean") => Some(Kind::Boolean),
                _ => {
                    self.error(
                        n.pos,
                        format!(
                            "`type:` is string, number, integer or boolean, not {}",
                            describe(n)
                        ),
                        None,
                    );
                    None
                }
            };
        }
        self.checks(node, &mut f);
        ok.then_some(f)
    }

    fn lookup_ref(&mut self, node: &Node) -> Option<LookupRef> {
        let (name_node, default) = if node.as_map().is_some() {
            self.check_keys(node, &["table", "default"], "in `lookup:`");
            let Some(t) = node.get("table") else {
                self.error(node.pos, "`lookup:` needs `table:`", None);
                return None;
            };
            (t, node.get("default").map(Node::to_value))
        } else {
            (node, None)
        };
        let name = self.string(name_node, "lookup")?;
        match self.tables.iter().position(|t| t.name == name) {
            Some(table) => Some(LookupRef { table, default }),
            None => {
                let declared: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
                let help = if declared.is_empty() {
                    "declare it under `lookups:` at the top of the file".to_owned()
                } else {
                    format!("declared tables: {}", declared.join(", "))
                };
                self.error(
                    name_node.pos,
                    format!("no lookup table named \"{name}\""),
                    Some(&help),
                );
                None
            }
        }
    }

    fn checks(&mut self, node: &Node, f: &mut Field) {
        if let Some(n) = node.get("max_length")
            && let Some(v) = self.count_of(n, "max_length", usize::MAX >> 1)
        {
            f.checks.push(Check::MaxLength(v));
        }
        if let Some(n) = node.get("min_length")
            && let Some(v) = self.count_of(n, "min_length", usize::MAX >> 1)
        {
            f.checks.push(Check::MinLength(v));
        }
        if let Some(n) = node.get("pattern")
            && let Some(p) = self.string(n, "pattern")
        {
            match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(re) => f.checks.push(Check::Pattern(re, p)),
                Err(e) => self.error(
                    n.pos,
                    format!("pattern \"{p}\" is not a valid regular expression: {e}"),
                    None,
                ),
            }
        }
        if let Some(n) = node.get("one_of") {
            match n.as_seq() {
                Some(items) => {
                    let values = items
                        .iter()
                        .map(|i| {
                            i.to_value()
                                .scalar_text()
                                .map(|t| t.into_owned())
                                .unwrap_or_default()
                        })
                        .collect();
                    f.checks.push(Check::OneOf(values));
                }
                None => self.error(n.pos, "`one_of:` is a list of allowed values", None),
            }
        }
        for (key, is_min) in [("min", true), ("max", false)] {
            if let Some(n) = node.get(key) {
                match n.to_value().to_decimal() {
                    Some(d) => f
                        .checks
                        .push(if is_min { Check::Min(d) } else { Check::Max(d) }),
                    None => self.error(
                        n.pos,
                        format!("`{key}:` must be a number, not {}", describe(n)),
                        None,
                    ),
                }
            }
        }
    }

    fn tests(&mut self, node: &Node) -> Vec<TestCase> {
        let Some(items) = node.as_seq() else {
            self.error(node.pos, "`tests:` is a list of tests, each with `input:` and `expect:` (or `expect_error:`)", None);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.as_map().is_none() {
                self.error(
                    item.pos,
                    "a test is a mapping with `input:` and `expect:` (or `expect_error:`)",
                    None,
                );
                continue;
            }
            self.check_keys(
                item,
                &["name", "input", "expect", "expect_error"],
                "in a test",
            );
            let name = match item.get("name") {
                Some(n) => self.string(n, "name").unwrap_or_default(),
                None => match item.get("input").and_then(Node::as_str) {
                    Some(file) if item.get("input").is_some_and(|n| n.as_map().is_none()) => {
                        file.to_owned()
                    }
                    _ => format!("test {}", i + 1),
                },
            };
            let input = match item.get("input") {
                Some(n) => self.test_data(n, "input"),
                None => {
                    self.error(item.pos, format!("test \"{name}\" needs `input:`"), None);
                    None
                }
            };
            let expect = match (item.get("expect"), item.get("expect_error")) {
                (Some(n), None) => self.test_data(n, "expect").map(Expect::Output),
                (None, Some(n)) => self.string(n, "expect_error").map(Expect::Error),
                (Some(_), Some(_)) => {
                    self.error(
                        item.pos,
                        format!("test \"{name}\" has both `expect:` and `expect_error:`: keep one"),
                        None,
                    );
                    None
                }
                (None, None) => {
                    self.error(item.pos, format!("test \"{name}\" needs `expect:` (the expected output) or `expect_error:`"), None);
                    None
                }
            };
            if let (Some(input), Some(expect)) = (input, expect) {
                out.push(TestCase {
                    name,
                    line: item.pos.line,
                    input,
                    expect,
                });
            }
        }
        out
    }

    /// A test's input or expected output: a file path, `{ file: ... }`, or
    /// `{ text: ... }` with the document inline.
    fn test_data(&mut self, node: &Node, what: &str) -> Option<TestData> {
        let file = if node.as_map().is_some() {
            self.check_keys(node, &["file", "text"], &format!("in `{what}:`"));
            if let Some(t) = node.get("text") {
                return self.string(t, "text").map(TestData::Text);
            }
            let Some(f) = node.get("file") else {
                self.error(
                    node.pos,
                    format!("`{what}:` needs `file:` or `text:`"),
                    None,
                );
                return None;
            };
            self.string(f, "file")?
        } else {
            self.string(node, what)?
        };
        let path = self.dir.join(&file);
        if !path.is_file() {
            self.error(
                node.pos,
                format!("test file {file} not found (looked for {})", path.display()),
                None,
            );
            return None;
        }
        Some(TestData::File(path))
    }
}

/// Position of character `offset` inside a scalar node (after its quote).
fn inner_pos(node: &Node, offset: usize) -> Pos {
    let quote = matches!(node.kind, YKind::Scalar { plain: false, .. }) as usize;
    Pos {
        line: node.pos.line,
        column: node.pos.column + quote + offset,
    }
}

fn describe(node: &Node) -> String {
    match node.as_str() {
        Some(s) => format!("\"{s}\""),
        None => node.kind_name().to_owned(),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An XML name with at most one prefix (`cbc:ID`, `Item`, `_x-1.2`).
pub(crate) fn is_xml_name(s: &str) -> bool {
    let local_ok = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
            && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match s.split_once(':') {
        Some((prefix, local)) => local_ok(prefix) && local_ok(local),
        None => local_ok(s),
    }
}

/// The allowed key nearest to a misspelt one, if it is near enough.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (levenshtein(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
