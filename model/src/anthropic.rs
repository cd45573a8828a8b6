//! The Anthropic Messages API provider: `POST {base_url}/v1/messages` with
//! `stream: true`, over hyper 1 + rustls (ring provider, webpki roots).
//!
//! Two waits are bounded: the response head must arrive within
//! `request_timeout`, and the body must not go quiet for longer than
//! `stream_idle_timeout` (the API sends `ping` events, so a healthy stream
//! never idles that long). A stall is a [`ModelError::Timeout`], never a hang.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, TimeoutPhase};
use crate::sse::SseDecoder;
use crate::stream::{parse_anthropic_event, EventStream, ModelStream, StreamEvent};
use crate::types::MessagesRequest;
use crate::Provider;

/// Provider name used in errors and logs.
pub const PROVIDER: &str = "anthropic";
/// Default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The environment variable the key is read from when `model.api_key_env`
/// is not set.
pub const DEFAULT_API_KEY_ENV: &str = "ANTHROPIC_API_KEY";
/// Default `anthropic-version` header.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// Default response-head timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default cap on one SSE event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Cap on an error response body we read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A configuration error; the key is named as written in the config file
/// (under the `[model]` section) or as the environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key has a value that is not acceptable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key or environment variable.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A required value is missing from both the file and the environment.
    #[error("missing `{key}` (set it in the config file or the {env} environment variable)")]
    Missing {
        /// Dotted key.
        key: String,
        /// The environment variable that may supply it.
        env: String,
    },
}

/// An API key. Its `Debug` is redacted; it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// `[model]` as written in the config file (the one owner of its keys; the
/// control plane reads its `[model]` section with this struct).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnthropicConfig {
    /// API base URL; else `ANTHROPIC_BASE_URL`; else `https://api.anthropic.com`.
    pub base_url: Option<String>,
    /// API key; else the variable named by `api_key_env`. Prefer the
    /// environment.
    pub api_key: Option<String>,
    /// Environment variable holding the key; default `ANTHROPIC_API_KEY`.
    pub api_key_env: Option<String>,
    /// `anthropic-version` header; default `2023-06-01`.
    pub anthropic_version: Option<String>,
    /// `anthropic-beta` header values; default none.
    pub anthropic_beta: Option<Vec<String>>,
    /// Time allowed to connect and receive the response head; default 60.
    pub request_timeout_seconds: Option<f64>,
    /// Longest silence allowed inside a streamed response; default 90.
    pub stream_idle_timeout_seconds: Option<f64>,
    /// Largest single stream event accepted; default 16 MiB.
    pub max_event_bytes: Option<usize>,
}

/// Validated provider configuration.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// API base URL (scheme, host, optional port and path prefix).
    pub base_url: String,
    /// The key sent as `x-api-key`.
    pub api_key: ApiKey,
    /// `anthropic-version`.
    pub anthropic_version: String,
    /// `anthropic-beta` values (joined with commas), if any.
    pub anthropic_beta: Vec<String>,
    /// Connect + response-head timeout.
    pub request_timeout: Duration,
    /// Stream idle timeout.
    pub stream_idle_timeout: Duration,
    /// Largest single stream event accepted.
    pub max_event_bytes: usize,
}

fn seconds(key: &str, v: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("{s} is not a number of seconds in (0, 86400]"),
        }),
    }
}

impl AnthropicConfig {
    /// A config for `base_url` and `api_key` with every other value default.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            anthropic_version: DEFAULT_ANTHROPIC_VERSION.to_owned(),
            anthropic_beta: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Validate, falling back to `ANTHROPIC_BASE_URL` and the key variable
    /// (`api_key_env`, default `ANTHROPIC_API_KEY`) from the process
    /// environment.
    pub fn from_raw(raw: RawAnthropicConfig) -> Result<Self, ConfigError> {
        Self::from_raw_with_env(raw, |k| std::env::var(k).ok())
    }

