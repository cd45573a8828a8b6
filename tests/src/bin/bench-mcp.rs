//! `bench-mcp`: one MCP tool call through the whole path (control plane →
//! tunnel → `sandbox-agent run` → `vault-bridge serve` → MCP server) against
//! the same call made directly from the host, in one run; then 100
//! concurrent calls on each side.
//!
//! The MCP server is the `tickets` server of `tests/mcp/servers.py` (official
//! `mcp` Python SDK, Streamable HTTP over HTTPS, static bearer token); the
//! tool is `search` (echoes its arguments). The control plane runs in this
//! process (the same `App` as `control-plane serve`); the agent and the
//! bridge are the real release binaries.
//!
//! - Direct: the host's own `rmcp` client (the SDK the bridge uses, over
//!   the bridge's reqwest client builder trusting the test CA) with the
//!   token as bearer and an MCP session initialized once, `tools/call`.
//! - Path: `Request::McpCallTool` with a fresh `tool_use_id` per call via
//!   the in-process gateway, through the real tunnel (QUIC) to the agent,
//!   which records the call (`fdatasync`) and asks the bridge over its Unix
//!   socket; the bridge keeps its MCP session across calls.
//! - Breakdown rows (sequential only): the bridge's socket straight from
//!   this process (`ToBridge::McpCallTool`, no tunnel, no agent), a tunnel
//!   `Ping` (no MCP), and an `fdatasync` of one appended line in the agent's
//!   data dir (what the agent's call record pays per call).
//!
//! Sequential calls alternate between the sides call by call. Every
//! reply is checked (`isError: false`, the echoed query), and at the end the
//! server's call log must count exactly the calls made.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench-mcp cargo build --release -p airlock-tests -p sandbox-agent -p vault-bridge -p control-plane --bin bench-mcp --bin sandbox-agent --bin vault-bridge --bin control-plane
//! /work/target-bench-mcp/release/bench-mcp [N]    # N sequential calls per side, default 200
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::deploy::{
    tail, Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane,
};
use airlock_tests::mcp::{McpTestServer, TestCa};
use anyhow::{bail, Context, Result};
use control_plane::gateway::{GatewayHandle, Target};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::mcp::{McpCallTool, McpOutcome, McpReply, McpServer};
use protocol::relay::{CredentialBinding, EgressCredential, PutCredential, WireSecret};
use protocol::{Reply, Request, Response};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const TOOL: &str = "search";
const CONCURRENT: usize = 100;
/// Rounds of [`CONCURRENT`] calls per side (alternating sides).
const CONC_ROUNDS: usize = 5;
const WARMUP: usize = 20;
const SESSION: &str = "sesn_bench_mcp";
const SESSION_SOCKET: &str = "sesn_bench_mcp_socket";

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn signed_ms(a: Duration, b: Duration) -> String {
    let d = a.as_secs_f64() - b.as_secs_f64();
    format!("{:+.2} ms", d * 1000.0)
}

/// The arguments of call `n` and the text the server echoes for them.
fn args(n: u64) -> Value {
    json!({"query": format!("bench-{n}")})
}

/// The echoed query must be in the result's text.
fn check_text(content: &Value, n: u64) -> Result<()> {
    let want = format!("bench-{n}");
    if !content.to_string().contains(&want) {
        bail!("call {n}: the result does not echo {want}: {content:.300}");
    }
    Ok(())
}

fn credential(url: &str) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: "vlt_bench".into(),
        credential_id: "vcrd_bench_tickets".into(),
        kv_path: None,
        binding: CredentialBinding::StaticBearer {
            mcp_server_url: url.into(),
        },
    }
}

fn call_of(url: &str, session: &str, n: u64) -> McpCallTool {
    McpCallTool {
        session_id: session.into(),
        tool_use_id: format!("mcptoolu_bench_{n}"),
        server: McpServer {
            name: "tickets".into(),
            url: url.into(),
        },
        credentials: vec![credential(url)],
        tool: TOOL.into(),
        arguments: args(n),
    }
}

fn check_reply(reply: &McpReply, n: u64) -> Result<()> {
    if reply.replayed {
        bail!("call {n} was answered from the record");
    }
    match &reply.outcome {
        McpOutcome::Called {
            is_error: false,
            content,
        } => check_text(&serde_json::to_value(content)?, n),
        other => bail!("call {n}: {other:?}"),
    }
}

/// One of the ways to make the call.
#[derive(Clone)]
enum Side {
    /// The host's rmcp client straight to the server.
    Direct(Peer<RoleClient>),
    /// Control plane → tunnel → agent → bridge → server.
    Path {
        gw: GatewayHandle,
        target: Target,
        url: String,
    },
    /// This process → the bridge's Unix socket → server.
    Socket(Arc<tokio::sync::Mutex<Channel>>, String),
    /// A tunnel `Ping` (no MCP).
    Ping(GatewayHandle, Target),
}

