//! The agent operator's egress policy (`[policy] egress_hosts`) end to end
//! on real components: a real `vault-bridge serve`, the sandbox-agent's
//! service on real Docker with `[bridge]` and the default sandbox image
//! (git, curl, bash), and real HTTPS servers (nginx, a test CA): host A is
//! `localhost`, host B is `127.0.0.1` (its certificate names the address),
//! and a Git server (git http-backend) on B.
//!
//! The session allows A and B (and names a repository on B); the agent's
//! `egress_hosts = ["localhost"]`:
//!
//! - the repository on B does not clone: a `repository_forbidden_error`
//!   resource error saying the agent's egress policy refused it; provision
//!   goes on and the Git server never saw a request;
//! - bash reaches A (200, A's body);
//! - bash to B is refused 403 by the bridge, the body naming
//!   `policy.egress_hosts` and B (as CONNECT, and as plain http), and B's
//!   server sees nothing;
//! - a host in neither list keeps the session's refusal (no mention of
//!   `egress_hosts`);
//! - each refusal is a line of the agent's hash-chained audit record
//!   (`outcome: host_refused`, `decision.rule` the policy, the sandbox,
//!   session and, for bash, the call's `tool_use_id`); the chain verifies.
//!
//! Control: the same session on an agent without `egress_hosts` reaches B
//! (200), so the refusal above is the agent's policy and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions};
use airlock_tests::git_server::{GitServer, StaticServer, TestCa};
use airlock_tests::sandbox::{exec_id, text, TestAgent};
use protocol::sandbox::{DestroyRequest, ProvisionRequest};
use sandbox_agent::sandbox::SandboxService;
use serde_json::{json, Value};

const SESSION: &str = "sesn_egress_policy";
const HOST_A: &str = "localhost";
const HOST_B: &str = "127.0.0.1";

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

fn refusals(path: &Path) -> Vec<Value> {
    lines(path)
        .into_iter()
        .filter(|l| l["call"] == "credential_use" && l["outcome"] == "host_refused")
        .collect()
}

/// The refusal line matching `pred`, waited for (the bridge streams it).
async fn refusal(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let found = testkit::try_eventually(what, Duration::from_secs(15), || {
        refusals(path).into_iter().find(|l| pred(l))
    })
    .await;
    match found {
        Ok(l) => l,
        Err(e) => panic!("{e}; the record's refusals: {:#?}", refusals(path)),
    }
}

/// A raw CONNECT to the sandbox's proxy; prints the proxy's whole answer.
fn raw_connect(host: &str, port: u16) -> String {
    format!(
        "printf 'CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n' \
         | timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; cat >&3; timeout 3 cat <&3' 2>&1"
    )
}

