//! `/v1/agents`: create, retrieve (optionally a version), list, update (a
//! new immutable version), archive, versions. The parser turns a request
//! into an [`AgentSpec`] (a validated, normalized agent body) or an update
//! applied to the latest version; the catalog stores the versions.
//!
//! `mcp_servers` and the `mcp_toolset` entries of `tools` are checked
//! together on the resulting body (`mcp.rs`): an update replacing one of
//! them must leave every server configured by exactly one toolset.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use catalog::{AgentQuery, AgentRecord, CatalogError, NewAgent, Order, VersionQuery};
use serde_json::{json, Map, Value};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{apply_metadata_patch, metadata, Obj, Patch};
use crate::ids::{new_id, rfc3339};
use crate::mcp;
use crate::query::{Cursor, Dir, Query};
use crate::tools;
use crate::AppState;

const MAX_SYSTEM_CHARS: usize = 100_000;
const MAX_NAME_CHARS: usize = 256;

/// A validated agent body, as stored for one version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentSpec(pub Value);

pub(crate) fn check_name(path: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(path, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

pub(crate) fn check_system(path: &str, s: &str) -> Result<(), ApiError> {
    if s.chars().count() > MAX_SYSTEM_CHARS {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_SYSTEM_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Fields Airlock does not support yet: refused unless empty or null.
fn unsupported(o: &Obj<'_>) -> Result<(), ApiError> {
    for (key, why) in [("skills", "skills are not supported by Airlock yet")] {
        match o.get(key) {
            None => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(Value::Array(_)) => return Err(ApiError::invalid(&o.path(key), why)),
            Some(other) => {
                return Err(ApiError::invalid(
                    &o.path(key),
                    format!("expected an array, got {}", crate::fields::type_name(other)),
                ))
            }
        }
    }
    if o.get("multiagent").is_some() {
        return Err(ApiError::invalid(
            &o.path("multiagent"),
            "multiagent is not supported by Airlock yet",
        ));
    }
    if let Some(e) = o.opt_obj("execution_identity")? {
        if e.req_str("type")? != "service_account" {
            return Err(ApiError::invalid(
                &e.path("type"),
                "only service_account is supported by Airlock",
            ));
        }
    }
    Ok(())
}

/// The fields of an agent a create or an update may carry.
const AGENT_FIELDS: [&str; 10] = [
    "name",
    "model",
    "description",
    "system",
    "tools",
    "metadata",
    "mcp_servers",
    "skills",
    "multiagent",
    "execution_identity",
];

/// Parses `POST /v1/agents`.
pub(crate) fn parse_create(body: &Value) -> Result<AgentSpec, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&AGENT_FIELDS)?;
    let name = o.req_str("name")?;
    check_name("name", name)?;
    let model = tools::model(
        "model",
        o.get("model")
            .ok_or_else(|| ApiError::invalid("model", "field required"))?,
    )?;
    let system = o.opt_str("system")?;
    if let Some(s) = system {
        check_system("system", s)?;
    }
    let description = o.opt_str("description")?;
    let tools = tools::tools("tools", o.get("tools"))?;
    let servers = mcp::servers("mcp_servers", o.get("mcp_servers"))?;
    mcp::check_references(&tools, "tools", &servers, "mcp_servers")?;
    let metadata = metadata("metadata", o.get("metadata"))?;
    unsupported(&o)?;
    Ok(AgentSpec(json!({
        "name": name,
        "description": description.filter(|d| !d.is_empty()),
        "model": model,
        "system": system.filter(|s| !s.is_empty()),
        "tools": tools,
        "mcp_servers": servers,
        "skills": [],
        "metadata": metadata,
        "execution_identity": {"type": "service_account"},
        "multiagent": null,
    })))
}

/// A parsed `POST /v1/agents/{id}`: the precondition and the change.
#[derive(Debug)]
pub(crate) struct AgentUpdate {
    /// `version`: the update applies only if this is the latest.
    pub expected_version: Option<u64>,
    body: Value,
}

/// Parses `POST /v1/agents/{id}` (validation that needs no stored state).
pub(crate) fn parse_update(body: Value) -> Result<AgentUpdate, ApiError> {
    let o = Obj::new("", &body)?;
    let mut allowed = AGENT_FIELDS.to_vec();
    allowed.push("version");
    o.only(&allowed)?;
    let expected_version = o.opt_u64("version")?;
    if expected_version == Some(0) {
        return Err(ApiError::invalid("version", "must be at least 1"));
    }
    unsupported(&o)?;
    Ok(AgentUpdate {
        expected_version,
        body,
    })
}

impl AgentUpdate {
    /// The new body: `current` with the update applied.
    pub(crate) fn apply(&self, current: &Value) -> Result<Value, ApiError> {
        let o = Obj::new("", &self.body)?;
        let mut next = current.as_object().cloned().unwrap_or_default();
        if o.has("name") {
            let name = o.req_str("name")?;
            check_name("name", name)?;
            next.insert("name".into(), json!(name));
        }
        if o.has("model") {
            let m = o
                .get("model")
                .ok_or_else(|| ApiError::invalid("model", "cannot be cleared"))?;
            next.insert("model".into(), tools::model("model", m)?);
        }
        match o.patch_str("description")? {
            Patch::Keep => {}
            Patch::Clear => {
                next.insert("description".into(), Value::Null);
            }
            Patch::Set(d) => {
                next.insert("description".into(), json!(d));
            }
        }
        match o.patch_str("system")? {
            Patch::Keep => {}
            Patch::Clear => {
                next.insert("system".into(), Value::Null);
            }
            Patch::Set(s) => {
                check_system("system", s)?;
                next.insert("system".into(), json!(s));
            }
        }
        if o.has("tools") {
            next.insert(
                "tools".into(),
                Value::Array(tools::tools("tools", o.get("tools"))?),
            );
        }
        if o.has("mcp_servers") {
            next.insert(
                "mcp_servers".into(),
                Value::Array(mcp::servers("mcp_servers", o.get("mcp_servers"))?),
            );
        }
        if o.has("tools") || o.has("mcp_servers") {
            mcp::check_references(
                next.get("tools")
                    .and_then(Value::as_array)
                    .map_or(&[], Vec::as_slice),
                "tools",
                next.get("mcp_servers")
                    .and_then(Value::as_array)
                    .map_or(&[], Vec::as_slice),
                "mcp_servers",
            )?;
        }
        if let Some(patch) = o.get("metadata") {
            apply_metadata_patch(&mut next, patch, false)?;
        }
        Ok(Value::Object(next))
    }
}

/// The published agent object of a stored version.
pub(crate) fn render(r: &AgentRecord) -> Value {
    let mut out: Map<String, Value> = r.body.as_object().cloned().unwrap_or_default();
    out.insert("type".into(), json!("agent"));
    out.insert("id".into(), json!(r.id));
    out.insert("version".into(), json!(r.version));
    out.insert("created_at".into(), json!(rfc3339(r.created_at)));
    out.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    out.insert("archived_at".into(), json!(r.archived_at.map(rfc3339)));
    Value::Object(out)
}

/// The agent snapshot a session carries (`BetaManagedAgentsSessionAgent`).
pub(crate) fn snapshot(r: &AgentRecord) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!("agent"));
    out.insert("id".into(), json!(r.id));
    out.insert("version".into(), json!(r.version));
    for key in [
        "name",
        "description",
        "model",
        "system",
        "tools",
        "mcp_servers",
        "skills",
        "execution_identity",
        "multiagent",
    ] {
        out.insert(key.into(), r.body.get(key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn not_found(e: CatalogError, agent_id: &str) -> ApiError {
    match e {
        CatalogError::NotFound { id, .. } => ApiError::NotFound {
            message: format!("agent {id} not found"),
        },
        CatalogError::Archived { .. } => ApiError::invalid(
            "",
            format!("agent {agent_id} is archived and cannot change"),
        ),
        other => other.into(),
    }
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let spec = parse_create(&body)?;
    let record = s
        .state
        .catalog
        .create_agent(NewAgent {
            id: new_id("agent"),
            body: spec.0,
        })
        .await?;
    tracing::info!(agent_id = %record.id, "agent created");
    Ok(Json(render(&record)))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&["version"])?;
    let version = q.u64("version")?;
    if version == Some(0) {
        return Err(ApiError::invalid("version", "must be at least 1"));
    }
    let record = s
        .state
        .catalog
        .get_agent(&agent_id, version)
        .await
        .map_err(|e| not_found(e, &agent_id))?;
    Ok(Json(render(&record)))
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let update = parse_update(body)?;
    let catalog = &s.state.catalog;
    // Optimistic: compute from the latest version, store as the next one;
    // without a caller precondition, retry when another update won.
    for _ in 0..8 {
        let current = catalog
            .get_agent(&agent_id, None)
            .await
            .map_err(|e| not_found(e, &agent_id))?;
        if let Some(v) = update.expected_version {
            if v != current.version {
                return Err(ApiError::Conflict {
                    message: format!(
                        "agent {agent_id}: version {v} is not the latest version ({})",
                        current.version
                    ),
                });
            }
        }
        if current.archived_at.is_some() {
            return Err(ApiError::invalid(
                "",
                format!("agent {agent_id} is archived and cannot change"),
            ));
        }
        let next = update.apply(&current.body)?;
        if next == current.body {
            return Ok(Json(render(&current)));
        }
        match catalog.update_agent(&agent_id, current.version, next).await {
            Ok(record) => {
                tracing::info!(agent_id = %record.id, version = record.version, "agent updated");
                return Ok(Json(render(&record)));
            }
            Err(CatalogError::Conflict { .. }) if update.expected_version.is_none() => continue,
            Err(CatalogError::Conflict { reason, .. }) => {
                return Err(ApiError::Conflict {
                    message: format!("agent {agent_id}: {reason}"),
                })
            }
            Err(e) => return Err(not_found(e, &agent_id)),
        }
    }
    Err(ApiError::Conflict {
        message: format!("agent {agent_id} is being updated concurrently; retry"),
    })
}

pub(crate) async fn archive(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = s
        .state
        .catalog
        .archive_agent(&agent_id)
        .await
        .map_err(|e| not_found(e, &agent_id))?;
    Ok(Json(render(&record)))
}

fn page_json(items: Vec<Value>, next: Option<String>) -> Json<Value> {
    Json(json!({"data": items, "next_page": next}))
}

pub(crate) async fn list(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&[
        "created_at[gte]",
        "created_at[lte]",
        "include_archived",
        "limit",
        "page",
    ])?;
    let limit = q.limit(20, 100)?;
    let cursor = q.cursor("agents", Dir::Desc)?;
    let page = s
        .state
        .catalog
        .list_agents(AgentQuery {
            include_archived: q.bool("include_archived")?.unwrap_or(false),
            created_at_gte: q.time("created_at[gte]")?,
            created_at_lte: q.time("created_at[lte]")?,
            order: Order::Descending,
            after_position: cursor.map(|c| c.at),
            limit,
        })
        .await?;
    let next = Cursor::next_desc(
        "agents",
        page.has_more,
        page.items.last().map(|r| r.position),
    );
    Ok(page_json(page.items.iter().map(render).collect(), next))
}

pub(crate) async fn versions(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&["limit", "page"])?;
    let limit = q.limit(20, 100)?;
    let listing = format!("agent_versions:{agent_id}");
    let cursor = q.cursor(&listing, Dir::Desc)?;
    let after_version = cursor.map(|c| u64::try_from(c.at).unwrap_or(0));
    let page = s
        .state
        .catalog
        .list_agent_versions(
            &agent_id,
            VersionQuery {
                order: Order::Descending,
                after_version,
                limit,
            },
        )
        .await
        .map_err(|e| not_found(e, &agent_id))?;
    let next = Cursor::next_desc(
        &listing,
        page.has_more,
        page.items
            .last()
            .map(|r| i64::try_from(r.version).unwrap_or(i64::MAX)),
    );
    Ok(page_json(page.items.iter().map(render).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_normalizes_and_refuses_unsupported_fields() {
        let spec = parse_create(&json!({"name": "a", "model": "m", "description": ""})).unwrap();
        assert_eq!(spec.0["model"], json!({"id": "m"}));
        assert_eq!(spec.0["description"], Value::Null);
        assert_eq!(
            spec.0["execution_identity"],
            json!({"type": "service_account"})
        );
        let err = |v: Value| parse_create(&v).unwrap_err().to_string();
        assert!(err(json!({"model": "m"})).starts_with("name: field required"));
        assert!(err(json!({"name": "a"})).starts_with("model: field required"));
        assert!(err(
            json!({"name": "a", "model": "m", "skills": [{"type": "anthropic", "skill_id": "x"}]})
        )
        .starts_with("skills:"));
        assert!(err(json!({"name": "a", "model": "m", "nme": 1})).starts_with("nme: unknown field"));
        assert!(
            err(json!({"name": "a", "model": "m", "multiagent": {"type": "coordinator"}}))
                .starts_with("multiagent:")
        );
        assert!(err(json!({"name": "a", "model": "m", "execution_identity": {"type": "aws_role", "role_arn": "x"}}))
            .starts_with("execution_identity.type:"));
    }

    fn wiki() -> Value {
        json!({"type": "url", "name": "wiki", "url": "https://wiki.internal/mcp"})
    }

    #[test]
    fn mcp_servers_need_their_toolsets() {
        let spec = parse_create(&json!({"name": "a", "model": "m",
            "mcp_servers": [wiki()],
            "tools": [{"type": "agent_toolset_20260401"}, {"type": "mcp_toolset", "mcp_server_name": "wiki"}]}))
        .unwrap();
        assert_eq!(spec.0["mcp_servers"], json!([wiki()]));
        assert_eq!(
            spec.0["tools"][1],
            json!({"type": "mcp_toolset", "mcp_server_name": "wiki", "configs": [],
                "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}}})
        );
        let err = |v: Value| parse_create(&v).unwrap_err().to_string();
        assert!(
            err(json!({"name": "a", "model": "m", "mcp_servers": [wiki()]}))
                .starts_with("mcp_servers.0.name: MCP server \"wiki\" is not referenced")
        );
        assert!(err(json!({"name": "a", "model": "m",
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki"}]}))
        .starts_with("tools.0.mcp_server_name: no MCP server named \"wiki\""));
        assert!(err(json!({"name": "a", "model": "m", "mcp_servers": [{"type": "url", "name": "x", "url": "file:///x"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]}))
        .starts_with("mcp_servers.0.url:"));
    }

    #[test]
    fn updates_replace_servers_and_tools_and_must_still_match() {
        let cur = parse_create(&json!({"name": "a", "model": "m", "mcp_servers": [wiki()],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki"}]}))
        .unwrap()
        .0;
        let up = |v: Value| parse_update(v).unwrap().apply(&cur);
        // both replaced together
        let db = json!({"type": "url", "name": "db", "url": "http://127.0.0.1:9/mcp"});
        let next = up(json!({"mcp_servers": [db],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "db", "configs": [{"name": "query"}]}]}))
        .unwrap();
        assert_eq!(next["mcp_servers"], json!([db]));
        assert_eq!(next["tools"][0]["configs"][0]["name"], json!("query"));
        // cleared together
        let next = up(json!({"mcp_servers": null, "tools": []})).unwrap();
        assert_eq!(next["mcp_servers"], json!([]));
        // one without the other
        assert!(up(json!({"mcp_servers": []}))
            .unwrap_err()
            .to_string()
            .starts_with(
                "tools.0.mcp_server_name: no MCP server named \"wiki\" (mcp_servers is empty)"
            ));
        assert!(up(json!({"tools": []}))
            .unwrap_err()
            .to_string()
            .starts_with("mcp_servers.0.name:"));
        // other fields leave them alone
        assert_eq!(
            up(json!({"name": "b"})).unwrap()["mcp_servers"],
            json!([wiki()])
        );
    }

    #[test]
    fn update_applies_patches() {
        let cur = parse_create(
            &json!({"name": "a", "model": "m", "system": "s", "metadata": {"k": "v", "x": "y"}}),
        )
        .unwrap()
        .0;
        let u =
            parse_update(json!({"system": null, "metadata": {"k": null, "n": "1"}, "name": "b"}))
                .unwrap();
        let next = u.apply(&cur).unwrap();
        assert_eq!(next["system"], Value::Null);
        assert_eq!(next["name"], json!("b"));
        assert_eq!(next["metadata"], json!({"x": "y", "n": "1"}));
        let same = parse_update(json!({"name": "a"}))
            .unwrap()
            .apply(&cur)
            .unwrap();
        assert_eq!(same, cur);
        assert!(parse_update(json!({"model": null}))
            .unwrap()
            .apply(&cur)
            .unwrap_err()
            .to_string()
            .starts_with("model:"));
        assert!(parse_update(json!({"version": 0}))
            .unwrap_err()
            .to_string()
            .starts_with("version:"));
    }
}
