//! What a container command changes in the mounted work copy goes through the permission
//! pipeline after the command: the window is opened and closed around writes made straight into
//! the work directory — exactly what a process in a container with the directory mounted does
//! (the real-container path is exercised by the session tests). Permitted changes are charged
//! and audited with their hashes; hostile ones are audited with the stage that denied and taken
//! back, restoring what stood there before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use liquid_cowork::AgentContext;
use liquid_cowork::domain::permission::Capability;
use liquid_cowork::store::AuditFilter;
use support::{Dirs, caller, sandbox_of, sandboxes, sqlite};

fn set_mtime(path: &Path, mtime: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[tokio::test]
async fn container_changes_are_judged_and_denied_ones_reverted() {
    let dirs = Dirs::new();
    let src = dirs.workspace(
        "acme",
        "proj",
        &[
            ("src/main.rs", "fn main() {}\n"),
            ("notes.txt", "notes\n"),
            ("keep.txt", "keep me\n"),
            ("same.txt", "abcd\n"),
        ],
    );
    let mut settings = dirs.settings();
    settings.permissions.max_file_bytes = 1000;
    settings.permissions.max_session_bytes = 4000;
    // The step's agent may read and write but not delete.
    settings
        .permissions
        .agents
        .insert("writer".into(), vec![Capability::Read, Capability::Write]);
    let db = sqlite(&dirs.base()).await;
    let (sb, store) = sandboxes(&db, &settings).await;
    let acme = caller("acme");
    let view = sandbox_of(&sb, &acme, &src).await;
    let id = view.row.sandbox_id;
    sb.prepare_for_containers(&acme, id).await.unwrap();
    let work = Path::new(&view.row.work_path).to_path_buf();
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "writer".into(),
    };
    let gate = sb.gate();
    // An earlier step's permitted edit: not in the source, so the window must stash it.
    gate.write(&agent, id, "src/lib.rs", b"pub fn earlier() {}\n".to_vec())
        .await
        .unwrap();

    let window = gate.open_window(&agent, id).await.unwrap();
    // --- what the command does in the container ---
    std::fs::write(work.join("src/new.rs"), "pub fn new() {}\n").unwrap();
    std::fs::write(work.join("notes.txt"), "notes, edited\n").unwrap();
    std::fs::write(work.join("payload.exe"), "MZ").unwrap();
    symlink("/etc/passwd", work.join("leak")).unwrap();
    symlink("../../../../../../../../tmp", work.join("up")).unwrap();
    std::fs::write(work.join("big.txt"), vec![b'x'; 1500]).unwrap();
    std::fs::write(work.join(std::ffi::OsStr::from_bytes(b"a\nb.txt")), "x").unwrap();
    std::fs::create_dir(work.join(std::ffi::OsStr::from_bytes(b"dir\x07"))).unwrap();
    std::fs::write(
        work.join(std::ffi::OsStr::from_bytes(b"dir\x07/inner.txt")),
        "x",
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(work.join("agent.sock")).unwrap();
    std::fs::write(work.join("src/lib.rs"), vec![b'y'; 1200]).unwrap();
    std::fs::remove_file(work.join("keep.txt")).unwrap();
    std::fs::set_permissions(
        work.join("src/main.rs"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    // Same size, mtime put back: only the ctime tells, and the hash settles it.
    let mtime = std::fs::metadata(work.join("same.txt"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(work.join("same.txt"), "wxyz\n").unwrap();
    set_mtime(&work.join("same.txt"), mtime);
    // Another agent's gate write while the window is open is that agent's, not re-judged.
    let other = AgentContext {
        agent: "coder".into(),
        ..agent.clone()
    };
    gate.write(&other, id, "src/other.rs", b"// other\n".to_vec())
        .await
        .unwrap();
    // --- the command returned ---
    let report = gate.close_window(&agent, window).await.unwrap();

    let mut permitted = report.permitted.clone();
    permitted.sort();
    assert_eq!(permitted, vec!["notes.txt", "same.txt", "src/new.rs"]);
    let mut denied: Vec<(String, &str, &str, bool)> = report
        .reverted
        .iter()
        .map(|r| (r.path.clone(), r.operation, r.stage, r.restored))
        .collect();
    denied.sort();
    assert_eq!(
        denied,
        vec![
            ("a\\nb.txt".to_owned(), "write", "normalize", true),
            ("agent.sock".to_owned(), "write", "normalize", true),
            ("big.txt".to_owned(), "write", "size_limit", true),
            ("dir\\u{7}".to_owned(), "write", "normalize", true),
            ("dir\\u{7}/inner.txt".to_owned(), "write", "normalize", true),
            ("keep.txt".to_owned(), "delete", "capability", true),
            ("leak".to_owned(), "write", "blocked_prefix", true),
            ("payload.exe".to_owned(), "write", "extension", true),
            ("src/lib.rs".to_owned(), "write", "size_limit", true),
            ("src/main.rs".to_owned(), "write", "capability", true),
            ("up".to_owned(), "write", "workspace_boundary", true),
        ],
        "{report:#?}"
    );

    // The work copy holds the permitted changes and what stood before the denied ones.
    for gone in ["payload.exe", "leak", "up", "big.txt", "agent.sock"] {
        assert!(
            std::fs::symlink_metadata(work.join(gone)).is_err(),
            "{gone} is still there"
        );
    }
    assert!(std::fs::symlink_metadata(work.join(std::ffi::OsStr::from_bytes(b"dir\x07"))).is_err());
    assert!(
        std::fs::symlink_metadata(work.join(std::ffi::OsStr::from_bytes(b"a\nb.txt"))).is_err()
    );
    assert_eq!(
        std::fs::read_to_string(work.join("keep.txt")).unwrap(),
        "keep me\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("src/lib.rs")).unwrap(),
        "pub fn earlier() {}\n"
    );
    assert_eq!(
        std::fs::metadata(work.join("src/main.rs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::read_to_string(work.join("src/new.rs")).unwrap(),
        "pub fn new() {}\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("same.txt")).unwrap(),
        "wxyz\n"
    );

    // The diff shows exactly the permitted changes and the earlier gate writes.
    let diff = sb.diff(&acme, id).await.unwrap();
    let mut changed: Vec<(String, String)> = diff
        .changes
        .iter()
        .map(|c| (c.path.clone(), format!("{:?}", c.change)))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec![
            ("notes.txt".to_owned(), "Modified".to_owned()),
            ("same.txt".to_owned(), "Modified".to_owned()),
            ("src/lib.rs".to_owned(), "Added".to_owned()),
            ("src/new.rs".to_owned(), "Added".to_owned()),
            ("src/other.rs".to_owned(), "Added".to_owned()),
        ]
    );

    // Every denial is audited with its stage and the container origin; permitted writes with
    // their hashes.
    let audit = store
        .audit(
            "acme",
            &AuditFilter {
                sandbox_id: Some(id),
                limit: 500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let from_container: Vec<_> = audit
        .iter()
        .filter(|a| a.detail["origin"] == "container")
        .collect();
    let denials = from_container
        .iter()
        .filter(|a| a.action == "permission.denied")
        .count();
    assert_eq!(denials, 11);
    let new_rs = from_container
        .iter()
        .find(|a| a.action == "file.write" && a.path.as_deref() == Some("src/new.rs"))
        .expect("the permitted write is audited");
    assert_eq!(
        new_rs.sha256_after.as_deref(),
        Some(
            liquid_cowork::fs::tree::hash_file(&work.join("src/new.rs"))
                .unwrap()
                .as_str()
        )
    );
    let lib = from_container
        .iter()
        .find(|a| a.path.as_deref() == Some("src/lib.rs"))
        .unwrap();
    assert_eq!(lib.stage.as_deref(), Some("size_limit"));
    // The stash is gone with the window.
    let windows = Path::new(&view.row.work_path)
        .parent()
        .unwrap()
        .join("windows");
    assert!(std::fs::read_dir(&windows).map(|d| d.count()).unwrap_or(0) == 0);
}

#[tokio::test]
async fn a_window_on_a_closed_sandbox_is_refused() {
    let dirs = Dirs::new();
    let src = dirs.workspace("acme", "proj", &[("a.txt", "a\n")]);
    let settings = dirs.settings();
    let db = sqlite(&dirs.base()).await;
    let (sb, _store) = sandboxes(&db, &settings).await;
    let acme = caller("acme");
    let view = sandbox_of(&sb, &acme, &src).await;
    sb.discard(&acme, view.row.sandbox_id).await.unwrap();
    let agent = AgentContext {
        tenant: "acme".into(),
        session_id: view.row.session_id,
        agent: "coder".into(),
    };
    let err = sb
        .gate()
        .open_window(&agent, view.row.sandbox_id)
        .await
        .unwrap_err();
    assert_eq!(
        liquid_kit::HasErrorCode::error_code(&err),
        liquid_kit::ErrorCode::FailedPrecondition,
        "{err}"
    );
}
