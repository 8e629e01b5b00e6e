//! The a2a service's own settings: the `[a2a]` section (profile, remote agents, tables, task
//! TTL, task owner leases, card caching and signing, public URL, service key) and the `[push]`
//! section (see [`crate::push::PushConfig`]).

use std::collections::BTreeMap;

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
    /// The gRPC interface in cards (`host:port` or a URL); empty: `<request host>:9081`.
    pub public_grpc_url: String,
    /// Error mapping table: `1.0.0` or `1.0.1`.
    pub error_table: ErrorTable,
    /// Seconds a task is kept after reaching a terminal state.
    pub task_ttl_secs: u64,
    /// Most push notification configs per task.
    pub push_configs_per_task: u32,
    /// Seconds between renewals of the owner leases of the tasks a replica runs (one statement
    /// for all of them), and between sweeps for tasks whose lease ran out.
    pub lease_renew_secs: u64,
    /// Seconds a task's owner lease lasts without a renewal: a task running on a replica that
    /// stopped without failing it (killed) fails about this long after its last renewal. More
    /// than `lease_renew_secs`, with room for a slow database.
    pub lease_secs: u64,
    /// `Cache-Control: max-age` of agent cards, in seconds.
    pub card_max_age_secs: u32,
    /// Agents executed by other services over `liquid.a2a.v1.AgentExecutorService`, by name;
    /// each is served under `/agents/<name>/` like the built-in ones.
    pub remote_agents: BTreeMap<String, RemoteAgent>,
    /// PKCS#8 PEM Ed25519 private key whose service tokens the remote executors trust (same
    /// issuer and audience as `[auth]`); empty: executor calls carry no token.
    pub service_key_file: String,
    /// Detached JWS signatures on the agent cards (spec §8.4).
    pub card_signing: CardSigning,
    /// A SendMessage with a messageId seen before is a retry: it returns the first one's task
    /// and runs nothing (spec §3.3.1 MAY). The conformance kit reuses one messageId per
    /// scenario for a whole run, so its runs set this to `false`.
    pub idempotent_message_ids: bool,
    /// Serve cowork as the agent `cowork` (its executor at `peers.cowork.grpc`) when that peer
    /// is configured and `remote_agents` does not name a `cowork` of its own.
    pub cowork_agent: bool,
}

/// One agent hosted by another service (`[a2a.remote_agents.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAgent {
    /// Where its `AgentExecutorService` listens (`http://host:port`).
    pub executor_url: String,
    /// The card's description.
    #[serde(default)]
    pub description: String,
}

/// `[a2a.card_signing]`: sign every agent card with one key (JWS over the RFC 8785
/// canonical card; the card's `signatures` holds the result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CardSigning {
    /// PKCS#8 PEM private key; empty: cards are not signed.
    pub key_file: String,
    /// `EdDSA` (Ed25519 key), `ES256` (P-256) or `RS256`.
    pub algorithm: String,
    /// `kid` of the protected header; empty: the file name without extension.
    pub kid: String,
    /// Optional `jku` (where clients find the public key as a JWKS).
    pub jku: String,
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
            lease_renew_secs: 5,
            lease_secs: 20,
            card_max_age_secs: 300,
            remote_agents: BTreeMap::new(),
            service_key_file: String::new(),
            card_signing: CardSigning::default(),
            idempotent_message_ids: true,
            cowork_agent: true,
        }
    }
}

/// Names of the built-in agents, which remote agents may not take.
pub const RESERVED_AGENT_NAMES: [&str; 3] = ["echo", "tck", "liquid"];

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
        if self.a2a.lease_renew_secs == 0 {
            return Err(invalid("a2a.lease_renew_secs", "must be at least 1"));
        }
        if self.a2a.lease_secs <= self.a2a.lease_renew_secs {
            return Err(invalid(
                "a2a.lease_secs",
                "must be more than a2a.lease_renew_secs",
            ));
        }
        if self.a2a.push_configs_per_task == 0 {
            return Err(invalid("a2a.push_configs_per_task", "must be at least 1"));
        }
        if !self.a2a.public_url.is_empty() && reqwest::Url::parse(&self.a2a.public_url).is_err() {
            return Err(invalid("a2a.public_url", "must be an absolute URL"));
        }
        let grpc = &self.a2a.public_grpc_url;
        if !grpc.is_empty()
            && reqwest::Url::parse(grpc).is_err()
            && reqwest::Url::parse(&format!("http://{grpc}")).is_err()
        {
            return Err(invalid(
                "a2a.public_grpc_url",
                "must be an absolute URL or a host:port gRPC target",
            ));
        }
        for (name, agent) in &self.a2a.remote_agents {
            let key = format!("a2a.remote_agents.{name}");
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid_name || RESERVED_AGENT_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    &key,
                    "agent names are lower-case letters, digits and '-', and not echo, tck or liquid",
                ));
            }
            if !matches!(
                reqwest::Url::parse(&agent.executor_url).map(|u| u.scheme().to_owned()),
                Ok(s) if s == "http" || s == "https"
            ) {
                return Err(invalid(
                    &format!("{key}.executor_url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
        let signing = &self.a2a.card_signing;
        if !signing.key_file.is_empty()
            && !matches!(signing.algorithm.as_str(), "EdDSA" | "ES256" | "RS256")
        {
            return Err(invalid(
                "a2a.card_signing.algorithm",
                "must be EdDSA, ES256 or RS256",
            ));
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
