//! The running hub: how connectors hand messages in and get deliveries out.
//!
//! ```text
//! source ──Incoming──► Intake ──► journal (committed) ──► Accepted ──► ack
//!                                    │
//!                        router: routes, mappings ──► deliveries (journal)
//!                                    │
//!                        dispatcher per destination ──Outbound──► Destination::send
//!                                    └── SendOutcome ──► journal (delivered / retry / dead)
//! ```
//!
//! This module knows no protocol. A source connector owns its listener or
//! poller and calls [`Intake::accept`], acknowledging its sender only once
//! that returns. A destination connector implements [`Destination`] and
//! says, for each attempt, whether the delivery went through, failed for a
//! while, or failed for good.

pub mod dispatch;
pub mod router;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, DecodeError, Limits, json};
use crate::journal::{Journal, JournalError, NewMessage, StoredMessage};
use crate::mapping::path::Path;
use crate::value::Value;

/// A boxed future, for traits that must stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message as a source received it, before the hub takes custody.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// The source's name in the configuration.
    pub source: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// Protocol headers or properties worth keeping (HTTP headers, AMQP
    /// properties, the file name), in order.
    pub headers: Vec<(String, String)>,
    /// Ties this message to others (a reply to the message it answers).
    pub correlation_id: Option<String>,
    /// The sender's own key for this message (`Idempotency-Key`, AMQP
    /// `message_id`): a second message from the same source with the same
    /// key is a duplicate.
    pub idempotency_key: Option<String>,
    /// The source's own key for this very input (a file, by name, size and
    /// time): what a restart reads again is recognised as a duplicate.
    /// Unlike the sender's key, it leaves the business key in force.
    pub input_key: Option<String>,
    /// The business key read from the message (an order number): used to
    /// find the message, and as a duplicate key when the sender gives no
    /// idempotency key of its own.
    pub business_key: Option<String>,
}

/// The hub has custody of the message: it is committed to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    /// The message was already accepted earlier (same idempotency or
    /// business key); `message_id` is the first one's, and it is not routed
    /// again.
    pub duplicate: bool,
}

/// Why the hub could not take custody of a message. Nothing of it is kept:
/// the sender must send it again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    /// The journal cannot commit (disk full, I/O error, ...).
    #[error("the journal cannot accept messages now: {0}")]
    Unavailable(String),
    /// The hub is stopping.
    #[error("nzela is shutting down")]
    ShuttingDown,
}

/// What sources hand their messages to. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    journal: Arc<dyn Journal>,
    router: router::Feed,
    shutdown: CancellationToken,
}

impl fmt::Debug for Intake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

impl Intake {
    pub fn new(
        journal: Arc<dyn Journal>,
        router: router::Feed,
        shutdown: CancellationToken,
    ) -> Intake {
        Intake {
            journal,
            router,
            shutdown,
        }
    }

    /// Commits the message to the journal (fsync'ed, with others in the
    /// same group commit) and returns its id. Only then may the source
    /// acknowledge its sender.
    pub async fn accept(&self, incoming: Incoming) -> Result<Accepted, IntakeError> {
        if self.shutdown.is_cancelled() {
            return Err(IntakeError::ShuttingDown);
        }
        self.commit(incoming).await
    }

    /// [`Intake::accept`], also while the hub is stopping: for what the hub
    /// itself takes in while it drains (a destination's answer to an
    /// attempt in flight), as long as the journal is open.
    pub(crate) async fn commit(&self, incoming: Incoming) -> Result<Accepted, IntakeError> {
        let message = NewMessage::from(incoming);
        // A copy for the router, when it has room for one.
        let routed = self
            .router
            .has_room(message.body.len())
            .then(|| StoredMessage {
                id: message.id.clone(),
                source: message.source.clone(),
                received_at: message.received_at,
                content_type: message.content_type.clone(),
                headers: message.headers.clone(),
                body: message.body.clone(),
                correlation_id: message.correlation_id.clone(),
                business_key: message.business_key.clone(),
            });
        let accepted = self.journal.accept(message).await.map_err(|e| match e {
            JournalError::Closed => IntakeError::ShuttingDown,
            other => IntakeError::Unavailable(other.to_string()),
        })?;
        if !accepted.duplicate {
            // The router maps it from memory, without reading it back.
            self.router.committed(routed);
        }
        Ok(accepted)
    }

