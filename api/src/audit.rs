//! The control plane's audit of API requests, and the Airlock extension
//! endpoints that read the audit.
//!
//! **Recording.** Every state-changing request (POST, PUT, PATCH, DELETE)
//! that passed authentication becomes one audit event, written after the
//! handler answered (and after the error envelope is rendered, so the
//! status is the one the client sees): `audevt_…` id, time, the API key id,
//! the remote address, an action named from the route
//! (`sessions.create`, `credentials.update`, ...; a post of session events
//! is `sessions.interrupt`, `sessions.tool_confirmation` or
//! `sessions.message` by the event types posted, in that priority, else
//! `sessions.events`; an unknown route is `unrouted`), the path ids plus the
//! created id of a create (the `id` of the JSON answer), the status and
//! `ok`/`error`, and the request id. Bodies, headers and secrets are never
//! recorded. Refused authentication is not recorded (there is no actor);
//! reads (GET) are not recorded.
//!
//! **Failure.** The insert is awaited once; if it fails the error is logged
//! at `error` and counted ([`record_failures`]) and the response goes out
//! unchanged: the audit never turns a done change into an error.
//!
//! **Reading.** `GET /v1/airlock/audit/events` and
//! `GET /v1/airlock/agents/{agent_id}/audit/checkpoints`, both
//! `{"data": [...], "has_more", "first_id", "last_id"}`, continued with
//! `after_id=<last_id>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::response::Response;
use axum::Json;
use catalog::audit::{Actor, AuditEventQuery, CheckpointQuery, NewAuditEvent, Outcome};
use http::Method;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::query::Query;
use crate::AppState;

static RECORD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Audit events that could not be stored since the process started.
pub fn record_failures() -> u64 {
    RECORD_FAILURES.load(Ordering::Relaxed)
}

/// Longest path id kept in an audit event (longer ones are cut).
const MAX_ID_CHARS: usize = 128;
/// Largest create answer read for its `id`.
const MAX_CAPTURE_BYTES: usize = 4 * 1024 * 1024;

/// What a state-changing request is, for its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The action name.
    pub action: String,
    /// Path ids, in path order.
    pub resource_ids: Vec<String>,
    /// A create: add the answer's `id`.
    pub capture_id: bool,
    /// A post of session events: the action depends on the event types.
    pub events: bool,
}

fn id(s: &str) -> String {
    s.chars().take(MAX_ID_CHARS).collect()
}

/// The audit target of `method path`; `None` for reads.
pub(crate) fn target(method: &Method, path: &str) -> Option<Target> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return None;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let post = *method == Method::POST;
    let delete = *method == Method::DELETE;
    let t = |action: &str, ids: &[&str], capture_id: bool| Target {
        action: action.to_owned(),
        resource_ids: ids.iter().map(|s| id(s)).collect(),
        capture_id,
        events: false,
    };
    let found = match segs.as_slice() {
        ["v1", kind @ ("agents" | "environments" | "vaults" | "sessions")] if post => {
            Some(t(&format!("{kind}.create"), &[], true))
        }
        ["v1", kind @ ("agents" | "environments" | "vaults" | "sessions"), x] if post => {
            Some(t(&format!("{kind}.update"), &[x], false))
        }
        ["v1", kind @ ("environments" | "vaults" | "sessions"), x] if delete => {
            Some(t(&format!("{kind}.delete"), &[x], false))
        }
        ["v1", kind @ ("agents" | "environments" | "vaults" | "sessions"), x, "archive"]
            if post =>
        {
            Some(t(&format!("{kind}.archive"), &[x], false))
        }
        ["v1", "vaults", v, "credentials"] if post => Some(t("credentials.create", &[v], true)),
        ["v1", "vaults", v, "credentials", c] if post => {
            Some(t("credentials.update", &[v, c], false))
        }
        ["v1", "vaults", v, "credentials", c] if delete => {
            Some(t("credentials.delete", &[v, c], false))
        }
        ["v1", "vaults", v, "credentials", c, "archive"] if post => {
            Some(t("credentials.archive", &[v, c], false))
        }
        ["v1", "vaults", v, "credentials", c, "mcp_oauth_validate"] if post => {
            Some(t("credentials.mcp_oauth_validate", &[v, c], false))
        }
        ["v1", "sessions", s, "resources"] if post => Some(t("sessions.resources.add", &[s], true)),
        ["v1", "sessions", s, "resources", r] if post => {
            Some(t("sessions.resources.update", &[s, r], false))
        }
        ["v1", "sessions", s, "resources", r] if delete => {
            Some(t("sessions.resources.delete", &[s, r], false))
        }
        ["v1", "sessions", s, "events"] if post => Some(Target {
            events: true,
            ..t("sessions.events", &[s], false)
        }),
        _ => None,
    };
    Some(found.unwrap_or_else(|| t("unrouted", &[], false)))
}

