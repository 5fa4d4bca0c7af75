//! The router: takes committed messages from the journal, finds the routes
//! that apply, maps each message once per route, and records one delivery
//! per destination, in the same transaction that marks the message routed.
//!
//! The journal is the truth; memory is a shortcut. After each commit the
//! intake hands the committed message to the router's [`Feed`], so that
//! the router need not read back what was just written. The router reads
//! from the journal at start (a message accepted just before a crash is
//! routed after the restart like any other), whenever the feed overflowed
//! or a recording failed, and every second when idle. A message can thus
//! be seen twice (from the feed and from the journal): the journal routes
//! a message once only, and the second routing is discarded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::CancellationToken;
use super::dispatch::Handoff;
use super::now_millis;
use crate::codec::Codec;
use crate::journal::{Document, Journal, Leased, NewDelivery, Routing, StoredMessage, new_id};
use crate::mapping::{Condition, Mapping};
use crate::value::Value;

/// Messages routed per journal read.
const PAGE: usize = 512;
/// How long the router waits for a wake-up before looking anyway.
const IDLE: Duration = Duration::from_secs(1);

/// Wakes the router (after a commit). Cheap to clone; a wake-up is never
/// lost: one given while the router is busy is seen when it next waits.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn wait(&self) {
        self.0.notified().await;
    }
}

/// Committed messages waiting in memory to be routed: no more than this
/// many, nor more bytes of bodies than [`FEED_BYTES`]; past either, the
/// router reads them back from the journal.
const FEED: usize = 4 * PAGE;
const FEED_BYTES: usize = 64 << 20;

/// The way from the intake to the router: the messages just committed, and
/// the wake-up. Cheap to clone.
#[derive(Clone)]
pub struct Feed(Arc<FeedInner>);

struct FeedInner {
    wakeup: Wakeup,
    capacity: usize,
    /// The messages waiting, and the bytes of their bodies.
    queue: Mutex<(VecDeque<StoredMessage>, usize)>,
    /// Messages were committed that are not in `queue`: the router must
    /// read the journal.
    missed: AtomicBool,
    /// Senders waiting for the commit of their message (see
    /// [`Feed::sender_waiting`]).
    waiting: AtomicUsize,
    /// When [`BUSY_AT`] senders last waited at once, in milliseconds since
    /// `epoch`; `u64::MAX` before it ever happened.
    busy_at: AtomicU64,
    epoch: Instant,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(FEED)
    }
}

impl Feed {
    /// Room for `capacity` messages (and 64 MiB of bodies).
    pub fn new(capacity: usize) -> Feed {
        Feed(Arc::new(FeedInner {
            wakeup: Wakeup::default(),
            capacity,
            queue: Mutex::new((VecDeque::new(), 0)),
            missed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            busy_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }))
    }

    /// Counts a sender as waiting for the commit of its message until the
    /// guard is dropped (answered, refused or gone). For sources whose
    /// sender holds a request open for the answer (HTTP); a broker or a
    /// folder does not wait that way.
    pub fn sender_waiting(&self) -> Waiting<'_> {
        let now = self.0.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if now >= BUSY_AT {
            self.0.busy_at.store(self.millis(), Ordering::Relaxed);
        }
        Waiting(&self.0)
    }

    /// Whether [`BUSY_AT`] senders wait at once, or did within the last
    /// [`BUSY_FOR`]: the intake has more than it can answer at once.
    pub fn intake_busy(&self) -> bool {
        if self.0.waiting.load(Ordering::Relaxed) >= BUSY_AT {
            return true;
        }
        let at = self.0.busy_at.load(Ordering::Relaxed);
        at != u64::MAX && self.millis().saturating_sub(at) < BUSY_FOR.as_millis() as u64
    }

    fn millis(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// Whether a message of `bytes` would be kept now (worth copying
    /// before it is committed).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.0
            .queue
            .lock()
            .is_ok_and(|q| q.0.len() < self.0.capacity && q.1 + bytes <= FEED_BYTES)
    }

    /// Hands over a message just committed to the journal (in state
    /// `received`), or says that one was committed and not kept (`None`).
    pub fn committed(&self, message: Option<StoredMessage>) {
        let kept = message.is_some_and(|m| match self.0.queue.lock() {
            Ok(mut q) if q.0.len() < self.0.capacity && q.1 + m.body.len() <= FEED_BYTES => {
                q.1 += m.body.len();
                q.0.push_back(m);
                true
            }
            _ => false,
        });
        if !kept {
            self.0.missed.store(true, Ordering::Release);
        }
        self.0.wakeup.wake();
    }

    fn take(&self, max: usize) -> Vec<StoredMessage> {
        match self.0.queue.lock() {
            Ok(mut q) => {
                let n = q.0.len().min(max);
                let taken: Vec<StoredMessage> = q.0.drain(..n).collect();
                q.1 = q.1.saturating_sub(taken.iter().map(|m| m.body.len()).sum());
                taken
            }
            Err(_) => {
                self.0.missed.store(true, Ordering::Release);
                Vec::new()
            }
        }
    }

    /// Everything waiting in memory is in the journal as well: forgets it
    /// before a journal read, which finds it.
    fn clear(&self) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.0.clear();
            q.1 = 0;
        }
    }

    fn missed(&self) -> bool {
        self.0.missed.swap(false, Ordering::AcqRel)
    }
}

