//! A loopback relay for tunnel tests: forwards both UDP and TCP of one port
//! to a target (the control plane's tunnel port) and can drop UDP on
//! command, like a network that blocks QUIC. Runs on its own thread and
//! runtime, so blocking tests can use it; stops when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    udp_blocked: Arc<AtomicBool>,
    udp_dropped: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relay a free loopback port (UDP and TCP) to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let udp_blocked = Arc::new(AtomicBool::new(false));
        let udp_dropped = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let blocked = udp_blocked.clone();
        let dropped = udp_dropped.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tcp = TcpListener::bind(addr).await.unwrap();
                let udp = Arc::new(UdpSocket::bind(addr).await.unwrap());
                ready_tx.send(()).unwrap();
                tokio::select! {
                    _ = stop_rx => {}
                    _ = tcp_loop(tcp, target) => {}
                    _ = udp_loop(udp, target, blocked, dropped) => {}
                }
            });
        });
        ready_rx.recv().unwrap();
        Self {
            addr,
            udp_blocked,
            udp_dropped,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where agents should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop (or stop dropping) every UDP datagram in both directions.
    pub fn block_udp(&self, blocked: bool) {
        self.udp_blocked.store(blocked, Ordering::SeqCst);
    }

    /// Datagrams dropped so far.
    pub fn udp_dropped(&self) -> u64 {
        self.udp_dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn tcp_loop(listener: TcpListener, target: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn udp_loop(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    blocked: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    // one upstream socket per client address, so replies find their way back
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if blocked.load(Ordering::SeqCst) {
            dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let up = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                u.connect(target).await.unwrap();
                upstreams.insert(client, u.clone());
                let (front, u2, blocked, dropped) =
                    (front.clone(), u.clone(), blocked.clone(), dropped.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = u2.recv(&mut buf).await {
                        if blocked.load(Ordering::SeqCst) {
                            dropped.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let _ = front.send_to(&buf[..n], client).await;
                    }
                });
                u
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}
