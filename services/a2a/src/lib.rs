//! The a2a service: the A2A protocol v1.0 server hosting the platform's agents.
//!
//! It owns the protocol (through `liquid-a2a`'s bindings), the durable task store, streaming
//! across replicas and push notifications; agents are executors ([`agents`]). Routes:
//! JSON-RPC at `/a2a` (also `/a2a/` and the alias `/a2a/stream`), HTTP+JSON under `/a2a/rest`,
//! gRPC `lf.a2a.v1.A2AService` on the gRPC port, the public card at
//! `/.well-known/agent-card.json`; each hosted agent the same under `/agents/<name>/` (gRPC:
//! `tenant` = the agent's name). It must not read another service's tables.

pub mod agents;
pub mod cards;
pub mod config;
pub mod domain;
pub mod engine;
pub mod host;
pub mod lease;
pub mod metrics;
pub mod push;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use liquid_a2a::pb;
use liquid_a2a::{A2aEndpoint, ErrorTable};
use liquid_runtime::{Foundation, Service, ServiceDefaults, ServiceParts, StartError};
use liquid_store::Migrations;
use tokio_util::task::TaskTracker;

use crate::agents::AgentExecutor;
use crate::agents::remote::{OutboundAuth, RemoteExecutor};
use crate::cards::{CardServer, CardTemplate};
use crate::config::{A2aSettings, CardSigning, Profile};
use crate::engine::{EngineConfig, TaskEngine};
use crate::host::AgentHost;
use crate::push::{PushDelivery, PushPolicy};
use liquid_a2a::signature::CardSigner;

/// Name, version and usual ports of the a2a service.
pub static SERVICE: ServiceDefaults = ServiceDefaults {
    name: "a2a",
    version: env!("CARGO_PKG_VERSION"),
    http_port: 8081,
    grpc_port: Some(9081),
};

/// The service's schema, for Postgres and SQLite.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/a2a/postgres"),
    sqlite: sqlx::migrate!("../../migrations/a2a/sqlite"),
};

/// The a2a service, as the runtime starts it.
pub struct A2a;

/// One agent to host.
struct AgentSpec {
    name: String,
    description: String,
    executor: Arc<dyn AgentExecutor>,
    capabilities: pb::AgentCapabilities,
}

fn capabilities(on: bool, required_extension: Option<&str>) -> pb::AgentCapabilities {
    pb::AgentCapabilities {
        streaming: Some(on),
        push_notifications: Some(on),
        extended_agent_card: Some(on),
        extensions: required_extension
            .map(|uri| pb::AgentExtension {
                uri: uri.to_owned(),
                description: "required by the conformance profile".into(),
                required: true,
                params: None,
            })
            .into_iter()
            .collect(),
    }
}

fn base_card(name: &str, description: &str, caps: pb::AgentCapabilities) -> pb::AgentCard {
    pb::AgentCard {
        name: name.to_owned(),
        description: description.to_owned(),
        provider: Some(pb::AgentProvider {
            url: "https://example.invalid/liquid".into(),
            organization: "Liquid".into(),
        }),
        supported_interfaces: Vec::new(),
        version: SERVICE.version.to_owned(),
        documentation_url: None,
        capabilities: Some(caps),
        security_schemes: HashMap::from([(
            "bearer".to_owned(),
            pb::SecurityScheme {
                scheme: Some(pb::security_scheme::Scheme::HttpAuthSecurityScheme(
                    pb::HttpAuthSecurityScheme {
                        description: "a Liquid token (JWT)".into(),
                        scheme: "Bearer".into(),
                        bearer_format: "JWT".into(),
                    },
                )),
            },
        )]),
        security_requirements: vec![pb::SecurityRequirement {
            schemes: HashMap::from([("bearer".to_owned(), pb::StringList { list: vec![] })]),
        }],
        default_input_modes: vec![
            "text/plain".into(),
            "application/json".into(),
            "application/octet-stream".into(),
            "*/*".into(),
        ],
        default_output_modes: vec!["text/plain".into(), "application/json".into()],
        skills: vec![pb::AgentSkill {
            id: name.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            tags: vec!["liquid".into()],
            ..Default::default()
        }],
        signatures: Vec::new(),
        icon_url: None,
    }
}

fn agent_specs(profile: Profile) -> (AgentSpec, Vec<AgentSpec>) {
    use agents::echo::EchoAgent;
    use agents::tck::{REQUIRED_EXTENSION, TckAgent};
    let tck = |caps| AgentSpec {
        name: "tck".into(),
        description: "the A2A conformance kit's test agent".into(),
        executor: Arc::new(TckAgent),
        capabilities: caps,
    };
    let echo = AgentSpec {
        name: "echo".into(),
        description: "echoes the text it is sent".into(),
        executor: Arc::new(EchoAgent),
        capabilities: capabilities(true, None),
    };
    match profile {
        Profile::Platform => (
            AgentSpec {
                name: "liquid".into(),
                description: "the Liquid platform's agent".into(),
                executor: Arc::new(EchoAgent),
                capabilities: capabilities(true, None),
            },
            vec![echo, tck(capabilities(true, None))],
        ),
        Profile::Tck => (tck(capabilities(true, None)), vec![echo]),
        Profile::TckCapabilitiesOff => (tck(capabilities(false, None)), vec![echo]),
        Profile::TckRequiredExtension => (
            tck(capabilities(true, Some(REQUIRED_EXTENSION))),
            vec![echo],
        ),
    }
}

