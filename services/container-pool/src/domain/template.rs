//! What a pooled container is: its image, limits and isolation, resolved from a
//! `[templates.<name>]` section with unset values filled from host facts.
//!
//! Isolation is not optional: every template gets a read-only root, tmpfs `/tmp` and
//! `/run/secrets`, a private `/workspace` volume, the non-root user 10001, `no-new-privileges`,
//! no capabilities, memory/CPU/pids limits, no swap, and nothing published on a host port. The
//! network is `none` unless the template opts into the egress network.

use std::collections::BTreeMap;
use std::time::Duration;

use liquid_kit::config::ConfigError;
use serde::Serialize;

use crate::config::{NetworkPolicy, ReleasePolicy, TemplateConfig};
use crate::domain::autoconf::{self, HostFacts};

/// The work directory of every pooled container (a volume, so the archive API reaches it).
pub const WORKDIR: &str = "/workspace";
/// Where claim secrets are written, one file per secret (tmpfs, mode 0700).
pub const SECRETS_DIR: &str = "/run/secrets";
/// Where a claim's staging directory is bound.
pub const STAGING_DIR: &str = "/mnt/staging";
/// The non-root user pooled containers run as.
pub const USER: &str = "10001:10001";
/// User id of [`USER`].
pub const UID: u32 = 10001;

/// Which image a template runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageChoice {
    /// The busybox base image the service builds itself.
    Base,
    /// The toolbox image from `[docker] toolbox_rootfs`.
    Toolbox,
    /// A local image by reference (never pulled).
    Local(String),
}

impl ImageChoice {
    /// Parses a template's `image` value.
    pub fn parse(value: &str) -> ImageChoice {
        match value {
            "base" => ImageChoice::Base,
            "toolbox" => ImageChoice::Toolbox,
            other => ImageChoice::Local(other.to_owned()),
        }
    }
}

/// A template with every value decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    /// Name.
    pub name: String,
    /// Image.
    pub image: ImageChoice,
    /// Idle containers kept ready.
    pub min_idle: u32,
    /// Most containers in total.
    pub max_total: u32,
    /// Idle containers beyond `min_idle` older than this are removed.
    #[serde(with = "secs")]
    pub idle_ttl: Duration,
    /// Memory limit in bytes (swap is the same: none on top).
    pub memory_bytes: i64,
    /// CPU limit in billionths of a core.
    pub nano_cpus: i64,
    /// Process limit.
    pub pids_limit: i64,
    /// Network.
    pub network: NetworkPolicy,
    /// tmpfs size of /tmp in MiB.
    pub tmp_size_mib: u64,
    /// Reset or replace on release.
    pub on_release: ReleasePolicy,
    /// Claims before a container is replaced.
    pub max_uses: u32,
    /// Allowed secret names (`*`: all).
    pub secrets: Vec<String>,
    /// Pause idle containers.
    pub pause_idle: bool,
}

mod secs {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl Template {
    /// Resolves a configured template: unset sizes come from `facts` (all enabled hosts).
    pub fn resolve(name: &str, config: &TemplateConfig, facts: &HostFacts) -> Template {
        let max_total = config
            .max_total
            .unwrap_or_else(|| autoconf::default_max_total(facts, config.memory_mib));
        let min_idle = config
            .min_idle
            .unwrap_or_else(|| autoconf::default_min_idle(facts, max_total));
        Template {
            name: name.to_owned(),
            image: ImageChoice::parse(&config.image),
            min_idle: min_idle.min(max_total),
            max_total,
            idle_ttl: Duration::from_secs(config.idle_ttl_secs),
            memory_bytes: i64::try_from(config.memory_mib.saturating_mul(1024 * 1024))
                .unwrap_or(i64::MAX),
            nano_cpus: (config.cpus * 1e9).round() as i64,
            pids_limit: config.pids_limit,
            network: config.network,
            tmp_size_mib: config.tmp_size_mib,
            on_release: config.on_release,
            max_uses: config.max_uses,
            secrets: config.secrets.clone(),
            pause_idle: config.pause_idle,
        }
    }

    /// Whether claims of this template may ask for secret `name`.
    pub fn allows_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s == "*" || s == name)
    }

    /// The tmpfs mounts: `/tmp` and `/run/secrets`, owned by the pool user.
    pub fn tmpfs(&self) -> Vec<(String, String)> {
        vec![
            (
                "/tmp".to_owned(),
                format!(
                    "rw,nosuid,nodev,size={}m,mode=1777",
                    self.tmp_size_mib.max(1)
                ),
            ),
            (
                SECRETS_DIR.to_owned(),
                format!("rw,nosuid,nodev,noexec,size=1m,mode=0700,uid={UID},gid={UID}"),
            ),
        ]
    }
}

