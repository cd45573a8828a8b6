//! A whole deployment from the container images alone: builds the three
//! daemon images with `packaging/images/build-daemon-images.sh` (the debug
//! binaries, the static executor), then runs them the way docs/images.md
//! tells an operator to:
//!
//! - the control plane with the image's own config, on a Docker network
//!   (`--network-alias control-plane`, the name its certificate carries), its
//!   state in a named volume and only the API published, on loopback;
//! - the vault-bridge and the sandbox-agent with the image's configs where
//!   only the host paths are moved into a temp dir: the bridge's data and
//!   runtime dirs and the agent's state dir are host directories bind-mounted
//!   at the same paths, because the agent asks the host's Docker Engine to
//!   mount the executor, the egress socket dir and the egress CA into each
//!   sandbox; the agent gets the Docker socket and its group (`--group-add`);
//! - the agent enrolled through its image (`docker run … enroll --join`),
//!   with the join string made by `docker exec … control-plane tokens create`.
//!
//! Then the real `anthropic` SDK drives a session whose model (the scripted
//! fake, the only fake, listening on the Docker network's gateway address)
//! runs one bash call in a sandbox; the call's output shows it ran as the
//! sandbox user, wrote and read a file, had its egress socket and CA mounted,
//! and that an HTTP CONNECT from the sandbox got an answer from the bridge
//! container. The images' HEALTHCHECK (/readyz) must report healthy, and the
//! images' shipped configs must pass `check-config`.
//!
//! Every container (the daemons and the agent's sandboxes), the network, the
//! volume (named and anonymous), the three images and the temp dir are
//! removed at the end, also when a step fails. Needs root (the image build)
//! and Docker; without them the test is skipped, except under CI where it
//! fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::deploy::bin_dir;
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use airlock_tests::sandbox::{executor_path, remove_agent_containers, test_image};
use e2e_support::{content_text, Api};
use serde_json::{json, Value};

/// The SDK's prompt; the model answers it with [`COMMAND`].
const PROMPT: &str = "Show that the sandbox works.";

/// The bash call run in the sandbox: who it runs as, a file written and read
/// back, the bridge's egress socket and CA as the agent mounted them, and one
/// CONNECT through the executor's forwarder to the bridge container.
const COMMAND: &str = "echo \"uid=$(id -u)\"; \
echo 'written in an image deployment' > notes.txt; cat notes.txt; \
test -S /run/airlock/egress.sock && echo egress-socket-mounted; \
test -s /etc/airlock/egress-ca.pem && echo egress-ca-mounted; \
echo \"proxy=$HTTPS_PROXY\"; \
exec 3<>/dev/tcp/127.0.0.1/3128 && \
printf 'CONNECT example.invalid:443 HTTP/1.1\\r\\nHost: example.invalid:443\\r\\n\\r\\n' >&3 && \
read -r -t 20 line <&3; echo \"connect: $line\"";

/// The SDK side: create an agent and a session, send the prompt, stream until
/// the session is idle for good; prints the session id and event types.
const SDK_SCRIPT: &str = r#"
import json, sys
import anthropic
url, key, environment, prompt = sys.argv[1:5]
client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=60,
                             _strict_response_validation=True)
agent = client.beta.agents.create(name="images", model="claude-sonnet-4-5",
                                  tools=[{"type": "agent_toolset_20260401"}])
session = client.beta.sessions.create(agent=agent.id, environment_id=environment)
seen = []
with client.beta.sessions.events.stream(session.id) as stream:
    client.beta.sessions.events.send(session.id, events=[{"type": "user.message",
        "content": [{"type": "text", "text": prompt}]}])
    for event in stream:
        seen.append(event.type)
        if event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
            break
print(json.dumps({"session_id": session.id, "types": seen}))
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn script(req: &RequestCtx) -> Reply {
    let first = req.first_user_text();
    if first != PROMPT {
        return Reply::text(format!("unexpected prompt {first:?}"));
    }
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .text("Running it.")
            .tool_use("toolu_images_bash", "bash", json!({ "command": COMMAND }))
            .into(),
        _ => Reply::text(format!("done: {}", req.last_result_text())),
    }
}

