//! The permission pipeline for what a container command changed.
//!
//! A step's container mounts the session's work copy and writes it directly: a coding CLI, the
//! built-in agent's `run_command`, a build. Those writes cannot pass through the gate as they
//! happen, so the gate brackets every command with a [`CommandWindow`]: opened before the
//! command, it scans the work copy's stat facts and stashes a copy of every file that differs
//! from the baseline (the rest can be restored from the source); closed after, it scans again
//! and puts every changed path through the same seven stages as a tool call — a new or modified
//! file or symlink is a write of its size (a symlink is resolved, so one leading out of the
//! work copy fails the boundary), a vanished one a delete, a fifo, socket or device, or a name
//! no request could spell, fails normalize; set-user/group-id bits fail capability. A permitted
//! change is charged to the session's byte budget and audited (`file.write`/`file.delete` with
//! origin `container` and the new SHA-256); a denied one is audited with the stage that denied
//! and reverted: an added entry removed, a modified or deleted one put back as it was before the
//! command. Denials go back to the agent in the command's result.
//!
//! Content changes are detected from size, mtime, inode and ctime; ctime cannot be set from
//! user space, so a change that restores the mtime is still seen and then settled by hash.
//! Steps of one session run in parallel over the same work copy: the gate's own writes and
//! every change a window settled are reported to the other windows open on that sandbox, which
//! then leave those paths alone, so nothing is checked (or charged) twice. A change another
//! step's command made while this window was open is checked under this window's agent.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AgentContext, Origin, PermissionGate};
use crate::domain::manifest::{EntryKind, Manifest, Observed, unchanged_by_stat};
use crate::domain::permission::{Denial, Operation, Stage};
use crate::domain::state::SandboxState;
use crate::error::CoworkError;
use crate::fs::scan::{self, Content, Node, NodeKind, RawPath, Scan};
use crate::metrics;
use crate::store::{AuditRecord, SandboxRow, printable};

/// Paths settled while a window was open, with their facts then (`None`: absent).
#[derive(Debug, Default)]
pub struct Settled {
    paths: Mutex<HashMap<RawPath, Option<Node>>>,
}

impl Settled {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RawPath, Option<Node>>> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The windows open on each sandbox of this replica.
pub type OpenWindows = Mutex<HashMap<Uuid, Vec<Arc<Settled>>>>;

/// A container command's bracket; see the module documentation.
#[derive(Debug)]
pub struct CommandWindow {
    state: Arc<WindowState>,
    settled: Arc<Settled>,
}

/// What a window knows of the work copy before the command.
#[derive(Debug)]
struct WindowState {
    sandbox_id: Uuid,
    work: PathBuf,
    source: PathBuf,
    stash_dir: PathBuf,
    before: Scan,
    /// What a path held before the command when it differed from the baseline.
    stashed: BTreeMap<RawPath, Stashed>,
    /// SHA-256 before the command of files that matched the baseline.
    baseline_sha: HashMap<RawPath, String>,
}

#[derive(Debug)]
enum Stashed {
    File {
        copy: PathBuf,
        mode: u32,
        sha256: String,
    },
    Symlink(Vec<u8>),
}

/// A change the pipeline refused and took back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reverted {
    /// The path (control characters escaped).
    pub path: String,
    /// `write` or `delete`.
    pub operation: &'static str,
    /// The stage that denied.
    pub stage: &'static str,
    /// Why.
    pub reason: String,
    /// False when what stood there before could not be put back (the reason says why).
    pub restored: bool,
}

impl std::fmt::Display for Reverted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of `{}` reverted: {} denied it: {}",
            self.operation, self.path, self.stage, self.reason
        )?;
        if !self.restored {
            write!(f, " (the earlier content could not be put back)")?;
        }
        Ok(())
    }
}

/// What the pipeline made of the changes in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WindowReport {
    /// Paths whose change was permitted (and charged).
    pub permitted: Vec<String>,
    /// Changes denied and taken back.
    pub reverted: Vec<Reverted>,
}

fn blocking_failed(e: tokio::task::JoinError) -> CoworkError {
    CoworkError::io("container change check", std::io::Error::other(e))
}

fn observed(node: &Node) -> Option<Observed> {
    let kind = match node.kind {
        NodeKind::File => EntryKind::File,
        NodeKind::Symlink => EntryKind::Symlink,
        _ => return None,
    };
    Some(Observed {
        kind,
        size: node.size,
        mtime_ns: node.mtime_ns,
        ino: node.ino,
        ctime_ns: node.ctime_ns,
    })
}

