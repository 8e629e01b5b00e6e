//! Where a new container goes: weighted scoring across Docker hosts.
//!
//! A host is excluded when it is disabled, unhealthy or full (idle containers count against
//! its capacity like claimed ones and those being created). Every other host scores
//! `weight × free fraction ÷ (1 + failure penalty × recent failures) ÷ (1 + load penalty ×
//! recent requests)`, where the failure and request counters decay exponentially with a
//! half-life, so an old burst of failures stops counting against a host that recovered. The
//! choice is best-of-K: one of the K best scores, drawn in proportion to its score, so that
//! simultaneous placements spread instead of herding onto the single best host.
//!
//! Pure: times are seconds passed in by the caller, randomness comes from the caller's RNG.

use rand::Rng;
use serde::Serialize;

/// A counter whose value halves every `half_life` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct DecayingCounter {
    value: f64,
    at: f64,
}

impl DecayingCounter {
    /// The value at time `now` (seconds).
    pub fn value_at(&self, now: f64, half_life: f64) -> f64 {
        if self.value == 0.0 {
            return 0.0;
        }
        let dt = (now - self.at).max(0.0);
        if half_life <= 0.0 {
            return 0.0;
        }
        self.value * 0.5_f64.powf(dt / half_life)
    }

    /// Adds `amount` at time `now`.
    pub fn add(&mut self, now: f64, half_life: f64, amount: f64) {
        self.value = self.value_at(now, half_life) + amount;
        self.at = now;
    }
}

/// How placement weighs hosts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlacementPolicy {
    /// How many of the best hosts the choice is drawn from.
    pub best_of: usize,
    /// Score divisor per recent failure.
    pub failure_penalty: f64,
    /// Score divisor per recent placement.
    pub load_penalty: f64,
    /// Half-life of the counters in seconds.
    pub half_life_secs: f64,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            best_of: 2,
            failure_penalty: 1.0,
            load_penalty: 0.05,
            half_life_secs: 60.0,
        }
    }
}

/// What placement knows of one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    /// Host name.
    pub name: String,
    /// Configured on.
    pub enabled: bool,
    /// Answered its last health check.
    pub healthy: bool,
    /// Relative preference.
    pub weight: f64,
    /// Most containers it takes.
    pub capacity: u32,
    /// Containers on it now: idle, claimed and being created.
    pub containers: u32,
    /// Recent create failures.
    pub failures: DecayingCounter,
    /// Recent placements.
    pub requests: DecayingCounter,
}

impl HostView {
    /// A healthy, enabled, empty host.
    pub fn new(name: &str, weight: f64, capacity: u32) -> HostView {
        HostView {
            name: name.to_owned(),
            enabled: true,
            healthy: true,
            weight,
            capacity,
            containers: 0,
            failures: DecayingCounter::default(),
            requests: DecayingCounter::default(),
        }
    }
}

/// The host's score at `now`, or `None` when it cannot take a container.
pub fn score(host: &HostView, now: f64, policy: &PlacementPolicy) -> Option<f64> {
    if !host.enabled || !host.healthy || host.containers >= host.capacity || host.weight <= 0.0 {
        return None;
    }
    let free = f64::from(host.capacity - host.containers) / f64::from(host.capacity);
    let failures = host.failures.value_at(now, policy.half_life_secs);
    let requests = host.requests.value_at(now, policy.half_life_secs);
    Some(
        host.weight * free
            / (1.0 + policy.failure_penalty * failures)
            / (1.0 + policy.load_penalty * requests),
    )
}

/// Picks a host index for a new container: one of the `best_of` highest scores, drawn in
/// proportion to score. `None` when every host is excluded.
pub fn choose<R: Rng + ?Sized>(
    hosts: &[HostView],
    now: f64,
    policy: &PlacementPolicy,
    rng: &mut R,
) -> Option<usize> {
    let mut scored: Vec<(usize, f64)> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| score(h, now, policy).map(|s| (i, s)))
        .collect();
    if scored.is_empty() {
        return None;
    }
    // Highest first; ties keep configuration order (stable sort).
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(policy.best_of.max(1));
    let total: f64 = scored.iter().map(|(_, s)| s).sum();
    if total <= 0.0 {
        return scored.first().map(|(i, _)| *i);
    }
    let mut x = rng.random_range(0.0..total);
    for (i, s) in &scored {
        if x < *s {
            return Some(*i);
        }
        x -= s;
    }
    scored.last().map(|(i, _)| *i)
}

