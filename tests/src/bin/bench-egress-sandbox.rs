//! `bench-egress-sandbox`: the egress path as a sandbox uses it, against the
//! same operations straight from the host with the token, in one run.
//!
//! Through the bridge: bash in a real sandbox (Docker, `network: none`, the
//! default image) runs `git`/`curl` with `HTTPS_PROXY` at the executor's
//! loopback forwarder → the sandbox's Unix socket → a real `vault-bridge
//! serve` (which adds the session's relayed token) → the Git server.
//! Direct: the same `git`/`curl` on the host with the token in the request.
//! Times inside the sandbox are taken by the sandbox's own clock around the
//! command (no tool-call overhead).
//!
//! ```text
//! cargo build --release -p vault-bridge -p airlock-tests
//! AIRLOCK_BIN_DIR=target/release cargo run --release -p airlock-tests --bin bench-egress-sandbox [-- REPETITIONS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::{git, random_bytes, run_ok, GitServer, StaticServer, TestCa};
use airlock_tests::sandbox::{text, TestAgent};
use anyhow::{bail, Context, Result};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::relay::{PutSessionToken, WireSecret};
use protocol::sandbox::{DestroyRequest, ExecuteRequest, ProvisionRequest};
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;

const FILES: usize = 50;
const FILE_BYTES: usize = 1024 * 1024;
const GETS: usize = 200;
const SESSION: &str = "sesn_bench";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Sandbox<'a> {
    svc: &'a SandboxService,
    id: String,
    n: usize,
}

