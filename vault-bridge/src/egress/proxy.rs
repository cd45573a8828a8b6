//! The proxy itself: HTTP/1.1 on any byte stream; `CONNECT host:port` is
//! checked against the session's policy, connected upstream with a verified
//! certificate, and terminated with a leaf from the egress CA; the requests
//! inside are forwarded one by one (keep-alive, bodies streamed) with the
//! host's credential added, the sandbox's own `Authorization` dropped, and
//! placeholders swapped or refused. Absolute-form `http://` requests go out
//! only where the policy allows plain HTTP, and never carry a credential.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::audit::{AuditEvent, AuditOutcome, AuditSink, SandboxIdentity};
use super::ca::EgressCa;
use super::policy::{
    find_placeholders, normalize_host, AuthScheme, CredentialRef, EgressPolicy, HostRule,
    Placeholder, PolicyName, Refusal, PLACEHOLDER_MAX_LEN,
};
use super::secrets::SecretSource;
use super::upstream::{Upstream, UpstreamError};
use crate::lock;

/// Error type of the bodies the proxy forwards.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Header on every answer the proxy makes itself (not the upstream's).
pub const EGRESS_HEADER: &str = "x-airlock-egress";

/// Largest request body buffered to swap placeholders in it.
pub const DEFAULT_MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Request bodies up to this size (by `Content-Length`) are checked whole before sending.
const SMALL_BODY: u64 = 64 * 1024;

/// Hop-by-hop headers: never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Idle upstream connections kept per (sandbox, host, port).
const POOL_PER_KEY: usize = 4;
/// How long an idle upstream connection is kept (below common server
/// keep-alive timeouts, e.g. nginx's 75 s).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Idle, verified upstream connections, reused by the next tunnel of the
/// **same sandbox** to the same host and port (never across sandboxes: some
/// servers tie authentication to a connection). A reused connection saves
/// the upstream TCP and TLS handshakes of a new CONNECT.
#[derive(Default)]
struct UpstreamPool {
    idle: Mutex<HashMap<UpstreamKey, Vec<IdleUpstream>>>,
}

/// Sandbox id, host and port of a pooled upstream connection.
type UpstreamKey = (String, String, u16);

/// A pooled upstream connection and when it went idle.
type IdleUpstream = (SendRequest<ProxyBody>, Instant);

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = lock(&self.idle).values().map(Vec::len).sum();
        f.debug_struct("UpstreamPool").field("idle", &n).finish()
    }
}

impl UpstreamPool {
    fn take(&self, sandbox: &str, host: &str, port: u16) -> Option<SendRequest<ProxyBody>> {
        let mut g = lock(&self.idle);
        let key = (sandbox.to_owned(), host.to_owned(), port);
        let list = g.get_mut(&key)?;
        let mut found = None;
        while let Some((s, at)) = list.pop() {
            if at.elapsed() < POOL_IDLE && !s.is_closed() && s.is_ready() {
                found = Some(s);
                break;
            }
        }
        if list.is_empty() {
            g.remove(&key);
        }
        found
    }

    fn put(&self, sandbox: &str, host: &str, port: u16, s: SendRequest<ProxyBody>) {
        if s.is_closed() || !s.is_ready() {
            return;
        }
        let mut g = lock(&self.idle);
        g.retain(|_, v| {
            v.retain(|(s, at)| at.elapsed() < POOL_IDLE && !s.is_closed());
            !v.is_empty()
        });
        let list = g
            .entry((sandbox.to_owned(), host.to_owned(), port))
            .or_default();
        if list.len() < POOL_PER_KEY {
            list.push((s, Instant::now()));
        }
    }

    /// Drop every idle connection of `sandbox` (its egress closed).
    fn forget_sandbox(&self, sandbox: &str) {
        lock(&self.idle).retain(|(s, _, _), _| s != sandbox);
    }
}

/// The bridge's egress proxy: one per bridge, shared by every sandbox's connections.
#[derive(Debug)]
pub struct Egress {
    ca: EgressCa,
    upstream: Upstream,
    secrets: Arc<dyn SecretSource>,
    audit: Arc<dyn AuditSink>,
    max_buffered_body: usize,
    pool: UpstreamPool,
    /// Per sandbox, the signal that cuts its open CONNECT tunnels (each
    /// runs in its own task, outside the connection that opened it): the
    /// sender is dropped by [`Egress::forget_sandbox`].
    cuts: Mutex<HashMap<String, tokio::sync::watch::Sender<()>>>,
}

