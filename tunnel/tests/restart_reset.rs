//! A listener that dies without a word (a SIGKILLed control plane) and comes
//! back on the same port with the same stateless reset key: the agents'
//! next packets (heartbeat or QUIC keep-alive, at most 5 s apart) are
//! answered with a stateless reset they accept, so they redial at once
//! instead of waiting out their 15 s idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, server_with_reset_key, TestPki};
use tunnel::client::ClientStatus;
use tunnel::server::StatelessResetKey;
use tunnel::{ServerSettings, Transport, TransportMode};

/// Waits (at most `limit`) for a status of `handle` matching `pred`.
async fn wait_status(
    handle: &tunnel::ClientHandle,
    limit: Duration,
    pred: impl Fn(&ClientStatus) -> bool,
) {
    let mut status = handle.status();
    tokio::time::timeout(limit, status.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("no matching status within {limit:?}"))
        .unwrap();
}

#[test]
fn agents_of_a_listener_killed_and_restarted_with_the_same_key_redial_within_a_keepalive() {
    let pki = TestPki::new();
    let key = StatelessResetKey::new([0x5a; 32]);
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The first listener lives in a runtime of its own, so it can be killed:
    // shutting the runtime down drops its tasks and sockets without sending
    // anything (no CONNECTION_CLOSE), as SIGKILL would.
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = ServerSettings::default();
    let (addr, conns, task) = first.block_on(server_with_reset_key(
        &pki,
        settings.clone(),
        Some(key.clone()),
    ));
    // Hold the accepted connections inside the doomed runtime.
    first.spawn(async move {
        let mut conns = conns;
        let mut held = Vec::new();
        while let Some(c) = conns.recv().await {
            held.push(c);
        }
    });

    main.block_on(async move {
        let agents: Vec<_> = (0..4)
            .map(|i| client(&pki, addr, &format!("agent-{i}"), TransportMode::QuicOnly))
            .collect();
        for a in &agents {
            wait_status(a, Duration::from_secs(20), |s| {
                matches!(s, ClientStatus::Connected { transport: Transport::Quic, .. })
            })
            .await;
        }
        // Let each side's first heartbeat pass, so nothing is in flight.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // From now on, the first status change of an agent is its link going
        // down (a watch keeps only the latest value: it may be reconnected
        // by the time we would look).
        let (tx, mut downs) = tokio::sync::mpsc::unbounded_channel();
        for a in &agents {
            let mut status = a.status();
            status.mark_unchanged();
            let tx = tx.clone();
            tokio::spawn(async move {
                if status.changed().await.is_ok() {
                    let _ = tx.send(Instant::now());
                }
            });
        }

        // Kill: the listener's tasks and sockets vanish without a close.
        drop(task);
        tokio::task::block_in_place(|| first.shutdown_timeout(Duration::from_secs(5)));
        let killed = Instant::now();

        // Restart on the same port with the same key.
        let settings = ServerSettings {
            listen: addr,
            ..settings
        };
        let (addr2, mut conns2, _task2) =
            server_with_reset_key(&pki, settings, Some(key)).await;
        assert_eq!(addr2, addr);

        let mut noticed = Vec::new();
        while noticed.len() < agents.len() {
            let at = tokio::time::timeout(Duration::from_secs(30), downs.recv())
                .await
                .expect("an agent never noticed the restart")
                .unwrap();
            noticed.push(at.duration_since(killed));
        }
        let slowest = noticed.iter().max().copied().unwrap();
        // A keep-alive or heartbeat goes out at most 5 s after the last one;
        // its reset comes back at once. The idle timeout would be 15 s.
        assert!(
            slowest < Duration::from_secs(13),
            "the agents noticed the restart after {noticed:?} (without a recognised reset: the 15 s idle timeout)"
        );
        for a in &agents {
            wait_status(a, Duration::from_secs(20), |s| {
                matches!(s, ClientStatus::Connected { transport: Transport::Quic, .. })
            })
            .await;
        }
        let mut back = 0;
        while back < agents.len() {
            tokio::time::timeout(Duration::from_secs(10), conns2.recv())
                .await
                .expect("the restarted listener did not accept every agent")
                .unwrap();
            back += 1;
        }
    });
}