impl Sandbox<'_> {
    /// Run `command`; its output (must succeed: the last line is `ok`).
    async fn sh(&mut self, command: &str) -> Result<String> {
        self.n += 1;
        let r = self
            .svc
            .execute(
                ExecuteRequest {
                    sandbox_id: self.id.clone(),
                    tool_use_id: format!("toolu_bench_{}", self.n),
                    name: "bash".into(),
                    input: json!({ "command": command }),
                    stream: false,
                },
                None,
            )
            .await?;
        let out = text(&r);
        if r.is_error {
            bail!("{command}: {out}");
        }
        Ok(out)
    }

    /// Time `command` with the sandbox's clock (µs printed by bash).
    async fn timed(&mut self, command: &str) -> Result<Duration> {
        let out = self
            .sh(&format!(
                "s=$(date +%s%N); {command} >/tmp/bench.out 2>&1 || {{ cat /tmp/bench.out; echo BENCH-FAILED; }}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
            ))
            .await?;
        if out.contains("BENCH-FAILED") {
            bail!("{command}: {out}");
        }
        let us: u64 = out
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .parse()
            .with_context(|| format!("{command}: {out}"))?;
        Ok(Duration::from_micros(us))
    }
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    run_ok(cmd)?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("repetitions must be a number")?
        .unwrap_or(5);
    let work = tempfile::Builder::new()
        .prefix("bench-egress-sandbox-")
        .tempdir()?;
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let token = format!("bench-token-{}", std::process::id());
    let ca = TestCa::new("bench upstream ca")?;
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file)?;
    let user = vault_bridge::agent_channel_egress::GIT_TOKEN_USERNAME;
    let server = GitServer::start(&ca, "localhost", user, &token)?;
    eprintln!("generating the repository ({FILES} × {FILE_BYTES} random bytes) ...");
    server.create_random_repo("big", FILES, FILE_BYTES)?;
    let small = vec![b'x'; 512];
    let web = StaticServer::start(&ca, "localhost", &[("small.txt", &small)], "/")?;
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file.clone()],
        ..Default::default()
    })?;
    let url = server.localhost_url("big");
    let held = Channel::once(
        &bridge.socket_path(),
        &ToBridge::PutSessionToken(PutSessionToken {
            session_id: SESSION.into(),
            resource_id: "sesrsc_big".into(),
            url: url.clone(),
            token: WireSecret::new(token.clone()),
        }),
    )
    .await?;
    if held != (FromBridge::Relayed { held: true }) {
        bail!("token not held: {held:?}");
    }

    let mut agent = TestAgent::new();
    let image = airlock_tests::sandbox::default_image();
    // Room for a 50 MiB checkout plus its .git (the test defaults are small).
    agent.sandbox.default_memory_bytes = Some(2048 * 1024 * 1024);
    agent.sandbox.default_disk_bytes = Some(512 * 1024 * 1024);
    agent.sandbox.tmp_bytes = Some(512 * 1024 * 1024);
    agent.sandbox.default_pids = Some(512);
    // The host's cores, like the direct side: the comparison is the path
    // (forwarder, socket, bridge), not a CPU quota.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    agent.sandbox.default_cpu = Some(cores as f64);
    let (svc, _) = SandboxService::start(agent.with_bridge(bridge.agent_settings())).await?;
    let web_port = web.addr().port();
    let p = svc
        .provision(ProvisionRequest {
            session_id: Some(SESSION.into()),
            // The repository is named (its host allowed, its token added);
            // the provision-time clone goes to /workspace/big, not timed.
            resources: vec![json!({"type": "github_repository", "id": "sesrsc_big", "url": url})],
            allowed_hosts: vec![format!("localhost:{web_port}")],
            ..Default::default()
        })
        .await?;
    if !p.resource_errors.is_empty() {
        bail!("provision clone failed: {:?}", p.resource_errors);
    }
    let mut sb = Sandbox {
        svc: &svc,
        id: p.sandbox_id.clone(),
        n: 0,
    };
    sb.sh("export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@airlock.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@airlock.invalid")
        .await?;

    let direct_url = url.replace("https://", &format!("https://{user}:{token}@"));
    let host_git = || {
        let mut c = git(&home);
        c.env("GIT_SSL_CAINFO", &ca_file);
        c
    };
    let (mut clone_d, mut clone_s, mut push_d, mut push_s) = (vec![], vec![], vec![], vec![]);
    for i in 0..reps {
        let dest = work.path().join(format!("direct-{i}"));
        clone_d.push(time(
            host_git().args(["clone", "-q", &direct_url]).arg(&dest),
        )?);
        clone_s.push(
            sb.timed(&format!("rm -rf /tmp/c{i} && git clone -q {url} /tmp/c{i}"))
                .await?,
        );
        // A 1 MiB commit each, pushed to its own branch.
        std::fs::write(dest.join(format!("d{i}.bin")), random_bytes(FILE_BYTES)?)?;
        run_ok(host_git().arg("-C").arg(&dest).args(["add", "-A"]))?;
        run_ok(
            host_git()
                .arg("-C")
                .arg(&dest)
                .args(["commit", "-q", "-m", "direct"]),
        )?;
        push_d.push(time(host_git().arg("-C").arg(&dest).args([
            "push",
            "-q",
            "origin",
            &format!("HEAD:refs/heads/direct-{i}"),
        ]))?);
        sb.sh(&format!(
            "cd /workspace && head -c {FILE_BYTES} /dev/urandom > /tmp/c{i}/s{i}.bin && git -C /tmp/c{i} add -A && git -C /tmp/c{i} commit -q -m sandbox && echo ok"
        ))
        .await?;
        push_s.push(
            sb.timed(&format!(
                "git -C /tmp/c{i} push -q origin HEAD:refs/heads/sandbox-{i}"
            ))
            .await?,
        );
        std::fs::remove_dir_all(&dest)?;
        sb.sh(&format!("rm -rf /tmp/c{i}; echo ok")).await?;
        eprintln!("repetition {}/{reps} done", i + 1);
    }

    // Small HTTPS GETs, a new curl (new connection) each, curl's own clock.
    let small_url = web.url("small.txt");
    let out = sb
        .sh(&format!(
            "for i in $(seq {GETS}); do curl -sS -o /dev/null -w '%{{time_total}}\\n' {small_url}; done"
        ))
        .await?;
    let mut get_s: Vec<Duration> = out
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    let mut get_d = Vec::new();
    for _ in 0..GETS {
        let o = run_ok(
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{time_total}", "--cacert"])
                .arg(&ca_file)
                .arg(&small_url),
        )?;
        get_d.push(Duration::from_secs_f64(
            String::from_utf8_lossy(&o.stdout).trim().parse()?,
        ));
    }
    if get_s.len() != GETS {
        bail!("sandbox GETs: {out}");
    }
    // The same GETs on one kept-alive connection (one curl, many URLs).
    let urls = vec![small_url.as_str(); GETS].join(" ");
    let out = sb
        .sh(&format!("curl -sS -w '\\n%{{time_total}}\\n' {urls} 2>&1"))
        .await?;
    // The first transfer opens the connection: left out.
    let mut keep_s: Vec<Duration> = out
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .skip(1)
        .map(Duration::from_secs_f64)
        .collect();
    let o = run_ok(Command::new("sh").arg("-c").arg(format!(
        "curl -sS -w '\\n%{{time_total}}\\n' --cacert {} {urls} 2>&1",
        ca_file.display()
    )))?;
    let mut keep_d: Vec<Duration> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .skip(1)
        .map(Duration::from_secs_f64)
        .collect();
    if keep_s.len() < GETS / 2 || keep_d.len() < GETS / 2 {
        bail!(
            "kept-alive GETs: sandbox {} direct {}",
            keep_s.len(),
            keep_d.len()
        );
    }
    svc.destroy(DestroyRequest {
        sandbox_id: p.sandbox_id,
    })
    .await?;

    let (cd, cs) = (median(&mut clone_d), median(&mut clone_s));
    let (pd, ps) = (median(&mut push_d), median(&mut push_s));
    let (gd, gs) = (median(&mut get_d), median(&mut get_s));
    let (kd, ks) = (median(&mut keep_d), median(&mut keep_s));
    println!();
    println!(
        "bench-egress-sandbox: {reps} repetitions (median), repository {} MiB ({FILES} random files), push of a 1 MiB commit, {GETS} small GETs (new curl each); image {image}, sandbox cpu {cores}; loopback nginx + fcgiwrap + git http-backend over HTTPS",
        FILES * FILE_BYTES / (1024 * 1024)
    );
    println!();
    println!("| operation | direct from the host (token on host) | from the sandbox through the bridge | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| git clone | {} | {} | {:.2}x |",
        ms(cd),
        ms(cs),
        cs.as_secs_f64() / cd.as_secs_f64()
    );
    println!(
        "| git push (1 MiB commit) | {} | {} | {:.2}x |",
        ms(pd),
        ms(ps),
        ps.as_secs_f64() / pd.as_secs_f64()
    );
    println!(
        "| small HTTPS GET p50 (curl time_total) | {} | {} | +{} |",
        ms(gd),
        ms(gs),
        ms(gs.saturating_sub(gd))
    );
    println!(
        "| small HTTPS GET p50, kept-alive connection | {} | {} | +{} |",
        us(kd),
        us(ks),
        us(ks.saturating_sub(kd))
    );
    Ok(())
}
