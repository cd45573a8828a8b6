//! Conformance cases of key roles and console sessions (migration 4).

use std::sync::Arc;

use catalog::{Catalog, GeneratedKey, KeyRole, NewApiKey, NewConsoleSession};
use time::{Duration, OffsetDateTime};

use super::uid;

fn new_key(name: &str) -> (NewApiKey, GeneratedKey) {
    let key = GeneratedKey::generate();
    (
        NewApiKey {
            id: uid("key"),
            name: name.to_owned(),
            key_hash: key.key_hash.clone(),
            hint: key.hint.clone(),
        },
        key,
    )
}

pub async fn api_key_roles_are_stored_and_default_to_admin(c: Arc<dyn Catalog>) {
    let (admin, admin_key) = new_key("ops");
    let admin = c.create_api_key(admin).await.unwrap();
    assert_eq!(admin.role, KeyRole::Admin);
    let (reader, reader_key) = new_key("auditor");
    let reader = c
        .create_api_key_with_role(reader, KeyRole::ReadOnly)
        .await
        .unwrap();
    assert_eq!(reader.role, KeyRole::ReadOnly);
    let found = c.find_api_key(&reader_key.key_hash).await.unwrap().unwrap();
    assert_eq!(found.role, KeyRole::ReadOnly);
    assert_eq!(
        c.find_api_key(&admin_key.key_hash)
            .await
            .unwrap()
            .unwrap()
            .role,
        KeyRole::Admin
    );
    let listed = c.list_api_keys().await.unwrap();
    let roles: Vec<(String, KeyRole)> = listed
        .iter()
        .filter(|k| k.id == admin.id || k.id == reader.id)
        .map(|k| (k.id.clone(), k.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            (admin.id.clone(), KeyRole::Admin),
            (reader.id.clone(), KeyRole::ReadOnly)
        ]
    );
    // the same hash twice is a conflict, whatever the role
    let (mut dup, _) = new_key("dup");
    dup.key_hash = reader_key.key_hash.clone();
    assert!(matches!(
        c.create_api_key_with_role(dup, KeyRole::Admin).await,
        Err(catalog::CatalogError::Conflict { .. })
    ));
    assert_eq!(
        c.revoke_api_key(&reader.id).await.unwrap().role,
        KeyRole::ReadOnly
    );
}

pub async fn console_sessions_expire_and_end_with_their_key(c: Arc<dyn Catalog>) {
    let (key, _) = new_key("console <user>");
    let key = c
        .create_api_key_with_role(key, KeyRole::ReadOnly)
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let session = |hash: &str, expires: OffsetDateTime| NewConsoleSession {
        token_hash: hash.to_owned(),
        key_id: key.id.clone(),
        role: KeyRole::ReadOnly,
        csrf_token: "csrf-token".to_owned(),
        created_at: now,
        expires_at: expires,
    };
    let live = uid("live");
    let old = uid("old");
    c.create_console_session(session(&live, now + Duration::hours(1)))
        .await
        .unwrap();
    c.create_console_session(session(&old, now - Duration::seconds(1)))
        .await
        .unwrap();
    assert!(matches!(
        c.create_console_session(session(&live, now + Duration::hours(1)))
            .await,
        Err(catalog::CatalogError::Conflict { .. })
    ));
    let found = c.find_console_session(&live, now).await.unwrap().unwrap();
    assert_eq!(found.key_id, key.id);
    assert_eq!(found.key_name, "console <user>");
    assert_eq!(found.role, KeyRole::ReadOnly);
    assert_eq!(found.csrf_token, "csrf-token");
    assert_eq!(
        found.expires_at.unix_timestamp(),
        (now + Duration::hours(1)).unix_timestamp()
    );
    assert!(
        c.find_console_session(&old, now).await.unwrap().is_none(),
        "expired"
    );
    assert!(c
        .find_console_session(&uid("none"), now)
        .await
        .unwrap()
        .is_none());
    assert!(c
        .find_console_session(&live, now + Duration::hours(2))
        .await
        .unwrap()
        .is_none());
    assert!(c.delete_expired_console_sessions(now).await.unwrap() >= 1);
    // revoking the key ends its sessions
    c.revoke_api_key(&key.id).await.unwrap();
    assert!(
        c.find_console_session(&live, now).await.unwrap().is_none(),
        "key revoked"
    );
    c.delete_console_session(&live).await.unwrap();
    c.delete_console_session(&live).await.unwrap();
}
