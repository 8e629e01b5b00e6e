//! The permission pipeline's decision: seven stages, always in this order (issue 7, item 6):
//!
//! 1. `normalize`: the request's text parses ([`crate::domain::path::parse_request`]) and the
//!    edge resolved every symlink of it beneath the sandbox ([`Resolution`]);
//! 2. `blocked_prefix`: neither the requested nor the resolved path lies under a blocked prefix
//!    (`/etc`, `/var`, `/usr`, `/System`, ...);
//! 3. `workspace_boundary`: the resolved path lies within the sandbox's work directory, compared
//!    on path components, and resolution never left it;
//! 4. `extension`: neither the requested name's extension nor the resolved target's is blocked
//!    (or outside the allow-list when there is one);
//! 5. `capability`: the agent holds the capability the operation needs (`list` needs `read`);
//! 6. `size_limit`: a write fits the per-file limit and the session's remaining budget (the
//!    budget is charged when the write commits, at the edge);
//! 7. `sandbox_isolation`: the sandbox is open and belongs to the agent's own tenant and session.
//!
//! The first stage that fails is the denial, audited with its name. This module decides only;
//! it never touches the filesystem, so the edge must hand it facts gathered at use time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::PermissionSection;
use crate::domain::path::{extension_of, is_within};

/// What an agent may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Read files and list directories.
    Read,
    /// Create and overwrite files.
    Write,
    /// Delete files.
    Delete,
    /// Run a file (in the session's container).
    Execute,
}

impl Capability {
    /// `read`, `write`, `delete` or `execute`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::Delete => "delete",
            Capability::Execute => "execute",
        }
    }
}

/// An agent file operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Read a file.
    Read,
    /// Create or replace a file.
    Write,
    /// Delete a file.
    Delete,
    /// List a directory.
    List,
    /// Run a file.
    Execute,
}

impl Operation {
    /// The capability the operation needs.
    pub const fn capability(self) -> Capability {
        match self {
            Operation::Read | Operation::List => Capability::Read,
            Operation::Write => Capability::Write,
            Operation::Delete => Capability::Delete,
            Operation::Execute => Capability::Execute,
        }
    }

    /// `read`, `write`, `delete`, `list` or `execute`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Execute => "execute",
        }
    }
}

/// A stage of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Syntax and symlink resolution.
    Normalize,
    /// Blocked absolute prefixes.
    BlockedPrefix,
    /// Inside the sandbox's work directory.
    WorkspaceBoundary,
    /// Blocked or not-allowed extensions.
    Extension,
    /// The agent's capabilities.
    Capability,
    /// Per-file and per-session byte limits.
    SizeLimit,
    /// The agent's own tenant, session and an open sandbox.
    SandboxIsolation,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Normalize,
        Stage::BlockedPrefix,
        Stage::WorkspaceBoundary,
        Stage::Extension,
        Stage::Capability,
        Stage::SizeLimit,
        Stage::SandboxIsolation,
    ];

    /// The stable name (metrics label, audit field).
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Normalize => "normalize",
            Stage::BlockedPrefix => "blocked_prefix",
            Stage::WorkspaceBoundary => "workspace_boundary",
            Stage::Extension => "extension",
            Stage::Capability => "capability",
            Stage::SizeLimit => "size_limit",
            Stage::SandboxIsolation => "sandbox_isolation",
        }
    }
}

/// Why an operation was refused, and by which stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The stage that refused.
    pub stage: Stage,
    /// What it found.
    pub reason: String,
}

impl Denial {
    fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Denial {
            stage,
            reason: reason.into(),
        }
    }
}

/// What the request's target is, as resolved at use time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Nothing there (yet).
    Missing,
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symlink left unfollowed (the final component of a delete).
    Symlink,
    /// A device, socket or pipe.
    Other,
}

