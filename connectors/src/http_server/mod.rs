//! Inbound HTTP: endpoints that partners `POST` messages to.
//!
//! One [`HttpServer`] serves one listening address and every endpoint
//! configured on it, plus `GET /health`. For each request, in order:
//!
//! 1. the path names an endpoint (404), the method is `POST` (405), the
//!    `Content-Type` is one the endpoint accepts (415);
//! 2. the body is read within the size limit — `Content-Length` is checked
//!    before reading, the bytes while reading, so a chunked body cannot
//!    slip past (413);
//! 3. the body is decoded in the endpoint's format, which both refuses a
//!    bad document at the door and yields the business key (400, with the
//!    line and column);
//! 4. the message is handed to [`Intake::accept`], and only once it is
//!    committed does the sender get `202 {"message_id", "duplicate"}`. If
//!    the journal cannot take it, 503 with `Retry-After`: nothing is kept,
//!    the sender must send again.
//!
//! Every error answer is a JSON object whose `error` says what was wrong.
//!
//! Connections are HTTP/1.1, kept alive between requests. A client gets
//! `header_read_timeout` to send each request's line and headers (on a new
//! connection, or on a kept-alive one between requests), then is
//! disconnected: a connection that sends half a request holds neither a
//! task nor the shutdown. On shutdown, connections without a request in
//! flight are closed at once; the others finish their request, get their
//! answer and are closed.

mod config;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming as IncomingBody;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use nzela_core::codec::{Codec, DecodeError, Limits, Position};
use nzela_core::runtime::{CancellationToken, Incoming, Intake, IntakeError};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use config::Config;

use crate::common::{BusinessKey, ByteSize, check_message, limits};

/// Answered on every listening address.
pub(crate) const HEALTH_PATH: &str = "/health";

/// Request headers kept with the message.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-request-id",
    "x-correlation-id",
    "idempotency-key",
];

/// Longest wait for a request's body: a client that stops sending must not
/// hold a connection (and its buffer) for ever.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the address to resolve and bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies up to this size are decoded on the async worker; larger ones on
/// the blocking pool. Decoding costs about 4 µs per KiB of JSON and 17 µs
/// per KiB of XML (release build): up to 4 KiB (a typical order is 1–4 KiB)
/// a task holds its worker for well under 100 µs, and a hop to another
/// thread would cost about as much as it saves. A 10 MiB XML document
/// would hold a worker for over 100 ms: that goes to the blocking pool.
const INLINE_DECODE_MAX: usize = 4 * 1024;

/// How long a client is asked to wait before sending again after a 503.
const RETRY_AFTER_SECS: &str = "5";

/// The pause after a failed `accept` that is not about one connection
/// (out of file descriptors, ...), so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// The server of one listening address and its endpoints.
pub struct HttpServer {
    listener: TcpListener,
    address: SocketAddr,
    endpoints: HashMap<String, Endpoint>,
    header_read_timeout: Duration,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("address", &self.address)
            .field("paths", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An endpoint, ready to serve.
struct Endpoint {
    source: String,
    codec: Codec,
    limits: Limits,
    max_body_size: ByteSize,
    accepted: Vec<String>,
    business_key: Option<BusinessKey>,
}

struct Shared {
    endpoints: HashMap<String, Endpoint>,
    intake: Intake,
}

impl HttpServer {
    /// Binds `address` for `endpoints` (source name and settings). Fails
    /// if two endpoints share a path, or if the address cannot be bound.
    pub async fn bind(
        address: &str,
        endpoints: Vec<(String, Config)>,
    ) -> Result<HttpServer, String> {
        let mut by_path: HashMap<String, Endpoint> = HashMap::new();
        let mut header_read_timeout: Option<Duration> = None;
        for (source, config) in endpoints {
            if let Some(other) = by_path.get(&config.path) {
                return Err(format!(
                    "sources \"{}\" and \"{source}\" both use the path {} on {address}",
                    other.source, config.path
                ));
            }
            let timeout = config.header_read_timeout.get();
            header_read_timeout = Some(header_read_timeout.map_or(timeout, |t| t.min(timeout)));
            let endpoint = Endpoint {
                codec: config.format.codec(),
                limits: limits(config.max_body_size, config.max_depth),
                max_body_size: config.max_body_size,
                accepted: config.accepted_content_types(),
                business_key: config.business_key.clone(),
                source,
            };
            by_path.insert(config.path, endpoint);
        }
        let listener = tokio::time::timeout(BIND_TIMEOUT, TcpListener::bind(address))
            .await
            .map_err(|_| format!("cannot listen on {address}: the address did not resolve within {BIND_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        Ok(HttpServer {
            listener,
            address,
            endpoints: by_path,
            header_read_timeout: header_read_timeout
                .unwrap_or_else(|| Config::DEFAULT_HEADER_READ_TIMEOUT.get()),
        })
    }

    /// The address actually bound (with the port the system chose for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown`; then stops accepting connections, closes
    /// those without a request in flight, lets the others finish their
    /// request and returns.
    ///
    /// Every connection is a task of the returned future: dropping it (a
    /// shutdown that took too long) closes them all.
    pub async fn run(self, intake: Intake, shutdown: CancellationToken) {
        let address = self.address;
        let shared = Arc::new(Shared {
            endpoints: self.endpoints,
            intake,
        });
        // One fallback rather than axum routes: configured paths are
        // literal, and axum would read `{...}` in them as captures.
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let connection = serve_connection(http.clone(), stream, app.clone(), shutdown.clone());
                        connections.spawn(connection);
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) => {
                        tracing::error!(%address, error = %e, "cannot accept connections");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        }
                    }
                },
                // Reaps the connections that have ended.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(self.listener);
        while connections.join_next().await.is_some() {}
        tracing::info!(%address, "stopped listening");
    }
}

