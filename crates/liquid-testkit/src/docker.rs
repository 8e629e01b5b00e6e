//! Docker helpers for tests: a harness that labels everything it creates with its run id, private
//! networks with unique names, containers started from local images (nothing is ever pulled: no
//! registry is reachable) and waited on over HTTP, and a sweep that removes every container and
//! network carrying a label.
//!
//! Every object gets `io.liquid.owner=liquid`, `io.liquid.test=<run id>` and
//! `io.liquid.test.process=<pid>:<start time>`. The harness sweeps its own run id when dropped,
//! and on connect it sweeps what earlier test processes left behind when they died before their
//! drop ran (their process is gone), never what a test running in parallel still uses.
//!
//! Docker's API is driven through bollard 0.21.1; `negotiate_version` is called after connecting
//! because that version otherwise sends requests without a version prefix.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;

/// Label on everything the project creates in Docker (value [`OWNER`]).
pub const OWNER_LABEL: &str = "io.liquid.owner";
/// Value of [`OWNER_LABEL`].
pub const OWNER: &str = "liquid";
/// Label whose value is the run id of the harness that created the object.
pub const TEST_LABEL: &str = "io.liquid.test";
/// Label naming the creating process as `<pid>:<start time in clock ticks>`, so a later run can
/// tell a leak (process gone) from a container a parallel test still uses.
pub const PROCESS_LABEL: &str = "io.liquid.test.process";

/// What [`sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the removed containers.
    pub containers: Vec<String>,
    /// Names of the removed networks.
    pub networks: Vec<String>,
}

/// A container to start with [`DockerHarness::run`].
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// A local image (`liquid/gateway:0.1.0`, or one from [`DockerHarness::busybox_image`]).
    pub image: String,
    /// Short name used in the container's unique name (`liquid-test-<hint>-<id>`).
    pub name_hint: String,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub cmd: Option<Vec<String>>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Labels besides the harness's own.
    pub labels: HashMap<String, String>,
    /// Network to join (a name from [`DockerHarness::create_network`]).
    pub network: Option<String>,
    /// DNS names of the container on that network.
    pub aliases: Vec<String>,
    /// Container TCP port to publish on a free 127.0.0.1 port of the host.
    pub http_port: Option<u16>,
    /// `uid[:gid]` to run as.
    pub user: Option<String>,
}

/// A started container.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    /// Docker's id.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Host port on 127.0.0.1 mapped to [`ContainerSpec::http_port`].
    pub host_port: Option<u16>,
}

impl RunningContainer {
    /// `http://127.0.0.1:<host port>`, when a port was published.
    pub fn http_base(&self) -> Option<String> {
        self.host_port.map(|p| format!("http://127.0.0.1:{p}"))
    }
}

/// A connection to the local Docker engine that labels and cleans up what it creates.
pub struct DockerHarness {
    docker: Docker,
    run_id: String,
    process: String,
}

impl std::fmt::Debug for DockerHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerHarness")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Connects to the local engine (`DOCKER_HOST` or the default socket) and negotiates the API
/// version (the engine here speaks 1.41).
pub async fn connect_docker() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| anyhow::anyhow!("cannot reach the docker engine: {e}"))?
        .negotiate_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the docker engine: {e}; is it running?"))?;
    docker.ping().await?;
    Ok(docker)
}

/// `<pid>:<start time>` of this process (field 22 of /proc/self/stat).
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process a [`PROCESS_LABEL`] value names is still running.
fn process_alive(label: &str) -> bool {
    let Some(pid) = label.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    process_identity(pid).as_deref() == Some(label)
}

fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![label.to_owned()])])
}

fn is_gone(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

/// Removes every container (forcibly, with its anonymous volumes) and then every network that
/// carries `label` (`key=value` or just `key`). Objects already gone are not an error.
pub async fn sweep(docker: &Docker, label: &str) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(label)),
            ..Default::default()
        }))
        .await?;
    for c in containers {
        let Some(id) = c.id else { continue };
        let removed = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        match removed {
            Ok(()) => report.containers.push(id),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(label)),
        }))
        .await?;
    for n in networks {
        let Some(name) = n.name.or(n.id) else {
            continue;
        };
        match docker.remove_network(&name).await {
            Ok(()) => report.networks.push(name),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// Sweeps the objects of test processes that are no longer running (leaks of a crashed or
/// killed run), leaving those of live processes alone.
pub async fn sweep_dead_processes(docker: &Docker) -> anyhow::Result<SweepReport> {
    let mut total = SweepReport::default();
    let mut dead = std::collections::BTreeSet::new();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(PROCESS_LABEL)),
            ..Default::default()
        }))
        .await?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(PROCESS_LABEL)),
        }))
        .await?;
    let labels = containers
        .into_iter()
        .filter_map(|c| c.labels)
        .chain(networks.into_iter().filter_map(|n| n.labels));
    for l in labels {
        if l.get(OWNER_LABEL).map(String::as_str) != Some(OWNER) {
            continue;
        }
        if let Some(process) = l.get(PROCESS_LABEL)
            && !process_alive(process)
        {
            dead.insert(process.clone());
        }
    }
    for process in dead {
        let report = sweep(docker, &format!("{PROCESS_LABEL}={process}")).await?;
        total.containers.extend(report.containers);
        total.networks.extend(report.networks);
    }
    Ok(total)
}

