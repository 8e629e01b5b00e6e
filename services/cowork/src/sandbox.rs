//! Staging sandboxes: every file change an agent makes waits in a sandbox until a person
//! applies it (issue 7, item 7).
//!
//! A sandbox is a work copy of a source directory under `<sandbox.root>/<tenant>/<id>/work`
//! (what the executor mounts into a container) plus a SHA-256 baseline manifest in the
//! database. [`StagingSandboxes`] creates, inspects, diffs, applies (re-checking every source
//! file against the baseline at apply time: a file changed since is a conflict and nothing is
//! written; a backup is taken first; writes are temp-and-rename), discards, rolls back
//! (restores the backup, removes added files), records the attached container and the A2A task,
//! lists sandboxes awaiting resume after a restart and resumes them, expires them, and writes
//! the append-only audit log. Agent file operations go through [`crate::permission`], never
//! straight to the directory. Blocking filesystem work runs in `spawn_blocking`; nothing spawns
//! a shell.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{CoworkSettings, SandboxSection};
use crate::domain::diff::{is_binary, unified};
use crate::domain::manifest::{
    ChangeKind, CopyKind, EntryKind, Manifest, classify, unchanged_by_stat,
};
use crate::domain::path::{is_within, lexical_normalize, parse_request, plain_name};
use crate::domain::permission::Policy;
use crate::domain::state::{SandboxState, Transition};
use crate::error::CoworkError;
use crate::fs::beneath::Beneath;
use crate::fs::tree::{self, TreeError};
use crate::fs::watch::ChangeWatcher;
use crate::metrics;
use crate::store::{AuditFilter, AuditRecord, SandboxRow, SandboxStore};

/// Who calls: the verified token's tenant and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant that scopes every row and directory.
    pub tenant: String,
    /// Who, for the audit log.
    pub actor: String,
}

/// A create request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// The source directory (absolute, inside one of the tenant's workspace roots).
    pub source: String,
    /// The session whose agents work in it; a new one when absent.
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// Free text.
    #[serde(default)]
    pub label: Option<String>,
    /// Lifetime in seconds (default `sandbox.ttl_secs`, at most ten times it).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The request's `Idempotency-Key` (from the header).
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxView {
    /// The stored row (its `work_path` is the host path a container mounts).
    #[serde(flatten)]
    pub row: SandboxRow,
    /// How the work copy was made, per kind.
    pub copy: serde_json::Value,
    /// True when this replica watches it for changes.
    pub live: bool,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path relative to the sandbox.
    pub path: String,
    /// Added, modified or deleted.
    pub change: ChangeKind,
    /// File or symlink (the new side; the old one for a deletion).
    pub kind: EntryKind,
    /// Baseline hash.
    pub sha256_before: Option<String>,
    /// Work-copy hash.
    pub sha256_after: Option<String>,
    /// The source no longer matches the baseline: applying would be refused.
    pub source_changed: bool,
    /// Not shown as text.
    pub binary: bool,
    /// Unified diff (text files up to `sandbox.max_diff_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// The sandbox.
    pub sandbox_id: Uuid,
    /// Changed files, by path.
    pub changes: Vec<FileChange>,
    /// `notifications` (only touched paths were examined) or `walk` (the whole work copy).
    pub detection: &'static str,
    /// Counts by kind.
    pub summary: BTreeMap<&'static str, usize>,
}

/// What apply wrote, for rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedChange {
    /// Path relative to the source.
    pub path: String,
    /// What was done.
    pub change: ChangeKind,
    /// The source's hash before (the baseline's).
    pub sha256_before: Option<String>,
    /// The source's hash after.
    pub sha256_after: Option<String>,
}

/// The result of apply or rollback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplyReport {
    /// The sandbox after the operation.
    pub sandbox: SandboxView,
    /// Files written or removed.
    pub files: Vec<AppliedChange>,
}

/// The staging sandboxes of this replica.
#[derive(Clone)]
pub struct StagingSandboxes {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn SandboxStore>,
    pub(crate) settings: SandboxSection,
    pub(crate) root: PathBuf,
    pub(crate) policy: Policy,
    pub(crate) watcher: ChangeWatcher,
    pub(crate) instance: Uuid,
    /// Container-command windows open on each sandbox (see `crate::permission::window`).
    pub(crate) windows: crate::permission::window::OpenWindows,
}

fn blocking_failed(e: tokio::task::JoinError) -> CoworkError {
    CoworkError::io("background work", io::Error::other(e))
}

/// The directory name of a tenant under the sandbox root: a hash, so no tenant text reaches
/// the filesystem.
pub fn tenant_dir(tenant: &str) -> String {
    let h = hex::encode(Sha256::digest(tenant.as_bytes()));
    format!("t-{}", &h[..24])
}

fn copy_summary(m: &Manifest) -> String {
    let counts: BTreeMap<&str, u64> = m
        .copy_counts()
        .into_iter()
        .map(|(k, v)| {
            (
                match k {
                    CopyKind::Reflink => "reflink",
                    CopyKind::Hardlink => "hardlink",
                    CopyKind::Copy => "copy",
                },
                v,
            )
        })
        .collect();
    serde_json::to_string(&counts).unwrap_or_else(|_| "{}".into())
}

/// What a source path holds now, read beneath the source root (a symlink swapped into the
/// source never leads a diff or apply outside it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceNow {
    Missing,
    Present {
        kind: EntryKind,
        sha: String,
        text: Option<Vec<u8>>,
    },
    Outside,
}

