//! The inbox poller (see the module description for its rules).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nzela_core::codec::{Codec, Limits};
use nzela_core::runtime::{CancellationToken, Incoming, Intake, IntakeError};

use super::config::SourceConfig;
use super::glob::Pattern;
use super::move_unique;
use crate::common::{BusinessKey, ByteSize, check_message, human_size, limits};

/// How long a file that could not be read, or moved out of the inbox, is
/// left alone before it is tried again.
const HOLD_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// A built inbox source.
#[derive(Debug)]
pub struct FileSource {
    name: String,
    inbox: PathBuf,
    done: PathBuf,
    error: PathBuf,
    pattern: Option<Pattern>,
    poll_interval: Duration,
    settle: Duration,
    reader: Arc<Reader>,
}

/// What reads and checks one file, shared with the blocking pool.
#[derive(Debug)]
struct Reader {
    codec: Codec,
    limits: Limits,
    max_size: ByteSize,
    business_key: Option<BusinessKey>,
}

/// A file as listed.
#[derive(Debug, Clone)]
struct Listed {
    name: String,
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
}

impl Listed {
    fn input_key(&self) -> String {
        let nanos = self
            .mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("file:{}:{}:{nanos}", self.name, self.size)
    }
}

/// An inbox entry that is not taken although its name would be: it has
/// to be seen to, so it is logged (once).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Skipped {
    path: PathBuf,
    why: &'static str,
}

/// What a listing of the inbox gave.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<Listed>,
    skipped: Vec<Skipped>,
}

/// What was seen of a file at earlier polls.
struct Seen {
    size: u64,
    mtime: SystemTime,
    /// Since when (by this process's clock) size and mtime have not changed.
    since: Instant,
}

/// What reading a file gave.
enum FileRead {
    /// A message, with its business key.
    Message(Vec<u8>, Option<String>),
    /// Refused, for this reason: the file goes to `error/`.
    Refused(String),
    /// It changed or went away since it was listed: look again next poll.
    Changed,
}

/// What became of a file this poll.
enum Taken {
    Done,
    Refused,
    /// Left in the inbox; the rest of this poll is not worth trying.
    JournalUnavailable,
    /// The hub is stopping.
    Stopping,
    /// Left in the inbox for another reason, already logged.
    Left,
    /// It changed or went away since it was listed.
    Changed,
}

