//! Decomposition: which specialist agent a file belongs to (domains chosen by file patterns,
//! from configuration), how steps are wired for each strategy (sequential, parallel, hybrid,
//! by domain), and the deterministic offline planner used when no model key is configured.
//! Pure.
//!
//! The offline planner does not understand language and says so in the plan's summary: it
//! turns each list item of the request (`- `, `* `, `1. `, `1) `) into a step, keeps the lines
//! under an item (including `@tool <name> {json}` directives, which the offline model provider
//! executes) as that step's instructions, picks each step's domain from the paths the item
//! mentions, and wires the steps by the strategy.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::glob;
use crate::domain::plan::{Plan, PlanStep, Strategy};
use crate::domain::schedule::Priority;

/// The domain of steps no rule claims.
pub const GENERAL: &str = "general";
/// The domain whose steps run after the others under `by_domain`.
pub const TEST: &str = "test";

/// One specialist: a domain name and the file patterns it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRule {
    /// Domain name (`ui`, `api`, `security`, `test`, ...); also names the agent directive
    /// `agents/<name>.md`.
    pub name: String,
    /// Patterns of the files it owns.
    pub patterns: Vec<String>,
}

/// The default specialists, in precedence order (the first rule that matches a file wins, so
/// an auth file under `server/src` belongs to security, not API).
pub fn default_rules() -> Vec<DomainRule> {
    let rule = |name: &str, patterns: &[&str]| DomainRule {
        name: name.into(),
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
    };
    vec![
        rule("security", &["**/auth/**/*.ts", "**/security/**/*.ts"]),
        rule("test", &["tests/**/*.ts", "**/*.test.ts"]),
        rule("ui", &["src/components/**/*.tsx"]),
        rule("api", &["server/src/**/*.ts"]),
    ]
}

/// Every domain a plan may name: the rules' and [`GENERAL`].
pub fn domain_names(rules: &[DomainRule]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    names.insert(GENERAL.into());
    names
}

/// The domain owning `path` (first matching rule), else [`GENERAL`].
pub fn classify<'a>(rules: &'a [DomainRule], path: &str) -> &'a str {
    rules
        .iter()
        .find(|r| r.patterns.iter().any(|p| glob::matches(p, path)))
        .map_or(GENERAL, |r| r.name.as_str())
}

/// The domain of a step from the paths it names: the first rule (in precedence order) that
/// owns any of them, else [`GENERAL`].
pub fn domain_of_paths<'a>(rules: &'a [DomainRule], paths: &[String]) -> &'a str {
    rules
        .iter()
        .find(|r| {
            paths
                .iter()
                .any(|path| r.patterns.iter().any(|p| glob::matches(p, path)))
        })
        .map_or(GENERAL, |r| r.name.as_str())
}

/// Gives a `general` step the specialist its file scopes and artifacts belong to.
pub fn assign_domains(plan: &mut Plan, rules: &[DomainRule]) {
    for s in &mut plan.steps {
        if s.domain == GENERAL {
            let mut paths = s.file_scopes.clone();
            paths.extend(s.expected_artifacts.iter().cloned());
            s.domain = domain_of_paths(rules, &paths).to_owned();
        }
    }
}

/// The strategy `auto` resolves to for steps of these domains: one step runs alone
/// (`sequential`), several domains are split among specialists (`by_domain`), several steps of
/// one domain run side by side (`parallel`).
pub fn resolve_auto(domains: &[&str]) -> Strategy {
    let distinct: BTreeSet<&&str> = domains.iter().collect();
    if domains.len() <= 1 {
        Strategy::Sequential
    } else if distinct.len() > 1 {
        Strategy::ByDomain
    } else {
        Strategy::Parallel
    }
}

/// Sets every step's dependencies as `strategy` says (steps in plan order).
pub fn wire(steps: &mut [PlanStep], strategy: Strategy) {
    let ids: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
    let n = steps.len();
    for (i, s) in steps.iter_mut().enumerate() {
        s.depends_on = match strategy {
            Strategy::Sequential => ids[..i].last().cloned().into_iter().collect(),
            Strategy::Parallel | Strategy::Auto => Vec::new(),
            Strategy::Hybrid if n >= 2 && i == n - 1 => ids[..i].to_vec(),
            Strategy::Hybrid => Vec::new(),
            Strategy::ByDomain => Vec::new(),
        };
    }
    if strategy == Strategy::ByDomain {
        let others: Vec<String> = steps
            .iter()
            .filter(|s| s.domain != TEST)
            .map(|s| s.id.clone())
            .collect();
        for s in steps.iter_mut().filter(|s| s.domain == TEST) {
            s.depends_on = others.clone();
        }
    }
}

