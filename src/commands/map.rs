//! `nzela map --mapping FILE [INPUT]`: one message through one mapping.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use nzela_core::mapping::Mapping;

use super::{EXIT_CONFIG, finish};

pub fn run(mapping: &Path, input: Option<&Path>) -> ExitCode {
    let mapping = match Mapping::load(mapping) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (name, bytes) = match input {
        Some(p) if p != Path::new("-") => match std::fs::read(p) {
            Ok(b) => (p.display().to_string(), b),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        _ => {
            let mut b = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut b) {
                eprintln!("error: cannot read standard input: {e}");
                return ExitCode::FAILURE;
            }
            ("standard input".to_owned(), b)
        }
    };
    match mapping.run(&bytes) {
        Ok(out) => {
            let mut stdout = super::stdout();
            let written = stdout.write_all(&out).and_then(|()| {
                if out.ends_with(b"\n") {
                    Ok(())
                } else {
                    stdout.write_all(b"\n")
                }
            });
            finish(written, &mut stdout, ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
