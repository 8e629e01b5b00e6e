//! Shared pieces of the gateway's service tests: keys and tokens, gateway configurations on
//! real backends, an upstream service that records what reached it, WebSocket helpers.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_gateway::Settings;
use liquid_gateway::config::ClassLimits;
use liquid_kit::RunningService;
use liquid_runtime::{Peer, ServiceConfig};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use liquid_testkit::redis::TestRedis;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

pub const ISSUER: &str = "liquid-test";
pub const AUDIENCE: &str = "liquid";

/// The test's signing key and the verifier configuration that trusts it.
pub struct Keys {
    _dir: tempfile::TempDir,
    pub key: SigningKey,
    pub other: SigningKey,
    pub auth: AuthConfig,
}

pub fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, ISSUER, AUDIENCE);
    Keys {
        _dir: dir,
        key,
        other: SigningKey::generate().unwrap(),
        auth,
    }
}

impl Keys {
    /// A valid token.
    pub fn token(&self, sub: &str, tenant: &str, scopes: &[&str]) -> String {
        self.key
            .mint(
                &TokenRequest::user(sub, scopes.iter().copied())
                    .tenant(tenant)
                    .issuer(ISSUER)
                    .audience(AUDIENCE),
            )
            .unwrap()
    }

    /// Signed by a key the gateway does not trust.
    pub fn forged(&self) -> String {
        self.other
            .mint(
                &TokenRequest::user("mallory", ["admin:*"])
                    .issuer(ISSUER)
                    .audience(AUDIENCE),
            )
            .unwrap()
    }

    /// Expired an hour ago.
    pub fn expired(&self) -> String {
        self.key
            .mint(
                &TokenRequest::user("bob", ["admin:*"])
                    .issuer(ISSUER)
                    .audience(AUDIENCE)
                    .issued_at(SystemTime::now() - Duration::from_secs(7_200))
                    .ttl(Duration::from_secs(3_600)),
            )
            .unwrap()
    }

    /// For another audience.
    pub fn wrong_audience(&self) -> String {
        self.key
            .mint(
                &TokenRequest::user("bob", ["admin:*"])
                    .issuer(ISSUER)
                    .audience("someone-else"),
            )
            .unwrap()
    }

    /// Every refused token with its name.
    pub fn refused(&self) -> Vec<(&'static str, String)> {
        vec![
            ("forged", self.forged()),
            ("expired", self.expired()),
            ("wrong audience", self.wrong_audience()),
            ("garbage", "not.a.jwt".to_owned()),
        ]
    }
}

/// A database and a NATS server of a test's own, kept for as long as its gateway runs.
pub struct Backing {
    _db: TestDatabase,
    _nats: NatsServer,
}

/// Where most GraphQL and hub tests start: a gateway's configuration on a [`Backing`], no Redis, its
/// peers on a closed port, and rate limits off (each test configures the rest).
pub async fn unlimited_config(keys: &Keys) -> (ServiceConfig<Settings>, Backing) {
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let mut cfg = config(
        keys,
        db.url(),
        &nats.url(),
        "memory://",
        "http://127.0.0.1:9",
    );
    cfg.settings.rate_limit.enabled = false;
    let backing = Backing {
        _db: db,
        _nats: nats,
    };
    (cfg, backing)
}

/// A database and an upstream of a test's own, for a gateway whose bus and cache are in
/// memory (so its limits are per replica).
pub struct Local {
    pub upstream: Upstream,
    _db: TestDatabase,
}

/// A gateway's configuration on a [`Local`] backing, its peers pointing at the upstream.
pub async fn local_config(keys: &Keys) -> (ServiceConfig<Settings>, Local) {
    let db = TestDatabase::create().await.unwrap();
    let upstream = upstream().await;
    let cfg = config(keys, db.url(), "memory://", "memory://", &upstream.url);
    (cfg, Local { upstream, _db: db })
}

/// A database, a NATS server, a Redis key prefix and an upstream of a test's own: what
/// replicas share.
pub struct Shared {
    pub upstream: Upstream,
    pub nats: NatsServer,
    pub redis: TestRedis,
    _db: TestDatabase,
}

