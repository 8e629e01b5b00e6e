//! One suite, both backends: the same assertions against a fresh PostgreSQL database and a
//! SQLite file, and against Redis and the in-memory cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_store::{Cache, Database, Migrations};
use liquid_testkit::postgres::TestDatabase;
use liquid_testkit::redis::TestRedis;

static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/liquid-store-tests/postgres"),
    sqlite: sqlx::migrate!("../../migrations/liquid-store-tests/sqlite"),
};

async fn insert(db: &Database, id: &str, body: &str) -> Result<(), liquid_store::StoreError> {
    match db {
        Database::Postgres(p) => sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
            .bind(id)
            .bind(body)
            .execute(p)
            .await
            .map(|_| ()),
        Database::Sqlite(p) => sqlx::query("INSERT INTO notes (id, body) VALUES (?, ?)")
            .bind(id)
            .bind(body)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .map_err(Into::into)
}

async fn body(db: &Database, id: &str) -> Option<String> {
    match db {
        Database::Postgres(p) => {
            sqlx::query_scalar("SELECT body FROM notes WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
        }
        Database::Sqlite(p) => {
            sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
                .bind(id)
                .fetch_optional(p)
                .await
        }
    }
    .unwrap()
}

async fn database_suite(url: &str, kind: &str) {
    let db = Database::connect(url).await.unwrap();
    assert_eq!(db.kind().to_string(), kind);
    db.migrate(&MIGRATIONS).await.unwrap();
    db.migrate(&MIGRATIONS)
        .await
        .expect("migrations are idempotent");
    db.ping().await.unwrap();

    insert(&db, "a", "first").await.unwrap();
    let dup = insert(&db, "a", "second").await.unwrap_err();
    assert_eq!(dup.error_code(), ErrorCode::AlreadyExists, "{dup}");
    assert_eq!(
        body(&db, "a").await.as_deref(),
        Some("first"),
        "a failed insert must not change the row"
    );

    // Data survives closing and reopening the pool.
    db.close().await;
    let reopened = Database::connect(url).await.unwrap();
    reopened.migrate(&MIGRATIONS).await.unwrap();
    assert_eq!(body(&reopened, "a").await.as_deref(), Some("first"));
    reopened.close().await;
}

#[tokio::test]
async fn database_suite_on_postgres() {
    let db = TestDatabase::create().await.unwrap();
    database_suite(db.url(), "postgres").await;
}

#[tokio::test]
async fn database_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/store.db", dir.path().display());
    database_suite(&url, "sqlite").await;
}

#[tokio::test]
async fn unreachable_and_unknown_databases_are_clear_errors() {
    let err = Database::connect("postgres://liquid:secret@127.0.0.1:1/x")
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable);
    assert!(
        !err.to_string().contains("secret"),
        "the password leaked: {err}"
    );
    assert!(err.to_string().contains("make dev-up"), "{err}");
    let err = Database::connect("mysql://x").await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
}

async fn cache_suite(cache: &dyn Cache, other: &dyn Cache) {
    cache.ping().await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache
        .set("k", b"v1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    cache
        .set("k", b"v2", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    cache.delete("k").await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), None);

    cache
        .set("short", b"x", Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        cache.get("short").await.unwrap(),
        None,
        "the entry outlived its ttl"
    );

    for k in ["p:1", "p:2", "p:3", "q:1"] {
        cache.set(k, b"x", Duration::from_secs(60)).await.unwrap();
    }
    other
        .set("p:1", b"theirs", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.delete_prefix("p:").await.unwrap(), 3);
    assert_eq!(cache.get("p:2").await.unwrap(), None);
    assert_eq!(cache.get("q:1").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(
        other.get("p:1").await.unwrap().as_deref(),
        Some(&b"theirs"[..]),
        "another namespace was touched"
    );
    other.delete_prefix("").await.unwrap();
    cache.delete_prefix("").await.unwrap();
}

#[tokio::test]
async fn cache_suite_on_redis() {
    let redis = TestRedis::new().await.unwrap();
    let mine = liquid_store::cache::connect(redis.url(), &format!("{}a:", redis.prefix()))
        .await
        .unwrap();
    let theirs = liquid_store::cache::connect(redis.url(), &format!("{}b:", redis.prefix()))
        .await
        .unwrap();
    assert_eq!(mine.kind(), "redis");
    cache_suite(mine.as_ref(), theirs.as_ref()).await;
}

#[tokio::test]
async fn cache_suite_on_memory() {
    let mine = liquid_store::cache::connect("memory://", "a:")
        .await
        .unwrap();
    let theirs = liquid_store::cache::connect("memory://", "b:")
        .await
        .unwrap();
    assert_eq!(mine.kind(), "memory");
    cache_suite(mine.as_ref(), theirs.as_ref()).await;
}
