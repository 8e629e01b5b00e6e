//! The container pool's own configuration sections, beside the shared ones:
//! `[pool]` (runtime choice, timeouts, sweeps), `[docker]` (hosts, images), `[secrets]`
//! (backends and the names claims may ask for), `[templates.<name>]` (what a pooled container
//! is) and `[runners]` (which coding CLIs the images carry).
//!
//! Every section rejects unknown keys; [`Validate`] names the key at fault and says what would be
//! accepted. Values a template leaves unset are filled from the host's cores and memory by
//! [`crate::domain::autoconf`]. Secret values only come from the environment or a backend and
//! never print (`Secret`).

use std::collections::BTreeMap;

use liquid_kit::Secret;
use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// All of the service's own sections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolSettings {
    /// `[pool]`.
    pub pool: PoolSection,
    /// `[docker]`.
    pub docker: DockerSection,
    /// `[secrets]`.
    pub secrets: SecretsSection,
    /// `[templates.<name>]`; `default` exists unless configured away.
    pub templates: BTreeMap<String, TemplateConfig>,
    /// `[runners]`.
    pub runners: RunnersSection,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            pool: PoolSection::default(),
            docker: DockerSection::default(),
            secrets: SecretsSection::default(),
            templates: BTreeMap::from([("default".to_owned(), TemplateConfig::default())]),
            runners: RunnersSection::default(),
        }
    }
}

/// Which runtime runs pooled containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// Docker when a configured host answers, else the process runtime (labelled as such).
    #[default]
    Auto,
    /// Docker only; start-up fails when no host answers.
    Docker,
    /// Local processes in temporary directories with rlimits: NOT isolated.
    Process,
}

/// `[pool]`: how the pools behave as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSection {
    /// Name of this pool, put on every container's labels; replicas sharing Docker hosts but
    /// not a database need different names so they never sweep each other.
    pub name: String,
    /// `auto`, `docker` or `process`.
    pub runtime: RuntimeChoice,
    /// Default wait for a container when a template is exhausted (milliseconds).
    pub acquire_timeout_ms: u64,
    /// Longest wait a caller may ask for (milliseconds).
    pub max_acquire_timeout_ms: u64,
    /// Default exec timeout (milliseconds).
    pub exec_timeout_ms: u64,
    /// Longest exec timeout a caller may ask for (milliseconds).
    pub max_exec_timeout_ms: u64,
    /// Largest combined stdout+stderr a REST exec returns; the rest is cut (streams are not cut).
    pub max_output_bytes: usize,
    /// How often the replenisher tops up idle containers (milliseconds).
    pub replenish_interval_ms: u64,
    /// How often idle and claimed containers are health-checked (seconds).
    pub health_interval_secs: u64,
    /// How often this replica renews its lease; containers of replicas whose lease is older
    /// than three periods are swept (seconds).
    pub heartbeat_secs: u64,
    /// Host directories under which a claim may bind a staging directory (cowork).
    pub mount_roots: Vec<String>,
    /// On shutdown, remove every container this replica created (idle and claimed).
    pub remove_on_shutdown: bool,
    /// Where the process runtime makes its sandboxes; empty: the system temp directory.
    pub process_root: String,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            name: "default".into(),
            runtime: RuntimeChoice::Auto,
            acquire_timeout_ms: 30_000,
            max_acquire_timeout_ms: 300_000,
            exec_timeout_ms: 600_000,
            max_exec_timeout_ms: 3_600_000,
            max_output_bytes: 4 * 1024 * 1024,
            replenish_interval_ms: 500,
            health_interval_secs: 15,
            heartbeat_secs: 5,
            mount_roots: Vec::new(),
            remove_on_shutdown: true,
            process_root: String::new(),
        }
    }
}