impl FileSource {
    /// Builds the source `name`: creates the inbox, `done` and `error`
    /// folders.
    pub async fn build(name: &str, config: &SourceConfig) -> Result<FileSource, String> {
        let source = FileSource {
            name: name.to_owned(),
            inbox: config.path.clone(),
            done: config.done_dir(),
            error: config.error_dir(),
            pattern: config.pattern.clone(),
            poll_interval: config.poll_interval.get(),
            settle: config.settle.get(),
            reader: Arc::new(Reader {
                codec: config.format.codec(),
                limits: limits(config.max_size, config.max_depth),
                max_size: config.max_size,
                business_key: config.business_key.clone(),
            }),
        };
        for (setting, dir) in [("done", &source.done), ("error", &source.error)] {
            if *dir == source.inbox {
                return Err(format!(
                    "`{setting}` is the inbox itself ({}): its files would be read again",
                    dir.display()
                ));
            }
        }
        let dirs = [
            source.inbox.clone(),
            source.done.clone(),
            source.error.clone(),
        ];
        blocking(move || {
            dirs.iter().try_for_each(|dir| {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))
            })
        })
        .await??;
        Ok(source)
    }

    /// Polls the inbox until `shutdown`.
    pub async fn run(self, intake: Intake, shutdown: CancellationToken) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut held: HashMap<String, Instant> = HashMap::new();
        // Entries not taken (a link, a name that is not UTF-8): warned
        // about once while they stay.
        let mut warned: HashSet<PathBuf> = HashSet::new();
        // A missing or unreadable inbox is logged when it happens and when
        // it is over, not at every poll.
        let mut readable = true;
        tracing::info!(source = %self.name, inbox = %self.inbox.display(), "watching the inbox");
        while !shutdown.is_cancelled() {
            match self.ready_files(&mut seen).await {
                Ok((ready, skipped)) => {
                    self.warn_skipped(&skipped, &mut warned);
                    if !readable {
                        tracing::info!(source = %self.name, inbox = %self.inbox.display(), "the inbox can be read again");
                        readable = true;
                    }
                    held.retain(|_, until| *until > Instant::now());
                    for file in ready {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        if held.contains_key(&file.name) {
                            continue;
                        }
                        let name = file.name.clone();
                        match self.take(&intake, file).await {
                            Taken::Done | Taken::Refused | Taken::Changed => {
                                seen.remove(&name);
                            }
                            Taken::Left => {
                                held.insert(name, Instant::now() + HOLD_AFTER_FAILURE);
                            }
                            Taken::JournalUnavailable => break,
                            Taken::Stopping => return,
                        }
                    }
                }
                Err(e) => {
                    if readable {
                        tracing::warn!(source = %self.name, inbox = %self.inbox.display(), error = %e, "cannot read the inbox");
                        readable = false;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Logs each entry not taken the first time it is seen; forgets those
    /// that went away, so that one that comes back is logged again.
    fn warn_skipped(&self, skipped: &[Skipped], warned: &mut HashSet<PathBuf>) {
        warned.retain(|path| skipped.iter().any(|s| s.path == *path));
        for s in skipped {
            if warned.insert(s.path.clone()) {
                tracing::warn!(source = %self.name, file = %s.path.display(), "not taken from the inbox: {}", s.why);
            }
        }
    }

    /// Lists the inbox and returns the files that have settled, oldest
    /// first, updating what was seen of each, and the entries not taken.
    async fn ready_files(
        &self,
        seen: &mut HashMap<String, Seen>,
    ) -> Result<(Vec<Listed>, Vec<Skipped>), String> {
        let inbox = self.inbox.clone();
        let pattern = self.pattern.clone();
        let Listing {
            files: listed,
            skipped,
        } = blocking(move || list(&inbox, pattern.as_ref()))
            .await?
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let present: HashSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        seen.retain(|name, _| present.contains(name.as_str()));
        let mut ready = Vec::new();
        for file in listed {
            let s = seen.entry(file.name.clone()).or_insert(Seen {
                size: file.size,
                mtime: file.mtime,
                since: now,
            });
            if s.size != file.size || s.mtime != file.mtime {
                *s = Seen {
                    size: file.size,
                    mtime: file.mtime,
                    since: now,
                };
                continue;
            }
            // Either we watched it stay the same for `settle`, or its
            // modification time says it has not changed for that long (a
            // file renamed in complete is taken at once). Our own watch
            // covers a clock that puts mtimes in the future.
            let watched = now.duration_since(s.since) >= self.settle;
            let old = wall
                .duration_since(file.mtime)
                .is_ok_and(|age| age >= self.settle);
            if watched || old {
                ready.push(file);
            }
        }
        ready.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.name.cmp(&b.name)));
        Ok((ready, skipped))
    }

    async fn take(&self, intake: &Intake, file: Listed) -> Taken {
        let source = self.name.as_str();
        let reader = self.reader.clone();
        let listed = file.clone();
        let read = match blocking(move || reader.read(&listed)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(source, file = %file.name, error = %e, "reading a file failed unexpectedly");
                return Taken::Left;
            }
        };
        let (body, business_key) = match read {
            Ok(FileRead::Message(body, key)) => (body, key),
            Ok(FileRead::Changed) => return Taken::Changed,
            Ok(FileRead::Refused(reason)) => return self.refuse(&file, reason).await,
            Err(e) => {
                tracing::warn!(source, file = %file.path.display(), error = %e, "cannot read the file; trying again later");
                return Taken::Left;
            }
        };
        let incoming = Incoming {
            source: self.name.clone(),
            body,
            content_type: Some(self.reader.codec.format().content_type().to_owned()),
            headers: vec![("file".to_owned(), file.name.clone())],
            correlation_id: None,
            idempotency_key: None,
            input_key: Some(file.input_key()),
            business_key,
        };
        let accepted = match intake.accept(incoming).await {
            Ok(a) => a,
            Err(IntakeError::ShuttingDown) => return Taken::Stopping,
            Err(e @ IntakeError::Unavailable(_)) => {
                tracing::warn!(source, file = %file.name, error = %e, "the journal cannot take the file; it stays in the inbox");
                return Taken::JournalUnavailable;
            }
        };
        let message_id = accepted.message_id.as_str();
        let (from, done, name) = (file.path.clone(), self.done.clone(), file.name.clone());
        match blocking(move || move_unique(&from, &done, &name)).await {
            Ok(Ok(to)) => {
                tracing::debug!(message_id, source, file = %file.name, duplicate = accepted.duplicate, done = %to.display(), "accepted");
                Taken::Done
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Taken::Done,
            Ok(Err(e)) => {
                tracing::error!(
                    message_id, source, file = %file.path.display(), done = %self.done.display(), error = %e,
                    "the message is committed but the file cannot be moved to done; it stays in the inbox and will be recognised as a duplicate"
                );
                Taken::Left
            }
            Err(e) => {
                tracing::error!(message_id, source, file = %file.path.display(), error = %e, "moving the file failed unexpectedly");
                Taken::Left
            }
        }
    }

    /// Moves a refused file to `error/`, with a `.error` file saying why.
    async fn refuse(&self, file: &Listed, reason: String) -> Taken {
        let source = self.name.as_str();
        tracing::warn!(source, file = %file.name, reason = %reason, "file refused; moved to the error folder");
        let (from, dir, name) = (file.path.clone(), self.error.clone(), file.name.clone());
        let moved = blocking(move || -> Result<PathBuf, String> {
            let to = move_unique(&from, &dir, &name)
                .map_err(|e| format!("cannot move it to {}: {e}", dir.display()))?;
            let mut note = to.clone().into_os_string();
            note.push(".error");
            let note = PathBuf::from(note);
            fs::write(&note, format!("{reason}\n"))
                .map_err(|e| format!("cannot write {}: {e}", note.display()))?;
            Ok(to)
        })
        .await;
        match moved {
            Ok(Ok(_)) => Taken::Refused,
            Ok(Err(e)) | Err(e) => {
                tracing::error!(source, file = %file.path.display(), error = %e, "a refused file could not be set aside");
                Taken::Left
            }
        }
    }
}

impl Reader {
    /// Reads and decodes a listed file, off the async workers.
    fn read(&self, file: &Listed) -> io::Result<FileRead> {
        let max = self.max_size.as_u64();
        let too_large = |size: u64| {
            FileRead::Refused(format!(
                "file is {}, over the limit of {}",
                human_size(size),
                self.max_size
            ))
        };
        if file.size > max {
            return Ok(too_large(file.size));
        }
        let mut f = match fs::File::open(&file.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Changed),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        if meta.len() != file.size || meta.modified().ok() != Some(file.mtime) {
            return Ok(FileRead::Changed);
        }
        let mut body = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        // One byte past the limit tells a file that grew since it was listed.
        f.by_ref().take(max + 1).read_to_end(&mut body)?;
        if body.len() as u64 != file.size {
            return Ok(if body.len() as u64 > max {
                too_large(body.len() as u64)
            } else {
                FileRead::Changed
            });
        }
        if body.is_empty() {
            return Ok(FileRead::Refused("empty file".to_owned()));
        }
        match check_message(&self.codec, &self.limits, self.business_key.as_ref(), &body) {
            Ok(key) => Ok(FileRead::Message(body, key)),
            Err(e) => Ok(FileRead::Refused(e.to_string())),
        }
    }
}

/// The regular, non-hidden files of the inbox that match `pattern`. A file
/// that vanishes while listed is skipped; symbolic links are never
/// followed, so the inbox cannot be made to read files elsewhere.
///
/// Entries whose name would be taken but that are not are returned as
/// skipped: a name that is not UTF-8, a symbolic link, a special file.
/// Hidden entries, names the pattern does not match and folders (`done/`,
/// `error/`) are left alone without a word.
fn list(inbox: &Path, pattern: Option<&Pattern>) -> io::Result<Listing> {
    let mut out = Listing::default();
    for entry in fs::read_dir(inbox)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        if name.starts_with('.') || pattern.is_some_and(|p| !p.matches(&name)) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            continue;
        }
        let not_taken = if kind.is_symlink() {
            Some("a symbolic link (links are not followed)")
        } else if !kind.is_file() {
            Some("not a regular file")
        } else if file_name.to_str().is_none() {
            Some("a file name that is not UTF-8")
        } else {
            None
        };
        if let Some(why) = not_taken {
            out.skipped.push(Skipped {
                path: entry.path(),
                why,
            });
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        out.files.push(Listed {
            name: name.into_owned(),
            path: entry.path(),
            size: meta.len(),
            mtime: meta.modified().unwrap_or(UNIX_EPOCH),
        });
    }
    Ok(out)
}

