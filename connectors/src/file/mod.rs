//! Folders: an inbox source and an outbox destination.
//!
//! **Inbox** ([`FileSource`]). Every `poll_interval` the folder is listed.
//! A regular, non-hidden file whose name matches `pattern` is taken once
//! its size and modification time have stayed the same for `settle`. It is
//! read and decoded; a file that is empty, too large or not decodable is
//! moved to `error/` with a `<name>.error` file saying why. Otherwise its
//! message is committed to the journal, and only then is the file moved to
//! `done/`. The idempotency key `file:<name>:<size>:<mtime>` makes a file
//! read again after a crash (committed, not yet moved) a duplicate that is
//! not routed twice. If the journal cannot take the message, the file
//! stays in the inbox for the next poll. An entry the pattern would take
//! but that is not a regular file with a UTF-8 name (a symbolic link, a
//! special file, a name in another encoding) stays where it is, with a
//! warning naming it, logged once while it stays.
//!
//! **Outbox** ([`FileDestination`]). Each delivery is written to a hidden
//! temporary file in the outbox itself (so that the rename cannot cross
//! file systems), flushed to disk, renamed onto its final name and the
//! folder flushed: a reader never sees a partial file, and a written file
//! survives a crash. The deliveries waiting when a write starts are
//! written together, with one flush of their data (each file's, or the
//! file system's with `sync = "filesystem"`) and one of the folder. The
//! same delivery written again replaces its own file. The temporary files
//! a crash leaves behind are removed when the outbox is next opened.
//!
//! All file I/O runs on the blocking pool, never on the async workers.

mod config;
mod destination;
mod glob;
mod source;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use config::{DestinationConfig, SourceConfig};
pub use destination::FileDestination;
pub use glob::Pattern;
pub use source::FileSource;

/// Longest file name most file systems allow, in bytes.
const MAX_NAME: usize = 255;

/// Checks a rendered outbox file name; the error completes "... makes ".
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty file name".to_owned());
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "\"{name}\", a file name with a path separator ('/' or '\\')"
        ));
    }
    if name.contains("..") {
        return Err(format!("\"{name}\", a file name with \"..\""));
    }
    if name.starts_with('.') {
        return Err(format!(
            "\"{name}\", a hidden file name (starting with '.')"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "a file name of {} bytes, over the limit of {MAX_NAME}",
            name.len()
        ));
    }
    Ok(())
}

/// Moves `from` into `dir` under its own name, or with `-1`, `-2`, ...
/// before its extension if that name is taken: an earlier file is never
/// overwritten. Returns where it went.
pub(crate) fn move_unique(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..10_000u32 {
        let to = dir.join(numbered(name, n));
        // A hard link fails if the name is taken, which a rename would not:
        // there is no window in which another file could be overwritten.
        match fs::hard_link(from, &to) {
            Ok(()) => {
                fs::remove_file(from)?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(_) => {
                // No hard links here (another file system, or one without
                // links): check, then rename or copy.
                if fs::symlink_metadata(&to).is_ok() {
                    continue;
                }
                return rename_or_copy(from, &to).map(|()| to);
            }
        }
    }
    Err(io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

fn rename_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            fs::copy(from, to)?;
            fs::File::open(to)?.sync_all()?;
            fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

/// `order.json`, `order-1.json`, `order-2.json`, ...
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => format!("{}-{n}{}", &name[..i], &name[i..]),
        None => format!("{name}-{n}"),
    }
}
