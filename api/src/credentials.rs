//! `/v1/vaults/{vault_id}/credentials`: create, retrieve, list, update,
//! archive, delete, and `mcp_oauth_validate` (probed by a vault-bridge).
//!
//! A credential's `auth` is one of `mcp_oauth`, `static_bearer` and
//! `environment_variable`. Parsing splits a request into the metadata the
//! catalog stores (the response `auth`: URLs, expiry, refresh settings
//! without secrets, variable name, networking, injection location) and the
//! secret fields ([`SecretFields`]: `access_token`, `refresh_token`,
//! `client_secret`, `token`, `secret_value`), which are never stored,
//! echoed or logged. Secrets go to the [`crate::SecretRelay`] for the
//! environment the vault is pinned to, before anything is stored; if the
//! relay does not take them the request fails with 503
//! `vault_bridge_unavailable` and nothing changes. A credential whose
//! metadata names `airlock.kv_path` (the secret already lives in the
//! customer's Vault) may be created without secret fields.
//!
//! The `auth.type` of a credential never changes; neither do
//! `mcp_server_url`, `secret_name` and `refresh.client_id`.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use catalog::{CatalogError, CredentialRecord, NewCredential, VaultQuery, VaultRecord};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{metadata, patch_metadata, type_name, Obj};
use crate::ids::{new_id, rfc3339};
use crate::query::{ArchivableList, Query};
use crate::relay::{RelayError, RelayTarget, SecretFields};
use crate::vaults::{display_name, pinned_environment};
use crate::AppState;
use protocol::mcp::{McpValidation, ProbeHttpResponse};

/// Credential metadata key naming the path of the secret in the customer's
/// Vault/OpenBao (the bridge reads it there; the API never sees it).
pub(crate) const KV_PATH_KEY: &str = "airlock.kv_path";
/// Credential metadata key: how a `static_bearer` secret is sent on the way
/// out, `"bearer"` (the default) or `"basic"` (HTTP Basic, for Git servers).
pub(crate) const HTTP_AUTH_KEY: &str = "airlock.http_auth";
/// Credential metadata key: the user-id of the `basic` form (default
/// `x-access-token`).
pub(crate) const BASIC_USERNAME_KEY: &str = "airlock.basic_username";
const MAX_USERNAME_CHARS: usize = 255;
const MAX_ALLOWED_HOSTS: usize = 16;
const MAX_URL_CHARS: usize = 2048;
const MAX_SECRET_NAME_CHARS: usize = 255;

/// A parsed `POST /v1/vaults/{id}/credentials`. Its `Debug` shows secret
/// field names, never values.
#[derive(Debug)]
pub(crate) struct CreateCredential {
    /// What the catalog stores: `display_name`, `metadata`, `auth` (no secrets).
    pub body: Value,
    /// The MCP server URL or the variable name (unique per vault).
    pub binding: String,
    /// The secret fields, for the relay only.
    pub secrets: SecretFields,
}

/// A parsed update: the next stored body and the secrets it carries.
#[derive(Debug)]
pub(crate) struct UpdateCredential {
    pub body: Value,
    pub secrets: SecretFields,
}

/// Reads secret field `key` into `secrets`; required unless `optional`.
fn secret(
    o: &Obj<'_>,
    key: &'static str,
    optional: bool,
    secrets: &mut SecretFields,
) -> Result<(), ApiError> {
    match o.get(key) {
        None if optional => Ok(()),
        None => Err(ApiError::invalid(
            &o.path(key),
            format!("field required (or give the credential metadata {KV_PATH_KEY} naming where the secret already is)"),
        )),
        Some(Value::String(s)) if s.is_empty() => {
            Err(ApiError::invalid(&o.path(key), "must not be empty"))
        }
        Some(Value::String(s)) => {
            secrets.insert(key, s.clone());
            Ok(())
        }
        Some(other) => Err(ApiError::invalid(
            &o.path(key),
            format!("expected a string, got {}", type_name(other)),
        )),
    }
}

fn url(path: &str, s: &str) -> Result<String, ApiError> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    if host.is_none_or(str::is_empty) || s.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(
            path,
            "must be an absolute http:// or https:// URL",
        ));
    }
    if s.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    Ok(s.to_owned())
}

fn future_time(path: &str, v: &Value) -> Result<String, ApiError> {
    let Value::String(s) = v else {
        return Err(ApiError::invalid(
            path,
            format!("expected an RFC 3339 date-time, got {}", type_name(v)),
        ));
    };
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| ApiError::invalid(path, format!("{s:?} is not an RFC 3339 date-time")))?;
    if t <= OffsetDateTime::now_utc() {
        return Err(ApiError::invalid(path, "must be in the future"));
    }
    Ok(rfc3339(t))
}

fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// One `allowed_hosts` entry: a bare hostname, an IPv4 address or
/// `*.domain`; no URL, port, path or IPv6. Returned lowercase.
fn allowed_host(path: &str, h: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid(path, format!("{h:?} {why}"));
    if h.contains("://") || h.contains('/') {
        return Err(bad("is not a bare host: URLs and paths are not accepted"));
    }
    if h.contains('[') || h.matches(':').count() > 1 {
        return Err(bad("is an IPv6 address, which is not accepted"));
    }
    if h.contains(':') {
        return Err(bad("has a port, which is not accepted"));
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.len() > 253 || name.split('.').any(|l| !is_label(l)) {
        return Err(bad("is not a hostname, an IPv4 address or a *.wildcard"));
    }
    let numeric = name.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric && (h.starts_with("*.") || name.parse::<std::net::Ipv4Addr>().is_err()) {
        return Err(bad("is not a valid IPv4 address"));
    }
    Ok(h.to_ascii_lowercase())
}

fn networking(path: &str, v: &Value) -> Result<Value, ApiError> {
    let o = Obj::new(path, v)?;
    match o.req_str("type")? {
        "unrestricted" => {
            o.only(&["type"])?;
            Ok(json!({"type": "unrestricted"}))
        }
        "limited" => {
            o.only(&["type", "allowed_hosts"])?;
            let Some(hosts) = o.opt_array("allowed_hosts")? else {
                return Err(ApiError::invalid(
                    &o.path("allowed_hosts"),
                    "field required",
                ));
            };
            if hosts.is_empty() || hosts.len() > MAX_ALLOWED_HOSTS {
                return Err(ApiError::invalid(
                    &o.path("allowed_hosts"),
                    format!(
                        "must list 1 to {MAX_ALLOWED_HOSTS} hosts, got {}",
                        hosts.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(hosts.len());
            for (i, h) in hosts.iter().enumerate() {
                let p = format!("{}.{i}", o.path("allowed_hosts"));
                let Value::String(h) = h else {
                    return Err(ApiError::invalid(
                        &p,
                        format!("expected a string, got {}", type_name(h)),
                    ));
                };
                out.push(allowed_host(&p, h)?);
            }
            Ok(json!({"type": "limited", "allowed_hosts": out}))
        }
        other => Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown networking type {other:?}; expected unrestricted or limited"),
        )),
    }
}

/// `injection_location` over `current` (absent keys keep theirs); at least
/// one location must stay enabled.
fn injection_location(path: &str, v: Option<&Value>, current: &Value) -> Result<Value, ApiError> {
    let mut header = current["header"].as_bool().unwrap_or(true);
    let mut body = current["body"].as_bool().unwrap_or(false);
    if let Some(v) = v {
        let o = Obj::new(path, v)?;
        o.only(&["header", "body"])?;
        header = o.opt_bool("header")?.unwrap_or(header);
        body = o.opt_bool("body")?.unwrap_or(body);
    }
    if !header && !body {
        return Err(ApiError::invalid(
            path,
            "at least one of header and body must be true",
        ));
    }
    Ok(json!({"header": header, "body": body}))
}

fn secret_name(path: &str, s: &str) -> Result<String, ApiError> {
    let ok = s.chars().count() <= MAX_SECRET_NAME_CHARS
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(ApiError::invalid(
            path,
            format!("{s:?} is not an environment variable name (letters, digits and _, not starting with a digit, at most {MAX_SECRET_NAME_CHARS})"),
        ));
    }
    Ok(s.to_owned())
}

fn token_endpoint_auth(
    path: &str,
    v: &Value,
    optional_secret: bool,
    secrets: &mut SecretFields,
) -> Result<Value, ApiError> {
    let o = Obj::new(path, v)?;
    match o.req_str("type")? {
        "none" => {
            o.only(&["type"])?;
            Ok(json!({"type": "none"}))
        }
        t @ ("client_secret_basic" | "client_secret_post") => {
            o.only(&["type", "client_secret"])?;
            secret(&o, "client_secret", optional_secret, secrets)?;
            Ok(json!({ "type": t }))
        }
        other => Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown token_endpoint_auth type {other:?}; expected none, client_secret_basic or client_secret_post"),
        )),
    }
}

fn refresh_create(
    path: &str,
    v: &Value,
    kv: bool,
    secrets: &mut SecretFields,
) -> Result<Value, ApiError> {
    let o = Obj::new(path, v)?;
    o.only(&[
        "client_id",
        "refresh_token",
        "token_endpoint",
        "token_endpoint_auth",
        "scope",
        "resource",
    ])?;
    let client_id = o.req_nonempty("client_id")?;
    secret(&o, "refresh_token", kv, secrets)?;
    let endpoint = url(&o.path("token_endpoint"), o.req_str("token_endpoint")?)?;
    let Some(tea) = o.get("token_endpoint_auth") else {
        return Err(ApiError::invalid(
            &o.path("token_endpoint_auth"),
            "field required",
        ));
    };
    let tea = token_endpoint_auth(&o.path("token_endpoint_auth"), tea, kv, secrets)?;
    Ok(json!({
        "client_id": client_id,
        "token_endpoint": endpoint,
        "token_endpoint_auth": tea,
        "scope": o.opt_str("scope")?,
        "resource": o.opt_str("resource")?,
    }))
}