/// What the edge found when it resolved a request beneath the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The absolute path with every symlink inside the sandbox resolved; once resolution
    /// leaves the sandbox the rest is lexical (nothing outside is touched).
    pub canonical: PathBuf,
    /// True when resolution left the sandbox (an absolute path elsewhere, a symlink out).
    pub escaped: bool,
    /// What is there.
    pub kind: TargetKind,
}

/// Who asks: an agent of a session of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The agent's tenant.
    pub tenant: &'a str,
    /// The agent's session.
    pub session_id: Uuid,
    /// The agent's name (capabilities are per agent).
    pub agent: &'a str,
}

/// The sandbox an operation targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFacts<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// Its session.
    pub session_id: Uuid,
    /// True while it accepts agent operations (`active`).
    pub open: bool,
    /// Its work directory (canonical).
    pub root: &'a Path,
}

/// One operation to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The operation.
    pub op: Operation,
    /// The requested path as absolute text (relative ones joined to the root), for the
    /// blocked-prefix stage; `None` when the text did not parse.
    pub requested: Option<&'a Path>,
    /// The resolution, or why normalisation failed.
    pub resolution: Result<Resolution, String>,
    /// Bytes a write would store.
    pub write_bytes: Option<u64>,
    /// Bytes the session has committed so far.
    pub session_charged: u64,
}

/// The pipeline's rules, from `[permissions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    blocked_prefixes: Vec<PathBuf>,
    blocked_extensions: BTreeSet<String>,
    allowed_extensions: BTreeSet<String>,
    default_capabilities: BTreeSet<Capability>,
    agents: BTreeMap<String, BTreeSet<Capability>>,
    /// Largest single write.
    pub max_file_bytes: u64,
    /// Most bytes per session.
    pub max_session_bytes: u64,
}

impl Policy {
    /// The policy `[permissions]` describes.
    pub fn from_section(s: &PermissionSection) -> Policy {
        let lower = |v: &[String]| v.iter().map(|e| e.to_ascii_lowercase()).collect();
        Policy {
            blocked_prefixes: s.blocked_prefixes.iter().map(PathBuf::from).collect(),
            blocked_extensions: lower(&s.blocked_extensions),
            allowed_extensions: lower(&s.allowed_extensions),
            default_capabilities: s.default_capabilities.iter().copied().collect(),
            agents: s
                .agents
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
                .collect(),
            max_file_bytes: s.max_file_bytes,
            max_session_bytes: s.max_session_bytes,
        }
    }

    /// The capabilities `agent` holds.
    pub fn capabilities_of(&self, agent: &str) -> &BTreeSet<Capability> {
        self.agents.get(agent).unwrap_or(&self.default_capabilities)
    }

    /// The blocked prefix `path` lies under, if any.
    pub fn blocked_prefix_of(&self, path: &Path) -> Option<&Path> {
        self.blocked_prefixes
            .iter()
            .find(|p| is_within(path, p))
            .map(PathBuf::as_path)
    }

    fn extension_denial(&self, which: &str, name: &str) -> Option<Denial> {
        let ext = extension_of(name)?;
        if self.blocked_extensions.contains(&ext) {
            return Some(Denial::new(
                Stage::Extension,
                format!("{which} has the blocked extension `.{ext}`"),
            ));
        }
        if !self.allowed_extensions.is_empty() && !self.allowed_extensions.contains(&ext) {
            return Some(Denial::new(
                Stage::Extension,
                format!("{which} has the extension `.{ext}`, which is not allowed"),
            ));
        }
        None
    }

