//! The network checks: `dns` (the tunnel host resolves), `udp` (a real QUIC
//! dial with this agent's certificate, through the hello), `tcp` (the
//! TLS-over-TCP fallback the same way, through the proxy when one applies),
//! `proxy` (reachable, CONNECT accepted), `tls-interception` (the chain the
//! server presents validates against the pinned CA; otherwise who issued
//! it) and `clock` (skew against the `Date` of the control plane's
//! enrollment listener).
//!
//! The dials are the agent's own: [`tunnel::client::spawn`] with the
//! settings `run` builds ([`crate::connect::client_settings`]), stopped
//! after the first connect or the first failure. A dial that gets through
//! the hello is a real connection: the control plane lists it for a moment
//! and logs "agent connected" / "agent disconnected".

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use daemon::doctor::{timed, Check, Report, Status};
use protocol::call::{ErrorCode, Request, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tunnel::client::ClientStatus;
use tunnel::proxy::{ProxyConfig, ProxyError};
use tunnel::{CallHandler, CallIo, TransportMode};

use super::identity::{human, Loaded};
use crate::config::Config;
use crate::identity::AgentIdentity;

/// Clock skew that warns.
pub const CLOCK_WARN: Duration = Duration::from_secs(30);
/// Clock skew that fails.
pub const CLOCK_FAIL: Duration = Duration::from_secs(300);

/// Run the network checks in order: for every configured address `dns`,
/// then `udp`, `tcp`, `proxy` and `tls-interception` for every link the
/// agent makes to it (an IP address is one link; a DNS name one link per
/// address it resolves to, as `run` dials them), then `clock` once.
///
/// With more than one link in all, each link check's name carries the
/// link's label, the same as the `link` label of the agent's tunnel metrics
/// and its log lines ([`link_label`]): `udp@10.0.0.2:7443` for an IP
/// address, `udp@cp.example:7443@10.0.0.2:7443` for one address of a name;
/// with more than one configured address the `dns` checks carry the
/// configured address (`dns@cp-b.example:7443`).
pub(super) async fn all(r: &mut Report, config: &Config, id: &Loaded) {
    all_with(r, config, id, |a: String| async move { resolve(&a).await }).await;
}

/// [`all`] with the resolver given (the tests resolve a name to
/// addresses of their own).
async fn all_with<R, F>(r: &mut Report, config: &Config, id: &Loaded, resolver: R)
where
    R: Fn(String) -> F,
    F: std::future::Future<Output = Result<Vec<SocketAddr>, String>>,
{
    let addresses = id
        .identity
        .as_ref()
        .map(|i| i.endpoint().addresses.clone())
        .unwrap_or_else(|| config.control_plane.addresses.clone());
    if addresses.is_empty() {
        for name in ["dns", "udp", "tcp", "proxy", "tls-interception", "clock"] {
            r.push(Check::skip(
                name,
                "no control plane address (see the identity check)",
            ));
        }
        return;
    }
    let proxied = |configured: &str| {
        let host = settings::split_host_port(configured)
            .map(|(h, _)| h.to_owned())
            .unwrap_or_default();
        config
            .tunnel
            .proxy
            .as_ref()
            .is_some_and(|p| p.applies_to(&host))
    };
    // Resolve every configured address first: the names of the checks
    // depend on how many links there are in all.
    let mut plans = Vec::with_capacity(addresses.len());
    for configured in &addresses {
        let started = std::time::Instant::now();
        let found = match tokio::time::timeout(DNS_TIMEOUT, resolver(configured.clone())).await {
            Ok(found) => found,
            Err(_) => Err(format!("no answer within {} s", DNS_TIMEOUT.as_secs())),
        };
        let mut dns = dns_check(configured, found.clone(), proxied(configured));
        dns.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        plans.push((configured.clone(), dns, link_targets(configured, &found)));
    }
    let links: usize = plans.iter().map(|(_, _, t)| t.len()).sum();
    let several_addresses = addresses.len() > 1;
    for (configured, dns, targets) in plans {
        let mut dns = dns;
        if several_addresses {
            dns.name = format!("dns@{configured}");
        }
        r.push(dns);
        for target in targets {
            let mut one = Report::new("sandbox-agent", r.strict);
            link_checks(&mut one, config, id, &configured, &target).await;
            for mut check in one.checks {
                if links > 1 || several_addresses {
                    check.name = format!("{}@{}", check.name, link_label(&configured, &target));
                }
                r.push(check);
            }
        }
    }
    clock_check(r, config, id).await;
}

/// Limit for resolving one configured address.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// The system resolver, as the agent's links use it.
async fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    tokio::net::lookup_host(address)
        .await
        .map(|a| a.collect())
        .map_err(|e| e.to_string())
}

