//! The gateway's session tokens (`X-Session-Token`): an opaque, signed handle that lets an
//! anonymous client (the web console before sign-in, a demo page) be rate limited as one
//! session rather than by its address. Pure: the caller supplies the key and the clock.
//!
//! Wire form: `v1.<session id>.<expiry, unix seconds>.<HMAC-SHA256, base64url>` over
//! `v1.<id>.<expiry>`. It grants nothing but a rate-limit identity; it is not a credential.

use aws_lc_rs::hmac;
use base64::Engine as _;

const VERSION: &str = "v1";

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id.
    pub id: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionTokenError {
    /// Not `v1.<id>.<exp>.<mac>`.
    #[error("session token is malformed")]
    Malformed,
    /// The signature does not match.
    #[error("session token signature is not valid")]
    BadSignature,
    /// Past its expiry.
    #[error("session token expired")]
    Expired,
}

/// Signs and verifies session tokens with one secret.
pub struct SessionSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSigner([redacted])")
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SessionSigner {
    /// A signer keyed with `secret`.
    pub fn new(secret: &[u8]) -> SessionSigner {
        SessionSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token for session `id` expiring at `expires_at`. The id must not contain `.`.
    pub fn sign(&self, id: &str, expires_at: u64) -> String {
        let body = format!("{VERSION}.{id}.{expires_at}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", b64(tag.as_ref()))
    }

    /// Verifies `token` at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Session, SessionTokenError> {
        let (body, tag) = token.rsplit_once('.').ok_or(SessionTokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some(VERSION), Some(id), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionTokenError::Malformed);
        };
        if id.is_empty() {
            return Err(SessionTokenError::Malformed);
        }
        let expires_at: u64 = exp.parse().map_err(|_| SessionTokenError::Malformed)?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionTokenError::Malformed)?;
        // Constant-time comparison inside aws-lc.
        hmac::verify(&self.key, body.as_bytes(), &tag)
            .map_err(|_| SessionTokenError::BadSignature)?;
        if now >= expires_at {
            return Err(SessionTokenError::Expired);
        }
        Ok(Session {
            id: id.to_owned(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let s = SessionSigner::new(b"0123456789abcdef0123456789abcdef");
        let token = s.sign("0190abcd", 2_000);
        assert_eq!(
            s.verify(&token, 1_999),
            Ok(Session {
                id: "0190abcd".into(),
                expires_at: 2_000
            })
        );
        assert_eq!(s.verify(&token, 2_000), Err(SessionTokenError::Expired));
    }

    #[test]
    fn another_key_or_any_edit_breaks_the_signature() {
        let s = SessionSigner::new(b"key one key one key one key one!");
        let other = SessionSigner::new(b"key two key two key two key two!");
        let token = s.sign("abc", 2_000);
        assert_eq!(
            other.verify(&token, 0),
            Err(SessionTokenError::BadSignature)
        );
        let longer = token.replacen(".2000.", ".9999.", 1);
        assert_eq!(s.verify(&longer, 0), Err(SessionTokenError::BadSignature));
        let renamed = token.replacen("abc", "abd", 1);
        assert_eq!(s.verify(&renamed, 0), Err(SessionTokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let s = SessionSigner::new(b"k");
        for bad in [
            "",
            "v1",
            "v1.a.1",
            "v2.a.1.AAAA",
            "v1..1.AAAA",
            "v1.a.x.AAAA",
            "v1.a.b.1.AAAA",
            "v1.a.1.!!",
        ] {
            assert_eq!(
                s.verify(bad, 0),
                Err(SessionTokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let s = SessionSigner::new(b"secret-secret");
        assert!(!format!("{s:?}").contains("secret-secret"));
    }
}
