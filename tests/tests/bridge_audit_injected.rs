//! An injected *vault* credential in the agent's hash-chained audit record
//! (issue 9, item 6), end to end: a real `vault-bridge serve` (file
//! backend) holding two relayed `environment_variable` credentials, the
//! sandbox-agent's service on real Docker with `[bridge]` provisioning a
//! sandbox whose `open_egress` carries those credentials (as the control
//! plane resolves them from the session's `vault_ids`), nginx over HTTPS as
//! the upstream. bash in the sandbox sends each credential's placeholder:
//!
//! - on the credential's allowed host it is swapped (the server sees the
//!   secret) and the record holds a `credential_use` line `injected` with
//!   the credential id, vault id, host, method, path, upstream status,
//!   sandbox, session and that call's `tool_use_id`;
//! - the other credential's placeholder, sent to a host it is not allowed
//!   on, is refused (403) and recorded `placeholder_refused` naming that
//!   credential and vault;
//! - once the first credential is archived (`forget_credential`), the next
//!   use is refused by the bridge (502) and recorded `secret_unavailable`;
//! - the chain verifies; neither secret nor any placeholder is in the
//!   record or the bridge's journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::{StaticServer, TestCa};
use airlock_tests::sandbox::{exec_id, text, TestAgent};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::relay::{
    CredentialBinding, EgressCredential, ForgetCredential, ForgetReason, InjectionLocation,
    Networking, PutCredential, WireSecret,
};
use protocol::sandbox::ProvisionRequest;
use sandbox_agent::sandbox::SandboxService;
use serde_json::{json, Value};

const SESSION: &str = "sesn_injected";
const VAULT: &str = "vlt_injected";
const SECRET: &str = "canary-injected-secret-6d21c0";
const OTHER_SECRET: &str = "canary-elsewhere-secret-90ab3e";

fn env_credential(id: &str, name: &str, host: &str) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: VAULT.into(),
        credential_id: id.into(),
        kv_path: None,
        binding: CredentialBinding::EnvironmentVariable {
            secret_name: name.into(),
            networking: Networking::Limited {
                allowed_hosts: vec![host.into()],
            },
            injection_location: InjectionLocation {
                header: true,
                body: false,
            },
        },
    }
}

fn uses(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["call"] == "credential_use")
        .collect()
}

