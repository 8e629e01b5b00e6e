//! Storage backends chosen by URL, with one semantics per store over both backends.
//!
//! - [`Database`]: `postgres://` or `sqlite://` to a pool, readiness ping and the service's
//!   embedded [`Migrations`]. Services write their own SQL per backend; this crate owns
//!   connections, pool sizing and migrations.
//! - [`job_queue`]: the durable work queue services share (leases, retries, dead letters), on
//!   the service's own database.
//! - [`cache`]: `redis://` or `memory://` behind the [`Cache`] trait, every key namespaced.
//!
//! Nothing here reads another service's tables or knows what a service stores.

pub mod cache;
mod database;
mod error;
pub mod job_queue;

pub use cache::{Cache, CacheConfig};
pub use database::{Database, DatabaseConfig, DatabaseKind, Migrations};
pub use error::StoreError;
pub use job_queue::JobQueue;
