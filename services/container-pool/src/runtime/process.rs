//! The fallback runtime for machines without a Docker engine (the embedded mode on a laptop):
//! each "container" is a directory with `workspace/`, `tmp/` and `secrets/` (mode 0700), and
//! commands are local processes in their own process group, started through `prlimit` (when
//! the host has it) with an address-space limit and no core dumps.
//!
//! THIS IS NOT ISOLATION: the processes run as the service's user with its view of the
//! filesystem and network. Every claim reports `runtime: process` so callers know. Container
//! paths (`/workspace/...`, `/tmp/...`, `/run/secrets/...`) are mapped into the sandbox.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use liquid_kit::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};

use super::{
    ContainerRuntime, CreateSpec, ExecChunk, ExecOutcome, ExecSpec, ListedContainer, POOL_LABEL,
    RuntimeKind,
};
use crate::config::valid_name;
use crate::domain::autoconf::HostFacts;
use crate::domain::template::{SECRETS_DIR, STAGING_DIR, Template, WORKDIR};
use crate::error::PoolError;

/// Name of the process runtime's host.
pub const PROCESS_HOST: &str = "local-process";

/// Local processes in sandbox directories under one root.
pub struct ProcessRuntime {
    root: PathBuf,
    prlimit: Option<PathBuf>,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
}

struct Sandbox {
    dir: PathBuf,
    memory_bytes: i64,
    staging: Option<PathBuf>,
    groups: Arc<std::sync::Mutex<HashSet<u32>>>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PoolError {
    let context = context.into();
    move |e| PoolError::io(context, e)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn kill_group(pgid: u32) {
    // No unsafe here (the workspace forbids it): the kill(1) utility signals the group.
    let _ = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

impl ProcessRuntime {
    /// A runtime with sandboxes under `root` (created).
    pub fn new(root: PathBuf) -> Result<Self, PoolError> {
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        Ok(ProcessRuntime {
            root,
            prlimit: find_on_path("prlimit"),
            sandboxes: Mutex::new(HashMap::new()),
        })
    }

    /// Where sandboxes live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn sandbox(
        &self,
        id: &str,
    ) -> Result<
        (
            PathBuf,
            i64,
            Option<PathBuf>,
            Arc<std::sync::Mutex<HashSet<u32>>>,
        ),
        PoolError,
    > {
        let map = self.sandboxes.lock().await;
        let s = map
            .get(id)
            .ok_or_else(|| PoolError::docker(PROCESS_HOST, format!("no sandbox {id}")))?;
        Ok((
            s.dir.clone(),
            s.memory_bytes,
            s.staging.clone(),
            s.groups.clone(),
        ))
    }

    /// Maps a container path into sandbox `dir`.
    fn map(dir: &Path, staging: Option<&Path>, path: &str) -> Result<PathBuf, PoolError> {
        let rel = |root: &str| path.strip_prefix(root).map(|r| r.trim_start_matches('/'));
        let (base, rest) = if let Some(r) = rel(WORKDIR) {
            (dir.join("workspace"), r)
        } else if let Some(r) = rel("/tmp") {
            (dir.join("tmp"), r)
        } else if let Some(r) = rel(SECRETS_DIR) {
            (dir.join("secrets"), r)
        } else if let (Some(s), Some(r)) = (staging, rel(STAGING_DIR)) {
            (s.to_path_buf(), r)
        } else {
            return Err(PoolError::invalid(
                "path",
                format!("`{path}` is outside the sandbox"),
            ));
        };
        if rest.split('/').any(|s| s == "..") {
            return Err(PoolError::invalid(
                "path",
                format!("`{path}` contains `..`"),
            ));
        }
        Ok(if rest.is_empty() {
            base
        } else {
            base.join(rest)
        })
    }

    async fn kill_all(groups: &Arc<std::sync::Mutex<HashSet<u32>>>) {
        let pgids: Vec<u32> = groups
            .lock()
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default();
        for pgid in pgids {
            kill_group(pgid).await;
        }
    }
}

#[async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn host(&self) -> &str {
        PROCESS_HOST
    }

    async fn ping(&self) -> Result<(), PoolError> {
        tokio::fs::metadata(&self.root)
            .await
            .map(|_| ())
            .map_err(io(format!("sandbox root {}", self.root.display())))
    }

    async fn facts(&self) -> Result<HostFacts, PoolError> {
        Ok(super::local_facts())
    }

