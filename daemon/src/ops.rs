//! The ops listener every daemon can open: `/metrics` (Prometheus text),
//! `/livez` (200 while the process serves HTTP) and `/readyz` (200 when every
//! named readiness check passes, 503 naming the ones that fail).
//!
//! Configured by `[ops] listen = "127.0.0.1:9464"`; off when the key is
//! absent, so tests that start many daemons never collide on a fixed port.
//! A non-loopback address is allowed (Prometheus usually scrapes from another
//! host) and is logged at start.
//!
//! Metrics go through the [`metrics`] facade: library crates call
//! `metrics::counter!`/`gauge!`/`histogram!` where events happen, without a
//! registry to pass around; until [`recorder`] installs the Prometheus
//! recorder (once per process, when an ops listener starts) those calls are
//! no-ops. [`CATALOGUE`] names and describes every `airlock_*` metric (it is
//! also the table in docs/metrics.md); process basics (`process_*`) come from
//! `metrics-process`, refreshed at each scrape.
//!
//! This module owns the HTTP side only: what "ready" means is given by each
//! daemon as named [`Ops::check`]s, and values that are cheaper to read at
//! scrape time than to track (a certificate's remaining life, sessions by
//! status) as [`Ops::refresh`] hooks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

use crate::ConfigError;

/// `[ops]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    /// `host:port` of the ops listener (absent: no listener).
    pub listen: Option<String>,
}

/// `[ops]` validated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// Where `/metrics`, `/livez` and `/readyz` are served; `None`: off.
    pub listen: Option<SocketAddr>,
}

impl OpsConfig {
    /// Validate `[ops]`; errors name `ops.listen`.
    pub fn from_raw(raw: &RawOps) -> Result<Self, ConfigError> {
        let listen = match raw.listen.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid(
                    "ops.listen",
                    format!("`{s}` is not an ip:port address ({e})"),
                )
            })?),
        };
        Ok(Self { listen })
    }
}

/// Why the ops listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// `ops.listen` could not be bound.
    #[error("cannot listen on ops.listen {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How long one readiness check or refresh hook may take before it counts
/// as failed (a hung store must not hang `/readyz`).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Histogram buckets (seconds) for every `*_seconds` histogram.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// What kind of metric a [`CATALOGUE`] entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in [`LATENCY_BUCKETS_SECONDS`].
    Histogram,
}

/// One `airlock_*` metric: name, kind, labels, meaning.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    /// The exported name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Label keys (all with bounded value sets).
    pub labels: &'static [&'static str],
    /// HELP text.
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricInfo {
    MetricInfo {
        name,
        kind,
        labels,
        help,
    }
}

/// Every `airlock_*` metric the daemons export (described at recorder
/// install, so `# HELP` lines appear; kept equal to docs/metrics.md).
pub const CATALOGUE: &[MetricInfo] = &[
    // control plane
    m(
        "airlock_sessions",
        Kind::Gauge,
        &["status"],
        "Sessions in the session store by status (read at scrape time).",
    ),
    m(
        "airlock_wakes_total",
        Kind::Counter,
        &["outcome"],
        "Harness wakes (one turn of a session's loop) by outcome.",
    ),
    m(
        "airlock_model_requests_total",
        Kind::Counter,
        &["outcome"],
        "Requests to the model provider by outcome (ok, error, interrupted).",
    ),
    m(
        "airlock_model_request_duration_seconds",
        Kind::Histogram,
        &[],
        "Duration of model provider requests.",
    ),
    m(
        "airlock_tool_calls_total",
        Kind::Counter,
        &["outcome"],
        "Sandbox tool calls run by the harness, by outcome (ok, error: the result the model sees).",
    ),
    m(
        "airlock_tool_call_duration_seconds",
        Kind::Histogram,
        &["outcome"],
        "Duration of tool calls run by the harness.",
    ),
    m(
        "airlock_events_appended_total",
        Kind::Counter,
        &[],
        "Events appended to the session log.",
    ),
    m(
        "airlock_store_operation_duration_seconds",
        Kind::Histogram,
        &["op"],
        "Duration of session store operations by op (append, read, lease, list_sessions, ...).",
    ),
    m(
        "airlock_agents_connected",
        Kind::Gauge,
        &["transport"],
        "Agent connections to the gateway by transport (quic, tcp).",
    ),
    m(
        "airlock_agent_calls_total",
        Kind::Counter,
        &["call", "outcome"],
        "Calls the gateway opened to agents by call name and outcome (opened, not_connected, tunnel_error).",
    ),
    m(
        "airlock_certificate_expiry_seconds",
        Kind::Gauge,
        &["cert"],
        "Seconds until the certificate's not_after (negative: expired); cert = ca, server, agent.",
    ),
    // sandbox-agent
    m(
        "airlock_tunnel_connected",
        Kind::Gauge,
        &["transport"],
        "1 while the agent's tunnel to the control plane is up on this transport.",
    ),
    m(
        "airlock_tunnel_reconnects_total",
        Kind::Counter,
        &[],
        "Times the agent connected again after losing its control plane.",
    ),
    m(
        "airlock_sandboxes",
        Kind::Gauge,
        &[],
        "Sandboxes the agent is running for sessions.",
    ),
    m(
        "airlock_pool_containers",
        Kind::Gauge,
        &["state"],
        "Warm pool containers by state (ready, creating).",
    ),
    // vault-bridge
    m(
        "airlock_bridge_credential_uses_total",
        Kind::Counter,
        &["kind", "outcome"],
        "Credential uses by the bridge (kind = egress, mcp) by outcome (ok, unavailable).",
    ),
    m(
        "airlock_bridge_refresh_failures_total",
        Kind::Counter,
        &[],
        "Failed OAuth token refreshes by the bridge.",
    ),
    m(
        "airlock_bridge_backend_healthy",
        Kind::Gauge,
        &[],
        "1 when the bridge's secret backend was reachable and unsealed at the last check.",
    ),
];

