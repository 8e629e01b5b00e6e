//! A person steering a session on the real stack (cowork on SQLite, container-pool on Docker,
//! a local OpenAI-format model server): a plan is rejected with a reason and re-planned with
//! feedback the planner sees; the session is paused while its first step runs, so the
//! dependent step does not start until it is resumed; cancelling the session while a step's
//! command runs stops the agent (it never asks the model again), cancels the step, terminates
//! the agent and hands its container back to the pool long before the command would end.
//! The tenant's queue is held, reordered (critical first, low last), one agent terminated and
//! its step spawned again in a batch, then released: the session completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::time::Duration;

use liquid_testkit::model_servers::{CannedMessage, ModelServer, Reply};
use reqwest::StatusCode;
use serde_json::{Value, json};
use stack::{Api, Dirs, keys};
use tokio_util::sync::CancellationToken;

fn call(name: &str, args: Value) -> Reply {
    Reply::Message(CannedMessage::text("").with_tool_call(name, args))
}

fn step_state(steps: &Value, key: &str) -> String {
    steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_rejects_replans_pauses_resumes_and_cancels_a_session() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "steer me\n")]);
    let (pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let model = ModelServer::openai("test-key").await.unwrap();
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, Some(&model.base_url())),
    );
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());

    // Plan, reject with a reason: nothing can be approved any more.
    model.push(call(
        "submit_plan",
        json!({"steps": [{"id": "all", "title": "Everything", "instructions": "Do it all."}]}),
    ));
    let id = api
        .create_session(&ws, "Write a and b.", "sequential")
        .await;
    api.wait_state(&id, "awaiting_approval").await;
    let rejected = api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/reject"),
            Some(json!({"reason": "one step is too coarse"})),
        )
        .await;
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    let (status, err) = api
        .call(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{err}");
    assert_eq!(err["error"]["code"], "failed_precondition", "{err}");

    // Re-plan with feedback: the planner is asked again and sees it; a second plan version.
    model.push(call(
        "submit_plan",
        json!({"steps": [
            {"id": "a", "title": "Write a", "instructions": "Write a.txt."},
            {"id": "b", "title": "Write b", "instructions": "Write b.txt.", "depends_on": ["a"]}
        ]}),
    ));
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/replan"),
        Some(json!({"feedback": "split it into a and b"})),
    )
    .await;
    api.wait_state(&id, "awaiting_approval").await;
    assert_eq!(model.requests().len(), 2);
    let second_prompt = model.requests()[1].body["messages"].to_string();
    assert!(
        second_prompt.contains("split it into a and b"),
        "{second_prompt}"
    );
    let p = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/plan"), None)
        .await;
    assert_eq!(p["version"], 2, "{p}");
    assert_eq!(p["feedback"], "split it into a and b");
    assert_eq!(p["waves"], json!([["a"], ["b"]]));

    // Approve; pause while step a waits on the model: a finishes, b waits in the queue.
    model.hold_replies();
    model.push(call(
        "write_file",
        json!({"path": "a.txt", "content": "a\n"}),
    ));
    model.push(Reply::text("a written"));
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    model
        .wait_for_requests(3, Duration::from_secs(60))
        .await
        .unwrap();
    let paused = api
        .ok("POST", &format!("/api/v1/cowork/sessions/{id}/pause"), None)
        .await;
    assert_eq!(paused["state"], "paused", "{paused}");
    model.release_replies();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let steps = api
            .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
            .await;
        // b's agent is queued behind the pause, never started (between a's success and b's
        // promotion the API may show b still pending for a moment).
        let b = step_state(&steps, "b");
        assert!(b == "pending" || b == "queued", "b must not start: {steps}");
        assert_eq!(steps["steps"][1]["attempts"], 0, "{steps}");
        if step_state(&steps, "a") == "succeeded" && b == "queued" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "step a never finished: {steps}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}"), None)
        .await;
    assert_eq!(s["state"], "paused", "{s}");
    assert_eq!(
        model.requests().len(),
        4,
        "b's agent has not asked the model"
    );

    // Resume: b starts and runs a long command; cancel kills it.
    model.push(call("run_command", json!({"command": "sleep 300"})));
    model.push(call(
        "write_file",
        json!({"path": "b.txt", "content": "never\n"}),
    ));
    let resumed = api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/resume"),
            None,
        )
        .await;
    assert_eq!(resumed["state"], "running", "{resumed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let claim = loop {
        let events = api.events(&id).await;
        let b_step = api
            .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
            .await["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == "b")
            .unwrap()["step_id"]
            .clone();
        // The latest of each: an attempt that lost its container to a loaded machine is
        // retried with a new claim, and the claim to check is the one held now.
        let of_b = |kind: &str| {
            events
                .iter()
                .rev()
                .filter(|e| e["type"] == "subtask:progress" && e["data"]["step_id"] == b_step)
                .find(|e| e["data"]["kind"] == kind)
                .cloned()
        };
        if let (Some(container), Some(_)) = (of_b("container"), of_b("tool_call")) {
            break container["data"]["claim_id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "step b never started its command: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pool_api = Api::new(
        format!("http://{}", pool.http_addr()),
        keys.token("acme", &["containers:read", "containers:admin"]),
    );
    let (status, held) = pool_api
        .call("GET", &format!("/api/v1/containers/claims/{claim}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "b's container is claimed: {held}");

    let cancelled = api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    assert_eq!(step_state(&steps, "a"), "succeeded");
    assert_eq!(step_state(&steps, "b"), "cancelled", "{steps}");

    // The container comes back to the pool while `sleep 300` would still be running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = pool_api
            .call("GET", &format!("/api/v1/containers/claims/{claim}"), None)
            .await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled step's container was never released: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agents = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/agents?session_id={id}"),
            None,
        )
        .await;
    let states: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "terminated"], "{agents}");
    assert_eq!(
        model.pending_replies(),
        1,
        "the cancelled agent never asked for its next move"
    );
    let events = api.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "subtask:completed" && e["data"]["status"] == "cancelled"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "agent:health" && e["data"]["status"] == "terminated"),
        "{events:?}"
    );

    // Only a's change is staged.
    let diff = api
        .ok(
            "GET",
            &format!(
                "/api/v1/sandbox/{}/diff",
                cancelled["sandbox_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        stack::diff_paths(&diff),
        [("a.txt".to_owned(), "added".to_owned())]
    );

    // A cancelled session stays cancelled.
    let (status, err) = api
        .call(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/resume"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{err}");
    assert_eq!(err["error"]["code"], "failed_precondition", "{err}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_is_paused_reordered_trimmed_and_refilled_over_rest() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "queue me\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, None),
    );
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());

    // The tenant's queue is held before anything is approved.
    let paused = api
        .ok("POST", "/api/v1/cowork/queue/pause", Some(json!({})))
        .await;
    assert_eq!(paused["paused"], true, "{paused}");

    let request = "Write three files.\n\
        - Write a\n@tool write_file {\"path\": \"a.txt\", \"content\": \"a\\n\"}\n\
        - Write b\n@tool write_file {\"path\": \"b.txt\", \"content\": \"b\\n\"}\n\
        - Write c\n@tool write_file {\"path\": \"c.txt\", \"content\": \"c\\n\"}\n";
    let id = api.create_session(&ws, request, "parallel").await;
    api.wait_state(&id, "awaiting_approval").await;
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    let step_id = |key: &str| {
        steps["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap()["step_id"]
            .clone()
    };
    let (s2, s3) = (step_id("s2"), step_id("s3"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let queue = loop {
        let q = api.ok("GET", "/api/v1/cowork/queue", None).await;
        if q["queued"] == 3 {
            break q;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three agents never queued: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(queue["paused"], true);
    assert_eq!(queue["running"], 0, "nothing runs while the queue is held");
    let agent_of = |q: &Value, step: &Value| {
        q["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["step_id"] == *step)
            .unwrap()["agent_id"]
            .clone()
    };
    let (a2, a3) = (agent_of(&queue, &s2), agent_of(&queue, &s3));

    // The last step's agent jumps the queue.
    let r = api
        .ok(
            "POST",
            "/api/v1/cowork/queue/reorder",
            Some(json!({"agent_id": a3, "priority": "critical"})),
        )
        .await;
    assert_eq!(r["reordered"], 1, "{r}");
    let q = api.ok("GET", "/api/v1/cowork/queue", None).await;
    assert_eq!(q["agents"][0]["agent_id"], a3, "{q}");
    assert_eq!(q["agents"][0]["priority"], "critical");

    // One agent is terminated: its step is cancelled; a batch spawn queues it again.
    let t = api
        .ok(
            "POST",
            "/api/v1/cowork/queue/terminate",
            Some(json!({"agent_id": a2, "reason": "not now"})),
        )
        .await;
    assert_eq!(t["terminated"].as_array().unwrap().len(), 1, "{t}");
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    assert_eq!(step_state(&steps, "s2"), "cancelled", "{steps}");
    let q = api.ok("GET", "/api/v1/cowork/queue", None).await;
    assert_eq!(q["queued"], 2, "{q}");
    let spawned = api
        .ok(
            "POST",
            "/api/v1/cowork/queue/spawn",
            Some(json!({"session_id": id, "agents": [{"step": "s2", "priority": "low"}]})),
        )
        .await;
    let again = spawned["agents"].as_array().unwrap();
    assert_eq!(again.len(), 1, "{spawned}");
    assert_eq!(again[0]["step_id"], s2);
    assert_eq!(again[0]["priority"], "low");
    let q = api.ok("GET", "/api/v1/cowork/queue", None).await;
    assert_eq!(q["queued"], 3, "{q}");
    assert_eq!(
        q["agents"][2]["agent_id"], again[0]["agent_id"],
        "low goes last: {q}"
    );

    // Released, everything runs and the session completes with all three files staged.
    let resumed = api
        .ok("POST", "/api/v1/cowork/queue/resume", Some(json!({})))
        .await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 3, "{done}");
    let agents = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/agents?session_id={id}"),
            None,
        )
        .await;
    let mut states: Vec<String> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .collect();
    states.sort();
    assert_eq!(
        states,
        ["succeeded", "succeeded", "succeeded", "terminated"],
        "{agents}"
    );
    let diff = api
        .ok(
            "GET",
            &format!(
                "/api/v1/sandbox/{}/diff",
                done["sandbox_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        stack::diff_paths(&diff),
        [
            ("a.txt".to_owned(), "added".to_owned()),
            ("b.txt".into(), "added".into()),
            ("c.txt".into(), "added".into()),
        ]
    );
    running.stop().await.unwrap();
}
