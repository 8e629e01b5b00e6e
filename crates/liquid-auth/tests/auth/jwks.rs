//! JWKS from a URL served by a local axum server: fetched at start, rotated keys picked up on
//! an unknown kid (rate limited) and by the periodic reload, retired keys dropped, and a broken
//! endpoint neither stops verification nor a bad start going unnoticed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use liquid_auth::scopes::WRITE_TRADES;
use liquid_auth::{AuthConfig, AuthError, AuthLayer, Verifier};
use liquid_kit::error::{ErrorCode, HasErrorCode};

use crate::common::*;

#[derive(Clone)]
struct Idp {
    set: Arc<Mutex<Option<JwkSet>>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    fn publish(&self, keys: &[&TestKey]) {
        *self.set.lock().unwrap() = Some(jwks(keys));
    }

    fn break_down(&self) {
        *self.set.lock().unwrap() = None;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks_endpoint(State(idp): State<Idp>) -> Result<axum::Json<JwkSet>, StatusCode> {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    idp.set
        .lock()
        .unwrap()
        .clone()
        .map(axum::Json)
        .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn idp(keys: &[&TestKey]) -> (Idp, SocketAddr) {
    let idp = Idp {
        set: Arc::new(Mutex::new(None)),
        fetches: Arc::new(AtomicUsize::new(0)),
    };
    idp.publish(keys);
    let app = Router::new()
        .route("/.well-known/jwks.json", get(jwks_endpoint))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (idp, addr)
}

fn url_config(addr: SocketAddr, min_refetch: u64, refresh: u64) -> AuthConfig {
    AuthConfig {
        issuer: ISS.into(),
        audience: vec![AUD.into()],
        jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
        jwks_min_refetch_secs: min_refetch,
        jwks_refresh_secs: refresh,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn a_rotated_in_key_is_picked_up_on_its_first_token_and_a_retired_one_is_dropped() {
    let old = TestKey::eddsa("2026-01");
    let new = TestKey::es256("2026-02");
    let (idp, addr) = idp(&[&old]).await;
    let router = app(AuthLayer::new(verifier(&url_config(addr, 0, 3600)).await));
    assert_eq!(idp.fetches(), 1);
    assert_eq!(
        trade(&router, &old.sign(&claims(WRITE_TRADES)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(idp.fetches(), 1, "a known kid must not cause a fetch");

    // The new key signs before the IdP publishes it: refused as unknown after one refetch.
    let early = trade(&router, &new.sign(&claims(WRITE_TRADES))).await;
    assert_eq!(early.reason(), "unknown_key", "{}", early.body);
    assert_eq!(idp.fetches(), 2);

    // Published next to the old one: accepted, the old one still is.
    idp.publish(&[&old, &new]);
    assert_eq!(
        trade(&router, &new.sign(&claims(WRITE_TRADES)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        trade(&router, &old.sign(&claims(WRITE_TRADES)))
            .await
            .status,
        StatusCode::OK
    );

    // The old key is retired: its tokens stop working after the next reload.
    idp.publish(&[&new]);
    let stranger = TestKey::eddsa("probe");
    assert_eq!(
        trade(&router, &stranger.sign(&claims(WRITE_TRADES)))
            .await
            .reason(),
        "unknown_key"
    );
    assert_eq!(
        trade(&router, &old.sign(&claims(WRITE_TRADES)))
            .await
            .reason(),
        "unknown_key"
    );
    assert_eq!(
        trade(&router, &new.sign(&claims(WRITE_TRADES)))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_verifier_hammer_the_idp() {
    let known = TestKey::eddsa("known");
    let (idp, addr) = idp(&[&known]).await;
    let verifier = verifier(&url_config(addr, 3600, 3600)).await;
    for i in 0..20 {
        let random = TestKey::eddsa(&format!("random-{i}"));
        let err = verifier
            .verify_or_refresh(&random.sign(&claims(WRITE_TRADES)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AuthError::UnknownKey {
                kid: format!("random-{i}")
            }
        );
    }
    assert_eq!(
        idp.fetches(),
        1,
        "the start-up fetch was recent: no refetch allowed"
    );
    // An explicit refresh ignores the rate limit.
    let late = TestKey::eddsa("late");
    idp.publish(&[&known, &late]);
    verifier.refresh().await.unwrap();
    assert_eq!(idp.fetches(), 2);
    assert!(verifier.verify(&late.sign(&claims(WRITE_TRADES))).is_ok());
}

#[tokio::test]
async fn the_periodic_reload_picks_up_new_keys_without_any_token_asking() {
    let first = TestKey::eddsa("first");
    let second = TestKey::eddsa("second");
    let (idp, addr) = idp(&[&first]).await;
    let verifier = verifier(&url_config(addr, 3600, 1)).await;
    idp.publish(&[&first, &second]);
    let mut waited = Duration::ZERO;
    while !verifier.key_ids().contains(&"second".to_owned()) {
        assert!(
            waited < Duration::from_secs(20),
            "the periodic reload never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    // The synchronous path (no refetch) now knows the key.
    assert!(verifier.verify(&second.sign(&claims(WRITE_TRADES))).is_ok());
}

#[tokio::test]
async fn a_broken_idp_keeps_the_keys_in_hand_and_a_dead_one_fails_start_up() {
    let key = TestKey::rs256("rsa");
    let (idp, addr) = idp(&[&key]).await;
    let verifier = verifier(&url_config(addr, 0, 3600)).await;
    idp.break_down();
    let err = verifier.refresh().await.unwrap_err();
    assert!(matches!(err, AuthError::Jwks { .. }), "{err}");
    assert!(verifier.verify(&key.sign(&claims(WRITE_TRADES))).is_ok());

    let err = Verifier::from_config(&url_config(addr, 0, 3600))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert_eq!(err.error_code(), ErrorCode::Unavailable);

    // Nothing listens here.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = Verifier::from_config(&url_config(dead, 0, 3600))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Jwks { .. }), "{err}");
}

#[tokio::test]
async fn a_jwks_file_is_reread_when_a_token_names_a_new_kid() {
    let old = TestKey::eddsa("old");
    let new = TestKey::eddsa("new");
    let files = Files::new();
    let cfg = AuthConfig {
        jwks_min_refetch_secs: 0,
        ..files.jwks_config(&jwks(&[&old]))
    };
    let verifier = verifier(&cfg).await;
    assert_eq!(verifier.key_ids(), ["old"]);
    files.write(
        "jwks.json",
        &serde_json::to_string(&jwks(&[&old, &new])).unwrap(),
    );
    let claims = verifier
        .verify_or_refresh(&new.sign(&claims(WRITE_TRADES)))
        .await
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(verifier.key_ids(), ["old", "new"]);
}
