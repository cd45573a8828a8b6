//! The agent's links: one tunnel client ([`tunnel::client`]) per
//! control-plane replica, so that any replica reaches this agent.
//!
//! Every configured address (`[control_plane] addresses`, or the one
//! `address`) gives links: an IP address one link; a DNS name one link per
//! address it resolves to, re-resolved whenever one of its links loses its
//! connection (at most once a second) and every [`REFRESH`] otherwise, so
//! that a replica added to or removed from the name gets or loses its link
//! (a removed link drains like a shutdown). Each link is a client of its
//! own with its own backoff and full jitter; all of them serve the same
//! [`CallHandler`] (the agent's sandboxes, execution record, MCP, relay and
//! audit), so a call reaches the same services whichever replica sent it.
//!
//! A revocation seen on any link stops every link (the identity is
//! revoked, not the link); incompatibility stops the agent only when every
//! link is incompatible. [`Links::shutdown`] drains every link at once
//! under one deadline.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::call::{CallError, ErrorCode};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tunnel::call::CallHandler;
use tunnel::client::{self, ClientHandle, ClientSettings, ClientStatus};

/// How often a DNS name is re-resolved while its links stay up.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Shortest interval between two resolutions of one name.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// Limit for one resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One link's state, as `status`, metrics and readiness show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The configured address (`host:port`) this link comes from.
    pub configured: String,
    /// What it dials (`ip:port` after resolution; the configured address
    /// when it is already an IP address).
    pub address: String,
    /// Its connection state.
    pub status: ClientStatus,
}

impl LinkStatus {
    /// The link's name in logs and metrics: `configured` or
    /// `configured@address` when a name was resolved.
    pub fn label(&self) -> String {
        label(&self.configured, &self.address)
    }
}

fn label(configured: &str, address: &str) -> String {
    if configured == address {
        configured.to_owned()
    } else {
        format!("{configured}@{address}")
    }
}

struct Link {
    configured: String,
    address: String,
    handle: Arc<ClientHandle>,
}

struct Shared {
    template: ClientSettings,
    tls: Arc<rustls::ClientConfig>,
    handler: Arc<dyn CallHandler>,
    server_name: Box<dyn Fn(&str) -> String + Send + Sync>,
    links: Mutex<Vec<Link>>,
    /// Bumped on every status change of any link and on every change of
    /// the set of links.
    generation: watch::Sender<u64>,
    revoked: watch::Sender<Option<String>>,
    stop: CancellationToken,
    /// Links removed after a re-resolution, draining.
    retired: Mutex<JoinSet<()>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Start a link to `address` for `configured`.
    fn add(self: &Arc<Self>, configured: &str, address: String) {
        let mut settings = self.template.clone();
        settings.server = address.clone();
        settings.server_name = (self.server_name)(configured);
        let handle = Arc::new(client::spawn(
            settings,
            self.tls.clone(),
            self.handler.clone(),
        ));
        let name = label(configured, &address);
        tracing::info!(link = %name, server_name = %(self.server_name)(configured), "link started");
        tokio::spawn(super::ops::watch_tunnel(handle.status(), name.clone()));
        let shared = Arc::downgrade(self);
        let mut status = handle.status();
        tokio::spawn(async move {
            loop {
                let revoked = match &*status.borrow_and_update() {
                    ClientStatus::Revoked { error } => Some(error.clone()),
                    _ => None,
                };
                let Some(s) = shared.upgrade() else { return };
                if let Some(error) = revoked {
                    tracing::warn!(link = %name, %error, "revoked by the control plane; stopping every link");
                    s.revoked.send_if_modified(|r| {
                        let first = r.is_none();
                        if first {
                            *r = Some(error);
                        }
                        first
                    });
                }
                s.bump();
                drop(s);
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
        self.lock().push(Link {
            configured: configured.to_owned(),
            address,
            handle,
        });
        self.bump();
    }

    /// Remove the links of `configured` to `address` and let them drain.
    fn retire(&self, configured: &str, address: &str, deadline: Duration) {
        let gone: Vec<Link> = {
            let mut links = self.lock();
            let (gone, kept) = std::mem::take(&mut *links)
                .into_iter()
                .partition(|l| l.configured == configured && l.address == address);
            *links = kept;
            gone
        };
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for l in gone {
            tracing::info!(link = %label(&l.configured, &l.address), "address no longer resolved; draining its link");
            retired.spawn(async move { l.handle.shutdown(deadline).await });
        }
        drop(retired);
        self.bump();
    }

    fn addresses_of(&self, configured: &str) -> BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|l| l.configured == configured)
            .map(|l| l.address.clone())
            .collect()
    }

    /// Whether a link of `configured` is down (dialing or redialing).
    fn any_down(&self, configured: &str) -> bool {
        self.lock()
            .iter()
            .filter(|l| l.configured == configured)
            .any(|l| {
                matches!(
                    *l.handle.status().borrow(),
                    ClientStatus::Disconnected { .. }
                )
            })
    }
}

/// The agent's links to the control-plane replicas. See the module docs.
pub struct Links {
    shared: Arc<Shared>,
    resolvers: Mutex<JoinSet<()>>,
    drain: Duration,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("links", &self.statuses())
            .finish_non_exhaustive()
    }
}

