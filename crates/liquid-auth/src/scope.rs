//! Scope grammar and wildcard rules. Pure: no I/O.
//!
//! A scope is `action:resource` for the platform's edge scopes (`read:prices`, `write:chat`) or
//! `resource:action` for per-service scopes (`cowork:write`); either side may be `*`. `admin:*`
//! grants everything; `cowork:*` grants every `cowork:` scope.

/// A parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<'a> {
    /// Left of the colon.
    pub head: &'a str,
    /// Right of the colon.
    pub tail: &'a str,
}

impl<'a> Scope<'a> {
    /// Parses `head:tail`; `None` for anything else.
    pub fn parse(s: &'a str) -> Option<Scope<'a>> {
        let (head, tail) = s.split_once(':')?;
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
        };
        (valid(head) && valid(tail)).then_some(Scope { head, tail })
    }
}

/// True when the granted scope covers the needed one.
pub fn scope_grants(granted: &str, needed: &str) -> bool {
    let (Some(g), Some(n)) = (Scope::parse(granted), Scope::parse(needed)) else {
        return false;
    };
    if g.head == "admin" && g.tail == "*" {
        return true;
    }
    g.head == n.head && (g.tail == "*" || g.tail == n.tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_wildcard_grants_everything() {
        assert!(scope_grants("admin:*", "write:trades"));
        assert!(scope_grants("admin:*", "cowork:write"));
    }

    #[test]
    fn resource_wildcards_stay_in_their_resource() {
        assert!(scope_grants("cowork:*", "cowork:write"));
        assert!(!scope_grants("cowork:*", "media:write"));
        assert!(scope_grants("read:*", "read:prices"));
        assert!(!scope_grants("read:*", "write:prices"));
    }

    #[test]
    fn exact_scopes_and_garbage() {
        assert!(scope_grants("write:chat", "write:chat"));
        assert!(!scope_grants("write:chat", "write:trades"));
        assert!(!scope_grants("admin", "write:chat"));
        assert!(!scope_grants("", "write:chat"));
        assert!(!scope_grants("admin:*", "nonsense"));
        assert!(!scope_grants("a b:c", "a b:c"));
    }
}
