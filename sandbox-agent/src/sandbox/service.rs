//! [`SandboxService`]: the calls (`provision`, `execute`, `destroy`, `list`)
//! and the lifecycle around them: reconcile on start (adopt live owned
//! sandboxes, remove orphans and expired ones), idle and TTL reaping, dead
//! container clean-up, the warm pool refill, the execution record and the
//! audit log.
//!
//! State on disk (the agent's data dir): `executions.jsonl` (see
//! [`super::record`]), `audit.jsonl` (see [`crate::audit`]) and
//! `sandboxes/<id>.json`, the assignment of each handed-out sandbox (session,
//! expiry), which lets a restarted agent tell a handed-out warm container from
//! an unassigned one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bytes::Bytes;
use protocol::sandbox::{
    DestroyRequest, Disposition, ExecuteRequest, ProvisionRequest, Provisioned, SandboxInfo,
    ToolResult,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{OnRestart, Policy, PoolSettings, SandboxSettings, TOOL_NAMES};
use super::docker::{self as dk, unix_now, ContainerParams};
use super::executor_client::{CallError, ExecutorClient};
use super::policy::{RequestRefused, SandboxSpec};
use super::pool::{Pool, Warm};
use super::record::{Begin, ExecutionRecord};
use super::SandboxError;
use crate::audit::{AuditEvent, AuditLog, Decision, Detail, OutputDigest, PHASE_END, PHASE_START};

/// Everything the service is built from.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This agent's id (the ownership label on its containers).
    pub agent_id: String,
    /// Data dir for the record, audit log and assignments.
    pub data_dir: PathBuf,
    /// `[sandbox]`.
    pub sandbox: SandboxSettings,
    /// `[policy]`.
    pub policy: Policy,
    /// `[pool]`.
    pub pool: PoolSettings,
}

/// What a restart found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Sandboxes re-attached and served again.
    pub adopted: Vec<String>,
    /// Containers removed (expired, dead, unassigned pool, reaped by policy, unanswering).
    pub removed: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Assignment {
    sandbox_id: String,
    container_id: String,
    session_id: Option<String>,
    image: String,
    created_at: u64,
    expires_at: Option<u64>,
}

#[derive(Debug)]
struct Sandbox {
    id: String,
    container_id: String,
    image: String,
    session_id: Option<String>,
    created_at: u64,
    expires_at: Option<u64>,
    client: ExecutorClient,
    last_used: Mutex<Instant>,
    in_flight: AtomicUsize,
}

impl Sandbox {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<String, Arc<Sandbox>>,
    /// Provisions in progress (count against `policy.max_sandboxes`).
    reserved: usize,
    /// Recently dead sandboxes and why, so later calls get a clear tool error.
    tombstones: HashMap<String, String>,
}

#[derive(Debug)]
struct Inner {
    docker: Docker,
    cfg: ServiceConfig,
    runtime: Option<String>,
    registry: Mutex<Registry>,
    pool: Pool,
    pool_profiles: Vec<SandboxSpec>,
    record: ExecutionRecord,
    audit: AuditLog,
    tool_calls: super::bridge_audit::ToolCalls,
    /// Live sandboxes' `open_egress` requests (re-sent after a bridge restart).
    egress: Arc<super::bridge::OpenEgresses>,
    assignments_dir: PathBuf,
    cancel: CancellationToken,
    refill: tokio::sync::Notify,
}

/// The sandbox service the tunnel dispatcher calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SandboxService {
    inner: Arc<Inner>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::State {
        path: path.to_owned(),
        source,
    }
}

