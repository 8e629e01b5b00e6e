//! Forwarding to the services: `/api/v1/<service>/...`, the seed's paths and the A2A
//! endpoints (`domain::routing`), with a deadline per service, retries for idempotent calls
//! only, a circuit breaker per service, a body size limit, and the caller's token, request id
//! and trace context passed on so the service verifies the caller again and one request is
//! one trace.
//!
//! A request path with a `.`/`..` segment (raw or percent-encoded), an encoded slash or a
//! backslash is refused with 400 (`invalid_argument`, `details.reason` from
//! [`PathRefusal::reason`]) by [`refuse_ambiguous_paths`], which the service wraps around all
//! its routes so it runs before authentication and the rate limit; [`forward`] checks again so
//! the upstream URL is never built from such a path whatever the composition.
//!
//! Public paths outside the forwarded prefixes ([`public_router`]) answer `GET` and `HEAD` only
//! (405 otherwise), as the auth layer lets only reads of them through without a token.
//!
//! Request bodies are read whole (up to `routing.max_body_bytes`, else 413; a body that cannot
//! be read to its end, a client gone or a broken chunked encoding, is 400) so a retried call
//! sends the same bytes; responses stream back as they come (SSE included). The deadline
//! covers the wait for the response head; a streaming body may run longer. A call that failed
//! to connect never reached the service, so it is retried whatever its method; a call that got
//! 502/503/504 is retried only when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, or
//! POST/PATCH with `Idempotency-Key`). The gateway's own answers about a service (unavailable,
//! circuit open, timed out) name the service, never its address: that goes to the log.
//!
//! Forwarded calls name the public address the client used, so a service can build public URLs
//! (a2a's agent cards): `X-Forwarded-Host` (the request's `Host`) and `X-Forwarded-Proto`
//! (`http`, the gateway's own scheme) are set by the gateway, replacing whatever the client
//! sent, unless the TCP peer is a trusted proxy (`rate_limit.trusted_proxies`) that set them;
//! `X-Forwarded-For` gets the peer appended. An untrusted client's `Forwarded` header is
//! dropped for the same reason.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are not passed on in either direction: the fixed set
//! (`Connection`, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//! `Proxy-Authorization`, `Proxy-Authenticate`, `Proxy-Connection`) and every header the
//! message's own `Connection` header names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use liquid_kit::telemetry::target;
use liquid_kit::{ApiError, ErrorCode};
use liquid_runtime::Peer;
use tracing::Instrument;

use crate::config::RoutingSettings;
use crate::domain::breaker::{Admission, Breaker, BreakerConfig};
use crate::domain::routing::{
    Alias, PathRefusal, backoff_ms, check_path, counts_as_failure, is_idempotent, resolve,
    retryable_status,
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
        // Every upstream's rejections and retries from zero and its circuit closed, so a
        // dashboard shows flat lines rather than no data until the first failure.
        for service in peers.keys().filter(|k| k.as_str() != "gateway") {
            metrics::counter!("liquid_gateway_upstream_rejected_total", "upstream" => service.clone())
                .increment(0);
            metrics::counter!("liquid_gateway_upstream_retries_total", "upstream" => service.clone())
                .increment(0);
            metrics::gauge!("liquid_gateway_upstream_circuit_state", "upstream" => service.clone())
                .set(0.0);
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
/// middleware lets them pass (see [`crate::auth::authenticate`]). Only `GET` and `HEAD` are
/// forwarded (what the auth layer exempts); other methods get 405 and never reach the service.
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
        router = router.route(path, get(forward));
    }
    router.with_state(upstreams)
}

/// Headers never copied from one hop to the next: the hop-by-hop ones (RFC 9110 §7.6.1), and
/// `Host` and `Content-Length`, which the client sets for the next hop itself.
const NOT_FORWARDED: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::HOST,
    header::CONTENT_LENGTH,
];

