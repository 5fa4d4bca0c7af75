//! What a delivery becomes before the journal sees it: its body (a
//! structured CloudEvent's `data`), its headers, its keys.
//!
//! Headers kept, in this order, when present: `message_id`,
//! `correlation_id`, `content_type`, `content_encoding`, `type`,
//! `timestamp` (RFC 3339), `reply_to`, `app_id`, `user_id`, `exchange`,
//! `routing_key`, `redelivered`; then the application headers by name.
//!
//! CloudEvents (AMQP protocol binding):
//!
//! - binary mode: application headers named `cloudEvents:NAME` (or
//!   `cloudEvents_NAME`) are the event's attributes; they are kept as
//!   `ce-NAME`. The body is the event's data.
//! - structured mode: a `content_type` of `application/cloudevents+json`
//!   means the body is the whole event as JSON; its `data` (or
//!   `data_base64`) becomes the body, `datacontenttype` the content type,
//!   and every other member a `ce-NAME` header.
//!
//! The event's `id` is the message's idempotency key; otherwise the AMQP
//! `message_id` is.
//!
//! A body over the source's `max_body_size` is refused before anything
//! reads it (a structured CloudEvent is not parsed), and is not kept: the
//! message is its headers and the reason only. The broker's dead-letter
//! queue, when the queue has one, holds the whole message.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use nzela_core::runtime::Incoming;

/// The parts of a delivery that make a message.
pub(crate) struct Received<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub redelivered: bool,
    pub properties: &'a BasicProperties,
    pub body: Vec<u8>,
}

const STRUCTURED: &str = "application/cloudevents+json";

/// The message for `source`, and the reason to refuse it: its body is over
/// `max_body` bytes (the message then has no body), or it is a structured
/// CloudEvent that cannot be read (the message is then as received).
pub(crate) fn incoming(
    source: &str,
    r: Received<'_>,
    max_body: usize,
) -> (Incoming, Option<String>) {
    let p = r.properties;
    let size = r.body.len();
    let (body, oversize) = if size > max_body {
        (Vec::new(), Some(over_limit(size, max_body)))
    } else {
        (r.body, None)
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut push = |name: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            headers.push((name.to_owned(), v));
        }
    };
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    push("message_id", text(p.message_id()));
    push("correlation_id", text(p.correlation_id()));
    push("content_type", text(p.content_type()));
    push("content_encoding", text(p.content_encoding()));
    push("type", text(p.kind()));
    push("timestamp", p.timestamp().and_then(timestamp_text));
    push("reply_to", text(p.reply_to()));
    push("app_id", text(p.app_id()));
    push("user_id", text(p.user_id()));
    push("exchange", Some(r.exchange.to_owned()));
    push("routing_key", Some(r.routing_key.to_owned()));
    push("redelivered", r.redelivered.then(|| "true".to_owned()));
    if let Some(table) = p.headers() {
        for (name, value) in table {
            let name = name.as_str();
            let name = match name
                .strip_prefix("cloudEvents:")
                .or_else(|| name.strip_prefix("cloudEvents_"))
            {
                Some(attribute) => format!("ce-{attribute}"),
                None => name.to_owned(),
            };
            headers.push((name, value_text(value)));
        }
    }
    let content_type = text(p.content_type());
    let mut message = Incoming {
        source: source.to_owned(),
        body,
        content_type,
        headers,
        correlation_id: text(p.correlation_id()).filter(|c| !c.is_empty()),
        idempotency_key: None,
        input_key: None,
        business_key: None,
    };
    let structured = message
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case(STRUCTURED));
    let refused = match oversize {
        Some(reason) => Some(reason),
        None if structured => unwrap_structured(&mut message).err(),
        None => None,
    };
    message.idempotency_key = key(&message, p);
    (message, refused)
}

/// The CloudEvent `id` when there is one, else the AMQP `message_id`.
fn key(message: &Incoming, p: &BasicProperties) -> Option<String> {
    message
        .headers
        .iter()
        .find(|(n, _)| n == "ce-id")
        .map(|(_, v)| v.clone())
        .or_else(|| p.message_id().as_ref().map(|s| s.as_str().to_owned()))
        .filter(|k| !k.is_empty())
}

/// Why a body of `size` bytes is refused; the body is not kept.
pub(crate) fn over_limit(size: usize, max: usize) -> String {
    format!(
        "the body ({size} bytes) is over the limit of {max} bytes; it is not kept in the journal"
    )
}

/// Replaces a structured CloudEvent by its data, its attributes becoming
/// `ce-` headers.
fn unwrap_structured(message: &mut Incoming) -> Result<(), String> {
    let event: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&message.body)
            .map_err(|e| format!("the body is not a structured CloudEvent (a JSON object): {e}"))?;
    let mut body = None;
    let mut content_type = None;
    for (name, value) in &event {
        match name.as_str() {
            "data" => {
                body = Some(match value {
                    serde_json::Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                });
            }
            "data_base64" => {
                let text = value
                    .as_str()
                    .ok_or("the CloudEvent's data_base64 is not a string")?;
                body = Some(
                    base64_decode(text)
                        .ok_or("the CloudEvent's data_base64 is not valid base64")?,
                );
            }
            _ => {
                let v = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if name == "datacontenttype" {
                    content_type = Some(v.clone());
                }
                message.headers.push((format!("ce-{name}"), v));
            }
        }
    }
    message.body = body.ok_or("the CloudEvent has no data")?;
    message.content_type = content_type.or(Some("application/json".to_owned()));
    Ok(())
}

/// An AMQP timestamp (seconds since the epoch) in RFC 3339.
fn timestamp_text(secs: u64) -> Option<String> {
    let secs = i64::try_from(secs).ok()?;
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.to_string())
}

/// An application header's value as text; tables and arrays as JSON.
fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Timestamp(t) => timestamp_text(*t).unwrap_or_else(|| t.to_string()),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        other => match value_json(other) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(i) => J::from(*i),
        AMQPValue::ShortShortUInt(i) => J::from(*i),
        AMQPValue::ShortInt(i) => J::from(*i),
        AMQPValue::ShortUInt(i) => J::from(*i),
        AMQPValue::LongInt(i) => J::from(*i),
        AMQPValue::LongUInt(i) => J::from(*i),
        AMQPValue::LongLongInt(i) => J::from(*i),
        AMQPValue::Float(f) => J::String(f.to_string()),
        AMQPValue::Double(f) => J::String(f.to_string()),
        AMQPValue::DecimalValue(d) => J::String(decimal_text(d.value, d.scale)),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => J::Object(
            t.into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
                .collect(),
        ),
        other => J::String(value_text(other)),
    }
}

/// `value` × 10^-`scale` written exactly: (12345, 2) → `123.45`.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Standard base64 (padding optional, whitespace ignored).
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = false;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        if padding {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, fewer than one byte.
    (bits < 8 && acc == 0).then_some(out)
}