fn new_sandbox_id() -> String {
    format!("sbx_{}", uuid::Uuid::now_v7().simple())
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl SandboxService {
    /// Connect to Docker, open the record and the audit log of the data
    /// dir (default settings), reconcile the containers this agent owns, and
    /// start the reaper and pool refill.
    pub async fn start(cfg: ServiceConfig) -> Result<(Self, ReconcileReport), SandboxError> {
        let audit =
            AuditLog::open(&cfg.data_dir).map_err(|e| SandboxError::Internal(e.to_string()))?;
        Self::start_with_audit(cfg, audit).await
    }

    /// [`SandboxService::start`] writing to `audit` (the agent opens its
    /// log once, from `[audit]`, and shares it with the MCP dispatcher).
    pub async fn start_with_audit(
        cfg: ServiceConfig,
        audit: AuditLog,
    ) -> Result<(Self, ReconcileReport), SandboxError> {
        if !cfg.sandbox.executor_path.is_file() {
            return Err(SandboxError::State {
                path: cfg.sandbox.executor_path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "executor binary not found (sandbox.executor_path)",
                ),
            });
        }
        let docker = dk::connect(&cfg.sandbox).await?;
        let runtime = match &cfg.sandbox.runtime {
            Some(r) if dk::runtime_installed(&docker, r).await? => Some(r.clone()),
            Some(r) => {
                tracing::warn!(runtime = %r, "sandbox.runtime is not installed in Docker; using the default runtime");
                None
            }
            None => None,
        };
        let record = ExecutionRecord::open(&cfg.data_dir, cfg.sandbox.record_retention)?;
        let assignments_dir = cfg.data_dir.join("sandboxes");
        std::fs::create_dir_all(&assignments_dir).map_err(io_err(&assignments_dir))?;
        let pool_profiles = if cfg.pool.size == 0 {
            Vec::new()
        } else {
            cfg.pool
                .images
                .iter()
                .map(|image| SandboxSpec::pool_default(&cfg.sandbox, image))
                .collect()
        };
        let inner = Arc::new(Inner {
            docker,
            runtime,
            registry: Mutex::new(Registry::default()),
            pool: Pool::new(cfg.pool.size),
            pool_profiles,
            record,
            audit,
            tool_calls: super::bridge_audit::ToolCalls::default(),
            egress: Arc::default(),
            assignments_dir,
            cancel: CancellationToken::new(),
            refill: tokio::sync::Notify::new(),
            cfg,
        });
        let service = Self { inner };
        let report = service.reconcile().await?;
        if let Some(bridge) = &service.inner.cfg.sandbox.bridge {
            let inner = &service.inner;
            let recorder =
                super::bridge_audit::Recorder::new(inner.audit.clone(), inner.tool_calls.clone())
                    .map_err(|e| SandboxError::Internal(e.to_string()))?;
            tokio::spawn(super::bridge_audit::run(
                bridge.clone(),
                recorder,
                inner.cancel.clone(),
            ));
            tokio::spawn(super::bridge::keep_egress_open(
                bridge.clone(),
                inner.egress.clone(),
                inner.cancel.clone(),
            ));
        }
        tokio::spawn(reaper(service.inner.clone()));
        if !service.inner.pool_profiles.is_empty() {
            tokio::spawn(refiller(service.inner.clone()));
        }
        Ok((service, report))
    }

    /// This agent's id.
    pub fn agent_id(&self) -> &str {
        &self.inner.cfg.agent_id
    }

    /// Path of the audit log.
    pub fn audit_path(&self) -> &Path {
        self.inner.audit.path()
    }

    /// The audit log this service writes.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// Set the `airlock_sandboxes` and `airlock_pool_containers{state}`
    /// gauges (read at scrape time; no audit record, unlike `list`).
    pub fn record_gauges(&self) {
        let live = self.inner.lock().live.len();
        let (ready, creating) = self.inner.pool.totals();
        metrics::gauge!("airlock_sandboxes").set(live as f64);
        metrics::gauge!("airlock_pool_containers", "state" => "ready").set(ready as f64);
        metrics::gauge!("airlock_pool_containers", "state" => "creating").set(creating as f64);
    }

    /// Whether Docker answers a ping (for the agent's readiness).
    pub async fn docker_ping(&self) -> Result<(), String> {
        self.inner
            .docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| format!("docker ping failed: {e}"))
    }

    /// Warm containers ready for the default profile of `image`.
    pub fn pool_ready(&self, image: &str) -> usize {
        let spec = SandboxSpec::pool_default(&self.inner.cfg.sandbox, image);
        self.inner.pool.ready(&spec.profile())
    }

    async fn reconcile(&self) -> Result<ReconcileReport, SandboxError> {
        let inner = &self.inner;
        let mut report = ReconcileReport::default();
        let owned = dk::list_owned(&inner.docker, &inner.cfg.agent_id).await?;
        let now = unix_now();
        let mut seen = std::collections::HashSet::new();
        for c in owned {
            let sandbox_id = c.labels.get(dk::LABEL_SANDBOX).cloned().unwrap_or_default();
            let assignment = read_assignment(&inner.assignments_dir, &sandbox_id);
            let is_pool = c.labels.contains_key(dk::LABEL_POOL);
            let expires_at = assignment
                .as_ref()
                .and_then(|a| a.expires_at)
                .or_else(|| dk::parse_expiry(&c.labels));
            let why_remove = if sandbox_id.is_empty() {
                Some("no sandbox id label")
            } else if !c.running {
                Some("not running")
            } else if is_pool && assignment.is_none() {
                Some("unassigned warm-pool container")
            } else if expires_at.is_some_and(|e| e <= now) {
                Some("expired")
            } else if inner.cfg.sandbox.on_restart == OnRestart::Reap {
                Some("sandbox.on_restart = reap")
            } else {
                None
            };
            if let Some(reason) = why_remove {
                tracing::info!(sandbox_id = %sandbox_id, reason, "reconcile: removing container");
                dk::remove(&inner.docker, &c.id).await?;
                remove_assignment(&inner.assignments_dir, &sandbox_id);
                inner.audit.record(AuditEvent {
                    call: "reap".into(),
                    sandbox_id: Some(sandbox_id.clone()),
                    outcome: "ok".into(),
                    detail: Some(format!("reconcile: {reason}")),
                    ..Default::default()
                });
                report.removed.push(sandbox_id);
                continue;
            }
            match self.adopt(&c, &sandbox_id, assignment, expires_at).await {
                Ok(()) => {
                    seen.insert(sandbox_id.clone());
                    report.adopted.push(sandbox_id);
                }
                Err(error) => {
                    tracing::warn!(sandbox_id = %sandbox_id, %error, "reconcile: executor did not answer; removing");
                    dk::remove(&inner.docker, &c.id).await?;
                    remove_assignment(&inner.assignments_dir, &sandbox_id);
                    report.removed.push(sandbox_id);
                }
            }
        }
        // Assignments whose container is gone are stale.
        if let Ok(dir) = std::fs::read_dir(&inner.assignments_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(id) = name.strip_suffix(".json") {
                    if !seen.contains(id) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        tracing::info!(
            adopted = report.adopted.len(),
            removed = report.removed.len(),
            "reconciled sandboxes"
        );
        Ok(report)
    }

    async fn adopt(
        &self,
        c: &dk::Listed,
        sandbox_id: &str,
        assignment: Option<Assignment>,
        expires_at: Option<u64>,
    ) -> Result<(), SandboxError> {
        let inner = &self.inner;
        let attach = dk::attach(&inner.docker, &c.id).await?;
        let client = ExecutorClient::new(
            attach,
            inner.cfg.sandbox.executor.max_frame_bytes as usize,
            sandbox_id,
        );
        client
            .ping(Duration::from_secs(5))
            .await
            .map_err(|e| SandboxError::ExecutorStart {
                sandbox_id: sandbox_id.to_owned(),
                message: e.to_string(),
            })?;
        let sandbox = Arc::new(Sandbox {
            id: sandbox_id.to_owned(),
            container_id: c.id.clone(),
            image: assignment
                .as_ref()
                .map(|a| a.image.clone())
                .unwrap_or_else(|| c.image.clone()),
            session_id: assignment
                .as_ref()
                .and_then(|a| a.session_id.clone())
                .or_else(|| c.labels.get(dk::LABEL_SESSION).cloned()),
            created_at: assignment
                .as_ref()
                .map_or(c.created.max(0) as u64, |a| a.created_at),
            expires_at,
            client,
            last_used: Mutex::new(Instant::now()),
            in_flight: AtomicUsize::new(0),
        });
        inner
            .lock()
            .live
            .insert(sandbox_id.to_owned(), sandbox.clone());
        inner.audit.record(AuditEvent {
            call: "adopt".into(),
            sandbox_id: Some(sandbox_id.to_owned()),
            session_id: sandbox.session_id.clone(),
            outcome: "ok".into(),
            ..Default::default()
        });
        Ok(())
    }

    /// `provision`: resolve the request against policy, write the `start`
    /// audit line (refused, with nothing created, when it cannot be
    /// written), hand out a warm container of the same profile if there is
    /// one, else create one; then the `end` line.
    pub async fn provision(&self, req: ProvisionRequest) -> Result<Provisioned, SandboxError> {
        let started = Instant::now();
        let base = AuditEvent {
            call: "provision".into(),
            session_id: req.session_id.clone(),
            ..Default::default()
        };
        let mut started_line = false;
        let result = self.provision_inner(&req, &base, &mut started_line).await;
        let (outcome, detail, decision) = match &result {
            Ok(p) => (
                "ok".to_owned(),
                Some(format!("image={} from_pool={}", p.image, p.from_pool)),
                None,
            ),
            Err(SandboxError::Refused(e @ RequestRefused::Policy { rule, .. })) => (
                "refused".to_owned(),
                Some((*rule).to_owned()),
                Some(Decision {
                    allowed: false,
                    rule: Some((*rule).to_owned()),
                    reason: Some(e.to_string()),
                }),
            ),
            // Nothing was created and the log cannot take a line now.
            Err(SandboxError::AuditUnavailable(_)) => return result,
            Err(e) => ("error".to_owned(), Some(e.to_string()), None),
        };
        let input = decision.as_ref().map(|_| provision_input(&req));
        self.inner.audit.record(AuditEvent {
            phase: started_line.then(|| PHASE_END.to_owned()),
            sandbox_id: result.as_ref().ok().map(|p| p.sandbox_id.clone()),
            outcome,
            detail,
            decision,
            input,
            duration_ms: millis(started.elapsed()),
            ..base
        });
        result
    }

    async fn provision_inner(
        &self,
        req: &ProvisionRequest,
        base: &AuditEvent,
        started_line: &mut bool,
    ) -> Result<Provisioned, SandboxError> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() {
            return Err(SandboxError::ShuttingDown);
        }
        let spec = {
            let mut reg = inner.lock();
            let live = reg.live.len() + reg.reserved;
            let spec = inner.cfg.policy.resolve(&inner.cfg.sandbox, req, live)?;
            reg.reserved += 1;
            spec
        };
        // Fail closed: nothing is created unless the start line is written.
        let start = AuditEvent {
            phase: Some(PHASE_START.to_owned()),
            input: Some(provision_input(req)),
            decision: Some(Decision {
                allowed: true,
                ..Default::default()
            }),
            outcome: "started".into(),
            ..base.clone()
        };
        if let Err(error) = inner.audit.try_record(start) {
            inner.lock().reserved -= 1;
            tracing::error!(session_id = ?req.session_id, %error, "provision refused: the audit record could not be written");
            return Err(SandboxError::AuditUnavailable(error));
        }
        *started_line = true;
        let egress = EgressInput {
            repositories: super::bridge::repositories_from_resources(&req.resources),
            credentials: req.credentials.clone(),
            allowed_hosts: req.allowed_hosts.clone(),
        };
        let outcome = self.provision_reserved(&spec, egress).await;
        inner.lock().reserved -= 1;
        let (sandbox, from_pool) = outcome?;
        // The session's repositories, cloned inside the sandbox through its
        // egress (the bridge adds the token); a failure is reported, not fatal.
        let (repos, mut resource_errors) = super::repositories::from_resources(&req.resources);
        if !repos.is_empty() {
            let failed = super::repositories::clone_all(&sandbox.client, &repos).await;
            resource_errors.extend(failed.into_iter().map(|e| match &inner.cfg.sandbox.bridge {
                Some(_) => explain_egress_refusal(&inner.cfg.policy, e),
                None => e,
            }));
        }
        let provisioned = Provisioned {
            sandbox_id: sandbox.id.clone(),
            image: sandbox.image.clone(),
            from_pool,
            resource_errors,
        };
        tracing::info!(sandbox_id = %sandbox.id, from_pool, image = %sandbox.image, "sandbox provisioned");
        inner.lock().live.insert(sandbox.id.clone(), sandbox);
        if from_pool {
            inner.refill.notify_one();
        }
        Ok(provisioned)
    }

    async fn provision_reserved(
        &self,
        spec: &SandboxSpec,
        egress: EgressInput,
    ) -> Result<(Arc<Sandbox>, bool), SandboxError> {
        let inner = &self.inner;
        let profile = spec.profile();
        let (warm, dead) = inner.pool.take(&profile, |c| !c.is_gone());
        for d in dead {
            let _ = dk::remove(&inner.docker, &d.container_id).await;
            remove_egress_dir(&inner.cfg.sandbox, &d.sandbox_id);
        }
        let (warm, from_pool) = match warm {
            Some(w) => (w, true),
            None => (create_sandbox(inner, spec, false).await?, false),
        };
        let expires_at = spec.ttl.map(|t| unix_now() + t.as_secs());
        let mut env = spec.env.clone();
        if inner.cfg.sandbox.bridge.is_some() {
            env.extend(super::bridge::sandbox_env());
        }
        // Egress first: its placeholders go into the tool environment.
        let err = match open_egress(inner, &warm.sandbox_id, spec, egress).await {
            Ok(placeholders) => {
                env.extend(placeholders);
                None
            }
            Err(e) => Some(e),
        };
        let fail = |message: String| SandboxError::ExecutorStart {
            sandbox_id: warm.sandbox_id.clone(),
            message,
        };
        let err = match err {
            Some(e) => Some(e),
            None => match warm
                .client
                .configure(
                    env,
                    Some(spec.workdir.clone()),
                    inner.cfg.sandbox.executor_ready_timeout,
                )
                .await
            {
                Ok(None) => None,
                Ok(Some(m)) => Some(fail(format!("configure refused: {m}"))),
                Err(e) => Some(fail(format!("configure failed: {e}"))),
            },
        };
        let assignment = Assignment {
            sandbox_id: warm.sandbox_id.clone(),
            container_id: warm.container_id.clone(),
            session_id: spec.session_id.clone(),
            image: spec.image.clone(),
            created_at: warm.created_at,
            expires_at,
        };
        let err = match err {
            None => write_assignment(&inner.assignments_dir, &assignment).err(),
            e => e,
        };
        if let Some(e) = err {
            let _ = dk::remove(&inner.docker, &warm.container_id).await;
            remove_assignment(&inner.assignments_dir, &warm.sandbox_id);
            close_egress(inner, &warm.sandbox_id).await;
            return Err(e);
        }
        Ok((
            Arc::new(Sandbox {
                id: warm.sandbox_id,
                container_id: warm.container_id,
                image: spec.image.clone(),
                session_id: spec.session_id.clone(),
                created_at: warm.created_at,
                expires_at,
                client: warm.client,
                last_used: Mutex::new(Instant::now()),
                in_flight: AtomicUsize::new(0),
            }),
            from_pool,
        ))
    }

    /// `execute`: run one tool call, or answer it from the execution record
    /// when this `tool_use_id` was seen before. Streamed bash output goes to
    /// `stream` as it is produced.
    ///
    /// Audit: a request refused by validation or policy is one line (with
    /// the decision and, for a policy refusal, the scrubbed input). Any other
    /// call first gets its `start` line (scrubbed input, decision allowed),
    /// written before the execution record or the sandbox is touched; if
    /// that write fails the call is answered with a tool error and nothing
    /// runs. After the call (run, replayed, unknown) the `end` line records
    /// the outcome, exit code, output digest and duration; a failed `end`
    /// write leaves the log unhealthy but the result is still returned.
    pub async fn execute(
        &self,
        req: ExecuteRequest,
        stream: Option<mpsc::Sender<Bytes>>,
    ) -> Result<ToolResult, SandboxError> {
        let started = Instant::now();
        let inner = &self.inner;
        let base = AuditEvent {
            call: "execute".into(),
            sandbox_id: Some(req.sandbox_id.clone()),
            session_id: inner
                .lock()
                .live
                .get(&req.sandbox_id)
                .and_then(|s| s.session_id.clone()),
            tool_use_id: Some(req.tool_use_id.clone()),
            tool: Some(req.name.clone()),
            ..Default::default()
        };
        if let Err(e) = check_execute(inner, &req) {
            let (outcome, decision, input) = match &e {
                SandboxError::Refused(refused @ RequestRefused::Policy { rule, .. }) => {
                    let input = self.audit_input(&req.input).await;
                    (
                        "refused",
                        Some(Decision {
                            allowed: false,
                            rule: Some((*rule).to_owned()),
                            reason: Some(refused.to_string()),
                        }),
                        Some(input),
                    )
                }
                _ => ("error", None, None),
            };
            let (input, redactions) = input.map_or((None, None), |(v, n)| (Some(v), n));
            // The call is refused whether or not this line is written.
            inner.audit.record(AuditEvent {
                outcome: outcome.into(),
                detail: Some(e.to_string()),
                decision,
                input,
                redactions,
                duration_ms: millis(started.elapsed()),
                ..base
            });
            return Err(e);
        }
        let (input, redactions) = self.audit_input(&req.input).await;
        let start = AuditEvent {
            phase: Some(PHASE_START.to_owned()),
            input: Some(input),
            redactions,
            decision: Some(Decision {
                allowed: true,
                ..Default::default()
            }),
            outcome: "started".into(),
            ..base.clone()
        };
        if let Err(error) = inner.audit.try_record(start) {
            tracing::error!(sandbox_id = %req.sandbox_id, tool_use_id = %req.tool_use_id, tool = %req.name, %error,
                "tool call refused: the audit record could not be written");
            return Ok(ToolResult::text(
                SandboxError::AuditUnavailable(error).to_string(),
                true,
            ));
        }
        let result = self.execute_inner(&req, stream).await;
        let mut end = AuditEvent {
            phase: Some(PHASE_END.to_owned()),
            duration_ms: millis(started.elapsed()),
            ..base
        };
        match &result {
            Ok((r, exit_code)) => {
                end.outcome = match (r.disposition, r.is_error) {
                    (Disposition::Replayed, _) => "replayed",
                    (Disposition::Unknown, _) => "unknown",
                    (Disposition::Ran, true) => "tool_error",
                    (Disposition::Ran, false) => "ok",
                }
                .to_owned();
                end.exit_code = *exit_code;
                if r.disposition == Disposition::Replayed {
                    end.detail = Some("answered from the execution record".into());
                }
                let (output, redactions) = self.audit_output(&r.content).await;
                end.output = Some(output);
                end.redactions = redactions;
            }
            Err(e) => {
                end.outcome = "error".into();
                end.detail = Some(e.to_string());
            }
        }
        // The call ran (or was answered): its result goes back even if this
        // line cannot be written; the log is then unhealthy.
        inner.audit.record(end);
        result.map(|(r, _)| r)
    }

    /// The tool input as the audit line keeps it: the bridge's scrub pass
    /// when `[bridge]` is set (the writer adds the token patterns). Nothing
    /// is scrubbed with `detail = "outcomes"`, which keeps no input.
    async fn audit_input(&self, input: &serde_json::Value) -> (serde_json::Value, Option<u32>) {
        if self.inner.audit.detail() == Detail::Outcomes {
            return (serde_json::Value::Null, None);
        }
        let bridge = self
            .inner
            .cfg
            .sandbox
            .bridge
            .as_ref()
            .map(super::bridge::BridgeClient::new);
        let s = super::bridge::scrub_for_audit(bridge.as_ref(), input).await;
        (s.value, (s.redactions > 0).then_some(s.redactions))
    }

    /// The `output` of an `end` line: the digest of the content as
    /// returned and, with the outputs store on, its scrubbed copy stored.
    async fn audit_output(&self, content: &[serde_json::Value]) -> (OutputDigest, Option<u32>) {
        let bytes = serde_json::to_vec(content).unwrap_or_default();
        let mut digest = OutputDigest::of(&bytes);
        let audit = &self.inner.audit;
        let Some(store) = audit.outputs().filter(|_| audit.detail() == Detail::Full) else {
            return (digest, None);
        };
        let (value, found) =
            crate::audit::Scrubber::global().scrubbed(serde_json::Value::from(content.to_vec()));
        let bridge = self
            .inner
            .cfg
            .sandbox
            .bridge
            .as_ref()
            .map(super::bridge::BridgeClient::new);
        let s = super::bridge::scrub_for_audit(bridge.as_ref(), &value).await;
        if !s.complete {
            return (digest, None);
        }
        let redactions = found.saturating_add(s.redactions);
        match serde_json::to_vec(&s.value)
            .map_err(crate::audit::AuditError::Encode)
            .and_then(|b| store.put(&b))
        {
            Ok(sha) => digest.stored = Some(sha),
            Err(error) => tracing::warn!(%error, "audit: output not stored"),
        }
        (digest, (redactions > 0).then_some(redactions))
    }

    async fn execute_inner(
        &self,
        req: &ExecuteRequest,
        stream: Option<mpsc::Sender<Bytes>>,
    ) -> Result<(ToolResult, Option<i32>), SandboxError> {
        let inner = &self.inner;
        let sandbox = {
            let reg = inner.lock();
            match reg.live.get(&req.sandbox_id) {
                Some(s) => Ok(s.clone()),
                None => Err(reg.tombstones.get(&req.sandbox_id).cloned()),
            }
        };
        match inner.record.begin(&req.tool_use_id, &req.sandbox_id)? {
            Begin::Run => {}
            Begin::Replay(r) | Begin::Unknown(r) => return Ok((r, None)),
            Begin::InFlight(mut rx) => loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return Ok((r, None));
                }
                if rx.changed().await.is_err() {
                    return Ok((
                        super::record::unknown_result(
                            &req.tool_use_id,
                            "the earlier attempt ended without a recorded result",
                        ),
                        None,
                    ));
                }
            },
        }
        let sandbox = match sandbox {
            Ok(s) => s,
            Err(Some(reason)) => {
                let r = ToolResult::text(
                    format!(
                        "sandbox {} is gone: {reason}. Provision a new sandbox.",
                        req.sandbox_id
                    ),
                    true,
                );
                inner.record.finish(&req.tool_use_id, &r)?;
                return Ok((r, None));
            }
            Err(None) => {
                inner.record.abandon(&req.tool_use_id);
                return Err(SandboxError::UnknownSandbox {
                    sandbox_id: req.sandbox_id.clone(),
                });
            }
        };
        sandbox.in_flight.fetch_add(1, Ordering::SeqCst);
        let running = inner.tool_calls.begin(&sandbox.id, &req.tool_use_id);
        sandbox.touch();
        let deadline = tool_deadline(&inner.cfg.sandbox, &req.name, &req.input);
        let outcome = sandbox
            .client
            .call(&req.name, &req.input, stream, deadline)
            .await;
        sandbox.touch();
        drop(running);
        sandbox.in_flight.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(r) => {
                let result = ToolResult {
                    content: r.content,
                    is_error: r.is_error,
                    disposition: Disposition::Ran,
                };
                inner.record.finish(&req.tool_use_id, &result)?;
                Ok((result, r.exit_code))
            }
            Err(e) => {
                let reason = match &e {
                    CallError::Gone => {
                        let info = dk::inspect(&inner.docker, &sandbox.container_id)
                            .await
                            .ok()
                            .flatten();
                        dk::death_reason(info.as_ref())
                    }
                    CallError::TimedOut(d) => {
                        format!("the sandbox did not answer within {} s", d.as_secs())
                    }
                    CallError::Protocol(m) => format!("the sandbox executor misbehaved ({m})"),
                };
                tracing::warn!(sandbox_id = %sandbox.id, reason = %reason, "sandbox lost during a tool call");
                inner.record.finish_unknown(&req.tool_use_id, &reason)?;
                self.retire(&sandbox, &reason).await;
                // Unknown, as the execution record says: the command may
                // have run partly or wholly before the sandbox died (the
                // audit line and the control plane see the same).
                let mut result = ToolResult::text(
                    format!(
                        "the tool call failed because the sandbox died: {reason}. Its effects are unknown; \
                         the sandbox {} has been removed, provision a new one.",
                        sandbox.id
                    ),
                    true,
                );
                result.disposition = Disposition::Unknown;
                Ok((result, None))
            }
        }
    }

    /// Remove a sandbox from service and from Docker, leaving a tombstone.
    async fn retire(&self, sandbox: &Sandbox, reason: &str) {
        retire(&self.inner, sandbox, reason).await;
    }

    /// `destroy`: remove a sandbox. Destroying one that already died is not an error.
    pub async fn destroy(&self, req: DestroyRequest) -> Result<(), SandboxError> {
        let started = Instant::now();
        let inner = &self.inner;
        let (sandbox, tomb) = {
            let mut reg = inner.lock();
            (
                reg.live.remove(&req.sandbox_id),
                reg.tombstones.contains_key(&req.sandbox_id),
            )
        };
        let result = match sandbox {
            Some(s) => {
                let r = dk::remove(&inner.docker, &s.container_id).await;
                remove_assignment(&inner.assignments_dir, &s.id);
                close_egress(inner, &s.id).await;
                inner
                    .lock()
                    .tombstones
                    .insert(s.id.clone(), "it was destroyed".into());
                r
            }
            None if tomb => Ok(()),
            None => Err(SandboxError::UnknownSandbox {
                sandbox_id: req.sandbox_id.clone(),
            }),
        };
        inner.audit.record(AuditEvent {
            call: "destroy".into(),
            sandbox_id: Some(req.sandbox_id.clone()),
            outcome: if result.is_ok() { "ok" } else { "error" }.into(),
            duration_ms: millis(started.elapsed()),
            ..Default::default()
        });
        result
    }

    /// `list_sandboxes`: the handed-out sandboxes (warm ones are not listed).
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        let fmt = |s: u64| {
            time::OffsetDateTime::from_unix_timestamp(s as i64)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        };
        let live: Vec<Arc<Sandbox>> = self.inner.lock().live.values().cloned().collect();
        let mut out: Vec<SandboxInfo> = live
            .iter()
            .map(|s| SandboxInfo {
                sandbox_id: s.id.clone(),
                session_id: s.session_id.clone(),
                image: s.image.clone(),
                state: if s.client.is_gone() {
                    "dead"
                } else {
                    "running"
                }
                .into(),
                created_at: fmt(s.created_at),
                expires_at: s.expires_at.map(fmt),
            })
            .collect();
        out.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
        self.inner.audit.record(AuditEvent {
            call: "list_sandboxes".into(),
            outcome: "ok".into(),
            ..Default::default()
        });
        Ok(out)
    }

    /// Close every sandbox's egress on the bridge (the agent was revoked:
    /// its sandboxes must lose their way out at once). The containers stay
    /// until the next start adopts or removes them.
    pub async fn close_all_egress(&self) {
        for sandbox_id in self.inner.egress.sandbox_ids() {
            close_egress(&self.inner, &sandbox_id).await;
        }
    }

    /// Stop background tasks and remove the warm pool; handed-out sandboxes
    /// stay (a restarted agent adopts them). With `destroy_all`, remove them too.
    pub async fn shutdown(&self, destroy_all: bool) {
        let inner = &self.inner;
        inner.cancel.cancel();
        for w in inner.pool.drain() {
            let _ = dk::remove(&inner.docker, &w.container_id).await;
            remove_egress_dir(&inner.cfg.sandbox, &w.sandbox_id);
        }
        if destroy_all {
            let live: Vec<Arc<Sandbox>> = inner.lock().live.drain().map(|(_, s)| s).collect();
            for s in live {
                let _ = dk::remove(&inner.docker, &s.container_id).await;
                remove_assignment(&inner.assignments_dir, &s.id);
                close_egress(inner, &s.id).await;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Every registry update is a single map operation; a poisoned lock still holds a consistent map.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn retire(inner: &Inner, sandbox: &Sandbox, reason: &str) {
    {
        let mut reg = inner.lock();
        reg.live.remove(&sandbox.id);
        if reg.tombstones.len() > 10_000 {
            reg.tombstones.clear();
        }
        reg.tombstones.insert(sandbox.id.clone(), reason.to_owned());
    }
    if let Err(error) = dk::remove(&inner.docker, &sandbox.container_id).await {
        tracing::warn!(sandbox_id = %sandbox.id, %error, "could not remove container");
    }
    remove_assignment(&inner.assignments_dir, &sandbox.id);
    close_egress(inner, &sandbox.id).await;
}

/// A repository that did not clone because its host is outside the agent's
/// `policy.egress_hosts` (the bridge refused the CONNECT; git only says
/// "CONNECT tunnel failed, response 403"): the resource error says so, with
/// git's own words after it.
fn explain_egress_refusal(
    policy: &super::config::Policy,
    mut e: protocol::sandbox::ResourceError,
) -> protocol::sandbox::ResourceError {
    let Ok(url) = url::Url::parse(&e.repository_url) else {
        return e;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return e;
    };
    if policy.egress_allows(host, port) {
        return e;
    }
    e.error_type = "repository_forbidden_error".into();
    e.message = format!(
        "refused by the agent's egress policy (policy.egress_hosts): host {host} port {port} is not in it, so the vault-bridge refused the connection; git said: {}",
        e.message
    );
    e
}

/// What a provision request says about the sandbox's way out.
#[derive(Debug, Default)]
struct EgressInput {
    repositories: Vec<protocol::bridge::EgressRepository>,
    credentials: Vec<protocol::relay::EgressCredential>,
    allowed_hosts: Vec<String>,
}

/// With `[bridge]`: ask the bridge to listen for this sandbox, as its
/// session, with the session's repositories, credentials and allowed hosts
/// and the agent's `policy.egress_hosts` (which the bridge enforces);
/// answers the credentials' placeholders for the tool environment. The
/// request is kept so that a restarted bridge gets it again. A sandbox with
/// no session gets no listener (its proxy reaches nothing). Fails closed: a
/// bridge that is down or refuses fails provision.
async fn open_egress(
    inner: &Inner,
    sandbox_id: &str,
    spec: &SandboxSpec,
    egress: EgressInput,
) -> Result<std::collections::BTreeMap<String, String>, SandboxError> {
    let (Some(bridge), Some(session_id)) = (&inner.cfg.sandbox.bridge, &spec.session_id) else {
        return Ok(Default::default());
    };
    let bridge_err = |source| SandboxError::Bridge {
        sandbox_id: sandbox_id.to_owned(),
        source,
    };
    let request = super::bridge::BridgeClient::open_egress_request(
        sandbox_id,
        session_id,
        egress.allowed_hosts,
        egress.repositories,
        egress.credentials,
        inner.cfg.policy.egress_hosts_wire(),
    )
    .map_err(bridge_err)?;
    let (socket, placeholders) = super::bridge::BridgeClient::new(bridge)
        .open_egress(&request)
        .await
        .map_err(bridge_err)?;
    inner
        .egress
        .insert(sandbox_id, request, PathBuf::from(socket));
    Ok(placeholders)
}

/// With `[bridge]`: stop the sandbox's egress listener (best effort, logged)
/// and remove its directory.
async fn close_egress(inner: &Inner, sandbox_id: &str) {
    let Some(bridge) = &inner.cfg.sandbox.bridge else {
        return;
    };
    inner.egress.remove(sandbox_id);
    if let Err(error) = super::bridge::BridgeClient::new(bridge)
        .close_egress(sandbox_id)
        .await
    {
        tracing::warn!(%sandbox_id, %error, "could not close the sandbox's egress listener");
    }
    remove_egress_dir(&inner.cfg.sandbox, sandbox_id);
}

/// With `[bridge]`: create `<egress_dir>/<sandbox_id>` (0711), the source of
/// the container's `/run/airlock` mount, before the container exists.
fn prepare_egress_dir(settings: &SandboxSettings, sandbox_id: &str) -> Result<(), SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(bridge) = &settings.bridge else {
        return Ok(());
    };
    let dir = bridge.egress_dir.join(sandbox_id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .map_err(io_err(&dir))?;
    // The umask may have narrowed the mode; the bridge's uid must traverse it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(io_err(&dir))
}

/// With `[bridge]`: remove a sandbox's egress directory (best effort).
fn remove_egress_dir(settings: &SandboxSettings, sandbox_id: &str) {
    if let Some(bridge) = &settings.bridge {
        let dir = bridge.egress_dir.join(sandbox_id);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), %error, "could not remove egress dir");
            }
        }
    }
}

