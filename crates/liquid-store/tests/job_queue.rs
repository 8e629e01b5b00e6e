//! The job queue suite: the same assertions against a fresh PostgreSQL database and a fresh
//! SQLite file. Dedupe, priority, scheduling, concurrent workers, lease expiry and reclaim,
//! retries, dead letters, purging, tenancy and surviving a reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_store::job_queue::{self, JobState, NewJob, Retry};
use liquid_store::{Database, DatabaseKind, JobQueue};
use liquid_testkit::postgres::TestDatabase;
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);
const SHORT_LEASE: Duration = Duration::from_millis(300);
/// Comfortably longer than SHORT_LEASE.
const PAST_SHORT_LEASE: Duration = Duration::from_millis(900);

/// A queue on a fresh database of one backend, and what keeps that database alive.
struct Backend {
    url: String,
    db: Database,
    queue: Arc<dyn JobQueue>,
    _postgres: Option<TestDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    async fn postgres() -> Backend {
        let fixture = TestDatabase::create().await.unwrap();
        let url = fixture.url().to_owned();
        let (db, queue) = open(&url).await;
        assert_eq!(queue.kind(), DatabaseKind::Postgres);
        Backend {
            url,
            db,
            queue,
            _postgres: Some(fixture),
            _dir: None,
        }
    }

    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/queue.db", dir.path().display());
        let (db, queue) = open(&url).await;
        assert_eq!(queue.kind(), DatabaseKind::Sqlite);
        Backend {
            url,
            db,
            queue,
            _postgres: None,
            _dir: Some(dir),
        }
    }
}

async fn open(url: &str) -> (Database, Arc<dyn JobQueue>) {
    let db = Database::connect(url).await.unwrap();
    let queue = job_queue::open(&db).await.unwrap();
    (db, queue)
}

fn job(n: u32) -> NewJob {
    NewJob::new("render", "tenant-a", json!({ "n": n }))
}

async fn enqueue_round_trips_and_is_tenant_scoped(b: &Backend) {
    let q = b.queue.as_ref();
    let at = Utc::now() - chrono::Duration::seconds(1);
    let enqueued = q
        .enqueue(
            job(1)
                .priority(7)
                .run_at(at)
                .dedupe_key("k1")
                .max_attempts(4),
        )
        .await
        .unwrap();
    assert!(enqueued.created);
    assert_eq!(enqueued.id.get_version_num(), 7, "ids are UUIDv7");

    let stored = q.get("tenant-a", enqueued.id).await.unwrap().unwrap();
    assert_eq!(stored.id, enqueued.id);
    assert_eq!(stored.queue, "render");
    assert_eq!(stored.tenant, "tenant-a");
    assert_eq!(stored.payload, json!({ "n": 1 }));
    assert_eq!(stored.priority, 7);
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.max_attempts, 4);
    assert_eq!(stored.dedupe_key.as_deref(), Some("k1"));
    assert!((stored.run_at - at).num_milliseconds().abs() <= 1);
    assert_eq!(stored.lease_expires_at, None);
    assert_eq!(stored.finished_at, None);

    assert_eq!(
        q.get("tenant-b", enqueued.id).await.unwrap(),
        None,
        "another tenant must not see the job"
    );
    assert_eq!(q.get("tenant-a", uuid::Uuid::now_v7()).await.unwrap(), None);
}

async fn dedupe_key_returns_the_existing_job(b: &Backend) {
    let q = b.queue.as_ref();
    let first = q.enqueue(job(1).dedupe_key("same")).await.unwrap();
    let again = q.enqueue(job(2).dedupe_key("same")).await.unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(again.id, first.id);
    let stored = q.get("tenant-a", first.id).await.unwrap().unwrap();
    assert_eq!(
        stored.payload,
        json!({ "n": 1 }),
        "the duplicate changed nothing"
    );

    // The key is scoped to queue and tenant.
    let other_tenant = q
        .enqueue(NewJob::new("render", "tenant-b", json!({})).dedupe_key("same"))
        .await
        .unwrap();
    let other_queue = q
        .enqueue(NewJob::new("thumbnail", "tenant-a", json!({})).dedupe_key("same"))
        .await
        .unwrap();
    assert!(other_tenant.created && other_queue.created);
    assert_ne!(other_tenant.id, first.id);
    assert_ne!(other_queue.id, first.id);

    // Jobs without a key never collide.
    let a = q.enqueue(job(3)).await.unwrap();
    let b2 = q.enqueue(job(3)).await.unwrap();
    assert_ne!(a.id, b2.id);
}

