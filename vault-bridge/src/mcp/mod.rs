//! The bridge's MCP client: `tools/list`, `tools/call` and credential
//! validation against MCP servers on the customer's network, with the
//! session's vault credential as `Authorization: Bearer` and `mcp_oauth`
//! tokens refreshed here (see `docs/mcp.md`, "The bridge's MCP client").
//!
//! - Transport: Streamable HTTP through the official Rust SDK (`rmcp`), over
//!   the bridge's own reqwest client ([`http`]): upstream TLS verified with
//!   the bridge's trust roots, plain `http` only where [`PlainHttp`] allows,
//!   the current token put on every request, every request journaled.
//! - Credential: the first of the request's credentials whose binding is
//!   `static_bearer` / `mcp_oauth` with `mcp_server_url` equal to the server
//!   URL after [`normalize_server_url`]. No match: the request goes without
//!   `Authorization` (a server that wants one answers 401:
//!   `authentication_failed`).
//! - Sessions: one MCP session per (session, server URL, credential),
//!   reused; rmcp re-initializes transparently when the server says the
//!   session is gone (404); a broken session is dropped and made anew on the
//!   next request; idle ones are closed after [`McpConfig::session_idle`].
//! - Refresh ([`tokens`]): before expiry (within [`McpConfig::refresh_margin`])
//!   and once on a 401 (then the request is retried once); one refresh in
//!   flight per credential.
//! - Limits: each request under [`McpConfig::call_timeout`]; a result over
//!   [`MCP_RESULT_MAX_BYTES`] is `too_large` (the transport stops reading a
//!   body well before a 50 MB answer is buffered).

pub mod content;
pub mod failure;
pub mod http;
pub mod oauth;
pub mod target;
pub mod tokens;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::mcp::{
    normalize_server_url, McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpTool,
    MCP_RESULT_MAX_BYTES,
};
use protocol::relay::{CredentialBinding, EgressCredential};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};

use crate::egress::{AuditSink, TrustRoots};
use crate::lock;
use crate::relay::Relay;
use failure::Failure;
use http::{AuditContext, BearerClient, TokenSlot};
pub use target::PlainHttp;
use tokens::{refresh_settings, Access, TokenError, Tokens};

/// Default deadline of one MCP request (initialize and refresh included).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default: refresh an `mcp_oauth` token this long before it expires.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Default: close an MCP session unused this long.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(600);
/// The largest HTTP answer the transport reads (JSON body or SSE event): the
/// result cap with room for JSON-RPC framing and escaping.
const TRANSPORT_MAX_BYTES: usize = 2 * MCP_RESULT_MAX_BYTES + 64 * 1024;

/// Settings of the MCP client.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Deadline of one request.
    pub call_timeout: Duration,
    /// Deadline of a TCP connect + TLS handshake.
    pub connect_timeout: Duration,
    /// Roots upstream certificates are verified with (`[egress] upstream_ca_files`).
    pub trust_roots: TrustRoots,
    /// Where plain `http` is allowed.
    pub plain_http: PlainHttp,
    /// Refresh this long before expiry.
    pub refresh_margin: Duration,
    /// Close sessions idle this long.
    pub session_idle: Duration,
    /// Where the refreshed tokens' expiry is kept (the bridge's data dir).
    pub state_dir: Option<PathBuf>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            trust_roots: TrustRoots::Webpki,
            plain_http: PlainHttp::Loopback,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            session_idle: DEFAULT_SESSION_IDLE,
            state_dir: None,
        }
    }
}

/// Why the MCP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct McpClientError(#[from] http::HttpClientError);

/// Notes `notifications/tools/list_changed`: the session's next
/// `tools/call` reply says `tools_changed` until it lists again, so the
/// harness drops its cached list.
#[derive(Debug, Clone)]
struct Handler {
    server: String,
    changed: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.store(true, Ordering::SeqCst);
        tracing::info!(server = %self.server, "mcp server: tool list changed");
    }
}

type Service = RunningService<RoleClient, Handler>;

