//! Deep-work sessions end to end on the real stack: cowork on PostgreSQL and NATS JetStream,
//! container-pool on Docker, a local model server speaking OpenAI's wire format scripted with
//! the planner's `submit_plan` call and the agents' tool calls. A session on a small
//! repository is planned, reviewed (an edited plan with a cycle is refused), approved; its two
//! independent steps run at the same time in their own containers with the sandbox mounted,
//! the dependent step after both (its command runs in the container as the pool's user); the
//! sandbox diff shows exactly the agents' changes; a source edited after the baseline is a
//! conflict and nothing is written; apply writes them; rollback restores the original bytes.
//! Events arrive in the log, on the WebSocket subject and durably on the bus.
//! Then offline mode: no key, the deterministic planner and the offline model run a session
//! end to end on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::time::Duration;

use futures_util::StreamExt;
use liquid_bus::{ConsumerConfig, DeliverFrom};
use liquid_testkit::model_servers::{CannedMessage, ModelServer, Reply};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stack::{Api, Dirs, diff_paths, keys};
use tokio_util::sync::CancellationToken;

fn call(name: &str, args: Value) -> Reply {
    Reply::Message(CannedMessage::text("").with_tool_call(name, args))
}

fn plan() -> Value {
    json!({
        "strategy": "hybrid",
        "summary": "button, route, then a test of both",
        "steps": [
            {"id": "ui", "title": "Label the button", "instructions": "Change the label of Button.",
             "domain": "ui", "file_scopes": ["src/components/**/*.tsx"],
             "expected_artifacts": ["src/components/Button.tsx"], "priority": "high"},
            {"id": "api", "title": "Add the health route", "instructions": "Add server/src/health.ts.",
             "file_scopes": ["server/src/**/*.ts"], "expected_artifacts": ["server/src/health.ts"]},
            {"id": "tests", "title": "Test both", "instructions": "Write tests/app.test.ts and look around.",
             "depends_on": ["ui", "api"], "domain": "test", "expected_artifacts": ["tests/app.test.ts"]}
        ]
    })
}

