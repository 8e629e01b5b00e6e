//! The permission pipeline at the edge: the single gate every agent file operation (read,
//! write, delete, list, execute) goes through.
//!
//! [`PermissionGate`] gathers the facts at use time (the sandbox row, the request resolved
//! beneath the sandbox's work directory by descriptor, the session's committed bytes), lets
//! [`crate::domain::permission::Policy::decide`] run the seven stages, audits and counts every
//! denial with the stage that denied, and then performs the operation through the descriptors
//! the check produced (see [`crate::fs::beneath`] for how that closes the time-of-check/
//! time-of-use gap). Writes are atomic (temporary file and rename, which also breaks a hard link
//! to the source: copy-on-write), and the session's byte budget is charged when a write commits.
//! The executor, the built-in agent's tools and the A2A bridge call this; nothing else writes in
//! a sandbox.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::path::{parse_request, relative_to};
use crate::domain::permission::{
    Denial, Operation, Request, SandboxFacts, Stage, Subject, TargetKind,
};
use crate::domain::state::SandboxState;
use crate::error::CoworkError;
use crate::fs::beneath::{Beneath, ListedEntry, Located, WriteError};
use crate::metrics;
use crate::sandbox::StagingSandboxes;
use crate::store::{AuditRecord, SandboxRow, printable};

pub mod window;

/// Who performs an operation: an agent of a session of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// The tenant of the session.
    pub tenant: String,
    /// The session.
    pub session_id: Uuid,
    /// The agent's name (capabilities are configured per name).
    pub agent: String,
}

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteOutcome {
    /// Path relative to the work directory.
    pub path: String,
    /// Bytes written (and charged).
    pub bytes: u64,
    /// SHA-256 of what was there before, if anything.
    pub sha256_before: Option<String>,
    /// SHA-256 written.
    pub sha256_after: String,
}

/// A file the executor may run in the session's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecTarget {
    /// Path relative to the work directory (the container's mount point joins it).
    pub path: String,
    /// Path on the host.
    pub host_path: PathBuf,
}

/// Where an agent file operation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A tool call the gate performs itself (the built-in agent, the A2A bridge).
    Tool,
    /// A change a command in the step's container made to the mounted work copy, checked
    /// after the command (see [`window`]).
    Container,
}

impl Origin {
    /// Stable name in audit records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Tool => "tool",
            Origin::Container => "container",
        }
    }
}

/// The pipeline gate over a replica's sandboxes.
#[derive(Clone)]
pub struct PermissionGate {
    sandboxes: StagingSandboxes,
}

struct Permitted {
    row: SandboxRow,
    located: Located,
    kind: TargetKind,
    rel: String,
}

impl PermissionGate {
    pub(crate) fn new(sandboxes: StagingSandboxes) -> Self {
        PermissionGate { sandboxes }
    }

    async fn deny(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        op: Operation,
        path: &str,
        denial: Denial,
    ) -> CoworkError {
        self.deny_from(Origin::Tool, agent, sandbox_id, op, path, denial)
            .await
    }

    async fn deny_from(
        &self,
        origin: Origin,
        agent: &AgentContext,
        sandbox_id: Uuid,
        op: Operation,
        path: &str,
        denial: Denial,
    ) -> CoworkError {
        ::metrics::counter!(metrics::DENIALS, "stage" => denial.stage.as_str()).increment(1);
        let mut a = AuditRecord::new(&agent.tenant, &agent.agent, "permission.denied", "denied");
        a.sandbox_id = Some(sandbox_id);
        a.session_id = Some(agent.session_id);
        a.path = Some(printable(path));
        a.stage = Some(denial.stage.as_str().to_owned());
        a.detail = json!({
            "operation": op.as_str(), "reason": denial.reason, "origin": origin.as_str(),
        });
        if let Err(error) = self.sandboxes.inner().store.append_audit(&[a]).await {
            tracing::error!(%error, "audit append failed");
        }
        tracing::warn!(
            target: "security",
            stage = denial.stage.as_str(),
            operation = op.as_str(),
            origin = origin.as_str(),
            agent = %agent.agent,
            sandbox = %sandbox_id,
            "agent file operation denied"
        );
        CoworkError::Denied {
            stage: denial.stage,
            op: op.as_str().to_owned(),
            path: printable(path),
            reason: denial.reason,
        }
    }

    /// Runs the seven stages for `op` on `path` in sandbox `sandbox_id`.
    async fn check(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        op: Operation,
        path: &str,
        write_bytes: Option<u64>,
    ) -> Result<Permitted, CoworkError> {
        self.check_from(Origin::Tool, agent, sandbox_id, op, path, write_bytes)
            .await
    }

