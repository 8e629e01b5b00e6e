//! Keys, tokens and a router shared by the integration tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::body::Body;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use http::{Request, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use liquid_auth::scopes::{COWORK_WRITE, WRITE_TRADES};
use liquid_auth::{
    AuthConfig, AuthError, AuthLayer, Authenticated, BearerToken, PublicKeyAlgorithm, RequireScope,
    SigningKey, TokenRequest, Verifier,
};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const ISS: &str = "liquid-test";
pub const AUD: &str = "liquid";

pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// Standard claims for hand-built tokens.
pub fn claims(scope: &str) -> Value {
    let t = unix(now());
    json!({"sub": "alice", "tenant": "acme", "iss": ISS, "aud": AUD, "iat": t, "nbf": t, "exp": t + 600, "scope": scope})
}

pub fn request(scopes: &[&str]) -> TokenRequest {
    TokenRequest::user("alice", scopes.iter().copied())
        .tenant("acme")
        .issuer(ISS)
        .audience(AUD)
}

/// A key pair of one of the asymmetric algorithms, with everything a test needs.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub public_pem: String,
    pub private_pem: String,
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        TestKey {
            alg: Algorithm::ES256,
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
            private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        }
    }

    pub fn rs256(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap();
        let spki: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        TestKey {
            alg: Algorithm::RS256,
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
            private_pem,
        }
    }

    pub fn eddsa(kid: &str) -> TestKey {
        let key = SigningKey::generate().unwrap();
        let private_pem = key.private_key_pem().expose().clone();
        TestKey {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            encoding: EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
            public_pem: key.public_key_pem(),
            private_pem,
        }
    }

    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// Signs `claims` with a `kid` header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// Signs `claims` without a `kid` header.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).unwrap()
    }
}

pub fn jwks(keys: &[&TestKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    }
}

/// A directory for key files that lives as long as the test.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Verification with one PEM public key.
    pub fn pem_config(&self, public_pem: &str, algorithm: PublicKeyAlgorithm) -> AuthConfig {
        AuthConfig {
            issuer: ISS.into(),
            audience: vec![AUD.into()],
            public_key_pem_file: Some(self.write("public.pem", public_pem)),
            public_key_algorithm: algorithm,
            ..AuthConfig::default()
        }
    }

    /// Verification with a JWKS file.
    pub fn jwks_config(&self, set: &JwkSet) -> AuthConfig {
        AuthConfig {
            issuer: ISS.into(),
            audience: vec![AUD.into()],
            jwks_file: Some(self.write("jwks.json", &serde_json::to_string(set).unwrap())),
            ..AuthConfig::default()
        }
    }
}

pub async fn verifier(config: &AuthConfig) -> Arc<Verifier> {
    Arc::new(Verifier::from_config(config).await.unwrap())
}

/// A router shaped like a service's: a scope check in the handler, a scope layer on a route,
/// an optional-identity route, a forwarding route and a probe, all behind the auth layer.
pub fn app(layer: AuthLayer) -> Router {
    Router::new()
        .route(
            "/api/v1/trades",
            post(|Authenticated(c): Authenticated| async move {
                c.require(WRITE_TRADES)?;
                Ok::<_, AuthError>(Json(json!({
                    "sub": c.sub, "tenant": c.tenant_id(), "kind": c.kind, "scopes": c.scopes
                })))
            }),
        )
        .route(
            "/api/v1/cowork/sessions",
            post(|a: Authenticated| async move { a.tenant_id().to_owned() })
                .layer(RequireScope::new(COWORK_WRITE)),
        )
        .route(
            "/api/v1/whoami",
            get(|a: Option<Authenticated>| async move {
                a.map_or_else(|| "anonymous".to_owned(), |a| a.sub.clone())
            }),
        )
        .route(
            "/api/v1/forward",
            get(|t: BearerToken| async move { t.expose().to_owned() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn reason(&self) -> &str {
        self.body["error"]["details"]["reason"]
            .as_str()
            .unwrap_or("")
    }
}

pub async fn call(
    router: &Router,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// POST /api/v1/trades with `token`.
pub async fn trade(router: &Router, token: &str) -> Answer {
    call(
        router,
        "POST",
        "/api/v1/trades",
        Some(&format!("Bearer {token}")),
    )
    .await
}

pub fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}
