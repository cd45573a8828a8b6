//! The vault-bridge's egress proxy in-process for tests and benchmarks: a
//! loopback TCP listener serving `Egress::serve_connection` as one sandbox,
//! on its own tokio runtime (so tests stay plain `#[test]`s driving real
//! `git` and `curl`), with an in-memory secret map and audit record, and
//! names resolved through a fixed map (no /etc/hosts edits).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use vault_bridge::egress::{
    Egress, EgressCa, EgressPolicy, MemoryAudit, MemorySecrets, SandboxIdentity, StaticResolver,
    TrustRoots, Upstream,
};

/// A running egress proxy for one sandbox identity.
#[derive(Debug)]
pub struct EgressProxy {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    /// Secrets the proxy injects.
    pub secrets: MemorySecrets,
    /// What the proxy audited.
    pub audit: MemoryAudit,
    ca_pem: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EgressProxy {
    /// Start a proxy for `who` under `policy`, trusting `upstream_roots_pem`
    /// for upstreams, resolving each of `names` to 127.0.0.1.
    pub fn start(
        policy: EgressPolicy,
        who: SandboxIdentity,
        upstream_roots_pem: &str,
        names: &[&str],
        secrets: MemorySecrets,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-egress-")
            .tempdir()?;
        let ca = EgressCa::load_or_create(&dir.path().join("egress-ca"))?;
        let ca_pem = ca.cert_pem();
        std::fs::write(dir.path().join("bridge-ca.pem"), &ca_pem)?;
        let mut resolver = StaticResolver::new();
        for n in names {
            resolver = resolver.with(n, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let upstream = Upstream::new(
            &TrustRoots::Pem(upstream_roots_pem.to_owned()),
            Arc::new(resolver),
            Duration::from_secs(10),
        )?;
        let audit = MemoryAudit::new();
        let egress = Arc::new(Egress::new(
            ca,
            upstream,
            Arc::new(secrets.clone()),
            Arc::new(audit.clone()),
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("egress runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("bind egress listener")?;
        let addr = listener.local_addr()?;
        runtime.spawn(egress.serve_listener(listener, who, Arc::new(policy)));
        Ok(Self {
            dir,
            addr,
            secrets,
            audit,
            ca_pem,
            runtime: Some(runtime),
        })
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for `http.proxy` / `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bridge's egress CA certificate (PEM), what the sandbox trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`Self::ca_pem`] (for `GIT_SSL_CAINFO`, `curl --cacert`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("bridge-ca.pem")
    }

    /// The directory holding the egress CA (`ca.crt`, `ca.key`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("egress-ca")
    }

    /// The proxy's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
