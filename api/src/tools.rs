//! Agent configuration on the API side: the model, the tools and their
//! permission policies, validated and normalized into the published shapes
//! the agent object (and every session's agent snapshot) carries. The
//! harness reads these snapshots and enforces the policies at run time.
//!
//! - `agent_toolset_20260401`: `default_config` and per-tool `configs`
//!   (`bash`, `read`, `write`, `edit`, `glob`, `grep`, `web_fetch`,
//!   `web_search`), each with `enabled` and a `permission_policy` of
//!   `always_allow`, `always_ask` or `auto`. Normalized with every default
//!   filled in, so the snapshot says exactly what the harness will do.
//! - `custom`: `name` (1–128 of `[A-Za-z0-9_-]`), `description`,
//!   `input_schema` (a JSON Schema object). Answered by the client.
//! - `mcp_toolset`: `mcp_server_name` (a server of the agent's
//!   `mcp_servers`; see `mcp.rs`), `default_config` and per-tool `configs`
//!   (`name` 1–128 characters, as the server names its tool), each with
//!   `enabled` (default true) and a `permission_policy` (default
//!   `always_ask`, as the hosted service does for MCP toolsets). Normalized
//!   with every default filled in; its tools are listed from the server at
//!   run time, so a config may name a tool the server does not (yet) have.
//!
//! At most 256 tools across all toolsets: `tools` entries, and the tools
//! they name (custom tools and per-tool configs), are counted.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::fields::{join, or_list, type_name, Obj};
use session_store::PermissionPolicy;

/// The toolset's type name.
pub(crate) const TOOLSET: &str = "agent_toolset_20260401";

/// Tools of the toolset, in published order.
const TOOLSET_TOOLS: [&str; 8] = [
    "bash",
    "edit",
    "read",
    "write",
    "glob",
    "grep",
    "web_fetch",
    "web_search",
];

/// Most tools across all toolsets (the SDK's limit).
const MAX_TOOLS: usize = 256;

/// Longest MCP tool name in a toolset's `configs`.
const MAX_MCP_TOOL_NAME_CHARS: usize = 128;

/// The type name of an MCP toolset entry.
pub(crate) const MCP_TOOLSET: &str = "mcp_toolset";

/// Validates a permission policy object.
fn policy(path: &str, v: &Value) -> Result<Value, ApiError> {
    let o = Obj::new(path, v)?;
    o.only(&["type"])?;
    match PermissionPolicy::parse(o.req_str("type")?) {
        PermissionPolicy::Unknown(other) => Err(ApiError::invalid(
            &o.path("type"),
            format!(
                "unknown permission policy {other:?}; expected {}",
                known_policies()
            ),
        )),
        known => Ok(json!({ "type": known })),
    }
}

/// `always_allow, always_ask or auto`.
fn known_policies() -> String {
    or_list(PermissionPolicy::KNOWN.iter().map(PermissionPolicy::as_str))
}

