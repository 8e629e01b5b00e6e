//! Request coalescing across gateway replicas sharing one Redis, through the chat API: an
//! invalidation on one replica holds for a call in flight on another (its answer reaches its
//! caller but is never cached).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use liquid_kit::Secret;
use liquid_llm::{ProviderConfig, ProviderKind};
use liquid_testkit::model_servers::{ModelServer, Reply};
use serde_json::{Value, json};
use support::*;

const OPENAI_KEY: &str = "sk-local-openai";

/// A chat request to the gateway at `base`: status and body.
async fn chat(base: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/api/v1/chat"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_an_answer_in_flight_on_one_replica_is_not_cached_after_an_invalidation_on_another()
 {
    let keys = keys();
    let (mut cfg, shared) = shared_config(&keys).await;
    let openai = ModelServer::openai(OPENAI_KEY).await.unwrap();
    cfg.settings.rate_limit.enabled = false;
    cfg.settings.llm.retry.max_attempts = 1;
    cfg.settings.llm.providers.insert(
        "openai".into(),
        ProviderConfig {
            kind: ProviderKind::Openai,
            api_key: Secret::new(OPENAI_KEY.into()),
            base_url: openai.base_url(),
        },
    );
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    let acme = keys.token("alice", "acme", &["write:chat"]);
    let body = json!({"model": "gpt-4o-mini", "message": "what is the price list?", "params": {"temperature": 0.0}});

    // Replica b asks the model; the answer is held until after the invalidation.
    openai.hold_replies();
    openai.push(Reply::text("the old price list"));
    let in_flight = {
        let (base, token, body) = (b.base.clone(), acme.clone(), body.clone());
        tokio::spawn(async move { chat(&base, &token, &body).await })
    };
    openai
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .unwrap();

    // Acme invalidates its answers through replica a.
    let removed: Value = http()
        .delete(format!("{}/api/v1/chat/cache", a.base))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(removed["removed"], 0, "nothing was cached yet");
    openai.release_replies();
    let (status, reply) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["coalesced"], "upstream");
    assert_eq!(
        reply["text"], "the old price list",
        "its caller is answered"
    );

    // The answer that was in flight during the invalidation is cached on neither replica: the
    // next request asks the model again, and that fresh answer is what both then serve.
    openai.push(Reply::text("the new price list"));
    let (status, reply) = chat(&a.base, &acme, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["coalesced"].as_str(), reply["text"].as_str()),
        (Some("upstream"), Some("the new price list")),
        "the stale answer was cached after the invalidation: {reply}"
    );
    let (status, reply) = chat(&b.base, &acme, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["coalesced"].as_str(), reply["text"].as_str()),
        (Some("cached"), Some("the new price list")),
        "{reply}"
    );
    assert_eq!(openai.request_count(), 2);

    // The generation lives beside the answers, under the gateway's namespace in front of the
    // test's prefix (the fixture removes it with the test's keys).
    let keys = shared
        .redis
        .scan(&format!("liquid:gateway:{}*", shared.redis.prefix()))
        .await
        .unwrap();
    assert!(
        keys.iter().any(|k| k.contains("!generation:acme")),
        "{keys:?}"
    );
}
