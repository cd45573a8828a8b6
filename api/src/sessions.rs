//! `/v1/sessions`: create (from an agent id, `{type: "agent", id,
//! version}` or `{type: "agent_with_overrides", id, version?, model?,
//! system?, tools?, mcp_servers?, skills?}`, and an environment), retrieve,
//! list (bidirectional cursors, filters), update (title, metadata, the
//! agent's `tools` and `mcp_servers` while idle), archive (terminates the
//! session) and delete.
//!
//! Overrides and agent updates replace a field whole (omit keeps, null or
//! `[]` clears); the resulting `tools` and `mcp_servers` must still match
//! (every server configured by exactly one `mcp_toolset`, see `mcp.rs`).
//!
//! The session object lives in the session store as the record's body: it
//! holds the agent snapshot (model, system, tools and their permission
//! policies, resolved at creation), which is what the harness runs, and
//! the session's `vault_ids` and `resources` (`github_repository` metadata,
//! never a token; see `resources.rs`), which is what the harness provisions
//! from. Status and timestamps come from the record.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use catalog::CatalogError;
use serde_json::{json, Map, Value};
use session_store::{
    AppendBatch, BodyUpdate, EventType, Fence, NewEvent, NewSession, Order, SessionQuery,
    SessionRecord, SessionStatus, SessionUpdate, StoreError,
};
use time::OffsetDateTime;

use crate::agents;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::events::parse_initial_event;
use crate::fields::{apply_metadata_patch, join, metadata, type_name, Obj};
use crate::ids::{new_id, rfc3339};
use crate::mcp;
use crate::query::{Cursor, Dir, Query};
use crate::resources;
use crate::tools;
use crate::AppState;

const MAX_INITIAL_EVENTS: usize = 50;
const MAX_TITLE_CHARS: usize = 1024;
/// Store pages scanned per list request when filters skip sessions.
const MAX_SCAN_PAGES: usize = 20;

/// How a session names its agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentRef {
    pub id: String,
    pub version: Option<u64>,
    /// `agent_with_overrides`: what replaces the agent's fields.
    pub overrides: Option<AgentOverrides>,
}

/// The fields an `agent_with_overrides` replaces (validated, normalized).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct AgentOverrides {
    /// `model`, normalized to its object form.
    pub model: Option<Value>,
    /// `system`: `Some(None)` clears it.
    pub system: Option<Option<String>>,
    /// `tools`, whole.
    pub tools: Option<Vec<Value>>,
    /// `mcp_servers`, whole.
    pub mcp_servers: Option<Vec<Value>>,
}

impl AgentOverrides {
    /// Parses the override fields of `a` (`agent.*`).
    fn parse(a: &Obj<'_>) -> Result<Self, ApiError> {
        let mut out = AgentOverrides::default();
        if a.has("model") {
            let m = a
                .get("model")
                .ok_or_else(|| ApiError::invalid("agent.model", "cannot be cleared"))?;
            out.model = Some(tools::model("agent.model", m)?);
        }
        if a.has("system") {
            let s = a.opt_str("system")?;
            if let Some(s) = s {
                agents::check_system("agent.system", s)?;
            }
            out.system = Some(s.filter(|s| !s.is_empty()).map(str::to_owned));
        }
        if a.has("tools") {
            out.tools = Some(tools::tools("agent.tools", a.get("tools"))?);
        }
        if a.has("mcp_servers") {
            out.mcp_servers = Some(mcp::servers("agent.mcp_servers", a.get("mcp_servers"))?);
        }
        match a.get("skills") {
            None => {}
            Some(Value::Array(s)) if s.is_empty() => {}
            Some(Value::Array(_)) => {
                return Err(ApiError::invalid(
                    "agent.skills",
                    "skills are not supported by Airlock yet",
                ))
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "agent.skills",
                    format!("expected an array, got {}", type_name(other)),
                ))
            }
        }
        Ok(out)
    }

    /// Applies the overrides to an agent snapshot, then checks that its
    /// `tools` and `mcp_servers` still match.
    fn apply(&self, snapshot: &mut Value) -> Result<(), ApiError> {
        let Value::Object(agent) = snapshot else {
            return Err(ApiError::internal("agent snapshot is not an object"));
        };
        if let Some(m) = &self.model {
            agent.insert("model".into(), m.clone());
        }
        if let Some(s) = &self.system {
            agent.insert("system".into(), json!(s));
        }
        if let Some(t) = &self.tools {
            agent.insert("tools".into(), Value::Array(t.clone()));
        }
        if let Some(m) = &self.mcp_servers {
            agent.insert("mcp_servers".into(), Value::Array(m.clone()));
        }
        check_agent_mcp(agent)
    }
}