/// Parses a create `auth`: the stored (public) part, the binding, secrets.
/// With `kv`, secret fields may be left out.
fn auth_create(v: &Value, kv: bool) -> Result<(Value, String, SecretFields), ApiError> {
    let o = Obj::new("auth", v)?;
    let mut secrets = SecretFields::default();
    match o.req_str("type")? {
        "mcp_oauth" => {
            o.only(&["type", "mcp_server_url", "access_token", "expires_at", "refresh"])?;
            let server = url(&o.path("mcp_server_url"), o.req_str("mcp_server_url")?)?;
            secret(&o, "access_token", kv, &mut secrets)?;
            let expires = o
                .get("expires_at")
                .map(|v| future_time(&o.path("expires_at"), v))
                .transpose()?;
            let refresh = o
                .get("refresh")
                .map(|r| refresh_create(&o.path("refresh"), r, kv, &mut secrets))
                .transpose()?;
            Ok((
                json!({"type": "mcp_oauth", "mcp_server_url": server, "expires_at": expires, "refresh": refresh}),
                server,
                secrets,
            ))
        }
        "static_bearer" => {
            o.only(&["type", "mcp_server_url", "token"])?;
            let server = url(&o.path("mcp_server_url"), o.req_str("mcp_server_url")?)?;
            secret(&o, "token", kv, &mut secrets)?;
            Ok((
                json!({"type": "static_bearer", "mcp_server_url": server}),
                server,
                secrets,
            ))
        }
        "environment_variable" => {
            o.only(&[
                "type",
                "secret_name",
                "secret_value",
                "networking",
                "injection_location",
            ])?;
            let name = secret_name(&o.path("secret_name"), o.req_str("secret_name")?)?;
            secret(&o, "secret_value", kv, &mut secrets)?;
            let Some(net) = o.get("networking") else {
                return Err(ApiError::invalid(&o.path("networking"), "field required"));
            };
            let net = networking(&o.path("networking"), net)?;
            let inj = injection_location(
                &o.path("injection_location"),
                o.get("injection_location"),
                &Value::Null,
            )?;
            Ok((
                json!({"type": "environment_variable", "secret_name": name, "networking": net, "injection_location": inj}),
                name,
                secrets,
            ))
        }
        other => Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown credential type {other:?}; expected mcp_oauth, static_bearer or environment_variable"),
        )),
    }
}

/// Checks the `airlock.kv_path` metadata value, when present.
fn kv_path(meta: &Map<String, Value>) -> Result<bool, ApiError> {
    let Some(p) = meta.get(KV_PATH_KEY).and_then(Value::as_str) else {
        return Ok(false);
    };
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !ok {
        return Err(ApiError::invalid(
            &format!("metadata.{KV_PATH_KEY}"),
            "must be a relative KV path such as team/service (no empty, . or .. segments)",
        ));
    }
    Ok(true)
}

/// Checks `airlock.http_auth` and `airlock.basic_username` against the
/// credential's `auth.type`.
fn http_auth(meta: &Map<String, Value>, auth_type: &str) -> Result<(), ApiError> {
    let path = |k: &str| format!("metadata.{k}");
    let basic = match meta.get(HTTP_AUTH_KEY).and_then(Value::as_str) {
        None => false,
        Some(v @ ("bearer" | "basic")) => {
            if auth_type != "static_bearer" {
                return Err(ApiError::invalid(
                    &path(HTTP_AUTH_KEY),
                    format!("applies to static_bearer credentials only (this one is {auth_type})"),
                ));
            }
            v == "basic"
        }
        Some(other) => {
            return Err(ApiError::invalid(
                &path(HTTP_AUTH_KEY),
                format!("must be \"bearer\" or \"basic\", got {other:?}"),
            ))
        }
    };
    if let Some(u) = meta.get(BASIC_USERNAME_KEY).and_then(Value::as_str) {
        if !basic {
            return Err(ApiError::invalid(
                &path(BASIC_USERNAME_KEY),
                format!("is used only with metadata {HTTP_AUTH_KEY} = \"basic\""),
            ));
        }
        let ok = !u.is_empty()
            && u.chars().count() <= MAX_USERNAME_CHARS
            && u.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if !ok {
            return Err(ApiError::invalid(
                &path(BASIC_USERNAME_KEY),
                format!("must be 1 to {MAX_USERNAME_CHARS} visible ASCII characters without ':'"),
            ));
        }
    }
    Ok(())
}

/// Parses `POST /v1/vaults/{id}/credentials`.
pub(crate) fn parse_create(body: &Value) -> Result<CreateCredential, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["auth", "display_name", "metadata"])?;
    let meta = metadata("metadata", o.get("metadata"))?;
    let kv = kv_path(&meta)?;
    let Some(auth) = o.get("auth") else {
        return Err(ApiError::invalid("auth", "field required"));
    };
    let (auth, binding, secrets) = auth_create(auth, kv)?;
    http_auth(&meta, auth["type"].as_str().unwrap_or_default())?;
    let name = o
        .opt_str("display_name")?
        .map(|n| display_name("display_name", n))
        .transpose()?;
    Ok(CreateCredential {
        body: json!({"display_name": name, "metadata": meta, "auth": auth}),
        binding,
        secrets,
    })
}

/// Refuses a change of an immutable field (sending the same value is fine).
fn immutable(o: &Obj<'_>, key: &str, current: &Value) -> Result<(), ApiError> {
    match o.get(key) {
        Some(v) if v != current => Err(ApiError::invalid(
            &o.path(key),
            "is immutable; create a new credential to change it",
        )),
        _ => Ok(()),
    }
}

