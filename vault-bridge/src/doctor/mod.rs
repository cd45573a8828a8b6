//! `vault-bridge doctor`: check what this bridge needs to work (its config,
//! its backend reachable and unsealed, its agent socket, the egress CA) and
//! say what to fix. The report type, its table, `--json` and exit codes are
//! [`daemon::doctor`]'s; see docs/doctor.md.
//!
//! Doctor never creates anything: the file backend is opened with
//! `create_if_missing` off, the egress CA is read, not made.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use daemon::doctor::{timed, Check, Report};
use protocol::bridge::{BackendStatus, FromBridge, ToBridge};
use protocol::frame::{Frame, FrameCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{self, BackendError, SecretFileError};
use crate::config::{BackendConfig, Config};

/// Flags of `vault-bridge doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 on warnings too (default: only failures).
    #[arg(long)]
    pub strict: bool,
}

/// Run the checks and print the report; the exit code says the worst result
/// (0: no failure, 1: a failure; see docs/doctor.md).
pub fn run(args: &DoctorArgs, config: &Config) -> ExitCode {
    daemon::doctor::run_checks(checks(args, config), args.json, env!("CARGO_PKG_VERSION"))
}

fn backend_name(config: &Config) -> String {
    match &config.backend {
        BackendConfig::File(f) => format!("file store {}", f.path.display()),
        BackendConfig::Openbao(o) => format!("openbao at {} (mount {})", o.address, o.mount),
    }
}

/// All checks, in order.
pub async fn checks(args: &DoctorArgs, config: &Config) -> Report {
    let mut r = Report::new("vault-bridge", args.strict);
    // A config that does not load never gets here: `main` exits 64 first.
    r.push(Check::pass(
        "config",
        format!(
            "valid (data_dir {}, backend {}, agent socket {})",
            config.bridge.data_dir.display(),
            backend_name(config),
            config.bridge.socket_path.display()
        ),
    ));
    let limit = match &config.backend {
        BackendConfig::File(f) => f.request_timeout,
        BackendConfig::Openbao(o) => o.request_timeout,
    };
    r.push(
        timed(
            "backend",
            limit * 3 + Duration::from_secs(2),
            "check that the backend answers (OpenBao: `bao status`)",
            backend_check(config),
        )
        .await,
    );
    r.push(
        timed(
            "socket",
            Duration::from_secs(5),
            "check that `vault-bridge serve` is running and answering",
            socket(config),
        )
        .await,
    );
    r.push(egress_ca(&config.bridge.data_dir));
    r.push(upstream_cas(config));
    r
}

/// The one-line fix for a backend error.
fn backend_fix(config: &Config, e: &BackendError) -> String {
    match e {
        BackendError::Sealed { .. } => {
            "unseal it: `bao operator unseal` (or `vault operator unseal`) with the unseal keys".into()
        }
        BackendError::Unreachable { .. } | BackendError::Timeout { .. } => match &config.backend {
            BackendConfig::Openbao(o) => format!(
                "start OpenBao or correct backend.openbao.address ({}); with TLS, backend.openbao.ca_file must name its CA",
                o.address
            ),
            BackendConfig::File(_) => "check the disk holding the store".into(),
        },
        BackendError::PermissionDenied { .. } => {
            "give the bridge a valid token (backend.openbao.token_file) whose policy allows the KV mount and path prefix".into()
        }
        BackendError::SecretFile {
            source: SecretFileError::Mode { path, .. },
            ..
        } => format!("chmod 600 {} (owned by the bridge's user)", path.display()),
        BackendError::SecretFile { .. } => match &config.backend {
            BackendConfig::File(_) => {
                "create the key and store with `vault-bridge init`, or fix the key file's path and owner".into()
            }
            BackendConfig::Openbao(_) => {
                "fix the token or secret-id file (path, owner, mode 0600)".into()
            }
        },
        BackendError::NotFound { .. } => {
            "create the store with `vault-bridge init` (or set backend.file.create_if_missing = true)".into()
        }
        BackendError::WrongKey { .. } => {
            "restore the key this store was written with (backend.file.key_file); nothing was overwritten".into()
        }
        BackendError::Corrupt { .. } => {
            "restore the store from a backup; the bridge refuses to serve from it".into()
        }
        _ => "see the detail; `vault-bridge serve` fails the same way".into(),
    }
}