/// One Docker engine the pool places containers on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerHost {
    /// Stable name (labels, metrics, placement).
    pub name: String,
    /// `unix:///var/run/docker.sock`, `tcp://host:2375` or `http://host:2375`; empty: the local
    /// default (`DOCKER_HOST` or the usual socket).
    pub url: String,
    /// Relative preference in placement (> 0).
    pub weight: f64,
    /// Most containers the pool keeps on it; 0: derived from the host's memory.
    pub max_containers: u32,
    /// A disabled host gets no new containers.
    pub enabled: bool,
}

impl Default for DockerHost {
    fn default() -> Self {
        DockerHost {
            name: "local".into(),
            url: String::new(),
            weight: 1.0,
            max_containers: 0,
            enabled: true,
        }
    }
}

/// `[docker]`: engines and images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSection {
    /// Engines; empty means one host `local` on the local default socket.
    pub hosts: Vec<DockerHost>,
    /// Repository of the base image built from the host's static busybox.
    pub base_image_repo: String,
    /// The static busybox the base image is built from.
    pub busybox_path: String,
    /// A root filesystem tar (for example a Debian minbase made with `debootstrap --variant=minbase`)
    /// to import as the `toolbox` image; empty: no toolbox image.
    pub toolbox_rootfs: String,
    /// Repository of the toolbox image.
    pub toolbox_image_repo: String,
    /// Name of the bridge network templates with `network = "egress"` join (created, labelled).
    pub egress_network: String,
    /// Name of the internal bridge (no route out) templates with `network = "allowlist"` join;
    /// the pool's egress proxy on its gateway address is all they reach.
    pub allowlist_network: String,
    /// Destinations `allowlist` templates may reach through the proxy: `host`, `*.domain`,
    /// either with `:port` (without one: 80 and 443).
    pub egress_allow: Vec<String>,
    /// Let the proxy connect to private and loopback addresses (tests only; off by default so
    /// an allow-listed name cannot be pointed at the internal network).
    pub egress_allow_private: bool,
    /// Seconds to wait for an engine at start-up.
    pub connect_timeout_secs: u64,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            hosts: Vec::new(),
            base_image_repo: "liquid/pool-base".into(),
            busybox_path: "/bin/busybox".into(),
            toolbox_rootfs: String::new(),
            toolbox_image_repo: "liquid/pool-toolbox".into(),
            egress_network: "liquid-pool-egress".into(),
            allowlist_network: "liquid-pool-allowlist".into(),
            egress_allow: Vec::new(),
            egress_allow_private: false,
            connect_timeout_secs: 5,
        }
    }
}

impl DockerSection {
    /// The configured hosts, or the local default when none are.
    pub fn effective_hosts(&self) -> Vec<DockerHost> {
        if self.hosts.is_empty() {
            vec![DockerHost::default()]
        } else {
            self.hosts.clone()
        }
    }
}

/// What a released container goes through before the next claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReleasePolicy {
    /// Kill every process of the claim, wipe the work dir, temp dir and secrets, verify it is
    /// empty; replace the container when the check fails.
    #[default]
    Reset,
    /// Remove the container and create a fresh one.
    Replace,
}

/// Network of a template's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    /// No network at all (loopback only).
    #[default]
    None,
    /// The `[docker] egress_network` bridge: outbound only, nothing published.
    Egress,
    /// The `[docker] allowlist_network` internal bridge: only the destinations of
    /// `[docker] egress_allow`, through the pool's egress proxy.
    Allowlist,
}

