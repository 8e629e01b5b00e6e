//! Composition of the shared crates into a running Liquid service.
//!
//! A service crate owns its domain, routes and migrations and says so by implementing
//! [`Service`]; this crate turns its configuration into connected backends (database by URL with
//! migrations, bus, cache), verified auth, the platform gRPC contract and a started
//! [`liquid_kit::ServiceHost`], the same way for a service binary ([`main`]), the embedded
//! runner and tests ([`start`]). It must hold no service's domain logic.

pub mod config;
pub mod platform;
mod shared_bus;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use liquid_auth::{AuthLayer, Verifier};
use liquid_bus::EventBus;
use liquid_kit::config::{ServerConfig, Validate};
use liquid_kit::error::{ErrorCode, HasErrorCode};
use liquid_kit::health::ReadinessCheck;
use liquid_kit::{RunningService, ServiceHost};
use liquid_store::{Cache, Database, Migrations};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{NoSettings, Peer, ServiceConfig, ServiceDefaults, peer_key};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration was rejected.
    #[error(transparent)]
    Config(#[from] liquid_kit::config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] liquid_store::StoreError),
    /// The bus could not be reached.
    #[error("bus: {0}")]
    Bus(#[from] liquid_bus::BusError),
    /// Auth keys could not be loaded.
    #[error("auth: {0}")]
    Auth(#[from] liquid_auth::AuthError),
    /// A listener could not be bound.
    #[error(transparent)]
    Serve(#[from] liquid_kit::server::ServeError),
    /// The service's own start-up failed (see [`StartError::service`]).
    #[error("{message}")]
    Service {
        /// The stable code of the underlying error.
        code: ErrorCode,
        /// What failed, with what to do next.
        message: String,
    },
}

impl StartError {
    /// Wraps a service's own start-up error, keeping its code.
    pub fn service<E: HasErrorCode + std::fmt::Display>(error: E) -> Self {
        StartError::Service {
            code: error.error_code(),
            message: error.to_string(),
        }
    }
}

impl HasErrorCode for StartError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StartError::Config(e) => e.error_code(),
            StartError::Database(e) => e.error_code(),
            StartError::Bus(e) => e.error_code(),
            StartError::Auth(e) => e.error_code(),
            StartError::Serve(e) => e.error_code(),
            StartError::Service { code, .. } => *code,
        }
    }
}

/// A Liquid service: what it is, its schema, its own settings and how it assembles its parts
/// on the connected [`Foundation`]. Implemented by a unit struct in each service crate
/// (`liquid_cowork::Cowork`), used by its `main.rs`, the embedded runner and its tests.
pub trait Service: Send + Sync + 'static {
    /// The service's own configuration sections, flattened beside the shared ones
    /// ([`ServiceConfig::settings`]); [`NoSettings`] when it has none.
    type Settings: Default
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned
        + Validate
        + Send
        + Sync
        + 'static;

    /// Name and usual ports.
    fn defaults() -> &'static ServiceDefaults;

    /// The service's schema, for Postgres and SQLite.
    fn migrations() -> &'static Migrations;

    /// Adjusts the settings' defaults for embedded mode (`liquid up`): state that would otherwise
    /// land in the working directory goes under `data_dir`. The file and the environment are
    /// layered on top afterwards, so users can still move it.
    fn embedded_defaults(_settings: &mut Self::Settings, _data_dir: &std::path::Path) {}

    /// Builds the service's routes, gRPC services, readiness checks and background tasks on
    /// the connected backends. Background work goes through [`Foundation::spawn`] so shutdown
    /// waits for it.
    fn build(
        foundation: &Foundation,
        settings: &Self::Settings,
    ) -> impl Future<Output = Result<ServiceParts, StartError>> + Send;
}

/// What a service adds to the platform contract.
#[derive(Default)]
pub struct ServiceParts {
    /// Routes behind the auth layer: every request carries a verified token
    /// ([`liquid_auth::Authenticated`] in handlers).
    pub http: Router,
    /// Routes served without the auth layer (discovery documents such as
    /// `/.well-known/agent-card.json`, webhooks that verify their own signatures). Keep it small.
    pub public_http: Router,
    /// The service's own gRPC services; each authenticates its callers
    /// ([`liquid_auth::AuthInterceptor`]). The platform and health services are added to them.
    pub grpc: Option<tonic::service::Routes>,
    /// Dependencies beyond database, bus and cache that must answer for `/readyz`.
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
}