/// A sender waiting for its commit, counted while this lives.
pub struct Waiting<'a>(&'a FeedInner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Senders waiting for their commits at once from which the intake counts
/// as busy. A commit takes 1 – 3 ms: below saturation, even ten thousand
/// requests a second keep fewer than this waiting at once (Little's law);
/// a burst of webhooks from many senders keeps more.
pub const BUSY_AT: usize = 32;

/// How long the intake counts as busy after [`BUSY_AT`] senders last
/// waited at once: between two group commits, the senders of the next
/// one are still being read.
pub const BUSY_FOR: Duration = Duration::from_millis(200);

/// How the router gives way to a busy intake.
///
/// Mapping, recording the deliveries and writing them out take the same
/// cores and the same journal writer as accepting messages. While senders
/// wait for their commits ([`Feed::intake_busy`]), the router routes at
/// most `rate` messages a second, in small pages; the others wait in the
/// journal (memory stays flat), and routing goes back to full speed as
/// soon as the intake is no longer busy. Routing never stops: `rate` is
/// also what it keeps up under any load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yielding {
    /// Messages a second; `None`: never give way.
    rate: Option<u32>,
}

/// The longest pause between two pages, whatever the rate.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How often a pause looks whether the intake is still busy.
const PAUSE_STEP: Duration = Duration::from_millis(5);

impl Yielding {
    /// At most `per_second` messages routed a second while the intake is
    /// busy; 0 never gives way.
    pub fn rate(per_second: u32) -> Yielding {
        Yielding {
            rate: (per_second > 0).then_some(per_second),
        }
    }

    /// Never give way.
    pub fn never() -> Yielding {
        Yielding { rate: None }
    }

    /// The largest page while the intake is busy: a tenth of a second's
    /// worth, so that what is routed goes out evenly.
    fn page(&self) -> usize {
        self.rate.map_or(PAGE, |r| (r as usize / 10).clamp(1, PAGE))
    }

    /// The pause that follows a page of `routed` messages that took
    /// `spent`, while the intake is busy.
    pub fn pause_after(&self, routed: usize, spent: Duration) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let due = Duration::from_secs_f64(routed as f64 / f64::from(rate));
        due.saturating_sub(spent).min(MAX_PAUSE)
    }
}

impl Default for Yielding {
    fn default() -> Self {
        Yielding::never()
    }
}

/// A route: where messages from some sources go, and as what.
pub struct Route {
    pub name: String,
    /// Source names.
    pub from: Vec<String>,
    /// Applies only to messages for which this is true.
    pub when: Option<Condition>,
    pub mapping: Arc<Mapping>,
    /// Destination names: one delivery each (fan-out).
    pub to: Vec<String>,
}

pub struct Router {
    journal: Arc<dyn Journal>,
    routes: Arc<Vec<Route>>,
    feed: Feed,
    /// Each destination's dispatcher, handed its new deliveries.
    dispatchers: HashMap<String, Handoff>,
    yielding: Yielding,
}

impl Router {
    pub fn new(
        journal: Arc<dyn Journal>,
        routes: Vec<Route>,
        feed: Feed,
        dispatchers: HashMap<String, Handoff>,
    ) -> Router {
        Router {
            journal,
            routes: Arc::new(routes),
            feed,
            dispatchers,
            yielding: Yielding::never(),
        }
    }

