//! Token verification at the edge.
//!
//! The shared verifier remembers verified tokens (`auth.cache_ttl_secs`, keyed by the SHA-256
//! of the exact token bytes, never past `exp`, emptied when the keys change), so a caller's
//! next requests skip the signature check, which at the edge costs more than everything else a
//! request does. This middleware adds the gateway's public paths (`routing.public_paths`) to
//! the shared layer's rules.
//!
//! Refusals are the shared layer's: the same codes, reasons, `WWW-Authenticate` and security
//! log line. Each refusal is also charged to the client address (the IP tier of the route's
//! class), as an anonymous request would be, and becomes 429 once that quota is spent: refused
//! tokens are not a way around the limits. Only refusals pay for this; a verified request does
//! no extra work.
//!
//! The two WebSocket endpoints (`/ws` and `/graphql`) admit a connect through one function,
//! [`EdgeAuth::verify_at_connect`]: the token at connect, its refusal, the connect's own
//! charge. A token refused later on the socket (`/ws`'s `auth` message, GraphQL's
//! `connection_init`) is charged to the same address through the [`RefusalCharge`] the connect
//! hands over, so no way of sending a token escapes the charge.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use liquid_auth::{AuthError, BearerToken, Claims, Verifier, bearer_from_headers};
use liquid_kit::telemetry::target;

use crate::domain::tier::Charge;
use crate::hub::SocketEndpoint;
use crate::ratelimit::{self, Outcome, RateLimiter};

/// The edge's token checks: the shared verifier and the public paths; cheap to clone.
#[derive(Clone)]
pub struct EdgeAuth {
    verifier: Arc<Verifier>,
    /// `routing.public_paths`: read without a token.
    public: Arc<Vec<String>>,
    /// Charges refusals to the client address, when set.
    limiter: Option<RateLimiter>,
}

impl EdgeAuth {
    /// Checks with `verifier` (which remembers verified tokens per `[auth]`).
    pub fn new(verifier: Arc<Verifier>) -> EdgeAuth {
        EdgeAuth {
            verifier,
            public: Arc::new(Vec::new()),
            limiter: None,
        }
    }

    /// Charges every refusal to the client address in `limiter` (429 once spent).
    pub fn with_refusals_charged(mut self, limiter: RateLimiter) -> EdgeAuth {
        self.limiter = Some(limiter);
        self
    }

    /// Lets `GET`/`HEAD` of these path patterns through without a token.
    pub fn with_public_paths(mut self, paths: Vec<String>) -> EdgeAuth {
        self.public = Arc::new(paths);
        self
    }

    /// The claims of `token` (see [`Verifier::verify_or_refresh`]).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verifier.verify_or_refresh(token).await
    }
}

