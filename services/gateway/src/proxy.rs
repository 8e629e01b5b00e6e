//! Forwarding to the services: `/api/v1/<service>/...`, the seed's paths and the A2A
//! endpoints (`domain::routing`), with a deadline per service, retries for idempotent calls
//! only, a circuit breaker per service, a body size limit, and the caller's token, request id
//! and trace context passed on so the service verifies the caller again and one request is
//! one trace.
//!
//! Request bodies are read whole (up to `routing.max_body_bytes`, else 413) so a retried call
//! sends the same bytes; responses stream back as they come (SSE included). The deadline
//! covers the wait for the response head; a streaming body may run longer. A call that failed
//! to connect never reached the service, so it is retried whatever its method; a call that got
//! 502/503/504 is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, or
//! POST/PATCH with `Idempotency-Key`).
//!
//! Forwarded calls name the public address the client used, so a service can build public URLs
//! (a2a's agent cards): `X-Forwarded-Host` (the request's `Host`) and `X-Forwarded-Proto`
//! (`http`, the gateway's own scheme) are set by the gateway, replacing whatever the client
//! sent, unless the TCP peer is a trusted proxy (`rate_limit.trusted_proxies`) that set them;
//! `X-Forwarded-For` gets the peer appended. An untrusted client's `Forwarded` header is
//! dropped for the same reason.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use liquid_kit::telemetry::target;
use liquid_kit::{ApiError, ErrorCode};
use liquid_runtime::Peer;
use tracing::Instrument;

use crate::config::RoutingSettings;
use crate::domain::breaker::{Admission, Breaker, BreakerConfig};
use crate::domain::routing::{
    Alias, backoff_ms, counts_as_failure, is_idempotent, resolve, retryable_status,
};
use crate::domain::tier::Cidr;
use crate::ratelimit::peer_of;

/// Forwarding state; cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<UpstreamsInner>,
}

struct UpstreamsInner {
    peers: Arc<BTreeMap<String, Peer>>,
    aliases: Vec<Alias>,
    client: reqwest::Client,
    settings: RoutingSettings,
    breakers: Mutex<HashMap<String, Breaker>>,
    trusted: Vec<Cidr>,
}

impl Upstreams {
    /// Forwarding to `peers` with `[routing]`; `trusted` are the proxies whose forwarded
    /// headers are kept.
    pub fn new(
        peers: Arc<BTreeMap<String, Peer>>,
        settings: &RoutingSettings,
        trusted: Vec<Cidr>,
    ) -> Upstreams {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        // Every upstream's rejection counter from zero, so a dashboard shows a flat line rather
        // than no data until the first circuit opens.
        for service in peers.keys().filter(|k| k.as_str() != "gateway") {
            metrics::counter!("liquid_gateway_upstream_rejected_total", "upstream" => service.clone())
                .increment(0);
        }
        Upstreams {
            inner: Arc::new(UpstreamsInner {
                peers,
                aliases: settings.aliases(),
                client,
                settings: settings.clone(),
                breakers: Mutex::new(HashMap::new()),
                trusted,
            }),
        }
    }

    fn breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.inner.settings.breaker_failures,
            open_for: Duration::from_secs(self.inner.settings.breaker_open_secs),
        }
    }

    fn with_breaker<T>(&self, service: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let config = self.breaker_config();
        let mut breakers = match self.inner.breakers.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let breaker = breakers
            .entry(service.to_owned())
            .or_insert_with(|| Breaker::new(config));
        let out = f(breaker);
        let (_, value) = breaker.state().label();
        metrics::gauge!("liquid_gateway_upstream_circuit_state", "upstream" => service.to_owned())
            .set(value);
        out
    }

    fn timeout_for(&self, service: &str) -> Duration {
        let s = &self.inner.settings;
        Duration::from_secs(
            s.service_timeout_secs
                .get(service)
                .copied()
                .unwrap_or(s.timeout_secs),
        )
    }
}

/// The forwarded paths that need a token.
pub fn router(upstreams: Upstreams) -> Router {
    Router::new()
        .route("/api/v1/{*rest}", any(forward))
        .route("/api/media/{*rest}", any(forward))
        .route("/a2a", any(forward))
        .route("/a2a/{*rest}", any(forward))
        .route("/agents/{*rest}", any(forward))
        .with_state(upstreams)
}

