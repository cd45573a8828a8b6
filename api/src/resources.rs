//! Session `resources` (`github_repository`) and
//! `/v1/sessions/{id}/resources`: list, retrieve, token rotation, delete.
//!
//! A `github_repository` resource names any HTTPS Git repository (github.com
//! or an internal Gitea/GitLab): an `https` URL with a host and a path, no
//! userinfo, query or fragment. It is cloned into the sandbox at
//! `mount_path` (default `/workspace/<repo-name>`) when the session is
//! provisioned. The control plane stores the resource's metadata only, in
//! the session body's `resources` array (which is what the harness reads,
//! next to `vault_ids`). Its `authorization_token` is write-only: it is
//! handed in memory to the [`crate::SecretRelay`] for the session's
//! environment and never stored, echoed or logged. When the relay does not
//! take it the request fails with 503 `vault_bridge_unavailable` and nothing
//! is stored (at create: no session). `file` and `memory_store` resources
//! are refused: Airlock has no Files or Memory Stores API.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use session_store::{BodyUpdate, SessionRecord, SessionUpdate, StoreError};
use time::OffsetDateTime;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{join, type_name, Obj};
use crate::ids::{new_id, rfc3339};
use crate::query::Query;
use crate::relay::{RelayError, SecretValue, SessionTokenTarget};
use crate::AppState;

/// Resources per session.
pub(crate) const MAX_RESOURCES: usize = 20;
const MAX_URL_CHARS: usize = 2048;
const MAX_MOUNT_PATH_CHARS: usize = 1024;
const MAX_TOKEN_BYTES: usize = 8192;
const MAX_BRANCH_CHARS: usize = 255;
/// Id prefix of session resources.
const ID_PREFIX: &str = "sesrsc";
const LISTING: &str = "session_resources";
const NO_FILES: &str = "file resources are not supported: no Files API";
const NO_MEMORY: &str = "memory_store resources are not supported: no Memory Stores API";

/// A parsed `github_repository` resource: the object to store (no token)
/// and the token to relay, if one was given.
#[derive(Debug)]
pub(crate) struct NewResource {
    /// Where it was in the request (`resources.0`).
    pub path: String,
    /// `{id, type, url, checkout, mount_path, created_at, updated_at}`.
    pub object: Value,
    /// The write-only `authorization_token` (Debug redacted).
    pub token: Option<SecretValue>,
}

impl NewResource {
    fn id(&self) -> &str {
        self.object["id"].as_str().unwrap_or_default()
    }
}

/// Checks an `https` Git URL: a host (DNS name, IPv4 or `[IPv6]`), an
/// optional port, a path naming a repository; no userinfo, query or
/// fragment, no whitespace or control characters.
fn repository_url(path: &str, url: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid(path, why);
    if url.chars().count() > MAX_URL_CHARS {
        return Err(bad(&format!("must be at most {MAX_URL_CHARS} characters")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace or control characters"));
    }
    let Some(rest) = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
    else {
        return Err(bad("must be an https:// URL of a Git repository"));
    };
    if url.contains('?') || url.contains('#') {
        return Err(bad("must not have a query or a fragment"));
    }
    let (authority, repo_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(bad(
            "must not carry credentials (userinfo); pass authorization_token instead",
        ));
    }
    if authority.is_empty() {
        return Err(bad("must name a host"));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => {
            let Some((addr, port)) = v6.split_once(']') else {
                return Err(bad("has an unterminated [IPv6] host"));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(&format!("{addr:?} is not an IPv6 address")));
            }
            check_port(path, port)?;
            return check_repo_path(path, url, repo_path);
        }
        None => match authority.split_once(':') {
            Some((host, port)) => {
                check_port(path, &format!(":{port}"))?;
                host
            }
            None => authority,
        },
    };
    if !valid_host(host) {
        return Err(bad(&format!("{host:?} is not a valid host name")));
    }
    check_repo_path(path, url, repo_path)
}

fn check_port(path: &str, port: &str) -> Result<(), ApiError> {
    if port.is_empty() {
        return Ok(());
    }
    match port.strip_prefix(':').map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => Ok(()),
        _ => Err(ApiError::invalid(
            path,
            format!("{port:?} is not a port from 1 to 65535"),
        )),
    }
}

/// A DNS name (labels of letters, digits and inner hyphens) or an IPv4 address.
fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

