//! The Docker runtime: one engine (unix socket or TCP), driven through bollard 0.21.1 with the
//! API version negotiated at connect (the engine here speaks 1.41; without negotiation bollard
//! 0.21.1 sends unversioned paths).
//!
//! Containers are created with the template's isolation (see [`crate::domain::template`]) and
//! nothing published. Exec output streams as it comes; a command that outlives its timeout is
//! stopped with `kill -9 -1` run as the pool user inside the container (every process of the
//! claim dies, PID 1 survives); when even that cannot start (a fork bomb at the pids limit),
//! the container is restarted, which kills everything in it. `wait_container`-style errors
//! for non-zero exits do not apply to execs: the exit code is read with `inspect_exec`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ImportImageOptions,
    ListContainersOptions, RemoveContainerOptions, RestartContainerOptions, StatsOptions,
    UploadToContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use liquid_kit::Secret;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, RwLock, mpsc};

use super::image::{self, ImageArchive};
use super::{
    COMPONENT, COMPONENT_LABEL, ContainerRuntime, CreateSpec, ExecChunk, ExecOutcome, ExecSpec,
    ListedContainer, OWNER, OWNER_LABEL, POOL_LABEL, RuntimeKind,
};
use crate::config::{DockerHost, DockerSection, NetworkPolicy, valid_name};
use crate::domain::autoconf::HostFacts;
use crate::domain::template::{
    ImageChoice, SECRETS_DIR, STAGING_DIR, Template, UID, USER, WORKDIR,
};
use crate::egress::{EgressPolicy, EgressProxy};
use crate::error::PoolError;

/// Largest archive a download returns.
const MAX_ARCHIVE_BYTES: usize = 256 * 1024 * 1024;

/// Kills the previous claim's processes, empties the writable places and says whether they
/// are empty. Runs as the pool user, so it can touch nothing else.
const RESET_SCRIPT: &str = "kill -9 -1 2>/dev/null; \
for d in /workspace /tmp /run/secrets; do rm -rf \"$d\"/* \"$d\"/.[!.]* \"$d\"/..?* 2>/dev/null; done; \
left=$(ls -A /workspace /tmp /run/secrets 2>/dev/null | grep -v ':$' | grep -v '^$'); \
if [ -z \"$left\" ]; then echo clean; else echo \"left: $left\" >&2; exit 3; fi";

/// The same archive with every entry owned by the pool user.
fn owned_by_pool_user(tar: &[u8]) -> Result<Bytes, PoolError> {
    let bad = |e: std::io::Error| PoolError::invalid("tar", e.to_string());
    let mut archive = tar::Archive::new(tar);
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let mut header = entry.header().clone();
        header.set_uid(u64::from(UID));
        header.set_gid(u64::from(UID));
        let _ = header.set_username("");
        let _ = header.set_groupname("");
        header.set_cksum();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(bad)?;
        match entry.header().entry_type() {
            tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
            | tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader => {
                // Long names were folded into the entry's path by the reader; write it again.
                continue;
            }
            _ => {}
        }
        let path = entry.path().map_err(bad)?.into_owned();
        if let Some(target) = entry.link_name().map_err(bad)? {
            out.append_link(&mut header, &path, target.as_ref())
                .map_err(bad)?;
        } else {
            out.append_data(&mut header, &path, &data[..])
                .map_err(bad)?;
        }
    }
    out.into_inner().map(Bytes::from).map_err(bad)
}

