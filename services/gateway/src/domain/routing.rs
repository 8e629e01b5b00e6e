//! Which service answers a path, and which calls may be retried. Pure.
//!
//! `/api/v1/<service>/...` goes to that service (`containers` is container-pool's REST
//! prefix); the aliases carry the seed's paths and the A2A endpoints (`/api/media/...` to
//! media, `/api/v1/sandbox/...` to cowork, `/a2a`, `/agents/...` and
//! `/.well-known/agent-card.json` to a2a). The longest matching alias wins over the
//! `/api/v1/<service>` rule, so `/api/v1/sandbox` is cowork's even though no service is named
//! `sandbox`.
//!
//! A path is routed only when the service sees the same path the gateway judged: a `.` or `..`
//! segment, raw or percent-encoded (`%2e`, any case), would be resolved away by the URL parser
//! that builds the upstream URL (WHATWG URL, the `url` crate under reqwest), so
//! `/api/v1/cowork/%2e%2e/%2e%2e/metrics` would reach cowork's `/metrics` while the gateway's
//! auth and rate-limit class saw an `/api/v1/cowork` path; an encoded slash (`%2f`) or a
//! backslash (raw or `%5c`, which URL parsers and some servers treat as `/`) would split
//! segments differently behind the gateway. [`check_path`] refuses those before anything
//! routes or classifies by path.
//!
//! A call is retried only when repeating it cannot do something twice: safe and idempotent
//! methods (RFC 9110 §9.2.2), or a POST/PATCH carrying an `Idempotency-Key` the service honours.

use http::{Method, StatusCode};

/// A path prefix served by a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The prefix; it matches the exact path and everything below `prefix/`.
    pub prefix: String,
    /// The service name (`media`, `container-pool`, ...).
    pub service: String,
}

/// The peer key of a service name used in a path (`containers` and `container-pool` are
/// `container_pool`).
pub fn peer_key_for(service: &str) -> String {
    match service {
        "containers" => "container_pool".to_owned(),
        other => other.replace('-', "_"),
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The peer key of the service that serves `path`, if any. The gateway never routes to itself.
pub fn resolve(path: &str, aliases: &[Alias]) -> Option<String> {
    let alias = aliases
        .iter()
        .filter(|a| prefix_matches(&a.prefix, path))
        .max_by_key(|a| a.prefix.trim_end_matches('/').len());
    let key = match alias {
        Some(a) => peer_key_for(&a.service),
        None => {
            let rest = path.strip_prefix("/api/v1/")?;
            let service = rest.split('/').next().filter(|s| !s.is_empty())?;
            peer_key_for(service)
        }
    };
    (key != "gateway").then_some(key)
}

/// Why a request path is refused before routing (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `.` or `..` segment, raw or percent-encoded.
    DotSegment,
    /// A percent-encoded slash (`%2f`).
    EncodedSlash,
    /// A backslash, raw or percent-encoded (`%5c`).
    Backslash,
}

impl PathRefusal {
    /// The stable reason clients can match (`details.reason` of the refusal).
    pub fn reason(self) -> &'static str {
        match self {
            PathRefusal::DotSegment => "dot_segment",
            PathRefusal::EncodedSlash => "encoded_slash",
            PathRefusal::Backslash => "backslash",
        }
    }

    /// What the caller should do.
    pub fn message(self) -> &'static str {
        match self {
            PathRefusal::DotSegment => {
                "the request path has a `.` or `..` segment (raw or percent-encoded); send the path with those segments resolved"
            }
            PathRefusal::EncodedSlash => {
                "the request path has an encoded slash (`%2f`); send path segments without encoded slashes"
            }
            PathRefusal::Backslash => {
                "the request path has a backslash (raw or `%5c`); use `/` between path segments and no backslash inside them"
            }
        }
    }
}

/// True for a segment that URL resolution treats as `.` or `..` (WHATWG URL's single- and
/// double-dot segments: `.`, `%2e`, `..`, `.%2e`, `%2e.`, `%2e%2e`, any case).
fn is_dot_segment(segment: &str) -> bool {
    segment.len() <= 6
        && [".", "%2e", "..", ".%2e", "%2e.", "%2e%2e"]
            .iter()
            .any(|dot| segment.eq_ignore_ascii_case(dot))
}

/// Whether `path` (the raw, still percent-encoded path of a request) can be routed as it is:
/// no dot segment, no encoded slash, no backslash. Pure; the edge answers the refusal with 400.
pub fn check_path(path: &str) -> Result<(), PathRefusal> {
    if path.contains('\\') {
        return Err(PathRefusal::Backslash);
    }
    if path.split('/').any(is_dot_segment) {
        return Err(PathRefusal::DotSegment);
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        match (
            bytes.get(i + 1),
            bytes.get(i + 2).map(u8::to_ascii_lowercase),
        ) {
            (Some(b'2'), Some(b'f')) => return Err(PathRefusal::EncodedSlash),
            (Some(b'5'), Some(b'c')) => return Err(PathRefusal::Backslash),
            _ => {}
        }
    }
    Ok(())
}

/// The aliases the platform ships with (the seed's paths and A2A).
pub fn default_aliases() -> Vec<Alias> {
    [
        ("/api/media", "media"),
        ("/api/v1/sandbox", "cowork"),
        ("/a2a", "a2a"),
        ("/agents", "a2a"),
        ("/.well-known/agent-card.json", "a2a"),
    ]
    .into_iter()
    .map(|(prefix, service)| Alias {
        prefix: prefix.to_owned(),
        service: service.to_owned(),
    })
    .collect()
}

