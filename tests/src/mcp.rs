//! Real MCP servers for the MCP tests and bench: the Python servers of
//! `tests/mcp/servers.py`, written with the official `mcp` SDK (2.x, installed
//! by `scripts/setup.d/55-mcp.sh`) and served over Streamable HTTP by uvicorn
//! on a free loopback port, over HTTPS when given a [`TestCa`].
//!
//! * [`McpTestServer::tickets`]: static bearer token; tools `search` (echoes
//!   its arguments), `screenshot` (a PNG image), `slow` (sleeps `seconds`),
//!   `huge` (about `megabytes` MB of text, default 50), `fail` (`isError`).
//!   Besides `/mcp`, paths that answer like a broken server:
//!   `/garbage/mcp` (not JSON), `/html/mcp` (a web page), `/notrpc/mcp`
//!   (JSON, not JSON-RPC), `/status/<code>/mcp` (that status).
//! * [`McpTestServer::oauth`]: the SDK's OAuth 2.1 authorization server
//!   (`/token` with `grant_type=refresh_token`; clients `client-none`,
//!   `client-basic`, `client-post`; rotating refresh tokens; access tokens
//!   that live a few seconds) and the MCP server `oauth-notes` at `/mcp`
//!   protected by its access tokens (401 + `WWW-Authenticate` when expired
//!   or invalid). `GET /stats` counts refresh requests.
//! * [`McpTestServer::time`]: the reference server `mcp-server-time` (PyPI)
//!   over Streamable HTTP behind a static-bearer front.
//!
//! Every server logs each `tools/call` it receives, before the tool runs,
//! to a file read by [`McpTestServer::calls`]. Secrets reach the servers
//! through the environment, never their command line. Killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub use crate::git_server::TestCa;

/// Which server of `tests/mcp/servers.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpKind {
    /// `tickets`: static bearer token.
    Tickets,
    /// The OAuth authorization server and `oauth-notes`.
    OAuth,
    /// `mcp-server-time` behind a static-bearer front.
    Time,
}

impl McpKind {
    fn arg(self) -> &'static str {
        match self {
            McpKind::Tickets => "tickets",
            McpKind::OAuth => "oauth",
            McpKind::Time => "time",
        }
    }
}

/// An OAuth client registered at the test authorization server, one per
/// token-endpoint client authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthClient {
    /// `client-none`: a public client (`token_endpoint_auth: none`).
    None,
    /// `client-basic`: `client_secret_basic`.
    Basic,
    /// `client-post`: `client_secret_post`.
    Post,
}

impl OAuthClient {
    /// Its `client_id`.
    pub fn client_id(self) -> &'static str {
        match self {
            OAuthClient::None => "client-none",
            OAuthClient::Basic => "client-basic",
            OAuthClient::Post => "client-post",
        }
    }

    /// Its `token_endpoint_auth` type in an `mcp_oauth` credential.
    pub fn auth_method(self) -> &'static str {
        match self {
            OAuthClient::None => "none",
            OAuthClient::Basic => "client_secret_basic",
            OAuthClient::Post => "client_secret_post",
        }
    }
}

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct McpServerOptions {
    /// Which server.
    pub kind: McpKind,
    /// The host name in the URLs (and the certificate, with TLS);
    /// `127.0.0.1` by default, which needs no resolver.
    pub hostname: String,
    /// Access-token lifetime of the OAuth server, in seconds.
    pub access_ttl_seconds: f64,
    /// How long the OAuth server's token endpoint takes to refresh.
    pub refresh_delay_seconds: f64,
}

impl McpServerOptions {
    /// Defaults for `kind`: `127.0.0.1`, 3 s access tokens, no refresh delay.
    pub fn new(kind: McpKind) -> Self {
        Self {
            kind,
            hostname: "127.0.0.1".into(),
            access_ttl_seconds: 3.0,
            refresh_delay_seconds: 0.0,
        }
    }
}