/// Checks the `tools` and `mcp_servers` of a session's agent snapshot.
fn check_agent_mcp(agent: &Map<String, Value>) -> Result<(), ApiError> {
    let list = |k: &str| {
        agent
            .get(k)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    mcp::check_references(
        list("tools"),
        "agent.tools",
        list("mcp_servers"),
        "agent.mcp_servers",
    )
}

/// A parsed `POST /v1/sessions`.
#[derive(Debug)]
pub(crate) struct CreateSession {
    pub agent: AgentRef,
    pub environment_id: String,
    pub metadata: Map<String, Value>,
    pub title: Option<String>,
    pub initial_events: Vec<Value>,
    /// Vaults whose credentials the session may use (checked at create).
    pub vault_ids: Vec<String>,
    /// `github_repository` resources (their tokens go to the relay).
    pub resources: Vec<resources::NewResource>,
}

fn title(o: &Obj<'_>) -> Result<Option<String>, ApiError> {
    let t = o.opt_str("title")?;
    if t.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(ApiError::invalid(
            "title",
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok(t.map(str::to_owned))
}

const MAX_VAULT_IDS: usize = 50;

/// `vault_ids`: distinct non-empty ids, at most 50.
fn vault_ids(o: &Obj<'_>) -> Result<Vec<String>, ApiError> {
    let Some(ids) = o.opt_array("vault_ids")? else {
        return Ok(Vec::new());
    };
    if ids.len() > MAX_VAULT_IDS {
        return Err(ApiError::invalid(
            "vault_ids",
            format!("at most {MAX_VAULT_IDS} vaults are allowed"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for (i, v) in ids.iter().enumerate() {
        let path = join("vault_ids", &i.to_string());
        match v {
            Value::String(id) if !id.is_empty() => {
                if out.contains(id) {
                    return Err(ApiError::invalid(
                        &path,
                        format!("vault {id} is listed twice"),
                    ));
                }
                out.push(id.clone());
            }
            other => {
                return Err(ApiError::invalid(
                    &path,
                    format!("expected a vault id, got {}", type_name(other)),
                ))
            }
        }
    }
    Ok(out)
}

/// Checks that every vault exists, is live, and is not pinned to another
/// environment than the session's.
async fn check_vaults(s: &AppState, ids: &[String], environment_id: &str) -> Result<(), ApiError> {
    for (i, id) in ids.iter().enumerate() {
        let path = join("vault_ids", &i.to_string());
        let vault = s.state.catalog.get_vault(id).await.map_err(|e| match e {
            CatalogError::NotFound { .. } => ApiError::NotFound {
                message: format!("{path}: vault {id} not found"),
            },
            other => other.into(),
        })?;
        if vault.archived_at.is_some() {
            return Err(ApiError::invalid(&path, format!("vault {id} is archived")));
        }
        if let Some(pin) = crate::vaults::pinned_environment(&vault.body) {
            if pin != environment_id {
                return Err(ApiError::invalid(
                    &path,
                    format!("vault {id} is pinned to environment {pin}, not the session's {environment_id}"),
                ));
            }
        }
    }
    Ok(())
}

/// Parses `POST /v1/sessions`.
pub(crate) fn parse_create(body: &Value) -> Result<CreateSession, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&[
        "agent",
        "environment_id",
        "metadata",
        "title",
        "initial_events",
        "resources",
        "vault_ids",
        "budget",
    ])?;
    let agent = match o.get("agent") {
        None => return Err(ApiError::invalid("agent", "field required")),
        Some(Value::String(id)) if !id.is_empty() => AgentRef {
            id: id.clone(),
            version: None,
            overrides: None,
        },
        Some(v @ Value::Object(_)) => {
            let a = Obj::new("agent", v)?;
            let with_overrides = match a.req_str("type")? {
                "agent" => false,
                "agent_with_overrides" => true,
                other => {
                    return Err(ApiError::invalid("agent.type", format!("unknown agent reference type {other:?}; expected agent or agent_with_overrides")))
                }
            };
            if with_overrides {
                a.only(&[
                    "type",
                    "id",
                    "version",
                    "model",
                    "system",
                    "tools",
                    "mcp_servers",
                    "skills",
                ])?;
            } else {
                a.only(&["type", "id", "version"])?;
            }
            let id = a.req_nonempty("id")?.to_owned();
            let version = a.opt_u64("version")?;
            if version == Some(0) {
                return Err(ApiError::invalid("agent.version", "must be at least 1"));
            }
            let overrides = if with_overrides {
                Some(AgentOverrides::parse(&a)?)
            } else {
                None
            };
            AgentRef {
                id,
                version,
                overrides,
            }
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "agent",
                format!(
                    "expected an agent id or an object, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let environment_id = o.req_nonempty("environment_id")?.to_owned();
    let resources = resources::parse(o.get("resources"))?;
    if o.get("budget").is_some() {
        return Err(ApiError::invalid(
            "budget",
            "budgets are not supported by Airlock yet",
        ));
    }
    let mut initial_events = Vec::new();
    if let Some(events) = o.opt_array("initial_events")? {
        if events.len() > MAX_INITIAL_EVENTS {
            return Err(ApiError::invalid(
                "initial_events",
                format!("at most {MAX_INITIAL_EVENTS} events are allowed"),
            ));
        }
        for (i, e) in events.iter().enumerate() {
            initial_events.push(parse_initial_event(
                &join("initial_events", &i.to_string()),
                e,
            )?);
        }
    }
    Ok(CreateSession {
        agent,
        environment_id,
        metadata: metadata("metadata", o.get("metadata"))?,
        title: title(&o)?,
        initial_events,
        vault_ids: vault_ids(&o)?,
        resources,
    })
}

/// The published session object.
pub(crate) fn render(r: &SessionRecord) -> Value {
    let mut out: Map<String, Value> = r.body.as_object().cloned().unwrap_or_default();
    out.insert("type".into(), json!("session"));
    out.insert("id".into(), json!(r.id));
    out.insert("status".into(), json!(r.status.as_str()));
    out.insert("created_at".into(), json!(rfc3339(r.created_at)));
    out.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    let end = if r.status == SessionStatus::Terminated {
        r.updated_at
    } else {
        OffsetDateTime::now_utc()
    };
    let duration = (end - r.created_at).as_seconds_f64().max(0.0);
    out.insert("stats".into(), json!({ "duration_seconds": duration }));
    out.insert("usage".into(), json!({}));
    Value::Object(out)
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_create(&body)?;
    let st = &s.state;
    let agent = st
        .catalog
        .get_agent(&req.agent.id, req.agent.version)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound { id, .. } => ApiError::NotFound {
                message: format!("agent: agent {id} not found"),
            },
            other => other.into(),
        })?;
    if agent.archived_at.is_some() {
        return Err(ApiError::invalid(
            "agent",
            format!("agent {} is archived", agent.id),
        ));
    }
    let env = st
        .catalog
        .get_environment(&req.environment_id)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound { id, .. } => ApiError::NotFound {
                message: format!("environment_id: environment {id} not found"),
            },
            other => other.into(),
        })?;
    if env.archived_at.is_some() {
        return Err(ApiError::invalid(
            "environment_id",
            format!("environment {} is archived", env.id),
        ));
    }
    check_vaults(&s, &req.vault_ids, &env.id).await?;
    let mut snapshot = agents::snapshot(&agent);
    if let Some(o) = &req.agent.overrides {
        o.apply(&mut snapshot)?;
    }
    let id = new_id("sesn");
    // Tokens go to the bridges first: a refusal leaves no session behind.
    let resources = resources::relay_new(&s, &env.id, &id, req.resources).await?;
    let body = json!({
        "type": "session",
        "id": id,
        "agent": snapshot,
        "environment_id": env.id,
        "metadata": req.metadata,
        "title": req.title,
        "resources": resources,
        "vault_ids": req.vault_ids,
        "outcome_evaluations": [],
        "archived_at": null,
        "deployment_id": null,
    });
    let has_input = !req.initial_events.is_empty();
    let created = st
        .store
        .create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Idle,
            body,
            initial_events: req
                .initial_events
                .into_iter()
                .map(NewEvent::queued)
                .collect(),
        })
        .await;
    let (record, _) = match created {
        Ok(created) => created,
        Err(e) => {
            resources::forget_all(&s, &env.id, &id, &resources).await;
            return Err(e.into());
        }
    };
    tracing::info!(session_id = %id, agent_id = %agent.id, agent_version = agent.version, "session created");
    if has_input {
        st.runner.notify(&id);
    }
    Ok(Json(render(&record)))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Query::parse(q.as_deref())?.only(&[])?;
    let record = s.state.store.get_session(&id).await?;
    Ok(Json(render(&record)))
}

/// Filters of `GET /v1/sessions` that the store does not index.
#[derive(Debug, Default)]
struct Filter {
    statuses: Vec<SessionStatus>,
    agent_id: Option<String>,
    agent_version: Option<u64>,
    gt: Option<OffsetDateTime>,
    gte: Option<OffsetDateTime>,
    lt: Option<OffsetDateTime>,
    lte: Option<OffsetDateTime>,
    include_archived: bool,
    /// A filter on something Airlock sessions never have: nothing matches.
    impossible: bool,
}

impl Filter {
    fn matches(&self, r: &SessionRecord) -> bool {
        if self.impossible {
            return false;
        }
        if !self.statuses.is_empty() && !self.statuses.contains(&r.status) {
            return false;
        }
        if let Some(a) = &self.agent_id {
            if r.body["agent"]["id"].as_str() != Some(a) {
                return false;
            }
            if let Some(v) = self.agent_version {
                if r.body["agent"]["version"].as_u64() != Some(v) {
                    return false;
                }
            }
        }
        let t = r.created_at;
        if self.gt.is_some_and(|x| t <= x)
            || self.gte.is_some_and(|x| t < x)
            || self.lt.is_some_and(|x| t >= x)
            || self.lte.is_some_and(|x| t > x)
        {
            return false;
        }
        self.include_archived || r.body.get("archived_at").is_none_or(Value::is_null)
    }
}

fn store_order(d: Dir) -> Order {
    match d {
        Dir::Asc => Order::Ascending,
        Dir::Desc => Order::Descending,
    }
}

pub(crate) async fn list(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&[
        "agent_id",
        "agent_version",
        "created_at[gt]",
        "created_at[gte]",
        "created_at[lt]",
        "created_at[lte]",
        "deployment_id",
        "include_archived",
        "limit",
        "memory_store_id",
        "order",
        "page",
        "statuses",
    ])?;
    let limit = q.limit(20, 1000)?;
    let order = q.order(Dir::Desc)?;
    let cursor = q.cursor("sessions", order)?;
    let mut statuses = Vec::new();
    for v in q.many("statuses") {
        statuses.push(v.parse::<SessionStatus>().map_err(|_| {
            ApiError::invalid(
                "statuses",
                format!("unknown status {v:?}; expected rescheduling, running, idle or terminated"),
            )
        })?);
    }
    let filter = Filter {
        agent_id: q.one("agent_id")?.map(str::to_owned),
        agent_version: q.u64("agent_version")?,
        gt: q.time("created_at[gt]")?,
        gte: q.time("created_at[gte]")?,
        lt: q.time("created_at[lt]")?,
        lte: q.time("created_at[lte]")?,
        include_archived: q.bool("include_archived")?.unwrap_or(false),
        impossible: q.one("deployment_id")?.is_some() || q.one("memory_store_id")?.is_some(),
        statuses,
    };
    let before = cursor.is_some_and(|c| c.before);
    let scan = if before { order.reverse() } else { order };
    let mut pos = cursor.map(|c| c.at);
    let batch = (limit + 1).clamp(100, 1000);
    let mut items: Vec<SessionRecord> = Vec::new();
    let mut more = false;
    let mut resume_at = None;
    'scan: for round in 0..MAX_SCAN_PAGES {
        let page = s
            .state
            .store
            .list_sessions(SessionQuery {
                status: match filter.statuses.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                },
                order: store_order(scan),
                after_position: pos,
                limit: batch,
            })
            .await?;
        for r in page.sessions {
            pos = Some(r.position);
            if filter.matches(&r) {
                if items.len() == limit {
                    more = true;
                    break 'scan;
                }
                items.push(r);
            }
        }
        if !page.has_more {
            break;
        }
        if round + 1 == MAX_SCAN_PAGES {
            // Scanned enough for one request: let the caller continue here.
            more = true;
            resume_at = pos;
        }
    }
    let far_end = resume_at.or_else(|| items.last().map(|r| r.position));
    let mk = |before: bool, at: i64| Cursor { order, before, at }.encode("sessions");
    let (next, prev) = if before {
        items.reverse();
        let prev = if more {
            far_end.map(|at| mk(true, at))
        } else {
            None
        };
        let next = items
            .last()
            .map(|r| mk(false, r.position))
            .or(cursor.map(|c| mk(false, c.at - 1)));
        (next, prev)
    } else {
        let next = if more {
            far_end.map(|at| mk(false, at))
        } else {
            None
        };
        let prev = if cursor.is_some() {
            items.first().map(|r| mk(true, r.position))
        } else {
            None
        };
        (next, prev)
    };
    Ok(Json(json!({
        "data": items.iter().map(render).collect::<Vec<_>>(),
        "next_page": next,
        "prev_page": prev,
    })))
}

