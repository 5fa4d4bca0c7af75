//! The outbox writer (see the module description for its rules).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nzela_core::runtime::{BoxFuture, Destination, Outbound, SendOutcome};

use super::config::DestinationConfig;
use super::{MAX_NAME, check_file_name};
use crate::template::Templates;

/// A built outbox destination.
#[derive(Debug)]
pub struct FileDestination {
    name: String,
    dir: PathBuf,
    templates: Templates,
    folder: Arc<FolderSync>,
}

impl FileDestination {
    /// Builds the destination `name`: compiles its file name and creates
    /// the outbox.
    pub async fn build(name: &str, config: &DestinationConfig) -> Result<FileDestination, String> {
        let templates = config.templates()?;
        let dir = config.path.clone();
        let create = dir.clone();
        tokio::task::spawn_blocking(move || fs::create_dir_all(&create))
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
            dir,
            templates,
            folder: Arc::default(),
        })
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
        // The attempt too names the temporary file: an attempt cut short by
        // the dispatcher's timeout may still be writing when the next one
        // of the same delivery starts.
        let (dir, temp_id, body, folder) = (
            self.dir.clone(),
            format!("{}.{}", out.delivery_id, out.attempt),
            out.body.clone(),
            self.folder.clone(),
        );
        let written = tokio::task::spawn_blocking(move || {
            write_atomic(&dir, &name, &temp_id, &body, &folder)
        })
        .await;
        match written {
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
            Err(e) => SendOutcome::Transient {
                error: format!("writing to {} failed unexpectedly: {e}", self.dir.display()),
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

/// Flushes an outbox folder for many renames at once. A rename is durable
/// once a flush of its folder has started after it: whoever finds no flush
/// running starts one that covers every rename made so far, and the others
/// wait for it or for the next (a group commit, as the journal's). Under
/// load, one flush serves the writes of many deliveries.
#[derive(Debug, Default)]
struct FolderSync {
    state: Mutex<Renames>,
    flushed: Condvar,
}

#[derive(Debug, Default)]
struct Renames {
    /// Renames made, in order.
    made: u64,
    /// Renames made durable (the first `flushed` of them).
    flushed: u64,
    flushing: bool,
}

impl FolderSync {
    fn state(&self) -> MutexGuard<'_, Renames> {
        // Nothing panics while holding it: a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once a `flush` of the folder that started after the
    /// caller's rename has succeeded, or with the error of the flush it ran
    /// itself.
    fn after_rename(&self, flush: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
        let mut state = self.state();
        state.made += 1;
        let mine = state.made;
        loop {
            if state.flushed >= mine {
                return Ok(());
            }
            if !state.flushing {
                state.flushing = true;
                let upto = state.made;
                drop(state);
                let result = flush();
                let mut state = self.state();
                state.flushing = false;
                if result.is_ok() {
                    state.flushed = state.flushed.max(upto);
                }
                // On failure the others run a flush of their own.
                self.flushed.notify_all();
                return result;
            }
            state = self.flushed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Writes `body` as `dir/name` so that no reader ever sees part of it and
/// a crash leaves either the whole file or none.
fn write_atomic(
    dir: &Path,
    name: &str,
    temp_id: &str,
    body: &[u8],
    folder: &FolderSync,
) -> Result<PathBuf, String> {
    let target = dir.join(name);
    // Named after the delivery and its attempt, so that two writes of the
    // same name at once never share a temporary file.
    let mut temp_name = format!(".{name}.{temp_id}.tmp");
    if temp_name.len() > MAX_NAME {
        temp_name = format!(".{temp_id}.tmp");
    }
    let temp = dir.join(temp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        f.write_all(body)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        f.sync_all()
            .map_err(|e| format!("cannot flush {} to disk: {e}", temp.display()))?;
        drop(f);
        fs::rename(&temp, &target).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                temp.display(),
                target.display()
            )
        })?;
        // The rename is durable only once the folder itself is flushed.
        folder
            .after_rename(|| File::open(dir).and_then(|d| d.sync_all()))
            .map_err(|e| format!("cannot flush the folder {} to disk: {e}", dir.display()))
    })();
    match result {
        Ok(()) => Ok(target),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod folder_sync {
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    use super::FolderSync;

    /// The `FolderSync`, each caller's result, and each flush's (renames
    /// made when it started, succeeded).
    type Run = (Arc<FolderSync>, Vec<std::io::Result<()>>, Vec<(u64, bool)>);

    /// Runs `threads` renames at once through one `FolderSync`; each flush
    /// records how many renames had been made when it started, and fails if
    /// `fails(n)` for the n-th flush.
    fn renames(threads: usize, fails: fn(usize) -> bool) -> Run {
        let sync = Arc::new(FolderSync::default());
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (sync, flushes, start) = (sync.clone(), flushes.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    sync.after_rename(|| {
                        let made = sync.state().made;
                        std::thread::sleep(Duration::from_millis(50));
                        let mut flushes = flushes.lock().unwrap();
                        let ok = !fails(flushes.len());
                        flushes.push((made, ok));
                        if ok {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("disk gone"))
                        }
                    })
                })
            })
            .collect();
        let results = handles.into_iter().map(|t| t.join().unwrap()).collect();
        let flushes = flushes.lock().unwrap().clone();
        (sync, results, flushes)
    }

    #[test]
    fn one_flush_serves_the_renames_made_while_another_ran() {
        let (sync, results, flushes) = renames(16, |_| false);
        assert!(results.iter().all(Result::is_ok));
        // The first flush starts with its own rename alone; the others,
        // made meanwhile, wait for a flush that starts after them: at
        // least two, and far fewer than one each.
        assert!((2..=8).contains(&flushes.len()), "{flushes:?}");
        // Nothing is reported durable past what a successful flush had
        // seen renamed when it started.
        let covered = flushes.iter().filter(|f| f.1).map(|f| f.0).max();
        let state = sync.state();
        assert_eq!(state.made, 16);
        assert_eq!(Some(state.flushed), covered, "{flushes:?}");
        assert_eq!(state.flushed, 16);
    }

    #[test]
    fn a_failed_flush_fails_its_runner_and_the_others_flush_again() {
        let (sync, results, flushes) = renames(4, |n| n == 0);
        // Exactly the runner of the failed flush learns of it; nobody is
        // told "durable" on the strength of the failed flush.
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert!(flushes.len() >= 2, "{flushes:?}");
        let covered = flushes.iter().filter(|f| f.1).map(|f| f.0).max();
        assert_eq!(Some(sync.state().flushed), covered, "{flushes:?}");
    }
}
