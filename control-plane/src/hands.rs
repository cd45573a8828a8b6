//! [`GatewayHands`]: the harness's [`Hands`] over the gateway. A sandbox
//! lives on one sandbox-agent of the session's environment; this module finds
//! it, makes it, and routes tool calls to the agent that holds it.
//!
//! Provisioning is idempotent per session, across restarts of this process:
//! before making a sandbox, `provision` asks the connected agents of the
//! environment for their sandboxes (`list_sandboxes`) and hands back the
//! session's live one if there is one. Only when none exists does it send
//! `provision` (with the session id, which the agent stores with the
//! sandbox). Which agent holds which sandbox is cached in memory; the cache
//! is only a shortcut (it is checked against the agent on every
//! `provision`, and rebuilt from `list_sandboxes` after a restart).
//!
//! `execute` is idempotent because the agent keys its execution record by
//! `tool_use_id`: a re-sent call is answered from the record. A call whose
//! outcome the agent reports as unknown, or a failed call after which the
//! agent no longer lists the sandbox as running (it died under the call),
//! drops the sandbox from the cache, so the next call provisions again
//! instead of hitting a dead sandbox.
//!
//! Errors follow the [`Hands`] contract, mapped in [`hands_error`] (the one
//! place): no agent connected, a broken tunnel or a busy engine is
//! [`HandsError::Unavailable`]; an unknown sandbox is
//! [`HandsError::SandboxGone`]; a policy refusal or a malformed request is
//! [`HandsError::Refused`]. A tool that failed is a [`ToolOutput`] with
//! `is_error`, never an error here. Streamed output is not forwarded: the
//! harness gets the final result.
//!
//! MCP calls (`list_mcp_tools`, `call_mcp_tool`) need no sandbox: they go to
//! one connected agent of the session's environment, which forwards them to
//! its vault-bridge, with the session's vault credentials (metadata only, as
//! at provision). The agent is chosen by rendezvous hashing of the session
//! id over the connected agents ([`mcp_agent`]), so every call of a session,
//! from any control-plane process and after a restart, reaches the same
//! agent while the set of connected agents is unchanged: that agent's
//! record of `tool_use_id`s is what keeps a re-sent call from running twice.
//! A failure at the bridge or the server is an [`McpFailure`] (the reply's
//! outcome); only a call that did not reach an agent is a [`HandsError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use harness::{
    Disposition, Hands, HandsError, McpAnswer, McpFailure, McpFailureKind, McpScope, McpServerRef,
    McpToolInfo, McpToolOutput, ProvisionSpec, SandboxRef, ToolCall, ToolOutput,
};
use protocol::mcp::{self as mcp_wire, McpCallTool, McpListTools, McpOutcome, McpReply};
use protocol::sandbox::{self as wire, ExecuteRequest, ProvisionRequest, SandboxInfo};
use protocol::{CallError, ErrorCode, Reply, Request, Response};

use crate::gateway::{AgentCallError, GatewayHandle, Target};

/// Cached placements above this many are forgotten at once (the cache is
/// rebuilt from the agents on demand, so forgetting is always safe).
const MAX_CACHED_SESSIONS: usize = 100_000;

/// Where a session's sandbox lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    agent_id: String,
    sandbox_id: String,
}

#[derive(Debug, Default)]
struct Placements {
    /// session id → its sandbox.
    by_session: HashMap<String, Placement>,
    /// sandbox id → (agent id, session id).
    by_sandbox: HashMap<String, (String, String)>,
}

impl Placements {
    fn insert(&mut self, session_id: &str, p: Placement) {
        if self.by_session.len() >= MAX_CACHED_SESSIONS {
            self.by_session.clear();
            self.by_sandbox.clear();
        }
        if let Some(old) = self.by_session.insert(session_id.to_owned(), p.clone()) {
            self.by_sandbox.remove(&old.sandbox_id);
        }
        self.by_sandbox
            .insert(p.sandbox_id, (p.agent_id, session_id.to_owned()));
    }

    fn forget_sandbox(&mut self, sandbox_id: &str) {
        if let Some((_, session_id)) = self.by_sandbox.remove(sandbox_id) {
            if self
                .by_session
                .get(&session_id)
                .is_some_and(|p| p.sandbox_id == sandbox_id)
            {
                self.by_session.remove(&session_id);
            }
        }
    }
}

