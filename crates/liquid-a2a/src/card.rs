//! Agent discovery (spec §8): the card document at `/.well-known/agent-card.json` with the
//! caching headers of §8.6 (Cache-Control max-age, a content-hash ETag, Last-Modified) and
//! conditional GETs answered with 304.

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::error::A2aError;
use crate::pb;

/// The well-known path of the public card (§8.2, §14.3).
pub const WELL_KNOWN_PATH: &str = "/.well-known/agent-card.json";

/// A serialised card with its validators, ready to answer GETs.
#[derive(Debug, Clone)]
pub struct CardDocument {
    body: Bytes,
    etag: String,
    last_modified: DateTime<Utc>,
    max_age_secs: u32,
}

const HTTP_DATE: &str = "%a, %d %b %Y %H:%M:%S GMT";

impl CardDocument {
    /// Serialises `card` (ProtoJSON); `modified` is when its content last changed.
    pub fn new(
        card: &pb::AgentCard,
        modified: DateTime<Utc>,
        max_age_secs: u32,
    ) -> Result<CardDocument, A2aError> {
        let body = serde_json::to_vec(card).map_err(A2aError::internal)?;
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        // HTTP dates have whole seconds; drop the fraction so If-Modified-Since compares equal.
        let last_modified = DateTime::from_timestamp(modified.timestamp(), 0).unwrap_or(modified);
        Ok(CardDocument {
            body: Bytes::from(body),
            etag,
            last_modified,
            max_age_secs,
        })
    }

    /// The strong ETag (quoted hex of the SHA-256 of the body).
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The JSON body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    fn not_modified(&self, request: &HeaderMap) -> bool {
        if let Some(inm) = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            return inm
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == self.etag);
        }
        if let Some(ims) = request
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            && let Ok(since) = chrono::NaiveDateTime::parse_from_str(ims, HTTP_DATE)
        {
            return self.last_modified <= since.and_utc();
        }
        false
    }

    /// The response to a GET with `request` headers: 200 with the card, or 304.
    pub fn respond(&self, request: &HeaderMap) -> Response {
        let mut response = if self.not_modified(request) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = (StatusCode::OK, self.body.clone()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", self.max_age_secs)) {
            headers.insert(header::CACHE_CONTROL, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.last_modified.format(HTTP_DATE).to_string()) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn doc() -> CardDocument {
        let card = pb::AgentCard {
            name: "echo".into(),
            version: "1".into(),
            ..Default::default()
        };
        let t = DateTime::parse_from_rfc3339("2026-05-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        CardDocument::new(&card, t, 300).unwrap()
    }

    #[test]
    fn caching_headers_and_conditional_gets() {
        let d = doc();
        let r = d.respond(&HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=300");
        assert_eq!(
            r.headers()[header::LAST_MODIFIED],
            "Fri, 01 May 2026 10:00:00 GMT"
        );
        let etag = r.headers()[header::ETAG].clone();

        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(d.respond(&h).status(), StatusCode::NOT_MODIFIED);

        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(d.respond(&h).status(), StatusCode::OK);

        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Fri, 01 May 2026 10:00:00 GMT"),
        );
        assert_eq!(d.respond(&h).status(), StatusCode::NOT_MODIFIED);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Fri, 01 May 2026 09:59:59 GMT"),
        );
        assert_eq!(d.respond(&h).status(), StatusCode::OK);
    }
}
