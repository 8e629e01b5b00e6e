//! File patterns of the planner's domain configuration (`src/components/**/*.tsx`,
//! `**/auth/**/*.ts`): `*` matches within one path component, `?` one character of a
//! component, `**` as a whole component any number of components (zero included). Paths and
//! patterns are relative and `/`-separated. Pure.
//!
//! Written here rather than taken from a crate: these four rules are the whole syntax the
//! configuration documents, and no glob crate is in the workspace's tree yet.

/// Checks a pattern: relative, no `..`, no empty component, `**` only as a whole component.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > 512 {
        return Err("a pattern is 1 to 512 characters".into());
    }
    if pattern.starts_with('/') {
        return Err(format!("`{pattern}` must be relative to the workspace"));
    }
    if pattern.chars().any(char::is_control) {
        return Err("a pattern has no control characters".into());
    }
    for part in pattern.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("`{pattern}` has an empty, `.` or `..` component"));
        }
        if part.contains("**") && part != "**" {
            return Err(format!("`{pattern}`: `**` must be a whole component"));
        }
    }
    Ok(())
}

/// True when `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match_parts(&pat, &parts)
}

fn match_parts(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|skip| match_parts(rest, &parts[skip..])),
        Some((first, rest)) => match parts.split_first() {
            Some((p, more)) => {
                match_component(first.as_bytes(), p.as_bytes()) && match_parts(rest, more)
            }
            None => false,
        },
    }
}

fn match_component(pat: &[u8], text: &[u8]) -> bool {
    // Iterative `*` matching with one backtrack point (linear in practice).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_domain_patterns_match_what_they_name() {
        let ui = "src/components/**/*.tsx";
        assert!(matches(ui, "src/components/Button.tsx"));
        assert!(matches(ui, "src/components/forms/deep/Input.tsx"));
        assert!(!matches(ui, "src/components/Button.ts"));
        assert!(!matches(ui, "lib/src/components/Button.tsx"));
        let api = "server/src/**/*.ts";
        assert!(matches(api, "server/src/routes/users.ts"));
        assert!(matches(api, "server/src/index.ts"));
        assert!(!matches(api, "server/index.ts"));
        let auth = "**/auth/**/*.ts";
        assert!(matches(auth, "auth/login.ts"));
        assert!(matches(auth, "server/src/auth/jwt/verify.ts"));
        assert!(!matches(auth, "server/src/author.ts"));
        let test = "**/*.test.ts";
        assert!(matches(test, "a.test.ts"));
        assert!(matches(test, "server/src/a.test.ts"));
        assert!(!matches(test, "server/src/a.ts"));
        assert!(matches("tests/**/*.ts", "tests/e2e/flow.ts"));
    }

    #[test]
    fn stars_and_question_marks_stay_within_a_component() {
        assert!(matches("*.md", "README.md"));
        assert!(!matches("*.md", "docs/README.md"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "a/c"));
        assert!(matches("**", "anything/at/all"));
        assert!(matches("**", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("docs/**", "docs/a/b.md"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in ["", "/etc/*", "a/../b", "a//b", "a**/b", "./a"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        for good in ["src/components/**/*.tsx", "**/*.test.ts", "README.md"] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
    }
}
