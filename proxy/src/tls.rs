//! The TLS listeners' certificates, and the client certificate presented
//! to the control plane, watched while the proxy runs: reloaded when their
//! files change and on SIGHUP, with their expiry in the metrics. Loading and checking them is [`edgeroute_config::tls`]'s.

pub use edgeroute_config::tls::{
    Reload, Role, TlsCert, WATCH_INTERVAL, install_crypto_provider, unix_now,
};
use std::sync::Arc;

/// What a TLS listener offers by ALPN: HTTP/2, then HTTP/1.1.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Until shutdown, every [`WATCH_INTERVAL`] and at once on SIGHUP: each
/// certificate's files read again (by the label of its expiry metric: a
/// listener's address, or `table.client_tls`), and a changed pair put in
/// force for new connections; files that cannot be used leave the
/// certificate in force, with an error log line and a count in
/// `edgeroute_tls_certificate_reloads_total{result="failed"}`. The expiry
/// of the certificate in force is kept in
/// `edgeroute_tls_certificate_expiry_timestamp_seconds`, and a certificate
/// in force outside its dates is logged as an error once (at start, when
/// it expires, when such a certificate is put in force). Run also
/// without certificates: SIGHUP, caught here, then never stops the proxy
/// (its default action) when the table does not come from a file.
/// `rereads`: made with [`WATCH_INTERVAL`] before the server starts, so
/// that SIGHUP is caught from then on.
pub async fn watch(
    certs: Vec<(String, Arc<TlsCert>)>,
    state: Arc<crate::state::AppState>,
    mut rereads: crate::lifecycle::Rereads,
) {
    let reloads = &state.metrics.tls_certificate_reloads;
    let expiry = |(label, cert): &(String, Arc<TlsCert>)| {
        state
            .metrics
            .tls_certificate_expiry
            .with_label_values(&[label.as_str()])
            .set(cert.validity().not_after);
    };
    // Whether each certificate in force was last seen outside its dates, so
    // that its expiry is logged once.
    let mut faulty = vec![false; certs.len()];
    let dates = |faulty: &mut [bool]| {
        let now = unix_now();
        for ((_, cert), faulty) in certs.iter().zip(faulty) {
            cert.log_dates(now, faulty);
        }
    };
    certs.iter().for_each(&expiry);
    dates(&mut faulty);
    while let Some(forced) = rereads.next(&state.lifecycle).await {
        if forced {
            if certs.is_empty() {
                if matches!(
                    state.config.table,
                    edgeroute_config::TableSource::Control { .. }
                ) {
                    tracing::info!(
                        "SIGHUP: nothing to reload (the table comes from the control plane, no listener has TLS, and no client certificate is presented to it)"
                    );
                }
            } else {
                tracing::info!("SIGHUP: reading the TLS certificate files again");
            }
        }
        for (watched, faulty) in certs.iter().zip(faulty.iter_mut()) {
            // Reading two small files: off the runtime's threads.
            let reloaded = {
                let cert = Arc::clone(&watched.1);
                tokio::task::spawn_blocking(move || cert.reload_logged(forced)).await
            };
            match reloaded {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Loaded) => {
                    reloads.with_label_values(&["ok"]).inc();
                    expiry(watched);
                    // A certificate put in force outside its dates is logged.
                    *faulty = false;
                }
                Ok(Reload::Failed(_)) => reloads.with_label_values(&["failed"]).inc(),
                Err(e) => {
                    tracing::error!(tls = %watched.1.name(), error = %e, "one certificate reload failed");
                }
            }
        }
        dates(&mut faulty);
    }
}
