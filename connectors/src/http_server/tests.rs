//! Loopback tests: a real server on 127.0.0.1:0, a real SQLite journal,
//! requests written byte by byte so that framing (chunked bodies, a
//! `Content-Length` without its body) is exactly what the test says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nzela_core::journal::{Inspector, Journal, JournalOptions, ListFilter, SqliteJournal};
use nzela_core::runtime::router::Feed;
use nzela_core::runtime::{CancellationToken, Intake};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Config, HttpServer};

struct Hub {
    _dir: tempfile::TempDir,
    db: PathBuf,
    journal: Arc<SqliteJournal>,
    feed: Feed,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Hub {
    fn messages(&self) -> Vec<nzela_core::journal::MessageSummary> {
        let filter = ListFilter {
            limit: 100,
            ..Default::default()
        };
        Inspector::open(&self.db).unwrap().list(&filter).unwrap()
    }
}

fn endpoint(settings: Json) -> Config {
    serde_json::from_value(settings).unwrap()
}

fn orders() -> Config {
    endpoint(json!({"listen": "127.0.0.1:0", "path": "/in/orders", "format": "json"}))
}

async fn start(endpoints: Vec<(&str, Config)>) -> Hub {
    start_with(endpoints, JournalOptions::default()).await
}

async fn start_with(endpoints: Vec<(&str, Config)>, options: JournalOptions) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let journal = Arc::new(SqliteJournal::open_with(&db, &options).unwrap());
    let feed = Feed::default();
    let intake = Intake::new(
        journal.clone() as Arc<dyn Journal>,
        feed.clone(),
        CancellationToken::new(),
    );
    let endpoints = endpoints
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    let server = HttpServer::bind("127.0.0.1:0", endpoints).await.unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(intake, shutdown.clone()));
    Hub {
        _dir: dir,
        db,
        journal,
        feed,
        addr,
        shutdown,
        task,
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Json,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {:?}", self.body))
    }
}

/// Sends raw bytes on a new connection and reads the answer until the
/// server closes it.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("no answer within 10s");
    // A server that answers before reading the whole request may reset
    // the connection after its answer: what arrived is what counts.
    if let Err(e) = read {
        assert!(!buf.is_empty(), "connection failed before any answer: {e}");
    }
    parse(&buf)
}

fn parse(buf: &[u8]) -> Answer {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let body = &buf[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let body = if body.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(body).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = content_type {
        raw.push_str(&format!("Content-Type: {c}\r\n"));
    }
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw).await
}

