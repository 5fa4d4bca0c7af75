//! Computed values and conditions: short expressions in rhai, sandboxed.
//!
//! The engine is built without any package that could reach outside the
//! process (no I/O, no modules, no `eval`), with bounded operations, depth,
//! string and list sizes, and in expression-only mode: no statements, no
//! loops. Numbers are exact decimals (`no_float` + `decimal`), so
//! `unit_price * quantity` is computed on the document's exact values.
//!
//! Variables are strict: an expression is compiled against the names it may
//! see — the values declared under `vars:`, `input` (the whole message),
//! and in a repeated group `item` (the current item) and `position` (its
//! number, from 1) — and every other name is a field of the current item,
//! looked up when the expression runs. A field that is missing is an error
//! that names it, unless the expression asks with `exists(...)` or
//! `coalesce(...)`. Only the names an expression uses are bound per run.
//!
//! Text that is a plain decimal number without leading zeros (`"185.50"`,
//! `"120"`) is a number in an expression, so prices written as JSON strings
//! compute; text such as `"090111"` or `"+242..."` stays text.

use std::sync::Arc;

use jiff::civil::{Date, DateTime};
use jiff::fmt::strtime;
use jiff::fmt::temporal::Pieces;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use rhai::packages::{ArithmeticPackage, LogicPackage, Package};
use rhai::{
    AST, Array, Dynamic, Engine, EvalAltResult, INT, ImmutableString, ParseErrorType, Scope,
};
use rust_decimal::{Decimal, RoundingStrategy};

use super::arith::Arith;
use super::lookup::LookupTable;
use super::numfmt::NumFormat;
use crate::value::{Map, Number, Str, Value, parse_decimal_text};

/// Operations one evaluation may take: enough for any reasonable
/// expression over a large message, small enough to stop a runaway one fast.
pub(crate) const MAX_OPERATIONS: u64 = 100_000;

type R<T> = Result<T, Box<EvalAltResult>>;

/// How a name used by an expression gets its value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Binding {
    /// A value declared under `vars:`, by slot.
    Slot(usize),
    /// The whole message.
    Input,
    /// The current item of a repeated group.
    Item,
    /// The current item's number, from 1.
    Position,
    /// A field of the current item, by its name.
    Field,
}

/// What an expression may refer to where it is written.
pub(crate) struct Visible<'a> {
    /// Declared values visible here: name and slot.
    pub vars: &'a [(String, usize)],
    pub in_group: bool,
}

/// A compiled expression.
#[derive(Debug)]
pub(crate) struct Expr {
    pub text: String,
    ast: AST,
    /// Every name the expression uses, with how to bind it.
    pub bindings: Vec<(String, Binding)>,
    /// Set when the result depends on the current item's fields only: the
    /// same expression on the same item then gives the same value, and is
    /// computed once per message. Equal texts share one id.
    pub memo: Option<usize>,
    /// The same expression as native arithmetic, when it is in that subset.
    arith: Option<Arith>,
}

/// An expression that does not compile: 1-based line and column inside the
/// expression text.
#[derive(Debug)]
pub(crate) struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Expr {
    pub fn compile(
        engine: &Engine,
        text: &str,
        visible: &Visible<'_>,
    ) -> Result<Expr, CompileError> {
        let mut scope = Scope::new();
        let mut bindings: Vec<(String, Binding)> = Vec::new();
        // Each compile reports the first name it does not know; bind it and
        // compile again, so that the bindings are exactly the names used.
        loop {
            match engine.compile_expression_with_scope(&scope, text) {
                Ok(ast) => {
                    // Numbers come only from fields and declared values.
                    let arith = Arith::compile(text, &|name| {
                        bindings.iter().position(|(n, b)| {
                            n == name && matches!(b, Binding::Field | Binding::Slot(_))
                        })
                    });
                    return Ok(Expr {
                        text: text.to_owned(),
                        ast,
                        bindings,
                        memo: None,
                        arith,
                    });
                }
                Err(e) => {
                    if let ParseErrorType::VariableUndefined(name) = e.err_type()
                        && !bindings.iter().any(|(n, _)| n == name)
                        && bindings.len() < 64
                    {
                        let binding = if let Some((_, slot)) =
                            visible.vars.iter().rev().find(|(n, _)| n == name)
                        {
                            Binding::Slot(*slot)
                        } else {
                            match name.as_str() {
                                "input" => Binding::Input,
                                "item" if visible.in_group => Binding::Item,
                                "position" if visible.in_group => Binding::Position,
                                _ => Binding::Field,
                            }
                        };
                        scope.push_dynamic(name.clone(), Dynamic::UNIT);
                        bindings.push((name.clone(), binding));
                        continue;
                    }
                    let pos = e.position();
                    return Err(CompileError {
                        line: pos.line().unwrap_or(1),
                        column: pos.position().unwrap_or(1),
                        message: parse_message(e.err_type()),
                    });
                }
            }
        }
    }

    /// Runs the expression. `bind` gives the value of each name it uses
    /// (`None` when a field is missing).
    pub fn eval(
        &self,
        engine: &Engine,
        bind: &mut dyn FnMut(&str, &Binding) -> Option<Dynamic>,
    ) -> Result<Value, String> {
        if let Some(arith) = &self.arith {
            let result = arith.eval(&mut |i| {
                let (name, binding) = &self.bindings[i];
                bind(name, binding)?.as_decimal().ok()
            });
            if let Some(x) = result {
                return Ok(Value::Number(Number::from_decimal(x)));
            }
            // Missing, not a number, or overflow: rhai says which.
        }
        let mut scope = Scope::new();
        let mut missing: Vec<&str> = Vec::new();
        for (name, binding) in &self.bindings {
            match bind(name, binding) {
                Some(v) => scope.push_dynamic(name.as_str(), v),
                None => {
                    missing.push(name);
                    scope.push_dynamic(name.as_str(), Dynamic::UNIT)
                }
            };
        }
        match engine.eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast) {
            Ok(d) => from_dynamic(d),
            Err(e) => {
                let msg = eval_message(&e);
                Err(match missing.as_slice() {
                    [] => msg,
                    [one] => format!("field {one} is missing ({msg})"),
                    many => format!("fields {} are missing ({msg})", many.join(", ")),
                })
            }
        }
    }
}

