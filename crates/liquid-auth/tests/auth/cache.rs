//! The cache of verified tokens answers exactly what a full verification would: the same claims
//! for the same token, a refusal for any edited or forged token (never remembered), a refusal
//! once the token expires, and a refusal as soon as its key is retired from the JWKS.

use std::time::Duration;

use liquid_auth::scopes::WRITE_TRADES;
use liquid_auth::{AuthConfig, AuthError};
use serde_json::json;

use crate::common::*;

/// One character of the signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_remembered_token_answers_the_same_claims_and_an_edited_one_is_verified_and_refused() {
    let key = TestKey::eddsa("k1");
    let files = Files::new();
    for ttl in [60, 0] {
        let verifier = verifier(&AuthConfig {
            cache_ttl_secs: ttl,
            ..files.jwks_config(&jwks(&[&key]))
        })
        .await;
        let token = key.sign(&claims(WRITE_TRADES));
        let first = verifier.verify(&token).unwrap();
        let again = verifier.verify(&token).unwrap();
        assert_eq!(first, again, "ttl {ttl}");
        assert_eq!(again.sub, "alice");
        assert_eq!(again.tenant_id(), "acme");
        for _ in 0..2 {
            assert_eq!(
                verifier.verify(&tampered(&token)),
                Err(AuthError::BadSignature),
                "ttl {ttl}"
            );
        }
        let forged = TestKey::eddsa("k1").sign(&claims(WRITE_TRADES));
        for _ in 0..2 {
            assert_eq!(verifier.verify(&forged), Err(AuthError::BadSignature));
        }
        // The genuine token still passes after the refusals.
        assert_eq!(verifier.verify(&token).unwrap(), first);
    }
}

#[tokio::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let key = TestKey::eddsa("k1");
    let files = Files::new();
    let verifier = verifier(&AuthConfig {
        leeway_secs: 0,
        ..files.jwks_config(&jwks(&[&key]))
    })
    .await;
    let t = unix(now());
    let token = key.sign(&json!({
        "sub": "alice", "iss": ISS, "aud": AUD, "iat": t, "exp": t + 1, "scope": WRITE_TRADES
    }));
    assert!(verifier.verify(&token).is_ok());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(verifier.verify(&token), Err(AuthError::Expired));
}

#[tokio::test]
async fn a_remembered_token_is_refused_as_soon_as_its_key_is_retired() {
    let old = TestKey::eddsa("old");
    let new = TestKey::eddsa("new");
    let files = Files::new();
    let verifier = verifier(&files.jwks_config(&jwks(&[&old, &new]))).await;
    let token = old.sign(&claims(WRITE_TRADES));
    let other = new.sign(&claims(WRITE_TRADES));
    assert!(verifier.verify(&token).is_ok());
    assert!(verifier.verify(&other).is_ok());

    files.write("jwks.json", &serde_json::to_string(&jwks(&[&new])).unwrap());
    verifier.refresh().await.unwrap();
    assert!(
        matches!(verifier.verify(&token), Err(AuthError::UnknownKey { .. })),
        "{:?}",
        verifier.verify(&token)
    );
    assert_eq!(verifier.verify(&other).unwrap().sub, "alice");
}
