//! Real folders in a temporary directory, a real SQLite journal, and the
//! poller running on short intervals.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nzela_core::journal::{Inspector, Journal, ListFilter, MessageSummary, SqliteJournal};
use nzela_core::runtime::router::Feed;
use nzela_core::runtime::{CancellationToken, Destination, Intake, Outbound, SendOutcome};
use serde_json::{Value as Json, json};
use tokio::task::JoinHandle;

use super::{DestinationConfig, FileDestination, FileSource, SourceConfig, move_unique, numbered};

/// Poll and settle short enough for tests to be quick, long enough to
/// tell a file being written from a finished one.
const POLL: &str = "50ms";
const SETTLE: &str = "300ms";

struct Inbox {
    dir: tempfile::TempDir,
    db: PathBuf,
    journal: Arc<SqliteJournal>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Inbox {
    fn inbox(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    fn done(&self) -> PathBuf {
        self.inbox().join("done")
    }

    fn errors(&self) -> PathBuf {
        self.inbox().join("error")
    }

    /// Writes a file elsewhere, then renames it in: the way to drop one.
    fn drop_file(&self, name: &str, content: &[u8]) {
        let staging = self.dir.path().join("staging");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join(name), content).unwrap();
        fs::rename(staging.join(name), self.inbox().join(name)).unwrap();
    }

    fn messages(&self) -> Vec<MessageSummary> {
        let filter = ListFilter {
            limit: 100,
            ..Default::default()
        };
        Inspector::open(&self.db).unwrap().list(&filter).unwrap()
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the source did not stop")
                .unwrap();
        }
    }
}

async fn start(extra: Json) -> Inbox {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let journal = Arc::new(SqliteJournal::open(&db).unwrap());
    let mut settings = json!({"path": dir.path().join("in"), "format": "json", "poll_interval": POLL, "settle": SETTLE});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let config: SourceConfig = serde_json::from_value(settings).unwrap();
    let source = FileSource::build("inbox", &config).await.unwrap();
    let intake = Intake::new(
        journal.clone() as Arc<dyn Journal>,
        Feed::default(),
        CancellationToken::new(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(intake, shutdown.clone()));
    Inbox {
        dir,
        db,
        journal,
        shutdown,
        task: Some(task),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn a_complete_file_is_accepted_then_moved_to_done() {
    let mut inbox = start(json!({"business_key": "order.order_id"})).await;
    let body = br#"{"order": {"order_id": "GB-7"}}"#;
    inbox.drop_file("order-7.json", body);
    let done = inbox.done().join("order-7.json");
    wait_for("the file in done/", || done.exists()).await;
    assert!(!inbox.inbox().join("order-7.json").exists());
    let messages = inbox.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].source, "inbox");
    assert_eq!(messages[0].business_key.as_deref(), Some("GB-7"));
    let detail = Inspector::open(&inbox.db)
        .unwrap()
        .show(&messages[0].id)
        .unwrap();
    assert_eq!(detail.body, body);
    assert_eq!(
        detail.headers,
        [("file".to_owned(), "order-7.json".to_owned())]
    );
    assert_eq!(detail.content_type.as_deref(), Some("application/json"));
    assert_eq!(inbox.journal.received(10).await.unwrap().len(), 1);
    inbox.stop().await;
}

#[tokio::test]
async fn a_file_still_being_written_is_left_until_it_settles() {
    // Writes every 100ms, with six times that as the settle time: a slow
    // test machine does not make a pause look like the end of the file.
    let mut inbox = start(json!({"settle": "600ms"})).await;
    let path = inbox.inbox().join("big.json");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(b"[").unwrap();
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.write_all(format!("{i},").as_bytes()).unwrap();
        assert!(
            path.exists(),
            "taken while still being written (after {} writes)",
            i + 1
        );
        assert!(names(&inbox.done()).is_empty());
    }
    f.write_all(b"12]").unwrap();
    drop(f);
    wait_for("the file in done/", || {
        inbox.done().join("big.json").exists()
    })
    .await;
    let messages = inbox.messages();
    assert_eq!(messages.len(), 1);
    let detail = Inspector::open(&inbox.db)
        .unwrap()
        .show(&messages[0].id)
        .unwrap();
    assert_eq!(detail.body, b"[0,1,2,3,4,5,6,7,8,9,10,11,12]");
    inbox.stop().await;
}

