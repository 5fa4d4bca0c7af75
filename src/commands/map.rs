//! `nzela map --mapping FILE [INPUT]`: one message through one mapping.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use nzela_core::mapping::Mapping;

use super::EXIT_CONFIG;

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
            let mut stdout = std::io::stdout().lock();
            let written = stdout
                .write_all(&out)
                .and_then(|()| {
                    if out.ends_with(b"\n") {
                        Ok(())
                    } else {
                        stdout.write_all(b"\n")
                    }
                })
                .and_then(|()| stdout.flush());
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the result: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
