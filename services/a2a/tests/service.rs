//! The a2a service end to end, started the way the runtime starts it: the conformance agent
//! over JSON-RPC, HTTP+JSON and gRPC through the real auth layer; discovery with caching;
//! multi-turn, cancel, idempotent retries and tenancy; and two replicas on Postgres and NATS
//! where a subscriber on one follows a task running on the other; the service binary killed
//! (SIGKILL) mid-task, whose task another replica or the restarted one fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use liquid_a2a::client::{A2aClient, event_state};
use liquid_a2a::pb::{self, send_message_response, stream_response::Payload};
use liquid_a2a::{A2aError, A2aErrorKind};
use liquid_a2a_service::config::{A2aSettings, Profile};
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_kit::RunningService;
use liquid_runtime::ServiceConfig;
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use tokio_util::sync::CancellationToken;

struct Keys {
    _dir: tempfile::TempDir,
    key: SigningKey,
    auth: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    Keys {
        _dir: dir,
        key,
        auth,
    }
}

impl Keys {
    fn token(&self, tenant: &str) -> String {
        self.key
            .mint(
                &TokenRequest::user("alice", ["a2a:read", "a2a:write"])
                    .tenant(tenant)
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    }
}

fn config(db: &str, bus: &str, auth: &AuthConfig, profile: Profile) -> ServiceConfig<A2aSettings> {
    let mut c = ServiceConfig::<A2aSettings>::defaults_for(&liquid_a2a_service::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.bus.url = bus.into();
    c.cache.url = "memory://".into();
    c.auth = auth.clone();
    c.settings.a2a.profile = profile;
    c
}

async fn start(cfg: &ServiceConfig<A2aSettings>) -> RunningService {
    liquid_runtime::start::<liquid_a2a_service::A2a>(cfg, CancellationToken::new())
        .await
        .unwrap()
}

fn clients(running: &RunningService, token: &str) -> Vec<(&'static str, A2aClient)> {
    let http = running.http_addr();
    let grpc = running.grpc_addr().unwrap();
    vec![
        (
            "jsonrpc",
            A2aClient::jsonrpc(format!("http://{http}/a2a")).with_bearer(token),
        ),
        (
            "rest",
            A2aClient::http_json(format!("http://{http}/a2a/rest")).with_bearer(token),
        ),
        (
            "grpc",
            A2aClient::grpc(format!("http://{grpc}"))
                .unwrap()
                .with_bearer(token),
        ),
    ]
}

fn message(id: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        message: Some(pb::Message {
            message_id: id.into(),
            role: pb::Role::User as i32,
            parts: vec![pb::Part {
                content: Some(pb::part::Content::Text(text.into())),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_of(r: pb::SendMessageResponse) -> pb::Task {
    match r.payload {
        Some(send_message_response::Payload::Task(t)) => t,
        other => panic!("expected a task, got {other:?}"),
    }
}

fn state(t: &pb::Task) -> i32 {
    t.status.as_ref().unwrap().state
}

#[tokio::test]
async fn conformance_agent_on_every_binding() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let db = format!("sqlite://{}/a2a.db", dir.path().display());
    let running = start(&config(&db, "memory://", &keys.auth, Profile::Tck)).await;
    let token = keys.token("acme");
    for (name, client) in clients(&running, &token) {
        let id = |s: &str| format!("{s}-{name}");
        // Blocking send completes with the status message.
        let t = task_of(
            client
                .send_message(message(&id("tck-complete-task"), "hi"))
                .await
                .unwrap(),
        );
        assert_eq!(state(&t), pb::TaskState::Completed as i32, "{name}");
        let text = &t.status.as_ref().unwrap().message.as_ref().unwrap().parts[0].content;
        assert_eq!(
            text,
            &Some(pb::part::Content::Text("Hello from TCK".into())),
            "{name}"
        );
        // The same message id again is the same task, not a new one.
        let again = task_of(
            client
                .send_message(message(&id("tck-complete-task"), "hi"))
                .await
                .unwrap(),
        );
        assert_eq!(again.id, t.id, "{name}");
        // A direct message and no task.
        let r = client
            .send_message(message(&id("tck-message-response"), "hi"))
            .await
            .unwrap();
        assert!(
            matches!(r.payload, Some(send_message_response::Payload::Message(_))),
            "{name}"
        );
        // Multi-turn: INPUT_REQUIRED, then a follow-up completes the same task.
        let t = task_of(
            client
                .send_message(message(&id("tck-input-required"), "hi"))
                .await
                .unwrap(),
        );
        assert_eq!(state(&t), pb::TaskState::InputRequired as i32, "{name}");
        let mut follow = message(&id("tck-complete-task-2"), "done");
        follow.message.as_mut().unwrap().task_id = t.id.clone();
        let done = task_of(client.send_message(follow).await.unwrap());
        assert_eq!(
            (done.id.as_str(), state(&done)),
            (t.id.as_str(), pb::TaskState::Completed as i32),
            "{name}"
        );
        let h = client
            .get_task(pb::GetTaskRequest {
                id: t.id.clone(),
                history_length: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(h.history.len(), 1, "{name}");
        // A terminal task takes no more messages.
        let mut late = message(&id("late"), "x");
        late.message.as_mut().unwrap().task_id = t.id.clone();
        assert_eq!(
            client.send_message(late).await.unwrap_err().kind(),
            A2aErrorKind::UnsupportedOperation,
            "{name}"
        );
        // INPUT_REQUIRED tasks can be canceled; terminal ones cannot.
        let t = task_of(
            client
                .send_message(message(&id("tck-input-required-c"), "hi"))
                .await
                .unwrap(),
        );
        let c = client
            .cancel_task(pb::CancelTaskRequest {
                id: t.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(state(&c), pb::TaskState::Canceled as i32, "{name}");
        let e = client
            .cancel_task(pb::CancelTaskRequest {
                id: t.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e,
            A2aError::TaskNotCancelable {
                task_id: t.id.clone()
            },
            "{name}"
        );
        // Streaming: the Task first, then working, artifact, completed.
        let events: Vec<pb::StreamResponse> = client
            .send_streaming_message(message(&id("tck-stream-001"), "go"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(
            matches!(events[0].payload, Some(Payload::Task(_))),
            "{name}"
        );
        let tail: Vec<Option<i32>> = events[1..].iter().map(event_state).collect();
        assert_eq!(tail, [Some(2), None, Some(3)], "{name}");
        // Chunked artifacts: the second chunk appends and is the last.
        let events: Vec<pb::StreamResponse> = client
            .send_streaming_message(message(&id("tck-stream-artifact-chunked"), "go"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let chunks: Vec<(bool, bool)> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::ArtifactUpdate(a)) => Some((a.append, a.last_chunk)),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, [(false, false), (true, true)], "{name}");
        // Subscribing to a terminal task is refused.
        let e = client
            .subscribe_to_task(pb::SubscribeToTaskRequest {
                id: done.id.clone(),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), A2aErrorKind::UnsupportedOperation, "{name}");
        // Another tenant sees nothing.
        let stranger = clients(&running, &keys.token("other")).remove(0).1;
        let e = stranger
            .get_task(pb::GetTaskRequest {
                id: done.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::TaskNotFound, "{name}");
    }
    // ListTasks pages through this tenant's tasks, newest first.
    let client =
        A2aClient::jsonrpc(format!("http://{}/a2a/", running.http_addr())).with_bearer(&token);
    let page = client
        .list_tasks(pb::ListTasksRequest {
            page_size: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 2);
    assert!(!page.next_page_token.is_empty());
    assert!(page.total_size >= 12);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn discovery_and_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let db = format!("sqlite://{}/a2a.db", dir.path().display());
    let running = start(&config(&db, "memory://", &keys.auth, Profile::Platform)).await;
    let base = format!("http://{}", running.http_addr());
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].clone();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    assert!(r.headers().contains_key("last-modified"));
    let card: pb::AgentCard = r.json().await.unwrap();
    let bindings: Vec<&str> = card
        .supported_interfaces
        .iter()
        .map(|i| i.protocol_binding.as_str())
        .collect();
    assert_eq!(bindings, ["JSONRPC", "HTTP+JSON", "GRPC"]);
    assert_eq!(card.supported_interfaces[0].url, format!("{base}/a2a"));
    let r = http
        .get(format!("{base}/.well-known/agent-card.json"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Each hosted agent has its own card and interfaces.
    let tck: pb::AgentCard = http
        .get(format!("{base}/agents/tck/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tck.name, "tck");
    assert_eq!(
        tck.supported_interfaces[0].url,
        format!("{base}/agents/tck/a2a")
    );
    assert_eq!(tck.supported_interfaces[2].tenant, "tck");
    // The card's JSON-RPC interface works with a token, and not without.
    let client = A2aClient::from_card(&tck, &[liquid_a2a::Binding::JsonRpc]).unwrap();
    let e = client
        .send_message(message("tck-complete-task-x", "hi"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), A2aErrorKind::Unauthenticated);
    let t = task_of(
        client
            .with_bearer(&keys.token("acme"))
            .send_message(message("tck-complete-task-x", "hi"))
            .await
            .unwrap(),
    );
    assert_eq!(state(&t), pb::TaskState::Completed as i32);
    // gRPC picks the agent by the tenant field.
    let grpc = A2aClient::grpc(format!("http://{}", running.grpc_addr().unwrap()))
        .unwrap()
        .with_bearer(&keys.token("acme"));
    let mut req = message("tck-complete-task-grpc", "hi");
    req.tenant = "tck".into();
    let t = task_of(grpc.send_message(req).await.unwrap());
    assert_eq!(
        t.status.unwrap().message.unwrap().parts[0].content,
        Some(pb::part::Content::Text("Hello from TCK".into()))
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_subscriber_on_another_replica_follows_the_task_in_order() {
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let keys = keys();
    let cfg = config(db.url(), &nats.url(), &keys.auth, Profile::Tck);
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    let token = keys.token("acme");
    let on_a = A2aClient::jsonrpc(format!("http://{}/a2a", a.http_addr())).with_bearer(&token);
    let mut req = message("test-resubscribe-message-id", "wait");
    req.configuration = Some(pb::SendMessageConfiguration {
        return_immediately: true,
        ..Default::default()
    });
    let task = task_of(on_a.send_message(req).await.unwrap());
    // All three bindings subscribe on replica B while the task still runs on A.
    let mut streams = Vec::new();
    for (name, client) in clients(&b, &token) {
        let stream = client
            .subscribe_to_task(pb::SubscribeToTaskRequest {
                id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        streams.push((name, stream));
    }
    for (name, stream) in streams {
        let events: Vec<pb::StreamResponse> = stream.map(Result::unwrap).collect().await;
        assert!(
            matches!(events[0].payload, Some(Payload::Task(_))),
            "{name}"
        );
        let states: Vec<i32> = events.iter().filter_map(event_state).collect();
        assert_eq!(
            states.last(),
            Some(&(pb::TaskState::Completed as i32)),
            "{name}"
        );
        // Never reordered: states only move forward (working before completed).
        assert!(
            states.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {states:?}"
        );
    }
    // The task and its log are in the shared database: replica B reads what A wrote.
    let on_b =
        A2aClient::http_json(format!("http://{}/a2a/rest", b.http_addr())).with_bearer(&token);
    let t = on_b
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&t), pb::TaskState::Completed as i32);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn tasks_history_and_push_configs_survive_a_restart_on_postgres() {
    let db = TestDatabase::create().await.unwrap();
    let keys = keys();
    let mut cfg = config(db.url(), "memory://", &keys.auth, Profile::Tck);
    cfg.settings.push.allow_loopback = true;
    let token = keys.token("acme");
    let first = start(&cfg).await;
    let client = |running: &RunningService| {
        A2aClient::jsonrpc(format!("http://{}/a2a", running.http_addr())).with_bearer(&token)
    };
    // A finished multi-turn task, and one waiting for input with a push config.
    let c = client(&first);
    let multi = task_of(
        c.send_message(message("tck-input-required-r1", "one"))
            .await
            .unwrap(),
    );
    let mut follow = message("tck-complete-task-r1", "two");
    follow.message.as_mut().unwrap().task_id = multi.id.clone();
    let multi = task_of(c.send_message(follow).await.unwrap());
    assert_eq!(state(&multi), pb::TaskState::Completed as i32);
    let waiting = task_of(
        c.send_message(message("tck-input-required-r2", "three"))
            .await
            .unwrap(),
    );
    let push = c
        .create_task_push_notification_config(pb::TaskPushNotificationConfig {
            task_id: waiting.id.clone(),
            url: "http://127.0.0.1:9/hook".into(),
            token: "kept".into(),
            authentication: Some(pb::AuthenticationInfo {
                scheme: "Bearer".into(),
                credentials: "secret".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // A stream is open on a running task when the service stops.
    let mut running_req = message("test-resubscribe-message-id", "long");
    running_req.message.as_mut().unwrap().message_id = "test-resubscribe-message-id-r3".into();
    let mut stream = c.send_streaming_message(running_req).await.unwrap();
    let head = stream.next().await.unwrap().unwrap();
    let Some(Payload::Task(interrupted)) = head.payload else {
        panic!("the first event of a stream is the task: {head:?}")
    };
    let before = c
        .get_task(pb::GetTaskRequest {
            id: multi.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    first.stop().await.unwrap();
    drop(stream);

    let second = start(&cfg).await;
    let c = client(&second);
    let after = c
        .get_task(pb::GetTaskRequest {
            id: multi.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(state(&after), pb::TaskState::Completed as i32);
    let history: Vec<&str> = after
        .history
        .iter()
        .filter(|m| m.role == pb::Role::User as i32)
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(history, ["tck-input-required-r1", "tck-complete-task-r1"]);
    // The task that was running when the service stopped is still known.
    let kept = c
        .get_task(pb::GetTaskRequest {
            id: interrupted.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kept.history[0].message_id, "test-resubscribe-message-id-r3");
    // Its execution is gone with the process: it failed, and says why, instead of staying
    // WORKING forever.
    let status = kept.status.unwrap();
    assert_eq!(status.state, pb::TaskState::Failed as i32);
    assert_eq!(
        status.message.unwrap().parts[0].content,
        Some(pb::part::Content::Text(
            "the service stopped while the task was running".into()
        ))
    );
    // The push config is still there, credentials and all.
    let configs = c
        .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
            task_id: waiting.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(configs.configs, [push]);
    // ListTasks sees all three; the waiting task continues after the restart.
    let listed = c.list_tasks(pb::ListTasksRequest::default()).await.unwrap();
    assert_eq!(listed.total_size, 3);
    let mut resume = message("tck-complete-task-r2", "four");
    resume.message.as_mut().unwrap().task_id = waiting.id.clone();
    let done = task_of(c.send_message(resume).await.unwrap());
    assert_eq!(
        (done.id.as_str(), state(&done)),
        (waiting.id.as_str(), pb::TaskState::Completed as i32)
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn read_and_write_operations_need_their_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let db = format!("sqlite://{}/a2a.db", dir.path().display());
    let running = start(&config(&db, "memory://", &keys.auth, Profile::Tck)).await;
    let mint = |scopes: &[&str]| {
        keys.key
            .mint(
                &TokenRequest::user("bob", scopes.iter().copied())
                    .tenant("acme")
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    };
    let writer = clients(&running, &mint(&["a2a:*"])).remove(0).1;
    let task = task_of(
        writer
            .send_message(message("tck-input-required-scopes", "hi"))
            .await
            .unwrap(),
    );
    let reader_token = mint(&["a2a:read"]);
    let nobody_token = mint(&["cowork:*"]);
    for ((name, reader), (_, nobody)) in clients(&running, &reader_token)
        .into_iter()
        .zip(clients(&running, &nobody_token))
    {
        let get = pb::GetTaskRequest {
            id: task.id.clone(),
            ..Default::default()
        };
        assert_eq!(reader.get_task(get.clone()).await.unwrap().id, task.id);
        assert_eq!(
            nobody.get_task(get).await.unwrap_err().kind(),
            A2aErrorKind::PermissionDenied,
            "{name}"
        );
        let denied = |r: Result<(), A2aError>| {
            assert_eq!(
                r.unwrap_err().kind(),
                A2aErrorKind::PermissionDenied,
                "{name}"
            );
        };
        denied(
            reader
                .send_message(message(&format!("tck-complete-task-s-{name}"), "hi"))
                .await
                .map(drop),
        );
        denied(
            reader
                .cancel_task(pb::CancelTaskRequest {
                    id: task.id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        denied(
            reader
                .create_task_push_notification_config(pb::TaskPushNotificationConfig {
                    task_id: task.id.clone(),
                    url: "https://example.com/hook".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        denied(
            reader
                .delete_task_push_notification_config(pb::DeleteTaskPushNotificationConfigRequest {
                    task_id: task.id.clone(),
                    id: "any".into(),
                    ..Default::default()
                })
                .await,
        );
    }
    // The task was not touched by the refused calls.
    let t = writer
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&t), pb::TaskState::InputRequired as i32);
    running.stop().await.unwrap();
}

/// A free loopback address, for a service started as a process.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `cfg` for the `liquid-a2a-service` binary: fixed free ports (so a restart finds it at the
/// same address) and short owner leases, so a killed replica's tasks are recovered soon.
fn process_config(cfg: &mut ServiceConfig<A2aSettings>) {
    cfg.server.http_addr = free_addr();
    cfg.server.grpc_addr = Some(free_addr());
    cfg.settings.a2a.lease_renew_secs = 1;
    cfg.settings.a2a.lease_secs = 3;
}

/// The service binary as a child process, killed (SIGKILL) when dropped, so a failing test
/// leaves no process behind.
struct Process(std::process::Child);

impl Process {
    /// SIGKILL, as a crash or an OOM kill would end it, and reaps it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `liquid-a2a-service` binary on `cfg` (written to `dir/a2a.toml`), its output appended
/// to `dir/a2a.log`; waits for its `/healthz`.
async fn spawn_service(cfg: &ServiceConfig<A2aSettings>, dir: &std::path::Path) -> Process {
    let config = dir.join("a2a.toml");
    std::fs::write(&config, toml::to_string(cfg).unwrap()).unwrap();
    let log_path = dir.join("a2a.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_liquid-a2a-service"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap();
    let process = Process(child);
    if !healthy(&format!("http://{}/healthz", cfg.server.http_addr)).await {
        panic!(
            "liquid-a2a-service did not come up:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    process
}

/// Whether `url` answers 2xx within a minute.
async fn healthy(url: &str) -> bool {
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Sends the conformance agent's long scenario (WORKING for about 4 s) without waiting.
async fn start_long_task(client: &A2aClient, message_id: &str) -> pb::Task {
    let mut req = message("test-resubscribe-message-id", "long");
    req.message.as_mut().unwrap().message_id = message_id.into();
    req.configuration = Some(pb::SendMessageConfiguration {
        return_immediately: true,
        ..Default::default()
    });
    let task = task_of(client.send_message(req).await.unwrap());
    assert!(
        [
            pb::TaskState::Submitted as i32,
            pb::TaskState::Working as i32
        ]
        .contains(&state(&task)),
        "{task:?}"
    );
    task
}

/// The text of a task status's message.
fn status_text(status: &pb::TaskStatus) -> Option<&str> {
    match status.message.as_ref()?.parts.first()?.content.as_ref()? {
        pb::part::Content::Text(t) => Some(t),
        _ => None,
    }
}

/// Every event of `stream` until it ends; a hang (the bug this guards against) fails after a
/// generous deadline instead of blocking the suite.
async fn drain(stream: liquid_a2a::EventStream) -> Vec<pb::StreamResponse> {
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        stream.map(Result::unwrap).collect::<Vec<_>>(),
    )
    .await
    .expect("the stream did not end: the task never reached a terminal state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_on_a_killed_replica_fails_after_a_restart_on_postgres() {
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    killed_mid_task_then_restarted(db.url(), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_on_a_killed_replica_fails_after_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/a2a.db", dir.path().display());
    killed_mid_task_then_restarted(&db, dir.path()).await;
}

/// The service binary on `db` killed while the conformance agent runs a task, then started
/// again: the task fails with the reason, a subscriber hears it, a waiting task is untouched.
async fn killed_mid_task_then_restarted(db: &str, dir: &std::path::Path) {
    let keys = keys();
    let mut cfg = config(db, "memory://", &keys.auth, Profile::Tck);
    process_config(&mut cfg);
    let token = keys.token("acme");
    let client =
        A2aClient::jsonrpc(format!("http://{}/a2a", cfg.server.http_addr)).with_bearer(&token);

    let mut first = spawn_service(&cfg, dir).await;
    // A task waiting for the client holds no lease: no replica drives it.
    let waiting = task_of(
        client
            .send_message(message("tck-input-required-lease", "wait"))
            .await
            .unwrap(),
    );
    assert_eq!(state(&waiting), pb::TaskState::InputRequired as i32);
    let running = start_long_task(&client, "test-resubscribe-message-id-lease").await;
    first.kill();

    let mut second = spawn_service(&cfg, dir).await;
    // A subscriber on the restarted service hears the task fail (it does not wait forever).
    let stream = client
        .subscribe_to_task(pb::SubscribeToTaskRequest {
            id: running.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = drain(stream).await;
    let states: Vec<i32> = events.iter().filter_map(event_state).collect();
    assert_eq!(
        states.last(),
        Some(&(pb::TaskState::Failed as i32)),
        "{events:?}"
    );
    let failed = client
        .get_task(pb::GetTaskRequest {
            id: running.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = failed.status.unwrap();
    assert_eq!(status.state, pb::TaskState::Failed as i32);
    assert_eq!(
        status_text(&status),
        Some(liquid_a2a_service::lease::REPLICA_STOPPED)
    );
    assert_eq!(
        failed.history[0].message_id,
        "test-resubscribe-message-id-lease"
    );
    // The waiting task is untouched and still continues.
    let kept = client
        .get_task(pb::GetTaskRequest {
            id: waiting.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&kept), pb::TaskState::InputRequired as i32);
    let mut resume = message("tck-complete-task-lease", "go on");
    resume.message.as_mut().unwrap().task_id = waiting.id.clone();
    let done = task_of(client.send_message(resume).await.unwrap());
    assert_eq!(state(&done), pb::TaskState::Completed as i32);
    // The restarted replica counted the task it recovered.
    let metrics = reqwest::get(format!("http://{}/metrics", cfg.server.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "liquid_a2a_tasks_recovered_total 1"),
        "{metrics}"
    );
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_another_replica_sees_the_task_of_a_killed_replica_fail() {
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(db.url(), &nats.url(), &keys.auth, Profile::Tck);
    process_config(&mut cfg);
    let token = keys.token("acme");
    // Replica A is a process (so it can be killed), replica B runs in this test.
    let mut a = spawn_service(&cfg, dir.path()).await;
    let mut cfg_b = cfg.clone();
    cfg_b.server = cfg_b.server.ephemeral();
    let b = start(&cfg_b).await;
    let on_a =
        A2aClient::jsonrpc(format!("http://{}/a2a", cfg.server.http_addr)).with_bearer(&token);
    let on_b =
        A2aClient::http_json(format!("http://{}/a2a/rest", b.http_addr())).with_bearer(&token);

    let task = start_long_task(&on_a, "test-resubscribe-message-id-replicas").await;
    let mut stream = on_b
        .subscribe_to_task(pb::SubscribeToTaskRequest {
            id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The subscription stands (its first event is the task) before A dies.
    let head = stream.next().await.unwrap().unwrap();
    assert!(matches!(head.payload, Some(Payload::Task(_))), "{head:?}");
    a.kill();

    let events = drain(stream).await;
    let last = events.last().expect("the stream ended without an event");
    let Some(Payload::StatusUpdate(update)) = &last.payload else {
        panic!("the last event is a status update: {events:?}")
    };
    let status = update.status.as_ref().unwrap();
    assert_eq!(status.state, pb::TaskState::Failed as i32, "{events:?}");
    assert_eq!(
        status_text(status),
        Some(liquid_a2a_service::lease::REPLICA_STOPPED)
    );
    let t = on_b
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&t), pb::TaskState::Failed as i32);
    b.stop().await.unwrap();
}
