//! `nzela messages list|show|replay`: where is message X, and requeue what
//! was dead-lettered. Reads the journal directly, beside a running daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nzela_core::journal::{
    DeliverySummary, Inspector, ListFilter, MessageDetail, MessageSummary, Replayed,
};
use serde_json::json;

use super::EXIT_CONFIG;

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
    if as_json {
        let items: Vec<_> = messages.iter().map(summary_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if messages.is_empty() {
        println!("no messages");
        return ExitCode::SUCCESS;
    }
    for m in &messages {
        let deliveries: Vec<String> = m
            .deliveries
            .iter()
            .map(|d| format!("{}→{}:{}", d.route, d.destination, brief_state(d)))
            .collect();
        println!(
            "{}  {}  {:<20} {:<24} {:<9} {}",
            m.id,
            time(m.received_at),
            m.source,
            m.business_key.as_deref().unwrap_or("-"),
            m.state,
            deliveries.join(" ")
        );
    }
    ExitCode::SUCCESS
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
    if as_json {
        let items: Vec<_> = details.iter().map(detail_json).collect();
        let out = if items.len() == 1 {
            items[0].clone()
        } else {
            json!(items)
        };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    for (i, d) in details.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_detail(d, body);
    }
    ExitCode::SUCCESS
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
    for r in &requeued {
        match r {
            Replayed::Delivery(d) => println!("requeued delivery {d}"),
            Replayed::Remap(d) => println!("requeued delivery {d}, to be mapped again"),
            Replayed::Message(m) => println!("requeued message {m}, to be routed again"),
        }
    }
    println!(
        "{} requeued; a running nzela maps and sends them within seconds",
        requeued.len()
    );
    ExitCode::SUCCESS
}

fn brief_state(d: &DeliverySummary) -> String {
    match d.state.as_str() {
        "delivered" => "delivered".to_owned(),
        "dead" => format!("dead({})", d.attempts),
        "pending" if d.attempts > 0 => format!("retrying({})", d.attempts),
        other => other.to_owned(),
    }
}

fn print_detail(d: &MessageDetail, body: bool) {
    let m = &d.summary;
    println!("message {}", m.id);
    println!("  source        {}", m.source);
    println!("  received      {}", time(m.received_at));
    println!("  state         {}", m.state);
    if let Some(k) = &m.business_key {
        println!("  business key  {k}");
    }
    if let Some(c) = &d.correlation_id {
        println!("  correlation   {c}");
    }
    if let Some(c) = &d.content_type {
        println!("  content type  {c}");
    }
    for (k, v) in &d.headers {
        println!("  header        {k}: {v}");
    }
    println!("  size          {} bytes", d.body.len());
    if m.deliveries.is_empty() {
        println!("deliveries: none");
    } else {
        println!("deliveries:");
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
            println!("{line}");
            if let Some(e) = &del.last_error {
                println!("      last error: {e}");
            }
        }
    }
    println!("events:");
    for e in &d.events {
        let delivery = e
            .delivery_id
            .as_deref()
            .map(|id| format!(" [{}]", short(id)))
            .unwrap_or_default();
        println!(
            "  {}  {:<16}{delivery} {}",
            time(e.at),
            e.kind,
            e.detail.as_deref().unwrap_or("")
        );
    }
    if body {
        println!("body:");
        println!("{}", String::from_utf8_lossy(&d.body));
    }
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(12)..).unwrap_or(id)
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
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
