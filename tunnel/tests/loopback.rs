//! The tunnel over real loopback sockets, both transports, with a test PKI:
//! calls and streaming, unknown calls, malformed frames, version negotiation,
//! drain, and a dead peer failing in-flight calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestPki;
use protocol::{ErrorCode, RejectCode, Reply, Request, Response};
use tokio::sync::mpsc;
use tunnel::call::{CallEvent, CallHandler, CallIo};
use tunnel::client::{self, ClientSettings, ClientStatus};
use tunnel::{CallFailure, Listener, ServerConnection, ServerSettings, Transport, TransportMode};

struct Handler;

#[async_trait::async_trait]
impl CallHandler for Handler {
    async fn handle(&self, request: Request, io: &mut CallIo) -> Response {
        match request {
            Request::Ping => Response::Ok(Reply::Pong(Default::default())),
            Request::Echo => client::serve_echo(io).await,
            other => Response::error(ErrorCode::UnsupportedCall, format!("no {}", other.name())),
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    conns: mpsc::UnboundedReceiver<ServerConnection>,
    _task: tokio::task::JoinHandle<()>,
}

async fn server(pki: &TestPki, heartbeat: Duration) -> Server {
    let settings = ServerSettings {
        heartbeat_interval: heartbeat,
        ..Default::default()
    };
    let mut listener = Listener::bind(settings.clone(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let (tx, conns) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(pending) = listener.accept().await {
            let Some(version) = pending.negotiate() else {
                pending
                    .reject(RejectCode::UnsupportedVersion, "no common version")
                    .await;
                continue;
            };
            let peer = pending
                .hello()
                .map(|h| h.agent_id.clone())
                .unwrap_or_default();
            let conn = pending
                .accept(version, &settings, None, peer)
                .await
                .unwrap();
            let _ = tx.send(conn);
        }
    });
    Server {
        addr,
        conns,
        _task: task,
    }
}

fn settings(addr: std::net::SocketAddr, mode: TransportMode) -> ClientSettings {
    let mut s = ClientSettings::new(addr.to_string(), "localhost", "agent-1");
    s.mode = mode;
    s.quic_connect_timeout = Duration::from_secs(2);
    s.backoff.base = Duration::from_millis(50);
    s.backoff.cap = Duration::from_millis(500);
    s
}

/// Send everything, then read: fine for payloads within the flow-control windows.
async fn echo(conn: &ServerConnection, payload: Bytes) -> (Bytes, Response) {
    let mut call = conn.call(&Request::Echo).await.unwrap();
    call.call.sender.send_data(payload).await.unwrap();
    call.call.sender.finish().unwrap();
    call.call.receiver.collect().await.unwrap()
}

async fn echo_concurrent(conn: &ServerConnection, payload: Bytes) -> (Bytes, Response) {
    let call = conn.call(&Request::Echo).await.unwrap();
    let tunnel::Call {
        mut sender,
        mut receiver,
    } = call.call;
    let p = payload.clone();
    let send = tokio::spawn(async move {
        sender.send_data(p).await.unwrap();
        sender.finish().unwrap();
        sender
    });
    let out = receiver.collect().await.unwrap();
    drop(send.await.unwrap());
    out
}

/// Spawn agent-1 dialing `srv` with `mode`; its client and the server's
/// side of the link.
async fn connect(
    pki: &TestPki,
    srv: &mut Server,
    mode: TransportMode,
) -> (client::ClientHandle, ServerConnection) {
    let client = client::spawn(
        settings(srv.addr, mode),
        pki.client_config("agent-1"),
        Arc::new(Handler),
    );
    let conn = tokio::time::timeout(Duration::from_secs(10), srv.conns.recv())
        .await
        .unwrap()
        .unwrap();
    (client, conn)
}

#[tokio::test]
async fn echo_over_quic_and_tcp() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_secs(1)).await;
    for (mode, transport) in [
        (TransportMode::QuicOnly, Transport::Quic),
        (TransportMode::TcpOnly, Transport::Tcp),
    ] {
        let (client, conn) = connect(&pki, &mut srv, mode).await;
        assert_eq!(conn.transport(), transport);
        let (_, pong) = conn
            .call(&Request::Ping)
            .await
            .unwrap()
            .finish_and_collect()
            .await
            .unwrap();
        assert!(matches!(pong, Response::Ok(Reply::Pong(_))), "{pong:?}");
        for size in [0usize, 1024, 10 << 20] {
            let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let (back, resp) = echo_concurrent(&conn, payload.clone()).await;
            assert_eq!(back.len(), size, "{mode:?}");
            assert!(back == payload, "{mode:?} payload differs");
            assert_eq!(
                resp,
                Response::Ok(Reply::Echo(protocol::call::EchoReply {
                    bytes: size as u64
                }))
            );
        }
        // small echo sequentially (send all, then read) also works within windows
        let (back, _) = echo(&conn, Bytes::from_static(b"hello")).await;
        assert_eq!(&back[..], b"hello");
        // 64 concurrent calls
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                echo_concurrent(&conn, Bytes::from(vec![i; 100])).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().0, Bytes::from(vec![i as u8; 100]));
        }
        client.shutdown(Duration::from_secs(2)).await;
        testkit::eventually("the connection to close", Duration::from_secs(5), || {
            conn.is_closed()
        })
        .await;
    }
}