/// Runs blocking work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task failed: {e}"))
}

#[cfg(all(test, unix))]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn links_and_names_that_are_not_utf8_are_listed_as_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path();
        fs::write(inbox.join("order.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(inbox.join("order.json"), inbox.join("link.json")).unwrap();
        let latin1 = inbox.join(OsStr::from_bytes(b"caf\xE9.json"));
        fs::write(&latin1, b"{}").unwrap();
        // Left alone without a word: folders, hidden entries, names the
        // pattern does not match (links included).
        fs::create_dir(inbox.join("done")).unwrap();
        std::os::unix::fs::symlink(inbox.join("order.json"), inbox.join(".hidden.json")).unwrap();
        std::os::unix::fs::symlink(inbox.join("order.json"), inbox.join("notes.txt")).unwrap();

        let pattern = Pattern::parse("*.json").unwrap();
        let listing = list(inbox, Some(&pattern)).unwrap();
        let names: Vec<&str> = listing.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["order.json"]);
        let mut skipped = listing.skipped;
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            skipped,
            [
                Skipped {
                    path: latin1,
                    why: "a file name that is not UTF-8",
                },
                Skipped {
                    path: inbox.join("link.json"),
                    why: "a symbolic link (links are not followed)",
                },
            ]
        );
    }
}
