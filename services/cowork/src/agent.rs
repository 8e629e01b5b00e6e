//! The built-in model agent: a tool loop over liquid-llm that carries out one step.
//!
//! The agent's directive (`agents/<domain>.md`) is the system prompt; the step's instructions
//! are the first message. Tools: `read_file`, `write_file`, `list_files`, `search_files` —
//! every one goes through the [`PermissionGate`] as the step's specialist (`permissions.agents.
//! <domain>` sets its capabilities), so a denial comes back to the model as a failed tool result
//! naming the stage — and `run_command`, which runs in the step's container through
//! container-pool's Exec (the sandbox is mounted there as the working directory). The loop ends
//! when the model answers without calling a tool, or fails after `executor.max_turns` turns.
//! Every call and result is reported through the progress callback and kept in the transcript
//! (the step's log artifact).

use std::sync::Arc;
use std::time::Duration;

use liquid_llm::{
    ChatRequest, Message, ModelClient, ModelRouter, ToolCall, ToolDefinition, ToolResult,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ExecutorSection;
use crate::directives::Directives;
use crate::error::CoworkError;
use crate::permission::{AgentContext, PermissionGate};
use crate::pool_client::PoolClient;

/// Most entries `search_files` and recursive listings visit.
const MAX_WALK: usize = 5_000;

/// What one step gives the agent.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Who acts (tenant, session, the specialist's name).
    pub agent: AgentContext,
    /// The session's sandbox.
    pub sandbox_id: Uuid,
    /// The container claim commands run in.
    pub claim_id: String,
    /// The step's domain (chooses the directive).
    pub domain: String,
    /// What to do.
    pub instructions: String,
    /// The step's title.
    pub title: String,
}

/// What the agent did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOutcome {
    /// The agent's closing answer.
    pub summary: String,
    /// Every turn, tool call and result, as text.
    pub transcript: String,
    /// Files it wrote or deleted (relative to the sandbox).
    pub files_written: Vec<String>,
    /// The offline provider answered (no model key).
    pub offline: bool,
    /// Model turns used.
    pub turns: u32,
}

/// The built-in agent.
#[derive(Clone)]
pub struct BuiltinAgent {
    router: Arc<ModelRouter>,
    gate: PermissionGate,
    pool: PoolClient,
    directives: Arc<Directives>,
    settings: ExecutorSection,
}

fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> ToolDefinition {
    ToolDefinition {
        name: name.into(),
        description: description.into(),
        parameters: json!({"type": "object", "properties": properties, "required": required}),
    }
}

/// The tools the agent offers the model.
pub fn tools() -> Vec<ToolDefinition> {
    vec![
        tool(
            "read_file",
            "Read a text file of the workspace.",
            json!({"path": {"type": "string"}}),
            &["path"],
        ),
        tool(
            "write_file",
            "Create or replace a file of the workspace with the given content.",
            json!({"path": {"type": "string"}, "content": {"type": "string"}}),
            &["path", "content"],
        ),
        tool(
            "list_files",
            "List a directory of the workspace (`.` is the root); `recursive` lists everything below it.",
            json!({"path": {"type": "string"}, "recursive": {"type": "boolean"}}),
            &[],
        ),
        tool(
            "search_files",
            "Find lines containing `pattern` (plain text) in the files under `path`.",
            json!({"pattern": {"type": "string"}, "path": {"type": "string"}}),
            &["pattern"],
        ),
        tool(
            "run_command",
            "Run a shell command in the step's container, in the workspace directory.",
            json!({"command": {"type": "string"}}),
            &["command"],
        ),
    ]
}

fn arg<'a>(call: &'a ToolCall, name: &str) -> Result<&'a str, String> {
    call.arguments
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("argument `{name}` (a string) is required"))
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… ({} more bytes cut)", &text[..end], text.len() - end)
}

impl BuiltinAgent {
    /// The agent over these clients.
    pub fn new(
        router: Arc<ModelRouter>,
        gate: PermissionGate,
        pool: PoolClient,
        directives: Arc<Directives>,
        settings: ExecutorSection,
    ) -> Self {
        BuiltinAgent {
            router,
            gate,
            pool,
            directives,
            settings,
        }
    }

