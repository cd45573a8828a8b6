//! Any replica reaches any agent: two real `control-plane serve` replicas
//! on one PostgreSQL (session store and catalog shared) and one shared CA
//! (B is configured with A's CA files), and one real `sandbox-agent run`
//! enrolled at A with `[control_plane] addresses` naming both, so it holds
//! a link to each.
//!
//! A session's tool calls run through the replica holding its lease; that
//! replica is SIGKILLed in the middle of the session; the other takes the
//! session over once the (short) lease expires, and its next calls reach
//! the SAME agent over its own link: the file written before the kill is
//! still in the sandbox, every call ran in one sandbox, and the agent's
//! execution record has one `start` per tool_use id (no call ran twice).
//! The survivor renews the certificate of the agent it did not enroll.
//! Then the killed replica is restarted, the agent relinks to it, and a
//! revocation done at the survivor closes the agent's link at the
//! restarted replica too (its gateway reads the revocation from the
//! catalog); the time from the revoke command to that close is printed.
//!
//! Needs `AIRLOCK_TEST_PG_URL` and Docker with the test image; without
//! PostgreSQL the test is skipped, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use airlock_tests::replicas::{instance_id, live_holder};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, runtime_toml, start_replicas, Api,
    ContainerCleanup, RecordLine,
};
use serde_json::{json, Value};
use testkit::eventually_async;

const STEPS: usize = 10;

/// Step 0 writes the marker; the last step reads it back; the rest take a
/// moment each so that the kill lands in the middle.
fn command(k: usize) -> String {
    match k {
        0 => "echo ha-links-marker > /tmp/ha_marker; echo wrote".to_owned(),
        k if k == STEPS - 1 => "cat /tmp/ha_marker".to_owned(),
        k => format!("sleep 0.4; echo step {k}"),
    }
}

fn script(req: &RequestCtx) -> Reply {
    let k = req.tool_uses_so_far();
    if k < STEPS {
        Turn::new()
            .text(format!("step {k}"))
            .tool_use(
                format!("toolu_ha_{k}"),
                "bash",
                json!({ "command": command(k) }),
            )
            .into()
    } else {
        Reply::text(format!("done after {STEPS} steps"))
    }
}

/// The pid in the lease holder name (`host-pid-suffix`) of an unexpired lease.
async fn results(api: &Api, session_id: &str) -> usize {
    api.events(session_id)
        .await
        .map(|e| {
            e.iter()
                .filter(|e| e["type"] == "agent.tool_result")
                .count()
        })
        .unwrap_or(0)
}

