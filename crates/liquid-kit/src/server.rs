//! The service bootstrap: binds HTTP and gRPC (port 0 allowed), mounts `/healthz`, `/readyz`,
//! `/metrics` and the gRPC health service, wraps every request in a trace span continued from
//! the caller's W3C context, records RED metrics, and shuts down gracefully on cancellation.
//!
//! Services hand it their router and gRPC routes; it must not know what they serve.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

use crate::config::{ServerConfig, env_prefix};
use crate::error::{ErrorCode, HasErrorCode};
use crate::health::{Readiness, ReadinessCheck};
use crate::telemetry::{HeaderExtractor, set_parent_from, target};

/// Header carrying the request id, set when absent and echoed on the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Failure to start or run a service's servers.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error(
        "cannot listen on {addr} ({source}); free the port or set {key} to another address (port 0 picks a free one)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The env key that configures it.
        key: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server stopped with an I/O error.
    #[error("{server} server failed: {reason}")]
    Server {
        /// `http` or `grpc`.
        server: &'static str,
        /// What happened.
        reason: String,
    },
}

impl HasErrorCode for ServeError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ServeError::Bind { .. } => ErrorCode::InvalidConfig,
            ServeError::Server { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Everything needed to start one service's servers.
pub struct ServiceHost {
    name: &'static str,
    server: ServerConfig,
    readiness: Readiness,
    router: Router,
    grpc: Option<tonic::service::Routes>,
    background: TaskTracker,
}

/// A started service: its bound addresses and the handles to stop and await it.
#[derive(Debug)]
pub struct RunningService {
    name: &'static str,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    grace: Duration,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
    background: TaskTracker,
}

impl ServiceHost {
    /// A host for service `name` (`cowork`, `container-pool`, ...) on `server`'s addresses.
    pub fn new(name: &'static str, server: &ServerConfig) -> Self {
        ServiceHost {
            name,
            server: server.clone(),
            readiness: Readiness::default(),
            router: Router::new(),
            grpc: None,
            background: TaskTracker::new(),
        }
    }

    /// Adds a dependency that must answer for `/readyz` to pass.
    pub fn readiness(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.readiness.add(check);
        self
    }

    /// The service's HTTP routes (already carrying their auth layers).
    pub fn http(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// The service's gRPC services; the health service is added to them.
    pub fn grpc(mut self, routes: tonic::service::Routes) -> Self {
        self.grpc = Some(routes);
        self
    }

    /// Background work (consumers, schedulers, reapers) that must finish before the service
    /// counts as stopped: after the servers stop, [`RunningService::wait`] closes the tracker
    /// and waits for its tasks (they watch the shutdown token) up to the grace period.
    pub fn background(mut self, tasks: TaskTracker) -> Self {
        self.background = tasks;
        self
    }

    /// Binds and starts serving; returns once both listeners are bound.
    pub async fn start(self, shutdown: CancellationToken) -> Result<RunningService, ServeError> {
        let prefix = env_prefix(self.name);
        let http_listener =
            bind(self.server.http_addr, format!("{prefix}SERVER__HTTP_ADDR")).await?;
        let http_addr = local_addr(&http_listener, self.server.http_addr);
        // The process-wide recorder before any handle below is taken (handles taken earlier
        // would stay with the no-op recorder).
        crate::metrics::handle();
        let metric_prefix = format!("liquid_{}", self.name.replace('-', "_"));
        let red = Arc::new(Red::new(&metric_prefix));
        // Exported from the start, so dashboards and alerts see a zero rather than no series.
        metrics::counter!(red.errors.clone()).absolute(0);
        let state = OpsState {
            service: self.name,
            readiness: self.readiness.clone(),
        };
        let ops = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(state);
        let app = self
            .router
            .merge(ops)
            .layer(axum::middleware::from_fn_with_state(red, record_red))
            .layer(axum::extract::DefaultBodyLimit::max(
                self.server.body_limit_bytes,
            ))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(ServerSpan {
                        service: self.name,
                        protocol: "http",
                    })
                    .on_response(LogResponse),
            )
            .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                REQUEST_ID_HEADER,
            )))
            .layer(SetRequestIdLayer::new(
                HeaderName::from_static(REQUEST_ID_HEADER),
                MakeRequestUuid,
            ))
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
            ]));

        let mut tasks = Vec::new();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            // No Nagle: a response that goes out in several writes (every SSE event after the
            // first) would otherwise wait for the peer's delayed ACK, up to 40 ms each.
            let listener = http_listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(target: target::HTTP, %error, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(token.cancelled_owned())
            .await
            .map_err(|e| ServeError::Server {
                server: "http",
                reason: e.to_string(),
            })
        }));

        let mut grpc_addr = None;
        if let (Some(addr), Some(routes)) = (self.server.grpc_addr, self.grpc) {
            let listener = bind(addr, format!("{prefix}SERVER__GRPC_ADDR")).await?;
            grpc_addr = Some(local_addr(&listener, addr));
            let (reporter, health) = tonic_health::server::health_reporter();
            tasks.push(tokio::spawn(mirror_readiness_into_grpc_health(
                reporter,
                self.readiness.clone(),
                self.name,
                shutdown.clone(),
            )));
            let routes = routes.add_service(health);
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .layer(TraceLayer::new_for_grpc().make_span_with(ServerSpan {
                        service: "grpc",
                        protocol: "grpc",
                    }))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        tokio_stream_from(listener),
                        token.cancelled_owned(),
                    )
                    .await
                    .map_err(|e| ServeError::Server {
                        server: "grpc",
                        reason: e.to_string(),
                    })
            }));
        }
        tracing::info!(target: target::HTTP, service = self.name, %http_addr, grpc_addr = ?grpc_addr, "service listening");
        Ok(RunningService {
            name: self.name,
            http_addr,
            grpc_addr,
            shutdown,
            grace: Duration::from_secs(self.server.shutdown_grace_secs),
            tasks,
            background: self.background,
        })
    }
}

