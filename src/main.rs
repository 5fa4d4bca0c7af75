//! The `nzela` command: parse the arguments, run the chosen command, exit
//! with its code. Each command lives in `commands/`; the daemon's wiring in
//! `daemon`, the configuration and its checks in `config`.

mod commands;
mod config;
mod daemon;
mod priority;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nzela_core::journal::ListFilter;

/// mimalloc instead of the C library's allocator, for Rust's allocations
/// and, through its `override` feature, for the C code's (SQLite copies
/// every body and document it writes or reads): each message is a few
/// kilobytes allocated on one thread and freed on another, where glibc's
/// arenas spent a fifth of the daemon's CPU. It keeps more memory in reserve
/// (`MIMALLOC_PURGE_DELAY=0` gives it back sooner, at some CPU): see
/// docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The configuration `nzela run`, `check` and `messages` use by default.
const DEFAULT_CONFIG: &str = "config/nzela.toml";

/// nzela: the interoperability hub. Connectors, declarative mappings and a
/// durable journal between the systems of the programme.
#[derive(Parser)]
#[command(name = "nzela", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: accept, journal, route, map and deliver messages.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format, overriding the configuration: text or json.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Check a configuration, its mappings and lookup tables; report every problem.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Map one message with a mapping file and write the result to standard output.
    Map {
        /// The mapping file (YAML).
        #[arg(long, short)]
        mapping: PathBuf,
        /// The message to map; standard input when absent or `-`.
        input: Option<PathBuf>,
    },
    /// Run the tests written in mapping files.
    Test {
        /// Mapping files, or folders searched for *.yaml / *.yml files.
        #[arg(default_value = "mappings")]
        paths: Vec<PathBuf>,
    },
    /// Find messages in the journal, show their trail, replay dead letters.
    Messages {
        /// The configuration file (for the journal's location).
        #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The journal file, instead of the one the configuration names.
        #[arg(long, global = true)]
        journal: Option<PathBuf>,
        #[command(subcommand)]
        command: MessagesCommand,
    },
}

#[derive(Subcommand)]
enum MessagesCommand {
    /// List messages, newest first.
    List {
        /// Only messages with a delivery in this state (or unrouted, received or rejected messages).
        #[arg(long, value_parser = ["dead", "pending", "delivered", "unrouted", "received", "rejected"])]
        state: Option<String>,
        /// Only messages with a delivery on this route.
        #[arg(long)]
        route: Option<String>,
        /// Only the message with this id, business key, correlation id or
        /// delivery id.
        #[arg(long)]
        key: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Write JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a message (by id, business key, correlation id or delivery id):
    /// its deliveries and its event trail.
    Show {
        key: String,
        /// Write JSON.
        #[arg(long)]
        json: bool,
        /// Also print the message body.
        #[arg(long)]
        body: bool,
    },
    /// Requeue dead-lettered deliveries: of a message (by id or business
    /// key), or one delivery (by its id).
    Replay { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => commands::run::run(&config, log_format.as_deref()),
        Command::Check { config } => commands::check::run(&config),
        Command::Map { mapping, input } => commands::map::run(&mapping, input.as_deref()),
        Command::Test { paths } => commands::test::run(&paths),
        Command::Messages {
            config,
            journal,
            command,
        } => {
            let journal = match commands::messages::journal_path(&config, journal.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(commands::EXIT_CONFIG);
                }
            };
            match command {
                MessagesCommand::List {
                    state,
                    route,
                    key,
                    limit,
                    json,
                } => commands::messages::list(
                    &journal,
                    ListFilter {
                        state,
                        route,
                        key,
                        limit,
                    },
                    json,
                ),
                MessagesCommand::Show { key, json, body } => {
                    commands::messages::show(&journal, &key, json, body)
                }
                MessagesCommand::Replay { key } => commands::messages::replay(&journal, &key),
            }
        }
    }
}