    /// Pauses between pages while the intake is busy (see [`Yielding`]).
    pub fn yielding(mut self, yielding: Yielding) -> Router {
        self.yielding = yielding;
        self
    }

    /// Routes until `shutdown`; what is committed stays committed, what is
    /// not is routed at the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Read the journal first: what was accepted before the start.
        let mut from_journal = true;
        let mut looked = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let limit = if self.feed.intake_busy() {
                self.yielding.page()
            } else {
                PAGE
            };
            // Told to, or once a second even under a steady stream: what
            // reached the journal by another way is routed all the same.
            if self.feed.missed() || looked.elapsed() >= IDLE {
                from_journal = true;
            }
            let page = if from_journal {
                looked = Instant::now();
                self.feed.clear();
                match self.journal.received(limit).await {
                    Ok(p) => {
                        // Read until the journal has nothing left.
                        from_journal = !p.is_empty();
                        p
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read messages to route; trying again");
                        pause(&shutdown, IDLE).await;
                        continue;
                    }
                }
            } else {
                self.feed.take(limit)
            };
            if page.is_empty() {
                tokio::select! {
                    () = self.feed.0.wakeup.wait() => {}
                    // Quiet for a while: look at the journal anyway.
                    () = tokio::time::sleep(IDLE) => from_journal = true,
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            // Mapping is CPU work: off the reactor, on every core.
            let chunk = page.len().div_ceil(workers);
            let mut tasks = Vec::new();
            for part in page.chunks(chunk) {
                let part = part.to_vec();
                let routes = self.routes.clone();
                tasks.push(tokio::task::spawn_blocking(move || {
                    part.iter()
                        .map(|m| route_guarded(&routes, m))
                        .collect::<Vec<_>>()
                }));
            }
            let mut routings: Vec<Routing> = Vec::with_capacity(page.len());
            for t in tasks {
                match t.await {
                    Ok(r) => routings.extend(r),
                    Err(e) => {
                        tracing::error!(error = %e, "a routing task failed");
                        // Its messages are still in the journal.
                        from_journal = true;
                    }
                }
            }
            for r in &routings {
                log_routing(r);
            }
            let handed = self.lease_new(&page, &mut routings);
            let missed: std::collections::BTreeSet<String> = routings
                .iter()
                .flat_map(|r| &r.deliveries)
                .filter(|d| d.document.is_ok() && !d.leased)
                .map(|d| d.destination.clone())
                .collect();
            match self.journal.record_routing(routings).await {
                Ok(recorded) => {
                    for (deliveries, recorded) in handed.into_iter().zip(recorded) {
                        for (handoff, d) in deliveries {
                            if recorded {
                                handoff.give(d);
                            } else {
                                // Not stored as leased: routed already, or
                                // routed again to map a replayed delivery,
                                // which its dispatcher reads from the journal.
                                handoff.cancel(d.document.body.len());
                                handoff.wake();
                            }
                        }
                    }
                    // Deliveries stored `pending` (no room in memory).
                    for d in missed {
                        if let Some(h) = self.dispatchers.get(&d) {
                            h.wake();
                        }
                    }
                }
                Err(e) => {
                    for (handoff, d) in handed.into_iter().flatten() {
                        handoff.cancel(d.document.body.len());
                    }
                    tracing::error!(error = %e, "cannot record routing; trying again");
                    // The page is gone from memory, not from the journal.
                    from_journal = true;
                    pause(&shutdown, IDLE).await;
                }
            }
            let routed = page.len();
            give_way(
                &self.feed,
                self.yielding,
                routed,
                started.elapsed(),
                &shutdown,
            )
            .await;
        }
    }