/// What the agent dials for `configured`: itself when it is an IP address
/// (or does not resolve here: the check then dials the name, which a proxy
/// may resolve), else every address it resolves to, deduplicated and
/// sorted as the agent's links are.
fn link_targets(configured: &str, found: &Result<Vec<SocketAddr>, String>) -> Vec<String> {
    let is_ip = settings::split_host_port(configured)
        .is_some_and(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    match found {
        Ok(addrs) if !is_ip && !addrs.is_empty() => addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        _ => vec![configured.to_owned()],
    }
}

/// A link's name in check names, logs and metrics: `configured`, or
/// `configured@address` when a name was resolved to `address` (the same
/// as the agent's links, `crate::connect::links`).
fn link_label(configured: &str, address: &str) -> String {
    if configured == address {
        configured.to_owned()
    } else {
        format!("{configured}@{address}")
    }
}

/// The checks of one link of `configured`, to `address` (`configured`
/// itself, or one address it resolved to); the certificate name and the
/// proxy's rules come from `configured`, as for the agent's links.
async fn link_checks(
    r: &mut Report,
    config: &Config,
    id: &Loaded,
    configured: &str,
    address: &str,
) {
    let address = address.to_owned();
    let host = settings::split_host_port(configured)
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();
    let proxy = config.tunnel.proxy.clone().filter(|p| p.applies_to(&host));
    let mode = config.tunnel.transport;
    let (udp, tcp) = match &id.identity {
        None => (
            Check::skip("udp", "no identity (see the identity check)"),
            Check::skip("tcp", "no identity (see the identity check)"),
        ),
        Some(identity) => {
            let t = &config.tunnel;
            let udp = if mode == TransportMode::TcpOnly {
                Check::skip("udp", "tunnel.transport = \"tcp\": QUIC is not used")
            } else {
                timed(
                    "udp",
                    t.quic_connect_timeout * 2 + Duration::from_secs(2),
                    "allow outbound UDP to the control plane's tunnel port",
                    dial(
                        "udp",
                        config,
                        identity,
                        configured,
                        &address,
                        TransportMode::QuicOnly,
                    ),
                )
                .await
            };
            let tcp = if mode == TransportMode::QuicOnly {
                Check::skip(
                    "tcp",
                    "tunnel.transport = \"quic\": the TCP fallback is not used",
                )
            } else {
                timed(
                    "tcp",
                    t.connect_timeout * 2 + Duration::from_secs(2),
                    "allow outbound TCP to the control plane's tunnel port (or through tunnel.proxy_url)",
                    dial("tcp", config, identity, configured, &address, TransportMode::TcpOnly),
                )
                .await
            };
            (udp, tcp)
        }
    };
    // QUIC down while TCP works: the agent runs (on TCP), so it is a warning
    // in `auto` mode; with `quic` only, it is a failure.
    let udp = if udp.status == Status::Fail
        && mode == TransportMode::Auto
        && tcp.status == Status::Pass
    {
        Check {
            status: Status::Warn,
            detail: format!("{}; the agent falls back to TLS over TCP", udp.detail),
            ..udp
        }
    } else {
        udp
    };
    r.push(udp);
    r.push(tcp);
    r.push(
        timed(
            "proxy",
            config.tunnel.connect_timeout + Duration::from_secs(1),
            "check that the proxy in tunnel.proxy_url (or HTTPS_PROXY) answers",
            proxy_check(config.tunnel.proxy.as_ref(), &host, &address),
        )
        .await,
    );
    let ca = id.identity.as_ref().map(|i| i.credentials().ca);
    let server_name = id
        .identity
        .as_ref()
        .map(|i| i.endpoint().server_name_for(configured));
    r.push(match (&ca, &server_name) {
        (Some(ca), Some(name)) if mode != TransportMode::QuicOnly => {
            timed(
                "tls-interception",
                config.tunnel.connect_timeout + Duration::from_secs(1),
                "check the TCP path to the control plane",
                interception(ca, name, &address, proxy.as_ref()),
            )
            .await
        }
        (Some(_), Some(_)) => Check::skip(
            "tls-interception",
            "tunnel.transport = \"quic\": no TCP path to inspect",
        ),
        _ => Check::skip("tls-interception", "no identity (see the identity check)"),
    });
}

/// `clock`: skew against the enrollment listener's `Date`.
async fn clock_check(r: &mut Report, config: &Config, id: &Loaded) {
    let ca = id.identity.as_ref().map(|i| i.credentials().ca);
    r.push(match (&ca, &id.enroll) {
        (Some(ca), Some((enroll, name))) => {
            let proxy = config
                .tunnel
                .proxy
                .clone()
                .filter(|p| settings::split_host_port(enroll).is_some_and(|(h, _)| p.applies_to(h)));
            timed(
                "clock",
                Duration::from_secs(15),
                "check that the enrollment listener answers; compare `date -u` with the control plane's host",
                clock(ca, enroll, name, proxy.as_ref()),
            )
            .await
        }
        (None, _) => Check::skip("clock", "no identity (see the identity check)"),
        (_, None) => Check::skip(
            "clock",
            "no enrollment address known (control_plane.enroll_address, or the identity record)",
        ),
    });
}

/// The `dns` check of `configured` from what the resolver said.
fn dns_check(configured: &str, found: Result<Vec<SocketAddr>, String>, proxied: bool) -> Check {
    match found {
        Ok(addrs) if addrs.is_empty() => dns_failed(configured, "no addresses".into(), proxied),
        Ok(addrs) => {
            let mut ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            ips.dedup();
            Check::pass(
                "dns",
                format!("{configured} resolves to {}", ips.join(", ")),
            )
        }
        Err(e) => dns_failed(configured, e, proxied),
    }
}

fn dns_failed(address: &str, why: String, proxied: bool) -> Check {
    let fix = "make the host resolvable here (DNS, /etc/hosts) or set control_plane.address to an IP and control_plane.server_name to the certificate's name";
    if proxied {
        Check::warn(
            "dns",
            format!("{address} does not resolve here ({why}); the proxy resolves it for TCP, but QUIC needs it"),
            fix,
        )
    } else {
        Check::fail("dns", format!("{address} does not resolve: {why}"), fix)
    }
}

/// Refuses every call: a doctor's connection serves nothing.
#[derive(Debug)]
struct NoCalls;

#[async_trait::async_trait]
impl CallHandler for NoCalls {
    async fn handle(&self, _request: Request, _io: &mut CallIo) -> Response {
        Response::error(
            ErrorCode::Unavailable,
            "this connection is `sandbox-agent doctor`, which serves no calls",
        )
    }
}

/// One dial over `mode` with the agent's settings and certificate, through
/// the hello; closed at once.
async fn dial(
    name: &str,
    config: &Config,
    identity: &Arc<AgentIdentity>,
    configured: &str,
    address: &str,
    mode: TransportMode,
) -> Check {
    let mut settings = crate::connect::client_settings(config, identity);
    settings.server = address.to_owned();
    settings.server_name = identity.endpoint().server_name_for(configured);
    settings.mode = mode;
    settings.capabilities = vec!["doctor".into()];
    let server = settings.server.clone();
    let tls = match identity.client_config(&[tunnel::ALPN]) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            return Check::fail(
                name,
                format!("tls client config: {e}"),
                "re-enroll: `sandbox-agent enroll --force --join <join string>`",
            )
        }
    };
    let handle = tunnel::client::spawn(settings, tls, Arc::new(NoCalls));
    let mut status = handle.status();
    let outcome = loop {
        let now = status.borrow_and_update().clone();
        match now {
            ClientStatus::Connected {
                transport, version, ..
            } => {
                break Ok(format!(
                    "{transport} to {server}: handshake and hello done (protocol {version})"
                ))
            }
            ClientStatus::Disconnected { error } => break Err((error, false)),
            ClientStatus::Revoked { error } => break Err((error, true)),
            ClientStatus::Incompatible { error } => {
                break Err((
                    format!("no protocol version in common with the control plane: {error}"),
                    false,
                ))
            }
            ClientStatus::Stopped => break Err(("the client stopped".into(), false)),
            ClientStatus::Connecting => {}
        }
        if status.changed().await.is_err() {
            break Err(("the client ended".into(), false));
        }
    };
    handle.shutdown(Duration::from_millis(100)).await;
    match outcome {
        Ok(detail) => Check::pass(name, detail),
        Err((error, true)) => Check::fail(
            name,
            format!("the control plane refused this agent as revoked: {error}"),
            "re-enroll with a new join token: `sandbox-agent enroll --force --join <join string>`",
        ),
        Err((error, false)) => {
            let fix = dial_fix(name, &error, config);
            Check::fail(name, error, fix)
        }
    }
}

