//! `sandbox-agent doctor` against real deployments, each broken for real:
//! a healthy one passes every check; UDP dropped by nftables in a network
//! namespace (QUIC fails, TCP works); a CONNECT proxy intercepting TLS with
//! another CA; a certificate not yet valid (what a wrong clock looks like);
//! Docker not listening; the sandbox image missing; the bridge's OpenBao
//! sealed. `--json` is parsed, exit codes checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeBackend, BridgeOptions};
use airlock_tests::deploy::{Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::doctor_support::{
    doctor, have, inspection_ca, install_future_certificate, is_root, require, AgentConfig, Bao,
    MitmProxy, NetNs,
};
use airlock_tests::sandbox::{executor_path, test_image};

/// A control plane and an enrolled (not running) agent.
fn deployment() -> (ControlPlane, Agent) {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-doctor").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    (cp, agent)
}

fn data_dir(agent: &Agent) -> std::path::PathBuf {
    agent.identity_dir().parent().unwrap().to_owned()
}

fn sandbox_toml(image: &str) -> String {
    format!(
        "executor_path = \"{}\"\ndefault_image = \"{image}\"\n",
        executor_path().display()
    )
}

const TUNNEL: &str = "quic_connect_timeout_seconds = 2\nconnect_timeout_seconds = 3\n";

#[test]
fn healthy_deployment_passes_every_check() {
    let (cp, agent) = deployment();
    let bridge = Bridge::start(BridgeOptions::default()).unwrap();
    let config = agent.config_path().with_file_name("doctor.toml");
    AgentConfig {
        data_dir: data_dir(&agent),
        sandbox: sandbox_toml(&test_image()),
        tunnel: TUNNEL.into(),
        extra: bridge.agent_toml(),
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    let run = doctor("sandbox-agent", &config, &[], None).unwrap();
    for name in [
        "config",
        "identity",
        "certificate",
        "dns",
        "udp",
        "tcp",
        "tls-interception",
        "clock",
        "docker",
        "image",
        "executor",
        "disk",
        "bridge",
    ] {
        assert_eq!(
            run.status(name),
            "pass",
            "{name}: {}\n{}",
            run.detail(name),
            run.stdout
        );
    }
    assert_eq!(run.status("proxy"), "skip", "{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["summary"]["fail"], 0);
    assert_eq!(run.json["summary"]["exit_code"], 0);
    assert!(
        run.detail("udp").starts_with("quic to 127.0.0.1:"),
        "{}",
        run.detail("udp")
    );
    assert!(
        run.detail("tcp").starts_with("tcp to 127.0.0.1:"),
        "{}",
        run.detail("tcp")
    );
    assert!(
        run.detail("clock").contains("in step"),
        "{}",
        run.detail("clock")
    );
    // The dials were real: the control plane saw this agent connect.
    assert!(
        cp.log().contains(agent.agent_id()),
        "control plane log:\n{}",
        cp.log()
    );
    // No container left behind.
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=airlock.agent_id=doctor"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());

    // The table: same checks, no colour when stdout is not a terminal.
    let out = std::process::Command::new(airlock_tests::deploy::binary("sandbox-agent").unwrap())
        .arg("--config")
        .arg(&config)
        .args(["doctor", "--no-container"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(!table.contains('\x1b'), "{table}");
    assert!(table.contains("PASS  udp"), "{table}");
    assert!(table.contains("SKIP  executor"), "{table}");
    assert!(table.contains("(exit 0)"), "{table}");
}

#[test]
fn udp_dropped_in_a_network_namespace_fails_quic_and_tcp_still_works() {
    if !require(
        is_root() && have("ip") && (have("nft") || have("iptables")),
        "root, ip and nft (or iptables) are needed to drop UDP in a network namespace",
    ) {
        return;
    }
    let ns = NetNs::create().unwrap();
    // The control plane listens on every address, its certificate names the veth address.
    let mut cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let text = std::fs::read_to_string(cp.config_path()).unwrap();
    let text = text
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", cp.tunnel_addr().port()),
            &format!("listen = \"0.0.0.0:{}\"", cp.tunnel_addr().port()),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", cp.enroll_addr().port()),
            &format!("listen = \"0.0.0.0:{}\"", cp.enroll_addr().port()),
        )
        .replace(
            "server_names = [\"localhost\", \"127.0.0.1\"]",
            &format!(
                "server_names = [\"localhost\", \"127.0.0.1\", \"{}\"]",
                ns.host_ip
            ),
        );
    std::fs::write(cp.config_path(), text).unwrap();
    cp.start().unwrap();
    let join = cp.join_string("env-doctor").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let config = agent.config_path().with_file_name("doctor.toml");
    let write = |transport: &str| {
        AgentConfig {
            data_dir: data_dir(&agent),
            sandbox: sandbox_toml(&test_image()),
            control_plane: format!(
                "address = \"{ip}:{}\"\nenroll_address = \"{ip}:{}\"\nserver_name = \"{ip}\"\n",
                cp.tunnel_addr().port(),
                cp.enroll_addr().port(),
                ip = ns.host_ip
            ),
            tunnel: format!("{TUNNEL}transport = \"{transport}\"\n"),
            ..Default::default()
        }
        .write(&config)
        .unwrap()
    };
    write("auto");
    // Before the rule: both paths work from inside the namespace.
    let run = doctor(
        "sandbox-agent",
        &config,
        &["--no-container"],
        Some(&ns.name),
    )
    .unwrap();
    assert_eq!(run.status("udp"), "pass", "{}", run.stdout);
    assert_eq!(run.status("tcp"), "pass", "{}", run.stdout);

    ns.drop_udp_to(cp.tunnel_addr().port()).unwrap();
    let run = doctor(
        "sandbox-agent",
        &config,
        &["--no-container"],
        Some(&ns.name),
    )
    .unwrap();
    assert_eq!(run.status("udp"), "warn", "{}", run.stdout);
    assert!(
        run.detail("udp").contains("falls back to TLS over TCP"),
        "{}",
        run.detail("udp")
    );
    assert!(run.fix("udp").contains("UDP"), "{}", run.fix("udp"));
    assert_eq!(run.status("tcp"), "pass", "{}", run.stdout);
    assert_eq!(run.status("tls-interception"), "pass", "{}", run.stdout);
    assert_eq!(run.status("clock"), "pass", "{}", run.stdout);
    assert_eq!(run.code, 0, "a warning alone exits 0: {}", run.stdout);
    let strict = doctor(
        "sandbox-agent",
        &config,
        &["--no-container", "--strict"],
        Some(&ns.name),
    )
    .unwrap();
    assert_eq!(strict.code, 1, "{}", strict.stdout);

    // QUIC only: the same drop is a failure.
    write("quic");
    let run = doctor(
        "sandbox-agent",
        &config,
        &["--no-container"],
        Some(&ns.name),
    )
    .unwrap();
    assert_eq!(run.status("udp"), "fail", "{}", run.stdout);
    assert_eq!(run.status("tcp"), "skip", "{}", run.stdout);
    assert_eq!(run.code, 1, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_intercepting_tls_is_named() {
    let (_cp, agent) = deployment();
    let (_, tls) =
        inspection_ca("Middlebox TLS Inspection CA", &["127.0.0.1", "localhost"]).unwrap();
    let mitm = MitmProxy::start(tls).await.unwrap();
    let config = agent.config_path().with_file_name("doctor.toml");
    AgentConfig {
        data_dir: data_dir(&agent),
        sandbox: sandbox_toml(&test_image()),
        tunnel: format!("{TUNNEL}proxy_url = \"{}\"\nno_proxy = \"\"\n", mitm.url()),
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    let run = tokio::task::spawn_blocking(move || {
        doctor("sandbox-agent", &config, &["--no-container"], None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(run.status("proxy"), "pass", "{}", run.stdout);
    assert_eq!(run.status("tls-interception"), "fail", "{}", run.stdout);
    let detail = run.detail("tls-interception");
    assert!(
        detail.starts_with("TLS is intercepted by")
            && detail.contains("Middlebox TLS Inspection CA"),
        "{detail}"
    );
    assert!(
        run.fix("tls-interception").contains("exempt"),
        "{}",
        run.fix("tls-interception")
    );
    assert_eq!(run.status("tcp"), "fail", "{}", run.stdout);
    // QUIC does not go through an HTTP proxy: it still works.
    assert_eq!(run.status("udp"), "pass", "{}", run.stdout);
    assert_eq!(run.code, 1, "{}", run.stdout);
}

#[test]
fn certificate_not_yet_valid_is_named_as_a_clock_problem() {
    let (cp, agent) = deployment();
    install_future_certificate(
        &cp.dir().join("data"),
        &agent.identity_dir(),
        Duration::from_secs(2 * 3600),
    )
    .unwrap();
    let config = agent.config_path().with_file_name("doctor.toml");
    AgentConfig {
        data_dir: data_dir(&agent),
        sandbox: sandbox_toml(&test_image()),
        tunnel: TUNNEL.into(),
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    let run = doctor("sandbox-agent", &config, &["--no-container"], None).unwrap();
    assert_eq!(run.status("identity"), "pass", "{}", run.stdout);
    assert_eq!(run.status("certificate"), "fail", "{}", run.stdout);
    assert!(
        run.detail("certificate").contains("not valid yet"),
        "{}",
        run.detail("certificate")
    );
    assert!(
        run.fix("certificate").contains("clock"),
        "{}",
        run.fix("certificate")
    );
    // The control plane refuses it on both paths.
    assert_eq!(run.status("udp"), "fail", "{}", run.stdout);
    assert_eq!(run.status("tcp"), "fail", "{}", run.stdout);
    assert_eq!(run.code, 1);
}

/// A config with no identity: the network checks are skipped, the host
/// checks still run.
fn host_only_config(dir: &std::path::Path, sandbox: &str) -> std::path::PathBuf {
    let config = dir.join("doctor.toml");
    AgentConfig {
        data_dir: dir.join("data"),
        sandbox: sandbox.into(),
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    config
}

#[test]
fn docker_not_listening_fails_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let config = host_only_config(
        dir.path(),
        &format!(
            "{}docker_host = \"unix://{}\"\n",
            sandbox_toml(&test_image()),
            sock.display()
        ),
    );
    let run = doctor("sandbox-agent", &config, &[], None).unwrap();
    assert_eq!(run.status("identity"), "fail", "{}", run.stdout);
    assert!(
        run.fix("identity").contains("sandbox-agent enroll"),
        "{}",
        run.fix("identity")
    );
    assert_eq!(run.status("udp"), "skip", "{}", run.stdout);
    assert_eq!(run.status("docker"), "fail", "{}", run.stdout);
    assert!(
        run.detail("docker").contains(&sock.display().to_string()),
        "{}",
        run.detail("docker")
    );
    assert!(
        run.fix("docker").contains("systemctl start docker"),
        "{}",
        run.fix("docker")
    );
    assert_eq!(run.status("image"), "skip", "{}", run.stdout);
    assert_eq!(run.status("executor"), "skip", "{}", run.stdout);
    assert_eq!(run.code, 1);
}

#[test]
fn missing_image_fails_and_the_executor_check_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = host_only_config(
        dir.path(),
        &sandbox_toml("airlock-doctor-no-such-image:nope"),
    );
    let run = doctor("sandbox-agent", &config, &[], None).unwrap();
    assert_eq!(run.status("docker"), "pass", "{}", run.stdout);
    assert_eq!(run.status("image"), "fail", "{}", run.stdout);
    assert!(
        run.detail("image")
            .contains("airlock-doctor-no-such-image:nope"),
        "{}",
        run.detail("image")
    );
    assert!(
        run.fix("image").contains("docker pull"),
        "{}",
        run.fix("image")
    );
    assert_eq!(run.status("executor"), "skip", "{}", run.stdout);
    assert_eq!(run.code, 1);
}

#[test]
fn bridge_with_a_sealed_backend_fails_then_a_dead_bridge_fails() {
    let Some(bin) = Bao::bin() else {
        require(
            false,
            "AIRLOCK_BAO_BIN (scripts/setup.d/45-openbao.sh) is needed for the sealed-backend test",
        );
        return;
    };
    let bao = Bao::start(&bin).unwrap();
    let mut bridge = Bridge::start(BridgeOptions {
        backend: BridgeBackend::Openbao {
            address: bao.address(),
            token: "root".into(),
            mount: None,
        },
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("doctor.toml");
    AgentConfig {
        data_dir: dir.path().join("data"),
        sandbox: sandbox_toml(&test_image()),
        extra: bridge.agent_toml(),
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    let run = doctor("sandbox-agent", &config, &["--no-container"], None).unwrap();
    assert_eq!(run.status("bridge"), "pass", "{}", run.stdout);

    bao.seal().unwrap();
    let run = doctor("sandbox-agent", &config, &["--no-container"], None).unwrap();
    assert_eq!(run.status("bridge"), "fail", "{}", run.stdout);
    assert!(
        run.detail("bridge").contains("unhealthy"),
        "{}",
        run.detail("bridge")
    );
    assert!(
        run.fix("bridge").contains("unseal"),
        "{}",
        run.fix("bridge")
    );

    bridge.kill9().unwrap();
    let run = doctor("sandbox-agent", &config, &["--no-container"], None).unwrap();
    assert_eq!(run.status("bridge"), "fail", "{}", run.stdout);
    assert!(
        run.detail("bridge").contains("does not answer"),
        "{}",
        run.detail("bridge")
    );
    assert_eq!(run.code, 1);
}
