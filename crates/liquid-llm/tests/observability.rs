//! Metrics and `ai` spans for model requests, and API keys kept out of every log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{KEY, config, fast_transport, router, server};
use liquid_llm::{ChatRequest, ModelClient, ModelRouter};
use liquid_testkit::model_servers::{CannedMessage, Reply, Vendor};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// (target, name, fields) of every span, the span id first among the fields.
type SpanLog = Vec<(String, String, Vec<(String, String)>)>;

#[derive(Default, Clone)]
struct SpanFields(Arc<Mutex<SpanLog>>);

struct Visitor<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = vec![("id".to_owned(), id.into_u64().to_string())];
        attrs.record(&mut Visitor(&mut fields));
        if let Ok(mut all) = self.0.lock() {
            all.push((
                attrs.metadata().target().to_owned(),
                attrs.metadata().name().to_owned(),
                fields,
            ));
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        values.record(&mut Visitor(&mut fields));
        if let Ok(mut all) = self.0.lock()
            && let Some(span) = all.iter_mut().find(|(_, _, f)| {
                f.first().map(|(_, v)| v.as_str()) == Some(&id.into_u64().to_string())
            })
        {
            span.2.extend(fields);
        }
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn requests_record_ai_spans_and_llm_metrics() {
    let handle = liquid_kit::metrics::handle();
    let spans = SpanFields::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = server(Vendor::OpenAi).await;
    server.push(Reply::Message(
        CannedMessage::text("hi").with_usage(2_000, 1_000),
    ));
    server.push(Reply::failure(400, None));
    let router = router(Vendor::OpenAi, &server, 1);
    router
        .complete(&ChatRequest::new("gpt-4o-mini", "hello"))
        .await
        .unwrap();
    router
        .complete(&ChatRequest::new("gpt-4o-mini", "hello"))
        .await
        .unwrap_err();

    let recorded = spans.0.lock().unwrap().clone();
    let ai: Vec<_> = recorded
        .iter()
        .filter(|(target, name, _)| target == "ai" && name == "model_request")
        .collect();
    assert_eq!(ai.len(), 2);
    let field = |i: usize, k: &str| {
        ai[i]
            .2
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field(0, "provider").as_deref(), Some("openai"));
    assert_eq!(field(0, "model").as_deref(), Some("gpt-4o-mini"));
    assert_eq!(field(0, "input_tokens").as_deref(), Some("2000"));
    assert_eq!(field(0, "output_tokens").as_deref(), Some("1000"));
    assert_eq!(field(0, "outcome").as_deref(), Some("ok"));
    assert!(field(0, "latency_ms").is_some());
    assert!(field(0, "cost_usd").is_some());
    assert_eq!(field(1, "outcome").as_deref(), Some("error"));
    assert_eq!(field(1, "error_code").as_deref(), Some("invalid_argument"));

    let text = handle.render();
    for needle in [
        r#"liquid_llm_requests_total{provider="openai",model="gpt-4o-mini",mode="complete",outcome="ok"} 1"#,
        r#"liquid_llm_requests_total{provider="openai",model="gpt-4o-mini",mode="complete",outcome="error"} 1"#,
        r#"liquid_llm_errors_total{provider="openai",code="invalid_argument"} 1"#,
        r#"liquid_llm_tokens_total{provider="openai",model="gpt-4o-mini",direction="input"} 2000"#,
        r#"liquid_llm_tokens_total{provider="openai",model="gpt-4o-mini",direction="output"} 1000"#,
        // 2000 × $0.15/M + 1000 × $0.60/M = $0.0009 = 900 micro-dollars.
        r#"liquid_llm_cost_usd_micros_total{provider="openai",model="gpt-4o-mini"} 900"#,
        "liquid_llm_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn api_keys_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = server(Vendor::Anthropic).await;
    server.push(Reply::failure(500, None));
    server.push(Reply::text("ok"));
    let config = config(Vendor::Anthropic, &server.base_url(), KEY);
    tracing::debug!(?config, "configuration");
    let router = ModelRouter::with_transport(&config, fast_transport(2)).unwrap();
    router
        .complete(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap();
    let bad = common::config(Vendor::Anthropic, &server.base_url(), "sk-wrong-secret");
    let router = ModelRouter::with_transport(&bad, fast_transport(1)).unwrap();
    router
        .complete(&ChatRequest::new("claude-sonnet-4-5", "hi"))
        .await
        .unwrap_err();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying model request"),
        "the logs were captured:\n{logs}"
    );
    assert!(logs.contains("[redacted]"));
    assert!(!logs.contains(KEY), "the api key leaked into the logs");
    assert!(!logs.contains("sk-wrong-secret"));
}
