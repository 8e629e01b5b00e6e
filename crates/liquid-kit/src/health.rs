//! Liveness and readiness.
//!
//! `/healthz` answers as long as the process serves HTTP. `/readyz` runs every registered
//! [`ReadinessCheck`] (database, bus, cache, Docker, ...) concurrently with a deadline and
//! answers 503 naming each failing dependency, so an orchestrator stops routing to a replica
//! whose backends are gone. The gRPC health service mirrors the same verdict.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// One dependency a service needs to be ready.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// Short stable name (`database`, `bus`, `cache`).
    fn name(&self) -> &str;
    /// `Ok` when the dependency answers; `Err` with a reason for operators otherwise.
    async fn check(&self) -> Result<(), String>;
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// `ok` or `failing`.
    pub status: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// True when every check passed.
    pub ready: bool,
    /// Service name.
    pub service: String,
    /// Per-dependency results.
    pub checks: Vec<CheckResult>,
}

/// A set of readiness checks for one service.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|c| c.name().to_owned()))
            .finish()
    }
}

/// How long one check may take before it counts as failing.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    /// Adds a check.
    pub fn add(&mut self, check: Arc<dyn ReadinessCheck>) {
        self.checks.push(check);
    }

    /// Runs all checks concurrently.
    pub async fn report(&self, service: &str) -> ReadinessReport {
        let runs = self.checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            CheckResult {
                name: c.name().to_owned(),
                status: if outcome.is_ok() { "ok" } else { "failing" },
                error: outcome.err(),
            }
        });
        let checks = futures_util::future::join_all(runs).await;
        ReadinessReport {
            ready: checks.iter().all(|c| c.error.is_none()),
            service: service.to_owned(),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Result<(), String>);

    #[async_trait]
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        async fn check(&self) -> Result<(), String> {
            self.1.clone()
        }
    }

    #[tokio::test]
    async fn one_failing_dependency_makes_the_service_unready() {
        let mut r = Readiness::default();
        r.add(Arc::new(Fixed("database", Ok(()))));
        r.add(Arc::new(Fixed("bus", Err("connection refused".into()))));
        let report = r.report("cowork").await;
        assert!(!report.ready);
        assert_eq!(report.checks[0].status, "ok");
        assert_eq!(
            report.checks[1].error.as_deref(),
            Some("connection refused")
        );
    }

    #[tokio::test]
    async fn no_checks_means_ready() {
        assert!(Readiness::default().report("gateway").await.ready);
    }
}
