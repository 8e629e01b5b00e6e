//! Model configuration: providers and their keys, routes from model names to providers,
//! prices, timeouts, retries and session lifetimes.
//!
//! A service embeds [`LlmConfig`] under a section (the gateway under `llm`), so the keys are
//! `llm.providers.openai.api_key` and, from the environment,
//! `LIQUID_GATEWAY__LLM__PROVIDERS__OPENAI__API_KEY`. The vendors' usual variables
//! (`GEMINI_API_KEY`, `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`) fill keys left empty through
//! [`LlmConfig::fill_keys_from`]. Validation names the first bad key.

use std::collections::BTreeMap;
use std::time::Duration;

use liquid_kit::Secret;
use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::pricing::{ModelPrice, default_prices};

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Google Gemini API (`generateContent`).
    Gemini,
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI chat completions (also OpenAI-compatible servers).
    Openai,
}

impl ProviderKind {
    /// The vendor's public API endpoint.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Openai => "https://api.openai.com",
        }
    }

    /// The environment variable the vendor's own SDKs read the key from.
    pub fn standard_key_env(self) -> &'static str {
        match self {
            ProviderKind::Gemini => "GEMINI_API_KEY",
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            ProviderKind::Openai => "OPENAI_API_KEY",
        }
    }
}

/// One provider entry (`llm.providers.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire protocol.
    pub kind: ProviderKind,
    /// API key; empty means "not configured" and routes to the offline provider.
    #[serde(default)]
    pub api_key: Secret<String>,
    /// Base URL without the API path (`https://api.openai.com`); tests point it at a local
    /// server.
    pub base_url: String,
}

impl ProviderConfig {
    /// An entry for `kind` at its public endpoint without a key.
    pub fn unkeyed(kind: ProviderKind) -> Self {
        ProviderConfig {
            kind,
            api_key: Secret::default(),
            base_url: kind.default_base_url().to_owned(),
        }
    }
}

/// One routing rule (`llm.routes[i]`): exactly one of `model` or `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model name prefix (`claude-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Provider name from `llm.providers`, or `offline`.
    pub provider: String,
}

impl RouteConfig {
    fn prefix(prefix: &str, provider: &str) -> Self {
        RouteConfig {
            model: None,
            prefix: Some(prefix.to_owned()),
            provider: provider.to_owned(),
        }
    }
}

/// Retries on 429, 5xx and connection failures (`llm.retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Back-off before the second attempt; doubles each time, with full jitter.
    pub initial_backoff_ms: u64,
    /// Longest back-off between attempts.
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the error goes to the caller.
    pub max_retry_after_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 8_000,
            max_retry_after_secs: 60,
        }
    }
}

/// Session-scoped clients (`llm.sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session unused this long is dropped with its history.
    pub idle_ttl_secs: u64,
    /// How often the cleanup task evicts idle sessions.
    pub cleanup_interval_secs: u64,
    /// Most sessions held at once; past it the least useful are evicted.
    pub max_sessions: u64,
    /// Most messages one session's history keeps; older turns are dropped after each turn
    /// (see [`crate::session::trim_history`]).
    pub max_history_messages: usize,
    /// Most bytes of text one session's history keeps (contents, tool arguments, results).
    pub max_history_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_ttl_secs: 30 * 60,
            cleanup_interval_secs: 5 * 60,
            max_sessions: 100_000,
            max_history_messages: 200,
            max_history_bytes: 512 * 1024,
        }
    }
}

impl SessionConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> crate::session::SessionPolicy {
        crate::session::SessionPolicy {
            idle_ttl: Duration::from_secs(self.idle_ttl_secs),
            cleanup_interval: Duration::from_secs(self.cleanup_interval_secs),
            max_sessions: self.max_sessions,
            max_history_messages: self.max_history_messages,
            max_history_bytes: self.max_history_bytes,
        }
    }
}

