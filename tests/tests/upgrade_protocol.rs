//! Both sides of the protocol bump from version 1 to 2, built for real: the
//! `control-plane` and `sandbox-agent` of the last version-1 commit (built by
//! scripts/setup.d/75-compat.sh into `AIRLOCK_COMPAT_V1_BIN_DIR`) against the
//! current build, each way round. A session runs a tool call in a real
//! Docker sandbox (write then read a file through the API, the scripted fake
//! model asking for the tools) and both sides log the negotiated version 1.
//! An agent two versions ahead (range 3..=4, the tunnel's `version_range`
//! override) is refused with a message naming both ranges and stops dialing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_tests::deploy::{bin_dir, tail, Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use e2e_support::{
    check_tool_pairs, content_text, results_by_use, runtime_toml, Deployment, SandboxAgent,
};
use protocol::{ErrorCode, Request, Response};
use serde_json::json;

/// The commit the compat binaries were built from (scripts/setup.d/75-compat.sh).
const V1_COMMIT: &str = "1997c74";

/// `AIRLOCK_BIN_DIR` is process-wide: the tests that set it run one at a time.
static BIN_DIR: Mutex<()> = Mutex::new(());
/// `AIRLOCK_BIN_DIR` as the test process got it (the current binaries).
static ORIGINAL_BIN_DIR: std::sync::OnceLock<Option<std::ffi::OsString>> =
    std::sync::OnceLock::new();

/// Take the lock and put `AIRLOCK_BIN_DIR` back as the process got it.
fn bin_dir_lock() -> std::sync::MutexGuard<'static, ()> {
    let guard = BIN_DIR.lock().unwrap_or_else(|p| p.into_inner());
    match ORIGINAL_BIN_DIR.get_or_init(|| std::env::var_os("AIRLOCK_BIN_DIR")) {
        Some(d) => std::env::set_var("AIRLOCK_BIN_DIR", d),
        None => std::env::remove_var("AIRLOCK_BIN_DIR"),
    }
    guard
}

/// The version-1 binaries, or `None` (skip) when they were not built and CI is not set.
fn v1_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AIRLOCK_COMPAT_V1_BIN_DIR").map(PathBuf::from);
    match dir {
        Some(d) if d.join("control-plane").is_file() && d.join("sandbox-agent").is_file() => {
            Some(d)
        }
        other => {
            let msg = format!(
                "the protocol-v1 binaries (commit {V1_COMMIT}) are not built ({other:?}): \
                 run `source scripts/setup.d/75-compat.sh` (scripts/test-all does)"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// A directory whose `control-plane` and `sandbox-agent` are the given files.
fn mixed_bin_dir(control_plane: PathBuf, sandbox_agent: PathBuf) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("airlock-mixed-bin-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::symlink(control_plane, d.path().join("control-plane")).unwrap();
    std::os::unix::fs::symlink(sandbox_agent, d.path().join("sandbox-agent")).unwrap();
    d
}

const CONTENT: &str = "written across a protocol version boundary\n";

fn script(req: &RequestCtx) -> Reply {
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .tool_use(
                "toolu_w",
                "write",
                json!({"file_path": "upgrade.txt", "content": CONTENT}),
            )
            .into(),
        1 => Turn::new()
            .tool_use("toolu_r", "read", json!({"file_path": "upgrade.txt"}))
            .into(),
        _ => Reply::text("done"),
    }
}

/// A deployment of `control_plane` + `sandbox_agent` runs a write+read
/// session; returns (control plane log, agent log).
async fn session_with(control_plane: PathBuf, sandbox_agent: PathBuf) -> (String, String) {
    let mixed = mixed_bin_dir(control_plane, sandbox_agent);
    std::env::set_var("AIRLOCK_BIN_DIR", mixed.path());
    let model = FakeModel::builder().start(script).await.unwrap();
    let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
        .await
        .unwrap();
    let agent = SandboxAgent::start(&d.cp, &d.environment_id).unwrap();
    let api = &d.api;
    let agent_id = api.create_agent("upgrade").await.unwrap();
    let session_id = api
        .create_session(&agent_id, &d.environment_id)
        .await
        .unwrap();
    api.user_message(&session_id, "Write upgrade.txt and read it back.")
        .await
        .unwrap();
    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\ncontrol plane log:\n{}\nagent log:\n{}",
                tail(&d.cp.log(), 60),
                tail(&agent.agent.log(), 40)
            )
        });
    let uses = check_tool_pairs(&events);
    let results = results_by_use(&events);
    let read = &results[uses[1]["id"].as_str().unwrap()];
    assert_eq!(read["is_error"], false, "{read}");
    assert!(content_text(read).contains(CONTENT.trim()), "{read}");
    (d.cp.log(), agent.agent.log())
}

