//! NATS subject rules, shared by the in-process bus so both match alike. Pure.

use crate::BusError;

/// Checks a subject or pattern: dot-separated non-empty tokens without whitespace; `>` only as
/// the last token; wildcards only in patterns.
pub fn validate(subject: &str, pattern: bool) -> Result<(), BusError> {
    let bad = || BusError::InvalidSubject(subject.to_owned());
    if subject.is_empty() {
        return Err(bad());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || t.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let wildcard = *t == "*" || *t == ">";
        if wildcard && !pattern {
            return Err(bad());
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(bad());
        }
    }
    Ok(())
}

/// True when `subject` matches `pattern`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("ws.*", "ws.prices"));
        assert!(!matches("ws.*", "ws.prices.btc"));
        assert!(matches("ws.>", "ws.prices.btc"));
        assert!(!matches("ws.>", "ws"));
        assert!(matches(
            "evt.cowork.session.created",
            "evt.cowork.session.created"
        ));
        assert!(!matches("evt.cowork", "evt.cowork.session"));
    }

    #[test]
    fn malformed_subjects_are_rejected() {
        assert!(validate("", false).is_err());
        assert!(validate("a..b", false).is_err());
        assert!(validate("a b", false).is_err());
        assert!(validate("a.*", false).is_err());
        assert!(validate("a.>.b", true).is_err());
        assert!(validate("a.*.>", true).is_ok());
    }
}