impl Egress {
    /// A proxy minting leaves from `ca`, connecting with `upstream`, taking
    /// secrets from `secrets` and reporting to `audit`.
    pub fn new(
        ca: EgressCa,
        upstream: Upstream,
        secrets: Arc<dyn SecretSource>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            ca,
            upstream,
            secrets,
            audit,
            max_buffered_body: DEFAULT_MAX_BUFFERED_BODY,
            pool: UpstreamPool::default(),
            cuts: Mutex::new(HashMap::new()),
        }
    }

    /// Cut `sandbox_id`'s open tunnels and forget its idle upstream
    /// connections (call when its egress is closed or re-opened under
    /// another policy: a tunnel keeps the policy it was opened with).
    pub fn forget_sandbox(&self, sandbox_id: &str) {
        lock(&self.cuts).remove(sandbox_id);
        self.pool.forget_sandbox(sandbox_id);
    }

    /// Resolves when `sandbox_id`'s egress is closed (see [`Self::forget_sandbox`]).
    fn cut_signal(&self, sandbox_id: &str) -> tokio::sync::watch::Receiver<()> {
        lock(&self.cuts)
            .entry(sandbox_id.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(()).0)
            .subscribe()
    }

    /// The same proxy buffering at most `bytes` of a body it swaps placeholders in.
    pub fn with_max_buffered_body(mut self, bytes: usize) -> Self {
        self.max_buffered_body = bytes;
        self
    }

    /// The egress CA (its certificate is what sandboxes trust).
    pub fn ca(&self) -> &EgressCa {
        &self.ca
    }

    /// Serve one proxy connection from the sandbox `who` under `policy`,
    /// until the client closes it. `who` comes from the listener (which
    /// sandbox's socket accepted it), never from the client.
    pub async fn serve_connection<IO>(
        self: Arc<Self>,
        io: IO,
        who: SandboxIdentity,
        policy: Arc<EgressPolicy>,
    ) -> Result<(), hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let who = Arc::new(who);
        let svc = service_fn(move |req| {
            let me = self.clone();
            let who = who.clone();
            let policy = policy.clone();
            async move { Ok::<_, Infallible>(me.outer(req, who, policy).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await
    }

    /// Accept connections on `listener` forever, all as sandbox `who` under
    /// `policy` (a per-sandbox loopback listener; tests and benchmarks).
    pub async fn serve_listener(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        who: SandboxIdentity,
        policy: Arc<EgressPolicy>,
    ) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "egress listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let who = who.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                if let Err(e) = me.serve_connection(stream, who, policy).await {
                    tracing::debug!(error = %e, "egress connection ended with an error");
                }
            });
        }
    }

    async fn outer(
        self: Arc<Self>,
        req: Request<Incoming>,
        who: Arc<SandboxIdentity>,
        policy: Arc<EgressPolicy>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req, who, policy).await;
        }
        match req.uri().scheme_str() {
            Some("http") => self.plain_http(req, who, policy).await,
            Some(_) => answer(
                StatusCode::BAD_REQUEST,
                "only CONNECT host:port and absolute http:// requests are accepted",
            ),
            None => answer(
                StatusCode::BAD_REQUEST,
                "not a proxy request: send CONNECT host:port (https) or an absolute http:// url",
            ),
        }
    }

    async fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        who: Arc<SandboxIdentity>,
        policy: Arc<EgressPolicy>,
    ) -> Response<ProxyBody> {
        let Some((host, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((normalize_host(a.host())?, a.port_u16()?)))
        else {
            return answer(
                StatusCode::BAD_REQUEST,
                "CONNECT needs host:port with a dns name or ipv4 address",
            );
        };
        let rule = match policy.check_connect(&host, port) {
            Ok(r) => r.clone(),
            Err(refusal) => {
                tracing::info!(
                    sandbox_id = %who.sandbox_id, session_id = %who.session_id,
                    host = %host, port, policy = refusal.policy.as_str(), "egress refused"
                );
                self.audit.record(AuditEvent::new(
                    None,
                    &host,
                    &Method::CONNECT,
                    "",
                    &who,
                    AuditOutcome::host_refused(&refusal),
                ));
                return refused(&refusal);
            }
        };
        // The sandbox's idle upstream connection to this host, or a new one
        // opened while the sandbox does its TLS handshake with us: the 200
        // does not wait for the upstream. If it cannot be had, the tunnel's
        // first request is answered 502 naming why.
        let sender = self.pool.take(&who.sandbox_id, &host, port);
        let pending = match sender {
            Some(_) => None,
            None => {
                let me = self.clone();
                let (h, p) = (host.clone(), port);
                Some(tokio::spawn(async move { me.open_upstream(&h, p).await }))
            }
        };
        let tls = match self.ca.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "egress ca failed");
                return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
        };
        let tunnel = Arc::new(Tunnel {
            egress: self.clone(),
            host,
            port,
            rule,
            who,
            policy,
            sender: Mutex::new(sender),
            pending: tokio::sync::Mutex::new(pending),
        });
        let mut cut = self.cut_signal(&tunnel.who.sandbox_id);
        let sandbox_id = tunnel.who.sandbox_id.clone();
        let run = async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "egress CONNECT upgrade failed");
                    return;
                }
            };
            let stream = match tokio_rustls::TlsAcceptor::from(tls)
                .accept(TokioIo::new(upgraded))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(host = %tunnel.host, error = %e, "egress: sandbox tls handshake failed (does it trust the egress ca?)");
                    return;
                }
            };
            let t = tunnel.clone();
            let svc = service_fn(move |req| {
                let t = t.clone();
                async move { Ok::<_, Infallible>(t.request(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(host = %tunnel.host, error = %e, "egress tunnel ended with an error");
            }
            // The tunnel is done; its idle upstream connection serves the
            // sandbox's next tunnel to the same host.
            let mut kept = tunnel.lock_sender().take();
            if kept.is_none() {
                if let Some(h) = tunnel.pending.lock().await.take() {
                    kept = h.await.ok().and_then(Result::ok);
                }
            }
            if let Some(s) = kept {
                tunnel
                    .egress
                    .pool
                    .put(&tunnel.who.sandbox_id, &tunnel.host, tunnel.port, s);
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = run => {}
                // The sender is only ever dropped: `changed` then errs.
                _ = cut.changed() => {
                    tracing::info!(%sandbox_id, "egress tunnel cut: the sandbox's egress was closed or re-opened");
                }
            }
        });
        Response::new(empty())
    }

    async fn open_upstream(
        &self,
        host: &str,
        port: u16,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let tls = self.upstream.connect_tls(host, port).await?;
        handshake(TokioIo::new(tls), host, port).await
    }

    async fn plain_http(
        self: Arc<Self>,
        req: Request<Incoming>,
        who: Arc<SandboxIdentity>,
        policy: Arc<EgressPolicy>,
    ) -> Response<ProxyBody> {
        let Some((host, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((normalize_host(a.host())?, a.port_u16().unwrap_or(80))))
        else {
            return answer(StatusCode::BAD_REQUEST, "absolute url needs a valid host");
        };
        if let Err(refusal) = policy.check_plain_http(&host, port) {
            tracing::info!(
                sandbox_id = %who.sandbox_id, host = %host, port,
                policy = refusal.policy.as_str(), "egress refused"
            );
            self.audit.record(AuditEvent::new(
                None,
                &host,
                req.method(),
                req.uri().path(),
                &who,
                AuditOutcome::host_refused(&refusal),
            ));
            return refused(&refusal);
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let (parts, body) = req.into_parts();
        // Credentials and placeholders never travel over plain http.
        let mut headers = forwardable(parts.headers);
        headers.remove(header::PROXY_AUTHORIZATION);
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let in_headers = headers
            .values()
            .any(|v| !find_placeholders(v.as_bytes()).is_empty());
        if in_headers || !find_placeholders(pq.as_bytes()).is_empty() {
            let r = Refusal {
                policy: PolicyName::PlainHttp,
                message: format!(
                    "a credential placeholder may not be sent over plain http (to {host})"
                ),
            };
            self.audit.record(AuditEvent::new(
                None,
                &host,
                &method,
                &path,
                &who,
                AuditOutcome::PlaceholderRefused,
            ));
            return refused(&r);
        }
        let hit = Arc::new(Mutex::new(None));
        let body = ScanBody::new(body, None, host.clone(), hit.clone()).boxed();
        let Ok(uri) = pq.parse::<Uri>() else {
            return answer(StatusCode::BAD_REQUEST, "invalid request target");
        };
        let mut up = Request::new(body);
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;
        set_host(up.headers_mut(), &host, port, 80);
        let result = async {
            let tcp = self.upstream.connect_tcp(&host, port).await?;
            let mut s = handshake(TokioIo::new(tcp), &host, port).await?;
            Ok::<_, UpstreamError>(s.send_request(up))
        }
        .await;
        let resp = match result {
            Ok(fut) => fut.await,
            Err(e) => return answer(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
        if take_hit(&hit).is_some() {
            self.audit.record(AuditEvent::new(
                None,
                &host,
                &method,
                &path,
                &who,
                AuditOutcome::PlaceholderRefused,
            ));
            return refused(&Refusal {
                policy: PolicyName::PlainHttp,
                message: format!(
                    "a credential placeholder may not be sent over plain http (to {host})"
                ),
            });
        }
        match resp {
            Ok(r) => downstream_response(r),
            Err(e) => answer(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {host}:{port}: {e}"),
            ),
        }
    }
}

/// One CONNECT tunnel: the sandbox's TLS session to `host:port` and our upstream connection.
struct Tunnel {
    egress: Arc<Egress>,
    host: String,
    port: u16,
    rule: HostRule,
    who: Arc<SandboxIdentity>,
    policy: Arc<EgressPolicy>,
    sender: Mutex<Option<SendRequest<ProxyBody>>>,
    /// The upstream connection being opened since the CONNECT, when none was idle.
    pending: tokio::sync::Mutex<Option<tokio::task::JoinHandle<UpstreamResult>>>,
}

type UpstreamResult = Result<SendRequest<ProxyBody>, UpstreamError>;

/// What to do with one placeholder found in a request.
enum Decision<'p> {
    /// Swap it for its secret.
    Swap(&'p Placeholder),
    /// Leave it (allowed on this host, not swapped at this location).
    Keep,
    /// Refuse the request; the placeholder, if the session knows it.
    Refuse(Option<&'p Placeholder>),
}

fn decide<'p>(
    host: &str,
    known: Option<&'p Placeholder>,
    swap_here: impl Fn(&Placeholder) -> bool,
) -> Decision<'p> {
    let Some(ph) = known else {
        return Decision::Refuse(None);
    };
    if !ph.allowed_on(host) {
        return Decision::Refuse(Some(ph));
    }
    if swap_here(ph) {
        Decision::Swap(ph)
    } else {
        Decision::Keep
    }
}

/// A request refused before it was sent: the 403 (or other) answer.
struct Stop(Response<ProxyBody>);

impl Tunnel {
    fn lock_sender(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<ProxyBody>>> {
        match self.sender.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn audit(
        &self,
        cred: Option<&CredentialRef>,
        method: &Method,
        path: &str,
        outcome: AuditOutcome,
    ) {
        self.egress.audit.record(AuditEvent::new(
            cred, &self.host, method, path, &self.who, outcome,
        ));
    }

    fn placeholder_refusal(
        &self,
        ph: Option<&Placeholder>,
        method: &Method,
        path: &str,
    ) -> Response<ProxyBody> {
        let cred = ph.map(|p| &p.credential);
        self.audit(cred, method, path, AuditOutcome::PlaceholderRefused);
        tracing::warn!(
            sandbox_id = %self.who.sandbox_id, session_id = %self.who.session_id,
            host = %self.host, credential_id = cred.map(|c| c.credential_id.as_str()).unwrap_or("unknown"),
            "egress: placeholder sent to a host it is not allowed on; refused"
        );
        let message = match cred {
            Some(c) => format!(
                "the placeholder of credential {} may not be sent to {}",
                c.credential_id, self.host
            ),
            None => format!(
                "an unknown credential placeholder may not be sent to {}",
                self.host
            ),
        };
        refused(&Refusal {
            policy: PolicyName::PlaceholderHosts,
            message,
        })
    }

    async fn request(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        match self.clone().forward(req).await {
            Ok(r) | Err(Stop(r)) => r,
        }
    }

    async fn forward(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Stop> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // The tunnel is bound to its CONNECT host: a Host header (or an
        // absolute url) naming another host would reach a different vhost.
        let named = req.uri().host().map(str::to_owned).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|a| a.host().to_owned())
        });
        if let Some(n) = named {
            if normalize_host(&n).as_deref() != Some(self.host.as_str()) {
                return Err(Stop(refused_with(
                    StatusCode::MISDIRECTED_REQUEST,
                    &Refusal {
                        policy: PolicyName::HostMatch,
                        message: format!("request names host {n} inside a tunnel to {}", self.host),
                    },
                )));
            }
        }
        let (parts, body) = req.into_parts();
        let mut headers = forwardable(parts.headers);
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(header::EXPECT);
        for c in &self.rule.credentials {
            headers.remove(header::AUTHORIZATION);
            if let AuthScheme::Header { name, .. } = &c.scheme {
                headers.remove(name);
            }
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        // Placeholders in the url are never swapped; refused off their hosts.
        for (_, known) in self.policy.placeholders_in(pq.as_bytes()) {
            if let Decision::Refuse(ph) = decide(&self.host, known, |_| false) {
                return Err(Stop(self.placeholder_refusal(ph, &method, &path)));
            }
        }
        let mut used: Vec<CredentialRef> = Vec::new();
        self.swap_in_headers(&mut headers, &method, &path, &mut used)
            .await?;
        let hit = Arc::new(Mutex::new(None));
        // Small bodies (and every body a placeholder may be swapped into) are
        // read whole and checked before anything goes upstream; larger ones
        // stream, checked on the way (a refusal then aborts the upstream request).
        let small = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= SMALL_BODY);
        let body = if small || self.policy.body_injection_on(&self.host) {
            self.swap_in_body(body, &mut headers, &method, &path, &mut used)
                .await?
        } else {
            ScanBody::new(
                body,
                Some(self.policy.clone()),
                self.host.clone(),
                hit.clone(),
            )
            .boxed()
        };
        if let Some(c) = self.rule.credential_for(&path) {
            self.inject(c, &mut headers, &method, &path).await?;
            used.push(c.credential.clone());
        }
        let Ok(uri) = pq.parse::<Uri>() else {
            return Err(Stop(answer(
                StatusCode::BAD_REQUEST,
                "invalid request target",
            )));
        };
        let mut up = Request::new(body);
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;
        set_host(up.headers_mut(), &self.host, self.port, 443);

        let sent = match self.ready_sender().await {
            Ok(mut s) => {
                let fut = s.send_request(up);
                *self.lock_sender() = Some(s);
                fut.await
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %self.who.sandbox_id, host = %self.host, error = %e, "egress upstream failed");
                for c in &used {
                    self.audit(Some(c), &method, &path, AuditOutcome::UpstreamFailed);
                }
                return Err(Stop(answer(StatusCode::BAD_GATEWAY, &e.to_string())));
            }
        };
        if let Some(ph) = take_hit(&hit) {
            *self.lock_sender() = None;
            let ph = ph.as_ref().and_then(|c| {
                self.policy
                    .placeholders()
                    .iter()
                    .find(|p| &p.credential == c)
            });
            return Err(Stop(self.placeholder_refusal(ph, &method, &path)));
        }
        match sent {
            Ok(resp) => {
                for c in &used {
                    self.audit(
                        Some(c),
                        &method,
                        &path,
                        AuditOutcome::Injected {
                            status: resp.status().as_u16(),
                        },
                    );
                }
                Ok(downstream_response(resp))
            }
            Err(e) => {
                *self.lock_sender() = None;
                for c in &used {
                    self.audit(Some(c), &method, &path, AuditOutcome::UpstreamFailed);
                }
                Err(Stop(answer(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream {}:{}: {e}", self.host, self.port),
                )))
            }
        }
    }

    /// The upstream connection, ready for a request: the kept one, or a new one.
    async fn ready_sender(&self) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let kept = self.lock_sender().take();
        if let Some(mut s) = kept {
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let pending = self.pending.lock().await.take();
        if let Some(h) = pending {
            if let Ok(opened) = h.await {
                let mut s = opened?;
                if s.ready().await.is_ok() {
                    return Ok(s);
                }
            }
        }
        self.egress.open_upstream(&self.host, self.port).await
    }

    async fn secret_or_stop(
        &self,
        cred: &CredentialRef,
        method: &Method,
        path: &str,
    ) -> Result<super::secrets::SecretValue, Stop> {
        let got = self.egress.secrets.secret(cred).await;
        let outcome = if got.is_ok() { "ok" } else { "unavailable" };
        metrics::counter!("airlock_bridge_credential_uses_total", "kind" => "egress", "outcome" => outcome)
            .increment(1);
        match got {
            Ok(v) => Ok(v),
            Err(e) => {
                self.audit(Some(cred), method, path, AuditOutcome::SecretUnavailable);
                tracing::warn!(credential_id = %cred.credential_id, host = %self.host, error = %e, "egress: secret unavailable; request not sent");
                Err(Stop(answer(StatusCode::BAD_GATEWAY, &e.to_string())))
            }
        }
    }

    async fn swap_in_headers(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
        used: &mut Vec<CredentialRef>,
    ) -> Result<(), Stop> {
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if values
                .iter()
                .all(|v| find_placeholders(v.as_bytes()).is_empty())
            {
                continue;
            }
            let mut out_values = Vec::with_capacity(values.len());
            let mut sensitive = false;
            for v in values {
                let bytes = v.as_bytes();
                let mut out = Vec::with_capacity(bytes.len());
                let mut last = 0;
                for (r, known) in self.policy.placeholders_in(bytes) {
                    match decide(&self.host, known, |p| p.location.header) {
                        Decision::Refuse(ph) => {
                            return Err(Stop(self.placeholder_refusal(ph, method, path)))
                        }
                        Decision::Keep => {
                            out.extend_from_slice(&bytes[last..r.end]);
                        }
                        Decision::Swap(ph) => {
                            let secret = self.secret_or_stop(&ph.credential, method, path).await?;
                            out.extend_from_slice(&bytes[last..r.start]);
                            out.extend_from_slice(secret.expose().as_bytes());
                            if !used.contains(&ph.credential) {
                                used.push(ph.credential.clone());
                            }
                            sensitive = true;
                        }
                    }
                    last = r.end;
                }
                out.extend_from_slice(&bytes[last..]);
                let Ok(mut hv) = HeaderValue::from_bytes(&out) else {
                    return Err(Stop(answer(
                        StatusCode::BAD_GATEWAY,
                        &format!("a secret swapped into header {name} is not a valid header value"),
                    )));
                };
                hv.set_sensitive(sensitive);
                out_values.push(hv);
            }
            headers.remove(&name);
            for v in out_values {
                headers.append(name.clone(), v);
            }
        }
        Ok(())
    }

    async fn swap_in_body(
        &self,
        body: Incoming,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
        used: &mut Vec<CredentialRef>,
    ) -> Result<ProxyBody, Stop> {
        let limit = self.egress.max_buffered_body;
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return Err(Stop(if too_big {
                    answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body to {} is larger than the {limit} bytes the proxy buffers to swap credential placeholders", self.host),
                    )
                } else {
                    answer(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request body: {e}"),
                    )
                }));
            }
        };
        let found = self.policy.placeholders_in(&bytes);
        if found.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            return Ok(Full::new(bytes).map_err(|e| match e {}).boxed());
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for (r, known) in found {
            match decide(&self.host, known, |p| p.location.body) {
                Decision::Refuse(ph) => {
                    return Err(Stop(self.placeholder_refusal(ph, method, path)))
                }
                Decision::Keep => out.extend_from_slice(&bytes[last..r.end]),
                Decision::Swap(ph) => {
                    let secret = self.secret_or_stop(&ph.credential, method, path).await?;
                    out.extend_from_slice(&bytes[last..r.start]);
                    out.extend_from_slice(secret.expose().as_bytes());
                    if !used.contains(&ph.credential) {
                        used.push(ph.credential.clone());
                    }
                }
            }
            last = r.end;
        }
        out.extend_from_slice(&bytes[last..]);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(Full::new(Bytes::from(out)).map_err(|e| match e {}).boxed())
    }

    async fn inject(
        &self,
        c: &super::policy::HostCredential,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
    ) -> Result<(), Stop> {
        let secret = self.secret_or_stop(&c.credential, method, path).await?;
        let (name, value) = match &c.scheme {
            AuthScheme::Bearer => (header::AUTHORIZATION, format!("Bearer {}", secret.expose())),
            AuthScheme::Basic { username } => (
                header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", secret.expose()))
                ),
            ),
            AuthScheme::Header { name, prefix } => {
                (name.clone(), format!("{prefix}{}", secret.expose()))
            }
        };
        let Ok(mut hv) = HeaderValue::from_str(&value) else {
            return Err(Stop(answer(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "the secret of credential {} is not a valid header value",
                    c.credential.credential_id
                ),
            )));
        };
        hv.set_sensitive(true);
        headers.insert(name, hv);
        Ok(())
    }
}

