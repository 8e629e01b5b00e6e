//! A command in a real step container (cowork on SQLite, container-pool on Docker, the offline
//! planner and model) writes the mounted work copy directly; what it changed goes through the
//! permission pipeline when the command returns. A blocked extension, a symlink to `/etc`, an
//! oversize file and a set-user-id bit are taken back and audited with their stage and the
//! container origin; the legitimate file stays and is the only change in the diff; the agent
//! is told in the command's result.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use stack::{Api, Dirs, keys};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_command_s_hostile_changes_are_reverted_and_audited() {
    let keys = keys();
    let dirs = Dirs::new();
    let ws = dirs.workspace(&[("README.md", "contained\n"), ("run.sh", "echo hi\n")]);
    let (_pool, pool_grpc, _pool_dir) = stack::start_pool(&keys, &dirs.sandbox_root()).await;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let mut settings = stack::settings(&dirs, &keys, None);
    settings.permissions.max_file_bytes = 10_000;
    let cfg = stack::config(&db, "memory://", &keys, &pool_grpc, settings);
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());

    let command = "printf MZ > payload.exe; ln -s /etc/passwd leak; mkdir -p src; \
        echo ok > src/ok.txt; head -c 20000 /dev/zero > big.txt; chmod 4755 run.sh; echo done";
    let request = format!(
        "Build the thing.\n- Look\n@tool list_files {{}}\n- Build\n@tool run_command {}\n",
        serde_json::json!({ "command": command })
    );
    let id = api.create_session(&ws, &request, "sequential").await;
    api.wait_state(&id, "awaiting_approval").await;
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let done = api.wait_state(&id, "completed").await;
    assert_eq!(done["steps"]["succeeded"], 2, "{done}");
    let sandbox = done["sandbox_id"].as_str().unwrap();

    // Only the legitimate file is a change.
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        stack::diff_paths(&diff),
        [("src/ok.txt".to_owned(), "added".to_owned())]
    );

    // Each denial is audited with its stage and the container origin.
    let audit = api
        .ok(
            "GET",
            &format!(
                "/api/v1/sandbox/audit?sandbox_id={sandbox}&action=permission.denied&limit=100"
            ),
            None,
        )
        .await;
    let mut denied: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["origin"] == "container")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["stage"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    denied.sort();
    assert_eq!(
        denied,
        [
            ("big.txt".to_owned(), "size_limit".to_owned()),
            ("leak".into(), "blocked_prefix".into()),
            ("payload.exe".into(), "extension".into()),
            ("run.sh".into(), "capability".into()),
        ],
        "{audit}"
    );

    // The agent was told: the command's result in the step log names every reversal.
    let arts = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let log = arts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "log")
        .filter_map(|a| a["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for path in ["payload.exe", "leak", "big.txt", "run.sh"] {
        assert!(
            log.contains(&format!("permission pipeline: write of `{path}` reverted")),
            "{path} not reported to the agent:\n{log}"
        );
    }
    // The set-user-id bit is gone again; the file is the source's.
    let file = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}"), None)
        .await;
    let work = std::path::PathBuf::from(file["work_path"].as_str().unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.join("run.sh"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o6000, 0, "set-id bits stripped: {mode:o}");
    assert!(std::fs::symlink_metadata(work.join("payload.exe")).is_err());
    assert!(std::fs::symlink_metadata(work.join("leak")).is_err());
    running.stop().await.unwrap();
}