fn bullet(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix("- ").or_else(|| t.strip_prefix("* ")) {
        return Some(rest);
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && digits <= 3 {
        let rest = &t[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return Some(r);
        }
    }
    None
}

/// Paths an item mentions: words with a `/` or a `.` inside that look like relative paths,
/// and the `path` arguments of its `@tool` directives.
pub fn mentioned_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: &str| {
        let p = p.trim_start_matches("./");
        if !p.is_empty() && !out.iter().any(|x| x == p) {
            out.push(p.to_owned());
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("@tool")
            && let Some(i) = rest.find('{')
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&rest[i..])
            && let Some(p) = v.get("path").and_then(|p| p.as_str())
        {
            push(p);
            continue;
        }
        for word in line.split_whitespace() {
            let w = word.trim_matches(|c: char| "`'\"(),;:".contains(c));
            let w = w.trim_end_matches('.');
            let looks_like_path = (w.contains('/') || w.contains('.'))
                && !w.starts_with('/')
                && !w.contains("..")
                && !w.contains("://")
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-*".contains(c))
                && w.rsplit('/').next().is_some_and(|last| last.contains('.'));
            if looks_like_path {
                push(w);
            }
        }
    }
    out
}

/// Paths an item's `@tool write_file` directives write: its expected artifacts.
fn written_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("@tool")?.trim_start();
            let rest = rest.strip_prefix("write_file")?;
            let v: serde_json::Value = serde_json::from_str(rest.trim()).ok()?;
            v.get("path")?.as_str().map(str::to_owned)
        })
        .collect()
}

fn title_of(first_line: &str) -> String {
    let t = first_line.trim();
    let t = if t.is_empty() {
        "Carry out the request"
    } else {
        t
    };
    let mut title: String = t.chars().take(120).collect();
    if t.chars().count() > 120 {
        title.push('…');
    }
    title
}

