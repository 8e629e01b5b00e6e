//! Coding-agent runners: which one takes a task, and the exact command line each CLI gets.
//!
//! The task analyzer classifies a task by the words in it (security, UI, API/backend, tests,
//! docs, other). The choice follows a preference per class — Claude Code for security and UI,
//! Gemini CLI for backend, Gemini CLI or Codex for tests — among the CLIs the images carry,
//! and falls back to the platform's own model agent. Command lines are argv (never a shell
//! string), in the forms each CLI documents for non-interactive runs:
//! `claude -p <task> --output-format stream-json --verbose --allowedTools <list>`,
//! `gemini -m <model> -p <task> -o json --approval-mode <mode>`, `codex exec --json <task>`.

use serde::Serialize;

/// What a task is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Vulnerabilities, auth, secrets handling.
    Security,
    /// Front end, styling, components.
    Ui,
    /// APIs, services, databases.
    Backend,
    /// Writing or fixing tests.
    Tests,
    /// Documentation.
    Docs,
    /// Anything else.
    Other,
}

/// A runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// Anthropic's Claude Code CLI.
    Claude,
    /// Google's Gemini CLI.
    Gemini,
    /// OpenAI's Codex CLI.
    Codex,
    /// The platform's own model agent (no CLI).
    Platform,
}

impl RunnerKind {
    /// Parses `claude`, `gemini`, `codex` or `platform`.
    pub fn parse(s: &str) -> Option<RunnerKind> {
        match s {
            "claude" => Some(RunnerKind::Claude),
            "gemini" => Some(RunnerKind::Gemini),
            "codex" => Some(RunnerKind::Codex),
            "platform" => Some(RunnerKind::Platform),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Claude => "claude",
            RunnerKind::Gemini => "gemini",
            RunnerKind::Codex => "codex",
            RunnerKind::Platform => "platform",
        }
    }

    /// The environment variable the CLI reads its API key from.
    pub fn key_variable(self) -> Option<&'static str> {
        match self {
            RunnerKind::Claude => Some("ANTHROPIC_API_KEY"),
            RunnerKind::Gemini => Some("GEMINI_API_KEY"),
            RunnerKind::Codex => Some("OPENAI_API_KEY"),
            RunnerKind::Platform => None,
        }
    }
}

const KEYWORDS: &[(TaskKind, &[&str])] = &[
    (
        TaskKind::Security,
        &[
            "security",
            "vulnerability",
            "vulnerabilities",
            "vulnerable",
            "cve",
            "xss",
            "csrf",
            "injection",
            "exploit",
            "owasp",
            "sanitize",
            "sanitise",
            "secret",
            "secrets",
            "credential",
            "credentials",
            "authz",
            "privilege",
            "escalation",
            "audit",
            "ssrf",
        ],
    ),
    (
        TaskKind::Ui,
        &[
            "ui",
            "ux",
            "css",
            "html",
            "frontend",
            "front-end",
            "component",
            "components",
            "react",
            "vue",
            "svelte",
            "layout",
            "button",
            "style",
            "styles",
            "styling",
            "accessibility",
            "a11y",
            "responsive",
            "page",
            "screen",
            "dark",
        ],
    ),
    (
        TaskKind::Backend,
        &[
            "api",
            "endpoint",
            "endpoints",
            "backend",
            "back-end",
            "server",
            "database",
            "sql",
            "migration",
            "grpc",
            "rest",
            "handler",
            "service",
            "query",
            "queue",
            "cache",
            "postgres",
            "redis",
        ],
    ),
    (
        TaskKind::Tests,
        &[
            "test",
            "tests",
            "testing",
            "coverage",
            "flaky",
            "assert",
            "assertion",
            "spec",
            "unit",
            "integration",
            "regression",
            "fixture",
            "fixtures",
        ],
    ),
    (
        TaskKind::Docs,
        &[
            "doc",
            "docs",
            "documentation",
            "readme",
            "changelog",
            "guide",
            "tutorial",
            "docstring",
            "docstrings",
            "comments",
            "typo",
        ],
    ),
];

/// Ties go to the class listed first here.
const TIE_ORDER: [TaskKind; 5] = [
    TaskKind::Security,
    TaskKind::Tests,
    TaskKind::Ui,
    TaskKind::Backend,
    TaskKind::Docs,
];

