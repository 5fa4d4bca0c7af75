//! Against real peers on the loopback: wiremock for HTTP, and a small
//! rustls server for TLS.

use std::time::Duration;

use nzela_core::runtime::{Destination, Outbound, SendOutcome};
use serde_json::{Value as Json, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{Config, HttpClient, parse_retry_after};

fn outbound(attempt: u32) -> Outbound {
    Outbound {
        delivery_id: "0193a1b2-0000-7000-8000-00000000d001".into(),
        message_id: "0193a1b2-0000-7000-8000-00000000a001".into(),
        route: "order_to_customs".into(),
        destination: "customs_api".into(),
        attempt,
        body: b"<Declaration/>".to_vec(),
        content_type: Some("application/xml".into()),
        extension: "xml".into(),
        business_key: Some("GB-2026-0001842".into()),
        correlation_id: None,
        received_at: 0,
    }
}

fn config(settings: Json) -> Config {
    serde_json::from_value(settings).unwrap()
}

async fn client(settings: Json) -> HttpClient {
    HttpClient::build("customs_api", &config(settings))
        .await
        .unwrap()
}

async fn client_for(server: &MockServer) -> HttpClient {
    client(json!({"url": format!("{}/api/declarations", server.uri()), "timeout": "5s"})).await
}

fn transient(outcome: SendOutcome) -> (String, Option<Duration>) {
    match outcome {
        SendOutcome::Transient { error, retry_after } => (error, retry_after),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

fn permanent(outcome: SendOutcome) -> String {
    match outcome {
        SendOutcome::Permanent { error } => error,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_2xx_answer_is_delivered_with_its_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/declarations"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_raw(r#"{"declaration": "EX-1"}"#, "application/json"),
        )
        .mount(&server)
        .await;
    let out = outbound(1);
    let outcome = client_for(&server).await.send(&out).await;
    let SendOutcome::Delivered {
        response: Some(reply),
    } = outcome
    else {
        panic!("not delivered with a reply: {outcome:?}");
    };
    assert_eq!(reply.body, br#"{"declaration": "EX-1"}"#);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert!(reply.headers.iter().any(|(n, _)| n == "content-type"));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.body, out.body);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/xml");
    assert_eq!(
        r.headers.get("idempotency-key").unwrap(),
        out.delivery_id.as_str()
    );
}

#[tokio::test]
async fn a_503_is_transient_and_every_attempt_carries_the_same_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance until 14:00"))
        .mount(&server)
        .await;
    let c = client_for(&server).await;
    for attempt in 1..=2 {
        let (error, retry_after) = transient(c.send(&outbound(attempt)).await);
        let expected = format!(
            "HTTP 503 Service Unavailable from {}/api/declarations: maintenance until 14:00",
            server.uri()
        );
        assert_eq!(error, expected);
        assert_eq!(retry_after, None);
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let keys: Vec<_> = requests
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(keys, [outbound(1).delivery_id, outbound(2).delivery_id]);
    assert_eq!(keys[0], keys[1]);
}

#[tokio::test]
async fn a_429_with_retry_after_is_transient_and_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;
    let (error, retry_after) = transient(client_for(&server).await.send(&outbound(1)).await);
    assert!(
        error.starts_with("HTTP 429 Too Many Requests from "),
        "{error}"
    );
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_408_and_5xx_are_transient_other_4xx_permanent() {
    for (status, is_transient) in [
        (408, true),
        (500, true),
        (502, true),
        (400, false),
        (401, false),
        (404, false),
        (422, false),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_string("{\"error\": \"nope\"}"))
            .mount(&server)
            .await;
        let outcome = client_for(&server).await.send(&outbound(1)).await;
        match (is_transient, outcome) {
            (true, SendOutcome::Transient { error, .. })
            | (false, SendOutcome::Permanent { error }) => {
                assert!(error.starts_with(&format!("HTTP {status} ")), "{error}");
            }
            (_, other) => panic!("HTTP {status}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_400_is_permanent_and_names_the_status_and_the_answer() {
    let server = MockServer::start().await;
    let long = format!(
        "{{\"error\": \"missing Exporter_code\", \"detail\": \"{}\"}}",
        "x".repeat(1000)
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(long))
        .mount(&server)
        .await;
    let error = permanent(client_for(&server).await.send(&outbound(1)).await);
    let prefix = format!(
        "HTTP 400 Bad Request from {}/api/declarations: ",
        server.uri()
    );
    assert!(error.starts_with(&prefix), "{error}");
    assert!(error.contains("missing Exporter_code"), "{error}");
    assert_eq!(
        error[prefix.len()..].chars().count(),
        301,
        "300 characters and an ellipsis: {error}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let c = client(json!({"url": format!("http://127.0.0.1:{port}/api"), "timeout": "5s"})).await;
    let (error, _) = transient(c.send(&outbound(1)).await);
    assert!(
        error.starts_with(&format!("cannot connect to http://127.0.0.1:{port}/api: ")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let c = client(json!({"url": format!("{}/slow", server.uri()), "timeout": "300ms"})).await;
    let started = std::time::Instant::now();
    let (error, _) = transient(c.send(&outbound(1)).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        error,
        format!("no answer from {}/slow within 300ms", server.uri())
    );
}

#[tokio::test]
async fn the_url_and_headers_are_rendered_from_the_delivery() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/declarations/GB-2026-0001842"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let c = client(json!({
        "url": format!("{}/api/declarations/{{{{ business_key }}}}?try={{{{ attempt }}}}", server.uri()),
        "method": "put",
        "headers": {"Authorization": "Bearer s3cret", "X-Route": "{{ route }}/{{ destination }}"},
        "content_type": "application/vnd.asycuda+xml",
        "idempotency_header": "X-Reference-Id",
    }))
    .await;
    let outcome = c.send(&outbound(3)).await;
    assert!(
        matches!(outcome, SendOutcome::Delivered { .. }),
        "{outcome:?}"
    );
    let requests = server.received_requests().await.unwrap();
    let r = &requests[0];
    assert_eq!(r.url.query(), Some("try=3"));
    assert_eq!(r.headers.get("authorization").unwrap(), "Bearer s3cret");
    assert_eq!(
        r.headers.get("x-route").unwrap(),
        "order_to_customs/customs_api"
    );
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/vnd.asycuda+xml"
    );
    assert_eq!(
        r.headers.get("x-reference-id").unwrap(),
        outbound(1).delivery_id.as_str()
    );
    assert!(r.headers.get("idempotency-key").is_none());

    // Without a business key the URL cannot be made: that never gets better.
    let mut no_key = outbound(1);
    no_key.business_key = None;
    let error = permanent(c.send(&no_key).await);
    assert!(error.contains("cannot render `url`"), "{error}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn only_redirects_that_keep_the_method_are_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("Location", format!("{}/new", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/new"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(path("/moved"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", "/elsewhere"))
        .mount(&server)
        .await;
    let c = client(json!({"url": format!("{}/old", server.uri())})).await;
    assert!(matches!(
        c.send(&outbound(1)).await,
        SendOutcome::Delivered { .. }
    ));
    let c = client(json!({"url": format!("{}/moved", server.uri())})).await;
    let error = permanent(c.send(&outbound(1)).await);
    assert!(error.starts_with("HTTP 302 Found from "), "{error}");
    assert!(
        error.contains("redirect to /elsewhere not followed"),
        "{error}"
    );
}

#[test]
fn retry_after_is_read_as_seconds_or_as_an_http_date() {
    assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&later)
        .unwrap();
    let wait = parse_retry_after(&date).unwrap();
    assert!(
        wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
        "{wait:?} from {date}"
    );
    assert_eq!(
        parse_retry_after("Thu, 01 Jan 1970 00:00:01 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[tokio::test]
async fn settings_are_checked_when_read_and_built() {
    let c = config(json!({"url": "https://customs.example/api"}));
    assert_eq!(c.method, "POST");
    assert_eq!(c.timeout.get(), Duration::from_secs(30));
    assert_eq!(c.idempotency_header, "Idempotency-Key");
    let d = c.dispatch_settings("customs_api");
    assert_eq!(d.name, "customs_api");
    assert_eq!(d.concurrency, 8);
    assert_eq!(d.attempt_timeout, Duration::from_secs(35));
    assert_eq!(d.retry.max_attempts, 10);
    assert_eq!(d.reply_to, None);

    let bad = |v: Json| serde_json::from_value::<Config>(v).unwrap_err().to_string();
    let e = bad(json!({"url": "https://x/{{ business_key"}));
    assert!(
        e.starts_with("`url` is not a valid template: syntax error"),
        "{e}"
    );
    let e = bad(json!({"url": "https://x/{{ busines_key }}"}));
    assert!(e.contains("`url`") && e.contains("undefined"), "{e}");
    let e = bad(json!({"url": "ftp://x/"}));
    assert!(e.contains("ftp URL"), "{e}");
    let e = bad(json!({"url": "https://x/", "headers": {"X-Key": "{% if %}"}}));
    assert!(
        e.starts_with("`headers.X-Key` is not a valid template"),
        "{e}"
    );
    let e = bad(json!({"url": "https://x/", "headers": {"Bad Name": "v"}}));
    assert!(e.contains("not a header name"), "{e}");
    let e = bad(json!({"url": "https://x/", "headers": {"Content-Type": "text/plain"}}));
    assert!(e.contains("content_type"), "{e}");
    let e = bad(json!({"url": "https://x/", "method": "PO ST"}));
    assert!(e.contains("not an HTTP method"), "{e}");
    let e = bad(json!({"url": "https://x/", "timout": "5s"}));
    assert!(e.contains("unknown field `timout`"), "{e}");
    let e = bad(json!({"url": "https://x/", "tls": {"ca": "x.pem"}}));
    assert!(e.contains("unknown field `ca`"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let c = config(json!({"url": "https://x/", "tls": {"ca_file": missing}}));
    let e = HttpClient::build("customs_api", &c).await.unwrap_err();
    assert!(
        e.starts_with("`tls.ca_file`: cannot read ") && e.contains("missing.pem"),
        "{e}"
    );
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let c = config(json!({"url": "https://x/", "tls": {"ca_file": not_pem}}));
    let e = HttpClient::build("customs_api", &c).await.unwrap_err();
    assert!(e.contains("ca.pem"), "{e}");
    let c = config(json!({"url": "https://x/", "tls": {"insecure_skip_verify": true}}));
    assert!(HttpClient::build("customs_api", &c).await.is_ok());
}

// --- TLS -----------------------------------------------------------------

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http_client/testdata");

/// A TLS server on the loopback with a certificate from the test CA,
/// answering `200 ok` to each request, on a thread of its own.
fn tls_peer() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(format!("{TESTDATA}/server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{TESTDATA}/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(16) {
            let Ok(tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // Read the head and the body it announces; a client that
            // refuses the certificate ends the handshake here.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break true;
                    }
                }
            };
            if complete {
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_certified_by_the_configured_ca_is_trusted() {
    let addr = tls_peer();
    let c = client(json!({"url": format!("https://127.0.0.1:{}/api", addr.port()), "tls": {"ca_file": format!("{TESTDATA}/ca.pem")}})).await;
    match c.send(&outbound(1)).await {
        SendOutcome::Delivered {
            response: Some(reply),
        } => assert_eq!(reply.body, b"ok"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_peer_certified_by_an_unknown_ca_is_refused_unless_told_otherwise() {
    let addr = tls_peer();
    let url = format!("https://127.0.0.1:{}/api", addr.port());
    let c = client(json!({"url": url, "timeout": "5s"})).await;
    let (error, _) = transient(c.send(&outbound(1)).await);
    assert!(
        error.starts_with(&format!("cannot connect to {url}: ")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let c = client(json!({"url": url, "tls": {"insecure_skip_verify": true}})).await;
    assert!(matches!(
        c.send(&outbound(1)).await,
        SendOutcome::Delivered { .. }
    ));
}
