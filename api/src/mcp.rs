//! MCP servers in agent definitions: the `mcp_servers` entries
//! (`{type: "url", name, url}`) and the rule tying them to the
//! `mcp_toolset` entries of `tools`: every server is configured by exactly
//! one toolset, and every toolset names a defined server.
//!
//! A server entry carries no credential: the vault-bridge of the session's
//! environment picks one from the session's vaults by the server's URL
//! (`protocol::mcp::normalize_server_url`). The `mcp_toolset` entries
//! themselves are parsed with the other tools (`tools.rs`).

use std::collections::HashMap;

use protocol::mcp::{normalize_server_url, MCP_SERVER_NAME_MAX_LEN};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::fields::{join, type_name, Obj};

/// Most entries in `mcp_servers`.
pub(crate) const MAX_MCP_SERVERS: usize = 20;
/// Longest server URL.
const MAX_URL_CHARS: usize = 2048;

/// Checks an MCP server name (1–255 characters, not blank).
pub(crate) fn check_server_name(path: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(path, "must not be empty"));
    }
    if name.chars().count() > MCP_SERVER_NAME_MAX_LEN {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MCP_SERVER_NAME_MAX_LEN} characters"),
        ));
    }
    Ok(())
}

fn server(o: &Obj<'_>) -> Result<Value, ApiError> {
    let t = o.req_str("type")?;
    if t != "url" {
        return Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown MCP server type {t:?}; expected url"),
        ));
    }
    o.only(&["type", "name", "url"])?;
    let name = o.req_str("name")?;
    check_server_name(&o.path("name"), name)?;
    let url = o.req_str("url")?;
    if url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            &o.path("url"),
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    if url.trim() != url || normalize_server_url(url).is_none() {
        return Err(ApiError::invalid(
            &o.path("url"),
            "expected an http or https URL with a host and no userinfo",
        ));
    }
    Ok(json!({"type": "url", "name": name, "url": url}))
}

