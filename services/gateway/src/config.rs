//! The gateway's own configuration sections, flattened beside the shared ones:
//! `[rate_limit]`, `[sessions]`, `[websocket]`, `[prices]`, `[routing]`, `[cors]`,
//! `[llm]` (liquid-llm's [`LlmConfig`]: providers, keys, routes by model),
//! `[chat]`, `[coalescing]` and `[graphql]` (`LIQUID_GATEWAY__RATE_LIMIT__...`). Each refuses
//! unknown keys and is validated at start-up with the failing key's name.

use std::collections::BTreeMap;

use liquid_kit::Secret;
use liquid_kit::config::{ConfigError, Validate};
use liquid_llm::LlmConfig;
use serde::{Deserialize, Serialize};

use crate::domain::channel::Channel;
use crate::domain::routing::{Alias, default_aliases};
use crate::domain::tier::Cidr;

/// Every gateway section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Tiered rate limits.
    pub rate_limit: RateLimitSettings,
    /// Gateway-issued session tokens.
    pub sessions: SessionSettings,
    /// The WebSocket hub.
    pub websocket: WebSocketSettings,
    /// Price channels and the simulated feed.
    pub prices: PriceSettings,
    /// Forwarding to the services.
    pub routing: RoutingSettings,
    /// Cross-origin requests from browsers.
    pub cors: CorsSettings,
    /// Model providers, keys and routing (liquid-llm); empty keys are filled from
    /// `GEMINI_API_KEY`, `ANTHROPIC_API_KEY`, `OPENAI_API_KEY` at start-up.
    pub llm: LlmConfig,
    /// The chat API.
    pub chat: ChatSettings,
    /// Request coalescing and the short answer cache.
    pub coalescing: CoalescingSettings,
    /// The GraphQL façade.
    pub graphql: GraphqlSettings,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.rate_limit.validate()?;
        self.sessions.validate()?;
        self.websocket.validate()?;
        self.prices.validate()?;
        self.routing.validate()?;
        self.cors.validate()?;
        self.llm.validate_at("llm")?;
        self.chat.validate()?;
        self.coalescing.validate()?;
        self.graphql.validate()
    }
}

/// The quota of one route class per tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassLimits {
    /// Requests per period for a verified user (subject within its tenant).
    pub user: u32,
    /// Requests per period for a gateway session (`X-Session-Token`).
    pub session: u32,
    /// Requests per period for a client address.
    pub ip: u32,
    /// The period in seconds, 1 to [`MAX_PERIOD_SECS`] (one day): the limiter's arithmetic
    /// runs in milliseconds, in Redis's Lua numbers too, which stay exact only up to 2^53.
    pub period_secs: u64,
}

/// Longest rate-limit period, `rate_limit.classes.*.period_secs`: one day.
pub const MAX_PERIOD_SECS: u64 = 86_400;

/// Longest wait before a failed rate-limit Redis is tried again, `rate_limit.redis_retry_secs`:
/// one hour.
pub const MAX_REDIS_RETRY_SECS: u64 = 3_600;

/// Longest session-token lifetime, `sessions.ttl_secs`: 30 days.
pub const MAX_SESSION_TTL_SECS: u64 = 30 * 86_400;

impl Default for ClassLimits {
    fn default() -> Self {
        ClassLimits {
            user: 100,
            session: 50,
            ip: 30,
            period_secs: 900,
        }
    }
}

/// Which route class a path prefix belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteClass {
    /// Path prefix (matches the path and everything below `prefix/`).
    pub prefix: String,
    /// Class name in `rate_limit.classes`.
    pub class: String,
}

