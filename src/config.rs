//! The configuration file: loading, secrets, and every check `nzela check`
//! and `nzela run` make before anything starts.
//!
//! Loading never stops at the first problem: each section (a source, a
//! destination, a route) is read on its own, every mapping is compiled,
//! every reference checked, and all problems are returned together, each
//! with the file, the line where it can be placed, and the key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nzela_connectors::common::DurationValue;
use nzela_connectors::{DestinationConfig, SourceConfig, http_server};
use nzela_core::mapping::{Condition, Mapping};
use serde::Deserialize;
use serde_json::Value as Json;

/// Environment variables override the file: `NZELA__JOURNAL__PATH` sets
/// `journal.path` (prefix `NZELA`, levels separated by `__`).
pub const ENV_PREFIX: &str = "NZELA";
pub const ENV_SEPARATOR: &str = "__";

const TOP_KEYS: &[&str] = &[
    "journal",
    "log",
    "delivery",
    "shutdown_timeout",
    "sources",
    "destinations",
    "routes",
];

/// Where the journal is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The SQLite file (created with its folder). Default `data/nzela.db`.
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
}

fn default_journal_path() -> PathBuf {
    PathBuf::from("data/nzela.db")
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
        }
    }
}

/// How nzela logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, for people) or `json` (one object per line, for
    /// log collectors).
    #[serde(default = "default_log_format")]
    pub format: String,
    /// Level or filter: `info` (default), `debug`, `warn`, or a filter such
    /// as `info,nzela_core=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> String {
    "text".to_owned()
}

fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// A route: messages from some sources, through a mapping, to destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Source name(s) whose messages the route takes.
    pub from: OneOrMany,
    /// Optional condition on the message (an expression, as in mapping
    /// files): the route applies only when it is true.
    #[serde(default)]
    pub when: Option<String>,
    /// The mapping file (relative to the folder nzela runs in).
    pub mapping: PathBuf,
    /// Destination name(s): one delivery each.
    pub to: OneOrMany,
}

/// The threads that route, map and send: their number, and how much
/// lower their scheduling priority is than the intake's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Worker threads for routing, mapping and sending. Default: one per
    /// core.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Added to nzela's nice value on those threads (0 to 19; Linux).
    /// Default 10: when the cores are full, accepting messages (a commit
    /// and an answer) goes first and delivery takes what is left; the
    /// journal keeps what waits.
    #[serde(default = "default_delivery_nice")]
    pub nice: u8,
    /// Messages routed a second, at most, while many HTTP senders wait
    /// for their answers (the intake is busy); 0: routing never gives way.
    /// Default 500.
    #[serde(default = "default_rate_under_load")]
    pub rate_under_load: u32,
}

/// The most a nice value can be raised by (from 0 to 19).
pub const MAX_NICE: u8 = 19;

fn default_delivery_nice() -> u8 {
    10
}

fn default_rate_under_load() -> u32 {
    500
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            threads: None,
            nice: default_delivery_nice(),
            rate_under_load: default_rate_under_load(),
        }
    }
}

