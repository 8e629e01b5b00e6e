//! The distributed topology as the Helm charts deploy it, on one machine: the seven service
//! images (`make images`) as separate containers on a private Docker network, each with its own
//! PostgreSQL database, all on one NATS JetStream and one Redis, keys from a JWKS URL. The
//! backing servers are started by the harness on the network's gateway address, where the
//! containers reach them as pods reach managed backends.
//!
//! A user of the platform sees: every service ready on Postgres, NATS and Redis; every service
//! reachable through the gateway with a verified token (re-verified by the service); refusals
//! with stable codes; one trace across the gateway and service containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use liquid_auth::{SigningKey, TokenRequest};
use liquid_testkit::docker::{ContainerSpec, DockerHarness, RunningContainer};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::otlp::OtlpReceiver;
use liquid_testkit::servers::{PostgresServer, RedisServer};
use serde_json::Value;

/// `(service, http port, grpc port)`, as in ARCHITECTURE.md.
const SERVICES: [(&str, u16, Option<u16>); 7] = [
    ("a2a", 8081, Some(9081)),
    ("cowork", 8082, Some(9082)),
    ("container-pool", 8083, Some(9083)),
    ("healer", 8084, Some(9084)),
    ("registry", 8085, Some(9085)),
    ("media", 8086, Some(9086)),
    ("gateway", 8080, None),
];
const ISSUER: &str = "liquid-distributed-test";
const AUDIENCE: &str = "liquid";

fn env_prefix(service: &str) -> String {
    format!(
        "LIQUID_{}__",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// Serves the signing key's JWKS at `http://<addr>/jwks.json` for the test's lifetime.
async fn serve_jwks(host: std::net::IpAddr, key: &SigningKey) -> SocketAddr {
    let jwks = serde_json::to_value(key.jwks()).unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_seven_images_run_as_containers_on_real_backends_behind_the_gateway() {
    let docker = DockerHarness::connect().await.unwrap();
    let version = env!("CARGO_PKG_VERSION");
    for (service, _, _) in SERVICES {
        let image = format!("liquid/{service}:{version}");
        assert!(
            docker.image_exists(&image).await.unwrap(),
            "{image} is missing: run `make images` (make test builds them)"
        );
    }
    let network = docker.create_network("distributed").await.unwrap();
    let host = docker.network_gateway(&network).await.unwrap();

    let postgres = PostgresServer::start_on(host).await.unwrap();
    let redis = RedisServer::start_on(host).await.unwrap();
    let nats = NatsServer::start_on(host).await.unwrap();
    let otlp = OtlpReceiver::start_on(host).await.unwrap();
    let key = SigningKey::generate().unwrap();
    let jwks = serve_jwks(host, &key).await;

    // One database per service: no service reads another's tables.
    let mut containers: Vec<(&str, RunningContainer)> = Vec::new();
    for (service, http, grpc) in SERVICES {
        let database = format!("liquid_{}", service.replace('-', "_"));
        postgres.create_database(&database).await.unwrap();
        let p = env_prefix(service);
        let mut env = vec![
            (format!("{p}SERVER__HTTP_ADDR"), format!("0.0.0.0:{http}")),
            (format!("{p}DATABASE__URL"), postgres.url(&database)),
            (format!("{p}BUS__URL"), nats.url()),
            (format!("{p}CACHE__URL"), redis.url()),
            (
                format!("{p}AUTH__JWKS_URL"),
                format!("http://{jwks}/jwks.json"),
            ),
            (format!("{p}AUTH__ISSUER"), ISSUER.to_owned()),
            (format!("{p}AUTH__AUDIENCE"), format!("[{AUDIENCE}]")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp.endpoint()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        if let Some(grpc) = grpc {
            env.push((format!("{p}SERVER__GRPC_ADDR"), format!("0.0.0.0:{grpc}")));
        }
        if service == "gateway" {
            for (peer, peer_http, peer_grpc) in SERVICES.iter().filter(|s| s.0 != "gateway") {
                let k = peer.replace('-', "_").to_ascii_uppercase();
                env.push((
                    format!("{p}PEERS__{k}__HTTP"),
                    format!("http://{peer}:{peer_http}"),
                ));
                if let Some(g) = peer_grpc {
                    env.push((format!("{p}PEERS__{k}__GRPC"), format!("http://{peer}:{g}")));
                }
            }
        }
        let container = docker
            .run(&ContainerSpec {
                image: format!("liquid/{service}:{version}"),
                name_hint: service.to_owned(),
                env,
                network: Some(network.clone()),
                aliases: vec![service.to_owned()],
                http_port: Some(http),
                ..ContainerSpec::default()
            })
            .await
            .unwrap();
        containers.push((service, container));
    }

    let http = reqwest::Client::new();
    for (service, container) in &containers {
        docker
            .wait_http_ready(container, "/readyz", Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{service} never became ready: {e:#}"));
        let ready: Value = http
            .get(format!("{}/readyz", container.http_base().unwrap()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["ready"], true, "{service}: {ready}");
    }

    let gateway = containers
        .iter()
        .find(|(s, _)| *s == "gateway")
        .unwrap()
        .1
        .http_base()
        .unwrap();
    let token = key
        .mint(
            &TokenRequest::user("ada", ["admin:*"])
                .tenant("acme")
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .ttl(Duration::from_secs(600)),
        )
        .unwrap();
    for (service, _, _) in SERVICES.iter().filter(|s| s.0 != "gateway") {
        let url = format!("{gateway}/api/v1/{service}/info");
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        let status = r.status();
        let info: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{url}: {info}");
        assert_eq!(info["service"], *service, "{info}");
        assert_eq!(info["caller"], "ada");
        assert_eq!(info["tenant"], "acme");
        assert_eq!(info["backends"]["database"], "postgres", "{info}");
        assert_eq!(info["backends"]["bus"], "nats", "{info}");
        assert_eq!(info["backends"]["cache"], "redis", "{info}");
        assert_eq!(info["starts"], 1, "{info}");
    }

    // A token from another key, and none at all, are refused with stable codes.
    let stranger = SigningKey::generate()
        .unwrap()
        .mint(
            &TokenRequest::user("mallory", ["admin:*"])
                .issuer(ISSUER)
                .audience(AUDIENCE),
        )
        .unwrap();
    for token in [Some(stranger.as_str()), None] {
        let mut req = http.get(format!("{gateway}/api/v1/cowork/info"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }

    // The gateway container and the cowork container report spans of one trace.
    let spans = otlp
        .wait_for_spans(Duration::from_secs(30), |spans| {
            spans.iter().any(|gw| {
                gw.attributes.get("liquid.service").map(String::as_str) == Some("gateway")
                    && gw.attributes.get("url.path").map(String::as_str)
                        == Some("/api/v1/cowork/info")
                    && spans.iter().any(|s| {
                        s.trace_id == gw.trace_id
                            && s.attributes.get("liquid.service").map(String::as_str)
                                == Some("cowork")
                    })
            })
        })
        .await;
    assert!(
        spans.iter().any(|s| {
            s.attributes.get("liquid.service").map(String::as_str) == Some("cowork")
                && !s.parent_span_id.is_empty()
        }),
        "no cowork span continues a gateway trace: {spans:#?}"
    );

    for (_, container) in &containers {
        docker
            .stop(&container.id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    docker.sweep().await.unwrap();
}
