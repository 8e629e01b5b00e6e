//! The container-pool service: warm pools of isolated Docker containers where agent work runs.
//!
//! It keeps containers of each template started and idle (a cold start costs about 0.25 s, a
//! warm claim a few milliseconds), places new ones across Docker hosts, binds a claim's
//! environment and secrets late, resets or replaces a container before another claim gets it,
//! runs commands and coding-agent CLIs in them, and sweeps what a crashed replica left behind.
//! Without a Docker engine it falls back to local processes and says so on every claim.
//!
//! Layout: [`config`] (its sections), [`domain`] (pure logic), [`runtime`] (Docker and the
//! process fallback), [`secrets`], [`store`], [`pool`] (the warm pools), [`runners`],
//! [`events`], [`api`]. It must not read another service's tables.

pub mod api;
pub mod config;
pub mod domain;
pub mod egress;
pub mod error;
pub mod events;
pub mod pool;
pub mod runners;
pub mod runtime;
pub mod secrets;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use liquid_kit::health::ReadinessCheck;
use liquid_runtime::{Foundation, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;

use crate::config::{PoolSettings, RuntimeChoice};
use crate::error::PoolError;
use crate::pool::{PoolParts, ReplicaIdentity, WarmPools};
use crate::runtime::ContainerRuntime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;

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

type Hosts = Vec<(Arc<dyn ContainerRuntime>, f64, u32, bool)>;

/// Connects the runtimes the settings ask for: every Docker host that answers, or the
/// process runtime (chosen, or fallen back to under `auto` when no engine answers).
pub async fn connect_runtimes(settings: &PoolSettings) -> Result<Hosts, PoolError> {
    let process = || -> Result<Hosts, PoolError> {
        let root = if settings.pool.process_root.is_empty() {
            std::env::temp_dir().join(format!("liquid-pool-{}", settings.pool.name))
        } else {
            settings.pool.process_root.clone().into()
        };
        let rt: Arc<dyn ContainerRuntime> = Arc::new(ProcessRuntime::new(root)?);
        Ok(vec![(rt, 1.0, 0, true)])
    };
    if settings.pool.runtime == RuntimeChoice::Process {
        return process();
    }
    let mut hosts: Hosts = Vec::new();
    let mut failures = Vec::new();
    for h in settings.docker.effective_hosts() {
        match DockerRuntime::connect(&h, &settings.docker).await {
            Ok(rt) => hosts.push((Arc::new(rt), h.weight, h.max_containers, h.enabled)),
            Err(e) => {
                tracing::warn!(host = %h.name, error = %e, "docker host does not answer");
                failures.push(e.to_string());
            }
        }
    }
    if hosts.iter().any(|(_, _, _, enabled)| *enabled) {
        return Ok(hosts);
    }
    if settings.pool.runtime == RuntimeChoice::Docker {
        return Err(PoolError::NoHost(format!(
            "pool.runtime is docker but no enabled host answers ({}); start Docker or set pool.runtime = \"auto\"",
            failures.join("; ")
        )));
    }
    tracing::warn!(
        "no docker engine answers: falling back to the process runtime, which is NOT isolated"
    );
    process()
}

struct DockerReady(WarmPools);

#[async_trait]
impl ReadinessCheck for DockerReady {
    fn name(&self) -> &str {
        "containers"
    }

    async fn check(&self) -> Result<(), String> {
        let status = self.0.status();
        if status.hosts.iter().any(|h| h.enabled && h.healthy) {
            Ok(())
        } else {
            Err("no enabled container host answers".into())
        }
    }
}

impl Service for ContainerPool {
    type Settings = PoolSettings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    fn embedded_defaults(settings: &mut Self::Settings, data_dir: &std::path::Path) {
        // In one process, cowork's staging sandboxes live under the same data directory; claims
        // may mount them (the executor does), nothing else.
        settings.pool.mount_roots = vec![
            data_dir
                .join("cowork")
                .join("sandboxes")
                .display()
                .to_string(),
        ];
    }

    async fn build(
        foundation: &Foundation,
        settings: &PoolSettings,
    ) -> Result<ServiceParts, StartError> {
        let hosts = connect_runtimes(settings)
            .await
            .map_err(StartError::service)?;
        let events = events::PoolEvents::new(foundation.bus.clone())
            .await
            .map_err(StartError::service)?;
        let secrets =
            secrets::SecretResolver::new(&settings.secrets).map_err(StartError::service)?;
        let parts = |hosts, secrets| PoolParts {
            settings: settings.clone(),
            hosts,
            store: store::for_database(&foundation.database),
            events: events.clone(),
            secrets,
            replica: ReplicaIdentity::current(foundation.info.instance_id),
            shutdown: foundation.shutdown.clone(),
        };
        let on_docker = hosts
            .iter()
            .any(|(rt, ..)| rt.kind() == runtime::RuntimeKind::Docker);
        let pools = match WarmPools::start(parts(hosts, secrets)).await {
            Ok(p) => p,
            // Docker answers but cannot be made ready (no busybox to build the base image,
            // say): under `auto` the embedded mode still comes up, on the labelled fallback.
            Err(e) if on_docker && settings.pool.runtime == RuntimeChoice::Auto => {
                tracing::warn!(error = %e, "docker is not usable for the pool; falling back to the process runtime, which is NOT isolated");
                let mut process = settings.clone();
                process.pool.runtime = RuntimeChoice::Process;
                let hosts = connect_runtimes(&process)
                    .await
                    .map_err(StartError::service)?;
                let secrets =
                    secrets::SecretResolver::new(&settings.secrets).map_err(StartError::service)?;
                WarmPools::start(parts(hosts, secrets))
                    .await
                    .map_err(StartError::service)?
            }
            Err(e) => return Err(StartError::service(e)),
        };
        tracing::info!(
            runtime = pools.runtime_kind().as_str(),
            replica = %pools.replica().id,
            "container pool ready"
        );
        pools.spawn_tasks(|name, task| foundation.spawn(name, task));
        // Built from a plain axum router (no fallback): the runtime merges it with the
        // platform service's routes, and axum refuses to merge two routers with fallbacks,
        // which `Routes::new` would add.
        let grpc_service = api::grpc::service(pools.clone(), foundation.verifier.clone());
        let grpc = tonic::service::Routes::from(axum::Router::new().route_service(
            &format!(
                "/{}/{{*rest}}",
                <api::grpc::GrpcService as tonic::server::NamedService>::NAME
            ),
            grpc_service,
        ));
        Ok(ServiceParts {
            http: api::http::routes(pools.clone()),
            public_http: axum::Router::new(),
            grpc: Some(grpc),
            readiness: vec![Arc::new(DockerReady(pools))],
        })
    }
}
