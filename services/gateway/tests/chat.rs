//! The chat API through a real gateway on PostgreSQL, NATS and Redis, talking to local model
//! servers that speak the vendors' wire formats (liquid-testkit): routing by model, the
//! labelled offline provider, SSE, sessions with their own history per tenant, replies on the
//! `chat:<session>` channel, WebSocket chat, and request coalescing (one upstream call for N
//! identical concurrent requests, per tenant, with a cache invalidated by prefix).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use liquid_gateway::Settings;
use liquid_kit::Secret;
use liquid_llm::{ProviderConfig, ProviderKind};
use liquid_runtime::ServiceConfig;
use liquid_testkit::model_servers::{ModelServer, Reply};
use serde_json::{Value, json};
use support::*;

const OPENAI_KEY: &str = "sk-local-openai";
const ANTHROPIC_KEY: &str = "sk-ant-local";

struct Setup {
    keys: Keys,
    shared: Shared,
    openai: ModelServer,
    anthropic: ModelServer,
    gw: Gateway,
    http: reqwest::Client,
    /// The configuration `gw` runs with, for a second replica.
    cfg: ServiceConfig<Settings>,
}

/// A gateway whose `openai` and `anthropic` providers are local servers with keys and whose
/// `gemini` provider has no key (so it answers offline).
async fn setup(adjust: impl FnOnce(&mut ServiceConfig<Settings>)) -> Setup {
    let keys = keys();
    let (mut cfg, shared) = shared_config(&keys).await;
    let openai = ModelServer::openai(OPENAI_KEY).await.unwrap();
    let anthropic = ModelServer::anthropic(ANTHROPIC_KEY).await.unwrap();
    cfg.settings.rate_limit.enabled = false;
    let llm = &mut cfg.settings.llm;
    llm.retry.max_attempts = 1;
    llm.providers.insert(
        "openai".into(),
        ProviderConfig {
            kind: ProviderKind::Openai,
            api_key: Secret::new(OPENAI_KEY.into()),
            base_url: openai.base_url(),
        },
    );
    llm.providers.insert(
        "anthropic".into(),
        ProviderConfig {
            kind: ProviderKind::Anthropic,
            api_key: Secret::new(ANTHROPIC_KEY.into()),
            base_url: anthropic.base_url(),
        },
    );
    // No key for gemini: the environment must not fill one in either.
    llm.providers.insert(
        "gemini".into(),
        ProviderConfig {
            kind: ProviderKind::Gemini,
            api_key: Secret::default(),
            base_url: "http://127.0.0.1:9".into(),
        },
    );
    adjust(&mut cfg);
    let gw = start(&cfg).await;
    Setup {
        keys,
        shared,
        openai,
        anthropic,
        gw,
        http: http(),
        cfg,
    }
}

impl Setup {
    fn token(&self, sub: &str, tenant: &str) -> String {
        self.keys.token(sub, tenant, &["write:chat"])
    }

    async fn chat(&self, token: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
        self.chat_at(&self.gw.base, token, body).await
    }

