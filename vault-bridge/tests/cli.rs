//! The real `vault-bridge` binary: check-config exit codes, init, the
//! credentials commands on the file backend (values read from a file or
//! stdin, never printed), a systemd-credential key, and serve's start and
//! graceful stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CANARY: &str = "canary-cli-7f3a9b";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vault-bridge"));
    c.env_remove("AIRLOCK_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info");
    c
}

fn run(config: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn file_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("vault-bridge.toml");
    std::fs::write(
        &p,
        format!(
            "[bridge]\ndata_dir = \"{d}\"\nsocket_path = \"{d}/agent.sock\"\n[backend]\ntype = \"file\"\n[backend.file]\n{extra}",
            d = dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn check_config_exits_0_or_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = file_config(dir.path(), "");
    let o = run(&good, &["check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("config ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://127.0.0.1:8200\"\nauth = \"kerberos\"\n").unwrap();
    let o = run(&bad, &["check-config"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("backend.openbao.auth"),
        "{}",
        text(&o)
    );

    let o = run(&dir.path().join("missing.toml"), &["check-config"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
}

#[test]
fn credentials_set_list_delete_never_show_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "create_if_missing = false\n");
    // Without init and create_if_missing = false: a clear error.
    let o = run(&config, &["credentials", "list"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("credentials.key"),
        "{}",
        text(&o)
    );

    let o = run(&config, &["init"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key = dir.path().join("state/credentials.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = run(&config, &["init"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "a second init must refuse: {}",
        text(&o)
    );

    // From a file (trailing newline dropped) ...
    let value = dir.path().join("token.txt");
    std::fs::write(&value, format!("{CANARY}\n")).unwrap();
    let o = run(
        &config,
        &[
            "credentials",
            "set",
            "vcrd_git1",
            "--vault",
            "vlt_a1",
            "--field",
            "token",
            "--from-file",
            value.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains(CANARY), "{}", text(&o));

    // ... and from stdin, a second field of the same credential.
    let mut child = bin()
        .arg("--config")
        .arg(&config)
        .args([
            "credentials",
            "set",
            "vcrd_git1",
            "--vault",
            "vlt_a1",
            "--field",
            "refresh_token",
            "--from-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{CANARY}-refresh").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let o = run(&config, &["credentials", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "vlt_a1\tvcrd_git1\trefresh_token,token\n",
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains(CANARY));

    // Nothing on disk holds the value in clear.
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    }

    // Bad input: an unknown field, a bad id, an empty value.
    let o = run(
        &config,
        &[
            "credentials",
            "set",
            "vcrd_x",
            "--vault",
            "vlt_a1",
            "--field",
            "password",
            "--from-file",
            value.to_str().unwrap(),
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(
        &config,
        &[
            "credentials",
            "set",
            "cred_x",
            "--vault",
            "vlt_a1",
            "--from-file",
            value.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cred_x"),
        "{}",
        text(&o)
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let o = run(
        &config,
        &[
            "credentials",
            "set",
            "vcrd_x",
            "--vault",
            "vlt_a1",
            "--from-file",
            empty.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is empty"),
        "{}",
        text(&o)
    );

    let o = run(
        &config,
        &["credentials", "delete", "vcrd_git1", "--vault", "vlt_a1"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&config, &["credentials", "list"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "{}", text(&o));
    let o = run(
        &config,
        &["credentials", "delete", "vcrd_git1", "--vault", "vlt_a1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vcrd_git1"),
        "{}",
        text(&o)
    );

    // A key file others can read: refused, naming path and mode.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run(&config, &["credentials", "list"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&key.display().to_string()) && err.contains("0640"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_key_can_be_a_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("vault-bridge-key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let config = file_config(dir.path(), "key_credential = \"vault-bridge-key\"\n");
    let value = dir.path().join("v");
    std::fs::write(&value, CANARY).unwrap();
    let set = |with_dir: bool| {
        let mut c = bin();
        c.arg("--config").arg(&config).args([
            "credentials",
            "set",
            "vcrd_1",
            "--vault",
            "vlt_1",
            "--from-file",
            value.to_str().unwrap(),
        ]);
        if with_dir {
            c.env("CREDENTIALS_DIRECTORY", &creds);
        }
        c.output().unwrap()
    };
    let o = set(false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("CREDENTIALS_DIRECTORY"),
        "{}",
        text(&o)
    );
    let o = set(true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The bridge never writes a key of its own in this mode.
    assert!(!dir.path().join("state/credentials.key").exists());
}

/// Wait for a line containing `needle` on the child's stderr.
fn wait_for_line(r: &mut impl BufRead, needle: &str, limit: Duration) -> String {
    let started = Instant::now();
    let mut seen = String::new();
    let mut line = String::new();
    while started.elapsed() < limit {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw:\n{seen}");
}

#[test]
fn serve_starts_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "");
    let mut child = bin()
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    wait_for_line(&mut err, "vault-bridge ready", Duration::from_secs(20));
    // First start made the key (0600) and an empty store.
    let key = dir.path().join("state/credentials.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let seen = wait_for_line(&mut err, "vault-bridge stopped", Duration::from_secs(15));
    assert!(seen.contains(r#""graceful":true"#), "{seen}");
    let status = testkit::eventually_blocking("serve to exit", Duration::from_secs(15), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_refuses_a_store_written_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), "");
    assert_eq!(run(&config, &["init"]).status.code(), Some(0));
    let key = dir.path().join("state/credentials.key");
    std::fs::write(&key, format!("{}\n", "cd".repeat(32))).unwrap();
    let before = std::fs::read(dir.path().join("state/credentials.enc")).unwrap();
    let o = run(&config, &["serve"]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another key"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(dir.path().join("state/credentials.enc")).unwrap(),
        before
    );
}

#[test]
fn serve_retries_an_unreachable_openbao_and_still_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("bao.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\nrequest_timeout_seconds = 1\n",
            token.display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let seen = wait_for_line(&mut err, "retrying", Duration::from_secs(20));
    assert!(
        seen.contains("unreachable") && seen.contains(&port.to_string()),
        "{seen}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for_line(
        &mut err,
        "stopped before its backend opened",
        Duration::from_secs(15),
    );
    let status = testkit::eventually_blocking("serve to exit", Duration::from_secs(15), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}
