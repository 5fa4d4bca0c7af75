//! The SQLite journal: one file, WAL mode, `synchronous=FULL`, one writer
//! thread that commits whatever is waiting in one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Document, Journal, JournalError, Leased, MessageState, NewMessage, Outcome, Routing,
    StoredMessage,
};
use crate::runtime::{Accepted, BoxFuture, now_millis};

/// Most requests committed together.
const MAX_BATCH: usize = 1024;
/// Requests waiting for the writer before senders wait (backpressure).
const QUEUE: usize = 8192;

/// The layout of the journal, kept in `PRAGMA user_version`.
const VERSION: i64 = 4;

/// Bodies and mapped documents live in tables of their own, written once:
/// the rows whose state changes (messages, deliveries) stay small, many to
/// a page, so a change of state rewrites a fraction of a page rather than
/// the page holding a 2 KiB body (what SQLite's log writes is whole pages).
///
/// A body or document is stored as an LZ4 block when that saves at least an
/// eighth of it (JSON and XML shrink to a third or less): `lz4_size` is
/// then the size it unpacks to, and NULL for one stored as is.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS message_bodies (
    id       INTEGER PRIMARY KEY,
    headers  TEXT NOT NULL,
    body     BLOB NOT NULL,
    lz4_size INTEGER
);

CREATE TABLE IF NOT EXISTS messages (
    id             TEXT PRIMARY KEY,
    source         TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    content_type   TEXT,
    -- message_bodies.id
    body_ref       INTEGER,
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

CREATE TABLE IF NOT EXISTS documents (
    id       INTEGER PRIMARY KEY,
    body     BLOB NOT NULL,
    lz4_size INTEGER
);

CREATE TABLE IF NOT EXISTS deliveries (
    id              TEXT PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES messages(id),
    route           TEXT NOT NULL,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL,
    -- documents.id; NULL when mapping failed
    document_ref    INTEGER,
    content_type    TEXT,
    extension       TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- attempts and time at which the current retry budget started (a
    -- replay starts a new one)
    budget_attempts INTEGER NOT NULL DEFAULT 0,
    budget_since    INTEGER NOT NULL,
    -- since when the delivery waits for its destination to be available
    -- (that time does not age its retry budget); NULL when it does not
    waiting_since   INTEGER,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries(message_id);
-- What a stop left in flight, found again at the next start.
CREATE INDEX IF NOT EXISTS deliveries_inflight ON deliveries(destination) WHERE state = 'inflight';

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

/// From the first layout (bodies inside the message and delivery rows).
const MIGRATE_1_TO_2: &str = r#"
CREATE TABLE message_bodies (
    id      INTEGER PRIMARY KEY,
    headers TEXT NOT NULL,
    body    BLOB NOT NULL
);
ALTER TABLE messages ADD COLUMN body_ref INTEGER;
INSERT INTO message_bodies (id, headers, body) SELECT rowid, headers, body FROM messages;
UPDATE messages SET body_ref = rowid;
ALTER TABLE messages DROP COLUMN headers;
ALTER TABLE messages DROP COLUMN body;
CREATE TABLE documents (
    id   INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
ALTER TABLE deliveries ADD COLUMN document_ref INTEGER;
INSERT INTO documents (id, body) SELECT rowid, body FROM deliveries WHERE body IS NOT NULL;
UPDATE deliveries SET document_ref = rowid WHERE body IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN body;
"#;

/// From the second layout (every body stored as is). What is there stays
/// as it is; what comes is packed where that pays.
const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE message_bodies ADD COLUMN lz4_size INTEGER;
ALTER TABLE documents ADD COLUMN lz4_size INTEGER;
DROP INDEX IF EXISTS deliveries_state;
"#;

/// From the third layout: deliveries can wait for their destination.
const MIGRATE_3_TO_4: &str = r#"
ALTER TABLE deliveries ADD COLUMN waiting_since INTEGER;
"#;

/// Creates the tables of a new journal, or brings an older one to the
/// current layout (in one transaction: all of it or nothing).
fn prepare_schema(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    let existing: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    if version > VERSION {
        return Err(storage(format!(
            "{} was written by a newer nzela (journal layout {version}; this one knows up to {VERSION})",
            path.display()
        )));
    }
    if existing && version < 2 {
        tracing::info!(journal = %path.display(), "moving bodies out of the message and delivery rows (journal layout 2)");
        tx.execute_batch(MIGRATE_1_TO_2)
            .map_err(|e| storage(format!("cannot upgrade {}: {e}", path.display())))?;
    }
    if existing && version < 3 {
        tracing::info!(journal = %path.display(), "packing bodies and documents from now on (journal layout 3)");
        tx.execute_batch(MIGRATE_2_TO_3)
            .map_err(|e| storage(format!("cannot upgrade {}: {e}", path.display())))?;
    }
    if existing && version < 4 {
        tracing::info!(journal = %path.display(), "deliveries can wait for an unavailable destination (journal layout 4)");
        tx.execute_batch(MIGRATE_3_TO_4)
            .map_err(|e| storage(format!("cannot upgrade {}: {e}", path.display())))?;
    }
    tx.execute_batch(SCHEMA).map_err(storage)?;
    tx.pragma_update(None, "user_version", VERSION)
        .map_err(storage)?;
    tx.commit().map_err(storage)
}

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

enum Op {
    /// The message (its body taken out) and its body, packed.
    Accept(NewMessage, Packed, Reply<Accepted>),
    Reject(NewMessage, Packed, String, Reply<String>),
    Route(Vec<PackedRouting>, Reply<Vec<bool>>),
    Lease {
        destination: String,
        now: i64,
        limit: usize,
        reply: Reply<Vec<Leased>>,
    },
    Outcome {
        delivery_id: String,
        attempt: u32,
        outcome: Outcome,
        reply: Reply<()>,
    },
    Release(Reply<usize>),
    /// Messages whose body no longer unpacks, with why: set `rejected`.
    Damaged(Damaged, Reply<usize>),
    Unlease(Vec<(String, u32)>, Reply<usize>),
    Close(oneshot::Sender<()>),
}

/// How a journal is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalOptions {
    /// The most bytes the database file may take. A commit that would
    /// pass it fails as on a full disk: nothing of it is stored, and the
    /// senders of its messages are refused (HTTP `503`) rather than
    /// acknowledged.
    pub max_size: Option<u64>,
}

/// A journal in one SQLite file.
pub struct SqliteJournal {
    path: PathBuf,
    writer: mpsc::Sender<Op>,
    reader: Arc<Mutex<Connection>>,
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

/// Bodies shorter than this are stored as they are: packing them would
/// save next to nothing.
const PACK_FROM: usize = 256;

/// A body or document as the journal stores it.
#[derive(Debug)]
struct Packed {
    bytes: Vec<u8>,
    /// The size it unpacks to; `None` when stored as is.
    lz4_size: Option<i64>,
}

/// An LZ4 block of `body` where that saves at least an eighth of it,
/// otherwise `body` as it is. Packed by the caller, so that the one writer
/// thread only writes.
fn pack(body: Vec<u8>) -> Packed {
    if body.len() >= PACK_FROM
        && let Ok(size) = i64::try_from(body.len())
        && let Some(packed) = compress(&body)
        && packed.len() <= body.len() - body.len() / 8
    {
        return Packed {
            lz4_size: Some(size),
            bytes: packed,
        };
    }
    Packed {
        bytes: body,
        lz4_size: None,
    }
}

thread_local! {
    /// Each thread's LZ4 hash table and output buffer, kept from one body
    /// to the next: a fresh table is 8 KiB of zeroed memory to allocate
    /// for every body, more than a typical body is.
    static LZ4: std::cell::RefCell<(lz4_flex::block::CompressTable, Vec<u8>)> =
        std::cell::RefCell::new((lz4_flex::block::CompressTable::small(), Vec::new()));
}

/// `body` as an LZ4 block; `None` if it cannot be packed (which no input
/// should cause: the buffer has room for the worst case).
fn compress(body: &[u8]) -> Option<Vec<u8>> {
    LZ4.with(|cell| {
        let mut cell = cell.try_borrow_mut().ok()?;
        let (table, out) = &mut *cell;
        let room = lz4_flex::block::get_maximum_output_size(body.len());
        if out.len() < room {
            out.resize(room, 0);
        }
        let n = lz4_flex::block::compress_into_with_table(body, out, table).ok()?;
        let packed = out.get(..n)?.to_vec();
        // A buffer grown for one large body is not kept for good.
        if out.len() > 1 << 20 {
            *out = Vec::new();
            *table = lz4_flex::block::CompressTable::small();
        }
        Some(packed)
    })
}

/// The body stored as `bytes` (an LZ4 block when `lz4_size` is set).
fn unpack(bytes: Vec<u8>, lz4_size: Option<i64>) -> Result<Vec<u8>, String> {
    let Some(size) = lz4_size else {
        return Ok(bytes);
    };
    // An LZ4 block unpacks to at most 255 times its size: a size past that
    // is damage, not a reason to allocate.
    let size = usize::try_from(size)
        .ok()
        .filter(|&n| n <= bytes.len().saturating_mul(255).saturating_add(16))
        .ok_or_else(|| {
            format!(
                "a packed body of {} bytes claims to unpack to {size}",
                bytes.len()
            )
        })?;
    let body = lz4_flex::block::decompress(&bytes, size).map_err(|e| {
        format!(
            "a packed body of {} bytes does not unpack: {e}",
            bytes.len()
        )
    })?;
    // The size is where the block must end: one cut short decodes without
    // error to fewer bytes.
    if body.len() != size {
        return Err(format!(
            "a packed body of {} bytes unpacks to {} bytes, not {size}",
            bytes.len(),
            body.len()
        ));
    }
    Ok(body)
}

/// Opens (and creates) the database with the settings every connection needs.
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, JournalError> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(storage)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage)?;
    Ok(conn)
}

impl SqliteJournal {
    /// Opens the journal at `path`, creating the file and its folder if
    /// needed, and starts its writer.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteJournal, JournalError> {
        SqliteJournal::open_with(path, &JournalOptions::default())
    }

    /// [`SqliteJournal::open`] with options.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: &JournalOptions,
    ) -> Result<SqliteJournal, JournalError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // 8 KiB pages hold three typical bodies (2-3 KiB) where 4 KiB pages
        // hold one: a third less written per message. Takes effect for a new
        // file only.
        conn.pragma_update(None, "page_size", 8192)
            .map_err(storage)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(storage)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(storage(format!(
                "{} cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        let mut conn = conn;
        prepare_schema(&mut conn, &path)?;
        // The writer's plans do not depend on the values bound: otherwise
        // SQLite compiles a statement on `messages` again whenever a value
        // changes (it checks each against the partial indexes' `IS NOT NULL`
        // conditions), which is every time. Its statements name those
        // conditions where they need such an index.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(storage)?;
        // The writer keeps the hot index pages in memory (16 MiB).
        conn.pragma_update(None, "cache_size", -16384)
            .map_err(storage)?;
        if let Some(max) = options.max_size {
            let page: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(storage)?;
            let pages = (max / page.max(1) as u64).clamp(1, i64::MAX as u64) as i64;
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(storage)?;
        }
        let reader = connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let (tx, rx) = mpsc::channel(QUEUE);
        thread::Builder::new()
            .name("nzela-journal".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| storage(format!("cannot start the journal writer: {e}")))?;
        Ok(SqliteJournal {
            path,
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn request<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| storage("the journal reader is poisoned"))?;
            f(&conn)
        })
        .await
        .map_err(|e| storage(format!("journal read failed: {e}")))?
    }
}

