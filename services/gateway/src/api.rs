//! The gateway's own REST routes: who the caller is (`GET /api/v1/gateway/whoami`), session
//! tokens for anonymous clients (`POST /api/v1/gateway/sessions`, charged to the client
//! address, never to a session token: see [`crate::ratelimit::limit_session_creation`]), and
//! publishing to a WebSocket channel (`POST /api/v1/gateway/channels/{channel}/messages`, scope
//! `gateway:write`, tenant channels of the caller's tenant; platform-wide channels, which every
//! tenant reads, need `admin:*` as well).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use liquid_auth::{Authenticated, scopes};
use liquid_kit::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::channel::Channel;
use crate::domain::session_token::SessionSigner;
use crate::hub::Hub;
use crate::ratelimit::SESSION_HEADER;

/// What the own routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The hub.
    pub hub: Hub,
    /// Signs session tokens.
    pub sessions: Arc<SessionSigner>,
    /// Session lifetime in seconds.
    pub session_ttl_secs: u64,
}

/// `GET /api/v1/gateway/whoami`: the verified caller as the gateway sees it.
pub async fn whoami(caller: Authenticated) -> Json<Value> {
    Json(json!({
        "subject": caller.sub,
        "tenant": caller.tenant_id(),
        "scopes": caller.scopes(),
        "kind": caller.kind,
        "expires_at": caller.exp,
    }))
}

/// `POST /api/v1/gateway/sessions`: a new anonymous session's token.
pub async fn create_session(State(state): State<ApiState>) -> Response {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_at = now.saturating_add(state.session_ttl_secs);
    let token = state.sessions.sign(&id, expires_at);
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "session_id": id,
            "session_token": token,
            "expires_at": expires_at,
            "header": "X-Session-Token",
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// The body of a channel publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The message (any JSON).
    pub data: Value,
}

/// The `reason` in the details of a refused publish to a platform-wide channel.
pub const PLATFORM_CHANNEL_REASON: &str = "platform_channel";
/// The `reason` in the details of a refused publish to a user's own channel (`chat:`).
pub const OWNED_CHANNEL_REASON: &str = "owned_channel";

/// `POST /api/v1/gateway/channels/{channel}/messages`: broadcasts to every replica.
///
/// A tenant channel (`cowork:`, `media:`) reaches the caller's tenant only; a
/// platform-wide one (`prices:<symbol>`, `healing`) reaches every tenant, so a tenant's
/// `gateway:write` does not cover it: it needs `admin:*` (else 403 `permission_denied`, reason
/// `platform_channel`), so no tenant can put fake prices into another tenant's feed. A `chat:`
/// channel belongs to one user's chat session and carries only that session's turns: 400
/// `invalid_argument`, reason `owned_channel` (send chat through `/api/v1/chat`).
pub async fn publish(
    State(state): State<ApiState>,
    caller: Authenticated,
    Path(channel): Path<String>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = caller.require(scopes::GATEWAY_WRITE) {
        return e.into_response();
    }
    let channel = match Channel::parse(&channel) {
        Ok(c) => c,
        Err(e) => return ApiError::new(ErrorCode::InvalidArgument, e.to_string()).into_response(),
    };
    if channel.kind().per_owner() {
        return ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "`{channel}` belongs to one user's chat session and carries only its turns; send chat with POST /api/v1/chat or a `chat` WebSocket frame"
            ),
        )
        .with_details(json!({
            "reason": OWNED_CHANNEL_REASON,
            "channel": channel.to_string(),
        }))
        .into_response();
    }
    if !channel.kind().per_tenant() && !caller.has_scope(scopes::ADMIN) {
        return ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "`{channel}` is read by every tenant; publishing to it needs the {} scope (tenant channels cowork: and media: need only {})",
                scopes::ADMIN,
                scopes::GATEWAY_WRITE
            ),
        )
        .with_details(json!({
            "reason": PLATFORM_CHANNEL_REASON,
            "scope": scopes::ADMIN,
            "channel": channel.to_string(),
        }))
        .into_response();
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                ErrorCode::InvalidArgument,
                format!("body must be {{\"data\": ...}}: {}", e.body_text()),
            )
            .into_response();
        }
    };
    match state
        .hub
        .publish(&channel, caller.tenant_id(), &body.data)
        .await
    {
        Ok(subject) => (
            StatusCode::ACCEPTED,
            Json(json!({"channel": channel.to_string(), "subject": subject})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