/// The one-line fix for a failed dial, from what failed.
fn dial_fix(name: &str, error: &str, config: &Config) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("no protocol version in common") {
        return "upgrade the older side: run the same Airlock release on the agent and the control plane (see docs/upgrades.md)".into();
    }
    if e.contains("certificate") && (e.contains("notvalidyet") || e.contains("not valid yet")) {
        return "the certificates' validity does not match this host's clock: fix the clock (`timedatectl set-ntp true`)".into();
    }
    if e.contains("expired") {
        return "a certificate expired: fix the clock if it is wrong, else re-enroll (`sandbox-agent enroll --force --join <join string>`)".into();
    }
    if e.contains("unknownissuer") || e.contains("invalid peer certificate") {
        return "the server's certificate does not chain to the pinned CA: see the tls-interception check".into();
    }
    if e.contains("proxy") {
        return "see the proxy check; fix tunnel.proxy_url (or HTTPS_PROXY)".into();
    }
    if name == "udp" {
        return match config.tunnel.transport {
            TransportMode::QuicOnly => "allow outbound UDP to the control plane's tunnel port, or set tunnel.transport = \"auto\" to fall back to TCP".into(),
            _ => "allow outbound UDP to the control plane's tunnel port in the firewall (QUIC reconnects faster); or set tunnel.transport = \"tcp\" to stop trying".into(),
        };
    }
    "allow outbound TCP to the control plane's tunnel port, or set tunnel.proxy_url to the HTTP CONNECT proxy this network requires".into()
}

