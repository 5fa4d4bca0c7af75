//! The settings of an inbox folder (`type = "file"` source) and of an
//! outbox folder (`type = "file"` destination).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use nzela_core::runtime::dispatch::DispatchSettings;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::glob::Pattern;
use crate::common::{
    BusinessKey, ByteSize, DurationValue, RetryConfig, SourceFormat, dispatch_settings,
};
use crate::template::{Template, Templates, sample};

/// Longest one write to an outbox may take, as the dispatcher sees it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// An inbox folder: each complete file in it becomes a message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The inbox folder (created if missing). Required.
    pub path: PathBuf,
    /// `"json"`, `"xml"` or `"csv"`: a file that does not decode in this
    /// format is moved to `error`. Required.
    pub format: SourceFormat,
    /// Only files whose name matches this pattern are taken (`*`, `?`,
    /// `[a-z]`, `[!x]`), such as `"*.json"`. Hidden files (a name starting
    /// with `.`) are never taken, whatever the pattern. Default: every
    /// file.
    #[serde(default)]
    pub pattern: Option<Pattern>,
    /// How often the folder is read. Default `"1s"`.
    #[serde(default = "default_poll_interval", deserialize_with = "poll_interval")]
    pub poll_interval: DurationValue,
    /// A file is taken only once its size and modification time have not
    /// changed for this long, so that a file still being written is left
    /// alone. A file renamed into the folder complete (the safe way to
    /// drop one) is taken at the first poll once its modification time is
    /// this old. Default `"1s"`.
    #[serde(default = "default_settle")]
    pub settle: DurationValue,
    /// Where files go once their message is committed to the journal.
    /// Default `<path>/done`.
    #[serde(default)]
    pub done: Option<PathBuf>,
    /// Where refused files go (empty, too large, or not decodable), each
    /// with a `<name>.error` file beside it saying why. Default
    /// `<path>/error`.
    #[serde(default)]
    pub error: Option<PathBuf>,
    /// Largest file taken; a larger one is moved to `error`. Default
    /// `"10MiB"`.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// A path in the message (`order.order_id`) whose value is its business
    /// key: the message can be found by it. Default: none.
    #[serde(default)]
    pub business_key: Option<BusinessKey>,
    /// Deepest nesting of objects/arrays (JSON) or elements (XML) accepted;
    /// a deeper file is moved to `error`. Default 64.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

impl SourceConfig {
    /// The folder accepted files are moved to.
    pub fn done_dir(&self) -> PathBuf {
        self.done.clone().unwrap_or_else(|| self.path.join("done"))
    }

    /// The folder refused files are moved to.
    pub fn error_dir(&self) -> PathBuf {
        self.error
            .clone()
            .unwrap_or_else(|| self.path.join("error"))
    }
}

fn default_poll_interval() -> DurationValue {
    DurationValue::secs(1)
}

fn default_settle() -> DurationValue {
    DurationValue::secs(1)
}

fn default_max_size() -> ByteSize {
    ByteSize::mib(10)
}

fn default_max_depth() -> usize {
    64
}

fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<DurationValue, D::Error> {
    let v = DurationValue::deserialize(d)?;
    if v.get().is_zero() {
        return Err(de::Error::custom(
            "`poll_interval` must be longer than 0 (e.g. \"1s\")",
        ));
    }
    Ok(v)
}

/// An outbox folder: each delivery is written as one file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The outbox folder (created if missing). Required.
    pub path: PathBuf,
    /// The file name, a template (variables: delivery_id, message_id,
    /// route, destination, attempt, business_key, correlation_id,
    /// extension); it may not contain `/`, `\` or `..`, nor start with `.`.
    /// Default `"{{ delivery_id }}.{{ extension }}"`, unique per delivery.
    #[serde(default = "default_filename", deserialize_with = "filename_template")]
    pub filename: Template,
    /// Deliveries written at once to this folder: they are written in
    /// batches of up to this many, with one flush each. Default 256.
    #[serde(default = "default_outbox_concurrency")]
    pub concurrency: NonZeroUsize,
    /// How a batch is made durable: `"files"` flushes each file, then the
    /// folder; `"filesystem"` flushes the whole file system holding the
    /// folder (`syncfs`) twice per batch, far fewer disk flushes when
    /// many files are written at once, at the price of flushing whatever
    /// else was written to that file system. Default `"files"`.
    #[serde(default)]
    pub sync: OutboxSync,
    /// When to give up on a delivery that keeps failing (a full disk): a
    /// table of `max_attempts`, `initial_backoff`, `max_backoff`,
    /// `max_age`. Default: 10 attempts, 1s doubling up to 5m, for at most
    /// 24h.
    #[serde(default)]
    pub retry: RetryConfig,
}

impl DestinationConfig {
    /// How the dispatcher sends to this destination. A write has no
    /// answer, so there is no `reply_to`.
    pub fn dispatch_settings(&self, name: &str) -> DispatchSettings {
        dispatch_settings(name, self.concurrency, &self.retry, None, ATTEMPT_TIMEOUT)
    }

    pub(crate) fn templates(&self) -> Result<Templates, String> {
        let mut t = Templates::default();
        t.add("filename", &self.filename)?;
        Ok(t)
    }
}

/// How an outbox makes a batch of files durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxSync {
    /// Each file flushed (`fsync`), then the folder once.
    #[default]
    Files,
    /// The file system holding the folder flushed once after the files
    /// are written and once after they are renamed (`syncfs`, Linux).
    Filesystem,
}

impl OutboxSync {
    /// The way used here: `syncfs` exists on Linux only; elsewhere each
    /// file is flushed.
    pub fn effective(self) -> OutboxSync {
        if cfg!(target_os = "linux") {
            self
        } else {
            OutboxSync::Files
        }
    }
}

fn default_outbox_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}

pub(crate) const DEFAULT_FILENAME: &str = "{{ delivery_id }}.{{ extension }}";

fn default_filename() -> Template {
    Template::constant(DEFAULT_FILENAME)
}

fn filename_template<'de, D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
    let t = Template::deserialize_field(d, "filename")?;
    let mut templates = Templates::default();
    templates.add("filename", &t).map_err(de::Error::custom)?;
    let name = templates
        .render("filename", &sample())
        .map_err(de::Error::custom)?;
    super::check_file_name(&name)
        .map_err(|e| de::Error::custom(format!("`filename`: \"{t}\" makes {e}")))?;
    Ok(t)
}
