//! The gRPC client of container-pool (`liquid.container_pool.v1`), the peer
//! `peers.container_pool.grpc`: acquire a container with the session's sandbox mounted at the
//! staging mount, run commands (Exec, output streamed), run a coding CLI (RunAgent), release.
//!
//! Every call carries a service token of cowork for the session's tenant (scope
//! `containers:exec`, minted with `executor.service_key_file` under the issuer and audience this
//! service verifies, cached until near expiry) in `authorization`, and the current span's W3C
//! trace context, so a step is one trace across both services. Errors keep the pool's stable
//! code (`x-liquid-error-code`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use liquid_auth::{ServiceTokenSource, SigningKey, TokenRequest};
use liquid_kit::ErrorCode;
use liquid_kit::telemetry::MetadataCarrier;
use liquid_proto::container_pool::v1 as pb;
use pb::container_pool_service_client::ContainerPoolServiceClient;
use tonic::transport::Channel;

use crate::error::CoworkError;

/// The scope cowork's service tokens carry.
pub const SCOPE_EXEC: &str = "containers:exec";

/// Mints cowork's service tokens, one cached source per tenant.
pub struct ServiceTokens {
    key: Arc<SigningKey>,
    issuer: String,
    audiences: Vec<String>,
    by_tenant: Mutex<HashMap<String, ServiceTokenSource>>,
}

impl ServiceTokens {
    /// Tokens signed with `key` for `issuer` and `audiences`.
    pub fn new(key: SigningKey, issuer: &str, audiences: &[String]) -> Self {
        ServiceTokens {
            key: Arc::new(key),
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            by_tenant: Mutex::new(HashMap::new()),
        }
    }

    fn source(&self, tenant: &str) -> ServiceTokenSource {
        let mut map = match self.by_tenant.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry(tenant.to_owned())
            .or_insert_with(|| {
                ServiceTokenSource::new(
                    self.key.clone(),
                    TokenRequest::service("cowork", [SCOPE_EXEC])
                        .tenant(tenant)
                        .issuer(&self.issuer)
                        .audiences(self.audiences.iter().cloned())
                        .ttl(Duration::from_secs(900)),
                )
            })
            .clone()
    }
}

/// A claimed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claim id.
    pub id: String,
    /// The Docker container id.
    pub container_id: String,
    /// `docker` or `process` (not isolated).
    pub runtime: String,
    /// The Docker host.
    pub host: String,
}

/// What a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Standard output (cut at the limit).
    pub stdout: Vec<u8>,
    /// Standard error (cut at the limit).
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i64,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
}

/// The client.
#[derive(Clone)]
pub struct PoolClient {
    client: ContainerPoolServiceClient<Channel>,
    tokens: Arc<ServiceTokens>,
}