/// Everything about talking to models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Model used when a request names none.
    pub default_model: String,
    /// When a routed provider has no key: answer with the offline provider (true) or fail
    /// with `failed_precondition` (false, for deployments that must never answer offline).
    pub offline_fallback: bool,
    /// Provider entries by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routing rules; an exact `model` beats any prefix, the longest prefix wins.
    pub routes: Vec<RouteConfig>,
    /// Prices by model name or `prefix*`.
    pub prices: BTreeMap<String, ModelPrice>,
    /// Limit for a whole non-streaming request, and for a stream's first byte.
    pub request_timeout_secs: u64,
    /// A stream that sends nothing for this long is abandoned.
    pub stream_idle_timeout_secs: u64,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Session lifetimes.
    pub sessions: SessionConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        let providers = [
            ("gemini", ProviderKind::Gemini),
            ("anthropic", ProviderKind::Anthropic),
            ("openai", ProviderKind::Openai),
        ]
        .into_iter()
        .map(|(name, kind)| (name.to_owned(), ProviderConfig::unkeyed(kind)))
        .collect();
        LlmConfig {
            default_model: "gemini-2.5-flash".to_owned(),
            offline_fallback: true,
            providers,
            routes: vec![
                RouteConfig::prefix("gemini-", "gemini"),
                RouteConfig::prefix("claude-", "anthropic"),
                RouteConfig::prefix("gpt-", "openai"),
                RouteConfig::prefix("chatgpt-", "openai"),
                RouteConfig::prefix("o1", "openai"),
                RouteConfig::prefix("o3", "openai"),
                RouteConfig::prefix("o4", "openai"),
                RouteConfig {
                    model: Some(crate::offline::OFFLINE_MODEL.to_owned()),
                    prefix: None,
                    provider: crate::offline::OFFLINE_PROVIDER.to_owned(),
                },
            ],
            prices: default_prices(),
            request_timeout_secs: 120,
            stream_idle_timeout_secs: 60,
            retry: RetryConfig::default(),
            sessions: SessionConfig::default(),
        }
    }
}

impl LlmConfig {
    /// Fills empty keys from the vendors' usual variables (`OPENAI_API_KEY`, ...), read through
    /// `lookup` (pass `|k| std::env::var(k).ok()`). Configured keys are never replaced.
    pub fn fill_keys_from(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for provider in self.providers.values_mut() {
            if provider.api_key.is_empty()
                && let Some(key) = lookup(provider.kind.standard_key_env())
                && !key.trim().is_empty()
            {
                provider.api_key = Secret::new(key.trim().to_owned());
            }
        }
    }