/// Classifies a task by its words.
pub fn analyze(task: &str) -> TaskKind {
    let lower = task.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut best = (TaskKind::Other, 0usize);
    for kind in TIE_ORDER {
        let list = KEYWORDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| *l)
            .unwrap_or(&[]);
        let hits = words.iter().filter(|w| list.contains(w)).count();
        if hits > best.1 {
            best = (kind, hits);
        }
    }
    best.0
}

/// The CLIs preferred for a class, best first (the platform agent always comes last).
pub fn preference(kind: TaskKind) -> &'static [RunnerKind] {
    match kind {
        TaskKind::Security | TaskKind::Ui => &[RunnerKind::Claude],
        TaskKind::Backend => &[RunnerKind::Gemini],
        TaskKind::Tests => &[RunnerKind::Gemini, RunnerKind::Codex],
        TaskKind::Docs | TaskKind::Other => {
            &[RunnerKind::Claude, RunnerKind::Gemini, RunnerKind::Codex]
        }
    }
}

/// What the selection decided and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerChoice {
    /// The runner.
    pub runner: RunnerKind,
    /// The task's class.
    pub kind: TaskKind,
    /// Why, in words.
    pub reason: String,
}

/// Picks a runner: the caller's explicit one when available, else the first preferred CLI
/// that is available, else the platform agent.
pub fn choose(task: &str, available: &[RunnerKind], explicit: Option<RunnerKind>) -> RunnerChoice {
    let kind = analyze(task);
    if let Some(r) = explicit
        && (r == RunnerKind::Platform || available.contains(&r))
    {
        return RunnerChoice {
            runner: r,
            kind,
            reason: format!("{} was asked for", r.as_str()),
        };
    }
    for r in preference(kind) {
        if available.contains(r) {
            let mut reason = format!("{} is preferred for {kind:?} tasks", r.as_str());
            if let Some(asked) = explicit {
                reason = format!("{} is not available; {reason}", asked.as_str());
            }
            return RunnerChoice {
                runner: *r,
                kind,
                reason: reason.to_lowercase(),
            };
        }
    }
    RunnerChoice {
        runner: RunnerKind::Platform,
        kind,
        reason: format!(
            "no preferred cli ({}) is available; the platform agent takes it",
            preference(kind)
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The tools Claude Code may use for a class of task.
pub fn claude_tools(kind: TaskKind) -> &'static [&'static str] {
    match kind {
        TaskKind::Docs => &["Read", "Edit", "Write", "Glob", "Grep"],
        TaskKind::Security => &["Read", "Glob", "Grep", "Edit", "Bash"],
        _ => &["Read", "Edit", "Write", "Glob", "Grep", "Bash"],
    }
}

/// Default model of the Gemini CLI (`-m` is always passed).
pub const GEMINI_DEFAULT_MODEL: &str = "gemini-2.5-pro";

/// The argv of a CLI run; `command` is the CLI's executable.
pub fn command_line(
    runner: RunnerKind,
    command: &str,
    task: &str,
    kind: TaskKind,
    model: Option<&str>,
) -> Option<Vec<String>> {
    let s = |x: &str| x.to_owned();
    match runner {
        RunnerKind::Claude => {
            let mut argv = vec![
                s(command),
                s("-p"),
                s(task),
                s("--output-format"),
                s("stream-json"),
                s("--verbose"),
                s("--allowedTools"),
                claude_tools(kind).join(","),
            ];
            if let Some(m) = model {
                argv.extend([s("--model"), s(m)]);
            }
            Some(argv)
        }
        RunnerKind::Gemini => Some(vec![
            s(command),
            s("-m"),
            s(model.unwrap_or(GEMINI_DEFAULT_MODEL)),
            s("-p"),
            s(task),
            s("-o"),
            s("json"),
            // The container is the sandbox and nobody is there to approve: tools run unasked.
            s("--approval-mode"),
            s("yolo"),
        ]),
        RunnerKind::Codex => {
            let mut argv = vec![s(command), s("exec"), s("--json")];
            if let Some(m) = model {
                argv.extend([s("-m"), s(m)]);
            }
            argv.push(s(task));
            Some(argv)
        }
        RunnerKind::Platform => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_classified_by_their_words() {
        let cases = [
            (
                "Fix the XSS vulnerability in the login form",
                TaskKind::Security,
            ),
            (
                "Rotate leaked credentials and audit secrets",
                TaskKind::Security,
            ),
            (
                "Make the settings page responsive and fix the button CSS",
                TaskKind::Ui,
            ),
            (
                "Add a REST endpoint that queries Postgres",
                TaskKind::Backend,
            ),
            (
                "Write unit tests for the parser and raise coverage",
                TaskKind::Tests,
            ),
            ("Update the README and the changelog", TaskKind::Docs),
            ("Rename the variable foo to bar", TaskKind::Other),
            ("", TaskKind::Other),
        ];
        for (task, kind) in cases {
            assert_eq!(analyze(task), kind, "{task}");
        }
    }

    #[test]
    fn ties_prefer_security_then_tests() {
        assert_eq!(analyze("test the security"), TaskKind::Security);
        assert_eq!(analyze("test the api"), TaskKind::Tests);
    }

    #[test]
    fn the_choice_follows_preference_and_availability() {
        use RunnerKind::*;
        let all = [Claude, Gemini, Codex];
        assert_eq!(choose("fix the csrf hole", &all, None).runner, Claude);
        assert_eq!(choose("restyle the css layout", &all, None).runner, Claude);
        assert_eq!(choose("add a grpc endpoint", &all, None).runner, Gemini);
        assert_eq!(choose("write tests", &all, None).runner, Gemini);
        assert_eq!(choose("write tests", &[Codex], None).runner, Codex);
        assert_eq!(
            choose("fix the csrf hole", &[Gemini], None).runner,
            Platform
        );
        assert_eq!(choose("add an endpoint", &[], None).runner, Platform);
        assert_eq!(choose("update docs", &[Codex], None).runner, Codex);
    }

    #[test]
    fn an_explicit_runner_wins_when_available() {
        use RunnerKind::*;
        let c = choose("add an endpoint", &[Claude, Gemini], Some(Claude));
        assert_eq!(c.runner, Claude);
        assert!(c.reason.contains("asked"));
        let c = choose("add an endpoint", &[Gemini], Some(Codex));
        assert_eq!(c.runner, Gemini);
        assert!(c.reason.contains("codex is not available"), "{}", c.reason);
        assert_eq!(choose("x", &[], Some(Platform)).runner, Platform);
        let c = choose("fix xss", &[], None);
        assert!(c.reason.contains("claude"), "{}", c.reason);
    }

    #[test]
    fn command_lines_are_the_documented_non_interactive_forms() {
        let claude = command_line(RunnerKind::Claude, "claude", "do it", TaskKind::Ui, None);
        assert_eq!(
            claude.unwrap(),
            [
                "claude",
                "-p",
                "do it",
                "--output-format",
                "stream-json",
                "--verbose",
                "--allowedTools",
                "Read,Edit,Write,Glob,Grep,Bash"
            ]
        );
        let gemini = command_line(
            RunnerKind::Gemini,
            "/opt/gemini",
            "t; rm -rf /",
            TaskKind::Backend,
            Some("gemini-2.5-flash"),
        );
        assert_eq!(
            gemini.unwrap(),
            [
                "/opt/gemini",
                "-m",
                "gemini-2.5-flash",
                "-p",
                "t; rm -rf /",
                "-o",
                "json",
                "--approval-mode",
                "yolo"
            ]
        );
        let codex = command_line(RunnerKind::Codex, "codex", "t", TaskKind::Tests, Some("o4"));
        assert_eq!(codex.unwrap(), ["codex", "exec", "--json", "-m", "o4", "t"]);
        let codex = command_line(RunnerKind::Codex, "codex", "t", TaskKind::Tests, None);
        assert_eq!(codex.unwrap(), ["codex", "exec", "--json", "t"]);
        assert!(command_line(RunnerKind::Platform, "", "t", TaskKind::Other, None).is_none());
        let claude = command_line(RunnerKind::Claude, "claude", "t", TaskKind::Docs, Some("m"));
        let claude = claude.unwrap();
        assert!(claude.ends_with(&["--model".to_owned(), "m".to_owned()]));
        assert!(claude.contains(&"Read,Edit,Write,Glob,Grep".to_owned()));
    }

    #[test]
    fn runner_names_round_trip() {
        for r in [
            RunnerKind::Claude,
            RunnerKind::Gemini,
            RunnerKind::Codex,
            RunnerKind::Platform,
        ] {
            assert_eq!(RunnerKind::parse(r.as_str()), Some(r));
        }
        assert_eq!(RunnerKind::parse("cursor"), None);
        assert_eq!(RunnerKind::Claude.key_variable(), Some("ANTHROPIC_API_KEY"));
    }
}
