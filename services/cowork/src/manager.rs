//! The agent manager: the durable priority queue of agents (one per attempt at a step) and
//! the loops of each replica that work it.
//!
//! - **Dispatch** (task `cowork-agent-dispatch`): claims as many due agents as the replica has
//!   free slots (`agents.max_concurrency`, a semaphore), in the one queue order (critical >
//!   high > normal > low, then due time, then age), skipping paused tenants and sessions that
//!   are not running; each claimed agent runs its step ([`crate::executor`]) under a lease.
//! - **Heartbeats**: a running agent renews its lease every `agents.heartbeat_interval_ms`
//!   (`agent:health` alive); a renewal that fails (terminated, or declared dead elsewhere) stops
//!   the work.
//! - **Monitor** (task `cowork-agent-monitor`): an agent silent past
//!   `agents.heartbeat_timeout_ms` — its replica died, or hangs — is declared dead
//!   (`agent:health` dead) and its step retried.
//! - **Retries**: a failed or dead attempt is followed by a new agent after exponential
//!   back-off with jitter, up to `agents.max_attempts`; then the step fails.
//! - Pause and resume of a tenant's queue, batch spawn, re-prioritisation, termination of one
//!   agent, a session's or all of a tenant's.
//! - **Stats** (task `cowork-queue-stats`): gauges from the database and `queue:stats` to the
//!   running sessions' channels.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::domain::plan::{PlanStep, StepState};
use crate::domain::schedule::{AgentState, Backoff, Priority, SessionState};
use crate::error::CoworkError;
use crate::events::EventKind;
use crate::metrics;
use crate::sandbox::Caller;
use crate::sessions::{AgentView, CoworkSessions};
use crate::store::sessions::{AgentRow, AgentSelector, QueueCounts, StepUpdate, now_ms};

/// One agent of a batch spawn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The step (its id, or its key in the plan).
    pub step: String,
    /// Queue priority (default: the plan step's).
    #[serde(default)]
    pub priority: Option<Priority>,
}

impl CoworkSessions {
    /// Inserts `agents` (each moves its step from one of `step_from` to queued); emits
    /// `agent:spawned` for each and wakes the dispatcher.
    pub(crate) async fn spawn_agents(
        &self,
        agents: Vec<AgentRow>,
        step_from: &[StepState],
    ) -> Result<Vec<AgentRow>, CoworkError> {
        let spawned = self.inner.store.spawn_agents(&agents, step_from).await?;
        for a in &spawned {
            self.inner
                .events
                .emit(
                    &a.tenant,
                    a.session_id,
                    EventKind::AgentSpawned,
                    json!({
                        "agent_id": a.agent_id, "step_id": a.step_id, "attempt": a.attempt,
                        "domain": a.domain, "priority": a.priority, "run_at_ms": a.run_at_ms,
                    }),
                )
                .await;
        }
        if !spawned.is_empty() {
            self.inner.wake.notify_one();
            if let Some(first) = spawned.first()
                && let Ok(stats) = self.queue_stats_value(&first.tenant).await
            {
                self.inner
                    .events
                    .emit_with(
                        &first.tenant,
                        first.session_id,
                        EventKind::QueueStats,
                        stats,
                        false,
                    )
                    .await;
            }
        }
        Ok(spawned)
    }

