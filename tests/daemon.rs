//! `nzela run` end to end: the real binary, in a temporary folder with its
//! own configuration, over real sockets and files. Each test starts its own
//! daemon (HTTP on 127.0.0.1, port chosen by the system and read from the
//! "listening" log line), so the tests run in parallel; every daemon is
//! killed when its test ends, even on a panic.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use serde_json::{Value, json};

const ORDERS_PATH: &str = "/in/marketplace/orders";

// ---------------------------------------------------------------------------
// Setting up: a folder, a configuration, orders

/// A temporary folder holding one daemon's configuration, journal, inboxes
/// and outboxes.
struct Hub {
    tmp: tempfile::TempDir,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            tmp: tempfile::tempdir().expect("cannot make a temporary folder"),
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Writes the configuration file `name`; returns its path.
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        path
    }
}

/// A path as a TOML literal string.
fn lit(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 path");
    assert!(!s.contains('\''), "a path with a quote: {s}");
    format!("'{s}'")
}

/// The top of a configuration: top-level settings, journal and log.
fn top(hub: &Hub, shutdown_timeout: &str) -> String {
    format!(
        "shutdown_timeout = \"{shutdown_timeout}\"\n\n[journal]\npath = {}\n\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
        lit(&hub.path("data/nzela.db"))
    )
}

/// A JSON endpoint for orders, keyed by `order.order_id`.
fn http_source(name: &str, path: &str, extra: &str) -> String {
    format!(
        "\n[sources.{name}]\ntype = \"http_server\"\nlisten = \"127.0.0.1:0\"\npath = \"{path}\"\nformat = \"json\"\nbusiness_key = \"order.order_id\"\n{extra}"
    )
}

fn file_outbox(name: &str, dir: &Path, filename: &str) -> String {
    format!(
        "\n[destinations.{name}]\ntype = \"file\"\npath = {}\nfilename = \"{filename}\"\n",
        lit(dir)
    )
}

/// An HTTP destination retrying quickly.
fn http_destination(name: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[destinations.{name}]\ntype = \"http\"\nurl = \"{url}\"\ntimeout = \"20s\"\nretry = {{ max_attempts = 6, initial_backoff = \"100ms\", max_backoff = \"500ms\" }}\n{extra}"
    )
}

/// A route for `order.paid` messages; `from` and `to` are TOML values.
fn route(name: &str, from: &str, mapping_file: &str, to: &str) -> String {
    format!(
        "\n[routes.{name}]\nfrom = {from}\nwhen = 'event == \"order.paid\"'\nmapping = {}\nto = {to}\n",
        lit(&mapping(mapping_file))
    )
}

/// The shipped configuration's outboxes and routes: every order from
/// `marketplace_orders` becomes a declaration in `customs` and a UBL order
/// in `commerce`, both files named with `filename`.
fn shipped_routes(customs: &Path, commerce: &Path, filename: &str) -> String {
    [
        file_outbox("customs_outbox", customs, filename),
        file_outbox("commerce_outbox", commerce, filename),
        route(
            "order_to_customs",
            "\"marketplace_orders\"",
            ASYCUDA_MAPPING,
            "\"customs_outbox\"",
        ),
        route(
            "order_to_commerce",
            "\"marketplace_orders\"",
            UBL_MAPPING,
            "\"commerce_outbox\"",
        ),
    ]
    .concat()
}

/// The sample order with another order number.
fn order(id: &str) -> Vec<u8> {
    let mut o = sample_order();
    o["order"]["order_id"] = json!(id);
    serde_json::to_vec_pretty(&o).unwrap()
}

/// The files of a folder: (name, content) of the visible ones, and the
/// names of the hidden ones (temporary files). Sub-folders are left out.
fn folder(dir: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    let mut visible = BTreeMap::new();
    let mut hidden = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return (visible, hidden);
    };
    for entry in entries {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            hidden.push(name);
        } else if let Ok(text) = fs::read_to_string(entry.path()) {
            visible.insert(name, text);
        }
    }
    (visible, hidden)
}

/// The order number a customs declaration was made from.
fn declaration_order(xml: &str) -> String {
    text_of(xml, "Commercial_reference_number")
}

/// The message id of a 202 answer; panics on any other answer.
fn accepted_id(answer: &Answer) -> String {
    assert_eq!(answer.status, 202, "expected 202, got {answer:?}");
    let v = answer.json();
    let id = v["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message_id in {v}"));
    assert!(!id.is_empty(), "an empty message_id in {v}");
    id.to_owned()
}

/// The deliveries of `messages show --json`, once every one of them is in
/// `state` (and there are `count` of them).
fn deliveries_in(d: &Daemon, key: &str, count: usize, state: &str) -> Vec<Value> {
    d.wait_for(&format!("{count} deliveries of {key} {state}"), || {
        let v = d.show(key)?;
        let list = v["deliveries"].as_array()?.clone();
        (list.len() == count && list.iter().all(|x| x["state"] == state)).then_some(list)
    })
}

// ---------------------------------------------------------------------------
// 1. HTTP in, two outboxes out

