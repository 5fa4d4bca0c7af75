//! `nzela test [PATH ...]`: the tests written in mapping files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nzela_core::mapping::Mapping;

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
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for file in &files {
        let mapping = match Mapping::load(file) {
            Ok(m) => m,
            Err(e) => {
                broken += 1;
                println!("FAIL {}: the mapping does not load", file.display());
                for line in e.to_string().lines() {
                    println!("     {line}");
                }
                continue;
            }
        };
        if mapping.tests().is_empty() {
            println!("--   {}: no tests", file.display());
            continue;
        }
        for outcome in mapping.run_tests() {
            if outcome.passed {
                passed += 1;
                println!("ok   {}: {}", file.display(), outcome.name);
            } else {
                failed += 1;
                println!("FAIL {}: {}", file.display(), outcome.name);
                for line in outcome.detail.unwrap_or_default().lines() {
                    println!("     {line}");
                }
            }
        }
    }
    let mut summary = format!("{passed} passed, {failed} failed");
    if broken > 0 {
        summary.push_str(&format!(", {broken} mapping file(s) did not load"));
    }
    println!("{summary}");
    if failed > 0 || broken > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