/// Messages whose body no longer unpacks: id, and why.
type Damaged = Vec<(String, String)>;

/// The messages waiting to be routed, oldest first, and those among them
/// whose body no longer unpacks.
fn read_received(
    c: &Connection,
    limit: usize,
) -> Result<(Vec<StoredMessage>, Damaged), JournalError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT m.id, m.source, m.received_at, m.content_type, b.headers, b.body, m.correlation_id, m.business_key,
                    b.lz4_size
             FROM messages m JOIN message_bodies b ON b.id = m.body_ref
             WHERE m.state = 'received' ORDER BY m.received_at LIMIT ?1",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            Ok((
                StoredMessage {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    received_at: r.get(2)?,
                    content_type: r.get(3)?,
                    headers: headers_from_json(&r.get::<_, String>(4)?),
                    body: r.get(5)?,
                    correlation_id: r.get(6)?,
                    business_key: r.get(7)?,
                },
                r.get::<_, Option<i64>>(8)?,
            ))
        })
        .map_err(storage)?;
    let (mut messages, mut damaged) = (Vec::new(), Vec::new());
    for row in rows {
        let (mut m, lz4_size) = row.map_err(storage)?;
        match unpack(std::mem::take(&mut m.body), lz4_size) {
            Ok(body) => {
                m.body = body;
                messages.push(m);
            }
            Err(e) => damaged.push((m.id, format!("its body in the journal is damaged: {e}"))),
        }
    }
    Ok((messages, damaged))
}

/// A routing whose documents are packed: `lz4_sizes[i]` goes with
/// `routing.deliveries[i]`.
struct PackedRouting {
    routing: Routing,
    lz4_sizes: Vec<Option<i64>>,
}

fn pack_routing(mut routing: Routing) -> PackedRouting {
    let lz4_sizes = routing
        .deliveries
        .iter_mut()
        .map(|d| match &mut d.document {
            Ok(doc) => {
                let packed = pack(std::mem::take(&mut doc.body));
                doc.body = packed.bytes;
                packed.lz4_size
            }
            Err(_) => None,
        })
        .collect();
    PackedRouting { routing, lz4_sizes }
}

/// Bodies up to this size are packed on the caller's task (a few
/// microseconds for a typical message); larger ones on the blocking pool.
const PACK_INLINE: usize = 64 << 10;

