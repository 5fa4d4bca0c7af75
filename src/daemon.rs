//! `nzela run`: builds the hub from a checked configuration and runs it
//! until SIGINT or SIGTERM.
//!
//! Two runtimes: the intake (sources) runs on the caller's, routing,
//! mapping and sending on `delivery`, whose threads have a lower priority
//! (see `priority`). Destinations are built on it, so that their
//! connections and blocking work live there too.
//!
//! Start: the journal is opened (one daemon per journal, enforced with a
//! lock file), deliveries left leased by a previous run are made due at
//! once, then dispatchers, the router and the sources start, in that order,
//! so that nothing is accepted before it can be carried.
//!
//! Once every source listens, systemd is told that nzela is ready; on
//! SIGINT or SIGTERM, that it is stopping (see `systemd`).
//!
//! Stop: sources stop taking messages first (HTTP finishes the requests in
//! flight), then the router and the dispatchers are given
//! `shutdown_timeout` to finish what they hold, then the journal finishes
//! its queue and closes. Whatever was not delivered is delivered after the
//! next start. A second SIGINT or SIGTERM while stopping ends nzela at
//! once (exit code 130 or 143), without waiting for the work in flight:
//! what the journal committed is kept, as after a crash.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use nzela_connectors::SourceConfig;
use nzela_core::journal::{Journal, SqliteJournal};
use nzela_core::runtime::dispatch::{Dispatcher, Handoff};
use nzela_core::runtime::router::{Feed, Route, Router, Yielding};
use nzela_core::runtime::{CancellationToken, Intake};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::systemd;

/// Runs the hub; returns when it has stopped.
pub async fn run(mut config: Config, delivery: tokio::runtime::Handle) -> Result<(), String> {
    let _lock = lock(&config)?;
    let journal = SqliteJournal::open(&config.journal.path).map_err(|e| e.to_string())?;
    let journal: Arc<dyn Journal> = Arc::new(journal);
    let released = journal.release_leases().await.map_err(|e| e.to_string())?;
    if released > 0 {
        tracing::info!(
            deliveries = released,
            "deliveries interrupted by the last stop are due again"
        );
    }
    let shutdown = CancellationToken::new();
    let router_feed = Feed::default();
    let intake = Intake::new(journal.clone(), router_feed.clone(), shutdown.clone());

    // Dispatchers first: one per destination.
    let mut workers = JoinSet::new();
    let mut handoffs = HashMap::new();
    let drain = shutdown.child_token();
    for (name, d) in &config.destinations {
        let (n, dc) = (name.clone(), d.clone());
        let destination = delivery
            .spawn(async move { nzela_connectors::build_destination(&n, &dc).await })
            .await
            .map_err(|e| format!("destination {name}: {e}"))?
            .map_err(|e| format!("destination {name}: {e}"))?;
        let settings = d.dispatch_settings(name);
        // Room in memory for the deliveries in flight and as many waiting.
        let handoff = Handoff::new((settings.concurrency * 2).max(256));
        handoffs.insert(name.clone(), handoff.clone());
        let dispatcher = Dispatcher::new(
            settings,
            destination,
            journal.clone(),
            handoff,
            intake.clone(),
        );
        let grace = config.shutdown_timeout;
        workers.spawn_on(dispatcher.run(drain.clone(), grace), &delivery);
    }

    let routes = build_routes(&mut config);
    let router = Router::new(journal.clone(), routes, router_feed, handoffs)
        .yielding(Yielding::rate(config.delivery.rate_under_load));
    workers.spawn_on(router.run(drain.clone()), &delivery);

    // Sources last. HTTP endpoints that share an address share a server.
    let mut sources = JoinSet::new();
    let mut by_address: BTreeMap<String, Vec<(String, nzela_connectors::http_server::Config)>> =
        BTreeMap::new();
    for (name, s) in &config.sources {
        match s {
            SourceConfig::HttpServer(h) => by_address
                .entry(h.listen.clone())
                .or_default()
                .push((name.clone(), h.clone())),
            other => {
                let source = nzela_connectors::build_source(name, other)
                    .await
                    .map_err(|e| format!("source {name}: {e}"))?;
                sources.spawn(source.run(intake.clone(), shutdown.clone()));
            }
        }
    }
    for (address, endpoints) in by_address {
        let server = nzela_connectors::http_server::HttpServer::bind(&address, endpoints).await?;
        tracing::info!(address = %server.local_addr(), "listening");
        sources.spawn(server.run(intake.clone(), shutdown.clone()));
    }
    tracing::info!(
        journal = %config.journal.path.display(),
        sources = config.sources.len(),
        destinations = config.destinations.len(),
        routes = config.routes.len(),
        "nzela is running"
    );
    let status = format!(
        "running: {} source(s), {} destination(s), {} route(s)",
        config.sources.len(),
        config.destinations.len(),
        config.routes.len()
    );
    systemd::notify(systemd::State::Ready, status).await;

    let mut signals = Signals::new();
    let signal = signals.recv().await;
    tracing::info!(
        signal = signal.name(),
        "stopping: no new messages; finishing the work in flight (a second SIGINT or SIGTERM stops at once)"
    );
    let status = "stopping: no new messages; finishing the work in flight".to_owned();
    systemd::notify(systemd::State::Stopping, status).await;
    // A second signal does not wait for the work in flight: what the
    // journal committed is kept, and deliveries left half-done are made
    // due again at the next start, as after a crash.
    let forced = tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(
            signal = signal.name(),
            exit_code = signal.forced_exit_code(),
            "second signal while stopping: exiting now, without waiting for the work in flight; what was not delivered is delivered after the next start"
        );
        std::process::exit(signal.forced_exit_code());
    });
    shutdown.cancel();
    let stop = config.shutdown_timeout;
    if tokio::time::timeout(stop, async { while sources.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("sources did not stop in time");
        sources.abort_all();
    }
    // Dispatchers bound their own drain by the same timeout.
    if tokio::time::timeout(stop + Duration::from_secs(2), async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "routing and delivery did not stop in time; the rest is done at the next start"
        );
        workers.abort_all();
    }
    journal.close().await;
    forced.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The routes, with the mappings and conditions compiled by the check.