    /// [`Self::check`] for an operation of `origin`.
    async fn check_from(
        &self,
        origin: Origin,
        agent: &AgentContext,
        sandbox_id: Uuid,
        op: Operation,
        path: &str,
        write_bytes: Option<u64>,
    ) -> Result<Permitted, CoworkError> {
        let inner = self.sandboxes.inner();
        // Without a sandbox of the agent's own tenant there is no root to resolve against:
        // isolation refuses before anything touches the filesystem.
        let Some(row) = inner.store.get(&agent.tenant, sandbox_id).await? else {
            let d = Denial {
                stage: Stage::SandboxIsolation,
                reason: "no such sandbox for the agent's tenant".into(),
            };
            return Err(self.deny_from(origin, agent, sandbox_id, op, path, d).await);
        };
        let charged = if op == Operation::Write {
            inner
                .store
                .session_charged(&agent.tenant, agent.session_id)
                .await?
        } else {
            0
        };
        let root = PathBuf::from(&row.work_path);
        let raw = path.to_owned();
        let follow_final = op != Operation::Delete;
        let walked = tokio::task::spawn_blocking(move || {
            let parsed = parse_request(&raw);
            let requested = parsed.as_ref().ok().map(|p| p.to_absolute(&root));
            let walk = match &parsed {
                Err(e) => Err(e.to_string()),
                Ok(p) => Beneath::open(&root)
                    .map_err(|e| format!("cannot open the sandbox: {e}"))
                    .and_then(|b| b.resolve(p, follow_final)),
            };
            (requested, walk)
        })
        .await
        .map_err(|e| CoworkError::io("permission check", std::io::Error::other(e)))?;
        let (requested, walk) = walked;
        let (resolution, located) = match walk {
            Ok(w) => (Ok(w.resolution), w.located),
            Err(reason) => (Err(reason), None),
        };
        let root = PathBuf::from(&row.work_path);
        let req = Request {
            op,
            requested: requested.as_deref(),
            resolution: resolution.clone(),
            write_bytes,
            session_charged: charged,
        };
        let decision = inner.policy.decide(
            &req,
            &Subject {
                tenant: &agent.tenant,
                session_id: agent.session_id,
                agent: &agent.agent,
            },
            &SandboxFacts {
                tenant: &row.tenant,
                session_id: row.session_id,
                open: row.state == SandboxState::Active,
                root: &root,
            },
        );
        if let Err(d) = decision {
            return Err(self.deny_from(origin, agent, sandbox_id, op, path, d).await);
        }
        let (Ok(resolution), Some(located)) = (resolution, located) else {
            return Err(CoworkError::Corrupt(
                "an allowed request without a location".into(),
            ));
        };
        ::metrics::counter!(metrics::ALLOWED, "operation" => op.as_str()).increment(1);
        let rel = relative_to(&resolution.canonical, &root).unwrap_or_default();
        Ok(Permitted {
            row,
            located,
            kind: resolution.kind,
            rel,
        })
    }

    fn audit_ok(&self, agent: &AgentContext, row: &SandboxRow, action: &str) -> AuditRecord {
        let mut a = AuditRecord::new(&agent.tenant, &agent.agent, action, "ok");
        a.sandbox_id = Some(row.sandbox_id);
        a.session_id = Some(agent.session_id);
        a
    }

    /// Reads a file (at most `permissions.max_file_bytes`).
    pub async fn read(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        path: &str,
    ) -> Result<Vec<u8>, CoworkError> {
        let p = self
            .check(agent, sandbox_id, Operation::Read, path, None)
            .await?;
        match p.kind {
            TargetKind::File => {}
            TargetKind::Missing => return Err(CoworkError::FileNotFound(printable(path))),
            _ => return Err(CoworkError::invalid("path", "not a regular file")),
        }
        let limit = self.sandboxes.inner().policy.max_file_bytes;
        tokio::task::spawn_blocking(move || p.located.read(limit))
            .await
            .map_err(|e| CoworkError::io("read", std::io::Error::other(e)))?
            .map_err(|e| CoworkError::io("read", e))
    }

