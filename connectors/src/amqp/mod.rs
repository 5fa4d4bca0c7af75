//! AMQP 0-9-1 (RabbitMQ): a queue consumer source and an exchange
//! publisher destination, on the `lapin` client (tokio runtime, rustls
//! with the process's ring provider).
//!
//! **Source** ([`AmqpSource`]). Connects to the first URL that answers,
//! declares its topology, sets `basic.qos` to `prefetch` and consumes the
//! queue. Each delivery is decoded in the source's format, then:
//!
//! - decodes: committed to the journal ([`Intake::accept`]); only once the
//!   commit is on disk is the delivery acknowledged (`basic.ack`). If the
//!   journal cannot take it (a full disk), the delivery stays
//!   unacknowledged and its commit is tried again with backoff until it
//!   succeeds (the prefetch bounds how many wait so); it is handed back
//!   (`basic.nack` with requeue) only when nzela stops or the channel is
//!   lost. Handing it back at once would have the broker deliver it again
//!   at once, each time counted against a quorum queue's
//!   `x-delivery-limit`, past which the broker drops it.
//! - does not decode (or is too large, or the decoder panics on it): kept
//!   in the journal as `rejected` with the reason ([`Intake::reject`]),
//!   then `basic.reject` without requeue, which sends it to the queue's
//!   dead-letter exchange when one is configured. A body over the size
//!   limit is not read (nor parsed as a CloudEvent) and not kept: the
//!   message is kept with its headers and the reason only.
//!
//! The AMQP `message_id` is the message's idempotency key (a redelivery
//! after a lost acknowledgement is a duplicate, not a second message); a
//! CloudEvent's `id` takes its place. See [`incoming`] for the headers kept.
//!
//! **Destination** ([`AmqpDestination`]). One connection and one channel
//! in confirm mode. Each delivery is published `mandatory`, persistent,
//! with `message_id` = the delivery id (the same on every attempt) and the
//! message's `correlation_id`, and its confirm awaited: an ack is
//! delivered; a nack, a return (no queue bound for the routing key), a
//! timeout or a lost connection is a transient failure, retried by the
//! dispatcher. A return is matched to its publish by its `message_id`,
//! not by the confirm lapin hands it with (see [`confirms`]). A confirm
//! that does not come in time resets the channel.
//!
//! **Reconnection.** Both sides run a supervisor: when the connection or
//! the channel is lost (broker restart, network cut, channel error) it
//! logs a warning with the reason (the broker's own when it closed the
//! connection or the channel: `320 CONNECTION_FORCED - broker forced
//! connection closure with reason 'shutdown'`), reconnects with
//! exponential backoff (`reconnect_backoff` doubling up to
//! `reconnect_max_backoff`), trying each URL in turn, declares the
//! topology again, and resumes; it logs when the broker is back. A
//! delivery received and not yet acknowledged when the connection drops is
//! delivered again by the broker. While the broker is away, the
//! destination answers "unavailable" at once (no attempt is counted), and
//! deliveries wait in the journal until it is back.
//!
//! **Topology.** A broker that answers but refuses a declaration (the
//! queue exists with other arguments, the exchange with another type: `406
//! PRECONDITION_FAILED - inequivalent arg ...`) is not unreachable: that
//! is logged as an error naming what was declared and the broker's reply,
//! once, and the connection is tried again with the same backoff, as an
//! operator may fix the broker or the configuration meanwhile.

mod config;
mod confirms;
mod destination;
mod incoming;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use nzela_core::runtime::backoff;

pub use config::{
    Argument, BindingDeclaration, BrokerUrl, DestinationConfig, ExchangeDeclaration, ExchangeType,
    QueueDeclaration, SourceConfig, Topology,
};
pub use destination::AmqpDestination;
pub use source::AmqpSource;

use config::ConnectionSettings;

/// How long to wait, once the connection is seen closed, for lapin to say
/// why.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(1);

