//! Token signing: the Ed25519 key `liquid up`, `liquid token`, service tokens and tests mint
//! with, its PEM files and its JWKS form.
//!
//! The private key is kept as PKCS#8 v1 (what `openssl genpkey -algorithm ed25519` writes, so
//! either tool can read the other's file) in a file of mode 0600; the key id is the RFC 7638
//! JWK thumbprint, so a JWKS built from the key names it the same way everywhere. PEM framing
//! (RFC 7468) is written here by hand: it is a base64 body between two label lines, and the
//! `pem` crate jsonwebtoken uses is not one of the workspace's direct dependencies. This module
//! must not verify tokens; the verifier does.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use liquid_kit::Secret;
use liquid_kit::telemetry::target;

use crate::AuthError;
use crate::claims::{Claims, PrincipalKind, WireClaims};
use crate::scope::Scope;

const PRIVATE_LABEL: &str = "PRIVATE KEY";
const PUBLIC_LABEL: &str = "PUBLIC KEY";

/// Encodes DER as a PEM block with `label`.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes the first PEM block labelled `label`.
fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no `{begin}` block"))?;
    let after = &text[start + begin.len()..];
    let stop = after.find(&end).ok_or_else(|| format!("no `{end}` line"))?;
    let body: String = after[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(body)
        .map_err(|e| format!("bad base64 in PEM body: {e}"))
}

