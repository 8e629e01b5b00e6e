//! The A2A bridge against a real A2A server: the a2a service (in this process, on SQLite)
//! hosts a `coder` agent whose execution is this test's `AgentExecutorService`, so cowork
//! discovers it by its agent card and talks to it over the real protocol and auth. A session
//! whose step names the `coder` skill is delegated: the remote task streams, its file parts
//! land in the session's staging sandbox through the permission pipeline (a write outside the
//! workspace is refused and fails the step), its other parts are kept as artifacts; a remote
//! failure fails the step with the agent's words; cancelling the session cancels the remote
//! task. Steps that match no skill never reach the remote agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::sync::Arc;
use std::time::Duration;

use liquid_a2a::client::A2aClient;
use liquid_a2a::pb;
use liquid_a2a_service::agents::AgentEvent;
use liquid_a2a_service::agents::remote::encode_event;
use liquid_a2a_service::config::{A2aSettings, Profile, RemoteAgent};
use liquid_kit::RunningService;
use liquid_proto::a2a::v1 as exec;
use liquid_proto::a2a::v1::agent_executor_service_server::{
    AgentExecutorService, AgentExecutorServiceServer,
};
use liquid_runtime::ServiceConfig;
use prost::Message as _;
use serde_json::{Value, json};
use stack::{Api, Dirs, TENANT, diff_paths, keys};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// The remote agent's behaviour, chosen by the text it is sent.
#[derive(Clone, Default)]
struct Coder {
    /// Texts of the messages it received.
    seen: Arc<Mutex<Vec<String>>>,
    /// Task ids whose execution was cancelled by the a2a service.
    cancelled: Arc<Mutex<Vec<String>>>,
}

fn status(state: pb::TaskState, text: &str) -> AgentEvent {
    AgentEvent::Status {
        state,
        message: (!text.is_empty()).then(|| pb::Message {
            message_id: uuid::Uuid::now_v7().to_string(),
            role: pb::Role::Agent as i32,
            parts: vec![text_part(text)],
            ..Default::default()
        }),
    }
}

fn text_part(text: &str) -> pb::Part {
    pb::Part {
        content: Some(pb::part::Content::Text(text.into())),
        ..Default::default()
    }
}

fn file_part(name: &str, bytes: &[u8]) -> pb::Part {
    pb::Part {
        content: Some(pb::part::Content::Raw(bytes.to_vec())),
        filename: name.into(),
        media_type: "text/markdown".into(),
        ..Default::default()
    }
}

fn data_part(v: Value) -> pb::Part {
    pb::Part {
        content: Some(pb::part::Content::Data(serde_json::from_value(v).unwrap())),
        ..Default::default()
    }
}

fn artifact(name: &str, parts: Vec<pb::Part>) -> AgentEvent {
    AgentEvent::Artifact {
        artifact: pb::Artifact {
            artifact_id: uuid::Uuid::now_v7().to_string(),
            name: name.into(),
            parts,
            ..Default::default()
        },
        append: false,
        last_chunk: true,
    }
}

#[tonic::async_trait]
impl AgentExecutorService for Coder {
    type ExecuteStream =
        tokio_stream::wrappers::ReceiverStream<Result<exec::ExecutorEvent, tonic::Status>>;

