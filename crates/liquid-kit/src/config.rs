//! Layered configuration: defaults → optional TOML file → environment.
//!
//! Environment keys are `LIQUID_<SVC>__SECTION__KEY` (double underscore separates levels, the
//! service name upper-cased with `-` as `_`). Loading fails with the offending key named, and
//! [`Validate`] runs after loading so nonsense values stop the process at start-up, not later.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, HasErrorCode};

/// A configuration error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key had a value of the wrong type or could not be parsed.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `server.http_addr`.
        key: String,
        /// What was wrong and what is expected.
        reason: String,
    },
    /// The named configuration file does not exist or cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The path given.
        path: String,
        /// Why it could not be used.
        reason: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl HasErrorCode for ConfigError {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidConfig
    }
}

/// Post-load checks of a configuration type.
pub trait Validate {
    /// Returns the first invalid key with a reason.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The environment prefix of a service: `container-pool` → `LIQUID_CONTAINER_POOL__`.
pub fn env_prefix(service: &str) -> String {
    format!(
        "LIQUID_{}__",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// Loads `T` for `service` from its defaults, an optional TOML file and the environment, then
/// validates it.
pub fn load<T>(service: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    load_with(service, T::default(), file)
}

/// Like [`load`], with explicit defaults (services share one config type but not their ports).
pub fn load_with<T>(service: &str, defaults: T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Validate,
{
    // Top-level keys the configuration type knows, read off its serialized defaults: a type
    // that flattens a service's own sections into the shared ones cannot use
    // `deny_unknown_fields`, so a misspelt section is caught here instead.
    let known = top_level_keys(&defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: "no such file; pass an existing TOML file or omit --config".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed(&env_prefix(service))
            .split("__")
            .lowercase(true),
    );
    reject_unknown_top_level_keys(&figment, &known)?;
    extract(figment)
}

/// Like [`load_with`], for one file that configures several services (`liquid up --config`):
/// its top-level sections apply to every service, and a table named after a service
/// (`[container-pool.pool]`, `[gateway.server]`) applies to that service only and wins over
/// the shared ones. Tables named after other services are skipped. The environment comes last.
pub fn load_for_one_of<T>(
    service: &str,
    services: &[&str],
    defaults: T,
    file: Option<&Path>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Validate,
{
    let known = top_level_keys(&defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: "no such file; pass an existing TOML file or omit --config".into(),
            });
        }
        let mut whole: figment::value::Dict = Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let own = whole.remove(service);
        whole.retain(|key, _| !services.contains(&key.as_str()));
        figment = figment.merge(Serialized::defaults(whole));
        if let Some(own) = own {
            figment = figment.merge(Serialized::defaults(own));
        }
    }
    figment = figment.merge(
        Env::prefixed(&env_prefix(service))
            .split("__")
            .lowercase(true),
    );
    reject_unknown_top_level_keys(&figment, &known)?;
    extract(figment)
}

fn top_level_keys<T: Serialize>(value: &T) -> Result<Vec<String>, ConfigError> {
    match figment::value::Value::serialize(value) {
        Ok(figment::value::Value::Dict(_, dict)) => Ok(dict.into_keys().collect()),
        Ok(_) => Err(ConfigError::invalid(
            "<root>",
            "configuration defaults must be a table",
        )),
        Err(e) => Err(ConfigError::invalid("<root>", e.to_string())),
    }
}

fn reject_unknown_top_level_keys(figment: &Figment, known: &[String]) -> Result<(), ConfigError> {
    let layered: figment::value::Dict = figment
        .extract()
        .map_err(|e| ConfigError::invalid("<root>", e.kind.to_string()))?;
    match layered.keys().find(|k| !known.contains(k)) {
        Some(unknown) => Err(ConfigError::invalid(
            unknown.clone(),
            format!("unknown section; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Extracts and validates `T` from an already layered figment (used by `liquid up`, which
/// layers one file for all services).
pub fn extract<T>(figment: Figment) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let value: T = figment.extract().map_err(|e| {
        let key = if e.path.is_empty() {
            "<root>".to_owned()
        } else {
            e.path.join(".")
        };
        ConfigError::invalid(key, e.kind.to_string())
    })?;
    value.validate()?;
    Ok(value)
}

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP listen address (REST, `/healthz`, `/readyz`, `/metrics`). Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// gRPC listen address; `None` for services without a gRPC API (the gateway).
    pub grpc_addr: Option<SocketAddr>,
    /// Seconds to let in-flight requests finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Largest accepted request body in bytes.
    pub body_limit_bytes: usize,
}

impl ServerConfig {
    /// Defaults for a service on its usual ports (ARCHITECTURE.md's table).
    pub fn on_ports(http: u16, grpc: Option<u16>) -> Self {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
            grpc_addr: grpc.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            shutdown_grace_secs: 10,
            body_limit_bytes: 2 * 1024 * 1024,
        }
    }

    /// The same addresses with port 0, for tests.
    pub fn ephemeral(&self) -> Self {
        let zero = |a: SocketAddr| SocketAddr::new(a.ip(), 0);
        ServerConfig {
            http_addr: zero(self.http_addr),
            grpc_addr: self.grpc_addr.map(zero),
            ..self.clone()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::on_ports(8080, None)
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.shutdown_grace_secs > 600 {
            return Err(ConfigError::invalid(
                "server.shutdown_grace_secs",
                "must be at most 600 seconds",
            ));
        }
        if self.body_limit_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.body_limit_bytes",
                "must be greater than 0",
            ));
        }
        if let Some(grpc) = self.grpc_addr
            && grpc.port() != 0
            && grpc == self.http_addr
        {
            return Err(ConfigError::invalid(
                "server.grpc_addr",
                "must differ from server.http_addr",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        server: ServerConfig,
        name: String,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.server.validate()
        }
    }

    #[test]
    fn prefix_is_upper_snake() {
        assert_eq!(env_prefix("container-pool"), "LIQUID_CONTAINER_POOL__");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn layers_file_then_env_and_names_bad_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "svc.toml",
                "name = \"from-file\"\n[server]\nhttp_addr = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("LIQUID_TEST_SVC__SERVER__SHUTDOWN_GRACE_SECS", "3");
            let cfg: Sample = load("test-svc", Some(Path::new("svc.toml"))).unwrap();
            assert_eq!(cfg.name, "from-file");
            assert_eq!(cfg.server.http_addr.port(), 9000);
            assert_eq!(cfg.server.shutdown_grace_secs, 3);

            jail.set_env("LIQUID_TEST_SVC__SERVER__HTTP_ADDR", "not-an-address");
            let err = load::<Sample>("test-svc", None).unwrap_err();
            assert!(err.to_string().contains("server.http_addr"), "{err}");

            jail.set_env("LIQUID_TEST_SVC__SERVER__HTTP_ADDR", "127.0.0.1:1");
            jail.set_env("LIQUID_TEST_SVC__SERVER__SHUTDOWN_GRACE_SECS", "9999");
            let err = load::<Sample>("test-svc", None).unwrap_err();
            assert!(
                err.to_string().contains("server.shutdown_grace_secs"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn an_unknown_section_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("svc.toml", "[servre]\nhttp_addr = \"127.0.0.1:9000\"\n")?;
            let err = load::<Sample>("test-svc", Some(Path::new("svc.toml"))).unwrap_err();
            assert!(err.to_string().contains("`servre`"), "{err}");
            assert!(err.to_string().contains("server"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn one_file_configures_several_services() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "up.toml",
                "name = \"shared\"\n[server]\nshutdown_grace_secs = 4\n\
                 [test-svc]\nname = \"own\"\n[other-svc.server]\nshutdown_grace_secs = 7\n",
            )?;
            let services = ["test-svc", "other-svc"];
            let own: Sample = load_for_one_of(
                "test-svc",
                &services,
                Sample::default(),
                Some(Path::new("up.toml")),
            )
            .unwrap();
            assert_eq!(own.name, "own");
            assert_eq!(own.server.shutdown_grace_secs, 4);
            let other: Sample = load_for_one_of(
                "other-svc",
                &services,
                Sample::default(),
                Some(Path::new("up.toml")),
            )
            .unwrap();
            assert_eq!(other.name, "shared");
            assert_eq!(other.server.shutdown_grace_secs, 7);
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err =
            load::<Sample>("test-svc", Some(Path::new("/nonexistent/liquid.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/liquid.toml"));
    }
}
