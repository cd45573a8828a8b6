//! `vault-bridge`: the process beside the sandbox-agent that holds credential
//! secrets on the customer's side. It owns the bridge's config, the
//! [`backend::SecretBackend`] trait with its backends (an encrypted local
//! file, OpenBao/Vault KV v2), the [`secret::Secret`] type (redacted `Debug`,
//! zeroized on drop) and the bridge's lifecycle ([`serve`]). It does not own
//! credential metadata (the control plane's catalog keeps that, never a
//! secret) nor the sandboxes (the sandbox-agent runs them); secrets leave the
//! bridge only on their way to an allowed upstream host.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent_channel;
pub mod agent_channel_audit;
pub mod agent_channel_egress;
pub mod audit_journal;
pub mod backend;
pub mod config;
pub mod doctor;
pub mod egress;
pub mod mcp;
pub mod relay;
pub mod scrub;
pub mod secret;
pub mod serve;

/// Lock `m`, taking over a poisoned lock (a panicked holder leaves plain
/// data behind, never a half-done invariant in this crate).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
