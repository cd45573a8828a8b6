//! Sandbox lifecycle against the real Docker Engine: hardening read back with
//! `docker inspect`, fork bomb and memory balloon contained while another
//! sandbox keeps answering, a container killed mid-call, TTL and idle
//! reaping, the warm pool, kill -9 of the agent and restart (adopt / reap),
//! and 20 concurrent sandboxes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use airlock_tests::sandbox::{
    agent_containers, container_processes, docker_inspect, exec, exec_id, executor_path, provision,
    text, tool_use_id, TestAgent, Tools,
};
use protocol::sandbox::{Disposition, ProvisionRequest};
use serde_json::json;
use testkit::{eventually, eventually_async};

/// Wait up to `secs` seconds until `agent` owns `n` containers.
async fn containers_become(agent: &TestAgent, n: usize, secs: u64, what: &str) {
    eventually(what, Duration::from_secs(secs), || {
        agent_containers(&agent.agent_id).len() == n
    })
    .await;
}

/// Wait until a process whose command line contains `needle` runs in the
/// sandbox's container at least `n` times.
async fn running_in(sandbox_id: &str, needle: &str, n: usize) {
    eventually(
        &format!("{n} `{needle}` processes in sandbox {sandbox_id}"),
        Duration::from_secs(30),
        || {
            container_processes(sandbox_id)
                .iter()
                .filter(|p| p.contains(needle))
                .count()
                >= n
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_is_read_back_with_docker_inspect() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let i = docker_inspect(&sbx);
    let hc = &i["HostConfig"];
    assert_eq!(i["Config"]["User"], "1000:1000");
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert!(hc["CapAdd"].is_null() || hc["CapAdd"] == json!([]));
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["Privileged"], false);
    let secopt: Vec<String> = serde_json::from_value(hc["SecurityOpt"].clone()).unwrap();
    assert!(
        secopt.contains(&"no-new-privileges".to_string()),
        "{secopt:?}"
    );
    assert!(
        !secopt.iter().any(|o| o.contains("unconfined")),
        "{secopt:?}"
    );
    assert_eq!(hc["PidsLimit"], 128);
    assert_eq!(hc["Memory"], 256 * 1024 * 1024);
    assert_eq!(hc["MemorySwap"], 256 * 1024 * 1024);
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["LogConfig"]["Type"], "none");
    assert!(hc["Tmpfs"]["/tmp"].as_str().unwrap().contains("size="));
    assert!(hc["Tmpfs"]["/workspace"]
        .as_str()
        .unwrap()
        .contains("size="));
    // exactly one host path: the executor, read-only; never the Docker socket
    let mounts = i["Mounts"].as_array().unwrap();
    let binds: Vec<_> = mounts.iter().filter(|m| m["Type"] == "bind").collect();
    assert_eq!(binds.len(), 1, "{mounts:?}");
    assert_eq!(binds[0]["RW"], false);
    assert_eq!(
        PathBuf::from(binds[0]["Source"].as_str().unwrap()),
        executor_path()
    );
    assert!(!i.to_string().contains("docker.sock"));
    let labels = &i["Config"]["Labels"];
    assert_eq!(labels["airlock.agent_id"], agent.agent_id.as_str());
    assert_eq!(labels["airlock.sandbox_id"], sbx.as_str());
    assert!(labels["airlock.expires_at"].as_str().is_some());

    // and from the inside: not root, no capabilities, seccomp filtering, no new privs, no network
    let r = exec(
        &svc,
        &sbx,
        "bash",
        json!({"command": "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; ls /sys/class/net"}),
    )
    .await;
    let t = text(&r);
    assert!(t.starts_with("1000\n"), "{t}");
    assert!(t.contains("CapEff:\t0000000000000000"), "{t}");
    assert!(t.contains("CapBnd:\t0000000000000000"), "{t}");
    assert!(t.contains("NoNewPrivs:\t1"), "{t}");
    assert!(t.contains("Seccomp:\t2"), "{t}");
    assert_eq!(t.lines().last(), Some("lo"), "only loopback: {t}");
    svc.shutdown(true).await;
    assert!(agent_containers(&agent.agent_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_and_memory_balloon_are_contained() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let victim = provision(&svc).await;
    let bystander = provision(&svc).await;

    let svc2 = svc.clone();
    let v2 = victim.clone();
    let bomb = tokio::spawn(async move {
        exec(
            &svc2,
            &v2,
            "bash",
            json!({"command": "bomb() { bomb | bomb; }; bomb", "timeout_ms": 8000}),
        )
        .await
    });
    // the other sandbox keeps answering while the bomb runs (it has spread
    // to half the pids limit)
    running_in(&victim, "bash", 64).await;
    for i in 0..5 {
        let r = exec(
            &svc,
            &bystander,
            "bash",
            json!({"command": format!("echo ok-{i}")}),
        )
        .await;
        assert_eq!(text(&r).trim(), format!("ok-{i}"));
    }
    let r = bomb.await.unwrap();
    assert!(r.is_error, "{}", text(&r));
    assert!(text(&r).contains("timed out after 8000 ms"), "{}", text(&r));
    let pids = docker_inspect(&victim)["HostConfig"]["PidsLimit"].clone();
    assert_eq!(pids, 128);
    // the victim recovers: the bomb's process group was killed
    let r = exec(&svc, &victim, "bash", json!({"command": "echo recovered"})).await;
    assert_eq!(text(&r).trim(), "recovered", "{}", text(&r));

    // memory balloon: the shell grows past the 256 MiB limit and is OOM-killed
    let svc2 = svc.clone();
    let v2 = victim.clone();
    let balloon = tokio::spawn(async move {
        exec(&svc2, &v2, "bash", json!({"command": "a=xxxxxxxxxxxxxxxx; while true; do a=\"$a$a\"; done", "timeout_ms": 60000})).await
    });
    let r = exec(
        &svc,
        &bystander,
        "bash",
        json!({"command": "echo still-here"}),
    )
    .await;
    assert_eq!(text(&r).trim(), "still-here");
    let r = balloon.await.unwrap();
    assert!(r.is_error, "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("memory") || t.contains("killed"), "{t}");
    let r = exec(&svc, &bystander, "bash", json!({"command": "echo fine"})).await;
    assert_eq!(text(&r).trim(), "fine");
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_killed_mid_call_is_a_tool_error_and_next_provision_is_fresh() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let id = tool_use_id();
    let svc2 = svc.clone();
    let (sbx2, id2) = (sbx.clone(), id.clone());
    let call = tokio::spawn(async move {
        exec_id(&svc2, &sbx2, &id2, "bash", json!({"command": "sleep 60"})).await
    });
    running_in(&sbx, "sleep 60", 1).await;
    let out = std::process::Command::new("docker")
        .args(["kill", &format!("airlock-{sbx}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_error);
    assert!(text(&r).contains("sandbox died"), "{}", text(&r));
    // the first answer and the record agree: the outcome is unknown
    assert_eq!(r.disposition, Disposition::Unknown);
    // re-sending the same tool_use_id says the outcome is unknown
    let again = exec_id(&svc, &sbx, &id, "bash", json!({"command": "sleep 60"})).await;
    assert_eq!(again.disposition, Disposition::Unknown);
    // a new call on the dead sandbox is a clear tool error
    Tools::new(&svc, &sbx)
        .fails_with("bash", json!({"command": "true"}), "is gone")
        .await;
    // the next provision gives a fresh, working one
    let fresh = provision(&svc).await;
    assert_ne!(fresh, sbx);
    let r = exec(&svc, &fresh, "bash", json!({"command": "echo new"})).await;
    assert_eq!(text(&r).trim(), "new");
    containers_become(&agent, 1, 20, "dead container removed").await;
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_idle_reaping_and_destroy() {
    let mut agent = TestAgent::new();
    agent.sandbox.idle_timeout_seconds = Some(8);
    let (svc, _) = agent.start().await;
    let idle = provision(&svc).await;
    let doomed = provision(&svc).await;
    // last, so that a slow machine does not reap it before it is listed (the
    // expiry label has whole seconds: the TTL is between three and four seconds)
    let ttl = svc
        .provision(ProvisionRequest {
            ttl_seconds: Some(4),
            session_id: Some("sesn_1".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .sandbox_id;
    // Membership, not counts: on a loaded machine a reaper may already have
    // taken the idle or the TTL sandbox by the time the list is read.
    let listed =
        |list: &[protocol::sandbox::SandboxInfo], id: &str| list.iter().any(|s| s.sandbox_id == id);
    let list = svc.list().await.unwrap();
    assert!(listed(&list, &doomed), "{list:?}");
    assert!(
        list.iter().any(|s| s.sandbox_id == ttl
            && s.session_id.as_deref() == Some("sesn_1")
            && s.expires_at.is_some()),
        "{list:?}"
    );
    assert!(list
        .iter()
        .all(|s| [&idle, &doomed, &ttl].contains(&&s.sandbox_id)));
    svc.destroy(protocol::sandbox::DestroyRequest {
        sandbox_id: doomed.clone(),
    })
    .await
    .unwrap();
    assert!(!listed(&svc.list().await.unwrap(), &doomed));
    eventually_async(
        "ttl and idle sandboxes reaped",
        Duration::from_secs(30),
        || {
            let svc = svc.clone();
            async move { svc.list().await.unwrap().is_empty() }
        },
    )
    .await;
    for s in [&ttl, &idle] {
        Tools::new(&svc, s)
            .fails_with("bash", json!({"command": "true"}), "is gone")
            .await;
    }
    containers_become(&agent, 0, 30, "reaped containers removed").await;
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_out_and_refills() {
    let mut agent = TestAgent::new();
    agent.pool.size = Some(2);
    let (svc, _) = agent.start().await;
    let image = airlock_tests::sandbox::test_image();
    eventually_async("pool filled", Duration::from_secs(60), || {
        let svc = svc.clone();
        let image = image.clone();
        async move { svc.pool_ready(&image) == 2 }
    })
    .await;
    let mut env = std::collections::BTreeMap::new();
    env.insert("GREETING".to_string(), "hello".to_string());
    env.insert("ANTHROPIC_API_KEY".to_string(), "must-not-leak".to_string());
    let p = svc
        .provision(ProvisionRequest {
            env,
            session_id: Some("sesn_pool".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(p.from_pool);
    let r = exec(
        &svc,
        &p.sandbox_id,
        "bash",
        json!({"command": "echo $GREETING; echo \"[$ANTHROPIC_API_KEY]\""}),
    )
    .await;
    assert_eq!(text(&r), "hello\n[]\n");
    eventually_async("pool refilled", Duration::from_secs(60), || {
        let svc = svc.clone();
        let image = image.clone();
        async move { svc.pool_ready(&image) == 2 }
    })
    .await;
    // a profile the pool does not hold is created cold
    let cold = svc
        .provision(ProvisionRequest {
            memory_bytes: Some(128 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!cold.from_pool);
    svc.shutdown(false).await;
    // shutdown removes warm containers and keeps handed-out ones
    assert_eq!(agent_containers(&agent.agent_id).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sandboxes_run_tool_calls() {
    let mut agent = TestAgent::new();
    agent.sandbox.default_memory_bytes = Some(64 * 1024 * 1024);
    let (svc, _) = agent.start().await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let sbx = provision(&svc).await;
            for k in 0..3 {
                let content = format!("sandbox {n} round {k}\n");
                let w = exec(
                    &svc,
                    &sbx,
                    "write",
                    json!({"file_path": "f.txt", "content": content}),
                )
                .await;
                assert!(!w.is_error, "{}", text(&w));
                let r = exec(
                    &svc,
                    &sbx,
                    "bash",
                    json!({"command": "cat f.txt; echo $((6*7))"}),
                )
                .await;
                assert_eq!(text(&r), format!("{content}42\n"));
                let g = exec(&svc, &sbx, "grep", json!({"pattern": "round"})).await;
                assert!(text(&g).contains(&format!("sandbox {n} round {k}")));
            }
            sbx
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(svc.list().await.unwrap().len(), 20);
    svc.shutdown(true).await;
    assert!(agent_containers(&agent.agent_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_agent_then_restart_adopts_or_reaps() {
    let agent = TestAgent::new();
    // The agent to kill runs in its own process: tests/src/bin/sandbox-child-agent.rs.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-child-agent"))
        .arg(&agent.agent_id)
        .arg(&agent.data_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = agent.data_dir.join("child-ready");
    eventually(
        "the child agent to be ready",
        Duration::from_secs(120),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "child agent exited early"
            );
            ready.exists()
        },
    )
    .await;
    let ids = std::fs::read_to_string(&ready).unwrap();
    let mut ids = ids.lines();
    let (keep, short, short_expires_at) = (
        ids.next().unwrap().to_owned(),
        ids.next().unwrap().to_owned(),
        ids.next().unwrap().to_owned(),
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // keep + short + one warm container are left behind by the dead agent
    assert_eq!(agent_containers(&agent.agent_id).len(), 3);
    // let `short` expire: the agent compares its expiry with the wall clock
    // (whole unix seconds), so wait for the wall clock, by the agent's own rule
    let expires_at = time::OffsetDateTime::parse(
        &short_expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp() as u64;
    eventually(
        "the short-lived sandbox to expire",
        Duration::from_secs(30),
        || sandbox_agent::sandbox::docker::remaining(expires_at).is_zero(),
    )
    .await;

    let (svc, report) = agent.start().await;
    assert_eq!(report.adopted, vec![keep.clone()], "{report:?}");
    assert_eq!(
        report.removed.len(),
        2,
        "expired and warm containers reaped: {report:?}"
    );
    assert!(report.removed.contains(&short));
    // the adopted sandbox kept its state and answers
    let r = exec(&svc, &keep, "read", json!({"file_path": "state.txt"})).await;
    assert_eq!(text(&r), "     1\tbefore crash\n");
    // the call that was running when the agent died is reported as unknown, not re-run
    let r = exec_id(
        &svc,
        &keep,
        "toolu_inflight",
        "bash",
        json!({"command": "sleep 3", "timeout_ms": 10000}),
    )
    .await;
    assert_eq!(r.disposition, Disposition::Unknown, "{}", text(&r));
    assert_eq!(agent_containers(&agent.agent_id).len(), 1);
    svc.shutdown(false).await;
    drop(svc);

    // a restart with on_restart = reap removes the rest: nothing leaks
    let mut reaper = TestAgent::with_identity(&agent.agent_id, &agent.data_dir);
    reaper.sandbox.on_restart = Some("reap".into());
    let (svc, report) = reaper.start().await;
    assert_eq!(report.removed, vec![keep]);
    assert!(agent_containers(&agent.agent_id).is_empty());
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_oci_runtime_is_used_when_installed_else_default() {
    let mut agent = TestAgent::new();
    agent.sandbox.runtime = Some("runsc".into());
    let info = std::process::Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .unwrap();
    let runtimes: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let expected = if runtimes.get("runsc").is_some() {
        "runsc"
    } else {
        "runc"
    };
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    assert_eq!(docker_inspect(&sbx)["HostConfig"]["Runtime"], expected);
    let r = exec(&svc, &sbx, "bash", json!({"command": "echo ok"})).await;
    assert_eq!(text(&r).trim(), "ok");
    svc.shutdown(true).await;
}
