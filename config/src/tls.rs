//! One TLS stack for every edgeroute process: rustls with ring. Here: the
//! process-wide provider, the certificates a server presents (the proxy's
//! TLS listeners, the control plane's table server) and a client presents
//! when the control plane asks for one, loaded with errors that say what
//! is wrong and reloaded while the process runs, and the roots a client
//! trusts, or a server trusts for its clients' certificates.

use crate::errors::FieldErrors;
use crate::values;
use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Installs ring as rustls' process-wide crypto provider. rustls panics at
/// first use if it finds more than one provider and none was chosen, so this
/// runs before anything touches TLS.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer leaves a provider in place,
        // which is all that matters.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A certificate chain (its owner's own certificate first) and private
/// key, as PEM files: a server's, or a client's that a server asks for.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `tls = { cert = "...", key = "..." }` as written in a config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert: String,
    key: String,
}

impl RawTls {
    /// The files, relative to `base`; each must be a readable file (what
    /// they hold is judged by [`TlsCert::load`]). `field` names the
    /// table, such as `listeners[0].tls`, in errors.
    pub(crate) fn validate(&self, e: &mut FieldErrors, base: &Path, field: &str) -> TlsFiles {
        for (part, value) in [("cert", &self.cert), ("key", &self.key)] {
            if let Some(why) = values::not_a_named_file(base, value) {
                e.push(
                    format!("{field}.{part}"),
                    format!("must be a readable PEM file, got {value:?} ({why})"),
                );
            }
        }
        TlsFiles {
            cert: values::resolve(base, &self.cert),
            key: values::resolve(base, &self.key),
        }
    }
}

impl RawTls {
    /// A client certificate's files (such as `table.client_tls`), for a
    /// client of a server reached by `url`: refused unless the URL is
    /// `https://` (`url_field` names it).
    pub(crate) fn validate_client(
        &self,
        e: &mut FieldErrors,
        base: &Path,
        field: &str,
        (url_field, url): (&str, &str),
    ) -> TlsFiles {
        if !url.starts_with("https://") {
            e.push(
                field,
                format!("is a client certificate for a control plane reached by https://, and {url_field} is {url:?}: make it https:// or leave {field} out"),
            );
        }
        self.validate(e, base, field)
    }
}

/// How often a server looks at its certificate files for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// A client's `ca_file` (such as `table.ca_file`) as written, `raw`,
/// resolved against `base`: refused, with `not_https` as the reason, when
/// the client's URL is not `https://`, and when it is not a readable file
/// (what it holds is judged by [`client_config`]).
pub(crate) fn ca_file(
    e: &mut FieldErrors,
    base: &Path,
    field: &str,
    raw: &str,
    https: bool,
    not_https: impl FnOnce() -> String,
) -> PathBuf {
    let path = values::resolve(base, raw);
    if !https {
        e.push(field, not_https());
    } else if let Some(why) = values::not_a_file(&path) {
        e.push(
            field,
            format!("must be a readable PEM file of CA certificates, got {raw:?} ({why})"),
        );
    }
    path
}

/// How an encrypted PKCS#8 key's PEM section starts.
const ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
/// The header of an older encrypted PEM key (PKCS#1 or SEC1).
const ENCRYPTED_LEGACY: &str = "Proc-Type: 4,ENCRYPTED";

/// A certificate chain and key, a server's (such as `listeners[0].tls`)
/// or a client's (such as `table.client_tls`), as rustls presents them:
/// replaced while the process runs when their files change (see
/// [`TlsCert::reload`]). Each handshake takes the pair in force when it
/// starts.
#[derive(Debug)]
pub struct TlsCert {
    /// The config field the files come from, such as `listeners[0].tls`.
    name: String,
    role: Role,
    pub files: TlsFiles,
    current: ArcSwap<InForce>,
    /// The files as last read: a change is loaded once, and a bad one
    /// reported once (and again on SIGHUP).
    seen: Mutex<Seen>,
}

/// A certificate chain and key as presented, with the dates of its
/// owner's certificate.
#[derive(Debug)]
struct InForce {
    key: Arc<CertifiedKey>,
    validity: Validity,
    /// The owner's certificate is a CA's (basicConstraints CA:TRUE).
    is_ca: bool,
}

#[derive(Debug)]
enum Seen {
    Unreadable,
    Read {
        cert: Vec<u8>,
        key: Vec<u8>,
        /// Whether these bytes are the pair in force.
        loaded: bool,
        /// Whether they were refused for their dates alone (see
        /// [`TlsCert::reload_at`]): looked at again at each reload,
        /// since time may make them usable.
        dated: bool,
    },
}

