//! The OpenBao backend against a real OpenBao dev server: round trips with
//! token and AppRole auth, token renewal past the token's max TTL, and the
//! failures a bridge meets (server restarted, sealed, killed, silent): each a
//! clear error naming the credential and the cause, within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{bao_bin, json, private_file, Bao};
use vault_bridge::backend::openbao::OpenbaoBackend;
use vault_bridge::backend::{BackendError, SecretBackend, SecretSource};
use vault_bridge::config::{OpenbaoAuth, OpenbaoConfig};
use vault_bridge::secret::{ExposeSecret, Secret, SecretKey, SecretString};

const TIMEOUT: Duration = Duration::from_secs(2);
/// What a loaded machine may add to a bounded call (these checks are "no hang", not timings).
const SLACK: Duration = Duration::from_secs(3);

fn config(bao: &Bao, auth: OpenbaoAuth) -> OpenbaoConfig {
    OpenbaoConfig {
        address: bao.address(),
        ca_file: None,
        namespace: None,
        mount: "secret".into(),
        path_prefix: "airlock".into(),
        auth,
        request_timeout: TIMEOUT,
    }
}

fn root_auth(bao: &Bao) -> OpenbaoAuth {
    let p = private_file(bao.dir.path(), "token", &format!("{}\n", bao.root_token));
    OpenbaoAuth::Token(SecretSource::File(p))
}

fn secret(token: &str) -> Secret {
    let mut s = Secret::new();
    s.insert("token", SecretString::from(token)).unwrap();
    s
}

fn key(c: &str) -> SecretKey {
    SecretKey::new("vlt_01", c).unwrap()
}

