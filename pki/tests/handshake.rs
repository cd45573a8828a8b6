//! The tunnel's mutual TLS over real sockets on 127.0.0.1: the server config
//! from `IdentityService::tunnel_server_config` against the agent's
//! `client_config`, and every bad-certificate case in both directions. Each
//! rejection is a typed rustls error on the side that verifies, and closes
//! only that connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pki::agent::{AgentCredentials, AgentFiles, IdentityRecord, PendingKey, SwappableClientCert};
use pki::tls::{ControlPlaneVerifier, PinnedCaVerifier};
use pki::{CertificateError, EnvironmentId, IdentityService, IdentitySettings, PeerIdentity};
use rcgen::KeyPair;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ALPN: &[u8] = b"airlock/1";

type Outcome = Result<PeerIdentity, rustls::Error>;

/// A tunnel-like TLS server: reports each handshake's outcome, then echoes.
struct Server {
    addr: std::net::SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_server(config: rustls::ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, outcomes) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                        let _ = tx.send(Ok(pki::peer_identity(&leaf).unwrap()));
                        let mut buf = [0u8; 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let inner = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .cloned()
                            .unwrap_or_else(|| rustls::Error::General(e.to_string()));
                        let _ = tx.send(Err(inner));
                    }
                }
            });
        }
    });
    Server {
        addr,
        outcomes,
        task,
    }
}

/// Connect, and prove the connection works by echoing a few bytes. Returns
/// the client-side error if the handshake or the echo failed.
async fn dial(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await?;
    // In TLS 1.3 the server judges the client certificate after the client
    // considers the handshake done: the verdict arrives on first read.
    echo(&mut tls, b"ping").await?;
    Ok(tls)
}

async fn echo(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    msg: &[u8],
) -> Result<(), std::io::Error> {
    tls.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tls.read_exact(&mut buf).await?;
    assert_eq!(buf, msg);
    Ok(())
}

async fn next_outcome(server: &mut Server) -> Outcome {
    tokio::time::timeout(Duration::from_secs(20), server.outcomes.recv())
        .await
        .expect("server reported no outcome")
        .unwrap()
}

fn env() -> EnvironmentId {
    EnvironmentId::parse("env_hs").unwrap()
}

fn open(dir: &std::path::Path, lifetime: Duration) -> IdentityService {
    let mut s = IdentitySettings::new(dir);
    s.agent_cert_lifetime = lifetime;
    IdentityService::open(s).unwrap()
}

/// Enroll through the service and store the credentials like the agent does.
fn enroll(svc: &IdentityService, dir: &std::path::Path) -> (AgentFiles, AgentCredentials) {
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    let key = PendingKey::generate().unwrap();
    let e = svc.enroll(t.token.expose(), &key.csr_pem, None).unwrap();
    let files = AgentFiles::new(dir.join("agent-identity"));
    let record = IdentityRecord {
        agent_id: e.agent_id.clone(),
        environment_id: e.environment_id.clone(),
        ca_fingerprint: svc.ca_fingerprint(),
        tunnel_address: None,
        enroll_address: None,
        server_name: None,
    };
    let creds = files
        .save_enrollment(&key, &e.certificate.chain, svc.ca_cert_der(), &record)
        .unwrap();
    (files, creds)
}

fn agent_config(svc: &IdentityService, cert: &SwappableClientCert) -> rustls::ClientConfig {
    pki::agent::client_config(svc.ca_cert_der(), cert, &[ALPN]).unwrap()
}

/// A client config presenting an arbitrary certificate.
fn client_presenting(ca: &CertificateDer<'static>, key: Arc<CertifiedKey>) -> rustls::ClientConfig {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let mut c = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ControlPlaneVerifier::new(ca).unwrap()))
        .with_client_cert_resolver(Arc::new(Fixed(key)));
    c.alpn_protocols = vec![ALPN.to_vec()];
    c
}