fn check_repo_path(path: &str, url: &str, repo_path: &str) -> Result<String, ApiError> {
    if repo_name(repo_path).is_none() {
        return Err(ApiError::invalid(
            path,
            "must have a path naming the repository (https://host/owner/repo.git)",
        ));
    }
    if repo_path.split('/').any(|s| s == "." || s == "..") {
        return Err(ApiError::invalid(
            path,
            "must not have . or .. path segments",
        ));
    }
    Ok(url.to_owned())
}

/// The repository name of a URL path: its last segment without `.git`.
fn repo_name(repo_path: &str) -> Option<&str> {
    let last = repo_path.trim_end_matches('/').rsplit('/').next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// Checks a mount path: absolute, normalized (no empty, `.` or `..`
/// segments, no trailing slash), not `/`, printable.
fn mount_path(path: &str, p: &str) -> Result<String, ApiError> {
    let bad = |why: &str| Err(ApiError::invalid(path, why));
    if p.chars().count() > MAX_MOUNT_PATH_CHARS {
        return bad(&format!(
            "must be at most {MAX_MOUNT_PATH_CHARS} characters"
        ));
    }
    if !p.starts_with('/') {
        return bad("must be an absolute path");
    }
    if p == "/" {
        return bad("must not be the root directory");
    }
    if p.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if p[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("must be normalized: no empty, . or .. segments and no trailing slash");
    }
    Ok(p.to_owned())
}

/// `checkout`: `{type: "branch", name}` or `{type: "commit", sha}` (40 or
/// 64 hex digits, stored lowercase); null or absent = the default branch.
fn checkout(o: &Obj<'_>) -> Result<Value, ApiError> {
    let Some(c) = o.opt_obj("checkout")? else {
        return Ok(Value::Null);
    };
    match c.req_str("type")? {
        "branch" => {
            c.only(&["type", "name"])?;
            let name = c.req_nonempty("name")?;
            let at = c.path("name");
            if name.chars().count() > MAX_BRANCH_CHARS {
                return Err(ApiError::invalid(
                    &at,
                    format!("must be at most {MAX_BRANCH_CHARS} characters"),
                ));
            }
            if name.starts_with('-')
                || name.starts_with('/')
                || name.ends_with('/')
                || name.ends_with('.')
                || name.ends_with(".lock")
                || name.contains("..")
                || name.contains("@{")
                || name.contains("//")
                || name.chars().any(|c| {
                    c.is_whitespace()
                        || c.is_control()
                        || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
                })
            {
                return Err(ApiError::invalid(
                    &at,
                    format!("{name:?} is not a valid Git branch name"),
                ));
            }
            Ok(json!({"type": "branch", "name": name}))
        }
        "commit" => {
            c.only(&["type", "sha"])?;
            let sha = c.req_str("sha")?;
            if !matches!(sha.len(), 40 | 64) || !sha.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(
                    &c.path("sha"),
                    "must be a full commit SHA (40 or 64 hexadecimal digits)",
                ));
            }
            Ok(json!({"type": "commit", "sha": sha.to_ascii_lowercase()}))
        }
        other => Err(ApiError::invalid(
            &c.path("type"),
            format!("unknown checkout type {other:?}; expected branch or commit"),
        )),
    }
}

/// The write-only token: a non-empty string of printable ASCII without
/// spaces (it goes into an HTTP header), at most 8 KiB. Errors never show it.
fn token(path: &str, v: &Value) -> Result<SecretValue, ApiError> {
    let Value::String(t) = v else {
        return Err(ApiError::invalid(
            path,
            format!("expected a string, got {}", type_name(v)),
        ));
    };
    if t.is_empty() {
        return Err(ApiError::invalid(path, "must not be empty"));
    }
    if t.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            path,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(SecretValue::new(t.clone()))
}

/// The error for a resource `type` Airlock does not serve, at `path`.
fn unsupported(path: &str, kind: &str) -> ApiError {
    match kind {
        "file" => ApiError::invalid(path, NO_FILES),
        "memory_store" => ApiError::invalid(path, NO_MEMORY),
        other => ApiError::invalid(
            path,
            format!("unknown resource type {other:?}; expected github_repository"),
        ),
    }
}

