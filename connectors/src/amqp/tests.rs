use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};
use nzela_core::runtime::{Destination, SendOutcome};
use serde_json::json;

use super::config::{DestinationConfig, SourceConfig};
use super::incoming::{Received, base64_decode, incoming};
use super::{AmqpDestination, Argument, ExchangeType};
use crate::template::sample;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A source's largest body, where the limit is not what is tested.
const MAX_BODY: usize = 1 << 20;

fn source(extra: serde_json::Value) -> Result<SourceConfig, String> {
    let mut v = json!({"url": URL, "queue": "orders", "format": "json"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn destination(extra: serde_json::Value) -> Result<DestinationConfig, String> {
    let mut v = json!({"url": URL, "exchange": "customs", "routing_key": "declaration.export"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn a_source_has_defaults_and_takes_one_url_or_several() {
    let c = source(json!({})).unwrap();
    assert_eq!(c.url.len(), 1);
    assert_eq!(c.prefetch.get(), 100);
    assert_eq!(c.reconnect_backoff.get(), Duration::from_millis(100));
    assert_eq!(c.reconnect_max_backoff.get(), Duration::from_secs(5));
    assert!(c.topology.is_empty());
    let c = source(json!({"url": null})).unwrap_err();
    assert!(c.contains("url"), "{c}");
    let v = json!({"urls": ["amqp://a:5672/%2f", "amqps://u:p@b:5671/hub"], "queue": "q", "format": "xml"});
    let c: SourceConfig = serde_json::from_value(v).unwrap();
    assert_eq!(c.url.len(), 2);
    assert_eq!(c.url[1].display(), "amqps://b:5671/hub");
    assert_eq!(c.url[0].display(), "amqp://a:5672/%2f");
}

#[test]
fn bad_source_settings_are_refused_when_read() {
    let e = source(json!({"url": "http://x:5672"})).unwrap_err();
    assert!(e.contains("is not an AMQP URL"), "{e}");
    let e = source(json!({"url": []})).unwrap_err();
    assert!(e.contains("give at least one broker URL"), "{e}");
    let e = source(json!({"queue": ""})).unwrap_err();
    assert!(e.contains("`queue` is empty"), "{e}");
    let e = source(json!({"queue": "q".repeat(256)})).unwrap_err();
    assert!(e.contains("AMQP allows 255"), "{e}");
    let e = source(json!({"prefetch": 0})).unwrap_err();
    assert!(e.contains("prefetch") || e.contains("nonzero"), "{e}");
    let e = source(json!({"prefetch_count": 10})).unwrap_err();
    assert!(e.contains("unknown field `prefetch_count`"), "{e}");
    let e = source(json!({"format": "yaml"})).unwrap_err();
    assert!(e.contains("is not a format"), "{e}");
}

#[test]
fn passwords_never_show_in_errors_or_logs() {
    let e = source(json!({"url": "amqp://nzela:s3cret@host:notaport/%2f"})).unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("nzela:***@host"), "{e}");
    let c = source(json!({"url": "amqp://nzela:s3cret@rabbit:5672/hub"})).unwrap();
    assert_eq!(c.url[0].to_string(), "amqp://rabbit:5672/hub");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn topology_is_read_with_its_arguments() {
    let c = source(json!({"topology": {
        "exchanges": [{"name": "dlx", "kind": "fanout"}, {"name": "orders.in", "kind": "topic", "durable": false}],
        "queues": [{"name": "orders", "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5, "x-single-active-consumer": true}}],
        "bindings": [{"queue": "orders", "exchange": "orders.in", "routing_key": "order.#"}]
    }}))
    .unwrap();
    let t = &c.topology;
    assert_eq!(t.exchanges[0].kind, ExchangeType::Fanout);
    assert!(t.exchanges[0].durable && !t.exchanges[1].durable);
    assert!(t.queues[0].durable);
    let args = &t.queues[0].arguments;
    assert_eq!(args["x-queue-type"], Argument::Text("quorum".into()));
    assert_eq!(args["x-delivery-limit"], Argument::Int(5));
    assert_eq!(args["x-single-active-consumer"], Argument::Bool(true));
    assert_eq!(t.bindings[0].routing_key, "order.#");
    let e = source(json!({"topology": {"exchanges": [{"name": "x", "kind": "x-delayed"}]}}))
        .unwrap_err();
    assert!(e.contains("unknown variant `x-delayed`"), "{e}");
    let e = source(json!({"topology": {"queues": [{"name": "q", "durabel": true}]}})).unwrap_err();
    assert!(e.contains("unknown field `durabel`"), "{e}");
    let e = source(json!({"topology": {"exchanges": [{"name": ""}]}})).unwrap_err();
    assert!(e.contains("a name is empty"), "{e}");
}

#[test]
fn a_destination_checks_its_routing_key_and_dispatch_settings() {
    let c = destination(json!({"concurrency": 32, "confirm_timeout": "10s"})).unwrap();
    assert!(c.persistent);
    let s = c.dispatch_settings("customs");
    assert_eq!(s.concurrency, 32);
    assert_eq!(s.attempt_timeout, Duration::from_secs(15));
    assert_eq!(s.reply_to, None);
    // Many confirms awaited at once unless told otherwise.
    let s = destination(json!({})).unwrap().dispatch_settings("customs");
    assert_eq!(s.concurrency, 1024);
    let e = destination(json!({"routing_key": "{{ delivry_id }}"})).unwrap_err();
    assert!(e.contains("`routing_key` is not a valid template"), "{e}");
    let e = destination(json!({"routing_key": "x".repeat(300)})).unwrap_err();
    assert!(e.contains("AMQP allows 255"), "{e}");
    let e = destination(json!({"headers": {"x-route": "{{ rout }}"}})).unwrap_err();
    assert!(
        e.contains("`headers.x-route` is not a valid template"),
        "{e}"
    );
    let e = destination(json!({"mandatory": false})).unwrap_err();
    assert!(e.contains("unknown field `mandatory`"), "{e}");
    // The default exchange is allowed (the routing key is a queue).
    assert!(destination(json!({"exchange": ""})).is_ok());
}

fn received<'a>(properties: &'a BasicProperties, body: &[u8]) -> Received<'a> {
    Received {
        exchange: "marketplace",
        routing_key: "order.paid",
        redelivered: false,
        properties,
        body: body.to_vec(),
    }
}

fn header<'a>(m: &'a nzela_core::runtime::Incoming, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn properties_become_headers_and_keys() {
    let mut table = FieldTable::default();
    table.insert(
        "x-partner".into(),
        AMQPValue::LongString(LongString::from("global-b2b")),
    );
    table.insert("x-attempt".into(), AMQPValue::LongInt(3));
    table.insert(
        "x-amount".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    table.insert(
        "x-tags".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
    );
    let p = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_correlation_id("c-1".into())
        .with_content_type("application/json".into())
        .with_type("order.paid".into())
        .with_timestamp(1_700_000_000)
        .with_reply_to("replies".into())
        .with_headers(table);
    let (m, refused) = incoming("orders", received(&p, b"{}"), MAX_BODY);
    assert_eq!(refused, None);
    assert_eq!(m.source, "orders");
    assert_eq!(m.idempotency_key.as_deref(), Some("m-1"));
    assert_eq!(m.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(header(&m, "message_id"), Some("m-1"));
    assert_eq!(header(&m, "type"), Some("order.paid"));
    assert_eq!(header(&m, "timestamp"), Some("2023-11-14T22:13:20Z"));
    assert_eq!(header(&m, "reply_to"), Some("replies"));
    assert_eq!(header(&m, "exchange"), Some("marketplace"));
    assert_eq!(header(&m, "routing_key"), Some("order.paid"));
    assert_eq!(header(&m, "redelivered"), None);
    assert_eq!(header(&m, "x-partner"), Some("global-b2b"));
    assert_eq!(header(&m, "x-attempt"), Some("3"));
    assert_eq!(header(&m, "x-amount"), Some("123.45"));
    assert_eq!(header(&m, "x-tags"), Some("[true]"));
    // No message_id: no idempotency key (the business key serves).
    let (m, _) = incoming(
        "orders",
        received(&BasicProperties::default(), b"{}"),
        MAX_BODY,
    );
    assert_eq!(m.idempotency_key, None);
    assert_eq!(m.correlation_id, None);
}

#[test]
fn binary_cloudevents_attributes_become_ce_headers_and_the_id_the_key() {
    let mut table = FieldTable::default();
    table.insert(
        "cloudEvents:id".into(),
        AMQPValue::LongString("evt-1".into()),
    );
    table.insert(
        "cloudEvents:source".into(),
        AMQPValue::LongString("/marketplace".into()),
    );
    table.insert(
        "cloudEvents_type".into(),
        AMQPValue::LongString("order.paid".into()),
    );
    let p = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_content_type("application/json".into())
        .with_headers(table);
    let (m, refused) = incoming("orders", received(&p, b"{\"a\": 1}"), MAX_BODY);
    assert_eq!(refused, None);
    assert_eq!(m.idempotency_key.as_deref(), Some("evt-1"));
    assert_eq!(header(&m, "ce-id"), Some("evt-1"));
    assert_eq!(header(&m, "ce-source"), Some("/marketplace"));
    assert_eq!(header(&m, "ce-type"), Some("order.paid"));
    assert_eq!(m.body, b"{\"a\": 1}");
}

#[test]
fn a_structured_cloudevent_is_unwrapped_to_its_data() {
    let p = BasicProperties::default()
        .with_content_type("application/cloudevents+json; charset=utf-8".into());
    let event = json!({
        "specversion": "1.0", "id": "evt-2", "source": "/marketplace", "type": "order.paid",
        "datacontenttype": "application/json", "data": {"order": {"order_id": "GB-1"}}
    });
    let (m, refused) = incoming(
        "orders",
        received(&p, event.to_string().as_bytes()),
        MAX_BODY,
    );
    assert_eq!(refused, None);
    assert_eq!(m.body, br#"{"order":{"order_id":"GB-1"}}"#);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.idempotency_key.as_deref(), Some("evt-2"));
    assert_eq!(header(&m, "ce-specversion"), Some("1.0"));
    assert_eq!(header(&m, "ce-type"), Some("order.paid"));

    let event = json!({"specversion": "1.0", "id": "evt-3", "source": "/s", "type": "t",
        "datacontenttype": "application/xml", "data_base64": "PGEvPg=="});
    let (m, refused) = incoming(
        "orders",
        received(&p, event.to_string().as_bytes()),
        MAX_BODY,
    );
    assert_eq!(refused, None);
    assert_eq!(m.body, b"<a/>");
    assert_eq!(m.content_type.as_deref(), Some("application/xml"));

    let (m, refused) = incoming("orders", received(&p, b"not json"), MAX_BODY);
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("not a structured CloudEvent")),
        "{refused:?}"
    );
    assert_eq!(m.body, b"not json", "a refused message is kept as received");
    let (_, refused) = incoming("orders", received(&p, br#"{"id": "x"}"#), MAX_BODY);
    assert_eq!(refused.as_deref(), Some("the CloudEvent has no data"));
}

#[test]
fn base64_decodes_or_refuses() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert!(base64_decode("aGV$").is_none());
    assert!(base64_decode("aG=Vs").is_none());
}

#[tokio::test]
async fn a_destination_without_a_broker_answers_unavailable_at_once() {
    let c = destination(json!({
        "url": "amqp://guest:guest@127.0.0.1:1/%2f", "connect_timeout": "1s"
    }))
    .unwrap();
    let d = AmqpDestination::build("customs", &c).await.unwrap();
    let started = std::time::Instant::now();
    let outcome = d.send(&sample()).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    match outcome {
        SendOutcome::Unavailable { error } => {
            assert!(
                error.starts_with("not connected to the AMQP broker"),
                "{error}"
            );
        }
        other => panic!("expected the destination unavailable, got {other:?}"),
    }
    // Once the supervisor has tried, the reason names the broker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match d.send(&sample()).await {
        SendOutcome::Unavailable { error } => {
            assert!(error.contains("amqp://127.0.0.1:1/%2f"), "{error}");
        }
        other => panic!("expected the destination unavailable, got {other:?}"),
    }
    // It is not available while the broker is away.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), d.available())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_routing_key_the_delivery_cannot_fill_is_a_permanent_failure() {
    let c = destination(json!({
        "url": "amqp://guest:guest@127.0.0.1:1/%2f",
        "routing_key": "declaration.{{ business_key }}"
    }))
    .unwrap();
    let d = AmqpDestination::build("customs", &c).await.unwrap();
    let mut out = sample();
    out.business_key = None;
    match d.send(&out).await {
        SendOutcome::Permanent { error } => assert!(error.contains("no business_key"), "{error}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// A suffix of names no other test uses.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

async fn broker_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("no RabbitMQ at {URL}: {e}"));
    let channel = connection.create_channel().await.expect("open a channel");
    (connection, channel)
}

/// The message ids waiting on `queue`, read (and removed) one by one.
async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(m) = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        ids.push(
            m.properties
                .message_id()
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
        );
    }
    ids
}

async fn until_connected(d: &AmqpDestination) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !d.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the destination did not connect within 20s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_are_matched_to_their_own_message_among_hundreds_in_flight() {
    let s = unique();
    let (exchange, queue) = (format!("t.{s}.confirms"), format!("t.{s}.routable"));
    let c = destination(json!({
        "url": URL,
        "exchange": exchange,
        "routing_key": "{{ business_key }}",
        "topology": {
            "exchanges": [{"name": exchange, "kind": "topic", "durable": false, "auto_delete": true}],
            "queues": [{"name": queue, "durable": false}],
            "bindings": [{"queue": queue, "exchange": exchange, "routing_key": "ok.#"}]
        }
    }))
    .unwrap();
    let d = std::sync::Arc::new(AmqpDestination::build("confirms", &c).await.unwrap());
    until_connected(&d).await;
    let (_connection, channel) = broker_channel().await;
    // Several rounds: the order in which lapin completes the confirms of a
    // multiple ack varies from one to the next.
    for round in 0..3 {
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..400 {
            let d = d.clone();
            sends.spawn(async move {
                let mut out = sample();
                out.delivery_id = format!("r{round}-d{i}");
                out.body = format!("{{\"n\": {i}}}").into_bytes();
                // Every other message has no queue bound for its key.
                let routable = i % 2 == 0;
                out.business_key = Some(format!("{}.{i}", if routable { "ok" } else { "no" }));
                (out.delivery_id.clone(), routable, d.send(&out).await)
            });
        }
        let mut delivered = std::collections::HashSet::new();
        while let Some(done) = sends.join_next().await {
            let (id, routable, outcome) = done.expect("a send task");
            match (routable, outcome) {
                (true, SendOutcome::Delivered { .. }) => {
                    delivered.insert(id);
                }
                (false, SendOutcome::Transient { error, .. })
                    if error.starts_with("unroutable") => {}
                (routable, other) => {
                    panic!("{id} (routable: {routable}) was answered {other:?}")
                }
            }
        }
        let mut on_queue = drain(&channel, &queue).await;
        on_queue.sort();
        let mut expected: Vec<String> = delivered.into_iter().collect();
        expected.sort();
        assert_eq!(expected.len(), 200, "round {round}");
        assert_eq!(
            on_queue, expected,
            "round {round}: the queue holds exactly the routable ones, once"
        );
    }
    let _ = channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    let _ = channel
        .exchange_delete(
            exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
}

/// A journal that refuses to commit messages while told to, as a full
/// disk does, and counts what it refused and took.
struct Refusing {
    inner: nzela_core::journal::SqliteJournal,
    refuse: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicUsize,
    accepted: std::sync::atomic::AtomicUsize,
}

mod refusing {
    use std::sync::atomic::Ordering;

    use nzela_core::journal::{
        Journal, JournalError, Leased, NewMessage, Outcome, Routing, StoredMessage,
    };
    use nzela_core::runtime::{Accepted, BoxFuture};

    use super::Refusing;

    impl Journal for Refusing {
        fn accept(&self, message: NewMessage) -> BoxFuture<'_, Result<Accepted, JournalError>> {
            Box::pin(async move {
                if self.refuse.load(Ordering::Acquire) {
                    self.refused.fetch_add(1, Ordering::AcqRel);
                    return Err(JournalError::Storage("database or disk is full".to_owned()));
                }
                let accepted = self.inner.accept(message).await?;
                self.accepted.fetch_add(1, Ordering::AcqRel);
                Ok(accepted)
            })
        }
        fn reject(
            &self,
            message: NewMessage,
            reason: String,
        ) -> BoxFuture<'_, Result<String, JournalError>> {
            self.inner.reject(message, reason)
        }
        fn received(
            &self,
            limit: usize,
        ) -> BoxFuture<'_, Result<Vec<StoredMessage>, JournalError>> {
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
        fn unlease(
            &self,
            leases: Vec<(String, u32)>,
        ) -> BoxFuture<'_, Result<usize, JournalError>> {
            self.inner.unlease(leases)
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            self.inner.close()
        }
    }
}

/// Waits, up to `within`, until `ok` holds.
async fn until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The queue's ready messages and consumers, `None` while it does not exist.
async fn queue_state(connection: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    // A passive declare of a missing queue closes its channel: one each.
    let channel = connection.create_channel().await.ok()?;
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = channel.close(200, "done".into()).await;
    Some((q.message_count(), q.consumer_count()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_commit_keeps_deliveries_unacknowledged_until_it_can() {
    use std::sync::atomic::Ordering;

    use nzela_core::journal::Journal;
    use nzela_core::runtime::router::Feed;
    use nzela_core::runtime::{CancellationToken, Intake};

    const N: usize = 10;
    let queue = format!("t.{}.full-journal", unique());
    let dir = tempfile::tempdir().unwrap();
    let journal = std::sync::Arc::new(Refusing {
        inner: nzela_core::journal::SqliteJournal::open(dir.path().join("journal.db")).unwrap(),
        refuse: true.into(),
        refused: 0.into(),
        accepted: 0.into(),
    });
    let shutdown = CancellationToken::new();
    let intake = Intake::new(
        journal.clone() as std::sync::Arc<dyn Journal>,
        Feed::default(),
        shutdown.clone(),
    );
    // A quorum queue that drops a message delivered more than 3 times.
    let c = source(json!({
        "queue": queue,
        "topology": {"queues": [{"name": queue, "arguments": {
            "x-queue-type": "quorum", "x-delivery-limit": 2
        }}]}
    }))
    .unwrap();
    let source = super::AmqpSource::build("orders", &c).await.unwrap();
    let running = tokio::spawn(source.run(intake, shutdown.clone()));
    let (connection, channel) = broker_channel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(queue_state(&connection, &queue).await, Some((_, 1))) {
        assert!(
            std::time::Instant::now() < deadline,
            "the source did not start consuming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..N {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                format!("{{\"n\": {i}}}").as_bytes(),
                BasicProperties::default().with_message_id(format!("m-{i}").into()),
            )
            .await
            .expect("publish");
    }
    // Each message is refused many more times than the broker would
    // deliver it: the commits are tried again without redeliveries.
    until("4 refusals per message", Duration::from_secs(30), || {
        journal.refused.load(Ordering::Acquire) >= 4 * N
    })
    .await;
    journal.refuse.store(false, Ordering::Release);
    until("every message committed", Duration::from_secs(30), || {
        journal.accepted.load(Ordering::Acquire) >= N
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the source stops")
        .expect("the source task");
    // Each committed once, and acknowledged: nothing is left on the queue
    // (an unacknowledged one would be back there now that the source left).
    assert_eq!(journal.accepted.load(Ordering::Acquire), N);
    let inspector = nzela_core::journal::Inspector::open(dir.path().join("journal.db")).unwrap();
    let listed = inspector
        .list(&nzela_core::journal::ListFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), N);
    assert_eq!(queue_state(&connection, &queue).await, Some((0, 0)));
    let _ = channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
}

/// A TCP proxy to the broker whose open connections can be stalled: what
/// the broker sends stops reaching nzela, the connections stay open (a
/// broker that hangs). New connections go through.
struct StallingProxy {
    port: u16,
    stalled: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<tokio::sync::Notify>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start() -> StallingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let links = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let stall = std::sync::Arc::new(tokio::sync::Notify::new());
                links.lock().unwrap().push(stall.clone());
                let (mut client_in, mut client_out) = client.into_split();
                let (mut broker_in, mut broker_out) = broker.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_in, &mut broker_out).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        // The stall first: once `stall` has been called,
                        // nothing the broker sends after it goes through,
                        // even when it is already there to read.
                        let n = tokio::select! {
                            biased;
                            // Stalled: hold the connection, forward nothing.
                            () = stall.notified() => std::future::pending().await,
                            r = broker_in.read(&mut buf) => match r {
                                Ok(n) if n > 0 => n,
                                _ => return,
                            },
                        };
                        if client_out.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StallingProxy {
            port,
            stalled,
            task,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stalls every connection open now.
    fn stall(&self) {
        for link in self.stalled.lock().unwrap().drain(..) {
            link.notify_one();
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_does_not_come_resets_the_channel() {
    let exchange = format!("t.{}.stalled", unique());
    let proxy = StallingProxy::start().await;
    let c = destination(json!({
        "url": proxy.url(),
        "exchange": exchange,
        "confirm_timeout": "1s",
        "reconnect_backoff": "50ms",
        "topology": {"exchanges": [{"name": exchange, "durable": false, "auto_delete": true}]}
    }))
    .unwrap();
    let d = AmqpDestination::build("stalled", &c).await.unwrap();
    until_connected(&d).await;
    proxy.stall();
    match d.send(&sample()).await {
        SendOutcome::Transient { error, .. } => {
            assert!(
                error.contains("did not confirm the message within 1s"),
                "{error}"
            );
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    // The channel that holds the lost confirm is given up (the stalled
    // connection would otherwise stay, its heartbeat a minute away), and
    // a new connection is opened.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "the channel was kept after a confirm timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_connected(&d).await;
    // The new channel works: the broker answers (no queue is bound).
    match d.send(&sample()).await {
        SendOutcome::Transient { error, .. } => assert!(error.starts_with("unroutable"), "{error}"),
        other => panic!("expected the message returned, got {other:?}"),
    }
    // Never bound, the exchange is not deleted by itself.
    let (_connection, channel) = broker_channel().await;
    delete(&channel, &[], &[&exchange]).await;
}

/// A queue or exchange declared here, before nzela, by the test.
async fn declare_first(
    channel: &lapin::Channel,
    queue: Option<&str>,
    exchange: Option<(&str, lapin::ExchangeKind)>,
) {
    if let Some(q) = queue {
        channel
            .queue_declare(
                q.into(),
                lapin::options::QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the queue first");
    }
    if let Some((x, kind)) = exchange {
        channel
            .exchange_declare(
                x.into(),
                kind,
                lapin::options::ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange first");
    }
}

async fn delete(channel: &lapin::Channel, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = channel
            .queue_delete((*q).into(), lapin::options::QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let _ = channel
            .exchange_delete(
                (*x).into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_the_broker_refuses_is_a_topology_mismatch_not_an_unreachable_broker() {
    let s = unique();
    let (queue, exchange) = (format!("t.{s}.mismatch"), format!("t.{s}.mismatch-x"));
    let (_connection, channel) = broker_channel().await;
    // A classic queue and a direct exchange exist; the configuration says
    // quorum, and topic.
    declare_first(
        &channel,
        Some(&queue),
        Some((&exchange, lapin::ExchangeKind::Direct)),
    )
    .await;
    let c = source(json!({
        "queue": queue,
        "topology": {"queues": [{"name": queue, "durable": false, "arguments": {"x-queue-type": "quorum"}}]}
    }))
    .unwrap();
    let refusal = match super::open(&c.connection(), "mismatch").await {
        Err(super::OpenError::Refused(r)) => r,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("the mismatched queue was declared"),
    };
    assert_eq!(refusal.request, format!("declare the queue \"{queue}\""));
    assert_eq!(refusal.code, 406);
    assert!(
        refusal
            .text
            .starts_with("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"),
        "{refusal:?}"
    );
    assert!(refusal.is_mismatch());
    let shown = refusal.to_string();
    assert!(
        shown.starts_with(&format!(
            "amqp://127.0.0.1:5672/%2f: the broker refuses to declare the queue \"{queue}\": 406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("it exists on the broker with other settings"),
        "{shown}"
    );

    // An exchange of another type.
    let c = destination(json!({
        "exchange": exchange,
        "topology": {"exchanges": [{"name": exchange, "kind": "topic", "durable": false}]}
    }))
    .unwrap();
    match super::open(&c.connection(), "mismatch").await {
        Err(super::OpenError::Refused(r)) => {
            assert_eq!(r.request, format!("declare the exchange \"{exchange}\""));
            assert!(
                r.text
                    .starts_with("PRECONDITION_FAILED - inequivalent arg 'type'"),
                "{r:?}"
            );
            assert!(r.is_mismatch());
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("the mismatched exchange was declared"),
    }

    // A binding to an exchange that does not exist is refused too, but is
    // no mismatch.
    let c = source(json!({
        "queue": queue,
        "topology": {"bindings": [{"queue": queue, "exchange": format!("t.{s}.missing")}]}
    }))
    .unwrap();
    match super::open(&c.connection(), "mismatch").await {
        Err(super::OpenError::Refused(r)) => {
            assert_eq!(r.code, 404, "{r:?}");
            assert!(r.text.starts_with("NOT_FOUND - no exchange"), "{r:?}");
            assert!(!r.is_mismatch());
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("bound to a missing exchange"),
    }

    // No broker at all is another thing.
    let c = source(json!({"url": "amqp://guest:guest@127.0.0.1:1/%2f"})).unwrap();
    match super::open(&c.connection(), "mismatch").await {
        Err(super::OpenError::Unreachable(e)) => {
            assert!(e.starts_with("amqp://127.0.0.1:1/%2f: "), "{e}")
        }
        Err(other) => panic!("expected an unreachable broker, got {other}"),
        Ok(_) => panic!("connected to port 1"),
    }
    delete(&channel, &[&queue], &[&exchange]).await;
}

/// The broker's id of the connection named `name` (`rabbitmqctl
/// list_connections`: one line a connection, its pid then its client
/// properties, where `{"connection_name","NAME"}`).
fn connection_pid(name: &str) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--silent"])
        .output()
        .expect("run rabbitmqctl");
    let named = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&named))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_broker_closes_is_lost_with_the_broker_s_reason() {
    let name = format!("t-{}", unique());
    let c = source(json!({})).unwrap();
    let session = super::open(&c.connection(), &name)
        .await
        .unwrap_or_else(|e| panic!("no session: {e}"));
    let connection_name = format!("nzela {name}");
    let pid = tokio::task::spawn_blocking(move || {
        // The broker lists a connection a moment after it is open.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pid) = connection_pid(&connection_name) {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker does not list the connection {connection_name}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "closed by an operator"])
            .output()
            .expect("run rabbitmqctl")
    })
    .await
    .unwrap();
    assert!(closed.status.success(), "{closed:?}");
    until("the connection is closed", Duration::from_secs(10), || {
        !session.connection.status().connected()
    })
    .await;
    let why = session.lost(None).await;
    assert_eq!(
        why,
        "the connection was closed: 320 CONNECTION_FORCED - closed by an operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_broker_closes_is_lost_with_the_broker_s_reason() {
    let exchange = format!("t.{}.vanishing", unique());
    let c = destination(json!({
        "exchange": exchange,
        // Long enough for the reason to be read before reconnecting.
        "reconnect_backoff": "30s",
        "topology": {"exchanges": [{"name": exchange, "durable": false}]}
    }))
    .unwrap();
    let d = AmqpDestination::build("vanishing", &c).await.unwrap();
    until_connected(&d).await;
    // The exchange is deleted under the destination: publishing to it is
    // a channel error.
    let (_connection, channel) = broker_channel().await;
    delete(&channel, &[], &[&exchange]).await;
    match d.send(&sample()).await {
        SendOutcome::Transient { error, .. } => assert!(
            error.contains(&format!(
                "404 NOT_FOUND - no exchange '{exchange}' in vhost '/'"
            )),
            "{error}"
        ),
        other => panic!("expected a transient failure, got {other:?}"),
    }
    until("the channel is given up", Duration::from_secs(10), || {
        !d.is_connected()
    })
    .await;
    match d.send(&sample()).await {
        SendOutcome::Unavailable { error } => assert!(
            error.starts_with("not connected to the AMQP broker: the channel was closed: ")
                && error.contains(&format!(
                    "404 NOT_FOUND - no exchange '{exchange}' in vhost '/'"
                )),
            "{error}"
        ),
        other => panic!("expected the destination unavailable, got {other:?}"),
    }
}

#[test]
fn a_body_over_the_limit_is_refused_unread_and_not_kept() {
    let mut table = FieldTable::default();
    table.insert(
        "x-partner".into(),
        AMQPValue::LongString(LongString::from("global-b2b")),
    );
    let p = BasicProperties::default()
        .with_message_id("m-big".into())
        .with_content_type("application/cloudevents+json".into())
        .with_headers(table);
    // Not a CloudEvent at all: it would be refused as such if it were read.
    let body = vec![b'x'; 2048];
    let (m, refused) = incoming("orders", received(&p, &body), 1024);
    assert_eq!(
        refused.as_deref(),
        Some(
            "the body (2048 bytes) is over the limit of 1024 bytes; it is not kept in the journal"
        )
    );
    assert!(m.body.is_empty(), "the body is not kept");
    assert_eq!(m.idempotency_key.as_deref(), Some("m-big"));
    assert_eq!(header(&m, "x-partner"), Some("global-b2b"));
    assert_eq!(
        header(&m, "content_type"),
        Some("application/cloudevents+json")
    );
    // At the limit, it is read.
    let (_, refused) = incoming("orders", received(&p, &body), 2048);
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("not a structured CloudEvent")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_delivery_is_kept_as_rejected_without_its_body() {
    use nzela_core::journal::{Inspector, Journal, ListFilter, SqliteJournal};
    use nzela_core::runtime::router::Feed;
    use nzela_core::runtime::{CancellationToken, Intake};

    let queue = format!("t.{}.oversize", unique());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let journal = std::sync::Arc::new(SqliteJournal::open(&db).unwrap());
    let shutdown = CancellationToken::new();
    let intake = Intake::new(
        journal.clone() as std::sync::Arc<dyn Journal>,
        Feed::default(),
        shutdown.clone(),
    );
    let c = source(json!({
        "queue": queue,
        "max_body_size": "1KiB",
        "topology": {"queues": [{"name": queue, "durable": false}]}
    }))
    .unwrap();
    let source = super::AmqpSource::build("orders", &c).await.unwrap();
    let running = tokio::spawn(source.run(intake, shutdown.clone()));
    let (connection, channel) = broker_channel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(queue_state(&connection, &queue).await, Some((_, 1))) {
        assert!(
            std::time::Instant::now() < deadline,
            "the source did not start consuming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut table = FieldTable::default();
    table.insert(
        "x-partner".into(),
        AMQPValue::LongString(LongString::from("global-b2b")),
    );
    let big = BasicProperties::default()
        .with_message_id("m-big".into())
        .with_content_type("application/cloudevents+json".into())
        .with_headers(table);
    let small = BasicProperties::default().with_message_id("m-small".into());
    for (body, properties) in [(vec![b' '; 4096], big), (b"{\"n\": 1}".to_vec(), small)] {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish");
    }
    let inspector = Inspector::open(&db).unwrap();
    let all = ListFilter {
        limit: 10,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while inspector.list(&all).unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two deliveries were not committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejected = inspector
        .list(&ListFilter {
            state: Some("rejected".to_owned()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rejected.len(), 1, "only the large one is rejected");
    let shown = inspector.show(&rejected[0].id).unwrap();
    assert!(shown.body.is_empty(), "the body is not kept");
    let header = |name: &str| {
        shown
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("message_id"), Some("m-big"));
    assert_eq!(header("x-partner"), Some("global-b2b"));
    let reason = shown
        .events
        .iter()
        .find(|e| e.kind == "rejected")
        .and_then(|e| e.detail.as_deref());
    assert_eq!(
        reason,
        Some(
            "the body (4096 bytes) is over the limit of 1024 bytes; it is not kept in the journal"
        )
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the source stops")
        .expect("the source task");
    // Both were answered: nothing is left on the queue.
    assert_eq!(queue_state(&connection, &queue).await, Some((0, 0)));
    delete(&channel, &[&queue], &[]).await;
}