fn parse_message(e: &ParseErrorType) -> String {
    match e {
        ParseErrorType::BadInput(l) => l.to_string(),
        other => {
            let s = other.to_string();
            if s.contains("statement") || s.contains("Statement") {
                format!("{s} (an expression computes one value: no statements, no loops)")
            } else {
                s
            }
        }
    }
}

fn eval_message(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(d, _) => d.to_string(),
        EvalAltResult::ErrorFunctionNotFound(sig, _) => {
            format!("no function {sig}: check its name and the types of its arguments")
        }
        EvalAltResult::ErrorInFunctionCall(name, _, inner, _) => {
            format!("in {name}(): {}", eval_message(inner))
        }
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("the expression takes more than {MAX_OPERATIONS} steps and was stopped")
        }
        EvalAltResult::ErrorArithmetic(msg, _) => msg.clone(),
        other => {
            let s = other.to_string();
            // rhai appends the position inside the expression; keep it.
            s
        }
    }
}

/// A message value as seen by expressions.
pub(crate) fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.to_decimal() {
            Some(d) => Dynamic::from_decimal(d),
            None => Dynamic::from(ImmutableString::from(n.as_str())),
        },
        Value::String(s) => match numeric_text(s) {
            Some(d) => Dynamic::from_decimal(d),
            None => Dynamic::from(ImmutableString::from(s.as_str())),
        },
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Object(m) => {
            let mut map = rhai::Map::new();
            for (k, v) in m.iter() {
                map.insert(k.into(), to_dynamic(v));
            }
            Dynamic::from_map(map)
        }
    }
}

/// Text that expressions treat as a number: plain decimal notation, no
/// leading zero (codes such as `090111` stay text), at most 28 digits.
fn numeric_text(s: &str) -> Option<Decimal> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let b = digits.as_bytes();
    if b.is_empty() || b.len() > 29 || (b[0] == b'0' && b.len() > 1 && b[1] != b'.') {
        return None;
    }
    parse_decimal_text(s)
}

/// An expression's result as a message value.
pub(crate) fn from_dynamic(d: Dynamic) -> Result<Value, String> {
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(x) = d.as_decimal() {
        return Ok(Value::Number(Number::from_decimal(x)));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Bool(b));
    }
    if d.is_string() || d.is_char() {
        return Ok(Value::String(Str::from(d.to_string())));
    }
    if d.is_array() {
        let items = d.cast::<Array>();
        return items
            .into_iter()
            .map(from_dynamic)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if d.is_map() {
        let map = d.cast::<rhai::Map>();
        let mut out = Map::with_capacity(map.len());
        for (k, v) in map {
            out.insert(k.to_string(), from_dynamic(v)?);
        }
        return Ok(Value::Object(out));
    }
    Err(format!(
        "the expression gave a {} which is not a value a message can hold",
        d.type_name()
    ))
}

fn text_of(d: &Dynamic) -> String {
    if d.is_unit() {
        String::new()
    } else {
        d.to_string()
    }
}

fn dec_of(d: &Dynamic) -> R<Decimal> {
    if let Some(x) = d.clone().try_cast::<Decimal>() {
        return Ok(x);
    }
    if let Some(i) = d.clone().try_cast::<INT>() {
        return Ok(Decimal::from(i));
    }
    if d.is_string() {
        let s = d.to_string();
        return parse_decimal_text(s.trim())
            .ok_or_else(|| format!("\"{s}\" is not a number").into());
    }
    if d.is_unit() {
        return Err("expected a number, got nothing (a missing value)".into());
    }
    Err(format!("expected a number, got {} {}", d.type_name(), d).into())
}

fn int_of(d: &Dynamic) -> R<i64> {
    let x = dec_of(d)?;
    if !x.fract().is_zero() {
        return Err(format!("expected a whole number, got {x}").into());
    }
    i64::try_from(x).map_err(|_| format!("{x} is too large").into())
}

