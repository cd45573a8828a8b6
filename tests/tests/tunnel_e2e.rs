//! End-to-end tunnel tests with the real binaries on loopback: enrollment,
//! QUIC, the TCP fallback when UDP is blocked (and the move back), kill -9
//! of the control plane, revocation, renewal with short-lived certificates,
//! and in-flight calls failing clearly when an agent dies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use airlock_tests::deploy::{
    tail, Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane,
};
use airlock_tests::relay::Relay;
use bytes::Bytes;
use control_plane::gateway::{AgentCallError, Target};
use protocol::{ErrorCode, Reply, Request, Response};
use testkit::try_eventually_blocking;
use tunnel::{CallEvent, CallFailure};

const LIMIT: Duration = Duration::from_secs(20);

async fn echo(cp: &InProcessControlPlane, agent_id: &str, payload: Bytes) -> (Bytes, Response) {
    let (_, call) = cp
        .gateway()
        .call(&Target::Agent(agent_id.into()), &Request::Echo)
        .await
        .unwrap();
    let tunnel::server::TrackedCall { call, .. } = call;
    let tunnel::Call {
        mut sender,
        mut receiver,
    } = call;
    let send = tokio::spawn(async move {
        sender.send_data(payload).await.unwrap();
        sender.finish().unwrap();
        sender
    });
    let out = receiver.collect().await.unwrap();
    drop(send.await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_connect_over_quic_and_echo_0b_1kib_10mib() {
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    let join = cp.join_string("env-echo").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::back_to_quic_soon()).unwrap();
    agent.run().unwrap();
    let info = testkit::eventually_async("the agent on QUIC", LIMIT, || async {
        app.wait_connected(agent.agent_id(), LIMIT)
            .await
            .ok()
            .filter(|i| i.transport == control_plane::gateway::Transport::Quic)
    })
    .await;
    assert_eq!(info.transport, control_plane::gateway::Transport::Quic);
    assert_eq!(info.environment_id, "env-echo");

    for size in [0usize, 1024, 10 << 20] {
        let payload = Bytes::from((0..size).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>());
        let (back, response) = echo(&app, agent.agent_id(), payload.clone()).await;
        assert_eq!(back.len(), size);
        assert!(back == payload, "echoed bytes differ at size {size}");
        assert_eq!(
            response,
            Response::Ok(Reply::Echo(protocol::call::EchoReply {
                bytes: size as u64
            }))
        );
    }
    // the one-write shape (request + data + end of input together), with a
    // payload spanning several data frames
    for size in [0usize, 1024, 3 << 20] {
        let payload = Bytes::from((0..size).map(|i| (i * 13 % 251) as u8).collect::<Vec<u8>>());
        let (_, mut call) = app
            .gateway()
            .call_finished(
                &Target::Agent(agent.agent_id().into()),
                &Request::Echo,
                payload.clone(),
            )
            .await
            .unwrap();
        let (back, response) = call.call.receiver.collect().await.unwrap();
        assert!(back == payload, "call_finished echo differs at size {size}");
        assert_eq!(
            response,
            Response::Ok(Reply::Echo(protocol::call::EchoReply {
                bytes: size as u64
            }))
        );
    }
    // ping, by environment
    let (_, pong) = app
        .gateway()
        .call_unary(&Target::Environment("env-echo".into()), &Request::Ping)
        .await
        .unwrap();
    assert!(matches!(pong, Response::Ok(Reply::Pong(_))), "{pong:?}");
    // an unknown call is a typed error from the real agent, and the link stays up
    let (_, r) = app
        .gateway()
        .call_unary(
            &Target::Agent(agent.agent_id().into()),
            &Request::Unknown {
                name: "teleport".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&r, Response::Err(e) if e.code == ErrorCode::UnsupportedCall),
        "{r:?}"
    );
    // sandbox calls without a sandbox service: typed `unavailable`, not a dropped stream
    let (_, r) = app
        .gateway()
        .call_unary(
            &Target::Agent(agent.agent_id().into()),
            &Request::ListSandboxes,
        )
        .await
        .unwrap();
    assert!(
        matches!(&r, Response::Err(e) if e.code == ErrorCode::Unavailable),
        "{r:?}"
    );
    let after = app.wait_connected(agent.agent_id(), LIMIT).await.unwrap();
    assert_eq!(
        after.connected_since, info.connected_since,
        "the connection was replaced"
    );
    // no agent for an unknown environment: a typed error
    let e = app
        .gateway()
        .call_unary(&Target::Environment("nowhere".into()), &Request::Ping)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentCallError::NotConnected(_)), "{e}");

    // SIGTERM: the agent drains and exits cleanly; the registry forgets it
    let status = agent.terminate().unwrap();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "agent exit: {status:?}\n{}",
        tail(&agent.log(), 20)
    );
    try_eventually_blocking("registry empty", LIMIT, || {
        app.gateway().registry().is_empty().then_some(())
    })
    .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_call_fails_with_a_clear_error_when_the_agent_dies() {
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    let join = cp.join_string("env-kill").unwrap();
    for transport in ["quic", "tcp"] {
        let opts = AgentOptions {
            tunnel_toml: format!("transport = \"{transport}\"\nreconnect_base_seconds = 0.2\nreconnect_cap_seconds = 1.0\n"),
            ..Default::default()
        };
        let join = if transport == "quic" {
            join.clone()
        } else {
            cp.join_string("env-kill").unwrap()
        };
        let mut agent = Agent::enroll(&cp, &join, opts).unwrap();
        agent.run().unwrap();
        app.wait_connected(agent.agent_id(), LIMIT).await.unwrap();
        let (_, mut call) = app
            .gateway()
            .call(&Target::Agent(agent.agent_id().into()), &Request::Echo)
            .await
            .unwrap();
        call.call
            .sender
            .send_data(Bytes::from_static(b"ping"))
            .await
            .unwrap();
        assert!(matches!(
            call.call.receiver.next().await.unwrap(),
            Some(CallEvent::Data(_))
        ));
        agent.kill9().unwrap();
        // heartbeat 1 s: the call must end within the watchdog window, with a typed error
        let started = Instant::now();
        let r = tokio::time::timeout(LIMIT, call.call.receiver.next())
            .await
            .expect("in-flight call hung");
        match r {
            Err(CallFailure::ConnectionLost(msg)) => assert!(!msg.is_empty()),
            other => panic!("{transport}: expected ConnectionLost, got {other:?}"),
        }
        eprintln!(
            "{transport}: in-flight call failed {:?} after kill -9",
            started.elapsed()
        );
        // a new call to the dead agent fails at once
        let e = app
            .gateway()
            .call_unary(&Target::Agent(agent.agent_id().into()), &Request::Ping)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AgentCallError::NotConnected(_) | AgentCallError::Tunnel { .. }
            ),
            "{e}"
        );
    }
    app.stop().await;
}

