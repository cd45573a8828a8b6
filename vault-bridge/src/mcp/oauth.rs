//! The OAuth `refresh_token` grant (RFC 6749 §6) against a credential's
//! token endpoint, with client authentication `none` (client_id in the
//! form), `client_secret_basic` or `client_secret_post`, and `scope` /
//! `resource` (RFC 8707) when the credential sets them. Errors carry the
//! endpoint's status and its OAuth `error` code, never a token.

use std::time::Duration;

use protocol::relay::{OauthRefresh, TokenEndpointAuth};

use crate::egress::SecretValue;

/// What a successful refresh returned.
#[derive(Debug)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: SecretValue,
    /// A rotated refresh token, when the server sent one.
    pub refresh_token: Option<SecretValue>,
    /// `expires_in`, when sent.
    pub expires_in: Option<Duration>,
}

/// The token endpoint's raw answer (for the validation object).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The body (unscrubbed: the caller scrubs before showing it).
    pub body: String,
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The credential cannot be refreshed (no settings or no refresh token).
    #[error("the credential has no refresh token or refresh settings")]
    NotRefreshable,
    /// A secret it needs is missing.
    #[error("{0}")]
    Secret(String),
    /// The endpoint URL is not allowed.
    #[error("token endpoint {url}: {reason}")]
    BadEndpoint {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The endpoint could not be reached.
    #[error("token endpoint {url} unreachable: {cause}")]
    Connect {
        /// The URL.
        url: String,
        /// Why (reqwest's error, which never holds the form).
        cause: String,
    },
    /// The endpoint refused (or answered something that is not a token).
    #[error("token endpoint {url} answered {status}{}", error_code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Rejected {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code, if any.
        error_code: Option<String>,
        /// The raw answer.
        #[source]
        answer: RawAnswerError,
    },
}

/// A raw answer as an error source (its Display shows no body).
#[derive(Debug, thiserror::Error)]
#[error("token endpoint answer ({} bytes)", .0.body.len())]
pub struct RawAnswerError(pub RawAnswer);

impl RefreshError {
    /// The raw answer of a rejection.
    pub fn answer(&self) -> Option<&RawAnswer> {
        match self {
            Self::Rejected { answer, .. } => Some(&answer.0),
            _ => None,
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<f64>,
}

/// One `refresh_token` grant. Returns the new tokens and the raw answer.
pub async fn refresh(
    http: &reqwest::Client,
    endpoint: reqwest::Url,
    settings: &OauthRefresh,
    refresh_token: &SecretValue,
    client_secret: Option<&SecretValue>,
    timeout: Duration,
) -> Result<(Refreshed, RawAnswer), RefreshError> {
    let url = endpoint.to_string();
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    if let Some(s) = &settings.scope {
        form.push(("scope", s));
    }
    if let Some(r) = &settings.resource {
        form.push(("resource", r));
    }
    let mut req = http.post(endpoint).timeout(timeout);
    let secret = || {
        client_secret.ok_or_else(|| {
            RefreshError::Secret(format!(
                "client {} authenticates with a client secret and the credential has none",
                settings.client_id
            ))
        })
    };
    match &settings.token_endpoint_auth {
        TokenEndpointAuth::ClientSecretBasic => {
            // RFC 6749 §2.3.1: form-urlencode id and secret before basic auth.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&settings.client_id), Some(enc(secret()?.expose())));
        }
        TokenEndpointAuth::ClientSecretPost => {
            form.push(("client_id", &settings.client_id));
            form.push(("client_secret", secret()?.expose()));
        }
        _ => form.push(("client_id", &settings.client_id)),
    }
    let resp = req
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| RefreshError::Connect {
            url: url.clone(),
            cause: e.without_url().to_string(),
        })?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.map_err(|e| RefreshError::Connect {
        url: url.clone(),
        cause: e.without_url().to_string(),
    })?;
    let body = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).into_owned();
    let answer = RawAnswer {
        status,
        content_type,
        body,
    };
    let parsed = if (200..300).contains(&status) {
        serde_json::from_slice::<TokenResponse>(&bytes).ok()
    } else {
        None
    };
    match parsed {
        Some(t) if !t.access_token.is_empty() => Ok((
            Refreshed {
                access_token: SecretValue::new(t.access_token),
                refresh_token: t
                    .refresh_token
                    .filter(|r| !r.is_empty())
                    .map(SecretValue::new),
                expires_in: t
                    .expires_in
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64),
            },
            answer,
        )),
        _ => {
            let error_code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_graphic()));
            Err(RefreshError::Rejected {
                url,
                status,
                error_code,
                answer: RawAnswerError(answer),
            })
        }
    }
}