fn round_with(x: &Dynamic, dp: &Dynamic, strategy: RoundingStrategy) -> R<Decimal> {
    let dp = int_of(dp)?;
    if !(0..=28).contains(&dp) {
        return Err(format!("cannot round to {dp} decimals (0 to 28)").into());
    }
    Ok(dec_of(x)?.round_dp_with_strategy(dp as u32, strategy))
}

fn pad(x: &Dynamic, width: &Dynamic, fill: &str, left: bool) -> R<String> {
    let s = text_of(x);
    let width = int_of(width)?;
    if !(0..=10_000).contains(&width) {
        return Err(format!("cannot pad to {width} characters").into());
    }
    let mut fill_chars = fill.chars();
    let (Some(c), None) = (fill_chars.next(), fill_chars.next()) else {
        return Err(format!("the padding must be one character, got \"{fill}\"").into());
    };
    let n = (width as usize).saturating_sub(s.chars().count());
    let padding: String = std::iter::repeat_n(c, n).collect();
    Ok(if left {
        padding + s.as_str()
    } else {
        s + padding.as_str()
    })
}

fn substr(x: &Dynamic, start: &Dynamic, len: Option<&Dynamic>) -> R<String> {
    let s = text_of(x);
    let count = s.chars().count() as i64;
    let mut start = int_of(start)?;
    if start < 0 {
        start = (count + start).max(0);
    }
    let len = match len {
        Some(l) => int_of(l)?.max(0),
        None => count,
    };
    Ok(s.chars().skip(start as usize).take(len as usize).collect())
}

fn is_nothing(d: &Dynamic) -> bool {
    d.is_unit() || (d.is_string() && d.to_string().is_empty())
}

/// A moment in time read from a value: a date, a date and time, or a date
/// and time at a known offset (kept, so that `2026-11-18T16:02:47+01:00`
/// is still 16:02 where it was written).
enum When {
    Date(Date),
    DateTime(DateTime),
    Zoned(ZonedDateTime),
}

impl When {
    fn read(d: &Dynamic) -> R<When> {
        let s = text_of(d);
        let s = s.trim();
        let parsed = Pieces::parse(s).ok().and_then(|p| {
            let date = p.date();
            match (p.time(), p.offset()) {
                (None, _) => Some(When::Date(date)),
                (Some(time), None) => Some(When::DateTime(date.to_datetime(time))),
                (Some(time), Some(offset)) => date
                    .to_datetime(time)
                    .to_zoned_datetime(TimeZone::fixed(offset.to_numeric_offset()))
                    .ok()
                    .map(When::Zoned),
            }
        });
        parsed.ok_or_else(|| {
            format!(
                "\"{s}\" is not a date (expected 2026-11-21, 2026-11-21T09:14:03, 2026-11-21T09:14:03Z or 2026-11-21T09:14:03+01:00; give its format as a second argument otherwise)"
            )
            .into()
        })
    }

    fn read_with(d: &Dynamic, format: &str) -> R<When> {
        let s = text_of(d);
        let parsed = strtime::parse(format, s.trim()).map_err(|e| -> Box<EvalAltResult> {
            format!("\"{s}\" does not match the date format \"{format}\": {e}").into()
        })?;
        if let (Some(offset), Ok(dt)) = (parsed.offset(), parsed.to_datetime())
            && let Ok(z) = dt.to_zoned_datetime(TimeZone::fixed(offset))
        {
            return Ok(When::Zoned(z));
        }
        if let Ok(t) = parsed.to_datetime() {
            return Ok(When::DateTime(t));
        }
        parsed
            .to_date()
            .map(When::Date)
            .map_err(|e| format!("\"{s}\" with format \"{format}\" is not a full date: {e}").into())
    }

    fn date(&self) -> Date {
        match self {
            When::Date(d) => *d,
            When::DateTime(t) => t.date(),
            When::Zoned(z) => z.date(),
        }
    }

    fn format(&self, format: &str) -> R<String> {
        let r = match self {
            When::Date(d) => strtime::format(format, *d),
            When::DateTime(t) => strtime::format(format, *t),
            When::Zoned(z) => strtime::format(format, z),
        };
        r.map_err(|e| format!("cannot write the date with format \"{format}\": {e}").into())
    }

    /// ISO 8601 text: `2026-11-21`, `2026-11-21T09:14:03`, `2026-11-21T09:14:03+01:00`.
    fn text(&self) -> R<String> {
        match self {
            When::Date(d) => Ok(d.to_string()),
            When::DateTime(t) => Ok(t.to_string()),
            When::Zoned(_) => self.format("%Y-%m-%dT%H:%M:%S%.f%:z"),
        }
    }
}

fn add_days(x: &Dynamic, n: &Dynamic) -> R<String> {
    let n = int_of(n)?;
    let span = n.days();
    let err = |e: jiff::Error| -> Box<EvalAltResult> { format!("cannot add {n} days: {e}").into() };
    match When::read(x)? {
        When::Date(d) => Ok(d.checked_add(span).map_err(err)?.to_string()),
        When::DateTime(t) => Ok(t.checked_add(span).map_err(err)?.to_string()),
        When::Zoned(z) => When::Zoned(z.checked_add(span).map_err(err)?).text(),
    }
}