    async fn walk(&self, ctx: &StepContext, root: &str) -> Result<Vec<String>, CoworkError> {
        let mut out = Vec::new();
        let mut dirs = vec![root.trim_end_matches('/').to_owned()];
        while let Some(dir) = dirs.pop() {
            for e in self.gate.list(&ctx.agent, ctx.sandbox_id, &dir).await? {
                let path = if dir == "." || dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                if e.kind == "directory" {
                    dirs.push(path);
                } else if e.kind == "file" {
                    out.push(path);
                }
                if out.len() >= MAX_WALK {
                    return Ok(out);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn call_tool(
        &self,
        ctx: &StepContext,
        call: &ToolCall,
        outcome: &mut AgentOutcome,
        progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<String, String> {
        let max = self.settings.max_tool_output_bytes;
        let denied = |e: CoworkError| e.to_string();
        match call.name.as_str() {
            "read_file" => {
                let path = arg(call, "path")?;
                let bytes = self
                    .gate
                    .read(&ctx.agent, ctx.sandbox_id, path)
                    .await
                    .map_err(denied)?;
                Ok(cut(&String::from_utf8_lossy(&bytes), max))
            }
            "write_file" => {
                let path = arg(call, "path")?;
                let content = arg(call, "content")?;
                let w = self
                    .gate
                    .write(
                        &ctx.agent,
                        ctx.sandbox_id,
                        path,
                        content.as_bytes().to_vec(),
                    )
                    .await
                    .map_err(denied)?;
                if !outcome.files_written.contains(&w.path) {
                    outcome.files_written.push(w.path.clone());
                }
                Ok(format!(
                    "wrote {} bytes to {} (sha256 {})",
                    w.bytes, w.path, w.sha256_after
                ))
            }
            "list_files" => {
                let path = call
                    .arguments
                    .get("path")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .unwrap_or(".");
                let recursive = call
                    .arguments
                    .get("recursive")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let lines = if recursive {
                    self.walk(ctx, path).await.map_err(denied)?
                } else {
                    let mut v: Vec<String> = self
                        .gate
                        .list(&ctx.agent, ctx.sandbox_id, path)
                        .await
                        .map_err(denied)?
                        .into_iter()
                        .map(|e| {
                            if e.kind == "directory" {
                                format!("{}/", e.name)
                            } else {
                                e.name
                            }
                        })
                        .collect();
                    v.sort();
                    v
                };
                Ok(cut(&lines.join("\n"), max))
            }
            "search_files" => {
                let pattern = arg(call, "pattern")?;
                if pattern.is_empty() {
                    return Err("`pattern` must not be empty".into());
                }
                let root = call
                    .arguments
                    .get("path")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .unwrap_or(".");
                let mut hits = String::new();
                for file in self.walk(ctx, root).await.map_err(denied)? {
                    // A file the pipeline refuses (a blocked extension) is skipped, not fatal.
                    let Ok(bytes) = self.gate.read(&ctx.agent, ctx.sandbox_id, &file).await else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&bytes);
                    for (n, line) in text.lines().enumerate() {
                        if line.contains(pattern) {
                            hits.push_str(&format!("{file}:{}: {line}\n", n + 1));
                        }
                    }
                    if hits.len() > max {
                        break;
                    }
                }
                Ok(if hits.is_empty() {
                    "no matches".into()
                } else {
                    cut(&hits, max)
                })
            }
            "run_command" => {
                let command = arg(call, "command")?;
                let step_id = ctx.title.clone();
                // What the command changes is checked by the pipeline once it returns.
                let window = self
                    .gate
                    .open_window(&ctx.agent, ctx.sandbox_id)
                    .await
                    .map_err(denied)?;
                let ran = self
                    .pool
                    .exec_shell(
                        &ctx.agent.tenant,
                        &ctx.claim_id,
                        command,
                        Duration::from_secs(self.settings.command_timeout_secs),
                        max,
                        |chunk| {
                            progress(json!({
                                "kind": "command_output",
                                "step": step_id,
                                "text": String::from_utf8_lossy(chunk),
                            }));
                        },
                    )
                    .await;
                let checked = self
                    .gate
                    .close_window(&ctx.agent, window)
                    .await
                    .map_err(denied)?;
                let out = ran.map_err(|e| e.to_string())?;
                let mut text = format!("exit code {}", out.exit_code);
                if out.timed_out {
                    text.push_str(" (timed out)");
                }
                text.push_str(&format!(
                    "\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
                if out.truncated {
                    text.push_str("\n(output cut)");
                }
                for r in &checked.reverted {
                    text.push_str(&format!("\npermission pipeline: {r}"));
                }
                if out.exit_code == 0 {
                    Ok(text)
                } else {
                    Err(text)
                }
            }
            other => Err(format!("no tool `{other}`")),
        }
    }

    /// Runs the loop for one step until the model stops calling tools.
    pub async fn run(
        &self,
        ctx: &StepContext,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Value) + Send + Sync),
    ) -> Result<AgentOutcome, CoworkError> {
        let directive = self.directives.agent(&ctx.domain);
        let mut outcome = AgentOutcome::default();
        outcome.transcript.push_str(&format!(
            "agent: built-in ({}), directive {} v{} sha256 {}\n",
            ctx.domain, directive.path, directive.version, directive.sha256
        ));
        let mut chat = ChatRequest {
            model: self.settings.agent_model.clone(),
            system: Some(directive.text.clone()),
            messages: vec![Message::user(format!(
                "Step: {}\n\n{}",
                ctx.title, ctx.instructions
            ))],
            tools: tools(),
            ..ChatRequest::default()
        };
        for turn in 1..=self.settings.max_turns {
            if cancel.is_cancelled() {
                return Err(CoworkError::Cancelled("the step was cancelled".into()));
            }
            let answer = tokio::select! {
                a = self.router.complete(&chat) => a?,
                () = cancel.cancelled() => {
                    return Err(CoworkError::Cancelled("the step was cancelled".into()));
                }
            };
            outcome.turns = turn;
            outcome.offline |= answer.is_offline();
            if !answer.text.trim().is_empty() {
                outcome.transcript.push_str(&format!(
                    "model ({}): {}\n",
                    answer.model,
                    answer.text.trim()
                ));
            }
            if answer.tool_calls.is_empty() {
                outcome.summary = answer.text.trim().to_owned();
                return Ok(outcome);
            }
            let mut results = Vec::new();
            for call in &answer.tool_calls {
                progress(
                    json!({"kind": "tool_call", "tool": call.name, "arguments": call.arguments}),
                );
                outcome
                    .transcript
                    .push_str(&format!("tool call {} {}\n", call.name, call.arguments));
                // A cancelled step stops mid-tool: dropping the call drops its exec stream,
                // which kills the command in the container.
                let result = tokio::select! {
                    r = self.call_tool(ctx, call, &mut outcome, progress) => r,
                    () = cancel.cancelled() => {
                        return Err(CoworkError::Cancelled("the step was cancelled".into()));
                    }
                };
                let (content, is_error) = match result {
                    Ok(c) => (c, false),
                    Err(c) => (c, true),
                };
                progress(json!({
                    "kind": "tool_result",
                    "tool": call.name,
                    "ok": !is_error,
                    "text": cut(&content, 2_000),
                }));
                outcome.transcript.push_str(&format!(
                    "tool result {} ({}):\n{}\n",
                    call.name,
                    if is_error { "failed" } else { "ok" },
                    content
                ));
                results.push(ToolResult {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content,
                    is_error,
                });
            }
            chat.messages.push(answer.to_message());
            chat.messages.push(Message::tool_results(results));
        }
        Err(CoworkError::FailedPrecondition(format!(
            "the agent did not finish within executor.max_turns ({}) turns",
            self.settings.max_turns
        )))
    }
}
