//! The gateway service: the platform's only public edge.
//!
//! What it does per request, outermost first: CORS for the allowed origins (preflights are
//! answered before authentication, as browsers send them without credentials), token
//! verification with the shared verifier behind a cache of verified tokens ([`auth`]; the
//! shared layer's refusals, charged to the client address)
//! (except the WebSocket endpoint,
//! the session endpoint and public discovery paths, which verify or need nothing themselves),
//! the tiered rate limit ([`ratelimit`]; creating a session is charged to the client address,
//! never to a session token), then the gateway's own routes ([`api`], [`ws`]) or
//! forwarding to the service that owns the path ([`proxy`]). Request ids, trace spans, RED
//! metrics and the global body limit come from the shared host.
//!
//! The gateway's routes therefore sit in [`ServiceParts::public_http`] under the gateway's
//! own authentication (same verifier, same refusals) so that CORS can wrap it; only the
//! platform info route uses the foundation's layer.
//!
//! Background tasks: the hub's fan-out from the bus (`ws.>`), the price relay
//! (`prices.>`), the simulated price feed when enabled, and the drain that waits for open
//! WebSocket connections to close at shutdown. Chat, request coalescing and GraphQL arrive
//! with the rest of issue 6; the seams are [`ws::ChatHandler`] and the hub's `chat:<session>`
//! channel.

pub mod api;
pub mod auth;
pub mod chat;
pub mod coalesce;
pub mod config;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod hub;
pub mod prices;
pub mod proxy;
pub mod ratelimit;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, Method};
use liquid_kit::config::Validate;
use liquid_kit::telemetry::target;
use liquid_runtime::{Foundation, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;
use rand::RngCore;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Settings;

use crate::domain::session_token::SessionSigner;
use crate::error::GatewayError;

/// Name, version and usual port of the gateway (it has no gRPC API of its own).
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "gateway",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8080,
    grpc_port: None,
};

/// The gateway's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/gateway/postgres"),
    sqlite: sqlx::migrate!("../../migrations/gateway/sqlite"),
};

/// The gateway service, as the runtime starts it.
pub struct Gateway;

impl Service for Gateway {
    type Settings = Settings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    async fn build(
        foundation: &Foundation,
        settings: &Settings,
    ) -> Result<ServiceParts, StartError> {
        settings.validate()?;
        let public_http = edge(foundation, settings)
            .await
            .map_err(StartError::service)?;
        Ok(ServiceParts {
            public_http,
            ..ServiceParts::default()
        })
    }
}

