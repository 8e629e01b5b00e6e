//! Where pooled containers run: one [`ContainerRuntime`] per Docker host ([`docker`]), or the
//! clearly labelled, NOT isolated fallback of local processes ([`process`]) when no Docker
//! engine answers. The pool only talks to this trait; the runtime kind is reported with every
//! claim so callers know what served them.
//!
//! Paths in requests are container paths (`/workspace/...`, `/run/secrets/...`); the process
//! runtime maps them into its sandbox directory.

pub mod docker;
pub mod image;
pub mod process;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use liquid_kit::Secret;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::domain::autoconf::HostFacts;
use crate::domain::template::Template;
use crate::error::PoolError;

/// Label on everything the project creates in Docker.
pub const OWNER_LABEL: &str = "io.liquid.owner";
/// Value of [`OWNER_LABEL`].
pub const OWNER: &str = "liquid";
/// Label naming the component that created the object.
pub const COMPONENT_LABEL: &str = "io.liquid.component";
/// Value of [`COMPONENT_LABEL`] for the pool.
pub const COMPONENT: &str = "container-pool";
/// The pool's name (`[pool] name`).
pub const POOL_LABEL: &str = "io.liquid.pool";
/// The replica (UUIDv7 of its process lifetime) that created the container.
pub const REPLICA_LABEL: &str = "io.liquid.pool.replica";
/// `<hostname>` of that replica.
pub const HOSTNAME_LABEL: &str = "io.liquid.pool.hostname";
/// `<pid>:<start time>` of that replica's process.
pub const PROCESS_LABEL: &str = "io.liquid.pool.process";
/// The template.
pub const TEMPLATE_LABEL: &str = "io.liquid.pool.template";
/// Content hash of a base or toolbox image.
pub const CONTENT_LABEL: &str = "io.liquid.content-sha256";

/// Which kind of runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Docker containers: isolated.
    Docker,
    /// Local processes: not isolated.
    Process,
}

impl RuntimeKind {
    /// `docker` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        }
    }
}

/// A container to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Its template.
    pub template: Template,
    /// Labels (the pool's own plus the template's).
    pub labels: HashMap<String, String>,
    /// A unique name.
    pub name: String,
    /// A host directory to bind at the staging mount point.
    pub staging_dir: Option<String>,
}

/// One exec.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Absolute container path of the working directory.
    pub workdir: String,
    /// Killed after this long.
    pub timeout: Duration,
    /// Written to standard input, then closed.
    pub stdin: Bytes,
    /// Read the container's memory peak and CPU time after the run.
    pub usage: bool,
}

/// A piece of an exec's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    /// From standard output.
    Stdout(Bytes),
    /// From standard error.
    Stderr(Bytes),
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ExecOutcome {
    /// Exit code (137 after a kill).
    pub exit_code: i64,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Peak memory of the container, when asked and known.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time of the container in microseconds, when asked and known.
    pub cpu_usec: Option<u64>,
    /// The container had to be restarted to stop the command (its tmpfs is empty again).
    pub restarted: bool,
    /// The command was stopped (timeout, or the caller went away) rather than exiting.
    #[serde(skip)]
    pub stopped: bool,
}

/// A container found by its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedContainer {
    /// Id.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// A container runtime on one host.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Which kind it is.
    fn kind(&self) -> RuntimeKind;
    /// The host's name.
    fn host(&self) -> &str;
    /// Answers when the engine is usable.
    async fn ping(&self) -> Result<(), PoolError>;
    /// Cores and memory of the host.
    async fn facts(&self) -> Result<HostFacts, PoolError>;
    /// Makes sure the images and networks `templates` need exist (builds the base image).
    async fn prepare(&self, templates: &[Template]) -> Result<(), PoolError>;
    /// Creates and starts a container; returns its id.
    async fn create(&self, spec: &CreateSpec) -> Result<String, PoolError>;
    /// Removes a container and its anonymous volumes (gone already is fine).
    async fn remove(&self, id: &str) -> Result<(), PoolError>;
    /// Whether the container is running.
    async fn alive(&self, id: &str) -> Result<bool, PoolError>;
    /// Freezes its processes.
    async fn pause(&self, id: &str) -> Result<(), PoolError>;
    /// Thaws them.
    async fn unpause(&self, id: &str) -> Result<(), PoolError>;
    /// Runs a command, sending output to `sink` as it comes.
    async fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: mpsc::Sender<ExecChunk>,
    ) -> Result<ExecOutcome, PoolError>;
    /// Writes secrets as files (mode 0600) into the secrets directory.
    async fn write_secrets(
        &self,
        id: &str,
        secrets: &[(String, Secret<String>)],
    ) -> Result<(), PoolError>;
    /// Removes secret files by name.
    async fn remove_secrets(&self, id: &str, names: &[String]) -> Result<(), PoolError>;
    /// Kills every process of the previous claim and empties the work dir, /tmp and the
    /// secrets; `Ok(true)` when verified empty.
    async fn reset(&self, id: &str) -> Result<bool, PoolError>;
    /// Unpacks a tar archive into a directory.
    async fn put_archive(&self, id: &str, path: &str, tar: Bytes) -> Result<(), PoolError>;
    /// A path as a tar archive.
    async fn get_archive(&self, id: &str, path: &str) -> Result<Bytes, PoolError>;
    /// Containers of the pool component, of pool `pool` (`io.liquid.pool=<pool>`) or of every
    /// pool when `None`.
    async fn list(&self, pool: Option<&str>) -> Result<Vec<ListedContainer>, PoolError>;
}

/// Checks that `path` is an absolute container path without `..` under one of `roots`.
pub fn check_container_path(path: &str, roots: &[&str]) -> Result<(), PoolError> {
    if !path.starts_with('/') || path.split('/').any(|s| s == "..") || path.contains('\0') {
        return Err(PoolError::invalid(
            "path",
            format!("`{path}` must be absolute and must not contain `..`"),
        ));
    }
    if roots
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        Ok(())
    } else {
        Err(PoolError::invalid(
            "path",
            format!("`{path}` must be under {}", roots.join(" or ")),
        ))
    }
}

/// `<pid>:<start time>` of process `pid` (field 22 of /proc/<pid>/stat), as the leak sweeps
/// compare it.
pub fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process a [`PROCESS_LABEL`] value names still runs (on this host).
pub fn process_alive(label: &str) -> bool {
    let Some(pid) = label.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    process_identity(pid).as_deref() == Some(label)
}

/// This machine's host name (for [`HOSTNAME_LABEL`]).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Cores and memory of this machine.
pub fn local_facts() -> HostFacts {
    let cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| crate::domain::autoconf::parse_meminfo_total_mib(&m))
        .unwrap_or(1024);
    HostFacts { cores, memory_mib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_stay_under_their_roots() {
        let roots = ["/workspace", "/tmp"];
        assert!(check_container_path("/workspace", &roots).is_ok());
        assert!(check_container_path("/workspace/a/b", &roots).is_ok());
        assert!(check_container_path("/tmp/x", &roots).is_ok());
        for bad in [
            "workspace",
            "/workspace/../etc",
            "/etc/passwd",
            "/workspacex",
            "/",
        ] {
            assert!(check_container_path(bad, &roots).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = process_identity(std::process::id()).unwrap();
        assert!(process_alive(&me));
        assert!(!process_alive("999999999:1"));
        assert!(!process_alive("garbage"));
        assert!(!hostname().is_empty());
        assert!(local_facts().cores >= 1);
    }
}
