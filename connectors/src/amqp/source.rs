//! The queue consumer (see the module description for its rules).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use nzela_core::codec::{Codec, Limits};
use nzela_core::runtime::{CancellationToken, Incoming, Intake, IntakeError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::config::{ConnectionSettings, SourceConfig};
use super::incoming::{Received, incoming, over_limit};
use super::{OpenError, Reconnect, Session, open, reason, request_failed, short};
use crate::common::{BusinessKey, check_message, limits};

/// How often the consumer checks that its connection and channel are
/// still open, besides noticing it when deliveries stop.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// A delivery the journal could not take is kept (unacknowledged) and its
/// commit tried again after this, doubling up to [`COMMIT_RETRY_MAX`]:
/// handing it back would have the broker deliver it again at once, and
/// count a delivery against the queue's `x-delivery-limit` each time.
const COMMIT_RETRY: Duration = Duration::from_millis(100);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a channel found closed is given to say why.
const CHANNEL_ERROR_WAIT: Duration = Duration::from_millis(200);

/// Bodies up to this size are decoded on the async worker, larger ones on
/// the blocking pool (as for HTTP endpoints).
const INLINE_DECODE_MAX: usize = 4 * 1024;

/// A built queue consumer.
pub struct AmqpSource {
    name: String,
    queue: String,
    consumer_tag: String,
    prefetch: u16,
    connection: ConnectionSettings,
    reader: Arc<Reader>,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("urls", &self.connection.urls)
            .finish_non_exhaustive()
    }
}

/// What checks one delivery.
struct Reader {
    source: String,
    codec: Codec,
    limits: Limits,
    business_key: Option<BusinessKey>,
}

/// What to answer the broker for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Committed: acknowledge.
    Ack,
    /// Not taken (the journal could not, or checking failed): hand it back.
    Requeue,
    /// Refused and kept as rejected: rejected without requeue (the broker
    /// dead-letters it if the queue has a dead-letter exchange).
    Reject,
}

/// One delivery in hand, until its answer is known. Dropped without an
/// answer (its task panicked or was cut short), it is handed back.
struct InHand {
    tag: u64,
    acker: Option<lapin::Acker>,
    answers: tokio::sync::mpsc::UnboundedSender<(u64, lapin::Acker, Answer)>,
}

impl InHand {
    fn answer(mut self, answer: Answer) {
        if let Some(acker) = self.acker.take() {
            let _ = self.answers.send((self.tag, acker, answer));
        }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            let _ = self.answers.send((self.tag, acker, Answer::Requeue));
        }
    }
}

/// The answers of one channel, sent in delivery order: hand-backs and
/// rejections one by one, and the acknowledgements of consecutive
/// committed deliveries in one `basic.ack` (`multiple`). A delivery is
/// acknowledged only once it and every delivery before it on the channel
/// have their answer, so an acknowledgement never covers a delivery that is
/// not committed. One frame for a whole group commit, where one per
/// message cost the broker about half of its work on a delivery.
struct Answers<A = lapin::Acker> {
    /// The next delivery tag to answer.
    next: Option<u64>,
    ready: std::collections::BTreeMap<u64, (A, Answer)>,
}

impl<A> Default for Answers<A> {
    fn default() -> Self {
        Answers {
            next: None,
            ready: std::collections::BTreeMap::new(),
        }
    }
}

impl<A> Answers<A> {
    fn delivered(&mut self, tag: u64) {
        self.next.get_or_insert(tag);
    }

    fn add(&mut self, tag: u64, acker: A, answer: Answer) {
        self.ready.insert(tag, (acker, answer));
    }

