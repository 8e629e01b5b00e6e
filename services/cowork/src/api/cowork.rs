//! REST for deep-work sessions under `/api/v1/cowork`, behind the auth layer: thirteen routes.
//! `cowork:read` to look, `cowork:write` to change; everything is scoped to the token's tenant
//! (another tenant's session or agent is `not_found`). Errors are
//! `{"error":{"code","message","details"}}`.
//!
//! | method and path | scope | what |
//! |---|---|---|
//! | `POST /api/v1/cowork/sessions` | write | create (honours `Idempotency-Key`); planning starts |
//! | `GET /api/v1/cowork/sessions` | read | list, newest first (`state`, `cursor`, `limit`) |
//! | `GET /api/v1/cowork/sessions/{id}` | read | one session with its step counts |
//! | `POST /api/v1/cowork/sessions/{id}/{action}` | write | `cancel`, `pause`, `resume`, `replan` |
//! | `GET /api/v1/cowork/sessions/{id}/plan` | read | the plan under review or running (`version`) |
//! | `POST /api/v1/cowork/sessions/{id}/plan/{decision}` | write | `approve` (optionally an edited plan) or `reject` |
//! | `GET /api/v1/cowork/sessions/{id}/steps` | read | steps with state, runner, summary, error |
//! | `GET /api/v1/cowork/sessions/{id}/artifacts` | read | patches, files, logs (`step_id`, `content`) |
//! | `GET /api/v1/cowork/sessions/{id}/events` | read | the session's event log (`after`, `limit`) |
//! | `GET /api/v1/cowork/agents` | read | agents (`session_id`, `state`, `cursor`, `limit`) |
//! | `GET /api/v1/cowork/agents/{id}` | read | one agent |
//! | `GET /api/v1/cowork/queue` | read | queue sizes by priority, paused, waiting agents in claim order |
//! | `POST /api/v1/cowork/queue/{action}` | write | `pause`, `resume`, `reorder`, `spawn`, `terminate` |

use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use liquid_auth::Authenticated;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::plan::Plan;
use crate::domain::schedule::{AgentState, Priority, SessionState};
use crate::error::CoworkError;
use crate::manager::SpawnRequest;
use crate::sessions::{CoworkSessions, CreateSession};
use crate::store::printable;
use crate::store::sessions::{AgentSelector, rfc3339};

use super::{SCOPE_READ, SCOPE_WRITE, caller, idempotency_key, page_limit, parse, query};

/// The routes, to be mounted behind the auth layer.
pub fn routes(sessions: CoworkSessions) -> Router {
    const P: &str = "/api/v1/cowork";
    Router::new()
        .route(&format!("{P}/sessions"), post(create).get(list))
        .route(&format!("{P}/sessions/{{id}}"), get(get_session))
        .route(
            &format!("{P}/sessions/{{id}}/{{action}}"),
            post(session_action),
        )
        .route(&format!("{P}/sessions/{{id}}/plan"), get(get_plan))
        .route(
            &format!("{P}/sessions/{{id}}/plan/{{decision}}"),
            post(decide),
        )
        .route(&format!("{P}/sessions/{{id}}/steps"), get(steps))
        .route(&format!("{P}/sessions/{{id}}/artifacts"), get(artifacts))
        .route(&format!("{P}/sessions/{{id}}/events"), get(events))
        .route(&format!("{P}/agents"), get(agents))
        .route(&format!("{P}/agents/{{id}}"), get(agent))
        .route(&format!("{P}/queue"), get(queue))
        .route(&format!("{P}/queue/{{action}}"), post(queue_action))
        .with_state(sessions)
}

fn id_of(field: &str, text: &str) -> Result<Uuid, CoworkError> {
    Uuid::parse_str(text)
        .map_err(|_| CoworkError::invalid(field, format!("`{}` is not an id", printable(text))))
}

