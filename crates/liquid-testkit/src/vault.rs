//! A local HTTP server speaking the part of HashiCorp Vault's API that secret clients use, for
//! tests (Vault itself cannot run here): token auth (`X-Vault-Token`, optional
//! `X-Vault-Namespace`), AppRole login (`POST /v1/auth/<mount>/login` with `role_id` and
//! `secret_id`, answering `auth.client_token` and `auth.lease_duration`), and the KV version 2
//! engine (`GET`/`POST`/`PUT /v1/<mount>/data/<path>`, the secret under `data.data` with
//! `data.metadata.version`). Errors are Vault's shape, `{"errors": [...]}`, with its statuses:
//! 400 for a bad login, 403 `permission denied` for a missing, unknown or revoked token, 404
//! for a missing secret (empty `errors`).
//!
//! The test controls it: [`VaultServer::put`] writes secrets, [`VaultServer::add_approle`]
//! creates a role, [`VaultServer::revoke_all`] revokes every issued token (to test re-login),
//! and counters report how often clients logged in and read. One server per test; it stops
//! when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct VaultState {
    root_token: String,
    namespace: Option<String>,
    tokens: HashMap<String, ()>,
    approles: HashMap<String, (String, u64)>,
    secrets: HashMap<(String, String), (Value, u64)>,
    logins: usize,
    reads: usize,
}

type Shared = Arc<Mutex<VaultState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, VaultState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake Vault.
pub struct VaultServer {
    addr: SocketAddr,
    state: Shared,
    stop: CancellationToken,
}

impl std::fmt::Debug for VaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn errors(status: StatusCode, messages: &[&str]) -> Response {
    (status, axum::Json(json!({ "errors": messages }))).into_response()
}

/// `YYYY-MM-DDTHH:MM:SSZ` of now (Vault's metadata timestamps), without a date crate.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

async fn handle(
    State(state): State<Shared>,
    Path(rest): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    {
        let s = lock(&state);
        if let Some(ns) = &s.namespace
            && header("x-vault-namespace").as_deref() != Some(ns.as_str())
        {
            return errors(StatusCode::FORBIDDEN, &["permission denied"]);
        }
    }
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    // AppRole login: auth/<mount>/login.
    if parts.len() == 3 && parts[0] == "auth" && parts[2] == "login" && method == Method::POST {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let role = v.get("role_id").and_then(Value::as_str).unwrap_or_default();
        let secret = v
            .get("secret_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut s = lock(&state);
        s.logins += 1;
        let Some((expected, lease)) = s.approles.get(role).cloned() else {
            return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
        };
        if expected != secret {
            return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
        }
        let token = format!("hvs.{}", uuid::Uuid::new_v4().simple());
        s.tokens.insert(token.clone(), ());
        return axum::Json(json!({
            "request_id": uuid::Uuid::new_v4().to_string(),
            "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": null, "wrap_info": null, "warnings": null,
            "auth": {
                "client_token": token,
                "accessor": uuid::Uuid::new_v4().simple().to_string(),
                "policies": ["default"], "token_policies": ["default"],
                "metadata": { "role_name": role },
                "lease_duration": lease, "renewable": true,
                "entity_id": "", "token_type": "service", "orphan": true,
            },
        }))
        .into_response();
    }
    // KV v2: <mount>/data/<path...>.
    if parts.len() >= 3 && parts[1] == "data" {
        let token = header("x-vault-token").unwrap_or_default();
        let mut s = lock(&state);
        if token != s.root_token && !s.tokens.contains_key(&token) {
            return errors(StatusCode::FORBIDDEN, &["permission denied"]);
        }
        let key = (parts[0].to_owned(), parts[2..].join("/"));
        match method {
            Method::GET => {
                s.reads += 1;
                let Some((data, version)) = s.secrets.get(&key).cloned() else {
                    return errors(StatusCode::NOT_FOUND, &[]);
                };
                return axum::Json(json!({
                    "request_id": uuid::Uuid::new_v4().to_string(),
                    "lease_id": "", "renewable": false, "lease_duration": 0,
                    "data": {
                        "data": data,
                        "metadata": {
                            "created_time": now_rfc3339(), "custom_metadata": null,
                            "deletion_time": "", "destroyed": false, "version": version,
                        },
                    },
                    "wrap_info": null, "warnings": null, "auth": null,
                }))
                .into_response();
            }
            Method::POST | Method::PUT => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let Some(data) = v.get("data").filter(|d| d.is_object()).cloned() else {
                    return errors(StatusCode::BAD_REQUEST, &["no data provided"]);
                };
                let version = s.secrets.get(&key).map_or(1, |(_, v)| v + 1);
                s.secrets.insert(key, (data, version));
                return axum::Json(json!({
                    "data": {
                        "created_time": now_rfc3339(), "deletion_time": "",
                        "destroyed": false, "version": version,
                    },
                }))
                .into_response();
            }
            _ => return errors(StatusCode::METHOD_NOT_ALLOWED, &["unsupported operation"]),
        }
    }
    errors(
        StatusCode::NOT_FOUND,
        &[&format!("no handler for route \"{rest}\"")],
    )
}

