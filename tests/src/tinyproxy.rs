//! A real HTTP CONNECT proxy for tunnel tests: Debian's `tinyproxy`
//! (installed by `scripts/setup.d/00-apt.sh`) on a free loopback port with
//! basic auth, in the foreground, killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running tinyproxy.
#[derive(Debug)]
pub struct Tinyproxy {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Child,
}

impl Tinyproxy {
    /// Start tinyproxy requiring `user`/`password` (basic auth), allowing CONNECT to any port.
    pub fn start(user: &str, password: &str) -> Result<Self> {
        let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("tinyproxy is not installed (scripts/setup.d/00-apt.sh installs it; or `apt-get install tinyproxy`)")?;
        let dir = tempfile::Builder::new()
            .prefix("airlock-tinyproxy-")
            .tempdir()?;
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.path().join("tinyproxy.log");
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth {user} {password}\n",
            log.display()
        );
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn tinyproxy")?;
        let me = Self { dir, addr, child };
        testkit::try_eventually_blocking("tinyproxy listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        })?;
        Ok(me)
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// Whether the proxy process is still alive.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!("tinyproxy exited with {s}: {}", self.log());
        }
        Ok(())
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
