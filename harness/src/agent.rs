//! The session's configuration as the harness needs it, read from the
//! session record's body (the API's session object: the resolved `agent`
//! snapshot and `environment_id`).
//!
//! Tools: `agent_toolset_20260401` (the sandbox tools `bash`, `read`,
//! `write`, `edit`, `glob`, `grep`, each with its `permission_policy`) and
//! `custom` tools (answered by the client), and `mcp_toolset`s over the
//! agent's `mcp_servers` ([`McpServerConfig`]: which of a server's tools are
//! enabled and how each is permitted; the tools themselves are listed from
//! the server at run time, see [`crate::mcp`]). `web_fetch`/`web_search` are
//! server tools of Anthropic's service: left out of the model request.

use serde_json::{json, Value};

use crate::events::Permission;
use session_store::PermissionPolicy;

/// Where a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// In the session's sandbox, through [`crate::Hands`].
    Sandbox,
    /// By the API client (`agent.custom_tool_use` → `user.custom_tool_result`).
    Custom,
}

/// One tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Where it runs.
    pub kind: ToolKind,
    /// How calls are permitted (custom tools: always allowed).
    pub permission: Permission,
    /// What the model is told.
    pub definition: model::ToolDefinition,
}

/// How a server's tools are enabled and permitted (`mcp_toolset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpToolset {
    /// `default_config.enabled` (default true).
    pub default_enabled: bool,
    /// `default_config.permission_policy` (default `always_ask`, the
    /// service's default for MCP toolsets).
    pub default_permission: Permission,
    /// Per-tool overrides (`configs`).
    pub configs: Vec<McpToolConfig>,
}

/// One `configs` entry of an `mcp_toolset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpToolConfig {
    /// The tool's name on the server.
    pub name: String,
    /// `enabled`, if set.
    pub enabled: Option<bool>,
    /// `permission_policy`, if set.
    pub permission: Option<Permission>,
}

impl McpToolset {
    /// How calls to `tool` are permitted; `None` when it is disabled.
    pub fn permission(&self, tool: &str) -> Option<Permission> {
        let c = self.configs.iter().find(|c| c.name == tool);
        let enabled = c.and_then(|c| c.enabled).unwrap_or(self.default_enabled);
        if !enabled {
            return None;
        }
        Some(
            c.and_then(|c| c.permission)
                .unwrap_or(self.default_permission),
        )
    }
}

/// An MCP server of the agent that an `mcp_toolset` enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// `mcp_servers[].name` (`mcp_server_name` in events).
    pub name: String,
    /// `mcp_servers[].url`.
    pub url: String,
    /// Its toolset.
    pub toolset: McpToolset,
}

/// The session configuration the loop runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Model id.
    pub model: String,
    /// System prompt.
    pub system: Option<String>,
    /// Enabled tools, in request order.
    pub tools: Vec<ToolSpec>,
    /// `environment_id` of the session.
    pub environment_id: Option<String>,
    /// `resources` of the session (passed to provisioning).
    pub resources: Vec<Value>,
    /// `vault_ids` of the session (passed to provisioning and MCP calls).
    pub vault_ids: Vec<String>,
    /// MCP servers with an `mcp_toolset`, in `mcp_servers` order.
    pub mcp_servers: Vec<McpServerConfig>,
}

/// Why the session body cannot be run; names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session {session_id}: invalid `{field}`: {message}")]
pub struct AgentConfigError {
    /// Session.
    pub session_id: String,
    /// Dotted field path in the session object.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The sandbox tools of `agent_toolset_20260401` and their input schemas.
pub const SANDBOX_TOOLS: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];

fn builtin_definition(name: &str) -> Option<model::ToolDefinition> {
    let (description, schema) = match name {
        "bash" => (
            "Run a command in a persistent bash shell. Working directory, environment and background jobs persist between calls. Set restart=true (without a command) to reset the shell.",
            json!({"type":"object","properties":{
                "command":{"type":"string","description":"Shell command to execute. Omit only when restart is true."},
                "restart":{"type":"boolean","description":"Restart the persistent bash session instead of running a command."},
                "timeout_ms":{"type":"integer","description":"Per-call timeout in milliseconds; 0 or absent means the default."}}}),
        ),
        "read" => (
            "Read a file. Paths are relative to the working directory. view_range is a 1-based inclusive [start, end] line range; end <= 0 means to the end of the file.",
            json!({"type":"object","properties":{
                "file_path":{"type":"string"},
                "view_range":{"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":2}},
                "required":["file_path"]}),
        ),
        "write" => (
            "Write a file, overwriting it and creating parent directories.",
            json!({"type":"object","properties":{
                "file_path":{"type":"string"},"content":{"type":"string"}},
                "required":["file_path","content"]}),
        ),
        "edit" => (
            "Replace old_string with new_string in a file. old_string must occur exactly once unless replace_all is true.",
            json!({"type":"object","properties":{
                "file_path":{"type":"string"},"old_string":{"type":"string"},"new_string":{"type":"string"},
                "replace_all":{"type":"boolean"}},
                "required":["file_path","old_string","new_string"]}),
        ),
        "glob" => (
            "Find paths matching a doublestar glob pattern (e.g. **/*.rs), newest first.",
            json!({"type":"object","properties":{
                "pattern":{"type":"string"},"path":{"type":"string"}},
                "required":["pattern"]}),
        ),
        "grep" => (
            "Search file contents for a regular expression; returns matching lines.",
            json!({"type":"object","properties":{
                "pattern":{"type":"string"},"path":{"type":"string"}},
                "required":["pattern"]}),
        ),
        _ => return None,
    };
    Some(model::ToolDefinition {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        input_schema: schema,
        cache_control: None,
    })
}

