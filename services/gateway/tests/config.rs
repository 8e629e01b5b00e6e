//! The gateway's sections load from the environment beside the shared ones, as the Helm chart
//! sets them, and a misspelt key or a bad value stops start-up naming the key. Then what the
//! configured limits and permissions mean to a client of a running gateway: the address quota
//! bounds session minting and refused tokens (at connect and on an open socket), and
//! platform-wide channels take an admin to publish on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod support;

use liquid_gateway::{SERVICE, Settings};
use liquid_runtime::ServiceConfig;
use serde_json::{Value, json};
use support::*;

#[test]
fn gateway_sections_load_from_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("LIQUID_GATEWAY__RATE_LIMIT__CLASSES__DEFAULT__USER", "7");
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
            r#"["10.0.0.0/8"]"#,
        );
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__REDIS_URL",
            "redis://127.0.0.1:6379",
        );
        jail.set_env(
            "LIQUID_GATEWAY__CORS__ALLOWED_ORIGINS",
            r#"["https://console.example.com"]"#,
        );
        jail.set_env("LIQUID_GATEWAY__WEBSOCKET__REQUIRE_AUTH", "false");
        jail.set_env("LIQUID_GATEWAY__CACHE__URL", "redis://127.0.0.1:6379");
        let cfg = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap();
        let s = &cfg.settings;
        let default = &s.rate_limit.classes["default"];
        assert_eq!((default.user, default.session, default.ip), (7, 50, 30));
        assert_eq!(s.rate_limit.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(s.rate_limit.redis_url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(s.cors.allowed_origins, ["https://console.example.com"]);
        assert!(!s.websocket.require_auth);
        assert_eq!(cfg.cache.url, "redis://127.0.0.1:6379");

        jail.set_env("LIQUID_GATEWAY__WEBSOCKET__HEARTBEAT_SECONDS", "5");
        let err = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap_err();
        assert!(err.to_string().contains("heartbeat_seconds"), "{err}");

        jail.clear_env();
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
            r#"["10.0.0.0/40"]"#,
        );
        let err = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap_err();
        assert!(
            err.to_string().contains("rate_limit.trusted_proxies"),
            "{err}"
        );
        Ok(())
    });
}

/// Status, error code and the whole body of an answer.
async fn answer(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, body)
}

