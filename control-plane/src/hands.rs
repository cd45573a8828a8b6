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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use harness::{Disposition, Hands, HandsError, ProvisionSpec, SandboxRef, ToolCall, ToolOutput};
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
    }
}
