//! MCP tools in the loop: the names the model sees for them ([`McpOffer`]),
//! the per-session cache of servers' tool lists ([`McpToolCache`]), and how
//! an MCP failure is told to the client and the model ([`failure_text`],
//! [`session_error_type`]).
//!
//! Naming. Anthropic tool names match `^[a-zA-Z0-9_-]{1,128}$`. A server's
//! tool is offered as `mcp__{server}__{tool}` when that is a valid name and
//! names exactly one (server, tool) pair (the server name has no `__`), else
//! as [`hashed_tool_name`]: the sanitised, truncated name plus `_` and eight
//! hex digits of a stable hash of the pair. A name another tool of the
//! session already has also takes the hashed form. Names are a function of
//! the agent and the servers' lists only, so every wake (on any replica)
//! offers the same names and maps the model's calls back the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::agent::AgentConfig;
use crate::events::{Permission, SessionErrorType};
use crate::hands::{McpFailure, McpFailureKind, McpToolInfo};

/// How long a server's tool list is reused for a session before it is
/// listed again (a failed listing is never cached).
pub const MCP_TOOLS_TTL: Duration = Duration::from_secs(300);

/// Longest tool name the Messages API takes.
pub const TOOL_NAME_MAX_LEN: usize = 128;

/// Cached lists above this many are forgotten at once (the cache is only an
/// optimisation).
const MAX_CACHED_LISTS: usize = 10_000;

/// Whether `name` is a valid Messages API tool name.
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOOL_NAME_MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The model-facing name of `tool` on `server` when no other tool has it.
pub fn mcp_tool_name(server: &str, tool: &str) -> String {
    let plain = format!("mcp__{server}__{tool}");
    if is_valid_tool_name(&plain) && !server.contains("__") {
        plain
    } else {
        hashed_tool_name(server, tool)
    }
}

/// `mcp__{server}__{tool}` with every other character made `_`, cut to
/// leave room for `_` and eight hex digits of a stable (FNV-1a) hash of
/// the pair.
pub fn hashed_tool_name(server: &str, tool: &str) -> String {
    let mut name: String = format!("mcp__{server}__{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(TOOL_NAME_MAX_LEN - 9)
        .collect();
    let mut h: u32 = 0x811c_9dc5;
    for b in server.bytes().chain([0u8]).chain(tool.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    name.push_str(&format!("_{h:08x}"));
    name
}

/// One MCP tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedMcpTool {
    /// The name the model calls it by.
    pub model_name: String,
    /// `mcp_server_name`.
    pub server: String,
    /// The tool as the server lists it.
    pub tool: McpToolInfo,
    /// How its calls are permitted.
    pub permission: Permission,
}

/// The MCP tools of one model request, and the way back from the names the
/// model calls to (server, tool).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpOffer {
    tools: Vec<OfferedMcpTool>,
    by_name: HashMap<String, usize>,
    by_pair: HashMap<(String, String), usize>,
}

impl McpOffer {
    /// The offer for `agent` given each server's listed tools (servers
    /// missing from `listed` are left out). Disabled tools are left out; a
    /// tool listed twice by one server is offered once.
    pub fn build(agent: &AgentConfig, listed: &HashMap<String, Vec<McpToolInfo>>) -> Self {
        let mut taken: HashSet<String> = agent
            .tools
            .iter()
            .map(|t| t.definition.name.clone())
            .collect();
        let mut offer = Self::default();
        for server in &agent.mcp_servers {
            let Some(tools) = listed.get(&server.name) else {
                continue;
            };
            for tool in tools {
                let Some(permission) = server.toolset.permission(&tool.name) else {
                    continue;
                };
                let pair = (server.name.clone(), tool.name.clone());
                if offer.by_pair.contains_key(&pair) {
                    continue;
                }
                let mut model_name = mcp_tool_name(&server.name, &tool.name);
                if taken.contains(&model_name) {
                    model_name = hashed_tool_name(&server.name, &tool.name);
                }
                if !taken.insert(model_name.clone()) {
                    tracing::warn!(
                        mcp_server_name = %server.name,
                        tool = %tool.name,
                        model_name = %model_name,
                        "an MCP tool's name collides with another tool's even hashed; not offered"
                    );
                    continue;
                }
                let i = offer.tools.len();
                offer.by_name.insert(model_name.clone(), i);
                offer.by_pair.insert(pair, i);
                offer.tools.push(OfferedMcpTool {
                    model_name,
                    server: server.name.clone(),
                    tool: tool.clone(),
                    permission,
                });
            }
        }
        offer
    }