/// One Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    config: DockerSection,
    images: RwLock<HashMap<ImageChoice, String>>,
    /// The proxy of allow-listed templates, started with their first container.
    egress: OnceCell<EgressProxy>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerRuntime {
    /// Connects to `host` and negotiates the API version, within the configured timeout.
    pub async fn connect(host: &DockerHost, config: &DockerSection) -> Result<Self, PoolError> {
        let timeout = config.connect_timeout_secs;
        let fail = |e: &dyn std::fmt::Display| PoolError::docker(&host.name, e);
        let docker = if host.url.is_empty() {
            Docker::connect_with_local_defaults().map_err(|e| fail(&e))?
        } else if let Some(path) = host.url.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
                .map_err(|e| fail(&e))?
        } else {
            let url = host.url.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&url, timeout, bollard::API_DEFAULT_VERSION)
                .map_err(|e| fail(&e))?
        };
        let docker = tokio::time::timeout(Duration::from_secs(timeout), docker.negotiate_version())
            .await
            .map_err(|_| fail(&"no answer while negotiating the api version"))?
            .map_err(|e| fail(&e))?;
        let rt = DockerRuntime {
            docker,
            host: host.name.clone(),
            config: config.clone(),
            images: RwLock::new(HashMap::new()),
            egress: OnceCell::new(),
        };
        rt.ping().await?;
        Ok(rt)
    }

    /// The bollard client (tests and benchmarks inspect containers with it).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn err(&self, e: impl std::fmt::Display) -> PoolError {
        PoolError::docker(&self.host, e)
    }

    /// Loads `archive` unless an image with its id already carries its tag.
    async fn ensure_archive(&self, archive: ImageArchive) -> Result<String, PoolError> {
        if let Ok(found) = self.docker.inspect_image(&archive.reference).await
            && found.id.as_deref() == Some(archive.image_id.as_str())
        {
            return Ok(archive.reference);
        }
        let mut stream = self.docker.import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_full(Bytes::from(archive.archive)),
            None,
        );
        while let Some(progress) = stream.next().await {
            let info = progress.map_err(|e| self.err(e))?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(self.err(format!("loading {}: {detail}", archive.reference)));
            }
        }
        let found = self
            .docker
            .inspect_image(&archive.reference)
            .await
            .map_err(|e| self.err(format!("{} missing after load: {e}", archive.reference)))?;
        if found.id.as_deref() != Some(archive.image_id.as_str()) {
            return Err(self.err(format!(
                "{} loaded with id {:?}, expected {}",
                archive.reference, found.id, archive.image_id
            )));
        }
        tracing::info!(host = %self.host, image = %archive.reference, id = %archive.image_id, "pool image loaded");
        Ok(archive.reference)
    }

    async fn ensure_image(&self, choice: &ImageChoice) -> Result<String, PoolError> {
        if let Some(r) = self.images.read().await.get(choice) {
            return Ok(r.clone());
        }
        let reference = match choice {
            ImageChoice::Base => {
                let repo = self.config.base_image_repo.clone();
                let busybox = PathBuf::from(&self.config.busybox_path);
                let archive =
                    tokio::task::spawn_blocking(move || image::build_base(&repo, &busybox))
                        .await
                        .map_err(|e| {
                            PoolError::io("building the base image", std::io::Error::other(e))
                        })??;
                self.ensure_archive(archive).await?
            }
            ImageChoice::Toolbox => {
                if self.config.toolbox_rootfs.is_empty() {
                    return Err(PoolError::FailedPrecondition(
                        "a template uses the toolbox image but docker.toolbox_rootfs is not set"
                            .into(),
                    ));
                }
                let repo = self.config.toolbox_image_repo.clone();
                let rootfs = PathBuf::from(&self.config.toolbox_rootfs);
                let archive =
                    tokio::task::spawn_blocking(move || image::build_toolbox(&repo, &rootfs))
                        .await
                        .map_err(|e| {
                            PoolError::io("building the toolbox image", std::io::Error::other(e))
                        })??;
                self.ensure_archive(archive).await?
            }
            ImageChoice::Local(r) => match self.docker.inspect_image(r).await {
                Ok(_) => r.clone(),
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(PoolError::FailedPrecondition(format!(
                        "image {r} is not on docker host {}; images are never pulled, build or load it there",
                        self.host
                    )));
                }
                Err(e) => return Err(self.err(e)),
            },
        };
        self.images
            .write()
            .await
            .insert(choice.clone(), reference.clone());
        Ok(reference)
    }

    /// The allow-list proxy, listening on the internal network's gateway address (started
    /// once).
    async fn egress_proxy(&self) -> Result<&EgressProxy, PoolError> {
        self.egress
            .get_or_try_init(|| async {
                let gateway = self.ensure_allowlist_network().await?;
                let policy =
                    EgressPolicy::new(&self.config.egress_allow, self.config.egress_allow_private)
                        .map_err(|reason| PoolError::invalid("docker.egress_allow", reason))?;
                EgressProxy::start(gateway, policy).await
            })
            .await
    }

    /// Creates the internal bridge of allow-listed templates when missing; returns its gateway
    /// address (the host's side of the bridge, where the proxy listens).
    async fn ensure_allowlist_network(&self) -> Result<std::net::IpAddr, PoolError> {
        let name = &self.config.allowlist_network;
        let found = match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => Some(n),
            Err(e) if status_of(&e) == Some(404) => None,
            Err(e) => return Err(self.err(e)),
        };
        let network = match found {
            Some(n) => n,
            None => {
                let labels = HashMap::from([
                    (OWNER_LABEL.to_owned(), OWNER.to_owned()),
                    (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
                ]);
                match self
                    .docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".into()),
                        internal: Some(true),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(self.err(e)),
                }
                self.docker
                    .inspect_network(
                        name,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await
                    .map_err(|e| self.err(e))?
            }
        };
        if network.internal != Some(true) {
            return Err(PoolError::FailedPrecondition(format!(
                "network `{name}` exists but is not internal; remove it (`docker network rm {name}`) \
                 so the pool can create it without a route out"
            )));
        }
        network
            .ipam
            .and_then(|i| i.config)
            .into_iter()
            .flatten()
            .find_map(|c| c.gateway.and_then(|g| g.parse().ok()))
            .ok_or_else(|| {
                PoolError::FailedPrecondition(format!(
                    "network `{name}` has no gateway address for the egress proxy"
                ))
            })
    }

    async fn ensure_network(&self) -> Result<(), PoolError> {
        let name = &self.config.egress_network;
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                let labels = HashMap::from([
                    (OWNER_LABEL.to_owned(), OWNER.to_owned()),
                    (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
                ]);
                match self
                    .docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".into()),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => Ok(()),
                    // Another replica created it meanwhile.
                    Err(e) if status_of(&e) == Some(409) => Ok(()),
                    Err(e) => Err(self.err(e)),
                }
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Runs a short helper command as the pool user and returns (exit code, stdout).
    async fn helper(
        &self,
        id: &str,
        argv: Vec<String>,
        env: Vec<String>,
    ) -> Result<(i64, String, String), PoolError> {
        let spec = ExecSpec {
            argv,
            env: env
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
            workdir: WORKDIR.into(),
            timeout: Duration::from_secs(10),
            ..ExecSpec::default()
        };
        let (tx, mut rx) = mpsc::channel(64);
        let collect = tokio::spawn(async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(c) = rx.recv().await {
                match c {
                    ExecChunk::Stdout(b) => out.extend_from_slice(&b),
                    ExecChunk::Stderr(b) => err.extend_from_slice(&b),
                }
            }
            (out, err)
        });
        let outcome = self.exec_raw(id, &spec, tx).await?;
        let (out, err) = collect.await.unwrap_or_default();
        Ok((
            outcome.exit_code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }

    /// Stops every process of the claim; restarts the container when that is impossible.
    async fn kill_claim_processes(&self, id: &str) -> Result<bool, PoolError> {
        for _ in 0..5 {
            let spec = ExecSpec {
                argv: vec!["/bin/kill".into(), "-9".into(), "-1".into()],
                workdir: "/".into(),
                timeout: Duration::from_secs(3),
                ..ExecSpec::default()
            };
            let (tx, _rx) = mpsc::channel(4);
            if let Ok(o) = self.exec_raw(id, &spec, tx).await
                && !o.timed_out
            {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(host = %self.host, container = %id, "cannot start kill inside the container; restarting it");
        self.docker
            .restart_container(
                id,
                Some(RestartContainerOptions {
                    t: Some(0),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    async fn run_exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: mpsc::Sender<ExecChunk>,
        kill_on_timeout: bool,
    ) -> Result<ExecOutcome, PoolError> {
        let mut outcome = self.exec_raw(id, spec, sink).await?;
        if kill_on_timeout && outcome.stopped {
            outcome.restarted = self.kill_claim_processes(id).await?;
        }
        Ok(outcome)
    }

    /// One exec without the kill that follows a timeout.
    async fn exec_raw(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: mpsc::Sender<ExecChunk>,
    ) -> Result<ExecOutcome, PoolError> {
        let started = Instant::now();
        let with_stdin = !spec.stdin.is_empty();
        let config = ExecConfig {
            cmd: Some(spec.argv.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(spec.workdir.clone()),
            user: Some(USER.into()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(with_stdin),
            tty: Some(false),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| self.err(e))?;
        let started_exec = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.err(e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started_exec
        else {
            return Err(self.err("exec started detached"));
        };
        if with_stdin {
            input
                .write_all(&spec.stdin)
                .await
                .map_err(|e| PoolError::io("writing exec stdin", e))?;
            let _ = input.shutdown().await;
        }
        let mut gone = false;
        let pump = async {
            while let Some(item) = output.next().await {
                let chunk = match item.map_err(|e| self.err(e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        ExecChunk::Stdout(message)
                    }
                    LogOutput::StdErr { message } => ExecChunk::Stderr(message),
                    LogOutput::StdIn { .. } => continue,
                };
                if sink.send(chunk).await.is_err() {
                    // The caller went away: stop the command like a timeout would.
                    gone = true;
                    return Ok::<bool, PoolError>(false);
                }
            }
            Ok(true)
        };
        let finished = match tokio::time::timeout(spec.timeout, pump).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(e),
            Err(_) => false,
        };
        drop(output);
        drop(input);
        let mut outcome = ExecOutcome::default();
        if finished {
            // The stream ends when the process closes its output; its exit follows at once.
            for _ in 0..200 {
                let inspect = self
                    .docker
                    .inspect_exec(&created.id)
                    .await
                    .map_err(|e| self.err(e))?;
                if inspect.running != Some(true) {
                    outcome.exit_code = inspect.exit_code.unwrap_or(-1);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            outcome.timed_out = !gone;
            outcome.exit_code = 137;
            outcome.stopped = true;
        }
        outcome.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if spec.usage {
            let mut stats = self.docker.stats(
                id,
                Some(StatsOptions {
                    stream: false,
                    one_shot: true,
                }),
            );
            if let Some(Ok(s)) = stats.next().await {
                outcome.memory_peak_bytes = s.memory_stats.and_then(|m| m.max_usage.or(m.usage));
                outcome.cpu_usec = s
                    .cpu_stats
                    .and_then(|c| c.cpu_usage)
                    .and_then(|u| u.total_usage)
                    .map(|ns| ns / 1000);
            }
        }
        Ok(outcome)
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn host(&self) -> &str {
        &self.host
    }

    async fn ping(&self) -> Result<(), PoolError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    async fn facts(&self) -> Result<HostFacts, PoolError> {
        let info = self.docker.info().await.map_err(|e| self.err(e))?;
        Ok(HostFacts {
            cores: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
            memory_mib: info
                .mem_total
                .and_then(|m| u64::try_from(m).ok())
                .map(|b| b / (1024 * 1024))
                .unwrap_or(1024),
        })
    }

    async fn prepare(&self, templates: &[Template]) -> Result<(), PoolError> {
        for t in templates {
            self.ensure_image(&t.image).await?;
        }
        if templates.iter().any(|t| t.network == NetworkPolicy::Egress) {
            self.ensure_network().await?;
        }
        if templates
            .iter()
            .any(|t| t.network == NetworkPolicy::Allowlist)
        {
            self.egress_proxy().await?;
        }
        Ok(())
    }

    async fn create(&self, spec: &CreateSpec) -> Result<String, PoolError> {
        let t = &spec.template;
        let image = self.ensure_image(&t.image).await?;
        let (network_mode, env) = match t.network {
            NetworkPolicy::None => ("none".to_owned(), None),
            NetworkPolicy::Egress => (self.config.egress_network.clone(), None),
            NetworkPolicy::Allowlist => (
                self.config.allowlist_network.clone(),
                Some(self.egress_proxy().await?.env()),
            ),
        };
        let host_config = HostConfig {
            memory: Some(t.memory_bytes),
            memory_swap: Some(t.memory_bytes),
            nano_cpus: Some(t.nano_cpus),
            pids_limit: Some(t.pids_limit),
            readonly_rootfs: Some(true),
            tmpfs: Some(t.tmpfs().into_iter().collect()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            network_mode: Some(network_mode),
            publish_all_ports: Some(false),
            init: Some(false),
            binds: spec
                .staging_dir
                .as_ref()
                .map(|d| vec![format!("{d}:{STAGING_DIR}:rw")]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(image::init_command()),
            user: Some(USER.into()),
            working_dir: Some(WORKDIR.into()),
            labels: Some(spec.labels.clone()),
            volumes: Some(vec![WORKDIR.into()]),
            network_disabled: Some(t.network == NetworkPolicy::None),
            env,
            stop_timeout: Some(1),
            host_config: Some(host_config),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| self.err(e))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(self.err(e));
        }
        Ok(created.id)
    }

    async fn remove(&self, id: &str) -> Result<(), PoolError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn alive(&self, id: &str) -> Result<bool, PoolError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), PoolError> {
        self.docker
            .pause_container(id)
            .await
            .map_err(|e| self.err(e))
    }

    async fn unpause(&self, id: &str) -> Result<(), PoolError> {
        self.docker
            .unpause_container(id)
            .await
            .map_err(|e| self.err(e))
    }

    async fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        sink: mpsc::Sender<ExecChunk>,
    ) -> Result<ExecOutcome, PoolError> {
        self.run_exec(id, spec, sink, true).await
    }

    async fn write_secrets(
        &self,
        id: &str,
        secrets: &[(String, Secret<String>)],
    ) -> Result<(), PoolError> {
        if secrets.is_empty() {
            return Ok(());
        }
        // Values travel in the exec's environment (never on a command line) and land in files
        // of mode 0600 on the tmpfs.
        let mut script = String::from("umask 077");
        let mut env = Vec::new();
        for (i, (name, value)) in secrets.iter().enumerate() {
            if !valid_name(name) {
                return Err(PoolError::invalid(
                    "secrets",
                    format!("bad secret name `{name}`"),
                ));
            }
            script.push_str(&format!(" && printf '%s' \"$S{i}\" > {SECRETS_DIR}/{name}"));
            env.push(format!("S{i}={}", value.expose()));
        }
        let (code, _, err) = self
            .helper(id, vec!["/bin/sh".into(), "-c".into(), script], env)
            .await?;
        if code != 0 {
            return Err(self.err(format!(
                "writing secrets exited with {code}: {}",
                err.trim()
            )));
        }
        Ok(())
    }

    async fn remove_secrets(&self, id: &str, names: &[String]) -> Result<(), PoolError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut argv = vec!["/bin/rm".to_owned(), "-f".to_owned()];
        for n in names {
            if !valid_name(n) {
                return Err(PoolError::invalid(
                    "secrets",
                    format!("bad secret name `{n}`"),
                ));
            }
            argv.push(format!("{SECRETS_DIR}/{n}"));
        }
        let (code, _, err) = self.helper(id, argv, Vec::new()).await?;
        if code != 0 {
            return Err(self.err(format!(
                "removing secrets exited with {code}: {}",
                err.trim()
            )));
        }
        Ok(())
    }

    async fn reset(&self, id: &str) -> Result<bool, PoolError> {
        let (code, out, err) = self
            .helper(
                id,
                vec!["/bin/sh".into(), "-c".into(), RESET_SCRIPT.into()],
                Vec::new(),
            )
            .await?;
        if code != 0 || out.trim() != "clean" {
            tracing::warn!(host = %self.host, container = %id, code, left = %err.trim(), "reset left files behind");
            return Ok(false);
        }
        Ok(true)
    }

    async fn put_archive(&self, id: &str, path: &str, tar: Bytes) -> Result<(), PoolError> {
        // Docker keeps the owners in the archive; the files must belong to the pool user.
        // (`copyUIDGID` would look the container's user up in the host's passwd database.)
        let tar = tokio::task::spawn_blocking(move || owned_by_pool_user(&tar))
            .await
            .map_err(|e| PoolError::io("rewriting the archive", std::io::Error::other(e)))??;
        let upload = || {
            self.docker.upload_to_container(
                id,
                Some(UploadToContainerOptions {
                    path: path.to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(tar.clone()),
            )
        };
        match upload().await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => {
                let (code, _, err) = self
                    .helper(
                        id,
                        vec!["/bin/mkdir".into(), "-p".into(), path.to_owned()],
                        Vec::new(),
                    )
                    .await?;
                if code != 0 {
                    return Err(PoolError::invalid(
                        "path",
                        format!("cannot create {path}: {}", err.trim()),
                    ));
                }
                upload().await.map_err(|e| self.err(e))
            }
            Err(e) if status_of(&e) == Some(400) => Err(PoolError::invalid("tar", e.to_string())),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn get_archive(&self, id: &str, path: &str) -> Result<Bytes, PoolError> {
        let mut stream = self.docker.download_from_container(
            id,
            Some(DownloadFromContainerOptions {
                path: path.to_owned(),
            }),
        );
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    out.extend_from_slice(&b);
                    if out.len() > MAX_ARCHIVE_BYTES {
                        return Err(PoolError::invalid(
                            "path",
                            format!(
                                "{path} is larger than {MAX_ARCHIVE_BYTES} bytes as an archive"
                            ),
                        ));
                    }
                }
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(PoolError::PathNotFound(path.to_owned()));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(Bytes::from(out))
    }

    async fn list(&self, pool: Option<&str>) -> Result<Vec<ListedContainer>, PoolError> {
        let mut labels = vec![format!("{COMPONENT_LABEL}={COMPONENT}")];
        if let Some(pool) = pool {
            labels.push(format!("{POOL_LABEL}={pool}"));
        }
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err(e))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                Some(ListedContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }
}
