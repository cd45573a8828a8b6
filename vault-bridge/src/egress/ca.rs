//! The bridge's egress CA: created on first use in the bridge's data dir
//! (`ca.crt` 0644, `ca.key` 0600; the `pki` crate's managed CA), trusted by
//! sandboxes (public part only), and used to mint a leaf certificate for each
//! host a sandbox tunnels to. Leaves are cached per host and re-minted
//! before they expire.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pki::{CaError, CaSource, CertificateAuthority};
use tokio_rustls::rustls;

/// How long a minted leaf is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Re-mint a cached leaf when it has less than this left.
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The egress CA and its per-host leaf cache.
#[derive(Debug)]
pub struct EgressCa {
    ca: CertificateAuthority,
    leaves: Mutex<HashMap<String, (SystemTime, Arc<rustls::ServerConfig>)>>,
}

/// A leaf could not be minted for a host.
#[derive(Debug, thiserror::Error)]
#[error("egress ca: cannot mint a certificate for {host}: {message}")]
pub struct MintError {
    /// The host.
    pub host: String,
    /// Why.
    pub message: String,
}

impl EgressCa {
    /// Load the CA from `dir`, creating it there (key 0600) if it does not exist.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let ca = CertificateAuthority::load_or_create(&CaSource::Managed {
            dir: dir.to_owned(),
        })?;
        Ok(Self {
            ca,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM): what sandboxes trust. Public.
    pub fn cert_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// `sha256:<hex>` of the CA certificate.
    pub fn fingerprint(&self) -> String {
        self.ca.fingerprint().to_string()
    }

    /// A TLS server config presenting a leaf for `host` (cached).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, MintError> {
        let now = SystemTime::now();
        {
            let g = match self.leaves.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some((not_after, cfg)) = g.get(host) {
                if *not_after > now + LEAF_REFRESH {
                    return Ok(cfg.clone());
                }
            }
        }
        let err = |e: &dyn std::fmt::Display| MintError {
            host: host.to_owned(),
            message: e.to_string(),
        };
        let id = self
            .ca
            .issue_server(&[host.to_owned()], LEAF_LIFETIME)
            .map_err(|e| err(&e))?;
        let resolver = Arc::new(FixedCert(id.certified_key.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(pki::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let mut g = match self.leaves.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.insert(host.to_owned(), (id.not_after, cfg.clone()));
        Ok(cfg)
    }
}

#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_key_private_leaves_cached_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("egress-ca");
        let ca = EgressCa::load_or_create(&ca_dir).unwrap();
        let mode = std::fs::metadata(ca_dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let again = EgressCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let a = ca.server_config("git.example.test").unwrap();
        let b = ca.server_config("git.example.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = ca.server_config("other.example.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