fn curl(url: &str) -> String {
    format!(
        "curl -sS --max-time 10 --proxy http://127.0.0.1:3128 -w '\\n%{{http_code}} %{{http_connect}}' '{url}' 2>&1"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_egress_hosts_narrow_what_a_session_allows() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bridge-egress-policy ca").unwrap();
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let a = StaticServer::start(&ca, HOST_A, &[("index.html", b"host-a\n")], "/").unwrap();
    let b = StaticServer::start(&ca, HOST_B, &[("index.html", b"host-b\n")], "/").unwrap();
    let git = GitServer::start(&ca, HOST_B, "git", "server-token").unwrap();
    git.create_repo("app").unwrap();
    let (pa, pb, pg) = (a.addr().port(), b.addr().port(), git.addr().port());
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();
    let request = || ProvisionRequest {
        session_id: Some(SESSION.into()),
        allowed_hosts: vec![format!("{HOST_A}:{pa}"), format!("{HOST_B}:{pb}")],
        resources: vec![json!({"type": "github_repository", "id": "sesrsc_app",
                               "url": git.url("app"), "mount_path": "/workspace/app"})],
        ..Default::default()
    };

    let mut agent = TestAgent::new();
    agent.policy.egress_hosts = Some(vec![HOST_A.into()]);
    let (svc, _) = SandboxService::start(agent.with_bridge(bridge.agent_settings()))
        .await
        .unwrap();
    let p = svc
        .provision(request())
        .await
        .unwrap_or_else(|e| panic!("provision: {e}\n{}", bridge.log()));
    let sbx = p.sandbox_id.clone();
    let audit = svc.audit_path().to_owned();

    // The repository on B: a resource error naming the agent's policy; provision went on.
    assert_eq!(p.resource_errors.len(), 1, "{:?}", p.resource_errors);
    let e = &p.resource_errors[0];
    assert_eq!(e.repository_url, git.url("app"));
    assert_eq!(e.error_type, "repository_forbidden_error", "{e:?}");
    assert!(
        e.message.contains("policy.egress_hosts")
            && e.message.contains(&format!("host {HOST_B} port {pg}")),
        "{e:?}"
    );
    println!("clone refused: {}", e.message);
    let clone_refusal = refusal(&audit, "the clone's refusal in the record", |l| {
        l["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("port {pg}")))
    })
    .await;
    assert_eq!(clone_refusal["decision"]["rule"], "policy.egress_hosts");
    assert_eq!(clone_refusal["sandbox_id"], sbx.as_str());
    assert_eq!(clone_refusal["session_id"], SESSION);
    assert_eq!(clone_refusal["credential_use"]["host"], HOST_B);
    assert_eq!(clone_refusal["credential_use"]["method"], "CONNECT");

    // A: allowed by the session and the agent.
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_host_a",
        "bash",
        json!({"command": curl(&a.url("index.html"))}),
    )
    .await;
    let out = text(&r);
    assert_eq!(out.trim(), "host-a\n\n200 200", "{out}\n{}", bridge.log());

    // B: in the session's hosts, outside the agent's: 403 naming the policy.
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_host_b",
        "bash",
        json!({"command": raw_connect(HOST_B, pb)}),
    )
    .await;
    let out = text(&r);
    println!("CONNECT {HOST_B}:{pb} -> {out}");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("policy.egress_hosts") && out.contains(&format!("host {HOST_B} port {pb}")),
        "{out}"
    );
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_host_b_curl",
        "bash",
        json!({"command": curl(&b.url("index.html"))}),
    )
    .await;
    let out = text(&r);
    assert!(
        out.contains("\n000 403"),
        "curl sees the proxy's 403: {out}"
    );
    let plain = format!("http://{HOST_B}:{pb}/index.html");
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_host_b_http",
        "bash",
        json!({"command": curl(&plain)}),
    )
    .await;
    let out = text(&r);
    assert!(
        out.contains("policy.egress_hosts") && out.contains("\n403 000"),
        "{out}"
    );
    assert_eq!(
        b.access_log().lines().count(),
        0,
        "B was reached: {}",
        b.access_log()
    );
    assert_eq!(
        git.access_log().lines().count(),
        0,
        "the git server was reached: {}",
        git.access_log()
    );

    // In neither: the session's refusal, as before.
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_neither",
        "bash",
        json!({"command": raw_connect("example.invalid", 443)}),
    )
    .await;
    let out = text(&r);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("not in the session's allowed hosts") && !out.contains("egress_hosts"),
        "{out}"
    );

    // Every refusal is in the agent's record, with the call that made it.
    for (id, rule, method) in [
        ("toolu_host_b", "policy.egress_hosts", "CONNECT"),
        ("toolu_host_b_curl", "policy.egress_hosts", "CONNECT"),
        ("toolu_host_b_http", "policy.egress_hosts", "GET"),
        ("toolu_neither", "session.allowed_hosts", "CONNECT"),
    ] {
        let l = refusal(&audit, id, |l| l["tool_use_id"] == id).await;
        assert_eq!(l["decision"]["allowed"], false, "{l}");
        assert_eq!(l["decision"]["rule"], rule, "{l}");
        assert_eq!(l["sandbox_id"], sbx.as_str(), "{l}");
        assert_eq!(l["session_id"], SESSION, "{l}");
        assert_eq!(l["credential_use"]["method"], method, "{l}");
        assert!(l["credential_use"].get("credential_id").is_none(), "{l}");
    }
    let l = refusal(&audit, "toolu_host_b", |l| {
        l["tool_use_id"] == "toolu_host_b"
    })
    .await;
    assert_eq!(l["credential_use"]["host"], HOST_B, "{l}");
    println!("audit line: {l}");
    sandbox_agent::audit::verify(&audit).unwrap();
    svc.destroy(DestroyRequest { sandbox_id: sbx })
        .await
        .unwrap();
    svc.shutdown(true).await;
    drop(svc);

    // Control: without the agent's policy the same session reaches B.
    let mut open = TestAgent::new();
    let (svc, _) = SandboxService::start(open.with_bridge(bridge.agent_settings()))
        .await
        .unwrap();
    let mut req = request();
    req.resources.clear();
    let p = svc
        .provision(req)
        .await
        .unwrap_or_else(|e| panic!("provision: {e}\n{}", bridge.log()));
    let r = exec_id(
        &svc,
        &p.sandbox_id,
        "toolu_control",
        "bash",
        json!({"command": curl(&b.url("index.html"))}),
    )
    .await;
    let out = text(&r);
    assert_eq!(out.trim(), "host-b\n\n200 200", "{out}\n{}", bridge.log());
    svc.destroy(DestroyRequest {
        sandbox_id: p.sandbox_id,
    })
    .await
    .unwrap();
    svc.shutdown(true).await;
}