fn sum_list(list: &Dynamic, field: Option<&str>) -> R<Decimal> {
    let items: Vec<Dynamic> = if list.is_array() {
        list.clone().cast::<Array>()
    } else if list.is_unit() {
        Vec::new()
    } else {
        vec![list.clone()]
    };
    let mut total = Decimal::ZERO;
    for (i, item) in items.iter().enumerate() {
        let v = match field {
            Some(f) => match item.read_lock::<rhai::Map>() {
                Some(m) => m.get(f).cloned().unwrap_or(Dynamic::UNIT),
                None => {
                    return Err(
                        format!("item {i} of the list is not an object with a field {f}").into(),
                    );
                }
            },
            None => item.clone(),
        };
        if v.is_unit() {
            continue;
        }
        let x =
            dec_of(&v).map_err(|e| -> Box<EvalAltResult> { format!("item {i}: {e}").into() })?;
        total = total
            .checked_add(x)
            .ok_or_else(|| -> Box<EvalAltResult> { "the sum is too large".into() })?;
    }
    Ok(total)
}

fn contains(x: &Dynamic, part: &Dynamic) -> bool {
    if x.is_array() {
        let needle = text_of(part);
        return x
            .clone()
            .cast::<Array>()
            .iter()
            .any(|i| text_of(i) == needle);
    }
    if let Some(m) = x.read_lock::<rhai::Map>() {
        return m.contains_key(text_of(part).as_str());
    }
    text_of(x).contains(&text_of(part))
}

fn decimal_eq_text(d: Decimal, s: &str) -> bool {
    parse_decimal_text(s.trim()).is_some_and(|x| x == d)
}

