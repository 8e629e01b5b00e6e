//! GraphQL through a real gateway with real peers started in the test: the a2a service and
//! container-pool (process runtime) on SQLite, the gateway on PostgreSQL and NATS. What a
//! client sees: each service's status from its own gRPC `GetInfo` with the caller's token,
//! agents and tasks from a2a, the container pool's status, prices and chat, subscriptions over
//! `graphql-transport-ws`, the same scopes as REST, clear errors for services that are missing
//! or down (cowork's fields included; `services/cowork/tests/through_gateway.rs` runs them
//! against a real cowork), the schema's cowork types, and the depth limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use liquid_kit::RunningService;
use liquid_runtime::{Peer, ServiceConfig};
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use serde_json::{Value, json};
use support::*;
use tokio_util::sync::CancellationToken;

struct Peers {
    _dir: tempfile::TempDir,
    _a2a: RunningService,
    _pool: RunningService,
    a2a: Peer,
    pool: Peer,
}

async fn peers(keys: &Keys) -> Peers {
    let dir = tempfile::tempdir().unwrap();
    let mut a2a = ServiceConfig::<<liquid_a2a_service::A2a as liquid_runtime::Service>::Settings>::defaults_for(
        &liquid_a2a_service::SERVICE,
    );
    a2a.server = a2a.server.ephemeral();
    a2a.database.url = format!("sqlite://{}/a2a.db", dir.path().display());
    a2a.auth = keys.auth.clone();
    let a2a_running =
        liquid_runtime::start::<liquid_a2a_service::A2a>(&a2a, CancellationToken::new())
            .await
            .unwrap();
    let mut pool = ServiceConfig::<
        <liquid_container_pool::ContainerPool as liquid_runtime::Service>::Settings,
    >::defaults_for(&liquid_container_pool::SERVICE);
    pool.server = pool.server.ephemeral();
    pool.database.url = format!("sqlite://{}/pool.db", dir.path().display());
    pool.auth = keys.auth.clone();
    pool.settings.pool.runtime = liquid_container_pool::config::RuntimeChoice::Process;
    pool.settings.pool.name = format!("gw-graphql-{}", uuid::Uuid::now_v7().simple());
    pool.settings.pool.process_root = dir.path().join("procs").display().to_string();
    let pool_running = liquid_runtime::start::<liquid_container_pool::ContainerPool>(
        &pool,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let peer = |r: &RunningService| Peer {
        http: format!("http://{}", r.http_addr()),
        grpc: format!("http://{}", r.grpc_addr().unwrap()),
    };
    Peers {
        a2a: peer(&a2a_running),
        pool: peer(&pool_running),
        _a2a: a2a_running,
        _pool: pool_running,
        _dir: dir,
    }
}

async fn query(gw: &Gateway, token: &str, q: &str, variables: Value) -> Value {
    let r = http()
        .post(format!("{}/graphql", gw.base))
        .bearer_auth(token)
        .json(&json!({"query": q, "variables": variables}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn error_codes(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_reach_the_services_with_the_callers_token_and_name_what_is_missing() {
    let keys = keys();
    let peers = peers(&keys).await;
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    cfg.peers.insert("a2a".into(), peers.a2a.clone());
    cfg.peers
        .insert("container_pool".into(), peers.pool.clone());
    // cowork is configured but down; healer has no gRPC address at all.
    cfg.peers.insert(
        "cowork".into(),
        Peer {
            http: "http://127.0.0.1:9".into(),
            grpc: "http://127.0.0.1:9".into(),
        },
    );
    cfg.peers.insert(
        "healer".into(),
        Peer {
            http: "http://127.0.0.1:9".into(),
            grpc: String::new(),
        },
    );
    let gw = start(&cfg).await;
    let admin = keys.token("alice", "acme", &["admin:*"]);

    // Status: every configured service asked over gRPC with alice's token.
    let v = query(
        &gw,
        &admin,
        "{ status { service reachable info { version caller backends { role kind } } } }",
        json!({}),
    )
    .await;
    let status = v["data"]["status"].as_array().unwrap();
    let by_name = |n: &str| status.iter().find(|s| s["service"] == n).unwrap().clone();
    for up in ["gateway", "a2a", "container-pool"] {
        let s = by_name(up);
        assert_eq!(s["reachable"], true, "{up}: {v}");
        assert_eq!(
            s["info"]["caller"], "alice",
            "{up} verified the forwarded token"
        );
    }
    assert_eq!(by_name("a2a")["info"]["backends"][0]["role"], "bus");
    let down = by_name("cowork");
    assert_eq!(down["reachable"], false);
    assert!(down["info"].is_null());
    let cowork_error = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"].as_str().unwrap().contains("cowork"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(cowork_error["extensions"]["code"], "unavailable");
    // cowork's fields call its REST API; cowork is down here, and that is what they say.
    let v = query(
        &gw,
        &admin,
        "{ coworkSessions { sessions { sessionId } } }",
        json!({}),
    )
    .await;
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(error_codes(&v), ["unavailable"], "{v}");
    assert_eq!(
        v["errors"][0]["message"], "the cowork service is unavailable; retry later",
        "{v}"
    );
    assert!(
        status.iter().all(|s| s["service"] != "healer"),
        "a service without a gRPC address is not asked"
    );
    let v = query(
        &gw,
        &admin,
        r#"{ service(name: "healer") { reachable info { version } } }"#,
        json!({}),
    )
    .await;
    assert_first_error_says(&v, "not configured");
    let v = query(
        &gw,
        &admin,
        r#"{ service(name: "nope") { reachable } }"#,
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&v), ["not_found"]);

    // Agents from a2a's cards, named at the gateway's address.
    let v = query(
        &gw,
        &admin,
        "{ agents { agent name streaming interfaces { url binding } } }",
        json!({}),
    )
    .await;
    let agents = v["data"]["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    let names: Vec<&str> = agents
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["", "echo", "tck"]);
    let host = gw.base.trim_start_matches("http://");
    let echo_jsonrpc = agents[1]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["binding"] == "JSONRPC")
        .unwrap();
    assert_eq!(
        echo_jsonrpc["url"],
        format!("http://{host}/agents/echo/a2a")
    );

    // A message to the echo agent, then its task among alice's tasks.
    let v = query(
        &gw,
        &admin,
        r#"mutation { sendAgentMessage(agent: "echo", text: "ping through graphql") { task { id state } messageText } }"#,
        json!({}),
    )
    .await;
    let task = &v["data"]["sendAgentMessage"]["task"];
    let id = task["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    let v = query(
        &gw,
        &admin,
        r#"query($id: String!) { tasks(agent: "echo") { tasks { id } totalSize } task(id: $id, agent: "echo") { id state json } }"#,
        json!({"id": id}),
    )
    .await;
    let listed: Vec<&str> = v["data"]["tasks"]["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&id.as_str()), "{v}");
    let fetched = &v["data"]["task"];
    assert_eq!(fetched["state"], "TASK_STATE_COMPLETED");
    assert!(fetched["json"].to_string().contains("ping through graphql"));

    // The container pool's status over its gRPC API.
    let v = query(
        &gw,
        &admin,
        "{ containers { runtime templates { name } } }",
        json!({}),
    )
    .await;
    assert_eq!(v["data"]["containers"]["runtime"], "process", "{v}");
    assert_eq!(v["data"]["containers"]["templates"][0]["name"], "default");

    // Chat through GraphQL: the offline provider (no keys here) answers, labelled.
    let v = query(
        &gw,
        &admin,
        r#"mutation { chat(input: {message: "hello graphql", model: "offline"}) { text offline provider notice coalesced } }"#,
        json!({}),
    )
    .await;
    let chat = &v["data"]["chat"];
    assert_eq!(chat["offline"], true, "{v}");
    assert!(chat["text"].as_str().unwrap().contains("hello graphql"));
    assert!(chat["notice"].as_str().unwrap().contains("offline"));

    // The same scopes as REST: the gateway's fields and the services' both refuse.
    let reader = keys.token("bob", "acme", &["read:prices"]);
    let v = query(
        &gw,
        &reader,
        r#"mutation { chat(input: {message: "x", model: "offline"}) { text } }"#,
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&v), ["permission_denied"]);
    let v = query(&gw, &reader, "{ containers { runtime } }", json!({})).await;
    assert_eq!(error_codes(&v), ["permission_denied"], "{v}");
    let v = query(
        &gw,
        &reader,
        r#"{ tasks(agent: "echo") { totalSize } }"#,
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&v), ["permission_denied"], "{v}");
    let v = query(&gw, &reader, "{ prices { symbol } }", json!({})).await;
    assert!(v["errors"].is_null(), "{v}");

    // Refused tokens never reach the schema.
    for (what, token) in keys.refused() {
        let r = http()
            .post(format!("{}/graphql", gw.base))
            .bearer_auth(&token)
            .json(&json!({"query": "{ whoami { subject } }"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }

    // Depth limit.
    let mut deep = "name".to_owned();
    for _ in 0..12 {
        deep = format!("ofType {{ {deep} }}");
    }
    let deep = format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let v = query(&gw, &admin, &deep, json!({})).await;
    assert_first_error_says(&v, "nested too deep");

    // Complexity limit: a field that calls a service costs more than a plain field, so a
    // shallow query fanning out to a hundred service calls is refused before any is made,
    // while the same number of plain fields passes.
    let fan_out: String = (0..101)
        .map(|i| format!("c{i}: containers {{ runtime }} "))
        .collect();
    let v = query(&gw, &admin, &format!("{{ {fan_out} }}"), json!({})).await;
    assert!(v["data"].is_null(), "{v}");
    assert_first_error_says(&v, "too complex");
    let plain: String = (0..101)
        .map(|i| format!("w{i}: whoami {{ subject }} "))
        .collect();
    let v = query(&gw, &admin, &format!("{{ {plain} }}"), json!({})).await;
    assert!(v["errors"].is_null(), "{v}");
    assert_eq!(v["data"]["w100"]["subject"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_do_not_answer_are_named_but_their_addresses_are_not() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    // An address nothing listens on: a port the system handed out, then freed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut cfg = config(&keys, db.url(), "memory://", "memory://", &down);
    cfg.settings.rate_limit.enabled = false;
    for peer in cfg.peers.values_mut() {
        peer.grpc = down.clone();
    }
    let gw = start(&cfg).await;
    let admin = keys.token("alice", "acme", &["admin:*"]);
    let host = down.trim_start_matches("http://");

    // gRPC (status), a2a's cards over HTTP (agents) and cowork's REST API (coworkSessions).
    for (q, service) in [
        ("{ status { service info { version } } }", "cowork"),
        (
            r#"{ service(name: "container-pool") { info { version } } }"#,
            "container-pool",
        ),
        (r#"{ agent(name: "echo") { name } }"#, "a2a"),
        ("{ coworkSessions { sessions { sessionId } } }", "cowork"),
    ] {
        let v = query(&gw, &admin, q, json!({})).await;
        let text = v.to_string();
        assert!(!text.contains(host), "{q}: {text}");
        assert!(!text.contains("127.0.0.1"), "{q}: {text}");
        let named = format!("the {service} service is unavailable; retry later");
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{q}: {v}"));
        let error = errors
            .iter()
            .find(|e| e["message"] == named.as_str())
            .unwrap_or_else(|| panic!("{q}: {v}"));
        assert_eq!(error["extensions"]["code"], "unavailable", "{q}: {v}");
    }
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stream_prices_and_chat_over_graphql_transport_ws() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    simulated_prices(&mut cfg);
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["read:prices", "write:chat"]);

    // Token in connection_init.
    let mut ws = gql_ws(&gw, &[]).await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"id": "p", "type": "subscribe", "payload": {"query": r#"subscription { prices(symbols: ["BTC-USD"]) { symbol price source } }"#}}),
    )
    .await;
    let tick = next_json(&mut ws).await;
    assert_eq!(tick["type"], "next", "{tick}");
    assert_eq!(tick["payload"]["data"]["prices"]["symbol"], "BTC-USD");
    assert_eq!(tick["payload"]["data"]["prices"]["source"], "simulated");
    send(&mut ws, json!({"id": "p", "type": "complete"})).await;

    // A streamed chat turn: deltas, then the labelled answer.
    send(
        &mut ws,
        json!({"id": "c", "type": "subscribe", "payload": {"query": r#"subscription { chatStream(input: {message: "stream me", model: "offline", session: "g1"}) { kind text reply { offline text session } } }"#}}),
    )
    .await;
    let mut text = String::new();
    let done = loop {
        let m = next_json(&mut ws).await;
        if m["id"] != "c" {
            continue;
        }
        assert_eq!(m["type"], "next", "{m}");
        let event = &m["payload"]["data"]["chatStream"];
        if event["kind"] == "done" {
            break event["reply"].clone();
        }
        assert_eq!(event["kind"], "delta");
        text.push_str(event["text"].as_str().unwrap());
    };
    assert_eq!(done["offline"], true);
    assert_eq!(done["session"], "g1");
    assert_eq!(done["text"].as_str().unwrap(), text);

    // Scope checked per subscription: a prices-only token may not stream chat.
    let reader = keys.token("bob", "acme", &["read:prices"]);
    let auth = format!("Bearer {reader}");
    let mut ws = gql_ws(&gw, &[("authorization", &auth)]).await;
    send(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"id": "x", "type": "subscribe", "payload": {"query": r#"subscription { chatMessages(session: "g1") }"#}}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "next", "{refused}");
    assert!(refused["payload"]["data"].is_null());
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        "permission_denied"
    );

    // A forged token in connection_init closes the socket; at connect it is a 401.
    let mut ws = gql_ws(&gw, &[]).await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", keys.forged())}}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, 4403);
    let forged = format!("Bearer {}", keys.forged());
    let url = gw.ws.replace("/ws", "/graphql");
    assert_eq!(
        ws_connect(
            &url,
            &[
                ("sec-websocket-protocol", "graphql-transport-ws"),
                ("authorization", &forged)
            ]
        )
        .await
        .err(),
        Some(401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_on_a_graphql_socket_is_a_trace_of_its_own_linked_to_the_upgrade() {
    use std::time::Duration;

    use liquid_kit::telemetry::TelemetryConfig;
    use liquid_testkit::otlp::{OtlpReceiver, ReceivedSpan};

    // Spans leave this process over OTLP, as a deployed gateway's do (nextest runs each test
    // in a process of its own, so this subscriber is this test's).
    let otlp = OtlpReceiver::start().await.unwrap();
    let telemetry = TelemetryConfig {
        otlp_endpoint: otlp.endpoint(),
        ..TelemetryConfig::default()
    };
    let _telemetry = liquid_kit::telemetry::init("gateway", &telemetry).unwrap();
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    simulated_prices(&mut cfg);
    let gw = start(&cfg).await;
    let auth = format!("Bearer {}", keys.token("alice", "acme", &["read:prices"]));
    let mut ws = gql_ws(&gw, &[("authorization", &auth)]).await;
    send(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    let subscribe =
        |id: &str, payload: Value| json!({"id": id, "type": "subscribe", "payload": payload});
    send(
        &mut ws,
        subscribe(
            "1",
            json!({"query": "query First { __typename }", "operationName": "First"}),
        ),
    )
    .await;
    assert_eq!(
        payload_of(&mut ws, "1").await["data"]["__typename"],
        "Query"
    );

    let is_upgrade =
        |s: &ReceivedSpan| s.attributes.get("url.path").map(String::as_str) == Some("/graphql");
    let named = |name: &'static str| {
        move |s: &ReceivedSpan| {
            s.attributes
                .get("graphql.operation.name")
                .map(String::as_str)
                == Some(name)
        }
    };
    // The span of the operation `name` once exported.
    let exported = |name: &'static str| {
        let otlp = &otlp;
        async move {
            let spans = otlp
                .wait_for_spans(Duration::from_secs(30), |spans| {
                    spans.iter().any(named(name))
                })
                .await;
            spans
                .iter()
                .find(|s| named(name)(s))
                .unwrap_or_else(|| panic!("no span for the operation {name}: {spans:#?}"))
                .clone()
        }
    };
    // The socket is still open: its upgrade request's span has ended and left the process.
    let spans = otlp
        .wait_for_spans(Duration::from_secs(30), |spans| {
            spans.iter().any(is_upgrade) && spans.iter().any(named("First"))
        })
        .await;
    let upgrade = spans
        .iter()
        .find(|s| is_upgrade(s))
        .unwrap_or_else(|| {
            panic!("the upgrade's span was not exported while the socket is open: {spans:#?}")
        })
        .clone();
    let first = spans.iter().find(|s| named("First")(s)).unwrap().clone();
    assert_eq!(first.name, "graphql operation");
    assert_eq!(first.attributes["graphql.operation.type"], "query");
    assert_eq!(
        first.parent_span_id, "",
        "an operation starts a trace: {first:#?}"
    );
    assert_ne!(first.trace_id, upgrade.trace_id);
    assert_eq!(
        first.links,
        vec![(upgrade.trace_id.clone(), upgrade.span_id.clone())],
        "the operation links to the upgrade request"
    );

    // A second operation on the same socket: a trace of its own, naming the same socket (and
    // named by its document alone).
    send(
        &mut ws,
        subscribe("2", json!({"query": "query Second { __typename }"})),
    )
    .await;
    assert_eq!(
        payload_of(&mut ws, "2").await["data"]["__typename"],
        "Query"
    );
    let second = exported("Second").await;
    assert_ne!(second.trace_id, first.trace_id);
    assert_eq!(second.attributes["socket"], first.attributes["socket"]);
    assert_eq!(second.links, first.links);

    // A subscription's span covers it from subscribe to complete.
    send(
        &mut ws,
        subscribe(
            "3",
            json!({"query": r#"subscription Ticks { prices(symbols: ["BTC-USD"]) { symbol } }"#}),
        ),
    )
    .await;
    assert_eq!(
        payload_of(&mut ws, "3").await["data"]["prices"]["symbol"],
        "BTC-USD"
    );
    send(&mut ws, json!({"id": "3", "type": "complete"})).await;
    let ticks = exported("Ticks").await;
    assert_eq!(ticks.attributes["graphql.operation.type"], "subscription");
    assert_eq!(ticks.attributes["socket"], first.attributes["socket"]);
    assert_eq!(ticks.parent_span_id, "");
    gw.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cowork_fields_are_in_the_schema_and_say_when_cowork_is_not_configured() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    cfg.peers.remove("cowork");
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["cowork:read", "read:prices"]);

    // The schema: sessions with state, plan steps and agents; events as a subscription.
    let v = query(
        &gw,
        &token,
        r#"{ s: __type(name: "CoworkSession") { fields { name } }
             p: __type(name: "CoworkPlanStep") { fields { name } }
             q: __type(name: "Query") { fields { name } }
             sub: __type(name: "SubscriptionRoot") { fields { name } } }"#,
        json!({}),
    )
    .await;
    let names = |k: &str| -> Vec<String> {
        v["data"][k]["fields"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for f in [
        "sessionId",
        "state",
        "plan",
        "steps",
        "agents",
        "events",
        "sandboxId",
    ] {
        assert!(names("s").iter().any(|n| n == f), "CoworkSession.{f}: {v}");
    }
    for f in ["id", "dependsOn", "domain", "fileScopes"] {
        assert!(names("p").iter().any(|n| n == f), "CoworkPlanStep.{f}: {v}");
    }
    for f in ["coworkSessions", "coworkSession"] {
        assert!(names("q").iter().any(|n| n == f), "Query.{f}: {v}");
    }
    assert!(names("sub").iter().any(|n| n == "coworkEvents"), "{v}");

    // No cowork behind this gateway: a clear error, nothing made up.
    let session = "0190a1b2-0000-7000-8000-000000000001";
    let v = query(
        &gw,
        &token,
        r#"query($id: String!) { coworkSession(id: $id) { state } }"#,
        json!({"id": session}),
    )
    .await;
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(error_codes(&v), ["unavailable"]);
    assert_first_error_says(
        &v,
        "the cowork service is not configured on this gateway (peers.cowork.http is empty)",
    );

    // Bad arguments are refused before any call.
    let v = query(
        &gw,
        &token,
        r#"{ coworkSession(id: "../etc") { state } }"#,
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&v), ["invalid_argument"], "{v}");
    let v = query(
        &gw,
        &token,
        "{ coworkSessions(limit: 0) { sessions { state } } }",
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&v), ["invalid_argument"], "{v}");

    // The subscription: cowork:read first, then the same clear error.
    let mut ws = gql_ws(&gw, &[]).await;
    let prices_only = keys.token("bob", "acme", &["read:prices"]);
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {prices_only}")}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    let subscribe = json!({"query": "subscription($s: String!) { coworkEvents(session: $s) { type } }", "variables": {"s": session}});
    send(
        &mut ws,
        json!({"id": "a", "type": "subscribe", "payload": subscribe}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "permission_denied",
        "{refused}"
    );
    let mut ws = gql_ws(&gw, &[]).await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"id": "b", "type": "subscribe", "payload": subscribe}),
    )
    .await;
    let missing = next_json(&mut ws).await;
    assert_eq!(
        missing["payload"]["errors"][0]["extensions"]["code"], "unavailable",
        "{missing}"
    );
}

fn gateway_error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_are_bounded_and_chat_fields_cost_a_service_call() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    cfg.server.body_limit_bytes = 16 * 1024;
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["write:chat", "read:prices"]);
    // A fresh connection per request: the server may drop one whose oversized body it refused
    // unread, and a pooled client would send the next request on it.
    let client = http_builder().pool_max_idle_per_host(0).build().unwrap();

    // Over the server's body limit: 413 with a stable code, whatever the query.
    let padding = "x".repeat(64 * 1024);
    let r = client
        .post(format!("{}/graphql", gw.base))
        .bearer_auth(&token)
        .json(&json!({"query": "{ whoami { subject } }", "variables": {"pad": padding}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(gateway_error_code(&v), "payload_too_large", "{v}");

    // Multipart (uploads) is refused; the schema has none.
    let r = client
        .post(format!("{}/graphql", gw.base))
        .bearer_auth(&token)
        .header("content-type", "multipart/form-data; boundary=b")
        .body("--b\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{}\r\n--b--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let v: Value = r.json().await.unwrap();
    assert_eq!(gateway_error_code(&v), "unsupported_media_type", "{v}");

    // Not a graphql request: 400, not an empty answer.
    let r = client
        .post(format!("{}/graphql", gw.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("[1, 2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Within the limit it is served.
    let v = query(&gw, &token, "{ whoami { subject } }", json!({})).await;
    assert_eq!(v["data"]["whoami"]["subject"], "alice", "{v}");

    // Aliasing chat fields is bounded by the complexity limit like other service calls.
    let turns: String = (0..100)
        .map(|i| format!(r#"c{i}: chat(input: {{message: "x", model: "offline"}}) {{ text }} "#))
        .collect();
    let v = query(&gw, &token, &format!("mutation {{ {turns} }}"), json!({})).await;
    assert!(v["data"].is_null(), "{v}");
    assert_first_error_says(&v, "too complex");
    let clears: String = (0..101)
        .map(|i| format!("i{i}: invalidateChatCache "))
        .collect();
    let v = query(&gw, &token, &format!("mutation {{ {clears} }}"), json!({})).await;
    assert_first_error_says(&v, "too complex");
    // Subscriptions too: a hundred aliased price streams are refused before any starts.
    let mut ws = gql_ws(&gw, &[]).await;
    gql_init(&mut ws, &token).await;
    let streams: String = (0..100)
        .map(|i| format!(r#"p{i}: prices(symbols: ["BTC-USD"]) {{ price }} "#))
        .collect();
    send(
        &mut ws,
        json!({"id": "many", "type": "subscribe", "payload": {"query": format!("subscription {{ {streams} }}")}}),
    )
    .await;
    let refused = payload_of(&mut ws, "many").await;
    assert_first_error_says(&refused, "too complex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_socket_holds_at_most_max_subscriptions_streams() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    simulated_prices(&mut cfg);
    cfg.settings.websocket.max_subscriptions = 2;
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["read:prices"]);
    let prices = json!({"query": r#"subscription { prices(symbols: ["BTC-USD"]) { symbol } }"#});

    let mut ws = gql_ws(&gw, &[]).await;
    gql_init(&mut ws, &token).await;
    for id in ["a", "b"] {
        send(
            &mut ws,
            json!({"id": id, "type": "subscribe", "payload": prices}),
        )
        .await;
        let tick = payload_of(&mut ws, id).await;
        assert_eq!(tick["data"]["prices"]["symbol"], "BTC-USD", "{tick}");
    }
    // A third operation, or two streams in one, would pass the cap: refused.
    send(
        &mut ws,
        json!({"id": "c", "type": "subscribe", "payload": prices}),
    )
    .await;
    let refused = payload_of(&mut ws, "c").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "failed_precondition",
        "{refused}"
    );
    assert_first_error_says(&refused, "websocket.max_subscriptions");
    // Completing one frees its slot.
    send(&mut ws, json!({"id": "a", "type": "complete"})).await;
    send(
        &mut ws,
        json!({"id": "d", "type": "subscribe", "payload": prices}),
    )
    .await;
    let tick = payload_of(&mut ws, "d").await;
    assert_eq!(tick["data"]["prices"]["symbol"], "BTC-USD", "{tick}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_chat_turns_are_charged_to_the_chat_rate_limit() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let mut cfg = config(
        &keys,
        db.url(),
        &nats.url(),
        "memory://",
        "http://127.0.0.1:9",
    );
    cfg.settings.rate_limit.classes.insert(
        "chat".into(),
        liquid_gateway::config::ClassLimits {
            user: 2,
            session: 2,
            ip: 2,
            period_secs: 900,
        },
    );
    cfg.settings.rate_limit.routes = vec![liquid_gateway::config::RouteClass {
        prefix: "/api/v1/chat".into(),
        class: "chat".into(),
    }];
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["write:chat"]);
    let turn = r#"mutation { chat(input: {message: "hi", model: "offline"}) { text } }"#;

    for _ in 0..2 {
        let v = query(&gw, &token, turn, json!({})).await;
        assert!(v["errors"].is_null(), "{v}");
    }
    let v = query(&gw, &token, turn, json!({})).await;
    assert_eq!(error_codes(&v), ["rate_limited"], "{v}");
    let extensions = &v["errors"][0]["extensions"];
    assert!(
        extensions["retryAfterSeconds"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(extensions["class"], "chat", "{v}");
    assert_eq!(extensions["tier"], "user", "{v}");

    // The same quota as REST chat and as a streamed turn.
    let r = http()
        .post(format!("{}/api/v1/chat", gw.base))
        .bearer_auth(&token)
        .json(&json!({"message": "hi", "model": "offline"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let mut ws = gql_ws(&gw, &[]).await;
    gql_init(&mut ws, &token).await;
    send(
        &mut ws,
        json!({"id": "s", "type": "subscribe", "payload": {"query": r#"subscription { chatStream(input: {message: "hi", model: "offline"}) { kind } }"#}}),
    )
    .await;
    let refused = payload_of(&mut ws, "s").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "rate_limited",
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_sockets_close_with_the_codes_of_ws() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    cfg.settings.websocket.max_message_bytes = 4 * 1024;
    let token = keys.token("alice", "acme", &["read:prices"]);

    // No connection_init by the deadline: 4001, as /ws. The short deadline is only for this
    // case: it needs nothing from the client, so no scheduling delay can change its outcome.
    cfg.settings.websocket.auth_deadline_secs = 1;
    let strict = start(&cfg).await;
    let mut silent = gql_ws(&strict, &[]).await;
    assert_eq!(close_code(&mut silent).await, 4001);
    strict.running.stop().await.unwrap();

    // The other cases send connection_init: a deadline no loaded machine misses.
    cfg.settings.websocket.auth_deadline_secs = 60;
    let gw = start(&cfg).await;

    // A message over websocket.max_message_bytes ends the connection.
    let mut big = gql_ws(&gw, &[]).await;
    gql_init(&mut big, &token).await;
    let query = format!(
        "subscription {{ prices(symbols: [\"{}\"]) {{ symbol }} }}",
        "A".repeat(8 * 1024)
    );
    send(
        &mut big,
        json!({"id": "big", "type": "subscribe", "payload": {"query": query}}),
    )
    .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match futures_util::StreamExt::next(&mut big).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)) | None => {
                    return;
                }
                Some(Ok(m)) => assert!(!m.is_text(), "answered an oversized message: {m:?}"),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the oversized message did not end the connection"
    );

    // A token that expires: 4002, as /ws. Its lifetime leaves the connect and init seconds of
    // margin, so the token is still valid at connection_init and only its expiry closes.
    let short = keys
        .key
        .mint(
            &liquid_auth::TokenRequest::user("alice", ["read:prices"])
                .tenant("acme")
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .ttl(std::time::Duration::from_secs(5)),
        )
        .unwrap();
    let mut expiring = gql_ws(&gw, &[]).await;
    gql_init(&mut expiring, &short).await;
    assert_eq!(close_code(&mut expiring).await, 4002);

    // Shutdown: 1001.
    let mut open = gql_ws(&gw, &[]).await;
    gql_init(&mut open, &token).await;
    gw.shutdown.cancel();
    assert_eq!(close_code(&mut open).await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_carry_the_request_id() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let up = upstream().await;
    let mut cfg = config(&keys, db.url(), &nats.url(), "memory://", &up.url);
    cfg.settings.rate_limit.enabled = false;
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["cowork:read"]);
    let session = "0190a1b2-0000-7000-8000-000000000002";
    let r = http()
        .post(format!("{}/graphql", gw.base))
        .bearer_auth(&token)
        .header("x-request-id", "graphql-trace-1")
        .json(&json!({"query": "query($id: String!) { coworkSession(id: $id) { sessionId } }", "variables": {"id": session}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.headers(&format!("/api/v1/cowork/sessions/{session}"));
    assert_eq!(
        seen.get("x-request-id").map(String::as_str),
        Some("graphql-trace-1"),
        "{seen:?}"
    );
}

/// Publishes one price tick of `symbol` whose `source` carries `pad`.
async fn publish_tick(gw: &Gateway, publisher: &str, symbol: &str, pad: &str) {
    let r = http()
        .post(format!(
            "{}/api/v1/gateway/channels/prices:{symbol}/messages",
            gw.base
        ))
        .bearer_auth(publisher)
        .json(&json!({"data": {"symbol": symbol, "price": 1.0, "ts_ms": 1, "source": pad}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    const SLOW_CLOSES: &str = "liquid_gateway_ws_closed_total{reason=\"slow\"} ";
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    let ws = &mut cfg.settings.websocket;
    ws.write_timeout_secs = 1;
    // The hub queue never overflows here (that would only end the stream): only a bounded
    // write can notice the stalled reader. Heartbeats and the idle timeout stay out of the way.
    ws.send_queue = 100_000;
    ws.heartbeat_secs = 60;
    ws.idle_timeout_secs = 120;
    let gw = start(&cfg).await;
    let reader = keys.token("carol", "acme", &["read:prices"]);
    // Price channels are platform-wide: publishing on one takes admin:*.
    let publisher = keys.token("feed", "ops", &["admin:*"]);
    // The metrics are the process's, shared with the other tests: only an increase counts.
    let before = gw.metric_or_zero(SLOW_CLOSES).await;

    let mut ws = gql_ws(&gw, &[]).await;
    gql_init(&mut ws, &reader).await;
    send(
        &mut ws,
        json!({"id": "p", "type": "subscribe", "payload": {"query": r#"subscription { prices(symbols: ["FLOOD"]) { symbol source } }"#}}),
    )
    .await;
    // The subscription follows the channel once a tick comes through.
    let mut live = false;
    for _ in 0..100 {
        publish_tick(&gw, &publisher, "FLOOD", "small").await;
        let tick = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            payload_of(&mut ws, "p"),
        )
        .await;
        if let Ok(tick) = tick {
            assert_eq!(tick["data"]["prices"]["symbol"], "FLOOD", "{tick}");
            live = true;
            break;
        }
    }
    assert!(live, "the subscription never delivered a tick");

    // From here on the client reads nothing; the channel stays busy until the server gives up.
    let big = "x".repeat(200 * 1024);
    let mut closed = false;
    for i in 0..600 {
        publish_tick(&gw, &publisher, "FLOOD", &big).await;
        if i % 10 == 9 && gw.metric_or_zero(SLOW_CLOSES).await > before {
            closed = true;
            break;
        }
    }
    for _ in 0..100 {
        if closed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        closed = gw.metric_or_zero(SLOW_CLOSES).await > before;
    }
    assert!(
        closed,
        "the server never closed a graphql client that stopped reading"
    );
    // Reading again, the client finds the connection ended.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)) | None => {
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow consumer's connection stayed open");
}
