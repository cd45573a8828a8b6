//! TLS on the public API, against a real `control-plane serve` over real
//! loopback sockets, with certificates from CAs the test makes (rcgen):
//!
//! - HTTPS works with the test CA; plain HTTP to the same port does not;
//! - an SSE stream opened before a certificate swap + `SIGHUP` keeps
//!   receiving events afterwards, while a new connection sees the new
//!   certificate; a bad certificate file on the next `SIGHUP` is logged
//!   (naming the file) and the previous certificate stays in use;
//! - the operator CLI talks to the HTTPS API with `--api-ca-file`;
//! - config errors: plain HTTP on a non-loopback `api.listen`, a key
//!   readable by others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use airlock_tests::deploy::{binary, tail, ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx};
use airlock_tests::git_server::TestCa;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

/// A minimal HTTPS client of the API: one connection per request (or per
/// stream), trusting exactly the given CAs, reporting the server's leaf.
struct Https {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    key: String,
}

fn client_config(cas: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl Https {
    /// A new TLS connection; the sender and the server's leaf certificate.
    async fn connect(
        &self,
    ) -> Result<(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        CertificateDer<'static>,
    )> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await
            .context("tls handshake")?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or_else(|| anyhow!("no server certificate"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok((sender, leaf))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> hyper::Request<Full<Bytes>> {
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap()
    }

    /// One request on a fresh connection: (status, JSON body, server leaf).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value, CertificateDer<'static>)> {
        let (mut sender, leaf) = self.connect().await?;
        let resp = sender
            .send_request(self.request(method, path, body.as_ref()))
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            leaf,
        ))
    }

    async fn post_ok(&self, path: &str, body: Value) -> Result<Value> {
        let (status, v, _) = self.call("POST", path, Some(body)).await?;
        if status != 200 {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }
}

/// Reads an SSE body until a text shows up.
struct Stream {
    body: Incoming,
    seen: String,
}

impl Stream {
    async fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.seen.contains(needle) {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{needle:?} not on the stream within {limit:?}; seen:\n{}",
                        tail(&self.seen, 20)
                    )
                })?;
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Some(Err(e)) => bail!("stream broke: {e}"),
                None => bail!("stream ended before {needle:?}"),
            }
        }
        Ok(())
    }
}

/// Write a certificate chain and its key (mode 0600) where the config points.
fn install(dir: &Path, cert_pem: &str, key_pem: &str) {
    // Written next to the target and renamed, as an operator's tooling would.
    let tmp_cert = dir.join("api.crt.new");
    let tmp_key = dir.join("api.key.new");
    std::fs::write(&tmp_cert, cert_pem).unwrap();
    std::fs::write(&tmp_key, key_pem).unwrap();
    std::fs::set_permissions(&tmp_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp_key, dir.join("api.key")).unwrap();
    std::fs::rename(&tmp_cert, dir.join("api.crt")).unwrap();
}

fn tls_toml(dir: &Path) -> String {
    format!(
        "\n[api.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("api.crt").display(),
        dir.join("api.key").display()
    )
}

