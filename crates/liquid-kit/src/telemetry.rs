//! Logs, traces and trace-context propagation.
//!
//! [`init`] installs one global `tracing` subscriber: JSON (or pretty) logs on stderr, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or the config key) is set, OpenTelemetry traces, logs and
//! metrics exported over OTLP/HTTP. It is idempotent because the embedded runner starts seven
//! services in one process. W3C trace context crosses every hop through [`inject_context`] and
//! [`extract_context`], which HTTP, gRPC and bus adapters call with their own header maps.
//!
//! This module must not decide what a service logs; it only carries it.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, Validate};

/// Log targets per component, so operators can filter (`RUST_LOG=bus=debug,http=info`).
pub mod target {
    /// HTTP servers and clients.
    pub const HTTP: &str = "http";
    /// gRPC servers and clients.
    pub const GRPC: &str = "grpc";
    /// Databases and migrations.
    pub const DB: &str = "db";
    /// Caches (memory, Redis).
    pub const CACHE: &str = "cache";
    /// The event bus (in-process, NATS).
    pub const BUS: &str = "bus";
    /// Model providers.
    pub const AI: &str = "ai";
    /// WebSocket hub.
    pub const WEBSOCKET: &str = "websocket";
    /// Authentication, authorisation, sandboxes.
    pub const SECURITY: &str = "security";
    /// GraphQL.
    pub const GRAPHQL: &str = "graphql";
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines want).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Telemetry settings (`[telemetry]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format.
    pub log_format: LogFormat,
    /// `EnvFilter` directives; `RUST_LOG` overrides.
    pub log_filter: String,
    /// OTLP/HTTP endpoint (`http://collector:4318`); when empty, `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is used, and when both are empty nothing is exported over OTLP.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = EnvFilter::try_new(&self.log_filter) {
            return Err(ConfigError::invalid("telemetry.log_filter", e.to_string()));
        }
        let endpoint = self.otlp_endpoint.as_str();
        let is_http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !is_http {
            return Err(ConfigError::invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL of an OTLP/HTTP receiver",
            ));
        }
        Ok(())
    }
}

/// Failure to start telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("otlp exporter: {0}")]
    Exporter(String),
    /// The log filter did not parse.
    #[error("log filter: {0}")]
    Filter(String),
}

impl crate::error::HasErrorCode for TelemetryError {
    fn error_code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidConfig
    }
}

/// Owns the OTLP providers; [`TelemetryGuard::shutdown`] flushes them. Dropping it does not
/// flush (shutdown blocks, which a drop must not do on a runtime thread).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    logger: Option<SdkLoggerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl TelemetryGuard {
    /// True when spans, logs and metrics are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Flushes and stops the exporters. Blocking: call it from `spawn_blocking` or after the
    /// runtime's work is done.
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(l) = &self.logger {
            let _ = l.force_flush();
            let _ = l.shutdown();
        }
        if let Some(m) = &self.meter {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// The endpoint actually used: config first, then the standard environment variable.
fn otlp_endpoint(cfg: &TelemetryConfig) -> Option<String> {
    if !cfg.otlp_endpoint.is_empty() {
        return Some(cfg.otlp_endpoint.clone());
    }
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Installs the global subscriber, propagator and (when configured) OTLP exporters for the
/// process. A second call in the same process returns an empty guard and changes nothing.
pub fn init(service_name: &str, cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard::default());
    }
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&cfg.log_filter))
            .map_err(|e| TelemetryError::Filter(e.to_string()))
    };
    let fmt_layer = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let mut guard = TelemetryGuard::default();
    let otel_layers = match otlp_endpoint(cfg) {
        None => None,
        Some(endpoint) => {
            let resource = Resource::builder()
                .with_service_name(service_name.to_owned())
                .build();
            let base = endpoint.trim_end_matches('/');
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/traces"))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let logs = opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/logs"))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/metrics"))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let tracer_provider = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let logger_provider = SdkLoggerProvider::builder()
                .with_batch_exporter(logs)
                .with_resource(resource.clone())
                .build();
            let meter_provider = SdkMeterProvider::builder()
                .with_periodic_exporter(metrics)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_tracer_provider(tracer_provider.clone());
            opentelemetry::global::set_meter_provider(meter_provider.clone());
            crate::metrics::export_to_otel(&meter_provider);
            let tracer = tracer_provider.tracer("liquid");
            // The exporters' own HTTP clients log through `tracing`; keep them out of the OTLP
            // log pipeline so exporting a log never produces another log to export.
            let quiet = || {
                EnvFilter::new(
                    "info,opentelemetry=off,opentelemetry_sdk=off,hyper=off,reqwest=off,h2=off,tower=off",
                )
            };
            let trace_layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter()?);
            let log_layer = opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(
                &logger_provider,
            )
            .with_filter(quiet());
            guard.tracer = Some(tracer_provider);
            guard.logger = Some(logger_provider);
            guard.meter = Some(meter_provider);
            Some(trace_layer.and_then(log_layer))
        }
    };

    let installed = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter()?))
        .with(otel_layers)
        .try_init();
    // Another subscriber (a test harness) may already be global; that is not an error here.
    let _ = installed;
    let _ = INSTALLED.set(());
    Ok(guard)
}

