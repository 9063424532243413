//! TLS configuration for both sides: the webhook listener (server, optional mutual TLS) and
//! the syslog destinations (client). One crypto provider (ring), TLS 1.2 and 1.3 only.
//!
//! PEM files are read with `rustls-pki-types`' `PemObject`, the maintained successor of the
//! archived `rustls-pemfile` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, DestinationConfig, ListenConfig};

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
    /// The client verifier could not be built from the CA bundle.
    #[error("client_ca: {0}")]
    Verifier(String),
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

/// The listener's server configuration, or `None` for plain HTTP.
///
/// # Errors
/// [`TlsError`] naming the file or setting at fault.
pub fn server_config(listen: &ListenConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&listen.tls_cert, &listen.tls_key) else {
        return Ok(None);
    };
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: "listen".into(),
            source,
        })?;
    let mode = listen.effective_client_auth();
    let builder = match (mode, &listen.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            context: format!("listen.tls_cert/tls_key ({})", cert_path.display()),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The client configuration of a TLS destination.
///
/// # Errors
/// [`TlsError`] naming the file or setting at fault.
pub fn client_config(dest: &DestinationConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &dest.ca {
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
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls {
            context: format!("destination {}", dest.name),
            source,
        })?;
    let builder = match &dest.pin_sha256 {
        None => builder.with_webpki_verifier(verifier),
        Some(pin) => {
            let pin = parse_pin(pin).map_err(TlsError::Verifier)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    inner: verifier,
                    pin,
                }))
        }
    };
    let config = match (&dest.client_cert, &dest.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                context: format!("destination {} client_cert/client_key", dest.name),
                source,
            })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Parses a SHA-256 pin written as 64 hex digits (colons allowed) or as base64.
///
/// # Errors
/// A message when the text is neither, or not 32 bytes.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("`{text}` is neither 64 hex digits nor base64"))?
    };
    bytes
        .try_into()
        .map_err(|_| "a SHA-256 pin is 32 bytes".to_owned())
}

/// SHA-256 of a certificate (its DER bytes), as pins are written.
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Normal WebPKI verification (chain and name) and, on top, the leaf certificate must have
/// the pinned SHA-256: a valid certificate from the right CA but not the expected one is refused.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: [u8; 32],
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
        if certificate_sha256(end_entity) == self.pin {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "certificate does not match pin_sha256".into(),
            ))
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
    listen: ListenConfig,
    current: std::sync::RwLock<Arc<ServerConfig>>,
    /// Fingerprint of the files last seen (loaded or rejected).
    seen: std::sync::Mutex<u64>,
}

impl ReloadingServerConfig {
    /// Loads the listener's configuration, or `None` for plain HTTP.
    ///
    /// # Errors
    /// [`TlsError`] when the files are unusable at start-up.
    pub fn load(listen: &ListenConfig) -> Result<Option<Arc<Self>>, TlsError> {
        let Some(config) = server_config(listen)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Self {
            seen: std::sync::Mutex::new(files_fingerprint(&Self::files_of(listen))),
            listen: listen.clone(),
            current: std::sync::RwLock::new(config),
        })))
    }

    fn files_of(listen: &ListenConfig) -> Vec<&Path> {
        [&listen.tls_cert, &listen.tls_key, &listen.client_ca]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
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
        let fingerprint = files_fingerprint(&Self::files_of(&self.listen));
        {
            let Ok(mut seen) = self.seen.lock() else {
                return false;
            };
            if *seen == fingerprint {
                return false;
            }
            *seen = fingerprint;
        }
        match server_config(&self.listen) {
            Ok(Some(config)) => {
                if let Ok(mut current) = self.current.write() {
                    *current = config;
                }
                tracing::info!("listener certificates reloaded");
                true
            }
            Ok(None) => false,
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
    dest: DestinationConfig,
    current: Arc<ClientConfig>,
    fingerprint: u64,
}

impl ReloadingClientConfig {
    /// Loads the destination's configuration.
    ///
    /// # Errors
    /// [`TlsError`] when the files are unusable at start-up.
    pub fn load(dest: &DestinationConfig) -> Result<Self, TlsError> {
        Ok(Self {
            current: client_config(dest)?,
            fingerprint: files_fingerprint(&Self::files_of(dest)),
            dest: dest.clone(),
        })
    }

    fn files_of(dest: &DestinationConfig) -> Vec<&Path> {
        [&dest.ca, &dest.client_cert, &dest.client_key]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }

    /// The configuration for the next connection, reloaded first if the files changed.
    pub fn for_next_connection(&mut self) -> Arc<ClientConfig> {
        let fingerprint = files_fingerprint(&Self::files_of(&self.dest));
        if fingerprint != self.fingerprint {
            self.fingerprint = fingerprint;
            match client_config(&self.dest) {
                Ok(config) => {
                    tracing::info!(destination = %self.dest.name, "destination certificates reloaded");
                    self.current = config;
                }
                Err(e) => tracing::warn!(destination = %self.dest.name, error = %e,
                    "new destination certificate files do not load; keeping the previous ones"),
            }
        }
        self.current.clone()
    }
}
