//! The gateway's hot paths, each against its baseline in the same run:
//!
//! 1. HTTP: wrk against a plain axum route, the gateway route with JWT verification only,
//!    and the gateway route with JWT verification and a Redis GCRA check; at full load and at
//!    about half of the gateway's full-load rate (wrk's per-connection delay), for the added
//!    latency.
//! 2. Idle WebSocket connections: the gateway binary in its own process, N authenticated idle
//!    connections from this process, resident memory before and after.
//! 3. Cross-replica broadcast: two gateway replicas on one NATS server; messages published
//!    through replica A's REST endpoint, received by WebSocket subscribers on replica B.
//!
//! `cargo bench -p liquid-gateway --bench edge` (needs wrk, redis-server on
//! `LIQUID_TEST_REDIS_URL` or 127.0.0.1:6379, nats-server; `make deps` and `make dev-up`).
//! `EDGE_WS_CONNECTIONS` sets N (default 15000; the process file limit is 20000),
//! `EDGE_WRK_CONNECTIONS` wrk's connections (default 64), `EDGE_ONLY` one section
//! (`http`, `broadcast`, `ws`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_gateway::Settings;
use liquid_gateway::config::ClassLimits;
use liquid_runtime::ServiceConfig;
use liquid_testkit::nats::NatsServer;
use liquid_testkit::redis::TestRedis;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_util::sync::CancellationToken;

struct Keys {
    dir: tempfile::TempDir,
    key: SigningKey,
    auth: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "bench", "liquid");
    Keys { dir, key, auth }
}

fn token(keys: &Keys, scopes: &[&str]) -> String {
    keys.key
        .mint(
            &TokenRequest::user("bench", scopes.iter().copied())
                .tenant("bench")
                .issuer("bench")
                .audience("liquid")
                .ttl(Duration::from_secs(3_600)),
        )
        .unwrap()
}

fn gateway_config(keys: &Keys, db: &str, bus: &str, cache: &str) -> ServiceConfig<Settings> {
    let mut c = ServiceConfig::<Settings>::defaults_for(&liquid_gateway::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.bus.url = bus.into();
    c.cache.url = cache.into();
    c.auth = keys.auth.clone();
    c.telemetry.log_filter = "warn".into();
    c.settings.prices.simulated_feed = false;
    // Quotas no run can spend: the bench measures the check, not refusals.
    c.settings.rate_limit.classes.insert(
        "default".into(),
        ClassLimits {
            user: u32::MAX,
            session: u32::MAX,
            ip: u32::MAX,
            period_secs: 100_000_000,
        },
    );
    c
}

struct Wrk {
    rps: f64,
    p50: String,
    p99: String,
}

fn wrk(
    url: &str,
    token: Option<&str>,
    threads: u32,
    conns: u32,
    secs: u32,
    delay_ms: Option<f64>,
) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let script;
    if let Some(ms) = delay_ms {
        script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            script.path(),
            format!("function delay() return {ms:.3} end\n"),
        )
        .unwrap();
        cmd.arg("-s").arg(script.path());
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is not installed; run `make deps`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers in this run:\n{text}");
    }
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    Wrk {
        rps,
        p50: pct("50%"),
        p99: pct("99%"),
    }
}

