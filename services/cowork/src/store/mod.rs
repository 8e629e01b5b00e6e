//! What cowork keeps in its database for staging sandboxes: the sandboxes (so a restart finds
//! them again), their baseline and applied manifests, each session's committed bytes and the
//! append-only audit log. One trait, a Postgres and a SQLite implementation with the same
//! semantics; one suite (`tests/sandbox_store.rs`) runs against both. Every read and every
//! change of a tenant's data filters on the tenant.

mod postgres;
pub mod sessions;
mod sessions_sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_store::Database;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::state::SandboxState;
use crate::error::CoworkError;

pub use postgres::PostgresSandboxStore;
pub use sessions::SessionStore;
pub use sessions_sql::{PostgresSessionStore, SqliteSessionStore};
pub use sqlite::SqliteSandboxStore;

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxRow {
    /// Id (UUIDv7).
    pub sandbox_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// The session whose agents may work in it.
    pub session_id: Uuid,
    /// Where it is in its life.
    pub state: SandboxState,
    /// Free text from the creator.
    pub label: String,
    /// The source directory (canonical).
    pub source_path: String,
    /// The work copy containers mount (canonical).
    pub work_path: String,
    /// Files and symlinks in the baseline.
    pub file_count: i64,
    /// Bytes in the baseline.
    pub total_bytes: i64,
    /// How the work copy was made (`{"hardlink": n, "copy": m, "reflink": k}` as JSON text).
    pub copy_summary: String,
    /// The attached container.
    pub container_id: Option<String>,
    /// When it was attached.
    pub container_attached_at: Option<DateTime<Utc>>,
    /// The A2A task working in it.
    pub a2a_task_id: Option<String>,
    /// That task's last reported state.
    pub a2a_task_state: Option<String>,
    /// When the task was last reported.
    pub a2a_updated_at: Option<DateTime<Utc>>,
    /// The replica instance watching it; another value (or none) means it awaits resume.
    pub live_instance: Option<Uuid>,
    /// The creating request's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// When the cleanup job expires it.
    pub expires_at: DateTime<Utc>,
    /// When it was applied.
    pub applied_at: Option<DateTime<Utc>>,
}

/// One audit entry: who did what, when, with which hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Id (UUIDv7: sorts by time; the query cursor).
    pub audit_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// The sandbox, when there is one.
    pub sandbox_id: Option<Uuid>,
    /// The session, when there is one.
    pub session_id: Option<Uuid>,
    /// Who: the token's subject or the agent's name.
    pub actor: String,
    /// What: `sandbox.create`, `file.write`, `permission.denied`, `apply.write`, ...
    pub action: String,
    /// `ok`, `denied`, `conflict` or `error`.
    pub outcome: String,
    /// The file, relative to the sandbox (control characters escaped).
    pub path: Option<String>,
    /// The pipeline stage that denied.
    pub stage: Option<String>,
    /// SHA-256 before.
    pub sha256_before: Option<String>,
    /// SHA-256 after.
    pub sha256_after: Option<String>,
    /// Anything else, as JSON.
    pub detail: serde_json::Value,
    /// When.
    pub at: DateTime<Utc>,
}

impl AuditRecord {
    /// A new record stamped now.
    pub fn new(tenant: &str, actor: &str, action: &str, outcome: &str) -> Self {
        AuditRecord {
            audit_id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            sandbox_id: None,
            session_id: None,
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            path: None,
            stage: None,
            sha256_before: None,
            sha256_after: None,
            detail: serde_json::Value::Null,
            at: Utc::now(),
        }
    }
}

/// Which audit entries to return (always one tenant's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this sandbox.
    pub sandbox_id: Option<Uuid>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Entries after this id (the cursor).
    pub after: Option<Uuid>,
    /// At most this many.
    pub limit: i64,
}

/// Escapes control characters (NUL, newlines) so a hostile path can be stored and shown.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Cowork's persistent sandbox state.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Records a new sandbox with its baseline manifest (one transaction).
    async fn insert(&self, row: &SandboxRow, baseline: &str) -> Result<(), CoworkError>;
    /// The tenant's sandbox created with `key`.
    async fn by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<SandboxRow>, CoworkError>;
    /// A sandbox of `tenant`.
    async fn get(&self, tenant: &str, id: Uuid) -> Result<Option<SandboxRow>, CoworkError>;
    /// A manifest (`baseline` or `applied`).
    async fn manifest(&self, id: Uuid, kind: &str) -> Result<Option<String>, CoworkError>;
    /// Stores or replaces a manifest.
    async fn put_manifest(&self, id: Uuid, kind: &str, body: &str) -> Result<(), CoworkError>;
    /// Moves a sandbox from `from` to `to`; `false` when it was not in `from` (another request
    /// or replica got there first).
    async fn transition(
        &self,
        tenant: &str,
        id: Uuid,
        from: SandboxState,
        to: SandboxState,
        at: DateTime<Utc>,
    ) -> Result<bool, CoworkError>;
    /// Records (or clears) the attached container.
    async fn set_container(
        &self,
        tenant: &str,
        id: Uuid,
        container: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError>;
    /// Records the A2A task working in the sandbox.
    async fn set_a2a_task(
        &self,
        tenant: &str,
        id: Uuid,
        task_id: &str,
        task_state: &str,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError>;
    /// Marks the sandbox watched by `instance`.
    async fn set_live(
        &self,
        tenant: &str,
        id: Uuid,
        instance: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), CoworkError>;
    /// The tenant's active sandboxes no live replica watches (not `instance`), by id, after
    /// the cursor.
    async fn pending_resume(
        &self,
        tenant: &str,
        instance: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SandboxRow>, CoworkError>;
    /// Active or applied sandboxes of every tenant whose time ran out.
    async fn expired(&self, now: DateTime<Utc>, limit: i64)
    -> Result<Vec<SandboxRow>, CoworkError>;
    /// How many sandboxes are in each state.
    async fn count_by_state(&self) -> Result<Vec<(String, i64)>, CoworkError>;
    /// Bytes the session has committed.
    async fn session_charged(&self, tenant: &str, session: Uuid) -> Result<u64, CoworkError>;
    /// Adds `bytes` to the session's total if it stays within `limit`; `false` otherwise.
    async fn charge(
        &self,
        tenant: &str,
        session: Uuid,
        bytes: u64,
        limit: u64,
    ) -> Result<bool, CoworkError>;
    /// Gives back bytes charged for a write that did not commit.
    async fn refund(&self, tenant: &str, session: Uuid, bytes: u64) -> Result<(), CoworkError>;
    /// Appends audit entries.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), CoworkError>;
    /// The tenant's audit entries matching `filter`, oldest first.
    async fn audit(
        &self,
        tenant: &str,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, CoworkError>;
}

/// The store for the service's database.
pub fn for_database(database: &Database) -> Arc<dyn SandboxStore> {
    match database {
        Database::Postgres(pool) => Arc::new(PostgresSandboxStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqliteSandboxStore::new(pool.clone())),
    }
}

/// The session store for the service's database.
pub fn sessions_for_database(database: &Database) -> Arc<dyn SessionStore> {
    match database {
        Database::Postgres(pool) => Arc::new(PostgresSessionStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqliteSessionStore::new(pool.clone())),
    }
}

fn state_of(text: &str) -> Result<SandboxState, CoworkError> {
    SandboxState::parse(text).ok_or_else(|| CoworkError::Corrupt(format!("sandbox state `{text}`")))
}

fn detail_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
