//! The configuration every service shares: where it listens, telemetry, auth, and which
//! backends it uses, each chosen by URL (`sqlite://` or `postgres://`, `memory://` or `nats://`,
//! `memory://` or `redis://`).

use std::collections::BTreeMap;
use std::path::Path;

use liquid_auth::AuthConfig;
use liquid_kit::config::{ConfigError, ServerConfig, Validate};
use liquid_kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// Facts about a service that are not configuration: its name and usual ports.
#[derive(Debug)]
pub struct ServiceDefaults {
    /// Name (`gateway`, `a2a`, `cowork`, `container-pool`, `healer`, `registry`, `media`).
    pub name: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Usual HTTP port (ARCHITECTURE.md's table).
    pub http_port: u16,
    /// Usual gRPC port; `None` for services without a gRPC API (the gateway).
    pub grpc_port: Option<u16>,
}

/// A backend chosen by URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendUrl {
    /// The URL. Passwords in it are redacted in logs.
    pub url: String,
}

/// How to reach another service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Peer {
    /// Base URL of its HTTP API (`http://cowork:8082`).
    pub http: String,
    /// URL of its gRPC endpoint, empty when it has none.
    pub grpc: String,
}

/// Every service of the platform with its usual ports (ARCHITECTURE.md's table).
pub const PLATFORM: [(&str, u16, Option<u16>); 7] = [
    ("gateway", 8080, None),
    ("a2a", 8081, Some(9081)),
    ("cowork", 8082, Some(9082)),
    ("container-pool", 8083, Some(9083)),
    ("healer", 8084, Some(9084)),
    ("registry", 8085, Some(9085)),
    ("media", 8086, Some(9086)),
];

/// The key of a service in [`ServiceConfig::peers`] (env-friendly: `container-pool` → `container_pool`).
pub fn peer_key(service: &str) -> String {
    service.replace('-', "_")
}

fn default_peers() -> BTreeMap<String, Peer> {
    PLATFORM
        .iter()
        .map(|(name, http, grpc)| {
            let peer = Peer {
                http: format!("http://127.0.0.1:{http}"),
                grpc: grpc
                    .map(|p| format!("http://127.0.0.1:{p}"))
                    .unwrap_or_default(),
            };
            (peer_key(name), peer)
        })
        .collect()
}

/// The settings of a service that has none beyond the shared ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Validate for NoSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Configuration of one service (`LIQUID_<SVC>__...`): the sections every service shares, and
/// the service's own sections `S` flattened beside them (`[pool]` → `LIQUID_CONTAINER_POOL__POOL__...`).
///
/// A misspelt top-level section is rejected by [`liquid_kit::config::load_with`]; each section
/// type rejects unknown keys itself (`deny_unknown_fields`). `S`'s top-level fields must be
/// tables (structs), not options, so that its defaults list every section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    default,
    bound(deserialize = "S: Default + serde::de::DeserializeOwned")
)]
pub struct ServiceConfig<S = NoSettings> {
    /// Listen addresses and limits.
    pub server: ServerConfig,
    /// Logs, traces, metrics export.
    pub telemetry: TelemetryConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// `postgres://...` or `sqlite://path`.
    pub database: BackendUrl,
    /// `nats://host:port` or `memory://`.
    pub bus: BackendUrl,
    /// `redis://host:port` or `memory://`.
    pub cache: BackendUrl,
    /// Where the other services are, keyed by name with `_` for `-` (`container_pool`).
    pub peers: BTreeMap<String, Peer>,
    /// Fallbacks the launcher took (shown in the platform info); not read from files.
    #[serde(skip)]
    pub fallbacks: Vec<String>,
    /// The service's own sections.
    #[serde(flatten)]
    pub settings: S,
}

impl<S: Default> ServiceConfig<S> {
    /// Embedded defaults for `defaults`: its usual ports on loopback, SQLite under
    /// `.liquid/<svc>.db`, in-process bus and memory cache, and `S`'s defaults.
    pub fn defaults_for(defaults: &ServiceDefaults) -> Self {
        ServiceConfig {
            server: ServerConfig::on_ports(defaults.http_port, defaults.grpc_port),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            database: BackendUrl {
                url: format!("sqlite://.liquid/{}.db", defaults.name),
            },
            bus: BackendUrl {
                url: "memory://".into(),
            },
            cache: BackendUrl {
                url: "memory://".into(),
            },
            peers: default_peers(),
            fallbacks: Vec::new(),
            settings: S::default(),
        }
    }
}