/// The message without its body, and the body packed.
async fn pack_message(mut message: NewMessage) -> Result<(NewMessage, Packed), JournalError> {
    let body = std::mem::take(&mut message.body);
    let body = if body.len() <= PACK_INLINE {
        pack(body)
    } else {
        tokio::task::spawn_blocking(move || pack(body))
            .await
            .map_err(|e| storage(format!("cannot pack a message body: {e}")))?
    };
    Ok((message, body))
}

impl Journal for SqliteJournal {
    fn accept(&self, message: NewMessage) -> BoxFuture<'_, Result<Accepted, JournalError>> {
        Box::pin(async move {
            let (message, body) = pack_message(message).await?;
            self.request(|r| Op::Accept(message, body, r)).await
        })
    }

    fn reject(
        &self,
        message: NewMessage,
        reason: String,
    ) -> BoxFuture<'_, Result<String, JournalError>> {
        Box::pin(async move {
            let (message, body) = pack_message(message).await?;
            self.request(|r| Op::Reject(message, body, reason, r)).await
        })
    }

    fn received(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, JournalError>> {
        Box::pin(async move {
            let (messages, damaged) = self.read(move |c| read_received(c, limit)).await?;
            // Damage on disk: such a message cannot be routed. It is set
            // aside with why (once), and the others go on.
            if !damaged.is_empty() {
                for (id, reason) in &damaged {
                    tracing::error!(message_id = %id, error = %reason, "message rejected: it cannot be routed");
                }
                self.request(|r| Op::Damaged(damaged, r)).await?;
            }
            Ok(messages)
        })
    }

    fn record_routing(
        &self,
        routings: Vec<Routing>,
    ) -> BoxFuture<'_, Result<Vec<bool>, JournalError>> {
        Box::pin(async move {
            // A page of routings holds megabytes of documents: packed off
            // the reactor.
            let packed = tokio::task::spawn_blocking(move || {
                routings.into_iter().map(pack_routing).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| storage(format!("cannot pack documents: {e}")))?;
            self.request(|r| Op::Route(packed, r)).await
        })
    }

    fn lease<'a>(
        &'a self,
        destination: &'a str,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Leased>, JournalError>> {
        let destination = destination.to_owned();
        Box::pin(self.request(move |reply| Op::Lease {
            destination,
            now,
            limit,
            reply,
        }))
    }

    fn record_outcome(
        &self,
        delivery_id: String,
        attempt: u32,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(self.request(move |reply| Op::Outcome {
            delivery_id,
            attempt,
            outcome,
            reply,
        }))
    }

    fn next_due<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, JournalError>> {
        let destination = destination.to_owned();
        Box::pin(self.read(move |c| {
            c.prepare_cached("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending' AND destination = ?1")
                .and_then(|mut s| s.query_row([destination], |r| r.get::<_, Option<i64>>(0)))
                .map_err(storage)
        }))
    }

    fn release_leases(&self) -> BoxFuture<'_, Result<usize, JournalError>> {
        Box::pin(self.request(Op::Release))
    }

    fn unlease(&self, leases: Vec<(String, u32)>) -> BoxFuture<'_, Result<usize, JournalError>> {
        Box::pin(self.request(|r| Op::Unlease(leases, r)))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.writer.send(Op::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
    }
}

/// The writer thread: takes what is waiting, applies it in one
/// transaction, commits (one fsync), then answers every request.
fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.blocking_recv() {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let closing = apply(&mut conn, &mut batch);
        if let Some(done) = closing {
            let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            let _ = done.send(());
            return;
        }
    }
}

/// A request's answer, sent only once its transaction is committed.
enum Answer {
    Accepted(Reply<Accepted>, Result<Accepted, JournalError>),
    Id(Reply<String>, Result<String, JournalError>),
    Unit(Reply<()>, Result<(), JournalError>),
    Flags(Reply<Vec<bool>>, Result<Vec<bool>, JournalError>),
    Leased(Reply<Vec<Leased>>, Result<Vec<Leased>, JournalError>),
    Count(Reply<usize>, Result<usize, JournalError>),
    /// Nothing to answer.
    None,
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Accepted(r, v) => drop(r.send(v)),
            Answer::Id(r, v) => drop(r.send(v)),
            Answer::Unit(r, v) => drop(r.send(v)),
            Answer::Flags(r, v) => drop(r.send(v)),
            Answer::Leased(r, v) => drop(r.send(v)),
            Answer::Count(r, v) => drop(r.send(v)),
            Answer::None => {}
        }
    }

    fn fail(self, e: &JournalError) {
        match self {
            Answer::Accepted(r, _) => drop(r.send(Err(e.clone()))),
            Answer::Id(r, _) => drop(r.send(Err(e.clone()))),
            Answer::Unit(r, _) => drop(r.send(Err(e.clone()))),
            Answer::Flags(r, _) => drop(r.send(Err(e.clone()))),
            Answer::Leased(r, _) => drop(r.send(Err(e.clone()))),
            Answer::Count(r, _) => drop(r.send(Err(e.clone()))),
            Answer::None => {}
        }
    }
}

/// Applies a batch; returns the close request if the batch asked to close.
///
/// One transaction for the whole batch: if any request in it fails (a full
/// disk), nothing of the batch is stored and every request of the batch,
/// run or not, is answered with that error.
fn apply(conn: &mut Connection, batch: &mut Vec<Op>) -> Option<oneshot::Sender<()>> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut closing = None;
    let mut failure = None;
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => Some(tx),
        Err(e) => {
            failure = Some(e);
            None
        }
    };
    let now = now_millis();
    for op in batch.drain(..) {
        let op = match op {
            Op::Close(done) => {
                closing = Some(done);
                continue;
            }
            op => op,
        };
        match (&tx, failure.is_none()) {
            (Some(tx), true) => match execute(tx, op, now) {
                Ok(answer) => answers.push(answer),
                Err((answer, e)) => {
                    answers.push(answer);
                    failure = Some(e);
                }
            },
            _ => answers.push(unanswered(op)),
        }
    }
    let result = match (failure, tx) {
        (Some(e), _) => Err(e),
        (None, Some(tx)) => tx.commit(),
        (None, None) => Ok(()),
    };
    match result {
        Ok(()) => answers.into_iter().for_each(Answer::send),
        Err(e) => {
            // Nothing of the batch is stored (the transaction is rolled
            // back): every sender learns it.
            let e = storage(e);
            tracing::error!(error = %e, requests = answers.len(), "journal commit failed");
            answers.into_iter().for_each(|a| a.fail(&e));
        }
    }
    closing
}