/// Checks one `[templates.<name>]` section; errors name the key.
pub fn validate_config(
    name: &str,
    t: &TemplateConfig,
    refs: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("templates.{name}.{field}");
    if !crate::config::valid_name(name) {
        return Err(ConfigError::invalid(
            format!("templates.{name}"),
            "template names are 1-64 characters of a-z, 0-9, _, . and -",
        ));
    }
    if t.image.trim().is_empty() || t.image.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(
            key("image"),
            "must be `base`, `toolbox` or a local image reference",
        ));
    }
    if t.max_total == Some(0) {
        return Err(ConfigError::invalid(key("max_total"), "must be at least 1"));
    }
    if let (Some(min), Some(max)) = (t.min_idle, t.max_total)
        && min > max
    {
        return Err(ConfigError::invalid(
            key("min_idle"),
            format!("({min}) exceeds templates.{name}.max_total ({max})"),
        ));
    }
    if !(16..=1_048_576).contains(&t.memory_mib) {
        return Err(ConfigError::invalid(
            key("memory_mib"),
            "must be between 16 and 1048576 (MiB)",
        ));
    }
    if !(t.cpus.is_finite() && t.cpus > 0.0 && t.cpus <= 1024.0) {
        return Err(ConfigError::invalid(
            key("cpus"),
            "must be a number of cores greater than 0",
        ));
    }
    if t.pids_limit < 16 {
        return Err(ConfigError::invalid(
            key("pids_limit"),
            "must be at least 16 (the pool's own processes need a few)",
        ));
    }
    if t.tmp_size_mib == 0 || t.tmp_size_mib > t.memory_mib {
        return Err(ConfigError::invalid(
            key("tmp_size_mib"),
            format!(
                "must be between 1 and templates.{name}.memory_mib ({})",
                t.memory_mib
            ),
        ));
    }
    if t.max_uses == 0 {
        return Err(ConfigError::invalid(key("max_uses"), "must be at least 1"));
    }
    for (i, s) in t.secrets.iter().enumerate() {
        if s != "*" && !refs.contains_key(s) && !crate::config::valid_name(s) {
            return Err(ConfigError::invalid(
                format!("templates.{name}.secrets[{i}]"),
                format!("`{s}` is not a valid secret name"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            cores: 8,
            memory_mib: 16 * 1024,
        }
    }

    #[test]
    fn unset_sizes_come_from_the_host_and_set_ones_win() {
        let t = Template::resolve("default", &TemplateConfig::default(), &facts());
        assert_eq!(t.max_total, 16, "half of 16 GiB in 512 MiB containers");
        assert_eq!(t.min_idle, 4);
        let cfg = TemplateConfig {
            min_idle: Some(1),
            max_total: Some(3),
            ..TemplateConfig::default()
        };
        let t = Template::resolve("x", &cfg, &facts());
        assert_eq!((t.min_idle, t.max_total), (1, 3));
        assert_eq!(t.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(t.nano_cpus, 1_000_000_000);
    }

    #[test]
    fn a_derived_min_idle_never_exceeds_a_small_max_total() {
        let cfg = TemplateConfig {
            max_total: Some(1),
            ..TemplateConfig::default()
        };
        let t = Template::resolve("x", &cfg, &facts());
        assert_eq!((t.min_idle, t.max_total), (1, 1));
    }

    #[test]
    fn secrets_are_allowed_by_name_or_wildcard() {
        let mut t = Template::resolve("x", &TemplateConfig::default(), &facts());
        assert!(t.allows_secret("anything"));
        t.secrets = vec!["gh".into()];
        assert!(t.allows_secret("gh"));
        assert!(!t.allows_secret("aws"));
    }

    #[test]
    fn validation_names_the_key_and_the_limit() {
        let refs = BTreeMap::new();
        let check = |t: TemplateConfig| {
            validate_config("t", &t, &refs)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(check(TemplateConfig::default()), "");
        let e = check(TemplateConfig {
            min_idle: Some(5),
            max_total: Some(2),
            ..Default::default()
        });
        assert!(
            e.contains("templates.t.min_idle") && e.contains("(2)"),
            "{e}"
        );
        let e = check(TemplateConfig {
            memory_mib: 4,
            ..Default::default()
        });
        assert!(e.contains("templates.t.memory_mib"), "{e}");
        let e = check(TemplateConfig {
            cpus: f64::NAN,
            ..Default::default()
        });
        assert!(e.contains("templates.t.cpus"), "{e}");
        let e = check(TemplateConfig {
            pids_limit: 2,
            ..Default::default()
        });
        assert!(e.contains("templates.t.pids_limit"), "{e}");
        let e = check(TemplateConfig {
            tmp_size_mib: 4096,
            ..Default::default()
        });
        assert!(e.contains("templates.t.tmp_size_mib"), "{e}");
        let e = check(TemplateConfig {
            max_total: Some(0),
            ..Default::default()
        });
        assert!(e.contains("templates.t.max_total"), "{e}");
        let e = check(TemplateConfig {
            image: "two words".into(),
            ..Default::default()
        });
        assert!(e.contains("templates.t.image"), "{e}");
        let e = check(TemplateConfig {
            secrets: vec!["Bad Name".into()],
            ..Default::default()
        });
        assert!(e.contains("templates.t.secrets[0]"), "{e}");
        let e = validate_config("Bad", &TemplateConfig::default(), &refs).unwrap_err();
        assert!(e.to_string().contains("templates.Bad"), "{e}");
    }

    #[test]
    fn isolation_mounts_are_owned_by_the_pool_user() {
        let t = Template::resolve("x", &TemplateConfig::default(), &facts());
        let tmpfs = t.tmpfs();
        assert!(tmpfs[1].1.contains("uid=10001") && tmpfs[1].1.contains("mode=0700"));
        assert!(tmpfs[0].1.contains("size=64m"));
        assert_eq!(ImageChoice::parse("base"), ImageChoice::Base);
        assert_eq!(
            ImageChoice::parse("me/img:1"),
            ImageChoice::Local("me/img:1".into())
        );
    }
}