fn refresh_update(
    path: &str,
    v: &Value,
    current: &Value,
    secrets: &mut SecretFields,
) -> Result<Value, ApiError> {
    let o = Obj::new(path, v)?;
    o.only(&["refresh_token", "scope", "token_endpoint_auth", "client_id"])?;
    let Some(cur) = current.as_object().filter(|_| !current.is_null()) else {
        return Err(ApiError::invalid(
            path,
            "the credential has no refresh configuration; create a new credential with one",
        ));
    };
    immutable(&o, "client_id", &current["client_id"])?;
    let mut next = cur.clone();
    secret(&o, "refresh_token", true, secrets)?;
    if o.has("scope") {
        let scope = o.opt_str("scope")?.filter(|s| !s.is_empty());
        next.insert("scope".into(), json!(scope));
    }
    if let Some(tea) = o.get("token_endpoint_auth") {
        let p = o.path("token_endpoint_auth");
        let t = Obj::new(&p, tea)?;
        t.only(&["type", "client_secret"])?;
        match t.req_str("type")? {
            "client_secret_basic" | "client_secret_post" => {}
            other => {
                return Err(ApiError::invalid(
                    &t.path("type"),
                    format!("{other:?} cannot be sent in an update; expected client_secret_basic or client_secret_post"),
                ))
            }
        }
        if current["token_endpoint_auth"]["type"] == json!("none") {
            return Err(ApiError::invalid(
                &p,
                "the credential's token endpoint uses no client authentication; a client secret can be set only on credentials created with client_secret_basic or client_secret_post",
            ));
        }
        // the stored type is kept, as the hosted API does
        secret(&t, "client_secret", true, secrets)?;
    }
    Ok(Value::Object(next))
}

/// Applies an update `auth` to the stored one (whose type it must have).
fn auth_update(v: &Value, current: &Value, secrets: &mut SecretFields) -> Result<Value, ApiError> {
    let o = Obj::new("auth", v)?;
    let stored = current["type"].as_str().unwrap_or_default();
    let t = o.req_str("type")?;
    if t != stored {
        return Err(ApiError::invalid(
            &o.path("type"),
            format!("the type of a credential cannot change (it is {stored})"),
        ));
    }
    let mut next = current.as_object().cloned().unwrap_or_default();
    match t {
        "mcp_oauth" => {
            o.only(&[
                "type",
                "access_token",
                "expires_at",
                "refresh",
                "mcp_server_url",
            ])?;
            immutable(&o, "mcp_server_url", &current["mcp_server_url"])?;
            secret(&o, "access_token", true, secrets)?;
            if o.has("expires_at") {
                let e = o
                    .get("expires_at")
                    .map(|v| future_time(&o.path("expires_at"), v))
                    .transpose()?;
                next.insert("expires_at".into(), json!(e));
            }
            if let Some(r) = o.get("refresh") {
                let r = refresh_update(&o.path("refresh"), r, &current["refresh"], secrets)?;
                next.insert("refresh".into(), r);
            }
        }
        "static_bearer" => {
            o.only(&["type", "token", "mcp_server_url"])?;
            immutable(&o, "mcp_server_url", &current["mcp_server_url"])?;
            secret(&o, "token", true, secrets)?;
        }
        "environment_variable" => {
            o.only(&[
                "type",
                "secret_value",
                "networking",
                "injection_location",
                "secret_name",
            ])?;
            immutable(&o, "secret_name", &current["secret_name"])?;
            secret(&o, "secret_value", true, secrets)?;
            if let Some(n) = o.get("networking") {
                next.insert("networking".into(), networking(&o.path("networking"), n)?);
            }
            if let Some(i) = o.get("injection_location") {
                let i = injection_location(
                    &o.path("injection_location"),
                    Some(i),
                    &current["injection_location"],
                )?;
                next.insert("injection_location".into(), i);
            }
        }
        other => {
            return Err(ApiError::internal(format!(
                "stored credential has unknown auth type {other:?}"
            )))
        }
    }
    Ok(Value::Object(next))
}

/// Applies `POST /v1/vaults/{vid}/credentials/{cid}` to the stored body.
pub(crate) fn apply_update(current: &Value, body: &Value) -> Result<UpdateCredential, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["auth", "display_name", "metadata"])?;
    let mut next = current.as_object().cloned().unwrap_or_default();
    let mut secrets = SecretFields::default();
    if o.has("display_name") {
        let name = o
            .opt_str("display_name")?
            .map(|n| display_name("display_name", n))
            .transpose()?;
        next.insert("display_name".into(), json!(name));
    }
    if let Some(patch) = o.get("metadata") {
        let cur = next
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let m = patch_metadata("metadata", &cur, patch, false)?;
        kv_path(&m)?;
        next.insert("metadata".into(), Value::Object(m));
    }
    if let Some(a) = o.get("auth") {
        let auth = auth_update(a, &current["auth"], &mut secrets)?;
        next.insert("auth".into(), auth);
    }
    if let Some(m) = next.get("metadata").and_then(Value::as_object) {
        http_auth(m, current["auth"]["type"].as_str().unwrap_or_default())?;
    }
    Ok(UpdateCredential {
        body: Value::Object(next),
        secrets,
    })
}

/// The published credential object (never a secret: the stored body has none).
pub(crate) fn render(r: &CredentialRecord) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!("vault_credential"));
    out.insert("id".into(), json!(r.id));
    out.insert("vault_id".into(), json!(r.vault_id));
    out.insert("display_name".into(), r.body["display_name"].clone());
    out.insert(
        "metadata".into(),
        r.body.get("metadata").cloned().unwrap_or_else(|| json!({})),
    );
    out.insert("auth".into(), r.body["auth"].clone());
    out.insert("created_at".into(), json!(rfc3339(r.created_at)));
    out.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    out.insert("archived_at".into(), json!(r.archived_at.map(rfc3339)));
    Value::Object(out)
}