struct Live {
    service: Service,
    /// Set by the server's `tools/list_changed`, cleared by a `tools/list`.
    changed: Arc<AtomicBool>,
    token: Arc<TokenSlot>,
    stream_error: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct Slot {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    last_used: Mutex<Option<Instant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    session_id: String,
    url: String,
    credential_id: Option<String>,
}

/// The bridge's MCP client.
pub struct McpClient {
    config: McpConfig,
    http: reqwest::Client,
    tokens: Tokens,
    audit: Arc<dyn AuditSink>,
    sessions: Mutex<HashMap<SessionKey, Arc<Slot>>>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("config", &self.config)
            .field("sessions", &lock(&self.sessions).len())
            .finish()
    }
}

/// The request's target, checked.
struct Target {
    url: reqwest::Url,
    shown: String,
    credential: Option<EgressCredential>,
}

/// The credential for `url` among `credentials` (see the module doc).
pub fn select_credential<'a>(
    credentials: &'a [EgressCredential],
    url: &str,
) -> Option<&'a EgressCredential> {
    let want = normalize_server_url(url)?;
    credentials.iter().find(|c| match &c.binding {
        CredentialBinding::StaticBearer { mcp_server_url }
        | CredentialBinding::McpOauth { mcp_server_url, .. } => {
            normalize_server_url(mcp_server_url).as_deref() == Some(want.as_str())
        }
        _ => false,
    })
}

fn failed(code: McpFailure, message: impl Into<String>, credential_id: Option<String>) -> McpReply {
    McpReply {
        outcome: McpOutcome::Failed {
            failure: code,
            message: message.into(),
        },
        credential_id,
        replayed: false,
        tools_changed: false,
    }
}

fn token_failure(e: &TokenError) -> Failure {
    match e {
        TokenError::Unavailable(m) => Failure::new(McpFailure::SecretUnavailable, m.clone()),
        TokenError::Refresh { .. } => Failure::new(McpFailure::AuthenticationFailed, e.to_string()),
    }
}