/// An open connection and its channel, topology declared.
pub(crate) struct Session {
    pub connection: Connection,
    pub channel: Channel,
    pub url: BrokerUrl,
    /// The connection's events: the error it ends with. Read only once it
    /// is lost.
    events: tokio::sync::Mutex<Pin<Box<dyn Stream<Item = lapin::Event> + Send>>>,
}

impl Session {
    /// Both the connection and the channel are usable.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Closes the channel and the connection, politely; errors (the
    /// broker is already gone) do not matter.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.channel.close(200, "nzela is stopping".into()).await;
            let _ = self.connection.close(200, "nzela is stopping".into()).await;
        })
        .await;
    }

    /// Why the connection was lost, once it is: the broker's
    /// `connection.close` (`320 CONNECTION_FORCED - broker forced
    /// connection closure with reason 'shutdown'`) or the I/O error, as
    /// lapin reports it (a moment after the connection is seen closed).
    pub async fn connection_error(&self) -> Option<String> {
        let mut events = self.events.lock().await;
        let error = async {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    return Some(reason(&e));
                }
            }
            None
        };
        tokio::time::timeout(CLOSE_REASON_WAIT, error)
            .await
            .ok()
            .flatten()
    }

    /// What to log when the connection or the channel is found closed:
    /// which of them, and why: the connection's error, or `known` (what
    /// the channel's users learnt of its closing).
    pub async fn lost(&self, known: Option<String>) -> String {
        let (what, why) = if self.connection.status().connected() {
            ("channel", known)
        } else {
            ("connection", self.connection_error().await.or(known))
        };
        match why {
            Some(why) => format!("the {what} was closed: {why}"),
            None => format!("the {what} was closed"),
        }
    }
}

/// A lapin error in the broker's words when the broker sent it (the reply
/// code and text of a `channel.close` or `connection.close`, such as `406
/// PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue
/// 'orders' in vhost '/': received none but current is the value 'quorum'
/// of type 'longstr'`), lapin's otherwise.
pub(crate) fn reason(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            format!("{} {}", amqp.get_id(), amqp.get_message())
        }
        _ => e.to_string(),
    }
}

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// No broker could be reached, or the connection failed: each URL
    /// tried, and why.
    Unreachable(String),
    /// A broker answered, and refused what nzela asked of it.
    Refused(Refusal),
}

/// A request the broker refused: a declaration (the entity exists with
/// other settings: `406 PRECONDITION_FAILED`), a binding to what does not
/// exist (`404 NOT_FOUND`), what the user may not do (`403
/// ACCESS_REFUSED`), consuming a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The broker that refused, as shown in logs.
    pub broker: String,
    /// What was asked: `declare the queue "orders"`.
    pub request: String,
    /// The reply code: 406.
    pub code: u16,
    /// The broker's reply text: `PRECONDITION_FAILED - inequivalent arg
    /// 'x-queue-type' for queue 'orders' ...`.
    pub text: String,
}

impl Refusal {
    /// A refused declaration of an entity that exists with other settings.
    pub fn is_mismatch(&self) -> bool {
        self.code == PRECONDITION_FAILED && self.request.starts_with("declare ")
    }
}

/// The AMQP reply code of a request whose precondition fails.
const PRECONDITION_FAILED: u16 = 406;

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the broker refuses to {}: {} {}",
            self.broker, self.request, self.code, self.text
        )?;
        if self.is_mismatch() {
            f.write_str(
                " (it exists on the broker with other settings: change them there, or in the configuration)",
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Unreachable(e) => f.write_str(e),
            OpenError::Refused(r) => r.fmt(f),
        }
    }
}

/// A request on a session's channel failed: refused by the broker (which
/// closes the channel then), or the connection failed.
pub(crate) fn request_failed(url: &BrokerUrl, request: String, e: &lapin::Error) -> OpenError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => OpenError::Refused(Refusal {
            broker: url.to_string(),
            request,
            code: amqp.get_id(),
            text: amqp.get_message().to_string(),
        }),
        _ => OpenError::Unreachable(format!("cannot {request}: {e}")),
    }
}