/// Whether `name` is listed in one of the message's `Connection` headers (comma-separated
/// field names, any case).
fn named_by_connection(from: &HeaderMap, name: &HeaderName) -> bool {
    from.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Copies the end-to-end headers of `from` into `to`.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let has_connection = from.contains_key(header::CONNECTION);
    for (name, value) in from {
        if !NOT_FORWARDED.contains(name)
            && name.as_str() != "keep-alive"
            && name.as_str() != "proxy-connection"
            && !(has_connection && named_by_connection(from, name))
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

fn path_refused(refusal: PathRefusal) -> Response {
    ApiError::new(ErrorCode::InvalidArgument, refusal.message())
        .with_details(serde_json::json!({"reason": refusal.reason()}))
        .into_response()
}

/// Middleware: refuses a request whose path [`check_path`] refuses, with 400 before anything
/// inside it (authentication, the rate limit's classification, routing) reads the path.
pub async fn refuse_ambiguous_paths(request: Request, next: Next) -> Response {
    match check_path(request.uri().path()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::info!(target: target::SECURITY, path = request.uri().path(), reason = refusal.reason(), "request path refused");
            path_refused(refusal)
        }
    }
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
    if let Err(refusal) = check_path(&path) {
        return path_refused(refusal);
    }
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
    let body = match read_body(body, limit).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return too_large(limit),
        Err(BodyRead::Failed(e)) => {
            tracing::info!(target: target::HTTP, %service, error = %e, "request body unreadable");
            return ApiError::new(
                ErrorCode::InvalidArgument,
                "the request body could not be read to its end (the connection closed or the chunked encoding is broken); send the request again",
            )
            .with_details(serde_json::json!({"reason": "body_unreadable"}))
            .into_response();
        }
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
        let wait = Duration::from_millis(backoff_ms(inner.settings.retry_backoff_ms, attempt));
        if tokio::time::Instant::now() + wait >= deadline {
            break result;
        }
        tracing::debug!(target: target::HTTP, %service, attempt, "retrying upstream call");
        tokio::time::sleep(wait).await;
        // Counted here, as the retry is sent next: not for retries the deadline left no room for.
        metrics::counter!("liquid_gateway_upstream_retries_total", "upstream" => service.clone())
            .increment(1);
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
            // The address stays in the log: clients never see where a service runs.
            tracing::warn!(target: target::HTTP, %service, url = %peer.http, attempts = attempt, error = %e, "upstream unreachable");
            error(
                ErrorCode::Unavailable,
                crate::error::service_unavailable(&service),
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

/// Why a request body was not read whole.
enum BodyRead {
    /// It is longer than the limit.
    TooLarge,
    /// Reading it failed (the client went away, a malformed chunked body).
    Failed(axum::Error),
}

/// The whole body, up to `limit` bytes. A body of one frame is returned without copying.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyRead> {
    let mut frames = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = frames.next().await {
        let chunk = chunk.map_err(BodyRead::Failed)?;
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(BodyRead::TooLarge);
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
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
    fn headers_named_by_connection_and_proxy_credentials_are_not_forwarded() {
        let mut from = HeaderMap::new();
        from.append(header::CONNECTION, "close, X-Hop".parse().unwrap());
        from.append(header::CONNECTION, " x-other-hop ".parse().unwrap());
        from.insert("x-hop", "1".parse().unwrap());
        from.insert("x-other-hop", "2".parse().unwrap());
        from.insert(
            header::PROXY_AUTHORIZATION,
            "Basic Zm9vOmJhcg==".parse().unwrap(),
        );
        from.insert(
            header::PROXY_AUTHENTICATE,
            "Basic realm=edge".parse().unwrap(),
        );
        from.insert("keep-alive", "timeout=5".parse().unwrap());
        from.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        from.insert("x-end-to-end", "3".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        let kept: Vec<&str> = to.keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["authorization", "x-end-to-end"]);
    }

    fn unreachable_upstreams() -> Upstreams {
        let peers = BTreeMap::from([(
            "cowork".to_owned(),
            Peer {
                // Nothing listens on port 1: a call that got this far would answer 503.
                http: "http://127.0.0.1:1".into(),
                grpc: String::new(),
            },
        )]);
        let settings = RoutingSettings {
            retries: 0,
            ..RoutingSettings::default()
        };
        Upstreams::new(Arc::new(peers), &settings, Vec::new())
    }

    async fn answer(response: Response) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_a_bad_request_not_too_large() {
        use tower::ServiceExt;
        let frames = futures_util::stream::iter([
            Ok(Bytes::from_static(b"{\"partial\":")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ]);
        let request = Request::post("/api/v1/cowork/sessions")
            .body(Body::from_stream(frames))
            .unwrap();
        let response = router(unreachable_upstreams())
            .oneshot(request)
            .await
            .unwrap();
        let (status, body) = answer(response).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_argument");
        assert_eq!(body["error"]["details"]["reason"], "body_unreadable");

        let request = Request::post("/api/v1/cowork/sessions")
            .body(Body::from(vec![b'x'; 2 * 1024 * 1024 + 1]))
            .unwrap();
        let response = router(unreachable_upstreams())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(answer(response).await.0, 413);
    }

    #[tokio::test]
    async fn the_proxy_never_builds_an_upstream_url_from_a_dot_segment_path() {
        use tower::ServiceExt;
        for path in [
            "/api/v1/cowork/%2e%2e/%2e%2e/metrics",
            "/api/v1/cowork/x/.%2E/sessions",
            "/api/v1/cowork/a%2Fb",
        ] {
            let request = Request::get(path).body(Body::empty()).unwrap();
            let response = router(unreachable_upstreams())
                .oneshot(request)
                .await
                .unwrap();
            let (status, body) = answer(response).await;
            assert_eq!(status, 400, "{path}");
            assert_eq!(body["error"]["code"], "invalid_argument", "{path}");
        }
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
