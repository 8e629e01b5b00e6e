//! The cowork service's own configuration sections, beside the shared ones: `[sandbox]`
//! (where staging sandboxes live, which source directories a tenant may stage, how long a
//! sandbox lives) and `[permissions]` (the permission pipeline's blocked prefixes, extensions,
//! capabilities and size limits).
//!
//! Environment keys follow the platform (`LIQUID_COWORK__SANDBOX__ROOT`,
//! `LIQUID_COWORK__PERMISSIONS__MAX_FILE_BYTES`). Every section rejects unknown keys and
//! [`Validate`] names the key at fault. This module only holds and checks values.

use std::collections::BTreeMap;

use liquid_kit::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

use crate::domain::permission::Capability;

/// All of the service's own sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoworkSettings {
    /// `[sandbox]`.
    pub sandbox: SandboxSection,
    /// `[permissions]`.
    pub permissions: PermissionSection,
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
