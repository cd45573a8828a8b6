//! A real `vault-bridge` process for end-to-end tests: its TOML (the
//! encrypted-file backend by default, OpenBao on request), `vault-bridge
//! init`, `vault-bridge serve` as a child process logging to a file, waiting
//! until its agent socket answers, SIGKILL and restart, the CLI
//! (`credentials list`, `set`), and the text of the sandbox-agent's
//! `[bridge]` section pointing at it.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use airlock_tests::bridge::{Bridge, BridgeOptions};
//! let mut bridge = Bridge::start(BridgeOptions::default())?;
//! let agent_toml = bridge.agent_toml(); // append to the agent's config
//! bridge.kill9()?;
//! bridge.restart()?;
//! # let _ = agent_toml; Ok(()) }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use testkit::try_eventually_blocking;

use crate::deploy::binary;

/// The secret backend of a test bridge.
#[derive(Debug, Clone, Default)]
pub enum BridgeBackend {
    /// `type = "file"`: the encrypted local file, key created by `init`.
    #[default]
    File,
    /// `type = "openbao"` with token auth.
    Openbao {
        /// `address`, e.g. `http://127.0.0.1:8200`.
        address: String,
        /// The token (written to a 0600 file in the bridge's directory).
        token: String,
        /// The KV v2 mount (`None`: the bridge's default).
        mount: Option<String>,
    },
}

/// Settings of a test bridge.
#[derive(Debug, Clone, Default)]
pub struct BridgeOptions {
    /// The secret backend.
    pub backend: BridgeBackend,
    /// CA files the egress proxy trusts for upstream servers
    /// (`[egress] upstream_ca_files`), e.g. a `git_server::TestCa`'s file.
    pub upstream_ca_files: Vec<PathBuf>,
    /// Extra TOML appended to the config file.
    pub extra_toml: String,
}

/// A `vault-bridge serve` process and its directory (removed on drop).
#[derive(Debug)]
pub struct Bridge {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    child: Option<Child>,
}

impl Bridge {
    /// Write the config, run `init` (file backend) and start `serve`;
    /// returns once the agent socket accepts connections.
    pub fn start(opts: BridgeOptions) -> Result<Self> {
        let bridge = Self::configure(opts)?;
        let mut bridge = bridge;
        bridge.restart()?;
        Ok(bridge)
    }

