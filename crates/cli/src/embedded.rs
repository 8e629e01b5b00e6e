//! Embedded mode: the seven services in one process on defaults that need nothing but Rust.
//!
//! The gateway starts last so its peers point at the addresses the others really bound. The
//! dev signing key is generated on first start and kept in the data directory, so tokens stay
//! valid across restarts; so does every service's SQLite database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use liquid_runtime::config::PLATFORM;
use liquid_runtime::{Foundation, Peer, ServiceConfig, ServiceDefaults, peer_key};
use liquid_store::Migrations;
use serde::Serialize;

/// One service as the embedded runner sees it.
struct Embedded {
    defaults: &'static ServiceDefaults,
    migrations: &'static Migrations,
    routes: fn(&Foundation) -> Router,
}

/// Every service; the gateway is last because it needs the others' addresses.
fn services() -> [Embedded; 7] {
    [
        Embedded {
            defaults: &liquid_a2a_service::SERVICE,
            migrations: &liquid_a2a_service::MIGRATIONS,
            routes: liquid_a2a_service::routes,
        },
        Embedded {
            defaults: &liquid_cowork::SERVICE,
            migrations: &liquid_cowork::MIGRATIONS,
            routes: liquid_cowork::routes,
        },
        Embedded {
            defaults: &liquid_container_pool::SERVICE,
            migrations: &liquid_container_pool::MIGRATIONS,
            routes: liquid_container_pool::routes,
        },
        Embedded {
            defaults: &liquid_healer::SERVICE,
            migrations: &liquid_healer::MIGRATIONS,
            routes: liquid_healer::routes,
        },
        Embedded {
            defaults: &liquid_registry::SERVICE,
            migrations: &liquid_registry::MIGRATIONS,
            routes: liquid_registry::routes,
        },
        Embedded {
            defaults: &liquid_media::SERVICE,
            migrations: &liquid_media::MIGRATIONS,
            routes: liquid_media::routes,
        },
        Embedded {
            defaults: &liquid_gateway::SERVICE,
            migrations: &liquid_gateway::MIGRATIONS,
            routes: liquid_gateway::routes,
        },
    ]
}

const DEV_ISSUER: &str = "liquid-dev";
const DEV_AUDIENCE: &str = "liquid";
const DEV_KEY_FILE: &str = "dev-signing-key.pem";

fn dev_key(data_dir: &Path) -> anyhow::Result<(liquid_auth::SigningKey, PathBuf)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
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
fn embedded_config(
    defaults: &ServiceDefaults,
    data_dir: &Path,
    public_key: &Path,
    file: Option<&Path>,
    ephemeral_ports: bool,
) -> anyhow::Result<ServiceConfig> {
    let mut base = ServiceConfig::defaults_for(defaults);
    base.database.url = format!("sqlite://{}/{}.db", data_dir.display(), defaults.name);
    base.auth = liquid_auth::AuthConfig::dev_public_key(public_key, DEV_ISSUER, DEV_AUDIENCE);
    if ephemeral_ports {
        base.server = base.server.ephemeral();
    }
    let config = liquid_kit::config::load_with(defaults.name, base, file)
        .with_context(|| format!("configuration of the {} service", defaults.name))?;
    Ok(config)
}

fn fallbacks(config: &ServiceConfig) -> Vec<String> {
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
    let (key, public) = dev_key(data_dir)?;
    let telemetry_cfg = embedded_config(
        &liquid_gateway::SERVICE,
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
        let mut config =
            embedded_config(service.defaults, data_dir, &public, file, ephemeral_ports)?;
        config.fallbacks = fallbacks(&config);
        for f in &config.fallbacks {
            if !all_fallbacks.contains(f) {
                all_fallbacks.push(f.clone());
            }
        }
        if service.defaults.name == "gateway" {
            config.peers.extend(peers.clone());
        }
        let started = liquid_runtime::start(
            service.defaults,
            service.migrations,
            &config,
            service.routes,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("starting the {} service", service.defaults.name))?;
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
    let (_, public) = dev_key(data_dir)?;
    let mut matched = false;
    for service in services() {
        if only.is_some_and(|o| o != service.defaults.name) {
            continue;
        }
        matched = true;
        let config = embedded_config(service.defaults, data_dir, &public, file, false)?;
        let database = liquid_store::Database::connect(&config.database.url)
            .await
            .with_context(|| format!("{}: database", service.defaults.name))?;
        database
            .migrate(service.migrations)
            .await
            .with_context(|| format!("{}: migrations", service.defaults.name))?;
        println!(
            "{:<15} migrated ({})",
            service.defaults.name,
            liquid_kit::secret::redact_url(&config.database.url)
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
