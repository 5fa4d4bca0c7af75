//! nzela-core: the protocol-free heart of nzela.
//!
//! - [`value`]: the one in-memory tree every format decodes into.
//! - [`codec`]: JSON, XML and CSV to and from that tree, with limits and
//!   positioned errors.
//! - [`yaml`]: a YAML reader that keeps the line and column of every node,
//!   for the mapping files.
//! - [`mapping`]: mapping files: compiled once, run per message.

pub mod codec;
pub mod mapping;
pub mod value;
pub mod yaml;

pub use value::{Map, Number, Value};