    /// Leases each new delivery to its dispatcher where it has room in
    /// memory (the delivery is then stored `inflight`, attempt 1). Returns,
    /// per routing, the deliveries to hand over once the routing is
    /// committed.
    fn lease_new(
        &self,
        page: &[StoredMessage],
        routings: &mut [Routing],
    ) -> Vec<Vec<(&Handoff, Leased)>> {
        let messages: HashMap<&str, &StoredMessage> =
            page.iter().map(|m| (m.id.as_str(), m)).collect();
        let now = now_millis();
        routings
            .iter_mut()
            .map(|r| {
                let Some(m) = messages.get(r.message_id.as_str()) else {
                    return Vec::new();
                };
                let mut handed = Vec::new();
                for d in &mut r.deliveries {
                    let (Ok(document), Some(handoff)) =
                        (&d.document, self.dispatchers.get(&d.destination))
                    else {
                        continue;
                    };
                    if !handoff.reserve(document.body.len()) {
                        continue;
                    }
                    d.leased = true;
                    handed.push((
                        handoff,
                        Leased {
                            id: d.id.clone(),
                            message_id: m.id.clone(),
                            route: d.route.clone(),
                            destination: d.destination.clone(),
                            attempt: 1,
                            document: document.clone(),
                            business_key: m.business_key.clone(),
                            correlation_id: m.correlation_id.clone(),
                            received_at: m.received_at,
                            created_at: now,
                            budget_attempts: 0,
                            budget_since: now,
                        },
                    ));
                }
                handed
            })
            .collect()
    }
}

/// After a page of `routed` messages that took `spent`: while the intake
/// is busy, pauses as `yielding` says, and no longer than it stays busy.
async fn give_way(
    feed: &Feed,
    yielding: Yielding,
    routed: usize,
    spent: Duration,
    shutdown: &CancellationToken,
) {
    let until = Instant::now() + yielding.pause_after(routed, spent);
    while feed.intake_busy() && !shutdown.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        pause(shutdown, left.min(PAUSE_STEP)).await;
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

fn log_routing(r: &Routing) {
    if r.deliveries.is_empty() {
        tracing::warn!(message_id = %r.message_id, "no route matched; message kept as unrouted");
    }
    for d in &r.deliveries {
        match &d.document {
            Ok(_) => {
                tracing::debug!(message_id = %r.message_id, route = %d.route, destination = %d.destination, delivery_id = %d.id, "mapped")
            }
            Err(e) => {
                tracing::error!(message_id = %r.message_id, route = %d.route, destination = %d.destination, delivery_id = %d.id, error = %e, "mapping failed; delivery dead-lettered")
            }
        }
    }
}

/// Routes one message: decodes it once per input format, checks each
/// route's condition, maps it once per route.
pub fn route_one(routes: &[Route], m: &StoredMessage) -> Routing {
    let mut decoded: Vec<(&Codec, Result<Value, String>)> = Vec::new();
    let mut deliveries = Vec::new();
    let mut matched = Vec::new();
    for route in routes.iter().filter(|r| r.from.contains(&m.source)) {
        let codec = route.mapping.input();
        let i = match decoded.iter().position(|(c, _)| *c == codec) {
            Some(i) => i,
            None => {
                let v = codec
                    .decode(&m.body, route.mapping.limits())
                    .map_err(|e| e.to_string());
                decoded.push((codec, v));
                decoded.len() - 1
            }
        };
        let document = match &decoded[i].1 {
            Err(e) => Err(format!("cannot read the message: {e}")),
            Ok(value) => {
                if let Some(cond) = &route.when {
                    match cond.eval(value) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            deliver_error(&mut deliveries, route, format!("route condition: {e}"));
                            matched.push(route.name.clone());
                            continue;
                        }
                    }
                }
                route
                    .mapping
                    .run_value(value)
                    .map_err(|e| e.to_string())
                    .map(|body| {
                        let format = route.mapping.output().format();
                        Document {
                            body,
                            content_type: format.content_type().to_owned(),
                            extension: format.name().to_owned(),
                        }
                    })
            }
        };
        matched.push(route.name.clone());
        for to in &route.to {
            deliveries.push(NewDelivery {
                id: new_id(),
                route: route.name.clone(),
                destination: to.clone(),
                document: document.clone(),
                leased: false,
            });
        }
    }
    Routing {
        message_id: m.id.clone(),
        deliveries,
        routes: matched,
    }
}

/// [`route_one`], with a panic inside a mapping turned into dead-lettered
/// deliveries on every route of the message's source, naming the failure:
/// a message that breaks the engine is kept and reported, and never stops
/// the router.
fn route_guarded(routes: &[Route], m: &StoredMessage) -> Routing {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route_one(routes, m))) {
        Ok(r) => r,
        Err(panic) => {
            let why = super::panic_message(panic.as_ref());
            let error = format!("the mapping failed unexpectedly (internal error: {why})");
            let mut deliveries = Vec::new();
            let mut matched = Vec::new();
            for route in routes.iter().filter(|r| r.from.contains(&m.source)) {
                deliver_error(&mut deliveries, route, error.clone());
                matched.push(route.name.clone());
            }
            Routing {
                message_id: m.id.clone(),
                deliveries,
                routes: matched,
            }
        }
    }
}