/// Why no host could be chosen, for the error a caller sees.
pub fn explain_none(hosts: &[HostView]) -> String {
    if hosts.is_empty() {
        return "no hosts are configured".to_owned();
    }
    hosts
        .iter()
        .map(|h| {
            let why = if !h.enabled {
                "disabled"
            } else if !h.healthy {
                "unhealthy"
            } else if h.containers >= h.capacity {
                "full"
            } else {
                "weight 0"
            };
            format!("{}: {why}", h.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> PlacementPolicy {
        PlacementPolicy::default()
    }

    #[test]
    fn counters_halve_every_half_life() {
        let mut c = DecayingCounter::default();
        c.add(0.0, 10.0, 8.0);
        assert!((c.value_at(10.0, 10.0) - 4.0).abs() < 1e-9);
        assert!((c.value_at(30.0, 10.0) - 1.0).abs() < 1e-9);
        c.add(10.0, 10.0, 1.0);
        assert!((c.value_at(10.0, 10.0) - 5.0).abs() < 1e-9);
        assert_eq!(c.value_at(5.0, 10.0), 5.0, "time never runs backwards");
        assert_eq!(DecayingCounter::default().value_at(100.0, 10.0), 0.0);
        assert_eq!(c.value_at(20.0, 0.0), 0.0);
    }

    #[test]
    fn disabled_unhealthy_and_full_hosts_are_excluded() {
        let mut a = HostView::new("a", 1.0, 4);
        a.enabled = false;
        let mut b = HostView::new("b", 1.0, 4);
        b.healthy = false;
        let mut c = HostView::new("c", 1.0, 4);
        c.containers = 4;
        let hosts = [a, b, c];
        for h in &hosts {
            assert_eq!(score(h, 0.0, &policy()), None, "{}", h.name);
        }
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&hosts, 0.0, &policy(), &mut rng), None);
        assert_eq!(explain_none(&hosts), "a: disabled, b: unhealthy, c: full");
        assert_eq!(explain_none(&[]), "no hosts are configured");
    }

    #[test]
    fn idle_containers_count_against_capacity() {
        let mut h = HostView::new("a", 1.0, 4);
        let empty = score(&h, 0.0, &policy()).unwrap();
        h.containers = 3;
        let busy = score(&h, 0.0, &policy()).unwrap();
        assert!((empty - 1.0).abs() < 1e-9);
        assert!((busy - 0.25).abs() < 1e-9);
    }

    #[test]
    fn weight_scales_the_score() {
        let light = HostView::new("a", 1.0, 10);
        let heavy = HostView::new("b", 3.0, 10);
        let s = |h: &HostView| score(h, 0.0, &policy()).unwrap();
        assert!((s(&heavy) / s(&light) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn recent_failures_push_a_host_down_and_decay_away() {
        let mut flaky = HostView::new("flaky", 1.0, 10);
        flaky.failures.add(0.0, 60.0, 4.0);
        let fine = HostView::new("fine", 1.0, 10);
        let p = PlacementPolicy {
            best_of: 1,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let hosts = [flaky, fine];
        assert_eq!(choose(&hosts, 1.0, &p, &mut rng), Some(1));
        // Ten half-lives later the failures are worth almost nothing; config order wins ties
        // only when scores are equal, so the flaky host is close to but below the fine one.
        let later = score(&hosts[0], 600.0, &p).unwrap();
        assert!(later > 0.99 && later < 1.0, "{later}");
    }

    #[test]
    fn recent_placements_spread_load() {
        let mut hot = HostView::new("hot", 1.0, 100);
        hot.requests.add(0.0, 60.0, 40.0);
        let cold = HostView::new("cold", 1.0, 100);
        let p = PlacementPolicy {
            best_of: 1,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose(&[hot, cold], 0.0, &p, &mut rng), Some(1));
    }

    #[test]
    fn best_of_k_draws_only_among_the_top_scores_in_proportion() {
        let hosts = vec![
            HostView::new("a", 3.0, 10),
            HostView::new("b", 1.0, 10),
            HostView::new("c", 0.5, 10),
        ];
        let p = PlacementPolicy {
            best_of: 2,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            counts[choose(&hosts, 0.0, &p, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "c is never among the two best");
        // a:b should be close to 3:1.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!(ratio > 2.5 && ratio < 3.5, "{counts:?}");
    }

    #[test]
    fn best_of_one_is_deterministic_and_zero_is_treated_as_one() {
        let hosts = vec![HostView::new("a", 1.0, 10), HostView::new("b", 2.0, 10)];
        for k in [0, 1] {
            let p = PlacementPolicy {
                best_of: k,
                ..policy()
            };
            let mut rng = StdRng::seed_from_u64(9);
            for _ in 0..50 {
                assert_eq!(choose(&hosts, 0.0, &p, &mut rng), Some(1));
            }
        }
    }

    #[test]
    fn a_single_candidate_is_always_chosen() {
        let mut full = HostView::new("full", 5.0, 1);
        full.containers = 1;
        let hosts = vec![full, HostView::new("only", 0.1, 1)];
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(choose(&hosts, 0.0, &policy(), &mut rng), Some(1));
    }
}
