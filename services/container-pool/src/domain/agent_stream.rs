//! Turns each coding CLI's output into one event stream.
//!
//! Formats handled (as the CLIs emit them):
//! - Claude Code `--output-format stream-json --verbose`: one JSON object per line, `type`
//!   `system` (subtype `init`), `assistant` / `user` with `message.content[]` blocks (`text`,
//!   `tool_use` with `name` and `input`, `tool_result` with `content`), and a final `result`
//!   (`subtype` `success` or an error subtype, `is_error`, `result`).
//! - Gemini CLI `-o json`: one JSON document (pretty-printed, so several lines) at the end:
//!   `{"response": ..., "stats": ..., "error": {"type", "message"}?}`.
//! - Codex `exec --json`: one JSON object per line: `thread.started`, `turn.started`,
//!   `item.started` / `item.completed` with an `item` of type `agent_message` (`text`),
//!   `reasoning`, `command_execution` (`command`, `aggregated_output`, `exit_code`),
//!   `file_change`, `mcp_tool_call`, `web_search`; `turn.completed` (`usage`), `turn.failed`
//!   and `error`.
//!
//! Every parser ends with exactly one `completed` or `error` event, also when the CLI died
//! without saying so. Lines that are not JSON are passed on as `text` (CLIs print warnings).

use serde::Serialize;
use serde_json::Value;

use crate::domain::runner::RunnerKind;

/// Kinds of [`AgentEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentEventKind {
    /// The run began (session/thread id in `json`).
    Started,
    /// Text from the agent.
    Text,
    /// The agent called a tool.
    ToolUse,
    /// A tool's result.
    ToolResult,
    /// The run failed.
    Error,
    /// The run finished (final answer in `text`).
    Completed,
}

impl AgentEventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentEventKind::Started => "started",
            AgentEventKind::Text => "text",
            AgentEventKind::ToolUse => "tool_use",
            AgentEventKind::ToolResult => "tool_result",
            AgentEventKind::Error => "error",
            AgentEventKind::Completed => "completed",
        }
    }
}

/// One event of a run, whatever the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentEvent {
    /// What happened.
    pub kind: AgentEventKind,
    /// Who produced it.
    pub runner: RunnerKind,
    /// Text, answer or error message.
    pub text: String,
    /// Tool name for tool events.
    pub tool: String,
    /// The CLI's own object (or the relevant part of it).
    pub json: Value,
}

impl AgentEvent {
    fn new(kind: AgentEventKind, runner: RunnerKind, text: impl Into<String>) -> AgentEvent {
        AgentEvent {
            kind,
            runner,
            text: text.into(),
            tool: String::new(),
            json: Value::Null,
        }
    }

    fn tool(mut self, tool: impl Into<String>) -> AgentEvent {
        self.tool = tool.into();
        self
    }

    fn json(mut self, json: Value) -> AgentEvent {
        self.json = json;
        self
    }
}

