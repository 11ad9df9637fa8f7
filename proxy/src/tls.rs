//! One TLS stack for the whole process: rustls with ring.

use edgeroute_config::TlsFiles;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

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

/// The rustls side of a TLS listener (`listeners[index].tls`): the
/// certificate chain and key from their PEM files, TLS 1.2 and 1.3, and
/// HTTP/2 preferred to HTTP/1.1 by ALPN. Every way the files can be wrong
/// (unreadable, no PEM section of the kind, a key that is not the
/// certificate's) is an error that names the field and the file.
pub fn listener_config(
    index: usize,
    files: &TlsFiles,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let field =
        |name: &str, path: &Path| format!("listeners[{index}].tls.{name} ({})", path.display());
    let read = |name: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", field(name, path)))
    };
    let cert_pem = read("cert", &files.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", field("cert", &files.cert)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no certificate (a PEM \"BEGIN CERTIFICATE\" section, the server's first, then its chain)",
            field("cert", &files.cert)
        ));
    }
    let key_pem = read("key", &files.key)?;
    let holds = |marker: &str| {
        key_pem
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    };
    if holds(ENCRYPTED) || holds(ENCRYPTED_LEGACY) {
        return Err(format!(
            "{}: the key is encrypted, which a proxy that starts unattended cannot use; \
             decrypt it (openssl pkey -in KEY -out PLAIN_KEY) and keep it readable to the proxy alone",
            field("key", &files.key)
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: holds no private key (a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section)",
            field("key", &files.key)
        ),
        e => format!("{}: not valid PEM: {e}", field("key", &files.key)),
    })?;
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: is not the key of the first certificate in {} (give the private key made with \
             that certificate, and put the server's own certificate first in its file, then its chain)",
            field("key", &files.key),
            files.cert.display()
        ),
        e => format!(
            "listeners[{index}].tls: cannot use the certificate {} with the key {}: {e}",
            files.cert.display(),
            files.key.display()
        ),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
        listener_config(index, files).expect_err("the files are refused")
    }

    #[test]
    fn a_certificate_and_its_key_offer_h2_then_http1() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = listener_config(0, &pair(dir.path(), "a")).unwrap();
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
}
