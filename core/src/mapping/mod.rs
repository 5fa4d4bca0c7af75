//! Mapping files: how one message shape becomes another.
//!
//! A mapping file (YAML) is compiled once — paths parsed, expressions
//! compiled, lookup tables loaded, every problem collected with its line and
//! column — and then run per message: decode, map, encode. `docs/mappings.md`
//! is the reference for the language; this module is its implementation:
//!
//! - `compile`: the YAML tree to the compiled form below, all errors at once;
//! - `run`: the compiled form applied to one message;
//! - `path`, `expr`, `lookup`, `numfmt`: the pieces a field is made of;
//! - `testing`: the `tests:` of a mapping file, compared structurally.

mod arith;
mod compile;
mod expr;
mod lookup;
mod numfmt;
pub(crate) mod path;
mod run;
pub mod testing;

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use crate::codec::{Codec, DecodeError, EncodeError, Limits};
use crate::value::{Str, Value};

use self::expr::Expr;
use self::lookup::LookupTable;
use self::numfmt::NumFormat;
use self::path::Path;

pub use self::testing::{TestCase, TestOutcome};

/// A compiled mapping file, ready to run on any number of messages, from any
/// number of threads.
pub struct Mapping {
    name: String,
    description: Option<String>,
    file: PathBuf,
    input: Codec,
    output: Codec,
    limits: Limits,
    vars: Vec<Var>,
    body: Body,
    slots: usize,
    engine: rhai::Engine,
    tables: Arc<Vec<LookupTable>>,
    tests: Vec<TestCase>,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// What a mapping produces: one object, or one per item of a list.
enum Body {
    Object(Template),
    Each(Box<Group>),
}

/// Target keys in output order, each with what fills it.
#[derive(Default)]
struct Template {
    entries: Vec<(Str, TNode)>,
}

enum TNode {
    Field(Box<Field>),
    /// An object in the output; omitted when none of its fields is written.
    Object {
        template: Template,
        when: Option<Expr>,
    },
    Group(Box<Group>),
}

/// One target field: where its value comes from and what happens to it.
struct Field {
    /// Target path as written, for messages.
    target: String,
    source: Source,
    default: Option<Value>,
    required: bool,
    when: Option<Expr>,
    trim: bool,
    case: Option<Case>,
    lookup: Option<LookupRef>,
    round: Option<u32>,
    format: Option<NumFormat>,
    kind: Option<Kind>,
    checks: Vec<Check>,
}

enum Source {
    /// The first of these paths that has a value.
    Paths(Vec<Path>),
    Const(Value),
    Expr(Expr),
    Count(Path),
    Sum {
        over: Path,
        of: Option<Expr>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    Upper,
    Lower,
}

/// The type a value is written as (matters for JSON output).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    String,
    Number,
    Integer,
    Boolean,
}

struct LookupRef {
    table: usize,
    default: Option<Value>,
}

enum Check {
    MaxLength(usize),
    MinLength(usize),
    Pattern(regex::Regex, String),
    OneOf(Vec<String>),
    Min(rust_decimal::Decimal),
    Max(rust_decimal::Decimal),
}

/// A named value computed once per message (or per item, in a group).
struct Var {
    slot: usize,
    field: Field,
}

/// One output item per source item.
struct Group {
    target: String,
    each: Path,
    when: Option<Expr>,
    vars: Vec<Var>,
    template: Template,
    min_items: Option<usize>,
    max_items: Option<usize>,
}

/// A mapping file that could not be loaded: every problem found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem in a mapping file, where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to do about it, when there is something to say.
    pub help: Option<String>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                d.line,
                d.column,
                d.message
            )?;
            if let Some(help) = &d.help {
                write!(f, "\n    help: {help}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// A message the mapping could not map: which mapping, which target field,
/// and what was wrong (naming the source path or value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping {mapping}: field {field}: {message}")]
pub struct MapError {
    pub mapping: String,
    /// Target field, with item numbers (`Item[1].Packages.Kind_of_packages_code`).
    pub field: String,
    pub message: String,
}

/// Why one message could not go through a mapping.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Map(#[from] MapError),
    #[error("mapping {mapping}: {error}")]
    Encode { mapping: String, error: EncodeError },
}

impl Mapping {
    /// Loads and compiles a mapping file. Paths inside it (lookup tables,
    /// test files) are relative to the file's folder.
    pub fn load(file: impl AsRef<FsPath>) -> Result<Mapping, LoadError> {
        let file = file.as_ref();
        let text = std::fs::read_to_string(file).map_err(|e| LoadError {
            file: file.to_owned(),
            diagnostics: vec![Diagnostic {
                line: 1,
                column: 1,
                message: format!("cannot read the mapping file: {e}"),
                help: None,
            }],
        })?;
        Mapping::from_yaml(&text, file)
    }

    /// Compiles mapping text as if read from `file`.
    pub fn from_yaml(text: &str, file: impl AsRef<FsPath>) -> Result<Mapping, LoadError> {
        compile::compile(text, file.as_ref())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The file the mapping was loaded from.
    pub fn file(&self) -> &FsPath {
        &self.file
    }

    pub fn input(&self) -> &Codec {
        &self.input
    }

    pub fn output(&self) -> &Codec {
        &self.output
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn tests(&self) -> &[TestCase] {
        &self.tests
    }

    /// Maps an already decoded message.
    pub fn map_value(&self, input: &Value) -> Result<Value, MapError> {
        run::run(self, input)
    }

    /// Decodes, maps and encodes one message.
    pub fn run(&self, input: &[u8]) -> Result<Vec<u8>, RunError> {
        let value = self.input.decode(input, &self.limits)?;
        self.run_value(&value)
    }

    /// Maps and encodes a message already decoded with [`Mapping::input`].
    pub fn run_value(&self, value: &Value) -> Result<Vec<u8>, RunError> {
        let out = self.map_value(value)?;
        self.output.encode(&out).map_err(|error| RunError::Encode {
            mapping: self.name.clone(),
            error,
        })
    }
}

/// A condition on a whole message (a route's `when`): an expression as in
/// mapping files, whose names are the message's top-level fields (and
/// `input`, the whole message).
pub struct Condition {
    expr: Expr,
    engine: rhai::Engine,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.expr.text).finish()
    }
}

impl Condition {
    /// Compiles the condition; the error gives the column in `text`.
    pub fn compile(text: &str) -> Result<Condition, String> {
        let engine = expr::engine(Arc::new(Vec::new()));
        let visible = expr::Visible {
            vars: &[],
            in_group: false,
        };
        let expr = Expr::compile(&engine, text, &visible).map_err(|e| {
            format!(
                "expression \"{text}\" does not compile at column {}: {}",
                e.column, e.message
            )
        })?;
        Ok(Condition { expr, engine })
    }

    pub fn text(&self) -> &str {
        &self.expr.text
    }

    /// True, false, or why the condition could not be decided.
    pub fn eval(&self, message: &Value) -> Result<bool, String> {
        let result = self
            .expr
            .eval(&self.engine, &mut |name, binding| match binding {
                expr::Binding::Input | expr::Binding::Item => Some(expr::to_dynamic(message)),
                expr::Binding::Field => message
                    .as_object()?
                    .get(name)
                    .filter(|v| !matches!(v, Value::Null))
                    .map(expr::to_dynamic),
                expr::Binding::Slot(_) | expr::Binding::Position => None,
            })?;
        match result {
            Value::Bool(b) => Ok(b),
            Value::Null => Ok(false),
            other => Err(format!(
                "condition \"{}\" must give true or false, not {}",
                self.expr.text,
                other.type_name()
            )),
        }
    }
}
