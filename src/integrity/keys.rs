//! Ed25519 keys for the trail: read from PKCS#8 PEM (v1 as OpenSSL writes it, or v2), written
//! by `gen-signing-key` in the forms standard tools read (`openssl pkey` accepts both files:
//! ring's own PKCS#8 v2 output is refused by OpenSSL 3.0, so the private key is written as
//! v1), and named by a key id.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows (RFC 8410).
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte public key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no usable Ed25519 key.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key's bytes).
        reason: String,
    },
}

/// The id of a public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    digest.as_ref()[..8].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The relay's signing key.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM file (`PRIVATE KEY`).
    ///
    /// # Errors
    /// [`KeyError`] naming the file; the key's bytes never appear in the message.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| invalid(format!("not a PKCS#8 PEM private key ({e})")))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| invalid(format!("not an Ed25519 private key ({e})")))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, id })
    }

    /// The key id checkpoints carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// A public key `verify` checks signatures with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    raw: [u8; 32],
    id: String,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) file.
    ///
    /// # Errors
    /// [`KeyError`] naming the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: format!("not a PEM public key ({e})"),
        })?;
        let bytes: &[u8] = der.as_ref();
        let raw = bytes
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| KeyError::Invalid {
                path: path.to_owned(),
                reason: "not an Ed25519 public key".into(),
            })?;
        Ok(Self::from_raw(raw))
    }

    /// A public key from its 32 bytes.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self {
            id: key_id(&raw),
            raw,
        }
    }

    /// Its key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new key pair into `dir`: `signing.key` (PKCS#8 v1 PEM, mode 0600) and
/// `signing.pub` (SubjectPublicKeyInfo PEM). Returns the two paths and the key id.
///
/// # Errors
/// [`KeyError`] when the directory or files cannot be written, or no randomness is available.
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    use ring::rand::SecureRandom;
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| KeyError::Invalid {
            path: dir.to_owned(),
            reason: "no randomness for a new key".into(),
        })?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| KeyError::Invalid {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let private_der = [&PKCS8_V1_PREFIX[..], &seed].concat();
    let public_der = [&SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
    let key_path = dir.join("signing.key");
    let pub_path = dir.join("signing.pub");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::remove_file(&key_path);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io_err(&key_path))?;
        f.write_all(pem("PRIVATE KEY", &private_der).as_bytes())
            .map_err(io_err(&key_path))?;
    }
    fs::write(&pub_path, pem("PUBLIC KEY", &public_der)).map_err(io_err(&pub_path))?;
    Ok((key_path, pub_path, key_id(pair.public_key().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, id) = generate(dir.path()).unwrap();
        let signer = SigningKey::load(&key).unwrap();
        let verifier = PublicKey::load(&public).unwrap();
        assert_eq!(signer.id(), id);
        assert_eq!(verifier.id(), id);
        let sig = signer.sign(b"hello");
        assert!(verifier.verifies(b"hello", &sig));
        assert!(!verifier.verifies(b"hellO", &sig));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&key).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(
            SigningKey::load(&public).is_err(),
            "a public key is no signing key"
        );
    }
}
