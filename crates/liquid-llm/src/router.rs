//! Provider routing by configuration: model name → provider entry → client.
//!
//! An exact `model` route beats any `prefix` route; among prefixes the longest wins. A route
//! to a provider without an API key answers through the offline provider (labelled, with the
//! provider it stood in for) unless `offline_fallback` is off, in which case the request fails
//! with `failed_precondition`. Every client is wrapped in [`MeteredClient`], so cost, spans and
//! metrics are the same whichever provider answers.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use liquid_kit::config::Validate;

use crate::assemble::ChatStream;
use crate::client::ModelClient;
use crate::config::{LlmConfig, ProviderKind};
use crate::error::LlmError;
use crate::metered::MeteredClient;
use crate::offline::{OFFLINE_PROVIDER, OfflineClient};
use crate::pricing::PriceTable;
use crate::providers::anthropic::AnthropicClient;
use crate::providers::gemini::GeminiClient;
use crate::providers::openai::OpenAiClient;
use crate::transport::Transport;
use crate::types::{ChatRequest, ChatResponse};

/// The offline provider standing in for an unkeyed provider, saying which.
struct OfflineStandIn {
    why: String,
}

#[async_trait]
impl ModelClient for OfflineStandIn {
    fn name(&self) -> &str {
        OFFLINE_PROVIDER
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(OfflineClient.respond(request, Some(&self.why)))
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        Ok(OfflineClient.respond_stream(request, Some(&self.why)))
    }
}

/// Where a model name leads.
#[derive(Clone)]
pub enum RouteTarget {
    /// A configured provider with a key.
    Provider {
        /// Provider entry name.
        name: String,
        /// Its (metered) client.
        client: Arc<dyn ModelClient>,
    },
    /// The offline provider (explicitly, or standing in for an unkeyed provider).
    Offline {
        /// The provider it stands in for, if any.
        instead_of: Option<String>,
        /// Its (metered) client.
        client: Arc<dyn ModelClient>,
    },
}

impl RouteTarget {
    fn client(&self) -> &Arc<dyn ModelClient> {
        match self {
            RouteTarget::Provider { client, .. } | RouteTarget::Offline { client, .. } => client,
        }
    }
}

enum Slot {
    Ready(RouteTarget),
    MissingKey(String),
}

/// The routing client: implements [`ModelClient`] for every configured model.
pub struct ModelRouter {
    exact: HashMap<String, String>,
    prefixes: Vec<(String, String)>,
    slots: HashMap<String, Slot>,
    default_model: String,
    prices: Arc<PriceTable>,
}

impl ModelRouter {
    /// Builds the router and every provider client from `config` (validated first).
    pub fn from_config(config: &LlmConfig) -> Result<Self, LlmError> {
        config.validate()?;
        let transport = Transport::new(config)?;
        ModelRouter::with_transport(config, transport)
    }

    /// Like [`ModelRouter::from_config`] with an explicit transport (tests use short
    /// timeouts and back-offs).
    pub fn with_transport(config: &LlmConfig, transport: Transport) -> Result<Self, LlmError> {
        config.validate()?;
        let prices = Arc::new(PriceTable::new(&config.prices));
        let metered = |c: Arc<dyn ModelClient>| -> Arc<dyn ModelClient> {
            Arc::new(MeteredClient::new(c, prices.clone()))
        };
        let mut slots = HashMap::new();
        slots.insert(
            OFFLINE_PROVIDER.to_owned(),
            Slot::Ready(RouteTarget::Offline {
                instead_of: None,
                client: metered(Arc::new(OfflineClient)),
            }),
        );
        for (name, p) in &config.providers {
            let slot = if p.api_key.is_empty() {
                if config.offline_fallback {
                    Slot::Ready(RouteTarget::Offline {
                        instead_of: Some(name.clone()),
                        client: metered(Arc::new(OfflineStandIn {
                            why: format!("provider `{name}`"),
                        })),
                    })
                } else {
                    Slot::MissingKey(name.clone())
                }
            } else {
                let client: Arc<dyn ModelClient> = match p.kind {
                    ProviderKind::Gemini => {
                        Arc::new(GeminiClient::new(name, p, transport.clone())?)
                    }
                    ProviderKind::Anthropic => {
                        Arc::new(AnthropicClient::new(name, p, transport.clone())?)
                    }
                    ProviderKind::Openai => {
                        Arc::new(OpenAiClient::new(name, p, transport.clone())?)
                    }
                };
                Slot::Ready(RouteTarget::Provider {
                    name: name.clone(),
                    client: metered(client),
                })
            };
            slots.insert(name.clone(), slot);
        }
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for route in &config.routes {
            if let Some(m) = &route.model {
                exact.insert(m.clone(), route.provider.clone());
            } else if let Some(p) = &route.prefix {
                prefixes.push((p.clone(), route.provider.clone()));
            }
        }
        // Longest prefix first; a stable sort keeps configuration order among equals.
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(ModelRouter {
            exact,
            prefixes,
            slots,
            default_model: config.default_model.clone(),
            prices,
        })
    }

