//! Dispatchers: one per destination. Each leases the deliveries that are
//! due, sends them (a bounded number at a time), and records each outcome:
//! delivered; failed for now, retried later with exponential backoff and
//! jitter (honouring the peer's `Retry-After`, up to the longest backoff);
//! or failed for good, and
//! dead-lettered with its reason. Destinations are independent: one that is
//! down holds back nothing else.
//!
//! A destination that cannot make an attempt at all (its broker is away:
//! [`SendOutcome::Unavailable`]) is paused: the delivery is pending again
//! without an attempt counted, and its time waiting does not age it; the
//! dispatcher sends nothing more to that destination until it says it can
//! send again ([`Destination::available`]), or a back-off has passed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::router::Wakeup;
use super::{
    CancellationToken, Destination, Incoming, Intake, Outbound, SendOutcome, backoff, now_millis,
    panic_message,
};
use crate::journal::{Journal, JournalError, Leased, Outcome};

/// How long an idle dispatcher waits before looking at the journal anyway
/// (an operator's replay, a retry that came due).
const IDLE: Duration = Duration::from_secs(1);

/// The pause of an unavailable destination: first this, doubling while it
/// stays away, up to [`AWAY_MAX`], unless it says it is back earlier.
const AWAY: Duration = Duration::from_secs(1);
const AWAY_MAX: Duration = Duration::from_secs(30);

/// New deliveries the router hands to a dispatcher in memory, leased to it
/// in the same transaction that stored them (`inflight`, attempt 1): the
/// dispatcher sends them without reading them back from the journal. A
/// bounded number; past it, deliveries are stored `pending` and the
/// dispatcher is told to read the journal. Cheap to clone.
#[derive(Clone)]
pub struct Handoff(Arc<HandoffInner>);

struct HandoffInner {
    wakeup: Wakeup,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Deliveries wait in the journal (stored `pending`).
    missed: AtomicBool,
    /// The soonest retry recorded since the dispatcher last read the
    /// journal, unix milliseconds.
    retry_at: AtomicI64,
}

/// Deliveries waiting; room promised to routings not committed yet; the
/// bytes of documents of both.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Leased>,
    reserved: usize,
    bytes: usize,
}

/// The most bytes of documents a handoff holds (and promises).
const HANDOFF_BYTES: usize = 64 << 20;

impl Default for Handoff {
    fn default() -> Self {
        Handoff::new(1024)
    }
}

impl Handoff {
    /// Room for `capacity` deliveries (and 64 MiB of documents).
    pub fn new(capacity: usize) -> Handoff {
        Handoff(Arc::new(HandoffInner {
            wakeup: Wakeup::default(),
            capacity: capacity.max(1),
            queue: Mutex::default(),
            missed: AtomicBool::new(false),
            retry_at: AtomicI64::new(i64::MAX),
        }))
    }

    /// Promises room for one delivery of `bytes`, until [`Handoff::give`]
    /// or [`Handoff::cancel`]; `false` when there is none.
    pub fn reserve(&self, bytes: usize) -> bool {
        match self.0.queue.lock() {
            Ok(mut q)
                if q.waiting.len() + q.reserved < self.0.capacity
                    && q.bytes + bytes <= HANDOFF_BYTES =>
            {
                q.reserved += 1;
                q.bytes += bytes;
                true
            }
            _ => false,
        }
    }

    /// Hands over a delivery whose lease is committed, in reserved room.
    pub fn give(&self, d: Leased) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.reserved = q.reserved.saturating_sub(1);
            q.waiting.push_back(d);
        } else {
            // Unreachable in practice (no code panics holding the lock);
            // the delivery is leased in the journal and sent after a restart.
            self.0.missed.store(true, Ordering::Release);
        }
        self.0.wakeup.wake();
    }

    /// Gives back room reserved for `bytes` (the routing was not recorded).
    pub fn cancel(&self, bytes: usize) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.reserved = q.reserved.saturating_sub(1);
            q.bytes = q.bytes.saturating_sub(bytes);
        }
    }

    /// Tells the dispatcher that deliveries wait in the journal.
    pub fn wake(&self) {
        self.0.missed.store(true, Ordering::Release);
        self.0.wakeup.wake();
    }

    fn take(&self, max: usize) -> Vec<Leased> {
        match self.0.queue.lock() {
            Ok(mut q) => {
                let n = q.waiting.len().min(max);
                let taken: Vec<Leased> = q.waiting.drain(..n).collect();
                let bytes: usize = taken.iter().map(|d| d.document.body.len()).sum();
                q.bytes = q.bytes.saturating_sub(bytes);
                taken
            }
            Err(_) => Vec::new(),
        }
    }

    fn retry_at(&self, at: i64) {
        self.0.retry_at.fetch_min(at, Ordering::AcqRel);
    }

    /// Whether the dispatcher was told to read the journal, or a retry
    /// recorded since it last did is due.
    fn journal_due(&self) -> bool {
        self.0.missed.swap(false, Ordering::AcqRel)
            || self.0.retry_at.load(Ordering::Acquire) <= now_millis()
    }

    /// The dispatcher reads the journal now: retries recorded so far are
    /// seen by that read.
    fn reading_journal(&self) {
        self.0.retry_at.store(i64::MAX, Ordering::Release);
    }

    /// Milliseconds until the soonest retry known (negative when due).
    fn until_retry(&self) -> i64 {
        self.0
            .retry_at
            .load(Ordering::Acquire)
            .saturating_sub(now_millis())
    }

    /// Until a wake-up, `d`, or `shutdown`.
    async fn wait(&self, shutdown: &CancellationToken, d: Duration) {
        wait(&self.0.wakeup, shutdown, d).await;
    }
}

