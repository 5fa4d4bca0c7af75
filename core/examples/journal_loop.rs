//! The journal alone, on the way every message takes: accept (many
//! senders at once, group commits), route (one delivery carrying a mapped
//! document), record the outcome. Prints the rate, the CPU time and the
//! bytes written to storage per message:
//!
//! ```sh
//! cargo run --release -p nzela-core --example journal_loop -- 30000 DIR
//! ```
//!
//! DIR (a temporary directory by default) holds the journal; put it on
//! the disk nzela's journal would use.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use nzela_core::journal::{Document, Journal, NewDelivery, NewMessage, Outcome, Routing};
use nzela_core::runtime::Incoming;

/// Messages in flight at once (accepts waiting for their group commit).
const IN_FLIGHT: usize = 512;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|n| n.parse::<usize>().ok()) else {
        eprintln!("usage: journal_loop COUNT [DIR]");
        return ExitCode::FAILURE;
    };
    let dir = match args.get(1) {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    };
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            eprintln!("journal_loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("journal_loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(count, dir.path())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("journal_loop: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(count: usize, dir: &std::path::Path) -> Result<(), String> {
    let order = include_bytes!("../../tests/fixtures/samples/marketplace/order-paid.json");
    let declaration = vec![b'x'; 2600];
    let journal: Arc<dyn Journal> = Arc::new(
        nzela_core::journal::SqliteJournal::open(dir.join("journal.db"))
            .map_err(|e| e.to_string())?,
    );
    let (cpu0, io0) = (cpu_seconds(), written_bytes());
    let started = Instant::now();
    let mut done = 0;
    while done < count {
        let n = IN_FLIGHT.min(count - done);
        // Accept: n senders at once.
        let mut accepts = tokio::task::JoinSet::new();
        for i in 0..n {
            let journal = journal.clone();
            let body = order.to_vec();
            accepts.spawn(async move {
                let message = NewMessage::from(Incoming {
                    source: "orders".into(),
                    body,
                    content_type: Some("application/json".into()),
                    headers: vec![("content-type".into(), "application/json".into())],
                    business_key: Some(format!("GB-{}", done + i)),
                    ..Incoming::default()
                });
                journal.accept(message).await
            });
        }
        let mut ids = Vec::with_capacity(n);
        while let Some(r) = accepts.join_next().await {
            let accepted = r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            ids.push(accepted.message_id);
        }
        // Route: one delivery each, leased to its dispatcher at once.
        let routings: Vec<Routing> = ids
            .iter()
            .map(|id| Routing {
                message_id: id.clone(),
                deliveries: vec![NewDelivery {
                    id: nzela_core::journal::new_id(),
                    route: "order_to_customs".into(),
                    destination: "customs".into(),
                    document: Ok(Document {
                        body: declaration.clone(),
                        content_type: "application/xml".into(),
                        extension: "xml".into(),
                    }),
                    leased: true,
                }],
                routes: vec!["order_to_customs".into()],
            })
            .collect();
        let delivery_ids: Vec<String> = routings
            .iter()
            .map(|r| r.deliveries[0].id.clone())
            .collect();
        journal
            .record_routing(routings)
            .await
            .map_err(|e| e.to_string())?;
        // Outcomes: one each, many at once.
        let mut outcomes = tokio::task::JoinSet::new();
        for id in delivery_ids {
            let journal = journal.clone();
            outcomes.spawn(async move {
                journal
                    .record_outcome(id, 1, Outcome::Delivered { detail: None })
                    .await
            });
        }
        while let Some(r) = outcomes.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        done += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, io) = (cpu_seconds() - cpu0, written_bytes() - io0);
    journal.close().await;
    println!(
        "{count} messages in {secs:.2} s: {:.0} msg/s, CPU {:.0} us and {:.1} KiB written per message",
        count as f64 / secs,
        cpu * 1e6 / count as f64,
        io as f64 / 1024.0 / count as f64
    );
    Ok(())
}

/// User and system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Bytes this process caused to be written to storage.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
