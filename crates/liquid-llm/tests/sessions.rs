//! The session-scoped client factory against a local OpenAI server: isolation between
//! sessions and tenants, destroy, idle expiry, failed and streamed turns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{router, server};
use liquid_kit::HasErrorCode;
use liquid_llm::{
    AnswerSource, Message, ModelClient, SessionClients, SessionKey, SessionOptions, SessionPolicy,
    collect_stream,
};
use liquid_testkit::model_servers::{ModelServer, Reply, Vendor};
use tokio_util::sync::CancellationToken;

fn options() -> SessionOptions {
    SessionOptions {
        model: "gpt-4o-mini".into(),
        system: Some("You are a helpful assistant.".into()),
        ..SessionOptions::default()
    }
}

fn policy(idle_ttl: Duration) -> SessionPolicy {
    SessionPolicy {
        idle_ttl,
        cleanup_interval: Duration::from_millis(50),
        max_sessions: 1_000,
        ..SessionPolicy::default()
    }
}

/// A local OpenAI server, a client of it, and session clients over that client.
struct Sessions {
    server: ModelServer,
    client: Arc<dyn ModelClient>,
    sessions: SessionClients,
}

async fn sessions_with(policy: SessionPolicy) -> Sessions {
    let server = server(Vendor::OpenAi).await;
    let client: Arc<dyn ModelClient> = Arc::new(router(Vendor::OpenAi, &server, 1));
    let sessions = SessionClients::new(client.clone(), policy, CancellationToken::new());
    Sessions {
        server,
        client,
        sessions,
    }
}

fn user_texts(body: &serde_json::Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap_or("<not a string>").to_owned())
        .collect()
}

#[tokio::test]
async fn each_session_sends_only_its_own_history() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    for reply in ["a-one", "b-one", "a-two"] {
        server.push(Reply::text(reply));
    }
    let a = sessions
        .session(&SessionKey::new("t1", "A"), options())
        .await;
    let b = sessions
        .session(&SessionKey::new("t1", "B"), options())
        .await;
    a.send(Message::user("first in A")).await.unwrap();
    b.send(Message::user("first in B")).await.unwrap();
    let third = a.send(Message::user("second in A")).await.unwrap();
    assert_eq!(third.text, "a-two");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(user_texts(&requests[1].body), ["first in B"]);
    assert_eq!(user_texts(&requests[2].body), ["first in A", "second in A"]);
    let assistant: Vec<_> = requests[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(assistant, [serde_json::json!("a-one")]);
    assert_eq!(a.history().await.len(), 4);
    assert_eq!(
        b.history().await,
        vec![Message::user("first in B"), Message::assistant("b-one")]
    );
    let usage = a.usage().await;
    assert_eq!(usage.turns, 2);
    assert_eq!(usage.usage.input_tokens, 20);
    assert!(usage.cost_usd > 0.0);
    assert_eq!(sessions.session_count().await, 2);
}

#[tokio::test]
async fn the_same_session_id_under_another_tenant_is_another_session() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    server.push(Reply::text("for tenant one"));
    server.push(Reply::text("for tenant two"));
    let one = sessions
        .session(&SessionKey::new("tenant-1", "s"), options())
        .await;
    one.send(Message::user("secret of tenant one"))
        .await
        .unwrap();
    let two = sessions
        .session(&SessionKey::new("tenant-2", "s"), options())
        .await;
    assert!(two.history().await.is_empty());
    two.send(Message::user("hello")).await.unwrap();
    assert_eq!(user_texts(&server.requests()[1].body), ["hello"]);
    let err = sessions
        .get(&SessionKey::new("tenant-3", "s"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code().as_str(), "not_found");
}

#[tokio::test]
async fn concurrent_first_use_creates_one_session() {
    let Sessions {
        server: _server,
        sessions,
        ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    let key = SessionKey::new("t", "s");
    let (x, y) = tokio::join!(
        sessions.session(&key, options()),
        sessions.session(&key, options())
    );
    assert!(Arc::ptr_eq(&x, &y));
    assert_eq!(sessions.session_count().await, 1);
}

#[tokio::test]
async fn destroy_session_forgets_it_and_its_history() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    server.push(Reply::text("remembered"));
    let key = SessionKey::new("t", "s");
    sessions
        .session(&key, options())
        .await
        .send(Message::user("remember this"))
        .await
        .unwrap();
    assert_eq!(sessions.session_count().await, 1);
    assert!(sessions.destroy_session(&key).await);
    assert!(!sessions.destroy_session(&key).await);
    assert_eq!(sessions.session_count().await, 0);
    assert_eq!(sessions.destroyed_count(), 1);
    assert!(sessions.get(&key).await.is_err());
    let fresh = sessions.session(&key, options()).await;
    assert!(fresh.history().await.is_empty());
}