fn record(agent: &Agent) -> Vec<RecordLine> {
    let dir = agent.identity_dir();
    let text =
        std::fs::read_to_string(dir.parent().unwrap().join("executions.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| RecordLine {
            t: v["t"].as_str().unwrap_or_default().to_owned(),
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            sandbox_id: v["sandbox_id"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_the_other_replica_and_keeps_its_sandbox_and_a_revocation_reaches_both()
{
    let Some(url) = airlock_tests::replicas::pg_url("ha_links") else {
        return;
    };
    let started = Instant::now();
    let schema = format!(
        "halinks_{}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    let model = FakeModel::builder()
        .latency(Duration::from_millis(40))
        .start(script)
        .await
        .unwrap();
    let shared = format!(
        "{}\n[session_store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}\"\npostgres_max_connections = 8\ntail_poll_interval_seconds = 1\n\
         \n[catalog]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}_cat\"\n",
        runtime_toml(&model.base_url(), 2.0)
    );
    let mut a = ControlPlane::configure(CpOptions {
        extra_toml: shared.clone(),
        agent_cert_lifetime_seconds: Some(24),
        ..CpOptions::default()
    })
    .unwrap();
    // B signs with A's CA (the lines continue A's `[pki]` section).
    let pki = a.dir().join("data").join("pki");
    let mut b = ControlPlane::configure(CpOptions {
        extra_toml: format!(
            "ca_cert_file = \"{}\"\nca_key_file = \"{}\"\n{shared}",
            pki.join("ca.crt").display(),
            pki.join("ca.key").display()
        ),
        agent_cert_lifetime_seconds: Some(24),
        ..CpOptions::default()
    })
    .unwrap();
    let mut apis = start_replicas(&mut [&mut a, &mut b], "ha").await.unwrap();
    let (api_b, api_a) = (apis.pop().unwrap(), apis.pop().unwrap());
    let store = airlock_tests::replicas::session_store(&url, &schema).await;

    // One agent, enrolled at A, linked to both.
    let env = api_a.create_environment("ha-links").await.unwrap();
    let join = a.join_string(&env).unwrap();
    let mut agent = Agent::enroll(&a, &join, AgentOptions::default()).unwrap();
    let _cleanup = ContainerCleanup(agent.agent_id().to_owned());
    let agent_id = agent.agent_id().to_owned();
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    let mut config = airlock_tests::sandbox::sandbox_ready_agent_config(
        &config,
        &airlock_tests::sandbox::test_image(),
    );
    config.push_str(&format!(
        "\n[control_plane]\naddresses = [\"{}\", \"{}\"]\nserver_name = \"127.0.0.1\"\n",
        a.tunnel_addr(),
        b.tunnel_addr()
    ));
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    let diag = |cps: &[ControlPlane; 2], agent: &Agent| {
        format!(
            "\n--- A log:\n{}\n--- B log:\n{}\n--- agent log:\n{}",
            tail(&cps[0].log(), 40),
            tail(&cps[1].log(), 40),
            tail(&agent.log(), 40)
        )
    };
    let (id_a, id_b) = (instance_id(&a), instance_id(&b));
    assert_ne!(id_a, id_b, "each replica has its own instance id");
    let mut cps = [a, b];
    for cp in &cps {
        if let Err(e) = cp.wait_connected(&agent_id, Duration::from_secs(60)) {
            panic!("{e}{}", diag(&cps, &agent));
        }
    }
    eprintln!("agent {agent_id} linked to both replicas");

    // A session; whoever takes it is the one killed.
    let agent_def = api_a.create_agent("ha").await.unwrap();
    let sid = api_a.create_session(&agent_def, &env).await.unwrap();
    api_a
        .user_message(&sid, &format!("take {STEPS} steps"))
        .await
        .unwrap();
    let holder = eventually_async(
        "a replica in the middle of the session",
        Duration::from_secs(60),
        || {
            let (store, sid, api) = (&store, &sid, &api_a);
            async move {
                let n = results(api, sid).await;
                let h = live_holder(store, sid).await?;
                (2..STEPS - 4).contains(&n).then_some((h, n))
            }
        },
    )
    .await;
    let victim_is_a = holder.0 == id_a;
    let before = holder.1;
    assert!(victim_is_a || holder.0 == id_b, "holder {holder:?}");
    let (k, sv, api) = if victim_is_a {
        (0, 1, &api_b)
    } else {
        (1, 0, &api_a)
    };
    cps[k].kill9().unwrap();
    let killed_at = Instant::now();
    eprintln!(
        "killed the lease holder ({}) at {before} results",
        if victim_is_a { "A" } else { "B" }
    );
    let events = match api.wait_end_turn(&sid, Duration::from_secs(120)).await {
        Ok(e) => e,
        Err(e) => panic!("{e}{}", diag(&cps, &agent)),
    };
    eprintln!(
        "the survivor finished the session {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    let commands: Vec<String> = uses
        .iter()
        .map(|u| u["input"]["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(commands, (0..STEPS).map(command).collect::<Vec<_>>());
    let last = events
        .iter()
        .rfind(|e| e["type"] == "agent.tool_result")
        .unwrap();
    assert!(
        content_text(last).contains("ha-links-marker"),
        "the file written before the kill is in the sandbox the survivor reached: {last}"
    );

    // The agent's record: every call ran once, all in one sandbox.
    let lines = record(&agent);
    let mut starts: HashMap<String, usize> = HashMap::new();
    for l in lines.iter().filter(|l| l.t == "start") {
        *starts.entry(l.id.clone()).or_default() += 1;
    }
    assert_eq!(
        starts.len(),
        STEPS,
        "every step reached the agent: {starts:?}"
    );
    assert!(
        starts.values().all(|n| *n == 1),
        "a call started twice: {starts:?}"
    );
    let sandboxes: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.sandbox_id.as_str()).collect();
    assert_eq!(sandboxes.len(), 1, "one sandbox: {sandboxes:?}");

    // The survivor renews a certificate it did not issue at enrollment
    // (24 s certificates renew every 16 s over the one live link).
    testkit::eventually_blocking(
        "the survivor to renew the agent's certificate",
        Duration::from_secs(40),
        || {
            cps[sv]
                .log()
                .lines()
                .any(|l| l.contains("certificate renewed over the tunnel") && l.contains(&agent_id))
                .then_some(())
        },
    );

    // The killed replica comes back; the agent relinks; a revocation at the
    // survivor closes the link at the restarted one too.
    cps[k].start().unwrap();
    if let Err(e) = cps[k].wait_connected(&agent_id, Duration::from_secs(60)) {
        panic!("{e}{}", tail(&agent.log(), 40));
    }
    let revoke_at = Instant::now();
    let out = cps[sv].cli(&["agents", "revoke", &agent_id]).unwrap();
    eprintln!("revoke at the survivor: {}", out.trim());
    testkit::eventually_blocking(
        "the restarted replica to close the revoked agent's link",
        Duration::from_secs(10),
        || cps[k].connections_of(&agent_id).is_empty().then_some(()),
    );
    let closed_after = revoke_at.elapsed();
    testkit::eventually_blocking(
        "the restarted replica to log the revocation read from the catalog",
        Duration::from_secs(5),
        || {
            cps[k]
                .log()
                .lines()
                .any(|l| {
                    (l.contains("agent revoked at another replica")
                        || l.contains("revoked agent refused"))
                        && l.contains(&agent_id)
                })
                .then_some(())
        },
    );
    eprintln!(
        "revocation at one replica: link at the other closed {} ms after the revoke command (includes the CLI process)",
        closed_after.as_millis()
    );
    testkit::eventually_blocking("the revoked agent to stop", Duration::from_secs(15), || {
        (!agent.is_running()).then_some(())
    });
    for cp in &mut cps {
        cp.terminate().unwrap();
    }
    eprintln!("ha_links took {:.1} s", started.elapsed().as_secs_f64());
}