async fn post_json(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Answer {
    post(
        addr,
        "/in/orders",
        Some("application/json"),
        headers,
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn an_accepted_message_is_in_the_journal_when_202_is_answered() {
    let hub = start(vec![("orders", orders())]).await;
    let headers = [
        ("X-Correlation-Id", "corr-7"),
        ("User-Agent", "partner/1.0"),
        ("X-Other", "dropped"),
    ];
    let a = post(
        hub.addr,
        "/in/orders",
        Some("application/json; charset=utf-8"),
        &headers,
        br#"{"order": {"order_id": "GB-1"}}"#,
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["duplicate"], json!(false));
    let id = a.body["message_id"].as_str().unwrap();
    let detail = Inspector::open(&hub.db).unwrap().show(id).unwrap();
    assert_eq!(detail.summary.source, "orders");
    assert_eq!(detail.body, br#"{"order": {"order_id": "GB-1"}}"#);
    assert_eq!(
        detail.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(detail.correlation_id.as_deref(), Some("corr-7"));
    assert!(
        detail
            .headers
            .contains(&("user-agent".into(), "partner/1.0".into())),
        "{:?}",
        detail.headers
    );
    assert!(
        detail.headers.iter().all(|(n, _)| n != "x-other"),
        "{:?}",
        detail.headers
    );
    let received = hub.journal.received(10).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_waiting_for_their_answers_make_the_intake_busy() {
    use nzela_core::runtime::router::{BUSY_AT, BUSY_FOR};
    let hub = start(vec![("orders", orders())]).await;
    let body = br#"{"order": {"order_id": "GB-W"}}"#;
    // BUSY_AT senders whose requests have begun and not yet ended.
    let mut senders = Vec::new();
    for _ in 0..BUSY_AT {
        let mut stream = TcpStream::connect(hub.addr).await.unwrap();
        let head = format!(
            "POST /in/orders HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        senders.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.feed.intake_busy() {
        assert!(Instant::now() < deadline, "the intake never became busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each answered 202; soon after, the intake is no longer busy.
    for mut stream in senders {
        stream.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        assert_eq!(parse(&buf).status, 202);
    }
    tokio::time::sleep(BUSY_FOR + Duration::from_millis(50)).await;
    assert!(!hub.feed.intake_busy());
    // One sender fewer never makes it busy.
    let mut fewer = Vec::new();
    for _ in 1..BUSY_AT {
        let mut stream = TcpStream::connect(hub.addr).await.unwrap();
        stream
            .write_all(b"POST /in/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        fewer.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hub.feed.intake_busy());
    drop(fewer);
    hub.shutdown.cancel();
    hub.task.await.unwrap();
}

#[tokio::test]
async fn a_resend_with_the_same_idempotency_key_is_a_duplicate() {
    let hub = start(vec![("orders", orders())]).await;
    let key = [("Idempotency-Key", "k-42")];
    let first = post_json(hub.addr, r#"{"n": 1}"#, &key).await;
    let second = post_json(hub.addr, r#"{"n": 1}"#, &key).await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.body["message_id"], second.body["message_id"]);
    assert_eq!(first.body["duplicate"], json!(false));
    assert_eq!(second.body["duplicate"], json!(true));
    assert_eq!(hub.messages().len(), 1);
    let other = post_json(hub.addr, r#"{"n": 1}"#, &[("Idempotency-Key", "k-43")]).await;
    assert_ne!(other.body["message_id"], first.body["message_id"]);
    assert_eq!(hub.messages().len(), 2);
}

#[tokio::test]
async fn a_resend_with_the_same_business_key_is_a_duplicate() {
    let config = endpoint(json!({
        "listen": "127.0.0.1:0", "path": "/in/orders", "format": "json", "business_key": "order.order_id"
    }));
    let hub = start(vec![("orders", config)]).await;
    let first = post_json(hub.addr, r#"{"order": {"order_id": "GB-2026-1"}}"#, &[]).await;
    let second = post_json(
        hub.addr,
        r#"{"order": {"order_id": "GB-2026-1", "note": "resent"}}"#,
        &[],
    )
    .await;
    assert_eq!(first.body["message_id"], second.body["message_id"]);
    assert_eq!(second.body["duplicate"], json!(true));
    let messages = hub.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].business_key.as_deref(), Some("GB-2026-1"));
}

#[tokio::test]
async fn malformed_json_is_400_with_its_line_and_column() {
    let hub = start(vec![("orders", orders())]).await;
    let a = post_json(hub.addr, r#"{"a": }"#, &[]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.error().starts_with("invalid JSON at line 1, column 7"),
        "{a:?}"
    );
    assert_eq!(a.body["line"], json!(1));
    assert_eq!(a.body["column"], json!(7));
    assert!(hub.messages().is_empty());
}

#[tokio::test]
async fn a_large_body_is_decoded_like_a_small_one() {
    let config = endpoint(json!({
        "listen": "127.0.0.1:0", "path": "/in/orders", "format": "json", "business_key": "order.order_id"
    }));
    let hub = start(vec![("orders", config)]).await;
    let items = vec![
        json!({"sku": "ABC-123", "quantity": 3, "description": "Cocoa beans, 60kg bag"});
        2000
    ];
    let big = json!({"order": {"order_id": "GB-BIG", "items": items}}).to_string();
    assert!(big.len() > 64 * 1024);
    let a = post_json(hub.addr, &big, &[]).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(hub.messages()[0].business_key.as_deref(), Some("GB-BIG"));
    let broken = format!("{}\n  oops", &big[..big.len() - 2]);
    let a = post_json(hub.addr, &broken, &[]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.body["line"], json!(2));
}

#[tokio::test]
async fn an_empty_csv_body_is_400_as_an_empty_json_one_is() {
    let invoices =
        endpoint(json!({"listen": "127.0.0.1:0", "path": "/in/invoices", "format": "csv"}));
    let hub = start(vec![("orders", orders()), ("invoices", invoices)]).await;
    let a = post_json(hub.addr, "", &[]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.error().contains("empty document"), "{a:?}");
    for body in [&b""[..], b"\r\n"] {
        let a = post(hub.addr, "/in/invoices", Some("text/csv"), &[], body).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert!(
            a.error().ends_with("empty document, expected a header row"),
            "{a:?}"
        );
    }
    assert!(hub.messages().is_empty());
}

#[tokio::test]
async fn nesting_deeper_than_max_depth_is_400() {
    let config = endpoint(
        json!({"listen": "127.0.0.1:0", "path": "/in/orders", "format": "json", "max_depth": 3}),
    );
    let hub = start(vec![("orders", config)]).await;
    assert_eq!(post_json(hub.addr, "[[[1]]]", &[]).await.status, 202);
    let a = post_json(hub.addr, "[[[[1]]]]", &[]).await;
    assert_eq!(a.status, 400, "{a:?}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_from_its_content_length() {
    let config = endpoint(
        json!({"listen": "127.0.0.1:0", "path": "/in/orders", "format": "json", "max_body_size": "100 B"}),
    );
    let hub = start(vec![("orders", config)]).await;
    // The declared length alone is enough: the body is never sent.
    let raw = "POST /in/orders HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let a = exchange(hub.addr, raw.as_bytes()).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.error().contains("over the limit of 100 bytes"), "{a:?}");
    let ok = post_json(hub.addr, &format!("[{}1]", "1,".repeat(40)), &[]).await;
    assert_eq!(ok.status, 202, "{ok:?}");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_while_reading() {
    let config = endpoint(
        json!({"listen": "127.0.0.1:0", "path": "/in/orders", "format": "json", "max_body_size": 100}),
    );
    let hub = start(vec![("orders", config)]).await;
    let chunked = |body: &str| {
        format!(
            "POST /in/orders HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
    };
    let big = format!("[{}1]", "1,".repeat(80));
    let a = exchange(hub.addr, chunked(&big).as_bytes()).await;
    assert_eq!(a.status, 413, "{a:?}");
    let small = exchange(hub.addr, chunked("[1, 2, 3]").as_bytes()).await;
    assert_eq!(small.status, 202, "{small:?}");
    assert_eq!(hub.messages().len(), 1);
}

#[tokio::test]
async fn a_wrong_content_type_is_415_with_the_accepted_ones() {
    let xml = endpoint(json!({"listen": "127.0.0.1:0", "path": "/in/notices", "format": "xml"}));
    let hub = start(vec![("orders", orders()), ("notices", xml)]).await;
    let a = post(hub.addr, "/in/orders", Some("text/plain"), &[], b"{}").await;
    assert_eq!(a.status, 415, "{a:?}");
    assert_eq!(a.body["accepted"], json!(["application/json"]));
    assert!(a.error().contains("text/plain"), "{a:?}");
    let none = post(hub.addr, "/in/orders", None, &[], b"{}").await;
    assert_eq!(none.status, 415, "{none:?}");
    let a = post(
        hub.addr,
        "/in/notices",
        Some("application/json"),
        &[],
        b"<a/>",
    )
    .await;
    assert_eq!(a.body["accepted"], json!(["application/xml", "text/xml"]));
    let ok = post(
        hub.addr,
        "/in/notices",
        Some("Text/XML; charset=UTF-8"),
        &[],
        b"<a>1</a>",
    )
    .await;
    assert_eq!(ok.status, 202, "{ok:?}");
}

#[tokio::test]
async fn other_methods_are_405_with_allow_post() {
    let hub = start(vec![("orders", orders())]).await;
    let a = exchange(
        hub.addr,
        b"GET /in/orders HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.header("allow"), Some("POST"));
    assert!(a.error().contains("GET"), "{a:?}");
    let a = exchange(
        hub.addr,
        b"PUT /in/orders HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 405, "{a:?}");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let hub = start(vec![("orders", orders())]).await;
    let a = post_json(hub.addr, "{}", &[]).await;
    assert_eq!(a.status, 202);
    let a = post(hub.addr, "/in/order", Some("application/json"), &[], b"{}").await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.error().contains("/in/order"), "{a:?}");
}

#[tokio::test]
async fn a_closed_journal_is_503_with_retry_after() {
    let hub = start(vec![("orders", orders())]).await;
    hub.journal.close().await;
    let a = post_json(hub.addr, "{}", &[]).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("5"));
    assert!(!a.error().is_empty());
}

#[tokio::test]
async fn a_full_journal_is_503_and_keeps_nothing_of_the_refused_message() {
    let options = JournalOptions {
        max_size: Some(256 * 1024),
    };
    let hub = start_with(vec![("orders", orders())], options).await;
    // Hex of pseudo-random bytes: the journal's packing cannot shrink it.
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut padding = || {
        (0..2 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{:016x}", state)
            })
            .collect::<String>()
    };
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 1_000, "the journal never filled up");
        let body = format!("{{\"n\": {accepted}, \"pad\": \"{}\"}}", padding());
        let a = post_json(hub.addr, &body, &[]).await;
        if a.status != 202 {
            break a;
        }
        accepted += 1;
    };
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(refused.error().contains("full"), "{refused:?}");
    assert!(accepted > 0);
    // Every 202 is in the journal, the refused message is not.
    assert_eq!(hub.messages().len(), accepted);
}

#[tokio::test]
async fn an_xml_entity_bomb_is_400_at_once() {
    let xml = endpoint(json!({"listen": "127.0.0.1:0", "path": "/in/notices", "format": "xml"}));
    let hub = start(vec![("notices", xml)]).await;
    let mut bomb =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        bomb.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    bomb.push_str("]>\n<lolz>&lol9;</lolz>\n");
    let started = Instant::now();
    let a = post(
        hub.addr,
        "/in/notices",
        Some("application/xml"),
        &[],
        bomb.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.error().contains("entity"), "{a:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(hub.messages().is_empty());
}

#[tokio::test]
async fn health_answers_ok_on_every_listener() {
    let hub = start(vec![("orders", orders())]).await;
    let a = exchange(
        hub.addr,
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"status": "ok"}));
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
}

#[tokio::test]
async fn endpoints_on_one_address_keep_their_own_source() {
    let invoices =
        endpoint(json!({"listen": "127.0.0.1:0", "path": "/in/invoices", "format": "csv"}));
    let hub = start(vec![("orders", orders()), ("invoices", invoices)]).await;
    assert_eq!(post_json(hub.addr, "{}", &[]).await.status, 202);
    let a = post(
        hub.addr,
        "/in/invoices",
        Some("text/csv"),
        &[],
        b"id,amount\n1,100\n",
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    let mut sources: Vec<String> = hub.messages().into_iter().map(|m| m.source).collect();
    sources.sort();
    assert_eq!(sources, ["invoices", "orders"]);
}

#[tokio::test]
async fn two_endpoints_with_one_path_are_refused() {
    let e = HttpServer::bind(
        "127.0.0.1:0",
        vec![("a".into(), orders()), ("b".into(), orders())],
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("\"a\" and \"b\" both use the path /in/orders"),
        "{e}"
    );
}

#[tokio::test]
async fn a_bind_error_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let e = HttpServer::bind(&address, vec![("orders".into(), orders())])
        .await
        .unwrap_err();
    assert!(
        e.starts_with(&format!("cannot listen on {address}: ")),
        "{e}"
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let hub = start(vec![("orders", orders())]).await;
    assert_eq!(post_json(hub.addr, "{}", &[]).await.status, 202);
    // An idle keep-alive connection must not hold the shutdown back.
    let mut idle = TcpStream::connect(hub.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    hub.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), hub.task)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(TcpStream::connect(hub.addr).await.is_err());
}

/// Reads until the server closes the connection; panics if it is still
/// open after `deadline`. Returns what arrived.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    match tokio::time::timeout(deadline, stream.read_to_end(&mut buf)).await {
        Ok(_) => buf,
        Err(_) => panic!(
            "the server did not close the connection within {deadline:?}; it sent {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
}

#[tokio::test]
async fn a_connection_that_stops_inside_its_head_is_closed_after_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let config = endpoint(json!({
        "listen": "127.0.0.1:0", "path": "/in/orders", "format": "json",
        "header_read_timeout": "500ms",
    }));
    let hub = start(vec![("orders", config)]).await;
    let opened = Instant::now();
    let mut slow = TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(b"POST /in/orders HTTP/1.1\r\nHost: t\r\nContent-Ty")
        .await
        .unwrap();
    // Other clients are served while it hangs.
    for _ in 0..3 {
        assert_eq!(post_json(hub.addr, "{}", &[]).await.status, 202);
    }
    let sent = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    let took = opened.elapsed();
    assert!(
        took >= timeout,
        "closed after {took:?}, before the timeout of {timeout:?}"
    );
    assert!(
        sent.is_empty(),
        "nothing was owed to it: {:?}",
        String::from_utf8_lossy(&sent)
    );
    // A connection kept alive after its request gets the same time for
    // the next head.
    let mut kept = TcpStream::connect(hub.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let sent = read_until_closed(&mut kept, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 200"));
    assert!(answered.elapsed() >= timeout - Duration::from_millis(50));
    assert_eq!(hub.messages().len(), 3);
}

#[tokio::test]
async fn shutdown_closes_idle_and_half_sent_connections_and_answers_the_request_in_flight() {
    // The default timeout (30 s): the shutdown must not wait for it.
    let mut hub = start(vec![("orders", orders())]).await;
    let mut half = TcpStream::connect(hub.addr).await.unwrap();
    half.write_all(b"POST /in/orders HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(hub.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A request whose body is asked for (100 Continue) is in flight.
    let body = br#"{"order": 1}"#;
    let mut busy = TcpStream::connect(hub.addr).await.unwrap();
    let head = format!(
        "POST /in/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    let n = busy.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));

    let stopping = Instant::now();
    hub.shutdown.cancel();
    for (name, stream) in [("idle", &mut idle), ("half-sent", &mut half)] {
        let rest = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(
            rest.is_empty(),
            "{name}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    busy.write_all(body).await.unwrap();
    let answer = parse(&read_until_closed(&mut busy, Duration::from_secs(10)).await);
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    tokio::time::timeout(Duration::from_secs(5), &mut hub.task)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert_eq!(hub.messages().len(), 1);
}

#[test]
fn endpoint_settings_are_checked_when_read() {
    let c = orders();
    assert_eq!(c.max_body_size, crate::common::ByteSize::mib(10));
    assert_eq!(c.max_depth, 64);
    assert_eq!(c.accepted_content_types(), ["application/json"]);
    assert_eq!(c.header_read_timeout.get(), Duration::from_secs(30));
    let bad = |v: Json| serde_json::from_value::<Config>(v).unwrap_err().to_string();
    let e = bad(json!({"listen": "127.0.0.1:0", "path": "/x", "format": "json", "max_body": 1}));
    assert!(e.contains("unknown field `max_body`"), "{e}");
    let e = bad(json!({"listen": "127.0.0.1:0", "path": "x", "format": "json"}));
    assert!(e.contains("must start with '/'"), "{e}");
    let e = bad(json!({"listen": "127.0.0.1:0", "path": "/health", "format": "json"}));
    assert!(e.contains("health"), "{e}");
    let e = bad(json!({"listen": "8080", "path": "/x", "format": "json"}));
    assert!(e.contains("not an address and port"), "{e}");
    let e = bad(json!({"listen": "127.0.0.1:0", "path": "/x", "format": "yaml"}));
    assert!(e.contains("\"yaml\" is not a format"), "{e}");
    let e = bad(
        json!({"listen": "127.0.0.1:0", "path": "/x", "format": "json", "max_body_size": "10 mb"}),
    );
    assert!(e.contains("\"10 mb\" is not a size"), "{e}");
    let e = bad(
        json!({"listen": "127.0.0.1:0", "path": "/x", "format": "json", "content_types": ["json"]}),
    );
    assert!(e.contains("not a media type"), "{e}");
    let e = bad(
        json!({"listen": "127.0.0.1:0", "path": "/x", "format": "json", "header_read_timeout": "0s"}),
    );
    assert!(e.contains("longer than 0"), "{e}");
    let c: Config = serde_json::from_value(json!({
        "listen": "127.0.0.1:0", "path": "/x", "format": "json", "content_types": ["Application/Vnd.Partner+JSON"]
    }))
    .unwrap();
    assert_eq!(c.accepted_content_types(), ["application/vnd.partner+json"]);
}