/// Writes the current span's W3C trace context (`traceparent`, `tracestate`) into `injector`.
pub fn inject_context(injector: &mut dyn Injector) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, injector);
}

/// Reads a W3C trace context from `extractor`; an absent or malformed header gives an empty
/// context (a new trace starts).
pub fn extract_context(extractor: &dyn Extractor) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(extractor)
}

/// Makes `span` a child of the trace context found in `extractor`, if any.
pub fn set_parent_from(span: &tracing::Span, extractor: &dyn Extractor) {
    let _ = span.set_parent(extract_context(extractor));
}

/// The current span's trace id as 32 hex digits, or `None` outside a sampled trace.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A span's OpenTelemetry identity, kept so that spans started after it has ended can link to
/// it: the operations of a long-lived connection link to the request that opened it instead of
/// keeping that request's span open for the connection's lifetime.
#[derive(Debug, Clone)]
pub struct SpanLink(opentelemetry::trace::SpanContext);

impl SpanLink {
    /// The identity of the current span; `None` outside a trace (nothing exports traces),
    /// where there is nothing to link to. A span of an unsampled trace (a caller's
    /// `traceparent` with its sampled flag off) is linked to as well, though never exported.
    pub fn current() -> Option<SpanLink> {
        use opentelemetry::trace::TraceContextExt;
        let sc = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .clone();
        sc.is_valid().then_some(SpanLink(sc))
    }

    /// Adds a link from `span` to the span this identity was taken from.
    pub fn add_to(&self, span: &tracing::Span) {
        span.add_link(self.0.clone());
    }
}

/// [`Injector`]/[`Extractor`] over an `http::HeaderMap` (HTTP requests and tonic metadata).
pub struct HeaderCarrier<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, v);
        }
    }
}

/// Read-only [`Extractor`] over an `http::HeaderMap`.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Adds the current trace context to outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject_context(&mut HeaderCarrier(headers));
}

/// [`Injector`] over tonic metadata (outgoing gRPC calls).
pub struct MetadataCarrier<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(name, v);
        }
    }
}

/// A tonic client interceptor that adds the current span's W3C trace context to every call, so
/// a service-to-service gRPC call continues the caller's trace:
/// `FooClient::with_interceptor(channel, GrpcTraceInjector)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceInjector;

impl tonic::service::Interceptor for GrpcTraceInjector {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(&mut MetadataCarrier(request.metadata_mut()));
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn trace_context_round_trips_through_http_headers() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut headers = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderCarrier(&mut headers));
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let back = extract_context(&HeaderExtractor(&headers));
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn trace_context_goes_into_grpc_metadata() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut metadata = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataCarrier(&mut metadata));
        assert_eq!(
            metadata.get("traceparent").unwrap().to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("garbage"));
        let cx = extract_context(&HeaderExtractor(&headers));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn config_rejects_bad_filter_and_endpoint() {
        let cfg = TelemetryConfig {
            log_filter: "[[[".into(),
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("telemetry.log_filter")
        );
        let cfg = TelemetryConfig {
            otlp_endpoint: "collector:4318".into(),
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("telemetry.otlp_endpoint")
        );
    }
}
