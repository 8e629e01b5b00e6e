//! The planner: turns a request into a validated [`Plan`].
//!
//! With a model key, the model (`planner.model`, routed by liquid-llm) gets the planner
//! directive as its system prompt and the request, the strategy, the specialists' file
//! patterns and the workspace's files, and must answer by calling the `submit_plan` tool; the
//! arguments are parsed as a plan, general steps get the specialist their files belong to,
//! and the plan is validated as an acyclic graph. An invalid plan goes back to the model as a
//! failed tool result naming every problem, up to `planner.max_attempts` answers.
//!
//! Without a key (the model routes to the offline provider) the deterministic offline planner
//! of [`crate::domain::decompose`] plans, and the plan says so (`source = offline`, summary
//! starting with `[offline]`).

use std::collections::BTreeSet;
use std::sync::Arc;

use liquid_llm::{
    ChatRequest, Message, ModelClient, ModelRouter, RouteTarget, ToolChoice, ToolDefinition,
    ToolResult,
};
use serde_json::json;

use crate::config::PlannerSection;
use crate::directives::Directives;
use crate::domain::decompose::{self, DomainRule};
use crate::domain::plan::{Plan, PlanIssue, Strategy};
use crate::error::CoworkError;

/// The tool the model answers through.
pub const SUBMIT_PLAN: &str = "submit_plan";

/// A plan and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOutcome {
    /// The validated plan.
    pub plan: Plan,
    /// `model` or `offline`.
    pub source: &'static str,
    /// `model:<name>` or `offline`.
    pub planner: String,
}

/// What the planner is asked.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest<'a> {
    /// The person's request.
    pub request: &'a str,
    /// The strategy asked for.
    pub strategy: Strategy,
    /// Paths of the workspace (relative), as many as fit.
    pub files: &'a [String],
    /// Re-plan feedback.
    pub feedback: Option<&'a str>,
    /// The plan being replaced, on a re-plan.
    pub previous: Option<&'a Plan>,
}

/// The planner.
#[derive(Clone)]
pub struct Planner {
    router: Arc<ModelRouter>,
    settings: PlannerSection,
    directives: Arc<Directives>,
}

/// The JSON schema of `submit_plan`'s arguments.
pub fn plan_schema(domains: &BTreeSet<String>) -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "strategy": {"type": "string", "enum": ["by_domain", "sequential", "parallel", "hybrid"]},
            "summary": {"type": "string"},
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "title": {"type": "string"},
                        "instructions": {"type": "string"},
                        "depends_on": {"type": "array", "items": {"type": "string"}},
                        "domain": {"type": "string", "enum": domains.iter().collect::<Vec<_>>()},
                        "file_scopes": {"type": "array", "items": {"type": "string"}},
                        "expected_artifacts": {"type": "array", "items": {"type": "string"}},
                        "priority": {"type": "string", "enum": ["critical", "high", "normal", "low"]}
                    },
                    "required": ["id", "title", "instructions"]
                }
            }
        },
        "required": ["steps"]
    })
}

