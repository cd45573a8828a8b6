//! Conformance cases of [`catalog::EnrolledAgents`] (migration 5).

use std::sync::Arc;

use catalog::identities::Revocation;
use catalog::{Catalog, EnrolledAgent};

use super::uid;

fn agent(id: &str, env: &str, enrolled_at: i64) -> EnrolledAgent {
    EnrolledAgent {
        agent_id: id.to_owned(),
        environment_id: env.to_owned(),
        enrolled_at,
        enrolled_from: Some("127.0.0.1:5555".into()),
        cert_serial: "01".into(),
        cert_not_after: enrolled_at + 86_400,
        revoked_at: None,
    }
}

/// Enroll, renew (serial and expiry follow, the rest stays), list in
/// enrollment order, revoke once (the first time kept, never undone by a
/// later renewal record), unknown agents answered as such.
pub async fn enrolled_agents_renew_list_and_revoke_once(c: Arc<dyn Catalog>) {
    let (a, b) = (uid("agt"), uid("agt"));
    c.record_enrolled_agent(agent(&b, "env_2", 200))
        .await
        .unwrap();
    c.record_enrolled_agent(agent(&a, "env_1", 100))
        .await
        .unwrap();
    assert_eq!(
        c.enrolled_agent(&a).await.unwrap(),
        Some(agent(&a, "env_1", 100))
    );
    assert_eq!(c.enrolled_agent(&uid("agt")).await.unwrap(), None);

    // A renewal at another replica: new serial and expiry; environment,
    // enrollment time and origin are kept.
    let mut renewed = agent(&a, "env_other", 999);
    renewed.cert_serial = "02".into();
    renewed.cert_not_after = 5_000;
    renewed.enrolled_from = None;
    c.record_enrolled_agent(renewed).await.unwrap();
    let got = c.enrolled_agent(&a).await.unwrap().unwrap();
    assert_eq!(
        (
            got.environment_id.as_str(),
            got.enrolled_at,
            got.enrolled_from.as_deref()
        ),
        ("env_1", 100, Some("127.0.0.1:5555"))
    );
    assert_eq!(
        (got.cert_serial.as_str(), got.cert_not_after),
        ("02", 5_000)
    );

    let ids: Vec<String> = c
        .list_enrolled_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.agent_id)
        .filter(|x| *x == a || *x == b)
        .collect();
    assert_eq!(ids, [a.clone(), b.clone()], "oldest enrollment first");

    assert!(c.revoked_agent_ids().await.unwrap().is_empty());
    assert_eq!(
        c.revoke_enrolled_agent(&a, 300).await.unwrap(),
        Revocation::Revoked { revoked_at: 300 }
    );
    assert_eq!(
        c.revoke_enrolled_agent(&a, 400).await.unwrap(),
        Revocation::AlreadyRevoked { revoked_at: 300 }
    );
    assert_eq!(
        c.revoke_enrolled_agent(&uid("agt"), 400).await.unwrap(),
        Revocation::Unknown
    );
    // Recording it again (a late renewal mirror) does not undo it.
    c.record_enrolled_agent(agent(&a, "env_1", 100))
        .await
        .unwrap();
    assert_eq!(
        c.enrolled_agent(&a).await.unwrap().unwrap().revoked_at,
        Some(300)
    );
    assert_eq!(
        c.revoked_agent_ids().await.unwrap(),
        std::slice::from_ref(&a)
    );
}

/// Two replicas revoking one agent at once: one revocation, one time.
pub async fn concurrent_revocations_keep_one_time(c: Arc<dyn Catalog>) {
    let a = uid("agt");
    c.record_enrolled_agent(agent(&a, "env_1", 100))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for at in 1..=8i64 {
        let (c, a) = (c.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            c.revoke_enrolled_agent(&a, 1_000 + at).await.unwrap()
        }));
    }
    let mut newly = Vec::new();
    for t in tasks {
        if let Revocation::Revoked { revoked_at } = t.await.unwrap() {
            newly.push(revoked_at);
        }
    }
    assert_eq!(newly.len(), 1, "exactly one revocation took: {newly:?}");
    assert_eq!(
        c.enrolled_agent(&a).await.unwrap().unwrap().revoked_at,
        Some(newly[0])
    );
}