#[tokio::test]
async fn round_trip_with_a_token() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    let b = OpenbaoBackend::open(&config(&bao, root_auth(&bao)))
        .await
        .unwrap();
    b.health().await.unwrap();

    let e = b.get(&key("vcrd_a")).await.unwrap_err();
    assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("vcrd_a"), "{e}");

    let mut s = secret("canary-tok-1");
    s.insert("refresh_token", SecretString::from("canary-ref-1"))
        .unwrap();
    b.put(&key("vcrd_a"), &s).await.unwrap();
    b.put(&key("vcrd_b"), &secret("canary-tok-2"))
        .await
        .unwrap();
    let got = b.get(&key("vcrd_a")).await.unwrap();
    assert_eq!(got.get("token").unwrap().expose_secret(), "canary-tok-1");
    assert_eq!(
        got.get("refresh_token").unwrap().expose_secret(),
        "canary-ref-1"
    );

    // Where it lives, as the operator sees it.
    let (code, body) = bao.root("GET", "/v1/secret/data/airlock/vlt_01/vcrd_a", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["data"]["data"]["token"], "canary-tok-1");

    let mut listed = b.list().await.unwrap();
    listed.sort();
    let listed: Vec<_> = listed
        .iter()
        .map(|(k, f)| format!("{} {} {}", k.vault_id(), k.credential_id(), f.join(",")))
        .collect();
    assert_eq!(
        listed,
        vec!["vlt_01 vcrd_a refresh_token,token", "vlt_01 vcrd_b token"]
    );

    b.delete(&key("vcrd_a")).await.unwrap();
    let e = b.get(&key("vcrd_a")).await.unwrap_err();
    assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
    let e = b.delete(&key("vcrd_a")).await.unwrap_err();
    assert!(matches!(e, BackendError::NotFound { .. }), "{e}");

    // A credential whose metadata names an existing KV path.
    let (code, body) = bao.root(
        "POST",
        "/v1/secret/data/team/gitea",
        Some(r#"{"data":{"token":"canary-kv-path","note":"not a secret field"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let k = key("vcrd_c").with_kv_path("team/gitea").unwrap();
    let got = b.get(&k).await.unwrap();
    assert_eq!(got.get("token").unwrap().expose_secret(), "canary-kv-path");
    assert_eq!(got.field_names().collect::<Vec<_>>(), vec!["token"]);
    b.close().await;
}

#[tokio::test]
async fn approle_login_and_renewal_past_the_max_ttl() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    // Tokens live 2 s and can be renewed up to 4 s: the bridge must renew,
    // then log in again.
    let (role_id, secret_id) = bao.approle("2s", "4s");
    let sid = private_file(bao.dir.path(), "secret-id", &secret_id);
    let auth = OpenbaoAuth::Approle {
        mount: "approle".into(),
        role_id,
        secret_id: SecretSource::File(sid),
    };
    let b = OpenbaoBackend::open(&config(&bao, auth)).await.unwrap();
    b.put(&key("vcrd_a"), &secret("canary-approle"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let got = b
            .get(&key("vcrd_a"))
            .await
            .unwrap_or_else(|e| panic!("read after {:?} failed: {e}", started.elapsed()));
        assert_eq!(got.get("token").unwrap().expose_secret(), "canary-approle");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reads > 10);
    b.health().await.unwrap();

    // The policy does not reach outside secret/airlock/.
    let outside = key("vcrd_x").with_kv_path("other/place").unwrap();
    let e = b.put(&outside, &secret("x")).await.unwrap_err();
    assert!(matches!(e, BackendError::PermissionDenied { .. }), "{e}");
    assert!(e.to_string().contains("vcrd_x"), "{e}");
}

#[tokio::test]
async fn a_renewable_token_is_renewed() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    let (code, body) = bao.root(
        "POST",
        "/v1/auth/token/create",
        Some(r#"{"ttl":"2s","renewable":true,"policies":["root"]}"#),
    );
    assert_eq!(code, 200, "{body}");
    let token = json(&body)["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = private_file(bao.dir.path(), "short-token", &token);
    let b = OpenbaoBackend::open(&config(&bao, OpenbaoAuth::Token(SecretSource::File(p))))
        .await
        .unwrap();
    b.put(&key("vcrd_a"), &secret("v")).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        b.get(&key("vcrd_a"))
            .await
            .unwrap_or_else(|e| panic!("read after {:?} failed: {e}", started.elapsed()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn restarted_sealed_and_killed_servers_fail_clearly_and_fast() {
    let Some(bin) = bao_bin() else { return };
    let mut bao = Bao::start(&bin);
    let b = OpenbaoBackend::open(&config(&bao, root_auth(&bao)))
        .await
        .unwrap();
    b.put(&key("vcrd_a"), &secret("canary-restart"))
        .await
        .unwrap();

    // Restarted: a dev server forgets everything; the read fails as not found.
    bao.restart();
    let started = Instant::now();
    let e = b.get(&key("vcrd_a")).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT + SLACK);
    assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("vcrd_a") && msg.contains("vlt_01"), "{msg}");
    assert!(!msg.contains("canary"), "{msg}");

    // Sealed.
    b.put(&key("vcrd_a"), &secret("canary-sealed"))
        .await
        .unwrap();
    bao.seal();
    let started = Instant::now();
    let e = b.get(&key("vcrd_a")).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT + SLACK);
    assert!(matches!(e, BackendError::Sealed { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("vcrd_a") && msg.contains("sealed"), "{msg}");
    let e = b.health().await.unwrap_err();
    assert!(matches!(e, BackendError::Sealed { .. }), "{e}");
    assert!(e.is_transient());
    let e = b.put(&key("vcrd_b"), &secret("x")).await.unwrap_err();
    assert!(matches!(e, BackendError::Sealed { .. }), "{e}");

    // Killed: unreachable, at once.
    bao.kill();
    let started = Instant::now();
    let e = b.get(&key("vcrd_a")).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT + SLACK);
    assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("vcrd_a") && msg.contains("unreachable"),
        "{msg}"
    );
    assert!(msg.contains(&bao.address()), "{msg}");
    let e = b.health().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_naming_the_call() {
    // Accepts connections and never replies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(4) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let dir = tempfile::tempdir().unwrap();
    let p = private_file(dir.path(), "token", "t");
    let c = OpenbaoConfig {
        address: format!("http://127.0.0.1:{port}"),
        ca_file: None,
        namespace: None,
        mount: "secret".into(),
        path_prefix: "airlock".into(),
        auth: OpenbaoAuth::Token(SecretSource::File(p)),
        request_timeout: Duration::from_millis(500),
    };
    let started = Instant::now();
    let e = OpenbaoBackend::open(&c).await.unwrap_err();
    assert!(
        started.elapsed() < c.request_timeout + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, BackendError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("did not answer within"), "{e}");
    drop(hold);
}

#[tokio::test]
async fn a_bad_token_or_a_loose_token_file_is_refused() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    let p = private_file(bao.dir.path(), "bad-token", "not-a-token");
    let e = OpenbaoBackend::open(&config(
        &bao,
        OpenbaoAuth::Token(SecretSource::File(p.clone())),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, BackendError::PermissionDenied { .. }), "{e}");
    use std::os::unix::fs::PermissionsExt;
    let loose = private_file(bao.dir.path(), "loose-token", &bao.root_token);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = OpenbaoBackend::open(&config(
        &bao,
        OpenbaoAuth::Token(SecretSource::File(loose.clone())),
    ))
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&loose.display().to_string()) && msg.contains("0644"),
        "{msg}"
    );
    assert!(!msg.contains(&bao.root_token), "{msg}");
}

