//! Defaults derived from what the hosts have: how many containers a template may have and how
//! many to keep idle, and how many containers a Docker host takes. Pure arithmetic; the facts
//! are read elsewhere (Docker's `info`, `/proc/meminfo`, the CPU count).
//!
//! Rules: memory limits are budgets, so a host gives half of its memory to pooled containers
//! (the rest is the engine's, the service's and the page cache's); at most 64 containers of one
//! template; idle capacity is half the cores (a start costs about one core for 0.2 s), at most 4.

use serde::Serialize;

/// What a host (or all enabled hosts together) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct HostFacts {
    /// CPU cores.
    pub cores: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl HostFacts {
    /// The facts of several hosts together.
    pub fn sum<'a>(facts: impl IntoIterator<Item = &'a HostFacts>) -> HostFacts {
        facts
            .into_iter()
            .fold(HostFacts::default(), |a, f| HostFacts {
                cores: a.cores.saturating_add(f.cores),
                memory_mib: a.memory_mib.saturating_add(f.memory_mib),
            })
    }
}

/// Most containers of one template when the configuration does not say.
pub fn default_max_total(facts: &HostFacts, memory_mib: u64) -> u32 {
    let budget = facts.memory_mib / 2;
    let n = budget / memory_mib.max(1);
    u32::try_from(n).unwrap_or(u32::MAX).clamp(1, 64)
}

/// Idle containers to keep when the configuration does not say.
pub fn default_min_idle(facts: &HostFacts, max_total: u32) -> u32 {
    (facts.cores / 2).clamp(1, 4).min(max_total)
}

/// Containers a host takes when its configuration does not say: its memory budget in units of
/// the largest template's memory limit, at least 1.
pub fn default_host_capacity(facts: &HostFacts, largest_memory_mib: u64) -> u32 {
    let n = (facts.memory_mib / 2) / largest_memory_mib.max(1);
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// Parses `MemTotal:` of /proc/meminfo into MiB.
pub fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_memory_and_cores_within_bounds() {
        let small = HostFacts {
            cores: 2,
            memory_mib: 1024,
        };
        assert_eq!(default_max_total(&small, 512), 1);
        assert_eq!(default_min_idle(&small, 1), 1);
        let here = HostFacts {
            cores: 2,
            memory_mib: 24 * 1024,
        };
        assert_eq!(default_max_total(&here, 512), 24);
        assert_eq!(default_min_idle(&here, 24), 1);
        let big = HostFacts {
            cores: 64,
            memory_mib: 1024 * 1024,
        };
        assert_eq!(default_max_total(&big, 256), 64);
        assert_eq!(default_min_idle(&big, 64), 4);
        assert_eq!(default_max_total(&HostFacts::default(), 512), 1);
        assert_eq!(default_max_total(&here, 0), 64, "no division by zero");
    }

    #[test]
    fn host_capacity_and_sums() {
        let a = HostFacts {
            cores: 2,
            memory_mib: 4096,
        };
        let b = HostFacts {
            cores: 4,
            memory_mib: 8192,
        };
        let s = HostFacts::sum([&a, &b]);
        assert_eq!(
            s,
            HostFacts {
                cores: 6,
                memory_mib: 12288
            }
        );
        assert_eq!(default_host_capacity(&a, 512), 4);
        assert_eq!(default_host_capacity(&HostFacts::default(), 512), 1);
    }

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:       24591456 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(24015));
        assert_eq!(parse_meminfo_total_mib("nothing"), None);
    }
}
