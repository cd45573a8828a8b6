//! A real Prometheus (Debian's package, `scripts/setup.d/70-prometheus.sh`)
//! scrapes the ops listeners of a real deployment: `control-plane serve`
//! (harness, gateway, API, the scripted fake model), an enrolled
//! `sandbox-agent run` with a real Docker sandbox, and a `vault-bridge
//! serve`, each with `[ops] listen` on a loopback port. A session runs one
//! tool call through the API; then Prometheus' HTTP API must show `up == 1`
//! for all three targets and the counters and gauges that moved (agents
//! connected by transport, tool calls, events appended, the agent's tunnel,
//! the bridge's backend, certificate expiry). Finally the agent's `/readyz`
//! must turn 503 naming `control_plane` when the control plane is killed,
//! and 200 again once it is back (with a reconnect counted).
//!
//! Fails (does not skip) when `CI` is set and Prometheus is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::bridge::{Bridge, BridgeOptions};
use airlock_tests::deploy::{free_port, tail, Agent, AgentOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use airlock_tests::sandbox::{remove_agent_containers, test_image};
use e2e_support::{runtime_toml, Deployment};
use serde_json::{json, Value};
use testkit::try_eventually_blocking;

/// The Prometheus binary, or `None` (the test then skips, unless `CI` is set).
fn prometheus_binary() -> Option<PathBuf> {
    let p = std::env::var_os("AIRLOCK_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "prometheus not found at {} with CI set: run `source scripts/setup.d/70-prometheus.sh` (or scripts/test-all)",
            p.display()
        );
    }
    eprintln!(
        "skipping: prometheus not found at {} (source scripts/setup.d/70-prometheus.sh)",
        p.display()
    );
    None
}

