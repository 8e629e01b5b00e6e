//! One suite for the session store on PostgreSQL and SQLite: sessions (idempotency, cursor
//! pages, tenant isolation, guarded transitions), plan versions, approval with steps, and the
//! agent queue — claim order critical > high > normal > low, holds for paused tenants and
//! sessions that are not running, leases, heartbeats, expiry and death, termination,
//! re-prioritisation, counts — plus artifacts and the event log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use liquid_cowork::domain::plan::StepState;
use liquid_cowork::domain::schedule::{AgentState, Priority, SessionState};
use liquid_cowork::store::SessionStore;
use liquid_cowork::store::sessions::{
    AgentRow, AgentSelector, ArtifactRow, EventRow, PlanRow, SessionRow, StepRow, StepUpdate,
};
use liquid_store::Database;
use liquid_testkit::postgres::TestDatabase;
use uuid::Uuid;

fn session(tenant: &str, key: Option<&str>) -> SessionRow {
    SessionRow {
        session_id: Uuid::now_v7(),
        tenant: tenant.into(),
        created_by: "u".into(),
        state: SessionState::Planning,
        title: "t".into(),
        request: "r".into(),
        workspace: "/w".into(),
        sandbox_id: Uuid::now_v7(),
        strategy: "auto".into(),
        plan_version: 0,
        planner: String::new(),
        error: None,
        idempotency_key: key.map(str::to_owned),
        created_ms: 1,
        updated_ms: 1,
        finished_ms: None,
    }
}

fn step(s: &SessionRow, key: &str, pos: i32) -> StepRow {
    StepRow {
        step_id: Uuid::now_v7(),
        session_id: s.session_id,
        tenant: s.tenant.clone(),
        plan_version: 1,
        plan_key: key.into(),
        position: pos,
        state: StepState::Pending,
        body: "{}".into(),
        attempts: 0,
        error: None,
        runner: None,
        summary: None,
        started_ms: None,
        finished_ms: None,
        updated_ms: 1,
    }
}

fn agent(st: &StepRow, priority: Priority, run_at_ms: i64) -> AgentRow {
    AgentRow {
        agent_id: Uuid::now_v7(),
        tenant: st.tenant.clone(),
        session_id: st.session_id,
        step_id: st.step_id,
        attempt: 1,
        max_attempts: 3,
        domain: "general".into(),
        priority,
        state: AgentState::Queued,
        run_at_ms,
        lease_owner: None,
        lease_expires_ms: None,
        heartbeat_ms: None,
        claim_id: None,
        runner: None,
        error: None,
        created_ms: 1,
        updated_ms: 1,
        finished_ms: None,
    }
}

async fn running_session(
    store: &Arc<dyn SessionStore>,
    tenant: &str,
    steps: usize,
) -> (SessionRow, Vec<StepRow>) {
    let s = session(tenant, None);
    assert!(store.insert_session(&s).await.unwrap());
    let plan = PlanRow {
        session_id: s.session_id,
        version: 1,
        source: "offline".into(),
        body: "{}".into(),
        feedback: None,
        created_ms: 2,
    };
    assert!(
        store
            .store_plan(
                tenant,
                &plan,
                "offline",
                SessionState::Planning,
                SessionState::AwaitingApproval
            )
            .await
            .unwrap()
    );
    let rows: Vec<StepRow> = (0..steps)
        .map(|i| step(&s, &format!("s{i}"), i as i32))
        .collect();
    assert!(
        store
            .approve(tenant, s.session_id, 1, None, &rows, 3)
            .await
            .unwrap()
    );
    (s, rows)
}

