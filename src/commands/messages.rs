//! `nzela messages list|show|replay`: where is message X, and requeue what
//! was dead-lettered. Reads the journal directly, beside a running daemon.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nzela_core::journal::{
    DeliverySummary, Inspector, ListFilter, MessageDetail, MessageSummary, Replayed,
};
use serde_json::json;

use super::{EXIT_CONFIG, finish};

/// The journal a configuration names, without checking the rest of it:
/// an operator can look at messages even while a mapping is broken.
pub fn journal_path(config: &Path, explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let merged = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(crate::config::ENV_PREFIX)
                .prefix_separator(crate::config::ENV_SEPARATOR)
                .separator(crate::config::ENV_SEPARATOR),
        )
        .build()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(merged
        .get_string("journal.path")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("data/nzela.db")))
}

fn open(journal: &Path) -> Result<Inspector, ExitCode> {
    Inspector::open(journal).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn list(journal: &Path, filter: ListFilter, as_json: bool) -> ExitCode {
    let Ok(inspector) = open(journal) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let messages = match inspector.list(&filter) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = super::stdout();
    let written = write_list(&mut out, &messages, as_json);
    finish(written, &mut out, ExitCode::SUCCESS)
}

fn write_list(out: &mut impl Write, messages: &[MessageSummary], as_json: bool) -> io::Result<()> {
    if as_json {
        let items: Vec<_> = messages.iter().map(summary_json).collect();
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
    }
    if messages.is_empty() {
        return writeln!(out, "no messages");
    }
    for m in messages {
        let deliveries: Vec<String> = m
            .deliveries
            .iter()
            .map(|d| format!("{}→{}:{}", d.route, d.destination, brief_state(d)))
            .collect();
        writeln!(
            out,
            "{}  {}  {:<20} {:<24} {:<9} {}",
            m.id,
            time(m.received_at),
            m.source,
            m.business_key.as_deref().unwrap_or("-"),
            m.state,
            deliveries.join(" ")
        )?;
    }
    Ok(())
}

pub fn show(journal: &Path, key: &str, as_json: bool, body: bool) -> ExitCode {
    let Ok(inspector) = open(journal) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let ids = match inspector.find(key) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if ids.is_empty() {
        eprintln!("error: no message with the id, business key or correlation id \"{key}\"");
        return ExitCode::FAILURE;
    }
    let mut details = Vec::new();
    for id in &ids {
        match inspector.show(id) {
            Ok(d) => details.push(d),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut out = super::stdout();
    let written = write_details(&mut out, &details, as_json, body);
    finish(written, &mut out, ExitCode::SUCCESS)
}

fn write_details(
    out: &mut impl Write,
    details: &[MessageDetail],
    as_json: bool,
    body: bool,
) -> io::Result<()> {
    if as_json {
        let items: Vec<_> = details.iter().map(detail_json).collect();
        let value = match items.as_slice() {
            [one] => one.clone(),
            _ => json!(items),
        };
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }
    for (i, d) in details.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        write_detail(out, d, body)?;
    }
    Ok(())
}

pub fn replay(journal: &Path, key: &str) -> ExitCode {
    let Ok(inspector) = open(journal) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    // An id (of a message or of one delivery) first, then a business or
    // correlation key naming messages.
    let requeued = inspector.replay(key).and_then(|r| {
        if !r.is_empty() {
            return Ok(r);
        }
        let mut all = Vec::new();
        for id in inspector.find(key)? {
            all.extend(inspector.replay(&id)?);
        }
        Ok(all)
    });
    let requeued = match requeued {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if requeued.is_empty() {
        eprintln!(
            "nothing to replay: \"{key}\" names no dead-lettered delivery and no unrouted message"
        );
        return ExitCode::FAILURE;
    }
    let mut out = super::stdout();
    let written = requeued
        .iter()
        .try_for_each(|r| match r {
            Replayed::Delivery(d) => writeln!(out, "requeued delivery {d}"),
            Replayed::Remap(d) => writeln!(out, "requeued delivery {d}, to be mapped again"),
            Replayed::Message(m) => writeln!(out, "requeued message {m}, to be routed again"),
        })
        .and_then(|()| {
            writeln!(
                out,
                "{} requeued; a running nzela maps and sends them within seconds",
                requeued.len()
            )
        });
    finish(written, &mut out, ExitCode::SUCCESS)
}

fn brief_state(d: &DeliverySummary) -> String {
    match d.state.as_str() {
        "delivered" => "delivered".to_owned(),
        "dead" => format!("dead({})", d.attempts),
        "pending" if d.attempts > 0 => format!("retrying({})", d.attempts),
        other => other.to_owned(),
    }
}

fn write_detail(out: &mut impl Write, d: &MessageDetail, body: bool) -> io::Result<()> {
    let m = &d.summary;
    writeln!(out, "message {}", m.id)?;
    writeln!(out, "  source        {}", m.source)?;
    writeln!(out, "  received      {}", time(m.received_at))?;
    writeln!(out, "  state         {}", m.state)?;
    if let Some(k) = &m.business_key {
        writeln!(out, "  business key  {k}")?;
    }
    if let Some(c) = &d.correlation_id {
        writeln!(out, "  correlation   {c}")?;
    }
    if let Some(c) = &d.content_type {
        writeln!(out, "  content type  {c}")?;
    }
    for (k, v) in &d.headers {
        writeln!(out, "  header        {k}: {v}")?;
    }
    writeln!(out, "  size          {} bytes", d.body.len())?;
    if m.deliveries.is_empty() {
        writeln!(out, "deliveries: none")?;
    } else {
        writeln!(out, "deliveries:")?;
        for del in &m.deliveries {
            let mut line = format!(
                "  {}  {} → {}  {}",
                del.id, del.route, del.destination, del.state
            );
            if del.attempts > 0 {
                line.push_str(&format!(" after {} attempt(s)", del.attempts));
            }
            if del.state == "pending" && del.attempts > 0 {
                line.push_str(&format!(", next at {}", time(del.next_attempt_at)));
            }
            writeln!(out, "{line}")?;
            if let Some(e) = &del.last_error {
                writeln!(out, "      last error: {e}")?;
            }
        }
    }
    writeln!(out, "events:")?;
    for e in &d.events {
        let delivery = e
            .delivery_id
            .as_deref()
            .map(|id| format!(" [{}]", short(id)))
            .unwrap_or_default();
        writeln!(
            out,
            "  {}  {:<16}{delivery} {}",
            time(e.at),
            e.kind,
            e.detail.as_deref().unwrap_or("")
        )?;
    }
    if body {
        writeln!(out, "body:")?;
        writeln!(out, "{}", String::from_utf8_lossy(&d.body))?;
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(12)..).unwrap_or(id)
}

/// A journal time (milliseconds since the epoch) in UTC, always with three
/// digits of milliseconds so that the times of a trail line up.
fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn delivery_json(d: &DeliverySummary) -> serde_json::Value {
    json!({
        "id": d.id,
        "route": d.route,
        "destination": d.destination,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": time(d.next_attempt_at),
        "last_error": d.last_error,
    })
}

fn summary_json(m: &MessageSummary) -> serde_json::Value {
    json!({
        "id": m.id,
        "source": m.source,
        "received_at": time(m.received_at),
        "state": m.state,
        "business_key": m.business_key,
        "deliveries": m.deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
    })
}

fn detail_json(d: &MessageDetail) -> serde_json::Value {
    let mut v = summary_json(&d.summary);
    if let Some(o) = v.as_object_mut() {
        o.insert("content_type".into(), json!(d.content_type));
        o.insert("correlation_id".into(), json!(d.correlation_id));
        o.insert("headers".into(), json!(d.headers));
        o.insert("size".into(), json!(d.body.len()));
        o.insert(
            "events".into(),
            json!(d.events.iter().map(|e| json!({"at": time(e.at), "kind": e.kind, "delivery_id": e.delivery_id, "detail": e.detail})).collect::<Vec<_>>()),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_have_three_digits_of_milliseconds() {
        assert_eq!(super::time(1_796_113_761_580), "2026-12-01T08:29:21.580Z");
        assert_eq!(super::time(1_796_113_761_000), "2026-12-01T08:29:21.000Z");
        assert_eq!(super::time(1_796_113_761_007), "2026-12-01T08:29:21.007Z");
    }
}