/// Validates `mcp_servers` (absent or null: none) and returns the entries
/// normalized to `{type, name, url}`.
pub(crate) fn servers(path: &str, value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            path,
            format!("expected an array, got {}", type_name(value)),
        ));
    };
    if items.len() > MAX_MCP_SERVERS {
        return Err(ApiError::invalid(
            path,
            format!(
                "at most {MAX_MCP_SERVERS} MCP servers are allowed, got {}",
                items.len()
            ),
        ));
    }
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ipath = join(path, &i.to_string());
        let s = server(&Obj::new(&ipath, item)?)?;
        if let Some(j) = out.iter().position(|o| o["name"] == s["name"]) {
            return Err(ApiError::invalid(
                &join(&ipath, "name"),
                format!(
                    "MCP server name {} is already used by {path}.{j}; names must be unique",
                    s["name"]
                ),
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// Checks that every `mcp_toolset` of `tools` names a server of `servers`,
/// that no server is configured twice, and that every server is
/// configured. The paths name the arrays in errors (`agent.tools`,
/// `mcp_servers`); `tools` and `servers` are normalized entries.
pub(crate) fn check_references(
    tools: &[Value],
    tools_path: &str,
    servers: &[Value],
    servers_path: &str,
) -> Result<(), ApiError> {
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    let mut configured: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tools.iter().enumerate() {
        if t["type"] != "mcp_toolset" {
            continue;
        }
        let name = t["mcp_server_name"].as_str().unwrap_or_default();
        let path = join(&join(tools_path, &i.to_string()), "mcp_server_name");
        if !names.contains(&name) {
            let known = if names.is_empty() {
                format!("{servers_path} is empty")
            } else {
                format!("{servers_path} defines {}", names.join(", "))
            };
            return Err(ApiError::invalid(
                &path,
                format!("no MCP server named {name:?} ({known}); add it to {servers_path}"),
            ));
        }
        if let Some(j) = configured.insert(name, i) {
            return Err(ApiError::invalid(
                &path,
                format!(
                    "MCP server {name:?} is already configured by {tools_path}.{j}; one mcp_toolset per server"
                ),
            ));
        }
    }
    for (k, name) in names.iter().enumerate() {
        if !configured.contains_key(name) {
            return Err(ApiError::invalid(
                &join(&join(servers_path, &k.to_string()), "name"),
                format!(
                    "MCP server {name:?} is not referenced by any mcp_toolset in {tools_path}; add \
                     {{\"type\": \"mcp_toolset\", \"mcp_server_name\": {name:?}}} to {tools_path}"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        servers("mcp_servers", Some(&v)).unwrap_err().to_string()
    }

    #[test]
    fn servers_are_normalized_and_bad_ones_name_the_field() {
        let s = servers(
            "mcp_servers",
            Some(
                &json!([{"type": "url", "name": "wiki", "url": "https://wiki.internal/mcp"},
                {"name": "db", "url": "http://10.0.0.5:8080/mcp", "type": "url"}]),
            ),
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                json!({"type": "url", "name": "wiki", "url": "https://wiki.internal/mcp"}),
                json!({"type": "url", "name": "db", "url": "http://10.0.0.5:8080/mcp"})
            ]
        );
        assert!(servers("mcp_servers", Some(&Value::Null))
            .unwrap()
            .is_empty());
        assert!(err(json!({})).starts_with("mcp_servers: expected an array"));
        assert!(
            err(json!([{"type": "sse", "name": "a", "url": "https://a/"}]))
                .starts_with("mcp_servers.0.type: unknown MCP server type \"sse\"")
        );
        assert!(err(json!([{"type": "url", "url": "https://a/"}]))
            .starts_with("mcp_servers.0.name: field required"));
        assert!(
            err(json!([{"type": "url", "name": " ", "url": "https://a/"}]))
                .starts_with("mcp_servers.0.name: must not be empty")
        );
        let long = "n".repeat(256);
        assert!(
            err(json!([{"type": "url", "name": long, "url": "https://a/"}]))
                .starts_with("mcp_servers.0.name: must be at most 255")
        );
        let ok = "n".repeat(255);
        servers(
            "mcp_servers",
            Some(&json!([{"type": "url", "name": ok, "url": "https://a/"}])),
        )
        .unwrap();
        assert!(
            err(json!([{"type": "url", "name": "a", "url": "ftp://a/"}]))
                .starts_with("mcp_servers.0.url:")
        );
        assert!(
            err(json!([{"type": "url", "name": "a", "url": "https://u:p@a/"}]))
                .starts_with("mcp_servers.0.url:")
        );
        assert!(err(json!([{"type": "url", "name": "a"}])).starts_with("mcp_servers.0.url:"));
        assert!(
            err(json!([{"type": "url", "name": "a", "url": "https://a/", "auth": "x"}]))
                .starts_with("mcp_servers.0.auth: unknown field")
        );
        assert_eq!(
            err(json!([{"type": "url", "name": "a", "url": "https://a/"},
                       {"type": "url", "name": "a", "url": "https://b/"}])),
            "mcp_servers.1.name: MCP server name \"a\" is already used by mcp_servers.0; names must be unique"
        );
        let many: Vec<Value> = (0..21)
            .map(|i| json!({"type": "url", "name": format!("s{i}"), "url": "https://a/"}))
            .collect();
        assert!(err(Value::Array(many)).starts_with("mcp_servers: at most 20"));
    }

    #[test]
    fn every_server_is_configured_exactly_once() {
        let servers = vec![
            json!({"type": "url", "name": "a", "url": "https://a/"}),
            json!({"type": "url", "name": "b", "url": "https://b/"}),
        ];
        let ts = |n: &str| json!({"type": "mcp_toolset", "mcp_server_name": n});
        let other = json!({"type": "custom", "name": "x"});
        check_references(
            &[ts("b"), other.clone(), ts("a")],
            "tools",
            &servers,
            "mcp_servers",
        )
        .unwrap();
        let e = |tools: &[Value]| {
            check_references(tools, "agent.tools", &servers, "agent.mcp_servers")
                .unwrap_err()
                .to_string()
        };
        assert!(e(&[ts("a")])
            .starts_with("agent.mcp_servers.1.name: MCP server \"b\" is not referenced"));
        assert!(e(&[ts("a"), other, ts("c"), ts("b")])
            .starts_with("agent.tools.2.mcp_server_name: no MCP server named \"c\" (agent.mcp_servers defines a, b)"));
        assert!(e(&[ts("a"), ts("b"), ts("a")]).starts_with(
            "agent.tools.2.mcp_server_name: MCP server \"a\" is already configured by agent.tools.0"
        ));
        assert!(check_references(&[ts("a")], "tools", &[], "mcp_servers")
            .unwrap_err()
            .to_string()
            .starts_with(
                "tools.0.mcp_server_name: no MCP server named \"a\" (mcp_servers is empty)"
            ));
    }
}