/// True when repeating the call cannot apply it twice.
pub fn is_idempotent(method: &Method, has_idempotency_key: bool) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || (has_idempotency_key && matches!(*method, Method::POST | Method::PATCH))
}

/// True for upstream answers worth another attempt of an idempotent call: the service (or a
/// proxy in front of it) was briefly unable to answer.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// True for upstream answers that count against the service's circuit breaker.
pub fn counts_as_failure(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED
}

/// The wait before retry `attempt` (1-based): `base_ms` doubled each time, at most 2 s.
pub fn backoff_ms(base_ms: u64, attempt: u32) -> u64 {
    base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(16))
        .min(2_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_go_to_their_service() {
        let aliases = default_aliases();
        assert_eq!(
            resolve("/api/v1/cowork/sessions", &aliases).as_deref(),
            Some("cowork")
        );
        assert_eq!(
            resolve("/api/v1/containers/pool", &aliases).as_deref(),
            Some("container_pool")
        );
        assert_eq!(
            resolve("/api/v1/container-pool/info", &aliases).as_deref(),
            Some("container_pool")
        );
        assert_eq!(resolve("/api/v1/gateway/x", &aliases), None);
        assert_eq!(resolve("/api/v1/", &aliases), None);
        assert_eq!(resolve("/other", &aliases), None);
    }

    #[test]
    fn the_seeds_paths_and_a2a_use_the_aliases() {
        let aliases = default_aliases();
        assert_eq!(
            resolve("/api/v1/sandbox/abc/diff", &aliases).as_deref(),
            Some("cowork")
        );
        assert_eq!(
            resolve("/api/media/images/1", &aliases).as_deref(),
            Some("media")
        );
        assert_eq!(resolve("/a2a", &aliases).as_deref(), Some("a2a"));
        assert_eq!(resolve("/a2a/stream", &aliases).as_deref(), Some("a2a"));
        assert_eq!(
            resolve("/agents/coder/a2a", &aliases).as_deref(),
            Some("a2a")
        );
        assert_eq!(
            resolve("/.well-known/agent-card.json", &aliases).as_deref(),
            Some("a2a")
        );
        assert_eq!(
            resolve("/a2ax", &aliases),
            None,
            "prefixes match whole segments"
        );
    }

    #[test]
    fn the_longest_alias_wins() {
        let mut aliases = default_aliases();
        aliases.push(Alias {
            prefix: "/api/v1/sandbox/special/".into(),
            service: "registry".into(),
        });
        assert_eq!(
            resolve("/api/v1/sandbox/special/x", &aliases).as_deref(),
            Some("registry")
        );
        assert_eq!(
            resolve("/api/v1/sandbox/other", &aliases).as_deref(),
            Some("cowork")
        );
    }

    #[test]
    fn dot_segments_raw_or_encoded_are_refused() {
        for path in [
            "/api/v1/cowork/../metrics",
            "/api/v1/cowork/./sessions",
            "/api/v1/cowork/%2e%2e/%2e%2e/metrics",
            "/api/v1/cowork/%2E%2E/metrics",
            "/api/v1/cowork/.%2e/metrics",
            "/api/v1/cowork/.%2E/metrics",
            "/api/v1/cowork/%2e./metrics",
            "/api/v1/cowork/%2E./metrics",
            "/api/v1/cowork/%2e/sessions",
            "/api/v1/cowork/x/%2e%2e/sessions",
            "/api/v1/cowork/..",
            "/api/v1/cowork/%2e%2E",
            "/..",
        ] {
            assert_eq!(check_path(path), Err(PathRefusal::DotSegment), "{path}");
        }
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_refused() {
        for path in [
            "/api/v1/cowork/a%2fb",
            "/api/v1/cowork/a%2Fb",
            "/api/v1/cowork/..%2f..%2fmetrics",
        ] {
            assert_eq!(check_path(path), Err(PathRefusal::EncodedSlash), "{path}");
        }
        for path in [
            "/api/v1/cowork/a%5cb",
            "/api/v1/cowork/a%5Cb",
            "/api/v1/cowork/..\\metrics",
            "/api/v1/cowork\\x",
        ] {
            assert_eq!(check_path(path), Err(PathRefusal::Backslash), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_with_dots_and_escapes_pass() {
        for path in [
            "/",
            "/api/v1/cowork/sessions",
            "/.well-known/agent-card.json",
            "/agents/coder/.well-known/agent-card.json",
            "/api/v1/cowork/file.txt",
            "/api/v1/cowork/...",
            "/api/v1/cowork/..a",
            "/api/v1/cowork/a..",
            "/api/v1/cowork/file%2etxt",
            "/api/v1/cowork/%2e%2e%2e",
            "/api/v1/cowork/a%20b%25",
            "/api/v1/cowork/%",
            "/api/v1/cowork/%2",
            "/api/v1/cowork//x",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn only_idempotent_calls_are_retried() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m, false), "{m}");
        }
        assert!(!is_idempotent(&Method::POST, false));
        assert!(!is_idempotent(&Method::PATCH, false));
        assert!(is_idempotent(&Method::POST, true));
        assert!(is_idempotent(&Method::PATCH, true));
        assert!(retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable_status(StatusCode::BAD_GATEWAY));
        assert!(!retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(counts_as_failure(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!counts_as_failure(StatusCode::NOT_IMPLEMENTED));
        assert!(!counts_as_failure(StatusCode::NOT_FOUND));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(50, 1), 50);
        assert_eq!(backoff_ms(50, 2), 100);
        assert_eq!(backoff_ms(50, 3), 200);
        assert_eq!(backoff_ms(50, 40), 2_000);
        assert_eq!(backoff_ms(u64::MAX, 5), 2_000);
    }
}