async fn proxy_check(proxy: Option<&ProxyConfig>, host: &str, address: &str) -> Check {
    const NAME: &str = "proxy";
    let Some(proxy) = proxy else {
        return Check::skip(NAME, "no proxy configured (tunnel.proxy_url, HTTPS_PROXY)");
    };
    if !proxy.applies_to(host) {
        return Check::skip(
            NAME,
            format!("{host} is in NO_PROXY: {proxy} is not used for it"),
        );
    }
    match proxy.connect(address).await {
        Ok(_) => Check::pass(NAME, format!("{proxy} accepted CONNECT to {address}")),
        Err(e @ ProxyError::Connect { .. }) => Check::fail(
            NAME,
            e.to_string(),
            "check the proxy's host and port in tunnel.proxy_url (or HTTPS_PROXY), and that this host may reach it",
        ),
        Err(e @ ProxyError::Refused { .. }) if e.to_string().contains(" 407") => Check::fail(
            NAME,
            e.to_string(),
            "the proxy wants credentials: put them in tunnel.proxy_url as http://user:password@host:port",
        ),
        Err(e @ ProxyError::Refused { .. }) => Check::fail(
            NAME,
            e.to_string(),
            format!("ask the proxy's admins to allow CONNECT to {address} (many proxies allow port 443 only), or add the host to NO_PROXY if it is reachable directly"),
        ),
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            "tunnel.proxy_url must name an HTTP CONNECT proxy (http://host:port)",
        ),
    }
}