/// A plain HTTP/1.0 GET on loopback: status and body.
fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Percent-encode a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus process with its own config and storage dir.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &PathBuf, targets: &[(&str, SocketAddr)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-prometheus-")
            .tempdir()
            .unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (name, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {name}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self { child, addr, dir };
        try_eventually_blocking("prometheus ready", Duration::from_secs(30), || {
            matches!(http_get(p.addr, "/-/ready"), Ok((200, _)))
        })
        .unwrap_or_else(|_| panic!("prometheus did not get ready; log:\n{}", p.log()));
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector as (labels, value).
    fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(q)))
            .unwrap_or((0, String::new()));
        if status != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Wait until `q` has one sample that satisfies `ok`.
    fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
        try_eventually_blocking(&format!("prometheus: {q}"), Duration::from_secs(30), || {
            self.query(q).first().map(|(_, v)| *v).filter(|v| ok(*v))
        })
        .unwrap_or_else(|_| {
            panic!(
                "prometheus never had a satisfying `{q}`: {:?}",
                self.query(q)
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/readyz` status and body of an ops listener.
fn readyz(addr: SocketAddr) -> (u16, Value) {
    match http_get(addr, "/readyz") {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// One `write` tool call, then the end of the turn.
fn script(req: &RequestCtx) -> Reply {
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .text("Writing the file.")
            .tool_use(
                "toolu_w",
                "write",
                json!({"file_path": "metrics.txt", "content": "scraped\n"}),
            )
            .into(),
        _ => Reply::text("Done."),
    }
}

/// An enrolled agent running real sandboxes, with `[ops]` and `[bridge]`.
fn start_agent(d: &Deployment, ops: SocketAddr, bridge: &Bridge) -> Agent {
    let image = test_image();
    let join = d.cp.join_string(&d.environment_id).unwrap();
    let mut agent = Agent::enroll(&d.cp, &join, AgentOptions::default()).unwrap();
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    let mut out = airlock_tests::sandbox::sandbox_ready_agent_config(&config, &image);
    out.push_str(&bridge.agent_toml());
    out.push_str(&format!("\n[ops]\nlisten = \"{ops}\"\n"));
    std::fs::write(agent.config_path(), out).unwrap();
    agent.run().unwrap();
    d.cp.wait_connected(agent.agent_id(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", tail(&agent.log(), 40)));
    agent
}

struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        remove_agent_containers(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_all_three_daemons_and_readiness_follows_the_control_plane() {
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    let started = Instant::now();
    let model = FakeModel::builder().start(script).await.unwrap();
    let (cp_ops, agent_ops, bridge_ops): (SocketAddr, SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
    );
    let mut d = Deployment::start(format!(
        "{}\n[ops]\nlisten = \"{cp_ops}\"\n",
        runtime_toml(&model.base_url(), 5.0)
    ))
    .await
    .unwrap();
    let bridge = Bridge::start(BridgeOptions {
        extra_toml: format!("[ops]\nlisten = \"{bridge_ops}\"\n"),
        ..BridgeOptions::default()
    })
    .unwrap();
    let mut agent = start_agent(&d, agent_ops, &bridge);
    let _containers = Containers(agent.agent_id().to_owned());

    // Each daemon says where its ops listener is, and each is ready.
    let logs: [(&str, &dyn Fn() -> String, SocketAddr); 3] = [
        ("control plane", &|| d.cp.log(), cp_ops),
        ("agent", &|| agent.log(), agent_ops),
        ("bridge", &|| bridge.log(), bridge_ops),
    ];
    for (name, log, addr) in logs {
        // printed once the daemon has started, maybe after its listeners accept
        let said = format!("ops_addr={addr}");
        try_eventually_blocking(
            &format!("{name} to print {said}"),
            Duration::from_secs(10),
            || log().contains(&said),
        )
        .unwrap_or_else(|_| panic!("{name} printed no {said}:\n{}", tail(&log(), 30)));
        let ready = try_eventually_blocking(
            &format!("{name} /readyz 200"),
            Duration::from_secs(30),
            || {
                let (status, body) = readyz(addr);
                (status == 200).then_some(body)
            },
        )
        .unwrap_or_else(|_| panic!("{name} never ready: {:?}", readyz(addr)));
        assert_eq!(ready["ready"], true, "{name}: {ready}");
        assert!(
            matches!(http_get(addr, "/livez"), Ok((200, ref b)) if b == "ok\n"),
            "{name} /livez"
        );
    }
    let (_, cp_ready) = readyz(cp_ops);
    for check in ["session_store", "catalog", "listeners"] {
        assert_eq!(cp_ready["checks"][check]["ok"], true, "{cp_ready}");
    }
    let (_, agent_ready) = readyz(agent_ops);
    for check in ["control_plane", "docker", "audit_log"] {
        assert_eq!(agent_ready["checks"][check]["ok"], true, "{agent_ready}");
    }
    let (_, bridge_ready) = readyz(bridge_ops);
    for check in ["backend", "agent_socket"] {
        assert_eq!(bridge_ready["checks"][check]["ok"], true, "{bridge_ready}");
    }

    let prom = Prometheus::start(
        &prometheus,
        &[
            ("control-plane", cp_ops),
            ("sandbox-agent", agent_ops),
            ("vault-bridge", bridge_ops),
        ],
    );

    // A session with one tool call in a real sandbox.
    let api = &d.api;
    let agent_def = api.create_agent("metrics").await.unwrap();
    let session_id = api
        .create_session(&agent_def, &d.environment_id)
        .await
        .unwrap();
    api.user_message(&session_id, "Write metrics.txt.")
        .await
        .unwrap();
    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\ncontrol plane log:\n{}\nagent log:\n{}",
                tail(&d.cp.log(), 60),
                tail(&agent.log(), 30)
            )
        });
    let result = events
        .iter()
        .find(|e| e["type"] == "agent.tool_result")
        .expect("a tool result");
    assert_eq!(result["is_error"], false, "{result}");

    // What Prometheus scraped.
    for job in ["control-plane", "sandbox-agent", "vault-bridge"] {
        prom.wait_for(&format!("up{{job=\"{job}\"}}"), |v| v == 1.0);
    }
    let transport = d.cp.connections_of(agent.agent_id())[0]["transport"]
        .as_str()
        .unwrap()
        .to_owned();
    prom.wait_for(
        &format!("airlock_agents_connected{{job=\"control-plane\",transport=\"{transport}\"}}"),
        |v| v == 1.0,
    );
    prom.wait_for("sum(airlock_agents_connected)", |v| v == 1.0);
    prom.wait_for(
        "sum(airlock_tool_calls_total{job=\"control-plane\",outcome=\"ok\"})",
        |v| v >= 1.0,
    );
    prom.wait_for(
        "sum(airlock_tool_call_duration_seconds_count{job=\"control-plane\"})",
        |v| v >= 1.0,
    );
    prom.wait_for("sum(airlock_model_requests_total{outcome=\"ok\"})", |v| {
        v >= 2.0
    });
    prom.wait_for("sum(airlock_wakes_total)", |v| v >= 1.0);
    prom.wait_for(
        "airlock_agent_calls_total{call=\"execute\",outcome=\"opened\"}",
        |v| v >= 1.0,
    );
    // user.message, the tool use and result, messages, status changes...
    prom.wait_for("airlock_events_appended_total", |v| v >= 4.0);
    prom.wait_for(
        "sum(airlock_store_operation_duration_seconds_count{op=\"append\"})",
        |v| v >= 1.0,
    );
    prom.wait_for("airlock_sessions{status=\"idle\"}", |v| v >= 1.0);
    prom.wait_for(
        &format!("airlock_tunnel_connected{{job=\"sandbox-agent\",transport=\"{transport}\"}}"),
        |v| v == 1.0,
    );
    prom.wait_for("airlock_sandboxes{job=\"sandbox-agent\"}", |v| v >= 1.0);
    for cert in ["agent", "ca", "server"] {
        prom.wait_for(
            &format!("airlock_certificate_expiry_seconds{{cert=\"{cert}\"}}"),
            |v| v > 60.0,
        );
    }
    prom.wait_for(
        "airlock_bridge_backend_healthy{job=\"vault-bridge\"}",
        |v| v == 1.0,
    );
    prom.wait_for("process_resident_memory_bytes{job=\"vault-bridge\"}", |v| {
        v > 0.0
    });

    // Readiness follows the control plane: kill it, the agent is not ready
    // (naming the check); bring it back, ready again and a reconnect counted.
    d.cp.kill9().unwrap();
    let (_, body) = try_eventually_blocking(
        "agent /readyz 503 without its control plane",
        Duration::from_secs(30),
        || {
            let (status, body) = readyz(agent_ops);
            (status == 503).then_some((status, body))
        },
    )
    .unwrap_or_else(|_| panic!("agent stayed ready: {:?}", readyz(agent_ops)));
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["failing"], json!(["control_plane"]), "{body}");
    prom.wait_for("up{job=\"control-plane\"}", |v| v == 0.0);
    d.cp.start().unwrap();
    try_eventually_blocking("agent /readyz 200 again", Duration::from_secs(60), || {
        readyz(agent_ops).0 == 200
    })
    .unwrap_or_else(|_| {
        panic!(
            "agent not ready again: {:?}\nagent log:\n{}",
            readyz(agent_ops),
            tail(&agent.log(), 30)
        )
    });
    prom.wait_for(
        "airlock_tunnel_reconnects_total{job=\"sandbox-agent\"}",
        |v| v >= 1.0,
    );
    prom.wait_for("up{job=\"control-plane\"}", |v| v == 1.0);

    agent.terminate().unwrap();
    eprintln!(
        "metrics_prometheus: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