/// Why a call to an agent did not produce the expected reply: the inputs of
/// [`hands_error`].
#[derive(Debug)]
enum Failure {
    /// The gateway could not reach an agent (none connected, tunnel failed).
    Gateway(AgentCallError),
    /// The agent answered with an RPC error.
    Call(CallError),
    /// The agent answered with a reply of another call (a peer bug).
    Unexpected(String),
}

/// Map a failed agent call to the harness's error. The only place that does.
fn hands_error(session_id: &str, sandbox_id: Option<&str>, failure: Failure) -> HandsError {
    let unavailable = |message: String| HandsError::Unavailable {
        session_id: session_id.to_owned(),
        message,
    };
    let refused = |message: String| HandsError::Refused {
        session_id: session_id.to_owned(),
        message,
    };
    match failure {
        Failure::Gateway(e) => unavailable(e.to_string()),
        Failure::Call(e) => match (&e.code, sandbox_id) {
            (ErrorCode::UnknownSandbox, Some(sandbox_id)) => HandsError::SandboxGone {
                sandbox_id: sandbox_id.to_owned(),
            },
            (ErrorCode::PolicyDenied, _) => refused(match &e.rule {
                Some(rule) => format!("refused by the agent's policy ({rule}): {}", e.message),
                None => format!("refused by the agent's policy: {}", e.message),
            }),
            (ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::UnsupportedCall, _) => {
                refused(format!(
                    "the agent refused the request ({}): {}",
                    e.code, e.message
                ))
            }
            // Transient (engine busy, draining) or a fault on the agent that
            // a later attempt may not hit; the harness bounds the retries.
            _ => unavailable(format!(
                "the agent could not serve the call ({}): {}",
                e.code, e.message
            )),
        },
        Failure::Unexpected(reply) => refused(format!(
            "the agent answered with an unexpected reply: {reply}"
        )),
    }
}

/// The harness's hands over the gateway. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct GatewayHands {
    gateway: GatewayHandle,
    placements: Mutex<Placements>,
    /// One provision at a time per session in this process.
    provisioning: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where the sessions' vaults and environments are (credentials and
    /// allowed hosts for the sandbox's egress); none: nothing is resolved.
    catalog: Option<Arc<dyn catalog::Catalog>>,
}

impl GatewayHands {
    /// Hands that call agents through `gateway`.
    pub fn new(gateway: GatewayHandle) -> Self {
        Self {
            gateway,
            placements: Mutex::new(Placements::default()),
            provisioning: Mutex::new(HashMap::new()),
            catalog: None,
        }
    }

    /// Resolve each session's `vault_ids` and its environment's allowed
    /// hosts from `catalog` when provisioning.
    pub fn with_catalog(mut self, catalog: Arc<dyn catalog::Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    fn cached(&self, session_id: &str) -> Option<Placement> {
        self.placements
            .lock()
            .ok()?
            .by_session
            .get(session_id)
            .cloned()
    }

    fn remember(&self, session_id: &str, p: Placement) {
        if let Ok(mut g) = self.placements.lock() {
            g.insert(session_id, p);
        }
    }

    fn forget(&self, sandbox_id: &str) {
        if let Ok(mut g) = self.placements.lock() {
            g.forget_sandbox(sandbox_id);
        }
    }

    /// (agent id, session id) of a cached sandbox.
    fn holder_of(&self, sandbox_id: &str) -> Option<(String, String)> {
        self.placements
            .lock()
            .ok()?
            .by_sandbox
            .get(sandbox_id)
            .cloned()
    }

    fn session_lock(&self, session_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut map) = self.provisioning.lock() else {
            // A poisoned map: serialize nothing rather than fail the call.
            return Arc::new(tokio::sync::Mutex::new(()));
        };
        // Drop locks nobody holds any more, so the map stays small.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(session_id.to_owned()).or_default().clone()
    }

    /// Connected agents of `environment_id`, `first` (if connected) first.
    fn agents_of(&self, environment_id: &str, first: Option<&str>) -> Vec<String> {
        let mut ids = self.gateway.agents_of(environment_id);
        if let Some(f) = first {
            if let Some(i) = ids.iter().position(|a| a == f) {
                let a = ids.remove(i);
                ids.insert(0, a);
            }
        }
        ids
    }