#[test]
fn a_posted_order_becomes_a_valid_declaration_and_ubl_order() {
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let commerce = hub.path("out/commerce");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            shipped_routes(&customs, &commerce, "{{ message_id }}.xml"),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);

    let health = request(d.addr(), "GET", "/health", &[], Body::None).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let sample = fs::read(repo_file(SAMPLE_ORDER)).unwrap();
    let answer = post_json(d.addr(), ORDERS_PATH, &[], &sample).unwrap();
    let id = accepted_id(&answer);
    assert_eq!(answer.json()["duplicate"], json!(false));
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{answer:?}"
    );

    let declaration = d.wait_for("the customs declaration", || {
        fs::read_to_string(customs.join(format!("{id}.xml"))).ok()
    });
    let ubl = d.wait_for("the UBL order", || {
        fs::read_to_string(commerce.join(format!("{id}.xml"))).ok()
    });
    assert_valid(ASYCUDA_XSD, &declaration);
    assert_valid(UBL_ORDER_XSD, &ubl);
    assert_eq!(declaration_order(&declaration), "GB-2026-0001842");
    assert!(
        ubl.contains("<cbc:ID>GB-2026-0001842</cbc:ID>"),
        "the UBL order does not carry the order number:\n{ubl}"
    );

    // The journal knows both deliveries as delivered, by business key too.
    let deliveries = deliveries_in(&d, "GB-2026-0001842", 2, "delivered");
    let destinations: BTreeSet<_> = deliveries
        .iter()
        .map(|x| x["destination"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        destinations,
        BTreeSet::from(["commerce_outbox".to_owned(), "customs_outbox".to_owned()])
    );
    assert_eq!(d.show(&id).unwrap()["id"], json!(id));

    // Outboxes hold the finished files only: nothing temporary left.
    for dir in [&customs, &commerce] {
        let (files, hidden) = folder(dir);
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            vec![&format!("{id}.xml")],
            "in {}",
            dir.display()
        );
        assert!(
            hidden.is_empty(),
            "temporary files left in {}: {hidden:?}",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------
// 2. The file inbox

#[test]
fn inbox_files_are_taken_once_complete_and_refused_files_are_explained() {
    let hub = Hub::new();
    let inbox = hub.path("in/marketplace");
    let customs = hub.path("out/customs");
    let settle = Duration::from_secs(3);
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            format!(
                "\n[sources.marketplace_inbox]\ntype = \"file\"\npath = {}\nformat = \"json\"\npattern = \"*.json\"\nbusiness_key = \"order.order_id\"\npoll_interval = \"100ms\"\nsettle = \"3s\"\n",
                lit(&inbox)
            ),
            file_outbox("customs_outbox", &customs, "{{ message_id }}.xml"),
            route(
                "order_to_customs",
                "\"marketplace_inbox\"",
                ASYCUDA_MAPPING,
                "\"customs_outbox\"",
            ),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);
    let (done, error) = (inbox.join("done"), inbox.join("error"));

    // Written elsewhere, then renamed in: a complete order, an empty file,
    // a file that is not JSON.
    let staging = hub.path("staging");
    fs::create_dir_all(&staging).unwrap();
    let broken = br#"{"event": "order.paid", "order": {"order_id": "INBOX-BROKEN", "#;
    let complete = order("INBOX-A");
    for (name, body) in [
        ("order-a.json", &complete[..]),
        ("empty.json", &b""[..]),
        ("broken.json", &broken[..]),
    ] {
        fs::write(staging.join(name), body).unwrap();
        fs::rename(staging.join(name), inbox.join(name)).unwrap();
    }

    // A slow writer: half the order, a pause shorter than `settle`, the rest.
    let slow = order("INBOX-SLOW");
    let (first, rest) = slow.split_at(slow.len() / 2);
    let mut f = fs::File::create(inbox.join("slow.json")).unwrap();
    f.write_all(first).unwrap();
    thread::sleep(Duration::from_secs(1));
    // Polled about ten times meanwhile; still changing recently: left alone.
    assert!(
        inbox.join("slow.json").is_file()
            && !done.join("slow.json").exists()
            && !error.join("slow.json").exists(),
        "a file still being written was taken\n{}",
        d.dump()
    );
    let last_write = Instant::now();
    f.write_all(rest).unwrap();
    drop(f);

    let taken_after = d.wait_for("slow.json in done/", || {
        done.join("slow.json")
            .is_file()
            .then(|| last_write.elapsed())
    });
    assert!(
        taken_after >= settle - Duration::from_millis(100),
        "slow.json was taken {taken_after:?} after its last write, before it settled ({settle:?})"
    );
    assert_eq!(fs::read(done.join("slow.json")).unwrap(), slow);
    d.wait_for("order-a.json in done/", || {
        done.join("order-a.json").is_file().then_some(())
    });
    assert_eq!(fs::read(done.join("order-a.json")).unwrap(), complete);

    // Refused files go to error/, each with its reason beside it.
    let reasons: BTreeMap<&str, String> = ["empty.json", "broken.json"]
        .into_iter()
        .map(|name| {
            let reason = d.wait_for(&format!("{name} and {name}.error in error/"), || {
                fs::read_to_string(error.join(format!("{name}.error")))
                    .ok()
                    .filter(|_| error.join(name).is_file())
            });
            (name, reason)
        })
        .collect();
    assert!(
        reasons["empty.json"].contains("empty"),
        "the reason for empty.json: {}",
        reasons["empty.json"]
    );
    let why = &reasons["broken.json"];
    assert!(
        why.contains("JSON") && why.contains("line 1") && why.contains("column"),
        "the reason for broken.json should name the parse error and where: {why}"
    );
    assert_eq!(fs::read(error.join("broken.json")).unwrap(), broken);
    assert!(!error.join("slow.json").exists(), "slow.json was refused");

    // Nothing left in the inbox but its done/ and error/ folders.
    let (left, hidden) = folder(&inbox);
    assert!(left.is_empty() && hidden.is_empty(), "{left:?} {hidden:?}");

    // One declaration per accepted file, none for the refused ones.
    let files = d.wait_for("two declarations", || {
        let (files, _) = folder(&customs);
        (files.len() >= 2).then_some(files)
    });
    let orders: BTreeSet<String> = files.values().map(|x| declaration_order(x)).collect();
    assert_eq!(
        orders,
        BTreeSet::from(["INBOX-A".to_owned(), "INBOX-SLOW".to_owned()])
    );
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    for xml in files.values() {
        assert_valid(ASYCUDA_XSD, xml);
    }
}

#[cfg(unix)]
#[test]
fn inbox_entries_that_cannot_be_taken_are_warned_about_once_each() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let hub = Hub::new();
    let inbox = hub.path("in");
    fs::create_dir_all(&inbox).unwrap();
    let elsewhere = hub.path("elsewhere.json");
    fs::write(&elsewhere, order("LINKED")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, inbox.join("link.json")).unwrap();
    let latin1 = inbox.join(OsStr::from_bytes(b"commande-\xE9t\xE9.json"));
    fs::write(&latin1, order("LATIN1")).unwrap();
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            format!(
                "\n[sources.inbox]\ntype = \"file\"\npath = {}\nformat = \"json\"\npattern = \"*.json\"\npoll_interval = \"50ms\"\nsettle = \"100ms\"\n",
                lit(&inbox)
            ),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);
    // A file that can be taken is, meanwhile.
    let staging = hub.path("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("order.json"), order("PLAIN")).unwrap();
    fs::rename(staging.join("order.json"), inbox.join("order.json")).unwrap();
    d.wait_for("order.json in done/", || {
        inbox.join("done/order.json").is_file().then_some(())
    });
    // Twenty polls and more.
    thread::sleep(Duration::from_millis(1500));

    let lines = d.stderr();
    let warned = |needle: &str, why: &str| {
        lines
            .iter()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("not taken from the inbox")
                    && l.contains(needle)
                    && l.contains(why)
            })
            .count()
    };
    let link = inbox.join("link.json");
    assert_eq!(
        warned(link.to_str().unwrap(), "symbolic link"),
        1,
        "{}",
        d.dump()
    );
    let latin1_shown = latin1.to_string_lossy().into_owned();
    assert_eq!(warned(&latin1_shown, "not UTF-8"), 1, "{}", d.dump());
    // Both are left where they are; the link's target is untouched.
    assert!(fs::symlink_metadata(&link).is_ok() && latin1.is_file());
    assert_eq!(fs::read(&elsewhere).unwrap(), order("LINKED"));
    assert!(!inbox.join("done/link.json").exists());
}

// ---------------------------------------------------------------------------
// 3. Retries to an HTTP destination

/// A configuration: orders over HTTP, mapped to declarations, sent to the
/// HTTP destination `customs_api` at `url`.
fn http_to_api(hub: &Hub, url: &str, shutdown_timeout: &str, headers: &str) -> String {
    [
        top(hub, shutdown_timeout),
        http_source("orders", ORDERS_PATH, ""),
        http_destination("customs_api", url, headers),
        route(
            "order_to_customs",
            "\"orders\"",
            ASYCUDA_MAPPING,
            "\"customs_api\"",
        ),
    ]
    .concat()
}

#[test]
fn an_http_destination_gets_retries_with_the_same_idempotency_key() {
    let peer = Peer::start(
        vec![
            Reply::Status(503, "{\"error\":\"busy\"}".into()),
            Reply::Status(503, "{\"error\":\"busy\"}".into()),
        ],
        Reply::ok(),
    );
    let hub = Hub::new();
    let config = hub.config(
        "nzela.toml",
        &http_to_api(&hub, &peer.url("/api/declarations"), "5s", ""),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);

    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("RETRY-1")).unwrap());
    let deliveries = deliveries_in(&d, &id, 1, "delivered");
    assert_eq!(deliveries[0]["attempts"], json!(3), "{deliveries:?}");
    let delivery_id = deliveries[0]["id"].as_str().unwrap();

    let got = peer.received();
    let statuses: Vec<_> = got.iter().map(|r| r.answered).collect();
    assert_eq!(
        statuses,
        vec![Some(503), Some(503), Some(200)],
        "{}",
        d.dump()
    );
    for r in &got {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/api/declarations")
        );
        assert_eq!(
            r.header("idempotency-key"),
            Some(delivery_id),
            "every attempt carries the delivery id"
        );
        assert_eq!(r.header("content-type"), Some("application/xml"));
        assert_eq!(r.body, got[0].body, "every attempt sends the same document");
    }
    let xml = got[2].text();
    assert_valid(ASYCUDA_XSD, &xml);
    assert_eq!(declaration_order(&xml), "RETRY-1");
}

// ---------------------------------------------------------------------------
// 4. Dead letters and replay

#[test]
fn a_refused_delivery_is_dead_lettered_then_replayed_once() {
    let refusal = "{\"error\":\"declaration refused: unknown exporter\"}";
    let peer = Peer::start(vec![], Reply::Status(400, refusal.into()));
    let hub = Hub::new();
    let config = hub.config(
        "nzela.toml",
        &http_to_api(&hub, &peer.url("/api/declarations"), "5s", ""),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);

    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("DEAD-1")).unwrap());
    d.wait_for("the message in `messages list --state dead`", || {
        let out = d.nzela(&["messages", "list", "--state", "dead"]);
        assert!(out.status.success(), "{out:?}");
        out.stdout.contains(&id).then_some(())
    });
    let shown = d.nzela(&["messages", "show", &id]);
    assert!(shown.status.success(), "{shown:?}");
    assert!(
        shown.stdout.contains("dead")
            && shown.stdout.contains("HTTP 400")
            && shown.stdout.contains("unknown exporter"),
        "`messages show` should give the state and the peer's reason:\n{}",
        shown.stdout
    );
    // A 400 is not retried.
    let got = peer.received();
    assert_eq!(got.len(), 1, "a 400 was retried");
    let key = got[0].header("idempotency-key").unwrap().to_owned();

    // The peer is fixed; the operator replays, the daemon still running.
    peer.set_default(Reply::ok());
    let replay = d.nzela(&["messages", "replay", &id]);
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        replay.stdout.contains(&format!("requeued delivery {key}")),
        "{}",
        replay.stdout
    );
    let deliveries = deliveries_in(&d, &id, 1, "delivered");
    assert_eq!(deliveries[0]["id"], json!(key));

    let got = peer.received();
    assert_eq!(got.len(), 2, "the replay should be delivered exactly once");
    assert_eq!(got[1].answered, Some(200));
    assert_eq!(got[1].header("idempotency-key"), Some(key.as_str()));
    assert_eq!(got[1].body, got[0].body);

    let dead = d.nzela(&["messages", "list", "--state", "dead"]);
    assert!(!dead.stdout.contains(&id), "{}", dead.stdout);
    // Nothing is dead any more: a second replay has nothing to do.
    let again = d.nzela(&["messages", "replay", &id]);
    assert!(!again.status.success(), "{again:?}");
    let delivered = d.nzela(&["messages", "list", "--state", "delivered"]);
    assert!(delivered.stdout.contains(&id), "{}", delivered.stdout);
    assert_eq!(peer.received().len(), 2);
}

