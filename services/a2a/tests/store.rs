//! The task store suite: the same assertions on a fresh PostgreSQL database and a fresh SQLite
//! file. Creation with idempotent message ids, optimistic appends, event logs, listing with
//! filters and cursors, tenancy, eviction, push config caps and task owner leases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{Duration, Utc};
use liquid_a2a::pb::{self, stream_response::Payload};
use liquid_a2a::timestamp::Timestamp;
use liquid_a2a_service::domain::cursor::Cursor;
use liquid_a2a_service::store::{self, Appended, Created, TaskQuery, TaskStore};
use liquid_store::Database;
use liquid_testkit::postgres::TestDatabase;

struct Backend {
    store: Arc<dyn TaskStore>,
    url: String,
    _postgres: Option<TestDatabase>,
    _dir: Option<tempfile::TempDir>,
}

async fn open(url: &str) -> Arc<dyn TaskStore> {
    let db = Database::connect(url).await.unwrap();
    db.migrate(&liquid_a2a_service::MIGRATIONS).await.unwrap();
    store::open(&db)
}

async fn postgres() -> Backend {
    let fixture = TestDatabase::create().await.unwrap();
    Backend {
        store: open(fixture.url()).await,
        url: fixture.url().to_owned(),
        _postgres: Some(fixture),
        _dir: None,
    }
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/a2a.db", dir.path().display());
    Backend {
        store: open(&url).await,
        url,
        _postgres: None,
        _dir: Some(dir),
    }
}

fn task(id: &str, context: &str, state: pb::TaskState, at: &str) -> pb::Task {
    pb::Task {
        id: id.into(),
        context_id: context.into(),
        status: Some(pb::TaskStatus {
            state: state as i32,
            message: None,
            timestamp: Timestamp::parse(at),
        }),
        ..Default::default()
    }
}

fn snapshot(t: &pb::Task) -> pb::StreamResponse {
    pb::StreamResponse {
        payload: Some(Payload::Task(t.clone())),
    }
}

