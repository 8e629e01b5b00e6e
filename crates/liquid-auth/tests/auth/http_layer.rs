//! The auth layer in front of an axum router: every refusal with its status, code and reason,
//! every accepted algorithm, public paths, optional auth and scope checks.

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use liquid_auth::scopes::{ADMIN, COWORK_WRITE, READ_PRICES, WRITE_TRADES};
use liquid_auth::{
    AuthConfig, AuthError, AuthLayer, PrincipalKind, PublicKeyAlgorithm, SigningKey, TokenRequest,
    Verifier,
};
use liquid_kit::Secret;
use liquid_kit::error::{ErrorCode, HasErrorCode};
use serde_json::json;

use crate::common::*;

const HS_SECRET: &str = "0123456789abcdef0123456789abcdef";

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// An EdDSA deployment: the dev key's public PEM, as `liquid up` configures it.
struct Ed {
    _files: Files,
    key: SigningKey,
    router: axum::Router,
}

async fn ed(config: impl FnOnce(AuthConfig) -> AuthConfig) -> Ed {
    let files = Files::new();
    let key = SigningKey::generate().unwrap();
    let cfg = config(files.pem_config(&key.public_key_pem(), PublicKeyAlgorithm::EdDSA));
    let router = app(AuthLayer::new(verifier(&cfg).await));
    Ed {
        _files: files,
        key,
        router,
    }
}