    async fn prepare(&self, _templates: &[Template]) -> Result<(), PoolError> {
        Ok(())
    }

    async fn create(&self, spec: &CreateSpec) -> Result<String, PoolError> {
        let id = format!("proc-{}", uuid::Uuid::now_v7().simple());
        let dir = self.root.join(&id);
        for sub in ["workspace", "tmp", "secrets"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(io(format!("creating {}", dir.display())))?;
        }
        tokio::fs::set_permissions(dir.join("secrets"), std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io("securing the secrets directory"))?;
        let labels = serde_json::to_vec(&spec.labels)
            .map_err(|e| PoolError::io("labels", std::io::Error::other(e)))?;
        tokio::fs::write(dir.join("labels.json"), labels)
            .await
            .map_err(io("writing labels"))?;
        self.sandboxes.lock().await.insert(
            id.clone(),
            Sandbox {
                dir,
                memory_bytes: spec.template.memory_bytes,
                staging: spec.staging_dir.as_ref().map(PathBuf::from),
                groups: Arc::new(std::sync::Mutex::new(HashSet::new())),
            },
        );
        Ok(id)
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        if !id.starts_with("proc-") || id.contains('/') {
            return Ok(());
        }
        if let Some(s) = self.sandboxes.lock().await.remove(id) {
            Self::kill_all(&s.groups).await;
        }
        let dir = self.root.join(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PoolError::io(format!("removing {}", dir.display()), e)),
        }
    }

    async fn alive(&self, id: &str) -> Result<bool, PoolError> {
        Ok(self.sandboxes.lock().await.contains_key(id))
    }

    async fn pause(&self, _id: &str) -> Result<(), PoolError> {
        Ok(())
    }

    async fn unpause(&self, _id: &str) -> Result<(), PoolError> {
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: mpsc::Sender<ExecChunk>,
    ) -> Result<ExecOutcome, PoolError> {
        let (dir, memory, staging, groups) = self.sandbox(id).await?;
        let cwd = Self::map(&dir, staging.as_deref(), &spec.workdir)?;
        tokio::fs::create_dir_all(&cwd)
            .await
            .map_err(io(format!("creating {}", cwd.display())))?;
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(PoolError::invalid("argv", "must not be empty"));
        };
        let mut cmd = match &self.prlimit {
            Some(prlimit) => {
                let mut c = tokio::process::Command::new(prlimit);
                c.arg(format!("--as={memory}"))
                    .arg("--core=0")
                    .arg("--")
                    .arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir.join("workspace"))
            .env("TMPDIR", dir.join("tmp"))
            .env("LIQUID_SECRETS_DIR", dir.join("secrets"))
            .env("LIQUID_WORKDIR", dir.join("workspace"))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(io(format!("starting {program}")))?;
        let pgid = child.id().unwrap_or(0);
        if let Ok(mut g) = groups.lock() {
            g.insert(pgid);
        }
        if let Some(mut stdin) = child.stdin.take() {
            let data = spec.stdin.clone();
            tokio::spawn(async move {
                let _ = stdin.write_all(&data).await;
            });
        }
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let pump = async {
            let (mut a, mut b) = (vec![0u8; 16384], vec![0u8; 16384]);
            let (mut out_open, mut err_open) = (stdout.is_some(), stderr.is_some());
            while out_open || err_open {
                tokio::select! {
                    n = async { match stdout.as_mut() { Some(s) => s.read(&mut a).await, None => Ok(0) } }, if out_open => {
                        match n {
                            Ok(0) | Err(_) => out_open = false,
                            Ok(n) => if sink.send(ExecChunk::Stdout(Bytes::copy_from_slice(&a[..n]))).await.is_err() { return false },
                        }
                    }
                    n = async { match stderr.as_mut() { Some(s) => s.read(&mut b).await, None => Ok(0) } }, if err_open => {
                        match n {
                            Ok(0) | Err(_) => err_open = false,
                            Ok(n) => if sink.send(ExecChunk::Stderr(Bytes::copy_from_slice(&b[..n]))).await.is_err() { return false },
                        }
                    }
                }
            }
            true
        };
        let finished = matches!(tokio::time::timeout(spec.timeout, pump).await, Ok(true));
        let mut outcome = ExecOutcome::default();
        if finished {
            let status = child.wait().await.map_err(io("waiting for the command"))?;
            outcome.exit_code = status
                .code()
                .map(i64::from)
                .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
                .unwrap_or(-1);
            // Children it left in the background belong to the claim until the reset.
        } else {
            outcome.timed_out = !sink.is_closed();
            outcome.exit_code = 137;
            outcome.stopped = true;
            kill_group(pgid).await;
            let _ = child.wait().await;
            if let Ok(mut g) = groups.lock() {
                g.remove(&pgid);
            }
        }
        outcome.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(outcome)
    }

    async fn write_secrets(
        &self,
        id: &str,
        secrets: &[(String, Secret<String>)],
    ) -> Result<(), PoolError> {
        let (dir, ..) = self.sandbox(id).await?;
        for (name, value) in secrets {
            if !valid_name(name) {
                return Err(PoolError::invalid(
                    "secrets",
                    format!("bad secret name `{name}`"),
                ));
            }
            let path = dir.join("secrets").join(name);
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .await
                .map_err(io("writing a secret file"))?;
            f.write_all(value.expose().as_bytes())
                .await
                .map_err(io("writing a secret file"))?;
        }
        Ok(())
    }

    async fn remove_secrets(&self, id: &str, names: &[String]) -> Result<(), PoolError> {
        let (dir, ..) = self.sandbox(id).await?;
        for n in names {
            if !valid_name(n) {
                return Err(PoolError::invalid(
                    "secrets",
                    format!("bad secret name `{n}`"),
                ));
            }
            match tokio::fs::remove_file(dir.join("secrets").join(n)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PoolError::io("removing a secret file", e)),
            }
        }
        Ok(())
    }

    async fn reset(&self, id: &str) -> Result<bool, PoolError> {
        let (dir, _, _, groups) = self.sandbox(id).await?;
        Self::kill_all(&groups).await;
        if let Ok(mut g) = groups.lock() {
            g.clear();
        }
        let clean = tokio::task::spawn_blocking(move || {
            ["workspace", "tmp", "secrets"].iter().all(|sub| {
                let d = dir.join(sub);
                empty_dir(&d).is_ok()
                    && std::fs::read_dir(&d)
                        .map(|mut r| r.next().is_none())
                        .unwrap_or(false)
            })
        })
        .await
        .unwrap_or(false);
        Ok(clean)
    }

    async fn put_archive(&self, id: &str, path: &str, tar: Bytes) -> Result<(), PoolError> {
        let (dir, _, staging, _) = self.sandbox(id).await?;
        let target = Self::map(&dir, staging.as_deref(), path)?;
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&target)?;
            let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
            archive.set_preserve_permissions(false);
            archive.set_overwrite(true);
            // unpack refuses entries that would land outside `target`.
            archive.unpack(&target)
        })
        .await
        .map_err(|e| PoolError::io("unpacking", std::io::Error::other(e)))?
        .map_err(|e| PoolError::invalid("tar", e.to_string()))
    }

    async fn get_archive(&self, id: &str, path: &str) -> Result<Bytes, PoolError> {
        let (dir, _, staging, _) = self.sandbox(id).await?;
        let source = Self::map(&dir, staging.as_deref(), path)?;
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workspace".into());
        let shown = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let meta =
                std::fs::symlink_metadata(&source).map_err(|_| PoolError::PathNotFound(shown))?;
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            let r = if meta.is_dir() {
                b.append_dir_all(&name, &source)
            } else {
                b.append_path_with_name(&source, &name)
            };
            r.and_then(|()| b.into_inner())
                .map(Bytes::from)
                .map_err(|e| PoolError::io("archiving", e))
        })
        .await
        .map_err(|e| PoolError::io("archiving", std::io::Error::other(e)))?
    }

    async fn list(&self, pool: Option<&str>) -> Result<Vec<ListedContainer>, PoolError> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(PoolError::io("listing sandboxes", e)),
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !id.starts_with("proc-") {
                continue;
            }
            let Ok(text) = tokio::fs::read(entry.path().join("labels.json")).await else {
                continue;
            };
            let labels: HashMap<String, String> = serde_json::from_slice(&text).unwrap_or_default();
            if pool.is_none_or(|p| labels.get(POOL_LABEL).map(String::as_str) == Some(p)) {
                out.push(ListedContainer { id, labels });
            }
        }
        Ok(out)
    }
}