/// The forwarded paths served without a token (`routing.public_paths`) outside the prefixes
/// [`router`] serves; public paths under those go through [`router`]'s routes, whose auth
/// middleware lets them pass (see [`crate::auth::authenticate`]).
pub fn public_router(upstreams: Upstreams) -> Router {
    let own: std::collections::BTreeSet<&String> = upstreams
        .inner
        .settings
        .public_paths
        .iter()
        .filter(|p| !crate::config::is_forwarded(p))
        .collect();
    let mut router = Router::new();
    for path in own {
        router = router.route(path, any(forward));
    }
    router.with_state(upstreams)
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(name)
            && name.as_str() != "keep-alive"
            && name.as_str() != "proxy-connection"
        {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Appends the TCP peer to `X-Forwarded-For` (what proxies do; the service may log it).
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// Sets `X-Forwarded-Host` and `X-Forwarded-Proto` from the request unless a trusted proxy
/// already did; drops an untrusted `Forwarded`.
fn set_forwarded_origin(
    outbound: &mut HeaderMap,
    inbound: &HeaderMap,
    authority: Option<&str>,
    from_trusted_proxy: bool,
) {
    let kept = |name: &str| from_trusted_proxy && inbound.contains_key(name);
    if !kept("x-forwarded-host") {
        outbound.remove("x-forwarded-host");
        let host = inbound
            .get(header::HOST)
            .cloned()
            .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
        if let Some(host) = host {
            outbound.insert("x-forwarded-host", host);
        }
    }
    if !kept("x-forwarded-proto") {
        outbound.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !from_trusted_proxy {
        outbound.remove(header::FORWARDED);
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    ApiError::new(code, message).into_response()
}

/// Resets a half-open breaker whose probe was dropped before it answered.
struct ProbeGuard<'a> {
    upstreams: &'a Upstreams,
    service: &'a str,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.upstreams
                .with_breaker(self.service, |b| b.on_abandoned_probe(Instant::now()));
        }
    }
}

async fn forward(State(upstreams): State<Upstreams>, request: Request) -> Response {
    let inner = &upstreams.inner;
    let path = request.uri().path().to_owned();
    let Some(service) = resolve(&path, &inner.aliases) else {
        return error(
            ErrorCode::NotFound,
            format!("no service serves `{path}` behind the gateway"),
        );
    };
    let Some(peer) = inner.peers.get(&service).filter(|p| !p.http.is_empty()) else {
        let known: Vec<&str> = inner
            .peers
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "gateway")
            .collect();
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no service named `{service}` behind the gateway"),
        )
        .with_details(serde_json::json!({ "known_services": known }))
        .into_response();
    };
    let limit = inner.settings.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let peer_ip = peer_of(&request);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(limit),
    };
    let admission = upstreams.with_breaker(&service, |b| b.admit(Instant::now()));
    if let Admission::Refuse(wait) = admission {
        metrics::counter!("liquid_gateway_upstream_rejected_total", "upstream" => service.clone())
            .increment(1);
        let secs = wait.as_secs().max(1);
        return ApiError::new(
            ErrorCode::Unavailable,
            format!("the {service} service is failing; the gateway stopped calling it for a moment, retry after {secs}s"),
        )
        .with_details(serde_json::json!({"retry_after_seconds": secs, "circuit": "open"}))
        .into_response();
    }
    let mut guard = ProbeGuard {
        upstreams: &upstreams,
        service: &service,
        armed: admission == Admission::Probe,
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{}", peer.http.trim_end_matches('/'), path_and_query);
    let idempotent = is_idempotent(&parts.method, parts.headers.contains_key("idempotency-key"));
    let deadline = tokio::time::Instant::now() + upstreams.timeout_for(&service);
    let span = tracing::info_span!(target: "http", "upstream", otel.name = %format!("{} {service}", parts.method), otel.kind = "client", peer.service = %service, http.request.method = %parts.method, http.response.status_code = tracing::field::Empty);
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    append_forwarded_for(&mut headers, peer_ip);
    let trusted_peer = inner.trusted.iter().any(|c| c.contains(peer_ip));
    set_forwarded_origin(
        &mut headers,
        &parts.headers,
        parts.uri.authority().map(|a| a.as_str()),
        trusted_peer,
    );
    span.in_scope(|| liquid_kit::telemetry::inject_http(&mut headers));
    let started = Instant::now();
    let mut attempt = 0u32;
    let outcome = loop {
        attempt += 1;
        let send = inner
            .client
            .request(parts.method.clone(), &url)
            .headers(headers.clone())
            .body(body.clone())
            .send();
        let result = tokio::time::timeout_at(deadline, send)
            .instrument(span.clone())
            .await;
        let attempts_left = attempt <= inner.settings.retries;
        let retry = match &result {
            Ok(Ok(response)) => idempotent && attempts_left && retryable_status(response.status()),
            Ok(Err(e)) => attempts_left && (e.is_connect() || (idempotent && e.is_request())),
            Err(_) => false,
        };
        if !retry {
            break result;
        }
        metrics::counter!("liquid_gateway_upstream_retries_total", "upstream" => service.clone())
            .increment(1);
        let wait = Duration::from_millis(backoff_ms(inner.settings.retry_backoff_ms, attempt));
        if tokio::time::Instant::now() + wait >= deadline {
            break result;
        }
        tracing::debug!(target: target::HTTP, %service, attempt, "retrying upstream call");
        tokio::time::sleep(wait).await;
    };
    guard.armed = false;
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Ok(response)) => {
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            upstreams.with_breaker(&service, |b| {
                if counts_as_failure(status) {
                    b.on_failure(Instant::now());
                } else {
                    b.on_success();
                }
            });
            metrics::histogram!("liquid_gateway_upstream_request_duration_seconds", "upstream" => service.clone(), "status" => status.as_u16().to_string())
                .record(elapsed);
            let mut out = HeaderMap::new();
            copy_headers(response.headers(), &mut out);
            // The body streams through unchanged, so its declared length still holds.
            if let Some(length) = response.headers().get(header::CONTENT_LENGTH) {
                out.insert(header::CONTENT_LENGTH, length.clone());
            }
            let stream = response.bytes_stream().map_err(std::io::Error::other);
            let mut reply = Response::new(Body::from_stream(stream));
            *reply.status_mut() = status;
            *reply.headers_mut() = out;
            reply
        }
        Ok(Err(e)) => {
            upstreams.with_breaker(&service, |b| b.on_failure(Instant::now()));
            metrics::histogram!("liquid_gateway_upstream_request_duration_seconds", "upstream" => service.clone(), "status" => "unreachable")
                .record(elapsed);
            tracing::warn!(target: target::HTTP, %service, attempts = attempt, error = %e, "upstream unreachable");
            error(
                ErrorCode::Unavailable,
                format!(
                    "the {service} service is unreachable at {}; check that it runs and that peers.{service}.http points to it",
                    peer.http
                ),
            )
        }
        Err(_) => {
            upstreams.with_breaker(&service, |b| b.on_failure(Instant::now()));
            metrics::histogram!("liquid_gateway_upstream_request_duration_seconds", "upstream" => service.clone(), "status" => "timeout")
                .record(elapsed);
            tracing::warn!(target: target::HTTP, %service, attempts = attempt, "upstream timed out");
            error(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the {service} service did not answer within {}s",
                    upstreams.timeout_for(&service).as_secs()
                ),
            )
        }
    }
}

