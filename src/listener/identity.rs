//! Who a client certificate names, and whether `listen.allowed_client_names` lets it post.
//!
//! Any certificate that chains to `listen.client_ca` passes the handshake; the allow-list
//! narrows that to the names given (globs, `*` matching any run of characters), matched
//! against the certificate's DNS and URI subject alternative names and its subject common
//! names. The kube-apiserver's client certificate usually carries CN `kube-apiserver` or
//! `kube-apiserver-kubelet-client` (kubeadm) and no SAN.

use rustls::pki_types::CertificateDer;

use crate::config::ClientNames;
use crate::filter::glob_match;

/// The names a client certificate presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// DNS SANs, URI SANs, then subject CNs, as written in the certificate.
    pub names: Vec<String>,
}

impl ClientIdentity {
    /// The names of `cert` (the leaf); none when it does not parse, which matches no rule.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        use x509_parser::extensions::GeneralName;
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return Self::default();
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                    _ => {}
                }
            }
        }
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_owned());
            }
        }
        Self { names }
    }

    /// Whether any name matches any pattern.
    pub fn allowed_by(&self, patterns: &ClientNames) -> bool {
        self.names
            .iter()
            .any(|n| patterns.iter().any(|p| glob_match(p, n)))
    }

    /// The names for a log line: `a, b` or `(none)`.
    pub fn describe(&self) -> String {
        if self.names.is_empty() {
            "(none)".to_owned()
        } else {
            self.names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn names_come_from_sans_and_common_name() {
        let mut params =
            rcgen::CertificateParams::new(vec!["apiserver.example".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/kube-apiserver"
                .try_into()
                .unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let id = ClientIdentity::of(&cert(params));
        assert_eq!(
            id.names,
            [
                "apiserver.example",
                "spiffe://cluster.local/ns/kube-system/sa/kube-apiserver",
                "kube-apiserver"
            ]
        );
        let allow = |p: &[&str]| {
            id.allowed_by(&ClientNames::new(
                p.iter().map(|s| (*s).to_owned()).collect(),
            ))
        };
        assert!(allow(&["kube-apiserver"]));
        assert!(allow(&["spiffe://cluster.local/ns/kube-system/*"]));
        assert!(allow(&["other", "*.example"]));
        assert!(!allow(&[
            "kube-apiserver-kubelet-client",
            "spiffe://other/*"
        ]));
    }

    #[test]
    fn garbage_names_nothing() {
        let id = ClientIdentity::of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        assert!(id.names.is_empty());
        assert_eq!(id.describe(), "(none)");
        assert!(!id.allowed_by(&ClientNames::new(vec!["*".to_owned()])));
    }
}
