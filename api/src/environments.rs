//! `/v1/environments`: create, retrieve, list, update, archive, delete.
//!
//! An environment names where sessions' tools run. In Airlock every
//! environment is `{"type": "self_hosted"}`: its sandboxes are provisioned
//! by the sandbox-agents enrolled for it (join tokens name the environment
//! id). `{"type": "cloud"}` is refused with a 400 naming `config.type`:
//! there is no Anthropic-run container pool behind Airlock. Names are
//! unique (409 when taken).

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use catalog::{CatalogError, EnvironmentQuery, EnvironmentRecord, NewEnvironment, Order};
use serde_json::{json, Map, Value};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{apply_metadata_patch, metadata, Obj, Patch};
use crate::ids::{new_id, rfc3339};
use crate::query::{ArchivableList, Query};
use crate::AppState;

const MAX_NAME_CHARS: usize = 256;

fn config(path: &str, value: Option<&Value>) -> Result<Value, ApiError> {
    let Some(value) = value else {
        return Ok(json!({"type": "self_hosted"}));
    };
    let o = Obj::new(path, value)?;
    match o.req_str("type")? {
        "self_hosted" => {
            o.only(&["type"])?;
            Ok(json!({"type": "self_hosted"}))
        }
        "cloud" => Err(ApiError::invalid(
            &o.path("type"),
            "cloud environments are not available in Airlock: sandboxes run on the sandbox-agents enrolled for \
             the environment; use {\"type\": \"self_hosted\"}",
        )),
        other => Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown environment type {other:?}; expected self_hosted"),
        )),
    }
}

fn scope(o: &Obj<'_>) -> Result<Option<&'static str>, ApiError> {
    match o.opt_str("scope")? {
        None => Ok(None),
        Some("organization") => Ok(Some("organization")),
        Some("account") => Err(ApiError::invalid(
            "scope",
            "account scope is not supported: every environment is visible to every API key",
        )),
        Some(other) => Err(ApiError::invalid(
            "scope",
            format!("unknown scope {other:?}; expected organization"),
        )),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Parses `POST /v1/environments` into the stored body.
pub(crate) fn parse_create(body: &Value) -> Result<(String, Value), ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["name", "config", "description", "metadata", "scope"])?;
    let name = o.req_str("name")?;
    check_name(name)?;
    let body = json!({
        "name": name,
        "config": config("config", o.get("config"))?,
        "description": o.opt_str("description")?,
        "metadata": metadata("metadata", o.get("metadata"))?,
        "scope": scope(&o)?,
    });
    Ok((name.to_owned(), body))
}

/// Applies `POST /v1/environments/{id}` to the stored body.
pub(crate) fn apply_update(current: &Value, body: &Value) -> Result<(String, Value), ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["name", "config", "description", "metadata", "scope"])?;
    let mut next = current.as_object().cloned().unwrap_or_default();
    if let Some(name) = o.opt_str("name")? {
        check_name(name)?;
        next.insert("name".into(), json!(name));
    }
    if let Some(c) = o.get("config") {
        next.insert("config".into(), config("config", Some(c))?);
    }
    match o.map_description()? {
        Patch::Keep => {}
        Patch::Clear => {
            next.insert("description".into(), Value::Null);
        }
        Patch::Set(d) => {
            next.insert("description".into(), json!(d));
        }
    }
    if let Some(patch) = o.get("metadata") {
        apply_metadata_patch(&mut next, patch, true)?;
    }
    if o.has("scope") {
        next.insert("scope".into(), json!(scope(&o)?));
    }
    let name = next
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((name, Value::Object(next)))
}

trait DescriptionPatch {
    fn map_description(&self) -> Result<Patch<String>, ApiError>;
}

impl DescriptionPatch for Obj<'_> {
    /// `description`: absent keeps, null clears, "" is stored as "".
    fn map_description(&self) -> Result<Patch<String>, ApiError> {
        if !self.has("description") {
            return Ok(Patch::Keep);
        }
        Ok(match self.opt_str("description")? {
            None => Patch::Clear,
            Some(d) => Patch::Set(d.to_owned()),
        })
    }
}

