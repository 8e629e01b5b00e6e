//! The warm pools: per template, idle containers ready to hand out, FIFO waiters when a
//! template is exhausted, claims bound late (environment, secrets, working directory), and the
//! background work that keeps it all honest — replenishing, idle TTL, health checks, leases
//! and orphan sweeps, and the drain at shutdown.
//!
//! Concurrency: each template's state sits behind one lock that is never held across an
//! await; capacity is decided under it ([`crate::domain::capacity`]), so creations in flight
//! count and concurrent acquires cannot overshoot `max_total`. A container freed by a release
//! goes to the oldest waiter first. A released container is reset (every process killed, work
//! dir, /tmp and secrets wiped and checked empty) or replaced before anyone else gets it; a
//! claim's secrets are therefore gone when `release` returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use liquid_kit::Secret;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{PoolSettings, ReleasePolicy, TemplateConfig};
use crate::domain::autoconf::{self, HostFacts};
use crate::domain::capacity::{self, Counts};
use crate::domain::placement::{self, HostView, PlacementPolicy};
use crate::domain::template::{SECRETS_DIR, STAGING_DIR, Template, WORKDIR};
use crate::error::PoolError;
use crate::events::{PoolEvents, SYSTEM_TENANT};
use crate::runtime::{
    COMPONENT, COMPONENT_LABEL, ContainerRuntime, CreateSpec, ExecChunk, ExecOutcome, ExecSpec,
    HOSTNAME_LABEL, OWNER, OWNER_LABEL, POOL_LABEL, PROCESS_LABEL, REPLICA_LABEL, RuntimeKind,
    TEMPLATE_LABEL, check_container_path, process_alive,
};
use crate::secrets::SecretResolver;
use crate::store::{ClaimRow, IdempotencyState, PoolStore, ReplicaRow};

const M_CONTAINERS: &str = "liquid_container_pool_containers";
const M_WAITING: &str = "liquid_container_pool_wait_queue_depth";
const M_ACQUIRE: &str = "liquid_container_pool_acquire_duration_seconds";
const M_CREATED: &str = "liquid_container_pool_containers_created_total";
const M_CREATE_FAILURES: &str = "liquid_container_pool_create_failures_total";
const M_REAPED: &str = "liquid_container_pool_reaped_total";
const M_EXEC: &str = "liquid_container_pool_exec_duration_seconds";
const M_HOST_HEALTHY: &str = "liquid_container_pool_host_healthy";
const M_HOST_CONTAINERS: &str = "liquid_container_pool_host_containers";

/// Who this replica is, as its containers' labels say.
#[derive(Debug, Clone)]
pub struct ReplicaIdentity {
    /// UUIDv7 of this process lifetime.
    pub id: Uuid,
    /// Host name of the machine.
    pub hostname: String,
    /// `<pid>:<start time>`.
    pub process: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

impl ReplicaIdentity {
    /// The identity of this process.
    pub fn current(id: Uuid) -> ReplicaIdentity {
        let pid = std::process::id();
        ReplicaIdentity {
            id,
            hostname: crate::runtime::hostname(),
            process: crate::runtime::process_identity(pid).unwrap_or_else(|| format!("{pid}:0")),
            started_at: Utc::now(),
        }
    }
}

/// What a caller asks for when acquiring.
#[derive(Debug, Clone, Default)]
pub struct AcquireRequest {
    /// Template; empty means `default`.
    pub template: String,
    /// Environment of the claim's execs.
    pub env: BTreeMap<String, String>,
    /// Secrets to inject.
    pub secrets: Vec<String>,
    /// Working directory (absolute under /workspace, or relative to it).
    pub workdir: String,
    /// Wait at most this long when exhausted; `None`: the pool's default.
    pub timeout: Option<Duration>,
    /// Host directory to bind at /mnt/staging (a dedicated container).
    pub staging_dir: Option<String>,
    /// `Idempotency-Key`: a second acquire with the same key (of the same tenant) gets the
    /// first one's claim instead of a new one, however the two interleave.
    pub idempotency_key: Option<String>,
}

/// A claim as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimInfo {
    /// Claim id.
    pub id: Uuid,
    /// Template.
    pub template: String,
    /// Container (or sandbox) id.
    pub container_id: String,
    /// Host name.
    pub host: String,
    /// `docker` or `process`.
    pub runtime: RuntimeKind,
    /// False for the process runtime.
    pub isolated: bool,
    /// RFC 3339.
    pub acquired_at: DateTime<Utc>,
    /// `warm`, `cold` or `waited`.
    pub served: String,
    /// Where secrets are.
    pub secrets_dir: String,
    /// Working directory of execs.
    pub workdir: String,
    /// Injected secret names.
    pub secrets: Vec<String>,
}

/// One exec as callers ask for it.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program and arguments (or one shell command with `shell`).
    pub argv: Vec<String>,
    /// Run `argv[0]` through `/bin/sh -c`.
    pub shell: bool,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the claim's, or absolute under /workspace).
    pub workdir: String,
    /// Timeout; `None`: the pool's default.
    pub timeout: Option<Duration>,
    /// Standard input.
    pub stdin: Bytes,
    /// Report memory peak and CPU time.
    pub usage: bool,
}

/// A container in the pool.
#[derive(Debug, Clone)]
struct Pooled {
    id: String,
    host: usize,
    uses: u32,
    idle_since: Instant,
    paused: bool,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Pooled>,
}

#[derive(Default)]
struct TemplateState {
    idle: VecDeque<Pooled>,
    busy: u32,
    creating: u32,
    resetting: u32,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

impl TemplateState {
    fn counts(&self) -> Counts {
        Counts {
            idle: u32::try_from(self.idle.len()).unwrap_or(u32::MAX),
            busy: self.busy,
            creating: self.creating,
            resetting: self.resetting,
            waiting: u32::try_from(self.waiters.len()).unwrap_or(u32::MAX),
        }
    }
}

struct TemplatePool {
    template: Mutex<Template>,
    state: Mutex<TemplateState>,
    retired: AtomicBool,
}

impl TemplatePool {
    fn template(&self) -> Template {
        lock(&self.template).clone()
    }
}

struct LocalClaim {
    info: ClaimInfo,
    tenant: String,
    env: BTreeMap<String, String>,
    pooled: Pooled,
    dedicated: bool,
    broken: AtomicBool,
}

struct HostSlot {
    runtime: Arc<dyn ContainerRuntime>,
    view: HostView,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these structures half-updated in a way the
    // next holder cannot live with (every update is a few field writes), so keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Inner {
    settings: PoolSettings,
    kind: RuntimeKind,
    hosts: Mutex<Vec<HostSlot>>,
    policy: PlacementPolicy,
    templates: Mutex<BTreeMap<String, Arc<TemplatePool>>>,
    claims: Mutex<HashMap<Uuid, Arc<LocalClaim>>>,
    store: Arc<dyn PoolStore>,
    secrets: SecretResolver,
    events: PoolEvents,
    replica: ReplicaIdentity,
    wake: Notify,
    epoch: Instant,
    facts: HostFacts,
    shutdown: CancellationToken,
    rng: Mutex<rand::rngs::StdRng>,
}

/// The pools of every template on every host.
#[derive(Clone)]
pub struct WarmPools {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WarmPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPools")
            .field("replica", &self.inner.replica.id)
            .field("runtime", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

/// Pool sizes for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// `docker` or `process`.
    pub runtime: RuntimeKind,
    /// False for the process runtime.
    pub isolated: bool,
    /// This replica.
    pub replica_id: Uuid,
    /// Per template.
    pub templates: Vec<TemplateStatus>,
    /// Per host.
    pub hosts: Vec<HostStatus>,
}

/// One template's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateStatus {
    /// Name.
    pub name: String,
    /// Counts by state.
    #[serde(flatten)]
    pub counts: Counts,
    /// Idle kept ready.
    pub min_idle: u32,
    /// Most in total.
    pub max_total: u32,
}

/// One host's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Name.
    pub name: String,
    /// Configured on.
    pub enabled: bool,
    /// Answered its last ping.
    pub healthy: bool,
    /// Containers of this replica on it.
    pub containers: u32,
    /// Most it takes.
    pub capacity: u32,
}