    /// What can be answered now, in delivery order: the hand-backs and
    /// rejections to send one by one, then the last of the consecutive
    /// acknowledgements, to send with `multiple` (after the others: an
    /// acknowledgement covers only deliveries still unanswered).
    fn due(&mut self) -> (Vec<(A, Answer)>, Option<A>) {
        let (mut one_by_one, mut ack) = (Vec::new(), None);
        let Some(mut next) = self.next else {
            return (one_by_one, ack);
        };
        while let Some((acker, answer)) = self.ready.remove(&next) {
            next += 1;
            match answer {
                Answer::Ack => ack = Some(acker),
                other => one_by_one.push((acker, other)),
            }
        }
        self.next = Some(next);
        (one_by_one, ack)
    }
}

impl Answers {
    /// Sends every answer that can go now.
    async fn send(&mut self, source: &str) {
        let (one_by_one, ack) = self.due();
        for (acker, answer) in one_by_one {
            let sent = match answer {
                Answer::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
                Answer::Requeue | Answer::Ack => {
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            };
            if let Err(e) = sent {
                tracing::debug!(source, error = %e, "cannot answer a delivery; the broker will deliver it again");
            }
        }
        if let Some(acker) = ack
            && let Err(e) = acker.ack(BasicAckOptions { multiple: true }).await
        {
            // The broker delivers them again; each is then a duplicate when
            // it has a message_id or a business key.
            tracing::debug!(source, error = %e, "cannot acknowledge committed deliveries; the broker will deliver them again");
        }
    }
}

/// Why the consumer stopped consuming.
enum End {
    /// nzela is stopping.
    Stopped,
    /// The connection or channel is gone, for this reason.
    Lost(String),
}

impl AmqpSource {
    /// Builds the source `name`. Nothing is connected yet: the broker may
    /// be away when nzela starts.
    pub async fn build(name: &str, config: &SourceConfig) -> Result<AmqpSource, String> {
        super::short(&config.queue)?;
        Ok(AmqpSource {
            name: name.to_owned(),
            queue: config.queue.clone(),
            consumer_tag: config
                .consumer_tag
                .clone()
                .unwrap_or_else(|| format!("nzela-{name}")),
            prefetch: config.prefetch.get(),
            connection: config.connection(),
            reader: Arc::new(Reader {
                source: name.to_owned(),
                codec: config.format.codec(),
                limits: limits(config.max_body_size, config.max_depth),
                business_key: config.business_key.clone(),
            }),
        })
    }

