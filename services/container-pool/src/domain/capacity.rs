//! Capacity accounting of one template's pool: what exists, what may be created, what the
//! replenisher should add and which idle containers have outlived their TTL.
//!
//! The invariant the pool keeps under one lock: `idle + claimed + creating + resetting ≤
//! max_total`. Creations in flight count from the moment they are decided, so concurrent
//! acquires can never overshoot; containers being reset still count, so a release never
//! frees capacity before the container is clean or gone.

use std::time::Duration;

use serde::Serialize;

/// Containers of one template, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    /// Ready for a claim.
    pub idle: u32,
    /// Claimed.
    pub busy: u32,
    /// Being created.
    pub creating: u32,
    /// Released, being reset or removed.
    pub resetting: u32,
    /// Callers waiting for one.
    pub waiting: u32,
}

impl Counts {
    /// Everything that counts against `max_total`.
    pub fn total(&self) -> u32 {
        self.idle + self.busy + self.creating + self.resetting
    }

    /// Whether one more container may be created under `max_total`.
    pub fn may_create(&self, max_total: u32) -> bool {
        self.total() < max_total
    }
}

/// How many containers the replenisher should start now: enough to bring idle plus those on
/// their way up to `min_idle`, plus one for each waiter nothing is coming for yet, within
/// `max_total`.
pub fn replenish_count(c: &Counts, min_idle: u32, max_total: u32) -> u32 {
    let coming = c.idle + c.creating + c.resetting;
    let wanted = (min_idle + c.waiting).saturating_sub(coming);
    let room = max_total.saturating_sub(c.total());
    wanted.min(room)
}

/// Indices (into `idle_ages`, oldest first as they sit in the idle queue) of idle containers to
/// remove: those idle longer than `ttl`, but never so many that fewer than `min_idle` remain.
pub fn expired_idle(idle_ages: &[Duration], min_idle: u32, ttl: Duration) -> Vec<usize> {
    let keep = usize::try_from(min_idle).unwrap_or(usize::MAX);
    let removable = idle_ages.len().saturating_sub(keep);
    idle_ages
        .iter()
        .enumerate()
        .filter(|(_, age)| **age > ttl)
        .map(|(i, _)| i)
        .take(removable)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(idle: u32, busy: u32, creating: u32, resetting: u32, waiting: u32) -> Counts {
        Counts {
            idle,
            busy,
            creating,
            resetting,
            waiting,
        }
    }

    #[test]
    fn creations_in_flight_and_resets_count_against_the_maximum() {
        assert!(c(0, 0, 0, 0, 0).may_create(1));
        assert!(!c(0, 0, 1, 0, 0).may_create(1));
        assert!(!c(0, 0, 0, 1, 0).may_create(1));
        assert!(!c(1, 2, 1, 0, 5).may_create(4));
        assert_eq!(c(1, 2, 3, 4, 100).total(), 10, "waiters are not containers");
    }

    #[test]
    fn replenish_tops_up_to_min_idle_within_the_maximum() {
        assert_eq!(replenish_count(&c(0, 0, 0, 0, 0), 2, 4), 2);
        assert_eq!(replenish_count(&c(1, 0, 0, 0, 0), 2, 4), 1);
        assert_eq!(
            replenish_count(&c(1, 0, 1, 0, 0), 2, 4),
            0,
            "one is on its way"
        );
        assert_eq!(replenish_count(&c(0, 3, 0, 0, 0), 2, 4), 1, "only one fits");
        assert_eq!(replenish_count(&c(0, 4, 0, 0, 3), 2, 4), 0, "full");
        assert_eq!(replenish_count(&c(3, 0, 0, 0, 0), 2, 4), 0, "above min");
        assert_eq!(
            replenish_count(&c(0, 0, 0, 1, 0), 1, 4),
            0,
            "a reset returns one"
        );
    }

    #[test]
    fn waiters_get_containers_created_for_them() {
        assert_eq!(replenish_count(&c(0, 1, 0, 0, 2), 0, 4), 2);
        assert_eq!(replenish_count(&c(0, 1, 1, 0, 2), 0, 4), 1);
        assert_eq!(replenish_count(&c(0, 3, 0, 0, 2), 0, 4), 1);
    }

    #[test]
    fn expired_idle_keeps_min_idle_and_only_takes_expired() {
        let s = Duration::from_secs;
        let ages = [s(100), s(50), s(5)];
        assert_eq!(expired_idle(&ages, 0, s(10)), vec![0, 1]);
        assert_eq!(expired_idle(&ages, 2, s(10)), vec![0]);
        assert_eq!(expired_idle(&ages, 3, s(10)), Vec::<usize>::new());
        assert_eq!(expired_idle(&ages, 0, s(1000)), Vec::<usize>::new());
        assert_eq!(expired_idle(&[], 0, s(0)), Vec::<usize>::new());
    }
}
