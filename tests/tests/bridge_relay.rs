//! The vault-bridge's relay, end to end against real processes: a real
//! `vault-bridge serve` (encrypted-file backend) and a real Git server
//! (git http-backend behind nginx over HTTPS, basic auth), spoken to over
//! the real agent channel (the frames the sandbox-agent sends). A session's
//! repository token is relayed with `put_session_token`; `open_egress`
//! names the repository with its resource id; host `git` goes through the
//! sandbox's egress socket (a loopback forwarder stands in for the
//! executor's) with no credential of its own:
//!
//! - clone and push of the named repository work (the bridge adds the token);
//! - a clone of another repository on the same host gets no token (401);
//! - `forget_session_token` stops the token at once (the next fetch fails);
//! - the token survives a SIGKILL + restart of the bridge (sealed store);
//! - an archived vault credential is refused from then on, restarts included;
//! - the token is in no file of the bridge's data dir and not in its log;
//! - an `environment_variable` credential relayed with `put_credential`
//!   comes back from `open_egress` as a placeholder, which the bridge swaps
//!   for the secret on the credential's host; archiving the credential stops
//!   the swap on the very next request (well within a second): the request
//!   is answered by the bridge and never reaches the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_tests::bridge::{forward_to_socket, Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::{git, run_ok, GitServer, StaticServer, TestCa};
use protocol::bridge::{EgressRepository, FromBridge, ToBridge};
use protocol::relay::{
    CredentialBinding, EgressCredential, ForgetCredential, ForgetReason, ForgetSessionToken,
    InjectionLocation, Networking, PutCredential, PutSessionToken, WireSecret,
};

const TOKEN: &str = "canary-relay-token-5f1e9a";
const USER: &str = vault_bridge::agent_channel_egress::GIT_TOKEN_USERNAME;

fn open_egress(git: &GitServer) -> ToBridge {
    ToBridge::OpenEgress {
        sandbox_id: "sbx_relay".into(),
        session_id: "sesn_relay".into(),
        allowed_hosts: vec![],
        repositories: vec![EgressRepository {
            url: git.localhost_url("app"),
            resource_id: Some("sesrsc_app".into()),
        }],
        credentials: vec![],
        egress_hosts: None,
    }
}

fn put_token() -> ToBridge {
    ToBridge::PutSessionToken(PutSessionToken {
        session_id: "sesn_relay".into(),
        resource_id: "sesrsc_app".into(),
        url: "https://localhost/app.git".into(),
        token: WireSecret::new(TOKEN),
    })
}

