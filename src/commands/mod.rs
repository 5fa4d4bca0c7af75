//! The subcommands of `nzela`, one module each.
//!
//! Exit codes shared by every command:
//! - 0: success;
//! - 1: the work failed (a message could not be mapped, a test failed);
//! - 2: the command line is wrong (reported by the argument parser);
//! - 78: a configuration or mapping file has errors (EX_CONFIG).
//!
//! Results go to standard output through [`stdout`] and [`finish`]: a
//! reader that stops reading (`nzela messages list | head -1`) ends the
//! command quietly and successfully, as it does `ls`.

pub mod check;
pub mod map;
pub mod messages;
pub mod run;
pub mod test;

use std::io::{self, Write};
use std::process::ExitCode;

/// A configuration or mapping file has errors.
pub const EXIT_CONFIG: u8 = 78;

/// Standard output, locked and buffered for one command's results. What
/// is written reaches the reader at [`finish`] (or when the buffer fills).
pub fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::new(io::stdout().lock())
}

/// Flushes `out` and gives the command's exit code: `code` when everything
/// was written; 0 when the reader went away (a broken pipe: whoever read
/// the output has all they wanted); 1, with the reason, on any other
/// write error.
pub fn finish(written: io::Result<()>, out: &mut impl Write, code: ExitCode) -> ExitCode {
    match written.and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}
