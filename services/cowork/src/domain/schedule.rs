//! The agent manager's rules: priorities and their one ordering (critical > high > normal >
//! low, then the earliest due, then the oldest agent — the same in memory, in SQL and in the
//! API), retry delays (exponential back-off with jitter), when a silent agent is dead, and the
//! states of agents and sessions with the moves each allows. Pure: callers pass the clock and
//! the random draw in.

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How urgent an agent's work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Last.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before normal.
    High,
    /// First.
    Critical,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The stored rank: higher runs first (`ORDER BY priority DESC` in SQL).
    pub fn rank(self) -> i32 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }

    /// The priority of a stored rank.
    pub fn from_rank(rank: i32) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.rank() == rank)
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parses the API name.
    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// What orders the queue: the agent that sorts first runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey {
    /// Priority (higher first).
    pub priority: Priority,
    /// Not before this time, in ms since the epoch (earlier first).
    pub run_at_ms: i64,
    /// The agent (UUIDv7: older first).
    pub agent_id: Uuid,
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then(self.run_at_ms.cmp(&other.run_at_ms))
            .then(self.agent_id.cmp(&other.agent_id))
    }
}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The SQL `ORDER BY` that matches [`QueueKey`]'s ordering.
pub const QUEUE_ORDER_SQL: &str = "priority DESC, run_at_ms ASC, agent_id ASC";

/// Retry back-off settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before attempt `next_attempt` (2 for the first retry): `base · 2^(n-2)`
    /// capped at `cap`, with "equal jitter" — half fixed, half scaled by `draw` ∈ [0, 1) — so
    /// retries of many agents spread out but never come sooner than half the back-off.
    pub fn delay(&self, next_attempt: u32, draw: f64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let full = self
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap);
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = full / 2;
        half + (full - half).mul_f64(draw)
    }
}

/// True when an agent last heard from at `last_heartbeat_ms` is dead at `now_ms`.
pub fn is_dead(last_heartbeat_ms: i64, now_ms: i64, timeout: Duration) -> bool {
    let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(last_heartbeat_ms) > timeout
}

/// Where an agent (one attempt at one step) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting in the queue.
    Queued,
    /// Holding a lease and working.
    Running,
    /// Its step succeeded.
    Succeeded,
    /// Its attempt failed (a retry is a new agent).
    Failed,
    /// Fell silent and was declared dead (a retry is a new agent).
    Dead,
    /// Stopped by a person or by the session's cancellation.
    Terminated,
}

impl AgentState {
    /// Every state.
    pub const ALL: [AgentState; 6] = [
        AgentState::Queued,
        AgentState::Running,
        AgentState::Succeeded,
        AgentState::Failed,
        AgentState::Dead,
        AgentState::Terminated,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Queued => "queued",
            AgentState::Running => "running",
            AgentState::Succeeded => "succeeded",
            AgentState::Failed => "failed",
            AgentState::Dead => "dead",
            AgentState::Terminated => "terminated",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<AgentState> {
        AgentState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Queued or running.
    pub fn is_live(self) -> bool {
        matches!(self, AgentState::Queued | AgentState::Running)
    }
}

/// Where a session is in its life.
///
/// ```text
/// planning ─▶ awaiting_approval ─approve─▶ running ─▶ completed | failed
///    ▲              │   │                   │  ▲
///    └──replan──────┘   └─reject─▶ rejected │  └─resume── paused ◀─pause─┘
///  (from awaiting_approval, rejected, failed)     cancel: from any non-final state
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The planner works.
    Planning,
    /// A plan waits for a person.
    AwaitingApproval,
    /// Approved; steps run.
    Running,
    /// Nothing new starts; running steps finish.
    Paused,
    /// Every step succeeded.
    Completed,
    /// Planning failed or a step failed for good.
    Failed,
    /// The plan was rejected (a re-plan may follow).
    Rejected,
    /// Cancelled by a person.
    Cancelled,
}

/// A move a person (or the executor) asks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMove {
    /// The planner produced a plan.
    PlanReady,
    /// The planner failed.
    PlanFailed,
    /// Approve the plan.
    Approve,
    /// Reject the plan.
    Reject,
    /// Plan again.
    Replan,
    /// Stop starting steps.
    Pause,
    /// Start steps again.
    Resume,
    /// Stop everything.
    Cancel,
    /// Every step succeeded.
    Complete,
    /// A step failed for good.
    Fail,
}

