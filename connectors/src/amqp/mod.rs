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
//! logs a warning, reconnects with exponential backoff (`reconnect_backoff`
//! doubling up to `reconnect_max_backoff`), trying each URL in turn,
//! declares the topology again, and resumes; it logs when the broker is
//! back. A delivery received and not yet acknowledged when the connection
//! drops is delivered again by the broker. While the broker is away, the
//! destination answers "unavailable" at once (no attempt is counted), and
//! deliveries wait in the journal until it is back.

mod config;
mod confirms;
mod destination;
mod incoming;
mod source;
#[cfg(test)]
mod tests;

use std::time::Duration;

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

/// An open connection and its channel, topology declared.
pub(crate) struct Session {
    pub connection: Connection,
    pub channel: Channel,
    pub url: BrokerUrl,
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
}

/// Connects to the first URL that answers, opens a channel and declares
/// the topology. The error names every URL tried and why it failed.
pub(crate) async fn open(settings: &ConnectionSettings, name: &str) -> Result<Session, String> {
    crate::tls::init();
    let mut errors = Vec::new();
    for url in &settings.urls {
        match open_one(settings, url, name).await {
            Ok(session) => return Ok(session),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(errors.join("; "))
}

async fn open_one(
    settings: &ConnectionSettings,
    url: &BrokerUrl,
    name: &str,
) -> Result<Session, String> {
    let uri = url.uri()?;
    let properties =
        ConnectionProperties::default().with_connection_name(format!("nzela {name}").into());
    let connection = tokio::time::timeout(
        settings.connect_timeout,
        Connection::connect_uri(uri, properties),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", settings.connect_timeout))?
    .map_err(|e| e.to_string())?;
    let session = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        declare(&channel, &settings.topology).await?;
        Ok::<_, String>(channel)
    };
    match tokio::time::timeout(settings.connect_timeout, session).await {
        Ok(Ok(channel)) => Ok(Session {
            connection,
            channel,
            url: url.clone(),
        }),
        Ok(Err(e)) => {
            let _ = connection.close(200, "declaration failed".into()).await;
            Err(e)
        }
        Err(_) => {
            let _ = connection.close(200, "declaration timed out".into()).await;
            Err(format!(
                "the channel and topology were not ready within {:?}",
                settings.connect_timeout
            ))
        }
    }
}

/// Declares exchanges, then queues, then bindings.
async fn declare(channel: &Channel, topology: &Topology) -> Result<(), String> {
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
            .exchange_declare(short(&x.name)?, kind, options, table(&x.arguments)?)
            .await
            .map_err(|e| format!("cannot declare the exchange \"{}\": {e}", x.name))?;
    }
    for q in &topology.queues {
        let options = QueueDeclareOptions {
            durable: q.durable,
            auto_delete: q.auto_delete,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(short(&q.name)?, options, table(&q.arguments)?)
            .await
            .map_err(|e| format!("cannot declare the queue \"{}\": {e}", q.name))?;
    }
    for b in &topology.bindings {
        channel
            .queue_bind(
                short(&b.queue)?,
                short(&b.exchange)?,
                short(&b.routing_key)?,
                QueueBindOptions::default(),
                table(&b.arguments)?,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot bind the queue \"{}\" to the exchange \"{}\" with \"{}\": {e}",
                    b.queue, b.exchange, b.routing_key
                )
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
    /// returns how long to wait before the next one.
    pub fn failed(&mut self, side: &str, name: &str, error: &str) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, self.initial, self.max);
        if self.last_logged.as_deref() != Some(error) {
            tracing::warn!(
                connector = side, name, error, retry_in = ?wait,
                "cannot reach the AMQP broker; retrying"
            );
            self.last_logged = Some(error.to_owned());
        } else {
            tracing::debug!(connector = side, name, error, retry_in = ?wait, "still cannot reach the AMQP broker");
        }
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
