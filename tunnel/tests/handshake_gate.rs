//! The listener's handshake slots (`ServerSettings::max_concurrent_handshakes`):
//! a burst of dialers larger than the slots all get through (queued, or
//! refused and redialing after their backoff), and a connection waiting for a
//! slot is refused after the queue wait instead of being handshaken late, and
//! a peer that never completes its handshake frees its slot after the hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, server, TestPki};
use protocol::{Reply, Request, Response};
use tunnel::client::ClientStatus;
use tunnel::{ServerSettings, TransportMode};

/// A listener with one handshake slot (queue wait 300 ms, slot hold 2 s,
/// handshake timeout 30 s) and a TCP peer that never sends a ClientHello
/// holding that slot: for the slot hold, then its handshake goes on without it.
async fn one_slot_held_by_a_silent_peer(
    pki: &TestPki,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tunnel::ServerConnection>,
    tokio::task::JoinHandle<()>,
    tokio::net::TcpStream,
    Instant,
) {
    let settings = ServerSettings {
        max_concurrent_handshakes: 1,
        handshake_queue_wait: Duration::from_millis(300),
        handshake_slot_hold: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let (addr, conns, task) = server(pki, settings).await;
    // Taken before the silent peer dials: its slot is held at least the
    // slot hold from here, however late the server accepts it.
    let before = Instant::now();
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (addr, conns, task, silent, before)
}

/// The errors of `c`'s failed dial rounds until it connects, and the
/// transport it connected over (each status change within 20 s).
async fn errors_until_connected(c: &tunnel::ClientHandle) -> (Vec<String>, tunnel::Transport) {
    let mut status = c.status();
    let mut errors = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(20), async {
            status.changed().await.unwrap();
            status.borrow_and_update().clone()
        })
        .await
        .expect("no status change in 20 s");
        match s {
            ClientStatus::Disconnected { error } => errors.push(error),
            ClientStatus::Connected { transport, .. } => return (errors, transport),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_slots_all_connects() {
    let pki = TestPki::new();
    let settings = ServerSettings {
        max_concurrent_handshakes: 1,
        handshake_queue_wait: Duration::from_millis(200),
        ..Default::default()
    };
    let (addr, mut conns, _task) = server(&pki, settings).await;
    let mut clients = Vec::new();
    for i in 0..16 {
        let mode = if i % 2 == 0 {
            TransportMode::QuicOnly
        } else {
            TransportMode::TcpOnly
        };
        clients.push(client(&pki, addr, &format!("agent-{i}"), mode));
    }
    let mut agents = std::collections::BTreeSet::new();
    let mut links = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while agents.len() < clients.len() {
        let conn = tokio::time::timeout_at(until, conns.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 16 connected in 60 s", agents.len()))
            .unwrap();
        // Every accepted link works (the slot was released, not the link).
        let (_, pong) = conn
            .call(&Request::Ping)
            .await
            .unwrap()
            .finish_and_collect()
            .await
            .unwrap();
        assert!(matches!(pong, Response::Ok(Reply::Pong(_))), "{pong:?}");
        agents.insert(conn.remote_addr());
        links.push(conn);
    }
    for c in &clients {
        let mut status = c.status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| matches!(s, ClientStatus::Connected { .. })),
        )
        .await
        .expect("a client never saw its link up")
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_waiting_for_a_busy_slot_is_refused_then_gets_in() {
    let pki = TestPki::new();
    let (addr, mut conns, _task, mut silent, start) = one_slot_held_by_a_silent_peer(&pki).await;
    let c = client(&pki, addr, "agent-q", TransportMode::QuicOnly);
    let (errors, _) = errors_until_connected(&c).await;
    let connected_after = start.elapsed();
    let refused = errors.len();
    for error in &errors {
        // Refused at the queue wait, long before its own 3 s QUIC timeout.
        assert!(!error.contains("timed out"), "{error}");
    }
    assert!(
        refused >= 2,
        "the dialer was refused {refused} times while the slot was busy"
    );
    assert!(
        connected_after >= Duration::from_millis(1_900),
        "connected after {connected_after:?}, while the only slot was held"
    );
    // The silent peer's handshake was not cut at the slot hold: its
    // connection is still open (the handshake timeout is 30 s).
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await;
    assert!(
        read.is_err(),
        "the silent peer's connection ended: {read:?}"
    );
    let conn = tokio::time::timeout(Duration::from_secs(5), conns.recv())
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_dialer_refused_as_busy_backs_off_on_quic_instead_of_trying_tcp() {
    let pki = TestPki::new();
    let (addr, mut conns, _task, silent, _) = one_slot_held_by_a_silent_peer(&pki).await;
    let c = client(&pki, addr, "agent-auto", TransportMode::Auto);
    let (errors, transport) = errors_until_connected(&c).await;
    assert!(!errors.is_empty(), "never refused while the slot was held");
    for e in &errors {
        // Each round ended at the QUIC refusal: no TCP dial after it (a TCP
        // dial would have waited for the slot too, and its error would be
        // the round's last).
        assert!(e.contains("busy") && e.contains("quic"), "{errors:?}");
    }
    assert_eq!(transport, tunnel::Transport::Quic, "{errors:?}");
    let conn = tokio::time::timeout(Duration::from_secs(5), conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.transport(), tunnel::Transport::Quic);
    drop(silent);
}
