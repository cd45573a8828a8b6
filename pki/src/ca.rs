//! The internal certificate authority: created on first start in
//! `<data_dir>/pki/` (`ca.crt`, `ca.key` mode 0600, directory 0700) or loaded
//! from operator-provided files. It issues the control plane's server
//! certificate (EKU `serverAuth` only) and agent client certificates (EKU
//! `clientAuth` only, identity in a SAN URI, see [`crate::identity`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fingerprint::Fingerprint;
use crate::identity::{spiffe_uri, AgentId, EnvironmentId};
use crate::util::{create_private_dir, write_atomic};

/// CA certificate lifetime when the CA is created here.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back `not_before` is set on issued certificates, to tolerate clock skew.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Where the CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Created on first use in `dir` (`ca.crt`, `ca.key`), loaded afterwards.
    Managed {
        /// Usually `<data_dir>/pki`.
        dir: PathBuf,
    },
    /// Operator-provided PEM files; never written to.
    Provided {
        /// CA certificate (PEM).
        cert_file: PathBuf,
        /// CA private key (PEM, PKCS#8 ECDSA/Ed25519/RSA); must not be readable by group or others.
        key_file: PathBuf,
    },
}

/// Errors loading, creating or using the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("ca file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Only one of `ca.crt` / `ca.key` exists in a managed CA directory.
    #[error("ca directory {0} has only one of ca.crt and ca.key; restore the missing file or remove both to create a new ca")]
    Incomplete(PathBuf),
    /// The CA key file is readable by group or others.
    #[error("ca key file {0} must not be accessible by group or others (chmod 600)")]
    KeyPermissions(PathBuf),
    /// A CA file does not contain what it should.
    #[error("ca file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A server name is not a valid DNS name or IP address.
    #[error("invalid server name `{0}`")]
    BadServerName(String),
    /// Certificate generation failed (a bug or an unusable key).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The generated key could not be loaded into rustls.
    #[error("key cannot be used for tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate chain (leaf first, then the CA) with facts about the leaf.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// `[leaf, ca]` in DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// Leaf serial number, lowercase hex.
    pub serial: String,
    /// Leaf `not_after`.
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    /// The chain as concatenated PEM blocks.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| der_to_pem(c)).collect()
    }
}

/// The control plane's own TLS identity (server certificate and key).
#[derive(Clone)]
pub struct ServerIdentity {
    /// `[leaf, ca]` in DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's expiry.
    pub not_after: SystemTime,
    /// The same, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The CA: its certificate and a signer for its key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    fingerprint: Fingerprint,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// PEM-encode one certificate.
pub fn der_to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Parse every `CERTIFICATE` block of a PEM text.
pub fn pem_to_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Malformed)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// Why PEM text did not yield certificates ([`pem_to_certs`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The text is not well-formed PEM.
    #[error("malformed pem: {0}")]
    Malformed(#[source] rustls_pki_types::pem::Error),
    /// Well-formed, but it holds no `CERTIFICATE` block.
    #[error("no certificate found")]
    NoCertificate,
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // and never with a leading zero byte, so the hex form is stable
    SerialNumber::from_slice(&b)
}

fn check_key_permissions(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CaError::KeyPermissions(path.to_owned()));
    }
    Ok(())
}

