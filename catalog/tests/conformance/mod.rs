//! One conformance suite for every [`Catalog`] implementation. Each test
//! file builds a fresh, empty catalog per test and invokes
//! [`conformance_tests!`].
#![allow(dead_code)]

use std::sync::Arc;

use catalog::{
    AgentQuery, Catalog, CatalogError, EnvironmentQuery, GeneratedKey, NewAgent, NewApiKey,
    NewEnvironment, Order, VersionQuery,
};
use serde_json::json;

mod audit;
mod console;
mod identities;
mod join_tokens;
mod vaults;
pub use audit::*;
pub use console::*;
pub use identities::*;
pub use join_tokens::*;
pub use vaults::*;

/// Generates one `#[tokio::test]` per suite case; `$fixture` is an async fn
/// returning `Option<F>` where `F: Fixture` (None: skipped).
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(f) = $fixture().await else { return };
                conformance::$case(f.catalog()).await;
                f.finish().await;
            }
        )*
    };
}

/// What each backend's test file provides.
pub trait Fixture {
    /// The catalog under test.
    fn catalog(&self) -> Arc<dyn Catalog>;
    /// Cleanup after the case (drop a schema...).
    fn finish(self) -> impl std::future::Future<Output = ()>;
}

pub(crate) fn uid(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn key(name: &str) -> (GeneratedKey, NewApiKey) {
    let k = GeneratedKey::generate();
    let new = NewApiKey {
        id: uid("key"),
        name: name.to_owned(),
        key_hash: k.key_hash.clone(),
        hint: k.hint.clone(),
    };
    (k, new)
}

async fn env(c: &dyn Catalog, name: &str) -> catalog::EnvironmentRecord {
    c.create_environment(NewEnvironment {
        id: uid("env"),
        name: name.to_owned(),
        body: json!({"name": name, "config": {"type": "self_hosted"}}),
    })
    .await
    .unwrap()
}

pub async fn agent_versions_are_immutable(c: Arc<dyn Catalog>) {
    let id = uid("agent");
    let v1 = c
        .create_agent(NewAgent {
            id: id.clone(),
            body: json!({"name": "a", "n": 1}),
        })
        .await
        .unwrap();
    assert_eq!((v1.version, v1.latest_version), (1, 1));
    assert_eq!(v1.body, json!({"name": "a", "n": 1}));
    assert_eq!(v1.created_at, v1.updated_at);
    let v2 = c
        .update_agent(&id, 1, json!({"name": "a", "n": 2}))
        .await
        .unwrap();
    assert_eq!((v2.version, v2.latest_version), (2, 2));
    assert_eq!(v2.created_at, v1.created_at);
    assert!(v2.updated_at >= v1.updated_at);
    assert_eq!(v2.position, v1.position);
    // version 1 is unchanged; latest is 2
    let old = c.get_agent(&id, Some(1)).await.unwrap();
    assert_eq!(old.body, json!({"name": "a", "n": 1}));
    assert_eq!((old.version, old.latest_version), (1, 2));
    assert_eq!(c.get_agent(&id, None).await.unwrap().body["n"], json!(2));
    // an update based on a stale version is refused and stores nothing
    let e = c.update_agent(&id, 1, json!({"n": 3})).await.unwrap_err();
    assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains(&id), "{e}");
    assert_eq!(c.get_agent(&id, None).await.unwrap().version, 2);
    // unknown version and unknown agent name what was missing
    let e = c.get_agent(&id, Some(9)).await.unwrap_err();
    assert!(
        matches!(e, CatalogError::NotFound { .. }) && e.to_string().contains("version 9"),
        "{e}"
    );
    let e = c.get_agent("agent_nope", None).await.unwrap_err();
    assert!(
        matches!(e, CatalogError::NotFound { .. }) && e.to_string().contains("agent_nope"),
        "{e}"
    );
    let e = c
        .update_agent("agent_nope", 1, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
    // a duplicate id is a conflict
    let e = c
        .create_agent(NewAgent {
            id: id.clone(),
            body: json!({}),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
}

pub async fn agent_versions_list_in_pages(c: Arc<dyn Catalog>) {
    let id = uid("agent");
    c.create_agent(NewAgent {
        id: id.clone(),
        body: json!({"n": 1}),
    })
    .await
    .unwrap();
    for v in 1..5u64 {
        c.update_agent(&id, v, json!({"n": v + 1})).await.unwrap();
    }
    let p1 = c
        .list_agent_versions(
            &id,
            VersionQuery {
                order: Order::Descending,
                after_version: None,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p1.items.iter().map(|r| r.version).collect::<Vec<_>>(),
        [5, 4]
    );
    assert!(p1.has_more);
    assert!(p1.items.iter().all(|r| r.latest_version == 5));
    let p2 = c
        .list_agent_versions(
            &id,
            VersionQuery {
                order: Order::Descending,
                after_version: Some(4),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p2.items.iter().map(|r| r.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert!(!p2.has_more);
    assert_eq!(p2.items[2].body, json!({"n": 1}));
    let asc = c
        .list_agent_versions(
            &id,
            VersionQuery {
                order: Order::Ascending,
                after_version: Some(3),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        asc.items.iter().map(|r| r.version).collect::<Vec<_>>(),
        [4, 5]
    );
    let e = c
        .list_agent_versions("agent_nope", VersionQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
}

pub async fn archived_agents_refuse_updates_and_leave_listings(c: Arc<dyn Catalog>) {
    let id = uid("agent");
    c.create_agent(NewAgent {
        id: id.clone(),
        body: json!({}),
    })
    .await
    .unwrap();
    let a = c.archive_agent(&id).await.unwrap();
    let at = a.archived_at.expect("archived_at set");
    // archiving again keeps the first time
    assert_eq!(c.archive_agent(&id).await.unwrap().archived_at, Some(at));
    let e = c.update_agent(&id, 1, json!({})).await.unwrap_err();
    assert!(matches!(e, CatalogError::Archived { .. }), "{e}");
    let ids = |p: catalog::Page<catalog::AgentRecord>| {
        p.items.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert!(!ids(c
        .list_agents(AgentQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap())
    .contains(&id));
    assert!(ids(c
        .list_agents(AgentQuery {
            limit: 100,
            include_archived: true,
            ..Default::default()
        })
        .await
        .unwrap())
    .contains(&id));
    let e = c.archive_agent("agent_nope").await.unwrap_err();
    assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
}

pub async fn agents_list_in_pages_with_filters(c: Arc<dyn Catalog>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = uid("agent");
        let r = c
            .create_agent(NewAgent {
                id: id.clone(),
                body: json!({"i": i}),
            })
            .await
            .unwrap();
        if i == 1 {
            c.update_agent(&id, 1, json!({"i": 1, "updated": true}))
                .await
                .unwrap();
        }
        ids.push((id, r.created_at, r.position));
    }
    let q = AgentQuery {
        limit: 2,
        ..Default::default()
    };
    let p1 = c.list_agents(q.clone()).await.unwrap();
    assert_eq!(
        p1.items.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [ids[4].0.clone(), ids[3].0.clone()]
    );
    assert!(p1.has_more);
    let mut all: Vec<String> = p1.items.iter().map(|r| r.id.clone()).collect();
    let mut after = p1.items.last().map(|r| r.position);
    loop {
        let p = c
            .list_agents(AgentQuery {
                after_position: after,
                ..q.clone()
            })
            .await
            .unwrap();
        all.extend(p.items.iter().map(|r| r.id.clone()));
        after = p.items.last().map(|r| r.position);
        if !p.has_more {
            break;
        }
    }
    let expect: Vec<String> = ids.iter().rev().map(|i| i.0.clone()).collect();
    assert_eq!(all, expect);
    // the listing shows latest versions
    let p = c
        .list_agents(AgentQuery {
            order: Order::Ascending,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.items[1].body, json!({"i": 1, "updated": true}));
    assert_eq!(p.items[1].version, 2);
    // created_at filters are inclusive
    let p = c
        .list_agents(AgentQuery {
            order: Order::Ascending,
            created_at_gte: Some(ids[2].1),
            created_at_lte: Some(ids[3].1),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<String> = p.items.iter().map(|r| r.id.clone()).collect();
    assert!(
        got.contains(&ids[2].0) && got.contains(&ids[3].0),
        "{got:?}"
    );
    assert!(
        p.items
            .iter()
            .all(|r| r.created_at >= ids[2].1 && r.created_at <= ids[3].1),
        "{got:?}"
    );
    assert!(!got.contains(&ids[0].0), "{got:?}");
    let e = c
        .list_agents(AgentQuery {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Invalid { .. }), "{e}");
}

pub async fn concurrent_updates_make_one_version_each(c: Arc<dyn Catalog>) {
    let id = uid("agent");
    c.create_agent(NewAgent {
        id: id.clone(),
        body: json!({}),
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            c.update_agent(&id, 1, json!({"writer": i})).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.version, 2);
                ok += 1;
            }
            Err(CatalogError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one update based on version 1 wins");
    assert_eq!(c.get_agent(&id, None).await.unwrap().version, 2);
}

pub async fn environment_names_are_unique(c: Arc<dyn Catalog>) {
    let name = uid("name");
    let e1 = env(&*c, &name).await;
    assert_eq!(e1.name, name);
    assert_eq!(e1.created_at, e1.updated_at);
    let err = c
        .create_environment(NewEnvironment {
            id: uid("env"),
            name: name.clone(),
            body: json!({}),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::Conflict { .. }) && err.to_string().contains(&name),
        "{err}"
    );
    let other = env(&*c, &uid("name")).await;
    let err = c
        .update_environment(&other.id, &name, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err}");
    // keeping its own name is fine
    let same = c
        .update_environment(&e1.id, &name, json!({"description": "d"}))
        .await
        .unwrap();
    assert_eq!(same.body, json!({"description": "d"}));
    assert!(same.updated_at >= e1.updated_at);
    // a deleted environment frees its name
    c.delete_environment(&e1.id).await.unwrap();
    let err = c.get_environment(&e1.id).await.unwrap_err();
    assert!(
        matches!(err, CatalogError::NotFound { .. }) && err.to_string().contains(&e1.id),
        "{err}"
    );
    let err = c.delete_environment(&e1.id).await.unwrap_err();
    assert!(matches!(err, CatalogError::NotFound { .. }), "{err}");
    c.update_environment(&other.id, &name, json!({}))
        .await
        .unwrap();
    assert_eq!(c.get_environment(&other.id).await.unwrap().name, name);
}

pub async fn environments_archive_and_list(c: Arc<dyn Catalog>) {
    let a = env(&*c, &uid("a")).await;
    let b = env(&*c, &uid("b")).await;
    let d = env(&*c, &uid("c")).await;
    let archived = c.archive_environment(&b.id).await.unwrap();
    let at = archived.archived_at.expect("archived");
    assert_eq!(
        c.archive_environment(&b.id).await.unwrap().archived_at,
        Some(at)
    );
    let err = c
        .update_environment(&b.id, &b.name, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Archived { .. }), "{err}");
    let live = c
        .list_environments(EnvironmentQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = live.items.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [d.id.clone(), a.id.clone()]);
    let p1 = c
        .list_environments(EnvironmentQuery {
            include_archived: true,
            order: Order::Ascending,
            limit: 2,
            after_position: None,
        })
        .await
        .unwrap();
    assert_eq!(
        p1.items.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [a.id.clone(), b.id.clone()]
    );
    assert!(p1.has_more);
    let p2 = c
        .list_environments(EnvironmentQuery {
            include_archived: true,
            order: Order::Ascending,
            limit: 2,
            after_position: Some(p1.items[1].position),
        })
        .await
        .unwrap();
    assert_eq!(
        p2.items.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&d.id)
    );
    assert!(!p2.has_more);
}

pub async fn api_keys_are_found_by_hash_and_revoked(c: Arc<dyn Catalog>) {
    let (k, new) = key("ops");
    let rec = c.create_api_key(new.clone()).await.unwrap();
    assert_eq!(rec.name, "ops");
    assert!(rec.revoked_at.is_none());
    assert!(
        !format!("{new:?}").contains(&new.key_hash),
        "debug output hides the hash"
    );
    let found = c
        .find_api_key(&catalog::hash_api_key(&k.plaintext))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, rec.id);
    assert!(c
        .find_api_key(&catalog::hash_api_key("sk-airlock-wrong"))
        .await
        .unwrap()
        .is_none());
    // the same hash twice is a conflict
    let dup = NewApiKey {
        id: uid("key"),
        ..new.clone()
    };
    let e = c.create_api_key(dup).await.unwrap_err();
    assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
    let (_, second) = key("ci");
    c.create_api_key(second.clone()).await.unwrap();
    let all = c.list_api_keys().await.unwrap();
    assert_eq!(
        all.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        [rec.id.clone(), second.id.clone()]
    );
    let revoked = c.revoke_api_key(&rec.id).await.unwrap();
    let at = revoked.revoked_at.expect("revoked");
    assert_eq!(
        c.revoke_api_key(&rec.id).await.unwrap().revoked_at,
        Some(at)
    );
    let found = c.find_api_key(&k.key_hash).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(at));
    let e = c.revoke_api_key("key_nope").await.unwrap_err();
    assert!(
        matches!(e, CatalogError::NotFound { .. }) && e.to_string().contains("key_nope"),
        "{e}"
    );
}