impl EdgeAuth {
    /// The refusal of a request for `path` from `peer`: logged, charged to the client address
    /// when a limiter is set, and 429 instead of 401 once the address's quota is spent.
    pub async fn refuse(
        &self,
        error: &AuthError,
        path: &str,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Response {
        tracing::info!(target: target::SECURITY, path, grpc = false, reason = error.reason(), %error, "request refused");
        let mut response = error.clone().into_response();
        if let Some(outcome) = self.refusals_at(path, headers, peer).charge().await {
            if !outcome.decision.allowed {
                return ratelimit::refusal(&outcome);
            }
            ratelimit::write_headers(response.headers_mut(), &outcome);
        }
        response
    }

    /// How a token refused on behalf of a request for `path` from `peer` is charged: to the
    /// client address, in `path`'s class (nothing when no limiter is set).
    pub fn refusals_at(&self, path: &str, headers: &HeaderMap, peer: IpAddr) -> RefusalCharge {
        let to = self.limiter.as_ref().map(|limiter| {
            (
                limiter.clone(),
                limiter.class_of(path).to_owned(),
                limiter.charge_address(None, headers, peer),
            )
        });
        RefusalCharge { to }
    }

    /// Admits a WebSocket connect (`/ws`, `/graphql`): verifies the token it brings in
    /// `sources`, refuses it as [`EdgeAuth::refuse`] does (charged to the client address, 429
    /// once spent), then charges the connect itself to `limiter` like a request (429 once
    /// spent). The refusal's answer is the `Err`.
    pub async fn verify_at_connect(
        &self,
        limiter: &RateLimiter,
        parts: &Parts,
        peer: IpAddr,
        sources: ConnectToken,
    ) -> Result<Admitted, Response> {
        let path = parts.uri.path();
        let headers = &parts.headers;
        let verified = match sources.token_in(headers) {
            Ok(Some(token)) => self
                .verify(&token)
                .await
                .map(|claims| Some((claims, BearerToken::new(token)))),
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        let caller = match verified {
            Ok(caller) => caller,
            Err(error) => return Err(self.refuse(&error, path, headers, peer).await),
        };
        let charge = limiter.charge(caller.as_ref().map(|(claims, _)| claims), headers, peer);
        let outcome = limiter.check(limiter.class_of(path), charge).await;
        if let Some(outcome) = &outcome
            && !outcome.decision.allowed
        {
            return Err(ratelimit::refusal(outcome));
        }
        Ok(Admitted {
            caller,
            refusals: self.refusals_at(path, headers, peer),
            outcome,
        })
    }
}

/// Where a WebSocket connect may carry its token.
#[derive(Debug, Clone, Copy)]
pub enum ConnectToken {
    /// `Authorization: Bearer` only.
    Header,
    /// `Authorization: Bearer`, else an offered subprotocol `<prefix><jwt>` (browsers cannot
    /// set headers on a WebSocket).
    HeaderOrSubprotocol(&'static str),
}

impl ConnectToken {
    /// The token `headers` carry, if any; an `Authorization` header that is not a bearer token
    /// is an error.
    fn token_in(self, headers: &HeaderMap) -> Result<Option<String>, AuthError> {
        if let Some(token) = bearer_from_headers(headers)? {
            return Ok(Some(token.to_owned()));
        }
        let ConnectToken::HeaderOrSubprotocol(prefix) = self else {
            return Ok(None);
        };
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|p| p.strip_prefix(prefix))
            .map(str::to_owned);
        Ok(offered)
    }
}

/// A WebSocket connect that [`EdgeAuth::verify_at_connect`] admitted.
pub struct Admitted {
    /// The verified caller of a token sent at connect, and that token.
    pub caller: Option<(Claims, BearerToken)>,
    /// Charges a token refused later on the socket to the connect's client address.
    pub refusals: RefusalCharge,
    /// The connect's rate-limit decision (`None` when limits are off), for the upgrade's
    /// `RateLimit-*` headers.
    pub outcome: Option<Outcome>,
}

/// Charges tokens refused after the upgrade (`/ws`'s `auth` message, GraphQL's
/// `connection_init`) to the client address of the connect, as [`EdgeAuth::refuse`] charges
/// those refused at connect. Holds the charge, not the request's headers.
#[derive(Clone)]
pub struct RefusalCharge {
    /// The limiter, the route class and the address; `None` when refusals are not charged.
    to: Option<(RateLimiter, String, Charge)>,
}

impl RefusalCharge {
    /// Charges one refused token: the decision (`None` when refusals are not charged or
    /// limits are off); not allowed once the address's quota is spent.
    pub async fn charge(&self) -> Option<Outcome> {
        let (limiter, class, charge) = self.to.as_ref()?;
        limiter.check(class, charge.clone()).await
    }

    /// Logs one token refused on an open socket of `endpoint` and charges it. `Some` only
    /// when the address's quota is spent, with the refusing decision: the socket then answers
    /// a rate-limit error instead of an authentication one.
    pub async fn charge_on_socket(
        &self,
        endpoint: SocketEndpoint,
        error: &AuthError,
    ) -> Option<Outcome> {
        let endpoint = endpoint.as_str();
        // The address (block) it is charged to, when refusals are charged.
        let client = self.to.as_ref().map(|(_, _, charge)| charge.key.as_str());
        tracing::info!(target: target::SECURITY, endpoint, client, reason = error.reason(), %error, "websocket token refused");
        let outcome = self
            .charge()
            .await
            .filter(|outcome| !outcome.decision.allowed)?;
        tracing::info!(
            target: target::SECURITY,
            endpoint,
            tier = outcome.charge.tier.as_str(),
            class = %outcome.class,
            retry_after_secs = outcome.retry_after_secs(),
            "websocket token refusal rate limited"
        );
        Some(outcome)
    }
}

/// Middleware: the verified caller's [`Claims`] and [`BearerToken`] into the extensions, or
/// the refusal. Without a token the request passes only when auth is not required, or when it
/// reads a public path (`routing.public_paths`, `GET` or `HEAD`: discovery documents).
pub async fn authenticate(
    State(tokens): State<EdgeAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads
        && request.headers().get(header::AUTHORIZATION).is_none()
        && tokens
            .public
            .iter()
            .any(|p| crate::config::public_path_matches(p, request.uri().path()))
    {
        return next.run(request).await;
    }
    let refused = match bearer_from_headers(request.headers()) {
        Ok(Some(token)) => {
            let token = token.to_owned();
            match tokens.verify(&token).await {
                Ok(claims) => {
                    let extensions = request.extensions_mut();
                    extensions.insert(claims);
                    extensions.insert(BearerToken::new(token));
                    return next.run(request).await;
                }
                Err(error) => error,
            }
        }
        Ok(None) if !tokens.verifier.required() => return next.run(request).await,
        Ok(None) => AuthError::MissingToken,
        Err(error) => error,
    };
    let peer = ratelimit::peer_of(&request);
    tokens
        .refuse(&refused, request.uri().path(), request.headers(), peer)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_the_header_or_the_subprotocol_where_one_is_named() {
        let sources = ConnectToken::HeaderOrSubprotocol("bearer.");
        let mut h = HeaderMap::new();
        assert_eq!(sources.token_in(&h).unwrap(), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "liquid.v1, bearer.aaa.bbb.ccc".parse().unwrap(),
        );
        assert_eq!(
            sources.token_in(&h).unwrap().as_deref(),
            Some("aaa.bbb.ccc")
        );
        assert_eq!(ConnectToken::Header.token_in(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Bearer hdr".parse().unwrap());
        assert_eq!(sources.token_in(&h).unwrap().as_deref(), Some("hdr"));
        assert_eq!(
            ConnectToken::Header.token_in(&h).unwrap().as_deref(),
            Some("hdr")
        );
        h.insert(header::AUTHORIZATION, "Basic x".parse().unwrap());
        assert!(sources.token_in(&h).is_err());
        assert!(ConnectToken::Header.token_in(&h).is_err());
    }
}
