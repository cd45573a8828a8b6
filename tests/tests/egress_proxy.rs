//! The vault-bridge's egress proxy against a real Git server (`git
//! http-backend` behind nginx + fcgiwrap over HTTPS, basic auth) and real
//! nginx static servers, driven by the real `git` and `curl` from the host:
//! the token lives only in the proxy's secret map, never in git's config,
//! environment, repository or output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use airlock_tests::egress::EgressProxy;
use airlock_tests::git_server::{git, run_ok, GitServer, StaticServer, TestCa};
use vault_bridge::egress::{
    AuditOutcome, AuthScheme, CredentialRef, EgressPolicy, HostCredential, HostPattern, HostRule,
    InjectionLocation, MemorySecrets, Placeholder, PlaceholderHosts, SandboxIdentity,
};

const GIT_HOST: &str = "git.internal.test";
const OTHER_HOST: &str = "other.internal.test";
const FORBIDDEN_HOST: &str = "forbidden.internal.test";
const UNTRUSTED_HOST: &str = "untrusted.internal.test";

struct World {
    _tmp: tempfile::TempDir,
    home: std::path::PathBuf,
    token: String,
    api_secret: String,
    git: GitServer,
    other: StaticServer,
    forbidden: StaticServer,
    untrusted: StaticServer,
    /// Allowed on OTHER_HOST only, swapped in headers.
    placeholder: String,
    proxy: EgressProxy,
}

fn random_hex(n: usize) -> String {
    airlock_tests::git_server::random_bytes(n)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token = format!("canary-token-{}", random_hex(12));
    let api_secret = format!("canary-api-{}", random_hex(12));
    let ca = TestCa::new("airlock test upstream ca").unwrap();
    let rogue = TestCa::new("rogue ca nobody trusts").unwrap();
    let git = GitServer::start(&ca, GIT_HOST, "git", &token).unwrap();
    git.create_random_repo("repo", 3, 64 * 1024).unwrap();
    let forbidden =
        StaticServer::start(&ca, FORBIDDEN_HOST, &[("index.html", b"forbidden\n")], "/").unwrap();
    let other = StaticServer::start(
        &ca,
        OTHER_HOST,
        &[("index.html", b"other\n")],
        &format!(
            "https://{FORBIDDEN_HOST}:{}/index.html",
            forbidden.addr().port()
        ),
    )
    .unwrap();
    let untrusted = StaticServer::start(
        &rogue,
        UNTRUSTED_HOST,
        &[("index.html", b"untrusted\n")],
        "/",
    )
    .unwrap();

    let git_cred = CredentialRef {
        vault_id: Some("vlt_test".into()),
        credential_id: "vcrd_git".into(),
        field: "token".into(),
    };
    let api_cred = CredentialRef {
        vault_id: Some("vlt_test".into()),
        credential_id: "vcrd_api".into(),
        field: "secret_value".into(),
    };
    let ph = Placeholder::generate(
        api_cred,
        PlaceholderHosts::Limited(vec![HostPattern::parse(OTHER_HOST).unwrap()]),
        InjectionLocation {
            header: true,
            body: false,
        },
    );
    let placeholder = ph.value().to_owned();
    let policy = EgressPolicy::new()
        .allow(
            HostRule::new(HostPattern::parse(GIT_HOST).unwrap(), "repository")
                .with_ports(&[git.addr().port()])
                .with_credential(HostCredential {
                    credential: git_cred,
                    scheme: AuthScheme::Basic {
                        username: "git".into(),
                    },
                    paths: Vec::new(),
                }),
        )
        .allow(
            HostRule::new(HostPattern::parse(OTHER_HOST).unwrap(), "agent policy")
                .with_ports(&[other.addr().port()]),
        )
        .allow(
            HostRule::new(HostPattern::parse(UNTRUSTED_HOST).unwrap(), "agent policy")
                .with_ports(&[untrusted.addr().port()]),
        )
        .with_placeholder(ph);
    let secrets = MemorySecrets::new();
    secrets.set("vcrd_git", "token", &token);
    secrets.set("vcrd_api", "secret_value", &api_secret);
    let proxy = EgressProxy::start(
        policy,
        SandboxIdentity {
            sandbox_id: "sbx_test".into(),
            session_id: "sesn_test".into(),
        },
        ca.cert_pem(),
        &[GIT_HOST, OTHER_HOST, FORBIDDEN_HOST, UNTRUSTED_HOST],
        secrets,
    )
    .unwrap();
    World {
        _tmp: tmp,
        home,
        token,
        api_secret,
        git,
        other,
        forbidden,
        untrusted,
        placeholder,
        proxy,
    }
}

