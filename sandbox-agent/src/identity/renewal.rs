//! Certificate renewal over the live tunnel. [`run`] sleeps until two thirds
//! of the current certificate's life, generates a NEW key pair on the host,
//! sends the CSR through a [`Renewer`] (the tunnel's control stream), checks
//! and stores the returned chain, and swaps it in for future handshakes.
//! Failures are retried with a bounded backoff that tightens as expiry nears.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pki::agent::{renewal_due_for, renewal_retry_delay, PendingKey};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::AgentIdentity;

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The control plane refused (revoked, bad CSR). Carries its message.
    #[error("control plane refused renewal: {0}")]
    Refused(String),
    /// No live connection or the call failed in transit; retry.
    #[error("renewal call failed: {0}")]
    Transport(String),
    /// The returned chain is unacceptable, or it could not be stored.
    #[error(transparent)]
    Identity(#[from] pki::agent::AgentIdentityError),
}

/// Carries a renewal request to the control plane: the tunnel implements
/// this by sending `csr_der` (DER PKCS#10) on its control stream and
/// returning the certificate chain (DER, leaf first) from the answer.
pub trait Renewer: Send + Sync {
    /// One renewal round trip.
    fn renew(&self, csr_der: Vec<u8>) -> impl Future<Output = Result<Vec<CertificateDer<'static>>, RenewalError>> + Send;
}

/// Renew once, now.
pub async fn renew_once(identity: &AgentIdentity, renewer: &impl Renewer) -> Result<pki::PeerIdentity, RenewalError> {
    let key = tokio::task::spawn_blocking(PendingKey::generate)
        .await
        .map_err(|e| RenewalError::Transport(format!("key generation task failed: {e}")))??;
    let chain = renewer.renew(key.csr_der.clone()).await?;
    let renewed = identity.install_renewal(&key, chain)?;
    Ok(renewed.identity)
}

/// Renew forever (until `shutdown`), each time at two thirds of the
/// current certificate's life.
pub async fn run(identity: Arc<AgentIdentity>, renewer: impl Renewer, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let current = identity.identity();
        let now = SystemTime::now();
        let due = if failures == 0 {
            renewal_due_for(&current)
        } else {
            now + renewal_retry_delay(failures, now, current.not_after)
        };
        let wait = due.duration_since(now).unwrap_or(Duration::ZERO);
        tracing::debug!(agent_id = %current.agent_id, wait_ms = wait.as_millis() as u64, "next certificate renewal scheduled");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew_once(&identity, &renewer).await {
            Ok(renewed) => {
                failures = 0;
                tracing::info!(
                    agent_id = %renewed.agent_id,
                    cert_serial = %renewed.serial,
                    not_after_unix = renewed.not_after.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "certificate renewed"
                );
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let expired = SystemTime::now() >= current.not_after;
                if expired {
                    tracing::error!(agent_id = %current.agent_id, %error, "certificate renewal failed and the certificate has expired; re-enroll if this persists");
                } else {
                    tracing::warn!(agent_id = %current.agent_id, %error, failures, "certificate renewal failed; will retry");
                }
            }
        }
    }
}
