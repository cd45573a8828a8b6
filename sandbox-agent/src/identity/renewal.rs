//! Certificate renewal over the live tunnel. [`run`] sleeps until two thirds
//! of the current certificate's life, generates a NEW key pair on the host,
//! sends the CSR through a [`Renewer`] (the tunnel's control stream), checks
//! and stores the returned chain, and swaps it in for future handshakes.
//! Failures are retried with a bounded backoff that tightens as expiry nears.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pki::agent::{renewal_due_for, renewal_retry_delay, PendingKey};
use protocol::call::CallError;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::AgentIdentity;

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The control plane refused (revoked, bad CSR). Carries its answer.
    #[error("control plane refused renewal: {0}")]
    Refused(CallError),
    /// No live connection or the call failed in transit; retry.
    #[error("renewal call failed: {0}")]
    Transport(CallError),
    /// The returned chain is not PEM certificates.
    #[error("renewed chain from the control plane is not pem: {0}")]
    BadChain(#[source] pki::ca::PemError),
    /// The task generating the key pair did not finish (it panicked or was
    /// cancelled); retry.
    #[error("renewal call failed: key generation task failed: {0}")]
    KeyTask(#[from] tokio::task::JoinError),
    /// The returned chain is unacceptable, or it could not be stored.
    #[error(transparent)]
    Identity(#[from] pki::agent::AgentIdentityError),
}

/// Carries a renewal request to the control plane: the tunnel implements
/// this by sending `csr_der` (DER PKCS#10) on its control stream and
/// returning the certificate chain (DER, leaf first) from the answer.
pub trait Renewer: Send + Sync {
    /// One renewal round trip.
    fn renew(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<CertificateDer<'static>>, RenewalError>> + Send;
}

/// Renew once, now.
pub async fn renew_once(
    identity: &AgentIdentity,
    renewer: &impl Renewer,
) -> Result<pki::PeerIdentity, RenewalError> {
    let key = tokio::task::spawn_blocking(PendingKey::generate).await??;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use pki::agent::{AgentFiles, IdentityRecord, PendingKey};
    use pki::{EnvironmentId, IdentityService, IdentitySettings};

    use super::*;

    /// Carries renewals straight to an in-process identity service (the
    /// tunnel's control stream does the same over the wire). Fails the first
    /// `fail_first` calls.
    struct Direct {
        svc: Arc<IdentityService>,
        identity: Arc<AgentIdentity>,
        fail_first: u32,
        calls: AtomicU32,
    }

    impl Renewer for Direct {
        async fn renew(
            &self,
            csr_der: Vec<u8>,
        ) -> Result<Vec<CertificateDer<'static>>, RenewalError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(RenewalError::Transport(CallError::new(
                    protocol::call::ErrorCode::Unavailable,
                    "link down",
                )));
            }
            let peer = self.identity.identity();
            let svc = self.svc.clone();
            tokio::task::spawn_blocking(move || svc.renew(&peer, &csr_der))
                .await
                .unwrap()
                .map(|c| c.chain)
                .map_err(|e| {
                    RenewalError::Refused(CallError::new(
                        protocol::call::ErrorCode::Forbidden,
                        e.to_string(),
                    ))
                })
        }
    }

    fn setup(dir: &std::path::Path) -> (Arc<IdentityService>, Arc<AgentIdentity>) {
        let mut settings = IdentitySettings::new(dir.join("cp"));
        settings.agent_cert_lifetime = Duration::from_secs(3);
        let svc = Arc::new(IdentityService::open(settings).unwrap());
        let env = EnvironmentId::parse("env_r").unwrap();
        let token = svc.create_token(&env, Duration::from_secs(60)).unwrap();
        let key = PendingKey::generate().unwrap();
        let e = svc
            .enroll(token.token.expose(), &key.csr_pem, None)
            .unwrap();
        let text = format!(
            "data_dir = \"{}\"\n[control_plane]\naddress = \"127.0.0.1:7443\"\n",
            dir.join("agent").display()
        );
        let config =
            crate::config::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let files = AgentFiles::new(&config.identity.dir);
        let record = IdentityRecord {
            agent_id: e.agent_id,
            environment_id: e.environment_id,
            ca_fingerprint: svc.ca_fingerprint(),
            tunnel_address: None,
            enroll_address: None,
            server_name: None,
        };
        files
            .save_enrollment(&key, &e.certificate.chain, svc.ca_cert_der(), &record)
            .unwrap();
        let identity = AgentIdentity::load(&config).unwrap();
        assert_eq!(identity.endpoint().address, "127.0.0.1:7443");
        assert_eq!(identity.endpoint().server_name, "127.0.0.1");
        (svc, identity)
    }

    async fn wait_for_serial_change(identity: &AgentIdentity, from: &str) -> String {
        for _ in 0..400 {
            let now = identity.identity().serial;
            if now != from {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("certificate was not renewed");
    }

    #[tokio::test]
    async fn renews_repeatedly_before_expiry_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, identity) = setup(dir.path());
        let renewer = Direct {
            svc: svc.clone(),
            identity: identity.clone(),
            fail_first: 0,
            calls: AtomicU32::new(0),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(identity.clone(), renewer, shutdown.clone()));
        let first = identity.identity();
        let second = wait_for_serial_change(&identity, &first.serial).await;
        // Renewed before the first certificate expired.
        assert!(SystemTime::now() < first.not_after + Duration::from_secs(1));
        let third = wait_for_serial_change(&identity, &second).await;
        assert_ne!(third, first.serial);
        // The identity on disk follows.
        let on_disk = AgentFiles::new(dir.path().join("agent/identity"))
            .load(None)
            .unwrap();
        assert!([second.as_str(), third.as_str()].contains(&on_disk.identity.serial.as_str()));
        assert_eq!(on_disk.identity.agent_id, first.agent_id);
        stop(shutdown, task).await;
    }

    /// Cancel the renewal loop and wait (bounded) for it to end.
    async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn failed_renewals_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, identity) = setup(dir.path());
        let renewer = Arc::new(Direct {
            svc,
            identity: identity.clone(),
            fail_first: 2,
            calls: AtomicU32::new(0),
        });
        struct Shared(Arc<Direct>);
        impl Renewer for Shared {
            async fn renew(
                &self,
                csr_der: Vec<u8>,
            ) -> Result<Vec<CertificateDer<'static>>, RenewalError> {
                self.0.renew(csr_der).await
            }
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            identity.clone(),
            Shared(renewer.clone()),
            shutdown.clone(),
        ));
        let first = identity.identity().serial;
        wait_for_serial_change(&identity, &first).await;
        assert!(renewer.calls.load(Ordering::SeqCst) >= 3);
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn a_chain_for_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, identity) = setup(dir.path());
        // The control plane answers with a certificate for a different key.
        struct WrongKey(Arc<IdentityService>, pki::PeerIdentity);
        impl Renewer for WrongKey {
            async fn renew(
                &self,
                _csr: Vec<u8>,
            ) -> Result<Vec<CertificateDer<'static>>, RenewalError> {
                let other = PendingKey::generate().unwrap();
                Ok(self.0.renew(&self.1, &other.csr_der).unwrap().chain)
            }
        }
        let before = identity.identity();
        let err = renew_once(&identity, &WrongKey(svc, before.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, RenewalError::Identity(_)), "{err:?}");
        assert_eq!(identity.identity().serial, before.serial, "nothing swapped");
    }
}
