//! nzela-core: the protocol-free heart of nzela.
//!
//! - [`value`]: the one in-memory tree every format decodes into.
//! - [`codec`]: JSON, XML and CSV to and from that tree, with limits and
//!   positioned errors.
//! - [`yaml`]: a YAML reader that keeps the line and column of every node,
//!   for the mapping files.
//! - [`mapping`]: mapping files: compiled once, run per message.
//! - [`journal`]: custody of every accepted message (SQLite), its
//!   deliveries and its event trail.
//! - [`runtime`]: intake, routing and delivery: what connectors plug into.

pub mod codec;
pub mod journal;
pub mod mapping;
pub mod runtime;
pub mod value;
pub mod yaml;

pub use value::{Map, Number, Value};
