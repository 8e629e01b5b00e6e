//! A circuit breaker per upstream service, the classic three states. Pure: the caller passes
//! the clock.
//!
//! Closed: calls pass; `failure_threshold` consecutive failures open the circuit. Open: calls
//! are refused at once until `open_for` has passed. Half-open: exactly one probe passes; its
//! success closes the circuit, its failure opens it again for another `open_for`.

use std::time::{Duration, Instant};

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before letting one probe through.
    pub open_for: Duration,
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until the instant.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is out; other calls are refused until it answers.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, and a number for a gauge (0, 1, 2).
    pub fn label(&self) -> (&'static str, f64) {
        match self {
            BreakerState::Closed { .. } => ("closed", 0.0),
            BreakerState::Open { .. } => ("open", 1.0),
            BreakerState::HalfOpen => ("half_open", 2.0),
        }
    }
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead as the half-open probe.
    Probe,
    /// Refused; a probe may go after this long.
    Refuse(Duration),
}

/// One upstream's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                open_for: config.open_for,
            },
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make a call at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Pass,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::Open { until } => Admission::Refuse(until - now),
            // The probe is out; everyone else waits for it.
            BreakerState::HalfOpen => Admission::Refuse(self.config.open_for),
        }
    }

    /// Records a successful call: the circuit closes.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records a failed call at `now`; true when this failure opened the circuit.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    self.state = BreakerState::Open {
                        until: now + self.config.open_for,
                    };
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open {
                    until: now + self.config.open_for,
                };
                true
            }
            // A late answer of a call admitted before the circuit opened changes nothing.
            BreakerState::Open { .. } => false,
        }
    }

    /// Forgets a probe that never produced an answer (the caller gave up), so the next call
    /// may probe instead of waiting forever.
    pub fn on_abandoned_probe(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn consecutive_failures_open_the_circuit() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.admit(t0), Admission::Pass);
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0), "the third failure opens it");
        assert_eq!(b.state().label().0, "open");
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admission::Refuse(Duration::from_secs(6))
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert_eq!(b.admit(t0), Admission::Pass);
    }

    #[test]
    fn after_the_wait_one_probe_decides() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(
            matches!(b.admit(later), Admission::Refuse(_)),
            "only one probe at a time"
        );
        b.on_success();
        assert_eq!(b.admit(later), Admission::Pass);
        assert_eq!(b.state().label(), ("closed", 0.0));
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(b.on_failure(later));
        assert!(matches!(
            b.admit(later + Duration::from_secs(9)),
            Admission::Refuse(_)
        ));
        assert_eq!(b.admit(later + Duration::from_secs(10)), Admission::Probe);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Admission::Probe);
        b.on_abandoned_probe(later);
        assert_eq!(b.admit(later), Admission::Probe);
    }

    #[test]
    fn late_failures_while_open_do_not_extend_the_wait() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert!(!b.on_failure(t0 + Duration::from_secs(5)));
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admission::Probe);
    }

    #[test]
    fn a_zero_threshold_behaves_as_one() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            open_for: Duration::from_secs(1),
        });
        assert!(b.on_failure(t0));
    }
}
