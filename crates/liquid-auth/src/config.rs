//! `[auth]`: how a service verifies tokens.
//!
//! Part of every service's configuration (figment: defaults → TOML → `LIQUID_<SVC>__AUTH__*`).
//! Validation is pure and names the offending key; reading key files and fetching JWKS happen
//! when the [`crate::Verifier`] is built, so a default configuration validates but a service
//! cannot start without a key source while `required = true`.

use std::path::{Path, PathBuf};

use liquid_kit::Secret;
use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Deserializer, Serialize};

use crate::claims::OneOrMany;

/// The algorithm of a key given as a PEM file (`auth.public_key_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum PublicKeyAlgorithm {
    /// Ed25519 (RFC 8037).
    #[default]
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl PublicKeyAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            PublicKeyAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            PublicKeyAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            PublicKeyAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Largest clock-skew allowance accepted for `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Longest time a verified token may be remembered (`auth.cache_ttl_secs`).
pub const MAX_CACHE_TTL_SECS: u64 = 3_600;

/// Token verification settings (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse requests without a valid token (`false` lets token-less requests through without
    /// claims; a token that is sent is still verified).
    pub required: bool,
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted audiences; a token must name at least one. A string, a comma-separated string
    /// or a list.
    #[serde(deserialize_with = "audiences")]
    pub audience: Vec<String>,
    /// Seconds of clock skew tolerated for `exp` and `nbf` (at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// A JWKS document on disk (RS256, ES256, EdDSA keys with `kid`), re-read on refresh.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`http://` or `https://`), fetched at start and on refresh.
    pub jwks_url: Option<String>,
    /// Seconds between JWKS refreshes (file and URL); 0 disables the periodic refresh.
    pub jwks_refresh_secs: u64,
    /// Least seconds between refreshes caused by a token with an unknown `kid`.
    pub jwks_min_refetch_secs: u64,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout_secs: u64,
    /// A PEM public key (SubjectPublicKeyInfo) used with `public_key_algorithm`.
    pub public_key_pem_file: Option<PathBuf>,
    /// `EdDSA`, `ES256` or `RS256`.
    pub public_key_algorithm: PublicKeyAlgorithm,
    /// Accept HS256 tokens signed with `hs256_secret`. Development only.
    pub allow_hs256_dev: bool,
    /// HS256 shared secret; honoured only with `allow_hs256_dev = true`.
    pub hs256_secret: Secret<String>,
    /// Seconds a verified token is remembered (keyed by the SHA-256 of its exact bytes, never
    /// past its `exp`, forgotten whenever the keys are reloaded), so a caller's next requests
    /// skip the signature check; 0 verifies every request in full. At most
    /// [`MAX_CACHE_TTL_SECS`].
    pub cache_ttl_secs: u64,
    /// Most verified tokens remembered.
    pub cache_max_entries: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            issuer: "liquid".into(),
            audience: vec!["liquid".into()],
            leeway_secs: 30,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 10,
            jwks_timeout_secs: 10,
            public_key_pem_file: None,
            public_key_algorithm: PublicKeyAlgorithm::EdDSA,
            allow_hs256_dev: false,
            hs256_secret: Secret::default(),
            cache_ttl_secs: 60,
            cache_max_entries: 100_000,
        }
    }
}

fn audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

impl AuthConfig {
    /// Verification with one EdDSA public key file (what `liquid up` and tests use).
    pub fn dev_public_key(path: &Path, issuer: &str, audience: &str) -> Self {
        AuthConfig {
            issuer: issuer.into(),
            audience: vec![audience.into()],
            public_key_pem_file: Some(path.to_path_buf()),
            public_key_algorithm: PublicKeyAlgorithm::EdDSA,
            ..AuthConfig::default()
        }
    }

    /// True when a key source that can change (JWKS file or URL) is configured.
    pub fn has_refreshable_source(&self) -> bool {
        self.jwks_file.is_some() || self.jwks_url.is_some()
    }

    /// True when any key source is configured (HS256 counts only when allowed).
    pub fn has_key_source(&self) -> bool {
        self.has_refreshable_source()
            || self.public_key_pem_file.is_some()
            || (self.allow_hs256_dev && !self.hs256_secret.is_empty())
    }
}