/// Scans `work` and stashes (under `stash_dir`) every file or symlink that differs from the
/// baseline; the SHA-256 of the rest comes from the baseline.
fn open_blocking(work: &Path, stash_dir: &Path, baseline: &Manifest) -> std::io::Result<Opened> {
    let before = scan::scan(work)?;
    let mut stashed = BTreeMap::new();
    let mut baseline_sha = HashMap::new();
    for (path, node) in &before {
        let Some(now) = observed(node) else { continue };
        let entry = std::str::from_utf8(path)
            .ok()
            .and_then(|p| baseline.entries.get(p));
        if let Some(e) = entry.filter(|e| unchanged_by_stat(e, &now)) {
            baseline_sha.insert(path.clone(), e.sha256.clone());
            continue;
        }
        match scan::read(work, path)? {
            Some(Content::File(bytes, mode)) => {
                std::fs::create_dir_all(stash_dir)?;
                let copy = stash_dir.join(stashed.len().to_string());
                std::fs::write(&copy, &bytes)?;
                let sha256 = hex::encode(Sha256::digest(&bytes));
                stashed.insert(path.clone(), Stashed::File { copy, mode, sha256 });
            }
            Some(Content::Symlink(target)) => {
                stashed.insert(path.clone(), Stashed::Symlink(target));
            }
            None => {}
        }
    }
    Ok(Opened {
        before,
        stashed,
        baseline_sha,
    })
}

/// What [`open_blocking`] found.
struct Opened {
    before: Scan,
    stashed: BTreeMap<RawPath, Stashed>,
    baseline_sha: HashMap<RawPath, String>,
}

/// The SHA-256 of what `path` holds now (a symlink: of its target text).
fn sha_now(work: &Path, path: &[u8]) -> std::io::Result<Option<String>> {
    Ok(scan::read(work, path)?.map(|c| match c {
        Content::File(bytes, _) => hex::encode(Sha256::digest(&bytes)),
        Content::Symlink(target) => hex::encode(Sha256::digest(&target)),
    }))
}

/// What a path's change is, once the stat facts said something moved.
enum Change {
    /// Nothing the pipeline needs to judge (a directory's own facts, or the same content).
    None,
    /// Only the set-id bits were added.
    SetId,
    /// A new or different file or symlink of this size.
    Write(u64),
    /// A file or symlink is gone (or a directory stands in its place).
    Delete,
    /// A new directory (only its name is judged).
    NewDir,
    /// A fifo, socket or device.
    Special,
}

impl WindowState {
    fn sha_before(&self, path: &[u8]) -> Option<&str> {
        match self.stashed.get(path) {
            Some(Stashed::File { sha256, .. }) => Some(sha256),
            Some(Stashed::Symlink(_)) => None,
            None => self.baseline_sha.get(path).map(String::as_str),
        }
    }

    fn classify(&self, path: &[u8], now: Option<&Node>) -> std::io::Result<Change> {
        let before = self.before.get(path);
        let file_like = |n: &Node| matches!(n.kind, NodeKind::File | NodeKind::Symlink);
        Ok(match (before, now) {
            (_, Some(n)) if n.kind == NodeKind::Other => Change::Special,
            (Some(b), None) if file_like(b) => Change::Delete,
            (Some(b), Some(n)) if file_like(b) && n.kind == NodeKind::Dir => Change::Delete,
            (None, Some(n)) if n.kind == NodeKind::Dir => Change::NewDir,
            (_, None)
            | (
                _,
                Some(Node {
                    kind: NodeKind::Dir,
                    ..
                }),
            ) => Change::None,
            (Some(b), Some(n)) if b.kind == n.kind && b.ino == n.ino && b.size == n.size => {
                let same_bytes = if b.mtime_ns == n.mtime_ns && b.ctime_ns == n.ctime_ns {
                    true
                } else {
                    match (self.sha_before(path), &self.stashed.get(path)) {
                        (Some(sha), _) => sha_now(&self.work, path)?.as_deref() == Some(sha),
                        (None, Some(Stashed::Symlink(t))) => {
                            scan::read(&self.work, path)? == Some(Content::Symlink(t.clone()))
                        }
                        _ => false,
                    }
                };
                if !same_bytes {
                    Change::Write(n.size)
                } else if n.mode & 0o6000 != 0 && b.mode & 0o6000 != n.mode & 0o6000 {
                    Change::SetId
                } else {
                    Change::None
                }
            }
            (_, Some(n)) if n.kind == NodeKind::File && n.mode & 0o6000 != 0 => Change::SetId,
            (_, Some(n)) => Change::Write(n.size),
        })
    }