impl SessionState {
    /// Every state.
    pub const ALL: [SessionState; 8] = [
        SessionState::Planning,
        SessionState::AwaitingApproval,
        SessionState::Running,
        SessionState::Paused,
        SessionState::Completed,
        SessionState::Failed,
        SessionState::Rejected,
        SessionState::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Planning => "planning",
            SessionState::AwaitingApproval => "awaiting_approval",
            SessionState::Running => "running",
            SessionState::Paused => "paused",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
            SessionState::Rejected => "rejected",
            SessionState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// No further change happens (a failed session may still be re-planned).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SessionState::Completed | SessionState::Cancelled | SessionState::Failed
        )
    }

    /// The state after `m`, or why it is not allowed.
    pub fn after(self, m: SessionMove) -> Result<SessionState, String> {
        use SessionMove as M;
        use SessionState as S;
        let next = match (self, m) {
            (S::Planning, M::PlanReady) => S::AwaitingApproval,
            (S::Planning, M::PlanFailed) => S::Failed,
            (S::AwaitingApproval, M::Approve) => S::Running,
            (S::AwaitingApproval, M::Reject) => S::Rejected,
            (S::AwaitingApproval | S::Rejected | S::Failed, M::Replan) => S::Planning,
            (S::Running, M::Pause) => S::Paused,
            (S::Paused, M::Resume) => S::Running,
            (S::Running | S::Paused, M::Complete) => S::Completed,
            (S::Running | S::Paused, M::Fail) => S::Failed,
            (s, M::Cancel) if !s.is_final() => S::Cancelled,
            (s, m) => {
                return Err(format!(
                    "a session that is {} cannot {}",
                    s.as_str(),
                    move_name(m)
                ));
            }
        };
        Ok(next)
    }
}

fn move_name(m: SessionMove) -> &'static str {
    match m {
        SessionMove::PlanReady => "take a plan",
        SessionMove::PlanFailed => "fail planning",
        SessionMove::Approve => "be approved",
        SessionMove::Reject => "be rejected",
        SessionMove::Replan => "be re-planned",
        SessionMove::Pause => "be paused",
        SessionMove::Resume => "be resumed",
        SessionMove::Cancel => "be cancelled",
        SessionMove::Complete => "complete",
        SessionMove::Fail => "fail",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn priorities_order_critical_high_normal_low_everywhere() {
        let mut ps = vec![
            Priority::Low,
            Priority::Critical,
            Priority::Normal,
            Priority::High,
        ];
        ps.sort_by(|a, b| b.cmp(a));
        assert_eq!(ps, Priority::ALL);
        for p in Priority::ALL {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        assert!(Priority::Critical.rank() > Priority::High.rank());
        assert!(Priority::Normal.rank() > Priority::Low.rank());
        assert_eq!(Priority::default(), Priority::Normal);
    }

    #[test]
    fn the_queue_orders_by_priority_then_due_time_then_age() {
        let id = |n: u128| Uuid::from_u128(n);
        let mut keys = [
            QueueKey {
                priority: Priority::Low,
                run_at_ms: 0,
                agent_id: id(1),
            },
            QueueKey {
                priority: Priority::Critical,
                run_at_ms: 50,
                agent_id: id(2),
            },
            QueueKey {
                priority: Priority::Normal,
                run_at_ms: 10,
                agent_id: id(4),
            },
            QueueKey {
                priority: Priority::Normal,
                run_at_ms: 10,
                agent_id: id(3),
            },
            QueueKey {
                priority: Priority::Normal,
                run_at_ms: 5,
                agent_id: id(9),
            },
        ];
        keys.sort();
        let order: Vec<u128> = keys.iter().map(|k| k.agent_id.as_u128()).collect();
        assert_eq!(order, [2, 9, 3, 4, 1]);
        assert_eq!(
            QUEUE_ORDER_SQL,
            "priority DESC, run_at_ms ASC, agent_id ASC"
        );
    }

    #[test]
    fn back_off_doubles_is_capped_and_jitter_stays_within_half_to_full() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(1000), "capped");
        assert_eq!(b.delay(200, 0.0), Duration::from_millis(500), "no overflow");
        assert_eq!(b.delay(2, f64::NAN), Duration::from_millis(50));
        for draw in [0.0, 0.25, 0.5, 0.99] {
            let d = b.delay(3, draw);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }

    #[test]
    fn an_agent_is_dead_only_after_the_timeout() {
        let t = Duration::from_secs(10);
        assert!(!is_dead(1_000, 11_000, t));
        assert!(is_dead(1_000, 11_001, t));
        assert!(!is_dead(5_000, 1_000, t), "a clock behind is not death");
    }

    #[test]
    fn sessions_move_only_as_the_diagram_says() {
        use SessionMove as M;
        use SessionState as S;
        assert_eq!(S::Planning.after(M::PlanReady), Ok(S::AwaitingApproval));
        assert_eq!(S::AwaitingApproval.after(M::Approve), Ok(S::Running));
        assert_eq!(S::AwaitingApproval.after(M::Reject), Ok(S::Rejected));
        assert_eq!(S::Rejected.after(M::Replan), Ok(S::Planning));
        assert_eq!(S::Failed.after(M::Replan), Ok(S::Planning));
        assert_eq!(S::Running.after(M::Pause), Ok(S::Paused));
        assert_eq!(S::Paused.after(M::Resume), Ok(S::Running));
        assert_eq!(S::Paused.after(M::Cancel), Ok(S::Cancelled));
        assert_eq!(S::Running.after(M::Complete), Ok(S::Completed));
        let err = S::Running.after(M::Approve).unwrap_err();
        assert!(err.contains("running") && err.contains("approved"), "{err}");
        assert!(S::Completed.after(M::Cancel).is_err());
        assert!(S::Cancelled.after(M::Resume).is_err());
        assert!(S::Running.after(M::Replan).is_err());
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
        for s in AgentState::ALL {
            assert_eq!(AgentState::parse(s.as_str()), Some(s));
        }
    }
}
