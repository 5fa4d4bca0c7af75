//! The router: takes committed messages from the journal, finds the routes
//! that apply, maps each message once per route, and records one delivery
//! per destination, in the same transaction that marks the message routed.
//!
//! It reads from the journal, not from memory: a message accepted just
//! before a crash is routed after the restart like any other. Sources wake
//! it after each commit; without a wake-up it still looks every second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::CancellationToken;
use crate::codec::Codec;
use crate::journal::{Document, Journal, NewDelivery, Routing, StoredMessage, new_id};
use crate::mapping::{Condition, Mapping};
use crate::value::Value;

/// Messages routed per journal read.
const PAGE: usize = 512;
/// How long the router waits for a wake-up before looking anyway.
const IDLE: Duration = Duration::from_secs(1);

/// Wakes the router (after a commit). Cheap to clone; a wake-up is never
/// lost: one given while the router is busy is seen when it next waits.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn wait(&self) {
        self.0.notified().await;
    }
}

/// A route: where messages from some sources go, and as what.
pub struct Route {
    pub name: String,
    /// Source names.
    pub from: Vec<String>,
    /// Applies only to messages for which this is true.
    pub when: Option<Condition>,
    pub mapping: Arc<Mapping>,
    /// Destination names: one delivery each (fan-out).
    pub to: Vec<String>,
}

pub struct Router {
    journal: Arc<dyn Journal>,
    routes: Arc<Vec<Route>>,
    wakeup: Wakeup,
    /// Wakes the dispatcher of each destination.
    dispatchers: HashMap<String, Wakeup>,
}

impl Router {
    pub fn new(
        journal: Arc<dyn Journal>,
        routes: Vec<Route>,
        wakeup: Wakeup,
        dispatchers: HashMap<String, Wakeup>,
    ) -> Router {
        Router {
            journal,
            routes: Arc::new(routes),
            wakeup,
            dispatchers,
        }
    }

    /// Routes until `shutdown`; what is committed stays committed, what is
    /// not is routed at the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let page = match self.journal.received(PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read messages to route; trying again");
                    pause(&shutdown, IDLE).await;
                    continue;
                }
            };
            if page.is_empty() {
                tokio::select! {
                    () = self.wakeup.wait() => {}
                    () = tokio::time::sleep(IDLE) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            // Mapping is CPU work: off the reactor, on every core.
            let chunk = page.len().div_ceil(workers);
            let mut tasks = Vec::new();
            for part in page.chunks(chunk) {
                let part = part.to_vec();
                let routes = self.routes.clone();
                tasks.push(tokio::task::spawn_blocking(move || {
                    part.iter()
                        .map(|m| route_guarded(&routes, m))
                        .collect::<Vec<_>>()
                }));
            }
            let mut routings = Vec::with_capacity(page.len());
            for t in tasks {
                match t.await {
                    Ok(r) => routings.extend(r),
                    Err(e) => tracing::error!(error = %e, "a routing task failed"),
                }
            }
            let destinations: Vec<String> = routings
                .iter()
                .flat_map(|r| {
                    r.deliveries
                        .iter()
                        .filter(|d| d.document.is_ok())
                        .map(|d| d.destination.clone())
                })
                .collect();
            for r in &routings {
                log_routing(r);
            }
            if let Err(e) = self.journal.record_routing(routings).await {
                tracing::error!(error = %e, "cannot record routing; trying again");
                pause(&shutdown, IDLE).await;
                continue;
            }
            for d in destinations {
                if let Some(w) = self.dispatchers.get(&d) {
                    w.wake();
                }
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

fn log_routing(r: &Routing) {
    if r.deliveries.is_empty() {
        tracing::warn!(message_id = %r.message_id, "no route matched; message kept as unrouted");
    }
    for d in &r.deliveries {
        match &d.document {
            Ok(_) => {
                tracing::debug!(message_id = %r.message_id, route = %d.route, destination = %d.destination, delivery_id = %d.id, "mapped")
            }
            Err(e) => {
                tracing::error!(message_id = %r.message_id, route = %d.route, destination = %d.destination, delivery_id = %d.id, error = %e, "mapping failed; delivery dead-lettered")
            }
        }
    }
}

/// Routes one message: decodes it once per input format, checks each
/// route's condition, maps it once per route.
pub fn route_one(routes: &[Route], m: &StoredMessage) -> Routing {
    let mut decoded: Vec<(&Codec, Result<Value, String>)> = Vec::new();
    let mut deliveries = Vec::new();
    let mut matched = Vec::new();
    for route in routes.iter().filter(|r| r.from.contains(&m.source)) {
        let codec = route.mapping.input();
        let i = match decoded.iter().position(|(c, _)| *c == codec) {
            Some(i) => i,
            None => {
                let v = codec
                    .decode(&m.body, route.mapping.limits())
                    .map_err(|e| e.to_string());
                decoded.push((codec, v));
                decoded.len() - 1
            }
        };
        let document = match &decoded[i].1 {
            Err(e) => Err(format!("cannot read the message: {e}")),
            Ok(value) => {
                if let Some(cond) = &route.when {
                    match cond.eval(value) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            deliver_error(&mut deliveries, route, format!("route condition: {e}"));
                            matched.push(route.name.clone());
                            continue;
                        }
                    }
                }
                route
                    .mapping
                    .run_value(value)
                    .map_err(|e| e.to_string())
                    .map(|body| {
                        let format = route.mapping.output().format();
                        Document {
                            body,
                            content_type: format.content_type().to_owned(),
                            extension: format.name().to_owned(),
                        }
                    })
            }
        };
        matched.push(route.name.clone());
        for to in &route.to {
            deliveries.push(NewDelivery {
                id: new_id(),
                route: route.name.clone(),
                destination: to.clone(),
                document: document.clone(),
            });
        }
    }
    Routing {
        message_id: m.id.clone(),
        deliveries,
        routes: matched,
    }
}

/// [`route_one`], with a panic inside a mapping turned into dead-lettered
/// deliveries on every route of the message's source, naming the failure:
/// a message that breaks the engine is kept and reported, and never stops
/// the router.
fn route_guarded(routes: &[Route], m: &StoredMessage) -> Routing {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route_one(routes, m))) {
        Ok(r) => r,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no detail".to_owned());
            let error = format!("the mapping failed unexpectedly (internal error: {why})");
            let mut deliveries = Vec::new();
            let mut matched = Vec::new();
            for route in routes.iter().filter(|r| r.from.contains(&m.source)) {
                deliver_error(&mut deliveries, route, error.clone());
                matched.push(route.name.clone());
            }
            Routing {
                message_id: m.id.clone(),
                deliveries,
                routes: matched,
            }
        }
    }
}

fn deliver_error(deliveries: &mut Vec<NewDelivery>, route: &Route, error: String) {
    for to in &route.to {
        deliveries.push(NewDelivery {
            id: new_id(),
            route: route.name.clone(),
            destination: to.clone(),
            document: Err(error.clone()),
        });
    }
}
