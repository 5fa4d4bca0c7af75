//! The exchange publisher (see the module description for its rules).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use nzela_core::runtime::{BoxFuture, CancellationToken, Destination, Outbound, SendOutcome};
use tokio::sync::{Notify, watch};

use super::config::{ConnectionSettings, DestinationConfig, header_template_name};
use super::confirms::{Confirms, Verdict};
use super::{OpenError, Reconnect, Session, open, reason, short};
use crate::template::Templates;

/// How often the supervisor checks that the connection and channel are
/// still open, besides being told by a failed publish.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// A built exchange destination.
pub struct AmqpDestination {
    name: String,
    exchange: ShortString,
    templates: Templates,
    headers: Vec<String>,
    content_type: Option<String>,
    persistent: bool,
    confirm_timeout: Duration,
    link: Arc<Link>,
    /// Stops the supervisor when the destination is dropped.
    stop: CancellationToken,
}

impl std::fmt::Debug for AmqpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDestination")
            .field("name", &self.name)
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

/// The channel publishes go through, kept by the supervisor.
#[derive(Default)]
struct Link {
    /// `None` while the broker is away.
    current: RwLock<Option<Arc<Current>>>,
    /// Why there is no channel, for the deliveries that find none.
    error: RwLock<String>,
    /// A publish failed in a way that suggests the channel is gone.
    broken: Notify,
    /// How it failed, for the log should the channel be gone.
    broken_why: std::sync::Mutex<Option<String>>,
    /// Whether there is a channel, for [`Destination::available`].
    connected: watch::Sender<bool>,
}

/// An open channel in confirm mode, and the confirms of its publishes.
struct Current {
    channel: Channel,
    confirms: Confirms,
}

impl Link {
    fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, current: Option<Arc<Current>>, error: &str) {
        let connected = current.is_some();
        if let Ok(mut c) = self.current.write() {
            *c = current;
        }
        self.connected.send_replace(connected);
        if let Ok(mut e) = self.error.write() {
            error.clone_into(&mut e);
        }
    }

    /// A publish failed, for this reason, in a way that suggests the
    /// channel is gone: the supervisor looks.
    fn broke(&self, why: &str) {
        if let Ok(mut w) = self.broken_why.lock() {
            *w = Some(why.to_owned());
        }
        self.broken.notify_one();
    }

    fn take_broken_why(&self) -> Option<String> {
        self.broken_why.lock().ok().and_then(|mut w| w.take())
    }

    fn error(&self) -> String {
        self.error
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|_| "not connected".to_owned())
    }
}

impl Drop for AmqpDestination {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AmqpDestination {
    /// Builds the destination `name` and starts its supervisor, which
    /// connects in the background: the broker may be away when nzela
    /// starts, and deliveries wait in the journal until it is back.
    pub async fn build(name: &str, config: &DestinationConfig) -> Result<AmqpDestination, String> {
        let templates = config.templates()?;
        let link = Arc::new(Link::default());
        link.set(None, "not connected to the AMQP broker yet");
        let stop = CancellationToken::new();
        tokio::spawn(supervise(
            name.to_owned(),
            config.connection(),
            link.clone(),
            stop.clone(),
        ));
        Ok(AmqpDestination {
            name: name.to_owned(),
            exchange: short(&config.exchange)?,
            templates,
            headers: config.headers.keys().cloned().collect(),
            content_type: config.content_type.clone(),
            persistent: config.persistent,
            confirm_timeout: config.confirm_timeout.get(),
            link,
            stop,
        })
    }

    /// Whether a channel is open to publish on.
    #[cfg(test)]
    pub(super) fn is_connected(&self) -> bool {
        self.link.current().is_some()
    }