async fn backend_check(config: &Config) -> Check {
    const NAME: &str = "backend";
    // Never create a key or store from doctor.
    let backend_config = match &config.backend {
        BackendConfig::File(f) => {
            let mut f = f.clone();
            f.create_if_missing = false;
            BackendConfig::File(f)
        }
        other => other.clone(),
    };
    let opened = match backend::open(&backend_config).await {
        Ok(b) => b,
        Err(e) => return Check::fail(NAME, e.to_string(), backend_fix(config, &e)),
    };
    let result = async {
        opened.health().await?;
        // Listing reads the mount (OpenBao: metadata under the prefix): a
        // missing mount or a policy without `list` shows here.
        opened.list().await
    }
    .await;
    opened.close().await;
    match result {
        Ok(list) => {
            let what = match &config.backend {
                BackendConfig::File(f) => {
                    let key = match f.key.path() {
                        Ok(p) => p.display().to_string(),
                        Err(_) => "its key".into(),
                    };
                    format!("file store {} opens with {key}", f.path.display())
                }
                BackendConfig::Openbao(o) => format!(
                    "openbao at {} is reachable and unsealed, the token is valid, mount {} lists",
                    o.address, o.mount
                ),
            };
            Check::pass(NAME, format!("{what} ({} credentials stored)", list.len()))
        }
        Err(e) => {
            let fix = match (&e, &config.backend) {
                (BackendError::Other { .. } | BackendError::NotFound { .. }, BackendConfig::Openbao(o)) => format!(
                    "enable the KV v2 mount: `bao secrets enable -path={} kv-v2`, and allow list on {}/metadata/{}",
                    o.mount, o.mount, o.path_prefix
                ),
                _ => backend_fix(config, &e),
            };
            Check::fail(NAME, e.to_string(), fix)
        }
    }
}

/// The agent socket: its directory, its mode, and `serve` answering on it.
async fn socket(config: &Config) -> Check {
    const NAME: &str = "socket";
    let path = &config.bridge.socket_path;
    let shown = path.display();
    let Some(dir) = path.parent() else {
        return Check::fail(
            NAME,
            format!("{shown} has no directory"),
            "set bridge.socket_path to an absolute path",
        );
    };
    let dir_mode = match std::fs::metadata(dir) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{} does not exist: `vault-bridge serve` is not running here", dir.display()),
                "start the bridge (`systemctl start airlock-vault-bridge`); it creates the directory (0711) and the socket",
            )
        }
        Err(e) => {
            return Check::fail(NAME, format!("cannot stat {}: {e}", dir.display()), "fix the directory's owner and mode (0711)")
        }
    };
    if dir_mode & 0o002 != 0 && dir_mode & 0o1000 == 0 {
        return Check::fail(
            NAME,
            format!(
                "{} is world-writable (mode {dir_mode:04o}): anyone could replace the socket",
                dir.display()
            ),
            format!("chmod 711 {}", dir.display()),
        );
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => {
            return Check::warn(
                NAME,
                format!("no socket at {shown}: `vault-bridge serve` is not running"),
                "start the bridge (`systemctl start airlock-vault-bridge`)",
            )
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    let peers = &config.bridge.allowed_peer_uids;
    match health(path).await {
        Ok((BackendStatus::Healthy, _)) => Check::pass(
            NAME,
            format!(
                "`vault-bridge serve` answers on {shown} (mode {mode:03o}, dir {dir_mode:04o}, peer uids allowed besides its own: {peers:?}); its backend is healthy"
            ),
        ),
        Ok((status, message)) => Check::fail(
            NAME,
            format!(
                "`vault-bridge serve` answers on {shown}, but reports its backend {status}: {}",
                message.unwrap_or_default()
            ),
            "see the backend check",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{shown} exists but does not answer: {e}"),
            "restart the bridge (a stale socket from a killed bridge is replaced on start); an agent may connect only if its uid is in bridge.allowed_peer_uids",
        ),
    }
}

/// Hello and `health` on the agent channel, as the sandbox-agent does.
async fn health(path: &Path) -> Result<(BackendStatus, Option<String>), String> {
    let codec = FrameCodec::default();
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut buf = BytesMut::new();
    for (i, message) in [ToBridge::hello(env!("CARGO_PKG_VERSION")), ToBridge::Health]
        .iter()
        .enumerate()
    {
        let bytes = Frame::control(message)
            .and_then(|f| codec.encode_to_bytes(&f))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let answer = loop {
            if let Some(frame) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
                break FromBridge::decode(&frame).map_err(|e| e.to_string())?;
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before an answer".into());
            }
        };
        match (i, answer) {
            (0, FromBridge::HelloAccepted { .. }) => {}
            (1, FromBridge::Health { backend, message }) => return Ok((backend, message)),
            (_, FromBridge::Error { code, message }) => {
                return Err(format!("refused: {message} ({code})"))
            }
            (_, other) => return Err(format!("unexpected answer {other:?}")),
        }
    }
    Err("no health answer".into())
}