impl VaultServer {
    /// Starts a server on a free loopback port with a fresh root token.
    pub async fn start() -> anyhow::Result<VaultServer> {
        let state: Shared = Arc::new(Mutex::new(VaultState {
            root_token: format!("hvs.root{}", uuid::Uuid::new_v4().simple()),
            ..VaultState::default()
        }));
        let app = Router::new()
            .route("/v1/{*rest}", any(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Ok(VaultServer { addr, state, stop })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token that may read and write everything.
    pub fn root_token(&self) -> String {
        lock(&self.state).root_token.clone()
    }

    /// Requires `X-Vault-Namespace: <ns>` on every request from now on.
    pub fn require_namespace(&self, ns: &str) {
        lock(&self.state).namespace = Some(ns.to_owned());
    }

    /// Writes a KV v2 secret (a JSON object) at `path` under `mount`.
    pub fn put(&self, mount: &str, path: &str, data: Value) {
        let mut s = lock(&self.state);
        let key = (mount.to_owned(), path.trim_matches('/').to_owned());
        let version = s.secrets.get(&key).map_or(1, |(_, v)| v + 1);
        s.secrets.insert(key, (data, version));
    }

    /// Creates an AppRole whose tokens have a lease of `lease_secs`.
    pub fn add_approle(&self, role_id: &str, secret_id: &str, lease_secs: u64) {
        lock(&self.state)
            .approles
            .insert(role_id.to_owned(), (secret_id.to_owned(), lease_secs));
    }

    /// Revokes every token issued by AppRole logins (the root token stays).
    pub fn revoke_all(&self) {
        lock(&self.state).tokens.clear();
    }

    /// How many logins were attempted.
    pub fn logins(&self) -> usize {
        lock(&self.state).logins
    }

    /// How many authorised KV reads were made.
    pub fn reads(&self) -> usize {
        lock(&self.state).reads
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn speaks_kv2_and_approle_with_vaults_statuses() {
        let v = VaultServer::start().await.unwrap();
        let http = reqwest::Client::new();
        let base = v.url();
        // Write with the root token, read it back.
        let w = http
            .post(format!("{base}/v1/secret/data/app/db"))
            .header("X-Vault-Token", v.root_token())
            .json(&json!({"data": {"password": "pw"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(w.status(), 200);
        let r: Value = http
            .get(format!("{base}/v1/secret/data/app/db"))
            .header("X-Vault-Token", v.root_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["data"]["data"]["password"], "pw");
        assert_eq!(r["data"]["metadata"]["version"], 1);
        assert!(
            r["data"]["metadata"]["created_time"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        // No token, a missing secret, a bad login.
        let denied = http
            .get(format!("{base}/v1/secret/data/app/db"))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 403);
        let missing = http
            .get(format!("{base}/v1/secret/data/none"))
            .header("X-Vault-Token", v.root_token())
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        v.add_approle("role", "sid", 60);
        let bad = http
            .post(format!("{base}/v1/auth/approle/login"))
            .json(&json!({"role_id": "role", "secret_id": "nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        let login: Value = http
            .post(format!("{base}/v1/auth/approle/login"))
            .json(&json!({"role_id": "role", "secret_id": "sid"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        assert_eq!(login["auth"]["lease_duration"], 60);
        let ok = http
            .get(format!("{base}/v1/secret/data/app/db"))
            .header("X-Vault-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        v.revoke_all();
        let revoked = http
            .get(format!("{base}/v1/secret/data/app/db"))
            .header("X-Vault-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 403);
        assert_eq!(v.logins(), 2);
        assert_eq!(v.reads(), 3);
    }
}