/// Runs one request inside the batch's transaction. On error, the answer
/// to give (with the batch's error) and the error.
fn execute(tx: &Transaction<'_>, op: Op, now: i64) -> Result<Answer, (Answer, rusqlite::Error)> {
    match op {
        Op::Accept(m, body, reply) => match accept(tx, &m, &body, now) {
            Ok(r) => Ok(Answer::Accepted(reply, Ok(r))),
            Err(e) => Err((Answer::Accepted(reply, Err(JournalError::Closed)), e)),
        },
        Op::Reject(m, body, reason, reply) => match reject(tx, &m, &body, &reason, now) {
            Ok(()) => Ok(Answer::Id(reply, Ok(m.id))),
            Err(e) => Err((Answer::Id(reply, Err(JournalError::Closed)), e)),
        },
        Op::Route(routings, reply) => {
            match routings.iter().map(|r| route(tx, r, now)).collect() {
                Ok(recorded) => Ok(Answer::Flags(reply, Ok(recorded))),
                Err(e) => Err((Answer::Flags(reply, Err(JournalError::Closed)), e)),
            }
        }
        Op::Lease {
            destination,
            now,
            limit,
            reply,
        } => match lease(tx, &destination, now, limit) {
            Ok(leased) => Ok(Answer::Leased(reply, Ok(leased))),
            Err(e) => Err((Answer::Leased(reply, Err(JournalError::Closed)), e)),
        },
        Op::Outcome {
            delivery_id,
            attempt,
            outcome,
            reply,
        } => match record_outcome(tx, &delivery_id, attempt, &outcome, now) {
            Ok(r) => Ok(Answer::Unit(reply, r)),
            Err(e) => Err((Answer::Unit(reply, Err(JournalError::Closed)), e)),
        },
        Op::Release(reply) => match tx.execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = MIN(next_attempt_at, ?1), updated_at = ?1
             WHERE state = 'inflight'",
            [now],
        ) {
            Ok(n) => Ok(Answer::Count(reply, Ok(n))),
            Err(e) => Err((Answer::Count(reply, Err(JournalError::Closed)), e)),
        },
        Op::Damaged(messages, reply) => match set_damaged(tx, &messages, now) {
            Ok(n) => Ok(Answer::Count(reply, Ok(n))),
            Err(e) => Err((Answer::Count(reply, Err(JournalError::Closed)), e)),
        },
        Op::Unlease(leases, reply) => match unlease(tx, &leases, now) {
            Ok(n) => Ok(Answer::Count(reply, Ok(n))),
            Err(e) => Err((Answer::Count(reply, Err(JournalError::Closed)), e)),
        },
        Op::Close(done) => {
            // Taken out of the batch by `apply`; closing here too is safe.
            drop(done);
            Ok(Answer::None)
        }
    }
}

/// The answer slot of a request that was not run (an earlier one in its
/// batch failed); it is answered with the batch's error.
fn unanswered(op: Op) -> Answer {
    match op {
        Op::Accept(_, _, reply) => Answer::Accepted(reply, Err(JournalError::Closed)),
        Op::Reject(_, _, _, reply) => Answer::Id(reply, Err(JournalError::Closed)),
        Op::Route(_, reply) => Answer::Flags(reply, Err(JournalError::Closed)),
        Op::Outcome { reply, .. } => Answer::Unit(reply, Err(JournalError::Closed)),
        Op::Lease { reply, .. } => Answer::Leased(reply, Err(JournalError::Closed)),
        Op::Release(reply) | Op::Unlease(_, reply) | Op::Damaged(_, reply) => {
            Answer::Count(reply, Err(JournalError::Closed))
        }
        Op::Close(_) => Answer::None,
    }
}

fn event(
    tx: &Transaction<'_>,
    message_id: &str,
    delivery_id: Option<&str>,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("INSERT INTO events (message_id, delivery_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![message_id, delivery_id, at, kind, detail])?;
    Ok(())
}

fn accept(
    tx: &Transaction<'_>,
    m: &NewMessage,
    body: &Packed,
    now: i64,
) -> Result<Accepted, rusqlite::Error> {
    // `IS NOT NULL` says in the text what the partial indexes need (the
    // writer's plans do not look at bound values).
    let mut first: Option<(String, String)> = None;
    if let Some(key) = &m.dedup_key {
        first = tx
            .prepare_cached(
                "SELECT id FROM messages WHERE source = ?1 AND dedup_key = ?2 AND dedup_key IS NOT NULL",
            )?
            .query_row(params![m.source, key], |r| r.get(0))
            .optional()?
            .map(|id| (id, key.clone()));
    }
    if first.is_none()
        && m.dedup_by_business_key
        && let Some(key) = &m.business_key
    {
        first = tx
            .prepare_cached(
                "SELECT id FROM messages WHERE business_key = ?1 AND business_key IS NOT NULL
                 AND source = ?2 AND state <> 'rejected' LIMIT 1",
            )?
            .query_row(params![key, m.source], |r| r.get(0))
            .optional()?
            .map(|id| (id, format!("business key {key}")));
    }
    if let Some((first, key)) = first {
        event(
            tx,
            &first,
            None,
            now,
            "duplicate",
            &format!("received again from {} ({key}); not routed again", m.source),
        )?;
        return Ok(Accepted {
            message_id: first,
            duplicate: true,
        });
    }
    insert_message(tx, m, body, m.dedup_key.as_deref(), MessageState::Received)?;
    // The trail's "received" event is the row itself (see `Inspector::show`):
    // one insert less on the hottest path.
    Ok(Accepted {
        message_id: m.id.clone(),
        duplicate: false,
    })
}

/// Keeps a message that could not be taken in (it does not decode), with
/// why: never routed, never a duplicate of anything.
fn reject(
    tx: &Transaction<'_>,
    m: &NewMessage,
    body: &Packed,
    reason: &str,
    now: i64,
) -> Result<(), rusqlite::Error> {
    insert_message(tx, m, body, None, MessageState::Rejected)?;
    event(tx, &m.id, None, now, "rejected", reason)
}

fn insert_message(
    tx: &Transaction<'_>,
    m: &NewMessage,
    body: &Packed,
    dedup_key: Option<&str>,
    state: MessageState,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("INSERT INTO message_bodies (headers, body, lz4_size) VALUES (?1, ?2, ?3)")?
        .execute(params![
            headers_to_json(&m.headers),
            body.bytes,
            body.lz4_size
        ])?;
    let body_ref = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO messages (id, source, received_at, content_type, body_ref, correlation_id, business_key, dedup_key, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        m.id,
        m.source,
        m.received_at,
        m.content_type,
        body_ref,
        m.correlation_id,
        m.business_key,
        dedup_key,
        state.as_str(),
    ])?;
    Ok(())
}

