//! Enrollment and identity end to end, with the real `control-plane serve`
//! and `sandbox-agent enroll` binaries on loopback: the happy path and the
//! files it leaves, every bad-token and bad-request case (each a typed error,
//! logged once with the peer address, the server undisturbed), the CLI, the
//! offline revocation path, and graceful shutdown.
//!
//! Live revocation and renewal over the tunnel are in `tunnel_e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{binary, tail, Agent, AgentOptions, ControlPlane, CpOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use testkit::try_eventually_blocking;

/// Run `sandbox-agent enroll` with `args` in a fresh agent directory.
fn enroll_in(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[sandbox]\nexecutor_path = \"{}\"\n",
            dir.join("data").display(),
            dir.join("no-executor").display()
        ),
    )
    .unwrap();
    Command::new(binary("sandbox-agent").unwrap())
        .arg("--config")
        .arg(&config)
        .arg("enroll")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn token_json(cp: &ControlPlane, env: &str, ttl: u64) -> Value {
    let out = cp
        .cli(&[
            "tokens",
            "create",
            "--environment",
            env,
            "--ttl-seconds",
            &ttl.to_string(),
            "--json",
        ])
        .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn refusals(cp: &ControlPlane) -> Vec<String> {
    cp.log()
        .lines()
        .filter(|l| l.contains("enrollment refused"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn enroll_with_separate_flags_stores_a_private_identity() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let fp = cp.cli(&["ca", "fingerprint"]).unwrap().trim().to_owned();
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
    try_eventually_blocking(
        "fingerprint printed on start",
        Duration::from_secs(10),
        || {
            cp.log()
                .contains(&format!("ca_fingerprint={fp}"))
                .then_some(())
        },
    )
    .unwrap();
    let tok = token_json(&cp, "env-flags", 600);
    assert_eq!(tok["ca_fingerprint"], fp.as_str());
    assert_eq!(tok["environment_id"], "env-flags");
    assert!(tok["token"].as_str().unwrap().starts_with("ajt_"));

    let agent_dir = tempfile::tempdir().unwrap();
    let out = enroll_in(
        agent_dir.path(),
        &[
            "--token",
            tok["token"].as_str().unwrap(),
            "--enroll-address",
            &cp.enroll_addr().to_string(),
            "--ca-fingerprint",
            &fp,
            "--tunnel-address",
            &cp.tunnel_addr().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let agent_id = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("agent_id=").map(str::to_owned))
        .unwrap();
    assert!(stdout(&out).contains("environment_id=env-flags"));

    // Files: key + chain private, directory private, CA and record present.
    let id_dir = agent_dir.path().join("data/identity");
    assert_eq!(mode(&id_dir), 0o700);
    assert_eq!(mode(&id_dir.join("agent.pem")), 0o600);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(id_dir.join("identity.json")).unwrap())
            .unwrap();
    assert_eq!(record["agent_id"], agent_id.as_str());
    assert_eq!(record["ca_fingerprint"], fp.as_str());
    assert_eq!(
        record["tunnel_address"],
        cp.tunnel_addr().to_string().as_str()
    );

    // The private key never left the host: its bytes are nowhere in the control plane's files.
    let pem = std::fs::read_to_string(id_dir.join("agent.pem")).unwrap();
    let key_body: String = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .and_then(|r| r.split("-----END PRIVATE KEY-----").next())
        .unwrap()
        .lines()
        .collect();
    // PKCS#8 P-256 keys share a ~48-character header; the secret scalar follows it.
    assert!(key_body.len() > 100);
    let secret = &key_body[50..90];
    for entry in walk(&cp.dir().join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains(secret),
            "agent key material found in {}",
            entry.display()
        );
    }

    // The control plane knows the agent; the admin socket is private.
    let listed: Value =
        serde_json::from_str(&cp.cli(&["agents", "list", "--enrolled", "--json"]).unwrap())
            .unwrap();
    assert_eq!(listed[0]["agent_id"], agent_id.as_str());
    assert_eq!(listed[0]["environment_id"], "env-flags");
    assert!(listed[0]["revoked_at"].is_null());
    assert_eq!(mode(&cp.admin_socket()), 0o600);
    let table = cp.cli(&["agents", "list"]).unwrap();
    assert!(table.starts_with("AGENT"), "{table}");
    let log = cp.log();
    assert_eq!(
        log.matches("agent enrolled").count(),
        1,
        "{}",
        tail(&log, 20)
    );
    assert!(log.lines().any(|l| l.contains("agent enrolled")
        && l.contains(&agent_id)
        && l.contains("remote_addr=127.0.0.1")));
    assert!(
        !log.contains(tok["token"].as_str().unwrap()),
        "token plaintext in the server log"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_tokens_and_wrong_pins_are_refused_and_the_server_keeps_serving() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-bad").unwrap();

    // First use works.
    let a = tempfile::tempdir().unwrap();
    let out = enroll_in(a.path(), &["--join", &join]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Enrolling the same host again without --force is refused locally.
    let out = enroll_in(a.path(), &["--join", &join]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already enrolled"),
        "{}",
        stderr(&out)
    );

    // Reused token.
    let b = tempfile::tempdir().unwrap();
    let out = enroll_in(b.path(), &["--join", &join]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token_used"), "{}", stderr(&out));
    assert!(
        !b.path().join("data/identity/agent.pem").exists(),
        "nothing stored on refusal"
    );

    // Unknown token (well-formed, never issued).
    let fp = cp.cli(&["ca", "fingerprint"]).unwrap().trim().to_owned();
    let unknown = pki::JoinToken::generate();
    let c = tempfile::tempdir().unwrap();
    let out = enroll_in(
        c.path(),
        &[
            "--token",
            unknown.expose(),
            "--enroll-address",
            &cp.enroll_addr().to_string(),
            "--ca-fingerprint",
            &fp,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token_unknown"), "{}", stderr(&out));

    // Expired token: a one-second TTL, used once the second has passed.
    let short = token_json(&cp, "env-bad", 1);
    let made = Instant::now();
    try_eventually_blocking("token expiry", Duration::from_secs(5), || {
        (made.elapsed() > Duration::from_millis(2500)).then_some(())
    })
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = enroll_in(
        d.path(),
        &["--join", short["join_string"].as_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token_expired"), "{}", stderr(&out));

    // Wrong CA pin: the agent refuses the server before sending the token.
    let fresh = token_json(&cp, "env-bad", 600);
    let (other_ca, _) = pki::CertificateAuthority::generate().unwrap();
    let e = tempfile::tempdir().unwrap();
    let out = enroll_in(
        e.path(),
        &[
            "--token",
            fresh["token"].as_str().unwrap(),
            "--enroll-address",
            &cp.enroll_addr().to_string(),
            "--ca-fingerprint",
            &other_ca.fingerprint().to_string(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pinned fingerprint"),
        "{}",
        stderr(&out)
    );

    // Each server-side refusal was logged once, with the peer address and the reason.
    let refused = refusals(&cp);
    assert_eq!(refused.len(), 3, "{refused:#?}");
    for (line, why) in refused.iter().zip(["already used", "unknown", "expired"]) {
        assert!(line.contains("remote_addr=127.0.0.1:"), "{line}");
        assert!(line.contains(why), "{line} should say {why}");
    }

    // The token the wrong-pin attempt never sent still works: the server is fine.
    let f = tempfile::tempdir().unwrap();
    let out = enroll_in(
        f.path(),
        &["--join", fresh["join_string"].as_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// One raw HTTPS request to the enrollment listener (pinned TLS, new connection).
async fn raw_request(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    body: Vec<u8>,
    content_length: bool,
) -> (u16, Value) {
    let fp: pki::Fingerprint = cp
        .cli(&["ca", "fingerprint"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let verifier = Arc::new(pki::tls::PinnedCaVerifier::new(fp));
    let tcp = tokio::net::TcpStream::connect(cp.enroll_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config().unwrap()))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if !content_length {
        req = req.header("transfer-encoding", "chunked");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// One malformed enrollment request: (what, method, path, body, whether a
/// Content-Length is sent, the expected status, the expected error type).
type BadRequestCase = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    bool,
    u16,
    &'static str,
);
#[tokio::test]
async fn malformed_requests_get_typed_errors() {
    let cp = tokio::task::spawn_blocking(|| ControlPlane::spawn(CpOptions::default()).unwrap())
        .await
        .unwrap();
    let tok = token_json(&cp, "env-raw", 600);
    let token = tok["token"].as_str().unwrap().to_owned();
    let body = |csr: &str| {
        serde_json::to_vec(&serde_json::json!({"token": token, "csr_pem": csr})).unwrap()
    };

    let cases: Vec<BadRequestCase> = vec![
        (
            "malformed csr",
            "POST",
            "/v1/enroll",
            body("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
            true,
            400,
            "invalid_csr",
        ),
        (
            "rsa csr",
            "POST",
            "/v1/enroll",
            body(include_str!("../../pki/tests/fixtures/csr-rsa2048.pem")),
            true,
            400,
            "unsupported_key",
        ),
        (
            "p521 csr",
            "POST",
            "/v1/enroll",
            body(include_str!("../../pki/tests/fixtures/csr-p521.pem")),
            true,
            400,
            "unsupported_key",
        ),
        (
            "oversized, declared",
            "POST",
            "/v1/enroll",
            vec![b' '; 200 * 1024],
            true,
            413,
            "payload_too_large",
        ),
        (
            "oversized, chunked",
            "POST",
            "/v1/enroll",
            vec![b' '; 200 * 1024],
            false,
            413,
            "payload_too_large",
        ),
        (
            "not json",
            "POST",
            "/v1/enroll",
            b"{nope".to_vec(),
            true,
            400,
            "bad_request",
        ),
        (
            "wrong method",
            "GET",
            "/v1/enroll",
            Vec::new(),
            true,
            405,
            "method_not_allowed",
        ),
        (
            "wrong path",
            "POST",
            "/v1/other",
            Vec::new(),
            true,
            404,
            "not_found",
        ),
        (
            "malformed token",
            "POST",
            "/v1/enroll",
            serde_json::to_vec(&serde_json::json!({"token": "x", "csr_pem": ""})).unwrap(),
            true,
            401,
            "token_malformed",
        ),
    ];
    let n = cases.len();
    for (name, method, path, body, cl, status, kind) in cases {
        let (got, v) = raw_request(&cp, method, path, body, cl).await;
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"]["type"], kind, "{name}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {v}"
        );
    }
    let refused = refusals(&cp);
    assert_eq!(
        refused.len(),
        n,
        "one log line per refused request: {refused:#?}"
    );

    // None of that burned the token or disturbed the server.
    let dir = tempfile::tempdir().unwrap();
    let join = tok["join_string"].as_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || enroll_in(dir.path(), &["--join", &join]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::task::spawn_blocking(move || drop(cp)).await.unwrap();
}

#[test]
fn offline_revocation_takes_effect_when_the_control_plane_starts() {
    let mut cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-offline").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let id = agent.agent_id().to_owned();

    // Graceful stop: exit, log, socket removed.
    cp.terminate().unwrap();
    assert!(
        cp.log().contains("shutdown complete: graceful"),
        "{}",
        tail(&cp.log(), 20)
    );
    assert!(!cp.admin_socket().exists(), "admin socket left behind");

    // With the server down the CLI records the revocation in the database.
    let out = cp.cli(&["agents", "revoke", &id]).unwrap();
    assert!(out.contains("not running"), "{out}");
    let listed: Value =
        serde_json::from_str(&cp.cli(&["agents", "list", "--enrolled", "--json"]).unwrap())
            .unwrap();
    assert!(listed[0]["revoked_at"].is_number(), "{listed}");
    // A typo is an error, not a silent success.
    assert!(cp.cli(&["agents", "revoke", "agt_doesnotexist"]).is_err());

    cp.start().unwrap();
    agent.run().unwrap();
    try_eventually_blocking(
        "the revoked agent's dial refused",
        Duration::from_secs(20),
        || {
            cp.log()
                .lines()
                .any(|l| {
                    l.contains("client certificate rejected")
                        && l.contains(&id)
                        && l.contains("Revoked")
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 30)));
    assert!(cp.connections_of(&id).is_empty());
}
