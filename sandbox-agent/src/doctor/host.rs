//! The host checks: `docker` (the engine answers on the configured socket,
//! its version), `image` (the default sandbox image is present), `executor`
//! (a throwaway container built exactly like a sandbox -- the same hardened
//! spec from [`crate::sandbox::docker::container_body`] -- starts and its
//! executor says `Ready`), `disk` (free space where the agent writes) and
//! `bridge` (the vault-bridge answers on its socket and its backend is
//! unsealed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use daemon::doctor::{timed, Check, Report};
use protocol::bridge::{BackendStatus, FromBridge, ToBridge};

use super::DoctorArgs;
use crate::config::Config;
use crate::sandbox::docker as dk;
use crate::sandbox::executor_client::ExecutorClient;
use crate::sandbox::policy::SandboxSpec;

/// Free space under which `disk` warns.
pub const DISK_WARN_BYTES: u64 = 1 << 30;
/// Free space under which `disk` fails.
pub const DISK_FAIL_BYTES: u64 = 100 << 20;
/// Free share under which `disk` warns (percent).
pub const DISK_WARN_PERCENT: f64 = 5.0;
/// Free share under which `disk` fails (percent).
pub const DISK_FAIL_PERCENT: f64 = 1.0;

/// Agent id label of doctor's throwaway container: no agent owns it, so no
/// agent's reconcile adopts or removes it while the check runs.
const DOCTOR_OWNER: &str = "doctor";

/// Run the host checks in order.
pub(super) async fn all(r: &mut Report, config: &Config, args: &DoctorArgs) {
    let s = &config.sandbox;
    let docker_fix = "start Docker (`systemctl start docker`), or set sandbox.docker_host to the engine's socket; the agent's user needs access to it (group docker)";
    let (check, docker) = docker_check(config).await;
    r.push(check);
    match docker {
        Some(docker) => {
            r.push(
                timed(
                    "image",
                    Duration::from_secs(10),
                    docker_fix,
                    image(&docker, &s.default_image),
                )
                .await,
            );
            let executor = if args.no_container {
                Check::skip("executor", "--no-container given")
            } else if !r.usable("image") {
                Check::skip(
                    "executor",
                    "the sandbox image is missing (see the image check)",
                )
            } else {
                timed(
                    "executor",
                    s.executor_ready_timeout + Duration::from_secs(30),
                    "check `docker events` and the engine's log while doctor runs",
                    executor(&docker, config),
                )
                .await
            };
            r.push(executor);
        }
        None => {
            r.push(Check::skip(
                "image",
                "Docker is not reachable (see the docker check)",
            ));
            r.push(Check::skip(
                "executor",
                "Docker is not reachable (see the docker check)",
            ));
        }
    }
    r.push(
        timed(
            "disk",
            Duration::from_secs(5),
            "check the file systems of data_dir and audit.dir",
            disk(config),
        )
        .await,
    );
    r.push(match &s.bridge {
        None => Check::skip("bridge", "no [bridge] configured: sandboxes have no egress"),
        Some(b) => {
            timed(
                "bridge",
                b.call_timeout + Duration::from_secs(1),
                "start the vault-bridge (`systemctl start airlock-vault-bridge`) and run `vault-bridge doctor`",
                bridge(b),
            )
            .await
        }
    });
}

/// Where the agent talks to Docker, for messages.
fn docker_address(config: &Config) -> String {
    config
        .sandbox
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

async fn docker_check(config: &Config) -> (Check, Option<Docker>) {
    const NAME: &str = "docker";
    let started = std::time::Instant::now();
    let address = docker_address(config);
    let fix = format!("start Docker (`systemctl start docker`) or point sandbox.docker_host (or DOCKER_HOST) at the engine's socket; now {address}; the agent's user needs access to it (group docker)");
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        let docker = dk::connect(&config.sandbox).await?;
        let version =
            docker
                .version()
                .await
                .map_err(|source| crate::sandbox::SandboxError::Engine {
                    operation: "version",
                    source,
                })?;
        Ok::<_, crate::sandbox::SandboxError>((docker, version))
    })
    .await;
    let check = match connected {
        Ok(Ok((docker, v))) => {
            return (
                Check::pass(
                    NAME,
                    format!(
                        "Docker Engine {} (API {}) at {address}",
                        v.version.as_deref().unwrap_or("?"),
                        v.api_version.as_deref().unwrap_or("?")
                    ),
                )
                .took(started),
                Some(docker),
            )
        }
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("Docker at {address} is not reachable: {e}"),
            fix,
        ),
        Err(_) => Check::fail(
            NAME,
            format!("Docker at {address} did not answer within 10 s"),
            fix,
        ),
    };
    (check.took(started), None)
}