async fn http_section(keys: &Keys, redis: &TestRedis) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/api/v1/gateway/whoami",
        get(|| async { axum::Json(json!({"subject": "bench"})) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = tempfile::tempdir().unwrap();
    let mut jwt_only = gateway_config(
        keys,
        &format!("sqlite://{}/a.db", db.path().display()),
        "memory://",
        "memory://",
    );
    jwt_only.settings.rate_limit.enabled = false;
    let jwt = liquid_runtime::start::<liquid_gateway::Gateway>(&jwt_only, CancellationToken::new())
        .await
        .unwrap();
    let mut limited = gateway_config(
        keys,
        &format!("sqlite://{}/b.db", db.path().display()),
        "memory://",
        redis.url(),
    );
    limited.settings.rate_limit.redis_url = liquid_kit::Secret::new(redis.url().to_owned());
    limited.settings.rate_limit.key_prefix = redis.prefix().to_owned();
    let full = liquid_runtime::start::<liquid_gateway::Gateway>(&limited, CancellationToken::new())
        .await
        .unwrap();
    let token = token(keys, &["read:prices"]);
    let plain_url = format!("http://{plain}/api/v1/gateway/whoami");
    let jwt_url = format!("http://{}/api/v1/gateway/whoami", jwt.http_addr());
    let full_url = format!("http://{}/api/v1/gateway/whoami", full.http_addr());
    // Check the gateway really answers 200 through the limiter before measuring.
    let r = reqwest::Client::new()
        .get(&full_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-tier"], "user");

    let (plain_url2, jwt_url2, full_url2, token2) = (
        plain_url.clone(),
        jwt_url.clone(),
        full_url.clone(),
        token.clone(),
    );
    let conns: u32 = std::env::var("EDGE_WRK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rows = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        let a = wrk(&plain_url2, None, 1, conns, 8, None);
        let b = wrk(&jwt_url2, Some(&token2), 1, conns, 8, None);
        let c = wrk(&full_url2, Some(&token2), 1, conns, 8, None);
        // Half of the gateway's full-load rate, the same for all three: every connection
        // waits `delay` between requests.
        let target = c.rps / 2.0;
        let delay = f64::from(conns) * 1000.0 / target;
        let d = wrk(&plain_url2, None, 1, conns, 8, Some(delay));
        let e = wrk(&jwt_url2, Some(&token2), 1, conns, 8, Some(delay));
        let f = wrk(&full_url2, Some(&token2), 1, conns, 8, Some(delay));
        let a2 = wrk(&plain_url2, None, 1, conns, 8, None);
        rows.push(("plain axum route", "full", a));
        rows.push(("gateway: JWT (EdDSA) + scope check", "full", b));
        rows.push((
            "gateway: JWT + Redis GCRA (one EVALSHA, multiplexed)",
            "full",
            c,
        ));
        rows.push(("plain axum route", "half", d));
        rows.push(("gateway: JWT (EdDSA) + scope check", "half", e));
        rows.push(("gateway: JWT + Redis GCRA", "half", f));
        rows.push(("plain axum route (again)", "full", a2));
        (rows, target, conns)
    })
    .await
    .unwrap();
    let (rows, target, conns) = rows;
    println!("\n### HTTP (server on one worker thread; wrk -t1 -c{conns} -d8s)\n");
    println!("| route | load | requests/s | p50 | p99 |");
    println!("|---|---|---:|---:|---:|");
    for (label, load, w) in rows {
        let load = if load == "full" {
            "as fast as possible".to_owned()
        } else {
            format!("~{target:.0} rps (half)")
        };
        println!(
            "| {label} | {load} | {:.0} | {} | {} |",
            w.rps, w.p50, w.p99
        );
    }
    std::mem::forget(jwt);
    std::mem::forget(full);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn websocket_memory_section(keys: &Keys, n: usize) {
    let binary = env!("CARGO_BIN_EXE_liquid-gateway");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pem = keys.dir.path().join("pub.pem");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .env(
            "LIQUID_GATEWAY__SERVER__HTTP_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env(
            "LIQUID_GATEWAY__DATABASE__URL",
            format!("sqlite://{}/gw.db", data.path().display()),
        )
        .env("LIQUID_GATEWAY__AUTH__PUBLIC_KEY_PEM_FILE", &pem)
        .env("LIQUID_GATEWAY__AUTH__ISSUER", "bench")
        .env("LIQUID_GATEWAY__AUTH__AUDIENCE", "liquid")
        .env("LIQUID_GATEWAY__PRICES__SIMULATED_FEED", "false")
        .env("LIQUID_GATEWAY__RATE_LIMIT__ENABLED", "false")
        .env("LIQUID_GATEWAY__WEBSOCKET__MAX_CONNECTIONS", "19500")
        .env("LIQUID_GATEWAY__TELEMETRY__LOG_FILTER", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "gateway binary did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token(keys, &["read:prices"]);
    let connect = |url: String, token: String| async move {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                .await
                .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(matches!(welcome, Message::Text(_)));
        ws
    };
    // Warm up: the allocator, the runtime and the first connections' one-off costs.
    let mut warm = Vec::new();
    for _ in 0..200 {
        warm.push(connect(url.clone(), token.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(child.id());
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let ws = connect(url, token).await;
            drop(permit);
            ws
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(child.id());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!("\n### Idle WebSocket connections (gateway binary in its own process)\n");
    println!(
        "| connections | RSS before (MiB) | RSS after (MiB) | per connection | connect rate |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.1} | {:.1} | {:.1} KB ({per:.0} bytes) | {:.0} conn/s (JWT verified each) |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per / 1000.0,
        n as f64 / connect_secs
    );
    drop(clients);
    drop(warm);
    let _ = child.kill();
    let _ = child.wait();
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn broadcast_section(keys: &Keys) {
    let nats = NatsServer::start().await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let c = gateway_config(
            keys,
            &format!("sqlite://{}/{name}.db", db.path().display()),
            &nats.url(),
            "memory://",
        );
        async move {
            liquid_runtime::start::<liquid_gateway::Gateway>(&c, CancellationToken::new())
                .await
                .unwrap()
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    let subscribers = 20;
    let messages = 500;
    let token_sub = token(keys, &["healer:read"]);
    let url_b = format!("ws://{}/ws", b.http_addr());
    let mut receivers = Vec::new();
    for _ in 0..subscribers {
        let mut request = url_b.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token_sub}").parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.send(Message::Text(
            json!({"type":"subscribe","channel":"healing"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        ws.next().await.unwrap().unwrap();
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        let sent = v["data"]["sent_us"].as_u64().unwrap();
                        latencies.push(now_us().saturating_sub(sent));
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            latencies
        }));
    }
    let publisher = token(keys, &["gateway:write"]);
    let http = reqwest::Client::new();
    let url_a = format!(
        "http://{}/api/v1/gateway/channels/healing/messages",
        a.http_addr()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..messages {
        tick.tick().await;
        let r = http
            .post(&url_a)
            .bearer_auth(&publisher)
            .json(&json!({"data": {"seq": i, "sent_us": now_us()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut all = Vec::new();
    for r in receivers {
        all.extend(r.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "\n### Cross-replica broadcast (REST publish on replica A → NATS → WebSocket on replica B)\n"
    );
    println!("| subscribers on B | messages | delivered | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {subscribers} | {messages} at 200/s | {} of {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        all.len(),
        subscribers * messages,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    std::mem::forget(a);
    std::mem::forget(b);
}

fn main() {
    let n: usize = std::env::var("EDGE_WS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    let keys = keys();
    // The servers of sections 1 and 3 get one worker thread; wrk or the clients get the other core.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = server_rt.block_on(TestRedis::new()).unwrap();
    let only = std::env::var("EDGE_ONLY").unwrap_or_default();
    if only.is_empty() || only == "http" {
        server_rt.block_on(http_section(&keys, &redis));
    }
    if only.is_empty() || only == "broadcast" {
        server_rt.block_on(broadcast_section(&keys));
    }
    if only.is_empty() || only == "ws" {
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        client_rt.block_on(websocket_memory_section(&keys, n));
    }
}
