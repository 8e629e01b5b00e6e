//! The agent manager's concurrency limit on the real stack (cowork on SQLite, container-pool
//! on Docker, the offline planner and model): a session whose plan has three independent
//! steps runs them one at a time under `agents.max_concurrency = 1` — the steps API's started
//! and finished times never overlap — and two at a time (never three) under a limit of 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use stack::{Api, Dirs, keys};
use tokio_util::sync::CancellationToken;

/// The most steps that were running at one instant, from their recorded start and end
/// times (a step that starts at the millisecond another finishes does not overlap it).
fn most_at_once(steps: &[Value]) -> usize {
    let time = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis()
    };
    // (time, +1 start / -1 end); at equal times ends sort before starts.
    let mut edges: Vec<(i64, i32)> = steps
        .iter()
        .flat_map(|s| [(time(&s["started_at"]), 1), (time(&s["finished_at"]), -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// Runs a session of three independent steps with `max_concurrency` agent slots and returns
/// its steps as the API shows them.
async fn run_three_independent_steps(max_concurrency: usize) -> Vec<Value> {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "limits\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let mut settings = stack::settings(&dirs, &keys, None);
    settings.agents.max_concurrency = max_concurrency;
    let cfg = stack::config(&db, "memory://", &keys, &pool_grpc, settings);
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());

    let request = "Write three files.\n\
        - Write a\n@tool write_file {\"path\": \"a.txt\", \"content\": \"a\\n\"}\n\
        @tool run_command {\"command\": \"cat a.txt\"}\n\
        - Write b\n@tool write_file {\"path\": \"b.txt\", \"content\": \"b\\n\"}\n\
        @tool run_command {\"command\": \"cat b.txt\"}\n\
        - Write c\n@tool write_file {\"path\": \"c.txt\", \"content\": \"c\\n\"}\n\
        @tool run_command {\"command\": \"cat c.txt\"}\n";
    let id = api.create_session(&ws, request, "parallel").await;
    api.wait_state(&id, "awaiting_approval").await;
    let p = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/plan"), None)
        .await;
    assert_eq!(
        p["waves"],
        json!([["s1", "s2", "s3"]]),
        "independent steps: {p}"
    );
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 3, "{done}");
    let queue = api.ok("GET", "/api/v1/cowork/queue", None).await;
    assert_eq!(queue["running"], 0, "{queue}");
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    let steps = steps["steps"].as_array().unwrap().clone();
    for s in &steps {
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempts"], 1, "one agent each, no retries: {s}");
    }
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
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
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slot_runs_independent_steps_one_after_another() {
    let steps = run_three_independent_steps(1).await;
    assert_eq!(
        most_at_once(&steps),
        1,
        "with max_concurrency 1 no two steps overlap: {steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_slots_run_two_independent_steps_at_once_and_never_three() {
    let steps = run_three_independent_steps(2).await;
    assert_eq!(
        most_at_once(&steps),
        2,
        "with max_concurrency 2 two steps overlap, never three: {steps:?}"
    );
}

#[test]
fn overlap_counting_sees_touching_steps_as_sequential() {
    let s = |a: &str, b: &str| json!({"started_at": a, "finished_at": b});
    let seq = [
        s("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z"),
        s("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z"),
    ];
    assert_eq!(most_at_once(&seq), 1);
    let par = [
        s("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z"),
        s("2026-01-01T00:00:00.500Z", "2026-01-01T00:00:02.000Z"),
        s("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z"),
    ];
    assert_eq!(most_at_once(&par), 2);
}