fn session_signer(foundation: &Foundation, settings: &Settings) -> SessionSigner {
    if settings.sessions.secret.is_empty() {
        if foundation.cache.kind() == "redis" {
            tracing::warn!(target: target::SECURITY, "sessions.secret is empty: this replica signs session tokens with its own random key, which other replicas refuse; set LIQUID_GATEWAY__SESSIONS__SECRET");
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SessionSigner::new(&key)
    } else {
        SessionSigner::new(settings.sessions.secret.expose().as_bytes())
    }
}

async fn edge(foundation: &Foundation, settings: &Settings) -> Result<Router, GatewayError> {
    // The process-wide recorder must exist before the first metric below is registered (the
    // host installs it only when it starts, after this).
    liquid_kit::metrics::handle();
    let sessions = Arc::new(session_signer(foundation, settings));
    // Without a URL of its own, the limiter shares the replicas' Redis: the cache's.
    let mut limits = settings.rate_limit.clone();
    if limits.redis_url.is_empty() && foundation.cache.kind() == "redis" {
        limits.redis_url = foundation.cache_url.clone();
    }
    let limiter =
        ratelimit::RateLimiter::new(&limits, foundation.cache.prefix(), sessions.clone())?;
    if limiter.shared() {
        limiter.warm_up().await;
    }

    let hub = hub::Hub::new(
        foundation.bus.clone(),
        settings.websocket.send_queue,
        settings.websocket.max_connections,
    );
    let (fanout, relay) = hub
        .run(&settings.prices.subject_prefix, foundation.shutdown.clone())
        .await?;
    foundation.spawn("websocket-fanout", fanout);
    foundation.spawn("price-relay", relay);
    if settings.prices.simulated_feed {
        foundation.spawn(
            "simulated-price-feed",
            prices::simulate(
                foundation.bus.clone(),
                settings.prices.clone(),
                foundation.shutdown.clone(),
            ),
        );
    }
    let drain_hub = hub.clone();
    let shutdown = foundation.shutdown.clone();
    foundation.spawn("websocket-drain", async move {
        shutdown.cancelled().await;
        let open = drain_hub.socket_count();
        drain_hub.tasks().close();
        if open > 0 {
            tracing::info!(target: target::WEBSOCKET, open, "closing websocket connections");
        }
        drain_hub.tasks().wait().await;
    });

    let chat = chat_service(foundation, settings, &hub, &sessions)?;
    let tokens = auth::EdgeAuth::new(foundation.verifier.clone())
        .with_public_paths(settings.routing.public_paths.clone())
        .with_refusals_charged(limiter.clone());
    let trusted = settings
        .rate_limit
        .trusted()
        .map_err(|e| GatewayError::Config {
            key: "rate_limit.trusted_proxies",
            reason: e.to_string(),
        })?;
    let upstreams = proxy::Upstreams::new(foundation.peers.clone(), &settings.routing, trusted);
    let api_state = api::ApiState {
        hub: hub.clone(),
        sessions,
        session_ttl_secs: settings.sessions.ttl_secs,
    };
    let ws_state = ws::WsState {
        tokens: tokens.clone(),
        hub,
        limiter: limiter.clone(),
        settings: Arc::new(settings.websocket.clone()),
        bus: foundation.bus.clone(),
        chat: chat
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn ws::ChatHandler>),
        shutdown: foundation.shutdown.clone(),
        replica: foundation.info.instance_id.to_string(),
    };
    let graphql = settings.graphql.enabled.then(|| graphql::GraphqlState {
        schema: graphql::schema(
            &settings.graphql,
            foundation.peers.clone(),
            foundation.info.clone(),
            ws_state.hub.clone(),
            chat.clone(),
        ),
        tokens: tokens.clone(),
        limiter: limiter.clone(),
        websocket: ws_state.settings.clone(),
        shutdown: foundation.shutdown.clone(),
        hub: ws_state.hub.clone(),
    });
    let limit = axum::middleware::from_fn_with_state(limiter.clone(), ratelimit::limit);
    let limit_session_creation =
        axum::middleware::from_fn_with_state(limiter, ratelimit::limit_session_creation);

    let mut verified = Router::new()
        .route("/api/v1/gateway/whoami", get(api::whoami))
        .route(
            "/api/v1/gateway/channels/{channel}/messages",
            post(api::publish),
        )
        .with_state(api_state.clone());
    if let Some(chat) = &chat {
        let state = chat::ChatState {
            chat: chat.clone(),
            keepalive: Duration::from_secs(settings.chat.sse_keepalive_secs),
        };
        verified = verified.merge(
            Router::new()
                .route("/api/v1/chat", post(chat::post_chat))
                .route(
                    "/api/v1/chat/cache",
                    axum::routing::delete(chat::delete_cache),
                )
                .route(
                    "/api/v1/chat/sessions/{session}",
                    get(chat::get_session).delete(chat::delete_session),
                )
                .with_state(state),
        );
    }
    if let Some(state) = &graphql {
        verified = verified.merge(
            Router::new()
                .route("/graphql", post(graphql::execute))
                .with_state(state.clone()),
        );
    }
    let verified = verified
        .merge(proxy::router(upstreams.clone()))
        .layer(limit.clone())
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ));
    // Creating a session is charged to the client address, never to a session token.
    let sessions = Router::new()
        .route("/api/v1/gateway/sessions", post(api::create_session))
        .with_state(api_state)
        .layer(limit_session_creation);
    let open = proxy::public_router(upstreams)
        .layer(limit)
        .merge(sessions)
        .route("/ws", get(ws::upgrade).with_state(ws_state));
    let open = match graphql {
        Some(state) => open.route("/graphql", get(graphql::subscribe).with_state(state)),
        None => open,
    };
    let router = verified
        .merge(open)
        .layer(axum::middleware::from_fn(proxy::refuse_ambiguous_paths));
    Ok(match cors(&settings.cors) {
        Some(layer) => router.layer(layer),
        None => router,
    })
}

/// The model router, the coalescer in front of it and the chat service (none when
/// `chat.enabled` is off).
fn chat_service(
    foundation: &Foundation,
    settings: &Settings,
    hub: &hub::Hub,
    sessions: &Arc<SessionSigner>,
) -> Result<Option<chat::ChatService>, GatewayError> {
    if !settings.chat.enabled {
        return Ok(None);
    }
    let mut llm = settings.llm.clone();
    llm.fill_keys_from(|k| std::env::var(k).ok());
    let router =
        Arc::new(
            liquid_llm::ModelRouter::from_config(&llm).map_err(|e| GatewayError::Config {
                key: "llm",
                reason: e.to_string(),
            })?,
        );
    let unkeyed: Vec<&str> = llm
        .providers
        .iter()
        .filter(|(_, p)| p.api_key.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    if !unkeyed.is_empty() {
        tracing::info!(target: target::AI, providers = ?unkeyed, offline_fallback = llm.offline_fallback, "model providers without an api key answer through the labelled offline provider");
    }
    let coalescer = coalesce::Coalescer::new(
        router.clone(),
        foundation.cache.clone(),
        &settings.coalescing,
        foundation.shutdown.clone(),
    );
    let chat = chat::ChatService::new(
        router,
        coalescer,
        llm.sessions.policy(),
        hub.clone(),
        sessions.clone(),
        &settings.chat,
        foundation.shutdown.clone(),
    );
    let drain = chat.clone();
    let shutdown = foundation.shutdown.clone();
    foundation.spawn("chat-turns-drain", async move {
        shutdown.cancelled().await;
        drain.tasks().close();
        drain.tasks().wait().await;
    });
    Ok(Some(chat))
}

fn cors(settings: &config::CorsSettings) -> Option<CorsLayer> {
    if settings.allowed_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = settings
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    let header = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                header("x-session-token"),
                header("idempotency-key"),
                header("x-request-id"),
                // W3C trace context, so a browser's OpenTelemetry spans join the edge's trace.
                header("traceparent"),
                header("tracestate"),
            ])
            .expose_headers([
                header("ratelimit-limit"),
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
                header("ratelimit-policy"),
                header("x-ratelimit-tier"),
                http::header::RETRY_AFTER,
                header("x-request-id"),
                header("x-session-token"),
            ])
            .allow_credentials(settings.allow_credentials)
            .max_age(Duration::from_secs(settings.max_age_secs)),
    )
}