    async fn execute(
        &self,
        request: tonic::Request<exec::ExecuteRequest>,
    ) -> Result<tonic::Response<Self::ExecuteStream>, tonic::Status> {
        let request = request.into_inner();
        let message = pb::Message::decode(request.message.as_slice()).unwrap();
        let text: String = message
            .parts
            .iter()
            .filter_map(|p| match &p.content {
                Some(pb::part::Content::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .collect();
        self.seen.lock().await.push(text.clone());
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let send = |e: AgentEvent| {
                let tx = tx.clone();
                async move { tx.send(Ok(encode_event(&e))).await.is_ok() }
            };
            send(status(pb::TaskState::Working, "reading the request")).await;
            if text.contains("slowly") {
                // Works until the a2a service cancels the call.
                tx.closed().await;
                me.cancelled.lock().await.push(request.task_id);
            } else if text.contains("broken") {
                send(status(pb::TaskState::Failed, "the coder has no keyboard")).await;
            } else if text.contains("escape") {
                send(artifact("files", vec![file_part("../outside.md", b"no\n")])).await;
                send(status(pb::TaskState::Completed, "")).await;
            } else {
                send(artifact(
                    "files",
                    vec![
                        file_part("docs/notes.md", b"# Notes\nwritten remotely\n"),
                        data_part(json!({"path": "OLD.md", "delete": true})),
                    ],
                ))
                .await;
                send(artifact(
                    "report",
                    vec![text_part("wrote the notes, removed OLD.md")],
                ))
                .await;
                send(status(pb::TaskState::Completed, "notes written")).await;
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

async fn serve_coder(coder: Coder) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentExecutorServiceServer::new(coder))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn start_a2a_with(
    keys: &stack::Keys,
    dir: &std::path::Path,
    executor_url: &str,
    profile: Profile,
) -> RunningService {
    let mut c = ServiceConfig::<A2aSettings>::defaults_for(&liquid_a2a_service::SERVICE);
    c.settings.a2a.profile = profile;
    c.server = c.server.ephemeral();
    c.database.url = format!("sqlite://{}/a2a.db", dir.display());
    c.bus.url = "memory://".into();
    c.cache.url = "memory://".into();
    c.auth = keys.auth.clone();
    c.settings.a2a.remote_agents.insert(
        "coder".into(),
        RemoteAgent {
            executor_url: executor_url.into(),
            description: "writes documentation".into(),
        },
    );
    liquid_runtime::start::<liquid_a2a_service::A2a>(&c, CancellationToken::new())
        .await
        .unwrap()
}

struct Bridge {
    _a2a: RunningService,
    _cowork: RunningService,
    api: Api,
    dirs: Dirs,
    coder: Coder,
    a2a_token: String,
    a2a_http: String,
}

async fn bridge() -> Bridge {
    bridge_with(Profile::Platform, "/agents/coder").await
}

/// Cowork delegating to the a2a service's agent at `agent_path` (`""`: its root agent).
async fn bridge_with(profile: Profile, agent_path: &str) -> Bridge {
    let keys = keys();
    let dirs = Dirs::new();
    let coder = Coder::default();
    let executor_url = serve_coder(coder.clone()).await;
    let a2a = start_a2a_with(&keys, &dirs.base(), &executor_url, profile).await;
    let a2a_http = format!("http://{}", a2a.http_addr());
    let a2a_token = keys.token(TENANT, &["a2a:read", "a2a:write"]);
    let mut settings = stack::settings(&dirs, &keys, None);
    settings.a2a.agents = vec![format!("{a2a_http}{agent_path}")];
    settings.a2a.poll_interval_ms = 50;
    settings.a2a.token = liquid_kit::Secret::new(a2a_token.clone());
    settings.agents.max_attempts = 1;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    // No container-pool: a delegated step needs none, any other step fails for want of one.
    let cfg = stack::config(&db, "memory://", &keys, "http://127.0.0.1:1", settings);
    let cowork = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", cowork.http_addr()), keys.writer());
    Bridge {
        _a2a: a2a,
        _cowork: cowork,
        api,
        dirs,
        coder,
        a2a_token,
        a2a_http,
    }
}

async fn approved_session(b: &Bridge, request: &str) -> String {
    let ws = b
        .dirs
        .workspace(&[("README.md", "repo\n"), ("OLD.md", "old\n")]);
    let id = b.api.create_session(&ws, request, "sequential").await;
    b.api.wait_state(&id, "awaiting_approval").await;
    b.api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
            None,
        )
        .await;
    id
}

async fn steps_of(b: &Bridge, id: &str) -> Vec<Value> {
    b.api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await["steps"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_matching_a_remote_skill_runs_there_and_its_files_are_staged() {
    let b = bridge().await;
    let id = approved_session(&b, "Ask the coder to write the notes and remove OLD.md").await;
    let done = b.api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 1, "{done}");
    let steps = steps_of(&b, &id).await;
    assert_eq!(steps[0]["runner"], "a2a:coder", "{steps:?}");
    assert_eq!(steps[0]["summary"], "notes written");
    // The remote agent was sent the step.
    let seen = b.coder.seen.lock().await.clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("write the notes"), "{seen:?}");

    // Its file changes wait in the sandbox; the source is untouched.
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = b
        .api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&diff),
        [
            ("OLD.md".to_owned(), "deleted".to_owned()),
            ("docs/notes.md".into(), "added".into()),
        ]
    );
    let ws = b.dirs.base().join("ws").join(TENANT).join("repo");
    assert!(!ws.join("docs/notes.md").exists());
    assert!(ws.join("OLD.md").exists());

    // Artifacts: the kept text part, the patch, the log.
    let arts = b
        .api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let arts = arts["artifacts"].as_array().unwrap();
    let by_kind = |k: &str| {
        arts.iter()
            .find(|a| a["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}: {arts:?}"))
    };
    assert_eq!(by_kind("a2a")["name"], "report");
    assert_eq!(by_kind("a2a")["content"], "wrote the notes, removed OLD.md");
    assert!(
        by_kind("patch")["content"]
            .as_str()
            .unwrap()
            .contains("+written remotely")
    );
    assert!(
        by_kind("log")["content"]
            .as_str()
            .unwrap()
            .contains("TASK_STATE_COMPLETED")
    );

    // Progress events carry the remote task's states.
    let events = b.api.events(&id).await;
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "subtask:progress" && e["data"]["kind"] == "a2a")
        .filter_map(|e| e["data"]["state"].as_str())
        .collect();
    assert!(states.contains(&"TASK_STATE_WORKING"), "{states:?}");
    assert_eq!(states.last(), Some(&"TASK_STATE_COMPLETED"), "{states:?}");

    // Apply writes them.
    b.api
        .ok("POST", &format!("/api/v1/sandbox/{sandbox}/apply"), None)
        .await;
    assert_eq!(
        std::fs::read_to_string(ws.join("docs/notes.md")).unwrap(),
        "# Notes\nwritten remotely\n"
    );
    assert!(!ws.join("OLD.md").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_failures_and_refused_writes_fail_the_step_with_the_reason() {
    let b = bridge().await;
    let id = approved_session(&b, "Ask the coder to do the broken thing").await;
    let done = b.api.wait_state(&id, "failed").await;
    let steps = steps_of(&b, &id).await;
    let error = steps[0]["error"].as_str().unwrap();
    assert!(
        error.contains("coder") && error.contains("the coder has no keyboard"),
        "{error}"
    );
    assert!(error.contains("TASK_STATE_FAILED"), "{error}");
    let _ = done;

    let id = approved_session(&b, "Ask the coder to escape the workspace").await;
    b.api.wait_state(&id, "failed").await;
    let steps = steps_of(&b, &id).await;
    let error = steps[0]["error"].as_str().unwrap();
    assert!(
        error.contains("../outside.md") && error.contains("refused"),
        "{error}"
    );
    assert!(
        !b.dirs
            .base()
            .join("ws")
            .join(TENANT)
            .join("outside.md")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_the_session_cancels_the_remote_task() {
    let b = bridge().await;
    let id = approved_session(&b, "Ask the coder to work slowly").await;
    let task_id = remote_task_of(&b.api, &id).await;
    b.api
        .ok(
            "POST",
            &format!("/api/v1/cowork/sessions/{id}/cancel"),
            None,
        )
        .await;
    b.api.wait_state(&id, "cancelled").await;
    wait_remote_canceled(&b.a2a_http, &b.a2a_token, &b.coder, &task_id).await;
}

/// The id of the remote task a session's delegated step started.
async fn remote_task_of(api: &Api, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = api.events(id).await;
        if let Some(t) = events.iter().find_map(|e| e["data"]["task_id"].as_str()) {
            return t.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no remote task: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the a2a service reports `task_id` canceled and the executor saw its call
/// cancelled.
async fn wait_remote_canceled(a2a_http: &str, token: &str, coder: &Coder, task_id: &str) {
    let client = A2aClient::jsonrpc(format!("{a2a_http}/agents/coder/a2a")).with_bearer(token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let task = client
            .get_task(pb::GetTaskRequest {
                id: task_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let state = task.status.unwrap().state;
        if state == pb::TaskState::Canceled as i32
            && coder.cancelled.lock().await.iter().any(|t| t == task_id)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "remote task still in state {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cowork killed (SIGKILL) while a delegated step's remote task works: after the restart the
/// agent is declared dead and its remote task is cancelled, not left working for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_agent_s_remote_task_is_cancelled_after_a_restart() {
    let keys = keys();
    let dirs = Dirs::new();
    let coder = Coder::default();
    let executor_url = serve_coder(coder.clone()).await;
    let a2a = start_a2a_with(&keys, &dirs.base(), &executor_url, Profile::Platform).await;
    let a2a_http = format!("http://{}", a2a.http_addr());
    let a2a_token = keys.token(TENANT, &["a2a:read", "a2a:write"]);
    let mut settings = stack::settings(&dirs, &keys, None);
    settings.a2a.agents = vec![format!("{a2a_http}/agents/coder")];
    settings.a2a.poll_interval_ms = 50;
    settings.a2a.token = liquid_kit::Secret::new(a2a_token.clone());
    settings.agents.max_attempts = 1;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let mut cfg = stack::config(&db, "memory://", &keys, "http://127.0.0.1:1", settings);
    let (config_file, log, base) = stack::process_config(&mut cfg, &dirs);
    let mut first = stack::spawn_cowork(&config_file, &log);
    stack::wait_healthy(&base, &log).await;
    let api = Api::new(base.clone(), keys.writer());
    let ws = dirs.workspace(&[("README.md", "repo\n")]);
    let id = api
        .create_session(&ws, "Ask the coder to work slowly", "sequential")
        .await;
    api.wait_state(&id, "awaiting_approval").await;
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let task_id = remote_task_of(&api, &id).await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = stack::spawn_cowork(&config_file, &log);
    stack::wait_healthy(&base, &log).await;
    wait_remote_canceled(&a2a_http, &a2a_token, &coder, &task_id).await;
    let done = api.wait_state(&id, "failed").await;
    assert_eq!(done["steps"]["failed"], 1, "{done}");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_without_streaming_is_polled_and_asking_for_input_fails_the_step() {
    // The conformance agent at the a2a service's root, its card saying streaming is off.
    let b = bridge_with(Profile::TckCapabilitiesOff, "").await;
    let id = approved_session(&b, "tck-artifact-file for the tck agent").await;
    let done = b.api.wait_state(&id, "completed").await;
    let steps = steps_of(&b, &id).await;
    assert!(
        steps[0]["runner"].as_str().unwrap().starts_with("a2a:"),
        "{steps:?}"
    );
    let events = b.api.events(&id).await;
    let delegated = events
        .iter()
        .find(|e| e["data"]["event"] == "delegated")
        .expect("a delegation event");
    assert_eq!(delegated["data"]["streaming"], false, "{delegated}");
    assert_eq!(delegated["data"]["skill"], "tck", "{delegated}");
    // Its raw file part is staged through the pipeline.
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = b
        .api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&diff),
        [("output.txt".to_owned(), "added".to_owned())]
    );
    assert!(
        diff["changes"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+tck")
    );

    let id = approved_session(&b, "tck-input-required for the tck agent").await;
    b.api.wait_state(&id, "failed").await;
    let steps = steps_of(&b, &id).await;
    let error = steps[0]["error"].as_str().unwrap();
    assert!(
        error.contains("asked for input") && error.contains("Input required by TCK"),
        "{error}"
    );
}