/// How long the agent waits for a tool call: the tool's own timeout plus grace.
fn tool_deadline(settings: &SandboxSettings, name: &str, input: &serde_json::Value) -> Duration {
    let ex = &settings.executor;
    let tool_ms = if name == "bash" {
        match input.get("timeout_ms").and_then(|v| v.as_u64()) {
            Some(0) | None => ex.bash_default_timeout_ms,
            Some(ms) => ms.min(ex.bash_max_timeout_ms),
        }
    } else {
        60_000
    };
    Duration::from_millis(tool_ms + ex.kill_grace_ms) + settings.call_grace
}

/// Create, attach, start a container and wait for its executor's `Ready`.
async fn create_sandbox(
    inner: &Inner,
    spec: &SandboxSpec,
    pool: bool,
) -> Result<Warm, SandboxError> {
    let sandbox_id = new_sandbox_id();
    prepare_egress_dir(&inner.cfg.sandbox, &sandbox_id)?;
    let body = dk::container_body(
        &inner.cfg.sandbox,
        spec,
        &ContainerParams {
            sandbox_id: &sandbox_id,
            agent_id: &inner.cfg.agent_id,
            pool,
            runtime: inner.runtime.as_deref(),
        },
    );
    let container_id = match dk::create(&inner.docker, &dk::container_name(&sandbox_id), body).await
    {
        Ok(id) => id,
        Err(e) => {
            remove_egress_dir(&inner.cfg.sandbox, &sandbox_id);
            return Err(e);
        }
    };
    let started = async {
        let attach = dk::attach(&inner.docker, &container_id).await?;
        let client = ExecutorClient::new(
            attach,
            inner.cfg.sandbox.executor.max_frame_bytes as usize,
            &sandbox_id,
        );
        let ready = client.ready_waiter();
        dk::start(&inner.docker, &container_id).await?;
        let timeout = inner.cfg.sandbox.executor_ready_timeout;
        let fail = |message: String| SandboxError::ExecutorStart {
            sandbox_id: sandbox_id.clone(),
            message,
        };
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => Err(fail(e.to_string())),
            Ok(Err(_)) => Err(fail("executor connection dropped".into())),
            Err(_) => Err(fail(format!("no Ready within {} s", timeout.as_secs()))),
        }
    }
    .await;
    match started {
        Ok(client) => Ok(Warm {
            sandbox_id,
            container_id,
            created_at: unix_now(),
            client,
        }),
        Err(e) => {
            let info = dk::inspect(&inner.docker, &container_id)
                .await
                .ok()
                .flatten();
            let e = match e {
                SandboxError::ExecutorStart {
                    sandbox_id,
                    message,
                } => SandboxError::ExecutorStart {
                    sandbox_id,
                    message: format!("{message} ({})", dk::death_reason(info.as_ref())),
                },
                e => e,
            };
            let _ = dk::remove(&inner.docker, &container_id).await;
            remove_egress_dir(&inner.cfg.sandbox, &sandbox_id);
            Err(e)
        }
    }
}

