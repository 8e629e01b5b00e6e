//! JWT verification, scopes and the auth layer shared by every service's HTTP and gRPC edge.
//!
//! Tokens are verified with jsonwebtoken (aws-lc-rs backend) against keys from a JWKS file or a
//! PEM public key; HS256 only when a development secret is explicitly allowed. Verified claims
//! go into request extensions; handlers read them with [`Authenticated`] and check scopes with
//! [`Claims::require`]. This crate must not decide what a scope allows; services do.

mod keys;
mod layer;
mod scope;

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use liquid_kit::Secret;
use liquid_kit::config::{ConfigError, Validate};
use liquid_kit::error::{ErrorCode, HasErrorCode};
use serde::{Deserialize, Serialize};

pub use keys::{SigningKey, TokenRequest};
pub use layer::{AuthLayer, AuthService, Authenticated, PUBLIC_PATHS};
pub use scope::{Scope, scope_grants};

/// Why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was sent.
    #[error("missing bearer token; send `Authorization: Bearer <jwt>` (`liquid token` mints one)")]
    MissingToken,
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify against any configured key.
    #[error("token signature is not valid for the configured keys")]
    BadSignature,
    /// The header names an algorithm this deployment does not accept.
    #[error("token algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    /// The header's `kid` matches no key.
    #[error("token key id `{0}` is unknown")]
    UnknownKey(String),
    /// `exp` is in the past.
    #[error("token expired; mint a new one")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The caller lacks a scope.
    #[error("missing scope `{0}`")]
    MissingScope(String),
    /// Key material could not be read or parsed.
    #[error("key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl HasErrorCode for AuthError {
    fn error_code(&self) -> ErrorCode {
        match self {
            AuthError::MissingScope(_) => ErrorCode::PermissionDenied,
            AuthError::Key { .. } => ErrorCode::InvalidConfig,
            _ => ErrorCode::Unauthenticated,
        }
    }
}

/// Token verification settings (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Seconds of clock skew tolerated for `exp` and `nbf`.
    pub leeway_secs: u64,
    /// A JWKS document (RS256, ES256, EdDSA keys with `kid`).
    pub jwks_file: Option<PathBuf>,
    /// A PEM public key (with `public_key_algorithm`).
    pub public_key_pem_file: Option<PathBuf>,
    /// `EdDSA`, `ES256` or `RS256`.
    pub public_key_algorithm: String,
    /// HS256 shared secret, honoured only with `allow_hs256_dev`.
    pub hs256_secret: Secret<String>,
    /// Accept HS256 tokens signed with `hs256_secret` (development only).
    pub allow_hs256_dev: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "liquid".into(),
            audience: "liquid".into(),
            leeway_secs: 30,
            jwks_file: None,
            public_key_pem_file: None,
            public_key_algorithm: "EdDSA".into(),
            hs256_secret: Secret::default(),
            allow_hs256_dev: false,
        }
    }
}

impl AuthConfig {
    /// Verification with a development public key (what `liquid up` uses).
    pub fn dev_public_key(path: &std::path::Path, issuer: &str, audience: &str) -> Self {
        AuthConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            public_key_pem_file: Some(path.to_path_buf()),
            public_key_algorithm: "EdDSA".into(),
            ..AuthConfig::default()
        }
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "EdDSA" => Some(Algorithm::EdDSA),
        "ES256" => Some(Algorithm::ES256),
        "RS256" => Some(Algorithm::RS256),
        _ => None,
    }
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid("auth.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid("auth.audience", "must not be empty"));
        }
        if parse_algorithm(&self.public_key_algorithm).is_none() {
            return Err(ConfigError::invalid(
                "auth.public_key_algorithm",
                "must be EdDSA, ES256 or RS256",
            ));
        }
        if !self.hs256_secret.is_empty() && !self.allow_hs256_dev {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                "HS256 is for development only; set auth.allow_hs256_dev = true to use it",
            ));
        }
        if self.allow_hs256_dev && self.hs256_secret.expose().len() < 32 {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                "must be at least 32 bytes",
            ));
        }
        Ok(())
    }
}

/// What kind of principal a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person or an external agent.
    #[default]
    User,
    /// Another Liquid service.
    Service,
    /// A gateway-issued session.
    Session,
}

/// Verified claims of a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Tenant; the subject is the tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Space-separated scopes (OAuth `scope`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    #[serde(default)]
    pub nbf: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Token id.
    #[serde(default)]
    pub jti: String,
    /// Principal kind.
    #[serde(default)]
    pub kind: PrincipalKind,
}

impl Claims {
    /// The tenant that scopes this caller's data.
    pub fn tenant_id(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.sub)
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_whitespace()
    }

    /// True when a granted scope covers `needed` (wildcards: `admin:*` grants all,
    /// `cowork:*` grants `cowork:write`).
    pub fn has_scope(&self, needed: &str) -> bool {
        self.scopes().any(|granted| scope_grants(granted, needed))
    }

    /// `Ok` when [`Claims::has_scope`], else [`AuthError::MissingScope`].
    pub fn require(&self, needed: &str) -> Result<(), AuthError> {
        if self.has_scope(needed) {
            Ok(())
        } else {
            Err(AuthError::MissingScope(needed.into()))
        }
    }
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<VerificationKey>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl Verifier {
    /// Loads the keys named in `config`. No key at all is a configuration error.
    pub async fn from_config(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let mut keys = Vec::new();
        if let Some(path) = &config.public_key_pem_file {
            let pem = read(path)?;
            let algorithm =
                parse_algorithm(&config.public_key_algorithm).unwrap_or(Algorithm::EdDSA);
            let key = match algorithm {
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| AuthError::Key {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            keys.push(VerificationKey {
                kid: None,
                algorithm,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_slice(&read(path)?).map_err(|e| AuthError::Key {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Key {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    _ => continue,
                };
                keys.push(VerificationKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
        }
        if config.allow_hs256_dev && !config.hs256_secret.is_empty() {
            keys.push(VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(config.hs256_secret.expose().as_bytes()),
            });
        }
        if keys.is_empty() {
            return Err(AuthError::Key {
                path: "auth".into(),
                reason:
                    "no verification key configured; set auth.jwks_file or auth.public_key_pem_file"
                        .into(),
            });
        }
        Ok(Verifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let candidates: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(kid) if self.keys.iter().any(|k| k.algorithm == header.alg) => {
                    AuthError::UnknownKey(kid.clone())
                }
                _ => AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let mut last = AuthError::BadSignature;
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                        ErrorKind::InvalidIssuer => return Err(AuthError::WrongIssuer),
                        ErrorKind::InvalidAudience => return Err(AuthError::WrongAudience),
                        _ => AuthError::Malformed(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}