/// A name or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn names(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A configuration that passed every check, with its mappings compiled.
pub struct Config {
    pub journal: JournalConfig,
    pub log: LogConfig,
    pub delivery: DeliveryConfig,
    /// How long a stop waits for work in flight.
    pub shutdown_timeout: Duration,
    pub sources: BTreeMap<String, SourceConfig>,
    pub destinations: BTreeMap<String, DestinationConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Compiled mappings by their path as written.
    pub mappings: HashMap<PathBuf, Arc<Mapping>>,
    /// Compiled route conditions by route name.
    pub conditions: HashMap<String, Condition>,
    /// Things worth knowing that do not stop nzela (a source no route reads).
    pub warnings: Vec<Problem>,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    /// The line of the key, when the problem is about something in the file.
    pub line: Option<usize>,
    /// The key (`sources.marketplace_orders.listen`), when there is one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem of a configuration, and the warnings found beside them.
#[derive(Debug)]
pub struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Problems {
    fn one(problem: Problem) -> Problems {
        Problems {
            errors: vec![problem],
            warnings: Vec::new(),
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

struct Loader<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Named sections (`sources.NAME`) that were written but could not be
    /// read: their problem is reported once, and what names them is not
    /// reported again as naming nothing.
    broken: Vec<String>,
}

impl Loader<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        if !key.is_empty() {
            return self.problem_near(key, message);
        }
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: None,
            key: None,
            message: message.into(),
        });
    }

    fn warning(&mut self, key: &str, message: impl Into<String>) {
        let line = line_of(self.text, key);
        self.warnings.push(Problem {
            file: self.file.to_owned(),
            line,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    /// A warning at `key`, placed as [`Loader::problem_near`] places a
    /// problem.
    fn warning_near(&mut self, key: &str, message: impl Into<String>) {
        let warning = self.near(key, message.into());
        self.warnings.push(warning);
    }

    /// The top-level table `key`, taken out of `top`: its defaults when it
    /// is absent, and when it is broken (the problem is recorded).
    fn table_or_default<T: Section + Default>(
        &mut self,
        top: &mut serde_json::Map<String, Json>,
        key: &str,
    ) -> T {
        top.remove(key)
            .and_then(|v| self.section(key, v))
            .unwrap_or_default()
    }

    /// Reads one section; a problem names the field serde complained about
    /// when it can be told.
    ///
    /// An environment variable's value is always text: where text does not
    /// read and the setting wants a number or a boolean, the variable's
    /// value is read as one (`NZELA__DESTINATIONS__API__CONCURRENCY=4`),
    /// while a text setting keeps a value that looks like a number
    /// (`NZELA__SOURCES__INBOX__PATTERN=2026`).
    fn section<T: Section>(&mut self, key: &str, mut value: Json) -> Option<T> {
        let mut read_again: Vec<String> = Vec::new();
        let (error, path) = loop {
            let error = match serde_json::from_value::<T>(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let path = T::locate(value.clone());
            if let Some(p) = &path {
                let at = format!("{key}.{p}");
                if !read_again.contains(&at)
                    && env_sets(&at)
                    && let Some(slot) = value_at(&mut value, p)
                    && let Some(typed) = slot.as_str().and_then(typed_env_value)
                {
                    *slot = typed;
                    read_again.push(at);
                    continue;
                }
            }
            break (error, path);
        };
        let message = error.to_string();
        let mut at = key.to_owned();
        if let Some(path) = path {
            at = format!("{at}.{path}");
        }
        // "unknown field `x`" and "missing field `x`" name the field inside
        // the table they were found at.
        if (message.starts_with("unknown field") || message.starts_with("missing field"))
            && let Some(f) = quoted_field(&message)
        {
            at = format!("{at}.{f}");
        }
        self.problem_near(&at, tidy_serde_message(&message));
        None
    }

    /// A problem at `key`, on the line of the key or, when the key is not
    /// written in the file (a missing setting, an index into a list), of
    /// the nearest table that is; from an environment variable when one set
    /// the key.
    fn problem_near(&mut self, key: &str, message: impl Into<String>) {
        let problem = self.near(key, message.into());
        self.problems.push(problem);
    }

    /// A problem at `key`, on the line of the key or of the nearest table
    /// written in the file; naming the environment variable that set it.
    fn near(&self, key: &str, mut message: String) -> Problem {
        let mut line = None;
        let mut near = key;
        while line.is_none() && !near.is_empty() {
            line = line_of(self.text, near);
            near = near.rfind(['.', '[']).map_or("", |i| &near[..i]);
        }
        if let Some(var) = env_variable_for(key) {
            line = None;
            message = format!("{message} (set by the environment variable {var})");
        }
        Problem {
            file: self.file.to_owned(),
            line,
            key: Some(key.to_owned()),
            message,
        }
    }
}

/// A section of the configuration, and how to tell which of its settings
/// a problem is at.
trait Section: for<'de> Deserialize<'de> {
    /// The path (`retry.max_attempts`) of the setting that does not read,
    /// inside the section's table.
    fn locate(value: Json) -> Option<SettingPath> {
        path_of::<Self>(value)
    }
}

/// Where a setting is inside a section's table; shown as
/// `retry.max_attempts`.
type SettingPath = serde_path_to_error::Path;

/// The path serde stopped at when reading `value` as a `T`.
fn path_of<T: for<'de> Deserialize<'de>>(value: Json) -> Option<SettingPath> {
    let error = serde_path_to_error::deserialize::<_, T>(value).err()?;
    let path = error.path().clone();
    (path.iter().next().is_some()).then_some(path)
}

/// The value at `path` inside `value`, when it is there.
fn value_at<'a>(value: &'a mut Json, path: &SettingPath) -> Option<&'a mut Json> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |v, segment| match segment {
        Segment::Map { key } => v.as_object_mut()?.get_mut(key),
        Segment::Seq { index } => v.as_array_mut()?.get_mut(*index),
        Segment::Enum { .. } | Segment::Unknown => None,
    })
}

