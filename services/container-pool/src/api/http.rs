//! REST under `/api/v1/containers` (the gateway forwards `/api/v1/containers/...` here).
//!
//! | method and path | scope | what |
//! |---|---|---|
//! | `GET /status` | read | sizes per template and host, runtime (`docker` or the non-isolated `process`) |
//! | `GET /templates` | read | resolved templates |
//! | `PUT /templates/{name}` | admin | add or change a template (validated; stored) |
//! | `DELETE /templates/{name}` | admin | drop a stored template |
//! | `GET /config` | read | effective settings, secret values left out |
//! | `POST /config/validate` | admin | validate settings without applying them |
//! | `POST /runners/choose` | read | which runner a task would get, and why |
//! | `POST /claims` | admin | acquire (honours `Idempotency-Key`) |
//! | `GET /claims/{id}` | admin | a claim |
//! | `DELETE /claims/{id}` | admin | release |
//! | `POST /claims/{id}/exec` | admin | run argv (or one shell string with `shell`), collected output |
//! | `PUT /claims/{id}/archive?path=` | admin | unpack a tar body into a directory |
//! | `GET /claims/{id}/archive?path=` | admin | a path as a tar |
//! | `POST /claims/{id}/agent` | admin | run a coding agent; its events |

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use liquid_auth::Authenticated;
use liquid_kit::config::Validate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{SCOPE_ADMIN, SCOPE_READ};
use crate::config::{PoolSettings, TemplateConfig};
use crate::domain::agent_stream::AgentEvent;
use crate::domain::runner::RunnerKind;
use crate::error::PoolError;
use crate::pool::{AcquireRequest, ExecRequest, WarmPools};
use crate::runners::{self, AgentRun};
use crate::runtime::ExecChunk;

#[derive(Clone)]
struct AppState {
    pools: WarmPools,
}

/// The routes, to be mounted behind the auth layer.
pub fn routes(pools: WarmPools) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/templates", get(templates))
        .route(
            "/templates/{name}",
            put(put_template).delete(delete_template),
        )
        .route("/config", get(config))
        .route("/config/validate", post(validate_config))
        .route("/runners/choose", post(choose_runner))
        .route("/claims", post(acquire))
        .route("/claims/{id}", get(claim).delete(release))
        .route("/claims/{id}/exec", post(exec))
        .route("/claims/{id}/archive", put(put_archive).get(get_archive))
        .route("/claims/{id}/agent", post(agent))
        .with_state(AppState { pools });
    Router::new().nest("/api/v1/containers", api)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PoolError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| PoolError::invalid("body", e.to_string()))
}

fn claim_id(text: &str) -> Result<Uuid, PoolError> {
    Uuid::parse_str(text)
        .map_err(|_| PoolError::invalid("id", format!("`{text}` is not a claim id")))
}

async fn status(State(s): State<AppState>, auth: Authenticated) -> Result<Response, PoolError> {
    auth.require(SCOPE_READ)?;
    Ok(Json(s.pools.status()).into_response())
}

async fn templates(State(s): State<AppState>, auth: Authenticated) -> Result<Response, PoolError> {
    auth.require(SCOPE_READ)?;
    Ok(Json(json!({ "templates": s.pools.templates() })).into_response())
}

async fn put_template(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let config: TemplateConfig = parse(&body)?;
    let t = s.pools.put_template(&name, &config).await?;
    Ok(Json(t).into_response())
}

