//! The container-pool service: warm pools of isolated Docker containers where agent work runs.
//!
//! Today it runs on the shared foundation (backends by URL, auth, health, metrics, the platform
//! contract); its own features arrive with its issue. It must not read another service's tables.

use axum::Router;
use liquid_runtime::{Foundation, NoSettings, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

/// Name, version and usual ports of the container-pool service.
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "container-pool",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8083,
    grpc_port: Some(9083),
};

/// The service's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/container-pool/postgres"),
    sqlite: sqlx::migrate!("../../migrations/container-pool/sqlite"),
};

/// The container-pool service, as the runtime starts it.
pub struct ContainerPool;

impl Service for ContainerPool {
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
