//! Token verification: header checks, key choice, signature, issuer, audience and times.
//!
//! A [`Verifier`] holds fixed keys (a PEM public key, the development HS256 secret) and keys
//! from JWKS sources (a file, a URL). JWKS sources are reloaded on an interval by a background
//! task that stops with the verifier, and on demand when a token names an unknown `kid`, at most
//! once per `jwks_min_refetch_secs` so that random key ids cannot turn into a fetch storm. A
//! failed reload keeps the keys in hand. Signature checks and claim validation are
//! jsonwebtoken's (aws-lc-rs backend); this module decides which key and which rules apply and
//! turns every refusal into its own [`AuthError`].
//!
//! Verified tokens are remembered for `cache_ttl_secs` (like Envoy's `jwt_authn` cache), keyed
//! by the SHA-256 of the exact token bytes, so a caller's next requests skip the signature
//! check, which otherwise costs more than the rest of a small request. A remembered token is
//! never honoured past its `exp`, and the cache is emptied whenever the keys are (re)installed,
//! so a key removed from the JWKS stops being honoured at the same moment as without the cache:
//! the answer is always the one a full verification would give.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use liquid_kit::telemetry::target;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::AuthError;
use crate::claims::{Claims, WireClaims};
use crate::config::AuthConfig;
use crate::keys::{self, VerificationKey};
use crate::signing::unix_now;

/// Longest token accepted; anything longer is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where JWKS keys come from.
#[derive(Debug)]
enum KeySource {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl KeySource {
    fn location(&self) -> String {
        match self {
            KeySource::File(path) => path.display().to_string(),
            KeySource::Url { url, .. } => url.clone(),
        }
    }

    async fn load(&self) -> Result<Vec<VerificationKey>, AuthError> {
        let location = self.location();
        let failed = |reason: String| AuthError::Jwks {
            location: location.clone(),
            reason,
        };
        let bytes = match self {
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| failed(e.to_string()))?,
            KeySource::Url { url, client } => {
                let mut response = client
                    .get(url)
                    .header(http::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| failed(format!("fetch failed: {e}")))?;
                if !response.status().is_success() {
                    return Err(failed(format!("answered {}", response.status())));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| failed(format!("read failed: {e}")))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(failed(format!("document exceeds {MAX_JWKS_BYTES} bytes")));
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        keys::keys_from_jwks(&bytes, &location)
    }
}

/// Reload bookkeeping; the mutex around it also makes concurrent reloads queue up.
struct RefreshState {
    per_source: Vec<Vec<VerificationKey>>,
    last_attempt: Option<Instant>,
}

/// Verified tokens by the SHA-256 of their bytes, with the counts of answers from it.
struct Verified {
    tokens: moka::sync::Cache<[u8; 32], Arc<Claims>>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

struct Shared {
    validation: Validation,
    audiences: Vec<String>,
    issuer: String,
    required: bool,
    fixed: Vec<VerificationKey>,
    sources: Vec<KeySource>,
    current: RwLock<Arc<Vec<VerificationKey>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    min_refetch: Duration,
    verified: Option<Verified>,
    /// Bumped by every key installation; a verification that saw another generation does not
    /// stay in `verified`.
    generation: AtomicU64,
}

impl Shared {
    fn keys(&self) -> Arc<Vec<VerificationKey>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, per_source: &[Vec<VerificationKey>]) {
        let merged: Vec<VerificationKey> = self
            .fixed
            .iter()
            .chain(per_source.iter().flatten())
            .cloned()
            .collect();
        let merged = Arc::new(merged);
        match self.current.write() {
            Ok(mut guard) => *guard = merged,
            Err(poisoned) => *poisoned.into_inner() = merged,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(verified) = &self.verified {
            verified.tokens.invalidate_all();
        }
    }

    /// Reloads every source. `forced` ignores the unknown-kid rate limit. Returns whether a
    /// reload was attempted.
    async fn reload(&self, forced: bool) -> Result<bool, AuthError> {
        if self.sources.is_empty() {
            return Ok(false);
        }
        let mut state = self.refresh.lock().await;
        if !forced
            && state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return Ok(false);
        }
        state.last_attempt = Some(Instant::now());
        let mut first_error = None;
        for (index, source) in self.sources.iter().enumerate() {
            match source.load().await {
                Ok(keys) => {
                    if let Some(slot) = state.per_source.get_mut(index) {
                        *slot = keys;
                    }
                }
                Err(error) => {
                    tracing::warn!(target: target::SECURITY, location = %source.location(), %error, "jwks reload failed; keeping the keys in hand");
                    first_error.get_or_insert(error);
                }
            }
        }
        self.install(&state.per_source);
        tracing::debug!(target: target::SECURITY, keys = self.keys().len(), "verification keys reloaded");
        match first_error {
            Some(error) => Err(error),
            None => Ok(true),
        }
    }
}

/// Verifies tokens against the configured keys and rules. Build it once per service with
/// [`Verifier::from_config`] and share it behind an `Arc`.
pub struct Verifier {
    shared: Arc<Shared>,
    // Cancels the background reload task when the verifier goes away.
    _reloader: Option<DropGuard>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.shared.issuer)
            .field("audiences", &self.shared.audiences)
            .field("required", &self.shared.required)
            .field("keys", &self.shared.keys().len())
            .field("sources", &self.shared.sources)
            .finish()
    }
}