/// The expression engine of one mapping; `tables` are the mapping's lookup
/// tables, for `lookup()`.
pub(crate) fn engine(tables: Arc<Vec<LookupTable>>) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(ArithmeticPackage::new().as_shared_module());
    e.register_global_module(LogicPackage::new().as_shared_module());
    e.set_strict_variables(true);
    // Registered operators first, so that a number read from text compares
    // equal to the same text (built-in `==` says false across types).
    e.set_fast_operators(false);
    e.set_max_operations(MAX_OPERATIONS);
    e.set_max_expr_depths(64, 32);
    e.set_max_call_levels(16);
    e.set_max_string_size(1 << 20);
    e.set_max_array_size(100_000);
    e.set_max_map_size(10_000);
    e.disable_symbol("eval");

    // numbers; the typed forms are found first, without conversions
    e.register_fn("round", |x: Decimal, dp: INT| {
        round_with(
            &Dynamic::from_decimal(x),
            &Dynamic::from_int(dp),
            RoundingStrategy::MidpointNearestEven,
        )
    });
    e.register_fn("round", |x: Decimal| {
        x.round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
    });
    e.register_fn("num", |x: Dynamic| dec_of(&x));
    e.register_fn("text", |x: Dynamic| text_of(&x));
    e.register_fn("round", |x: Dynamic| {
        round_with(
            &x,
            &Dynamic::from_int(0),
            RoundingStrategy::MidpointNearestEven,
        )
    });
    e.register_fn("round", |x: Dynamic, dp: Dynamic| {
        round_with(&x, &dp, RoundingStrategy::MidpointNearestEven)
    });
    e.register_fn("round_half_up", |x: Dynamic, dp: Dynamic| {
        round_with(&x, &dp, RoundingStrategy::MidpointAwayFromZero)
    });
    e.register_fn("round_up", |x: Dynamic, dp: Dynamic| {
        round_with(&x, &dp, RoundingStrategy::AwayFromZero)
    });
    e.register_fn("round_down", |x: Dynamic, dp: Dynamic| {
        round_with(&x, &dp, RoundingStrategy::ToZero)
    });
    e.register_fn("floor", |x: Dynamic| dec_of(&x).map(|d| d.floor()));
    e.register_fn("ceil", |x: Dynamic| dec_of(&x).map(|d| d.ceil()));
    e.register_fn("abs", |x: Dynamic| dec_of(&x).map(|d| d.abs()));
    e.register_fn("min", |a: Dynamic, b: Dynamic| -> R<Decimal> {
        Ok(dec_of(&a)?.min(dec_of(&b)?))
    });
    e.register_fn("max", |a: Dynamic, b: Dynamic| -> R<Decimal> {
        Ok(dec_of(&a)?.max(dec_of(&b)?))
    });
    e.register_fn("format_number", |x: Dynamic, pattern: &str| -> R<String> {
        let f = NumFormat::parse(pattern).map_err(|m| -> Box<EvalAltResult> { m.into() })?;
        Ok(f.apply(dec_of(&x)?).into_string())
    });

    // text
    e.register_fn("trim", |x: Dynamic| text_of(&x).trim().to_owned());
    e.register_fn("trim_start", |x: Dynamic| {
        text_of(&x).trim_start().to_owned()
    });
    e.register_fn("trim_end", |x: Dynamic| text_of(&x).trim_end().to_owned());
    e.register_fn("upper", |x: Dynamic| text_of(&x).to_uppercase());
    e.register_fn("lower", |x: Dynamic| text_of(&x).to_lowercase());
    e.register_fn("pad_left", |x: Dynamic, w: Dynamic| pad(&x, &w, " ", true));
    e.register_fn("pad_left", |x: Dynamic, w: Dynamic, c: &str| {
        pad(&x, &w, c, true)
    });
    e.register_fn("pad_right", |x: Dynamic, w: Dynamic| {
        pad(&x, &w, " ", false)
    });
    e.register_fn("pad_right", |x: Dynamic, w: Dynamic, c: &str| {
        pad(&x, &w, c, false)
    });
    e.register_fn("substr", |x: Dynamic, s: Dynamic| substr(&x, &s, None));
    e.register_fn("substr", |x: Dynamic, s: Dynamic, l: Dynamic| {
        substr(&x, &s, Some(&l))
    });
    e.register_fn("left", |x: Dynamic, n: Dynamic| {
        substr(&x, &Dynamic::from_int(0), Some(&n))
    });
    e.register_fn("right", |x: Dynamic, n: Dynamic| -> R<String> {
        let s = text_of(&x);
        let n = int_of(&n)?.max(0) as usize;
        let count = s.chars().count();
        Ok(s.chars().skip(count.saturating_sub(n)).collect())
    });
    e.register_fn("replace", |x: Dynamic, from: &str, to: &str| -> R<String> {
        if from.is_empty() {
            return Err("replace(): the text to replace is empty".into());
        }
        Ok(text_of(&x).replace(from, to))
    });
    e.register_fn("digits", |x: Dynamic| {
        text_of(&x)
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
    });
    e.register_fn("len", |x: Dynamic| -> INT {
        if x.is_array() {
            x.cast::<Array>().len() as INT
        } else if let Some(m) = x.read_lock::<rhai::Map>() {
            m.len() as INT
        } else {
            text_of(&x).chars().count() as INT
        }
    });
    e.register_fn("contains", |x: Dynamic, p: Dynamic| contains(&x, &p));
    e.register_fn("starts_with", |x: Dynamic, p: Dynamic| {
        text_of(&x).starts_with(&text_of(&p))
    });
    e.register_fn("ends_with", |x: Dynamic, p: Dynamic| {
        text_of(&x).ends_with(&text_of(&p))
    });
    e.register_fn("split", |x: Dynamic, sep: &str| -> R<Array> {
        if sep.is_empty() {
            return Err("split(): the separator is empty".into());
        }
        Ok(text_of(&x)
            .split(sep)
            .map(|p| Dynamic::from(ImmutableString::from(p)))
            .collect())
    });
    e.register_fn("join", |list: Array, sep: &str| {
        list.iter().map(text_of).collect::<Vec<_>>().join(sep)
    });
    for n in 2..=8usize {
        // concat(a, b, ...) with 2 to 8 arguments
        match n {
            2 => e.register_fn("concat", |a: Dynamic, b: Dynamic| {
                text_of(&a) + text_of(&b).as_str()
            }),
            3 => e.register_fn("concat", |a: Dynamic, b: Dynamic, c: Dynamic| {
                [a, b, c].iter().map(text_of).collect::<String>()
            }),
            4 => e.register_fn(
                "concat",
                |a: Dynamic, b: Dynamic, c: Dynamic, d: Dynamic| {
                    [a, b, c, d].iter().map(text_of).collect::<String>()
                },
            ),
            5 => e.register_fn(
                "concat",
                |a: Dynamic, b: Dynamic, c: Dynamic, d: Dynamic, f: Dynamic| {
                    [a, b, c, d, f].iter().map(text_of).collect::<String>()
                },
            ),
            6 => e.register_fn(
                "concat",
                |a: Dynamic, b: Dynamic, c: Dynamic, d: Dynamic, f: Dynamic, g: Dynamic| {
                    [a, b, c, d, f, g].iter().map(text_of).collect::<String>()
                },
            ),
            7 => e.register_fn(
                "concat",
                |a: Dynamic,
                 b: Dynamic,
                 c: Dynamic,
                 d: Dynamic,
                 f: Dynamic,
                 g: Dynamic,
                 h: Dynamic| {
                    [a, b, c, d, f, g, h]
                        .iter()
                        .map(text_of)
                        .collect::<String>()
                },
            ),
            _ => e.register_fn(
                "concat",
                |a: Dynamic,
                 b: Dynamic,
                 c: Dynamic,
                 d: Dynamic,
                 f: Dynamic,
                 g: Dynamic,
                 h: Dynamic,
                 i: Dynamic| {
                    [a, b, c, d, f, g, h, i]
                        .iter()
                        .map(text_of)
                        .collect::<String>()
                },
            ),
        };
    }
    // Text joined to a number: the number's text.
    e.register_fn("+", |a: ImmutableString, b: Decimal| format!("{a}{b}"));
    e.register_fn("+", |a: Decimal, b: ImmutableString| format!("{a}{b}"));
    e.register_fn("+", |a: ImmutableString, b: INT| format!("{a}{b}"));
    e.register_fn("+", |a: INT, b: ImmutableString| format!("{a}{b}"));
    e.register_fn("+", |a: ImmutableString, b: bool| format!("{a}{b}"));
    e.register_fn("+", |a: ImmutableString, _: ()| a.to_string());
    // A number read from text compares equal to the same number as text.
    e.register_fn("==", |a: Decimal, b: ImmutableString| {
        decimal_eq_text(a, &b)
    });
    e.register_fn("==", |a: ImmutableString, b: Decimal| {
        decimal_eq_text(b, &a)
    });
    e.register_fn("!=", |a: Decimal, b: ImmutableString| {
        !decimal_eq_text(a, &b)
    });
    e.register_fn("!=", |a: ImmutableString, b: Decimal| {
        !decimal_eq_text(b, &a)
    });

    // presence and lists
    e.register_fn("exists", |x: Dynamic| !x.is_unit());
    e.register_fn("is_empty", |x: Dynamic| -> bool {
        if x.is_array() {
            x.cast::<Array>().is_empty()
        } else if let Some(m) = x.read_lock::<rhai::Map>() {
            m.is_empty()
        } else {
            is_nothing(&x)
        }
    });
    e.register_fn(
        "coalesce",
        |a: Dynamic, b: Dynamic| if is_nothing(&a) { b } else { a },
    );
    e.register_fn("coalesce", |a: Dynamic, b: Dynamic, c: Dynamic| {
        [a, b].into_iter().find(|x| !is_nothing(x)).unwrap_or(c)
    });
    e.register_fn("count", |x: Dynamic| -> INT {
        if x.is_array() {
            x.cast::<Array>().len() as INT
        } else if x.is_unit() {
            0
        } else {
            1
        }
    });
    e.register_fn("sum", |x: Dynamic| sum_list(&x, None));
    e.register_fn("sum", |x: Dynamic, field: &str| sum_list(&x, Some(field)));

    // lookup tables
    let t = tables.clone();
    e.register_fn("lookup", move |table: &str, key: Dynamic| -> R<String> {
        let (found, table_ref) = look(&t, table, &key)?;
        found.ok_or_else(|| {
            format!(
                "value \"{}\" is not in lookup table {} ({})",
                text_of(&key),
                table_ref.name,
                table_ref.file
            )
            .into()
        })
    });
    let t = tables;
    e.register_fn(
        "lookup",
        move |table: &str, key: Dynamic, default: Dynamic| -> R<Dynamic> {
            let (found, _) = look(&t, table, &key)?;
            Ok(found.map_or(default, |s| Dynamic::from(ImmutableString::from(s))))
        },
    );

    // dates
    e.register_fn("format_date", |x: Dynamic, out: &str| {
        When::read(&x)?.format(out)
    });
    e.register_fn("format_date", |x: Dynamic, input: &str, out: &str| {
        When::read_with(&x, input)?.format(out)
    });
    e.register_fn("parse_date", |x: Dynamic, input: &str| {
        When::read_with(&x, input)?.text()
    });
    e.register_fn("year", |x: Dynamic| {
        When::read(&x).map(|w| INT::from(w.date().year()))
    });
    e.register_fn("month", |x: Dynamic| {
        When::read(&x).map(|w| INT::from(w.date().month()))
    });
    e.register_fn("day", |x: Dynamic| {
        When::read(&x).map(|w| INT::from(w.date().day()))
    });
    e.register_fn("add_days", |x: Dynamic, n: Dynamic| add_days(&x, &n));
    e.register_fn("days_between", |a: Dynamic, b: Dynamic| -> R<INT> {
        let (a, b) = (When::read(&a)?.date(), When::read(&b)?.date());
        let span = a
            .until(b)
            .map_err(|e| -> Box<EvalAltResult> { format!("days_between(): {e}").into() })?;
        Ok(INT::from(span.get_days()))
    });
    e.register_fn("today", || {
        Timestamp::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .date()
            .to_string()
    });
    e.register_fn("now", || Timestamp::now().to_string());
    e
}