/// The egress CA sandboxes trust: present, key private.
fn egress_ca(data_dir: &Path) -> Check {
    const NAME: &str = "egress-ca";
    let dir = crate::egress::ca_dir(data_dir);
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if !cert.exists() && !key.exists() {
        return Check::warn(
            NAME,
            format!("no egress CA in {} yet", dir.display()),
            "`vault-bridge serve` (or `vault-bridge ca print`) creates it; give its certificate to the agent (bridge.ca_cert_file)",
        );
    }
    match std::fs::metadata(&key).map(|m| m.permissions().mode() & 0o777) {
        Ok(mode) if mode & 0o077 != 0 => {
            return Check::fail(
                NAME,
                format!("{} has mode {mode:04o}: the CA key is readable by others", key.display()),
                format!("chmod 600 {}", key.display()),
            )
        }
        Ok(_) => {}
        Err(e) => {
            return Check::fail(NAME, format!("cannot read {}: {e}", key.display()), "restore the CA key or remove the egress-ca directory to make a new CA (then redistribute its certificate)")
        }
    }
    match pki::CertificateAuthority::load(&cert, &key) {
        Ok(ca) => Check::pass(
            NAME,
            format!("egress CA {} in {}", ca.fingerprint(), dir.display()),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("egress CA in {} does not load: {e}", dir.display()),
            "restore ca.crt and ca.key, or remove the directory to make a new CA (then redistribute its certificate)",
        ),
    }
}

/// `egress.upstream_ca_files`: each readable PEM.
fn upstream_cas(config: &Config) -> Check {
    const NAME: &str = "upstream-ca";
    let files = &config.egress.upstream_ca_files;
    if files.is_empty() {
        return Check::skip(
            NAME,
            "no egress.upstream_ca_files: upstreams are checked against the public web roots",
        );
    }
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("cannot read {}: {e}", f.display()),
                    "fix egress.upstream_ca_files",
                )
            }
        };
        if pki::ca::pem_to_certs(&text)
            .map(|c| c.is_empty())
            .unwrap_or(true)
        {
            return Check::fail(
                NAME,
                format!("{} holds no PEM certificate", f.display()),
                "fix egress.upstream_ca_files",
            );
        }
    }
    Check::pass(
        NAME,
        format!("{} upstream CA file(s) readable", files.len()),
    )
}
