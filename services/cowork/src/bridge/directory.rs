//! Discovery of the remote agents in `[a2a] agents`: each URL's agent card is fetched from
//! `<url>/.well-known/agent-card.json` when a step first needs it and kept for
//! `a2a.card_ttl_secs`. The cache is process-wide and keyed by URL (a card is a public document
//! of its URL, the same for every session and tenant). An agent whose card cannot be fetched is
//! skipped with a warning, so its steps run locally rather than not at all.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use liquid_a2a::client::A2aClient;
use liquid_a2a::{Binding, pb};

use crate::config::A2aBridgeSection;

/// One discovered remote agent.
#[derive(Clone)]
pub struct RemoteAgent {
    /// The configured base URL.
    pub url: String,
    /// Its card.
    pub card: pb::AgentCard,
}

impl RemoteAgent {
    /// Whether the card offers SendStreamingMessage.
    pub fn streams(&self) -> bool {
        self.card
            .capabilities
            .as_ref()
            .and_then(|c| c.streaming)
            .unwrap_or(false)
    }

    /// A client for the card's first interface among JSON-RPC, HTTP+JSON and gRPC, and the
    /// `tenant` value its requests carry (the interface's, which selects the agent on a gRPC
    /// interface shared by several agents).
    pub fn client(&self, token: &str) -> Result<(A2aClient, String), liquid_a2a::A2aError> {
        let preferred = [Binding::JsonRpc, Binding::HttpJson, Binding::Grpc];
        let client = A2aClient::from_card(&self.card, &preferred)?;
        let tenant = preferred
            .iter()
            .find_map(|b| {
                self.card
                    .supported_interfaces
                    .iter()
                    .find(|i| i.protocol_binding.eq_ignore_ascii_case(b.as_str()))
            })
            .map(|i| i.tenant.clone())
            .unwrap_or_default();
        let client = if token.is_empty() {
            client
        } else {
            client.with_bearer(token)
        };
        Ok((client, tenant))
    }
}

static CARDS: LazyLock<Mutex<HashMap<String, (Instant, pb::AgentCard)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The configured agents whose cards are known, in configuration order.
pub async fn discover(section: &A2aBridgeSection) -> Vec<RemoteAgent> {
    let ttl = Duration::from_secs(section.card_ttl_secs);
    let mut out = Vec::with_capacity(section.agents.len());
    for url in &section.agents {
        let cached = CARDS
            .lock()
            .ok()
            .and_then(|c| c.get(url).cloned())
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, card)| card);
        let card = match cached {
            Some(card) => card,
            None => match A2aClient::fetch_card(url).await {
                Ok(card) => {
                    if let Ok(mut c) = CARDS.lock() {
                        c.insert(url.clone(), (Instant::now(), card.clone()));
                    }
                    card
                }
                Err(error) => {
                    tracing::warn!(%error, url = %url, "a remote agent's card could not be fetched");
                    continue;
                }
            },
        };
        out.push(RemoteAgent {
            url: url.clone(),
            card,
        });
    }
    out
}

/// The remote agent that takes a step of `domain` titled `title`, with the matched skill id
/// (see [`super::matching`]).
pub async fn agent_for_step(
    section: &A2aBridgeSection,
    domain: &str,
    title: &str,
) -> Option<(RemoteAgent, String)> {
    if section.agents.is_empty() {
        return None;
    }
    let agents = discover(section).await;
    let cards: Vec<&pb::AgentCard> = agents.iter().map(|a| &a.card).collect();
    let (i, skill) = super::matching::pick(&cards, domain, title)?;
    agents.into_iter().nth(i).map(|a| (a, skill))
}
