//! Enrollment through `IdentityService` (no sockets): tokens are single-use
//! and expire, bad CSRs are refused without burning the token, and every
//! refusal is a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pki::agent::PendingKey;
use pki::store::IdentityStore;
use pki::{CsrError, EnrollError, EnvironmentId, IdentityService, IdentitySettings, TokenError};

fn service(dir: &std::path::Path) -> IdentityService {
    IdentityService::open(IdentitySettings::new(dir)).unwrap()
}

fn env() -> EnvironmentId {
    EnvironmentId::parse("env_test").unwrap()
}

fn csr() -> String {
    PendingKey::generate().unwrap().csr_pem
}

#[test]
fn token_enrolls_once() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    let e = svc
        .enroll(t.token.expose(), &csr(), Some("127.0.0.1:1"))
        .unwrap();
    assert_eq!(e.environment_id, env());
    assert!(e.agent_id.as_str().starts_with("agt_"));
    let peer = pki::peer_identity(&e.certificate.chain[0]).unwrap();
    assert_eq!(peer.agent_id, e.agent_id);
    assert_eq!(peer.serial, e.certificate.serial);

    let again = svc.enroll(t.token.expose(), &csr(), None).unwrap_err();
    assert!(
        matches!(&again, EnrollError::Token(TokenError::AlreadyUsed { used_by, .. }) if *used_by == e.agent_id.to_string()),
        "{again:?}"
    );
    // The store recorded the agent.
    let agents = svc.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].enrolled_from.as_deref(), Some("127.0.0.1:1"));
}

#[test]
fn plaintext_token_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    let db = std::fs::read(dir.path().join("identity.db")).unwrap();
    let wal = std::fs::read(dir.path().join("identity.db-wal")).unwrap_or_default();
    let needle = t.token.expose().as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "token plaintext found on disk"
        );
    }
}

#[test]
fn unknown_malformed_and_expired_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let unknown = pki::JoinToken::generate();
    assert!(matches!(
        svc.enroll(unknown.expose(), &csr(), None),
        Err(EnrollError::Token(TokenError::Unknown))
    ));
    assert!(matches!(
        svc.enroll("not-a-token", &csr(), None),
        Err(EnrollError::Token(TokenError::Malformed))
    ));
    // An expired token, written straight into the database (no waiting).
    let expired = pki::JoinToken::generate();
    let store = IdentityStore::open(&dir.path().join("identity.db")).unwrap();
    let now = SystemTime::now();
    store
        .insert_token(
            &expired.hash(),
            "tok_expired",
            &env(),
            now - Duration::from_secs(120),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let err = svc.enroll(expired.expose(), &csr(), None).unwrap_err();
    assert!(
        matches!(&err, EnrollError::Token(TokenError::Expired { token_id }) if token_id == "tok_expired"),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(svc.agents().unwrap().is_empty());
}

#[test]
fn bad_csrs_are_refused_and_do_not_burn_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "hello".to_owned()),
        ("truncated", {
            let c = csr();
            let mut lines: Vec<&str> = c.lines().collect();
            lines.remove(2);
            lines.join("\n")
        }),
        ("rsa", include_str!("fixtures/csr-rsa2048.pem").to_owned()),
        ("p521", include_str!("fixtures/csr-p521.pem").to_owned()),
    ];
    for (name, pem) in cases {
        let err = svc.enroll(t.token.expose(), &pem, None).unwrap_err();
        match name {
            "rsa" | "p521" => assert!(
                matches!(err, EnrollError::Csr(CsrError::UnsupportedKey(_))),
                "{name}: {err:?}"
            ),
            _ => assert!(
                matches!(
                    err,
                    EnrollError::Csr(CsrError::Malformed(_) | CsrError::BadSignature)
                ),
                "{name}: {err:?}"
            ),
        }
    }
    // Still usable.
    svc.enroll(t.token.expose(), &csr(), None).unwrap();
}

