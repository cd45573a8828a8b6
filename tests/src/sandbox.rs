//! Support for the sandbox tests and `bench-sandbox`: locate the static
//! executor and the test image (built by `scripts/setup.d/30-images.sh`),
//! build a [`SandboxService`] on a temporary data dir with a unique agent id,
//! and remove every container labelled with that id when the guard drops,
//! even if the test failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::sandbox::{ExecuteRequest, ProvisionRequest, ToolResult};
use sandbox_agent::sandbox::config::{
    Policy, PoolSettings, RawPolicy, RawPool, RawSandbox, SandboxSettings,
};
use sandbox_agent::sandbox::service::{ReconcileReport, ServiceConfig};
use sandbox_agent::sandbox::SandboxService;

/// Workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The static executor binary. Panics with the fix if it is missing.
pub fn executor_path() -> PathBuf {
    let p = std::env::var_os("AIRLOCK_EXECUTOR_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/x86_64-unknown-linux-gnu/debug/airlock-executor")
        });
    assert!(
        p.is_file(),
        "static executor not found at {} — run `source scripts/setup.d/30-images.sh` (or scripts/test-all)",
        p.display()
    );
    p
}

/// An enrolled agent's config text with its `[sandbox]` pointed at the real
/// executor and `image` (small limits for the test image) and a `[policy]`
/// allowing that image; the caller appends more sections and writes it back.
pub fn sandbox_ready_agent_config(config: &str, image: &str) -> String {
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with("executor_path") {
            out.push_str(&format!(
                "executor_path = \"{}\"\ndefault_image = \"{image}\"\ndefault_memory_bytes = 268435456\ndefault_disk_bytes = 67108864\ndefault_pids = 128\ntmp_bytes = 33554432\n",
                executor_path().display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n[policy]\nallowed_images = [\"{image}\"]\nmax_memory_bytes = 536870912\n"
    ));
    out
}

/// The test image reference. Panics with the fix if Docker does not have it.
pub fn test_image() -> String {
    let image = std::env::var("AIRLOCK_TEST_IMAGE")
        .unwrap_or_else(|_| "airlock-test-sandbox:latest".into());
    let ok = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "test image {image} not found — run `source scripts/setup.d/30-images.sh` (or scripts/test-all)"
    );
    image
}

/// The default sandbox image (git, curl; `AIRLOCK_SANDBOX_IMAGE`, built by
/// scripts/setup.d/30-images.sh), for tests whose sandbox runs git or curl.
pub fn default_image() -> String {
    std::env::var("AIRLOCK_SANDBOX_IMAGE").unwrap_or_else(|_| "airlock-sandbox:latest".into())
}

impl TestAgent {
    /// This agent's config running the default image (git, curl), its
    /// egress through `bridge`.
    pub fn with_bridge(
        &mut self,
        bridge: sandbox_agent::sandbox::config::BridgeSettings,
    ) -> ServiceConfig {
        let image = default_image();
        self.sandbox.default_image = Some(image.clone());
        self.policy.allowed_images = Some(vec![image]);
        let mut cfg = self.config();
        cfg.sandbox.bridge = Some(bridge);
        cfg
    }
}

/// Remove every container owned by `agent_id` (blocking; used by guards).
pub fn remove_agent_containers(agent_id: &str) {
    let ids = agent_containers(agent_id);
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
}

/// Containers (ids) owned by `agent_id`, running or not.
pub fn agent_containers(agent_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=airlock.agent_id={agent_id}"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.split_whitespace().map(str::to_owned).collect()
}

/// A test agent identity and data dir; drop removes its containers.
#[derive(Debug)]
pub struct TestAgent {
    /// Unique agent id (the ownership label).
    pub agent_id: String,
    /// Data dir (record, audit, assignments).
    pub data_dir: PathBuf,
    /// Owns the data dir when this agent created it.
    _tmp: Option<tempfile::TempDir>,
    /// Whether dropping removes the agent's containers.
    pub cleanup_on_drop: bool,
    /// `[sandbox]` as raw TOML-equivalent values, editable before `start`.
    pub sandbox: RawSandbox,
    /// `[policy]`.
    pub policy: RawPolicy,
    /// `[pool]`.
    pub pool: RawPool,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if self.cleanup_on_drop {
            remove_agent_containers(&self.agent_id);
        }
    }
}

