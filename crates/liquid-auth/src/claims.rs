//! The verified identity of a caller and its wire form.
//!
//! [`Claims`] is what a service sees after verification: subject, tenant, scopes, kind and the
//! registered JWT claims. On the wire, scopes arrive as the OAuth `scope` string
//! (space-separated, RFC 8693 §4.2) and/or an `scp` array or string (as some identity providers
//! send them); `aud` is a string or an array (RFC 7519 §4.1.3). Both are normalised here. This
//! module checks shape only; signatures and times are the verifier's job.

use serde::{Deserialize, Deserializer, Serialize};

use crate::AuthError;
use crate::scope::any_grants;

/// What kind of principal a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person or an external agent.
    #[default]
    User,
    /// Another Liquid service (a service token).
    Service,
    /// A gateway-issued session.
    Session,
}

/// Verified claims of a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireClaims", into = "WireClaims")]
pub struct Claims {
    /// Subject: who the caller is.
    pub sub: String,
    /// Tenant; when absent the subject is the tenant (see [`Claims::tenant_id`]).
    pub tenant: Option<String>,
    /// Granted scopes, from `scope` and `scp`, in order, without duplicates.
    pub scopes: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: Option<u64>,
    /// Token id.
    pub jti: Option<String>,
    /// Principal kind (`user` when the token does not say).
    pub kind: PrincipalKind,
}

impl Claims {
    /// The tenant that scopes this caller's data: the `tenant` claim, else the subject.
    pub fn tenant_id(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.sub)
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// True when a granted scope covers `needed` (`admin:*` grants all, `cowork:*` grants
    /// `cowork:write`).
    pub fn has_scope(&self, needed: &str) -> bool {
        any_grants(self.scopes.iter().map(String::as_str), needed)
    }

    /// `Ok` when [`Claims::has_scope`], else [`AuthError::MissingScope`] naming `needed`.
    pub fn require(&self, needed: &str) -> Result<(), AuthError> {
        if self.has_scope(needed) {
            Ok(())
        } else {
            Err(AuthError::MissingScope {
                scope: needed.to_owned(),
            })
        }
    }

    /// True for service tokens.
    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }
}

/// A string or a list of strings, as `aud` and `scp` arrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Seconds since the epoch as JSON numbers arrive (RFC 7519 NumericDate may be fractional).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    match value {
        None => Ok(None),
        Some(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
                    _ => Err(serde::de::Error::custom(
                        "numeric date must be non-negative",
                    )),
                }
            }
        }
    }
}