async fn handshake<IO>(
    io: TokioIo<IO>,
    host: &str,
    port: u16,
) -> Result<SendRequest<ProxyBody>, UpstreamError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect {
            host: host.to_owned(),
            port,
            source: std::io::Error::other(e.to_string()),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "egress upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn forwardable(mut headers: HeaderMap) -> HeaderMap {
    // Headers the client listed in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(h);
    }
    headers
}

fn set_host(headers: &mut HeaderMap, host: &str, port: u16, default_port: u16) {
    if headers.contains_key(header::HOST) {
        return;
    }
    let v = if port == default_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        headers.insert(header::HOST, v);
    }
}

fn downstream_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = forwardable(parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

fn answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("airlock egress proxy: {message}\n")))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(EGRESS_HEADER, HeaderValue::from_static("error"));
    r
}

fn refused(refusal: &Refusal) -> Response<ProxyBody> {
    refused_with(StatusCode::FORBIDDEN, refusal)
}

fn refused_with(status: StatusCode, refusal: &Refusal) -> Response<ProxyBody> {
    let mut r = answer(status, &format!("refused: {refusal}"));
    r.headers_mut()
        .insert(EGRESS_HEADER, HeaderValue::from_static("refused"));
    r
}

/// A placeholder found in a streamed body: `Some(credential)` when the session knows it.
type Hit = Arc<Mutex<Option<Option<CredentialRef>>>>;