/// Records the chain the server presents and what the real verifier says of it.
#[derive(Debug)]
struct Capture {
    inner: pki::tls::ControlPlaneVerifier,
    chain: Mutex<Vec<CertificateDer<'static>>>,
    verdict: Mutex<Option<Result<(), rustls::Error>>>,
    /// Verify as of the leaf's start of validity instead of now (the clock
    /// check must read the `Date` even when this host's clock is wrong).
    at_issue_time: bool,
}

impl Capture {
    fn new(ca: &CertificateDer<'static>, at_issue_time: bool) -> Result<Arc<Self>, pki::TlsError> {
        Ok(Arc::new(Self {
            inner: pki::tls::ControlPlaneVerifier::new(ca)?,
            chain: Mutex::new(Vec::new()),
            verdict: Mutex::new(None),
            at_issue_time,
        }))
    }

    fn client_config(self: &Arc<Self>, alpn: &[u8]) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut c = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_safe_default_protocol_versions()?
            .dangerous() // the verifier delegates to the agent's own (pinned CA); it only records the chain
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(c)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn verdict(&self) -> Option<Result<(), rustls::Error>> {
        self.verdict.lock().ok().and_then(|v| v.clone())
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut c) = self.chain.lock() {
            *c = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        let at = if self.at_issue_time {
            validity(end_entity)
                .map(|(from, _)| {
                    UnixTime::since_unix_epoch(Duration::from_secs(from.max(0) as u64 + 1))
                })
                .unwrap_or(now)
        } else {
            now
        };
        let r = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            at,
        );
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(r.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether a verification error means the chain does not lead to the pinned
/// CA at all (someone else's certificate), as opposed to our CA's
/// certificate being expired, not yet valid or for another name.
fn not_from_pinned_ca(e: &rustls::Error) -> bool {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => {
            matches!(
                c,
                C::UnknownIssuer | C::BadSignature | C::BadEncoding | C::UnhandledCriticalExtension
            ) || matches!(c, C::Other(_))
        }
        _ => false,
    }
}

/// (not_before, not_after) of a certificate, unix seconds.
fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some((
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    ))
}

/// (subject, issuer) of a certificate as text.
fn names(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some((x.subject().to_string(), x.issuer().to_string()))
}

/// TCP to `address`, through `proxy` when given.
async fn tcp_to(
    address: &str,
    proxy: Option<&ProxyConfig>,
) -> Result<tokio::net::TcpStream, String> {
    match proxy {
        Some(p) => p.connect(address).await.map_err(|e| e.to_string()),
        None => tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}")),
    }
}

async fn interception(
    ca: &CertificateDer<'static>,
    server_name: &str,
    address: &str,
    proxy: Option<&ProxyConfig>,
) -> Check {
    const NAME: &str = "tls-interception";
    let capture = match Capture::new(ca, false) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("stored CA unusable: {e}"),
                "re-enroll: `sandbox-agent enroll --force --join <join string>`",
            )
        }
    };
    let config = match capture.client_config(tunnel::ALPN) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("tls client config: {e}"),
                "report this as a bug",
            )
        }
    };
    let Ok(name) = ServerName::try_from(server_name.to_owned()) else {
        return Check::fail(
            NAME,
            format!("`{server_name}` is not a valid TLS server name"),
            "set control_plane.server_name to the name in the control plane's certificate",
        );
    };
    let tcp = match tcp_to(address, proxy).await {
        Ok(t) => t,
        Err(e) => return Check::skip(NAME, format!("no TCP path to inspect ({e})")),
    };
    let via = match proxy {
        Some(p) => format!(" through {p}"),
        None => String::new(),
    };
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let chain = capture.chain();
    match (capture.verdict(), chain.first()) {
        (Some(Ok(())), _) => Check::pass(
            NAME,
            format!(
                "the chain {address} presents{via} validates against the pinned CA {}: not intercepted",
                pki::Fingerprint::of_der(ca)
            ),
        ),
        (Some(Err(why)), Some(leaf)) => {
            let (subject, issuer) = names(leaf).unwrap_or_else(|| ("?".into(), "?".into()));
            if not_from_pinned_ca(&why) {
                Check::fail(
                    NAME,
                    format!("TLS is intercepted by {issuer}: {address}{via} presented a certificate for {subject} that the pinned CA did not issue ({why})"),
                    format!("exempt {address} from TLS inspection on the proxy or firewall (its SSL/TLS bypass list); the agent trusts only its pinned CA"),
                )
            } else {
                // Our CA issued it: not interception, something else is wrong.
                Check::fail(
                    NAME,
                    format!("the control plane's certificate ({subject}, issued by {issuer}) is refused: {why}"),
                    "if it is expired or not yet valid, fix this host's clock; if the name does not match, set control_plane.server_name to a name in the certificate",
                )
            }
        }
        _ => match handshake {
            Ok(_) => Check::warn(NAME, "handshake finished without a certificate check", "report this as a bug"),
            Err(e) => Check::fail(
                NAME,
                format!("no TLS certificate received from {address}{via}: {e}"),
                "something on the path speaks another protocol on this port: check the address and any middlebox",
            ),
        },
    }
}

