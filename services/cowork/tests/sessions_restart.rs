//! The real `liquid-cowork` binary killed (SIGKILL) in the middle of a step resumes after a
//! restart: the step's agent falls silent, the restarted service declares it dead
//! (`agent:health` dead), retries the step with a new agent in a new container, and the
//! session completes with exactly the retried agent's change staged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use liquid_testkit::model_servers::ModelServer;
use stack::{Api, Dirs, diff_paths, keys, spawn_cowork, wait_healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_killed_mid_step_resumes_after_a_restart() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "restart me\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let model = ModelServer::openai("test-key").await.unwrap();
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let mut cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, Some(&model.base_url())),
    );
    let (config_file, log, base) = stack::process_config(&mut cfg, &dirs);

    let mut first = spawn_cowork(&config_file, &log);
    wait_healthy(&base, &log).await;
    let api = Api::new(base.clone(), keys.writer());
    let id = stack::session_inside_a_long_command(&api, &model, &ws).await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn_cowork(&config_file, &log);
    wait_healthy(&base, &log).await;
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 1, "{done}");

    let agents = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/agents?session_id={id}"),
            None,
        )
        .await;
    let agents = agents["agents"].as_array().unwrap().clone();
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert_eq!(
        (agents[0]["attempt"].as_i64(), agents[0]["state"].as_str()),
        (Some(1), Some("dead"))
    );
    assert!(
        agents[0]["error"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{agents:?}"
    );
    assert_eq!(
        (agents[1]["attempt"].as_i64(), agents[1]["state"].as_str()),
        (Some(2), Some("succeeded"))
    );
    assert_ne!(
        agents[0]["worker"], agents[1]["worker"],
        "the restarted replica ran the retry"
    );
    let events = api.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "agent:health" && e["data"]["status"] == "dead"),
        "{events:?}"
    );
    let diff = api
        .ok(
            "GET",
            &format!(
                "/api/v1/sandbox/{}/diff",
                done["sandbox_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        diff_paths(&diff),
        [("out.txt".to_owned(), "added".to_owned())]
    );

    second.kill().unwrap();
    second.wait().unwrap();
}
