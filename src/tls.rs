//! TLS configuration for both sides: the webhook listener (server, optional mutual TLS) and
//! the destinations (client). One crypto provider (ring), TLS 1.2 and 1.3 only. Both sides
//! reload their files without a restart. [`failure_reason`] names why a handshake failed,
//! from rustls' error variants, for logs and metrics.
//!
//! PEM files are read with `rustls-pki-types`' `PemObject`, the maintained successor of the
//! archived `rustls-pemfile` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, DestinationConfig, ListenConfig, Pin};

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination (key does not match certificate, empty CA...).
    #[error("{context}: {source}")]
    Rustls {
        /// Which setting.
        context: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// A certificate verifier could not be built from the CA bundle.
    #[error("{setting}: {source}")]
    Verifier {
        /// `client_ca` or `ca`.
        setting: &'static str,
        /// rustls' reason.
        source: rustls::server::VerifierBuilderError,
    },
    /// The URL host is not a name TLS can verify (set `server_name`).
    #[error("`{name}` is not a TLS server name ({reason}); set server_name")]
    ServerName {
        /// The host.
        name: String,
        /// Why.
        reason: String,
    },
    /// No root certificates could be loaded for a destination without `ca`.
    #[error("no usable system root certificates (set `ca`): {0}")]
    NoRoots(String),
}

/// The crypto provider used everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] when the file is unreadable or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] when the file is unreadable or holds no key. The key itself never
/// appears in the message.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The files and mode of the listener's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA bundle client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are asked for.
    pub client_auth: ClientAuth,
}

impl ServerTlsFiles {
    /// The listener's TLS files, `None` for plain HTTP.
    pub fn of(listen: &ListenConfig) -> Option<Self> {
        Some(Self {
            cert: listen.tls_cert.clone()?,
            key: listen.tls_key.clone()?,
            client_ca: listen.client_ca.clone(),
            client_auth: listen.client_auth,
        })
    }

    fn files(&self) -> Vec<&Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

/// The server configuration for `files`, offering ALPN `h2` and `http/1.1`.
///
/// # Errors
/// [`TlsError`] naming the file or setting at fault.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: "listen".into(),
            source,
        })?;
    let builder = match (files.client_auth, &files.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|source| {
                TlsError::Verifier {
                    setting: "client_ca",
                    source,
                }
            })?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            context: format!("listen.tls_cert/tls_key ({})", files.cert.display()),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The files of a destination's TLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// Which destination, for error messages.
    pub label: String,
    /// CA bundle; the system roots when unset.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// SHA-256 the receiver's certificate must have, on top of normal verification.
    pub pin: Option<Pin>,
}

impl ClientTlsFiles {
    /// The TLS files of a destination.
    pub fn of(dest: &DestinationConfig) -> Self {
        Self {
            label: format!("destination {}", dest.name),
            ca: dest.ca.clone(),
            identity: dest.client_cert.clone().zip(dest.client_key.clone()),
            pin: dest.pin_sha256,
        }
    }

    fn files(&self) -> Vec<&Path> {
        let (cert, key) = self.identity.as_ref().map(|(c, k)| (c, k)).unzip();
        [self.ca.as_ref(), cert, key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

/// The client configuration of a TLS destination.
///
/// # Errors
/// [`TlsError`] naming the file or setting at fault.
pub fn client_config(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca {
        Some(ca) => load_roots(ca)?,
        None => {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = native
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::NoRoots(why));
            }
            roots
        }
    };
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            setting: "ca",
            source,
        })?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: files.label.clone(),
            source,
        })?;
    let builder = match files.pin {
        None => builder.with_webpki_verifier(verifier),
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                inner: verifier,
                pin,
            })),
    };
    let config = match &files.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                context: format!("{} client_cert/client_key", files.label),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// SHA-256 of a certificate (its DER bytes), as pins are written.
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The receiver's certificate verified but is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("certificate does not match pin_sha256")]
pub struct PinMismatch;