#[tokio::test]
async fn idle_sessions_expire_and_the_cleanup_task_frees_them() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_millis(200))).await;
    server.push(Reply::text("soon forgotten"));
    let key = SessionKey::new("t", "idle");
    sessions
        .session(&key, options())
        .await
        .send(Message::user("hello"))
        .await
        .unwrap();
    // Nothing touches the cache from here: only the cleanup task can free the session.
    let mut waited = Duration::ZERO;
    while sessions.expired_count() == 0 {
        assert!(
            waited < Duration::from_secs(10),
            "the cleanup task never freed the idle session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(sessions.expired_count(), 1);
    assert_eq!(sessions.session_count().await, 0);
    let err = sessions.get(&key).await.unwrap_err();
    assert_eq!(err.error_code().as_str(), "not_found");
    assert!(
        sessions
            .session(&key, options())
            .await
            .history()
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_failed_turn_leaves_the_history_unchanged() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    server.push(Reply::text("ok"));
    server.push(Reply::failure(500, None));
    let session = sessions
        .session(&SessionKey::new("t", "s"), options())
        .await;
    session.send(Message::user("one")).await.unwrap();
    let err = session.send(Message::user("two")).await.unwrap_err();
    assert_eq!(err.error_code().as_str(), "unavailable");
    assert_eq!(
        session.history().await,
        vec![Message::user("one"), Message::assistant("ok")]
    );
    assert_eq!(session.usage().await.turns, 1);
}

#[tokio::test]
async fn a_streamed_turn_joins_the_history_once_complete() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(policy(Duration::from_secs(60))).await;
    server.push(Reply::text("streamed answer"));
    server.push(Reply::text("second"));
    let session = sessions
        .session(&SessionKey::new("t", "s"), options())
        .await;
    let stream = session
        .send_stream(Message::user("stream it"))
        .await
        .unwrap();
    let response = collect_stream(stream).await.unwrap();
    assert_eq!(response.text, "streamed answer");
    assert_eq!(
        session.history().await,
        vec![
            Message::user("stream it"),
            Message::assistant("streamed answer")
        ]
    );
    session.send(Message::user("next")).await.unwrap();
    assert_eq!(
        user_texts(&server.requests()[1].body),
        ["stream it", "next"]
    );
}

#[tokio::test]
async fn old_turns_are_trimmed_from_a_long_session() {
    let Sessions {
        server, sessions, ..
    } = sessions_with(SessionPolicy {
        max_history_messages: 4,
        ..policy(Duration::from_secs(60))
    })
    .await;
    let session = sessions
        .session(&SessionKey::new("t", "s"), options())
        .await;
    for turn in ["one", "two", "three", "four"] {
        server.push(Reply::text(format!("answer {turn}")));
        session.send(Message::user(turn)).await.unwrap();
    }
    // Each turn sent at most the last two exchanges and the new message, and the system prompt.
    let requests = server.requests();
    assert_eq!(user_texts(&requests[2].body), ["one", "two", "three"]);
    assert_eq!(user_texts(&requests[3].body), ["two", "three", "four"]);
    assert_eq!(
        requests[3].body["messages"][0]["content"],
        "You are a helpful assistant."
    );
    assert_eq!(
        session.history().await,
        vec![
            Message::user("three"),
            Message::assistant("answer three"),
            Message::user("four"),
            Message::assistant("answer four"),
        ]
    );
    assert_eq!(session.usage().await.turns, 4);
}

#[tokio::test]
async fn an_answer_shared_between_sessions_is_spent_once() {
    let Sessions {
        server,
        client,
        sessions,
    } = sessions_with(policy(Duration::from_secs(60))).await;
    server.push(Reply::text("four"));
    server.push(Reply::text("four, streamed"));
    let mut handles = Vec::new();
    for id in ["a", "b", "c"] {
        handles.push(sessions.session(&SessionKey::new("t", id), options()).await);
    }
    let [leader, joiner, cached] = <[_; 3]>::try_from(handles).unwrap();

    // One upstream call answers three sessions, as a coalescing client would hand it out.
    let first = leader.begin(Message::user("2+2?")).await;
    let response = client.complete(first.request()).await.unwrap();
    let cost = response.cost_usd.unwrap();
    assert!(cost > 0.0);
    first.finish(&response, AnswerSource::Upstream);
    let second = joiner.begin(Message::user("2+2?")).await;
    assert_eq!(second.request().messages, [Message::user("2+2?")]);
    second.finish(&response, AnswerSource::Shared);
    cached
        .begin(Message::user("2+2?"))
        .await
        .finish(&response, AnswerSource::Cached);

    let spent = leader.usage().await;
    assert_eq!((spent.turns, spent.cost_usd), (1, cost));
    assert_eq!(spent.usage, response.usage);
    assert_eq!(spent.shared.turns, 0);
    for received in [&joiner, &cached] {
        let usage = received.usage().await;
        assert_eq!(usage.turns, 1);
        assert_eq!(usage.cost_usd, 0.0, "not spent by this session");
        assert_eq!(usage.usage.total(), 0);
        assert_eq!(usage.shared.turns, 1);
        assert_eq!(usage.shared.usage, response.usage);
        assert_eq!(usage.shared.cost_usd, cost);
        assert_eq!(
            received.history().await,
            vec![Message::user("2+2?"), Message::assistant("four")],
            "a shared answer joins the history like any other"
        );
    }
    let mut total = 0.0;
    for s in [&leader, &joiner, &cached] {
        total += s.usage().await.cost_usd;
    }
    assert_eq!(total, cost, "summed over sessions, the spend is one call");

    // A streamed turn is counted the same way, once its answer completes.
    let turn = joiner.begin(Message::user("and streamed?")).await;
    let stream = client.stream(turn.request()).await.unwrap();
    let streamed = collect_stream(turn.finish_stream(stream, AnswerSource::Shared))
        .await
        .unwrap();
    let usage = joiner.usage().await;
    assert_eq!((usage.turns, usage.shared.turns), (2, 2));
    assert_eq!(usage.cost_usd, 0.0);
    assert_eq!(
        usage.shared.cost_usd,
        cost + streamed.cost_usd.unwrap(),
        "{usage:?}"
    );
    // `send` asks through the session's own client: the session spent it.
    server.push(Reply::text("five"));
    cached.send(Message::user("3+2?")).await.unwrap();
    assert!(cached.usage().await.cost_usd > 0.0);
}

#[tokio::test]
async fn a_stream_left_mid_answer_is_an_abandoned_turn_and_a_call_that_runs_on_is_still_spent() {
    use futures_util::StreamExt;

    let Sessions {
        server,
        client,
        sessions,
    } = sessions_with(policy(Duration::from_secs(60))).await;
    let long = "word ".repeat(200);
    server.push(Reply::text(long.clone()));
    server.push(Reply::text(long.clone()));
    let session = sessions
        .session(&SessionKey::new("t", "left"), options())
        .await;

    // A call that stops with its stream: the turn is abandoned, nothing recorded as spent.
    let turn = session.begin(Message::user("first")).await;
    let stream = client.stream(turn.request()).await.unwrap();
    let mut stream = turn.finish_stream(stream, AnswerSource::Upstream);
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    let usage = session.usage().await;
    assert_eq!((usage.turns, usage.abandoned_turns), (0, 1));
    assert_eq!(usage.cost_usd, 0.0);
    assert!(session.history().await.is_empty());

    // A call that runs on (a shared flight would): the session is free at once, the rest of
    // the answer is read for it, and its spend is counted once the answer is complete.
    let turn = session.begin(Message::user("second")).await;
    let stream = client.stream(turn.request()).await.unwrap();
    let mut stream = turn.finish_stream_running_on(stream, AnswerSource::Upstream);
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    assert!(
        session.history().await.is_empty(),
        "the session is free and its history unchanged"
    );
    let usage = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let usage = session.usage().await;
            if usage.abandoned_turns == 2 {
                return usage;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the abandoned call's answer was never counted");
    assert_eq!(usage.turns, 0);
    assert!(usage.cost_usd > 0.0, "{usage:?}");
    assert!(usage.usage.output_tokens > 0, "{usage:?}");
    assert!(session.history().await.is_empty());
}
