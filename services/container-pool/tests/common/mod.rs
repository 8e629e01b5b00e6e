//! Shared set-up of the container-pool service tests: keys and tokens, a configuration with a
//! pool name of the test's own (so parallel tests never touch each other's containers), the
//! running service on SQLite or Postgres, and small REST and Docker helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_container_pool::config::{PoolSettings, TemplateConfig};
use liquid_kit::RunningService;
use liquid_runtime::ServiceConfig;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Keys {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub auth: AuthConfig,
}

pub fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    Keys { dir, key, auth }
}

impl Keys {
    pub fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        self.key
            .mint(
                &TokenRequest::user(tenant, scopes.iter().copied())
                    .tenant(tenant)
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    }

    pub fn admin(&self, tenant: &str) -> String {
        self.token(tenant, &["containers:admin", "containers:read"])
    }
}

/// A pool name of this test's own.
pub fn pool_name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Settings for a small pool of the base image: `min_idle`, `max_total`, fast loops.
pub fn settings(min_idle: u32, max_total: u32) -> PoolSettings {
    let mut s = PoolSettings::default();
    s.pool.name = pool_name();
    s.pool.replenish_interval_ms = 100;
    s.pool.acquire_timeout_ms = 10_000;
    s.pool.heartbeat_secs = 2;
    s.templates.insert(
        "default".into(),
        TemplateConfig {
            min_idle: Some(min_idle),
            max_total: Some(max_total),
            memory_mib: 128,
            pids_limit: 64,
            ..TemplateConfig::default()
        },
    );
    s
}

pub struct Service {
    pub running: Option<RunningService>,
    pub base: String,
    pub grpc: String,
    pub http: reqwest::Client,
    pub pool: String,
    _db: tempfile::TempDir,
}

pub fn config(settings: PoolSettings, auth: &AuthConfig, db: &str) -> ServiceConfig<PoolSettings> {
    let mut c = ServiceConfig::<PoolSettings>::defaults_for(&liquid_container_pool::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.to_owned();
    c.auth = auth.clone();
    c.settings = settings;
    c
}

/// Starts the service on a SQLite file of its own.
pub async fn start(settings: PoolSettings, keys: &Keys) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/pool.db", dir.path().display());
    start_with(config(settings, &keys.auth, &db), dir).await
}

pub async fn start_with(cfg: ServiceConfig<PoolSettings>, dir: tempfile::TempDir) -> Service {
    let pool = cfg.settings.pool.name.clone();
    let running = liquid_runtime::start::<liquid_container_pool::ContainerPool>(
        &cfg,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let base = format!("http://{}/api/v1/containers", running.http_addr());
    let grpc = format!("http://{}", running.grpc_addr().unwrap());
    Service {
        running: Some(running),
        base,
        grpc,
        http: reqwest::Client::new(),
        pool,
        _db: dir,
    }
}

impl Service {
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Acquires and asserts success.
    pub async fn acquire(&self, token: &str, body: Value) -> Value {
        let (status, claim) = self.post(token, "/claims", body).await;
        assert_eq!(status, 201, "{claim}");
        claim
    }

    /// Runs argv in a claim and returns the exec answer.
    pub async fn exec(&self, token: &str, claim: &str, body: Value) -> Value {
        let (status, out) = self
            .post(token, &format!("/claims/{claim}/exec"), body)
            .await;
        assert_eq!(status, 200, "{out}");
        out
    }

    pub async fn sh(&self, token: &str, claim: &str, script: &str) -> Value {
        self.exec(token, claim, json!({"argv": [script], "shell": true}))
            .await
    }

    pub async fn release(&self, token: &str, claim: &str) {
        let (status, body) = self.delete(token, &format!("/claims/{claim}")).await;
        assert_eq!(status, 204, "{body}");
    }

    /// Waits until the template's status satisfies `f`.
    pub async fn wait_status(&self, token: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, s) = self.get(token, "/status").await;
            let t = s["templates"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["name"] == "default"))
                .cloned()
                .unwrap_or(Value::Null);
            if f(&t) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status never reached: {what}; last {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

pub async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Every container (running or not) labelled with pool `pool`, as id → labels.
pub async fn pool_containers(
    docker: &Docker,
    pool: &str,
) -> HashMap<String, HashMap<String, String>> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("io.liquid.pool={pool}")])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id.unwrap(), c.labels.unwrap_or_default()))
        .collect()
}

/// Runs a command in a container directly through Docker (not through the pool), as the pool
/// user, and returns its stdout.
pub async fn docker_exec(docker: &Docker, id: &str, script: &str) -> String {
    use futures_util::StreamExt;
    let exec = docker
        .create_exec(
            id,
            bollard::models::ExecConfig {
                cmd: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.unwrap()
    {
        while let Some(Ok(m)) = output.next().await {
            out.push_str(&m.to_string());
        }
    }
    out
}
