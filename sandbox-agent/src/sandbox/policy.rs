//! Local policy: turns a control-plane `ProvisionRequest` into a resolved
//! [`SandboxSpec`] (defaults applied) or refuses it naming the rule, and
//! decides which tools may run. Pure functions: no Docker, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::sandbox::{NetworkPolicy, ProvisionRequest};

use super::config::{Policy, SandboxSettings};

/// Label keys the agent owns; a request may not set them.
pub const LABEL_PREFIX: &str = "airlock.";

/// A provision request the agent will not serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRefused {
    /// Outside the local policy; `rule` is the config key that refused it.
    #[error("refused by local policy `{rule}`: {message}")]
    Policy {
        /// Config key of the rule, e.g. `policy.max_memory_bytes`.
        rule: &'static str,
        /// What was asked versus what is allowed.
        message: String,
    },
    /// Malformed: the field named is not acceptable whatever the policy.
    #[error("invalid `{field}`: {message}")]
    BadRequest {
        /// Request field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn policy(rule: &'static str, message: impl Into<String>) -> RequestRefused {
    RequestRefused::Policy {
        rule,
        message: message.into(),
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> RequestRefused {
    RequestRefused::BadRequest {
        field,
        message: message.into(),
    }
}

/// A provision request with defaults applied and the policy checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Session served.
    pub session_id: Option<String>,
    /// Image reference.
    pub image: String,
    /// CPU cores.
    pub cpu: f64,
    /// Memory limit.
    pub memory_bytes: u64,
    /// Process limit.
    pub pids: u64,
    /// Workspace size.
    pub disk_bytes: u64,
    /// Docker network to join; `None` means no network (`none`).
    pub network: Option<String>,
    /// Environment for the shell.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: String,
    /// Time to live.
    pub ttl: Option<Duration>,
    /// Caller labels.
    pub labels: BTreeMap<String, String>,
}

/// What makes two sandboxes interchangeable for the warm pool: everything
/// fixed at container creation. Env, workdir, session and TTL are applied
/// at hand-out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileKey {
    /// Image.
    pub image: String,
    /// CPU in millicores.
    pub millicpu: u64,
    /// Memory.
    pub memory_bytes: u64,
    /// Pids.
    pub pids: u64,
    /// Workspace size.
    pub disk_bytes: u64,
    /// Network.
    pub network: Option<String>,
    /// Working directory (the workspace mount point).
    pub workdir: String,
}

impl SandboxSpec {
    /// The pool profile of this spec.
    pub fn profile(&self) -> ProfileKey {
        ProfileKey {
            image: self.image.clone(),
            millicpu: (self.cpu * 1000.0).round() as u64,
            memory_bytes: self.memory_bytes,
            pids: self.pids,
            disk_bytes: self.disk_bytes,
            network: self.network.clone(),
            workdir: self.workdir.clone(),
        }
    }

    /// The spec of a warm container for `image` with default resources.
    pub fn pool_default(settings: &SandboxSettings, image: &str) -> Self {
        Self {
            session_id: None,
            image: image.to_owned(),
            cpu: settings.default_cpu,
            memory_bytes: settings.default_memory_bytes,
            pids: settings.default_pids,
            disk_bytes: settings.default_disk_bytes,
            network: None,
            env: BTreeMap::new(),
            workdir: settings.workdir.clone(),
            ttl: settings.default_ttl,
            labels: BTreeMap::new(),
        }
    }
}

/// Whether `image` matches a pattern: exact, or a prefix ending in `*`.
pub fn image_allowed(patterns: &[String], image: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => p == image,
    })
}