/// Whose certificate a [`TlsCert`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server's, presented to every client (a browser, a load balancer).
    Server,
    /// The control plane's, presented to proxies and runbook commands,
    /// whose TLS refuses a CA certificate as a server's.
    ControlServer,
    /// A client's, presented to a server that asks for one (the control
    /// plane, whose TLS refuses a CA certificate as a client's).
    Client,
}

impl Role {
    /// Its certificate, in messages: `the server's` or `the client's`.
    fn whose(self) -> &'static str {
        match self {
            Role::Server | Role::ControlServer => "the server's",
            Role::Client => "the client's",
        }
    }

    /// Who refuses its certificate out of its dates, in messages.
    fn refused_by(self) -> &'static str {
        match self {
            Role::Server | Role::ControlServer => "clients that check certificates refuse it",
            Role::Client => "the server refuses it",
        }
    }

    /// Who refuses a CA certificate as this one, and where the CA goes,
    /// when edgeroute's own TLS is at the other end.
    fn refuses_a_ca(self) -> Option<&'static str> {
        match self {
            Role::Server => None,
            Role::ControlServer => Some(
                "proxies and runbook commands that reach it directly refuse it (CaUsedAsEndEntity): \
                 give the control plane a certificate signed by that CA, and the CA to \
                 table.ca_file and actions.ca_file",
            ),
            Role::Client => Some(
                "a control plane that checks it itself refuses it (CaUsedAsEndEntity): use a \
                 certificate signed by that CA, and give the CA to the control plane's \
                 server.client_ca",
            ),
        }
    }
}

/// When the server's certificate can be used: from its start (notBefore)
/// to its end (notAfter), in Unix seconds. A client that checks
/// certificates refuses it outside them. The chain's other certificates
/// are not judged: a client builds its own path, and a chain may carry an
/// expired cross-signature that clients pass over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Why the certificate cannot be used at `now` (Unix seconds), if it
    /// cannot.
    pub fn fault_at(&self, now: i64) -> Option<String> {
        if now > self.not_after {
            Some(format!("expired at {}", date(self.not_after)))
        } else if now < self.not_before {
            Some(format!("is not valid before {}", date(self.not_before)))
        } else {
            None
        }
    }
}

