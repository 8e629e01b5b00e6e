//! What the pool keeps in its database: replica leases (for orphan sweeps), claims (so any
//! replica can serve a claim and a crashed replica's claims get closed) and templates changed
//! through the admin API. One trait, a Postgres and a SQLite implementation with the same
//! semantics (one test suite runs against both: `tests/store.rs`).

mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_store::Database;
use uuid::Uuid;

use crate::config::TemplateConfig;
use crate::error::PoolError;

pub use postgres::PostgresPoolStore;
pub use sqlite::SqlitePoolStore;

/// A replica's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Replica id (its labels carry it).
    pub replica_id: Uuid,
    /// Host name of its machine.
    pub hostname: String,
    /// `<pid>:<start time>` of its process.
    pub process: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last renewal.
    pub heartbeat_at: DateTime<Utc>,
}

/// A claim as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    /// Claim id (UUIDv7).
    pub claim_id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// Template.
    pub template: String,
    /// Container id.
    pub container_id: String,
    /// Host name.
    pub host: String,
    /// `docker` or `process`.
    pub runtime: String,
    /// Replica that holds it.
    pub replica_id: Uuid,
    /// `warm`, `cold` or `waited`.
    pub served: String,
    /// Working directory of execs.
    pub workdir: String,
    /// Environment bound to the claim.
    pub env: BTreeMap<String, String>,
    /// Names of the secrets injected.
    pub secrets: Vec<String>,
    /// When acquired.
    pub acquired_at: DateTime<Utc>,
    /// When released, if it was.
    pub released_at: Option<DateTime<Utc>>,
}

/// The pool's persistent state.
#[async_trait]
pub trait PoolStore: Send + Sync {
    /// Creates or renews a replica's lease.
    async fn heartbeat(&self, replica: &ReplicaRow) -> Result<(), PoolError>;
    /// Every lease.
    async fn replicas(&self) -> Result<Vec<ReplicaRow>, PoolError>;
    /// Drops a lease.
    async fn delete_replica(&self, replica_id: Uuid) -> Result<(), PoolError>;
    /// Records a claim.
    async fn insert_claim(&self, claim: &ClaimRow) -> Result<(), PoolError>;
    /// An unreleased claim of `tenant`.
    async fn open_claim(&self, claim_id: Uuid, tenant: &str)
    -> Result<Option<ClaimRow>, PoolError>;
    /// Whether a claim was released (or does not exist).
    async fn is_released(&self, claim_id: Uuid) -> Result<bool, PoolError>;
    /// Marks a claim released; `false` when it already was (or does not exist).
    async fn release_claim(&self, claim_id: Uuid, at: DateTime<Utc>) -> Result<bool, PoolError>;
    /// Marks every open claim of a replica released; returns how many.
    async fn release_claims_of(
        &self,
        replica_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, PoolError>;
    /// Stores a template override.
    async fn put_template(&self, name: &str, config: &TemplateConfig) -> Result<(), PoolError>;
    /// Every template override.
    async fn templates(&self) -> Result<Vec<(String, TemplateConfig)>, PoolError>;
    /// Drops a template override; `false` when there was none.
    async fn delete_template(&self, name: &str) -> Result<bool, PoolError>;
}

/// The store for the service's database.
pub fn for_database(database: &Database) -> Arc<dyn PoolStore> {
    match database {
        Database::Postgres(pool) => Arc::new(PostgresPoolStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqlitePoolStore::new(pool.clone())),
    }
}

fn json_err(e: serde_json::Error) -> PoolError {
    PoolError::io("stored json", std::io::Error::other(e))
}
