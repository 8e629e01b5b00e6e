//! Staging sandboxes through the service's REST API (`/api/v1/sandbox`), the real service on
//! PostgreSQL and on SQLite: create → a container edits the work copy → diff shows exactly the
//! changes → a source edited after the baseline is a `conflict` and nothing is written → apply →
//! rollback restores the original bytes; another tenant sees nothing; scopes are enforced; a
//! restart leaves sandboxes pending until resumed; the cleanup job expires sandboxes; every
//! metric the dashboard queries is exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_cowork::CoworkSettings;
use liquid_runtime::ServiceConfig;
use liquid_testkit::postgres::TestDatabase;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::Dirs;
use tokio_util::sync::CancellationToken;

struct Keys {
    _dir: tempfile::TempDir,
    key: SigningKey,
    auth: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "liquid-test", "liquid");
    Keys {
        _dir: dir,
        key,
        auth,
    }
}

impl Keys {
    fn token(&self, sub: &str, tenant: &str, scopes: &[&str]) -> String {
        self.key
            .mint(
                &TokenRequest::user(sub, scopes.iter().copied())
                    .tenant(tenant)
                    .issuer("liquid-test")
                    .audience("liquid"),
            )
            .unwrap()
    }
}

fn config(db: &str, keys: &Keys, settings: CoworkSettings) -> ServiceConfig<CoworkSettings> {
    let mut c = ServiceConfig::<CoworkSettings>::defaults_for(&liquid_cowork::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.auth = keys.auth.clone();
    c.settings = settings;
    c
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            _ => unreachable!(),
        }
        .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn changes(diff: &Value) -> Vec<(String, String)> {
    diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn lifecycle(db_url: &str) {
    let dirs = Dirs::new();
    let keys = keys();
    let src = dirs.workspace(
        "acme",
        "proj",
        &[
            ("a.txt", "one\ntwo\nthree\n"),
            ("b.txt", "bee\n"),
            ("c.txt", "sea\n"),
            ("lib/d.rs", "fn d() {}\n"),
        ],
    );
    std::fs::write(src.join("bin.dat"), [0u8, 1, 2, 3, 255]).unwrap();
    let original: Vec<(PathBuf, Vec<u8>)> = ["a.txt", "b.txt", "c.txt", "lib/d.rs", "bin.dat"]
        .iter()
        .map(|p| (src.join(p), std::fs::read(src.join(p)).unwrap()))
        .collect();
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(
        &config(db_url, &keys, dirs.settings()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let api = Api {
        base: format!("http://{}", running.http_addr()),
        http: reqwest::Client::new(),
    };
    let rw = keys.token("bob", "acme", &["cowork:*"]);
    let ro = keys.token("ann", "acme", &["cowork:read"]);
    let other = keys.token("eve", "globex", &["cowork:*"]);

    // Create, idempotently.
    let create = |key: &'static str| {
        let url = format!("{}/api/v1/sandbox", api.base);
        let body = json!({ "source": src.display().to_string(), "label": "lifecycle" });
        api.http
            .post(url)
            .bearer_auth(&rw)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let r = create("k-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let sb: Value = r.json().await.unwrap();
    let again: Value = create("k-1").await.unwrap().json().await.unwrap();
    assert_eq!(again["sandbox_id"], sb["sandbox_id"]);
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();
    assert_eq!(sb["state"], "active");
    assert_eq!(sb["file_count"], 5);
    assert_eq!(sb["live"], true);
    assert_eq!(sb["copy"]["hardlink"], 5, "{sb}");
    let work = PathBuf::from(sb["work_path"].as_str().unwrap());

    // Attach a container: it gets the host path, and the work copy no longer shares inodes.
    let (s, attached) = api
        .call(
            "PUT",
            &format!("/api/v1/sandbox/{id}/container"),
            &rw,
            Some(json!({"container_id": "c0ffee"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{attached}");
    assert_eq!(attached["host_path"], sb["work_path"]);
    assert_eq!(attached["sandbox"]["container_id"], "c0ffee");

    // The container edits in place.
    std::fs::write(work.join("a.txt"), "one\n2\nthree\n").unwrap();
    std::fs::write(work.join("new.txt"), "fresh\n").unwrap();
    std::fs::remove_file(work.join("c.txt")).unwrap();
    std::fs::write(work.join("bin.dat"), [0u8, 9, 9]).unwrap();
    for (path, bytes) in &original {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "in-place edits reached the source"
        );
    }

    let (s, diff) = api
        .call("GET", &format!("/api/v1/sandbox/{id}/diff"), &ro, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{diff}");
    assert_eq!(
        changes(&diff),
        [
            ("a.txt", "modified"),
            ("bin.dat", "modified"),
            ("c.txt", "deleted"),
            ("new.txt", "added")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(diff["detection"], "notifications");
    let a = &diff["changes"][0];
    assert!(a["diff"].as_str().unwrap().contains("-two\n+2\n"), "{a}");
    assert_eq!(diff["changes"][1]["binary"], true);
    assert!(diff["changes"][1].get("diff").is_none());
    assert!(
        diff["changes"][3]["diff"]
            .as_str()
            .unwrap()
            .starts_with("--- /dev/null\n+++ b/new.txt")
    );

    // Another tenant sees nothing; a read-only caller cannot apply.
    for path in [
        format!("/api/v1/sandbox/{id}"),
        format!("/api/v1/sandbox/{id}/diff"),
    ] {
        let (s, body) = api.call("GET", &path, &other, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (s, body) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/apply"), &other, None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (_, audit) = api.call("GET", "/api/v1/sandbox/audit", &other, None).await;
    assert_eq!(audit["entries"], json!([]));
    let (s, body) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/apply"), &ro, None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("permission_denied"))
    );

    // The source changes after the baseline: apply reports it and writes nothing.
    std::fs::write(src.join("a.txt"), "someone else\n").unwrap();
    let (s, body) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/apply"), &rw, None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(body["error"]["details"]["files"], json!(["a.txt"]));
    assert!(!src.join("new.txt").exists());
    assert!(src.join("c.txt").exists());
    std::fs::write(src.join("a.txt"), "one\ntwo\nthree\n").unwrap();

    // Detach, apply.
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/v1/sandbox/{id}/container"),
            &rw,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, applied) = api
        .call(
            "POST",
            &format!("/api/v1/sandbox/{id}/apply"),
            &rw,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{applied}");
    assert_eq!(applied["sandbox"]["state"], "applied");
    assert_eq!(applied["files"].as_array().unwrap().len(), 4);
    assert_eq!(
        std::fs::read_to_string(src.join("a.txt")).unwrap(),
        "one\n2\nthree\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("new.txt")).unwrap(),
        "fresh\n"
    );
    assert!(!src.join("c.txt").exists());
    assert_eq!(std::fs::read(src.join("bin.dat")).unwrap(), [0u8, 9, 9]);
    let (s, body) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/apply"), &rw, None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("failed_precondition"))
    );

    // Rollback restores the original bytes and removes the added file.
    let (s, rolled) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/rollback"), &rw, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{rolled}");
    assert_eq!(rolled["sandbox"]["state"], "rolled_back");
    for (path, bytes) in &original {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }
    assert!(!src.join("new.txt").exists());
    assert!(
        !work.exists(),
        "the sandbox directory is removed after rollback"
    );

    // The audit log has who, what and the hashes.
    let (s, audit) = api
        .call(
            "GET",
            &format!("/api/v1/sandbox/audit?sandbox_id={id}&limit=100"),
            &ro,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "sandbox.create",
        "container.attach",
        "sandbox.apply",
        "apply.write",
        "apply.delete",
        "rollback.restore",
        "sandbox.rollback",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "sandbox.apply" && e["outcome"] == "conflict")
    );
    let write_a = entries
        .iter()
        .find(|e| e["action"] == "apply.write" && e["path"] == "a.txt")
        .unwrap();
    assert_eq!(write_a["actor"], "bob");
    assert_eq!(write_a["sha256_after"].as_str().unwrap().len(), 64);
    assert_ne!(write_a["sha256_before"], write_a["sha256_after"]);
    let (_, page) = api
        .call(
            "GET",
            &format!("/api/v1/sandbox/audit?sandbox_id={id}&limit=2"),
            &ro,
            None,
        )
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = api
        .call(
            "GET",
            &format!("/api/v1/sandbox/audit?sandbox_id={id}&limit=2&cursor={cursor}"),
            &ro,
            None,
        )
        .await;
    assert_eq!(page2["entries"][0]["audit_id"], entries[2]["audit_id"]);

    // A second sandbox: A2A task, discard.
    let (_, sb2) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": src.display().to_string()})),
        )
        .await;
    let id2 = sb2["sandbox_id"].as_str().unwrap();
    let (s, t) = api
        .call(
            "PUT",
            &format!("/api/v1/sandbox/{id2}/a2a-task"),
            &rw,
            Some(json!({"task_id": "task-7", "state": "working"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["a2a_task_id"], "task-7");
    assert_eq!(t["a2a_task_state"], "TASK_STATE_WORKING");
    let (s, body) = api
        .call(
            "PUT",
            &format!("/api/v1/sandbox/{id2}/a2a-task"),
            &rw,
            Some(json!({"task_id": "task-7", "state": "sleeping"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("state"))
    );
    let (s, d) = api
        .call("POST", &format!("/api/v1/sandbox/{id2}/discard"), &rw, None)
        .await;
    assert_eq!(
        (s, d["state"].as_str()),
        (StatusCode::OK, Some("discarded"))
    );
    assert!(!Path::new(sb2["work_path"].as_str().unwrap()).exists());

    // Bad input gets stable codes.
    let (s, body) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": "/etc"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("permission_denied")),
        "{body}"
    );
    let (s, body) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": "relative/path"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (s, body) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": src.display().to_string(), "nope": 1})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (s, body) = api
        .call("GET", "/api/v1/sandbox/not-a-uuid", &ro, None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (s, body) = api
        .call("GET", "/api/v1/sandbox/audit?limit=0", &ro, None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    // Another tenant's workspace is not a source for this tenant.
    let theirs = dirs.workspace("globex", "proj", &[("x.txt", "x")]);
    let (s, _) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": theirs.display().to_string()})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Every metric the dashboard queries is exported.
    let scrape = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    liquid_testkit::dashboard::assert_exported(
        &scrape,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/cowork/dashboards/cowork.json"),
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn sandbox_lifecycle_over_rest_on_postgres() {
    let db = TestDatabase::create().await.unwrap();
    lifecycle(db.url()).await;
}

#[tokio::test]
async fn sandbox_lifecycle_over_rest_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    lifecycle(&format!("sqlite://{}/cowork.db", dir.path().display())).await;
}

#[tokio::test]
async fn a_restart_leaves_sandboxes_pending_until_resumed() {
    let dirs = Dirs::new();
    let keys = keys();
    let src = dirs.workspace("acme", "proj", &[("a.txt", "a\n")]);
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let cfg = config(&db, &keys, dirs.settings());
    let rw = keys.token("bob", "acme", &["cowork:*"]);

    let first = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api {
        base: format!("http://{}", first.http_addr()),
        http: reqwest::Client::new(),
    };
    let (_, sb) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": src.display().to_string()})),
        )
        .await;
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();
    let (_, pending) = api.call("GET", "/api/v1/sandbox/pending", &rw, None).await;
    assert_eq!(
        pending["sandboxes"],
        json!([]),
        "a live sandbox is not pending"
    );
    first.stop().await.unwrap();
    // Work happened while the service was down.
    std::fs::remove_file(PathBuf::from(sb["work_path"].as_str().unwrap()).join("a.txt")).unwrap();
    std::fs::write(
        PathBuf::from(sb["work_path"].as_str().unwrap()).join("b.txt"),
        "b\n",
    )
    .unwrap();

    let second = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api {
        base: format!("http://{}", second.http_addr()),
        http: reqwest::Client::new(),
    };
    let (s, pending) = api.call("GET", "/api/v1/sandbox/pending", &rw, None).await;
    assert_eq!(s, StatusCode::OK, "{pending}");
    assert_eq!(pending["sandboxes"][0]["sandbox_id"], id.as_str());
    assert_eq!(pending["sandboxes"][0]["live"], false);
    let other = keys.token("eve", "globex", &["cowork:*"]);
    let (_, theirs) = api
        .call("GET", "/api/v1/sandbox/pending", &other, None)
        .await;
    assert_eq!(theirs["sandboxes"], json!([]));
    let (s, resumed) = api
        .call("POST", &format!("/api/v1/sandbox/{id}/resume"), &rw, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["live"], true);
    let (_, pending) = api.call("GET", "/api/v1/sandbox/pending", &rw, None).await;
    assert_eq!(pending["sandboxes"], json!([]));
    let (_, diff) = api
        .call("GET", &format!("/api/v1/sandbox/{id}/diff"), &rw, None)
        .await;
    assert_eq!(
        diff["detection"], "walk",
        "the first diff after a resume walks the tree"
    );
    assert_eq!(
        changes(&diff),
        [
            ("a.txt".to_owned(), "deleted".to_owned()),
            ("b.txt".to_owned(), "added".to_owned())
        ]
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn the_cleanup_job_expires_sandboxes() {
    let dirs = Dirs::new();
    let keys = keys();
    let src = dirs.workspace("acme", "proj", &[("a.txt", "a\n")]);
    let mut settings = dirs.settings();
    settings.sandbox.cleanup_interval_secs = 1;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(
        &config(&db, &keys, settings),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let api = Api {
        base: format!("http://{}", running.http_addr()),
        http: reqwest::Client::new(),
    };
    let rw = keys.token("bob", "acme", &["cowork:*"]);
    let (_, sb) = api
        .call(
            "POST",
            "/api/v1/sandbox",
            &rw,
            Some(json!({"source": src.display().to_string(), "ttl_secs": 1})),
        )
        .await;
    let id = sb["sandbox_id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, now) = api
            .call("GET", &format!("/api/v1/sandbox/{id}"), &rw, None)
            .await;
        if now["state"] == "expired" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!Path::new(sb["work_path"].as_str().unwrap()).exists());
    assert_eq!(std::fs::read_to_string(src.join("a.txt")).unwrap(), "a\n");
    let (_, audit) = api
        .call(
            "GET",
            "/api/v1/sandbox/audit?action=sandbox.expire",
            &rw,
            None,
        )
        .await;
    assert_eq!(audit["entries"][0]["actor"], "system:cleanup");
    running.stop().await.unwrap();
}
