//! The audit store: checkpoints (pinning, rollback and duplicate rules,
//! pages), agents' audit health, and audit events (filters, pages).

use std::sync::Arc;

use catalog::audit::{
    Actor, AuditEventQuery, CheckpointOutcome, CheckpointQuery, NewAuditEvent, NewCheckpoint,
    Outcome,
};
use catalog::{Catalog, CatalogError};
use time::OffsetDateTime;

use super::uid;

fn cp(agent: &str, key: &str, seq: u64, head: &str) -> NewCheckpoint {
    NewCheckpoint {
        id: uid("audcp"),
        agent_id: agent.to_owned(),
        seq,
        head: head.to_owned(),
        at: "2026-12-06T20:00:00Z".to_owned(),
        key_id: format!("id-{key}"),
        public_key: key.to_owned(),
        signature: format!("sig-{seq}"),
        received_at: OffsetDateTime::now_utc(),
    }
}

async fn stored(c: &dyn Catalog, new: NewCheckpoint) -> (bool, bool) {
    match c.record_checkpoint(new.clone()).await.unwrap() {
        CheckpointOutcome::Stored(r) => {
            assert_eq!(
                (r.id, r.seq, r.head, r.public_key),
                (new.id, new.seq, new.head, new.public_key)
            );
            (r.key_changed, r.rollback)
        }
        CheckpointOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

pub async fn checkpoints_pin_the_first_key_and_flag_rollbacks(c: Arc<dyn Catalog>) {
    let c = &*c;
    let agent = uid("agt");
    let other = uid("agt");
    assert!(c.audit_state(&agent).await.unwrap().is_none());
    assert_eq!(stored(c, cp(&agent, "k1", 10, "h10")).await, (false, false));
    assert_eq!(stored(c, cp(&agent, "k1", 20, "h20")).await, (false, false));
    // resent after a reconnect: not stored twice
    assert_eq!(
        c.record_checkpoint(cp(&agent, "k1", 20, "h20"))
            .await
            .unwrap(),
        CheckpointOutcome::Duplicate
    );
    // backwards, and the same seq with another head
    assert_eq!(stored(c, cp(&agent, "k1", 15, "h15")).await, (false, true));
    assert_eq!(
        stored(c, cp(&agent, "k1", 20, "other")).await,
        (false, true)
    );
    // another key: flagged; its own seq line
    assert_eq!(stored(c, cp(&agent, "k2", 1, "x1")).await, (true, false));
    assert_eq!(stored(c, cp(&agent, "k2", 2, "x2")).await, (true, false));
    // another agent is independent
    assert_eq!(stored(c, cp(&other, "k2", 1, "y1")).await, (false, false));

    let state = c.audit_state(&agent).await.unwrap().unwrap();
    assert_eq!(state.pinned_public_key.as_deref(), Some("k1"));
    assert_eq!(state.last_seq, Some(2));
    assert!(state.healthy);
    c.record_audit_health(
        &agent,
        false,
        Some("disk full".into()),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let state = c.audit_state(&agent).await.unwrap().unwrap();
    assert!(!state.healthy);
    assert_eq!(state.problem.as_deref(), Some("disk full"));
    assert_eq!(state.last_seq, Some(2), "health does not touch checkpoints");
    // health of an agent with no checkpoint yet
    let quiet = uid("agt");
    c.record_audit_health(&quiet, true, None, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let q = c.audit_state(&quiet).await.unwrap().unwrap();
    assert!(q.healthy && q.pinned_public_key.is_none() && q.last_seq.is_none());
    let states = c.audit_states().await.unwrap();
    assert!(
        states.iter().any(|s| s.agent_id == agent) && states.iter().any(|s| s.agent_id == quiet)
    );

    // pages, in the order received
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .list_checkpoints(
                &agent,
                CheckpointQuery {
                    after_id: after.clone(),
                    limit: 2,
                },
            )
            .await
            .unwrap();
        seen.extend(
            page.items
                .iter()
                .map(|r| (r.seq, r.head.clone(), r.key_changed, r.rollback)),
        );
        after = page.items.last().map(|r| r.id.clone());
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            (10, "h10".into(), false, false),
            (20, "h20".into(), false, false),
            (15, "h15".into(), false, true),
            (20, "other".into(), false, true),
            (1, "x1".into(), true, false),
            (2, "x2".into(), true, false),
        ]
    );
    let e = c
        .list_checkpoints(
            &agent,
            CheckpointQuery {
                after_id: Some("audcp_nope".into()),
                limit: 2,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Invalid { .. }), "{e}");
}

fn event(
    action: &str,
    actor: Actor,
    ids: &[&str],
    status: u16,
    at: OffsetDateTime,
) -> NewAuditEvent {
    NewAuditEvent {
        id: uid("audevt"),
        at,
        actor,
        remote_addr: Some("127.0.0.1:5555".into()),
        action: action.to_owned(),
        resource_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        status,
        outcome: if status < 400 {
            Outcome::Ok
        } else {
            Outcome::Error
        },
        request_id: Some(uid("req")),
    }
}

pub async fn audit_events_filter_and_page(c: Arc<dyn Catalog>) {
    let c = &*c;
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let sec = time::Duration::seconds(1);
    let k1 = Actor::ApiKey("key_1".into());
    let k2 = Actor::ApiKey("key_2".into());
    let all = vec![
        event("sessions.create", k1.clone(), &["sesn_a"], 200, t0),
        event("sessions.interrupt", k1.clone(), &["sesn_a"], 200, t0 + sec),
        event("vaults.create", k2.clone(), &["vlt_1"], 200, t0 + sec * 2),
        event(
            "credentials.update",
            k2.clone(),
            &["vlt_1", "vcrd_1"],
            400,
            t0 + sec * 3,
        ),
        event(
            "agents.revoke",
            Actor::Admin { uid: Some(1000) },
            &["agt_x"],
            200,
            t0 + sec * 4,
        ),
        event(
            "sessions.archive",
            k1.clone(),
            &["sesn_ab"],
            200,
            t0 + sec * 5,
        ),
    ];
    for e in &all {
        c.record_audit_event(e.clone()).await.unwrap();
    }
    let q = |f: &dyn Fn(&mut AuditEventQuery)| {
        let mut q = AuditEventQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let ids = |q: AuditEventQuery| async move {
        c.list_audit_events(q)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| r.event.id)
            .collect::<Vec<_>>()
    };
    let id = |i: usize| all[i].id.clone();
    // round trip
    let page = c.list_audit_events(q(&|_| {})).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>(),
        all
    );
    assert_eq!(
        ids(q(&|q| q.action = Some("sessions.interrupt".into()))).await,
        vec![id(1)]
    );
    // an exact id, not a prefix of another
    assert_eq!(
        ids(q(&|q| q.resource_id = Some("sesn_a".into()))).await,
        vec![id(0), id(1)]
    );
    assert_eq!(
        ids(q(&|q| q.resource_id = Some("vcrd_1".into()))).await,
        vec![id(3)]
    );
    assert_eq!(
        ids(q(&|q| q.api_key_id = Some("key_2".into()))).await,
        vec![id(2), id(3)]
    );
    assert_eq!(
        ids(q(&|q| q.outcome = Some(Outcome::Error))).await,
        vec![id(3)]
    );
    assert_eq!(
        ids(q(&|q| {
            q.since = Some(t0 + sec);
            q.until = Some(t0 + sec * 3);
        }))
        .await,
        vec![id(1), id(2)]
    );
    assert_eq!(
        ids(q(&|q| q.descending = true)).await,
        all.iter().rev().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    // pages of two with a filter, both orders
    for descending in [false, true] {
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = c
                .list_audit_events(AuditEventQuery {
                    after_id: after.clone(),
                    descending,
                    api_key_id: Some("key_1".into()),
                    limit: 2,
                    ..Default::default()
                })
                .await
                .unwrap();
            got.extend(page.items.iter().map(|r| r.event.id.clone()));
            after = page.items.last().map(|r| r.event.id.clone());
            if !page.has_more {
                break;
            }
        }
        let mut want = vec![id(0), id(1), id(5)];
        if descending {
            want.reverse();
        }
        assert_eq!(got, want);
    }
    let e = c
        .list_audit_events(q(&|q| q.after_id = Some("audevt_nope".into())))
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogError::Invalid { .. }), "{e}");
}
