//! The gateway service: the platform's only public edge. This first part verifies every
//! caller (the auth layer of the shared foundation) and forwards `/api/v1/<service>/...` to
//! the owning service with the caller's token, request id and trace context; rate limits,
//! coalescing, WebSocket, GraphQL and chat arrive with the gateway issue.

pub mod proxy;

use axum::Router;
use liquid_runtime::{Foundation, NoSettings, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

/// Name, version and usual port of the gateway (it has no gRPC API of its own).
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "gateway",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8080,
    grpc_port: None,
};

/// The gateway's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/gateway/postgres"),
    sqlite: sqlx::migrate!("../../migrations/gateway/sqlite"),
};

/// The gateway service, as the runtime starts it.
pub struct Gateway;

impl Service for Gateway {
    type Settings = NoSettings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    async fn build(
        foundation: &Foundation,
        _settings: &NoSettings,
    ) -> Result<ServiceParts, StartError> {
        Ok(ServiceParts {
            http: routes(foundation),
            ..ServiceParts::default()
        })
    }
}

/// The gateway's routes: forwarding to every other service.
pub fn routes(foundation: &Foundation) -> Router {
    proxy::router(foundation.peers.clone())
}
