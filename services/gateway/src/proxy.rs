//! Forwarding of `/api/v1/<service>/...` to the service that owns it.
//!
//! The caller was verified by the auth layer before this runs; the service verifies the same
//! token again (ARCHITECTURE.md, Identity). Bodies stream both ways; hop-by-hop headers are
//! dropped; the W3C trace context of the gateway's span and the request id go upstream so one
//! request is one trace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderName, header};
use liquid_kit::{ApiError, ErrorCode};
use liquid_runtime::{Peer, peer_key};

/// How long an upstream call may take before the gateway answers 504.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Upstreams {
    peers: Arc<BTreeMap<String, Peer>>,
    client: reqwest::Client,
}

/// Routes `/api/v1/{service}/{*rest}` to the services in `peers`.
pub fn router(peers: Arc<BTreeMap<String, Peer>>) -> Router {
    let client = reqwest::Client::builder()
        .timeout(UPSTREAM_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    Router::new()
        .route("/api/v1/{service}/{*rest}", any(forward))
        .with_state(Upstreams { peers, client })
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(name)
            && name.as_str() != "keep-alive"
            && name.as_str() != "proxy-connection"
        {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The service names callers may use in the path (the owning service, or its REST prefix).
fn resolve<'a>(peers: &'a BTreeMap<String, Peer>, service: &str) -> Option<&'a Peer> {
    let key = match service {
        "containers" => "container_pool".to_owned(),
        other => peer_key(other),
    };
    if key == "gateway" {
        return None;
    }
    peers.get(&key).filter(|p| !p.http.is_empty())
}

async fn forward(
    State(upstreams): State<Upstreams>,
    Path((service, _rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(peer) = resolve(&upstreams.peers, &service) else {
        let known: Vec<&str> = upstreams
            .peers
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "gateway")
            .collect();
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no service named `{service}` behind the gateway"),
        )
        .with_details(serde_json::json!({ "known_services": known }))
        .into_response();
    };
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{}", peer.http.trim_end_matches('/'), path_and_query);
    let (parts, body) = request.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    liquid_kit::telemetry::inject_http(&mut headers);
    let upstream = upstreams
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match upstream {
        Ok(response) => {
            let status = response.status();
            let mut out = HeaderMap::new();
            copy_headers(response.headers(), &mut out);
            let stream = response.bytes_stream().map_err(std::io::Error::other);
            let mut reply = Response::new(Body::from_stream(stream));
            *reply.status_mut() = status;
            *reply.headers_mut() = out;
            reply
        }
        Err(error) if error.is_timeout() => {
            tracing::warn!(target: "http", %service, %error, "upstream timed out");
            ApiError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the {service} service did not answer within {}s",
                    UPSTREAM_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
        Err(error) => {
            tracing::warn!(target: "http", %service, %error, "upstream unreachable");
            ApiError::new(
                ErrorCode::Unavailable,
                format!("the {service} service is unreachable at {}; check that it runs and that peers.{}.http points to it", peer.http, peer_key(&service)),
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<String, Peer> {
        BTreeMap::from([
            (
                "cowork".to_owned(),
                Peer {
                    http: "http://c:1".into(),
                    grpc: String::new(),
                },
            ),
            (
                "container_pool".to_owned(),
                Peer {
                    http: "http://p:1".into(),
                    grpc: String::new(),
                },
            ),
            (
                "gateway".to_owned(),
                Peer {
                    http: "http://g:1".into(),
                    grpc: String::new(),
                },
            ),
        ])
    }

    #[test]
    fn service_names_resolve_to_their_peers() {
        let peers = peers();
        assert_eq!(resolve(&peers, "cowork").unwrap().http, "http://c:1");
        assert_eq!(
            resolve(&peers, "container-pool").unwrap().http,
            "http://p:1"
        );
        assert_eq!(resolve(&peers, "containers").unwrap().http, "http://p:1");
        assert!(
            resolve(&peers, "gateway").is_none(),
            "the gateway never forwards to itself"
        );
        assert!(resolve(&peers, "nope").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut from = HeaderMap::new();
        from.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        from.insert(header::HOST, "edge".parse().unwrap());
        from.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert!(to.get(header::CONNECTION).is_none());
        assert!(to.get(header::HOST).is_none());
        assert_eq!(to[header::AUTHORIZATION], "Bearer x");
    }
}
