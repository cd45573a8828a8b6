//! Conformance cases of [`catalog::VaultStore`] (vaults and credential
//! metadata), run against every backend.

use std::sync::Arc;

use catalog::{
    Catalog, CatalogError, NewCredential, NewVault, Order, ResourceKind, VaultQuery,
    MAX_CREDENTIALS_PER_VAULT,
};
use serde_json::json;

use super::uid;

async fn vault(c: &dyn Catalog, name: &str) -> catalog::VaultRecord {
    c.create_vault(NewVault {
        id: uid("vlt"),
        body: json!({"display_name": name, "metadata": {}}),
    })
    .await
    .unwrap()
}

fn cred(vault_id: &str, binding: &str) -> NewCredential {
    NewCredential {
        id: uid("vcrd"),
        vault_id: vault_id.to_owned(),
        binding: binding.to_owned(),
        body: json!({"auth": {"type": "static_bearer", "mcp_server_url": binding}}),
    }
}

pub async fn vaults_update_archive_and_delete_with_their_credentials(c: Arc<dyn Catalog>) {
    let v = vault(&*c, "one").await;
    assert_eq!(v.body["display_name"], json!("one"));
    assert_eq!(v.archived_at, None);
    assert_eq!(c.get_vault(&v.id).await.unwrap(), v);
    let dup = c
        .create_vault(NewVault {
            id: v.id.clone(),
            body: json!({}),
        })
        .await
        .unwrap_err();
    assert!(matches!(dup, CatalogError::Conflict { .. }), "{dup}");

    let u = c
        .update_vault(
            &v.id,
            json!({"display_name": "uno", "metadata": {"a": "1"}}),
        )
        .await
        .unwrap();
    assert_eq!(u.body["metadata"], json!({"a": "1"}));
    assert_eq!(u.created_at, v.created_at);
    assert!(u.updated_at >= v.updated_at);

    let cr = c
        .create_credential(cred(&v.id, "https://mcp.example/"))
        .await
        .unwrap();
    assert_eq!(cr.vault_id, v.id);
    assert_eq!(cr.binding, "https://mcp.example/");

    // archiving a vault archives its live credentials, at the same instant
    let a = c.archive_vault(&v.id).await.unwrap();
    let at = a.archived_at.expect("archived");
    let cr2 = c.get_credential(&v.id, &cr.id).await.unwrap();
    assert_eq!(cr2.archived_at, Some(at));
    let again = c.archive_vault(&v.id).await.unwrap();
    assert_eq!(again.archived_at, Some(at), "archiving again is a no-op");
    let e = c.update_vault(&v.id, json!({})).await.unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Archived {
                kind: ResourceKind::Vault,
                ..
            }
        ),
        "{e}"
    );
    let e = c
        .create_credential(cred(&v.id, "https://other.example/"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Archived {
                kind: ResourceKind::Vault,
                ..
            }
        ),
        "{e}"
    );

    // listings leave archived vaults out unless asked
    let live = vault(&*c, "two").await;
    let listed = c.list_vaults(VaultQuery::default()).await.unwrap();
    let ids: Vec<_> = listed.items.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, std::slice::from_ref(&live.id));
    let all = c
        .list_vaults(VaultQuery {
            include_archived: true,
            ..VaultQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = all.items.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, [live.id.clone(), v.id.clone()], "newest first");

    // deleting a vault deletes its credentials
    c.delete_vault(&v.id).await.unwrap();
    let e = c.get_vault(&v.id).await.unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::NotFound {
                kind: ResourceKind::Vault,
                ..
            }
        ),
        "{e}"
    );
    let e = c.get_credential(&v.id, &cr.id).await.unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::NotFound {
                kind: ResourceKind::Credential,
                ..
            }
        ),
        "{e}"
    );
    let e = c.delete_vault(&v.id).await.unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
}

pub async fn credentials_keep_bindings_unique_and_list_in_pages(c: Arc<dyn Catalog>) {
    let v = vault(&*c, "creds").await;
    let other = vault(&*c, "other").await;
    let e = c
        .create_credential(cred("vlt_missing", "https://x/"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::NotFound {
                kind: ResourceKind::Vault,
                ..
            }
        ),
        "{e}"
    );

    let first = c
        .create_credential(cred(&v.id, "GITHUB_TOKEN"))
        .await
        .unwrap();
    // a binding is unique among the vault's live credentials only
    let e = c
        .create_credential(cred(&v.id, "GITHUB_TOKEN"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Conflict {
                kind: ResourceKind::Credential,
                ..
            }
        ),
        "{e}"
    );
    c.create_credential(cred(&other.id, "GITHUB_TOKEN"))
        .await
        .unwrap();
    // a credential is found only through its own vault
    let e = c.get_credential(&other.id, &first.id).await.unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::NotFound {
                kind: ResourceKind::Credential,
                ..
            }
        ),
        "{e}"
    );

    let updated = c
        .update_credential(&v.id, &first.id, json!({"display_name": "gh"}))
        .await
        .unwrap();
    assert_eq!(updated.body, json!({"display_name": "gh"}));
    assert_eq!(updated.binding, "GITHUB_TOKEN");
    let archived = c.archive_credential(&v.id, &first.id).await.unwrap();
    assert!(archived.archived_at.is_some());
    let e = c
        .update_credential(&v.id, &first.id, json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Archived {
                kind: ResourceKind::Credential,
                ..
            }
        ),
        "{e}"
    );
    // archiving frees the binding
    let second = c
        .create_credential(cred(&v.id, "GITHUB_TOKEN"))
        .await
        .unwrap();

    // at most MAX_CREDENTIALS_PER_VAULT live credentials
    let mut ids = vec![second.id.clone()];
    for i in 1..MAX_CREDENTIALS_PER_VAULT {
        ids.push(
            c.create_credential(cred(&v.id, &format!("VAR_{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let e = c
        .create_credential(cred(&v.id, "ONE_TOO_MANY"))
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Invalid { .. }), "{e}");

    // pages, oldest first, live only unless asked
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .list_credentials(
                &v.id,
                VaultQuery {
                    order: Order::Ascending,
                    after_position: after,
                    limit: 7,
                    ..VaultQuery::default()
                },
            )
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|r| r.id.clone()));
        after = page.items.last().map(|r| r.position);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, ids);
    let all = c
        .list_credentials(
            &v.id,
            VaultQuery {
                include_archived: true,
                limit: 100,
                ..VaultQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), MAX_CREDENTIALS_PER_VAULT + 1);
    assert_eq!(all.items.last().unwrap().id, first.id, "newest first");
    let e = c
        .list_credentials("vlt_missing", VaultQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");

    c.delete_credential(&v.id, &second.id).await.unwrap();
    let e = c.delete_credential(&v.id, &second.id).await.unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
    c.create_credential(cred(&v.id, "ONE_TOO_MANY"))
        .await
        .unwrap();
}
