//! End to end through the tunnel: control plane (in-process gateway) →
//! `sandbox-agent run` (real binary, enrolled) → Docker container → result,
//! with streamed bash output, a policy refusal and a `tool_use_id` replay
//! crossing the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_tests::deploy::{
    tail, Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane,
};
use airlock_tests::sandbox::{executor_path, remove_agent_containers, test_image};
use control_plane::gateway::Target;
use protocol::sandbox::{DestroyRequest, Disposition, ExecuteRequest, ProvisionRequest};
use protocol::{ErrorCode, Reply, Request, Response};
use serde_json::json;

/// Removes the agent's containers even if the test fails.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_agent_containers(&self.0);
    }
}

/// Point an enrolled agent's `[sandbox]` at the real executor and the test image.
fn point_at_test_image(agent: &Agent, image: &str) {
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with("executor_path") {
            out.push_str(&format!(
                "executor_path = \"{}\"\ndefault_image = \"{image}\"\ndefault_memory_bytes = 268435456\ndefault_disk_bytes = 67108864\n",
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
    std::fs::write(agent.config_path(), out).unwrap();
}

/// A control plane with its gateway in process and a real agent enrolled
/// into environment `env`, pointed at the test image, running and connected;
/// returns the image, both, the guard that removes the agent's containers,
/// and the agent as a gateway target.
async fn connected_agent(
    env: &str,
) -> (
    String,
    ControlPlane,
    InProcessControlPlane,
    Agent,
    Cleanup,
    Target,
) {
    let image = test_image();
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    let join = cp.join_string(env).unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let cleanup = Cleanup(agent.agent_id().to_owned());
    point_at_test_image(&agent, &image);
    agent.run().unwrap();
    let target = Target::Agent(agent.agent_id().into());
    app.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    (image, cp, app, agent, cleanup, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_to_agent_to_container_and_back() {
    let (image, _cp, app, mut agent, _cleanup, target) = connected_agent("env-sbx").await;

    // provision
    let (_, r) = app
        .gateway()
        .call_unary(
            &target,
            &Request::Provision(ProvisionRequest {
                session_id: Some("sesn_e2e".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let Response::Ok(Reply::Provision(p)) = r else {
        panic!("provision: {r:?}\n{}", tail(&agent.log(), 30))
    };
    assert_eq!(p.image, image);

    // execute bash with streamed output
    let count = json!({"command": "echo hello from $(id -u); echo x >> n; wc -l < n"});
    let exec = |id: &str, input: serde_json::Value, stream: bool| {
        Request::Execute(ExecuteRequest {
            sandbox_id: p.sandbox_id.clone(),
            tool_use_id: id.to_owned(),
            name: "bash".into(),
            input,
            stream,
        })
    };
    let call = exec("toolu_e2e_1", count.clone(), true);
    let (streamed, r) = app.gateway().call_unary(&target, &call).await.unwrap();
    let Response::Ok(Reply::Execute(result)) = r else {
        panic!("execute: {r:?}")
    };
    assert!(!result.is_error);
    let text = result.content[0]["text"].as_str().unwrap().to_owned();
    assert_eq!(text, "hello from 1000\n1\n");
    assert_eq!(
        String::from_utf8_lossy(&streamed),
        text,
        "streamed output equals the result"
    );

    // the same tool_use_id again: replayed from the agent's record, not re-run
    let call = exec("toolu_e2e_1", count.clone(), false);
    let (_, r) = app.gateway().call_unary(&target, &call).await.unwrap();
    let Response::Ok(Reply::Execute(again)) = r else {
        panic!("replay: {r:?}")
    };
    assert_eq!(again.disposition, Disposition::Replayed);
    assert_eq!(again.content, result.content);

    // a tool failure is a result, not an RPC error
    let (_, r) = app
        .gateway()
        .call_unary(
            &target,
            &exec("toolu_e2e_2", json!({"command": "exit 4"}), false),
        )
        .await
        .unwrap();
    let Response::Ok(Reply::Execute(failed)) = r else {
        panic!("failing tool: {r:?}")
    };
    assert!(failed.is_error);

    // a policy refusal is an RPC error naming the rule
    let (_, r) = app
        .gateway()
        .call_unary(
            &target,
            &Request::Provision(ProvisionRequest {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    match r {
        Response::Err(e) => {
            assert_eq!(e.code, ErrorCode::PolicyDenied);
            assert_eq!(e.rule.as_deref(), Some("policy.max_memory_bytes"));
        }
        other => panic!("expected a policy refusal: {other:?}"),
    }

    // list, destroy, list
    let (_, r) = app
        .gateway()
        .call_unary(&target, &Request::ListSandboxes)
        .await
        .unwrap();
    let Response::Ok(Reply::ListSandboxes(list)) = r else {
        panic!("list: {r:?}")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].session_id.as_deref(), Some("sesn_e2e"));
    let (_, r) = app
        .gateway()
        .call_unary(
            &target,
            &Request::Destroy(DestroyRequest {
                sandbox_id: p.sandbox_id.clone(),
            }),
        )
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok(Reply::Destroy)), "{r:?}");
    let (_, r) = app
        .gateway()
        .call_unary(&target, &Request::ListSandboxes)
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok(Reply::ListSandboxes(l)) if l.is_empty()));
    assert!(airlock_tests::sandbox::agent_containers(agent.agent_id()).is_empty());

    agent.terminate().unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_real_agent_then_run_again_adopts_its_sandboxes() {
    let (_image, _cp, app, mut agent, _cleanup, target) = connected_agent("env-sbx-kill").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, r) = app
            .gateway()
            .call_unary(&target, &Request::Provision(ProvisionRequest::default()))
            .await
            .unwrap();
        let Response::Ok(Reply::Provision(p)) = r else {
            panic!("provision: {r:?}")
        };
        ids.push(p.sandbox_id);
    }
    let write = Request::Execute(ExecuteRequest {
        sandbox_id: ids[0].clone(),
        tool_use_id: "toolu_kill_1".into(),
        name: "write".into(),
        input: json!({"file_path": "kept.txt", "content": "survives the agent"}),
        stream: false,
    });
    let (_, r) = app.gateway().call_unary(&target, &write).await.unwrap();
    assert!(
        matches!(&r, Response::Ok(Reply::Execute(t)) if !t.is_error),
        "{r:?}"
    );

    agent.kill9().unwrap();
    assert_eq!(
        airlock_tests::sandbox::agent_containers(agent.agent_id()).len(),
        2,
        "sandboxes outlive the agent"
    );
    agent.run().unwrap();
    // the restarted agent reconnects and serves the same sandboxes
    let list = testkit::try_eventually_async(
        "the restarted agent to list its sandboxes",
        Duration::from_secs(60),
        || async {
            match app
                .gateway()
                .call_unary(&target, &Request::ListSandboxes)
                .await
            {
                Ok((_, Response::Ok(Reply::ListSandboxes(l)))) => Some(l),
                _ => None,
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "restarted agent never listed its sandboxes ({e})\n{}",
            tail(&agent.log(), 40)
        )
    });
    let mut listed: Vec<String> = list.into_iter().map(|s| s.sandbox_id).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    let mut found = 0;
    for id in &ids {
        let req = Request::Execute(ExecuteRequest {
            sandbox_id: id.clone(),
            tool_use_id: format!("toolu_kill_read_{id}"),
            name: "bash".into(),
            input: json!({"command": "cat kept.txt 2>/dev/null || echo missing"}),
            stream: false,
        });
        let (_, r) = app.gateway().call_unary(&target, &req).await.unwrap();
        let Response::Ok(Reply::Execute(t)) = r else {
            panic!("execute after restart: {r:?}")
        };
        if t.content[0]["text"] == "survives the agent" {
            found += 1;
        }
    }
    assert_eq!(found, 1, "the written file is still in its sandbox");
    // the replayed write answers from the record kept across the restart
    let (_, r) = app.gateway().call_unary(&target, &write).await.unwrap();
    assert!(
        matches!(&r, Response::Ok(Reply::Execute(t)) if t.disposition == Disposition::Replayed),
        "{r:?}"
    );
    for id in &ids {
        let (_, r) = app
            .gateway()
            .call_unary(
                &target,
                &Request::Destroy(DestroyRequest {
                    sandbox_id: id.clone(),
                }),
            )
            .await
            .unwrap();
        assert!(matches!(r, Response::Ok(Reply::Destroy)), "{r:?}");
    }
    assert!(airlock_tests::sandbox::agent_containers(agent.agent_id()).is_empty());
    agent.terminate().unwrap();
    app.stop().await;
}