    /// Validate with an explicit environment lookup (for tests).
    pub fn from_raw_with_env(
        raw: RawAnthropicConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let key_env = match (&raw.api_key, raw.api_key_env.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "model.api_key_env",
                    "set either model.api_key or model.api_key_env, not both",
                ))
            }
            (_, Some(v)) if v.is_empty() || v.contains('=') || v.contains('\0') => {
                return Err(invalid(
                    "model.api_key_env",
                    "not an environment variable name",
                ))
            }
            (_, Some(v)) => v.to_owned(),
            (_, None) => DEFAULT_API_KEY_ENV.to_owned(),
        };
        let (base_url, base_key) = match raw.base_url {
            Some(u) => (u, "model.base_url"),
            None => match env("ANTHROPIC_BASE_URL").filter(|s| !s.is_empty()) {
                Some(u) => (u, "ANTHROPIC_BASE_URL"),
                None => (DEFAULT_BASE_URL.to_owned(), "model.base_url"),
            },
        };
        messages_uri(&base_url).map_err(|message| ConfigError::Invalid {
            key: base_key.to_owned(),
            message,
        })?;
        let api_key = match raw.api_key {
            Some(k) if !k.is_empty() => ApiKey(k),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: "model.api_key".to_owned(),
                    message: "empty".to_owned(),
                })
            }
            None => match env(&key_env).filter(|s| !s.is_empty()) {
                Some(k) => ApiKey(k),
                None => {
                    return Err(ConfigError::Missing {
                        key: "model.api_key".to_owned(),
                        env: key_env,
                    })
                }
            },
        };
        let anthropic_version = raw
            .anthropic_version
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_owned());
        if http::HeaderValue::from_str(&anthropic_version).is_err() || anthropic_version.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "model.anthropic_version".to_owned(),
                message: "not a valid header value".to_owned(),
            });
        }
        let anthropic_beta = raw.anthropic_beta.unwrap_or_default();
        if anthropic_beta
            .iter()
            .any(|b| b.is_empty() || b.contains(',') || http::HeaderValue::from_str(b).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "model.anthropic_beta".to_owned(),
                message: "each entry must be a non-empty header token without commas".to_owned(),
            });
        }
        let max_event_bytes = match raw.max_event_bytes {
            None => DEFAULT_MAX_EVENT_BYTES,
            Some(n) if n >= 1024 => n,
            Some(n) => {
                return Err(ConfigError::Invalid {
                    key: "model.max_event_bytes".to_owned(),
                    message: format!("{n} is below the minimum of 1024"),
                })
            }
        };
        Ok(Self {
            base_url,
            api_key,
            anthropic_version,
            anthropic_beta,
            request_timeout: seconds(
                "model.request_timeout_seconds",
                raw.request_timeout_seconds,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            stream_idle_timeout: seconds(
                "model.stream_idle_timeout_seconds",
                raw.stream_idle_timeout_seconds,
                DEFAULT_STREAM_IDLE_TIMEOUT,
            )?,
            max_event_bytes,
        })
    }
}

/// `{base}/v1/messages` as a URI; the error says why the base is unusable.
fn messages_uri(base: &str) -> Result<Uri, String> {
    let uri: Uri = format!("{}/v1/messages", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("not a url: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("scheme must be http or https".to_owned()),
    }
    if uri.host().is_none() {
        return Err("no host".to_owned());
    }
    Ok(uri)
}

#[derive(Serialize)]
struct StreamingBody<'a> {
    #[serde(flatten)]
    request: &'a MessagesRequest,
    stream: bool,
}