/// A missing prerequisite: a failure under CI, a skip elsewhere.
fn missing(what: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("images_deploy needs {what} (CI is set, so this fails instead of skipping)");
    }
    eprintln!("skipping images_deploy: needs {what}");
    true
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// `docker ARGS`; panics with its stderr unless it succeeds; returns stdout.
fn docker(args: &[&str]) -> String {
    let out = run(Command::new("docker").args(args));
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker ARGS`, ignoring failure (clean-up).
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Everything the test creates, removed on drop in reverse order.
struct Deployment {
    prefix: String,
    dir: tempfile::TempDir,
    network: String,
    volume: String,
    containers: Vec<String>,
    images: Vec<String>,
    agent_id: Option<String>,
}

impl Deployment {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn logs(&self, container: &str) -> String {
        let out = run(Command::new("docker").args(["logs", "--tail", "60", container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn all_logs(&self) -> String {
        self.containers
            .iter()
            .map(|c| format!("--- docker logs {c}\n{}", self.logs(c)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            // -v: the anonymous volumes of the image's other VOLUMEs too.
            docker_quiet(&["rm", "-f", "-v", c]);
        }
        if let Some(id) = &self.agent_id {
            remove_agent_containers(id);
        }
        docker_quiet(&["network", "rm", &self.network]);
        docker_quiet(&["volume", "rm", "-f", &self.volume]);
        if !self.images.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(self.images.iter().map(String::as_str));
            docker_quiet(&args);
        }
    }
}

/// Poll `f` until it returns `Some`, or panic naming `what` with `context()`.
fn wait_for<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_deployment_runs_from_the_three_images_and_an_sdk_session_runs_bash_in_a_sandbox() {
    let started = Instant::now();
    // Prerequisites.
    let docker_ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !docker_ok && missing("a reachable Docker Engine") {
        return;
    }
    let uid = String::from_utf8_lossy(&run(Command::new("id").arg("-u")).stdout)
        .trim()
        .to_owned();
    if uid != "0" && missing("root (the image build sets file owners)") {
        return;
    }
    let sdk_ok = Command::new("python3")
        .args(["-c", "import anthropic"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !sdk_ok && missing("python3 with the anthropic SDK (scripts/setup.d/40-python.sh)") {
        return;
    }
    let executor = executor_path();
    let sandbox_image = test_image();
    for b in ["control-plane", "sandbox-agent", "vault-bridge"] {
        assert!(
            bin_dir().join(b).is_file(),
            "{} missing: cargo build -p control-plane -p sandbox-agent -p vault-bridge",
            bin_dir().join(b).display()
        );
    }
    let socket_gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .expect("/var/run/docker.sock");

    let id = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros()
    );
    let prefix = format!("airlock-itest-{id}");
    let mut d = Deployment {
        network: prefix.clone(),
        volume: format!("{prefix}-cp"),
        prefix,
        dir: tempfile::Builder::new()
            .prefix("airlock-images-")
            .tempdir()
            .unwrap(),
        containers: Vec::new(),
        images: Vec::new(),
        agent_id: None,
    };

    // 1. The images.
    let t = Instant::now();
    let tag = format!("itest-{id}");
    let out = run(Command::new("bash")
        .arg(root().join("packaging/images/build-daemon-images.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--executor")
        .arg(&executor)
        .args(["--tag", &tag, "--no-latest"]));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in listed.lines() {
        if let Some((_, r)) = line.split_once('=') {
            d.images.push(r.to_owned());
        }
    }
    assert!(
        out.status.success(),
        "build-daemon-images.sh failed ({}):\n{listed}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let image = |daemon: &str| -> String {
        listed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{daemon}=")))
            .unwrap_or_else(|| panic!("no {daemon} image in:\n{listed}"))
            .to_owned()
    };
    let (cp_image, vb_image, agent_image) = (
        image("control-plane"),
        image("vault-bridge"),
        image("sandbox-agent"),
    );
    assert_eq!(cp_image, format!("airlock-control-plane:{tag}"));
    eprintln!("images built: {:.1?}", t.elapsed());

    // What the images say about themselves.
    for (img, user, volume) in [
        (&cp_image, "10001:10001", "/var/lib/airlock"),
        (&vb_image, "10001:10001", "/var/lib/airlock-vault-bridge"),
        (&agent_image, "10001:10001", "/var/lib/airlock-agent"),
    ] {
        let cfg: Value = serde_json::from_str(&docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config}}",
            img,
        ]))
        .unwrap();
        assert_eq!(cfg["User"], user, "{img}: {cfg}");
        assert!(cfg["Volumes"].get(volume).is_some(), "{img}: {cfg}");
        assert!(
            cfg["Healthcheck"]["Test"].to_string().contains("/readyz")
                || cfg["Healthcheck"]["Test"]
                    .to_string()
                    .contains("/usr/lib/airlock/healthcheck"),
            "{img}: {cfg}"
        );
        for label in [
            "org.opencontainers.image.title",
            "org.opencontainers.image.version",
            "org.opencontainers.image.revision",
            "org.opencontainers.image.source",
        ] {
            assert!(
                cfg["Labels"][label].as_str().is_some_and(|v| !v.is_empty()),
                "{img} has no label {label}: {cfg}"
            );
        }
        // The shipped config passes check-config inside its image.
        let daemon = img
            .trim_start_matches("airlock-")
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            img,
            "--config",
            &format!("/etc/airlock/{daemon}.toml"),
            "check-config",
        ]);
    }

    // 2. Host directories (same path inside the containers) and configs:
    // the images' configs with only the host paths moved here.
    for sub in ["agent", "bridge", "run"] {
        let p = d.path(sub);
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(10001), Some(10001)).unwrap();
    }
    std::fs::create_dir(d.path("etc")).unwrap();
    let relocate = |daemon: &str| -> PathBuf {
        let shipped =
            std::fs::read_to_string(root().join(format!("packaging/images/daemon/{daemon}.toml")))
                .unwrap();
        let text = shipped
            .replace(
                "/var/lib/airlock-agent",
                &d.path("agent").display().to_string(),
            )
            .replace(
                "/var/lib/airlock-vault-bridge",
                &d.path("bridge").display().to_string(),
            )
            .replace(
                "/run/airlock-vault-bridge",
                &d.path("run").display().to_string(),
            )
            .replace(
                "\"airlock-sandbox:latest\"",
                &format!("\"{sandbox_image}\""),
            )
            .replace("\"airlock-sandbox:*\"", &format!("\"{sandbox_image}\""));
        let p = d.path(&format!("etc/{daemon}.toml"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        p
    };
    let vb_config = relocate("vault-bridge");
    let agent_config = relocate("sandbox-agent");
    let host_dir = d.dir.path().to_path_buf();
    let same_path = move |sub: &str| -> String {
        let p = host_dir.join(sub).display().to_string();
        format!("{p}:{p}")
    };

    // 3. The network; the model on its gateway address (host-local).
    let net = d.network.clone();
    docker(&["network", "create", "--label", "airlock.itest=images", &net]);
    let gateway: std::net::IpAddr = docker(&[
        "network",
        "inspect",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
        &net,
    ])
    .trim()
    .parse()
    .expect("the network's gateway address");
    let model = FakeModel::builder()
        .listen(std::net::SocketAddr::new(gateway, 0))
        .start(script)
        .await
        .unwrap();

    // 4. The control plane: its image's config, a named volume, the API on loopback.
    let t = Instant::now();
    let cp = d.name("control-plane");
    docker(&["volume", "create", &d.volume]);
    d.containers.push(cp.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &cp,
        "--network",
        &net,
        "--network-alias",
        "control-plane",
        "-p",
        "127.0.0.1::8080",
        "-v",
        &format!("{}:/var/lib/airlock", d.volume),
        "-e",
        &format!("ANTHROPIC_BASE_URL={}", model.base_url()),
        "-e",
        "ANTHROPIC_API_KEY=sk-images-test",
        &cp_image,
    ]);
    let cli = |args: &[&str]| -> String {
        let mut a = vec![
            "exec",
            cp.as_str(),
            "control-plane",
            "--config",
            "/etc/airlock/control-plane.toml",
        ];
        a.extend_from_slice(args);
        docker(&a)
    };
    wait_for(
        "the control plane's admin socket",
        Duration::from_secs(60),
        || d.all_logs(),
        || {
            let out = run(Command::new("docker").args([
                "exec",
                &cp,
                "control-plane",
                "--config",
                "/etc/airlock/control-plane.toml",
                "agents",
                "list",
                "--json",
            ]));
            out.status.success().then_some(())
        },
    );
    let api_addr: std::net::SocketAddr = docker(&["port", &cp, "8080/tcp"])
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(api_addr.ip().is_loopback(), "{api_addr}");
    let key =
        serde_json::from_str::<Value>(&cli(&["api-keys", "create", "--name", "itest", "--json"]))
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned();
    let api = Api::new(api_addr, &key);
    let env_id = api.create_environment("images").await.unwrap();
    eprintln!("control plane up: {:.1?}", t.elapsed());

    // 5. The vault-bridge: its data and runtime dirs at the same host paths.
    let t = Instant::now();
    let vb = d.name("vault-bridge");
    d.containers.push(vb.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &vb,
        "--network",
        &net,
        "-v",
        &same_path("bridge"),
        "-v",
        &same_path("run"),
        "-v",
        &format!("{}:/etc/airlock/vault-bridge.toml:ro", vb_config.display()),
        &vb_image,
    ]);
    let socket = d.path("run/agent.sock");
    let ca = d.path("bridge/egress-ca/ca.crt");
    wait_for(
        "the bridge's agent socket and egress CA (on the host)",
        Duration::from_secs(60),
        || d.all_logs(),
        || (std::fs::symlink_metadata(&socket).is_ok() && ca.is_file()).then_some(()),
    );
    let key_file = std::fs::metadata(d.path("bridge/credentials.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_file.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&key_file), 10001);
    eprintln!("vault-bridge up: {:.1?}", t.elapsed());

    // 6. Enroll the agent through its image, then run it with the Docker socket.
    let t = Instant::now();
    let join = serde_json::from_str::<Value>(&cli(&[
        "tokens",
        "create",
        "--environment",
        &env_id,
        "--json",
    ]))
    .unwrap()["join_string"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_mounts = [
        "-v".to_owned(),
        same_path("agent"),
        "-v".to_owned(),
        same_path("run"),
        "-v".to_owned(),
        format!(
            "{}:/etc/airlock/sandbox-agent.toml:ro",
            agent_config.display()
        ),
        // The entrypoint installs the executor where the (moved) config's
        // sandbox.executor_path says.
        "-e".to_owned(),
        format!(
            "AIRLOCK_EXECUTOR_INSTALL={}",
            d.path("agent/executor/airlock-executor").display()
        ),
    ];
    let mut enroll: Vec<String> = ["run", "--rm", "--network", &net]
        .iter()
        .map(|s| s.to_string())
        .collect();
    enroll.extend(agent_mounts.iter().cloned());
    enroll.extend(
        [
            agent_image.as_str(),
            "--config",
            "/etc/airlock/sandbox-agent.toml",
            "enroll",
            "--join",
            &join,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let enrolled = docker(&enroll.iter().map(String::as_str).collect::<Vec<_>>());
    let agent_id = enrolled
        .lines()
        .find_map(|l| l.strip_prefix("agent_id="))
        .unwrap_or_else(|| panic!("enroll printed no agent_id:\n{enrolled}"))
        .trim()
        .to_owned();
    d.agent_id = Some(agent_id.clone());
    let agent = d.name("sandbox-agent");
    d.containers.push(agent.clone());
    let gid = socket_gid.to_string();
    let mut run_agent: Vec<String> = [
        "run",
        "-d",
        "--name",
        &agent,
        "--network",
        &net,
        "--group-add",
        &gid,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_agent.extend(agent_mounts.iter().cloned());
    run_agent.push(agent_image.clone());
    docker(&run_agent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for(
        "the agent to connect to the control plane",
        Duration::from_secs(90),
        || d.all_logs(),
        || {
            cli(&["agents", "list", "--json"])
                .contains(&agent_id)
                .then_some(())
        },
    );
    // The executor the entrypoint installed on the host path.
    let installed = d.path("agent/executor/airlock-executor");
    assert!(installed.is_file(), "{}", d.all_logs());
    eprintln!("agent enrolled and connected: {:.1?}", t.elapsed());

    // 7. A session from the SDK.
    let t = Instant::now();
    let sdk = d.path("sdk.py");
    std::fs::write(&sdk, SDK_SCRIPT).unwrap();
    let mut child = Command::new("python3")
        .arg(&sdk)
        .arg(format!("http://{api_addr}"))
        .arg(&key)
        .arg(&env_id)
        .arg(PROMPT)
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let exited = testkit::try_eventually_blocking(
        "the SDK script to exit",
        Duration::from_secs(120),
        || child.try_wait().unwrap(),
    );
    if exited.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let py_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{py_out}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.all_logs()
    );
    let summary: Value = serde_json::from_str(py_out.trim()).unwrap();
    let types: Vec<&str> = summary["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for ty in ["agent.tool_use", "agent.tool_result", "agent.message"] {
        assert!(types.contains(&ty), "no {ty} streamed: {types:?}");
    }
    let sid = summary["session_id"].as_str().unwrap();
    let events = api.events(sid).await.unwrap();
    let tool_use = events
        .iter()
        .find(|e| e["type"] == "agent.tool_use" && e["name"] == "bash")
        .unwrap_or_else(|| panic!("no bash call: {events:#?}\n{}", d.all_logs()));
    assert_eq!(tool_use["input"]["command"], COMMAND, "{tool_use}");
    let result = events
        .iter()
        .find(|e| e["type"] == "agent.tool_result" && e["tool_use_id"] == tool_use["id"])
        .unwrap_or_else(|| panic!("no bash result: {events:#?}\n{}", d.all_logs()));
    assert_ne!(result["is_error"], true, "{result}");
    let text = content_text(result);
    for expected in [
        "uid=1000",
        "written in an image deployment",
        "egress-socket-mounted",
        "egress-ca-mounted",
        "proxy=http://127.0.0.1:3128",
        // The session allows no host: the bridge's egress proxy refuses.
        "connect: HTTP/1.1 403",
    ] {
        assert!(
            text.contains(expected),
            "the bash output lacks {expected:?}:\n{text}\n{}",
            d.all_logs()
        );
    }
    let idle = events
        .iter()
        .rev()
        .find(|e| e["type"] == "session.status_idle")
        .unwrap();
    assert_eq!(idle["stop_reason"]["type"], "end_turn", "{events:#?}");
    assert!(
        model.request_count() >= 2,
        "the model got {} requests",
        model.request_count()
    );
    eprintln!("SDK session: {:.1?}", t.elapsed());

    // The sandbox's CONNECT reached the bridge container.
    let vb_logs = d.logs(&vb);
    assert!(vb_logs.contains("egress socket open"), "{vb_logs}");
    assert!(
        vb_logs.contains("egress refused") && vb_logs.contains("host=example.invalid"),
        "{vb_logs}"
    );

    // 8. The HEALTHCHECK: /readyz of the ops listener the image config turns on.
    let t = Instant::now();
    for (c, daemon, port) in [
        (&cp, "control-plane", "9464"),
        (&vb, "vault-bridge", "9466"),
        (&agent, "sandbox-agent", "9465"),
    ] {
        let shipped =
            std::fs::read_to_string(root().join(format!("packaging/images/daemon/{daemon}.toml")))
                .unwrap();
        let check =
            run(Command::new("docker").args(["exec", c, "/usr/lib/airlock/healthcheck", port]));
        let said = String::from_utf8_lossy(&check.stdout).into_owned();
        if !shipped.contains("\n[ops]") {
            // No ops listener in this build's config: the check must say so.
            assert!(
                !check.status.success() && said.contains("nothing listens"),
                "{c}: {said}"
            );
            continue;
        }
        assert!(
            check.status.success(),
            "{c} /readyz: {said}\n{}",
            d.all_logs()
        );
        wait_for(
            &format!("{c} to be healthy"),
            Duration::from_secs(60),
            || {
                format!(
                    "{}\n{}",
                    docker(&["inspect", "--format", "{{json .State.Health}}", c]),
                    d.all_logs()
                )
            },
            || {
                (docker(&["inspect", "--format", "{{.State.Health.Status}}", c]).trim()
                    == "healthy")
                    .then_some(())
            },
        );
    }
    eprintln!("health checked: {:.1?}", t.elapsed());

    // 9. Stop: SIGTERM drains; every daemon exits 0.
    for c in [&agent, &vb, &cp] {
        docker(&["stop", "--time", "30", c]);
        let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", c]);
        assert_eq!(code.trim(), "0", "{c} exit code\n{}", d.logs(c));
    }
    drop(d);
    eprintln!("images deployment check: {:.1?}", started.elapsed());
}
