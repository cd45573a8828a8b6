//! The TCP transport through a real HTTP CONNECT proxy (tinyproxy) that
//! requires basic auth: configured in `[tunnel] proxy_url` and through
//! `HTTPS_PROXY`; a wrong password is refused by the proxy (typed, logged
//! without the password).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_tests::deploy::{
    tail, Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane,
};
use airlock_tests::tinyproxy::Tinyproxy;
use bytes::Bytes;
use control_plane::gateway::Target;
use protocol::{Reply, Request, Response};
use testkit::try_eventually_blocking;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_through_connect_proxy_with_basic_auth() {
    let mut proxy = Tinyproxy::start("airlock", "pr0xy-s3cret").unwrap();
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();

    // 1. proxy from config
    let join = cp.join_string("env-proxy").unwrap();
    let opts = AgentOptions {
        tunnel_toml: format!(
            "transport = \"tcp\"\nproxy_url = \"http://airlock:pr0xy-s3cret@{}\"\nno_proxy = \"example.invalid\"\n",
            proxy.addr()
        ),
        ..Default::default()
    };
    let mut agent = Agent::enroll(&cp, &join, opts).unwrap();
    agent.run().unwrap();
    let info = app
        .wait_connected(agent.agent_id(), LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", tail(&agent.log(), 20), proxy.log()));
    assert_eq!(info.transport, control_plane::gateway::Transport::Tcp);
    proxy.check_running().unwrap();
    let plog = proxy.log();
    assert!(
        plog.contains(&format!("CONNECT 127.0.0.1:{}", cp.tunnel_addr().port())),
        "proxy log:\n{plog}"
    );
    // a call with a payload crosses the proxy
    let (_, call) = app
        .gateway()
        .call(&Target::Agent(agent.agent_id().into()), &Request::Echo)
        .await
        .unwrap();
    let mut call = call;
    call.call
        .sender
        .send_data(Bytes::from(vec![42u8; 1 << 20]))
        .await
        .unwrap();
    call.call.sender.finish().unwrap();
    let (back, r) = call.call.receiver.collect().await.unwrap();
    assert_eq!(back.len(), 1 << 20);
    assert!(matches!(r, Response::Ok(Reply::Echo(_))));
    assert!(
        !agent.log().contains("pr0xy-s3cret"),
        "password in the agent log"
    );

    // 2. proxy from HTTPS_PROXY (auto mode: QUIC goes direct, so force tcp)
    let join = cp.join_string("env-proxy").unwrap();
    let opts = AgentOptions {
        tunnel_toml: "transport = \"tcp\"\n".into(),
        env: vec![
            (
                "HTTPS_PROXY".into(),
                format!("http://airlock:pr0xy-s3cret@{}", proxy.addr()),
            ),
            ("NO_PROXY".into(), "".into()),
        ],
        ..Default::default()
    };
    let mut env_agent = Agent::enroll(&cp, &join, opts).unwrap();
    env_agent.run().unwrap();
    app.wait_connected(env_agent.agent_id(), LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&env_agent.log(), 20)));
    let connects = proxy.log().matches("CONNECT 127.0.0.1").count();
    assert!(connects >= 2, "proxy log:\n{}", proxy.log());

    // 3. wrong password: the proxy refuses the CONNECT, the agent reports it (without the password) and retries
    let join = cp.join_string("env-proxy").unwrap();
    let opts = AgentOptions {
        tunnel_toml: format!(
            "transport = \"tcp\"\nproxy_url = \"http://airlock:wr0ng-pass@{}\"\nreconnect_base_seconds = 0.2\nreconnect_cap_seconds = 1.0\n",
            proxy.addr()
        ),
        ..Default::default()
    };
    let mut bad = Agent::enroll(&cp, &join, opts).unwrap();
    bad.run().unwrap();
    let refusal = try_eventually_blocking("proxy refusal logged", LIMIT, || {
        bad.log()
            .lines()
            .find(|l| l.contains("refused CONNECT"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&bad.log(), 20)));
    // tinyproxy answers a wrong password with 401, a missing one with 407
    assert!(
        refusal.contains(" 401 ") || refusal.contains(" 407 "),
        "{refusal}"
    );
    assert!(
        !bad.log().contains("wr0ng-pass"),
        "password in the agent log"
    );
    use control_plane::gateway::AgentDirectory;
    assert!(app
        .gateway()
        .registry()
        .list()
        .iter()
        .all(|a| a.agent_id != bad.agent_id()));
    // the good agents are still there
    app.wait_connected(agent.agent_id(), LIMIT).await.unwrap();
    app.stop().await;
}