/// Records one routing. `false` if its deliveries were not stored as
/// given: the message was routed already, or it is routed again only to
/// map the deliveries an operator replayed (see [`remap`]).
fn route(tx: &Transaction<'_>, r: &PackedRouting, now: i64) -> Result<bool, rusqlite::Error> {
    let PackedRouting {
        routing: r,
        lz4_sizes,
    } = r;
    let state = if r.deliveries.is_empty() {
        "unrouted"
    } else {
        "routed"
    };
    let changed = tx
        .prepare_cached(
            "UPDATE messages SET state = ?1, routed_at = ?2 WHERE id = ?3 AND state = 'received'",
        )?
        .execute(params![state, now, r.message_id])?;
    if changed == 0 {
        // Routed already (from the journal and from memory, or by an
        // earlier run): route once only.
        return Ok(false);
    }
    let remaps: Vec<(String, String, String)> = tx
        .prepare_cached(
            "SELECT id, route, destination FROM deliveries WHERE message_id = ?1 AND state = 'remap'",
        )?
        .query_map([&r.message_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    if !remaps.is_empty() {
        remap(tx, r, lz4_sizes, &remaps, now)?;
        return Ok(false);
    }
    if r.deliveries.is_empty() {
        event(
            tx,
            &r.message_id,
            None,
            now,
            "unrouted",
            "no route matched; the message is kept",
        )?;
        return Ok(true);
    }
    // "routed" and "mapped" are not stored as events: the message and
    // delivery rows say them (see `Inspector::derived_events`).
    for (d, lz4_size) in r.deliveries.iter().zip(lz4_sizes) {
        let (state, document_ref, content_type, extension, error) = match &d.document {
            Ok(doc) => (
                if d.leased { "inflight" } else { "pending" },
                Some(insert_document(tx, &doc.body, *lz4_size)?),
                Some(doc.content_type.as_str()),
                Some(doc.extension.as_str()),
                None,
            ),
            Err(e) => ("dead", None, None, None, Some(e.as_str())),
        };
        tx.prepare_cached(
            "INSERT INTO deliveries (id, message_id, route, destination, state, document_ref, content_type, extension,
                                     attempts, budget_attempts, budget_since, next_attempt_at, created_at, updated_at, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?11, 0, ?9, ?9, ?9, ?9, ?10)",
        )?
        .execute(params![d.id, r.message_id, d.route, d.destination, state, document_ref, content_type, extension, now, error,
                         u32::from(d.leased && d.document.is_ok())])?;
        if let Err(e) = &d.document {
            event(
                tx,
                &r.message_id,
                Some(&d.id),
                now,
                "mapping_failed",
                &format!("route {} for {}: {e}", d.route, d.destination),
            )?;
            event(tx, &r.message_id, Some(&d.id), now, "dead_lettered", e)?;
        }
    }
    Ok(true)
}

/// Fills in the deliveries an operator replayed after their mapping failed
/// (state `remap`) from a new routing of their message: each keeps its id
/// and takes the document its route and destination now map to, `pending`
/// (sent by its dispatcher from the journal), or is dead-lettered again
/// with why. The routing's other deliveries are not stored: what the
/// message's first routing made stays as it is.
fn remap(
    tx: &Transaction<'_>,
    r: &Routing,
    lz4_sizes: &[Option<i64>],
    remaps: &[(String, String, String)],
    now: i64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("UPDATE messages SET state = 'routed' WHERE id = ?1")?
        .execute([&r.message_id])?;
    for (id, route, destination) in remaps {
        let mapped = r
            .deliveries
            .iter()
            .zip(lz4_sizes)
            .find(|(d, _)| &d.route == route && &d.destination == destination);
        let error = match mapped {
            Some((d, lz4_size)) => match &d.document {
                Ok(doc) => {
                    let document_ref = insert_document(tx, &doc.body, *lz4_size)?;
                    tx.prepare_cached(
                        "UPDATE deliveries SET state = 'pending', document_ref = ?2, content_type = ?3, extension = ?4,
                                next_attempt_at = ?5, updated_at = ?5, last_error = NULL
                         WHERE id = ?1",
                    )?
                    .execute(params![id, document_ref, doc.content_type, doc.extension, now])?;
                    event(
                        tx,
                        &r.message_id,
                        Some(id),
                        now,
                        "mapped",
                        &format!("route {route} for {destination}: mapped again"),
                    )?;
                    continue;
                }
                Err(e) => {
                    event(
                        tx,
                        &r.message_id,
                        Some(id),
                        now,
                        "mapping_failed",
                        &format!("route {route} for {destination}: {e}"),
                    )?;
                    e.clone()
                }
            },
            None => format!("the route {route} no longer sends this message to {destination}"),
        };
        tx.prepare_cached(
            "UPDATE deliveries SET state = 'dead', updated_at = ?2, last_error = ?3 WHERE id = ?1",
        )?
        .execute(params![id, now, error])?;
        event(tx, &r.message_id, Some(id), now, "dead_lettered", &error)?;
    }
    Ok(())
}

/// Takes messages whose body is damaged on disk out of the way of routing:
/// `rejected`, with the reason in their trail.
fn set_damaged(
    tx: &Transaction<'_>,
    messages: &[(String, String)],
    now: i64,
) -> Result<usize, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "UPDATE messages SET state = 'rejected' WHERE id = ?1 AND state = 'received'",
    )?;
    let mut n = 0;
    for (id, reason) in messages {
        let changed = stmt.execute([id])?;
        if changed > 0 {
            event(tx, id, None, now, "rejected", reason)?;
            n += changed;
        }
    }
    Ok(n)
}

fn unlease(
    tx: &Transaction<'_>,
    leases: &[(String, u32)],
    now: i64,
) -> Result<usize, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "UPDATE deliveries SET state = 'pending', attempts = attempts - 1,
                next_attempt_at = MIN(next_attempt_at, ?3), updated_at = ?3
         WHERE id = ?1 AND state = 'inflight' AND attempts = ?2",
    )?;
    let mut n = 0;
    for (id, attempt) in leases {
        n += stmt.execute(params![id, attempt, now])?;
    }
    Ok(n)
}

fn insert_document(
    tx: &Transaction<'_>,
    body: &[u8],
    lz4_size: Option<i64>,
) -> Result<i64, rusqlite::Error> {
    tx.prepare_cached("INSERT INTO documents (body, lz4_size) VALUES (?1, ?2)")?
        .execute(params![body, lz4_size])?;
    Ok(tx.last_insert_rowid())
}