/// The request checks of `execute` that come before anything is recorded:
/// a usable `tool_use_id`, a known tool, and the policy's tool list.
fn check_execute(inner: &Inner, req: &ExecuteRequest) -> Result<(), SandboxError> {
    if req.tool_use_id.is_empty() || req.tool_use_id.len() > 256 {
        return Err(RequestRefused::BadRequest {
            field: "tool_use_id",
            message: "must be 1 to 256 characters".into(),
        }
        .into());
    }
    if !TOOL_NAMES.contains(&req.name.as_str()) {
        return Err(RequestRefused::BadRequest {
            field: "name",
            message: format!(
                "unknown tool `{}` (known: {})",
                req.name,
                TOOL_NAMES.join(", ")
            ),
        }
        .into());
    }
    inner.cfg.policy.check_tool(&req.name)?;
    Ok(())
}

/// What a provision line keeps of the request: the sandbox's shape and the
/// ids it names (never env values, credential secrets or resource tokens;
/// the writer's token patterns run over it too).
fn provision_input(req: &ProvisionRequest) -> serde_json::Value {
    let mut v = serde_json::to_value(req).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        if let Some(env) = map.get_mut("env").and_then(|e| e.as_object_mut()) {
            for value in env.values_mut() {
                *value = serde_json::Value::String("[redacted:env]".into());
            }
        }
        // A resource may carry a token: keep only what names it.
        if let Some(resources) = map.get_mut("resources").and_then(|r| r.as_array_mut()) {
            for r in resources.iter_mut() {
                let kept: serde_json::Map<String, serde_json::Value> = r
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| {
                                matches!(k.as_str(), "type" | "id" | "url" | "mount_path")
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                *r = serde_json::Value::Object(kept);
            }
        }
    }
    v
}

