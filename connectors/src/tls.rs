//! The TLS crypto provider. reqwest is built here without a provider of
//! its own (`rustls-no-provider`), so that one provider, ring, serves the
//! whole process; it must be installed before the first client is built.

use std::sync::Once;

/// Installs rustls' ring provider as the process default. Idempotent; a
/// provider installed earlier by someone else is left in place.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
