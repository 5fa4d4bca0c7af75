//! Runs the ASYCUDA mapping (or the hand-written conversion of the
//! benchmark) N times on the sample order, for instruction counts that do
//! not depend on the machine's load:
//!
//! ```sh
//! cargo build --release -p nzela-core --example mapping_loop
//! for n in 1 201; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/mapping_loop engine $n
//! done
//! ```
//!
//! (engine or handwritten; the difference of the two totals divided by 200
//! is the cost of one order.)

#[path = "../benches/support/handwritten.rs"]
mod handwritten;

use std::process::ExitCode;

use nzela_core::mapping::Mapping;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (which, n) = match args.as_slice() {
        [w, n] if (w == "engine" || w == "handwritten") && n.parse::<usize>().is_ok() => {
            (w.as_str(), n.parse::<usize>().unwrap_or(1))
        }
        _ => {
            eprintln!("usage: mapping_loop engine|handwritten N");
            return ExitCode::from(2);
        }
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let mapping = match Mapping::load(format!(
        "{root}/../mappings/marketplace-order-to-asycuda-export.yaml"
    )) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let order = match std::fs::read(format!("{root}/../mappings/tests/order-paid.json")) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("the sample order: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut bytes = 0;
    for _ in 0..n {
        let out = if which == "engine" {
            mapping.run(&order).map_err(|e| e.to_string())
        } else {
            handwritten::handwritten(&order).map_err(|e| e.to_string())
        };
        match out {
            Ok(doc) => bytes += doc.len(),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{n} documents, {bytes} bytes");
    ExitCode::SUCCESS
}
