//! `vault-bridge doctor` against real bridges, broken for real: the file
//! backend healthy, then its key readable by others; OpenBao healthy, then
//! sealed, then at a dead address; the agent socket with nothing serving.
//! `--json` is parsed, exit codes checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use airlock_tests::bridge::{Bridge, BridgeBackend, BridgeOptions};
use airlock_tests::doctor_support::{doctor, require, Bao};

#[test]
fn file_backend_healthy_then_key_mode_too_open() {
    let mut bridge = Bridge::start(BridgeOptions::default()).unwrap();
    let run = doctor("vault-bridge", bridge.config_path(), &[], None).unwrap();
    for name in ["config", "backend", "socket", "egress-ca"] {
        assert_eq!(
            run.status(name),
            "pass",
            "{name}: {}\n{}",
            run.detail(name),
            run.stdout
        );
    }
    assert_eq!(run.status("upstream-ca"), "skip", "{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stdout);

    // Nothing serving: a warning, not a failure (doctor may run before serve).
    bridge.kill9().unwrap();
    let _ = std::fs::remove_file(bridge.socket_path());
    let run = doctor("vault-bridge", bridge.config_path(), &[], None).unwrap();
    assert_eq!(run.status("socket"), "warn", "{}", run.stdout);
    assert!(
        run.fix("socket").contains("start the bridge"),
        "{}",
        run.fix("socket")
    );
    assert_eq!(run.code, 0, "{}", run.stdout);

    // The key readable by the group: the bridge refuses it, doctor says chmod.
    let key = std::fs::read_dir(bridge.data_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "key"))
        .expect("the file backend's key in the data dir");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = doctor("vault-bridge", bridge.config_path(), &[], None).unwrap();
    assert_eq!(run.status("backend"), "fail", "{}", run.stdout);
    assert!(
        run.fix("backend").contains("chmod 600"),
        "{}",
        run.fix("backend")
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
}

#[test]
fn openbao_healthy_then_sealed_then_unreachable() {
    let Some(bin) = Bao::bin() else {
        require(
            false,
            "AIRLOCK_BAO_BIN (scripts/setup.d/45-openbao.sh) is needed for the OpenBao doctor test",
        );
        return;
    };
    let bao = Bao::start(&bin).unwrap();
    let bridge = Bridge::start(BridgeOptions {
        backend: BridgeBackend::Openbao {
            address: bao.address(),
            token: "root".into(),
            mount: None,
        },
        ..Default::default()
    })
    .unwrap();
    let run = doctor("vault-bridge", bridge.config_path(), &[], None).unwrap();
    assert_eq!(run.status("backend"), "pass", "{}", run.stdout);
    assert!(
        run.detail("backend").contains("unsealed"),
        "{}",
        run.detail("backend")
    );
    assert_eq!(run.status("socket"), "pass", "{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stdout);

    bao.seal().unwrap();
    let run = doctor("vault-bridge", bridge.config_path(), &[], None).unwrap();
    assert_eq!(run.status("backend"), "fail", "{}", run.stdout);
    assert!(
        run.detail("backend").contains("sealed"),
        "{}",
        run.detail("backend")
    );
    assert!(
        run.fix("backend").contains("operator unseal"),
        "{}",
        run.fix("backend")
    );
    // The running bridge says the same on its socket.
    assert_eq!(run.status("socket"), "fail", "{}", run.stdout);
    assert_eq!(run.code, 1);

    // A dead address.
    drop(bao);
    let text = std::fs::read_to_string(bridge.config_path()).unwrap();
    let dead = bridge.dir().join("dead.toml");
    let port = airlock_tests::deploy::free_port();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("address = ") {
                format!("address = \"http://127.0.0.1:{port}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&dead, text).unwrap();
    let run = doctor("vault-bridge", &dead, &[], None).unwrap();
    assert_eq!(run.status("backend"), "fail", "{}", run.stdout);
    assert!(
        run.detail("backend").contains("unreachable"),
        "{}",
        run.detail("backend")
    );
    assert!(
        run.fix("backend").contains("backend.openbao.address"),
        "{}",
        run.fix("backend")
    );
    assert_eq!(run.code, 1);
}

#[test]
fn bad_config_exits_64_before_any_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[bridge]\nno_such_key = 1\n").unwrap();
    let out = std::process::Command::new(airlock_tests::deploy::binary("vault-bridge").unwrap())
        .arg("--config")
        .arg(&config)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &config,
        "data_dir = \"/tmp\"\n[tunnel]\ntransport = \"udp\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(airlock_tests::deploy::binary("sandbox-agent").unwrap())
        .arg("--config")
        .arg(&config)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tunnel.transport"));
}
