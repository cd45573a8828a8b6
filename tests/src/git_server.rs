//! A real Git server for the egress-proxy tests and bench: `git http-backend`
//! behind Debian's nginx + fcgiwrap (installed by
//! `scripts/setup.d/50-gitserver.sh`), an unprivileged instance of each on a
//! free loopback port with its own nginx.conf and FastCGI socket in a temp
//! dir, over HTTPS with a certificate from a test CA made here (rcgen), and
//! basic auth (a static password file) in front of clone, fetch and push.
//! [`StaticServer`] is a second HTTPS nginx serving files, to play a host that
//! is not allowed (or one whose certificate is not trusted).
//!
//! Both are killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const NGINX: &str = "/usr/sbin/nginx";
const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// A test certificate authority (in memory); issues server certificates.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name` (the name shows up in TLS errors).
    pub fn new(name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM), what a client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Write the CA certificate to `path` (for `GIT_SSL_CAINFO`, curl `--cacert`, ...).
    pub fn write_cert(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.cert_pem).with_context(|| format!("write {}", path.display()))
    }

    /// A server certificate for `names`: (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A `git` command isolated from the machine's configuration: `HOME` is
/// `home`, no system config, no prompts, a fixed identity.
pub fn git(home: &Path) -> Command {
    let mut c = Command::new("git");
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("GIT_AUTHOR_NAME", "Airlock Test")
        .env("GIT_AUTHOR_EMAIL", "test@airlock.invalid")
        .env("GIT_COMMITTER_NAME", "Airlock Test")
        .env("GIT_COMMITTER_EMAIL", "test@airlock.invalid")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null());
    c
}

/// Run `cmd`; fail with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// One nginx instance (and optionally fcgiwrap) in its own directory.
#[derive(Debug)]
struct Nginx {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    nginx: Child,
    fcgiwrap: Option<Child>,
}