fn build_routes(config: &mut Config) -> Vec<Route> {
    let mut conditions = std::mem::take(&mut config.conditions);
    config
        .routes
        .iter()
        .filter_map(|(name, r)| {
            Some(Route {
                name: name.clone(),
                from: r.from.names(),
                when: conditions.remove(name),
                mapping: config.mappings.get(&r.mapping)?.clone(),
                to: r.to.names(),
            })
        })
        .collect()
}

/// One daemon per journal: a second one would break the journal's
/// single-writer invariant (and release the first one's leases).
fn lock(config: &Config) -> Result<File, String> {
    // Beside the journal, named after it in full (`nzela.db.lock`): never
    // the journal itself, whatever its name.
    let mut path = config.journal.path.clone().into_os_string();
    path.push(".lock");
    let path = std::path::PathBuf::from(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another nzela is running on the journal {} (it holds {})",
            config.journal.path.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// A signal that stops nzela.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a stop forced by a second signal: 128 plus the
    /// signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
    /// reports a process the signal ended.
    fn forced_exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM, listened to for as long as this lives: once it
/// exists, neither ends the process by itself.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let interrupt = signal(SignalKind::interrupt())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGINT"))
                .ok();
            let terminate = signal(SignalKind::terminate())
                .inspect_err(
                    |e| tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT"),
                )
                .ok();
            Signals {
                interrupt,
                terminate,
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Waits for the next SIGINT or SIGTERM.
    async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn next(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            if self.interrupt.is_none() && self.terminate.is_none() {
                // Neither could be listened to: Ctrl-C the portable way.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
                return Signal::Interrupt;
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => Signal::Interrupt,
                () = next(self.terminate.as_mut()) => Signal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            Signal::Interrupt
        }
    }
}