/// What a pool is built from.
pub struct PoolParts {
    /// Settings (validated).
    pub settings: PoolSettings,
    /// One runtime per host (all Docker, or the one process runtime), with the host's
    /// weight, capacity (0: derive) and enabled flag.
    pub hosts: Vec<(Arc<dyn ContainerRuntime>, f64, u32, bool)>,
    /// The store.
    pub store: Arc<dyn PoolStore>,
    /// Event publisher.
    pub events: PoolEvents,
    /// Secrets.
    pub secrets: SecretResolver,
    /// Who this replica is.
    pub replica: ReplicaIdentity,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// The `released` event of a claim.
fn released_event(
    claim_id: Uuid,
    tenant: &str,
    container_id: &str,
    template: &str,
) -> Option<liquid_bus::Event> {
    PoolEvents::event(
        "released",
        tenant,
        serde_json::json!({"claim_id": claim_id, "container_id": container_id, "template": template}),
    )
}

/// The `released` event of a claim closed because its replica went away.
fn released_with_replica(row: &ClaimRow) -> Option<liquid_bus::Event> {
    released_event(row.claim_id, &row.tenant, &row.container_id, &row.template)
}

/// How long an `Idempotency-Key` is remembered (the usual 24 hours of HTTP APIs).
const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// How long a release through another replica waits for the owner's reset.
const OWNER_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Subject on which replica `replica` takes release requests for its claims.
fn release_subject(replica: Uuid) -> String {
    format!("svc.container-pool.replica.{replica}.release")
}

fn secs_since(epoch: Instant) -> f64 {
    epoch.elapsed().as_secs_f64()
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 128
}

fn check_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), PoolError> {
    for (k, v) in env {
        if !valid_env_name(k) {
            return Err(PoolError::invalid(
                field,
                format!("`{k}` is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if v.contains('\0') {
            return Err(PoolError::invalid(
                field,
                format!("`{k}` contains a NUL byte"),
            ));
        }
    }
    Ok(())
}

/// Resolves a working directory: relative ones are under `base`; the result must stay in
/// /workspace, /tmp or the staging mount.
fn resolve_workdir(base: &str, requested: &str) -> Result<String, PoolError> {
    let joined = if requested.is_empty() {
        base.to_owned()
    } else if requested.starts_with('/') {
        requested.to_owned()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), requested)
    };
    let joined = joined.trim_end_matches('/').to_owned();
    let joined = if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    };
    check_container_path(&joined, &[WORKDIR, "/tmp", STAGING_DIR]).map_err(|_| {
        PoolError::invalid(
            "workdir",
            format!("`{joined}` must be under {WORKDIR}, /tmp or {STAGING_DIR}, without `..`"),
        )
    })?;
    Ok(joined)
}

