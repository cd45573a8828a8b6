//! `mcp_validate`: probe a credential against its MCP server. The probe
//! speaks plain HTTP (an `initialize` POST, then `notifications/initialized`
//! and `tools/list` on the session the server gave) because the validation
//! object reports the server's raw answer (status, content type, body);
//! bodies are scrubbed of every token value the bridge knows for the
//! credential and cut to [`BODY_MAX`] bytes.
//!
//! `status`: `valid` when `tools/list` answered with a result; `invalid`
//! when the server refused the credential (401/403) after the one refresh,
//! or the refresh was refused; `unknown` otherwise (server down, 5xx, not
//! MCP, secret unavailable).

use protocol::mcp::{McpProbe, McpValidate, McpValidation, ProbeHttpResponse, RefreshProbe};
use serde_json::{json, Value};

use super::http::AuditContext;
use super::oauth::{RawAnswer, RefreshError};
use super::target::check_url;
use super::tokens::{refresh_settings, token_field, TokenError};
use super::McpClient;
use crate::egress::{AuditOutcome, SecretValue};

/// Longest body shown in a validation object.
pub const BODY_MAX: usize = 4096;
/// What a token value is replaced with in a shown body.
pub const REDACTED: &str = "[redacted]";

/// `body` without any of `secrets`, cut to [`BODY_MAX`] bytes (at a char
/// boundary); whether it was cut.
pub fn scrub(body: &str, secrets: &[SecretValue]) -> (String, bool) {
    let mut s = body.to_owned();
    for v in secrets {
        let v = v.expose();
        if v.len() >= 4 {
            s = s.replace(v, REDACTED);
        }
    }
    if s.len() <= BODY_MAX {
        return (s, false);
    }
    let mut end = BODY_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    (s, true)
}

/// Token fields of an OAuth answer, replaced wherever they appear.
const TOKEN_KEYS: &[&str] = &["access_token", "refresh_token", "id_token", "client_secret"];

/// `body` with the values of [`TOKEN_KEYS`] replaced when it is JSON (a
/// token endpoint's answer holds tokens the bridge did not know before).
fn scrub_token_fields(body: &str) -> String {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if TOKEN_KEYS.contains(&k.as_str()) && v.is_string() {
                        *v = Value::String(REDACTED.into());
                    } else {
                        walk(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) => {
            walk(&mut v);
            v.to_string()
        }
        Err(_) => body.to_owned(),
    }
}

fn shown(a: &RawAnswer, secrets: &[SecretValue]) -> ProbeHttpResponse {
    let (body, body_truncated) = scrub(&scrub_token_fields(&a.body), secrets);
    ProbeHttpResponse {
        status_code: a.status,
        content_type: a.content_type.clone(),
        body,
        body_truncated,
    }
}

/// One probe POST: the raw answer, the session id it gave, and the JSON-RPC
/// message in it (JSON body or the first SSE `data:` event).
struct Posted {
    answer: RawAnswer,
    session: Option<String>,
    message: Option<Value>,
}

async fn post(
    client: &McpClient,
    url: &reqwest::Url,
    token: Option<&SecretValue>,
    session: Option<&str>,
    body: &Value,
    audit: &AuditContext,
) -> Result<Posted, String> {
    let mut req = client
        .http()
        .post(url.clone())
        .timeout(client.config().call_timeout)
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t.expose());
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            audit.record("POST", AuditOutcome::UpstreamFailed);
            return Err(e.without_url().to_string());
        }
    };
    audit.record(
        "POST",
        AuditOutcome::Injected {
            status: resp.status().as_u16(),
        },
    );
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let session = header("mcp-session-id");
    // Read at most 64 KiB (an SSE answer may stay open after its event).
    let mut body = Vec::new();
    let mut resp = resp;
    while body.len() < 64 * 1024 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                body.extend_from_slice(&c);
                if content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("text/event-stream"))
                    && sse_message(&body).is_some()
                {
                    break;
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let message = if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        sse_message(&body)
    } else {
        serde_json::from_slice(&body).ok()
    };
    Ok(Posted {
        answer: RawAnswer {
            status,
            content_type,
            body: text,
        },
        session,
        message,
    })
}

fn sse_message(body: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(body);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(v) = serde_json::from_str::<Value>(&data) {
                if v.get("id").is_some() {
                    return Some(v);
                }
            }
            data.clear();
        }
    }
    None
}

fn init_body() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "airlock-vault-bridge", "version": env!("CARGO_PKG_VERSION")}
        }
    })
}

enum Step {
    /// Answered with a result.
    Ok(Posted),
    /// 401/403.
    Refused(Posted),
    /// Anything else (with the answer if there was one).
    Other(Option<Posted>),
}

async fn probe_once(
    client: &McpClient,
    url: &reqwest::Url,
    token: Option<&SecretValue>,
    audit: &AuditContext,
) -> (&'static str, Step) {
    let init = match post(client, url, token, None, &init_body(), audit).await {
        Ok(p) => p,
        Err(_) => return ("initialize", Step::Other(None)),
    };
    match init.answer.status {
        401 | 403 => return ("initialize", Step::Refused(init)),
        200..=299
            if init
                .message
                .as_ref()
                .is_some_and(|m| m.get("result").is_some()) => {}
        _ => return ("initialize", Step::Other(Some(init))),
    }
    let session = init.session.clone();
    let _ = post(
        client,
        url,
        token,
        session.as_deref(),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        audit,
    )
    .await;
    let list = match post(
        client,
        url,
        token,
        session.as_deref(),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
        audit,
    )
    .await
    {
        Ok(p) => p,
        Err(_) => return ("tools/list", Step::Other(None)),
    };
    match list.answer.status {
        401 | 403 => ("tools/list", Step::Refused(list)),
        200..=299
            if list
                .message
                .as_ref()
                .is_some_and(|m| m.get("result").is_some()) =>
        {
            ("tools/list", Step::Ok(list))
        }
        _ => ("tools/list", Step::Other(Some(list))),
    }
}