fn describe_rules(rules: &[DomainRule]) -> String {
    rules
        .iter()
        .map(|r| format!("- {}: {}", r.name, r.patterns.join(", ")))
        .chain(std::iter::once("- general: anything else".to_owned()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn issues_text(issues: &[PlanIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("- {}: {}", i.field, i.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Planner {
    /// A planner over `router`.
    pub fn new(
        router: Arc<ModelRouter>,
        settings: PlannerSection,
        directives: Arc<Directives>,
    ) -> Self {
        Planner {
            router,
            settings,
            directives,
        }
    }

    /// The domains plans may name.
    pub fn domains(&self) -> BTreeSet<String> {
        decompose::domain_names(&self.settings.domains)
    }

    /// The specialists.
    pub fn rules(&self) -> &[DomainRule] {
        &self.settings.domains
    }

    /// True when the planner's model routes to the offline provider (no key).
    pub fn is_offline(&self) -> bool {
        matches!(
            self.router.resolve(&self.settings.model),
            Ok(RouteTarget::Offline { .. })
        )
    }

    /// Validates `plan` for this configuration, giving general steps their specialists.
    pub fn check(&self, mut plan: Plan) -> Result<Plan, CoworkError> {
        decompose::assign_domains(&mut plan, &self.settings.domains);
        let issues = plan.validate(&self.domains());
        if issues.is_empty() {
            Ok(plan)
        } else {
            Err(CoworkError::InvalidPlan { issues })
        }
    }

    /// Plans `req`.
    pub async fn plan(&self, req: &PlanRequest<'_>) -> Result<PlanOutcome, CoworkError> {
        if self.is_offline() {
            let plan = decompose::offline_plan(req.request, req.strategy, &self.settings.domains);
            let plan = self.check(plan)?;
            return Ok(PlanOutcome {
                plan,
                source: "offline",
                planner: "offline".into(),
            });
        }
        let mut prompt = format!(
            "Request:\n{}\n\nStrategy: {}\n\nSpecialist domains and the files they own:\n{}\n",
            req.request.trim(),
            req.strategy.as_str(),
            describe_rules(&self.settings.domains)
        );
        let listed: Vec<&String> = req
            .files
            .iter()
            .take(self.settings.max_listed_files)
            .collect();
        prompt.push_str(&format!(
            "\nWorkspace files ({} of {}):\n",
            listed.len(),
            req.files.len()
        ));
        for f in &listed {
            prompt.push_str(&format!("- {f}\n"));
        }
        if let Some(prev) = req.previous {
            prompt.push_str(&format!(
                "\nThe previous plan, which the person wants changed:\n{}\n",
                serde_json::to_string(prev).unwrap_or_default()
            ));
        }
        if let Some(fb) = req.feedback {
            prompt.push_str(&format!("\nThe person's feedback:\n{}\n", fb.trim()));
        }
        let mut chat = ChatRequest {
            model: self.settings.model.clone(),
            system: Some(self.directives.planner().text.clone()),
            messages: vec![Message::user(prompt)],
            tools: vec![ToolDefinition {
                name: SUBMIT_PLAN.into(),
                description: "Submit the plan: steps with dependencies forming an acyclic graph."
                    .into(),
                parameters: plan_schema(&self.domains()),
            }],
            tool_choice: ToolChoice::Tool(SUBMIT_PLAN.into()),
            ..ChatRequest::default()
        };
        let mut last_issues = Vec::new();
        for attempt in 1..=self.settings.max_attempts {
            let answer = self.router.complete(&chat).await?;
            let planner = format!("model:{}", answer.model);
            let Some(call) = answer
                .tool_calls
                .iter()
                .find(|c| c.name == SUBMIT_PLAN)
                .cloned()
            else {
                last_issues = vec![PlanIssue {
                    field: "answer".into(),
                    reason: "the model did not call submit_plan".into(),
                }];
                chat.messages.push(answer.to_message());
                chat.messages.push(Message::user(
                    "Answer by calling submit_plan with the plan.",
                ));
                continue;
            };
            let parsed: Result<Plan, CoworkError> =
                serde_json::from_value::<Plan>(call.arguments.clone())
                    .map_err(|e| CoworkError::InvalidPlan {
                        issues: vec![PlanIssue {
                            field: "arguments".into(),
                            reason: e.to_string(),
                        }],
                    })
                    .and_then(|p| self.check(p));
            match parsed {
                Ok(plan) => {
                    return Ok(PlanOutcome {
                        plan,
                        source: "model",
                        planner,
                    });
                }
                Err(CoworkError::InvalidPlan { issues }) => {
                    tracing::info!(
                        attempt,
                        problems = issues.len(),
                        "the model's plan is invalid"
                    );
                    chat.messages.push(answer.to_message());
                    chat.messages.push(Message::tool_results(vec![ToolResult {
                        call_id: call.id.clone(),
                        name: SUBMIT_PLAN.into(),
                        content: format!(
                            "The plan is not valid; fix these and call submit_plan again:\n{}",
                            issues_text(&issues)
                        ),
                        is_error: true,
                    }]));
                    last_issues = issues;
                }
                Err(e) => return Err(e),
            }
        }
        Err(CoworkError::InvalidPlan {
            issues: last_issues,
        })
    }
}