async fn create_is_idempotent_by_message_id(b: &Backend) {
    let s = b.store.as_ref();
    let t = task("t1", "c1", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
    assert_eq!(
        s.create("ten", "agent", "m1", &t, &snapshot(&t))
            .await
            .unwrap(),
        Created::New
    );
    let other = task("t2", "c1", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
    assert_eq!(
        s.create("ten", "agent", "m1", &other, &snapshot(&other))
            .await
            .unwrap(),
        Created::Existing("t1".into())
    );
    assert!(s.load("ten", "t2").await.unwrap().is_none());
    // Another tenant or agent may use the same message id.
    assert_eq!(
        s.create("ten2", "agent", "m1", &other, &snapshot(&other))
            .await
            .unwrap(),
        Created::New
    );
    let loaded = s.load("ten", "t1").await.unwrap().unwrap();
    assert_eq!(
        (loaded.task, loaded.agent.as_str(), loaded.seq),
        (t, "agent", 1)
    );
    assert!(s.load("other-tenant", "t1").await.unwrap().is_none());
    assert_eq!(
        s.task_for_message("ten", "agent", "m1")
            .await
            .unwrap()
            .as_deref(),
        Some("t1")
    );
    assert_eq!(
        s.record_message("ten", "agent", "m2", "t1").await.unwrap(),
        Created::New
    );
    assert_eq!(
        s.record_message("ten", "agent", "m2", "t1").await.unwrap(),
        Created::Existing("t1".into())
    );
}

async fn appends_are_sequenced_and_optimistic(b: &Backend) {
    let s = b.store.as_ref();
    let mut t = task("t1", "c1", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
    s.create("ten", "agent", "m1", &t, &snapshot(&t))
        .await
        .unwrap();
    t.status.as_mut().unwrap().state = pb::TaskState::Working as i32;
    let ev = pb::StreamResponse {
        payload: Some(Payload::StatusUpdate(pb::TaskStatusUpdateEvent {
            task_id: "t1".into(),
            context_id: "c1".into(),
            status: t.status.clone(),
            metadata: None,
        })),
    };
    assert_eq!(
        s.append("ten", "t1", 1, &t, Some(&ev), None).await.unwrap(),
        Appended::At(2)
    );
    // A writer that read sequence 1 loses.
    assert_eq!(
        s.append("ten", "t1", 1, &t, Some(&ev), None).await.unwrap(),
        Appended::Conflict
    );
    // A snapshot-only write keeps the sequence.
    t.history.push(pb::Message {
        message_id: "m2".into(),
        ..Default::default()
    });
    assert_eq!(
        s.append("ten", "t1", 2, &t, None, None).await.unwrap(),
        Appended::At(2)
    );
    assert_eq!(
        s.append("other", "t1", 2, &t, Some(&ev), None)
            .await
            .unwrap(),
        Appended::Conflict
    );
    let events = s.events_after("ten", "t1", 0).await.unwrap();
    assert_eq!(events.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(events[1].1, ev);
    assert_eq!(s.events_after("ten", "t1", 2).await.unwrap(), vec![]);
    assert_eq!(s.load("ten", "t1").await.unwrap().unwrap().task, t);
}

async fn listing_filters_and_pages(b: &Backend) {
    let s = b.store.as_ref();
    for i in 0..7 {
        let state = if i % 2 == 0 {
            pb::TaskState::Completed
        } else {
            pb::TaskState::Working
        };
        let ctx = if i < 4 { "ca" } else { "cb" };
        let t = task(
            &format!("t{i}"),
            ctx,
            state,
            &format!("2026-05-01T10:00:0{i}Z"),
        );
        s.create("ten", "agent", &format!("m{i}"), &t, &snapshot(&t))
            .await
            .unwrap();
    }
    let other = task("x", "ca", pb::TaskState::Completed, "2026-05-01T11:00:00Z");
    s.create("ten", "other-agent", "mx", &other, &snapshot(&other))
        .await
        .unwrap();
    s.create("ten2", "agent", "mx", &other, &snapshot(&other))
        .await
        .unwrap();

    let mut q = TaskQuery {
        agent: "agent".into(),
        limit: 3,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = s.list("ten", &q).await.unwrap();
        assert_eq!(page.total, 7);
        seen.extend(page.tasks.iter().map(|(t, _)| t.id.clone()));
        if page.tasks.len() < 3 {
            break;
        }
        q.after = page.tasks.last().map(|(_, c)| c.clone());
    }
    // Newest status first, every task exactly once.
    assert_eq!(seen, ["t6", "t5", "t4", "t3", "t2", "t1", "t0"]);

    let q = TaskQuery {
        agent: "agent".into(),
        context_id: "ca".into(),
        state: pb::TaskState::Completed as i32,
        limit: 10,
        ..Default::default()
    };
    let page = s.list("ten", &q).await.unwrap();
    assert_eq!(
        page.tasks
            .iter()
            .map(|(t, _)| t.id.as_str())
            .collect::<Vec<_>>(),
        ["t2", "t0"]
    );
    assert_eq!(page.total, 2);

    let q = TaskQuery {
        agent: "agent".into(),
        status_after: Timestamp::parse("2026-05-01T10:00:05Z").and_then(|t| t.to_datetime()),
        limit: 10,
        ..Default::default()
    };
    let page = s.list("ten", &q).await.unwrap();
    assert_eq!(
        page.tasks
            .iter()
            .map(|(t, _)| t.id.as_str())
            .collect::<Vec<_>>(),
        ["t6", "t5"]
    );
    let cursor = &page.tasks[0].1;
    assert_eq!(Cursor::decode(&cursor.encode()).as_ref(), Some(cursor));
}

async fn eviction_removes_expired_tasks_with_their_logs(b: &Backend) {
    let s = b.store.as_ref();
    let t = task("old", "c", pb::TaskState::Completed, "2026-05-01T10:00:00Z");
    s.create("ten", "agent", "m-old", &t, &snapshot(&t))
        .await
        .unwrap();
    s.append(
        "ten",
        "old",
        1,
        &t,
        None,
        Some(Utc::now() - Duration::seconds(1)),
    )
    .await
    .unwrap();
    let keep = task("new", "c", pb::TaskState::Completed, "2026-05-01T10:00:00Z");
    s.create("ten", "agent", "m-new", &keep, &snapshot(&keep))
        .await
        .unwrap();
    s.append(
        "ten",
        "new",
        1,
        &keep,
        None,
        Some(Utc::now() + Duration::hours(1)),
    )
    .await
    .unwrap();
    s.put_push_config(
        "ten",
        &pb::TaskPushNotificationConfig {
            task_id: "old".into(),
            id: "p".into(),
            url: "https://e.example/h".into(),
            ..Default::default()
        },
        5,
    )
    .await
    .unwrap();
    assert_eq!(s.evict_expired(Utc::now()).await.unwrap(), 1);
    assert!(s.load("ten", "old").await.unwrap().is_none());
    assert!(s.events_after("ten", "old", 0).await.unwrap().is_empty());
    assert!(s.list_push_configs("ten", "old").await.unwrap().is_empty());
    assert_eq!(
        s.task_for_message("ten", "agent", "m-old").await.unwrap(),
        None
    );
    assert!(s.load("ten", "new").await.unwrap().is_some());
}

async fn push_configs_are_capped_and_scoped(b: &Backend) {
    let s = b.store.as_ref();
    let t = task("t", "c", pb::TaskState::Working, "2026-05-01T10:00:00Z");
    s.create("ten", "agent", "m", &t, &snapshot(&t))
        .await
        .unwrap();
    let cfg = |id: &str| pb::TaskPushNotificationConfig {
        task_id: "t".into(),
        id: id.into(),
        url: format!("https://client.example/{id}"),
        token: "tok".into(),
        authentication: Some(pb::AuthenticationInfo {
            scheme: "Bearer".into(),
            credentials: "c".into(),
        }),
        ..Default::default()
    };
    assert!(s.put_push_config("ten", &cfg("a"), 2).await.unwrap());
    assert!(s.put_push_config("ten", &cfg("b"), 2).await.unwrap());
    assert!(!s.put_push_config("ten", &cfg("c"), 2).await.unwrap());
    // Replacing an existing id is not a new config.
    assert!(s.put_push_config("ten", &cfg("a"), 2).await.unwrap());
    assert_eq!(
        s.get_push_config("ten", "t", "a").await.unwrap(),
        Some(cfg("a"))
    );
    assert_eq!(s.get_push_config("other", "t", "a").await.unwrap(), None);
    assert_eq!(s.list_push_configs("ten", "t").await.unwrap().len(), 2);
    assert!(s.delete_push_config("ten", "t", "a").await.unwrap());
    assert!(!s.delete_push_config("ten", "t", "a").await.unwrap());
    assert_eq!(
        s.list_push_configs("ten", "t").await.unwrap(),
        vec![cfg("b")]
    );
}

async fn push_configs_page_by_cursor(b: &Backend) {
    let s = b.store.as_ref();
    let t = task("t", "c", pb::TaskState::Working, "2026-05-01T10:00:00Z");
    s.create("ten", "agent", "m", &t, &snapshot(&t))
        .await
        .unwrap();
    let mut ids: Vec<String> = (0..5).map(|i| format!("cfg-{i}")).collect();
    for id in &ids {
        let cfg = pb::TaskPushNotificationConfig {
            task_id: "t".into(),
            id: id.clone(),
            url: format!("https://client.example/{id}"),
            ..Default::default()
        };
        assert!(s.put_push_config("ten", &cfg, 10).await.unwrap());
    }
    // Pages of two (asking for one more, as the handler does), each after the last cursor.
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let mut page = s
            .list_push_configs_page("ten", "t", after.as_ref(), 3)
            .await
            .unwrap();
        pages += 1;
        let more = page.len() > 2;
        page.truncate(2);
        after = page.last().map(|(_, c)| c.clone());
        seen.extend(page.into_iter().map(|(c, _)| c.id));
        if !more {
            break;
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    // A cursor of the decoded form round-trips, and another tenant sees nothing.
    let first = s
        .list_push_configs_page("ten", "t", None, 1)
        .await
        .unwrap()
        .remove(0)
        .1;
    let decoded = Cursor::decode(&first.encode()).unwrap();
    assert_eq!(
        s.list_push_configs_page("ten", "t", Some(&decoded), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(
        s.list_push_configs_page("other", "t", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn step(id: &str, k: i64) -> pb::StreamResponse {
    pb::StreamResponse {
        payload: Some(Payload::StatusUpdate(pb::TaskStatusUpdateEvent {
            task_id: id.into(),
            context_id: format!("step-{k}"),
            status: None,
            metadata: None,
        })),
    }
}

/// Many tasks written at once (their writes share transactions): every task's log holds its
/// events in order with consecutive sequence numbers, a stale writer still loses, and of two
/// concurrent creates with one message id exactly one wins.
async fn concurrent_writes_keep_every_log_in_order(b: &Backend) {
    let writers = (0..40).map(|i| {
        let s = b.store.clone();
        async move {
            let id = format!("t{i}");
            let mut t = task(&id, "c", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
            assert_eq!(
                s.create("ten", "agent", &format!("m{i}"), &t, &snapshot(&t))
                    .await
                    .unwrap(),
                Created::New
            );
            for k in 2..=6 {
                t.history.push(pb::Message {
                    message_id: format!("h{k}"),
                    ..Default::default()
                });
                assert_eq!(
                    s.append("ten", &id, k - 1, &t, Some(&step(&id, k)), None)
                        .await
                        .unwrap(),
                    Appended::At(k)
                );
                assert_eq!(
                    s.append("ten", &id, k - 1, &t, Some(&step(&id, k)), None)
                        .await
                        .unwrap(),
                    Appended::Conflict
                );
            }
            t
        }
    });
    let dup = |n: &str| {
        let s = b.store.clone();
        let t = task(n, "c", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
        async move {
            s.create("ten", "agent", "dup", &t, &snapshot(&t))
                .await
                .unwrap()
        }
    };
    let (tasks, first, second) = tokio::join!(
        futures_util::future::join_all(writers),
        dup("d1"),
        dup("d2")
    );
    for (i, t) in tasks.into_iter().enumerate() {
        let id = format!("t{i}");
        let loaded = b.store.load("ten", &id).await.unwrap().unwrap();
        assert_eq!((loaded.task, loaded.seq), (t, 6));
        let events = b.store.events_after("ten", &id, 0).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        for (n, event) in events.into_iter().skip(1) {
            assert_eq!(event, step(&id, n));
        }
    }
    let winner = b
        .store
        .task_for_message("ten", "agent", "dup")
        .await
        .unwrap()
        .unwrap();
    let loser = if winner == "d1" { "d2" } else { "d1" };
    let mut outcomes = [first, second];
    outcomes.sort_by_key(|c| matches!(c, Created::New));
    assert_eq!(outcomes, [Created::Existing(winner.clone()), Created::New]);
    assert!(b.store.load("ten", loser).await.unwrap().is_none());
}

/// A status update event of `t`.
fn status_event(t: &pb::Task) -> pb::StreamResponse {
    pb::StreamResponse {
        payload: Some(Payload::StatusUpdate(pb::TaskStatusUpdateEvent {
            task_id: t.id.clone(),
            context_id: t.context_id.clone(),
            status: t.status.clone(),
            metadata: None,
        })),
    }
}

async fn leases_follow_the_driven_states(backend: &Backend) {
    let db = Database::connect(&backend.url).await.unwrap();
    let lease = |owner: &str, length| store::Lease {
        owner: owner.into(),
        length,
    };
    // Replica a's leases run out at once; replica b's hold.
    let a = store::open_leased(&db, lease("a", std::time::Duration::ZERO));
    let b = store::open_leased(&db, lease("b", std::time::Duration::from_secs(3600)));
    let at = "2026-05-01T10:00:00Z";
    let mut running = task("run", "c", pb::TaskState::Submitted, at);
    a.create("ten", "agent", "m1", &running, &snapshot(&running))
        .await
        .unwrap();
    running.status.as_mut().unwrap().state = pb::TaskState::Working as i32;
    a.append(
        "ten",
        "run",
        1,
        &running,
        Some(&status_event(&running)),
        None,
    )
    .await
    .unwrap();
    // Waiting for the client and finished tasks hold no lease, whoever wrote them.
    let mut waiting = task("wait", "c", pb::TaskState::Submitted, at);
    a.create("ten", "agent", "m2", &waiting, &snapshot(&waiting))
        .await
        .unwrap();
    waiting.status.as_mut().unwrap().state = pb::TaskState::InputRequired as i32;
    a.append(
        "ten",
        "wait",
        1,
        &waiting,
        Some(&status_event(&waiting)),
        None,
    )
    .await
    .unwrap();
    let done = task("done", "c", pb::TaskState::Completed, at);
    a.create("ten", "agent", "m3", &done, &snapshot(&done))
        .await
        .unwrap();
    let mine = task("mine", "c", pb::TaskState::Working, at);
    b.create("ten", "agent", "m4", &mine, &snapshot(&mine))
        .await
        .unwrap();
    // The clock moves past a's lease expiry.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let claimed = b.claim_expired(10).await.unwrap();
    assert_eq!(
        claimed,
        [store::Abandoned {
            tenant: "ten".into(),
            stored: store::StoredTask {
                task: running.clone(),
                agent: "agent".into(),
                seq: 2,
            },
            previous_owner: "a".into(),
        }]
    );
    // Claimed once: the claim is b's now, with b's lease, so nobody claims it again.
    assert!(b.claim_expired(10).await.unwrap().is_empty());
    assert!(a.claim_expired(10).await.unwrap().is_empty());
    let ids = ["run".to_owned(), "mine".to_owned(), "wait".to_owned()];
    assert_eq!(a.renew_leases(&ids).await.unwrap(), 0);
    assert_eq!(b.renew_leases(&ids).await.unwrap(), 2);
    // A terminal write clears the lease.
    running.status.as_mut().unwrap().state = pb::TaskState::Failed as i32;
    assert_eq!(
        b.append(
            "ten",
            "run",
            2,
            &running,
            Some(&status_event(&running)),
            None
        )
        .await
        .unwrap(),
        Appended::At(3)
    );
    assert_eq!(b.renew_leases(&ids).await.unwrap(), 1);
    // A store opened without a lease records no owner and claims nothing.
    assert!(
        open(&backend.url)
            .await
            .claim_expired(10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn several_events_are_written_at_once(b: &Backend) {
    let s = b.store.as_ref();
    // A task created with the events that followed its creation event.
    let submitted = task("t", "c", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
    let mut t = submitted.clone();
    t.status.as_mut().unwrap().state = pb::TaskState::Working as i32;
    let working = status_event(&t);
    assert_eq!(
        s.create_with_events(
            "ten",
            "agent",
            "m",
            &t,
            &[snapshot(&submitted), working.clone()]
        )
        .await
        .unwrap(),
        Created::New
    );
    let stored = s.load("ten", "t").await.unwrap().unwrap();
    assert_eq!((stored.seq, stored.task), (2, t.clone()));
    // The same message id again: nothing is written, the first task is named.
    let other = task("u", "c", pb::TaskState::Submitted, "2026-05-01T10:00:00Z");
    assert_eq!(
        s.create_with_events(
            "ten",
            "agent",
            "m",
            &other,
            &[snapshot(&other), working.clone()]
        )
        .await
        .unwrap(),
        Created::Existing("t".into())
    );
    assert!(s.load("ten", "u").await.unwrap().is_none());
    assert_eq!(s.events_after("ten", "u", 0).await.unwrap(), vec![]);
    // Two appended together take the next two sequence numbers.
    let mut done = t.clone();
    done.status.as_mut().unwrap().state = pb::TaskState::InputRequired as i32;
    let input = status_event(&done);
    done.status.as_mut().unwrap().state = pb::TaskState::Completed as i32;
    let completed = status_event(&done);
    let both = [input.clone(), completed.clone()];
    assert_eq!(
        s.append_events("ten", "t", 2, &done, &both, None)
            .await
            .unwrap(),
        Appended::At(4)
    );
    // All or nothing: a writer that read sequence 2 or 3 stores none of its events.
    for seq in [2, 3] {
        assert_eq!(
            s.append_events("ten", "t", seq, &t, &both, None)
                .await
                .unwrap(),
            Appended::Conflict
        );
    }
    let events = s.events_after("ten", "t", 0).await.unwrap();
    assert_eq!(
        events,
        vec![
            (1, snapshot(&submitted)),
            (2, working),
            (3, input),
            (4, completed)
        ]
    );
    let stored = s.load("ten", "t").await.unwrap().unwrap();
    assert_eq!((stored.seq, stored.task), (4, done));
}

async fn tasks_with_push_configs_are_found_in_one_query(b: &Backend) {
    let s = b.store.as_ref();
    for (tenant, id) in [("ten", "a"), ("ten", "b"), ("other", "a")] {
        let t = task(id, "c", pb::TaskState::Working, "2026-05-01T10:00:00Z");
        s.create(tenant, "agent", id, &t, &snapshot(&t))
            .await
            .unwrap();
    }
    let config = pb::TaskPushNotificationConfig {
        task_id: "a".into(),
        id: "cfg".into(),
        url: "https://client.example/hook".into(),
        ..Default::default()
    };
    assert!(s.put_push_config("ten", &config, 10).await.unwrap());
    let ask: Vec<(String, String)> = [("ten", "a"), ("ten", "b"), ("other", "a"), ("ten", "x")]
        .iter()
        .map(|(t, i)| ((*t).to_owned(), (*i).to_owned()))
        .collect();
    let found = s.tasks_with_push_configs(&ask).await.unwrap();
    assert_eq!(
        found,
        std::collections::HashSet::from([("ten".to_owned(), "a".to_owned())])
    );
    assert!(s.tasks_with_push_configs(&[]).await.unwrap().is_empty());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(&super::postgres().await).await })*
        }
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(&super::sqlite().await).await })*
        }
    };
}

suite!(
    create_is_idempotent_by_message_id,
    appends_are_sequenced_and_optimistic,
    listing_filters_and_pages,
    eviction_removes_expired_tasks_with_their_logs,
    push_configs_are_capped_and_scoped,
    push_configs_page_by_cursor,
    concurrent_writes_keep_every_log_in_order,
    leases_follow_the_driven_states,
    several_events_are_written_at_once,
    tasks_with_push_configs_are_found_in_one_query,
);
