//! `control-plane environments …` and `control-plane sessions …`: operator
//! commands that talk to a running control plane over its public HTTP API
//! (the same API and key an SDK uses). The API URL comes from `--api-url`,
//! `AIRLOCK_API_URL`, or `http://` + the config's `[api] listen`; the key
//! from `--api-key` or `AIRLOCK_API_KEY` (never printed or logged).
//!
//! Output is a human-readable table by default and JSON with `--json`.
//! API errors are printed as `<type>: <message>` from the API's error
//! envelope; every failure maps to [`OperatorError`].

use std::io::{IsTerminal, Write};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::config::Config;

/// How long a plain (non-streaming) request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the API is and how to authenticate (shared by every operator command).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the public API (default: `http://` + `[api] listen`).
    #[arg(long, global = true, env = "AIRLOCK_API_URL")]
    pub api_url: Option<String>,
    /// API key (`control-plane api-keys create`).
    #[arg(long, global = true, env = "AIRLOCK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `control-plane environments …`.
#[derive(Debug, Args)]
pub struct EnvironmentsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: EnvironmentsCommand,
}

#[derive(Debug, Subcommand)]
enum EnvironmentsCommand {
    /// List environments (newest first).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Include archived environments.
        #[arg(long)]
        include_archived: bool,
    },
    /// Create a self-hosted environment (served by enrolled sandbox-agents).
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one environment.
    Show {
        /// Environment id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive an environment: it takes no new sessions.
    Archive {
        /// Environment id.
        id: String,
    },
}