    /// What stood at `path` before the command, to put back.
    fn earlier(&self, path: &[u8]) -> std::io::Result<Option<Content>> {
        match self.stashed.get(path) {
            Some(Stashed::File { copy, mode, .. }) => {
                Ok(Some(Content::File(std::fs::read(copy)?, *mode)))
            }
            Some(Stashed::Symlink(t)) => Ok(Some(Content::Symlink(t.clone()))),
            // Unchanged from the baseline before the command: the source holds it (if the
            // source was edited since, its current bytes come back, and apply reports the
            // conflict as for any edited source).
            None => scan::read(&self.source, path),
        }
    }

    /// Takes back the change at `path`: what stood there before returns, or an added entry
    /// goes. Returns whether the earlier state is in place again.
    fn revert(&self, path: &[u8]) -> std::io::Result<bool> {
        match self.before.get(path) {
            Some(b) if matches!(b.kind, NodeKind::File | NodeKind::Symlink) => {
                match self.earlier(path)? {
                    Some(content) => {
                        scan::restore(&self.work, path, &content)?;
                        Ok(true)
                    }
                    None => {
                        scan::remove(&self.work, path)?;
                        Ok(false)
                    }
                }
            }
            Some(_) => Ok(true),
            None => {
                scan::remove(&self.work, path)?;
                Ok(true)
            }
        }
    }
}

impl PermissionGate {
    fn windows_of(&self, sandbox_id: Uuid) -> Vec<Arc<Settled>> {
        let open = self
            .sandboxes
            .inner()
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.get(&sandbox_id).cloned().unwrap_or_default()
    }

    /// Tells the windows open on `sandbox_id` (but `except`) that `rel` now holds what it
    /// holds as the outcome of a checked operation.
    pub(super) async fn settle(&self, sandbox_id: Uuid, work: &str, rel: &str) {
        self.settle_raw(sandbox_id, Path::new(work), rel.as_bytes(), None)
            .await;
    }

    async fn settle_raw(
        &self,
        sandbox_id: Uuid,
        work: &Path,
        rel: &[u8],
        except: Option<&Arc<Settled>>,
    ) {
        let windows: Vec<_> = self
            .windows_of(sandbox_id)
            .into_iter()
            .filter(|w| except.is_none_or(|e| !Arc::ptr_eq(w, e)))
            .collect();
        if windows.is_empty() {
            return;
        }
        let (work, path) = (work.to_path_buf(), rel.to_vec());
        let facts = tokio::task::spawn_blocking(move || scan::stat(&work, &path).ok().flatten())
            .await
            .ok()
            .flatten();
        for w in windows {
            w.lock().insert(rel.to_vec(), facts);
        }
    }

    /// Opens a window on `sandbox_id` before a container command runs.
    pub async fn open_window(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
    ) -> Result<CommandWindow, CoworkError> {
        let sandboxes = &self.sandboxes;
        let row = self.row(agent, sandbox_id).await?;
        if row.state != SandboxState::Active {
            return Err(CoworkError::FailedPrecondition(format!(
                "sandbox {sandbox_id} is {}: no command may change it",
                row.state.as_str()
            )));
        }
        let baseline = sandboxes.baseline(sandbox_id).await?;
        let work = PathBuf::from(&row.work_path);
        let stash_dir = sandboxes
            .dir_of(&row)
            .join("windows")
            .join(Uuid::now_v7().to_string());
        // Registered before the scan, so a gate write racing the scan is settled, not judged.
        let settled = Arc::new(Settled::default());
        sandboxes
            .inner()
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(sandbox_id)
            .or_default()
            .push(settled.clone());
        let (w, s) = (work.clone(), stash_dir.clone());
        let opened = tokio::task::spawn_blocking(move || open_blocking(&w, &s, &baseline))
            .await
            .map_err(blocking_failed)
            .and_then(|r| r.map_err(|e| CoworkError::io("scan the work copy", e)));
        let Opened {
            before,
            stashed,
            baseline_sha,
        } = match opened {
            Ok(o) => o,
            Err(e) => {
                self.forget(sandbox_id, &settled, &stash_dir).await;
                return Err(e);
            }
        };
        Ok(CommandWindow {
            state: Arc::new(WindowState {
                sandbox_id,
                work,
                source: PathBuf::from(&row.source_path),
                stash_dir,
                before,
                stashed,
                baseline_sha,
            }),
            settled,
        })
    }

