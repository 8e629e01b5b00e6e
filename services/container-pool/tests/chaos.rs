//! Chaos: the service binary is killed (SIGKILL) while acquires and creations are in flight.
//! After a restart on the same database, no container of the pool is left over but the new
//! replica's own, as `docker ps -a` (the engine's list, not the service's word) shows; and a
//! graceful stop (SIGTERM) then removes those too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child {
    child: tokio::process::Child,
    base: String,
}

async fn spawn(config: &std::path::Path, http: u16) -> Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_liquid-container-pool"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Child { child, base }
}

#[tokio::test]
async fn a_killed_service_leaves_nothing_behind_after_restart() {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_name();
    let http = free_port();
    let grpc = free_port();
    let config = dir.path().join("pool.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
http_addr = "127.0.0.1:{http}"
grpc_addr = "127.0.0.1:{grpc}"
shutdown_grace_secs = 20
[database]
url = "sqlite://{db}/pool.db"
[auth]
issuer = "liquid-test"
audience = ["liquid"]
public_key_pem_file = "{key}"
public_key_algorithm = "EdDSA"
[pool]
name = "{pool}"
replenish_interval_ms = 50
heartbeat_secs = 2
[templates.default]
min_idle = 3
max_total = 10
memory_mib = 64
"#,
            db = dir.path().display(),
            key = keys.dir.path().join("pub.pem").display(),
        ),
    )
    .unwrap();
    let docker = docker().await;
    let admin = keys.admin("acme");

    let mut first = spawn(&config, http).await;
    // Acquires in flight (warm ones and cold creations beyond the idle three) when it dies.
    let client = reqwest::Client::new();
    let mut acquires = Vec::new();
    for _ in 0..8 {
        let req = client
            .post(format!("{}/api/v1/containers/claims", first.base))
            .bearer_auth(&admin)
            .json(&json!({}))
            .send();
        acquires.push(tokio::spawn(req));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pool_containers(&docker, &pool).await.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    for a in acquires {
        let _ = a.await;
    }
    let leftovers = pool_containers(&docker, &pool).await;
    assert!(
        !leftovers.is_empty(),
        "the kill left containers behind to sweep"
    );

    // Restart on the same database: the dead replica's containers are swept at start-up.
    let second = spawn(&config, http).await;
    let status: Value = client
        .get(format!("{}/api/v1/containers/status", second.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replica = status["replica_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = pool_containers(&docker, &pool).await;
        let foreign: Vec<_> = now
            .iter()
            .filter(|(_, labels)| labels.get("io.liquid.pool.replica") != Some(&replica))
            .collect();
        if foreign.is_empty() {
            assert!(
                leftovers.keys().all(|id| !now.contains_key(id)),
                "every container of the killed replica is gone"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers of the dead replica remain: {foreign:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new replica works: a claim succeeds.
    let r = client
        .post(format!("{}/api/v1/containers/claims", second.base))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A graceful stop removes everything it created, claimed containers included.
    let pid = second.child.id().unwrap();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut second = second;
    let exit = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .expect("the service stops within the grace period")
        .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(pool_containers(&docker, &pool).await.is_empty());
}
