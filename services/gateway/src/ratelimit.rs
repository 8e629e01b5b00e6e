//! Tiered rate limits at the edge: which quota a request is charged to (`domain::tier`), the
//! GCRA decision (`domain::gcra`) taken in Redis in one round trip over one shared multiplexed
//! connection, and the `RateLimit-*` / `Retry-After` headers.
//!
//! Shared limits: a Lua script runs the GCRA arithmetic atomically with Redis's own clock
//! (`TIME`), so replicas with skewed clocks still agree; the script is loaded once and then
//! called by hash (`EVALSHA`). When Redis does not answer within `rate_limit.redis_timeout_ms`
//! the replica decides with its own in-memory GCRA (fail-open to per-replica limits: each
//! replica then admits up to the quota), counts `liquid_gateway_rate_limit_fallback_total`,
//! logs the transition once, and tries Redis again after `rate_limit.redis_retry_secs`.
//! Without a Redis URL (embedded mode) every decision is local.
//!
//! Refusals are held: a key Redis refused is refused by this replica, without a round trip,
//! until its retry-after has passed ([`Decision::later`] says why that is exact, not an
//! approximation), as Envoy's rate-limit service keeps over-limit keys in a local cache. A
//! client that keeps sending once refused, the traffic limits exist for, then costs Redis
//! nothing; such decisions are counted with `backend="held"`.
//!
//! Two middlewares: [`limit`] charges every request that passed authentication to its tier;
//! [`limit_session_creation`] charges `POST /api/v1/gateway/sessions` to the client address
//! (a session token presented there is ignored, else each session could mint more sessions
//! and the address quota would bound nothing). A request whose token is refused is charged to
//! the client address by the auth layer itself ([`crate::auth`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue};
use liquid_auth::Claims;
use liquid_kit::secret::redact_url;
use liquid_kit::telemetry::target;
use liquid_kit::{ApiError, ErrorCode};
use moka::ops::compute::Op;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{ClassLimits, RateLimitSettings};
use crate::domain::gcra::{self, Decision, Quota};
use crate::domain::session_token::SessionSigner;
use crate::domain::tier::{self, Charge, Cidr, Tier};
use crate::error::GatewayError;

/// The header carrying a gateway session token.
pub const SESSION_HEADER: &str = "x-session-token";
/// The header naming the tier a request was charged to.
pub const TIER_HEADER: &str = "x-ratelimit-tier";

/// GCRA in Redis: KEYS[1] the key, ARGV[1] the emission interval and ARGV[2] the window, in
/// milliseconds. Stores the new theoretical arrival time (TAT) when the request is allowed and
/// returns the TAT found, relative to Redis's clock (0 for a new or lapsed key). The decision's
/// figures are then `domain::gcra::decide` on that relative TAT, so the arithmetic lives in one
/// place and the script does only what must be atomic: it runs once per request of every
/// replica, so each step it saves is Redis CPU saved (BENCHMARKS.md has the figures).
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + ARGV[1]
if now >= new_tat - ARGV[2] then
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
return tat - now
";

/// Where a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In Redis, shared by every replica.
    Redis,
    /// In this replica's memory.
    Local,
    /// A refusal from Redis this replica holds until its retry-after has passed.
    Held,
}

impl Backend {
    /// `redis` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Local => "local",
            Backend::Held => "held",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The GCRA decision.
    pub decision: Decision,
    /// Who was charged.
    pub charge: Charge,
    /// The route class.
    pub class: Arc<str>,
    /// The quota's period in seconds (for `RateLimit-Policy`).
    pub period_secs: u64,
    /// Where it was decided.
    pub backend: Backend,
}

impl Outcome {
    /// Whole seconds to wait before retrying, at least 1 (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        gcra::ceil_secs(self.decision.retry_after_ms).max(1)
    }

    /// What a refusal says, on every surface (REST, WebSocket frames, GraphQL errors).
    pub fn refusal_message(&self) -> String {
        format!(
            "rate limit of {} requests per {}s for this {} reached; retry after {}s",
            self.decision.limit,
            self.period_secs,
            self.charge.tier.as_str(),
            self.retry_after_secs()
        )
    }

    /// The figures a refusal carries (`details` of the error).
    pub fn refusal_details(&self) -> serde_json::Value {
        serde_json::json!({
            "tier": self.charge.tier.as_str(),
            "class": self.class,
            "limit": self.decision.limit,
            "period_seconds": self.period_secs,
            "retry_after_seconds": self.retry_after_secs(),
        })
    }
}

