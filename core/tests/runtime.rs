//! The journal, the router and the dispatchers together, on a real SQLite
//! file, with a scripted destination standing in for a peer.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nzela_core::journal::{
    Document, Inspector, Journal, JournalError, JournalOptions, Leased, ListFilter, NewDelivery,
    NewMessage, Outcome, Replayed, Routing, SqliteJournal, StoredMessage,
};
use nzela_core::mapping::{Condition, Mapping};
use nzela_core::runtime::dispatch::{DispatchSettings, Dispatcher, Handoff, RetryPolicy};
use nzela_core::runtime::router::{BUSY_AT, Feed, Route, Router, Yielding};
use nzela_core::runtime::{
    Accepted, BoxFuture, CancellationToken, Destination, Incoming, Intake, IntakeError, Outbound,
    Reply, SendOutcome,
};

const ORDER: &str = include_str!("../../mappings/tests/order-paid.json");

fn mapping(name: &str) -> Arc<Mapping> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../mappings")
        .join(name);
    Arc::new(Mapping::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

fn order(id: &str) -> Vec<u8> {
    ORDER.replace("GB-2026-0001842", id).into_bytes()
}

fn incoming(id: &str) -> Incoming {
    Incoming {
        source: "orders".into(),
        body: order(id),
        content_type: Some("application/json".into()),
        business_key: Some(id.into()),
        ..Default::default()
    }
}

/// A destination that answers from a script, then delivers; it records
/// every attempt.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<SendOutcome>>,
    seen: Mutex<Vec<Outbound>>,
}

impl Scripted {
    fn with(script: Vec<SendOutcome>) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: Mutex::new(script.into()),
            seen: Mutex::default(),
        })
    }

    fn seen(&self) -> Vec<Outbound> {
        self.seen.lock().unwrap().clone()
    }
}

impl Destination for Scripted {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(out.clone());
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(SendOutcome::Delivered {
                    response: Some(Reply {
                        body: b"{\"status\": \"ok\"}".to_vec(),
                        content_type: Some("application/json".into()),
                        headers: vec![],
                    }),
                })
        })
    }
}

fn transient(e: &str) -> SendOutcome {
    SendOutcome::Transient {
        error: e.into(),
        retry_after: None,
    }
}

fn settings(name: &str, max_attempts: u32) -> DispatchSettings {
    DispatchSettings {
        name: name.into(),
        concurrency: 4,
        attempt_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            max_age: None,
        },
        reply_to: None,
    }
}

