//! The cowork service in distributed mode, on the real backends: PostgreSQL (a fresh database),
//! NATS JetStream (a server of the test's own) and Redis. It must become ready, answer the
//! platform contract over REST and gRPC to verified callers only, report a dead dependency on
//! `/readyz` and in gRPC health, and refuse to start against a backend that is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_proto::platform::v1 as pb;
use liquid_runtime::ServiceConfig;
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use liquid_testkit::redis::TestRedis;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Keys {
    _dir: tempfile::TempDir,
    key: SigningKey,
    auth: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    Keys {
        _dir: dir,
        key,
        auth,
    }
}

fn config(
    db: &str,
    bus: &str,
    cache: &str,
    auth: &AuthConfig,
) -> ServiceConfig<liquid_cowork::CoworkSettings> {
    let mut c =
        ServiceConfig::<liquid_cowork::CoworkSettings>::defaults_for(&liquid_cowork::SERVICE);
    // Sandboxes live in a directory of the test's own (kept for the process: the service may
    // outlive this function).
    let root = std::env::temp_dir().join(format!("liquid-cowork-backends-{}", std::process::id()));
    c.settings.sandbox.root = root.join("sandboxes").display().to_string();
    c.settings.sandbox.workspace_roots = vec![root.join("ws").display().to_string()];
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.bus.url = bus.into();
    c.cache.url = cache.into();
    c.auth = auth.clone();
    c
}

#[tokio::test]
async fn cowork_runs_on_postgres_nats_and_redis_and_reports_a_dead_dependency() {
    let db = TestDatabase::create().await.unwrap();
    let mut nats = NatsServer::start().await.unwrap();
    let redis = TestRedis::new().await.unwrap();
    let keys = keys();
    let cfg = config(db.url(), &nats.url(), redis.url(), &keys.auth);
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let base = format!("http://{}", running.http_addr());
    let http = reqwest::Client::new();

    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    let token = keys
        .key
        .mint(
            &TokenRequest::user("bob", ["cowork:read"])
                .issuer("liquid-test")
                .audience("liquid"),
        )
        .unwrap();
    let info: Value = http
        .get(format!("{base}/api/v1/cowork/info"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["backends"]["database"], "postgres", "{info}");
    assert_eq!(info["backends"]["bus"], "nats");
    assert_eq!(info["backends"]["cache"], "redis");
    assert_eq!(info["tenant"], "bob");

    // gRPC: the platform contract with the token in metadata, and refused without it.
    let grpc = format!("http://{}", running.grpc_addr().unwrap());
    let mut client = pb::platform_service_client::PlatformServiceClient::connect(grpc.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::GetInfoRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let reply = client.get_info(req).await.unwrap().into_inner();
    assert_eq!(reply.service, "cowork");
    assert_eq!(reply.caller, "bob");
    let refused = client
        .get_info(tonic::Request::new(pb::GetInfoRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.metadata().get("x-liquid-error-code").unwrap(),
        "unauthenticated"
    );

    // The bus dies: /readyz turns 503 and names it.
    nats.kill().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            let bus = body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "bus")
                .unwrap()
                .clone();
            assert_eq!(bus["status"], "failing", "{body}");
            assert_eq!(
                body["checks"][0]["status"], "ok",
                "the database is still fine: {body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still 200 with the bus dead"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_backend_stops_start_up_with_a_clear_error() {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/c.db", dir.path().display());
    for (db, bus, cache, needle) in [
        (
            "postgres://liquid:pw@127.0.0.1:1/none",
            "memory://",
            "memory://",
            "127.0.0.1:1",
        ),
        (sqlite.as_str(), "nats://127.0.0.1:1", "memory://", "nats"),
        (
            sqlite.as_str(),
            "memory://",
            "redis://127.0.0.1:1",
            "127.0.0.1:1",
        ),
    ] {
        let cfg = config(db, bus, cache, &keys.auth);
        let err = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
            .await
            .expect_err("start-up must fail");
        assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(needle) && text.contains("make dev-up"),
            "{text}"
        );
        assert!(!text.contains(":pw@"), "a password leaked: {text}");
    }
}

#[tokio::test]
async fn bad_configuration_names_the_key() {
    let keys = keys();
    let mut cfg = config("sqlite::memory:", "kafka://x", "memory://", &keys.auth);
    use liquid_kit::config::Validate;
    let err = cfg.validate().unwrap_err();
    assert!(err.to_string().contains("bus.url"), "{err}");
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
    cfg.bus.url = "memory://".into();
    cfg.auth.public_key_pem_file = Some("/nonexistent/key.pem".into());
    let err = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
}
