//! Push notifications end to end: a webhook receiver on loopback (allowed only because the
//! service runs in the explicit test mode `push.allow_loopback`) hears every update of a task
//! with the configured Authorization and token header, and a notification answered with a 5xx
//! is sent again; the default policy refuses loopback webhooks; push config CRUD pages on all
//! three bindings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use liquid_a2a::A2aErrorKind;
use liquid_a2a::client::A2aClient;
use liquid_a2a::pb::{self, send_message_response};
use liquid_a2a_service::config::{A2aSettings, Profile};
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_kit::RunningService;
use liquid_runtime::ServiceConfig;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    hook: String,
    authorization: Option<String>,
    token: Option<String>,
    content_type: Option<String>,
    body: Value,
    /// What the receiver answered.
    status: u16,
}

#[derive(Clone)]
struct Receiver {
    tx: mpsc::UnboundedSender<Received>,
    /// Requests seen on the hook `flaky`: its first one is answered 503.
    flaky_seen: Arc<AtomicUsize>,
}

async fn hook(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let status = if name == "flaky" && r.flaky_seen.fetch_add(1, Ordering::SeqCst) == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let header = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let _ = r.tx.send(Received {
        hook: name,
        authorization: header("authorization"),
        token: header("x-a2a-notification-token"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status: status.as_u16(),
    });
    status
}

/// A webhook receiver on 127.0.0.1: its base URL and what it receives.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        tx,
        flaky_seen: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/hook/{name}", post(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

struct Service {
    _dir: tempfile::TempDir,
    key: SigningKey,
    running: RunningService,
}

async fn service(allow_loopback: bool) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let mut c = ServiceConfig::<A2aSettings>::defaults_for(&liquid_a2a_service::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = format!("sqlite://{}/a2a.db", dir.path().display());
    c.bus.url = "memory://".into();
    c.cache.url = "memory://".into();
    c.auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    c.settings.a2a.profile = Profile::Tck;
    c.settings.push.allow_loopback = allow_loopback;
    c.settings.push.backoff_ms = 10;
    c.settings.push.max_attempts = 3;
    let running = liquid_runtime::start::<liquid_a2a_service::A2a>(&c, CancellationToken::new())
        .await
        .unwrap();
    Service {
        _dir: dir,
        key,
        running,
    }
}

impl Service {
    fn token(&self) -> String {
        self.key
            .mint(
                &TokenRequest::user("alice", ["a2a:*"])
                    .tenant("acme")
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    }

    fn clients(&self) -> Vec<(&'static str, A2aClient)> {
        let token = self.token();
        let http = self.running.http_addr();
        vec![
            (
                "jsonrpc",
                A2aClient::jsonrpc(format!("http://{http}/a2a")).with_bearer(&token),
            ),
            (
                "rest",
                A2aClient::http_json(format!("http://{http}/a2a/rest")).with_bearer(&token),
            ),
            (
                "grpc",
                A2aClient::grpc(format!("http://{}", self.running.grpc_addr().unwrap()))
                    .unwrap()
                    .with_bearer(&token),
            ),
        ]
    }
}

fn message(id: &str, task_id: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        message: Some(pb::Message {
            message_id: id.into(),
            task_id: task_id.into(),
            role: pb::Role::User as i32,
            parts: vec![pb::Part {
                content: Some(pb::part::Content::Text("hi".into())),
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

fn push_config(
    url: &str,
    token: &str,
    scheme: &str,
    credentials: &str,
) -> pb::TaskPushNotificationConfig {
    pb::TaskPushNotificationConfig {
        url: url.into(),
        token: token.into(),
        authentication: Some(pb::AuthenticationInfo {
            scheme: scheme.into(),
            credentials: credentials.into(),
        }),
        ..Default::default()
    }
}

/// `(kind, state)` of a notification body (a ProtoJSON `StreamResponse`).
fn event(body: &Value) -> (String, String) {
    let state = |v: &Value| v["status"]["state"].as_str().unwrap_or_default().to_owned();
    if let Some(t) = body.get("task") {
        ("task".into(), state(t))
    } else if let Some(s) = body.get("statusUpdate") {
        ("status".into(), state(s))
    } else if body.get("artifactUpdate").is_some() {
        ("artifact".into(), String::new())
    } else {
        panic!("not a StreamResponse: {body}")
    }
}

fn is_completed(r: &Received) -> bool {
    r.status == 200 && event(&r.body) == ("status".into(), "TASK_STATE_COMPLETED".into())
}

#[tokio::test]
async fn every_update_reaches_the_webhook_with_its_credentials_and_5xx_is_retried() {
    let (hooks, mut rx) = receiver().await;
    let svc = service(true).await;
    let (_, client) = svc.clients().remove(0);
    // The first webhook comes with the message; the receiver answers its first POST with 503.
    let mut first = message("tck-input-required-push", "");
    first.configuration = Some(pb::SendMessageConfiguration {
        task_push_notification_config: Some(push_config(
            &format!("{hooks}/flaky"),
            "token-one",
            "Bearer",
            "secret-one",
        )),
        ..Default::default()
    });
    let task = task_of(client.send_message(first).await.unwrap());
    assert_eq!(
        task.status.as_ref().unwrap().state,
        pb::TaskState::InputRequired as i32
    );
    // The second is added while the task waits for input.
    let second = svc.clients().remove(1).1;
    let mut config = push_config(
        &format!("{hooks}/second"),
        "token-two",
        "Basic",
        "YWxpY2U6cHc=",
    );
    config.task_id = task.id.clone();
    let created = second
        .create_task_push_notification_config(config)
        .await
        .unwrap();
    assert!(!created.id.is_empty());
    let done = task_of(
        client
            .send_message(message("tck-complete-task-push", &task.id))
            .await
            .unwrap(),
    );
    assert_eq!(
        done.status.as_ref().unwrap().state,
        pb::TaskState::Completed as i32
    );

    // Wait (bounded, so a missing delivery fails instead of hanging) until both webhooks heard
    // the completion.
    let mut got: Vec<Received> = Vec::new();
    let wait = async {
        while !(got.iter().any(|r| r.hook == "flaky" && is_completed(r))
            && got.iter().any(|r| r.hook == "second" && is_completed(r)))
        {
            got.push(rx.recv().await.unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("deliveries missing; received so far: {got:#?}"));

    let flaky: Vec<&Received> = got.iter().filter(|r| r.hook == "flaky").collect();
    // The 503 was retried with the same notification.
    assert_eq!(flaky[0].status, 503);
    assert_eq!(flaky[1].status, 200);
    assert_eq!(flaky[0].body, flaky[1].body);
    for r in &flaky {
        assert_eq!(r.authorization.as_deref(), Some("Bearer secret-one"));
        assert_eq!(r.token.as_deref(), Some("token-one"));
        assert_eq!(r.content_type.as_deref(), Some("application/a2a+json"));
        let task_id = r.body.get("task").map_or_else(
            || {
                r.body
                    .as_object()
                    .and_then(|o| o.values().next())
                    .map(|v| v["taskId"].clone())
                    .unwrap()
            },
            |t| t["id"].clone(),
        );
        assert_eq!(task_id, Value::String(task.id.clone()));
    }
    // Every update, in order: the task as created, each status change up to the end.
    let delivered: Vec<(String, String)> = flaky
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| event(&r.body))
        .collect();
    let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        delivered,
        [
            s("task", "TASK_STATE_SUBMITTED"),
            s("status", "TASK_STATE_INPUT_REQUIRED"),
            s("status", "TASK_STATE_WORKING"),
            s("status", "TASK_STATE_COMPLETED"),
        ]
    );
    // The second webhook hears every update after it was added, with its own credentials. The
    // configs are read when a notification goes out, so it may also hear the update that was
    // still queued when it was added (here INPUT_REQUIRED, held back by the retry above): what
    // it hears is a tail of what the first one heard.
    let second: Vec<&Received> = got.iter().filter(|r| r.hook == "second").collect();
    let heard: Vec<(String, String)> = second.iter().map(|r| event(&r.body)).collect();
    assert!(
        heard.len() >= 2 && delivered.ends_with(&heard),
        "{heard:?} is not a tail of {delivered:?}"
    );
    for r in second {
        assert_eq!(r.authorization.as_deref(), Some("Basic YWxpY2U6cHc="));
        assert_eq!(r.token.as_deref(), Some("token-two"));
    }
    // The dashboard's series: deliveries and the retried 5xx attempt.
    let metrics = reqwest::get(format!("http://{}/metrics", svc.running.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
    };
    assert!(value("liquid_a2a_push_deliveries_total{result=\"delivered\"}") >= 6.0);
    assert!(value("liquid_a2a_push_attempts_total{outcome=\"server_error\"}") >= 1.0);
    assert!(value("liquid_a2a_task_transitions_total{state=\"TASK_STATE_COMPLETED\"}") >= 1.0);
    svc.running.stop().await.unwrap();
}

#[tokio::test]
async fn loopback_webhooks_are_refused_outside_the_test_mode() {
    let svc = service(false).await;
    for (name, client) in svc.clients() {
        let mut req = message(&format!("tck-input-required-{name}"), "");
        req.configuration = Some(pb::SendMessageConfiguration {
            task_push_notification_config: Some(push_config(
                "http://127.0.0.1:9/hook",
                "t",
                "Bearer",
                "x",
            )),
            ..Default::default()
        });
        let e = client.send_message(req).await.unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::InvalidParams, "{name}");
        let task = task_of(
            client
                .send_message(message(&format!("tck-input-required-ok-{name}"), ""))
                .await
                .unwrap(),
        );
        for url in [
            "http://localhost:8080/hook",
            "http://[::1]/hook",
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
        ] {
            let mut config = push_config(url, "t", "Bearer", "x");
            config.task_id = task.id.clone();
            let e = client
                .create_task_push_notification_config(config)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), A2aErrorKind::InvalidParams, "{name} {url}");
        }
    }
    svc.running.stop().await.unwrap();
}

#[tokio::test]
async fn push_configs_are_paged_and_managed_on_every_binding() {
    let svc = service(true).await;
    for (name, client) in svc.clients() {
        let task = task_of(
            client
                .send_message(message(&format!("tck-input-required-list-{name}"), ""))
                .await
                .unwrap(),
        );
        let mut created = Vec::new();
        for i in 0..5 {
            let mut config = push_config(
                &format!("http://127.0.0.1:9/hook/{i}"),
                &format!("t{i}"),
                "Bearer",
                "x",
            );
            config.task_id = task.id.clone();
            created.push(
                client
                    .create_task_push_notification_config(config)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let mut listed = Vec::new();
        let mut page_sizes = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
                    task_id: task.id.clone(),
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            page_sizes.push(page.configs.len());
            listed.extend(page.configs.into_iter().map(|c| c.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(page_sizes, [2, 2, 1], "{name}");
        let mut sorted = listed.clone();
        sorted.sort();
        let mut expected = created.clone();
        expected.sort();
        assert_eq!(sorted, expected, "{name}");
        // Without a page size every config comes in one page.
        let all = client
            .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
                task_id: task.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.configs.len(), 5, "{name}");
        assert!(all.next_page_token.is_empty(), "{name}");
        let e = client
            .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
                task_id: task.id.clone(),
                page_size: 2,
                page_token: "not-a-token".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::InvalidParams, "{name}");
        // Get and delete one; it is gone afterwards.
        let got = client
            .get_task_push_notification_config(pb::GetTaskPushNotificationConfigRequest {
                task_id: task.id.clone(),
                id: created[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(got.url, "http://127.0.0.1:9/hook/0", "{name}");
        assert_eq!(got.token, "t0", "{name}");
        client
            .delete_task_push_notification_config(pb::DeleteTaskPushNotificationConfigRequest {
                task_id: task.id.clone(),
                id: created[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let e = client
            .get_task_push_notification_config(pb::GetTaskPushNotificationConfigRequest {
                task_id: task.id.clone(),
                id: created[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), A2aErrorKind::TaskNotFound, "{name}");
        let left = client
            .list_task_push_notification_configs(pb::ListTaskPushNotificationConfigsRequest {
                task_id: task.id.clone(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.configs.len(), 4, "{name}");
    }
    svc.running.stop().await.unwrap();
}