/// `[templates.<name>]`: what a pooled container is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateConfig {
    /// `base` (busybox, built at start-up), `toolbox` (from `[docker] toolbox_rootfs`) or a
    /// local image reference.
    pub image: String,
    /// Idle containers kept ready; unset: derived from the host's cores.
    pub min_idle: Option<u32>,
    /// Most containers of this template (idle + claimed + being created); unset: from memory.
    pub max_total: Option<u32>,
    /// Idle containers beyond `min_idle` older than this are removed (seconds).
    pub idle_ttl_secs: u64,
    /// Memory limit (MiB); swap is not allowed on top.
    pub memory_mib: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Most processes inside one container.
    pub pids_limit: i64,
    /// `none`, `egress` or `allowlist`.
    pub network: NetworkPolicy,
    /// Size of the /tmp and /run/secrets tmpfs (MiB).
    pub tmp_size_mib: u64,
    /// `reset` or `replace`.
    pub on_release: ReleasePolicy,
    /// A container is replaced after this many claims.
    pub max_uses: u32,
    /// Secret names claims of this template may ask for; `*` allows every configured one.
    pub secrets: Vec<String>,
    /// Pause idle containers (unpaused on acquire, about 15 ms) so they use no CPU.
    pub pause_idle: bool,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig {
            image: "base".into(),
            min_idle: None,
            max_total: None,
            idle_ttl_secs: 600,
            memory_mib: 512,
            cpus: 1.0,
            pids_limit: 256,
            network: NetworkPolicy::None,
            tmp_size_mib: 64,
            on_release: ReleasePolicy::Reset,
            max_uses: 50,
            secrets: vec!["*".into()],
            pause_idle: false,
        }
    }
}

/// `[secrets.vault]`: HashiCorp Vault, KV version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultSection {
    /// `https://vault:8200`; empty: Vault is not used.
    pub address: String,
    /// A token (token auth). Set this or `role_id` + `secret_id`.
    pub token: Secret<String>,
    /// AppRole role id.
    pub role_id: String,
    /// AppRole secret id.
    pub secret_id: Secret<String>,
    /// Mount path of the AppRole auth method.
    pub approle_mount: String,
    /// Mount path of the KV v2 engine.
    pub kv_mount: String,
    /// Vault Enterprise namespace (`X-Vault-Namespace`), if any.
    pub namespace: String,
}

impl Default for VaultSection {
    fn default() -> Self {
        VaultSection {
            address: String::new(),
            token: Secret::default(),
            role_id: String::new(),
            secret_id: Secret::default(),
            approle_mount: "approle".into(),
            kv_mount: "secret".into(),
            namespace: String::new(),
        }
    }
}

/// `[secrets.aws]`: AWS Secrets Manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSection {
    /// Region (`eu-west-1`); empty: AWS is not used.
    pub region: String,
    /// Endpoint override (`http://127.0.0.1:5000` for a local server); empty: the regional one.
    pub endpoint: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret<String>,
    /// Session token of temporary credentials.
    pub session_token: Secret<String>,
}

/// `[secrets]`: where secret values come from and which names exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSection {
    /// How long a fetched value is cached (seconds); 0 disables the cache.
    pub cache_ttl_secs: u64,
    /// The secrets claims may ask for, by name (lowercase, `[a-z0-9_.-]`), each a reference:
    /// `env:VARIABLE`, `vault:<path>#<key>` (KV v2 under `kv_mount`) or
    /// `aws:<secret id>[#<json key>]`.
    pub refs: BTreeMap<String, String>,
    /// Vault.
    pub vault: VaultSection,
    /// AWS Secrets Manager.
    pub aws: AwsSection,
}

impl Default for SecretsSection {
    fn default() -> Self {
        SecretsSection {
            cache_ttl_secs: 300,
            refs: BTreeMap::new(),
            vault: VaultSection::default(),
            aws: AwsSection::default(),
        }
    }
}

/// `[runners]`: coding CLIs the template images carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnersSection {
    /// Runners whose CLI the images have: any of `claude`, `gemini`, `codex`.
    pub available: Vec<String>,
    /// Command of Claude Code.
    pub claude_command: String,
    /// Command of the Gemini CLI.
    pub gemini_command: String,
    /// Command of the Codex CLI.
    pub codex_command: String,
    /// Secret (a `[secrets.refs]` name) holding the Anthropic key for Claude Code.
    pub claude_secret: String,
    /// Secret holding the Gemini key.
    pub gemini_secret: String,
    /// Secret holding the OpenAI key for Codex.
    pub codex_secret: String,
}