impl Default for TestAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl TestAgent {
    /// A fresh agent using the test image and the static executor.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut agent = Self::with_identity(
            &format!("test-{}", uuid::Uuid::new_v4().simple()),
            tmp.path(),
        );
        agent._tmp = Some(tmp);
        agent
    }

    /// An agent with a given id and data dir (e.g. a restarted agent, or a
    /// child process); it does not own the data dir.
    pub fn with_identity(agent_id: &str, data_dir: &Path) -> Self {
        let image = test_image();
        Self {
            agent_id: agent_id.to_owned(),
            data_dir: data_dir.to_owned(),
            _tmp: None,
            cleanup_on_drop: true,
            sandbox: RawSandbox {
                executor_path: Some(executor_path()),
                default_image: Some(image.clone()),
                default_memory_bytes: Some(256 * 1024 * 1024),
                default_disk_bytes: Some(64 * 1024 * 1024),
                default_pids: Some(128),
                tmp_bytes: Some(32 * 1024 * 1024),
                reap_interval_seconds: Some(1),
                ..Default::default()
            },
            policy: RawPolicy {
                allowed_images: Some(vec![image]),
                ..Default::default()
            },
            pool: RawPool::default(),
        }
    }

    /// The service config these settings describe.
    pub fn config(&self) -> ServiceConfig {
        let sandbox = SandboxSettings::from_raw(self.sandbox.clone())
            .unwrap_or_else(|e| panic!("[sandbox]: {e}"));
        let policy = Policy::from_raw(self.policy.clone(), &sandbox.default_image)
            .unwrap_or_else(|e| panic!("[policy]: {e}"));
        let pool = PoolSettings::from_raw(self.pool.clone(), &sandbox.default_image)
            .unwrap_or_else(|e| panic!("[pool]: {e}"));
        ServiceConfig {
            agent_id: self.agent_id.clone(),
            data_dir: self.data_dir.clone(),
            sandbox,
            policy,
            pool,
        }
    }

    /// Start a service for this agent.
    pub async fn start(&self) -> (SandboxService, ReconcileReport) {
        SandboxService::start(self.config())
            .await
            .unwrap_or_else(|e| panic!("sandbox service did not start: {e}"))
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A unique tool_use id.
pub fn tool_use_id() -> String {
    format!(
        "toolu_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Provision with defaults; panics on RPC error.
pub async fn provision(svc: &SandboxService) -> String {
    svc.provision(ProvisionRequest::default())
        .await
        .unwrap_or_else(|e| panic!("provision failed: {e}"))
        .sandbox_id
}

/// Execute a tool with a fresh tool_use_id; panics on RPC error.
pub async fn exec(
    svc: &SandboxService,
    sandbox_id: &str,
    name: &str,
    input: serde_json::Value,
) -> ToolResult {
    exec_id(svc, sandbox_id, &tool_use_id(), name, input).await
}

/// Execute a tool with the given tool_use_id; panics on RPC error.
pub async fn exec_id(
    svc: &SandboxService,
    sandbox_id: &str,
    id: &str,
    name: &str,
    input: serde_json::Value,
) -> ToolResult {
    svc.execute(
        ExecuteRequest {
            sandbox_id: sandbox_id.to_owned(),
            tool_use_id: id.to_owned(),
            name: name.to_owned(),
            input,
            stream: false,
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("execute {name} failed as an RPC: {e}"))
}

/// The concatenated text blocks of a result.
pub fn text(r: &ToolResult) -> String {
    r.content
        .iter()
        .filter_map(|b| b.get("text").and_then(|t| t.as_str()))
        .collect::<Vec<_>>()
        .join("")
}

/// `docker inspect` of a sandbox's container, as JSON.
pub fn docker_inspect(sandbox_id: &str) -> serde_json::Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", &format!("airlock-{sandbox_id}")])
        .output()
        .unwrap_or_else(|e| panic!("docker inspect: {e}"));
    assert!(
        out.status.success(),
        "docker inspect airlock-{sandbox_id} failed"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("inspect json: {e}"));
    v[0].clone()
}

/// Command lines of the processes running in a sandbox's container, read
/// from the host (`docker top`, so nothing has to fork inside the
/// container); empty when the container is not running.
pub fn container_processes(sandbox_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["top", &format!("airlock-{sandbox_id}"), "-o", "pid,args"])
        .output()
        .unwrap_or_else(|e| panic!("docker top: {e}"));
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // the PID / COMMAND header
        .filter_map(|l| l.trim_start().split_once(char::is_whitespace))
        .map(|(_pid, args)| args.trim().to_owned())
        .collect()
}

/// One provisioned sandbox of a test service, for short tool calls: each
/// call gets a fresh tool_use_id and panics on an RPC error (see [`exec`]).
#[derive(Debug, Clone, Copy)]
pub struct Tools<'a> {
    /// The service.
    pub svc: &'a SandboxService,
    /// The sandbox the calls run in.
    pub sandbox_id: &'a str,
}

impl<'a> Tools<'a> {
    /// Calls into `sandbox_id` of `svc`.
    pub fn new(svc: &'a SandboxService, sandbox_id: &'a str) -> Self {
        Self { svc, sandbox_id }
    }

    /// Run tool `name` with `input`.
    pub async fn run(&self, name: &str, input: serde_json::Value) -> ToolResult {
        exec(self.svc, self.sandbox_id, name, input).await
    }

    /// Run tool `name` with `input`; its text (error or not).
    pub async fn text(&self, name: &str, input: serde_json::Value) -> String {
        text(&self.run(name, input).await)
    }

    /// Run `command` with the bash tool; its text, trimmed (whether or not
    /// it is an error).
    pub async fn sh(&self, command: &str) -> String {
        let out = self
            .text("bash", serde_json::json!({ "command": command }))
            .await;
        out.trim().to_owned()
    }

    /// Run tool `name` with `input` and check that its text is `want`
    /// (whether or not it is an error, as [`Tools::text`]).
    pub async fn text_is(&self, name: &str, input: serde_json::Value, want: &str) {
        let shown = input.to_string();
        assert_eq!(self.text(name, input).await, want, "{name} {shown}");
    }

    /// Run tool `name` with `input` and check that it succeeds; its text.
    pub async fn ok(&self, name: &str, input: serde_json::Value) -> String {
        let shown = input.to_string();
        let r = self.run(name, input).await;
        let t = text(&r);
        assert!(!r.is_error, "{name} {shown} failed: {t}");
        t
    }

    /// Run tool `name` with `input` and check that it is a tool error whose
    /// text contains `needle`; its text.
    pub async fn fails_with(&self, name: &str, input: serde_json::Value, needle: &str) -> String {
        let shown = input.to_string();
        let r = self.run(name, input).await;
        let t = text(&r);
        assert!(
            r.is_error && t.contains(needle),
            "{name} {shown}: want a tool error containing {needle:?}, got is_error={}: {t}",
            r.is_error
        );
        t
    }
}
