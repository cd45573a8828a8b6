//! `bench-egress-sandbox`: the egress path as a sandbox uses it, against the
//! same operations straight from the host with the token, in one run.
//!
//! Through the bridge: bash in a real sandbox (Docker, `network: none`, the
//! default image) runs `git`/`curl` with `HTTPS_PROXY` at the executor's
//! loopback forwarder → the sandbox's Unix socket → a real `vault-bridge
//! serve` (which adds the session's relayed token) → the Git server.
//! Direct: the same `git`/`curl` on the host with the token in the request.
//! Same client, direct: the default image's own `git`/`curl` in a container
//! on the host's network (no bridge, token in the request), so the path's
//! cost can be told from the cost of the image's client builds.
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

/// curl's clock at TCP connected, TLS ready, first byte, done (seconds).
const PHASES: &str = "%{time_connect} %{time_appconnect} %{time_starttransfer} %{time_total}\\n";

/// The four [`PHASES`] of each line of curl's output.
fn phases(out: &str) -> Vec<[Duration; 4]> {
    out.lines()
        .filter_map(|l| {
            let v: Vec<Duration> = l
                .split_whitespace()
                .filter_map(|x| x.parse::<f64>().ok())
                .map(Duration::from_secs_f64)
                .collect();
            <[Duration; 4]>::try_from(v).ok()
        })
        .collect()
}

/// Median of each phase.
fn phase_medians(v: &mut [[Duration; 4]]) -> [Duration; 4] {
    std::array::from_fn(|i| {
        let mut col: Vec<Duration> = v.iter().map(|p| p[i]).collect();
        median(&mut col)
    })
}

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
        let out = self.sh(&timed_script(command)).await?;
        timed_result(command, &out)
    }
}

