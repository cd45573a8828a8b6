//! `bench-audit`: what the audit record of issue 11 costs, measured in one
//! run on this machine.
//!
//! (a) Per-call cost: a `bash true` round trip through the sandbox service
//!     and the in-sandbox executor (the agent's full path: policy, audit
//!     `start` line written before the run, execution record, framed stdio,
//!     `end` line with the output digest), with `[audit] detail = "full"`
//!     (inputs scrubbed by the token patterns, hashes, a signed checkpoint
//!     every 1000 records) against `detail = "outcomes"` (no input, output
//!     digest or checkpoint). Two agents side by side in this process, one
//!     sandbox each, calls alternating, after a warm-up. Target: p50 added
//!     by `full` ≤ 5 %.
//! (b) `verify` of 1,000,000 records written by the real `AuditLog` (format
//!     v2 execute lines with inputs, rotation at the default 64 MiB,
//!     checkpoints every 1000 records): `verify_dir` timed in process, and
//!     `sandbox-agent audit verify` when that binary sits next to this one.
//!
//! Run (release, with the binaries it spawns):
//! `source scripts/setup.d/30-images.sh && CARGO_TARGET_DIR=… cargo build --release -p airlock-tests --bin bench-audit -p sandbox-agent --bin sandbox-agent && $CARGO_TARGET_DIR/release/bench-audit`
//! Env: `BENCH_ITERS` (calls per mode, default 300), `BENCH_WARMUP` (default
//! 30), `BENCH_VERIFY_RECORDS` (default 1000000), `AIRLOCK_TEST_IMAGE` /
//! `AIRLOCK_EXECUTOR_PATH` as for the tests.

use std::time::{Duration, Instant};

use airlock_tests::sandbox::{text, tool_use_id, TestAgent};
use anyhow::{bail, Context, Result};
use protocol::sandbox::{ExecuteRequest, ProvisionRequest};
use sandbox_agent::audit::{
    verify_dir, AuditEvent, AuditLog, AuditSettings, Decision, Detail, OutputDigest, VerifyOptions,
    PHASE_END, PHASE_START,
};
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: Duration,
    p95: Duration,
    mean: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let total: Duration = v.iter().sum();
    Stats {
        n: v.len(),
        p50: at(0.5),
        p95: at(0.95),
        mean: total / v.len().max(1) as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn pct(base: Duration, with: Duration) -> f64 {
    (with.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0
}

async fn bash_true(svc: &SandboxService, sbx: &str) -> Result<Duration> {
    let t = Instant::now();
    let r = svc
        .execute(
            ExecuteRequest {
                sandbox_id: sbx.to_owned(),
                tool_use_id: tool_use_id(),
                name: "bash".into(),
                input: json!({"command": "true"}),
                stream: false,
            },
            None,
        )
        .await?;
    let d = t.elapsed();
    if r.is_error {
        bail!("bash true failed: {}", text(&r));
    }
    Ok(d)
}

struct Arm {
    name: &'static str,
    _agent: TestAgent,
    _audit_dir: tempfile::TempDir,
    svc: SandboxService,
    sbx: String,
    log: AuditLog,
    samples: Vec<Duration>,
}

async fn arm(name: &'static str, detail: Detail) -> Result<Arm> {
    let agent = TestAgent::new();
    let audit_dir = tempfile::tempdir()?;
    let mut settings = AuditSettings::defaults(audit_dir.path());
    settings.detail = detail;
    settings.checkpoint_every_records = 1000;
    let log = AuditLog::open_with(&settings, &agent.agent_id)?;
    let (svc, _) = SandboxService::start_with_audit(agent.config(), log.clone()).await?;
    let sbx = svc.provision(ProvisionRequest::default()).await?.sandbox_id;
    Ok(Arm {
        name,
        _agent: agent,
        _audit_dir: audit_dir,
        svc,
        sbx,
        log,
        samples: Vec::new(),
    })
}

async fn per_call(iters: usize, warmup: usize) -> Result<()> {
    let mut arms = [
        arm("outcomes", Detail::Outcomes).await?,
        arm("full", Detail::Full).await?,
    ];
    for _ in 0..warmup {
        for a in arms.iter() {
            bash_true(&a.svc, &a.sbx).await?;
        }
    }
    for i in 0..iters {
        // Alternate which arm goes first, so neither always follows the other.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let d = bash_true(&arms[k].svc, &arms[k].sbx).await?;
            arms[k].samples.push(d);
        }
    }
    println!("(a) per-call cost: `bash true` through the sandbox service, {iters} calls per mode after {warmup} warm-up calls, alternating");
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>12} {:>10}",
        "detail", "n", "p50", "p95", "mean", "lines"
    );
    let mut results = Vec::new();
    for a in &arms {
        let s = stats(a.samples.clone());
        let lines = std::fs::read_to_string(a.log.path())
            .map(|t| t.lines().count())
            .unwrap_or(0);
        println!(
            "{:<10} {:>6} {:>12} {:>12} {:>12} {:>10}",
            a.name,
            s.n,
            ms(s.p50),
            ms(s.p95),
            ms(s.mean),
            lines
        );
        results.push(s);
    }
    let (o, f) = (results[0], results[1]);
    let added = pct(o.p50, f.p50);
    println!(
        "added by detail = \"full\": p50 {:+.2} % ({:+.3} ms), p95 {:+.2} %, mean {:+.2} %  (target p50 <= 5 %: {})",
        added,
        (f.p50.as_secs_f64() - o.p50.as_secs_f64()) * 1000.0,
        pct(o.p95, f.p95),
        pct(o.mean, f.mean),
        if added <= 5.0 { "met" } else { "NOT met" }
    );
    for a in &arms {
        a.svc.shutdown(true).await;
    }
    Ok(())
}

