//! The client of the public HTTP API behind `environments …` and
//! `sessions …`: the same API and key an SDK uses. The URL comes from
//! `--api-url`, `AIRLOCK_API_URL`, or `https://` (with `[api.tls]`) or
//! `http://` + the config's `[api] listen`; the key from `--api-key` or
//! `AIRLOCK_API_KEY` (never printed or logged). HTTPS trusts Mozilla's roots
//! plus `--api-ca-file` / `AIRLOCK_API_CA_FILE` (PEM) when given. API errors are read from the API's error envelope;
//! every failure maps to [`OperatorError`].

use std::time::Duration;

use api::tls::HttpsConnector;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::output::truncate;
use super::spinner::Spinner;
use crate::config::Config;

/// How long a plain (non-streaming) request may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the API is and how to authenticate (shared by every operator command).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the public API (default: `https://` with `[api.tls]`,
    /// else `http://`, + `[api] listen`).
    #[arg(long, global = true, env = "AIRLOCK_API_URL")]
    pub api_url: Option<String>,
    /// Extra CA certificate(s) (PEM) to trust for an `https://` API URL,
    /// e.g. a private CA that issued `[api.tls] cert_file`.
    #[arg(long, global = true, env = "AIRLOCK_API_CA_FILE")]
    pub api_ca_file: Option<std::path::PathBuf>,
    /// API key (`control-plane api-keys create`).
    #[arg(long, global = true, env = "AIRLOCK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// No API key was given.
    #[error("no API key: pass --api-key or set AIRLOCK_API_KEY (create one with `control-plane api-keys create`)")]
    MissingKey,
    /// The API URL is not a valid `http://` or `https://` URL.
    #[error("invalid --api-url {url}: {message}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// `--api-ca-file` could not be used.
    #[error("{0}")]
    CaFile(api::tls::TlsError),
    /// The API could not be reached (connection refused, DNS, reset).
    #[error("cannot reach the control plane API at {url} (is `control-plane serve` running?): {message}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The API did not answer in time.
    #[error("no answer from the control plane API at {url} within {seconds} s")]
    Timeout {
        /// The base URL.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// The API answered with its error envelope.
    #[error("{kind}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `error.type`.
        kind: String,
        /// `error.message`.
        message: String,
    },
    /// The API answered something that is not the expected JSON.
    #[error("unexpected response from {path} (status {status}): {body}")]
    BadResponse {
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The response body or stream broke off.
    #[error("reading the response of {path}: {message}")]
    Body {
        /// Request path.
        path: String,
        /// The transport error.
        message: String,
    },
    /// `sessions tail`: the stream dropped and could not be resumed in time.
    #[error("the event stream of {session} dropped and could not be resumed within {seconds} s (--reconnect-seconds): {message}")]
    StreamLost {
        /// The session id.
        session: String,
        /// The reconnect budget.
        seconds: u64,
        /// The last reconnect error.
        message: String,
    },
    /// The event stream is not valid SSE (not UTF-8, or an event over the
    /// size cap); resuming would read the same bytes again.
    #[error("reading the event stream {path}: {source}")]
    Stream {
        /// Request path.
        path: String,
        /// What the decoder refused.
        source: model::sse::SseError,
    },
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// A small client of the public API.
pub(super) struct ApiClient {
    pub(super) base: String,
    key: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    pub(super) fn new(args: &ApiArgs, config: &Config) -> Result<Self, OperatorError> {
        let key = args
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(OperatorError::MissingKey)?;
        let base = args
            .api_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if config.api.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", config.api.listen)
            })
            .trim_end_matches('/')
            .to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(OperatorError::BadUrl {
                url: base,
                message: "must start with https:// or http://".to_owned(),
            });
        }
        if let Err(error) = format!("{base}/v1").parse::<hyper::Uri>() {
            return Err(OperatorError::BadUrl {
                url: base,
                message: error.to_string(),
            });
        }
        let connector = api::tls::https_connector(args.api_ca_file.as_deref())
            .map_err(OperatorError::CaFile)?;
        Ok(Self {
            base,
            key,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub(super) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        accept: &str,
    ) -> Result<hyper::Request<Full<Bytes>>, OperatorError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(bytes))
            .map_err(|error| OperatorError::BadUrl {
                url: format!("{}{path}", self.base),
                message: error.to_string(),
            })
    }

    pub(super) async fn send(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, OperatorError> {
        self.client
            .request(req)
            .await
            .map_err(|error| OperatorError::Unreachable {
                url: self.base.clone(),
                message: error_chain(&error),
            })
    }

    /// One JSON request with a spinner while it waits; 2xx bodies are returned, others mapped.
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, OperatorError> {
        let req = self.request(method, path, body.as_ref(), "application/json")?;
        let _spinner = Spinner::start(format!("{method} {path}"));
        let work = async {
            let resp = self.send(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|error| OperatorError::Body {
                    path: path.to_owned(),
                    message: error.to_string(),
                })?
                .to_bytes();
            Ok::<_, OperatorError>((status, bytes))
        };
        let (status, bytes) =
            tokio::time::timeout(REQUEST_TIMEOUT, work)
                .await
                .map_err(|_| OperatorError::Timeout {
                    url: self.base.clone(),
                    seconds: REQUEST_TIMEOUT.as_secs(),
                })??;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return parsed.ok_or_else(|| bad_response(path, status, &bytes));
        }
        Err(api_error(path, status, parsed.as_ref(), &bytes))
    }
}