fn too_large(limit: usize) -> Response {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
    .with_details(serde_json::json!({"limit_bytes": limit}))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut from = HeaderMap::new();
        from.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        from.insert(header::HOST, "edge".parse().unwrap());
        from.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        from.insert("x-request-id", "r1".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert!(to.get(header::CONNECTION).is_none());
        assert!(to.get(header::HOST).is_none());
        assert_eq!(to[header::AUTHORIZATION], "Bearer x");
        assert_eq!(to["x-request-id"], "r1");
    }

    #[test]
    fn forwarded_host_and_proto_name_the_public_address_unless_a_trusted_proxy_set_them() {
        let mut inbound = HeaderMap::new();
        inbound.insert(header::HOST, "edge.example:8080".parse().unwrap());
        inbound.insert("x-forwarded-host", "spoofed.example".parse().unwrap());
        inbound.insert("x-forwarded-proto", "https".parse().unwrap());
        inbound.insert(header::FORWARDED, "host=spoofed.example".parse().unwrap());
        let mut out = HeaderMap::new();
        copy_headers(&inbound, &mut out);
        set_forwarded_origin(&mut out, &inbound, None, false);
        assert_eq!(out["x-forwarded-host"], "edge.example:8080");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert!(out.get(header::FORWARDED).is_none());

        let mut out = HeaderMap::new();
        copy_headers(&inbound, &mut out);
        set_forwarded_origin(&mut out, &inbound, None, true);
        assert_eq!(out["x-forwarded-host"], "spoofed.example");
        assert_eq!(out["x-forwarded-proto"], "https");

        let mut out = HeaderMap::new();
        set_forwarded_origin(&mut out, &HeaderMap::new(), Some("h2.example"), false);
        assert_eq!(out["x-forwarded-host"], "h2.example");
    }

    #[test]
    fn the_peer_is_appended_to_forwarded_for() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        append_forwarded_for(&mut h, "10.0.0.2".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }
}
