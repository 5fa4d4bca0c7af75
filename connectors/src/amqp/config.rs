//! The settings of an AMQP source (`type = "amqp"` in `[sources.NAME]`) and
//! of an AMQP destination (`type = "amqp"` in `[destinations.NAME]`), and
//! the topology either may declare.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroUsize};
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri};
use nzela_core::runtime::dispatch::DispatchSettings;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::common::{
    BusinessKey, ByteSize, DurationValue, RetryConfig, SourceFormat, dispatch_settings,
};
use crate::template::{Template, Templates, sample};

/// Time the dispatcher allows one attempt beyond `confirm_timeout`, so
/// that the connector's clearer error wins.
const ATTEMPT_MARGIN: Duration = Duration::from_secs(5);

/// Longest AMQP short string (exchange and queue names, routing keys,
/// message ids), in bytes.
pub(crate) const MAX_SHORT_STRING: usize = 255;

/// A queue nzela consumes: each delivery becomes a message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The broker, `amqp://user:password@host:5672/vhost` (`amqps://` for
    /// TLS; `%2f` is the default vhost `/`), or a list of URLs tried in
    /// turn (the nodes of a cluster). `urls` is accepted as well. Required.
    #[serde(alias = "urls", deserialize_with = "broker_urls")]
    pub url: Vec<BrokerUrl>,
    /// The queue to consume. Required.
    #[serde(deserialize_with = "queue_name")]
    pub queue: String,
    /// Deliveries the broker hands over before nzela has acknowledged
    /// earlier ones (`basic.qos`); they are committed to the journal
    /// concurrently. Default 100.
    #[serde(default = "default_prefetch")]
    pub prefetch: NonZeroU16,
    /// The consumer tag, shown by the broker's tools. Default
    /// `nzela-<source name>`.
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// `"json"`, `"xml"` or `"csv"`: a body that does not decode in this
    /// format is kept in the journal as `rejected` and rejected to the
    /// queue's dead-letter exchange. Required.
    pub format: SourceFormat,
    /// A path in the message (`order.order_id`) whose value is its business
    /// key: the message can be found by it, and a message sent again with
    /// the same key (and no `message_id`) is a duplicate. Default: none.
    #[serde(default)]
    pub business_key: Option<BusinessKey>,
    /// Largest body accepted; a larger one is rejected. Default `"10MiB"`.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: ByteSize,
    /// Deepest nesting of objects/arrays (JSON) or elements (XML)
    /// accepted; a deeper body is rejected. Default 64.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Longest wait to connect to one URL. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationValue,
    /// Wait before reconnecting after the broker was lost; it doubles at
    /// each failed attempt, with jitter. Default `"100ms"`.
    #[serde(default = "default_reconnect_backoff")]
    pub reconnect_backoff: DurationValue,
    /// Longest wait between two attempts to reconnect. Default `"5s"`.
    #[serde(default = "default_reconnect_max_backoff")]
    pub reconnect_max_backoff: DurationValue,
    /// Exchanges, queues and bindings declared at every (re)connection,
    /// before consuming. Default: none.
    #[serde(default)]
    pub topology: Topology,
}

impl SourceConfig {
    pub(crate) fn connection(&self) -> ConnectionSettings {
        ConnectionSettings {
            urls: self.url.clone(),
            connect_timeout: self.connect_timeout.get(),
            reconnect_backoff: self.reconnect_backoff.get(),
            reconnect_max_backoff: self.reconnect_max_backoff.get(),
            topology: self.topology.clone(),
        }
    }
}