    /// Consumes until `shutdown`, reconnecting whenever the broker is
    /// lost; then lets the deliveries in hand finish (committed ones are
    /// acknowledged) and closes the connection, which hands any other
    /// back to the broker.
    pub async fn run(self, intake: Intake, shutdown: CancellationToken) {
        let name = self.name.as_str();
        let mut reconnect = Reconnect::new(&self.connection);
        let mut handlers = JoinSet::new();
        let slots = Arc::new(Semaphore::new(usize::from(self.prefetch)));
        loop {
            let opened = tokio::select! {
                r = self.start() => r,
                () = shutdown.cancelled() => break,
            };
            let wait = match opened {
                Ok((session, consumer)) => {
                    reconnect.connected("amqp source", name, &session.url);
                    tracing::info!(source = name, queue = %self.queue, prefetch = self.prefetch, "consuming");
                    let end = self
                        .consume(
                            &intake,
                            &shutdown,
                            &session,
                            consumer,
                            &mut handlers,
                            &slots,
                        )
                        .await;
                    match end {
                        End::Stopped => {
                            session.close().await;
                            break;
                        }
                        End::Lost(why) => reconnect.lost("amqp source", name, &session.url, &why),
                    }
                }
                Err(e) => reconnect.failed("amqp source", name, &e),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
        // What is still in hand when stopping is redelivered by the broker.
        handlers.abort_all();
        tracing::info!(source = name, "stopped consuming");
    }

    /// Connects, declares, sets the prefetch, starts consuming.
    async fn start(&self) -> Result<(Session, Consumer), OpenError> {
        let session = open(&self.connection, &self.name).await?;
        let started = async {
            let failed =
                |request: String, e: lapin::Error| request_failed(&session.url, request, &e);
            session
                .channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| failed("set the prefetch".to_owned(), e))?;
            session
                .channel
                .basic_consume(
                    short(&self.queue).map_err(OpenError::Unreachable)?,
                    short(&self.consumer_tag).map_err(OpenError::Unreachable)?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| failed(format!("consume the queue \"{}\"", self.queue), e))
        }
        .await;
        match started {
            Ok(consumer) => Ok((session, consumer)),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    async fn consume(
        &self,
        intake: &Intake,
        shutdown: &CancellationToken,
        session: &Session,
        mut consumer: Consumer,
        handlers: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
    ) -> End {
        let mut health = tokio::time::interval(HEALTH_CHECK);
        let source = self.name.as_str();
        // Cancelled when this channel is done with (lost, or nzela stops):
        // a delivery still waiting for the journal is then handed back.
        let done = CancellationToken::new();
        let _done = done.clone().drop_guard();
        let (answered, mut answers_in) = tokio::sync::mpsc::unbounded_channel();
        let mut answers = Answers::default();
        loop {
            while handlers.try_join_next().is_some() {}
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    done.cancel();
                    let _ = session
                        .channel
                        .basic_cancel(
                            self.consumer_tag.as_str().into(),
                            BasicCancelOptions::default(),
                        )
                        .await;
                    // Deliveries being committed get their answer.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while handlers.join_next().await.is_some() {}
                    })
                    .await;
                    while let Ok((tag, acker, answer)) = answers_in.try_recv() {
                        answers.add(tag, acker, answer);
                    }
                    answers.send(source).await;
                    return End::Stopped;
                }
                Some((tag, acker, answer)) = answers_in.recv() => {
                    // A group commit answers many at once: one frame for all.
                    answers.add(tag, acker, answer);
                    while let Ok((tag, acker, answer)) = answers_in.try_recv() {
                        answers.add(tag, acker, answer);
                    }
                    answers.send(source).await;
                    continue;
                }
                _ = health.tick() => {
                    if !session.is_open() {
                        let why = channel_error(&mut consumer).await;
                        return End::Lost(session.lost(why).await);
                    }
                    continue;
                }
                next = next_delivery(&mut consumer) => next,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return End::Lost(session.lost(Some(reason(&e))).await),
                None => {
                    return End::Lost(if session.is_open() {
                        "the broker cancelled the consumer (was the queue deleted?)".to_owned()
                    } else {
                        session.lost(None).await
                    });
                }
            };
            // The broker sends at most `prefetch` unacknowledged
            // deliveries; the permits hold to that even if it did not.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return End::Stopped;
            };
            answers.delivered(delivery.delivery_tag);
            let in_hand = InHand {
                tag: delivery.delivery_tag,
                acker: Some(delivery.acker.clone()),
                answers: answered.clone(),
            };
            let reader = self.reader.clone();
            let intake = intake.clone();
            let done = done.clone();
            handlers.spawn(async move {
                take(&reader, &intake, delivery, in_hand, &done).await;
                drop(permit);
            });
        }
    }
}

async fn next_delivery(consumer: &mut Consumer) -> Option<lapin::Result<Delivery>> {
    std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await
}

/// The error a closed channel ended with, which lapin hands its consumer
/// (after any delivery it had received: those are dropped, the broker
/// delivers them again as their channel is gone). `None` when the channel
/// closed without one (the connection is closing).
async fn channel_error(consumer: &mut Consumer) -> Option<String> {
    let error = async {
        loop {
            match next_delivery(consumer).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(reason(&e)),
                None => return None,
            }
        }
    };
    tokio::time::timeout(CHANNEL_ERROR_WAIT, error)
        .await
        .ok()
        .flatten()
}

