//! Outbound HTTP: each attempt at a delivery is one request.
//!
//! The delivery id goes in the idempotency header on every attempt, so a
//! peer that saw the first attempt (whose answer was lost) recognises the
//! retry. The answer is classified for the dispatcher:
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | delivered, with the answer as a [`Reply`] |
//! | 408, 429, 5xx | transient, honouring `Retry-After` (seconds or an HTTP date) |
//! | other 4xx, a 3xx not followed | permanent |
//! | cannot connect, timeout, connection broken | transient |
//! | a template that cannot render for this delivery | permanent |
//!
//! Only 307 and 308 redirects are followed: they keep the method and body,
//! whereas following a 301/302/303 would turn a `POST` into a `GET` that
//! "succeeds" without delivering anything.

mod config;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use nzela_core::runtime::{BoxFuture, Destination, Outbound, Reply, SendOutcome};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Certificate, Method, Response, StatusCode, Url, redirect};

pub use config::{Config, TlsConfig};

use crate::template::Templates;

/// Longest wait to establish a connection (within `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer kept as a reply; a larger 2xx answer still counts as
/// delivered, without its reply.
const MAX_REPLY: usize = 10 * 1024 * 1024;

/// How much of an error answer is read, and how many characters of it go
/// into the error text.
const MAX_ERROR_BODY: usize = 64 * 1024;
const ERROR_EXCERPT_CHARS: usize = 300;

const MAX_REDIRECTS: usize = 5;

/// A built HTTP destination.
pub struct HttpClient {
    name: String,
    client: reqwest::Client,
    method: Method,
    templates: Templates,
    /// Header names, each rendered from the template `headers.<name>`.
    headers: Vec<(HeaderName, String)>,
    content_type: Option<HeaderValue>,
    idempotency_header: HeaderName,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("name", &self.name)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the destination `name`: compiles its templates, reads its CA
    /// file, and makes its connection pool.
    pub async fn build(name: &str, config: &Config) -> Result<HttpClient, String> {
        crate::tls::init();
        let templates = config.templates()?;
        let method = Method::from_bytes(config.method.as_bytes())
            .map_err(|_| format!("`method`: \"{}\" is not an HTTP method", config.method))?;
        let headers = config
            .headers
            .keys()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map(|h| (h, config::header_template_name(n)))
                    .map_err(|_| format!("`headers`: \"{n}\" is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let content_type = config
            .content_type
            .as_deref()
            .map(|c| {
                HeaderValue::from_str(c)
                    .map_err(|_| format!("`content_type`: \"{c}\" is not a header value"))
            })
            .transpose()?;
        let idempotency_header = HeaderName::from_bytes(config.idempotency_header.as_bytes())
            .map_err(|_| {
                format!(
                    "`idempotency_header`: \"{}\" is not a header name",
                    config.idempotency_header
                )
            })?;
        let timeout = config.timeout.get();

        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .redirect(redirect_policy())
            .user_agent(concat!("nzela/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &config.tls {
            if let Some(path) = &tls.ca_file {
                let pem = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("`tls.ca_file`: cannot read {}: {e}", path.display()))?;
                builder = builder.tls_certs_merge(certificates(path, &pem)?);
            }
            if tls.insecure_skip_verify {
                tracing::warn!(
                    destination = name,
                    "tls.insecure_skip_verify is set: server certificates are not checked"
                );
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {}", error_chain(&e)))?;
        Ok(HttpClient {
            name: name.to_owned(),
            client,
            method,
            templates,
            headers,
            content_type,
            idempotency_header,
            timeout,
        })
    }

    async fn attempt(&self, out: &Outbound) -> SendOutcome {
        let url = match self.templates.render("url", out) {
            Ok(u) => u,
            Err(error) => return SendOutcome::Permanent { error },
        };
        let url = match Url::parse(&url) {
            Ok(u) => u,
            Err(e) => {
                return SendOutcome::Permanent {
                    error: format!("the url rendered as \"{url}\", which is not a URL: {e}"),
                };
            }
        };
        let shown = shown_url(&url);
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, template) in &self.headers {
            let value = match self.templates.render(template, out) {
                Ok(v) => v,
                Err(error) => return SendOutcome::Permanent { error },
            };
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(name.clone(), v);
                }
                Err(_) => {
                    return SendOutcome::Permanent {
                        error: format!(
                            "header {name} rendered as a value that cannot be sent (a line break or control character)"
                        ),
                    };
                }
            }
        }
        let content_type = self.content_type.clone().or_else(|| {
            out.content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
        });
        if let Some(c) = content_type {
            headers.insert(header::CONTENT_TYPE, c);
        }
        match HeaderValue::from_str(&out.delivery_id) {
            Ok(v) => {
                headers.insert(self.idempotency_header.clone(), v);
            }
            Err(_) => {
                return SendOutcome::Permanent {
                    error: format!(
                        "the delivery id \"{}\" cannot be sent as a header",
                        out.delivery_id
                    ),
                };
            }
        }
        let request = self
            .client
            .request(self.method.clone(), url)
            .headers(headers)
            .body(out.body.clone())
            .timeout(self.timeout);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return self.failed(&e, &shown),
        };
        self.classify(response, &shown, out).await
    }

