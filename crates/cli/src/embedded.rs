//! Embedded mode: the seven services in one process on defaults that need nothing but Rust.
//!
//! The gateway starts last so its peers point at the addresses the others really bound. The
//! dev signing key is generated on first start and kept in the data directory, so tokens stay
//! valid across restarts; so does every service's SQLite database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use liquid_runtime::config::PLATFORM;
use liquid_runtime::{Peer, Service, ServiceConfig, ServiceDefaults, peer_key};
use liquid_store::Migrations;
use serde::Serialize;

/// One service as the embedded runner sees it: its facts and how to load, start and migrate it
/// (each a monomorphised function of [`Service`], so services keep their own settings types).
struct Embedded {
    defaults: &'static ServiceDefaults,
    migrations: &'static Migrations,
    start: for<'a> fn(&'a Launch<'a>) -> BoxFuture<'a, anyhow::Result<Started>>,
    database_url: fn(&Launch<'_>) -> anyhow::Result<String>,
}

impl Embedded {
    fn of<S: Service>() -> Embedded {
        Embedded {
            defaults: S::defaults(),
            migrations: S::migrations(),
            start: |launch| Box::pin(start_service::<S>(launch)),
            database_url: |launch| Ok(launch.config::<S>()?.database.url),
        }
    }
}

/// What every embedded service is started with.
struct Launch<'a> {
    data_dir: &'a Path,
    public_key: &'a Path,
    file: Option<&'a Path>,
    ephemeral_ports: bool,
    /// The addresses the services started so far really bound (the gateway's peers).
    peers: &'a std::collections::BTreeMap<String, Peer>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// A started service and the fallbacks it took.
struct Started {
    running: liquid_kit::RunningService,
    fallbacks: Vec<String>,
}

impl Launch<'_> {
    /// The embedded configuration of service `S`.
    fn config<S: Service>(&self) -> anyhow::Result<ServiceConfig<S::Settings>> {
        let mut settings = S::Settings::default();
        S::embedded_defaults(&mut settings, self.data_dir);
        embedded_config(
            S::defaults(),
            settings,
            self.data_dir,
            self.public_key,
            self.file,
            self.ephemeral_ports,
        )
    }
}

async fn start_service<S: Service>(launch: &Launch<'_>) -> anyhow::Result<Started> {
    let defaults = S::defaults();
    let mut config = launch.config::<S>()?;
    config.fallbacks = fallbacks(&config);
    // The addresses the services started before this one really bound (with
    // --ephemeral-ports they are not the defaults).
    config.peers.extend(launch.peers.clone());
    let running = liquid_runtime::start::<S>(&config, launch.shutdown.clone())
        .await
        .with_context(|| format!("starting the {} service", defaults.name))?;
    Ok(Started {
        running,
        fallbacks: config.fallbacks,
    })
}

/// Every service; the gateway is last because it needs the others' addresses.
fn services() -> [Embedded; 7] {
    [
        // cowork before a2a: a2a serves cowork as an agent at the address cowork bound.
        Embedded::of::<liquid_cowork::Cowork>(),
        Embedded::of::<liquid_a2a_service::A2a>(),
        Embedded::of::<liquid_container_pool::ContainerPool>(),
        Embedded::of::<liquid_healer::Healer>(),
        Embedded::of::<liquid_registry::Registry>(),
        Embedded::of::<liquid_media::Media>(),
        Embedded::of::<liquid_gateway::Gateway>(),
    ]
}

const DEV_ISSUER: &str = "liquid-dev";
const DEV_AUDIENCE: &str = "liquid";
const DEV_KEY_FILE: &str = "dev-signing-key.pem";

/// The data directory as an absolute, canonical path, created if missing. The default
/// (`.liquid`) is relative to where `liquid` runs; services get it absolute, so a path derived
/// from it (a database file, the pool's mount roots) means the same whatever directory a
/// component resolves it from. Each command (`up`, `token`, `migrate`) resolves it first.
fn resolve_data_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the data directory {}", path.display()))?;
    std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve the data directory {}", path.display()))
}

