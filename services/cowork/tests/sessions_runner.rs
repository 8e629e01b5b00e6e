//! A step run by the coding CLI container-pool's task analyzer picks (cowork on SQLite,
//! container-pool on Docker with a toolbox image imported from a rootfs tar made here, the
//! offline planner and model). The image carries a stand-in `claude` that checks the command
//! line it gets, needs its key, reads the session's sandbox mounted as its working directory
//! and prints Claude Code's `stream-json` output. A security step goes to it: the step's
//! runner, summary, progress events and log come from that output. A backend step, whose
//! preferred CLI (gemini) the image lacks, is run by the built-in agent in the same session.
//! A CLI's own edits in the sandbox become the step's patch: the work tree is handed to the
//! containers' user (`sandbox.container_user`) before it is mounted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stack;

use std::path::Path;

use liquid_container_pool::config::{PoolSettings, RuntimeChoice, TemplateConfig};
use liquid_kit::RunningService;
use liquid_runtime::ServiceConfig;
use serde_json::Value;
use stack::{Api, Dirs, Keys, keys};
use tokio_util::sync::CancellationToken;

/// Claude Code's stand-in: its flags as container-pool passes them, its key in the
/// environment, `stream-json` lines out. It reads `README.md` where it runs; when its task's
/// first line asks for a review file it also writes `REVIEW.md` there.
const CLAUDE: &str = r#"#!/bin/sh
[ "$1" = "-p" ] || { echo "usage: claude -p TASK ..." >&2; exit 2; }
[ "$3 $4 $5 $6" = "--output-format stream-json --verbose --allowedTools" ] || { echo "bad flags: $*" >&2; exit 2; }
[ -n "$ANTHROPIC_API_KEY" ] || { echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"no api key"}'; exit 1; }
title=$(printf '%s\n' "$2" | head -n 1)
echo '{"type":"system","subtype":"init","session_id":"s1","tools":["Read","Write"],"model":"stand-in"}'
printf '{"type":"assistant","message":{"content":[{"type":"text","text":"reviewing: %s in %s"},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"README.md"}}]}}\n' "$title" "$(pwd)"
printf '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"%s"}]}}\n' "$(cat README.md)"
case "$title" in
  *"review file"*)
    if ! printf 'reviewed by the stand-in claude\n' > REVIEW.md; then
      printf '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"cannot write REVIEW.md in %s as %s"}\n' "$(pwd)" "$(id -u)"
      exit 1
    fi;;
esac
printf '{"type":"result","subtype":"success","is_error":false,"result":"review done with tools %s"}\n' "$7"
"#;

/// A busybox rootfs (container-pool's own base) plus `/usr/local/bin/claude`.
fn toolbox_rootfs(path: &Path) {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let base = liquid_container_pool::runtime::image::base_rootfs_tar(&busybox, &applets).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&base[..]);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let p = e.path().unwrap().into_owned();
        if let Some(link) = e.link_name().unwrap() {
            out.append_link(&mut h, &p, link.as_ref()).unwrap();
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            out.append_data(&mut h, &p, &data[..]).unwrap();
        }
    }
    for dir in ["usr/", "usr/local/", "usr/local/bin/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        out.append_data(&mut h, dir, &[][..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(CLAUDE.len() as u64);
    out.append_data(&mut h, "usr/local/bin/claude", CLAUDE.as_bytes())
        .unwrap();
    std::fs::write(path, out.into_inner().unwrap()).unwrap();
}

/// container-pool on Docker whose default template is the toolbox image, with `claude` as
/// its only CLI and a key for it.
async fn start_pool_with_claude(
    keys: &Keys,
    mount_root: &Path,
) -> (RunningService, String, tempfile::TempDir) {
    std::fs::create_dir_all(mount_root).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("toolbox.tar");
    toolbox_rootfs(&rootfs);
    let mut s = PoolSettings::default();
    s.pool.runtime = RuntimeChoice::Docker;
    s.pool.name = format!("cw{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    s.pool.replenish_interval_ms = 200;
    s.pool.acquire_timeout_ms = 30_000;
    s.pool.heartbeat_secs = 2;
    s.pool.mount_roots = vec![mount_root.display().to_string()];
    s.docker.toolbox_rootfs = rootfs.display().to_string();
    s.docker.toolbox_image_repo = "liquid-test/cowork-toolbox".into();
    s.templates.insert(
        "default".into(),
        TemplateConfig {
            image: "toolbox".into(),
            min_idle: Some(0),
            max_total: Some(4),
            memory_mib: 128,
            pids_limit: 64,
            ..TemplateConfig::default()
        },
    );
    s.runners.available = vec!["claude".into()];
    // Any non-empty value stands in for the key.
    s.secrets
        .refs
        .insert("anthropic_api_key".into(), "env:PATH".into());
    let mut c = ServiceConfig::<PoolSettings>::defaults_for(&liquid_container_pool::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = format!("sqlite://{}/pool.db", dir.path().display());
    c.auth = keys.auth.clone();
    c.settings = s;
    let running =
        liquid_runtime::start::<liquid_container_pool::ContainerPool>(&c, CancellationToken::new())
            .await
            .unwrap();
    let grpc = format!("http://{}", running.grpc_addr().unwrap());
    (running, grpc, dir)
}

fn by_key<'a>(items: &'a [Value], key: &str) -> &'a Value {
    items.iter().find(|s| s["key"] == key).unwrap()
}

/// A finished session and the stack it ran on (kept alive until the test ends).
struct Ran {
    api: Api,
    id: String,
    done: Value,
    cowork: RunningService,
    _pool: (RunningService, tempfile::TempDir),
    _dirs: Dirs,
    _keys: Keys,
}

