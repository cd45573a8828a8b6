//! What the control plane's ops listener (`[ops]`, see [`daemon::ops`])
//! reports: readiness (the session store and the catalog answer a cheap
//! query, every listener is bound and the plane is not draining) and the
//! values read at scrape time (sessions by status, agent connections by
//! transport, the CA's and the server certificate's remaining life).

use std::sync::Arc;
use std::time::SystemTime;

use daemon::ops::{Flag, Ops};
use pki::IdentityService;

use crate::gateway::{AgentDirectory, Registry, Transport};

/// Seconds from now until `t` (negative once past).
pub fn seconds_until(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The `not_after` of a DER certificate, if it parses.
fn not_after_of(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The control plane's checks and scrape-time values.
pub fn ops(
    store: Arc<dyn session_store::SessionStore>,
    catalog: Arc<dyn catalog::Catalog>,
    agents: Arc<Registry>,
    identity: Arc<IdentityService>,
    listeners: &Flag,
) -> Ops {
    let ca_not_after = not_after_of(identity.ca_cert_der());
    let counted = store.clone();
    Ops::new()
        .check("session_store", move || {
            let store = store.clone();
            async move {
                store
                    .list_sessions(session_store::SessionQuery {
                        limit: 1,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("session store query failed: {e}"))
            }
        })
        .check("catalog", move || {
            let catalog = catalog.clone();
            async move {
                catalog
                    .list_environments(catalog::EnvironmentQuery {
                        limit: 1,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("catalog query failed: {e}"))
            }
        })
        .flag("listeners", listeners)
        .refresh(move || {
            let store = counted.clone();
            async move {
                if let Ok(counts) = store.count_sessions_by_status().await {
                    for status in session_store::SessionStatus::ALL {
                        let n = counts
                            .iter()
                            .find(|(s, _)| *s == status)
                            .map_or(0, |(_, n)| *n);
                        metrics::gauge!("airlock_sessions", "status" => status.as_str())
                            .set(n as f64);
                    }
                }
            }
        })
        .refresh(move || {
            let list = agents.list();
            let quic = list
                .iter()
                .filter(|a| a.transport == Transport::Quic)
                .count();
            let tcp = list.len() - quic;
            metrics::gauge!("airlock_agents_connected", "transport" => "quic").set(quic as f64);
            metrics::gauge!("airlock_agents_connected", "transport" => "tcp").set(tcp as f64);
            if let Some(t) = ca_not_after {
                metrics::gauge!("airlock_certificate_expiry_seconds", "cert" => "ca")
                    .set(seconds_until(t));
            }
            metrics::gauge!("airlock_certificate_expiry_seconds", "cert" => "server")
                .set(seconds_until(identity.server_cert_not_after()));
            std::future::ready(())
        })
}
