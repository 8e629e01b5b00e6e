//! The life of a staging sandbox and which operation each state allows.
//!
//! ```text
//! active ──apply──▶ applied ──rollback──▶ rolled_back
//!   │                  │
//!   ├──discard──▶ discarded
//!   └──(ttl)────▶ expired ◀──(ttl)── applied
//! ```
//!
//! Only an `active` sandbox accepts agent file operations, a diff with pending changes, an
//! apply or a discard; only an `applied` one can be rolled back. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Created; agents work in it.
    Active,
    /// Its changes were written to the source (a backup is kept for rollback).
    Applied,
    /// Dropped without applying.
    Discarded,
    /// Applied, then restored from the backup.
    RolledBack,
    /// Its time ran out; its directory is gone.
    Expired,
}

/// Something done to a sandbox as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Write the changes to the source.
    Apply,
    /// Drop the sandbox.
    Discard,
    /// Restore the source from the backup.
    Rollback,
    /// Attach or detach a container, record an A2A task, resume.
    Touch,
    /// The cleanup job found it past its time.
    Expire,
}

impl SandboxState {
    /// Every state, for metrics.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Active,
        SandboxState::Applied,
        SandboxState::Discarded,
        SandboxState::RolledBack,
        SandboxState::Expired,
    ];

    /// The stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxState::Active => "active",
            SandboxState::Applied => "applied",
            SandboxState::Discarded => "discarded",
            SandboxState::RolledBack => "rolled_back",
            SandboxState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<SandboxState> {
        SandboxState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The state after `t`, or why `t` is not allowed now.
    pub fn after(self, t: Transition) -> Result<SandboxState, String> {
        use SandboxState::*;
        match (self, t) {
            (Active, Transition::Apply) => Ok(Applied),
            (Active, Transition::Discard) => Ok(Discarded),
            (Applied, Transition::Rollback) => Ok(RolledBack),
            (Active, Transition::Touch) => Ok(Active),
            (Active | Applied, Transition::Expire) => Ok(Expired),
            (s, t) => Err(format!(
                "the sandbox is {}; {} needs {}",
                s.as_str(),
                match t {
                    Transition::Apply => "apply",
                    Transition::Discard => "discard",
                    Transition::Rollback => "rollback",
                    Transition::Touch => "this",
                    Transition::Expire => "expiry",
                },
                match t {
                    Transition::Rollback => "an applied sandbox",
                    Transition::Expire => "an active or applied sandbox",
                    _ => "an active sandbox",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        use SandboxState::*;
        assert_eq!(Active.after(Transition::Apply), Ok(Applied));
        assert_eq!(Applied.after(Transition::Rollback), Ok(RolledBack));
        assert_eq!(Active.after(Transition::Discard), Ok(Discarded));
        assert_eq!(Applied.after(Transition::Expire), Ok(Expired));
        assert!(Applied.after(Transition::Apply).is_err());
        assert!(Active.after(Transition::Rollback).is_err());
        assert!(Discarded.after(Transition::Touch).is_err());
        assert!(RolledBack.after(Transition::Expire).is_err());
        let msg = Applied.after(Transition::Discard).unwrap_err();
        assert!(msg.contains("applied"), "{msg}");
        for s in SandboxState::ALL {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
    }
}