    /// A chat request to the gateway at `base`.
    async fn chat_at(
        &self,
        base: &str,
        token: &str,
        body: Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(format!("{base}/api/v1/chat"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }
}

/// `(event, data)` pairs of an SSE body.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            Some((event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_routes_by_model_streams_sse_and_labels_offline_answers() {
    let s = setup(|_| {}).await;
    let token = s.token("alice", "acme");

    // OpenAI by model name, with the key the server expects.
    s.openai.push(Reply::text("hello from openai"));
    let (status, reply, headers) = s
        .chat(&token, json!({"model": "gpt-4o-mini", "message": "hi"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["text"], "hello from openai");
    assert_eq!(reply["provider"], "openai");
    assert_eq!(reply["offline"], false);
    assert!(reply.get("notice").is_none());
    assert_eq!(headers["x-liquid-model-provider"], "openai");
    let seen = s.openai.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-local-openai")
    );
    assert_eq!(seen[0].body["messages"][0]["content"], "hi");

    // Anthropic, streamed as server-sent events.
    s.anthropic.push(Reply::text("streamed from claude"));
    let r = s
        .http
        .post(format!("{}/api/v1/chat", s.gw.base))
        .bearer_auth(&token)
        .json(&json!({"model": "claude-sonnet-4-5", "message": "stream please", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text().await.unwrap());
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "streamed from claude");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["provider"], "anthropic");
    assert_eq!(done["text"], "streamed from claude");
    assert_eq!(s.anthropic.request_count(), 1);
    assert_eq!(s.anthropic.requests()[0].body["stream"], true);

    // No key for gemini: the offline provider answers and says so.
    let (status, reply, headers) = s
        .chat(
            &token,
            json!({"model": "gemini-2.5-flash", "message": "anyone there?"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["offline"], true);
    assert_eq!(reply["provider"], "offline");
    assert!(reply["text"].as_str().unwrap().starts_with("[offline]"));
    assert!(reply["notice"].as_str().unwrap().contains("no API key"));
    assert_eq!(headers["x-liquid-model-provider"], "offline");

    // Unknown model, missing scope, malformed bodies.
    let (status, reply, _) = s
        .chat(&token, json!({"model": "llama-3", "message": "x"}))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let reader = s.keys.token("bob", "acme", &["read:prices"]);
    let (status, reply, _) = s
        .chat(&reader, json!({"model": "gpt-4o-mini", "message": "x"}))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );
    // Streaming asks for the same scope: refused before any event is sent.
    let r = s
        .http
        .post(format!("{}/api/v1/chat", s.gw.base))
        .bearer_auth(&reader)
        .header("accept", "text/event-stream")
        .json(&json!({"model": "gpt-4o-mini", "message": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "permission_denied");
    // Forged, expired and wrong-audience tokens, as JSON and as a stream.
    for (what, bad) in s.keys.refused() {
        for stream in [false, true] {
            let r = s
                .http
                .post(format!("{}/api/v1/chat", s.gw.base))
                .bearer_auth(&bad)
                .json(&json!({"model": "gpt-4o-mini", "message": "x", "stream": stream}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what} (stream: {stream})");
        }
    }
    let (status, _, _) = s.chat(&token, json!({"model": "gpt-4o-mini"})).await;
    assert_eq!(status, 400);
    let (status, _, _) = s
        .chat(&token, json!({"session": "a b", "message": "x"}))
        .await;
    assert_eq!(status, 400);
    // None of the refusals reached a vendor.
    assert_eq!(s.openai.request_count(), 1);

    // admin:* covers write:chat.
    s.openai.push(Reply::text("hello admin"));
    let admin = s.keys.token("root", "acme", &["admin:*"]);
    let (status, reply, _) = s
        .chat(
            &admin,
            json!({"model": "gpt-4o-mini", "message": "as admin"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["text"], "hello admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_history_per_tenant_and_publish_replies_on_the_session_channel() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let eve = s.token("eve", "globex");

    let mut ws = ws_with_token(&s.gw.ws, &alice).await;
    subscribe(&mut ws, "chat:s1").await;

    s.openai.push(Reply::text("first answer"));
    s.openai.push(Reply::text("second answer"));
    s.openai.push(Reply::text("globex answer"));
    let (status, reply, _) = s
        .chat(
            &alice,
            json!({"session": "s1", "model": "gpt-4o-mini", "system": "be brief", "message": "one"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["session"], "s1");
    let published = next_json(&mut ws).await;
    assert_eq!(published["channel"], "chat:s1");
    assert_eq!(published["data"]["type"], "reply");
    assert_eq!(published["data"]["text"], "first answer");

    let (_, reply, _) = s
        .chat(&alice, json!({"session": "s1", "message": "two"}))
        .await;
    assert_eq!(reply["text"], "second answer");
    // The second upstream call carried the session's history and its system prompt.
    let second = &s.openai.requests()[1].body;
    let contents: Vec<&str> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(contents, ["be brief", "one", "first answer", "two"]);

    // The same session id under another tenant is another conversation, and its reply is not
    // published to acme's subscribers.
    let (_, reply, _) = s
        .chat(
            &eve,
            json!({"session": "s1", "model": "gpt-4o-mini", "message": "hello"}),
        )
        .await;
    assert_eq!(reply["text"], "globex answer");
    let third = &s.openai.requests()[2].body;
    assert_eq!(third["messages"].as_array().unwrap().len(), 1);
    let published = next_json(&mut ws).await;
    assert_eq!(published["data"]["text"], "second answer");

    // History, then forgetting the session.
    let history: Value = s
        .http
        .get(format!("{}/api/v1/chat/sessions/s1", s.gw.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["turns"], 2);
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
    let r = s
        .http
        .delete(format!("{}/api/v1/chat/sessions/s1", s.gw.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .get(format!("{}/api/v1/chat/sessions/s1", s.gw.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Eve's session of the same id is untouched.
    let r = s
        .http
        .get(format!("{}/api/v1/chat/sessions/s1", s.gw.base))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_chat_acknowledges_then_streams_the_turn_to_the_session_channel() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let mut ws = ws_with_token(&s.gw.ws, &alice).await;
    subscribe(&mut ws, "chat:w1").await;
    s.anthropic.push(Reply::text("over the socket"));
    send(
        &mut ws,
        json!({"type": "chat", "id": 5, "session": "w1",
               "message": {"text": "hello socket", "model": "claude-sonnet-4-5"}}),
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], 5);
    assert_eq!(ack["data"]["channel"], "chat:w1");
    let turn = ack["data"]["turn"].as_str().unwrap().to_owned();
    let mut text = String::new();
    loop {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["data"]["turn"], turn.as_str());
        match m["data"]["type"].as_str().unwrap() {
            "delta" => text.push_str(m["data"]["text"].as_str().unwrap()),
            "reply" => {
                assert_eq!(m["data"]["text"], "over the socket");
                assert_eq!(m["data"]["provider"], "anthropic");
                break;
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert_eq!(text, "over the socket");
    assert_eq!(s.anthropic.request_count(), 1);

    // A failing turn reports its error on the channel.
    s.anthropic.push(Reply::failure(401, None));
    send(
        &mut ws,
        json!({"type": "chat", "session": "w1", "message": "again"}),
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    let failed = next_json(&mut ws).await;
    assert_eq!(failed["data"]["type"], "error", "{failed}");
    assert_eq!(failed["data"]["code"], "unauthenticated");

    // Without write:chat the action is refused.
    let reader = s.keys.token("bob", "acme", &["read:prices"]);
    let mut other = ws_with_token(&s.gw.ws, &reader).await;
    send(
        &mut other,
        json!({"type": "chat", "session": "w1", "message": "x"}),
    )
    .await;
    let refused = next_json(&mut other).await;
    assert_eq!(refused["code"], "permission_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_requests_share_one_upstream_call_per_tenant_and_are_cached() {
    const N: usize = 8;
    let s = setup(|_| {}).await;
    let acme = s.token("alice", "acme");
    let globex = s.token("eve", "globex");
    let body =
        json!({"model": "gpt-4o-mini", "message": "what is 2+2?", "params": {"temperature": 0.0}});

    s.openai.hold_replies();
    s.openai.push(Reply::text("four"));
    s.openai.push(Reply::text("four, for globex"));
    let mut calls = Vec::new();
    for i in 0..=N {
        let token = if i == N { globex.clone() } else { acme.clone() };
        let http = s.http.clone();
        let url = format!("{}/api/v1/chat", s.gw.base);
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    // One more identical acme request, streamed: it shares the same call.
    let streamed = {
        let http = s.http.clone();
        let url = format!("{}/api/v1/chat", s.gw.base);
        let mut body = body.clone();
        body["stream"] = json!(true);
        let token = acme.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, sse_events(&r.text().await.unwrap()))
        })
    };
    // Both tenants' calls reached the vendor; every other acme request joined acme's call.
    s.openai
        .wait_for_requests(2, Duration::from_secs(20))
        .await
        .unwrap();
    let joined = r#"liquid_gateway_coalescing_requests_total{outcome="joined"}"#;
    s.gw.wait_for_metric(
        joined,
        N as f64,
        "the other requests never joined the call in flight",
    )
    .await;
    s.openai.release_replies();

    let mut acme_texts = Vec::new();
    let mut outcomes = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let (status, reply) = call.await.unwrap();
        assert_eq!(status, 200, "{reply}");
        if i == N {
            assert_eq!(reply["coalesced"], "upstream");
        } else {
            acme_texts.push(reply["text"].as_str().unwrap().to_owned());
            outcomes.push(reply["coalesced"].as_str().unwrap().to_owned());
        }
    }
    let (status, events) = streamed.await.unwrap();
    assert_eq!(status, 200);
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, done["text"].as_str().unwrap());
    acme_texts.push(deltas);
    outcomes.push(done["coalesced"].as_str().unwrap().to_owned());
    assert_eq!(
        s.openai.request_count(),
        2,
        "exactly one upstream call per tenant"
    );
    assert_eq!(
        s.openai.requests()[0].body["messages"][0]["content"],
        "what is 2+2?"
    );
    let globex_text = if acme_texts[0] == "four" {
        "four, for globex"
    } else {
        "four"
    };
    assert!(
        acme_texts.iter().all(|t| *t == acme_texts[0]),
        "{acme_texts:?}"
    );
    assert_ne!(acme_texts[0], globex_text);
    assert_eq!(outcomes.iter().filter(|o| *o == "upstream").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "joined").count(), N);

    // The answer is cached under the tenant's prefix in Redis, so a later identical request
    // makes no call either.
    let keys = s
        .shared
        .redis
        .scan(&format!("liquid:gateway:{}acme:*", s.shared.redis.prefix()))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (_, reply, headers) = s.chat(&acme, body.clone()).await;
    assert_eq!(reply["coalesced"], "cached");
    assert_eq!(headers["x-liquid-coalesced"], "cached");
    assert_eq!(reply["text"], acme_texts[0]);
    assert_eq!(s.openai.request_count(), 2);
    // The cache is Redis, shared by the replicas: a second replica answers from it too.
    let replica_b = start(&s.cfg).await;
    let (status, reply, _) = s.chat_at(&replica_b.base, &acme, body.clone()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["coalesced"], "cached");
    assert_eq!(reply["text"], acme_texts[0]);
    assert_eq!(s.openai.request_count(), 2);

    // Invalidation by prefix removes acme's answers only.
    let removed: Value = s
        .http
        .delete(format!("{}/api/v1/chat/cache", s.gw.base))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(removed["removed"], 1);
    let (_, reply, _) = s.chat(&globex, body.clone()).await;
    assert_eq!(reply["coalesced"], "cached", "globex's answer survived");
    // Invalidated for every replica: replica B asks upstream, and replica A then has B's answer.
    s.openai.push(Reply::text("four again"));
    let (_, reply, _) = s.chat_at(&replica_b.base, &acme, body.clone()).await;
    assert_eq!(reply["coalesced"], "upstream");
    assert_eq!(reply["text"], "four again");
    let (_, reply, _) = s.chat(&acme, body).await;
    assert_eq!(reply["coalesced"], "cached", "{reply}");
    assert_eq!(reply["text"], "four again");
    assert_eq!(s.openai.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let s = setup(|c| {
        let ws = &mut c.settings.websocket;
        ws.write_timeout_secs = 1;
        // The queue never overflows here: only a bounded write can notice the stalled reader.
        ws.send_queue = 100_000;
        ws.heartbeat_secs = 60;
        ws.idle_timeout_secs = 120;
    })
    .await;
    let reader = s.keys.token("carol", "acme", &["read:prices"]);
    // Price channels are platform-wide: publishing on one takes admin:*.
    let publisher = s.keys.token("feed", "ops", &["admin:*"]);
    // Counters only go up, and the process may hold other connections (`cargo test` runs
    // tests side by side): the test watches this one count grow, not a gauge reach zero.
    let slow = "liquid_gateway_ws_closed_total{reason=\"slow\"} ";
    let before = s.gw.metric_or_zero(slow).await;
    let mut ws = ws_with_token(&s.gw.ws, &reader).await;
    subscribe(&mut ws, "prices:FLOOD").await;
    // From here on the client reads nothing; the channel stays busy until the server gives up.
    let big = "x".repeat(200 * 1024);
    let mut closed = false;
    for i in 0..600 {
        let r = s
            .http
            .post(format!(
                "{}/api/v1/gateway/channels/prices:FLOOD/messages",
                s.gw.base
            ))
            .bearer_auth(&publisher)
            .json(&json!({"data": {"i": i, "pad": big}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        if i % 10 == 9 && s.gw.metric_or_zero(slow).await > before {
            closed = true;
            break;
        }
    }
    for _ in 0..100 {
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        closed = s.gw.metric_or_zero(slow).await > before;
    }
    assert!(
        closed,
        "the server never closed a client that stopped reading"
    );
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_chat_is_charged_to_the_users_chat_quota_and_bounded_in_flight() {
    let s = setup(|c| {
        let redis_url = c.cache.url.clone();
        let limits = &mut c.settings.rate_limit;
        limits.enabled = true;
        limits.redis_url = Secret::new(redis_url);
        limits.key_prefix = format!("{}wschat:", c.settings.coalescing.key_prefix);
        limits.classes.insert(
            "chat".into(),
            liquid_gateway::config::ClassLimits {
                user: 5,
                session: 5,
                ip: 5,
                period_secs: 900,
            },
        );
        limits.routes = vec![liquid_gateway::config::RouteClass {
            prefix: "/api/v1/chat".into(),
            class: "chat".into(),
        }];
    })
    .await;
    let alice = s.token("alice", "acme");
    let mut ws = ws_with_token(&s.gw.ws, &alice).await;
    // Turns stay in flight until released.
    s.openai.hold_replies();
    let chat = |n: u32| json!({"type": "chat", "id": n, "session": "q1", "message": {"text": format!("m{n}"), "model": "gpt-4o-mini"}});
    for n in 0..4 {
        s.openai.push(Reply::text("held"));
        send(&mut ws, chat(n)).await;
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // A fifth turn while four run is refused without spending quota.
    send(&mut ws, chat(4)).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["id"], 4);

    // The cap is per connection; the limiter is per user: on a new connection the fifth
    // chat (the quota's last) is allowed and the sixth refused.
    drop(ws);
    let mut ws = ws_with_token(&s.gw.ws, &alice).await;
    s.openai.release_replies();
    s.openai.push(Reply::text("fifth"));
    send(&mut ws, chat(5)).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    send(&mut ws, chat(6)).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["id"], 6);
    assert!(refused["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(refused["details"]["tier"], "user");
    assert_eq!(refused["details"]["class"], "chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_session_belongs_to_its_user_not_to_the_whole_tenant() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let bob = s.token("bob", "acme");
    let mut alice_ws = ws_with_token(&s.gw.ws, &alice).await;
    subscribe(&mut alice_ws, "chat:mine").await;
    let mut bob_ws = ws_with_token(&s.gw.ws, &bob).await;
    subscribe(&mut bob_ws, "chat:mine").await;

    s.openai.push(Reply::text("alice answer"));
    let (status, reply, _) = s
        .chat(
            &alice,
            json!({"session": "mine", "model": "gpt-4o-mini", "message": "secret plan"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let published = next_json(&mut alice_ws).await;
    assert_eq!(published["data"]["text"], "alice answer");

    // Bob cannot read or delete Alice's session: to him it does not exist.
    let url = format!("{}/api/v1/chat/sessions/mine", s.gw.base);
    let r = s.http.get(&url).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.delete(&url).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Bob naming the same session starts his own conversation, and his channel carries only
    // his replies (Alice's reply above never reached him).
    s.openai.push(Reply::text("bob answer"));
    let (status, reply, _) = s
        .chat(
            &bob,
            json!({"session": "mine", "model": "gpt-4o-mini", "message": "hello"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let bobs = &s.openai.requests()[1].body;
    assert_eq!(bobs["messages"].as_array().unwrap().len(), 1, "{bobs}");
    let published = next_json(&mut bob_ws).await;
    assert_eq!(published["data"]["text"], "bob answer", "{published}");

    // Alice's session is intact and still hers.
    let history: Value = s
        .http
        .get(&url)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["turns"], 1);
    assert_eq!(history["messages"][0]["content"], "secret plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrower_fresh_token_drops_the_subscriptions_it_no_longer_allows() {
    let s = setup(|_| {}).await;
    let wide = s
        .keys
        .token("alice", "acme", &["write:chat", "read:prices"]);
    let narrow = s.keys.token("alice", "acme", &["read:prices"]);
    let publisher = s.keys.token("feed", "ops", &["admin:*"]);
    let mut ws = ws_with_token(&s.gw.ws, &wide).await;
    subscribe(&mut ws, "chat:n1").await;
    subscribe(&mut ws, "prices:BTC").await;
    send(&mut ws, json!({"type": "auth", "id": 1, "token": narrow})).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["unsubscribed"], json!(["chat:n1"]));

    // Alice's chat reply no longer reaches the connection; prices still do.
    s.openai.push(Reply::text("not for you any more"));
    let (status, _, _) = s
        .chat(
            &wide,
            json!({"session": "n1", "model": "gpt-4o-mini", "message": "x"}),
        )
        .await;
    assert_eq!(status, 200);
    let r = s
        .http
        .post(format!(
            "{}/api/v1/gateway/channels/prices:BTC/messages",
            s.gw.base
        ))
        .bearer_auth(&publisher)
        .json(&json!({"data": {"p": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let next = next_json(&mut ws).await;
    assert_eq!(next["channel"], "prices:BTC", "{next}");
}

/// A 1,000-word answer and how many text deltas the vendor streams it in (the local OpenAI
/// server sends five characters per chunk).
fn long_answer() -> (String, usize) {
    let text = (0..1000)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let deltas = text.chars().count().div_ceil(5);
    (text, deltas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chat_answer_streams_whole_and_in_few_messages_over_sse_and_the_websocket() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let (answer, upstream_deltas) = long_answer();
    assert!(upstream_deltas > 1000, "{upstream_deltas}");
    // Batches are counted, not timed: ten vendor deltas per message on average is far below
    // what batching gives (about one message per 4 KiB) and far above one per delta.
    let most = upstream_deltas / 10;

    // Server-sent events.
    s.openai.push(Reply::text(answer.clone()));
    let r = s
        .http
        .post(format!("{}/api/v1/chat", s.gw.base))
        .bearer_auth(&alice)
        .json(&json!({"model": "gpt-4o-mini", "message": "a long answer over sse", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    let deltas: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas.concat(), answer, "every word, in order");
    assert!(
        !deltas.is_empty() && deltas.len() <= most,
        "{} delta events for {upstream_deltas} vendor deltas",
        deltas.len()
    );
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["text"], answer.as_str());

    // WebSocket chat: the turn's deltas are messages on the session's channel.
    s.openai.push(Reply::text(answer.clone()));
    let mut ws = ws_with_token(&s.gw.ws, &alice).await;
    subscribe(&mut ws, "chat:long").await;
    send(
        &mut ws,
        json!({"type": "chat", "id": 1, "session": "long",
               "message": {"text": "a long answer over the socket", "model": "gpt-4o-mini"}}),
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut text = String::new();
    let mut frames = 0;
    loop {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message", "{m}");
        match m["data"]["type"].as_str().unwrap() {
            "delta" => {
                frames += 1;
                text.push_str(m["data"]["text"].as_str().unwrap());
            }
            "reply" => {
                assert_eq!(m["data"]["text"], answer.as_str());
                break;
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert_eq!(text, answer, "every word, in order");
    assert!(
        frames > 0 && frames <= most,
        "{frames} delta frames for {upstream_deltas} vendor deltas"
    );
    assert_eq!(s.openai.request_count(), 2);
}

/// A session's figures as `GET /api/v1/chat/sessions/{session}` shows them.
/// The session's figures once `ready` holds for them (work that outlives a request settles a
/// moment later); panics after 20 s with the last figures read.
async fn session_figures_once(
    s: &Setup,
    token: &str,
    session: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            last = session_figures(s, token, session).await;
            if ready(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "session {session} never settled: {last}");
    last
}

async fn session_figures(s: &Setup, token: &str, session: &str) -> Value {
    let r = s
        .http
        .get(format!("{}/api/v1/chat/sessions/{session}", s.gw.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_or_cached_chat_answer_counts_once_in_the_sessions_spend() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let bob = s.token("bob", "acme");
    let ask = |session: &str| json!({"session": session, "model": "gpt-4o-mini", "message": "what is 2+2?"});

    // Two sessions ask the same first question at once: one upstream call answers both.
    s.openai.hold_replies();
    s.openai.push(Reply::text("four"));
    let joined = r#"liquid_gateway_coalescing_requests_total{outcome="joined"}"#;
    let joined_before = s.gw.metric_or_zero(joined).await;
    let mut calls = Vec::new();
    for (token, session) in [(&alice, "spend-a"), (&bob, "spend-b")] {
        let http = s.http.clone();
        let url = format!("{}/api/v1/chat", s.gw.base);
        let (token, body) = (token.clone(), ask(session));
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }));
    }
    s.openai
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .unwrap();
    s.gw.wait_for_metric(
        joined,
        joined_before + 1.0,
        "the second request never joined the call in flight",
    )
    .await;
    s.openai.release_replies();
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.unwrap());
    }
    let outcomes: Vec<&str> = replies
        .iter()
        .map(|r| r["coalesced"].as_str().unwrap())
        .collect();
    assert!(
        outcomes == ["upstream", "joined"] || outcomes == ["joined", "upstream"],
        "{outcomes:?}"
    );
    let cost = replies[0]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{}", replies[0]);
    // A third session gets the same answer from the cache.
    let (status, reply, _) = s.chat(&alice, ask("spend-c")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["coalesced"], "cached");
    assert_eq!(s.openai.request_count(), 1);

    let a = session_figures(&s, &alice, "spend-a").await;
    let b = session_figures(&s, &bob, "spend-b").await;
    let c = session_figures(&s, &alice, "spend-c").await;
    let (upstream, joined) = if outcomes[0] == "upstream" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    for figures in [&a, &b, &c] {
        assert_eq!(figures["turns"], 1, "{figures}");
        assert_eq!(figures["messages"].as_array().unwrap().len(), 2);
    }
    // The session whose request went upstream spent the answer; the others received it.
    assert_eq!(upstream["cost_usd"].as_f64(), Some(cost), "{upstream}");
    assert_eq!(upstream["shared"]["turns"], 0);
    assert_eq!(
        upstream["usage"]["output_tokens"],
        replies[0]["usage"]["output_tokens"]
    );
    for received in [joined, &c] {
        assert_eq!(received["cost_usd"].as_f64(), Some(0.0), "{received}");
        assert_eq!(received["usage"]["output_tokens"], 0);
        assert_eq!(received["shared"]["turns"], 1);
        assert_eq!(received["shared"]["cost_usd"].as_f64(), Some(cost));
    }
    // Summed over sessions, the spend is the one upstream call's cost.
    let spent: f64 = [&a, &b, &c]
        .iter()
        .map(|f| f["cost_usd"].as_f64().unwrap())
        .sum();
    assert_eq!(spent, cost);
}

/// A streamed session turn whose client leaves before the answer: the shared upstream call
/// runs on in its flight (its answer is paid for and cached), so the session still counts
/// that spend, while its history holds only what reached the client (nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_mid_call_still_counts_the_shared_calls_spend() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    let ask = |session: &str, stream: bool| json!({"session": session, "model": "gpt-4o-mini", "message": "what is 3+3?", "stream": stream});
    s.openai.hold_replies();
    s.openai.push(Reply::text("six"));
    let abandoned = "liquid_llm_session_turns_abandoned_total ";
    let abandoned_before = s.gw.metric_or_zero(abandoned).await;
    let leaving = {
        let (http, url) = (s.http.clone(), format!("{}/api/v1/chat", s.gw.base));
        let (token, body) = (alice.clone(), ask("left", true));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .json(&body)
                .send()
                .await
                .unwrap();
            // Reads what comes, until the test drops this task (the client leaves).
            let _ = r.bytes().await;
        })
    };
    s.openai
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .unwrap();
    leaving.abort();
    let _ = leaving.await;
    s.gw.wait_for_metric(
        abandoned,
        abandoned_before + 1.0,
        "the gateway never saw the client leave",
    )
    .await;
    s.openai.release_replies();

    // The call ran on: another session gets its answer, joining the call if it is still in
    // flight or from the cache once it is done, and no second call is made.
    let (status, reply, _) = s.chat(&alice, ask("after", false)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        reply["coalesced"] == "joined" || reply["coalesced"] == "cached",
        "{reply}"
    );
    assert_eq!(s.openai.request_count(), 1);
    let cost = reply["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{reply}");

    // The session that left spent it, though nothing joined its history.
    let left = session_figures_once(&s, &alice, "left", |f| f["abandoned_turns"] == 1).await;
    assert_eq!(left["turns"], 0, "{left}");
    assert_eq!(left["messages"].as_array().unwrap().len(), 0, "{left}");
    assert_eq!(left["cost_usd"].as_f64(), Some(cost), "{left}");
    assert_eq!(
        left["usage"]["output_tokens"], reply["usage"]["output_tokens"],
        "{left}"
    );
    // The shared answer cost the other session nothing.
    let after = session_figures(&s, &alice, "after").await;
    assert_eq!(after["cost_usd"].as_f64(), Some(0.0), "{after}");
    assert_eq!(after["shared"]["turns"], 1, "{after}");
}

/// A session turn asked without streaming runs to its end when the client leaves before the
/// answer: the answer joins the session's history and its spend, as the provider was paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_turn_whose_client_leaves_before_the_answer_still_completes() {
    let s = setup(|_| {}).await;
    let alice = s.token("alice", "acme");
    s.openai.hold_replies();
    s.openai.push(Reply::text("eight"));
    let leaving = {
        let (http, url) = (s.http.clone(), format!("{}/api/v1/chat", s.gw.base));
        let body = json!({"session": "gone", "model": "gpt-4o-mini", "message": "what is 4+4?"});
        let token = alice.clone();
        tokio::spawn(async move {
            let _ = http.post(url).bearer_auth(token).json(&body).send().await;
        })
    };
    s.openai
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .unwrap();
    leaving.abort();
    let _ = leaving.await;
    s.openai.release_replies();

    let figures = session_figures_once(&s, &alice, "gone", |f| f["turns"] == 1).await;
    assert_eq!(
        figures["messages"][1]["content"], "eight",
        "the answer joined the history: {figures}"
    );
    assert!(figures["cost_usd"].as_f64().unwrap() > 0.0, "{figures}");
    assert_eq!(figures["abandoned_turns"], 0, "{figures}");
    assert_eq!(s.openai.request_count(), 1);
}
