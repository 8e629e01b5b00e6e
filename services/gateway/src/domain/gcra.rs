//! The generic cell rate algorithm (GCRA) as Envoy and Kong run it: a quota of `limit` requests
//! per `period`, a burst of the whole quota, and one stored number per key, the theoretical
//! arrival time (TAT). Pure: the caller supplies the clock and stores the TAT.
//!
//! The Redis Lua script in `ratelimit.rs` runs exactly this arithmetic in one round trip; the
//! local fallback limiter runs this function. Times are whole milliseconds.

/// A quota: at most `limit` requests per `period_ms`, all of which may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per period (at least 1).
    pub limit: u32,
    /// Period in milliseconds (at least `limit`, so the emission interval is at least 1 ms).
    pub period_ms: u64,
}

impl Quota {
    /// A quota of `limit` per `period_ms`; a zero limit counts as one.
    pub fn new(limit: u32, period_ms: u64) -> Quota {
        let limit = limit.max(1);
        Quota {
            limit,
            period_ms: period_ms.max(u64::from(limit)),
        }
    }

    /// Milliseconds one request adds to the TAT.
    pub fn emission_interval_ms(&self) -> u64 {
        (self.period_ms / u64::from(self.limit.max(1))).max(1)
    }

    /// The window the quota is spread over, `limit × interval` (equal to `period_ms` up to
    /// rounding); the TAT never runs further ahead of now than this.
    pub fn window_ms(&self) -> u64 {
        self.emission_interval_ms()
            .saturating_mul(u64::from(self.limit.max(1)))
    }
}

/// The outcome of one request against a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The quota's limit (for `RateLimit-Limit`).
    pub limit: u32,
    /// Requests that would still pass right now (for `RateLimit-Remaining`).
    pub remaining: u32,
    /// Milliseconds until the whole quota is available again (for `RateLimit-Reset`).
    pub reset_after_ms: u64,
    /// For a refused request, milliseconds until one request would pass (for `Retry-After`).
    pub retry_after_ms: u64,
}

impl Decision {
    /// This refusal as it stands `elapsed_ms` later, when no request has passed meanwhile:
    /// still a refusal, with less to wait; `None` once its retry-after has passed (a request
    /// may pass then, which only the stored TAT can decide) or for an allowance.
    ///
    /// Sound across replicas: a refusal stores nothing, and only an allowed request moves the
    /// TAT, later; so what was refused stays refused until its retry-after, whoever asks.
    pub fn later(self, elapsed_ms: u64) -> Option<Decision> {
        if self.allowed || elapsed_ms >= self.retry_after_ms {
            return None;
        }
        Some(Decision {
            retry_after_ms: self.retry_after_ms - elapsed_ms,
            reset_after_ms: self.reset_after_ms.saturating_sub(elapsed_ms),
            ..self
        })
    }
}

/// Decides one request at `now_ms` given the stored TAT (`None` for a new key). Returns the
/// decision and, when allowed, the TAT to store (it may expire `reset_after_ms` from now).
///
/// The arithmetic saturates: a TAT or quota near `u64::MAX` (a corrupt stored value, a period
/// past what `validate` accepts) refuses the request instead of overflowing.
pub fn decide(quota: Quota, stored_tat_ms: Option<u64>, now_ms: u64) -> (Decision, Option<u64>) {
    let interval = quota.emission_interval_ms();
    let window = quota.window_ms();
    let tat = stored_tat_ms.unwrap_or(now_ms).max(now_ms);
    // `tat + interval - window`, in an order that cannot overflow (the window is at least one
    // interval).
    let allow_at = tat.saturating_sub(window.saturating_sub(interval));
    if now_ms < allow_at {
        let decision = Decision {
            allowed: false,
            limit: quota.limit,
            remaining: 0,
            reset_after_ms: tat - now_ms,
            retry_after_ms: allow_at - now_ms,
        };
        return (decision, None);
    }
    let new_tat = tat.saturating_add(interval);
    let ahead = new_tat - now_ms;
    let remaining = window.saturating_sub(ahead) / interval;
    let decision = Decision {
        allowed: true,
        limit: quota.limit,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_after_ms: ahead,
        retry_after_ms: 0,
    };
    (decision, Some(new_tat))
}

