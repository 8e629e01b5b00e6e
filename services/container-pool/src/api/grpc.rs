//! `liquid.container_pool.v1.ContainerPoolService`: the contract cowork and healer call with
//! service tokens (scope `containers:exec`; status needs `containers:read`). Exec and agent
//! runs stream; the stream ends with the exit (or the agent's final event). A caller that
//! hangs up stops its command.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use liquid_auth::{AuthInterceptor, Verifier, require_scope};
use liquid_proto::container_pool::v1 as pb;
use pb::container_pool_service_server::{ContainerPoolService, ContainerPoolServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{SCOPE_EXEC, SCOPE_READ};
use crate::domain::runner::RunnerKind;
use crate::error::PoolError;
use crate::pool::{AcquireRequest, ClaimInfo, ExecRequest, WarmPools};
use crate::runners::{self, AgentRun};
use crate::runtime::ExecChunk;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct PoolGrpc {
    pools: WarmPools,
}

/// The tonic service with its auth interceptor.
pub type GrpcService = tonic::service::interceptor::InterceptedService<
    ContainerPoolServiceServer<PoolGrpc>,
    AuthInterceptor,
>;

/// The service with its auth interceptor, ready for `tonic::service::Routes`.
pub fn service(pools: WarmPools, verifier: Arc<Verifier>) -> GrpcService {
    ContainerPoolServiceServer::with_interceptor(PoolGrpc { pools }, AuthInterceptor::new(verifier))
}

fn claim_id(text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text)
        .map_err(|_| PoolError::invalid("claim_id", format!("`{text}` is not a claim id")).into())
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn to_pb(c: ClaimInfo) -> pb::Claim {
    pb::Claim {
        id: c.id.to_string(),
        template: c.template,
        container_id: c.container_id,
        host: c.host,
        runtime: c.runtime.as_str().to_owned(),
        acquired_at: c
            .acquired_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        served: c.served,
        secrets_dir: c.secrets_dir,
        workdir: c.workdir,
    }
}

#[tonic::async_trait]
impl ContainerPoolService for PoolGrpc {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let r = request.into_inner();
        let info = self
            .pools
            .acquire(
                &tenant,
                AcquireRequest {
                    template: r.template,
                    env: r.env.into_iter().collect(),
                    secrets: r.secrets,
                    workdir: r.workdir,
                    timeout: ms(r.timeout_ms),
                    staging_dir: (!r.staging_dir.is_empty()).then_some(r.staging_dir),
                    idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
                },
            )
            .await?;
        Ok(Response::new(to_pb(info)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let id = claim_id(&request.get_ref().claim_id)?;
        self.pools.release(&tenant, id).await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    type ExecStream = EventStream<pb::ExecEvent>;

    async fn exec(
        &self,
        request: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let r = request.into_inner();
        let id = claim_id(&r.claim_id)?;
        // Fail fast on a claim that is not the caller's, before the stream starts.
        self.pools.claim(&tenant, id).await?;
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::ExecEvent, Status>>(64);
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<ExecChunk>(64);
        let forward_tx = out_tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(c) = chunk_rx.recv().await {
                let event = match c {
                    ExecChunk::Stdout(b) => pb::exec_event::Event::Stdout(b.to_vec()),
                    ExecChunk::Stderr(b) => pb::exec_event::Event::Stderr(b.to_vec()),
                };
                if forward_tx
                    .send(Ok(pb::ExecEvent { event: Some(event) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let pools = self.pools.clone();
        tokio::spawn(async move {
            let result = pools
                .exec(
                    &tenant,
                    id,
                    ExecRequest {
                        argv: r.argv,
                        shell: r.shell,
                        env: r.env.into_iter().collect(),
                        workdir: r.workdir,
                        timeout: ms(r.timeout_ms),
                        stdin: Bytes::from(r.stdin),
                        usage: r.usage,
                    },
                    chunk_tx,
                )
                .await;
            let _ = forward.await;
            let last = match result {
                Ok(o) => Ok(pb::ExecEvent {
                    event: Some(pb::exec_event::Event::Exit(pb::ExecExit {
                        exit_code: o.exit_code,
                        timed_out: o.timed_out,
                        duration_ms: o.duration_ms,
                        memory_peak_bytes: o.memory_peak_bytes.unwrap_or(0),
                        cpu_usec: o.cpu_usec.unwrap_or(0),
                    })),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = out_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn put_archive(
        &self,
        request: Request<pb::PutArchiveRequest>,
    ) -> Result<Response<pb::PutArchiveResponse>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let r = request.into_inner();
        self.pools
            .put_archive(&tenant, claim_id(&r.claim_id)?, &r.path, Bytes::from(r.tar))
            .await?;
        Ok(Response::new(pb::PutArchiveResponse {}))
    }

    async fn get_archive(
        &self,
        request: Request<pb::GetArchiveRequest>,
    ) -> Result<Response<pb::GetArchiveResponse>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let r = request.into_inner();
        let tar = self
            .pools
            .get_archive(&tenant, claim_id(&r.claim_id)?, &r.path)
            .await?;
        Ok(Response::new(pb::GetArchiveResponse { tar: tar.to_vec() }))
    }

    type RunAgentStream = EventStream<pb::AgentEvent>;

    async fn run_agent(
        &self,
        request: Request<pb::RunAgentRequest>,
    ) -> Result<Response<Self::RunAgentStream>, Status> {
        let tenant = require_scope(&request, SCOPE_EXEC)?.tenant_id().to_owned();
        let r = request.into_inner();
        let id = claim_id(&r.claim_id)?;
        let runner = match r.runner.as_str() {
            "" => None,
            other => Some(RunnerKind::parse(other).ok_or_else(|| {
                Status::from(PoolError::invalid(
                    "runner",
                    format!("`{other}` is not one of claude, gemini, codex, platform"),
                ))
            })?),
        };
        let run = AgentRun {
            task: r.task,
            runner,
            model: (!r.model.is_empty()).then_some(r.model),
            timeout: ms(r.timeout_ms),
        };
        // Decide (and refuse) before streaming.
        let choice = runners::choose(&self.pools.settings().runners, &run);
        if choice.runner == RunnerKind::Platform {
            return Err(PoolError::FailedPrecondition(format!(
                "{}; run it through cowork, or list a cli in runners.available",
                choice.reason
            ))
            .into());
        }
        self.pools.claim(&tenant, id).await?;
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::AgentEvent, Status>>(64);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let forward_tx = out_tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(e) = ev_rx.recv().await {
                let e: crate::domain::agent_stream::AgentEvent = e;
                let msg = pb::AgentEvent {
                    kind: e.kind.as_str().to_owned(),
                    runner: e.runner.as_str().to_owned(),
                    text: e.text,
                    tool: e.tool,
                    json: e.json.to_string(),
                };
                if forward_tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        let pools = self.pools.clone();
        tokio::spawn(async move {
            let result = runners::run_agent(&pools, &tenant, id, run, ev_tx).await;
            let _ = forward.await;
            if let Err(e) = result {
                let _ = out_tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::PoolStatus>, Status> {
        require_scope(&request, SCOPE_READ)?;
        let s = self.pools.status();
        Ok(Response::new(pb::PoolStatus {
            runtime: s.runtime.as_str().to_owned(),
            templates: s
                .templates
                .into_iter()
                .map(|t| pb::TemplateStatus {
                    name: t.name,
                    idle: t.counts.idle,
                    busy: t.counts.busy,
                    creating: t.counts.creating,
                    waiting: t.counts.waiting,
                    min_idle: t.min_idle,
                    max_total: t.max_total,
                })
                .collect(),
            hosts: s
                .hosts
                .into_iter()
                .map(|h| pb::HostStatus {
                    name: h.name,
                    healthy: h.healthy,
                    enabled: h.enabled,
                    containers: h.containers,
                    capacity: h.capacity,
                })
                .collect(),
        }))
    }
}