#[tokio::test]
async fn an_empty_file_goes_to_error_with_its_reason() {
    let mut inbox = start(json!({})).await;
    inbox.drop_file("empty.json", b"");
    let note = inbox.errors().join("empty.json.error");
    wait_for("the .error note", || note.exists()).await;
    assert!(inbox.errors().join("empty.json").exists());
    assert_eq!(fs::read_to_string(note).unwrap(), "empty file\n");
    assert!(inbox.messages().is_empty());
    inbox.stop().await;
}

#[tokio::test]
async fn a_csv_file_with_nothing_in_it_goes_to_error_with_its_reason() {
    let mut inbox = start(json!({"format": "csv"})).await;
    inbox.drop_file("blank.csv", b"\r\n\r\n");
    inbox.drop_file("header-only.csv", b"sku,qty\r\n");
    let note = inbox.errors().join("blank.csv.error");
    wait_for("the .error note", || note.exists()).await;
    assert!(inbox.errors().join("blank.csv").exists());
    assert_eq!(
        fs::read_to_string(note).unwrap(),
        "invalid CSV at line 3, column 1: empty document, expected a header row\n"
    );
    // A header alone is a document of no records, as `[]` is in JSON.
    wait_for("header-only.csv in done/", || {
        inbox.done().join("header-only.csv").exists()
    })
    .await;
    assert_eq!(inbox.messages().len(), 1);
    inbox.stop().await;
}

#[tokio::test]
async fn a_malformed_file_goes_to_error_with_the_position() {
    let mut inbox = start(json!({})).await;
    inbox.drop_file("bad.json", b"{\n  \"a\": 1,\n  \"b\": ]\n}\n");
    let note = inbox.errors().join("bad.json.error");
    wait_for("the .error note", || note.exists()).await;
    let text = fs::read_to_string(note).unwrap();
    assert!(
        text.starts_with("invalid JSON at line 3, column 8: "),
        "{text}"
    );
    inbox.stop().await;
}

#[tokio::test]
async fn a_file_over_max_size_goes_to_error() {
    let mut inbox = start(json!({"max_size": "1KiB"})).await;
    inbox.drop_file("huge.json", format!("[{}0]", "0,".repeat(2000)).as_bytes());
    let note = inbox.errors().join("huge.json.error");
    wait_for("the .error note", || note.exists()).await;
    let text = fs::read_to_string(note).unwrap();
    assert_eq!(text, "file is 3.9 KiB, over the limit of 1 KiB\n");
    inbox.stop().await;
}

#[tokio::test]
async fn one_bad_file_does_not_hold_back_the_others() {
    let mut inbox = start(json!({})).await;
    inbox.drop_file("a-bad.json", b"{oops");
    inbox.drop_file("b-good.json", b"{}");
    inbox.drop_file("c-good.json", b"[]");
    wait_for("both good files in done/", || {
        names(&inbox.done()) == ["b-good.json", "c-good.json"]
    })
    .await;
    wait_for("the bad file in error/", || {
        names(&inbox.errors()) == ["a-bad.json", "a-bad.json.error"]
    })
    .await;
    assert_eq!(inbox.messages().len(), 2);
    inbox.stop().await;
}

#[tokio::test]
async fn hidden_files_and_files_not_matching_the_pattern_are_left_alone() {
    let mut inbox = start(json!({"pattern": "*.json"})).await;
    inbox.drop_file(".partial.json", b"{}");
    inbox.drop_file("notes.txt", b"{}");
    inbox.drop_file("order.json", b"{}");
    wait_for("order.json in done/", || {
        inbox.done().join("order.json").exists()
    })
    .await;
    // Several more polls: the others are still there, untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(inbox.inbox().join(".partial.json").exists());
    assert!(inbox.inbox().join("notes.txt").exists());
    assert_eq!(names(&inbox.done()), ["order.json"]);
    assert!(names(&inbox.errors()).is_empty());
    assert_eq!(inbox.messages().len(), 1);
    inbox.stop().await;
}