/// The `Date` of a GET to the enrollment listener, against this host's clock.
async fn clock(
    ca: &CertificateDer<'static>,
    enroll: &str,
    server_name: &str,
    proxy: Option<&ProxyConfig>,
) -> Check {
    const NAME: &str = "clock";
    let unmeasured = |why: String| {
        Check::warn(
            NAME,
            format!("cannot measure clock skew against {enroll}: {why}"),
            "make sure this host syncs its clock (`timedatectl status` shows \"System clock synchronized: yes\")",
        )
    };
    let capture = match Capture::new(ca, true) {
        Ok(c) => c,
        Err(e) => return unmeasured(e.to_string()),
    };
    let config = match capture.client_config(pki::ALPN_ENROLL) {
        Ok(c) => c,
        Err(e) => return unmeasured(e.to_string()),
    };
    let Ok(name) = ServerName::try_from(server_name.to_owned()) else {
        return unmeasured(format!("`{server_name}` is not a TLS server name"));
    };
    let tcp = match tcp_to(enroll, proxy).await {
        Ok(t) => t,
        Err(e) => return unmeasured(e),
    };
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return unmeasured(format!("tls: {e}")),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => return unmeasured(format!("http: {e}")),
        };
    let driver = tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, server_name)
        .body(http_body_util::Empty::<bytes::Bytes>::new());
    let req = match req {
        Ok(r) => r,
        Err(e) => return unmeasured(e.to_string()),
    };
    let sent = SystemTime::now();
    let resp = sender.send_request(req).await;
    let received = SystemTime::now();
    driver.abort();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return unmeasured(format!("http: {e}")),
    };
    let Some(date) = resp
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
    else {
        return unmeasured("the answer has no Date header".into());
    };
    let Some(server) = parse_http_date(date) else {
        return unmeasured(format!("Date `{date}` does not parse"));
    };
    // Our clock at the moment the server stamped the answer: between send and receive.
    let rtt = received.duration_since(sent).unwrap_or(Duration::ZERO);
    let ours = sent + rtt / 2;
    let (skew, ahead) = match server.duration_since(ours) {
        Ok(d) => (d, false), // the server is ahead: we are behind
        Err(e) => (e.duration(), true),
    };
    // The Date header has whole seconds.
    let skew = skew.saturating_sub(Duration::from_secs(1));
    let how = if skew.is_zero() {
        "in step with".to_owned()
    } else if ahead {
        format!("{} ahead of", human(skew))
    } else {
        format!("{} behind", human(skew))
    };
    let detail = format!("this host's clock is {how} the control plane's ({enroll} says {date})");
    let fix = "fix this host's clock (`timedatectl set-ntp true`, or chrony/ntpd); certificates are checked against it";
    if skew > CLOCK_FAIL {
        Check::fail(NAME, detail, fix)
    } else if skew > CLOCK_WARN {
        Check::warn(NAME, detail, fix)
    } else {
        Check::pass(NAME, detail)
    }
}