/// The Anthropic provider. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct AnthropicProvider {
    config: Arc<AnthropicConfig>,
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Build a provider (no connection is made yet).
    pub fn new(config: AnthropicConfig) -> Result<Self, ModelError> {
        let uri = messages_uri(&config.base_url).map_err(|message| ModelError::InvalidRequest {
            message: format!("base url {}: {message}", config.base_url),
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.request_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ModelError::InvalidRequest {
                message: format!("tls setup: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Self {
            config: Arc::new(config),
            uri,
            client,
        })
    }

    fn transport(message: impl Into<String>) -> ModelError {
        ModelError::Transport {
            provider: PROVIDER.to_owned(),
            message: message.into(),
        }
    }

    async fn send(
        &self,
        request: &MessagesRequest,
    ) -> Result<http::Response<Incoming>, ModelError> {
        let body = serde_json::to_vec(&StreamingBody {
            request,
            stream: true,
        })
        .map_err(|e| ModelError::InvalidRequest {
            message: format!("request body: {e}"),
        })?;
        let mut builder = Request::post(self.uri.clone())
            .header("x-api-key", self.config.api_key.expose())
            .header("anthropic-version", &self.config.anthropic_version)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream");
        if !self.config.anthropic_beta.is_empty() {
            builder = builder.header("anthropic-beta", self.config.anthropic_beta.join(","));
        }
        let req =
            builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ModelError::InvalidRequest {
                    message: format!("request head: {e}"),
                })?;
        match tokio::time::timeout(self.config.request_timeout, self.client.request(req)).await {
            Err(_) => Err(ModelError::Timeout {
                provider: PROVIDER.to_owned(),
                phase: TimeoutPhase::ResponseHead,
                after: self.config.request_timeout,
            }),
            Ok(Err(e)) => Err(Self::transport(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn error_from_response(&self, resp: http::Response<Incoming>) -> ModelError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let retry_after = parse_retry_after(&headers);
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match tokio::time::timeout(
            self.config.request_timeout,
            read_capped(resp.into_body(), MAX_ERROR_BODY_BYTES),
        )
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Self::transport(format!("reading {status} error body: {e}")),
            Err(_) => {
                return ModelError::Timeout {
                    provider: PROVIDER.to_owned(),
                    phase: TimeoutPhase::ErrorBody,
                    after: self.config.request_timeout,
                }
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let error_type = err
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| default_error_type(status).to_owned());
        let message = err
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.chars().take(200).collect();
                format!("http {status}: {text}")
            });
        let request_id = request_id.or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("request_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        ModelError::from_envelope(
            PROVIDER,
            Some(status.as_u16()),
            error_type,
            message,
            request_id,
            retry_after,
        )
    }
}

fn default_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// `retry-after-ms` (milliseconds) wins over `retry-after` (seconds, integer
/// or decimal). HTTP-date values are ignored. Capped at one hour.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let cap = 3600.0;
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(cap)));
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(cap)))
}

async fn read_capped(mut body: Incoming, cap: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = cap.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() >= cap {
                break;
            }
        }
    }
    Ok(out)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct BodyState {
    body: Incoming,
    decoder: SseDecoder,
    queue: VecDeque<StreamEvent>,
    pending_error: Option<ModelError>,
    done: bool,
    idle: Duration,
}