fn toolset(path: &str, o: &Obj<'_>) -> Result<Value, ApiError> {
    o.only(&["type", "default_config", "configs"])?;
    let (mut enabled, mut default_policy) = (true, json!({"type": PermissionPolicy::AlwaysAllow}));
    if let Some(d) = o.opt_obj("default_config")? {
        d.only(&["enabled", "permission_policy"])?;
        if let Some(e) = d.opt_bool("enabled")? {
            enabled = e;
        }
        if let Some(p) = d.get("permission_policy") {
            default_policy = policy(&d.path("permission_policy"), p)?;
        }
    }
    let mut configs = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in o.opt_array("configs")?.into_iter().flatten().enumerate() {
        let cpath = join(&join(path, "configs"), &i.to_string());
        let c = Obj::new(&cpath, c)?;
        let name = c.req_str("name")?;
        if !TOOLSET_TOOLS.contains(&name) {
            return Err(ApiError::invalid(
                &c.path("name"),
                format!(
                    "unknown tool {name:?}; expected one of {}",
                    TOOLSET_TOOLS.join(", ")
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(ApiError::invalid(
                &c.path("name"),
                format!("tool {name} is configured twice"),
            ));
        }
        let extra: &[&str] = match name {
            "web_fetch" => &[
                "allowed_domains",
                "blocked_domains",
                "max_content_tokens",
                "url_sources",
            ],
            "web_search" => &["allowed_domains", "blocked_domains", "user_location"],
            _ => &[],
        };
        let mut allowed = vec!["type", "name", "enabled", "permission_policy"];
        allowed.extend_from_slice(extra);
        c.only(&allowed)?;
        if let Some(t) = c.opt_str("type")? {
            if t != name {
                return Err(ApiError::invalid(
                    &c.path("type"),
                    format!("must equal the name {name:?}"),
                ));
            }
        }
        let mut out = Map::new();
        out.insert("type".into(), json!(name));
        out.insert("name".into(), json!(name));
        out.insert(
            "enabled".into(),
            json!(c.opt_bool("enabled")?.unwrap_or(enabled)),
        );
        let p = match c.get("permission_policy") {
            Some(p) => policy(&c.path("permission_policy"), p)?,
            None => default_policy.clone(),
        };
        out.insert("permission_policy".into(), p);
        for k in extra {
            if let Some(v) = c.get(k) {
                out.insert((*k).to_owned(), v.clone());
            }
        }
        configs.push(Value::Object(out));
    }
    Ok(json!({
        "type": TOOLSET,
        "default_config": {"enabled": enabled, "permission_policy": default_policy},
        "configs": configs,
    }))
}

/// `{type: "mcp_toolset", mcp_server_name, default_config?, configs?}`,
/// normalized to the resolved form (`configs` and `default_config` always
/// present, every default filled in).
fn mcp_toolset(path: &str, o: &Obj<'_>) -> Result<Value, ApiError> {
    o.only(&["type", "mcp_server_name", "default_config", "configs"])?;
    let server = o.req_str("mcp_server_name")?;
    crate::mcp::check_server_name(&o.path("mcp_server_name"), server)?;
    let (mut enabled, mut default_policy) = (true, json!({"type": PermissionPolicy::AlwaysAsk}));
    if let Some(d) = o.opt_obj("default_config")? {
        d.only(&["enabled", "permission_policy"])?;
        if let Some(e) = d.opt_bool("enabled")? {
            enabled = e;
        }
        if let Some(p) = d.get("permission_policy") {
            default_policy = policy(&d.path("permission_policy"), p)?;
        }
    }
    let mut configs = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in o.opt_array("configs")?.into_iter().flatten().enumerate() {
        let c = Obj::new(&join(&join(path, "configs"), &i.to_string()), c)?;
        c.only(&["name", "enabled", "permission_policy"])?;
        let name = c.req_str("name")?;
        if name.is_empty() || name.chars().count() > MAX_MCP_TOOL_NAME_CHARS {
            return Err(ApiError::invalid(
                &c.path("name"),
                format!("must be 1 to {MAX_MCP_TOOL_NAME_CHARS} characters"),
            ));
        }
        if !seen.insert(name) {
            return Err(ApiError::invalid(
                &c.path("name"),
                format!("tool {name:?} is configured twice"),
            ));
        }
        let p = match c.get("permission_policy") {
            Some(p) => policy(&c.path("permission_policy"), p)?,
            None => default_policy.clone(),
        };
        configs.push(json!({
            "name": name,
            "enabled": c.opt_bool("enabled")?.unwrap_or(enabled),
            "permission_policy": p,
        }));
    }
    Ok(json!({
        "type": MCP_TOOLSET,
        "mcp_server_name": server,
        "default_config": {"enabled": enabled, "permission_policy": default_policy},
        "configs": configs,
    }))
}

fn custom(o: &Obj<'_>) -> Result<Value, ApiError> {
    o.only(&["type", "name", "description", "input_schema"])?;
    let name = o.req_str("name")?;
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(ApiError::invalid(
            &o.path("name"),
            "must be 1 to 128 characters of letters, digits, _ and -",
        ));
    }
    let description = o.req_str("description")?;
    let schema = o
        .get("input_schema")
        .ok_or_else(|| ApiError::invalid(&o.path("input_schema"), "field required"))?;
    let s = Obj::new(&o.path("input_schema"), schema)?;
    if s.req_str("type")? != "object" {
        return Err(ApiError::invalid(&s.path("type"), "must be \"object\""));
    }
    if let Some(p) = s.get("properties") {
        if !p.is_object() {
            return Err(ApiError::invalid(
                &s.path("properties"),
                format!("expected an object, got {}", type_name(p)),
            ));
        }
    }
    if let Some(r) = s.opt_array("required")? {
        if let Some(i) = r.iter().position(|v| !v.is_string()) {
            return Err(ApiError::invalid(
                &join(&s.path("required"), &i.to_string()),
                "expected a string",
            ));
        }
    }
    Ok(json!({
        "type": "custom",
        "name": name,
        "description": description,
        "input_schema": schema,
    }))
}

/// Validates `tools` and returns them normalized.
pub(crate) fn tools(path: &str, value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            path,
            format!("expected an array, got {}", type_name(value)),
        ));
    };
    if items.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            path,
            format!("at most {MAX_TOOLS} tools are allowed across all toolsets"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut has_toolset = false;
    for (i, item) in items.iter().enumerate() {
        let ipath = join(path, &i.to_string());
        let o = Obj::new(&ipath, item)?;
        let normalized = match o.req_str("type")? {
            TOOLSET => {
                if has_toolset {
                    return Err(ApiError::invalid(
                        &o.path("type"),
                        "the agent toolset is included twice",
                    ));
                }
                has_toolset = true;
                toolset(&ipath, &o)?
            }
            "custom" => custom(&o)?,
            MCP_TOOLSET => mcp_toolset(&ipath, &o)?,
            other => {
                return Err(ApiError::invalid(
                    &o.path("type"),
                    format!(
                        "unknown tool type {other:?}; expected {TOOLSET}, {MCP_TOOLSET} or custom"
                    ),
                ))
            }
        };
        out.push(normalized);
    }
    // Entries that name no tool count once, the others once per tool named.
    let named: usize = out
        .iter()
        .map(|t| t["configs"].as_array().map_or(1, |c| c.len().max(1)))
        .sum();
    if named > MAX_TOOLS {
        return Err(ApiError::invalid(
            path,
            format!("at most {MAX_TOOLS} tools are allowed across all toolsets, got {named}"),
        ));
    }
    // Names the model sees must be unique: enabled toolset tools, then
    // custom tools.
    let mut names: HashSet<&str> = HashSet::new();
    for t in out.iter().filter(|t| t["type"] == TOOLSET) {
        let default_on = t["default_config"]["enabled"].as_bool().unwrap_or(true);
        for name in TOOLSET_TOOLS {
            let cfg = t["configs"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == name));
            if cfg.map_or(default_on, |c| c["enabled"].as_bool().unwrap_or(default_on)) {
                names.insert(name);
            }
        }
    }
    for (i, t) in out
        .iter()
        .enumerate()
        .filter(|(_, t)| t["type"] == "custom")
    {
        let name = t["name"].as_str().unwrap_or_default();
        if !names.insert(name) {
            return Err(ApiError::invalid(
                &join(&join(path, &i.to_string()), "name"),
                format!("tool name {name} is already used by another tool"),
            ));
        }
    }
    Ok(out)
}