/// The deterministic offline plan for `request` under `strategy`.
pub fn offline_plan(request: &str, strategy: Strategy, rules: &[DomainRule]) -> Plan {
    let mut preamble: Vec<&str> = Vec::new();
    let mut items: Vec<(String, Vec<&str>)> = Vec::new();
    for line in request.lines() {
        match bullet(line) {
            Some(first) => items.push((first.to_owned(), Vec::new())),
            None => match items.last_mut() {
                Some((_, body)) => body.push(line),
                None => preamble.push(line),
            },
        }
    }
    let goal = preamble.join("\n").trim().to_owned();
    if items.is_empty() {
        let first = goal.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let first = if first.trim_start().starts_with("@tool") {
            ""
        } else {
            first
        };
        items.push((first.to_owned(), Vec::new()));
    }
    let only_one = items.len() == 1;
    let mut steps: Vec<PlanStep> = items
        .iter()
        .enumerate()
        .map(|(i, (first, body))| {
            let item_text = std::iter::once(first.as_str())
                .chain(body.iter().copied())
                .collect::<Vec<_>>()
                .join("\n");
            let instructions = if only_one && !goal.is_empty() {
                goal.clone()
            } else if goal.is_empty() {
                item_text.trim().to_owned()
            } else {
                let context: String = goal
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("@tool"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if context.trim().is_empty() {
                    item_text.trim().to_owned()
                } else {
                    format!("{}\n\nContext: {}", item_text.trim(), context.trim())
                }
            };
            let instructions = if instructions.is_empty() {
                "Carry out the request.".to_owned()
            } else {
                instructions
            };
            let paths = mentioned_paths(&instructions);
            let domain = domain_of_paths(rules, &paths).to_owned();
            let mut scopes: Vec<String> = paths
                .iter()
                .filter(|p| glob::check_pattern(p).is_ok())
                .cloned()
                .collect();
            scopes.truncate(32);
            let artifacts: Vec<String> = written_paths(&instructions)
                .into_iter()
                .filter(|p| !p.starts_with('/') && !p.split('/').any(|c| c == ".."))
                .collect();
            PlanStep {
                id: format!("s{}", i + 1),
                title: title_of(first),
                instructions,
                depends_on: Vec::new(),
                domain,
                file_scopes: scopes,
                expected_artifacts: artifacts,
                priority: Priority::Normal,
            }
        })
        .collect();
    let strategy = match strategy {
        Strategy::Auto => {
            let domains: Vec<&str> = steps.iter().map(|s| s.domain.as_str()).collect();
            resolve_auto(&domains)
        }
        s => s,
    };
    wire(&mut steps, strategy);
    Plan {
        strategy,
        summary: format!(
            "[offline] Deterministic plan from Liquid's offline planner (no model key is configured; \
             it does not understand language): {} step(s) from the request's list items, strategy {}.",
            steps.len(),
            strategy.as_str()
        ),
        steps,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_belong_to_the_first_rule_that_owns_them() {
        let r = default_rules();
        assert_eq!(classify(&r, "src/components/Nav.tsx"), "ui");
        assert_eq!(classify(&r, "server/src/routes.ts"), "api");
        assert_eq!(classify(&r, "server/src/auth/jwt.ts"), "security");
        assert_eq!(classify(&r, "lib/security/crypto.ts"), "security");
        assert_eq!(classify(&r, "tests/e2e/login.ts"), "test");
        assert_eq!(classify(&r, "server/src/a.test.ts"), "test");
        assert_eq!(classify(&r, "README.md"), "general");
        assert_eq!(
            domain_names(&r).into_iter().collect::<Vec<_>>(),
            ["api", "general", "security", "test", "ui"]
        );
    }

    #[test]
    fn a_request_with_items_becomes_one_step_per_item_with_specialists() {
        let req = "Add a logout feature.\n\
                   - Add a button in src/components/Logout.tsx\n\
                   - Add the route in server/src/routes/logout.ts\n\
                   - Cover it in tests/logout.test.ts\n";
        let p = offline_plan(req, Strategy::Auto, &default_rules());
        assert_eq!(p.strategy, Strategy::ByDomain);
        assert!(p.summary.starts_with("[offline]"));
        let doms: Vec<&str> = p.steps.iter().map(|s| s.domain.as_str()).collect();
        assert_eq!(doms, ["ui", "api", "test"]);
        assert!(p.steps[0].depends_on.is_empty());
        assert_eq!(p.steps[2].depends_on, ["s1", "s2"]);
        assert!(
            p.steps[0]
                .instructions
                .contains("Context: Add a logout feature.")
        );
        assert_eq!(p.steps[0].file_scopes, ["src/components/Logout.tsx"]);
        assert!(p.validate(&domain_names(&default_rules())).is_empty());
        assert_eq!(
            p,
            offline_plan(req, Strategy::Auto, &default_rules()),
            "deterministic"
        );
    }

    #[test]
    fn directives_stay_with_their_item_and_name_the_artifacts() {
        let req = "1. Write the notes\n\
                   @tool write_file {\"path\": \"docs/notes.md\", \"content\": \"hi\"}\n\
                   2) Write the changelog\n\
                   @tool write_file {\"path\": \"CHANGELOG.md\", \"content\": \"v1\"}\n";
        let p = offline_plan(req, Strategy::Parallel, &default_rules());
        assert_eq!(p.steps.len(), 2);
        assert!(p.steps[0].instructions.contains("@tool write_file"));
        assert!(!p.steps[0].instructions.contains("CHANGELOG"));
        assert_eq!(p.steps[0].expected_artifacts, ["docs/notes.md"]);
        assert_eq!(p.steps[1].expected_artifacts, ["CHANGELOG.md"]);
        assert!(p.steps.iter().all(|s| s.depends_on.is_empty()));
    }

    #[test]
    fn strategies_wire_the_steps() {
        let req = "- a\n- b\n- c\n";
        let deps = |s: Strategy| -> Vec<Vec<String>> {
            offline_plan(req, s, &default_rules())
                .steps
                .into_iter()
                .map(|s| s.depends_on)
                .collect()
        };
        assert_eq!(
            deps(Strategy::Sequential),
            vec![vec![], vec!["s1".to_owned()], vec!["s2".into()]]
        );
        assert_eq!(deps(Strategy::Parallel), vec![Vec::<String>::new(); 3]);
        assert_eq!(
            deps(Strategy::Hybrid),
            vec![vec![], vec![], vec!["s1".to_owned(), "s2".into()]]
        );
        let p = offline_plan(req, Strategy::Auto, &default_rules());
        assert_eq!(p.strategy, Strategy::Parallel, "one domain, several steps");
        let single = offline_plan("just do it", Strategy::Auto, &default_rules());
        assert_eq!(single.strategy, Strategy::Sequential);
        assert_eq!(single.steps.len(), 1);
        assert_eq!(single.steps[0].instructions, "just do it");
        assert_eq!(single.steps[0].title, "just do it");
    }

    #[test]
    fn a_request_made_only_of_directives_is_one_step() {
        let req = "@tool write_file {\"path\": \"a.txt\", \"content\": \"x\"}";
        let p = offline_plan(req, Strategy::Auto, &default_rules());
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].title, "Carry out the request");
        assert_eq!(p.steps[0].instructions, req);
        assert_eq!(p.steps[0].expected_artifacts, ["a.txt"]);
    }

    #[test]
    fn general_steps_get_the_specialist_of_their_files() {
        let mut p = offline_plan("- fix it", Strategy::Auto, &default_rules());
        p.steps[0].file_scopes = vec!["server/src/auth/session.ts".into()];
        assign_domains(&mut p, &default_rules());
        assert_eq!(p.steps[0].domain, "security");
        assert_eq!(
            mentioned_paths("edit `src/a.ts`, then see https://x.io/y.html and v1.2"),
            ["src/a.ts", "v1.2"]
        );
    }
}