/// `command` wrapped so the shell prints its duration in µs (or its output
/// and `BENCH-FAILED`).
fn timed_script(command: &str) -> String {
    format!(
        "s=$(date +%s%N); {command} >/tmp/bench.out 2>&1 || {{ cat /tmp/bench.out; echo BENCH-FAILED; }}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    )
}

/// The duration [`timed_script`] printed.
fn timed_result(command: &str, out: &str) -> Result<Duration> {
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

/// A container of the default image on the host's network: the same
/// `git`/`curl` builds as the sandbox, reaching the servers directly.
struct HostNetContainer {
    name: String,
}

impl HostNetContainer {
    fn start(image: &str, ca_file: &std::path::Path) -> Result<Self> {
        let name = format!("airlock-bench-direct-{}", std::process::id());
        run_ok(
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--rm",
                    "--network",
                    "host",
                    "--name",
                    &name,
                    "-e",
                    "HOME=/tmp",
                    "-e",
                    "GIT_SSL_CAINFO=/bench-ca.pem",
                    "-e",
                    "GIT_AUTHOR_NAME=bench",
                    "-e",
                    "GIT_AUTHOR_EMAIL=bench@airlock.invalid",
                    "-e",
                    "GIT_COMMITTER_NAME=bench",
                    "-e",
                    "GIT_COMMITTER_EMAIL=bench@airlock.invalid",
                    "-v",
                ])
                .arg(format!("{}:/bench-ca.pem:ro", ca_file.display()))
                .args(["--entrypoint", "sleep", image, "infinity"]),
        )?;
        Ok(Self { name })
    }

    fn sh(&self, command: &str) -> Result<String> {
        let o = run_ok(Command::new("docker").args(["exec", &self.name, "sh", "-c", command]))?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Time `command` with the container's clock, like [`Sandbox::timed`].
    fn timed(&self, command: &str) -> Result<Duration> {
        let out = self.sh(&timed_script(command))?;
        timed_result(command, &out)
    }
}

impl Drop for HostNetContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
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
    // The host's git on PATH, and Debian's /usr/bin/git when that is
    // another build (the machine may carry both): the same operations with
    // each, so a difference of git builds can be told from the path's cost.
    let git_version = |path: Option<&str>| -> Result<String> {
        let mut c = git(&home);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        let o = run_ok(c.arg("--version"))?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .trim()
            .replace("git version ", ""))
    };
    let mut host_gits: Vec<(Option<&str>, String)> = vec![(None, git_version(None)?)];
    if std::path::Path::new("/usr/bin/git").exists() {
        let debian = git_version(Some("/usr/bin:/bin"))?;
        if debian != host_gits[0].1 {
            host_gits.push((Some("/usr/bin:/bin"), debian));
        }
    }
    let host_git = |path: Option<&str>| {
        let mut c = git(&home);
        c.env("GIT_SSL_CAINFO", &ca_file);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        c
    };
    let same = HostNetContainer::start(&image, &ca_file)?;
    let image_git = same.sh("git --version")?.trim().replace("git version ", "");
    let (mut clone_s, mut push_s) = (vec![], vec![]);
    let mut clone_h: Vec<Vec<Duration>> = vec![vec![]; host_gits.len()];
    let mut push_h: Vec<Vec<Duration>> = vec![vec![]; host_gits.len()];
    let (mut clone_c, mut push_c) = (vec![], vec![]);
    for i in 0..reps {
        clone_c.push(same.timed(&format!(
            "rm -rf /tmp/c{i} && git clone -q {direct_url} /tmp/c{i}"
        ))?);
        same.sh(&format!(
            "head -c {FILE_BYTES} /dev/urandom > /tmp/c{i}/s{i}.bin && git -C /tmp/c{i} add -A && git -C /tmp/c{i} commit -q -m same-client"
        ))?;
        push_c.push(same.timed(&format!(
            "git -C /tmp/c{i} push -q origin HEAD:refs/heads/same-{i}"
        ))?);
        same.sh(&format!("rm -rf /tmp/c{i}"))?;
        for (h, (path, _)) in host_gits.iter().enumerate() {
            let dest = work.path().join(format!("direct-{i}-{h}"));
            clone_h[h].push(time(
                host_git(*path)
                    .args(["clone", "-q", &direct_url])
                    .arg(&dest),
            )?);
            // A 1 MiB commit each, pushed to its own branch.
            std::fs::write(dest.join(format!("d{i}.bin")), random_bytes(FILE_BYTES)?)?;
            run_ok(host_git(*path).arg("-C").arg(&dest).args(["add", "-A"]))?;
            run_ok(
                host_git(*path)
                    .arg("-C")
                    .arg(&dest)
                    .args(["commit", "-q", "-m", "direct"]),
            )?;
            push_h[h].push(time(host_git(*path).arg("-C").arg(&dest).args([
                "push",
                "-q",
                "origin",
                &format!("HEAD:refs/heads/direct-{i}-{h}"),
            ]))?);
            std::fs::remove_dir_all(&dest)?;
        }
        clone_s.push(
            sb.timed(&format!("rm -rf /tmp/c{i} && git clone -q {url} /tmp/c{i}"))
                .await?,
        );
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
        sb.sh(&format!("rm -rf /tmp/c{i}; echo ok")).await?;
        eprintln!("repetition {}/{reps} done", i + 1);
    }

    // Small HTTPS GETs, a new curl (new connection) each, curl's own clock.
    let small_url = web.url("small.txt");
    let out = sb
        .sh(&format!(
            "for i in $(seq {GETS}); do curl -sS -o /dev/null -w '{PHASES}' {small_url}; done"
        ))
        .await?;
    let mut phases_s = phases(&out);
    let mut get_s: Vec<Duration> = phases_s.iter().map(|p| p[3]).collect();
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
    let out = same.sh(&format!(
        "for i in $(seq {GETS}); do curl -sS -o /dev/null -w '{PHASES}' --cacert /bench-ca.pem {small_url}; done"
    ))?;
    let mut phases_c = phases(&out);
    let mut get_c: Vec<Duration> = phases_c.iter().map(|p| p[3]).collect();
    if get_s.len() != GETS || get_c.len() != GETS {
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
    let out = same.sh(&format!(
        "curl -sS -w '\\n%{{time_total}}\\n' --cacert /bench-ca.pem {urls} 2>&1"
    ))?;
    let mut keep_c: Vec<Duration> = out
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
    if keep_s.len() < GETS / 2 || keep_d.len() < GETS / 2 || keep_c.len() < GETS / 2 {
        bail!(
            "kept-alive GETs: sandbox {} direct {} same client {}",
            keep_s.len(),
            keep_d.len(),
            keep_c.len()
        );
    }
    drop(same);
    svc.destroy(DestroyRequest {
        sandbox_id: p.sandbox_id,
    })
    .await?;

    let mut clone_d = clone_h[0].clone();
    let mut push_d = push_h[0].clone();
    let (cd, cs, cc) = (
        median(&mut clone_d),
        median(&mut clone_s),
        median(&mut clone_c),
    );
    let (pd, ps, pc) = (
        median(&mut push_d),
        median(&mut push_s),
        median(&mut push_c),
    );
    let (gd, gs, gc) = (median(&mut get_d), median(&mut get_s), median(&mut get_c));
    let (kd, ks, kc) = (
        median(&mut keep_d),
        median(&mut keep_s),
        median(&mut keep_c),
    );
    println!();
    println!(
        "bench-egress-sandbox: {reps} repetitions (median), repository {} MiB ({FILES} random files), push of a 1 MiB commit, {GETS} small GETs (new curl each); image {image}, sandbox cpu {cores}; loopback nginx + fcgiwrap + git http-backend over HTTPS",
        FILES * FILE_BYTES / (1024 * 1024)
    );
    println!();
    println!("| operation | A: host's git/curl, direct | B: image's git/curl, host network, direct | C: sandbox through the bridge | C vs A | C vs B (the path) |");
    println!("|---|---|---|---|---|---|");
    let ratio = |c: Duration, x: Duration| format!("{:.2}x", c.as_secs_f64() / x.as_secs_f64());
    println!(
        "| git clone | {} | {} | {} | {} | {} |",
        ms(cd),
        ms(cc),
        ms(cs),
        ratio(cs, cd),
        ratio(cs, cc)
    );
    println!(
        "| git push (1 MiB commit) | {} | {} | {} | {} | {} |",
        ms(pd),
        ms(pc),
        ms(ps),
        ratio(ps, pd),
        ratio(ps, pc)
    );
    let added = |c: Duration, x: Duration| {
        if c >= x {
            format!("+{}", us(c - x))
        } else {
            format!("-{}", us(x - c))
        }
    };
    println!(
        "| small HTTPS GET p50, new connection (curl time_total) | {} | {} | {} | {} | {} |",
        us(gd),
        us(gc),
        us(gs),
        added(gs, gd),
        added(gs, gc)
    );
    println!(
        "| small HTTPS GET p50, kept-alive connection | {} | {} | {} | {} | {} |",
        us(kd),
        us(kc),
        us(ks),
        added(ks, kd),
        added(ks, kc)
    );
    let (pb, pc) = (phase_medians(&mut phases_c), phase_medians(&mut phases_s));
    println!();
    println!("New-connection GET phases, p50 of curl's clock (B: same client direct; C: through the bridge):");
    println!();
    println!("| phase | B | C | C - B |");
    println!("|---|---|---|---|");
    for (i, name) in [
        "TCP connected (to the server / to the forwarder)",
        "TLS ready (C: after CONNECT)",
        "first byte",
        "done",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {} | {} | {} |",
            us(pb[i]),
            us(pc[i]),
            added(pc[i], pb[i])
        );
    }
    println!();
    println!("Each git on the host, direct (the same repetitions), against C (the image's git is {image_git}):");
    println!();
    println!("| host git | clone | push | C clone vs it | C push vs it |");
    println!("|---|---|---|---|---|");
    for (h, (path, version)) in host_gits.iter().enumerate() {
        let (c, p) = (median(&mut clone_h[h]), median(&mut push_h[h]));
        println!(
            "| {version} ({}) | {} | {} | {} | {} |",
            path.map_or("PATH".to_owned(), |p| format!("PATH={p}")),
            ms(c),
            ms(p),
            ratio(cs, c),
            ratio(ps, p)
        );
    }
    Ok(())
}