    /// Validates with keys reported under `section` (`llm` for [`Validate`]).
    pub fn validate_at(&self, section: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        if self.default_model.trim().is_empty() {
            return Err(ConfigError::invalid(
                key("default_model"),
                "must not be empty",
            ));
        }
        for (name, p) in &self.providers {
            if name == crate::offline::OFFLINE_PROVIDER {
                return Err(ConfigError::invalid(
                    key(&format!("providers.{name}")),
                    "`offline` is the built-in provider's name; choose another",
                ));
            }
            let url = p.base_url.trim_end_matches('/');
            let valid_url = (url.starts_with("http://") || url.starts_with("https://"))
                && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
            if !valid_url {
                return Err(ConfigError::invalid(
                    key(&format!("providers.{name}.base_url")),
                    format!("{:?} is not an http(s) URL", p.base_url),
                ));
            }
            if p.api_key.expose().chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    key(&format!("providers.{name}.api_key")),
                    "contains whitespace",
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = |field: &str| key(&format!("routes[{i}].{field}"));
            match (&route.model, &route.prefix) {
                (Some(m), None) if !m.is_empty() => {}
                (None, Some(p)) if !p.is_empty() => {}
                _ => {
                    return Err(ConfigError::invalid(
                        key(&format!("routes[{i}]")),
                        "set exactly one of `model` or `prefix`, non-empty",
                    ));
                }
            }
            if route.provider != crate::offline::OFFLINE_PROVIDER
                && !self.providers.contains_key(&route.provider)
            {
                return Err(ConfigError::invalid(
                    at("provider"),
                    format!(
                        "{:?} is neither `offline` nor a name under {section}.providers",
                        route.provider
                    ),
                ));
            }
        }
        for (model, price) in &self.prices {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(price.input_per_million_usd) || !ok(price.output_per_million_usd) {
                return Err(ConfigError::invalid(
                    key(&format!("prices.{model}")),
                    "prices must be finite and not negative",
                ));
            }
        }
        let positive = [
            ("request_timeout_secs", self.request_timeout_secs),
            ("stream_idle_timeout_secs", self.stream_idle_timeout_secs),
            ("retry.max_attempts", u64::from(self.retry.max_attempts)),
            ("sessions.idle_ttl_secs", self.sessions.idle_ttl_secs),
            (
                "sessions.cleanup_interval_secs",
                self.sessions.cleanup_interval_secs,
            ),
            ("sessions.max_sessions", self.sessions.max_sessions),
            (
                "sessions.max_history_messages",
                self.sessions.max_history_messages as u64,
            ),
            (
                "sessions.max_history_bytes",
                self.sessions.max_history_bytes as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key(name), "must be greater than 0"));
            }
        }
        if self.retry.max_attempts > 10 {
            return Err(ConfigError::invalid(
                key("retry.max_attempts"),
                "at most 10 attempts",
            ));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(ConfigError::invalid(
                key("retry.initial_backoff_ms"),
                "must not exceed retry.max_backoff_ms",
            ));
        }
        Ok(())
    }
}

impl Validate for LlmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at("llm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keys_never_print() {
        let mut c = LlmConfig::default();
        c.validate().unwrap();
        c.fill_keys_from(|k| (k == "OPENAI_API_KEY").then(|| "sk-secret".to_owned()));
        assert_eq!(c.providers["openai"].api_key.expose(), "sk-secret");
        assert!(c.providers["gemini"].api_key.is_empty());
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn configured_keys_are_not_replaced_by_the_environment() {
        let mut c = LlmConfig::default();
        if let Some(p) = c.providers.get_mut("openai") {
            p.api_key = Secret::new("from-config".into());
        }
        c.fill_keys_from(|_| Some("from-env".to_owned()));
        assert_eq!(c.providers["openai"].api_key.expose(), "from-config");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut c = LlmConfig::default();
        c.routes[1].provider = "nope".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("llm.routes[1].provider"), "{err}");

        let mut c = LlmConfig::default();
        if let Some(p) = c.providers.get_mut("gemini") {
            p.base_url = "ftp://x".into();
        }
        let err = c.validate_at("chat.llm").unwrap_err().to_string();
        assert!(err.contains("chat.llm.providers.gemini.base_url"), "{err}");

        let mut c = LlmConfig::default();
        c.routes.push(RouteConfig {
            model: Some("a".into()),
            prefix: Some("b".into()),
            provider: "openai".into(),
        });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("llm.routes[8]"), "{err}");

        let mut c = LlmConfig::default();
        c.sessions.idle_ttl_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("llm.sessions.idle_ttl_secs"), "{err}");
    }

    #[test]
    fn config_loads_from_toml_with_env_style_overrides() {
        let toml = r#"
            default_model = "claude-sonnet-4-5"
            [providers.local]
            kind = "openai"
            base_url = "http://127.0.0.1:9999"
            api_key = "k"
            [[routes]]
            prefix = "local-"
            provider = "local"
        "#;
        let c: LlmConfig = toml::from_str(toml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.providers["local"].kind, ProviderKind::Openai);
        let bad = "request_timeout_secs = \"soon\"";
        assert!(toml::from_str::<LlmConfig>(bad).is_err());
        let unknown = "default_modle = \"x\"";
        assert!(toml::from_str::<LlmConfig>(unknown).is_err());
    }
}
