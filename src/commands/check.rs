//! `nzela check [--config FILE]`: every check `nzela run` makes, without
//! starting anything.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CONFIG, finish};
use crate::config;

pub fn run(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            let mut out = super::stdout();
            let written = writeln!(
                out,
                "{}: ok ({} sources, {} destinations, {} routes, {} mappings)",
                file.display(),
                c.sources.len(),
                c.destinations.len(),
                c.routes.len(),
                c.mappings.len()
            );
            finish(written, &mut out, ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in &problems.errors {
                eprintln!("error: {p}");
            }
            for w in &problems.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("{} problem(s) found", problems.errors.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
