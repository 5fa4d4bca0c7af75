//! Templates in destination settings (URLs, header values, file names).
//!
//! A template is checked when the configuration is read: it must compile,
//! and render with every variable set, so that a misspelt variable name is
//! a configuration error rather than a dead letter. At delivery time a
//! variable the delivery does not have (no business key) is an error, not
//! an empty string: `/declarations/` in place of `/declarations/GB-1` must
//! never be sent.
//!
//! Variables: `delivery_id`, `message_id`, `route`, `destination`,
//! `attempt`, `business_key`, `correlation_id`, `extension`.

use std::collections::BTreeMap;
use std::fmt;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use nzela_core::runtime::Outbound;
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// The names a template may use.
pub const VARIABLES: &[&str] = &[
    "delivery_id",
    "message_id",
    "route",
    "destination",
    "attempt",
    "business_key",
    "correlation_id",
    "extension",
];

/// A template's source, checked when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Checks a template: it compiles and renders with every variable set.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut env = environment();
        env.add_template("template", source)
            .map_err(|e| describe(&e))?;
        let t = env.get_template("template").map_err(|e| describe(&e))?;
        t.render(variables(&sample())).map_err(|e| describe(&e))?;
        Ok(Template(source.to_owned()))
    }

    /// A template written in the code, such as a default; tests check
    /// that each one parses.
    pub(crate) fn constant(source: &'static str) -> Template {
        Template(source.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads a template for the setting `field`, naming it in errors.
    pub(crate) fn deserialize_field<'de, D: Deserializer<'de>>(
        d: D,
        field: &str,
    ) -> Result<Template, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s)
            .map_err(|e| de::Error::custom(format!("`{field}` is not a valid template: {e}")))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(|e| de::Error::custom(format!("not a valid template: {e}")))
    }
}

/// Compiled templates, by name, ready to render for a delivery.
pub struct Templates {
    env: Environment<'static>,
    /// Templates without any tag (most routing keys, many URLs): their
    /// text, given as is without building a delivery's variables.
    constants: BTreeMap<String, String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            env: environment(),
            constants: BTreeMap::new(),
        }
    }
}

impl Templates {
    /// Compiles `template` under `name` (the setting it comes from).
    pub fn add(&mut self, name: &str, template: &Template) -> Result<(), String> {
        let text = &template.0;
        // (minijinja drops a final newline: such a text goes through it.)
        if !["{{", "{%", "{#"].iter().any(|tag| text.contains(tag)) && !text.ends_with('\n') {
            self.constants.insert(name.to_owned(), text.clone());
            return Ok(());
        }
        self.constants.remove(name);
        self.env
            .add_template_owned(name.to_owned(), template.0.clone())
            .map_err(|e| format!("`{name}` is not a valid template: {}", describe(&e)))
    }

