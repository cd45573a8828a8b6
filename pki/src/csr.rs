//! Certificate signing requests from agents. Only the public key is taken from
//! a CSR (after its self-signature checks out): the subject, SANs and
//! extensions an agent asks for are ignored, the CA decides what goes into the
//! certificate. Keys are allow-listed: ECDSA P-256, ECDSA P-384, Ed25519.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

/// Largest CSR accepted, in bytes of DER.
pub const MAX_CSR_DER_BYTES: usize = 8 * 1024;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// Why a CSR was refused. All variants mean the peer sent something bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Not PEM/DER of a PKCS#10 request.
    #[error("csr is malformed: {0}")]
    Malformed(String),
    /// Larger than [`MAX_CSR_DER_BYTES`].
    #[error("csr is too large ({0} bytes)")]
    TooLarge(usize),
    /// The request's self-signature does not verify with its own key.
    #[error("csr signature does not verify")]
    BadSignature,
    /// The key type is not one of ECDSA P-256, ECDSA P-384 or Ed25519.
    #[error("csr key `{0}` is not accepted (use ecdsa p-256, ecdsa p-384 or ed25519)")]
    UnsupportedKey(String),
}

/// A verified CSR, reduced to the public key the certificate will certify.
#[derive(Debug, Clone)]
pub struct ParsedCsr {
    raw_public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
    key_description: &'static str,
}

impl ParsedCsr {
    /// Parse a PEM `CERTIFICATE REQUEST`.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrError::Malformed(format!("not a pem certificate request: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// Parse a DER PKCS#10 request, verify its self-signature and check the key type.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_DER_BYTES {
            return Err(CsrError::TooLarge(der.len()));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after request".into()));
        }
        let spki = &csr.certification_request_info.subject_pki;
        let alg_oid = spki.algorithm.algorithm.to_id_string();
        let (algorithm, key_description): (&'static SignatureAlgorithm, &'static str) =
            match alg_oid.as_str() {
                OID_EC_PUBLIC_KEY => {
                    let curve = spki
                        .algorithm
                        .parameters
                        .as_ref()
                        .and_then(|p| p.as_oid().ok())
                        .map(|o| o.to_id_string())
                        .unwrap_or_default();
                    match curve.as_str() {
                        OID_P256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa-p256"),
                        OID_P384 => (&rcgen::PKCS_ECDSA_P384_SHA384, "ecdsa-p384"),
                        other => {
                            return Err(CsrError::UnsupportedKey(format!("ecdsa curve {other}")))
                        }
                    }
                }
                OID_ED25519 => (&rcgen::PKCS_ED25519, "ed25519"),
                other => return Err(CsrError::UnsupportedKey(describe_oid(other))),
            };
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        Ok(Self {
            raw_public_key: spki.subject_public_key.data.to_vec(),
            algorithm,
            key_description,
        })
    }

    /// Short name of the key type (`ecdsa-p256`, `ecdsa-p384`, `ed25519`).
    pub fn key_type(&self) -> &'static str {
        self.key_description
    }
}

fn describe_oid(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.1" => "rsa".to_owned(),
        "1.3.101.113" => "ed448".to_owned(),
        other => format!("algorithm {other}"),
    }
}

impl PublicKeyData for ParsedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.raw_public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Make a key pair and a CSR for it (agent side). The CSR's subject is a
/// placeholder: the CA ignores it.
pub fn generate_key_and_csr() -> Result<(rcgen::KeyPair, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "airlock-agent");
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_csr_parses() {
        let (_key, pem) = generate_key_and_csr().unwrap();
        let csr = ParsedCsr::from_pem(&pem).unwrap();
        assert_eq!(csr.key_type(), "ecdsa-p256");
    }

    #[test]
    fn ed25519_and_p384_accepted() {
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .unwrap();
            ParsedCsr::from_der(csr.der()).unwrap();
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            ParsedCsr::from_der(b"\x30\x03\x02\x01\x00"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            ParsedCsr::from_pem("hello"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            ParsedCsr::from_der(&vec![0u8; MAX_CSR_DER_BYTES + 1]),
            Err(CsrError::TooLarge(_))
        ));
    }

    #[test]
    fn tampered_signature_is_refused() {
        let (_key, pem) = generate_key_and_csr().unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let n = der.len();
        der[n - 3] ^= 0x55; // inside the signature BIT STRING
        let err = ParsedCsr::from_der(&der).unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::Malformed(_)),
            "{err:?}"
        );
    }
}