/// A `tools/call` a server received (one line of its call log).
#[derive(Debug, Clone, PartialEq)]
pub struct McpCallRecord {
    /// `tickets`, `oauth` or `time`.
    pub server: String,
    /// The HTTP path it came on (`/mcp`).
    pub path: String,
    /// The JSON-RPC id.
    pub rpc_id: Value,
    /// The tool name.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
    /// `params._meta`, if any.
    pub meta: Value,
}

/// Access and refresh token of a completed OAuth consent ([`McpTestServer::grant`]).
#[derive(Clone)]
pub struct TokenPair {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// An HTTP answer from [`McpTestServer::post_rpc`].
#[derive(Debug, Clone)]
pub struct RpcAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Mcp-Session-Id`, if the server set one.
    pub session_id: Option<String>,
    /// `WWW-Authenticate`, if any.
    pub www_authenticate: Option<String>,
    /// The raw body.
    pub body: String,
}

impl RpcAnswer {
    /// The JSON-RPC message of the body: JSON, or the last `data:` of an SSE
    /// stream.
    pub fn message(&self) -> Result<Value> {
        if let Ok(v) = serde_json::from_str(&self.body) {
            return Ok(v);
        }
        let data = self
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| !d.is_empty())
            .with_context(|| format!("no JSON and no SSE data in {:.300}", self.body))?;
        serde_json::from_str(data).with_context(|| format!("SSE data is not JSON: {data:.300}"))
    }
}

/// One running test MCP server (a `python3 tests/mcp/servers.py` child).
pub struct McpTestServer {
    kind: McpKind,
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
    scheme: &'static str,
    hostname: String,
    ca_file: Option<PathBuf>,
    token: String,
    admin_token: String,
    secret_basic: String,
    secret_post: String,
}

impl std::fmt::Debug for McpTestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTestServer")
            .field("kind", &self.kind)
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Path of `tests/mcp/servers.py`.
pub fn servers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/servers.py")
}

/// The Python interpreter (`AIRLOCK_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("AIRLOCK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the `mcp` SDK is importable (setup.d/55-mcp.sh ran).
pub fn sdk_installed() -> bool {
    Command::new(python())
        .args([
            "-c",
            "import mcp.server.mcpserver, mcp_server_time.server, uvicorn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl McpTestServer {
    /// `tickets` over HTTPS with a certificate from `ca` (plain HTTP without).
    pub fn tickets(ca: Option<&TestCa>) -> Result<Self> {
        Self::start(McpServerOptions::new(McpKind::Tickets), ca)
    }

    /// The OAuth authorization server + `oauth-notes`, access tokens living
    /// `access_ttl_seconds`.
    pub fn oauth(ca: Option<&TestCa>, access_ttl_seconds: f64) -> Result<Self> {
        let mut o = McpServerOptions::new(McpKind::OAuth);
        o.access_ttl_seconds = access_ttl_seconds;
        Self::start(o, ca)
    }

    /// `mcp-server-time` behind a static-bearer front.
    pub fn time(ca: Option<&TestCa>) -> Result<Self> {
        Self::start(McpServerOptions::new(McpKind::Time), ca)
    }

    /// Start a server; returns once it accepts TCP connections.
    pub fn start(opts: McpServerOptions, ca: Option<&TestCa>) -> Result<Self> {
        let script = servers_script();
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        if !sdk_installed() {
            bail!("the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh installs mcp==2.3.0 and mcp-server-time)");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("airlock-mcp-{}-", opts.kind.arg()))
            .tempdir()?;
        let d = dir.path();
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let token = random_secret("mcp-static-");
        let admin_token = random_secret("mcp-admin-");
        let secret_basic = random_secret("mcp-secret-basic-");
        let secret_post = random_secret("mcp-secret-post-");

        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .arg(opts.kind.arg())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--access-ttl", &opts.access_ttl_seconds.to_string()])
            .args(["--refresh-delay", &opts.refresh_delay_seconds.to_string()]);
        let (scheme, ca_file) = match ca {
            Some(ca) => {
                let (cert, key) = ca.issue(&[opts.hostname.as_str(), "localhost", "127.0.0.1"])?;
                std::fs::write(d.join("server.crt"), cert)?;
                std::fs::write(d.join("server.key"), key)?;
                let ca_path = d.join("ca.crt");
                ca.write_cert(&ca_path)?;
                cmd.arg("--tls-cert")
                    .arg(d.join("server.crt"))
                    .arg("--tls-key")
                    .arg(d.join("server.key"));
                ("https", Some(ca_path))
            }
            None => ("http", None),
        };
        cmd.arg("--public-url")
            .arg(format!("{scheme}://{}:{port}", opts.hostname))
            .env("MCP_TEST_TOKEN", &token)
            .env("MCP_TEST_ADMIN_TOKEN", &admin_token)
            .env("MCP_TEST_SECRET_BASIC", &secret_basic)
            .env("MCP_TEST_SECRET_POST", &secret_post)
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("server.log"))?)
            .stderr(std::fs::File::create(d.join("server.stderr"))?);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {} {}", python(), script.display()))?;
        let mut me = Self {
            kind: opts.kind,
            dir,
            child,
            addr,
            scheme,
            hostname: opts.hostname,
            ca_file,
            token,
            admin_token,
            secret_basic,
            secret_post,
        };
        let up = testkit::try_eventually_blocking(
            "MCP test server listening",
            Duration::from_secs(30),
            || {
                if let Ok(Some(_)) = me.child.try_wait() {
                    return Some(false);
                }
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| true)
            },
        )?;
        if !up {
            bail!(
                "MCP test server {} exited at start: {}",
                me.kind.arg(),
                me.log()
            );
        }
        Ok(me)
    }

    /// Which server this is.
    pub fn kind(&self) -> McpKind {
        self.kind
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://<hostname>:<port>`.
    pub fn base_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.hostname, self.addr.port())
    }