impl McpClient {
    /// A client reading secrets through `relay` and journaling to `audit`.
    pub fn new(
        config: McpConfig,
        relay: Arc<Relay>,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self, McpClientError> {
        let http = http::build_client(&config.trust_roots, config.connect_timeout)?;
        let tokens = Tokens::new(
            relay,
            http.clone(),
            audit.clone(),
            config.state_dir.clone(),
            config.plain_http,
            config.refresh_margin,
        );
        Ok(Self {
            config,
            http,
            tokens,
            audit,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The credential tokens (validation uses them).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The settings.
    pub fn config(&self) -> &McpConfig {
        &self.config
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn target(&self, url: &str, credentials: &[EgressCredential]) -> Result<Target, Failure> {
        let parsed = target::check_url(url, self.config.plain_http)
            .map_err(|m| Failure::new(McpFailure::InvalidRequest, m))?;
        let shown = normalize_server_url(url).unwrap_or_else(|| url.to_owned());
        Ok(Target {
            url: parsed,
            shown,
            credential: select_credential(credentials, url).cloned(),
        })
    }

    /// `tools/list`, every page.
    pub async fn list_tools(&self, req: &McpListTools) -> McpReply {
        let t = match self.target(&req.server.url, &req.credentials) {
            Ok(t) => t,
            Err(f) => return failed(f.code, f.message, None),
        };
        let cred_id = t.credential.as_ref().map(|c| c.credential_id.clone());
        let r = self
            .run(&req.session_id, &t, |svc: Arc<Live>| async move {
                svc.changed.store(false, Ordering::SeqCst);
                svc.service.peer().list_all_tools().await
            })
            .await;
        let outcome = match r {
            Ok(tools) => McpOutcome::Tools {
                tools: tools
                    .into_iter()
                    .map(|tool| McpTool {
                        name: tool.name.to_string(),
                        description: tool.description.map(|d| d.to_string()),
                        input_schema: serde_json::Value::Object((*tool.input_schema).clone()),
                    })
                    .collect(),
            },
            Err(f) => McpOutcome::Failed {
                failure: f.code,
                message: f.message,
            },
        };
        tracing::info!(session_id = %req.session_id, server = %t.shown, credential_id = cred_id.as_deref().unwrap_or("-"), outcome = outcome_word(&outcome), "mcp tools/list");
        McpReply {
            outcome,
            credential_id: cred_id,
            replayed: false,
            tools_changed: false,
        }
    }

    /// `tools/call`.
    pub async fn call_tool(&self, req: &McpCallTool) -> McpReply {
        let t = match self.target(&req.server.url, &req.credentials) {
            Ok(t) => t,
            Err(f) => return failed(f.code, f.message, None),
        };
        let cred_id = t.credential.as_ref().map(|c| c.credential_id.clone());
        let arguments = match &req.arguments {
            serde_json::Value::Object(m) => Some(m.clone()),
            serde_json::Value::Null => None,
            _ => {
                return failed(
                    McpFailure::InvalidRequest,
                    format!("tool {}: arguments must be a JSON object", req.tool),
                    cred_id,
                )
            }
        };
        let started = Instant::now();
        let r = self
            .run(&req.session_id, &t, |svc: Arc<Live>| {
                let mut p = CallToolRequestParams::new(req.tool.clone());
                p.arguments = arguments.clone();
                async move {
                    let r = svc.service.peer().call_tool(p).await;
                    r.map(|x| (x, svc.changed.load(Ordering::SeqCst)))
                }
            })
            .await;
        let mut tools_changed = false;
        let outcome = match r {
            Ok((result, changed)) => {
                tools_changed = changed;
                let content = serde_json::to_value(&result.content)
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default();
                let blocks = content::blocks(&content, result.structured_content.as_ref());
                let size = serde_json::to_vec(&blocks)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if size > MCP_RESULT_MAX_BYTES {
                    McpOutcome::Failed {
                        failure: McpFailure::TooLarge,
                        message: format!(
                            "tool {} on {}: result of {size} bytes is over the {MCP_RESULT_MAX_BYTES}-byte cap",
                            req.tool, t.shown
                        ),
                    }
                } else {
                    McpOutcome::Called {
                        content: blocks,
                        is_error: result.is_error.unwrap_or(false),
                    }
                }
            }
            Err(f) => McpOutcome::Failed {
                failure: f.code,
                message: f.message,
            },
        };
        tracing::info!(
            session_id = %req.session_id, tool_use_id = %req.tool_use_id, server = %t.shown,
            tool = %req.tool, credential_id = cred_id.as_deref().unwrap_or("-"),
            outcome = outcome_word(&outcome), duration_ms = started.elapsed().as_millis() as u64,
            "mcp tools/call"
        );
        McpReply {
            outcome,
            credential_id: cred_id,
            replayed: false,
            tools_changed,
        }
    }

    /// Run `op` on the (session, server)'s MCP session under the deadline:
    /// token first (refreshed if it expires soon), session made if needed,
    /// once more after a refresh when the server answers 401/403.
    async fn run<T, F, Fut>(&self, session_id: &str, t: &Target, op: F) -> Result<T, Failure>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: std::future::Future<Output = Result<T, rmcp::service::ServiceError>>,
    {
        let work = async {
            let key = SessionKey {
                session_id: session_id.to_owned(),
                url: t.shown.clone(),
                credential_id: t.credential.as_ref().map(|c| c.credential_id.clone()),
            };
            let mut access = match &t.credential {
                Some(c) => {
                    let got = self.tokens.access(c).await;
                    let outcome = if got.is_ok() { "ok" } else { "unavailable" };
                    metrics::counter!("airlock_bridge_credential_uses_total", "kind" => "mcp", "outcome" => outcome)
                        .increment(1);
                    Some(got.map_err(|e| token_failure(&e))?)
                }
                None => None,
            };
            let mut refreshed = false;
            loop {
                let attempt = async {
                    let live = self.session(&key, session_id, t, access.as_ref()).await?;
                    live.token.set(access.as_ref().map(|a| a.token.clone()));
                    op(live.clone()).await.map_err(|e| {
                        let mut f = failure::from_service(&e, &t.shown);
                        if f.session_broken {
                            self.drop_session(&key);
                            if let Some(cause) = lock(&live.stream_error).take() {
                                f = failure::from_stream_error(&cause, &t.shown);
                            }
                        }
                        f
                    })
                };
                match attempt.await {
                    Err(f) if f.auth && !refreshed => {
                        let Some(c) = t
                            .credential
                            .as_ref()
                            .filter(|c| refresh_settings(c).is_some())
                        else {
                            return Err(f);
                        };
                        let seen = access.as_ref().map(|a| a.generation).unwrap_or(0);
                        tracing::info!(credential_id = %c.credential_id, server = %t.shown, "mcp server refused the token; refreshing once");
                        let (a, _) = self
                            .tokens
                            .refresh_after(c, seen)
                            .await
                            .map_err(|e| token_failure(&e))?;
                        access = Some(a);
                        refreshed = true;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.config.call_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                McpFailure::Timeout,
                format!(
                    "mcp server {} did not answer within {:?}",
                    t.shown, self.config.call_timeout
                ),
            )),
        }
    }

    fn drop_session(&self, key: &SessionKey) {
        lock(&self.sessions).remove(key);
    }

    /// The live session of `key`, initialized now if there is none.
    async fn session(
        &self,
        key: &SessionKey,
        session_id: &str,
        t: &Target,
        access: Option<&Access>,
    ) -> Result<Arc<Live>, Failure> {
        let slot = {
            let mut g = lock(&self.sessions);
            let idle = self.config.session_idle;
            g.retain(|_, s| lock(&s.last_used).is_none_or(|at| at.elapsed() < idle));
            g.entry(key.clone()).or_default().clone()
        };
        *lock(&slot.last_used) = Some(Instant::now());
        let mut live = slot.live.lock().await;
        if let Some(l) = live.as_ref() {
            if !l.service.is_transport_closed() {
                return Ok(l.clone());
            }
        }
        let token = Arc::new(TokenSlot::new(access.map(|a| a.token.clone())));
        let stream_error = Arc::new(Mutex::new(None));
        let client = BearerClient {
            stream_error: stream_error.clone(),
            inner: self.http.clone(),
            token: token.clone(),
            audit: AuditContext {
                sink: self.audit.clone(),
                session_id: session_id.to_owned(),
                credential_id: key.credential_id.clone(),
                vault_id: t.credential.as_ref().map(|c| c.vault_id.clone()),
                host: t.url.host_str().unwrap_or_default().to_owned(),
                path: t.url.path().to_owned(),
            },
        };
        let config = StreamableHttpClientTransportConfig::with_uri(t.url.as_str())
            .max_json_response_size(TRANSPORT_MAX_BYTES)
            .max_sse_event_size(TRANSPORT_MAX_BYTES)
            .reinit_on_expired_session(true);
        let transport = StreamableHttpClientTransport::with_client(client, config);
        let changed = Arc::new(AtomicBool::new(false));
        let handler = Handler {
            server: t.shown.clone(),
            changed: changed.clone(),
        };
        let service = handler
            .serve(transport)
            .await
            .map_err(|e| failure::from_initialize(&e, &t.shown))?;
        tracing::info!(session_id, server = %t.shown, "mcp session initialized");
        let l = Arc::new(Live {
            service,
            changed,
            token,
            stream_error,
        });
        *live = Some(l.clone());
        Ok(l)
    }
}

fn outcome_word(o: &McpOutcome) -> &str {
    match o {
        McpOutcome::Tools { .. } => "tools",
        McpOutcome::Called {
            is_error: false, ..
        } => "called",
        McpOutcome::Called { is_error: true, .. } => "called_is_error",
        McpOutcome::Failed { failure, .. } => failure.as_str(),
        _ => "other",
    }
}
