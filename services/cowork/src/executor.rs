//! Runs one agent's step for real: a fresh container from container-pool with the session's
//! staging sandbox mounted as its working directory, then either the coding CLI the pool's
//! task analyzer picks (RunAgent, its events streamed) or, when it picks none, the built-in
//! model agent ([`crate::agent`]). Output streams as `subtask:progress`; afterwards the step's
//! artifacts are kept — the patch of the files that changed while it ran (from the sandbox
//! diff), the files it was expected to produce, and the log — and the container is released.
//! Cancellation (terminate, session cancel, lost lease) drops the streams, which stops the
//! command in the container, and releases it. A step either ran and produced artifacts, or
//! fails with the reason.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::StepContext;
use crate::domain::plan::PlanStep;
use crate::error::CoworkError;
use crate::events::EventKind;
use crate::permission::AgentContext;
use crate::sandbox::Caller;
use crate::sessions::CoworkSessions;
use crate::store::sessions::{AgentRow, ArtifactRow, now_ms};

/// What a finished step reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepResult {
    /// `platform` or the CLI.
    pub runner: String,
    /// The agent's closing words.
    pub summary: String,
    /// Files that changed while it ran.
    pub changed: Vec<String>,
    /// Artifacts kept.
    pub artifacts: usize,
    /// Container changes the permission pipeline denied and took back.
    pub reverted: Vec<String>,
}

pub(crate) type Snapshot = BTreeMap<String, (String, Option<String>)>;

/// Path → (change, hash after) of a diff, to tell what changed between two diffs.
pub(crate) fn snapshot(report: &crate::sandbox::DiffReport) -> Snapshot {
    report
        .changes
        .iter()
        .map(|c| {
            (
                c.path.clone(),
                (format!("{:?}", c.change), c.sha256_after.clone()),
            )
        })
        .collect()
}

/// The paths that changed between `before` and `after_report`, and their unified patch.
pub(crate) fn changes_since(
    before: &Snapshot,
    after_report: &crate::sandbox::DiffReport,
) -> (Vec<String>, String) {
    let after = snapshot(after_report);
    let changed: Vec<String> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    let mut patch = String::new();
    for c in after_report
        .changes
        .iter()
        .filter(|c| changed.contains(&c.path))
    {
        match &c.diff {
            Some(d) => patch.push_str(d),
            None => patch.push_str(&format!(
                "Binary or large file {} {:?} (sha256 {} -> {})\n",
                c.path,
                c.change,
                c.sha256_before.as_deref().unwrap_or("-"),
                c.sha256_after.as_deref().unwrap_or("-")
            )),
        }
    }
    (changed, patch)
}

