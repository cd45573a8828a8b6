//! A link cutter for chaos tests: a loopback relay of one port, UDP (QUIC)
//! and TCP (TLS over TCP) alike, in front of a control plane's tunnel
//! listener, that the test can cut and restore.
//!
//! [`LinkCutter::cut`] drops every flow at once and refuses new ones until
//! [`LinkCutter::restore`]:
//! - a TCP flow is closed on both sides (each peer reads end-of-stream, like
//!   a middlebox dropping its state); a connection arriving while cut is
//!   accepted and closed at once;
//! - a UDP flow (one client address) is black-holed for good: nothing of it
//!   is forwarded again, in either direction, so its QUIC connection dies of
//!   its idle timeout and the client must dial a new one (a new dial comes
//!   from a new socket, hence a new flow); datagrams arriving while cut are
//!   dropped. An address silent for [`DEAD_FOR`] may start a flow again.
//!
//! A UDP flow that has been silent for [`IDLE_FOR`] is forgotten (not
//! counted as live); QUIC keep-alives are far more frequent.
//!
//! Runs on its own thread and runtime, so blocking tests can use it; stops
//! when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// How long a cut UDP flow's address stays black-holed after its last datagram.
pub const DEAD_FOR: Duration = Duration::from_secs(10);
/// How long a UDP flow may be silent before it is forgotten.
pub const IDLE_FOR: Duration = Duration::from_secs(5);

/// Counters of a cutter (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutterStats {
    /// Calls to [`LinkCutter::cut`].
    pub cuts: u64,
    /// Cuts that found at least one live flow.
    pub effective_cuts: u64,
    /// Flows opened (TCP connections relayed, UDP client addresses seen).
    pub flows_opened: u64,
    /// Flows dropped by cuts.
    pub flows_cut: u64,
    /// TCP connections refused while cut.
    pub tcp_refused: u64,
    /// UDP datagrams dropped (while cut, or of a cut flow).
    pub udp_dropped: u64,
}

impl std::fmt::Display for CutterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cuts ({} with a live flow), {} flows opened, {} flows cut, {} TCP connections refused, {} datagrams dropped",
            self.cuts,
            self.effective_cuts,
            self.flows_opened,
            self.flows_cut,
            self.tcp_refused,
            self.udp_dropped
        )
    }
}

#[derive(Debug)]
struct Shared {
    cut: AtomicBool,
    live: AtomicU64,
    cuts: AtomicU64,
    effective_cuts: AtomicU64,
    flows_opened: AtomicU64,
    flows_cut: AtomicU64,
    tcp_refused: AtomicU64,
    udp_dropped: AtomicU64,
    /// Bumped by every cut; flows end when it changes.
    generation: watch::Sender<u64>,
}

