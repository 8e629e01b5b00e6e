//! Development signing keys: an Ed25519 key generated on first use and kept as a PKCS#8 PEM
//! file (mode 0600), used by `liquid up`, `liquid token` and tests to mint tokens.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::{AuthError, Claims, PrincipalKind};

/// An Ed25519 key that signs tokens.
pub struct SigningKey {
    pkcs8_der: Vec<u8>,
    public_raw: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str) -> Option<Vec<u8>> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

fn key_error(path: &Path, reason: impl ToString) -> AuthError {
    AuthError::Key {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl SigningKey {
    /// Generates a new key.
    pub fn generate() -> Result<SigningKey, AuthError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| key_error(Path::new("<generated>"), e))?;
        SigningKey::from_pkcs8(doc.as_ref().to_vec(), Path::new("<generated>"))
    }

    fn from_pkcs8(der: Vec<u8>, path: &Path) -> Result<SigningKey, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| key_error(path, e))?;
        let public_raw = pair.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public_raw);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Ok(SigningKey {
            pkcs8_der: der,
            public_raw,
            kid,
        })
    }

    /// Loads the key at `path`, generating and saving it (mode 0600) when absent.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = unpem(&text).ok_or_else(|| key_error(path, "not a PEM file"))?;
                SigningKey::from_pkcs8(der, path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                write_private(path, &pem("PRIVATE KEY", &key.pkcs8_der))
                    .map_err(|e| key_error(path, e))?;
                Ok(key)
            }
            Err(e) => Err(key_error(path, e)),
        }
    }

    /// The key id put in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        // SPKI prefix for an Ed25519 key (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&self.public_raw);
        pem("PUBLIC KEY", &der)
    }

    /// A JWKS document with this key (OKP / Ed25519).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public_raw),
        }]})
    }

    /// Signs a token.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: request.sub.clone(),
            tenant: request.tenant.clone(),
            scope: request.scopes.join(" "),
            iss: request.issuer.clone(),
            aud: request.audience.clone(),
            exp: now + request.ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::now_v7().to_string(),
            kind: request.kind,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8_der))
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    sub: String,
    tenant: Option<String>,
    scopes: Vec<String>,
    issuer: String,
    audience: String,
    ttl: Duration,
    kind: PrincipalKind,
}

impl TokenRequest {
    /// A user token for `sub` with `scopes` (issuer and audience `liquid`, one hour).
    pub fn user<I, S>(sub: &str, scopes: I) -> TokenRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TokenRequest {
            sub: sub.into(),
            tenant: None,
            scopes: scopes.into_iter().map(Into::into).collect(),
            issuer: "liquid".into(),
            audience: "liquid".into(),
            ttl: Duration::from_secs(3600),
            kind: PrincipalKind::User,
        }
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the issuer.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// Sets the audience.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = audience.into();
        self
    }

    /// Sets the lifetime.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the principal kind.
    pub fn kind(mut self, kind: PrincipalKind) -> Self {
        self.kind = kind;
        self
    }
}