#[tokio::test]
async fn a_file_read_again_after_a_crash_is_a_duplicate() {
    let mut inbox = start(json!({})).await;
    inbox.drop_file("order.json", b"{\"n\": 1}");
    let done = inbox.done().join("order.json");
    wait_for("the file in done/", || done.exists()).await;
    // As if the hub had stopped after the commit, before the move: the
    // same file (same name, size and time) is in the inbox again.
    let again = inbox.inbox().join("order.json");
    fs::copy(&done, &again).unwrap();
    let mtime = fs::metadata(&done).unwrap().modified().unwrap();
    fs::File::options()
        .write(true)
        .open(&again)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    wait_for("the second copy in done/", || {
        inbox.done().join("order-1.json").exists()
    })
    .await;
    assert_eq!(names(&inbox.done()), ["order-1.json", "order.json"]);
    assert_eq!(
        inbox.messages().len(),
        1,
        "the resent file was journaled again"
    );
    // A new file under the same name is a new message.
    inbox.drop_file("order.json", b"{\"n\": 2}");
    wait_for("the third file in done/", || {
        inbox.done().join("order-2.json").exists()
    })
    .await;
    assert_eq!(inbox.messages().len(), 2);
    inbox.stop().await;
}

#[tokio::test]
async fn a_file_with_the_business_key_of_an_earlier_one_is_a_duplicate() {
    let mut inbox = start(json!({"business_key": "order.order_id"})).await;
    inbox.drop_file("first.json", br#"{"order": {"order_id": "GB-9"}}"#);
    wait_for("the first file in done/", || {
        inbox.done().join("first.json").exists()
    })
    .await;
    // The same order again, under another name and with other bytes.
    inbox.drop_file(
        "again.json",
        br#"{"order": {"order_id": "GB-9", "note": "resent"}}"#,
    );
    inbox.drop_file("other.json", br#"{"order": {"order_id": "GB-10"}}"#);
    wait_for("both later files in done/", || {
        names(&inbox.done()).len() == 3
    })
    .await;
    let mut keys: Vec<Option<String>> = inbox
        .messages()
        .into_iter()
        .map(|m| m.business_key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [Some("GB-10".to_owned()), Some("GB-9".to_owned())],
        "the resent order was journaled again"
    );
    // Routed once: only the first and the other order wait for the router.
    assert_eq!(inbox.journal.received(10).await.unwrap().len(), 2);
    inbox.stop().await;
}

#[tokio::test]
async fn a_file_stays_in_the_inbox_when_the_journal_cannot_take_it() {
    let mut inbox = start(json!({})).await;
    inbox.journal.close().await;
    inbox.drop_file("order.json", b"{}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(inbox.inbox().join("order.json").exists());
    assert!(names(&inbox.done()).is_empty());
    assert!(names(&inbox.errors()).is_empty());
    inbox.stop().await;
}

#[test]
fn moves_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("to");
    fs::create_dir(&to).unwrap();
    for i in 0..3 {
        let from = dir.path().join("order.json");
        fs::write(&from, format!("{i}")).unwrap();
        move_unique(&from, &to, "order.json").unwrap();
    }
    assert_eq!(names(&to), ["order-1.json", "order-2.json", "order.json"]);
    assert_eq!(fs::read_to_string(to.join("order.json")).unwrap(), "0");
    assert_eq!(numbered("README", 3), "README-3");
    assert_eq!(numbered("a.tar.gz", 1), "a.tar-1.gz");
}

#[tokio::test]
async fn done_or_error_cannot_be_the_inbox() {
    let tmp = tempfile::tempdir().unwrap();
    let config: SourceConfig =
        serde_json::from_value(json!({"path": tmp.path(), "format": "json", "done": tmp.path()}))
            .unwrap();
    let e = FileSource::build("inbox", &config).await.unwrap_err();
    assert!(e.starts_with("`done` is the inbox itself"), "{e}");
}

#[test]
fn source_settings_have_defaults_and_are_checked() {
    let c: SourceConfig =
        serde_json::from_value(json!({"path": "data/in", "format": "csv"})).unwrap();
    assert_eq!(c.done_dir(), Path::new("data/in/done"));
    assert_eq!(c.error_dir(), Path::new("data/in/error"));
    assert_eq!(c.poll_interval.get(), Duration::from_secs(1));
    assert_eq!(c.settle.get(), Duration::from_secs(1));
    assert_eq!(c.max_size, crate::common::ByteSize::mib(10));
    let bad = |v: Json| {
        serde_json::from_value::<SourceConfig>(v)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(json!({"path": "in", "format": "json", "patern": "*"}))
            .contains("unknown field `patern`")
    );
    assert!(bad(json!({"path": "in", "format": "json", "pattern": "a/*"})).contains("`pattern`"));
    assert!(
        bad(json!({"path": "in", "format": "json", "poll_interval": 0}))
            .contains("`poll_interval`")
    );
    assert!(
        bad(json!({"path": "in", "format": "json", "settle": "soon"}))
            .contains("\"soon\" is not a duration")
    );
}

// --- the outbox ---------------------------------------------------------

fn delivery() -> Outbound {
    Outbound {
        delivery_id: "0193a1b2-0000-7000-8000-00000000d001".into(),
        message_id: "0193a1b2-0000-7000-8000-00000000a001".into(),
        route: "order_to_customs".into(),
        destination: "customs_outbox".into(),
        attempt: 1,
        body: b"<Declaration>1</Declaration>".to_vec(),
        content_type: Some("application/xml".into()),
        extension: "xml".into(),
        business_key: Some("GB-7".into()),
        correlation_id: None,
        received_at: 0,
    }
}

async fn outbox(dir: &Path, extra: Json) -> FileDestination {
    let mut settings = json!({"path": dir});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let config: DestinationConfig = serde_json::from_value(settings).unwrap();
    FileDestination::build("customs_outbox", &config)
        .await
        .unwrap()
}

/// Every entry, hidden ones included.
pub(super) fn all_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_delivery_is_written_whole_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out/customs");
    let d = outbox(&dir, json!({})).await;
    let mut out = delivery();
    assert_eq!(
        d.send(&out).await,
        SendOutcome::Delivered { response: None }
    );
    let name = format!("{}.xml", out.delivery_id);
    assert_eq!(all_names(&dir), [name.as_str()]);
    assert_eq!(fs::read(dir.join(&name)).unwrap(), out.body);
    // The same delivery again (a retry after a lost outcome) replaces its
    // own file.
    out.attempt = 2;
    out.body = b"<Declaration>2</Declaration>".to_vec();
    assert_eq!(
        d.send(&out).await,
        SendOutcome::Delivered { response: None }
    );
    assert_eq!(all_names(&dir), [name.as_str()]);
    assert_eq!(fs::read(dir.join(&name)).unwrap(), out.body);
}

#[tokio::test]
async fn the_file_name_is_rendered_from_the_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let d = outbox(
        tmp.path(),
        json!({"filename": "{{ business_key }}-{{ route }}.{{ extension }}"}),
    )
    .await;
    assert!(matches!(
        d.send(&delivery()).await,
        SendOutcome::Delivered { .. }
    ));
    assert_eq!(all_names(tmp.path()), ["GB-7-order_to_customs.xml"]);
}

