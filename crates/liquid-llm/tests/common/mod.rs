//! Shared set-up of the integration tests: a router pointed at local vendor servers.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use liquid_kit::Secret;
use liquid_llm::transport::Transport;
use liquid_llm::{LlmConfig, ModelRouter, ProviderConfig, ProviderKind, RetryConfig};
use liquid_testkit::model_servers::{ModelServer, Vendor};

pub const KEY: &str = "test-key-0123456789";

/// The model each vendor's tests ask for (each has a price in the default table).
pub fn model(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Gemini => "gemini-2.5-flash",
        Vendor::Anthropic => "claude-sonnet-4-5",
        Vendor::OpenAi => "gpt-4o-mini",
    }
}

pub fn provider(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Gemini => "gemini",
        Vendor::Anthropic => "anthropic",
        Vendor::OpenAi => "openai",
    }
}

pub fn kind(vendor: Vendor) -> ProviderKind {
    match vendor {
        Vendor::Gemini => ProviderKind::Gemini,
        Vendor::Anthropic => ProviderKind::Anthropic,
        Vendor::OpenAi => ProviderKind::Openai,
    }
}

pub const VENDORS: [Vendor; 3] = [Vendor::Gemini, Vendor::Anthropic, Vendor::OpenAi];

/// Default configuration with `vendor`'s provider keyed with `key` and pointed at `base_url`.
pub fn config(vendor: Vendor, base_url: &str, key: &str) -> LlmConfig {
    let mut config = LlmConfig::default();
    config.providers.insert(
        provider(vendor).to_owned(),
        ProviderConfig {
            kind: kind(vendor),
            api_key: Secret::new(key.to_owned()),
            base_url: base_url.to_owned(),
        },
    );
    config
}

/// Millisecond back-offs so retry tests do not wait.
pub fn fast_transport(max_attempts: u32) -> Transport {
    Transport::with_settings(
        RetryConfig {
            max_attempts,
            initial_backoff_ms: 1,
            max_backoff_ms: 5,
            max_retry_after_secs: 5,
        },
        Duration::from_secs(20),
        Duration::from_secs(20),
    )
    .unwrap()
}

pub async fn server(vendor: Vendor) -> ModelServer {
    ModelServer::start(vendor, KEY).await.unwrap()
}

pub fn router(vendor: Vendor, server: &ModelServer, max_attempts: u32) -> ModelRouter {
    let config = config(vendor, &server.base_url(), KEY);
    ModelRouter::with_transport(&config, fast_transport(max_attempts)).unwrap()
}