    /// The configured default model.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The price table answers are priced with.
    pub fn prices(&self) -> &Arc<PriceTable> {
        &self.prices
    }

    /// Where `model` goes (empty means the default model).
    pub fn resolve(&self, model: &str) -> Result<RouteTarget, LlmError> {
        let model = if model.is_empty() {
            self.default_model.as_str()
        } else {
            model
        };
        let provider = self
            .exact
            .get(model)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| model.starts_with(p.as_str()))
                    .map(|(_, provider)| provider)
            })
            .ok_or_else(|| LlmError::UnknownModel {
                model: model.to_owned(),
            })?;
        match self.slots.get(provider) {
            Some(Slot::Ready(target)) => Ok(target.clone()),
            Some(Slot::MissingKey(name)) => Err(LlmError::NoApiKey {
                provider: name.clone(),
            }),
            None => Err(LlmError::UnknownModel {
                model: model.to_owned(),
            }),
        }
    }

    fn prepare(&self, request: &ChatRequest) -> Result<(RouteTarget, ChatRequest), LlmError> {
        request
            .validate()
            .map_err(|reason| LlmError::InvalidRequest { reason })?;
        let target = self.resolve(&request.model)?;
        let mut request = request.clone();
        if request.model.is_empty() {
            request.model = self.default_model.clone();
        }
        Ok((target, request))
    }
}

#[async_trait]
impl ModelClient for ModelRouter {
    fn name(&self) -> &str {
        "router"
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let (target, request) = self.prepare(request)?;
        target.client().complete(&request).await
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let (target, request) = self.prepare(request)?;
        target.client().stream(&request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use liquid_kit::Secret;

    fn keyed(config: &mut LlmConfig, name: &str) {
        if let Some(p) = config.providers.get_mut(name) {
            p.api_key = Secret::new("k".into());
        }
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let mut config = LlmConfig::default();
        keyed(&mut config, "openai");
        keyed(&mut config, "anthropic");
        config.routes.push(RouteConfig {
            model: None,
            prefix: Some("gpt-4o-special".into()),
            provider: "anthropic".into(),
        });
        config.routes.push(RouteConfig {
            model: Some("gpt-4o".into()),
            prefix: None,
            provider: "offline".into(),
        });
        let router = ModelRouter::from_config(&config).unwrap();
        let name = |m: &str| match router.resolve(m).unwrap() {
            RouteTarget::Provider { name, .. } => name,
            RouteTarget::Offline { instead_of, .. } => format!("offline/{instead_of:?}"),
        };
        assert_eq!(name("gpt-4o-mini"), "openai");
        assert_eq!(name("gpt-4o-special-1"), "anthropic");
        assert_eq!(name("gpt-4o"), "offline/None");
        assert_eq!(name("gemini-2.5-flash"), "offline/Some(\"gemini\")");
        assert!(matches!(
            router.resolve("llama-3"),
            Err(LlmError::UnknownModel { .. })
        ));
    }

    #[test]
    fn without_fallback_an_unkeyed_provider_is_a_clear_error() {
        let config = LlmConfig {
            offline_fallback: false,
            ..LlmConfig::default()
        };
        let router = ModelRouter::from_config(&config).unwrap();
        let err = router.resolve("claude-sonnet-4-5").err().unwrap();
        assert!(matches!(err, LlmError::NoApiKey { .. }));
        assert!(router.resolve("offline").is_ok());
    }
}