/// Whole seconds for a header, rounded up so a client that waits that long is never early.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(quota: Quota, times: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| {
                let (d, new) = decide(quota, tat, now);
                if let Some(t) = new {
                    tat = Some(t);
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn the_whole_quota_may_come_at_once_then_one_per_interval() {
        let q = Quota::new(100, 900_000);
        assert_eq!(q.emission_interval_ms(), 9_000);
        let mut tat = None;
        for i in 0..100u32 {
            let (d, new) = decide(q, tat, 1_000);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            tat = new;
        }
        let (d, new) = decide(q, tat, 1_000);
        assert!(!d.allowed);
        assert_eq!(new, None, "a refusal stores nothing");
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ms, 9_000);
        assert_eq!(d.reset_after_ms, 900_000);
        // One interval later exactly one more passes.
        let (d, new) = decide(q, tat, 10_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let (d, _) = decide(q, new, 10_000);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 9_000);
    }

    #[test]
    fn a_refusal_held_for_a_while_is_what_deciding_then_would_say() {
        let q = Quota::new(2, 10_000);
        let (_, tat) = decide(q, None, 0);
        let (_, tat) = decide(q, tat, 0);
        let (refused, stored) = decide(q, tat, 1_000);
        assert!(!refused.allowed);
        assert_eq!(stored, None);
        for elapsed in [0, 1, 2_500, 3_999] {
            let (fresh, _) = decide(q, tat, 1_000 + elapsed);
            assert_eq!(refused.later(elapsed), Some(fresh), "{elapsed} ms later");
        }
        // At its retry-after a request may pass: held no longer.
        assert_eq!(refused.retry_after_ms, 4_000);
        assert!(decide(q, tat, 5_000).0.allowed);
        assert_eq!(refused.later(4_000), None);
        // An allowance says nothing about later requests.
        let (allowed, _) = decide(q, None, 0);
        assert_eq!(allowed.later(0), None);
    }

    #[test]
    fn a_refusal_does_not_push_the_next_allowance_further_away() {
        let q = Quota::new(2, 2_000);
        // Two pass, then hammering at t=0 keeps failing but t=1000 passes anyway.
        assert_eq!(
            run(q, &[0, 0, 0, 0, 0, 999, 1_000]),
            [true, true, false, false, false, false, true]
        );
    }

    #[test]
    fn an_idle_key_recovers_its_whole_quota() {
        let q = Quota::new(3, 3_000);
        let mut tat = None;
        for _ in 0..3 {
            tat = decide(q, tat, 0).1.or(tat);
        }
        let (d, _) = decide(q, tat, 3_000);
        assert!(d.allowed);
        assert_eq!(
            d.remaining, 2,
            "after a whole window the quota is full again"
        );
        let (d, _) = decide(q, tat, 1_000_000);
        assert_eq!(d.remaining, 2, "a stale TAT counts as now");
    }

    #[test]
    fn reset_and_retry_are_consistent() {
        let q = Quota::new(30, 900_000);
        let mut tat = None;
        let mut last = None;
        for _ in 0..31 {
            let (d, new) = decide(q, tat, 5);
            tat = new.or(tat);
            last = Some(d);
        }
        let d = last.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 30_000);
        assert_eq!(ceil_secs(d.retry_after_ms), 30);
        assert!(d.reset_after_ms >= d.retry_after_ms);
    }

    #[test]
    fn degenerate_quotas_are_clamped() {
        let q = Quota::new(0, 0);
        assert_eq!(q.limit, 1);
        assert_eq!(q.emission_interval_ms(), 1);
        assert_eq!(run(q, &[0, 0, 1]), [true, false, true]);
        let q = Quota::new(1_000, 10);
        assert_eq!(
            q.period_ms, 1_000,
            "the interval is at least one millisecond"
        );
    }

    #[test]
    fn quotas_and_tats_at_the_top_of_the_range_refuse_rather_than_overflow() {
        let q = Quota::new(1, u64::MAX);
        assert_eq!(q.window_ms(), u64::MAX);
        let (d, new) = decide(q, Some(u64::MAX - 1), 0);
        assert!(!d.allowed, "the TAT is as far ahead as it can be");
        assert_eq!(new, None);
        assert_eq!(d.retry_after_ms, u64::MAX - 1);
        // A full quota's TAT at the end of the range: refused with the usual figures.
        let (d, new) = decide(Quota::new(3, 3_000), Some(u64::MAX), u64::MAX - 3_000);
        assert!(!d.allowed);
        assert_eq!(new, None);
        assert_eq!((d.retry_after_ms, d.reset_after_ms), (1_000, 3_000));
        // One interval later one passes; the stored TAT saturates rather than wraps.
        let (d, new) = decide(Quota::new(3, 3_000), Some(u64::MAX), u64::MAX - 2_000);
        assert!(d.allowed);
        assert_eq!(new, Some(u64::MAX));
        let q = Quota {
            limit: u32::MAX,
            period_ms: 0,
        };
        assert_eq!(q.window_ms(), u64::from(u32::MAX));
        let (d, _) = decide(q, None, u64::MAX);
        assert!(d.allowed, "a new key at the end of time is still allowed");
        let q = Quota {
            limit: 0,
            period_ms: 10,
        };
        assert_eq!((q.emission_interval_ms(), q.window_ms()), (10, 10));
    }

    #[test]
    fn rounding_up_never_tells_a_client_to_come_back_early() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000), 1);
        assert_eq!(ceil_secs(1_001), 2);
    }
}