    /// Creates or replaces a file atomically; charges the session when it commits.
    pub async fn write(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<WriteOutcome, CoworkError> {
        let len = bytes.len() as u64;
        let p = self
            .check(agent, sandbox_id, Operation::Write, path, Some(len))
            .await?;
        if matches!(p.kind, TargetKind::Directory | TargetKind::Other) {
            return Err(CoworkError::invalid("path", "not a regular file"));
        }
        let inner = self.sandboxes.inner().clone();
        let handle = tokio::runtime::Handle::current();
        let (tenant, session) = (agent.tenant.clone(), agent.session_id);
        let limit = inner.policy.max_session_bytes;
        let store = inner.store.clone();
        let was_file = p.kind == TargetKind::File;
        let Permitted {
            row, located, rel, ..
        } = p;
        let result = tokio::task::spawn_blocking(move || {
            let before = if was_file {
                located
                    .open_read()
                    .and_then(|mut f| crate::fs::tree::hash_reader(&mut f))
                    .ok()
            } else {
                None
            };
            let after = hex::encode(Sha256::digest(&bytes));
            let written = located.write_atomic(&bytes, || {
                match handle.block_on(store.charge(&tenant, session, len, limit)) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            });
            (before, after, written)
        })
        .await
        .map_err(|e| CoworkError::io("write", std::io::Error::other(e)))?;
        let (before, after, written) = result;
        match written {
            Ok(()) => {}
            Err(WriteError::Io(e)) => return Err(CoworkError::io("write", e)),
            Err(WriteError::Refused(Some(e))) => return Err(e),
            Err(WriteError::Refused(None)) => {
                let d = Denial {
                    stage: Stage::SizeLimit,
                    reason: format!(
                        "committing {len} bytes would exceed the session's budget of {limit} bytes"
                    ),
                };
                return Err(self
                    .deny(agent, sandbox_id, Operation::Write, path, d)
                    .await);
            }
        }
        inner.watcher.mark(sandbox_id, &rel);
        self.settle(sandbox_id, &row.work_path, &rel).await;
        let mut a = self.audit_ok(agent, &row, "file.write");
        a.path = Some(rel.clone());
        a.sha256_before = before.clone();
        a.sha256_after = Some(after.clone());
        a.detail = json!({ "bytes": len });
        if let Err(error) = inner.store.append_audit(&[a]).await {
            tracing::error!(%error, "audit append failed");
        }
        Ok(WriteOutcome {
            path: rel,
            bytes: len,
            sha256_before: before,
            sha256_after: after,
        })
    }

    /// Deletes a file or a symlink (never what the link points at).
    pub async fn delete(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        path: &str,
    ) -> Result<(), CoworkError> {
        let p = self
            .check(agent, sandbox_id, Operation::Delete, path, None)
            .await?;
        match p.kind {
            TargetKind::File | TargetKind::Symlink => {}
            TargetKind::Missing => return Err(CoworkError::FileNotFound(printable(path))),
            _ => {
                return Err(CoworkError::invalid(
                    "path",
                    "delete removes files, not directories",
                ));
            }
        }
        let Permitted {
            row, located, rel, ..
        } = p;
        let before = tokio::task::spawn_blocking(move || {
            let before = located
                .open_read()
                .and_then(|mut f| crate::fs::tree::hash_reader(&mut f))
                .ok();
            located.delete().map(|()| before)
        })
        .await
        .map_err(|e| CoworkError::io("delete", std::io::Error::other(e)))?
        .map_err(|e| CoworkError::io("delete", e))?;
        let inner = self.sandboxes.inner();
        inner.watcher.mark(sandbox_id, &rel);
        self.settle(sandbox_id, &row.work_path, &rel).await;
        let mut a = self.audit_ok(agent, &row, "file.delete");
        a.path = Some(rel);
        a.sha256_before = before;
        if let Err(error) = inner.store.append_audit(&[a]).await {
            tracing::error!(%error, "audit append failed");
        }
        Ok(())
    }

    /// Lists a directory (`.` is the work directory).
    pub async fn list(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        path: &str,
    ) -> Result<Vec<ListedEntry>, CoworkError> {
        let p = self
            .check(agent, sandbox_id, Operation::List, path, None)
            .await?;
        match p.kind {
            TargetKind::Directory => {}
            TargetKind::Missing => return Err(CoworkError::FileNotFound(printable(path))),
            _ => return Err(CoworkError::invalid("path", "not a directory")),
        }
        tokio::task::spawn_blocking(move || p.located.list())
            .await
            .map_err(|e| CoworkError::io("list", std::io::Error::other(e)))?
            .map_err(|e| CoworkError::io("list", e))
    }

    /// Clears a file for execution in the session's container and says where it is.
    pub async fn execute(
        &self,
        agent: &AgentContext,
        sandbox_id: Uuid,
        path: &str,
    ) -> Result<ExecTarget, CoworkError> {
        let p = self
            .check(agent, sandbox_id, Operation::Execute, path, None)
            .await?;
        match p.kind {
            TargetKind::File => {}
            TargetKind::Missing => return Err(CoworkError::FileNotFound(printable(path))),
            _ => return Err(CoworkError::invalid("path", "not a regular file")),
        }
        let host_path = PathBuf::from(&p.row.work_path).join(&p.rel);
        let mut a = self.audit_ok(agent, &p.row, "file.execute");
        a.path = Some(p.rel.clone());
        if let Err(error) = self.sandboxes.inner().store.append_audit(&[a]).await {
            tracing::error!(%error, "audit append failed");
        }
        Ok(ExecTarget {
            path: p.rel,
            host_path,
        })
    }
}