/// The single mapping from a non-2xx answer to [`OperatorError`].
pub(super) fn api_error(
    path: &str,
    status: u16,
    body: Option<&Value>,
    raw: &[u8],
) -> OperatorError {
    match body.and_then(|v| {
        Some((
            v["error"]["type"].as_str()?,
            v["error"]["message"].as_str()?,
        ))
    }) {
        Some((kind, message)) => OperatorError::Api {
            status,
            kind: kind.to_owned(),
            message: message.to_owned(),
        },
        None => bad_response(path, status, raw),
    }
}

pub(super) fn bad_response(path: &str, status: u16, raw: &[u8]) -> OperatorError {
    let text = String::from_utf8_lossy(raw);
    OperatorError::BadResponse {
        path: path.to_owned(),
        status,
        body: truncate(&text, 200),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(super) fn path_segment(id: &str) -> String {
    // Ids are `env_…`/`sesn_…`; encode anything else so it cannot change the path.
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Follow `next_page` from `path?limit=…{filters}` until `max` items or the
/// last page; returns the items and whether more exist beyond `max`.
pub(super) async fn list_pages(
    api: &ApiClient,
    path: &str,
    filters: &str,
    max: usize,
    page_size: u32,
) -> Result<(Vec<Value>, bool), OperatorError> {
    let mut all: Vec<Value> = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let want = (max - all.len()).min(page_size as usize).max(1);
        let mut url = format!("{path}?limit={want}{filters}");
        if let Some(p) = &page {
            url.push_str(&format!("&page={}", path_segment(p)));
        }
        let mut v = api.call("GET", &url, None).await?;
        let data = match v["data"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let next = v["next_page"].as_str().filter(|p| !p.is_empty());
        for item in data {
            if all.len() == max {
                return Ok((all, true));
            }
            all.push(item);
        }
        match next {
            None => return Ok((all, false)),
            Some(_) if all.len() == max => return Ok((all, true)),
            Some(p) => page = Some(p.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn api_error_uses_the_envelope() {
        let body = json!({"type": "error", "error": {"type": "not_found_error", "message": "session sesn_x not found"}});
        let e = api_error("/v1/sessions/sesn_x", 404, Some(&body), b"");
        assert_eq!(e.to_string(), "not_found_error: session sesn_x not found");
        let e = api_error("/p", 502, None, b"<html>bad gateway</html>");
        assert!(e.to_string().contains("status 502"), "{e}");
    }
}
