//! Message headers and W3C trace-context propagation through them.
//!
//! [`Headers`] is the backend-neutral header map every message carries; it implements
//! OpenTelemetry's [`Injector`] and [`Extractor`] so `liquid_kit::telemetry` can write and read
//! `traceparent`/`tracestate`. Names and values follow the NATS header rules (checked on
//! publish by both implementations, so the in-process bus refuses what NATS would).

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector};

use crate::BusError;

/// The JetStream de-duplication header; both implementations honour it on stored messages.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Header names the bus reserves; callers cannot set them directly.
const RESERVED_PREFIX: &str = "Nats-";

/// A message's headers: one value per name, names case-sensitive (as on the NATS wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// An empty header map.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Sets `name` to `value`, replacing an earlier value; returns `self` for chaining.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Headers {
        self.insert(name, value);
        self
    }

    /// Sets `name` to `value`, returning the earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Approximate encoded size (`name: value\r\n` per header), counted against the size limit.
    pub(crate) fn encoded_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
    }

    /// Checks every header against the NATS rules: names non-empty printable ASCII without `:`,
    /// values without CR or LF, and no caller-set `Nats-` headers (the bus sets those).
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        for (name, value) in &self.0 {
            let bad = |reason| BusError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            if name.is_empty() {
                return Err(bad("names must not be empty"));
            }
            if name.chars().any(|c| !c.is_ascii_graphic() || c == ':') {
                return Err(bad("names are printable ascii without `:`"));
            }
            if name.starts_with(RESERVED_PREFIX) {
                return Err(bad("`Nats-` headers are set by the bus"));
            }
            if value.contains(['\r', '\n']) {
                return Err(bad("values must not contain line breaks"));
            }
        }
        Ok(())
    }

    /// Adds the current span's trace context (`traceparent`, `tracestate`).
    pub(crate) fn inject_current_context(&mut self) {
        liquid_kit::telemetry::inject_context(self);
    }

    /// The trace context these headers carry; empty when there is none.
    pub fn trace_context(&self) -> opentelemetry::Context {
        liquid_kit::telemetry::extract_context(self)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Headers {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Headers {
        Headers(map)
    }
}

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        Headers::get(self, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn headers_refuse_what_nats_cannot_carry() {
        assert!(Headers::new().with("x-tenant", "acme").validate().is_ok());
        for (name, value) in [
            ("", "v"),
            ("has space", "v"),
            ("colon:name", "v"),
            ("x", "line\nbreak"),
            ("Nats-Msg-Id", "forged"),
        ] {
            let err = Headers::new().with(name, value).validate().unwrap_err();
            assert!(matches!(err, BusError::InvalidHeader { .. }), "{name:?}");
        }
    }

    #[test]
    fn trace_context_is_read_back_from_headers() {
        let headers = Headers::new().with(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = headers.trace_context();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !Headers::new()
                .trace_context()
                .span()
                .span_context()
                .is_valid()
        );
    }
}