fn certified(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Arc<CertifiedKey> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(CertifiedKey::from_der(chain, der, &pki::crypto_provider()).unwrap())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn assert_invalid_cert(outcome: &Outcome, pred: impl Fn(&CertificateError) -> bool, case: &str) {
    match outcome {
        Err(rustls::Error::InvalidCertificate(e)) if pred(e) => {}
        other => panic!("{case}: unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn good_agent_connects_and_bad_client_certificates_are_refused_without_disturbing_it() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3600));
    let (_files, creds) = enroll(&svc, dir.path());
    let cert = SwappableClientCert::new(&creds);
    let mut server = start_server(svc.tunnel_server_config(&[ALPN]).unwrap()).await;

    // A good agent: accepted, identity readable, stays connected throughout.
    let mut good = dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    let id = next_outcome(&mut server).await.unwrap();
    assert_eq!(id.agent_id, creds.identity.agent_id);
    assert_eq!(id.environment_id, env());
    assert_eq!(id.not_after, creds.identity.not_after);
    assert_eq!(good.get_ref().1.alpn_protocol(), Some(ALPN));

    let ca = svc.ca_cert_der().clone();

    // Expired: issued two hours ago for one hour.
    let key = p256();
    let csr = pki::ParsedCsr::from_der(
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der(),
    )
    .unwrap();
    let expired = pki::danger::issue_agent_at(
        svc.ca(),
        &creds.identity.agent_id,
        &env(),
        &csr,
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    )
    .unwrap();
    assert!(dial(
        server.addr,
        client_presenting(&ca, certified(expired.chain, &key)),
        "localhost"
    )
    .await
    .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| {
            matches!(
                e,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        },
        "expired",
    );

    // Self-signed, shaped exactly like an agent certificate.
    let key = p256();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        pki::identity::spiffe_uri(&env(), &creds.identity.agent_id)
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let selfsigned = params.self_signed(&key).unwrap();
    assert!(dial(
        server.addr,
        client_presenting(&ca, certified(vec![selfsigned.der().clone()], &key)),
        "localhost"
    )
    .await
    .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| matches!(e, CertificateError::UnknownIssuer),
        "self-signed",
    );

    // Issued by another CA, for the same agent id.
    let (other_ca, _) = pki::CertificateAuthority::generate().unwrap();
    let key = p256();
    let foreign = other_ca
        .issue_agent(
            &creds.identity.agent_id,
            &env(),
            &csr_of(&key),
            Duration::from_secs(3600),
        )
        .unwrap();
    assert!(dial(
        server.addr,
        client_presenting(&ca, certified(foreign.chain, &key)),
        "localhost"
    )
    .await
    .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| matches!(e, CertificateError::UnknownIssuer),
        "other ca",
    );

    // Our own CA's server certificate (EKU serverAuth only) used as a client certificate.
    let server_id = svc
        .ca()
        .issue_server(&["localhost".into()], Duration::from_secs(3600))
        .unwrap();
    assert!(dial(
        server.addr,
        client_presenting(&ca, server_id.certified_key.clone()),
        "localhost"
    )
    .await
    .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| {
            matches!(
                e,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        },
        "server cert as client cert",
    );

    // No client certificate at all.
    let anonymous = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ControlPlaneVerifier::new(&ca).unwrap()))
        .with_no_client_auth();
    assert!(dial(server.addr, anonymous, "localhost").await.is_err());
    assert!(matches!(
        next_outcome(&mut server).await,
        Err(rustls::Error::NoCertificatesPresented)
    ));

    // The good connection was not disturbed, and a new good one still works.
    echo(&mut good, b"still here").await.unwrap();
    let _again = dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    assert!(next_outcome(&mut server).await.is_ok());
}

fn csr_of(key: &KeyPair) -> pki::ParsedCsr {
    pki::ParsedCsr::from_der(
        rcgen::CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .der(),
    )
    .unwrap()
}

#[tokio::test]
async fn revoked_agent_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3600));
    let (_files, creds) = enroll(&svc, dir.path());
    let (_files2, other) = {
        let d = dir.path().join("second");
        std::fs::create_dir_all(&d).unwrap();
        enroll(&svc, &d)
    };
    let cert = SwappableClientCert::new(&creds);
    let other_cert = SwappableClientCert::new(&other);
    let mut server = start_server(svc.tunnel_server_config(&[ALPN]).unwrap()).await;

    dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    assert!(next_outcome(&mut server).await.is_ok());

    assert!(svc.revoke(&creds.identity.agent_id).unwrap());
    let err = dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap_err();
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| matches!(e, CertificateError::Revoked),
        "revoked",
    );
    // The agent learns why (a certificate_revoked alert).
    assert!(
        err.to_string().to_lowercase().contains("revoked"),
        "client saw: {err}"
    );

    // Another agent of the same environment is unaffected.
    dial(server.addr, agent_config(&svc, &other_cert), "localhost")
        .await
        .unwrap();
    assert!(next_outcome(&mut server).await.is_ok());

    // A config built after a restart (revocation loaded from the database) also refuses.
    drop(server);
    drop(svc);
    let svc = open(dir.path(), Duration::from_secs(3600));
    let mut server = start_server(svc.tunnel_server_config(&[ALPN]).unwrap()).await;
    assert!(dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| matches!(e, CertificateError::Revoked),
        "revoked after restart",
    );
}