    /// Unregisters a window and removes its stash.
    async fn forget(&self, sandbox_id: Uuid, settled: &Arc<Settled>, stash_dir: &Path) {
        {
            let mut open = self
                .sandboxes
                .inner()
                .windows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(list) = open.get_mut(&sandbox_id) {
                list.retain(|w| !Arc::ptr_eq(w, settled));
                if list.is_empty() {
                    open.remove(&sandbox_id);
                }
            }
        }
        let dir = stash_dir.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || crate::fs::tree::remove_tree(&dir)).await;
    }

    /// Closes `window` after the command: every change goes through the pipeline; denied ones
    /// are audited and reverted. See the module documentation.
    pub async fn close_window(
        &self,
        agent: &AgentContext,
        window: CommandWindow,
    ) -> Result<WindowReport, CoworkError> {
        let result = self.judge(agent, &window).await;
        let state = &window.state;
        self.forget(state.sandbox_id, &window.settled, &state.stash_dir)
            .await;
        result
    }

    async fn judge(
        &self,
        agent: &AgentContext,
        window: &CommandWindow,
    ) -> Result<WindowReport, CoworkError> {
        let state = &window.state;
        let work = state.work.clone();
        let after = tokio::task::spawn_blocking(move || scan::scan(&work))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| CoworkError::io("scan the work copy", e))?;
        let mut paths: Vec<&RawPath> = after
            .iter()
            .filter(|(p, n)| state.before.get(*p) != Some(*n))
            .map(|(p, _)| p)
            .chain(state.before.keys().filter(|p| !after.contains_key(*p)))
            .collect();
        paths.sort();
        // Deepest first: a bad directory's contents go before the directory.
        paths.reverse();
        let mut report = WindowReport::default();
        let mut reverted_any = false;
        for path in paths {
            let (s, p) = (state.clone(), path.clone());
            let looked = tokio::task::spawn_blocking(move || {
                let now = scan::stat(&s.work, &p)?;
                let change = s.classify(&p, now.as_ref())?;
                Ok::<_, std::io::Error>((now, change))
            })
            .await
            .map_err(blocking_failed)?
            .map_err(|e| CoworkError::io("compare a changed path", e))?;
            let (now, change) = looked;
            if window.settled.lock().get(path) == Some(&now) {
                continue;
            }
            let verdict = self.judge_one(agent, state, path, &change).await?;
            match verdict {
                Verdict::Unchanged => continue,
                Verdict::Permitted => report
                    .permitted
                    .push(printable(&String::from_utf8_lossy(path))),
                Verdict::Denied(op, denial) => {
                    let (s, p) = (state.clone(), path.clone());
                    let set_id = matches!(change, Change::SetId);
                    let mode = now.map_or(0, |n| n.mode & !0o6000);
                    let restored = tokio::task::spawn_blocking(move || {
                        if set_id {
                            scan::chmod(&s.work, &p, mode).map(|()| true)
                        } else {
                            s.revert(&p)
                        }
                    })
                    .await
                    .map_err(blocking_failed)?
                    .unwrap_or_else(|error| {
                        tracing::error!(%error, sandbox = %state.sandbox_id, path = %printable(&String::from_utf8_lossy(path)), "reverting a denied container change failed");
                        false
                    });
                    ::metrics::counter!(metrics::CONTAINER_CHANGES, "decision" => "reverted")
                        .increment(1);
                    reverted_any = true;
                    report.reverted.push(Reverted {
                        path: printable(&String::from_utf8_lossy(path)),
                        operation: op.as_str(),
                        stage: denial.stage.as_str(),
                        reason: denial.reason,
                        restored,
                    });
                }
            }
            self.settle_raw(state.sandbox_id, &state.work, path, Some(&window.settled))
                .await;
            if let Ok(p) = std::str::from_utf8(path) {
                self.sandboxes.inner().watcher.mark(state.sandbox_id, p);
            }
        }
        if reverted_any {
            let row = self.row(agent, state.sandbox_id).await?;
            self.sandboxes.hand_to_containers(&row).await?;
        }
        Ok(report)
    }

    async fn row(&self, agent: &AgentContext, sandbox_id: Uuid) -> Result<SandboxRow, CoworkError> {
        self.sandboxes
            .inner()
            .store
            .get(&agent.tenant, sandbox_id)
            .await?
            .ok_or_else(|| CoworkError::SandboxNotFound(sandbox_id.to_string()))
    }

    async fn judge_one(
        &self,
        agent: &AgentContext,
        window: &WindowState,
        path: &[u8],
        change: &Change,
    ) -> Result<Verdict, CoworkError> {
        let op = match change {
            Change::None => return Ok(Verdict::Unchanged),
            Change::Write(_) | Change::NewDir | Change::Special | Change::SetId => Operation::Write,
            Change::Delete => Operation::Delete,
        };
        let shown = printable(&String::from_utf8_lossy(path));
        let refuse = |stage: Stage, reason: &str| Denial {
            stage,
            reason: reason.to_owned(),
        };
        let early = match (std::str::from_utf8(path), change) {
            (Err(_), _) => Some(refuse(Stage::Normalize, "the name is not valid UTF-8")),
            (_, Change::Special) => Some(refuse(
                Stage::Normalize,
                "a fifo, socket or device file may not be created in a sandbox",
            )),
            (_, Change::SetId) => Some(refuse(
                Stage::Capability,
                "set-user-id and set-group-id bits may not be set in a sandbox",
            )),
            (Ok(p), Change::NewDir) => {
                crate::domain::path::parse_request(p).err().map(|e| Denial {
                    stage: Stage::Normalize,
                    reason: e.to_string(),
                })
            }
            _ => None,
        };
        if let Some(denial) = early {
            let d = denial.clone();
            let _ = self
                .deny_from(Origin::Container, agent, window.sandbox_id, op, &shown, d)
                .await;
            return Ok(Verdict::Denied(op, denial));
        }
        if matches!(change, Change::NewDir) {
            return Ok(Verdict::Permitted);
        }
        let Ok(text) = std::str::from_utf8(path) else {
            return Ok(Verdict::Unchanged);
        };
        let bytes = match change {
            Change::Write(n) => Some(*n),
            _ => None,
        };
        let permitted = match self
            .check_from(Origin::Container, agent, window.sandbox_id, op, text, bytes)
            .await
        {
            Ok(p) => p,
            Err(CoworkError::Denied { stage, reason, .. }) => {
                return Ok(Verdict::Denied(op, Denial { stage, reason }));
            }
            Err(other) => return Err(other),
        };
        let inner = self.sandboxes.inner();
        if let Some(len) = bytes {
            let limit = inner.policy.max_session_bytes;
            if !inner
                .store
                .charge(&agent.tenant, agent.session_id, len, limit)
                .await?
            {
                let denial = Denial {
                    stage: Stage::SizeLimit,
                    reason: format!(
                        "committing {len} bytes would exceed the session's budget of {limit} bytes"
                    ),
                };
                let d = denial.clone();
                let _ = self
                    .deny_from(Origin::Container, agent, window.sandbox_id, op, text, d)
                    .await;
                return Ok(Verdict::Denied(op, denial));
            }
        }
        let sha_after = if op == Operation::Write {
            let (w, p) = (window.work.clone(), path.to_vec());
            tokio::task::spawn_blocking(move || sha_now(&w, &p))
                .await
                .map_err(blocking_failed)?
                .ok()
                .flatten()
        } else {
            None
        };
        let action = if op == Operation::Write {
            "file.write"
        } else {
            "file.delete"
        };
        let mut a = AuditRecord::new(&agent.tenant, &agent.agent, action, "ok");
        a.sandbox_id = Some(window.sandbox_id);
        a.session_id = Some(agent.session_id);
        a.path = Some(permitted.rel);
        a.sha256_before = window.sha_before(path).map(str::to_owned);
        a.sha256_after = sha_after;
        a.detail = json!({ "origin": Origin::Container.as_str(), "bytes": bytes });
        if let Err(error) = inner.store.append_audit(&[a]).await {
            tracing::error!(%error, "audit append failed");
        }
        ::metrics::counter!(metrics::CONTAINER_CHANGES, "decision" => "permitted").increment(1);
        Ok(Verdict::Permitted)
    }
}

enum Verdict {
    Unchanged,
    Permitted,
    Denied(Operation, Denial),
}