impl Default for RouteClass {
    fn default() -> Self {
        RouteClass {
            prefix: "/".into(),
            class: "default".into(),
        }
    }
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Whether requests are limited at all.
    pub enabled: bool,
    /// Redis for the shared limits (`redis://host:port`); normally the same URL as
    /// `cache.url`. Empty: every replica limits on its own (embedded mode).
    pub redis_url: Secret<String>,
    /// Prefix of every rate-limit key in Redis (after the gateway's namespace).
    pub key_prefix: String,
    /// Milliseconds one Redis decision may take before the replica decides locally.
    pub redis_timeout_ms: u64,
    /// Seconds the replica keeps deciding locally after Redis failed, before trying again (at
    /// most [`MAX_REDIS_RETRY_SECS`], one hour).
    pub redis_retry_secs: u64,
    /// Addresses or blocks (`10.0.0.0/8`) of proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Most keys the local limiter holds (least recently used go first).
    pub local_max_keys: u64,
    /// Quotas by route class; `default` must exist.
    pub classes: BTreeMap<String, ClassLimits>,
    /// Route classes by path prefix; the longest prefix wins, else `default`.
    pub routes: Vec<RouteClass>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            enabled: true,
            redis_url: Secret::default(),
            key_prefix: "rl:".into(),
            redis_timeout_ms: 100,
            redis_retry_secs: 5,
            trusted_proxies: Vec::new(),
            local_max_keys: 100_000,
            classes: BTreeMap::from([("default".to_owned(), ClassLimits::default())]),
            routes: Vec::new(),
        }
    }
}

impl RateLimitSettings {
    /// The trusted proxy blocks, parsed.
    pub fn trusted(&self) -> Result<Vec<Cidr>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<Cidr>()
                    .map_err(|e| ConfigError::invalid("rate_limit.trusted_proxies", e.to_string()))
            })
            .collect()
    }
}

impl Validate for RateLimitSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.redis_url.expose();
        if !url.is_empty() && !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "rate_limit.redis_url",
                "must start with redis:// or rediss://, or be empty for per-replica limits",
            ));
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 10_000 {
            return Err(ConfigError::invalid(
                "rate_limit.redis_timeout_ms",
                "must be between 1 and 10000",
            ));
        }
        if self.redis_retry_secs > MAX_REDIS_RETRY_SECS {
            return Err(ConfigError::invalid(
                "rate_limit.redis_retry_secs",
                format!("must be at most {MAX_REDIS_RETRY_SECS} (one hour)"),
            ));
        }
        if self.local_max_keys == 0 {
            return Err(ConfigError::invalid(
                "rate_limit.local_max_keys",
                "must be at least 1",
            ));
        }
        self.trusted()?;
        if !self.classes.contains_key("default") {
            return Err(ConfigError::invalid(
                "rate_limit.classes",
                "must define the `default` class",
            ));
        }
        for (name, class) in &self.classes {
            // The period first: the per-tier check below is stated in milliseconds of it.
            if class.period_secs == 0 || class.period_secs > MAX_PERIOD_SECS {
                return Err(ConfigError::invalid(
                    format!("rate_limit.classes.{name}.period_secs"),
                    format!("must be between 1 and {MAX_PERIOD_SECS} (one day)"),
                ));
            }
            for (tier, limit) in [
                ("user", class.user),
                ("session", class.session),
                ("ip", class.ip),
            ] {
                if limit == 0 {
                    return Err(ConfigError::invalid(
                        format!("rate_limit.classes.{name}.{tier}"),
                        "must be at least 1",
                    ));
                }
                if u64::from(limit) > class.period_secs.saturating_mul(1000) {
                    return Err(ConfigError::invalid(
                        format!("rate_limit.classes.{name}.{tier}"),
                        "must be at most one per millisecond of the period",
                    ));
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("rate_limit.routes[{i}].prefix"),
                    "must start with /",
                ));
            }
            if !self.classes.contains_key(&route.class) {
                return Err(ConfigError::invalid(
                    format!("rate_limit.routes[{i}].class"),
                    format!("`{}` is not in rate_limit.classes", route.class),
                ));
            }
        }
        Ok(())
    }
}

/// `[sessions]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// HMAC key of `X-Session-Token` (at least 32 bytes); every replica needs the same one.
    /// Empty: a random key per process (embedded mode; tokens die with the process).
    pub secret: Secret<String>,
    /// Seconds a session token lives, 1 to [`MAX_SESSION_TTL_SECS`] (30 days).
    pub ttl_secs: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            secret: Secret::default(),
            ttl_secs: 86_400,
        }
    }
}

