//! Scope grammar, wildcard rules and the platform's scope names. Pure: no I/O.
//!
//! A scope is two segments, `namespace:name`. Per-service scopes read `resource:action`
//! (`cowork:write`); the platform's edge scopes read `action:resource` (`read:prices`). Either
//! way the first segment is the namespace a wildcard ranges over: `cowork:*` grants every
//! `cowork:` scope and `read:*` every `read:` scope. `admin:*` grants everything. A wildcard is
//! only allowed as the whole second segment, never as the namespace. Scopes are case-sensitive
//! (RFC 6749 §3.3). This module decides whether one scope covers another; what a scope allows is
//! the business of the service that checks it.

use std::fmt;
use std::str::FromStr;

use crate::AuthError;

/// Longest accepted segment; longer input is refused rather than compared.
const MAX_SEGMENT: usize = 64;

/// The second segment of a [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeAction {
    /// `*`: every name in the namespace.
    Any,
    /// One name.
    Named(String),
}

/// A parsed scope such as `cowork:write`, `read:prices`, `media:*` or `admin:*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    namespace: String,
    action: ScopeAction,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Scope {
    /// Parses `namespace:name` or `namespace:*`.
    pub fn parse(text: &str) -> Result<Scope, AuthError> {
        let invalid = || AuthError::InvalidScope(text.to_owned());
        let (namespace, action) = text.split_once(':').ok_or_else(invalid)?;
        if !valid_segment(namespace) {
            return Err(invalid());
        }
        let action = match action {
            "*" => ScopeAction::Any,
            name if valid_segment(name) => ScopeAction::Named(name.to_owned()),
            _ => return Err(invalid()),
        };
        Ok(Scope {
            namespace: namespace.to_owned(),
            action,
        })
    }

    /// The first segment.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The second segment.
    pub fn action(&self) -> &ScopeAction {
        &self.action
    }

    /// True for `admin:*`.
    pub fn is_admin(&self) -> bool {
        self.namespace == "admin" && self.action == ScopeAction::Any
    }

    /// True when holding `self` is enough for an operation that needs `needed`.
    pub fn grants(&self, needed: &Scope) -> bool {
        if self.is_admin() {
            return true;
        }
        if self.namespace != needed.namespace {
            return false;
        }
        match (&self.action, &needed.action) {
            (ScopeAction::Any, _) => true,
            (ScopeAction::Named(have), ScopeAction::Named(want)) => have == want,
            // A named scope never stands in for the whole namespace.
            (ScopeAction::Named(_), ScopeAction::Any) => false,
        }
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            ScopeAction::Any => write!(f, "{}:*", self.namespace),
            ScopeAction::Named(name) => write!(f, "{}:{name}", self.namespace),
        }
    }
}

/// True when the granted scope string covers the needed one. Unparseable input on either
/// side grants nothing.
pub fn scope_grants(granted: &str, needed: &str) -> bool {
    match (Scope::parse(granted), Scope::parse(needed)) {
        (Ok(g), Ok(n)) => g.grants(&n),
        _ => false,
    }
}

/// True when any of `granted` covers `needed`.
pub fn any_grants<'a>(granted: impl IntoIterator<Item = &'a str>, needed: &str) -> bool {
    let Ok(needed) = Scope::parse(needed) else {
        return false;
    };
    granted
        .into_iter()
        .filter_map(|g| Scope::parse(g).ok())
        .any(|g| g.grants(&needed))
}

/// The platform's scope names. Services check these; tokens carry them.
pub mod scopes {
    /// Everything, everywhere.
    pub const ADMIN: &str = "admin:*";
    /// Read market prices (gateway edge).
    pub const READ_PRICES: &str = "read:prices";
    /// Place trades (gateway edge).
    pub const WRITE_TRADES: &str = "write:trades";
    /// Chat and completions (gateway edge).
    pub const WRITE_CHAT: &str = "write:chat";
    /// Read gateway state (sessions, limits).
    pub const GATEWAY_READ: &str = "gateway:read";
    /// Change gateway state.
    pub const GATEWAY_WRITE: &str = "gateway:write";
    /// Read A2A tasks and agent cards.
    pub const A2A_READ: &str = "a2a:read";
    /// Send A2A messages, create and cancel tasks.
    pub const A2A_WRITE: &str = "a2a:write";
    /// Read cowork sessions, plans and staged changes.
    pub const COWORK_READ: &str = "cowork:read";
    /// Start sessions, approve and apply changes.
    pub const COWORK_WRITE: &str = "cowork:write";
    /// Read container pool state.
    pub const CONTAINERS_READ: &str = "containers:read";
    /// Acquire, release and run containers.
    pub const CONTAINERS_WRITE: &str = "containers:write";
    /// Read healer incidents.
    pub const HEALER_READ: &str = "healer:read";
    /// Report errors, start and verify fixes.
    pub const HEALER_WRITE: &str = "healer:write";
    /// Resolve and download plugins, read the agent directory.
    pub const REGISTRY_READ: &str = "registry:read";
    /// Publish, sign and mirror plugins.
    pub const REGISTRY_WRITE: &str = "registry:write";
    /// Read media jobs and assets.
    pub const MEDIA_READ: &str = "media:read";
    /// Generate media.
    pub const MEDIA_WRITE: &str = "media:write";

