//! The Debian packages, built and installed for real (docs/packages.md).
//!
//! `packaging/deb/build-debs.sh --profile dev --no-build` packages the
//! workspace's debug binaries and the static executor with cargo-deb; the
//! three `.deb`s are installed with dpkg into a container of the locally
//! built Debian bookworm sandbox image (`AIRLOCK_SANDBOX_IMAGE`, run as root)
//! and checked there: system users and groups, owners and modes of config
//! and state, conffiles as dpkg lists them, the vault-bridge config naming
//! airlock-agent's uid, the binaries and `check-config` as each daemon's
//! user, a live vault-bridge refusing every peer but airlock-agent, a
//! reinstall keeping local edits, then `dpkg -r` and `dpkg -P`; and the
//! bridge's package installed before the agent's in a fresh container. The unit
//! files as installed are checked on the host with `systemd-analyze verify
//! --root` (any output fails) and their `systemd-analyze security` exposure
//! is printed and bounded.
//!
//! Needs cargo-deb (scripts/setup.d/65-packages.sh), Docker, systemd-analyze
//! and the images of scripts/setup.d/30-images.sh; without them the test is
//! skipped, or fails when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::deploy::{bin_dir, binary};

const PACKAGES: [&str; 3] = [
    "airlock-control-plane",
    "airlock-sandbox-agent",
    "airlock-vault-bridge",
];

const UNITS: [&str; 4] = [
    "airlock-control-plane.service",
    "airlock-sandbox-agent.service",
    "airlock-sandbox-agent-audit-ship.service",
    "airlock-vault-bridge.service",
];

/// Highest `systemd-analyze security` exposure accepted for any unit (the
/// measured values are in docs/packages.md; "OK" ends at 3.9 in systemd).
const MAX_EXPOSURE: f64 = 2.0;

/// Connects to the vault-bridge's agent socket as the calling user and
/// says hello; prints `connect-error <errno>` or `reply <first frame>`.
const PROBE: &str = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-error", e.errno)
    sys.exit(0)
body = json.dumps({"type": "hello", "min_version": 1, "max_version": 1,
                   "software_version": "packages-test"}).encode()
try:
    s.sendall(struct.pack(">I", len(body) + 1) + b"\x01" + body)
except OSError:
    pass
