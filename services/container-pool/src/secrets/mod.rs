//! Secrets for claims: named references (`[secrets.refs]`) resolved from the environment,
//! HashiCorp Vault (KV v2) or AWS Secrets Manager, cached for a TTL, and written into a claim's
//! container as files only after it was acquired (and wiped on release by the reset).
//!
//! Values travel as [`Secret`] and are never logged or put into an error; errors name the
//! secret and the backend's reason only.

pub mod aws;
pub mod vault;

use std::collections::BTreeMap;
use std::time::Duration;

use liquid_kit::Secret;

use crate::config::SecretsSection;
use crate::error::PoolError;

/// Where one named secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the service.
    Env {
        /// Its name.
        var: String,
    },
    /// A key of a KV v2 secret in Vault.
    Vault {
        /// Path under the KV mount.
        path: String,
        /// Key within the secret's data.
        key: String,
    },
    /// An AWS Secrets Manager secret, or one JSON key of it.
    Aws {
        /// Secret id (name or ARN).
        id: String,
        /// Key of the JSON object in `SecretString`; `None`: the whole string.
        key: Option<String>,
    },
}

impl SecretRef {
    /// Parses `env:VAR`, `vault:<path>#<key>` or `aws:<id>[#<key>]`.
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        let bad = || {
            format!(
                "`{text}` is not a secret reference; use env:VARIABLE, vault:<path>#<key> or aws:<secret id>[#<key>]"
            )
        };
        let (scheme, rest) = text.split_once(':').ok_or_else(bad)?;
        match scheme {
            "env" if !rest.is_empty() && !rest.contains(['=', '\0']) => Ok(SecretRef::Env {
                var: rest.to_owned(),
            }),
            "vault" => {
                let (path, key) = rest.split_once('#').ok_or_else(bad)?;
                let path = path.trim_matches('/');
                if path.is_empty() || key.is_empty() || path.contains("..") {
                    return Err(bad());
                }
                Ok(SecretRef::Vault {
                    path: path.to_owned(),
                    key: key.to_owned(),
                })
            }
            "aws" => {
                let (id, key) = match rest.split_once('#') {
                    Some((id, key)) if !key.is_empty() => (id, Some(key.to_owned())),
                    Some(_) => return Err(bad()),
                    None => (rest, None),
                };
                if id.is_empty() {
                    return Err(bad());
                }
                Ok(SecretRef::Aws {
                    id: id.to_owned(),
                    key,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Resolves secret names to values through the configured backends, with a TTL cache.
pub struct SecretResolver {
    refs: BTreeMap<String, SecretRef>,
    vault: Option<vault::VaultClient>,
    aws: Option<aws::AwsSecretsClient>,
    cache: Option<moka::future::Cache<String, Secret<String>>>,
}

impl std::fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretResolver")
            .field("names", &self.refs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SecretResolver {
    /// A resolver for `[secrets]` (already validated).
    pub fn new(config: &SecretsSection) -> Result<SecretResolver, PoolError> {
        let mut refs = BTreeMap::new();
        for (name, text) in &config.refs {
            let r = SecretRef::parse(text)
                .map_err(|reason| PoolError::invalid(format!("secrets.refs.{name}"), reason))?;
            refs.insert(name.clone(), r);
        }
        let vault = if config.vault.address.is_empty() {
            None
        } else {
            Some(vault::VaultClient::new(&config.vault)?)
        };
        let aws = if config.aws.region.is_empty() {
            None
        } else {
            Some(aws::AwsSecretsClient::new(&config.aws)?)
        };
        let cache = (config.cache_ttl_secs > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(config.cache_ttl_secs))
                .build()
        });
        Ok(SecretResolver {
            refs,
            vault,
            aws,
            cache,
        })
    }

    /// Whether a secret of this name is configured.
    pub fn knows(&self, name: &str) -> bool {
        self.refs.contains_key(name)
    }

    /// The configured names.
    pub fn names(&self) -> Vec<String> {
        self.refs.keys().cloned().collect()
    }

    /// The value of secret `name` (from the cache when fresh).
    pub async fn resolve(&self, name: &str) -> Result<Secret<String>, PoolError> {
        let reference = self
            .refs
            .get(name)
            .ok_or_else(|| PoolError::UnknownSecret(name.to_owned()))?;
        if let Some(cache) = &self.cache
            && let Some(v) = cache.get(name).await
        {
            return Ok(v);
        }
        let fail = |reason: String| PoolError::Secret {
            name: name.to_owned(),
            reason,
        };
        let value = match reference {
            SecretRef::Env { var } => std::env::var(var)
                .map(Secret::new)
                .map_err(|_| fail(format!("environment variable {var} is not set")))?,
            SecretRef::Vault { path, key } => {
                let vault = self
                    .vault
                    .as_ref()
                    .ok_or_else(|| fail("vault is not configured".into()))?;
                vault.read(path, key).await.map_err(fail)?
            }
            SecretRef::Aws { id, key } => {
                let aws = self
                    .aws
                    .as_ref()
                    .ok_or_else(|| fail("aws is not configured".into()))?;
                aws.get(id, key.as_deref()).await.map_err(fail)?
            }
        };
        if let Some(cache) = &self.cache {
            cache.insert(name.to_owned(), value.clone()).await;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_or_say_what_is_accepted() {
        assert_eq!(
            SecretRef::parse("env:GH_TOKEN").unwrap(),
            SecretRef::Env {
                var: "GH_TOKEN".into()
            }
        );
        assert_eq!(
            SecretRef::parse("vault:/ci/github/#token").unwrap(),
            SecretRef::Vault {
                path: "ci/github".into(),
                key: "token".into()
            }
        );
        assert_eq!(
            SecretRef::parse("aws:prod/db#password").unwrap(),
            SecretRef::Aws {
                id: "prod/db".into(),
                key: Some("password".into())
            }
        );
        assert_eq!(
            SecretRef::parse("aws:arn:aws:secretsmanager:eu-west-1:1:secret:x").unwrap(),
            SecretRef::Aws {
                id: "arn:aws:secretsmanager:eu-west-1:1:secret:x".into(),
                key: None
            }
        );
        for bad in [
            "",
            "env:",
            "vault:path",
            "vault:#k",
            "vault:a/../b#k",
            "aws:",
            "aws:x#",
            "file:/x",
            "plain",
        ] {
            let e = SecretRef::parse(bad).unwrap_err();
            assert!(e.contains("env:VARIABLE"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn env_secrets_resolve_and_unknown_names_are_refused() {
        // A variable every test process has; its value is not asserted, only that it resolves.
        let mut cfg = SecretsSection::default();
        cfg.refs.insert("path".into(), "env:PATH".into());
        cfg.refs.insert(
            "missing".into(),
            "env:LIQUID_TEST_SURELY_UNSET_VARIABLE".into(),
        );
        let r = SecretResolver::new(&cfg).unwrap();
        assert!(!r.resolve("path").await.unwrap().is_empty());
        let e = r.resolve("missing").await.unwrap_err().to_string();
        assert!(e.contains("LIQUID_TEST_SURELY_UNSET_VARIABLE"), "{e}");
        assert!(matches!(
            r.resolve("nope").await,
            Err(PoolError::UnknownSecret(_))
        ));
        assert!(format!("{r:?}").contains("path"));
    }
}