#[test]
fn concurrent_redemption_enrolls_exactly_one_agent() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Arc::new(service(dir.path()));
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    // A second handle on the same database, as a second process would have.
    let other = Arc::new(service(dir.path()));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 {
                svc.clone()
            } else {
                other.clone()
            };
            let tok = t.token.expose().to_owned();
            let c = csr();
            std::thread::spawn(move || s.enroll(&tok, &c, None))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(r, Err(EnrollError::Token(TokenError::AlreadyUsed { .. }))),
            "{r:?}"
        );
    }
    assert_eq!(svc.agents().unwrap().len(), 1);
}

#[test]
fn token_ttl_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    assert!(matches!(
        svc.create_token(&env(), Duration::ZERO),
        Err(pki::ServiceError::BadTtl)
    ));
    assert!(matches!(
        svc.create_token(&env(), pki::service::MAX_TOKEN_TTL + Duration::from_secs(1)),
        Err(pki::ServiceError::BadTtl)
    ));
}

#[test]
fn ca_persists_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fp = service(dir.path()).ca_fingerprint();
    let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(dir.path().join("pki"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(
        service(dir.path()).ca_fingerprint(),
        fp,
        "second open must load the same ca"
    );
    // A key readable by others is refused.
    std::fs::set_permissions(
        dir.path().join("pki/ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = IdentityService::open(IdentitySettings::new(dir.path())).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn concurrent_first_start_agrees_on_one_ca() {
    let dir = tempfile::tempdir().unwrap();
    let source = pki::CaSource::Managed {
        dir: dir.path().join("pki"),
    };
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = source.clone();
            std::thread::spawn(move || {
                pki::CertificateAuthority::load_or_create(&s).map(|c| c.fingerprint())
            })
        })
        .collect();
    let fps: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert!(fps.windows(2).all(|w| w[0] == w[1]), "{fps:?}");
}

#[test]
fn operator_provided_ca_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, key_pem) = pki::CertificateAuthority::generate().unwrap();
    let cert_file = dir.path().join("op-ca.crt");
    let key_file = dir.path().join("op-ca.key");
    std::fs::write(&cert_file, ca.cert_pem()).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut settings = IdentitySettings::new(dir.path().join("data"));
    settings.ca = pki::CaSource::Provided {
        cert_file,
        key_file,
    };
    let svc = IdentityService::open(settings).unwrap();
    assert_eq!(svc.ca_fingerprint(), ca.fingerprint());
    assert!(
        !dir.path().join("data/pki/ca.key").exists(),
        "must not create a managed ca"
    );
}

#[test]
fn renewal_keeps_identity_and_refuses_revoked_agents() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let t = svc.create_token(&env(), Duration::from_secs(60)).unwrap();
    let e = svc.enroll(t.token.expose(), &csr(), None).unwrap();
    let peer = pki::peer_identity(&e.certificate.chain[0]).unwrap();
    let key = PendingKey::generate().unwrap();
    let renewed = svc.renew(&peer, &key.csr_der).unwrap();
    let p2 = pki::peer_identity(&renewed.chain[0]).unwrap();
    assert_eq!(
        (p2.agent_id.clone(), p2.environment_id.clone()),
        (peer.agent_id.clone(), peer.environment_id.clone())
    );
    assert_ne!(p2.serial, peer.serial);
    assert_eq!(svc.agents().unwrap()[0].cert_serial, p2.serial);
    // Bad CSR on renewal.
    assert!(matches!(
        svc.renew(&peer, b"nope"),
        Err(pki::RenewError::Csr(_))
    ));
    // Revoked: refused, persistently.
    assert!(svc.revoke(&peer.agent_id).unwrap());
    assert!(
        !svc.revoke(&peer.agent_id).unwrap(),
        "second revoke reports already revoked"
    );
    assert!(matches!(
        svc.renew(&peer, &key.csr_der),
        Err(pki::RenewError::Revoked(_))
    ));
    drop(svc);
    let reopened = service(dir.path());
    assert!(
        reopened.revocations().is_revoked(&peer.agent_id),
        "revocation must survive a restart"
    );
    // Unknown agents cannot be revoked (typo protection).
    let ghost = pki::AgentId::parse("agt_0000").unwrap();
    assert!(matches!(
        reopened.revoke(&ghost),
        Err(pki::ServiceError::Store(pki::StoreError::UnknownAgent(_)))
    ));
}
