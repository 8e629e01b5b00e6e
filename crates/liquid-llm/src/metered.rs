//! Cost, tracing and metrics around any [`ModelClient`].
//!
//! Every request gets a span with target `ai` (`model_request`: provider, model, mode, input and
//! output tokens, cost, latency, outcome) and feeds the `metrics` facade:
//!
//! | metric | labels |
//! |---|---|
//! | `liquid_llm_requests_total` | `provider`, `model`, `mode` (`complete`/`stream`), `outcome` (`ok`/`error`/`cancelled`) |
//! | `liquid_llm_errors_total` | `provider`, `code` (the stable error code) |
//! | `liquid_llm_tokens_total` | `provider`, `model`, `direction` (`input`/`output`) |
//! | `liquid_llm_cost_usd_micros_total` | `provider`, `model` (millionths of a dollar; counters are integers) |
//! | `liquid_llm_request_duration_seconds` | `provider`, `mode` (streams: until the last event) |
//!
//! `liquid_llm_retries_total` comes from the transport and the session metrics from
//! [`crate::session`]. The provider label is the provider that answered (`offline` when the
//! offline provider stood in), and model labels are only ever routed model names.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::StreamExt;
use liquid_kit::HasErrorCode;
use tracing::Instrument;
use tracing::field::Empty;

use crate::assemble::ChatStream;
use crate::client::ModelClient;
use crate::error::LlmError;
use crate::pricing::PriceTable;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// Wraps a client with cost computation, a tracing span and metrics.
pub struct MeteredClient {
    inner: Arc<dyn ModelClient>,
    prices: Arc<PriceTable>,
}

impl MeteredClient {
    /// Meters `inner`, pricing answers with `prices`.
    pub fn new(inner: Arc<dyn ModelClient>, prices: Arc<PriceTable>) -> Self {
        MeteredClient { inner, prices }
    }
}

struct Observation {
    span: tracing::Span,
    started: Instant,
    provider: String,
    model: String,
    mode: &'static str,
    prices: Arc<PriceTable>,
    done: bool,
}

impl Observation {
    fn new(provider: &str, model: &str, mode: &'static str, prices: Arc<PriceTable>) -> Self {
        let span = tracing::info_span!(
            target: "ai",
            "model_request",
            provider = %provider,
            model = %model,
            mode,
            input_tokens = Empty,
            output_tokens = Empty,
            cost_usd = Empty,
            latency_ms = Empty,
            outcome = Empty,
            error_code = Empty,
        );
        Observation {
            span,
            started: Instant::now(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            mode,
            prices,
            done: false,
        }
    }

    fn succeeded(&mut self, response: &mut ChatResponse) {
        self.done = true;
        if response.cost_usd.is_none() {
            response.cost_usd = self
                .prices
                .cost(&self.model, response.usage)
                .or_else(|| self.prices.cost(&response.model, response.usage));
        }
        let provider = response.provider.clone();
        let model = self.model.clone();
        let latency = self.started.elapsed();
        self.span.record("provider", provider.as_str());
        self.span
            .record("input_tokens", response.usage.input_tokens);
        self.span
            .record("output_tokens", response.usage.output_tokens);
        if let Some(cost) = response.cost_usd {
            self.span.record("cost_usd", cost);
        }
        self.span.record("latency_ms", latency.as_millis() as u64);
        self.span.record("outcome", "ok");
        metrics::counter!("liquid_llm_requests_total", "provider" => provider.clone(), "model" => model.clone(), "mode" => self.mode, "outcome" => "ok").increment(1);
        metrics::counter!("liquid_llm_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "direction" => "input").increment(response.usage.input_tokens);
        metrics::counter!("liquid_llm_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "direction" => "output").increment(response.usage.output_tokens);
        if let Some(cost) = response.cost_usd {
            metrics::counter!("liquid_llm_cost_usd_micros_total", "provider" => provider.clone(), "model" => model)
                .increment((cost * 1_000_000.0).round() as u64);
        }
        metrics::histogram!("liquid_llm_request_duration_seconds", "provider" => provider, "mode" => self.mode)
            .record(latency.as_secs_f64());
        tracing::info!(
            target: "ai",
            parent: &self.span,
            input_tokens = response.usage.input_tokens,
            output_tokens = response.usage.output_tokens,
            latency_ms = latency.as_millis() as u64,
            "model request finished"
        );
    }

    fn failed(&mut self, err: &LlmError) {
        self.done = true;
        let code = err.error_code().as_str();
        self.span.record("outcome", "error");
        self.span.record("error_code", code);
        self.span
            .record("latency_ms", self.started.elapsed().as_millis() as u64);
        metrics::counter!("liquid_llm_requests_total", "provider" => self.provider.clone(), "model" => self.model.clone(), "mode" => self.mode, "outcome" => "error").increment(1);
        metrics::counter!("liquid_llm_errors_total", "provider" => self.provider.clone(), "code" => code).increment(1);
        metrics::histogram!("liquid_llm_request_duration_seconds", "provider" => self.provider.clone(), "mode" => self.mode)
            .record(self.started.elapsed().as_secs_f64());
        tracing::warn!(target: "ai", parent: &self.span, error = %err, code, "model request failed");
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if !self.done {
            // The caller dropped a stream before its end (client disconnected, cancelled).
            self.span.record("outcome", "cancelled");
            metrics::counter!("liquid_llm_requests_total", "provider" => self.provider.clone(), "model" => self.model.clone(), "mode" => self.mode, "outcome" => "cancelled").increment(1);
        }
    }
}

#[async_trait]
impl ModelClient for MeteredClient {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let mut obs = Observation::new(
            self.inner.name(),
            &request.model,
            "complete",
            self.prices.clone(),
        );
        let span = obs.span.clone();
        match self.inner.complete(request).instrument(span).await {
            Ok(mut response) => {
                obs.succeeded(&mut response);
                Ok(response)
            }
            Err(e) => {
                obs.failed(&e);
                Err(e)
            }
        }
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let mut obs = Observation::new(
            self.inner.name(),
            &request.model,
            "stream",
            self.prices.clone(),
        );
        let span = obs.span.clone();
        let inner = match self.inner.stream(request).instrument(span).await {
            Ok(s) => s,
            Err(e) => {
                obs.failed(&e);
                return Err(e);
            }
        };
        Ok(Box::pin(inner.map(move |item| match item {
            Ok(StreamEvent::Completed { mut response }) => {
                obs.succeeded(&mut response);
                Ok(StreamEvent::Completed { response })
            }
            Err(e) => {
                obs.failed(&e);
                Err(e)
            }
            other => other,
        })))
    }
}
