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
    let (m, refused) = incoming("orders", received(&p, b"{}"));
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
    let (m, _) = incoming("orders", received(&BasicProperties::default(), b"{}"));
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
    let (m, refused) = incoming("orders", received(&p, b"{\"a\": 1}"));
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
    let (m, refused) = incoming("orders", received(&p, event.to_string().as_bytes()));
    assert_eq!(refused, None);
    assert_eq!(m.body, br#"{"order":{"order_id":"GB-1"}}"#);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.idempotency_key.as_deref(), Some("evt-2"));
    assert_eq!(header(&m, "ce-specversion"), Some("1.0"));
    assert_eq!(header(&m, "ce-type"), Some("order.paid"));

    let event = json!({"specversion": "1.0", "id": "evt-3", "source": "/s", "type": "t",
        "datacontenttype": "application/xml", "data_base64": "PGEvPg=="});
    let (m, refused) = incoming("orders", received(&p, event.to_string().as_bytes()));
    assert_eq!(refused, None);
    assert_eq!(m.body, b"<a/>");
    assert_eq!(m.content_type.as_deref(), Some("application/xml"));

    let (m, refused) = incoming("orders", received(&p, b"not json"));
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("not a structured CloudEvent")),
        "{refused:?}"
    );
    assert_eq!(m.body, b"not json", "a refused message is kept as received");
    let (_, refused) = incoming("orders", received(&p, br#"{"id": "x"}"#));
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
async fn a_destination_without_a_broker_answers_transient_at_once() {
    let c = destination(json!({
        "url": "amqp://guest:guest@127.0.0.1:1/%2f", "connect_timeout": "1s"
    }))
    .unwrap();
    let d = AmqpDestination::build("customs", &c).await.unwrap();
    let started = std::time::Instant::now();
    let outcome = d.send(&sample()).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    match outcome {
        SendOutcome::Transient { error, .. } => {
            assert!(
                error.starts_with("not connected to the AMQP broker"),
                "{error}"
            );
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    // Once the supervisor has tried, the reason names the broker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match d.send(&sample()).await {
        SendOutcome::Transient { error, .. } => {
            assert!(error.contains("amqp://127.0.0.1:1/%2f"), "{error}");
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
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
