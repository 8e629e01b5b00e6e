//! A deep-work session driven only through the gateway's public URL, as a client sees the
//! platform: container-pool on Docker, cowork on PostgreSQL and NATS with a local model server
//! speaking OpenAI's wire format, and the gateway in front, all started in the test. Tokens are
//! JWTs; the gateway verifies them (a forged one is 401) and forwards them, so cowork's scopes
//! hold at the edge (a token without `cowork:write` is 403 on create and approve).
//!
//! A session on a small repository is planned, approved, its two independent steps run at the
//! same time in their own containers, the dependent one after; the sandbox diff shows exactly
//! the changes; a source edited after the baseline is a conflict and nothing is written; apply
//! writes them; rollback restores the original bytes. The session's events arrive on the
//! gateway's WebSocket channel `cowork:<session>` and on the GraphQL subscription
//! `coworkEvents`, and GraphQL shows the session with its plan, steps and agents.
//!
//! Then the `liquid-cowork` binary is killed (SIGKILL) in the middle of a step behind the
//! gateway: the gateway answers `unavailable` while it is gone, and after a restart the session
//! resumes (the silent agent declared dead, its step retried) and completes, still driven only
//! through the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use liquid_auth::{SigningKey, TokenRequest};
use liquid_testkit::model_servers::{CannedMessage, ModelServer, Reply};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stack::{Api, Dirs, diff_paths, keys, spawn_cowork, wait_healthy};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

/// A gateway in this process on the given bus, cowork at `cowork` its only peer; no rate
/// limit (the tests poll).
async fn start_gateway(
    keys: &stack::Keys,
    dirs: &Dirs,
    bus: &str,
    cowork: liquid_runtime::Peer,
) -> liquid_kit::RunningService {
    let mut gw = liquid_runtime::ServiceConfig::<
        <liquid_gateway::Gateway as liquid_runtime::Service>::Settings,
    >::defaults_for(&liquid_gateway::SERVICE);
    gw.server = gw.server.ephemeral();
    gw.auth = keys.auth.clone();
    gw.database.url = format!("sqlite://{}/gw.db", dirs.base().display());
    gw.bus.url = bus.into();
    gw.cache.url = "memory://".into();
    gw.settings.rate_limit.enabled = false;
    gw.settings.prices.simulated_feed = false;
    gw.peers.insert("cowork".into(), cowork);
    liquid_runtime::start::<liquid_gateway::Gateway>(&gw, CancellationToken::new())
        .await
        .unwrap()
}

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
             "expected_artifacts": ["src/components/Button.tsx"]},
            {"id": "api", "title": "Add the health route", "instructions": "Add server/src/health.ts.",
             "file_scopes": ["server/src/**/*.ts"], "expected_artifacts": ["server/src/health.ts"]},
            {"id": "tests", "title": "Test both", "instructions": "Write tests/app.test.ts.",
             "depends_on": ["ui", "api"], "domain": "test", "expected_artifacts": ["tests/app.test.ts"]}
        ]
    })
}

const BUTTON_OLD: &str = "export const Button = () => <button>Old</button>;\n";
const BUTTON_NEW: &str = "export const Button = () => <button>New</button>;\n";
const HEALTH: &str = "export const health = () => ({ ok: true });\n";
const TEST: &str = "import { health } from '../server/src/health';\n";

/// Signed by a key nobody trusts, with every scope.
fn forged() -> String {
    SigningKey::generate()
        .unwrap()
        .mint(
            &TokenRequest::user("mallory", ["admin:*"])
                .tenant(stack::TENANT)
                .issuer("liquid-test")
                .audience("liquid"),
        )
        .unwrap()
}

/// A WebSocket to the gateway whose text frames (as JSON) a background task forwards, so the
/// socket keeps answering heartbeats while the test waits on the session.
struct Socket {
    sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    frames: mpsc::UnboundedReceiver<Value>,
}

impl Socket {
    async fn connect(url: &str, headers: &[(&str, &str)]) -> Socket {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let (sink, mut stream) = ws.split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m
                    && tx.send(serde_json::from_str(t.as_str()).unwrap()).is_err()
                {
                    return;
                }
            }
        });
        Socket { sink, frames }
    }

    async fn send(&mut self, v: Value) {
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(60), self.frames.recv())
            .await
            .expect("no frame within 60 s")
            .expect("the socket closed")
    }
}