/// `git` through the proxy at `port`, trusting the bridge's egress CA, with
/// no credential of its own.
fn proxied_git(home: &Path, port: u16, ca: &Path) -> std::process::Command {
    let mut c = git(home);
    c.env("HTTPS_PROXY", format!("http://127.0.0.1:{port}"))
        .env("GIT_SSL_CAINFO", ca);
    c
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_repository_token_is_used_for_its_repository_only_and_stops_on_forget() {
    let ca = TestCa::new("relay-test-ca").unwrap();
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let server = GitServer::start(&ca, "localhost", USER, TOKEN).unwrap();
    server.create_random_repo("app", 2, 1024).unwrap();
    server.create_random_repo("other", 1, 1024).unwrap();
    let mut bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();
    let bridge_ca = bridge.ca_cert_path();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    assert_eq!(
        ch.call(&put_token()).await.unwrap(),
        FromBridge::Relayed { held: true }
    );
    let FromBridge::EgressOpened { socket_path, env } =
        ch.call(&open_egress(&server)).await.unwrap()
    else {
        panic!("open_egress failed: {}", bridge.log());
    };
    assert!(env.is_empty());
    let port = forward_to_socket(PathBuf::from(&socket_path)).await;

    // Clone, commit and push the named repository: no credential in git.
    let clone = work.path().join("app");
    let (h, c, url) = (home.clone(), clone.clone(), server.localhost_url("app"));
    let (ca2, url2) = (bridge_ca.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(proxied_git(&h, port, &ca2).arg("clone").arg(&url2).arg(&c)).unwrap();
        std::fs::write(c.join("CHANGE"), "from the sandbox\n").unwrap();
        run_ok(git(&h).arg("-C").arg(&c).args(["add", "CHANGE"])).unwrap();
        run_ok(
            git(&h)
                .arg("-C")
                .arg(&c)
                .args(["commit", "-q", "-m", "pushed through the bridge"]),
        )
        .unwrap();
        run_ok(
            proxied_git(&h, port, &ca2)
                .arg("-C")
                .arg(&c)
                .args(["push", "origin", "main"]),
        )
        .unwrap();
        let config = std::fs::read_to_string(c.join(".git/config")).unwrap();
        assert!(!config.contains(TOKEN), "{config}");
        assert!(
            config.contains(&url2),
            "remote stays the real url: {config}"
        );
    })
    .await
    .unwrap();
    assert!(
        server
            .log("app")
            .unwrap()
            .contains("pushed through the bridge"),
        "push not on the server: {}",
        server.log("app").unwrap()
    );

    // Another repository on the same (allowed) host: no token added.
    let other = work.path().join("other");
    let (h, o, u) = (home.clone(), other.clone(), server.localhost_url("other"));
    let ca2 = bridge_ca.clone();
    let out = tokio::task::spawn_blocking(move || {
        proxied_git(&h, port, &ca2)
            .arg("clone")
            .arg(&u)
            .arg(&o)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "clone of an unnamed repository worked"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401")
            || err.contains("Authentication failed")
            || err.contains("could not read Username"),
        "{err}"
    );

    // Forget the resource's token (not the whole session: that ends the
    // session, see bridge_session_end.rs): the very next fetch goes without it.
    let forgot = ch
        .call(&ToBridge::ForgetSessionToken(ForgetSessionToken {
            session_id: "sesn_relay".into(),
            resource_id: Some("sesrsc_app".into()),
        }))
        .await
        .unwrap();
    assert_eq!(forgot, FromBridge::Relayed { held: true });
    let started = Instant::now();
    let (h, c) = (home.clone(), clone.clone());
    let ca2 = bridge_ca.clone();
    let out = tokio::task::spawn_blocking(move || {
        proxied_git(&h, port, &ca2)
            .arg("-C")
            .arg(&c)
            .arg("fetch")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "fetch after forget worked");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a fetch without a token hung"
    );
    assert!(
        bridge
            .log()
            .contains("no token for this repository resource")
            || String::from_utf8_lossy(&out.stderr).contains("502"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Put it back, SIGKILL the bridge, restart: the sealed token is still
    // held; the re-opened egress serves the repository again.
    assert_eq!(
        ch.call(&put_token()).await.unwrap(),
        FromBridge::Relayed { held: true }
    );
    drop(ch);
    bridge.kill9().unwrap();
    bridge.restart().unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let FromBridge::EgressOpened { socket_path, .. } =
        ch.call(&open_egress(&server)).await.unwrap()
    else {
        panic!("open_egress after restart failed: {}", bridge.log());
    };
    let port = forward_to_socket(PathBuf::from(&socket_path)).await;
    let (h, c) = (home.clone(), clone.clone());
    let ca2 = bridge_ca.clone();
    tokio::task::spawn_blocking(move || {
        run_ok(proxied_git(&h, port, &ca2).arg("-C").arg(&c).arg("fetch")).unwrap();
    })
    .await
    .unwrap();

    // A relayed vault credential, then archived: refused, and a new put for
    // it is refused too.
    let put = PutCredential {
        vault_id: "vlt_relay".into(),
        credential_id: "vcrd_relay".into(),
        fields: [("token".to_owned(), WireSecret::new("canary-vault-cred-77"))].into(),
    };
    assert_eq!(
        ch.call(&ToBridge::PutCredential(put.clone()))
            .await
            .unwrap(),
        FromBridge::Relayed { held: true }
    );
    assert!(bridge.credentials_list().unwrap().contains("vcrd_relay"));
    let archived = ch
        .call(&ToBridge::ForgetCredential(ForgetCredential {
            vault_id: "vlt_relay".into(),
            credential_id: "vcrd_relay".into(),
            reason: ForgetReason::Archived,
        }))
        .await
        .unwrap();
    assert_eq!(archived, FromBridge::Relayed { held: true });
    assert!(!bridge.credentials_list().unwrap().contains("vcrd_relay"));
    assert!(matches!(
        ch.call(&ToBridge::PutCredential(put.clone()))
            .await
            .unwrap(),
        FromBridge::Error { .. }
    ));
    // The revocation survives a SIGKILL + restart.
    drop(ch);
    bridge.kill9().unwrap();
    bridge.restart().unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let refused = ch.call(&ToBridge::PutCredential(put)).await.unwrap();
    assert!(
        matches!(&refused, FromBridge::Error { message, .. } if message.contains("archived")),
        "{refused:?}"
    );

    // The secrets are nowhere in clear on the bridge's side.
    for needle in [TOKEN, "canary-vault-cred-77"] {
        let hits = files_containing(bridge.dir(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in {hits:?}");
        assert!(!bridge.log().contains(needle));
    }
}

/// curl through the proxy at `port`; prints the body then the status code.
fn proxied_curl(port: u16, ca: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "--max-time", "10", "--proxy"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--cacert")
        .arg(ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_environment_variable_credential_is_a_swapped_placeholder_until_archived() {
    const SECRET: &str = "canary-env-secret-3b7c";
    let ca = TestCa::new("relay-env-ca").unwrap();
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let api = StaticServer::start(&ca, "localhost", &[], "https://localhost/").unwrap();
    let port = api.addr().port();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();
    let bridge_ca = bridge.ca_cert_path();

    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let put = PutCredential {
        vault_id: "vlt_env".into(),
        credential_id: "vcrd_env".into(),
        fields: [("secret_value".to_owned(), WireSecret::new(SECRET))].into(),
    };
    assert_eq!(
        ch.call(&ToBridge::PutCredential(put)).await.unwrap(),
        FromBridge::Relayed { held: true }
    );
    let opened = ch
        .call(&ToBridge::OpenEgress {
            sandbox_id: "sbx_env".into(),
            session_id: "sesn_env".into(),
            allowed_hosts: vec![format!("localhost:{port}")],
            repositories: vec![],
            credentials: vec![EgressCredential {
                http_auth: Default::default(),
                vault_id: "vlt_env".into(),
                credential_id: "vcrd_env".into(),
                kv_path: None,
                binding: CredentialBinding::EnvironmentVariable {
                    secret_name: "API_KEY".into(),
                    networking: Networking::Limited {
                        allowed_hosts: vec!["localhost".into()],
                    },
                    injection_location: InjectionLocation {
                        header: true,
                        body: false,
                    },
                },
            }],
            egress_hosts: None,
        })
        .await
        .unwrap();
    let FromBridge::EgressOpened { socket_path, env } = opened else {
        panic!("open_egress failed: {opened:?} {}", bridge.log());
    };
    let placeholder = env
        .get("API_KEY")
        .expect("a placeholder for API_KEY")
        .clone();
    assert!(!placeholder.contains(SECRET), "{placeholder}");
    let proxy = forward_to_socket(PathBuf::from(&socket_path)).await;

    // The placeholder is swapped for the secret on the credential's host.
    let url = api.url("echo");
    let header = format!("x-api-key: {placeholder}");
    let (ca2, u, h) = (bridge_ca.clone(), url.clone(), header.clone());
    let o = tokio::task::spawn_blocking(move || proxied_curl(proxy, &ca2, &["-H", &h, &u]))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out, format!("x-api-key={SECRET}\n\n200"), "{o:?}");

    // Archived: the very next request is refused by the bridge, not sent.
    let archived = ch
        .call(&ToBridge::ForgetCredential(ForgetCredential {
            vault_id: "vlt_env".into(),
            credential_id: "vcrd_env".into(),
            reason: ForgetReason::Archived,
        }))
        .await
        .unwrap();
    assert_eq!(archived, FromBridge::Relayed { held: true });
    let sent_before = api.access_log().lines().count();
    let started = Instant::now();
    let ca2 = bridge_ca.clone();
    let o = tokio::task::spawn_blocking(move || proxied_curl(proxy, &ca2, &["-H", &header, &url]))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusal took {:?}",
        started.elapsed()
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.ends_with("\n502"), "{o:?}");
    assert!(
        out.contains("vcrd_env") && out.contains("archived"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    assert_eq!(
        api.access_log().lines().count(),
        sent_before,
        "the request reached the server: {}",
        api.access_log()
    );
    assert!(!bridge.log().contains(SECRET));
    assert!(files_containing(bridge.dir(), SECRET.as_bytes()).is_empty());
}
