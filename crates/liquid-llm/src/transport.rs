//! HTTP to the vendors: one shared reqwest client, timeouts, retries with exponential
//! back-off and full jitter on 429/5xx/529 and connection failures (honouring `Retry-After`,
//! `retry-after-ms`), and the mapping of vendor error bodies to [`LlmError`].
//!
//! Every vendor wraps its error as `{"error": {"message", ...}}` (Anthropic adds a top-level
//! `type`), so one mapper reads the message and the vendor's machine-readable reason
//! (`error.type`, `error.code`, `error.status`, Gemini's `details[].reason`).
//! Only the request before the first response byte is retried: a stream that fails midway
//! is reported, never replayed, so a caller never sees text twice.

use std::time::Duration;

use liquid_kit::Secret;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::assemble::{Assembler, ChatStream, StreamDecoder, sse_stream};
use crate::config::{LlmConfig, RetryConfig};
use crate::error::LlmError;

/// How one request is sent: shared by every provider of a router.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    retry: RetryConfig,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
}

impl Transport {
    /// A transport with the configuration's timeouts and retry policy.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        Transport::with_settings(
            config.retry.clone(),
            Duration::from_secs(config.request_timeout_secs),
            Duration::from_secs(config.stream_idle_timeout_secs),
        )
    }

    /// A transport with explicit settings (tests use millisecond timeouts).
    pub fn with_settings(
        retry: RetryConfig,
        request_timeout: Duration,
        stream_idle_timeout: Duration,
    ) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("liquid-llm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Unavailable {
                provider: "http".into(),
                attempts: 0,
                reason: format!("cannot build the http client: {e}"),
            })?;
        Ok(Transport {
            http,
            retry,
            request_timeout,
            stream_idle_timeout,
        })
    }

    /// Idle limit between stream chunks.
    pub fn stream_idle_timeout(&self) -> Duration {
        self.stream_idle_timeout
    }

    /// POSTs `body` to `url` with `headers`, retrying what is retryable. For `streaming`
    /// requests the timeout covers the response headers only; otherwise it covers the whole
    /// body too. Returns the successful response and the body if it was read.
    /// Posts a streaming request and decodes its SSE body with `decoder` into one
    /// [`ChatStream`] (retries happen only before the first byte, in [`Transport::post_json`]).
    pub(crate) async fn post_sse<D: StreamDecoder>(
        &self,
        provider: &str,
        url: &str,
        headers: &HeaderMap,
        body: &serde_json::Value,
        decoder: D,
        model: &str,
    ) -> Result<ChatStream, LlmError> {
        let sent = self.post_json(provider, url, headers, body, true).await?;
        let response = sent
            .response
            .ok_or_else(|| LlmError::protocol(provider, "no stream body"))?;
        Ok(sse_stream(
            response,
            decoder,
            Assembler::new(provider, model),
            self.stream_idle_timeout(),
        ))
    }

    pub(crate) async fn post_json(
        &self,
        provider: &str,
        url: &str,
        headers: &HeaderMap,
        body: &serde_json::Value,
        streaming: bool,
    ) -> Result<Sent, LlmError> {
        let payload = serde_json::to_vec(body).map_err(|e| LlmError::InvalidRequest {
            reason: format!("cannot encode the request: {e}"),
        })?;
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.attempt(url, headers, &payload, streaming).await;
            let failure = match outcome {
                Ok(sent) => return Ok(sent),
                Err(failure) => failure,
            };
            let err = failure.into_error(provider, attempt, self.request_timeout);
            if !err.is_retryable() || attempt >= max_attempts {
                return Err(err);
            }
            let retry_after = match &err {
                LlmError::RateLimited { retry_after, .. } => *retry_after,
                _ => None,
            };
            let max_wait = Duration::from_secs(self.retry.max_retry_after_secs);
            if retry_after.is_some_and(|d| d > max_wait) {
                tracing::warn!(target: "ai", provider, ?retry_after, "retry-after exceeds the configured maximum; giving up");
                return Err(err);
            }
            let delay = backoff(&self.retry, attempt).max(retry_after.unwrap_or_default());
            metrics::counter!("liquid_llm_retries_total", "provider" => provider.to_owned(), "reason" => retry_reason(&err)).increment(1);
            tracing::info!(target: "ai", provider, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying model request");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &HeaderMap,
        payload: &[u8],
        streaming: bool,
    ) -> Result<Sent, Failure> {
        let request = self
            .http
            .post(url)
            .headers(headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_vec());
        let request = if streaming {
            request.header(reqwest::header::ACCEPT, "text/event-stream")
        } else {
            request.timeout(self.request_timeout)
        };
        let send = request.send();
        let response = if streaming {
            match tokio::time::timeout(self.request_timeout, send).await {
                Ok(r) => r,
                Err(_) => return Err(Failure::Timeout),
            }
        } else {
            send.await
        };
        let response = response.map_err(Failure::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            if streaming {
                return Ok(Sent {
                    response: Some(response),
                    body: None,
                });
            }
            let body = response.bytes().await.map_err(Failure::from_reqwest)?;
            return Ok(Sent {
                response: None,
                body: Some(body),
            });
        }
        let retry_after = retry_after(response.headers());
        // The error body is small; a failure to read it leaves only the status to report.
        let body = response.text().await.unwrap_or_default();
        Err(Failure::Status {
            status: status.as_u16(),
            retry_after,
            body,
        })
    }
}

