//! Conformance cases of [`catalog::JoinTokens`] (migration 6).

use std::sync::Arc;

use catalog::{Catalog, SharedJoinToken, TokenClaim, TokenRevocation};

use super::uid;

fn token(id: &str, created_at: i64) -> SharedJoinToken {
    SharedJoinToken {
        token_id: id.to_owned(),
        environment_id: "env_1".into(),
        created_at,
        expires_at: created_at + 600,
        used_at: None,
        used_by: None,
        revoked_at: None,
    }
}

/// Record (again: kept as first recorded), claim once (then used, naming
/// the agent), release only by the claimer, expiry and revocation refuse a
/// claim, a used token is not revoked, unknown hashes and ids answered as
/// such, list newest first.
pub async fn join_tokens_claim_once_release_revoke_and_list(c: Arc<dyn Catalog>) {
    let (h1, h2, h3) = (uid("hash"), uid("hash"), uid("hash"));
    let (t1, t2, t3) = (uid("tok"), uid("tok"), uid("tok"));
    c.record_join_token(&h1, token(&t1, 100)).await.unwrap();
    c.record_join_token(&h2, token(&t2, 200)).await.unwrap();
    c.record_join_token(&h3, token(&t3, 300)).await.unwrap();
    // Recording again changes nothing (not even a different expiry).
    let mut again = token(&t1, 100);
    again.expires_at = 1;
    c.record_join_token(&h1, again).await.unwrap();

    assert_eq!(
        c.claim_join_token(&uid("hash"), "agt_x", 150)
            .await
            .unwrap(),
        TokenClaim::Unknown
    );
    let TokenClaim::Claimed(got) = c.claim_join_token(&h1, "agt_a", 150).await.unwrap() else {
        panic!("first claim refused");
    };
    assert_eq!(
        (
            got.token_id.as_str(),
            got.environment_id.as_str(),
            got.expires_at
        ),
        (t1.as_str(), "env_1", 700)
    );
    assert_eq!(
        c.claim_join_token(&h1, "agt_b", 151).await.unwrap(),
        TokenClaim::Used {
            token_id: t1.clone(),
            used_by: "agt_a".into()
        }
    );
    // Only the claimer gives it back.
    assert!(!c.release_join_token(&h1, "agt_b").await.unwrap());
    assert!(c.release_join_token(&h1, "agt_a").await.unwrap());
    assert!(matches!(
        c.claim_join_token(&h1, "agt_b", 152).await.unwrap(),
        TokenClaim::Claimed(_)
    ));

    // Expired: at expires_at exactly.
    assert_eq!(
        c.claim_join_token(&h2, "agt_c", 800).await.unwrap(),
        TokenClaim::Expired {
            token_id: t2.clone()
        }
    );

    // Revoked once (the first time kept); then no claim.
    assert_eq!(
        c.revoke_join_token(&t3, 310).await.unwrap(),
        TokenRevocation::Revoked { revoked_at: 310 }
    );
    assert_eq!(
        c.revoke_join_token(&t3, 320).await.unwrap(),
        TokenRevocation::AlreadyRevoked { revoked_at: 310 }
    );
    assert_eq!(
        c.claim_join_token(&h3, "agt_d", 330).await.unwrap(),
        TokenClaim::Revoked {
            token_id: t3.clone()
        }
    );
    // A used token is not revoked.
    assert_eq!(
        c.revoke_join_token(&t1, 400).await.unwrap(),
        TokenRevocation::AlreadyUsed {
            used_by: "agt_b".into(),
            used_at: 152
        }
    );
    assert_eq!(
        c.revoke_join_token(&uid("tok"), 400).await.unwrap(),
        TokenRevocation::Unknown
    );

    let listed: Vec<(String, Option<String>, Option<i64>)> = c
        .list_join_tokens()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| [&t1, &t2, &t3].contains(&&t.token_id))
        .map(|t| (t.token_id, t.used_by, t.revoked_at))
        .collect();
    assert_eq!(
        listed,
        vec![
            (t3.clone(), None, Some(310)),
            (t2.clone(), None, None),
            (t1.clone(), Some("agt_b".into()), None),
        ]
    );
}

/// Eight replicas redeem one token at once: exactly one claim takes it, the
/// others are told who used it; a revocation racing the claims either
/// takes (and no claim does) or finds it used.
pub async fn concurrent_claims_take_a_token_once(c: Arc<dyn Catalog>) {
    for round in 0..2 {
        let (hash, id) = (uid("hash"), uid("tok"));
        c.record_join_token(&hash, token(&id, 100)).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..8 {
            let (c, hash) = (c.clone(), hash.clone());
            tasks.push(tokio::spawn(async move {
                c.claim_join_token(&hash, &format!("agt_{n}"), 200)
                    .await
                    .unwrap()
            }));
        }
        let revoke = (round == 1).then(|| {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.revoke_join_token(&id, 200).await.unwrap() })
        });
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                TokenClaim::Claimed(t) => winners.push(t.used_by.unwrap()),
                TokenClaim::Used { .. } | TokenClaim::Revoked { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        match revoke {
            None => assert_eq!(winners.len(), 1, "{winners:?}"),
            Some(r) => match r.await.unwrap() {
                TokenRevocation::Revoked { .. } => assert!(winners.is_empty(), "{winners:?}"),
                TokenRevocation::AlreadyUsed { used_by, .. } => assert_eq!(winners, vec![used_by]),
                other => panic!("{other:?}"),
            },
        }
    }
}