#[tokio::test]
async fn a_name_that_cannot_be_made_is_permanent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = outbox(tmp.path(), json!({"filename": "{{ business_key }}.xml"})).await;
    for key in ["../../etc/passwd", "a\\b", "..", ".hidden"] {
        let mut out = delivery();
        out.business_key = Some(key.into());
        match d.send(&out).await {
            SendOutcome::Permanent { error } => assert!(
                error.starts_with("the filename template makes"),
                "{key}: {error}"
            ),
            other => panic!("{key}: {other:?}"),
        }
    }
    let mut out = delivery();
    out.business_key = None;
    match d.send(&out).await {
        SendOutcome::Permanent { error } => {
            assert!(error.contains("cannot render `filename`"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(all_names(tmp.path()).is_empty());
}

#[tokio::test]
async fn an_unwritable_outbox_is_transient_and_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let d = outbox(&dir, json!({})).await;
    // The outbox replaced by a plain file: no write can succeed there,
    // whatever the user's privileges (tests may run as root).
    fs::remove_dir(&dir).unwrap();
    fs::write(&dir, b"").unwrap();
    match d.send(&delivery()).await {
        SendOutcome::Transient {
            error,
            retry_after: None,
        } => {
            assert!(error.starts_with("cannot write "), "{error}");
            assert!(error.contains(&dir.display().to_string()), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn destination_settings_have_defaults_and_are_checked() {
    let c: DestinationConfig = serde_json::from_value(json!({"path": "out"})).unwrap();
    assert_eq!(c.filename.as_str(), super::config::DEFAULT_FILENAME);
    assert!(crate::template::Template::parse(super::config::DEFAULT_FILENAME).is_ok());
    let s = c.dispatch_settings("customs_outbox");
    assert_eq!(
        (s.concurrency, s.attempt_timeout, s.reply_to),
        (256, Duration::from_secs(60), None)
    );
    assert_eq!(c.sync, super::config::OutboxSync::Files);
    let c: DestinationConfig =
        serde_json::from_value(json!({"path": "out", "sync": "filesystem"})).unwrap();
    assert_eq!(c.sync, super::config::OutboxSync::Filesystem);
    let bad = |v: Json| {
        serde_json::from_value::<DestinationConfig>(v)
            .unwrap_err()
            .to_string()
    };
    let e = bad(json!({"path": "out", "filename": "{{ route }}/{{ delivery_id }}.xml"}));
    assert!(
        e.starts_with("`filename`: \"{{ route }}/{{ delivery_id }}.xml\" makes \"route/"),
        "{e}"
    );
    let e = bad(json!({"path": "out", "filename": "{{ delivery_id }"}));
    assert!(e.starts_with("`filename` is not a valid template"), "{e}");
    let e = bad(json!({"path": "out", "sync": "never"}));
    assert!(e.contains("unknown variant `never`"), "{e}");
    let e = bad(json!({"path": "out", "reply_to": "x"}));
    assert!(e.contains("unknown field `reply_to`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_overlapping_a_late_one_never_exposes_a_partial_file() {
    // An attempt cut short by the dispatcher's timeout goes on writing on
    // the blocking pool while the retry of the same delivery writes too.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let d = Arc::new(outbox(&dir, json!({})).await);
    let mut out = delivery();
    out.body = vec![b'x'; 2 * 1024 * 1024];
    let target = dir.join(format!("{}.xml", out.delivery_id));
    let full = out.body.len() as u64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (target, stop) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut partial = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = fs::metadata(&target)
                    && m.len() != full
                {
                    partial += 1;
                }
            }
            partial
        })
    };
    let mut tasks = Vec::new();
    for attempt in [1, 2] {
        let (d, mut out) = (d.clone(), out.clone());
        out.attempt = attempt;
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..40 {
                if let SendOutcome::Transient { error, .. } = d.send(&out).await {
                    failed.push(error);
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let partial = watcher.join().unwrap();
    assert_eq!(partial, 0, "a reader saw a partial file");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(fs::metadata(&target).unwrap().len(), full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_sent_at_once_share_batches_and_each_is_written_whole() {
    for sync in ["files", "filesystem"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let d = Arc::new(outbox(&dir, json!({"sync": sync})).await);
        let mut tasks = Vec::new();
        for i in 0..300 {
            let d = d.clone();
            let mut out = delivery();
            out.delivery_id = format!("d{i:03}");
            out.body = format!("<Declaration>{i}</Declaration>").into_bytes();
            tasks.push(tokio::spawn(async move { (d.send(&out).await, out) }));
        }
        for t in tasks {
            let (outcome, out) = t.await.unwrap();
            assert_eq!(outcome, SendOutcome::Delivered { response: None }, "{sync}");
            let file = dir.join(format!("{}.xml", out.delivery_id));
            assert_eq!(fs::read(file).unwrap(), out.body, "{sync}");
        }
        assert_eq!(
            all_names(&dir).len(),
            300,
            "{sync}: a temporary file is left"
        );
        let batches = d.batches();
        assert!(
            (2..300).contains(&batches),
            "{sync}: 300 files in {batches} batches"
        );
    }
}
