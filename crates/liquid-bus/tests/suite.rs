//! One conformance suite, both implementations: the in-process bus and a NATS server of the
//! test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use liquid_bus::{EventBus, Subscription};
use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_testkit::nats::NatsServer;

async fn next(sub: &mut Subscription) -> liquid_bus::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no message within 5s")
        .expect("stream ended")
}

async fn nothing_within(sub: &mut Subscription, wait: Duration) -> bool {
    tokio::time::timeout(wait, sub.next()).await.is_err()
}

async fn suite(bus: Arc<dyn EventBus>) {
    bus.ping().await.unwrap();

    // Fan-out: every subscriber gets every message, in order.
    let mut a = bus.subscribe("ws.prices.*").await.unwrap();
    let mut b = bus.subscribe("ws.>").await.unwrap();
    let mut other = bus.subscribe("ws.chat.*").await.unwrap();
    // Core NATS subscriptions are registered asynchronously; a flush makes them effective.
    bus.ping().await.unwrap();
    for i in 0..3 {
        bus.publish(
            "ws.prices.btc",
            BTreeMap::new(),
            Bytes::from(format!("{i}")),
        )
        .await
        .unwrap();
    }
    for i in 0..3 {
        assert_eq!(next(&mut a).await.payload, format!("{i}"));
        let m = next(&mut b).await;
        assert_eq!(m.subject, "ws.prices.btc");
        assert_eq!(m.payload, format!("{i}"));
    }
    assert!(
        nothing_within(&mut other, Duration::from_millis(300)).await,
        "a non-matching subscriber got a message"
    );

    // Headers and the W3C trace context travel with the message.
    let mut headers = BTreeMap::new();
    headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    headers.insert("x-tenant".to_owned(), "acme".to_owned());
    bus.publish("ws.prices.eth", headers, Bytes::from_static(b"p"))
        .await
        .unwrap();
    let m = next(&mut a).await;
    assert_eq!(m.headers.get("x-tenant").map(String::as_str), Some("acme"));
    use opentelemetry::trace::TraceContextExt;
    assert_eq!(
        m.trace_context()
            .span()
            .span_context()
            .trace_id()
            .to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // Bad subjects are refused with a stable code, on both sides.
    for bad in ["", "a..b", "has space", "ws.*"] {
        let err = bus
            .publish(bad, BTreeMap::new(), Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{bad:?}");
    }
    assert_eq!(
        bus.subscribe("a.>.b").await.err().unwrap().error_code(),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn suite_on_memory() {
    let bus = liquid_bus::connect("memory://").await.unwrap();
    assert_eq!(bus.kind(), "memory");
    suite(bus).await;
}

#[tokio::test]
async fn suite_on_nats() {
    let server = NatsServer::start().await.unwrap();
    let bus = liquid_bus::connect(&server.url()).await.unwrap();
    assert_eq!(bus.kind(), "nats");
    suite(bus).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_and_readiness_notices_a_dead_one() {
    let err = liquid_bus::connect("nats://127.0.0.1:1")
        .await
        .err()
        .unwrap();
    assert_eq!(err.error_code(), ErrorCode::Unavailable);
    assert!(err.to_string().contains("make dev-up"), "{err}");

    let mut server = NatsServer::start().await.unwrap();
    let bus = liquid_bus::connect(&server.url()).await.unwrap();
    bus.ping().await.unwrap();
    server.kill().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if bus.ping().await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ping still succeeds 10s after the server died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