/// A running hub: the router and one dispatcher per destination.
struct Hub {
    journal: Arc<SqliteJournal>,
    intake: Intake,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hub {
    fn start(
        path: &Path,
        routes: Vec<Route>,
        destinations: Vec<(DispatchSettings, Arc<dyn Destination>)>,
    ) -> Hub {
        Hub::start_with(
            path,
            routes,
            destinations,
            Feed::default(),
            Handoff::default,
        )
    }

    /// With a router that gives way to a busy intake as `yielding` says.
    fn start_yielding(
        path: &Path,
        routes: Vec<Route>,
        destinations: Vec<(DispatchSettings, Arc<dyn Destination>)>,
        router_feed: Feed,
        yielding: Yielding,
    ) -> Hub {
        Hub::start_full(
            path,
            routes,
            destinations,
            router_feed,
            Handoff::default,
            yielding,
        )
    }

    /// With the router's feed and the dispatchers' handoffs given.
    fn start_with(
        path: &Path,
        routes: Vec<Route>,
        destinations: Vec<(DispatchSettings, Arc<dyn Destination>)>,
        router_feed: Feed,
        handoff: impl Fn() -> Handoff,
    ) -> Hub {
        Hub::start_full(
            path,
            routes,
            destinations,
            router_feed,
            handoff,
            Yielding::never(),
        )
    }

    fn start_full(
        path: &Path,
        routes: Vec<Route>,
        destinations: Vec<(DispatchSettings, Arc<dyn Destination>)>,
        router_feed: Feed,
        handoff: impl Fn() -> Handoff,
        yielding: Yielding,
    ) -> Hub {
        let journal = Arc::new(SqliteJournal::open(path).unwrap());
        let shutdown = CancellationToken::new();
        let dyn_journal: Arc<dyn Journal> = journal.clone();
        let intake = Intake::new(dyn_journal.clone(), router_feed.clone(), shutdown.clone());
        let mut wakeups = HashMap::new();
        let mut tasks = Vec::new();
        for (s, d) in destinations {
            let w = handoff();
            wakeups.insert(s.name.clone(), w.clone());
            let dispatcher = Dispatcher::new(s, d, dyn_journal.clone(), w, intake.clone());
            tasks.push(tokio::spawn(
                dispatcher.run(shutdown.clone(), Duration::from_secs(2)),
            ));
        }
        let router = Router::new(dyn_journal, routes, router_feed, wakeups).yielding(yielding);
        tasks.push(tokio::spawn(router.run(shutdown.clone())));
        Hub {
            journal,
            intake,
            shutdown,
            tasks,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.journal.close().await;
    }
}

fn route(name: &str, mapping_file: &str, to: &[&str]) -> Route {
    Route {
        name: name.into(),
        from: vec!["orders".into()],
        when: None,
        mapping: mapping(mapping_file),
        to: to.iter().map(|s| s.to_string()).collect(),
    }
}

/// The two routes of the shipped configuration: the customs declaration
/// to `customs`, the UBL order to `commerce`.
fn both_routes() -> Vec<Route> {
    vec![
        route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        ),
        route(
            "to_commerce",
            "marketplace-order-to-ubl-order.yaml",
            &["commerce"],
        ),
    ]
}

/// Waits until `check` holds on the journal, or fails the test.
async fn eventually(path: &Path, what: &str, check: impl Fn(&Inspector) -> bool) {
    let inspector = Inspector::open(path).unwrap();
    for _ in 0..400 {
        if check(&inspector) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn count(i: &Inspector, state: &str) -> usize {
    i.list(&ListFilter {
        state: Some(state.into()),
        limit: 100_000,
        ..Default::default()
    })
    .unwrap()
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_on_disk_when_accept_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = Arc::new(SqliteJournal::open(&path).unwrap());
    let intake = Intake::new(journal.clone(), Feed::default(), CancellationToken::new());
    let mut tasks = Vec::new();
    for i in 0..500 {
        let intake = intake.clone();
        tasks.push(tokio::spawn(async move {
            intake.accept(incoming(&format!("GB-{i}"))).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert!(!a.duplicate);
        ids.push(a.message_id);
    }
    // Group commit: concurrent accepts share transactions; all are kept.
    drop(intake);
    journal.close().await;
    let reopened = SqliteJournal::open(&path).unwrap();
    let stored = reopened.received(10_000).await.unwrap();
    assert_eq!(stored.len(), 500);
    for id in &ids {
        assert!(stored.iter().any(|m| &m.id == id), "{id} lost");
    }
    assert_eq!(stored[0].source, "orders");
    assert_eq!(stored[0].headers, Vec::<(String, String)>::new());
}

#[tokio::test]
async fn a_resent_message_is_a_duplicate_of_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = Arc::new(SqliteJournal::open(&path).unwrap());
    let intake = Intake::new(journal.clone(), Feed::default(), CancellationToken::new());
    let first = intake.accept(incoming("GB-1")).await.unwrap();
    let again = intake.accept(incoming("GB-1")).await.unwrap();
    assert_eq!(again.message_id, first.message_id);
    assert!(again.duplicate);
    // An idempotency key wins over the business key.
    let mut keyed = incoming("GB-1");
    keyed.idempotency_key = Some("k-1".into());
    let k1 = intake.accept(keyed.clone()).await.unwrap();
    assert!(!k1.duplicate);
    assert_eq!(
        intake.accept(keyed).await.unwrap().message_id,
        k1.message_id
    );
    // Another source with the same key is another message.
    let mut other = incoming("GB-1");
    other.source = "inbox".into();
    assert!(!intake.accept(other).await.unwrap().duplicate);
    assert_eq!(journal.received(100).await.unwrap().len(), 3);
    let shown = Inspector::open(&path)
        .unwrap()
        .show(&first.message_id)
        .unwrap();
    assert!(
        shown.events.iter().any(|e| e.kind == "duplicate"),
        "{:?}",
        shown.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_messages_and_keeps_everything_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    // Room for the schema and a few dozen 8 KB messages: then it is full,
    // as a full disk would be.
    let options = JournalOptions {
        max_size: Some(512 * 1024),
    };
    let journal = Arc::new(SqliteJournal::open_with(&path, &options).unwrap());
    let intake = Intake::new(journal.clone(), Feed::default(), CancellationToken::new());
    let big = |i: usize| {
        let mut m = incoming(&format!("GB-{i}"));
        m.body.resize(8 * 1024, b' ');
        m
    };
    let mut acknowledged = Vec::new();
    let mut i = 0;
    let refusal = loop {
        assert!(i < 1_000, "the journal never filled up");
        match intake.accept(big(i)).await {
            Ok(a) => acknowledged.push(a.message_id),
            Err(e) => break e,
        }
        i += 1;
    };
    assert!(
        matches!(&refusal, IntakeError::Unavailable(e) if e.contains("full")),
        "{refusal:?}"
    );
    assert!(acknowledged.len() > 10, "{}", acknowledged.len());
    // Full stays full: concurrent senders, committed together or not, are
    // all refused; none is half-stored.
    let mut tasks = Vec::new();
    for j in 0..50 {
        let intake = intake.clone();
        tasks.push(tokio::spawn(
            async move { intake.accept(big(10_000 + j)).await },
        ));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(IntakeError::Unavailable(_))));
    }
    drop(intake);
    journal.close().await;
    let reopened = SqliteJournal::open(&path).unwrap();
    let stored: Vec<String> = reopened
        .received(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(stored, acknowledged);
}

#[tokio::test]
async fn a_refused_message_is_kept_with_its_reason_and_never_routed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = Arc::new(SqliteJournal::open(&path).unwrap());
    let intake = Intake::new(journal.clone(), Feed::default(), CancellationToken::new());
    let mut bad = incoming("GB-9");
    bad.body = b"{\"order\": ".to_vec();
    bad.idempotency_key = Some("m-9".into());
    let id = intake
        .reject(bad.clone(), "line 1, column 11: unexpected end of input")
        .await
        .unwrap();
    // Not routed, and not a duplicate key: a corrected resend is taken in.
    assert!(journal.received(100).await.unwrap().is_empty());
    let mut fixed = incoming("GB-9");
    fixed.idempotency_key = Some("m-9".into());
    assert!(!intake.accept(fixed).await.unwrap().duplicate);
    let inspector = Inspector::open(&path).unwrap();
    let rejected = inspector
        .list(&ListFilter {
            state: Some("rejected".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].id, id);
    let shown = inspector.show(&id).unwrap();
    assert_eq!(shown.body, bad.body);
    assert!(
        shown.events.iter().any(|e| e.kind == "rejected"
            && e.detail.as_deref().is_some_and(|d| d.contains("column 11"))),
        "{:?}",
        shown.events
    );
}

/// A connector with a bug: its first attempt panics, later ones deliver.
#[derive(Default)]
struct PanicsOnce {
    attempts: Mutex<Vec<u32>>,
}

impl Destination for PanicsOnce {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            self.attempts.lock().unwrap().push(out.attempt);
            if out.attempt == 1 {
                panic!("connector bug on attempt 1");
            }
            SendOutcome::Delivered { response: None }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_panics_fails_the_attempt_and_the_delivery_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Arc::new(PanicsOnce::default());
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 5), customs.clone())],
    );
    let accepted = hub.intake.accept(incoming("GB-PANIC")).await.unwrap();
    eventually(&path, "delivered after the panic", |i| {
        count(i, "delivered") == 1
    })
    .await;
    assert_eq!(*customs.attempts.lock().unwrap(), [1, 2]);
    let detail = Inspector::open(&path)
        .unwrap()
        .show(&accepted.message_id)
        .unwrap();
    assert!(
        detail.events.iter().any(|e| e.kind == "retry_scheduled"
            && e.detail
                .as_deref()
                .is_some_and(|d| d.contains("failed unexpectedly"))),
        "{:?}",
        detail.events
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_queues_every_message_is_still_delivered_exactly_once() {
    // Room for 3 messages on the way to the router and 2 deliveries on the
    // way to each dispatcher: most of the 60 overflow and take the way
    // through the journal, the others the way through memory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![]);
    let commerce = Scripted::with(vec![]);
    let hub = Hub::start_with(
        &path,
        both_routes(),
        vec![
            (settings("customs", 10), customs.clone()),
            (settings("commerce", 10), commerce.clone()),
        ],
        Feed::new(3),
        || Handoff::new(2),
    );
    let mut accepts = tokio::task::JoinSet::new();
    for n in 0..60 {
        let intake = hub.intake.clone();
        accepts.spawn(async move { intake.accept(incoming(&format!("GB-M{n}"))).await });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(a) = accepts.join_next().await {
        ids.insert(a.unwrap().unwrap().message_id);
    }
    assert_eq!(ids.len(), 60);
    eventually(&path, "every message delivered twice", |i| {
        i.list(&ListFilter {
            state: Some("delivered".into()),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .iter()
        .filter(|m| m.deliveries.len() == 2 && m.deliveries.iter().all(|d| d.state == "delivered"))
        .count()
            == 60
    })
    .await;
    for (name, d) in [("customs", &customs), ("commerce", &commerce)] {
        let seen = d.seen();
        let deliveries: std::collections::BTreeSet<_> =
            seen.iter().map(|o| o.delivery_id.clone()).collect();
        let messages: std::collections::BTreeSet<_> =
            seen.iter().map(|o| o.message_id.clone()).collect();
        assert_eq!(seen.len(), 60, "{name}: every delivery sent once");
        assert_eq!(deliveries.len(), 60, "{name}: a delivery was sent twice");
        assert_eq!(messages, ids, "{name}: one delivery per message");
        assert!(seen.iter().all(|o| o.attempt == 1), "{name}");
    }
    // Routed once: two deliveries per message in the journal, no more.
    let inspector = Inspector::open(&path).unwrap();
    for id in &ids {
        assert_eq!(inspector.show(id).unwrap().summary.deliveries.len(), 2);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_over_again_after_its_routing_is_not_sent_again() {
    // The router may see a message twice (from memory and from the
    // journal); the second routing is not recorded, and its deliveries
    // must not reach a dispatcher.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![]);
    let feed = Feed::default();
    let hub = Hub::start_with(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 10), customs.clone())],
        feed.clone(),
        Handoff::default,
    );
    let accepted = hub.intake.accept(incoming("GB-TWICE")).await.unwrap();
    eventually(&path, "delivered", |i| count(i, "delivered") == 1).await;
    feed.committed(Some(StoredMessage {
        id: accepted.message_id.clone(),
        source: "orders".into(),
        received_at: 0,
        content_type: Some("application/json".into()),
        headers: vec![],
        body: order("GB-TWICE"),
        correlation_id: None,
        business_key: Some("GB-TWICE".into()),
    }));
    // A second message behind it: once it is delivered, the first was
    // routed again long before.
    hub.intake.accept(incoming("GB-AFTER")).await.unwrap();
    eventually(&path, "the second delivered", |i| {
        count(i, "delivered") == 2
    })
    .await;
    let seen = customs.seen();
    assert_eq!(
        seen.iter()
            .filter(|o| o.message_id == accepted.message_id)
            .count(),
        1,
        "sent again: {:?}",
        seen.iter()
            .map(|o| (&o.message_id, &o.delivery_id))
            .collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), 2);
    let detail = Inspector::open(&path)
        .unwrap()
        .show(&accepted.message_id)
        .unwrap();
    assert_eq!(detail.summary.deliveries.len(), 1);
    hub.stop().await;
}

/// A destination that never answers; it counts the attempts it got.
#[derive(Default)]
struct Stuck(std::sync::atomic::AtomicUsize);

impl Destination for Stuck {
    fn send<'a>(&'a self, _: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_handed_over_but_not_sent_at_a_stop_have_no_attempt_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let stuck = Arc::new(Stuck::default());
    let mut one_at_a_time = settings("customs", 10);
    one_at_a_time.concurrency = 1;
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(one_at_a_time, stuck.clone())],
    );
    for n in 0..5 {
        hub.intake
            .accept(incoming(&format!("GB-S{n}")))
            .await
            .unwrap();
    }
    // One attempt hangs; the four others wait in the dispatcher's handoff.
    eventually(&path, "all routed", |i| {
        i.list(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .iter()
        .all(|m| m.deliveries.len() == 1)
    })
    .await;
    for _ in 0..200 {
        if stuck.0.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.stop().await;
    assert_eq!(stuck.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    let deliveries: Vec<_> = Inspector::open(&path)
        .unwrap()
        .list(&ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .flat_map(|m| m.deliveries)
        .collect();
    assert_eq!(deliveries.len(), 5);
    let attempted: Vec<_> = deliveries.iter().filter(|d| d.attempts == 1).collect();
    assert_eq!(attempted.len(), 1, "{deliveries:?}");
    assert_eq!(attempted[0].state, "inflight", "cut short by the stop");
    let unsent: Vec<_> = deliveries.iter().filter(|d| d.attempts == 0).collect();
    assert_eq!(unsent.len(), 4, "{deliveries:?}");
    assert!(
        unsent.iter().all(|d| d.state == "pending"),
        "{deliveries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_senders_wait_routing_gives_way_and_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![]);
    let feed = Feed::default();
    let hub = Hub::start_yielding(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 10), customs.clone())],
        feed.clone(),
        // One message at a time, two a second, while the intake is busy.
        Yielding::rate(2),
    );
    // Many HTTP senders wait for their answers.
    let waiting: Vec<_> = (0..BUSY_AT).map(|_| hub.intake.sender_waiting()).collect();
    assert!(feed.intake_busy());
    for n in 0..20 {
        hub.intake
            .accept(incoming(&format!("GB-Y{n}")))
            .await
            .unwrap();
    }
    // Accepted at once; routed at two a second, the rest in the journal.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let routed = Inspector::open(&path).unwrap();
    let received = count(&routed, "received");
    assert!(
        received >= 15,
        "routing did not give way: {received} of 20 messages left unrouted"
    );
    assert!(customs.seen().len() < 5, "{} sent", customs.seen().len());
    // The senders answered: the rest goes out at full speed.
    drop(waiting);
    eventually(&path, "all 20 delivered", |i| count(i, "delivered") == 20).await;
    assert_eq!(customs.seen().len(), 20);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_the_same_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![transient("HTTP 503"), transient("HTTP 503")]);
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 10), customs.clone())],
    );
    let accepted = hub.intake.accept(incoming("GB-7")).await.unwrap();
    eventually(&path, "delivered", |i| count(i, "delivered") == 1).await;
    let seen = customs.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|o| o.delivery_id == seen[0].delivery_id),
        "the delivery id changed between attempts"
    );
    assert_eq!(
        seen.iter().map(|o| o.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(seen[2].message_id, accepted.message_id);
    assert_eq!(seen[2].business_key.as_deref(), Some("GB-7"));
    assert_eq!(seen[2].extension, "xml");
    let body = String::from_utf8(seen[2].body.clone()).unwrap();
    assert!(
        body.contains("<Commercial_reference_number>GB-7</Commercial_reference_number>"),
        "{body}"
    );
    let detail = Inspector::open(&path)
        .unwrap()
        .show(&accepted.message_id)
        .unwrap();
    let kinds: Vec<&str> = detail.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "received",
            "routed",
            "mapped",
            "retry_scheduled",
            "retry_scheduled",
            "delivered"
        ]
    );
    // The routing and the success are read from the rows themselves.
    let detail_of = |kind: &str| {
        detail
            .events
            .iter()
            .find(|e| e.kind == kind)
            .and_then(|e| e.detail.clone())
            .unwrap_or_default()
    };
    assert_eq!(detail_of("routed"), "to_customs");
    let mapped = detail_of("mapped");
    assert!(
        mapped.starts_with("route to_customs for customs: ") && mapped.ends_with(" bytes of xml"),
        "{mapped}"
    );
    assert_eq!(detail_of("delivered"), "attempt 3");
    assert_eq!(
        detail.events[5].delivery_id.as_deref(),
        Some(seen[0].delivery_id.as_str())
    );
    let times: Vec<i64> = detail.events.iter().map(|e| e.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_dead_lettered_and_replayed_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![SendOutcome::Permanent {
        error: "HTTP 400 Bad Request".into(),
    }]);
    let commerce = Scripted::with(vec![]);
    let hub = Hub::start(
        &path,
        both_routes(),
        vec![
            (settings("customs", 10), customs.clone()),
            (settings("commerce", 10), commerce.clone()),
        ],
    );
    let accepted = hub.intake.accept(incoming("GB-8")).await.unwrap();
    eventually(&path, "one dead, one delivered", |i| {
        count(i, "dead") == 1 && count(i, "delivered") == 1
    })
    .await;
    // One destination failing held back nothing else.
    assert_eq!(commerce.seen().len(), 1);
    let inspector = Inspector::open(&path).unwrap();
    let detail = inspector.show(&accepted.message_id).unwrap();
    let dead = detail
        .summary
        .deliveries
        .iter()
        .find(|d| d.state == "dead")
        .unwrap();
    assert_eq!(dead.last_error.as_deref(), Some("HTTP 400 Bad Request"));
    assert_eq!(dead.route, "to_customs");
    // The peer is fixed (the script is empty now): a replay delivers.
    let requeued = inspector.replay(&accepted.message_id).unwrap();
    assert_eq!(requeued, [Replayed::Delivery(dead.id.clone())]);
    let id = accepted.message_id.clone();
    eventually(&path, "replayed delivery delivered", move |i| {
        i.show(&id)
            .unwrap()
            .summary
            .deliveries
            .iter()
            .all(|d| d.state == "delivered")
    })
    .await;
    let seen = customs.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].delivery_id, seen[1].delivery_id);
    assert!(
        inspector
            .show(&accepted.message_id)
            .unwrap()
            .events
            .iter()
            .any(|e| e.kind == "replayed")
    );
    // Nothing left to replay.
    assert!(inspector.replay(&accepted.message_id).unwrap().is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_keeps_failing_is_dead_lettered_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with((0..10).map(|_| transient("connection refused")).collect());
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 3), customs.clone())],
    );
    hub.intake.accept(incoming("GB-9")).await.unwrap();
    eventually(&path, "dead after 3 attempts", |i| count(i, "dead") == 1).await;
    assert_eq!(customs.seen().len(), 3);
    let list = Inspector::open(&path)
        .unwrap()
        .list(&ListFilter {
            state: Some("dead".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let error = list[0].deliveries[0].last_error.clone().unwrap();
    assert!(
        error.starts_with("gave up after 3 attempts: connection refused"),
        "{error}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_errors_dead_letter_and_unmatched_messages_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![]);
    let mut only_paid = route(
        "to_customs",
        "marketplace-order-to-asycuda-export.yaml",
        &["customs"],
    );
    only_paid.when = Some(Condition::compile("event == \"order.paid\"").unwrap());
    let hub = Hub::start(
        &path,
        vec![only_paid],
        vec![(settings("customs", 10), customs.clone())],
    );
    // No NIU: the declaration cannot be made.
    let broken = ORDER
        .replace("\"niu\": \"M2019110001234567\",", "")
        .into_bytes();
    let bad = hub
        .intake
        .accept(Incoming {
            source: "orders".into(),
            body: broken,
            ..Default::default()
        })
        .await
        .unwrap();
    // Not an order.paid event: no route applies.
    let cancelled = ORDER.replace("order.paid", "order.cancelled").into_bytes();
    let other = hub
        .intake
        .accept(Incoming {
            source: "orders".into(),
            body: cancelled,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(&path, "dead and unrouted", |i| {
        count(i, "dead") == 1 && count(i, "unrouted") == 1
    })
    .await;
    assert!(customs.seen().is_empty());
    let inspector = Inspector::open(&path).unwrap();
    let bad = inspector.show(&bad.message_id).unwrap();
    let error = bad.summary.deliveries[0].last_error.clone().unwrap();
    assert!(
        error.contains("required field order.seller.niu is missing"),
        "{error}"
    );
    assert!(bad.events.iter().any(|e| e.kind == "mapping_failed"));
    let other = inspector.show(&other.message_id).unwrap();
    assert_eq!(other.summary.state, "unrouted");
    // Replayed, the delivery is mapped again by the running router: the
    // order still has no NIU, so it is dead again, under the same id, with
    // a second failure in its trail.
    let delivery = bad.summary.deliveries[0].id.clone();
    assert_eq!(
        inspector.replay(&bad.summary.id).unwrap(),
        [Replayed::Remap(delivery.clone())]
    );
    let id = bad.summary.id.clone();
    eventually(&path, "mapped again and dead again", |i| {
        let d = i.show(&id).unwrap();
        let failures = d
            .events
            .iter()
            .filter(|e| e.kind == "mapping_failed")
            .count();
        failures == 2 && d.summary.deliveries[0].state == "dead"
    })
    .await;
    let again = inspector.show(&id).unwrap();
    assert_eq!(again.summary.deliveries.len(), 1);
    assert_eq!(again.summary.deliveries[0].id, delivery);
    assert_eq!(again.summary.state, "routed");
    assert!(customs.seen().is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_stopped_run_are_due_at_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    {
        // Route without dispatching, then lease the delivery and stop
        // before its outcome: as a crash in the middle of an attempt.
        let hub = Hub::start(
            &path,
            vec![route(
                "to_customs",
                "marketplace-order-to-asycuda-export.yaml",
                &["customs"],
            )],
            vec![],
        );
        hub.intake.accept(incoming("GB-10")).await.unwrap();
        eventually(&path, "routed", |i| count(i, "pending") == 1).await;
        let leased = hub.journal.lease("customs", i64::MAX, 10).await.unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].attempt, 1);
        hub.stop().await;
    }
    let journal = SqliteJournal::open(&path).unwrap();
    assert!(
        journal
            .lease("customs", i64::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "still leased"
    );
    assert_eq!(journal.release_leases().await.unwrap(), 1);
    let again = journal
        .lease("customs", nzela_core::runtime::now_millis(), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the released delivery is due now");
    assert_eq!(again[0].attempt, 2);
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_becomes_a_new_correlated_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Scripted::with(vec![]);
    let mut s = settings("customs", 10);
    s.reply_to = Some("customs_replies".into());
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(s, customs.clone())],
    );
    let accepted = hub.intake.accept(incoming("GB-11")).await.unwrap();
    eventually(&path, "a reply message", |i| {
        i.find(&accepted.message_id)
            .map(|ids| ids.len())
            .unwrap_or(0)
            == 2
    })
    .await;
    let inspector = Inspector::open(&path).unwrap();
    let ids = inspector.find(&accepted.message_id).unwrap();
    let reply = ids.iter().find(|id| **id != accepted.message_id).unwrap();
    let reply = inspector.show(reply).unwrap();
    assert_eq!(reply.summary.source, "customs_replies");
    assert_eq!(
        reply.correlation_id.as_deref(),
        Some(accepted.message_id.as_str())
    );
    assert_eq!(reply.body, b"{\"status\": \"ok\"}");
    hub.stop().await;
}

/// A journal whose first `record_outcome` fails as a full disk would; the
/// rest goes to the real journal.
struct OutcomeFailsOnce {
    inner: Arc<SqliteJournal>,
    failed: std::sync::atomic::AtomicBool,
}

impl Journal for OutcomeFailsOnce {
    fn accept(&self, message: NewMessage) -> BoxFuture<'_, Result<Accepted, JournalError>> {
        self.inner.accept(message)
    }
    fn reject(
        &self,
        message: NewMessage,
        reason: String,
    ) -> BoxFuture<'_, Result<String, JournalError>> {
        self.inner.reject(message, reason)
    }
    fn received(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, JournalError>> {
        self.inner.received(limit)
    }
    fn record_routing(
        &self,
        routings: Vec<Routing>,
    ) -> BoxFuture<'_, Result<Vec<bool>, JournalError>> {
        self.inner.record_routing(routings)
    }
    fn lease<'a>(
        &'a self,
        destination: &'a str,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Leased>, JournalError>> {
        self.inner.lease(destination, now, limit)
    }
    fn record_outcome(
        &self,
        delivery_id: String,
        attempt: u32,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(JournalError::Storage("database or disk is full".to_owned()))
            });
        }
        self.inner.record_outcome(delivery_id, attempt, outcome)
    }
    fn next_due<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, JournalError>> {
        self.inner.next_due(destination)
    }
    fn release_leases(&self) -> BoxFuture<'_, Result<usize, JournalError>> {
        self.inner.release_leases()
    }
    fn unlease(&self, leases: Vec<(String, u32)>) -> BoxFuture<'_, Result<usize, JournalError>> {
        self.inner.unlease(leases)
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_cannot_be_recorded_is_recorded_once_the_journal_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let inner = Arc::new(SqliteJournal::open(&path).unwrap());
    let journal: Arc<dyn Journal> = Arc::new(OutcomeFailsOnce {
        inner: inner.clone(),
        failed: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let router_feed = Feed::default();
    let intake = Intake::new(journal.clone(), router_feed.clone(), shutdown.clone());
    let customs = Scripted::with(vec![]);
    let wakeup = Handoff::default();
    let dispatcher = Dispatcher::new(
        settings("customs", 10),
        customs.clone(),
        journal.clone(),
        wakeup.clone(),
        intake.clone(),
    );
    let router = Router::new(
        journal.clone(),
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        router_feed,
        HashMap::from([("customs".to_owned(), wakeup)]),
    );
    let tasks = [
        tokio::spawn(dispatcher.run(shutdown.clone(), Duration::from_secs(2))),
        tokio::spawn(router.run(shutdown.clone())),
    ];
    intake.accept(incoming("GB-12")).await.unwrap();
    // The first outcome is lost to a journal error: the delivery must not
    // stay leased until the next start.
    eventually(&path, "the delivery recorded as delivered", |i| {
        count(i, "delivered") == 1
    })
    .await;
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    inner.close().await;
}

/// A destination that answers only once `release` is cancelled.
struct Gated {
    release: CancellationToken,
    seen: Mutex<Vec<Outbound>>,
}

impl Destination for Gated {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(out.clone());
            self.release.cancelled().await;
            SendOutcome::Delivered {
                response: Some(Reply {
                    body: b"{\"status\": \"paid\"}".to_vec(),
                    content_type: Some("application/json".into()),
                    headers: vec![],
                }),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_arrives_while_stopping_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let customs = Arc::new(Gated {
        release: CancellationToken::new(),
        seen: Mutex::default(),
    });
    let mut s = settings("customs", 10);
    s.reply_to = Some("customs_replies".into());
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(s, customs.clone())],
    );
    let accepted = hub.intake.accept(incoming("GB-13")).await.unwrap();
    for _ in 0..400 {
        if !customs.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(customs.seen.lock().unwrap().len(), 1, "no attempt was made");
    // The hub stops while the attempt is in flight; the peer answers within
    // the grace period.
    hub.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    customs.release.cancel();
    hub.stop().await;
    let inspector = Inspector::open(&path).unwrap();
    let ids = inspector.find(&accepted.message_id).unwrap();
    assert_eq!(ids.len(), 2, "the reply was not kept: {ids:?}");
    let detail = inspector.show(&accepted.message_id).unwrap();
    assert_eq!(detail.summary.deliveries[0].state, "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_any_date_waits_no_longer_than_max_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    // As many milliseconds as an i64 holds: now + this overflows.
    let far = Duration::from_millis(i64::MAX as u64);
    let customs = Scripted::with(vec![SendOutcome::Transient {
        error: "HTTP 503 Service Unavailable".into(),
        retry_after: Some(far),
    }]);
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(settings("customs", 10), customs.clone())],
    );
    let accepted = hub.intake.accept(incoming("GB-14")).await.unwrap();
    let id = accepted.message_id.clone();
    // Tried again after max_backoff (50 ms), and delivered.
    eventually(&path, "delivered at the second attempt", move |i| {
        let d = i.show(&id).unwrap().summary.deliveries;
        d.len() == 1 && d[0].state == "delivered" && d[0].attempts == 2
    })
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_beside_a_busy_journal_waits_for_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = Arc::new(SqliteJournal::open(&path).unwrap());
    // Dead deliveries to replay.
    let mut ids = Vec::new();
    for n in 0..40 {
        let mut m = NewMessage::from(incoming(&format!("GB-R{n}")));
        m.dedup_key = None;
        let id = journal.accept(m).await.unwrap().message_id;
        journal
            .record_routing(vec![Routing {
                message_id: id.clone(),
                deliveries: vec![NewDelivery {
                    id: nzela_core::journal::new_id(),
                    route: "to_customs".into(),
                    destination: "customs".into(),
                    document: Ok(Document {
                        body: b"<x/>".to_vec(),
                        content_type: "application/xml".into(),
                        extension: "xml".into(),
                    }),
                    leased: false,
                }],
                routes: vec!["to_customs".into()],
            }])
            .await
            .unwrap();
        ids.push(id);
    }
    for d in journal.lease("customs", i64::MAX, 100).await.unwrap() {
        journal
            .record_outcome(
                d.id,
                d.attempt,
                Outcome::Dead {
                    error: "HTTP 400".into(),
                },
            )
            .await
            .unwrap();
    }
    // The daemon keeps writing while an operator replays.
    let busy = CancellationToken::new();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (journal, busy) = (journal.clone(), busy.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !busy.is_cancelled() {
                    let mut m = NewMessage::from(incoming(&format!("GB-W{w}-{n}")));
                    m.body.resize(64 * 1024, b' ');
                    journal.accept(m).await.unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let replayed = tokio::task::spawn_blocking(move || {
        let inspector = Inspector::open(&path).unwrap();
        ids.iter()
            .map(|id| inspector.replay(id).map(|r| r.len()))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    busy.cancel();
    for w in writers {
        w.await.unwrap();
    }
    for r in &replayed {
        assert!(matches!(r, Ok(1)), "{r:?}");
    }
    journal.close().await;
}

/// A scripted destination that says at once that it is available again.
struct BackAtOnce(Arc<Scripted>);

impl Destination for BackAtOnce {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        self.0.send(out)
    }

    fn available(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_destination_uses_up_no_attempts_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let unavailable = || SendOutcome::Unavailable {
        error: "not connected to the AMQP broker: connection refused".into(),
    };
    // One attempt allowed: only the one that is made counts.
    let customs = Scripted::with(vec![unavailable(), unavailable(), unavailable()]);
    let hub = Hub::start(
        &path,
        vec![route(
            "to_customs",
            "marketplace-order-to-asycuda-export.yaml",
            &["customs"],
        )],
        vec![(
            settings("customs", 1),
            Arc::new(BackAtOnce(customs.clone())) as Arc<dyn Destination>,
        )],
    );
    let accepted = hub.intake.accept(incoming("GB-15")).await.unwrap();
    let id = accepted.message_id.clone();
    eventually(
        &path,
        "delivered after the destination came back",
        move |i| {
            let d = i.show(&id).unwrap().summary.deliveries;
            d.len() == 1 && d[0].state == "delivered"
        },
    )
    .await;
    assert_eq!(customs.seen().len(), 4);
    let detail = Inspector::open(&path)
        .unwrap()
        .show(&accepted.message_id)
        .unwrap();
    assert_eq!(detail.summary.deliveries[0].attempts, 1, "{detail:?}");
    let waiting: Vec<_> = detail
        .events
        .iter()
        .filter(|e| e.kind == "waiting")
        .collect();
    assert_eq!(waiting.len(), 1, "{:?}", detail.events);
    assert!(
        waiting[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("not connected to the AMQP broker")),
        "{waiting:?}"
    );
    assert!(
        !detail.events.iter().any(|e| e.kind == "retry_scheduled"),
        "{:?}",
        detail.events
    );
    hub.stop().await;
}