struct SharedLimits {
    connection: ConnectionManager,
    script: redis::Script,
    url: String,
}

/// One route class: its limits and its decision counters. The counters are taken once here, as
/// the service host does for its RED metrics: looking a counter up by its four labels costs a
/// hash of them and a registry probe on every request.
struct Class {
    name: Arc<str>,
    limits: ClassLimits,
    /// `liquid_gateway_rate_limit_decisions_total` by tier, backend and outcome
    /// (`Class::decisions`).
    decisions: Vec<metrics::Counter>,
}

const TIERS: [Tier; 3] = [Tier::User, Tier::Session, Tier::Ip];
const BACKENDS: [Backend; 3] = [Backend::Redis, Backend::Local, Backend::Held];

impl Class {
    fn new(name: &str, limits: ClassLimits) -> Class {
        let mut decisions = Vec::with_capacity(TIERS.len() * BACKENDS.len() * 2);
        for tier in TIERS {
            for backend in BACKENDS {
                for outcome in ["limited", "allowed"] {
                    decisions.push(metrics::counter!("liquid_gateway_rate_limit_decisions_total",
                        "tier" => tier.as_str(), "class" => name.to_owned(), "outcome" => outcome, "backend" => backend.as_str()));
                }
            }
        }
        Class {
            name: name.into(),
            limits,
            decisions,
        }
    }

    fn decisions(&self, tier: Tier, backend: Backend, allowed: bool) -> &metrics::Counter {
        let tier = TIERS.iter().position(|t| *t == tier).unwrap_or(0);
        let backend = BACKENDS.iter().position(|b| *b == backend).unwrap_or(0);
        &self.decisions[(tier * BACKENDS.len() + backend) * 2 + usize::from(allowed)]
    }
}

/// Decides rate limits for the gateway; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    classes: BTreeMap<String, Class>,
    routes: Vec<(String, String)>,
    trusted: Vec<Cidr>,
    key_prefix: String,
    redis: Option<SharedLimits>,
    redis_timeout: Duration,
    redis_retry: Duration,
    /// Unix milliseconds until which Redis is skipped; 0 while it answers.
    redis_down_until: AtomicU64,
    local: moka::sync::Cache<String, u64>,
    /// Keys Redis refused, with the refusal and when it was given.
    held: moka::sync::Cache<String, HeldRefusal>,
    sessions: Arc<SessionSigner>,
}