/// The configured remote agents, each behind a [`RemoteExecutor`]; executor calls carry
/// service tokens for the deployment's own issuer and audiences (what the executors verify).
fn remote_agent_specs(
    settings: &A2aSettings,
    foundation: &Foundation,
) -> Result<Vec<AgentSpec>, StartError> {
    let verifier = &foundation.verifier;
    let invalid = |key: String, reason: String| {
        StartError::Config(liquid_kit::config::ConfigError::Invalid { key, reason })
    };
    let source = if settings.a2a.service_key_file.is_empty() {
        None
    } else {
        let key =
            liquid_auth::SigningKey::load(std::path::Path::new(&settings.a2a.service_key_file))
                .map_err(|e| invalid("a2a.service_key_file".into(), e.to_string()))?;
        Some(liquid_auth::ServiceTokenSource::new(
            Arc::new(key),
            liquid_auth::TokenRequest::service(SERVICE.name, ["a2a:execute"])
                .issuer(verifier.issuer())
                .audiences(verifier.audiences().iter().cloned()),
        ))
    };
    let auth = OutboundAuth::new(source);
    let mut agents = settings.a2a.remote_agents.clone();
    if settings.a2a.cowork_agent
        && !agents.contains_key("cowork")
        && let Some(peer) = foundation
            .peers
            .get(&liquid_runtime::peer_key("cowork"))
            .filter(|p| !p.grpc.is_empty())
    {
        agents.insert(
            "cowork".into(),
            config::RemoteAgent {
                executor_url: peer.grpc.clone(),
                description: "Deep work on a workspace: plans the change, asks for approval, \
                              runs the steps in isolated containers and returns the diff"
                    .into(),
            },
        );
    }
    agents
        .iter()
        .map(|(name, agent)| {
            let executor = RemoteExecutor::new(name, &agent.executor_url, auth.clone())
                .map_err(|e| invalid(format!("a2a.remote_agents.{name}.executor_url"), e))?;
            Ok(AgentSpec {
                name: name.clone(),
                description: if agent.description.is_empty() {
                    format!("the {name} agent")
                } else {
                    agent.description.clone()
                },
                executor: Arc::new(executor),
                capabilities: capabilities(true, None),
            })
        })
        .collect()
}

/// The card signer of `[a2a.card_signing]`, if a key is configured.
fn card_signer(config: &CardSigning) -> Result<Option<CardSigner>, StartError> {
    if config.key_file.is_empty() {
        return Ok(None);
    }
    let invalid = |key: &str, reason: String| {
        StartError::Config(liquid_kit::config::ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        })
    };
    let pem = std::fs::read(&config.key_file)
        .map_err(|e| invalid("a2a.card_signing.key_file", e.to_string()))?;
    let algorithm = liquid_a2a::signature::algorithm(&config.algorithm)
        .map_err(|e| invalid("a2a.card_signing.algorithm", e.to_string()))?;
    let kid = if config.kid.is_empty() {
        std::path::Path::new(&config.key_file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "card".into())
    } else {
        config.kid.clone()
    };
    let jku = (!config.jku.is_empty()).then_some(config.jku.as_str());
    CardSigner::from_pem(&pem, algorithm, &kid, jku)
        .map(Some)
        .map_err(|e| invalid("a2a.card_signing.key_file", e.to_string()))
}

struct Mounted {
    endpoint: A2aEndpoint,
    cards: CardServer,
}

fn mount(
    spec: AgentSpec,
    prefix: &str,
    grpc_tenant: &str,
    engine: &TaskEngine,
    settings: &A2aSettings,
    grpc_port: u16,
    signer: Option<&CardSigner>,
) -> Mounted {
    let card = base_card(&spec.name, &spec.description, spec.capabilities);
    let extended = {
        let mut c = card.clone();
        c.description = format!(
            "{} (extended card for authenticated callers)",
            spec.description
        );
        c.skills.push(pb::AgentSkill {
            id: format!("{}-extended", spec.name),
            name: "extended".into(),
            description: "visible to authenticated callers only".into(),
            tags: vec!["extended".into()],
            ..Default::default()
        });
        c
    };
    let host = AgentHost::new(
        &spec.name,
        spec.executor,
        engine.clone(),
        Some(extended),
        PushPolicy::from_config(&settings.push),
    );
    let endpoint = A2aEndpoint::new(Arc::new(host), card.clone(), settings.a2a.error_table);
    let cards = CardServer::new(
        CardTemplate {
            card,
            prefix: prefix.to_owned(),
            grpc_tenant: grpc_tenant.to_owned(),
        },
        &settings.a2a.public_url,
        &settings.a2a.public_grpc_url,
        grpc_port,
        settings.a2a.card_max_age_secs,
        signer.cloned(),
    );
    Mounted { endpoint, cards }
}