/// Normal WebPKI verification (chain and name) and, on top, the leaf certificate must have
/// the pinned SHA-256: a valid certificate from the right CA but not the expected one is refused.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: Pin,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if certificate_sha256(end_entity) == self.pin.0 {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A short, stable name for why a TLS handshake or session failed, found by walking the
/// error's sources to the `rustls::Error` (tokio-rustls wraps it in an `io::Error`).
pub fn failure_reason(error: &(dyn std::error::Error + 'static)) -> &'static str {
    use rustls::{Error, InvalidMessage, PeerIncompatible as P};
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return "timeout";
            }
            // `io::Error::source` skips the wrapped error itself; look at it directly.
            current = io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            continue;
        }
        if let Some(rustls) = e.downcast_ref::<Error>() {
            return match rustls {
                Error::NoCertificatesPresented => "no_client_certificate",
                Error::InvalidCertificate(c) => match c {
                    CertificateError::UnknownIssuer => "unknown_issuer",
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        "expired"
                    }
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        "not_yet_valid"
                    }
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => "name_mismatch",
                    CertificateError::Other(other) if other.0.is::<PinMismatch>() => "pin_mismatch",
                    _ => "bad_certificate",
                },
                Error::InvalidMessage(InvalidMessage::InvalidContentType) => "not_tls",
                // A TLS 1.0 or 1.1 ClientHello carries no signature_algorithms extension:
                // that is how rustls sees a client too old to speak 1.2.
                Error::PeerIncompatible(
                    P::SignatureAlgorithmsExtensionRequired
                    | P::SupportedVersionsExtensionRequired
                    | P::Tls12NotOffered
                    | P::Tls12NotOfferedOrEnabled
                    | P::ServerDoesNotSupportTls12Or13
                    | P::ServerTlsVersionIsDisabledByOurConfig,
                ) => "protocol_version",
                Error::PeerIncompatible(_) => "incompatible",
                Error::AlertReceived(_) => "peer_alert",
                _ => "other",
            };
        }
        current = e.source();
    }
    "other"
}

/// What went wrong in a TLS failure, for a log line: rustls' own message, except for a
/// pin mismatch, which rustls can only print as `Other(..)`.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    if failure_reason(error) == "pin_mismatch" {
        PinMismatch.to_string()
    } else {
        error.to_string()
    }
}

/// Hash of the contents of the given files (missing files hash as empty), to notice any
/// change, including a Kubernetes Secret volume swapping its `..data` symlink, which leaves
/// modification times of the visible paths untouched.
fn files_fingerprint(files: &[&Path]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect();
    BuildHasherDefault::<DefaultHasher>::default().hash_one(&contents)
}

/// The listener's TLS configuration, reloaded when its files change.
///
/// Each new connection gets the configuration current at its accept; connections already
/// open keep theirs. A new set of files that does not load (a half-written secret, a key that
/// does not match) is logged and the previous configuration stays in use.
#[derive(Debug)]
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    current: std::sync::RwLock<Arc<ServerConfig>>,
    /// Fingerprint of the files last seen (loaded or rejected).
    seen: std::sync::Mutex<u64>,
}

impl ReloadingServerConfig {
    /// Loads the listener's configuration.
    ///
    /// # Errors
    /// [`TlsError`] when the files are unusable at start-up.
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = server_config(&files)?;
        Ok(Arc::new(Self {
            seen: std::sync::Mutex::new(files_fingerprint(&files.files())),
            files,
            current: std::sync::RwLock::new(config),
        }))
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reloads if the files changed since the last look. Returns whether a new
    /// configuration is now in use.
    pub fn reload_if_changed(&self) -> bool {
        let fingerprint = files_fingerprint(&self.files.files());
        {
            let Ok(mut seen) = self.seen.lock() else {
                return false;
            };
            if *seen == fingerprint {
                return false;
            }
            *seen = fingerprint;
        }
        match server_config(&self.files) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = config;
                }
                tracing::info!("listener certificates reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "new listener certificate files do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Polls the files every `interval` until `stop` is cancelled.
    pub async fn watch(
        self: Arc<Self>,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            // File reads and certificate parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

/// A destination's client configuration, rebuilt at connect time when its files changed.
#[derive(Debug)]
pub struct ReloadingClientConfig {
    files: ClientTlsFiles,
    current: Arc<ClientConfig>,
    fingerprint: u64,
}

impl ReloadingClientConfig {
    /// Loads the destination's configuration.
    ///
    /// # Errors
    /// [`TlsError`] when the files are unusable at start-up.
    pub fn load(files: ClientTlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            current: client_config(&files)?,
            fingerprint: files_fingerprint(&files.files()),
            files,
        })
    }

    /// The configuration for the next connection, reloaded first if the files changed.
    pub fn for_next_connection(&mut self) -> Arc<ClientConfig> {
        let fingerprint = files_fingerprint(&self.files.files());
        if fingerprint != self.fingerprint {
            self.fingerprint = fingerprint;
            match client_config(&self.files) {
                Ok(config) => {
                    tracing::info!(destination = %self.files.label, "destination certificates reloaded");
                    self.current = config;
                }
                Err(e) => tracing::warn!(destination = %self.files.label, error = %e,
                    "new destination certificate files do not load; keeping the previous ones"),
            }
        }
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_come_from_error_variants() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        for (error, reason) in [
            (
                rustls::Error::NoCertificatesPresented,
                "no_client_certificate",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_issuer",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(PinMismatch),
                ))),
                "pin_mismatch",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "not_tls",
            ),
            (
                rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
                ),
                "protocol_version",
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
                "peer_alert",
            ),
        ] {
            assert_eq!(failure_reason(&io(error)), reason);
        }
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(failure_reason(&timeout), "timeout");
        assert_eq!(failure_reason(&std::io::Error::other("x")), "other");
    }
}