fn deliver_error(deliveries: &mut Vec<NewDelivery>, route: &Route, error: String) {
    for to in &route.to {
        deliveries.push(NewDelivery {
            id: new_id(),
            route: route.name.clone(),
            destination: to.clone(),
            document: Err(error.clone()),
            leased: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_sets_the_pages_and_the_pauses_between_them() {
        let y = Yielding::rate(500);
        assert_eq!(y.page(), 50);
        // 50 messages at 500 a second: a tenth of a second, less what the
        // page itself took.
        assert_eq!(
            y.pause_after(50, Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        assert_eq!(
            y.pause_after(50, Duration::from_millis(300)),
            Duration::ZERO
        );
        // Never longer than MAX_PAUSE, even after a large page.
        assert_eq!(y.pause_after(PAGE, Duration::ZERO), MAX_PAUSE);
        assert_eq!(Yielding::rate(3).page(), 1);
        assert_eq!(Yielding::rate(1_000_000).page(), PAGE);
        // 0, or never: full pages and no pause.
        assert_eq!(Yielding::rate(0), Yielding::never());
        assert_eq!(Yielding::default(), Yielding::never());
        assert_eq!(Yielding::never().page(), PAGE);
        assert_eq!(
            Yielding::never().pause_after(PAGE, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_intake_is_busy_from_enough_waiting_senders_and_for_a_while_after() {
        let feed = Feed::default();
        let mut waiting: Vec<Waiting> = (0..BUSY_AT - 1).map(|_| feed.sender_waiting()).collect();
        assert!(!feed.intake_busy());
        waiting.push(feed.sender_waiting());
        assert!(feed.intake_busy());
        // As long as they wait.
        tokio::time::advance(BUSY_FOR * 3).await;
        assert!(feed.intake_busy());
        // Answered: still busy for BUSY_FOR after the last sender came,
        // the next group being read.
        waiting.pop();
        waiting.push(feed.sender_waiting());
        drop(waiting);
        assert_eq!(feed.0.waiting.load(Ordering::Relaxed), 0);
        tokio::time::advance(BUSY_FOR - Duration::from_millis(10)).await;
        assert!(feed.intake_busy());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!feed.intake_busy());
        // Fewer than BUSY_AT at once, however long: never busy.
        let fewer: Vec<Waiting> = (0..BUSY_AT - 1).map(|_| feed.sender_waiting()).collect();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!feed.intake_busy());
        drop(fewer);
    }

    #[tokio::test(start_paused = true)]
    async fn routing_pauses_only_while_the_intake_is_busy() {
        let feed = Feed::default();
        let shutdown = CancellationToken::new();
        let y = Yielding::rate(500);
        let page = Duration::from_millis(40);

        // Not busy: no pause.
        let t = Instant::now();
        give_way(&feed, y, 50, page, &shutdown).await;
        assert_eq!(t.elapsed(), Duration::ZERO);

        // Busy throughout: the page's tenth of a second, less its 40 ms.
        let waiting: Vec<Waiting> = (0..BUSY_AT).map(|_| feed.sender_waiting()).collect();
        let t = Instant::now();
        give_way(&feed, y, 50, page, &shutdown).await;
        assert_eq!(t.elapsed(), Duration::from_millis(60));

        // Never giving way: no pause, however busy.
        let t = Instant::now();
        give_way(&feed, Yielding::never(), 50, page, &shutdown).await;
        assert_eq!(t.elapsed(), Duration::ZERO);

        // The senders answered: the pause ends within a step of the intake
        // no longer counting as busy.
        drop(waiting);
        let t = Instant::now();
        give_way(&feed, y, PAGE, page, &shutdown).await;
        assert!(
            t.elapsed() >= BUSY_FOR - Duration::from_millis(60)
                && t.elapsed() <= BUSY_FOR + PAUSE_STEP,
            "paused {:?}",
            t.elapsed()
        );

        // A stop ends a pause at once.
        let _waiting: Vec<Waiting> = (0..BUSY_AT).map(|_| feed.sender_waiting()).collect();
        shutdown.cancel();
        let t = Instant::now();
        give_way(&feed, y, PAGE, page, &shutdown).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