/// An exchange nzela publishes to: each delivery is one message, confirmed
/// by the broker.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The broker, or a list of URLs tried in turn, as for a source.
    /// Required.
    #[serde(alias = "urls", deserialize_with = "broker_urls")]
    pub url: Vec<BrokerUrl>,
    /// The exchange to publish to; `""` is the default exchange (the
    /// routing key is then a queue name). Required.
    #[serde(deserialize_with = "exchange_name")]
    pub exchange: String,
    /// The routing key, a template (variables: delivery_id, message_id,
    /// route, destination, attempt, business_key, correlation_id,
    /// extension), such as `"declaration.export"`. Required.
    #[serde(deserialize_with = "routing_key_template")]
    pub routing_key: Template,
    /// The message's `content_type`. Default: the delivery's own (that of
    /// the mapping's output: `application/xml`, `application/json`,
    /// `text/csv`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Application headers, name → value; values are templates. Default:
    /// none.
    #[serde(default, deserialize_with = "header_templates")]
    pub headers: BTreeMap<String, Template>,
    /// Persistent messages (delivery mode 2) survive a broker restart in a
    /// durable queue. Default `true`.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// Longest wait for the broker's confirm of one message; past it the
    /// attempt failed for now and is retried. Default `"30s"`.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: DurationValue,
    /// Longest wait to connect to one URL. Default `"10s"`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationValue,
    /// Wait before reconnecting after the broker was lost; it doubles at
    /// each failed attempt, with jitter. Default `"100ms"`.
    #[serde(default = "default_reconnect_backoff")]
    pub reconnect_backoff: DurationValue,
    /// Longest wait between two attempts to reconnect. Default `"5s"`.
    #[serde(default = "default_reconnect_max_backoff")]
    pub reconnect_max_backoff: DurationValue,
    /// Exchanges, queues and bindings declared at every (re)connection,
    /// before publishing. Default: none.
    #[serde(default)]
    pub topology: Topology,
    /// Deliveries in flight at once (published, awaiting their confirm).
    /// Default 1024: a broker confirms in batches, after its own fsync, so a
    /// publisher that waits on few confirms at a time is held to a few
    /// hundred messages a second whatever the broker could take; and
    /// nzela's own commits lie between a delivery and the next, so the
    /// window must cover both. Each holds its document in memory.
    #[serde(default = "default_publish_concurrency")]
    pub concurrency: NonZeroUsize,
    /// When to give up on a delivery that keeps failing for now (a table:
    /// `max_attempts`, `initial_backoff`, `max_backoff`, `max_age`).
    /// Default: 10 attempts, 1s doubling up to 5m, for at most 24h.
    #[serde(default)]
    pub retry: RetryConfig,
}

impl DestinationConfig {
    /// How the dispatcher sends to this destination. A publish has no
    /// answer, so there is no `reply_to`.
    pub fn dispatch_settings(&self, name: &str) -> DispatchSettings {
        dispatch_settings(
            name,
            self.concurrency,
            &self.retry,
            None,
            self.confirm_timeout.get() + ATTEMPT_MARGIN,
        )
    }

    pub(crate) fn connection(&self) -> ConnectionSettings {
        ConnectionSettings {
            urls: self.url.clone(),
            connect_timeout: self.connect_timeout.get(),
            reconnect_backoff: self.reconnect_backoff.get(),
            reconnect_max_backoff: self.reconnect_max_backoff.get(),
            topology: self.topology.clone(),
        }
    }

    pub(crate) fn templates(&self) -> Result<Templates, String> {
        let mut t = Templates::default();
        t.add("routing_key", &self.routing_key)?;
        for (name, value) in &self.headers {
            t.add(&header_template_name(name), value)?;
        }
        Ok(t)
    }
}

pub(crate) fn header_template_name(header: &str) -> String {
    format!("headers.{header}")
}

/// What a connection needs, whichever side it serves.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub urls: Vec<BrokerUrl>,
    pub connect_timeout: Duration,
    pub reconnect_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    pub topology: Topology,
}

/// A broker URL, checked when read. Shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl(String);

impl BrokerUrl {
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        let uri: AMQPUri = s.parse().map_err(|e| {
            format!(
                "\"{}\" is not an AMQP URL ({e}): write e.g. amqp://user:password@host:5672/%2f",
                redact(s)
            )
        })?;
        if uri.authority.host.is_empty() {
            return Err(format!("\"{}\" has no host", redact(s)));
        }
        Ok(BrokerUrl(s.to_owned()))
    }

    pub(crate) fn uri(&self) -> Result<AMQPUri, String> {
        self.0.parse()
    }

    /// `amqp://host:port/vhost`, for logs.
    pub fn display(&self) -> String {
        match self.uri() {
            Ok(u) => {
                let scheme = match u.scheme {
                    AMQPScheme::AMQP => "amqp",
                    AMQPScheme::AMQPS => "amqps",
                };
                let vhost = if u.vhost == "/" { "%2f" } else { &u.vhost };
                format!(
                    "{scheme}://{}:{}/{vhost}",
                    u.authority.host, u.authority.port
                )
            }
            Err(_) => redact(&self.0),
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.display())
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// The URL with any password replaced by `***`.
fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => s.to_owned(),
    }
}

/// Exchanges, queues and bindings to declare. Declaring what already
/// exists with the same settings changes nothing; with other settings the
/// broker refuses, and the connection is retried with the error logged.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Declared first.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDeclaration>,
    /// Declared after the exchanges (a dead-letter exchange first, then
    /// its queue).
    #[serde(default)]
    pub queues: Vec<QueueDeclaration>,
    /// Declared last.
    #[serde(default)]
    pub bindings: Vec<BindingDeclaration>,
}

impl Topology {
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }
}