async fn create(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let mut req: CreateSession = parse(&body)?;
    if let Some(key) = idempotency_key(&headers)? {
        req.idempotency_key = Some(key);
    }
    let (view, created) = s.create(&caller, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: ListQuery = query(&uri)?;
    let state = q
        .state
        .as_deref()
        .map(|t| {
            SessionState::parse(t).ok_or_else(|| {
                CoworkError::invalid("state", "planning, awaiting_approval, running, paused, completed, failed, rejected or cancelled")
            })
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| id_of("cursor", c))
        .transpose()?;
    let limit = page_limit(q.limit)?;
    let sessions = s.list(&caller, state, before, limit).await?;
    let next = (sessions.len() as i64 == limit)
        .then(|| sessions.last().map(|v| v.session_id))
        .flatten();
    Ok(Json(json!({"sessions": sessions, "next_cursor": next})).into_response())
}

async fn get_session(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    Ok(Json(s.get(&caller, id_of("id", &id)?).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplanBody {
    feedback: Option<String>,
}

async fn session_action(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let id = id_of("id", &id)?;
    let view = match action.as_str() {
        "cancel" => s.cancel(&caller, id).await?,
        "pause" => s.pause(&caller, id).await?,
        "resume" => s.resume(&caller, id).await?,
        "replan" => {
            let b: ReplanBody = parse(&body)?;
            s.replan(&caller, id, b.feedback).await?
        }
        other => {
            return Err(CoworkError::not_found(
                "session action",
                format!("{} (use cancel, pause, resume or replan)", printable(other)),
            ));
        }
    };
    Ok(Json(view).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    version: Option<i32>,
}

async fn get_plan(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: PlanQuery = query(&uri)?;
    Ok(Json(s.plan(&caller, id_of("id", &id)?, q.version).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    plan: Option<Plan>,
    reason: Option<String>,
}

async fn decide(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path((id, decision)): Path<(String, String)>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let id = id_of("id", &id)?;
    let b: DecisionBody = parse(&body)?;
    let view = match decision.as_str() {
        "approve" => {
            if b.reason.is_some() {
                return Err(CoworkError::invalid(
                    "reason",
                    "only a rejection takes a reason",
                ));
            }
            s.approve(&caller, id, b.plan).await?
        }
        "reject" => {
            if b.plan.is_some() {
                return Err(CoworkError::invalid(
                    "plan",
                    "only an approval takes a plan",
                ));
            }
            s.reject(&caller, id, b.reason).await?
        }
        other => {
            return Err(CoworkError::not_found(
                "plan decision",
                format!("{} (use approve or reject)", printable(other)),
            ));
        }
    };
    Ok(Json(view).into_response())
}

async fn steps(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    Ok(Json(json!({"steps": s.steps(&caller, id_of("id", &id)?).await?})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactQuery {
    step_id: Option<String>,
    content: Option<bool>,
}

async fn artifacts(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let id = id_of("id", &id)?;
    let q: ArtifactQuery = query(&uri)?;
    let step = q
        .step_id
        .as_deref()
        .map(|t| id_of("step_id", t))
        .transpose()?;
    s.get(&caller, id).await?;
    let with_content = q.content.unwrap_or(true);
    let rows = s.store().artifacts(&caller.tenant, id, step).await?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|a| {
            let mut v = json!({
                "artifact_id": a.artifact_id, "step_id": a.step_id, "agent_id": a.agent_id,
                "kind": a.kind, "name": a.name, "media_type": a.media_type,
                "encoding": a.encoding, "size": a.size, "sha256": a.sha256,
                "truncated": a.truncated, "created_at": rfc3339(a.created_ms),
            });
            if with_content && let Value::Object(m) = &mut v {
                m.insert("content".into(), Value::String(a.content));
            }
            v
        })
        .collect();
    Ok(Json(json!({"artifacts": out})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn events(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let id = id_of("id", &id)?;
    let q: EventsQuery = query(&uri)?;
    let after = q.after.as_deref().map(|t| id_of("after", t)).transpose()?;
    let limit = page_limit(q.limit)?;
    s.get(&caller, id).await?;
    let rows = s.store().events(&caller.tenant, id, after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|e| e.event_id))
        .flatten();
    let out: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            json!({
                "event_id": e.event_id, "type": e.kind, "session_id": e.session_id,
                "time": rfc3339(e.at_ms),
                "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({"events": out, "next_cursor": next})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    session_id: Option<String>,
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn agents(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: AgentsQuery = query(&uri)?;
    let session = q
        .session_id
        .as_deref()
        .map(|t| id_of("session_id", t))
        .transpose()?;
    let state = q
        .state
        .as_deref()
        .map(|t| {
            AgentState::parse(t).ok_or_else(|| {
                CoworkError::invalid(
                    "state",
                    "queued, running, succeeded, failed, dead or terminated",
                )
            })
        })
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| id_of("cursor", c))
        .transpose()?;
    let limit = page_limit(q.limit)?;
    let agents = s.agents(&caller, session, state, after, limit).await?;
    let next = (agents.len() as i64 == limit)
        .then(|| agents.last().map(|a| a.agent_id))
        .flatten();
    Ok(Json(json!({"agents": agents, "next_cursor": next})).into_response())
}

async fn agent(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let id = id_of("id", &id)?;
    let a = s
        .store()
        .agent(&caller.tenant, id)
        .await?
        .ok_or_else(|| CoworkError::not_found("agent", id))?;
    Ok(Json(crate::sessions::AgentView::from(a)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    limit: Option<i64>,
}

async fn queue(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    uri: Uri,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_READ)?;
    let q: QueueQuery = query(&uri)?;
    let (counts, queued) = s.queue(&caller, page_limit(q.limit)?).await?;
    Ok(Json(json!({
        "queued": counts.queued, "running": counts.running, "paused": counts.paused,
        "queued_by_priority": counts.queued_by_priority,
        "order": "priority (critical > high > normal > low), then due time, then age",
        "agents": queued,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueBody {
    agent_id: Option<Uuid>,
    session_id: Option<Uuid>,
    #[serde(default)]
    all: bool,
    priority: Option<Priority>,
    agents: Option<Vec<SpawnRequest>>,
    reason: Option<String>,
}

fn selector(b: &QueueBody, allow_all: bool) -> Result<AgentSelector, CoworkError> {
    match (b.agent_id, b.session_id, b.all) {
        (Some(a), None, false) => Ok(AgentSelector::Agent(a)),
        (None, Some(s), false) => Ok(AgentSelector::Session(s)),
        (None, None, true) if allow_all => Ok(AgentSelector::All),
        _ => Err(CoworkError::invalid(
            "body",
            if allow_all {
                "exactly one of agent_id, session_id or \"all\": true"
            } else {
                "exactly one of agent_id or session_id"
            },
        )),
    }
}

async fn queue_action(
    State(s): State<CoworkSessions>,
    auth: Authenticated,
    Path(action): Path<String>,
    body: Body,
) -> Result<Response, CoworkError> {
    let caller = caller(&auth, SCOPE_WRITE)?;
    let b: QueueBody = parse(&body)?;
    let answer = match action.as_str() {
        "pause" | "resume" => {
            let c = s
                .set_queue_paused(&caller.tenant, action == "pause")
                .await?;
            json!({"paused": c.paused, "queued": c.queued, "running": c.running})
        }
        "reorder" => {
            let which = selector(&b, true)?;
            let p = b
                .priority
                .ok_or_else(|| CoworkError::invalid("priority", "critical, high, normal or low"))?;
            json!({"reordered": s.reprioritize(&caller.tenant, which, p).await?, "priority": p})
        }
        "spawn" => {
            let session = b.session_id.ok_or_else(|| {
                CoworkError::invalid("session_id", "the session to spawn agents in")
            })?;
            let agents = b.agents.ok_or_else(|| {
                CoworkError::invalid("agents", "a list of {\"step\", \"priority\"?}")
            })?;
            json!({"agents": s.spawn_batch(&caller, session, agents).await?})
        }
        "terminate" => {
            let which = selector(&b, true)?;
            let reason = b
                .reason
                .clone()
                .unwrap_or_else(|| format!("terminated by {}", caller.actor));
            json!({"terminated": s.terminate(&caller.tenant, which, &reason).await?})
        }
        other => {
            return Err(CoworkError::not_found(
                "queue action",
                format!(
                    "{} (use pause, resume, reorder, spawn or terminate)",
                    printable(other)
                ),
            ));
        }
    };
    Ok(Json(answer).into_response())
}