impl Side {
    async fn once(&self) -> Result<Duration> {
        let n = next();
        let t = Instant::now();
        match self {
            Side::Direct(peer) => {
                let mut p = CallToolRequestParams::new(TOOL);
                p.arguments = args(n).as_object().cloned();
                let r = peer.call_tool(p).await.context("direct tools/call")?;
                let el = t.elapsed();
                if r.is_error == Some(true) {
                    bail!("direct call {n}: isError");
                }
                check_text(&serde_json::to_value(&r.content)?, n)?;
                Ok(el)
            }
            Side::Path { gw, target, url } => {
                let req = Request::McpCallTool(call_of(url, SESSION, n));
                let (_, r) = gw.call_unary(target, &req).await?;
                let el = t.elapsed();
                match r {
                    Response::Ok(Reply::Mcp { reply, .. }) => check_reply(&reply, n)?,
                    other => bail!("path call {n}: not an MCP reply: {other:?}"),
                }
                Ok(el)
            }
            Side::Socket(ch, url) => {
                let m = ToBridge::McpCallTool(call_of(url, SESSION_SOCKET, n));
                let r = ch.lock().await.call(&m).await?;
                let el = t.elapsed();
                match r {
                    FromBridge::Mcp(reply) => check_reply(&reply, n)?,
                    other => bail!("socket call {n}: {other:?}"),
                }
                Ok(el)
            }
            Side::Ping(gw, target) => {
                let (_, r) = gw.call_unary(target, &Request::Ping).await?;
                let el = t.elapsed();
                if !matches!(r, Response::Ok(Reply::Pong(_))) {
                    bail!("ping: {r:?}");
                }
                Ok(el)
            }
        }
    }

    fn counts_at_server(&self) -> bool {
        !matches!(self, Side::Ping(..))
    }
}

/// `CONCURRENT` calls started together on `side`: their latencies and the
/// wall time of the round.
async fn concurrent_round(side: &Side) -> Result<(Vec<Duration>, Duration)> {
    let start = Arc::new(tokio::sync::Barrier::new(CONCURRENT + 1));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (side, start) = (side.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                side.once().await
            })
        })
        .collect();
    start.wait().await;
    let t = Instant::now();
    let mut lat = Vec::with_capacity(CONCURRENT);
    for task in tasks {
        lat.push(task.await??);
    }
    Ok((lat, t.elapsed()))
}

/// `fdatasync` of one appended JSON line, `n` times, in `dir`.
fn fdatasync_lines(dir: &std::path::Path, n: usize) -> Result<Vec<Duration>> {
    let path = dir.join("bench-fdatasync.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let line = format!(
        "{{\"t\":\"start\",\"id\":\"mcptoolu_bench_0000\",\"session_id\":\"{SESSION}\",\"server\":\"tickets\",\"at\":1700000000}}\n"
    );
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(lat)
}