    /// Write the config and run `init` without starting `serve`.
    pub fn configure(opts: BridgeOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-bridge-")
            .tempdir()?;
        // The agent (same uid) reaches the per-sandbox sockets; the sandbox
        // user traverses the directory to its own socket only.
        let egress = dir.path().join("egress");
        std::fs::create_dir_all(&egress)?;
        std::fs::set_permissions(&egress, std::fs::Permissions::from_mode(0o711))?;
        let cas = opts
            .upstream_ca_files
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect::<Vec<_>>()
            .join(", ");
        let backend = match &opts.backend {
            BridgeBackend::File => "[backend]\ntype = \"file\"\n\n[backend.file]\n".to_owned(),
            BridgeBackend::Openbao {
                address,
                token,
                mount,
            } => {
                let token_file = dir.path().join("openbao-token");
                std::fs::write(&token_file, token)?;
                std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
                let mut s = format!(
                    "[backend]\ntype = \"openbao\"\n\n[backend.openbao]\naddress = \"{address}\"\nauth = \"token\"\ntoken_file = \"{}\"\n",
                    token_file.display()
                );
                if let Some(m) = mount {
                    s.push_str(&format!("mount = \"{m}\"\n"));
                }
                s
            }
        };
        let toml = format!(
            "[bridge]\ndata_dir = \"{data}\"\nsocket_path = \"{socket}\"\n\n{backend}\n[egress]\nsocket_dir = \"{egress}\"\nupstream_ca_files = [{cas}]\n\n{extra}\n",
            data = dir.path().join("data").display(),
            socket = dir.path().join("run/agent.sock").display(),
            egress = egress.display(),
            extra = opts.extra_toml,
        );
        let config_path = dir.path().join("vault-bridge.toml");
        std::fs::write(&config_path, toml)?;
        let bridge = Self {
            dir,
            config_path,
            child: None,
        };
        if matches!(opts.backend, BridgeBackend::File) {
            bridge.cli(&["init"])?;
        }
        Ok(bridge)
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The bridge's directory (config, data dir, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `[bridge] data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The agent channel's socket (`[bridge] socket_path`).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    /// The per-sandbox egress socket directory (`[egress] socket_dir`).
    pub fn egress_dir(&self) -> PathBuf {
        self.dir.path().join("egress")
    }

    /// The egress CA's certificate (public part), created by `serve`.
    pub fn ca_cert_path(&self) -> PathBuf {
        vault_bridge::egress::ca_dir(&self.data_dir()).join("ca.crt")
    }

    /// The `[bridge]` section of a sandbox-agent config pointing at this bridge.
    pub fn agent_toml(&self) -> String {
        format!(
            "\n[bridge]\nsocket_path = \"{}\"\negress_dir = \"{}\"\nca_cert_file = \"{}\"\ncall_timeout_seconds = 5\n",
            self.socket_path().display(),
            self.egress_dir().display(),
            self.ca_cert_path().display(),
        )
    }

    /// The same as in-process settings (for `SandboxService::start`).
    pub fn agent_settings(&self) -> sandbox_agent::sandbox::config::BridgeSettings {
        sandbox_agent::sandbox::config::BridgeSettings {
            socket_path: self.socket_path(),
            egress_dir: self.egress_dir(),
            ca_cert_file: self.ca_cert_path(),
            call_timeout: Duration::from_secs(5),
        }
    }

    /// The log of `serve` (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vault-bridge.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start `serve` (again) and wait until the agent socket answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("vault-bridge already running");
        }
        let socket = self.socket_path();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(binary("vault-bridge")?)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            // Tests read the debug lines; a benchmark may ask for the
            // production level (AIRLOCK_BRIDGE_RUST_LOG=info).
            .env(
                "RUST_LOG",
                std::env::var("AIRLOCK_BRIDGE_RUST_LOG")
                    .unwrap_or_else(|_| "info,vault_bridge=debug".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn vault-bridge serve")?;
        self.child = Some(child);
        let ready =
            try_eventually_blocking("vault-bridge agent socket", Duration::from_secs(30), || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            });
        if ready.is_err() {
            bail!(
                "vault-bridge serve did not open {}; log:\n{}",
                socket.display(),
                crate::deploy::tail(&self.log(), 40)
            );
        }
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL `serve` and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Run a `vault-bridge` command against this config; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary("vault-bridge")?)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("NO_COLOR", "1")
            .output()?;
        if !out.status.success() {
            bail!(
                "vault-bridge {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `vault-bridge credentials list` (ids and field names, never values).
    pub fn credentials_list(&self) -> Result<String> {
        self.cli(&["credentials", "list"])
    }

    /// `vault-bridge credentials set` from a value written to a 0600 file.
    pub fn set_secret(
        &self,
        vault: &str,
        credential: &str,
        field: &str,
        value: &str,
    ) -> Result<()> {
        let file = self.dir.path().join("secret-input");
        std::fs::write(&file, value)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        let r = self.cli(&[
            "credentials",
            "set",
            credential,
            "--vault",
            vault,
            "--field",
            field,
            "--from-file",
            &file.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&file);
        r.map(|_| ())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// A client of a bridge's agent channel, as the sandbox-agent is: the hello
/// first, then one request and one answer at a time.
#[derive(Debug)]
pub struct Channel {
    stream: tokio::net::UnixStream,
    buf: bytes::BytesMut,
    codec: protocol::frame::FrameCodec,
}

impl Channel {
    /// Connect to `socket` and exchange the hello.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect {}", socket.display()))?;
        let mut c = Self {
            stream,
            buf: bytes::BytesMut::new(),
            codec: protocol::frame::FrameCodec::default(),
        };
        match c.call(&protocol::bridge::ToBridge::hello("test")).await? {
            protocol::bridge::FromBridge::HelloAccepted { .. } => Ok(c),
            other => bail!("hello refused: {other:?}"),
        }
    }

    /// Send `m`, read its answer.
    pub async fn call(
        &mut self,
        m: &protocol::bridge::ToBridge,
    ) -> Result<protocol::bridge::FromBridge> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bytes = self
            .codec
            .encode_to_bytes(&protocol::frame::Frame::control(m)?)?;
        self.stream.write_all(&bytes).await?;
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(protocol::bridge::FromBridge::decode(&f)?);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the bridge hung up");
            }
        }
    }

    /// One request on a new connection (hello, `m`), its answer.
    pub async fn once(
        socket: &Path,
        m: &protocol::bridge::ToBridge,
    ) -> Result<protocol::bridge::FromBridge> {
        Self::connect(socket).await?.call(m).await
    }
}

/// Every sandbox's `egress.sock` under a bridge's socket dir
/// ([`Bridge::egress_dir`]), sorted.
pub fn egress_sockets(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("egress.sock"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// Forwards loopback TCP connections to the Unix socket `socket` (what the
/// executor's forwarder does inside a sandbox), each connection opening the
/// socket anew; returns the loopback port. Runs until the runtime ends.
pub async fn forward_to_socket(socket: PathBuf) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    port
}

/// Standard base64 with padding (what a basic-auth header carries).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