/// An agent may answer before the control plane ends its input (ping does):
/// over h2 the agent's side then resets the rest of the request away
/// (RST_STREAM after a complete response). Ending the input after that is
/// not an error, and the response is still read (CI once failed here with
/// "user error: inactive stream").
#[tokio::test]
async fn finishing_input_after_the_agent_answered_and_closed_is_fine() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_secs(1)).await;
    for mode in [TransportMode::TcpOnly, TransportMode::QuicOnly] {
        let (client, conn) = connect(&pki, &mut srv, mode).await;
        for _ in 0..3 {
            let call = conn.call(&Request::Ping).await.unwrap();
            // The agent answers and (h2) resets our input away meanwhile.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (_, pong) = call
                .finish_and_collect()
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert!(
                matches!(pong, Response::Ok(Reply::Pong(_))),
                "{mode:?}: {pong:?}"
            );
        }
        client.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn unknown_call_and_malformed_request_are_typed_errors_and_the_link_survives() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_secs(1)).await;
    let client = client::spawn(
        settings(srv.addr, TransportMode::QuicOnly),
        pki.client_config("agent-1"),
        Arc::new(Handler),
    );
    let conn = srv.conns.recv().await.unwrap();

    let (_, r) = conn
        .call(&Request::Unknown {
            name: "teleport".into(),
        })
        .await
        .unwrap()
        .finish_and_collect()
        .await
        .unwrap();
    match r {
        Response::Err(e) => assert_eq!(e.code, ErrorCode::UnsupportedCall, "{e}"),
        other => panic!("{other:?}"),
    }
    // malformed args of a known call
    let mut frame = bytes::BytesMut::new();
    protocol::FrameCodec::default()
        .encode(
            &protocol::Frame::Control(Bytes::from_static(
                br#"{"call":"destroy","args":{"nope":1}}"#,
            )),
            &mut frame,
        )
        .unwrap();
    let mut call = conn.call_raw(frame.freeze()).await.unwrap();
    call.sender.finish().unwrap();
    let (_, r) = call.receiver.collect().await.unwrap();
    assert!(
        matches!(&r, Response::Err(e) if e.code == ErrorCode::BadRequest && e.message.contains("destroy")),
        "{r:?}"
    );
    // oversized frame header
    let mut call = conn
        .call_raw(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]))
        .await
        .unwrap();
    let (_, r) = call.receiver.collect().await.unwrap();
    assert!(
        matches!(&r, Response::Err(e) if e.code == ErrorCode::BadFrame && e.message.contains("exceeds")),
        "{r:?}"
    );
    // empty frame
    let mut call = conn
        .call_raw(Bytes::from_static(&[0, 0, 0, 0]))
        .await
        .unwrap();
    let (_, r) = call.receiver.collect().await.unwrap();
    assert!(
        matches!(&r, Response::Err(e) if e.code == ErrorCode::BadFrame),
        "{r:?}"
    );
    // the connection is still fine
    let (_, pong) = conn
        .call(&Request::Ping)
        .await
        .unwrap()
        .finish_and_collect()
        .await
        .unwrap();
    assert!(matches!(pong, Response::Ok(Reply::Pong(_))));
    assert!(!conn.is_closed());
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_version_is_rejected_with_a_typed_answer() {
    let pki = TestPki::new();
    let srv = server(&pki, Duration::from_secs(1)).await;
    let mut s = settings(srv.addr, TransportMode::QuicOnly);
    s.version_range = (7, 9);
    let client = client::spawn(s, pki.client_config("agent-1"), Arc::new(Handler));
    let mut status = client.status();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Final: no version in common, so the client stops dialing.
            if let ClientStatus::Incompatible { error } = status.borrow_and_update().clone() {
                return error;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(err.contains("unsupported_version"), "{err}");
    assert_eq!(client.incompatible().await, err);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dead_agent_fails_in_flight_calls_and_goaway_drains() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_millis(300)).await;
    for mode in [TransportMode::QuicOnly, TransportMode::TcpOnly] {
        // An agent runtime we can kill abruptly: a separate runtime on a thread.
        let (conn_tx, conn_rx) = std::sync::mpsc::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = pki.client_config("agent-1");
        let s = settings(srv.addr, mode);
        rt.spawn(async move {
            let _client = client::spawn(s, cfg, Arc::new(Handler));
            let _ = conn_tx.send(());
            std::future::pending::<()>().await;
        });
        conn_rx.recv().unwrap();
        let conn = srv.conns.recv().await.unwrap();
        // start a call that stays in flight (echo with the send side open)
        let mut call = conn.call(&Request::Echo).await.unwrap();
        call.call
            .sender
            .send_data(Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(matches!(
            call.call.receiver.next().await.unwrap(),
            Some(CallEvent::Data(_))
        ));
        // the agent vanishes without a word (runtime dropped: sockets closed
        // for tcp; for quic, the peer just goes silent)
        rt.shutdown_background();
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), call.call.receiver.next())
            .await
            .expect("call must not hang");
        assert!(
            matches!(err, Err(CallFailure::ConnectionLost(_))),
            "{mode:?}: {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // marked closed by the connection's own task, perhaps a moment later
        testkit::eventually(
            "the connection marked closed",
            Duration::from_secs(5),
            || conn.is_closed(),
        )
        .await;
        assert!(matches!(
            conn.call(&Request::Ping).await,
            Err(CallFailure::ConnectionLost(_))
        ));
    }
    // goaway: no new calls, in-flight ones finish
    let client = client::spawn(
        settings(srv.addr, TransportMode::QuicOnly),
        pki.client_config("agent-1"),
        Arc::new(Handler),
    );
    let conn = srv.conns.recv().await.unwrap();
    let mut call = conn.call(&Request::Echo).await.unwrap();
    conn.goaway("shutdown", Duration::from_secs(5));
    assert!(matches!(
        conn.call(&Request::Ping).await,
        Err(CallFailure::Draining)
    ));
    call.call
        .sender
        .send_data(Bytes::from_static(b"still here"))
        .await
        .unwrap();
    call.call.sender.finish().unwrap();
    let (back, _) = call.call.receiver.collect().await.unwrap();
    assert_eq!(&back[..], b"still here");
    drop(call);
    assert!(conn.drained(Duration::from_secs(5)).await);
    client.shutdown(Duration::from_secs(1)).await;
}