/// A Unix time as RFC 3339 (UTC), within the years X.509 can write.
pub fn date(unix: i64) -> String {
    /// 9999-12-31T23:59:59Z, the last second X.509's times can name.
    const LAST: i64 = 253_402_300_799;
    let secs = u64::try_from(unix.clamp(0, LAST)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The time now in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a [`TlsCert::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last read.
    Unchanged,
    /// A new certificate is in force.
    Loaded,
    /// The files cannot be used; the certificate in force stays.
    Failed(String),
}

impl TlsCert {
    /// Loads the files of the config field `name` (such as
    /// `listeners[0].tls`). Every way the files can be wrong
    /// (unreadable, no PEM section of the kind, a certificate that is not
    /// X.509, an encrypted key, a key that is not the certificate's) is an
    /// error that names the field and the file, and says what to do. A
    /// certificate outside its dates loads (see [`TlsCert::validity`]):
    /// some clients, such as a load balancer forwarding to the proxy, do
    /// not check it.
    pub fn load(name: impl Into<String>, files: &TlsFiles) -> Result<Arc<TlsCert>, String> {
        Self::load_as(Role::Server, name, files)
    }

    /// [`TlsCert::load`] for `role`'s certificate.
    pub fn load_as(
        role: Role,
        name: impl Into<String>,
        files: &TlsFiles,
    ) -> Result<Arc<TlsCert>, String> {
        let name = name.into();
        let (cert_pem, key_pem) = read_files(&name, files)?;
        let in_force = certified_key(&name, role, files, &cert_pem, &key_pem)?;
        Ok(Arc::new(TlsCert {
            name,
            role,
            files: files.clone(),
            current: ArcSwap::from_pointee(in_force),
            seen: Mutex::new(Seen::Read {
                cert: cert_pem,
                key: key_pem,
                loaded: true,
                dated: false,
            }),
        }))
    }

    /// What `check` warns of: the certificate in force cannot be used at
    /// `now` (Unix seconds), which is presented all the same.
    pub fn date_warning(&self, now: i64) -> Option<String> {
        self.validity().fault_at(now).map(|fault| {
            format!(
                "{}: {} certificate {fault}; {}",
                field(&self.name, "cert", &self.files.cert),
                self.role.whose(),
                self.role.refused_by()
            )
        })
    }

    /// What `check` and start-up warn of: the certificate in force is a
    /// CA's where edgeroute's own TLS, at the other end, refuses one (the
    /// control plane's, a client's). It is a warning, not a refusal: a
    /// load balancer or a sidecar in between may not check it.
    pub fn ca_warning(&self) -> Option<String> {
        let refused = self.role.refuses_a_ca()?;
        self.current.load().is_ca.then(|| {
            format!(
                "{}: {} certificate is a CA certificate (basicConstraints CA:TRUE, as `openssl req \
                 -x509` makes one unless given `-addext basicConstraints=critical,CA:FALSE`); {refused}",
                field(&self.name, "cert", &self.files.cert),
                self.role.whose()
            )
        })
    }

    /// The dates of the certificate in force (its owner's own).
    pub fn validity(&self) -> Validity {
        self.current.load().validity
    }

    /// The config field the files come from, such as `listeners[0].tls`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`TlsCert::reload_at`] now.
    pub fn reload(&self, forced: bool) -> Reload {
        self.reload_at(forced, unix_now())
    }

    /// Reads the files again and puts a changed pair in force. `forced`
    /// (SIGHUP) reports files that cannot be used again, even when they
    /// are as last read; files as last loaded are left as they are. A
    /// certificate that cannot be used at `now` (Unix seconds; expired, or
    /// not yet valid) never replaces one that can: it is refused, and looked
    /// at again at each reload until its time comes or the files change.
    pub fn reload_at(&self, forced: bool, now: i64) -> Reload {
        let read = read_files(&self.name, &self.files);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = match read {
            Ok(read) => read,
            Err(_) if matches!(*seen, Seen::Unreadable) && !forced => return Reload::Unchanged,
            Err(e) => {
                *seen = Seen::Unreadable;
                return Reload::Failed(e);
            }
        };
        // Files as last read, refused then for their dates alone.
        let was_dated = match &*seen {
            Seen::Read {
                cert,
                key,
                loaded,
                dated,
            } if *cert == cert_pem && *key == key_pem => {
                if !dated && (*loaded || !forced) {
                    return Reload::Unchanged;
                }
                *dated
            }
            _ => false,
        };
        let in_force = self.current.load_full();
        let (outcome, loaded, dated) =
            match certified_key(&self.name, self.role, &self.files, &cert_pem, &key_pem) {
                Err(e) => (Reload::Failed(e), false, false),
                // The same certificate as in force (files back as they were).
                Ok(next) if next.key.cert == in_force.key.cert => (Reload::Unchanged, true, false),
                Ok(next) => match next.validity.fault_at(now) {
                    Some(fault) if in_force.validity.fault_at(now).is_none() => (
                        Reload::Failed(format!(
                            "{}: {} certificate {fault}; the one in force, valid until {}, \
                             stays; put a certificate valid now in the files",
                            field(&self.name, "cert", &self.files.cert),
                            self.role.whose(),
                            date(in_force.validity.not_after)
                        )),
                        false,
                        true,
                    ),
                    _ => {
                        self.current.store(Arc::new(next));
                        (Reload::Loaded, true, false)
                    }
                },
            };
        *seen = Seen::Read {
            cert: cert_pem,
            key: key_pem,
            loaded,
            dated,
        };
        // Files refused for their dates are reported once, like other
        // faults, and again on SIGHUP.
        if was_dated && dated && !forced {
            return Reload::Unchanged;
        }
        outcome
    }

    /// The rustls configuration that serves this certificate: TLS 1.2 and
    /// 1.3, offering the application protocols `alpn` (most preferred
    /// first, such as `h2` then `http/1.1`).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        self.server_config_for(alpn, None)
    }

    /// [`TlsCert::server_config`], asking every client for a certificate
    /// that `clients` accepts (see [`client_verifier_of`]), when given.
    pub fn server_config_for(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ]);
        let builder = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl TlsCert {
    /// [`TlsCert::reload`], logged: a certificate put in force at info,
    /// files that cannot be used at error (the certificate in force
    /// stays). Reads two small files: call it off an async runtime's
    /// threads.
    pub fn reload_logged(&self, forced: bool) -> Reload {
        let outcome = self.reload(forced);
        match &outcome {
            Reload::Unchanged => {}
            Reload::Loaded => tracing::info!(
                tls = %self.name,
                cert = %self.files.cert.display(),
                "TLS certificate reloaded; new connections get it"
            ),
            Reload::Failed(e) => tracing::error!(
                tls = %self.name,
                error = %e,
                "TLS certificate not reloaded; the one in force stays"
            ),
        }
        outcome
    }

    /// Logs, as an error, a certificate in force that cannot be used at
    /// `now` (Unix seconds) when it was not so at the last look (`faulty`,
    /// updated): once when it expires, or when such a certificate is put in
    /// force.
    pub fn log_dates(&self, now: i64, faulty: &mut bool) {
        let fault = self.validity().fault_at(now);
        if let Some(fault) = &fault
            && !*faulty
        {
            tracing::error!(
                tls = %self.name,
                cert = %self.files.cert.display(),
                "the TLS certificate in force {fault}; {}: put a certificate valid now in the files",
                self.role.refused_by()
            );
        }
        *faulty = fault.is_some();
    }
}

impl ResolvesServerCert for TlsCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }
}

/// A client's certificate is presented whatever CAs the server names: a
/// server that does not trust it says so, and the client's error tells.
impl ResolvesClientCert for TlsCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The most a certificate or key file may hold.
const MAX_PEM: u64 = 1024 * 1024;

/// The certificate and key files' bytes. Should the certificate change
/// while the key is read (a rotation that swaps both files, such as a
/// Kubernetes secret volume's), they are read again, up to 3 times, so a
/// certificate is not paired with the next one's key.
fn read_files(name: &str, files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |part: &str, path: &Path| {
        values::read_regular(path, MAX_PEM, "a certificate chain or key takes a few KiB")
            .map_err(|e| format!("{}: cannot read it: {e}", field(name, part, path)))
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

/// `NAME.PART (PATH)`, such as `listeners[0].tls.cert (PATH)`, for errors.
fn field(name: &str, part: &str, path: &Path) -> String {
    format!("{name}.{part} ({})", path.display())
}

/// What is wrong with a PEM file, in words (the library's own text shows
/// the markers it looked for as lists of bytes).
fn pem_fault(e: &pem::Error) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no \"-----END {}-----\" line (is the file cut short?)",
            text(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("a \"-----BEGIN\" line is malformed: {:?}", text(line))
        }
        pem::Error::Base64Decode(why) => format!("a section's body is not base64 ({why})"),
        other => other.to_string(),
    }
}

/// The pair from the files' bytes, with an error that names what is wrong.
fn certified_key(
    name: &str,
    role: Role,
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<InForce, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{}: not valid PEM: {}",
                field(name, "cert", &files.cert),
                pem_fault(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no certificate (a PEM \"BEGIN CERTIFICATE\" section, {} first, then its chain)",
            field(name, "cert", &files.cert),
            role.whose()
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
            field(name, "key", &files.key)
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: holds no private key (a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section)",
            field(name, "key", &files.key)
        ),
        e => format!("{}: not valid PEM: {}", field(name, "key", &files.key), pem_fault(&e)),
    })?;
    let (validity, is_ca) = validity(&certs).map_err(|(nth, e)| {
        format!(
            "{}: certificate {nth} of the file is not X.509 ({e}); give {} certificate, then its chain, as PEM",
            field(name, "cert", &files.cert),
            role.whose()
        )
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: is not the key of the first certificate in {} (give the private key made with \
             that certificate, and put {} own certificate first in its file, then its chain)",
            field(name, "key", &files.key),
            files.cert.display(),
            role.whose()
        ),
        e => format!(
            "{name}: cannot use the certificate {} with the key {}: {e}",
            files.cert.display(),
            files.key.display()
        ),
    })?;
    Ok(InForce {
        key: Arc::new(key),
        validity,
        is_ca,
    })
}

/// The dates of the owner's certificate (the first), and whether it is a
/// CA's (basicConstraints CA:TRUE); every certificate of the chain must be
/// X.509, and an error names the one (from 1) that is not.
fn validity(certs: &[CertificateDer<'_>]) -> Result<(Validity, bool), (usize, String)> {
    let mut first = None;
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| (i + 1, e.to_string()))?;
        let dates = cert.validity();
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(b)) if b.value.ca);
        first.get_or_insert((
            Validity {
                not_before: dates.not_before.timestamp(),
                not_after: dates.not_after.timestamp(),
            },
            is_ca,
        ));
    }
    Ok(first.unwrap_or((
        Validity {
            not_before: i64::MIN,
            not_after: i64::MAX,
        },
        false,
    )))
}

/// The rustls configuration of a client of edgeroute's own HTTPS servers
/// (the control plane, from a proxy or a command): TLS 1.2 and 1.3, ALPN
/// left to the HTTP client, the server's certificate checked against the CA certificates
/// in `ca_file` when given (a private CA), else against the system's. `field`
/// names `ca_file` in errors, such as `table.ca_file`. `identity`, when
/// given, is presented to a server that asks for a client certificate.
pub fn client_config(
    ca_file: Option<&Path>,
    field: &str,
    identity: Option<Arc<TlsCert>>,
) -> Result<rustls::ClientConfig, String> {
    let roots = match ca_file {
        Some(path) => ca_certificates(path, field, "the server's certificate")?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no CA certificates found on this system ({}); install the system's CA bundle \
                     (Debian: ca-certificates) or set {field} to the CA certificates that sign the server's",
                    found
                        .errors
                        .first()
                        .map_or_else(|| "none installed".to_owned(), ToString::to_string)
                ));
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_root_certificates(roots);
    Ok(match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    })
}

/// The bytes of the CA file at `path` (the config field `field`): a
/// regular file of at most 1 MiB.
pub fn read_ca_file(path: &Path, field: &str) -> Result<Vec<u8>, String> {
    values::read_regular(path, MAX_PEM, "a bundle of CA certificates takes a few KiB")
        .map_err(|e| format!("{field} ({}): cannot read it: {e}", path.display()))
}

/// What a server asks of its clients with `client_ca` (such as
/// `server.client_ca`): a certificate signed by one of the CA
/// certificates in the file, whose bytes `pem` were read from `client_ca`
/// (see [`read_ca_file`]), for every connection.
pub fn client_verifier_of(
    pem: &[u8],
    client_ca: &Path,
    field: &str,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let roots = ca_roots(pem, client_ca, field, "the clients' certificates")?;
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| {
            format!(
                "{field} ({}): cannot check clients' certificates with it: {e}",
                client_ca.display()
            )
        })
}

/// The CA certificates in the PEM file at `path` (the config field
/// `field`), which sign `signed`, in errors.
fn ca_certificates(
    path: &Path,
    field: &str,
    signed: &str,
) -> Result<rustls::RootCertStore, String> {
    ca_roots(&read_ca_file(path, field)?, path, field, signed)
}

/// The CA certificates in `pem`, the bytes of the file at `path`.
fn ca_roots(
    pem: &[u8],
    path: &Path,
    field: &str,
    signed: &str,
) -> Result<rustls::RootCertStore, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{field} ({}): not valid PEM: {}",
                path.display(),
                pem_fault(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{field} ({}): holds no certificate; give the CA certificates that sign {signed}, as PEM \"BEGIN CERTIFICATE\" sections",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (nth, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "{field} ({}): certificate {} of the file cannot be a CA: {e}",
                path.display(),
                nth + 1
            )
        })?;
    }
    Ok(roots)
}

/// The fields a client of edgeroute's HTTPS servers names in its advice:
/// such as `table.ca_file`, `table.url` and `table.client_tls`.
#[derive(Debug, Clone, Copy)]
pub struct ClientFields<'a> {
    pub ca: &'a str,
    pub url: &'a str,
    pub client_tls: &'a str,
    /// The URL is an `https://` one.
    pub https: bool,
}

/// What a client that got `error` should look at, when it is a refused
/// certificate or a server that speaks the other scheme (else nothing):
/// for the server's certificate, its `ca` field and the URL's host; for
/// its own (the server asks for a client certificate), its `client_tls`
/// field; for the scheme, the URL's.
pub fn client_advice(
    error: &(dyn std::error::Error + 'static),
    fields: ClientFields<'_>,
) -> String {
    use rustls::AlertDescription as Alert;
    use rustls::CertificateError as Refused;
    let ClientFields {
        ca: ca_field,
        url: url_field,
        client_tls,
        https,
    } = fields;
    // A plain HTTP answer to a TLS hello; a TLS alert to an HTTP request.
    if !https && chain_says(error, "invalid HTTP version") {
        return format!(
            "; the server does not answer plain HTTP: if it serves HTTPS (server.tls), make \
             {url_field} https:// and set {ca_field} to the CA that signs its certificate"
        );
    }
    match tls_error(error) {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            format!(
                "; the server does not answer TLS: if it serves plain HTTP (no server.tls), make \
                 {url_field} http://"
            )
        }
        Some(rustls::Error::InvalidCertificate(why)) => match why {
            Refused::NotValidForName | Refused::NotValidForNameContext { .. } => format!(
                "; its certificate does not hold the host name in {url_field}: set {url_field}'s \
                 host to a name the certificate holds"
            ),
            Refused::Expired
            | Refused::ExpiredContext { .. }
            | Refused::NotValidYet
            | Refused::NotValidYetContext { .. } => {
                "; its certificate is out of date: renew the server's certificate, or set this \
                 machine's clock right"
                    .to_owned()
            }
            Refused::Other(other)
                if other.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                format!(
                    "; its certificate is a CA certificate (basicConstraints CA:TRUE, as `openssl \
                     req -x509` makes one by default), which is refused as a server's: give the \
                     server a certificate signed by that CA, and the CA to {ca_field}"
                )
            }
            _ => format!(
                "; its certificate is not trusted: set {ca_field} to the CA certificates that sign \
                 it, and {url_field}'s host to a name the certificate holds"
            ),
        },
        Some(rustls::Error::AlertReceived(Alert::CertificateRequired)) => format!(
            "; the server asks for a client certificate: set {client_tls} to a certificate and key \
             signed by a CA in the control plane's server.client_ca"
        ),
        Some(rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied
            | Alert::DecryptError),
        )) => format!(
            "; the server refused the client certificate ({alert:?}): set {client_tls} to a \
             certificate and key valid now and signed by a CA in the control plane's server.client_ca"
        ),
        Some(_) | None => String::new(),
    }
}