async fn image(docker: &Docker, image: &str) -> Check {
    const NAME: &str = "image";
    match docker.inspect_image(image).await {
        Ok(i) => {
            let id = i.id.unwrap_or_default();
            let short = id.strip_prefix("sha256:").unwrap_or(&id);
            Check::pass(
                NAME,
                format!(
                    "{image} present ({}, {} MB)",
                    short.get(..12).unwrap_or(short),
                    i.size.unwrap_or(0) / 1_000_000
                ),
            )
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Check::fail(
            NAME,
            format!("image {image} (sandbox.default_image) is not present in Docker"),
            format!("build it (packaging/images/build-sandbox-image.sh) or `docker pull {image}` / `docker load`, or set sandbox.default_image to an image that is"),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot inspect image {image}: {e}"),
            "see the docker check",
        ),
    }
}

/// A throwaway sandbox: create, attach, start, wait for `Ready`, remove.
async fn executor(docker: &Docker, config: &Config) -> Check {
    const NAME: &str = "executor";
    let s = &config.sandbox;
    if !s.executor_path.is_file() {
        return Check::fail(
            NAME,
            format!("executor binary {} not found", s.executor_path.display()),
            "install the airlock executor (the package puts it in /usr/lib/airlock/airlock-executor) or set sandbox.executor_path",
        );
    }
    // Same spec as a sandbox, minus the bridge mounts (the bridge has its own check).
    let mut settings = s.clone();
    settings.bridge = None;
    let runtime = match &s.runtime {
        Some(r) if dk::runtime_installed(docker, r).await.unwrap_or(false) => Some(r.clone()),
        _ => None,
    };
    let sandbox_id = format!("doctor-{}", uuid::Uuid::new_v4().simple());
    let spec = SandboxSpec::pool_default(&settings, &s.default_image);
    let body = dk::container_body(
        &settings,
        &spec,
        &dk::ContainerParams {
            sandbox_id: &sandbox_id,
            agent_id: DOCTOR_OWNER,
            pool: true,
            runtime: runtime.as_deref(),
        },
    );
    let started = std::time::Instant::now();
    let id = match dk::create(docker, &dk::container_name(&sandbox_id), body).await {
        Ok(id) => id,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot create a sandbox container: {e}"),
                "check sandbox.* in the config (user, runtime, limits) against what this engine supports",
            )
        }
    };
    let result = async {
        let attach = dk::attach(docker, &id).await.map_err(|e| e.to_string())?;
        let client = ExecutorClient::new(attach, s.executor.max_frame_bytes as usize, &sandbox_id);
        let ready = client.ready_waiter();
        dk::start(docker, &id).await.map_err(|e| e.to_string())?;
        let r = match tokio::time::timeout(s.executor_ready_timeout, ready).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err("the executor's stream ended before Ready".into()),
            Err(_) => Err(format!(
                "no Ready within {} s (sandbox.executor_ready_timeout_seconds)",
                s.executor_ready_timeout.as_secs()
            )),
        };
        client.shutdown().await;
        r
    }
    .await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let info = dk::inspect(docker, &id).await.ok().flatten();
            Err(format!("{e} ({})", dk::death_reason(info.as_ref())))
        }
    };
    let removed = dk::remove(docker, &id).await;
    match (result, removed) {
        (Ok(()), Ok(())) => Check::pass(
            NAME,
            format!(
                "a hardened sandbox of {} started and its executor said Ready in {} ms (container removed)",
                s.default_image,
                started.elapsed().as_millis()
            ),
        ),
        (Ok(()), Err(e)) => Check::warn(
            NAME,
            format!("the executor started, but the throwaway container was not removed: {e}"),
            format!("remove it: `docker rm -f {}`", dk::container_name(&sandbox_id)),
        ),
        (Err(e), _) => Check::fail(
            NAME,
            format!("the executor did not start in {}: {e}", s.default_image),
            "the image needs a dynamic loader compatible with the executor and must run as sandbox.user; rebuild it with packaging/images/build-sandbox-image.sh",
        ),
    }
}