fn lease(
    tx: &Transaction<'_>,
    destination: &str,
    now: i64,
    limit: usize,
) -> Result<Vec<Leased>, rusqlite::Error> {
    // Read, then each changed by its rowid: no `UPDATE ... RETURNING`, which
    // would make SQLite copy every page it touches to a statement journal
    // (see `record_outcome`).
    let mut stmt = tx.prepare_cached(
        "SELECT rowid, id, message_id, route, attempts + 1, document_ref, content_type, extension, created_at,
                budget_attempts, budget_since, waiting_since
         FROM deliveries WHERE state = 'pending' AND destination = ?1 AND next_attempt_at <= ?2
         ORDER BY next_attempt_at LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![destination, now, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, u32>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, u32>(9)?,
            r.get::<_, i64>(10)?,
            r.get::<_, Option<i64>>(11)?,
        ))
    })?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (
        rowid,
        id,
        message_id,
        route,
        attempt,
        document_ref,
        content_type,
        extension,
        created_at,
        budget_attempts,
        budget_since,
        waiting_since,
    ) in rows
    {
        tx.prepare_cached(
            "UPDATE deliveries SET state = 'inflight', attempts = attempts + 1, updated_at = ?2 WHERE rowid = ?1",
        )?
        .execute(params![rowid, now])?;
        // The time waiting for the destination does not age the budget.
        let budget_since =
            budget_since.saturating_add(waiting_since.map_or(0, |w| now.saturating_sub(w).max(0)));
        let (business_key, correlation_id, received_at, body, lz4_size) = tx
            .prepare_cached(
                "SELECT m.business_key, m.correlation_id, m.received_at, d.body, d.lz4_size
                 FROM messages m LEFT JOIN documents d ON d.id = ?2 WHERE m.id = ?1",
            )?
            .query_row(params![&message_id, document_ref], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
        let body = match unpack(body.unwrap_or_default(), lz4_size) {
            Ok(body) => body,
            Err(e) => {
                // Damage on disk: this delivery cannot be made; it is
                // dead-lettered with the reason, and the others go on.
                let reason = format!("its document in the journal is damaged: {e}");
                tracing::error!(delivery_id = %id, message_id = %message_id, error = %reason, "delivery dead-lettered");
                tx.prepare_cached(
                    "UPDATE deliveries SET state = 'dead', updated_at = ?2, last_error = ?3 WHERE id = ?1",
                )?
                .execute(params![id, now, reason])?;
                event(tx, &message_id, Some(&id), now, "dead_lettered", &reason)?;
                continue;
            }
        };
        out.push(Leased {
            id,
            message_id,
            route,
            destination: destination.to_owned(),
            attempt,
            document: Document {
                body,
                content_type: content_type.unwrap_or_default(),
                extension: extension.unwrap_or_default(),
            },
            business_key,
            correlation_id,
            received_at,
            created_at,
            budget_attempts,
            budget_since,
        });
    }
    Ok(out)
}

