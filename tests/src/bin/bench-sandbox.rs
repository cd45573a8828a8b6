//! `bench-sandbox`: tool-call and provision latency of Airlock sandboxes,
//! side by side with the baselines, measured in one run on this machine.
//!
//! - `bash true`, `write` 1 MiB, `read` 1 MiB through the sandbox service and
//!   the in-sandbox executor (the agent's full path: policy, execution record,
//!   audit line, framed stdio), against the same operation done with a
//!   per-call `docker exec` through bollard on the same container.
//! - provision from the warm pool and cold, against `docker run --rm IMAGE true`
//!   from the CLI.
//!
//! Run: `source scripts/setup.d/30-images.sh && cargo run --release -p airlock-tests --bin bench-sandbox`
//! Env: `BENCH_ITERS` (tool calls, default 200), `BENCH_PROVISION_ITERS` (default 20),
//! `AIRLOCK_TEST_IMAGE` / `AIRLOCK_EXECUTOR_PATH` as for the tests.

use std::time::{Duration, Instant};

use airlock_tests::sandbox::{text, tool_use_id, TestAgent};
use anyhow::{bail, Result};
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;
use protocol::sandbox::{DestroyRequest, ExecuteRequest, ProvisionRequest};
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
struct Stats {
    n: usize,
    p50: Duration,
    p95: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        n: v.len(),
        p50: at(0.5),
        p95: at(0.95),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run_tool(
    svc: &SandboxService,
    sbx: &str,
    name: &str,
    input: serde_json::Value,
) -> Result<Duration> {
    let t = Instant::now();
    let r = svc
        .execute(
            ExecuteRequest {
                sandbox_id: sbx.to_owned(),
                tool_use_id: tool_use_id(),
                name: name.to_owned(),
                input,
                stream: false,
            },
            None,
        )
        .await?;
    let d = t.elapsed();
    if r.is_error {
        bail!("{name} failed: {}", text(&r));
    }
    Ok(d)
}

/// One `docker exec` through bollard: create, start attached, feed stdin,
/// collect output, read the exit code. Returns (elapsed, output bytes).
async fn docker_exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        bail!("exec did not attach");
    };
    if let Some(data) = stdin {
        input.write_all(data).await?;
        input.shutdown().await?;
    }
    let mut n = 0;
    while let Some(chunk) = output.next().await {
        n += chunk?.into_bytes().len();
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code;
    let d = t.elapsed();
    if code != Some(0) {
        bail!("docker exec {cmd:?} exited with {code:?}");
    }
    Ok((d, n))
}

async fn docker_run_cli(image: &str) -> Result<Duration> {
    let t = Instant::now();
    let st = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", image, "true"])
        .status()
        .await?;
    let d = t.elapsed();
    if !st.success() {
        bail!("docker run --rm {image} true failed");
    }
    Ok(d)
}

struct Row {
    op: String,
    ours: Stats,
    baseline_name: String,
    base: Stats,
    target: String,
    met: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let iters = env_usize("BENCH_ITERS", 200);
    let big_iters = (iters / 5).max(10);
    let prov_iters = env_usize("BENCH_PROVISION_ITERS", 20);
    let image = airlock_tests::sandbox::test_image();
    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let mut rows = Vec::new();

    // ---- tool calls --------------------------------------------------------
    let mut agent = TestAgent::new();
    agent.sandbox.file_max_bytes = Some(4 << 20);
    let (svc, _) = agent.start().await;
    let sbx = svc.provision(ProvisionRequest::default()).await?.sandbox_id;
    let container = format!("airlock-{sbx}");
    let mib: String =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(16 * 1024);
    assert_eq!(mib.len(), 1 << 20);
    // warm-up both paths
    for _ in 0..5 {
        run_tool(&svc, &sbx, "bash", json!({"command": "true"})).await?;
        docker_exec(&docker, &container, &["/bin/bash", "-c", "true"], None).await?;
    }
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..iters {
        ours.push(run_tool(&svc, &sbx, "bash", json!({"command": "true"})).await?);
        base.push(
            docker_exec(&docker, &container, &["/bin/bash", "-c", "true"], None)
                .await?
                .0,
        );
    }
    let (o, b) = (stats(ours), stats(base));
    rows.push(Row {
        op: "bash `true` round trip".into(),
        met: b.p50.as_secs_f64() >= 10.0 * o.p50.as_secs_f64(),
        ours: o,
        baseline_name: "docker exec (bollard)".into(),
        base: b,
        target: "p50 >= 10x faster".into(),
    });

