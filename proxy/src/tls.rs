//! One TLS stack for the whole process: rustls with ring. Here: the
//! process-wide provider, and the TLS listeners' certificates, loaded with
//! errors that say what is wrong and reloaded while the proxy runs.

use arc_swap::ArcSwap;
use edgeroute_config::TlsFiles;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

/// How an encrypted PKCS#8 key's PEM section starts.
const ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
/// The header of an older encrypted PEM key (PKCS#1 or SEC1).
const ENCRYPTED_LEGACY: &str = "Proc-Type: 4,ENCRYPTED";

/// A TLS listener's certificate chain and key (`listeners[index].tls`),
/// as rustls serves them: replaced while the proxy runs when their files
/// change (see [`ListenerCert::reload`] and [`watch`]). Each handshake
/// takes the pair in force when it starts.
#[derive(Debug)]
pub struct ListenerCert {
    index: usize,
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The files as last read: a change is loaded once, and a bad one
    /// reported once (and again on SIGHUP).
    seen: Mutex<Seen>,
}

#[derive(Debug)]
enum Seen {
    Unreadable,
    Read {
        cert: Vec<u8>,
        key: Vec<u8>,
        /// Whether these bytes are the pair in force.
        loaded: bool,
    },
}

/// What a [`ListenerCert::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last read.
    Unchanged,
    /// A new certificate is in force.
    Loaded,
    /// The files cannot be used; the certificate in force stays.
    Failed(String),
}

impl ListenerCert {
    /// Loads `listeners[index].tls`. Every way the files can be wrong
    /// (unreadable, no PEM section of the kind, an encrypted key, a key
    /// that is not the certificate's) is an error that names the field and
    /// the file, and says what to do.
    pub fn load(index: usize, files: &TlsFiles) -> Result<Arc<ListenerCert>, String> {
        let (cert_pem, key_pem) = read_files(index, files)?;
        let key = certified_key(index, files, &cert_pem, &key_pem)?;
        Ok(Arc::new(ListenerCert {
            index,
            files: files.clone(),
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(Seen::Read {
                cert: cert_pem,
                key: key_pem,
                loaded: true,
            }),
        }))
    }

