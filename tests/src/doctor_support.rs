//! Support for the `doctor` tests: running `sandbox-agent doctor --json` /
//! `vault-bridge doctor --json` (optionally inside a network namespace) and
//! reading the report, and the real breakages they diagnose: a network
//! namespace whose UDP to the control plane is dropped by nftables, a
//! CONNECT proxy that intercepts TLS with another CA's certificate, an agent
//! certificate that is not yet valid, and an OpenBao dev server to seal.
//!
//! Tests that need root or a tool call [`require`]: with `CI` set a missing
//! tool fails the test instead of skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deploy::binary;

/// One doctor run: exit code, stdout parsed as the `--json` report.
#[derive(Debug)]
pub struct DoctorRun {
    /// Exit code.
    pub code: i32,
    /// The report.
    pub json: Value,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
}

impl DoctorRun {
    /// The check named `name` (panics with the report if absent).
    pub fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no check {name} in {}", self.stdout))
    }

    /// Status of the check named `name`.
    pub fn status(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap_or("")
    }

    /// Detail of the check named `name`.
    pub fn detail(&self, name: &str) -> &str {
        self.check(name)["detail"].as_str().unwrap_or("")
    }

    /// Fix of the check named `name` (empty when none).
    pub fn fix(&self, name: &str) -> &str {
        self.check(name)["fix"].as_str().unwrap_or("")
    }

    /// Every check's `name: status` (for assertion messages).
    pub fn statuses(&self) -> String {
        self.json["checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{}: {}", c["name"], c["status"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }
}

/// Run `<program> --config <config> doctor --json <extra>`, inside network
/// namespace `netns` when given.
pub fn doctor(
    program: &str,
    config: &Path,
    extra: &[&str],
    netns: Option<&str>,
) -> Result<DoctorRun> {
    let bin = binary(program)?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--config")
        .arg(config)
        .args(["doctor", "--json"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("run {program} doctor"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .with_context(|| format!("doctor output is not JSON:\n{stdout}\nstderr:\n{stderr}"))?;
    Ok(DoctorRun {
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
    })
}

/// Whether `tool` is on PATH (or an absolute path that exists).
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `Ok(true)` when `ok`; otherwise fail under CI (`CI` set) or return
/// `Ok(false)` after saying why the test is skipped.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} (required when CI is set)");
    }
    eprintln!("SKIPPED: {what}");
    false
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A network namespace joined to the host by a veth pair; removed on drop.
/// The host side is `host_ip`, the namespace side `ns_ip` (a /30).
#[derive(Debug)]
pub struct NetNs {
    /// Namespace name (for `ip netns exec`).
    pub name: String,
    /// Address of the host end.
    pub host_ip: String,
    /// Address of the namespace end.
    pub ns_ip: String,
    host_if: String,
}

impl NetNs {
    /// Create the namespace and the veth pair (needs root and `ip`).
    pub fn create() -> Result<Self> {
        let id = std::process::id() % 60_000;
        let name = format!("airlock-doc-{id}");
        let host_if = format!("ald{id}h");
        let ns_if = format!("ald{id}n");
        let (a, b) = ((id / 64) % 250 + 1, (id % 64) * 4);
        let host_ip = format!("10.214.{a}.{}", b + 1);
        let ns_ip = format!("10.214.{a}.{}", b + 2);
        let _ = sh(&["ip", "netns", "del", &name]);
        let _ = sh(&["ip", "link", "del", &host_if]);
        sh(&["ip", "netns", "add", &name])?;
        let me = Self {
            name,
            host_ip,
            ns_ip,
            host_if,
        };
        sh(&[
            "ip",
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        sh(&["ip", "link", "set", &ns_if, "netns", &me.name])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.host_ip),
            "dev",
            &me.host_if,
        ])?;
        sh(&["ip", "link", "set", &me.host_if, "up"])?;
        let exec = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &me.name];
            v.extend_from_slice(args);
            sh(&v)
        };
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.ns_ip),
            "dev",
            &ns_if,
        ])?;
        exec(&["ip", "link", "set", &ns_if, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// Drop UDP from the namespace to `port` of the host end (nftables, or
    /// iptables when nft is missing).
    pub fn drop_udp_to(&self, port: u16) -> Result<()> {
        let exec = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &self.name];
            v.extend_from_slice(args);
            sh(&v)
        };
        if have("nft") {
            exec(&["nft", "add", "table", "inet", "doctor"])?;
            exec(&[
                "nft",
                "add",
                "chain",
                "inet",
                "doctor",
                "out",
                "{ type filter hook output priority 0 ; policy accept ; }",
            ])?;
            exec(&[
                "nft",
                "add",
                "rule",
                "inet",
                "doctor",
                "out",
                "ip",
                "daddr",
                &self.host_ip,
                "udp",
                "dport",
                &port.to_string(),
                "drop",
            ])
        } else {
            exec(&[
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                &self.host_ip,
                "-p",
                "udp",
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ])
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}

/// The sandbox-agent config doctor runs with: the enrolled agent's data dir
/// plus `[sandbox]`, `[control_plane]`, `[tunnel]` and extra sections.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// `data_dir` (the enrolled agent's, so the identity is found).
    pub data_dir: PathBuf,
    /// `[sandbox]` lines.
    pub sandbox: String,
    /// `[control_plane]` lines.
    pub control_plane: String,
    /// `[tunnel]` lines.
    pub tunnel: String,
    /// Anything else (e.g. a `[bridge]` section).
    pub extra: String,
}