impl Validate for SessionSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.secret.is_empty() && self.secret.expose().len() < 32 {
            return Err(ConfigError::invalid(
                "sessions.secret",
                "must be at least 32 bytes (or empty for a per-process key)",
            ));
        }
        if self.ttl_secs == 0 || self.ttl_secs > MAX_SESSION_TTL_SECS {
            return Err(ConfigError::invalid(
                "sessions.ttl_secs",
                format!("must be between 1 and {MAX_SESSION_TTL_SECS} (30 days)"),
            ));
        }
        Ok(())
    }
}

/// `[websocket]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Refuse connections without a verified token (`REQUIRE_WS_AUTH`). Off: an anonymous
    /// connection holds `anonymous_scopes` only.
    pub require_auth: bool,
    /// Scopes of an anonymous connection when `require_auth` is off.
    pub anonymous_scopes: Vec<String>,
    /// Seconds a connection without a token at connect has to send `{"type":"auth"}`.
    pub auth_deadline_secs: u64,
    /// Seconds between server pings.
    pub heartbeat_secs: u64,
    /// Seconds without any frame from the client before the connection is closed.
    pub idle_timeout_secs: u64,
    /// Seconds one frame to the client may take to be written; a client that stops reading
    /// is closed as a slow consumer (4008) when a write takes longer.
    pub write_timeout_secs: u64,
    /// Messages queued for one connection before it counts as slow and is closed.
    pub send_queue: usize,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Most channels one connection may follow.
    pub max_subscriptions: usize,
    /// Most open WebSockets one replica accepts, `/ws` and `/graphql` together (beyond, an
    /// upgrade is answered 503); also the most hub registrations (`/ws` connections plus
    /// GraphQL subscription streams).
    pub max_connections: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            require_auth: true,
            anonymous_scopes: vec!["read:prices".into()],
            auth_deadline_secs: 5,
            heartbeat_secs: 25,
            idle_timeout_secs: 75,
            write_timeout_secs: 10,
            send_queue: 64,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 64,
            max_connections: 19_000,
        }
    }
}

impl Validate for WebSocketSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("websocket.auth_deadline_secs", self.auth_deadline_secs),
            ("websocket.heartbeat_secs", self.heartbeat_secs),
            ("websocket.write_timeout_secs", self.write_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.idle_timeout_secs <= self.heartbeat_secs {
            return Err(ConfigError::invalid(
                "websocket.idle_timeout_secs",
                "must be longer than websocket.heartbeat_secs",
            ));
        }
        for (key, value) in [
            ("websocket.send_queue", self.send_queue),
            ("websocket.max_message_bytes", self.max_message_bytes),
            ("websocket.max_subscriptions", self.max_subscriptions),
            ("websocket.max_connections", self.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for scope in &self.anonymous_scopes {
            liquid_auth::Scope::parse(scope).map_err(|_| {
                ConfigError::invalid(
                    "websocket.anonymous_scopes",
                    format!("`{scope}` is not a scope"),
                )
            })?;
        }
        Ok(())
    }
}

/// `[prices]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceSettings {
    /// Bus subject prefix feeds publish ticks on (`<prefix>.<symbol>`).
    pub subject_prefix: String,
    /// Run the built-in simulated feed (ticks say `"source":"simulated"`).
    pub simulated_feed: bool,
    /// Symbols of the simulated feed.
    pub symbols: Vec<String>,
    /// Milliseconds between simulated ticks.
    pub tick_ms: u64,
}

impl Default for PriceSettings {
    fn default() -> Self {
        PriceSettings {
            subject_prefix: "prices".into(),
            simulated_feed: true,
            symbols: vec!["BTC-USD".into(), "ETH-USD".into(), "SOL-USD".into()],
            tick_ms: 1_000,
        }
    }
}

impl Validate for PriceSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        liquid_bus::subject::validate(&self.subject_prefix, false)
            .map_err(|e| ConfigError::invalid("prices.subject_prefix", e.to_string()))?;
        for symbol in &self.symbols {
            Channel::prices(symbol)
                .map_err(|e| ConfigError::invalid("prices.symbols", e.to_string()))?;
        }
        if self.tick_ms < 10 {
            return Err(ConfigError::invalid(
                "prices.tick_ms",
                "must be at least 10",
            ));
        }
        Ok(())
    }
}