impl Links {
    /// Start a link for every address in `addresses` (names are resolved
    /// in the background), each a client with `template`'s settings;
    /// `server_name` gives the certificate name for a configured address.
    pub fn start(
        addresses: &[String],
        template: ClientSettings,
        server_name: impl Fn(&str) -> String + Send + Sync + 'static,
        tls: Arc<rustls::ClientConfig>,
        handler: Arc<dyn CallHandler>,
    ) -> Self {
        let drain = template.drain_deadline;
        let shared = Arc::new(Shared {
            template,
            tls,
            handler,
            server_name: Box::new(server_name),
            links: Mutex::new(Vec::new()),
            generation: watch::channel(0).0,
            revoked: watch::channel(None).0,
            stop: CancellationToken::new(),
            retired: Mutex::new(JoinSet::new()),
        });
        let mut resolvers = JoinSet::new();
        for configured in addresses {
            let host = settings::split_host_port(configured).map(|(h, _)| h.to_owned());
            if host
                .as_deref()
                .and_then(|h| h.parse::<IpAddr>().ok())
                .is_some()
            {
                shared.add(configured, configured.clone());
            } else {
                resolvers.spawn(resolve_loop(shared.clone(), configured.clone(), drain));
            }
        }
        Self {
            shared,
            resolvers: Mutex::new(resolvers),
            drain,
        }
    }