    /// Runs the seven stages in order; the first that refuses is the answer.
    pub fn decide(
        &self,
        req: &Request<'_>,
        subject: &Subject<'_>,
        sandbox: &SandboxFacts<'_>,
    ) -> Result<(), Denial> {
        // 1. normalize
        let resolution = match &req.resolution {
            Ok(r) => r,
            Err(reason) => return Err(Denial::new(Stage::Normalize, reason.clone())),
        };
        let Some(requested) = req.requested else {
            return Err(Denial::new(Stage::Normalize, "path did not parse"));
        };
        // 2. blocked prefixes, on what was asked and on where it leads
        for path in [requested, resolution.canonical.as_path()] {
            if let Some(prefix) = self.blocked_prefix_of(path) {
                return Err(Denial::new(
                    Stage::BlockedPrefix,
                    format!(
                        "{} is under the blocked prefix {}",
                        path.display(),
                        prefix.display()
                    ),
                ));
            }
        }
        // 3. workspace boundary, on components
        if resolution.escaped || !is_within(&resolution.canonical, sandbox.root) {
            return Err(Denial::new(
                Stage::WorkspaceBoundary,
                format!(
                    "{} is outside the sandbox's work directory",
                    resolution.canonical.display()
                ),
            ));
        }
        // 4. extensions: the name asked for and the target it resolves to
        if resolution.canonical != sandbox.root {
            let asked = requested.file_name().map(|n| n.to_string_lossy());
            if let Some(d) = asked.and_then(|n| self.extension_denial("the requested name", &n)) {
                return Err(d);
            }
            let target = resolution
                .canonical
                .file_name()
                .map(|n| n.to_string_lossy());
            if let Some(d) = target.and_then(|n| self.extension_denial("the resolved target", &n)) {
                return Err(d);
            }
        }
        // 5. capability
        let needed = req.op.capability();
        if !self.capabilities_of(subject.agent).contains(&needed) {
            return Err(Denial::new(
                Stage::Capability,
                format!(
                    "agent `{}` lacks the `{}` capability for {}",
                    subject.agent,
                    needed.as_str(),
                    req.op.as_str()
                ),
            ));
        }
        // 6. size limits (the session budget is charged at commit)
        if req.op == Operation::Write {
            let bytes = req.write_bytes.unwrap_or(0);
            if bytes > self.max_file_bytes {
                return Err(Denial::new(
                    Stage::SizeLimit,
                    format!(
                        "a write of {bytes} bytes exceeds the per-file limit of {} bytes",
                        self.max_file_bytes
                    ),
                ));
            }
            if req.session_charged.saturating_add(bytes) > self.max_session_bytes {
                return Err(Denial::new(
                    Stage::SizeLimit,
                    format!(
                        "a write of {bytes} bytes exceeds the session's remaining budget ({} of {} bytes used)",
                        req.session_charged, self.max_session_bytes
                    ),
                ));
            }
        }
        // 7. sandbox isolation
        if subject.tenant != sandbox.tenant || subject.session_id != sandbox.session_id {
            return Err(Denial::new(
                Stage::SandboxIsolation,
                "the sandbox belongs to another session",
            ));
        }
        if !sandbox.open {
            return Err(Denial::new(
                Stage::SandboxIsolation,
                "the sandbox is closed (applied, discarded or expired)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn policy() -> Policy {
        let mut s = PermissionSection::default();
        s.agents.insert("reader".into(), vec![Capability::Read]);
        s.max_file_bytes = 100;
        s.max_session_bytes = 150;
        Policy::from_section(&s)
    }

    const ROOT: &str = "/srv/sb/t/1/work";

    fn request<'a>(op: Operation, asked: &'a Path, canonical: &str, escaped: bool) -> Request<'a> {
        Request {
            op,
            requested: Some(asked),
            resolution: Ok(Resolution {
                canonical: PathBuf::from(canonical),
                escaped,
                kind: TargetKind::File,
            }),
            write_bytes: Some(10),
            session_charged: 0,
        }
    }

    fn decide(req: &Request<'_>, agent: &str, session: Uuid, open: bool) -> Result<(), Denial> {
        let owner = Uuid::from_u128(1);
        policy().decide(
            req,
            &Subject {
                tenant: "acme",
                session_id: session,
                agent,
            },
            &SandboxFacts {
                tenant: "acme",
                session_id: owner,
                open,
                root: Path::new(ROOT),
            },
        )
    }

    fn stage_of(r: Result<(), Denial>) -> Option<Stage> {
        r.err().map(|d| d.stage)
    }

    #[test]
    fn each_stage_denies_what_it_owns_in_order() {
        let me = Uuid::from_u128(1);
        let asked = PathBuf::from(format!("{ROOT}/a.txt"));
        let ok = request(Operation::Write, &asked, &format!("{ROOT}/a.txt"), false);
        assert_eq!(decide(&ok, "coder", me, true), Ok(()));

        let mut r = ok.clone();
        r.resolution = Err("symlink loop".into());
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::Normalize)
        );