/// The dev signing key in `data_dir` (made when missing) and its public half's file; the
/// directory exists ([`resolve_data_dir`]).
fn dev_key(data_dir: &Path) -> anyhow::Result<(liquid_auth::SigningKey, PathBuf)> {
    let path = data_dir.join(DEV_KEY_FILE);
    let key = liquid_auth::SigningKey::load_or_generate(&path)
        .with_context(|| format!("dev signing key {}", path.display()))?;
    let public = data_dir.join("dev-signing-key.pub.pem");
    std::fs::write(&public, key.public_key_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok((key, public))
}

/// The embedded configuration of one service: SQLite under the data directory, the dev key,
/// then the TOML file and the environment on top.
fn embedded_config<S>(
    defaults: &ServiceDefaults,
    settings: S,
    data_dir: &Path,
    public_key: &Path,
    file: Option<&Path>,
    ephemeral_ports: bool,
) -> anyhow::Result<ServiceConfig<S>>
where
    S: Default + serde::Serialize + serde::de::DeserializeOwned + liquid_kit::config::Validate,
{
    let mut base = ServiceConfig::defaults_for(defaults);
    base.settings = settings;
    base.database.url = format!("sqlite://{}/{}.db", data_dir.display(), defaults.name);
    base.auth = liquid_auth::AuthConfig::dev_public_key(public_key, DEV_ISSUER, DEV_AUDIENCE);
    if ephemeral_ports {
        base.server = base.server.ephemeral();
    }
    let names: Vec<&str> = PLATFORM.iter().map(|(name, _, _)| *name).collect();
    let config = liquid_kit::config::load_for_one_of(defaults.name, &names, base, file)
        .with_context(|| format!("configuration of the {} service", defaults.name))?;
    Ok(config)
}

fn fallbacks<S>(config: &ServiceConfig<S>) -> Vec<String> {
    let mut out = Vec::new();
    if config.database.url.starts_with("sqlite:") {
        out.push(
            "database: SQLite (set LIQUID_<SVC>__DATABASE__URL=postgres://... for PostgreSQL)"
                .into(),
        );
    }
    if config.bus.url.starts_with("memory://") {
        out.push(
            "bus: in-process (set LIQUID_<SVC>__BUS__URL=nats://... for NATS JetStream)".into(),
        );
    }
    if config.cache.url.starts_with("memory://") {
        out.push("cache: in-memory (set LIQUID_<SVC>__CACHE__URL=redis://... for Redis)".into());
    }
    out.push("auth: development Ed25519 key generated in the data directory".into());
    out
}

/// What `liquid up` writes to `<data>/up.json` once everything is ready.
#[derive(Debug, Serialize)]
struct UpManifest {
    services: Vec<UpService>,
    token: String,
    fallbacks: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UpService {
    name: &'static str,
    http: String,
    grpc: Option<String>,
}

/// `liquid up`.
pub async fn up(data_dir: &Path, file: Option<&Path>, ephemeral_ports: bool) -> anyhow::Result<()> {
    let data_dir = &resolve_data_dir(data_dir)?;
    let (key, public) = dev_key(data_dir)?;
    let telemetry_cfg = embedded_config::<<liquid_gateway::Gateway as Service>::Settings>(
        &liquid_gateway::SERVICE,
        Default::default(),
        data_dir,
        &public,
        file,
        ephemeral_ports,
    )?
    .telemetry;
    let telemetry = liquid_kit::telemetry::init("liquid", &telemetry_cfg)?;
    let shutdown = liquid_kit::shutdown::on_signal();

    let mut running = Vec::new();
    let mut peers = std::collections::BTreeMap::new();
    let mut all_fallbacks = Vec::new();
    for service in services() {
        let launch = Launch {
            data_dir,
            public_key: &public,
            file,
            ephemeral_ports,
            peers: &peers,
            shutdown: shutdown.clone(),
        };
        let started = (service.start)(&launch).await?;
        for f in started.fallbacks {
            if !all_fallbacks.contains(&f) {
                all_fallbacks.push(f);
            }
        }
        let started = started.running;
        peers.insert(
            peer_key(service.defaults.name),
            Peer {
                http: format!("http://{}", started.http_addr()),
                grpc: started
                    .grpc_addr()
                    .map(|a| format!("http://{a}"))
                    .unwrap_or_default(),
            },
        );
        running.push(started);
    }

    let token = key.mint(
        &liquid_auth::TokenRequest::user("dev", ["admin:*"])
            .tenant("dev")
            .issuer(DEV_ISSUER)
            .audience(DEV_AUDIENCE)
            .ttl(Duration::from_secs(24 * 3600)),
    )?;
    let mut manifest = UpManifest {
        services: Vec::new(),
        token: token.clone(),
        fallbacks: all_fallbacks,
    };
    for r in &running {
        manifest.services.push(UpService {
            name: r.name(),
            http: format!("http://{}", r.http_addr()),
            grpc: r.grpc_addr().map(|a| a.to_string()),
        });
    }
    // The gateway first, then the platform's order.
    manifest
        .services
        .sort_by_key(|s| PLATFORM.iter().position(|(n, _, _)| *n == s.name));
    print_banner(&manifest, data_dir);
    let manifest_path = data_dir.join("up.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;

    let mut failure = None;
    for r in running {
        if let Err(e) = r.wait().await {
            failure = Some(e);
        }
    }
    let _ = std::fs::remove_file(&manifest_path);
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    println!("liquid stopped");
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn print_banner(manifest: &UpManifest, data_dir: &Path) {
    println!();
    println!(
        "Liquid is up (embedded mode, data in {})",
        data_dir.display()
    );
    println!();
    for s in &manifest.services {
        match &s.grpc {
            Some(g) => println!("  {:<15} {:<28} grpc {g}", s.name, s.http),
            None => println!("  {:<15} {}", s.name, s.http),
        }
    }
    if let Some(gw) = manifest.services.iter().find(|s| s.name == "gateway") {
        println!();
        println!(
            "  try: curl -H \"Authorization: Bearer $TOKEN\" {}/api/v1/cowork/info",
            gw.http
        );
    }
    println!();
    println!("Dev token (admin:*, 24h; `liquid token` mints more):");
    println!("  TOKEN={}", manifest.token);
    println!();
    println!("Fell back to:");
    for f in &manifest.fallbacks {
        println!("  - {f}");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}

/// `liquid token`.
pub fn token(
    data_dir: &Path,
    scopes: &str,
    ttl: Duration,
    sub: &str,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    let data_dir = &resolve_data_dir(data_dir)?;
    let (key, _) = dev_key(data_dir)?;
    let scopes: Vec<&str> = scopes.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let request = liquid_auth::TokenRequest::user(sub, scopes)
        .tenant(tenant.unwrap_or(sub))
        .issuer(DEV_ISSUER)
        .audience(DEV_AUDIENCE)
        .ttl(ttl);
    Ok(key.mint(&request)?)
}

/// `liquid migrate`.
pub async fn migrate(
    data_dir: &Path,
    only: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let data_dir = &resolve_data_dir(data_dir)?;
    let (_, public) = dev_key(data_dir)?;
    let mut matched = false;
    for service in services() {
        if only.is_some_and(|o| o != service.defaults.name) {
            continue;
        }
        matched = true;
        let launch = Launch {
            data_dir,
            public_key: &public,
            file,
            ephemeral_ports: false,
            peers: &std::collections::BTreeMap::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let url = (service.database_url)(&launch)?;
        let database = liquid_store::Database::connect(&url)
            .await
            .with_context(|| format!("{}: database", service.defaults.name))?;
        database
            .migrate(service.migrations)
            .await
            .with_context(|| format!("{}: migrations", service.defaults.name))?;
        println!(
            "{:<15} migrated ({})",
            service.defaults.name,
            liquid_kit::secret::redact_url(&url)
        );
    }
    if !matched {
        let names: Vec<&str> = PLATFORM.iter().map(|(n, _, _)| *n).collect();
        anyhow::bail!(
            "no service named `{}`; one of: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    Ok(())
}
