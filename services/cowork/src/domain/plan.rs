//! A session's plan: steps with titles, instructions, dependencies, an agent domain, file
//! scopes and expected artifacts, forming a directed acyclic graph; its validation (every
//! problem reported with the field at fault) and the graph questions the executor asks (which
//! steps are ready, in which order, which must be skipped after a failure). Pure.
//!
//! The planner's model returns a plan through the `submit_plan` tool; a person may edit it
//! before approving; both go through [`Plan::validate`] before anything runs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::domain::glob::check_pattern;
use crate::domain::schedule::Priority;

/// Most steps in one plan.
pub const MAX_STEPS: usize = 64;
/// Longest step instructions, in bytes.
pub const MAX_INSTRUCTIONS: usize = 16 * 1024;

/// How a request was decomposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Let the planner choose.
    #[default]
    Auto,
    /// One specialist agent per domain, chosen by the files' patterns; tests after the rest.
    ByDomain,
    /// Each step after the previous one.
    Sequential,
    /// Independent steps, all at once.
    Parallel,
    /// Independent steps, then one that depends on all of them (integration, verification).
    Hybrid,
}

impl Strategy {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::ByDomain => "by_domain",
            Strategy::Sequential => "sequential",
            Strategy::Parallel => "parallel",
            Strategy::Hybrid => "hybrid",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// Short id, unique in the plan (`[a-z0-9_-]`, 1 to 64); dependencies name it.
    pub id: String,
    /// One line for people.
    pub title: String,
    /// What the agent must do.
    pub instructions: String,
    /// Ids of the steps that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The specialist agent (`ui`, `api`, `security`, `test`, `general`, or a configured one).
    #[serde(default = "general")]
    pub domain: String,
    /// Files the step works on (patterns relative to the workspace).
    #[serde(default)]
    pub file_scopes: Vec<String>,
    /// Files the step is expected to produce or change (kept as artifacts).
    #[serde(default)]
    pub expected_artifacts: Vec<String>,
    /// Queue priority of the step's agent.
    #[serde(default)]
    pub priority: Priority,
}

fn general() -> String {
    "general".into()
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// How the request was decomposed.
    #[serde(default)]
    pub strategy: Strategy,
    /// What the plan does, for people.
    #[serde(default)]
    pub summary: String,
    /// The steps.
    pub steps: Vec<PlanStep>,
}

/// One problem found in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanIssue {
    /// The field at fault (`steps[2].depends_on[0]`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn issue(field: impl Into<String>, reason: impl Into<String>) -> PlanIssue {
    PlanIssue {
        field: field.into(),
        reason: reason.into(),
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("1 to 1024 characters".into());
    }
    if path.starts_with('/') {
        return Err("must be relative to the workspace".into());
    }
    if path.chars().any(char::is_control) {
        return Err("no control characters".into());
    }
    if path.split('/').any(|c| c.is_empty() || c == "..") {
        return Err("no empty or `..` components".into());
    }
    Ok(())
}