#[test]
fn a_delivery_whose_mapping_failed_is_mapped_again_once_fixed_and_replayed() {
    let hub = Hub::new();
    let mapping_file = hub.path("order-note.yaml");
    let broken = "name: order-note\ninput: json\noutput: json\nfields:\n  order: order.order_id\n  reference: { path: order.reference, required: true }\n";
    fs::write(&mapping_file, broken).unwrap();
    let outbox = hub.path("out/notes");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            file_outbox("notes", &outbox, "{{ business_key }}.json"),
            format!(
                "\n[routes.order_note]\nfrom = \"marketplace_orders\"\nmapping = {}\nto = \"notes\"\n",
                lit(&mapping_file)
            ),
        ]
        .concat(),
    );
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("REMAP-1")).unwrap());
    let dead = deliveries_in(&d, &id, 1, "dead");
    let delivery = dead[0]["id"].as_str().unwrap().to_owned();

    // Replayed before the mapping is fixed: mapped again, dead again.
    let replay = d.nzela(&["messages", "replay", &id]);
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        replay
            .stdout
            .contains(&format!("requeued delivery {delivery}, to be mapped again")),
        "{}",
        replay.stdout
    );
    d.wait_for("the delivery mapped again and dead again", || {
        let v = d.show(&id)?;
        let events = v["events"].as_array()?;
        let failures = events
            .iter()
            .filter(|e| e["kind"] == "mapping_failed")
            .count();
        (failures == 2 && v["deliveries"][0]["state"] == "dead").then_some(())
    });

    // The operator fixes the mapping, restarts nzela and replays.
    let (status, _) = d.signal_and_wait("-TERM", Duration::from_secs(10));
    assert!(status.success(), "{}", d.dump());
    fs::write(
        &mapping_file,
        broken.replace("required: true", "default: \"none\""),
    )
    .unwrap();
    d.restart();
    let replay = d.nzela(&["messages", "replay", &id]);
    assert!(replay.status.success(), "{replay:?}");
    let delivered = deliveries_in(&d, &id, 1, "delivered");
    assert_eq!(
        delivered[0]["id"],
        json!(delivery),
        "the delivery keeps its id"
    );
    let written: Value =
        serde_json::from_slice(&fs::read(outbox.join("REMAP-1.json")).unwrap()).unwrap();
    assert_eq!(written, json!({"order": "REMAP-1", "reference": "none"}));
    assert_eq!(folder(&outbox).0.len(), 1, "one document, written once");
}

// ---------------------------------------------------------------------------
// 5. Duplicates

#[test]
fn a_resent_order_is_acknowledged_with_the_same_id_and_delivered_once() {
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let commerce = hub.path("out/commerce");
    // Named after the delivery: a second routing would make a second file.
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            shipped_routes(&customs, &commerce, "{{ delivery_id }}.xml"),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);

    // The same Idempotency-Key twice.
    let a = order("DUP-A");
    let key = [("Idempotency-Key", "webhook-delivery-7781")];
    let first = post_json(d.addr(), ORDERS_PATH, &key, &a).unwrap();
    let second = post_json(d.addr(), ORDERS_PATH, &key, &a).unwrap();
    let id_a = accepted_id(&first);
    assert_eq!(accepted_id(&second), id_a);
    assert_eq!(first.json()["duplicate"], json!(false));
    assert_eq!(second.json()["duplicate"], json!(true));

    // The same order number twice, without a key.
    let b = order("DUP-B");
    let first = post_json(d.addr(), ORDERS_PATH, &[], &b).unwrap();
    let second = post_json(d.addr(), ORDERS_PATH, &[], &b).unwrap();
    let id_b = accepted_id(&first);
    assert_eq!(accepted_id(&second), id_b);
    assert_ne!(id_a, id_b);
    assert_eq!(first.json()["duplicate"], json!(false));
    assert_eq!(second.json()["duplicate"], json!(true));

    for id in [&id_a, &id_b] {
        let shown = d.show(id).unwrap();
        assert!(shown.is_object(), "one message per id: {shown}");
        let kinds: Vec<&str> = shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"duplicate"), "{kinds:?}");
        deliveries_in(&d, id, 2, "delivered");
    }
    // One message per order number in the journal.
    let list = d.nzela(&["messages", "list", "--json"]);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    for key in ["DUP-A", "DUP-B"] {
        let n = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["business_key"] == key)
            .count();
        assert_eq!(n, 1, "messages with business key {key}: {list}");
    }
    // One file per order in each outbox.
    for dir in [&customs, &commerce] {
        let (files, hidden) = folder(dir);
        assert_eq!(files.len(), 2, "in {}: {:?}", dir.display(), files.keys());
        assert!(hidden.is_empty(), "{hidden:?}");
    }
    let (files, _) = folder(&customs);
    let orders: BTreeSet<String> = files.values().map(|x| declaration_order(x)).collect();
    assert_eq!(
        orders,
        BTreeSet::from(["DUP-A".to_owned(), "DUP-B".to_owned()])
    );
}

