//! Helpers for setting up trust: a throw-away PKI (`gen-certs`) and the kubeconfig the
//! apiserver's `--audit-webhook-config-file` needs (`webhook-config`).

use std::fs;
use std::io;
use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate generation failure.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// Which extra certificates `gen-certs` writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenOptions {
    /// Also write certificates for negative tests: another CA with its own client and server
    /// certificates, and expired / not-yet-valid client and server certificates.
    pub test_extras: bool,
}

fn write(dir: &Path, name: &str, contents: &str, private: bool) -> Result<(), CertError> {
    let path = dir.join(name);
    let io_err = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::write(&path, contents).map_err(io_err)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    }
    Ok(())
}

fn ca_params(common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    Ok(params)
}

fn leaf_params(
    common_name: &str,
    server: bool,
    validity: (i32, i32),
) -> Result<CertificateParams, CertError> {
    let sans: Vec<String> = if server {
        vec!["localhost".into()]
    } else {
        vec![common_name.into()]
    };
    let mut params = CertificateParams::new(sans)?;
    if server {
        for ip in ["127.0.0.1", "::1"] {
            if let Ok(addr) = ip.parse() {
                params.subject_alt_names.push(SanType::IpAddress(addr));
            }
        }
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(validity.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(validity.1, 1, 1);
    Ok(params)
}

/// Writes `ca.crt`/`ca.key`, `server.crt`/`server.key` (localhost, 127.0.0.1, ::1) and
/// `client.crt`/`client.key` (CN `kube-apiserver`) into `dir`, valid 2025-2045.
///
/// # Errors
/// [`CertError`] when generation or writing fails.
pub fn generate(dir: &Path, options: GenOptions) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    const VALID: (i32, i32) = (2025, 2045);
    let ca =
        CertifiedIssuer::self_signed(ca_params("kube-audit-relay dev CA")?, KeyPair::generate()?)?;
    write(dir, "ca.crt", &ca.pem(), false)?;
    let leaves: &[(&str, &str, bool, (i32, i32))] = &[
        ("server", "localhost", true, VALID),
        ("client", "kube-apiserver", false, VALID),
    ];
    for &(file, cn, server, validity) in leaves {
        let key = KeyPair::generate()?;
        let cert = leaf_params(cn, server, validity)?.signed_by(&key, &ca)?;
        write(dir, &format!("{file}.crt"), &cert.pem(), false)?;
        write(dir, &format!("{file}.key"), &key.serialize_pem(), true)?;
    }
    if options.test_extras {
        let extras: &[(&str, &str, bool, (i32, i32))] = &[
            ("expired-client", "kube-apiserver", false, (2020, 2021)),
            ("future-client", "kube-apiserver", false, (2040, 2045)),
            ("expired-server", "localhost", true, (2020, 2021)),
            ("future-server", "localhost", true, (2040, 2045)),
            ("wrongname-server", "elsewhere.invalid", true, VALID),
            // Same CA, another client: for listen.allowed_client_names.
            ("sibling-client", "kube-controller-manager", false, VALID),
        ];
        for &(file, cn, server, validity) in extras {
            let key = KeyPair::generate()?;
            let mut params = leaf_params(cn, server, validity)?;
            if file == "wrongname-server" {
                params.subject_alt_names = vec![SanType::DnsName("elsewhere.invalid".try_into()?)];
            }
            let cert = params.signed_by(&key, &ca)?;
            write(dir, &format!("{file}.crt"), &cert.pem(), false)?;
            write(dir, &format!("{file}.key"), &key.serialize_pem(), true)?;
        }
        let other = CertifiedIssuer::self_signed(ca_params("another CA")?, KeyPair::generate()?)?;
        write(dir, "other-ca.crt", &other.pem(), false)?;
        for &(file, cn, server) in &[
            ("other-client", "kube-apiserver", false),
            ("other-server", "localhost", true),
        ] {
            let key = KeyPair::generate()?;
            let cert = leaf_params(cn, server, VALID)?.signed_by(&key, &other)?;
            write(dir, &format!("{file}.crt"), &cert.pem(), false)?;
            write(dir, &format!("{file}.key"), &key.serialize_pem(), true)?;
        }
    }
    Ok(())
}

/// Files named on the `webhook-config` command line.
#[derive(Debug, Default)]
pub struct WebhookConfigFiles<'a> {
    /// CA that signed the relay's server certificate.
    pub ca: Option<&'a Path>,
    /// Client certificate the apiserver presents.
    pub client_cert: Option<&'a Path>,
    /// Its private key.
    pub client_key: Option<&'a Path>,
}

/// The kubeconfig for `--audit-webhook-config-file`, with every file inlined as `*-data`.
///
/// # Errors
/// [`CertError::Io`] when a named file cannot be read.
pub fn webhook_kubeconfig(url: &str, files: &WebhookConfigFiles<'_>) -> Result<String, CertError> {
    let inline = |path: &Path| -> Result<String, CertError> {
        let bytes = fs::read(path).map_err(|source| CertError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    };
    let mut out = String::new();
    out.push_str("# kubeconfig for kube-apiserver --audit-webhook-config-file (generated by kube-audit-relay)\n");
    out.push_str("apiVersion: v1\nkind: Config\nclusters:\n- name: kube-audit-relay\n  cluster:\n");
    out.push_str(&format!("    server: {}\n", yaml_string(url)));
    if let Some(ca) = files.ca {
        out.push_str(&format!(
            "    certificate-authority-data: {}\n",
            inline(ca)?
        ));
    }
    out.push_str("users:\n- name: kube-apiserver\n  user:");
    match (files.client_cert, files.client_key) {
        (Some(cert), Some(key)) => {
            out.push_str(&format!(
                "\n    client-certificate-data: {}\n",
                inline(cert)?
            ));
            out.push_str(&format!("    client-key-data: {}\n", inline(key)?));
        }
        _ => out.push_str(" {}\n"),
    }
    out.push_str("contexts:\n- name: default\n  context:\n    cluster: kube-audit-relay\n    user: kube-apiserver\n");
    out.push_str("current-context: default\n");
    Ok(out)
}

/// A double-quoted YAML scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}
