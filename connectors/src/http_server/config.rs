//! The settings of one HTTP endpoint (`type = "http_server"`).

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::common::{BusinessKey, ByteSize, DurationValue, SourceFormat};
use nzela_core::codec::Format;

/// One HTTP endpoint: messages `POST`ed to `path` on `listen`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on, such as `"127.0.0.1:8080"` or
    /// `"0.0.0.0:8080"`. Required. Endpoints with the same `listen` share
    /// one server (and its `GET /health`).
    #[serde(deserialize_with = "listen_address")]
    pub listen: String,
    /// The endpoint's path, such as `"/in/marketplace/orders"`; messages
    /// are `POST`ed to it. Required. Matched exactly; `/health` is taken.
    #[serde(deserialize_with = "endpoint_path")]
    pub path: String,
    /// `"json"`, `"xml"` or `"csv"`: a body that does not decode in this
    /// format is refused with 400. Required.
    pub format: SourceFormat,
    /// The accepted `Content-Type`s, without parameters (`; charset=utf-8`
    /// is allowed on requests). Default by format: json →
    /// `application/json`; xml → `application/xml`, `text/xml`; csv →
    /// `text/csv`.
    #[serde(default, deserialize_with = "media_types")]
    pub content_types: Option<Vec<String>>,
    /// Largest body accepted; a larger one is refused with 413. Default
    /// `"10MiB"`.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: ByteSize,
    /// A path in the message (`order.order_id`) whose value is its
    /// business key: the message can be found by it, and a message resent
    /// with the same key (and no `Idempotency-Key`) is a duplicate.
    /// Default: none.
    #[serde(default)]
    pub business_key: Option<BusinessKey>,
    /// Deepest nesting of objects/arrays (JSON) or elements (XML) accepted;
    /// deeper is refused with 400. Default 64.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Longest wait for a request's line and headers, from the moment the
    /// server is ready to read them (a new connection, or a keep-alive
    /// connection between requests): a client that sends less within it is
    /// disconnected. Default `"30s"`. Endpoints that share an address share
    /// one server: the shortest of their settings applies to all of them.
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "header_read_timeout"
    )]
    pub header_read_timeout: DurationValue,
}

impl Config {
    /// `header_read_timeout` when it is not set.
    pub const DEFAULT_HEADER_READ_TIMEOUT: DurationValue = DurationValue::secs(30);

    /// The media types this endpoint accepts, lower-case.
    pub fn accepted_content_types(&self) -> Vec<String> {
        match &self.content_types {
            Some(list) => list.clone(),
            None => default_content_types(self.format.format())
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

fn default_content_types(format: Format) -> &'static [&'static str] {
    match format {
        Format::Json => &["application/json"],
        Format::Xml => &["application/xml", "text/xml"],
        Format::Csv => &["text/csv"],
    }
}

fn default_max_body_size() -> ByteSize {
    ByteSize::mib(10)
}

fn default_max_depth() -> usize {
    64
}

fn default_header_read_timeout() -> DurationValue {
    Config::DEFAULT_HEADER_READ_TIMEOUT
}

fn header_read_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<DurationValue, D::Error> {
    let v = DurationValue::deserialize(d)?;
    if v.get().is_zero() {
        return Err(de::Error::custom(
            "`header_read_timeout` must be longer than 0 (e.g. \"30s\")",
        ));
    }
    Ok(v)
}

fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let port = s
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(_))) if !host.is_empty() => Ok(s),
        _ => Err(de::Error::custom(format!(
            "`listen`: \"{s}\" is not an address and port: write e.g. 127.0.0.1:8080 or 0.0.0.0:8080"
        ))),
    }
}

fn endpoint_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with('/') {
        return Err(de::Error::custom(format!(
            "`path`: \"{s}\" must start with '/'"
        )));
    }
    if s == super::HEALTH_PATH {
        return Err(de::Error::custom(format!(
            "`path`: {s} is taken by the health check"
        )));
    }
    if s.contains(['?', '#']) || s.chars().any(char::is_whitespace) {
        return Err(de::Error::custom(format!(
            "`path`: \"{s}\" is not a plain path (no '?', '#' or spaces)"
        )));
    }
    Ok(s)
}

fn media_types<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::custom(
            "`content_types` is empty: no request could be accepted",
        ));
    }
    list.into_iter()
        .map(|t| {
            let t = t.trim().to_ascii_lowercase();
            match t.split_once('/') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !t.contains([';', ' ']) => Ok(t),
                _ => Err(de::Error::custom(format!(
                    "`content_types`: \"{t}\" is not a media type such as application/json (write it without parameters)"
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