/// Applies `POST /v1/sessions/{id}` to the stored body.
fn apply_update(record: &SessionRecord, body: &Value) -> Result<Value, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["agent", "budget", "metadata", "title", "vault_ids"])?;
    if o.has("vault_ids") {
        return Err(ApiError::invalid(
            "vault_ids",
            "not yet supported; requests setting this field are rejected",
        ));
    }
    if o.get("budget").is_some() {
        return Err(ApiError::invalid(
            "budget",
            "a budget cannot be added to a session created without one",
        ));
    }
    let mut next = record.body.as_object().cloned().unwrap_or_default();
    if o.has("title") {
        next.insert("title".into(), json!(title(&o)?));
    }
    if let Some(patch) = o.get("metadata") {
        apply_metadata_patch(&mut next, patch, false)?;
    } else if o.has("metadata") {
        next.insert("metadata".into(), json!({}));
    }
    if let Some(a) = o.opt_obj("agent")? {
        a.only(&["tools", "mcp_servers"])?;
        match record.status {
            SessionStatus::Running | SessionStatus::Rescheduling => {
                return Err(ApiError::invalid(
                    "agent",
                    format!(
                        "session {} is {}; its tools can change only while it is idle",
                        record.id, record.status
                    ),
                ))
            }
            SessionStatus::Terminated => {
                return Err(ApiError::invalid(
                    "agent",
                    format!("session {} is terminated", record.id),
                ))
            }
            SessionStatus::Idle => {}
        }
        let Some(Value::Object(agent)) = next.get_mut("agent") else {
            return Err(ApiError::internal(format!(
                "session {} has no agent snapshot",
                record.id
            )));
        };
        if a.has("tools") {
            let tools = tools::tools("agent.tools", a.get("tools"))?;
            agent.insert("tools".into(), Value::Array(tools));
        }
        if a.has("mcp_servers") {
            let servers = mcp::servers("agent.mcp_servers", a.get("mcp_servers"))?;
            agent.insert("mcp_servers".into(), Value::Array(servers));
        }
        if a.has("tools") || a.has("mcp_servers") {
            check_agent_mcp(agent)?;
        }
    }
    Ok(Value::Object(next))
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let store = &s.state.store;
    for _ in 0..8 {
        let record = store.get_session(&id).await?;
        if record.body.get("archived_at").is_some_and(|a| !a.is_null()) {
            return Err(ApiError::invalid(
                "",
                format!("session {id} is archived and cannot change"),
            ));
        }
        let next = apply_update(&record, &body)?;
        if next == record.body {
            return Ok(Json(render(&record)));
        }
        match store
            .update_session(
                &id,
                SessionUpdate {
                    status: None,
                    body: Some(BodyUpdate::Replace(next)),
                    if_version: Some(record.version),
                },
            )
            .await
        {
            Ok(r) => return Ok(Json(render(&r))),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        message: format!("session {id} is being changed concurrently; retry"),
    })
}

