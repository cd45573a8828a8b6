//! The Docker backend: the hardened container spec (a pure function, unit
//! tested) and the few engine calls the service needs, through bollard.
//!
//! Hardening, always: a non-root numeric user, every capability dropped,
//! `no-new-privileges`, Docker's default seccomp profile (never
//! `seccomp=unconfined`), a read-only root filesystem with a size-limited
//! tmpfs workspace and tmpfs /tmp, pids/memory/CPU limits (swap = memory),
//! network `none` unless the policy allowed a named network, `docker-init`
//! as PID 1 to reap orphans, the `none` log driver (tool output never lands
//! in Docker's logs) and exactly one host path mounted: the executor binary,
//! read-only.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;

use super::config::SandboxSettings;
use super::policy::SandboxSpec;
use super::SandboxError;

/// Label: the owning agent's id.
pub const LABEL_AGENT: &str = "airlock.agent_id";
/// Label: the sandbox id.
pub const LABEL_SANDBOX: &str = "airlock.sandbox_id";
/// Label: the session served (absent for warm-pool containers).
pub const LABEL_SESSION: &str = "airlock.session_id";
/// Label: expiry, unix seconds (absent when no TTL).
pub const LABEL_EXPIRES: &str = "airlock.expires_at";
/// Label: `1` on warm-pool containers created before any request.
pub const LABEL_POOL: &str = "airlock.pool";
/// Label present on every container this software manages.
pub const LABEL_MANAGED: &str = "airlock.managed";

/// Where the executor binary is mounted inside every sandbox.
pub const EXECUTOR_MOUNT: &str = "/opt/airlock/executor";

/// Container name of a sandbox.
pub fn container_name(sandbox_id: &str) -> String {
    format!("airlock-{sandbox_id}")
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Connect to the engine and negotiate the API version (the engine here
/// speaks 1.41; bollard's default is newer).
pub async fn connect(settings: &SandboxSettings) -> Result<Docker, SandboxError> {
    let engine = |source| SandboxError::Engine {
        operation: "connect",
        source,
    };
    let docker = match &settings.docker_host {
        Some(host) if host.starts_with("unix://") || host.starts_with('/') => {
            Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION).map_err(engine)?
        }
        Some(host) => Docker::connect_with_host(host).map_err(engine)?,
        None => Docker::connect_with_local_defaults().map_err(engine)?,
    };
    docker
        .negotiate_version()
        .await
        .map_err(|source| SandboxError::Engine {
            operation: "negotiate api version",
            source,
        })
}

/// Everything the container spec needs besides the resolved request.
#[derive(Debug, Clone)]
pub struct ContainerParams<'a> {
    /// Sandbox id.
    pub sandbox_id: &'a str,
    /// Owning agent.
    pub agent_id: &'a str,
    /// Whether this is a warm-pool container (session/expiry applied at hand-out).
    pub pool: bool,
    /// OCI runtime to use, when configured and installed.
    pub runtime: Option<&'a str>,
}

