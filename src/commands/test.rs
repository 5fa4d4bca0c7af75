//! `nzela test [PATH ...]`: the tests written in mapping files.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nzela_core::mapping::Mapping;

use super::finish;

/// How many tests passed and failed, and how many files did not load.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    broken: usize,
}

pub fn run(paths: &[PathBuf]) -> ExitCode {
    let mut files = Vec::new();
    for p in paths {
        if let Err(e) = collect(p, &mut files) {
            eprintln!("error: {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    if files.is_empty() {
        eprintln!(
            "error: no mapping files (*.yaml, *.yml) under {}",
            show_paths(paths)
        );
        return ExitCode::FAILURE;
    }
    // Line by line, as the tests run: no buffer beyond the line.
    let mut out = io::stdout().lock();
    let mut tally = Tally::default();
    let written = run_files(&mut out, &files, &mut tally);
    let code = if tally.failed > 0 || tally.broken > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    finish(written, &mut out, code)
}

/// Runs the tests of every file, writing one line per test and a summary.
fn run_files(out: &mut impl Write, files: &[PathBuf], tally: &mut Tally) -> io::Result<()> {
    for file in files {
        let mapping = match Mapping::load(file) {
            Ok(m) => m,
            Err(e) => {
                tally.broken += 1;
                writeln!(out, "FAIL {}: the mapping does not load", file.display())?;
                for line in e.to_string().lines() {
                    writeln!(out, "     {line}")?;
                }
                continue;
            }
        };
        if mapping.tests().is_empty() {
            writeln!(out, "--   {}: no tests", file.display())?;
            continue;
        }
        for outcome in mapping.run_tests() {
            if outcome.passed {
                tally.passed += 1;
                writeln!(out, "ok   {}: {}", file.display(), outcome.name)?;
            } else {
                tally.failed += 1;
                writeln!(out, "FAIL {}: {}", file.display(), outcome.name)?;
                for line in outcome.detail.unwrap_or_default().lines() {
                    writeln!(out, "     {line}")?;
                }
            }
        }
    }
    let mut summary = format!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.broken > 0 {
        summary.push_str(&format!(", {} mapping file(s) did not load", tally.broken));
    }
    writeln!(out, "{summary}")
}

/// The mapping files at `path`: the file itself, or every *.yaml / *.yml
/// under a folder, in a stable order.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