/// The text of an environment variable read as a number or a boolean,
/// when it is one.
fn typed_env_value(text: &str) -> Option<Json> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Some(Json::from(n));
    }
    if let Ok(n) = t.parse::<i64>() {
        return Some(Json::from(n));
    }
    if t.eq_ignore_ascii_case("true") {
        return Some(Json::Bool(true));
    }
    if t.eq_ignore_ascii_case("false") {
        return Some(Json::Bool(false));
    }
    t.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Json::Number)
}

/// A tagged table's settings without its `type`, and that type.
fn untagged(mut value: Json) -> Option<(String, Json)> {
    let ty = value.as_object_mut()?.remove("type")?;
    Some((ty.as_str()?.to_owned(), value))
}

impl Section for JournalConfig {}
impl Section for LogConfig {}
impl Section for DeliveryConfig {}
impl Section for RouteConfig {}

// A tagged enum reads its table whole before its variant: the path of a
// setting is found by reading the table as the type's own settings.
impl Section for SourceConfig {
    fn locate(value: Json) -> Option<SettingPath> {
        use nzela_connectors::{amqp, file, http_server};
        let (ty, value) = untagged(value)?;
        match ty.as_str() {
            "http_server" => path_of::<http_server::Config>(value),
            "file" => path_of::<file::SourceConfig>(value),
            "amqp" => path_of::<amqp::SourceConfig>(value),
            _ => None,
        }
    }
}

impl Section for DestinationConfig {
    fn locate(value: Json) -> Option<SettingPath> {
        use nzela_connectors::{amqp, file, http_client};
        let (ty, value) = untagged(value)?;
        match ty.as_str() {
            "http" => path_of::<http_client::Config>(value),
            "file" => path_of::<file::DestinationConfig>(value),
            "amqp" => path_of::<amqp::DestinationConfig>(value),
            _ => None,
        }
    }
}

/// The environment variable that sets `key` (`log.format` is set by
/// `NZELA__LOG__FORMAT`), when one is set.
fn env_variable_for(key: &str) -> Option<String> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    std::env::vars_os().find_map(|(name, _)| {
        let name = name.into_string().ok()?;
        let rest = name.strip_prefix(&prefix)?;
        let path = rest.to_lowercase().replace(ENV_SEPARATOR, ".");
        (key == path
            || key.starts_with(&format!("{path}."))
            || path.starts_with(&format!("{key}.")))
        .then_some(name)
    })
}

/// Whether an environment variable sets exactly the setting `key`.
fn env_sets(key: &str) -> bool {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    std::env::vars_os().any(|(name, _)| {
        name.to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|rest| rest.to_lowercase().replace(ENV_SEPARATOR, ".") == key)
    })
}

