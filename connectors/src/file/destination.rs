//! The outbox writer (see the module description for its rules).
//!
//! Deliveries are written in batches, as the journal commits them: the
//! first send that finds no batch being written starts a writer task that
//! takes every delivery waiting, writes them all on the blocking pool, and
//! goes on while more wait. Each batch costs one flush of the data (per
//! file, or one for the whole file system, see [`OutboxSync`]) and one of the
//! folder, however many files it holds: under load the flushes, not the
//! bytes, are what writing a small document costs.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nzela_core::runtime::{BoxFuture, Destination, Outbound, SendOutcome};
use tokio::sync::oneshot;

use super::config::{DestinationConfig, OutboxSync};
use super::{MAX_NAME, check_file_name};
use crate::template::Templates;

/// The most files one batch writes.
const MAX_BATCH: usize = 256;

/// A built outbox destination.
#[derive(Debug)]
pub struct FileDestination {
    name: String,
    templates: Templates,
    writer: Arc<Writer>,
}

/// What the writer task shares with the senders.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    sync: OutboxSync,
    waiting: Mutex<Waiting>,
    /// Batches written so far.
    batches: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiting {
    jobs: Vec<Job>,
    /// A writer task is running: it takes `jobs` before it stops.
    writing: bool,
}

/// One file to write, and who waits for it.
#[derive(Debug)]
struct Job {
    name: String,
    temp: String,
    body: Vec<u8>,
    done: oneshot::Sender<Result<PathBuf, String>>,
}

impl FileDestination {
    /// Builds the destination `name`: compiles its file name and creates
    /// the outbox.
    pub async fn build(name: &str, config: &DestinationConfig) -> Result<FileDestination, String> {
        let templates = config.templates()?;
        let dir = config.path.clone();
        let create = dir.clone();
        let outbox = name.to_owned();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&create)?;
            remove_leftovers(&outbox, &create);
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| {
            format!(
                "creating the folder {} failed unexpectedly: {e}",
                dir.display()
            )
        })?
        .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
        Ok(FileDestination {
            name: name.to_owned(),
            templates,
            writer: Arc::new(Writer {
                dir,
                sync: config.sync.effective(),
                waiting: Mutex::default(),
                batches: AtomicU64::new(0),
            }),
        })
    }

    /// Batches written so far (each with its own flushes).
    pub fn batches(&self) -> u64 {
        self.writer.batches.load(Ordering::Relaxed)
    }

    async fn write(&self, out: &Outbound) -> SendOutcome {
        let name = match self.templates.render("filename", out) {
            Ok(n) => n,
            Err(error) => return SendOutcome::Permanent { error },
        };
        if let Err(e) = check_file_name(&name) {
            return SendOutcome::Permanent {
                error: format!("the filename template makes {e}"),
            };
        }
        // Named after the delivery and its attempt: an attempt cut short
        // by the dispatcher's timeout may still be writing when the next
        // one of the same delivery starts, and they never share a
        // temporary file.
        let temp = temp_name(&name, &out.delivery_id, out.attempt);
        let (done, written) = oneshot::channel();
        self.writer.clone().submit(Job {
            name,
            temp,
            body: out.body.clone(),
            done,
        });
        match written.await {
            Ok(Ok(path)) => {
                tracing::debug!(
                    message_id = %out.message_id, route = %out.route, destination = %self.name,
                    delivery_id = %out.delivery_id, file = %path.display(), "written"
                );
                SendOutcome::Delivered { response: None }
            }
            Ok(Err(error)) => SendOutcome::Transient {
                error,
                retry_after: None,
            },
            Err(_) => SendOutcome::Transient {
                error: format!(
                    "writing to {} failed unexpectedly",
                    self.writer.dir.display()
                ),
                retry_after: None,
            },
        }
    }
}

impl Destination for FileDestination {
    fn send<'a>(&'a self, out: &'a Outbound) -> BoxFuture<'a, SendOutcome> {
        Box::pin(self.write(out))
    }
}