    /// Every named platform scope (for `liquid token --help`, docs and tests).
    pub const ALL: &[&str] = &[
        ADMIN,
        READ_PRICES,
        WRITE_TRADES,
        WRITE_CHAT,
        GATEWAY_READ,
        GATEWAY_WRITE,
        A2A_READ,
        A2A_WRITE,
        COWORK_READ,
        COWORK_WRITE,
        CONTAINERS_READ,
        CONTAINERS_WRITE,
        HEALER_READ,
        HEALER_WRITE,
        REGISTRY_READ,
        REGISTRY_WRITE,
        MEDIA_READ,
        MEDIA_WRITE,
    ];

    /// The read and write scope of one service.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ServiceScopes {
        /// `<svc>:read`.
        pub read: &'static str,
        /// `<svc>:write`.
        pub write: &'static str,
    }

    /// The scopes of a service by its service name (`container-pool` uses `containers:`).
    pub fn for_service(service: &str) -> Option<ServiceScopes> {
        let (read, write) = match service {
            "gateway" => (GATEWAY_READ, GATEWAY_WRITE),
            "a2a" => (A2A_READ, A2A_WRITE),
            "cowork" => (COWORK_READ, COWORK_WRITE),
            "container-pool" | "containers" => (CONTAINERS_READ, CONTAINERS_WRITE),
            "healer" => (HEALER_READ, HEALER_WRITE),
            "registry" => (REGISTRY_READ, REGISTRY_WRITE),
            "media" => (MEDIA_READ, MEDIA_WRITE),
            _ => return None,
        };
        Some(ServiceScopes { read, write })
    }
}

#[cfg(test)]
mod tests {
    use super::scopes::*;
    use super::*;

    #[test]
    fn admin_wildcard_grants_every_platform_scope() {
        for needed in ALL {
            assert!(scope_grants(ADMIN, needed), "{needed}");
        }
        assert!(scope_grants("admin:*", "anything:else"));
        assert!(scope_grants("admin:*", "cowork:*"));
    }

    #[test]
    fn namespace_wildcards_stay_in_their_namespace() {
        assert!(scope_grants("cowork:*", "cowork:write"));
        assert!(scope_grants("cowork:*", "cowork:read"));
        assert!(scope_grants("cowork:*", "cowork:*"));
        assert!(!scope_grants("cowork:*", "media:write"));
        assert!(!scope_grants("cowork:*", "coworker:write"));
        assert!(scope_grants("read:*", "read:prices"));
        assert!(!scope_grants("read:*", "write:prices"));
    }

    #[test]
    fn named_scopes_grant_only_themselves() {
        assert!(scope_grants("write:chat", "write:chat"));
        assert!(!scope_grants("write:chat", "write:trades"));
        assert!(!scope_grants("cowork:read", "cowork:write"));
        assert!(!scope_grants("cowork:write", "cowork:*"));
        assert!(!scope_grants("admin:read", "cowork:read"));
    }

    #[test]
    fn scopes_are_case_sensitive() {
        assert!(!scope_grants("Cowork:write", "cowork:write"));
        assert!(!scope_grants("ADMIN:*", "cowork:write"));
    }

    #[test]
    fn malformed_scopes_grant_nothing_and_need_nothing_grantable() {
        for bad in [
            "", "admin", ":", "a:", ":b", "*:*", "*:write", "a b:c", "a:b:c", "a:b*", "a:*b", "ä:b",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} parsed");
            assert!(!scope_grants(bad, "cowork:write"), "{bad:?} granted");
            assert!(!scope_grants("admin:*", bad), "{bad:?} was grantable");
        }
        let long = format!("{}:read", "x".repeat(MAX_SEGMENT + 1));
        assert!(Scope::parse(&long).is_err());
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in [
            "cowork:write",
            "read:prices",
            "media:*",
            "admin:*",
            "a.b-c_d:e",
        ] {
            let scope: Scope = text.parse().unwrap();
            assert_eq!(scope.to_string(), text);
        }
        let scope = Scope::parse("media:*").unwrap();
        assert_eq!(scope.namespace(), "media");
        assert_eq!(scope.action(), &ScopeAction::Any);
        assert!(!scope.is_admin());
        assert!(Scope::parse("admin:*").is_ok_and(|s| s.is_admin()));
    }

    #[test]
    fn any_grants_checks_every_granted_scope_and_skips_garbage() {
        assert!(any_grants(
            ["nonsense", "media:read", "cowork:*"],
            COWORK_WRITE
        ));
        assert!(!any_grants(["nonsense", "media:read"], COWORK_WRITE));
        assert!(!any_grants([], COWORK_WRITE));
        assert!(!any_grants(["admin:*"], "not a scope"));
    }

    #[test]
    fn every_platform_scope_parses_and_services_have_read_and_write() {
        for s in ALL {
            assert!(Scope::parse(s).is_ok(), "{s}");
        }
        for svc in [
            "gateway",
            "a2a",
            "cowork",
            "container-pool",
            "healer",
            "registry",
            "media",
        ] {
            let scopes = for_service(svc).unwrap();
            assert!(scopes.read.ends_with(":read") && scopes.write.ends_with(":write"));
            assert!(ALL.contains(&scopes.read) && ALL.contains(&scopes.write));
        }
        assert_eq!(
            for_service("container-pool").map(|s| s.write),
            Some(CONTAINERS_WRITE)
        );
        assert_eq!(for_service("nope"), None);
    }
}