#[tokio::test]
async fn a_valid_eddsa_token_with_the_scope_reaches_the_handler_with_its_claims() {
    let d = ed(|c| c).await;
    let token = d.key.mint(&request(&[WRITE_TRADES])).unwrap();
    let a = trade(&d.router, &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["sub"], "alice");
    assert_eq!(a.body["tenant"], "acme");
    assert_eq!(a.body["kind"], "user");
    // Wildcards: admin:* grants everything.
    let admin = d.key.mint(&request(&[ADMIN])).unwrap();
    assert_eq!(trade(&d.router, &admin).await.status, StatusCode::OK);
    // No tenant claim: the subject is the tenant.
    let solo = d
        .key
        .mint(
            &TokenRequest::user("bob", [WRITE_TRADES])
                .issuer(ISS)
                .audience(AUD),
        )
        .unwrap();
    assert_eq!(trade(&d.router, &solo).await.body["tenant"], "bob");
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_own_reason() {
    let d = ed(|c| AuthConfig {
        leeway_secs: 30,
        ..c
    })
    .await;
    let forger = SigningKey::generate().unwrap();
    let good = request(&[WRITE_TRADES]);
    let valid = d.key.mint(&good).unwrap();

    let forged = forger.mint(&good).unwrap();
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        let mut c = claims("admin:*");
        c["sub"] = json!("mallory");
        parts[1] = b64(&c);
        parts.join(".")
    };
    let expired = d
        .key
        .mint(&good.clone().issued_at(now() - hours(2)).ttl(hours(1)))
        .unwrap();
    let future = d
        .key
        .mint(&good.clone().not_before(now() + hours(1)))
        .unwrap();
    let wrong_aud = d.key.mint(&good.clone().audience("someone-else")).unwrap();
    let wrong_iss = d.key.mint(&good.clone().issuer("evil")).unwrap();
    let wrong_scope = d.key.mint(&request(&[READ_PRICES])).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("admin:*"))
    );
    // Algorithm confusion: HS256 "signed" with the public key as the HMAC secret.
    let confused = {
        let secret = d.key.public_key_pem();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims("admin:*"),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let es256 = TestKey::es256("ec").sign(&claims(WRITE_TRADES));
    let no_sub = {
        let mut c = claims(WRITE_TRADES);
        c.as_object_mut().unwrap().remove("sub");
        let enc =
            jsonwebtoken::EncodingKey::from_ed_pem(d.key.private_key_pem().expose().as_bytes())
                .unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &c,
            &enc,
        )
        .unwrap()
    };

    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Option<String>, StatusCode, &str, &str)> = vec![
        (
            "missing",
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing_token",
        ),
        (
            "basic auth",
            Some("Basic YWxpY2U6cHc=".into()),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "malformed_token",
        ),
        (
            "garbage",
            Some(bearer("not.a.jwt")),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "malformed_token",
        ),
        (
            "forged",
            Some(bearer(&forged)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "bad_signature",
        ),
        (
            "tampered",
            Some(bearer(&tampered)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "bad_signature",
        ),
        (
            "expired",
            Some(bearer(&expired)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "expired",
        ),
        (
            "not yet valid",
            Some(bearer(&future)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "not_yet_valid",
        ),
        (
            "wrong audience",
            Some(bearer(&wrong_aud)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong_audience",
        ),
        (
            "wrong issuer",
            Some(bearer(&wrong_iss)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong_issuer",
        ),
        (
            "alg none",
            Some(bearer(&alg_none)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "alg_none",
        ),
        (
            "hs256 confusion",
            Some(bearer(&confused)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "algorithm_not_allowed",
        ),
        (
            "es256 without es256 key",
            Some(bearer(&es256)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "algorithm_not_allowed",
        ),
        (
            "no sub",
            Some(bearer(&no_sub)),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing_claim",
        ),
        (
            "wrong scope",
            Some(bearer(&wrong_scope)),
            StatusCode::FORBIDDEN,
            "permission_denied",
            "missing_scope",
        ),
    ];
    for (name, auth, status, code, reason) in cases {
        let a = call(&d.router, "POST", "/api/v1/trades", auth.as_deref()).await;
        assert_eq!(a.status, status, "{name}: {}", a.body);
        assert_eq!(a.code(), code, "{name}: {}", a.body);
        assert_eq!(a.reason(), reason, "{name}: {}", a.body);
        assert!(
            !a.body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{name}"
        );
    }
    let denied = trade(&d.router, &wrong_scope).await;
    assert_eq!(denied.body["error"]["details"]["scope"], WRITE_TRADES);
    assert!(
        denied.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(WRITE_TRADES)
    );
    assert!(
        denied.headers[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    let missing = call(&d.router, "POST", "/api/v1/trades", None).await;
    assert!(missing.headers.contains_key(http::header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn leeway_applies_to_expiry_and_not_before() {
    let lenient = ed(|c| AuthConfig {
        leeway_secs: 60,
        ..c
    })
    .await;
    let strict_files = Files::new();
    let strict = verifier(&AuthConfig {
        leeway_secs: 0,
        ..strict_files.pem_config(&lenient.key.public_key_pem(), PublicKeyAlgorithm::EdDSA)
    })
    .await;
    let just_expired = lenient
        .key
        .mint(
            &request(&[WRITE_TRADES])
                .issued_at(now() - Duration::from_secs(100))
                .ttl(Duration::from_secs(90)),
        )
        .unwrap();
    let almost_valid = lenient
        .key
        .mint(&request(&[WRITE_TRADES]).not_before(now() + Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        trade(&lenient.router, &just_expired).await.status,
        StatusCode::OK
    );
    assert_eq!(
        trade(&lenient.router, &almost_valid).await.status,
        StatusCode::OK
    );
    assert_eq!(
        strict.verify(&just_expired).unwrap_err(),
        AuthError::Expired
    );
    assert_eq!(
        strict.verify(&almost_valid).unwrap_err(),
        AuthError::NotYetValid
    );
}

#[tokio::test]
async fn es256_and_rs256_from_pem_files_are_accepted() {
    for key in [TestKey::es256("ec-1"), TestKey::rs256("rsa-1")] {
        let files = Files::new();
        let alg = match key.alg {
            jsonwebtoken::Algorithm::ES256 => PublicKeyAlgorithm::ES256,
            _ => PublicKeyAlgorithm::RS256,
        };
        let router = app(AuthLayer::new(
            verifier(&files.pem_config(&key.public_pem, alg)).await,
        ));
        let a = trade(&router, &key.sign(&claims(WRITE_TRADES))).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}: {}", key.alg, a.body);
        // Without a kid too: one key, no ambiguity.
        let a = trade(&router, &key.sign_without_kid(&claims(WRITE_TRADES))).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}: {}", key.alg, a.body);
        // A different key of the same algorithm is a forgery.
        let other = if key.alg == jsonwebtoken::Algorithm::ES256 {
            TestKey::es256("x")
        } else {
            TestKey::rs256("x")
        };
        let a = trade(&router, &other.sign(&claims(WRITE_TRADES))).await;
        assert_eq!(a.reason(), "bad_signature", "{:?}", key.alg);
        assert!(!key.private_pem.is_empty());
    }
}

#[tokio::test]
async fn a_jwks_file_with_every_algorithm_picks_keys_by_kid() {
    let ed = TestKey::eddsa("ed-1");
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let files = Files::new();
    let router = app(AuthLayer::new(
        verifier(&files.jwks_config(&jwks(&[&ed, &ec, &rsa]))).await,
    ));
    for key in [&ed, &ec, &rsa] {
        let a = trade(&router, &key.sign(&claims(WRITE_TRADES))).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}: {}", key.alg, a.body);
    }
    // The header's alg must be the named key's algorithm.
    let mut mislabelled = TestKey::es256("ed-1");
    mislabelled.kid = "ed-1".into();
    let a = trade(&router, &mislabelled.sign(&claims(WRITE_TRADES))).await;
    assert_eq!(a.reason(), "algorithm_not_allowed_for_key", "{}", a.body);
    // A kid the set does not know.
    let stranger = TestKey::eddsa("nobody");
    assert_eq!(
        trade(&router, &stranger.sign(&claims(WRITE_TRADES)))
            .await
            .reason(),
        "unknown_key"
    );
    // A known kid on a token some other key signed.
    let mut impostor = TestKey::eddsa("x");
    impostor.kid = "ed-1".into();
    assert_eq!(
        trade(&router, &impostor.sign(&claims(WRITE_TRADES)))
            .await
            .reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn a_token_without_kid_is_refused_when_several_keys_could_have_signed_it() {
    let a = TestKey::eddsa("a");
    let b = TestKey::eddsa("b");
    let rsa = TestKey::rs256("r");
    let files = Files::new();
    let router = app(AuthLayer::new(
        verifier(&files.jwks_config(&jwks(&[&a, &b, &rsa]))).await,
    ));
    let answer = trade(&router, &a.sign_without_kid(&claims(WRITE_TRADES))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.reason(), "missing_kid", "{}", answer.body);
    // The only RSA key is unambiguous.
    let answer = trade(&router, &rsa.sign_without_kid(&claims(WRITE_TRADES))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn hs256_is_accepted_only_when_the_development_secret_is_enabled() {
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(WRITE_TRADES),
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let enabled = ed(|c| AuthConfig {
        allow_hs256_dev: true,
        hs256_secret: Secret::new(HS_SECRET.into()),
        ..c
    })
    .await;
    let a = trade(&enabled.router, &hs).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // The EdDSA key keeps working next to it.
    let ed_token = enabled.key.mint(&request(&[WRITE_TRADES])).unwrap();
    assert_eq!(
        trade(&enabled.router, &ed_token).await.status,
        StatusCode::OK
    );
    // Signed with another secret.
    let wrong = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(WRITE_TRADES),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        trade(&enabled.router, &wrong).await.reason(),
        "bad_signature"
    );

    let disabled = ed(|c| c).await;
    let a = trade(&disabled.router, &hs).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.reason(), "algorithm_not_allowed");
}

#[tokio::test]
async fn public_paths_pass_without_a_token_and_nothing_else_does() {
    let d = ed(|c| c).await;
    assert_eq!(
        call(&d.router, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
    // A bad token on a public path is not even looked at.
    assert_eq!(
        call(&d.router, "GET", "/healthz", Some("Bearer junk"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&d.router, "GET", "/api/v1/whoami", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // An unknown path still needs a token: nothing about the routes leaks to strangers.
    assert_eq!(
        call(&d.router, "GET", "/nope", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn require_scope_on_a_route_answers_403_with_the_scope_and_wildcards_apply() {
    let d = ed(|c| c).await;
    let path = "/api/v1/cowork/sessions";
    for (scopes, status) in [
        (vec!["cowork:read"], StatusCode::FORBIDDEN),
        (vec!["media:*"], StatusCode::FORBIDDEN),
        (vec![COWORK_WRITE], StatusCode::OK),
        (vec!["cowork:*"], StatusCode::OK),
        (vec![ADMIN], StatusCode::OK),
    ] {
        let token = d.key.mint(&request(&scopes)).unwrap();
        let a = call(&d.router, "POST", path, Some(&format!("Bearer {token}"))).await;
        assert_eq!(a.status, status, "{scopes:?}: {}", a.body);
        if status == StatusCode::FORBIDDEN {
            assert_eq!(a.code(), "permission_denied");
            assert_eq!(a.body["error"]["details"]["scope"], COWORK_WRITE);
        } else {
            assert_eq!(a.body, "acme");
        }
    }
}

#[tokio::test]
async fn optional_auth_lets_anonymous_callers_through_but_still_checks_sent_tokens() {
    let d = ed(|c| AuthConfig {
        required: false,
        ..c
    })
    .await;
    let a = call(&d.router, "GET", "/api/v1/whoami", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, Some("anonymous"))
    );
    // A handler that needs an identity still refuses.
    assert_eq!(
        call(&d.router, "POST", "/api/v1/trades", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let token = d.key.mint(&request(&[])).unwrap();
    let a = call(
        &d.router,
        "GET",
        "/api/v1/whoami",
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(a.body, "alice");
    let a = call(&d.router, "GET", "/api/v1/whoami", Some("Bearer not.a.jwt")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_callers_token_is_available_for_forwarding() {
    let d = ed(|c| c).await;
    let token = d.key.mint(&request(&[])).unwrap();
    let a = call(
        &d.router,
        "GET",
        "/api/v1/forward",
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(a.body, token.as_str());
}

#[tokio::test]
async fn service_tokens_are_minted_cached_and_accepted_as_services() {
    let d = ed(|c| c).await;
    let source = liquid_auth::ServiceTokenSource::new(
        std::sync::Arc::new(
            SigningKey::from_pkcs8_pem(
                d.key.private_key_pem().expose(),
                std::path::Path::new("mem"),
            )
            .unwrap(),
        ),
        TokenRequest::service("cowork", [WRITE_TRADES])
            .issuer(ISS)
            .audience(AUD),
    );
    let token = source.token().unwrap();
    assert_eq!(source.token().unwrap(), token);
    let a = trade(&d.router, token.expose()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["kind"], "service");
    assert_eq!(a.body["sub"], "cowork");
    assert_eq!(
        d_verify_kind(&d, token.expose()).await,
        PrincipalKind::Service
    );
}

async fn d_verify_kind(d: &Ed, token: &str) -> PrincipalKind {
    let files = Files::new();
    let v = verifier(&files.pem_config(&d.key.public_key_pem(), PublicKeyAlgorithm::EdDSA)).await;
    v.verify(token).unwrap().kind
}

#[tokio::test]
async fn a_verifier_needs_a_key_when_auth_is_required() {
    let err = Verifier::from_config(&AuthConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::NoKeySource);
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
    let optional = Verifier::from_config(&AuthConfig {
        required: false,
        ..AuthConfig::default()
    })
    .await
    .unwrap();
    assert!(!optional.required());
    let mut cfg =
        AuthConfig::dev_public_key(std::path::Path::new("/nonexistent/key.pem"), ISS, AUD);
    let err = Verifier::from_config(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
    // An ES256 key file configured as EdDSA is named, not silently ignored.
    let files = Files::new();
    cfg = files.pem_config(&TestKey::es256("e").public_pem, PublicKeyAlgorithm::EdDSA);
    let err = Verifier::from_config(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("public.pem"), "{err}");
}