impl WarmPools {
    /// Builds the pools: resolves templates (configured, then admin overrides from the store)
    /// with defaults from the hosts' facts, prepares images, records the replica's lease and
    /// sweeps orphans of dead replicas. Background work starts with [`WarmPools::spawn_tasks`].
    pub async fn start(parts: PoolParts) -> Result<WarmPools, PoolError> {
        // Installs the process-wide recorder now (idempotent): metrics recorded before it
        // exists would be lost, and the first scrape is later than the first gauge.
        let _ = liquid_kit::metrics::handle();
        let mut facts = Vec::new();
        for (rt, _, _, enabled) in &parts.hosts {
            if *enabled {
                facts.push(rt.facts().await?);
            }
        }
        let facts = HostFacts::sum(facts.iter());
        let mut configs = parts.settings.templates.clone();
        for (name, cfg) in parts.store.templates().await? {
            configs.insert(name, cfg);
        }
        let templates: Vec<Template> = configs
            .iter()
            .map(|(name, cfg)| Template::resolve(name, cfg, &facts))
            .collect();
        let largest = configs.values().map(|c| c.memory_mib).max().unwrap_or(512);
        let mut hosts = Vec::new();
        let mut kind = RuntimeKind::Process;
        for (rt, weight, capacity, enabled) in parts.hosts {
            kind = rt.kind();
            let capacity = if capacity > 0 {
                capacity
            } else {
                let f = rt.facts().await?;
                autoconf::default_host_capacity(&f, largest)
            };
            let mut view = HostView::new(rt.host(), weight, capacity);
            view.enabled = enabled;
            if enabled {
                rt.prepare(&templates).await?;
            }
            hosts.push(HostSlot { runtime: rt, view });
        }
        let pools = templates
            .into_iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Arc::new(TemplatePool {
                        template: Mutex::new(t),
                        state: Mutex::new(TemplateState::default()),
                        retired: AtomicBool::new(false),
                    }),
                )
            })
            .collect();
        let inner = Inner {
            settings: parts.settings,
            kind,
            hosts: Mutex::new(hosts),
            policy: PlacementPolicy::default(),
            templates: Mutex::new(pools),
            claims: Mutex::new(HashMap::new()),
            store: parts.store,
            secrets: parts.secrets,
            events: parts.events,
            replica: parts.replica,
            wake: Notify::new(),
            epoch: Instant::now(),
            facts,
            shutdown: parts.shutdown,
            rng: Mutex::new(rand::rngs::StdRng::from_os_rng()),
        };
        let pools = WarmPools {
            inner: Arc::new(inner),
        };
        pools.register_metrics();
        pools.heartbeat().await?;
        let swept = pools.sweep_orphans().await?;
        if swept > 0 {
            tracing::info!(swept, "removed containers of dead pool replicas");
        }
        pools.publish_gauges();
        Ok(pools)
    }

    /// `docker` or `process`.
    pub fn runtime_kind(&self) -> RuntimeKind {
        self.inner.kind
    }

    /// This replica's identity.
    pub fn replica(&self) -> &ReplicaIdentity {
        &self.inner.replica
    }

    /// The secrets resolver.
    pub fn secrets(&self) -> &SecretResolver {
        &self.inner.secrets
    }

    /// The settings the pool runs with.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Starts the replenisher, the health checker, the lease keeper and the drain at shutdown.
    pub fn spawn_tasks(
        &self,
        spawn: impl Fn(&'static str, futures_util::future::BoxFuture<'static, ()>),
    ) {
        let p = self.clone();
        spawn(
            "pool-replenish",
            Box::pin(async move { p.replenish_loop().await }),
        );
        let p = self.clone();
        spawn(
            "pool-health",
            Box::pin(async move { p.health_loop().await }),
        );
        let p = self.clone();
        spawn("pool-lease", Box::pin(async move { p.lease_loop().await }));
        let p = self.clone();
        spawn(
            "pool-outbox",
            Box::pin(async move {
                p.inner
                    .events
                    .relay(p.inner.store.clone(), p.inner.shutdown.clone())
                    .await;
            }),
        );
        let p = self.clone();
        spawn(
            "pool-owner-releases",
            Box::pin(async move { p.serve_owner_releases().await }),
        );
        let p = self.clone();
        spawn(
            "pool-drain",
            Box::pin(async move {
                p.inner.shutdown.cancelled().await;
                p.drain().await;
            }),
        );
    }

    fn labels(&self, template: &str) -> HashMap<String, String> {
        let r = &self.inner.replica;
        HashMap::from([
            (OWNER_LABEL.to_owned(), OWNER.to_owned()),
            (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
            (POOL_LABEL.to_owned(), self.inner.settings.pool.name.clone()),
            (REPLICA_LABEL.to_owned(), r.id.to_string()),
            (HOSTNAME_LABEL.to_owned(), r.hostname.clone()),
            (PROCESS_LABEL.to_owned(), r.process.clone()),
            (TEMPLATE_LABEL.to_owned(), template.to_owned()),
        ])
    }

    fn template_pool(&self, name: &str) -> Result<Arc<TemplatePool>, PoolError> {
        let name = if name.is_empty() { "default" } else { name };
        lock(&self.inner.templates)
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::UnknownTemplate(name.to_owned()))
    }

    fn runtime(&self, host: usize) -> Option<Arc<dyn ContainerRuntime>> {
        lock(&self.inner.hosts).get(host).map(|h| h.runtime.clone())
    }

    fn runtime_named(&self, name: &str) -> Option<Arc<dyn ContainerRuntime>> {
        lock(&self.inner.hosts)
            .iter()
            .find(|h| h.view.name == name)
            .map(|h| h.runtime.clone())
    }

    fn host_name(&self, host: usize) -> String {
        lock(&self.inner.hosts)
            .get(host)
            .map(|h| h.view.name.clone())
            .unwrap_or_default()
    }

    /// Picks a host and counts the container against it at once.
    fn place(&self) -> Result<usize, String> {
        let now = secs_since(self.inner.epoch);
        let mut hosts = lock(&self.inner.hosts);
        let views: Vec<HostView> = hosts.iter().map(|h| h.view.clone()).collect();
        let choice = {
            let mut rng = lock(&self.inner.rng);
            placement::choose(&views, now, &self.inner.policy, &mut *rng)
        };
        match choice {
            Some(i) => {
                let half = self.inner.policy.half_life_secs;
                let v = &mut hosts[i].view;
                v.containers += 1;
                v.requests.add(now, half, 1.0);
                Ok(i)
            }
            None => Err(placement::explain_none(&views)),
        }
    }

    fn host_released(&self, host: usize) {
        if let Some(h) = lock(&self.inner.hosts).get_mut(host) {
            h.view.containers = h.view.containers.saturating_sub(1);
        }
    }

    fn host_failed(&self, host: usize) {
        let now = secs_since(self.inner.epoch);
        let half = self.inner.policy.half_life_secs;
        if let Some(h) = lock(&self.inner.hosts).get_mut(host) {
            h.view.failures.add(now, half, 1.0);
        }
    }

    /// Creates a container of `template` on an already placed `host`.
    async fn create_on(
        &self,
        host: usize,
        template: &Template,
        staging_dir: Option<String>,
    ) -> Result<Pooled, PoolError> {
        let runtime = self
            .runtime(host)
            .ok_or_else(|| PoolError::NoHost("the chosen host vanished".into()))?;
        let short = Uuid::now_v7().simple().to_string();
        let spec = CreateSpec {
            template: template.clone(),
            labels: self.labels(&template.name),
            name: format!(
                "liquid-pool-{}-{}-{}",
                self.inner.settings.pool.name,
                template.name,
                &short[short.len() - 12..]
            ),
            staging_dir,
        };
        let host_name = runtime.host().to_owned();
        match runtime.create(&spec).await {
            Ok(id) => {
                metrics::counter!(M_CREATED, "template" => template.name.clone(), "host" => host_name)
                    .increment(1);
                Ok(Pooled {
                    id,
                    host,
                    uses: 0,
                    idle_since: Instant::now(),
                    paused: false,
                })
            }
            Err(e) => {
                self.host_failed(host);
                self.host_released(host);
                metrics::counter!(M_CREATE_FAILURES, "template" => template.name.clone(), "host" => host_name)
                    .increment(1);
                tracing::warn!(error = %e, template = %template.name, "container create failed");
                Err(e)
            }
        }
    }

    /// Removes a container and frees its host slot; failures are logged (the sweep retries).
    async fn destroy(&self, p: &Pooled, reason: &'static str, template: &str, tenant: &str) {
        if let Some(rt) = self.runtime(p.host)
            && let Err(error) = rt.remove(&p.id).await
        {
            tracing::warn!(%error, container = %p.id, "container removal failed; the sweep will retry");
        }
        self.host_released(p.host);
        metrics::counter!(M_REAPED, "reason" => reason).increment(1);
        self.emit(
            "reaped",
            tenant,
            serde_json::json!({
                "container_id": p.id, "template": template, "host": self.host_name(p.host), "reason": reason,
            }),
        )
        .await;
    }

    /// Queues an event that belongs to no claim change.
    async fn emit(&self, verb: &str, tenant: &str, data: serde_json::Value) {
        self.inner
            .events
            .emit(self.inner.store.as_ref(), verb, tenant, data)
            .await;
    }

    /// Hands a ready container to the oldest waiter, or puts it back idle.
    fn deliver(&self, tp: &TemplatePool, mut p: Pooled) {
        let mut st = lock(&tp.state);
        while let Some(w) = st.waiters.pop_front() {
            st.busy += 1;
            match w.tx.send(p) {
                Ok(()) => return,
                Err(back) => {
                    st.busy -= 1;
                    p = back;
                }
            }
        }
        p.idle_since = Instant::now();
        st.idle.push_back(p);
    }

    /// Readies a fresh or reset container for the idle queue (pausing it when the template
    /// says so and nobody waits), then delivers it.
    async fn return_to_pool(&self, tp: Arc<TemplatePool>, mut p: Pooled) {
        let t = tp.template();
        if tp.retired.load(Ordering::Relaxed) || self.inner.shutdown.is_cancelled() {
            self.destroy(&p, "retired", &t.name, SYSTEM_TENANT).await;
            return;
        }
        let nobody_waits = lock(&tp.state).waiters.is_empty();
        if t.pause_idle
            && nobody_waits
            && let Some(rt) = self.runtime(p.host)
            && rt.pause(&p.id).await.is_ok()
        {
            p.paused = true;
        }
        self.deliver(&tp, p);
        self.publish_gauges();
    }

    /// Claims a container. See the module docs for the order of things.
    pub async fn acquire(&self, tenant: &str, req: AcquireRequest) -> Result<ClaimInfo, PoolError> {
        self.acquire_keyed(tenant, req).await.map(|(info, _)| info)
    }

    /// Claims a container, honouring the request's `Idempotency-Key`; the flag is true when
    /// the claim is an earlier request's with the same key (nothing new was claimed).
    ///
    /// The key is registered before anything is claimed (insert first, in the database every
    /// replica shares), so of two concurrent requests with one key exactly one claims and the
    /// other waits for that claim. A failed acquire drops its registration, so a retry claims.
    pub async fn acquire_keyed(
        &self,
        tenant: &str,
        req: AcquireRequest,
    ) -> Result<(ClaimInfo, bool), PoolError> {
        let Some(key) = req.idempotency_key.clone() else {
            return self
                .acquire_claim(tenant, req, None)
                .await
                .map(|c| (c, false));
        };
        if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
            return Err(PoolError::invalid(
                "idempotency_key",
                "must be 1 to 200 printable characters",
            ));
        }
        let settings = &self.inner.settings.pool;
        let wait = Duration::from_millis(settings.max_acquire_timeout_ms);
        // A registration without a claim older than the longest acquire (plus a minute) is a
        // request that died; it is taken over.
        let stale_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2) + 60_000;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = Utc::now().timestamp_millis();
            match self
                .inner
                .store
                .begin_idempotent(tenant, &key, now, now.saturating_sub(stale_ms))
                .await?
            {
                IdempotencyState::Owned => {
                    let claimed = self.acquire_claim(tenant, req, Some(&key)).await;
                    if claimed.is_err()
                        && let Err(error) = self.inner.store.abandon_idempotent(tenant, &key).await
                    {
                        tracing::warn!(%error, "idempotency key not released after a failed acquire");
                    }
                    return claimed.map(|c| (c, false));
                }
                IdempotencyState::Claimed(id) => {
                    return match self.claim(tenant, id).await {
                        Ok(c) => Ok((c, true)),
                        Err(PoolError::UnknownClaim(_)) => Err(PoolError::Conflict(format!(
                            "Idempotency-Key `{key}` was used for claim {id}, which has been released"
                        ))),
                        Err(e) => Err(e),
                    };
                }
                IdempotencyState::Pending => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PoolError::Conflict(format!(
                            "a request with Idempotency-Key `{key}` is still acquiring"
                        )));
                    }
                    tokio::select! {
                        () = self.inner.shutdown.cancelled() => return Err(PoolError::ShuttingDown),
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        }
    }

    async fn acquire_claim(
        &self,
        tenant: &str,
        req: AcquireRequest,
        idempotency_key: Option<&str>,
    ) -> Result<ClaimInfo, PoolError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(PoolError::ShuttingDown);
        }
        let started = Instant::now();
        let tp = self.template_pool(&req.template)?;
        let template = tp.template();
        check_env("env", &req.env)?;
        let workdir = resolve_workdir(WORKDIR, &req.workdir)?;
        let settings = &self.inner.settings.pool;
        let timeout = match req.timeout {
            Some(t) if t.is_zero() => Duration::from_millis(settings.acquire_timeout_ms),
            Some(t) => t.min(Duration::from_millis(settings.max_acquire_timeout_ms)),
            None => Duration::from_millis(settings.acquire_timeout_ms),
        };
        let mut names = req.secrets.clone();
        names.sort();
        names.dedup();
        for s in &names {
            if !template.allows_secret(s) {
                return Err(PoolError::SecretNotAllowed {
                    template: template.name.clone(),
                    secret: s.clone(),
                });
            }
            if !self.inner.secrets.knows(s) {
                return Err(PoolError::UnknownSecret(s.clone()));
            }
        }
        // Fetch secrets before taking a container, so a backend failure costs no capacity.
        let mut values = Vec::new();
        for s in &names {
            values.push((s.clone(), self.inner.secrets.resolve(s).await?));
        }
        if let Some(dir) = &req.staging_dir {
            self.check_staging(dir)?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (pooled, served, dedicated) = match &req.staging_dir {
                Some(dir) => {
                    let p = self.take_dedicated(&tp, &template, dir).await?;
                    (p, "cold", true)
                }
                None => {
                    let (p, served) = self.take(&tp, &template, deadline, timeout).await?;
                    (p, served, false)
                }
            };
            match self.bind(&pooled, &values, &workdir).await {
                Ok(()) => {
                    let info = self
                        .record_claim(
                            tenant,
                            &template,
                            pooled,
                            served,
                            dedicated,
                            &names,
                            &workdir,
                            &req.env,
                            idempotency_key,
                        )
                        .await?;
                    metrics::histogram!(M_ACQUIRE, "template" => template.name.clone(), "served" => served)
                        .record(started.elapsed().as_secs_f64());
                    self.publish_gauges();
                    return Ok(info);
                }
                Err(e) => {
                    tracing::warn!(error = %e, container = %pooled.id, "binding a claim failed; replacing the container");
                    {
                        let mut st = lock(&tp.state);
                        st.busy = st.busy.saturating_sub(1);
                    }
                    self.destroy(&pooled, "unhealthy", &template.name, SYSTEM_TENANT)
                        .await;
                    self.inner.wake.notify_one();
                    if attempts >= 2 {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn check_staging(&self, dir: &str) -> Result<(), PoolError> {
        let roots = &self.inner.settings.pool.mount_roots;
        if !dir.starts_with('/') || dir.split('/').any(|s| s == "..") {
            return Err(PoolError::invalid(
                "staging_dir",
                "must be an absolute host path without `..`",
            ));
        }
        if !roots
            .iter()
            .any(|r| dir == r || dir.starts_with(&format!("{}/", r.trim_end_matches('/'))))
        {
            return Err(PoolError::invalid(
                "staging_dir",
                format!("`{dir}` is not under a configured pool.mount_roots entry"),
            ));
        }
        if !std::path::Path::new(dir).is_dir() {
            return Err(PoolError::invalid(
                "staging_dir",
                format!("`{dir}` is not a directory"),
            ));
        }
        Ok(())
    }

    /// A fresh container of its own for a claim with a staging mount (never pooled).
    async fn take_dedicated(
        &self,
        tp: &TemplatePool,
        template: &Template,
        dir: &str,
    ) -> Result<Pooled, PoolError> {
        {
            let mut st = lock(&tp.state);
            if !st.counts().may_create(template.max_total) {
                return Err(PoolError::Exhausted {
                    template: template.name.clone(),
                    waited_ms: 0,
                });
            }
            st.creating += 1;
        }
        let host = match self.place() {
            Ok(h) => h,
            Err(why) => {
                lock(&tp.state).creating -= 1;
                return Err(PoolError::NoHost(why));
            }
        };
        let created = self.create_on(host, template, Some(dir.to_owned())).await;
        let mut st = lock(&tp.state);
        st.creating -= 1;
        let p = created?;
        st.busy += 1;
        Ok(p)
    }

    /// Takes an idle container, creates one, or waits in line.
    async fn take(
        &self,
        tp: &Arc<TemplatePool>,
        template: &Template,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(Pooled, &'static str), PoolError> {
        enum Step {
            Warm(Pooled),
            Create,
            Wait(u64, oneshot::Receiver<Pooled>),
        }
        loop {
            let step = {
                let mut st = lock(&tp.state);
                if let Some(p) = st.idle.pop_front() {
                    st.busy += 1;
                    Step::Warm(p)
                } else if st.waiters.is_empty() && st.counts().may_create(template.max_total) {
                    st.creating += 1;
                    Step::Create
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.next_waiter += 1;
                    let id = st.next_waiter;
                    st.waiters.push_back(Waiter { id, tx });
                    Step::Wait(id, rx)
                }
            };
            self.publish_gauges();
            match step {
                Step::Warm(mut p) => {
                    if p.paused {
                        let unpaused = match self.runtime(p.host) {
                            Some(rt) => rt.unpause(&p.id).await.is_ok(),
                            None => false,
                        };
                        if !unpaused {
                            lock(&tp.state).busy -= 1;
                            self.destroy(&p, "unhealthy", &template.name, SYSTEM_TENANT)
                                .await;
                            self.inner.wake.notify_one();
                            continue;
                        }
                        p.paused = false;
                    }
                    return Ok((p, "warm"));
                }
                Step::Create => {
                    let host = match self.place() {
                        Ok(h) => h,
                        Err(why) => {
                            lock(&tp.state).creating -= 1;
                            // No host can take it now; wait for a release instead, if any
                            // container of this template exists at all.
                            if lock(&tp.state).counts().total() == 0 {
                                return Err(PoolError::NoHost(why));
                            }
                            let (tx, rx) = oneshot::channel();
                            let id = {
                                let mut st = lock(&tp.state);
                                st.next_waiter += 1;
                                let id = st.next_waiter;
                                st.waiters.push_back(Waiter { id, tx });
                                id
                            };
                            return self.wait(tp, template, id, rx, deadline, timeout).await;
                        }
                    };
                    let created = self.create_on(host, template, None).await;
                    let mut st = lock(&tp.state);
                    st.creating -= 1;
                    match created {
                        Ok(p) => {
                            st.busy += 1;
                            return Ok((p, "cold"));
                        }
                        Err(e) => {
                            drop(st);
                            self.inner.wake.notify_one();
                            return Err(e);
                        }
                    }
                }
                Step::Wait(id, rx) => {
                    self.inner.wake.notify_one();
                    return self.wait(tp, template, id, rx, deadline, timeout).await;
                }
            }
        }
    }

    async fn wait(
        &self,
        tp: &Arc<TemplatePool>,
        template: &Template,
        id: u64,
        mut rx: oneshot::Receiver<Pooled>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(Pooled, &'static str), PoolError> {
        let waited = tokio::select! {
            r = tokio::time::timeout_at(deadline, &mut rx) => r,
            () = self.inner.shutdown.cancelled() => return Err(PoolError::ShuttingDown),
        };
        let got = match waited {
            Ok(Ok(p)) => Some(p),
            Ok(Err(_)) => return Err(PoolError::ShuttingDown),
            Err(_) => {
                let mut st = lock(&tp.state);
                if let Some(pos) = st.waiters.iter().position(|w| w.id == id) {
                    st.waiters.remove(pos);
                    None
                } else {
                    drop(st);
                    // Delivered between the timeout and the lock: it is in the channel.
                    rx.try_recv().ok()
                }
            }
        };
        self.publish_gauges();
        match got {
            Some(mut p) => {
                if p.paused
                    && let Some(rt) = self.runtime(p.host)
                    && rt.unpause(&p.id).await.is_ok()
                {
                    p.paused = false;
                }
                Ok((p, "waited"))
            }
            None => Err(PoolError::Exhausted {
                template: template.name.clone(),
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Binds the claim's per-claim state: secrets as files and the working directory.
    async fn bind(
        &self,
        p: &Pooled,
        secrets: &[(String, Secret<String>)],
        workdir: &str,
    ) -> Result<(), PoolError> {
        let rt = self
            .runtime(p.host)
            .ok_or_else(|| PoolError::NoHost("host vanished".into()))?;
        rt.write_secrets(&p.id, secrets).await?;
        if workdir != WORKDIR && workdir.starts_with(WORKDIR) {
            let (tx, _rx) = mpsc::channel(4);
            let out = rt
                .exec(
                    &p.id,
                    &ExecSpec {
                        argv: vec!["/bin/mkdir".into(), "-p".into(), workdir.to_owned()],
                        workdir: WORKDIR.into(),
                        timeout: Duration::from_secs(10),
                        ..ExecSpec::default()
                    },
                    tx,
                )
                .await?;
            if out.exit_code != 0 {
                return Err(PoolError::invalid(
                    "workdir",
                    format!("cannot create {workdir}"),
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_claim(
        &self,
        tenant: &str,
        template: &Template,
        pooled: Pooled,
        served: &str,
        dedicated: bool,
        secrets: &[String],
        workdir: &str,
        env: &BTreeMap<String, String>,
        idempotency_key: Option<&str>,
    ) -> Result<ClaimInfo, PoolError> {
        let rt = self
            .runtime(pooled.host)
            .ok_or_else(|| PoolError::NoHost("host vanished".into()))?;
        let info = ClaimInfo {
            id: Uuid::now_v7(),
            template: template.name.clone(),
            container_id: pooled.id.clone(),
            host: rt.host().to_owned(),
            runtime: rt.kind(),
            isolated: rt.kind() == RuntimeKind::Docker,
            acquired_at: Utc::now(),
            served: served.to_owned(),
            secrets_dir: SECRETS_DIR.to_owned(),
            workdir: workdir.to_owned(),
            secrets: secrets.to_vec(),
        };
        let row = ClaimRow {
            claim_id: info.id,
            tenant: tenant.to_owned(),
            template: info.template.clone(),
            container_id: info.container_id.clone(),
            host: info.host.clone(),
            runtime: info.runtime.as_str().to_owned(),
            replica_id: self.inner.replica.id,
            served: info.served.clone(),
            workdir: info.workdir.clone(),
            env: env.clone(),
            secrets: secrets.to_vec(),
            acquired_at: info.acquired_at,
            released_at: None,
        };
        let claim = Arc::new(LocalClaim {
            info: info.clone(),
            tenant: tenant.to_owned(),
            env: env.clone(),
            pooled,
            dedicated,
            broken: AtomicBool::new(false),
        });
        lock(&self.inner.claims).insert(info.id, claim.clone());
        let acquired = PoolEvents::event(
            "acquired",
            tenant,
            serde_json::json!({
                "claim_id": info.id, "container_id": info.container_id, "template": info.template,
                "host": info.host, "runtime": info.runtime, "served": info.served,
            }),
        );
        let recorded = self
            .inner
            .store
            .insert_claim(&row, acquired.as_slice(), idempotency_key)
            .await;
        if let Err(e) = recorded {
            // Not recorded: give the container back rather than hold an untracked claim.
            lock(&self.inner.claims).remove(&info.id);
            let _ = self.release_local(claim).await;
            return Err(e);
        }
        self.inner.events.queued();
        Ok(info)
    }

    fn local_claim(&self, tenant: &str, id: Uuid) -> Option<Arc<LocalClaim>> {
        lock(&self.inner.claims)
            .get(&id)
            .filter(|c| c.tenant == tenant)
            .cloned()
    }

    /// The claim as its tenant sees it.
    pub async fn claim(&self, tenant: &str, id: Uuid) -> Result<ClaimInfo, PoolError> {
        if let Some(c) = self.local_claim(tenant, id) {
            return Ok(c.info.clone());
        }
        let row = self
            .inner
            .store
            .open_claim(id, tenant)
            .await?
            .ok_or_else(|| PoolError::UnknownClaim(id.to_string()))?;
        Ok(ClaimInfo {
            id: row.claim_id,
            template: row.template,
            container_id: row.container_id,
            host: row.host,
            runtime: if row.runtime == "docker" {
                RuntimeKind::Docker
            } else {
                RuntimeKind::Process
            },
            isolated: row.runtime == "docker",
            acquired_at: row.acquired_at,
            served: row.served,
            secrets_dir: SECRETS_DIR.to_owned(),
            workdir: row.workdir,
            secrets: row.secrets,
        })
    }

    /// Gives a claim back: its container is reset (or replaced) before anyone else gets it.
    ///
    /// The release is recorded (with its `released` event) first, so it happens once whichever
    /// replicas are asked. A claim another replica holds is reset by that replica, asked over
    /// the bus, which answers once the container is clean and its slot free; when it does not
    /// answer (it died), the container is removed here instead.
    pub async fn release(&self, tenant: &str, id: Uuid) -> Result<(), PoolError> {
        let claim = {
            let mut claims = lock(&self.inner.claims);
            match claims.get(&id) {
                Some(c) if c.tenant == tenant => claims.remove(&id),
                _ => None,
            }
        };
        if let Some(c) = claim {
            let event = released_event(id, tenant, &c.info.container_id, &c.info.template);
            if let Err(e) = self
                .inner
                .store
                .release_claim(id, Utc::now(), event.as_slice())
                .await
            {
                // Not recorded: the claim stays the caller's, as it was.
                lock(&self.inner.claims).insert(id, c);
                return Err(e);
            }
            self.inner.events.queued();
            return self.release_local(c).await;
        }
        let row = self
            .inner
            .store
            .open_claim(id, tenant)
            .await?
            .ok_or_else(|| PoolError::UnknownClaim(id.to_string()))?;
        let event = released_event(id, tenant, &row.container_id, &row.template);
        if !self
            .inner
            .store
            .release_claim(id, Utc::now(), event.as_slice())
            .await?
        {
            return Err(PoolError::UnknownClaim(id.to_string()));
        }
        self.inner.events.queued();
        if row.replica_id == self.inner.replica.id {
            // Ours but no longer in memory: a release racing this one took it.
            return Ok(());
        }
        let subject = release_subject(row.replica_id);
        let asked = self
            .inner
            .events
            .bus()
            .request(
                &subject,
                liquid_bus::Headers::new(),
                Bytes::from(id.to_string()),
                OWNER_RELEASE_TIMEOUT,
            )
            .await;
        match asked {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, claim = %id, owner = %row.replica_id, "the owning replica did not reset the claim; removing its container");
                if let Some(rt) = self.runtime_named(&row.host) {
                    rt.remove(&row.container_id).await?;
                }
                self.emit(
                    "reaped",
                    tenant,
                    serde_json::json!({
                        "container_id": row.container_id, "template": row.template, "host": row.host,
                        "reason": "replaced",
                    }),
                )
                .await;
                Ok(())
            }
        }
    }

    /// Serves release requests other replicas send for claims this replica holds (see
    /// [`WarmPools::release`]), until shutdown.
    async fn serve_owner_releases(&self) {
        let subject = release_subject(self.inner.replica.id);
        let mut requests = match self.inner.events.bus().serve(&subject).await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, %subject, "cannot serve release requests; releases through other replicas fall back to removal");
                return;
            }
        };
        loop {
            let request = tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                r = requests.next() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            let claim = std::str::from_utf8(&request.message.payload)
                .ok()
                .and_then(|t| Uuid::parse_str(t).ok());
            let p = self.clone();
            tokio::spawn(async move {
                if let Some(id) = claim {
                    let local = lock(&p.inner.claims).remove(&id);
                    if let Some(c) = local
                        && let Err(error) = p.release_local(c).await
                    {
                        tracing::warn!(%error, claim = %id, "release for another replica failed");
                    }
                }
                // Answered in every case: whether this call or the health check did the
                // reset, the owner is alive and the container is not left behind.
                let _ = request
                    .respond(liquid_bus::Headers::new(), Bytes::from_static(b"ok"))
                    .await;
            });
        }
    }

    async fn release_local(&self, c: Arc<LocalClaim>) -> Result<(), PoolError> {
        let tp = self.template_pool(&c.info.template).ok();
        {
            if let Some(tp) = &tp {
                let mut st = lock(&tp.state);
                st.busy = st.busy.saturating_sub(1);
                st.resetting += 1;
            }
        }
        let mut p = c.pooled.clone();
        p.uses += 1;
        let template = tp.as_ref().map(|t| t.template());
        let replace = c.dedicated
            || c.broken.load(Ordering::Relaxed)
            || template
                .as_ref()
                .is_none_or(|t| t.on_release == ReleasePolicy::Replace || p.uses >= t.max_uses);
        let mut reset_ok = false;
        if !replace && let Some(rt) = self.runtime(p.host) {
            match rt.reset(&p.id).await {
                Ok(clean) => reset_ok = clean,
                Err(error) => tracing::warn!(%error, container = %p.id, "reset failed; replacing"),
            }
        }
        if let Some(tp) = &tp {
            lock(&tp.state).resetting -= 1;
        }
        let name = c.info.template.clone();
        if reset_ok && let Some(tp) = tp {
            self.return_to_pool(tp, p).await;
        } else {
            let reason = if c.dedicated { "dedicated" } else { "replaced" };
            self.destroy(&p, reason, &name, &c.tenant).await;
            self.inner.wake.notify_one();
        }
        self.publish_gauges();
        Ok(())
    }

    /// Runs a command in a claim's container, streaming output into `sink`.
    pub async fn exec(
        &self,
        tenant: &str,
        id: Uuid,
        req: ExecRequest,
        sink: mpsc::Sender<ExecChunk>,
    ) -> Result<ExecOutcome, PoolError> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(PoolError::invalid("argv", "must name a program"));
        }
        if req.argv.iter().any(|a| a.contains('\0')) {
            return Err(PoolError::invalid("argv", "must not contain NUL bytes"));
        }
        if req.shell && req.argv.len() != 1 {
            return Err(PoolError::invalid(
                "argv",
                "with shell=true, pass exactly one command string",
            ));
        }
        check_env("env", &req.env)?;
        let (rt, container, claim_env, claim_workdir, local) = self.target(tenant, id).await?;
        let settings = &self.inner.settings.pool;
        let timeout = match req.timeout {
            Some(t) if !t.is_zero() => t.min(Duration::from_millis(settings.max_exec_timeout_ms)),
            _ => Duration::from_millis(settings.exec_timeout_ms),
        };
        let workdir = resolve_workdir(&claim_workdir, &req.workdir)?;
        let argv = if req.shell {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), req.argv[0].clone()]
        } else {
            req.argv
        };
        let mut env: Vec<(String, String)> = claim_env.into_iter().collect();
        env.extend(req.env);
        if rt.kind() == RuntimeKind::Docker {
            env.push(("LIQUID_SECRETS_DIR".into(), SECRETS_DIR.into()));
            env.push(("LIQUID_WORKDIR".into(), WORKDIR.into()));
        }
        let spec = ExecSpec {
            argv,
            env,
            workdir,
            timeout,
            stdin: req.stdin,
            usage: req.usage,
        };
        let outcome = rt.exec(&container, &spec, sink).await.map_err(|e| {
            if let Some(c) = &local {
                c.broken.store(true, Ordering::Relaxed);
            }
            match e {
                PoolError::Docker { reason, .. }
                    if reason.contains("404") || reason.contains("is not running") =>
                {
                    PoolError::ContainerGone(id.to_string())
                }
                other => other,
            }
        })?;
        metrics::histogram!(M_EXEC, "runtime" => rt.kind().as_str())
            .record(Duration::from_millis(outcome.duration_ms).as_secs_f64());
        if outcome.restarted
            && let Some(c) = &local
        {
            // The restart emptied the tmpfs: put the claim's secrets back.
            let mut values = Vec::new();
            for s in &c.info.secrets {
                values.push((s.clone(), self.inner.secrets.resolve(s).await?));
            }
            rt.write_secrets(&container, &values).await?;
        }
        Ok(outcome)
    }

    async fn target(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<
        (
            Arc<dyn ContainerRuntime>,
            String,
            BTreeMap<String, String>,
            String,
            Option<Arc<LocalClaim>>,
        ),
        PoolError,
    > {
        if let Some(c) = self.local_claim(tenant, id) {
            let rt = self
                .runtime(c.pooled.host)
                .ok_or_else(|| PoolError::ContainerGone(id.to_string()))?;
            return Ok((
                rt,
                c.pooled.id.clone(),
                c.env.clone(),
                c.info.workdir.clone(),
                Some(c),
            ));
        }
        let row = self
            .inner
            .store
            .open_claim(id, tenant)
            .await?
            .ok_or_else(|| PoolError::UnknownClaim(id.to_string()))?;
        let rt = self.runtime_named(&row.host).ok_or_else(|| {
            PoolError::FailedPrecondition(format!(
                "claim {id} lives on host `{}`, which this replica is not configured for",
                row.host
            ))
        })?;
        Ok((rt, row.container_id, row.env, row.workdir, None))
    }

    /// Writes a secret into a claim's container for the length of one run (runners).
    pub async fn with_secret_file(
        &self,
        tenant: &str,
        id: Uuid,
        name: &str,
    ) -> Result<Option<String>, PoolError> {
        if !self.inner.secrets.knows(name) {
            return Ok(None);
        }
        let (rt, container, ..) = self.target(tenant, id).await?;
        let value = self.inner.secrets.resolve(name).await?;
        rt.write_secrets(&container, &[(name.to_owned(), value)])
            .await?;
        Ok(Some(format!("{SECRETS_DIR}/{name}")))
    }

    /// Removes a secret file written by [`WarmPools::with_secret_file`].
    pub async fn drop_secret_file(
        &self,
        tenant: &str,
        id: Uuid,
        name: &str,
    ) -> Result<(), PoolError> {
        let (rt, container, ..) = self.target(tenant, id).await?;
        rt.remove_secrets(&container, &[name.to_owned()]).await
    }

    /// Unpacks a tar archive into a directory of the claim's container.
    pub async fn put_archive(
        &self,
        tenant: &str,
        id: Uuid,
        path: &str,
        tar: Bytes,
    ) -> Result<(), PoolError> {
        let (rt, container, _, workdir, _) = self.target(tenant, id).await?;
        let path = resolve_workdir(&workdir, path)?;
        rt.put_archive(&container, &path, tar).await
    }

    /// A path of the claim's container as a tar archive.
    pub async fn get_archive(
        &self,
        tenant: &str,
        id: Uuid,
        path: &str,
    ) -> Result<Bytes, PoolError> {
        let (rt, container, _, workdir, _) = self.target(tenant, id).await?;
        let path = resolve_workdir(&workdir, path)?;
        rt.get_archive(&container, &path).await
    }

    /// Resolved templates.
    pub fn templates(&self) -> Vec<Template> {
        lock(&self.inner.templates)
            .values()
            .map(|t| t.template())
            .collect()
    }

    /// Adds or changes a template at run time (admin API); stored, so it survives restarts.
    pub async fn put_template(
        &self,
        name: &str,
        config: &TemplateConfig,
    ) -> Result<Template, PoolError> {
        crate::domain::template::validate_config(name, config, &BTreeMap::new()).map_err(|e| {
            match e {
                liquid_kit::config::ConfigError::Invalid { key, reason } => {
                    PoolError::invalid(key, reason)
                }
                other => PoolError::invalid("template", other.to_string()),
            }
        })?;
        let template = Template::resolve(name, config, &self.inner.facts);
        let runtimes: Vec<_> = lock(&self.inner.hosts)
            .iter()
            .filter(|h| h.view.enabled)
            .map(|h| h.runtime.clone())
            .collect();
        for rt in runtimes {
            rt.prepare(std::slice::from_ref(&template)).await?;
        }
        self.inner.store.put_template(name, config).await?;
        let existing = lock(&self.inner.templates).get(name).cloned();
        match existing {
            Some(tp) => {
                *lock(&tp.template) = template.clone();
            }
            None => {
                lock(&self.inner.templates).insert(
                    name.to_owned(),
                    Arc::new(TemplatePool {
                        template: Mutex::new(template.clone()),
                        state: Mutex::new(TemplateState::default()),
                        retired: AtomicBool::new(false),
                    }),
                );
            }
        }
        self.inner.wake.notify_one();
        Ok(template)
    }

    /// Drops a template override; a template that only existed as an override is retired
    /// (idle containers removed, claimed ones removed on release).
    pub async fn delete_template(&self, name: &str) -> Result<(), PoolError> {
        if !self.inner.store.delete_template(name).await? {
            return Err(PoolError::UnknownTemplate(name.to_owned()));
        }
        if let Some(cfg) = self.inner.settings.templates.get(name) {
            let t = Template::resolve(name, cfg, &self.inner.facts);
            if let Some(tp) = lock(&self.inner.templates).get(name) {
                *lock(&tp.template) = t;
            }
            return Ok(());
        }
        let removed = lock(&self.inner.templates).remove(name);
        if let Some(tp) = removed {
            tp.retired.store(true, Ordering::Relaxed);
            let idle: Vec<Pooled> = lock(&tp.state).idle.drain(..).collect();
            lock(&tp.state).waiters.clear();
            for p in idle {
                self.destroy(&p, "retired", name, SYSTEM_TENANT).await;
            }
        }
        Ok(())
    }

    /// Sizes of every template and host.
    pub fn status(&self) -> PoolStatus {
        let templates = lock(&self.inner.templates)
            .values()
            .map(|tp| {
                let t = tp.template();
                TemplateStatus {
                    name: t.name.clone(),
                    counts: lock(&tp.state).counts(),
                    min_idle: t.min_idle,
                    max_total: t.max_total,
                }
            })
            .collect();
        let hosts = lock(&self.inner.hosts)
            .iter()
            .map(|h| HostStatus {
                name: h.view.name.clone(),
                enabled: h.view.enabled,
                healthy: h.view.healthy,
                containers: h.view.containers,
                capacity: h.view.capacity,
            })
            .collect();
        PoolStatus {
            runtime: self.inner.kind,
            isolated: self.inner.kind == RuntimeKind::Docker,
            replica_id: self.inner.replica.id,
            templates,
            hosts,
        }
    }

    /// Registers the counters at their current value, so dashboards see zeros rather than no
    /// series before the first event.
    fn register_metrics(&self) {
        let hosts: Vec<String> = lock(&self.inner.hosts)
            .iter()
            .map(|h| h.view.name.clone())
            .collect();
        for t in self.templates() {
            for h in &hosts {
                metrics::counter!(M_CREATED, "template" => t.name.clone(), "host" => h.clone())
                    .increment(0);
                metrics::counter!(M_CREATE_FAILURES, "template" => t.name.clone(), "host" => h.clone()).increment(0);
            }
        }
        for decision in ["allowed", "denied"] {
            metrics::counter!(crate::egress::M_EGRESS, "decision" => decision).increment(0);
        }
        for reason in [
            "idle_ttl",
            "replaced",
            "unhealthy",
            "orphan",
            "dedicated",
            "retired",
        ] {
            metrics::counter!(M_REAPED, "reason" => reason).increment(0);
        }
    }

    fn publish_gauges(&self) {
        let host_names: Vec<String> = lock(&self.inner.hosts)
            .iter()
            .map(|h| h.view.name.clone())
            .collect();
        let busy_by: HashMap<(String, usize), u32> = {
            let mut m = HashMap::new();
            for c in lock(&self.inner.claims).values() {
                *m.entry((c.info.template.clone(), c.pooled.host))
                    .or_insert(0) += 1;
            }
            m
        };
        for tp in lock(&self.inner.templates).values() {
            let name = lock(&tp.template).name.clone();
            let st = lock(&tp.state);
            for (i, host) in host_names.iter().enumerate() {
                let idle = st.idle.iter().filter(|p| p.host == i).count();
                let busy = busy_by.get(&(name.clone(), i)).copied().unwrap_or(0);
                metrics::gauge!(M_CONTAINERS, "template" => name.clone(), "host" => host.clone(), "state" => "idle")
                    .set(idle as f64);
                metrics::gauge!(M_CONTAINERS, "template" => name.clone(), "host" => host.clone(), "state" => "busy")
                    .set(f64::from(busy));
            }
            metrics::gauge!(M_CONTAINERS, "template" => name.clone(), "host" => "", "state" => "creating")
                .set(f64::from(st.creating));
            metrics::gauge!(M_WAITING, "template" => name).set(st.waiters.len() as f64);
        }
        for h in lock(&self.inner.hosts).iter() {
            metrics::gauge!(M_HOST_HEALTHY, "host" => h.view.name.clone()).set(if h.view.healthy {
                1.0
            } else {
                0.0
            });
            metrics::gauge!(M_HOST_CONTAINERS, "host" => h.view.name.clone())
                .set(f64::from(h.view.containers));
        }
    }

    /// One round of replenishing and idle TTL; the loop runs it on a timer and on demand.
    pub async fn replenish_once(&self) {
        let pools: Vec<Arc<TemplatePool>> = lock(&self.inner.templates).values().cloned().collect();
        for tp in pools {
            let t = tp.template();
            // Idle TTL first, so what expires is not counted as coming.
            let expired: Vec<Pooled> = {
                let mut st = lock(&tp.state);
                let ages: Vec<Duration> = st.idle.iter().map(|p| p.idle_since.elapsed()).collect();
                let idx = capacity::expired_idle(&ages, t.min_idle, t.idle_ttl);
                let mut out = Vec::new();
                for i in idx.into_iter().rev() {
                    if let Some(p) = st.idle.remove(i) {
                        out.push(p);
                    }
                }
                out
            };
            for p in expired {
                self.destroy(&p, "idle_ttl", &t.name, SYSTEM_TENANT).await;
            }
            let n = {
                let mut st = lock(&tp.state);
                let n = capacity::replenish_count(&st.counts(), t.min_idle, t.max_total);
                st.creating += n;
                n
            };
            let mut creations = Vec::new();
            for _ in 0..n {
                let host = match self.place() {
                    Ok(h) => h,
                    Err(why) => {
                        tracing::debug!(why, template = %t.name, "no host for replenishing");
                        lock(&tp.state).creating -= 1;
                        continue;
                    }
                };
                let p = self.clone();
                let tp = tp.clone();
                let t = t.clone();
                creations.push(async move {
                    let created = p.create_on(host, &t, None).await;
                    lock(&tp.state).creating -= 1;
                    if let Ok(c) = created {
                        p.return_to_pool(tp, c).await;
                    }
                });
            }
            futures_util::future::join_all(creations).await;
        }
        self.publish_gauges();
    }

    async fn replenish_loop(&self) {
        let every = Duration::from_millis(self.inner.settings.pool.replenish_interval_ms);
        loop {
            self.replenish_once().await;
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One round of health checks: host pings, idle and claimed containers, claims released
    /// through another replica.
    pub async fn check_health(&self) {
        let hosts: Vec<(usize, Arc<dyn ContainerRuntime>)> = lock(&self.inner.hosts)
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.runtime.clone()))
            .collect();
        for (i, rt) in &hosts {
            let ok = rt.ping().await.is_ok();
            if let Some(h) = lock(&self.inner.hosts).get_mut(*i) {
                if h.view.healthy && !ok {
                    tracing::warn!(host = %h.view.name, "docker host stopped answering");
                }
                h.view.healthy = ok;
            }
        }
        let pools: Vec<Arc<TemplatePool>> = lock(&self.inner.templates).values().cloned().collect();
        for tp in pools {
            let idle: Vec<Pooled> = lock(&tp.state).idle.iter().cloned().collect();
            let name = tp.template().name;
            for p in idle {
                let Some(rt) = self.runtime(p.host) else {
                    continue;
                };
                if matches!(rt.alive(&p.id).await, Ok(false)) {
                    let taken = {
                        let mut st = lock(&tp.state);
                        st.idle
                            .iter()
                            .position(|q| q.id == p.id)
                            .and_then(|i| st.idle.remove(i))
                    };
                    if let Some(p) = taken {
                        tracing::warn!(container = %p.id, template = %name, "idle container died");
                        self.emit(
                            "unhealthy",
                            SYSTEM_TENANT,
                            serde_json::json!({"container_id": p.id, "template": name, "state": "idle"}),
                        )
                        .await;
                        self.destroy(&p, "unhealthy", &name, SYSTEM_TENANT).await;
                        self.inner.wake.notify_one();
                    }
                }
            }
        }
        let claims: Vec<Arc<LocalClaim>> = lock(&self.inner.claims).values().cloned().collect();
        for c in claims {
            if matches!(self.inner.store.is_released(c.info.id).await, Ok(true)) {
                // Released through another replica (or closed by a sweep) without this one
                // hearing of it: reset it like any release.
                let removed = lock(&self.inner.claims).remove(&c.info.id);
                if let Some(c) = removed
                    && let Err(error) = self.release_local(c).await
                {
                    tracing::warn!(%error, "release of a claim closed elsewhere failed");
                }
                continue;
            }
            let Some(rt) = self.runtime(c.pooled.host) else {
                continue;
            };
            if matches!(rt.alive(&c.pooled.id).await, Ok(false))
                && !c.broken.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(claim = %c.info.id, container = %c.pooled.id, "claimed container died");
                self.emit(
                    "unhealthy",
                    &c.tenant,
                    serde_json::json!({"claim_id": c.info.id, "container_id": c.pooled.id, "template": c.info.template, "state": "claimed"}),
                )
                .await;
            }
        }
        self.publish_gauges();
    }

    async fn health_loop(&self) {
        let every = Duration::from_secs(self.inner.settings.pool.health_interval_secs);
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            self.check_health().await;
        }
    }

    async fn heartbeat(&self) -> Result<(), PoolError> {
        let r = &self.inner.replica;
        self.inner
            .store
            .heartbeat(&ReplicaRow {
                replica_id: r.id,
                hostname: r.hostname.clone(),
                process: r.process.clone(),
                started_at: r.started_at,
                heartbeat_at: Utc::now(),
            })
            .await
    }

    /// Removes pool containers whose replica is gone: those of any pool made by a process on
    /// this machine that no longer runs, and those of this pool whose replica's lease in the
    /// database went stale (three heartbeats). Containers of live replicas (parallel tests,
    /// other pods) are left alone.
    /// Returns how many were removed.
    pub async fn sweep_orphans(&self) -> Result<usize, PoolError> {
        let me = self.inner.replica.id.to_string();
        let stale_after = chrono::Duration::seconds(
            i64::try_from(self.inner.settings.pool.heartbeat_secs.saturating_mul(3)).unwrap_or(15),
        );
        let now = Utc::now();
        let replicas = self.inner.store.replicas().await?;
        let stale: Vec<Uuid> = replicas
            .iter()
            .filter(|r| r.replica_id != self.inner.replica.id)
            .filter(|r| {
                now - r.heartbeat_at > stale_after
                    || (r.hostname == self.inner.replica.hostname && !process_alive(&r.process))
            })
            .map(|r| r.replica_id)
            .collect();
        let stale_text: Vec<String> = stale.iter().map(Uuid::to_string).collect();
        let runtimes: Vec<Arc<dyn ContainerRuntime>> = lock(&self.inner.hosts)
            .iter()
            .map(|h| h.runtime.clone())
            .collect();
        let mut removed = 0;
        for rt in runtimes {
            // Every pool's containers: those of a dead process on this machine are orphans
            // whatever pool they belong to; the lease rule applies to this pool's only.
            let listed = match rt.list(None).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(%error, host = rt.host(), "cannot list containers for the sweep");
                    continue;
                }
            };
            for c in listed {
                let replica = c.labels.get(REPLICA_LABEL).cloned().unwrap_or_default();
                if replica == me {
                    continue;
                }
                let same_host = c.labels.get(HOSTNAME_LABEL) == Some(&self.inner.replica.hostname);
                let dead_process = c
                    .labels
                    .get(PROCESS_LABEL)
                    .is_none_or(|p| !process_alive(p));
                let own_pool = c.labels.get(POOL_LABEL) == Some(&self.inner.settings.pool.name);
                if (same_host && dead_process) || (own_pool && stale_text.contains(&replica)) {
                    if let Err(error) = rt.remove(&c.id).await {
                        tracing::warn!(%error, container = %c.id, "orphan removal failed");
                        continue;
                    }
                    removed += 1;
                    metrics::counter!(M_REAPED, "reason" => "orphan").increment(1);
                    self.emit(
                        "reaped",
                        SYSTEM_TENANT,
                        serde_json::json!({"container_id": c.id, "host": rt.host(), "reason": "orphan", "replica": replica}),
                    )
                    .await;
                }
            }
        }
        for r in stale {
            self.inner
                .store
                .release_claims_of(r, now, &released_with_replica)
                .await?;
            self.inner.events.queued();
            self.inner.store.delete_replica(r).await?;
        }
        Ok(removed)
    }

    async fn lease_loop(&self) {
        let every = Duration::from_secs(self.inner.settings.pool.heartbeat_secs);
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.heartbeat().await {
                tracing::warn!(%error, "pool lease renewal failed");
            }
            if let Err(error) = self.sweep_orphans().await {
                tracing::warn!(%error, "orphan sweep failed");
            }
            let retained = Utc::now().timestamp_millis() - IDEMPOTENCY_RETENTION_MS;
            if let Err(error) = self.inner.store.expire_idempotent(retained).await {
                tracing::warn!(%error, "idempotency keys not expired");
            }
        }
    }

    /// At shutdown: waiters are told, and (unless configured otherwise) every container this
    /// replica created is removed, its claims closed and its lease dropped.
    pub async fn drain(&self) {
        for tp in lock(&self.inner.templates).values() {
            lock(&tp.state).waiters.clear();
        }
        if !self.inner.settings.pool.remove_on_shutdown {
            return;
        }
        let me = self.inner.replica.id.to_string();
        let runtimes: Vec<Arc<dyn ContainerRuntime>> = lock(&self.inner.hosts)
            .iter()
            .map(|h| h.runtime.clone())
            .collect();
        let mut removed = 0usize;
        for rt in runtimes {
            let listed = rt
                .list(Some(&self.inner.settings.pool.name))
                .await
                .unwrap_or_default();
            let mine: Vec<_> = listed
                .into_iter()
                .filter(|c| c.labels.get(REPLICA_LABEL) == Some(&me))
                .collect();
            let removals = mine.iter().map(|c| rt.remove(&c.id));
            removed += futures_util::future::join_all(removals)
                .await
                .into_iter()
                .filter(Result::is_ok)
                .count();
        }
        let now = Utc::now();
        let _ = self
            .inner
            .store
            .release_claims_of(self.inner.replica.id, now, &released_with_replica)
            .await;
        let _ = self.inner.store.delete_replica(self.inner.replica.id).await;
        lock(&self.inner.claims).clear();
        // One last relay round, bounded: what it misses waits in the outbox for any replica.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.inner.events.relay_once(self.inner.store.as_ref()),
        )
        .await;
        tracing::info!(removed, "pool drained");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directories_stay_inside_the_sandbox() {
        assert_eq!(resolve_workdir("/workspace", "").unwrap(), "/workspace");
        assert_eq!(
            resolve_workdir("/workspace", "src").unwrap(),
            "/workspace/src"
        );
        assert_eq!(
            resolve_workdir("/workspace/a", "b/").unwrap(),
            "/workspace/a/b"
        );
        assert_eq!(resolve_workdir("/workspace", "/tmp/x").unwrap(), "/tmp/x");
        assert_eq!(
            resolve_workdir("/workspace", "/mnt/staging").unwrap(),
            "/mnt/staging"
        );
        for bad in ["../etc", "/etc", "/", "a/../../etc"] {
            assert!(resolve_workdir("/workspace", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_names_are_checked() {
        let ok = BTreeMap::from([
            ("A_1".to_owned(), "x".to_owned()),
            ("_b".to_owned(), String::new()),
        ]);
        assert!(check_env("env", &ok).is_ok());
        for bad in ["1A", "A-B", "", "A B"] {
            let env = BTreeMap::from([(bad.to_owned(), "x".to_owned())]);
            assert!(check_env("env", &env).is_err(), "{bad}");
        }
        let nul = BTreeMap::from([("A".to_owned(), "x\0y".to_owned())]);
        assert!(check_env("env", &nul).is_err());
    }
}
