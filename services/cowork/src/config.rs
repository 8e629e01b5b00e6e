//! The cowork service's own configuration sections, beside the shared ones: `[sandbox]`
//! (where staging sandboxes live, which source directories a tenant may stage, how long a
//! sandbox lives), `[permissions]` (the permission pipeline's blocked prefixes, extensions,
//! capabilities and size limits), `[llm]` (model clients), `[planner]` (model and the
//! specialists' file patterns), `[directives]`, `[executor]` (how steps run in containers) and
//! `[agents]` (the agent manager's concurrency, heartbeats and retries) and `[a2a]` (remote
//! A2A agents steps are delegated to).
//!
//! Environment keys follow the platform (`LIQUID_COWORK__SANDBOX__ROOT`,
//! `LIQUID_COWORK__PERMISSIONS__MAX_FILE_BYTES`). Every section rejects unknown keys and
//! [`Validate`] names the key at fault. This module only holds and checks values.

use std::collections::BTreeMap;

use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::domain::decompose::{DomainRule, default_rules};
use crate::domain::glob::check_pattern;
use crate::domain::permission::Capability;
use liquid_llm::LlmConfig;

/// All of the service's own sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoworkSettings {
    /// `[sandbox]`.
    pub sandbox: SandboxSection,
    /// `[permissions]`.
    pub permissions: PermissionSection,
    /// `[llm]`: the model clients of the planner and the built-in agent (see liquid-llm).
    pub llm: LlmConfig,
    /// `[planner]`.
    pub planner: PlannerSection,
    /// `[directives]`.
    pub directives: DirectivesSection,
    /// `[executor]`.
    pub executor: ExecutorSection,
    /// `[agents]`: the agent manager.
    pub agents: AgentsSection,
    /// `[a2a]`: remote A2A agents steps may be delegated to (see [`crate::bridge`]).
    pub a2a: A2aBridgeSection,
}

/// `[a2a]`: the A2A bridge's remote agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aBridgeSection {
    /// Base URLs of remote A2A agents; each serves its card at
    /// `<url>/.well-known/agent-card.json` (for an agent of the a2a service:
    /// `http://a2a:8083/agents/<name>`).
    pub agents: Vec<String>,
    /// Bearer token sent to the remote agents (env `LIQUID_COWORK__A2A__TOKEN`); empty: none.
    pub token: liquid_kit::Secret<String>,
    /// Period of GetTask polling for agents whose card does not offer streaming.
    pub poll_interval_ms: u64,
    /// How long a fetched agent card is trusted before it is fetched again.
    pub card_ttl_secs: u64,
}

impl Default for A2aBridgeSection {
    fn default() -> Self {
        A2aBridgeSection {
            agents: Vec::new(),
            token: liquid_kit::Secret::default(),
            poll_interval_ms: 500,
            card_ttl_secs: 300,
        }
    }
}

/// `[planner]`: how plans are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerSection {
    /// Model of the planner; empty means `llm.default_model`. When it routes to the offline
    /// provider (no key), the deterministic offline planner plans instead.
    pub model: String,
    /// Specialists and the file patterns they own, in precedence order.
    pub domains: Vec<DomainRule>,
    /// Model answers tried per plan (the later ones are told what was wrong).
    pub max_attempts: u32,
    /// Most workspace paths listed in the planner's prompt.
    pub max_listed_files: usize,
}

impl Default for PlannerSection {
    fn default() -> Self {
        PlannerSection {
            model: String::new(),
            domains: default_rules(),
            max_attempts: 2,
            max_listed_files: 400,
        }
    }
}

/// `[directives]`: where the prompts and agent directives come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectivesSection {
    /// A directory with `manifest.json` (verified at start-up); empty means the copies built
    /// into the binary (verified as well).
    pub dir: String,
}

/// `[executor]`: how a step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSection {
    /// Model of the built-in agent; empty means `llm.default_model`.
    pub agent_model: String,
    /// Most model turns of the built-in agent per step.
    pub max_turns: u32,
    /// Container-pool template steps run in.
    pub template: String,
    /// Where the sandbox is mounted in the container (container-pool's staging mount).
    pub container_workdir: String,
    /// Longest a step may run.
    pub step_timeout_secs: u64,
    /// Longest one `run_command`.
    pub command_timeout_secs: u64,
    /// Most bytes of a tool's output the model sees.
    pub max_tool_output_bytes: usize,
    /// Largest artifact kept (patches, files, logs are cut there, and say so).
    pub max_artifact_bytes: usize,
    /// PKCS#8 PEM private key whose service tokens container-pool trusts (the same issuer and
    /// audience this service verifies). Without it steps fail with a reason saying so.
    pub service_key_file: String,
    /// Ask container-pool's task analyzer for a coding CLI first (RunAgent); the built-in
    /// agent runs when it picks none.
    pub use_runners: bool,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            agent_model: String::new(),
            max_turns: 24,
            template: "default".into(),
            container_workdir: "/mnt/staging".into(),
            step_timeout_secs: 1800,
            command_timeout_secs: 120,
            max_tool_output_bytes: 16 * 1024,
            max_artifact_bytes: 1024 * 1024,
            service_key_file: String::new(),
            use_runners: true,
        }
    }
}