fn protocol_routes(endpoint: &A2aEndpoint) -> Router {
    let rpc = liquid_a2a::jsonrpc::method_router(endpoint.clone());
    Router::new()
        .route("/a2a", rpc.clone())
        .route("/a2a/", rpc.clone())
        .route("/a2a/stream", rpc)
        .nest("/a2a/rest", liquid_a2a::rest::router(endpoint.clone()))
}

impl Service for A2a {
    type Settings = A2aSettings;

    fn defaults() -> &'static ServiceDefaults {
        &SERVICE
    }

    fn migrations() -> &'static Migrations {
        &MIGRATIONS
    }

    fn embedded_defaults(settings: &mut A2aSettings, data_dir: &std::path::Path) {
        // The dev key `liquid up` generates: cowork trusts the executor calls it signs.
        let dev_key = data_dir.join("dev-signing-key.pem");
        if dev_key.exists() || settings.a2a.service_key_file.is_empty() {
            settings.a2a.service_key_file = dev_key.display().to_string();
        }
    }

    async fn build(
        foundation: &Foundation,
        settings: &A2aSettings,
    ) -> Result<ServiceParts, StartError> {
        let store = store::open_leased(
            &foundation.database,
            store::Lease {
                owner: foundation.info.instance_id.to_string(),
                length: Duration::from_secs(settings.a2a.lease_secs),
            },
        );
        let tracker = TaskTracker::new();
        let engine = TaskEngine::new(
            store.clone(),
            foundation.bus.clone(),
            EngineConfig {
                task_ttl: Duration::from_secs(settings.a2a.task_ttl_secs),
                push_configs_per_task: settings.a2a.push_configs_per_task,
                idempotent_message_ids: settings.a2a.idempotent_message_ids,
                ..EngineConfig::default()
            },
            tracker.clone(),
            foundation.shutdown.clone(),
        );
        engine.start_background().await?;
        metrics::register();
        lease::spawn(
            &engine,
            Duration::from_secs(settings.a2a.lease_renew_secs),
            &tracker,
            foundation.shutdown.clone(),
        );
        metrics::spawn_task_gauge(
            store.clone(),
            Duration::from_secs(15),
            &tracker,
            foundation.shutdown.clone(),
        );
        engine.observe(Arc::new(metrics::TransitionCounter));
        engine.observe(PushDelivery::start(
            store,
            settings.push.clone(),
            &tracker,
            foundation.shutdown.clone(),
        ));
        let shutdown = foundation.shutdown.clone();
        foundation.spawn("a2a-engine", async move {
            shutdown.cancelled().await;
            tracker.close();
            tracker.wait().await;
        });

        let grpc_port = SERVICE.grpc_port.unwrap_or(9081);
        let signer = card_signer(&settings.a2a.card_signing)?;
        let (root_spec, mut agent_specs) = agent_specs(settings.a2a.profile);
        agent_specs.extend(remote_agent_specs(settings, foundation)?);
        let root = mount(
            root_spec,
            "",
            "",
            &engine,
            settings,
            grpc_port,
            signer.as_ref(),
        );
        let mut http = protocol_routes(&root.endpoint);
        let mut public_http = Router::new().route(
            liquid_a2a::card::WELL_KNOWN_PATH,
            get(cards::serve_card).with_state(root.cards.clone()),
        );
        let mut by_tenant = HashMap::new();
        for spec in agent_specs {
            let name = spec.name.clone();
            let prefix = format!("/agents/{name}");
            let agent = mount(
                spec,
                &prefix,
                &name,
                &engine,
                settings,
                grpc_port,
                signer.as_ref(),
            );
            http = http.nest(&prefix, protocol_routes(&agent.endpoint));
            public_http = public_http.route(
                &format!("{prefix}{}", liquid_a2a::card::WELL_KNOWN_PATH),
                get(cards::serve_card).with_state(agent.cards.clone()),
            );
            by_tenant.insert(name, agent.endpoint);
        }
        let grpc = liquid_a2a::grpc::GrpcBinding::new(liquid_a2a::grpc::TenantRouter::new(
            root.endpoint,
            by_tenant,
        ))
        .into_server();
        let grpc = tonic::service::interceptor::InterceptedService::new(
            grpc,
            liquid_auth::AuthInterceptor::new(foundation.verifier.clone()),
        );
        let grpc = tonic::service::Routes::new(grpc);
        Ok(ServiceParts {
            http,
            public_http,
            grpc: Some(grpc),
            readiness: Vec::new(),
        })
    }
}

/// The error table in use when nothing is configured.
pub const DEFAULT_ERROR_TABLE: ErrorTable = ErrorTable::V1_0_1;
