//! The journal file itself: its layout, and older layouts brought up to
//! date without losing anything.

use nzela_core::journal::{Inspector, Journal, SqliteJournal};
use rusqlite::Connection;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_the_first_layout_is_upgraded_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch(LAYOUT_1).unwrap();
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
    // A dead delivery with a document can be replayed; one whose mapping
    // failed (no document) cannot.
    assert_eq!(inspector.replay("m-routed").unwrap(), ["d-dead"]);
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
    assert_eq!(version, 2);
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
    assert_eq!((version, page), (2, 8192));
}

#[tokio::test]
async fn a_message_routed_twice_keeps_the_deliveries_of_the_first_routing() {
    use nzela_core::journal::{Document, NewDelivery, NewMessage, Routing};
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
}