fn record_outcome(
    tx: &Transaction<'_>,
    delivery_id: &str,
    attempt: u32,
    outcome: &Outcome,
    now: i64,
) -> Result<Result<(), JournalError>, rusqlite::Error> {
    let (state, next_attempt_at, error) = match outcome {
        Outcome::Delivered { .. } => ("delivered", None, None),
        Outcome::Retry { at, error } => ("pending", Some(*at), Some(error)),
        Outcome::Dead { error } => ("dead", None, Some(error)),
        Outcome::Waiting { error } => return record_waiting(tx, delivery_id, attempt, error, now),
    };
    // Only the attempt that holds the lease records its outcome.
    //
    // Found first, then changed by its rowid: an `UPDATE ... RETURNING`
    // makes SQLite keep a statement journal, a copy of every page the
    // statement touches (8 KiB each), to undo that statement alone.
    let found: Option<(i64, String)> = tx
        .prepare_cached(
            "SELECT rowid, message_id FROM deliveries WHERE id = ?1 AND state = 'inflight' AND attempts = ?2",
        )?
        .query_row(params![delivery_id, attempt], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((rowid, message_id)) = found else {
        return Ok(Err(JournalError::NotFound(format!(
            "delivery {delivery_id} is not in flight at attempt {attempt}"
        ))));
    };
    tx.prepare_cached(
        "UPDATE deliveries SET state = ?2, next_attempt_at = COALESCE(?3, next_attempt_at), updated_at = ?4, last_error = ?5,
                budget_since = budget_since + COALESCE(MAX(?4 - waiting_since, 0), 0), waiting_since = NULL
         WHERE rowid = ?1",
    )?
    .execute(params![rowid, state, next_attempt_at, now, error])?;
    match outcome {
        Outcome::Delivered { detail } => {
            // Without a detail (a reply), the delivery row says it all (see
            // `Inspector::derived_events`).
            if let Some(d) = detail {
                event(
                    tx,
                    &message_id,
                    Some(delivery_id),
                    now,
                    "delivered",
                    &format!("attempt {attempt}: {d}"),
                )?;
            }
        }
        Outcome::Retry { at, error } => {
            let when = jiff::Timestamp::from_millisecond(*at)
                .map(|t| t.to_string())
                .unwrap_or_default();
            event(
                tx,
                &message_id,
                Some(delivery_id),
                now,
                "retry_scheduled",
                &format!("attempt {attempt} failed: {error}; next attempt at {when}"),
            )?;
        }
        Outcome::Dead { error } => {
            event(
                tx,
                &message_id,
                Some(delivery_id),
                now,
                "dead_lettered",
                &format!("attempt {attempt}: {error}"),
            )?;
        }
        // Recorded by `record_waiting`.
        Outcome::Waiting { .. } => {}
    }
    Ok(Ok(()))
}

/// The attempt could not be made: the delivery is pending again, due now,
/// the attempt not counted. One `waiting` event when it starts to wait,
/// none while it goes on waiting.
fn record_waiting(
    tx: &Transaction<'_>,
    delivery_id: &str,
    attempt: u32,
    error: &str,
    now: i64,
) -> Result<Result<(), JournalError>, rusqlite::Error> {
    let found: Option<(String, Option<i64>)> = tx
        .prepare_cached(
            "SELECT message_id, waiting_since FROM deliveries
             WHERE id = ?1 AND state = 'inflight' AND attempts = ?2",
        )?
        .query_row(params![delivery_id, attempt], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((message_id, waiting_since)) = found else {
        return Ok(Err(JournalError::NotFound(format!(
            "delivery {delivery_id} is not in flight at attempt {attempt}"
        ))));
    };
    tx.prepare_cached(
        "UPDATE deliveries SET state = 'pending', attempts = attempts - 1, next_attempt_at = ?2,
                updated_at = ?2, last_error = ?3, waiting_since = COALESCE(waiting_since, ?2)
         WHERE id = ?1",
    )?
    .execute(params![delivery_id, now, error])?;
    if waiting_since.is_none() {
        event(
            tx,
            &message_id,
            Some(delivery_id),
            now,
            "waiting",
            &format!(
                "the destination is unavailable ({error}); the delivery waits for it, no attempt counted"
            ),
        )?;
    }
    Ok(Ok(()))
}

fn headers_to_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

fn headers_from_json(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Read and repair access for operators (`nzela messages`): works beside a
/// running daemon, which keeps writing (WAL readers never block it, and a
/// replay waits for its turn to write).
pub struct Inspector {
    conn: Connection,
}

/// Which messages to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only messages with a delivery in this state (`pending` includes
    /// deliveries in flight), or `unrouted` messages.
    pub state: Option<String>,
    /// Only messages with a delivery on this route.
    pub route: Option<String>,
    /// Only messages with this id, business key or correlation id.
    pub key: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// One line of `nzela messages list`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSummary {
    pub id: String,
    pub source: String,
    pub received_at: i64,
    pub state: String,
    pub business_key: Option<String>,
    pub deliveries: Vec<DeliverySummary>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySummary {
    pub id: String,
    pub route: String,
    pub destination: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
}

/// Everything about one message: `nzela messages show`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageDetail {
    pub summary: MessageSummary,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
    pub events: Vec<EventRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub at: i64,
    pub kind: String,
    pub delivery_id: Option<String>,
    pub detail: Option<String>,
}

impl Inspector {
    /// Opens an existing journal.
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector, JournalError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(JournalError::NotFound(format!(
                "no journal at {} (has nzela run there yet?)",
                path.display()
            )));
        }
        let conn = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(storage)?;
        if version != VERSION {
            let what = if version < VERSION {
                "an earlier nzela; `nzela run` upgrades it when it starts"
            } else {
                "a newer nzela"
            };
            return Err(storage(format!(
                "{} has journal layout {version}, written by {what} (this nzela reads layout {VERSION})",
                path.display()
            )));
        }
        Ok(Inspector { conn })
    }

    /// Message ids for an id, a business key or a correlation id.
    pub fn find(&self, key: &str) -> Result<Vec<String>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM messages WHERE id = ?1 OR business_key = ?1 OR correlation_id = ?1
                 UNION SELECT message_id FROM deliveries WHERE id = ?1",
            )
            .map_err(storage)?;
        let ids = stmt.query_map([key], |r| r.get(0)).map_err(storage)?;
        ids.collect::<Result<Vec<String>, _>>().map_err(storage)
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<MessageSummary>, JournalError> {
        let mut sql = String::from("SELECT id FROM messages m WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if let Some(key) = &filter.key {
            args.push(key.clone());
            sql.push_str(&format!(
                " AND (m.id = ?{0} OR m.business_key = ?{0} OR m.correlation_id = ?{0}
                   OR m.id IN (SELECT message_id FROM deliveries WHERE id = ?{0}))",
                args.len()
            ));
        }
        let delivery_state = match filter.state.as_deref() {
            Some("unrouted") => {
                sql.push_str(" AND m.state = 'unrouted'");
                None
            }
            Some("received") => {
                sql.push_str(" AND m.state = 'received'");
                None
            }
            Some("rejected") => {
                sql.push_str(" AND m.state = 'rejected'");
                None
            }
            Some("pending") => Some("d.state IN ('pending', 'inflight', 'remap')"),
            Some("dead") => Some("d.state = 'dead'"),
            Some("delivered") => Some("d.state = 'delivered'"),
            Some(other) => {
                return Err(JournalError::NotFound(format!(
                    "unknown state \"{other}\": expected dead, pending, delivered, unrouted, received or rejected"
                )));
            }
            None => None,
        };
        if delivery_state.is_some() || filter.route.is_some() {
            sql.push_str(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id");
            if let Some(s) = delivery_state {
                sql.push_str(" AND ");
                sql.push_str(s);
            }
            if let Some(route) = &filter.route {
                args.push(route.clone());
                sql.push_str(&format!(" AND d.route = ?{}", args.len()));
            }
            sql.push(')');
        }
        sql.push_str(&format!(
            " ORDER BY m.received_at DESC LIMIT {}",
            filter.limit.max(1)
        ));
        let mut stmt = self.conn.prepare(&sql).map_err(storage)?;
        let ids = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(0)
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        ids.iter().map(|id| self.summary(id)).collect()
    }

    fn summary(&self, id: &str) -> Result<MessageSummary, JournalError> {
        let (source, received_at, state, business_key) = self
            .conn
            .query_row(
                "SELECT source, received_at, state, business_key FROM messages WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(storage)?
            .ok_or_else(|| JournalError::NotFound(format!("no message {id}")))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, route, destination, state, attempts, next_attempt_at, last_error
                 FROM deliveries WHERE message_id = ?1 ORDER BY created_at, route, destination",
            )
            .map_err(storage)?;
        let deliveries = stmt
            .query_map([id], |r| {
                Ok(DeliverySummary {
                    id: r.get(0)?,
                    route: r.get(1)?,
                    destination: r.get(2)?,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    next_attempt_at: r.get(5)?,
                    last_error: r.get(6)?,
                })
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(MessageSummary {
            id: id.to_owned(),
            source,
            received_at,
            state,
            business_key,
            deliveries,
        })
    }

    /// The message, its deliveries and its event trail.
    pub fn show(&self, id: &str) -> Result<MessageDetail, JournalError> {
        let summary = self.summary(id)?;
        let (content_type, headers, correlation_id, body) = self
            .conn
            .query_row(
                "SELECT m.content_type, b.headers, m.correlation_id, b.body, b.lz4_size
                 FROM messages m JOIN message_bodies b ON b.id = m.body_ref WHERE m.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        headers_from_json(&r.get::<_, String>(1)?),
                        r.get::<_, Option<String>>(2)?,
                        (r.get::<_, Vec<u8>>(3)?, r.get::<_, Option<i64>>(4)?),
                    ))
                },
            )
            .map_err(storage)?;
        let (body, damage) = match unpack(body.0, body.1) {
            Ok(body) => (body, None),
            // The trail is still worth reading: shown without the body.
            Err(e) => (Vec::new(), Some(e)),
        };
        // The first event is the message's own row.
        let detail = match damage {
            None => format!("from {}, {} bytes", summary.source, body.len()),
            Some(e) => format!(
                "from {}; its body in the journal is damaged: {e}",
                summary.source
            ),
        };
        let received = EventRecord {
            at: summary.received_at,
            kind: "received".to_owned(),
            delivery_id: None,
            detail: Some(detail),
        };
        let mut stmt = self
            .conn
            .prepare("SELECT at, kind, delivery_id, detail FROM events WHERE message_id = ?1 ORDER BY seq")
            .map_err(storage)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(EventRecord {
                    at: r.get(0)?,
                    kind: r.get(1)?,
                    delivery_id: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let derived = self.derived_events(id, &rows)?;
        // Merge by time; at the same millisecond, routing comes before the
        // stored events and a delivery's success after them.
        let mut events = vec![received];
        let mut derived = derived.into_iter().peekable();
        for row in rows {
            while let Some((at, rank, _)) = derived.peek()
                && (*at, *rank) <= (row.at, 3)
            {
                if let Some((_, _, e)) = derived.next() {
                    events.push(e);
                }
            }
            events.push(row);
        }
        events.extend(derived.map(|(_, _, e)| e));
        Ok(MessageDetail {
            summary,
            content_type,
            headers,
            correlation_id,
            body,
            events,
        })
    }

    /// The events the journal does not store as rows because the message
    /// and delivery rows say them already (the way every message takes):
    /// routed, mapped, and delivered without a reply. Each with its time
    /// and its rank at the same millisecond. A journal of layout 1 stored
    /// them as rows: those are not derived again.
    fn derived_events(
        &self,
        id: &str,
        rows: &[EventRecord],
    ) -> Result<Vec<(i64, u8, EventRecord)>, JournalError> {
        let stored = |kind: &str, delivery: Option<&str>| {
            rows.iter().any(|e| {
                e.kind == kind && (delivery.is_none() || e.delivery_id.as_deref() == delivery)
            })
        };
        let (state, routed_at): (String, Option<i64>) = self
            .conn
            .query_row(
                "SELECT state, routed_at FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(storage)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.id, d.route, d.destination, d.state, d.attempts, d.created_at, d.updated_at,
                        d.extension, COALESCE(doc.lz4_size, length(doc.body))
                 FROM deliveries d LEFT JOIN documents doc ON doc.id = d.document_ref
                 WHERE d.message_id = ?1 ORDER BY d.rowid",
            )
            .map_err(storage)?;
        type Row = (
            String,
            String,
            String,
            String,
            u32,
            i64,
            i64,
            Option<String>,
            Option<i64>,
        );
        let deliveries: Vec<Row> = stmt
            .query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(storage)?
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        let mut out = Vec::new();
        if let (true, Some(at)) = (state == "routed", routed_at)
            && !stored("routed", None)
        {
            let mut routes: Vec<&str> = Vec::new();
            for d in &deliveries {
                if !routes.contains(&d.1.as_str()) {
                    routes.push(&d.1);
                }
            }
            out.push((
                at,
                1,
                EventRecord {
                    at,
                    kind: "routed".to_owned(),
                    delivery_id: None,
                    detail: Some(routes.join(", ")),
                },
            ));
        }
        for (delivery, route, destination, _, _, created_at, _, extension, length) in &deliveries {
            if let Some(length) = length
                && !stored("mapped", Some(delivery))
            {
                out.push((
                    *created_at,
                    2,
                    EventRecord {
                        at: *created_at,
                        kind: "mapped".to_owned(),
                        delivery_id: Some(delivery.clone()),
                        detail: Some(format!(
                            "route {route} for {destination}: {length} bytes of {}",
                            extension.as_deref().unwrap_or_default()
                        )),
                    },
                ));
            }
        }
        for (delivery, _, _, state, attempts, _, updated_at, _, _) in &deliveries {
            if state == "delivered" && !stored("delivered", Some(delivery)) {
                out.push((
                    *updated_at,
                    4,
                    EventRecord {
                        at: *updated_at,
                        kind: "delivered".to_owned(),
                        delivery_id: Some(delivery.clone()),
                        detail: Some(format!("attempt {attempts}")),
                    },
                ));
            }
        }
        out.sort_by_key(|(at, rank, _)| (*at, *rank));
        Ok(out)
    }

    /// Makes the dead deliveries of a message (or one dead delivery, by its
    /// id) pending again, due now, with a new retry budget. A delivery
    /// whose mapping failed has no document: it waits as `remap`, and its
    /// message is routed again (as `received`) so that the router maps it
    /// with the mappings of the running configuration. A message that no
    /// route matched (`unrouted`) is routed again too. Returns what was
    /// requeued.
    pub fn replay(&self, id: &str) -> Result<Vec<Replayed>, JournalError> {
        // Immediate: the write lock is taken (waiting for the daemon's
        // writer, up to the busy timeout) before anything is read. A
        // deferred transaction that read first could not upgrade while the
        // writer is busy, and would fail at once with "database is locked".
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(storage)?;
        let now = now_millis();
        let mut stmt = tx
            .prepare(
                "SELECT id, message_id, document_ref IS NOT NULL FROM deliveries
                 WHERE state = 'dead' AND (id = ?1 OR message_id = ?1)",
            )
            .map_err(storage)?;
        let dead = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        drop(stmt);
        let mut replayed = Vec::new();
        for (delivery, message, mapped) in dead {
            let (state, detail) = if mapped {
                ("pending", "requeued by an operator")
            } else {
                ("remap", "requeued by an operator, to be mapped again")
            };
            tx.execute(
                "UPDATE deliveries SET state = ?3, next_attempt_at = ?2, updated_at = ?2,
                        budget_attempts = attempts, budget_since = ?2, waiting_since = NULL WHERE id = ?1",
                params![delivery, now, state],
            )
            .map_err(storage)?;
            if !mapped {
                tx.execute(
                    "UPDATE messages SET state = 'received' WHERE id = ?1 AND state = 'routed'",
                    [&message],
                )
                .map_err(storage)?;
            }
            tx.execute(
                "INSERT INTO events (message_id, delivery_id, at, kind, detail) VALUES (?1, ?2, ?3, 'replayed', ?4)",
                params![message, delivery, now, detail],
            )
            .map_err(storage)?;
            replayed.push(if mapped {
                Replayed::Delivery(delivery)
            } else {
                Replayed::Remap(delivery)
            });
        }
        // A message no route matched, named by its id: routed again.
        let unrouted = tx
            .execute(
                "UPDATE messages SET state = 'received' WHERE id = ?1 AND state = 'unrouted'",
                [id],
            )
            .map_err(storage)?;
        if unrouted > 0 {
            tx.execute(
                "INSERT INTO events (message_id, at, kind, detail) VALUES (?1, ?2, 'replayed', 'requeued by an operator, to be routed again')",
                params![id, now],
            )
            .map_err(storage)?;
            replayed.push(Replayed::Message(id.to_owned()));
        }
        tx.commit().map_err(storage)?;
        Ok(replayed)
    }
}