// ---------------------------------------------------------------------------
// 6. kill -9 in the middle of a stream of orders

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_order() {
    const ORDERS: usize = 300;
    const CLIENTS: usize = 16;
    const KILL_AFTER: usize = 100;
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            file_outbox("customs_outbox", &customs, "{{ delivery_id }}.xml"),
            route(
                "order_to_customs",
                "\"marketplace_orders\"",
                ASYCUDA_MAPPING,
                "\"customs_outbox\"",
            ),
        ]
        .concat(),
    );
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    let addr = d.addr();

    let sent: Vec<String> = (0..ORDERS).map(|i| format!("CRASH-{i:04}")).collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(sent.iter().map(|id| order(id)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    // Order number → message id, for every 202.
    let accepted = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let other_answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (bodies, next, acked) = (bodies.clone(), next.clone(), acked.clone());
            let (accepted, other_answers, failed) =
                (accepted.clone(), other_answers.clone(), failed.clone());
            let sent = sent.clone();
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= ORDERS {
                        return;
                    }
                    match post_json(addr, ORDERS_PATH, &[], &bodies[i]) {
                        Ok(a) if a.status == 202 => {
                            let id = a.json()["message_id"].as_str().unwrap().to_owned();
                            accepted.lock().unwrap().insert(sent[i].clone(), id);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(a) => other_answers.lock().unwrap().push(format!(
                            "{}: {} {}",
                            sent[i],
                            a.status,
                            a.text()
                        )),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    d.wait_for(&format!("{KILL_AFTER} orders acknowledged"), || {
        (acked.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    });
    d.kill9();
    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        other_answers.lock().unwrap().is_empty(),
        "answers other than 202: {:?}",
        other_answers.lock().unwrap()
    );
    assert!(
        accepted.len() < ORDERS && failed.load(Ordering::SeqCst) > 0,
        "the kill came after the stream ended ({} acknowledged): nothing was tested",
        accepted.len()
    );

    eprintln!(
        "killed with {} of {ORDERS} orders acknowledged, {} failed",
        accepted.len(),
        failed.load(Ordering::SeqCst)
    );
    d.restart();
    // Every acknowledged order gets its declaration.
    d.wait_for("a declaration for every acknowledged order", || {
        let (files, _) = folder(&customs);
        let made: BTreeSet<String> = files.values().map(|x| declaration_order(x)).collect();
        accepted.keys().all(|k| made.contains(k)).then_some(())
    });
    // Then nothing is left to route or deliver.
    for state in ["received", "pending"] {
        d.wait_for(&format!("no {state} message"), || {
            let out = d.nzela(&["messages", "list", "--state", state]);
            out.stdout.contains("no messages").then_some(())
        });
    }

    let (files, hidden) = folder(&customs);
    // The temporary files of the batch the kill cut short were removed at
    // the restart; their deliveries were written again.
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
    let mut by_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, xml) in &files {
        assert!(
            xml.trim_end().ends_with("</ASYCUDA>"),
            "{name} is not a whole declaration"
        );
        by_order
            .entry(declaration_order(xml))
            .or_default()
            .push(name.clone());
    }
    let sent: BTreeSet<String> = sent.into_iter().collect();
    for (order_id, names) in &by_order {
        assert!(
            sent.contains(order_id),
            "{names:?}: a declaration for an order never sent ({order_id})"
        );
        assert_eq!(
            names.len(),
            1,
            "order {order_id} was delivered by several deliveries: {names:?}"
        );
    }
    for order_id in accepted.keys() {
        assert!(
            by_order.contains_key(order_id),
            "acknowledged order {order_id} has no declaration"
        );
    }
    // The journal holds each acknowledged order under the id it answered,
    // with one delivery, delivered.
    let list = d.nzela(&["messages", "list", "--json", "--limit", "1000"]);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    let mut journal: HashMap<String, Vec<String>> = HashMap::new();
    for m in list.as_array().unwrap() {
        let deliveries = m["deliveries"].as_array().unwrap();
        assert!(
            deliveries.len() == 1 && deliveries[0]["state"] == "delivered",
            "{m}"
        );
        if let Some(k) = m["business_key"].as_str() {
            journal
                .entry(k.to_owned())
                .or_default()
                .push(m["id"].as_str().unwrap().to_owned());
        }
    }
    for (order_id, id) in &accepted {
        assert_eq!(
            journal.get(order_id),
            Some(&vec![id.clone()]),
            "order {order_id}"
        );
    }
    for xml in files.values().take(3) {
        assert_valid(ASYCUDA_XSD, xml);
    }
}

// ---------------------------------------------------------------------------
// 7. Bad requests

/// An XML document that expands to gigabytes if its entities are expanded.
fn billion_laughs() -> String {
    let mut doc =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        doc.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    doc.push_str("]>\n<lolz>&lol9;</lolz>\n");
    doc
}

/// A 4xx answer: its status and its JSON error text.
fn refused(answer: &Answer, status: u16) -> String {
    assert_eq!(answer.status, status, "{answer:?}");
    let v = answer.json();
    let error = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {v}"));
    assert!(!error.is_empty());
    error.to_owned()
}

#[test]
fn bad_requests_are_refused_with_json_errors_and_serving_goes_on() {
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("marketplace_orders", ORDERS_PATH, "max_body_size = \"64KiB\"\n"),
            "\n[sources.customs_notices]\ntype = \"http_server\"\nlisten = \"127.0.0.1:0\"\npath = \"/in/customs/notices\"\nformat = \"xml\"\n".to_owned(),
            file_outbox("customs_outbox", &customs, "{{ message_id }}.xml"),
            route(
                "order_to_customs",
                "\"marketplace_orders\"",
                ASYCUDA_MAPPING,
                "\"customs_outbox\"",
            ),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);
    let addr = d.addr();
    let alive = || {
        let h = request(addr, "GET", "/health", &[], Body::None).unwrap();
        assert_eq!(h.status, 200, "the daemon stopped serving\n{}", d.dump());
    };

    // Malformed JSON: 400 with where.
    let a = post_json(
        addr,
        ORDERS_PATH,
        &[],
        br#"{"event": "order.paid", "order": }"#,
    )
    .unwrap();
    let error = refused(&a, 400);
    assert!(error.contains("JSON"), "{error}");
    assert_eq!(a.json()["line"], json!(1));
    assert!(
        a.json()["column"].as_u64().is_some_and(|c| c > 0),
        "{}",
        a.text()
    );
    alive();

    // Nesting deeper than max_depth (64 by default): 400.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let error = refused(
        &post_json(addr, ORDERS_PATH, &[], deep.as_bytes()).unwrap(),
        400,
    );
    assert!(
        error.contains("depth") || error.contains("deep") || error.contains("nest"),
        "{error}"
    );
    alive();

    // An entity bomb to the XML endpoint: 400, at once.
    let start = Instant::now();
    let a = post(
        addr,
        "/in/customs/notices",
        "application/xml",
        &[],
        billion_laughs().as_bytes(),
    )
    .unwrap();
    let took = start.elapsed();
    let error = refused(&a, 400);
    assert!(error.contains("entit"), "{error}");
    assert!(
        took < Duration::from_secs(5),
        "the entity bomb took {took:?}"
    );
    alive();
    // The XML endpoint takes a plain document.
    let notice = b"<?xml version=\"1.0\"?>\n<notice><id>N-1</id></notice>\n";
    accepted_id(
        &post(
            addr,
            "/in/customs/notices",
            "text/xml; charset=utf-8",
            &[],
            notice,
        )
        .unwrap(),
    );

    // A valid order over 64 KiB: 413, whether its length is announced (with
    // or without `Expect: 100-continue`) or not (chunked).
    let mut big = sample_order();
    big["order"]["note"] = json!("x".repeat(70 * 1024));
    big["order"]["order_id"] = json!("BIG-1");
    let big = serde_json::to_vec(&big).unwrap();
    let announced = request(
        addr,
        "POST",
        ORDERS_PATH,
        &[("Content-Type", "application/json")],
        Body::ExpectContinue(&big),
    )
    .unwrap();
    let error = refused(&announced, 413);
    assert!(error.contains("64 KiB"), "{error}");
    alive();
    let streamed = request(
        addr,
        "POST",
        ORDERS_PATH,
        &[("Content-Type", "application/json")],
        Body::Chunked(&big),
    )
    .unwrap();
    refused(&streamed, 413);
    let plain = post_json(addr, ORDERS_PATH, &[], &big).unwrap();
    refused(&plain, 413);
    alive();

    // A Content-Type the endpoint does not take: 415, saying which it takes.
    let sample = fs::read(repo_file(SAMPLE_ORDER)).unwrap();
    let a = post(addr, ORDERS_PATH, "text/plain", &[], &sample).unwrap();
    let error = refused(&a, 415);
    assert!(error.contains("text/plain"), "{error}");
    assert_eq!(a.json()["accepted"], json!(["application/json"]));
    let a = request(addr, "POST", ORDERS_PATH, &[], Body::Length(&sample)).unwrap();
    refused(&a, 415);
    // Other paths and methods.
    refused(&post_json(addr, "/in/nowhere", &[], &sample).unwrap(), 404);
    refused(
        &request(addr, "GET", ORDERS_PATH, &[], Body::None).unwrap(),
        405,
    );
    alive();

    // Still serving: a good order goes through, and only it.
    let id = accepted_id(&post_json(addr, ORDERS_PATH, &[], &order("AFTER-BAD-1")).unwrap());
    let xml = d.wait_for("the declaration of the good order", || {
        fs::read_to_string(customs.join(format!("{id}.xml"))).ok()
    });
    assert_eq!(declaration_order(&xml), "AFTER-BAD-1");
    let (files, _) = folder(&customs);
    assert_eq!(files.len(), 1, "{:?}", files.keys());
}

// ---------------------------------------------------------------------------
// 8. SIGTERM and restart

#[test]
fn sigterm_stops_cleanly_and_the_rest_is_delivered_after_restart() {
    // The first attempt gets no answer; the next ones are accepted.
    let peer = Peer::start(vec![Reply::Hang], Reply::ok());
    let hub = Hub::new();
    let shutdown_timeout = Duration::from_secs(3);
    let config = hub.config(
        "nzela.toml",
        &http_to_api(&hub, &peer.url("/api/declarations"), "3s", ""),
    );
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);

    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("TERM-1")).unwrap());
    d.wait_for("the first attempt to reach the peer", || {
        (!peer.received().is_empty()).then_some(())
    });
    // Stopping while that attempt hangs: the daemon waits for it at most
    // shutdown_timeout, then exits with 0.
    let (status, took) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    eprintln!("stopped in {took:?} with an attempt in flight");
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    assert!(
        took < shutdown_timeout + Duration::from_secs(2),
        "the stop took {took:?} (shutdown_timeout {shutdown_timeout:?})\n{}",
        d.dump()
    );
    let shown = d.show(&id).unwrap();
    assert_ne!(
        shown["deliveries"][0]["state"],
        json!("delivered"),
        "{shown}"
    );

    d.restart();
    let restarted = Instant::now();
    let got = d.wait_for("the delivery after the restart", || {
        let got = peer.received();
        (got.len() >= 2).then_some(got)
    });
    assert!(
        got[1].at.duration_since(restarted) < Duration::from_secs(10),
        "the interrupted delivery was resent only {:?} after the restart",
        got[1].at.duration_since(restarted)
    );
    assert_eq!(got[1].answered, Some(200));
    assert_eq!(
        got[1].header("idempotency-key"),
        got[0].header("idempotency-key")
    );
    deliveries_in(&d, &id, 1, "delivered");
    assert_eq!(peer.received().len(), 2);

    // Idle, it stops at once.
    let (status, took) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    assert!(took < shutdown_timeout, "an idle stop took {took:?}");
}