fn refresh_probe(
    r: &Result<Option<RawAnswer>, TokenError>,
    secrets: &[SecretValue],
) -> RefreshProbe {
    match r {
        Ok(a) => RefreshProbe {
            status: "succeeded".into(),
            http_response: a.as_ref().map(|a| shown(a, secrets)),
        },
        Err(TokenError::Refresh { source, .. }) => match source.as_ref() {
            RefreshError::NotRefreshable => RefreshProbe {
                status: "no_refresh_token".into(),
                http_response: None,
            },
            RefreshError::Connect { .. } | RefreshError::BadEndpoint { .. } => RefreshProbe {
                status: "connect_error".into(),
                http_response: None,
            },
            other => RefreshProbe {
                status: "failed".into(),
                http_response: other.answer().map(|a| shown(a, secrets)),
            },
        },
        Err(TokenError::Unavailable(_)) => RefreshProbe {
            status: "failed".into(),
            http_response: None,
        },
    }
}

/// Probe `req.credential` against its server.
pub async fn validate(client: &McpClient, req: &McpValidate) -> McpValidation {
    let c = &req.credential;
    let tokens = client.tokens();
    let has_refresh_token = tokens.has_refresh_token(c).await;
    let unknown = |refresh| McpValidation {
        status: "unknown".into(),
        has_refresh_token,
        mcp_probe: None,
        refresh,
    };
    let server = match &c.binding {
        protocol::relay::CredentialBinding::StaticBearer { mcp_server_url }
        | protocol::relay::CredentialBinding::McpOauth { mcp_server_url, .. } => mcp_server_url,
        _ => return unknown(None),
    };
    let Ok(url) = check_url(server, client.config().plain_http) else {
        return unknown(None);
    };
    // Every value a body could echo, to scrub.
    let mut secrets = Vec::new();
    for f in [token_field(c), "refresh_token", "client_secret"] {
        if let Ok(v) = tokens.field(c, f).await {
            secrets.push(v);
        }
    }
    let audit = AuditContext {
        sink: client.audit.clone(),
        session_id: String::new(),
        credential_id: Some(c.credential_id.clone()),
        vault_id: Some(c.vault_id.clone()),
        host: url.host_str().unwrap_or_default().to_owned(),
        path: url.path().to_owned(),
    };
    let mut refresh = None;
    let mut access = match tokens.current(c).await {
        Ok(a) => a,
        Err(_) => return unknown(None),
    };
    let refreshable = refresh_settings(c).is_some();
    let expired = access
        .expires_at
        .is_some_and(|t| t - time::OffsetDateTime::now_utc() < client.config().refresh_margin);
    if expired && refreshable {
        let r = tokens.refresh_after(c, access.generation).await;
        if let Ok((a, _)) = &r {
            secrets.push(a.token.clone());
            access = a.clone();
        }
        refresh = Some(refresh_probe(&r.map(|(_, raw)| raw), &secrets));
    }
    let (mut method, mut step) = probe_once(client, &url, Some(&access.token), &audit).await;
    if matches!(step, Step::Refused(_)) && refresh.is_none() {
        if refreshable {
            let r = tokens.refresh_after(c, access.generation).await;
            let ok = r.as_ref().ok().map(|(a, _)| a.clone());
            refresh = Some(refresh_probe(&r.map(|(_, raw)| raw), &secrets));
            if let Some(a) = ok {
                secrets.push(a.token.clone());
                (method, step) = probe_once(client, &url, Some(&a.token), &audit).await;
            }
        } else if matches!(
            c.binding,
            protocol::relay::CredentialBinding::McpOauth { .. }
        ) {
            refresh = Some(RefreshProbe {
                status: "no_refresh_token".into(),
                http_response: None,
            });
        }
    }
    let (status, posted) = match step {
        Step::Ok(p) => ("valid", Some(p)),
        Step::Refused(p) => ("invalid", Some(p)),
        Step::Other(p) => {
            let refused = refresh.as_ref().is_some_and(|r| r.status == "failed");
            (if refused { "invalid" } else { "unknown" }, p)
        }
    };
    McpValidation {
        status: status.into(),
        has_refresh_token,
        mcp_probe: Some(McpProbe {
            method: method.into(),
            http_response: posted.map(|p| shown(&p.answer, &secrets)),
        }),
        refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_scrubbed_and_cut() {
        let secret = SecretValue::new("tok-123456");
        let (s, cut) = scrub("a tok-123456 b tok-123456", std::slice::from_ref(&secret));
        assert_eq!(s, "a [redacted] b [redacted]");
        assert!(!cut);
        let long = format!("{}tok-123456{}", "é".repeat(3000), "x".repeat(10));
        let (s, cut) = scrub(&long, &[secret]);
        assert!(cut && s.len() <= BODY_MAX && !s.contains("tok-"));
        let body = r#"{"access_token":"new-a","refresh_token":"new-r","expires_in":5}"#;
        let s = scrub_token_fields(body);
        assert!(
            !s.contains("new-a") && !s.contains("new-r") && s.contains("expires_in"),
            "{s}"
        );
    }
}
