//! The journal: custody of every accepted message until it is delivered,
//! dead-lettered or found by an operator.
//!
//! # Design
//!
//! Three records, in one store:
//!
//! - a **message**: what a source received (raw body, headers, source, ids,
//!   time), and its state: `received` (committed, not yet routed), `routed`
//!   (its deliveries exist), `unrouted` (no route matched: kept, not lost)
//!   or `rejected` (a source could not decode it and refused it to its
//!   sender, e.g. to a dead-letter exchange: kept with the reason);
//! - a **delivery**: one route's mapped document for one destination, with
//!   its state — `pending` (due at `next_attempt_at`), `inflight` (leased by
//!   a dispatcher), `delivered`, `dead`, or `remap` (its mapping had failed
//!   and an operator replayed it: its message is `received` again, and the
//!   next routing fills in its document, keeping its id) — its attempt
//!   count and last error;
//! - an **event** trail per message: received, duplicate, routed, unrouted,
//!   mapped, mapping failed, attempt N, delivered, retry scheduled,
//!   dead-lettered, replayed. The trail answers "where is message X?". The
//!   steps every message takes (received, routed, mapped, delivered without
//!   a reply) are read from the message and delivery rows, which record
//!   them already; only the others are stored as event rows.
//!
//! Invariants:
//!
//! 1. A source acknowledges a message only after [`Journal::accept`]
//!    returned, which happens only after the commit holding it is on disk
//!    (SQLite: WAL with `synchronous=FULL`, so the commit fsyncs the log).
//! 2. Writes go through one writer that groups whatever is waiting into one
//!    transaction: one fsync serves many messages, and a failed transaction
//!    (disk full) leaves nothing half-stored — every request in it fails and
//!    its senders are not acknowledged.
//! 3. A message leaves `received` in the same transaction that creates its
//!    deliveries (or marks it `unrouted`): it is routed exactly once.
//! 4. A delivery's id never changes: every attempt, and a replay, carries the
//!    same id, which destinations send as the idempotency key.
//! 5. A duplicate (same source and the sender's idempotency key, the
//!    source's key for the same input, or, when the sender gave no key, the
//!    same business key) is acknowledged with the first message's id and
//!    never routed again.
//!
//! What survives a crash, at each step:
//!
//! - before the accept commit: nothing; the sender had no acknowledgement
//!   and sends again;
//! - after the accept commit, before routing: the message is `received`;
//!   the router picks it up at the next start;
//! - after routing: its deliveries are `pending`, or `inflight` if a
//!   dispatcher had leased them (the router leases a new delivery to its
//!   dispatcher in the routing transaction when the dispatcher has room
//!   for it in memory); at the next start every `inflight` delivery is
//!   `pending` again, due at once (one instance owns an SQLite journal, so
//!   no lease can belong to a living dispatcher);
//! - after a send, before its outcome is committed: the delivery is sent
//!   again with the same id; destinations use the id to recognise it.
//!
//! The router and dispatchers are handed what was just committed in
//! memory, in bounded queues; past those bounds, and after a restart, they
//! read the journal in bounded pages, so a backlog lives on disk, not in
//! memory.

mod sqlite;

use std::fmt;

pub use sqlite::{
    DeliverySummary, EventRecord, Inspector, JournalOptions, ListFilter, MessageDetail,
    MessageSummary, Replayed, SqliteJournal,
};

use crate::runtime::{Accepted, BoxFuture, Incoming};

/// A message entering custody.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub source: String,
    /// Unix milliseconds.
    pub received_at: i64,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub business_key: Option<String>,
    /// Identifies a resend of the same message from the same source: the
    /// sender's own key, or the source's key for this very input.
    pub dedup_key: Option<String>,
    /// A message from the same source with the same business key is a
    /// duplicate too: the sender gave no key of its own.
    pub dedup_by_business_key: bool,
}

impl From<Incoming> for NewMessage {
    fn from(i: Incoming) -> Self {
        let dedup_key = i
            .idempotency_key
            .as_ref()
            .or(i.input_key.as_ref())
            .map(|k| format!("idempotency:{k}"));
        let dedup_by_business_key = i.idempotency_key.is_none() && i.business_key.is_some();
        NewMessage {
            id: new_id(),
            source: i.source,
            received_at: crate::runtime::now_millis(),
            content_type: i.content_type,
            headers: i.headers,
            body: i.body,
            correlation_id: i.correlation_id,
            business_key: i.business_key,
            dedup_key,
            dedup_by_business_key,
        }
    }
}

/// A new time-ordered unique id (UUID version 7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A committed message, as the router reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: String,
    pub source: String,
    pub received_at: i64,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub business_key: Option<String>,
}