fn audit_status(seq: u64) -> protocol::audit::AuditStatus {
    protocol::audit::AuditStatus {
        healthy: seq % 2 == 1,
        problem: (seq % 2 == 0).then(|| format!("disk full ({seq})")),
        checkpoint: Some(protocol::audit::AuditCheckpoint {
            seq,
            head: format!("{seq:064x}"),
            at: "2026-12-06T20:00:00Z".into(),
            key_id: "0011223344556677".into(),
            public_key: "pk".into(),
            signature: "sig".into(),
        }),
    }
}

async fn next_status(
    rx: &mut mpsc::Receiver<protocol::audit::AuditStatus>,
) -> protocol::audit::AuditStatus {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("audit status in time")
        .expect("queue open")
}

#[tokio::test]
async fn audit_status_is_sent_on_connect_on_change_and_after_a_reconnect() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_secs(1)).await;
    for mode in [TransportMode::QuicOnly, TransportMode::TcpOnly] {
        let (publish, watch) = tokio::sync::watch::channel(audit_status(1));
        let mut s = settings(srv.addr, mode);
        s.audit_status = Some(watch);
        let client = client::spawn(s, pki.client_config("agent-1"), Arc::new(Handler));
        let conn = tokio::time::timeout(Duration::from_secs(10), srv.conns.recv())
            .await
            .unwrap()
            .unwrap();
        let mut rx = conn.take_audit_statuses().expect("first take");
        assert!(conn.take_audit_statuses().is_none(), "one reader only");
        assert_eq!(
            next_status(&mut rx).await,
            audit_status(1),
            "{mode:?}: current value on connect"
        );
        publish.send(audit_status(2)).unwrap();
        assert_eq!(
            next_status(&mut rx).await,
            audit_status(2),
            "{mode:?}: on change"
        );
        publish.send(audit_status(3)).unwrap();
        assert_eq!(
            next_status(&mut rx).await,
            audit_status(3),
            "{mode:?}: on change"
        );
        // calls still work beside it
        let (back, _) = echo(&conn, Bytes::from_static(b"hi")).await;
        assert_eq!(&back[..], b"hi");
        // the control plane drops the link: the agent redials and sends the
        // current value again on the new connection
        conn.close(tunnel::CloseReason::Normal);
        let conn2 = tokio::time::timeout(Duration::from_secs(10), srv.conns.recv())
            .await
            .unwrap()
            .unwrap();
        let mut rx2 = conn2.take_audit_statuses().unwrap();
        assert_eq!(
            next_status(&mut rx2).await,
            audit_status(3),
            "{mode:?}: resent after reconnect"
        );
        // no status without a change
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx2.recv())
                .await
                .is_err(),
            "{mode:?}: nothing new without a change"
        );
        client.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_client_without_audit_status_sends_none() {
    let pki = TestPki::new();
    let mut srv = server(&pki, Duration::from_millis(200)).await;
    let client = client::spawn(
        settings(srv.addr, TransportMode::QuicOnly),
        pki.client_config("agent-1"),
        Arc::new(Handler),
    );
    let conn = srv.conns.recv().await.unwrap();
    let mut rx = conn.take_audit_statuses().unwrap();
    // several heartbeats go by, and no status
    assert!(tokio::time::timeout(Duration::from_millis(800), rx.recv())
        .await
        .is_err());
    assert!(!conn.is_closed());
    client.shutdown(Duration::from_secs(1)).await;
}