fn empty_path(path: Option<&PathBuf>) -> bool {
    path.is_some_and(|p| p.as_os_str().is_empty())
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() {
            return Err(ConfigError::invalid("auth.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid(
                "auth.audience",
                "must name at least one audience",
            ));
        }
        if self.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "auth.audience",
                "must not contain an empty audience",
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::invalid(
                "auth.leeway_secs",
                format!("must be at most {MAX_LEEWAY_SECS} seconds"),
            ));
        }
        if self.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            return Err(ConfigError::invalid(
                "auth.cache_ttl_secs",
                format!("must be at most {MAX_CACHE_TTL_SECS} seconds (0 turns the cache off)"),
            ));
        }
        if self.cache_ttl_secs > 0 && self.cache_max_entries == 0 {
            return Err(ConfigError::invalid(
                "auth.cache_max_entries",
                "must be at least 1 while auth.cache_ttl_secs is set",
            ));
        }
        if empty_path(self.jwks_file.as_ref()) {
            return Err(ConfigError::invalid(
                "auth.jwks_file",
                "must be a path when set",
            ));
        }
        if empty_path(self.public_key_pem_file.as_ref()) {
            return Err(ConfigError::invalid(
                "auth.public_key_pem_file",
                "must be a path when set",
            ));
        }
        if let Some(url) = &self.jwks_url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.jwks_url",
                        "must be an http:// or https:// URL",
                    ));
                }
            }
        }
        if self.has_refreshable_source() && self.jwks_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "auth.jwks_timeout_secs",
                "must be at least 1",
            ));
        }
        if !self.hs256_secret.is_empty() && !self.allow_hs256_dev {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                "HS256 is for development only; set auth.allow_hs256_dev = true to use it",
            ));
        }
        if self.allow_hs256_dev && self.hs256_secret.expose().len() < MIN_HS256_SECRET_BYTES {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                format!(
                    "must be at least {MIN_HS256_SECRET_BYTES} bytes when auth.allow_hs256_dev = true"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(cfg: &AuthConfig) -> String {
        match cfg.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate_and_require_auth() {
        let cfg = AuthConfig::default();
        cfg.validate().unwrap();
        assert!(cfg.required);
        assert!(!cfg.has_key_source());
        assert_eq!(cfg.audience, ["liquid"]);
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let base = AuthConfig::default();
        let cases: Vec<(&str, AuthConfig)> = vec![
            (
                "auth.issuer",
                AuthConfig {
                    issuer: " ".into(),
                    ..base.clone()
                },
            ),
            (
                "auth.audience",
                AuthConfig {
                    audience: vec![],
                    ..base.clone()
                },
            ),
            (
                "auth.audience",
                AuthConfig {
                    audience: vec!["a".into(), "".into()],
                    ..base.clone()
                },
            ),
            (
                "auth.leeway_secs",
                AuthConfig {
                    leeway_secs: 3600,
                    ..base.clone()
                },
            ),
            (
                "auth.cache_ttl_secs",
                AuthConfig {
                    cache_ttl_secs: 3601,
                    ..base.clone()
                },
            ),
            (
                "auth.cache_max_entries",
                AuthConfig {
                    cache_max_entries: 0,
                    ..base.clone()
                },
            ),
            (
                "auth.jwks_file",
                AuthConfig {
                    jwks_file: Some(PathBuf::new()),
                    ..base.clone()
                },
            ),
            (
                "auth.public_key_pem_file",
                AuthConfig {
                    public_key_pem_file: Some(PathBuf::new()),
                    ..base.clone()
                },
            ),
            (
                "auth.jwks_url",
                AuthConfig {
                    jwks_url: Some("ftp://x/jwks".into()),
                    ..base.clone()
                },
            ),
            (
                "auth.jwks_url",
                AuthConfig {
                    jwks_url: Some("not a url".into()),
                    ..base.clone()
                },
            ),
            (
                "auth.jwks_timeout_secs",
                AuthConfig {
                    jwks_url: Some("http://idp/jwks".into()),
                    jwks_timeout_secs: 0,
                    ..base.clone()
                },
            ),
            (
                "auth.hs256_secret",
                AuthConfig {
                    hs256_secret: Secret::new("x".repeat(40)),
                    ..base.clone()
                },
            ),
            (
                "auth.hs256_secret",
                AuthConfig {
                    allow_hs256_dev: true,
                    ..base.clone()
                },
            ),
            (
                "auth.hs256_secret",
                AuthConfig {
                    allow_hs256_dev: true,
                    hs256_secret: Secret::new("short".into()),
                    ..base.clone()
                },
            ),
        ];
        for (key, cfg) in cases {
            assert_eq!(key_of(&cfg), key, "{cfg:?}");
        }
    }

    #[test]
    fn hs256_is_honoured_only_when_allowed_and_long_enough() {
        let cfg = AuthConfig {
            allow_hs256_dev: true,
            hs256_secret: Secret::new("0123456789abcdef0123456789abcdef".into()),
            ..AuthConfig::default()
        };
        cfg.validate().unwrap();
        assert!(cfg.has_key_source());
        let message = AuthConfig {
            allow_hs256_dev: false,
            ..cfg
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(message.contains("allow_hs256_dev"), "{message}");
    }

    #[test]
    fn audience_accepts_a_string_a_comma_list_or_an_array() {
        let cfg: AuthConfig =
            serde_json::from_value(serde_json::json!({"audience": "liquid"})).unwrap();
        assert_eq!(cfg.audience, ["liquid"]);
        let cfg: AuthConfig =
            serde_json::from_value(serde_json::json!({"audience": "liquid, gateway"})).unwrap();
        assert_eq!(cfg.audience, ["liquid", "gateway"]);
        let cfg: AuthConfig =
            serde_json::from_value(serde_json::json!({"audience": ["a", "b"]})).unwrap();
        assert_eq!(cfg.audience, ["a", "b"]);
    }

    #[test]
    fn unknown_keys_and_algorithms_are_refused_and_defaults_fill_the_rest() {
        assert!(serde_json::from_value::<AuthConfig>(serde_json::json!({"issuer2": "x"})).is_err());
        assert!(
            serde_json::from_value::<AuthConfig>(
                serde_json::json!({"public_key_algorithm": "HS256"})
            )
            .is_err()
        );
        let cfg: AuthConfig = serde_json::from_value(serde_json::json!({
            "public_key_pem_file": "/k.pem", "public_key_algorithm": "ES256", "required": false
        }))
        .unwrap();
        assert_eq!(cfg.public_key_algorithm, PublicKeyAlgorithm::ES256);
        assert!(!cfg.required);
        assert_eq!(cfg.issuer, "liquid");
        assert!(cfg.has_key_source());
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let cfg = AuthConfig {
            allow_hs256_dev: true,
            hs256_secret: Secret::new("super-secret-value-0123456789abcdef".into()),
            ..AuthConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("super-secret"));
    }
}
