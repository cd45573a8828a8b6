//! `/v1/vaults`: create, retrieve, list, update, archive, delete.
//!
//! A vault groups credentials (see `credentials.rs`); the catalog stores its
//! display name and metadata only. Its metadata key
//! `airlock.environment_id` ([`PIN_KEY`]) pins it to one environment: the
//! vault-bridges of that environment's sandbox-agents hold the secrets of
//! its credentials. The pin must name an existing, live environment, and
//! cannot move while the vault has live credentials (their secrets are with
//! the old environment's bridges). Archiving a vault archives its
//! credentials; deleting it deletes them; in both cases the bridges are told
//! to forget what was relayed for them.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use catalog::{CatalogError, NewVault, VaultQuery, VaultRecord};
use serde_json::{json, Map, Value};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{metadata, patch_metadata, Obj};
use crate::ids::{new_id, rfc3339};
use crate::query::{ArchivableList, Query};
use crate::relay::RelayTarget;
use crate::AppState;

/// Vault metadata key naming the environment whose vault-bridges hold the
/// vault's secrets.
pub(crate) const PIN_KEY: &str = "airlock.environment_id";
const MAX_DISPLAY_NAME_CHARS: usize = 255;

/// Checks a display name (1 to 255 characters).
pub(crate) fn display_name(path: &str, name: &str) -> Result<String, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(path, "must not be empty"));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// The environment a vault body is pinned to.
pub(crate) fn pinned_environment(body: &Value) -> Option<&str> {
    body["metadata"][PIN_KEY].as_str()
}

/// Parses `POST /v1/vaults` into the stored body.
pub(crate) fn parse_create(body: &Value) -> Result<Value, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["display_name", "metadata"])?;
    let name = display_name("display_name", o.req_str("display_name")?)?;
    Ok(json!({
        "display_name": name,
        "metadata": metadata("metadata", o.get("metadata"))?,
    }))
}

/// Applies `POST /v1/vaults/{id}` to the stored body.
pub(crate) fn apply_update(current: &Value, body: &Value) -> Result<Value, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["display_name", "metadata"])?;
    let mut next = current.as_object().cloned().unwrap_or_default();
    if o.has("display_name") {
        let Some(name) = o.opt_str("display_name")? else {
            return Err(ApiError::invalid(
                "display_name",
                "must be a string of 1 to 255 characters",
            ));
        };
        next.insert(
            "display_name".into(),
            json!(display_name("display_name", name)?),
        );
    }
    if let Some(patch) = o.get("metadata") {
        let cur = next
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let m = patch_metadata("metadata", &cur, patch, false)?;
        next.insert("metadata".into(), Value::Object(m));
    }
    Ok(Value::Object(next))
}

/// The published vault object.
pub(crate) fn render(r: &VaultRecord) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!("vault"));
    out.insert("id".into(), json!(r.id));
    out.insert("display_name".into(), r.body["display_name"].clone());
    out.insert(
        "metadata".into(),
        r.body.get("metadata").cloned().unwrap_or_else(|| json!({})),
    );
    out.insert("created_at".into(), json!(rfc3339(r.created_at)));
    out.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    out.insert("archived_at".into(), json!(r.archived_at.map(rfc3339)));
    Value::Object(out)
}

/// Checks that the pin of `body` (if any) names a live environment.
async fn check_pin(s: &AppState, body: &Value) -> Result<(), ApiError> {
    let Some(env_id) = pinned_environment(body) else {
        return Ok(());
    };
    let field = format!("metadata.{PIN_KEY}");
    let env = s
        .state
        .catalog
        .get_environment(env_id)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound { id, .. } => ApiError::NotFound {
                message: format!("{field}: environment {id} not found"),
            },
            other => other.into(),
        })?;
    if env.archived_at.is_some() {
        return Err(ApiError::invalid(
            &field,
            format!("environment {env_id} is archived"),
        ));
    }
    Ok(())
}

/// Maps a catalog error about vault `vault_id`.
pub(crate) fn map_err(e: CatalogError, vault_id: &str) -> ApiError {
    match e {
        CatalogError::Archived { .. } => ApiError::invalid(
            "",
            format!("vault {vault_id} is archived and cannot change"),
        ),
        other => other.into(),
    }
}

