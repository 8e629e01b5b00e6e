//! Coding-agent runners in pool containers: a toolbox image (imported from a rootfs tar, as an
//! operator's Debian minbase would be) carries stand-in `claude`, `gemini` and `codex` CLIs that
//! check the command line they get and print each tool's real output format. The task analyzer
//! picks the runner, only that runner's key is present during its run, and every CLI's output
//! arrives as the same event stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use liquid_container_pool::config::TemplateConfig;
use serde_json::{Value, json};

const CLAUDE: &str = r#"#!/bin/sh
[ "$1" = "-p" ] || { echo "usage: claude -p TASK ..." >&2; exit 2; }
task="$2"
[ "$3 $4 $5 $6" = "--output-format stream-json --verbose --allowedTools" ] || { echo "bad flags: $*" >&2; exit 2; }
[ -n "$ANTHROPIC_API_KEY" ] || { echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"no api key"}'; exit 1; }
echo '{"type":"system","subtype":"init","session_id":"s1","tools":["Bash"],"model":"stand-in"}'
printf '{"type":"assistant","message":{"content":[{"type":"text","text":"working on: %s"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls /run/secrets"}}]}}\n' "$task"
printf '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"%s"}]}}\n' "$(ls /run/secrets | tr '\n' ' ')"
printf '{"type":"result","subtype":"success","is_error":false,"result":"done with tools %s"}\n' "$7"
"#;

const GEMINI: &str = r#"#!/bin/sh
[ "$1 $3 $5 $6 $7 $8" = "-m -p -o json --approval-mode yolo" ] || { echo "bad flags: $*" >&2; exit 2; }
[ -n "$GEMINI_API_KEY" ] || { printf '{"response":null,"error":{"type":"AuthError","message":"no key"}}\n'; exit 1; }
echo "Loaded cached credentials."
printf '{\n  "response": "gemini (%s) did: %s",\n  "stats": {"models": {}}\n}\n' "$2" "$4"
"#;

const CODEX: &str = r#"#!/bin/sh
[ "$1 $2" = "exec --json" ] || { echo "bad flags: $*" >&2; exit 2; }
echo '{"type":"thread.started","thread_id":"th1"}'
echo '{"type":"turn.started"}'
echo '{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"","status":"in_progress"}}'
echo '{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}'
printf '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"codex did: %s"}}\n' "$3"
echo '{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":0,"output_tokens":5}}'
"#;

fn toolbox_rootfs(path: &std::path::Path) {
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
    for (name, script) in [("claude", CLAUDE), ("gemini", GEMINI), ("codex", CODEX)] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(script.len() as u64);
        out.append_data(&mut h, format!("usr/local/bin/{name}"), script.as_bytes())
            .unwrap();
    }
    std::fs::write(path, out.into_inner().unwrap()).unwrap();
}

fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_analyzer_picks_a_cli_that_runs_in_the_pool_with_only_its_key() {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("toolbox.tar");
    toolbox_rootfs(&rootfs);
    let mut s = settings(0, 1);
    s.docker.toolbox_rootfs = rootfs.display().to_string();
    s.docker.toolbox_image_repo = "liquid-test/pool-toolbox".into();
    s.templates.insert(
        "default".into(),
        TemplateConfig {
            image: "toolbox".into(),
            min_idle: Some(0),
            max_total: Some(1),
            memory_mib: 128,
            ..TemplateConfig::default()
        },
    );
    s.runners.available = vec!["claude".into(), "gemini".into(), "codex".into()];
    s.secrets
        .refs
        .insert("anthropic_api_key".into(), "env:PATH".into());
    s.secrets
        .refs
        .insert("gemini_api_key".into(), "env:PATH".into());
    let mut svc = start(s, &keys).await;
    let admin = keys.admin("acme");
    let claim = svc.acquire(&admin, json!({})).await;
    let id = claim["id"].as_str().unwrap();

    // Security → Claude Code, with its key file present only during the run.
    let (status, run) = svc
        .post(
            &admin,
            &format!("/claims/{id}/agent"),
            json!({"task": "fix the xss hole"}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["choice"]["runner"], "claude");
    assert_eq!(run["choice"]["kind"], "security");
    let ev = &run["events"];
    assert_eq!(
        kinds(ev),
        ["started", "text", "tool_use", "tool_result", "completed"],
        "{ev}"
    );
    assert_eq!(ev[1]["text"], "working on: fix the xss hole");
    assert_eq!(ev[2]["tool"], "Bash");
    assert_eq!(
        ev[3]["text"], "anthropic_api_key ",
        "only claude's key is there"
    );
    assert_eq!(ev[4]["text"], "done with tools Read,Glob,Grep,Edit,Bash");
    let out = svc.sh(&admin, id, "ls -A /run/secrets").await;
    assert_eq!(out["stdout"], "", "the key is removed after the run");

    // Backend → Gemini CLI; its single JSON document becomes events.
    let (_, run) = svc
        .post(
            &admin,
            &format!("/claims/{id}/agent"),
            json!({"task": "add an api endpoint", "model": "gemini-2.5-flash"}),
        )
        .await;
    assert_eq!(run["choice"]["runner"], "gemini", "{run}");
    assert_eq!(
        kinds(&run["events"]),
        ["text", "started", "text", "completed"]
    );
    assert_eq!(
        run["events"][3]["text"],
        "gemini (gemini-2.5-flash) did: add an api endpoint"
    );

    // Codex asked for explicitly; it has no key configured and runs without one.
    let (_, run) = svc
        .post(
            &admin,
            &format!("/claims/{id}/agent"),
            json!({"task": "write tests", "runner": "codex"}),
        )
        .await;
    assert_eq!(run["choice"]["runner"], "codex", "{run}");
    assert_eq!(
        kinds(&run["events"]),
        ["started", "tool_use", "tool_result", "text", "completed"]
    );
    assert_eq!(run["events"][3]["text"], "codex did: write tests");

    // Unknown runner names are refused with a stable code.
    let (status, body) = svc
        .post(
            &admin,
            &format!("/claims/{id}/agent"),
            json!({"task": "x", "runner": "cursor"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    svc.release(&admin, id).await;
    svc.stop().await;
}