/// The published environment object.
pub(crate) fn render(r: &EnvironmentRecord) -> Value {
    let mut out: Map<String, Value> = r.body.as_object().cloned().unwrap_or_default();
    out.insert("type".into(), json!("environment"));
    out.insert("id".into(), json!(r.id));
    out.insert("name".into(), json!(r.name));
    out.insert("created_at".into(), json!(rfc3339(r.created_at)));
    out.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    out.insert("archived_at".into(), json!(r.archived_at.map(rfc3339)));
    Value::Object(out)
}

fn map_err(e: CatalogError, environment_id: &str) -> ApiError {
    match e {
        CatalogError::Archived { .. } => ApiError::invalid(
            "",
            format!("environment {environment_id} is archived and cannot change"),
        ),
        CatalogError::Conflict { id, .. } => ApiError::Conflict {
            message: format!("name: an environment named {id:?} already exists"),
        },
        other => other.into(),
    }
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (name, body) = parse_create(&body)?;
    let id = new_id("env");
    let record = s
        .state
        .catalog
        .create_environment(NewEnvironment {
            id: id.clone(),
            name,
            body,
        })
        .await
        .map_err(|e| map_err(e, &id))?;
    tracing::info!(environment_id = %record.id, "environment created");
    Ok(Json(render(&record)))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Query::parse(q.as_deref())?.only(&[])?;
    let record = s.state.catalog.get_environment(&id).await?;
    Ok(Json(render(&record)))
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let current = s.state.catalog.get_environment(&id).await?;
    let (name, next) = apply_update(&current.body, &body)?;
    if next == current.body && name == current.name {
        return Ok(Json(render(&current)));
    }
    let record = s
        .state
        .catalog
        .update_environment(&id, &name, next)
        .await
        .map_err(|e| map_err(e, &id))?;
    Ok(Json(render(&record)))
}

pub(crate) async fn archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = s.state.catalog.archive_environment(&id).await?;
    Ok(Json(render(&record)))
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.state.catalog.delete_environment(&id).await?;
    tracing::info!(environment_id = %id, "environment deleted");
    Ok(Json(json!({"id": id, "type": "environment_deleted"})))
}

pub(crate) async fn list(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let list = ArchivableList::parse(q.as_deref(), "environments")?;
    let page = s
        .state
        .catalog
        .list_environments(EnvironmentQuery {
            include_archived: list.include_archived,
            order: Order::Descending,
            after_position: list.after_position,
            limit: list.limit,
        })
        .await?;
    Ok(Json(list.respond(
        &page.items,
        page.has_more,
        |r| r.position,
        render,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_hosted_by_default_cloud_refused() {
        let (_, b) = parse_create(&json!({"name": "e"})).unwrap();
        assert_eq!(b["config"], json!({"type": "self_hosted"}));
        let e = parse_create(&json!({"name": "e", "config": {"type": "cloud"}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.type: cloud environments are not available"),
            "{e}"
        );
        assert!(parse_create(&json!({"name": ""}))
            .unwrap_err()
            .to_string()
            .starts_with("name:"));
        assert!(parse_create(&json!({"name": "e", "scope": "account"}))
            .unwrap_err()
            .to_string()
            .starts_with("scope:"));
    }

    #[test]
    fn update_patches_metadata_and_description() {
        let (_, cur) = parse_create(
            &json!({"name": "e", "description": "d", "metadata": {"a": "1", "b": "2"}}),
        )
        .unwrap();
        let (name, next) = apply_update(
            &cur,
            &json!({"metadata": {"a": "", "c": "3"}, "description": ""}),
        )
        .unwrap();
        assert_eq!(name, "e");
        assert_eq!(next["metadata"], json!({"b": "2", "c": "3"}));
        assert_eq!(next["description"], json!(""));
        let (_, next) = apply_update(&cur, &json!({"description": null, "name": "f"})).unwrap();
        assert_eq!(next["description"], Value::Null);
        assert_eq!(next["name"], json!("f"));
    }
}
