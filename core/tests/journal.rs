//! The journal file itself: its layout, and older layouts brought up to
//! date without losing anything.

use nzela_core::journal::{
    Document, Inspector, Journal, ListFilter, NewDelivery, NewMessage, Replayed, Routing,
    SqliteJournal,
};
use nzela_core::runtime::Incoming;
use rusqlite::Connection;

/// A real order: 2 KiB of JSON that packs to about 60 % of its size.
const ORDER: &[u8] = include_bytes!("../../mappings/tests/order-paid.json");

/// The first layout of the journal (bodies inside the message and
/// delivery rows), as a journal written by an earlier nzela has it.
const LAYOUT_1: &str = r#"
CREATE TABLE IF NOT EXISTS messages (
    id             TEXT PRIMARY KEY,
    source         TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    content_type   TEXT,
    headers        TEXT NOT NULL,
    body           BLOB NOT NULL,
    correlation_id TEXT,
    business_key   TEXT,
    dedup_key      TEXT,
    state          TEXT NOT NULL,
    routed_at      INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages(source, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_received ON messages(received_at) WHERE state = 'received';
CREATE INDEX IF NOT EXISTS messages_business_key ON messages(business_key) WHERE business_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_correlation ON messages(correlation_id) WHERE correlation_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS deliveries (
    id              TEXT PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES messages(id),
    route           TEXT NOT NULL,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL,
    body            BLOB,
    content_type    TEXT,
    extension       TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- attempts and time at which the current retry budget started (a
    -- replay starts a new one)
    budget_attempts INTEGER NOT NULL DEFAULT 0,
    budget_since    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries(message_id);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, route);

CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    delivery_id TEXT,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id, seq);
"#;

/// A journal of an earlier `layout`, as an earlier nzela left it, open for
/// its rows to be written.
fn old_journal(path: &std::path::Path, layout: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch(layout).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_the_first_layout_is_upgraded_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = old_journal(&path, LAYOUT_1);
        c.execute_batch(
            r#"
            INSERT INTO messages (id, source, received_at, content_type, headers, body, business_key, state, routed_at)
            VALUES ('m-received', 'orders', 1000, 'application/json', '[["x-partner","acme"]]', CAST('{"n":1}' AS BLOB), 'GB-1', 'received', NULL),
                   ('m-routed', 'orders', 2000, 'application/json', '[]', CAST('{"n":2}' AS BLOB), 'GB-2', 'routed', 2000);
            INSERT INTO deliveries (id, message_id, route, destination, state, body, content_type, extension,
                                    attempts, budget_since, next_attempt_at, created_at, updated_at)
            VALUES ('d-pending', 'm-routed', 'r', 'customs', 'pending', CAST('<pending/>' AS BLOB), 'application/xml', 'xml', 0, 2000, 2000, 2000, 2000),
                   ('d-dead', 'm-routed', 'r', 'commerce', 'dead', CAST('<dead/>' AS BLOB), 'application/xml', 'xml', 3, 2000, 2000, 2000, 2000),
                   ('d-failed', 'm-routed', 'r', 'payments', 'dead', NULL, NULL, NULL, 0, 2000, 2000, 2000, 2000);
            INSERT INTO events (message_id, delivery_id, at, kind, detail)
            VALUES ('m-routed', NULL, 2000, 'routed', 'r'),
                   ('m-routed', 'd-pending', 2000, 'mapped', 'route r for customs: 10 bytes of xml'),
                   ('m-routed', 'd-dead', 2000, 'mapped', 'route r for commerce: 7 bytes of xml'),
                   ('m-routed', 'd-dead', 2500, 'dead_lettered', 'attempt 3: HTTP 400');
            "#,
        )
        .unwrap();
    }

    // The command line reads no journal it does not know, and says why.
    let e = Inspector::open(&path).err().expect("layout 1 is not read");
    assert!(e.to_string().contains("upgrades it"), "{e}");

    let journal = SqliteJournal::open(&path).unwrap();
    // The message waiting to be routed, body and headers intact.
    let received = journal.received(10).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].id, "m-received");
    assert_eq!(received[0].body, br#"{"n":1}"#);
    assert_eq!(
        received[0].headers,
        [("x-partner".to_owned(), "acme".to_owned())]
    );
    // The pending delivery, with its document.
    let leased = journal.lease("customs", i64::MAX, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, "d-pending");
    assert_eq!(leased[0].document.body, b"<pending/>");
    assert_eq!(leased[0].business_key.as_deref(), Some("GB-2"));
    journal.close().await;

    let inspector = Inspector::open(&path).unwrap();
    let detail = inspector.show("m-routed").unwrap();
    assert_eq!(detail.body, br#"{"n":2}"#);
    // The trail stored as rows by layout 1 is not told twice.
    let kinds: Vec<(&str, Option<&str>)> = detail
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.delivery_id.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("received", None),
            ("routed", None),
            ("mapped", Some("d-pending")),
            ("mapped", Some("d-dead")),
            ("dead_lettered", Some("d-dead")),
        ]
    );
    assert_eq!(detail.summary.deliveries.len(), 3);
    // A dead delivery with a document is sent again; one whose mapping
    // failed (no document) is mapped again first.
    assert_eq!(
        inspector.replay("m-routed").unwrap(),
        [
            Replayed::Delivery("d-dead".into()),
            Replayed::Remap("d-failed".into())
        ]
    );
    drop(inspector);

    let journal = SqliteJournal::open(&path).unwrap();
    let leased = journal.lease("commerce", i64::MAX, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].document.body, b"<dead/>");
    journal.close().await;

    let c = Connection::open(&path).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
}