/// Connects to the first URL that answers, opens a channel and declares
/// the topology. When a broker refused a declaration, that is the error;
/// otherwise it names every URL tried and why it failed.
pub(crate) async fn open(settings: &ConnectionSettings, name: &str) -> Result<Session, OpenError> {
    crate::tls::init();
    let mut errors = Vec::new();
    let mut refusal = None;
    for url in &settings.urls {
        match open_one(settings, url, name).await {
            Ok(session) => return Ok(session),
            Err(OpenError::Refused(r)) => {
                refusal.get_or_insert(r);
            }
            Err(OpenError::Unreachable(e)) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(match refusal {
        Some(r) => OpenError::Refused(r),
        None => OpenError::Unreachable(errors.join("; ")),
    })
}

async fn open_one(
    settings: &ConnectionSettings,
    url: &BrokerUrl,
    name: &str,
) -> Result<Session, OpenError> {
    let uri = url.uri().map_err(OpenError::Unreachable)?;
    let properties =
        ConnectionProperties::default().with_connection_name(format!("nzela {name}").into());
    let connection = tokio::time::timeout(
        settings.connect_timeout,
        Connection::connect_uri(uri, properties),
    )
    .await
    .map_err(|_| {
        OpenError::Unreachable(format!("no answer within {:?}", settings.connect_timeout))
    })?
    .map_err(|e| OpenError::Unreachable(reason(&e)))?;
    let events = connection.events_listener();
    let session = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| OpenError::Unreachable(format!("cannot open a channel: {e}")))?;
        declare(&channel, &settings.topology, url).await?;
        Ok::<_, OpenError>(channel)
    };
    match tokio::time::timeout(settings.connect_timeout, session).await {
        Ok(Ok(channel)) => Ok(Session {
            connection,
            channel,
            url: url.clone(),
            events: tokio::sync::Mutex::new(Box::pin(events)),
        }),
        Ok(Err(e)) => {
            let _ = connection.close(200, "declaration failed".into()).await;
            Err(e)
        }
        Err(_) => {
            let _ = connection.close(200, "declaration timed out".into()).await;
            Err(OpenError::Unreachable(format!(
                "the channel and topology were not ready within {:?}",
                settings.connect_timeout
            )))
        }
    }
}

/// Declares exchanges, then queues, then bindings. The first the broker
/// refuses is the error (the broker closes the channel then).
async fn declare(channel: &Channel, topology: &Topology, url: &BrokerUrl) -> Result<(), OpenError> {
    let failed = |request: String, e: lapin::Error| request_failed(url, request, &e);
    let invalid = OpenError::Unreachable;
    for x in &topology.exchanges {
        let kind = match x.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        };
        let options = ExchangeDeclareOptions {
            durable: x.durable,
            auto_delete: x.auto_delete,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                short(&x.name).map_err(invalid)?,
                kind,
                options,
                table(&x.arguments).map_err(invalid)?,
            )
            .await
            .map_err(|e| failed(format!("declare the exchange \"{}\"", x.name), e))?;
    }
    for q in &topology.queues {
        let options = QueueDeclareOptions {
            durable: q.durable,
            auto_delete: q.auto_delete,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                short(&q.name).map_err(invalid)?,
                options,
                table(&q.arguments).map_err(invalid)?,
            )
            .await
            .map_err(|e| failed(format!("declare the queue \"{}\"", q.name), e))?;
    }
    for b in &topology.bindings {
        channel
            .queue_bind(
                short(&b.queue).map_err(invalid)?,
                short(&b.exchange).map_err(invalid)?,
                short(&b.routing_key).map_err(invalid)?,
                QueueBindOptions::default(),
                table(&b.arguments).map_err(invalid)?,
            )
            .await
            .map_err(|e| {
                let request = format!(
                    "bind the queue \"{}\" to the exchange \"{}\" with \"{}\"",
                    b.queue, b.exchange, b.routing_key
                );
                failed(request, e)
            })?;
    }
    Ok(())
}