    /// Counts a sender as waiting for its answer until the guard is
    /// dropped: a source whose sender holds a request open for the answer
    /// (HTTP) holds one around [`Intake::accept`]. While many wait, routing
    /// gives way to the intake (see [`router::Yielding`]).
    pub fn sender_waiting(&self) -> router::Waiting<'_> {
        self.router.sender_waiting()
    }

    /// Keeps a message the source refuses (its body does not decode as the
    /// declared format) in the journal with `reason`, for operators to
    /// find; it is never routed. Returns its id once committed.
    pub async fn reject(&self, incoming: Incoming, reason: &str) -> Result<String, IntakeError> {
        self.journal
            .reject(NewMessage::from(incoming), reason.to_owned())
            .await
            .map_err(|e| match e {
                JournalError::Closed => IntakeError::ShuttingDown,
                other => IntakeError::Unavailable(other.to_string()),
            })
    }

    /// Cancelled when the hub stops: sources stop taking new messages.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// One attempt at one delivery, as a destination sees it.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Stable across attempts: the idempotency key of the delivery.
    pub delivery_id: String,
    pub message_id: String,
    pub route: String,
    pub destination: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The mapped document.
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The file extension that suits the body (`xml`, `json`, `csv`).
    pub extension: String,
    pub business_key: Option<String>,
    pub correlation_id: Option<String>,
    /// When the message was received, unix milliseconds.
    pub received_at: i64,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// The destination has it.
    Delivered { response: Option<Reply> },
    /// Worth trying again later (network error, timeout, 408, 429, 5xx,
    /// broker unavailable). `retry_after` is the peer's own wish.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will never work as it is (other 4xx, a refused document): the
    /// delivery is dead-lettered, the original message kept.
    Permanent { error: String },
    /// The attempt could not be made at all: the destination is away (no
    /// connection to its broker), and nothing was sent. The attempt does
    /// not count against the delivery's retry budget, its time waiting does
    /// not age it, and the dispatcher pauses the destination until
    /// [`Destination::available`] says it can send again.
    Unavailable { error: String },
}