impl Shared {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// A running link cutter.
#[derive(Debug)]
pub struct LinkCutter {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkCutter {
    /// Relay a free loopback port (UDP and TCP) to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            live: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            effective_cuts: AtomicU64::new(0),
            flows_opened: AtomicU64::new(0),
            flows_cut: AtomicU64::new(0),
            tcp_refused: AtomicU64::new(0),
            udp_dropped: AtomicU64::new(0),
            generation: watch::Sender::new(0),
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("link-cutter-{port}"))
            .spawn(move || {
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
                        _ = tcp_loop(tcp, target, s.clone()) => {}
                        _ = udp_loop(udp, target, s) => {}
                    }
                });
            })
            .expect("spawn the link cutter's thread");
        ready_rx.recv().unwrap();
        Self {
            addr,
            target,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients should connect (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where flows are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Drop every flow at once and refuse new ones until [`Self::restore`].
    /// Returns the number of flows that were live.
    pub fn cut(&self) -> u64 {
        let s = &self.shared;
        s.cut.store(true, Ordering::SeqCst);
        let live = s.live.load(Ordering::SeqCst);
        s.cuts.fetch_add(1, Ordering::SeqCst);
        if live > 0 {
            s.effective_cuts.fetch_add(1, Ordering::SeqCst);
        }
        s.generation.send_modify(|g| *g += 1);
        live
    }

    /// Accept new flows again (cut flows stay dropped).
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut now.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    /// Flows being relayed now.
    pub fn live_flows(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Calls to [`Self::cut`] so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// All counters.
    pub fn stats(&self) -> CutterStats {
        let s = &self.shared;
        CutterStats {
            cuts: s.cuts.load(Ordering::SeqCst),
            effective_cuts: s.effective_cuts.load(Ordering::SeqCst),
            flows_opened: s.flows_opened.load(Ordering::SeqCst),
            flows_cut: s.flows_cut.load(Ordering::SeqCst),
            tcp_refused: s.tcp_refused.load(Ordering::SeqCst),
            udp_dropped: s.udp_dropped.load(Ordering::SeqCst),
        }
    }
}

impl Drop for LinkCutter {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn tcp_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // e.g. out of file descriptors for a moment
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.is_cut() {
            shared.tcp_refused.fetch_add(1, Ordering::SeqCst);
            drop(inbound);
            continue;
        }
        let generation = shared.generation.subscribe();
        tokio::spawn(tcp_flow(inbound, target, shared.clone(), generation));
    }
}

async fn tcp_flow(
    mut inbound: TcpStream,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut generation: watch::Receiver<u64>,
) {
    // A target that refuses (a killed replica) closes the client's side too.
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    if shared.is_cut() || generation.has_changed().unwrap_or(true) {
        shared.tcp_refused.fetch_add(1, Ordering::SeqCst);
        return;
    }
    shared.flows_opened.fetch_add(1, Ordering::SeqCst);
    shared.live.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = generation.changed() => {
            shared.flows_cut.fetch_add(1, Ordering::SeqCst);
        }
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
    // Both streams are dropped here: each peer reads end-of-stream.
}

struct UdpFlow {
    upstream: Arc<UdpSocket>,
    last_seen: Instant,
    replies: tokio::task::JoinHandle<()>,
}

async fn udp_loop(front: Arc<UdpSocket>, target: SocketAddr, shared: Arc<Shared>) {
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    // cut flows: client address -> last datagram seen from it
    let mut dead: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut generation = shared.generation.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            received = front.recv_from(&mut buf) => {
                let Ok((n, client)) = received else { continue };
                let now = Instant::now();
                if let Some(seen) = dead.get_mut(&client) {
                    *seen = now;
                    shared.udp_dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if shared.is_cut() {
                    shared.udp_dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let upstream = match flows.get_mut(&client) {
                    Some(flow) => {
                        flow.last_seen = now;
                        flow.upstream.clone()
                    }
                    None => {
                        let Ok(upstream) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                        if upstream.connect(target).await.is_err() {
                            continue;
                        }
                        let upstream = Arc::new(upstream);
                        let replies = tokio::spawn(udp_replies(
                            upstream.clone(),
                            front.clone(),
                            client,
                            shared.clone(),
                        ));
                        shared.flows_opened.fetch_add(1, Ordering::SeqCst);
                        shared.live.fetch_add(1, Ordering::SeqCst);
                        flows.insert(client, UdpFlow { upstream: upstream.clone(), last_seen: now, replies });
                        upstream
                    }
                };
                // Refused while the target is down: the datagram is lost, as on a network.
                let _ = upstream.send(&buf[..n]).await;
            }
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = Instant::now();
                for (client, flow) in flows.drain() {
                    flow.replies.abort();
                    dead.insert(client, now);
                    shared.flows_cut.fetch_add(1, Ordering::SeqCst);
                    shared.live.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ = sweep.tick() => {
                dead.retain(|_, seen| seen.elapsed() < DEAD_FOR);
                flows.retain(|_, flow| {
                    let keep = flow.last_seen.elapsed() < IDLE_FOR;
                    if !keep {
                        flow.replies.abort();
                        shared.live.fetch_sub(1, Ordering::SeqCst);
                    }
                    keep
                });
            }
        }
    }
}

async fn udp_replies(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => {
                if shared.is_cut() {
                    shared.udp_dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let _ = front.send_to(&buf[..n], client).await;
            }
            // The ICMP "port unreachable" of a target that is down, reported
            // on the connected socket: the flow lives on (the target may come back).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server on one loopback port, TCP and UDP.
    async fn echo() -> SocketAddr {
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpListener::bind(addr).await.unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn tcp_roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .map_err(|_| std::io::Error::other("no echo"))??;
        Ok(got)
    }

    /// Reads until end-of-stream or an error (what a dropped flow looks like).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    async fn udp_echoes(s: &UdpSocket, msg: &[u8], wait: Duration) -> bool {
        s.send(msg).await.unwrap();
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(wait, s.recv(&mut buf)).await, Ok(Ok(n)) if &buf[..n] == msg)
    }

    async fn udp_client(to: SocketAddr) -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(to).await.unwrap();
        s
    }

    #[tokio::test]
    async fn tcp_flows_are_closed_by_a_cut_and_refused_until_restored() {
        let cutter = LinkCutter::start(echo().await);
        let mut a = TcpStream::connect(cutter.addr()).await.unwrap();
        let mut b = TcpStream::connect(cutter.addr()).await.unwrap();
        assert_eq!(tcp_roundtrip(&mut a, b"one").await.unwrap(), b"one");
        assert_eq!(tcp_roundtrip(&mut b, b"two").await.unwrap(), b"two");
        assert_eq!(cutter.live_flows(), 2);

        assert_eq!(cutter.cut(), 2, "both flows were live");
        assert!(closed(&mut a).await, "flow a dropped");
        assert!(closed(&mut b).await, "flow b dropped");
        let mut during = TcpStream::connect(cutter.addr()).await.unwrap();
        assert!(
            closed(&mut during).await,
            "a new connection is refused while cut"
        );

        cutter.restore();
        let mut c = TcpStream::connect(cutter.addr()).await.unwrap();
        assert_eq!(tcp_roundtrip(&mut c, b"three").await.unwrap(), b"three");
        let s = cutter.stats();
        assert_eq!(
            (
                s.cuts,
                s.effective_cuts,
                s.flows_opened,
                s.flows_cut,
                s.tcp_refused
            ),
            (1, 1, 3, 2, 1),
            "{s}"
        );
    }

    #[tokio::test]
    async fn a_cut_udp_flow_stays_dropped_and_a_new_socket_gets_through_after_restore() {
        let cutter = LinkCutter::start(echo().await);
        let old = udp_client(cutter.addr()).await;
        assert!(udp_echoes(&old, b"hello", WAIT).await);
        assert_eq!(cutter.live_flows(), 1);

        assert_eq!(cutter.cut(), 1);
        let fresh = udp_client(cutter.addr()).await;
        assert!(
            !udp_echoes(&fresh, b"while cut", Duration::from_millis(300)).await,
            "nothing passes while cut"
        );
        cutter.restore();
        assert!(
            !udp_echoes(&old, b"again", Duration::from_millis(300)).await,
            "the cut flow stays black-holed after the restore"
        );
        let new = udp_client(cutter.addr()).await;
        assert!(udp_echoes(&new, b"new", WAIT).await, "a new flow passes");
        let s = cutter.stats();
        assert_eq!((s.cuts, s.effective_cuts, s.flows_cut), (1, 1, 1), "{s}");
        assert!(s.udp_dropped >= 2, "{s}");
    }

    #[tokio::test]
    async fn a_cut_with_nothing_live_is_counted_but_not_effective() {
        let cutter = LinkCutter::start(echo().await);
        assert_eq!(cutter.cut(), 0);
        assert!(cutter.is_cut());
        cutter.restore();
        assert!(!cutter.is_cut());
        let s = cutter.stats();
        assert_eq!((s.cuts, s.effective_cuts, s.flows_cut), (1, 0, 0), "{s}");
        let mut c = TcpStream::connect(cutter.addr()).await.unwrap();
        assert_eq!(tcp_roundtrip(&mut c, b"x").await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_target_that_goes_away_and_comes_back_keeps_the_udp_flow() {
        // The relay outlives a replica's restart on the same port.
        let port = crate::deploy::free_port();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let cutter = LinkCutter::start(target);
        let client = udp_client(cutter.addr()).await;
        assert!(!udp_echoes(&client, b"nobody", Duration::from_millis(300)).await);
        let server = UdpSocket::bind(target).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        assert!(udp_echoes(&client, b"back", WAIT).await);
    }
}