/// A parser for one run's stdout.
#[derive(Debug)]
pub struct AgentStreamParser {
    runner: RunnerKind,
    buffer: String,
    finished: bool,
    /// Codex's last `agent_message`: its closing words, which `turn.completed` does not repeat.
    last_message: String,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl AgentStreamParser {
    /// A parser for `runner`'s output.
    pub fn new(runner: RunnerKind) -> AgentStreamParser {
        AgentStreamParser {
            runner,
            buffer: String::new(),
            finished: false,
            last_message: String::new(),
        }
    }

    /// Feeds a chunk of stdout; returns the events of every complete line in it (Gemini's
    /// single document waits for [`AgentStreamParser::finish`]).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<AgentEvent> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        if self.runner == RunnerKind::Gemini {
            return Vec::new();
        }
        let mut events = Vec::new();
        while let Some(pos) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=pos).collect();
            events.extend(self.line(line.trim()));
        }
        events
    }

    /// Ends the run with the CLI's exit code; flushes what is buffered and guarantees a
    /// final `completed` or `error`.
    pub fn finish(&mut self, exit_code: i64) -> Vec<AgentEvent> {
        let rest = std::mem::take(&mut self.buffer);
        let mut events = if self.runner == RunnerKind::Gemini {
            self.gemini_document(rest.trim())
        } else {
            self.line(rest.trim())
        };
        if !self.finished {
            self.finished = true;
            events.push(if exit_code == 0 {
                AgentEvent::new(AgentEventKind::Completed, self.runner, "")
            } else {
                AgentEvent::new(
                    AgentEventKind::Error,
                    self.runner,
                    format!("{} exited with code {exit_code}", self.runner.as_str()),
                )
            });
        }
        events
    }

    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        if line.is_empty() {
            return Vec::new();
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return vec![AgentEvent::new(AgentEventKind::Text, self.runner, line)];
        };
        match self.runner {
            RunnerKind::Claude => self.claude(v),
            RunnerKind::Codex => self.codex(v),
            _ => vec![AgentEvent::new(AgentEventKind::Text, self.runner, line).json(v)],
        }
    }

    fn terminal(&mut self, kind: AgentEventKind, text: impl Into<String>, v: Value) -> AgentEvent {
        self.finished = true;
        AgentEvent::new(kind, self.runner, text).json(v)
    }

    fn claude(&mut self, v: Value) -> Vec<AgentEvent> {
        let r = self.runner;
        match str_of(&v, "type") {
            "system" if str_of(&v, "subtype") == "init" => {
                vec![AgentEvent::new(AgentEventKind::Started, r, "").json(v)]
            }
            "assistant" | "user" => {
                let blocks = v
                    .pointer("/message/content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                blocks
                    .into_iter()
                    .filter_map(|b| match str_of(&b, "type") {
                        "text" => Some(
                            AgentEvent::new(AgentEventKind::Text, r, str_of(&b, "text")).json(b),
                        ),
                        "tool_use" => {
                            let name = str_of(&b, "name").to_owned();
                            Some(
                                AgentEvent::new(AgentEventKind::ToolUse, r, "")
                                    .tool(name)
                                    .json(b),
                            )
                        }
                        "tool_result" => {
                            let text = match b.get("content") {
                                Some(Value::String(s)) => s.clone(),
                                Some(Value::Array(parts)) => parts
                                    .iter()
                                    .map(|p| str_of(p, "text"))
                                    .collect::<Vec<_>>()
                                    .join(""),
                                _ => String::new(),
                            };
                            Some(AgentEvent::new(AgentEventKind::ToolResult, r, text).json(b))
                        }
                        _ => None,
                    })
                    .collect()
            }
            "result" => {
                let failed = v.get("is_error").and_then(Value::as_bool).unwrap_or(false)
                    || str_of(&v, "subtype") != "success";
                let text = str_of(&v, "result").to_owned();
                if failed {
                    let text = if text.is_empty() {
                        str_of(&v, "subtype").to_owned()
                    } else {
                        text
                    };
                    vec![self.terminal(AgentEventKind::Error, text, v)]
                } else {
                    vec![self.terminal(AgentEventKind::Completed, text, v)]
                }
            }
            _ => Vec::new(),
        }
    }

    fn codex(&mut self, v: Value) -> Vec<AgentEvent> {
        let r = self.runner;
        match str_of(&v, "type") {
            "thread.started" => vec![AgentEvent::new(AgentEventKind::Started, r, "").json(v)],
            "item.started" | "item.completed" => {
                let completed = str_of(&v, "type") == "item.completed";
                let item = v.get("item").cloned().unwrap_or(Value::Null);
                match (str_of(&item, "type"), completed) {
                    ("agent_message", true) => {
                        self.last_message = str_of(&item, "text").to_owned();
                        vec![
                            AgentEvent::new(AgentEventKind::Text, r, str_of(&item, "text"))
                                .json(item),
                        ]
                    }
                    ("command_execution", false) => vec![
                        AgentEvent::new(AgentEventKind::ToolUse, r, str_of(&item, "command"))
                            .tool("command_execution")
                            .json(item),
                    ],
                    ("command_execution", true) => vec![
                        AgentEvent::new(
                            AgentEventKind::ToolResult,
                            r,
                            str_of(&item, "aggregated_output"),
                        )
                        .tool("command_execution")
                        .json(item),
                    ],
                    ("file_change" | "mcp_tool_call" | "web_search", done) => {
                        let kind = if done {
                            AgentEventKind::ToolResult
                        } else {
                            AgentEventKind::ToolUse
                        };
                        let tool = str_of(&item, "type").to_owned();
                        vec![AgentEvent::new(kind, r, "").tool(tool).json(item)]
                    }
                    _ => Vec::new(),
                }
            }
            "turn.failed" => {
                let msg = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed")
                    .to_owned();
                vec![self.terminal(AgentEventKind::Error, msg, v)]
            }
            "error" => {
                let msg = str_of(&v, "message").to_owned();
                vec![self.terminal(AgentEventKind::Error, msg, v)]
            }
            // The turn's answer is its last agent message (the summary a caller keeps).
            "turn.completed" => {
                let text = std::mem::take(&mut self.last_message);
                vec![self.terminal(AgentEventKind::Completed, text, v)]
            }
            _ => Vec::new(),
        }
    }

    fn gemini_document(&mut self, doc: &str) -> Vec<AgentEvent> {
        let r = self.runner;
        if doc.is_empty() {
            return Vec::new();
        }
        // Warnings may precede the document; it starts at the first line that opens an object.
        let start = doc
            .match_indices('{')
            .map(|(i, _)| i)
            .find(|&i| i == 0 || doc[..i].ends_with('\n'))
            .unwrap_or(0);
        let (preamble, body) = doc.split_at(start);
        let mut events: Vec<AgentEvent> = preamble
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| AgentEvent::new(AgentEventKind::Text, r, l.trim()))
            .collect();
        match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                events.push(AgentEvent::new(AgentEventKind::Started, r, ""));
                if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                    let msg = str_of(err, "message").to_owned();
                    events.push(self.terminal(AgentEventKind::Error, msg, v));
                } else {
                    let text = str_of(&v, "response").to_owned();
                    events.push(AgentEvent::new(AgentEventKind::Text, r, text.clone()));
                    events.push(self.terminal(AgentEventKind::Completed, text, v));
                }
            }
            Err(_) => events.push(AgentEvent::new(AgentEventKind::Text, r, body)),
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentEventKind::*;

    fn kinds(events: &[AgentEvent]) -> Vec<AgentEventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    const CLAUDE: &str = r#"{"type":"system","subtype":"init","session_id":"s1","tools":["Bash"],"model":"claude-sonnet-4"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Looking."},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]},"session_id":"s1"}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"a.txt\n"}]},"session_id":"s1"}
{"type":"result","subtype":"success","is_error":false,"result":"Done.","num_turns":2,"session_id":"s1"}
"#;

    #[test]
    fn claude_stream_json_becomes_events_even_split_mid_line() {
        let mut p = AgentStreamParser::new(RunnerKind::Claude);
        let bytes = CLAUDE.as_bytes();
        let mut events = p.feed(&bytes[..50]);
        events.extend(p.feed(&bytes[50..]));
        events.extend(p.finish(0));
        assert_eq!(
            kinds(&events),
            [Started, Text, ToolUse, ToolResult, Completed]
        );
        assert_eq!(events[1].text, "Looking.");
        assert_eq!(events[2].tool, "Bash");
        assert_eq!(events[2].json["input"]["command"], "ls");
        assert_eq!(events[3].text, "a.txt\n");
        assert_eq!(events[4].text, "Done.");
    }

    #[test]
    fn a_claude_error_result_is_an_error() {
        let mut p = AgentStreamParser::new(RunnerKind::Claude);
        let mut ev =
            p.feed(br#"{"type":"result","subtype":"error_max_turns","is_error":true,"result":""}"#);
        ev.extend(p.finish(1));
        assert_eq!(kinds(&ev), [Error]);
        assert_eq!(ev[0].text, "error_max_turns");
    }

    const CODEX: &str = r#"{"type":"thread.started","thread_id":"th1"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"thinking"}}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"","status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"All set."}}
{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":0,"output_tokens":5}}
"#;

    #[test]
    fn codex_jsonl_becomes_events() {
        let mut p = AgentStreamParser::new(RunnerKind::Codex);
        let mut ev = p.feed(CODEX.as_bytes());
        ev.extend(p.finish(0));
        assert_eq!(kinds(&ev), [Started, ToolUse, ToolResult, Text, Completed]);
        assert_eq!(ev[1].text, "bash -lc ls");
        assert_eq!(ev[2].text, "a.txt\n");
        assert_eq!(ev[3].text, "All set.");
        assert_eq!(ev[4].json["usage"]["output_tokens"], 5);
        assert_eq!(
            ev[4].text, "All set.",
            "the final answer is the completion's text"
        );
    }

    #[test]
    fn a_failed_codex_turn_is_an_error() {
        let mut p = AgentStreamParser::new(RunnerKind::Codex);
        let mut ev = p.feed(b"{\"type\":\"turn.failed\",\"error\":{\"message\":\"quota\"}}\n");
        ev.extend(p.finish(1));
        assert_eq!(kinds(&ev), [Error]);
        assert_eq!(ev[0].text, "quota");
    }

    #[test]
    fn gemini_json_document_is_parsed_at_the_end_after_warnings() {
        let out = "Loaded cached credentials.\n{\n  \"response\": \"Fixed it.\",\n  \"stats\": {\"models\": {}}\n}\n";
        let mut p = AgentStreamParser::new(RunnerKind::Gemini);
        assert!(p.feed(out.as_bytes()).is_empty());
        let ev = p.finish(0);
        assert_eq!(kinds(&ev), [Text, Started, Text, Completed]);
        assert_eq!(ev[0].text, "Loaded cached credentials.");
        assert_eq!(ev[3].text, "Fixed it.");
        let mut p = AgentStreamParser::new(RunnerKind::Gemini);
        p.feed(b"{\"response\":null,\"error\":{\"type\":\"ApiError\",\"message\":\"bad key\"}}");
        let ev = p.finish(1);
        assert_eq!(kinds(&ev), [Started, Error]);
        assert_eq!(ev[1].text, "bad key");
    }

    #[test]
    fn a_cli_that_dies_silently_still_ends_the_stream() {
        for r in [RunnerKind::Claude, RunnerKind::Codex, RunnerKind::Gemini] {
            let mut p = AgentStreamParser::new(r);
            let mut ev = p.feed(b"segmentation fault\n");
            ev.extend(p.finish(139));
            let last = ev.last().unwrap();
            assert_eq!(last.kind, Error, "{r:?}");
            assert!(last.text.contains("139"), "{}", last.text);
            let mut p = AgentStreamParser::new(r);
            let ev = p.finish(0);
            assert_eq!(kinds(&ev), [Completed]);
        }
    }

    #[test]
    fn non_json_lines_pass_through_as_text() {
        let mut p = AgentStreamParser::new(RunnerKind::Claude);
        let ev = p.feed(b"warning: slow network\n");
        assert_eq!(kinds(&ev), [Text]);
        assert_eq!(ev[0].text, "warning: slow network");
    }
}
