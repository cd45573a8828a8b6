//! The `identity` and `certificate` checks: the enrolled identity loads
//! (key, certificate, CA matching the pin, an address to dial), and the
//! certificate is valid now -- not expired, not close to expiry, and not
//! "not yet valid", which is how a wrong clock on this host shows.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use daemon::doctor::Check;

use crate::config::Config;
use crate::identity::{AgentIdentity, LoadError};

/// The loaded identity (if it loads) and its check.
#[derive(Debug)]
pub(super) struct Loaded {
    /// The identity, when it loaded.
    pub identity: Option<Arc<AgentIdentity>>,
    /// The `identity` check.
    pub check: Check,
    /// The enroll address and TLS name (config, else the identity record).
    pub enroll: Option<(String, String)>,
}

/// Load the identity the way `run` does.
pub(super) async fn load(config: &Config) -> Loaded {
    let cfg = config.clone();
    let loaded = tokio::task::spawn_blocking(move || AgentIdentity::load(&cfg))
        .await
        .map_err(LoadError::Task)
        .and_then(|r| r);
    let enroll = enroll_endpoint(config);
    let dir = config.identity.dir.display().to_string();
    match loaded {
        Ok(identity) => {
            let i = identity.identity();
            let e = identity.endpoint();
            let check = Check::pass(
                "identity",
                format!(
                    "agent {} in environment {}, control plane {} (tls name {}), ca {}",
                    i.agent_id, i.environment_id, e.address, e.server_name, e.ca_fingerprint
                ),
            );
            Loaded {
                identity: Some(identity),
                check,
                enroll,
            }
        }
        Err(error) => {
            let fix = match &error {
                LoadError::Files(pki::agent::AgentIdentityError::NotEnrolled(_)) => {
                    "enroll this agent: `sandbox-agent enroll --join <join string>` (make one with `control-plane tokens create`)".to_owned()
                }
                LoadError::Files(pki::agent::AgentIdentityError::CaMismatch { .. }) => {
                    "control_plane.ca_fingerprint does not match the stored CA: correct it (`control-plane ca fingerprint`) or re-enroll with `sandbox-agent enroll --force --join <join string>`".to_owned()
                }
                LoadError::NoAddress => {
                    "set control_plane.address = \"host:port\" in the agent's config".to_owned()
                }
                _ => format!(
                    "check the files in {dir} (owner, mode, content) or re-enroll with `sandbox-agent enroll --force --join <join string>`"
                ),
            };
            Loaded {
                identity: None,
                check: Check::fail("identity", error.to_string(), fix),
                enroll,
            }
        }
    }
}

/// The enrollment listener's address and TLS name: config first, then what
/// `enroll` recorded.
fn enroll_endpoint(config: &Config) -> Option<(String, String)> {
    let record = pki::agent::AgentFiles::new(&config.identity.dir)
        .read_record()
        .ok();
    let address = config
        .control_plane
        .enroll_address
        .clone()
        .or_else(|| record.as_ref().and_then(|r| r.enroll_address.clone()))?;
    let name = config
        .control_plane
        .server_name
        .clone()
        .or_else(|| record.as_ref().and_then(|r| r.server_name.clone()))
        .or_else(|| settings::split_host_port(&address).map(|(h, _)| h.to_owned()))?;
    Some((address, name))
}

/// RFC 3339 for a time in a message.
pub(super) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `3d 4h`, `5m 2s`: a duration for a human.
pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// The `certificate` check.
pub(super) fn certificate(loaded: &Loaded, warn_days: f64) -> Check {
    const NAME: &str = "certificate";
    let Some(identity) = &loaded.identity else {
        return Check::skip(NAME, "no identity (see the identity check)");
    };
    let i = identity.identity();
    let now = SystemTime::now();
    if let Ok(ahead) = i.not_before.duration_since(now) {
        return Check::fail(
            NAME,
            format!(
                "certificate {} is not valid yet: valid from {} ({} from now by this host's clock); this host's clock is probably behind",
                i.serial,
                rfc3339(i.not_before),
                human(ahead)
            ),
            "fix this host's clock (`timedatectl set-ntp true`, or chrony/ntpd), then run doctor again; the control plane refuses a certificate that is not yet valid",
        );
    }
    let left = match i.not_after.duration_since(now) {
        Ok(left) => left,
        Err(e) => {
            return Check::fail(
                NAME,
                format!(
                    "certificate {} expired at {} ({} ago)",
                    i.serial,
                    rfc3339(i.not_after),
                    human(e.duration())
                ),
                "re-enroll: `sandbox-agent enroll --force --join <join string>` (the agent renews by itself only while connected); if the clock is ahead, fix it first",
            )
        }
    };
    let life = i
        .not_after
        .duration_since(i.not_before)
        .unwrap_or(Duration::ZERO);
    let days = Duration::from_secs_f64((warn_days.max(0.0) * 86_400.0).min(1e10));
    let threshold = days.min(life / 3);
    let detail = format!(
        "certificate {} valid until {} ({} left)",
        i.serial,
        rfc3339(i.not_after),
        human(left)
    );
    if left < threshold {
        Check::warn(
            NAME,
            format!("{detail}; renewal is overdue"),
            "keep `sandbox-agent run` connected so it renews (it renews over the tunnel); else re-enroll with `sandbox-agent enroll --force --join <join string>`",
        )
    } else {
        Check::pass(NAME, detail)
    }
}