/// The process-wide Prometheus handle: installs the recorder on the first
/// call (as the global `metrics` recorder, with [`CATALOGUE`] described),
/// returns the same handle after. `None` when another recorder was
/// installed first (then `/metrics` serves an empty body).
pub fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS_SECONDS) {
                Ok(b) => b,
                Err(error) => {
                    tracing::error!(%error, "metrics recorder not installed");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    describe_all();
                    Some(handle)
                }
                Err(error) => {
                    tracing::error!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

fn describe_all() {
    for info in CATALOGUE {
        match info.kind {
            Kind::Counter => metrics::describe_counter!(info.name, info.help),
            Kind::Gauge => metrics::describe_gauge!(info.name, info.help),
            Kind::Histogram => metrics::describe_histogram!(info.name, info.help),
        }
    }
    process_collector().describe();
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type CheckFn = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;
type RefreshFn = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// A readiness flag set by the daemon (listeners bound, tunnel up): a cheap
/// check that reads a bool and a reason.
#[derive(Debug, Clone)]
pub struct Flag {
    up: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
}

impl Flag {
    /// A flag that is down with `reason` until [`Flag::set_up`].
    pub fn down(reason: impl Into<String>) -> Self {
        Self {
            up: Arc::new(AtomicBool::new(false)),
            reason: Arc::new(Mutex::new(reason.into())),
        }
    }

    /// Mark ready.
    pub fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Mark not ready, saying why.
    pub fn set_down(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.into();
        }
        self.up.store(false, Ordering::SeqCst);
    }

    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn result(&self) -> Result<(), String> {
        if self.is_up() {
            Ok(())
        } else {
            Err(self
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|_| "not ready".to_owned()))
        }
    }
}

/// What the ops endpoints serve: named readiness checks and scrape-time
/// refresh hooks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ops {
    checks: Vec<(&'static str, CheckFn)>,
    refreshers: Vec<RefreshFn>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("refreshers", &self.refreshers.len())
            .finish()
    }
}

impl Ops {
    /// No checks, no hooks (`/readyz` is then always 200).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a named readiness check: `Ok(())` when ready, else why not (one
    /// line, no secrets). Each run is bounded by [`CHECK_TIMEOUT`].
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as BoxFuture<_>)));
        self
    }

    /// Add a readiness check that reads `flag`.
    pub fn flag(self, name: &'static str, flag: &Flag) -> Self {
        let flag = flag.clone();
        self.check(name, move || std::future::ready(flag.result()))
    }

    /// Add a hook run before each `/metrics` render (to set gauges that are
    /// read rather than tracked); bounded by [`CHECK_TIMEOUT`].
    pub fn refresh<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refreshers
            .push(Arc::new(move || Box::pin(hook()) as BoxFuture<_>));
        self
    }

    /// Run every check (concurrently); the names with their results.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let runs = self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let r = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "check did not answer within {} ms",
                        CHECK_TIMEOUT.as_millis()
                    )),
                };
                (*name, r)
            }
        });
        futures::future::join_all(runs).await
    }

    /// The router: `/metrics`, `/livez`, `/readyz`. `metrics` is the
    /// handle to render (normally [`recorder`]).
    pub fn router(self, metrics: Option<PrometheusHandle>) -> Router {
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(Arc::new(OpsState { ops: self, metrics }))
    }
}