/// A gateway's configuration on a [`Shared`] backing: bus on its NATS, cache, coalescing and
/// rate limits in its Redis under the test's prefix (so limits hold across replicas), peers
/// pointing at the upstream.
pub async fn shared_config(keys: &Keys) -> (ServiceConfig<Settings>, Shared) {
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let redis = TestRedis::new().await.unwrap();
    let upstream = upstream().await;
    let mut cfg = config(keys, db.url(), &nats.url(), redis.url(), &upstream.url);
    cfg.settings.rate_limit.redis_url = liquid_kit::Secret::new(redis.url().to_owned());
    cfg.settings.rate_limit.key_prefix = redis.prefix().to_owned();
    cfg.settings.coalescing.key_prefix = redis.prefix().to_owned();
    let shared = Shared {
        upstream,
        nats,
        redis,
        _db: db,
    };
    (cfg, shared)
}

/// The built-in simulated price feed, ticking every 50 ms.
pub fn simulated_prices(cfg: &mut ServiceConfig<Settings>) {
    cfg.settings.prices.simulated_feed = true;
    cfg.settings.prices.tick_ms = 50;
}

/// A gateway configuration on the given backends, with its peers pointing at `upstream`.
pub fn config(
    keys: &Keys,
    database: &str,
    bus: &str,
    cache: &str,
    upstream: &str,
) -> ServiceConfig<Settings> {
    let mut c = ServiceConfig::<Settings>::defaults_for(&liquid_gateway::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = database.into();
    c.bus.url = bus.into();
    c.cache.url = cache.into();
    c.auth = keys.auth.clone();
    c.peers = [
        "a2a",
        "cowork",
        "container_pool",
        "healer",
        "registry",
        "media",
    ]
    .iter()
    .map(|p| {
        (
            (*p).to_owned(),
            Peer {
                http: upstream.to_owned(),
                grpc: String::new(),
            },
        )
    })
    .collect::<BTreeMap<_, _>>();
    c.settings.prices.simulated_feed = false;
    c.settings.sessions.secret =
        liquid_kit::Secret::new("the-test-session-secret-of-32-bytes!".into());
    c
}

/// Sets the default class quotas.
pub fn quotas(c: &mut ServiceConfig<Settings>, user: u32, session: u32, ip: u32) {
    c.settings.rate_limit.classes.insert(
        "default".into(),
        ClassLimits {
            user,
            session,
            ip,
            period_secs: 900,
        },
    );
}

/// A started gateway and its base URL.
pub struct Gateway {
    pub running: RunningService,
    pub base: String,
    pub ws: String,
    pub shutdown: CancellationToken,
    /// For the helpers' own requests (metrics polls): one client, its connections reused.
    client: reqwest::Client,
}

impl Gateway {
    /// What `/metrics` exports now (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the first line of `/metrics` starting with `prefix` (a series name with
    /// its labels and a space), 0 when there is none yet.
    pub async fn metric_or_zero(&self, prefix: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits, for up to 20 s, until the metric `prefix` (as for [`Gateway::metric_or_zero`])
    /// reaches `at_least`; fails the test with `never` when it does not.
    pub async fn wait_for_metric(&self, prefix: &str, at_least: f64, never: &str) {
        let reached = tokio::time::timeout(Duration::from_secs(20), async {
            while self.metric_or_zero(prefix).await < at_least {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "{never}");
    }
}

/// How long a test waits for an answer before failing at that request instead of hanging.
/// (Longer than any wait of a test's own while it holds a request open, so a slow run still
/// fails at the test's own bound.)
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// An HTTP client whose requests fail after [`ANSWER_WITHIN`].
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap()
}

/// [`http`]'s settings, to add to.
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(ANSWER_WITHIN)
}

/// Starts a gateway on `c`. The test's log (shown by nextest when the test fails) and the
/// testkit's hang watchdog are installed first.
pub async fn start(c: &ServiceConfig<Settings>) -> Gateway {
    liquid_testkit::watchdog::logs();
    liquid_testkit::watchdog::arm();
    let shutdown = CancellationToken::new();
    let running = liquid_runtime::start::<liquid_gateway::Gateway>(c, shutdown.clone())
        .await
        .unwrap();
    let addr = running.http_addr();
    Gateway {
        running,
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}/ws"),
        shutdown,
        client: http(),
    }
}

/// What the fake upstream saw.
#[derive(Default)]
pub struct Seen {
    pub hits: HashMap<String, u32>,
    pub last_headers: HashMap<String, HashMap<String, String>>,
}

/// An HTTP service standing in for a platform service: it answers by path and records every
/// request. `/fail/<n>/...` answers 503 to its first n calls, `/broken` always 500, `/slow`
/// waits 3 s, anything else echoes the path, method and body size.
pub struct Upstream {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    pub fn hits(&self, path: &str) -> u32 {
        self.seen
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> u32 {
        self.seen.lock().unwrap().hits.values().sum()
    }

    pub fn headers(&self, path: &str) -> HashMap<String, String> {
        self.seen
            .lock()
            .unwrap()
            .last_headers
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

async fn upstream_handler(State(seen): State<Arc<Mutex<Seen>>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let headers: HashMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let n = {
        let mut s = seen.lock().unwrap();
        let n = s.hits.entry(path.clone()).or_default();
        *n += 1;
        let n = *n;
        s.last_headers.insert(path.clone(), headers);
        n
    };
    let segments: Vec<&str> = path.split('/').collect();
    if let Some(i) = segments.iter().position(|s| *s == "fail") {
        let failures: u32 = segments[i + 1].parse().unwrap();
        if n <= failures {
            return (http::StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
    }
    if path.ends_with("/broken") {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response();
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    axum::Json(json!({"path": path, "method": method, "body_bytes": body.len(), "call": n}))
        .into_response()
}

pub async fn upstream() -> Upstream {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .fallback(upstream_handler)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Upstream {
        url: format!("http://{addr}"),
        seen,
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with optional headers; `Err(status)` when the upgrade is refused over HTTP.
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let connected = tokio::time::timeout(ANSWER_WITHIN, tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no websocket upgrade answer from {url} within {} s",
                ANSWER_WITHIN.as_secs()
            )
        });
    match connected {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// Connects with a bearer header and reads the welcome.
pub async fn ws_with_token(url: &str, token: &str) -> Ws {
    let auth = format!("Bearer {token}");
    let mut ws = ws_connect(url, &[("authorization", &auth)]).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON text frame (skipping pings), or panics after 20 s.
pub async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a json frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no frame within 20 s")
}

/// Reads until the server closes; returns the close code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    close_frame(ws).await.0
}

/// Reads until the server closes; returns the close code and reason (1005 and no reason when
/// the connection ended without a close frame).
pub async fn close_frame(ws: &mut Ws) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("websocket error before close: {e}"),
            }
        }
    })
    .await
    .expect("no close within 30 s")
}

/// Subscribes and waits for the acknowledgement.
pub async fn subscribe(ws: &mut Ws, channel: &str) {
    send(
        ws,
        json!({"type": "subscribe", "channel": channel, "id": channel}),
    )
    .await;
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
}

/// Opens a `/graphql` socket speaking `graphql-transport-ws`, with extra `headers`.
pub async fn gql_ws(gw: &Gateway, headers: &[(&str, &str)]) -> Ws {
    let url = gw.ws.replace("/ws", "/graphql");
    let mut all = vec![("sec-websocket-protocol", "graphql-transport-ws")];
    all.extend_from_slice(headers);
    ws_connect(&url, &all).await.unwrap()
}

/// Sends `connection_init` with `token` and waits for the acknowledgement.
pub async fn gql_init(ws: &mut Ws, token: &str) {
    send(
        ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next_json(ws).await["type"], "connection_ack");
}

/// Reads the graphql-transport-ws messages of one operation until one carries a payload.
pub async fn payload_of(ws: &mut Ws, id: &str) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["id"] == id && m["type"] == "next" {
            return m["payload"].clone();
        }
    }
}

/// Asserts that the first GraphQL error of `v` says `needle` in its message.
#[track_caller]
pub fn assert_first_error_says(v: &Value, needle: &str) {
    let message = v["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(needle),
        "the first error should say {needle:?}: {v}"
    );
}