/// `control-plane sessions …`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions (newest first), following the API's pages.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only sessions with this status (`running`, `idle`, `rescheduling`,
        /// `terminated`); repeat for several.
        #[arg(long)]
        status: Vec<String>,
        /// Only sessions of this agent (`agent_…`).
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions created at or after this time (RFC 3339).
        #[arg(long)]
        created_after: Option<String>,
        /// Only sessions created before this time (RFC 3339).
        #[arg(long)]
        created_before: Option<String>,
        /// Include archived sessions.
        #[arg(long)]
        include_archived: bool,
        /// At most this many sessions (pages are followed until it is reached).
        #[arg(long, default_value_t = 100, conflicts_with = "all",
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Every matching session (follow all pages; no limit).
        #[arg(long)]
        all: bool,
        /// Sessions per API request (1–1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
    /// Show one session.
    Show {
        /// Session id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a session's events live until Ctrl-C or the stream ends.
    Tail {
        /// Session id.
        id: String,
        /// Start after this seq (0: from the beginning; default: only new events).
        #[arg(long)]
        after: Option<u64>,
        /// Print each event's JSON on its own line.
        #[arg(long)]
        json: bool,
        /// If the stream drops, keep trying to resume it (with `Last-Event-ID`)
        /// for this long; 0: end when the stream ends.
        #[arg(long, default_value_t = 60)]
        reconnect_seconds: u64,
    },
    /// Interrupt a session (sends `user.interrupt`).
    Interrupt {
        /// Session id.
        id: String,
    },
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// No API key was given.
    #[error("no API key: pass --api-key or set AIRLOCK_API_KEY (create one with `control-plane api-keys create`)")]
    MissingKey,
    /// The API URL is not a valid `http://` URL.
    #[error("invalid --api-url {url}: {message}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
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
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// A small client of the public API.
struct ApiClient {
    base: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    fn new(args: &ApiArgs, config: &Config) -> Result<Self, OperatorError> {
        let key = args
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(OperatorError::MissingKey)?;
        let base = args
            .api_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.api.listen))
            .trim_end_matches('/')
            .to_owned();
        if !base.starts_with("http://") {
            return Err(OperatorError::BadUrl {
                url: base,
                message:
                    "must start with http:// (the API serves plain HTTP on its listen address)"
                        .to_owned(),
            });
        }
        if let Err(error) = format!("{base}/v1").parse::<hyper::Uri>() {
            return Err(OperatorError::BadUrl {
                url: base,
                message: error.to_string(),
            });
        }
        Ok(Self {
            base,
            key,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    fn request(
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

    async fn send(
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
    async fn call(
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
fn api_error(path: &str, status: u16, body: Option<&Value>, raw: &[u8]) -> OperatorError {
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

fn bad_response(path: &str, status: u16, raw: &[u8]) -> OperatorError {
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

/// A spinner on stderr while something slow runs; only when stderr is a
/// terminal, and only after a short delay so fast calls print nothing.
struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Spinner {
    fn start(what: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        Self(Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0usize;
            loop {
                let mut err = std::io::stderr();
                let _ = write!(err, "\r{} waiting for {what}…", frames[i % frames.len()]);
                let _ = err.flush();
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            // Clear the spinner line (erase to end of line).
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max_chars {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max_chars).collect();
    out.push('…');
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) -> Result<(), OperatorError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), OperatorError> {
    std::io::stdout()
        .lock()
        .write_all(crate::table::render(headers, rows).as_bytes())?;
    Ok(())
}

fn print_fields(v: &Value, keys: &[&str]) -> Result<(), OperatorError> {
    let mut out = std::io::stdout().lock();
    for k in keys {
        let value = &v[*k];
        if value.is_null() {
            continue;
        }
        writeln!(out, "{:<16} {}", format!("{k}:"), text(value))?;
    }
    Ok(())
}

fn path_segment(id: &str) -> String {
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

/// Run an `environments` command.
pub async fn environments(args: EnvironmentsArgs, config: &Config) -> Result<(), OperatorError> {
    let api = ApiClient::new(&args.api, config)?;
    match args.command {
        EnvironmentsCommand::List {
            json,
            include_archived,
        } => {
            let (all, _) = list_pages(
                &api,
                "/v1/environments",
                &format!("&include_archived={include_archived}"),
                usize::MAX,
                100,
            )
            .await?;
            if json {
                return print_json(&Value::Array(all));
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        text(&e["name"]),
                        text(&e["config"]["type"]),
                        text(&e["created_at"]),
                        text(&e["archived_at"]),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "TYPE", "CREATED", "ARCHIVED"], &rows)
        }
        EnvironmentsCommand::Create { name, json } => {
            let v = api
                .call(
                    "POST",
                    "/v1/environments",
                    Some(json!({"name": name, "config": {"type": "self_hosted"}})),
                )
                .await?;
            if json {
                return print_json(&v);
            }
            println!(
                "created environment {} ({})",
                text(&v["id"]),
                text(&v["name"])
            );
            Ok(())
        }
        EnvironmentsCommand::Show { id, json } => {
            let v = api
                .call(
                    "GET",
                    &format!("/v1/environments/{}", path_segment(&id)),
                    None,
                )
                .await?;
            if json {
                return print_json(&v);
            }
            let mut shown = v.clone();
            shown["config_type"] = v["config"]["type"].clone();
            print_fields(
                &shown,
                &[
                    "id",
                    "name",
                    "config_type",
                    "description",
                    "created_at",
                    "updated_at",
                    "archived_at",
                ],
            )
        }
        EnvironmentsCommand::Archive { id } => {
            let v = api
                .call(
                    "POST",
                    &format!("/v1/environments/{}/archive", path_segment(&id)),
                    None,
                )
                .await?;
            println!(
                "archived environment {} ({})",
                text(&v["id"]),
                text(&v["name"])
            );
            Ok(())
        }
    }
}

/// Follow `next_page` from `path?limit=…{filters}` until `max` items or the
/// last page; returns the items and whether more exist beyond `max`.
async fn list_pages(
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

/// For `tokens create`: why an agent enrolled into `environment` would serve
/// no sessions (it is not in the catalog, or archived), to print as a
/// warning. `None` when it exists or the catalog cannot be read (the token
/// is still made: environments may be created after their agents enroll).
pub async fn environment_warning(config: &Config, environment: &str) -> Option<String> {
    let look = async {
        let catalog = catalog::open_catalog(&config.catalog).await.ok()?;
        match catalog.get_environment(environment).await {
            Ok(e) if e.archived_at.is_some() => Some(format!(
                "environment {environment} is archived: an agent enrolled into it gets no new sessions"
            )),
            Ok(_) => None,
            Err(catalog::CatalogError::NotFound { .. }) => Some(format!(
                "environment {environment} does not exist: an agent enrolled into it gets no sessions \
                 until it is created (see `control-plane environments list`)"
            )),
            Err(_) => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), look)
        .await
        .ok()
        .flatten()
}

/// Run a `sessions` command.
pub async fn sessions(args: SessionsArgs, config: &Config) -> Result<(), OperatorError> {
    let api = ApiClient::new(&args.api, config)?;
    match args.command {
        SessionsCommand::List {
            json,
            status,
            agent,
            created_after,
            created_before,
            include_archived,
            limit,
            all,
            page_size,
        } => {
            let mut filters = String::new();
            for s in &status {
                filters.push_str(&format!("&statuses[]={}", path_segment(s)));
            }
            if let Some(a) = &agent {
                filters.push_str(&format!("&agent_id={}", path_segment(a)));
            }
            if let Some(t) = &created_after {
                filters.push_str(&format!("&created_at[gte]={}", path_segment(t)));
            }
            if let Some(t) = &created_before {
                filters.push_str(&format!("&created_at[lt]={}", path_segment(t)));
            }
            if include_archived {
                filters.push_str("&include_archived=true");
            }
            let max = if all { usize::MAX } else { limit as usize };
            let (data, more) = list_pages(&api, "/v1/sessions", &filters, max, page_size).await?;
            if more && !json {
                eprintln!(
                    "showing the first {} sessions; more match (raise --limit or pass --all)",
                    data.len()
                );
            }
            if json {
                return print_json(&Value::Array(data));
            }
            let rows: Vec<Vec<String>> = data
                .iter()
                .map(|s| {
                    vec![
                        text(&s["id"]),
                        text(&s["status"]),
                        text(&s["agent"]["id"]),
                        text(&s["environment_id"]),
                        text(&s["created_at"]),
                        truncate(&text(&s["title"]), 40),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATUS", "AGENT", "ENVIRONMENT", "CREATED", "TITLE"],
                &rows,
            )
        }
        SessionsCommand::Show { id, json } => {
            let v = api
                .call("GET", &format!("/v1/sessions/{}", path_segment(&id)), None)
                .await?;
            if json {
                return print_json(&v);
            }
            let mut shown = v.clone();
            shown["agent"] = json!(format!(
                "{} (version {})",
                text(&v["agent"]["id"]),
                text(&v["agent"]["version"])
            ));
            shown["stop_reason"] = v["stop_reason"]["type"].clone();
            print_fields(
                &shown,
                &[
                    "id",
                    "title",
                    "status",
                    "stop_reason",
                    "agent",
                    "environment_id",
                    "created_at",
                    "updated_at",
                    "archived_at",
                    "metadata",
                ],
            )
        }
        SessionsCommand::Interrupt { id } => {
            api.call(
                "POST",
                &format!("/v1/sessions/{}/events", path_segment(&id)),
                Some(json!({"events": [{"type": "user.interrupt"}]})),
            )
            .await?;
            println!("interrupt sent to session {id}");
            Ok(())
        }
        SessionsCommand::Tail {
            id,
            after,
            json,
            reconnect_seconds,
        } => {
            tail(
                &api,
                &id,
                after,
                json,
                Duration::from_secs(reconnect_seconds),
            )
            .await
        }
    }
}

/// Follow the SSE stream until Ctrl-C, the session's deletion, or a drop
/// it cannot resume from.
async fn tail(
    api: &ApiClient,
    id: &str,
    after: Option<u64>,
    json_out: bool,
    reconnect: Duration,
) -> Result<(), OperatorError> {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = follow(api, id, after, json_out, reconnect) => r,
    }
}

/// How one connection of `sessions tail` ended.
enum Ended {
    /// The session was deleted (`session.deleted`): nothing more will come.
    Deleted,
    /// The stream ended or broke off; resumable from the last seq.
    Dropped(String),
}

/// Whether a failed (re)connection is worth retrying.
fn retryable(error: &OperatorError) -> bool {
    match error {
        OperatorError::Unreachable { .. }
        | OperatorError::Timeout { .. }
        | OperatorError::Body { .. } => true,
        OperatorError::Api { status, .. } | OperatorError::BadResponse { status, .. } => {
            *status >= 500 || *status == 429
        }
        _ => false,
    }
}

/// The seq of the newest event of a session (0 if none).
async fn latest_seq(api: &ApiClient, id: &str) -> Result<u64, OperatorError> {
    let v = api
        .call(
            "GET",
            &format!(
                "/v1/sessions/{}/events?order=desc&limit=1",
                path_segment(id)
            ),
            None,
        )
        .await?;
    Ok(v["data"][0]["seq"].as_u64().unwrap_or(0))
}

/// Open the stream after `last` (live when `None`); the body of a 2xx answer.
async fn open_stream(
    api: &ApiClient,
    id: &str,
    last: Option<u64>,
    spinner: bool,
) -> Result<hyper::body::Incoming, OperatorError> {
    let path = format!("/v1/sessions/{}/events/stream", path_segment(id));
    let mut req = api.request("GET", &path, None, "text/event-stream")?;
    if let Some(seq) = last {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&seq.to_string()) {
            req.headers_mut().insert("last-event-id", v);
        }
    }
    let resp = {
        let _spinner = spinner.then(|| Spinner::start(format!("the stream of {id}")));
        tokio::time::timeout(REQUEST_TIMEOUT, api.send(req))
            .await
            .map_err(|_| OperatorError::Timeout {
                url: api.base.clone(),
                seconds: REQUEST_TIMEOUT.as_secs(),
            })??
    };
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        return Err(api_error(&path, status, parsed.as_ref(), &bytes));
    }
    Ok(resp.into_body())
}

/// Follow the stream; when it drops, resume it with `Last-Event-ID` (the
/// last seq seen) for up to `reconnect`, backing off from 200 ms to 5 s.
async fn follow(
    api: &ApiClient,
    id: &str,
    after: Option<u64>,
    json_out: bool,
    reconnect: Duration,
) -> Result<(), OperatorError> {
    // Without --after, "from now on" is the newest seq now, so that a
    // resume after a drop has a seq to start from (no gap).
    let mut last = match after {
        Some(a) => Some(a),
        None if !reconnect.is_zero() => Some(latest_seq(api, id).await?),
        None => None,
    };
    let mut body = open_stream(api, id, last, true).await?;
    loop {
        let why = match read_stream(&mut body, &mut last, json_out).await? {
            Ended::Deleted => return Ok(()),
            Ended::Dropped(why) => why,
        };
        if reconnect.is_zero() {
            return Ok(());
        }
        let at = last.map_or_else(|| "the start".to_owned(), |s| format!("seq {s}"));
        eprintln!("stream of {id} dropped after {at} ({why}); reconnecting with Last-Event-ID");
        let dropped = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        body = loop {
            tokio::time::sleep(backoff).await;
            match open_stream(api, id, last, false).await {
                Ok(b) => break b,
                Err(e) if retryable(&e) && dropped.elapsed() < reconnect => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if retryable(&e) => {
                    return Err(OperatorError::StreamLost {
                        session: id.to_owned(),
                        seconds: reconnect.as_secs(),
                        message: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        };
        eprintln!("stream of {id} resumed after {at}");
    }
}

/// Print the events of one connection until it ends.
async fn read_stream(
    body: &mut hyper::body::Incoming,
    last: &mut Option<u64>,
    json_out: bool,
) -> Result<Ended, OperatorError> {
    let mut parser = SseParser::default();
    loop {
        let frame = match body.frame().await {
            None => return Ok(Ended::Dropped("the server ended the stream".to_owned())),
            Some(Err(error)) => return Ok(Ended::Dropped(error.to_string())),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for ev in parser.push(&data) {
            if ev.event == "ping" {
                continue;
            }
            if ev.event == "error" {
                // The server gives up on this stream; resume it.
                return Ok(Ended::Dropped(truncate(&ev.data, 200)));
            }
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let mut out = std::io::stdout().lock();
            if json_out {
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {:<28}  {}",
                    text(&v["seq"]),
                    text(&v["type"]),
                    summary(&v)
                )?;
            }
            out.flush()?;
            if let Some(seq) = ev.id.as_deref().and_then(|s| s.trim().parse::<u64>().ok()) {
                *last = Some(seq);
            }
            if ev.event == "session.deleted" {
                return Ok(Ended::Deleted);
            }
        }
    }
}

/// One server-sent event.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// Incremental SSE parser: bytes in, complete events out.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&self.buf).replace("\r\n", "\n");
            let Some(end) = text.find("\n\n") else {
                // Keep the normalised text so a split "\r\n" is handled next time.
                self.buf = text.into_bytes();
                return out;
            };
            let block = text[..end].to_owned();
            self.buf = text.as_bytes()[end + 2..].to_vec();
            let mut event = String::from("message");
            let mut id = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim_start().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim_start().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                out.push(SseEvent {
                    event,
                    id,
                    data: data.join("\n"),
                });
            }
        }
    }
}

/// A short, one-line summary of an event for `sessions tail`.
fn summary(v: &Value) -> String {
    let content_text = |c: &Value| -> String {
        c.as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let s = match v["type"].as_str().unwrap_or_default() {
        "user.message" | "agent.message" | "agent.thinking" => content_text(&v["content"]),
        "agent.tool_use" | "agent.custom_tool_use" | "agent.mcp_tool_use" => {
            format!(
                "{} {}",
                text(&v["name"]),
                truncate(&v["input"].to_string(), 80)
            )
        }
        "agent.tool_result" | "agent.mcp_tool_result" | "user.custom_tool_result" => {
            let err = if v["is_error"].as_bool() == Some(true) {
                " (error)"
            } else {
                ""
            };
            format!(
                "{}{err} {}",
                text(&v["tool_use_id"]),
                content_text(&v["content"])
            )
        }
        "user.tool_confirmation" => format!("{} {}", text(&v["tool_use_id"]), text(&v["result"])),
        "session.status_idle" => format!("stop_reason={}", text(&v["stop_reason"]["type"])),
        "session.error" => format!(
            "{}: {}",
            text(&v["error"]["type"]),
            text(&v["error"]["message"])
        ),
        _ => String::new(),
    };
    truncate(&s, 120)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_pings_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: ping\ndata: {}\n").is_empty());
        let got = p.push(b"\nid: 1\nevent: user.message\r\ndata: {\"seq\":1}\r\n\r\nevent: x\ndata: a\ndata: b\n\n");
        let ev = |event: &str, id: Option<&str>, data: &str| SseEvent {
            event: event.to_owned(),
            id: id.map(str::to_owned),
            data: data.to_owned(),
        };
        assert_eq!(
            got,
            vec![
                ev("ping", None, "{}"),
                ev("user.message", Some("1"), "{\"seq\":1}"),
                ev("x", None, "a\nb"),
            ]
        );
        assert!(p.push(b": comment\n\n").is_empty());
    }

    #[test]
    fn api_error_uses_the_envelope() {
        let body = json!({"type": "error", "error": {"type": "not_found_error", "message": "session sesn_x not found"}});
        let e = api_error("/v1/sessions/sesn_x", 404, Some(&body), b"");
        assert_eq!(e.to_string(), "not_found_error: session sesn_x not found");
        let e = api_error("/p", 502, None, b"<html>bad gateway</html>");
        assert!(e.to_string().contains("status 502"), "{e}");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let api = |status: u16| OperatorError::Api {
            status,
            kind: "x".to_owned(),
            message: "y".to_owned(),
        };
        assert!(retryable(&OperatorError::Unreachable {
            url: "u".to_owned(),
            message: "refused".to_owned(),
        }));
        assert!(retryable(&api(503)) && retryable(&api(429)));
        assert!(!retryable(&api(404)) && !retryable(&api(401)));
        assert!(!retryable(&OperatorError::MissingKey));
    }

    #[test]
    fn summaries_are_short_and_typed() {
        let v = json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}});
        assert_eq!(summary(&v), "stop_reason=end_turn");
        let v = json!({"type": "agent.message", "content": [{"type": "text", "text": "x".repeat(500)}]});
        assert!(summary(&v).chars().count() <= 121);
        assert_eq!(path_segment("sesn_a/../b"), "sesn_a%2F%2E%2E%2Fb");
    }
}
