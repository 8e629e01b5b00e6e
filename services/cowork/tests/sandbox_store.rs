//! One suite for cowork's sandbox store, run on PostgreSQL (a fresh database) and on SQLite:
//! rows are scoped by tenant, state changes are compare-and-set, the session budget is charged
//! atomically within its limit, pending-resume and expiry find the right rows, and the audit log
//! filters, pages and refuses updates and deletes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use liquid_cowork::domain::state::SandboxState;
use liquid_cowork::store::{AuditFilter, AuditRecord, SandboxRow, for_database};
use liquid_store::Database;
use liquid_testkit::postgres::TestDatabase;
use uuid::Uuid;

fn row(tenant: &str, key: Option<&str>) -> SandboxRow {
    let now = Utc::now();
    SandboxRow {
        sandbox_id: Uuid::now_v7(),
        tenant: tenant.into(),
        session_id: Uuid::now_v7(),
        state: SandboxState::Active,
        label: "l".into(),
        source_path: "/src".into(),
        work_path: "/work".into(),
        file_count: 3,
        total_bytes: 30,
        copy_summary: "{\"hardlink\":3}".into(),
        container_id: None,
        container_attached_at: None,
        a2a_task_id: None,
        a2a_task_state: None,
        a2a_updated_at: None,
        live_instance: None,
        idempotency_key: key.map(str::to_owned),
        created_at: now,
        updated_at: now,
        expires_at: now + Duration::hours(1),
        applied_at: None,
    }
}

