//! The cowork service: deep-work sessions: planning, DAG execution, permission pipeline and
//! staging sandboxes.
//!
//! Parts: the permission pipeline ([`permission`], decisions in [`domain::permission`]), the
//! one gate every agent file operation goes through; staging sandboxes ([`sandbox`]) with
//! their REST API under `/api/v1/sandbox` ([`api::http`]), the append-only audit log, the
//! expired-sandbox cleanup job and file-event change detection; deep-work sessions
//! ([`sessions`]) with the planner ([`planner`], prompts in [`directives`]), the DAG executor
//! ([`executor`]) running steps in container-pool containers ([`pool_client`]) with the
//! built-in agent ([`agent`]) or a coding CLI, the agent manager ([`manager`]), events
//! ([`events`]) and their REST API under `/api/v1/cowork` ([`api::cowork`]); the A2A bridge
//! ([`bridge`]: steps delegated to remote A2A agents, and cowork served as an A2A agent
//! through the a2a service on the gRPC port). Layout:
//! [`config`] (its sections), [`domain`] (pure logic), [`fs`] (the filesystem edge),
//! [`store`] (Postgres and SQLite), [`metrics`]. It must not read another service's tables.

pub mod agent;
pub mod api;
pub mod bridge;
pub mod config;
pub mod directives;
pub mod domain;
pub mod error;
pub mod events;
pub mod executor;
pub mod fs;
pub mod manager;
pub mod metrics;
pub mod permission;
pub mod planner;
pub mod pool_client;
pub mod sandbox;
pub mod sessions;
pub mod store;

use liquid_runtime::{Foundation, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

pub use config::CoworkSettings;
pub use permission::{AgentContext, PermissionGate};
pub use sandbox::StagingSandboxes;
pub use sessions::CoworkSessions;

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
        // The dev key `liquid up` generates: container-pool trusts its service tokens.
        let dev_key = data_dir.join("dev-signing-key.pem");
        if dev_key.exists() || settings.executor.service_key_file.is_empty() {
            settings.executor.service_key_file = dev_key.display().to_string();
        }
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
        // Directives first: a tampered prompt stops the service, naming the file.
        let directives =
            directives::load(Some(&settings.directives.dir)).map_err(StartError::service)?;
        tracing::info!(origin = %directives.origin, files = directives.files.len(), "directives verified");
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

        let mut llm = settings.llm.clone();
        llm.fill_keys_from(|k| std::env::var(k).ok());
        let router = std::sync::Arc::new(
            liquid_llm::ModelRouter::from_config(&llm).map_err(StartError::service)?,
        );
        let session_store = store::sessions_for_database(&foundation.database);
        let (events, publisher) = events::CoworkEvents::new(
            foundation.bus.clone(),
            session_store.clone(),
            foundation.shutdown.clone(),
        )
        .await
        .map_err(StartError::service)?;
        foundation.spawn("cowork-event-publisher", publisher);
        let pool = pool_client(foundation, settings);
        if let Err(why) = &pool {
            tracing::warn!(reason = %why, "steps cannot run: no container-pool client");
        }
        let sessions = CoworkSessions::new(sessions::SessionParts {
            store: session_store,
            sandboxes: sandboxes.clone(),
            events,
            router,
            directives: std::sync::Arc::new(directives),
            pool,
            settings: settings.clone(),
            worker: foundation.info.instance_id.to_string(),
            shutdown: foundation.shutdown.clone(),
        });
        sessions.recover().await.map_err(StartError::service)?;
        foundation.spawn("cowork-agent-dispatch", sessions.clone().run_dispatch());
        foundation.spawn("cowork-agent-monitor", sessions.clone().run_monitor());
        foundation.spawn("cowork-queue-stats", sessions.clone().run_stats());
        // Cowork as an A2A agent: the a2a service calls this executor for its `cowork` agent.
        let a2a_executor = bridge::executor_service::CoworkAgentExecutor::new(sessions.clone())
            .routes(foundation.verifier.clone());
        Ok(ServiceParts {
            http: api::http::routes(sandboxes).merge(api::cowork::routes(sessions)),
            grpc: Some(a2a_executor),
            ..ServiceParts::default()
        })
    }
}

/// The container-pool client from `peers.container_pool.grpc` and the service key, or why
/// there is none (steps then fail with that reason).
fn pool_client(
    foundation: &Foundation,
    settings: &CoworkSettings,
) -> Result<pool_client::PoolClient, String> {
    let key_file = settings.executor.service_key_file.trim();
    if key_file.is_empty() {
        return Err(
            "no executor.service_key_file is configured, so cowork cannot call container-pool"
                .into(),
        );
    }
    let key = liquid_auth::SigningKey::load(std::path::Path::new(key_file))
        .map_err(|e| format!("executor.service_key_file {key_file}: {e}"))?;
    let peer = foundation
        .peers
        .get(&liquid_runtime::peer_key("container-pool"))
        .ok_or_else(|| "no peers.container_pool entry".to_owned())?;
    let tokens = std::sync::Arc::new(pool_client::ServiceTokens::new(
        key,
        foundation.verifier.issuer(),
        foundation.verifier.audiences(),
    ));
    pool_client::PoolClient::new(&peer.grpc, tokens).map_err(|e| e.to_string())
}