impl Writer {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding it: a poisoned lock is still sound.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`; starts the writer task unless one runs. The task is
    /// spawned, not run by the sender: a sender given up on (its attempt
    /// timed out) never stops the batches of the others.
    fn submit(self: Arc<Self>, job: Job) {
        let start = {
            let mut w = self.waiting();
            w.jobs.push(job);
            !std::mem::replace(&mut w.writing, true)
        };
        if start {
            tokio::spawn(self.run());
        }
    }

    /// Writes batches until none waits.
    async fn run(self: Arc<Self>) {
        let mut running = Running(Some(self.clone()));
        loop {
            let batch = {
                let mut w = self.waiting();
                if w.jobs.is_empty() {
                    w.writing = false;
                    running.0 = None;
                    return;
                }
                take_batch(&mut w.jobs)
            };
            self.batches.fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            // A panic drops the batch's answers: its senders see the
            // attempt fail, and it is retried.
            let _ =
                tokio::task::spawn_blocking(move || write_batch(&this.dir, this.sync, batch)).await;
        }
    }
}

/// A writer task's mark: the task dropped before it finished (its runtime
/// stopping) lets the next sender start another.
struct Running(Option<Arc<Writer>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            writer.waiting().writing = false;
        }
    }
}

/// Takes up to [`MAX_BATCH`] jobs, oldest first, no two with the same
/// temporary file (the same attempt sent twice waits for the next batch).
fn take_batch(jobs: &mut Vec<Job>) -> Vec<Job> {
    let mut temps = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for job in jobs.drain(..) {
        if batch.len() < MAX_BATCH && temps.insert(job.temp.clone()) {
            batch.push(job);
        } else {
            rest.push(job);
        }
    }
    *jobs = rest;
    batch
}

/// The temporary name of an attempt's file: `.NAME.DELIVERY.ATTEMPT.tmp`,
/// or `.DELIVERY.ATTEMPT.tmp` when that would be too long.
fn temp_name(name: &str, delivery_id: &str, attempt: u32) -> String {
    let temp = format!(".{name}.{delivery_id}.{attempt}.tmp");
    if temp.len() > MAX_NAME {
        format!(".{delivery_id}.{attempt}.tmp")
    } else {
        temp
    }
}

/// Whether `name` is one of [`temp_name`]'s: hidden, ending in a delivery
/// id (a UUID), an attempt number and `.tmp`.
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((rest, attempt)) = rest.rsplit_once('.') else {
        return false;
    };
    let id = rest.rsplit_once('.').map_or(rest, |(_, id)| id);
    !attempt.is_empty()
        && attempt.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Removes the temporary files a stop left in `dir` (a crash in the middle
/// of a batch): their deliveries are still to be written, and are written
/// again under new temporary names. Other hidden files are left alone.
fn remove_leftovers(outbox: &str, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(is_temp_name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(destination = %outbox, file = %entry.path().display(), error = %e, "cannot remove a temporary file left by an earlier run")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(destination = %outbox, folder = %dir.display(), files = removed, "removed the temporary files an earlier run left");
    }
}

/// A file written under its temporary name, not renamed yet.
struct Written {
    job: Job,
    temp: PathBuf,
}

impl Written {
    /// Answers `error` and removes the temporary file.
    fn fail(self, error: String) {
        let _ = fs::remove_file(&self.temp);
        let _ = self.job.done.send(Err(error));
    }
}

/// Writes each job's body as `dir/name` so that no reader ever sees part
/// of it and a crash leaves either the whole file or none: every file
/// under its temporary name, their data flushed, each renamed onto its
/// name, the renames flushed. Answers each job; one that fails fails
/// alone, unless a flush covering the whole batch fails.
fn write_batch(dir: &Path, sync: OutboxSync, jobs: Vec<Job>) {
    let mut written = Vec::with_capacity(jobs.len());
    for job in jobs {
        let w = Written {
            temp: dir.join(&job.temp),
            job,
        };
        match write_temp(&w.temp, &w.job.body, sync) {
            Ok(()) => written.push(w),
            Err(e) => w.fail(e),
        }
    }
    if written.is_empty() {
        return;
    }
    // The data on disk before any name points at it.
    let written = match sync {
        OutboxSync::Files => written
            .into_iter()
            .filter_map(|w| match File::open(&w.temp).and_then(|f| f.sync_all()) {
                Ok(()) => Some(w),
                Err(e) => {
                    let error = format!("cannot flush {} to disk: {e}", w.temp.display());
                    w.fail(error);
                    None
                }
            })
            .collect(),
        OutboxSync::Filesystem => match sync_filesystem(dir) {
            Ok(()) => written,
            Err(error) => {
                for w in written {
                    w.fail(error.clone());
                }
                return;
            }
        },
    };
    let mut renamed = Vec::with_capacity(written.len());
    for w in written {
        let target = dir.join(&w.job.name);
        match fs::rename(&w.temp, &target) {
            Ok(()) => renamed.push((w.job, target)),
            Err(e) => {
                let error = format!(
                    "cannot rename {} to {}: {e}",
                    w.temp.display(),
                    target.display()
                );
                w.fail(error);
            }
        }
    }
    if renamed.is_empty() {
        return;
    }
    // A rename is durable only once the folder itself is flushed.
    let flushed = match sync {
        OutboxSync::Files => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot flush the folder {} to disk: {e}", dir.display())),
        OutboxSync::Filesystem => sync_filesystem(dir),
    };
    for (job, target) in renamed {
        let _ = job.done.send(flushed.clone().map(|()| target));
    }
}

/// Creates (or truncates) `temp` and writes `body` to it, unflushed. When
/// each file is to be flushed, its writing to disk starts now, so that
/// the flushes that follow find the batch's data on its way.
fn write_temp(temp: &Path, body: &[u8], sync: OutboxSync) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    f.write_all(body)
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    if sync == OutboxSync::Files {
        start_writeback(&f);
    }
    Ok(())
}

/// Starts writing `f`'s dirty pages to disk without waiting
/// (`sync_file_range(2)`); a hint only: the flush that follows is what
/// makes the data durable, and reports the errors.
#[cfg(target_os = "linux")]
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open descriptor for the call's whole duration.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

/// Flushes everything written to the file system holding `dir`
/// (`syncfs(2)`, which reports the write errors of its files).
fn sync_filesystem(dir: &Path) -> Result<(), String> {
    syncfs(dir).map_err(|e| {
        format!(
            "cannot flush the file system of {} to disk: {e}",
            dir.display()
        )
    })
}

#[cfg(target_os = "linux")]
fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: `d` is an open descriptor for the call's whole duration.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere there is no `syncfs`, and an outbox flushes each file
/// (see [`OutboxSync::effective`]): the folder is what is left to flush.
#[cfg(not(target_os = "linux"))]
fn syncfs(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::tests::all_names as names;

    fn job(
        name: &str,
        temp: &str,
        body: &[u8],
    ) -> (Job, oneshot::Receiver<Result<PathBuf, String>>) {
        let (done, answer) = oneshot::channel();
        let job = Job {
            name: name.into(),
            temp: temp.into(),
            body: body.to_vec(),
            done,
        };
        (job, answer)
    }

    #[test]
    fn a_batch_writes_every_file_whole_in_either_way_of_flushing() {
        for sync in [OutboxSync::Files, OutboxSync::Filesystem] {
            let tmp = tempfile::tempdir().unwrap();
            let mut jobs = Vec::new();
            let mut answers = Vec::new();
            for i in 0..50 {
                let (j, a) = job(
                    &format!("{i}.xml"),
                    &format!(".{i}.tmp"),
                    format!("<d>{i}</d>").as_bytes(),
                );
                jobs.push(j);
                answers.push(a);
            }
            write_batch(tmp.path(), sync, jobs);
            for (i, mut a) in answers.into_iter().enumerate() {
                let path = a.try_recv().unwrap().unwrap();
                assert_eq!(path, tmp.path().join(format!("{i}.xml")));
                assert_eq!(fs::read(&path).unwrap(), format!("<d>{i}</d>").as_bytes());
            }
            // No temporary file left behind.
            assert_eq!(names(tmp.path()).len(), 50, "{sync:?}");
            assert!(names(tmp.path()).iter().all(|n| !n.starts_with('.')));
        }
    }

    #[test]
    fn a_file_that_cannot_be_renamed_fails_alone() {
        for sync in [OutboxSync::Files, OutboxSync::Filesystem] {
            let tmp = tempfile::tempdir().unwrap();
            // A folder, not empty, where the second file should go.
            fs::create_dir_all(tmp.path().join("b.xml/inside")).unwrap();
            let (a, mut answer_a) = job("a.xml", ".a.tmp", b"A");
            let (b, mut answer_b) = job("b.xml", ".b.tmp", b"B");
            let (c, mut answer_c) = job("c.xml", ".c.tmp", b"C");
            write_batch(tmp.path(), sync, vec![a, b, c]);
            assert!(answer_a.try_recv().unwrap().is_ok());
            assert!(answer_c.try_recv().unwrap().is_ok());
            let error = answer_b.try_recv().unwrap().unwrap_err();
            assert!(error.starts_with("cannot rename "), "{error}");
            assert!(error.contains("b.xml"), "{error}");
            assert_eq!(names(tmp.path()), ["a.xml", "b.xml", "c.xml"], "{sync:?}");
            assert_eq!(fs::read(tmp.path().join("c.xml")).unwrap(), b"C");
        }
    }

    #[test]
    fn the_same_temporary_file_is_never_written_twice_in_one_batch() {
        let mut jobs = Vec::new();
        for temp in [".x.1.tmp", ".y.1.tmp", ".x.1.tmp", ".x.2.tmp"] {
            jobs.push(job("x.xml", temp, b"").0);
        }
        let batch = take_batch(&mut jobs);
        let temps: Vec<&str> = batch.iter().map(|j| j.temp.as_str()).collect();
        assert_eq!(temps, [".x.1.tmp", ".y.1.tmp", ".x.2.tmp"]);
        // The second write of `.x.1.tmp` waits for the next batch.
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].temp, ".x.1.tmp");
    }

    #[test]
    fn a_writer_task_dropped_midway_lets_the_next_sender_start_one() {
        let tmp = tempfile::tempdir().unwrap();
        let writer = Arc::new(Writer {
            dir: tmp.path().to_owned(),
            sync: OutboxSync::Files,
            waiting: Mutex::new(Waiting {
                jobs: vec![job("a.xml", ".a.tmp", b"A").0],
                writing: true,
            }),
            batches: AtomicU64::new(0),
        });
        // Polled up to its first await (the batch on the blocking pool),
        // then dropped, as when its runtime stops.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut task = Box::pin(writer.clone().run());
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(task.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(polled, "the writer finished without waiting");
        });
        assert!(!writer.waiting().writing);
        assert_eq!(writer.batches.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn temporary_files_left_by_a_stop_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let id = "0193a1b2-0000-7000-8000-00000000d001";
        let long = "n".repeat(250);
        let left = [
            temp_name("a.xml", id, 1),
            temp_name("b.xml", id, 12),
            temp_name(&long, id, 3),
        ];
        assert_eq!(left[2], format!(".{id}.3.tmp"));
        let kept = [
            "a.xml",
            ".keep",
            ".notes.tmp",
            &format!(".a.xml.{id}.tmp"),
            &format!(".a.xml.{id}.x.tmp"),
            &format!(".a.xml.{}.1.tmp", id.replace('-', "x")),
        ];
        for name in left.iter().map(String::as_str).chain(kept) {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        remove_leftovers("customs_outbox", tmp.path());
        let mut want: Vec<String> = kept.iter().map(|n| n.to_string()).collect();
        want.sort();
        assert_eq!(names(tmp.path()), want);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_files() {
        let mut jobs: Vec<Job> = (0..MAX_BATCH + 10)
            .map(|i| job("x.xml", &format!(".{i}.tmp"), b"").0)
            .collect();
        assert_eq!(take_batch(&mut jobs).len(), MAX_BATCH);
        assert_eq!(jobs.len(), 10);
        assert_eq!(jobs[0].temp, format!(".{MAX_BATCH}.tmp"));
    }
}
