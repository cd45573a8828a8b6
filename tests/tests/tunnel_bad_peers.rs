//! Misbehaving peers against the real control plane: a malformed hello, an
//! oversized frame, an unknown protocol version, a hello claiming another
//! agent's id. Each gets a typed rejection, closes only its own connection,
//! is logged once with the peer's identity, and does not disturb a
//! well-behaved agent connected at the same time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use bytes::{Bytes, BytesMut};
use protocol::{Frame, FrameCodec, Hello, HelloAnswer, RejectCode};
use testkit::try_eventually_blocking;

const LIMIT: Duration = Duration::from_secs(20);

fn tls_for(agent: &Agent) -> Arc<rustls::ClientConfig> {
    let files = pki::agent::AgentFiles::new(agent.identity_dir());
    let creds = files.load(None).unwrap();
    let cert = pki::agent::SwappableClientCert::new(&creds);
    Arc::new(pki::agent::client_config(&creds.ca, &cert, &[tunnel::ALPN]).unwrap())
}

/// Open a raw QUIC connection with `agent`'s credentials, write `bytes` on
/// the control stream, and decode what the control plane answers.
async fn raw_hello(cp: &ControlPlane, tls: Arc<rustls::ClientConfig>, bytes: Bytes) -> HelloAnswer {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, cp.tunnel_addr(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    let _ = send.finish();
    let answer = tokio::time::timeout(LIMIT, recv.read_to_end(1 << 20))
        .await
        .expect("no answer")
        .unwrap_or_default();
    let mut buf = BytesMut::from(&answer[..]);
    let frame = FrameCodec::default()
        .decode(&mut buf)
        .unwrap()
        .expect("a complete answer frame");
    let answer = frame.parse_control::<HelloAnswer>().unwrap();
    // and the connection is closed by the control plane
    let closed = tokio::time::timeout(LIMIT, conn.closed())
        .await
        .expect("connection left open");
    eprintln!("closed: {closed}");
    answer
}

fn framed(frame: &Frame) -> Bytes {
    FrameCodec::default().encode_to_bytes(frame).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_get_typed_errors_and_do_not_disturb_other_agents() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let mut good = Agent::enroll(
        &cp,
        &cp.join_string("env-bad").unwrap(),
        AgentOptions::default(),
    )
    .unwrap();
    good.run().unwrap();
    let good_before = cp.wait_connected(good.agent_id(), LIMIT).unwrap();
    // a second enrolled identity, never run as a process: the misbehaving peer
    let bad = Agent::enroll(
        &cp,
        &cp.join_string("env-bad").unwrap(),
        AgentOptions::default(),
    )
    .unwrap();
    let bad_id = bad.agent_id().to_owned();
    let tls = tls_for(&bad);

    // 1. malformed hello (not JSON)
    let a = raw_hello(
        &cp,
        tls.clone(),
        framed(&Frame::Control(Bytes::from_static(b"{not json"))),
    )
    .await;
    assert!(
        matches!(&a, HelloAnswer::Rejected { code: RejectCode::Malformed, message, .. } if message.contains("Hello")),
        "{a:?}"
    );

    // 2. oversized frame (length prefix far above the cap)
    let a = raw_hello(
        &cp,
        tls.clone(),
        Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0x01]),
    )
    .await;
    assert!(
        matches!(&a, HelloAnswer::Rejected { code: RejectCode::Malformed, message, .. } if message.contains("exceeds")),
        "{a:?}"
    );

    // 3. unknown protocol version
    let hello = Hello {
        min_version: 7,
        max_version: 9,
        agent_id: bad_id.clone(),
        software_version: "9.9.9".into(),
        capabilities: vec![],
    };
    let a = raw_hello(&cp, tls.clone(), framed(&Frame::control(&hello).unwrap())).await;
    match &a {
        HelloAnswer::Rejected {
            code: RejectCode::UnsupportedVersion,
            supported,
            ..
        } => {
            assert_eq!(
                *supported,
                Some((
                    protocol::hello::PROTOCOL_VERSION_MIN,
                    protocol::hello::PROTOCOL_VERSION_MAX
                ))
            )
        }
        other => panic!("{other:?}"),
    }

    // 4. a hello claiming the good agent's id with the bad agent's certificate
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        agent_id: good.agent_id().into(),
        software_version: "x".into(),
        capabilities: vec![],
    };
    let a = raw_hello(&cp, tls.clone(), framed(&Frame::control(&hello).unwrap())).await;
    assert!(
        matches!(
            &a,
            HelloAnswer::Rejected {
                code: RejectCode::IdentityMismatch,
                ..
            }
        ),
        "{a:?}"
    );

    // 5. the real client with an unknown version gets the typed answer too
    let mut settings =
        tunnel::ClientSettings::new(cp.tunnel_addr().to_string(), "127.0.0.1", bad_id.clone());
    settings.version_range = (7, 9);
    settings.mode = tunnel::TransportMode::TcpOnly;
    struct Nothing;
    #[async_trait::async_trait]
    impl tunnel::CallHandler for Nothing {
        async fn handle(&self, _: protocol::Request, _: &mut tunnel::CallIo) -> protocol::Response {
            protocol::Response::error(protocol::ErrorCode::UnsupportedCall, "none")
        }
    }
    // (the refusal is final: the client stops dialing, ClientStatus::Incompatible)
    let client = tunnel::client::spawn(settings, tls.clone(), Arc::new(Nothing));
    let error = tokio::time::timeout(LIMIT, client.incompatible())
        .await
        .unwrap();
    assert!(error.contains("unsupported_version"), "{error}");
    client.shutdown(Duration::from_millis(100)).await;

    // each bad connection was logged once, naming the peer
    let log = cp.log();
    for (what, at_least) in [
        ("malformed hello; connection refused", 2),
        ("no common protocol version; refused", 2),
        ("hello names another agent than the certificate; refused", 1),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
        assert!(
            lines.len() >= at_least && lines.len() <= at_least + 1,
            "{what}: {lines:#?}"
        );
        assert!(
            lines.iter().all(|l| l.contains(&bad_id)),
            "{what} not logged with the agent id: {lines:#?}"
        );
    }
    // nothing of the bad peer stays registered, the good agent was not disturbed
    assert!(cp.connections_of(&bad_id).is_empty());
    let good_after = cp.wait_connected(good.agent_id(), LIMIT).unwrap();
    assert_eq!(
        good_before["connected_since"],
        good_after["connected_since"]
    );
    try_eventually_blocking("good agent heartbeats continue", LIMIT, || {
        let c = cp.connections_of(good.agent_id());
        (c.len() == 1 && c[0]["last_heartbeat"] != good_before["last_heartbeat"]).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&good.log(), 20)));
}