fn write_records(dir: &std::path::Path, n: usize) -> Result<AuditLog> {
    let settings = AuditSettings::defaults(dir);
    let log = AuditLog::open_with(&settings, "agt_bench")?;
    let mut i = 0;
    while i < n {
        // One call: a start line with its input and an end line with the
        // output digest, as `execute` writes them.
        let id = format!("toolu_bench_{i:08}");
        log.try_record(AuditEvent {
            call: "execute".into(),
            phase: Some(PHASE_START.into()),
            sandbox_id: Some("sbx_0192f1c3a7d94b0e9f3b6a1c2d3e4f50".into()),
            session_id: Some("sesn_0192f1c3a7d94b0e9f3b6a1c2d3e4f51".into()),
            tool_use_id: Some(id.clone()),
            tool: Some("bash".into()),
            input: Some(json!({"command": format!("cd /workspace/src && cargo test -p crate{} -- --nocapture", i % 97)})),
            decision: Some(Decision {
                allowed: true,
                ..Default::default()
            }),
            outcome: "started".into(),
            ..Default::default()
        })?;
        i += 1;
        if i >= n {
            break;
        }
        let content = format!("[{{\"type\":\"text\",\"text\":\"ok {i}\"}}]");
        log.try_record(AuditEvent {
            call: "execute".into(),
            phase: Some(PHASE_END.into()),
            sandbox_id: Some("sbx_0192f1c3a7d94b0e9f3b6a1c2d3e4f50".into()),
            tool_use_id: Some(id),
            tool: Some("bash".into()),
            outcome: "ok".into(),
            exit_code: Some(0),
            output: Some(OutputDigest::of(content.as_bytes())),
            duration_ms: 12,
            ..Default::default()
        })?;
        i += 1;
    }
    log.checkpoint_now()?;
    Ok(log)
}

fn verify_bench(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let log = write_records(dir.path(), n)?;
    let written = t.elapsed();
    let bytes: u64 = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let files = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .count();
    println!();
    println!(
        "(b) verify: {n} records (+ checkpoints) written by AuditLog in {:.2} s ({:.0} records/s), {:.1} MiB in {files} files",
        written.as_secs_f64(),
        n as f64 / written.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    let opts = VerifyOptions {
        public_key: log.public_key(),
        ..Default::default()
    };
    drop(log);
    let t = Instant::now();
    let report = verify_dir(dir.path(), &opts)?;
    let took = t.elapsed();
    println!(
        "verify_dir: {} lines ({} checkpoints) in {:.2} s: {:.0} records/s, {:.1} MiB/s",
        report.lines,
        report.checkpoints,
        took.as_secs_f64(),
        report.lines as f64 / took.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
    );
    let cli = std::env::current_exe()?
        .parent()
        .context("no exe dir")?
        .join("sandbox-agent");
    if cli.is_file() {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!("data_dir = \"{}\"\n", dir.path().display()),
        )?;
        let t = Instant::now();
        let out = std::process::Command::new(&cli)
            .arg("--config")
            .arg(&config)
            .args(["audit", "verify", "--dir"])
            .arg(dir.path())
            .output()?;
        let took = t.elapsed();
        println!(
            "`sandbox-agent audit verify`: exit {} in {:.2} s ({:.0} records/s): {}",
            out.status.code().unwrap_or(-1),
            took.as_secs_f64(),
            report.lines as f64 / took.as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    } else {
        println!(
            "`sandbox-agent audit verify`: not timed ({} not built)",
            cli.display()
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let iters = env_usize("BENCH_ITERS", 300);
    let warmup = env_usize("BENCH_WARMUP", 30);
    let records = env_usize("BENCH_VERIFY_RECORDS", 1_000_000);
    per_call(iters, warmup).await?;
    tokio::task::spawn_blocking(move || verify_bench(records)).await??;
    Ok(())
}
