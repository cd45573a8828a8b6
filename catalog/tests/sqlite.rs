//! The conformance suite against the SQLite catalog, plus what only SQLite
//! does (reopening the file, refusing a newer schema).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use catalog::{Catalog, CatalogError, NewAgent, SqliteCatalog};
use conformance::Fixture;
use serde_json::json;

struct Sqlite {
    _dir: tempfile::TempDir,
    catalog: SqliteCatalog,
}

impl Fixture for Sqlite {
    fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::new(self.catalog.clone())
    }
    async fn finish(self) {}
}

async fn sqlite() -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let catalog = SqliteCatalog::open_in_dir(dir.path()).await.unwrap();
    Some(Sqlite { _dir: dir, catalog })
}

conformance_tests!(sqlite:
    agent_versions_are_immutable,
    agent_versions_list_in_pages,
    archived_agents_refuse_updates_and_leave_listings,
    agents_list_in_pages_with_filters,
    concurrent_updates_make_one_version_each,
    environment_names_are_unique,
    environments_archive_and_list,
    api_keys_are_found_by_hash_and_revoked,
    vaults_update_archive_and_delete_with_their_credentials,
    credentials_keep_bindings_unique_and_list_in_pages,
    checkpoints_pin_the_first_key_and_flag_rollbacks,
    audit_events_filter_and_page,
    api_key_roles_are_stored_and_default_to_admin,
    console_sessions_expire_and_end_with_their_key,
    enrolled_agents_renew_list_and_revoke_once,
    concurrent_revocations_keep_one_time,
    join_tokens_claim_once_release_revoke_and_list,
    concurrent_claims_take_a_token_once,
);

#[tokio::test]
async fn data_survives_reopening_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite3");
    {
        let c = SqliteCatalog::open(&path).await.unwrap();
        c.create_agent(NewAgent {
            id: "agent_1".into(),
            body: json!({"name": "x"}),
        })
        .await
        .unwrap();
        c.update_agent("agent_1", 1, json!({"name": "y"}))
            .await
            .unwrap();
    }
    let c = SqliteCatalog::open(&path).await.unwrap();
    assert_eq!(
        c.get_agent("agent_1", Some(1)).await.unwrap().body,
        json!({"name": "x"})
    );
    assert_eq!(c.get_agent("agent_1", None).await.unwrap().version, 2);
    drop(c);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO catalog_migrations (version, applied_at) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let e = SqliteCatalog::open(&path).await.unwrap_err();
    assert!(
        matches!(e, CatalogError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );
}
