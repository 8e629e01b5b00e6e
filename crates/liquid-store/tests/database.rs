//! The database suite: the same assertions against a fresh PostgreSQL database and a fresh
//! SQLite file (connect, migrate, constraints, reconnect), plus the errors a misconfigured or
//! unreachable database gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_store::{Database, DatabaseConfig, DatabaseKind, Migrations, StoreError};
use liquid_testkit::postgres::TestDatabase;

static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/liquid-store-tests/postgres"),
    sqlite: sqlx::migrate!("../../migrations/liquid-store-tests/sqlite"),
};

/// A fresh database of one backend and what keeps it alive.
struct Backend {
    url: String,
    kind: DatabaseKind,
    _postgres: Option<TestDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    async fn postgres() -> Backend {
        let db = TestDatabase::create().await.unwrap();
        Backend {
            url: db.url().to_owned(),
            kind: DatabaseKind::Postgres,
            _postgres: Some(db),
            _dir: None,
        }
    }

    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: connecting must create it.
        let url = format!("sqlite://{}/nested/dir/store.db", dir.path().display());
        Backend {
            url,
            kind: DatabaseKind::Sqlite,
            _postgres: None,
            _dir: Some(dir),
        }
    }

    async fn connect(&self) -> Database {
        let db = Database::connect(&self.url).await.unwrap();
        db.migrate(&MIGRATIONS).await.unwrap();
        db
    }
}

async fn insert_note(db: &Database, id: &str, body: &str) -> Result<(), StoreError> {
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

async fn tag_note(db: &Database, id: &str, tag: &str) -> Result<(), StoreError> {
    match db {
        Database::Postgres(p) => {
            sqlx::query("INSERT INTO note_tags (note_id, tag) VALUES ($1, $2)")
                .bind(id)
                .bind(tag)
                .execute(p)
                .await
                .map(|_| ())
        }
        Database::Sqlite(p) => sqlx::query("INSERT INTO note_tags (note_id, tag) VALUES (?, ?)")
            .bind(id)
            .bind(tag)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .map_err(Into::into)
}

async fn note_body(db: &Database, id: &str) -> Option<String> {
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

async fn connects_migrates_and_answers(b: &Backend) {
    let db = Database::connect(&b.url).await.unwrap();
    assert_eq!(db.kind(), b.kind);
    assert_eq!(db.kind().to_string(), b.kind.as_str());
    db.migrate(&MIGRATIONS).await.unwrap();
    db.migrate(&MIGRATIONS)
        .await
        .expect("running the same migrations again is a no-op");
    db.ping().await.unwrap();
    db.close().await;
    let err = db.ping().await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");
}

async fn unique_violation_is_already_exists(b: &Backend) {
    let db = b.connect().await;
    insert_note(&db, "a", "first").await.unwrap();
    let dup = insert_note(&db, "a", "second").await.unwrap_err();
    assert_eq!(dup.error_code(), ErrorCode::AlreadyExists, "{dup}");
    assert_eq!(
        note_body(&db, "a").await.as_deref(),
        Some("first"),
        "a failed insert must not change the row"
    );
}

async fn foreign_keys_are_enforced(b: &Backend) {
    let db = b.connect().await;
    insert_note(&db, "a", "body").await.unwrap();
    tag_note(&db, "a", "x").await.unwrap();
    let orphan = tag_note(&db, "missing", "x").await.unwrap_err();
    assert_eq!(
        orphan.error_code(),
        ErrorCode::FailedPrecondition,
        "{orphan}"
    );
}

async fn data_survives_a_reconnect(b: &Backend) {
    let db = b.connect().await;
    insert_note(&db, "kept", "across restarts").await.unwrap();
    db.close().await;
    let reopened = b.connect().await;
    assert_eq!(
        note_body(&reopened, "kept").await.as_deref(),
        Some("across restarts")
    );
    reopened.close().await;
}

async fn pool_size_comes_from_config(b: &Backend) {
    let mut config = DatabaseConfig::from_url(&b.url);
    config.max_connections = 3;
    let db = Database::connect_with(&config).await.unwrap();
    let max = match &db {
        Database::Postgres(p) => p.options().get_max_connections(),
        Database::Sqlite(p) => p.options().get_max_connections(),
    };
    assert_eq!(max, 3);
    assert!(db.as_postgres().is_some() == (b.kind == DatabaseKind::Postgres));
    assert!(db.as_sqlite().is_some() == (b.kind == DatabaseKind::Sqlite));
}

async fn job_queue_schema_coexists_with_service_migrations(b: &Backend) {
    // Both migration sets start at version 1; they must not be mistaken for each other.
    let db = b.connect().await;
    db.migrate(&liquid_store::job_queue::MIGRATIONS)
        .await
        .unwrap();
    db.migrate(&MIGRATIONS).await.unwrap();
    db.migrate(&liquid_store::job_queue::MIGRATIONS)
        .await
        .unwrap();
    insert_note(&db, "still", "works").await.unwrap();
    liquid_store::job_queue::open(&db).await.unwrap();
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Backend::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Backend::sqlite()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    connects_migrates_and_answers,
    unique_violation_is_already_exists,
    foreign_keys_are_enforced,
    data_survives_a_reconnect,
    pool_size_comes_from_config,
    job_queue_schema_coexists_with_service_migrations,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_together_on_postgres_take_turns() {
    // Two replicas starting at once: the advisory lock makes one wait for the other.
    let b = Backend::postgres().await;
    let (one, two) = tokio::join!(Database::connect(&b.url), Database::connect(&b.url));
    let (one, two) = (one.unwrap(), two.unwrap());
    let (a, b2) = tokio::join!(one.migrate(&MIGRATIONS), two.migrate(&MIGRATIONS));
    a.unwrap();
    b2.unwrap();
    let (a, b2) = tokio::join!(
        one.migrate(&liquid_store::job_queue::MIGRATIONS),
        two.migrate(&liquid_store::job_queue::MIGRATIONS)
    );
    a.unwrap();
    b2.unwrap();
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_for_the_pool_lifetime() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    db.migrate(&MIGRATIONS).await.unwrap();
    insert_note(&db, "m", "in memory").await.unwrap();
    // Every query may take a different pooled connection; all must see the same database.
    for _ in 0..5 {
        assert_eq!(note_body(&db, "m").await.as_deref(), Some("in memory"));
    }
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let b = Backend::sqlite();
    let db = b.connect().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.as_sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn unreachable_database_names_the_url_without_its_password() {
    let mut config = DatabaseConfig::from_url("postgres://liquid:hunter2@127.0.0.1:1/app");
    config.acquire_timeout_secs = 1;
    let err = Database::connect_with(&config).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");
    let message = err.to_string();
    assert!(
        !message.contains("hunter2"),
        "the password leaked: {message}"
    );
    assert!(message.contains("127.0.0.1:1/app"), "{message}");
    assert!(message.contains("make dev-up"), "{message}");
}

#[tokio::test]
async fn misconfigured_databases_are_invalid_config() {
    for url in [
        "mysql://u:hunter2@h/db",
        "",
        "postgres://u:hunter2@h:notaport/db",
    ] {
        let err = Database::connect(url).await.unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidConfig, "{url}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let mut config = DatabaseConfig::from_url("sqlite::memory:");
    config.max_connections = 0;
    let err = Database::connect_with(&config).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
    assert!(
        err.to_string().contains("database.max_connections"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_file_under_an_unwritable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let url = format!("sqlite://{}/sub/store.db", file.display());
    let err = Database::connect(&url).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");
    assert!(err.to_string().contains("plain-file"), "{err}");
}
