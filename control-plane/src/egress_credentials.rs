//! What a session's sandbox may use on the way out, resolved from the
//! catalog at provision: its `vault_ids`' live credentials as
//! [`EgressCredential`]s (ids, binding from the stored `auth` metadata,
//! `airlock.kv_path`; never a value — the catalog holds none) and the
//! environment's `config.networking.allowed_hosts` when it is `limited`.
//!
//! A vault or environment that cannot be read is skipped with a warning:
//! the bridge then has no binding for it and refuses its placeholder, which
//! fails closed.

use catalog::{Catalog, VaultQuery};
use protocol::relay::{CredentialBinding, EgressCredential};
use serde_json::Value;

/// Metadata key naming the customer's Vault path of a credential's secret.
const KV_PATH_KEY: &str = "airlock.kv_path";

/// The live credentials of `vault_ids` (archived vaults and credentials skipped).
pub async fn credentials_of(catalog: &dyn Catalog, vault_ids: &[String]) -> Vec<EgressCredential> {
    let mut out = Vec::new();
    for vault_id in vault_ids {
        match catalog.get_vault(vault_id).await {
            Ok(v) if v.archived_at.is_some() => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%vault_id, %error, "vault of a session not readable; its credentials are not bound");
                continue;
            }
        }
        let mut after = None;
        loop {
            let query = VaultQuery {
                include_archived: false,
                order: catalog::Order::Ascending,
                after_position: after,
                limit: 100,
            };
            let page = match catalog.list_credentials(vault_id, query).await {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(%vault_id, %error, "credentials of a session's vault not readable");
                    break;
                }
            };
            after = page.items.last().map(|c| c.position);
            for c in page.items {
                if c.archived_at.is_some() {
                    continue;
                }
                if let Some(e) = egress_credential(&c.vault_id, &c.id, &c.body) {
                    out.push(e);
                }
            }
            if !page.has_more || after.is_none() {
                break;
            }
        }
    }
    out
}

/// One stored credential body (`auth`, `metadata`) as the bridge needs it.
pub fn egress_credential(
    vault_id: &str,
    credential_id: &str,
    body: &Value,
) -> Option<EgressCredential> {
    let auth = body.get("auth")?;
    let binding: CredentialBinding = match serde_json::from_value(auth.clone()) {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(%vault_id, %credential_id, %error, "credential auth not understood; not bound");
            return None;
        }
    };
    let kv_path = body
        .get("metadata")
        .and_then(|m| m.get(KV_PATH_KEY))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Some(EgressCredential {
        vault_id: vault_id.to_owned(),
        credential_id: credential_id.to_owned(),
        kv_path,
        binding,
    })
}

/// The environment's `config.networking.allowed_hosts` when `limited`.
pub async fn allowed_hosts_of(catalog: &dyn Catalog, environment_id: &str) -> Vec<String> {
    match catalog.get_environment(environment_id).await {
        Ok(env) => environment_allowed_hosts(&env.body),
        Err(error) => {
            tracing::warn!(%environment_id, %error, "environment not readable; no allowed hosts from it");
            Vec::new()
        }
    }
}

/// `config.networking.allowed_hosts` of an environment body (`limited` only).
pub fn environment_allowed_hosts(body: &Value) -> Vec<String> {
    let Some(net) = body.get("config").and_then(|c| c.get("networking")) else {
        return Vec::new();
    };
    if net.get("type").and_then(Value::as_str) != Some("limited") {
        return Vec::new();
    }
    net.get("allowed_hosts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_auth_shapes_map_to_bindings() {
        let e = egress_credential(
            "vlt_1",
            "vcrd_1",
            &json!({"auth": {"type": "environment_variable", "secret_name": "API_KEY",
                "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
                "injection_location": {"header": true, "body": false}},
                "metadata": {"airlock.kv_path": "team/api"}}),
        )
        .unwrap();
        assert_eq!(e.kv_path.as_deref(), Some("team/api"));
        assert!(
            matches!(e.binding, CredentialBinding::EnvironmentVariable { ref secret_name, .. } if secret_name == "API_KEY")
        );
        let o = egress_credential(
            "vlt_1",
            "vcrd_2",
            &json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m.example.com/", "expires_at": null, "refresh": null}}),
        )
        .unwrap();
        assert!(matches!(o.binding, CredentialBinding::McpOauth { .. }));
        assert!(o.kv_path.is_none());
        let u = egress_credential("vlt_1", "vcrd_3", &json!({"auth": {"type": "future"}})).unwrap();
        assert!(matches!(u.binding, CredentialBinding::Unknown));
    }

    #[test]
    fn only_limited_environment_networking_gives_hosts() {
        let limited = json!({"config": {"networking": {"type": "limited", "allowed_hosts": ["a.example.com"]}}});
        assert_eq!(environment_allowed_hosts(&limited), vec!["a.example.com"]);
        assert!(environment_allowed_hosts(
            &json!({"config": {"networking": {"type": "unrestricted"}}})
        )
        .is_empty());
        assert!(environment_allowed_hosts(&json!({})).is_empty());
    }
}