fn status_error(status: &tonic::Status) -> CoworkError {
    let code = status
        .metadata()
        .get(liquid_kit::error::GRPC_ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or(match status.code() {
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::ResourceExhausted => ErrorCode::RateLimited,
            tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            _ => ErrorCode::Unavailable,
        });
    CoworkError::Pool {
        code,
        message: status.message().to_owned(),
    }
}

impl PoolClient {
    /// A client of the pool at `grpc_url` (connected lazily, on first use).
    pub fn new(grpc_url: &str, tokens: Arc<ServiceTokens>) -> Result<PoolClient, CoworkError> {
        let endpoint = tonic::transport::Endpoint::from_shared(grpc_url.to_owned())
            .map_err(|e| {
                CoworkError::ExecutorUnavailable(format!(
                    "peers.container_pool.grpc `{grpc_url}` is not a URL: {e}"
                ))
            })?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        Ok(PoolClient {
            client: ContainerPoolServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
            tokens,
        })
    }

    fn request<T>(&self, tenant: &str, body: T) -> Result<tonic::Request<T>, CoworkError> {
        let mut req = tonic::Request::new(body);
        let token = self
            .tokens
            .source(tenant)
            .token()
            .map_err(|e| CoworkError::ExecutorUnavailable(format!("service token: {e}")))?;
        token
            .apply_to_metadata(req.metadata_mut())
            .map_err(|e| CoworkError::ExecutorUnavailable(format!("service token: {e}")))?;
        liquid_kit::telemetry::inject_context(&mut MetadataCarrier(req.metadata_mut()));
        Ok(req)
    }

    /// Claims a fresh container of `template` with `staging_dir` bound at the staging mount
    /// and `workdir` as the working directory of execs. `idempotency_key` names one attempt
    /// of one step: a retried call with the same key gets the same claim instead of a second
    /// container.
    pub async fn acquire(
        &self,
        tenant: &str,
        idempotency_key: &str,
        template: &str,
        staging_dir: &str,
        workdir: &str,
        env: HashMap<String, String>,
    ) -> Result<Claim, CoworkError> {
        let req = self.request(
            tenant,
            pb::AcquireRequest {
                template: template.to_owned(),
                env,
                secrets: Vec::new(),
                workdir: workdir.to_owned(),
                timeout_ms: 60_000,
                staging_dir: staging_dir.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
            },
        )?;
        let claim = self
            .client
            .clone()
            .acquire(req)
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        Ok(Claim {
            id: claim.id,
            container_id: claim.container_id,
            runtime: claim.runtime,
            host: claim.host,
        })
    }

    /// Hands a container back (it is reset or replaced before anyone else gets it).
    pub async fn release(&self, tenant: &str, claim_id: &str) -> Result<(), CoworkError> {
        let req = self.request(
            tenant,
            pb::ReleaseRequest {
                claim_id: claim_id.to_owned(),
            },
        )?;
        self.client
            .clone()
            .release(req)
            .await
            .map_err(|s| status_error(&s))?;
        Ok(())
    }

    /// Runs `command` with `/bin/sh -c` in the claim's working directory; keeps up to
    /// `max_output` bytes of each stream; calls `on_output` with every chunk as it arrives.
    pub async fn exec_shell(
        &self,
        tenant: &str,
        claim_id: &str,
        command: &str,
        timeout: Duration,
        max_output: usize,
        mut on_output: impl FnMut(&[u8]) + Send,
    ) -> Result<ExecOutcome, CoworkError> {
        let req = self.request(
            tenant,
            pb::ExecRequest {
                claim_id: claim_id.to_owned(),
                argv: vec![command.to_owned()],
                shell: true,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                ..pb::ExecRequest::default()
            },
        )?;
        let mut stream = self
            .client
            .clone()
            .exec(req)
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        let mut out = ExecOutcome::default();
        let keep = |buf: &mut Vec<u8>, chunk: &[u8], truncated: &mut bool| {
            let room = max_output.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                *truncated = true;
            }
        };
        let mut exited = false;
        while let Some(ev) = stream.message().await.map_err(|s| status_error(&s))? {
            match ev.event {
                Some(pb::exec_event::Event::Stdout(b)) => {
                    on_output(&b);
                    keep(&mut out.stdout, &b, &mut out.truncated);
                }
                Some(pb::exec_event::Event::Stderr(b)) => {
                    on_output(&b);
                    keep(&mut out.stderr, &b, &mut out.truncated);
                }
                Some(pb::exec_event::Event::Exit(x)) => {
                    out.exit_code = x.exit_code;
                    out.timed_out = x.timed_out;
                    exited = true;
                }
                None => {}
            }
        }
        if !exited {
            return Err(CoworkError::Pool {
                code: ErrorCode::Unavailable,
                message: "the exec stream ended without an exit".into(),
            });
        }
        Ok(out)
    }

    /// Asks the pool's task analyzer for a coding CLI and runs it on `task`. `Ok(None)` when
    /// the analyzer picks the platform's own agent (no CLI available for the task): the
    /// built-in agent runs instead.
    pub async fn run_agent(
        &self,
        tenant: &str,
        claim_id: &str,
        task: &str,
        timeout: Duration,
    ) -> Result<Option<tonic::Streaming<pb::AgentEvent>>, CoworkError> {
        let req = self.request(
            tenant,
            pb::RunAgentRequest {
                claim_id: claim_id.to_owned(),
                task: task.to_owned(),
                runner: String::new(),
                model: String::new(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
        )?;
        match self.client.clone().run_agent(req).await {
            Ok(stream) => Ok(Some(stream.into_inner())),
            // The pool refuses before streaming when its analyzer picks the platform agent.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::info!(
                    reason = s.message(),
                    "no coding cli for the step; the built-in agent runs it"
                );
                Ok(None)
            }
            Err(s) => Err(status_error(&s)),
        }
    }
}