/// Loads and checks the configuration file (with environment overrides).
pub fn load(file: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Problems::one(Problem {
            file: file.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the configuration: {e}"),
        })
    })?;
    let mut l = Loader {
        file,
        text: &text,
        problems: Vec::new(),
        warnings: Vec::new(),
        broken: Vec::new(),
    };
    let merged = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        // Values from the environment stay text here; a section reads them
        // as numbers or booleans where its settings want them.
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR),
        )
        .build()
        .and_then(|c| c.try_deserialize::<Json>());
    let mut root = match merged {
        Ok(v) => v,
        Err(e) => {
            // The TOML itself is broken: its parser says where.
            let line = toml::de::DeTable::parse(&text)
                .err()
                .and_then(|e| e.span())
                .map(|s| line_at(&text, s.start));
            return Err(Problems::one(Problem {
                file: file.to_owned(),
                line,
                key: None,
                message: e.to_string(),
            }));
        }
    };
    resolve_secrets(&mut root, "", &mut l);
    let Json::Object(mut top) = root else {
        l.problem("", "the configuration must be a table of settings");
        return Err(Problems {
            errors: l.problems,
            warnings: l.warnings,
        });
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            let msg = format!(
                "unknown setting `{key}`; the settings are: {}",
                TOP_KEYS.join(", ")
            );
            l.problems.push(Problem {
                file: file.to_owned(),
                line: line_of(&text, key),
                key: Some(key.clone()),
                message: msg,
            });
        }
    }
    let journal: JournalConfig = l.table_or_default(&mut top, "journal");
    let log: LogConfig = l.table_or_default(&mut top, "log");
    if !matches!(log.format.as_str(), "text" | "json") {
        l.problem(
            "log.format",
            format!("\"{}\" is not a log format: text or json", log.format),
        );
    }
    let delivery: DeliveryConfig = l.table_or_default(&mut top, "delivery");
    if delivery.nice > MAX_NICE {
        l.problem(
            "delivery.nice",
            format!(
                "{} is not a nice value to add: from 0 (the intake's priority) to {MAX_NICE} (the lowest)",
                delivery.nice
            ),
        );
    }
    if delivery.threads == Some(0) {
        l.problem(
            "delivery.threads",
            "0 threads: delivery needs at least one thread",
        );
    }
    let shutdown_timeout = match top.remove("shutdown_timeout") {
        None => Duration::from_secs(10),
        Some(v) => match nzela_connectors::common::parse_duration_value(&v) {
            Ok(d) => d,
            Err(e) => {
                l.problem("shutdown_timeout", e);
                Duration::from_secs(10)
            }
        },
    };
    let sources: BTreeMap<String, SourceConfig> = named_sections(&mut l, &mut top, "sources");
    let destinations: BTreeMap<String, DestinationConfig> =
        named_sections(&mut l, &mut top, "destinations");
    let routes: BTreeMap<String, RouteConfig> = named_sections(&mut l, &mut top, "routes");
    check_connectors(&mut l, &sources, &destinations);

    // Reply sources: a destination's answers become messages from them.
    let mut source_names: Vec<String> = sources.keys().cloned().collect();
    for (name, d) in &destinations {
        if let Some(reply) = d.dispatch_settings(name).reply_to {
            if sources.contains_key(&reply) {
                l.problem(&format!("destinations.{name}.reply_to"), format!("\"{reply}\" is already the name of a source; name the replies' source differently"));
            }
            source_names.push(reply);
        }
    }

    let mut mappings: HashMap<PathBuf, Arc<Mapping>> = HashMap::new();
    let mut conditions = HashMap::new();
    let mut used_sources = Vec::new();
    let mut used_destinations = Vec::new();
    if routes.is_empty() {
        l.warning(
            "routes",
            "no route is configured: messages are accepted and kept, but go nowhere",
        );
    }
    for (name, route) in &routes {
        if route.from.names().is_empty() {
            l.problem(
                &format!("routes.{name}.from"),
                "a route needs at least one source",
            );
        }
        for s in route.from.names() {
            if !source_names.contains(&s) && !l.broken.contains(&format!("sources.{s}")) {
                l.problem(
                    &format!("routes.{name}.from"),
                    format!("no source named \"{s}\" (sources: {})", list(&source_names)),
                );
            }
            used_sources.push(s);
        }
        for d in route.to.names() {
            if !destinations.contains_key(&d) && !l.broken.contains(&format!("destinations.{d}")) {
                let names: Vec<String> = destinations.keys().cloned().collect();
                l.problem(
                    &format!("routes.{name}.to"),
                    format!(
                        "no destination named \"{d}\" (destinations: {})",
                        list(&names)
                    ),
                );
            }
            used_destinations.push(d);
        }
        if route.to.names().is_empty() {
            l.problem(
                &format!("routes.{name}.to"),
                "a route needs at least one destination",
            );
        }
        let to = route.to.names();
        for (i, d) in to.iter().enumerate() {
            // Once per name, at its second appearance.
            if to[..i].iter().filter(|&x| x == d).count() == 1 {
                l.problem(
                    &format!("routes.{name}.to"),
                    format!("\"{d}\" is listed more than once: each message would be delivered to it as many times"),
                );
            }
        }
        if let Some(when) = &route.when {
            match Condition::compile(when) {
                Ok(c) => {
                    conditions.insert(name.clone(), c);
                }
                Err(e) => l.problem(&format!("routes.{name}.when"), e),
            }
        }
        if !mappings.contains_key(&route.mapping) {
            match Mapping::load(&route.mapping) {
                Ok(m) => {
                    mappings.insert(route.mapping.clone(), Arc::new(m));
                }
                Err(e) => {
                    if e.diagnostics.len() == 1
                        && e.diagnostics[0].message.starts_with("cannot read")
                    {
                        l.problem(
                            &format!("routes.{name}.mapping"),
                            format!("{}: {}", route.mapping.display(), e.diagnostics[0].message),
                        );
                    } else {
                        l.problem(
                            &format!("routes.{name}.mapping"),
                            format!("the mapping {} has errors:", route.mapping.display()),
                        );
                        for d in &e.diagnostics {
                            l.problems.push(Problem {
                                file: e.file.clone(),
                                line: Some(d.line),
                                key: None,
                                message: match &d.help {
                                    Some(h) => {
                                        format!("column {}: {} (help: {h})", d.column, d.message)
                                    }
                                    None => format!("column {}: {}", d.column, d.message),
                                },
                            });
                        }
                    }
                }
            }
        }
        // Each message is decoded as the mapping's input says.
        if let Some(mapping) = mappings.get(&route.mapping) {
            let input = mapping.input().format();
            for s in route.from.names() {
                if let Some(source) = sources.get(&s)
                    && source.format().format() != input
                {
                    l.problem(
                        &format!("routes.{name}.mapping"),
                        format!(
                            "{} reads {input} (its `input`), but the source \"{s}\" takes {} (sources.{s}.format): its messages could not be mapped",
                            route.mapping.display(),
                            source.format()
                        ),
                    );
                }
            }
        }
    }
    for name in sources.keys() {
        if !used_sources.contains(name) {
            l.warning(
                &format!("sources.{name}"),
                "no route reads this source: its messages are kept as unrouted",
            );
        }
    }
    for name in destinations.keys() {
        if !used_destinations.contains(name) {
            l.warning(
                &format!("destinations.{name}"),
                "no route sends to this destination",
            );
        }
    }
    if !l.problems.is_empty() {
        return Err(Problems {
            errors: l.problems,
            warnings: l.warnings,
        });
    }
    Ok(Config {
        journal,
        log,
        delivery,
        shutdown_timeout,
        sources,
        destinations,
        routes,
        mappings,
        conditions,
        warnings: l.warnings,
    })
}