#[test]
fn a_second_signal_while_stopping_exits_at_once() {
    // The first attempt gets no answer; the next ones are accepted.
    let peer = Peer::start(vec![Reply::Hang], Reply::ok());
    let hub = Hub::new();
    let config = hub.config(
        "nzela.toml",
        &http_to_api(&hub, &peer.url("/api/declarations"), "60s", ""),
    );
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("TWICE-1")).unwrap());
    d.wait_for("the first attempt to reach the peer", || {
        (!peer.received().is_empty()).then_some(())
    });

    d.signal("-TERM");
    d.wait_for("the stop to begin", || {
        d.stderr()
            .iter()
            .any(|l| l.contains("stopping: no new messages"))
            .then_some(())
    });
    // The attempt in flight holds the stop (shutdown_timeout 60s).
    thread::sleep(Duration::from_secs(1));
    assert!(d.running(), "nzela stopped without waiting\n{}", d.dump());

    // Ctrl-C now does not wait.
    let second = Instant::now();
    d.signal("-INT");
    let status = d.wait_exit("the second signal", second, Duration::from_secs(20));
    let took = second.elapsed();
    assert_eq!(status.code(), Some(130), "{}", d.dump());
    assert!(
        took < Duration::from_secs(3),
        "the forced stop took {took:?}\n{}",
        d.dump()
    );
    assert!(
        d.stderr().iter().any(|l| l.contains("WARN")
            && l.contains("second signal while stopping: exiting now")
            && l.contains("SIGINT")),
        "{}",
        d.dump()
    );
    // It did not get to the end of an orderly stop.
    assert!(
        !d.stderr()
            .iter()
            .any(|l| l.trim_end().ends_with(" stopped")),
        "{}",
        d.dump()
    );

    // Nothing is lost: the interrupted delivery is made after a restart,
    // with the same idempotency key.
    d.restart();
    let got = d.wait_for("the delivery after the restart", || {
        let got = peer.received();
        (got.len() >= 2).then_some(got)
    });
    assert_eq!(got[1].answered, Some(200));
    assert_eq!(
        got[1].header("idempotency-key"),
        got[0].header("idempotency-key")
    );
    deliveries_in(&d, &id, 1, "delivered");
}

// ---------------------------------------------------------------------------
// 9. nzela check

/// The 1-based number of the line of `text` that contains `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle}"))
        + 1
}

#[test]
fn check_reports_every_problem_with_file_and_line_and_run_refuses() {
    let hub = Hub::new();
    let missing_mapping = hub.path("mappings/no-such-mapping.yaml");
    let missing_ca = format!(
        "tls = {{ ca_file = {} }}\n",
        lit(&hub.path("no-such-ca.pem"))
    );
    let text = [
        top(&hub, "5s"),
        http_source("marketplace_orders", ORDERS_PATH, ""),
        format!(
            "\n[sources.marketplace_inbox]\ntype = \"file\"\npath = {}\nformat = \"json\"\npoll_intervall = \"1s\"\n",
            lit(&hub.path("in"))
        ),
        file_outbox("customs_outbox", &hub.path("out/customs"), "{{ message_id }}.xml"),
        route(
            "order_to_customs",
            "[\"marketplace_orders\", \"marketplace_inbox\"]",
            ASYCUDA_MAPPING,
            "\"custom_outbox\"",
        ),
        format!(
            "\n[routes.order_to_commerce]\nfrom = \"marketplace_orders\"\nmapping = {}\nto = \"customs_outbox\"\n",
            lit(&missing_mapping)
        ),
        "\n[destinations.api]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"soon\"\n".to_owned(),
        format!(
            "\n[destinations.secure]\ntype = \"http\"\nurl = \"https://127.0.0.1:9/\"\n{missing_ca}"
        ),
    ]
    .concat();
    let bad = hub.config("bad.toml", &text);
    let bad_arg = bad.to_str().unwrap();
    let expected = [
        (line_with(&text, "poll_intervall"), "poll_intervall"),
        // A value that does not read names its setting, on its line.
        (line_with(&text, "\"soon\""), "destinations.api.timeout"),
        // What building a destination would read is read.
        (line_with(&text, "no-such-ca.pem"), "no-such-ca.pem"),
        (line_with(&text, "\"custom_outbox\""), "custom_outbox"),
        (
            line_with(&text, "no-such-mapping.yaml"),
            "no-such-mapping.yaml",
        ),
    ];

    let check = run_bounded(hub.dir(), &[], &["check", "--config", bad_arg], DEADLINE);
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    for (line, what) in expected {
        let at = format!("{bad_arg}:{line}:");
        assert!(
            check
                .stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(&at) && l.contains(what)),
            "no problem about {what} at {at}:\n{}",
            check.stderr
        );
    }
    assert!(
        check.stderr.contains("problem(s) found"),
        "{}",
        check.stderr
    );
    // A source that does not read is reported once, not again by the
    // routes that name it.
    assert!(
        !check
            .stderr
            .contains("no source named \"marketplace_inbox\""),
        "{}",
        check.stderr
    );
    // A value set through the environment is blamed on its variable.
    let from_env = run_bounded(
        hub.dir(),
        &[("NZELA__LOG__FORMAT".to_owned(), "xml".to_owned())],
        &["check", "--config", bad_arg],
        DEADLINE,
    );
    assert!(
        from_env
            .stderr
            .lines()
            .any(|l| l.contains("log.format")
                && l.contains("environment variable NZELA__LOG__FORMAT")),
        "{}",
        from_env.stderr
    );

    // `nzela run` makes the same checks and does not start.
    let run = run_bounded(hub.dir(), &[], &["run", "--config", bad_arg], DEADLINE);
    assert_eq!(run.status.code(), Some(78), "{run:?}");
    for (line, what) in expected {
        assert!(
            run.stderr.contains(&format!("{bad_arg}:{line}:")) && run.stderr.contains(what),
            "`nzela run` did not report {what}:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("listening"), "{}", run.stderr);
    assert!(
        !hub.path("data/nzela.db").exists(),
        "a refused run opened the journal"
    );

    // The same configuration, fixed, is clean.
    let fixed = text
        .replace("poll_intervall", "poll_interval")
        .replace("\"custom_outbox\"", "\"customs_outbox\"")
        .replace(&lit(&missing_mapping), &lit(&mapping(UBL_MAPPING)))
        .replace("\"soon\"", "\"5s\"")
        .replace(&missing_ca, "");
    let good = hub.config("good.toml", &fixed);
    let check = run_bounded(
        hub.dir(),
        &[],
        &["check", "--config", good.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(check.stdout.contains("ok"), "{check:?}");
}

/// Panics unless `output` has a line `<kind>: FILE:LINE: KEY: ...` that
/// also contains `what`.
fn assert_reported(output: &str, kind: &str, file: &str, line: usize, key: &str, what: &str) {
    let at = format!("{kind}: {file}:{line}: {key}: ");
    assert!(
        output
            .lines()
            .any(|l| l.starts_with(&at) && l.contains(what)),
        "no {kind} \"{what}\" at {at}\n{output}"
    );
}

#[test]
fn check_reports_routes_folders_formats_and_retries_that_cannot_work() {
    let hub = Hub::new();
    let asycuda = lit(&mapping(ASYCUDA_MAPPING));
    let text = [
        top(&hub, "5s"),
        http_source("orders", ORDERS_PATH, "header_read_timeout = \"5s\"\n"),
        http_source("status", "/in/status", "header_read_timeout = \"20s\"\n"),
        // Relative folders, as they are usually written.
        "\n[sources.inbox]\ntype = \"file\"\npath = \"data/in\"\nformat = \"xml\"\n".to_owned(),
        "\n[sources.loop]\ntype = \"file\"\npath = \"data/loop\"\nformat = \"json\"\ndone = \"./data/loop/\"\n".to_owned(),
        "\n[destinations.customs_outbox]\ntype = \"file\"\npath = \"data/out/customs\"\n".to_owned(),
        // The inbox and its error folder, written otherwise.
        "\n[destinations.echo]\ntype = \"file\"\npath = \"./data/in/\"\n".to_owned(),
        "\n[destinations.refused]\ntype = \"file\"\npath = \"data/x/../in/error\"\n".to_owned(),
        "\n[destinations.api]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\n[destinations.api.retry]\nmax_attempts = 3\ninitial_backoff = \"10s\"\nmax_backoff = \"5s\"\n".to_owned(),
        format!("\n[routes.nowhere_from]\nfrom = []\nmapping = {asycuda}\nto = \"customs_outbox\"\n"),
        format!("\n[routes.twice]\nfrom = \"orders\"\nmapping = {asycuda}\nto = [\"customs_outbox\", \"api\", \"customs_outbox\"]\n"),
        format!("\n[routes.xml_into_json]\nfrom = [\"inbox\", \"loop\"]\nmapping = {asycuda}\nto = [\"echo\", \"refused\"]\n"),
        format!("\n[routes.status]\nfrom = \"status\"\nmapping = {asycuda}\nto = \"api\"\n"),
    ]
    .concat();
    let bad = hub.config("bad.toml", &text);
    let file = bad.to_str().unwrap();
    let section = |name: &str| format!("[routes.{name}]");
    let after = |start: &str, needle: &str| {
        let from = line_with(&text, start);
        from + text
            .lines()
            .skip(from)
            .position(|l| l.contains(needle))
            .unwrap()
            + 1
    };
    let errors = [
        (
            after(&section("nowhere_from"), "from = []"),
            "routes.nowhere_from.from",
            "a route needs at least one source",
        ),
        (
            after(&section("twice"), "to = "),
            "routes.twice.to",
            "\"customs_outbox\" is listed more than once",
        ),
        (
            after(&section("xml_into_json"), "mapping = "),
            "routes.xml_into_json.mapping",
            "reads json (its `input`), but the source \"inbox\" takes xml (sources.inbox.format)",
        ),
        (
            line_with(&text, "path = \"./data/in/\""),
            "destinations.echo.path",
            "./data/in/ is also the inbox of source \"inbox\"",
        ),
        (
            line_with(&text, "data/x/../in/error"),
            "destinations.refused.path",
            "is also the `error` folder of source \"inbox\"",
        ),
        (
            line_with(&text, "done = \"./data/loop/\""),
            "sources.loop.done",
            "is the inbox itself",
        ),
        (
            line_with(&text, "initial_backoff = \"10s\""),
            "destinations.api.retry.initial_backoff",
            "initial_backoff (10s) is longer than max_backoff (5s)",
        ),
    ];
    let warning = (
        line_with(&text, "header_read_timeout = \"20s\""),
        "sources.status.header_read_timeout",
        "20s does not apply",
    );

    let check = run_bounded(hub.dir(), &[], &["check", "--config", file], DEADLINE);
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    for (line, key, what) in errors {
        assert_reported(&check.stderr, "error", file, line, key, what);
    }
    // A source of the mapping's format is not blamed.
    assert!(
        !check.stderr.contains("source \"loop\" takes"),
        "{}",
        check.stderr
    );
    assert!(
        check
            .stderr
            .contains(&format!("{} problem(s) found", errors.len())),
        "{}",
        check.stderr
    );
    // Warnings are shown beside the errors, not only once they are fixed.
    let (line, key, what) = warning;
    assert_reported(&check.stderr, "warning", file, line, key, what);

    // `nzela run` refuses on the same problems.
    let run = run_bounded(hub.dir(), &[], &["run", "--config", file], DEADLINE);
    assert_eq!(run.status.code(), Some(78), "{run:?}");
    for (line, key, what) in errors {
        assert_reported(&run.stderr, "error", file, line, key, what);
    }
    assert!(
        !hub.path("data/nzela.db").exists(),
        "a refused run opened the journal"
    );

    // Fixed, it is clean, with a warning: endpoints on one address whose
    // header_read_timeout differ.
    let fixed = text
        .replace("from = []", "from = \"orders\"")
        .replace("\"api\", \"customs_outbox\"]", "\"api\"]")
        .replace("[\"inbox\", \"loop\"]", "\"loop\"")
        .replace("path = \"./data/in/\"", "path = \"data/out/echo\"")
        .replace("data/x/../in/error", "data/out/refused")
        .replace("done = \"./data/loop/\"", "done = \"data/loop/done\"")
        .replace("initial_backoff = \"10s\"", "initial_backoff = \"1s\"")
        + "\n[routes.inbox]\nfrom = \"inbox\"\nmapping = "
        + &lit(&mapping(MOMO_MAPPING))
        + "\nto = \"api\"\n";
    let good = hub.config("good.toml", &fixed);
    let good = good.to_str().unwrap();
    let check = run_bounded(hub.dir(), &[], &["check", "--config", good], DEADLINE);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let (line, key, what) = warning;
    assert_reported(&check.stderr, "warning", good, line, key, what);
    assert!(
        check
            .stderr
            .contains("the shortest header_read_timeout, 5s (source \"orders\")"),
        "{}",
        check.stderr
    );
    // The setting that applies is not warned about.
    assert!(
        !check.stderr.contains("sources.orders.header_read_timeout"),
        "{}",
        check.stderr
    );
}

// ---------------------------------------------------------------------------
// 9b. Delivery threads below the intake

/// The nice value of each thread of `pid`, by thread name.
fn thread_nice_values(pid: u32) -> Vec<(u32, String, i64)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            fs::read_to_string(task.join("comm")),
            fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Field 19 is the nice value; fields are counted after the name's
        // closing parenthesis (a name may hold spaces).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        let tid = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
        threads.push((tid, comm.trim().to_owned(), nice));
    }
    threads
}

/// The shipped sources, outboxes and routes with `[delivery]` settings:
/// the configuration file, and the customs and commerce outboxes.
fn shipped_with_delivery(hub: &Hub, delivery: &str) -> (PathBuf, PathBuf, PathBuf) {
    let customs = hub.path("out/customs");
    let commerce = hub.path("out/commerce");
    let config = hub.config(
        "nzela.toml",
        &[
            top(hub, "5s"),
            format!("\n[delivery]\n{delivery}\n"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            shipped_routes(&customs, &commerce, "{{ message_id }}.xml"),
        ]
        .concat(),
    );
    (config, customs, commerce)
}

#[cfg(target_os = "linux")]
#[test]
fn delivery_threads_run_at_a_lower_priority_than_the_intake() {
    let hub = Hub::new();
    let (config, customs, commerce) = shipped_with_delivery(&hub, "threads = 3\nnice = 7");
    let d = Daemon::start(hub.dir(), &config, &[], &[]);
    // An order through both routes: the outboxes' blocking threads exist.
    let sample = fs::read(repo_file(SAMPLE_ORDER)).unwrap();
    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &sample).unwrap());
    for dir in [&customs, &commerce] {
        d.wait_for("both documents", || {
            fs::metadata(dir.join(format!("{id}.xml"))).ok()
        });
    }

    let threads = thread_nice_values(d.pid());
    let base = threads
        .iter()
        .find(|(tid, _, _)| *tid == d.pid())
        .map(|t| t.2)
        .unwrap();
    let lowered = (base + 7).min(19);
    let delivery: Vec<_> = threads
        .iter()
        .filter(|(_, name, _)| name == "nzela-delivery")
        .collect();
    let intake: Vec<_> = threads
        .iter()
        .filter(|(_, name, _)| name == "nzela" || name == "nzela-journal")
        .collect();
    // Three workers at least, and the outboxes' blocking threads.
    assert!(delivery.len() > 3, "{threads:?}");
    assert!(
        intake.iter().any(|t| t.1 == "nzela-journal") && intake.iter().any(|t| t.1 == "nzela"),
        "{threads:?}"
    );
    assert!(
        delivery.iter().all(|t| t.2 == lowered),
        "delivery threads not at nice {lowered}: {threads:?}"
    );
    assert!(
        intake.iter().all(|t| t.2 == base),
        "intake or journal threads lowered: {threads:?}"
    );
    assert_eq!(
        threads.len(),
        delivery.len() + intake.len(),
        "threads of another kind: {threads:?}"
    );
}