/// The claims as they travel: every field optional so that a missing one is reported by name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WireClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scp: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aud: Option<OneOrMany>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) exp: Option<u64>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) nbf: Option<u64>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<PrincipalKind>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl TryFrom<WireClaims> for Claims {
    type Error = AuthError;

    fn try_from(wire: WireClaims) -> Result<Self, Self::Error> {
        let missing = |name: &str| AuthError::MissingClaim(name.to_owned());
        let sub = non_empty(wire.sub).ok_or_else(|| missing("sub"))?;
        let iss = non_empty(wire.iss).ok_or_else(|| missing("iss"))?;
        let exp = wire.exp.ok_or_else(|| missing("exp"))?;
        let aud = match wire.aud {
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(list)) => list,
            None => Vec::new(),
        };
        let mut scopes: Vec<String> = Vec::new();
        let from_scp: Vec<String> = match wire.scp {
            Some(OneOrMany::One(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(OneOrMany::Many(list)) => list,
            None => Vec::new(),
        };
        let from_scope = wire
            .scope
            .iter()
            .flat_map(|s| s.split_whitespace())
            .map(str::to_owned);
        for s in from_scope.chain(from_scp) {
            if !s.is_empty() && !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        Ok(Claims {
            sub,
            tenant: non_empty(wire.tenant),
            scopes,
            iss,
            aud,
            exp,
            nbf: wire.nbf,
            iat: wire.iat,
            jti: non_empty(wire.jti),
            kind: wire.kind.unwrap_or_default(),
        })
    }
}

impl From<Claims> for WireClaims {
    fn from(c: Claims) -> Self {
        let aud = match c.aud.len() {
            0 => None,
            1 => c.aud.into_iter().next().map(OneOrMany::One),
            _ => Some(OneOrMany::Many(c.aud)),
        };
        WireClaims {
            sub: Some(c.sub),
            tenant: c.tenant,
            scope: (!c.scopes.is_empty()).then(|| c.scopes.join(" ")),
            scp: None,
            iss: Some(c.iss),
            aud,
            exp: Some(c.exp),
            nbf: c.nbf,
            iat: c.iat,
            jti: c.jti,
            kind: Some(c.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Claims, String> {
        serde_json::from_value::<Claims>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn scopes_come_from_scope_and_scp_without_duplicates() {
        let c = parse(json!({
            "sub": "alice", "iss": "liquid", "aud": "liquid", "exp": 10,
            "scope": "read:prices  cowork:write", "scp": ["cowork:write", "media:read"]
        }))
        .unwrap();
        assert_eq!(c.scopes, ["read:prices", "cowork:write", "media:read"]);
        let c =
            parse(json!({"sub": "a", "iss": "i", "aud": ["x", "y"], "exp": 1, "scp": "a:b c:d"}))
                .unwrap();
        assert_eq!(c.scopes, ["a:b", "c:d"]);
        assert_eq!(c.aud, ["x", "y"]);
    }

    #[test]
    fn tenant_falls_back_to_the_subject() {
        let c = parse(json!({"sub": "alice", "iss": "i", "aud": "a", "exp": 1})).unwrap();
        assert_eq!(c.tenant_id(), "alice");
        assert_eq!(c.kind, PrincipalKind::User);
        let c = parse(json!({"sub": "alice", "tenant": "acme", "iss": "i", "aud": "a", "exp": 1}))
            .unwrap();
        assert_eq!(c.tenant_id(), "acme");
        // An empty tenant is no tenant: it must not become a shared "" tenant.
        let c =
            parse(json!({"sub": "bob", "tenant": "", "iss": "i", "aud": "a", "exp": 1})).unwrap();
        assert_eq!(c.tenant_id(), "bob");
    }

    #[test]
    fn missing_or_empty_registered_claims_are_named() {
        let err = parse(json!({"iss": "i", "aud": "a", "exp": 1})).unwrap_err();
        assert!(err.contains("`sub`"), "{err}");
        let err = parse(json!({"sub": " ", "iss": "i", "aud": "a", "exp": 1})).unwrap_err();
        assert!(err.contains("`sub`"), "{err}");
        let err = parse(json!({"sub": "s", "aud": "a", "exp": 1})).unwrap_err();
        assert!(err.contains("`iss`"), "{err}");
        let err = parse(json!({"sub": "s", "iss": "i", "aud": "a"})).unwrap_err();
        assert!(err.contains("`exp`"), "{err}");
    }

    #[test]
    fn kinds_and_fractional_dates_parse_and_unknown_kinds_do_not() {
        let c =
            parse(json!({"sub": "cowork", "iss": "i", "aud": "a", "exp": 12.7, "kind": "service"}))
                .unwrap();
        assert_eq!(c.exp, 12);
        assert!(c.is_service());
        assert!(
            parse(json!({"sub": "s", "iss": "i", "aud": "a", "exp": 1, "kind": "robot"})).is_err()
        );
        assert!(parse(json!({"sub": "s", "iss": "i", "aud": "a", "exp": -1})).is_err());
    }

    #[test]
    fn serialises_to_the_oauth_shape_and_back() {
        let c = Claims {
            sub: "alice".into(),
            tenant: Some("acme".into()),
            scopes: vec!["read:prices".into(), "write:chat".into()],
            iss: "liquid".into(),
            aud: vec!["liquid".into()],
            exp: 100,
            nbf: Some(1),
            iat: Some(1),
            jti: Some("j".into()),
            kind: PrincipalKind::Session,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["scope"], "read:prices write:chat");
        assert_eq!(v["aud"], "liquid");
        assert_eq!(v["kind"], "session");
        assert!(v.get("scp").is_none());
        assert_eq!(parse(v).unwrap(), c);
    }

    #[test]
    fn has_scope_and_require_apply_wildcards() {
        let mut c =
            parse(json!({"sub": "a", "iss": "i", "aud": "a", "exp": 1, "scope": "cowork:*"}))
                .unwrap();
        assert!(c.has_scope("cowork:write"));
        assert!(!c.has_scope("media:write"));
        assert_eq!(
            c.require("media:write"),
            Err(AuthError::MissingScope {
                scope: "media:write".into()
            })
        );
        c.scopes = vec!["admin:*".into()];
        assert!(c.require("media:write").is_ok());
    }
}