/// Reads `[<kind>.<name>]` sections one by one, so that every broken one
/// is reported.
fn named_sections<T: Section>(
    l: &mut Loader<'_>,
    top: &mut serde_json::Map<String, Json>,
    kind: &str,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match top.remove(kind) {
        None => {}
        Some(Json::Object(entries)) => {
            for (name, value) in entries {
                let key = format!("{kind}.{name}");
                if !is_name(&name) {
                    l.problem(
                        &key,
                        format!("\"{name}\" cannot be a name: use letters, digits, '_' and '-'"),
                    );
                    l.broken.push(key);
                    continue;
                }
                match l.section::<T>(&key, value) {
                    Some(v) => {
                        out.insert(name, v);
                    }
                    None => l.broken.push(key),
                }
            }
        }
        Some(_) => l.problem(
            kind,
            format!("`{kind}` is a table of named sections: [{kind}.NAME]"),
        ),
    }
    out
}

fn check_connectors(
    l: &mut Loader<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    destinations: &BTreeMap<String, DestinationConfig>,
) {
    // What building a destination reads from files.
    for (name, d) in destinations {
        if let DestinationConfig::Http(h) = d
            && let Err(e) = nzela_connectors::http_client::check_files(h)
        {
            l.problem(&format!("destinations.{name}.tls.ca_file"), e);
        }
    }
    // Retries wait from `initial_backoff`, doubling, up to `max_backoff`.
    for (name, d) in destinations {
        let retry = d.dispatch_settings(name).retry;
        if retry.initial_backoff > retry.max_backoff {
            let key = format!("destinations.{name}.retry");
            let written = |setting: &str| line_of(l.text, &format!("{key}.{setting}")).is_some();
            let setting = if !written("initial_backoff") && written("max_backoff") {
                "max_backoff"
            } else {
                "initial_backoff"
            };
            l.problem(
                &format!("{key}.{setting}"),
                format!(
                    "initial_backoff ({}) is longer than max_backoff ({}): the first wait would already be over the longest",
                    DurationValue(retry.initial_backoff),
                    DurationValue(retry.max_backoff)
                ),
            );
        }
    }
    // Two HTTP endpoints on one address cannot share a path; they share
    // one server, and with it the shortest `header_read_timeout`.
    let mut endpoints: Vec<(&String, &http_server::Config)> = Vec::new();
    for (name, s) in sources {
        if let SourceConfig::HttpServer(h) = s {
            if let Some((other, _)) = endpoints
                .iter()
                .find(|(_, o)| o.listen == h.listen && o.path == h.path)
            {
                l.problem(
                    &format!("sources.{name}.path"),
                    format!(
                        "{} on {} is already the path of source \"{other}\"",
                        h.path, h.listen
                    ),
                );
            }
            endpoints.push((name, h));
        }
    }
    for (name, h) in &endpoints {
        let shortest = endpoints
            .iter()
            .filter(|(_, o)| o.listen == h.listen)
            .min_by_key(|(_, o)| o.header_read_timeout);
        if let Some((other, o)) = shortest
            && o.header_read_timeout < h.header_read_timeout
        {
            l.warning_near(
                &format!("sources.{name}.header_read_timeout"),
                format!(
                    "{} does not apply: the endpoints on {} share one server, and the shortest header_read_timeout, {} (source \"{other}\"), applies to all of them",
                    h.header_read_timeout, h.listen, o.header_read_timeout
                ),
            );
        }
    }
    check_folders(l, sources, destinations);
}