impl Plan {
    /// Every problem of the plan (empty when it may run): ids, texts, dependencies that exist
    /// and form no cycle, domains among `domains`, patterns and artifact paths.
    pub fn validate(&self, domains: &BTreeSet<String>) -> Vec<PlanIssue> {
        let mut out = Vec::new();
        if self.steps.is_empty() {
            out.push(issue("steps", "a plan has at least one step"));
        }
        if self.steps.len() > MAX_STEPS {
            out.push(issue("steps", format!("at most {MAX_STEPS} steps")));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let at = |f: &str| format!("steps[{i}].{f}");
            if !valid_id(&s.id) {
                out.push(issue(at("id"), "1 to 64 of a-z, 0-9, `-`, `_`"));
            } else if !seen.insert(s.id.as_str()) {
                out.push(issue(at("id"), format!("`{}` is used twice", s.id)));
            }
            if s.title.trim().is_empty() || s.title.len() > 200 {
                out.push(issue(at("title"), "1 to 200 characters"));
            }
            if s.instructions.trim().is_empty() || s.instructions.len() > MAX_INSTRUCTIONS {
                out.push(issue(
                    at("instructions"),
                    format!("1 to {MAX_INSTRUCTIONS} bytes"),
                ));
            }
            if !domains.contains(&s.domain) {
                out.push(issue(
                    at("domain"),
                    format!(
                        "`{}` is not one of {}",
                        s.domain,
                        domains.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for (j, p) in s.file_scopes.iter().enumerate() {
                if let Err(e) = check_pattern(p) {
                    out.push(issue(format!("steps[{i}].file_scopes[{j}]"), e));
                }
            }
            for (j, p) in s.expected_artifacts.iter().enumerate() {
                if let Err(e) = check_relative(p) {
                    out.push(issue(format!("steps[{i}].expected_artifacts[{j}]"), e));
                }
            }
        }
        let ids: BTreeSet<&str> = self.steps.iter().map(|s| s.id.as_str()).collect();
        let mut deps_ok = true;
        for (i, s) in self.steps.iter().enumerate() {
            let mut mine = BTreeSet::new();
            for (j, d) in s.depends_on.iter().enumerate() {
                let field = format!("steps[{i}].depends_on[{j}]");
                if d == &s.id {
                    out.push(issue(field, "a step cannot depend on itself"));
                    deps_ok = false;
                } else if !ids.contains(d.as_str()) {
                    out.push(issue(field, format!("no step `{d}`")));
                    deps_ok = false;
                } else if !mine.insert(d.as_str()) {
                    out.push(issue(field, format!("`{d}` is listed twice")));
                }
            }
        }
        if deps_ok && let Some(cycle) = self.cycle() {
            out.push(issue(
                "steps",
                format!("the dependencies form a cycle: {}", cycle.join(" → ")),
            ));
        }
        out
    }

    /// A dependency cycle, as the ids along it (first repeated at the end), if any.
    pub fn cycle(&self) -> Option<Vec<String>> {
        let index: BTreeMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        // 0 unvisited, 1 on the stack, 2 done; iterative depth-first search.
        let mut color = vec![0u8; self.steps.len()];
        for start in 0..self.steps.len() {
            if color[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            color[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let deps = &self.steps[node].depends_on;
                if *next < deps.len() {
                    let dep = deps[*next].as_str();
                    *next += 1;
                    let Some(&d) = index.get(dep) else { continue };
                    match color[d] {
                        0 => {
                            color[d] = 1;
                            stack.push((d, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(n, _)| *n == d).unwrap_or(0);
                            let mut ids: Vec<String> = stack[from..]
                                .iter()
                                .map(|(n, _)| self.steps[*n].id.clone())
                                .collect();
                            ids.push(self.steps[d].id.clone());
                            return Some(ids);
                        }
                        _ => {}
                    }
                } else {
                    color[node] = 2;
                    stack.pop();
                }
            }
        }
        None
    }

    /// Step ids in an order where every step comes after its dependencies (Kahn's algorithm,
    /// ties in plan order). `None` when there is a cycle.
    pub fn topological_order(&self) -> Option<Vec<String>> {
        let mut indegree: BTreeMap<&str, usize> = self
            .steps
            .iter()
            .map(|s| (s.id.as_str(), s.depends_on.len()))
            .collect();
        let mut queue: VecDeque<&str> = self
            .steps
            .iter()
            .filter(|s| s.depends_on.is_empty())
            .map(|s| s.id.as_str())
            .collect();
        let mut order = Vec::new();
        while let Some(id) = queue.pop_front() {
            order.push(id.to_owned());
            for s in &self.steps {
                if s.depends_on.iter().any(|d| d == id)
                    && let Some(n) = indegree.get_mut(s.id.as_str())
                {
                    *n -= 1;
                    if *n == 0 {
                        queue.push_back(&s.id);
                    }
                }
            }
        }
        (order.len() == self.steps.len()).then_some(order)
    }

    /// The steps grouped in waves: each wave's steps depend only on earlier waves, so a wave
    /// can run in parallel. `None` when there is a cycle.
    pub fn waves(&self) -> Option<Vec<Vec<String>>> {
        let mut level: BTreeMap<String, usize> = BTreeMap::new();
        for id in self.topological_order()? {
            let step = self.steps.iter().find(|s| s.id == id)?;
            let l = step
                .depends_on
                .iter()
                .filter_map(|d| level.get(d))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(id, l);
        }
        let mut waves: Vec<Vec<String>> = Vec::new();
        for s in &self.steps {
            let l = level[&s.id];
            if waves.len() <= l {
                waves.resize(l + 1, Vec::new());
            }
            waves[l].push(s.id.clone());
        }
        Some(waves)
    }
}

/// Where a step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its dependencies.
    Pending,
    /// Its agent waits in the queue.
    Queued,
    /// Its agent works.
    Running,
    /// Done, with artifacts.
    Succeeded,
    /// Failed for good (attempts exhausted or not retryable).
    Failed,
    /// The session was cancelled, or the agent terminated.
    Cancelled,
    /// Not run because a dependency did not succeed.
    Skipped,
}

impl StepState {
    /// Every state.
    pub const ALL: [StepState; 7] = [
        StepState::Pending,
        StepState::Queued,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Cancelled,
        StepState::Skipped,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Queued => "queued",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::Skipped => "skipped",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<StepState> {
        StepState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// No further change happens.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Cancelled | StepState::Skipped
        )
    }
}

/// What the executor does next with a session's steps, from their current states.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Pending steps whose dependencies all succeeded: spawn their agents.
    pub ready: Vec<String>,
    /// Pending steps with a dependency that failed, was cancelled or skipped: skip them.
    pub skip: Vec<String>,
    /// Every step is final.
    pub finished: bool,
    /// Every step succeeded.
    pub all_succeeded: bool,
}

/// Decides the next moves for `plan` given each step's state (by plan id). Skips propagate
/// in one call: a step whose dependency is being skipped in this call is skipped too.
pub fn progress(plan: &Plan, states: &BTreeMap<String, StepState>) -> Progress {
    let mut effective = states.clone();
    let mut out = Progress::default();
    if let Some(order) = plan.topological_order() {
        for id in order {
            let Some(step) = plan.steps.iter().find(|s| s.id == id) else {
                continue;
            };
            if effective.get(&id).copied() != Some(StepState::Pending) {
                continue;
            }
            let dep_states: Vec<StepState> = step
                .depends_on
                .iter()
                .map(|d| effective.get(d).copied().unwrap_or(StepState::Pending))
                .collect();
            if dep_states.iter().any(|s| {
                matches!(
                    s,
                    StepState::Failed | StepState::Cancelled | StepState::Skipped
                )
            }) {
                effective.insert(id.clone(), StepState::Skipped);
                out.skip.push(id);
            } else if dep_states.iter().all(|s| *s == StepState::Succeeded) {
                out.ready.push(id);
            }
        }
    }
    out.finished = plan
        .steps
        .iter()
        .all(|s| effective.get(&s.id).is_some_and(|st| st.is_final()));
    out.all_succeeded = plan
        .steps
        .iter()
        .all(|s| effective.get(&s.id) == Some(&StepState::Succeeded));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn step(id: &str, deps: &[&str]) -> PlanStep {
        PlanStep {
            id: id.into(),
            title: format!("step {id}"),
            instructions: format!("do {id}"),
            depends_on: deps.iter().map(|d| (*d).into()).collect(),
            domain: "general".into(),
            file_scopes: vec![],
            expected_artifacts: vec![],
            priority: Priority::Normal,
        }
    }

    fn plan(steps: Vec<PlanStep>) -> Plan {
        Plan {
            strategy: Strategy::Hybrid,
            summary: String::new(),
            steps,
        }
    }

    fn domains() -> BTreeSet<String> {
        ["general", "ui", "api", "security", "test"]
            .map(String::from)
            .into()
    }

    fn fields(p: &Plan) -> Vec<String> {
        p.validate(&domains())
            .into_iter()
            .map(|i| i.field)
            .collect()
    }

    #[test]
    fn a_diamond_is_valid_and_runs_in_three_waves() {
        let p = plan(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ]);
        assert!(p.validate(&domains()).is_empty());
        assert_eq!(p.topological_order().unwrap(), ["a", "b", "c", "d"]);
        assert_eq!(
            p.waves().unwrap(),
            vec![
                vec!["a".to_owned()],
                vec!["b".into(), "c".into()],
                vec!["d".into()]
            ]
        );
    }

    #[test]
    fn cycles_are_found_and_named() {
        let p = plan(vec![
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
        ]);
        let issues = p.validate(&domains());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].reason.contains("cycle"), "{issues:?}");
        let cycle = p.cycle().unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        assert!(p.topological_order().is_none());
        assert!(p.waves().is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut bad = step("B!", &["a", "nope", "a"]);
        bad.title = " ".into();
        bad.domain = "kitchen".into();
        bad.file_scopes = vec!["/etc/**".into()];
        bad.expected_artifacts = vec!["../out.txt".into()];
        let mut selfish = step("s", &["s"]);
        selfish.instructions = String::new();
        let p = plan(vec![step("a", &[]), step("a", &[]), bad, selfish]);
        let f = fields(&p);
        for want in [
            "steps[1].id",
            "steps[2].id",
            "steps[2].title",
            "steps[2].domain",
            "steps[2].file_scopes[0]",
            "steps[2].expected_artifacts[0]",
            "steps[2].depends_on[1]",
            "steps[2].depends_on[2]",
            "steps[3].depends_on[0]",
            "steps[3].instructions",
        ] {
            assert!(f.contains(&want.to_owned()), "{want} missing from {f:?}");
        }
        assert_eq!(fields(&plan(vec![])), ["steps"]);
        let many = plan(
            (0..=MAX_STEPS)
                .map(|i| step(&format!("s{i}"), &[]))
                .collect(),
        );
        assert_eq!(fields(&many), ["steps"]);
    }

    #[test]
    fn plans_parse_from_the_tool_call_json_and_refuse_unknown_fields() {
        let p: Plan = serde_json::from_value(serde_json::json!({
            "strategy": "parallel",
            "steps": [{"id": "a", "title": "A", "instructions": "x", "priority": "high"}]
        }))
        .unwrap();
        assert_eq!(p.steps[0].domain, "general");
        assert_eq!(p.steps[0].priority, Priority::High);
        assert!(
            serde_json::from_value::<Plan>(serde_json::json!({
                "steps": [{"id": "a", "title": "A", "instructions": "x", "colour": 1}]
            }))
            .is_err()
        );
    }

    #[test]
    fn progress_spawns_ready_steps_and_skips_after_failures() {
        let p = plan(vec![
            step("a", &[]),
            step("b", &[]),
            step("c", &["a"]),
            step("d", &["c"]),
            step("e", &["b"]),
        ]);
        let mut st: BTreeMap<String, StepState> = p
            .steps
            .iter()
            .map(|s| (s.id.clone(), StepState::Pending))
            .collect();
        let first = progress(&p, &st);
        assert_eq!(first.ready, ["a", "b"]);
        assert!(first.skip.is_empty() && !first.finished);
        st.insert("a".into(), StepState::Failed);
        st.insert("b".into(), StepState::Succeeded);
        let next = progress(&p, &st);
        assert_eq!(next.ready, ["e"]);
        assert_eq!(next.skip, ["c", "d"], "skips propagate in one call");
        st.insert("c".into(), StepState::Skipped);
        st.insert("d".into(), StepState::Skipped);
        st.insert("e".into(), StepState::Succeeded);
        let done = progress(&p, &st);
        assert!(done.finished && !done.all_succeeded);
        let all: BTreeMap<String, StepState> = p
            .steps
            .iter()
            .map(|s| (s.id.clone(), StepState::Succeeded))
            .collect();
        let ok = progress(&p, &all);
        assert!(ok.finished && ok.all_succeeded && ok.ready.is_empty());
    }

    #[test]
    fn step_states_round_trip_and_know_when_they_are_final() {
        for s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(s));
        }
        assert!(StepState::Skipped.is_final());
        assert!(!StepState::Queued.is_final());
    }
}