/// A path prefix served by a service (`[[routing.aliases]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AliasSetting {
    /// Path prefix.
    pub prefix: String,
    /// Service name.
    pub service: String,
}

impl Default for AliasSetting {
    fn default() -> Self {
        AliasSetting {
            prefix: "/".into(),
            service: String::new(),
        }
    }
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Seconds an upstream call may take (all attempts together).
    pub timeout_secs: u64,
    /// Per-service overrides of `timeout_secs`, by service name.
    pub service_timeout_secs: BTreeMap<String, u64>,
    /// Milliseconds to open a connection to a service.
    pub connect_timeout_ms: u64,
    /// Extra attempts for idempotent calls that failed to connect or got 502/503/504.
    pub retries: u32,
    /// Milliseconds before the first retry (doubling after).
    pub retry_backoff_ms: u64,
    /// Consecutive failures that open a service's circuit.
    pub breaker_failures: u32,
    /// Seconds an open circuit refuses calls before one probe.
    pub breaker_open_secs: u64,
    /// Largest request body forwarded, in bytes.
    pub max_body_bytes: usize,
    /// Paths outside `/api/v1/<service>` and the services that serve them; replaces the
    /// built-in list (the seed's paths and A2A) when set.
    pub aliases: Vec<AliasSetting>,
    /// Forwarded paths served without a token (discovery documents: the platform's agent card
    /// and each hosted agent's); axum patterns such as `/agents/{agent}/...` are allowed.
    pub public_paths: Vec<String>,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            timeout_secs: 30,
            service_timeout_secs: BTreeMap::new(),
            connect_timeout_ms: 2_000,
            retries: 2,
            retry_backoff_ms: 50,
            breaker_failures: 5,
            breaker_open_secs: 10,
            max_body_bytes: 2 * 1024 * 1024,
            aliases: default_aliases()
                .into_iter()
                .map(|a| AliasSetting {
                    prefix: a.prefix,
                    service: a.service,
                })
                .collect(),
            public_paths: vec![
                "/.well-known/agent-card.json".into(),
                "/agents/{agent}/.well-known/agent-card.json".into(),
            ],
        }
    }
}

impl RoutingSettings {
    /// The aliases in domain form.
    pub fn aliases(&self) -> Vec<Alias> {
        self.aliases
            .iter()
            .map(|a| Alias {
                prefix: a.prefix.clone(),
                service: a.service.clone(),
            })
            .collect()
    }
}

impl Validate for RoutingSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "routing.timeout_secs",
                "must be at least 1",
            ));
        }
        for (service, secs) in &self.service_timeout_secs {
            if *secs == 0 {
                return Err(ConfigError::invalid(
                    format!("routing.service_timeout_secs.{service}"),
                    "must be at least 1",
                ));
            }
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "routing.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.retries > 5 {
            return Err(ConfigError::invalid("routing.retries", "must be at most 5"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "routing.max_body_bytes",
                "must be at least 1",
            ));
        }
        for (i, alias) in self.aliases.iter().enumerate() {
            if !alias.prefix.starts_with('/') || alias.prefix.len() < 2 {
                return Err(ConfigError::invalid(
                    format!("routing.aliases[{i}].prefix"),
                    "must start with / and name a path",
                ));
            }
            if alias.service.is_empty() || alias.service == "gateway" {
                return Err(ConfigError::invalid(
                    format!("routing.aliases[{i}].service"),
                    "must name another service",
                ));
            }
        }
        for (i, path) in self.public_paths.iter().enumerate() {
            if let Err(reason) = check_public_path(path) {
                return Err(ConfigError::invalid(
                    format!("routing.public_paths[{i}]"),
                    reason,
                ));
            }
        }
        Ok(())
    }
}

