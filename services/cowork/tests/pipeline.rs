//! The permission pipeline on a real filesystem and database: the hostile inputs
//! (`..`, absolute paths, symlinks out of the workspace, a symlink swapped after the check,
//! blocked extensions, oversize writes, names with NUL or newlines) are all denied, each by the
//! stage that owns it, and audited; allowed operations do what they say; a property test throws
//! generated paths at the gate and never reads a byte from outside the sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;

use liquid_cowork::AgentContext;
use liquid_cowork::domain::path::parse_request;
use liquid_cowork::error::CoworkError;
use liquid_cowork::fs::beneath::Beneath;
use liquid_cowork::sandbox::CreateSandbox;
use liquid_cowork::store::AuditFilter;
use proptest::prelude::*;
use support::{Dirs, caller, sandboxes, sqlite};
use uuid::Uuid;

const SECRET: &str = "outside secret";

fn stage(r: Result<impl std::fmt::Debug, CoworkError>) -> String {
    match r {
        Err(CoworkError::Denied { stage, .. }) => stage.as_str().to_owned(),
        other => format!("not denied: {other:?}"),
    }
}

#[tokio::test]
async fn hostile_inputs_are_denied_by_their_stage_and_audited() {
    let dirs = Dirs::new();
    let src = dirs.workspace(
        "acme",
        "proj",
        &[("src/main.rs", "fn main() {}\n"), ("notes.txt", "n\n")],
    );
    let outside = dirs.base().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let mut settings = dirs.settings();
    settings.permissions.max_file_bytes = 1000;
    settings.permissions.max_session_bytes = 1500;
    let db = sqlite(&dirs.base()).await;
    let (sb, store) = sandboxes(&db, &settings).await;
    let acme = caller("acme");
    let view = sb
        .create(
            &acme,
            CreateSandbox {
                source: src.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let other = sb
        .create(
            &acme,
            CreateSandbox {
                source: src.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = view.row.sandbox_id;
    let work = Path::new(&view.row.work_path);
    // Links an agent (or a container) planted in the work copy.
    symlink("/etc", work.join("link_out")).unwrap();
    symlink("../../../../../../../outside", work.join("link_up")).unwrap();
    symlink(outside.join("secret.txt"), work.join("abs_out")).unwrap();
    std::fs::write(work.join("tool.dll"), "MZ").unwrap();
    symlink("tool.dll", work.join("evil.txt")).unwrap();
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "coder".into(),
    };
    let gate = sb.gate();
    let other_work = format!("{}/src/main.rs", other.row.work_path);
    let outside_abs = outside.join("secret.txt").display().to_string();

    let cases: Vec<(&str, String, &str)> = vec![
        ("read", "../outside/secret.txt".into(), "normalize"),
        (
            "read",
            "src/../../../outside/secret.txt".into(),
            "normalize",
        ),
        ("write", "a\0b.txt".into(), "normalize"),
        ("write", "a\nb.txt".into(), "normalize"),
        ("read", "/etc/passwd".into(), "blocked_prefix"),
        ("read", "link_out/passwd".into(), "blocked_prefix"),
        ("read", outside_abs.clone(), "workspace_boundary"),
        ("read", "link_up/secret.txt".into(), "workspace_boundary"),
        ("read", "abs_out".into(), "workspace_boundary"),
        ("read", other_work.clone(), "workspace_boundary"),
        ("write", "payload.exe".into(), "extension"),
        ("write", "payload.EXE.".into(), "extension"),
        ("read", "evil.txt".into(), "extension"),
        ("execute", "src/main.rs".into(), "capability"),
    ];
    for (op, path, want) in &cases {
        let got = match *op {
            "read" => stage(gate.read(&agent, id, path).await),
            "write" => stage(gate.write(&agent, id, path, b"x".to_vec()).await),
            "execute" => stage(gate.execute(&agent, id, path).await),
            _ => unreachable!(),
        };
        assert_eq!(&got, want, "{op} {path:?}");
    }
    // Oversize: one file over the per-file limit; then the session budget.
    assert_eq!(
        stage(gate.write(&agent, id, "big.txt", vec![b'a'; 1001]).await),
        "size_limit"
    );
    gate.write(&agent, id, "one.txt", vec![b'a'; 800])
        .await
        .unwrap();
    assert_eq!(
        stage(gate.write(&agent, id, "two.txt", vec![b'a'; 800]).await),
        "size_limit"
    );
    // Another session of the same tenant, and another tenant.
    let stranger = AgentContext {
        session_id: Uuid::now_v7(),
        ..agent.clone()
    };
    assert_eq!(
        stage(gate.read(&stranger, id, "src/main.rs").await),
        "sandbox_isolation"
    );
    let foreign = AgentContext {
        tenant: "globex".into(),
        ..agent.clone()
    };
    assert_eq!(
        stage(gate.read(&foreign, id, "src/main.rs").await),
        "sandbox_isolation"
    );

    // Every denial is in the audit log with its stage; nothing leaked into another tenant's log.
    let denied = store
        .audit(
            "acme",
            &AuditFilter {
                action: Some("permission.denied".into()),
                limit: 500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut stages: Vec<String> = denied.iter().map(|a| a.stage.clone().unwrap()).collect();
    stages.sort();
    let mut want: Vec<String> = cases.iter().map(|c| c.2.to_owned()).collect();
    want.extend(["size_limit", "size_limit", "sandbox_isolation"].map(String::from));
    want.sort();
    assert_eq!(stages, want);
    assert!(
        denied
            .iter()
            .any(|a| a.path.as_deref() == Some("a\\u{0}b.txt")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|a| a.path.as_deref() == Some("a\\nb.txt"))
    );
    let globex = store
        .audit(
            "globex",
            &AuditFilter {
                limit: 500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        globex.len(),
        1,
        "the foreign agent's own denial only: {globex:?}"
    );

    // Nothing outside changed.
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        SECRET
    );
    assert!(!outside.join("x").exists());
}

#[tokio::test]
async fn allowed_operations_work_and_writes_never_reach_the_source() {
    let dirs = Dirs::new();
    let src = dirs.workspace(
        "acme",
        "proj",
        &[("src/main.rs", "fn main() {}\n"), ("notes.txt", "n\n")],
    );
    let db = sqlite(&dirs.base()).await;
    let mut settings = dirs.settings();
    settings.permissions.agents.insert(
        "runner".into(),
        vec![
            liquid_cowork::domain::permission::Capability::Read,
            liquid_cowork::domain::permission::Capability::Execute,
        ],
    );
    let (sb, store) = sandboxes(&db, &settings).await;
    let acme = caller("acme");
    let view = sb
        .create(
            &acme,
            CreateSandbox {
                source: src.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = view.row.sandbox_id;
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "coder".into(),
    };
    let gate = sb.gate();
    assert_eq!(
        gate.read(&agent, id, "src/main.rs").await.unwrap(),
        b"fn main() {}\n"
    );
    let names: Vec<String> = gate
        .list(&agent, id, ".")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["notes.txt", "src"]);
    // A write through a hard-linked baseline file replaces it: the source keeps its bytes.
    let w = gate
        .write(
            &agent,
            id,
            "src/main.rs",
            b"fn main() { todo() }\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(w.bytes, 21);
    assert!(w.sha256_before.is_some());
    assert_eq!(
        std::fs::read_to_string(src.join("src/main.rs")).unwrap(),
        "fn main() {}\n"
    );
    gate.write(&agent, id, "new/deep/file.rs", b"// new\n".to_vec())
        .await
        .unwrap();
    gate.delete(&agent, id, "notes.txt").await.unwrap();
    assert!(src.join("notes.txt").exists());
    assert!(matches!(
        gate.read(&agent, id, "missing.rs").await,
        Err(CoworkError::FileNotFound(_))
    ));
    let runner = AgentContext {
        agent: "runner".into(),
        ..agent.clone()
    };
    let exec = gate.execute(&runner, id, "src/main.rs").await.unwrap();
    assert_eq!(exec.path, "src/main.rs");
    // The diff sees exactly what the gate did.
    let diff = sb.diff(&acme, id).await.unwrap();
    let got: Vec<(String, String)> = diff
        .changes
        .iter()
        .map(|c| {
            (
                c.path.clone(),
                serde_json::to_value(c.change)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("new/deep/file.rs".to_owned(), "added".to_owned()),
            ("notes.txt".to_owned(), "deleted".to_owned()),
            ("src/main.rs".to_owned(), "modified".to_owned()),
        ]
    );
    let writes = store
        .audit(
            "acme",
            &AuditFilter {
                action: Some("file.write".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(writes.len(), 2);
    assert_eq!(
        writes[0].sha256_after.as_deref(),
        Some(w.sha256_after.as_str())
    );
}

#[test]
fn a_symlink_swapped_after_the_check_cannot_redirect_the_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("d/file.txt"), "inside").unwrap();
    std::fs::write(root.join("x.txt"), "inside").unwrap();
    std::fs::write(root.join("y.txt"), "inside").unwrap();
    std::fs::write(outside.join("file.txt"), SECRET).unwrap();
    let b = Beneath::open(&root).unwrap();

    // A parent directory swapped for a symlink out after the check.
    let walk = b
        .resolve(&parse_request("d/file.txt").unwrap(), true)
        .unwrap();
    let located = walk.located.unwrap();
    std::fs::rename(root.join("d"), root.join("d_old")).unwrap();
    symlink(&outside, root.join("d")).unwrap();
    assert_eq!(located.read(100).unwrap(), b"inside");
    located.write_atomic::<()>(b"agent", || Ok(())).unwrap();
    assert_eq!(
        std::fs::read_to_string(outside.join("file.txt")).unwrap(),
        SECRET
    );
    assert_eq!(
        std::fs::read_to_string(root.join("d_old/file.txt")).unwrap(),
        "agent"
    );

    // The target itself swapped for a symlink out: reads refuse, writes replace the link.
    let walk = b.resolve(&parse_request("x.txt").unwrap(), true).unwrap();
    let located = walk.located.unwrap();
    std::fs::remove_file(root.join("x.txt")).unwrap();
    symlink(outside.join("file.txt"), root.join("x.txt")).unwrap();
    assert!(located.read(100).is_err());
    located.write_atomic::<()>(b"agent", || Ok(())).unwrap();
    assert_eq!(
        std::fs::read_to_string(outside.join("file.txt")).unwrap(),
        SECRET
    );
    assert!(
        !std::fs::symlink_metadata(root.join("x.txt"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A delete after the same swap removes the link, never its target.
    let walk = b.resolve(&parse_request("y.txt").unwrap(), false).unwrap();
    let located = walk.located.unwrap();
    std::fs::remove_file(root.join("y.txt")).unwrap();
    symlink(outside.join("file.txt"), root.join("y.txt")).unwrap();
    located.delete().unwrap();
    assert!(!root.join("y.txt").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("file.txt")).unwrap(),
        SECRET
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_symlink_swap_never_leaks_or_writes_outside() {
    let dirs = Dirs::new();
    let src = dirs.workspace("acme", "proj", &[("flip/secret.txt", "inside")]);
    let outside = dirs.base().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let db = sqlite(&dirs.base()).await;
    let (sb, _) = sandboxes(&db, &dirs.settings()).await;
    let acme = caller("acme");
    let view = sb
        .create(
            &acme,
            CreateSandbox {
                source: src.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let work = std::path::PathBuf::from(&view.row.work_path);
    symlink(&outside, work.join("parked_link")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (work, stop) = (work.clone(), stop.clone());
        std::thread::spawn(move || {
            // `flip` is always there: an atomic exchange turns it from the real directory
            // into the symlink out and back.
            let dir = rustix::fs::open(
                &work,
                rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    &dir,
                    "flip",
                    &dir,
                    "parked_link",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                std::thread::yield_now();
            }
        })
    };
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "coder".into(),
    };
    let gate = sb.gate();
    let (mut inside, mut refused) = (0, 0);
    for i in 0..300 {
        match gate
            .read(&agent, view.row.sandbox_id, "flip/secret.txt")
            .await
        {
            Ok(bytes) => {
                assert_ne!(bytes, SECRET.as_bytes(), "read {i} leaked the outside file");
                inside += 1;
            }
            Err(_) => refused += 1,
        }
        let _ = gate
            .write(
                &agent,
                view.row.sandbox_id,
                "flip/secret.txt",
                b"agent".to_vec(),
            )
            .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(inside + refused, 300);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        SECRET
    );
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("src".to_owned()),
        Just("main.rs".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("".to_owned()),
        Just("link_out".to_owned()),
        Just("link_up".to_owned()),
        Just("link_in".to_owned()),
        Just("loop".to_owned()),
        Just("outside".to_owned()),
        Just("secret.txt".to_owned()),
        Just("etc".to_owned()),
        Just("a\nb".to_owned()),
        Just("x\0y".to_owned()),
        "[a-z.]{1,4}",
    ]
}

#[test]
fn generated_paths_never_read_outside_the_sandbox() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dirs = Dirs::new();
    let src = dirs.workspace(
        "acme",
        "proj",
        &[("src/main.rs", "inside"), ("secret.txt", "inside")],
    );
    let outside = dirs.base().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let (sb, view) = rt.block_on(async {
        let db = sqlite(&dirs.base()).await;
        let (sb, _) = sandboxes(&db, &dirs.settings()).await;
        let view = sb
            .create(
                &caller("acme"),
                CreateSandbox {
                    source: src.display().to_string(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (sb, view)
    });
    let work = std::path::PathBuf::from(&view.row.work_path);
    symlink(&outside, work.join("link_out")).unwrap();
    symlink("../../../../../../outside", work.join("link_up")).unwrap();
    symlink("src", work.join("link_in")).unwrap();
    symlink("loop", work.join("loop")).unwrap();
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "coder".into(),
    };
    let gate = sb.gate();
    let outside_text = outside.display().to_string();
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(parts in proptest::collection::vec(segment(), 1..6), absolute in 0u8..3)| {
        let joined = parts.join("/");
        let path = match absolute {
            0 => joined,
            1 => format!("{}/{joined}", work.display()),
            _ => format!("{outside_text}/{joined}"),
        };
        let read = rt.block_on(gate.read(&agent, view.row.sandbox_id, &path));
        if let Ok(bytes) = read {
            prop_assert_ne!(bytes, SECRET.as_bytes().to_vec(), "path {:?}", path);
        }
        let wrote = rt.block_on(gate.write(&agent, view.row.sandbox_id, &path, b"w".to_vec()));
        if let Ok(w) = wrote {
            prop_assert!(work.join(&w.path).starts_with(&work));
        }
        prop_assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), SECRET);
        prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    });
}