fn event_stream(body: Incoming, config: &AnthropicConfig) -> EventStream {
    let state = BodyState {
        body,
        decoder: SseDecoder::new(config.max_event_bytes),
        queue: VecDeque::new(),
        pending_error: None,
        done: false,
        idle: config.stream_idle_timeout,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.queue.pop_front() {
                return Some((Ok(ev), st));
            }
            if let Some(e) = st.pending_error.take() {
                return Some((Err(e), st));
            }
            if st.done {
                return None;
            }
            let fail =
                |st: BodyState, e: ModelError| Some((Err(e), BodyState { done: true, ..st }));
            match tokio::time::timeout(st.idle, st.body.frame()).await {
                Err(_) => {
                    let e = ModelError::Timeout {
                        provider: PROVIDER.to_owned(),
                        phase: TimeoutPhase::StreamIdle,
                        after: st.idle,
                    };
                    return fail(st, e);
                }
                Ok(None) => {
                    st.done = true;
                    st.decoder.finish();
                }
                Ok(Some(Err(e))) => {
                    let e = AnthropicProvider::transport(format!("stream: {}", error_chain(&e)));
                    return fail(st, e);
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let events = match st.decoder.push(&data) {
                        Ok(evs) => evs,
                        Err(e) => {
                            let e = ModelError::MalformedStream {
                                provider: PROVIDER.to_owned(),
                                message: e.to_string(),
                            };
                            return fail(st, e);
                        }
                    };
                    for sse in events {
                        match parse_anthropic_event(PROVIDER, sse.event.as_deref(), &sse.data) {
                            Ok(Some(ev)) => st.queue.push_back(ev),
                            Ok(None) => {}
                            Err(e) => {
                                // Deliver the events decoded before the bad one, then the error.
                                st.pending_error = Some(e);
                                st.done = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }))
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    async fn stream(&self, request: &MessagesRequest) -> Result<ModelStream, ModelError> {
        tracing::debug!(
            model = %request.model,
            messages = request.messages.len(),
            tools = request.tools.len(),
            "model request"
        );
        let resp = self.send(request).await?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(resp).await);
        }
        let ct = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !ct.starts_with("text/event-stream") {
            return Err(ModelError::MalformedStream {
                provider: PROVIDER.to_owned(),
                message: format!("expected content-type text/event-stream, got {ct:?}"),
            });
        }
        Ok(ModelStream::new(
            PROVIDER,
            event_stream(resp.into_body(), &self.config),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_prefers_file_then_env_then_default_and_names_keys() {
        let env = |k: &str| match k {
            "ANTHROPIC_BASE_URL" => Some("http://127.0.0.1:9".to_owned()),
            "ANTHROPIC_API_KEY" => Some("env-key".to_owned()),
            _ => None,
        };
        let c = AnthropicConfig::from_raw_with_env(RawAnthropicConfig::default(), env).unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert_eq!(c.api_key, ApiKey::new("env-key"));
        assert_eq!(format!("{:?}", c.api_key), "ApiKey(<redacted>)");
        let raw: RawAnthropicConfig = toml::from_str(
            "base_url = \"https://example.invalid/prefix\"\napi_key = \"k\"\nrequest_timeout_seconds = 2.5\nstream_idle_timeout_seconds = 1\nanthropic_beta = [\"a\", \"b\"]",
        )
        .unwrap();
        let c = AnthropicConfig::from_raw_with_env(raw, env).unwrap();
        assert_eq!(c.base_url, "https://example.invalid/prefix");
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(1));
        let none = |_: &str| None;
        let e =
            AnthropicConfig::from_raw_with_env(RawAnthropicConfig::default(), none).unwrap_err();
        assert!(e.to_string().contains("model.api_key"), "{e}");
        let raw = RawAnthropicConfig {
            api_key: Some("k".into()),
            base_url: Some("ftp://x".into()),
            ..Default::default()
        };
        let e = AnthropicConfig::from_raw_with_env(raw, none).unwrap_err();
        assert!(e.to_string().contains("model.base_url"), "{e}");
        let raw = RawAnthropicConfig {
            api_key: Some("k".into()),
            stream_idle_timeout_seconds: Some(-1.0),
            ..Default::default()
        };
        let e = AnthropicConfig::from_raw_with_env(raw, none).unwrap_err();
        assert!(
            e.to_string().contains("model.stream_idle_timeout_seconds"),
            "{e}"
        );
        assert!(toml::from_str::<RawAnthropicConfig>("nope = 1").is_err());
        let named = |k: &str| (k == "MY_KEY").then(|| "named-key".to_owned());
        let raw: RawAnthropicConfig = toml::from_str("api_key_env = \"MY_KEY\"").unwrap();
        let c = AnthropicConfig::from_raw_with_env(raw, named).unwrap();
        assert_eq!(c.api_key, ApiKey::new("named-key"));
        let raw: RawAnthropicConfig = toml::from_str("api_key_env = \"OTHER\"").unwrap();
        match AnthropicConfig::from_raw_with_env(raw, named).unwrap_err() {
            ConfigError::Missing { key, env } => {
                assert_eq!((&*key, &*env), ("model.api_key", "OTHER"))
            }
            other => panic!("{other:?}"),
        }
        let raw: RawAnthropicConfig =
            toml::from_str("api_key = \"k\"\napi_key_env = \"B\"").unwrap();
        let e = AnthropicConfig::from_raw_with_env(raw, none).unwrap_err();
        assert!(e.to_string().contains("model.api_key_env"), "{e}");
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", "0.25".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", "40".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(40)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), None);
    }
}
