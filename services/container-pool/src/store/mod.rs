//! What the pool keeps in its database: replica leases (for orphan sweeps), claims (so any
//! replica can serve a claim and a crashed replica's claims get closed), templates changed
//! through the admin API, the event outbox (events written in the same transaction as the claim
//! or release they describe, relayed to the bus by [`crate::events`]) and the `Idempotency-Key`s
//! of acquires (insert-first, so two requests with one key make one claim). One trait, a
//! Postgres and a SQLite implementation with the same semantics (one suite runs against both:
//! `tests/service.rs`).

mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_bus::Event;
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

/// What an acquire with an `Idempotency-Key` finds when it registers the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is new: this request claims, and records the claim id with the claim.
    Owned,
    /// An earlier request with the key made this claim.
    Claimed(Uuid),
    /// An earlier request with the key is still acquiring.
    Pending,
}

/// Builds the event of a claim released in bulk (a dead replica's claims).
pub type ReleaseEvent = dyn Fn(&ClaimRow) -> Option<Event> + Send + Sync;

/// The pool's persistent state.
#[async_trait]
pub trait PoolStore: Send + Sync {
    /// Creates or renews a replica's lease.
    async fn heartbeat(&self, replica: &ReplicaRow) -> Result<(), PoolError>;
    /// Every lease.
    async fn replicas(&self) -> Result<Vec<ReplicaRow>, PoolError>;
    /// Drops a lease.
    async fn delete_replica(&self, replica_id: Uuid) -> Result<(), PoolError>;
    /// Records a claim, its events (outbox) and, with an `Idempotency-Key` this request owns,
    /// the claim id under that key: one transaction. [`PoolError::Conflict`] when the key is no
    /// longer this request's (it went stale and another request took it over).
    async fn insert_claim(
        &self,
        claim: &ClaimRow,
        events: &[Event],
        idempotency_key: Option<&str>,
    ) -> Result<(), PoolError>;
    /// An unreleased claim of `tenant`.
    async fn open_claim(&self, claim_id: Uuid, tenant: &str)
    -> Result<Option<ClaimRow>, PoolError>;
    /// Whether a claim was released (or does not exist).
    async fn is_released(&self, claim_id: Uuid) -> Result<bool, PoolError>;
    /// Marks a claim released and queues `events` with it (one transaction); `false`, and no
    /// events, when it already was released (or does not exist).
    async fn release_claim(
        &self,
        claim_id: Uuid,
        at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<bool, PoolError>;
    /// Marks every open claim of a replica released, queueing `event` of each (one
    /// transaction); returns how many.
    async fn release_claims_of(
        &self,
        replica_id: Uuid,
        at: DateTime<Utc>,
        event: &ReleaseEvent,
    ) -> Result<u64, PoolError>;
    /// Queues events that belong to no claim change (reaped, unhealthy).
    async fn enqueue_events(&self, events: &[Event]) -> Result<(), PoolError>;
    /// Leases up to `limit` queued events whose lease ran out (or that never had one) until
    /// `now_ms + lease_ms`, oldest first.
    async fn lease_events(
        &self,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<Event>, PoolError>;
    /// Drops published events from the outbox.
    async fn delete_events(&self, ids: &[Uuid]) -> Result<(), PoolError>;
    /// Registers `key` of `tenant` for an acquire (insert first: exactly one concurrent request
    /// gets [`IdempotencyState::Owned`]). A registration without a claim older than
    /// `stale_before_ms` (its request died) is taken over.
    async fn begin_idempotent(
        &self,
        tenant: &str,
        key: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<IdempotencyState, PoolError>;
    /// Drops this request's registration of `key` after its acquire failed (a retry may claim).
    async fn abandon_idempotent(&self, tenant: &str, key: &str) -> Result<(), PoolError>;
    /// Forgets keys registered before `before_ms` (their retention ran out); returns how many.
    async fn expire_idempotent(&self, before_ms: i64) -> Result<u64, PoolError>;
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

fn event_json(event: &Event) -> Result<String, PoolError> {
    serde_json::to_string(event).map_err(json_err)
}

fn event_of(text: &str) -> Result<Event, PoolError> {
    serde_json::from_str(text).map_err(json_err)
}

fn json_err(e: serde_json::Error) -> PoolError {
    PoolError::io("stored json", std::io::Error::other(e))
}
