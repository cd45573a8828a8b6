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
use protocol::relay::{CredentialBinding, EgressCredential, HttpAuth, DEFAULT_BASIC_USERNAME};
use serde_json::Value;

/// Metadata key naming the customer's Vault path of a credential's secret.
const KV_PATH_KEY: &str = "airlock.kv_path";
/// Metadata key: how a `static_bearer` secret is sent, `bearer` (default) or `basic`.
pub const HTTP_AUTH_KEY: &str = "airlock.http_auth";
/// Metadata key: the user-id of the `basic` form (default `x-access-token`).
pub const BASIC_USERNAME_KEY: &str = "airlock.basic_username";

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
    let http_auth = match http_auth(body.get("metadata")) {
        Ok(h) => h,
        Err(reason) => {
            tracing::warn!(%vault_id, %credential_id, %reason, "credential metadata not understood; not bound");
            return None;
        }
    };
    Some(EgressCredential {
        http_auth,
        vault_id: vault_id.to_owned(),
        credential_id: credential_id.to_owned(),
        kv_path,
        binding,
    })
}

/// The wire form of a credential from its stored metadata (`airlock.http_auth`,
/// `airlock.basic_username`; the API validated both). `Err` names what is
/// not understood, and the credential is then not bound (fails closed).
pub fn http_auth(metadata: Option<&Value>) -> Result<HttpAuth, String> {
    let get = |k: &str| metadata.and_then(|m| m.get(k)).and_then(Value::as_str);
    match get(HTTP_AUTH_KEY) {
        None | Some("bearer") => Ok(HttpAuth::Bearer),
        Some("basic") => Ok(HttpAuth::Basic {
            username: get(BASIC_USERNAME_KEY)
                .filter(|u| !u.is_empty())
                .unwrap_or(DEFAULT_BASIC_USERNAME)
                .to_owned(),
        }),
        Some(other) => Err(format!("{HTTP_AUTH_KEY} = {other:?}")),
    }
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
    fn http_auth_metadata_gives_the_basic_form() {
        let auth =
            json!({"type": "static_bearer", "mcp_server_url": "https://git.example.com/a/app.git"});
        let plain = egress_credential("vlt_1", "vcrd_1", &json!({"auth": auth})).unwrap();
        assert_eq!(plain.http_auth, HttpAuth::Bearer);
        let basic = egress_credential(
            "vlt_1",
            "vcrd_1",
            &json!({"auth": auth, "metadata": {"airlock.http_auth": "basic"}}),
        )
        .unwrap();
        assert_eq!(
            basic.http_auth,
            HttpAuth::Basic {
                username: "x-access-token".into()
            }
        );
        let named = egress_credential(
            "vlt_1",
            "vcrd_1",
            &json!({"auth": auth, "metadata": {"airlock.http_auth": "basic", "airlock.basic_username": "oauth2"}}),
        )
        .unwrap();
        assert_eq!(
            named.http_auth,
            HttpAuth::Basic {
                username: "oauth2".into()
            }
        );
        assert!(egress_credential(
            "vlt_1",
            "vcrd_1",
            &json!({"auth": auth, "metadata": {"airlock.http_auth": "digest"}})
        )
        .is_none());
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
