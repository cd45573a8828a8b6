//! Every credential use (and every refusal that involves one), and every
//! destination refused by a host policy, is reported to an [`AuditSink`]:
//! who (sandbox, session), which credential, where (host, method, path
//! without the query) and the outcome. Never a secret value.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::policy::{CredentialRef, PolicyName, Refusal};

/// Who is on the other end of a proxy connection. Set by the listener that
/// accepted it (a per-sandbox socket knows its sandbox), never by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxIdentity {
    /// The sandbox.
    pub sandbox_id: String,
    /// The session it runs.
    pub session_id: String,
}

/// What happened to a request that involved a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The secret was added and the upstream answered with this status.
    Injected {
        /// The upstream's HTTP status.
        status: u16,
    },
    /// The secret was added but the upstream exchange failed.
    UpstreamFailed,
    /// The secret backend could not give the secret; the request was not sent.
    SecretUnavailable,
    /// A placeholder was sent to a host it is not allowed on; refused (403).
    PlaceholderRefused,
    /// The destination itself was refused (403) by a host policy: the
    /// session's allowed hosts, its plain-http rule or the agent's
    /// `policy.egress_hosts`. No credential is involved.
    HostRefused {
        /// Which policy.
        policy: PolicyName,
        /// The refusal's sentence (names the host and port; never a secret).
        message: String,
    },
}

impl AuditOutcome {
    /// The outcome of a request refused by `refusal`.
    pub fn host_refused(refusal: &Refusal) -> Self {
        Self::HostRefused {
            policy: refusal.policy,
            message: refusal.message.clone(),
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected { status } => write!(f, "injected (upstream {status})"),
            Self::UpstreamFailed => f.write_str("upstream failed"),
            Self::SecretUnavailable => f.write_str("secret unavailable"),
            Self::PlaceholderRefused => f.write_str("placeholder refused"),
            Self::HostRefused { policy, .. } => write!(f, "refused by {}", policy.as_str()),
        }
    }
}

/// One audited credential use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `vcrd_...`; `None` for a placeholder the session does not know.
    pub credential_id: Option<String>,
    /// `vlt_...` when the credential belongs to a vault.
    pub vault_id: Option<String>,
    /// Upstream host.
    pub host: String,
    /// HTTP method.
    pub method: String,
    /// Request path, without the query string.
    pub path: String,
    /// Sandbox that sent it.
    pub sandbox_id: String,
    /// Its session.
    pub session_id: String,
    /// What happened.
    pub outcome: AuditOutcome,
}

impl AuditEvent {
    pub(crate) fn new(
        credential: Option<&CredentialRef>,
        host: &str,
        method: &http::Method,
        path: &str,
        who: &SandboxIdentity,
        outcome: AuditOutcome,
    ) -> Self {
        Self {
            credential_id: credential.map(|c| c.credential_id.clone()),
            vault_id: credential.and_then(|c| c.vault_id.clone()),
            host: host.to_owned(),
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            sandbox_id: who.sandbox_id.clone(),
            session_id: who.session_id.clone(),
            outcome,
        }
    }
}

/// Where audit events go (the agent's hash-chained audit record in production).
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Record one event. Must not block for long: it runs on the request path.
    fn record(&self, event: AuditEvent);
}

/// Writes events as `tracing` lines (target `airlock::egress::audit`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, e: AuditEvent) {
        tracing::info!(
            target: "airlock::egress::audit",
            credential_id = e.credential_id.as_deref().unwrap_or("-"),
            vault_id = e.vault_id.as_deref().unwrap_or("-"),
            host = %e.host,
            method = %e.method,
            path = %e.path,
            sandbox_id = %e.sandbox_id,
            session_id = %e.session_id,
            outcome = %e.outcome,
            "credential use"
        );
    }
}

/// Keeps events in memory (tests, and a source for a later forwarder).
#[derive(Debug, Default, Clone)]
pub struct MemoryAudit {
    events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl MemoryAudit {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        match self.events.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, event: AuditEvent) {
        match self.events.lock() {
            Ok(mut g) => g.push(event),
            Err(p) => p.into_inner().push(event),
        }
    }
}