fn tokio_stream_from(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

async fn bind(addr: SocketAddr, key: String) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, key, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

impl RunningService {
    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where HTTP is served (the real port when configured with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where gRPC is served, if the service has a gRPC API.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The token whose cancellation stops this service.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the servers stop (after the token is cancelled, in-flight requests get the
    /// grace period, then the remaining connections are dropped).
    pub async fn wait(self) -> Result<(), ServeError> {
        let grace = self.grace;
        let shutdown = self.shutdown.clone();
        let mut result = Ok(());
        for mut task in self.tasks {
            let joined = tokio::select! {
                r = &mut task => r,
                _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(service = self.name, "grace period over; dropping open connections");
                    task.abort();
                    continue;
                }
            };
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    result = Err(ServeError::Server {
                        server: "http",
                        reason: e.to_string(),
                    })
                }
            }
        }
        self.background.close();
        if tokio::time::timeout(grace, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.name,
                left = self.background.len(),
                "background tasks still running after the grace period"
            );
        }
        tracing::info!(service = self.name, "service stopped");
        result
    }

    /// Cancels the token and waits for the servers to stop.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

async fn mirror_readiness_into_grpc_health(
    reporter: tonic_health::server::HealthReporter,
    readiness: Readiness,
    service: &'static str,
    token: CancellationToken,
) -> Result<(), ServeError> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return Ok(());
            }
            _ = tick.tick() => {
                let report = readiness.report(service).await;
                let status = if report.ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter.set_service_status(format!("liquid.{service}"), status).await;
            }
        }
    }
}

#[derive(Clone)]
struct OpsState {
    service: &'static str,
    readiness: Readiness,
}

