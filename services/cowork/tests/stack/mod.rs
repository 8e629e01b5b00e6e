//! The real stack of cowork's end-to-end tests: keys (and the service key file cowork signs
//! container-pool calls with), container-pool started in the test on Docker with the sandbox
//! root as its mount root, a local OpenAI-format model server, a workspace, and cowork itself
//! (in process, or as the `liquid-cowork` binary), plus a small REST client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_container_pool::config::{PoolSettings, RuntimeChoice, TemplateConfig};
use liquid_cowork::CoworkSettings;
use liquid_kit::RunningService;
use liquid_runtime::{Peer, ServiceConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "acme";

pub struct Keys {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub auth: AuthConfig,
    pub key_file: PathBuf,
}

pub fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let key_file = dir.path().join("service-key.pem");
    key.save(&key_file).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    Keys {
        dir,
        key,
        auth,
        key_file,
    }
}

impl Keys {
    pub fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        self.key
            .mint(
                &TokenRequest::user(&format!("{tenant}-user"), scopes.iter().copied())
                    .tenant(tenant)
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    }

    pub fn writer(&self) -> String {
        self.token(TENANT, &["cowork:read", "cowork:write"])
    }
}

/// A temporary tree: the tenant's workspace under `ws/acme/repo`, sandboxes under `sandboxes/`.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.tmp.path()).unwrap()
    }

    pub fn sandbox_root(&self) -> PathBuf {
        self.base().join("sandboxes")
    }

    pub fn workspace(&self, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.base().join("ws").join(TENANT).join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }
}

