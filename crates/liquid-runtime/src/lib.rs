//! Composition of the shared crates into a running Liquid service.
//!
//! A service crate owns its domain, routes and migrations; this crate turns its configuration
//! into connected backends (database by URL with migrations, bus, cache), verified auth, the
//! platform gRPC contract and a started [`liquid_kit::ServiceHost`]. It must hold no service's
//! domain logic.

pub mod config;
pub mod platform;
mod shared_bus;

use std::sync::Arc;

use axum::Router;
use liquid_auth::{AuthLayer, Verifier};
use liquid_bus::EventBus;
use liquid_kit::error::{ErrorCode, HasErrorCode};
use liquid_kit::health::ReadinessCheck;
use liquid_kit::{RunningService, ServiceHost};
use liquid_store::{Cache, Database, Migrations};
use tokio_util::sync::CancellationToken;

pub use config::{Peer, ServiceConfig, ServiceDefaults, peer_key};

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
}

impl HasErrorCode for StartError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StartError::Config(e) => e.error_code(),
            StartError::Database(e) => e.error_code(),
            StartError::Bus(e) => e.error_code(),
            StartError::Auth(e) => e.error_code(),
            StartError::Serve(e) => e.error_code(),
        }
    }
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
    /// Verifies callers' tokens.
    pub verifier: Arc<Verifier>,
    /// What this replica is.
    pub info: Arc<platform::InstanceInfo>,
    /// Where the other services are.
    pub peers: Arc<std::collections::BTreeMap<String, config::Peer>>,
}

impl Foundation {
    /// Connects every backend named in `config`, runs the service's migrations and records this
    /// start in the service's instance log.
    pub async fn connect(
        defaults: &'static ServiceDefaults,
        config: &ServiceConfig,
        migrations: &Migrations,
    ) -> Result<Foundation, StartError> {
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
            verifier,
            info,
            peers,
        })
    }

    /// A host for this service with readiness checks for its backends, the platform gRPC
    /// contract and `router` behind the auth layer.
    pub fn host(&self, config: &ServiceConfig, router: Router) -> ServiceHost {
        let router = router
            .merge(platform::info_router(self.clone()))
            .layer(AuthLayer::new(self.verifier.clone()));
        let host = ServiceHost::new(self.defaults.name, &config.server)
            .readiness(
                Arc::new(platform::DatabaseReady(self.database.clone())) as Arc<dyn ReadinessCheck>
            )
            .readiness(Arc::new(platform::BusReady(self.bus.clone())))
            .readiness(Arc::new(platform::CacheReady(self.cache.clone())))
            .http(router);
        if self.defaults.grpc_port.is_some() {
            host.grpc(tonic::service::Routes::new(platform::grpc_service(
                self.clone(),
            )))
        } else {
            host
        }
    }
}

/// Builds and starts a service with no routes of its own beyond the platform ones.
pub async fn start(
    defaults: &'static ServiceDefaults,
    migrations: &Migrations,
    config: &ServiceConfig,
    router: impl FnOnce(&Foundation) -> Router,
    shutdown: CancellationToken,
) -> Result<RunningService, StartError> {
    let foundation = Foundation::connect(defaults, config, migrations).await?;
    let routes = router(&foundation);
    Ok(foundation.host(config, routes).start(shutdown).await?)
}

/// The whole life of a service binary: load configuration (`--config FILE` and the
/// environment), start telemetry, start the service, run until SIGINT/SIGTERM, drain, flush.
/// Exit code 2 for bad configuration, 1 for any other start-up failure.
pub async fn main(
    defaults: &'static ServiceDefaults,
    migrations: &Migrations,
    router: impl FnOnce(&Foundation) -> Router,
) -> std::process::ExitCode {
    let file = config_file_argument();
    let config = match ServiceConfig::load(defaults, file.as_deref()) {
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
    let code = match start(defaults, migrations, &config, router, shutdown).await {
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