    async fn publish(&self, out: &Outbound) -> SendOutcome {
        let routing_key = match self
            .templates
            .render("routing_key", out)
            .and_then(|k| short(&k).map_err(|e| format!("the routing key {e}")))
        {
            Ok(k) => k,
            Err(error) => return SendOutcome::Permanent { error },
        };
        let properties = match self.properties(out) {
            Ok(p) => p,
            Err(error) => return SendOutcome::Permanent { error },
        };
        let Some(current) = self.link.current() else {
            // Nothing was sent: the attempt does not count, and the
            // dispatcher waits for `available`.
            return SendOutcome::Unavailable {
                error: format!("not connected to the AMQP broker: {}", self.link.error()),
            };
        };
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // Taken before publishing: see `confirms` for why.
        let ticket = current.confirms.ticket();
        let confirm = match current
            .channel
            .basic_publish(
                self.exchange.clone(),
                routing_key.clone(),
                options,
                &out.body,
                properties,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The ticket, dropped untracked, resets the channel.
                drop(ticket);
                let why = format!("cannot publish: {}", reason(&e));
                self.link.broke(&why);
                return transient(why);
            }
        };
        let verdict = ticket.track(out.delivery_id.clone(), confirm);
        let verdict = match tokio::time::timeout(self.confirm_timeout, verdict).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Verdict::Failed("the channel was closed".to_owned()),
            Err(_) => {
                // lapin keeps the confirm until the channel is done with:
                // a new channel frees it.
                let error = format!(
                    "the broker did not confirm the message within {:?}",
                    self.confirm_timeout
                );
                current.confirms.reset(error.clone());
                return transient(error);
            }
        };
        let (exchange, key) = (self.exchange.as_str(), routing_key.as_str());
        match verdict {
            Verdict::Delivered => {
                tracing::debug!(destination = %self.name, delivery_id = %out.delivery_id, exchange, routing_key = key, "confirmed");
                SendOutcome::Delivered { response: None }
            }
            Verdict::Returned {
                reply_code,
                reply_text,
            } => transient(format!(
                "unroutable: the broker returned the message ({reply_code} {reply_text}): no queue is bound to the exchange \"{exchange}\" for the routing key \"{key}\""
            )),
            Verdict::Refused => transient(format!(
                "the broker refused the message (nack) on the exchange \"{exchange}\""
            )),
            Verdict::Failed(why) => {
                self.link.broke(&why);
                transient(why)
            }
        }
    }

    fn properties(&self, out: &Outbound) -> Result<BasicProperties, String> {
        let mut p = BasicProperties::default()
            .with_message_id(short(&out.delivery_id)?)
            .with_app_id("nzela".into())
            .with_timestamp(u64::try_from(nzela_core::runtime::now_millis() / 1000).unwrap_or(0));
        if self.persistent {
            p = p.with_delivery_mode(2);
        }
        let content_type = self.content_type.as_ref().or(out.content_type.as_ref());
        if let Some(ct) = content_type {
            p = p.with_content_type(short(ct).map_err(|e| format!("the content type {e}"))?);
        }
        if let Some(c) = &out.correlation_id {
            // A correlation id longer than AMQP allows goes in a header.
            match short(c) {
                Ok(c) => p = p.with_correlation_id(c),
                Err(_) => {
                    tracing::debug!(delivery_id = %out.delivery_id, "correlation id too long for the property; kept in the header only")
                }
            }
        }
        let mut headers = FieldTable::default();
        let mut text = |k: &str, v: &str| {
            headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        };
        text("nzela-message-id", &out.message_id);
        text("nzela-route", &out.route);
        if let Some(k) = &out.business_key {
            text("nzela-business-key", k);
        }
        if let Some(c) = &out.correlation_id {
            text("nzela-correlation-id", c);
        }
        for name in &self.headers {
            let value = self.templates.render(&header_template_name(name), out)?;
            headers.insert(short(name)?, AMQPValue::LongString(LongString::from(value)));
        }
        Ok(p.with_headers(headers))
    }
}

impl Destination for AmqpDestination {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(self.publish(out))
    }

    /// Resolves once a channel is open.
    fn available(&self) -> BoxFuture<'_, ()> {
        let mut connected = self.link.connected.subscribe();
        Box::pin(async move {
            // An error means the supervisor is gone: the destination is
            // being dropped, and never comes back.
            if connected.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

fn transient(error: String) -> SendOutcome {
    SendOutcome::Transient {
        error,
        retry_after: None,
    }
}

/// Keeps a confirm-mode channel open until `stop`: connects, declares,
/// publishes the channel, watches it, and starts again when it is lost.
async fn supervise(
    name: String,
    settings: ConnectionSettings,
    link: Arc<Link>,
    stop: CancellationToken,
) {
    let mut reconnect = Reconnect::new(&settings);
    loop {
        let opened = tokio::select! {
            r = start(&settings, &name) => r,
            () = stop.cancelled() => break,
        };
        let wait = match opened {
            Ok(session) => {
                reconnect.connected("amqp destination", &name, &session.url);
                link.take_broken_why();
                let collector = stop.child_token();
                let current = Arc::new(Current {
                    channel: session.channel.clone(),
                    confirms: Confirms::start(collector.clone()),
                });
                link.set(Some(current.clone()), "");
                let why = tokio::select! {
                    why = watch(&session, &link, &current.confirms) => Some(why),
                    () = stop.cancelled() => None,
                };
                link.set(
                    None,
                    why.as_deref().unwrap_or("the destination is stopping"),
                );
                drop(current);
                let wait = why
                    .as_deref()
                    .map(|why| reconnect.lost("amqp destination", &name, &session.url, why));
                session.close().await;
                // What the closed channel did not confirm fails now.
                collector.cancel();
                match wait {
                    Some(wait) => wait,
                    None => break,
                }
            }
            Err(e) => {
                link.set(None, &e.to_string());
                reconnect.failed("amqp destination", &name, &e)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => break,
        }
    }
}

/// Opens a session and puts its channel in confirm mode.
async fn start(settings: &ConnectionSettings, name: &str) -> Result<Session, OpenError> {
    let session = open(settings, name).await?;
    match session
        .channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
    {
        Ok(()) => Ok(session),
        Err(e) => {
            session.close().await;
            Err(OpenError::Unreachable(format!(
                "cannot enable publisher confirms: {}",
                reason(&e)
            )))
        }
    }
}

/// Returns, with the reason, once the session is no longer usable or a
/// reset of its channel was asked for.
async fn watch(session: &Session, link: &Link, confirms: &Confirms) -> String {
    let mut health = tokio::time::interval(HEALTH_CHECK);
    let reset = confirms.reset_requested();
    tokio::pin!(reset);
    loop {
        tokio::select! {
            _ = health.tick() => {}
            () = link.broken.notified() => {}
            why = &mut reset => return why,
        }
        if !session.is_open() {
            return session.lost(link.take_broken_why()).await;
        }
    }
}