/// Commits a delivery with `commit` (accept or keep as rejected), trying
/// again with backoff for as long as the journal cannot write: the delivery
/// stays unacknowledged meanwhile (the prefetch bounds how many). Only when
/// nzela stops or the channel is lost (`done`) is it handed back. `None`
/// then, or when the hub is stopping.
async fn commit<T, F, Fut>(
    source: &str,
    what: &str,
    done: &CancellationToken,
    mut commit: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, IntakeError>>,
{
    let mut failures = 0u32;
    loop {
        let error = match commit().await {
            Ok(t) => {
                if failures > 0 {
                    tracing::info!(
                        source,
                        failures,
                        "the journal took the {what} it had refused"
                    );
                }
                return Some(t);
            }
            Err(IntakeError::ShuttingDown) => return None,
            Err(e @ IntakeError::Unavailable(_)) => e,
        };
        failures = failures.saturating_add(1);
        let wait = nzela_core::runtime::backoff(failures, COMMIT_RETRY, COMMIT_RETRY_MAX);
        if failures == 1 {
            tracing::warn!(source, error = %error, retry_in = ?wait, "the journal cannot take the {what}; it stays unacknowledged and is tried again");
        } else {
            tracing::debug!(source, error = %error, retry_in = ?wait, failures, "the journal still cannot take the {what}");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = done.cancelled() => return None,
        }
    }
}

/// One delivery: decoded, committed (or kept as rejected), then answered:
/// acknowledged, rejected or handed back.
async fn take(
    reader: &Arc<Reader>,
    intake: &Intake,
    delivery: Delivery,
    in_hand: InHand,
    done: &CancellationToken,
) {
    let source = reader.source.as_str();
    let Delivery {
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        ..
    } = delivery;
    let received = Received {
        exchange: exchange.as_str(),
        routing_key: routing_key.as_str(),
        redelivered,
        properties: &properties,
        body: data,
    };
    let checked = match incoming(source, received, reader.limits.max_bytes) {
        (message, None) => reader.check(message).await,
        (message, Some(reason)) => Checked::Bad(message, reason),
    };
    match checked {
        Checked::Failed => in_hand.answer(Answer::Requeue),
        Checked::Good(message) => {
            match commit(source, "message", done, || intake.accept(message.clone())).await {
                Some(accepted) => {
                    tracing::debug!(source, message_id = %accepted.message_id, duplicate = accepted.duplicate, delivery_tag, "accepted");
                    in_hand.answer(Answer::Ack);
                }
                None => in_hand.answer(Answer::Requeue),
            }
        }
        Checked::Bad(message, reason) => {
            let kept = commit(source, "rejected message", done, || {
                intake.reject(message.clone(), &reason)
            })
            .await;
            match kept {
                Some(id) => {
                    tracing::warn!(source, message_id = %id, reason, "message rejected: kept in the journal as rejected, and rejected to the broker without requeue (the broker dead-letters it if the queue has a dead-letter exchange)");
                    in_hand.answer(Answer::Reject);
                }
                None => in_hand.answer(Answer::Requeue),
            }
        }
    }
}

/// What checking a delivery gave.
enum Checked {
    /// Decoded: the message, with its business key.
    Good(Incoming),
    /// Refused, for this reason.
    Bad(Incoming, String),
    /// Not checked: the runtime is stopping. Hand it back.
    Failed,
}

impl Reader {
    /// Decodes the body in the source's format (on the blocking pool when
    /// it is large) and reads the business key.
    async fn check(self: &Arc<Self>, mut message: Incoming) -> Checked {
        // The delivery's body was measured before; this is the data of a
        // structured CloudEvent.
        if message.body.len() > self.limits.max_bytes {
            let reason = over_limit(message.body.len(), self.limits.max_bytes);
            message.body = Vec::new();
            return Checked::Bad(message, reason);
        }
        let (mut message, result) = if message.body.len() <= INLINE_DECODE_MAX {
            let r = self.decode_caught(&message.body);
            (message, r)
        } else {
            let this = self.clone();
            let task = tokio::task::spawn_blocking(move || {
                let r = this.decode_caught(&message.body);
                (message, r)
            });
            match task.await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(source = %self.source, error = %e, "a delivery was not checked: nzela is stopping");
                    return Checked::Failed;
                }
            }
        };
        match result {
            Ok(key) => {
                message.business_key = key;
                Checked::Good(message)
            }
            Err(reason) => Checked::Bad(message, reason),
        }
    }

    /// Decodes a body and reads its business key. A decoder that panics
    /// does so on this body every time: that is a refusal too, with the
    /// panic as its reason, not a delivery to hand back forever.
    fn decode_caught(&self, body: &[u8]) -> Result<Option<String>, String> {
        caught(&self.source, || self.decode(body))
    }

    fn decode(&self, body: &[u8]) -> Result<Option<String>, String> {
        check_message(&self.codec, &self.limits, self.business_key.as_ref(), body)
            .map_err(|e| e.to_string())
    }
}