fn sighup(cp: &ControlPlane) {
    let pid = cp.pid().expect("control plane running");
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

fn script(_req: &RequestCtx) -> Reply {
    Reply::text("noted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_sighup_reload_keeps_streams_and_survives_a_bad_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca_a = TestCa::new("Airlock API test CA A").unwrap();
    let ca_b = TestCa::new("Airlock API test CA B").unwrap();
    let (cert_a, key_a) = ca_a.issue(&["localhost", "127.0.0.1"]).unwrap();
    let (cert_b, key_b) = ca_b.issue(&["localhost", "127.0.0.1"]).unwrap();
    install(certs.path(), &cert_a, &key_a);
    let leaf = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();

    let model = FakeModel::builder().start(script).await.unwrap();
    let mut cp = ControlPlane::configure(CpOptions {
        extra_toml: format!(
            "\n[model]\nbase_url = \"{}\"\napi_key = \"test-key\"\n{}",
            model.base_url(),
            tls_toml(certs.path())
        ),
        ..CpOptions::default()
    })
    .unwrap();
    let created = cp
        .cli(&["api-keys", "create", "--name", "tls", "--json"])
        .unwrap();
    let key = serde_json::from_str::<Value>(created.trim()).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    cp.start().unwrap();
    // The listener accepts before the serving task logs: wait for the line.
    testkit::try_eventually_blocking("the HTTPS line logged", Duration::from_secs(10), || {
        cp.log().contains("public API serving HTTPS").then_some(())
    })
    .unwrap_or_else(|_| panic!("{}", tail(&cp.log(), 20)));

    // HTTPS with CA A; the certificate presented is A's leaf.
    let only_a = Https {
        addr: cp.api_addr(),
        tls: client_config(&[ca_a.cert_pem()]),
        key: key.clone(),
    };
    let (status, v, presented) = only_a
        .call("GET", "/v1/agents?limit=1", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(presented, leaf(&cert_a));
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = tokio::net::TcpStream::connect(cp.api_addr()).await?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        anyhow::Ok(
            s.send_request(only_a.request("GET", "/v1/agents", None))
                .await?,
        )
    })
    .await
    .unwrap();
    assert!(
        plain.is_err(),
        "plain HTTP answered on the HTTPS port: {plain:?}"
    );

    // A session and its stream, on a connection made before the reload.
    let agent = only_a
        .post_ok(
            "/v1/agents",
            json!({"name": "tls", "model": "claude-sonnet-4-5", "system": "test"}),
        )
        .await
        .unwrap();
    let env = only_a
        .post_ok(
            "/v1/environments",
            json!({"name": "tls-env", "config": {"type": "self_hosted"}}),
        )
        .await
        .unwrap();
    let session = only_a
        .post_ok(
            "/v1/sessions",
            json!({"agent": agent["id"], "environment_id": env["id"]}),
        )
        .await
        .unwrap();
    let session_id = session["id"].as_str().unwrap().to_owned();
    let (mut sender, stream_leaf) = only_a.connect().await.unwrap();
    assert_eq!(stream_leaf, leaf(&cert_a));
    let mut req = only_a.request(
        "GET",
        &format!("/v1/sessions/{session_id}/events/stream?after=0"),
        None,
    );
    req.headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = Stream {
        body: resp.into_body(),
        seen: String::new(),
    };
    let message = |text: &str| json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]});
    let events = format!("/v1/sessions/{session_id}/events");
    only_a
        .post_ok(&events, message("before-reload"))
        .await
        .unwrap();
    stream
        .wait_for("before-reload", Duration::from_secs(20))
        .await
        .unwrap();

    // Swap to B and SIGHUP: new connections get B, the open stream goes on.
    install(certs.path(), &cert_b, &key_b);
    sighup(&cp);
    let reloaded = "tls certificate reloaded";
    testkit::try_eventually_blocking("the reload to be logged", Duration::from_secs(10), || {
        count(&cp.log(), reloaded) == 1
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 20)));
    let both = Https {
        addr: cp.api_addr(),
        tls: client_config(&[ca_a.cert_pem(), ca_b.cert_pem()]),
        key: key.clone(),
    };
    let (status, _, presented) = both.call("GET", "/v1/agents?limit=1", None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        presented,
        leaf(&cert_b),
        "a new connection must see the new certificate"
    );
    // A new client trusting only A no longer connects (a fresh config: the
    // old one would resume its session from before the swap, which skips
    // the certificate, as TLS resumption does).
    let fresh_a = Https {
        addr: cp.api_addr(),
        tls: client_config(&[ca_a.cert_pem()]),
        key: key.clone(),
    };
    let refused = fresh_a.connect().await.err().map(|e| format!("{e:#}"));
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("UnknownIssuer")),
        "{refused:?}"
    );
    both.post_ok(&events, message("after-reload"))
        .await
        .unwrap();
    stream
        .wait_for("after-reload", Duration::from_secs(20))
        .await
        .unwrap();

    // A bad certificate file: the error names it, B stays.
    std::fs::write(
        certs.path().join("api.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    sighup(&cp);
    let failed = "tls certificate reload failed";
    testkit::try_eventually_blocking(
        "the failed reload to be logged",
        Duration::from_secs(10),
        || count(&cp.log(), failed) == 1,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 20)));
    let log = cp.log();
    let line = log.lines().find(|l| l.contains(failed)).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("api.tls.cert_file"), "{line}");
    assert!(
        line.contains(&certs.path().join("api.crt").display().to_string()),
        "{line}"
    );
    let (status, _, presented) = both.call("GET", "/v1/agents?limit=1", None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        presented,
        leaf(&cert_b),
        "the previous certificate must stay in use"
    );
    both.post_ok(&events, message("after-bad-reload"))
        .await
        .unwrap();
    stream
        .wait_for("after-bad-reload", Duration::from_secs(20))
        .await
        .unwrap();

    // The operator CLI over HTTPS (default URL https://<listen>), trusting B.
    let ca_file = certs.path().join("ca-b.pem");
    ca_b.write_cert(&ca_file).unwrap();
    let out = Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(cp.config_path())
        .args(["environments", "list", "--json"])
        .env("AIRLOCK_API_KEY", &key)
        .env("AIRLOCK_API_CA_FILE", &ca_file)
        .env_remove("AIRLOCK_API_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tls-env"),
        "environments list over HTTPS: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the CA the CLI refuses the unknown issuer.
    let out = Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(cp.config_path())
        .args(["environments", "list", "--json"])
        .env("AIRLOCK_API_KEY", &key)
        .env_remove("AIRLOCK_API_CA_FILE")
        .env_remove("AIRLOCK_API_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI trusted an unknown CA");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    drop(model);
}

/// `control-plane check-config` on a config with `extra` appended to `[api]`.
fn check_config(api_toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cp.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n\n[api]\n{api_toml}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn plain_http_off_loopback_is_a_config_error_unless_allowed() {
    let (ok, out) = check_config("listen = \"0.0.0.0:8080\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains("api.listen") && out.contains("[api.tls]"),
        "{out}"
    );
    let (ok, out) = check_config("listen = \"192.0.2.10:8080\"");
    assert!(!ok && out.contains("api.listen"), "{out}");
    let (ok, out) = check_config("listen = \"0.0.0.0:8080\"\nallow_plain_http = true");
    assert!(ok, "{out}");
    let (ok, out) = check_config("listen = \"127.0.0.1:8080\"");
    assert!(ok, "{out}");
    let (ok, out) =
        check_config("listen = \"0.0.0.0:8443\"\n[api.tls]\ncert_file = \"/etc/airlock/api.crt\"");
    assert!(!ok && out.contains("api.tls.key_file"), "{out}");
}

#[test]
fn a_key_readable_by_others_fails_start_up_naming_the_key() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Airlock API test CA").unwrap();
    let (cert, key) = ca.issue(&["localhost"]).unwrap();
    install(certs.path(), &cert, &key);
    std::fs::set_permissions(
        certs.path().join("api.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut cp = ControlPlane::configure(CpOptions {
        extra_toml: tls_toml(certs.path()),
        ..CpOptions::default()
    })
    .unwrap();
    let err = format!("{:#}", cp.start().unwrap_err());
    assert!(err.contains("api.tls.key_file"), "{err}");
    assert!(err.contains("chmod o-rwx"), "{err}");
}