struct OpsState {
    ops: Ops,
    metrics: Option<PrometheusHandle>,
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<OpsState>>) -> Response {
    let results = state.ops.readiness().await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    for (name, r) in &results {
        let v = match r {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(reason) => {
                failing.push(*name);
                serde_json::json!({"ok": false, "error": reason})
            }
        };
        checks.insert((*name).to_owned(), v);
    }
    let mut body = serde_json::json!({"ready": ready, "checks": checks});
    if !ready {
        body["failing"] = serde_json::json!(failing);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<OpsState>>) -> Response {
    let hooks = state.ops.refreshers.iter().map(|hook| {
        let fut = hook();
        async move {
            let _ = tokio::time::timeout(CHECK_TIMEOUT, fut).await;
        }
    });
    futures::future::join_all(hooks).await;
    let text = match &state.metrics {
        Some(handle) => {
            process_collector().collect();
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A bound ops listener, not yet serving.
#[derive(Debug)]
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl OpsServer {
    /// Bind `addr` (logging a warning-free note when it is not loopback:
    /// the endpoints carry no secrets but reveal load and health).
    pub async fn bind(addr: SocketAddr) -> Result<Self, OpsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| OpsError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        if addr.ip().is_loopback() {
            tracing::info!(ops_addr = %local, "ops listener bound (/metrics, /livez, /readyz)");
        } else {
            tracing::info!(ops_addr = %local, loopback = false,
                "ops listener bound on a non-loopback address (/metrics, /livez, /readyz reachable from the network)");
        }
        Ok(Self {
            listener,
            addr: local,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `ops` (with the process recorder) until `shutdown` resolves.
    pub async fn serve(self, ops: Ops, shutdown: impl Future<Output = ()> + Send + 'static) {
        let router = ops.router(recorder());
        if let Err(error) = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, ops_addr = %self.addr, "ops listener failed");
        }
    }
}

/// Bind `[ops]` when configured and install the recorder; `None` when off.
/// Call early in start-up so metrics recorded during start are kept.
pub async fn bind(config: &OpsConfig) -> Result<Option<OpsServer>, OpsError> {
    match config.listen {
        None => Ok(None),
        Some(addr) => {
            let _ = recorder();
            OpsServer::bind(addr).await.map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn config_is_off_by_default_and_names_the_key() {
        assert_eq!(
            OpsConfig::from_raw(&RawOps::default()).unwrap().listen,
            None
        );
        let c = OpsConfig::from_raw(&RawOps {
            listen: Some("0.0.0.0:9464".into()),
        })
        .unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:9464".parse().unwrap()));
        let e = OpsConfig::from_raw(&RawOps {
            listen: Some("localhost".into()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("`ops.listen`"), "{e}");
        let e =
            crate::parse_toml::<RawOps>("listn = 1\n", std::path::Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
    }

    #[tokio::test]
    async fn livez_and_readyz_flip_with_their_checks() {
        let flag = Flag::down("tunnel not connected yet");
        let store_ok = Arc::new(AtomicBool::new(true));
        let s = store_ok.clone();
        let ops = Ops::new().flag("tunnel", &flag).check("store", move || {
            let ok = s.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("store unreachable".to_owned())
                }
            }
        });
        let router = ops.router(None);
        let (status, body) = get(&router, "/livez").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));

        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["failing"], serde_json::json!(["tunnel"]));
        assert_eq!(v["checks"]["tunnel"]["error"], "tunnel not connected yet");
        assert_eq!(v["checks"]["store"]["ok"], true);

        flag.set_up();
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["checks"]["tunnel"]["ok"], true);

        store_ok.store(false, Ordering::SeqCst);
        flag.set_down("link lost");
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["failing"], serde_json::json!(["tunnel", "store"]));
        assert_eq!(v["checks"]["tunnel"]["error"], "link lost");

        let (status, _) = get(&router, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_hung_check_fails_by_timeout() {
        let ops = Ops::new().check("hung", std::future::pending);
        let r = ops.readiness().await;
        assert_eq!(r.len(), 1);
        assert!(r[0].1.as_ref().unwrap_err().contains("did not answer"));
    }

    #[tokio::test]
    async fn metrics_render_catalogue_process_and_refreshed_values() {
        let handle = recorder().expect("first recorder in this test binary");
        // The same handle on every call.
        assert!(recorder().is_some());
        metrics::counter!("airlock_tool_calls_total", "outcome" => "ok").increment(3);
        metrics::histogram!("airlock_tool_call_duration_seconds", "outcome" => "ok").record(0.02);
        let ops = Ops::new().refresh(|| async {
            metrics::gauge!("airlock_certificate_expiry_seconds", "cert" => "agent").set(42.0);
        });
        let router = ops.router(Some(handle));
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("airlock_tool_calls_total{outcome=\"ok\"} 3"),
            "{body}"
        );
        assert!(
            body.contains("# HELP airlock_tool_calls_total Sandbox tool calls"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE airlock_tool_call_duration_seconds histogram"),
            "{body}"
        );
        assert!(
            body.contains(
                "airlock_tool_call_duration_seconds_bucket{outcome=\"ok\",le=\"0.025\"} 1"
            ),
            "{body}"
        );
        assert!(
            body.contains("airlock_certificate_expiry_seconds{cert=\"agent\"} 42"),
            "{body}"
        );
        assert!(body.contains("process_resident_memory_bytes"), "{body}");
    }

    #[tokio::test]
    async fn bind_is_off_without_listen_and_serves_with_it() {
        assert!(bind(&OpsConfig::default()).await.unwrap().is_none());
        let server = bind(&OpsConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
        })
        .await
        .unwrap()
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        // A second bind of the same port is a typed error naming the key.
        let e = OpsServer::bind(addr).await.unwrap_err();
        assert!(e.to_string().contains("ops.listen"), "{e}");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(Ops::new(), async {
            let _ = rx.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