/// An exchange: `{ name = "customs", kind = "topic" }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaration {
    #[serde(deserialize_with = "declared_name")]
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`. Default `direct`.
    #[serde(default)]
    pub kind: ExchangeType,
    /// Survives a broker restart. Default `true`.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted once its last binding is removed. Default `false`.
    #[serde(default)]
    pub auto_delete: bool,
    /// Extra arguments (`alternate-exchange`, ...). Default: none.
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// An exchange's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeType {
    #[default]
    Direct,
    Fanout,
    Topic,
    Headers,
}

/// A queue: `{ name = "marketplace.orders", arguments = { "x-queue-type" = "quorum" } }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclaration {
    #[serde(deserialize_with = "declared_name")]
    pub name: String,
    /// Survives a broker restart (and so do its persistent messages).
    /// Default `true`.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted when its last consumer goes. Default `false`.
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-queue-type` (`quorum`, `classic`, `stream`),
    /// `x-dead-letter-exchange`, `x-dead-letter-routing-key`,
    /// `x-delivery-limit`, `x-max-length`, `x-message-ttl`, ... Default:
    /// none.
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// A binding of a queue to an exchange.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDeclaration {
    #[serde(deserialize_with = "declared_name")]
    pub queue: String,
    #[serde(deserialize_with = "declared_name")]
    pub exchange: String,
    /// The binding key (`order.#` on a topic exchange). Default `""`.
    #[serde(default, deserialize_with = "short_string")]
    pub routing_key: String,
    /// Extra arguments (`x-match` on a headers exchange). Default: none.
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// The value of a declaration argument: text, an integer or a boolean.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Argument {
    Bool(bool),
    Int(i64),
    Text(String),
}

fn default_prefetch() -> NonZeroU16 {
    NonZeroU16::new(100).unwrap_or(NonZeroU16::MIN)
}

fn default_max_body_size() -> ByteSize {
    ByteSize::mib(10)
}

fn default_max_depth() -> usize {
    64
}

fn default_connect_timeout() -> DurationValue {
    DurationValue::secs(10)
}

fn default_confirm_timeout() -> DurationValue {
    DurationValue::secs(30)
}

fn default_reconnect_backoff() -> DurationValue {
    DurationValue::millis(100)
}

fn default_reconnect_max_backoff() -> DurationValue {
    DurationValue::secs(5)
}

fn default_true() -> bool {
    true
}

/// A URL or a list of them; at least one.
fn broker_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BrokerUrl>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Other(de::IgnoredAny),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Other(_) => {
            return Err(de::Error::custom(
                "`url` is a broker URL or a list of them, such as \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            ));
        }
    };
    if list.is_empty() {
        return Err(de::Error::custom(
            "`url`: the list is empty: give at least one broker URL",
        ));
    }
    list.iter()
        .map(|s| BrokerUrl::parse(s).map_err(|e| de::Error::custom(format!("`url`: {e}"))))
        .collect()
}

fn check_short(what: &str, s: &str) -> Result<(), String> {
    super::short(s)
        .map(|_| ())
        .map_err(|e| format!("{what} {e}"))
}

/// A text field AMQP carries as a short string: at most 255 bytes, and not
/// empty when `if_empty` says why it may not be.
fn short_field<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    if_empty: Option<&str>,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if let Some(why) = if_empty.filter(|_| s.is_empty()) {
        return Err(de::Error::custom(why));
    }
    check_short(what, &s).map_err(de::Error::custom)?;
    Ok(s)
}

fn short_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    short_field(d, "the value", None)
}

fn declared_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    short_field(
        d,
        "the name",
        Some("a name is empty (the default exchange and server-named queues cannot be declared)"),
    )
}

fn queue_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    short_field(
        d,
        "`queue`:",
        Some("`queue` is empty: name the queue to consume"),
    )
}

fn exchange_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    short_field(d, "`exchange`:", None)
}

fn routing_key_template<'de, D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
    let t = Template::deserialize_field(d, "routing_key")?;
    let mut templates = Templates::default();
    templates
        .add("routing_key", &t)
        .map_err(de::Error::custom)?;
    let key = templates
        .render("routing_key", &sample())
        .map_err(de::Error::custom)?;
    check_short("`routing_key`: the template makes", &key).map_err(de::Error::custom)?;
    Ok(t)
}

fn header_templates<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Template>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(name, value)| {
            if name.is_empty() {
                return Err(de::Error::custom("`headers`: a header name is empty"));
            }
            check_short("`headers`: the name", &name).map_err(de::Error::custom)?;
            let t = Template::parse(&value).map_err(|e| {
                de::Error::custom(format!("`headers.{name}` is not a valid template: {e}"))
            })?;
            Ok((name, t))
        })
        .collect()
}

fn default_publish_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}