/// A destination's answer, which can become a new message (request/reply).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// An outbound connector.
pub trait Destination: Send + Sync + 'static {
    /// Makes one attempt. Implementations bound the attempt with their own
    /// timeout and never panic on what the peer answers.
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome>;

    /// Resolves when a destination that answered
    /// [`SendOutcome::Unavailable`] may be able to send again (its
    /// connection is back). The default never resolves: the dispatcher
    /// then tries again after a back-off of its own.
    fn available(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// A path into a decoded message (`order.order_id`), for the values a
/// connector reads itself: business keys, routing keys.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPath(Path);

impl FieldPath {
    /// Parses a path as written in mapping files.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        Path::parse(text).map(FieldPath).map_err(|(at, message)| {
            format!("bad path \"{text}\" at character {}: {message}", at + 1)
        })
    }

    /// The text of the value at this path, when it is a single value.
    pub fn text(&self, value: &Value) -> Option<String> {
        self.text_from(0, value)
    }

    /// The text at this path, from the value its first `skip` steps lead to.
    fn text_from(&self, skip: usize, value: &Value) -> Option<String> {
        let v = self.0.resolve_rest(skip, value)?;
        let t = v.scalar_text()?;
        (!t.is_empty()).then(|| t.into_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

/// Checks that a message decodes in `codec`, as [`Codec::decode`] would
/// (the same errors), and reads the text at `key` ([`FieldPath::text`]).
///
/// What a source does with each message it takes in. A JSON document is
/// checked without building its tree: only the value on the key's path is
/// decoded, the rest is decoded once, when the message is mapped.
pub fn check_message(
    codec: &Codec,
    input: &[u8],
    limits: &Limits,
    key: Option<&FieldPath>,
) -> Result<Option<String>, DecodeError> {
    if let Codec::Json(_) = codec {
        let Some(key) = key else {
            return json::check(input, limits, None).map(|_| None);
        };
        if let Some(read) = check_json_key(input, limits, key)? {
            return Ok(read);
        }
    }
    let value = codec.decode(input, limits)?;
    Ok(key.and_then(|k| k.text(&value)))
}

/// The key of a JSON message that checks, read without decoding the
/// rest; `None` when the whole document is better decoded: a path that
/// starts with an index reads into all of it.
fn check_json_key(
    input: &[u8],
    limits: &Limits,
    key: &FieldPath,
) -> Result<Option<Option<String>>, DecodeError> {
    let names = key.0.leading_keys();
    if names.is_empty() {
        return Ok(None);
    }
    Ok(match json::check(input, limits, Some(&names))? {
        Some(json::Found::Value { text, keys }) => json::decode(text.as_bytes(), limits)
            .ok()
            .map(|value| key.text_from(keys, &value)),
        Some(json::Found::Missing) => Some(None),
        // The check has no answer: decode the whole document.
        None => None,
    })
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no detail".to_owned())
}

/// Exponential backoff with full jitter: attempt 1 waits about `initial`,
/// each next attempt up to twice as long, never more than `max`. The random
/// part spreads retries of many deliveries that failed together.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let ceiling = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    // Half fixed, half random: never much shorter than the schedule.
    let half = ceiling / 2;
    let jitter = half.mul_f64(rand_unit());
    half + jitter
}

/// A number in [0, 1) from the standard library's randomly seeded hasher:
/// enough to spread retries, without a random-number dependency.
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_millis() as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Unix time in milliseconds.
pub fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..20 {
            let d = backoff(attempt, i, m);
            let ceiling = (i * 2u32.pow((attempt - 1).min(20))).min(m);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(30, i, m) <= m);
    }

    #[test]
    fn field_paths_read_single_values() {
        let v = crate::codec::json::decode(
            br#"{"order": {"order_id": "GB-1", "n": 3, "e": ""}}"#,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            FieldPath::parse("order.order_id")
                .unwrap()
                .text(&v)
                .as_deref(),
            Some("GB-1")
        );
        assert_eq!(
            FieldPath::parse("order.n").unwrap().text(&v).as_deref(),
            Some("3")
        );
        assert_eq!(FieldPath::parse("order.e").unwrap().text(&v), None);
        assert_eq!(FieldPath::parse("order").unwrap().text(&v), None);
        assert!(FieldPath::parse("a..b").is_err());
    }

    #[test]
    fn a_message_is_checked_and_its_key_read_as_decoding_would() {
        let order = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/samples/marketplace/order-paid.json"
        ))
        .unwrap();
        let limits = Limits::default();
        let json = Codec::default_for(crate::codec::Format::Json);
        let key = FieldPath::parse("order.order_id").unwrap();
        let full = key.text(&json.decode(&order, &limits).unwrap());
        assert!(full.is_some());
        assert_eq!(
            check_message(&json, &order, &limits, Some(&key)).unwrap(),
            full
        );
        assert_eq!(check_message(&json, &order, &limits, None).unwrap(), None);
        // Errors are decoding's own, line and column included.
        let bad = br#"{"order": {"order_id": "A", "order_id": "B"}}"#;
        assert_eq!(
            check_message(&json, bad, &limits, Some(&key))
                .unwrap_err()
                .to_string(),
            json.decode(bad, &limits).unwrap_err().to_string()
        );
        // Other formats are decoded.
        let xml = Codec::default_for(crate::codec::Format::Xml);
        let doc = b"<order><order_id>X-1</order_id></order>";
        assert_eq!(
            check_message(
                &xml,
                doc,
                &limits,
                Some(&FieldPath::parse("order.order_id").unwrap())
            )
            .unwrap()
            .as_deref(),
            Some("X-1")
        );
    }

    fn document_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        crate::codec::json::strategies::texts(
            &["null", "false", "7.50", r#""""#, r#""k\u00e9""#],
            &["a", "b", "c"],
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        #[test]
        fn checked_keys_are_the_decoded_ones(
            doc in document_strategy(),
            path in proptest::sample::select(vec![
                "a", "a.b", "a.b.c", "b.a", "a[0]", "a[].b", "a.b[-1].c", "$.c.a", "c[1]",
            ]),
        ) {
            let limits = Limits::default();
            let json = Codec::default_for(crate::codec::Format::Json);
            let key = FieldPath::parse(path).unwrap();
            let checked = check_message(&json, doc.as_bytes(), &limits, Some(&key))
                .map_err(|e| e.to_string());
            let decoded = json
                .decode(doc.as_bytes(), &limits)
                .map(|v| key.text(&v))
                .map_err(|e| e.to_string());
            proptest::prop_assert_eq!(checked, decoded);
        }
    }
}
