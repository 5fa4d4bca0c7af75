//! The outbox writer (see the module description for its rules).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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
        let (dir, temp_id, body) = (
            self.dir.clone(),
            format!("{}.{}", out.delivery_id, out.attempt),
            out.body.clone(),
        );
        let written =
            tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &temp_id, &body)).await;
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

/// Writes `body` as `dir/name` so that no reader ever sees part of it and
/// a crash leaves either the whole file or none.
fn write_atomic(dir: &Path, name: &str, temp_id: &str, body: &[u8]) -> Result<PathBuf, String> {
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
        File::open(dir)
            .and_then(|d| d.sync_all())
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