/// A rogue or misconfigured server, from the agent's point of view.
async fn agent_refuses_server(
    svc: &IdentityService,
    cert: &SwappableClientCert,
    server_key: Arc<CertifiedKey>,
    name: &str,
) -> rustls::Error {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let config = rustls::ServerConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(server_key)));
    let server = start_server(config).await;
    let err = dial(server.addr, agent_config(svc, cert), name)
        .await
        .unwrap_err();
    err.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a rustls error: {err}"))
}

#[tokio::test]
async fn agent_verifies_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3600));
    let (_files, creds) = enroll(&svc, dir.path());
    let cert = SwappableClientCert::new(&creds);

    // An agent's client certificate (our CA, EKU clientAuth) posing as the server.
    let key = p256();
    let client_cert = svc
        .ca()
        .issue_agent(
            &creds.identity.agent_id,
            &env(),
            &csr_of(&key),
            Duration::from_secs(3600),
        )
        .unwrap();
    let e =
        agent_refuses_server(&svc, &cert, certified(client_cert.chain, &key), "localhost").await;
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        ),
        "{e:?}"
    );

    // A proper server certificate from another CA (no system roots either).
    let (other_ca, _) = pki::CertificateAuthority::generate().unwrap();
    let foreign = other_ca
        .issue_server(&["localhost".into()], Duration::from_secs(3600))
        .unwrap();
    let e = agent_refuses_server(&svc, &cert, foreign.certified_key, "localhost").await;
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{e:?}"
    );

    // Our CA, wrong name.
    let misnamed = svc
        .ca()
        .issue_server(&["elsewhere.example".into()], Duration::from_secs(3600))
        .unwrap();
    let e = agent_refuses_server(&svc, &cert, misnamed.certified_key, "localhost").await;
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn enrollment_tls_is_pinned_to_the_ca_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3600));
    let server = start_server_no_client_auth(&svc).await;

    let good = Arc::new(PinnedCaVerifier::new(svc.ca_fingerprint()));
    let tcp = TcpStream::connect(server).await.unwrap();
    TlsConnector::from(Arc::new(good.client_config().unwrap()))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        good.pinned_ca().unwrap().as_ref(),
        svc.ca_cert_der().as_ref()
    );

    let (other_ca, _) = pki::CertificateAuthority::generate().unwrap();
    let wrong = Arc::new(PinnedCaVerifier::new(other_ca.fingerprint()));
    let tcp = TcpStream::connect(server).await.unwrap();
    let err = TlsConnector::from(Arc::new(wrong.client_config().unwrap()))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pinned fingerprint"), "{err}");
    assert!(wrong.pinned_ca().is_none());
}

async fn start_server_no_client_auth(svc: &IdentityService) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(svc.enroll_server_config().unwrap()));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    let _ = tls.read(&mut b).await;
                }
            });
        }
    });
    addr
}

/// Bound on a wait for the wall clock to pass a certificate time (the
/// certificates here live seconds).
const WALL_CLOCK_LIMIT: Duration = Duration::from_secs(30);

