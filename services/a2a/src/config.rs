//! The a2a service's own settings: the `[a2a]` section (profile, agents, tables, task TTL,
//! card caching, public URL) and the `[push]` section (see [`crate::push::PushConfig`]).

use liquid_a2a::ErrorTable;
use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::push::PushConfig;

/// Which agents the service hosts and how its root card reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The platform's agents (the echo agent for now), every capability on.
    #[default]
    Platform,
    /// The conformance agent at the root, every capability on.
    Tck,
    /// The conformance agent with streaming, push notifications and the extended card off.
    TckCapabilitiesOff,
    /// The conformance agent requiring the extension `urn:a2a:tck:required-extension`.
    TckRequiredExtension,
}

/// The `[a2a]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aSection {
    /// Which agents and capabilities (`platform`, `tck`, `tck-capabilities-off`,
    /// `tck-required-extension`).
    pub profile: Profile,
    /// Base URL clients reach this service at (through the gateway), used in agent cards;
    /// empty: `http://<server.http_addr>`.
    pub public_url: String,
    /// Base URL of the gRPC interface in cards; empty: `http://<server.grpc_addr>`.
    pub public_grpc_url: String,
    /// Error mapping table: `1.0.0` or `1.0.1`.
    pub error_table: ErrorTable,
    /// Seconds a task is kept after reaching a terminal state.
    pub task_ttl_secs: u64,
    /// Most push notification configs per task.
    pub push_configs_per_task: u32,
    /// `Cache-Control: max-age` of agent cards, in seconds.
    pub card_max_age_secs: u32,
}

impl Default for A2aSection {
    fn default() -> Self {
        A2aSection {
            profile: Profile::Platform,
            public_url: String::new(),
            public_grpc_url: String::new(),
            error_table: ErrorTable::V1_0_1,
            task_ttl_secs: 7 * 24 * 3600,
            push_configs_per_task: 10,
            card_max_age_secs: 300,
        }
    }
}

/// Everything the a2a service reads beyond the shared sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aSettings {
    /// `[a2a]`.
    pub a2a: A2aSection,
    /// `[push]`.
    pub push: PushConfig,
}

impl Validate for A2aSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if self.a2a.task_ttl_secs == 0 {
            return Err(invalid("a2a.task_ttl_secs", "must be at least 1"));
        }
        if self.a2a.push_configs_per_task == 0 {
            return Err(invalid("a2a.push_configs_per_task", "must be at least 1"));
        }
        for (key, url) in [
            ("a2a.public_url", &self.a2a.public_url),
            ("a2a.public_grpc_url", &self.a2a.public_grpc_url),
        ] {
            if !url.is_empty() && reqwest::Url::parse(url).is_err() {
                return Err(invalid(key, "must be an absolute URL"));
            }
        }
        if self.push.max_attempts == 0 || self.push.timeout_secs == 0 {
            return Err(invalid(
                "push",
                "max_attempts and timeout_secs must be at least 1",
            ));
        }
        Ok(())
    }
}
