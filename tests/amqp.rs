//! End-to-end tests of the AMQP connector: the real `nzela` binary against
//! the real RabbitMQ of this machine (`amqp://guest:guest@127.0.0.1:5672`,
//! started by `.ci/run` when it is down). No broker is a failure, not a
//! skip.
//!
//! Every test uses queues and exchanges of its own (a random suffix), and
//! deletes them at the end; but the one that runs the example configuration
//! as shipped, whose names are the example's: it reads what nzela publishes
//! through queues of its own, picks out its own order by its number, and
//! deletes only what it created. The broker-restart test stops the broker for
//! everyone: it holds the broker lock ([`broker_lock`]) exclusively, the
//! others share it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Shared by tests that only need the broker up; held alone by the test
/// that restarts it. A lock on a file, so that it also holds between test
/// processes (`cargo nextest` runs each test in a process of its own);
/// released when the test ends and the file is closed.
async fn broker_lock(alone: bool) -> std::fs::File {
    tokio::task::spawn_blocking(move || {
        let path = std::env::temp_dir().join("nzela-tests-rabbitmq.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        if alone {
            file.lock()
        } else {
            file.lock_shared()
        }
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
        file
    })
    .await
    .expect("take the broker lock")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A suffix no other test run uses.
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect() -> Connection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect(BROKER_URL, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!(
                "no RabbitMQ at {BROKER_URL} ({e}): start it with `rabbitmq-server -detached` (.ci/run does)"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The names one test uses, and a channel to the broker to set them up,
/// publish and read.
struct Broker {
    _connection: Connection,
    channel: Channel,
    s: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Broker {
    async fn new() -> Broker {
        Broker::with_suffix(unique()).await
    }

    /// A new connection for the names of suffix `s`.
    async fn with_suffix(s: String) -> Broker {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Broker {
            _connection: connection,
            channel,
            queues: vec![
                format!("t.{s}.orders"),
                format!("t.{s}.rejected"),
                format!("t.{s}.out"),
            ],
            exchanges: vec![format!("t.{s}.dlx"), format!("t.{s}.customs")],
            s,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("t.{}.{what}", self.s)
    }

    /// A durable queue bound to `exchange` with `key`, to read what nzela
    /// publishes there.
    async fn bind_queue(&self, queue: &str, exchange: &str, key: &str) {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        declare_bound(&self.channel, queue, durable, exchange, key).await;
    }

    async fn publish(&self, body: &[u8], message_id: &str, correlation_id: Option<&str>) {
        publish_on(
            &self.channel,
            &self.name("orders"),
            body,
            message_id,
            correlation_id,
        )
        .await
        .expect("publish an order");
    }

    async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    /// Waits for one message on `queue`.
    async fn wait_get(&self, queue: &str, within: Duration) -> lapin::message::BasicGetMessage {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.get(queue).await {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "nothing arrived on {queue} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cleanup(self) {
        for q in &self.queues {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in &self.exchanges {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

async fn publish_on(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    message_id: &str,
    correlation_id: Option<&str>,
) -> Result<(), String> {
    let mut props = BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(c) = correlation_id {
        props = props.with_correlation_id(c.into());
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("nack".to_owned())
    }
}

/// The sample order with its own order number.
fn order(order_id: &str) -> Vec<u8> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/samples/marketplace/order-paid.json"))
            .expect("read the sample order");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("the sample is JSON");
    v["order"]["order_id"] = serde_json::Value::String(order_id.to_owned());
    serde_json::to_vec(&v).expect("serialise")
}

/// The configuration of one test: an AMQP source on `t.S.orders` (with a
/// dead-letter exchange), an AMQP destination on `t.S.customs`.
fn config(b: &Broker, dir: &Path, prefetch: u32, concurrency: u32) -> String {
    let mapping = root().join("mappings/marketplace-order-to-asycuda-export.yaml");
    format!(
        r#"
shutdown_timeout = "5s"

[journal]
path = "{journal}"

[log]
format = "json"
level = "info"

[sources.orders]
type = "amqp"
url = ["amqp://guest:guest@127.0.0.1:1/%2f", "{BROKER_URL}"]
queue = "{orders}"
prefetch = {prefetch}
format = "json"
business_key = "order.order_id"
reconnect_max_backoff = "1s"

[[sources.orders.topology.exchanges]]
name = "{dlx}"
kind = "fanout"

[[sources.orders.topology.queues]]
name = "{orders}"
arguments = {{ "x-queue-type" = "quorum", "x-dead-letter-exchange" = "{dlx}" }}

[[sources.orders.topology.queues]]
name = "{rejected}"

[[sources.orders.topology.bindings]]
queue = "{rejected}"
exchange = "{dlx}"

[destinations.customs]
type = "amqp"
url = "{BROKER_URL}"
exchange = "{customs}"
routing_key = "declaration.export"
concurrency = {concurrency}
reconnect_max_backoff = "1s"
retry = {{ max_attempts = 1000, initial_backoff = "200ms", max_backoff = "1s" }}

[[destinations.customs.topology.exchanges]]
name = "{customs}"
kind = "topic"

[routes.order_to_customs]
from = "orders"
when = 'event == "order.paid"'
mapping = "{mapping}"
to = "customs"
"#,
        journal = dir.join("nzela.db").display(),
        orders = b.name("orders"),
        dlx = b.name("dlx"),
        rejected = b.name("rejected"),
        customs = b.name("customs"),
        mapping = mapping.display(),
    )
}

/// A running `nzela run`, killed when dropped.
struct Nzela {
    child: Child,
    log: PathBuf,
}

impl Nzela {
    /// Starts nzela and waits until its source consumes and its
    /// destination is connected.
    fn start(dir: &Path, config: &str) -> Nzela {
        let n = Nzela::spawn(dir, config);
        n.wait_log(
            |l| {
                l.contains("\"consuming\"")
                    && l.matches("connected to the AMQP broker").count() >= 2
            },
            Duration::from_secs(20),
        );
        n
    }

    /// Starts nzela on `config` (written to `dir/nzela.toml`), in `dir`.
    fn spawn(dir: &Path, config: &str) -> Nzela {
        let path = dir.join("nzela.toml");
        std::fs::write(&path, config).expect("write the configuration");
        Nzela::run(dir, &path, &[])
    }

    /// Starts `nzela run --config CONFIG` in `dir` with these environment
    /// variables, its output to a log file in `dir`.
    fn run(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Nzela {
        let log = dir.join(format!("nzela-{}.log", unique()));
        let out = std::fs::File::create(&log).expect("create the log");
        let err = out.try_clone().expect("clone the log");
        let child = Command::new(env!("CARGO_BIN_EXE_nzela"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start nzela");
        Nzela { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, ok: impl Fn(&str) -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        while !ok(&self.log()) {
            assert!(
                Instant::now() < deadline,
                "nzela's log did not show what was expected within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Nzela {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `nzela messages ARGS --journal dir/nzela.db`, its standard output.
fn messages(dir: &Path, args: &[&str]) -> String {
    try_messages(dir, args).unwrap_or_else(|e| panic!("nzela messages {args:?} failed: {e}"))
}

/// The same, `Err` with its standard error when it fails (not found yet).
fn try_messages(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_nzela"))
        .arg("messages")
        .args(args)
        .arg("--journal")
        .arg(dir.join("nzela.db"))
        .output()
        .expect("run nzela messages");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn text(v: &Option<lapin::types::ShortString>) -> String {
    v.as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// What arrived on an output queue: correlation id → the message ids it
/// came with, and how many messages in all.
#[derive(Default)]
struct Received {
    by_correlation: HashMap<String, HashSet<String>>,
    total: usize,
}

/// Consumes `queue` in the background (acknowledging each message once
/// recorded), reconnecting if the broker goes away.
fn collect(queue: String) -> Arc<Mutex<Received>> {
    let received = Arc::new(Mutex::new(Received::default()));
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok(conn) = Connection::connect(BROKER_URL, ConnectionProperties::default()).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(channel) = conn.create_channel().await else {
                continue;
            };
            let _ = channel
                .basic_qos(500, lapin::options::BasicQosOptions::default())
                .await;
            let Ok(mut consumer) = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Some(Ok(d)) =
                std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await
            {
                {
                    let mut r = r.lock().unwrap();
                    r.total += 1;
                    r.by_correlation
                        .entry(text(d.properties.correlation_id()))
                        .or_default()
                        .insert(text(d.properties.message_id()));
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    received
}

/// Waits until every correlation id in `expected` has arrived.
async fn wait_all(received: &Arc<Mutex<Received>>, expected: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = received.lock().unwrap().by_correlation.len();
        if got >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {expected} declarations arrived within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each correlation id arrived, and every duplicate had the same message
/// id (the delivery id): a delivery published again, not a second one.
fn assert_exactly_once_per_delivery(received: &Received, correlations: &[String]) {
    for c in correlations {
        let ids = received
            .by_correlation
            .get(c)
            .unwrap_or_else(|| panic!("no declaration for {c}"));
        assert_eq!(
            ids.len(),
            1,
            "the order {c} produced declarations with different delivery ids: {ids:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_consumed_from_a_queue_is_published_as_a_declaration() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nzela = Nzela::start(dir.path(), &config(&b, dir.path(), 10, 4));
    // The first URL (port 1) refuses: the second one is used.
    assert!(nzela.log().contains("\"consuming\""));
    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.#").await;

    let order_id = format!("GB-{}", b.s);
    let correlation = format!("corr-{}", b.s);
    let body = order(&order_id);
    b.publish(&body, &format!("m-{}", b.s), Some(&correlation))
        .await;
    let got = b.wait_get(&out, Duration::from_secs(20)).await;
    let p = &got.delivery.properties;
    let delivery_id = text(p.message_id());
    assert!(
        is_uuid(&delivery_id),
        "message_id {delivery_id:?} is not a delivery id"
    );
    assert_eq!(text(p.correlation_id()), correlation);
    assert_eq!(text(p.content_type()), "application/xml");
    assert_eq!(*p.delivery_mode(), Some(2), "the declaration is persistent");
    assert_eq!(got.delivery.routing_key.as_str(), "declaration.export");
    let xml = String::from_utf8_lossy(&got.delivery.data);
    assert!(xml.contains("<ASYCUDA>"), "{xml}");
    assert!(
        xml.contains(&format!(
            "<Commercial_reference_number>{order_id}</Commercial_reference_number>"
        )),
        "{xml}"
    );

    // The journal knows it, by the delivery id and by the order number,
    // with the AMQP properties kept as headers.
    let shown = messages(dir.path(), &["show", &delivery_id, "--json"]);
    assert!(shown.contains(&order_id), "{shown}");
    assert!(shown.contains("delivered"), "{shown}");
    let shown = messages(dir.path(), &["show", &order_id, "--json"]);
    assert!(shown.contains(&delivery_id), "{shown}");
    assert!(
        shown.contains(&format!("m-{}", b.s)),
        "the message_id header is kept: {shown}"
    );

    // The same AMQP message_id again: a duplicate, acknowledged, not sent on.
    b.publish(&body, &format!("m-{}", b.s), Some(&correlation))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        b.get(&out).await.is_none(),
        "a duplicate was published again"
    );
    // Acknowledged: nothing is left in the input queue.
    assert!(b.get(&b.name("orders")).await.is_none());

    nzela.stop();
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_dead_lettered_and_kept_as_rejected() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nzela = Nzela::start(dir.path(), &config(&b, dir.path(), 10, 4));
    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.#").await;

    b.publish(b"{\"order\": not json", &format!("bad-{}", b.s), None)
        .await;
    let dead = b
        .wait_get(&b.name("rejected"), Duration::from_secs(20))
        .await;
    assert_eq!(dead.delivery.data, b"{\"order\": not json");
    assert_eq!(
        text(dead.delivery.properties.message_id()),
        format!("bad-{}", b.s)
    );

    let rejected = messages(dir.path(), &["list", "--state", "rejected", "--json"]);
    assert!(rejected.contains("rejected"), "{rejected}");
    let id = serde_json::from_str::<serde_json::Value>(&rejected)
        .ok()
        .and_then(|v| {
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|m| m.get("id").or_else(|| m.get("message_id")))
                .and_then(|i| i.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no rejected message listed: {rejected}"));
    let shown = messages(dir.path(), &["show", &id, "--json"]);
    assert!(
        shown.contains("invalid JSON"),
        "the reason is kept: {shown}"
    );

    // The next good message still flows.
    let order_id = format!("GOOD-{}", b.s);
    b.publish(&order(&order_id), &format!("good-{}", b.s), None)
        .await;
    let got = b.wait_get(&out, Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.delivery.data).contains(&order_id));
    assert!(
        b.get(&b.name("rejected")).await.is_none(),
        "only the bad one was dead-lettered"
    );

    nzela.stop();
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_declaration_is_retried_until_a_queue_is_bound() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nzela = Nzela::start(dir.path(), &config(&b, dir.path(), 10, 4));

    let order_id = format!("NOROUTE-{}", b.s);
    b.publish(&order(&order_id), &format!("m-{}", b.s), None)
        .await;
    // No queue is bound to the customs exchange: the broker returns the
    // message, and the delivery waits for a retry with the reason shown.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = try_messages(dir.path(), &["show", &order_id, "--json"]).unwrap_or_default();
        if shown.contains("unroutable") {
            assert!(!shown.contains("\"delivered\""), "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no unroutable error shown: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.export").await;
    let got = b.wait_get(&out, Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.delivery.data).contains(&order_id));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = messages(dir.path(), &["show", &order_id, "--json"]);
        if shown.contains("delivered") {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    nzela.stop();
    b.cleanup().await;
}

/// A TCP proxy to the broker, for a destination to lose its broker
/// without the broker stopping: `cut` closes its connections and refuses
/// new ones (counting them), `restore` lets them through again.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (u, r, l) = (up.clone(), refused.clone(), links.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::Acquire) {
                    r.fetch_add(1, Ordering::AcqRel);
                    drop(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            refused,
            links,
            task,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_wait_for_an_unreachable_broker_without_using_up_their_attempts() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start().await;
    // The destination reaches the broker through the proxy, and gives up
    // after 2 attempts: a broker away for a few seconds would dead-letter
    // every delivery if waiting for it counted.
    let config = config(&b, dir.path(), 10, 4)
        .replacen(
            &format!("[destinations.customs]\ntype = \"amqp\"\nurl = \"{BROKER_URL}\""),
            &format!("[destinations.customs]\ntype = \"amqp\"\nurl = \"{}\"", proxy.url()),
            1,
        )
        .replace(
            "retry = { max_attempts = 1000, initial_backoff = \"200ms\", max_backoff = \"1s\" }",
            "retry = { max_attempts = 2, initial_backoff = \"100ms\", max_backoff = \"200ms\", max_age = \"1s\" }",
        );
    assert!(config.contains(&proxy.url()) && config.contains("max_attempts = 2"));
    let mut nzela = Nzela::start(dir.path(), &config);
    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.#").await;
    let received = collect(out.clone());

    proxy.cut();
    nzela.wait_log(
        |l| l.contains("lost the AMQP broker"),
        Duration::from_secs(20),
    );
    let correlations = publish_orders(&b, 0, 5).await;
    // Each delivery says once that it waits for the broker.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..5 {
        loop {
            let shown = try_messages(dir.path(), &["show", &format!("K-{}-{i}", b.s), "--json"])
                .unwrap_or_default();
            if shown.contains("\"waiting\"") {
                assert_eq!(shown.matches("\"waiting\"").count(), 1, "{shown}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the delivery does not wait: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The broker stays away while the destination tries to reconnect a few
    // times (over a second), past max_attempts and max_age.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.refused() < 4 {
        assert!(
            Instant::now() < deadline,
            "the destination stopped trying to reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = messages(dir.path(), &["list", "--state", "dead", "--json"]);
    assert!(
        !dead.contains("K-"),
        "deliveries were dead-lettered: {dead}"
    );

    proxy.restore();
    wait_all(&received, 5, Duration::from_secs(30)).await;
    assert_exactly_once_per_delivery(&received.lock().unwrap(), &correlations);
    let dead = messages(dir.path(), &["list", "--state", "dead", "--json"]);
    assert!(
        !dead.contains("K-"),
        "deliveries were dead-lettered: {dead}"
    );
    for i in 0..5 {
        let shown = messages(dir.path(), &["show", &format!("K-{}-{i}", b.s), "--json"]);
        assert!(
            !shown.contains("retry_scheduled"),
            "an attempt was counted: {shown}"
        );
        assert_eq!(shown.matches("\"waiting\"").count(), 1, "{shown}");
    }

    nzela.stop();
    b.cleanup().await;
}

/// Publishes `n` orders, each with its own order number, message_id and
/// correlation id; returns the correlation ids.
async fn publish_orders(b: &Broker, from: usize, n: usize) -> Vec<String> {
    let mut correlations = Vec::with_capacity(n);
    let queue = b.name("orders");
    let mut pending = Vec::new();
    for i in from..from + n {
        let c = format!("c-{}-{i}", b.s);
        let body = order(&format!("K-{}-{i}", b.s));
        let props = BasicProperties::default()
            .with_message_id(format!("m-{}-{i}", b.s).into())
            .with_correlation_id(c.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = b
            .channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .expect("publish");
        pending.push(confirm);
        if pending.len() >= 200 {
            for c in pending.drain(..) {
                assert!(c.await.expect("confirm").is_ack());
            }
        }
        correlations.push(c);
    }
    for c in pending {
        assert!(c.await.expect("confirm").is_ack());
    }
    correlations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_thousands_of_messages_loses_none() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&b, dir.path(), 200, 32);
    // Declares the topology, then is stopped: the orders wait in the queue.
    let mut first = Nzela::start(dir.path(), &config);
    first.stop();
    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.#").await;
    let received = collect(out.clone());

    const N: usize = 3000;
    let correlations = publish_orders(&b, 0, N).await;
    let mut nzela = Nzela::start(dir.path(), &config);
    // Killed while orders are consumed and declarations published.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().total < N / 5 {
        assert!(Instant::now() < deadline, "nothing flows before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nzela.kill9();
    let before = received.lock().unwrap().total;
    assert!(before < N, "everything was done before the kill ({before})");

    let mut nzela = Nzela::start(dir.path(), &config);
    wait_all(&received, N, Duration::from_secs(60)).await;
    {
        let r = received.lock().unwrap();
        eprintln!(
            "killed after {before} declarations; {} received for {N} orders after the restart",
            r.total
        );
        assert_exactly_once_per_delivery(&r, &correlations);
    }
    nzela.stop();
    b.cleanup().await;
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_the_middle_of_a_stream_loses_nothing() {
    let _alone = broker_lock(true).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&b, dir.path(), 50, 8);
    let mut nzela = Nzela::start(dir.path(), &config);
    let (out, customs) = (b.name("out"), b.name("customs"));
    b.bind_queue(&out, &customs, "declaration.#").await;
    let received = collect(out.clone());

    const HALF: usize = 300;
    let mut correlations = publish_orders(&b, 0, HALF).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().total < 20 {
        assert!(
            Instant::now() < deadline,
            "nothing flows before the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(1));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await
    .unwrap();
    nzela.wait_log(
        |l| l.contains("lost the AMQP broker") && l.contains("the AMQP broker is back"),
        Duration::from_secs(30),
    );
    // The same nzela goes on: the second half is published after the restart.
    let b2 = Broker::with_suffix(b.s.clone()).await;
    correlations.extend(publish_orders(&b2, HALF, HALF).await);
    wait_all(&received, 2 * HALF, Duration::from_secs(60)).await;
    assert_exactly_once_per_delivery(&received.lock().unwrap(), &correlations);
    assert!(
        nzela.child.try_wait().unwrap().is_none(),
        "nzela exited during the broker restart"
    );
    nzela.stop();
    b2.cleanup().await;
}

#[test]
fn the_example_configuration_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_nzela"))
        .args(["check", "--config", "config/examples/rabbitmq.toml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the queue exists (a passive declare, on a channel of its own:
/// a missing queue closes it).
async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    let Ok(channel) = connection.create_channel().await else {
        return false;
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = channel.close(200, "done".into()).await;
    exists
}

/// Whether the exchange exists, as [`queue_exists`].
async fn exchange_exists(connection: &Connection, exchange: &str) -> bool {
    let Ok(channel) = connection.create_channel().await else {
        return false;
    };
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..lapin::options::ExchangeDeclareOptions::default()
    };
    let exists = channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = channel.close(200, "done".into()).await;
    exists
}

/// A queue of the test's own, gone with its connection, bound to
/// `exchange` with `key`.
async fn own_queue(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    let own = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    declare_bound(channel, queue, own, exchange, key).await;
}

/// Declares `queue` with `options` and binds it to `exchange` with `key`.
async fn declare_bound(
    channel: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    exchange: &str,
    key: &str,
) {
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare the queue {queue}: {e}"));
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("bind the queue {queue} to {exchange}: {e}"));
}

/// Waits for the message on `queue` whose body contains `needle` (others,
/// from other runs on the same exchange, are dropped).
async fn wait_for(
    channel: &Channel,
    queue: &str,
    needle: &str,
    within: Duration,
) -> lapin::message::BasicGetMessage {
    let deadline = Instant::now() + within;
    loop {
        while let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            if String::from_utf8_lossy(&m.delivery.data).contains(needle) {
                return m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing with {needle} arrived on {queue} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies the folder `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder");
    for entry in std::fs::read_dir(from).expect("read a folder") {
        let entry = entry.expect("a folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// The queues and exchanges `config/examples/rabbitmq.toml` declares.
const EXAMPLE_QUEUES: [&str; 4] = [
    "marketplace.orders",
    "marketplace.orders.rejected",
    "customs.declarations",
    "commerce.orders",
];
const EXAMPLE_EXCHANGES: [&str; 4] = ["marketplace", "marketplace.dlx", "customs", "commerce"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_runs_as_shipped() {
    let _shared = broker_lock(false).await;
    let s = unique();
    let connection = connect().await;
    // What the example declares is left as found: what it creates here is
    // deleted at the end, what was there before is not.
    let mut created_queues = Vec::new();
    for q in EXAMPLE_QUEUES {
        if !queue_exists(&connection, q).await {
            created_queues.push(q);
        }
    }
    let mut created_exchanges = Vec::new();
    for x in EXAMPLE_EXCHANGES {
        if !exchange_exists(&connection, x).await {
            created_exchanges.push(x);
        }
    }
    // The example's relative paths (mappings, journal) are from the folder
    // nzela runs in, as from the repository root.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("config"), &dir.path().join("config"));
    copy_dir(&root().join("mappings"), &dir.path().join("mappings"));
    let mut nzela = Nzela::run(
        dir.path(),
        Path::new("config/examples/rabbitmq.toml"),
        &[("NZELA_AMQP_URL", BROKER_URL)],
    );
    nzela.wait_log(
        |l| l.contains("consuming") && l.matches("connected to the AMQP broker").count() >= 3,
        Duration::from_secs(30),
    );

    let channel = connection.create_channel().await.expect("open a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let (customs, commerce) = (format!("t.{s}.customs-out"), format!("t.{s}.commerce-out"));
    own_queue(&channel, &customs, "customs", "declaration.export").await;
    own_queue(&channel, &commerce, "commerce", "order.ubl").await;

    // The sample order, with an order number of its own: other runs may
    // publish to the same exchanges.
    let order_id = format!("GB-EX-{s}");
    publish_on(
        &channel,
        "marketplace.orders",
        &order(&order_id),
        &format!("m-{s}"),
        Some(&format!("c-{s}")),
    )
    .await
    .expect("publish the order");

    let declaration = wait_for(&channel, &customs, &order_id, Duration::from_secs(30)).await;
    let d = &declaration.delivery;
    assert_eq!(d.exchange.as_str(), "customs");
    assert_eq!(d.routing_key.as_str(), "declaration.export");
    assert!(
        is_uuid(&text(d.properties.message_id())),
        "{:?}",
        d.properties
    );
    assert_eq!(text(d.properties.content_type()), "application/xml");
    assert_eq!(text(d.properties.correlation_id()), format!("c-{s}"));
    let xml = String::from_utf8_lossy(&d.data);
    assert!(xml.contains("<ASYCUDA>"), "{xml}");

    let ubl = wait_for(&channel, &commerce, &order_id, Duration::from_secs(30)).await;
    let u = &ubl.delivery;
    assert_eq!(u.exchange.as_str(), "commerce");
    assert_eq!(u.routing_key.as_str(), "order.ubl");
    assert!(
        is_uuid(&text(u.properties.message_id())),
        "{:?}",
        u.properties
    );
    assert_ne!(
        text(u.properties.message_id()),
        text(d.properties.message_id()),
        "each delivery has its own id"
    );
    assert_eq!(text(u.properties.content_type()), "application/xml");
    let xml = String::from_utf8_lossy(&u.data);
    assert!(xml.contains("<Order"), "{xml}");

    nzela.stop();
    assert!(
        dir.path().join("data/nzela-rabbitmq.db").is_file(),
        "the journal is where the example says"
    );
    for q in created_queues {
        let _ = channel
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    for x in created_exchanges {
        let _ = channel
            .exchange_delete(x.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_exists_with_other_arguments_is_reported_as_such_until_fixed() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let orders = b.name("orders");
    // The queue exists, classic; the configuration declares it quorum.
    b.channel
        .queue_declare(
            orders.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the queue first");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&b, dir.path(), 10, 4).replace(
        "level = \"info\"",
        "level = \"info,nzela_connectors=debug\"",
    );
    let mut nzela = Nzela::spawn(dir.path(), &config);
    // Said once, at error level, with the broker's reply; every further
    // attempt (each second) only at debug level.
    nzela.wait_log(
        |l| {
            l.matches("still failing to connect to the AMQP broker")
                .count()
                >= 3
        },
        Duration::from_secs(30),
    );
    let log = nzela.log();
    let mismatch: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("does not match the configuration"))
        .collect();
    assert_eq!(mismatch.len(), 1, "{log}");
    let line = mismatch[0];
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(
        line.contains(&format!(
            "the broker refuses to declare the queue \\\"{orders}\\\": 406 PRECONDITION_FAILED - inequivalent arg"
        )),
        "{line}"
    );
    assert!(
        !log.contains("cannot reach the AMQP broker"),
        "a refusal is not an unreachable broker: {log}"
    );
    assert!(
        !log.contains("Channel closed"),
        "the AMQP client's own errors are not logged: {log}"
    );

    // The operator deletes the queue: nzela declares it and consumes.
    b.channel
        .queue_delete(orders.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
    nzela.wait_log(
        |l| l.contains("\"consuming\"") && l.contains("the AMQP broker is back"),
        Duration::from_secs(30),
    );
    nzela.stop();
    b.cleanup().await;
}

/// The broker's id of the connection named `name` (`rabbitmqctl
/// list_connections`: one line a connection, its pid then its client
/// properties, where `{"connection_name","NAME"}`).
fn connection_pid(name: &str) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--silent"])
        .output()
        .expect("run rabbitmqctl");
    let named = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&named))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_is_logged_with_its_reason() {
    let _shared = broker_lock(false).await;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    // A source name of its own: the broker knows the connection by it.
    let source = format!("orders_{}", b.s.replace('-', "_"));
    let config = config(&b, dir.path(), 10, 4)
        .replace("[sources.orders]", &format!("[sources.{source}]"))
        .replace("[[sources.orders.", &format!("[[sources.{source}."))
        .replace("from = \"orders\"", &format!("from = \"{source}\""));
    let mut nzela = Nzela::start(dir.path(), &config);
    let connection = format!("nzela {source}");
    let reason = format!("test {}", b.s);
    let closing = reason.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            if let Some(pid) = connection_pid(&connection) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the broker does not list {connection}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        rabbitmqctl(&["close_connection", &pid, &closing]);
    })
    .await
    .unwrap();
    nzela.wait_log(
        |l| l.contains("the AMQP broker is back"),
        Duration::from_secs(30),
    );
    let log = nzela.log();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lost the AMQP broker"))
        .collect();
    assert_eq!(lost.len(), 1, "{log}");
    assert!(
        lost[0].contains(&format!(
            "the connection was closed: 320 CONNECTION_FORCED - {reason}"
        )),
        "{}",
        lost[0]
    );
    nzela.stop();
    b.cleanup().await;
}