        let etc = PathBuf::from("/etc/passwd");
        let r = request(Operation::Read, &etc, "/etc/passwd", true);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::BlockedPrefix)
        );
        // A link inside the sandbox that resolves into /etc is blocked too.
        let r = request(Operation::Read, &asked, "/etc/shadow", true);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::BlockedPrefix)
        );

        let other = PathBuf::from("/srv/sb/t/2/work/a.txt");
        let r = request(Operation::Read, &other, "/srv/sb/t/2/work/a.txt", true);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::WorkspaceBoundary)
        );
        // String-prefix lookalikes are outside.
        let r = request(Operation::Read, &asked, "/srv/sb/t/1/work2/a.txt", false);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::WorkspaceBoundary)
        );

        let exe = PathBuf::from(format!("{ROOT}/x.EXE"));
        let r = request(Operation::Write, &exe, &format!("{ROOT}/x.EXE"), false);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::Extension)
        );
        // notes.txt -> tool.dll: the target's extension counts.
        let r = request(Operation::Read, &asked, &format!("{ROOT}/tool.dll"), false);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::Extension)
        );

        assert_eq!(
            stage_of(decide(&ok, "reader", me, true)),
            Some(Stage::Capability)
        );
        let r = request(Operation::Execute, &asked, &format!("{ROOT}/a.txt"), false);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::Capability)
        );

        let mut r = ok.clone();
        r.write_bytes = Some(101);
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::SizeLimit)
        );
        let mut r = ok.clone();
        r.session_charged = 145;
        assert_eq!(
            stage_of(decide(&r, "coder", me, true)),
            Some(Stage::SizeLimit)
        );

        assert_eq!(
            stage_of(decide(&ok, "coder", Uuid::from_u128(2), true)),
            Some(Stage::SandboxIsolation)
        );
        assert_eq!(
            stage_of(decide(&ok, "coder", me, false)),
            Some(Stage::SandboxIsolation)
        );
    }

    proptest! {
        /// Whatever the resolved path, nothing outside the work directory, under a blocked
        /// prefix or with a blocked extension is ever allowed.
        #[test]
        fn nothing_outside_or_blocked_is_allowed(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("srv".to_owned()), Just("sb".to_owned()), Just("t".to_owned()),
                    Just("1".to_owned()), Just("work".to_owned()), Just("etc".to_owned()),
                    Just("a.txt".to_owned()), Just("b.exe".to_owned()), Just("work2".to_owned()),
                    "[a-z.]{1,6}",
                ],
                0..8,
            ),
            escaped in any::<bool>(),
            op in prop_oneof![
                Just(Operation::Read), Just(Operation::Write), Just(Operation::Delete),
                Just(Operation::List), Just(Operation::Execute),
            ],
        ) {
            let canonical = format!("/{}", parts.join("/"));
            let asked = PathBuf::from(&canonical);
            let r = request(op, &asked, &canonical, escaped);
            if decide(&r, "coder", Uuid::from_u128(1), true).is_ok() {
                let p = Path::new(&canonical);
                prop_assert!(!escaped);
                prop_assert!(is_within(p, Path::new(ROOT)));
                prop_assert!(policy().blocked_prefix_of(p).is_none());
                let ext = p.file_name().and_then(|n| extension_of(&n.to_string_lossy()));
                prop_assert!(ext.as_deref() != Some("exe"));
                prop_assert!(op != Operation::Execute);
            }
        }
    }
}
