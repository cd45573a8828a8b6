//! The session's configuration as the harness needs it, read from the
//! session record's body (the API's session object: the resolved `agent`
//! snapshot and `environment_id`).
//!
//! Tools: `agent_toolset_20260401` (the sandbox tools `bash`, `read`,
//! `write`, `edit`, `glob`, `grep`, each with its `permission_policy`) and
//! `custom` tools (answered by the client). `web_fetch`/`web_search` are
//! server tools of Anthropic's service and MCP toolsets go through a proxy
//! this harness does not have yet: both are left out of the model request.

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
    /// `vault_ids` of the session (passed to provisioning).
    pub vault_ids: Vec<String>,
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
                    tracing::warn!(
                        session_id,
                        index = i,
                        "mcp_toolset is not supported by the harness yet; ignored"
                    );
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
        Ok(Self {
            model,
            system,
            tools,
            environment_id,
            resources,
            vault_ids,
        })
    }

    /// The tool named `name`, if the session has it.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.definition.name == name)
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