    /// One call without request data; returns the agent that answered and
    /// its reply (streamed output is dropped).
    async fn call(&self, target: &Target, request: &Request) -> Result<(String, Reply), Failure> {
        let (agent_id, call) = self
            .gateway
            .call_finished(target, request, bytes::Bytes::new())
            .await
            .map_err(Failure::Gateway)?;
        match call.finish_and_collect().await {
            Ok((_, Response::Ok(reply))) => Ok((agent_id, reply)),
            Ok((_, Response::Err(e))) => Err(Failure::Call(e)),
            Err(source) => Err(Failure::Gateway(AgentCallError::Tunnel {
                agent_id,
                source,
            })),
        }
    }

    /// Drop `sandbox_id` from the cache unless `agent_id` lists it as
    /// running (an agent that does not answer leaves the cache as it is).
    async fn check_alive(&self, agent_id: &str, session_id: &str, sandbox_id: &str) {
        if let Ok((_, Reply::ListSandboxes(list))) = self
            .call(&Target::Agent(agent_id.to_owned()), &Request::ListSandboxes)
            .await
        {
            if !list
                .iter()
                .any(|s| s.sandbox_id == sandbox_id && s.state == "running")
            {
                tracing::info!(
                    session_id,
                    agent_id,
                    sandbox_id,
                    "the sandbox died; the next call provisions a new one"
                );
                self.forget(sandbox_id);
            }
        }
    }

    /// The session's live sandbox on `agent_id`, if it has one.
    async fn find_on(
        &self,
        agent_id: &str,
        session_id: &str,
    ) -> Result<Option<SandboxInfo>, Failure> {
        let (_, reply) = self
            .call(&Target::Agent(agent_id.to_owned()), &Request::ListSandboxes)
            .await?;
        let Reply::ListSandboxes(list) = reply else {
            return Err(Failure::Unexpected(format!("{reply:?}")));
        };
        let mut mine: Vec<SandboxInfo> = list
            .into_iter()
            .filter(|s| s.session_id.as_deref() == Some(session_id) && s.state == "running")
            .collect();
        // Several can exist only if a provision raced a crash; keep the
        // oldest (the one earlier work most likely used), consistently.
        mine.sort_by(|a, b| (&a.created_at, &a.sandbox_id).cmp(&(&b.created_at, &b.sandbox_id)));
        if mine.len() > 1 {
            let ids: Vec<&str> = mine.iter().map(|s| s.sandbox_id.as_str()).collect();
            tracing::warn!(session_id, agent_id, sandboxes = ?ids, "several sandboxes serve one session; using the oldest");
        }
        Ok(mine.into_iter().next())
    }
}

/// The agent of `agents` that serves MCP calls of `session_id`: the one
/// with the highest FNV-1a hash of (session, agent), so the choice is the
/// same in every process and moves only the sessions of an agent that
/// comes or goes.
fn mcp_agent<'a>(session_id: &str, agents: &'a [String]) -> Option<&'a String> {
    agents.iter().max_by_key(|a| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in session_id.bytes().chain([0u8]).chain(a.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h, a.as_str())
    })
}

fn mcp_failure(failure: &mcp_wire::McpFailure, message: String, replayed: bool) -> McpFailure {
    McpFailure {
        replayed,
        kind: McpFailureKind::from_code(failure.as_str()),
        message,
    }
}

fn tool_output(r: wire::ToolResult) -> ToolOutput {
    ToolOutput {
        content: r.content,
        is_error: r.is_error,
        disposition: match r.disposition {
            wire::Disposition::Ran => Disposition::Ran,
            wire::Disposition::Replayed => Disposition::Replayed,
            wire::Disposition::Unknown => Disposition::Unknown,
        },
    }
}