fn map_err(e: CatalogError, vault_id: &str, credential_id: &str) -> ApiError {
    match e {
        CatalogError::Archived {
            kind: catalog::ResourceKind::Vault,
            ..
        } => ApiError::invalid("", format!("vault {vault_id} is archived")),
        CatalogError::Archived { .. } => ApiError::invalid(
            "",
            format!("credential {credential_id} is archived and cannot change"),
        ),
        CatalogError::NotFound {
            kind: catalog::ResourceKind::Vault,
            ..
        } => ApiError::not_found("vault", vault_id),
        CatalogError::Conflict { id, reason, .. } if id != credential_id => ApiError::Conflict {
            message: format!("auth: {id}: {reason}; archive or delete that credential first"),
        },
        CatalogError::Invalid { reason } => ApiError::invalid("", reason),
        other => other.into(),
    }
}

async fn live_vault(s: &AppState, vault_id: &str) -> Result<VaultRecord, ApiError> {
    let vault = s.state.catalog.get_vault(vault_id).await?;
    if vault.archived_at.is_some() {
        return Err(ApiError::invalid(
            "",
            format!("vault {vault_id} is archived"),
        ));
    }
    Ok(vault)
}

/// Hands `secrets` to the bridges serving `vault`; the 503 refusal when
/// nothing takes them.
async fn relay(
    s: &AppState,
    vault: &VaultRecord,
    credential_id: &str,
    secrets: &SecretFields,
) -> Result<(), ApiError> {
    let Some(env) = pinned_environment(&vault.body) else {
        return Err(ApiError::VaultBridgeUnavailable {
            message: format!(
                "vault {} is not pinned to an environment, so no vault-bridge serves it and the secret has \
                 nowhere to go; nothing was stored. Set the vault's metadata {} to the environment whose \
                 sandbox-agents run the vault-bridge, or give the credential metadata {KV_PATH_KEY} naming \
                 where the secret already is in your Vault",
                vault.id,
                crate::vaults::PIN_KEY
            ),
        });
    };
    let target = RelayTarget {
        environment_id: env.to_owned(),
        vault_id: vault.id.clone(),
        credential_id: credential_id.to_owned(),
    };
    match s.state.relay.put(&target, secrets).await {
        Ok(()) => {
            tracing::info!(vault_id = %vault.id, credential_id, environment_id = env, fields = ?secrets.names(), "credential secret relayed to the vault-bridge");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(vault_id = %vault.id, credential_id, environment_id = env, error = %e, "credential secret refused: no vault-bridge took it");
            let why = match &e {
                RelayError::NoBridge { .. } => {
                    format!("no vault-bridge of environment {env} is connected")
                }
                other => other.to_string(),
            };
            Err(ApiError::VaultBridgeUnavailable {
                message: format!(
                    "vault {}: {why} to receive the credential's secret; nothing was stored. Connect a \
                     sandbox-agent with a vault-bridge for environment {env} and retry, or give the credential \
                     metadata {KV_PATH_KEY} naming where the secret already is in your Vault",
                    vault.id
                ),
            })
        }
    }
}

/// Tells the bridges to forget `target` (best effort: a failure is logged).
pub(crate) async fn forget(s: &AppState, target: &RelayTarget) {
    if let Err(error) = s.state.relay.forget(target).await {
        tracing::warn!(vault_id = %target.vault_id, credential_id = %target.credential_id,
            environment_id = %target.environment_id, %error, "the vault-bridge did not confirm forgetting a credential");
    }
}

fn target_of(vault: &VaultRecord, credential_id: &str) -> Option<RelayTarget> {
    pinned_environment(&vault.body).map(|env| RelayTarget {
        environment_id: env.to_owned(),
        vault_id: vault.id.clone(),
        credential_id: credential_id.to_owned(),
    })
}

pub(crate) async fn create(
    State(s): State<AppState>,
    Path(vault_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_create(&body)?;
    drop(body);
    let vault = live_vault(&s, &vault_id).await?;
    // Refuse what the catalog would refuse before any secret leaves.
    let live = s
        .state
        .catalog
        .list_credentials(
            &vault_id,
            VaultQuery {
                limit: 100,
                ..VaultQuery::default()
            },
        )
        .await?;
    if live.items.iter().any(|c| c.binding == req.binding) {
        return Err(ApiError::Conflict {
            message: format!(
                "auth: {}: vault {vault_id} already has a live credential for it; archive or delete that credential first",
                req.binding
            ),
        });
    }
    if live.items.len() >= catalog::MAX_CREDENTIALS_PER_VAULT {
        return Err(ApiError::invalid(
            "",
            format!(
                "vault {vault_id} already holds {} live credentials, the most allowed",
                catalog::MAX_CREDENTIALS_PER_VAULT
            ),
        ));
    }
    let id = new_id("vcrd");
    let relayed = !req.secrets.is_empty();
    if relayed {
        relay(&s, &vault, &id, &req.secrets).await?;
    }
    let stored = s
        .state
        .catalog
        .create_credential(NewCredential {
            id: id.clone(),
            vault_id: vault_id.clone(),
            binding: req.binding,
            body: req.body,
        })
        .await;
    let record = match stored {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = target_of(&vault, &id).filter(|_| relayed) {
                forget(&s, &t).await;
            }
            return Err(map_err(e, &vault_id, &id));
        }
    };
    tracing::info!(vault_id = %vault_id, credential_id = %id, auth_type = record.body["auth"]["type"].as_str(), "credential created");
    Ok(Json(render(&record)))
}