/// When to give up on a delivery that keeps failing for now.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before the delivery is dead-lettered (a replay starts a new
    /// count).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time (with jitter).
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Dead-letter a delivery still failing this long after it was created
    /// (or replayed).
    pub max_age: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// How one destination is dispatched to.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub name: String,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Longest one attempt may take, whatever the connector does.
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    /// A source name: the destination's answers become new messages from
    /// this source, correlated with the message they answer.
    pub reply_to: Option<String>,
}

pub struct Dispatcher {
    settings: DispatchSettings,
    destination: Arc<dyn Destination>,
    journal: Arc<dyn Journal>,
    handoff: Handoff,
    intake: Intake,
    away: Away,
}

/// What the attempts tell the dispatcher of the destination's
/// availability.
#[derive(Default)]
struct Away {
    /// An attempt found the destination unavailable since the dispatcher
    /// last paused.
    unavailable: AtomicBool,
    /// An attempt was made (whatever its outcome) since the dispatcher
    /// last looked.
    reached: AtomicBool,
    /// What the destination last answered when unavailable.
    why: Mutex<String>,
}

impl Dispatcher {
    pub fn new(
        settings: DispatchSettings,
        destination: Arc<dyn Destination>,
        journal: Arc<dyn Journal>,
        handoff: Handoff,
        intake: Intake,
    ) -> Dispatcher {
        Dispatcher {
            settings,
            destination,
            journal,
            handoff,
            intake,
            away: Away::default(),
        }
    }