/// Renewal at the pki level with a three-second certificate: the agent
/// renews at two thirds of the lifetime, the next handshake presents the new
/// certificate, and once the first certificate has expired it is refused
/// while the renewed one still works.
#[tokio::test]
async fn short_lived_certificate_is_renewed_and_swapped_for_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3));
    let (files, creds) = enroll(&svc, dir.path());
    let cert = SwappableClientCert::new(&creds);
    let mut server = start_server(svc.tunnel_server_config(&[ALPN]).unwrap()).await;
    let first = creds.identity.clone();
    assert_eq!(
        first.not_after.duration_since(first.not_before).unwrap(),
        Duration::from_secs(3) + pki::ca::CLOCK_SKEW_ALLOWANCE
    );

    let due = pki::agent::renewal_due_for(&first);
    assert!(due < first.not_after, "renewal must be due before expiry");
    // Certificate checks read the wall clock (rustls, the CA), so the wait is
    // on the wall clock itself, not on tokio's.
    testkit::eventually(
        "the wall clock to reach renewal time",
        WALL_CLOCK_LIMIT,
        || SystemTime::now() >= due,
    )
    .await;

    // The renewal round trip the tunnel carries: CSR in, chain out.
    let key = PendingKey::generate().unwrap();
    let chain = svc.renew(&first, &key.csr_der).unwrap().chain;
    let renewed = files.save_renewal(&creds, &key, chain).unwrap();
    cert.swap(&renewed);
    assert_ne!(renewed.identity.serial, first.serial);
    assert!(renewed.identity.not_after >= first.not_after);
    // Stored on disk, atomically, readable by the next start.
    assert_eq!(
        files
            .load(Some(svc.ca_fingerprint()))
            .unwrap()
            .identity
            .serial,
        renewed.identity.serial
    );

    dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    assert_eq!(
        next_outcome(&mut server).await.unwrap().serial,
        renewed.identity.serial
    );

    // Once the first certificate has expired it no longer gets in...
    let expired = first.not_after + Duration::from_secs(1);
    testkit::eventually(
        "the wall clock to pass the first certificate's expiry",
        WALL_CLOCK_LIMIT,
        || SystemTime::now() >= expired,
    )
    .await;
    let old = SwappableClientCert::new(&creds);
    assert!(dial(server.addr, agent_config(&svc, &old), "localhost")
        .await
        .is_err());
    assert_invalid_cert(
        &next_outcome(&mut server).await,
        |e| {
            matches!(
                e,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        },
        "first certificate after expiry",
    );
    // ...unless the renewed one has expired too (a very slow machine), the renewed one does.
    if SystemTime::now() + Duration::from_millis(500) < renewed.identity.not_after {
        dial(server.addr, agent_config(&svc, &cert), "localhost")
            .await
            .unwrap();
        assert!(next_outcome(&mut server).await.is_ok());
    }
}

#[tokio::test]
async fn per_connection_config_applies_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Arc::new(open(dir.path(), Duration::from_secs(3600)));
    let (_files, creds) = enroll(&svc, dir.path());
    let cert = SwappableClientCert::new(&creds);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let s2 = svc.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let config = s2.tunnel_server_config_for_peer(&[ALPN], peer).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                match TlsAcceptor::from(Arc::new(config)).accept(tcp).await {
                    Ok(mut tls) => {
                        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                        let _ = tx.send(Ok(pki::peer_identity(&leaf).unwrap()));
                        let mut b = [0u8; 4];
                        if tls.read_exact(&mut b).await.is_ok() {
                            let _ = tls.write_all(&b).await;
                        }
                    }
                    Err(e) => {
                        let inner = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .cloned();
                        let _ = tx.send(Err(
                            inner.unwrap_or_else(|| rustls::Error::General(e.to_string()))
                        ));
                    }
                }
            });
        }
    });
    dial(addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    assert!(rx.recv().await.unwrap().is_ok());
    svc.revoke(&creds.identity.agent_id).unwrap();
    assert!(dial(addr, agent_config(&svc, &cert), "localhost")
        .await
        .is_err());
    assert!(matches!(
        rx.recv().await.unwrap(),
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
    ));
    task.abort();
}

#[tokio::test]
async fn server_certificate_rotation_applies_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Duration::from_secs(3600));
    let (_files, creds) = enroll(&svc, dir.path());
    let cert = SwappableClientCert::new(&creds);
    let mut server = start_server(svc.tunnel_server_config(&[ALPN]).unwrap()).await;
    let served = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let mut before = dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    next_outcome(&mut server).await.unwrap();
    let old_leaf = served(&before);
    let old_expiry = svc.server_cert_not_after();
    svc.rotate_server_cert().unwrap();
    assert!(svc.server_cert_not_after() >= old_expiry);
    let after = dial(server.addr, agent_config(&svc, &cert), "localhost")
        .await
        .unwrap();
    next_outcome(&mut server).await.unwrap();
    assert_ne!(
        served(&after).as_ref(),
        old_leaf.as_ref(),
        "new handshakes get the new certificate"
    );
    echo(&mut before, b"old connection unaffected")
        .await
        .unwrap();
}