impl Default for RunnersSection {
    fn default() -> Self {
        RunnersSection {
            available: Vec::new(),
            claude_command: "claude".into(),
            gemini_command: "gemini".into(),
            codex_command: "codex".into(),
            claude_secret: "anthropic_api_key".into(),
            gemini_secret: "gemini_api_key".into(),
            codex_secret: "openai_api_key".into(),
        }
    }
}

/// True for names usable as secret, template and host names: `[a-z0-9_.-]`, 1 to 64 long,
/// not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

impl Validate for PoolSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.pool;
        if !valid_name(&p.name) {
            return Err(ConfigError::invalid(
                "pool.name",
                "must be 1-64 characters of a-z, 0-9, _, . and -",
            ));
        }
        positive("pool.acquire_timeout_ms", p.acquire_timeout_ms)?;
        positive("pool.exec_timeout_ms", p.exec_timeout_ms)?;
        positive("pool.replenish_interval_ms", p.replenish_interval_ms)?;
        positive("pool.health_interval_secs", p.health_interval_secs)?;
        positive("pool.heartbeat_secs", p.heartbeat_secs)?;
        if p.max_acquire_timeout_ms < p.acquire_timeout_ms {
            return Err(ConfigError::invalid(
                "pool.max_acquire_timeout_ms",
                format!(
                    "must be at least pool.acquire_timeout_ms ({})",
                    p.acquire_timeout_ms
                ),
            ));
        }
        if p.max_exec_timeout_ms < p.exec_timeout_ms {
            return Err(ConfigError::invalid(
                "pool.max_exec_timeout_ms",
                format!(
                    "must be at least pool.exec_timeout_ms ({})",
                    p.exec_timeout_ms
                ),
            ));
        }
        if p.max_output_bytes < 1024 {
            return Err(ConfigError::invalid(
                "pool.max_output_bytes",
                "must be at least 1024",
            ));
        }
        for (i, root) in p.mount_roots.iter().enumerate() {
            if !root.starts_with('/') || root.contains("..") {
                return Err(ConfigError::invalid(
                    format!("pool.mount_roots[{i}]"),
                    "must be an absolute path without `..`",
                ));
            }
        }
        self.validate_docker()?;
        self.validate_secrets()?;
        if self.templates.is_empty() {
            return Err(ConfigError::invalid(
                "templates",
                "at least one template is needed (templates.default)",
            ));
        }
        for (name, t) in &self.templates {
            crate::domain::template::validate_config(name, t, &self.secrets.refs)?;
        }
        for (i, r) in self.runners.available.iter().enumerate() {
            if !matches!(r.as_str(), "claude" | "gemini" | "codex") {
                return Err(ConfigError::invalid(
                    format!("runners.available[{i}]"),
                    format!("unknown runner `{r}`; expected claude, gemini or codex"),
                ));
            }
        }
        Ok(())
    }
}