    /// The offered tool the model calls `model_name`.
    pub fn resolve(&self, model_name: &str) -> Option<&OfferedMcpTool> {
        self.by_name.get(model_name).map(|&i| &self.tools[i])
    }

    /// The name the model knows `tool` of `server` by: its offered name, or
    /// [`mcp_tool_name`] when it is not offered now (history).
    pub fn model_name(&self, server: &str, tool: &str) -> String {
        match self.by_pair.get(&(server.to_owned(), tool.to_owned())) {
            Some(&i) => self.tools[i].model_name.clone(),
            None => mcp_tool_name(server, tool),
        }
    }

    /// The offered tools, in order.
    pub fn tools(&self) -> &[OfferedMcpTool] {
        &self.tools
    }

    /// Their definitions for the model request.
    pub fn definitions(&self) -> impl Iterator<Item = model::ToolDefinition> + '_ {
        self.tools.iter().map(|t| model::ToolDefinition {
            name: t.model_name.clone(),
            description: Some(match &t.tool.description {
                Some(d) if !d.trim().is_empty() => d.clone(),
                _ => format!("Tool `{}` of MCP server `{}`.", t.tool.name, t.server),
            }),
            input_schema: object_schema(&t.tool.input_schema),
            cache_control: None,
        })
    }
}

/// A server's schema as the Messages API takes it: an object schema
/// (`type: object` added when missing; anything else becomes an empty one).
fn object_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut m = m.clone();
            match m.get("type") {
                Some(Value::String(t)) if t == "object" => {}
                None => {
                    m.insert("type".into(), json!("object"));
                }
                Some(_) => return json!({"type": "object"}),
            }
            Value::Object(m)
        }
        _ => json!({"type": "object"}),
    }
}

/// Key of a cached list: (session, server name, server URL).
type ListKey = (String, String, String);

/// Servers' tool lists per session, reused for a TTL. In memory only: the
/// harness is stateless across crashes and this is an optimisation.
#[derive(Debug)]
pub struct McpToolCache {
    ttl: Duration,
    lists: Mutex<HashMap<ListKey, (Instant, Vec<McpToolInfo>)>>,
}

impl Default for McpToolCache {
    fn default() -> Self {
        Self::new(MCP_TOOLS_TTL)
    }
}

impl McpToolCache {
    /// A cache whose lists live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            lists: Mutex::new(HashMap::new()),
        }
    }

    fn key(session_id: &str, server: &str, url: &str) -> ListKey {
        (session_id.to_owned(), server.to_owned(), url.to_owned())
    }

    /// The session's fresh list of `server` at `url`, if any.
    pub fn get(&self, session_id: &str, server: &str, url: &str) -> Option<Vec<McpToolInfo>> {
        let lists = self.lists.lock().ok()?;
        let (at, tools) = lists.get(&Self::key(session_id, server, url))?;
        (at.elapsed() < self.ttl).then(|| tools.clone())
    }

    /// Remember a successful listing.
    pub fn put(&self, session_id: &str, server: &str, url: &str, tools: Vec<McpToolInfo>) {
        if let Ok(mut lists) = self.lists.lock() {
            if lists.len() >= MAX_CACHED_LISTS {
                let ttl = self.ttl;
                lists.retain(|_, (at, _)| at.elapsed() < ttl);
                if lists.len() >= MAX_CACHED_LISTS {
                    lists.clear();
                }
            }
            lists.insert(Self::key(session_id, server, url), (Instant::now(), tools));
        }
    }

    /// Forget the session's lists of `server` (after a failure).
    pub fn invalidate(&self, session_id: &str, server: &str) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.retain(|(s, n, _), _| !(s == session_id && n == server));
        }
    }
}

/// The `session.error` type a failure is also reported as (`None`: only a
/// tool error). A missing secret is an authentication failure.
pub fn session_error_type(kind: &McpFailureKind) -> Option<SessionErrorType> {
    match kind {
        McpFailureKind::ConnectionFailed => Some(SessionErrorType::McpConnectionFailed),
        McpFailureKind::AuthenticationFailed | McpFailureKind::SecretUnavailable => {
            Some(SessionErrorType::McpAuthenticationFailed)
        }
        _ => None,
    }
}