/// `[agents]`: the agent manager's queue, concurrency, heartbeats and retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsSection {
    /// Agents one replica runs at once.
    pub max_concurrency: usize,
    /// How often a running agent reports (and renews its lease).
    pub heartbeat_interval_ms: u64,
    /// Silence after which an agent is declared dead and its step retried.
    pub heartbeat_timeout_ms: u64,
    /// Attempts per step (the first included).
    pub max_attempts: u32,
    /// Back-off before the first retry (doubling, with jitter).
    pub retry_base_ms: u64,
    /// Longest back-off.
    pub retry_cap_ms: u64,
    /// How often an idle replica looks at the queue.
    pub poll_interval_ms: u64,
    /// How often `queue:stats` and the gauges are refreshed.
    pub stats_interval_ms: u64,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            max_concurrency: 4,
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 30_000,
            max_attempts: 3,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            poll_interval_ms: 500,
            stats_interval_ms: 10_000,
        }
    }
}

/// How staging sandboxes are copied from their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// A reflink when the filesystem clones, else a hard link, else a byte copy (per file).
    #[default]
    Auto,
    /// Byte copies only (two full copies; for filesystems where links are unwanted).
    Copy,
}

/// `[sandbox]`: where sandboxes live and how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSection {
    /// Directory that holds every sandbox (`<root>/<tenant dir>/<sandbox id>/work`); created at
    /// start-up. Containers mount the `work` directory.
    pub root: String,
    /// Directories a sandbox's source may lie in. `{tenant}` is replaced by the caller's tenant
    /// (which must then be a plain name), so each tenant stages only its own workspaces.
    pub workspace_roots: Vec<String>,
    /// Seconds a sandbox lives after its creation before the cleanup job expires it.
    pub ttl_secs: u64,
    /// Seconds between two runs of the cleanup job.
    pub cleanup_interval_secs: u64,
    /// Most entries (files, directories, links) a source tree may have.
    pub max_files: usize,
    /// `auto` (reflink, else hard link, else copy) or `copy`.
    pub copy_mode: CopyMode,
    /// Largest file a diff shows as text; larger ones are summarised by hash.
    pub max_diff_bytes: u64,
    /// `uid:gid` the step containers run as (container-pool's pool user). A cowork running as
    /// root hands a sandbox's work tree to it before mounting it, so commands and coding CLIs
    /// in the container can write there; a cowork running as another user must run as this
    /// one (the images do: both are 10001).
    pub container_user: String,
}

impl SandboxSection {
    /// `container_user` as numbers.
    pub fn container_owner(&self) -> Option<(u32, u32)> {
        let (uid, gid) = self.container_user.split_once(':')?;
        Some((uid.trim().parse().ok()?, gid.trim().parse().ok()?))
    }
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            root: ".liquid/cowork/sandboxes".into(),
            workspace_roots: vec![".liquid/cowork/workspaces/{tenant}".into()],
            ttl_secs: 7 * 24 * 3600,
            cleanup_interval_secs: 60,
            max_files: 200_000,
            copy_mode: CopyMode::Auto,
            max_diff_bytes: 1024 * 1024,
            container_user: "10001:10001".into(),
        }
    }
}

/// `[permissions]`: the permission pipeline's rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionSection {
    /// Absolute path prefixes no agent operation may touch, matched on path components.
    pub blocked_prefixes: Vec<String>,
    /// File extensions (without the dot, case-insensitive) no agent operation may touch, on the
    /// requested name and on the target a symlink resolves to.
    pub blocked_extensions: Vec<String>,
    /// When non-empty, only these extensions are allowed (files without one stay allowed).
    pub allowed_extensions: Vec<String>,
    /// Capabilities of an agent that has no entry in `agents`.
    pub default_capabilities: Vec<Capability>,
    /// Capabilities per agent name.
    pub agents: BTreeMap<String, Vec<Capability>>,
    /// Largest single write.
    pub max_file_bytes: u64,
    /// Most bytes one session may write in total (charged when a write commits).
    pub max_session_bytes: u64,
}

