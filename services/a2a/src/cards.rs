//! The agent cards the service publishes: the root card (the platform's agent) at
//! `/.well-known/agent-card.json` and one per hosted agent at
//! `/agents/<name>/.well-known/agent-card.json`, each listing its JSON-RPC, HTTP+JSON and gRPC
//! interfaces. Interface URLs come from `a2a.public_url` or, when that is empty, from the
//! request's `X-Forwarded-Proto`/`X-Forwarded-Host`/`Host`, so a card always names the address
//! the client used. With `[a2a.card_signing]` every card carries a JWS signature (§8.4). The
//! gRPC interface is a gRPC target `host:port` (what gRPC libraries and the
//! conformance kit dial) unless `a2a.public_grpc_url` says otherwise. Serialised documents are
//! cached per base URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use liquid_a2a::card::CardDocument;
use liquid_a2a::pb;
use liquid_a2a::signature::CardSigner;

/// Static facts of one agent's card; interfaces are added per base URL.
#[derive(Debug, Clone)]
pub struct CardTemplate {
    /// The card without `supportedInterfaces`.
    pub card: pb::AgentCard,
    /// Path prefix of the agent (`""` for the root agent, `/agents/<name>` otherwise).
    pub prefix: String,
    /// The gRPC `tenant` value selecting this agent (`""` for the root agent).
    pub grpc_tenant: String,
}

impl CardTemplate {
    /// The card with its three interfaces under `base` (and gRPC at `grpc_base`).
    pub fn render(&self, base: &str, grpc_base: &str) -> pb::AgentCard {
        let base = base.trim_end_matches('/');
        let mut card = self.card.clone();
        let interface = |url: String, binding: &str, tenant: &str| pb::AgentInterface {
            url,
            protocol_binding: binding.to_owned(),
            tenant: tenant.to_owned(),
            protocol_version: liquid_a2a::PROTOCOL_VERSION.to_owned(),
        };
        card.supported_interfaces = vec![
            interface(format!("{base}{}/a2a", self.prefix), "JSONRPC", ""),
            interface(format!("{base}{}/a2a/rest", self.prefix), "HTTP+JSON", ""),
            interface(
                grpc_base.trim_end_matches('/').to_owned(),
                "GRPC",
                &self.grpc_tenant,
            ),
        ];
        card
    }
}

/// Serves one agent's card with caching headers.
#[derive(Clone)]
pub struct CardServer {
    template: Arc<CardTemplate>,
    public_url: String,
    public_grpc_url: String,
    grpc_port: u16,
    max_age_secs: u32,
    signer: Option<CardSigner>,
    modified: DateTime<Utc>,
    documents: Arc<Mutex<HashMap<String, CardDocument>>>,
}

/// Most distinct base URLs whose documents are cached.
const MAX_CACHED_BASES: usize = 64;

impl CardServer {
    /// A server for `template`.
    pub fn new(
        template: CardTemplate,
        public_url: &str,
        public_grpc_url: &str,
        grpc_port: u16,
        max_age_secs: u32,
        signer: Option<CardSigner>,
    ) -> CardServer {
        CardServer {
            template: Arc::new(template),
            public_url: public_url.to_owned(),
            public_grpc_url: public_grpc_url.to_owned(),
            grpc_port,
            max_age_secs,
            signer,
            modified: Utc::now(),
            documents: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn bases(&self, headers: &HeaderMap) -> (String, String) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_owned())
        };
        let host = header("x-forwarded-host")
            .or_else(|| header("host"))
            .unwrap_or_else(|| "localhost".into());
        let scheme = header("x-forwarded-proto").unwrap_or_else(|| "http".into());
        let base = if self.public_url.is_empty() {
            format!("{scheme}://{host}")
        } else {
            self.public_url.clone()
        };
        let grpc = if self.public_grpc_url.is_empty() {
            let hostname = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
            format!("{hostname}:{}", self.grpc_port)
        } else {
            self.public_grpc_url.clone()
        };
        (base, grpc)
    }

    /// The rendered (and, with a signer, signed) card for a request's headers.
    pub fn card_for(&self, headers: &HeaderMap) -> Result<pb::AgentCard, liquid_a2a::A2aError> {
        let (base, grpc) = self.bases(headers);
        self.rendered(&base, &grpc)
    }

    fn rendered(&self, base: &str, grpc: &str) -> Result<pb::AgentCard, liquid_a2a::A2aError> {
        let card = self.template.render(base, grpc);
        match &self.signer {
            Some(signer) => signer.signed(card),
            None => Ok(card),
        }
    }

    fn respond(&self, headers: &HeaderMap) -> Response {
        let (base, grpc) = self.bases(headers);
        let key = format!("{base} {grpc}");
        let cached = self
            .documents
            .lock()
            .ok()
            .and_then(|d| d.get(&key).cloned());
        let document = match cached {
            Some(d) => d,
            None => match self
                .rendered(&base, &grpc)
                .and_then(|card| CardDocument::new(&card, self.modified, self.max_age_secs))
            {
                Ok(d) => {
                    if let Ok(mut docs) = self.documents.lock() {
                        if docs.len() >= MAX_CACHED_BASES {
                            docs.clear();
                        }
                        docs.insert(key, d.clone());
                    }
                    d
                }
                Err(e) => return liquid_a2a::rest::error_response(&e, Default::default()),
            },
        };
        document.respond(headers)
    }
}

/// GET handler for a card.
pub async fn serve_card(State(server): State<CardServer>, headers: HeaderMap) -> Response {
    server.respond(&headers).into_response()
}
