//! Staging sandbox hot paths on a 10,000-file, 200 MB tree, against `cp -r` and
//! `git worktree add` measured in the same run (issue 7's "done means").
//!
//! Measured, each the median of `RUNS` runs with a warm page cache:
//! - create: [`StagingSandboxes::create`] (work copy by reflink/hard link + SHA-256 baseline +
//!   database row, SQLite) against `cp -r` of the tree and `git worktree add --detach` from a
//!   repository holding the tree;
//! - diff after 10 edits made through the permission pipeline: with file-event detection and
//!   with a full stat walk (a replica that does not watch the sandbox), against `git diff` in
//!   a worktree with the same 10 edits;
//! - apply of those 10 edits to the source (conflict re-check, backup, temp-and-rename) against
//!   `git diff | git apply` of the same edits.
//!
//! Run: `cargo bench -p liquid-cowork --bench sandbox` (prints a Markdown table).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use liquid_cowork::sandbox::{Caller, CreateSandbox, StagingSandboxes};
use liquid_cowork::{AgentContext, CoworkSettings};
use liquid_store::Database;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const FILES: usize = 10_000;
const TOTAL_BYTES: usize = 200 * 1024 * 1024;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// 10,000 files in 100 directories, 200 MB of pseudo-random bytes (xorshift: not compressible,
/// not deduplicable), the 10 edited ones are text.
fn make_tree(root: &Path) {
    let per_file = TOTAL_BYTES / FILES;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; per_file];
    for i in 0..FILES {
        let dir = root.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        if i < 10 {
            let text: String = (0..per_file / 32)
                .map(|l| format!("line {l:>5} of file {i:>5}....\n"))
                .collect();
            std::fs::write(dir.join(format!("f{i:05}.txt")), text).unwrap();
            continue;
        }
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf).unwrap();
    }
}

fn edited_path(i: usize) -> String {
    format!("d{:03}/f{i:05}.txt", i % 100)
}