/// What [`Inspector::replay`] requeued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// A dead delivery, sent again.
    Delivery(String),
    /// A delivery whose mapping failed, mapped again and then sent.
    Remap(String),
    /// A message no route matched, routed again.
    Message(String),
}

#[cfg(test)]
mod packing {
    use super::{pack, unpack};

    #[test]
    fn a_packed_body_cut_short_anywhere_is_an_error_never_a_shorter_body() {
        let body = "<Item><Code>8471300000</Code><Qty>3</Qty></Item>".repeat(60);
        let packed = pack(body.clone().into_bytes());
        let size = packed.lz4_size.expect("XML packs");
        assert_eq!(
            unpack(packed.bytes.clone(), Some(size)).unwrap(),
            body.as_bytes()
        );
        for cut in 0..packed.bytes.len() {
            let r = unpack(packed.bytes[..cut].to_vec(), Some(size));
            assert!(
                r.is_err(),
                "cut at {cut} of {} unpacked",
                packed.bytes.len()
            );
        }
    }

    /// One thread's table and buffer serve bodies of every size in turn:
    /// each unpacks to itself whatever came before it on the thread.
    #[test]
    fn bodies_packed_one_after_another_on_a_thread_each_unpack_to_themselves() {
        let line = |i: usize| format!("<Line><No>{i}</No><Code>8471300000</Code></Line>");
        let sizes = [300, 70_000, 2_400, 1_300_000, 500, 3_000_000, 260];
        for (round, size) in sizes.into_iter().enumerate() {
            let mut body = String::new();
            let mut i = round;
            while body.len() < size {
                body.push_str(&line(i));
                i += 7;
            }
            let packed = pack(body.clone().into_bytes());
            let unpacked = unpack(packed.bytes, packed.lz4_size).unwrap();
            assert!(packed.lz4_size.is_some(), "a {size}-byte body is packed");
            assert!(
                unpacked == body.as_bytes(),
                "the {size}-byte body comes back"
            );
        }
        // What does not shrink by an eighth is kept as it is.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let kept = pack(noise.clone());
        assert_eq!(kept.lz4_size, None);
        assert_eq!(kept.bytes, noise);
    }

    #[test]
    fn a_size_no_block_can_reach_is_refused_before_allocating() {
        let e = unpack(vec![0; 16], Some(1 << 40)).unwrap_err();
        assert!(e.contains("claims to unpack"), "{e}");
        assert!(unpack(vec![0; 16], Some(-1)).is_err());
    }
}