fn source_now(src: &Beneath, rel: &str, want_bytes: u64) -> io::Result<SourceNow> {
    let Ok(req) = parse_request(rel) else {
        return Ok(SourceNow::Outside);
    };
    let walk = match src.resolve(&req, false) {
        Ok(w) => w,
        Err(_) => return Ok(SourceNow::Outside),
    };
    let Some(located) = walk.located.filter(|_| !walk.resolution.escaped) else {
        return Ok(SourceNow::Outside);
    };
    use crate::domain::permission::TargetKind;
    match walk.resolution.kind {
        TargetKind::Missing => Ok(SourceNow::Missing),
        TargetKind::File => {
            let mut f = located.open_read()?;
            let len = f.metadata()?.len();
            if len <= want_bytes {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut f, &mut bytes)?;
                let sha = hex::encode(Sha256::digest(&bytes));
                Ok(SourceNow::Present {
                    kind: EntryKind::File,
                    sha,
                    text: Some(bytes),
                })
            } else {
                Ok(SourceNow::Present {
                    kind: EntryKind::File,
                    sha: tree::hash_reader(&mut f)?,
                    text: None,
                })
            }
        }
        TargetKind::Symlink => {
            let name = located.name.as_deref().unwrap_or_default();
            let target =
                rustix::fs::readlinkat(&located.dir, name, Vec::new()).map_err(io::Error::from)?;
            Ok(SourceNow::Present {
                kind: EntryKind::Symlink,
                sha: hex::encode(Sha256::digest(target.as_bytes())),
                text: None,
            })
        }
        TargetKind::Directory | TargetKind::Other => Ok(SourceNow::Present {
            kind: EntryKind::File,
            sha: String::new(),
            text: None,
        }),
    }
}

impl SourceNow {
    fn sha(&self) -> Option<&str> {
        match self {
            SourceNow::Present { sha, .. } => Some(sha),
            _ => None,
        }
    }
}

/// Computes the changes of a work copy against its baseline (blocking).
fn compute_changes(
    work: &Path,
    source: &Path,
    baseline: &Manifest,
    dirty: Option<&BTreeSet<String>>,
    max_diff_bytes: u64,
    with_text: bool,
) -> io::Result<Vec<FileChange>> {
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    match dirty {
        None => {
            candidates.extend(tree::walk(work, "")?);
            candidates.extend(baseline.entries.keys().cloned());
        }
        Some(d) => {
            for p in d {
                candidates.insert(p.clone());
                let prefix = format!("{p}/");
                candidates.extend(
                    baseline
                        .entries
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, _)| k.clone()),
                );
                candidates.extend(tree::walk(work, p)?);
            }
        }
    }
    let src = Beneath::open(source)?;
    // One candidate's change. Other steps write in the same sandbox meanwhile, so a file seen a
    // moment ago may be gone (an atomic write's temp file, a deleted file): the caller looks
    // again, and then it is absent.
    let one = |path: String| -> io::Result<Option<FileChange>> {
        let base = baseline.entries.get(&path);
        let wpath = work.join(&path);
        let observed = tree::observe(&wpath)?;
        if let (Some(b), Some(o)) = (base, observed.as_ref())
            && unchanged_by_stat(b, o)
        {
            return Ok(None);
        }
        let now = match observed {
            Some(_) => tree::identify(&wpath)?,
            None => None,
        };
        let Some(change) = classify(base, now.as_ref().map(|(k, s)| (*k, s.as_str()))) else {
            return Ok(None);
        };
        let want = if with_text { max_diff_bytes } else { 0 };
        let src_now = source_now(&src, &path, want)?;
        let source_changed = match change {
            ChangeKind::Added => src_now != SourceNow::Missing,
            ChangeKind::Modified | ChangeKind::Deleted => {
                src_now.sha() != base.map(|b| b.sha256.as_str())
            }
        };
        let kind = now
            .as_ref()
            .map(|(k, _)| *k)
            .or(base.map(|b| b.kind))
            .unwrap_or(EntryKind::File);
        let mut binary = false;
        let mut diff = None;
        if with_text && kind == EntryKind::File {
            let old = match &src_now {
                SourceNow::Present {
                    text: Some(bytes), ..
                } => Some(bytes.clone()),
                _ => None,
            };
            let new = match &now {
                Some(_) => {
                    let len = std::fs::symlink_metadata(&wpath)?.len();
                    if len <= max_diff_bytes {
                        Some(std::fs::read(&wpath)?)
                    } else {
                        None
                    }
                }
                None => None,
            };
            let too_big = (now.is_some() && new.is_none())
                || (matches!(src_now, SourceNow::Present { .. })
                    && old.is_none()
                    && change != ChangeKind::Added);
            binary = old.as_deref().is_some_and(is_binary) || new.as_deref().is_some_and(is_binary);
            if !binary && !too_big {
                let old_text = old.as_deref().and_then(|b| std::str::from_utf8(b).ok());
                let new_text = new.as_deref().and_then(|b| std::str::from_utf8(b).ok());
                let old_side = if change == ChangeKind::Added {
                    None
                } else {
                    old_text.or(Some(""))
                };
                let new_side = if change == ChangeKind::Deleted {
                    None
                } else {
                    new_text.or(Some(""))
                };
                diff = Some(unified(&path, old_side, new_side));
            }
        } else if kind == EntryKind::File {
            binary = false;
        }
        Ok(Some(FileChange {
            path,
            change,
            kind,
            sha256_before: base.map(|b| b.sha256.clone()),
            sha256_after: now.map(|(_, s)| s),
            source_changed,
            binary,
            diff,
        }))
    };
    let mut out = Vec::new();
    for path in candidates {
        let change = match one(path.clone()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match one(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                other => other?,
            },
            other => other?,
        };
        out.extend(change);
    }
    Ok(out)
}

/// Symlinks in the work copy whose target leaves the tree are never applied.
fn escaping_symlink(work: &Path, rel: &str) -> io::Result<bool> {
    let p = work.join(rel);
    let target = std::fs::read_link(&p)?;
    let parent = p.parent().unwrap_or(work);
    Ok(!is_within(&lexical_normalize(&parent.join(target)), work))
}

