//! A HashiCorp Vault client for the two calls the pool needs, over Vault's HTTP API:
//! AppRole login (`POST /v1/auth/<mount>/login`) or a static token, and KV version 2 reads
//! (`GET /v1/<mount>/data/<path>`, the value under `data.data.<key>`). The client token goes in
//! `X-Vault-Token`, a namespace in `X-Vault-Namespace`. An AppRole token is renewed by logging
//! in again before its lease ends, and once more when Vault answers 403 (revoked token).
//!
//! Hand-written because the two calls are small and the Rust Vault crates pull in a second
//! HTTP stack; reqwest is the workspace's client.

use std::time::{Duration, Instant};

use liquid_kit::Secret;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::VaultSection;
use crate::error::PoolError;

/// Reads KV v2 secrets from Vault.
pub struct VaultClient {
    http: reqwest::Client,
    address: String,
    namespace: String,
    kv_mount: String,
    auth: VaultAuth,
    token: Mutex<Option<(Secret<String>, Instant)>>,
}

enum VaultAuth {
    Token(Secret<String>),
    AppRole {
        mount: String,
        role_id: String,
        secret_id: Secret<String>,
    },
}

impl VaultClient {
    /// A client for `[secrets.vault]`.
    pub fn new(config: &VaultSection) -> Result<VaultClient, PoolError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PoolError::invalid("secrets.vault.address", e.to_string()))?;
        let auth = if config.role_id.is_empty() {
            VaultAuth::Token(config.token.clone())
        } else {
            VaultAuth::AppRole {
                mount: config.approle_mount.trim_matches('/').to_owned(),
                role_id: config.role_id.clone(),
                secret_id: config.secret_id.clone(),
            }
        };
        Ok(VaultClient {
            http,
            address: config.address.trim_end_matches('/').to_owned(),
            namespace: config.namespace.clone(),
            kv_mount: config.kv_mount.trim_matches('/').to_owned(),
            auth,
            token: Mutex::new(None),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.address));
        if !self.namespace.is_empty() {
            req = req.header("X-Vault-Namespace", &self.namespace);
        }
        req
    }

    async fn token(&self, force_login: bool) -> Result<Secret<String>, String> {
        let (mount, role_id, secret_id) = match &self.auth {
            VaultAuth::Token(t) => return Ok(t.clone()),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => (mount, role_id, secret_id),
        };
        let mut cached = self.token.lock().await;
        if !force_login
            && let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let resp = self
            .request(reqwest::Method::POST, &format!("auth/{mount}/login"))
            .json(&serde_json::json!({ "role_id": role_id, "secret_id": secret_id.expose() }))
            .send()
            .await
            .map_err(|e| format!("vault approle login: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "vault approle login answered {status}: {}",
                vault_errors(&body)
            ));
        }
        let token = body
            .pointer("/auth/client_token")
            .and_then(Value::as_str)
            .ok_or("vault approle login returned no auth.client_token")?;
        let lease = body
            .pointer("/auth/lease_duration")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // Renew a little before the lease ends; a lease of 0 means no expiry.
        let ttl = if lease == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(lease.saturating_sub(lease / 10).max(1))
        };
        let token = Secret::new(token.to_owned());
        *cached = Some((token.clone(), Instant::now() + ttl));
        Ok(token)
    }

    /// The value of `key` in the KV v2 secret at `path`.
    pub async fn read(&self, path: &str, key: &str) -> Result<Secret<String>, String> {
        let mut relogged = false;
        loop {
            let token = self.token(relogged).await?;
            let resp = self
                .request(
                    reqwest::Method::GET,
                    &format!("{}/data/{}", self.kv_mount, path),
                )
                .header("X-Vault-Token", token.expose())
                .send()
                .await
                .map_err(|e| format!("vault read: {e}"))?;
            let status = resp.status();
            if status == reqwest::StatusCode::FORBIDDEN
                && !relogged
                && matches!(self.auth, VaultAuth::AppRole { .. })
            {
                relogged = true;
                continue;
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(format!("vault has no secret at {}/{path}", self.kv_mount));
            }
            if !status.is_success() {
                return Err(format!("vault answered {status}: {}", vault_errors(&body)));
            }
            return match body.pointer("/data/data").and_then(|d| d.get(key)) {
                Some(Value::String(s)) => Ok(Secret::new(s.clone())),
                Some(Value::Null) | None => Err(format!(
                    "vault secret {}/{path} has no key `{key}`",
                    self.kv_mount
                )),
                Some(other) => Ok(Secret::new(other.to_string())),
            };
        }
    }
}

fn vault_errors(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no error text".to_owned())
}