fn edited_bytes(i: usize) -> Vec<u8> {
    format!("edited file {i}\n").repeat(100).into_bytes()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("liquid-cowork-bench")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let src = base.join("ws/bench/tree");
    std::fs::create_dir_all(&src).unwrap();
    eprintln!(
        "building a {FILES}-file, {} MB tree ...",
        TOTAL_BYTES / 1024 / 1024
    );
    make_tree(&src);
    eprintln!("committing it to git ...");
    // The repository lives outside the tree (only a `.git` file inside), so every contender
    // handles the same 200 MB.
    let repo = base.join("repo.git");
    git(
        &src,
        &["init", "-q", "--separate-git-dir", repo.to_str().unwrap()],
    );
    git(
        &src,
        &["-c", "user.email=b@b", "-c", "user.name=b", "add", "-A"],
    );
    git(
        &src,
        &[
            "-c",
            "user.email=b@b",
            "-c",
            "user.name=b",
            "commit",
            "-q",
            "-m",
            "tree",
        ],
    );

    let mut settings = CoworkSettings::default();
    settings.sandbox.root = base.join("sandboxes").display().to_string();
    settings.sandbox.workspace_roots = vec![base.join("ws/{tenant}").display().to_string()];
    let caller = Caller {
        tenant: "bench".into(),
        actor: "bench".into(),
    };
    let (sandboxes, walker) = rt.block_on(async {
        let db = Database::connect(&format!("sqlite://{}/cowork.db", base.display()))
            .await
            .unwrap();
        db.migrate(&liquid_cowork::MIGRATIONS).await.unwrap();
        let store = liquid_cowork::store::for_database(&db);
        let (s, run) = StagingSandboxes::open(
            store.clone(),
            &settings,
            Uuid::now_v7(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        tokio::spawn(run);
        // A second replica's view: it does not watch the sandboxes, so its diffs walk.
        let (w, run) =
            StagingSandboxes::open(store, &settings, Uuid::now_v7(), CancellationToken::new())
                .await
                .unwrap();
        tokio::spawn(run);
        (s, w)
    });
    let create = || {
        rt.block_on(sandboxes.create(
            &caller,
            CreateSandbox {
                source: src.display().to_string(),
                ..Default::default()
            },
        ))
        .unwrap()
    };
    // Warm the page cache once.
    let warm = create();
    rt.block_on(sandboxes.discard(&caller, warm.row.sandbox_id))
        .unwrap();

    let (mut t_create, mut t_cp, mut t_wt) = (Vec::new(), Vec::new(), Vec::new());
    let mut copy_kind = String::new();
    for run in 0..RUNS {
        let t = Instant::now();
        let v = create();
        t_create.push(t.elapsed());
        copy_kind = v.copy.to_string();
        rt.block_on(sandboxes.discard(&caller, v.row.sandbox_id))
            .unwrap();

        let dst = base.join(format!("cp-{run}"));
        let t = Instant::now();
        let st = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        t_cp.push(t.elapsed());
        assert!(st.success());
        std::fs::remove_dir_all(&dst).unwrap();

        let wt = base.join(format!("wt-{run}"));
        let t = Instant::now();
        git(
            &src,
            &["worktree", "add", "-q", "--detach", wt.to_str().unwrap()],
        );
        t_wt.push(t.elapsed());
        git(
            &src,
            &["worktree", "remove", "--force", wt.to_str().unwrap()],
        );
    }

    let (mut t_diff, mut t_walk, mut t_gitdiff, mut t_apply, mut t_gitapply) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let gate = sandboxes.gate();
    for run in 0..RUNS {
        let v = create();
        let id = v.row.sandbox_id;
        let agent = AgentContext {
            tenant: "bench".into(),
            session_id: v.row.session_id,
            agent: "coder".into(),
        };
        for i in 0..10 {
            rt.block_on(gate.write(&agent, id, &edited_path(i), edited_bytes(i)))
                .unwrap();
        }
        let t = Instant::now();
        let d = rt.block_on(sandboxes.diff(&caller, id)).unwrap();
        t_diff.push(t.elapsed());
        assert_eq!(d.changes.len(), 10);
        assert_eq!(d.detection, "notifications");
        let t = Instant::now();
        let d = rt.block_on(walker.diff(&caller, id)).unwrap();
        t_walk.push(t.elapsed());
        assert_eq!((d.changes.len(), d.detection), (10, "walk"));

        let t = Instant::now();
        let report = rt.block_on(sandboxes.apply(&caller, id, None)).unwrap();
        t_apply.push(t.elapsed());
        assert_eq!(report.files.len(), 10);
        rt.block_on(sandboxes.rollback(&caller, id)).unwrap();

        // git: the same 10 edits in a worktree, `git diff`, then `git apply` in the source.
        let wt: PathBuf = base.join(format!("wt-diff-{run}"));
        git(
            &src,
            &["worktree", "add", "-q", "--detach", wt.to_str().unwrap()],
        );
        for i in 0..10 {
            std::fs::write(wt.join(edited_path(i)), edited_bytes(i)).unwrap();
        }
        let t = Instant::now();
        let text = git(&wt, &["diff"]);
        t_gitdiff.push(t.elapsed());
        assert!(!text.is_empty());
        let t = Instant::now();
        let patch = git(&wt, &["diff", "--binary"]);
        let mut child = Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["apply", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &patch).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        t_gitapply.push(t.elapsed());
        git(&src, &["checkout", "-q", "--", "."]);
        git(
            &src,
            &["worktree", "remove", "--force", wt.to_str().unwrap()],
        );
        assert!(!patch.is_empty());
    }

    println!(
        "tree: {FILES} files, {} MB; median of {RUNS} runs, warm page cache; work copy made by {copy_kind}",
        TOTAL_BYTES / 1024 / 1024
    );
    println!();
    println!("| operation | liquid (ms) | baseline | baseline (ms) |");
    println!("|---|---:|---|---:|");
    println!(
        "| create sandbox (copy + SHA-256 baseline + row) | {} | `cp -r` | {} |",
        ms(median(t_create.clone())),
        ms(median(t_cp))
    );
    println!("| | | `git worktree add --detach` | {} |", ms(median(t_wt)));
    println!(
        "| diff after 10 edits, file-event detection | {} | `git diff` in a worktree | {} |",
        ms(median(t_diff)),
        ms(median(t_gitdiff))
    );
    println!(
        "| diff after 10 edits, full stat walk | {} | | |",
        ms(median(t_walk))
    );
    println!(
        "| apply 10 edits (re-check, backup, temp+rename) | {} | `git diff --binary \\| git apply` | {} |",
        ms(median(t_apply)),
        ms(median(t_gitapply))
    );
}