/// What routing made of one message.
#[derive(Debug, Clone)]
pub struct Routing {
    pub message_id: String,
    /// Empty when no route matched: the message is kept as `unrouted`.
    pub deliveries: Vec<NewDelivery>,
    /// Routes that matched, for the trail.
    pub routes: Vec<String>,
}

/// One delivery created by routing.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub route: String,
    pub destination: String,
    /// The mapped document, or why mapping failed (the delivery is then
    /// dead-lettered at once: a mapping error is permanent).
    pub document: Result<Document, String>,
    /// Handed at once to its dispatcher, which makes the first attempt
    /// from memory: the delivery is stored leased (`inflight`, attempt 1)
    /// rather than `pending`.
    pub leased: bool,
}

/// A mapped document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub body: Vec<u8>,
    pub content_type: String,
    /// `xml`, `json`, `csv`.
    pub extension: String,
}

/// A delivery leased by a dispatcher for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub id: String,
    pub message_id: String,
    pub route: String,
    pub destination: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub document: Document,
    pub business_key: Option<String>,
    pub correlation_id: Option<String>,
    pub received_at: i64,
    pub created_at: i64,
    /// Attempts made before the current retry budget started (a replay
    /// starts a new one), and when it started (moved later by the time the
    /// delivery waited for an unavailable destination).
    pub budget_attempts: u32,
    pub budget_since: i64,
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        detail: Option<String>,
    },
    /// Try again at `at` (unix milliseconds).
    Retry {
        at: i64,
        error: String,
    },
    Dead {
        error: String,
    },
    /// The attempt could not be made (the destination is unavailable): the
    /// delivery is pending again, due now, the attempt not counted, and
    /// the time it waits does not count against its retry budget's age.
    Waiting {
        error: String,
    },
}

/// The journal could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// Storage failed (full disk, I/O error, corrupted file).
    #[error("journal storage error: {0}")]
    Storage(String),
    /// The journal is closed (the hub is stopping).
    #[error("the journal is closed")]
    Closed,
    /// No such message or delivery.
    #[error("{0}")]
    NotFound(String),
}

/// The storage behind the hub. SQLite for one instance; the interface is
/// the same for a shared journal serving several instances.
pub trait Journal: Send + Sync + 'static {
    /// Takes custody of a message; returns once the commit is on disk.
    fn accept(&self, message: NewMessage) -> BoxFuture<'_, Result<Accepted, JournalError>>;

    /// Keeps a message a source refused (it does not decode), with the
    /// reason, so that it can be found; it is never routed and never the
    /// first of a duplicate (its duplicate key is not kept). Returns its id
    /// once the commit is on disk.
    fn reject(
        &self,
        message: NewMessage,
        reason: String,
    ) -> BoxFuture<'_, Result<String, JournalError>>;
    /// Messages committed but not routed yet, oldest first.
    fn received(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, JournalError>>;

    /// Records the routing of messages: their deliveries, or that they
    /// matched no route. Says for each routing whether it was recorded:
    /// `false` for a message routed already, whose new deliveries are
    /// discarded (a message is routed once).
    fn record_routing(
        &self,
        routings: Vec<Routing>,
    ) -> BoxFuture<'_, Result<Vec<bool>, JournalError>>;

    /// Leases up to `limit` deliveries of `destination` that are due at
    /// `now`, counting an attempt for each.
    fn lease<'a>(
        &'a self,
        destination: &'a str,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Leased>, JournalError>>;

    /// Records the outcome of an attempt.
    fn record_outcome(
        &self,
        delivery_id: String,
        attempt: u32,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), JournalError>>;

    /// When the next pending delivery of `destination` is due.
    fn next_due<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, JournalError>>;

    /// Makes every leased delivery pending again, due now: at start, no
    /// dispatcher holds a lease.
    fn release_leases(&self) -> BoxFuture<'_, Result<usize, JournalError>>;

    /// Gives back leases never used (`(delivery id, attempt)` pairs): each
    /// delivery is pending again, due now, and the attempt it was leased
    /// for is not counted. For a dispatcher that stops with deliveries
    /// handed to it but not sent.
    fn unlease(&self, leases: Vec<(String, u32)>) -> BoxFuture<'_, Result<usize, JournalError>>;

    /// Finishes what is queued and closes.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A message's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Received,
    Routed,
    Unrouted,
    Rejected,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Received => "received",
            MessageState::Routed => "routed",
            MessageState::Unrouted => "unrouted",
            MessageState::Rejected => "rejected",
        }
    }
}

/// A delivery's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Inflight,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Inflight => "inflight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "inflight" => Some(DeliveryState::Inflight),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