/// The `session.error` type of a failed tool listing: connection or
/// authentication (every other failure leaves the server's tools out just
/// the same, so it is reported as a connection failure).
pub fn listing_error_type(kind: &McpFailureKind) -> SessionErrorType {
    session_error_type(kind).unwrap_or(SessionErrorType::McpConnectionFailed)
}

/// What the model (and the `agent.mcp_tool_result`) is told about a failed
/// call to `tool` on `server`.
pub fn failure_text(server: &str, tool: &str, f: &McpFailure) -> String {
    let m = &f.message;
    match &f.kind {
        McpFailureKind::ConnectionFailed => format!(
            "The call to `{tool}` failed: MCP server `{server}` could not be reached or failed ({m})."
        ),
        McpFailureKind::AuthenticationFailed => format!(
            "The call to `{tool}` failed: MCP server `{server}` refused the session's credential ({m})."
        ),
        McpFailureKind::SecretUnavailable => format!(
            "The call to `{tool}` failed: the credential for MCP server `{server}` could not be read ({m})."
        ),
        McpFailureKind::Timeout => format!(
            "MCP server `{server}` did not answer the call to `{tool}` in time ({m}); it may or may not have run."
        ),
        McpFailureKind::InvalidResponse => format!(
            "MCP server `{server}` answered the call to `{tool}` with an invalid response ({m})."
        ),
        McpFailureKind::TooLarge => format!(
            "The result of `{tool}` from MCP server `{server}` is too large to pass on ({m})."
        ),
        McpFailureKind::PolicyDenied => format!(
            "Not run: the environment's policy does not allow MCP server `{server}` ({m})."
        ),
        McpFailureKind::OutcomeUnknown => format!(
            "The outcome of this call to `{tool}` on MCP server `{server}` is unknown: an earlier attempt started and its result was never recorded, so it may or may not have run. It was not run again ({m})."
        ),
        McpFailureKind::NoBridge => format!(
            "Not run: MCP server `{server}` cannot be reached because the environment has no vault-bridge ({m})."
        ),
        McpFailureKind::InvalidRequest => {
            format!("Not run: the call to `{tool}` on MCP server `{server}` is invalid ({m}).")
        }
        McpFailureKind::Other(code) => format!(
            "The call to `{tool}` on MCP server `{server}` failed ({code}): {m}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentConfig;

    fn info(name: &str) -> McpToolInfo {
        McpToolInfo {
            name: name.into(),
            description: None,
            input_schema: json!({"properties": {"q": {"type": "string"}}}),
        }
    }

    #[test]
    fn names_are_valid_unique_and_stable() {
        assert_eq!(mcp_tool_name("wiki", "search"), "mcp__wiki__search");
        // The example of docs/mcp.md (FNV-1a 32 of "wiki.internal\0get page").
        assert_eq!(
            mcp_tool_name("wiki.internal", "get page"),
            "mcp__wiki_internal__get_page_e243c2b7"
        );
        for (server, tool) in [
            ("wiki.internal", "search"),
            ("wiki", "get time/now"),
            ("a__b", "c"),
            ("a", &"x".repeat(200)[..]),
            ("ünï", "cödé"),
        ] {
            let n = mcp_tool_name(server, tool);
            assert!(is_valid_tool_name(&n), "{n}");
            assert_eq!(n, mcp_tool_name(server, tool), "stable");
            assert!(n.starts_with("mcp__"), "{n}");
        }
        // Sanitising alone would merge these; the hash keeps them apart.
        assert_ne!(mcp_tool_name("a__b", "c"), mcp_tool_name("a", "b__c"));
        assert_ne!(mcp_tool_name("w", "a.b"), mcp_tool_name("w", "a/b"));
        assert_eq!(
            mcp_tool_name("wiki", "get time").len(),
            "mcp__wiki__get_time".len() + 9
        );
        assert_eq!(
            mcp_tool_name("a", &"x".repeat(200)).len(),
            TOOL_NAME_MAX_LEN
        );
    }

    #[test]
    fn the_offer_maps_back_and_avoids_collisions() {
        let agent = AgentConfig::from_session(
            "s",
            &json!({"agent": {"model": "m",
            "mcp_servers": [{"type": "url", "name": "w", "url": "https://w/mcp"},
                            {"type": "url", "name": "v", "url": "https://v/mcp"}],
            "tools": [
                {"type": "custom", "name": "mcp__w__search", "input_schema": {"type": "object"}},
                {"type": "mcp_toolset", "mcp_server_name": "w",
                 "configs": [{"name": "hidden", "enabled": false},
                             {"name": "read", "permission_policy": {"type": "always_allow"}}]},
                {"type": "mcp_toolset", "mcp_server_name": "v"}
            ]}}),
        )
        .unwrap();
        let listed = HashMap::from([
            (
                "w".to_owned(),
                vec![info("search"), info("hidden"), info("read"), info("read")],
            ),
            ("v".to_owned(), vec![info("a.b"), info("a/b")]),
        ]);
        let offer = McpOffer::build(&agent, &listed);
        let names: Vec<_> = offer.tools().iter().map(|t| t.model_name.clone()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        // Taken by the custom tool: hashed.
        assert_eq!(names[0], hashed_tool_name("w", "search"));
        assert_eq!(names[1], "mcp__w__read");
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 4);
        for n in &names {
            assert!(is_valid_tool_name(n));
            let t = offer.resolve(n).unwrap();
            assert_eq!(offer.model_name(&t.server, &t.tool.name), *n);
        }
        assert_eq!(
            offer.resolve("mcp__w__read").unwrap().permission,
            Permission::AlwaysAllow
        );
        assert_eq!(
            offer.resolve(&names[0]).unwrap().permission,
            Permission::AlwaysAsk
        );
        assert!(offer.resolve("mcp__w__hidden").is_none());
        assert!(
            offer.resolve("mcp__w__search").is_none(),
            "the custom tool's"
        );
        // Schemas become object schemas; descriptions are never empty.
        let defs: Vec<_> = offer.definitions().collect();
        assert_eq!(defs[1].input_schema["type"], json!("object"));
        assert_eq!(
            defs[1].input_schema["properties"]["q"]["type"],
            json!("string")
        );
        assert!(defs[1].description.as_deref().unwrap().contains("`w`"));
        // Not offered now: the plain name (history).
        assert_eq!(offer.model_name("w", "gone"), "mcp__w__gone");
    }

    #[test]
    fn schemas_are_made_object_schemas() {
        assert_eq!(object_schema(&json!(null)), json!({"type": "object"}));
        assert_eq!(
            object_schema(&json!({"type": "array"})),
            json!({"type": "object"})
        );
        assert_eq!(
            object_schema(&json!({"type": "object", "required": ["x"]})),
            json!({"type": "object", "required": ["x"]})
        );
    }

    #[test]
    fn the_cache_expires_and_is_per_session_and_server() {
        // long enough that a preempted test thread still reads a fresh entry
        let c = McpToolCache::new(Duration::from_millis(500));
        c.put("s1", "w", "https://w", vec![info("a")]);
        assert_eq!(c.get("s1", "w", "https://w").unwrap().len(), 1);
        assert!(c.get("s2", "w", "https://w").is_none());
        assert!(c.get("s1", "w", "https://other").is_none());
        c.invalidate("s1", "w");
        assert!(c.get("s1", "w", "https://w").is_none());
        c.put("s1", "w", "https://w", vec![info("a")]);
        std::thread::sleep(Duration::from_millis(600));
        assert!(c.get("s1", "w", "https://w").is_none());
    }

    #[test]
    fn failures_map_to_session_errors_and_clear_texts() {
        use McpFailureKind as K;
        assert_eq!(
            session_error_type(&K::ConnectionFailed),
            Some(SessionErrorType::McpConnectionFailed)
        );
        assert_eq!(
            session_error_type(&K::AuthenticationFailed),
            Some(SessionErrorType::McpAuthenticationFailed)
        );
        for k in [
            K::Timeout,
            K::InvalidResponse,
            K::TooLarge,
            K::PolicyDenied,
            K::OutcomeUnknown,
            K::NoBridge,
        ] {
            assert_eq!(session_error_type(&k), None, "{k:?}");
            assert_eq!(
                listing_error_type(&k),
                SessionErrorType::McpConnectionFailed
            );
        }
        let t = failure_text(
            "w",
            "t",
            &McpFailure {
                kind: K::OutcomeUnknown,
                message: "m".into(),
                replayed: false,
            },
        );
        assert!(
            t.contains("may or may not have run") && t.contains("not run again"),
            "{t}"
        );
        let t = failure_text(
            "w",
            "t",
            &McpFailure {
                kind: K::Other("quota".into()),
                message: "m".into(),
                replayed: false,
            },
        );
        assert!(t.contains("quota"));
    }
}