/// The stack, and a session of a security step (`first_item`) and a backend step run to its
/// end.
async fn run_session(first_item: &str) -> Ran {
    let keys = keys();
    let dirs = Dirs::new();
    dirs.workspace(&[("README.md", "harden me\n")]);
    let (pool, pool_grpc, pool_dir) = start_pool_with_claude(&keys, &dirs.sandbox_root()).await;
    let db = format!("sqlite://{}/cowork.db", dirs.base().display());
    let cfg = stack::config(
        &db,
        "memory://",
        &keys,
        &pool_grpc,
        stack::settings(&dirs, &keys, None),
    );
    let running = liquid_runtime::start::<liquid_cowork::Cowork>(&cfg, CancellationToken::new())
        .await
        .unwrap();
    let api = Api::new(format!("http://{}", running.http_addr()), keys.writer());
    let ws = dirs.workspace(&[]);
    let request = format!(
        "Harden the app.\n\
         - {first_item}\n\
         - Add the health endpoint\n\
         @tool write_file {{\"path\": \"health.txt\", \"content\": \"ok\\n\"}}\n"
    );
    let id = api.create_session(&ws, &request, "parallel").await;
    api.wait_state(&id, "awaiting_approval").await;
    api.ok(
        "POST",
        &format!("/api/v1/cowork/sessions/{id}/plan/approve"),
        None,
    )
    .await;
    let done = api
        .wait_session(&id, "its end", |v| {
            v["state"] == "completed" || v["state"] == "failed"
        })
        .await;
    Ran {
        api,
        id,
        done,
        cowork: running,
        _pool: (pool, pool_dir),
        _dirs: dirs,
        _keys: keys,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_analyzer_s_cli_runs_a_security_step_and_the_built_in_agent_the_rest() {
    let ran = run_session("Fix the xss hole").await;
    let (api, id, done) = (&ran.api, &ran.id, &ran.done);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["steps"]["succeeded"], 2, "{done}");

    // Who ran what, as the steps API says.
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    let steps = steps["steps"].as_array().unwrap().clone();
    let xss = by_key(&steps, "s1");
    assert_eq!(xss["runner"], "claude", "{xss}");
    assert_eq!(
        xss["summary"], "review done with tools Read,Glob,Grep,Edit,Bash",
        "the CLI's closing result, with the security tool set it was given: {xss}"
    );
    let health = by_key(&steps, "s2");
    assert_eq!(health["runner"], "platform (offline model)", "{health}");

    // The CLI's stream arrived as progress events of its step, in its order.
    let xss_id = xss["step_id"].clone();
    let events = api.events(id).await;
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "subtask:progress" && e["data"]["step_id"] == xss_id)
        .filter(|e| e["data"]["runner"] == "claude")
        .collect();
    let kinds: Vec<&str> = progress
        .iter()
        .map(|e| e["data"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["started", "text", "tool_use", "tool_result", "completed"],
        "{progress:?}"
    );
    assert_eq!(
        progress[1]["data"]["text"], "reviewing: Fix the xss hole in /mnt/staging",
        "the CLI got the step's task and ran in the mounted sandbox"
    );
    assert_eq!(progress[2]["data"]["tool"], "Read");
    assert_eq!(
        progress[3]["data"]["text"], "harden me",
        "it read the sandbox's README.md"
    );
    assert!(
        events.iter().any(|e| e["type"] == "subtask:completed"
            && e["data"]["step_id"] == xss_id
            && e["data"]["runner"] == "claude"
            && e["data"]["status"] == "succeeded"),
        "{events:?}"
    );

    // Its log artifact is the CLI's stream.
    let arts = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let log: String = arts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["step_id"] == xss_id && a["kind"] == "log")
        .map(|a| a["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        log.contains("claude text: reviewing: Fix the xss hole in /mnt/staging"),
        "{log}"
    );
    assert!(log.contains("claude tool_result: harden me"), "{log}");
    assert!(
        log.contains("claude completed: review done with tools"),
        "{log}"
    );

    // Only the built-in agent's file is staged.
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        stack::diff_paths(&diff),
        [("health.txt".to_owned(), "added".to_owned())]
    );
    ran.cowork.stop().await.unwrap();
}

/// A CLI's own edits in the mounted sandbox become the step's patch and the session's diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cli_s_edit_in_the_sandbox_is_the_step_s_patch() {
    let ran = run_session("Fix the xss hole and add a review file").await;
    let (api, id, done) = (&ran.api, &ran.id, &ran.done);
    assert_eq!(done["state"], "completed", "{done}");
    let steps = api
        .ok("GET", &format!("/api/v1/cowork/sessions/{id}/steps"), None)
        .await;
    let steps = steps["steps"].as_array().unwrap().clone();
    let xss = by_key(&steps, "s1");
    assert_eq!(xss["runner"], "claude", "{xss}");
    let xss_id = xss["step_id"].clone();
    let arts = api
        .ok(
            "GET",
            &format!("/api/v1/cowork/sessions/{id}/artifacts"),
            None,
        )
        .await;
    let patch: String = arts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["step_id"] == xss_id && a["kind"] == "patch")
        .map(|a| a["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        patch.contains("+reviewed by the stand-in claude"),
        "{patch}"
    );
    let sandbox = done["sandbox_id"].as_str().unwrap();
    let diff = api
        .ok("GET", &format!("/api/v1/sandbox/{sandbox}/diff"), None)
        .await;
    assert_eq!(
        stack::diff_paths(&diff),
        [
            ("REVIEW.md".to_owned(), "added".to_owned()),
            ("health.txt".into(), "added".into()),
        ]
    );
    ran.cowork.stop().await.unwrap();
}
