//! One TLS stack for the whole process: rustls with ring.

/// Installs ring as rustls' process-wide crypto provider. rustls panics at
/// first use if it finds more than one provider and none was chosen, so this
/// runs before anything touches TLS.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer leaves a provider in place,
        // which is all that matters.
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            tracing::debug!("a rustls crypto provider was already installed");
        }
    }
}