/// `Sun, 06 Dec 2026 23:07:22 GMT` (RFC 9110 IMF-fixdate).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &format)
        .ok()
        .map(|t| SystemTime::from(t.assume_utc()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use pki::{IdentityService, IdentitySettings};
    use tunnel::{Listener, ServerSettings};

    /// A tunnel listener of `tls` that accepts every agent through the
    /// hello (and keeps nothing).
    async fn replica(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
        let settings = ServerSettings::default();
        let mut listener = Listener::bind(settings.clone(), tls).await.unwrap();
        let addr = listener.local_addr();
        tokio::spawn(async move {
            while let Some(pending) = listener.accept().await {
                let version = pending.negotiate().unwrap();
                let peer = pending.hello().map(|h| h.agent_id.clone()).unwrap();
                let _ = pending.accept(version, &settings, None, peer).await;
            }
        });
        addr
    }

    /// A name resolving to three addresses: two replicas (real tunnel
    /// listeners whose certificate names only `cp.test`) and one where
    /// nothing listens. The doctor dials each address, as `run` makes one
    /// link each, with the name's certificate name, and names each check
    /// after its link; only the dead address fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_address_a_name_resolves_to_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = IdentitySettings::new(dir.path().join("cp"));
        settings.server_names = vec!["cp.test".into()];
        let svc = IdentityService::open(settings).unwrap();
        let tls = Arc::new(svc.tunnel_server_config(&[tunnel::ALPN]).unwrap());
        let a = replica(tls.clone()).await;
        let b = replica(tls).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let text = format!(
            "data_dir = \"{}\"\n[control_plane]\naddress = \"cp.test:7443\"\n[tunnel]\nquic_connect_timeout_seconds = 0.5\n",
            dir.path().join("agent").display()
        );
        let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let identity = crate::identity::enrolled_for_test(&svc, "env_d", &config);
        let loaded = Loaded {
            identity: Some(identity),
            check: Check::pass("identity", "loaded"),
            enroll: None,
        };
        let resolved = vec![a, dead, b];
        let mut r = Report::new("sandbox-agent", false);
        all_with(&mut r, &config, &loaded, |name: String| {
            let resolved = resolved.clone();
            async move {
                assert_eq!(name, "cp.test:7443");
                Ok(resolved)
            }
        })
        .await;
        let status = |name: &str| {
            r.checks
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no check {name}: {:#?}", r.checks))
                .clone()
        };
        assert_eq!(status("dns").status, Status::Pass, "{:?}", status("dns"));
        for up in [a, b] {
            for check in ["udp", "tcp", "tls-interception"] {
                let c = status(&format!("{check}@cp.test:7443@{up}"));
                assert_eq!(c.status, Status::Pass, "{c:?}");
            }
            assert!(
                status(&format!("tcp@cp.test:7443@{up}"))
                    .detail
                    .contains(&up.to_string()),
                "the dial went to {up}"
            );
        }
        for check in ["udp", "tcp"] {
            let c = status(&format!("{check}@cp.test:7443@{dead}"));
            assert_eq!(c.status, Status::Fail, "{c:?}");
        }
        // dns, then udp tcp proxy tls-interception for each of the three
        // links in address order, then clock.
        assert_eq!(r.checks.len(), 1 + 3 * 4 + 1, "{:#?}", r.checks);
        assert_eq!(r.checks.last().unwrap().name, "clock");
    }

    #[test]
    fn an_ip_address_is_one_link_and_a_name_one_per_address() {
        let two: Result<Vec<SocketAddr>, String> = Ok(vec![
            "10.0.0.2:7443".parse().unwrap(),
            "10.0.0.1:7443".parse().unwrap(),
            "10.0.0.2:7443".parse().unwrap(),
        ]);
        assert_eq!(
            link_targets("cp.example:7443", &two),
            ["10.0.0.1:7443", "10.0.0.2:7443"]
        );
        assert_eq!(link_targets("10.0.0.9:7443", &two), ["10.0.0.9:7443"]);
        assert_eq!(
            link_targets("cp.example:7443", &Err("nxdomain".into())),
            ["cp.example:7443"]
        );
        assert_eq!(
            link_label("cp.example:7443", "10.0.0.1:7443"),
            "cp.example:7443@10.0.0.1:7443"
        );
        assert_eq!(
            link_label("10.0.0.9:7443", "10.0.0.9:7443"),
            "10.0.0.9:7443"
        );
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Dec 2026 23:07:22 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_598_442
        );
        assert!(parse_http_date("yesterday").is_none());
    }
}
