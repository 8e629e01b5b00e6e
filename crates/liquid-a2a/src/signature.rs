//! Agent card signatures (spec §8.4): a detached JWS (RFC 7515) over the card's canonical JSON.
//!
//! The payload is the card without `signatures`, in ProtoJSON with field presence respected
//! (unset fields and default values omitted, `optional` fields that are set kept, REQUIRED
//! fields always present), serialised by the JSON Canonicalization Scheme (RFC 8785: keys sorted
//! by UTF-16 code units, no insignificant whitespace, ES6 number forms). The protected header
//! names `alg`, `typ: JOSE`, `kid` and optionally `jku`. Signing and verification are
//! `jsonwebtoken`'s; the canonicaliser is written here because the card's JSON holds only the
//! shapes below (no crate in the tree implements RFC 8785).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Map, Value};

use crate::error::A2aError;
use crate::pb;

/// The card's REQUIRED fields (spec §8.4.1: present even when they hold the default).
fn required_card_fields() -> [(&'static str, Value); 8] {
    [
        ("name", Value::String(String::new())),
        ("description", Value::String(String::new())),
        ("supportedInterfaces", Value::Array(Vec::new())),
        ("version", Value::String(String::new())),
        ("capabilities", Value::Object(Map::new())),
        ("defaultInputModes", Value::Array(Vec::new())),
        ("defaultOutputModes", Value::Array(Vec::new())),
        ("skills", Value::Array(Vec::new())),
    ]
}

fn ensure(object: &mut Value, fields: &[(&str, Value)]) {
    if let Value::Object(map) = object {
        for (name, default) in fields {
            map.entry(*name).or_insert_with(|| default.clone());
        }
    }
}

/// The card's signing payload: canonical JSON of the card without `signatures`.
pub fn canonical_card(card: &pb::AgentCard) -> Result<Vec<u8>, A2aError> {
    let mut unsigned = card.clone();
    unsigned.signatures.clear();
    let mut value = serde_json::to_value(&unsigned).map_err(A2aError::internal)?;
    ensure(&mut value, &required_card_fields());
    let empty = || Value::String(String::new());
    if let Some(Value::Array(items)) = value.get_mut("supportedInterfaces") {
        for i in items {
            ensure(
                i,
                &[
                    ("url", empty()),
                    ("protocolBinding", empty()),
                    ("protocolVersion", empty()),
                ],
            );
        }
    }
    if let Some(Value::Array(items)) = value.get_mut("skills") {
        for s in items {
            ensure(
                s,
                &[
                    ("id", empty()),
                    ("name", empty()),
                    ("description", empty()),
                    ("tags", Value::Array(Vec::new())),
                ],
            );
        }
    }
    if let Some(p) = value.get_mut("provider") {
        ensure(p, &[("url", empty()), ("organization", empty())]);
    }
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

/// RFC 8785 serialisation of a JSON value.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), A2aError> {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, value).map_err(A2aError::internal)?;
        }
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                let f = n.as_f64().unwrap_or_default();
                // ES6 Number.prototype.toString for the integral values cards carry; other
                // fractions print as Rust's shortest round-trip form, which matches ES6 for
                // values between 1e-6 and 1e21.
                if f.fract() == 0.0 && f.abs() < 1e21 {
                    out.extend_from_slice(format!("{f:.0}").as_bytes());
                } else {
                    out.extend_from_slice(format!("{f}").as_bytes());
                }
            }
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // RFC 8785 §3.2.3: sort by UTF-16 code units.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).map_err(A2aError::internal)?;
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A key that signs cards.
#[derive(Clone)]
pub struct CardSigner {
    key: EncodingKey,
    algorithm: Algorithm,
    protected: String,
}

impl std::fmt::Debug for CardSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardSigner")
            .field("algorithm", &self.algorithm)
            .field("protected", &self.protected)
            .finish_non_exhaustive()
    }
}

/// Parses `EdDSA`, `ES256` or `RS256`.
pub fn algorithm(name: &str) -> Result<Algorithm, A2aError> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        other => Err(A2aError::invalid_params(format!(
            "card signing algorithm {other} is not EdDSA, ES256 or RS256"
        ))),
    }
}