fn refuse_while_running(record: &SessionRecord, what: &str) -> Result<(), ApiError> {
    if matches!(
        record.status,
        SessionStatus::Running | SessionStatus::Rescheduling
    ) {
        return Err(ApiError::invalid(
            "",
            format!(
                "session {} is {}; send a {} and wait for {} before {what} it",
                record.id,
                record.status,
                EventType::UserInterrupt,
                EventType::SessionStatusIdle
            ),
        ));
    }
    Ok(())
}

/// The session ended: tells the bridges, which cut its sandboxes' egress
/// and drop its repository tokens, then drops each resource's token too
/// (bridges that predate the end-of-session message).
async fn forget_resource_tokens(s: &AppState, record: &SessionRecord) {
    let env = record.body["environment_id"].as_str().unwrap_or_default();
    if let Err(error) = s.state.relay.end_session(env, &record.id).await {
        tracing::warn!(session_id = %record.id, environment_id = env, %error,
            "the vault-bridges did not confirm the session's end");
    }
    resources::forget_all(s, env, &record.id, &resources::stored(record)).await;
}

pub(crate) async fn archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &s.state.store;
    let record = store.get_session(&id).await?;
    if record.body.get("archived_at").is_some_and(|a| !a.is_null()) {
        return Ok(Json(render(&record)));
    }
    refuse_while_running(&record, "archiving")?;
    if record.status != SessionStatus::Terminated {
        store
            .append_batch(
                &id,
                AppendBatch {
                    events: vec![NewEvent::processed(
                        json!({"type": EventType::SessionStatusTerminated}),
                    )],
                    fence: Fence::None,
                    set_status: Some(SessionStatus::Terminated),
                },
            )
            .await?;
    }
    let record = store
        .update_session(
            &id,
            SessionUpdate {
                status: None,
                body: Some(BodyUpdate::MergePatch(
                    json!({"archived_at": rfc3339(OffsetDateTime::now_utc())}),
                )),
                if_version: None,
            },
        )
        .await?;
    forget_resource_tokens(&s, &record).await;
    tracing::info!(session_id = %id, "session archived");
    Ok(Json(render(&record)))
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = s.state.store.get_session(&id).await?;
    refuse_while_running(&record, "deleting")?;
    s.state.store.delete_session(&id).await?;
    forget_resource_tokens(&s, &record).await;
    tracing::info!(session_id = %id, "session deleted");
    Ok(Json(json!({"id": id, "type": "session_deleted"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_parses_agent_references_and_names_fields() {
        let c = parse_create(&json!({"agent": "agent_1", "environment_id": "env_1"})).unwrap();
        assert_eq!(
            c.agent,
            AgentRef {
                id: "agent_1".into(),
                version: None,
                overrides: None
            }
        );
        let c = parse_create(&json!({"agent": {"type": "agent", "id": "agent_1", "version": 2}, "environment_id": "env_1",
            "initial_events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]}))
        .unwrap();
        assert_eq!(c.agent.version, Some(2));
        assert_eq!(c.initial_events.len(), 1);
        let err = |v: Value| parse_create(&v).unwrap_err().to_string();
        assert!(err(json!({"environment_id": "e"})).starts_with("agent: field required"));
        assert!(err(json!({"agent": "a"})).starts_with("environment_id: field required"));
        assert!(err(json!({"agent": 5, "environment_id": "e"})).starts_with("agent:"));
        assert!(
            err(json!({"agent": {"type": "agent"}, "environment_id": "e"}))
                .starts_with("agent.id:")
        );
        assert!(err(
            json!({"agent": {"type": "agent", "id": "a", "version": "2"}, "environment_id": "e"})
        )
        .starts_with("agent.version:"));
        assert!(
            err(json!({"agent": "a", "environment_id": "e", "resources": [{"type": "file"}]}))
                .starts_with("resources.0.type: file resources are not supported")
        );
        assert!(err(json!({"agent": "a", "environment_id": "e", "initial_events": [{"type": "user.interrupt"}]}))
            .starts_with("initial_events.0.type:"));
        assert!(
            err(json!({"agent": "a", "environment_id": "e", "title": 3})).starts_with("title:")
        );
    }

    #[test]
    fn overrides_parse_and_replace_whole_fields() {
        let c = parse_create(&json!({"environment_id": "e", "agent": {"type": "agent_with_overrides", "id": "agent_1",
            "version": 3, "model": "claude-x", "system": null, "skills": [],
            "mcp_servers": [{"type": "url", "name": "wiki", "url": "https://wiki.internal/mcp"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki"}]}}))
        .unwrap();
        assert_eq!(c.agent.version, Some(3));
        let o = c.agent.overrides.unwrap();
        let mut snap = json!({"type": "agent", "id": "agent_1", "model": {"id": "m"}, "system": "s",
            "tools": [{"type": "custom", "name": "x"}], "mcp_servers": []});
        o.apply(&mut snap).unwrap();
        assert_eq!(snap["model"], json!({"id": "claude-x"}));
        assert_eq!(snap["system"], Value::Null);
        assert_eq!(snap["tools"][0]["mcp_server_name"], json!("wiki"));
        assert_eq!(snap["mcp_servers"][0]["name"], json!("wiki"));

        // only tools: the agent's servers must still be configured
        let only_tools = parse_create(
            &json!({"environment_id": "e", "agent": {"type": "agent_with_overrides",
            "id": "agent_1", "tools": []}}),
        )
        .unwrap()
        .agent
        .overrides
        .unwrap();
        let mut with_server = snap.clone();
        assert!(only_tools
            .apply(&mut with_server)
            .unwrap_err()
            .to_string()
            .starts_with("agent.mcp_servers.0.name: MCP server \"wiki\" is not referenced"));

        let err = |v: Value| {
            parse_create(&json!({"environment_id": "e", "agent": v}))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(json!({"type": "agent_with_overrides", "id": "a", "model": null}))
                .starts_with("agent.model:")
        );
        assert!(
            err(json!({"type": "agent_with_overrides", "id": "a", "name": "n"}))
                .starts_with("agent.name: unknown field")
        );
        assert!(err(json!({"type": "agent", "id": "a", "tools": []}))
            .starts_with("agent.tools: unknown field"));
        assert!(err(json!({"type": "agent_with_overrides", "id": "a",
            "mcp_servers": [{"type": "url", "name": "w", "url": "nope"}]}))
        .starts_with("agent.mcp_servers.0.url:"));
        assert!(err(json!({"type": "agent_with_overrides", "id": "a",
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "w", "configs": [{"name": "t", "permission_policy": {"type": "x"}}]}]}))
        .starts_with("agent.tools.0.configs.0.permission_policy.type:"));
        assert!(err(json!({"type": "agent_with_overrides", "id": "a", "skills": [{"type": "anthropic", "skill_id": "x"}]}))
            .starts_with("agent.skills:"));
        assert!(err(json!({"type": "agent_with_overrides"})).starts_with("agent.id:"));
    }
}