/// Runs a decoder; a panic in it becomes a refusal with the panic as its
/// reason.
fn caught<F>(source: &str, decode: F) -> Result<Option<String>, String>
where
    F: FnOnce() -> Result<Option<String>, String>,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let why = panic_message(panic.as_ref());
        tracing::error!(source, error = %why, "decoding a delivery failed unexpectedly; it is rejected");
        Err(format!("decoding failed unexpectedly: {why}"))
    })
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no detail".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{Answer, Answers, caught};

    #[test]
    fn a_decoder_that_panics_refuses_the_delivery_with_the_panic_as_reason() {
        let order = "A-17";
        let refused = caught("orders", || panic!("no field in order {order}"));
        assert_eq!(
            refused,
            Err("decoding failed unexpectedly: no field in order A-17".to_owned())
        );
        let refused = caught("orders", || panic!("index out of range"));
        assert_eq!(
            refused,
            Err("decoding failed unexpectedly: index out of range".to_owned())
        );
        // A decoder that returns is left alone, whatever it returns.
        assert_eq!(
            caught("orders", || Ok(Some("A-18".to_owned()))),
            Ok(Some("A-18".to_owned()))
        );
        assert_eq!(
            caught("orders", || Err("not JSON".to_owned())),
            Err("not JSON".to_owned())
        );
    }

    #[test]
    fn an_acknowledgement_waits_for_every_delivery_before_it() {
        let mut a: Answers<u64> = Answers::default();
        for tag in 1..=6 {
            a.delivered(tag);
        }
        // 2 and 3 are committed, 1 is not yet: nothing may go.
        a.add(2, 2, Answer::Ack);
        a.add(3, 3, Answer::Ack);
        assert_eq!(a.due(), (vec![], None));
        // 1 committed: one acknowledgement up to 3.
        a.add(1, 1, Answer::Ack);
        assert_eq!(a.due(), (vec![], Some(3)));
        // 5 rejected, 4 still in hand: nothing; then 4 handed back, 6
        // committed: both answered one by one, then the ack of 6.
        a.add(5, 5, Answer::Reject);
        assert_eq!(a.due(), (vec![], None));
        a.add(6, 6, Answer::Ack);
        a.add(4, 4, Answer::Requeue);
        assert_eq!(
            a.due(),
            (vec![(4, Answer::Requeue), (5, Answer::Reject)], Some(6))
        );
        assert_eq!(a.due(), (vec![], None));
    }

    #[test]
    fn a_trailing_refusal_is_not_covered_by_an_acknowledgement() {
        let mut a: Answers<u64> = Answers::default();
        a.delivered(7);
        a.add(7, 7, Answer::Ack);
        a.add(8, 8, Answer::Requeue);
        // Acknowledging "up to 7" leaves 8 to its own answer.
        assert_eq!(a.due(), (vec![(8, Answer::Requeue)], Some(7)));
    }
}
