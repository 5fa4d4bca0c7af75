//! The subcommands of `nzela`, one module each.
//!
//! Exit codes shared by every command:
//! - 0: success;
//! - 1: the work failed (a message could not be mapped, a test failed);
//! - 2: the command line is wrong (reported by the argument parser);
//! - 78: a configuration or mapping file has errors (EX_CONFIG).

pub mod check;
pub mod map;
pub mod messages;
pub mod run;
pub mod test;

/// A configuration or mapping file has errors.
pub const EXIT_CONFIG: u8 = 78;
