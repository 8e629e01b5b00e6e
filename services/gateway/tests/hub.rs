//! What an operator reads on `/metrics` about the WebSocket hub, through a real gateway on
//! PostgreSQL and NATS: `liquid_gateway_ws_connections{endpoint}` counts open sockets of `/ws`
//! and `/graphql` (an idle GraphQL socket included), and `liquid_gateway_hub_subscribers`
//! counts hub registrations (a `/ws` connection, or a GraphQL subscription stream) apart.
//!
//! `websocket.max_connections` bounds both apart: the open sockets of both endpoints (a full
//! replica refuses an upgrade with 503 before opening anything) and the registrations.
//!
//! One test in this binary: the metrics recorder is process-wide, so the gauges read here are
//! this gateway's alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WS_SOCKETS: &str = r#"liquid_gateway_ws_connections{endpoint="ws"}"#;
const GRAPHQL_SOCKETS: &str = r#"liquid_gateway_ws_connections{endpoint="graphql"}"#;
const HUB_SUBSCRIBERS: &str = "liquid_gateway_hub_subscribers";
/// `websocket.max_connections` of the test's gateway: at most 3 open sockets, and 3 hub
/// registrations.
const MAX: usize = 3;

/// What a client sees of an upgrade the gateway refuses over HTTP.
#[derive(Debug)]
struct Refusal {
    status: u16,
    retry_after: Option<String>,
    body: serde_json::Value,
}

/// Asks for a WebSocket upgrade of `endpoint` (`ws`, `graphql`) with a bearer `token`, as a
/// browser would, and reads the HTTP answer of a refusal.
async fn upgrade_refusal(gw: &Gateway, endpoint: &str, token: &str) -> Refusal {
    let protocol = if endpoint == "graphql" {
        "graphql-transport-ws"
    } else {
        liquid_gateway::ws::PROTOCOL
    };
    let response = http()
        .get(format!("{}/{endpoint}", gw.base))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", protocol)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Refusal {
        status,
        retry_after,
        body,
    }
}

/// The value of the series `series` (name and labels exactly as exported), if exported.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The three gauges as `(ws sockets, graphql sockets, hub subscribers)`.
async fn gauges(gw: &Gateway) -> (f64, f64, f64) {
    let text = gw.metrics_text().await;
    let read = |series| value_of(&text, series).unwrap_or_else(|| panic!("{series} not exported"));
    (
        read(WS_SOCKETS),
        read(GRAPHQL_SOCKETS),
        read(HUB_SUBSCRIBERS),
    )
}

/// Waits until the gauges read `expected` (a socket's task ends a moment after its close).
async fn gauges_reach(gw: &Gateway, expected: (f64, f64, f64), what: &str) {
    // The limit only turns a gauge that never gets there (the defect) into a failure.
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if gauges(gw).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if reached.is_err() {
        panic!(
            "{what}: (ws sockets, graphql sockets, hub subscribers) = {:?}, expected {expected:?}",
            gauges(gw).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_metrics_count_open_sockets_by_endpoint_and_hub_subscribers_apart() {
    let keys = keys();
    let (mut cfg, _backing) = unlimited_config(&keys).await;
    cfg.settings.websocket.max_connections = MAX;
    let gw = start(&cfg).await;
    let token = keys.token("alice", "acme", &["read:prices"]);

    // Every series is there from the start, at zero, and says what it counts.
    let text = gw.metrics_text().await;
    assert_eq!(gauges(&gw).await, (0.0, 0.0, 0.0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("# HELP liquid_gateway_ws_connections open websockets")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("# HELP liquid_gateway_hub_subscribers hub registrations")),
        "{text}"
    );
    assert!(
        value_of(&text, "liquid_gateway_ws_connections").is_none(),
        "an unlabelled series would be summed with the labelled ones: {text}"
    );

    // A /ws connection is one socket and one hub registration.
    let mut ws = ws_with_token(&gw.ws, &token).await;
    assert_eq!(gauges(&gw).await, (1.0, 0.0, 1.0));

    // An idle GraphQL socket is an open socket that holds no registration.
    let mut gql = gql_ws(&gw, &[]).await;
    gql_init(&mut gql, &token).await;
    assert_eq!(gauges(&gw).await, (1.0, 1.0, 1.0));

    // Each subscription stream takes a registration; the socket is still one.
    let prices = |symbol: &str| json!({"query": format!(r#"subscription {{ prices(symbols: ["{symbol}"]) {{ symbol }} }}"#)});
    for (id, symbol) in [("p1", "BTC-USD"), ("p2", "ETH-USD")] {
        send(
            &mut gql,
            json!({"id": id, "type": "subscribe", "payload": prices(symbol)}),
        )
        .await;
    }
    gauges_reach(&gw, (1.0, 1.0, 3.0), "two subscriptions on one socket").await;

    // The replica holds MAX registrations: one more stream is refused, and says why.
    send(
        &mut gql,
        json!({"id": "p3", "type": "subscribe", "payload": prices("SOL-USD")}),
    )
    .await;
    let refused = payload_of(&mut gql, "p3").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "unavailable",
        "{refused}"
    );
    assert_first_error_says(&refused, "websocket.max_connections");
    send(&mut gql, json!({"id": "p1", "type": "complete"})).await;
    gauges_reach(&gw, (1.0, 1.0, 2.0), "one subscription completed").await;

    // Sockets are bounded apart from registrations: a third, idle socket takes the last slot,
    // and a fourth of either endpoint is refused before any upgrade.
    let mut idle = gql_ws(&gw, &[]).await;
    gql_init(&mut idle, &token).await;
    assert_eq!(gauges(&gw).await, (1.0, 2.0, 2.0));
    for endpoint in ["ws", "graphql"] {
        let refusal = upgrade_refusal(&gw, endpoint, &token).await;
        assert_eq!(refusal.status, 503, "{endpoint}: {refusal:?}");
        assert_eq!(refusal.retry_after.as_deref(), Some("1"), "{endpoint}");
        assert_eq!(refusal.body["error"]["code"], "unavailable", "{endpoint}");
        assert!(
            refusal.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("websocket.max_connections"),
            "{endpoint}: {refusal:?}"
        );
        let refused = format!(r#"liquid_gateway_ws_refused_full_total{{endpoint="{endpoint}"}}"#);
        assert_eq!(
            value_of(&gw.metrics_text().await, &refused),
            Some(1.0),
            "{endpoint}"
        );
    }
    assert_eq!(
        gauges(&gw).await,
        (1.0, 2.0, 2.0),
        "a refusal holds nothing"
    );
    // Closing the idle socket frees its slot for a socket of the other endpoint.
    idle.close(None).await.unwrap();
    gauges_reach(&gw, (1.0, 1.0, 2.0), "idle graphql socket closed").await;
    let mut second = ws_with_token(&gw.ws, &token).await;
    assert_eq!(gauges(&gw).await, (2.0, 1.0, 3.0));
    second.close(None).await.unwrap();
    gauges_reach(&gw, (1.0, 1.0, 2.0), "second /ws socket closed").await;

    // Closing a socket frees what it held.
    gql.close(None).await.unwrap();
    gauges_reach(&gw, (1.0, 0.0, 1.0), "graphql socket closed").await;
    ws.close(None).await.unwrap();
    gauges_reach(&gw, (0.0, 0.0, 0.0), "/ws socket closed").await;
}