/// The action of a post of session events, from the posted event types.
pub(crate) fn events_action(body: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Posted {
        #[serde(default)]
        events: Vec<Typed>,
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(default, rename = "type")]
        kind: String,
    }
    let types: Vec<String> = serde_json::from_slice::<Posted>(body)
        .map(|p| p.events.into_iter().map(|e| e.kind).collect())
        .unwrap_or_default();
    let has = |t: &str| types.iter().any(|k| k == t);
    if has("user.interrupt") {
        "sessions.interrupt"
    } else if has("user.tool_confirmation") {
        "sessions.tool_confirmation"
    } else if has("user.message") {
        "sessions.message"
    } else {
        "sessions.events"
    }
}

/// Reads a request body under `limit` for [`events_action`] and puts it
/// back; the handler then reads the same bytes.
pub(crate) async fn peek_events(
    req: Request,
    limit: u64,
) -> Result<(Request, &'static str), ApiError> {
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge { limit_bytes: limit })
        }
        Err(e) => return Err(ApiError::invalid("body", format!("could not be read: {e}"))),
    };
    let action = events_action(&bytes);
    Ok((Request::from_parts(parts, Body::from(bytes)), action))
}

/// The remote address axum recorded for the connection, if served with
/// connect info.
pub(crate) fn remote_addr(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string())
}

/// Write the audit event of a finished request (see the module docs) and
/// return the response unchanged.
pub(crate) async fn record(
    shared: &AppState,
    target: Target,
    key_id: &str,
    remote_addr: Option<String>,
    request_id: &str,
    response: Response,
) -> Response {
    let status = response.status();
    let mut resource_ids = target.resource_ids;
    let response = if target.capture_id && status.is_success() {
        let (parts, body) = response.into_parts();
        match Limited::new(body, MAX_CAPTURE_BYTES).collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                if let Some(created) = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(id))
                {
                    resource_ids.push(created);
                }
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(error) => {
                tracing::error!(%error, request_id, "reading a create answer for the audit failed");
                Response::from_parts(parts, Body::empty())
            }
        }
    } else {
        response
    };
    let event = NewAuditEvent {
        id: crate::ids::new_id("audevt"),
        at: OffsetDateTime::now_utc(),
        actor: Actor::ApiKey(key_id.to_owned()),
        remote_addr,
        action: target.action,
        resource_ids,
        status: status.as_u16(),
        outcome: if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::Error
        },
        request_id: Some(request_id.to_owned()),
    };
    let action = event.action.clone();
    if let Err(error) = shared.state.catalog.record_audit_event(event).await {
        let failures = RECORD_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(%error, request_id, action, failures, "audit event not recorded; the response is unchanged");
    }
    response
}

/// An unknown `after_id` is the caller's mistake (the catalog says which);
/// everything else maps as usual.
fn after_id_error(e: catalog::CatalogError) -> ApiError {
    match e {
        catalog::CatalogError::Invalid { reason } => ApiError::InvalidRequest { message: reason },
        other => other.into(),
    }
}

fn page_json(data: Vec<Value>, has_more: bool) -> Value {
    let first = data.first().and_then(|v| v.get("id")).cloned();
    let last = data.last().and_then(|v| v.get("id")).cloned();
    json!({"data": data, "has_more": has_more, "first_id": first, "last_id": last})
}