async fn suite(db: &Database) {
    let store = for_database(db);
    let a = row("acme", Some("k1"));
    store.insert(&a, "{\"entries\":{}}").await.unwrap();
    // Tenant scoping.
    assert_eq!(
        store
            .get("acme", a.sandbox_id)
            .await
            .unwrap()
            .unwrap()
            .sandbox_id,
        a.sandbox_id
    );
    assert!(store.get("globex", a.sandbox_id).await.unwrap().is_none());
    assert!(
        store
            .by_idempotency_key("globex", "k1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .by_idempotency_key("acme", "k1")
            .await
            .unwrap()
            .unwrap()
            .sandbox_id,
        a.sandbox_id
    );
    // The same key twice for one tenant is refused by the database.
    let mut dup = row("acme", Some("k1"));
    dup.sandbox_id = Uuid::now_v7();
    assert!(store.insert(&dup, "{}").await.is_err());
    assert_eq!(
        store
            .manifest(a.sandbox_id, "baseline")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"entries\":{}}")
    );
    store
        .put_manifest(a.sandbox_id, "applied", "[1]")
        .await
        .unwrap();
    store
        .put_manifest(a.sandbox_id, "applied", "[2]")
        .await
        .unwrap();
    assert_eq!(
        store
            .manifest(a.sandbox_id, "applied")
            .await
            .unwrap()
            .as_deref(),
        Some("[2]")
    );

    // Compare-and-set transitions.
    let now = Utc::now();
    assert!(
        !store
            .transition(
                "globex",
                a.sandbox_id,
                SandboxState::Active,
                SandboxState::Applied,
                now
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .transition(
                "acme",
                a.sandbox_id,
                SandboxState::Active,
                SandboxState::Applied,
                now
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition(
                "acme",
                a.sandbox_id,
                SandboxState::Active,
                SandboxState::Applied,
                now
            )
            .await
            .unwrap()
    );
    let got = store.get("acme", a.sandbox_id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Applied);
    assert!(got.applied_at.is_some());

    // Container and A2A records.
    store
        .set_container("acme", a.sandbox_id, Some("c-1"), now)
        .await
        .unwrap();
    store
        .set_a2a_task("acme", a.sandbox_id, "task-9", "TASK_STATE_WORKING", now)
        .await
        .unwrap();
    let got = store.get("acme", a.sandbox_id).await.unwrap().unwrap();
    assert_eq!(got.container_id.as_deref(), Some("c-1"));
    assert_eq!(got.a2a_task_state.as_deref(), Some("TASK_STATE_WORKING"));
    store
        .set_container("acme", a.sandbox_id, None, now)
        .await
        .unwrap();
    assert!(
        store
            .get("acme", a.sandbox_id)
            .await
            .unwrap()
            .unwrap()
            .container_id
            .is_none()
    );

    // Pending resume: active sandboxes another instance (or none) watches.
    let me = Uuid::now_v7();
    let b = row("acme", None);
    let c = row("acme", None);
    store.insert(&b, "{}").await.unwrap();
    store.insert(&c, "{}").await.unwrap();
    store.insert(&row("globex", None), "{}").await.unwrap();
    store.set_live("acme", c.sandbox_id, me, now).await.unwrap();
    let pending = store.pending_resume("acme", me, None, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|r| r.sandbox_id).collect::<Vec<_>>(),
        [b.sandbox_id]
    );
    assert!(
        store
            .pending_resume("acme", me, Some(b.sandbox_id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .pending_resume("acme", Uuid::now_v7(), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    // Expiry across tenants: active and applied ones past their time.
    let later = Utc::now() + Duration::hours(2);
    assert_eq!(store.expired(later, 100).await.unwrap().len(), 4);
    assert!(store.expired(Utc::now(), 100).await.unwrap().is_empty());
    let counts = store.count_by_state().await.unwrap();
    assert!(counts.contains(&("active".to_owned(), 3)), "{counts:?}");
    assert!(counts.contains(&("applied".to_owned(), 1)), "{counts:?}");

    // Session budget: charged atomically within the limit.
    let s = Uuid::now_v7();
    assert!(store.charge("acme", s, 60, 100).await.unwrap());
    assert!(!store.charge("acme", s, 41, 100).await.unwrap());
    assert!(store.charge("acme", s, 40, 100).await.unwrap());
    assert!(
        !store
            .charge("acme", Uuid::now_v7(), 101, 100)
            .await
            .unwrap()
    );
    assert_eq!(store.session_charged("acme", s).await.unwrap(), 100);
    assert_eq!(store.session_charged("globex", s).await.unwrap(), 0);
    store.refund("acme", s, 30).await.unwrap();
    assert_eq!(store.session_charged("acme", s).await.unwrap(), 70);

    // Audit: filters, cursor, tenant scope.
    let mut records = Vec::new();
    for i in 0..5 {
        let mut r = AuditRecord::new(
            "acme",
            "bob",
            if i % 2 == 0 {
                "file.write"
            } else {
                "permission.denied"
            },
            "ok",
        );
        r.sandbox_id = Some(a.sandbox_id);
        r.path = Some(format!("f{i}\n"));
        r.sha256_after = Some(format!("{i:064}"));
        r.detail = serde_json::json!({ "i": i });
        records.push(r);
    }
    store.append_audit(&records).await.unwrap();
    store
        .append_audit(&[AuditRecord::new("globex", "eve", "file.write", "ok")])
        .await
        .unwrap();
    let all = store
        .audit(
            "acme",
            &AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[0].path.as_deref(),
        Some("f0\\n"),
        "control characters are escaped"
    );
    assert_eq!(all[4].detail["i"], 4);
    let writes = store
        .audit(
            "acme",
            &AuditFilter {
                action: Some("file.write".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(writes.len(), 3);
    let page = store
        .audit(
            "acme",
            &AuditFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let next = store
        .audit(
            "acme",
            &AuditFilter {
                limit: 2,
                after: Some(page[1].audit_id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(next[0].audit_id, all[2].audit_id);
    let none = store
        .audit(
            "acme",
            &AuditFilter {
                limit: 10,
                since: Some(Utc::now() + Duration::hours(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        store
            .audit(
                "globex",
                &AuditFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .len(),
        1
    );

    // Append-only: the database itself refuses updates and deletes.
    let (update, delete) = match db {
        Database::Postgres(pool) => (
            sqlx::query("UPDATE sandbox_audit SET actor = 'mallory'")
                .execute(pool)
                .await
                .map(|_| ()),
            sqlx::query("DELETE FROM sandbox_audit")
                .execute(pool)
                .await
                .map(|_| ()),
        ),
        Database::Sqlite(pool) => (
            sqlx::query("UPDATE sandbox_audit SET actor = 'mallory'")
                .execute(pool)
                .await
                .map(|_| ()),
            sqlx::query("DELETE FROM sandbox_audit")
                .execute(pool)
                .await
                .map(|_| ()),
        ),
    };
    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert_eq!(
        store
            .audit(
                "acme",
                &AuditFilter {
                    limit: 100,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let test_db = TestDatabase::create().await.unwrap();
    let db = Database::connect(test_db.url()).await.unwrap();
    db.migrate(&liquid_cowork::MIGRATIONS).await.unwrap();
    suite(&db).await;
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&format!("sqlite://{}/c.db", dir.path().display()))
        .await
        .unwrap();
    db.migrate(&liquid_cowork::MIGRATIONS).await.unwrap();
    suite(&db).await;
}