impl World {
    /// git through the proxy, trusting only the bridge's CA; no token anywhere.
    fn git(&self) -> Command {
        let mut c = git(&self.home);
        c.env("GIT_SSL_CAINFO", self.proxy.ca_file())
            .args(["-c", &format!("http.proxy={}", self.proxy.url())]);
        c
    }

    /// curl through the proxy; prints the body then the status code on its own line.
    fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["-sS", "--max-time", "20", "--proxy"])
            .arg(self.proxy.url())
            .arg("--cacert")
            .arg(self.proxy.ca_file())
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let data = std::fs::read(&p).unwrap();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

/// Send `request` to the proxy on a fresh connection; the response head and body as text.
fn raw(proxy: &EgressProxy, request: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut s)
}

/// Read one response (head + Content-Length body) from `s`.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = s.read(&mut chunk).unwrap();
        if n == 0 {
            return String::from_utf8_lossy(&buf).into_owned();
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn git_clone_and_push_through_the_proxy_without_the_token_on_the_client() {
    let w = world();
    let work = w.home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let clone = work.join("repo");

    // Without the proxy and without a token the server refuses: the token matters.
    let direct = git(&w.home)
        .args([
            "-c",
            "http.sslVerify=false",
            "ls-remote",
            &w.git.localhost_url("repo"),
        ])
        .output()
        .unwrap();
    assert!(!direct.status.success(), "server must require the token");

    let out_clone = run_ok(
        w.git()
            .args(["clone", "--progress", &w.git.url("repo")])
            .arg(&clone),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", w.git.logs()));
    assert!(clone.join("data/blob-0002.bin").is_file());

    std::fs::write(clone.join("CHANGE.md"), "pushed through the egress proxy\n").unwrap();
    run_ok(w.git().arg("-C").arg(&clone).args(["add", "CHANGE.md"])).unwrap();
    run_ok(
        w.git()
            .arg("-C")
            .arg(&clone)
            .args(["commit", "-q", "-m", "egress proxy push"]),
    )
    .unwrap();
    let out_push =
        run_ok(
            w.git()
                .arg("-C")
                .arg(&clone)
                .args(["push", "--progress", "origin", "main"]),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", w.git.logs()));
    let out_fetch = run_ok(w.git().arg("-C").arg(&clone).args(["fetch", "origin"])).unwrap();

    // The push is on the server.
    let log = w.git.log("repo").unwrap();
    assert!(log.contains("egress proxy push"), "server log: {log}");
    let local_head = run_ok(
        git(&w.home)
            .arg("-C")
            .arg(&clone)
            .args(["rev-parse", "HEAD"]),
    )
    .unwrap();
    assert!(log.starts_with(stdout(&local_head).trim()), "{log}");
    // ... authenticated as the token's user (nginx logs the basic-auth user).
    assert!(
        w.git.access_log().contains(" git ["),
        "{}",
        w.git.access_log()
    );

    // The token is nowhere on the client: not in the clone (.git included),
    // not in git's home/config, not in git's output.
    let token = w.token.as_bytes();
    assert_eq!(files_containing(&w.home, token), Vec::<String>::new());
    for o in [&out_clone, &out_push, &out_fetch] {
        assert!(!all_output(o).contains(&w.token));
    }
    let config = std::fs::read_to_string(clone.join(".git/config")).unwrap();
    assert!(
        config.contains(&w.git.url("repo")),
        "remote stays the real url: {config}"
    );

    // Every request was audited with the credential, and no event holds the value.
    let events = w.proxy.audit.events();
    let git_events: Vec<_> = events
        .iter()
        .filter(|e| e.credential_id.as_deref() == Some("vcrd_git"))
        .collect();
    assert!(
        git_events.iter().any(|e| e.method == "GET"
            && e.path == "/repo.git/info/refs"
            && e.outcome == AuditOutcome::Injected { status: 200 }),
        "{events:#?}"
    );
    assert!(
        git_events
            .iter()
            .any(|e| e.method == "POST" && e.path == "/repo.git/git-receive-pack"),
        "{events:#?}"
    );
    for e in &git_events {
        assert_eq!(e.vault_id.as_deref(), Some("vlt_test"));
        assert_eq!(e.host, GIT_HOST);
        assert_eq!(e.sandbox_id, "sbx_test");
        assert_eq!(e.session_id, "sesn_test");
    }
    assert!(!format!("{events:?}").contains(&w.token));
}

#[test]
fn sandbox_authorization_is_replaced_and_redirects_are_returned_unchanged() {
    let w = world();
    // A wrong Authorization from the sandbox is dropped; the bridge's token goes instead.
    let o = w.curl(&[
        "-H",
        "Authorization: Basic Z2l0Ondyb25n",
        &format!("{}/info/refs?service=git-upload-pack", w.git.url("repo")),
    ]);
    let out = stdout(&o);
    assert!(out.ends_with("\n200"), "{}", all_output(&o));
    assert!(!out.contains(&w.token));

    // A redirect comes back as it is (no following inside the proxy) ...
    let o = w.curl(&["-D", "-", &w.other.url("redirect")]);
    let out = stdout(&o);
    assert!(out.ends_with("\n302"), "{}", all_output(&o));
    assert!(
        out.to_lowercase()
            .contains(&format!("location: https://{FORBIDDEN_HOST}:")),
        "{out}"
    );
    // ... and following it is a new CONNECT, which the policy refuses.
    let o = w.curl(&["-L", &w.other.url("redirect")]);
    assert!(!o.status.success(), "{}", all_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403"),
        "{}",
        all_output(&o)
    );
    assert_eq!(
        w.forbidden.access_log(),
        "",
        "the forbidden host saw a request"
    );
}

#[test]
fn a_sandboxs_next_tunnel_to_a_host_reuses_the_idle_upstream_connection() {
    let w = world();
    // Two curls: two CONNECTs from the same sandbox, one after the other.
    for _ in 0..2 {
        let o = w.curl(&[&w.other.url("redirect")]);
        assert!(stdout(&o).ends_with("302"), "{}", all_output(&o));
    }
    // The upstream connection of each request, by nginx's access log
    // (written as a request finishes, maybe after curl exits).
    let conns = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("/redirect"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let _ =
        testkit::try_eventually_blocking("both requests logged", Duration::from_secs(10), || {
            conns(&w.other.connections_log()).len() >= 2
        });
    let log = w.other.connections_log();
    let conns = conns(&log);
    assert_eq!(conns.len(), 2, "{log}");
    assert_eq!(
        conns[0], conns[1],
        "the second tunnel opened a new upstream connection: {log}"
    );
}

#[test]
fn disallowed_host_is_refused_naming_the_policy() {
    let w = world();
    let port = w.forbidden.addr().port();
    let resp = raw(
        &w.proxy,
        &format!(
            "CONNECT {FORBIDDEN_HOST}:{port} HTTP/1.1\r\nHost: {FORBIDDEN_HOST}:{port}\r\n\r\n"
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.contains(&format!(
            "host {FORBIDDEN_HOST} is not in the session's allowed hosts"
        )),
        "{resp}"
    );
    assert!(
        resp.contains("refused by the session's allowed hosts"),
        "{resp}"
    );

    // An allowed host on a port the policy does not name is refused too.
    let resp = raw(
        &w.proxy,
        &format!("CONNECT {GIT_HOST}:443 HTTP/1.1\r\nHost: {GIT_HOST}:443\r\n\r\n"),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("port 443 is not allowed"), "{resp}");

    // git gets the refusal too, and the forbidden server never sees a request.
    let o = w
        .git()
        .args([
            "ls-remote",
            &format!("https://{FORBIDDEN_HOST}:{port}/repo.git"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(all_output(&o).contains("403"), "{}", all_output(&o));

    // Plain http is refused by default, naming that policy.
    let other_port = w.other.addr().port();
    let resp = raw(
        &w.proxy,
        &format!(
            "GET http://{OTHER_HOST}:{other_port}/index.html HTTP/1.1\r\nHost: {OTHER_HOST}:{other_port}\r\n\r\n"
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("plain-http policy"), "{resp}");
    assert_eq!(w.forbidden.access_log(), "");
}

#[test]
fn placeholder_is_swapped_on_its_host_and_refused_and_audited_elsewhere() {
    let w = world();
    // On its allowed host, in a header: swapped for the secret.
    let o = w.curl(&[
        "-H",
        &format!("X-Api-Key: {}", w.placeholder),
        &w.other.url("echo"),
    ]);
    let out = stdout(&o);
    assert!(out.ends_with("\n200"), "{}", all_output(&o));
    assert!(
        out.contains(&format!("x-api-key={}", w.api_secret)),
        "{out}"
    );
    assert!(w.proxy.audit.events().iter().any(|e| {
        e.credential_id.as_deref() == Some("vcrd_api")
            && e.host == OTHER_HOST
            && e.outcome == AuditOutcome::Injected { status: 200 }
    }));

    // To an allowed host that is not the credential's: refused, and audited.
    let before = w.git.access_log().lines().count();
    let o = w.curl(&[
        "-H",
        &format!("X-Api-Key: {}", w.placeholder),
        &format!("{}/info/refs?service=git-upload-pack", w.git.url("repo")),
    ]);
    let out = stdout(&o);
    assert!(out.ends_with("\n403"), "{}", all_output(&o));
    assert!(
        out.contains("the placeholder of credential vcrd_api may not be sent to git.internal.test"),
        "{out}"
    );
    assert!(
        out.contains("refused by the credential's allowed hosts"),
        "{out}"
    );
    assert!(!out.contains(&w.api_secret));

    // In a streamed body, and in the url: refused too.
    let o = w.curl(&[
        "--data-binary",
        &format!("key={}", w.placeholder),
        &format!("{}/git-upload-pack", w.git.url("repo")),
    ]);
    assert!(stdout(&o).ends_with("\n403"), "{}", all_output(&o));
    let o = w.curl(&[&format!(
        "{}/info/refs?service={}",
        w.git.url("repo"),
        w.placeholder
    )]);
    assert!(stdout(&o).ends_with("\n403"), "{}", all_output(&o));
    assert_eq!(
        w.git.access_log().lines().count(),
        before,
        "a refused request reached the git server"
    );

    // A large body streams (checked on the way, the placeholder split
    // across reads): the upstream request is aborted before the placeholder's
    // bytes leave, and the client gets the 403. Chunked too.
    let mut big = vec![b'a'; 300 * 1024];
    let at = 200 * 1024 - 7;
    big.splice(at..at + w.placeholder.len(), w.placeholder.bytes());
    let big_file = w.home.join("big-body.bin");
    std::fs::write(&big_file, &big).unwrap();
    for extra in [None, Some("Transfer-Encoding: chunked")] {
        let mut args = vec![
            "--data-binary".to_owned(),
            format!("@{}", big_file.display()),
            format!("{}/git-upload-pack", w.git.url("repo")),
        ];
        if let Some(h) = extra {
            args.extend(["-H".to_owned(), h.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = w.curl(&args);
        assert!(
            stdout(&o).ends_with("\n403"),
            "{extra:?}: {}",
            all_output(&o)
        );
    }
    // The same large body without the placeholder goes through.
    let plain = vec![b'a'; 300 * 1024];
    std::fs::write(&big_file, &plain).unwrap();
    let o = w.curl(&[
        "--data-binary",
        &format!("@{}", big_file.display()),
        &w.other.url("index.html"),
    ]);
    // nginx answers 405 to a POST on a static file: the body reached it.
    assert!(stdout(&o).ends_with("\n405"), "{}", all_output(&o));

    let refused: Vec<_> = w
        .proxy
        .audit
        .events()
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::PlaceholderRefused)
        .collect();
    assert_eq!(refused.len(), 5, "{refused:#?}");
    for e in &refused {
        assert_eq!(e.credential_id.as_deref(), Some("vcrd_api"), "{refused:#?}");
        assert_eq!(e.vault_id.as_deref(), Some("vlt_test"));
        assert_eq!(e.host, GIT_HOST);
        assert_eq!(e.sandbox_id, "sbx_test");
    }
    // A placeholder the session does not know is refused as well.
    let o = w.curl(&[
        "-H",
        "X-Api-Key: airlock-placeholder-vcrd_other-0123456789abcdef",
        &w.other.url("echo"),
    ]);
    assert!(stdout(&o).ends_with("\n403"), "{}", all_output(&o));
    assert!(!format!("{:?}", w.proxy.audit.events()).contains(&w.api_secret));
}

#[test]
fn untrusted_upstream_certificate_is_refused_with_a_clear_error() {
    let w = world();
    let port = w.untrusted.addr().port();
    // The CONNECT is answered at once (the upstream is opened while the
    // client does its TLS handshake with the proxy); the request inside
    // the tunnel gets the 502 naming why the upstream could not be had.
    let resp = raw(
        &w.proxy,
        &format!(
            "CONNECT {UNTRUSTED_HOST}:{port} HTTP/1.1\r\nHost: {UNTRUSTED_HOST}:{port}\r\n\r\n"
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let o = w.curl(&[&format!("https://{UNTRUSTED_HOST}:{port}/")]);
    let resp = stdout(&o);
    assert!(resp.ends_with("\n502"), "{}", all_output(&o));
    assert!(
        resp.contains(&format!(
            "upstream {UNTRUSTED_HOST}:{port}: tls handshake failed"
        )),
        "{resp}"
    );
    assert!(resp.contains("UnknownIssuer"), "{resp}");
    assert_eq!(
        w.untrusted.access_log(),
        "",
        "no request may reach an untrusted upstream"
    );
}

#[test]
fn malformed_requests_get_400_and_other_connections_carry_on() {
    let w = world();
    // A connection opened before the bad ones, used after them.
    let mut keep = TcpStream::connect(w.proxy.addr()).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    for bad in [
        "CONNECT HTTP/1.1\r\n\r\n",
        "CONNECT no-port-here HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT bad host:443 HTTP/1.1\r\n\r\n",
        "this is not http\r\n\r\n",
        "GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let resp = raw(&w.proxy, bad);
        assert!(resp.starts_with("HTTP/1.1 400"), "{bad:?} -> {resp:?}");
    }

    let port = w.other.addr().port();
    keep.write_all(
        format!("CONNECT {OTHER_HOST}:{port} HTTP/1.1\r\nHost: {OTHER_HOST}:{port}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let resp = read_response(&mut keep);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let o = w.curl(&[&w.other.url("index.html")]);
    assert_eq!(stdout(&o), "other\n\n200", "{}", all_output(&o));
}