/// The line of `log` containing `message`.
fn line<'a>(log: &'a str, message: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} in:\n{}", tail(log, 40)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // serializes the tests sharing AIRLOCK_BIN_DIR; each runs on its own runtime and thread
async fn current_control_plane_runs_a_session_with_a_v1_agent() {
    let Some(v1) = v1_dir() else { return };
    let _guard = bin_dir_lock();
    let (cp_log, agent_log) =
        session_with(bin_dir().join("control-plane"), v1.join("sandbox-agent")).await;
    let connected = line(&cp_log, "agent connected");
    assert!(connected.contains("version=1"), "{connected}");
    let up = line(&agent_log, "connected to control plane");
    assert!(up.contains("version=1"), "{up}");
    // A version-1 answer has no server time: no skew is reported.
    assert!(!up.contains("clock_skew_ms"), "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // serializes the tests sharing AIRLOCK_BIN_DIR; each runs on its own runtime and thread
async fn v1_control_plane_runs_a_session_with_the_current_agent() {
    let Some(v1) = v1_dir() else { return };
    let _guard = bin_dir_lock();
    let (cp_log, agent_log) =
        session_with(v1.join("control-plane"), bin_dir().join("sandbox-agent")).await;
    let connected = line(&cp_log, "agent connected");
    assert!(connected.contains("version=1"), "{connected}");
    let up = line(&agent_log, "connected to control plane");
    assert!(up.contains("version=1"), "{up}");
    assert!(!up.contains("clock_skew_ms"), "{up}");
}

/// Accepts no calls (the refused agent never gets one).
#[derive(Debug)]
struct NoCalls;

#[async_trait::async_trait]
impl tunnel::CallHandler for NoCalls {
    async fn handle(&self, request: Request, _io: &mut tunnel::CallIo) -> Response {
        Response::error(ErrorCode::UnsupportedCall, format!("no {}", request.name()))
    }
}

#[test]
fn an_agent_two_versions_ahead_is_refused_with_both_ranges_and_stops() {
    let _guard = bin_dir_lock();
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-upgrade").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let config = sandbox_agent::config::Config::load(agent.config_path()).unwrap();
    let identity = sandbox_agent::identity::AgentIdentity::load(&config).unwrap();
    let tls = Arc::new(identity.client_config(&[tunnel::ALPN]).unwrap());
    let mut settings = sandbox_agent::connect::client_settings(&config, &identity);
    let ours = protocol::hello::PROTOCOL_VERSION_MAX;
    settings.version_range = (ours + 1, ours + 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let error = rt.block_on(async {
        let client = tunnel::client::spawn(settings, tls, Arc::new(NoCalls));
        let error = tokio::time::timeout(Duration::from_secs(30), client.incompatible())
            .await
            .unwrap_or_else(|_| panic!("not refused as incompatible\n{}", tail(&cp.log(), 30)));
        // Final: the client stopped dialing.
        assert_eq!(
            *client.status().borrow(),
            tunnel::ClientStatus::Incompatible {
                error: error.clone()
            }
        );
        client.shutdown(Duration::from_secs(1)).await;
        error
    });
    assert!(error.contains("unsupported_version"), "{error}");
    let ranges = format!(
        "agent speaks {}..={}, control plane speaks {}..={}",
        ours + 1,
        ours + 2,
        protocol::hello::PROTOCOL_VERSION_MIN,
        ours
    );
    assert!(error.contains(&ranges), "{error}");
    assert!(error.contains("upgrade the control plane first"), "{error}");
    let log = cp.log();
    let refused = line(&log, "no common protocol version; refused");
    assert!(refused.contains(agent.agent_id()), "{refused}");
    // One refusal: the client did not redial.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cp.log()
            .matches("no common protocol version; refused")
            .count(),
        1
    );
}