/// Validates `model` (a string or a model config) into the published
/// object form `{id, effort?, speed?, inference_geo?}`.
pub(crate) fn model(path: &str, value: &Value) -> Result<Value, ApiError> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(json!({ "id": s })),
        Value::String(_) => Err(ApiError::invalid(path, "must not be empty")),
        Value::Object(_) => {
            let o = Obj::new(path, value)?;
            o.only(&["id", "effort", "speed", "inference_geo"])?;
            let mut out = Map::new();
            out.insert("id".into(), json!(o.req_nonempty("id")?));
            if let Some(e) = o.get("effort") {
                let level = match e {
                    Value::String(s) => s.as_str(),
                    Value::Object(_) => {
                        let eo = Obj::new(&o.path("effort"), e)?;
                        eo.only(&["type"])?;
                        eo.req_str("type")?
                    }
                    other => {
                        return Err(ApiError::invalid(
                            &o.path("effort"),
                            format!("expected a string or an object, got {}", type_name(other)),
                        ))
                    }
                };
                if !["low", "medium", "high", "xhigh", "max"].contains(&level) {
                    return Err(ApiError::invalid(
                        &o.path("effort"),
                        format!(
                            "unknown effort {level:?}; expected low, medium, high, xhigh or max"
                        ),
                    ));
                }
                out.insert("effort".into(), json!({ "type": level }));
            }
            if let Some(s) = o.opt_str("speed")? {
                if s != "standard" && s != "fast" {
                    return Err(ApiError::invalid(
                        &o.path("speed"),
                        "expected standard or fast",
                    ));
                }
                out.insert("speed".into(), json!(s));
            }
            if let Some(g) = o.opt_str("inference_geo")? {
                out.insert("inference_geo".into(), json!(g));
            }
            Ok(Value::Object(out))
        }
        other => Err(ApiError::invalid(
            path,
            format!("expected a string or an object, got {}", type_name(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolset_is_normalized_with_policies() {
        let t = tools(
            "tools",
            Some(&json!([{"type": TOOLSET,
                "default_config": {"permission_policy": {"type": "always_ask"}},
                "configs": [{"name": "read", "permission_policy": {"type": "always_allow"}}, {"name": "bash", "enabled": false}]},
              {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}])),
        )
        .unwrap();
        assert_eq!(
            t[0]["default_config"],
            json!({"enabled": true, "permission_policy": {"type": "always_ask"}})
        );
        assert_eq!(
            t[0]["configs"][0],
            json!({"type": "read", "name": "read", "enabled": true, "permission_policy": {"type": "always_allow"}})
        );
        assert_eq!(
            t[0]["configs"][1]["permission_policy"],
            json!({"type": "always_ask"})
        );
        assert_eq!(t[0]["configs"][1]["enabled"], json!(false));
        assert_eq!(t[1]["name"], json!("lookup"));
    }

    #[test]
    fn bad_tools_name_the_field() {
        let cases = [
            (json!([{"type": "nope"}]), "tools.0.type"),
            (
                json!([{"type": TOOLSET, "configs": [{"name": "rm"}]}]),
                "tools.0.configs.0.name",
            ),
            (
                json!([{"type": TOOLSET, "configs": [{"name": "bash", "permission_policy": {"type": "maybe"}}]}]),
                "tools.0.configs.0.permission_policy.type",
            ),
            (
                json!([{"type": TOOLSET, "default_config": {"enabled": "yes"}}]),
                "tools.0.default_config.enabled",
            ),
            (
                json!([{"type": "custom", "name": "x y", "description": "d", "input_schema": {"type": "object"}}]),
                "tools.0.name",
            ),
            (
                json!([{"type": "custom", "name": "x", "description": "d"}]),
                "tools.0.input_schema",
            ),
            (
                json!([{"type": "custom", "name": "x", "input_schema": {"type": "object"}}]),
                "tools.0.description",
            ),
            (
                json!([{"type": "custom", "name": "x", "description": "d", "input_schema": {"type": "string"}}]),
                "tools.0.input_schema.type",
            ),
            (json!([{"type": "mcp_toolset"}]), "tools.0.mcp_server_name"),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": ""}]),
                "tools.0.mcp_server_name",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "configs": [{"name": ""}]}]),
                "tools.0.configs.0.name",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "configs": [{"name": "x".repeat(129)}]}]),
                "tools.0.configs.0.name",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "configs": [{"name": "a"}, {"name": "a"}]}]),
                "tools.0.configs.1.name",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "configs": [{"name": "a", "type": "a"}]}]),
                "tools.0.configs.0.type",
            ),
            (
                json!([{"type": "custom", "name": "x", "description": "d", "input_schema": {"type": "object"}},
                       {"type": "mcp_toolset", "mcp_server_name": "m", "default_config": {"permission_policy": {"type": "never"}}}]),
                "tools.1.default_config.permission_policy.type",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "default_config": {"enabled": 1}}]),
                "tools.0.default_config.enabled",
            ),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "m", "server_url": "https://x/"}]),
                "tools.0.server_url",
            ),
            (
                json!([{"type": TOOLSET}, {"type": "custom", "name": "bash", "description": "d", "input_schema": {"type": "object"}}]),
                "tools.1.name",
            ),
            (
                json!([{"type": "custom", "name": "bash", "description": "d", "input_schema": {"type": "object"}}, {"type": TOOLSET}]),
                "tools.0.name",
            ),
            (json!({"type": TOOLSET}), "tools"),
        ];
        for (v, field) in cases {
            let e = tools("tools", Some(&v)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}:")), "{v}: {e}");
        }
        // a custom tool may reuse the name of a disabled toolset tool
        tools(
            "tools",
            Some(&json!([{"type": TOOLSET, "configs": [{"name": "grep", "enabled": false}]},
                {"type": "custom", "name": "grep", "description": "d", "input_schema": {"type": "object"}}])),
        )
        .unwrap();
    }

    #[test]
    fn mcp_toolsets_resolve_with_always_ask_by_default() {
        let t = tools(
            "tools",
            Some(&json!([{"type": "mcp_toolset", "mcp_server_name": "wiki",
                "configs": [{"name": "search", "permission_policy": {"type": "always_allow"}},
                            {"name": "delete_page", "enabled": false},
                            {"name": "edit_page", "permission_policy": {"type": "auto"}}]},
              {"type": "mcp_toolset", "mcp_server_name": "db",
               "default_config": {"enabled": false, "permission_policy": {"type": "always_allow"}}}])),
        )
        .unwrap();
        assert_eq!(
            t[0],
            json!({"type": "mcp_toolset", "mcp_server_name": "wiki",
                "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}},
                "configs": [
                    {"name": "search", "enabled": true, "permission_policy": {"type": "always_allow"}},
                    {"name": "delete_page", "enabled": false, "permission_policy": {"type": "always_ask"}},
                    {"name": "edit_page", "enabled": true, "permission_policy": {"type": "auto"}}]})
        );
        assert_eq!(
            t[1],
            json!({"type": "mcp_toolset", "mcp_server_name": "db",
                "default_config": {"enabled": false, "permission_policy": {"type": "always_allow"}},
                "configs": []})
        );
    }

    #[test]
    fn at_most_256_tools_across_all_toolsets() {
        let custom = |i: usize| json!({"type": "custom", "name": format!("t{i}"), "description": "d", "input_schema": {"type": "object"}});
        let mut many: Vec<Value> = (0..256).map(custom).collect();
        tools("tools", Some(&Value::Array(many.clone()))).unwrap();
        many.push(custom(256));
        assert!(tools("tools", Some(&Value::Array(many)))
            .unwrap_err()
            .to_string()
            .starts_with("tools: at most 256 tools"));
        // per-tool configs count as tools
        let configs: Vec<Value> = (0..200).map(|i| json!({"name": format!("m{i}")})).collect();
        let mut mixed: Vec<Value> = (0..57).map(custom).collect();
        mixed.push(json!({"type": "mcp_toolset", "mcp_server_name": "m", "configs": configs}));
        let e = tools("tools", Some(&Value::Array(mixed)))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "tools: at most 256 tools are allowed across all toolsets, got 257"
        );
    }

    #[test]
    fn models_normalize_to_objects() {
        assert_eq!(
            model("model", &json!("claude-x")).unwrap(),
            json!({"id": "claude-x"})
        );
        assert_eq!(
            model(
                "model",
                &json!({"id": "m", "effort": "high", "speed": "fast"})
            )
            .unwrap(),
            json!({"id": "m", "effort": {"type": "high"}, "speed": "fast"})
        );
        assert!(model("model", &json!({"id": "m", "effort": "extreme"}))
            .unwrap_err()
            .to_string()
            .starts_with("model.effort:"));
        assert!(model("model", &json!(3))
            .unwrap_err()
            .to_string()
            .starts_with("model:"));
        assert!(model("model", &json!({}))
            .unwrap_err()
            .to_string()
            .starts_with("model.id:"));
    }

    #[test]
    fn an_unknown_policy_lists_the_known_ones() {
        let e = policy("p", &json!({"type": "sometimes"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.type: unknown permission policy \"sometimes\"; expected always_allow, always_ask or auto"
        );
        assert_eq!(
            policy("p", &json!({"type": "auto"})).unwrap(),
            json!({"type": "auto"})
        );
    }
}