/// An outbox must not be an inbox, nor where an inbox puts the files it
/// took or refused: folders are compared as absolute paths, with `.` and
/// `..` resolved and without trailing separators (as written: symbolic
/// links are not followed).
///
/// An inbox reads only its own files, not those of folders inside it, so
/// an outbox inside an inbox (or an inbox inside an outbox) is fine.
fn check_folders(
    l: &mut Loader<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    destinations: &BTreeMap<String, DestinationConfig>,
) {
    let here = std::env::current_dir().ok();
    let folder = |p: &Path| normalize(p, here.as_deref());
    for (sname, s) in sources {
        let SourceConfig::File(fs) = s else { continue };
        let inbox = folder(&fs.path);
        for (setting, dir) in [("done", &fs.done), ("error", &fs.error)] {
            if let Some(dir) = dir
                && folder(dir) == inbox
            {
                l.problem(
                    &format!("sources.{sname}.{setting}"),
                    format!(
                        "{} is the inbox itself ({}): its files would be read again",
                        dir.display(),
                        fs.path.display()
                    ),
                );
            }
        }
        let taken = [
            ("inbox", inbox),
            ("`done` folder", folder(&fs.done_dir())),
            ("`error` folder", folder(&fs.error_dir())),
        ];
        for (dname, d) in destinations {
            let DestinationConfig::File(fd) = d else {
                continue;
            };
            let outbox = folder(&fd.path);
            if let Some((what, _)) = taken.iter().find(|(_, dir)| *dir == outbox) {
                l.problem(
                    &format!("destinations.{dname}.path"),
                    format!(
                        "{} is also the {what} of source \"{sname}\"",
                        fd.path.display()
                    ),
                );
            }
        }
    }
    // Two inboxes on one folder race for its files, unless their patterns
    // share them out.
    let inboxes: Vec<_> = sources
        .iter()
        .filter_map(|(name, s)| match s {
            SourceConfig::File(fs) => Some((name, fs, folder(&fs.path))),
            _ => None,
        })
        .collect();
    for (i, (name, fs, inbox)) in inboxes.iter().enumerate() {
        let same = |p: &Option<nzela_connectors::file::Pattern>| match (&fs.pattern, p) {
            (Some(a), Some(b)) => a.as_str() == b.as_str(),
            _ => true,
        };
        if let Some((first, _, _)) = inboxes[..i]
            .iter()
            .find(|(_, other, dir)| dir == inbox && same(&other.pattern))
        {
            l.warning_near(
                &format!("sources.{name}.path"),
                format!(
                    "{} is also the inbox of source \"{first}\", with the same files to take: each file goes to whichever takes it first (give each a `pattern` of its own)",
                    fs.path.display()
                ),
            );
        }
    }
    // Two outboxes on one folder whose file names can be the same write
    // over each other's files.
    let outboxes: Vec<_> = destinations
        .iter()
        .filter_map(|(name, d)| match d {
            DestinationConfig::File(fd) => Some((name, fd, folder(&fd.path))),
            _ => None,
        })
        .collect();
    for (i, (name, fd, outbox)) in outboxes.iter().enumerate() {
        let filename = fd.filename.as_str();
        if filename.contains("delivery_id") {
            continue;
        }
        if let Some((first, _, _)) = outboxes[..i]
            .iter()
            .find(|(_, other, dir)| dir == outbox && other.filename.as_str() == filename)
        {
            l.warning_near(
                &format!("destinations.{name}.filename"),
                format!(
                    "{} is also the outbox of destination \"{first}\", with the same file names ({filename}): one's files replace the other's (put {{{{ delivery_id }}}} in the name, or use another folder)",
                    fd.path.display()
                ),
            );
        }
    }
}