/// Serves one connection until it ends or, on `shutdown`, until its request
/// in flight (if any) has been answered.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = {
        let in_flight = in_flight.clone();
        let app = TowerToHyperService::new(app);
        hyper::service::service_fn(move |request: hyper::Request<IncomingBody>| {
            let guard = InFlight::enter(&in_flight);
            let answer = hyper::service::Service::call(&app, request);
            async move {
                let answer = answer.await;
                drop(guard);
                answer
            }
        })
    };
    let mut connection = pin!(http.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                // A client that went away, sent no valid head, or took
                // longer than `header_read_timeout` to send it.
                tracing::debug!(error = %e, "connection closed");
            }
            return;
        }
        () = shutdown.cancelled() => {}
    }
    // Between requests, or part-way through a request's head: nothing was
    // taken from the client, nothing is owed to it.
    if in_flight.load(Ordering::Acquire) == 0 {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Counts a request from the moment its head is read until its answer is
/// ready.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An `accept` error about one connection (the client gave up before it
/// was taken), after which the listener goes on.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == HEALTH_PATH {
        return match *request.method() {
            Method::GET | Method::HEAD => {
                (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
            }
            _ => Refusal::method_not_allowed(request.method(), &path, "GET").respond(None),
        };
    }
    let Some(endpoint) = shared.endpoints.get(&path) else {
        let error = format!("no endpoint at {path}");
        return Refusal::new(StatusCode::NOT_FOUND, json!({ "error": error })).respond(None);
    };
    if request.method() != Method::POST {
        return Refusal::method_not_allowed(request.method(), &path, "POST")
            .respond(Some(&endpoint.source));
    }
    match receive(&shared.intake, endpoint, request).await {
        Ok(accepted) => accepted,
        Err(refusal) => refusal.respond(Some(&endpoint.source)),
    }
}

/// Steps 1 (content type) to 4 of the module description, for a `POST`
/// on an endpoint.
async fn receive(
    intake: &Intake,
    endpoint: &Endpoint,
    request: Request,
) -> Result<Response, Refusal> {
    // The sender waits for the answer from here on.
    let _waiting = intake.sender_waiting();
    let (parts, body) = request.into_parts();
    let content_type = check_content_type(endpoint, &parts.headers)?;
    let body = read_limited(endpoint, &parts.headers, body).await?;
    let (body, business_key) = decode_body(endpoint, body).await?;
    let incoming = Incoming {
        source: endpoint.source.clone(),
        body,
        content_type: Some(content_type),
        headers: kept_headers(&parts.headers),
        correlation_id: header_text(&parts.headers, "x-correlation-id"),
        idempotency_key: header_text(&parts.headers, "idempotency-key"),
        input_key: None,
        business_key,
    };
    match intake.accept(incoming).await {
        Ok(accepted) => {
            let source = endpoint.source.as_str();
            tracing::debug!(message_id = %accepted.message_id, source, duplicate = accepted.duplicate, "accepted");
            let body = json!({"message_id": accepted.message_id, "duplicate": accepted.duplicate});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Err(e @ (IntakeError::Unavailable(_) | IntakeError::ShuttingDown)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        )
        .with_header(header::RETRY_AFTER, RETRY_AFTER_SECS)),
    }
}