fn policy(v: Option<&Value>) -> Option<Permission> {
    Permission::from_policy(&PermissionPolicy::parse(v?.get("type")?.as_str()?))
}

impl AgentConfig {
    /// Read the configuration from a session object.
    pub fn from_session(session_id: &str, body: &Value) -> Result<Self, AgentConfigError> {
        let err = |field: &str, message: &str| AgentConfigError {
            session_id: session_id.to_owned(),
            field: field.to_owned(),
            message: message.to_owned(),
        };
        let agent = body.get("agent").ok_or_else(|| err("agent", "missing"))?;
        let model = match agent.get("model") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Object(m)) => match m.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return Err(err("agent.model.id", "missing or not a non-empty string")),
            },
            _ => return Err(err("agent.model", "missing or not a string or {id}")),
        };
        let system = match agent.get("system") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(err("agent.system", "not a string")),
        };
        let mut servers: Vec<(String, String)> = Vec::new();
        let raw_servers = match agent.get("mcp_servers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(err("agent.mcp_servers", "not an array")),
        };
        for (i, s) in raw_servers.iter().enumerate() {
            let field = |k: &str| format!("agent.mcp_servers.{i}{k}");
            match s.get("type").and_then(Value::as_str) {
                None | Some("url") => {}
                Some(_) => return Err(err(&field(".type"), "not \"url\"")),
            }
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| err(&field(".name"), "missing or empty"))?;
            let url = s
                .get("url")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| err(&field(".url"), "missing or empty"))?;
            if servers.iter().any(|(n, _)| n == name) {
                return Err(err(
                    &field(".name"),
                    &format!("server name {name} is defined twice"),
                ));
            }
            servers.push((name.to_owned(), url.to_owned()));
        }
        let mut toolsets: Vec<(String, McpToolset)> = Vec::new();
        let mut tools = Vec::new();
        let raw_tools = match agent.get("tools") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(err("agent.tools", "not an array")),
        };
        for (i, t) in raw_tools.iter().enumerate() {
            let field = |k: &str| format!("agent.tools.{i}{k}");
            match t.get("type").and_then(Value::as_str) {
                Some("agent_toolset_20260401") => {
                    let default = t.get("default_config");
                    let default_enabled = default
                        .and_then(|d| d.get("enabled"))
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    let default_policy = match default.and_then(|d| d.get("permission_policy")) {
                        None => Permission::AlwaysAllow,
                        Some(p) => policy(Some(p)).ok_or_else(|| {
                            err(
                                &field(".default_config.permission_policy"),
                                "unknown policy type",
                            )
                        })?,
                    };
                    let configs = t
                        .get("configs")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for name in SANDBOX_TOOLS {
                        let c = configs
                            .iter()
                            .find(|c| c.get("name").and_then(Value::as_str) == Some(name));
                        let enabled = c
                            .and_then(|c| c.get("enabled"))
                            .and_then(Value::as_bool)
                            .unwrap_or(default_enabled);
                        if !enabled {
                            continue;
                        }
                        let permission = match c.and_then(|c| c.get("permission_policy")) {
                            None => default_policy,
                            Some(p) => policy(Some(p)).ok_or_else(|| {
                                err(
                                    &field(&format!(".configs[{name}].permission_policy")),
                                    "unknown policy type",
                                )
                            })?,
                        };
                        if let Some(definition) = builtin_definition(name) {
                            tools.push(ToolSpec {
                                kind: ToolKind::Sandbox,
                                permission,
                                definition,
                            });
                        }
                    }
                }
                Some("custom") => {
                    let name = t
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| err(&field(".name"), "missing"))?;
                    let schema = t
                        .get("input_schema")
                        .filter(|s| s.is_object())
                        .cloned()
                        .ok_or_else(|| err(&field(".input_schema"), "missing or not an object"))?;
                    tools.push(ToolSpec {
                        kind: ToolKind::Custom,
                        permission: Permission::AlwaysAllow,
                        definition: model::ToolDefinition {
                            name: name.to_owned(),
                            description: t
                                .get("description")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            input_schema: schema,
                            cache_control: None,
                        },
                    });
                }
                Some("mcp_toolset") => {
                    let server = t
                        .get("mcp_server_name")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| err(&field(".mcp_server_name"), "missing or empty"))?;
                    if !servers.iter().any(|(n, _)| n == server) {
                        return Err(err(
                            &field(".mcp_server_name"),
                            &format!("no server named {server} in agent.mcp_servers"),
                        ));
                    }
                    if toolsets.iter().any(|(n, _)| n == server) {
                        return Err(err(
                            &field(".mcp_server_name"),
                            &format!("server {server} has two mcp_toolsets"),
                        ));
                    }
                    let default = t.get("default_config");
                    let default_enabled = default
                        .and_then(|d| d.get("enabled"))
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    let default_permission = match default.and_then(|d| d.get("permission_policy"))
                    {
                        None | Some(Value::Null) => Permission::AlwaysAsk,
                        Some(p) => policy(Some(p)).ok_or_else(|| {
                            err(
                                &field(".default_config.permission_policy"),
                                "unknown policy type",
                            )
                        })?,
                    };
                    let raw_configs = match t.get("configs") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(a)) => a.clone(),
                        Some(_) => return Err(err(&field(".configs"), "not an array")),
                    };
                    let mut configs = Vec::new();
                    for (j, c) in raw_configs.iter().enumerate() {
                        let name = c
                            .get("name")
                            .and_then(Value::as_str)
                            .filter(|n| !n.is_empty())
                            .ok_or_else(|| {
                                err(&field(&format!(".configs.{j}.name")), "missing or empty")
                            })?;
                        let permission = match c.get("permission_policy") {
                            None | Some(Value::Null) => None,
                            Some(p) => Some(policy(Some(p)).ok_or_else(|| {
                                err(
                                    &field(&format!(".configs.{j}.permission_policy")),
                                    "unknown policy type",
                                )
                            })?),
                        };
                        configs.push(McpToolConfig {
                            name: name.to_owned(),
                            enabled: c.get("enabled").and_then(Value::as_bool),
                            permission,
                        });
                    }
                    toolsets.push((
                        server.to_owned(),
                        McpToolset {
                            default_enabled,
                            default_permission,
                            configs,
                        },
                    ));
                }
                _ => return Err(err(&field(".type"), "unknown tool type")),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &tools {
            if !seen.insert(t.definition.name.clone()) {
                return Err(err(
                    "agent.tools",
                    &format!("tool name {} is defined twice", t.definition.name),
                ));
            }
        }
        let environment_id = body
            .get("environment_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let resources = body
            .get("resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let vault_ids = body
            .get("vault_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut mcp_servers = Vec::new();
        for (name, url) in servers {
            match toolsets.iter().position(|(n, _)| *n == name) {
                Some(p) => mcp_servers.push(McpServerConfig {
                    name,
                    url,
                    toolset: toolsets.swap_remove(p).1,
                }),
                None => tracing::warn!(
                    session_id,
                    mcp_server_name = %name,
                    "MCP server without an mcp_toolset; its tools are not offered"
                ),
            }
        }
        Ok(Self {
            model,
            system,
            tools,
            environment_id,
            resources,
            vault_ids,
            mcp_servers,
        })
    }

    /// The tool named `name`, if the session has it.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.definition.name == name)
    }

    /// The MCP server named `name`, if the session has it enabled.
    pub fn mcp_server(&self, name: &str) -> Option<&McpServerConfig> {
        self.mcp_servers.iter().find(|s| s.name == name)
    }

    /// Whether any tool needs a sandbox.
    pub fn needs_sandbox(&self) -> bool {
        self.tools.iter().any(|t| t.kind == ToolKind::Sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_system_toolset_policies_and_custom_tools() {
        let body = json!({
            "environment_id": "env_1",
            "agent": {
                "model": {"id": "claude-x", "speed": "standard"},
                "system": "be brief",
                "tools": [
                    {"type": "agent_toolset_20260401",
                     "default_config": {"enabled": true, "permission_policy": {"type": "always_allow"}},
                     "configs": [
                        {"type": "bash", "name": "bash", "enabled": true, "permission_policy": {"type": "always_ask"}},
                        {"type": "grep", "name": "grep", "enabled": false, "permission_policy": {"type": "always_allow"}}
                     ]},
                    {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}
                ]
            }
        });
        let c = AgentConfig::from_session("s", &body).unwrap();
        assert_eq!(c.model, "claude-x");
        assert_eq!(c.system.as_deref(), Some("be brief"));
        assert_eq!(c.environment_id.as_deref(), Some("env_1"));
        let names: Vec<_> = c.tools.iter().map(|t| t.definition.name.as_str()).collect();
        assert_eq!(names, ["bash", "read", "write", "edit", "glob", "lookup"]);
        assert_eq!(c.tool("bash").unwrap().permission, Permission::AlwaysAsk);
        assert_eq!(c.tool("read").unwrap().permission, Permission::AlwaysAllow);
        assert_eq!(c.tool("lookup").unwrap().kind, ToolKind::Custom);
        assert!(c.needs_sandbox());
    }

    #[test]
    fn reads_mcp_servers_toolsets_and_overrides() {
        let body = json!({"agent": {"model": "m",
        "mcp_servers": [
            {"type": "url", "name": "wiki", "url": "https://wiki.internal/mcp"},
            {"type": "url", "name": "tickets", "url": "https://t.internal/mcp"},
            {"type": "url", "name": "unused", "url": "https://u.internal/mcp"}
        ],
        "tools": [
            {"type": "mcp_toolset", "mcp_server_name": "tickets"},
            {"type": "mcp_toolset", "mcp_server_name": "wiki",
             "default_config": {"enabled": true, "permission_policy": {"type": "always_allow"}},
             "configs": [
                {"name": "delete_page", "permission_policy": {"type": "always_ask"}},
                {"name": "admin", "enabled": false}
             ]}
        ]}});
        let c = AgentConfig::from_session("s", &body).unwrap();
        let names: Vec<_> = c.mcp_servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["wiki", "tickets"],
            "mcp_servers order; no toolset, not kept"
        );
        assert!(c.tools.is_empty() && !c.needs_sandbox());
        let wiki = c.mcp_server("wiki").unwrap();
        assert_eq!(wiki.url, "https://wiki.internal/mcp");
        assert_eq!(
            wiki.toolset.permission("search"),
            Some(Permission::AlwaysAllow)
        );
        assert_eq!(
            wiki.toolset.permission("delete_page"),
            Some(Permission::AlwaysAsk)
        );
        assert_eq!(wiki.toolset.permission("admin"), None);
        // The MCP default policy is always_ask.
        let t = c.mcp_server("tickets").unwrap();
        assert_eq!(
            t.toolset.permission("anything"),
            Some(Permission::AlwaysAsk)
        );
        // Disabled by default, one tool enabled.
        let body = json!({"agent": {"model": "m",
            "mcp_servers": [{"type": "url", "name": "w", "url": "https://w/mcp"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "w",
                "default_config": {"enabled": false},
                "configs": [{"name": "one", "enabled": true, "permission_policy": {"type": "auto"}}]}]}});
        let c = AgentConfig::from_session("s", &body).unwrap();
        let w = c.mcp_server("w").unwrap();
        assert_eq!(w.toolset.permission("one"), Some(Permission::AutoAllow));
        assert_eq!(w.toolset.permission("two"), None);
    }

    #[test]
    fn mcp_errors_name_the_field() {
        let field = |agent: Value| {
            AgentConfig::from_session("s", &json!({ "agent": agent }))
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(
                json!({"model": "m", "tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]})
            ),
            "agent.tools.0.mcp_server_name"
        );
        assert_eq!(
            field(json!({"model": "m", "mcp_servers": [{"type": "url", "name": "a"}]})),
            "agent.mcp_servers.0.url"
        );
        assert_eq!(
            field(json!({"model": "m", "mcp_servers": [
                {"type": "url", "name": "a", "url": "https://a"},
                {"type": "url", "name": "a", "url": "https://b"}]})),
            "agent.mcp_servers.1.name"
        );
        assert_eq!(
            field(
                json!({"model": "m", "mcp_servers": [{"type": "url", "name": "a", "url": "https://a"}],
                "tools": [{"type": "mcp_toolset", "mcp_server_name": "a",
                    "configs": [{"name": "t", "permission_policy": {"type": "sometimes"}}]}]})
            ),
            "agent.tools.0.configs.0.permission_policy"
        );
        assert_eq!(
            field(
                json!({"model": "m", "mcp_servers": [{"type": "url", "name": "a", "url": "https://a"}],
                "tools": [{"type": "mcp_toolset", "mcp_server_name": "a"},
                          {"type": "mcp_toolset", "mcp_server_name": "a"}]})
            ),
            "agent.tools.1.mcp_server_name"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = AgentConfig::from_session("s", &json!({"agent": {}})).unwrap_err();
        assert_eq!(e.field, "agent.model");
        let e = AgentConfig::from_session(
            "s",
            &json!({"agent": {"model": "m", "tools": [{"type": "custom", "name": "x"}]}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "agent.tools.0.input_schema");
        assert!(e.to_string().contains("session s"));
        let c = AgentConfig::from_session("s", &json!({"agent": {"model": "m"}})).unwrap();
        assert!(c.tools.is_empty() && !c.needs_sandbox());
    }
}
