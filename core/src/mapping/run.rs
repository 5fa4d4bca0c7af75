//! Applying a compiled mapping to one message.
//!
//! Plain copies, constants, counts, sums and lookups are done here directly
//! on the message tree; only `expr:`, `when:` and `of:` go through the
//! expression engine, and each binds only the names it uses.

use std::cell::RefCell;

use rhai::Dynamic;
use rust_decimal::{Decimal, RoundingStrategy};

use super::expr::{Binding, Expr, to_dynamic};
use super::path::{Base, Path};
use super::{
    Body, Case, Check, Field, Group, Kind, MapError, Mapping, Source, TNode, Template, Var,
};
use crate::value::{Map, Number, Str, Value};

pub(super) fn run(m: &Mapping, input: &Value) -> Result<Value, MapError> {
    let mut r = Runner {
        m,
        root: input,
        slots: vec![Value::Null; m.slots],
        trail: Vec::new(),
        memo: RefCell::new(Vec::new()),
    };
    let top = Frame {
        current: input,
        position: None,
        in_message: true,
    };
    for var in &m.vars {
        r.set_var(var, &top)?;
    }
    match &m.body {
        Body::Object(t) => Ok(Value::Object(r.template(t, &top)?)),
        Body::Each(g) => Ok(Value::Array(r.group(g, &top)?)),
    }
}

struct Runner<'m, 'v> {
    m: &'m Mapping,
    root: &'v Value,
    /// Values of `vars:`, by slot.
    slots: Vec<Value>,
    /// The groups being filled and the item number in each, for messages.
    trail: Vec<(&'m str, usize)>,
    /// Results of item-only expressions, by expression and item address.
    memo: RefCell<Vec<((usize, usize), Value)>>,
}

/// Where paths and field names are read from.
struct Frame<'a> {
    current: &'a Value,
    /// In a group: the item's number, from 1.
    position: Option<usize>,
    /// `current` is a part of the message itself (not a copy that lives
    /// only while a group runs), so its address identifies it.
    in_message: bool,
}

impl<'m, 'v> Runner<'m, 'v> {
    fn error(&self, target: &str, message: impl Into<String>) -> MapError {
        let mut field = String::new();
        for (group, i) in &self.trail {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(group);
            field.push_str(&format!("[{i}]"));
        }
        if !target.is_empty() {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(target);
        }
        MapError {
            mapping: self.m.name.clone(),
            field,
            message: message.into(),
        }
    }

    fn template(&mut self, t: &'m Template, frame: &Frame<'_>) -> Result<Map, MapError> {
        let mut out = Map::with_capacity(t.entries.len());
        for (key, node) in &t.entries {
            match node {
                TNode::Field(f) => {
                    if let Some(v) = self.field(f, frame)? {
                        out.push_unchecked(key.clone(), v);
                    }
                }
                TNode::Object { template, when } => {
                    if let Some(w) = when
                        && !self.cond(w, frame, key)?
                    {
                        continue;
                    }
                    let inner = self.template(template, frame)?;
                    if !inner.is_empty() {
                        out.push_unchecked(key.clone(), Value::Object(inner));
                    }
                }
                TNode::Group(g) => {
                    let items = self.group(g, frame)?;
                    if !items.is_empty() {
                        out.push_unchecked(key.clone(), Value::Array(items));
                    }
                }
            }
        }
        Ok(out)
    }

    fn group(&mut self, g: &'m Group, frame: &Frame<'_>) -> Result<Vec<Value>, MapError> {
        // Items taken from a declared value are copied first: the group's
        // own values are written to the same slots while it runs.
        let copied: Vec<Value>;
        let in_message = !matches!(g.each.base, Base::Slot(_));
        let items: Vec<&Value> = if let Base::Slot(_) = g.each.base {
            let mut refs = Vec::new();
            self.select_all(&g.each, frame, &mut refs);
            copied = refs.into_iter().cloned().collect();
            copied.iter().collect()
        } else {
            let root: &'v Value = self.root;
            let start = match g.each.base {
                Base::Root => root,
                _ => frame.current,
            };
            let mut refs = Vec::new();
            g.each.resolve_all(start, &mut refs);
            refs
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let f = Frame {
                current: item,
                position: Some(i + 1),
                in_message,
            };
            self.trail.push((&g.target, i));
            if let Some(w) = &g.when
                && !self.cond(w, &f, "")?
            {
                self.trail.pop();
                continue;
            }
            for var in &g.vars {
                self.set_var(var, &f)?;
            }
            let m = self.template(&g.template, &f)?;
            self.trail.pop();
            out.push(Value::Object(m));
        }
        if let Some(max) = g.max_items
            && out.len() > max
        {
            return Err(self.error(
                &g.target,
                format!(
                    "{} items (from {}), more than the {max} allowed",
                    out.len(),
                    g.each
                ),
            ));
        }
        if let Some(min) = g.min_items
            && out.len() < min
        {
            return Err(self.error(
                &g.target,
                format!(
                    "{} items (from {}), fewer than the {min} required",
                    out.len(),
                    g.each
                ),
            ));
        }
        Ok(out)
    }