    /// Every link's state, in the order they were started.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        self.shared
            .lock()
            .iter()
            .map(|l| LinkStatus {
                configured: l.configured.clone(),
                address: l.address.clone(),
                status: l.handle.status().borrow().clone(),
            })
            .collect()
    }

    /// Changes whenever a link's state or the set of links changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Links connected now.
    pub fn connected(&self) -> usize {
        self.statuses()
            .iter()
            .filter(|s| matches!(s.status, ClientStatus::Connected { .. }))
            .count()
    }

    /// Resolves once any link was refused as revoked (every link stops
    /// dialing then); returns the refusal. Pending forever otherwise.
    pub async fn revoked(&self) -> String {
        let mut rx = self.shared.revoked.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once every link is refused as incompatible (no common
    /// protocol version with any replica); returns the first refusal.
    pub async fn incompatible(&self) -> String {
        let mut rx = self.changes();
        loop {
            rx.borrow_and_update();
            let all = self.statuses();
            let errors: Vec<String> = all
                .iter()
                .filter_map(|s| match &s.status {
                    ClientStatus::Incompatible { error } => Some(error.clone()),
                    _ => None,
                })
                .collect();
            if !all.is_empty() && errors.len() == all.len() {
                return errors.into_iter().next().unwrap_or_default();
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Certificate renewal over the first connected link that answers: a
    /// replica that cannot be reached is skipped, a refusal is final.
    pub async fn renew(&self, csr_pem: String) -> Result<String, CallError> {
        let handles: Vec<Arc<ClientHandle>> = self
            .shared
            .lock()
            .iter()
            .filter(|l| matches!(*l.handle.status().borrow(), ClientStatus::Connected { .. }))
            .map(|l| l.handle.clone())
            .collect();
        let mut last = CallError::new(
            ErrorCode::Unavailable,
            "not connected to any control-plane replica",
        );
        for h in handles {
            match h.renew(csr_pem.clone()).await {
                Ok(chain) => return Ok(chain),
                Err(e) if e.code == ErrorCode::Unavailable => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Drain every link at once: goaway, in-flight calls get `deadline`,
    /// close, no more dials; the resolvers stop too.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shared.stop.cancel();
        let mut resolvers =
            std::mem::take(&mut *self.resolvers.lock().unwrap_or_else(|p| p.into_inner()));
        while resolvers.join_next().await.is_some() {}
        let links: Vec<Link> = std::mem::take(&mut *self.shared.lock());
        let mut drains = JoinSet::new();
        for l in links {
            drains.spawn(async move { l.handle.shutdown(deadline).await });
        }
        let mut retired = std::mem::take(
            &mut *self
                .shared
                .retired
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        while drains.join_next().await.is_some() {}
        while retired.join_next().await.is_some() {}
        self.shared.bump();
    }

    /// The drain deadline of the links (`tunnel.drain_deadline_seconds`).
    pub fn drain_deadline(&self) -> Duration {
        self.drain
    }
}

async fn resolve(configured: &str) -> Result<BTreeSet<String>, String> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(configured))
        .await
        .map_err(|_| format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    let set: BTreeSet<String> = found.map(|a: SocketAddr| a.to_string()).collect();
    if set.is_empty() {
        return Err("the name has no address".into());
    }
    Ok(set)
}

/// Keep the links of the DNS name `configured` in line with what it
/// resolves to, until the links stop.
async fn resolve_loop(shared: Arc<Shared>, configured: String, drain: Duration) {
    let mut failures = 0u32;
    let mut changes = shared.generation.subscribe();
    loop {
        let started = tokio::time::Instant::now();
        match resolve(&configured).await {
            Ok(now) => {
                failures = 0;
                let before = shared.addresses_of(&configured);
                for gone in before.difference(&now) {
                    shared.retire(&configured, gone, drain);
                }
                for new in now.difference(&before) {
                    shared.add(&configured, new.clone());
                }
                if before != now {
                    tracing::info!(address = %configured, resolved = ?now, "links follow the name's addresses");
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if shared.template.proxy.is_some() && shared.addresses_of(&configured).is_empty() {
                    // Behind a proxy the name may resolve only there (the
                    // only way out): one link to the name itself, whose TCP
                    // dial asks the proxy for `CONNECT name:port`. A later
                    // resolution that works replaces it with one per address.
                    tracing::warn!(address = %configured, %error, "cannot resolve a control-plane address on this host; one link to the name, through the proxy");
                    shared.add(&configured, configured.clone());
                } else {
                    tracing::warn!(address = %configured, %error, links = shared.addresses_of(&configured).len(), "cannot resolve a control-plane address; keeping its current links");
                }
            }
        }
        // Next: at once on a lost link (re-resolve on redial), else at the
        // refresh; after failures a capped backoff; never more than once a second.
        let retry = if failures > 0 && shared.addresses_of(&configured).is_empty() {
            Duration::from_secs(1u64 << failures.min(5))
        } else {
            REFRESH
        };
        let until = started + retry.max(MIN_RESOLVE_INTERVAL);
        let earliest = started + MIN_RESOLVE_INTERVAL;
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => break,
                r = changes.changed() => {
                    if r.is_err() { return; }
                    if shared.any_down(&configured) {
                        tokio::select! {
                            _ = shared.stop.cancelled() => return,
                            _ = tokio::time::sleep_until(earliest) => {}
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use pki::{IdentityService, IdentitySettings};
    use protocol::call::{Reply, Request, Response};
    use protocol::sandbox::{Disposition, ExecuteRequest, ToolResult};
    use tokio::sync::mpsc;
    use tunnel::call::CallIo;
    use tunnel::{Listener, ServerConnection, ServerSettings};

    use super::*;
    use crate::sandbox::record::{Begin, ExecutionRecord};

    /// `execute` through the agent's execution record, as the sandbox
    /// service uses it (`begin`; run only on `Run`; wait on `InFlight`),
    /// with a 300 ms stand-in for the tool that counts its runs.
    struct Recorded {
        record: ExecutionRecord,
        runs: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl CallHandler for Recorded {
        async fn handle(&self, request: Request, _io: &mut CallIo) -> Response {
            let Request::Execute(req) = request else {
                return Response::error(ErrorCode::UnsupportedCall, "execute only");
            };
            let result = match self
                .record
                .begin(&req.tool_use_id, &req.sandbox_id)
                .unwrap()
            {
                Begin::Run => {
                    self.runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let r = ToolResult::text("ran", false);
                    self.record.finish(&req.tool_use_id, &r).unwrap();
                    r
                }
                Begin::Replay(r) | Begin::Unknown(r) => r,
                Begin::InFlight(mut rx) => loop {
                    if let Some(r) = rx.borrow_and_update().clone() {
                        break r;
                    }
                    rx.changed().await.unwrap();
                },
            };
            Response::Ok(Reply::Execute(result))
        }
    }

    async fn server(
        tls: Arc<rustls::ServerConfig>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<ServerConnection>) {
        let settings = ServerSettings::default();
        let mut listener = Listener::bind(settings.clone(), tls).await.unwrap();
        let addr = listener.local_addr();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(pending) = listener.accept().await {
                let version = pending.negotiate().unwrap();
                let peer = pending.hello().map(|h| h.agent_id.clone()).unwrap();
                let conn = pending
                    .accept(version, &settings, None, peer)
                    .await
                    .unwrap();
                let _ = tx.send(conn);
            }
        });
        (addr, rx)
    }

    /// The agent's links to every address of `identity`, serving calls
    /// through an execution record in `agent_dir`.
    fn start_links(
        identity: &crate::identity::AgentIdentity,
        template: tunnel::ClientSettings,
        agent_dir: &std::path::Path,
    ) -> (Links, Arc<Recorded>) {
        let handler = Arc::new(Recorded {
            record: ExecutionRecord::open(agent_dir, Duration::from_secs(3600)).unwrap(),
            runs: AtomicUsize::new(0),
        });
        let endpoint = identity.endpoint().clone();
        let links = Links::start(
            &identity.endpoint().addresses.clone(),
            template,
            move |c| endpoint.server_name_for(c),
            Arc::new(identity.client_config(&[tunnel::ALPN]).unwrap()),
            handler.clone(),
        );
        (links, handler)
    }

    /// Waits (at most `limit`) until `n` links are connected.
    async fn wait_connected(links: &Links, n: usize, limit: Duration) {
        tokio::time::timeout(limit, async {
            while links.connected() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    }

    /// A minimal HTTP CONNECT proxy standing in for a proxy that resolves
    /// names this host cannot: `CONNECT <name>:<port>` goes to
    /// `127.0.0.1:<port>`; records each request line.
    async fn name_resolving_proxy() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if c.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().unwrap().push(line.clone());
                    let port = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|t| t.rsplit(':').next())
                        .unwrap_or_default()
                        .to_owned();
                    let Ok(mut up) =
                        tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await
                    else {
                        let _ = c.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                });
            }
        });
        (addr, seen)
    }

    /// A control-plane name this host cannot resolve, behind a proxy: the
    /// agent still gets a link, to the name, through the proxy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_name_only_the_proxy_resolves_gets_one_link_through_the_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let svc = IdentityService::open(IdentitySettings::new(dir.path().join("cp"))).unwrap();
        let server_tls = Arc::new(svc.tunnel_server_config(&[tunnel::ALPN]).unwrap());
        let (a, mut conns) = server(server_tls).await;
        let (proxy, seen) = name_resolving_proxy().await;
        let name = format!("cp.airlock.invalid:{}", a.port());
        let text = format!(
            "data_dir = \"{}\"\n[control_plane]\naddresses = [\"{name}\"]\nserver_name = \"127.0.0.1\"\n[tunnel]\ntransport = \"tcp\"\nproxy_url = \"http://{proxy}\"\nno_proxy = \"\"\n",
            dir.path().join("agent").display()
        );
        let config =
            crate::config::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let identity = crate::identity::enrolled_for_test(&svc, "env_p", &config);
        let template = crate::connect::client_settings(&config, &identity);
        assert!(template.proxy.is_some(), "the proxy is configured");
        let (links, _) = start_links(&identity, template, &dir.path().join("agent"));
        let limit = Duration::from_secs(30);
        let conn = tokio::time::timeout(limit, conns.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.transport(), tunnel::Transport::Tcp);
        wait_connected(&links, 1, limit).await;
        assert_eq!(
            links.shared.addresses_of(&name),
            BTreeSet::from([name.clone()])
        );
        let lines = seen.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("CONNECT {name} "))),
            "the proxy was asked for the name: {lines:?}"
        );
        links.shutdown(Duration::from_millis(200)).await;
    }

    /// Two replicas (two tunnel listeners of one CA), one agent with a link
    /// to each: the same tool_use id sent over both links at once runs once;
    /// the other call gets the first one's outcome (`replayed`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_tool_use_id_over_two_links_at_once_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let svc = IdentityService::open(IdentitySettings::new(dir.path().join("cp"))).unwrap();
        let server_tls = Arc::new(svc.tunnel_server_config(&[tunnel::ALPN]).unwrap());
        let (a, mut conns_a) = server(server_tls.clone()).await;
        let (b, mut conns_b) = server(server_tls).await;
        let text = format!(
            "data_dir = \"{}\"\n[control_plane]\naddresses = [\"{a}\", \"{b}\"]\nserver_name = \"127.0.0.1\"\n",
            dir.path().join("agent").display()
        );
        let config =
            crate::config::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let identity = crate::identity::enrolled_for_test(&svc, "env_l", &config);
        assert_eq!(
            identity.endpoint().addresses,
            [a.to_string(), b.to_string()]
        );
        let mut template = crate::connect::client_settings(&config, &identity);
        template.backoff.base = Duration::from_millis(50);
        template.backoff.cap = Duration::from_millis(500);
        let (links, handler) = start_links(&identity, template, &dir.path().join("agent"));
        let limit = Duration::from_secs(20);
        let ca = tokio::time::timeout(limit, conns_a.recv())
            .await
            .unwrap()
            .unwrap();
        let cb = tokio::time::timeout(limit, conns_b.recv())
            .await
            .unwrap()
            .unwrap();
        wait_connected(&links, 2, limit).await;
        assert!(crate::connect::ops::links_ready(&links.statuses()).is_ok());

        let req = Request::Execute(ExecuteRequest {
            sandbox_id: "sbx_1".into(),
            tool_use_id: "toolu_twice".into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "true"}),
            stream: false,
        });
        let call = |conn: ServerConnection, req: Request| async move {
            let c = conn.call_finished(&req, Bytes::new()).await.unwrap();
            match c.finish_and_collect().await.unwrap().1 {
                Response::Ok(Reply::Execute(r)) => r.disposition,
                other => panic!("{other:?}"),
            }
        };
        let (ra, rb) = tokio::join!(call(ca.clone(), req.clone()), call(cb.clone(), req.clone()));
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1, "ran once");
        let mut got = [ra, rb];
        got.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(got, [Disposition::Ran, Disposition::Replayed], "{got:?}");
        // Again later over either link: answered from the record.
        assert_eq!(call(cb, req).await, Disposition::Replayed);
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        let starts = std::fs::read_to_string(dir.path().join("agent/executions.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"t\":\"start\""))
            .count();
        assert_eq!(starts, 1);

        // One link lost (it redials on its own), then one shutdown path
        // drains both.
        ca.close(tunnel::CloseReason::Normal);
        links.shutdown(Duration::from_millis(200)).await;
        assert!(links.statuses().is_empty());
    }
}