    /// Dispatches until `shutdown`, then waits up to `grace` for the
    /// attempts in flight. An attempt cut short stays leased in the journal
    /// and is made again at the next start.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.settings.concurrency.max(1)));
        let mut inflight = JoinSet::new();
        let handoff = &this.handoff;
        // Read the journal first: what was due before the start.
        let mut from_journal = true;
        let mut looked = Instant::now();
        let mut turn = false;
        // Pauses in a row while the destination is unavailable.
        let mut pauses = 0u32;
        loop {
            // Reap finished attempts (their errors are logged where they happen).
            while inflight.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let name = &this.settings.name;
            if this.away.reached.swap(false, Ordering::AcqRel) && pauses > 0 {
                tracing::info!(destination = %name, "the destination is available again");
                pauses = 0;
            }
            if this.away.unavailable.swap(false, Ordering::AcqRel) {
                // Its deliveries are pending in the journal, due: nothing
                // more is sent until it can take them.
                pauses = pauses.saturating_add(1);
                let pause = backoff(pauses, AWAY, AWAY_MAX);
                let why = this.away.why.lock().map(|w| w.clone()).unwrap_or_default();
                if pauses == 1 {
                    tracing::warn!(destination = %name, error = %why, "the destination is unavailable; its deliveries wait in the journal until it is back");
                } else {
                    tracing::debug!(destination = %name, error = %why, pause = ?pause, "the destination is still unavailable");
                }
                tokio::select! {
                    () = this.destination.available() => {}
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => break,
                }
                from_journal = true;
                continue;
            }
            let free = slots.available_permits();
            if free == 0 {
                // Until a send finishes and frees its slot.
                tokio::select! {
                    slot = slots.clone().acquire_owned() => drop(slot),
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            // The journal holds deliveries stored `pending` when the handoff
            // was full, retries coming due, and an operator's replays: read
            // it when told to, when a retry is due, and every second anyway
            // (so a steady stream in memory never holds back a retry).
            if handoff.journal_due() || looked.elapsed() >= IDLE {
                from_journal = true;
            }
            // Deliveries handed over are leased already, and older than
            // what the journal holds: they go first. When the journal is
            // due it gets half the free slots (turn by turn when one is
            // free), so that neither way starves the other under load.
            let mut batch = if from_journal {
                turn = !turn;
                handoff.take((free + usize::from(turn)) / 2)
            } else {
                handoff.take(free)
            };
            if from_journal {
                let want = free - batch.len();
                looked = Instant::now();
                handoff.reading_journal();
                match this
                    .journal
                    .lease(&this.settings.name, now_millis(), want)
                    .await
                {
                    Ok(leased) => {
                        // A full page: there may be more.
                        from_journal = leased.len() == want;
                        batch.extend(leased);
                        if !from_journal
                            && let Ok(Some(at)) = this.journal.next_due(&this.settings.name).await
                        {
                            handoff.retry_at(at);
                        }
                    }
                    Err(e) => {
                        tracing::error!(destination = %this.settings.name, error = %e, "cannot lease deliveries; trying again");
                        if batch.is_empty() {
                            handoff.wait(&shutdown, IDLE).await;
                            continue;
                        }
                    }
                }
            }
            if batch.len() < free {
                batch.extend(handoff.take(free - batch.len()));
            }
            if batch.is_empty() {
                let until = handoff.until_retry();
                let idle = IDLE
                    .saturating_sub(looked.elapsed())
                    .min(Duration::from_millis(u64::try_from(until).unwrap_or(0)));
                if !idle.is_zero() {
                    tokio::select! {
                        () = handoff.wait(&shutdown, idle) => {}
                        Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                    }
                }
                continue;
            }
            for d in batch {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                inflight.spawn(async move { this.attempt(d, permit).await });
            }
        }
        // Deliveries handed over but never sent go back to the journal
        // without an attempt counted (the router has stopped giving).
        let unsent: Vec<(String, u32)> = this
            .handoff
            .take(usize::MAX)
            .into_iter()
            .map(|d| (d.id, d.attempt))
            .collect();
        if !unsent.is_empty() {
            match this.journal.unlease(unsent).await {
                Ok(n) => {
                    tracing::debug!(destination = %this.settings.name, deliveries = n, "deliveries not sent are pending again")
                }
                Err(e) => {
                    tracing::warn!(destination = %this.settings.name, error = %e, "deliveries not sent stay leased; they are sent at the next start")
                }
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(destination = %this.settings.name, "stopping with attempts still in flight; they are made again at the next start");
            inflight.abort_all();
        }
    }

    /// One attempt: the send holds one of the destination's `concurrency`
    /// slots; recording its outcome does not (the delivery stays leased
    /// until then, so it cannot be taken twice).
    async fn attempt(&self, d: Leased, slot: OwnedSemaphorePermit) {
        let s = &self.settings;
        let out = Outbound {
            delivery_id: d.id.clone(),
            message_id: d.message_id.clone(),
            route: d.route.clone(),
            destination: d.destination.clone(),
            attempt: d.attempt,
            body: d.document.body,
            content_type: Some(d.document.content_type).filter(|c| !c.is_empty()),
            extension: d.document.extension,
            business_key: d.business_key,
            correlation_id: d.correlation_id,
            received_at: d.received_at,
        };
        // A connector that panics fails this attempt (retried like any
        // transient failure) instead of stranding the delivery in its lease;
        // one that does not answer in time is dropped, which cancels it.
        let mut send = self.destination.send(&out);
        let caught = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| send.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
                Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
            }
        });
        let result = match tokio::time::timeout(s.attempt_timeout, caught).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(why)) => SendOutcome::Transient {
                error: format!("the {} connector failed unexpectedly: {why}", s.name),
                retry_after: None,
            },
            Err(_) => SendOutcome::Transient {
                error: format!("no answer within {:?}", s.attempt_timeout),
                retry_after: None,
            },
        };
        drop(send);
        drop(slot);
        if !matches!(result, SendOutcome::Unavailable { .. }) {
            self.away.reached.store(true, Ordering::Release);
        }
        let (message_id, route, destination, delivery_id, attempt) = (
            &out.message_id,
            &out.route,
            &out.destination,
            &out.delivery_id,
            out.attempt,
        );
        let outcome = match result {
            SendOutcome::Delivered { response } => {
                tracing::info!(%message_id, %route, %destination, %delivery_id, attempt, "delivered");
                let detail = match (&s.reply_to, response) {
                    (Some(source), Some(reply)) => {
                        Some(self.accept_reply(source, &out, reply).await)
                    }
                    _ => None,
                };
                Outcome::Delivered { detail }
            }
            SendOutcome::Permanent { error } => {
                tracing::error!(%message_id, %route, %destination, %delivery_id, attempt, %error, "delivery failed for good; dead-lettered");
                Outcome::Dead { error }
            }
            SendOutcome::Unavailable { error } => {
                tracing::debug!(%message_id, %route, %destination, %delivery_id, attempt, %error, "the destination is unavailable; the delivery waits");
                if let Ok(mut why) = self.away.why.lock() {
                    why.clone_from(&error);
                }
                self.away.unavailable.store(true, Ordering::Release);
                Outcome::Waiting { error }
            }
            SendOutcome::Transient { error, retry_after } => {
                let now = now_millis();
                let tries = attempt.saturating_sub(d.budget_attempts);
                let age = Duration::from_millis(u64::try_from(now - d.budget_since).unwrap_or(0));
                if tries >= s.retry.max_attempts {
                    let error = format!("gave up after {tries} attempts: {error}");
                    tracing::error!(%message_id, %route, %destination, %delivery_id, attempt, %error, "dead-lettered");
                    Outcome::Dead { error }
                } else if s.retry.max_age.is_some_and(|max| age >= max) {
                    let error = format!("gave up after {:?} of attempts: {error}", age);
                    tracing::error!(%message_id, %route, %destination, %delivery_id, attempt, %error, "dead-lettered");
                    Outcome::Dead { error }
                } else {
                    let wait = retry_wait(&s.retry, tries, retry_after);
                    let at =
                        now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    tracing::warn!(%message_id, %route, %destination, %delivery_id, attempt, %error, retry_in = ?wait, "delivery failed; will retry");
                    Outcome::Retry { at, error }
                }
            }
        };
        // Until its outcome is recorded the delivery is leased, and no
        // dispatcher takes it again before the next start: a journal that
        // fails for a while (full disk, a batch that failed) is asked again.
        // On shutdown the attempt is cut short after the grace period.
        loop {
            match self
                .journal
                .record_outcome(out.delivery_id.clone(), attempt, outcome.clone())
                .await
            {
                Ok(()) => {
                    match &outcome {
                        // The dispatcher looks at the journal when it is due.
                        Outcome::Retry { at, .. } => self.handoff.retry_at(*at),
                        Outcome::Waiting { .. } => self.handoff.retry_at(now_millis()),
                        _ => {}
                    }
                    break;
                }
                Err(e @ JournalError::Storage(_)) => {
                    tracing::error!(%message_id, %route, %destination, %delivery_id, attempt, error = %e, "cannot record the outcome; trying again");
                    tokio::time::sleep(IDLE).await;
                }
                Err(e) => {
                    // The journal is closed (the delivery stays leased and is
                    // made again at the next start), or the lease is gone.
                    tracing::error!(%message_id, %route, %destination, %delivery_id, attempt, error = %e, "cannot record the outcome");
                    break;
                }
            }
        }
    }

    /// A destination's answer becomes a new message from `source`.
    async fn accept_reply(&self, source: &str, out: &Outbound, reply: super::Reply) -> String {
        let incoming = Incoming {
            source: source.to_owned(),
            body: reply.body,
            content_type: reply.content_type,
            headers: reply.headers,
            correlation_id: Some(out.message_id.clone()),
            idempotency_key: Some(format!("reply:{}", out.delivery_id)),
            input_key: None,
            business_key: out.business_key.clone(),
        };
        // The journal stays open while the dispatchers drain: an answer
        // that arrives after the hub began to stop is kept all the same.
        match self.intake.commit(incoming).await {
            Ok(a) => format!("reply accepted as message {}", a.message_id),
            Err(e) => {
                tracing::error!(message_id = %out.message_id, route = %out.route, destination = %out.destination, delivery_id = %out.delivery_id, error = %e, "the reply could not be journaled");
                format!("reply lost: {e}")
            }
        }
    }
}

