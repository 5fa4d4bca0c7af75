//! `nzela check [--config FILE]`: every check `nzela run` makes, without
//! starting anything.

use std::path::Path;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::config;

pub fn run(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} sources, {} destinations, {} routes, {} mappings)",
                file.display(),
                c.sources.len(),
                c.destinations.len(),
                c.routes.len(),
                c.mappings.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("error: {p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
