//! Join tokens across replicas: two real `control-plane serve` replicas
//! share one PostgreSQL (catalog and session store) and one CA made for the
//! test; agents enroll with the real `sandbox-agent enroll`.
//!
//! - A token made at A (`tokens create` with A's config) enrolls an agent at
//!   B; presented again, at A or at B, it is refused `token_used`, and
//!   `tokens list` at either replica shows it used by that agent.
//! - A token made at A and revoked at B (`tokens revoke` with B's config)
//!   is refused at A: `token_revoked`.
//! - A token only in A's identity database (made while the catalog was not
//!   there) enrolls at A, which records it in the catalog as it claims it:
//!   B then refuses it `token_used`.
//! - Eight enrollments with one token, four at each replica at once: one
//!   succeeds, seven are refused `token_used`.
//!
//! Needs `AIRLOCK_TEST_PG_URL`; without it the test is skipped, except
//! under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use airlock_tests::deploy::{Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::replicas;
use serde_json::Value;

const ENV: &str = "env-ha-tokens";

/// `tokens create` at `cp`, with a join string naming `enroll_at`'s
/// enrollment listener: (token id, join string).
fn create(cp: &ControlPlane, enroll_at: &ControlPlane) -> (String, String) {
    let out = cp
        .cli(&[
            "tokens",
            "create",
            "--environment",
            ENV,
            "--enroll-address",
            &enroll_at.enroll_addr().to_string(),
            "--json",
        ])
        .unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["token_id"].as_str().unwrap().to_owned(),
        v["join_string"].as_str().unwrap().to_owned(),
    )
}

/// The same join string, naming another enrollment address.
fn at(join: &str, enroll: SocketAddr) -> String {
    let mut j: pki::JoinString = join.parse().unwrap();
    j.enroll_address = enroll.to_string();
    j.encode()
}

/// `sandbox-agent enroll` with `join`: Ok(agent id) or Err(stderr).
fn enroll(cp: &ControlPlane, join: &str) -> Result<String, String> {
    Agent::enroll(cp, join, AgentOptions::default())
        .map(|a| a.agent_id().to_owned())
        .map_err(|e| format!("{e:#}"))
}

fn refused(result: Result<String, String>, code: &str) {
    match result {
        Ok(id) => panic!("enrolled {id}; expected {code}"),
        Err(e) => assert!(e.contains(code), "expected {code}: {e}"),
    }
}

/// `tokens list --all --json` at `cp`: the state and user of `token_id`.
fn listed(cp: &ControlPlane, token_id: &str) -> (String, Option<String>) {
    let out = cp.cli(&["tokens", "list", "--all", "--json"]).unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let t = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["token_id"] == token_id)
        .unwrap_or_else(|| panic!("{token_id} not listed: {out}"))
        .clone();
    (
        t["state"].as_str().unwrap().to_owned(),
        t["used_by"].as_str().map(str::to_owned),
    )
}

#[test]
fn a_token_made_at_one_replica_enrolls_at_any_once() {
    let Some(url) = replicas::pg_url("ha_tokens") else {
        return;
    };
    let ca = replicas::SharedCa::generate().unwrap();
    let config = format!(
        "{}{}",
        ca.pki_keys(),
        replicas::postgres_toml(&url, &replicas::fresh_schema("hatokens"))
    );
    let replica = || {
        ControlPlane::configure(CpOptions {
            extra_toml: config.clone(),
            ..CpOptions::default()
        })
        .unwrap()
    };
    let (mut a, mut b) = (replica(), replica());
    a.start().unwrap();
    b.start().unwrap();

    // Made at A, listed at B, enrolls at B, then used everywhere.
    let (t1, join_b) = create(&a, &b);
    assert_eq!(listed(&b, &t1), ("active".to_owned(), None));
    let agent = enroll(&b, &join_b).expect("a token made at A enrolls at B");
    refused(enroll(&a, &at(&join_b, a.enroll_addr())), "token_used");
    refused(enroll(&b, &join_b), "token_used");
    for cp in [&a, &b] {
        assert_eq!(
            listed(cp, &t1),
            ("used".to_owned(), Some(agent.clone())),
            "at {}",
            cp.enroll_addr()
        );
    }

    // Made at A, revoked at B: refused at A.
    let (t2, join_a) = create(&a, &a);
    let out = b.cli(&["tokens", "revoke", &t2]).unwrap();
    assert!(out.contains("revoked"), "{out}");
    refused(enroll(&a, &join_a), "token_revoked");
    assert_eq!(listed(&a, &t2).0, "revoked");

    // Only in A's identity database: A shares it as it claims it.
    let config = control_plane::config::Config::load(a.config_path()).unwrap();
    let identity =
        pki::IdentityService::open(config.pki.identity_settings(&config.data_dir)).unwrap();
    let local = identity
        .create_token(
            &pki::EnvironmentId::parse(ENV).unwrap(),
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let join_local = pki::JoinString::new(
        &local.token,
        a.enroll_addr().to_string(),
        identity.ca_fingerprint(),
        None,
    )
    .encode();
    drop(identity);
    let agent_local = enroll(&a, &join_local).expect("a token only A knows enrolls at A");
    refused(enroll(&b, &at(&join_local, b.enroll_addr())), "token_used");
    assert_eq!(
        listed(&b, &local.token_id),
        ("used".to_owned(), Some(agent_local))
    );

    // One token, eight enrollments at once across both replicas.
    let (_, join_race) = create(&a, &a);
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (cp, join) = if i % 2 == 0 {
                    (&a, join_race.clone())
                } else {
                    (&b, at(&join_race, b.enroll_addr()))
                };
                s.spawn(move || enroll(cp, &join))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let enrolled: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(enrolled.len(), 1, "exactly one enrollment: {results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            r.as_ref().unwrap_err().contains("token_used"),
            "the others are refused token_used: {r:?}"
        );
    }
    let used = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.contains("token_used")))
        .count();
    println!(
        "ha_tokens: {} racing enrollments with one token across 2 replicas: {} enrolled, {used} token_used",
        results.len(),
        enrolled.len()
    );

    // The replicas logged no token, ever.
    let secrets: Vec<String> = [&join_b, &join_a, &join_local, &join_race]
        .iter()
        .map(|j| {
            j.parse::<pki::JoinString>()
                .unwrap()
                .token()
                .unwrap()
                .expose()
                .to_owned()
        })
        .collect();
    for cp in [&a, &b] {
        let log = cp.log();
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "a join token in the log");
        }
    }
}
