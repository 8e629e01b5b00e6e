//! The gateway on real backends: PostgreSQL, NATS (a server of the test's own) and Redis, with
//! two replicas in this process where the behaviour spans replicas. What a client sees:
//! refused tokens on every entry point, tiered limits that hold across replicas, a message
//! published on one replica reaching subscribers on the other, limits that keep serving when
//! Redis dies, and forwarding with retries, circuit breaking, body limits and CORS, and errors
//! that name a service that is down without giving away its address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use liquid_bus::Headers;
use liquid_gateway::config::ClassLimits;
use liquid_gateway::domain::session_token::SessionSigner;
use liquid_gateway::domain::tier::{Charge, Tier};
use liquid_gateway::ratelimit::{Backend, RateLimiter};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use liquid_testkit::redis::TestRedis;
use liquid_testkit::servers::RedisServer;
use serde_json::{Value, json};
use support::*;

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_refuses_forged_expired_wrong_audience_and_wrong_scope_tokens() {
    let keys = keys();
    let (mut cfg, shared) = shared_config(&keys).await;
    cfg.settings.websocket.auth_deadline_secs = 1;
    // Every refusal is charged to this one address: room for all of them, so each answer is the
    // refusal itself (tests/config.rs checks the 429 once an address's quota is spent).
    quotas(&mut cfg, 100, 50, 1_000);
    let gw = start(&cfg).await;
    let http = http();

    for (what, token) in keys.refused() {
        // REST: the gateway's own route.
        let r = http
            .get(format!("{}/api/v1/gateway/whoami", gw.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            code_of(r).await,
            (401, "unauthenticated".into()),
            "{what} on REST"
        );
        // Proxied routes, including an A2A endpoint: refused before any service sees them.
        for path in ["/api/v1/cowork/info", "/a2a", "/api/v1/sandbox/x"] {
            let r = http
                .post(format!("{}{path}", gw.base))
                .bearer_auth(&token)
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(
                code_of(r).await,
                (401, "unauthenticated".into()),
                "{what} on {path}"
            );
        }
        // WebSocket connect, with the header and with the subprotocol.
        let auth = format!("Bearer {token}");
        assert_eq!(
            ws_connect(&gw.ws, &[("authorization", &auth)]).await.err(),
            Some(401),
            "{what} on websocket connect (header)"
        );
        let protocols = format!("liquid.v1, bearer.{token}");
        assert_eq!(
            ws_connect(&gw.ws, &[("sec-websocket-protocol", &protocols)])
                .await
                .err(),
            Some(401),
            "{what} on websocket connect (subprotocol)"
        );
        // WebSocket first message.
        let mut ws = ws_connect(&gw.ws, &[]).await.unwrap();
        send(&mut ws, json!({"type": "auth", "token": token})).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(
            reply["code"], "unauthenticated",
            "{what} as first message: {reply}"
        );
        assert_eq!(close_code(&mut ws).await, 4001);
    }
    assert_eq!(
        shared.upstream.total_hits(),
        0,
        "no refused call reached a service"
    );

    // No token at all: REST refused, websocket closed after the deadline.
    let r = http
        .get(format!("{}/api/v1/cowork/info", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "unauthenticated".into()));
    let mut silent = ws_connect(&gw.ws, &[]).await.unwrap();
    assert_eq!(
        close_code(&mut silent).await,
        4001,
        "no token within the deadline"
    );
    // An action before auth closes at once.
    let mut eager = ws_connect(&gw.ws, &[]).await.unwrap();
    send(
        &mut eager,
        json!({"type": "subscribe", "channel": "prices:BTC"}),
    )
    .await;
    assert_eq!(next_json(&mut eager).await["code"], "unauthenticated");
    assert_eq!(close_code(&mut eager).await, 4001);

    // Wrong scope: REST publish needs gateway:write.
    let reader = keys.token("ann", "acme", &["read:prices"]);
    let r = http
        .post(format!(
            "{}/api/v1/gateway/channels/healing/messages",
            gw.base
        ))
        .bearer_auth(&reader)
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (403, "permission_denied".into()));

    // Wrong scope per websocket action.
    let mut ws = ws_with_token(&gw.ws, &keys.token("ann", "acme", &["write:chat"])).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "prices:BTC", "id": 1}),
    )
    .await;
    let r = next_json(&mut ws).await;
    assert_eq!(
        (r["code"].as_str(), r["id"].as_i64()),
        (Some("permission_denied"), Some(1)),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("read:prices"));
    send(
        &mut ws,
        json!({"type": "trade", "intent": {"symbol": "BTC"}, "id": 2}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "permission_denied");
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "cowork:s1", "id": 3}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "permission_denied");
    // The scope it holds passes the check: the turn is accepted (its output goes to
    // `chat:s0`, which this connection does not follow).
    send(
        &mut ws,
        json!({"type": "chat", "session": "s0", "message": {"text": "hi"}, "id": 4}),
    )
    .await;
    let r = next_json(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_i64()),
        (Some("ack"), Some(4)),
        "{r}"
    );
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "chat:s1", "id": 5}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    // The connection is still open after refusals.
    send(&mut ws, json!({"type": "ping", "id": 6})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");

    // Prices-only token: chat refused; a trade with write:trades is published on the bus.
    let mut prices = ws_with_token(&gw.ws, &keys.token("ann", "acme", &["read:prices"])).await;
    send(
        &mut prices,
        json!({"type": "chat", "session": "s1", "message": {}, "id": 1}),
    )
    .await;
    assert_eq!(next_json(&mut prices).await["code"], "permission_denied");
    let bus = liquid_bus::connect(&shared.nats.url()).await.unwrap();
    let mut intents = bus.subscribe("trades.intents.>").await.unwrap();
    let mut trader = ws_with_token(&gw.ws, &keys.token("tim", "acme", &["write:trades"])).await;
    send(
        &mut trader,
        json!({"type": "trade", "intent": {"symbol": "BTC", "qty": 1}, "id": 9}),
    )
    .await;
    let ack = next_json(&mut trader).await;
    assert_eq!(ack["published_on"], "trades.intents.acme", "{ack}");
    let published =
        tokio::time::timeout(ANSWER_WITHIN, futures_util::StreamExt::next(&mut intents))
            .await
            .expect("the trade intent reaches the bus")
            .unwrap();
    let intent: Value = serde_json::from_slice(&published.payload).unwrap();
    assert_eq!(intent["subject"], "tim");
    assert_eq!(intent["intent"]["qty"], 1);

    // Admin covers every action.
    let mut admin = ws_with_token(&gw.ws, &keys.token("root", "acme", &["admin:*"])).await;
    for channel in ["prices:BTC", "cowork:s1", "media:j1", "healing", "chat:s1"] {
        subscribe(&mut admin, channel).await;
    }
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_per_tier_across_replicas_and_ignore_spoofed_forwarded_for() {
    let keys = keys();
    let (mut cfg, _shared) = shared_config(&keys).await;
    quotas(&mut cfg, 5, 3, 2);
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    let http = http();

    // User tier: 5 per period, shared by both replicas.
    let token = keys.token("bob", "acme", &["read:prices"]);
    for i in 0..5 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let r = http
            .get(format!("{base}/api/v1/gateway/whoami"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-ratelimit-tier"], "user");
        assert_eq!(r.headers()["ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
    }
    let r = http
        .get(format!("{}/api/v1/gateway/whoami", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 180, "one request every 900/5 s");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["tier"], "user");
    // Another user of the same tenant has its own quota; proxied routes are limited too.
    let other = keys.token("carol", "acme", &["read:prices"]);
    let r = http
        .get(format!("{}/api/v1/cowork/info", a.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "4");

    // Session tier: a gateway-issued session token, on a public route, 3 per period. Getting
    // the session costs one request of the IP quota (2).
    let session: Value = http
        .post(format!("{}/api/v1/gateway/sessions", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session_token = session["session_token"].as_str().unwrap().to_owned();
    let card = "/.well-known/agent-card.json";
    for i in 0..3 {
        let base = if i % 2 == 0 { &b.base } else { &a.base };
        let r = http
            .get(format!("{base}{card}"))
            .header("x-session-token", &session_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "session request {i}");
        assert_eq!(r.headers()["x-ratelimit-tier"], "session");
    }
    let r = http
        .get(format!("{}{card}", a.base))
        .header("x-session-token", &session_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // A forged session token is not a session: it counts against the address instead.
    let r = http
        .get(format!("{}{card}", a.base))
        .header("x-session-token", format!("{session_token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-tier"], "ip");
    assert_eq!(
        r.status(),
        200,
        "the second and last request of the ip quota"
    );

    // IP tier: the quota (2) is spent; a client that changes X-Forwarded-For from an untrusted
    // peer is still the same address.
    for spoof in ["203.0.113.1", "203.0.113.2", "198.51.100.7, 10.0.0.1"] {
        let r = http
            .get(format!("{}{card}", b.base))
            .header("x-forwarded-for", spoof)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "spoofed {spoof}");
        assert_eq!(r.headers()["x-ratelimit-tier"], "ip");
    }
    // Behind a trusted proxy (loopback here) the forwarded address is the key.
    let mut proxied = cfg.clone();
    proxied.settings.rate_limit.trusted_proxies = vec!["127.0.0.1".into()];
    let c = start(&proxied).await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        let r = http
            .get(format!("{}{card}", c.base))
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "client {client} behind the proxy");
        assert_eq!(r.headers()["ratelimit-remaining"], "1");
    }
    for gw in [a, b, c] {
        gw.running.stop().await.unwrap();
    }
}

/// A rate limiter on the test's Redis (its keys under the test's prefix) whose every tier of
/// the default class allows `limit` requests per `period_secs`.
fn limiter_on(redis: &TestRedis, limit: u32, period_secs: u64) -> RateLimiter {
    let mut cfg = config(
        &keys(),
        "sqlite::memory:",
        "memory://",
        "memory://",
        "http://127.0.0.1:9",
    );
    cfg.settings.rate_limit.redis_url = liquid_kit::Secret::new(redis.url().to_owned());
    cfg.settings.rate_limit.key_prefix = redis.prefix().to_owned();
    cfg.settings.rate_limit.classes.insert(
        "default".into(),
        ClassLimits {
            user: limit,
            session: limit,
            ip: limit,
            period_secs,
        },
    );
    RateLimiter::new(
        &cfg.settings.rate_limit,
        "",
        Arc::new(SessionSigner::new(&[7; 32])),
    )
    .unwrap()
}

/// A connection of the test's own to its Redis.
async fn redis_connection(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Checks that arrive together on the shared connection are each one atomic decision, and a
/// Redis that lost its scripts (restart, `SCRIPT FLUSH`) is given the script again without
/// failing the checks over to local limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_are_each_decided_in_redis_even_after_its_scripts_are_flushed() {
    let redis = TestRedis::new().await.unwrap();
    let limiter = limiter_on(&redis, 10, 900);
    let charge = |user: &str| Charge {
        tier: Tier::User,
        key: format!("acme/{user}"),
    };

    // 40 checks of one user at once against a quota of 10: exactly 10 pass, each saw its own
    // remaining count, and every decision was Redis's.
    let checks: Vec<_> = (0..40)
        .map(|_| {
            let (limiter, charge) = (limiter.clone(), charge("dora"));
            tokio::spawn(async move { limiter.check("default", charge).await.unwrap() })
        })
        .collect();
    let mut remaining = Vec::new();
    let mut refused = 0;
    for check in checks {
        let outcome = check.await.unwrap();
        if outcome.decision.allowed {
            assert_eq!(outcome.backend, Backend::Redis);
            remaining.push(outcome.decision.remaining);
        } else {
            // Refused by Redis, or by the replica holding an earlier refusal of Redis.
            assert_ne!(outcome.backend, Backend::Local);
            refused += 1;
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u32>>());
    assert_eq!(refused, 30);

    // Redis forgets its scripts: the next checks are still decided there, and still counted.
    let mut conn = redis_connection(&redis).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let spent = limiter.check("default", charge("dora")).await.unwrap();
    assert!(!spent.decision.allowed, "dora's quota is spent");
    let fresh = limiter.check("default", charge("erin")).await.unwrap();
    assert_eq!(fresh.backend, Backend::Redis);
    assert!(fresh.decision.allowed);
    assert_eq!(fresh.decision.remaining, 9);
}

/// A key Redis refused is refused by the replica itself until the refusal's retry-after has
/// passed: a client that keeps sending costs Redis nothing, and is told the same as Redis
/// would tell it. Then Redis decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_held_by_the_replica_until_its_retry_after_then_redis_decides_again() {
    let redis = TestRedis::new().await.unwrap();
    // Two per two seconds: one more every second once spent.
    let limiter = limiter_on(&redis, 2, 2);
    let gus = || Charge {
        tier: Tier::User,
        key: "acme/gus".into(),
    };
    for _ in 0..2 {
        let outcome = limiter.check("default", gus()).await.unwrap();
        assert!(outcome.decision.allowed);
    }
    let refused = limiter.check("default", gus()).await.unwrap();
    assert!(!refused.decision.allowed);
    assert_eq!(refused.backend, Backend::Redis);
    assert_eq!(refused.retry_after_secs(), 1);

    // Redis forgets gus: were it asked, it would allow. The replica does not ask.
    let key = redis.key("default:user:acme/gus");
    let mut conn = redis_connection(&redis).await;
    let deleted: u32 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the limiter's key is {key}");
    let held = limiter.check("default", gus()).await.unwrap();
    assert!(!held.decision.allowed, "held: {held:?}");
    assert_eq!(held.backend, Backend::Held);
    assert_eq!(held.decision.limit, 2);
    assert_eq!(held.decision.remaining, 0);
    assert!(
        held.decision.retry_after_ms <= refused.decision.retry_after_ms,
        "{held:?} after {refused:?}"
    );
    assert_eq!(held.refusal_message(), refused.refusal_message());
    let exists: u32 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a held refusal writes nothing to Redis");

    // Once the retry-after has passed, Redis decides: it forgot gus, so the whole quota less
    // this request remains.
    tokio::time::sleep(std::time::Duration::from_millis(
        held.decision.retry_after_ms + 10,
    ))
    .await;
    let again = limiter.check("default", gus()).await.unwrap();
    assert_eq!(again.backend, Backend::Redis);
    assert!(again.decision.allowed);
    assert_eq!(again.decision.remaining, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_replica_reaches_subscribers_on_the_other() {
    let keys = keys();
    let (mut cfg, shared) = shared_config(&keys).await;
    cfg.settings.websocket.heartbeat_secs = 1;
    cfg.settings.websocket.idle_timeout_secs = 30;
    let a = start(&cfg).await;
    let mut with_feed = cfg.clone();
    with_feed.settings.prices.simulated_feed = true;
    with_feed.settings.prices.symbols = vec!["SIM-1".into()];
    with_feed.settings.prices.tick_ms = 50;
    let b = start(&with_feed).await;
    let http = http();

    let acme_on_b = keys.token("ann", "acme", &["cowork:read", "read:prices"]);
    let mut ann = ws_with_token(&b.ws, &acme_on_b).await;
    subscribe(&mut ann, "cowork:s1").await;
    let mut eve = ws_with_token(
        &b.ws,
        &keys.token("eve", "globex", &["cowork:read", "healer:read"]),
    )
    .await;
    subscribe(&mut eve, "cowork:s1").await;
    subscribe(&mut eve, "healing").await;
    let mut ann_on_a = ws_with_token(&a.ws, &acme_on_b).await;
    subscribe(&mut ann_on_a, "cowork:s1").await;

    // Published through replica A for tenant acme.
    let publisher = keys.token("svc", "acme", &["gateway:write"]);
    let r = http
        .post(format!(
            "{}/api/v1/gateway/channels/cowork:s1/messages",
            a.base
        ))
        .bearer_auth(&publisher)
        .json(&json!({"data": {"text": "hello from a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for ws in [&mut ann, &mut ann_on_a] {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["channel"], "cowork:s1");
        assert_eq!(m["data"]["text"], "hello from a");
    }
    // Another tenant's cowork:s1 is another channel: eve's next message is the public one
    // (published by an admin: platform-wide channels need admin:*).
    let r = http
        .post(format!(
            "{}/api/v1/gateway/channels/healing/messages",
            a.base
        ))
        .bearer_auth(keys.token("ops", "acme", &["admin:*"]))
        .json(&json!({"data": {"incident": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let m = next_json(&mut eve).await;
    assert_eq!(
        (m["channel"].as_str(), &m["data"]["incident"]),
        (Some("healing"), &json!(7)),
        "{m}"
    );

    // Prices: any feed publishing on prices.<symbol> reaches subscribers on every replica.
    subscribe(&mut ann_on_a, "prices:EXT-1").await;
    let feed = liquid_bus::connect(&shared.nats.url()).await.unwrap();
    let tick = json!({"symbol": "EXT-1", "price": 42.5, "ts_ms": 1_000, "source": "test-feed"});
    feed.publish(
        "prices.EXT-1",
        Headers::new(),
        Bytes::from(tick.to_string()),
    )
    .await
    .unwrap();
    let m = next_json(&mut ann_on_a).await;
    assert_eq!(
        (m["channel"].as_str(), m["data"]["price"].as_f64()),
        (Some("prices:EXT-1"), Some(42.5))
    );
    // The simulated feed of replica B says what it is, and reaches replica A too.
    subscribe(&mut ann_on_a, "prices:SIM-1").await;
    let m = next_json(&mut ann_on_a).await;
    assert_eq!(m["data"]["source"], "simulated", "{m}");

    // Heartbeats: the server pings an idle client.
    let ping = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) = eve.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no heartbeat ping");

    // Shutdown closes open connections with 1001.
    a.shutdown.cancel();
    assert_eq!(close_code(&mut ann_on_a).await, 1001);
    a.running.wait().await.unwrap();
    b.running.stop().await.unwrap();
    assert_eq!(close_code(&mut ann).await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_as_slow() {
    let keys = keys();
    let (mut cfg, _local) = local_config(&keys).await;
    cfg.settings.websocket.send_queue = 4;
    quotas(&mut cfg, 10_000, 10, 10);
    let gw = start(&cfg).await;
    let token = keys.token("ann", "acme", &["admin:*"]);
    let mut ws = ws_with_token(&gw.ws, &token).await;
    subscribe(&mut ws, "healing").await;
    // The client stops reading; 64 KiB messages fill the socket, then the queue, until the
    // gateway gives up on it. The client comes back to read as soon as it has: the close frame
    // waits behind the frames already in the socket for a short bound only
    // (`ws::CLOSE_FRAME_BOUND`), as a client that never reads must not hold the connection.
    let http = http();
    let blob = "x".repeat(64 * 1024);
    let slow = "liquid_gateway_ws_slow_consumers_total ";
    let before = gw.metric_or_zero(slow).await;
    let mut posts = 0;
    while gw.metric_or_zero(slow).await == before {
        assert!(
            posts < 600,
            "600 messages of 64 KiB did not fill the client's queue"
        );
        let r = http
            .post(format!(
                "{}/api/v1/gateway/channels/healing/messages",
                gw.base
            ))
            .bearer_auth(&token)
            .json(&json!({"data": blob}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        posts += 1;
    }
    assert_eq!(close_code(&mut ws).await, 4008, "slow consumer close code");
    assert_eq!(gw.metric_or_zero(slow).await, before + 1.0);
    // One token for the connection and every post: verified once, then answered by the cache.
    let cache =
        |result: &str| format!("liquid_auth_verified_token_cache_total{{result=\"{result}\"}} ");
    assert_eq!(gw.metric_or_zero(&cache("miss")).await, 1.0);
    assert_eq!(gw.metric_or_zero(&cache("hit")).await, f64::from(posts));
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_leaves_the_gateway_serving_on_local_limits() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let redis = RedisServer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let upstream = upstream().await;
    let mut cfg = config(&keys, db.url(), &nats.url(), &redis.url(), &upstream.url);
    cfg.settings.rate_limit.redis_url = liquid_kit::Secret::new(redis.url());
    quotas(&mut cfg, 6, 3, 3);
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    let http = http();
    let token = keys.token("bob", "acme", &["read:prices"]);
    let get = |base: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            http.get(format!("{base}/api/v1/gateway/whoami"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    for base in [&a.base, &b.base] {
        let r = get(base.clone()).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        get(a.base.clone()).await.headers()["ratelimit-remaining"],
        "3",
        "shared in redis"
    );

    drop(redis);
    // Every replica keeps answering, now with its own quota (6 each, nothing spent locally).
    for base in [&a.base, &b.base] {
        for i in 0..6 {
            let r = get(base.clone()).await;
            assert_eq!(r.status(), 200, "{base} request {i} with redis down");
            assert!(r.headers().contains_key("ratelimit-remaining"));
        }
        let r = get(base.clone()).await;
        assert_eq!(r.status(), 429, "local limits still hold");
    }
    let metrics = a.metrics_text().await;
    let fallback = metrics
        .lines()
        .find(|l| l.starts_with("liquid_gateway_rate_limit_fallback_total"))
        .expect("fallback counter exported");
    let count: f64 = fallback.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{fallback}");
    assert!(
        metrics.contains("liquid_gateway_rate_limit_redis_up 0"),
        "the redis gauge shows it down"
    );
    for gw in [a, b] {
        gw.running.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_retries_idempotent_calls_breaks_circuits_and_limits_bodies() {
    let keys = keys();
    let (mut cfg, local) = local_config(&keys).await;
    quotas(&mut cfg, 10_000, 10, 10);
    cfg.settings.routing.retries = 2;
    cfg.settings.routing.retry_backoff_ms = 1;
    cfg.settings.routing.breaker_failures = 2;
    cfg.settings.routing.breaker_open_secs = 600;
    cfg.settings.routing.max_body_bytes = 1024;
    cfg.settings
        .routing
        .service_timeout_secs
        .insert("healer".into(), 1);
    cfg.settings.cors.allowed_origins = vec!["https://console.example.com".into()];
    let gw = start(&cfg).await;
    let http = http();
    let token = keys.token("bob", "acme", &["admin:*"]);

    // The caller's token, the request id and the trace context reach the service.
    let r = http
        .get(format!("{}/api/v1/cowork/echo?x=1", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = local.upstream.headers("/api/v1/cowork/echo");
    assert_eq!(seen["authorization"], format!("Bearer {token}"));
    assert_eq!(seen["x-request-id"], request_id);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    // The public address the client used, so a service can name it (a2a's cards).
    let host = gw.base.trim_start_matches("http://");
    assert_eq!(seen["x-forwarded-host"], host);
    assert_eq!(seen["x-forwarded-proto"], "http");
    // A client that is not a trusted proxy cannot pick them.
    http.get(format!("{}/api/v1/cowork/echo?x=2", gw.base))
        .bearer_auth(&token)
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = local.upstream.headers("/api/v1/cowork/echo");
    assert_eq!(seen["x-forwarded-host"], host);
    assert_eq!(seen["x-forwarded-proto"], "http");

    // The seed's paths go to their services.
    let r: Value = http
        .get(format!("{}/api/v1/sandbox/abc/diff", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["path"], "/api/v1/sandbox/abc/diff");
    let r = http
        .get(format!("{}/api/v1/nonesuch/x", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (404, "not_found".into()));

    // An idempotent call is retried through two 503s; a POST is not.
    let r: Value = http
        .get(format!("{}/api/v1/cowork/fail/2/get", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["call"], 3);
    let r = http
        .post(format!("{}/api/v1/cowork/fail/2/post", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        local.upstream.hits("/api/v1/cowork/fail/2/post"),
        1,
        "no retry without idempotency"
    );
    let r = http
        .post(format!("{}/api/v1/cowork/fail/1/keyed", gw.base))
        .bearer_auth(&token)
        .header("idempotency-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a POST with Idempotency-Key is retried");

    // Two failures open registry's circuit; then the gateway answers without calling it.
    for _ in 0..2 {
        let r = http
            .get(format!("{}/api/v1/registry/broken", gw.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    let r = http
        .get(format!("{}/api/v1/registry/echo", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(code_of(r).await, (503, "unavailable".into()));
    assert_eq!(local.upstream.hits("/api/v1/registry/echo"), 0);
    assert_eq!(local.upstream.hits("/api/v1/registry/broken"), 2);

    // Bodies over the limit are refused at the edge.
    let r = http
        .post(format!("{}/api/v1/media/upload", gw.base))
        .bearer_auth(&token)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (413, "payload_too_large".into()));
    assert_eq!(local.upstream.hits("/api/v1/media/upload"), 0);

    // A service over its deadline answers 504.
    let r = http
        .get(format!("{}/api/v1/healer/slow", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (504, "deadline_exceeded".into()));

    // CORS: an allowed origin's preflight is answered without a token; others get nothing.
    let preflight = |origin: &'static str| {
        http.request(
            http::Method::OPTIONS,
            format!("{}/api/v1/cowork/echo", gw.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,traceparent,tracestate",
        )
        .send()
    };
    let r = preflight("https://console.example.com").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
    // A browser with OpenTelemetry sends trace context: its preflight must allow it.
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "traceparent", "tracestate"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    let r = preflight("https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    gw.running.stop().await.unwrap();
}

/// Sends `GET target` as written, byte for byte (reqwest would resolve its dot segments before
/// sending), and returns the status and the JSON body (`Null` when there is none).
async fn raw_get(base: &str, target: &str, token: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(&raw).unwrap() else {
        panic!("incomplete response to {target}");
    };
    let body = serde_json::from_slice(&raw[head..]).unwrap_or(Value::Null);
    (response.code.unwrap(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_with_dot_segments_or_encoded_separators_are_refused_before_any_service_sees_them() {
    let keys = keys();
    let (cfg, local) = local_config(&keys).await;
    let gw = start(&cfg).await;
    let token = keys.token("bob", "acme", &["admin:*"]);

    for target in [
        "/api/v1/cowork/%2e%2e/%2e%2e/metrics",
        "/api/v1/cowork/%2E%2E/%2E%2E/metrics",
        "/api/v1/cowork/.%2e/.%2e/metrics",
        "/api/v1/cowork/%2e./%2e./metrics",
        "/api/v1/cowork/../../metrics",
        "/api/v1/cowork/x/%2e%2e/sessions",
        "/api/v1/cowork/./sessions",
        "/api/v1/sandbox/..%2f..%2fmetrics",
        "/api/v1/cowork/a%5Cb",
        "/api/v1/cowork/..\\metrics",
        "/agents/%2e%2e/.well-known/agent-card.json",
    ] {
        // With a valid token, and without one: refused before authentication too.
        for token in [Some(token.as_str()), None] {
            let (status, body) = raw_get(&gw.base, target, token).await;
            assert_eq!(status, 400, "{target} (token: {})", token.is_some());
            assert_eq!(body["error"]["code"], "invalid_argument", "{target}");
            assert!(
                body["error"]["details"]["reason"].is_string(),
                "{target}: {body}"
            );
        }
    }
    assert_eq!(
        local.upstream.total_hits(),
        0,
        "no refused path reached a service"
    );

    // The same request, written plainly, is forwarded; dots inside a segment are ordinary.
    let (status, body) = raw_get(&gw.base, "/api/v1/cowork/file%2etxt", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/api/v1/cowork/file%2etxt");
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_discovery_paths_are_read_only() {
    let keys = keys();
    let (cfg, local) = local_config(&keys).await;
    let gw = start(&cfg).await;
    let http = http();
    let token = keys.token("bob", "acme", &["admin:*"]);
    let card = format!("{}/.well-known/agent-card.json", gw.base);

    for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
        let r = http
            .request(method.clone(), &card)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} without a token");
        let r = http
            .request(method.clone(), &card)
            .bearer_auth(&token)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} with a token");
    }
    assert_eq!(local.upstream.hits("/.well-known/agent-card.json"), 0);

    let r = http.get(&card).send().await.unwrap();
    assert_eq!(r.status(), 200, "a read needs no token");
    let r = http.head(&card).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(local.upstream.hits("/.well-known/agent-card.json"), 2);
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_retries_actually_sent_are_counted() {
    let keys = keys();
    let (mut cfg, local) = local_config(&keys).await;
    cfg.settings.routing.retries = 2;
    cfg.settings.routing.retry_backoff_ms = 1_500;
    // healer's deadline leaves no room for the back-off; media's does.
    cfg.settings
        .routing
        .service_timeout_secs
        .insert("healer".into(), 1);
    let gw = start(&cfg).await;
    let http = http();
    let token = keys.token("bob", "acme", &["admin:*"]);

    let r = http
        .get(format!("{}/api/v1/healer/fail/1/x", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no time left for a retry");
    assert_eq!(local.upstream.hits("/api/v1/healer/fail/1/x"), 1);
    let r = http
        .get(format!("{}/api/v1/media/fail/1/x", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "retried once");
    assert_eq!(local.upstream.hits("/api/v1/media/fail/1/x"), 2);

    let metrics = gw.metrics_text().await;
    let retries = |service: &str| -> f64 {
        let label = format!("upstream=\"{service}\"");
        metrics
            .lines()
            .find(|l| l.starts_with("liquid_gateway_upstream_retries_total") && l.contains(&label))
            .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    assert_eq!(retries("healer"), 0.0, "a retry the deadline prevented");
    assert_eq!(retries("media"), 1.0);
    gw.running.stop().await.unwrap();
}

/// An address nothing listens on: a port the system handed out, then freed.
async fn unreachable_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_named_but_its_address_is_not() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let down = unreachable_address().await;
    let mut cfg = config(&keys, db.url(), "memory://", "memory://", &down);
    cfg.settings.rate_limit.enabled = false;
    let gw = start(&cfg).await;
    let token = keys.token("bob", "acme", &["admin:*"]);

    let r = http()
        .get(format!("{}/api/v1/cowork/sessions", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    let host = down.trim_start_matches("http://");
    assert!(!body.contains(host), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(
        body["error"]["message"], "the cowork service is unavailable; retry later",
        "{body}"
    );
    gw.running.stop().await.unwrap();
}

/// Every gateway metric the Grafana dashboard (`helm/gateway/dashboards/gateway.json`) queries
/// is one `/metrics` exports once the gateway has served a request, forwarded one, answered a
/// chat turn and closed a socket: a renamed or dropped metric fails here instead of leaving a
/// panel without data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let keys = keys();
    let (cfg, _local) = local_config(&keys).await;
    let gw = start(&cfg).await;
    let token = keys.token("bob", "acme", &["read:prices", "write:chat"]);
    let http = http();
    let r = http
        .get(format!("{}/api/v1/cowork/echo", gw.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A model call (no key is configured: the offline provider answers).
    let r = http
        .post(format!("{}/api/v1/chat", gw.base))
        .bearer_auth(&token)
        .json(&json!({"message": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ws = ws_with_token(&gw.ws, &token).await;
    ws.close(None).await.unwrap();
    let closed = r#"liquid_gateway_ws_closed_total{reason="client"} "#;
    gw.wait_for_metric(closed, 1.0, "the socket's close was never counted")
        .await;

    let dashboard = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../helm/gateway/dashboards/gateway.json"
    );
    let queried = liquid_testkit::dashboard::queried_metrics(dashboard.as_ref());
    assert!(
        queried.contains("liquid_gateway_ws_refused_full_total"),
        "{queried:?}"
    );
    liquid_testkit::dashboard::assert_exported(&gw.metrics_text().await, dashboard.as_ref());
}