impl StagingSandboxes {
    /// Opens the sandbox root (created if needed) and the watcher; returns the sandboxes and
    /// the watcher's event loop, which the caller spawns.
    pub async fn open(
        store: Arc<dyn SandboxStore>,
        settings: &CoworkSettings,
        instance: Uuid,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(StagingSandboxes, impl Future<Output = ()> + Send + 'static), CoworkError> {
        let configured = PathBuf::from(&settings.sandbox.root);
        tokio::fs::create_dir_all(&configured)
            .await
            .map_err(|e| CoworkError::io(format!("sandbox.root {}", configured.display()), e))?;
        let root = tokio::fs::canonicalize(&configured)
            .await
            .map_err(|e| CoworkError::io(format!("sandbox.root {}", configured.display()), e))?;
        let policy = Policy::from_section(&settings.permissions);
        if let Some(prefix) = policy.blocked_prefix_of(&root) {
            return Err(CoworkError::FailedPrecondition(format!(
                "sandbox.root {} lies under the blocked prefix {}: every agent operation would be denied; move it or change permissions.blocked_prefixes",
                root.display(),
                prefix.display()
            )));
        }
        let (watcher, events) = ChangeWatcher::new(root.clone());
        let run = watcher.clone().run(events, shutdown);
        metrics::register();
        Ok((
            StagingSandboxes {
                inner: Arc::new(Inner {
                    store,
                    settings: settings.sandbox.clone(),
                    root,
                    policy,
                    watcher,
                    instance,
                    windows: Default::default(),
                }),
            },
            run,
        ))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The permission pipeline over these sandboxes: the one gate for agent file operations.
    pub fn gate(&self) -> crate::permission::PermissionGate {
        crate::permission::PermissionGate::new(self.clone())
    }

    /// The canonical sandbox root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn dir_of(&self, row: &SandboxRow) -> PathBuf {
        self.inner
            .root
            .join(tenant_dir(&row.tenant))
            .join(row.sandbox_id.to_string())
    }

    fn view(&self, row: SandboxRow) -> SandboxView {
        let copy = serde_json::from_str(&row.copy_summary).unwrap_or(json!({}));
        let live = self.inner.watcher.is_live(row.sandbox_id);
        SandboxView { row, copy, live }
    }

    async fn audit(&self, records: Vec<AuditRecord>) {
        if records.is_empty() {
            return;
        }
        if let Err(error) = self.inner.store.append_audit(&records).await {
            tracing::error!(%error, entries = records.len(), "audit append failed");
        }
    }

    fn record(
        &self,
        caller: &Caller,
        row: &SandboxRow,
        action: &str,
        outcome: &str,
    ) -> AuditRecord {
        let mut r = AuditRecord::new(&caller.tenant, &caller.actor, action, outcome);
        r.sandbox_id = Some(row.sandbox_id);
        r.session_id = Some(row.session_id);
        r
    }

    /// The caller's sandbox `id`.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<SandboxRow, CoworkError> {
        self.inner
            .store
            .get(&caller.tenant, id)
            .await?
            .ok_or_else(|| CoworkError::SandboxNotFound(id.to_string()))
    }

    pub(crate) async fn baseline(&self, id: Uuid) -> Result<Manifest, CoworkError> {
        let body = self
            .inner
            .store
            .manifest(id, "baseline")
            .await?
            .ok_or_else(|| CoworkError::Corrupt(format!("sandbox {id} has no baseline")))?;
        serde_json::from_str(&body).map_err(|e| CoworkError::Corrupt(e.to_string()))
    }

    fn workspace_roots(&self, tenant: &str) -> Vec<PathBuf> {
        self.inner
            .settings
            .workspace_roots
            .iter()
            .filter_map(|w| {
                if w.contains("{tenant}") {
                    plain_name(tenant).map(|t| PathBuf::from(w.replace("{tenant}", t)))
                } else {
                    Some(PathBuf::from(w))
                }
            })
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect()
    }