#[test]
fn routing_gives_way_while_many_senders_wait_and_then_catches_up() {
    // nzela_core::runtime::router::BUSY_AT: senders waiting at once from
    // which the intake counts as busy.
    const BUSY_AT: usize = 32;
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let commerce = hub.path("out/commerce");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            "\n[delivery]\nrate_under_load = 2\n".to_owned(),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            shipped_routes(&customs, &commerce, "{{ message_id }}.xml"),
        ]
        .concat(),
    );
    let d = Daemon::start(hub.dir(), &config, &[], &[]);
    // BUSY_AT senders in the middle of their requests: the body announced
    // and not yet sent.
    let waiting: Vec<std::net::TcpStream> = (0..BUSY_AT)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
            write!(
                s,
                "POST {ORDERS_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // Ten orders: each acknowledged at once.
    for n in 0..10 {
        let answer = post_json(d.addr(), ORDERS_PATH, &[], &order(&format!("GB-Y{n}"))).unwrap();
        accepted_id(&answer);
    }
    // Routed at two a second meanwhile: within two seconds, five at most
    // (rather than all ten at once).
    thread::sleep(Duration::from_secs(2));
    let written = folder(&customs).0.len();
    assert!(
        written <= 6,
        "routing did not give way: {written} of 10 declarations written"
    );
    // The senders gone, the rest goes out at full speed.
    drop(waiting);
    for dir in [&customs, &commerce] {
        d.wait_for("all ten documents", || {
            (folder(dir).0.len() == 10).then_some(())
        });
    }
}