fn look<'t>(
    tables: &'t [LookupTable],
    table: &str,
    key: &Dynamic,
) -> R<(Option<String>, &'t LookupTable)> {
    let Some(t) = tables.iter().find(|t| t.name == table) else {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Err(format!(
            "no lookup table named \"{table}\" (this mapping declares: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
        .into());
    };
    Ok((t.get(&text_of(key)).map(str::to_owned), t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, fields: &[(&str, Value)]) -> Result<Value, String> {
        let e = engine(Arc::new(Vec::new()));
        let x = Expr::compile(
            &e,
            text,
            &Visible {
                vars: &[],
                in_group: true,
            },
        )
        .map_err(|c| c.message)?;
        x.eval(&e, &mut |name, b| match b {
            Binding::Position => Some(Dynamic::from_int(3)),
            _ => fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| to_dynamic(v)),
        })
    }

    fn num(s: &str) -> Value {
        Value::Number(Number::parse(s).unwrap())
    }

    /// Runs `text` twice, with and without the native arithmetic path.
    fn both(
        text: &str,
        fields: &[(&str, Value)],
    ) -> (bool, Result<Value, String>, Result<Value, String>) {
        let e = engine(Arc::new(Vec::new()));
        let visible = Visible {
            vars: &[],
            in_group: true,
        };
        let mut x =
            Expr::compile(&e, text, &visible).unwrap_or_else(|c| panic!("{text}: {}", c.message));
        let mut bind = |name: &str, _: &Binding| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| to_dynamic(v))
        };
        let native = x.arith.is_some();
        let fast = x.eval(&e, &mut bind);
        x.arith = None;
        let slow = x.eval(&e, &mut bind);
        (native, fast, slow)
    }

    fn arith_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned())
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{x} + {y}")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{x} - {y}")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{x} * {y}")),
                inner.clone().prop_map(|x| format!("-({x})")),
                inner.clone().prop_map(|x| format!("({x})")),
                (inner, 0u32..6).prop_map(|(x, dp)| format!("round({x}, {dp})")),
            ]
        })
    }

    fn field_value() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        prop_oneof![
            (-1_000_000i64..1_000_000, 0u32..5)
                .prop_map(|(m, s)| Some(Value::Number(Number::from_decimal(Decimal::new(m, s))))),
            (-1_000_000i64..1_000_000, 0u32..4)
                .prop_map(|(m, s)| Some(Value::from(Decimal::new(m, s).to_string()))),
            Just(Some(Value::Number(Number::from_decimal(Decimal::MAX)))),
            Just(Some(Value::from("n/a"))),
            Just(Some(Value::from("090111"))),
            Just(None),
        ]
    }

    proptest::proptest! {
        #[test]
        fn native_arithmetic_agrees_with_rhai(
            text in arith_text(),
            a in field_value(),
            b in field_value(),
            c in field_value(),
        ) {
            let fields: Vec<(&str, Value)> = [("a", a), ("b", b), ("c", c)]
                .into_iter()
                .filter_map(|(n, v)| v.map(|v| (n, v)))
                .collect();
            let (native, fast, slow) = both(&text, &fields);
            proptest::prop_assert!(native, "{} is in the native subset", text);
            proptest::prop_assert_eq!(fast, slow, "{}", text);
        }
    }

    #[test]
    fn the_shipped_item_amount_runs_natively_with_rhai_errors() {
        let f = [
            ("unit_price", Value::from("185.505")),
            ("quantity", Value::from(3)),
        ];
        let (native, fast, slow) = both("round(unit_price * quantity, 2)", &f);
        assert!(native);
        assert_eq!(fast, Ok(num("556.52")));
        assert_eq!(fast, slow);
        let (_, fast, slow) = both("round(unit_price * quantity, 2)", &f[..1]);
        assert_eq!(fast, slow);
        assert!(fast.unwrap_err().contains("quantity"));
    }

    #[test]
    fn arithmetic_is_exact_decimal() {
        let f = [
            ("unit_price", Value::from("185.50")),
            ("quantity", Value::from(120)),
        ];
        assert_eq!(run("unit_price * quantity", &f).unwrap(), num("22260.00"));
        assert_eq!(run("round(0.125, 2)", &[]).unwrap(), num("0.12"));
        assert_eq!(run("round_half_up(0.125, 2)", &[]).unwrap(), num("0.13"));
        assert_eq!(run("0.1 + 0.2", &[]).unwrap(), num("0.3"));
        assert_eq!(
            run("format_number(1987500, \"0\")", &[]).unwrap(),
            Value::from("1987500")
        );
    }

    #[test]
    fn only_used_names_are_bound_and_missing_ones_named() {
        let e = engine(Arc::new(Vec::new()));
        let vars = [("total".to_owned(), 4)];
        let x = Expr::compile(
            &e,
            "total + price * qty",
            &Visible {
                vars: &vars,
                in_group: false,
            },
        )
        .unwrap();
        assert_eq!(
            x.bindings,
            vec![
                ("total".into(), Binding::Slot(4)),
                ("price".into(), Binding::Field),
                ("qty".into(), Binding::Field)
            ]
        );
        let err = run("price * qty", &[("price", Value::from("2"))]).unwrap_err();
        assert!(err.starts_with("field qty is missing"), "{err}");
        assert_eq!(run("exists(qty)", &[]).unwrap(), Value::Bool(false));
        assert_eq!(run("coalesce(qty, 7)", &[]).unwrap(), num("7"));
    }

    #[test]
    fn codes_with_leading_zeros_stay_text() {
        let f = [
            ("hs", Value::from("090111")),
            ("phone", Value::from("+242061234567")),
        ];
        assert_eq!(
            run("hs + \"-\" + position", &f).unwrap(),
            Value::from("090111-3")
        );
        assert_eq!(
            run("digits(phone)", &f).unwrap(),
            Value::from("242061234567")
        );
        assert_eq!(run("len(hs)", &f).unwrap(), num("6"));
        assert_eq!(
            run("n == \"10\"", &[("n", Value::from("10"))]).unwrap(),
            Value::Bool(true)
        );
    }

    #[test]
    fn text_helpers() {
        let f = [("s", Value::from("  Café  "))];
        assert_eq!(run("upper(trim(s))", &f).unwrap(), Value::from("CAFÉ"));
        assert_eq!(
            run("pad_left(\"42\", 5, \"0\")", &[]).unwrap(),
            Value::from("00042")
        );
        assert_eq!(
            run("pad_right(\"ab\", 4)", &[]).unwrap(),
            Value::from("ab  ")
        );
        assert_eq!(
            run("substr(\"CGPNR-2026\", 6)", &[]).unwrap(),
            Value::from("2026")
        );
        assert_eq!(
            run("substr(\"CGPNR-2026\", 0, 5)", &[]).unwrap(),
            Value::from("CGPNR")
        );
        assert_eq!(run("right(\"CGPNR\", 3)", &[]).unwrap(), Value::from("PNR"));
        assert_eq!(
            run("replace(\"a-b-c\", \"-\", \"/\")", &[]).unwrap(),
            Value::from("a/b/c")
        );
        assert_eq!(
            run("concat(\"E\", \" \", 4821)", &[]).unwrap(),
            Value::from("E 4821")
        );
        assert_eq!(
            run("join([\"a\", 1, \"b\"], \"-\")", &[]).unwrap(),
            Value::from("a-1-b")
        );
        assert_eq!(
            run("split(\"a;b\", \";\")", &[]).unwrap(),
            Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            run(
                "if contains(\"abc\", \"b\") { \"yes\" } else { \"no\" }",
                &[]
            )
            .unwrap(),
            Value::from("yes")
        );
    }

    #[test]
    fn dates() {
        let f = [
            ("d", Value::from("2026-11-21")),
            ("t", Value::from("2026-11-20T09:14:03Z")),
        ];
        assert_eq!(run("year(d)", &f).unwrap(), num("2026"));
        assert_eq!(
            run("format_date(t, \"%d/%m/%Y %H:%M\")", &f).unwrap(),
            Value::from("20/11/2026 09:14")
        );
        assert_eq!(
            run(
                "format_date(\"21/11/2026\", \"%d/%m/%Y\", \"%Y-%m-%d\")",
                &[]
            )
            .unwrap(),
            Value::from("2026-11-21")
        );
        assert_eq!(
            run("add_days(d, 10)", &f).unwrap(),
            Value::from("2026-12-01")
        );
        assert_eq!(
            run("days_between(\"2026-11-01\", d)", &f).unwrap(),
            num("20")
        );
        // an offset is kept: the local time stays what the sender wrote
        let z = [("z", Value::from("2026-11-18T16:02:47+01:00"))];
        assert_eq!(
            run("format_date(z, \"%H:%M:%S%:z\")", &z).unwrap(),
            Value::from("16:02:47+01:00")
        );
        assert_eq!(
            run("year(\"2026-12-31T23:30:00-05:00\")", &[]).unwrap(),
            num("2026")
        );
        assert_eq!(
            run("add_days(z, 1)", &z).unwrap(),
            Value::from("2026-11-19T16:02:47+01:00")
        );
        assert_eq!(
            run("format_date(\"2026-11-18T16:02:47\", \"%H:%M\")", &[]).unwrap(),
            Value::from("16:02")
        );
        assert_eq!(
            run(
                "parse_date(\"18/11/2026 16:02 +0100\", \"%d/%m/%Y %H:%M %z\")",
                &[]
            )
            .unwrap(),
            Value::from("2026-11-18T16:02:00+01:00")
        );
        let err = run("year(\"21.11.2026\")", &[]).unwrap_err();
        assert!(err.contains("is not a date"), "{err}");
    }

    #[test]
    fn lists_and_sums() {
        let items = Value::Array(vec![
            Value::Object(
                [("q", Value::from(2)), ("p", Value::from("1.50"))]
                    .into_iter()
                    .collect(),
            ),
            Value::Object(
                [("q", Value::from(3)), ("p", Value::from("2.25"))]
                    .into_iter()
                    .collect(),
            ),
        ]);
        let f = [("items", items)];
        assert_eq!(run("count(items)", &f).unwrap(), num("2"));
        assert_eq!(run("sum(items, \"q\")", &f).unwrap(), num("5"));
        assert_eq!(run("items[1].p * items[1].q", &f).unwrap(), num("6.75"));
    }

    #[test]
    fn sandbox_refuses_statements_loops_and_runaways() {
        let e = engine(Arc::new(Vec::new()));
        let vis = Visible {
            vars: &[],
            in_group: false,
        };
        for bad in [
            "let x = 1; x",
            "while true {}",
            "loop { }",
            "eval(\"1\")",
            "import \"x\" as y",
        ] {
            assert!(Expr::compile(&e, bad, &vis).is_err(), "{bad}");
        }
        let err = run("pad_left(\"x\", 100000000)", &[]).unwrap_err();
        assert!(err.contains("cannot pad"), "{err}");
        let err = run("\"x\" * 3", &[]).unwrap_err();
        assert!(err.contains("no function"), "{err}");
    }

    #[test]
    fn compile_errors_have_positions() {
        let e = engine(Arc::new(Vec::new()));
        let err = Expr::compile(
            &e,
            "a * (b + ",
            &Visible {
                vars: &[],
                in_group: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column >= 9, "{err:?}");
    }
}
