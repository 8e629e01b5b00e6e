//! Token verification as callers meet it: the layer in front of a router, every kind of bad
//! token refused with the right status and stable code, good tokens of each algorithm accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use http::{Request, StatusCode};
use liquid_auth::{AuthConfig, AuthLayer, Authenticated, SigningKey, TokenRequest, Verifier};
use tower::ServiceExt;

const ISS: &str = "liquid-test";
const AUD: &str = "liquid";

struct Fixture {
    _dir: tempfile::TempDir,
    key: SigningKey,
    verifier: Arc<Verifier>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::load_or_generate(&dir.path().join("k.pem")).unwrap();
    let public = dir.path().join("k.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let verifier = Arc::new(
        Verifier::from_config(&AuthConfig::dev_public_key(&public, ISS, AUD))
            .await
            .unwrap(),
    );
    Fixture {
        _dir: dir,
        key,
        verifier,
    }
}

fn request(scopes: &[&str]) -> TokenRequest {
    TokenRequest::user("alice", scopes.iter().copied())
        .tenant("acme")
        .issuer(ISS)
        .audience(AUD)
}

async fn call(verifier: &Arc<Verifier>, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let app = Router::new()
        .route(
            "/api/v1/x/trade",
            get(|Authenticated(c): Authenticated| async move {
                c.require("write:trades")
                    .map_err(|e| liquid_kit::ApiError::from_error(&e))?;
                Ok::<_, liquid_kit::ApiError>(format!("{}@{}", c.sub, c.tenant_id()))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(AuthLayer::new(verifier.clone()));
    let mut req = Request::get("/api/v1/x/trade");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_valid_eddsa_token_with_the_scope_is_accepted() {
    let f = fixture().await;
    let token = f.key.mint(&request(&["write:trades"])).unwrap();
    let (status, body) = call(&f.verifier, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "alice@acme");
    let admin = f.key.mint(&request(&["admin:*"])).unwrap();
    assert_eq!(call(&f.verifier, Some(&admin)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_stable_codes() {
    let f = fixture().await;
    let other = SigningKey::generate().unwrap();
    let forged = other.mint(&request(&["write:trades"])).unwrap();
    let expired = f
        .key
        .mint(&request(&["write:trades"]).ttl(Duration::from_secs(1)))
        .unwrap();
    let wrong_aud = f
        .key
        .mint(&request(&["write:trades"]).audience("someone-else"))
        .unwrap();
    let wrong_iss = f
        .key
        .mint(&request(&["write:trades"]).issuer("evil"))
        .unwrap();
    let wrong_scope = f.key.mint(&request(&["read:prices"])).unwrap();
    // alg "none": a header and claims with an empty signature.
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(
            serde_json::json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 600, "scope": "admin:*"})
        )
    );
    // The expiry case uses a verifier without leeway, so the test waits 2 s rather than 31 s.
    let strict = {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("k.pub.pem");
        std::fs::write(&public, f.key.public_key_pem()).unwrap();
        let mut cfg = AuthConfig::dev_public_key(&public, ISS, AUD);
        cfg.leeway_secs = 0;
        Arc::new(Verifier::from_config(&cfg).await.unwrap())
    };
    tokio::time::sleep(Duration::from_millis(2100)).await;

    for (name, verifier, token, status, code) in [
        (
            "missing",
            &f.verifier,
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "garbage",
            &f.verifier,
            Some("not.a.jwt"),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "forged",
            &f.verifier,
            Some(forged.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "expired",
            &strict,
            Some(expired.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "wrong audience",
            &f.verifier,
            Some(wrong_aud.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "wrong issuer",
            &f.verifier,
            Some(wrong_iss.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "alg none",
            &f.verifier,
            Some(none.as_str()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "wrong scope",
            &f.verifier,
            Some(wrong_scope.as_str()),
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
    ] {
        let (got, body) = call(verifier, token).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
    }
    let err = strict.verify(&expired).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn probes_need_no_token() {
    let f = fixture().await;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .layer(AuthLayer::new(f.verifier.clone()));
    let resp = app
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_dev_key_survives_a_reload_and_tokens_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    let first = SigningKey::load_or_generate(&path).unwrap();
    let second = SigningKey::load_or_generate(&path).unwrap();
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.public_key_pem(), second.public_key_pem());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[tokio::test]
async fn es256_keys_from_a_jwks_file_and_hs256_only_when_allowed() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec1", "x": enc(&point[1..33]), "y": enc(&point[33..65])}]});
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let cfg = AuthConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_file: Some(jwks_path),
        ..AuthConfig::default()
    };
    let verifier = Arc::new(Verifier::from_config(&cfg).await.unwrap());
    let claims = serde_json::json!({"sub": "svc", "iss": ISS, "aud": AUD, "exp": now() + 600, "scope": "write:trades"});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    assert_eq!(call(&verifier, Some(&token)).await.0, StatusCode::OK);
    header.kid = Some("unknown".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    assert_eq!(
        call(&verifier, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // HS256 with the development secret: refused by validation unless explicitly allowed.
    let secret = "0123456789abcdef0123456789abcdef";
    let mut cfg = AuthConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        hs256_secret: liquid_kit::Secret::new(secret.into()),
        ..AuthConfig::default()
    };
    use liquid_kit::config::Validate;
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("auth.hs256_secret")
    );
    cfg.allow_hs256_dev = true;
    cfg.validate().unwrap();
    let verifier = Arc::new(Verifier::from_config(&cfg).await.unwrap());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(call(&verifier, Some(&token)).await.0, StatusCode::OK);
    // An HS256 token against a deployment that only has an EdDSA key: refused.
    let f = fixture().await;
    assert_eq!(
        call(&f.verifier, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}