    /// What an answer means for the delivery.
    async fn classify(&self, response: Response, shown: &str, out: &Outbound) -> SendOutcome {
        let status = response.status();
        if status.is_success() {
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let headers = reply_headers(response.headers());
            return match read_capped(response, MAX_REPLY).await {
                Ok(Body::Whole(body)) => SendOutcome::Delivered {
                    response: Some(Reply {
                        body,
                        content_type,
                        headers,
                    }),
                },
                Ok(Body::Cut(_)) => {
                    tracing::warn!(
                        message_id = %out.message_id, route = %out.route, destination = %self.name,
                        delivery_id = %out.delivery_id, "the answer is over {MAX_REPLY} bytes: delivered, but the answer is not kept"
                    );
                    SendOutcome::Delivered { response: None }
                }
                // The peer said yes, but its answer broke off: sending again
                // is safe (same idempotency key) and recovers the answer.
                Err(e) => self.failed(&e, shown),
            };
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let excerpt = match read_capped(response, MAX_ERROR_BODY).await {
            Ok(Body::Whole(b) | Body::Cut(b)) => excerpt(&b),
            Err(_) => String::new(),
        };
        let mut error = format!("HTTP {status} from {shown}");
        if status.is_redirection() {
            let to = location.as_deref().unwrap_or("nowhere");
            error.push_str(&format!(
                ": redirect to {to} not followed (only 307 and 308 keep the method and body)"
            ));
        } else if !excerpt.is_empty() {
            error.push_str(": ");
            error.push_str(&excerpt);
        }
        if is_transient(status) {
            SendOutcome::Transient { error, retry_after }
        } else {
            SendOutcome::Permanent { error }
        }
    }

    /// A request that got no (whole) answer.
    fn failed(&self, e: &reqwest::Error, shown: &str) -> SendOutcome {
        let chain = error_chain(e);
        if e.is_timeout() {
            SendOutcome::Transient {
                error: format!("no answer from {shown} within {:?}", self.timeout),
                retry_after: None,
            }
        } else if e.is_connect() {
            // The innermost cause says it all ("Connection refused", a
            // name that does not resolve, a certificate not trusted).
            SendOutcome::Transient {
                error: format!("cannot connect to {shown}: {}", root_cause(e)),
                retry_after: None,
            }
        } else if e.is_redirect() || e.is_builder() {
            SendOutcome::Permanent {
                error: format!("request to {shown} failed: {chain}"),
            }
        } else {
            SendOutcome::Transient {
                error: format!("request to {shown} failed: {chain}"),
                retry_after: None,
            }
        }
    }
}

impl Destination for HttpClient {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(self.attempt(out))
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn redirect_policy() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if matches!(
            attempt.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        ) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// The URL as it may appear in errors and logs: without credentials, query
/// or fragment, where tokens tend to be.
fn shown_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    static PARSER: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    let at = PARSER.parse_timestamp(value).ok()?;
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

enum Body {
    Whole(Vec<u8>),
    /// The first bytes of a body longer than the cap.
    Cut(Vec<u8>),
}

async fn read_capped(mut response: Response, cap: usize) -> Result<Body, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if buf.len() + chunk.len() > cap {
            let room = cap - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            return Ok(Body::Cut(buf));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(buf))
}

/// The first characters of an error answer, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(ERROR_EXCERPT_CHARS) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// The answer's headers kept with a reply (cookies are not).
fn reply_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| *n != header::SET_COOKIE)
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// An error with its causes: reqwest's own text is terse ("error sending
/// request"); the cause says what happened ("connection refused"). URLs
/// are left out: the caller names the URL without its secrets.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The certificates of the PEM file `path` holds (`pem`), or why there are
/// none.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<Certificate>, String> {
    let certs = Certificate::from_pem_bundle(pem).map_err(|e| {
        format!(
            "`tls.ca_file`: {} is not a PEM certificate file: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "`tls.ca_file`: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// What building the destination would find wrong in its files, without
/// building it (for `nzela check`): the `tls.ca_file` must be a readable
/// PEM file with at least one certificate.
pub fn check_files(config: &Config) -> Result<(), String> {
    if let Some(path) = config.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        let pem = std::fs::read(path)
            .map_err(|e| format!("`tls.ca_file`: cannot read {}: {e}", path.display()))?;
        certificates(path, &pem)?;
    }
    Ok(())
}