/// A refusal from Redis and the moment it was given.
#[derive(Clone, Copy)]
struct HeldRefusal {
    decision: Decision,
    at: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RateLimiter {
    /// A limiter from `[rate_limit]`; `namespace` prefixes every Redis key (the gateway's cache
    /// namespace). Connects to Redis lazily, so a Redis that is down at start-up leaves the
    /// gateway serving on local limits until it answers.
    pub fn new(
        settings: &RateLimitSettings,
        namespace: &str,
        sessions: Arc<SessionSigner>,
    ) -> Result<RateLimiter, GatewayError> {
        let trusted = settings.trusted().map_err(|e| GatewayError::Config {
            key: "rate_limit.trusted_proxies",
            reason: e.to_string(),
        })?;
        let redis = if settings.redis_url.is_empty() {
            None
        } else {
            let url = settings.redis_url.expose();
            let client = liquid_store::cache::redis_client(url.as_str()).map_err(|e| {
                GatewayError::Config {
                    key: "rate_limit.redis_url",
                    reason: e.to_string(),
                }
            })?;
            let timeout = Duration::from_millis(settings.redis_timeout_ms);
            // No response timeout in the driver: `check_shared` bounds the whole call
            // (connection included) with `redis_timeout`, and a second timer per request would
            // only cost a timer-wheel entry.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_response_timeout(None)
                .set_number_of_retries(1);
            let connection =
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                    GatewayError::RedisUnreachable {
                        url: redact_url(url),
                        reason: e.to_string(),
                    }
                })?;
            Some(SharedLimits {
                connection,
                script: redis::Script::new(GCRA_SCRIPT),
                url: redact_url(url),
            })
        };
        let mut routes: Vec<(String, String)> = settings
            .routes
            .iter()
            .map(|r| (r.prefix.trim_end_matches('/').to_owned(), r.class.clone()))
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let longest = settings
            .classes
            .values()
            .map(|c| c.period_secs)
            .max()
            .unwrap_or(900);
        // The process-wide recorder before the counters are taken (a handle taken earlier would
        // count nothing). Every series is registered from the start, so dashboards see zeros
        // rather than no series.
        liquid_kit::metrics::handle();
        let classes = settings
            .classes
            .iter()
            .map(|(name, limits)| (name.clone(), Class::new(name, limits.clone())))
            .collect();
        metrics::counter!("liquid_gateway_rate_limit_fallback_total").increment(0);
        metrics::gauge!("liquid_gateway_rate_limit_redis_up").set(if redis.is_some() {
            1.0
        } else {
            0.0
        });
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                enabled: settings.enabled,
                classes,
                routes,
                trusted,
                key_prefix: format!("{namespace}{}", settings.key_prefix),
                redis,
                redis_timeout: Duration::from_millis(settings.redis_timeout_ms),
                redis_retry: Duration::from_secs(settings.redis_retry_secs),
                redis_down_until: AtomicU64::new(0),
                local: moka::sync::Cache::builder()
                    .max_capacity(settings.local_max_keys)
                    .time_to_idle(Duration::from_secs(longest))
                    .build(),
                // A retry-after is at most one period, so nothing outlives that.
                held: moka::sync::Cache::builder()
                    .max_capacity(settings.local_max_keys)
                    .time_to_live(Duration::from_secs(longest))
                    .build(),
                sessions,
            }),
        })
    }

    /// True when limits are shared through Redis.
    pub fn shared(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Loads the script into Redis ahead of the first request (best effort).
    pub async fn warm_up(&self) {
        if let Some(shared) = &self.inner.redis {
            let mut conn = shared.connection.clone();
            match tokio::time::timeout(
                Duration::from_secs(2),
                shared.script.prepare_invoke().load_async(&mut conn),
            )
            .await
            {
                Ok(Ok(_)) => {
                    tracing::info!(target: target::CACHE, url = %shared.url, "rate limits shared through redis");
                }
                Ok(Err(error)) => {
                    tracing::warn!(target: target::CACHE, url = %shared.url, %error, "rate-limit redis not answering at start-up; deciding locally until it does");
                }
                Err(_) => {
                    tracing::warn!(target: target::CACHE, url = %shared.url, "rate-limit redis not answering at start-up; deciding locally until it does");
                }
            }
        }
    }

    /// The route class of `path`: the longest configured prefix, else `default`.
    pub fn class_of(&self, path: &str) -> &str {
        self.inner
            .routes
            .iter()
            .find(|(prefix, _)| {
                path == prefix
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.starts_with('/'))
                    || prefix.is_empty()
            })
            .map_or("default", |(_, class)| class.as_str())
    }

    /// The verified session id of an `X-Session-Token`, if it is valid.
    pub fn session_of(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers.get(SESSION_HEADER)?.to_str().ok()?;
        match self.inner.sessions.verify(token, now_ms() / 1000) {
            Ok(session) => Some(session.id),
            Err(error) => {
                tracing::debug!(target: target::SECURITY, %error, "session token ignored");
                None
            }
        }
    }

    /// The client address behind trusted proxies.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        tier::client_address(peer, forwarded, &self.inner.trusted)
    }

    /// Who a request is charged to.
    pub fn charge(&self, claims: Option<&Claims>, headers: &HeaderMap, peer: IpAddr) -> Charge {
        let session = if claims.is_none() {
            self.session_of(headers)
        } else {
            None
        };
        let client = self.client_address(peer, headers);
        tier::select(
            claims.map(|c| (c.tenant_id(), c.sub.as_str())),
            session.as_deref(),
            client,
        )
    }

    /// Who a request is charged to when a session token must not count: the verified user if
    /// any, else the client address (how creating a session is charged).
    pub fn charge_address(
        &self,
        claims: Option<&Claims>,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Charge {
        let client = self.client_address(peer, headers);
        tier::select(
            claims.map(|c| (c.tenant_id(), c.sub.as_str())),
            None,
            client,
        )
    }

    /// Charges one action of a verified caller (a WebSocket frame, a GraphQL field) as a
    /// request to `route` would be charged: to the user, in `route`'s class. Headers and the
    /// address play no part, as verified claims always select the user tier.
    pub async fn check_user(&self, route: &str, claims: &Claims) -> Option<Outcome> {
        let charge = tier::select(
            Some((claims.tenant_id(), claims.sub.as_str())),
            None,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        );
        self.check(self.class_of(route), charge).await
    }

    /// Charges one request of `class` to `charge`; `None` when limits are disabled.
    pub async fn check(&self, class: &str, charge: Charge) -> Option<Outcome> {
        let inner = &self.inner;
        if !inner.enabled {
            return None;
        }
        let class = match inner.classes.get(class) {
            Some(class) => class,
            None => inner.classes.get("default")?,
        };
        let limits = &class.limits;
        let limit = match charge.tier {
            Tier::User => limits.user,
            Tier::Session => limits.session,
            Tier::Ip => limits.ip,
        };
        let quota = Quota::new(limit, limits.period_secs.saturating_mul(1000));
        let key = format!(
            "{}{}:{}:{}",
            inner.key_prefix,
            class.name,
            charge.tier.as_str(),
            charge.key
        );
        let (decision, backend) = if let Some(decision) = self.held(&key) {
            (decision, Backend::Held)
        } else if let Some(decision) = self.check_shared(&key, quota).await {
            if !decision.allowed {
                let at = Instant::now();
                inner.held.insert(key, HeldRefusal { decision, at });
            }
            (decision, Backend::Redis)
        } else {
            (self.check_local(key, quota), Backend::Local)
        };
        class
            .decisions(charge.tier, backend, decision.allowed)
            .increment(1);
        Some(Outcome {
            decision,
            charge,
            class: class.name.clone(),
            period_secs: limits.period_secs,
            backend,
        })
    }

    /// The refusal Redis gave `key`, as it stands now, while it holds (none without Redis:
    /// local decisions are not held, so there is nothing to look up).
    fn held(&self, key: &str) -> Option<Decision> {
        self.inner.redis.as_ref()?;
        let held = self.inner.held.get(key)?;
        let elapsed = u64::try_from(held.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let decision = held.decision.later(elapsed);
        if decision.is_none() {
            self.inner.held.invalidate(key);
        }
        decision
    }

    async fn check_shared(&self, key: &str, quota: Quota) -> Option<Decision> {
        let inner = &self.inner;
        let shared = inner.redis.as_ref()?;
        let now = now_ms();
        if inner.redis_down_until.load(Ordering::Relaxed) > now {
            metrics::counter!("liquid_gateway_rate_limit_fallback_total").increment(1);
            return None;
        }
        let mut conn = shared.connection.clone();
        let mut invocation = shared.script.key(key);
        invocation
            .arg(quota.emission_interval_ms())
            .arg(quota.window_ms());
        let answer = tokio::time::timeout(
            inner.redis_timeout,
            invocation.invoke_async::<i64>(&mut conn),
        )
        .await;
        let reason = match answer {
            Ok(Ok(tat_ahead_ms)) => {
                if inner.redis_down_until.swap(0, Ordering::Relaxed) != 0 {
                    metrics::gauge!("liquid_gateway_rate_limit_redis_up").set(1.0);
                    tracing::info!(target: target::CACHE, url = %shared.url, "rate-limit redis answers again; limits are shared");
                }
                // The script's TAT is relative to Redis's clock: decide at "now" = 0.
                let tat = u64::try_from(tat_ahead_ms).unwrap_or(0);
                return Some(gcra::decide(quota, Some(tat), 0).0);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}ms", inner.redis_timeout.as_millis()),
        };
        let until =
            now.saturating_add(u64::try_from(inner.redis_retry.as_millis()).unwrap_or(u64::MAX));
        if inner.redis_down_until.swap(until, Ordering::Relaxed) == 0 {
            metrics::gauge!("liquid_gateway_rate_limit_redis_up").set(0.0);
            tracing::warn!(target: target::CACHE, url = %shared.url, %reason, retry_secs = inner.redis_retry.as_secs(), "rate-limit redis failed; deciding locally per replica");
        }
        metrics::counter!("liquid_gateway_rate_limit_fallback_total").increment(1);
        None
    }

    fn check_local(&self, key: String, quota: Quota) -> Decision {
        let now = now_ms();
        let mut decision = None;
        self.inner.local.entry(key).and_compute_with(|entry| {
            let (d, new_tat) = gcra::decide(quota, entry.map(|e| e.into_value()), now);
            decision = Some(d);
            match new_tat {
                Some(tat) => Op::Put(tat),
                None => Op::Nop,
            }
        });
        decision.unwrap_or(Decision {
            allowed: true,
            limit: quota.limit,
            remaining: quota.limit,
            reset_after_ms: 0,
            retry_after_ms: 0,
        })
    }
}

/// Writes the `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers) and the tier.
pub fn write_headers(headers: &mut HeaderMap, outcome: &Outcome) {
    let d = &outcome.decision;
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("ratelimit-limit", d.limit.to_string());
    put("ratelimit-remaining", d.remaining.to_string());
    put(
        "ratelimit-reset",
        gcra::ceil_secs(d.reset_after_ms).to_string(),
    );
    put(
        "ratelimit-policy",
        format!("{};w={}", d.limit, outcome.period_secs),
    );
    put(TIER_HEADER, outcome.charge.tier.as_str().to_owned());
}

/// The 429 answer for a refused request, with `Retry-After`.
pub fn refusal(outcome: &Outcome) -> Response {
    tracing::info!(target: target::SECURITY, tier = outcome.charge.tier.as_str(), class = %outcome.class, retry_after_secs = outcome.retry_after_secs(), "rate limited");
    let mut response = ApiError::new(ErrorCode::RateLimited, outcome.refusal_message())
        .with_details(outcome.refusal_details())
        .into_response();
    write_headers(response.headers_mut(), outcome);
    response
}

/// The TCP peer of a request (`0.0.0.0` when the server did not record it).
pub fn peer_of(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Middleware: charges every request to its tier; refuses with 429 or passes and adds the
/// headers. Runs inside the auth layer, so verified claims are in the extensions.
pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let charge = limiter.charge(
        request.extensions().get::<Claims>(),
        request.headers(),
        peer_of(&request),
    );
    limit_as(&limiter, charge, request, next).await
}

/// Middleware for creating a session: like [`limit`], but charged to the verified user or
/// the client address, never to a presented `X-Session-Token`. A session token's quota is
/// for using the session; were minting charged to it, every session could mint as many new
/// sessions as its quota, each with a fresh quota, and the address quota would bound nothing.
pub async fn limit_session_creation(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let charge = limiter.charge_address(
        request.extensions().get::<Claims>(),
        request.headers(),
        peer_of(&request),
    );
    limit_as(&limiter, charge, request, next).await
}

async fn limit_as(limiter: &RateLimiter, charge: Charge, request: Request, next: Next) -> Response {
    let class = limiter.class_of(request.uri().path());
    let Some(outcome) = limiter.check(class, charge).await else {
        return next.run(request).await;
    };
    if !outcome.decision.allowed {
        return refusal(&outcome);
    }
    let mut response = next.run(request).await;
    write_headers(response.headers_mut(), &outcome);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteClass;

    fn limiter(settings: RateLimitSettings) -> RateLimiter {
        RateLimiter::new(
            &settings,
            "test:",
            Arc::new(SessionSigner::new(b"0123456789abcdef0123456789abcdef")),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn local_limits_hold_per_tier_key() {
        let mut s = RateLimitSettings::default();
        s.classes.insert(
            "default".into(),
            ClassLimits {
                user: 3,
                session: 2,
                ip: 1,
                period_secs: 900,
            },
        );
        let l = limiter(s);
        let user = |k: &str| Charge {
            tier: Tier::User,
            key: k.into(),
        };
        for i in 0..3 {
            let o = l.check("default", user("a/bob")).await.unwrap();
            assert!(o.decision.allowed, "{i}");
            assert_eq!(o.backend, Backend::Local);
        }
        let o = l.check("default", user("a/bob")).await.unwrap();
        assert!(!o.decision.allowed);
        // One emission interval (900 s / 3) from the first request, less the few ms the test
        // itself took: the local clock is real.
        assert!(
            (290_000..=300_000).contains(&o.decision.retry_after_ms),
            "{}",
            o.decision.retry_after_ms
        );
        assert!(
            l.check("default", user("a/ann"))
                .await
                .unwrap()
                .decision
                .allowed
        );
        let ip = Charge {
            tier: Tier::Ip,
            key: "1.2.3.4".into(),
        };
        assert!(
            l.check("default", ip.clone())
                .await
                .unwrap()
                .decision
                .allowed
        );
        assert!(!l.check("default", ip).await.unwrap().decision.allowed);
    }

    /// The value of the decision counter of `class` with these labels in `/metrics`.
    fn decisions(class: &str, tier: &str, outcome: &str, backend: &str) -> Option<f64> {
        let wanted = [
            format!("class=\"{class}\""),
            format!("tier=\"{tier}\""),
            format!("outcome=\"{outcome}\""),
            format!("backend=\"{backend}\""),
        ];
        liquid_kit::metrics::render()
            .lines()
            .find(|l| {
                l.starts_with("liquid_gateway_rate_limit_decisions_total{")
                    && wanted.iter().all(|w| l.contains(w.as_str()))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[tokio::test]
    async fn decisions_are_counted_by_tier_class_outcome_and_backend() {
        let mut s = RateLimitSettings::default();
        // A class of its own, so tests sharing the process-wide recorder do not add to it.
        s.classes.insert(
            "metered".into(),
            ClassLimits {
                user: 10,
                session: 10,
                ip: 2,
                period_secs: 900,
            },
        );
        let l = limiter(s);
        // Every series is there from the start, at zero.
        assert_eq!(decisions("metered", "user", "limited", "redis"), Some(0.0));
        assert_eq!(
            decisions("metered", "session", "allowed", "local"),
            Some(0.0)
        );
        let ip = Charge {
            tier: Tier::Ip,
            key: "10.0.0.9".into(),
        };
        for _ in 0..3 {
            l.check("metered", ip.clone()).await.unwrap();
        }
        let outcome = l.check("metered", ip).await.unwrap();
        assert_eq!(&*outcome.class, "metered");
        assert_eq!(decisions("metered", "ip", "allowed", "local"), Some(2.0));
        assert_eq!(decisions("metered", "ip", "limited", "local"), Some(2.0));
        assert_eq!(decisions("metered", "user", "allowed", "local"), Some(0.0));
        // An unknown class is charged, and counted, as `default`.
        let before = decisions("default", "ip", "allowed", "local").unwrap_or(0.0);
        let o = l
            .check(
                "nonesuch",
                Charge {
                    tier: Tier::Ip,
                    key: "10.0.0.10".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(&*o.class, "default");
        assert_eq!(
            decisions("default", "ip", "allowed", "local"),
            Some(before + 1.0)
        );
    }

    #[test]
    fn route_classes_use_the_longest_prefix() {
        let mut s = RateLimitSettings::default();
        s.classes.insert("chat".into(), ClassLimits::default());
        s.classes.insert("ws".into(), ClassLimits::default());
        s.routes = vec![
            RouteClass {
                prefix: "/api/v1".into(),
                class: "ws".into(),
            },
            RouteClass {
                prefix: "/api/v1/chat".into(),
                class: "chat".into(),
            },
        ];
        let l = limiter(s);
        assert_eq!(l.class_of("/api/v1/chat"), "chat");
        assert_eq!(l.class_of("/api/v1/chat/x"), "chat");
        assert_eq!(l.class_of("/api/v1/chatty"), "ws");
        assert_eq!(l.class_of("/other"), "default");
    }

    #[test]
    fn refusals_carry_retry_after_and_the_headers() {
        let outcome = Outcome {
            decision: Decision {
                allowed: false,
                limit: 30,
                remaining: 0,
                reset_after_ms: 899_500,
                retry_after_ms: 29_001,
            },
            charge: Charge {
                tier: Tier::Ip,
                key: "1.2.3.4".into(),
            },
            class: "default".into(),
            period_secs: 900,
            backend: Backend::Local,
        };
        let r = refusal(&outcome);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(r.headers()["ratelimit-limit"], "30");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        assert_eq!(r.headers()["ratelimit-reset"], "900");
        assert_eq!(r.headers()["ratelimit-policy"], "30;w=900");
        assert_eq!(r.headers()[TIER_HEADER], "ip");
    }

    #[tokio::test]
    async fn disabled_limits_decide_nothing() {
        let s = RateLimitSettings {
            enabled: false,
            ..RateLimitSettings::default()
        };
        let l = limiter(s);
        let charge = Charge {
            tier: Tier::Ip,
            key: "x".into(),
        };
        assert!(l.check("default", charge).await.is_none());
    }
}