/// Tells the bridges of `vault`'s environment to forget what was relayed
/// for each of its live credentials (best effort: logged on failure).
async fn forget_credentials(s: &AppState, vault: &VaultRecord) -> Result<(), ApiError> {
    let Some(env) = pinned_environment(&vault.body) else {
        return Ok(());
    };
    let page = s
        .state
        .catalog
        .list_credentials(
            &vault.id,
            VaultQuery {
                limit: catalog::MAX_CREDENTIALS_PER_VAULT,
                ..VaultQuery::default()
            },
        )
        .await?;
    for c in page.items {
        crate::credentials::forget(
            s,
            &RelayTarget {
                environment_id: env.to_owned(),
                vault_id: vault.id.clone(),
                credential_id: c.id,
            },
        )
        .await;
    }
    Ok(())
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body = parse_create(&body)?;
    check_pin(&s, &body).await?;
    let id = new_id("vlt");
    let record = s
        .state
        .catalog
        .create_vault(NewVault {
            id: id.clone(),
            body,
        })
        .await
        .map_err(|e| map_err(e, &id))?;
    tracing::info!(vault_id = %record.id, environment_id = pinned_environment(&record.body), "vault created");
    Ok(Json(render(&record)))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Query::parse(q.as_deref())?.only(&[])?;
    let record = s.state.catalog.get_vault(&id).await?;
    Ok(Json(render(&record)))
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let current = s.state.catalog.get_vault(&id).await?;
    if current.archived_at.is_some() {
        return Err(map_err(
            CatalogError::Archived {
                kind: catalog::ResourceKind::Vault,
                id: id.clone(),
            },
            &id,
        ));
    }
    let next = apply_update(&current.body, &body)?;
    if next == current.body {
        return Ok(Json(render(&current)));
    }
    let (old_pin, new_pin) = (pinned_environment(&current.body), pinned_environment(&next));
    if old_pin != new_pin {
        check_pin(&s, &next).await?;
        let live = s
            .state
            .catalog
            .list_credentials(
                &id,
                VaultQuery {
                    limit: 1,
                    ..VaultQuery::default()
                },
            )
            .await?;
        if let (Some(old), false) = (old_pin, live.items.is_empty()) {
            return Err(ApiError::invalid(
                &format!("metadata.{PIN_KEY}"),
                format!(
                    "vault {id} has live credentials whose secrets the vault-bridges of environment {old} hold; \
                     archive or delete them before pinning the vault elsewhere"
                ),
            ));
        }
    }
    let record = s
        .state
        .catalog
        .update_vault(&id, next)
        .await
        .map_err(|e| map_err(e, &id))?;
    Ok(Json(render(&record)))
}

pub(crate) async fn archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = s.state.catalog.get_vault(&id).await?;
    if current.archived_at.is_none() {
        forget_credentials(&s, &current).await?;
    }
    let record = s.state.catalog.archive_vault(&id).await?;
    tracing::info!(vault_id = %id, "vault archived");
    Ok(Json(render(&record)))
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = s.state.catalog.get_vault(&id).await?;
    forget_credentials(&s, &current).await?;
    s.state.catalog.delete_vault(&id).await?;
    tracing::info!(vault_id = %id, "vault deleted");
    Ok(Json(json!({"id": id, "type": "vault_deleted"})))
}

pub(crate) async fn list(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let list = ArchivableList::parse(q.as_deref(), "vaults")?;
    let page = s.state.catalog.list_vaults(list.vault_query()).await?;
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
    fn create_and_update_name_their_fields() {
        let b =
            parse_create(&json!({"display_name": "v", "metadata": {PIN_KEY: "env_1"}})).unwrap();
        assert_eq!(pinned_environment(&b), Some("env_1"));
        let err = |v: Value| parse_create(&v).unwrap_err().to_string();
        assert!(err(json!({})).starts_with("display_name: field required"));
        assert!(err(json!({"display_name": " "})).starts_with("display_name: must not be empty"));
        assert!(err(json!({"display_name": "x".repeat(256)}))
            .starts_with("display_name: must be at most 255"));
        assert!(err(json!({"display_name": "v", "metadata": {"k": 1}})).starts_with("metadata.k:"));
        assert!(err(json!({"display_name": "v", "x": 1})).starts_with("x: unknown field"));

        let cur =
            parse_create(&json!({"display_name": "v", "metadata": {"a": "1", "b": "2"}})).unwrap();
        let next = apply_update(
            &cur,
            &json!({"metadata": {"a": null, "c": "3"}, "display_name": "w"}),
        )
        .unwrap();
        assert_eq!(next["metadata"], json!({"b": "2", "c": "3"}));
        assert_eq!(next["display_name"], json!("w"));
        assert!(apply_update(&cur, &json!({"display_name": null}))
            .unwrap_err()
            .to_string()
            .starts_with("display_name:"));
    }
}