/// The request's `Content-Type`, if the endpoint accepts it.
fn check_content_type(endpoint: &Endpoint, headers: &HeaderMap) -> Result<String, Refusal> {
    let error = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        Some(Ok(v)) => {
            let media_type = v
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if endpoint.accepted.contains(&media_type) {
                return Ok(v.to_owned());
            }
            format!("Content-Type \"{v}\" is not accepted here")
        }
        Some(Err(_)) => "the Content-Type is not text".to_owned(),
        None => "the request has no Content-Type".to_owned(),
    };
    let accepted = &endpoint.accepted;
    Err(Refusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        json!({"error": error, "accepted": accepted}),
    ))
}

/// The body, refused if its declared length or the bytes that arrive pass
/// the endpoint's limit.
async fn read_limited(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Refusal> {
    let limit = endpoint.max_body_size;
    let too_large = || {
        let error = format!("the body is over the limit of {limit}");
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": error }))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.as_u64()) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, read_body(body, limit.as_usize())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(BodyError::TooLarge)) => Err(too_large()),
        Ok(Err(BodyError::Read(e))) => {
            let error = format!("cannot read the body: {e}");
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                json!({ "error": error }),
            ))
        }
        Err(_) => {
            let error = format!("the body did not arrive within {BODY_TIMEOUT:?}");
            Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                json!({ "error": error }),
            ))
        }
    }
}

/// Decodes the body in the endpoint's format (on the blocking pool when it
/// is large); returns it with its business key.
async fn decode_body(
    endpoint: &Endpoint,
    body: Vec<u8>,
) -> Result<(Vec<u8>, Option<String>), Refusal> {
    let (body, decoded) = if body.len() <= INLINE_DECODE_MAX {
        let r = check_message(
            &endpoint.codec,
            &endpoint.limits,
            endpoint.business_key.as_ref(),
            &body,
        );
        (body, r)
    } else {
        let codec = endpoint.codec.clone();
        let limits = endpoint.limits;
        let key = endpoint.business_key.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = check_message(&codec, &limits, key.as_ref(), &body);
            (body, r)
        });
        task.await.map_err(|e| {
            tracing::error!(source = %endpoint.source, error = %e, "decoding a request body failed unexpectedly");
            let error = "internal error while decoding the body";
            Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error }))
        })?
    };
    match decoded {
        Ok(key) => Ok((body, key)),
        Err(e) => Err(Refusal::new(StatusCode::BAD_REQUEST, decode_error_body(&e))),
    }
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads the body, stopping as soon as it passes `limit`.
async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::with_capacity(body.size_hint().lower().min(limit as u64) as usize);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// `{"error": "invalid JSON at line 1, column 12: ...", "line": 1, "column": 12}`.
fn decode_error_body(e: &DecodeError) -> serde_json::Value {
    match e.position {
        Some(Position::LineColumn { line, column }) => {
            json!({"error": e.to_string(), "line": line, "column": column})
        }
        Some(Position::Record { record, line }) => {
            json!({"error": e.to_string(), "record": record, "line": line})
        }
        None => json!({"error": e.to_string()}),
    }
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| header_text(headers, name).map(|v| ((*name).to_owned(), v)))
        .collect()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// An error answer: a status, a JSON body whose `error` says what was
/// wrong, and the header that goes with some of them.
struct Refusal {
    status: StatusCode,
    body: serde_json::Value,
    header: Option<(HeaderName, &'static str)>,
}

impl Refusal {
    fn new(status: StatusCode, body: serde_json::Value) -> Refusal {
        Refusal {
            status,
            body,
            header: None,
        }
    }

    fn with_header(mut self, name: HeaderName, value: &'static str) -> Refusal {
        self.header = Some((name, value));
        self
    }

    fn method_not_allowed(method: &Method, path: &str, allowed: &'static str) -> Refusal {
        let error = format!("{method} is not allowed on {path}: use {allowed}");
        Refusal::new(StatusCode::METHOD_NOT_ALLOWED, json!({ "error": error }))
            .with_header(header::ALLOW, allowed)
    }

    /// The answer, logged with its reason.
    fn respond(self, source: Option<&str>) -> Response {
        let status = self.status.as_u16();
        let reason = self
            .body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or_default();
        match source {
            Some(source) => tracing::warn!(source, status, reason, "request refused"),
            None => tracing::warn!(status, reason, "request refused"),
        }
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some((name, value)) = self.header {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}