    /// The MCP endpoint, `<base>/mcp`.
    pub fn url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    /// `<base><path>` (e.g. `/garbage/mcp`, `/status/503/mcp`).
    pub fn url_at(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The CA certificate file a client trusts (with TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The static bearer token of `tickets` and `time`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The OAuth server's token endpoint, `<base>/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The client secret of `client` (`None` for the public client).
    pub fn client_secret(&self, client: OAuthClient) -> Option<&str> {
        match client {
            OAuthClient::None => None,
            OAuthClient::Basic => Some(&self.secret_basic),
            OAuthClient::Post => Some(&self.secret_post),
        }
    }

    /// Every secret value of this server (static token, admin token, client
    /// secrets), for canary checks.
    pub fn secrets(&self) -> Vec<String> {
        vec![
            self.token.clone(),
            self.admin_token.clone(),
            self.secret_basic.clone(),
            self.secret_post.clone(),
        ]
    }

    /// The server's stdout and stderr.
    pub fn log(&self) -> String {
        ["server.log", "server.stderr"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    fn json_lines(&self, name: &str) -> Result<Vec<Value>> {
        let path = self.state_file(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        // A line being appended may be incomplete; only whole lines count.
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l:.200}")))
            .collect()
    }

    /// Every `tools/call` the server received so far (logged before the tool
    /// ran), in order.
    pub fn calls(&self) -> Result<Vec<McpCallRecord>> {
        Ok(self
            .json_lines("calls.jsonl")?
            .into_iter()
            .map(|v| McpCallRecord {
                server: v["server"].as_str().unwrap_or_default().to_owned(),
                path: v["path"].as_str().unwrap_or_default().to_owned(),
                rpc_id: v["rpc_id"].clone(),
                tool: v["tool"].as_str().unwrap_or_default().to_owned(),
                arguments: v["arguments"].clone(),
                meta: v["meta"].clone(),
            })
            .collect())
    }

    /// How many `tools/call`s of `tool` carried exactly `arguments`.
    pub fn count_calls(&self, tool: &str, arguments: &Value) -> Result<usize> {
        Ok(self
            .calls()?
            .iter()
            .filter(|c| c.tool == tool && &c.arguments == arguments)
            .count())
    }

    /// Every HTTP request the server answered: `{method, path, rpc: [..],
    /// status, authorized}` (no header values).
    pub fn requests(&self) -> Result<Vec<Value>> {
        self.json_lines("requests.jsonl")
    }

    /// A curl command for this server: no proxy, the CA with TLS, and the
    /// config (headers holding secrets) on stdin, off the command line.
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--noproxy", "*", "--max-time", "120", "-K", "-"]);
        if let Some(ca) = &self.ca_file {
            c.arg("--cacert").arg(ca);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run_curl(&self, mut cmd: Command, config: &str) -> Result<(u16, String, String)> {
        // `-D` to a file: headers; `-w` the status on stdout after the body.
        let headers_file = tempfile::NamedTempFile::new_in(self.dir.path())?;
        cmd.arg("-D")
            .arg(headers_file.path())
            .args(["-w", "\n%{http_code}"]);
        let mut child = cmd.spawn().context("spawn curl")?;
        child
            .stdin
            .take()
            .context("curl stdin")?
            .write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "curl exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').context("curl printed no status")?;
        let status = code.trim().parse().context("curl status")?;
        let headers = std::fs::read_to_string(headers_file.path())?;
        Ok((status, body.to_owned(), headers))
    }

    /// POST one JSON-RPC message to `url` (this server's URL or one of its
    /// paths) as a Streamable HTTP client does, with `token` as bearer and
    /// `session_id` as `Mcp-Session-Id`.
    pub fn post_rpc(
        &self,
        url: &str,
        token: Option<&str>,
        session_id: Option<&str>,
        message: &Value,
    ) -> Result<RpcAnswer> {
        let mut config = String::new();
        config.push_str("header = \"Content-Type: application/json\"\n");
        config.push_str("header = \"Accept: application/json, text/event-stream\"\n");
        config.push_str("header = \"MCP-Protocol-Version: 2025-06-18\"\n");
        if let Some(t) = token {
            config.push_str(&format!("header = \"Authorization: Bearer {t}\"\n"));
        }
        if let Some(s) = session_id {
            config.push_str(&format!("header = \"Mcp-Session-Id: {s}\"\n"));
        }
        let mut cmd = self.curl();
        cmd.args(["-X", "POST", "--data-binary"])
            .arg(message.to_string())
            .arg(url);
        let (status, body, headers) = self.run_curl(cmd, &config)?;
        let header = |name: &str| {
            headers.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        Ok(RpcAnswer {
            status,
            session_id: header("mcp-session-id"),
            www_authenticate: header("www-authenticate"),
            body,
        })
    }

    /// `initialize` + `notifications/initialized` + `tools/list` against
    /// `url` with `token`: the names of the tools, or the first non-200
    /// answer as an error naming its status.
    pub fn list_tools_with(&self, url: &str, token: Option<&str>) -> Result<Vec<String>> {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "airlock-tests", "version": "1"}}});
        let a = self.post_rpc(url, token, None, &init)?;
        if a.status != 200 {
            bail!("initialize answered HTTP {}: {:.300}", a.status, a.body);
        }
        let session = a.session_id.clone();
        let _ = a.message()?["result"]["protocolVersion"]
            .as_str()
            .context("initialize result has no protocolVersion")?;
        let n = self.post_rpc(
            url,
            token,
            session.as_deref(),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )?;
        if !(200..300).contains(&n.status) {
            bail!("notifications/initialized answered HTTP {}", n.status);
        }
        let l = self.post_rpc(
            url,
            token,
            session.as_deref(),
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )?;
        if l.status != 200 {
            bail!("tools/list answered HTTP {}: {:.300}", l.status, l.body);
        }
        let msg = l.message()?;
        let tools = msg["result"]["tools"]
            .as_array()
            .with_context(|| format!("tools/list result has no tools: {msg}"))?;
        Ok(tools
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `initialize` then `tools/call` of `tool` with `arguments`: the
    /// JSON-RPC `result` (content, isError).
    pub fn call_tool_with(
        &self,
        url: &str,
        token: Option<&str>,
        tool: &str,
        arguments: &Value,
    ) -> Result<Value> {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "airlock-tests", "version": "1"}}});
        let a = self.post_rpc(url, token, None, &init)?;
        if a.status != 200 {
            bail!("initialize answered HTTP {}: {:.300}", a.status, a.body);
        }
        let session = a.session_id.clone();
        self.post_rpc(
            url,
            token,
            session.as_deref(),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )?;
        let c = self.post_rpc(
            url,
            token,
            session.as_deref(),
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments}}),
        )?;
        if c.status != 200 {
            bail!("tools/call answered HTTP {}: {:.300}", c.status, c.body);
        }
        let msg = c.message()?;
        msg.get("result")
            .cloned()
            .with_context(|| format!("tools/call has no result: {msg:.300}"))
    }

    fn admin(&self, path: &str, body: &Value) -> Result<Value> {
        if self.kind != McpKind::OAuth {
            bail!(
                "{path} is an OAuth-server endpoint; this is {:?}",
                self.kind
            );
        }
        let config = format!(
            "header = \"Content-Type: application/json\"\nheader = \"X-Admin-Token: {}\"\n",
            self.admin_token
        );
        let mut cmd = self.curl();
        cmd.args(["-X", "POST", "--data-binary"])
            .arg(body.to_string())
            .arg(self.url_at(path));
        let (status, body, _) = self.run_curl(cmd, &config)?;
        if status != 200 {
            bail!("{path} answered HTTP {status}: {body:.300}");
        }
        serde_json::from_str(&body).with_context(|| format!("{path}: not JSON: {body:.300}"))
    }

    /// A completed consent at the OAuth server: a fresh access + refresh
    /// token pair of `client` (scope: `notes.read notes.write` when `None`).
    pub fn grant(
        &self,
        client: OAuthClient,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenPair> {
        let v = self.admin(
            "/admin/grant",
            &json!({"client_id": client.client_id(), "scope": scope, "resource": resource}),
        )?;
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("grant answer has no {k}"))
        };
        Ok(TokenPair {
            access_token: s("access_token")?,
            refresh_token: s("refresh_token")?,
            expires_in: v["expires_in"].as_u64().unwrap_or_default(),
            scope: s("scope")?,
        })
    }

    /// Expire every access token now (the next MCP request gets a 401).
    pub fn expire_access_tokens(&self) -> Result<()> {
        self.admin("/admin/expire", &json!({})).map(|_| ())
    }

    /// Forget every refresh token (the next refresh fails, `invalid_grant`).
    pub fn revoke_refresh_tokens(&self) -> Result<()> {
        self.admin("/admin/revoke_refresh", &json!({})).map(|_| ())
    }

    /// Access-token lifetime and token-endpoint delay from now on.
    pub fn configure_oauth(
        &self,
        access_ttl_seconds: f64,
        refresh_delay_seconds: f64,
    ) -> Result<()> {
        self.admin(
            "/admin/config",
            &json!({"access_ttl": access_ttl_seconds, "refresh_delay": refresh_delay_seconds}),
        )
        .map(|_| ())
    }

    /// The OAuth server's `GET /stats`: `refresh_requests`,
    /// `refresh_succeeded`, `refresh_failed`, `max_concurrent_refreshes`,
    /// `refreshes: [{client_id, auth, scope, resource, status}]`.
    pub fn stats(&self) -> Result<Value> {
        if self.kind != McpKind::OAuth {
            bail!(
                "/stats is an OAuth-server endpoint; this is {:?}",
                self.kind
            );
        }
        let mut cmd = self.curl();
        cmd.arg(self.url_at("/stats"));
        let (status, body, _) = self.run_curl(cmd, "")?;
        if status != 200 {
            bail!("/stats answered HTTP {status}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// How many `grant_type=refresh_token` requests reached the token
    /// endpoint (successful or not).
    pub fn refresh_count(&self) -> Result<u64> {
        self.stats()?["refresh_requests"]
            .as_u64()
            .context("stats without refresh_requests")
    }

    /// Stop the server now (SIGKILL): a server that went down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for McpTestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