fn parse_one(path: &str, v: &Value, now: &str) -> Result<NewResource, ApiError> {
    let o = Obj::new(path, v)?;
    let kind = o.req_str("type")?;
    if kind != "github_repository" {
        return Err(unsupported(&o.path("type"), kind));
    }
    o.only(&[
        "type",
        "url",
        "authorization_token",
        "checkout",
        "mount_path",
    ])?;
    let url = repository_url(&o.path("url"), o.req_nonempty("url")?)?;
    let mount = match o.opt_str("mount_path")? {
        Some(p) => mount_path(&o.path("mount_path"), p)?,
        None => {
            let rest = &url[8..];
            let repo_path = &rest[rest.find('/').unwrap_or(rest.len())..];
            let name = repo_name(repo_path).unwrap_or("repository");
            mount_path(&o.path("url"), &format!("/workspace/{name}"))?
        }
    };
    let token = match o.get("authorization_token") {
        Some(t) => Some(token(&o.path("authorization_token"), t)?),
        None => None,
    };
    Ok(NewResource {
        path: path.to_owned(),
        object: json!({
            "id": new_id(ID_PREFIX),
            "type": "github_repository",
            "url": url,
            "checkout": checkout(&o)?,
            "mount_path": mount,
            "created_at": now,
            "updated_at": now,
        }),
        token,
    })
}

/// Whether `a` is `b` or a directory above or below it.
fn overlaps(a: &str, b: &str) -> bool {
    let under =
        |x: &str, y: &str| x.len() > y.len() && x.starts_with(y) && x[y.len()..].starts_with('/');
    a == b || under(a, b) || under(b, a)
}

/// Parses `resources` of `POST /v1/sessions` (absent or null = none): at
/// most [`MAX_RESOURCES`], mount paths distinct and not nested.
pub(crate) fn parse(value: Option<&Value>) -> Result<Vec<NewResource>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(ApiError::invalid(
                "resources",
                format!("expected an array, got {}", type_name(other)),
            ))
        }
    };
    if items.len() > MAX_RESOURCES {
        return Err(ApiError::invalid(
            "resources",
            format!("at most {MAX_RESOURCES} resources are allowed"),
        ));
    }
    let now = rfc3339(OffsetDateTime::now_utc());
    let mut out: Vec<NewResource> = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let path = join("resources", &i.to_string());
        let r = parse_one(&path, v, &now)?;
        let mount = r.object["mount_path"].as_str().unwrap_or_default();
        if let Some(prev) = out
            .iter()
            .find(|p| overlaps(p.object["mount_path"].as_str().unwrap_or_default(), mount))
        {
            return Err(ApiError::invalid(
                &join(&path, "mount_path"),
                format!(
                    "{mount} overlaps {}, the mount path of {}; give each repository its own directory",
                    prev.object["mount_path"].as_str().unwrap_or_default(),
                    prev.path
                ),
            ));
        }
        out.push(r);
    }
    Ok(out)
}