async fn delete_template(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    s.pools.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn config(State(s): State<AppState>, auth: Authenticated) -> Result<Response, PoolError> {
    auth.require(SCOPE_READ)?;
    let c = s.pools.settings();
    Ok(Json(json!({
        "pool": c.pool,
        "docker": c.docker,
        "templates": c.templates,
        "runners": c.runners,
        "secrets": {
            "names": s.pools.secrets().names(),
            "cache_ttl_secs": c.secrets.cache_ttl_secs,
            "vault": !c.secrets.vault.address.is_empty(),
            "aws": !c.secrets.aws.region.is_empty(),
        },
        "runtime": s.pools.runtime_kind(),
    }))
    .into_response())
}

async fn validate_config(auth: Authenticated, body: Bytes) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let settings: PoolSettings = parse(&body)?;
    match settings.validate() {
        Ok(()) => Ok(Json(json!({ "valid": true })).into_response()),
        Err(liquid_kit::config::ConfigError::Invalid { key, reason }) => {
            Err(PoolError::invalid(key, reason))
        }
        Err(e) => Err(PoolError::invalid("config", e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChooseBody {
    task: String,
    #[serde(default)]
    runner: Option<String>,
}

fn runner_kind(r: Option<&str>) -> Result<Option<RunnerKind>, PoolError> {
    match r {
        None | Some("") => Ok(None),
        Some(r) => RunnerKind::parse(r).map(Some).ok_or_else(|| {
            PoolError::invalid(
                "runner",
                format!("`{r}` is not one of claude, gemini, codex, platform"),
            )
        }),
    }
}

async fn choose_runner(
    State(s): State<AppState>,
    auth: Authenticated,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_READ)?;
    let b: ChooseBody = parse(&body)?;
    let run = AgentRun {
        task: b.task,
        runner: runner_kind(b.runner.as_deref())?,
        ..AgentRun::default()
    };
    Ok(Json(runners::choose(&s.pools.settings().runners, &run)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct AcquireBody {
    template: String,
    env: BTreeMap<String, String>,
    secrets: Vec<String>,
    workdir: String,
    timeout_ms: u64,
    staging_dir: Option<String>,
}

async fn acquire(
    State(s): State<AppState>,
    auth: Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let tenant = auth.tenant_id().to_owned();
    let b: AcquireBody = parse(&body)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| PoolError::invalid("Idempotency-Key", "must be printable ASCII"))?
                .to_owned(),
        ),
    };
    let (info, replayed) = s
        .pools
        .acquire_keyed(
            &tenant,
            AcquireRequest {
                template: b.template,
                env: b.env,
                secrets: b.secrets,
                workdir: b.workdir,
                timeout: Some(Duration::from_millis(b.timeout_ms)),
                staging_dir: b.staging_dir,
                idempotency_key,
            },
        )
        .await?;
    if replayed {
        return Ok((StatusCode::OK, Json(info)).into_response());
    }
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn claim(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let c = s.pools.claim(auth.tenant_id(), claim_id(&id)?).await?;
    Ok(Json(c).into_response())
}

async fn release(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    s.pools.release(auth.tenant_id(), claim_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ExecBody {
    argv: Vec<String>,
    shell: bool,
    env: BTreeMap<String, String>,
    workdir: String,
    timeout_ms: u64,
    stdin: String,
    usage: bool,
}

#[derive(Serialize)]
struct ExecResponse {
    exit_code: i64,
    timed_out: bool,
    duration_ms: u64,
    stdout: String,
    stderr: String,
    truncated: bool,
    memory_peak_bytes: Option<u64>,
    cpu_usec: Option<u64>,
    runtime: &'static str,
}

async fn exec(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let id = claim_id(&id)?;
    let b: ExecBody = parse(&body)?;
    let cap = s.pools.settings().pool.max_output_bytes;
    let (tx, mut rx) = mpsc::channel(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err, mut truncated) = (Vec::new(), Vec::new(), false);
        while let Some(c) = rx.recv().await {
            let room = cap.saturating_sub(out.len() + err.len());
            let (buf, bytes) = match c {
                ExecChunk::Stdout(b) => (&mut out, b),
                ExecChunk::Stderr(b) => (&mut err, b),
            };
            if room < bytes.len() {
                truncated = true;
            }
            // Keep reading past the cap so the command is not stopped for a slow reader.
            buf.extend_from_slice(&bytes[..room.min(bytes.len())]);
        }
        (out, err, truncated)
    });
    let runtime = s.pools.claim(auth.tenant_id(), id).await?.runtime.as_str();
    let outcome = s
        .pools
        .exec(
            auth.tenant_id(),
            id,
            ExecRequest {
                argv: b.argv,
                shell: b.shell,
                env: b.env,
                workdir: b.workdir,
                timeout: (b.timeout_ms > 0).then(|| Duration::from_millis(b.timeout_ms)),
                stdin: Bytes::from(b.stdin.into_bytes()),
                usage: b.usage,
            },
            tx,
        )
        .await?;
    let (out, err, truncated) = collect
        .await
        .map_err(|e| PoolError::io("collecting output", std::io::Error::other(e)))?;
    Ok(Json(ExecResponse {
        exit_code: outcome.exit_code,
        timed_out: outcome.timed_out,
        duration_ms: outcome.duration_ms,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated,
        memory_peak_bytes: outcome.memory_peak_bytes,
        cpu_usec: outcome.cpu_usec,
        runtime,
    })
    .into_response())
}

#[derive(Deserialize)]
struct PathQuery {
    #[serde(default)]
    path: String,
}

async fn put_archive(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    s.pools
        .put_archive(auth.tenant_id(), claim_id(&id)?, &q.path, body)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_archive(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let tar = s
        .pools
        .get_archive(auth.tenant_id(), claim_id(&id)?, &q.path)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct AgentBody {
    task: String,
    runner: Option<String>,
    model: Option<String>,
    timeout_ms: u64,
}

async fn agent(
    State(s): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PoolError> {
    auth.require(SCOPE_ADMIN)?;
    let id = claim_id(&id)?;
    let b: AgentBody = parse(&body)?;
    let run = AgentRun {
        task: b.task,
        runner: runner_kind(b.runner.as_deref())?,
        model: b.model.filter(|m| !m.is_empty()),
        timeout: (b.timeout_ms > 0).then(|| Duration::from_millis(b.timeout_ms)),
    };
    let (tx, mut rx) = mpsc::channel::<AgentEvent>(64);
    let collect = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    });
    let choice = runners::run_agent(&s.pools, auth.tenant_id(), id, run, tx).await?;
    let events: Vec<Value> = collect
        .await
        .map_err(|e| PoolError::io("collecting events", std::io::Error::other(e)))?
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    Ok(Json(json!({ "choice": choice, "events": events })).into_response())
}