async fn suite(db: Database) {
    let store = liquid_cowork::store::sessions_for_database(&db);

    // Sessions: idempotency, isolation, pages, guarded transitions.
    let a = session("acme", Some("k1"));
    assert!(store.insert_session(&a).await.unwrap());
    assert!(
        !store
            .insert_session(&session("acme", Some("k1")))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_session(&session("other", Some("k1")))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .session_by_key("acme", "k1")
            .await
            .unwrap()
            .unwrap()
            .session_id,
        a.session_id
    );
    assert!(
        store
            .session("other", a.session_id)
            .await
            .unwrap()
            .is_none()
    );
    let b = session("acme", None);
    let c = session("acme", None);
    store.insert_session(&b).await.unwrap();
    store.insert_session(&c).await.unwrap();
    let page = store.sessions("acme", None, None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|s| s.session_id).collect::<Vec<_>>(),
        [c.session_id, b.session_id]
    );
    let rest = store
        .sessions("acme", None, Some(b.session_id), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|s| s.session_id).collect::<Vec<_>>(),
        [a.session_id]
    );
    assert!(
        !store
            .transition_session(
                "acme",
                a.session_id,
                &[SessionState::Running],
                SessionState::Paused,
                None,
                5
            )
            .await
            .unwrap(),
        "not running: nothing changes"
    );
    assert!(
        store
            .transition_session(
                "acme",
                a.session_id,
                &[SessionState::Planning, SessionState::AwaitingApproval],
                SessionState::Cancelled,
                Some("by hand"),
                5
            )
            .await
            .unwrap()
    );
    let got = store.session("acme", a.session_id).await.unwrap().unwrap();
    assert_eq!(got.state, SessionState::Cancelled);
    assert_eq!(got.finished_ms, Some(5));
    assert_eq!(got.error.as_deref(), Some("by hand"));
    assert_eq!(
        store
            .sessions("acme", Some(SessionState::Cancelled), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Plans and approval with steps.
    let (s1, steps) = running_session(&store, "acme", 4).await;
    let got = store.session("acme", s1.session_id).await.unwrap().unwrap();
    assert_eq!((got.state, got.plan_version), (SessionState::Running, 1));
    assert!(
        store
            .plan("acme", s1.session_id, 1)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .plan("other", s1.session_id, 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !store
            .approve("acme", s1.session_id, 1, None, &[], 4)
            .await
            .unwrap(),
        "approved once"
    );
    let listed = store.steps("acme", s1.session_id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| s.plan_key.as_str())
            .collect::<Vec<_>>(),
        ["s0", "s1", "s2", "s3"]
    );
    assert!(
        store
            .steps("other", s1.session_id)
            .await
            .unwrap()
            .is_empty()
    );

    // The queue: priorities, due times, holds.
    let agents = vec![
        agent(&steps[0], Priority::Low, 0),
        agent(&steps[1], Priority::Critical, 0),
        agent(&steps[2], Priority::Normal, 0),
        agent(&steps[3], Priority::High, i64::MAX / 2),
    ];
    let spawned = store
        .spawn_agents(&agents, &[StepState::Pending])
        .await
        .unwrap();
    assert_eq!(spawned.len(), 4);
    assert!(
        store
            .spawn_agents(&[agent(&steps[0], Priority::Low, 0)], &[StepState::Pending])
            .await
            .unwrap()
            .is_empty(),
        "a step that is no longer pending gets no second agent"
    );
    assert_eq!(
        store.steps("acme", s1.session_id).await.unwrap()[0].state,
        StepState::Queued
    );
    let counts = store.queue_counts("acme").await.unwrap();
    assert_eq!(
        (counts.queued, counts.running, counts.paused),
        (4, 0, false)
    );
    assert_eq!(counts.queued_by_priority["critical"], 1);
    let order: Vec<Uuid> = store
        .queued("acme", 10)
        .await
        .unwrap()
        .iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(
        order,
        [
            agents[1].agent_id,
            agents[3].agent_id,
            agents[2].agent_id,
            agents[0].agent_id
        ]
    );

    store.set_queue_paused("acme", true, 10).await.unwrap();
    assert!(
        store
            .claim_agents("w1", 1000, 10, 100)
            .await
            .unwrap()
            .is_empty(),
        "paused tenant"
    );
    assert!(store.queue_counts("acme").await.unwrap().paused);
    store.set_queue_paused("acme", false, 11).await.unwrap();
    store
        .transition_session(
            "acme",
            s1.session_id,
            &[SessionState::Running],
            SessionState::Paused,
            None,
            12,
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_agents("w1", 1000, 10, 100)
            .await
            .unwrap()
            .is_empty(),
        "paused session"
    );
    store
        .transition_session(
            "acme",
            s1.session_id,
            &[SessionState::Paused],
            SessionState::Running,
            None,
            13,
        )
        .await
        .unwrap();

    assert_eq!(
        store
            .reprioritize(
                "acme",
                AgentSelector::Agent(agents[0].agent_id),
                Priority::Critical,
                14
            )
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .reprioritize("other", AgentSelector::All, Priority::Low, 14)
            .await
            .unwrap(),
        0
    );
    let first = store.claim_agents("w1", 1000, 2, 100).await.unwrap();
    let ids: Vec<Uuid> = first.iter().map(|a| a.agent_id).collect();
    assert_eq!(
        ids,
        [agents[0].agent_id, agents[1].agent_id],
        "critical first, older first; the future one waits"
    );
    assert!(
        first
            .iter()
            .all(|a| a.state == AgentState::Running && a.lease_owner.as_deref() == Some("w1"))
    );
    assert_eq!(
        store
            .step("acme", steps[1].step_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        StepState::Running
    );
    let second = store.claim_agents("w2", 1000, 5, 100).await.unwrap();
    assert_eq!(
        second.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
        [agents[2].agent_id]
    );
    assert!(
        store
            .claim_agents("w2", 1000, 5, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Leases: heartbeat, finish, expiry, death, termination.
    assert!(
        store
            .heartbeat(agents[1].agent_id, "w1", 1000, 500)
            .await
            .unwrap()
    );
    assert!(
        !store
            .heartbeat(agents[1].agent_id, "w2", 1000, 500)
            .await
            .unwrap(),
        "not the holder"
    );
    assert!(
        store
            .finish_agent(agents[1].agent_id, "w1", AgentState::Succeeded, None, 600)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_agent(agents[1].agent_id, "w1", AgentState::Failed, None, 600)
            .await
            .unwrap()
    );
    let expired = store.expired_agents(1_200, 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
        [agents[0].agent_id, agents[2].agent_id]
    );
    assert!(
        store
            .mark_dead(agents[2].agent_id, 1_200, "silent")
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_dead(agents[2].agent_id, 1_200, "silent")
            .await
            .unwrap(),
        "once"
    );
    assert!(
        !store
            .heartbeat(agents[2].agent_id, "w2", 1000, 1_300)
            .await
            .unwrap(),
        "a dead agent must stop"
    );
    let killed = store
        .terminate_agents(
            "acme",
            AgentSelector::Session(s1.session_id),
            "cancelled",
            1_300,
        )
        .await
        .unwrap();
    assert_eq!(
        killed.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
        [agents[0].agent_id, agents[3].agent_id],
        "the running one and the queued one"
    );
    assert_eq!(
        store
            .agent("acme", agents[3].agent_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        AgentState::Terminated
    );
    assert!(
        store
            .agent("other", agents[3].agent_id)
            .await
            .unwrap()
            .is_none()
    );
    let by_state: std::collections::BTreeMap<String, i64> =
        store.count_agents().await.unwrap().into_iter().collect();
    assert_eq!(by_state["terminated"], 2);
    assert_eq!(by_state["dead"], 1);
    assert_eq!(by_state["succeeded"], 1);
    let listed = store
        .agents(
            "acme",
            Some(s1.session_id),
            Some(AgentState::Terminated),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let page = store
        .agents("acme", None, None, Some(listed[0].agent_id), 10)
        .await
        .unwrap();
    assert!(page.iter().all(|a| a.agent_id > listed[0].agent_id));

    // Steps move only from the states they are in.
    let upd = StepUpdate {
        from: vec![StepState::Running],
        to: StepState::Succeeded,
        error: None,
        runner: Some("platform".into()),
        summary: Some("done".into()),
        at_ms: 1_400,
    };
    assert!(store.update_step(steps[1].step_id, &upd).await.unwrap());
    assert!(!store.update_step(steps[1].step_id, &upd).await.unwrap());
    let st = store.step("acme", steps[1].step_id).await.unwrap().unwrap();
    assert_eq!(
        (st.state, st.finished_ms, st.summary.as_deref()),
        (StepState::Succeeded, Some(1_400), Some("done"))
    );

    // Artifacts and events.
    let art = ArtifactRow {
        artifact_id: Uuid::now_v7(),
        tenant: "acme".into(),
        session_id: s1.session_id,
        step_id: steps[1].step_id,
        agent_id: agents[1].agent_id,
        kind: "patch".into(),
        name: "step.patch".into(),
        media_type: "text/x-diff".into(),
        encoding: "utf-8".into(),
        size: 3,
        sha256: "ab".into(),
        content: "+x\n".into(),
        truncated: false,
        created_ms: 1_500,
    };
    store
        .insert_artifacts(std::slice::from_ref(&art))
        .await
        .unwrap();
    assert_eq!(
        store.artifacts("acme", s1.session_id, None).await.unwrap(),
        std::slice::from_ref(&art)
    );
    assert!(
        store
            .artifacts("acme", s1.session_id, Some(steps[0].step_id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .artifacts("other", s1.session_id, None)
            .await
            .unwrap()
            .is_empty()
    );
    let e1 = EventRow {
        event_id: Uuid::now_v7(),
        tenant: "acme".into(),
        session_id: s1.session_id,
        kind: "session:created".into(),
        data: "{}".into(),
        at_ms: 1,
    };
    let e2 = EventRow {
        event_id: Uuid::now_v7(),
        kind: "plan:generated".into(),
        ..e1.clone()
    };
    store.insert_event(&e1).await.unwrap();
    store.insert_event(&e2).await.unwrap();
    assert_eq!(
        store.events("acme", s1.session_id, None, 10).await.unwrap(),
        [e1.clone(), e2.clone()]
    );
    assert_eq!(
        store
            .events("acme", s1.session_id, Some(e1.event_id), 10)
            .await
            .unwrap(),
        [e2]
    );
    assert!(
        store
            .events("other", s1.session_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let sessions: std::collections::BTreeMap<String, i64> =
        store.count_sessions().await.unwrap().into_iter().collect();
    assert_eq!(sessions["running"], 1);
    assert_eq!(
        store
            .sessions_in_state(SessionState::Planning, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn the_session_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(support::sqlite(dir.path()).await).await;
}

#[tokio::test]
async fn the_session_store_on_postgres() {
    let test_db = TestDatabase::create().await.unwrap();
    let db = Database::connect(test_db.url()).await.unwrap();
    db.migrate(&liquid_cowork::MIGRATIONS).await.unwrap();
    suite(db.clone()).await;
    db.close().await;
    test_db.drop_db().await.unwrap();
}