s.settimeout(10)
buf = b""
while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
print("reply", buf[5:].decode(errors="replace"))
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails under `CI`, else says why the test is skipped.
fn unavailable(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("packages test cannot run: {what}");
    }
    eprintln!("SKIPPED: {what}");
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything the test needs, or None (after `unavailable`).
fn prerequisites() -> Option<(PathBuf, String)> {
    for (cmd, args, fix) in [
        (
            "cargo",
            &["deb", "--version"][..],
            "cargo-deb missing: source scripts/setup.d/65-packages.sh",
        ),
        ("docker", &["version"][..], "docker is not reachable"),
        (
            "systemd-analyze",
            &["--version"][..],
            "systemd-analyze missing (Debian package systemd)",
        ),
        (
            "file",
            &["--version"][..],
            "file missing (Debian package file)",
        ),
    ] {
        if !runs(cmd, args) {
            unavailable(fix);
            return None;
        }
    }
    for b in ["control-plane", "sandbox-agent", "vault-bridge"] {
        if let Err(e) = binary(b) {
            unavailable(&e.to_string());
            return None;
        }
    }
    let executor = std::env::var_os("AIRLOCK_EXECUTOR_PATH").map(PathBuf::from);
    let Some(executor) = executor.filter(|p| p.is_file()) else {
        unavailable("AIRLOCK_EXECUTOR_PATH (the static executor) is not set: source scripts/setup.d/30-images.sh");
        return None;
    };
    let Some(image) = std::env::var("AIRLOCK_SANDBOX_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
    else {
        unavailable("AIRLOCK_SANDBOX_IMAGE (the Debian bookworm image) is not set: source scripts/setup.d/30-images.sh");
        return None;
    };
    Some((executor, image))
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A container of the Debian image, removed on drop.
struct Debian {
    name: String,
}

impl Debian {
    fn start(image: &str, debs: &Path) -> Self {
        let name = format!("airlock-packages-test-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let out = output(Command::new("docker").args([
            "run",
            "-d",
            "--rm",
            // An init that reaps: the bridge is started and stopped in it.
            "--init",
            "--user",
            "0",
            "--network",
            "none",
            "--name",
            &name,
            "-v",
            &format!("{}:/debs:ro", debs.display()),
            "--entrypoint",
            "sleep",
            image,
            "infinity",
        ]));
        assert!(out.status.success(), "docker run: {}", text(&out.stderr));
        Self { name }
    }

    /// Run `script` with sh in the container (stdin: `input`).
    fn sh_with(&self, script: &str, input: Option<&str>) -> Output {
        let mut cmd = Command::new("docker");
        cmd.arg("exec");
        if input.is_some() {
            cmd.arg("-i");
        }
        cmd.args([&self.name, "sh", "-c", script])
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = input {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn sh(&self, script: &str) -> Output {
        self.sh_with(script, None)
    }

    /// Run `script`; it must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Run `script`; it must fail.
    fn fails(&self, script: &str) {
        let out = self.sh(script);
        assert!(
            !out.status.success(),
            "`{script}` succeeded but must not:\n{}",
            text(&out.stdout)
        );
    }

    /// `path -> "mode user group"`, for each path (absent: "absent").
    fn stat(&self, path: &str) -> String {
        self.ok(&format!(
            "stat -c '%a %U %G' {path} 2>/dev/null || echo absent"
        ))
        .trim()
        .to_owned()
    }
}

impl Drop for Debian {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Build the three packages from the debug binaries; their paths.
fn build_debs(executor: &Path, out: &Path, tmp: &Path) -> Vec<PathBuf> {
    let started = Instant::now();
    let result = output(
        Command::new(root().join("packaging/deb/build-debs.sh"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(out)
            .env("AIRLOCK_BIN_DIR", bin_dir())
            .env("AIRLOCK_EXECUTOR_PATH", executor)
            .env("TMPDIR", tmp),
    );
    assert!(
        result.status.success(),
        "build-debs.sh failed:\n{}{}",
        text(&result.stdout),
        text(&result.stderr)
    );
    eprintln!("packages: built 3 .debs in {:.1?}", started.elapsed());
    let version = env!("CARGO_PKG_VERSION");
    PACKAGES
        .iter()
        .map(|p| {
            let deb = out.join(format!("{p}_{version}-1_amd64.deb"));
            assert!(deb.is_file(), "{} missing", deb.display());
            deb
        })
        .collect()
}

fn deb_field(deb: &Path, field: &str) -> String {
    let out = output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field));
    assert!(out.status.success(), "dpkg-deb -f: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// The metadata of the built packages, before any install.
fn check_control_fields(debs: &[PathBuf]) {
    for deb in debs {
        let depends = deb_field(deb, "Depends");
        assert!(
            depends.contains("adduser"),
            "{}: Depends {depends}",
            deb.display()
        );
        assert!(
            depends.contains("libc6"),
            "{}: Depends {depends}",
            deb.display()
        );
    }
    let recommends = deb_field(&debs[1], "Recommends");
    assert!(
        recommends.contains("docker.io"),
        "agent Recommends: {recommends}"
    );
    let contents = output(Command::new("dpkg-deb").arg("-c").arg(&debs[1]));
    assert!(
        text(&contents.stdout).contains("./usr/lib/airlock/airlock-executor"),
        "the agent package has no executor"
    );
}

fn check_users(c: &Debian) {
    for (user, home) in [
        ("airlock", "/var/lib/airlock"),
        ("airlock-agent", "/var/lib/airlock-agent"),
        ("airlock-vault-bridge", "/var/lib/airlock-vault-bridge"),
    ] {
        let entry = c.ok(&format!("getent passwd {user}"));
        let fields: Vec<&str> = entry.trim().split(':').collect();
        assert_eq!(fields.len(), 7, "passwd entry {entry}");
        let uid: u32 = fields[2].parse().unwrap();
        assert!(uid < 1000, "{user} is not a system user: uid {uid}");
        assert_eq!(fields[5], home, "{user} home");
        assert_eq!(fields[6], "/usr/sbin/nologin", "{user} shell");
    }
    let groups = |u: &str| -> BTreeSet<String> {
        c.ok(&format!("id -nG {u}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let agent = groups("airlock-agent");
    for g in ["airlock-agent", "docker", "airlock-vault-bridge"] {
        assert!(agent.contains(g), "airlock-agent not in {g}: {agent:?}");
    }
    assert_eq!(groups("airlock"), BTreeSet::from(["airlock".to_owned()]));
    assert_eq!(
        groups("airlock-vault-bridge"),
        BTreeSet::from(["airlock-vault-bridge".to_owned()])
    );
}

fn check_modes(c: &Debian) {
    let expected = [
        ("/etc/airlock", "755 root root"),
        ("/etc/airlock/control-plane.toml", "640 root airlock"),
        ("/etc/airlock/control-plane.env", "640 root airlock"),
        ("/etc/airlock/sandbox-agent.toml", "640 root airlock-agent"),
        ("/etc/airlock/sandbox-agent.env", "640 root airlock-agent"),
        (
            "/etc/airlock/vault-bridge.toml",
            "640 root airlock-vault-bridge",
        ),
        ("/var/lib/airlock", "700 airlock airlock"),
        ("/var/lib/airlock-agent", "700 airlock-agent airlock-agent"),
        (
            "/var/lib/airlock-vault-bridge",
            "700 airlock-vault-bridge airlock-vault-bridge",
        ),
        ("/usr/bin/control-plane", "755 root root"),
        ("/usr/bin/sandbox-agent", "755 root root"),
        ("/usr/bin/vault-bridge", "755 root root"),
        ("/usr/lib/airlock/airlock-executor", "755 root root"),
        (
            "/usr/lib/systemd/system/airlock-control-plane.service",
            "644 root root",
        ),
        (
            "/usr/lib/systemd/system/airlock-sandbox-agent.service",
            "644 root root",
        ),
        (
            "/usr/lib/systemd/system/airlock-sandbox-agent-audit-ship.service",
            "644 root root",
        ),
        (
            "/usr/lib/systemd/system/airlock-vault-bridge.service",
            "644 root root",
        ),
        (
            "/usr/share/doc/airlock-control-plane/packages.md",
            "644 root root",
        ),
        (
            "/usr/share/doc/airlock-vault-bridge/credentials.md",
            "644 root root",
        ),
        (
            "/usr/share/doc/airlock-sandbox-agent/audit.md",
            "644 root root",
        ),
    ];
    let mut wrong = vec![];
    for (path, want) in expected {
        let got = c.stat(path);
        if got != want {
            wrong.push(format!("{path}: {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "owners/modes:\n{}", wrong.join("\n"));
}

fn conffiles(c: &Debian, package: &str) -> BTreeSet<String> {
    c.ok(&format!("dpkg-query -W -f='${{Conffiles}}' {package}"))
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn check_conffiles(c: &Debian) {
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        conffiles(c, "airlock-control-plane"),
        set(&[
            "/etc/airlock/control-plane.toml",
            "/etc/airlock/control-plane.env"
        ])
    );
    assert_eq!(
        conffiles(c, "airlock-sandbox-agent"),
        set(&[
            "/etc/airlock/sandbox-agent.toml",
            "/etc/airlock/sandbox-agent.env"
        ])
    );
    // Written by postinst with this host's uid of airlock-agent: not a conffile.
    assert_eq!(conffiles(c, "airlock-vault-bridge"), set(&[]));
    let uid = c.ok("id -u airlock-agent").trim().to_owned();
    let lines = c.ok("grep '^allowed_peer_uids' /etc/airlock/vault-bridge.toml");
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        lines.starts_with(&format!("allowed_peer_uids = [{uid}]")),
        "vault-bridge.toml: {lines} (airlock-agent is {uid})"
    );
}

fn check_binaries(c: &Debian) {
    let version = env!("CARGO_PKG_VERSION");
    for b in ["control-plane", "sandbox-agent", "vault-bridge"] {
        let v = c.ok(&format!("{b} --version"));
        assert_eq!(v.trim(), format!("{b} {version}"));
    }
    // The installed examples are valid, and readable by the daemon's user.
    for (user, bin, config, data_dir) in [
        (
            "airlock",
            "control-plane",
            "control-plane.toml",
            "/var/lib/airlock",
        ),
        (
            "airlock-agent",
            "sandbox-agent",
            "sandbox-agent.toml",
            "/var/lib/airlock-agent",
        ),
        (
            "airlock-vault-bridge",
            "vault-bridge",
            "vault-bridge.toml",
            "/var/lib/airlock-vault-bridge",
        ),
    ] {
        let out = c.ok(&format!(
            "runuser -u {user} -- {bin} --config /etc/airlock/{config} check-config"
        ));
        assert!(
            out.starts_with(&format!("config ok: data_dir={data_dir}")),
            "{bin} check-config: {out}"
        );
    }
    // ... and by nobody else's (the agent's docker group makes it
    // root-equivalent anyway; the bridge's config is readable by its group,
    // which airlock-agent is in: docs/packages.md).
    c.fails("runuser -u airlock-agent -- cat /etc/airlock/control-plane.toml");
    c.fails("runuser -u airlock -- cat /etc/airlock/sandbox-agent.toml");
    c.fails("runuser -u airlock -- cat /etc/airlock/vault-bridge.toml");
    c.fails("runuser -u nobody -- cat /etc/airlock/control-plane.env");
    c.fails("runuser -u nobody -- ls /var/lib/airlock-vault-bridge");
    // The executor is bind-mounted into images without libc: static.
    let ldd = c.sh("ldd /usr/lib/airlock/airlock-executor");
    let said = text(&ldd.stdout) + &text(&ldd.stderr);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "executor: {said}"
    );
}

/// The bridge as its unit runs it (its user, RuntimeDirectory= 0750):
/// airlock-agent gets through, a member of the bridge's group with another
/// uid is refused by the bridge, anyone else by the directory's mode.
fn check_bridge_socket(c: &Debian) {
    c.ok("install -d -o airlock-vault-bridge -g airlock-vault-bridge -m 0750 /run/airlock-vault-bridge");
    c.ok(
        "setpriv --reuid=airlock-vault-bridge --regid=airlock-vault-bridge --init-groups \
          vault-bridge --config /etc/airlock/vault-bridge.toml serve >/tmp/bridge.log 2>&1 & \
          echo $! >/tmp/bridge.pid",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .sh("test -S /run/airlock-vault-bridge/agent.sock")
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "the bridge did not make its socket:\n{}",
            c.ok("cat /tmp/bridge.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok("useradd --system --no-create-home --shell /usr/sbin/nologin intruder && adduser --quiet intruder airlock-vault-bridge");
    let probe = |user: &str| -> String {
        let out = c.sh_with(
            &format!("runuser -u {user} -- python3 - /run/airlock-vault-bridge/agent.sock"),
            Some(PROBE),
        );
        assert!(
            out.status.success(),
            "probe as {user}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    };
    let agent = probe("airlock-agent");
    assert!(
        agent.contains("\"hello_accepted\""),
        "airlock-agent: {agent}"
    );
    let intruder = probe("intruder");
    assert!(
        intruder.contains("\"peer_not_allowed\""),
        "intruder: {intruder}"
    );
    let nobody = probe("nobody");
    assert_eq!(nobody, "connect-error 13", "nobody (EACCES expected)");
    c.ok("kill -TERM $(cat /tmp/bridge.pid)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .sh("kill -0 $(cat /tmp/bridge.pid) 2>/dev/null")
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the bridge did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok("userdel intruder");
}

/// Reinstalling (what an upgrade does to the maintainer scripts) keeps
/// local edits, owners and modes, and does not rewrite the bridge's config.
fn check_reinstall(c: &Debian) {
    c.ok("echo '# local edit' >>/etc/airlock/control-plane.toml && echo '# local edit' >>/etc/airlock/vault-bridge.toml");
    let before = c.ok("md5sum /etc/airlock/*.toml");
    let out = c.ok("dpkg -i /debs/*.deb 2>&1");
    assert!(
        !out.contains("Configuration file"),
        "dpkg asked about a conffile:\n{out}"
    );
    assert_eq!(
        c.ok("md5sum /etc/airlock/*.toml"),
        before,
        "reinstall changed a config"
    );
    check_modes(c);
    check_conffiles(c);
}

/// The installed package files (and passwd/group) out of the container,
/// under the host's systemd units: a root for `systemd-analyze --root`.
fn installed_tree(c: &Debian, dir: &Path) {
    let list = c.ok(&format!(
        "dpkg-query -L {} | while read -r f; do [ -f \"$f\" ] && echo \"$f\"; done; echo /etc/passwd; echo /etc/group",
        PACKAGES.join(" ")
    ));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".files"), &list).unwrap();
    let tar = output(Command::new("sh").arg("-c").arg(format!(
        "docker exec -i {} tar -cf - -T - <{} | tar -xf - -C {}",
        c.name,
        dir.join(".files").display(),
        dir.display()
    )));
    assert!(
        tar.status.success(),
        "copying the tree: {}",
        text(&tar.stderr)
    );
}

/// systemd's own units (targets, sockets, docker.service when the host has
/// one) under `<root>/lib`, so that they never shadow the packaged ones.
fn copy_host_units(dir: &Path) {
    let dest = dir.join("lib/systemd");
    std::fs::create_dir_all(&dest).unwrap();
    let out = output(
        Command::new("cp")
            .arg("-r")
            .arg("/usr/lib/systemd/system")
            .arg(&dest),
    );
    assert!(out.status.success(), "cp host units: {}", text(&out.stderr));
}

fn verify(root: &Path, unit: &str) -> Output {
    output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    )
}

fn check_units(root: &Path) {
    for unit in UNITS {
        let out = verify(root, unit);
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit} ({}):\n{said}",
            out.status
        );
    }
    // The check is real: without the binary, verify fails.
    let bin = root.join("usr/bin/vault-bridge");
    let aside = root.join("usr/bin/vault-bridge.aside");
    std::fs::rename(&bin, &aside).unwrap();
    let out = verify(root, "airlock-vault-bridge.service");
    std::fs::rename(&aside, &bin).unwrap();
    assert!(
        !out.status.success() && text(&out.stderr).contains("/usr/bin/vault-bridge"),
        "verify passed with the binary missing: {}",
        text(&out.stderr)
    );

    eprintln!("packages: systemd-analyze security --offline=true --root=<installed tree> <unit>:");
    for unit in UNITS {
        let out = output(
            Command::new("systemd-analyze")
                .args(["security", "--offline=true"])
                .arg(format!("--root={}", root.display()))
                .arg(unit),
        );
        let said = text(&out.stdout);
        let line = said
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("security {unit}: {said}{}", text(&out.stderr)));
        let score: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score in {line:?}"));
        eprintln!("packages:   {unit:<45} {score:.1}  ({})", line.trim());
        assert!(
            score <= MAX_EXPOSURE,
            "{unit}: exposure {score} > {MAX_EXPOSURE}"
        );
    }
}

fn check_remove_and_purge(c: &Debian) {
    let pkgs = PACKAGES.join(" ");
    c.ok(&format!("dpkg -r {pkgs}"));
    for b in [
        "/usr/bin/control-plane",
        "/usr/bin/sandbox-agent",
        "/usr/bin/vault-bridge",
        "/usr/lib/airlock/airlock-executor",
    ] {
        assert_eq!(c.stat(b), "absent", "{b} after dpkg -r");
    }
    // Removed, not purged: configs, state and statoverrides stay.
    let status = c.ok(&format!(
        "dpkg-query -W -f='${{db:Status-Abbrev}}\\n' {pkgs}"
    ));
    assert_eq!(
        status.split_whitespace().collect::<Vec<_>>(),
        ["rc", "rc", "rc"],
        "{status}"
    );
    assert_eq!(
        c.stat("/etc/airlock/control-plane.toml"),
        "640 root airlock"
    );
    assert_eq!(
        c.stat("/etc/airlock/vault-bridge.toml"),
        "640 root airlock-vault-bridge"
    );
    assert_eq!(
        c.stat("/var/lib/airlock-vault-bridge"),
        "700 airlock-vault-bridge airlock-vault-bridge"
    );
    // deb-systemd-helper masks the units of a removed package ...
    for unit in UNITS {
        let target = c.ok(&format!("readlink /etc/systemd/system/{unit}"));
        assert_eq!(target.trim(), "/dev/null", "{unit} after dpkg -r");
    }

    c.ok(&format!("dpkg -P {pkgs}"));
    for p in [
        "/etc/airlock",
        "/var/lib/airlock",
        "/var/lib/airlock-agent",
        "/var/lib/airlock-vault-bridge",
    ] {
        assert_eq!(c.stat(p), "absent", "{p} after dpkg -P");
    }
    // ... and purge unmasks them. (dpkg-statoverride --list exits 1 when empty.)
    c.fails("ls /etc/systemd/system/airlock-*");
    let overrides = c.ok("dpkg-statoverride --list || true");
    assert!(
        !overrides.contains("airlock"),
        "statoverrides left: {overrides}"
    );
    let left = c.sh(&format!("dpkg-query -W {pkgs}"));
    assert!(
        !left.status.success(),
        "packages still known: {}",
        text(&left.stdout)
    );
    // System users stay (Debian does not recycle uids).
    c.ok("getent passwd airlock airlock-agent airlock-vault-bridge");
}

/// The other order: the bridge alone first makes airlock-agent (its uid
/// goes into the config); the agent's package then keeps that user.
fn check_bridge_first(image: &str, debs: &Path) {
    let c = Debian::start(image, debs);
    c.ok("dpkg -i /debs/airlock-vault-bridge_*.deb");
    let uid = c.ok("id -u airlock-agent").trim().to_owned();
    let line = c.ok("grep '^allowed_peer_uids' /etc/airlock/vault-bridge.toml");
    assert!(
        line.starts_with(&format!("allowed_peer_uids = [{uid}]")),
        "{line}"
    );
    c.ok("dpkg -i /debs/airlock-sandbox-agent_*.deb");
    assert_eq!(
        c.ok("id -u airlock-agent").trim(),
        uid,
        "airlock-agent was remade"
    );
    let groups = c.ok("id -nG airlock-agent");
    assert!(
        groups
            .split_whitespace()
            .any(|g| g == "airlock-vault-bridge"),
        "{groups}"
    );
    assert_eq!(
        c.stat("/var/lib/airlock-agent"),
        "700 airlock-agent airlock-agent"
    );
    c.ok("runuser -u airlock-agent -- sandbox-agent --config /etc/airlock/sandbox-agent.toml check-config");
}

#[test]
fn debian_packages_install_verify_remove_purge() {
    let Some((executor, image)) = prerequisites() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("airlock-packages-")
        .tempdir()
        .unwrap();
    let out = tmp.path().join("debs");
    let debs = build_debs(&executor, &out, tmp.path());
    check_control_fields(&debs);

    let c = Debian::start(&image, &out);
    // A docker group as Docker's package makes it: the agent joins it.
    c.ok("groupadd --system docker");
    let install = c.ok("dpkg -i /debs/*.deb 2>&1");
    eprintln!("packages: dpkg -i:\n{install}");
    // Installed, not enabled (and nothing was started: no systemd here).
    c.fails("ls /etc/systemd/system/*.wants/airlock-*");
    check_users(&c);
    check_modes(&c);
    check_conffiles(&c);
    check_binaries(&c);
    check_bridge_socket(&c);
    check_reinstall(&c);

    let tree = tmp.path().join("root");
    installed_tree(&c, &tree);
    copy_host_units(&tree);
    check_units(&tree);

    check_remove_and_purge(&c);
    drop(c);
    check_bridge_first(&image, &out);
    eprintln!("packages: whole test {:.1?}", started.elapsed());
}