/// `path` as an absolute path (relative to `base`, when it is known),
/// without `.`, `..` or trailing separators. Lexical: symbolic links are
/// not resolved.
fn normalize(path: &Path, base: Option<&Path>) -> PathBuf {
    use std::path::Component;
    let joined;
    let path = match base {
        Some(base) if path.is_relative() => {
            joined = base.join(path);
            &joined
        }
        _ => path,
    };
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Replaces `${env:NAME}` and `${file:PATH}` in every string, so that
/// secrets never need to be written in the file.
fn resolve_secrets(v: &mut Json, key: &str, l: &mut Loader<'_>) {
    match v {
        Json::String(s) if s.contains("${") => match interpolate(s) {
            Ok(r) => *s = r,
            Err(e) => l.problem(key, e),
        },
        Json::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_secrets(item, &format!("{key}[{i}]"), l);
            }
        }
        Json::Object(map) => {
            for (k, item) in map.iter_mut() {
                let child = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                resolve_secrets(item, &child, l);
            }
        }
        _ => {}
    }
}

/// `${env:NAME}` → the variable; `${env:NAME:-default}` → the variable,
/// or `default` when it is unset or empty; `${file:PATH}` → the file's
/// content without its final line break; `$${` → a literal `${`.
pub fn interpolate(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            return Err(format!("\"{s}\": `${{` without its closing `}}`"));
        };
        let reference = &rest[i + 2..i + end];
        let value = match reference.split_once(':') {
            Some(("env", name)) => match name.split_once(":-") {
                // `${env:NAME:-default}`: the default when NAME is unset or empty.
                Some((name, default)) => std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| default.to_owned()),
                None => std::env::var(name)
                    .map_err(|_| format!("the environment variable {name} is not set"))?,
            },
            Some(("file", path)) => std::fs::read_to_string(path)
                .map(|t| {
                    t.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&t)
                        .to_owned()
                })
                .map_err(|e| format!("cannot read the secret file {path}: {e}"))?,
            _ => {
                return Err(format!(
                    "\"${{{reference}}}\": write ${{env:NAME}} or ${{file:PATH}}"
                ));
            }
        };
        out.push_str(&value);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The field a serde message names in backquotes (`unknown field `listn``).