    fn set_var(&mut self, var: &'m Var, frame: &Frame<'_>) -> Result<(), MapError> {
        let v = self.field(&var.field, frame)?.unwrap_or(Value::Null);
        self.slots[var.slot] = v;
        Ok(())
    }

    /// The start of a path: current item, message root, or a declared value.
    fn start<'a>(&'a self, path: &Path, frame: &Frame<'a>) -> Option<std::borrow::Cow<'a, Value>> {
        use std::borrow::Cow;
        Some(match &path.base {
            Base::Current => Cow::Borrowed(frame.current),
            Base::Root => Cow::Borrowed(self.root),
            Base::Slot(s) => Cow::Borrowed(&self.slots[*s]),
            Base::Position => Cow::Owned(Value::from(frame.position? as i64)),
            Base::Var(_) => return None,
        })
    }

    fn select(&self, path: &Path, frame: &Frame<'_>) -> Option<Value> {
        let start = self.start(path, frame)?;
        path.resolve(&start)
            .filter(|v| !matches!(v, Value::Null))
            .cloned()
    }

    fn select_all<'a>(&'a self, path: &Path, frame: &Frame<'a>, out: &mut Vec<&'a Value>) {
        match &path.base {
            Base::Current => path.resolve_all(frame.current, out),
            Base::Root => path.resolve_all(self.root, out),
            Base::Slot(s) => path.resolve_all(&self.slots[*s], out),
            Base::Position | Base::Var(_) => {}
        }
    }

    fn eval(&self, e: &Expr, frame: &Frame<'_>) -> Result<Value, String> {
        let key = match e.memo {
            Some(id) if frame.in_message => Some((id, std::ptr::from_ref(frame.current) as usize)),
            _ => None,
        };
        if let Some(key) = key
            && let Some((_, v)) = self.memo.borrow().iter().find(|(k, _)| *k == key)
        {
            return Ok(v.clone());
        }
        let v = self.eval_uncached(e, frame)?;
        if let Some(key) = key {
            self.memo.borrow_mut().push((key, v.clone()));
        }
        Ok(v)
    }

    fn eval_uncached(&self, e: &Expr, frame: &Frame<'_>) -> Result<Value, String> {
        e.eval(&self.m.engine, &mut |name: &str, b: &Binding| match b {
            Binding::Slot(s) => Some(to_dynamic(&self.slots[*s])),
            Binding::Input => Some(to_dynamic(self.root)),
            Binding::Item => Some(to_dynamic(frame.current)),
            Binding::Position => frame.position.map(|p| Dynamic::from_int(p as i64)),
            Binding::Field => frame
                .current
                .as_object()?
                .get(name)
                .filter(|v| !matches!(v, Value::Null))
                .map(to_dynamic),
        })
    }

    fn cond(&self, e: &Expr, frame: &Frame<'_>, target: &str) -> Result<bool, MapError> {
        match self.eval(e, frame) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(Value::Null) => Ok(false),
            Ok(other) => Err(self.error(
                target,
                format!(
                    "condition \"{}\" must give true or false, not {} {}",
                    e.text,
                    other.type_name(),
                    show(&other)
                ),
            )),
            Err(m) => Err(self.error(target, format!("condition \"{}\": {m}", e.text))),
        }
    }

    fn field(&self, f: &Field, frame: &Frame<'_>) -> Result<Option<Value>, MapError> {
        if let Some(w) = &f.when
            && !self.cond(w, frame, &f.target)?
        {
            return Ok(None);
        }
        let value = match &f.source {
            Source::Paths(paths) => paths.iter().find_map(|p| self.select(p, frame)),
            Source::Const(v) => Some(v.clone()).filter(|v| !matches!(v, Value::Null)),
            Source::Expr(e) => match self.eval(e, frame) {
                Ok(Value::Null) => None,
                Ok(v) => Some(v),
                Err(m) => {
                    return Err(self.error(&f.target, format!("expression \"{}\": {m}", e.text)));
                }
            },
            Source::Count(p) => {
                let mut all = Vec::new();
                self.select_all(p, frame, &mut all);
                Some(Value::from(all.len() as i64))
            }
            Source::Sum { over, of } => Some(self.sum(f, over, of.as_ref(), frame)?),
        };
        let value = match value {
            Some(v) => v,
            None => match &f.default {
                Some(d) => d.clone(),
                None if f.required => return Err(self.error(&f.target, self.missing_message(f))),
                None => return Ok(None),
            },
        };
        self.finish(f, value).map(Some)
    }

    fn missing_message(&self, f: &Field) -> String {
        match &f.source {
            Source::Paths(paths) => {
                let names: Vec<&str> = paths.iter().map(|p| p.text.as_str()).collect();
                format!("required field {} is missing", names.join(" or "))
            }
            Source::Expr(e) => format!(
                "required field is empty: expression \"{}\" gave nothing",
                e.text
            ),
            _ => "required field is empty".to_owned(),
        }
    }

    fn sum(
        &self,
        f: &Field,
        over: &Path,
        of: Option<&Expr>,
        frame: &Frame<'_>,
    ) -> Result<Value, MapError> {
        let mut items = Vec::new();
        self.select_all(over, frame, &mut items);
        let mut total = Decimal::ZERO;
        for (i, item) in items.iter().enumerate() {
            let v = match of {
                Some(e) => {
                    let inner = Frame {
                        current: item,
                        position: Some(i + 1),
                        in_message: !matches!(over.base, Base::Slot(_)),
                    };
                    match self.eval(e, &inner) {
                        Ok(v) => v,
                        Err(m) => {
                            return Err(self.error(
                                &f.target,
                                format!("sum of {over}, item {i}: expression \"{}\": {m}", e.text),
                            ));
                        }
                    }
                }
                None => (*item).clone(),
            };
            if matches!(v, Value::Null) {
                continue;
            }
            let Some(d) = v.to_decimal() else {
                return Err(self.error(
                    &f.target,
                    format!(
                        "sum of {over}: item {i} is {} {}, not a number",
                        v.type_name(),
                        show(&v)
                    ),
                ));
            };
            total = total
                .checked_add(d)
                .ok_or_else(|| self.error(&f.target, format!("sum of {over} is too large")))?;
        }
        Ok(Value::Number(Number::from_decimal(total)))
    }

    /// trim → case → lookup → type → round → format → checks.
    fn finish(&self, f: &Field, mut v: Value) -> Result<Value, MapError> {
        let shaped = f.trim
            || f.case.is_some()
            || f.lookup.is_some()
            || f.round.is_some()
            || f.format.is_some()
            || f.kind.is_some()
            || !f.checks.is_empty();
        if !shaped {
            return Ok(v);
        }
        if !v.is_scalar() {
            return Err(self.error(&f.target, format!("{} is {}: trim, case, lookup, round, format, type and checks apply to single values only", self.described_source(f), v.type_name())));
        }
        if f.trim
            && let Value::String(s) = &mut v
        {
            let t = s.trim();
            if t.len() != s.len() {
                *s = Str::from(t);
            }
        }
        if let Some(case) = f.case
            && let Value::String(s) = &mut v
        {
            // Codes usually arrive in the right case already.
            let changes = match case {
                Case::Upper => s.chars().any(char::is_lowercase),
                Case::Lower => s.chars().any(char::is_uppercase),
            };
            if changes {
                *s = match case {
                    Case::Upper => s.to_uppercase(),
                    Case::Lower => s.to_lowercase(),
                };
            }
        }
        if let Some(l) = &f.lookup {
            let table = &self.m.tables[l.table];
            let key = v.scalar_text().unwrap_or_default().into_owned();
            v = match (table.get(&key), &l.default) {
                (Some(found), _) => Value::String(Str::from(found)),
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(self.error(
                        &f.target,
                        format!(
                            "value \"{key}\"{} is not in lookup table {} ({})",
                            self.from(f),
                            table.name,
                            table.file
                        ),
                    ));
                }
            };
        }
        if let Some(kind) = f.kind {
            v = self.coerce(f, v, kind)?;
        }
        if let Some(dp) = f.round {
            let d = self.number(f, &v)?;
            v = Value::Number(Number::from_decimal(
                d.round_dp_with_strategy(dp, RoundingStrategy::MidpointNearestEven),
            ));
        }
        if let Some(nf) = &f.format {
            let d = self.number(f, &v)?;
            v = Value::String(nf.apply(d));
        }
        for check in &f.checks {
            self.check(f, &v, check)?;
        }
        Ok(v)
    }

    fn number(&self, f: &Field, v: &Value) -> Result<Decimal, MapError> {
        v.to_decimal().ok_or_else(|| {
            self.error(
                &f.target,
                format!("value {}{} is not a number", show(v), self.from(f)),
            )
        })
    }

    fn coerce(&self, f: &Field, v: Value, kind: Kind) -> Result<Value, MapError> {
        let text = v.scalar_text().unwrap_or_default().into_owned();
        Ok(match kind {
            Kind::String => Value::String(Str::from(text)),
            Kind::Number => Value::Number(Number::from_decimal(self.number(f, &v)?)),
            Kind::Integer => {
                let d = self.number(f, &v)?;
                if !d.fract().is_zero() {
                    return Err(self.error(
                        &f.target,
                        format!("value {}{} is not a whole number", show(&v), self.from(f)),
                    ));
                }
                Value::Number(Number::from_decimal(d.trunc()))
            }
            Kind::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "y" | "oui" => Value::Bool(true),
                "false" | "0" | "no" | "n" | "non" => Value::Bool(false),
                _ => {
                    return Err(self.error(
                        &f.target,
                        format!("value {}{} is not true or false", show(&v), self.from(f)),
                    ));
                }
            },
        })
    }

    fn check(&self, f: &Field, v: &Value, check: &Check) -> Result<(), MapError> {
        let text = v.scalar_text().unwrap_or_default();
        let fail = |what: String| {
            Err(self.error(
                &f.target,
                format!("value {}{} {what}", show(v), self.from(f)),
            ))
        };
        match check {
            Check::MaxLength(n) => {
                let len = text.chars().count();
                if len > *n {
                    return fail(format!(
                        "is {len} characters long, more than the {n} allowed"
                    ));
                }
            }
            Check::MinLength(n) => {
                let len = text.chars().count();
                if len < *n {
                    return fail(format!(
                        "is {len} characters long, fewer than the {n} required"
                    ));
                }
            }
            Check::Pattern(re, p) => {
                if !re.is_match(&text) {
                    return fail(format!("does not match the pattern {p}"));
                }
            }
            Check::OneOf(values) => {
                if !values.iter().any(|a| a == text.as_ref()) {
                    return fail(format!("is not one of: {}", values.join(", ")));
                }
            }
            Check::Min(min) => {
                if self.number(f, v)? < *min {
                    return fail(format!("is below the minimum {min}"));
                }
            }
            Check::Max(max) => {
                if self.number(f, v)? > *max {
                    return fail(format!("is above the maximum {max}"));
                }
            }
        }
        Ok(())
    }

    /// ` (from order.items.hs_code)` for path sources, for messages.
    fn from(&self, f: &Field) -> String {
        match &f.source {
            Source::Paths(p) if p.len() == 1 => format!(" (from {})", p[0]),
            _ => String::new(),
        }
    }

    fn described_source(&self, f: &Field) -> String {
        match &f.source {
            Source::Paths(p) => format!("the value at {}", p[0]),
            Source::Expr(e) => format!("the result of \"{}\"", e.text),
            _ => "the value".to_owned(),
        }
    }
}

/// A value as it would appear in a message: text quoted, numbers as written.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let short: String = s.chars().take(80).collect();
            if short.len() < s.len() {
                format!("\"{short}...\"")
            } else {
                format!("\"{s}\"")
            }
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}