/// container-pool on Docker (Docker only: no fallback to the process runtime), in this
/// process, with `mount_root` bindable.
pub async fn start_pool(
    keys: &Keys,
    mount_root: &Path,
) -> (RunningService, String, tempfile::TempDir) {
    std::fs::create_dir_all(mount_root).unwrap();
    let mut s = PoolSettings::default();
    s.pool.runtime = RuntimeChoice::Docker;
    s.pool.name = format!("cw{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    s.pool.replenish_interval_ms = 200;
    s.pool.acquire_timeout_ms = 30_000;
    s.pool.heartbeat_secs = 2;
    s.pool.mount_roots = vec![mount_root.display().to_string()];
    s.templates.insert(
        "default".into(),
        TemplateConfig {
            min_idle: Some(0),
            max_total: Some(4),
            memory_mib: 128,
            pids_limit: 64,
            ..TemplateConfig::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServiceConfig::<PoolSettings>::defaults_for(&liquid_container_pool::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = format!("sqlite://{}/pool.db", dir.path().display());
    c.auth = keys.auth.clone();
    c.settings = s;
    let running =
        liquid_runtime::start::<liquid_container_pool::ContainerPool>(&c, CancellationToken::new())
            .await
            .unwrap();
    let grpc = format!("http://{}", running.grpc_addr().unwrap());
    (running, grpc, dir)
}

/// Cowork's settings for the stack: fast loops, the model server (when given) for planner and
/// agent, the service key.
pub fn settings(dirs: &Dirs, keys: &Keys, model_base_url: Option<&str>) -> CoworkSettings {
    let mut s = CoworkSettings::default();
    s.sandbox.root = dirs.sandbox_root().display().to_string();
    s.sandbox.workspace_roots = vec![dirs.base().join("ws/{tenant}").display().to_string()];
    s.executor.service_key_file = keys.key_file.display().to_string();
    s.executor.command_timeout_secs = 60;
    s.agents.heartbeat_interval_ms = 300;
    s.agents.heartbeat_timeout_ms = 2_000;
    s.agents.poll_interval_ms = 100;
    s.agents.stats_interval_ms = 500;
    s.agents.retry_base_ms = 100;
    s.agents.retry_cap_ms = 400;
    s.llm.retry.max_attempts = 1;
    if let Some(url) = model_base_url {
        let openai = s.llm.providers.get_mut("openai").unwrap();
        openai.api_key = liquid_kit::Secret::new("test-key".to_owned());
        openai.base_url = url.to_owned();
        s.planner.model = "gpt-4o-mini".into();
        s.executor.agent_model = "gpt-4o-mini".into();
    }
    s
}

pub fn config(
    db: &str,
    bus: &str,
    keys: &Keys,
    pool_grpc: &str,
    settings: CoworkSettings,
) -> ServiceConfig<CoworkSettings> {
    let mut c = ServiceConfig::<CoworkSettings>::defaults_for(&liquid_cowork::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.bus.url = bus.into();
    c.auth = keys.auth.clone();
    c.peers.insert(
        "container_pool".into(),
        Peer {
            http: "http://127.0.0.1:1".into(),
            grpc: pool_grpc.into(),
        },
    );
    c.settings = settings;
    c
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
}

impl Api {
    pub fn new(base: String, token: String) -> Api {
        Api {
            base,
            http: reqwest::Client::new(),
            token,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            _ => unreachable!(),
        }
        .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    pub async fn create_session(&self, workspace: &Path, request: &str, strategy: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                "/api/v1/cowork/sessions",
                Some(json!({"workspace": workspace, "request": request, "strategy": strategy})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["session_id"].as_str().unwrap().to_owned()
    }

    /// Polls the session until `pred` holds (the planner and the steps run in the background).
    pub async fn wait_session(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let v = self
                .ok("GET", &format!("/api/v1/cowork/sessions/{id}"), None)
                .await;
            if pred(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "session never reached {what}: {v}\nevents: {}",
                self.ok(
                    "GET",
                    &format!("/api/v1/cowork/sessions/{id}/events?limit=500"),
                    None
                )
                .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_session(id, state, |v| v["state"] == state).await
    }

    pub async fn event_types(&self, id: &str) -> Vec<String> {
        let v = self
            .ok(
                "GET",
                &format!("/api/v1/cowork/sessions/{id}/events?limit=500"),
                None,
            )
            .await;
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let v = self
            .ok(
                "GET",
                &format!("/api/v1/cowork/sessions/{id}/events?limit=500"),
                None,
            )
            .await;
        v["events"].as_array().unwrap().clone()
    }
}

pub fn diff_paths(diff: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A free loopback address.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `cfg` on free addresses, written as the `liquid-cowork` binary's config file:
/// `(config file, log file, http base URL)`.
pub fn process_config(
    cfg: &mut ServiceConfig<CoworkSettings>,
    dirs: &Dirs,
) -> (PathBuf, PathBuf, String) {
    cfg.server.http_addr = free_addr();
    cfg.server.grpc_addr = Some(free_addr());
    let config_file = dirs.base().join("cowork.toml");
    std::fs::write(&config_file, toml::to_string(&*cfg).unwrap()).unwrap();
    let log = dirs.base().join("cowork.log");
    (config_file, log, format!("http://{}", cfg.server.http_addr))
}

/// The `liquid-cowork` binary on `config`, its output appended to `log`.
pub fn spawn_cowork(config: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_liquid-cowork"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::from(out.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(out))
        .spawn()
        .unwrap()
}

/// Waits for the process's own `/healthz`; fails with its log.
pub async fn wait_healthy(base: &str, log: &Path) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "liquid-cowork did not come up: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A one-step session, approved, whose agent is inside a 30 s command when this returns (the
/// moment to kill the service); after a restart the agent writes `out.txt` and finishes.
pub async fn session_inside_a_long_command(
    api: &Api,
    model: &liquid_testkit::model_servers::ModelServer,
    ws: &Path,
) -> String {
    use liquid_testkit::model_servers::{CannedMessage, Reply};
    let call = |name: &str, args: Value| {
        Reply::Message(CannedMessage::text("").with_tool_call(name, args))
    };
    model.push(call(
        "submit_plan",
        json!({"steps": [{"id": "work", "title": "Do the work", "instructions": "Write out.txt."}]}),
    ));
    let id = api.create_session(ws, "Write out.txt", "sequential").await;
    api.wait_state(&id, "awaiting_approval").await;
    // The first agent starts a long command; the service dies under it.
    model.push(call("run_command", json!({"command": "sleep 30"})));
    model.push(call(
        "write_file",
        json!({"path": "out.txt", "content": "written after the restart\n"}),
    ));
    model.push(Reply::text("done"));
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let started = api.events(&id).await.iter().any(|e| {
            e["type"] == "subtask:progress"
                && e["data"]["kind"] == "tool_call"
                && e["data"]["tool"] == "run_command"
        });
        if started {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never started its command"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    id
}