impl GatewayHands {
    /// The agent that serves the session's MCP calls and the session's
    /// credentials.
    async fn mcp_route(
        &self,
        scope: &McpScope,
    ) -> Result<(String, Vec<protocol::relay::EgressCredential>), HandsError> {
        let session_id = scope.session_id.as_str();
        let Some(environment_id) = scope.environment_id.as_deref().filter(|e| !e.is_empty()) else {
            return Err(HandsError::Refused {
                session_id: session_id.to_owned(),
                message: "the session has no environment_id, so no sandbox-agent can reach its MCP servers"
                    .to_owned(),
            });
        };
        let agents = self.gateway.agents_of(environment_id);
        let Some(agent_id) = mcp_agent(session_id, &agents).cloned() else {
            return Err(hands_error(
                session_id,
                None,
                Failure::Gateway(AgentCallError::NotConnected(Target::Environment(
                    environment_id.to_owned(),
                ))),
            ));
        };
        let credentials = match &self.catalog {
            Some(c) => {
                crate::egress_credentials::credentials_of(c.as_ref(), &scope.vault_ids).await
            }
            None => Vec::new(),
        };
        Ok((agent_id, credentials))
    }

    /// Send one MCP request to `agent_id`; its reply.
    async fn mcp_call(
        &self,
        session_id: &str,
        agent_id: &str,
        request: &Request,
    ) -> Result<McpReply, HandsError> {
        match self
            .call(&Target::Agent(agent_id.to_owned()), request)
            .await
        {
            Ok((_, Reply::Mcp { reply, .. })) => Ok(reply),
            Ok((_, other)) => Err(hands_error(
                session_id,
                None,
                Failure::Unexpected(format!("{other:?}")),
            )),
            Err(f) => Err(hands_error(session_id, None, f)),
        }
    }
}