async fn concurrent_enqueues_of_one_key_make_one_job(b: &Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16 {
        let q = b.queue.clone();
        tasks.spawn(async move { q.enqueue(job(n).dedupe_key("racy")).await.unwrap() });
    }
    let results = tasks.join_all().await;
    let ids: HashSet<_> = results.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|e| e.created).count(), 1);
    assert_eq!(b.queue.counts("render").await.unwrap().ready, 1);
}

async fn claims_follow_priority_then_run_at(b: &Backend) {
    let q = b.queue.as_ref();
    let base = Utc::now() - chrono::Duration::seconds(10);
    let low = q.enqueue(job(1).priority(0).run_at(base)).await.unwrap().id;
    let high_late = q
        .enqueue(
            job(2)
                .priority(10)
                .run_at(base + chrono::Duration::seconds(2)),
        )
        .await
        .unwrap()
        .id;
    let high_early = q
        .enqueue(
            job(3)
                .priority(10)
                .run_at(base + chrono::Duration::seconds(1)),
        )
        .await
        .unwrap()
        .id;
    let mid = q.enqueue(job(4).priority(5).run_at(base)).await.unwrap().id;

    let first = q.claim("render", "w1", MINUTE, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job.id, high_early);
    let rest: Vec<_> = q
        .claim("render", "w1", MINUTE, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(rest, vec![high_late, mid, low]);
    assert!(
        q.claim("render", "w1", MINUTE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claims_only_due_jobs_of_the_queue(b: &Backend) {
    let q = b.queue.as_ref();
    let later = q
        .enqueue(job(1).run_at(Utc::now() + chrono::Duration::hours(1)))
        .await
        .unwrap()
        .id;
    q.enqueue(NewJob::new("other-queue", "tenant-a", json!({})))
        .await
        .unwrap();
    let counts = q.counts("render").await.unwrap();
    assert_eq!((counts.ready, counts.scheduled), (0, 1));
    assert!(
        q.claim("render", "w1", MINUTE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.get("tenant-a", later).await.unwrap().unwrap().state,
        JobState::Queued
    );

    let due = q.enqueue(job(2)).await.unwrap().id;
    let claimed = q.claim("render", "w1", MINUTE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.id, due);
    assert_eq!(claimed[0].job.state, JobState::Running);
    assert_eq!(claimed[0].job.attempts, 1);
    assert_eq!(claimed[0].lease.attempt, 1);
    assert_eq!(claimed[0].lease.worker, "w1");
    assert!(claimed[0].lease.expires_at > Utc::now());
    let counts = q.counts("render").await.unwrap();
    assert_eq!((counts.ready, counts.scheduled, counts.running), (0, 1, 1));
}

async fn concurrent_workers_never_claim_the_same_job(b: &Backend) {
    const JOBS: u32 = 120;
    const WORKERS: usize = 8;
    for n in 0..JOBS {
        b.queue.enqueue(job(n)).await.unwrap();
    }
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let q = b.queue.clone();
        workers.spawn(async move {
            let worker = format!("worker-{w}");
            let mut done = Vec::new();
            loop {
                let claimed = q.claim("render", &worker, MINUTE, 3).await.unwrap();
                if claimed.is_empty() {
                    return done;
                }
                for c in claimed {
                    q.complete(&c.lease).await.unwrap();
                    done.push(c.job.id);
                }
            }
        });
    }
    let per_worker = workers.join_all().await;
    let all: Vec<_> = per_worker.iter().flatten().copied().collect();
    let distinct: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a job was claimed twice");
    assert_eq!(distinct.len(), JOBS as usize, "every job was processed");
    let counts = b.queue.counts("render").await.unwrap();
    assert_eq!(counts.completed, u64::from(JOBS));
    assert_eq!(counts.ready + counts.running + counts.dead, 0);
}

async fn expired_leases_are_reclaimed_with_the_next_attempt(b: &Backend) {
    let q = b.queue.as_ref();
    let id = q.enqueue(job(1)).await.unwrap().id;
    let first = q.claim("render", "crashed", SHORT_LEASE, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        q.claim("render", "other", MINUTE, 1)
            .await
            .unwrap()
            .is_empty(),
        "a held lease is not claimable"
    );

    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let second = q.claim("render", "other", MINUTE, 1).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].job.id, id);
    assert_eq!(second[0].lease.attempt, 2);
    assert_eq!(second[0].job.attempts, 2);
    assert_eq!(second[0].lease.worker, "other");
    assert!(
        second[0]
            .job
            .last_error
            .as_deref()
            .unwrap()
            .contains("lease expired")
    );

    // The first worker lost the job: everything it tries is refused.
    let stale = &first[0].lease;
    let err = q.complete(stale).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");
    let err = q.heartbeat(stale, MINUTE).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");
    let err = q.fail(stale, "late", Retry::Never).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");

    q.complete(&second[0].lease).await.unwrap();
    let done = q.get("tenant-a", id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.lease_owner.as_deref(), Some("other"));
    assert!(done.finished_at.is_some());
    let err = q.complete(&second[0].lease).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Conflict, "completing twice");
}

async fn heartbeats_keep_a_lease(b: &Backend) {
    let q = b.queue.as_ref();
    q.enqueue(job(1)).await.unwrap();
    let claimed = q.claim("render", "w1", SHORT_LEASE, 1).await.unwrap();
    let lease = &claimed[0].lease;
    let renewed = q.heartbeat(lease, MINUTE).await.unwrap();
    assert!(renewed.expires_at > lease.expires_at);
    assert_eq!(renewed.attempt, lease.attempt);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert!(
        q.claim("render", "w2", MINUTE, 1).await.unwrap().is_empty(),
        "a renewed lease is still held"
    );
    q.complete(&renewed).await.unwrap();

    let mut wrong_worker = renewed.clone();
    wrong_worker.worker = "w2".into();
    let err = q.heartbeat(&wrong_worker, MINUTE).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");
}

async fn failures_retry_then_dead_letter(b: &Backend) {
    let q = b.queue.as_ref();
    let id = q.enqueue(job(1).max_attempts(3)).await.unwrap().id;

    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    let state = q
        .fail(&c.lease, "boom 1", Retry::After(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued);

    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    assert_eq!(c.lease.attempt, 2);
    assert_eq!(c.job.last_error.as_deref(), Some("boom 1"));
    let past = Utc::now() - chrono::Duration::seconds(5);
    let state = q.fail(&c.lease, "boom 2", Retry::At(past)).await.unwrap();
    assert_eq!(state, JobState::Queued);

    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    assert_eq!(c.lease.attempt, 3);
    let state = q
        .fail(&c.lease, "boom 3", Retry::After(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(state, JobState::Dead, "out of attempts");

    assert!(q.claim("render", "w", MINUTE, 1).await.unwrap().is_empty());
    let dead = q.get("tenant-a", id).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.last_error.as_deref(), Some("boom 3"));
    assert!(dead.finished_at.is_some());
    assert_eq!(q.counts("render").await.unwrap().dead, 1);
}

async fn giving_up_and_backing_off(b: &Backend) {
    let q = b.queue.as_ref();
    let hopeless = q.enqueue(job(1)).await.unwrap().id;
    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    assert_eq!(
        q.fail(&c.lease, "bad input", Retry::Never).await.unwrap(),
        JobState::Dead,
        "giving up dead-letters on the first attempt"
    );
    assert_eq!(
        q.get("tenant-a", hopeless).await.unwrap().unwrap().attempts,
        1
    );

    let backoff = q.enqueue(job(2)).await.unwrap().id;
    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    assert_eq!(c.job.id, backoff);
    let state = q
        .fail(&c.lease, "busy", Retry::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued);
    assert!(q.claim("render", "w", MINUTE, 1).await.unwrap().is_empty());
    let counts = q.counts("render").await.unwrap();
    assert_eq!((counts.scheduled, counts.dead), (1, 1));

    let long = "x".repeat(job_queue::MAX_ERROR_LEN * 2);
    let third = q.enqueue(job(3)).await.unwrap().id;
    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    q.fail(&c.lease, &long, Retry::Never).await.unwrap();
    let stored = q.get("tenant-a", third).await.unwrap().unwrap();
    assert_eq!(
        stored.last_error.map(|e| e.len()),
        Some(job_queue::MAX_ERROR_LEN)
    );
}

async fn lease_expiring_on_the_final_attempt_dead_letters(b: &Backend) {
    let q = b.queue.as_ref();
    let id = q.enqueue(job(1).max_attempts(1)).await.unwrap().id;
    q.claim("render", "crashed", SHORT_LEASE, 1).await.unwrap();
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert!(
        q.claim("render", "other", MINUTE, 1)
            .await
            .unwrap()
            .is_empty()
    );
    let dead = q.get("tenant-a", id).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.attempts, 1);
    assert!(dead.last_error.unwrap().contains("final attempt"));
    assert_eq!(q.counts("render").await.unwrap().dead, 1);
}

async fn jobs_survive_a_reconnect(b: &Backend) {
    let id = b
        .queue
        .enqueue(job(42).dedupe_key("persisted"))
        .await
        .unwrap()
        .id;
    b.db.close().await;
    let (db, queue) = open(&b.url).await;
    let again = queue
        .enqueue(job(43).dedupe_key("persisted"))
        .await
        .unwrap();
    assert_eq!(again.id, id);
    assert!(!again.created);
    let claimed = queue.claim("render", "w", MINUTE, 5).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.id, id);
    assert_eq!(claimed[0].job.payload, json!({ "n": 42 }));
    db.close().await;
}

async fn purge_removes_only_finished_jobs(b: &Backend) {
    let q = b.queue.as_ref();
    let done = q.enqueue(job(1).dedupe_key("once")).await.unwrap().id;
    let c = q.claim("render", "w", MINUTE, 1).await.unwrap().remove(0);
    q.complete(&c.lease).await.unwrap();
    let waiting = q.enqueue(job(2)).await.unwrap().id;

    assert_eq!(
        q.purge_finished("render", MINUTE).await.unwrap(),
        0,
        "too recent"
    );
    assert_eq!(q.purge_finished("render", Duration::ZERO).await.unwrap(), 1);
    assert_eq!(q.get("tenant-a", done).await.unwrap(), None);
    assert!(q.get("tenant-a", waiting).await.unwrap().is_some());
    let reused = q.enqueue(job(3).dedupe_key("once")).await.unwrap();
    assert!(reused.created, "a purged job frees its dedupe key");
    assert_ne!(reused.id, done);
}

async fn bad_arguments_are_refused(b: &Backend) {
    let q = b.queue.as_ref();
    for err in [
        q.enqueue(NewJob::new("", "t", json!({})))
            .await
            .unwrap_err(),
        q.enqueue(job(1).max_attempts(0)).await.unwrap_err(),
        q.claim("render", "w", Duration::ZERO, 1).await.unwrap_err(),
        q.claim("render", "", MINUTE, 1).await.unwrap_err(),
        q.claim("render", "w", job_queue::MAX_LEASE * 2, 1)
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{err}");
    }
    q.enqueue(job(1)).await.unwrap();
    assert!(q.claim("render", "w", MINUTE, 0).await.unwrap().is_empty());
    assert_eq!(q.counts("render").await.unwrap().ready, 1);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::sqlite().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    enqueue_round_trips_and_is_tenant_scoped,
    dedupe_key_returns_the_existing_job,
    concurrent_enqueues_of_one_key_make_one_job,
    claims_follow_priority_then_run_at,
    claims_only_due_jobs_of_the_queue,
    concurrent_workers_never_claim_the_same_job,
    expired_leases_are_reclaimed_with_the_next_attempt,
    heartbeats_keep_a_lease,
    failures_retry_then_dead_letter,
    giving_up_and_backing_off,
    lease_expiring_on_the_final_attempt_dead_letters,
    jobs_survive_a_reconnect,
    purge_removes_only_finished_jobs,
    bad_arguments_are_refused,
);