async fn use_of(path: &Path, tool_use_id: &str) -> Value {
    let found = testkit::try_eventually(
        "the credential use in the agent's audit record",
        Duration::from_secs(15),
        || {
            uses(path)
                .into_iter()
                .find(|u| u["tool_use_id"] == tool_use_id)
        },
    )
    .await;
    match found {
        Ok(u) => u,
        Err(e) => panic!(
            "{e}: no use with tool_use_id {tool_use_id}; the record's credential uses: {:#?}",
            uses(path)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_vault_credential_is_in_the_agents_chained_audit() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bridge-audit-injected ca").unwrap();
    let ca_file = work.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let api = StaticServer::start(&ca, "localhost", &[], "https://localhost/").unwrap();
    let port = api.addr().port();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();

    // Relayed as the control plane relays a secret sent through the API.
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    for (id, secret) in [("vcrd_inject", SECRET), ("vcrd_elsewhere", OTHER_SECRET)] {
        let put = PutCredential {
            vault_id: VAULT.into(),
            credential_id: id.into(),
            fields: [("secret_value".to_owned(), WireSecret::new(secret))].into(),
        };
        assert_eq!(
            ch.call(&ToBridge::PutCredential(put)).await.unwrap(),
            FromBridge::Relayed { held: true }
        );
    }

    let mut agent = TestAgent::new();
    let cfg = agent.with_bridge(bridge.agent_settings());
    let (svc, _) = SandboxService::start(cfg).await.unwrap();
    let p = svc
        .provision(ProvisionRequest {
            session_id: Some(SESSION.into()),
            credentials: vec![
                env_credential("vcrd_inject", "API_KEY", "localhost"),
                env_credential("vcrd_elsewhere", "OTHER_KEY", "api.invalid"),
            ],
            allowed_hosts: vec![format!("localhost:{port}")],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("provision: {e}\n{}", bridge.log()));
    let sbx = p.sandbox_id.clone();
    let url = api.url("echo");
    let curl = |var: &str| {
        format!(
            "curl -sS --max-time 10 --proxy http://127.0.0.1:3128 -w '\\n%{{http_code}}' \
             -H \"x-api-key: ${var}\" '{url}'"
        )
    };

    // The placeholders the sandbox holds (never the secrets).
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_env",
        "bash",
        json!({"command": "printf '%s\\n%s' \"$API_KEY\" \"$OTHER_KEY\""}),
    )
    .await;
    let placeholders: Vec<String> = text(&r).lines().map(str::to_owned).collect();
    assert_eq!(placeholders.len(), 2, "{placeholders:?}");
    for ph in &placeholders {
        assert!(ph.starts_with("airlock-placeholder-"), "{ph}");
        assert!(!ph.contains(SECRET) && !ph.contains(OTHER_SECRET), "{ph}");
    }

    // 1. Swapped on its host: the server got the secret; the use is audited.
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_injected",
        "bash",
        json!({"command": curl("API_KEY")}),
    )
    .await;
    let out = text(&r);
    assert_eq!(
        out.trim(),
        format!("x-api-key={SECRET}\n\n200"),
        "{}",
        bridge.log()
    );
    let audit = svc.audit_path().to_owned();
    let u = use_of(&audit, "toolu_injected").await;
    assert_eq!(u["outcome"], "injected", "{u}");
    assert_eq!(u["sandbox_id"], sbx.as_str(), "{u}");
    assert_eq!(u["session_id"], SESSION, "{u}");
    let d = &u["credential_use"];
    assert_eq!(d["credential_id"], "vcrd_inject", "{u}");
    assert_eq!(d["vault_id"], VAULT, "{u}");
    assert_eq!(d["host"], "localhost", "{u}");
    assert_eq!(d["method"], "GET", "{u}");
    assert_eq!(d["path"], "/echo", "{u}");
    assert_eq!(d["status"], 200, "{u}");

    // 2. The other credential's placeholder to a host it is not allowed on.
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_refused",
        "bash",
        json!({"command": curl("OTHER_KEY")}),
    )
    .await;
    let out = text(&r);
    assert!(out.trim().ends_with("403"), "{out}");
    assert!(
        out.contains("vcrd_elsewhere"),
        "the refusal names the credential: {out}"
    );
    assert!(!out.contains(OTHER_SECRET), "{out}");
    let u = use_of(&audit, "toolu_refused").await;
    assert_eq!(u["outcome"], "placeholder_refused", "{u}");
    assert_eq!(
        u["credential_use"]["credential_id"], "vcrd_elsewhere",
        "{u}"
    );
    assert_eq!(u["credential_use"]["vault_id"], VAULT, "{u}");
    assert_eq!(u["credential_use"]["host"], "localhost", "{u}");

    // 3. Archived: the next use is refused by the bridge and audited.
    assert_eq!(
        ch.call(&ToBridge::ForgetCredential(ForgetCredential {
            vault_id: VAULT.into(),
            credential_id: "vcrd_inject".into(),
            reason: ForgetReason::Archived,
        }))
        .await
        .unwrap(),
        FromBridge::Relayed { held: true }
    );
    let served_before = api.access_log().lines().count();
    let r = exec_id(
        &svc,
        &sbx,
        "toolu_archived",
        "bash",
        json!({"command": curl("API_KEY")}),
    )
    .await;
    let out = text(&r);
    assert!(out.trim().ends_with("502"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    assert_eq!(
        api.access_log().lines().count(),
        served_before,
        "the refused request reached the server"
    );
    let u = use_of(&audit, "toolu_archived").await;
    assert_eq!(u["outcome"], "secret_unavailable", "{u}");
    assert_eq!(u["credential_use"]["credential_id"], "vcrd_inject", "{u}");
    assert_eq!(u["credential_use"]["vault_id"], VAULT, "{u}");

    // The chain verifies; no value or placeholder in the record or journal.
    sandbox_agent::audit::verify(&audit).unwrap();
    let record = std::fs::read_to_string(&audit).unwrap();
    let journal = std::fs::read_to_string(vault_bridge::audit_journal::journal_path(
        &bridge.data_dir(),
    ))
    .unwrap();
    for needle in [SECRET, OTHER_SECRET, &placeholders[0], &placeholders[1]] {
        assert_eq!(
            record.matches(needle).count(),
            0,
            "{needle} in the agent's record"
        );
        assert_eq!(
            journal.matches(needle).count(),
            0,
            "{needle} in the bridge's journal"
        );
    }
    assert!(!bridge.log().contains(SECRET) && !bridge.log().contains(OTHER_SECRET));
    svc.shutdown(true).await;
}