fn assignment_path(dir: &Path, sandbox_id: &str) -> Option<PathBuf> {
    let safe = !sandbox_id.is_empty()
        && sandbox_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    safe.then(|| dir.join(format!("{sandbox_id}.json")))
}

fn read_assignment(dir: &Path, sandbox_id: &str) -> Option<Assignment> {
    let path = assignment_path(dir, sandbox_id)?;
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_assignment(dir: &Path, a: &Assignment) -> Result<(), SandboxError> {
    let path = assignment_path(dir, &a.sandbox_id)
        .ok_or_else(|| SandboxError::Internal(format!("bad sandbox id {}", a.sandbox_id)))?;
    let bytes = serde_json::to_vec(a).map_err(|e| SandboxError::Internal(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

fn remove_assignment(dir: &Path, sandbox_id: &str) {
    if let Some(p) = assignment_path(dir, sandbox_id) {
        let _ = std::fs::remove_file(p);
    }
}

/// Reap expired, idle and dead sandboxes every `reap_interval`.
async fn reaper(inner: Arc<Inner>) {
    let interval = inner.cfg.sandbox.reap_interval;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = unix_now();
        let live: Vec<Arc<Sandbox>> = inner.lock().live.values().cloned().collect();
        for s in live {
            let busy = s.in_flight.load(Ordering::SeqCst) > 0;
            let reason = if s.client.is_gone() && !busy {
                let info = dk::inspect(&inner.docker, &s.container_id)
                    .await
                    .ok()
                    .flatten();
                Some(dk::death_reason(info.as_ref()))
            } else if s.expires_at.is_some_and(|e| e <= now) {
                Some("its time to live expired".to_owned())
            } else if !busy
                && inner
                    .cfg
                    .sandbox
                    .idle_timeout
                    .is_some_and(|t| s.idle_for() >= t)
            {
                Some("it was idle too long".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                tracing::info!(sandbox_id = %s.id, reason = %reason, "reaping sandbox");
                retire(&inner, &s, &reason).await;
                inner.audit.record(AuditEvent {
                    call: "reap".into(),
                    sandbox_id: Some(s.id.clone()),
                    session_id: s.session_id.clone(),
                    outcome: "ok".into(),
                    detail: Some(reason),
                    ..Default::default()
                });
            }
        }
        for w in inner.pool.prune(|c| !c.is_gone()) {
            let _ = dk::remove(&inner.docker, &w.container_id).await;
            remove_egress_dir(&inner.cfg.sandbox, &w.sandbox_id);
        }
    }
}

/// Keep the warm pool full.
async fn refiller(inner: Arc<Inner>) {
    loop {
        let mut tasks = Vec::new();
        for spec in &inner.pool_profiles {
            let profile = spec.profile();
            let n = inner
                .pool
                .reserve(&profile, inner.cfg.pool.refill_concurrency);
            for _ in 0..n {
                let inner = inner.clone();
                let spec = spec.clone();
                let profile = profile.clone();
                tasks.push(tokio::spawn(async move {
                    let created = create_sandbox(&inner, &spec, true).await;
                    let ok = created.is_ok();
                    match created {
                        Ok(w) if inner.cancel.is_cancelled() => {
                            let _ = dk::remove(&inner.docker, &w.container_id).await;
                            inner.pool.created(&profile, None);
                        }
                        Ok(w) => inner.pool.created(&profile, Some(w)),
                        Err(error) => {
                            tracing::warn!(%error, image = %spec.image, "warm pool: could not create a sandbox");
                            inner.pool.created(&profile, None);
                        }
                    }
                    ok
                }));
            }
        }
        let mut failed = false;
        let any = !tasks.is_empty();
        for t in tasks {
            failed |= !t.await.unwrap_or(false);
        }
        if inner.cancel.is_cancelled() {
            return;
        }
        if any && !failed {
            continue; // keep filling until the target is reached
        }
        let backoff = if failed {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(30)
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.refill.notified() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_clone_refused_by_the_egress_policy_says_so() {
        let policy = |toml: &str| {
            crate::config::Config::parse(toml, std::path::Path::new("agent.toml"))
                .unwrap()
                .policy
        };
        let git_said = "fatal: unable to access 'https://127.0.0.1:9443/app.git/': CONNECT tunnel failed, response 403";
        let err = |url: &str| protocol::sandbox::ResourceError {
            error_type: "repository_forbidden_error".into(),
            repository_url: url.into(),
            message: git_said.into(),
        };
        let p = policy("[policy]\negress_hosts = [\"localhost\"]\n");
        let e = explain_egress_refusal(&p, err("https://127.0.0.1:9443/app.git"));
        assert_eq!(e.error_type, "repository_forbidden_error");
        assert!(
            e.message.starts_with(
                "refused by the agent's egress policy (policy.egress_hosts): host 127.0.0.1 port 9443 is not in it"
            ) && e.message.ends_with(git_said),
            "{}",
            e.message
        );
        // A host the policy allows (or no policy): git's message unchanged.
        let e = explain_egress_refusal(&p, err("https://localhost:9443/app.git"));
        assert_eq!(e.message, git_said);
        let e = explain_egress_refusal(&policy(""), err("https://127.0.0.1:9443/app.git"));
        assert_eq!(e.message, git_said);
    }
}
