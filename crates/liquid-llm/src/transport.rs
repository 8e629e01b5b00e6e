//! HTTP to the vendors: one shared reqwest client, timeouts, retries with exponential
//! back-off and full jitter on 429/5xx/529 and connection failures (honouring `Retry-After`,
//! `retry-after-ms` on 429, 503 and Anthropic's 529), and the mapping of vendor error bodies
//! to [`LlmError`].
//!
//! A vendor's `Retry-After` is untrusted input: negative, NaN or unreadable values are
//! ignored, and anything longer than [`RETRY_AFTER_CEILING`] (`1e20`, a date in 2999) is read
//! as that ceiling, which is past any configured `retry.max_retry_after_secs`, so the error
//! goes to the caller instead of a wait. An error body is read within the request's deadline
//! (streaming requests included) and at most [`MAX_ERROR_BODY_BYTES`] of it is kept.
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
            let retry_after = failure.retry_after();
            let err = failure.into_error(provider, attempt, self.request_timeout);
            if !err.is_retryable() || attempt >= max_attempts {
                return Err(err);
            }
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
        let deadline = tokio::time::Instant::now() + self.request_timeout;
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
        let body = error_body(response, deadline).await;
        Err(Failure::Status {
            status: status.as_u16(),
            retry_after,
            body,
        })
    }
}

/// Most of an error body that is kept; vendors' error bodies are a few hundred bytes.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The error body of `response`, read until `deadline` and cut at [`MAX_ERROR_BODY_BYTES`]. A
/// body that fails, stalls or runs long leaves what arrived (maybe nothing) next to the status.
async fn error_body(mut response: reqwest::Response, deadline: tokio::time::Instant) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
            body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
            if body.len() >= MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    if tokio::time::timeout_at(deadline, read).await.is_err() {
        tracing::debug!(target: "ai", read = body.len(), "error body not complete within the request timeout");
    }
    String::from_utf8_lossy(&body).into_owned()
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

    /// The wait the vendor asked for before another attempt: `Retry-After` counts on 429
    /// (rate limited), 503 (unavailable) and 529 (Anthropic's overloaded).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status {
                status: 429 | 503 | 529,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
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

/// The longest wait a `Retry-After` is read as (a day); longer values are clamped to it.
pub const RETRY_AFTER_CEILING: Duration = Duration::from_secs(24 * 60 * 60);

/// `seconds` as a wait: `None` when negative or not a number, at most [`RETRY_AFTER_CEILING`].
fn wait_of(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    // Fails only when too large for a `Duration` (infinity, 1e20): that is past the ceiling.
    Some(
        Duration::try_from_secs_f64(seconds)
            .map_or(RETRY_AFTER_CEILING, |d| d.min(RETRY_AFTER_CEILING)),
    )
}

/// `retry-after-ms` (OpenAI), then `Retry-After` as seconds or an HTTP date; `None` when
/// neither is readable. Never more than [`RETRY_AFTER_CEILING`].
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| wait_of(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return wait_of(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_CEILING),
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

    fn retry_after_of(name: &'static str, value: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        retry_after(&h)
    }

    #[test]
    fn absurd_retry_after_values_are_clamped_or_ignored_never_a_panic() {
        for name in ["retry-after", "retry-after-ms"] {
            for huge in ["1e20", "1e300", "inf", "184467440737095516160"] {
                assert_eq!(
                    retry_after_of(name, huge),
                    Some(RETRY_AFTER_CEILING),
                    "{name}: {huge}"
                );
            }
            for garbage in ["-1", "-0.5", "NaN", "-inf", "soon", "", "1 2"] {
                assert_eq!(retry_after_of(name, garbage), None, "{name}: {garbage:?}");
            }
        }
        assert_eq!(
            retry_after_of("retry-after", " 2.5 "),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(
            retry_after_of("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(RETRY_AFTER_CEILING)
        );
        // A future date is the time until it (a little less by the time it is read).
        let when = std::time::SystemTime::now() + Duration::from_secs(120);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(when)).unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(
            wait <= Duration::from_secs(120) && wait >= Duration::from_secs(100),
            "{wait:?}"
        );
        // An unreadable `retry-after-ms` falls back to `Retry-After`.
        h.insert("retry-after-ms", HeaderValue::from_static("NaN"));
        assert!(retry_after(&h).is_some_and(|w| w >= Duration::from_secs(100)));
    }

    #[test]
    fn retry_after_counts_on_429_503_and_529_only() {
        let status = |status| Failure::Status {
            status,
            retry_after: Some(Duration::from_secs(3)),
            body: String::new(),
        };
        for code in [429, 503, 529] {
            assert_eq!(status(code).retry_after(), Some(Duration::from_secs(3)));
        }
        for code in [500, 502, 504, 408] {
            assert_eq!(status(code).retry_after(), None, "{code}");
        }
    }

    /// A server that answers every request (body `{}`) with `head`, then sends nothing more.
    async fn stalling_server(head: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.ends_with(b"\r\n\r\n{}") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(head.as_bytes()).await;
                open.push(socket);
            }
        });
        format!("http://{addr}/v1/chat/completions")
    }

    #[tokio::test]
    async fn a_stalled_error_body_of_a_stream_request_ends_at_the_request_timeout() {
        let url = stalling_server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"error\":",
        )
        .await;
        let transport = Transport::with_settings(
            RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            },
            Duration::from_millis(300),
            Duration::from_millis(300),
        )
        .unwrap();
        let (headers, body) = (HeaderMap::new(), serde_json::json!({}));
        let sent = transport.post_json("openai", &url, &headers, &body, true);
        // Without a bound on the body read this never ends; the outer limit only turns a hang
        // into a failure.
        let outcome = tokio::time::timeout(Duration::from_secs(10), sent).await;
        let err = match outcome {
            Ok(Err(err)) => err,
            Ok(Ok(_)) => panic!("a 503 is not a success"),
            Err(_) => panic!("the error body read did not end at the request timeout"),
        };
        use liquid_kit::HasErrorCode;
        assert_eq!(err.error_code().as_str(), "unavailable");
        assert!(err.to_string().contains("http 503"), "{err}");
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