const BUTTON_OLD: &str = "export const Button = () => <button>Old</button>;\n";
const BUTTON_NEW: &str = "export const Button = () => <button>New</button>;\n";
const HEALTH: &str = "export const health = () => ({ ok: true });\n";
const TEST: &str = "import { health } from '../server/src/health';\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_runs_its_dag_in_parallel_containers_and_stages_exactly_the_changes() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[
        ("README.md", "hello from the repo\n"),
        ("src/components/Button.tsx", BUTTON_OLD),
        ("server/src/app.ts", "export const app = 1;\n"),
    ]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let model = ModelServer::openai("test-key").await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let pg = TestDatabase::create().await.unwrap();
    let cfg = stack::config(
        pg.url(),
        &nats.url(),
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, Some(&model.base_url())),
    );
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());
    let bus = liquid_bus::connect(&nats.url()).await.unwrap();

    // Create → the model plans through submit_plan.
    model.push(call("submit_plan", plan()));
    let id = api
        .create_session(
            &ws,
            "Relabel the button, add a health route, test both.",
            "hybrid",
        )
        .await;
    let mut ws_sub = bus
        .subscribe(&format!("ws.tenant.acme.cowork:{id}"))
        .await
        .unwrap();
    let s = api.wait_state(&id, "awaiting_approval").await;
    assert_eq!(s["planner"], "model:gpt-4o-mini");
    let planner_req = &model.requests()[0];
    assert_eq!(
        planner_req.body["tool_choice"]["function"]["name"],
        "submit_plan"
    );
    let prompt = planner_req.body["messages"].to_string();
    assert!(
        prompt.contains("server/src/app.ts"),
        "the workspace is listed: {prompt}"
    );
    assert!(
        prompt.contains("src/components/**/*.tsx"),
        "the specialists' patterns are given"
    );

    let p = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/plan"), None)
        .await;
    assert_eq!(p["source"], "model");
    assert_eq!(
        p["plan"]["steps"][1]["domain"], "api",
        "a general step gets its files' specialist"
    );
    assert_eq!(p["waves"], json!([["ui", "api"], ["tests"]]));

    // An edited plan with a cycle is refused and nothing starts.
    let mut cyclic = plan();
    cyclic["steps"][0]["depends_on"] = json!(["tests"]);
    let (status, err) = api
        .call(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            Some(json!({"plan": cyclic})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["code"], "invalid_argument");
    assert!(
        err["error"]["details"]["issues"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cycle"),
        "{err}"
    );

    // The two independent steps' agents ask the model at the same time: parallel.
    // Each agent gets its own script, whichever asks first.
    model.hold_replies();
    let (ui, api_step) = ("Step: Label the button", "Step: Add the health route");
    model.push_for(
        ui,
        call(
            "write_file",
            json!({"path": "src/components/Button.tsx", "content": BUTTON_NEW}),
        ),
    );
    model.push_for(
        api_step,
        call(
            "write_file",
            json!({"path": "server/src/health.ts", "content": HEALTH}),
        ),
    );
    model.push_for(ui, Reply::text("done"));
    model.push_for(api_step, Reply::text("done"));
    model.push(call(
        "write_file",
        json!({"path": "tests/app.test.ts", "content": TEST}),
    ));
    model.push(call(
        "run_command",
        json!({"command": "id -u && ls && cat README.md"}),
    ));
    model.push(Reply::text("tests written and the tree looked at"));
    let approved = api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            None,
        )
        .await;
    assert_eq!(approved["state"], "running");
    model
        .wait_for_requests(3, Duration::from_secs(60))
        .await
        .unwrap();
    let running_now = api
        .wait_session(&id, "two running steps", |v| v["steps"]["running"] == 2)
        .await;
    assert_eq!(
        running_now["steps"]["pending"], 1,
        "the dependent step waits: {running_now}"
    );
    model.release_replies();

    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 3, "{done}");
    assert_eq!(model.pending_replies(), 0);

    // Each step ran in a container of its own, and the tests step's command ran there.
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    let steps = steps["steps"].as_array().unwrap().clone();
    assert!(
        steps
            .iter()
            .all(|s| s["runner"] == "platform" && s["state"] == "succeeded")
    );
    let agents = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/agents?session_id={id}"),
            None,
        )
        .await;
    let claims: std::collections::BTreeSet<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["claim_id"].as_str().unwrap())
        .collect();
    assert_eq!(claims.len(), 3, "three containers: {agents}");
    let runtimes: Vec<Value> = api
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "subtask:progress" && e["data"]["kind"] == "container")
        .map(|e| e["data"]["runtime"].clone())
        .collect();
    assert_eq!(runtimes, vec![json!("docker"); 3], "real containers");
    let arts = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let arts = arts["artifacts"].as_array().unwrap().clone();
    let tests_step = steps.iter().find(|s| s["key"] == "tests").unwrap()["step_id"].clone();
    let log = arts
        .iter()
        .find(|a| a["kind"] == "log" && a["step_id"] == tests_step)
        .unwrap();
    let log_text = log["content"].as_str().unwrap();
    assert!(
        log_text.contains("10001"),
        "the command ran as the pool user in a container: {log_text}"
    );
    assert!(
        log_text.contains("hello from the repo"),
        "with the sandbox mounted: {log_text}"
    );
    let patches: Vec<&Value> = arts.iter().filter(|a| a["kind"] == "patch").collect();
    assert_eq!(patches.len(), 3, "one patch per step");
    let all_patches: String = patches
        .iter()
        .map(|p| p["content"].as_str().unwrap())
        .collect();
    assert!(all_patches.contains("+export const Button = () => <button>New</button>;"));
    assert!(all_patches.contains("-export const Button = () => <button>Old</button>;"));
    let files: Vec<&str> = arts
        .iter()
        .filter(|a| a["kind"] == "file")
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");

    // The diff shows exactly the changes; apply writes them; rollback restores the bytes.
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&diff),
        [
            ("server/src/health.ts".to_owned(), "added".to_owned()),
            ("src/components/Button.tsx".into(), "modified".into()),
            ("tests/app.test.ts".into(), "added".into()),
        ]
    );
    let button = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "src/components/Button.tsx")
        .unwrap();
    let button_diff = button["diff"].as_str().unwrap();
    assert!(
        button_diff.contains(&format!("-{BUTTON_OLD}+{BUTTON_NEW}")),
        "{button_diff}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("src/components/Button.tsx")).unwrap(),
        BUTTON_OLD
    );

    // Someone edits a source file the session changed: apply reports the conflict and
    // writes nothing; once the edit is undone, apply goes through.
    std::fs::write(
        ws.join("src/components/Button.tsx"),
        "someone else's edit\n",
    )
    .unwrap();
    let (status, err) = api
        .call("POST", &format!("/api/v1/sandbox/{sandbox}/apply"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "conflict");
    assert_eq!(
        err["error"]["details"]["files"],
        json!(["src/components/Button.tsx"])
    );
    assert!(!ws.join("server/src/health.ts").exists(), "nothing written");
    assert_eq!(
        std::fs::read_to_string(ws.join("src/components/Button.tsx")).unwrap(),
        "someone else's edit\n"
    );
    std::fs::write(ws.join("src/components/Button.tsx"), BUTTON_OLD).unwrap();

    api.ok("POST", &format!("/api/v1/sandbox/{sandbox}/apply"), None)
        .await;
    assert_eq!(
        std::fs::read_to_string(ws.join("src/components/Button.tsx")).unwrap(),
        BUTTON_NEW
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("server/src/health.ts")).unwrap(),
        HEALTH
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("tests/app.test.ts")).unwrap(),
        TEST
    );
    api.ok("POST", &format!("/api/v1/sandbox/{sandbox}/rollback"), None)
        .await;
    assert_eq!(
        std::fs::read(ws.join("src/components/Button.tsx")).unwrap(),
        BUTTON_OLD.as_bytes()
    );
    assert!(!ws.join("server/src/health.ts").exists());
    assert!(!ws.join("tests/app.test.ts").exists());

    // Events: the log, the WebSocket subject and the durable stream.
    let types = api.event_types(&id).await;
    for t in [
        "session:created",
        "plan:generated",
        "plan:approved",
        "agent:spawned",
        "subtask:started",
        "subtask:progress",
        "subtask:completed",
        "session:completed",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    assert_eq!(
        types.iter().filter(|t| *t == "subtask:completed").count(),
        3
    );
    assert_eq!(types.last().map(String::as_str), Some("session:completed"));
    let mut seen = Vec::new();
    while !seen.iter().any(|t| t == "session:completed") {
        let m = tokio::time::timeout(Duration::from_secs(30), ws_sub.next())
            .await
            .expect("websocket events")
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["session_id"], id.as_str());
        seen.push(v["type"].as_str().unwrap().to_owned());
    }
    assert!(seen.iter().any(|t| t == "subtask:started"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|t| t == "queue:stats" || t == "agent:health"),
        "{seen:?}"
    );
    let consumer = bus
        .consumer(
            &ConsumerConfig::events("test", "cowork")
                .with_filter_subject("evt.cowork.session.completed")
                .with_deliver_from(DeliverFrom::All),
        )
        .await
        .unwrap();
    let got = consumer.fetch(10, Duration::from_secs(5)).await.unwrap();
    let durable: Vec<Value> = got
        .iter()
        .map(|d| serde_json::from_slice(&d.message.payload).unwrap())
        .collect();
    assert!(
        durable
            .iter()
            .any(|e| e["type"] == "cowork.session.completed"
                && e["tenant"] == "acme"
                && e["data"]["session_id"] == id.as_str()),
        "{durable:?}"
    );

    // Another tenant sees nothing; a reader cannot approve.
    let other = keys.token("globex", &["cowork:read", "cowork:write"]);
    let (status, _) = api
        .call_as(
            &other,
            "GET",
            &format!("/api/v1/cowork/sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reader = keys.token("acme", &["cowork:read"]);
    let (status, _) = api
        .call_as(
            &reader,
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Every series the Helm chart's dashboard queries is exported (sessions, queue, agents,
    // step latency, denials by stage, sandboxes, HTTP), now that a session has run.
    let scrape = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    liquid_testkit::dashboard::assert_exported(
        &scrape,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../helm/cowork/dashboards/cowork.json"),
    );

    running.stop().await.unwrap();
    pg.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_mode_plans_and_runs_a_session_without_a_model_key() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "offline repo\n")]);
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
    let request = "Write the docs.\n\
        - Write the notes\n\
        @tool write_file {\"path\": \"docs/notes.md\", \"content\": \"notes\\n\"}\n\
        - Write the changelog\n\
        @tool write_file {\"path\": \"CHANGELOG.md\", \"content\": \"v1\\n\"}\n\
        @tool run_command {\"command\": \"ls docs\"}\n";
    let id = api.create_session(&ws, request, "parallel").await;
    let s = api.wait_state(&id, "awaiting_approval").await;
    assert_eq!(s["planner"], "offline");
    let p = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/plan"), None)
        .await;
    assert_eq!(p["source"], "offline");
    assert!(
        p["plan"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("[offline]")
    );
    assert_eq!(p["waves"], json!([["s1", "s2"]]));
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 2, "{done}");
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    for s in steps["steps"].as_array().unwrap() {
        assert_eq!(s["runner"], "platform (offline model)", "labelled: {s}");
        assert!(
            s["summary"].as_str().unwrap().starts_with("[offline]"),
            "{s}"
        );
    }
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&diff),
        [
            ("CHANGELOG.md".to_owned(), "added".to_owned()),
            ("docs/notes.md".into(), "added".into()),
        ]
    );
    let arts = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let logs: String = arts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "log")
        .map(|a| a["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        logs.contains("tool result run_command"),
        "the command ran: {logs}"
    );
    running.stop().await.unwrap();
}
