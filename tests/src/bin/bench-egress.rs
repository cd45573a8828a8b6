//! `bench-egress`: one run, one table. The vault-bridge's egress proxy
//! against the same real Git server (git http-backend behind nginx +
//! fcgiwrap, HTTPS, basic auth) reached directly from the host with the
//! token: `git clone` of a ~50 MiB repository of random (incompressible)
//! files and `git push` of a 1 MiB commit, N times each, alternating;
//! then small HTTPS GETs (nginx static file) through the proxy vs direct,
//! on a kept-alive connection and on a new connection each time.
//!
//! ```text
//! cargo run --release -p airlock-tests --bin bench-egress [-- REPETITIONS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::bridge::base64 as b64;
use airlock_tests::egress::EgressProxy;
use airlock_tests::git_server::{git, random_bytes, run_ok, GitServer, StaticServer, TestCa};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vault_bridge::egress::{
    AuthScheme, CredentialRef, EgressPolicy, HostCredential, HostPattern, HostRule, MemorySecrets,
    SandboxIdentity,
};

const GIT_HOST: &str = "git.internal.test";
const WEB_HOST: &str = "web.internal.test";
const FILES: usize = 50;
const FILE_BYTES: usize = 1024 * 1024;
const GETS: usize = 500;
const GETS_NEW_CONN: usize = 100;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    run_ok(cmd)?;
    Ok(t.elapsed())
}

/// A new 1 MiB commit in `clone`, pushed to `branch`; returns the push time.
fn commit_and_push(git_cmd: &dyn Fn() -> Command, clone: &Path, branch: &str) -> Result<Duration> {
    std::fs::write(
        clone.join(format!("{branch}.bin")),
        random_bytes(FILE_BYTES)?,
    )?;
    run_ok(git_cmd().arg("-C").arg(clone).args(["add", "-A"]))?;
    run_ok(
        git_cmd()
            .arg("-C")
            .arg(clone)
            .args(["commit", "-q", "-m", branch]),
    )?;
    time(git_cmd().arg("-C").arg(clone).args([
        "push",
        "-q",
        "origin",
        &format!("HEAD:refs/heads/{branch}"),
    ]))
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("repetitions must be a number")?
        .unwrap_or(5);
    let work = tempfile::Builder::new().prefix("bench-egress-").tempdir()?;
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let token = format!("bench-token-{}", std::process::id());
    let ca = TestCa::new("bench upstream ca")?;
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file)?;
    let server = GitServer::start(&ca, GIT_HOST, "git", &token)?;
    eprintln!("generating the repository ({FILES} × {FILE_BYTES} random bytes) ...");
    server.create_random_repo("big", FILES, FILE_BYTES)?;
    let small_body = vec![b'x'; 512];
    let web = StaticServer::start(&ca, WEB_HOST, &[("small.txt", &small_body)], "/")?;

    let policy = EgressPolicy::new()
        .allow(
            HostRule::new(HostPattern::parse(GIT_HOST)?, "repository")
                .with_ports(&[server.addr().port()])
                .with_credential(HostCredential {
                    credential: CredentialRef {
                        vault_id: Some("vlt_bench".into()),
                        credential_id: "vcrd_bench".into(),
                        field: "token".into(),
                    },
                    scheme: AuthScheme::Basic {
                        username: "git".into(),
                    },
                    paths: Vec::new(),
                }),
        )
        .allow(
            HostRule::new(HostPattern::parse(WEB_HOST)?, "agent policy")
                .with_ports(&[web.addr().port()]),
        );
    let secrets = MemorySecrets::new();
    secrets.set("vcrd_bench", "token", &token);
    let proxy = EgressProxy::start(
        policy,
        SandboxIdentity {
            sandbox_id: "sbx_bench".into(),
            session_id: "sesn_bench".into(),
        },
        ca.cert_pem(),
        &[GIT_HOST, WEB_HOST],
        secrets,
    )?;

    let auth = format!(
        "http.extraHeader=Authorization: Basic {}",
        b64(format!("git:{token}").as_bytes())
    );
    let direct_git = || {
        let mut c = git(&home);
        c.env("GIT_SSL_CAINFO", &ca_file).args(["-c", &auth]);
        c
    };
    let proxy_url = proxy.url();
    let proxy_ca = proxy.ca_file();
    let proxied_git = || {
        let mut c = git(&home);
        c.env("GIT_SSL_CAINFO", &proxy_ca)
            .args(["-c", &format!("http.proxy={proxy_url}")]);
        c
    };
    let direct_url = server.localhost_url("big");
    let proxied_url = server.url("big");

    // One warm-up of each (page cache, leaf certificate minting).
    for (name, g, url) in [
        ("direct", &direct_git as &dyn Fn() -> Command, &direct_url),
        ("proxy", &proxied_git, &proxied_url),
    ] {
        let d = work.path().join(format!("warm-{name}"));
        run_ok(g().args(["clone", "-q", url]).arg(&d))?;
        std::fs::remove_dir_all(&d)?;
    }

    let mut clone_direct = Vec::new();
    let mut clone_proxy = Vec::new();
    let mut push_direct = Vec::new();
    let mut push_proxy = Vec::new();
    for i in 0..reps {
        for (name, g, url, clones, pushes) in [
            (
                "direct",
                &direct_git as &dyn Fn() -> Command,
                &direct_url,
                &mut clone_direct,
                &mut push_direct,
            ),
            (
                "proxy",
                &proxied_git,
                &proxied_url,
                &mut clone_proxy,
                &mut push_proxy,
            ),
        ] {
            let d = work.path().join(format!("clone-{name}-{i}"));
            clones.push(time(g().args(["clone", "-q", url]).arg(&d))?);
            let size = dir_size(&d.join(".git/objects"))?;
            if size < (FILES * FILE_BYTES) as u64 {
                bail!("clone {} holds only {size} bytes of objects", d.display());
            }
            pushes.push(commit_and_push(g, &d, &format!("bench-{name}-{i}"))?);
            std::fs::remove_dir_all(&d)?;
        }
        eprintln!("repetition {}/{reps} done", i + 1);
    }

    // Small HTTPS GETs, in process (no process spawn in the timing).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let upstream_roots = roots(ca.cert_pem())?;
    let bridge_roots = roots(proxy.ca_pem())?;
    let web_port = web.addr().port();
    let (mut ka_direct, mut ka_proxy, mut nc_direct, mut nc_proxy) = rt.block_on(async {
        let direct = Target::Direct(web.addr());
        let via = Target::Proxy(proxy.addr());
        let ka_direct = gets_keepalive(&direct, upstream_roots.clone(), web_port).await?;
        let ka_proxy = gets_keepalive(&via, bridge_roots.clone(), web_port).await?;
        let nc_direct = gets_new_conn(&direct, upstream_roots.clone(), web_port).await?;
        let nc_proxy = gets_new_conn(&via, bridge_roots.clone(), web_port).await?;
        anyhow::Ok((ka_direct, ka_proxy, nc_direct, nc_proxy))
    })?;

    let (cd, cp) = (median(&mut clone_direct), median(&mut clone_proxy));
    let (pd, pp) = (median(&mut push_direct), median(&mut push_proxy));
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!();
    println!(
        "bench-egress: {reps} repetitions (median), repository {} MiB ({FILES} random files), push of a 1 MiB commit; {}; loopback nginx + fcgiwrap + git http-backend over HTTPS",
        FILES * FILE_BYTES / (1024 * 1024),
        git_version()
    );
    println!("| operation | direct (token on host) | through the egress proxy | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| git clone ~50 MiB | {} | {} | {:.2}x |",
        ms(cd),
        ms(cp),
        ratio(cd, cp)
    );
    println!(
        "| git push 1 MiB commit | {} | {} | {:.2}x |",
        ms(pd),
        ms(pp),
        ratio(pd, pp)
    );
    println!();
    println!(
        "| small HTTPS GET (512 B) | direct p50 | proxy p50 | added p50 | direct p90 | proxy p90 |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, d: &mut Vec<Duration>, p: &mut Vec<Duration>| {
        let (d50, p50) = (pct(d, 0.5), pct(p, 0.5));
        let (d90, p90) = (pct(d, 0.9), pct(p, 0.9));
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            us(d50),
            us(p50),
            us(p50.saturating_sub(d50)),
            us(d90),
            us(p90)
        );
    };
    row(
        &format!("kept-alive connection ({GETS} GETs)"),
        &mut ka_direct,
        &mut ka_proxy,
    );
    row(
        &format!(
            "new connection each ({GETS_NEW_CONN} GETs, incl. TCP+TLS{})",
            " and CONNECT via proxy"
        ),
        &mut nc_direct,
        &mut nc_proxy,
    );
    Ok(())
}