impl Default for PermissionSection {
    fn default() -> Self {
        PermissionSection {
            blocked_prefixes: [
                "/etc", "/var", "/usr", "/System", "/Library", "/bin", "/sbin", "/boot", "/dev",
                "/proc", "/sys", "/root", "/private",
            ]
            .map(String::from)
            .to_vec(),
            blocked_extensions: [
                "exe", "dll", "so", "dylib", "bat", "cmd", "com", "msi", "scr", "ps1", "pem", "key",
            ]
            .map(String::from)
            .to_vec(),
            allowed_extensions: Vec::new(),
            default_capabilities: vec![Capability::Read, Capability::Write, Capability::Delete],
            agents: BTreeMap::new(),
            max_file_bytes: 10 * 1024 * 1024,
            max_session_bytes: 200 * 1024 * 1024,
        }
    }
}

fn check_extensions(key: &str, list: &[String]) -> Result<(), ConfigError> {
    for (i, ext) in list.iter().enumerate() {
        if ext.is_empty()
            || ext.starts_with('.')
            || ext.contains(['/', '\0'])
            || ext.chars().any(char::is_whitespace)
        {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("`{ext}` is not an extension; write it without the dot, e.g. `exe`"),
            ));
        }
    }
    Ok(())
}

impl Validate for CoworkSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for url in &self.a2a.agents {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "a2a.agents",
                    "every entry must be an http:// or https:// URL",
                ));
            }
        }
        if self.a2a.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "a2a.poll_interval_ms",
                "must be at least 1",
            ));
        }
        let s = &self.sandbox;
        if s.root.trim().is_empty() {
            return Err(ConfigError::invalid(
                "sandbox.root",
                "must name a directory",
            ));
        }
        if s.workspace_roots.is_empty() {
            return Err(ConfigError::invalid(
                "sandbox.workspace_roots",
                "must list at least one directory sources may lie in",
            ));
        }
        if s.container_owner().is_none() {
            return Err(ConfigError::invalid(
                "sandbox.container_user",
                "must be numeric `uid:gid`, like 10001:10001",
            ));
        }
        for (i, w) in s.workspace_roots.iter().enumerate() {
            if w.trim().is_empty() || w.contains('\0') {
                return Err(ConfigError::invalid(
                    format!("sandbox.workspace_roots[{i}]"),
                    "must name a directory",
                ));
            }
        }
        if s.ttl_secs == 0 {
            return Err(ConfigError::invalid(
                "sandbox.ttl_secs",
                "must be at least 1",
            ));
        }
        if s.cleanup_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "sandbox.cleanup_interval_secs",
                "must be at least 1",
            ));
        }
        if s.max_files == 0 {
            return Err(ConfigError::invalid(
                "sandbox.max_files",
                "must be at least 1",
            ));
        }
        let p = &self.permissions;
        for (i, prefix) in p.blocked_prefixes.iter().enumerate() {
            if !prefix.starts_with('/') || prefix.contains('\0') {
                return Err(ConfigError::invalid(
                    format!("permissions.blocked_prefixes[{i}]"),
                    format!("`{prefix}` must be an absolute path"),
                ));
            }
        }
        check_extensions("permissions.blocked_extensions", &p.blocked_extensions)?;
        check_extensions("permissions.allowed_extensions", &p.allowed_extensions)?;
        if p.max_file_bytes == 0 {
            return Err(ConfigError::invalid(
                "permissions.max_file_bytes",
                "must be at least 1",
            ));
        }
        if p.max_session_bytes < p.max_file_bytes {
            return Err(ConfigError::invalid(
                "permissions.max_session_bytes",
                format!("must be at least max_file_bytes ({})", p.max_file_bytes),
            ));
        }
        self.llm.validate_at("llm")?;
        let pl = &self.planner;
        if pl.domains.is_empty() {
            return Err(ConfigError::invalid(
                "planner.domains",
                "must list at least one domain",
            ));
        }
        for (i, d) in pl.domains.iter().enumerate() {
            let ok = !d.name.is_empty()
                && d.name.len() <= 32
                && d.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !ok {
                return Err(ConfigError::invalid(
                    format!("planner.domains[{i}].name"),
                    "1 to 32 of a-z, 0-9, `_`, `-`",
                ));
            }
            for (j, p) in d.patterns.iter().enumerate() {
                check_pattern(p).map_err(|e| {
                    ConfigError::invalid(format!("planner.domains[{i}].patterns[{j}]"), e)
                })?;
            }
        }
        if pl.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "planner.max_attempts",
                "must be at least 1",
            ));
        }
        let e = &self.executor;
        for (key, v) in [
            ("executor.max_turns", u64::from(e.max_turns)),
            ("executor.step_timeout_secs", e.step_timeout_secs),
            ("executor.command_timeout_secs", e.command_timeout_secs),
            (
                "executor.max_tool_output_bytes",
                e.max_tool_output_bytes as u64,
            ),
            ("executor.max_artifact_bytes", e.max_artifact_bytes as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if !e.container_workdir.starts_with('/') {
            return Err(ConfigError::invalid(
                "executor.container_workdir",
                "must be an absolute path inside the container",
            ));
        }
        if e.template.trim().is_empty() {
            return Err(ConfigError::invalid(
                "executor.template",
                "must name a container-pool template",
            ));
        }
        let a = &self.agents;
        for (key, v) in [
            ("agents.max_concurrency", a.max_concurrency as u64),
            ("agents.heartbeat_interval_ms", a.heartbeat_interval_ms),
            ("agents.max_attempts", u64::from(a.max_attempts)),
            ("agents.retry_base_ms", a.retry_base_ms),
            ("agents.poll_interval_ms", a.poll_interval_ms),
            ("agents.stats_interval_ms", a.stats_interval_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if a.heartbeat_timeout_ms < a.heartbeat_interval_ms.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "agents.heartbeat_timeout_ms",
                format!(
                    "must be at least twice agents.heartbeat_interval_ms ({})",
                    a.heartbeat_interval_ms
                ),
            ));
        }
        if a.retry_cap_ms < a.retry_base_ms {
            return Err(ConfigError::invalid(
                "agents.retry_cap_ms",
                "must be at least agents.retry_base_ms",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        CoworkSettings::default().validate().unwrap();
        let mut s = CoworkSettings::default();
        s.permissions.blocked_extensions.push(".exe".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("permissions.blocked_extensions[12]"), "{err}");
        let mut s = CoworkSettings::default();
        s.permissions.blocked_prefixes.push("etc".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("permissions.blocked_prefixes[13]"), "{err}");
        let mut s = CoworkSettings::default();
        s.permissions.max_session_bytes = 1;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("permissions.max_session_bytes"), "{err}");
        let mut s = CoworkSettings::default();
        s.sandbox.workspace_roots.clear();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("sandbox.workspace_roots"), "{err}");
        let mut s = CoworkSettings::default();
        s.planner.domains[1].patterns.push("/abs/**".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("planner.domains[1].patterns[2]"), "{err}");
        let mut s = CoworkSettings::default();
        s.agents.heartbeat_timeout_ms = s.agents.heartbeat_interval_ms;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("agents.heartbeat_timeout_ms"), "{err}");
        let mut s = CoworkSettings::default();
        s.executor.container_workdir = "rel".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("executor.container_workdir"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn sections_load_from_the_environment_and_unknown_keys_are_named() {
        use liquid_runtime::ServiceConfig;
        figment::Jail::expect_with(|jail| {
            jail.set_env("LIQUID_COWORK__SANDBOX__ROOT", "/data/sandboxes");
            jail.set_env(
                "LIQUID_COWORK__SANDBOX__WORKSPACE_ROOTS",
                r#"["/data/workspaces/{tenant}", "/srv/shared"]"#,
            );
            jail.set_env("LIQUID_COWORK__PERMISSIONS__MAX_FILE_BYTES", "4096");
            jail.set_env(
                "LIQUID_COWORK__PERMISSIONS__DEFAULT_CAPABILITIES",
                r#"["read", "execute"]"#,
            );
            let cfg = ServiceConfig::<CoworkSettings>::load(&crate::SERVICE, None).unwrap();
            let s = &cfg.settings;
            assert_eq!(s.sandbox.root, "/data/sandboxes");
            assert_eq!(
                s.sandbox.workspace_roots,
                ["/data/workspaces/{tenant}", "/srv/shared"]
            );
            assert_eq!(s.permissions.max_file_bytes, 4096);
            assert_eq!(
                s.permissions.default_capabilities,
                [Capability::Read, Capability::Execute]
            );
            jail.set_env("LIQUID_COWORK__SANDBOX__ROOTS", "/x");
            let err = ServiceConfig::<CoworkSettings>::load(&crate::SERVICE, None).unwrap_err();
            assert!(err.to_string().contains("roots"), "{err}");
            Ok(())
        });
    }
}