impl DockerHarness {
    /// Connects, negotiates the API version and sweeps leaks of dead test processes.
    pub async fn connect() -> anyhow::Result<DockerHarness> {
        let docker = connect_docker().await?;
        let leaked = sweep_dead_processes(&docker).await?;
        if !leaked.containers.is_empty() || !leaked.networks.is_empty() {
            tracing::info!(
                containers = leaked.containers.len(),
                networks = leaked.networks.len(),
                "swept docker objects of dead test processes"
            );
        }
        let process = process_identity(std::process::id())
            .unwrap_or_else(|| format!("{}:0", std::process::id()));
        Ok(DockerHarness {
            docker,
            run_id: uuid::Uuid::now_v7().simple().to_string(),
            process,
        })
    }

    /// The bollard client, for calls the harness does not wrap.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// This harness's run id (the value of [`TEST_LABEL`]).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// `io.liquid.test=<run id>`: the label [`sweep`] takes to remove this run's objects.
    pub fn run_label(&self) -> String {
        format!("{TEST_LABEL}={}", self.run_id)
    }

    /// The labels the harness puts on everything it creates.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (OWNER_LABEL.to_owned(), OWNER.to_owned()),
            (TEST_LABEL.to_owned(), self.run_id.clone()),
            (PROCESS_LABEL.to_owned(), self.process.clone()),
        ])
    }

    fn unique_name(&self, hint: &str) -> String {
        let hint: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(32)
            .collect();
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("liquid-test-{hint}-{}", &id[..12])
    }

    /// Creates a labelled bridge network with a unique name and returns the name.
    pub async fn create_network(&self, hint: &str) -> anyhow::Result<String> {
        let name = self.unique_name(hint);
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(self.labels()),
                ..Default::default()
            })
            .await?;
        Ok(name)
    }

    /// The gateway address of network `name`: where the host answers containers on it, so a
    /// server the test binds there is reachable from them.
    pub async fn network_gateway(&self, name: &str) -> anyhow::Result<std::net::IpAddr> {
        let network = self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await?;
        network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .find_map(|c| c.gateway?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("network {name} has no IPv4 gateway"))
    }

    /// Creates and starts a labelled container from a local image.
    pub async fn run(&self, spec: &ContainerSpec) -> anyhow::Result<RunningContainer> {
        let name = self.unique_name(if spec.name_hint.is_empty() {
            "container"
        } else {
            &spec.name_hint
        });
        let mut labels = spec.labels.clone();
        labels.extend(self.labels());
        let port_key = spec.http_port.map(|p| format!("{p}/tcp"));
        let host_config = HostConfig {
            port_bindings: port_key.as_ref().map(|k| {
                HashMap::from([(
                    k.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])
            }),
            network_mode: spec.network.clone(),
            ..Default::default()
        };
        let networking_config = spec.network.as_ref().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.clone(),
                EndpointSettings {
                    aliases: Some(spec.aliases.clone()),
                    ..Default::default()
                },
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: spec.user.clone(),
            exposed_ports: port_key.clone().map(|k| vec![k]),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create a container from {}: {e}", spec.image))?;
        self.docker.start_container(&created.id, None).await?;
        // A container that already exited has no port mapping any more; it is returned without
        // one and `wait_http_ready` reports its exit code and logs.
        let host_port = match &port_key {
            None => None,
            Some(k) => match self.published_port(&created.id, k).await {
                Ok(port) => Some(port),
                Err(e) if self.is_running(&created.id).await? => return Err(e),
                Err(_) => None,
            },
        };
        Ok(RunningContainer {
            id: created.id,
            name,
            host_port,
        })
    }

    async fn is_running(&self, id: &str) -> anyhow::Result<bool> {
        let state = self.docker.inspect_container(id, None).await?.state;
        Ok(state.and_then(|s| s.running).unwrap_or(false))
    }

    async fn published_port(&self, id: &str, key: &str) -> anyhow::Result<u16> {
        let info = self.docker.inspect_container(id, None).await?;
        info.network_settings
            .and_then(|s| s.ports)
            .and_then(|p| p.get(key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("container {id} has no host port for {key}"))
    }

    /// Waits until `GET <http base><path>` answers 2xx. Fails early, with the container's last
    /// log lines, when the container stops, and after `timeout` otherwise.
    pub async fn wait_http_ready(
        &self,
        container: &RunningContainer,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let base = container.http_base().unwrap_or_default();
        let url = format!("{base}{path}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !base.is_empty()
                && let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            let state = self
                .docker
                .inspect_container(&container.id, None)
                .await?
                .state;
            if !state.as_ref().and_then(|s| s.running).unwrap_or(false) {
                let code = state.and_then(|s| s.exit_code).unwrap_or(-1);
                anyhow::bail!(
                    "container {} exited with code {code} before {url} answered; last logs:\n{}",
                    container.name,
                    self.logs(&container.id, 40).await.unwrap_or_default()
                );
            }
            if base.is_empty() {
                anyhow::bail!("container {} publishes no port", container.name);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{url} did not answer 2xx within {timeout:?}; last logs:\n{}",
                    self.logs(&container.id, 40).await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `tail` lines of a container's stdout and stderr.
    pub async fn logs(&self, id: &str, tail: usize) -> anyhow::Result<String> {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            out.push_str(&chunk?.to_string());
        }
        Ok(out)
    }

    /// Waits for the container to exit and returns its exit code. bollard reports a non-zero
    /// exit as an error carrying the code; that is read back into the code here.
    pub async fn wait_exit(&self, id: &str) -> anyhow::Result<i64> {
        let mut stream = self.docker.wait_container(id, None);
        match stream.next().await {
            Some(Ok(resp)) => Ok(resp.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("wait on container {id} ended without a status"),
        }
    }

    /// Stops a container, giving it `grace` before SIGKILL.
    pub async fn stop(&self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await
        {
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Removes a container (forcibly, with its anonymous volumes).
    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
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
            Err(e) if is_gone(&e) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Removes every container and network of this run now (drop does it too).
    pub async fn sweep(&self) -> anyhow::Result<SweepReport> {
        sweep(&self.docker, &self.run_label()).await
    }

    /// Whether a local image with this reference exists.
    pub async fn image_exists(&self, reference: &str) -> anyhow::Result<bool> {
        match self.docker.inspect_image(reference).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `docker import`: loads a root filesystem tar as image `repo:tag` with Dockerfile-style
    /// `changes` (`CMD ["/bin/sh"]`, `LABEL k=v`, ...).
    pub async fn import_rootfs(
        &self,
        tar: Vec<u8>,
        repo: &str,
        tag: &str,
        changes: &[&str],
    ) -> anyhow::Result<String> {
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            changes: changes.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        let mut stream =
            self.docker
                .create_image(Some(options), Some(bollard::body_full(tar.into())), None);
        while let Some(progress) = stream.next().await {
            progress?;
        }
        Ok(format!("{repo}:{tag}"))
    }

    /// A tiny local image with static busybox (`/bin/busybox` and its applets as symlinks),
    /// imported on first use from the host's busybox-static (`make deps`). Nothing is pulled.
    pub async fn busybox_image(&self) -> anyhow::Result<String> {
        const REPO: &str = "liquid-test/busybox";
        const TAG: &str = "1";
        let reference = format!("{REPO}:{TAG}");
        if self.image_exists(&reference).await? {
            return Ok(reference);
        }
        let tar = busybox_rootfs_tar().await?;
        self.import_rootfs(
            tar,
            REPO,
            TAG,
            &["CMD [\"/bin/sh\"]", &format!("LABEL {OWNER_LABEL}={OWNER}")],
        )
        .await
    }
}

/// A root filesystem tar holding `/bin/busybox` and a symlink to it for each applet, made with
/// GNU tar in deterministic form (sorted, mtime 0, root-owned).
pub async fn busybox_rootfs_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = std::path::Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.is_file(),
        "/bin/busybox is missing; run `make deps` (busybox-static)"
    );
    let root = tempfile::tempdir()?;
    let bin = root.path().join("bin");
    tokio::fs::create_dir_all(&bin).await?;
    tokio::fs::create_dir_all(root.path().join("tmp")).await?;
    tokio::fs::copy(busybox, bin.join("busybox")).await?;
    let list = tokio::process::Command::new(busybox)
        .arg("--list")
        .output()
        .await?;
    anyhow::ensure!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let out = tokio::process::Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            "-C",
        ])
        .arg(root.path())
        .args(["-cf", "-", "."])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

impl Drop for DockerHarness {
    /// Sweeps this run's containers and networks. Drop cannot await, and the test's runtime
    /// may be the single thread calling this, so the sweep runs on a thread of its own with its
    /// own runtime and its own client (the harness's pooled connections belong to the test's
    /// runtime).
    fn drop(&mut self) {
        let label = self.run_label();
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let docker = connect_docker().await?;
                sweep(&docker, &label).await
            })
        })
        .join();
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("docker sweep on drop failed: {e}"),
            Err(_) => eprintln!("docker sweep on drop panicked"),
        }
    }
}