impl PoolSettings {
    fn validate_docker(&self) -> Result<(), ConfigError> {
        let d = &self.docker;
        let mut seen = std::collections::BTreeSet::new();
        for (i, h) in d.hosts.iter().enumerate() {
            let key = |field: &str| format!("docker.hosts[{i}].{field}");
            if !valid_name(&h.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    "must be 1-64 characters of a-z, 0-9, _, . and -",
                ));
            }
            if !seen.insert(h.name.clone()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("`{}` is used by two hosts", h.name),
                ));
            }
            if !(h.url.is_empty()
                || h.url.starts_with("unix://")
                || h.url.starts_with("tcp://")
                || h.url.starts_with("http://"))
            {
                return Err(ConfigError::invalid(
                    key("url"),
                    "must be empty (local default), unix://PATH, tcp://HOST:PORT or http://HOST:PORT",
                ));
            }
            if !(h.weight.is_finite() && h.weight > 0.0) {
                return Err(ConfigError::invalid(
                    key("weight"),
                    "must be a number greater than 0",
                ));
            }
        }
        if !d.hosts.is_empty() && !d.hosts.iter().any(|h| h.enabled) {
            return Err(ConfigError::invalid(
                "docker.hosts",
                "every host is disabled; enable at least one",
            ));
        }
        if d.base_image_repo.is_empty() || d.base_image_repo.contains(':') {
            return Err(ConfigError::invalid(
                "docker.base_image_repo",
                "must be a repository name without a tag (the tag is the content hash)",
            ));
        }
        if d.toolbox_image_repo.is_empty() || d.toolbox_image_repo.contains(':') {
            return Err(ConfigError::invalid(
                "docker.toolbox_image_repo",
                "must be a repository name without a tag (the tag is the content hash)",
            ));
        }
        positive("docker.connect_timeout_secs", d.connect_timeout_secs)?;
        crate::egress::EgressPolicy::new(&d.egress_allow, d.egress_allow_private)
            .map_err(|reason| ConfigError::invalid("docker.egress_allow", reason))?;
        if d.allowlist_network.is_empty() || d.allowlist_network == d.egress_network {
            return Err(ConfigError::invalid(
                "docker.allowlist_network",
                "must be a network name other than docker.egress_network",
            ));
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let s = &self.secrets;
        for (name, reference) in &s.refs {
            let key = format!("secrets.refs.{name}");
            if !valid_name(name) {
                return Err(ConfigError::invalid(
                    key,
                    "secret names are 1-64 characters of a-z, 0-9, _, . and -",
                ));
            }
            let parsed = crate::secrets::SecretRef::parse(reference)
                .map_err(|reason| ConfigError::invalid(key.clone(), reason))?;
            match parsed {
                crate::secrets::SecretRef::Vault { .. } if s.vault.address.is_empty() => {
                    return Err(ConfigError::invalid(
                        key,
                        "refers to Vault but secrets.vault.address is not set",
                    ));
                }
                crate::secrets::SecretRef::Aws { .. } if s.aws.region.is_empty() => {
                    return Err(ConfigError::invalid(
                        key,
                        "refers to AWS but secrets.aws.region is not set",
                    ));
                }
                _ => {}
            }
        }
        let v = &s.vault;
        if !v.address.is_empty() {
            if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "secrets.vault.address",
                    "must start with http:// or https://",
                ));
            }
            let approle = !v.role_id.is_empty() || !v.secret_id.is_empty();
            if v.token.is_empty() && !approle {
                return Err(ConfigError::invalid(
                    "secrets.vault.token",
                    "set a token, or secrets.vault.role_id and secrets.vault.secret_id for AppRole",
                ));
            }
            if approle && (v.role_id.is_empty() || v.secret_id.is_empty()) {
                return Err(ConfigError::invalid(
                    "secrets.vault.secret_id",
                    "AppRole needs both secrets.vault.role_id and secrets.vault.secret_id",
                ));
            }
        }
        let a = &s.aws;
        if !a.region.is_empty() {
            if a.access_key_id.is_empty() || a.secret_access_key.is_empty() {
                return Err(ConfigError::invalid(
                    "secrets.aws.access_key_id",
                    "AWS needs secrets.aws.access_key_id and secrets.aws.secret_access_key",
                ));
            }
            if !(a.endpoint.is_empty()
                || a.endpoint.starts_with("http://")
                || a.endpoint.starts_with("https://"))
            {
                return Err(ConfigError::invalid(
                    "secrets.aws.endpoint",
                    "must start with http:// or https://",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liquid_runtime::{ServiceConfig, ServiceDefaults};

    static SVC: ServiceDefaults = ServiceDefaults {
        name: "container-pool",
        version: "0.1.0",
        http_port: 8083,
        grpc_port: Some(9083),
    };

    #[test]
    fn defaults_are_valid() {
        PoolSettings::default().validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_reaches_every_section_and_bad_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LIQUID_CONTAINER_POOL__POOL__ACQUIRE_TIMEOUT_MS", "1500");
            jail.set_env("LIQUID_CONTAINER_POOL__TEMPLATES__DEFAULT__MIN_IDLE", "3");
            jail.set_env("LIQUID_CONTAINER_POOL__TEMPLATES__DEFAULT__MAX_TOTAL", "5");
            jail.set_env("LIQUID_CONTAINER_POOL__SECRETS__REFS__GH", "env:GH_TOKEN");
            let cfg = ServiceConfig::<PoolSettings>::load(&SVC, None).unwrap();
            assert_eq!(cfg.settings.pool.acquire_timeout_ms, 1500);
            assert_eq!(cfg.settings.templates["default"].min_idle, Some(3));
            assert_eq!(cfg.settings.secrets.refs["gh"], "env:GH_TOKEN");

            jail.set_env("LIQUID_CONTAINER_POOL__TEMPLATES__DEFAULT__MIN_IDLE", "9");
            let err = ServiceConfig::<PoolSettings>::load(&SVC, None).unwrap_err();
            assert!(
                err.to_string().contains("templates.default.min_idle"),
                "{err}"
            );

            jail.set_env("LIQUID_CONTAINER_POOL__TEMPLATES__DEFAULT__MIN_IDLE", "1");
            jail.set_env("LIQUID_CONTAINER_POOL__POOL__MIN_IDEL", "1");
            let err = ServiceConfig::<PoolSettings>::load(&SVC, None).unwrap_err();
            assert!(err.to_string().contains("min_idel"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_explained_by_key() {
        type Mutation = Box<dyn Fn(&mut PoolSettings)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.pool.name = "Bad Name".into()), "pool.name"),
            (
                Box::new(|s| s.pool.max_acquire_timeout_ms = 1),
                "pool.max_acquire_timeout_ms",
            ),
            (
                Box::new(|s| s.pool.mount_roots = vec!["relative".into()]),
                "pool.mount_roots[0]",
            ),
            (
                Box::new(|s| {
                    s.docker.hosts = vec![DockerHost {
                        url: "ftp://x".into(),
                        ..DockerHost::default()
                    }]
                }),
                "docker.hosts[0].url",
            ),
            (
                Box::new(|s| s.docker.hosts = vec![DockerHost::default(), DockerHost::default()]),
                "docker.hosts[1].name",
            ),
            (
                Box::new(|s| {
                    s.docker.hosts = vec![DockerHost {
                        weight: 0.0,
                        ..DockerHost::default()
                    }]
                }),
                "docker.hosts[0].weight",
            ),
            (
                Box::new(|s| {
                    s.docker.hosts = vec![DockerHost {
                        enabled: false,
                        ..DockerHost::default()
                    }]
                }),
                "docker.hosts",
            ),
            (
                Box::new(|s| {
                    s.secrets
                        .refs
                        .insert("x".into(), "vault:kv/app#token".into());
                }),
                "secrets.refs.x",
            ),
            (
                Box::new(|s| {
                    s.secrets.refs.insert("x".into(), "nope".into());
                }),
                "secrets.refs.x",
            ),
            (
                Box::new(|s| s.secrets.vault.address = "http://v:8200".into()),
                "secrets.vault.token",
            ),
            (
                Box::new(|s| s.secrets.aws.region = "eu-west-1".into()),
                "secrets.aws.access_key_id",
            ),
            (Box::new(|s| s.templates.clear()), "templates"),
            (
                Box::new(|s| s.runners.available = vec!["cursor".into()]),
                "runners.available[0]",
            ),
        ];
        for (mutate, key) in cases {
            let mut s = PoolSettings::default();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn secret_values_never_print() {
        let mut s = PoolSettings::default();
        s.secrets.vault.token = Secret::new("s.hunter2".into());
        s.secrets.aws.secret_access_key = Secret::new("wJalrXUtnFEMI".into());
        let text = format!("{s:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("wJalr"),
            "{text}"
        );
    }
}
