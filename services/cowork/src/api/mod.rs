//! The cowork service's APIs: REST for staging sandboxes ([`http`]) and for deep-work
//! sessions, agents and the queue ([`cowork`]), with the request helpers both use.

pub mod cowork;
pub mod http;

use axum::extract::Query;
use axum::http::{HeaderMap, Uri};
use liquid_auth::Authenticated;

use crate::error::CoworkError;
use crate::sandbox::Caller;

/// Scope for reading sessions, sandboxes and the audit log.
pub const SCOPE_READ: &str = "cowork:read";
/// Scope for changing them.
pub const SCOPE_WRITE: &str = "cowork:write";

/// Largest page of a list.
const MAX_PAGE: i64 = 500;

/// The caller, once its token is checked for `scope`.
fn caller(auth: &Authenticated, scope: &str) -> Result<Caller, CoworkError> {
    auth.require(scope)?;
    Ok(Caller {
        tenant: auth.tenant_id().to_owned(),
        actor: auth.sub.clone(),
    })
}

/// A JSON body; an empty one is `{}`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CoworkError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| CoworkError::invalid("body", e.to_string()))
}

/// The query string.
fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, CoworkError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| CoworkError::invalid("query", e.body_text()))
}

/// A page size: 100 when absent, at most [`MAX_PAGE`].
fn page_limit(limit: Option<i64>) -> Result<i64, CoworkError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(CoworkError::invalid(
            "limit",
            format!("between 1 and {MAX_PAGE}"),
        )),
    }
}

/// The `Idempotency-Key` header, if any: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, CoworkError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    key.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| CoworkError::invalid("Idempotency-Key", "1 to 200 visible ASCII characters"))
}