    /// Reads the files again and puts a changed pair in force. `forced`
    /// (SIGHUP) reports files that cannot be used again, even when they
    /// are as last read; files as last loaded are left as they are.
    pub fn reload(&self, forced: bool) -> Reload {
        let read = read_files(self.index, &self.files);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = match read {
            Ok(read) => read,
            Err(_) if matches!(*seen, Seen::Unreadable) && !forced => return Reload::Unchanged,
            Err(e) => {
                *seen = Seen::Unreadable;
                return Reload::Failed(e);
            }
        };
        if let Seen::Read { cert, key, loaded } = &*seen
            && *cert == cert_pem
            && *key == key_pem
            && (*loaded || !forced)
        {
            return Reload::Unchanged;
        }
        let loaded = certified_key(self.index, &self.files, &cert_pem, &key_pem);
        *seen = Seen::Read {
            cert: cert_pem,
            key: key_pem,
            loaded: loaded.is_ok(),
        };
        match loaded {
            // The same certificate as in force (files back as they were).
            Ok(key) if key.cert == self.current.load().cert => Reload::Unchanged,
            Ok(key) => {
                self.current.store(Arc::new(key));
                Reload::Loaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// The rustls configuration that serves this certificate: TLS 1.2 and
    /// 1.3, HTTP/2 preferred to HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// How often [`watch`] looks at the certificate files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// Until shutdown, every [`WATCH_INTERVAL`] and at once on SIGHUP: each
/// listener's certificate files read again, and a changed pair put in
/// force for new connections; files that cannot be used leave the
/// certificate in force, with an error log line and a count in
/// `edgeroute_tls_certificate_reloads_total{result="failed"}`. Run also
/// without certificates: SIGHUP, caught here, then never stops the proxy
/// (its default action) when the table does not come from a file.
/// `rereads`: made with [`WATCH_INTERVAL`] before the server starts, so
/// that SIGHUP is caught from then on.
pub async fn watch(
    certs: Vec<Arc<ListenerCert>>,
    state: Arc<crate::state::AppState>,
    mut rereads: crate::lifecycle::Rereads,
) {
    let reloads = &state.metrics.tls_certificate_reloads;
    while let Some(forced) = rereads.next(&state.lifecycle).await {
        if forced {
            if certs.is_empty() {
                if matches!(
                    state.config.table,
                    edgeroute_config::TableSource::Control { .. }
                ) {
                    tracing::info!(
                        "SIGHUP: nothing to reload (the table comes from the control plane, and no listener has TLS)"
                    );
                }
            } else {
                tracing::info!("SIGHUP: reading the TLS certificate files again");
            }
        }
        for cert in &certs {
            let listener = format!("listeners[{}]", cert.index);
            // Reading two small files: off the runtime's threads.
            let reloaded = {
                let cert = Arc::clone(cert);
                tokio::task::spawn_blocking(move || cert.reload(forced)).await
            };
            match reloaded {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Loaded) => {
                    reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(%listener, cert = %cert.files.cert.display(), "TLS certificate reloaded; new connections get it");
                }
                Ok(Reload::Failed(e)) => {
                    reloads.with_label_values(&["failed"]).inc();
                    tracing::error!(%listener, error = %e, "TLS certificate not reloaded; the one in force stays");
                }
                Err(e) => tracing::error!(%listener, error = %e, "one certificate reload failed"),
            }
        }
    }
}

/// The most a certificate or key file may hold.
const MAX_PEM: u64 = 1024 * 1024;

/// The certificate and key files' bytes. Should the certificate change
/// while the key is read (a rotation that swaps both files, such as a
/// Kubernetes secret volume's), they are read again, up to 3 times, so a
/// certificate is not paired with the next one's key.
fn read_files(index: usize, files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |name: &str, path: &Path| {
        edgeroute_config::read_regular(path, MAX_PEM, "a certificate chain or key takes a few KiB")
            .map_err(|e| format!("{}: cannot read it: {e}", field(index, name, path)))
    };
    let mut cert = read("cert", &files.cert)?;
    for _ in 0..3 {
        let key = read("key", &files.key)?;
        let again = read("cert", &files.cert)?;
        if again == cert {
            return Ok((cert, key));
        }
        cert = again;
    }
    Ok((cert, read("key", &files.key)?))
}

/// `listeners[index].tls.NAME (PATH)`, for errors.
fn field(index: usize, name: &str, path: &Path) -> String {
    format!("listeners[{index}].tls.{name} ({})", path.display())
}

/// The pair from the files' bytes, with an error that names what is wrong.
fn certified_key(
    index: usize,
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", field(index, "cert", &files.cert)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no certificate (a PEM \"BEGIN CERTIFICATE\" section, the server's first, then its chain)",
            field(index, "cert", &files.cert)
        ));
    }
    let holds = |marker: &str| {
        key_pem
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    };
    if holds(ENCRYPTED) || holds(ENCRYPTED_LEGACY) {
        return Err(format!(
            "{}: the key is encrypted, which a proxy that starts unattended cannot use; \
             decrypt it (openssl pkey -in KEY -out PLAIN_KEY) and keep it readable to the proxy alone",
            field(index, "key", &files.key)
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: holds no private key (a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section)",
            field(index, "key", &files.key)
        ),
        e => format!("{}: not valid PEM: {e}", field(index, "key", &files.key)),
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: is not the key of the first certificate in {} (give the private key made with \
             that certificate, and put the server's own certificate first in its file, then its chain)",
            field(index, "key", &files.key),
            files.cert.display()
        ),
        e => format!(
            "listeners[{index}].tls: cannot use the certificate {} with the key {}: {e}",
            files.cert.display(),
            files.key.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and its key, written as PEM files in `dir`.
    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, made.cert.pem()).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        files
    }

    fn error(index: usize, files: &TlsFiles) -> String {
        install_crypto_provider();
        ListenerCert::load(index, files).expect_err("the files are refused")
    }

    #[test]
    fn a_certificate_and_its_key_offer_h2_then_http1() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = ListenerCert::load(0, &pair(dir.path(), "a"))
            .unwrap()
            .server_config();
        assert_eq!(config.alpn_protocols, [&b"h2"[..], &b"http/1.1"[..]]);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(dir.path(), "a"), pair(dir.path(), "b"));
        let mixed = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = error(2, &mixed);
        assert!(e.starts_with("listeners[2].tls.key ("), "{e}");
        assert!(
            e.contains("b.key") && e.contains("is not the key of the first certificate in"),
            "{e}"
        );
        assert!(e.contains("a.crt"), "{e}");
    }

    #[test]
    fn files_without_the_pem_sections_asked_for_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a PEM file\n").unwrap();

        // The key's file given as the certificate: no certificate in it.
        let e = error(
            0,
            &TlsFiles {
                cert: good.key.clone(),
                key: good.key.clone(),
            },
        );
        assert!(e.starts_with("listeners[0].tls.cert ("), "{e}");
        assert!(e.contains("holds no certificate"), "{e}");

        // The certificate's file given as the key: no key in it.
        let e = error(
            0,
            &TlsFiles {
                cert: good.cert.clone(),
                key: good.cert.clone(),
            },
        );
        assert!(e.starts_with("listeners[0].tls.key ("), "{e}");
        assert!(e.contains("holds no private key"), "{e}");

        let e = error(
            1,
            &TlsFiles {
                cert: empty.clone(),
                key: good.key.clone(),
            },
        );
        assert!(
            e.contains("listeners[1].tls.cert") && e.contains("holds no certificate"),
            "{e}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = error(
            0,
            &TlsFiles {
                cert: broken,
                key: good.key.clone(),
            },
        );
        assert!(
            e.contains("listeners[0].tls.cert") && e.contains("not valid PEM"),
            "{e}"
        );
    }

    #[test]
    fn an_encrypted_key_is_named_with_how_to_decrypt_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a");
        let locked = dir.path().join("locked.key");
        std::fs::write(
            &locked,
            format!("{ENCRYPTED}\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n"),
        )
        .unwrap();
        let legacy = dir.path().join("legacy.key");
        std::fs::write(
            &legacy,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        for key in [locked, legacy] {
            let e = error(
                0,
                &TlsFiles {
                    cert: good.cert.clone(),
                    key,
                },
            );
            assert!(e.starts_with("listeners[0].tls.key ("), "{e}");
            assert!(
                e.contains("is encrypted") && e.contains("openssl pkey"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a");
        let gone = dir.path().join("gone.key");
        let e = error(
            0,
            &TlsFiles {
                cert: good.cert.clone(),
                key: gone,
            },
        );
        assert!(e.starts_with("listeners[0].tls.key ("), "{e}");
        assert!(
            e.contains("gone.key") && e.contains("cannot read it"),
            "{e}"
        );
    }

    /// The server's certificate in force.
    fn serving(cert: &ListenerCert) -> CertificateDer<'static> {
        cert.current.load().cert.first().expect("a chain").clone()
    }

    fn pem_cert(files: &TlsFiles) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&files.cert).unwrap()
    }

    #[test]
    fn changed_files_are_put_in_force_and_bad_ones_leave_the_old() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(dir.path(), "a"), pair(dir.path(), "b"));
        let live = TlsFiles {
            cert: dir.path().join("live.crt"),
            key: dir.path().join("live.key"),
        };
        let put = |from: &TlsFiles| {
            std::fs::copy(&from.cert, &live.cert).unwrap();
            std::fs::copy(&from.key, &live.key).unwrap();
        };
        put(&a);
        let cert = ListenerCert::load(1, &live).unwrap();
        assert_eq!(serving(&cert), pem_cert(&a));
        assert_eq!(cert.reload(false), Reload::Unchanged);
        assert_eq!(cert.reload(true), Reload::Unchanged, "SIGHUP, nothing new");

        put(&b);
        assert_eq!(cert.reload(false), Reload::Loaded);
        assert_eq!(serving(&cert), pem_cert(&b));

        // Half a rotation: A's certificate beside B's key.
        std::fs::copy(&a.cert, &live.cert).unwrap();
        match cert.reload(false) {
            Reload::Failed(e) => assert!(
                e.starts_with("listeners[1].tls.key (") && e.contains("is not the key"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(serving(&cert), pem_cert(&b), "the pair in force stays");
        // Reported once; SIGHUP reports it again.
        assert_eq!(cert.reload(false), Reload::Unchanged);
        assert!(matches!(cert.reload(true), Reload::Failed(_)));
        // The rotation ends.
        std::fs::copy(&a.key, &live.key).unwrap();
        assert_eq!(cert.reload(false), Reload::Loaded);
        assert_eq!(serving(&cert), pem_cert(&a));

        std::fs::remove_file(&live.key).unwrap();
        match cert.reload(false) {
            Reload::Failed(e) => assert!(e.contains("cannot read it"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(serving(&cert), pem_cert(&a));
        assert_eq!(cert.reload(false), Reload::Unchanged, "reported once");
        assert!(matches!(cert.reload(true), Reload::Failed(_)));
        // Back as they were: read again, and nothing new to put in force.
        std::fs::copy(&a.key, &live.key).unwrap();
        assert_eq!(cert.reload(false), Reload::Unchanged);
        assert_eq!(serving(&cert), pem_cert(&a));
    }
}