async fn graphql(http: &reqwest::Client, base: &str, token: &str, q: &str) -> Value {
    let r = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": q}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].is_null(), "{q}: {v}");
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_through_the_gateway_with_scopes_and_events_on_its_websocket_channel() {
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
    let cowork = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();

    let gateway = start_gateway(
        &keys,
        &dirs,
        &nats.url(),
        liquid_runtime::Peer {
            http: format!("http://{}", cowork.http_addr()),
            grpc: format!("http://{}", cowork.grpc_addr().unwrap()),
        },
    )
    .await;
    let base = format!("http://{}", gateway.http_addr());
    let api = Api::new(base.clone(), keys.writer());
    let http = reqwest::Client::new();
    let reader = keys.token(stack::TENANT, &["cowork:read"]);
    let create_body = json!({"workspace": ws, "request": "Relabel, add a route, test both.", "strategy": "hybrid"});

    // Scopes at the edge: a forged token is 401, a reader may not create.
    let (status, err) = api
        .call_as(
            &forged(),
            "POST",
            "/api/v1/cowork/sessions",
            Some(create_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["error"]["code"], "unauthenticated");
    let (status, _) = api
        .call_as(&forged(), "GET", "/api/v1/cowork/sessions", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, err) = api
        .call_as(
            &reader,
            "POST",
            "/api/v1/cowork/sessions",
            Some(create_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "permission_denied");

    // Create; the planner's answer waits until both subscriptions are in place.
    model.hold_replies();
    model.push(call("submit_plan", plan()));
    let id = api
        .create_session(&ws, "Relabel, add a route, test both.", "hybrid")
        .await;
    let (status, _) = api
        .call_as(
            &forged(),
            "GET",
            &format!("/api/v1/cowork/sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The gateway's WebSocket hub, channel cowork:<session>.
    let ws_url = format!("ws://{}/ws", gateway.http_addr());
    let auth = format!("Bearer {}", keys.writer());
    let mut hub = Socket::connect(&ws_url, &[("authorization", &auth)]).await;
    assert_eq!(hub.next().await["type"], "welcome");
    hub.send(json!({"type": "subscribe", "channel": format!("cowork:{id}"), "id": 1}))
        .await;
    let ack = hub.next().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");

    // GraphQL's subscription over graphql-transport-ws, a reader's token is enough.
    let gql_url = format!("ws://{}/graphql", gateway.http_addr());
    let mut gql = Socket::connect(
        &gql_url,
        &[("sec-websocket-protocol", "graphql-transport-ws")],
    )
    .await;
    gql.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {reader}")}}))
        .await;
    assert_eq!(gql.next().await["type"], "connection_ack");
    gql.send(json!({"id": "e", "type": "subscribe", "payload": {
        "query": "subscription($s: String!) { coworkEvents(session: $s) { type sessionId data } }",
        "variables": {"s": id}}}))
        .await;
    model.release_replies();

    let s = api.wait_state(&id, "awaiting_approval").await;
    assert_eq!(s["planner"], "model:gpt-4o-mini");

    // GraphQL: the session with its plan under review.
    let q = format!(
        r#"{{ coworkSession(id: "{id}") {{ sessionId state planner plan {{ source waves steps {{ id domain dependsOn }} }} }} }}"#
    );
    let v = graphql(&http, &base, &reader, &q).await;
    let gs = &v["coworkSession"];
    assert_eq!(gs["sessionId"], id.as_str());
    assert_eq!(gs["state"], "awaiting_approval");
    assert_eq!(gs["plan"]["source"], "model");
    assert_eq!(gs["plan"]["waves"], json!([["ui", "api"], ["tests"]]));
    assert_eq!(gs["plan"]["steps"][1]["domain"], "api");
    assert_eq!(gs["plan"]["steps"][2]["dependsOn"], json!(["ui", "api"]));

    // A reader may not approve.
    let (status, err) = api
        .call_as(
            &reader,
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "permission_denied");
    let (status, _) = api
        .call_as(
            &forged(),
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Approve: the two independent steps' agents ask the model at the same time.
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
    model.push(Reply::text("tests written"));
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
    assert_eq!(running_now["steps"]["pending"], 1, "{running_now}");
    model.release_replies();

    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 3, "{done}");

    // Real containers, one per step.
    let runtimes: Vec<Value> = api
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "subtask:progress" && e["data"]["kind"] == "container")
        .map(|e| e["data"]["runtime"].clone())
        .collect();
    assert_eq!(runtimes, vec![json!("docker"); 3], "real containers");

    // GraphQL: the finished session in the list, its steps and agents.
    let q = format!(
        r#"{{ coworkSessions(state: "completed") {{ sessions {{ sessionId }} }}
             coworkSession(id: "{id}") {{ state stepCounts steps {{ key state runner }} agents {{ stepId state claimId }}
               events(limit: 500) {{ type }} }} }}"#
    );
    let v = graphql(&http, &base, &reader, &q).await;
    assert_eq!(
        v["coworkSessions"]["sessions"],
        json!([{"sessionId": id.as_str()}])
    );
    let gs = &v["coworkSession"];
    assert_eq!(gs["state"], "completed");
    assert_eq!(gs["stepCounts"]["succeeded"], 3);
    let mut keys_done: Vec<&str> = gs["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["state"], "succeeded", "{s}");
            assert_eq!(s["runner"], "platform", "{s}");
            s["key"].as_str().unwrap()
        })
        .collect();
    keys_done.sort_unstable();
    assert_eq!(keys_done, ["api", "tests", "ui"]);
    let claims: std::collections::BTreeSet<&str> = gs["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["claimId"].as_str())
        .collect();
    assert_eq!(claims.len(), 3, "three containers: {gs}");
    let logged: Vec<&str> = gs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(logged.first(), Some(&"session:created"), "{logged:?}");
    assert_eq!(logged.last(), Some(&"session:completed"), "{logged:?}");

    // The diff shows exactly the changes; a source edited after the baseline is a conflict.
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
    assert!(
        button["diff"]
            .as_str()
            .unwrap()
            .contains(&format!("-{BUTTON_OLD}+{BUTTON_NEW}")),
        "{button}"
    );
    let (status, _) = api
        .call_as(
            &reader,
            "POST",
            &format!("/api/v1/sandbox/{sandbox}/apply"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader may not apply");
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

    // Apply writes them; rollback restores the original bytes.
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

    // The events on the gateway's WebSocket channel, from the plan on (session:created came
    // before anyone could know the session's id: it is in the log above).
    let mut seen = Vec::new();
    while !seen.iter().any(|t| t == "session:completed") {
        let m = hub.next().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["channel"], format!("cowork:{id}"));
        assert_eq!(m["data"]["session_id"], id.as_str());
        seen.push(m["data"]["type"].as_str().unwrap().to_owned());
    }
    for t in [
        "plan:generated",
        "plan:approved",
        "subtask:started",
        "subtask:completed",
        "session:completed",
    ] {
        assert!(seen.iter().any(|x| x == t), "{t} missing from {seen:?}");
    }
    assert_eq!(
        seen.iter().filter(|t| *t == "subtask:started").count(),
        3,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|t| *t == "subtask:completed").count(),
        3,
        "{seen:?}"
    );

    // And on GraphQL's subscription (which starts once its resolver has asked cowork about
    // the session, so only what came after the approval is certain to be there).
    let mut gql_seen = Vec::new();
    while !gql_seen.iter().any(|t| t == "session:completed") {
        let m = gql.next().await;
        assert_eq!(m["type"], "next", "{m}");
        assert_eq!(m["id"], "e");
        let e = &m["payload"]["data"]["coworkEvents"];
        assert_eq!(e["sessionId"], id.as_str(), "{m}");
        gql_seen.push(e["type"].as_str().unwrap().to_owned());
    }
    for t in ["plan:approved", "subtask:started", "subtask:completed"] {
        assert!(
            gql_seen.iter().any(|x| x == t),
            "{t} missing from {gql_seen:?}"
        );
    }

    // Another tenant's token reaches nothing of it, over REST or GraphQL.
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
    let r: Value = http
        .post(format!("{base}/graphql"))
        .bearer_auth(&other)
        .json(&json!({"query": format!(r#"{{ coworkSession(id: "{id}") {{ state }} }}"#)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errors"][0]["extensions"]["code"], "not_found", "{r}");

    gateway.stop().await.unwrap();
    cowork.stop().await.unwrap();
    pg.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cowork_killed_mid_step_behind_the_gateway_resumes_after_a_restart() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "restart me\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let model = ModelServer::openai("test-key").await.unwrap();
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let mut cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, Some(&model.base_url())),
    );
    let (config_file, log, direct) = stack::process_config(&mut cfg, &dirs);

    let mut first = spawn_cowork(&config_file, &log);
    wait_healthy(&direct, &log).await;
    let gateway = start_gateway(
        &keys,
        &dirs,
        "memory://",
        liquid_runtime::Peer {
            http: direct.clone(),
            grpc: format!("http://{}", cfg.server.grpc_addr.unwrap()),
        },
    )
    .await;
    let api = Api::new(format!("http://{}", gateway.http_addr()), keys.writer());

    let id = stack::session_inside_a_long_command(&api, &model, &ws).await;
    first.kill().unwrap();
    first.wait().unwrap();

    // While cowork is gone the gateway says so, naming it.
    let (status, err) = api
        .call("GET", &format!("/api/v1/cowork/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(err["error"]["code"], "unavailable");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("cowork"),
        "{err}"
    );

    let mut second = spawn_cowork(&config_file, &log);
    wait_healthy(&direct, &log).await;
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 1, "{done}");
    let agents = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/agents?session_id={id}"),
            None,
        )
        .await;
    let agents = agents["agents"].as_array().unwrap().clone();
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert_eq!(
        (agents[0]["attempt"].as_i64(), agents[0]["state"].as_str()),
        (Some(1), Some("dead"))
    );
    assert_eq!(
        (agents[1]["attempt"].as_i64(), agents[1]["state"].as_str()),
        (Some(2), Some("succeeded"))
    );
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&diff),
        [("out.txt".to_owned(), "added".to_owned())]
    );
    api.ok("POST", &format!("/api/v1/sandbox/{sandbox}/apply"), None)
        .await;
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "written after the restart\n"
    );

    gateway.stop().await.unwrap();
    second.kill().unwrap();
    second.wait().unwrap();
}