/// Whether `error` or one of its causes says `words`.
fn chain_says(error: &(dyn std::error::Error + 'static), words: &str) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.to_string().contains(words) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The rustls error `error` is, or was caused by, if any: a refused
/// certificate, the server's (an unknown issuer, a name it does not hold,
/// its dates) or the client's (the server's alert), is a client's reason
/// to say which setting to check.
fn tls_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An I/O error's source skips the error it wraps (which may be
        // another I/O error).
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
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
        TlsCert::load(format!("listeners[{index}].tls"), files).expect_err("the files are refused")
    }

    #[test]
    fn a_certificate_and_its_key_offer_h2_then_http1() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = TlsCert::load("listeners[0].tls", &pair(dir.path(), "a"))
            .unwrap()
            .server_config(&[b"h2", b"http/1.1"]);
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

    /// A certificate for `dates` (years, from 1 January to 1 January) and
    /// its key, written as PEM files in `dir`.
    fn dated_pair(dir: &Path, name: &str, dates: (i32, i32)) -> TlsFiles {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(dates.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(dates.1, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// A self-signed CA certificate (as `openssl req -x509` makes by
    /// default) loads in every role, and is warned of where edgeroute's own
    /// TLS would refuse it: as the control plane's, or as a client's.
    #[test]
    fn a_ca_certificate_is_warned_of_where_edgeroutes_own_tls_would_refuse_it() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
        };
        std::fs::write(&files.cert, params.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let warning = |role, name: &str| {
            TlsCert::load_as(role, name, &files)
                .expect("loads")
                .ca_warning()
        };
        assert_eq!(warning(Role::Server, "listeners[0].tls"), None);
        let server = warning(Role::ControlServer, "server.tls").expect("warned of");
        assert!(
            server.starts_with("server.tls.cert (")
                && server.contains(
                    "the server's certificate is a CA certificate (basicConstraints CA:TRUE"
                )
                && server.contains("the CA to table.ca_file and actions.ca_file"),
            "{server}"
        );
        let client = warning(Role::Client, "table.client_tls").expect("warned of");
        assert!(client.contains("server.client_ca"), "{client}");
        // A leaf, as rcgen makes one by default, is no CA's.
        let leaf = pair(dir.path(), "leaf");
        for role in [Role::Server, Role::ControlServer, Role::Client] {
            let cert = TlsCert::load_as(role, "x", &leaf).unwrap();
            assert_eq!(cert.ca_warning(), None, "{role:?}");
        }
    }

    /// 1 January of `year`, in Unix seconds.
    fn jan_1(year: i32) -> i64 {
        rcgen::date_time_ymd(year, 1, 1).unix_timestamp()
    }

    /// The server's certificate decides: an expired certificate after
    /// it (a cross-signature clients pass over) does not.
    #[test]
    fn a_chain_is_judged_by_the_servers_certificate() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let leaf = dated_pair(dir.path(), "leaf", (2022, 2030));
        let old = dated_pair(dir.path(), "old", (2000, 2001));
        let chain = dir.path().join("chain.crt");
        let mut pem = std::fs::read(&leaf.cert).unwrap();
        pem.extend(std::fs::read(&old.cert).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let cert = TlsCert::load(
            "listeners[0].tls",
            &TlsFiles {
                cert: chain,
                key: leaf.key,
            },
        )
        .unwrap();
        let validity = cert.validity();
        assert_eq!(
            validity,
            Validity {
                not_before: jan_1(2022),
                not_after: jan_1(2030),
            }
        );
        assert_eq!(validity.fault_at(jan_1(2025)), None);
        assert_eq!(validity.fault_at(jan_1(2030)), None, "its last second");
        assert_eq!(
            validity.fault_at(jan_1(2030) + 1).unwrap(),
            "expired at 2030-01-01T00:00:00Z"
        );
        assert_eq!(
            validity.fault_at(jan_1(2021)).unwrap(),
            "is not valid before 2022-01-01T00:00:00Z"
        );
        assert_eq!(date(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(date(i64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_certificate_that_is_not_x509_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a");
        let chain = dir.path().join("chain.crt");
        let mut pem = std::fs::read(&good.cert).unwrap();
        pem.extend(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        std::fs::write(&chain, pem).unwrap();
        let e = error(
            3,
            &TlsFiles {
                cert: chain,
                key: good.key,
            },
        );
        assert!(
            e.starts_with("listeners[3].tls.cert (")
                && e.contains("certificate 2 of the file is not X.509"),
            "{e}"
        );
    }

    #[test]
    fn a_chain_outside_its_dates_never_replaces_one_within_them() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let now = jan_1(2026);
        let valid = dated_pair(dir.path(), "valid", (2025, 2027));
        let expired = dated_pair(dir.path(), "expired", (2023, 2025));
        let early = dated_pair(dir.path(), "early", (2028, 2030));
        let live = live(dir.path());
        let put = |from: &TlsFiles| put(from, &live);
        put(&valid);
        let cert = TlsCert::load("listeners[0].tls", &live).unwrap();

        put(&expired);
        match cert.reload_at(false, now) {
            Reload::Failed(e) => assert!(
                e.starts_with("listeners[0].tls.cert (")
                    && e.contains("the server's certificate expired at 2025-01-01T00:00:00Z")
                    && e.contains("valid until 2027-01-01T00:00:00Z, stays"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(serving(&cert), pem_cert(&valid));
        assert_eq!(
            cert.reload_at(false, now),
            Reload::Unchanged,
            "reported once"
        );
        assert!(matches!(cert.reload_at(true, now), Reload::Failed(_)));

        // Not valid yet: refused until its time comes, with no change to
        // the files.
        put(&early);
        match cert.reload_at(false, now) {
            Reload::Failed(e) => assert!(
                e.contains("is not valid before 2028-01-01T00:00:00Z"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(cert.reload_at(false, now), Reload::Unchanged);
        assert_eq!(serving(&cert), pem_cert(&valid));
        assert_eq!(cert.reload_at(false, jan_1(2028)), Reload::Loaded);
        assert_eq!(serving(&cert), pem_cert(&early));
        assert_eq!(cert.reload_at(false, jan_1(2028)), Reload::Unchanged);

        // Once the certificate in force is outside its dates too, the files
        // win.
        put(&expired);
        assert_eq!(cert.reload_at(false, jan_1(2031)), Reload::Loaded);
        assert_eq!(serving(&cert), pem_cert(&expired));
    }

    #[test]
    fn a_chain_outside_its_dates_loads_at_start() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let expired = dated_pair(dir.path(), "expired", (2000, 2001));
        let cert = TlsCert::load("listeners[0].tls", &expired).unwrap();
        assert!(
            cert.validity()
                .fault_at(unix_now())
                .unwrap()
                .starts_with("expired at 2001-01-01")
        );
    }

    /// The files a listener is given, which the tests put pairs in.
    fn live(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("live.crt"),
            key: dir.join("live.key"),
        }
    }

    /// Copies the pair `from` over `to`.
    fn put(from: &TlsFiles, to: &TlsFiles) {
        std::fs::copy(&from.cert, &to.cert).unwrap();
        std::fs::copy(&from.key, &to.key).unwrap();
    }

    /// The server's certificate in force.
    fn serving(cert: &TlsCert) -> CertificateDer<'static> {
        cert.current
            .load()
            .key
            .cert
            .first()
            .expect("a chain")
            .clone()
    }

    fn pem_cert(files: &TlsFiles) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&files.cert).unwrap()
    }

    #[test]
    fn changed_files_are_put_in_force_and_bad_ones_leave_the_old() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(dir.path(), "a"), pair(dir.path(), "b"));
        let live = live(dir.path());
        let put = |from: &TlsFiles| put(from, &live);
        put(&a);
        let cert = TlsCert::load("listeners[1].tls", &live).unwrap();
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

    #[test]
    fn a_ca_file_must_hold_ca_certificates_as_pem() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let refused = |text: &str| {
            std::fs::write(&path, text).unwrap();
            client_config(Some(&path), "table.ca_file", None).expect_err("refused")
        };
        let e = refused("no PEM here\n");
        assert!(
            e.starts_with("table.ca_file (") && e.contains("holds no certificate"),
            "{e}"
        );
        let e = refused("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert!(
            e.contains("not valid PEM: a section's body is not base64"),
            "{e}"
        );
        // Cut short: the marker it lacks, in words.
        let e = refused("-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert!(
            e.contains("no \"-----END CERTIFICATE-----\" line (is the file cut short?)"),
            "{e}"
        );
        let e = client_config(
            Some(&dir.path().join("missing.pem")),
            "actions.ca_file",
            None,
        )
        .expect_err("refused");
        assert!(
            e.starts_with("actions.ca_file (") && e.contains("cannot read it"),
            "{e}"
        );

        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&path, made.cert.pem()).unwrap();
        let config = client_config(Some(&path), "table.ca_file", None).expect("a CA file");
        // An HTTP client that sets its own refuses one set before.
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn a_refused_certificate_is_told_from_other_failures_through_the_chain() {
        // Either side's certificate: the server's as the client judged it,
        // the client's as the server's alert tells.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        // As a TLS connector reports it: an I/O error around the I/O error
        // around rustls' own.
        let failed = |e: rustls::Error| {
            Outer(std::io::Error::other(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        };
        let refused = |why| failed(rustls::Error::InvalidCertificate(why));
        let fields = ClientFields {
            ca: "table.ca_file",
            url: "table.url",
            client_tls: "table.client_tls",
            https: true,
        };
        let advice = |e: &Outer| client_advice(e, fields);
        let unknown = refused(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            tls_error(&unknown),
            Some(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
        assert!(advice(&unknown).contains("not trusted: set table.ca_file"));
        assert_eq!(
            advice(&refused(rustls::CertificateError::NotValidForName)),
            "; its certificate does not hold the host name in table.url: set table.url's host \
             to a name the certificate holds"
        );
        assert!(advice(&refused(rustls::CertificateError::Expired)).contains("out of date: renew"));
        // A CA certificate as the server's, refused as rustls' own verifier
        // refuses it (so the advice holds for the error rustls gives).
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let refusal = rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            &der,
            &[],
            &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .expect_err("a CA certificate as the server's");
        let ca = failed(refusal);
        assert!(
            advice(&ca).contains("is a CA certificate (basicConstraints CA:TRUE")
                && advice(&ca).ends_with("and the CA to table.ca_file"),
            "{}",
            advice(&ca)
        );
        let other_tls = Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::HandshakeNotComplete,
        ));
        assert_eq!(advice(&other_tls), "");
        let refused_connection = Outer(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(tls_error(&refused_connection), None);
        // The server's word on the client's own certificate.
        let asked = advice(&failed(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        )));
        assert!(
            asked.contains("asks for a client certificate: set table.client_tls"),
            "{asked}"
        );
        let unknown_ca = advice(&failed(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        )));
        assert!(
            unknown_ca.contains("refused the client certificate (UnknownCA): set table.client_tls"),
            "{unknown_ca}"
        );
        assert_eq!(
            advice(&failed(rustls::Error::AlertReceived(
                rustls::AlertDescription::InternalError
            ))),
            ""
        );
        // A server that speaks the other scheme.
        let plain = advice(&failed(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert!(
            plain.contains("does not answer TLS") && plain.contains("make table.url http://"),
            "{plain}"
        );
        let tls_answer = Outer(std::io::Error::other("invalid HTTP version parsed"));
        assert_eq!(advice(&tls_answer), "", "said only of an http:// URL");
        let https = client_advice(
            &tls_answer,
            ClientFields {
                https: false,
                ..fields
            },
        );
        assert!(
            https.contains("does not answer plain HTTP")
                && https.contains("make table.url https://"),
            "{https}"
        );
    }
}