/// `GET /v1/airlock/audit/events`.
pub(crate) async fn list_events(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&[
        "limit",
        "after_id",
        "action",
        "resource_id",
        "api_key_id",
        "outcome",
        "since",
        "until",
        "order",
    ])?;
    let limit = q.limit(100, 1000)?;
    let outcome = q
        .one("outcome")?
        .map(|o| {
            Outcome::parse(o).ok_or_else(|| ApiError::invalid("outcome", "must be ok or error"))
        })
        .transpose()?;
    let descending = match q.one("order")? {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::invalid("order", "must be asc or desc")),
    };
    let owned = |k: &str| -> Result<Option<String>, ApiError> { Ok(q.one(k)?.map(str::to_owned)) };
    let page = s
        .state
        .catalog
        .list_audit_events(AuditEventQuery {
            after_id: owned("after_id")?,
            descending,
            action: owned("action")?,
            resource_id: owned("resource_id")?,
            api_key_id: owned("api_key_id")?,
            outcome,
            since: q.time("since")?,
            until: q.time("until")?,
            limit,
        })
        .await
        .map_err(after_id_error)?;
    let data = page.items.iter().map(|r| r.to_json()).collect();
    Ok(Json(page_json(data, page.has_more)))
}

/// `GET /v1/airlock/agents/{agent_id}/audit/checkpoints`.
pub(crate) async fn list_checkpoints(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&["limit", "after_id"])?;
    let limit = q.limit(100, 1000)?;
    let page = s
        .state
        .catalog
        .list_checkpoints(
            &agent_id,
            CheckpointQuery {
                after_id: q.one("after_id")?.map(str::to_owned),
                limit,
            },
        )
        .await
        .map_err(after_id_error)?;
    let data = page.items.iter().map(|r| r.to_json()).collect();
    Ok(Json(page_json(data, page.has_more)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_actions_and_ids() {
        let a =
            |m: Method, p: &str| target(&m, p).map(|t| (t.action, t.resource_ids, t.capture_id));
        assert_eq!(a(Method::GET, "/v1/sessions"), None);
        assert_eq!(
            a(Method::POST, "/v1/sessions"),
            Some(("sessions.create".into(), vec![], true))
        );
        assert_eq!(
            a(Method::POST, "/v1/vaults/vlt_1/credentials/vcrd_2/archive"),
            Some((
                "credentials.archive".into(),
                vec!["vlt_1".into(), "vcrd_2".into()],
                false
            ))
        );
        assert_eq!(
            a(Method::DELETE, "/v1/environments/env_1"),
            Some(("environments.delete".into(), vec!["env_1".into()], false))
        );
        assert_eq!(
            a(
                Method::POST,
                "/v1/vaults/v/credentials/c/mcp_oauth_validate"
            )
            .unwrap()
            .0,
            "credentials.mcp_oauth_validate"
        );
        assert_eq!(a(Method::PUT, "/v1/nope/x").unwrap().0, "unrouted");
        assert!(
            target(&Method::POST, "/v1/sessions/s/events")
                .unwrap()
                .events
        );
        let long = "x".repeat(1000);
        assert_eq!(
            a(Method::POST, &format!("/v1/agents/{long}")).unwrap().1[0].len(),
            MAX_ID_CHARS
        );
    }

    #[test]
    fn event_types_name_the_action() {
        let body = |types: &[&str]| {
            serde_json::to_vec(&json!({"events": types.iter().map(|t| json!({"type": t, "content": []})).collect::<Vec<_>>()}))
                .unwrap()
        };
        assert_eq!(events_action(&body(&["user.message"])), "sessions.message");
        assert_eq!(
            events_action(&body(&["user.message", "user.interrupt"])),
            "sessions.interrupt"
        );
        assert_eq!(
            events_action(&body(&["user.tool_confirmation"])),
            "sessions.tool_confirmation"
        );
        assert_eq!(
            events_action(&body(&["user.custom_tool_result"])),
            "sessions.events"
        );
        assert_eq!(events_action(b"not json"), "sessions.events");
    }
}