/// A successful exchange: the open response (streaming) or its body (not streaming).
pub(crate) struct Sent {
    pub(crate) response: Option<reqwest::Response>,
    pub(crate) body: Option<bytes::Bytes>,
}

enum Failure {
    Connect(String),
    Timeout,
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            // Connection refused/reset, DNS, TLS, a body cut off: all transient from here.
            Failure::Connect(error_chain(&e))
        }
    }

    fn into_error(self, provider: &str, attempts: u32, timeout: Duration) -> LlmError {
        match self {
            Failure::Connect(reason) => LlmError::Unavailable {
                provider: provider.to_owned(),
                attempts,
                reason,
            },
            Failure::Timeout => LlmError::Timeout {
                provider: provider.to_owned(),
                timeout,
            },
            Failure::Status {
                status,
                retry_after,
                body,
            } => status_error(provider, status, retry_after, &body, attempts),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn retry_reason(err: &LlmError) -> &'static str {
    match err {
        LlmError::RateLimited { .. } => "rate_limited",
        _ => "unavailable",
    }
}

/// Back-off before attempt `attempt + 1`: full jitter over `initial * 2^(attempt-1)`, capped.
pub(crate) fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(retry.max_backoff_ms);
    if ceiling == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

/// `retry-after-ms` (OpenAI), then `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let value = text("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What a vendor's error body says: its message and machine-readable reasons.
#[derive(Debug, Default)]
pub(crate) struct VendorError {
    pub(crate) message: String,
    pub(crate) reasons: Vec<String>,
}

pub(crate) fn parse_vendor_error(body: &str) -> VendorError {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        let mut message: String = body.chars().take(300).collect();
        if message.trim().is_empty() {
            message = "no error body".into();
        }
        return VendorError {
            message,
            reasons: Vec::new(),
        };
    };
    // Gemini may wrap errors in an array when streaming without alt=sse.
    let root = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
    let err = root.get("error").unwrap_or(root);
    let mut reasons = Vec::new();
    for key in ["type", "code", "status"] {
        if let Some(s) = err.get(key).and_then(|x| x.as_str()) {
            reasons.push(s.to_owned());
        }
    }
    if let Some(details) = err.get("details").and_then(|d| d.as_array()) {
        for d in details {
            if let Some(r) = d.get("reason").and_then(|x| x.as_str()) {
                reasons.push(r.to_owned());
            }
        }
    }
    let message = err
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("no error message")
        .chars()
        .take(1000)
        .collect();
    VendorError { message, reasons }
}

/// Maps an HTTP error status and body to the error a caller sees.
pub(crate) fn status_error(
    provider: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    attempts: u32,
) -> LlmError {
    let vendor = parse_vendor_error(body);
    let has = |r: &str| vendor.reasons.iter().any(|x| x == r);
    let provider = provider.to_owned();
    match status {
        401 => LlmError::Unauthenticated { provider, status },
        // Gemini answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        400 if has("API_KEY_INVALID") => LlmError::Unauthenticated { provider, status },
        403 => LlmError::PermissionDenied {
            provider,
            message: vendor.message,
        },
        404 => LlmError::ModelNotFound {
            provider,
            message: vendor.message,
        },
        // OpenAI uses 429 for an exhausted balance too; waiting does not fix that.
        429 if has("insufficient_quota") => LlmError::QuotaExhausted {
            provider,
            message: vendor.message,
        },
        429 => LlmError::RateLimited {
            provider,
            attempts,
            retry_after,
            message: vendor.message,
        },
        // 408 request timeout and 409 lock conflicts are transient at these vendors; 529 is
        // Anthropic's "overloaded".
        408 | 409 | 500..=599 => LlmError::Unavailable {
            provider,
            attempts,
            reason: format!("http {status}: {}", vendor.message),
        },
        _ => LlmError::Rejected {
            provider,
            status,
            message: vendor.message,
        },
    }
}

/// Header value from a secret, marked sensitive so that no debug output shows it.
pub(crate) fn secret_header(value: &Secret<String>) -> Result<HeaderValue, LlmError> {
    let mut v = HeaderValue::from_str(value.expose()).map_err(|_| LlmError::InvalidRequest {
        reason: "the api key contains characters not allowed in a header".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let r = RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            max_retry_after_secs: 60,
        };
        for _ in 0..100 {
            let first = backoff(&r, 1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(&r, 3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let tenth = backoff(&r, 10).as_millis();
            assert!((500..=1_000).contains(&tenth), "{tenth}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn vendor_errors_map_to_stable_codes() {
        use liquid_kit::HasErrorCode;
        let gemini_bad_key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(
            status_error("gemini", 400, None, gemini_bad_key, 1)
                .error_code()
                .as_str(),
            "unauthenticated"
        );
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let e = status_error("openai", 429, None, quota, 1);
        assert!(!e.is_retryable());
        assert_eq!(e.error_code().as_str(), "failed_precondition");
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = status_error("anthropic", 529, None, overloaded, 1);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("Overloaded"));
        let bad = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let e = status_error("anthropic", 400, None, bad, 1);
        assert_eq!(e.error_code().as_str(), "invalid_argument");
        assert!(e.to_string().contains("max_tokens: Field required"));
    }
}
