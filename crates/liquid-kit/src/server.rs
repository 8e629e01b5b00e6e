//! The service bootstrap: binds HTTP and gRPC (port 0 allowed), mounts `/healthz`, `/readyz`,
//! `/metrics` and the gRPC health service, wraps every request in a trace span continued from
//! the caller's W3C context, records RED metrics, and shuts down gracefully on cancellation.
//!
//! Services hand it their router and gRPC routes; it must not know what they serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
        let metric_prefix = format!("liquid_{}", self.name.replace('-', "_"));
        let red = Arc::new(RedNames::new(&metric_prefix));
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
            axum::serve(
                http_listener,
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

/// Pre-built RED metric names for one service, so the hot path does not format strings.
struct RedNames {
    requests: String,
    duration: String,
    errors: String,
}

impl RedNames {
    fn new(prefix: &str) -> Self {
        RedNames {
            requests: format!("{prefix}_requests_total"),
            duration: format!("{prefix}_request_duration_seconds"),
            errors: format!("{prefix}_errors_total"),
        }
    }
}

async fn record_red(State(names): State<Arc<RedNames>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(names.duration.clone(), "method" => method.clone(), "route" => route.clone())
        .record(elapsed);
    if response.status().is_server_error() {
        metrics::counter!(names.errors.clone(), "method" => method.clone(), "route" => route.clone(), "status" => status.clone())
            .increment(1);
    }
    metrics::counter!(names.requests.clone(), "method" => method, "route" => route, "status" => status)
        .increment(1);
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
        let name = format!("{} {}", request.method(), route);
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let span = tracing::info_span!(
            target: "http",
            "request",
            otel.name = %name,
            otel.kind = "server",
            liquid.service = self.service,
            rpc.system = self.protocol,
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            request_id = %request_id,
            http.response.status_code = tracing::field::Empty,
        );
        set_parent_from(&span, &HeaderExtractor(request.headers()));
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