impl Nginx {
    /// Start nginx with `server_body` as the body of its one `server` block
    /// (listen, certificate and temp paths are filled in here).
    fn start(
        dir: tempfile::TempDir,
        ca: &TestCa,
        hostname: &str,
        server_body: &str,
        fcgiwrap: bool,
    ) -> Result<Self> {
        if !Path::new(NGINX).is_file() {
            bail!("nginx is not installed (scripts/setup.d/50-gitserver.sh installs it; or `apt-get install nginx fcgiwrap`)");
        }
        let d = dir.path().to_owned();
        for sub in ["tmp", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let (cert, key) = ca.issue(&[hostname, "localhost"])?;
        std::fs::write(d.join("server.crt"), cert)?;
        std::fs::write(d.join("server.key"), key)?;
        let fcgi = if fcgiwrap {
            if !Path::new(FCGIWRAP).is_file() {
                bail!("fcgiwrap is not installed (scripts/setup.d/50-gitserver.sh installs it)");
            }
            let sock = d.join("fcgiwrap.sock");
            let child = Command::new(FCGIWRAP)
                .args(["-c", "4", "-s"])
                .arg(format!("unix:{}", sock.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("logs/fcgiwrap.log"))?)
                .spawn()
                .context("spawn fcgiwrap")?;
            testkit::try_eventually_blocking("fcgiwrap socket", Duration::from_secs(10), || {
                sock.exists().then_some(())
            })?;
            Some(child)
        } else {
            None
        };
        let port = crate::deploy::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let user = if running_as_root() {
            "user root root;"
        } else {
            ""
        };
        let p = d.display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
{user}
events {{ worker_connections 256; }}
http {{
  access_log {p}/logs/access.log;
  log_format conn '$connection $request';
  access_log {p}/logs/connections.log conn;
  client_body_temp_path {p}/tmp/body;
  fastcgi_temp_path {p}/tmp/fastcgi;
  proxy_temp_path {p}/tmp/proxy;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  default_type application/octet-stream;
  keepalive_requests 10000;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name {hostname} localhost;
    ssl_certificate {p}/server.crt;
    ssl_certificate_key {p}/server.key;
    client_max_body_size 0;
{server_body}
  }}
}}
"#
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = Command::new(NGINX)
            .arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("logs/nginx.stderr"))?)
            .spawn()
            .context("spawn nginx")?;
        let mut me = Self {
            dir,
            addr,
            nginx,
            fcgiwrap: fcgi,
        };
        let waited =
            testkit::try_eventually_blocking("nginx listening", Duration::from_secs(10), || {
                if let Ok(Some(_)) = me.nginx.try_wait() {
                    return Some(false);
                }
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| true)
            })?;
        if !waited {
            bail!("nginx exited at start: {}", me.logs());
        }
        Ok(me)
    }

    fn logs(&self) -> String {
        let d = self.dir.path().join("logs");
        ["nginx.stderr", "error.log", "fcgiwrap.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(d.join(f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        if let Some(c) = &mut self.fcgiwrap {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running HTTPS Git server (smart HTTP, clone/fetch/push) requiring basic auth.
#[derive(Debug)]
pub struct GitServer {
    nginx: Nginx,
    hostname: String,
    repos: PathBuf,
    user: String,
    token: String,
}

impl GitServer {
    /// Start a Git server whose certificate (from `ca`) names `hostname`;
    /// every request needs basic auth `user`:`token`.
    pub fn start(ca: &TestCa, hostname: &str, user: &str, token: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-gitserver-")
            .tempdir()?;
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos)?;
        // nginx's `{PLAIN}` scheme: a static password file without hashing tools.
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{user}:{{PLAIN}}{token}\n"),
        )?;
        let p = dir.path().display();
        let r = repos.display();
        let body = format!(
            r#"    location / {{
      auth_basic "git";
      auth_basic_user_file {p}/htpasswd;
      fastcgi_pass unix:{p}/fcgiwrap.sock;
      fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
      fastcgi_param GIT_PROJECT_ROOT {r};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param HOME {p};
      fastcgi_buffering off;
      fastcgi_read_timeout 600s;
      fastcgi_send_timeout 600s;
    }}"#
        );
        let nginx = Nginx::start(dir, ca, hostname, &body, true)?;
        Ok(Self {
            nginx,
            hostname: hostname.to_owned(),
            repos,
            user: user.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The loopback address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        self.nginx.addr
    }

    /// The basic-auth user the server expects.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The token (basic-auth password) the server expects.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `https://<hostname>:<port>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "https://{}:{}/{name}.git",
            self.hostname,
            self.addr().port()
        )
    }

    /// `https://localhost:<port>/<name>.git` (reaches the server without a resolver).
    pub fn localhost_url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}.git", self.addr().port())
    }

    /// Path of the bare repository `name`.
    pub fn bare_path(&self, name: &str) -> PathBuf {
        self.repos.join(format!("{name}.git"))
    }

    /// Create an empty bare repository `name` that accepts pushes.
    pub fn create_repo(&self, name: &str) -> Result<PathBuf> {
        let path = self.bare_path(name);
        run_ok(
            git(self.nginx.dir.path())
                .args(["init", "--quiet", "--bare", "--initial-branch=main"])
                .arg(&path),
        )?;
        run_ok(git(self.nginx.dir.path()).arg("-C").arg(&path).args([
            "config",
            "http.receivepack",
            "true",
        ]))?;
        Ok(path)
    }

    /// Create repository `name` with one commit on `main` holding
    /// `files` × `file_bytes` random (incompressible) bytes plus a README.
    pub fn create_random_repo(&self, name: &str, files: usize, file_bytes: usize) -> Result<()> {
        let bare = self.create_repo(name)?;
        let work = tempfile::Builder::new()
            .prefix("airlock-gitseed-")
            .tempdir()?;
        let home = work.path().join("home");
        let tree = work.path().join("tree");
        std::fs::create_dir_all(&home)?;
        run_ok(
            git(&home)
                .args(["init", "--quiet", "--initial-branch=main"])
                .arg(&tree),
        )?;
        std::fs::write(tree.join("README"), format!("test repository {name}\n"))?;
        if files > 0 {
            std::fs::create_dir_all(tree.join("data"))?;
            for i in 0..files {
                std::fs::write(
                    tree.join(format!("data/blob-{i:04}.bin")),
                    random_bytes(file_bytes)?,
                )?;
            }
        }
        run_ok(git(&home).arg("-C").arg(&tree).args(["add", "-A"]))?;
        run_ok(
            git(&home)
                .arg("-C")
                .arg(&tree)
                .args(["commit", "--quiet", "-m", "seed"]),
        )?;
        run_ok(
            git(&home)
                .arg("-C")
                .arg(&tree)
                .arg("push")
                .arg("--quiet")
                .arg(&bare)
                .arg("main"),
        )?;
        Ok(())
    }

    /// `git log --oneline` of the bare repository `name` on the server.
    pub fn log(&self, name: &str) -> Result<String> {
        let out = run_ok(
            git(self.nginx.dir.path())
                .arg("--git-dir")
                .arg(self.bare_path(name))
                .args(["log", "--format=%H %s", "main"]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// nginx's access log (one line per request, with the auth user).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.nginx.dir.path().join("logs/access.log")).unwrap_or_default()
    }

    /// nginx's and fcgiwrap's logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nginx.logs()
    }
}

/// A running HTTPS static file server (nginx), no auth. `GET /<file>` serves
/// the files given at start; `/echo` answers with the request's `X-Api-Key`
/// header (`x-api-key=<value>`); `/redirect` answers 302 to `redirect_to`;
/// every other path answers 404.
#[derive(Debug)]
pub struct StaticServer {
    nginx: Nginx,
    hostname: String,
}

impl StaticServer {
    /// Start a static server whose certificate (from `ca`) names `hostname`
    /// (and localhost).
    pub fn start(
        ca: &TestCa,
        hostname: &str,
        files: &[(&str, &[u8])],
        redirect_to: &str,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-static-")
            .tempdir()?;
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root)?;
        for (name, body) in files {
            std::fs::write(root.join(name), body)?;
        }
        let body = format!(
            r#"    root {root};
    location / {{ try_files $uri =404; }}
    location = /echo {{ default_type text/plain; return 200 "x-api-key=$http_x_api_key\n"; }}
    location = /redirect {{ return 302 {redirect_to}; }}
"#,
            root = root.display()
        );
        let nginx = Nginx::start(dir, ca, hostname, &body, false)?;
        Ok(Self {
            nginx,
            hostname: hostname.to_owned(),
        })
    }

    /// The loopback address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        self.nginx.addr
    }

    /// `https://<hostname>:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}/{path}", self.hostname, self.addr().port())
    }

    /// nginx's access log.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.nginx.dir.path().join("logs/access.log")).unwrap_or_default()
    }

    /// One line per request: nginx's connection serial number, the request line.
    pub fn connections_log(&self) -> String {
        std::fs::read_to_string(self.nginx.dir.path().join("logs/connections.log"))
            .unwrap_or_default()
    }
}

/// `n` random bytes from the kernel (incompressible test data).
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