    /// Creates a sandbox: the work copy and its baseline.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateSandbox,
    ) -> Result<SandboxView, CoworkError> {
        let started = Instant::now();
        if let Some(key) = &req.idempotency_key
            && let Some(row) = self
                .inner
                .store
                .by_idempotency_key(&caller.tenant, key)
                .await?
        {
            return Ok(self.view(row));
        }
        let parsed = parse_request(&req.source)
            .map_err(|e| CoworkError::invalid("source", e.to_string()))?;
        if !parsed.absolute {
            return Err(CoworkError::invalid("source", "must be an absolute path"));
        }
        let source = tree::canonical_dir(&parsed.to_absolute(Path::new("/"))).map_err(|e| {
            CoworkError::invalid("source", format!("{} is not a directory: {e}", req.source))
        })?;
        let roots = self.workspace_roots(&caller.tenant);
        if !roots.iter().any(|r| is_within(&source, r)) {
            return Err(CoworkError::Forbidden(format!(
                "source {} is outside this tenant's workspace roots",
                source.display()
            )));
        }
        if is_within(&source, &self.inner.root) || is_within(&self.inner.root, &source) {
            return Err(CoworkError::invalid(
                "source",
                "must not contain or lie inside the sandbox root",
            ));
        }
        let ttl = req.ttl_secs.unwrap_or(self.inner.settings.ttl_secs);
        if ttl == 0 || ttl > self.inner.settings.ttl_secs.saturating_mul(10) {
            return Err(CoworkError::invalid(
                "ttl_secs",
                format!(
                    "must be between 1 and {}",
                    self.inner.settings.ttl_secs.saturating_mul(10)
                ),
            ));
        }
        let label = req.label.unwrap_or_default();
        if label.len() > 200 {
            return Err(CoworkError::invalid("label", "at most 200 bytes"));
        }
        let id = Uuid::now_v7();
        let session_id = req.session_id.unwrap_or_else(Uuid::now_v7);
        let dir = self
            .inner
            .root
            .join(tenant_dir(&caller.tenant))
            .join(id.to_string());
        let work = dir.join("work");
        let (mode, max_files) = (self.inner.settings.copy_mode, self.inner.settings.max_files);
        let (src, w) = (source.clone(), work.clone());
        let made =
            tokio::task::spawn_blocking(move || tree::create_work_copy(&src, &w, mode, max_files))
                .await
                .map_err(blocking_failed)?;
        let copy = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    move || tree::remove_tree(&dir)
                })
                .await;
                return Err(match e {
                    TreeError::TooManyFiles(n) => CoworkError::TooLarge(format!(
                        "the source has more than {n} entries (sandbox.max_files)"
                    )),
                    TreeError::Io { path, source } => CoworkError::io(path, source),
                });
            }
        };
        let now = Utc::now();
        let row = SandboxRow {
            sandbox_id: id,
            tenant: caller.tenant.clone(),
            session_id,
            state: SandboxState::Active,
            label,
            source_path: source.display().to_string(),
            work_path: work.display().to_string(),
            file_count: i64::try_from(copy.manifest.entries.len()).unwrap_or(i64::MAX),
            total_bytes: i64::try_from(copy.manifest.total_bytes()).unwrap_or(i64::MAX),
            copy_summary: copy_summary(&copy.manifest),
            container_id: None,
            container_attached_at: None,
            a2a_task_id: None,
            a2a_task_state: None,
            a2a_updated_at: None,
            live_instance: Some(self.inner.instance),
            idempotency_key: req.idempotency_key.clone(),
            created_at: now,
            updated_at: now,
            expires_at: now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2)),
            applied_at: None,
        };
        let body = serde_json::to_string(&copy.manifest)
            .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
        if let Err(e) = self.inner.store.insert(&row, &body).await {
            let _ = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || tree::remove_tree(&dir)
            })
            .await;
            // A concurrent create with the same key won the race: answer with its sandbox.
            if let Some(key) = &req.idempotency_key
                && let Some(row) = self
                    .inner
                    .store
                    .by_idempotency_key(&caller.tenant, key)
                    .await?
            {
                return Ok(self.view(row));
            }
            return Err(e);
        }
        self.inner.watcher.watch(id, &dir, true);
        let mut a = self.record(caller, &row, "sandbox.create", "ok");
        a.path = Some(row.source_path.clone());
        a.detail = json!({
            "files": row.file_count, "bytes": row.total_bytes,
            "copy": serde_json::from_str::<serde_json::Value>(&row.copy_summary).unwrap_or_default(),
            "skipped": copy.skipped,
        });
        self.audit(vec![a]).await;
        ::metrics::histogram!(metrics::CREATE_SECONDS).record(started.elapsed().as_secs_f64());
        tracing::info!(sandbox = %id, files = row.file_count, bytes = row.total_bytes, "sandbox created");
        Ok(self.view(row))
    }

    /// The caller's sandbox.
    pub async fn inspect(&self, caller: &Caller, id: Uuid) -> Result<SandboxView, CoworkError> {
        Ok(self.view(self.get(caller, id).await?))
    }

    async fn changes_of(
        &self,
        row: &SandboxRow,
        with_text: bool,
    ) -> Result<(Vec<FileChange>, &'static str, Manifest), CoworkError> {
        let baseline = self.baseline(row.sandbox_id).await?;
        let dir = self.dir_of(row);
        let dirty = self.inner.watcher.dirty(row.sandbox_id, &dir).await;
        let detection = if dirty.is_some() {
            "notifications"
        } else {
            "walk"
        };
        let work = PathBuf::from(&row.work_path);
        let source = PathBuf::from(&row.source_path);
        let max = self.inner.settings.max_diff_bytes;
        let (changes, baseline) = tokio::task::spawn_blocking(move || {
            compute_changes(&work, &source, &baseline, dirty.as_ref(), max, with_text)
                .map(|c| (c, baseline))
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| CoworkError::io("diff", e))?;
        Ok((changes, detection, baseline))
    }

    /// What the sandbox changed against its baseline.
    pub async fn diff(&self, caller: &Caller, id: Uuid) -> Result<DiffReport, CoworkError> {
        let started = Instant::now();
        let row = self.get(caller, id).await?;
        if row.state != SandboxState::Active {
            return Err(CoworkError::FailedPrecondition(format!(
                "the sandbox is {}; only an active sandbox has pending changes",
                row.state.as_str()
            )));
        }
        let (changes, detection, _) = self.changes_of(&row, true).await?;
        let mut summary = BTreeMap::from([
            ("added", 0),
            ("modified", 0),
            ("deleted", 0),
            ("conflicts", 0),
        ]);
        for c in &changes {
            let k = match c.change {
                ChangeKind::Added => "added",
                ChangeKind::Modified => "modified",
                ChangeKind::Deleted => "deleted",
            };
            *summary.entry(k).or_default() += 1;
            if c.source_changed {
                *summary.entry("conflicts").or_default() += 1;
            }
        }
        ::metrics::histogram!(metrics::DIFF_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(DiffReport {
            sandbox_id: id,
            changes,
            detection,
            summary,
        })
    }

    /// Writes the sandbox's changes (or the named subset) to its source.
    pub async fn apply(
        &self,
        caller: &Caller,
        id: Uuid,
        only: Option<Vec<String>>,
    ) -> Result<ApplyReport, CoworkError> {
        let started = Instant::now();
        let row = self.get(caller, id).await?;
        row.state
            .after(Transition::Apply)
            .map_err(CoworkError::FailedPrecondition)?;
        let (mut changes, _, _) = self.changes_of(&row, false).await?;
        if let Some(only) = &only {
            let known: BTreeSet<&str> = changes.iter().map(|c| c.path.as_str()).collect();
            if let Some(unknown) = only.iter().find(|p| !known.contains(p.as_str())) {
                return Err(CoworkError::invalid(
                    "paths",
                    format!(
                        "`{}` has no pending change",
                        crate::store::printable(unknown)
                    ),
                ));
            }
            changes.retain(|c| only.contains(&c.path));
        }
        let conflicts: Vec<String> = changes
            .iter()
            .filter(|c| c.source_changed)
            .map(|c| c.path.clone())
            .collect();
        if !conflicts.is_empty() {
            return Err(self.conflict(caller, &row, "apply", conflicts).await);
        }
        let work = PathBuf::from(&row.work_path);
        let escaping: Vec<String> = changes
            .iter()
            .filter(|c| c.kind == EntryKind::Symlink && c.change != ChangeKind::Deleted)
            .filter(|c| escaping_symlink(&work, &c.path).unwrap_or(true))
            .map(|c| c.path.clone())
            .collect();
        if !escaping.is_empty() {
            return Err(CoworkError::Forbidden(format!(
                "symlinks pointing outside the sandbox are never applied: {}",
                escaping.join(", ")
            )));
        }
        // Claim the apply (one winner across requests and replicas).
        let now = Utc::now();
        if !self
            .inner
            .store
            .transition(
                &caller.tenant,
                id,
                SandboxState::Active,
                SandboxState::Applied,
                now,
            )
            .await?
        {
            return Err(CoworkError::FailedPrecondition(
                "the sandbox changed state during the apply; inspect it".into(),
            ));
        }
        let dir = self.dir_of(&row);
        let source = PathBuf::from(&row.source_path);
        let to_apply = changes.clone();
        let written =
            tokio::task::spawn_blocking(move || apply_blocking(&dir, &work, &source, &to_apply))
                .await
                .map_err(blocking_failed)?;
        let files = match written {
            Ok(files) => files,
            Err(e) => {
                let _ = self
                    .inner
                    .store
                    .transition(
                        &caller.tenant,
                        id,
                        SandboxState::Applied,
                        SandboxState::Active,
                        Utc::now(),
                    )
                    .await;
                let mut a = self.record(caller, &row, "sandbox.apply", "error");
                a.detail = json!({ "error": e.to_string() });
                self.audit(vec![a]).await;
                return Err(CoworkError::io(
                    "apply (the source was restored from the backup)",
                    e,
                ));
            }
        };
        let body =
            serde_json::to_string(&files).map_err(|e| CoworkError::Corrupt(e.to_string()))?;
        self.inner.store.put_manifest(id, "applied", &body).await?;
        self.inner.watcher.unwatch(id, &self.dir_of(&row));
        let mut records: Vec<AuditRecord> = files
            .iter()
            .map(|f| {
                let action = if f.change == ChangeKind::Deleted {
                    "apply.delete"
                } else {
                    "apply.write"
                };
                let mut a = self.record(caller, &row, action, "ok");
                a.path = Some(f.path.clone());
                a.sha256_before = f.sha256_before.clone();
                a.sha256_after = f.sha256_after.clone();
                a
            })
            .collect();
        let mut summary = self.record(caller, &row, "sandbox.apply", "ok");
        summary.detail = json!({ "files": files.len() });
        records.push(summary);
        self.audit(records).await;
        ::metrics::histogram!(metrics::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        let row = self.get(caller, id).await?;
        Ok(ApplyReport {
            sandbox: self.view(row),
            files,
        })
    }

    async fn conflict(
        &self,
        caller: &Caller,
        row: &SandboxRow,
        what: &str,
        files: Vec<String>,
    ) -> CoworkError {
        ::metrics::counter!(metrics::APPLY_CONFLICTS).increment(files.len() as u64);
        let mut a = self.record(caller, row, &format!("sandbox.{what}"), "conflict");
        a.detail = json!({ "files": files });
        self.audit(vec![a]).await;
        CoworkError::Conflict {
            message: format!(
                "{} file(s) changed in the source since the {}; nothing was written",
                files.len(),
                if what == "apply" { "baseline" } else { "apply" }
            ),
            files,
        }
    }

    /// Drops an active sandbox and its directory.
    pub async fn discard(&self, caller: &Caller, id: Uuid) -> Result<SandboxView, CoworkError> {
        let row = self.get(caller, id).await?;
        let next = row
            .state
            .after(Transition::Discard)
            .map_err(CoworkError::FailedPrecondition)?;
        if !self
            .inner
            .store
            .transition(&caller.tenant, id, row.state, next, Utc::now())
            .await?
        {
            return Err(CoworkError::FailedPrecondition(
                "the sandbox changed state meanwhile; inspect it".into(),
            ));
        }
        self.remove_dir(&row).await;
        let a = self.record(caller, &row, "sandbox.discard", "ok");
        self.audit(vec![a]).await;
        self.inspect(caller, id).await
    }

    async fn remove_dir(&self, row: &SandboxRow) {
        let dir = self.dir_of(row);
        self.inner.watcher.unwatch(row.sandbox_id, &dir);
        let removed = tokio::task::spawn_blocking(move || tree::remove_tree(&dir)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(sandbox = %row.sandbox_id, "sandbox directory not fully removed");
        }
    }

    /// Restores the source from the apply's backup and removes the files the apply added.
    pub async fn rollback(&self, caller: &Caller, id: Uuid) -> Result<ApplyReport, CoworkError> {
        let row = self.get(caller, id).await?;
        row.state
            .after(Transition::Rollback)
            .map_err(CoworkError::FailedPrecondition)?;
        let body = self
            .inner
            .store
            .manifest(id, "applied")
            .await?
            .ok_or_else(|| CoworkError::Corrupt(format!("sandbox {id} has no applied record")))?;
        let files: Vec<AppliedChange> =
            serde_json::from_str(&body).map_err(|e| CoworkError::Corrupt(e.to_string()))?;
        let source = PathBuf::from(&row.source_path);
        let check = files.clone();
        let conflicts = tokio::task::spawn_blocking(move || -> io::Result<Vec<String>> {
            let src = Beneath::open(&source)?;
            let mut out = Vec::new();
            for f in &check {
                let now = source_now(&src, &f.path, 0)?;
                let ok = match f.change {
                    ChangeKind::Deleted => now == SourceNow::Missing,
                    _ => now.sha() == f.sha256_after.as_deref(),
                };
                if !ok {
                    out.push(f.path.clone());
                }
            }
            Ok(out)
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| CoworkError::io("rollback check", e))?;
        if !conflicts.is_empty() {
            return Err(self.conflict(caller, &row, "rollback", conflicts).await);
        }
        if !self
            .inner
            .store
            .transition(
                &caller.tenant,
                id,
                SandboxState::Applied,
                SandboxState::RolledBack,
                Utc::now(),
            )
            .await?
        {
            return Err(CoworkError::FailedPrecondition(
                "the sandbox changed state meanwhile; inspect it".into(),
            ));
        }
        let backup = self.dir_of(&row).join("backup");
        let source = PathBuf::from(&row.source_path);
        let restore = files.clone();
        let restored = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let src = Beneath::open(&source)?;
            for f in &restore {
                match f.change {
                    ChangeKind::Added => tree::remove(&src, &f.path)?,
                    ChangeKind::Modified | ChangeKind::Deleted => {
                        tree::install(&backup.join(&f.path), &src, &f.path)?;
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(blocking_failed)?;
        if let Err(e) = restored {
            let mut a = self.record(caller, &row, "sandbox.rollback", "error");
            a.detail = json!({ "error": e.to_string() });
            self.audit(vec![a]).await;
            return Err(CoworkError::io("rollback", e));
        }
        self.remove_dir(&row).await;
        let mut records: Vec<AuditRecord> = files
            .iter()
            .map(|f| {
                let mut a = self.record(caller, &row, "rollback.restore", "ok");
                a.path = Some(f.path.clone());
                a.sha256_before = f.sha256_after.clone();
                a.sha256_after = f.sha256_before.clone();
                a
            })
            .collect();
        records.push(self.record(caller, &row, "sandbox.rollback", "ok"));
        self.audit(records).await;
        let row = self.get(caller, id).await?;
        Ok(ApplyReport {
            sandbox: self.view(row),
            files,
        })
    }

    /// Records the container the sandbox is mounted into. Files still hard-linked to the source
    /// are copied first, so the container's in-place writes cannot reach the source.
    pub async fn attach_container(
        &self,
        caller: &Caller,
        id: Uuid,
        container_id: &str,
    ) -> Result<SandboxView, CoworkError> {
        if container_id.is_empty()
            || container_id.len() > 128
            || !container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(CoworkError::invalid(
                "container_id",
                "1 to 128 characters of letters, digits, `-`, `_` and `.`",
            ));
        }
        let row = self.get(caller, id).await?;
        row.state
            .after(Transition::Touch)
            .map_err(CoworkError::FailedPrecondition)?;
        if let Some(current) = &row.container_id
            && current != container_id
        {
            return Err(CoworkError::FailedPrecondition(format!(
                "container `{current}` is attached; detach it first"
            )));
        }
        let copied = self.materialize(&row).await?;
        self.inner
            .store
            .set_container(&caller.tenant, id, Some(container_id), Utc::now())
            .await?;
        let mut a = self.record(caller, &row, "container.attach", "ok");
        a.detail = json!({ "container_id": container_id, "materialized": copied });
        self.audit(vec![a]).await;
        self.inspect(caller, id).await
    }

    /// Gives the work tree to the step containers' user (`sandbox.container_user`) when this
    /// process runs as root, so commands in the container can write where they work; the
    /// files are cowork's own copies (hard links to the source were broken by
    /// [`Self::materialize`] first). As any other user nothing changes: cowork and the
    /// containers must then share the user, as the images do.
    pub(crate) async fn hand_to_containers(&self, row: &SandboxRow) -> Result<(), CoworkError> {
        let Some((uid, gid)) = self.inner.settings.container_owner() else {
            return Ok(());
        };
        let work = PathBuf::from(&row.work_path);
        let w = work.clone();
        let changed = tokio::task::spawn_blocking(move || tree::hand_over(&w, uid, gid))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| CoworkError::io("hand the sandbox to the container user", e))?;
        if changed.is_empty() {
            return Ok(());
        }
        // The chown moved the ctimes of the files it touched: record them where the file is
        // still the baseline's own (same inode, size and mtime), so the stat pre-check keeps
        // sparing them a hash.
        let mut baseline = self.baseline(row.sandbox_id).await?;
        let (changed, refreshed, baseline) = tokio::task::spawn_blocking(move || {
            let refreshed = refresh_ctimes(&work, &changed, &mut baseline);
            (changed.len(), refreshed, baseline)
        })
        .await
        .map_err(blocking_failed)?;
        if refreshed > 0 {
            let body = serde_json::to_string(&baseline)
                .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
            self.inner
                .store
                .put_manifest(row.sandbox_id, "baseline", &body)
                .await?;
        }
        tracing::debug!(sandbox = %row.sandbox_id, changed, refreshed, uid, gid, "work tree handed to the container user");
        Ok(())
    }

    /// Copies the work files still hard-linked to the source, so a container that writes in
    /// place cannot reach the source; returns how many were copied.
    async fn materialize(&self, row: &SandboxRow) -> Result<u64, CoworkError> {
        let id = row.sandbox_id;
        let mut baseline = self.baseline(id).await?;
        let work = PathBuf::from(&row.work_path);
        let (copied, baseline) = tokio::task::spawn_blocking(move || {
            tree::materialize(&work, &baseline).map(|copied| {
                refresh_inodes(&work, &mut baseline);
                (copied, baseline)
            })
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| CoworkError::io("materialize", e))?;
        if copied > 0 {
            let body = serde_json::to_string(&baseline)
                .map_err(|e| CoworkError::Corrupt(e.to_string()))?;
            self.inner.store.put_manifest(id, "baseline", &body).await?;
        }
        Ok(copied)
    }

    /// Readies an active sandbox to be mounted into containers (the executor mounts one
    /// sandbox into every step's container): hard-linked files are copied first, and the
    /// sandbox is watched by this replica. Idempotent.
    pub async fn prepare_for_containers(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<SandboxRow, CoworkError> {
        let row = self.get(caller, id).await?;
        row.state
            .after(Transition::Touch)
            .map_err(CoworkError::FailedPrecondition)?;
        let copied = self.materialize(&row).await?;
        self.hand_to_containers(&row).await?;
        if row.live_instance != Some(self.inner.instance) {
            self.inner.watcher.watch(id, &self.dir_of(&row), false);
            self.inner
                .store
                .set_live(&caller.tenant, id, self.inner.instance, Utc::now())
                .await?;
        }
        if copied > 0 {
            let mut a = self.record(caller, &row, "sandbox.prepare", "ok");
            a.detail = json!({ "materialized": copied });
            self.audit(vec![a]).await;
        }
        Ok(row)
    }

    /// Clears the attached container.
    pub async fn detach_container(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<SandboxView, CoworkError> {
        let row = self.get(caller, id).await?;
        let Some(current) = row.container_id.clone() else {
            return Err(CoworkError::FailedPrecondition(
                "no container is attached".into(),
            ));
        };
        self.inner
            .store
            .set_container(&caller.tenant, id, None, Utc::now())
            .await?;
        let mut a = self.record(caller, &row, "container.detach", "ok");
        a.detail = json!({ "container_id": current });
        self.audit(vec![a]).await;
        self.inspect(caller, id).await
    }

    /// Records the A2A task working in the sandbox and its state.
    pub async fn update_a2a_task(
        &self,
        caller: &Caller,
        id: Uuid,
        task_id: &str,
        state: &str,
    ) -> Result<SandboxView, CoworkError> {
        if task_id.is_empty() || task_id.len() > 256 || task_id.chars().any(char::is_control) {
            return Err(CoworkError::invalid(
                "task_id",
                "1 to 256 printable characters",
            ));
        }
        let state = a2a_task_state(state).ok_or_else(|| {
            CoworkError::invalid(
                "state",
                "an A2A task state: submitted, working, input-required, auth-required, completed, canceled, failed, rejected",
            )
        })?;
        let row = self.get(caller, id).await?;
        if matches!(row.state, SandboxState::Expired | SandboxState::Discarded) {
            return Err(CoworkError::FailedPrecondition(format!(
                "the sandbox is {}",
                row.state.as_str()
            )));
        }
        self.inner
            .store
            .set_a2a_task(&caller.tenant, id, task_id, state, Utc::now())
            .await?;
        let mut a = self.record(caller, &row, "a2a.task_update", "ok");
        a.detail = json!({ "task_id": task_id, "state": state });
        self.audit(vec![a]).await;
        self.inspect(caller, id).await
    }

    /// The caller's active sandboxes that no live replica watches (after a restart).
    pub async fn pending(
        &self,
        caller: &Caller,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SandboxView>, CoworkError> {
        let rows = self
            .inner
            .store
            .pending_resume(&caller.tenant, self.inner.instance, after, limit)
            .await?;
        Ok(rows.into_iter().map(|r| self.view(r)).collect())
    }

    /// Takes a sandbox back after a restart: checks its work copy is there and watches it
    /// again (its next diff walks the tree once).
    pub async fn resume(&self, caller: &Caller, id: Uuid) -> Result<SandboxView, CoworkError> {
        let row = self.get(caller, id).await?;
        row.state
            .after(Transition::Touch)
            .map_err(CoworkError::FailedPrecondition)?;
        let work = PathBuf::from(&row.work_path);
        if !tokio::fs::try_exists(&work).await.unwrap_or(false) {
            return Err(CoworkError::FailedPrecondition(format!(
                "the work copy {} is gone; discard the sandbox",
                work.display()
            )));
        }
        self.inner.watcher.watch(id, &self.dir_of(&row), false);
        self.inner
            .store
            .set_live(&caller.tenant, id, self.inner.instance, Utc::now())
            .await?;
        let mut a = self.record(caller, &row, "sandbox.resume", "ok");
        a.detail = json!({ "instance": self.inner.instance });
        self.audit(vec![a]).await;
        self.inspect(caller, id).await
    }

    /// The caller's audit entries.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, CoworkError> {
        self.inner.store.audit(&caller.tenant, filter).await
    }

    /// Expires every sandbox past its time and removes its directory; returns how many.
    pub async fn cleanup_expired(&self, now: DateTime<Utc>) -> Result<u64, CoworkError> {
        let mut done = 0;
        loop {
            let rows = self.inner.store.expired(now, 100).await?;
            if rows.is_empty() {
                break;
            }
            let mut progressed = false;
            for row in rows {
                if self
                    .inner
                    .store
                    .transition(
                        &row.tenant,
                        row.sandbox_id,
                        row.state,
                        SandboxState::Expired,
                        Utc::now(),
                    )
                    .await?
                {
                    progressed = true;
                    self.remove_dir(&row).await;
                    let system = Caller {
                        tenant: row.tenant.clone(),
                        actor: "system:cleanup".into(),
                    };
                    let mut a = self.record(&system, &row, "sandbox.expire", "ok");
                    a.detail = json!({ "was": row.state.as_str(), "expires_at": row.expires_at });
                    self.audit(vec![a]).await;
                    ::metrics::counter!(metrics::EXPIRED).increment(1);
                    done += 1;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(done)
    }

    /// Sets the sandboxes-by-state gauge from the database.
    pub async fn refresh_gauges(&self) -> Result<(), CoworkError> {
        let counts: BTreeMap<String, i64> = self
            .inner
            .store
            .count_by_state()
            .await?
            .into_iter()
            .collect();
        for state in SandboxState::ALL {
            let n = counts.get(state.as_str()).copied().unwrap_or(0);
            ::metrics::gauge!(metrics::SANDBOXES, "state" => state.as_str()).set(n as f64);
        }
        Ok(())
    }

    /// The cleanup job: expires sandboxes and refreshes the gauges every
    /// `sandbox.cleanup_interval_secs` until `shutdown`.
    pub async fn run_cleanup(self, shutdown: tokio_util::sync::CancellationToken) {
        let every = std::time::Duration::from_secs(self.inner.settings.cleanup_interval_secs);
        loop {
            match self.cleanup_expired(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired sandboxes cleaned up"),
                Err(error) => tracing::warn!(%error, "sandbox cleanup failed"),
            }
            if let Err(error) = self.refresh_gauges().await {
                tracing::warn!(%error, "sandbox gauges not refreshed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Updates the inode of every entry whose work file was replaced by `materialize`.
/// Records the ctime of each of `paths` (under `work`) whose baseline entry still matches it by
/// inode, size and mtime; returns how many entries changed.
fn refresh_ctimes(work: &Path, paths: &[PathBuf], baseline: &mut Manifest) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut refreshed = 0;
    for path in paths {
        let Some(rel) = path.strip_prefix(work).ok().and_then(Path::to_str) else {
            continue;
        };
        let (Some(e), Ok(m)) = (
            baseline.entries.get_mut(rel),
            std::fs::symlink_metadata(path),
        ) else {
            continue;
        };
        if e.ino == m.ino() && e.size == m.len() && e.mtime_ns == tree::mtime_ns(&m) {
            e.ctime_ns = tree::ctime_ns(&m);
            refreshed += 1;
        }
    }
    refreshed
}

fn refresh_inodes(work: &Path, baseline: &mut Manifest) {
    use std::os::unix::fs::MetadataExt;
    for (rel, e) in baseline.entries.iter_mut() {
        if e.copy != CopyKind::Hardlink {
            continue;
        }
        if let Ok(m) = std::fs::symlink_metadata(work.join(rel))
            && m.ino() != e.ino
        {
            e.ino = m.ino();
            e.mtime_ns = tree::mtime_ns(&m);
            e.ctime_ns = tree::ctime_ns(&m);
            e.copy = CopyKind::Copy;
        }
    }
}

/// The A2A v1.0 task state for `s` (`working` or `TASK_STATE_WORKING`), in its ProtoJSON form.
pub fn a2a_task_state(s: &str) -> Option<&'static str> {
    const STATES: [(&str, &str); 8] = [
        ("submitted", "TASK_STATE_SUBMITTED"),
        ("working", "TASK_STATE_WORKING"),
        ("input-required", "TASK_STATE_INPUT_REQUIRED"),
        ("auth-required", "TASK_STATE_AUTH_REQUIRED"),
        ("completed", "TASK_STATE_COMPLETED"),
        ("canceled", "TASK_STATE_CANCELED"),
        ("failed", "TASK_STATE_FAILED"),
        ("rejected", "TASK_STATE_REJECTED"),
    ];
    STATES
        .iter()
        .find(|(short, long)| *short == s || *long == s)
        .map(|(_, long)| *long)
}

/// Backs up and writes the changes into the source (blocking). On failure, what was already
/// written is restored from the backup before the error returns.
fn apply_blocking(
    sandbox_dir: &Path,
    work: &Path,
    source: &Path,
    changes: &[FileChange],
) -> io::Result<Vec<AppliedChange>> {
    let src = Beneath::open(source)?;
    let backup = sandbox_dir.join("backup");
    tree::remove_tree(&backup)?;
    std::fs::create_dir_all(&backup)?;
    // 1. backup every file the apply replaces or removes
    for c in changes {
        if c.change == ChangeKind::Added {
            continue;
        }
        let dest = backup.join(&c.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let req = parse_request(&c.path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let walk = src
            .resolve(&req, false)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let located = walk
            .located
            .filter(|_| !walk.resolution.escaped)
            .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "outside the source"))?;
        if c.kind == EntryKind::Symlink {
            let name = located.name.as_deref().unwrap_or_default();
            let target =
                rustix::fs::readlinkat(&located.dir, name, Vec::new()).map_err(io::Error::from)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::new(&*target.to_string_lossy()), &dest)?;
        } else {
            let mut from = located.open_read()?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&from.metadata()?.permissions());
            let mut to = std::fs::File::create(&dest)?;
            io::copy(&mut from, &mut to)?;
            to.sync_all()?;
            to.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
    }
    // 2. write
    let mut done: Vec<AppliedChange> = Vec::new();
    for c in changes {
        let result = match c.change {
            ChangeKind::Added | ChangeKind::Modified => {
                tree::install(&work.join(&c.path), &src, &c.path).map(Some)
            }
            ChangeKind::Deleted => tree::remove(&src, &c.path).map(|()| None),
        };
        match result {
            Ok(after) => done.push(AppliedChange {
                path: c.path.clone(),
                change: c.change,
                sha256_before: c.sha256_before.clone(),
                sha256_after: after,
            }),
            Err(e) => {
                for d in done.iter().rev() {
                    let undo = match d.change {
                        ChangeKind::Added => tree::remove(&src, &d.path),
                        _ => tree::install(&backup.join(&d.path), &src, &d.path).map(|_| ()),
                    };
                    if let Err(error) = undo {
                        tracing::error!(%error, path = %d.path, "restore after a failed apply failed");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}