fn valid_env_name(k: &str) -> bool {
    let mut bytes = k.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

impl Policy {
    /// Apply defaults to `req` and check it against the policy. `live` is
    /// the number of sandboxes currently handed out.
    pub fn resolve(
        &self,
        settings: &SandboxSettings,
        req: &ProvisionRequest,
        live: usize,
    ) -> Result<SandboxSpec, RequestRefused> {
        if live >= self.max_sandboxes {
            return Err(policy(
                "policy.max_sandboxes",
                format!(
                    "{live} sandboxes are live, the limit is {}",
                    self.max_sandboxes
                ),
            ));
        }
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| settings.default_image.clone());
        if image.is_empty() {
            return Err(bad("image", "empty image reference"));
        }
        if !image_allowed(&self.allowed_images, &image) {
            return Err(policy(
                "policy.allowed_images",
                format!("image `{image}` is not in the allowed list"),
            ));
        }
        let cpu = req.cpu.unwrap_or(settings.default_cpu);
        if !(cpu > 0.0 && cpu.is_finite()) {
            return Err(bad("cpu", "must be a positive number of cores"));
        }
        if cpu > self.max_cpu {
            return Err(policy(
                "policy.max_cpu",
                format!("asked {cpu} cores, the limit is {}", self.max_cpu),
            ));
        }
        let memory_bytes = req.memory_bytes.unwrap_or(settings.default_memory_bytes);
        if memory_bytes < 16 * 1024 * 1024 {
            return Err(bad("memory_bytes", "must be at least 16 MiB"));
        }
        if memory_bytes > self.max_memory_bytes {
            return Err(policy(
                "policy.max_memory_bytes",
                format!(
                    "asked {memory_bytes} bytes, the limit is {}",
                    self.max_memory_bytes
                ),
            ));
        }
        let pids = req.pids.unwrap_or(settings.default_pids);
        if pids < 8 {
            return Err(bad("pids", "must be at least 8"));
        }
        if pids > self.max_pids {
            return Err(policy(
                "policy.max_pids",
                format!("asked {pids} processes, the limit is {}", self.max_pids),
            ));
        }
        let disk_bytes = req.disk_bytes.unwrap_or(settings.default_disk_bytes);
        if disk_bytes < 1024 * 1024 {
            return Err(bad("disk_bytes", "must be at least 1 MiB"));
        }
        if disk_bytes > self.max_disk_bytes {
            return Err(policy(
                "policy.max_disk_bytes",
                format!(
                    "asked {disk_bytes} bytes, the limit is {}",
                    self.max_disk_bytes
                ),
            ));
        }
        let network = match &req.network {
            None | Some(NetworkPolicy::None) => None,
            Some(NetworkPolicy::Named { name }) => {
                if !self.allowed_networks.iter().any(|n| n == name) {
                    return Err(policy(
                        "policy.allowed_networks",
                        format!("network `{name}` is not in the allowed list"),
                    ));
                }
                Some(name.clone())
            }
        };
        for (k, v) in &req.env {
            if !valid_env_name(k) {
                return Err(bad("env", format!("invalid variable name `{k}`")));
            }
            if v.contains('\0') {
                return Err(bad("env", format!("value of `{k}` contains a NUL byte")));
            }
        }
        let workdir = req
            .workdir
            .clone()
            .unwrap_or_else(|| settings.workdir.clone());
        if !workdir.starts_with('/') || workdir.contains('\0') {
            return Err(bad(
                "workdir",
                format!("`{workdir}` is not an absolute path"),
            ));
        }
        let ttl = match req.ttl_seconds {
            Some(0) => return Err(bad("ttl_seconds", "must be greater than 0")),
            Some(s) => Some(Duration::from_secs(s)),
            None => settings.default_ttl,
        };
        if let Some(t) = ttl {
            if t > self.max_ttl {
                return Err(policy(
                    "policy.max_ttl_seconds",
                    format!(
                        "asked {} s, the limit is {} s",
                        t.as_secs(),
                        self.max_ttl.as_secs()
                    ),
                ));
            }
        }
        for k in req.labels.keys() {
            if k.starts_with(LABEL_PREFIX) {
                return Err(bad(
                    "labels",
                    format!("label `{k}` uses the reserved prefix `{LABEL_PREFIX}`"),
                ));
            }
        }
        Ok(SandboxSpec {
            session_id: req.session_id.clone(),
            image,
            cpu,
            memory_bytes,
            pids,
            disk_bytes,
            network,
            env: req.env.clone(),
            workdir,
            ttl: ttl.or(Some(self.max_ttl)),
            labels: req.labels.clone(),
        })
    }

    /// Whether tool `name` may run here.
    pub fn check_tool(&self, name: &str) -> Result<(), RequestRefused> {
        if self.allowed_tools.iter().any(|t| t == name) {
            Ok(())
        } else {
            Err(policy(
                "policy.allowed_tools",
                format!("tool `{name}` is not allowed on this agent"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::RawPolicy;
    use super::*;

    fn setup() -> (SandboxSettings, Policy) {
        let s = SandboxSettings::default();
        let p = Policy::from_raw(
            RawPolicy {
                allowed_images: Some(vec!["airlock-*".into()]),
                max_memory_bytes: Some(2 << 30),
                max_sandboxes: Some(2),
                allowed_tools: Some(vec!["read".into()]),
                ..Default::default()
            },
            &s.default_image,
        )
        .unwrap();
        (s, p)
    }

    #[test]
    fn defaults_fill_in_and_ttl_is_capped() {
        let (s, p) = setup();
        let spec = p.resolve(&s, &ProvisionRequest::default(), 0).unwrap();
        assert_eq!(spec.image, s.default_image);
        assert_eq!(spec.memory_bytes, s.default_memory_bytes);
        assert_eq!(spec.network, None);
        assert!(spec.ttl.is_some());
    }

    #[test]
    fn refusals_name_the_rule() {
        let (s, p) = setup();
        let rule = |req: ProvisionRequest, live| match p.resolve(&s, &req, live) {
            Err(RequestRefused::Policy { rule, .. }) => rule,
            other => panic!("expected a policy refusal, got {other:?}"),
        };
        assert_eq!(rule(ProvisionRequest::default(), 2), "policy.max_sandboxes");
        let img = ProvisionRequest {
            image: Some("ubuntu".into()),
            ..Default::default()
        };
        assert_eq!(rule(img, 0), "policy.allowed_images");
        let mem = ProvisionRequest {
            memory_bytes: Some(3 << 30),
            ..Default::default()
        };
        assert_eq!(rule(mem, 0), "policy.max_memory_bytes");
        let net = ProvisionRequest {
            network: Some(NetworkPolicy::Named {
                name: "host".into(),
            }),
            ..Default::default()
        };
        assert_eq!(rule(net, 0), "policy.allowed_networks");
        assert!(matches!(
            p.check_tool("bash"),
            Err(RequestRefused::Policy {
                rule: "policy.allowed_tools",
                ..
            })
        ));
        assert!(p.check_tool("read").is_ok());
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        let (s, p) = setup();
        let mut req = ProvisionRequest::default();
        req.env.insert("A=B".into(), "x".into());
        assert!(matches!(
            p.resolve(&s, &req, 0),
            Err(RequestRefused::BadRequest { field: "env", .. })
        ));
        let mut req = ProvisionRequest::default();
        req.labels.insert("airlock.agent".into(), "x".into());
        assert!(matches!(
            p.resolve(&s, &req, 0),
            Err(RequestRefused::BadRequest {
                field: "labels",
                ..
            })
        ));
    }
}
