//! The cowork service: deep-work sessions: planning, DAG execution, permission pipeline and
//! staging sandboxes.
//!
//! Built so far: the permission pipeline ([`permission`], decisions in
//! [`domain::permission`]), the one gate every agent file operation goes through, and staging
//! sandboxes ([`sandbox`]) with their REST API under `/api/v1/sandbox` ([`api::http`]), the
//! append-only audit log, the expired-sandbox cleanup job and file-event change detection.
//! The planner, executor, agent manager and A2A bridge build on these. Layout: [`config`] (its
//! sections), [`domain`] (pure logic), [`fs`] (the filesystem edge), [`store`] (Postgres and
//! SQLite), [`metrics`]. It must not read another service's tables.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod fs;
pub mod metrics;
pub mod permission;
pub mod sandbox;
pub mod store;

use liquid_runtime::{Foundation, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

pub use config::CoworkSettings;
pub use permission::{AgentContext, PermissionGate};
pub use sandbox::StagingSandboxes;

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
    type Settings = CoworkSettings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    fn embedded_defaults(settings: &mut CoworkSettings, data_dir: &std::path::Path) {
        let cowork = data_dir.join("cowork");
        settings.sandbox.root = cowork.join("sandboxes").display().to_string();
        settings.sandbox.workspace_roots = vec![
            cowork
                .join("workspaces")
                .join("{tenant}")
                .display()
                .to_string(),
        ];
    }

    async fn build(
        foundation: &Foundation,
        settings: &CoworkSettings,
    ) -> Result<ServiceParts, StartError> {
        let (sandboxes, watcher) = StagingSandboxes::open(
            store::for_database(&foundation.database),
            settings,
            foundation.info.instance_id,
            foundation.shutdown.clone(),
        )
        .await
        .map_err(StartError::service)?;
        foundation.spawn("sandbox-file-events", watcher);
        foundation.spawn(
            "sandbox-cleanup",
            sandboxes.clone().run_cleanup(foundation.shutdown.clone()),
        );
        tracing::info!(root = %sandboxes.root().display(), "staging sandboxes ready");
        Ok(ServiceParts {
            http: api::http::routes(sandboxes),
            ..ServiceParts::default()
        })
    }
}