impl CoworkSessions {
    /// An artifact row of `agent`'s step (text kept as UTF-8, anything else as base64, cut at
    /// `executor.max_artifact_bytes`).
    pub(crate) fn artifact(
        &self,
        agent: &AgentRow,
        kind: &str,
        name: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> ArtifactRow {
        let max = self.inner.settings.executor.max_artifact_bytes;
        let sha = hex::encode(Sha256::digest(bytes));
        let (encoding, mut content, truncated) = match std::str::from_utf8(bytes) {
            Ok(text) => {
                let mut end = text.len().min(max);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                ("utf-8", text[..end].to_owned(), end < text.len())
            }
            Err(_) => {
                use base64::Engine as _;
                let cut = &bytes[..bytes.len().min(max)];
                (
                    "base64",
                    base64::engine::general_purpose::STANDARD.encode(cut),
                    cut.len() < bytes.len(),
                )
            }
        };
        if truncated && encoding == "utf-8" {
            content.push_str("\n… (cut at executor.max_artifact_bytes)\n");
        }
        ArtifactRow {
            artifact_id: Uuid::now_v7(),
            tenant: agent.tenant.clone(),
            session_id: agent.session_id,
            step_id: agent.step_id,
            agent_id: agent.agent_id,
            kind: kind.into(),
            name: name.into(),
            media_type: if encoding == "base64" {
                "application/octet-stream".into()
            } else {
                media_type.into()
            },
            encoding: encoding.into(),
            size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            sha256: sha,
            content,
            truncated,
            created_ms: now_ms(),
        }
    }

    /// Runs `agent`'s step; see the module documentation.
    pub(crate) async fn run_step(
        &self,
        agent: &AgentRow,
        cancel: &CancellationToken,
    ) -> Result<StepResult, CoworkError> {
        let timeout = Duration::from_secs(self.inner.settings.executor.step_timeout_secs);
        match tokio::time::timeout(timeout, self.run_step_inner(agent, cancel)).await {
            Ok(r) => r,
            Err(_) => Err(CoworkError::FailedPrecondition(format!(
                "the step ran longer than executor.step_timeout_secs ({}s)",
                timeout.as_secs()
            ))),
        }
    }

    async fn run_step_inner(
        &self,
        agent: &AgentRow,
        cancel: &CancellationToken,
    ) -> Result<StepResult, CoworkError> {
        let inner = &self.inner;
        let session = inner
            .store
            .session(&agent.tenant, agent.session_id)
            .await?
            .ok_or_else(|| CoworkError::not_found("session", agent.session_id))?;
        let step = inner
            .store
            .step(&agent.tenant, agent.step_id)
            .await?
            .ok_or_else(|| CoworkError::not_found("step", agent.step_id))?;
        let plan_step: PlanStep =
            serde_json::from_str(&step.body).map_err(|e| CoworkError::Corrupt(e.to_string()))?;
        let caller = Caller {
            tenant: agent.tenant.clone(),
            actor: format!("agent:{}", agent.agent_id),
        };
        inner
            .events
            .emit(
                &agent.tenant,
                agent.session_id,
                EventKind::SubtaskStarted,
                json!({
                    "step_id": agent.step_id, "key": step.plan_key, "title": plan_step.title,
                    "agent_id": agent.agent_id, "attempt": agent.attempt, "domain": agent.domain,
                    "worker": inner.worker,
                }),
            )
            .await;
        // A step a remote A2A agent's skill matches runs there, not in a container.
        if let Some((remote, skill)) = crate::bridge::directory::agent_for_step(
            &inner.settings.a2a,
            &agent.domain,
            &plan_step.title,
        )
        .await
        {
            return self
                .run_delegated(
                    agent,
                    session.sandbox_id,
                    &plan_step,
                    remote,
                    &skill,
                    cancel,
                )
                .await;
        }
        let pool = inner
            .pool
            .as_ref()
            .map_err(|why| CoworkError::ExecutorUnavailable(why.clone()))?
            .clone();
        let sandbox = inner
            .sandboxes
            .prepare_for_containers(&caller, session.sandbox_id)
            .await?;
        let before = snapshot(&inner.sandboxes.diff(&caller, session.sandbox_id).await?);

        // Progress: a channel drained in order into `subtask:progress` events.
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let forward = {
            let events = inner.events.clone();
            let (tenant, session_id, step_id, agent_id) = (
                agent.tenant.clone(),
                agent.session_id,
                agent.step_id,
                agent.agent_id,
            );
            tokio::spawn(async move {
                while let Some(v) = prx.recv().await {
                    let mut data = json!({"step_id": step_id, "agent_id": agent_id});
                    if let (Value::Object(d), Value::Object(m)) = (&mut data, v) {
                        d.extend(m);
                    }
                    events
                        .emit(&tenant, session_id, EventKind::SubtaskProgress, data)
                        .await;
                }
            })
        };
        let progress = move |v: Value| {
            let _ = ptx.send(v);
        };

        // Every change the container makes to the mounted work copy goes through the
        // permission pipeline when the container is done with it (see `permission::window`).
        let ctx = AgentContext {
            tenant: agent.tenant.clone(),
            session_id: agent.session_id,
            agent: agent.domain.clone(),
        };
        let window = inner.gate.open_window(&ctx, session.sandbox_id).await?;
        let ran = self
            .contained(
                agent,
                &plan_step,
                &step.plan_key,
                &pool,
                &sandbox.work_path,
                cancel,
                &progress,
            )
            .await;
        let checked = inner.gate.close_window(&ctx, window).await;
        if let Ok(report) = &checked {
            for r in &report.reverted {
                progress(json!({
                    "kind": "denied", "path": r.path, "operation": r.operation,
                    "stage": r.stage, "reason": r.reason, "restored": r.restored,
                }));
            }
        }
        drop(progress);
        let _ = forward.await;
        let (runner, summary, mut transcript) = ran?;
        let reverted: Vec<String> = checked?.reverted.iter().map(ToString::to_string).collect();
        for r in &reverted {
            transcript.push_str(&format!("permission pipeline: {r}\n"));
        }
        inner
            .store
            .set_agent_claim(agent.agent_id, None, Some(&runner))
            .await?;

        // Artifacts: the patch of what changed while the step ran, expected files, the log.
        let after_report = inner.sandboxes.diff(&caller, session.sandbox_id).await?;
        let (changed, patch) = changes_since(&before, &after_report);
        let mut artifacts = Vec::new();
        if !patch.is_empty() {
            artifacts.push(self.artifact(
                agent,
                "patch",
                "step.patch",
                "text/x-diff",
                patch.as_bytes(),
            ));
        }
        for path in &plan_step.expected_artifacts {
            match inner.gate.read(&ctx, session.sandbox_id, path).await {
                Ok(bytes) => {
                    artifacts.push(self.artifact(agent, "file", path, "text/plain", &bytes))
                }
                Err(error) => tracing::info!(%error, path, "an expected artifact is not there"),
            }
        }
        artifacts.push(self.artifact(
            agent,
            "log",
            "step.log",
            "text/plain",
            transcript.as_bytes(),
        ));
        inner.store.insert_artifacts(&artifacts).await?;
        Ok(StepResult {
            runner,
            summary,
            changed,
            artifacts: artifacts.len(),
            reverted,
        })
    }

    /// Acquires the step's container with the work copy mounted, runs the step in it and
    /// releases it; returns (runner, summary, log).
    #[allow(clippy::too_many_arguments)]
    async fn contained(
        &self,
        agent: &AgentRow,
        plan_step: &PlanStep,
        plan_key: &str,
        pool: &crate::pool_client::PoolClient,
        staging: &str,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<(String, String, String), CoworkError> {
        let inner = &self.inner;
        let env = HashMap::from([
            (
                "LIQUID_COWORK_SESSION".to_owned(),
                agent.session_id.to_string(),
            ),
            ("LIQUID_COWORK_STEP".to_owned(), plan_key.to_owned()),
        ]);
        let settings = &inner.settings.executor;
        // One agent is one attempt of one step: its id keys the claim, so a repeated acquire
        // for the same attempt never holds two containers; a retry is a new agent, a new key.
        let mut acquire = {
            let (pool, tenant) = (pool.clone(), agent.tenant.clone());
            let key = format!("cowork-agent-{}", agent.agent_id);
            let (template, staging, workdir) = (
                settings.template.clone(),
                staging.to_owned(),
                settings.container_workdir.clone(),
            );
            Box::pin(async move {
                pool.acquire(&tenant, &key, &template, &staging, &workdir, env)
                    .await
            })
        };
        let claim = tokio::select! {
            c = &mut acquire => c?,
            () = cancel.cancelled() => {
                // The pool may be creating the container right now: let the acquire land
                // (it is bounded by its own timeout) and hand the container straight back,
                // so a step cancelled mid-acquire does not keep one.
                let (pool, tenant) = (pool.clone(), agent.tenant.clone());
                let span = tracing::info_span!("cowork-release-cancelled-claim", agent = %agent.agent_id);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        if let Ok(claim) = acquire.await
                            && let Err(error) = pool.release(&tenant, &claim.id).await
                        {
                            tracing::warn!(%error, claim = %claim.id, "releasing a cancelled step's container failed");
                        }
                    },
                    span,
                ));
                return Err(CoworkError::Cancelled("the step was cancelled".into()));
            }
        };
        inner
            .store
            .set_agent_claim(agent.agent_id, Some(&claim.id), None)
            .await?;
        progress(json!({
            "kind": "container", "claim_id": claim.id, "container_id": claim.container_id,
            "runtime": claim.runtime, "host": claim.host,
        }));
        let ran = self
            .drive(
                agent,
                plan_step,
                &claim.id,
                &claim.runtime,
                pool,
                cancel,
                progress,
            )
            .await;
        if let Err(error) = pool.release(&agent.tenant, &claim.id).await {
            tracing::warn!(%error, claim = %claim.id, "releasing the step's container failed");
        }
        ran
    }

    /// Runs the CLI the analyzer picks, or the built-in agent; returns (runner, summary, log).
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        agent: &AgentRow,
        plan_step: &PlanStep,
        claim_id: &str,
        runtime: &str,
        pool: &crate::pool_client::PoolClient,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<(String, String, String), CoworkError> {
        let settings = &self.inner.settings.executor;
        let mut log = format!(
            "step {} \"{}\" attempt {} in container claim {claim_id} (runtime {runtime})\n",
            plan_step.id, plan_step.title, agent.attempt
        );
        if settings.use_runners {
            let task = format!("{}\n\n{}", plan_step.title, plan_step.instructions);
            let stream = tokio::select! {
                s = pool.run_agent(&agent.tenant, claim_id, &task, Duration::from_secs(settings.step_timeout_secs)) => s?,
                () = cancel.cancelled() => return Err(CoworkError::Cancelled("the step was cancelled".into())),
            };
            if let Some(mut stream) = stream {
                let mut runner = String::from("cli");
                let mut summary = String::new();
                let mut failed: Option<String> = None;
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        () = cancel.cancelled() => return Err(CoworkError::Cancelled("the step was cancelled".into())),
                    };
                    let Some(ev) = next.map_err(|s| CoworkError::Pool {
                        code: liquid_kit::ErrorCode::Unavailable,
                        message: s.message().to_owned(),
                    })?
                    else {
                        break;
                    };
                    runner = ev.runner.clone();
                    log.push_str(&format!("{} {}: {}\n", ev.runner, ev.kind, ev.text));
                    progress(
                        json!({"kind": ev.kind, "runner": ev.runner, "text": ev.text, "tool": ev.tool}),
                    );
                    match ev.kind.as_str() {
                        "completed" => summary = ev.text.clone(),
                        "error" => failed = Some(ev.text.clone()),
                        _ => {}
                    }
                }
                if let Some(why) = failed {
                    return Err(CoworkError::FailedPrecondition(format!("{runner}: {why}")));
                }
                return Ok((runner, summary, log));
            }
        }
        let built_in = self.inner.agent.as_ref().ok_or_else(|| {
            CoworkError::ExecutorUnavailable(
                "the built-in agent has no container-pool client".into(),
            )
        })?;
        let ctx = StepContext {
            agent: AgentContext {
                tenant: agent.tenant.clone(),
                session_id: agent.session_id,
                agent: agent.domain.clone(),
            },
            sandbox_id: self
                .inner
                .store
                .session(&agent.tenant, agent.session_id)
                .await?
                .map(|s| s.sandbox_id)
                .ok_or_else(|| CoworkError::not_found("session", agent.session_id))?,
            claim_id: claim_id.to_owned(),
            domain: agent.domain.clone(),
            instructions: plan_step.instructions.clone(),
            title: plan_step.title.clone(),
        };
        let outcome = built_in.run(&ctx, cancel, progress).await?;
        log.push_str(&outcome.transcript);
        let runner = if outcome.offline {
            "platform (offline model)"
        } else {
            "platform"
        };
        Ok((runner.to_owned(), outcome.summary, log))
    }
}