fn target(environment_id: &str, session_id: &str, object: &Value) -> SessionTokenTarget {
    SessionTokenTarget {
        environment_id: environment_id.to_owned(),
        session_id: session_id.to_owned(),
        resource_id: object["id"].as_str().unwrap_or_default().to_owned(),
        url: object["url"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Hands `token` to the relay; the 503 refusal (naming `path`, the
/// repository and the environment, never the token) when nothing takes it.
async fn relay_token(
    s: &AppState,
    path: &str,
    target: &SessionTokenTarget,
    token: &SecretValue,
    what: &str,
) -> Result<(), ApiError> {
    match s.state.relay.put_session_token(target, token).await {
        Ok(()) => {
            tracing::info!(session_id = %target.session_id, resource_id = %target.resource_id,
                environment_id = %target.environment_id, url = %target.url,
                "repository token relayed to the vault-bridge");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(session_id = %target.session_id, resource_id = %target.resource_id,
                environment_id = %target.environment_id, url = %target.url, error = %e,
                "repository token refused: no vault-bridge took it");
            let env = &target.environment_id;
            let why = match &e {
                RelayError::NoBridge { .. } => {
                    format!("no vault-bridge of environment {env} is connected")
                }
                other => other.to_string(),
            };
            Err(ApiError::VaultBridgeUnavailable {
                message: format!(
                    "{path}: {why} to receive the token of {}; {what}. Connect a sandbox-agent with a \
                     vault-bridge for environment {env} and retry, or leave authorization_token out and let \
                     the bridge's own credential for the host serve the repository",
                    target.url
                ),
            })
        }
    }
}

/// Tells the bridges to drop the token of each resource (best effort: a
/// failure is logged).
pub(crate) async fn forget_all(
    s: &AppState,
    environment_id: &str,
    session_id: &str,
    objects: &[Value],
) {
    for o in objects
        .iter()
        .filter(|o| o["type"] == json!("github_repository"))
    {
        let t = target(environment_id, session_id, o);
        if let Err(error) = s.state.relay.forget_session_token(&t).await {
            tracing::warn!(session_id, resource_id = %t.resource_id, environment_id, %error,
                "the vault-bridge did not confirm forgetting a repository token");
        }
    }
}

/// The resources stored in a session body.
pub(crate) fn stored(record: &SessionRecord) -> Vec<Value> {
    record.body["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Relays the tokens of `resources` of new session `session_id` and returns
/// the objects to store. On a refusal the tokens already relayed are
/// forgotten and nothing is stored.
pub(crate) async fn relay_new(
    s: &AppState,
    environment_id: &str,
    session_id: &str,
    resources: Vec<NewResource>,
) -> Result<Vec<Value>, ApiError> {
    let mut relayed: Vec<Value> = Vec::new();
    for r in &resources {
        if let Some(token) = &r.token {
            let t = target(environment_id, session_id, &r.object);
            let path = join(&r.path, "authorization_token");
            if let Err(e) = relay_token(
                s,
                &path,
                &t,
                token,
                "the session was not created and nothing was stored",
            )
            .await
            {
                forget_all(s, environment_id, session_id, &relayed).await;
                return Err(e);
            }
            relayed.push(r.object.clone());
        }
        tracing::debug!(
            session_id,
            resource_id = r.id(),
            "session resource accepted"
        );
    }
    Ok(resources.into_iter().map(|r| r.object).collect())
}

fn find<'a>(resources: &'a [Value], session_id: &str, id: &str) -> Result<&'a Value, ApiError> {
    resources
        .iter()
        .find(|r| r["id"].as_str() == Some(id))
        .ok_or_else(|| ApiError::NotFound {
            message: format!("resource {id} not found in session {session_id}"),
        })
}

fn refuse_archived(record: &SessionRecord) -> Result<(), ApiError> {
    if record.body.get("archived_at").is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid(
            "",
            format!("session {} is archived and cannot change", record.id),
        ));
    }
    Ok(())
}

fn encode_page(after_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1|{LISTING}|{after_id}"))
}

fn decode_page(page: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            "page",
            "not a page cursor of this listing (pass next_page as given)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(page.trim_end_matches('='))
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    match raw.split('|').collect::<Vec<_>>().as_slice() {
        ["v1", LISTING, id] if id.starts_with("sesrsc_") => Ok((*id).to_owned()),
        _ => Err(bad()),
    }
}

/// `GET /v1/sessions/{id}/resources`: in creation order; `limit` up to
/// 1000, all when omitted; `next_page` continues after the last id given.
pub(crate) async fn list(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&["limit", "page"])?;
    let limit = match q.one("limit")? {
        None => usize::MAX,
        Some(_) => q.limit(1000, 1000)?,
    };
    let after = q.one("page")?.map(decode_page).transpose()?;
    let record = s.state.store.get_session(&session_id).await?;
    // Ids are time-ordered and the array is in creation order, so "after
    // id" survives the deletion of the cursor's resource.
    let rest: Vec<Value> = stored(&record)
        .into_iter()
        .filter(|r| {
            after
                .as_deref()
                .is_none_or(|a| r["id"].as_str().is_some_and(|id| id > a))
        })
        .collect();
    let more = rest.len() > limit;
    let data: Vec<Value> = rest.into_iter().take(limit).collect();
    let next = if more {
        data.last().and_then(|r| r["id"].as_str()).map(encode_page)
    } else {
        None
    };
    Ok(Json(json!({"data": data, "next_page": next})))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path((session_id, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Query::parse(q.as_deref())?.only(&[])?;
    let record = s.state.store.get_session(&session_id).await?;
    let resources = stored(&record);
    Ok(Json(find(&resources, &session_id, &id)?.clone()))
}

/// Replaces resource `id` in the stored body with `f(resource)` (or removes
/// it when `f` answers `None`), retrying on a concurrent change.
async fn rewrite(
    s: &AppState,
    session_id: &str,
    id: &str,
    f: impl Fn(&Value) -> Option<Value>,
) -> Result<(), ApiError> {
    let store = &s.state.store;
    for _ in 0..8 {
        let record = store.get_session(session_id).await?;
        let mut resources = stored(&record);
        let Some(i) = resources.iter().position(|r| r["id"].as_str() == Some(id)) else {
            return Ok(());
        };
        match f(&resources[i]) {
            Some(v) => resources[i] = v,
            None => {
                resources.remove(i);
            }
        }
        let mut next: Map<String, Value> = record.body.as_object().cloned().unwrap_or_default();
        next.insert("resources".into(), Value::Array(resources));
        match store
            .update_session(
                session_id,
                SessionUpdate {
                    status: None,
                    body: Some(BodyUpdate::Replace(Value::Object(next))),
                    if_version: Some(record.version),
                },
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        message: format!("session {session_id} is being changed concurrently; retry"),
    })
}

/// `POST /v1/sessions/{id}/resources/{rid}` `{authorization_token}`: token
/// rotation of a `github_repository` resource, through the relay.
pub(crate) async fn update(
    State(s): State<AppState>,
    Path((session_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let o = Obj::new("", &body)?;
    o.only(&["authorization_token"])?;
    let Some(raw) = o.get("authorization_token") else {
        return Err(ApiError::invalid("authorization_token", "field required"));
    };
    let token = token("authorization_token", raw)?;
    let record = s.state.store.get_session(&session_id).await?;
    refuse_archived(&record)?;
    let resources = stored(&record);
    let current = find(&resources, &session_id, &id)?;
    if current["type"] != json!("github_repository") {
        return Err(ApiError::invalid(
            "authorization_token",
            format!(
                "resource {id} is a {} resource; only github_repository resources take a token",
                current["type"].as_str().unwrap_or("other")
            ),
        ));
    }
    let env = record.body["environment_id"].as_str().unwrap_or_default();
    let t = target(env, &session_id, current);
    relay_token(
        &s,
        "authorization_token",
        &t,
        &token,
        "the resource still has its previous token",
    )
    .await?;
    drop(token);
    let now = rfc3339(OffsetDateTime::now_utc());
    rewrite(&s, &session_id, &id, |r| {
        let mut r = r.clone();
        r["updated_at"] = json!(now);
        Some(r)
    })
    .await?;
    let record = s.state.store.get_session(&session_id).await?;
    let resources = stored(&record);
    tracing::info!(session_id = %session_id, resource_id = %id, "repository token rotated");
    Ok(Json(find(&resources, &session_id, &id)?.clone()))
}

/// `DELETE /v1/sessions/{id}/resources/{rid}`: removes the resource and
/// tells the bridges to forget its token.
pub(crate) async fn delete(
    State(s): State<AppState>,
    Path((session_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let record = s.state.store.get_session(&session_id).await?;
    refuse_archived(&record)?;
    let resources = stored(&record);
    let current = find(&resources, &session_id, &id)?.clone();
    rewrite(&s, &session_id, &id, |_| None).await?;
    let env = record.body["environment_id"].as_str().unwrap_or_default();
    forget_all(&s, env, &session_id, std::slice::from_ref(&current)).await;
    tracing::info!(session_id = %session_id, resource_id = %id, "session resource deleted");
    Ok(Json(json!({"id": id, "type": "session_resource_deleted"})))
}

/// `POST /v1/sessions/{id}/resources`: the SDK adds only `file` resources,
/// which need a Files API Airlock does not have.
pub(crate) async fn add(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    s.state.store.get_session(&session_id).await?;
    let o = Obj::new("", &body)?;
    match o.req_str("type")? {
        "github_repository" => Err(ApiError::invalid(
            "type",
            "github_repository resources are given when the session is created; only file resources can be \
             added later, and Airlock has no Files API",
        )),
        other => Err(unsupported("type", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        parse(Some(&v)).unwrap_err().to_string()
    }

    #[test]
    fn urls_mount_paths_and_checkouts_name_their_fields() {
        let r = parse(Some(&json!([
            {"type": "github_repository", "url": "https://github.com/acme/widgets.git",
             "authorization_token": "ghp_canary", "checkout": {"type": "branch", "name": "main"}},
            {"type": "github_repository", "url": "https://git.corp.example:8443/team/sub/tools/",
             "checkout": {"type": "commit", "sha": "ABCDEF0123456789abcdef0123456789abcdef01"}},
            {"type": "github_repository", "url": "https://[::1]/x/y", "mount_path": "/src/y"},
        ])))
        .unwrap();
        assert_eq!(r[0].object["mount_path"], json!("/workspace/widgets"));
        assert_eq!(
            r[0].object["checkout"],
            json!({"type": "branch", "name": "main"})
        );
        assert!(r[0].object["id"].as_str().unwrap().starts_with("sesrsc_"));
        assert_eq!(
            r[0].token.as_ref().map(SecretValue::expose),
            Some("ghp_canary")
        );
        assert!(!format!("{r:?}").contains("canary"));
        assert!(!r[0].object.to_string().contains("canary"));
        assert_eq!(r[1].object["mount_path"], json!("/workspace/tools"));
        assert_eq!(
            r[1].object["checkout"]["sha"],
            json!("abcdef0123456789abcdef0123456789abcdef01")
        );
        assert_eq!(r[2].object["checkout"], Value::Null);
        assert!(r[1].token.is_none());

        let gh = |extra: Value| {
            let mut v = json!({"type": "github_repository", "url": "https://h.example/o/r"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            err(json!([v]))
        };
        for (url, why) in [
            ("http://h/o/r", "must be an https://"),
            ("https://u:p@h/o/r", "userinfo"),
            ("https://h/o/r?x=1", "query"),
            ("https://h/o/r#f", "query or a fragment"),
            ("https:///o/r", "must name a host"),
            ("https://h", "must have a path"),
            ("https://h/", "must have a path"),
            ("https://h_x/o/r", "not a valid host"),
            ("https://h:0/o/r", "not a port"),
            ("https://h/o/../r", ". or .."),
            ("https://h/o r", "whitespace"),
        ] {
            let e = gh(json!({"url": url}));
            assert!(e.starts_with("resources.0.url: "), "{url}: {e}");
            assert!(e.contains(why), "{url}: {e}");
        }
        for (p, why) in [
            ("rel/x", "absolute"),
            ("/", "root"),
            ("/a//b", "normalized"),
            ("/a/./b", "normalized"),
            ("/a/../b", "normalized"),
            ("/a/", "normalized"),
        ] {
            let e = gh(json!({"mount_path": p}));
            assert!(e.starts_with("resources.0.mount_path: "), "{p}: {e}");
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(gh(json!({"checkout": {"type": "branch", "name": "a..b"}}))
            .starts_with("resources.0.checkout.name: "));
        assert!(gh(json!({"checkout": {"type": "commit", "sha": "abc"}}))
            .starts_with("resources.0.checkout.sha: "));
        assert!(gh(json!({"checkout": {"type": "tag", "name": "v1"}}))
            .starts_with("resources.0.checkout.type: "));
        let e = gh(json!({"authorization_token": "has space-canary"}));
        assert!(e.starts_with("resources.0.authorization_token: "), "{e}");
        assert!(!e.contains("canary"), "{e}");
        assert!(gh(json!({"authorization_token": 7}))
            .starts_with("resources.0.authorization_token: expected a string"));
        assert!(gh(json!({"extra": 1})).starts_with("resources.0.extra: unknown field"));

        assert_eq!(
            err(json!([{"type": "file", "file_id": "file_1"}])),
            format!("resources.0.type: {NO_FILES}")
        );
        assert_eq!(
            err(json!([{"type": "memory_store", "memory_store_id": "m"}])),
            format!("resources.0.type: {NO_MEMORY}")
        );
        assert!(err(json!([{"type": "x"}])).starts_with("resources.0.type: unknown resource type"));
        assert!(err(json!({})).starts_with("resources: expected an array"));
        let many: Vec<Value> = (0..=MAX_RESOURCES)
            .map(|i| json!({"type": "github_repository", "url": format!("https://h/o/r{i}")}))
            .collect();
        assert!(err(Value::Array(many)).starts_with("resources: at most 20"));
        let e = err(json!([
            {"type": "github_repository", "url": "https://a/o/r"},
            {"type": "github_repository", "url": "https://b/p/r.git"},
        ]));
        assert!(
            e.starts_with("resources.1.mount_path: /workspace/r overlaps"),
            "{e}"
        );
        let e = err(json!([
            {"type": "github_repository", "url": "https://a/o/r", "mount_path": "/src"},
            {"type": "github_repository", "url": "https://a/o/s", "mount_path": "/src/s"},
        ]));
        assert!(e.starts_with("resources.1.mount_path: "), "{e}");
        assert!(overlaps("/a/b", "/a") && !overlaps("/a/bc", "/a/b"));
    }

    #[test]
    fn page_cursors_round_trip_and_refuse_others() {
        let p = encode_page("sesrsc_1");
        assert_eq!(decode_page(&p).unwrap(), "sesrsc_1");
        assert!(decode_page("nope")
            .unwrap_err()
            .to_string()
            .starts_with("page: "));
    }
}