/// The header fields verification needs.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    let malformed = |reason: &str| AuthError::Malformed(reason.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("token is larger than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "not a compact JWS (three dot-separated parts; encrypted tokens are not accepted)",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    #[derive(serde::Deserialize)]
    struct RawHeader {
        alg: Option<String>,
        kid: Option<String>,
        crit: Option<serde_json::Value>,
    }
    let raw: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))?;
    let alg = raw.alg.ok_or_else(|| malformed("header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgorithmNone);
    }
    // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
    if raw.crit.is_some() {
        return Err(malformed(
            "critical header extensions (crit) are not supported",
        ));
    }
    let alg = keys::parse_algorithm(&alg).ok_or_else(|| AuthError::AlgorithmNotAllowed {
        alg: alg.chars().take(32).collect(),
    })?;
    Ok(TokenHeader {
        alg,
        kid: raw.kid.filter(|k| !k.is_empty()),
    })
}

fn refusal_from(error: &jsonwebtoken::errors::Error, alg: Algorithm) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed {
                alg: format!("{alg:?}"),
            }
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Malformed(format!("claim `{claim}` has the wrong type"))
        }
        ErrorKind::Json(e) => AuthError::Malformed(format!("claims: {e}")),
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url".into()),
        ErrorKind::Utf8(_) => AuthError::Malformed("claims are not UTF-8".into()),
        _ => AuthError::Malformed(error.to_string()),
    }
}

impl Verifier {
    /// Loads the keys `config` names (reading files and fetching the JWKS URL now, so a bad
    /// source fails start-up) and starts the periodic JWKS reload. Must run inside a Tokio
    /// runtime. With `required = true` and no key at all: [`AuthError::NoKeySource`].
    pub async fn from_config(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let mut fixed = Vec::new();
        if let Some(path) = &config.public_key_pem_file {
            let location = path.display().to_string();
            let pem = tokio::fs::read(path).await.map_err(|e| AuthError::Key {
                path: location.clone(),
                reason: e.to_string(),
            })?;
            fixed.push(keys::key_from_pem(
                &pem,
                config.public_key_algorithm,
                &location,
            )?);
        }
        if config.allow_hs256_dev && !config.hs256_secret.is_empty() {
            tracing::warn!(target: target::SECURITY, "hs256 development secret accepted; never enable this in production");
            fixed.push(keys::hs256_key(config.hs256_secret.expose()));
        }
        let mut sources = Vec::new();
        if let Some(path) = &config.jwks_file {
            sources.push(KeySource::File(path.clone()));
        }
        if let Some(url) = &config.jwks_url {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(config.jwks_timeout_secs.max(1)))
                .user_agent(concat!("liquid-auth/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| AuthError::Jwks {
                    location: url.clone(),
                    reason: format!("cannot build the http client: {e}"),
                })?;
            sources.push(KeySource::Url {
                url: url.clone(),
                client,
            });
        }
        let mut per_source = Vec::with_capacity(sources.len());
        for source in &sources {
            per_source.push(source.load().await?);
        }

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&config.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        let shared = Arc::new(Shared {
            validation,
            audiences: config.audience.clone(),
            issuer: config.issuer.clone(),
            required: config.required,
            fixed,
            sources,
            current: RwLock::new(Arc::new(Vec::new())),
            refresh: tokio::sync::Mutex::new(RefreshState {
                per_source: Vec::new(),
                last_attempt: Some(Instant::now()),
            }),
            min_refetch: Duration::from_secs(config.jwks_min_refetch_secs),
            verified: (config.cache_ttl_secs > 0).then(|| {
                // The process-wide recorder first, so the counters are not registered with the
                // no-op one.
                liquid_kit::metrics::handle();
                let name = "liquid_auth_verified_token_cache_total";
                Verified {
                    tokens: moka::sync::Cache::builder()
                        .max_capacity(config.cache_max_entries)
                        .time_to_live(Duration::from_secs(config.cache_ttl_secs))
                        .build(),
                    hits: metrics::counter!(name, "result" => "hit"),
                    misses: metrics::counter!(name, "result" => "miss"),
                }
            }),
            generation: AtomicU64::new(0),
        });
        shared.install(&per_source);
        shared.refresh.lock().await.per_source = per_source;