    /// Renders `name` for one delivery.
    pub fn render(&self, name: &str, out: &Outbound) -> Result<String, String> {
        if let Some(text) = self.constants.get(name) {
            return Ok(text.clone());
        }
        let t = self.env.get_template(name).map_err(|e| describe(&e))?;
        t.render(variables(out)).map_err(|e| {
            // Templates are checked with every variable set, so an
            // undefined value here is one this delivery lacks.
            let missing: Vec<&str> = [
                ("business_key", &out.business_key),
                ("correlation_id", &out.correlation_id),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| n)
            .collect();
            let why = if e.kind() == minijinja::ErrorKind::UndefinedError && !missing.is_empty() {
                format!(
                    "it uses a variable this delivery does not have (this one has no {})",
                    missing.join(" and no ")
                )
            } else {
                describe(&e)
            };
            format!("cannot render `{name}` for this delivery: {why}")
        })
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Printing a missing variable fails; testing it (`{% if business_key %}`)
    // does not, so a template can offer a fallback.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // URLs, headers and file names are not HTML.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
}

/// A delivery's variables; absent ones are left undefined, not `none`.
fn variables(out: &Outbound) -> Value {
    let mut vars: BTreeMap<&'static str, Value> = BTreeMap::new();
    vars.insert("delivery_id", Value::from(out.delivery_id.as_str()));
    vars.insert("message_id", Value::from(out.message_id.as_str()));
    vars.insert("route", Value::from(out.route.as_str()));
    vars.insert("destination", Value::from(out.destination.as_str()));
    vars.insert("attempt", Value::from(out.attempt));
    vars.insert("extension", Value::from(out.extension.as_str()));
    if let Some(k) = &out.business_key {
        vars.insert("business_key", Value::from(k.as_str()));
    }
    if let Some(c) = &out.correlation_id {
        vars.insert("correlation_id", Value::from(c.as_str()));
    }
    Value::from(vars)
}

/// A delivery with every variable set, for checking templates.
pub(crate) fn sample() -> Outbound {
    Outbound {
        delivery_id: "00000000-0000-7000-8000-000000000001".into(),
        message_id: "00000000-0000-7000-8000-000000000002".into(),
        route: "route".into(),
        destination: "destination".into(),
        attempt: 1,
        body: Vec::new(),
        content_type: None,
        extension: "xml".into(),
        business_key: Some("KEY-1".into()),
        correlation_id: Some("correlation-1".into()),
        received_at: 0,
    }
}

/// minijinja's message, with the variable names when it is about one.
fn describe(e: &minijinja::Error) -> String {
    let text = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.kind() {
        minijinja::ErrorKind::UndefinedError => {
            format!("{text} (the variables are: {})", VARIABLES.join(", "))
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_a_deliverys_variables() {
        let mut t = Templates::default();
        t.add(
            "url",
            &Template::parse("https://x/{{ route }}/{{ business_key }}?try={{ attempt }}").unwrap(),
        )
        .unwrap();
        assert_eq!(
            t.render("url", &sample()).unwrap(),
            "https://x/route/KEY-1?try=1"
        );
        // Text without tags is given as is; a name added again takes the
        // new template, whichever kind each is.
        t.add("key", &Template::parse("declaration.export").unwrap())
            .unwrap();
        assert_eq!(t.render("key", &sample()).unwrap(), "declaration.export");
        t.add("key", &Template::parse("orders.{{ route }}").unwrap())
            .unwrap();
        assert_eq!(t.render("key", &sample()).unwrap(), "orders.route");
        t.add("url", &Template::parse("https://fixed/").unwrap())
            .unwrap();
        assert_eq!(t.render("url", &sample()).unwrap(), "https://fixed/");
        t.add("nl", &Template::parse("a\n").unwrap()).unwrap();
        assert_eq!(t.render("nl", &sample()).unwrap(), "a");
    }

    #[test]
    fn a_missing_variable_fails_to_render_but_can_be_tested() {
        let mut t = Templates::default();
        t.add("name", &Template::parse("{{ business_key }}.xml").unwrap())
            .unwrap();
        t.add(
            "fallback",
            &Template::parse(
                "{% if business_key %}{{ business_key }}{% else %}{{ delivery_id }}{% endif %}",
            )
            .unwrap(),
        )
        .unwrap();
        let mut out = sample();
        out.business_key = None;
        let e = t.render("name", &out).unwrap_err();
        assert_eq!(
            e,
            "cannot render `name` for this delivery: it uses a variable this delivery does not have (this one has no business_key)"
        );
        assert_eq!(t.render("fallback", &out).unwrap(), out.delivery_id);
    }

    #[test]
    fn bad_templates_are_refused_when_read() {
        let e = Template::parse("{{ delivery_id").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        let e = Template::parse("{{ delivry_id }}").unwrap_err();
        assert!(e.contains("the variables are: delivery_id"), "{e}");
        let e = serde_json::from_value::<Template>(serde_json::json!("{% if %}")).unwrap_err();
        assert!(e.to_string().starts_with("not a valid template"), "{e}");
    }
}
