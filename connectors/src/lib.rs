//! nzela-connectors: one module per protocol. Each connector is a config
//! struct (documented fields, unknown fields refused) and the runtime object
//! it builds.