#[test]
fn delivery_settings_are_checked() {
    let hub = Hub::new();
    for (extra, key, what) in [
        ("nice = 25", "nice = 25", "25 is not a nice value"),
        ("nice = 5\nthread = 2", "thread = 2", "thread"),
        ("threads = 0", "threads = 0", "at least one thread"),
        ("rate_under_load = -5", "rate_under_load", "-5"),
    ] {
        let text = [
            top(&hub, "5s"),
            format!("\n[delivery]\n{extra}\n"),
            http_source("marketplace_orders", ORDERS_PATH, ""),
        ]
        .concat();
        let file = hub.config("delivery.toml", &text);
        let file = file.to_str().unwrap();
        let check = run_bounded(hub.dir(), &[], &["check", "--config", file], DEADLINE);
        assert_eq!(check.status.code(), Some(78), "{extra}: {check:?}");
        let at = format!("{file}:{}:", line_with(&text, key));
        assert!(
            check
                .stderr
                .lines()
                .any(|l| l.contains(&at) && l.contains(what)),
            "{extra}: no problem about {what} at {at}:\n{}",
            check.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// 10. Environment overrides and secrets

#[test]
fn environment_overrides_and_secrets_reach_the_running_daemon() {
    let peer = Peer::start(vec![], Reply::ok());
    let hub = Hub::new();
    let secret_file = hub.path("secrets/api-key");
    fs::create_dir_all(secret_file.parent().unwrap()).unwrap();
    fs::write(&secret_file, "key-from-a-file-42\n").unwrap();
    let headers = format!(
        "headers = {{ Authorization = \"Bearer ${{env:NZELA_TEST_API_TOKEN}}\", X-Api-Key = \"${{file:{}}}\" }}\n",
        secret_file.display()
    );
    let config = hub.config(
        "nzela.toml",
        &http_to_api(&hub, &peer.url("/api/declarations"), "5s", &headers),
    );
    let env_journal = hub.path("env-journal/nzela.db");
    let env_journal_text = env_journal.to_str().unwrap().to_owned();
    let env = [
        ("NZELA_TEST_API_TOKEN", "t0ken-from-the-environment"),
        ("NZELA__JOURNAL__PATH", env_journal_text.as_str()),
        ("NZELA__SOURCES__ORDERS__PATH", "/in/env/orders"),
    ];

    // Without the variable the secret names, the configuration is refused.
    let check = run_bounded(
        hub.dir(),
        &[],
        &["check", "--config", config.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(check.status.code(), Some(78), "{check:?}");
    assert!(
        check
            .stderr
            .contains("destinations.customs_api.headers.Authorization")
            && check.stderr.contains("NZELA_TEST_API_TOKEN"),
        "{}",
        check.stderr
    );

    let d = Daemon::start(hub.dir(), &config, &env, &[]);
    // The path comes from the environment, not from the file.
    let a = post_json(d.addr(), ORDERS_PATH, &[], &order("ENV-1")).unwrap();
    assert_eq!(a.status, 404, "{a:?}");
    let id = accepted_id(&post_json(d.addr(), "/in/env/orders", &[], &order("ENV-1")).unwrap());
    let got = d.wait_for("the delivery to the peer", || {
        let got = peer.received();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer t0ken-from-the-environment")
    );
    assert_eq!(got[0].header("x-api-key"), Some("key-from-a-file-42"));

    // The journal is where the environment said; `nzela messages` finds it
    // there with the same environment.
    assert!(
        env_journal.is_file(),
        "no journal at {}",
        env_journal.display()
    );
    assert!(!hub.path("data/nzela.db").exists());
    deliveries_in(&d, &id, 1, "delivered");
    let without_env = run_bounded(
        hub.dir(),
        &[],
        &[
            "messages",
            "show",
            &id,
            "--config",
            config.to_str().unwrap(),
        ],
        DEADLINE,
    );
    assert!(!without_env.status.success(), "{without_env:?}");
}

#[test]
fn environment_values_are_numbers_only_where_settings_are_numbers() {
    let hub = Hub::new();
    let inbox = hub.path("in");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s"),
            http_source("orders", ORDERS_PATH, ""),
            format!(
                "\n[sources.inbox]\ntype = \"file\"\npath = {}\nformat = \"json\"\npattern = \"*.json\"\npoll_interval = \"50ms\"\nsettle = \"100ms\"\n",
                lit(&inbox)
            ),
        ]
        .concat(),
    );
    let file = config.to_str().unwrap();
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    // A text setting keeps a value that looks like a number; number and
    // true/false settings read theirs.
    let settings = [
        ("NZELA__SOURCES__INBOX__PATTERN", "2026"),
        ("NZELA__SOURCES__ORDERS__MAX_DEPTH", "3"),
        ("NZELA__DELIVERY__THREADS", "2"),
    ];
    let check = run_bounded(
        hub.dir(),
        &env(&settings),
        &["check", "--config", file],
        DEADLINE,
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");

    // A number setting given what is not a number names the variable; a
    // number out of range is checked as if it were written in the file.
    for (var, value, key, what) in [
        (
            "NZELA__SOURCES__ORDERS__MAX_DEPTH",
            "deep",
            "sources.orders.max_depth",
            "invalid type: string \"deep\"",
        ),
        (
            "NZELA__DELIVERY__NICE",
            "25",
            "delivery.nice",
            "25 is not a nice value",
        ),
    ] {
        let check = run_bounded(
            hub.dir(),
            &env(&[(var, value)]),
            &["check", "--config", file],
            DEADLINE,
        );
        assert_eq!(check.status.code(), Some(78), "{var}={value}: {check:?}");
        assert!(
            check.stderr.lines().any(|l| l.contains(key)
                && l.contains(what)
                && l.contains(&format!("environment variable {var}"))),
            "{var}={value}:\n{}",
            check.stderr
        );
    }

    // The running daemon has them: the file named 2026 is taken, not the
    // *.json one; a body nested deeper than 3 is refused.
    let d = Daemon::start(hub.dir(), &config, &settings, &[]);
    let deep = post_json(d.addr(), ORDERS_PATH, &[], br#"{"a": [[[1]]]}"#).unwrap();
    assert_eq!(deep.status, 400, "{deep:?}");
    accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], br#"{"a": [1]}"#).unwrap());
    let staging = hub.path("staging");
    fs::create_dir_all(&staging).unwrap();
    for name in ["2026", "order.json"] {
        fs::write(staging.join(name), b"{}").unwrap();
        fs::rename(staging.join(name), inbox.join(name)).unwrap();
    }
    d.wait_for("2026 in done/", || {
        inbox.join("done/2026").is_file().then_some(())
    });
    thread::sleep(Duration::from_millis(500));
    assert!(inbox.join("order.json").is_file(), "{}", d.dump());
}

// ---------------------------------------------------------------------------
// 11. JSON logs

#[test]
fn json_logs_are_objects_that_name_the_message_and_route() {
    let hub = Hub::new();
    let customs = hub.path("out/customs");
    let config = hub.config(
        "nzela.toml",
        &[
            top(&hub, "5s").replace(
                "level = \"info\"",
                "level = \"info,nzela_core=debug,nzela_connectors=debug\"",
            ),
            http_source("marketplace_orders", ORDERS_PATH, ""),
            file_outbox("customs_outbox", &customs, "{{ message_id }}.xml"),
            route(
                "order_to_customs",
                "\"marketplace_orders\"",
                ASYCUDA_MAPPING,
                "\"customs_outbox\"",
            ),
        ]
        .concat(),
    );
    // The file says text; the switch says json.
    let d = Daemon::start(hub.dir(), &config, &[], &["--log-format", "json"]);
    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("LOG-1")).unwrap());
    let has = |lines: &[Value], message: &str| {
        lines
            .iter()
            .any(|l| l["message"] == message && l["message_id"] == json!(id))
    };
    let parse = |lines: Vec<String>| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
                assert!(v.is_object(), "a log line that is not an object: {l}");
                assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
                v
            })
            .collect()
    };
    d.wait_for("the delivered line", || {
        has(&parse(d.stderr()), "delivered").then_some(())
    });
    let lines = parse(d.stderr());
    parse(d.stdout());

    for message in ["accepted", "mapped", "written", "delivered"] {
        assert!(
            has(&lines, message),
            "no \"{message}\" line with the message id\n{}",
            d.dump()
        );
    }
    for l in &lines {
        let text = l.to_string();
        if text.contains(&id) {
            assert_eq!(
                l["message_id"],
                json!(id),
                "a line about the message without its id: {text}"
            );
        }
        if l.get("delivery_id").is_some() {
            assert_eq!(
                l["route"],
                json!("order_to_customs"),
                "a line about a delivery without its route: {text}"
            );
            assert_eq!(l["destination"], json!("customs_outbox"), "{text}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "listening" && l["address"] == json!(d.addr().to_string())),
        "{}",
        d.dump()
    );
}

#[test]
fn one_daemon_per_journal_and_the_lock_never_touches_the_journal() {
    let hub = Hub::new();
    let outbox = hub.path("out");
    // A journal whose own name ends in `.lock`: its lock file is beside
    // it, never the journal itself.
    let text = format!(
        "shutdown_timeout = \"3s\"\n\n[journal]\npath = {}\n{}{}{}",
        lit(&hub.path("data/orders.lock")),
        http_source("orders", ORDERS_PATH, ""),
        file_outbox("customs", &outbox, "{{ message_id }}.xml"),
        route("to_customs", "[\"orders\"]", ASYCUDA_MAPPING, "\"customs\""),
    );
    let config = hub.config("nzela.toml", &text);
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    let id = accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("LOCK-1")).unwrap());
    d.wait_for("the declaration", || {
        (folder(&outbox).0.len() == 1).then_some(())
    });

    // A second daemon on the same journal is refused, and changes nothing.
    let second = d.nzela(&["run"]);
    assert_ne!(second.status.code(), Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains("another nzela is running"),
        "{}",
        second.stderr
    );
    let shown = d.show(&id).expect("the message is still in the journal");
    assert_eq!(shown["deliveries"][0]["state"], "delivered", "{shown}");

    // Stopped and started again, the journal still holds the message.
    let (status, _) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    d.restart();
    let shown = d.show("LOCK-1").expect("the message survives a restart");
    assert_eq!(shown["id"], id.as_str(), "{shown}");
    assert!(hub.path("data/orders.lock.lock").exists());
}