#[test]
fn udp_blocked_falls_back_to_tcp_then_moves_back_to_quic() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let relay = Relay::start(cp.tunnel_addr());
    relay.block_udp(true);
    let join = cp.join_string("env-relay").unwrap();
    let opts = AgentOptions {
        address: Some(relay.addr().to_string()),
        tunnel_toml: "quic_connect_timeout_seconds = 1.5\nquic_retry_interval_seconds = 2.0\nreconnect_base_seconds = 0.2\nreconnect_cap_seconds = 2.0\ndrain_deadline_seconds = 2.0\n".into(),
        ..Default::default()
    };
    let mut agent = Agent::enroll(&cp, &join, opts).unwrap();
    let started = Instant::now();
    agent.run().unwrap();
    let tcp = cp
        .wait_connection(agent.agent_id(), LIMIT, |c| c["transport"] == "tcp")
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", tail(&agent.log(), 30)));
    eprintln!(
        "connected over tcp {:?} after start (udp blocked, {} datagrams dropped)",
        started.elapsed(),
        relay.udp_dropped()
    );
    assert!(relay.udp_dropped() > 0, "the agent never tried quic");
    // UDP comes back: the agent moves to QUIC and drains the TCP link
    relay.block_udp(false);
    let quic = cp
        .wait_connection(agent.agent_id(), LIMIT, |c| c["transport"] == "quic")
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", tail(&agent.log(), 30)));
    assert_ne!(tcp["connected_since"], quic["connected_since"]);
    assert!(
        agent.log().contains("moved to quic"),
        "{}",
        tail(&agent.log(), 20)
    );
}

#[test]
fn kill9_control_plane_and_restart_every_agent_reconnects() {
    let mut cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let mut agents = Vec::new();
    for i in 0..3 {
        let join = cp.join_string("env-restart").unwrap();
        let opts = if i == 2 {
            AgentOptions { tunnel_toml: "transport = \"tcp\"\nreconnect_base_seconds = 0.2\nreconnect_cap_seconds = 2.0\n".into(), ..Default::default() }
        } else {
            AgentOptions::back_to_quic_soon()
        };
        let mut a = Agent::enroll(&cp, &join, opts).unwrap();
        a.run().unwrap();
        agents.push(a);
    }
    let mut before = Vec::new();
    for a in &agents {
        before.push(cp.wait_connected(a.agent_id(), LIMIT).unwrap());
    }
    let lost = |a: &Agent| a.log().matches("link to control plane lost").count();
    let lost_before: Vec<usize> = agents.iter().map(lost).collect();
    cp.kill9().unwrap();
    // every agent notices the control plane is gone before it comes back
    for (a, n) in agents.iter().zip(lost_before) {
        try_eventually_blocking(
            &format!("agent {} to lose its link", a.agent_id()),
            LIMIT,
            || lost(a) > n,
        )
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&a.log(), 30)));
    }
    cp.start().unwrap();
    for (a, b) in agents.iter_mut().zip(&before) {
        let after = cp
            .wait_connection(a.agent_id(), Duration::from_secs(30), |c| {
                c["transport"] == b["transport"] && c["connected_since"] != b["connected_since"]
            })
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", tail(&a.log(), 30)));
        assert_ne!(after["connected_since"], b["connected_since"]);
        assert!(a.is_running(), "agent process exited");
    }
}

