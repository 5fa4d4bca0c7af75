//! The settings of an HTTP destination (`type = "http"`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use nzela_core::runtime::dispatch::DispatchSettings;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::common::{DurationValue, RetryConfig, default_concurrency, dispatch_settings};
use crate::template::{Template, Templates, sample};

/// Time the dispatcher allows one attempt beyond the connector's own
/// `timeout`, so that the connector's clearer timeout error wins.
const ATTEMPT_MARGIN: Duration = Duration::from_secs(5);

/// An HTTP endpoint that deliveries are sent to, one request per attempt.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The URL, a template (variables: delivery_id, message_id, route,
    /// destination, attempt, business_key, correlation_id, extension), such
    /// as `"https://customs.example/api/declarations/{{ business_key }}"`.
    /// Required; `http` or `https`.
    #[serde(deserialize_with = "url_template")]
    pub url: Template,
    /// The request method. Default `"POST"`.
    #[serde(default = "default_method", deserialize_with = "http_method")]
    pub method: String,
    /// Extra request headers, name → value; values are templates (with the
    /// same variables as `url`). Secrets come from `${env:...}` or
    /// `${file:...}`. Default: none.
    #[serde(default, deserialize_with = "header_templates")]
    pub headers: BTreeMap<String, Template>,
    /// Longest time for one attempt, from connecting to the end of the
    /// answer; past it the attempt failed for now and is retried. Default
    /// `"30s"`.
    #[serde(default = "default_timeout")]
    pub timeout: DurationValue,
    /// The request's `Content-Type`. Default: the delivery's own (that of
    /// the mapping's output: `application/xml`, `application/json`,
    /// `text/csv`).
    #[serde(default, deserialize_with = "content_type")]
    pub content_type: Option<String>,
    /// The header that carries the delivery id, the same on every attempt
    /// and on a replay, so the peer can recognise a resend. Default
    /// `"Idempotency-Key"`.
    #[serde(
        default = "default_idempotency_header",
        deserialize_with = "header_name"
    )]
    pub idempotency_header: String,
    /// TLS settings beyond the system's trusted certificates. Default:
    /// none.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Deliveries in flight at once to this destination. Default 8.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// When to give up on a delivery that keeps failing for now (a table:
    /// `max_attempts`, `initial_backoff`, `max_backoff`, `max_age`).
    /// Default: 10 attempts, 1s doubling up to 5m, for at most 24h.
    #[serde(default)]
    pub retry: RetryConfig,
    /// A source name: each answer of this destination (a 2xx body) becomes
    /// a new message from that source, correlated with the message it
    /// answers. Default: none (answers are not kept).
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// TLS settings of an HTTP destination.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of extra certificate authorities to trust besides the
    /// system's (a ministry's own CA). Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate, unchecked. Only for a test peer: it
    /// lets anyone on the path read and change the traffic. Default
    /// `false`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl Config {
    /// How the dispatcher sends to this destination.
    pub fn dispatch_settings(&self, name: &str) -> DispatchSettings {
        let attempt_timeout = self.timeout.get() + ATTEMPT_MARGIN;
        dispatch_settings(
            name,
            self.concurrency,
            &self.retry,
            self.reply_to.as_ref(),
            attempt_timeout,
        )
    }

    /// The templates, compiled: `url` and `headers.<name>`.
    pub(crate) fn templates(&self) -> Result<Templates, String> {
        let mut t = Templates::default();
        t.add("url", &self.url)?;
        for (name, value) in &self.headers {
            t.add(&header_template_name(name), value)?;
        }
        Ok(t)
    }
}

pub(crate) fn header_template_name(header: &str) -> String {
    format!("headers.{header}")
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_timeout() -> DurationValue {
    DurationValue::secs(30)
}

fn default_idempotency_header() -> String {
    "Idempotency-Key".to_owned()
}

/// Renders a checked template with every variable set.
fn render_sample(name: &str, template: &Template) -> Result<String, String> {
    let mut t = Templates::default();
    t.add(name, template)?;
    t.render(name, &sample())
}

fn url_template<'de, D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
    let t = Template::deserialize_field(d, "url")?;
    let rendered = render_sample("url", &t).map_err(de::Error::custom)?;
    match reqwest::Url::parse(&rendered) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(t),
        Ok(u) => Err(de::Error::custom(format!(
            "`url`: \"{t}\" is a {} URL: write an http:// or https:// URL",
            u.scheme()
        ))),
        Err(e) => Err(de::Error::custom(format!(
            "`url`: \"{t}\" does not make a URL ({e})"
        ))),
    }
}

fn http_method<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?.to_ascii_uppercase();
    match reqwest::Method::from_bytes(s.as_bytes()) {
        Ok(_) if !s.is_empty() => Ok(s),
        _ => Err(de::Error::custom(format!(
            "`method`: \"{s}\" is not an HTTP method such as POST or PUT"
        ))),
    }
}

/// Headers set by the connector itself, which `headers` may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

fn header_templates<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Template>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let field = header_template_name(&name);
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(de::Error::custom(format!(
                "`{field}`: \"{name}\" is not a header name"
            )));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(de::Error::custom(format!(
                "`{field}`: {name} is set by nzela (use `content_type` for the Content-Type)"
            )));
        }
        let t = Template::parse(&value)
            .map_err(|e| de::Error::custom(format!("`{field}` is not a valid template: {e}")))?;
        let rendered = render_sample(&field, &t).map_err(de::Error::custom)?;
        if HeaderValue::from_str(&rendered).is_err() {
            return Err(de::Error::custom(format!(
                "`{field}`: \"{value}\" does not make a header value (no line breaks or control characters)"
            )));
        }
        out.insert(name, t);
    }
    Ok(out)
}

fn content_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match HeaderValue::from_str(&s) {
        Ok(_) if s.contains('/') => Ok(Some(s)),
        _ => Err(de::Error::custom(format!(
            "`content_type`: \"{s}\" is not a media type such as application/xml"
        ))),
    }
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(_) => Ok(s),
        Err(_) => Err(de::Error::custom(format!(
            "`idempotency_header`: \"{s}\" is not a header name"
        ))),
    }
}