fn read_to_string(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

impl CertificateAuthority {
    /// Load the CA from `source`, creating a managed one if it does not exist yet.
    /// Creation is serialised with a lock file, so two processes starting at
    /// once end up with the same CA.
    pub fn load_or_create(source: &CaSource) -> Result<Self, CaError> {
        match source {
            CaSource::Provided {
                cert_file,
                key_file,
            } => Self::load(cert_file, key_file),
            CaSource::Managed { dir } => {
                create_private_dir(dir).map_err(|source| CaError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let cert_file = dir.join("ca.crt");
                let key_file = dir.join("ca.key");
                match (cert_file.exists(), key_file.exists()) {
                    (true, true) => Self::load(&cert_file, &key_file),
                    (false, false) => Self::create(dir, &cert_file, &key_file),
                    _ => Err(CaError::Incomplete(dir.clone())),
                }
            }
        }
    }

    /// Load a CA from PEM files (certificate, PKCS#8 key).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, CaError> {
        check_key_permissions(key_file)?;
        let cert_pem = read_to_string(cert_file)?;
        let key_pem = read_to_string(key_file)?;
        let invalid = |path: &Path, message: String| CaError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut certs = pem_to_certs(&cert_pem).map_err(|e| invalid(cert_file, e.to_string()))?;
        let cert_der = certs.swap_remove(0);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(key_file, e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(cert_file, e.to_string()))?;
        if !x509.is_ca() {
            return Err(invalid(
                cert_file,
                "certificate is not a ca (basicConstraints ca=false)".into(),
            ));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                key_file,
                "key does not match the ca certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(cert_file, e.to_string()))?;
        Ok(Self {
            fingerprint: Fingerprint::of_der(&cert_der),
            cert_der,
            issuer,
        })
    }

    /// Create a CA in `dir`. Files are written under temporary names and
    /// hard-linked into place (which never replaces), certificate first; a
    /// process that loses the race to another one creating the CA at the same
    /// moment waits for the winner's files and loads them.
    fn create(dir: &Path, cert_file: &Path, key_file: &Path) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        let (ca, key_pem) = Self::generate()?;
        let tag = format!(
            "{}.{}",
            std::process::id(),
            hex::encode(&ca.fingerprint.as_bytes()[..4])
        );
        let tmp_cert = dir.join(format!(".ca.crt.{tag}"));
        let tmp_key = dir.join(format!(".ca.key.{tag}"));
        let result = (|| {
            write_atomic(&tmp_key, key_pem.as_bytes(), 0o600).map_err(io(&tmp_key))?;
            write_atomic(&tmp_cert, ca.cert_pem().as_bytes(), 0o644).map_err(io(&tmp_cert))?;
            match std::fs::hard_link(&tmp_cert, cert_file) {
                Ok(()) => {
                    std::fs::hard_link(&tmp_key, key_file).map_err(io(key_file))?;
                    tracing::info!(fingerprint = %ca.fingerprint, dir = %dir.display(), "created internal ca");
                    Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some(())),
                Err(e) => Err(io(cert_file)(e)),
            }
        })();
        let _ = std::fs::remove_file(&tmp_cert);
        let _ = std::fs::remove_file(&tmp_key);
        match result? {
            None => Ok(ca),
            Some(()) => {
                // Another process won; its key follows its certificate shortly.
                for _ in 0..50 {
                    if key_file.exists() {
                        return Self::load(cert_file, key_file);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(CaError::Incomplete(dir.to_owned()))
            }
        }
    }

    /// Make a new CA in memory; returns it with its key as PEM (for the caller to store).
    pub fn generate() -> Result<(Self, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Airlock");
        // A random suffix keeps two Airlock CAs from sharing a subject name,
        // so a certificate from another deployment reads as "unknown issuer"
        // rather than as a bad signature from ours.
        let mut suffix = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        dn.push(
            DnType::CommonName,
            format!("Airlock internal CA {}", hex::encode(suffix)),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let cert_der = cert.der().clone();
        let issuer = Issuer::new(params, key);
        Ok((
            Self {
                fingerprint: Fingerprint::of_der(&cert_der),
                cert_der,
                issuer,
            },
            key_pem,
        ))
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    /// `sha256:<hex>` of the CA certificate's DER; what agents pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Issue a server certificate for `names` (DNS names or IP addresses)
    /// with a fresh ECDSA P-256 key, EKU `serverAuth` only.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServerIdentity, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Airlock");
        dn.push(
            DnType::CommonName,
            names
                .first()
                .map(String::as_str)
                .unwrap_or("airlock-control-plane"),
        );
        params.distinguished_name = dn;
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| CaError::BadServerName(name.clone()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issued = self.sign(params, &key, SystemTime::now(), lifetime)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified_key = CertifiedKey::from_der(
            issued.chain.clone(),
            key_der,
            &rustls::crypto::ring::default_provider(),
        )?;
        Ok(ServerIdentity {
            chain: issued.chain,
            not_after: issued.not_after,
            certified_key: Arc::new(certified_key),
        })
    }

    /// A 32-byte secret for `label`, derived from the CA key (HMAC-SHA256
    /// keyed with its PKCS#8 DER): the same in every process that holds this
    /// CA, across restarts and replicas; it reveals nothing of the key. The
    /// tunnel keys its QUIC stateless resets with one.
    pub fn derive_secret(&self, label: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.issuer.key().serialize_der());
        let tag = ring::hmac::sign(&key, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Issue an agent client certificate for the key in `public_key` (from a
    /// verified CSR): CN = agent id, SAN URI with environment and agent id,
    /// EKU `clientAuth` only, valid from now (minus clock-skew allowance) for `lifetime`.
    pub fn issue_agent(
        &self,
        agent_id: &AgentId,
        environment_id: &EnvironmentId,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue_agent_at(
            agent_id,
            environment_id,
            public_key,
            SystemTime::now(),
            lifetime,
        )
    }

    /// As [`Self::issue_agent`] with an explicit issue time (tests use this to
    /// make expired certificates; see [`crate::danger`]).
    pub(crate) fn issue_agent_at(
        &self,
        agent_id: &AgentId,
        environment_id: &EnvironmentId,
        public_key: &impl PublicKeyData,
        issued_at: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Airlock");
        dn.push(DnType::CommonName, agent_id.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_uri(environment_id, agent_id)
                .try_into()
                .map_err(|_| CaError::Generate(rcgen::Error::CouldNotParseCertificate))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, public_key, issued_at, lifetime)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        issued_at: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let issued_at = time::OffsetDateTime::from(issued_at);
        // Whole seconds: X.509 times have no fractions, and the value we report
        // must equal what the certificate says.
        let issued_at = issued_at.replace_nanosecond(0).unwrap_or(issued_at);
        params.not_before = issued_at - CLOCK_SKEW_ALLOWANCE;
        params.not_after = issued_at + lifetime;
        let not_after = SystemTime::from(params.not_after);
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedCertificate {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            serial: serial_hex,
            not_after,
        })
    }
}