// ---------------------------------------------------------------------------
// 12. Under a service manager: systemd, logs, pipes

/// One endpoint feeding one outbox, with `shutdown_timeout` and `listen`.
fn small_hub(hub: &Hub, shutdown_timeout: &str, listen: &str) -> PathBuf {
    let text = [
        top(hub, shutdown_timeout),
        http_source("orders", ORDERS_PATH, "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{listen}\""),
        ),
        file_outbox("customs", &hub.path("out"), "{{ message_id }}.xml"),
        route("to_customs", "[\"orders\"]", ASYCUDA_MAPPING, "\"customs\""),
    ]
    .concat();
    hub.config("nzela.toml", &text)
}

#[test]
fn a_half_sent_request_does_not_hold_the_stop() {
    let hub = Hub::new();
    let config = small_hub(&hub, "10s", "127.0.0.1:0");
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    let mut half = std::net::TcpStream::connect(d.addr()).unwrap();
    half.write_all(b"POST /in/marketplace/orders HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // The head is with the server before the signal.
    assert_eq!(
        request(d.addr(), "GET", "/health", &[], Body::None)
            .unwrap()
            .status,
        200
    );
    let (status, took) = d.signal_and_wait("-TERM", Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    let lines = d.stderr();
    assert!(
        !lines.iter().any(|l| l.contains("did not stop in time")),
        "{}",
        d.dump()
    );
}

/// Runs `nzela ARGS` in `dir` with its standard output a pipe whose reader
/// has already gone, as `nzela ... | head -1` once head has its line.
fn into_closed_pipe(dir: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    nzela_command(dir, &[])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("cannot run nzela")
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly_with_success() {
    let hub = Hub::new();
    let config = small_hub(&hub, "5s", "127.0.0.1:0");
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    for n in 0..3 {
        accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order(&format!("PIPE-{n}"))).unwrap());
    }
    let (status, _) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.dump());

    let config = config.to_str().unwrap();
    let sample = repo_file(SAMPLE_ORDER);
    let asycuda = mapping(ASYCUDA_MAPPING);
    let mappings = root().join("mappings");
    let commands: [&[&str]; 8] = [
        &["messages", "list", "--config", config],
        &["messages", "list", "--json", "--config", config],
        &["messages", "show", "PIPE-1", "--config", config],
        &["messages", "show", "PIPE-1", "--body", "--config", config],
        &["messages", "show", "PIPE-1", "--json", "--config", config],
        &["check", "--config", config],
        &[
            "map",
            "--mapping",
            asycuda.to_str().unwrap(),
            sample.to_str().unwrap(),
        ],
        &["test", mappings.to_str().unwrap()],
    ];
    for args in commands {
        let out = into_closed_pipe(hub.dir(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "nzela {args:?} exited with {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.is_empty(),
            "nzela {args:?} wrote on stderr:\n{stderr}"
        );
    }
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let hub = Hub::new();
    let config = small_hub(&hub, "5s", "127.0.0.1:0");
    // No NO_COLOR in its environment (see nzela_command): whether to
    // colour is nzela's own decision.
    let mut d = Daemon::start(hub.dir(), &config, &[], &[]);
    post_json(d.addr(), ORDERS_PATH, &[], b"{not json").unwrap();
    accepted_id(&post_json(d.addr(), ORDERS_PATH, &[], &order("PLAIN-1")).unwrap());
    d.wait_for("the declaration", || {
        (folder(&hub.path("out")).0.len() == 1).then_some(())
    });
    let (status, _) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    let lines = d.stderr();
    assert!(lines.iter().any(|l| l.contains("WARN")), "{}", d.dump());
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "escape codes in the logs: {coloured:?}"
    );
}

#[test]
fn systemd_is_told_ready_once_health_answers_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;

    let hub = Hub::new();
    // A port known before the start, so that the listener below can ask
    // for /health the moment READY=1 arrives.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let config = small_hub(&hub, "5s", &addr.to_string());
    let socket_path = hub.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(POLL_NOTIFY)).unwrap();
    // Every datagram, with the /health status asked for on receiving it.
    let received: Arc<Mutex<Vec<Notification>>> = Arc::default();
    let listener = {
        let received = received.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let mut buf = [0u8; 4096];
            while start.elapsed() < Duration::from_secs(60) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let health = text.lines().any(|l| l == "READY=1").then(|| {
                    request(addr, "GET", "/health", &[], Body::None)
                        .map(|a| a.status)
                        .unwrap_or(0)
                });
                let stopping = text.lines().any(|l| l == "STOPPING=1");
                received.lock().unwrap().push((text, health));
                if stopping {
                    return;
                }
            }
        })
    };
    let notify_socket = socket_path.to_str().unwrap();
    let mut d = Daemon::start(hub.dir(), &config, &[("NOTIFY_SOCKET", notify_socket)], &[]);
    let ready = d.wait_for("READY=1", || {
        let got = received.lock().unwrap();
        got.iter()
            .find(|(t, _)| t.lines().any(|l| l == "READY=1"))
            .cloned()
    });
    assert_eq!(
        ready.1,
        Some(200),
        "/health when READY=1 arrived: {ready:?}"
    );
    assert!(
        ready.0.lines().any(|l| l.starts_with("STATUS=running")),
        "{ready:?}"
    );
    accepted_id(&post_json(addr, ORDERS_PATH, &[], &order("SD-1")).unwrap());
    // Nothing more until the signal.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(received.lock().unwrap().len(), 1, "{:?}", received.lock());

    let (status, _) = d.signal_and_wait("-TERM", Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", d.dump());
    listener.join().unwrap();
    let got = received.lock().unwrap().clone();
    let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].lines().any(|l| l == "STOPPING=1"), "{texts:?}");
    assert!(
        texts[1].lines().any(|l| l.starts_with("STATUS=stopping")),
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.contains("READY=1")).count(),
        1,
        "{texts:?}"
    );
}

/// How often the notification listener looks at its stop condition.
const POLL_NOTIFY: Duration = Duration::from_millis(100);

/// A datagram sent to `NOTIFY_SOCKET`, and the status `GET /health` got
/// the moment it arrived (when it says `READY=1`; 0 when it failed).
type Notification = (String, Option<u16>);

#[test]
fn check_warns_of_inboxes_and_outboxes_that_share_a_folder_and_its_files() {
    let hub = Hub::new();
    let asycuda = lit(&mapping(ASYCUDA_MAPPING));
    let ubl = lit(&mapping(UBL_MAPPING));
    let config = |first_pattern: &str, second_pattern: &str, second_filename: &str| {
        [
            top(&hub, "5s"),
            format!("\n[sources.orders]\ntype = \"file\"\npath = \"data/in\"\nformat = \"json\"\n{first_pattern}"),
            format!("\n[sources.resent]\ntype = \"file\"\npath = \"./data/in/\"\nformat = \"json\"\n{second_pattern}"),
            "\n[destinations.customs]\ntype = \"file\"\npath = \"data/out\"\nfilename = \"{{ message_id }}.xml\"\n".to_owned(),
            format!("\n[destinations.commerce]\ntype = \"file\"\npath = \"data/out/\"\n{second_filename}"),
            format!("\n[routes.customs]\nfrom = [\"orders\", \"resent\"]\nmapping = {asycuda}\nto = \"customs\"\n"),
            format!("\n[routes.commerce]\nfrom = [\"orders\", \"resent\"]\nmapping = {ubl}\nto = \"commerce\"\n"),
        ]
        .concat()
    };

    // One inbox with no pattern takes every file the other would.
    let text = config(
        "",
        "pattern = \"resent-*.json\"\n",
        "filename = \"{{ message_id }}.xml\"\n",
    );
    let shared = hub.config("shared.toml", &text);
    let file = shared.to_str().unwrap();
    let check = run_bounded(hub.dir(), &[], &["check", "--config", file], DEADLINE);
    // Warnings: the configuration still passes.
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert_reported(
        &check.stderr,
        "warning",
        file,
        line_with(&text, "path = \"./data/in/\""),
        "sources.resent.path",
        "is also the inbox of source \"orders\", with the same files to take",
    );
    assert_reported(
        &check.stderr,
        "warning",
        file,
        line_with(&text, "[destinations.customs]") + 3,
        "destinations.customs.filename",
        "data/out is also the outbox of destination \"commerce\", with the same file names",
    );

    // Patterns that share the files out, and names a delivery makes its
    // own: nothing to warn of.
    let text = config(
        "pattern = \"order-*.json\"\n",
        "pattern = \"resent-*.json\"\n",
        "filename = \"{{ delivery_id }}.xml\"\n",
    );
    let apart = hub.config("apart.toml", &text);
    let check = run_bounded(
        hub.dir(),
        &[],
        &["check", "--config", apart.to_str().unwrap()],
        DEADLINE,
    );
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(!check.stderr.contains("warning"), "{}", check.stderr);
}
