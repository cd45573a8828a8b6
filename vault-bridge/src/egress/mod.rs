//! The bridge's HTTPS egress proxy: a sandbox's only way out.
//!
//! A sandbox speaks HTTP/1.1 proxy protocol to [`Egress::serve_connection`]
//! over whatever byte stream its listener accepted (a per-sandbox Unix
//! socket, a loopback TCP port); the listener says which sandbox it is
//! ([`SandboxIdentity`]), the client cannot. For `CONNECT host:port` the
//! proxy checks the session's [`EgressPolicy`] first (a refusal is a 403
//! naming the policy), connects upstream and verifies the upstream's
//! certificate against the configured roots, then terminates the sandbox's
//! TLS with a leaf minted for that host by the bridge's [`EgressCa`] and
//! forwards each request inside: the host's credential is added (the
//! sandbox's own `Authorization` dropped), `environment_variable`
//! placeholders are swapped for their secret where the credential allows
//! and refused (403, audited) anywhere else. Redirects go back to the client
//! unchanged; following one is a new CONNECT, checked again. Every
//! credential use goes to an [`AuditSink`]. Secret values exist only in the
//! request on its way upstream: never in logs, errors, audit events or
//! anything sent back to the sandbox.

pub mod audit;
pub mod ca;
pub mod policy;
pub mod proxy;
pub mod secrets;
pub mod upstream;

pub use audit::{AuditEvent, AuditOutcome, AuditSink, MemoryAudit, SandboxIdentity, TracingAudit};
pub use ca::EgressCa;
pub use policy::{
    AgentHost, AuthScheme, CredentialRef, EgressPolicy, HostCredential, HostPattern, HostRule,
    InjectionLocation, Placeholder, PlaceholderHosts, PolicyName, Refusal,
};
pub use proxy::{Egress, EGRESS_HEADER};
pub use secrets::{BackendSecrets, MemorySecrets, SecretSource, SecretUnavailable, SecretValue};
pub use upstream::{Resolve, StaticResolver, SystemResolver, TrustRoots, Upstream, UpstreamError};

/// Where the egress CA lives in the bridge's data dir (`ca.crt`, `ca.key`).
pub fn ca_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("egress-ca")
}