    /// Batch spawn: queues an agent for each listed step of a running (or paused) session whose
    /// step is pending, failed or cancelled (a manual retry).
    pub async fn spawn_batch(
        &self,
        caller: &Caller,
        session: Uuid,
        requests: Vec<SpawnRequest>,
    ) -> Result<Vec<AgentView>, CoworkError> {
        if requests.is_empty() || requests.len() > 100 {
            return Err(CoworkError::invalid("agents", "1 to 100 agents"));
        }
        let row = self
            .inner
            .store
            .session(&caller.tenant, session)
            .await?
            .ok_or_else(|| CoworkError::not_found("session", session))?;
        if !matches!(row.state, SessionState::Running | SessionState::Paused) {
            return Err(CoworkError::FailedPrecondition(format!(
                "agents are spawned for running or paused sessions; this one is {}",
                row.state.as_str()
            )));
        }
        let steps = self.inner.store.steps(&caller.tenant, session).await?;
        let now = now_ms();
        let mut agents = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let step = steps
                .iter()
                .find(|s| s.step_id.to_string() == r.step || s.plan_key == r.step)
                .ok_or_else(|| {
                    CoworkError::invalid(
                        format!("agents[{i}].step"),
                        format!("no step `{}` in the session", r.step),
                    )
                })?;
            let plan_step: PlanStep = serde_json::from_str(&step.body)
                .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
            let mut a = self.new_agent(step, &plan_step, step.attempts + 1, now);
            if let Some(p) = r.priority {
                a.priority = p;
            }
            agents.push(a);
        }
        let spawned = self
            .spawn_agents(
                agents,
                &[StepState::Pending, StepState::Failed, StepState::Cancelled],
            )
            .await?;
        Ok(spawned.into_iter().map(AgentView::from).collect())
    }

    /// Terminates the selected agents of `tenant`: queued ones leave the queue, running ones
    /// are stopped (their container work is killed); their steps are cancelled.
    pub async fn terminate(
        &self,
        tenant: &str,
        which: AgentSelector,
        reason: &str,
    ) -> Result<Vec<AgentView>, CoworkError> {
        let now = now_ms();
        let stopped = self
            .inner
            .store
            .terminate_agents(tenant, which, reason, now)
            .await?;
        let mut sessions = HashSet::new();
        for a in &stopped {
            if let Some(token) = self.local_token(a.agent_id) {
                token.cancel();
            }
            let moved = self
                .inner
                .store
                .update_step(
                    a.step_id,
                    &StepUpdate {
                        from: vec![StepState::Queued, StepState::Running],
                        to: StepState::Cancelled,
                        error: Some(reason.to_owned()),
                        runner: None,
                        summary: None,
                        at_ms: now,
                    },
                )
                .await?;
            if moved {
                self.inner
                    .events
                    .emit(
                        tenant,
                        a.session_id,
                        EventKind::SubtaskCompleted,
                        json!({"step_id": a.step_id, "agent_id": a.agent_id, "status": "cancelled", "error": reason}),
                    )
                    .await;
            }
            self.inner
                .events
                .emit(
                    tenant,
                    a.session_id,
                    EventKind::AgentHealth,
                    json!({"agent_id": a.agent_id, "status": "terminated", "reason": reason}),
                )
                .await;
            sessions.insert(a.session_id);
        }
        for s in sessions {
            self.advance(tenant, s).await?;
        }
        Ok(stopped.into_iter().map(AgentView::from).collect())
    }

    /// Sets the priority of the selected queued agents.
    pub async fn reprioritize(
        &self,
        tenant: &str,
        which: AgentSelector,
        priority: Priority,
    ) -> Result<u64, CoworkError> {
        let n = self
            .inner
            .store
            .reprioritize(tenant, which, priority, now_ms())
            .await?;
        self.inner.wake.notify_one();
        Ok(n)
    }

    /// Pauses (holds) or resumes the tenant's whole queue.
    pub async fn set_queue_paused(
        &self,
        tenant: &str,
        paused: bool,
    ) -> Result<QueueCounts, CoworkError> {
        self.inner
            .store
            .set_queue_paused(tenant, paused, now_ms())
            .await?;
        self.inner.wake.notify_one();
        self.inner.store.queue_counts(tenant).await
    }

    /// The tenant's agents.
    pub async fn agents(
        &self,
        caller: &Caller,
        session: Option<Uuid>,
        state: Option<AgentState>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AgentView>, CoworkError> {
        Ok(self
            .inner
            .store
            .agents(&caller.tenant, session, state, after, limit)
            .await?
            .into_iter()
            .map(AgentView::from)
            .collect())
    }

    /// The tenant's queue: sizes and the waiting agents in claim order.
    pub async fn queue(
        &self,
        caller: &Caller,
        limit: i64,
    ) -> Result<(QueueCounts, Vec<AgentView>), CoworkError> {
        let counts = self.inner.store.queue_counts(&caller.tenant).await?;
        let queued = self
            .inner
            .store
            .queued(&caller.tenant, limit)
            .await?
            .into_iter()
            .map(AgentView::from)
            .collect();
        Ok((counts, queued))
    }

    fn local_token(&self, agent: Uuid) -> Option<tokio_util::sync::CancellationToken> {
        let map = match self.inner.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.get(&agent).cloned()
    }

    fn backoff(&self) -> Backoff {
        let a = &self.inner.settings.agents;
        Backoff {
            base: Duration::from_millis(a.retry_base_ms),
            cap: Duration::from_millis(a.retry_cap_ms),
        }
    }

    /// After a failed or dead attempt: a new agent after back-off while attempts remain, else
    /// the step fails and the session advances.
    pub(crate) async fn retry_or_fail(
        &self,
        agent: &AgentRow,
        reason: &str,
    ) -> Result<(), CoworkError> {
        let now = now_ms();
        if agent.attempt < agent.max_attempts
            && let Some(step) = self.inner.store.step(&agent.tenant, agent.step_id).await?
            && !step.state.is_final()
        {
            let plan_step: PlanStep = serde_json::from_str(&step.body)
                .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
            let next = agent.attempt + 1;
            let delay = self.backoff().delay(
                u32::try_from(next).unwrap_or(u32::MAX),
                rand::random::<f64>(),
            );
            let run_at = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            let mut retry = self.new_agent(&step, &plan_step, next, run_at);
            retry.priority = agent.priority;
            let spawned = self
                .spawn_agents(vec![retry], &[StepState::Running, StepState::Queued])
                .await?;
            if !spawned.is_empty() {
                ::metrics::counter!(metrics::RETRIES).increment(1);
                tracing::info!(agent = %agent.agent_id, attempt = next, delay_ms = delay.as_millis() as u64, "step retried");
                return Ok(());
            }
        }
        let moved = self
            .inner
            .store
            .update_step(
                agent.step_id,
                &StepUpdate {
                    from: vec![StepState::Running, StepState::Queued],
                    to: StepState::Failed,
                    error: Some(reason.to_owned()),
                    runner: agent.runner.clone(),
                    summary: None,
                    at_ms: now,
                },
            )
            .await?;
        if moved {
            self.inner
                .events
                .emit(
                    &agent.tenant,
                    agent.session_id,
                    EventKind::SubtaskCompleted,
                    json!({"step_id": agent.step_id, "agent_id": agent.agent_id, "status": "failed", "error": reason, "attempts": agent.attempt}),
                )
                .await;
        }
        self.advance(&agent.tenant, agent.session_id).await
    }

    /// The dispatcher loop (until shutdown, then it waits for its running agents).
    pub async fn run_dispatch(self) {
        let poll = Duration::from_millis(self.inner.settings.agents.poll_interval_ms);
        let lease =
            i64::try_from(self.inner.settings.agents.heartbeat_timeout_ms).unwrap_or(i64::MAX);
        let running = tokio_util::task::TaskTracker::new();
        loop {
            let free = self.inner.slots.available_permits();
            let mut claimed_all = false;
            if free > 0 && !self.inner.shutdown.is_cancelled() {
                match self
                    .inner
                    .store
                    .claim_agents(&self.inner.worker, lease, free as i64, now_ms())
                    .await
                {
                    Ok(agents) => {
                        claimed_all = !agents.is_empty() && agents.len() == free;
                        for a in agents {
                            let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let this = self.clone();
                            running.spawn(async move {
                                this.run_agent(a).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "claiming agents failed"),
                }
            }
            if claimed_all {
                continue;
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
        running.close();
        running.wait().await;
        self.wait_background().await;
    }

    async fn run_agent(&self, agent: AgentRow) {
        let token = self.inner.shutdown.child_token();
        {
            let mut map = match self.inner.running.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.insert(agent.agent_id, token.clone());
        }
        ::metrics::gauge!(metrics::AGENTS_RUNNING_HERE).increment(1.0);
        let heartbeat = {
            let this = self.clone();
            let token = token.clone();
            let agent = agent.clone();
            tokio::spawn(async move { this.heartbeats(&agent, &token).await })
        };
        let started = std::time::Instant::now();
        let result = self.run_step(&agent, &token).await;
        heartbeat.abort();
        ::metrics::gauge!(metrics::AGENTS_RUNNING_HERE).decrement(1.0);
        {
            let mut map = match self.inner.running.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.remove(&agent.agent_id);
        }
        let outcome = if let Err(e) = &result {
            if token.is_cancelled() && self.inner.shutdown.is_cancelled() {
                // Shutting down: the lease runs out and another replica (or this one after a
                // restart) retries the step.
                tracing::info!(agent = %agent.agent_id, "agent left to its lease at shutdown");
                return;
            }
            if token.is_cancelled() {
                "cancelled"
            } else {
                tracing::warn!(agent = %agent.agent_id, error = %e, "step failed");
                "failed"
            }
        } else {
            "succeeded"
        };
        ::metrics::histogram!(metrics::STEP_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = self.finish(&agent, result, &token).await {
            tracing::warn!(%error, agent = %agent.agent_id, "recording the step's end failed");
        }
    }

    async fn finish(
        &self,
        agent: &AgentRow,
        result: Result<crate::executor::StepResult, CoworkError>,
        token: &tokio_util::sync::CancellationToken,
    ) -> Result<(), CoworkError> {
        let now = now_ms();
        match result {
            Ok(done) => {
                if !self
                    .inner
                    .store
                    .finish_agent(
                        agent.agent_id,
                        &self.inner.worker,
                        AgentState::Succeeded,
                        None,
                        now,
                    )
                    .await?
                {
                    return Ok(());
                }
                let moved = self
                    .inner
                    .store
                    .update_step(
                        agent.step_id,
                        &StepUpdate {
                            from: vec![StepState::Running],
                            to: StepState::Succeeded,
                            error: None,
                            runner: Some(done.runner.clone()),
                            summary: Some(done.summary.clone()),
                            at_ms: now,
                        },
                    )
                    .await?;
                if moved {
                    self.inner
                        .events
                        .emit(
                            &agent.tenant,
                            agent.session_id,
                            EventKind::SubtaskCompleted,
                            json!({
                                "step_id": agent.step_id, "agent_id": agent.agent_id, "status": "succeeded",
                                "runner": done.runner, "summary": done.summary,
                                "changed": done.changed, "artifacts": done.artifacts,
                            }),
                        )
                        .await;
                }
                self.advance(&agent.tenant, agent.session_id).await
            }
            Err(e) => {
                if token.is_cancelled() {
                    // Terminated (the terminating call cancelled the step) or declared dead.
                    return Ok(());
                }
                let reason = e.to_string();
                if !self
                    .inner
                    .store
                    .finish_agent(
                        agent.agent_id,
                        &self.inner.worker,
                        AgentState::Failed,
                        Some(&reason),
                        now,
                    )
                    .await?
                {
                    return Ok(());
                }
                let mut a = agent.clone();
                if let Ok(Some(fresh)) = self.inner.store.agent(&agent.tenant, agent.agent_id).await
                {
                    a.runner = fresh.runner;
                }
                self.retry_or_fail(&a, &reason).await
            }
        }
    }

    async fn heartbeats(&self, agent: &AgentRow, token: &tokio_util::sync::CancellationToken) {
        let every = Duration::from_millis(self.inner.settings.agents.heartbeat_interval_ms);
        let lease =
            i64::try_from(self.inner.settings.agents.heartbeat_timeout_ms).unwrap_or(i64::MAX);
        let mut beats: u64 = 0;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self
                .inner
                .store
                .heartbeat(agent.agent_id, &self.inner.worker, lease, now_ms())
                .await
            {
                Ok(true) => {
                    beats += 1;
                    self.inner
                        .events
                        .emit_with(
                            &agent.tenant,
                            agent.session_id,
                            EventKind::AgentHealth,
                            json!({"agent_id": agent.agent_id, "status": "alive", "heartbeats": beats}),
                            false,
                        )
                        .await;
                }
                Ok(false) => {
                    tracing::info!(agent = %agent.agent_id, "the agent's lease is gone; stopping it");
                    token.cancel();
                    return;
                }
                Err(error) => tracing::warn!(%error, agent = %agent.agent_id, "heartbeat failed"),
            }
        }
    }

    /// Declares agents whose lease ran out dead and retries their steps; returns how many.
    pub async fn sweep_dead(&self) -> Result<usize, CoworkError> {
        let now = now_ms();
        let mut n = 0;
        for a in self.inner.store.expired_agents(now, 100).await? {
            let silent_ms = now - a.heartbeat_ms.unwrap_or(a.created_ms);
            let reason = format!("no heartbeat for {silent_ms} ms; declared dead");
            if !self.inner.store.mark_dead(a.agent_id, now, &reason).await? {
                continue;
            }
            n += 1;
            ::metrics::counter!(metrics::AGENTS_DEAD).increment(1);
            tracing::warn!(agent = %a.agent_id, worker = ?a.lease_owner, silent_ms, "agent declared dead");
            self.inner
                .events
                .emit(
                    &a.tenant,
                    a.session_id,
                    EventKind::AgentHealth,
                    json!({"agent_id": a.agent_id, "status": "dead", "silent_ms": silent_ms, "worker": a.lease_owner}),
                )
                .await;
            if let Some(claim) = &a.claim_id {
                // A delegated step's claim is its remote task; any other is a container.
                if let Some((url, task)) = crate::bridge::delegate::parse_remote_claim(claim) {
                    crate::bridge::delegate::cancel_remote(&self.inner.settings.a2a, url, task)
                        .await;
                } else if let Ok(pool) = &self.inner.pool
                    && let Err(error) = pool.release(&a.tenant, claim).await
                {
                    tracing::info!(%error, claim, "the dead agent's container was not released");
                }
            }
            self.retry_or_fail(&a, &reason).await?;
        }
        Ok(n)
    }

    /// The monitor loop.
    pub async fn run_monitor(self) {
        let every = Duration::from_millis(self.inner.settings.agents.heartbeat_interval_ms);
        loop {
            if let Err(error) = self.sweep_dead().await {
                tracing::warn!(%error, "dead-agent sweep failed");
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Refreshes the gauges and sends `queue:stats` to running sessions.
    pub async fn publish_stats(&self) -> Result<(), CoworkError> {
        let sessions: BTreeMap<String, i64> = self
            .inner
            .store
            .count_sessions()
            .await?
            .into_iter()
            .collect();
        for s in SessionState::ALL {
            let n = sessions.get(s.as_str()).copied().unwrap_or(0);
            ::metrics::gauge!(metrics::SESSIONS, "state" => s.as_str()).set(n as f64);
        }
        let agents: BTreeMap<String, i64> =
            self.inner.store.count_agents().await?.into_iter().collect();
        for s in AgentState::ALL {
            let n = agents.get(s.as_str()).copied().unwrap_or(0);
            ::metrics::gauge!(metrics::AGENTS, "state" => s.as_str()).set(n as f64);
        }
        ::metrics::gauge!(metrics::QUEUE_DEPTH)
            .set(agents.get("queued").copied().unwrap_or(0) as f64);
        ::metrics::gauge!(metrics::AGENTS_ALIVE)
            .set(agents.get("running").copied().unwrap_or(0) as f64);
        let mut stats_by_tenant: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for s in self
            .inner
            .store
            .sessions_in_state(SessionState::Running, 500)
            .await?
        {
            if !stats_by_tenant.contains_key(&s.tenant) {
                let v = self.queue_stats_value(&s.tenant).await?;
                stats_by_tenant.insert(s.tenant.clone(), v);
            }
            let v = stats_by_tenant[&s.tenant].clone();
            self.inner
                .events
                .emit_with(&s.tenant, s.session_id, EventKind::QueueStats, v, false)
                .await;
        }
        Ok(())
    }

    /// The stats loop.
    pub async fn run_stats(self) {
        let every = Duration::from_millis(self.inner.settings.agents.stats_interval_ms);
        loop {
            if let Err(error) = self.publish_stats().await {
                tracing::warn!(%error, "queue stats not refreshed");
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
