//! The cowork service: deep-work sessions: planning, DAG execution, permission pipeline and staging sandboxes.
//!
//! Today it runs on the shared foundation (backends by URL, auth, health, metrics, the platform
//! contract); its own features arrive with its issue. It must not read another service's tables.

use axum::Router;
use liquid_runtime::{Foundation, NoSettings, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

/// Name, version and usual ports of the cowork service.
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "cowork",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8082,
    grpc_port: Some(9082),
};

/// The service's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/cowork/postgres"),
    sqlite: sqlx::migrate!("../../migrations/cowork/sqlite"),
};

/// The cowork service, as the runtime starts it.
pub struct Cowork;

impl Service for Cowork {
    type Settings = NoSettings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    async fn build(
        _foundation: &Foundation,
        _settings: &NoSettings,
    ) -> Result<ServiceParts, StartError> {
        Ok(ServiceParts {
            http: routes(_foundation),
            ..ServiceParts::default()
        })
    }
}

/// The service's own HTTP routes (behind the auth layer).
pub fn routes(_foundation: &Foundation) -> Router {
    Router::new()
}