/// The hardened container spec for `spec`. Pure.
pub fn container_body(
    settings: &SandboxSettings,
    spec: &SandboxSpec,
    p: &ContainerParams<'_>,
) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_MANAGED.into(), "1".into());
    labels.insert(LABEL_AGENT.into(), p.agent_id.into());
    labels.insert(LABEL_SANDBOX.into(), p.sandbox_id.into());
    if p.pool {
        labels.insert(LABEL_POOL.into(), "1".into());
    } else {
        if let Some(s) = &spec.session_id {
            labels.insert(LABEL_SESSION.into(), s.clone());
        }
        if let Some(ttl) = spec.ttl {
            labels.insert(
                LABEL_EXPIRES.into(),
                (unix_now() + ttl.as_secs()).to_string(),
            );
        }
    }
    let (uid, gid) = settings
        .user
        .split_once(':')
        .unwrap_or((settings.user.as_str(), settings.user.as_str()));
    let mut tmpfs = HashMap::new();
    tmpfs.insert(
        "/tmp".to_owned(),
        format!("rw,nosuid,nodev,size={},mode=1777", settings.tmp_bytes),
    );
    tmpfs.insert(
        spec.workdir.clone(),
        format!(
            "rw,nosuid,nodev,size={},uid={uid},gid={gid},mode=0755",
            spec.disk_bytes
        ),
    );
    let mut executor_settings = settings.executor.clone();
    executor_settings.workdir = spec.workdir.clone();
    let mut binds = vec![format!(
        "{}:{EXECUTOR_MOUNT}:ro",
        settings.executor_path.display()
    )];
    if let Some(bridge) = &settings.bridge {
        binds.push(format!(
            "{}:{}:ro",
            bridge.egress_dir.join(p.sandbox_id).display(),
            super::bridge::SANDBOX_EGRESS_DIR
        ));
        binds.push(format!(
            "{}:{}:ro",
            bridge.ca_cert_file.display(),
            super::bridge::SANDBOX_CA_CERT
        ));
        executor_settings.egress_socket = Some(super::bridge::SANDBOX_EGRESS_SOCKET.into());
    }
    // Serializing a plain struct of strings and integers cannot fail.
    let settings_json = serde_json::to_string(&executor_settings).unwrap_or_default();
    let memory = i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        binds: Some(binds),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((spec.cpu * 1e9).round() as i64),
        pids_limit: Some(i64::try_from(spec.pids).unwrap_or(i64::MAX)),
        network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
        init: Some(true),
        privileged: Some(false),
        ipc_mode: Some("private".into()),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        runtime: p.runtime.map(str::to_owned),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(settings.user.clone()),
        entrypoint: Some(vec![EXECUTOR_MOUNT.into()]),
        cmd: Some(vec!["--settings".into(), settings_json]),
        working_dir: Some(spec.workdir.clone()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        network_disabled: Some(spec.network.is_none()),
        labels: Some(labels),
        stop_timeout: Some(2),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Create a container (not started).
pub async fn create(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, SandboxError> {
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(|source| SandboxError::Engine {
            operation: "create container",
            source,
        })?;
    Ok(created.id)
}

/// Attach to a container's stdio (before start, or to re-attach).
pub async fn attach(
    docker: &Docker,
    id: &str,
) -> Result<bollard::container::AttachContainerResults, SandboxError> {
    let options = AttachContainerOptionsBuilder::default()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    docker
        .attach_container(id, Some(options))
        .await
        .map_err(|source| SandboxError::Engine {
            operation: "attach container",
            source,
        })
}

/// Start a created container.
pub async fn start(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    docker
        .start_container(id, None)
        .await
        .map_err(|source| SandboxError::Engine {
            operation: "start container",
            source,
        })
}

/// Remove a container (killing it), ignoring "no such container".
pub async fn remove(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // Removal already in progress (e.g. a concurrent reaper): not an error.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(source) => Err(SandboxError::Engine {
            operation: "remove container",
            source,
        }),
    }
}

/// Inspect a container; `Ok(None)` when it does not exist.
pub async fn inspect(
    docker: &Docker,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, SandboxError> {
    match docker.inspect_container(id, None).await {
        Ok(r) => Ok(Some(r)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(SandboxError::Engine {
            operation: "inspect container",
            source,
        }),
    }
}

/// A managed container as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Container id.
    pub id: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Whether it is running.
    pub running: bool,
    /// Image.
    pub image: String,
    /// Creation time, unix seconds.
    pub created: i64,
}

/// Every container (running or not) labelled as owned by `agent_id`.
pub async fn list_owned(docker: &Docker, agent_id: &str) -> Result<Vec<Listed>, SandboxError> {
    let mut filters = HashMap::new();
    filters.insert("label", vec![format!("{LABEL_AGENT}={agent_id}")]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|source| SandboxError::Engine {
            operation: "list containers",
            source,
        })?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            Some(Listed {
                id: c.id?,
                labels: c.labels.unwrap_or_default(),
                running: matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                ),
                image: c.image.unwrap_or_default(),
                created: c.created.unwrap_or(0),
            })
        })
        .collect())
}

/// Whether Docker has the OCI runtime `name` installed.
pub async fn runtime_installed(docker: &Docker, name: &str) -> Result<bool, SandboxError> {
    let info = docker.info().await.map_err(|source| SandboxError::Engine {
        operation: "system info",
        source,
    })?;
    Ok(info.runtimes.is_some_and(|r| r.contains_key(name)))
}