#[test]
fn revocation_closes_the_live_connection_and_refuses_reconnects() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-revoke").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    agent.run().unwrap();
    let other_join = cp.join_string("env-revoke").unwrap();
    let mut other = Agent::enroll(&cp, &other_join, AgentOptions::default()).unwrap();
    other.run().unwrap();
    cp.wait_connected(agent.agent_id(), LIMIT).unwrap();
    let other_before = cp.wait_connected(other.agent_id(), LIMIT).unwrap();

    let started = Instant::now();
    let out = cp.cli(&["agents", "revoke", agent.agent_id()]).unwrap();
    assert!(out.contains("1 live connection"), "{out}");
    // closed by the time the command returned; the agent sees the close
    assert!(cp.connections_of(agent.agent_id()).is_empty());
    try_eventually_blocking("agent notices the close", LIMIT, || {
        agent.log().contains("revoked (code 4)").then_some(())
    })
    .unwrap();
    eprintln!(
        "revoked agent saw its connection closed {:?} after the revoke command",
        started.elapsed()
    );
    // it does not redial: `run` stops (exit code 77, see tunnel_revocation.rs)
    try_eventually_blocking("the revoked agent stops", LIMIT, || {
        (!agent.is_running()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 20)));
    assert!(
        agent.log().contains("is revoked"),
        "{}",
        tail(&agent.log(), 20)
    );
    assert!(cp.connections_of(agent.agent_id()).is_empty());
    // the other agent was not disturbed
    let other_after = cp.wait_connected(other.agent_id(), LIMIT).unwrap();
    assert_eq!(
        other_before["connected_since"],
        other_after["connected_since"]
    );
}

#[test]
fn renewal_over_the_live_connection_with_short_lived_certificates() {
    let cp = ControlPlane::spawn(CpOptions {
        agent_cert_lifetime_seconds: Some(6),
        ..Default::default()
    })
    .unwrap();
    let join = cp.join_string("env-renew").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    agent.run().unwrap();
    let first = cp.wait_connected(agent.agent_id(), LIMIT).unwrap();
    // renewed at least twice on the same connection
    let mut seen = vec![first["cert_not_after"].clone()];
    try_eventually_blocking("two renewals", Duration::from_secs(40), || {
        let c = cp.connections_of(agent.agent_id());
        let c = c.first()?;
        assert_eq!(
            c["connected_since"], first["connected_since"],
            "connection replaced instead of renewed"
        );
        if !seen.contains(&c["cert_not_after"]) {
            seen.push(c["cert_not_after"].clone());
        }
        (seen.len() >= 3).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nagent:\n{}\ncp:\n{}",
            tail(&agent.log(), 30),
            tail(&cp.log(), 30)
        )
    });
    assert!(cp.log().contains("certificate renewed over the tunnel"));
    // the first certificate has long expired: a fresh process dials with the renewed one
    agent.kill9().unwrap();
    agent.run().unwrap();
    let again = cp
        .wait_connection(agent.agent_id(), LIMIT, |c| {
            c["connected_since"] != first["connected_since"]
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    assert_ne!(again["cert_not_after"], first["cert_not_after"]);
}

/// Thousands of short calls on one long-lived connection, over each
/// transport: every call answers and the connection survives. (h2 counts
/// resets it has to send for streams a peer abandoned and ends the
/// connection with ENHANCE_YOUR_CALM after 1024; calls must end cleanly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_calls_keep_one_connection_over_quic_and_tcp() {
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    for transport in ["quic", "tcp"] {
        let join = cp.join_string("env-many").unwrap();
        let mut agent = Agent::enroll(
            &cp,
            &join,
            AgentOptions {
                tunnel_toml: format!("transport = \"{transport}\"\n"),
                ..Default::default()
            },
        )
        .unwrap();
        agent.run().unwrap();
        let before = app
            .wait_connected(agent.agent_id(), LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
        let target = Target::Agent(agent.agent_id().into());
        let tasks: Vec<_> = (0..128)
            .map(|t| {
                let gw = app.gateway().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    for i in 0..60 {
                        let payload = Bytes::from(format!("{t}-{i}"));
                        let (_, mut call) = gw
                            .call_finished(&target, &Request::Echo, payload.clone())
                            .await
                            .unwrap_or_else(|e| panic!("call {t}-{i}: {e}"));
                        let (back, response) = call
                            .call
                            .receiver
                            .collect()
                            .await
                            .unwrap_or_else(|e| panic!("call {t}-{i}: {e}"));
                        assert_eq!(back, payload);
                        assert!(matches!(response, Response::Ok(Reply::Echo(_))));
                        let (_, pong) = gw.call_unary(&target, &Request::Ping).await.unwrap();
                        assert!(matches!(pong, Response::Ok(Reply::Pong(_))));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let after = app.wait_connected(agent.agent_id(), LIMIT).await.unwrap();
        assert_eq!(
            after.connected_since,
            before.connected_since,
            "{transport}: the connection was replaced during 15360 calls\n{}",
            tail(&agent.log(), 30)
        );
    }
}