    let (mut ow, mut bw, mut or, mut br) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..big_iters {
        ow.push(
            run_tool(
                &svc,
                &sbx,
                "write",
                json!({"file_path": "big.txt", "content": mib}),
            )
            .await?,
        );
        bw.push(
            docker_exec(
                &docker,
                &container,
                &["/bin/bash", "-c", "cat > /workspace/big2.txt"],
                Some(mib.as_bytes()),
            )
            .await?
            .0,
        );
        or.push(run_tool(&svc, &sbx, "read", json!({"file_path": "big.txt"})).await?);
        let (d, n) =
            docker_exec(&docker, &container, &["cat", "/workspace/big2.txt"], None).await?;
        if n != mib.len() {
            bail!("docker exec cat returned {n} bytes");
        }
        br.push(d);
    }
    let (o, b) = (stats(ow), stats(bw));
    rows.push(Row {
        op: "write 1 MiB".into(),
        met: b.p50 > o.p50,
        ours: o,
        baseline_name: "docker exec cat > f".into(),
        base: b,
        target: "faster".into(),
    });
    let (o, b) = (stats(or), stats(br));
    rows.push(Row {
        op: "read 1 MiB".into(),
        met: b.p50 > o.p50,
        ours: o,
        baseline_name: "docker exec cat f".into(),
        base: b,
        target: "faster".into(),
    });
    svc.shutdown(true).await;
    drop(agent);

    // ---- provision ---------------------------------------------------------
    let mut baseline_run = Vec::new();
    docker_run_cli(&image).await?; // warm-up
    for _ in 0..prov_iters {
        baseline_run.push(docker_run_cli(&image).await?);
    }
    let run_stats = stats(baseline_run);

    let cold_agent = TestAgent::new();
    let (cold_svc, _) = cold_agent.start().await;
    let mut cold = Vec::new();
    for _ in 0..prov_iters {
        let t = Instant::now();
        let p = cold_svc.provision(ProvisionRequest::default()).await?;
        cold.push(t.elapsed());
        cold_svc
            .destroy(DestroyRequest {
                sandbox_id: p.sandbox_id,
            })
            .await?;
    }
    cold_svc.shutdown(true).await;
    drop(cold_agent);
    let c = stats(cold);
    rows.push(Row {
        op: "provision, cold".into(),
        met: c.p50.as_secs_f64() <= 1.5 * run_stats.p50.as_secs_f64(),
        ours: c,
        baseline_name: "docker run --rm IMAGE true (CLI)".into(),
        base: run_stats.clone(),
        target: "p50 <= 1.5x docker run".into(),
    });

    let mut warm_agent = TestAgent::new();
    warm_agent.pool.size = Some(1);
    warm_agent.pool.refill_concurrency = Some(1);
    let (warm_svc, _) = warm_agent.start().await;
    let mut warm = Vec::new();
    for _ in 0..prov_iters {
        let until = Instant::now() + Duration::from_secs(60);
        while warm_svc.pool_ready(&image) < 1 {
            if Instant::now() > until {
                bail!("warm pool did not refill within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        let p = warm_svc.provision(ProvisionRequest::default()).await?;
        warm.push(t.elapsed());
        if !p.from_pool {
            bail!("provision did not come from the pool");
        }
        warm_svc
            .destroy(DestroyRequest {
                sandbox_id: p.sandbox_id,
            })
            .await?;
    }
    warm_svc.shutdown(true).await;
    drop(warm_agent);
    let w = stats(warm);
    rows.push(Row {
        op: "provision, warm pool".into(),
        met: w.p50 <= Duration::from_millis(50),
        ours: w,
        baseline_name: "docker run --rm IMAGE true (CLI)".into(),
        base: run_stats,
        target: "p50 <= 50 ms".into(),
    });

    // ---- table -------------------------------------------------------------
    println!("bench-sandbox: image {image}, {iters} small calls, {big_iters} x 1 MiB, {prov_iters} provisions");
    println!(
        "| operation | n | airlock p50 | airlock p95 | baseline | baseline p50 | baseline p95 | speed-up (p50) | target | met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1}x | {} | {} |",
            r.op,
            r.ours.n,
            ms(r.ours.p50),
            ms(r.ours.p95),
            r.baseline_name,
            ms(r.base.p50),
            ms(r.base.p95),
            r.base.p50.as_secs_f64() / r.ours.p50.as_secs_f64(),
            r.target,
            if r.met { "yes" } else { "NO" }
        );
    }
    Ok(())
}