/// `[cors]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins browsers may call from (`https://console.example.com`); empty: no cross-origin
    /// access.
    pub allowed_origins: Vec<String>,
    /// Let browsers send cookies and credentials.
    pub allow_credentials: bool,
    /// Seconds a browser may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for CorsSettings {
    fn default() -> Self {
        CorsSettings {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

impl Validate for CorsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.trim_end_matches('/').contains(['*', ' '])
                && http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(ConfigError::invalid(
                    "cors.allowed_origins",
                    format!(
                        "`{origin}` is not an origin like https://console.example.com (no wildcards)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[chat]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Whether `POST /api/v1/chat`, WebSocket chat and GraphQL chat are served.
    pub enabled: bool,
    /// Largest text of one message, in bytes.
    pub max_message_bytes: usize,
    /// Most messages in one stateless request (`messages`).
    pub max_messages: usize,
    /// Publish session replies on the tenant's `chat:<session>` channel.
    pub publish_replies: bool,
    /// Seconds between SSE keep-alive comments while a streamed answer is silent.
    pub sse_keepalive_secs: u64,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            enabled: true,
            max_message_bytes: 64 * 1024,
            max_messages: 200,
            publish_replies: true,
            sse_keepalive_secs: 15,
        }
    }
}

impl Validate for ChatSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("chat.max_message_bytes", self.max_message_bytes),
            ("chat.max_messages", self.max_messages),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.sse_keepalive_secs == 0 {
            return Err(ConfigError::invalid(
                "chat.sse_keepalive_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[coalescing]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoalescingSettings {
    /// Share one upstream call among identical concurrent model requests of a tenant.
    pub enabled: bool,
    /// Seconds a finished answer is served from the cache to identical requests of the same
    /// tenant; 0 caches nothing (concurrent requests still share one call).
    pub cache_ttl_secs: u64,
    /// Prefix of the cached answers' keys (after the gateway's `liquid:gateway:` namespace);
    /// each tenant's answers live under `<prefix><tenant>:`.
    pub key_prefix: String,
    /// Answers larger than this (JSON bytes) are not cached.
    pub max_cached_bytes: usize,
}

impl Default for CoalescingSettings {
    fn default() -> Self {
        CoalescingSettings {
            enabled: true,
            cache_ttl_secs: 30,
            key_prefix: "coalesce:".into(),
            max_cached_bytes: 1024 * 1024,
        }
    }
}

impl Validate for CoalescingSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cache_ttl_secs > 86_400 {
            return Err(ConfigError::invalid(
                "coalescing.cache_ttl_secs",
                "must be at most 86400 (a short cache, not a store)",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['*', '?', '[', ' ']) {
            return Err(ConfigError::invalid(
                "coalescing.key_prefix",
                "must be non-empty without glob characters or spaces",
            ));
        }
        if self.max_cached_bytes == 0 {
            return Err(ConfigError::invalid(
                "coalescing.max_cached_bytes",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[graphql]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlSettings {
    /// Serve `/graphql` (queries and mutations over HTTP, subscriptions over WebSocket).
    pub enabled: bool,
    /// Deepest selection a query may nest.
    pub max_depth: usize,
    /// Largest complexity: one per field, plus `graphql::SERVICE_CALL_COST` per field that
    /// calls a service (`graphql::FAN_OUT_COST` for those asking every service), a `tasks`
    /// page counting its selection once per task of `pageSize`.
    pub max_complexity: usize,
    /// Seconds one call to a service (gRPC or HTTP) may take.
    pub call_timeout_secs: u64,
    /// Answer introspection queries (schema discovery by tools).
    pub introspection: bool,
    /// Agents of the a2a service listed by `agents` beside its root agent (a2a has no
    /// directory call yet); each card is fetched live.
    pub a2a_agents: Vec<String>,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        GraphqlSettings {
            enabled: true,
            max_depth: 12,
            max_complexity: 1_000,
            call_timeout_secs: 10,
            introspection: true,
            a2a_agents: vec!["echo".into(), "tck".into()],
        }
    }
}

impl Validate for GraphqlSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("graphql.max_depth", self.max_depth),
            ("graphql.max_complexity", self.max_complexity),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.call_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "graphql.call_timeout_secs",
                "must be at least 1",
            ));
        }
        for name in &self.a2a_agents {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ConfigError::invalid(
                    "graphql.a2a_agents",
                    format!("`{name}` is not an agent name (letters, digits, - and _)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(result: Result<(), ConfigError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let s = Settings::default();
        s.validate().unwrap();
        let d = &s.rate_limit.classes["default"];
        assert_eq!((d.user, d.session, d.ip, d.period_secs), (100, 50, 30, 900));
        assert!(s.websocket.require_auth, "REQUIRE_WS_AUTH is on by default");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.rate_limit.trusted_proxies = vec!["10.0.0.0/99".into()];
        assert!(key_of(s.validate()).contains("rate_limit.trusted_proxies"));

        let mut s = Settings::default();
        s.rate_limit.classes.get_mut("default").unwrap().ip = 0;
        assert!(key_of(s.validate()).contains("rate_limit.classes.default.ip"));

        let mut s = Settings::default();
        s.rate_limit.routes = vec![RouteClass {
            prefix: "/api/v1/chat".into(),
            class: "chat".into(),
        }];
        assert!(key_of(s.validate()).contains("rate_limit.routes[0].class"));

        let mut s = Settings::default();
        s.rate_limit.redis_url = Secret::new("memcached://x".into());
        assert!(key_of(s.validate()).contains("rate_limit.redis_url"));

        let mut s = Settings::default();
        s.sessions.secret = Secret::new("short".into());
        assert!(key_of(s.validate()).contains("sessions.secret"));

        let mut s = Settings::default();
        s.websocket.idle_timeout_secs = s.websocket.heartbeat_secs;
        assert!(key_of(s.validate()).contains("websocket.idle_timeout_secs"));

        let mut s = Settings::default();
        s.websocket.anonymous_scopes = vec!["prices".into()];
        assert!(key_of(s.validate()).contains("websocket.anonymous_scopes"));

        let mut s = Settings::default();
        s.prices.symbols = vec!["BTC.USD".into()];
        assert!(key_of(s.validate()).contains("prices.symbols"));

        let mut s = Settings::default();
        s.routing.aliases[0].service = "gateway".into();
        assert!(key_of(s.validate()).contains("routing.aliases[0].service"));

        let mut s = Settings::default();
        s.cors.allowed_origins = vec!["*".into()];
        assert!(key_of(s.validate()).contains("cors.allowed_origins"));

        let mut s = Settings::default();
        s.llm.default_model = String::new();
        assert!(key_of(s.validate()).contains("llm.default_model"));

        let mut s = Settings::default();
        s.coalescing.key_prefix = "a*".into();
        assert!(key_of(s.validate()).contains("coalescing.key_prefix"));

        let mut s = Settings::default();
        s.graphql.max_depth = 0;
        assert!(key_of(s.validate()).contains("graphql.max_depth"));

        let mut s = Settings::default();
        s.chat.max_messages = 0;
        assert!(key_of(s.validate()).contains("chat.max_messages"));
    }

    #[test]
    fn periods_lifetimes_and_retries_past_their_caps_are_refused() {
        let mut s = Settings::default();
        s.rate_limit.classes.get_mut("default").unwrap().period_secs = MAX_PERIOD_SECS;
        s.sessions.ttl_secs = MAX_SESSION_TTL_SECS;
        s.rate_limit.redis_retry_secs = MAX_REDIS_RETRY_SECS;
        s.validate().unwrap();

        for period in [MAX_PERIOD_SECS + 1, u64::MAX / 1000 + 1, u64::MAX] {
            let mut s = Settings::default();
            s.rate_limit.classes.get_mut("default").unwrap().period_secs = period;
            let e = key_of(s.validate());
            assert!(
                e.contains("rate_limit.classes.default.period_secs") && e.contains("86400"),
                "{period}: {e}"
            );
        }
        let mut s = Settings::default();
        s.rate_limit.classes.get_mut("default").unwrap().period_secs = 0;
        assert!(key_of(s.validate()).contains("rate_limit.classes.default.period_secs"));

        for ttl in [MAX_SESSION_TTL_SECS + 1, u64::MAX] {
            let mut s = Settings::default();
            s.sessions.ttl_secs = ttl;
            let e = key_of(s.validate());
            assert!(
                e.contains("sessions.ttl_secs") && e.contains("2592000"),
                "{ttl}: {e}"
            );
        }

        let mut s = Settings::default();
        s.rate_limit.redis_retry_secs = u64::MAX;
        assert!(key_of(s.validate()).contains("rate_limit.redis_retry_secs"));
    }

    #[test]
    fn a_mapped_proxy_block_wider_than_the_mapping_is_refused() {
        let mut s = Settings::default();
        s.rate_limit.trusted_proxies = vec!["::ffff:0:0/64".into()];
        let e = key_of(s.validate());
        assert!(
            e.contains("rate_limit.trusted_proxies") && e.contains("/96"),
            "{e}"
        );
        s.rate_limit.trusted_proxies = vec!["::ffff:10.0.0.0/104".into()];
        s.validate().unwrap();
    }

    #[test]
    fn secrets_do_not_print() {
        let mut s = Settings::default();
        s.sessions.secret = Secret::new("a-very-secret-value-of-32-bytes!!".into());
        s.rate_limit.redis_url = Secret::new("redis://:pw@host:6379".into());
        let text = format!("{s:?}");
        assert!(
            !text.contains("a-very-secret") && !text.contains(":pw@"),
            "{text}"
        );
    }
}

/// The prefixes the gateway forwards behind its auth layer; a public path under one of them is
/// served by the same route, which lets it through without a token.
pub const FORWARDED_PREFIXES: [&str; 4] = ["/api/v1/", "/api/media/", "/a2a", "/agents/"];

/// Paths the gateway answers itself, which no public path may shadow.
const OWN_PATHS: [&str; 6] = [
    "/ws",
    "/graphql",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/gateway/sessions",
];

/// Whether `path` is under a forwarded prefix.
pub fn is_forwarded(path: &str) -> bool {
    FORWARDED_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Whether `path` matches a public-path pattern: the same segments, `{name}` matching any one
/// non-empty segment.
pub fn public_path_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

fn check_public_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with /");
    }
    if path.contains("{*") || path.contains(['?', '#', '*']) {
        return Err("a path with `{name}` segments at most (no catch-all, query or fragment)");
    }
    let segments_ok = path.split('/').skip(1).all(|seg| {
        !seg.contains(['{', '}']) || (seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2)
    });
    if !segments_ok {
        return Err("`{name}` must be a whole segment");
    }
    if !is_forwarded(path) && path.contains('{') {
        return Err("`{name}` segments only under /api/v1/, /api/media/, /a2a or /agents/");
    }
    if OWN_PATHS.contains(&path) {
        return Err("the gateway serves this path itself");
    }
    Ok(())
}

#[cfg(test)]
mod public_path_tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let p = "/agents/{agent}/.well-known/agent-card.json";
        assert!(public_path_matches(
            p,
            "/agents/cowork/.well-known/agent-card.json"
        ));
        assert!(!public_path_matches(
            p,
            "/agents//.well-known/agent-card.json"
        ));
        assert!(!public_path_matches(
            p,
            "/agents/a/b/.well-known/agent-card.json"
        ));
        assert!(!public_path_matches(p, "/agents/cowork/a2a"));
        assert!(public_path_matches(
            "/.well-known/agent-card.json",
            "/.well-known/agent-card.json"
        ));
        assert!(!public_path_matches(
            "/.well-known/agent-card.json",
            "/.well-known/agent-card.json/x"
        ));
    }

    #[test]
    fn paths_that_would_clash_with_routes_are_refused() {
        for bad in [
            "x",
            "/agents/{*rest}",
            "/ws",
            "/graphql",
            "/a{b}",
            "/x/{y}",
            "/a?b",
        ] {
            assert!(check_public_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/.well-known/agent-card.json",
            "/agents/{agent}/.well-known/agent-card.json",
            "/api/v1/registry/index.json",
        ] {
            assert!(check_public_path(good).is_ok(), "{good}");
        }
    }
}