fn key_error(path: &Path, reason: impl std::fmt::Display) -> AuthError {
    AuthError::Key {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Seconds since the Unix epoch now: the clock a token's `exp`, `nbf` and `iat` are read
/// against.
pub fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An Ed25519 key that signs tokens (EdDSA, RFC 8037).
pub struct SigningKey {
    pkcs8: Secret<Vec<u8>>,
    encoding: EncodingKey,
    public_raw: Vec<u8>,
    public_spki: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key.
    pub fn generate() -> Result<SigningKey, AuthError> {
        let generated = Path::new("<generated>");
        let pair = Ed25519KeyPair::generate().map_err(|e| key_error(generated, e))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|e| key_error(generated, e))?;
        SigningKey::from_pkcs8_der(pkcs8.as_ref(), generated)
    }

    /// Reads a PKCS#8 (`PRIVATE KEY`) PEM text; `origin` names it in errors.
    pub fn from_pkcs8_pem(pem: &str, origin: &Path) -> Result<SigningKey, AuthError> {
        let der = pem_decode(pem, PRIVATE_LABEL).map_err(|e| key_error(origin, e))?;
        SigningKey::from_pkcs8_der(&der, origin)
    }

    fn from_pkcs8_der(der: &[u8], origin: &Path) -> Result<SigningKey, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| key_error(origin, format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let public_raw = pair.public_key().as_ref().to_vec();
        let public_spki = pair
            .public_key()
            .as_der()
            .map_err(|e| key_error(origin, e))?
            .as_ref()
            .to_vec();
        let mut key = SigningKey {
            pkcs8: Secret::new(der.to_vec()),
            encoding: EncodingKey::from_ed_der(der),
            public_raw,
            public_spki,
            kid: String::new(),
        };
        key.kid = key
            .jwk_without_kid()
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| key_error(origin, e))?;
        Ok(key)
    }

    /// Loads the key at `path` (a PKCS#8 PEM file). Warns when others can read the file.
    pub fn load(path: &Path) -> Result<SigningKey, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
        warn_if_readable_by_others(path);
        SigningKey::from_pkcs8_pem(&text, path)
    }

    /// Writes the private key to `path` (mode 0600, atomically, replacing an existing file).
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let tmp =
            write_private_temp(path, &self.private_key_pem()).map_err(|e| key_error(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            key_error(path, e)
        })
    }

    /// Loads the key at `path`, generating and saving it (mode 0600) when the file is absent.
    /// Two processes racing here end up with the same key: the loser loads the winner's file.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, AuthError> {
        match std::fs::metadata(path) {
            Ok(_) => SigningKey::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                let tmp = write_private_temp(path, &key.private_key_pem())
                    .map_err(|e| key_error(path, e))?;
                // A hard link never replaces an existing file: the first writer wins.
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        tracing::info!(target: target::SECURITY, path = %path.display(), kid = %key.kid, "signing key generated");
                        Ok(key)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        SigningKey::load(path)
                    }
                    Err(e) => Err(key_error(path, e)),
                }
            }
            Err(e) => Err(key_error(path, e)),
        }
    }

    /// The key id put in every token's header (RFC 7638 thumbprint, SHA-256).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_key_pem(&self) -> Secret<String> {
        Secret::new(pem_encode(PRIVATE_LABEL, self.pkcs8.expose()))
    }

    /// The public key as SubjectPublicKeyInfo PEM (what `auth.public_key_pem_file` reads).
    pub fn public_key_pem(&self) -> String {
        pem_encode(PUBLIC_LABEL, &self.public_spki)
    }

    fn jwk_without_kid(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(&self.public_raw),
            }),
        }
    }

    /// The public key as a JWK (OKP / Ed25519, `alg` EdDSA, `use` sig, with `kid`).
    pub fn jwk(&self) -> Jwk {
        let mut jwk = self.jwk_without_kid();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// A JWKS document holding this key (what `auth.jwks_file` / `auth.jwks_url` serve).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk()],
        }
    }

    /// Signs a token for `request` (EdDSA, `kid` header), valid from now.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, AuthError> {
        self.mint_claims(&request.to_claims()?)
    }

    /// Signs exactly `claims` (EdDSA, `kid` header).
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let wire = WireClaims::from(claims.clone());
        jsonwebtoken::encode(&header, &wire, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(target: target::SECURITY, path = %path.display(), mode = format!("{mode:o}"), "signing key file is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes `text` to a fresh temporary file next to `path` (mode 0600) and returns its path.
fn write_private_temp(path: &Path, text: &Secret<String>) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    let written = file
        .write_all(text.expose().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// What to put in a minted token: a builder over subject, tenant, scopes, audience, issuer,
/// lifetime and kind. Defaults: issuer and audience `liquid`, one hour, kind `user`.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    sub: String,
    tenant: Option<String>,
    scopes: Vec<String>,
    issuer: String,
    audience: Vec<String>,
    ttl: Duration,
    kind: PrincipalKind,
    issued_at: Option<SystemTime>,
    not_before: Option<SystemTime>,
}

impl TokenRequest {
    /// A user token for `sub` without scopes.
    pub fn new(sub: &str) -> TokenRequest {
        TokenRequest {
            sub: sub.into(),
            tenant: None,
            scopes: Vec::new(),
            issuer: "liquid".into(),
            audience: vec!["liquid".into()],
            ttl: Duration::from_secs(3600),
            kind: PrincipalKind::User,
            issued_at: None,
            not_before: None,
        }
    }

    /// A user token for `sub` with `scopes`.
    pub fn user<I, S>(sub: &str, scopes: I) -> TokenRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TokenRequest::new(sub).scopes(scopes)
    }

    /// A service token: subject `service`, kind `service`, with `scopes`.
    pub fn service<I, S>(service: &str, scopes: I) -> TokenRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TokenRequest::new(service)
            .scopes(scopes)
            .kind(PrincipalKind::Service)
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Replaces the scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one scope.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Sets the issuer.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// Sets one audience.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = vec![audience.into()];
        self
    }

    /// Sets several audiences.
    pub fn audiences<I, S>(mut self, audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.audience = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the lifetime (from the issue time).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the principal kind.
    pub fn kind(mut self, kind: PrincipalKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the issue time (default: now); `exp` is this plus the lifetime.
    pub fn issued_at(mut self, at: SystemTime) -> Self {
        self.issued_at = Some(at);
        self
    }

    /// Sets `nbf` (default: the issue time).
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// The lifetime a minted token gets.
    pub(crate) fn lifetime(&self) -> Duration {
        self.ttl
    }

    /// The claims this request stands for, issued now unless [`TokenRequest::issued_at`] says
    /// otherwise. Every scope must parse ([`Scope::parse`]) so that a typo fails loudly instead
    /// of minting a token that grants nothing.
    pub fn to_claims(&self) -> Result<Claims, AuthError> {
        if self.sub.trim().is_empty() {
            return Err(AuthError::MissingClaim("sub".into()));
        }
        for scope in &self.scopes {
            Scope::parse(scope)?;
        }
        let iat = unix_seconds(self.issued_at.unwrap_or_else(SystemTime::now));
        Ok(Claims {
            sub: self.sub.clone(),
            tenant: self.tenant.clone().filter(|t| !t.is_empty()),
            scopes: self.scopes.clone(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: iat.saturating_add(self.ttl.as_secs()),
            nbf: Some(self.not_before.map_or(iat, unix_seconds)),
            iat: Some(iat),
            jti: Some(uuid::Uuid::now_v7().to_string()),
            kind: self.kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_wraps_at_64_columns() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_encode("PUBLIC KEY", &der);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode(&pem, "PUBLIC KEY").unwrap(), der);
        assert!(pem_decode(&pem, "PRIVATE KEY").is_err());
        assert!(
            pem_decode(
                "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----",
                "PUBLIC KEY"
            )
            .is_err()
        );
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_and_stable() {
        let key = SigningKey::generate().unwrap();
        let again =
            SigningKey::from_pkcs8_pem(key.private_key_pem().expose(), Path::new("m")).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.public_key_pem(), again.public_key_pem());
        let x = URL_SAFE_NO_PAD.encode(&key.public_raw);
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        assert_eq!(key.kid(), URL_SAFE_NO_PAD.encode(digest.as_ref()));
        assert_ne!(key.kid(), SigningKey::generate().unwrap().kid());
    }

    #[test]
    fn the_jwks_is_an_okp_ed25519_signature_key_with_kid() {
        let key = SigningKey::generate().unwrap();
        let v = serde_json::to_value(key.jwks()).unwrap();
        let k = &v["keys"][0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["kid"], key.kid());
        assert!(k.get("d").is_none(), "private part leaked into the jwks");
    }

    #[test]
    fn a_token_request_builds_the_claims_it_says() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = TokenRequest::service("cowork", ["a2a:write"])
            .tenant("acme")
            .audiences(["liquid", "a2a"])
            .issuer("liquid-dev")
            .ttl(Duration::from_secs(60))
            .issued_at(t0)
            .not_before(t0 + Duration::from_secs(5))
            .to_claims()
            .unwrap();
        assert_eq!(c.sub, "cowork");
        assert_eq!(c.kind, PrincipalKind::Service);
        assert_eq!(c.tenant_id(), "acme");
        assert_eq!(c.aud, ["liquid", "a2a"]);
        assert_eq!(c.iss, "liquid-dev");
        assert_eq!(
            (c.iat, c.nbf, c.exp),
            (Some(1_000_000), Some(1_000_005), 1_000_060)
        );
        assert!(c.jti.is_some());
    }

    #[test]
    fn bad_scopes_and_empty_subjects_are_refused_at_mint_time() {
        let key = SigningKey::generate().unwrap();
        let err = key
            .mint(&TokenRequest::user("a", ["cowork write"]))
            .unwrap_err();
        assert_eq!(err, AuthError::InvalidScope("cowork write".into()));
        let err = key.mint(&TokenRequest::new(" ")).unwrap_err();
        assert_eq!(err, AuthError::MissingClaim("sub".into()));
    }

    #[test]
    fn a_broken_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let err = SigningKey::load(&dir.path().join("absent.pem")).unwrap_err();
        assert!(err.to_string().contains("absent.pem"), "{err}");
    }
}