impl CardSigner {
    /// A signer from a PKCS#8 PEM private key.
    pub fn from_pem(
        pem: &[u8],
        algorithm: Algorithm,
        kid: &str,
        jku: Option<&str>,
    ) -> Result<CardSigner, A2aError> {
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            other => {
                return Err(A2aError::invalid_params(format!(
                    "card signing algorithm {other:?} is not supported"
                )));
            }
        }
        .map_err(|e| A2aError::invalid_params(format!("card signing key: {e}")))?;
        let mut header =
            serde_json::json!({"alg": algorithm_name(algorithm), "typ": "JOSE", "kid": kid});
        if let (Some(jku), Value::Object(map)) = (jku, &mut header) {
            map.insert("jku".into(), Value::String(jku.to_owned()));
        }
        let header = serde_json::to_vec(&header).map_err(A2aError::internal)?;
        Ok(CardSigner {
            key,
            algorithm,
            protected: URL_SAFE_NO_PAD.encode(header),
        })
    }

    /// The signature of `card` (its current `signatures` are ignored).
    pub fn sign(&self, card: &pb::AgentCard) -> Result<pb::AgentCardSignature, A2aError> {
        let payload = URL_SAFE_NO_PAD.encode(canonical_card(card)?);
        let input = format!("{}.{payload}", self.protected);
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, self.algorithm)
            .map_err(|e| A2aError::internal(format!("card signing: {e}")))?;
        Ok(pb::AgentCardSignature {
            protected: self.protected.clone(),
            signature,
            header: None,
        })
    }

    /// `card` with its signature as the only entry of `signatures`.
    pub fn signed(&self, mut card: pb::AgentCard) -> Result<pb::AgentCard, A2aError> {
        let signature = self.sign(&card)?;
        card.signatures = vec![signature];
        Ok(card)
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        _ => "unsupported",
    }
}

/// The protected header of a signature, decoded.
pub fn protected_header(signature: &pb::AgentCardSignature) -> Result<Value, A2aError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(signature.protected.trim_end_matches('='))
        .map_err(|e| A2aError::invalid_params(format!("protected header: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| A2aError::invalid_params(format!("protected header: {e}")))
}

/// Verifies `signature` over `card` with `key` (spec §8.4.3). `Ok(false)` for a signature that
/// does not match; `Err` when the header cannot be read or names another algorithm family.
pub fn verify_card(
    card: &pb::AgentCard,
    signature: &pb::AgentCardSignature,
    key: &DecodingKey,
) -> Result<bool, A2aError> {
    let header = protected_header(signature)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| A2aError::invalid_params("protected header has no alg"))?;
    let payload = URL_SAFE_NO_PAD.encode(canonical_card(card)?);
    let input = format!("{}.{payload}", signature.protected);
    jsonwebtoken::crypto::verify(&signature.signature, input.as_bytes(), key, algorithm(alg)?)
        .map_err(|e| A2aError::invalid_params(format!("card signature: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_canonical_form() {
        // §8.4.1: optional bools that are set stay, empty repeated fields go, REQUIRED stay.
        let card = pb::AgentCard {
            name: "Example Agent".into(),
            capabilities: Some(pb::AgentCapabilities {
                streaming: Some(false),
                push_notifications: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = String::from_utf8(canonical_card(&card).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"capabilities":{"pushNotifications":false,"streaming":false},"defaultInputModes":[],"defaultOutputModes":[],"description":"","name":"Example Agent","skills":[],"supportedInterfaces":[],"version":""}"#
        );
    }

    #[test]
    fn rfc8785_keys_and_numbers() {
        let v: Value = serde_json::from_str(
            r#"{"b":1.0,"a":[true,null,"\u00e9"],"\u20ac":2,"\ud83d\ude00":3}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_canonical(&v, &mut out).unwrap();
        // U+20AC sorts before U+1F600, whose first UTF-16 unit is 0xD83D.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":[true,null,\"é\"],\"b\":1,\"€\":2,\"😀\":3}"
        );
    }
}