fn git_version() -> String {
    Command::new("git")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}

fn roots(pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for c in pki::ca::pem_to_certs(pem).map_err(anyhow::Error::msg)? {
        store.add(c)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

enum Target {
    Direct(std::net::SocketAddr),
    Proxy(std::net::SocketAddr),
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A TLS connection to `WEB_HOST`, directly or through a CONNECT tunnel.
async fn connect(target: &Target, tls: Arc<rustls::ClientConfig>, port: u16) -> Result<Sender> {
    let tcp = match target {
        Target::Direct(a) => TcpStream::connect(a).await?,
        Target::Proxy(p) => {
            let mut s = TcpStream::connect(p).await?;
            s.write_all(
                format!("CONNECT {WEB_HOST}:{port} HTTP/1.1\r\nHost: {WEB_HOST}:{port}\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            let mut b = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 {
                    bail!("proxy closed during CONNECT");
                }
                buf.push(b[0]);
            }
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!("CONNECT refused: {}", String::from_utf8_lossy(&buf));
            }
            s
        }
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(WEB_HOST.to_owned())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut Sender, port: u16) -> Result<()> {
    sender.ready().await?;
    let req = http::Request::get("/small.txt")
        .header(http::header::HOST, format!("{WEB_HOST}:{port}"))
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != 200 {
        bail!("GET answered {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    if body.len() != 512 {
        bail!("GET body is {} bytes", body.len());
    }
    Ok(())
}

async fn gets_keepalive(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
) -> Result<Vec<Duration>> {
    let mut s = connect(target, tls, port).await?;
    for _ in 0..20 {
        get(&mut s, port).await?;
    }
    let mut lat = Vec::with_capacity(GETS);
    for _ in 0..GETS {
        let t = Instant::now();
        get(&mut s, port).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

async fn gets_new_conn(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(GETS_NEW_CONN);
    for _ in 0..GETS_NEW_CONN {
        let t = Instant::now();
        let mut s = connect(target, tls.clone(), port).await?;
        get(&mut s, port).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}