/// Why a container stopped, in words for a tool error.
pub fn death_reason(inspect: Option<&ContainerInspectResponse>) -> String {
    let Some(state) = inspect.and_then(|i| i.state.as_ref()) else {
        return "the sandbox container no longer exists".into();
    };
    if state.oom_killed == Some(true) {
        return "the sandbox container was killed: out of memory (OOM)".into();
    }
    if state.running == Some(true) {
        return "the sandbox executor stopped answering".into();
    }
    match state.exit_code {
        Some(137) => "the sandbox container was killed (SIGKILL, exit code 137)".into(),
        Some(code) => format!("the sandbox container exited with code {code}"),
        None => "the sandbox container stopped".into(),
    }
}

/// Deadline for an expiry label value.
pub fn parse_expiry(labels: &HashMap<String, String>) -> Option<u64> {
    labels.get(LABEL_EXPIRES).and_then(|v| v.parse().ok())
}

/// Time left before `expires_at` (zero if past).
pub fn remaining(expires_at: u64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(unix_now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::config::Policy;
    use protocol::sandbox::ProvisionRequest;

    #[test]
    fn spec_is_hardened() {
        let settings = SandboxSettings::default();
        let policy = Policy::from_raw(Default::default(), &settings.default_image).unwrap();
        let spec = policy
            .resolve(&settings, &ProvisionRequest::default(), 0)
            .unwrap();
        let body = container_body(
            &settings,
            &spec,
            &ContainerParams {
                sandbox_id: "sbx_1",
                agent_id: "agt_1",
                pool: false,
                runtime: None,
            },
        );
        let hc = body.host_config.unwrap();
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.binds.as_ref().map(Vec::len), Some(1));
        assert!(hc.binds.unwrap()[0].ends_with(":ro"));
        assert!(hc
            .security_opt
            .unwrap()
            .contains(&"no-new-privileges".to_string()));
        assert_eq!(hc.memory, hc.memory_swap);
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_AGENT], "agt_1");
        assert!(labels.contains_key(LABEL_EXPIRES));
    }

    #[test]
    fn with_a_bridge_the_egress_dir_and_ca_are_mounted_read_only_and_the_network_stays_none() {
        let settings = SandboxSettings {
            bridge: Some(crate::sandbox::config::BridgeSettings {
                socket_path: "/run/b/agent.sock".into(),
                egress_dir: "/run/b/egress".into(),
                ca_cert_file: "/var/lib/b/egress-ca/ca.crt".into(),
                call_timeout: Duration::from_secs(10),
            }),
            ..SandboxSettings::default()
        };
        let policy = Policy::from_raw(Default::default(), &settings.default_image).unwrap();
        let spec = policy
            .resolve(&settings, &ProvisionRequest::default(), 0)
            .unwrap();
        let params = ContainerParams {
            sandbox_id: "sbx_7",
            agent_id: "agt_1",
            pool: true,
            runtime: None,
        };
        let body = container_body(&settings, &spec, &params);
        let hc = body.host_config.unwrap();
        let binds = hc.binds.unwrap();
        assert!(
            binds.contains(&"/run/b/egress/sbx_7:/run/airlock:ro".to_string()),
            "{binds:?}"
        );
        assert!(
            binds
                .contains(&"/var/lib/b/egress-ca/ca.crt:/etc/airlock/egress-ca.pem:ro".to_string()),
            "{binds:?}"
        );
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        let cmd = body.cmd.unwrap();
        let ex: protocol::executor::ExecutorSettings = serde_json::from_str(&cmd[1]).unwrap();
        assert_eq!(
            ex.egress_socket.as_deref(),
            Some("/run/airlock/egress.sock")
        );

        // Without [bridge]: nothing of it.
        let plain = SandboxSettings::default();
        let body = container_body(&plain, &spec, &params);
        assert_eq!(body.host_config.unwrap().binds.unwrap().len(), 1);
        let ex: protocol::executor::ExecutorSettings =
            serde_json::from_str(&body.cmd.unwrap()[1]).unwrap();
        assert_eq!(ex.egress_socket, None);
    }
}