/// The wait before the next attempt after `tries` failed ones: the
/// backoff, or longer when the peer asks so (`Retry-After`), but never
/// longer than `max_backoff`: a peer asking for a day does not park a
/// delivery for a day.
fn retry_wait(policy: &RetryPolicy, tries: u32, retry_after: Option<Duration>) -> Duration {
    let asked = retry_after.unwrap_or_default().min(policy.max_backoff);
    backoff(tries, policy.initial_backoff, policy.max_backoff).max(asked)
}

async fn wait(wakeup: &Wakeup, shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = wakeup.wait() => {}
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{RetryPolicy, retry_wait};

    #[test]
    fn retry_after_is_honoured_up_to_max_backoff() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            ..RetryPolicy::default()
        };
        // A day asked for: five minutes, the longest wait allowed.
        assert_eq!(
            retry_wait(&policy, 1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(300)
        );
        // Within the limit, the peer's wish when longer than the backoff.
        assert_eq!(
            retry_wait(&policy, 1, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        // Shorter than the backoff, or not given: the backoff.
        for asked in [None, Some(Duration::from_millis(10))] {
            let wait = retry_wait(&policy, 3, asked);
            assert!(
                wait >= Duration::from_secs(2) && wait <= Duration::from_secs(4),
                "{wait:?}"
            );
        }
    }
}
