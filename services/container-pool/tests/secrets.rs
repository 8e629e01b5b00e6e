//! Secret backends against local servers speaking their real protocols: HashiCorp Vault (the
//! testkit's KV v2 + token/AppRole server) and AWS Secrets Manager (`moto_server` from PyPI,
//! started here on a free loopback port; `pip install 'moto[server]'`). Values come back
//! right, are cached for the TTL, and errors name the secret without its value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use liquid_container_pool::config::SecretsSection;
use liquid_container_pool::error::PoolError;
use liquid_container_pool::secrets::SecretResolver;
use liquid_kit::Secret;
use liquid_testkit::vault::VaultServer;
use serde_json::json;

#[tokio::test]
async fn vault_kv2_with_a_token_and_with_approle() {
    let vault = VaultServer::start().await.unwrap();
    vault.put("secret", "ci/github", json!({"token": "ghp_abc", "n": 7}));
    let mut cfg = SecretsSection::default();
    cfg.vault.address = vault.url();
    cfg.vault.token = Secret::new(vault.root_token());
    cfg.refs.insert("gh".into(), "vault:ci/github#token".into());
    cfg.refs.insert("n".into(), "vault:ci/github#n".into());
    cfg.refs
        .insert("nokey".into(), "vault:ci/github#missing".into());
    cfg.refs.insert("nopath".into(), "vault:ci/none#x".into());
    let r = SecretResolver::new(&cfg).unwrap();
    assert_eq!(r.resolve("gh").await.unwrap().expose(), "ghp_abc");
    assert_eq!(r.resolve("n").await.unwrap().expose(), "7");
    // Cached: a second read does not reach Vault.
    let reads = vault.reads();
    r.resolve("gh").await.unwrap();
    assert_eq!(vault.reads(), reads);
    let e = r.resolve("nokey").await.unwrap_err().to_string();
    assert!(e.contains("no key `missing`"), "{e}");
    let e = r.resolve("nopath").await.unwrap_err();
    assert!(matches!(e, PoolError::Secret { .. }), "{e}");
    assert!(!e.to_string().contains("ghp_abc"));

    // AppRole: logs in once, reuses the token, logs in again after a revocation.
    vault.add_approle("pool-role", "s3cret-id", 3600);
    let mut cfg = SecretsSection {
        cache_ttl_secs: 0,
        ..SecretsSection::default()
    };
    cfg.vault.address = vault.url();
    cfg.vault.role_id = "pool-role".into();
    cfg.vault.secret_id = Secret::new("s3cret-id".into());
    cfg.refs.insert("gh".into(), "vault:ci/github#token".into());
    let r = SecretResolver::new(&cfg).unwrap();
    assert_eq!(r.resolve("gh").await.unwrap().expose(), "ghp_abc");
    assert_eq!(r.resolve("gh").await.unwrap().expose(), "ghp_abc");
    assert_eq!(vault.logins(), 1, "the token is reused within its lease");
    vault.revoke_all();
    assert_eq!(r.resolve("gh").await.unwrap().expose(), "ghp_abc");
    assert_eq!(vault.logins(), 2, "a 403 triggers one new login");

    // A wrong secret id is an error that says what Vault said.
    cfg.vault.secret_id = Secret::new("wrong".into());
    let r = SecretResolver::new(&cfg).unwrap();
    let e = r.resolve("gh").await.unwrap_err().to_string();
    assert!(e.contains("invalid role or secret ID"), "{e}");
}

struct Moto {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("moto_server is not installed: pip install 'moto[server]' (make deps)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "moto_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto { child, url }
}

/// Creates a secret through moto's own Secrets Manager API (unsigned requests are fine there).
async fn create_secret(url: &str, name: &str, value: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "secretsmanager.CreateSecret")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/20250101/eu-west-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=00",
        )
        .body(json!({"Name": name, "SecretString": value}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn aws_secrets_manager_over_sigv4() {
    let moto = moto().await;
    create_secret(
        &moto.url,
        "prod/db",
        r#"{"password":"hunter2","port":5432}"#,
    )
    .await;
    create_secret(&moto.url, "plain", "just-a-string").await;
    let mut cfg = SecretsSection::default();
    cfg.aws.region = "eu-west-1".into();
    cfg.aws.endpoint = moto.url.clone();
    cfg.aws.access_key_id = "AKIDTEST".into();
    cfg.aws.secret_access_key = Secret::new("test-secret".into());
    cfg.refs.insert("db".into(), "aws:prod/db#password".into());
    cfg.refs.insert("port".into(), "aws:prod/db#port".into());
    cfg.refs.insert("plain".into(), "aws:plain".into());
    cfg.refs.insert("whole".into(), "aws:prod/db".into());
    cfg.refs.insert("missing".into(), "aws:nope".into());
    cfg.refs.insert("notjson".into(), "aws:plain#k".into());
    let r = SecretResolver::new(&cfg).unwrap();
    assert_eq!(r.resolve("db").await.unwrap().expose(), "hunter2");
    assert_eq!(r.resolve("port").await.unwrap().expose(), "5432");
    assert_eq!(r.resolve("plain").await.unwrap().expose(), "just-a-string");
    assert!(
        r.resolve("whole")
            .await
            .unwrap()
            .expose()
            .contains("hunter2")
    );
    let e = r.resolve("missing").await.unwrap_err().to_string();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    let e = r.resolve("notjson").await.unwrap_err().to_string();
    assert!(e.contains("not a JSON object"), "{e}");
}