        let key_count = shared.keys().len();
        if key_count == 0 {
            if config.required {
                return Err(AuthError::NoKeySource);
            }
            tracing::warn!(target: target::SECURITY, "auth not required and no verification key configured; every token will be refused");
        }
        let reloader = (!shared.sources.is_empty() && config.jwks_refresh_secs > 0)
            .then(|| spawn_reloader(&shared, Duration::from_secs(config.jwks_refresh_secs)));
        tracing::info!(target: target::SECURITY, issuer = %config.issuer, audiences = ?config.audience, keys = key_count, required = config.required, "token verifier ready");
        Ok(Verifier {
            shared,
            _reloader: reloader,
        })
    }

    /// Verifies `token` with the keys in hand and returns its claims: from the cache of
    /// verified tokens when this exact token passed recently and has not expired, else in full.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let Some(verified) = &self.shared.verified else {
            return self.verify_in_full(token);
        };
        if token.len() > MAX_TOKEN_BYTES {
            return self.verify_in_full(token);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(claims) = verified.tokens.get(&key) {
            if claims.exp > unix_now() {
                verified.hits.increment(1);
                return Ok(Claims::clone(&claims));
            }
            verified.tokens.invalidate(&key);
        }
        verified.misses.increment(1);
        let generation = self.shared.generation.load(Ordering::Acquire);
        let claims = self.verify_in_full(token)?;
        verified.tokens.insert(key, Arc::new(claims.clone()));
        // Keys installed meanwhile: the answer stands (it was right for the keys it saw), but
        // it must not outlive them in the cache.
        if self.shared.generation.load(Ordering::Acquire) != generation {
            verified.tokens.invalidate(&key);
        }
        Ok(claims)
    }

    fn verify_in_full(&self, token: &str) -> Result<Claims, AuthError> {
        let header = parse_header(token)?;
        let keys = self.shared.keys();
        let jwks_may_add = !self.shared.sources.is_empty();
        let key = keys::select(&keys, header.alg, header.kid.as_deref(), jwks_may_add)?;
        let mut validation = self.shared.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<WireClaims>(token, &key.key, &validation)
            .map_err(|e| refusal_from(&e, header.alg))?;
        Claims::try_from(data.claims)
    }

    /// Like [`Verifier::verify`], but a token naming an unknown `kid` first reloads the JWKS
    /// sources (rate limited by `jwks_min_refetch_secs`) and is checked again: how a rotated-in
    /// key is picked up before the next periodic reload.
    pub async fn verify_or_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify(token) {
            Err(AuthError::UnknownKey { kid }) if !self.shared.sources.is_empty() => {
                match self.shared.reload(false).await {
                    Ok(true) => {
                        tracing::info!(target: target::SECURITY, %kid, "jwks reloaded for an unknown key id");
                    }
                    Ok(false) => {
                        tracing::debug!(target: target::SECURITY, %kid, "unknown key id; jwks reload rate limited");
                    }
                    Err(_) => {}
                }
                self.verify(token)
            }
            other => other,
        }
    }

    /// Reloads every JWKS source now, ignoring the rate limit. Keys of a source that fails
    /// stay as they were; the first failure is returned.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        self.shared.reload(true).await.map(|_| ())
    }

    /// Whether requests without a token are refused.
    pub fn required(&self) -> bool {
        self.shared.required
    }

    /// The expected issuer.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.shared.audiences
    }

    /// Key ids of the keys in hand (keys without a kid are not listed).
    pub fn key_ids(&self) -> Vec<String> {
        self.shared
            .keys()
            .iter()
            .filter_map(|k| k.kid.clone())
            .collect()
    }
}

fn spawn_reloader(shared: &Arc<Shared>, period: Duration) -> DropGuard {
    let token = CancellationToken::new();
    let weak = Arc::downgrade(shared);
    liquid_kit::shutdown::spawn_named("jwks-reload", token.clone(), async move {
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = weak.upgrade() else {
                break;
            };
            // Failures are logged by `reload`; the keys in hand stay valid.
            let _ = shared.reload(true).await;
        }
    });
    token.drop_guard()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn headers_are_checked_before_any_key_is_touched() {
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none"})),
            b64(serde_json::json!({}))
        );
        assert!(matches!(parse_header(&none), Err(AuthError::AlgorithmNone)));
        let none_upper = format!("{}.e30.", b64(serde_json::json!({"alg": "NONE"})));
        assert!(matches!(
            parse_header(&none_upper),
            Err(AuthError::AlgorithmNone)
        ));
        let hs512 = format!("{}.e30.sig", b64(serde_json::json!({"alg": "HS512"})));
        assert_eq!(
            parse_header(&hs512).err(),
            Some(AuthError::AlgorithmNotAllowed {
                alg: "HS512".into()
            })
        );
        let crit = format!(
            "{}.e30.sig",
            b64(serde_json::json!({"alg": "EdDSA", "crit": ["exp"]}))
        );
        assert!(matches!(parse_header(&crit), Err(AuthError::Malformed(_))));
        let no_alg = format!("{}.e30.sig", b64(serde_json::json!({"kid": "a"})));
        assert!(matches!(
            parse_header(&no_alg),
            Err(AuthError::Malformed(_))
        ));
        for bad in ["", "abc", "a.b", "a.b.c.d.e", "!!!.e30.sig"] {
            assert!(
                matches!(parse_header(bad), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(parse_header(&huge), Err(AuthError::Malformed(_))));
        let ok = format!(
            "{}.e30.sig",
            b64(serde_json::json!({"alg": "ES256", "kid": "k1"}))
        );
        let header = parse_header(&ok).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("k1"));
    }
}
