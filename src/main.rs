//! The `nzela` command: parse the arguments, run the chosen command, exit
//! with its code. Each command lives in `commands/`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Map { mapping, input } => commands::map::run(&mapping, input.as_deref()),
        Command::Test { paths } => commands::test::run(&paths),
    }
}