pub(crate) async fn retrieve(
    State(s): State<AppState>,
    Path((vault_id, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Query::parse(q.as_deref())?.only(&[])?;
    let record = s
        .state
        .catalog
        .get_credential(&vault_id, &id)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    Ok(Json(render(&record)))
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path((vault_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let current = s
        .state
        .catalog
        .get_credential(&vault_id, &id)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    if current.archived_at.is_some() {
        return Err(ApiError::invalid(
            "",
            format!("credential {id} is archived and cannot change"),
        ));
    }
    let req = apply_update(&current.body, &body)?;
    drop(body);
    if !req.secrets.is_empty() {
        let vault = live_vault(&s, &vault_id).await?;
        relay(&s, &vault, &id, &req.secrets).await?;
    } else if req.body == current.body {
        return Ok(Json(render(&current)));
    }
    let record = s
        .state
        .catalog
        .update_credential(&vault_id, &id, req.body)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    Ok(Json(render(&record)))
}

pub(crate) async fn archive(
    State(s): State<AppState>,
    Path((vault_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vault = s.state.catalog.get_vault(&vault_id).await?;
    let record = s
        .state
        .catalog
        .archive_credential(&vault_id, &id)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    if let Some(t) = target_of(&vault, &id) {
        forget(&s, &t).await;
    }
    tracing::info!(vault_id = %vault_id, credential_id = %id, "credential archived");
    Ok(Json(render(&record)))
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    Path((vault_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vault = s.state.catalog.get_vault(&vault_id).await?;
    s.state
        .catalog
        .delete_credential(&vault_id, &id)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    if let Some(t) = target_of(&vault, &id) {
        forget(&s, &t).await;
    }
    tracing::info!(vault_id = %vault_id, credential_id = %id, "credential deleted");
    Ok(Json(json!({"id": id, "type": "vault_credential_deleted"})))
}

/// Longest `http_response.body` passed on (the bridge already cuts and
/// scrubs; this is the API's own bound).
const PROBE_BODY_MAX_BYTES: usize = 4096;

/// `http_response` of a validation object.
fn probe_http(r: ProbeHttpResponse) -> Value {
    let mut body = r.body;
    let mut truncated = r.body_truncated;
    if body.len() > PROBE_BODY_MAX_BYTES {
        let mut cut = PROBE_BODY_MAX_BYTES;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        truncated = true;
    }
    json!({
        "status_code": r.status_code,
        "content_type": r.content_type.unwrap_or_default(),
        "body": body,
        "body_truncated": truncated,
    })
}

/// The SDK's `vault_credential_validation` object.
pub(crate) fn render_validation(
    vault_id: &str,
    credential_id: &str,
    validated_at: OffsetDateTime,
    v: McpValidation,
) -> Value {
    json!({
        "type": "vault_credential_validation",
        "credential_id": credential_id,
        "vault_id": vault_id,
        "validated_at": rfc3339(validated_at),
        "status": v.status,
        "has_refresh_token": v.has_refresh_token,
        "mcp_probe": v.mcp_probe.map(|p| json!({
            "method": p.method,
            "http_response": p.http_response.map(probe_http),
        })),
        "refresh": v.refresh.map(|r| json!({
            "status": r.status,
            "http_response": r.http_response.map(probe_http),
        })),
    })
}

/// `POST /v1/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate`:
/// a vault-bridge of the environment the vault is pinned to probes the
/// credential's MCP server with the secret it holds (the control plane has
/// none). 503 `vault_bridge_unavailable` when no bridge can.
pub(crate) async fn mcp_oauth_validate(
    State(s): State<AppState>,
    Path((vault_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vault = live_vault(&s, &vault_id).await?;
    let record = s
        .state
        .catalog
        .get_credential(&vault_id, &id)
        .await
        .map_err(|e| map_err(e, &vault_id, &id))?;
    if record.archived_at.is_some() {
        return Err(ApiError::invalid(
            "",
            format!("credential {id} is archived"),
        ));
    }
    let kind = record.body["auth"]["type"].as_str().unwrap_or_default();
    if kind != "mcp_oauth" && kind != "static_bearer" {
        return Err(ApiError::invalid(
            "auth.type",
            format!(
                "credential {id} is {kind}; only mcp_oauth and static_bearer credentials have an MCP server to validate against"
            ),
        ));
    }
    let Some(target) = target_of(&vault, &id) else {
        return Err(ApiError::VaultBridgeUnavailable {
            message: format!(
                "vault {vault_id} is not pinned to an environment, so no vault-bridge is known to hold credential \
                 {id}'s secret and nothing can probe its MCP server. Set the vault's metadata {} to the \
                 environment whose sandbox-agents run the vault-bridge",
                crate::vaults::PIN_KEY
            ),
        });
    };
    let env = target.environment_id.clone();
    match s.state.relay.validate_mcp(&target, &record.body).await {
        Ok(v) => {
            tracing::info!(vault_id = %vault_id, credential_id = %id, environment_id = %env,
                status = %v.status, has_refresh_token = v.has_refresh_token, "credential validated by a vault-bridge");
            Ok(Json(render_validation(
                &vault_id,
                &id,
                OffsetDateTime::now_utc(),
                v,
            )))
        }
        Err(e) => {
            tracing::warn!(vault_id = %vault_id, credential_id = %id, environment_id = %env, error = %e,
                "credential not validated: no vault-bridge could probe it");
            let why = match &e {
                RelayError::NoBridge { .. } => {
                    format!("no vault-bridge of environment {env} is connected")
                }
                other => other.to_string(),
            };
            Err(ApiError::VaultBridgeUnavailable {
                message: format!(
                    "credential {id} of vault {vault_id} was not validated: {why}. Its secret is held by the \
                     vault-bridge, which makes the probe; connect a sandbox-agent with a vault-bridge for \
                     environment {env} and retry"
                ),
            })
        }
    }
}

pub(crate) async fn list(
    State(s): State<AppState>,
    Path(vault_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let list = ArchivableList::parse(q.as_deref(), "credentials")?;
    let page = s
        .state
        .catalog
        .list_credentials(&vault_id, list.vault_query())
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

    fn err(v: Value) -> String {
        parse_create(&v).unwrap_err().to_string()
    }

    #[test]
    fn create_splits_secrets_from_metadata() {
        let c = parse_create(&json!({"display_name": "gh", "auth": {
            "type": "mcp_oauth", "mcp_server_url": "https://mcp.example/x", "access_token": "canary-a",
            "expires_at": "2999-01-01T00:00:00Z",
            "refresh": {"client_id": "cid", "refresh_token": "canary-r", "token_endpoint": "https://idp.example/token",
                        "token_endpoint_auth": {"type": "client_secret_post", "client_secret": "canary-c"}, "scope": "read"}
        }}))
        .unwrap();
        assert_eq!(c.binding, "https://mcp.example/x");
        assert_eq!(
            c.secrets.names(),
            ["access_token", "client_secret", "refresh_token"]
        );
        let stored = c.body.to_string();
        assert!(!stored.contains("canary"), "{stored}");
        assert!(!format!("{c:?}").contains("canary"));
        assert_eq!(
            c.body["auth"]["refresh"]["token_endpoint_auth"],
            json!({"type": "client_secret_post"})
        );
        assert_eq!(c.body["auth"]["expires_at"], json!("2999-01-01T00:00:00Z"));

        let e = parse_create(&json!({"auth": {"type": "environment_variable", "secret_name": "GH_TOKEN",
            "secret_value": "canary-v", "networking": {"type": "limited", "allowed_hosts": ["api.github.com", "*.example.com", "10.0.0.1"]}}}))
        .unwrap();
        assert_eq!(
            e.body["auth"]["injection_location"],
            json!({"header": true, "body": false})
        );
        assert_eq!(e.binding, "GH_TOKEN");
        assert_eq!(e.secrets.names(), ["secret_value"]);
    }

    #[test]
    fn create_errors_name_the_field() {
        assert!(err(json!({})).starts_with("auth: field required"));
        assert!(
            err(json!({"auth": {"type": "x"}})).starts_with("auth.type: unknown credential type")
        );
        assert!(
            err(json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://m/"}}))
                .starts_with("auth.token: field required")
        );
        assert!(err(
            json!({"auth": {"type": "static_bearer", "mcp_server_url": "ftp://m/", "token": "t"}})
        )
        .starts_with("auth.mcp_server_url:"));
        assert!(err(json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m/", "access_token": "t",
            "expires_at": "2001-01-01T00:00:00Z"}}))
        .starts_with("auth.expires_at: must be in the future"));
        assert!(err(json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m/", "access_token": "t",
            "refresh": {"client_id": "c", "refresh_token": "r", "token_endpoint": "https://t/", "token_endpoint_auth": {"type": "private_key_jwt"}}}}))
        .starts_with("auth.refresh.token_endpoint_auth.type:"));
        assert!(err(json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m/", "access_token": "t",
            "refresh": {"client_id": "c", "refresh_token": "r", "token_endpoint": "https://t/", "token_endpoint_auth": {"type": "client_secret_basic"}}}}))
        .starts_with("auth.refresh.token_endpoint_auth.client_secret: field required"));
        let env = |net: Value| {
            err(
                json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "v", "networking": net}}),
            )
        };
        for bad in [
            "https://a.example",
            "a.example:443",
            "a.example/path",
            "::1",
            "[::1]",
            "300.1.1.1",
            "*.1.2.3",
            "a..b",
            "-a.example",
        ] {
            let m = env(json!({"type": "limited", "allowed_hosts": [bad]}));
            assert!(
                m.starts_with("auth.networking.allowed_hosts.0:"),
                "{bad}: {m}"
            );
        }
        let many: Vec<String> = (0..17).map(|i| format!("h{i}.example")).collect();
        assert!(env(json!({"type": "limited", "allowed_hosts": many}))
            .starts_with("auth.networking.allowed_hosts: must list 1 to 16"));
        assert!(env(json!({"type": "open"})).starts_with("auth.networking.type:"));
        assert!(err(json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "v",
            "networking": {"type": "unrestricted"}, "injection_location": {"header": false, "body": false}}}))
        .starts_with("auth.injection_location: at least one"));
        assert!(err(json!({"auth": {"type": "environment_variable", "secret_name": "1X", "secret_value": "v",
            "networking": {"type": "unrestricted"}}}))
        .starts_with("auth.secret_name:"));
        assert!(err(json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://m/", "token": "t"}, "display_name": ""}))
            .starts_with("display_name:"));
        assert!(err(
            json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://m/", "token": "t"},
            "metadata": {KV_PATH_KEY: "../x"}})
        )
        .starts_with("metadata.airlock.kv_path:"));
    }

    #[test]
    fn http_auth_metadata_is_checked_naming_the_key() {
        let sb = json!({"type": "static_bearer", "mcp_server_url": "https://git.example/a/app.git", "token": "t"});
        let ok = parse_create(&json!({"auth": sb,
            "metadata": {HTTP_AUTH_KEY: "basic", BASIC_USERNAME_KEY: "oauth2"}}))
        .unwrap();
        assert_eq!(ok.body["metadata"][HTTP_AUTH_KEY], "basic");
        parse_create(&json!({"auth": sb, "metadata": {HTTP_AUTH_KEY: "bearer"}})).unwrap();
        let m = err(json!({"auth": sb, "metadata": {HTTP_AUTH_KEY: "digest"}}));
        assert!(
            m.starts_with("metadata.airlock.http_auth: must be \"bearer\" or \"basic\""),
            "{m}"
        );
        let m = err(json!({"auth": sb, "metadata": {BASIC_USERNAME_KEY: "oauth2"}}));
        assert!(
            m.starts_with("metadata.airlock.basic_username: is used only with"),
            "{m}"
        );
        for bad in ["", "a:b", "sp ace", "\u{e9}t\u{e9}"] {
            let m = err(
                json!({"auth": sb, "metadata": {HTTP_AUTH_KEY: "basic", BASIC_USERNAME_KEY: bad}}),
            );
            assert!(
                m.starts_with("metadata.airlock.basic_username: must be"),
                "{bad:?}: {m}"
            );
        }
        let m = err(
            json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "v",
            "networking": {"type": "unrestricted"}}, "metadata": {HTTP_AUTH_KEY: "basic"}}),
        );
        assert!(
            m.starts_with("metadata.airlock.http_auth: applies to static_bearer credentials only"),
            "{m}"
        );
        // An update is checked against the stored credential.
        let stored = ok.body.clone();
        let up = apply_update(&stored, &json!({"metadata": {BASIC_USERNAME_KEY: "git"}})).unwrap();
        assert_eq!(up.body["metadata"][BASIC_USERNAME_KEY], "git");
        let e = apply_update(&stored, &json!({"metadata": {HTTP_AUTH_KEY: "ntlm"}})).unwrap_err();
        assert!(
            e.to_string().starts_with("metadata.airlock.http_auth:"),
            "{e}"
        );
        let e = apply_update(&stored, &json!({"metadata": {HTTP_AUTH_KEY: null}})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("metadata.airlock.basic_username:"),
            "{e}"
        );
    }

    #[test]
    fn kv_path_makes_secret_fields_optional() {
        let c = parse_create(&json!({"metadata": {KV_PATH_KEY: "team/gh"},
            "auth": {"type": "static_bearer", "mcp_server_url": "https://m/"}}))
        .unwrap();
        assert!(c.secrets.is_empty());
    }

    #[test]
    fn updates_keep_type_and_immutable_fields() {
        let c = parse_create(&json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m/", "access_token": "a",
            "expires_at": "2999-01-01T00:00:00Z",
            "refresh": {"client_id": "cid", "refresh_token": "r", "token_endpoint": "https://t/",
                        "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "s"}, "scope": "read"}}}))
        .unwrap();
        let up = |v: Value| apply_update(&c.body, &v);
        let e = up(json!({"auth": {"type": "static_bearer", "token": "x"}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("auth.type: the type of a credential cannot change"),
            "{e}"
        );
        let e = up(json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://other/"}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth.mcp_server_url: is immutable"), "{e}");
        let e = up(json!({"auth": {"type": "mcp_oauth", "refresh": {"client_id": "other"}}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth.refresh.client_id: is immutable"), "{e}");
        // a new token without expires_at keeps the old expiry
        let u = up(json!({"auth": {"type": "mcp_oauth", "access_token": "new"}})).unwrap();
        assert_eq!(u.secrets.names(), ["access_token"]);
        assert_eq!(u.body["auth"]["expires_at"], json!("2999-01-01T00:00:00Z"));
        // "" clears the scope; the token endpoint auth type is kept
        let u = up(
            json!({"auth": {"type": "mcp_oauth", "refresh": {"scope": "",
            "token_endpoint_auth": {"type": "client_secret_post", "client_secret": "s2"}}}}),
        )
        .unwrap();
        assert_eq!(u.body["auth"]["refresh"]["scope"], Value::Null);
        assert_eq!(
            u.body["auth"]["refresh"]["token_endpoint_auth"],
            json!({"type": "client_secret_basic"})
        );
        assert_eq!(u.secrets.names(), ["client_secret"]);

        let env = parse_create(&json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "v",
            "networking": {"type": "unrestricted"}, "injection_location": {"body": true}}}))
        .unwrap();
        let u = apply_update(&env.body, &json!({"auth": {"type": "environment_variable", "injection_location": {"header": false}},
            "metadata": {"a": "1"}, "display_name": null}))
        .unwrap();
        assert_eq!(
            u.body["auth"]["injection_location"],
            json!({"header": false, "body": true})
        );
        assert!(u.secrets.is_empty());
        let e = apply_update(&env.body, &json!({"auth": {"type": "environment_variable", "injection_location": {"body": false, "header": false}}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth.injection_location:"), "{e}");
    }
}
