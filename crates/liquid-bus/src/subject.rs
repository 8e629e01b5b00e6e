//! NATS subject and name rules, shared by both implementations so they accept, refuse and match
//! alike. Pure functions, no I/O.
//!
//! A subject is dot-separated tokens; a pattern may use `*` for exactly one token and `>` as
//! the last token for one or more remaining tokens.

use crate::BusError;

/// Longest stream or consumer name JetStream accepts (it becomes part of file paths).
const MAX_NAME_LEN: usize = 255;

/// Checks a subject (`pattern == false`: no wildcards) or a subject pattern.
pub fn validate(subject: &str, pattern: bool) -> Result<(), BusError> {
    let bad = |reason| BusError::InvalidSubject {
        subject: subject.to_owned(),
        reason,
    };
    if subject.is_empty() {
        return Err(bad("subjects must not be empty"));
    }
    let last = subject.split('.').count() - 1;
    for (i, token) in subject.split('.').enumerate() {
        if token.is_empty() {
            return Err(bad("tokens between dots must not be empty"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("subjects must not contain whitespace"));
        }
        let wildcard = token == "*" || token == ">";
        if wildcard && !pattern {
            return Err(bad("wildcards are allowed only when subscribing"));
        }
        if token == ">" && i != last {
            return Err(bad("`>` may only be the last token"));
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(bad("`*` and `>` must be whole tokens"));
        }
    }
    Ok(())
}

/// Checks a stream or consumer name (`kind` is `stream` or `consumer`): non-empty, at most 255
/// characters, no whitespace, `.`, `*`, `>`, `/` or `\`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), BusError> {
    let bad = |reason| BusError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("names must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("names are at most 255 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(bad(
            "names must not contain whitespace, `.`, `*`, `>`, `/` or `\\`",
        ));
    }
    Ok(())
}

/// True when the concrete `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when some subject matches both patterns (JetStream forbids two streams like that).
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("ws.*", "ws.prices"));
        assert!(!matches("ws.*", "ws.prices.btc"));
        assert!(matches("ws.>", "ws.prices.btc"));
        assert!(!matches("ws.>", "ws"));
        assert!(matches("*.prices.*", "ws.prices.btc"));
        assert!(matches(
            "evt.cowork.session.created",
            "evt.cowork.session.created"
        ));
        assert!(!matches("evt.cowork", "evt.cowork.session"));
        assert!(!matches("evt.cowork.session", "evt.cowork"));
    }

    #[test]
    fn malformed_subjects_are_rejected() {
        for bad in [
            "", " ", "a..b", ".a", "a.", "a b", "a\tb", "a.*", "a.>", "a*.b",
        ] {
            assert!(validate(bad, false).is_err(), "{bad:?}");
        }
        for bad in ["a.>.b", ">.a", "a.b*", "a. "] {
            assert!(validate(bad, true).is_err(), "{bad:?}");
        }
        assert!(validate("a.*.>", true).is_ok());
        assert!(validate(">", true).is_ok());
        assert!(validate("evt.cowork.session.created", false).is_ok());
        assert!(validate("_INBOX.abc", false).is_ok());
    }

    #[test]
    fn names_follow_jetstream_rules() {
        assert!(validate_name("stream", "cowork-events").is_ok());
        assert!(validate_name("consumer", "healer-on-cowork-events").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b"] {
            assert!(validate_name("stream", bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("stream", &"x".repeat(256)).is_err());
    }

    #[test]
    fn overlap_follows_the_wildcards() {
        assert!(overlaps("evt.a.>", "evt.*.x"));
        assert!(overlaps("evt.a.b", "evt.a.b"));
        assert!(overlaps(">", "a"));
        assert!(!overlaps("evt.a.>", "evt.b.>"));
        assert!(!overlaps("evt.a", "evt.a.b"));
        assert!(!overlaps("evt.a.>", "evt.a"));
    }
}