impl<S> ServiceConfig<S>
where
    S: Default + Serialize + serde::de::DeserializeOwned + Validate,
{
    /// Loads the configuration of `defaults`'s service: its defaults, then `file`, then the
    /// environment.
    pub fn load(defaults: &ServiceDefaults, file: Option<&Path>) -> Result<Self, ConfigError> {
        liquid_kit::config::load_with(defaults.name, ServiceConfig::defaults_for(defaults), file)
    }
}

impl<S: Default> Default for ServiceConfig<S> {
    fn default() -> Self {
        ServiceConfig::defaults_for(&ServiceDefaults {
            name: "service",
            version: "0.0.0",
            http_port: 0,
            grpc_port: None,
        })
    }
}

fn check_scheme(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must start with one of {}", schemes.join(", ")),
        ))
    }
}

impl<S: Validate> Validate for ServiceConfig<S> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.auth.validate()?;
        check_scheme(
            "database.url",
            &self.database.url,
            &["postgres://", "postgresql://", "sqlite:"],
        )?;
        check_scheme("bus.url", &self.bus.url, &["nats://", "memory://"])?;
        check_scheme("cache.url", &self.cache.url, &["redis://", "memory://"])?;
        for (name, peer) in &self.peers {
            if !peer.http.is_empty() {
                check_scheme(
                    &format!("peers.{name}.http"),
                    &peer.http,
                    &["http://", "https://"],
                )?;
            }
            if !peer.grpc.is_empty() {
                check_scheme(
                    &format!("peers.{name}.grpc"),
                    &peer.grpc,
                    &["http://", "https://"],
                )?;
            }
        }
        self.settings.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COWORK: ServiceDefaults = ServiceDefaults {
        name: "cowork",
        version: "0.1.0",
        http_port: 8082,
        grpc_port: Some(9082),
    };

    #[test]
    fn defaults_are_embedded_backends_on_the_usual_ports() {
        let cfg = ServiceConfig::<NoSettings>::defaults_for(&COWORK);
        assert_eq!(cfg.server.http_addr.port(), 8082);
        assert_eq!(cfg.server.grpc_addr.map(|a| a.port()), Some(9082));
        assert_eq!(cfg.database.url, "sqlite://.liquid/cowork.db");
        cfg.validate().unwrap();
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Pool {
        min_idle: u32,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct PoolSettings {
        pool: Pool,
    }

    impl Validate for PoolSettings {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.pool.min_idle > 100 {
                return Err(ConfigError::invalid("pool.min_idle", "must be at most 100"));
            }
            Ok(())
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn service_sections_sit_beside_the_shared_ones() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LIQUID_COWORK__POOL__MIN_IDLE", "4");
            jail.set_env("LIQUID_COWORK__BUS__URL", "nats://127.0.0.1:4222");
            let cfg = ServiceConfig::<PoolSettings>::load(&COWORK, None).unwrap();
            assert_eq!(cfg.settings.pool.min_idle, 4);
            assert_eq!(cfg.bus.url, "nats://127.0.0.1:4222");

            jail.set_env("LIQUID_COWORK__POOL__MIN_IDLE", "500");
            let err = ServiceConfig::<PoolSettings>::load(&COWORK, None).unwrap_err();
            assert!(err.to_string().contains("pool.min_idle"), "{err}");

            jail.set_env("LIQUID_COWORK__POOL__MIN_IDLE", "1");
            jail.set_env("LIQUID_COWORK__POOL__MAX_IDEL", "1");
            let err = ServiceConfig::<PoolSettings>::load(&COWORK, None).unwrap_err();
            assert!(err.to_string().contains("max_idel"), "{err}");

            // A service without settings still refuses a section it does not have.
            let err = ServiceConfig::<NoSettings>::load(&COWORK, None).unwrap_err();
            assert!(err.to_string().contains("`pool`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_scheme_names_the_key() {
        let mut cfg = ServiceConfig::<NoSettings>::defaults_for(&COWORK);
        cfg.bus.url = "kafka://x".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("bus.url"), "{err}");
    }
}