/// An AMQP short string, refused (not truncated) past 255 bytes.
pub(crate) fn short(s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|_| {
        format!(
            "\"{s}\" is {} bytes long: AMQP allows {}",
            s.len(),
            config::MAX_SHORT_STRING
        )
    })
}

fn table(arguments: &std::collections::BTreeMap<String, Argument>) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    for (k, v) in arguments {
        let value = match v {
            Argument::Bool(b) => AMQPValue::Boolean(*b),
            Argument::Int(i) => AMQPValue::LongLongInt(*i),
            Argument::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        };
        t.insert(short(k)?, value);
    }
    Ok(t)
}

/// Counts the attempts to reach the broker, for backoff and for logs that
/// say when it was lost and when it is back without repeating themselves.
pub(crate) struct Reconnect {
    initial: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    failures: u32,
    /// The last error logged at `warn`, so that the same one is not
    /// logged again at every attempt.
    last_logged: Option<String>,
    /// The connection was up once: the next success is a recovery.
    was_up: bool,
}

impl Reconnect {
    pub fn new(settings: &ConnectionSettings) -> Reconnect {
        Reconnect {
            initial: settings.reconnect_backoff,
            max: settings
                .reconnect_max_backoff
                .max(settings.reconnect_backoff),
            failures: 0,
            last_logged: None,
            was_up: false,
        }
    }

    /// A connection attempt failed: logs it (once per distinct error) and
    /// returns how long to wait before the next one. A broker that refused
    /// the topology is an error to fix (on the broker or in the
    /// configuration), not a broker away.
    pub fn failed(&mut self, side: &str, name: &str, error: &OpenError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, self.initial, self.max);
        let text = error.to_string();
        if self.last_logged.as_deref() == Some(text.as_str()) {
            tracing::debug!(connector = side, name, error = text, retry_in = ?wait, "still failing to connect to the AMQP broker");
            return wait;
        }
        match error {
            OpenError::Unreachable(_) => tracing::warn!(
                connector = side, name, error = text, retry_in = ?wait,
                "cannot reach the AMQP broker; retrying"
            ),
            OpenError::Refused(r) if r.is_mismatch() => tracing::error!(
                connector = side, name, broker = r.broker, request = r.request,
                reply = format!("{} {}", r.code, r.text), retry_in = ?wait,
                "the topology on the AMQP broker does not match the configuration: the broker refuses to {}: {} {}; retrying until it is changed on the broker or in the configuration",
                r.request, r.code, r.text
            ),
            OpenError::Refused(r) => tracing::error!(
                connector = side, name, broker = r.broker, request = r.request,
                reply = format!("{} {}", r.code, r.text), retry_in = ?wait,
                "the AMQP broker refuses to {}: {} {}; retrying",
                r.request, r.code, r.text
            ),
        }
        self.last_logged = Some(text);
        wait
    }

    /// Connected: logs it (as a recovery if the broker had been lost).
    pub fn connected(&mut self, side: &str, name: &str, url: &BrokerUrl) {
        if self.was_up || self.failures > 0 {
            tracing::info!(connector = side, name, broker = %url, attempts = self.failures + 1, "the AMQP broker is back");
        } else {
            tracing::info!(connector = side, name, broker = %url, "connected to the AMQP broker");
        }
        self.failures = 0;
        self.last_logged = None;
        self.was_up = true;
    }

    /// The connection was lost: logs it; returns the wait before the first
    /// attempt to reconnect.
    pub fn lost(&mut self, side: &str, name: &str, url: &BrokerUrl, why: &str) -> Duration {
        tracing::warn!(connector = side, name, broker = %url, error = why, "lost the AMQP broker; reconnecting");
        self.failures = 1;
        backoff(1, self.initial, self.max)
    }
}
