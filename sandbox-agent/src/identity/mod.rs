//! The agent's identity: enrolling with a join token ([`enroll`]), loading
//! the stored credentials for the tunnel ([`AgentIdentity`]), and renewing the
//! certificate before it expires ([`renewal`]).
//!
//! The tunnel client uses [`AgentIdentity::client_config`] for every dial; the
//! config presents a swappable certificate, so after a renewal each new
//! handshake uses the new certificate while established connections go on.

pub mod config;
pub mod enroll;
pub mod renewal;

use std::sync::{Arc, RwLock};

use pki::agent::{
    AgentCredentials, AgentFiles, AgentIdentityError, IdentityRecord, SwappableClientCert,
};
use pki::Fingerprint;

use crate::config::Config;
use config::DEFAULT_TUNNEL_PORT;
use settings::{join_host_port, split_host_port};

/// Where and whom to dial, resolved from config and the identity record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneEndpoint {
    /// The first tunnel address, `host:port`.
    pub address: String,
    /// Every tunnel address (one link each; `address` is the first), from
    /// `control_plane.addresses`/`address`, else the identity record.
    pub addresses: Vec<String>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// Pinned CA fingerprint.
    pub ca_fingerprint: Fingerprint,
    /// `control_plane.server_name` (or the identity record's), when set.
    pub explicit_server_name: Option<String>,
}

impl ControlPlaneEndpoint {
    /// The name the certificate of the replica at `address` must carry:
    /// `control_plane.server_name` when set, else the host of `address`.
    pub fn server_name_for(&self, address: &str) -> String {
        self.explicit_server_name
            .clone()
            .or_else(|| split_host_port(address).map(|(h, _)| h.to_owned()))
            .unwrap_or_else(|| self.server_name.clone())
    }
}

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Files missing or invalid.
    #[error(transparent)]
    Files(#[from] AgentIdentityError),
    /// No tunnel address in config or identity record.
    #[error("no tunnel address: set `control_plane.address` or enroll with a join string that carries one")]
    NoAddress,
    /// The task loading the files did not finish (it panicked or was
    /// cancelled).
    #[error("identity load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The loaded identity of this agent: credentials, where to connect, and
/// the certificate the tunnel presents.
#[derive(Debug)]
pub struct AgentIdentity {
    files: AgentFiles,
    endpoint: ControlPlaneEndpoint,
    current: RwLock<AgentCredentials>,
    client_cert: SwappableClientCert,
}

impl AgentIdentity {
    /// Load from the identity directory named by `config`, checking the
    /// stored CA against the pinned fingerprint.
    pub fn load(config: &Config) -> Result<Arc<Self>, LoadError> {
        let files = AgentFiles::new(&config.identity.dir);
        let record: Option<IdentityRecord> = files.read_record().ok();
        let cp = &config.control_plane;
        let pin = cp
            .ca_fingerprint
            .or(record.as_ref().map(|r| r.ca_fingerprint));
        let creds = files.load(pin)?;
        let configured = cp.addresses.first().cloned();
        let address = configured
            .or_else(|| record.as_ref().and_then(|r| r.tunnel_address.clone()))
            .or_else(|| {
                let enroll = cp
                    .enroll_address
                    .clone()
                    .or_else(|| record.as_ref().and_then(|r| r.enroll_address.clone()))?;
                let (host, _) = split_host_port(&enroll)?;
                Some(join_host_port(host, DEFAULT_TUNNEL_PORT))
            })
            .ok_or(LoadError::NoAddress)?;
        let explicit_server_name = cp
            .server_name
            .clone()
            .or_else(|| record.as_ref().and_then(|r| r.server_name.clone()));
        let server_name = explicit_server_name
            .clone()
            .or_else(|| split_host_port(&address).map(|(h, _)| h.to_owned()))
            .ok_or(LoadError::NoAddress)?;
        let addresses = if cp.addresses.is_empty() {
            vec![address.clone()]
        } else {
            cp.addresses.clone()
        };
        let endpoint = ControlPlaneEndpoint {
            address,
            addresses,
            explicit_server_name,
            server_name,
            ca_fingerprint: Fingerprint::of_der(&creds.ca),
        };
        Ok(Arc::new(Self {
            files,
            endpoint,
            client_cert: SwappableClientCert::new(&creds),
            current: RwLock::new(creds),
        }))
    }

    /// Where to dial.
    pub fn endpoint(&self) -> &ControlPlaneEndpoint {
        &self.endpoint
    }

    /// The current credentials (changes after each renewal).
    pub fn credentials(&self) -> AgentCredentials {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Agent id, environment and expiry of the current certificate.
    pub fn identity(&self) -> pki::PeerIdentity {
        self.credentials().identity
    }

    /// The tunnel's client TLS config with `alpn` (e.g. `[b"airlock/1"]`).
    /// Build it once and reuse it: it follows renewals by itself.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, pki::TlsError> {
        pki::agent::client_config(&self.credentials().ca, &self.client_cert, alpn)
    }

    /// Install renewed credentials: write them to disk, then present them on
    /// future handshakes.
    pub(crate) fn install_renewal(
        &self,
        key: &pki::agent::PendingKey,
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    ) -> Result<AgentCredentials, AgentIdentityError> {
        let current = self.credentials();
        let renewed = self.files.save_renewal(&current, key, chain)?;
        self.client_cert.swap(&renewed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = renewed.clone();
        Ok(renewed)
    }
}

/// Enrolls an agent at `svc` for tests: a join token for `environment`,
/// a fresh key, the enrollment, its files saved where `config` keeps the
/// identity, loaded back.
#[cfg(test)]
pub(crate) fn enrolled_for_test(
    svc: &pki::IdentityService,
    environment: &str,
    config: &crate::config::Config,
) -> std::sync::Arc<AgentIdentity> {
    use pki::agent::{AgentFiles, IdentityRecord, PendingKey};
    let token = svc
        .create_token(
            &pki::EnvironmentId::parse(environment).unwrap(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let key = PendingKey::generate().unwrap();
    let e = svc
        .enroll(token.token.expose(), &key.csr_pem, None)
        .unwrap();
    AgentFiles::new(&config.identity.dir)
        .save_enrollment(
            &key,
            &e.certificate.chain,
            svc.ca_cert_der(),
            &IdentityRecord {
                agent_id: e.agent_id.clone(),
                environment_id: e.environment_id.clone(),
                ca_fingerprint: svc.ca_fingerprint(),
                tunnel_address: None,
                enroll_address: None,
                server_name: None,
            },
        )
        .unwrap();
    AgentIdentity::load(config).unwrap()
}
