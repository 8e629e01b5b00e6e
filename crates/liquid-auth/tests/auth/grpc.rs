//! The same auth layer in front of a real tonic server: refusals arrive as gRPC statuses with
//! the stable code in metadata, accepted calls reach the handler with the caller's claims, and
//! gRPC health stays public by default.

use std::net::SocketAddr;
use std::sync::Arc;

use liquid_auth::scopes::{HEALER_READ, WRITE_TRADES};
use liquid_auth::{
    AuthInterceptor, AuthLayer, PublicKeyAlgorithm, PublicPaths, RequireScope, SigningKey,
    Verifier, claims_from_request,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response};

use crate::common::*;

/// A health service that reports the caller: it answers SERVING and puts `sub@tenant` in the
/// response metadata, read from the claims the layer verified.
struct WhoIsAsking;

#[tonic::async_trait]
impl Health for WhoIsAsking {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let claims = claims_from_request(&request)?;
        let mut response = tonic::Response::new(HealthCheckResponse {
            status: health_check_response::ServingStatus::Serving as i32,
        });
        let caller = format!("{}@{}", claims.sub, claims.tenant_id());
        response
            .metadata_mut()
            .insert("x-caller", MetadataValue::try_from(caller).unwrap());
        Ok(response)
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(tokio_stream::empty()))
    }
}

async fn serve(routes: tonic::service::Routes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn client(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    token: Option<&str>,
) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.check(request).await
}

fn stable_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-liquid-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

struct Deployment {
    _files: Files,
    key: SigningKey,
    verifier: Arc<Verifier>,
}

async fn deployment() -> Deployment {
    let files = Files::new();
    let key = SigningKey::generate().unwrap();
    let verifier =
        verifier(&files.pem_config(&key.public_key_pem(), PublicKeyAlgorithm::EdDSA)).await;
    Deployment {
        _files: files,
        key,
        verifier,
    }
}

#[tokio::test]
async fn grpc_refusals_are_statuses_with_the_stable_code_and_claims_reach_the_handler() {
    let d = deployment().await;
    // Health made private here so that the layer has something to guard; a scope on top.
    let router = tonic::service::Routes::new(HealthServer::new(WhoIsAsking))
        .into_axum_router()
        .layer(RequireScope::new(HEALER_READ))
        .layer(AuthLayer::new(d.verifier.clone()).public_paths(PublicPaths::none()));
    let addr = serve(tonic::service::Routes::from(router)).await;
    let mut c = client(addr).await;

    let status = check(&mut c, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(stable_code(&status), "unauthenticated");
    assert!(status.message().contains("bearer"), "{}", status.message());

    let forged = SigningKey::generate()
        .unwrap()
        .mint(&request(&[HEALER_READ]))
        .unwrap();
    let expired = d
        .key
        .mint(
            &request(&[HEALER_READ])
                .issued_at(now() - hours(3))
                .ttl(hours(1)),
        )
        .unwrap();
    let future = d
        .key
        .mint(&request(&[HEALER_READ]).not_before(now() + hours(1)))
        .unwrap();
    let wrong_aud = d
        .key
        .mint(&request(&[HEALER_READ]).audience("other"))
        .unwrap();
    let wrong_iss = d
        .key
        .mint(&request(&[HEALER_READ]).issuer("other"))
        .unwrap();
    let alg_none = {
        let b64 = |v: serde_json::Value| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                v.to_string(),
            )
        };
        format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none"})),
            b64(claims("admin:*"))
        )
    };
    for (name, token, needle) in [
        ("forged", &forged, "signature"),
        ("expired", &expired, "expired"),
        ("not yet valid", &future, "not valid yet"),
        ("wrong audience", &wrong_aud, "audience"),
        ("wrong issuer", &wrong_iss, "issuer"),
        ("garbage", &"a.b.c".to_owned(), "malformed"),
        ("alg none", &alg_none, "alg none"),
    ] {
        let status = check(&mut c, Some(token)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert_eq!(stable_code(&status), "unauthenticated", "{name}");
        assert!(
            status.message().contains(needle),
            "{name}: {}",
            status.message()
        );
    }

    let wrong_scope = d.key.mint(&request(&[WRITE_TRADES])).unwrap();
    let status = check(&mut c, Some(&wrong_scope)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(stable_code(&status), "permission_denied");
    assert!(
        status.message().contains(HEALER_READ),
        "{}",
        status.message()
    );

    for scope in [HEALER_READ, "healer:*", "admin:*"] {
        let token = d.key.mint(&request(&[scope])).unwrap();
        let response = check(&mut c, Some(&token)).await.unwrap();
        assert_eq!(
            response.get_ref().status,
            health_check_response::ServingStatus::Serving as i32
        );
        assert_eq!(
            response.metadata().get("x-caller").unwrap(),
            "alice@acme",
            "{scope}"
        );
    }
}

#[tokio::test]
async fn the_server_wide_layer_keeps_grpc_health_public_by_default() {
    let d = deployment().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(AuthLayer::new(d.verifier.clone()))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut c = client(addr).await;
    let response = check(&mut c, None).await.unwrap();
    assert_eq!(
        response.get_ref().status,
        health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn one_layer_wrapping_a_single_tonic_service_keeps_its_name() {
    let d = deployment().await;
    let layered = tower::Layer::layer(
        &AuthLayer::new(d.verifier.clone()).public_paths(PublicPaths::none()),
        HealthServer::new(WhoIsAsking),
    );
    let addr = serve(tonic::service::Routes::new(layered)).await;
    let mut c = client(addr).await;
    assert_eq!(
        check(&mut c, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let token = d.key.mint(&request(&[])).unwrap();
    let response = check(&mut c, Some(&token)).await.unwrap();
    assert_eq!(response.metadata().get("x-caller").unwrap(), "alice@acme");
}

#[tokio::test]
async fn the_interceptor_verifies_for_servers_without_the_layer() {
    let d = deployment().await;
    let svc = tonic::service::interceptor::InterceptedService::new(
        HealthServer::new(WhoIsAsking),
        AuthInterceptor::new(d.verifier.clone()),
    );
    let addr = serve(tonic::service::Routes::new(svc)).await;
    let mut c = client(addr).await;
    let status = check(&mut c, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(stable_code(&status), "unauthenticated");
    let expired = d
        .key
        .mint(&request(&[]).issued_at(now() - hours(3)).ttl(hours(1)))
        .unwrap();
    assert_eq!(
        check(&mut c, Some(&expired)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let token = d.key.mint(&request(&[])).unwrap();
    let response = check(&mut c, Some(&token)).await.unwrap();
    assert_eq!(response.metadata().get("x-caller").unwrap(), "alice@acme");
}
