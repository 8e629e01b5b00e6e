//! Verification keys: turning JWKS documents, PEM public keys and the development HS256 secret
//! into keys bound to exactly one algorithm, and choosing the key for a token header.
//!
//! Binding each key to one algorithm is what stops algorithm confusion: an RSA public key is
//! never used as an HMAC secret, and a JWKS never contributes symmetric keys. Key choice is a
//! pure function over the set and the header (`alg`, `kid`); no key is ever tried "just in
//! case", so a token without `kid` is refused when several keys could have signed it.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use liquid_kit::telemetry::target;

use crate::AuthError;
use crate::config::PublicKeyAlgorithm;

/// One key bound to one algorithm.
#[derive(Clone)]
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Algorithms this crate verifies (HS256 only through the development secret).
pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "EdDSA" => Some(Algorithm::EdDSA),
        "ES256" => Some(Algorithm::ES256),
        "RS256" => Some(Algorithm::RS256),
        "HS256" => Some(Algorithm::HS256),
        _ => None,
    }
}

/// The algorithm a JWK may be used with, or why it cannot be used.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, &'static str> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("key is for encryption (use = enc)");
    }
    let from_params = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are never taken from a jwks");
        }
        _ => return Err("key type or curve is not supported (EdDSA, ES256, RS256 are)"),
    };
    match jwk.common.key_algorithm {
        None => Ok(from_params),
        Some(KeyAlgorithm::EdDSA) if from_params == Algorithm::EdDSA => Ok(from_params),
        Some(KeyAlgorithm::ES256) if from_params == Algorithm::ES256 => Ok(from_params),
        Some(KeyAlgorithm::RS256) if from_params == Algorithm::RS256 => Ok(from_params),
        Some(_) => Err("the key's alg is not supported or does not match its type"),
    }
}

/// Parses a JWKS document. Keys this crate cannot use are skipped with a warning; a document
/// with no usable key is an error.
pub(crate) fn keys_from_jwks(
    bytes: &[u8],
    location: &str,
) -> Result<Vec<VerificationKey>, AuthError> {
    let jwks_error = |reason: String| AuthError::Jwks {
        location: location.to_owned(),
        reason,
    };
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes)
        .map_err(|e| jwks_error(format!("not a jwks document: {e}")))?;
    let mut keys: Vec<VerificationKey> = Vec::with_capacity(raw.keys.len());
    for (index, value) in raw.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(target: target::SECURITY, location, index, %error, "jwks key skipped: unreadable");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty());
        let algorithm = match jwk_algorithm(&jwk) {
            Ok(a) => a,
            Err(reason) => {
                tracing::warn!(target: target::SECURITY, location, index, kid = ?kid, reason, "jwks key skipped");
                continue;
            }
        };
        if let Some(k) = &kid
            && keys.iter().any(|have| have.kid.as_ref() == Some(k))
        {
            tracing::warn!(target: target::SECURITY, location, kid = %k, "jwks key skipped: duplicate kid");
            continue;
        }
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(target: target::SECURITY, location, index, kid = ?kid, %error, "jwks key skipped: bad parameters");
                continue;
            }
        };
        keys.push(VerificationKey {
            kid,
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(jwks_error("no usable key (EdDSA, ES256 or RS256)".into()));
    }
    Ok(keys)
}

/// Reads a PEM public key (SubjectPublicKeyInfo; `RSA PUBLIC KEY` also for RS256).
pub(crate) fn key_from_pem(
    pem: &[u8],
    algorithm: PublicKeyAlgorithm,
    path: &str,
) -> Result<VerificationKey, AuthError> {
    let key = match algorithm {
        PublicKeyAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        PublicKeyAlgorithm::ES256 => DecodingKey::from_ec_pem(pem),
        PublicKeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem),
    }
    .map_err(|e| AuthError::Key {
        path: path.to_owned(),
        reason: format!("not a {algorithm:?} public key in PEM form: {e}"),
    })?;
    Ok(VerificationKey {
        kid: None,
        algorithm: algorithm.algorithm(),
        key,
    })
}