async fn healthz(State(state): State<OpsState>) -> Response {
    axum::Json(serde_json::json!({"status": "ok", "service": state.service})).into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.report(state.service).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Most (route, method, status) combinations whose metric handles are kept; beyond it (odd
/// methods from clients) each request looks its metrics up by name.
const MAX_RED_HANDLES: usize = 1024;

/// The RED metrics of one service. The handles of each (route, method, status) seen are kept,
/// so a request records with atomic adds instead of formatting labels and looking the
/// metrics up in the registry.
struct Red {
    requests: String,
    duration: String,
    errors: String,
    /// By route: the handles of each method and status seen on it.
    handles: RwLock<HashMap<String, Vec<RedHandles>>>,
    kept: AtomicUsize,
}

struct RedHandles {
    method: Method,
    status: StatusCode,
    requests: metrics::Counter,
    duration: metrics::Histogram,
    errors: Option<metrics::Counter>,
}

impl Red {
    fn new(prefix: &str) -> Self {
        Red {
            requests: format!("{prefix}_requests_total"),
            duration: format!("{prefix}_request_duration_seconds"),
            errors: format!("{prefix}_errors_total"),
            handles: RwLock::new(HashMap::new()),
            kept: AtomicUsize::new(0),
        }
    }

    /// Looks the metrics of one (route, method, status) up in the registry.
    fn register(&self, route: &str, method: &Method, status: StatusCode) -> RedHandles {
        let method_label = method.as_str().to_owned();
        let route_label = route.to_owned();
        let status_label = status.as_u16().to_string();
        RedHandles {
            method: method.clone(),
            status,
            requests: metrics::counter!(self.requests.clone(), "method" => method_label.clone(), "route" => route_label.clone(), "status" => status_label.clone()),
            duration: metrics::histogram!(self.duration.clone(), "method" => method_label.clone(), "route" => route_label.clone()),
            errors: status.is_server_error().then(|| {
                metrics::counter!(self.errors.clone(), "method" => method_label, "route" => route_label, "status" => status_label)
            }),
        }
    }

    fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: f64) {
        let apply = |h: &RedHandles| {
            h.duration.record(elapsed);
            h.requests.increment(1);
            if let Some(errors) = &h.errors {
                errors.increment(1);
            }
        };
        let found = |map: &HashMap<String, Vec<RedHandles>>| {
            map.get(route)
                .and_then(|all| {
                    all.iter()
                        .find(|h| h.status == status && h.method == method)
                })
                .map(apply)
                .is_some()
        };
        if self.handles.read().is_ok_and(|map| found(&map)) {
            return;
        }
        let made = self.register(route, method, status);
        apply(&made);
        if self.kept.load(Ordering::Relaxed) < MAX_RED_HANDLES
            && let Ok(mut map) = self.handles.write()
        {
            let all = map.entry(route.to_owned()).or_default();
            if !all.iter().any(|h| h.status == status && h.method == method) {
                all.push(made);
                self.kept.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn record_red(State(red): State<Arc<Red>>, request: Request, next: Next) -> Response {
    // `MatchedPath` is a shared string: cloning it does not allocate.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    red.record(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status(),
        elapsed,
    );
    response
}

/// Makes the server span of a request, continuing the caller's trace.
#[derive(Clone, Copy)]
struct ServerSpan {
    service: &'static str,
    protocol: &'static str,
}

impl<B> MakeSpan<B> for ServerSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| request.uri().path(), MatchedPath::as_str);
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let span = tracing::info_span!(
            target: "http",
            "request",
            otel.name = %format_args!("{} {}", request.method(), route),
            otel.kind = "server",
            liquid.service = self.service,
            rpc.system = self.protocol,
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            request_id = %request_id,
            http.response.status_code = tracing::field::Empty,
        );
        // Off (no subscriber wants it): nothing to parent, and no header to parse.
        if !span.is_disabled() {
            set_parent_from(&span, &HeaderExtractor(request.headers()));
        }
        span
    }
}

#[derive(Clone, Copy)]
struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        let latency_ms = latency.as_secs_f64() * 1000.0;
        if response.status().is_server_error() {
            tracing::warn!(target: "http", status, latency_ms, "request failed");
        } else {
            tracing::debug!(target: "http", status, latency_ms, "request finished");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One `GET` over a fresh connection; the status line of the answer.
    async fn fetch(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer.lines().next().unwrap_or_default().to_owned()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
    }

    #[tokio::test]
    async fn every_request_is_counted_by_route_method_and_status() {
        let app = Router::new()
            .route("/items/{id}", get(|| async { "ok" }))
            .route(
                "/broken",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            );
        let running = ServiceHost::new("red-check", &ServerConfig::on_ports(0, None))
            .http(app)
            .start(CancellationToken::new())
            .await
            .unwrap();
        let addr = running.http_addr();
        for path in ["/items/1", "/items/2", "/items/3", "/broken", "/broken"] {
            fetch(addr, path).await;
        }
        assert_eq!(fetch(addr, "/nowhere").await, "HTTP/1.1 404 Not Found");

        let text = crate::metrics::render();
        let requests = "liquid_red_check_requests_total";
        for (series, expected) in [
            (
                format!(r#"{requests}{{method="GET",route="/items/{{id}}",status="200"}}"#),
                3.0,
            ),
            (
                format!(r#"{requests}{{method="GET",route="/broken",status="500"}}"#),
                2.0,
            ),
            (
                format!(r#"{requests}{{method="GET",route="unmatched",status="404"}}"#),
                1.0,
            ),
            (
                r#"liquid_red_check_errors_total{method="GET",route="/broken",status="500"}"#
                    .to_owned(),
                2.0,
            ),
            (
                r#"liquid_red_check_request_duration_seconds_count{method="GET",route="/items/{id}"}"#
                    .to_owned(),
                3.0,
            ),
        ] {
            assert_eq!(value(&text, &series), Some(expected), "{series} in\n{text}");
        }
        // Only server errors count as errors.
        assert_eq!(
            value(
                &text,
                r#"liquid_red_check_errors_total{method="GET",route="/items/{id}",status="200"}"#
            ),
            None
        );
        running.stop().await.unwrap();
    }
}