/// A gateway on Postgres with the in-memory bus and cache (so limits are per replica), with
/// the default class's quotas set.
async fn gateway_with_quotas(keys: &Keys, ip: u32) -> (Gateway, Local) {
    let (mut cfg, local) = local_config(keys).await;
    quotas(&mut cfg, 100, 50, ip);
    (start(&cfg).await, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_cannot_mint_sessions_past_the_address_quota() {
    let keys = keys();
    let (gw, _local) = gateway_with_quotas(&keys, 2).await;
    let http = http();
    let sessions = format!("{}/api/v1/gateway/sessions", gw.base);

    let r = http.post(&sessions).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-ratelimit-tier"], "ip");
    let first: Value = r.json().await.unwrap();
    let token = first["session_token"].as_str().unwrap().to_owned();
    // Presenting a session while minting the next one changes nothing: still the address.
    let r = http
        .post(&sessions)
        .header("x-session-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-ratelimit-tier"], "ip");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let second: Value = r.json().await.unwrap();
    let minted = second["session_token"].as_str().unwrap().to_owned();
    for presented in [&token, &minted] {
        let (status, code, body) = answer(
            http.post(&sessions)
                .header("x-session-token", presented)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{body}");
        assert_eq!(body["error"]["details"]["tier"], "ip", "{body}");
    }
    // The sessions themselves still work, on their own quota.
    let r = http
        .get(format!("{}/.well-known/agent-card.json", gw.base))
        .header("x-session-token", &minted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-tier"], "session");
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_charged_to_the_address() {
    let keys = keys();
    let (gw, local) = gateway_with_quotas(&keys, 2).await;
    let http = http();
    let whoami = format!("{}/api/v1/gateway/whoami", gw.base);

    for i in 0..2 {
        let r = http
            .get(&whoami)
            .bearer_auth(keys.forged())
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-ratelimit-tier"], "ip", "forged {i}");
        let (status, code, _) = answer(r).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "unauthenticated"),
            "forged {i}"
        );
    }
    // The address quota is spent: refused tokens of every kind, and no token, get 429.
    for (what, token) in keys.refused() {
        let (status, code, body) =
            answer(http.get(&whoami).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{what}");
        assert_eq!(body["error"]["details"]["tier"], "ip", "{what}");
    }
    let (status, code, _) = answer(
        http.post(format!("{}/api/v1/cowork/info", gw.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"), "no token");
    // A WebSocket connect with a refused token is charged the same way, on both sockets.
    for socket in ["/ws", "/graphql"] {
        let (status, code, _) = answer(
            http.get(format!("{}{socket}", gw.base))
                .bearer_auth(keys.forged())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{socket}");
    }
    assert_eq!(local.upstream.total_hits(), 0);
    // A valid token from the same address is charged to its user, not refused.
    let r = http
        .get(&whoami)
        .bearer_auth(keys.token("bob", "acme", &["read:prices"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-tier"], "user");
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refused_on_an_open_socket_are_charged_to_the_address() {
    let keys = keys();
    // Each connect without a token costs one of the address's three requests, and so does each
    // refused token: connect, refusal, connect, refusal (the one past the quota).
    let (gw, local) = gateway_with_quotas(&keys, 3).await;
    let forged = json!({"type": "auth", "token": keys.forged(), "id": 1});

    // /ws, a token in the first message.
    let mut ws = ws_connect(&gw.ws, &[]).await.unwrap();
    send(&mut ws, forged.clone()).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "unauthenticated", "{refused}");
    assert_eq!(close_code(&mut ws).await, 4001);
    let mut ws = ws_connect(&gw.ws, &[]).await.unwrap();
    send(&mut ws, forged.clone()).await;
    let limited = next_json(&mut ws).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert_eq!(limited["details"]["tier"], "ip", "{limited}");
    assert!(limited["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(close_code(&mut ws).await, 4029);
    assert_eq!(ws_connect(&gw.ws, &[]).await.err(), Some(429));
    // A verified connection is charged to its user; a refused fresh token on it is still
    // charged to the address, which has nothing left: refused as rate limited, and the
    // connection goes on with the token it has.
    let mut ws = ws_with_token(&gw.ws, &keys.token("bob", "acme", &["read:prices"])).await;
    send(&mut ws, forged.clone()).await;
    let limited = next_json(&mut ws).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert_eq!(limited["id"], 1, "{limited}");
    send(&mut ws, json!({"type": "ping", "id": 2})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    gw.running.stop().await.unwrap();

    // The GraphQL socket, a token in connection_init: 4403, then 4029 once the quota is spent.
    let (gw, second) = gateway_with_quotas(&keys, 3).await;
    let graphql = gw.ws.replace("/ws", "/graphql");
    let protocol = [("sec-websocket-protocol", "graphql-transport-ws")];
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", keys.forged())}});
    let mut ws = ws_connect(&graphql, &protocol).await.unwrap();
    send(&mut ws, init.clone()).await;
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, 4403, "{reason}");
    assert!(reason.starts_with("unauthenticated"), "{reason}");
    let mut ws = ws_connect(&graphql, &protocol).await.unwrap();
    send(&mut ws, init).await;
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, 4029, "{reason}");
    assert!(reason.starts_with("rate_limited"), "{reason}");
    assert!(reason.contains("retry after"), "{reason}");
    assert_eq!(ws_connect(&graphql, &protocol).await.err(), Some(429));
    let hits = local.upstream.total_hits() + second.upstream.total_hits();
    assert_eq!(hits, 0, "no refused socket reached a service");
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_wide_channels_take_an_admin_to_publish_on() {
    let keys = keys();
    let (gw, _local) = gateway_with_quotas(&keys, 30).await;
    let http = http();
    let publish = |channel: &str| format!("{}/api/v1/gateway/channels/{channel}/messages", gw.base);
    let mut reader = ws_with_token(
        &gw.ws,
        &keys.token("ann", "globex", &["read:prices", "healer:read"]),
    )
    .await;
    subscribe(&mut reader, "prices:BTC-USD").await;
    subscribe(&mut reader, "healing").await;

    // A tenant's service token may publish on its tenant's channels, not on the shared ones.
    let tenant = keys.token("svc", "acme", &["gateway:write"]);
    for channel in ["prices:BTC-USD", "healing"] {
        let (status, code, body) = answer(
            http.post(publish(channel))
                .bearer_auth(&tenant)
                .json(&json!({"data": {"symbol": "BTC-USD", "price": 1.0, "fake": true}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (403, "permission_denied"),
            "{channel}: {body}"
        );
        let details = &body["error"]["details"];
        assert_eq!(details["reason"], "platform_channel", "{body}");
        assert_eq!(details["scope"], "admin:*", "{body}");
        assert_eq!(details["channel"], channel, "{body}");
    }
    let r = http
        .post(publish("cowork:s1"))
        .bearer_auth(&tenant)
        .json(&json!({"data": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A chat channel is one user's session: no token publishes on it from outside.
    let (status, code, body) = answer(
        http.post(publish("chat:s1"))
            .bearer_auth(&tenant)
            .json(&json!({"data": "hello"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_argument"), "{body}");
    assert_eq!(
        body["error"]["details"]["reason"], "owned_channel",
        "{body}"
    );

    // An admin may; the reader's first message is the admin's, so the refused ones never went
    // out.
    let admin = keys.token("ops", "platform", &["admin:*"]);
    for (channel, data) in [
        ("prices:BTC-USD", json!({"symbol": "BTC-USD", "price": 2.0})),
        ("healing", json!({"incident": 7})),
    ] {
        let r = http
            .post(publish(channel))
            .bearer_auth(&admin)
            .json(&json!({ "data": data }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{channel}");
        let m = next_json(&mut reader).await;
        assert_eq!(
            (m["channel"].as_str(), &m["data"]),
            (Some(channel), &data),
            "{m}"
        );
    }
    gw.running.stop().await.unwrap();
}