/// The development HS256 key.
pub(crate) fn hs256_key(secret: &str) -> VerificationKey {
    VerificationKey {
        kid: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(secret.as_bytes()),
    }
}

/// Chooses the key for a token whose header says `alg` and `kid`. `jwks_may_add` says whether a
/// JWKS source could still publish the key (then an unknown `kid` with an asymmetric algorithm
/// is [`AuthError::UnknownKey`], which triggers a reload, even if no key in hand uses `alg`).
///
/// - No key accepts `alg` (and none may appear): [`AuthError::AlgorithmNotAllowed`].
/// - `kid` names a key: that key, if it is bound to `alg` ([`AuthError::AlgorithmMismatch`]
///   otherwise).
/// - `kid` names no key: the one key without a kid that accepts `alg` (a PEM key or the dev
///   secret carry no kid, so a kid is only a hint for them), else [`AuthError::UnknownKey`].
/// - No `kid`: the one key that accepts `alg`, else [`AuthError::MissingKeyId`].
pub(crate) fn select<'a>(
    keys: &'a [VerificationKey],
    alg: Algorithm,
    kid: Option<&str>,
    jwks_may_add: bool,
) -> Result<&'a VerificationKey, AuthError> {
    let alg_name = || format!("{alg:?}");
    let accepted = keys.iter().any(|k| k.algorithm == alg);
    // A JWKS never contributes HS256 keys, so only asymmetric algorithms may still appear.
    let may_appear = jwks_may_add && kid.is_some() && alg != Algorithm::HS256;
    if !accepted && !may_appear {
        return Err(AuthError::AlgorithmNotAllowed { alg: alg_name() });
    }
    match kid {
        Some(kid) => {
            if let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                return if key.algorithm == alg {
                    Ok(key)
                } else {
                    Err(AuthError::AlgorithmMismatch {
                        alg: alg_name(),
                        kid: kid.to_owned(),
                    })
                };
            }
            let mut unnamed = keys
                .iter()
                .filter(|k| k.kid.is_none() && k.algorithm == alg);
            match (unnamed.next(), unnamed.next()) {
                (Some(key), None) => Ok(key),
                (Some(_), Some(_)) => Err(AuthError::MissingKeyId),
                (None, _) => Err(AuthError::UnknownKey {
                    kid: kid.to_owned(),
                }),
            }
        }
        None => {
            let mut candidates = keys.iter().filter(|k| k.algorithm == alg);
            match (candidates.next(), candidates.next()) {
                (Some(key), None) => Ok(key),
                _ => Err(AuthError::MissingKeyId),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: Option<&str>, algorithm: Algorithm) -> VerificationKey {
        VerificationKey {
            kid: kid.map(str::to_owned),
            algorithm,
            key: DecodingKey::from_secret(b"unused"),
        }
    }

    fn chosen(
        keys: &[VerificationKey],
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Option<String>, AuthError> {
        select(keys, alg, kid, false).map(|k| k.kid.clone())
    }

    #[test]
    fn a_kid_picks_its_key_and_must_agree_on_the_algorithm() {
        let keys = [
            key(Some("a"), Algorithm::EdDSA),
            key(Some("b"), Algorithm::ES256),
        ];
        assert_eq!(
            chosen(&keys, Algorithm::EdDSA, Some("a")),
            Ok(Some("a".into()))
        );
        assert_eq!(
            chosen(&keys, Algorithm::ES256, Some("b")),
            Ok(Some("b".into()))
        );
        assert_eq!(
            chosen(&keys, Algorithm::ES256, Some("a")),
            Err(AuthError::AlgorithmMismatch {
                alg: "ES256".into(),
                kid: "a".into()
            })
        );
        assert_eq!(
            chosen(&keys, Algorithm::EdDSA, Some("zzz")),
            Err(AuthError::UnknownKey { kid: "zzz".into() })
        );
    }

    #[test]
    fn an_algorithm_no_key_accepts_is_refused_first() {
        let keys = [key(Some("a"), Algorithm::EdDSA)];
        assert_eq!(
            chosen(&keys, Algorithm::HS256, Some("a")),
            Err(AuthError::AlgorithmNotAllowed {
                alg: "HS256".into()
            })
        );
        assert_eq!(
            chosen(&[], Algorithm::EdDSA, None),
            Err(AuthError::AlgorithmNotAllowed {
                alg: "EdDSA".into()
            })
        );
    }

    #[test]
    fn with_a_jwks_source_an_unknown_kid_of_a_new_asymmetric_algorithm_asks_for_a_reload() {
        let keys = [key(Some("a"), Algorithm::EdDSA)];
        let pick = |alg, kid| select(&keys, alg, kid, true).map(|k| k.kid.clone());
        assert_eq!(
            pick(Algorithm::ES256, Some("new")),
            Err(AuthError::UnknownKey { kid: "new".into() })
        );
        // No kid to look up, or HS256 that a JWKS never provides: refused outright.
        assert_eq!(
            pick(Algorithm::ES256, None),
            Err(AuthError::AlgorithmNotAllowed {
                alg: "ES256".into()
            })
        );
        assert_eq!(
            pick(Algorithm::HS256, Some("new")),
            Err(AuthError::AlgorithmNotAllowed {
                alg: "HS256".into()
            })
        );
        assert_eq!(
            pick(Algorithm::ES256, Some("a")),
            Err(AuthError::AlgorithmMismatch {
                alg: "ES256".into(),
                kid: "a".into()
            })
        );
    }

    #[test]
    fn without_a_kid_only_an_unambiguous_key_is_used() {
        let one = [
            key(Some("a"), Algorithm::EdDSA),
            key(Some("r"), Algorithm::RS256),
        ];
        assert_eq!(chosen(&one, Algorithm::EdDSA, None), Ok(Some("a".into())));
        let two = [
            key(Some("a"), Algorithm::EdDSA),
            key(Some("b"), Algorithm::EdDSA),
        ];
        assert_eq!(
            chosen(&two, Algorithm::EdDSA, None),
            Err(AuthError::MissingKeyId)
        );
    }

    #[test]
    fn keys_without_kid_accept_any_kid_hint_for_their_algorithm() {
        let keys = [key(None, Algorithm::EdDSA), key(None, Algorithm::HS256)];
        assert_eq!(chosen(&keys, Algorithm::EdDSA, Some("whatever")), Ok(None));
        assert_eq!(chosen(&keys, Algorithm::HS256, None), Ok(None));
        let ambiguous = [key(None, Algorithm::EdDSA), key(None, Algorithm::EdDSA)];
        assert_eq!(
            chosen(&ambiguous, Algorithm::EdDSA, Some("x")),
            Err(AuthError::MissingKeyId)
        );
    }

    #[test]
    fn jwks_documents_yield_only_usable_signature_keys() {
        let ed_x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": ed_x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": ed_x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": ed_x},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "wrong-alg", "alg": "RS256", "x": ed_x},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "weird"},
            "not even an object"
        ]});
        let keys = keys_from_jwks(doc.to_string().as_bytes(), "test").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].algorithm, Algorithm::EdDSA);
    }

    #[test]
    fn a_jwks_without_usable_keys_or_not_a_jwks_is_an_error() {
        for doc in [
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "k": "AA"}]}"#,
            "[]",
            "nope",
        ] {
            let err = keys_from_jwks(doc.as_bytes(), "https://idp/jwks").unwrap_err();
            assert!(matches!(err, AuthError::Jwks { .. }), "{doc}: {err}");
            assert!(err.to_string().contains("https://idp/jwks"), "{err}");
        }
    }

    #[test]
    fn a_pem_of_the_wrong_kind_names_the_file() {
        let err = key_from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            PublicKeyAlgorithm::EdDSA,
            "/k.pem",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/k.pem"), "{err}");
    }
}