#[async_trait::async_trait]
impl Hands for GatewayHands {
    async fn provision(&self, spec: &ProvisionSpec) -> Result<SandboxRef, HandsError> {
        let session_id = spec.session_id.as_str();
        let Some(environment_id) = spec.environment_id.as_deref().filter(|e| !e.is_empty()) else {
            return Err(HandsError::Refused {
                session_id: session_id.to_owned(),
                message: "the session has no environment_id, so no sandbox-agent serves it"
                    .to_owned(),
            });
        };
        let lock = self.session_lock(session_id);
        let _one_at_a_time = lock.lock().await;

        // An existing sandbox first: the cached agent, then every other
        // connected agent of the environment.
        let cached = self.cached(session_id);
        let agents = self.agents_of(environment_id, cached.as_ref().map(|p| p.agent_id.as_str()));
        if agents.is_empty() {
            return Err(hands_error(
                session_id,
                None,
                Failure::Gateway(AgentCallError::NotConnected(Target::Environment(
                    environment_id.to_owned(),
                ))),
            ));
        }
        for agent_id in &agents {
            match self.find_on(agent_id, session_id).await {
                Ok(Some(s)) => {
                    if cached.as_ref().map(|p| &p.sandbox_id) != Some(&s.sandbox_id) {
                        tracing::info!(session_id, agent_id = %agent_id, sandbox_id = %s.sandbox_id, "found the session's sandbox");
                    }
                    self.remember(
                        session_id,
                        Placement {
                            agent_id: agent_id.clone(),
                            sandbox_id: s.sandbox_id.clone(),
                        },
                    );
                    return Ok(SandboxRef {
                        sandbox_id: s.sandbox_id,
                        ..Default::default()
                    });
                }
                Ok(None) => {}
                // The agent that held the sandbox did not answer: making a
                // new one elsewhere would lose its workspace. Try later.
                Err(f) if cached.as_ref().is_some_and(|p| &p.agent_id == agent_id) => {
                    return Err(hands_error(session_id, None, f));
                }
                Err(f) => {
                    let e = hands_error(session_id, None, f);
                    tracing::warn!(session_id, agent_id = %agent_id, error = %e, "could not list an agent's sandboxes; skipping it");
                }
            }
        }
        if let Some(p) = cached {
            tracing::info!(session_id, sandbox_id = %p.sandbox_id, "the session's sandbox is gone; provisioning a new one");
            self.forget(&p.sandbox_id);
        }

        let (credentials, allowed_hosts) = match &self.catalog {
            Some(c) => (
                crate::egress_credentials::credentials_of(c.as_ref(), &spec.vault_ids).await,
                crate::egress_credentials::allowed_hosts_of(c.as_ref(), environment_id).await,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let request = Request::Provision(ProvisionRequest {
            session_id: Some(session_id.to_owned()),
            resources: spec.resources.clone(),
            credentials,
            allowed_hosts,
            ..Default::default()
        });
        let target = Target::Environment(environment_id.to_owned());
        let (agent_id, provisioned) = match self.call(&target, &request).await {
            Ok((agent_id, Reply::Provision(p))) => (agent_id, p),
            Ok((_, other)) => {
                return Err(hands_error(
                    session_id,
                    None,
                    Failure::Unexpected(format!("{other:?}")),
                ))
            }
            Err(f) => return Err(hands_error(session_id, None, f)),
        };
        tracing::info!(
            session_id,
            agent_id = %agent_id,
            sandbox_id = %provisioned.sandbox_id,
            image = %provisioned.image,
            from_pool = provisioned.from_pool,
            "sandbox provisioned"
        );
        self.remember(
            session_id,
            Placement {
                agent_id,
                sandbox_id: provisioned.sandbox_id.clone(),
            },
        );
        Ok(SandboxRef {
            sandbox_id: provisioned.sandbox_id,
            resource_errors: provisioned
                .resource_errors
                .into_iter()
                .map(|e| harness::ResourceFailure {
                    error_type: e.error_type,
                    repository_url: e.repository_url,
                    message: e.message,
                })
                .collect(),
        })
    }

    async fn execute(
        &self,
        sandbox: &SandboxRef,
        call: &ToolCall,
    ) -> Result<ToolOutput, HandsError> {
        let sandbox_id = sandbox.sandbox_id.as_str();
        // Not cached: it was dropped as dead, or this process never placed
        // it. Either way `provision` finds out what is live.
        let Some((agent_id, session_id)) = self.holder_of(sandbox_id) else {
            return Err(HandsError::SandboxGone {
                sandbox_id: sandbox_id.to_owned(),
            });
        };
        let request = Request::Execute(ExecuteRequest {
            sandbox_id: sandbox_id.to_owned(),
            tool_use_id: call.tool_use_id.clone(),
            name: call.name.clone(),
            input: call.input.clone(),
            stream: false,
        });
        match self.call(&Target::Agent(agent_id.clone()), &request).await {
            Ok((_, Reply::Execute(result))) => {
                if result.disposition == wire::Disposition::Unknown {
                    // The sandbox may have died under this call: the next
                    // call provisions (and finds out) again.
                    self.forget(sandbox_id);
                } else if result.is_error && result.disposition == wire::Disposition::Ran {
                    // A failed call may mean a dead sandbox (the agent
                    // answers a death as an error result): check, so the
                    // next call does not go to a dead one.
                    self.check_alive(&agent_id, &session_id, sandbox_id).await;
                }
                Ok(tool_output(result))
            }
            Ok((_, other)) => Err(hands_error(
                &session_id,
                Some(sandbox_id),
                Failure::Unexpected(format!("{other:?}")),
            )),
            Err(f) => {
                let e = hands_error(&session_id, Some(sandbox_id), f);
                if matches!(e, HandsError::SandboxGone { .. }) {
                    self.forget(sandbox_id);
                }
                if !e.is_transient() {
                    tracing::info!(session_id = %session_id, agent_id = %agent_id, sandbox_id, tool_use_id = %call.tool_use_id, error = %e, "tool call not made");
                }
                Err(e)
            }
        }
    }

    async fn list_mcp_tools(
        &self,
        scope: &McpScope,
        server: &McpServerRef,
    ) -> Result<McpAnswer<Vec<McpToolInfo>>, HandsError> {
        let (agent_id, credentials) = self.mcp_route(scope).await?;
        let request = Request::McpListTools(McpListTools {
            session_id: scope.session_id.clone(),
            server: mcp_wire::McpServer {
                name: server.name.clone(),
                url: server.url.clone(),
            },
            credentials,
        });
        let reply = self
            .mcp_call(&scope.session_id, &agent_id, &request)
            .await?;
        match reply.outcome {
            McpOutcome::Tools { tools } => Ok(Ok(tools
                .into_iter()
                .map(|t| McpToolInfo {
                    name: t.name,
                    description: t.description,
                    input_schema: t.input_schema,
                })
                .collect())),
            McpOutcome::Failed { failure, message } => {
                Ok(Err(mcp_failure(&failure, message, reply.replayed)))
            }
            other => Err(hands_error(
                &scope.session_id,
                None,
                Failure::Unexpected(format!("{other:?} to mcp_list_tools")),
            )),
        }
    }

    async fn call_mcp_tool(
        &self,
        scope: &McpScope,
        tool_use_id: &str,
        server: &McpServerRef,
        tool: &str,
        arguments: &serde_json::Value,
    ) -> Result<McpAnswer<McpToolOutput>, HandsError> {
        let (agent_id, credentials) = self.mcp_route(scope).await?;
        let request = Request::McpCallTool(McpCallTool {
            session_id: scope.session_id.clone(),
            tool_use_id: tool_use_id.to_owned(),
            server: mcp_wire::McpServer {
                name: server.name.clone(),
                url: server.url.clone(),
            },
            credentials,
            tool: tool.to_owned(),
            arguments: arguments.clone(),
        });
        let reply = self
            .mcp_call(&scope.session_id, &agent_id, &request)
            .await?;
        tracing::debug!(
            session_id = %scope.session_id,
            agent_id = %agent_id,
            tool_use_id,
            mcp_server_name = %server.name,
            credential_id = reply.credential_id.as_deref().unwrap_or(""),
            replayed = reply.replayed,
            "MCP call answered"
        );
        match reply.outcome {
            McpOutcome::Called { content, is_error } => Ok(Ok(McpToolOutput {
                content,
                is_error,
                replayed: reply.replayed,
                tools_changed: reply.tools_changed,
            })),
            McpOutcome::Failed { failure, message } => {
                Ok(Err(mcp_failure(&failure, message, reply.replayed)))
            }
            other => Err(hands_error(
                &scope.session_id,
                None,
                Failure::Unexpected(format!("{other:?} to mcp_call_tool")),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn call_error(code: ErrorCode, rule: Option<&str>) -> Failure {
        Failure::Call(CallError {
            code,
            message: "m".into(),
            rule: rule.map(str::to_owned),
        })
    }

    #[test]
    fn errors_map_per_the_hands_contract() {
        let e = hands_error(
            "s",
            Some("sbx_1"),
            call_error(ErrorCode::UnknownSandbox, None),
        );
        assert_eq!(
            e,
            HandsError::SandboxGone {
                sandbox_id: "sbx_1".into()
            }
        );
        let e = hands_error(
            "s",
            Some("sbx_1"),
            call_error(ErrorCode::PolicyDenied, Some("policy.allowed_tools")),
        );
        assert!(
            matches!(&e, HandsError::Refused { message, .. } if message.contains("policy.allowed_tools")),
            "{e}"
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Forbidden,
            ErrorCode::UnsupportedCall,
        ] {
            assert!(!hands_error("s", None, call_error(code, None)).is_transient());
        }
        for code in [
            ErrorCode::Unavailable,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
            ErrorCode::Unknown("new_code".into()),
        ] {
            assert!(hands_error("s", None, call_error(code, None)).is_transient());
        }
        let e = hands_error(
            "s",
            None,
            Failure::Gateway(AgentCallError::NotConnected(Target::Environment(
                "env_1".into(),
            ))),
        );
        assert!(
            matches!(&e, HandsError::Unavailable { message, .. } if message.contains("env_1")),
            "{e}"
        );
        assert!(!hands_error("s", None, Failure::Unexpected("Pong".into())).is_transient());
    }

    #[test]
    fn mcp_calls_of_a_session_go_to_one_agent_whatever_the_order() {
        let agents: Vec<String> = (0..5).map(|i| format!("agt_{i}")).collect();
        let mut reversed = agents.clone();
        reversed.reverse();
        let mut chosen = std::collections::HashSet::new();
        for s in 0..50 {
            let sid = format!("sesn_{s}");
            let a = mcp_agent(&sid, &agents).unwrap();
            assert_eq!(Some(a), mcp_agent(&sid, &reversed));
            chosen.insert(a.clone());
            // An agent that is not the chosen one going away moves nothing.
            let fewer: Vec<String> = agents
                .iter()
                .filter(|x| *x == a || x.as_str() != "agt_0")
                .cloned()
                .collect();
            assert_eq!(mcp_agent(&sid, &fewer), Some(a));
        }
        assert!(chosen.len() > 1, "sessions spread over agents: {chosen:?}");
        assert_eq!(mcp_agent("s", &[]), None);
    }

    #[test]
    fn mcp_failure_codes_map_one_to_one() {
        for (wire, kind) in [
            (
                mcp_wire::McpFailure::ConnectionFailed,
                McpFailureKind::ConnectionFailed,
            ),
            (
                mcp_wire::McpFailure::AuthenticationFailed,
                McpFailureKind::AuthenticationFailed,
            ),
            (mcp_wire::McpFailure::Timeout, McpFailureKind::Timeout),
            (
                mcp_wire::McpFailure::InvalidResponse,
                McpFailureKind::InvalidResponse,
            ),
            (mcp_wire::McpFailure::TooLarge, McpFailureKind::TooLarge),
            (
                mcp_wire::McpFailure::PolicyDenied,
                McpFailureKind::PolicyDenied,
            ),
            (
                mcp_wire::McpFailure::OutcomeUnknown,
                McpFailureKind::OutcomeUnknown,
            ),
            (
                mcp_wire::McpFailure::SecretUnavailable,
                McpFailureKind::SecretUnavailable,
            ),
            (mcp_wire::McpFailure::NoBridge, McpFailureKind::NoBridge),
            (
                mcp_wire::McpFailure::InvalidRequest,
                McpFailureKind::InvalidRequest,
            ),
            (
                mcp_wire::McpFailure::Unknown("quota".into()),
                McpFailureKind::Other("quota".into()),
            ),
        ] {
            assert_eq!(mcp_failure(&wire, "m".into(), false).kind, kind);
        }
    }

    #[test]
    fn placements_forget_by_sandbox_and_replace_per_session() {
        let mut p = Placements::default();
        let at = |a: &str, s: &str| Placement {
            agent_id: a.into(),
            sandbox_id: s.into(),
        };
        p.insert("sesn_1", at("agt_1", "sbx_1"));
        p.insert("sesn_2", at("agt_1", "sbx_2"));
        p.insert("sesn_1", at("agt_2", "sbx_3"));
        assert!(!p.by_sandbox.contains_key("sbx_1"));
        assert_eq!(
            p.by_sandbox["sbx_3"],
            ("agt_2".to_owned(), "sesn_1".to_owned())
        );
        p.forget_sandbox("sbx_3");
        assert!(!p.by_session.contains_key("sesn_1"));
        assert!(p.by_session.contains_key("sesn_2"));
        p.forget_sandbox("sbx_unknown");
        assert_eq!(p.by_session.len(), 1);
    }

    #[tokio::test]
    async fn no_environment_is_refused_and_no_agent_is_unavailable() {
        let hands = GatewayHands::new(GatewayHandle::new(
            Arc::new(crate::gateway::Registry::new()),
        ));
        let spec = ProvisionSpec {
            session_id: "sesn_1".into(),
            environment_id: None,
            resources: vec![],
            vault_ids: vec![],
        };
        assert!(matches!(
            hands.provision(&spec).await,
            Err(HandsError::Refused { .. })
        ));
        let spec = ProvisionSpec {
            environment_id: Some("env_1".into()),
            ..spec
        };
        let e = hands.provision(&spec).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = hands
            .execute(
                &SandboxRef {
                    sandbox_id: "sbx_9".into(),
                    ..Default::default()
                },
                &ToolCall {
                    tool_use_id: "t".into(),
                    name: "bash".into(),
                    input: serde_json::json!({}),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            HandsError::SandboxGone {
                sandbox_id: "sbx_9".into()
            }
        );
        // MCP: no environment is refused, no agent is unavailable.
        let server = McpServerRef {
            name: "wiki".into(),
            url: "https://wiki.internal/mcp".into(),
        };
        let scope = McpScope {
            session_id: "sesn_1".into(),
            environment_id: None,
            vault_ids: vec![],
        };
        assert!(matches!(
            hands.list_mcp_tools(&scope, &server).await,
            Err(HandsError::Refused { .. })
        ));
        let scope = McpScope {
            environment_id: Some("env_1".into()),
            ..scope
        };
        let e = hands
            .call_mcp_tool(&scope, "sevt_1", &server, "search", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