/// The connected backends and identity of one service replica, shared by its handlers.
#[derive(Clone)]
pub struct Foundation {
    /// Static facts about the service.
    pub defaults: &'static ServiceDefaults,
    /// The service's own database.
    pub database: Database,
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
    /// The cache, namespaced by service.
    pub cache: Arc<dyn Cache>,
    /// The cache's URL, for a service that needs its own connection to the same server (the
    /// gateway's rate limiter runs Lua on Redis). May hold a password: never log it.
    pub cache_url: liquid_kit::Secret<String>,
    /// Verifies callers' tokens.
    pub verifier: Arc<Verifier>,
    /// What this replica is.
    pub info: Arc<platform::InstanceInfo>,
    /// Where the other services are.
    pub peers: Arc<std::collections::BTreeMap<String, config::Peer>>,
    /// Cancelled when the service shuts down; background tasks watch it.
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Foundation {
    /// Connects every backend named in `config`, runs the service's migrations and records this
    /// start in the service's instance log.
    pub async fn connect<S>(
        defaults: &'static ServiceDefaults,
        config: &ServiceConfig<S>,
        migrations: &Migrations,
        shutdown: CancellationToken,
    ) -> Result<Foundation, StartError> {
        // The process-wide metrics recorder first: a metric a service registers in `build`
        // before any `/metrics` render would otherwise go to the no-op recorder and be lost.
        liquid_kit::metrics::handle();
        let database = Database::connect(&config.database.url).await?;
        database.migrate(migrations).await?;
        let bus = shared_bus::connect(&config.bus.url).await?;
        let cache =
            liquid_store::cache::connect(&config.cache.url, &format!("liquid:{}:", defaults.name))
                .await?;
        let verifier = Arc::new(Verifier::from_config(&config.auth).await?);
        let info = Arc::new(platform::InstanceInfo::new(
            defaults,
            &database,
            &bus,
            &cache,
            config.fallbacks.clone(),
        ));
        platform::record_start(&database, &info).await?;
        let peers = Arc::new(config.peers.clone());
        Ok(Foundation {
            defaults,
            database,
            bus,
            cache,
            cache_url: liquid_kit::Secret::new(config.cache.url.clone()),
            verifier,
            info,
            peers,
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    /// Spawns a named background task inside its own span. It must return soon after
    /// [`Foundation::shutdown`] is cancelled; the service's `wait` waits for it (up to the
    /// grace period).
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", service = self.defaults.name, task = name);
        self.tasks.spawn(task.instrument(span));
    }

    /// A host for this service with readiness checks for its backends, the platform gRPC
    /// contract and the service's parts.
    pub fn host(&self, server: &ServerConfig, parts: ServiceParts) -> ServiceHost {
        let router = parts
            .http
            .merge(platform::info_router(self.clone()))
            .layer(AuthLayer::new(self.verifier.clone()))
            .merge(parts.public_http);
        let mut host = ServiceHost::new(self.defaults.name, server)
            .readiness(
                Arc::new(platform::DatabaseReady(self.database.clone())) as Arc<dyn ReadinessCheck>
            )
            .readiness(Arc::new(platform::BusReady(self.bus.clone())))
            .readiness(Arc::new(platform::CacheReady(self.cache.clone())))
            .http(router)
            .background(self.tasks.clone());
        for check in parts.readiness {
            host = host.readiness(check);
        }
        if self.defaults.grpc_port.is_some() {
            // `add_service`, not a router merge: every `Routes::new` carries tonic's
            // "unimplemented" fallback and axum refuses to merge two fallbacks.
            let platform = platform::grpc_service(self.clone());
            let routes = match parts.grpc {
                Some(own) => own.add_service(platform),
                None => tonic::service::Routes::new(platform),
            };
            host.grpc(routes)
        } else {
            host
        }
    }
}

/// Connects, builds and starts service `S` on `config`; returns once its listeners are bound.
pub async fn start<S: Service>(
    config: &ServiceConfig<S::Settings>,
    shutdown: CancellationToken,
) -> Result<RunningService, StartError> {
    let foundation =
        Foundation::connect(S::defaults(), config, S::migrations(), shutdown.clone()).await?;
    let parts = S::build(&foundation, &config.settings).await?;
    Ok(foundation
        .host(&config.server, parts)
        .start(shutdown)
        .await?)
}

/// The whole life of a service binary: load configuration (`--config FILE` and the
/// environment), start telemetry, start the service, run until SIGINT/SIGTERM, drain, flush.
/// Exit code 2 for bad configuration, 1 for any other start-up failure.
pub async fn main<S: Service>() -> std::process::ExitCode {
    let defaults = S::defaults();
    let file = config_file_argument();
    let config = match ServiceConfig::<S::Settings>::load(defaults, file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.error_code());
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = match liquid_kit::telemetry::init(defaults.name, &config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.error_code());
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = liquid_kit::shutdown::on_signal();
    let code = match start::<S>(&config, shutdown).await {
        Ok(running) => match running.wait().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "service stopped with an error");
                std::process::ExitCode::FAILURE
            }
        },
        Err(error) => {
            tracing::error!(code = %error.error_code(), %error, "service failed to start");
            eprintln!("error[{}]: {error}", error.error_code());
            std::process::ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

fn config_file_argument() -> Option<std::path::PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    std::env::var("LIQUID_CONFIG")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Into::into)
}
