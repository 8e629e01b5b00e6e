//! Runs a coding agent inside a claimed container: picks the runner
//! ([`crate::domain::runner::choose`]), gives the CLI only its own API key (written as a
//! secret file for the length of the run and read into the CLI's variable by a fixed wrapper,
//! so the key is never on a command line), and turns its output into [`AgentEvent`]s.
//!
//! The platform's own model agent is not run here: it lives in cowork (it needs the model
//! clients and the permission pipeline). A task for which no CLI is available is refused with
//! `failed_precondition` naming the runners that would take it.

use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::RunnersSection;
use crate::domain::agent_stream::{AgentEvent, AgentEventKind, AgentStreamParser};
use crate::domain::runner::{self, RunnerChoice, RunnerKind};
use crate::error::PoolError;
use crate::pool::{ExecRequest, WarmPools};
use crate::runtime::ExecChunk;

/// A run request.
#[derive(Debug, Clone, Default)]
pub struct AgentRun {
    /// The task in words.
    pub task: String,
    /// A runner to prefer.
    pub runner: Option<RunnerKind>,
    /// Model for the CLI.
    pub model: Option<String>,
    /// Timeout; `None`: the pool's exec default.
    pub timeout: Option<Duration>,
}

/// The runners the images carry.
pub fn available(config: &RunnersSection) -> Vec<RunnerKind> {
    config
        .available
        .iter()
        .filter_map(|r| RunnerKind::parse(r))
        .collect()
}

/// What would run `run`.
pub fn choose(config: &RunnersSection, run: &AgentRun) -> RunnerChoice {
    runner::choose(&run.task, &available(config), run.runner)
}

/// Runs `run` in claim `claim` and sends its events to `sink`; returns the choice.
pub async fn run_agent(
    pools: &WarmPools,
    tenant: &str,
    claim: Uuid,
    run: AgentRun,
    sink: mpsc::Sender<AgentEvent>,
) -> Result<RunnerChoice, PoolError> {
    if run.task.trim().is_empty() {
        return Err(PoolError::invalid("task", "must not be empty"));
    }
    let config = &pools.settings().runners;
    let choice = choose(config, &run);
    let (command, secret) = match choice.runner {
        RunnerKind::Claude => (&config.claude_command, &config.claude_secret),
        RunnerKind::Gemini => (&config.gemini_command, &config.gemini_secret),
        RunnerKind::Codex => (&config.codex_command, &config.codex_secret),
        RunnerKind::Platform => {
            return Err(PoolError::FailedPrecondition(format!(
                "{}; run it through cowork, or list a cli in runners.available",
                choice.reason
            )));
        }
    };
    let Some(argv) = runner::command_line(
        choice.runner,
        command,
        &run.task,
        choice.kind,
        run.model.as_deref(),
    ) else {
        return Err(PoolError::FailedPrecondition(
            "no command line for this runner".into(),
        ));
    };
    // Claim first (tenant check), then the key file.
    pools.claim(tenant, claim).await?;
    let key_file = pools.with_secret_file(tenant, claim, secret).await?;
    let argv = match (&key_file, choice.runner.key_variable()) {
        (Some(file), Some(var)) => {
            let mut wrapped = vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("{var}=$(cat \"$0\"); export {var}; exec \"$@\""),
                file.clone(),
            ];
            wrapped.extend(argv);
            wrapped
        }
        _ => argv,
    };
    let (tx, mut rx) = mpsc::channel::<ExecChunk>(64);
    let runner_kind = choice.runner;
    let forward = {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut parser = AgentStreamParser::new(runner_kind);
            let mut stderr = Vec::new();
            while let Some(chunk) = rx.recv().await {
                match chunk {
                    ExecChunk::Stdout(b) => {
                        for e in parser.feed(&b) {
                            if sink.send(e).await.is_err() {
                                return (parser, stderr);
                            }
                        }
                    }
                    ExecChunk::Stderr(b) => {
                        stderr.extend_from_slice(&b);
                        let excess = stderr.len().saturating_sub(4096);
                        stderr.drain(..excess);
                    }
                }
            }
            (parser, stderr)
        })
    };
    let outcome = pools
        .exec(
            tenant,
            claim,
            ExecRequest {
                argv,
                timeout: run.timeout,
                ..ExecRequest::default()
            },
            tx,
        )
        .await;
    if key_file.is_some() {
        let _ = pools.drop_secret_file(tenant, claim, secret).await;
    }
    let outcome = outcome?;
    let (mut parser, stderr) = forward
        .await
        .map_err(|e| PoolError::io("agent output", std::io::Error::other(e)))?;
    let mut tail = parser.finish(outcome.exit_code);
    if let Some(last) = tail.last_mut()
        && last.kind == AgentEventKind::Error
        && outcome.exit_code != 0
    {
        let err = String::from_utf8_lossy(&stderr);
        if outcome.timed_out {
            last.text = format!("{} timed out", runner_kind.as_str());
        } else if !err.trim().is_empty() && last.text.contains("exited with code") {
            last.text = format!("{}: {}", last.text, err.trim());
        }
    }
    for e in tail {
        let _ = sink.send(e).await;
    }
    Ok(choice)
}
