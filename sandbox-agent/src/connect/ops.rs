//! What the agent's ops listener (`[ops]`, see [`daemon::ops`]) reports:
//! readiness (connected to the control plane, Docker answering for the
//! sandbox service, the audit log writable) and the values read at scrape
//! time (the certificate's remaining life, sandboxes and warm pool). A
//! watcher of each link's status keeps `airlock_tunnel_connected{transport,
//! link}` and counts reconnects per link. Ready means at least one link is
//! connected; the check's detail names every link that is not.

use std::sync::Arc;
use std::time::SystemTime;

use daemon::ops::Ops;
use tokio::sync::watch;
use tunnel::client::ClientStatus;

use super::links::{LinkStatus, Links};

use crate::audit::AuditLog;
use crate::identity::AgentIdentity;
use crate::sandbox::SandboxService;

fn seconds_until(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The agent's checks and scrape-time values.
pub fn ops(
    links: Arc<Links>,
    sandboxes: Result<SandboxService, String>,
    audit: Result<AuditLog, String>,
    identity: Arc<AgentIdentity>,
) -> Ops {
    let gauges = sandboxes.as_ref().ok().cloned();
    Ops::new()
        .check("control_plane", move || {
            std::future::ready(links_ready(&links.statuses()))
        })
        .check("docker", move || {
            let sandboxes = sandboxes.clone();
            async move {
                match sandboxes {
                    Ok(s) => s.docker_ping().await,
                    Err(reason) => Err(format!("sandbox service unavailable: {reason}")),
                }
            }
        })
        .check("audit_log", move || {
            let r = match &audit {
                Ok(log) => {
                    let st = log.status();
                    if st.healthy {
                        Ok(())
                    } else {
                        Err(st
                            .problem
                            .unwrap_or_else(|| "audit log unhealthy".to_owned()))
                    }
                }
                Err(reason) => Err(reason.clone()),
            };
            std::future::ready(r)
        })
        .refresh(move || {
            metrics::gauge!("airlock_certificate_expiry_seconds", "cert" => "agent")
                .set(seconds_until(identity.identity().not_after));
            if let Some(s) = &gauges {
                s.record_gauges();
            }
            std::future::ready(())
        })
}

/// One link's state in words (`connected over quic`, `not connected: …`).
pub fn describe(status: &ClientStatus) -> String {
    match status {
        ClientStatus::Connected { transport, .. } => format!("connected over {transport}"),
        ClientStatus::Connecting => "connecting".to_owned(),
        ClientStatus::Disconnected { error } => format!("not connected: {error}"),
        ClientStatus::Stopped => "stopped".to_owned(),
        ClientStatus::Revoked { .. } => "revoked by the control plane; re-enroll".to_owned(),
        ClientStatus::Incompatible { error } => format!("incompatible: {error}"),
        #[allow(unreachable_patterns)]
        _ => "not connected".to_owned(),
    }
}

/// Ready when at least one link is connected; the error names every link
/// that is not (all of them when none is).
pub fn links_ready(links: &[LinkStatus]) -> Result<(), String> {
    let down: Vec<String> = links
        .iter()
        .filter(|l| !matches!(l.status, ClientStatus::Connected { .. }))
        .map(|l| format!("{}: {}", l.label(), describe(&l.status)))
        .collect();
    if links.is_empty() {
        return Err("no link to the control plane (its addresses did not resolve yet)".to_owned());
    }
    if down.len() == links.len() {
        return Err(format!(
            "not connected to the control plane ({})",
            down.join("; ")
        ));
    }
    if !down.is_empty() {
        // Serving through the others: ready, and the log says which are down.
        tracing::debug!(down = %down.join("; "), "some control-plane links are down");
    }
    Ok(())
}

/// Follow one link's status into `airlock_tunnel_connected{transport,link}`
/// and `airlock_tunnel_reconnects_total{link}` until the status channel
/// closes. A reconnect is a new connection after one was lost (a move from
/// TCP to QUIC on a live connection is not one).
pub async fn watch_tunnel(mut status: watch::Receiver<ClientStatus>, link: String) {
    let mut last: Option<(String, SystemTime)> = None;
    let mut lost = false;
    loop {
        let connected = match &*status.borrow_and_update() {
            ClientStatus::Connected {
                transport, since, ..
            } => Some((transport.to_string(), *since)),
            _ => None,
        };
        for t in ["quic", "tcp"] {
            let up = connected.as_ref().is_some_and(|(c, _)| c == t);
            metrics::gauge!("airlock_tunnel_connected", "transport" => t, "link" => link.clone())
                .set(f64::from(u8::from(up)));
        }
        match (&connected, &last) {
            (Some(now), Some(before)) => {
                // Lost in between, or the loss was coalesced away (same
                // transport, a new connection).
                if lost || (now.0 == before.0 && now.1 != before.1) {
                    metrics::counter!("airlock_tunnel_reconnects_total", "link" => link.clone())
                        .increment(1);
                }
                lost = false;
                last = connected;
            }
            (Some(_), None) => {
                lost = false;
                last = connected;
            }
            (None, Some(_)) => lost = true,
            (None, None) => {}
        }
        if status.changed().await.is_err() {
            for t in ["quic", "tcp"] {
                metrics::gauge!("airlock_tunnel_connected", "transport" => t, "link" => link.clone())
                    .set(0.0);
            }
            return;
        }
    }
}