fn main() -> Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .with_context(|| format!("N (sequential calls per side) is not a number: {a}"))?,
        None => 200,
    };
    if n == 0 {
        bail!("N (sequential calls per side) must be at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(n))
}

async fn bench(n: usize) -> Result<()> {
    if std::env::var_os("AIRLOCK_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().map(PathBuf::from).context("binary dir")?;
        std::env::set_var("AIRLOCK_BIN_DIR", dir);
    }
    if !airlock_tests::mcp::sdk_installed() {
        bail!("the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh)");
    }
    let ca = TestCa::new("airlock bench-mcp CA")?;
    let server = McpTestServer::tickets(Some(&ca))?;
    let ca_file = server.ca_file().context("server CA")?.to_owned();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file.clone()],
        ..Default::default()
    })?;
    let mut ch = Channel::connect(&bridge.socket_path()).await?;
    let relayed = ch
        .call(&ToBridge::PutCredential(PutCredential {
            vault_id: "vlt_bench".into(),
            credential_id: "vcrd_bench_tickets".into(),
            fields: [("token".to_owned(), WireSecret::new(server.token()))].into(),
        }))
        .await?;
    if relayed != (FromBridge::Relayed { held: true }) {
        bail!("the bridge did not hold the token: {relayed:?}");
    }

    let cp = ControlPlane::configure(CpOptions::default())?;
    let app = InProcessControlPlane::start(&cp).await?;
    let join = cp.join_string("env-bench-mcp")?;
    let mut agent = Agent::enroll(
        &cp,
        &join,
        AgentOptions {
            env: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
            ..Default::default()
        },
    )?;
    let mut config = std::fs::read_to_string(agent.config_path())?;
    config.push_str(&bridge.agent_toml());
    config.push_str("\n[policy]\nmcp_hosts = [\"127.0.0.1\"]\n");
    std::fs::write(agent.config_path(), config)?;
    agent.run()?;
    app.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&agent.log(), 30)))?;
    let target = Target::Agent(agent.agent_id().into());
    let gw = app.gateway().clone();
    let data_dir = agent
        .config_path()
        .parent()
        .context("agent dir")?
        .join("data");

    // The host's own MCP client: the bridge's reqwest builder, rmcp.
    let http = vault_bridge::mcp::http::build_client(
        &vault_bridge::egress::TrustRoots::Files(vec![ca_file.clone()]),
        Duration::from_secs(10),
    )?;
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(server.url()).auth_header(server.token()),
    );
    let direct_client = ().serve(transport).await.context("direct initialize")?;

    let direct = Side::Direct(direct_client.peer().clone());
    let path = Side::Path {
        gw: gw.clone(),
        target: target.clone(),
        url: server.url(),
    };
    let socket = Side::Socket(
        Arc::new(tokio::sync::Mutex::new(
            Channel::connect(&bridge.socket_path()).await?,
        )),
        server.url(),
    );
    let ping = Side::Ping(gw.clone(), target.clone());
    let mut server_calls = 0usize;

    // Warm up every side (sessions initialized, connections pooled).
    let sides = [&direct, &path, &socket, &ping];
    for s in sides {
        for _ in 0..WARMUP {
            s.once().await.map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nagent:\n{}\nbridge:\n{}",
                    tail(&agent.log(), 30),
                    tail(&bridge.log(), 30)
                )
            })?;
        }
        if s.counts_at_server() {
            server_calls += WARMUP;
        }
    }

    // Sequential, alternating call by call.
    let mut seq: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); sides.len()];
    for _ in 0..n {
        for (i, s) in sides.iter().enumerate() {
            seq[i].push(s.once().await?);
        }
    }
    server_calls += 3 * n;
    let mut sync = fdatasync_lines(&data_dir, n)?;
    for v in seq.iter_mut() {
        v.sort();
    }
    sync.sort();

    // Concurrent: CONC_ROUNDS rounds of CONCURRENT calls, sides alternating.
    let conc_sides = [&direct, &path];
    let mut conc: Vec<(Vec<Duration>, Duration)> = vec![(Vec::new(), Duration::ZERO); 2];
    for _ in 0..CONC_ROUNDS {
        for (i, s) in conc_sides.iter().enumerate() {
            let (lat, wall) = concurrent_round(s).await?;
            conc[i].0.extend(lat);
            conc[i].1 += wall;
        }
    }
    server_calls += 2 * CONC_ROUNDS * CONCURRENT;
    for c in conc.iter_mut() {
        c.0.sort();
    }

    let seen = server.calls()?.len();
    if seen != server_calls {
        bail!("the server logged {seen} tools/call, {server_calls} were made");
    }
    let (d, p) = (&seq[0], &seq[1]);
    let added = pct(p, 0.5).saturating_sub(pct(d, 0.5));

    println!(
        "\n## bench-mcp: `tickets.search` (Streamable HTTP, HTTPS, static bearer), {n} sequential calls per side, alternating\n"
    );
    println!("| side | p50 | p90 | p99 | p50 vs direct |");
    println!("|---|---|---|---|---|");
    let names = [
        "direct: host rmcp client → server",
        "path: control plane → tunnel (QUIC) → agent → bridge → server",
        "bridge socket: this process → bridge → server (no tunnel, no agent)",
        "tunnel `Ping` (no MCP)",
    ];
    for (i, name) in names.iter().enumerate() {
        let v = &seq[i];
        let vs = if seq[i].len() == d.len() && i < 3 {
            signed_ms(pct(v, 0.5), pct(d, 0.5))
        } else {
            "—".into()
        };
        println!(
            "| {name} | {} | {} | {} | {vs} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.9)),
            ms(pct(v, 0.99)),
        );
    }
    println!(
        "| `fdatasync` of one appended line in the agent's data dir | {} | {} | {} | — |",
        ms(pct(&sync, 0.5)),
        ms(pct(&sync, 0.9)),
        ms(pct(&sync, 0.99)),
    );
    println!(
        "\n**Added p50 (path − direct): {}** (target ≤ 2 ms: {})\n",
        ms(added),
        if added <= Duration::from_millis(2) {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "## {CONCURRENT} concurrent calls per side ({CONC_ROUNDS} rounds, alternating; latencies pooled)\n"
    );
    println!("| side | wall time per round | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (i, name) in names[..2].iter().enumerate() {
        let (lat, wall) = &conc[i];
        let per_round = *wall / CONC_ROUNDS as u32;
        println!(
            "| {name} | {} | {:.0} calls/s | {} | {} |",
            ms(per_round),
            lat.len() as f64 / wall.as_secs_f64(),
            ms(pct(lat, 0.5)),
            ms(pct(lat, 0.99)),
        );
    }
    println!("\nThe server logged {seen} `tools/call` (warm-up included), as many as were made.");

    direct_client.cancel().await.ok();
    drop(agent);
    app.stop().await;
    drop(bridge);
    Ok(())
}