fn quoted_field(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn tidy_serde_message(m: &str) -> String {
    m.replace("unknown variant", "unknown type")
        .replace("missing field", "missing setting")
        .replace("unknown field", "unknown setting")
}

/// The 1-based line of `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line where a dotted key (`sources.x.listen`) is written, if it is.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut line = None;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part)?;
        line = Some(line_at(text, k.span().start));
        if i + 1 < parts.len() {
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return line,
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_on_their_lines() {
        let text = "[journal]\npath = \"x\"\n\n[sources.orders]\ntype = \"file\"\npath = \"in\"\n";
        assert_eq!(line_of(text, "journal.path"), Some(2));
        assert_eq!(line_of(text, "sources.orders"), Some(4));
        assert_eq!(line_of(text, "sources.orders.path"), Some(6));
        assert_eq!(line_of(text, "sources.nope"), None);
    }

    #[test]
    fn folders_are_compared_as_absolute_paths_without_dots_or_trailing_separators() {
        let here = Path::new("/srv/nzela");
        let out = PathBuf::from("/srv/nzela/data/out");
        for written in [
            "data/out",
            "./data/out",
            "data/out/",
            "data//out",
            "data/in/../out/.",
            "/srv/nzela/data/out",
            "/srv/../srv/nzela/data/out",
        ] {
            assert_eq!(normalize(Path::new(written), Some(here)), out, "{written}");
        }
        assert_eq!(normalize(Path::new("/../a"), None), PathBuf::from("/a"));
        assert_eq!(
            normalize(Path::new("../a/./b/"), None),
            PathBuf::from("../a/b")
        );
    }

    #[test]
    fn secrets_come_from_the_environment_or_files() {
        // SAFETY of set_var: this test owns the variable name.
        unsafe { std::env::set_var("NZELA_TEST_SECRET", "s3cret") };
        assert_eq!(
            interpolate("Bearer ${env:NZELA_TEST_SECRET}").unwrap(),
            "Bearer s3cret"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "abc\n").unwrap();
        assert_eq!(
            interpolate(&format!("${{file:{}}}", f.display())).unwrap(),
            "abc"
        );
        assert_eq!(
            interpolate("literal $${env:X}").unwrap(),
            "literal ${env:X}"
        );
        assert!(
            interpolate("${env:NZELA_TEST_UNSET_VARIABLE}")
                .unwrap_err()
                .contains("is not set")
        );
        assert_eq!(
            interpolate("${env:NZELA_TEST_UNSET_VARIABLE:-amqp://guest:guest@127.0.0.1:5672/%2f}")
                .unwrap(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            interpolate("${env:NZELA_TEST_SECRET:-fallback}").unwrap(),
            "s3cret"
        );
        assert!(interpolate("${vault:x}").is_err());
        assert!(interpolate("${env:X").is_err());
    }

    #[test]
    fn environment_text_is_read_as_a_number_or_a_boolean_when_it_is_one() {
        assert_eq!(typed_env_value("4"), Some(Json::from(4)));
        assert_eq!(typed_env_value(" -2 "), Some(Json::from(-2)));
        assert_eq!(typed_env_value("TRUE"), Some(Json::Bool(true)));
        assert_eq!(typed_env_value("false"), Some(Json::Bool(false)));
        assert_eq!(typed_env_value("0.5"), Some(Json::from(0.5)));
        assert_eq!(typed_env_value("fast"), None);
        assert_eq!(typed_env_value("NaN"), None);
    }
}
