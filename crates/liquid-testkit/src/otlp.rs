//! An in-memory OTLP/HTTP receiver (protobuf encoding, the default of OpenTelemetry SDKs), so
//! tests can assert that spans and logs really left a process.
//!
//! It speaks the real wire format: `POST /v1/traces`, `/v1/logs`, `/v1/metrics` with
//! `application/x-protobuf` bodies of the collector's `Export*ServiceRequest` messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// One received span, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `service.name` of the exporting resource.
    pub service_name: String,
    /// Span attributes rendered as strings.
    pub attributes: HashMap<String, String>,
    /// The spans this one links to (OpenTelemetry span links), as (trace id, span id).
    pub links: Vec<(String, String)>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    log_records: usize,
    metric_names: Vec<String>,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| render(kv.value.as_ref()))
}

fn protobuf(body: Vec<u8>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
}

async fn traces(State(r): State<Arc<Mutex<Received>>>, body: Bytes) -> axum::response::Response {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    let mut spans = Vec::new();
    for rs in req.resource_spans {
        let service_name = rs
            .resource
            .as_ref()
            .and_then(|res| attribute(&res.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    service_name: service_name.clone(),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), render(kv.value.as_ref())))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    if let Ok(mut guard) = r.lock() {
        guard.spans.extend(spans);
    }
    protobuf(ExportTraceServiceResponse::default().encode_to_vec()).into_response()
}

async fn logs(State(r): State<Arc<Mutex<Received>>>, body: Bytes) -> axum::response::Response {
    let Ok(req) = ExportLogsServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportLogsServiceRequest").into_response();
    };
    let n: usize = req
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum();
    if let Ok(mut guard) = r.lock() {
        guard.log_records += n;
    }
    protobuf(ExportLogsServiceResponse::default().encode_to_vec()).into_response()
}

async fn metrics(State(r): State<Arc<Mutex<Received>>>, body: Bytes) -> axum::response::Response {
    let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            "not an ExportMetricsServiceRequest",
        )
            .into_response();
    };
    let names: Vec<String> = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect();
    if let Ok(mut guard) = r.lock() {
        guard.metric_names.extend(names);
    }
    protobuf(ExportMetricsServiceResponse::default().encode_to_vec()).into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpReceiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        OtlpReceiver::start_on(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)).await
    }

    /// Starts a receiver on a free port of `host` (e.g. a Docker network's gateway address, so
    /// that containers on it export to the test).
    pub async fn start_on(host: std::net::IpAddr) -> anyhow::Result<OtlpReceiver> {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/logs", post(logs))
            .route("/v1/metrics", post(metrics))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            received,
            stop,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .lock()
            .map(|g| g.spans.clone())
            .unwrap_or_default()
    }

    /// How many log records were received.
    pub fn log_records(&self) -> usize {
        self.received
            .lock()
            .map(|g| g.log_records)
            .unwrap_or_default()
    }

    /// Names of the metrics received.
    pub fn metric_names(&self) -> Vec<String> {
        self.received
            .lock()
            .map(|g| g.metric_names.clone())
            .unwrap_or_default()
    }

    /// Polls until `done` holds for the received spans or `timeout` passes; returns the spans
    /// either way so the caller's assertion shows what arrived.
    pub async fn wait_for_spans(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
