//! `control-plane tokens list|revoke` end to end: the real `control-plane`
//! binary works on the data directory of a running `control-plane serve`,
//! and the real `sandbox-agent enroll` shows that a revoked join token is
//! refused at enrollment while another token from the same control plane
//! still enrolls. Requires `cargo build -p control-plane -p sandbox-agent`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use airlock_tests::deploy::{binary, Agent, AgentOptions, ControlPlane, CpOptions};
use serde_json::Value;

/// `control-plane --config <cfg> <args>`, whatever the exit status.
fn run(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(cp.config_path())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run, expect failure (exit status 1); returns stderr.
fn fails(cp: &ControlPlane, args: &[&str]) -> String {
    let out = run(cp, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "control-plane {} should fail with 1:\nstdout: {}\nstderr: {stderr}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let out = cp.cli(args).unwrap();
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("control-plane {}: not JSON ({e}): {out}", args.join(" ")))
}

/// A created token: (token id, plaintext token, join string).
fn create(cp: &ControlPlane, environment: &str) -> (String, String, String) {
    let v = json(
        cp,
        &["tokens", "create", "--environment", environment, "--json"],
    );
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_owned()
    };
    (s("token_id"), s("token"), s("join_string"))
}

fn ids_and_states(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|t| {
            (
                t["token_id"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn list_revoke_and_a_revoked_token_is_refused_at_enrollment() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let (id_a, secret_a, join_a) = create(&cp, "env-tokens");
    let (id_b, secret_b, join_b) = create(&cp, "env-tokens");
    assert_ne!(id_a, id_b);
    let no_secrets = |text: &str| {
        for s in [&secret_a, &secret_b, &join_a, &join_b] {
            assert!(!text.contains(s.as_str()), "a secret was printed:\n{text}");
        }
    };

    // Table: header, both tokens active, newest first.
    let table = cp.cli(&["tokens", "list"]).unwrap();
    no_secrets(&table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for col in ["TOKEN ID", "ENVIRONMENT", "STATE", "CREATED", "EXPIRES"] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(lines[1].starts_with(&id_b), "newest first:\n{table}");
    assert!(lines[2].starts_with(&id_a), "{table}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("env-tokens") && l.contains(" active ")),
        "{table}"
    );

    // JSON: the same two, public fields only.
    let list = json(&cp, &["tokens", "list", "--json"]);
    no_secrets(&list.to_string());
    assert_eq!(
        ids_and_states(&list),
        [
            (id_b.clone(), "active".to_owned()),
            (id_a.clone(), "active".to_owned())
        ]
    );
    let first = list[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "environment_id",
            "expires_at",
            "state",
            "token_id"
        ]
    );
    assert_eq!(first["environment_id"], "env-tokens");
    assert!(first["expires_at"].as_str().unwrap().ends_with('Z'));

    // Revoke A.
    let out = cp.cli(&["tokens", "revoke", &id_a]).unwrap();
    assert!(out.contains(&id_a) && out.contains("revoked"), "{out}");

    // The default list shows only active tokens; --all shows the revoked one.
    let active = json(&cp, &["tokens", "list", "--json"]);
    assert_eq!(
        ids_and_states(&active),
        [(id_b.clone(), "active".to_owned())]
    );
    let all = json(&cp, &["tokens", "list", "--all", "--json"]);
    assert_eq!(
        ids_and_states(&all),
        [
            (id_b.clone(), "active".to_owned()),
            (id_a.clone(), "revoked".to_owned())
        ]
    );
    assert!(
        all[1]["revoked_at"].as_str().unwrap().ends_with('Z'),
        "{all}"
    );
    let table = cp.cli(&["tokens", "list", "--all"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id_a) && l.contains("revoked at ")),
        "{table}"
    );

    // Revoking again is fine and says nothing changed.
    let again = json(&cp, &["tokens", "revoke", &id_a, "--json"]);
    assert_eq!(again["token_id"], id_a.as_str());
    assert_eq!(again["newly_revoked"], false);
    assert_eq!(again["revoked_at"], all[1]["revoked_at"]);

    // The running server refuses the revoked token at enrollment...
    let err = Agent::enroll(&cp, &join_a, AgentOptions::default())
        .expect_err("a revoked token must not enroll")
        .to_string();
    assert!(
        err.contains(&format!("join token {id_a} was revoked")) && err.contains("token_revoked"),
        "{err}"
    );
    no_secrets(&err);
    // ...and still enrolls with the other one.
    let agent = Agent::enroll(&cp, &join_b, AgentOptions::default()).unwrap();

    let all = json(&cp, &["tokens", "list", "--all", "--json"]);
    assert_eq!(
        ids_and_states(&all),
        [
            (id_b.clone(), "used".to_owned()),
            (id_a.clone(), "revoked".to_owned())
        ]
    );
    assert_eq!(all[0]["used_by"], agent.agent_id());
    assert!(all[0]["used_at"].as_str().unwrap().ends_with('Z'), "{all}");
    let table = cp.cli(&["tokens", "list"]).unwrap();
    assert!(table.contains("no active join tokens"), "{table}");

    // A used token cannot be revoked: the error names the agent to revoke instead.
    let stderr = fails(&cp, &["tokens", "revoke", &id_b]);
    assert!(
        stderr.contains(&id_b)
            && stderr.contains(&format!("already used by agent {}", agent.agent_id()))
            && stderr.contains("agents revoke"),
        "{stderr}"
    );
    // An unknown id is named.
    let stderr = fails(&cp, &["tokens", "revoke", "tok_0000000000000000"]);
    assert!(
        stderr.contains("no join token with id tok_0000000000000000"),
        "{stderr}"
    );

    // Nothing secret reached the server's log either.
    no_secrets(&cp.log());
}
