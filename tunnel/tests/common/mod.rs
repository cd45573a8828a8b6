//! Test PKI (rcgen) and helpers for the tunnel's loopback tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

pub struct TestPki {
    pub ca_der: CertificateDer<'static>,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let ca = params.self_signed(&ca_key).unwrap();
        Self {
            ca_der: ca.der().clone(),
            ca_params: params,
            ca_key,
        }
    }

    fn leaf(
        &self,
        names: Vec<String>,
        cn: &str,
        eku: ExtendedKeyUsagePurpose,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let (chain, key) = self.leaf(
            vec!["localhost".into()],
            "control-plane",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }

    pub fn client_config(&self, agent: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let (chain, key) = self.leaf(vec![], agent, ExtendedKeyUsagePurpose::ClientAuth);
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    }
}

/// Answers `ping`; every other call is unsupported.
pub struct PingHandler;

#[async_trait::async_trait]
impl tunnel::call::CallHandler for PingHandler {
    async fn handle(
        &self,
        request: protocol::Request,
        _io: &mut tunnel::call::CallIo,
    ) -> protocol::Response {
        match request {
            protocol::Request::Ping => {
                protocol::Response::Ok(protocol::Reply::Pong(Default::default()))
            }
            other => protocol::Response::error(
                protocol::ErrorCode::UnsupportedCall,
                format!("no {}", other.name()),
            ),
        }
    }
}

/// A listener that accepts every hello; accepted connections come out of the receiver.
pub async fn server(
    pki: &TestPki,
    settings: tunnel::ServerSettings,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tunnel::ServerConnection>,
    tokio::task::JoinHandle<()>,
) {
    server_with_reset_key(pki, settings, None).await
}

/// [`server`] with a QUIC stateless reset key.
pub async fn server_with_reset_key(
    pki: &TestPki,
    settings: tunnel::ServerSettings,
    reset_key: Option<tunnel::server::StatelessResetKey>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tunnel::ServerConnection>,
    tokio::task::JoinHandle<()>,
) {
    let mut listener =
        tunnel::Listener::bind_with_reset_key(settings.clone(), pki.server_config(), reset_key)
            .await
            .unwrap();
    let addr = listener.local_addr();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(pending) = listener.accept().await {
            let version = pending.negotiate().unwrap();
            let peer = pending.hello().unwrap().agent_id.clone();
            let conn = pending
                .accept(version, &settings, None, peer)
                .await
                .unwrap();
            let _ = tx.send(conn);
        }
    });
    (addr, rx, task)
}

/// An agent client of `agent` dialing `addr` with a short backoff (50 ms
/// doubling to 400 ms).
pub fn client(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    agent: &str,
    mode: tunnel::TransportMode,
) -> tunnel::ClientHandle {
    let mut s = tunnel::ClientSettings::new(addr.to_string(), "localhost", agent);
    s.mode = mode;
    s.backoff.base = std::time::Duration::from_millis(50);
    s.backoff.cap = std::time::Duration::from_millis(400);
    tunnel::client::spawn(s, pki.client_config(agent), Arc::new(PingHandler))
}