fn take_hit(hit: &Hit) -> Option<Option<CredentialRef>> {
    match hit.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

/// A streamed request body, scanned for placeholders on its way: one the
/// host may not receive (with `policy` `None`: any) stops the body with an
/// error before its bytes are forwarded, and is noted in `hit`. The last
/// [`PLACEHOLDER_MAX_LEN`] bytes are held back until the next chunk so a
/// placeholder split across chunks is still seen whole.
struct ScanBody {
    inner: Incoming,
    tail: BytesMut,
    policy: Option<Arc<EgressPolicy>>,
    host: String,
    hit: Hit,
    trailers: Option<HeaderMap>,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body carries a credential placeholder its host may not receive")]
struct PlaceholderInBody;

impl ScanBody {
    fn new(inner: Incoming, policy: Option<Arc<EgressPolicy>>, host: String, hit: Hit) -> Self {
        Self {
            inner,
            tail: BytesMut::new(),
            policy,
            host,
            hit,
            trailers: None,
            done: false,
        }
    }

    /// Check the placeholders in the buffer; `at_end`: the body is complete.
    fn scan(&self, at_end: bool) -> Result<(), Option<CredentialRef>> {
        let Some(policy) = &self.policy else {
            // plain http: any placeholder is refused
            return match find_placeholders(&self.tail).is_empty() {
                true => Ok(()),
                false => Err(None),
            };
        };
        for (r, known) in policy.placeholders_in(&self.tail) {
            if known.is_none() && r.end == self.tail.len() && !at_end {
                continue; // may continue in the next chunk; seen whole next time
            }
            if let Decision::Refuse(ph) = decide(&self.host, known, |_| false) {
                return Err(ph.map(|p| p.credential.clone()));
            }
        }
        Ok(())
    }

    fn stop(
        &mut self,
        cred: Option<CredentialRef>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.hit.lock() {
            Ok(mut g) => *g = Some(cred),
            Err(p) => *p.into_inner() = Some(cred),
        }
        self.done = true;
        Poll::Ready(Some(Err(Box::new(PlaceholderInBody))))
    }
}

impl Body for ScanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.tail.extend_from_slice(&data);
                        if let Err(c) = this.scan(false) {
                            return this.stop(c);
                        }
                        let keep = this.tail.len().min(PLACEHOLDER_MAX_LEN);
                        let out = this.tail.split_to(this.tail.len() - keep).freeze();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    if let Err(c) = this.scan(true) {
                        return this.stop(c);
                    }
                    this.done = true;
                    if !this.tail.is_empty() {
                        let out = this.tail.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none() && self.tail.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Same bytes as the inner body, just held back a little.
        let mut h = SizeHint::new();
        if let Some(exact) = self.inner.size_hint().exact() {
            if self.tail.is_empty() && !self.done {
                h.set_exact(exact);
            }
        }
        h
    }
}
