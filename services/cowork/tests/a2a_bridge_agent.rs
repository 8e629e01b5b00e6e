//! Cowork served as an A2A agent through the a2a service, end to end in one process: the a2a
//! service hosts `cowork` as a remote agent whose executor is cowork's gRPC server (calls
//! carry the a2a service's service token); container-pool runs the steps on Docker; the
//! offline planner and model do the work. An A2A client sends a request with its workspace:
//! the task asks for approval with INPUT_REQUIRED and the plan; an unclear answer asks again;
//! "approve" runs the session and the task completes with the diff as an artifact while the
//! changes wait in the staging sandbox. A second task is rejected with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::time::Duration;

use liquid_a2a::client::A2aClient;
use liquid_a2a::pb::{self, send_message_response};
use liquid_a2a_service::config::{A2aSettings, RemoteAgent};
use liquid_runtime::ServiceConfig;
use serde_json::{Value, json};
use stack::{Api, Dirs, TENANT, diff_paths, keys};
use tokio_util::sync::CancellationToken;

fn message(task: Option<&str>, text: &str, data: Option<Value>) -> pb::SendMessageRequest {
    let mut parts = vec![pb::Part {
        content: Some(pb::part::Content::Text(text.into())),
        ..Default::default()
    }];
    if let Some(d) = data {
        parts.push(pb::Part {
            content: Some(pb::part::Content::Data(serde_json::from_value(d).unwrap())),
            ..Default::default()
        });
    }
    pb::SendMessageRequest {
        message: Some(pb::Message {
            message_id: uuid::Uuid::now_v7().to_string(),
            task_id: task.unwrap_or_default().into(),
            role: pb::Role::User as i32,
            parts,
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

fn state(t: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(t.status.as_ref().unwrap().state).unwrap()
}

fn status_text(t: &pb::Task) -> String {
    t.status
        .as_ref()
        .and_then(|s| s.message.as_ref())
        .map(|m| {
            m.parts
                .iter()
                .filter_map(|p| match &p.content {
                    Some(pb::part::Content::Text(t)) => Some(t.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the task until it leaves `working`/`submitted`.
async fn settled(client: &A2aClient, id: &str) -> pb::Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let t = client
            .get_task(pb::GetTaskRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        if !matches!(state(&t), pb::TaskState::Working | pb::TaskState::Submitted) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never settled: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_a2a_client_gets_a_plan_to_approve_and_the_diff_of_the_finished_session() {
    // One deployment's keys: the a2a service mints its executor calls for the same issuer and
    // audience cowork verifies.
    let keys = keys();
    let mint = |scopes: &[&str]| keys.token(TENANT, scopes);
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "a2a repo\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, None),
    );
    let cowork = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();

    let mut a2a_cfg = ServiceConfig::<A2aSettings>::defaults_for(&liquid_a2a_service::SERVICE);
    a2a_cfg.server = a2a_cfg.server.ephemeral();
    a2a_cfg.database.url = format!("sqlite://{}/a2a.db", dirs.base().display());
    a2a_cfg.bus.url = "memory://".into();
    a2a_cfg.cache.url = "memory://".into();
    a2a_cfg.auth = keys.auth.clone();
    a2a_cfg.settings.a2a.service_key_file = keys.key_file.display().to_string();
    a2a_cfg.settings.a2a.remote_agents.insert(
        "cowork".into(),
        RemoteAgent {
            executor_url: format!("http://{}", cowork.grpc_addr().unwrap()),
            description: "plans and carries out deep work on a workspace".into(),
        },
    );
    let a2a = liquid_runtime::start::<liquid_a2a_service::A2a>(&a2a_cfg, CancellationToken::new())
        .await
        .unwrap();
    let token = mint(&["a2a:read", "a2a:write"]);
    let base = format!("http://{}/agents/cowork", a2a.http_addr());
    let card = A2aClient::fetch_card(&base).await.unwrap();
    assert_eq!(card.name, "cowork");
    let client = A2aClient::from_card(&card, &[liquid_a2a::Binding::JsonRpc])
        .unwrap()
        .with_bearer(&token);

    // A request → INPUT_REQUIRED with the plan.
    let request = "Write the docs.\n\
        - Write the notes\n\
        @tool write_file {\"path\": \"docs/notes.md\", \"content\": \"notes\\n\"}\n\
        - Write the changelog\n\
        @tool write_file {\"path\": \"CHANGELOG.md\", \"content\": \"v1\\n\"}\n";
    let t = task_of(
        client
            .send_message(message(
                None,
                request,
                Some(json!({"workspace": ws, "strategy": "parallel"})),
            ))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::InputRequired, "{t:?}");
    let question = status_text(&t);
    assert!(
        question.contains("Write the notes") && question.contains("Write the changelog"),
        "{question}"
    );
    assert!(question.contains("approve"), "{question}");
    let link = t
        .artifacts
        .iter()
        .find(|a| a.name == "cowork-session")
        .expect("session link");
    let link: Value = match &link.parts[0].content {
        Some(pb::part::Content::Data(d)) => serde_json::to_value(d).unwrap(),
        other => panic!("{other:?}"),
    };
    let session = link["session_id"].as_str().unwrap().to_owned();
    let api = Api::new(
        format!("http://{}", cowork.http_addr()),
        mint(&["cowork:read", "cowork:write"]),
    );
    let s = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{session}"), None)
        .await;
    assert_eq!(s["state"], "awaiting_approval");

    // An unclear answer asks again.
    let t = task_of(
        client
            .send_message(message(Some(&t.id), "what is step 2?", None))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::InputRequired, "{t:?}");
    assert_eq!(
        api.ok("GET", &format!("/api/v1/cowork/sessions/{session}"), None)
            .await["state"],
        "awaiting_approval"
    );

    // Approve → the session runs in containers and the task completes with the diff.
    let mut approve = message(Some(&t.id), "approve", None);
    approve.configuration = Some(pb::SendMessageConfiguration {
        return_immediately: true,
        ..Default::default()
    });
    let t = task_of(client.send_message(approve).await.unwrap());
    let t = settled(&client, &t.id).await;
    assert_eq!(
        state(&t),
        pb::TaskState::Completed,
        "{}: {t:?}",
        status_text(&t)
    );
    let diff = t
        .artifacts
        .iter()
        .find(|a| a.name == "diff")
        .expect("a diff artifact");
    let patch = diff
        .parts
        .iter()
        .find_map(|p| match &p.content {
            Some(pb::part::Content::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert!(patch.contains("+notes") && patch.contains("+v1"), "{patch}");
    let s = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{session}"), None)
        .await;
    assert_eq!(s["state"], "completed");
    let sandbox = s["sandbox_id"].as_str().unwrap();
    let d = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        diff_paths(&d),
        [
            ("CHANGELOG.md".to_owned(), "added".to_owned()),
            ("docs/notes.md".into(), "added".into()),
        ]
    );
    // The sandbox records the task and its last state.
    let sb = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}"), None)
        .await;
    assert_eq!(sb["a2a_task_id"], t.id.as_str(), "{sb}");
    assert!(
        sb["a2a_task_state"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("completed"),
        "{sb}"
    );
    // Nothing reached the source: the changes wait for a person.
    assert!(!ws.join("CHANGELOG.md").exists());

    // A second request, rejected with a reason.
    let t = task_of(
        client
            .send_message(message(
                None,
                "Write the licence file",
                Some(json!({"workspace": ws})),
            ))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::InputRequired, "{t:?}");
    let t = task_of(
        client
            .send_message(message(
                Some(&t.id),
                "",
                Some(json!({"decision": "reject", "reason": "not now"})),
            ))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::Rejected, "{t:?}");
    assert!(status_text(&t).contains("not now"));

    // Cancelling a task while its steps run cancels the session.
    let slow = "Wait a while.\n\
        - Wait\n\
        @tool run_command {\"command\": \"sleep 60\"}\n";
    let t = task_of(
        client
            .send_message(message(None, slow, Some(json!({"workspace": ws}))))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::InputRequired, "{t:?}");
    let mut approve = message(Some(&t.id), "approve", None);
    approve.configuration = Some(pb::SendMessageConfiguration {
        return_immediately: true,
        ..Default::default()
    });
    let t = task_of(client.send_message(approve).await.unwrap());
    let link = t
        .artifacts
        .iter()
        .find(|a| a.name == "cowork-session")
        .unwrap();
    let slow_session = match &link.parts[0].content {
        Some(pb::part::Content::Data(d)) => serde_json::to_value(d).unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        other => panic!("{other:?}"),
    };
    api.wait_session(&slow_session, "a running step", |v| {
        v["steps"]["running"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state(&cancelled), pb::TaskState::Canceled);
    api.wait_state(&slow_session, "cancelled").await;

    // A request without a workspace fails with the reason.
    let t = task_of(
        client
            .send_message(message(None, "Do something", None))
            .await
            .unwrap(),
    );
    let t = settled(&client, &t.id).await;
    assert_eq!(state(&t), pb::TaskState::Failed, "{t:?}");
    assert!(status_text(&t).contains("workspace"), "{}", status_text(&t));
}