#[tokio::test]
async fn a_journal_from_a_newer_nzela_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    SqliteJournal::open(&path).unwrap().close().await;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let e = SqliteJournal::open(&path)
        .err()
        .expect("a newer layout is refused");
    let e = e.to_string();
    assert!(e.contains("newer nzela") && e.contains("99"), "{e}");
    let c = Connection::open(&path).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
}

#[tokio::test]
async fn a_new_journal_has_the_current_layout_and_large_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    SqliteJournal::open(&path).unwrap().close().await;
    let c = Connection::open(&path).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!((version, page), (4, 8192));
}

#[tokio::test]
async fn a_message_routed_twice_keeps_the_deliveries_of_the_first_routing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let id = journal
        .accept(NewMessage::from(nzela_core::runtime::Incoming {
            source: "orders".into(),
            body: b"{}".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .message_id;
    let routing = |delivery: &str, leased: bool| Routing {
        message_id: id.clone(),
        deliveries: vec![NewDelivery {
            id: delivery.into(),
            route: "r".into(),
            destination: "customs".into(),
            document: Ok(Document {
                body: b"<x/>".to_vec(),
                content_type: "application/xml".into(),
                extension: "xml".into(),
            }),
            leased,
        }],
        routes: vec!["r".into()],
    };
    // From memory first (leased to its dispatcher), then from the journal.
    assert_eq!(
        journal
            .record_routing(vec![routing("d-first", true)])
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        journal
            .record_routing(vec![routing("d-second", false)])
            .await
            .unwrap(),
        [false]
    );
    // The first is in flight (its dispatcher has it): nothing to lease.
    assert!(
        journal
            .lease("customs", i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    journal.close().await;
    let detail = Inspector::open(&path).unwrap().show(&id).unwrap();
    let ids: Vec<&str> = detail
        .summary
        .deliveries
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(ids, ["d-first"]);
    assert_eq!(detail.summary.deliveries[0].attempts, 1);
    // A delivery id (the `Idempotency-Key` or `message_id` a receiver saw)
    // finds its message, in a list as in `show`.
    let inspector = Inspector::open(&path).unwrap();
    assert_eq!(inspector.find("d-first").unwrap(), [id.as_str()]);
    let listed = inspector
        .list(&ListFilter {
            key: Some("d-first".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    let none = inspector
        .list(&ListFilter {
            key: Some("d-second".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(none.is_empty(), "a delivery never recorded found {none:?}");
}

/// The second layout: bodies and documents in tables of their own, every
/// one stored as it is.
const LAYOUT_2: &str = r#"
CREATE TABLE message_bodies (id INTEGER PRIMARY KEY, headers TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE messages (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, received_at INTEGER NOT NULL, content_type TEXT,
    body_ref INTEGER, correlation_id TEXT, business_key TEXT, dedup_key TEXT, state TEXT NOT NULL, routed_at INTEGER
);
CREATE UNIQUE INDEX messages_dedup ON messages(source, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX messages_received ON messages(received_at) WHERE state = 'received';
CREATE INDEX messages_business_key ON messages(business_key) WHERE business_key IS NOT NULL;
CREATE INDEX messages_correlation ON messages(correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE documents (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, message_id TEXT NOT NULL REFERENCES messages(id), route TEXT NOT NULL,
    destination TEXT NOT NULL, state TEXT NOT NULL, document_ref INTEGER, content_type TEXT, extension TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, budget_attempts INTEGER NOT NULL DEFAULT 0, budget_since INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_error TEXT
);
CREATE INDEX deliveries_due ON deliveries(destination, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_message ON deliveries(message_id);
CREATE INDEX deliveries_state ON deliveries(state, route);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, delivery_id TEXT, at INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT
);
CREATE INDEX events_message ON events(message_id, seq);
PRAGMA user_version = 2;
"#;

fn order_message() -> NewMessage {
    NewMessage::from(Incoming {
        source: "orders".into(),
        content_type: Some("application/json".into()),
        body: ORDER.to_vec(),
        ..Default::default()
    })
}

fn routing_of(message_id: &str, delivery: &str, body: &[u8]) -> Routing {
    Routing {
        message_id: message_id.to_owned(),
        deliveries: vec![NewDelivery {
            id: delivery.into(),
            route: "r".into(),
            destination: "customs".into(),
            document: Ok(Document {
                body: body.to_vec(),
                content_type: "application/xml".into(),
                extension: "xml".into(),
            }),
            leased: false,
        }],
        routes: vec!["r".into()],
    }
}

/// (bytes stored, size it unpacks to) of each row of `table`, in order.
fn stored_sizes(path: &std::path::Path, table: &str) -> Vec<(i64, Option<i64>)> {
    let c = Connection::open(path).unwrap();
    let mut stmt = c
        .prepare(&format!(
            "SELECT length(body), lz4_size FROM {table} ORDER BY id"
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_documents_are_stored_packed_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let order = journal.accept(order_message()).await.unwrap().message_id;
    // Too small to be worth packing.
    let small = journal
        .accept(NewMessage::from(Incoming {
            source: "orders".into(),
            body: b"{\"n\":1}".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .message_id;
    // Read back for routing: both whole.
    let received = journal.received(10).await.unwrap();
    let bodies: Vec<(&str, &[u8])> = received
        .iter()
        .map(|m| (m.id.as_str(), m.body.as_slice()))
        .collect();
    assert_eq!(
        bodies,
        [(order.as_str(), ORDER), (small.as_str(), &b"{\"n\":1}"[..])]
    );
    // A document that packs, and one of random bytes that does not.
    let xml = format!(
        "<Declaration>{}</Declaration>",
        "<Item><Code>8471300000</Code></Item>".repeat(100)
    );
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            // xorshift64: bytes with no repeats for LZ4 to find.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let recorded = journal
        .record_routing(vec![
            routing_of(&order, "d-xml", xml.as_bytes()),
            routing_of(&small, "d-noise", &noise),
        ])
        .await
        .unwrap();
    assert_eq!(recorded, [true, true]);
    let leased = journal.lease("customs", i64::MAX, 10).await.unwrap();
    let documents: Vec<(&str, &[u8])> = leased
        .iter()
        .map(|l| (l.id.as_str(), l.document.body.as_slice()))
        .collect();
    assert_eq!(
        documents,
        [("d-xml", xml.as_bytes()), ("d-noise", noise.as_slice())]
    );
    journal.close().await;

    // On disk: the order and the XML take a fraction of their size; the
    // small body and the noise are stored as they are.
    let bodies = stored_sizes(&path, "message_bodies");
    assert_eq!(bodies[0].1, Some(ORDER.len() as i64));
    assert!(bodies[0].0 * 3 < ORDER.len() as i64 * 2, "{bodies:?}");
    assert_eq!(bodies[1], (7, None));
    let documents = stored_sizes(&path, "documents");
    assert_eq!(documents[0].1, Some(xml.len() as i64));
    assert!(documents[0].0 * 4 < xml.len() as i64, "{documents:?}");
    assert_eq!(documents[1], (noise.len() as i64, None));

    // The command line shows the body whole, and the document's real size.
    let detail = Inspector::open(&path).unwrap().show(&order).unwrap();
    assert_eq!(detail.body, ORDER);
    let mapped = detail
        .events
        .iter()
        .find(|e| e.kind == "mapped")
        .and_then(|e| e.detail.clone())
        .unwrap();
    assert!(
        mapped.contains(&format!("{} bytes of xml", xml.len())),
        "{mapped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_the_second_layout_keeps_its_bodies_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = old_journal(&path, LAYOUT_2);
        c.execute(
            "INSERT INTO message_bodies (id, headers, body) VALUES (1, '[]', ?1), (2, '[]', CAST('{\"n\":2}' AS BLOB))",
            [ORDER],
        )
        .unwrap();
        c.execute_batch(
            r#"
            INSERT INTO messages (id, source, received_at, content_type, body_ref, state, routed_at)
            VALUES ('m-received', 'orders', 1000, 'application/json', 1, 'received', NULL),
                   ('m-routed', 'orders', 2000, 'application/json', 2, 'routed', 2000);
            INSERT INTO documents (id, body) VALUES (1, CAST('<pending/>' AS BLOB));
            INSERT INTO deliveries (id, message_id, route, destination, state, document_ref, content_type, extension,
                                    attempts, budget_since, next_attempt_at, created_at, updated_at)
            VALUES ('d-pending', 'm-routed', 'r', 'customs', 'pending', 1, 'application/xml', 'xml', 0, 2000, 2000, 2000, 2000);
            "#,
        )
        .unwrap();
    }
    let e = Inspector::open(&path).err().expect("layout 2 is not read");
    assert!(e.to_string().contains("upgrades it"), "{e}");

    let journal = SqliteJournal::open(&path).unwrap();
    let received = journal.received(10).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, ORDER);
    let leased = journal.lease("customs", i64::MAX, 10).await.unwrap();
    assert_eq!(leased[0].document.body, b"<pending/>");
    // What comes after the upgrade is packed.
    let id = journal.accept(order_message()).await.unwrap().message_id;
    journal.close().await;

    let bodies = stored_sizes(&path, "message_bodies");
    assert_eq!(bodies[0], (ORDER.len() as i64, None));
    // The index on every delivery's state gives way to one on those in
    // flight (what a start looks for).
    let c = Connection::open(&path).unwrap();
    let index = |name: &str| -> bool {
        c.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(!index("deliveries_state") && index("deliveries_inflight"));
    assert_eq!(bodies[2].1, Some(ORDER.len() as i64));
    let inspector = Inspector::open(&path).unwrap();
    assert_eq!(inspector.show("m-received").unwrap().body, ORDER);
    assert_eq!(inspector.show(&id).unwrap().body, ORDER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_document_dead_letters_its_delivery_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(journal.accept(order_message()).await.unwrap().message_id);
    }
    let xml = format!("<Order>{}</Order>", "<Line>1</Line>".repeat(200));
    journal
        .record_routing(vec![
            routing_of(&ids[0], "d-zeroed", xml.as_bytes()),
            routing_of(&ids[1], "d-cut", xml.as_bytes()),
            routing_of(&ids[2], "d-whole", xml.as_bytes()),
        ])
        .await
        .unwrap();
    journal.close().await;
    // On disk, one document's bytes are zeroed and another's cut short (a
    // block cut short decodes without error, to fewer bytes).
    let c = Connection::open(&path).unwrap();
    let doc = "(SELECT document_ref FROM deliveries WHERE id = ?1)";
    c.execute(
        &format!("UPDATE documents SET body = zeroblob(length(body)) WHERE id = {doc}"),
        ["d-zeroed"],
    )
    .unwrap();
    c.execute(
        &format!("UPDATE documents SET body = substr(body, 1, length(body) - 8) WHERE id = {doc}"),
        ["d-cut"],
    )
    .unwrap();
    drop(c);

    let journal = SqliteJournal::open(&path).unwrap();
    let leased = journal.lease("customs", i64::MAX, 10).await.unwrap();
    let ids_leased: Vec<&str> = leased.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids_leased, ["d-whole"]);
    assert_eq!(leased[0].document.body, xml.as_bytes());
    journal.close().await;

    let inspector = Inspector::open(&path).unwrap();
    for id in &ids[..2] {
        let detail = inspector.show(id).unwrap();
        assert_eq!(detail.summary.deliveries[0].state, "dead");
        let dead = detail
            .events
            .iter()
            .find(|e| e.kind == "dead_lettered")
            .and_then(|e| e.detail.clone())
            .unwrap();
        assert!(dead.contains("damaged"), "{dead}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_body_sets_its_message_aside_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let damaged = journal.accept(order_message()).await.unwrap().message_id;
    let whole = journal.accept(order_message()).await.unwrap().message_id;
    journal.close().await;
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE message_bodies SET body = substr(body, 1, length(body) - 8)
             WHERE id = (SELECT body_ref FROM messages WHERE id = ?1)",
            [&damaged],
        )
        .unwrap();

    let journal = SqliteJournal::open(&path).unwrap();
    let ids = |ms: Vec<nzela_core::journal::StoredMessage>| -> Vec<String> {
        ms.into_iter().map(|m| m.id).collect()
    };
    assert_eq!(ids(journal.received(10).await.unwrap()), [whole.as_str()]);
    // Set aside once: the next read does not meet it again.
    assert_eq!(ids(journal.received(10).await.unwrap()), [whole.as_str()]);
    journal.close().await;

    // Its trail is still shown, and says why.
    let detail = Inspector::open(&path).unwrap().show(&damaged).unwrap();
    assert_eq!(detail.summary.state, "rejected");
    assert!(detail.body.is_empty());
    let details: Vec<&str> = detail
        .events
        .iter()
        .filter_map(|e| e.detail.as_deref())
        .collect();
    assert!(details[0].contains("damaged"), "{details:?}");
    let rejected = detail.events.iter().find(|e| e.kind == "rejected").unwrap();
    assert!(
        rejected.detail.as_deref().unwrap_or("").contains("damaged"),
        "{rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_packed_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    // 1 MiB of orders: packed on the blocking pool.
    let mut body = b"[".to_vec();
    while body.len() < 1 << 20 {
        body.extend_from_slice(ORDER);
        body.push(b',');
    }
    body.extend_from_slice(b"{}]");
    let id = journal
        .accept(NewMessage::from(Incoming {
            source: "orders".into(),
            body: body.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .message_id;
    let received = journal.received(10).await.unwrap();
    assert_eq!(received[0].id, id);
    assert!(received[0].body == body, "the body read back differs");
    journal.close().await;
    let stored = stored_sizes(&path, "message_bodies");
    assert_eq!(stored[0].1, Some(body.len() as i64));
    assert!(stored[0].0 * 10 < body.len() as i64, "{stored:?}");
}

fn delivery(id: &str, route: &str, destination: &str, document: Result<&str, &str>) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        route: route.into(),
        destination: destination.into(),
        document: document
            .map(|body| Document {
                body: body.as_bytes().to_vec(),
                content_type: "application/xml".into(),
                extension: "xml".into(),
            })
            .map_err(str::to_owned),
        leased: false,
    }
}

fn routed(message_id: &str, deliveries: Vec<NewDelivery>) -> Routing {
    let mut routes: Vec<String> = deliveries.iter().map(|d| d.route.clone()).collect();
    routes.dedup();
    Routing {
        message_id: message_id.to_owned(),
        deliveries,
        routes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_delivery_whose_mapping_failed_is_mapped_again_and_keeps_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let id = journal.accept(order_message()).await.unwrap().message_id;
    let first = routed(
        &id,
        vec![
            delivery("d-customs", "to_customs", "customs", Ok("<Declaration/>")),
            delivery(
                "d-commerce",
                "to_commerce",
                "commerce",
                Err("seller.niu is required"),
            ),
        ],
    );
    assert_eq!(journal.record_routing(vec![first]).await.unwrap(), [true]);
    assert!(journal.received(10).await.unwrap().is_empty());
    // The daemon runs on; an operator replays the message.
    let inspector = Inspector::open(&path).unwrap();
    assert_eq!(
        inspector.replay(&id).unwrap(),
        [Replayed::Remap("d-commerce".into())]
    );
    let states = |inspector: &Inspector| {
        let mut states: Vec<(String, String)> = inspector
            .show(&id)
            .unwrap()
            .summary
            .deliveries
            .into_iter()
            .map(|d| (d.id, d.state))
            .collect();
        states.sort();
        states
    };
    let pair = |id: &str, state: &str| (id.to_owned(), state.to_owned());
    assert_eq!(
        states(&inspector),
        [pair("d-commerce", "remap"), pair("d-customs", "pending")]
    );
    // The router reads it again and maps every route anew (new ids); the
    // mapping still fails.
    let again = journal.received(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    let failing = routed(
        &id,
        vec![
            delivery("d-2", "to_customs", "customs", Ok("<Declaration/>")),
            delivery(
                "d-3",
                "to_commerce",
                "commerce",
                Err("seller.tin is required"),
            ),
        ],
    );
    assert_eq!(
        journal.record_routing(vec![failing]).await.unwrap(),
        [false]
    );
    assert_eq!(
        states(&inspector),
        [pair("d-commerce", "dead"), pair("d-customs", "pending")]
    );
    let detail = inspector.show(&id).unwrap();
    let last = detail
        .events
        .iter()
        .rev()
        .find(|e| e.kind == "dead_lettered")
        .unwrap();
    assert_eq!(last.detail.as_deref(), Some("seller.tin is required"));
    // Replayed again, once the mapping is fixed: the delivery keeps its id
    // and takes the new document; nothing of the first routing is doubled.
    assert_eq!(
        inspector.replay("d-commerce").unwrap(),
        [Replayed::Remap("d-commerce".into())]
    );
    assert_eq!(journal.received(10).await.unwrap().len(), 1);
    let fixed = routed(
        &id,
        vec![
            delivery("d-4", "to_customs", "customs", Ok("<Declaration/>")),
            delivery("d-5", "to_commerce", "commerce", Ok("<Order/>")),
        ],
    );
    assert_eq!(journal.record_routing(vec![fixed]).await.unwrap(), [false]);
    assert!(journal.received(10).await.unwrap().is_empty());
    let commerce = journal.lease("commerce", i64::MAX, 10).await.unwrap();
    assert_eq!(commerce.len(), 1);
    assert_eq!(commerce[0].id, "d-commerce");
    assert_eq!(commerce[0].document.body, b"<Order/>");
    let customs = journal.lease("customs", i64::MAX, 10).await.unwrap();
    let customs: Vec<&str> = customs.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(customs, ["d-customs"]);
    let detail = inspector.show(&id).unwrap();
    assert_eq!(detail.summary.deliveries.len(), 2);
    assert!(
        detail
            .events
            .iter()
            .any(|e| e.kind == "mapped" && e.delivery_id.as_deref() == Some("d-commerce")),
        "{:?}",
        detail.events
    );
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_unrouted_message_is_routed_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let id = journal.accept(order_message()).await.unwrap().message_id;
    assert_eq!(
        journal
            .record_routing(vec![routed(&id, vec![])])
            .await
            .unwrap(),
        [true]
    );
    let inspector = Inspector::open(&path).unwrap();
    assert_eq!(inspector.show(&id).unwrap().summary.state, "unrouted");
    assert_eq!(
        inspector.replay(&id).unwrap(),
        [Replayed::Message(id.clone())]
    );
    assert_eq!(journal.received(10).await.unwrap().len(), 1);
    let now_routed = routed(
        &id,
        vec![delivery("d-1", "new_route", "customs", Ok("<x/>"))],
    );
    assert_eq!(
        journal.record_routing(vec![now_routed]).await.unwrap(),
        [true]
    );
    let leased = journal.lease("customs", i64::MAX, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    // Nothing left to replay.
    assert!(inspector.replay(&id).unwrap().is_empty());
    journal.close().await;
}

#[tokio::test]
async fn the_business_key_makes_a_duplicate_unless_the_sender_gives_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(dir.path().join("j.db")).unwrap();
    let message = |input: Option<&str>, sender: Option<&str>, key: &str| {
        NewMessage::from(Incoming {
            source: "orders".into(),
            body: b"{}".to_vec(),
            input_key: input.map(str::to_owned),
            idempotency_key: sender.map(str::to_owned),
            business_key: Some(key.to_owned()),
            ..Default::default()
        })
    };
    let first = journal
        .accept(message(Some("file:a.json"), None, "GB-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    // Another input with the same business key.
    let again = journal
        .accept(message(Some("file:b.json"), None, "GB-1"))
        .await
        .unwrap();
    assert_eq!(
        (again.message_id.as_str(), again.duplicate),
        (first.message_id.as_str(), true)
    );
    // The same input read again, whatever it now says.
    let reread = journal
        .accept(message(Some("file:a.json"), None, "GB-2"))
        .await
        .unwrap();
    assert_eq!(
        (reread.message_id.as_str(), reread.duplicate),
        (first.message_id.as_str(), true)
    );
    // The sender's own key decides: a new key is a new message.
    let keyed = journal
        .accept(message(None, Some("k-1"), "GB-1"))
        .await
        .unwrap();
    assert!(!keyed.duplicate);
    let keyed_again = journal
        .accept(message(None, Some("k-1"), "GB-3"))
        .await
        .unwrap();
    assert_eq!(
        (keyed_again.message_id.as_str(), keyed_again.duplicate),
        (keyed.message_id.as_str(), true)
    );
    // Another source's business keys are its own.
    let other = journal
        .accept(NewMessage::from(Incoming {
            source: "other".into(),
            body: b"{}".to_vec(),
            business_key: Some("GB-1".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(!other.duplicate);
    journal.close().await;
}
