//! The healer service: error intake, grouping and fix sessions.
//!
//! Today it runs on the shared foundation (backends by URL, auth, health, metrics, the platform
//! contract); its own features arrive with its issue. It must not read another service's tables.

use axum::Router;
use liquid_runtime::{Foundation, ServiceDefaults};
use liquid_store::Migrations;

/// Name, version and usual ports of the healer service.
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "healer",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8084,
    grpc_port: Some(9084),
};

/// The service's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/healer/postgres"),
    sqlite: sqlx::migrate!("../../migrations/healer/sqlite"),
};

/// The service's own HTTP routes (behind the auth layer).
pub fn routes(_foundation: &Foundation) -> Router {
    Router::new()
}