#[tokio::test]
async fn https_with_the_configured_ca_and_refused_without_it() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start_tls(&bin);
    let with_ca = OpenbaoConfig {
        ca_file: Some(bao.ca_file()),
        ..config(&bao, root_auth(&bao))
    };
    assert!(with_ca.address.starts_with("https://"));
    // The listener is up before the dev server has unsealed: wait for a login.
    let b = testkit::eventually_async("an https login", Duration::from_secs(20), || async {
        OpenbaoBackend::open(&with_ca).await
    })
    .await;
    b.put(&key("vcrd_tls"), &secret("canary-tls"))
        .await
        .unwrap();
    let got = b.get(&key("vcrd_tls")).await.unwrap();
    assert_eq!(got.get("token").unwrap().expose_secret(), "canary-tls");
    b.health().await.unwrap();

    // Without the CA the server's certificate is not trusted.
    let without = config(&bao, root_auth(&bao));
    let e = OpenbaoBackend::open(&without).await.unwrap_err();
    assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn the_credentials_commands_work_against_openbao() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    let token = private_file(bao.dir.path(), "token", &bao.root_token);
    let config = bao.dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"{}\"\ntoken_file = \"{}\"\n",
            bao.address(),
            token.display()
        ),
    )
    .unwrap();
    let value = bao.dir.path().join("value");
    std::fs::write(&value, "canary-cli-bao\n").unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vault-bridge"))
            .env_remove("AIRLOCK_CONFIG")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!all.contains("canary-cli-bao"), "{all}");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            all,
        )
    };
    let (code, _, all) = run(&[
        "credentials",
        "set",
        "vcrd_cli",
        "--vault",
        "vlt_cli",
        "--from-file",
        value.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{all}");
    let (code, body) = bao.root("GET", "/v1/secret/data/airlock/vlt_cli/vcrd_cli", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["data"]["data"]["token"], "canary-cli-bao");
    let (code, out, all) = run(&["credentials", "list"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(out, "vlt_cli\tvcrd_cli\ttoken\n");
    let (code, _, all) = run(&["credentials", "delete", "vcrd_cli", "--vault", "vlt_cli"]);
    assert_eq!(code, Some(0), "{all}");
    let (code, _) = bao.root("GET", "/v1/secret/data/airlock/vlt_cli/vcrd_cli", None);
    assert_eq!(code, 404);
}

#[tokio::test]
async fn namespace_mount_and_prefix_are_honoured() {
    let Some(bin) = bao_bin() else { return };
    let bao = Bao::start(&bin);
    let (code, body) = bao.root("POST", "/v1/sys/namespaces/team-a", Some("{}"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = bao.root(
        "POST",
        "/v1/team-a/sys/mounts/kv",
        Some(r#"{"type":"kv","options":{"version":"2"}}"#),
    );
    assert_eq!(code, 204, "{body}");
    let c = OpenbaoConfig {
        namespace: Some("team-a".into()),
        mount: "kv".into(),
        path_prefix: "bridges/site-1".into(),
        ..config(&bao, root_auth(&bao))
    };
    let b = OpenbaoBackend::open(&c).await.unwrap();
    // A new KV v2 mount upgrades itself for a moment after it is enabled;
    // writes are refused until it is ready.
    testkit::eventually_async(
        "the new kv v2 mount accepting writes",
        Duration::from_secs(20),
        || async { b.put(&key("vcrd_ns"), &secret("canary-ns")).await },
    )
    .await;
    let got = b.get(&key("vcrd_ns")).await.unwrap();
    assert_eq!(got.get("token").unwrap().expose_secret(), "canary-ns");
    let (code, body) = bao.root(
        "GET",
        "/v1/team-a/kv/data/bridges/site-1/vlt_01/vcrd_ns",
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["data"]["data"]["token"], "canary-ns");
    // Nothing in the root namespace's default place.
    let (code, _) = bao.root("GET", "/v1/secret/data/airlock/vlt_01/vcrd_ns", None);
    assert_eq!(code, 404);
    let listed = b.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.credential_id(), "vcrd_ns");
}