/// The nearest existing directory at or above `p`.
fn existing(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    p
}

async fn disk(config: &Config) -> Check {
    const NAME: &str = "disk";
    let mut dirs = vec![("data_dir", config.data_dir.clone())];
    if config.audit.dir != config.data_dir {
        dirs.push(("audit.dir", config.audit.dir.clone()));
    }
    let mut worst = Check::pass(NAME, String::new());
    let mut parts = Vec::new();
    for (key, dir) in dirs {
        let at = existing(&dir);
        let stat = match tokio::task::spawn_blocking({
            let at = at.clone();
            move || nix::sys::statvfs::statvfs(&at)
        })
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Check::fail(
                    NAME,
                    format!(
                        "cannot stat the file system of {} ({key}): {e}",
                        at.display()
                    ),
                    format!("create {} and make it writable by the agent", dir.display()),
                )
            }
            Err(e) => {
                return Check::fail(NAME, format!("statvfs task: {e}"), "report this as a bug")
            }
        };
        let frag = stat.fragment_size() as u64;
        let free = (stat.blocks_available() as u64).saturating_mul(frag);
        let total = (stat.blocks() as u64).saturating_mul(frag);
        let percent = if total == 0 {
            0.0
        } else {
            free as f64 * 100.0 / total as f64
        };
        let text = format!(
            "{key} {}: {} MiB free ({percent:.1} %)",
            dir.display(),
            free >> 20
        );
        let fix = format!("free space on the file system of {} (the audit log stops taking writes, and sandbox calls are refused, when it is full)", dir.display());
        if free < DISK_FAIL_BYTES || percent < DISK_FAIL_PERCENT {
            worst = Check::fail(NAME, String::new(), fix);
        } else if (free < DISK_WARN_BYTES || percent < DISK_WARN_PERCENT)
            && worst.status != daemon::doctor::Status::Fail
        {
            worst = Check::warn(NAME, String::new(), fix);
        }
        parts.push(text);
    }
    Check {
        detail: parts.join("; "),
        ..worst
    }
}

async fn bridge(settings: &crate::sandbox::config::BridgeSettings) -> Check {
    const NAME: &str = "bridge";
    let client = crate::sandbox::bridge::BridgeClient::new(settings);
    let socket = settings.socket_path.display();
    let answer = client.call(&ToBridge::Health).await;
    let ca = &settings.ca_cert_file;
    let ca_missing = !ca.is_file();
    match answer {
        Ok(FromBridge::Health {
            backend: BackendStatus::Healthy,
            ..
        }) if ca_missing => Check::fail(
            NAME,
            format!("the bridge answers on {socket}, but the egress CA {} (bridge.ca_cert_file) is missing", ca.display()),
            "write it with `vault-bridge ca print > <bridge.ca_cert_file>`",
        ),
        Ok(FromBridge::Health {
            backend: BackendStatus::Healthy,
            ..
        }) => Check::pass(NAME, format!("vault-bridge answers on {socket}; its secret backend is healthy")),
        Ok(FromBridge::Health { backend, message }) => Check::fail(
            NAME,
            format!(
                "vault-bridge answers on {socket}, but its secret backend is {backend}: {}",
                message.unwrap_or_default()
            ),
            "unseal or start the backend (OpenBao: `bao operator unseal`; check the bridge's token), then run `vault-bridge doctor`",
        ),
        Ok(other) => Check::fail(
            NAME,
            format!("unexpected answer from the bridge on {socket}: {other:?}"),
            "run matching versions of sandbox-agent and vault-bridge",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("vault-bridge does not answer: {e}"),
            format!("start the vault-bridge (`systemctl start airlock-vault-bridge`) and check that bridge.socket_path ({socket}) is its agent socket and this user may connect"),
        ),
    }
}
