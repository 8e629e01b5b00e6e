//! REST for staging sandboxes under `/api/v1/sandbox` (the seed's twelve routes), behind the
//! auth layer. Every route works on the caller's tenant only (`Claims::tenant_id`); another
//! tenant's sandbox is `not_found`. Errors are `{"error":{"code","message","details"}}`.
//!
//! | method and path | scope | what |
//! |---|---|---|
//! | `POST /api/v1/sandbox` | write | create (honours `Idempotency-Key`) |
//! | `GET /api/v1/sandbox/{id}` | read | inspect (state, paths, container, A2A task) |
//! | `GET /api/v1/sandbox/{id}/diff` | read | added / modified / deleted files, unified diffs |
//! | `POST /api/v1/sandbox/{id}/apply` | write | write the changes to the source (`conflict` lists files) |
//! | `POST /api/v1/sandbox/{id}/discard` | write | drop the sandbox |
//! | `POST /api/v1/sandbox/{id}/rollback` | write | restore the source from the apply's backup |
//! | `PUT /api/v1/sandbox/{id}/container` | write | attach a container (records it; returns the host path) |
//! | `DELETE /api/v1/sandbox/{id}/container` | write | detach it |
//! | `PUT /api/v1/sandbox/{id}/a2a-task` | write | record the A2A task and its state |
//! | `GET /api/v1/sandbox/pending` | read | active sandboxes awaiting resume after a restart |
//! | `POST /api/v1/sandbox/{id}/resume` | write | resume one |
//! | `GET /api/v1/sandbox/audit` | read | the audit log, filtered, cursor-paginated |

use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use liquid_auth::Authenticated;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::error::CoworkError;
use crate::sandbox::{CreateSandbox, StagingSandboxes};
use crate::store::AuditFilter;

use super::{SCOPE_READ, SCOPE_WRITE, caller, idempotency_key, page_limit, parse, query};

/// The routes, to be mounted behind the auth layer.
pub fn routes(sandboxes: StagingSandboxes) -> Router {
    const P: &str = "/api/v1/sandbox";
    Router::new()
        .route(P, post(create))
        .route(&format!("{P}/pending"), get(pending))
        .route(&format!("{P}/audit"), get(audit))
        .route(&format!("{P}/{{id}}"), get(inspect))
        .route(&format!("{P}/{{id}}/diff"), get(diff))
        .route(&format!("{P}/{{id}}/apply"), post(apply))
        .route(&format!("{P}/{{id}}/discard"), post(discard))
        .route(&format!("{P}/{{id}}/rollback"), post(rollback))
        .route(&format!("{P}/{{id}}/container"), put(attach).delete(detach))
        .route(&format!("{P}/{{id}}/a2a-task"), put(a2a_task))
        .route(&format!("{P}/{{id}}/resume"), post(resume))
        .with_state(sandboxes)
}

fn sandbox_id(text: &str) -> Result<Uuid, CoworkError> {
    Uuid::parse_str(text).map_err(|_| {
        CoworkError::invalid(
            "id",
            format!("`{}` is not a sandbox id", crate::store::printable(text)),
        )
    })
}

async fn create(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let mut req: CreateSandbox = parse(&body)?;
    if let Some(key) = idempotency_key(&headers)? {
        req.idempotency_key = Some(key);
    }
    let view = s.create(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn inspect(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    Ok(Json(s.inspect(&caller, sandbox_id(&id)?).await?).into_response())
}

async fn diff(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    Ok(Json(s.diff(&caller, sandbox_id(&id)?).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    #[serde(default)]
    paths: Option<Vec<String>>,
}

async fn apply(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let req: ApplyBody = parse(&body)?;
    Ok(Json(s.apply(&caller, sandbox_id(&id)?, req.paths).await?).into_response())
}

async fn discard(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    Ok(Json(s.discard(&caller, sandbox_id(&id)?).await?).into_response())
}

async fn rollback(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    Ok(Json(s.rollback(&caller, sandbox_id(&id)?).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    container_id: String,
}

async fn attach(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let req: AttachBody = parse(&body)?;
    let view = s
        .attach_container(&caller, sandbox_id(&id)?, &req.container_id)
        .await?;
    Ok(Json(json!({
        "sandbox": view,
        "container_id": req.container_id,
        "host_path": view.row.work_path,
    }))
    .into_response())
}

async fn detach(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    Ok(Json(s.detach_container(&caller, sandbox_id(&id)?).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct A2aTaskBody {
    task_id: String,
    state: String,
}

async fn a2a_task(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let req: A2aTaskBody = parse(&body)?;
    let view = s
        .update_a2a_task(&caller, sandbox_id(&id)?, &req.task_id, &req.state)
        .await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn pending(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: PageQuery = query(&uri)?;
    let limit = page_limit(q.limit)?;
    let after = q.cursor.as_deref().map(sandbox_id).transpose()?;
    let views = s.pending(&caller, after, limit).await?;
    let next = (views.len() as i64 == limit)
        .then(|| views.last().map(|v| v.row.sandbox_id))
        .flatten();
    Ok(Json(json!({ "sandboxes": views, "next_cursor": next })).into_response())
}

async fn resume(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    Ok(Json(s.resume(&caller, sandbox_id(&id)?).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    sandbox_id: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn time(field: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, CoworkError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| CoworkError::invalid(field, "an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
    })
    .transpose()
}

async fn audit(
    State(s): State<StagingSandboxes>,
    auth: Authenticated,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: AuditQuery = query(&uri)?;
    let filter = AuditFilter {
        sandbox_id: q.sandbox_id.as_deref().map(sandbox_id).transpose()?,
        action: q.action,
        outcome: q.outcome,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
        after: q
            .cursor
            .as_deref()
            .map(|c| Uuid::parse_str(c).map_err(|_| CoworkError::invalid("cursor", "not a cursor")))
            .transpose()?,
        limit: page_limit(q.limit)?,
    };
    let entries = s.audit_log(&caller, &filter).await?;
    let next = (entries.len() as i64 == filter.limit)
        .then(|| entries.last().map(|e| e.audit_id))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_cursor": next })).into_response())
}