impl AgentConfig {
    /// Write it to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let toml = format!(
            "data_dir = \"{}\"\n\n[sandbox]\n{}\n\n[control_plane]\n{}\n\n[tunnel]\n{}\n\n{}\n",
            self.data_dir.display(),
            self.sandbox,
            self.control_plane,
            self.tunnel,
            self.extra
        );
        std::fs::write(path, toml)?;
        Ok(())
    }
}

/// A CA nobody trusts, as a TLS-inspecting middlebox has: its certificate
/// (DER) and a server identity for `names` issued by it.
pub fn inspection_ca(cn: &str, names: &[&str]) -> Result<(Vec<u8>, Arc<rustls::ServerConfig>)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, cn);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "Middlebox Inc");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)?;
    Ok((ca_cert.der().to_vec(), Arc::new(config)))
}

/// An HTTP CONNECT proxy that intercepts TLS: it accepts every CONNECT,
/// then terminates TLS itself with a certificate from [`inspection_ca`]
/// (and drops the connection after the handshake). Stopped on drop.
#[derive(Debug)]
pub struct MitmProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MitmProxy {
    /// Listen on a free loopback port.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        match tcp.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    if !head.starts_with(b"CONNECT ") {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    }
                    if tcp
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MitmProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replace the enrolled agent's certificate with one for the same key and
/// identity, issued by the control plane's CA (`<cp data>/pki`), valid only
/// from `ahead` in the future: what an agent sees when its clock is behind.
pub fn install_future_certificate(
    cp_data_dir: &Path,
    identity_dir: &Path,
    ahead: Duration,
) -> Result<()> {
    let pki_dir = cp_data_dir.join("pki");
    let ca = pki::CertificateAuthority::load(&pki_dir.join("ca.crt"), &pki_dir.join("ca.key"))?;
    let creds_path = pki::agent::AgentFiles::new(identity_dir).credentials_file();
    let text = std::fs::read_to_string(&creds_path)?;
    let key_end = text
        .find("-----BEGIN CERTIFICATE-----")
        .context("no certificate in the credentials file")?;
    let key_pem = &text[..key_end];
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    let chain = pki::ca::pem_to_certs(&text[key_end..])?;
    let id = pki::peer_identity(&chain[0])?;
    let issued = pki::danger::issue_agent_at(
        &ca,
        &id.agent_id,
        &id.environment_id,
        &key,
        SystemTime::now() + ahead,
        Duration::from_secs(24 * 3600),
    )?;
    let mut out = key_pem.to_owned();
    out.push_str(&issued.chain_pem());
    std::fs::write(&creds_path, out)?;
    Ok(())
}

/// A `bao server -dev` on a free loopback port (root token `root`); killed on drop.
#[derive(Debug)]
pub struct Bao {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Bao {
    /// The bao binary (`AIRLOCK_BAO_BIN`, from scripts/setup.d/45-openbao.sh).
    pub fn bin() -> Option<PathBuf> {
        std::env::var_os("AIRLOCK_BAO_BIN")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
    }

    /// Start it and wait until it answers.
    pub fn start(bin: &Path) -> Result<Self> {
        let port = crate::deploy::free_port();
        let dir = tempfile::tempdir()?;
        let child = Command::new(bin)
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn bao server -dev")?;
        let me = Self {
            child,
            port,
            _dir: dir,
        };
        testkit::try_eventually_blocking(
            "bao dev server unsealed",
            Duration::from_secs(20),
            || {
                me.request("GET", "/v1/sys/health")
                    .ok()
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            },
        )?;
        Ok(me)
    }

    /// `http://127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Seal the server.
    pub fn seal(&self) -> Result<()> {
        let (code, body) = self.request("PUT", "/v1/sys/seal")?;
        if code != 204 {
            bail!("seal answered {code}: {body}");
        }
        Ok(())
    }

    /// One request with the root token: (status, body).
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: root\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, out))
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
